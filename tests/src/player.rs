//! Real players pointed at a gateway: ffmpeg decoding the HLS stream to nowhere, reporting
//! frames decoded and every error it printed.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;

pub struct Playback {
    pub frames: u64,
    pub seconds: f64,
    pub errors: Vec<String>,
    pub success: bool,
}

/// Decodes `seconds` of `url` with ffmpeg; gives up after `seconds` + 30 s.
pub fn ffmpeg(url: &str, seconds: u32) -> anyhow::Result<Playback> {
    let limit = Duration::from_secs(u64::from(seconds) + 30);
    let output = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .args([
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-loglevel",
            "error",
            "-progress",
            "pipe:1",
            "-i",
            url,
        ])
        .args(["-t", &seconds.to_string(), "-f", "null", "-"])
        .output()
        .context("running ffmpeg (scripts/setup installs it)")?;
    let progress = String::from_utf8_lossy(&output.stdout);
    let last = |key: &str| {
        progress
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .map(str::to_string)
    };
    let frames = last("frame=").and_then(|f| f.parse().ok()).unwrap_or(0);
    let seconds = last("out_time_us=").and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0) / 1e6;
    let errors = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    Ok(Playback {
        frames,
        seconds,
        errors,
        success: output.status.success(),
    })
}
