//! Real players pointed at a gateway: ffmpeg decoding the HLS stream to nowhere, VLC playing
//! it headless, and Chromium playing the gateway's page with hls.js — each reporting what it
//! decoded and every error it printed.

use std::path::Path;
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
    ffmpeg_in(&[], url, seconds)
}

/// `ffmpeg`, run through `prefix` (e.g. `ip netns exec NS`).
pub fn ffmpeg_in(prefix: &[&str], url: &str, seconds: u32) -> anyhow::Result<Playback> {
    let limit = Duration::from_secs(u64::from(seconds) + 30);
    let output = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .args(prefix)
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

/// What headless Chromium saw on the gateway's page (`tests/browser/play.mjs`).
#[derive(Debug, serde::Deserialize)]
pub struct PagePlayback {
    pub played_s: f64,
    /// How far the video advanced over the last three seconds of the session.
    pub played_last_3s: f64,
    pub frames: u64,
    pub dropped: u64,
    /// Median of wall clock − the playing frame's broadcaster time, after 5 s of playback.
    pub latency_s: Option<f64>,
    pub latency_max_s: Option<f64>,
    /// The latency when the session ended.
    pub latency_end_s: Option<f64>,
    /// Page opened → video playing.
    pub first_frame_ms: u64,
    pub state: String,
    /// Times playback ran dry after it started.
    pub stalls: u64,
    pub hls_target_latency_s: Option<f64>,
    pub errors: Vec<String>,
}

/// Opens `url` (the gateway's page) in headless Chromium for `seconds` of playback and
/// saves a screenshot at the end.
pub fn chromium(url: &str, seconds: u32, screenshot: &Path) -> anyhow::Result<PagePlayback> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/play.mjs");
    let output = Command::new("node")
        .arg(&script)
        .args([url, &seconds.to_string()])
        .arg(screenshot)
        .output()
        .context("running node (scripts/setup installs it and the browser test's packages)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "the browser test failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).with_context(|| format!("the browser test printed {stdout:?}"))
}

pub struct VlcPlayback {
    /// VLC said "Received first picture": it decoded video.
    pub first_picture: bool,
    /// Errors and stream discontinuities it logged (beyond those of running headless).
    pub errors: Vec<String>,
}

/// Plays `url` in VLC for `seconds`, headless and as an unprivileged user (VLC refuses root).
pub fn vlc(url: &str, seconds: u32, dir: &Path) -> anyhow::Result<VlcPlayback> {
    let home = dir.join("vlc-home");
    std::fs::create_dir_all(&home)?;
    let mut command = Command::new("timeout");
    command.arg((seconds + 30).to_string());
    if nix_is_root() {
        let _ = Command::new("chown").args(["65534:65534"]).arg(&home).status();
        command.args(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
    }
    let output = command
        .arg("env")
        .arg(format!("HOME={}", home.display()))
        .args([
            "cvlc",
            "-vv",
            "-I",
            "dummy",
            "--vout",
            "dummy",
            "--aout",
            "dummy",
            "--play-and-exit",
        ])
        .arg(format!("--run-time={seconds}"))
        .arg(url)
        .output()
        .context("running VLC (scripts/setup installs it)")?;
    let log = String::from_utf8_lossy(&output.stderr).to_string() + &String::from_utf8_lossy(&output.stdout);
    std::fs::write(dir.join("vlc.log"), &log)?;
    // Running without a desktop costs a few interface errors; anything else counts.
    let headless = ["interface error", "libvlc error: interface"];
    let errors = log
        .lines()
        .filter(|l| l.contains(" error: ") || l.to_lowercase().contains("discontinuity"))
        .filter(|l| !headless.iter().any(|h| l.contains(h)))
        .map(str::to_string)
        .collect();
    Ok(VlcPlayback {
        first_picture: log.contains("Received first picture"),
        errors,
    })
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// One stream as ffprobe describes it.
#[derive(Debug, serde::Deserialize, PartialEq)]
pub struct StreamInfo {
    pub codec_name: String,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub width: Option<i64>,
    #[serde(default)]
    pub height: Option<i64>,
}

/// The streams of `url` (a playlist or a file), as ffprobe reads them.
pub fn probe(url: &str) -> anyhow::Result<Vec<StreamInfo>> {
    #[derive(serde::Deserialize)]
    struct Probe {
        streams: Vec<StreamInfo>,
    }
    let output = Command::new("timeout")
        .args(["30", "ffprobe", "-v", "error", "-show_entries"])
        .args(["stream=codec_name,profile,width,height", "-of", "json", url])
        .output()
        .context("running ffprobe (scripts/setup installs ffmpeg)")?;
    anyhow::ensure!(
        output.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let probe: Probe = serde_json::from_slice(&output.stdout).context("ffprobe's JSON")?;
    Ok(probe.streams)
}
