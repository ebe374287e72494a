//! What OBS does, done by ffmpeg: a live H.264 (High) + AAC stream in MPEG-TS pushed over
//! UDP or SRT, or piped into a broadcaster's standard input.

use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::Context;

/// The pushed picture: a size and a profile the broadcaster's own encoder would not pick
/// (1280x720 Constrained Baseline by default), so output that matches it was passed through.
pub const SIZE: (i64, i64) = (640, 360);
pub const PROFILE: &str = "High";
/// A pusher stops by itself after this long, whatever happens to the test.
const LONGEST_S: u32 = 120;

/// A running ffmpeg pusher; killed when dropped.
pub struct Pusher {
    child: Child,
}

impl Drop for Pusher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(dir: &Path, name: &str, video: bool) -> anyhow::Result<Command> {
    let (w, h) = SIZE;
    let mut c = Command::new("ffmpeg");
    c.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"]);
    if video {
        c.args(["-f", "lavfi", "-i", &format!("testsrc2=size={w}x{h}:rate=30")]);
    }
    c.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &LONGEST_S.to_string()]);
    if video {
        c.args(["-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast"])
            .args(["-tune", "zerolatency", "-profile:v", "high", "-g", "30", "-b:v", "700k"]);
    }
    c.args(["-c:a", "aac", "-b:a", "96k", "-f", "mpegts"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err")))?);
    Ok(c)
}

/// Pushes to `url` (udp://…, srt://…).
pub fn push(dir: &Path, name: &str, url: &str) -> anyhow::Result<Pusher> {
    spawn(command(dir, name, true)?, url)
}

/// Pushes sound only (a radio show) to `url`.
pub fn push_audio_only(dir: &Path, name: &str, url: &str) -> anyhow::Result<Pusher> {
    spawn(command(dir, name, false)?, url)
}

fn spawn(mut command: Command, url: &str) -> anyhow::Result<Pusher> {
    let child = command
        .arg(url)
        .stdout(Stdio::null())
        .spawn()
        .context("starting ffmpeg (scripts/setup installs it)")?;
    Ok(Pusher { child })
}

/// Pushes into a pipe; the returned end is a broadcaster's standard input.
pub fn pipe(dir: &Path, name: &str) -> anyhow::Result<(Pusher, ChildStdout)> {
    let mut child = command(dir, name, true)?
        .arg("-")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting ffmpeg (scripts/setup installs it)")?;
    let out = child.stdout.take().context("ffmpeg has no stdout")?;
    Ok((Pusher { child }, out))
}

/// A free UDP port on loopback (for a UDP or SRT input to listen on).
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}
