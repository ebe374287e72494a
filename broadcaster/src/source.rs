//! What the broadcaster streams (`--source`): each kind becomes the head of a GStreamer
//! pipeline, with the elements it needs and how it behaves when it stops.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail};

/// What the broadcaster streams, as `--source` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A generated picture (with the wall clock when the text plugin is installed) and tone.
    Test,
    /// Any media file GStreamer reads, played in real time and looped.
    File(PathBuf),
    /// Anything `uridecodebin` opens: http(s)://, rtsp://, file://…
    Uri(String),
    /// MPEG-TS received on a UDP port (`udp://HOST:PORT`), as OBS and ffmpeg send it.
    Udp {
        /// The address to listen on (`0.0.0.0` when the URL gives none).
        host: String,
        /// The UDP port.
        port: u16,
    },
    /// MPEG-TS over SRT (`srt://:PORT` listens, `srt://HOST:PORT` calls), as the URL says.
    Srt(String),
    /// MPEG-TS piped into standard input.
    Stdin,
    /// The X display's screen (`DISPLAY`).
    Screen,
    /// A V4L2 camera (default /dev/video0).
    V4l2(PathBuf),
}

/// Where a source's audio comes from, for sources that carry none (screen, camera).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Audio {
    /// PulseAudio's default source (PipeWire's too, through its Pulse server).
    Pulse,
    /// ALSA's default capture device.
    Alsa,
    /// No sound.
    None,
}

impl FromStr for Source {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Source> {
        const KNOWN: &str =
            "test, file:PATH, uri:URL, udp://HOST:PORT, srt://[HOST]:PORT, stdin, screen, v4l2[:DEVICE]";
        let source = match s {
            "test" => Source::Test,
            "stdin" | "-" => Source::Stdin,
            "screen" => Source::Screen,
            "v4l2" => Source::V4l2(PathBuf::from("/dev/video0")),
            _ if s.starts_with("udp://") => {
                let rest = &s["udp://".len()..];
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| anyhow!("source {s:?}: udp:// needs a port (udp://0.0.0.0:5000)"))?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| anyhow!("source {s:?}: {port:?} is not a UDP port"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let host = if host.is_empty() { "0.0.0.0" } else { host };
                Source::Udp {
                    host: host.to_string(),
                    port,
                }
            }
            _ if s.starts_with("srt://") => {
                if !s["srt://".len()..].contains(':') {
                    bail!("source {s:?}: srt:// needs a port (srt://:9000 listens for OBS)");
                }
                Source::Srt(s.to_string())
            }
            _ => match s.split_once(':') {
                Some(("file", path)) if !path.is_empty() => Source::File(PathBuf::from(path)),
                Some(("uri", uri)) if uri.contains("://") => Source::Uri(uri.to_string()),
                Some(("v4l2", device)) if !device.is_empty() => Source::V4l2(PathBuf::from(device)),
                _ => bail!("unknown source {s:?}: use one of {KNOWN}"),
            },
        };
        Ok(source)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Test => write!(f, "test source"),
            Source::File(path) => write!(f, "source file {}", path.display()),
            Source::Uri(uri) => write!(f, "source {uri}"),
            Source::Udp { host, port } => write!(f, "UDP input {host}:{port}"),
            Source::Srt(url) => write!(f, "SRT input {url}"),
            Source::Stdin => write!(f, "standard input"),
            Source::Screen => write!(f, "screen capture"),
            Source::V4l2(device) => write!(f, "camera {}", device.display()),
        }
    }
}

/// How a source behaves when its media stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEnd {
    /// Play it again from the start (a file).
    Loop,
    /// Wait for it to come back, showing the slate meanwhile (a sender, a device).
    Reconnect,
    /// The broadcast is over (a pipe that closed, the test source).
    Finish,
}

impl Source {
    /// What the broadcaster does when this source's media stops.
    pub fn on_end(&self) -> OnEnd {
        match self {
            Source::File(_) => OnEnd::Loop,
            Source::Test | Source::Stdin => OnEnd::Finish,
            Source::Uri(_) | Source::Udp { .. } | Source::Srt(_) | Source::Screen | Source::V4l2(_) => OnEnd::Reconnect,
        }
    }

    /// Delivers compressed media in a container (maybe H.264/AAC already, then passed through).
    pub fn is_container(&self) -> bool {
        matches!(
            self,
            Source::File(_) | Source::Uri(_) | Source::Udp { .. } | Source::Srt(_) | Source::Stdin
        )
    }

    /// Media that may arrive faster than real time unless paced (a file, a pipe fed from one,
    /// a URL of a recording). Live input is stamped as it arrives, so pacing leaves it be.
    pub fn needs_pacing(&self) -> bool {
        matches!(self, Source::File(_) | Source::Stdin | Source::Uri(_))
    }

    /// GStreamer elements this source needs, with the Debian package that brings each.
    pub fn elements(&self, audio: Audio) -> Vec<(&'static str, &'static str)> {
        let mut needed = match self {
            Source::Test => vec![
                ("videotestsrc", "gstreamer1.0-plugins-base"),
                ("audiotestsrc", "gstreamer1.0-plugins-base"),
            ],
            Source::File(_) => vec![("filesrc", "gstreamer1.0-plugins-base")],
            Source::Uri(_) => vec![("urisourcebin", "gstreamer1.0-plugins-base")],
            Source::Udp { .. } => vec![("udpsrc", "gstreamer1.0-plugins-good")],
            Source::Srt(_) => vec![("srtsrc", "gstreamer1.0-plugins-bad")],
            Source::Stdin => vec![("fdsrc", "gstreamer1.0-plugins-base")],
            Source::Screen => vec![("ximagesrc", "gstreamer1.0-plugins-good")],
            Source::V4l2(_) => vec![("v4l2src", "gstreamer1.0-plugins-good")],
        };
        if self.is_container() {
            needed.extend([
                ("parsebin", "gstreamer1.0-plugins-base"),
                ("tsdemux", "gstreamer1.0-plugins-bad"),
                ("decodebin", "gstreamer1.0-plugins-base"),
                ("clocksync", "gstreamer1.0-plugins-base"),
            ]);
        }
        if matches!(self, Source::Screen | Source::V4l2(_)) {
            match audio {
                Audio::Pulse => needed.push(("pulsesrc", "gstreamer1.0-pulseaudio")),
                Audio::Alsa => needed.push(("alsasrc", "gstreamer1.0-alsa")),
                Audio::None => {}
            }
        }
        needed
    }

    /// What must exist before starting, in one clear line if it does not.
    pub fn check_available(&self) -> anyhow::Result<()> {
        match self {
            Source::File(path) => {
                std::fs::File::open(path).map_err(|e| anyhow!("cannot open source file {}: {e}", path.display()))?;
            }
            Source::Screen if std::env::var_os("DISPLAY").is_none_or(|d| d.is_empty()) => {
                if std::env::var_os("WAYLAND_DISPLAY").is_some() {
                    bail!(
                        "screen capture needs an X display: this session is Wayland only (run under XWayland with DISPLAY set)"
                    );
                }
                bail!("screen capture needs an X display, and DISPLAY is not set");
            }
            Source::V4l2(device) if !Path::new(device).exists() => {
                bail!(
                    "no camera at {}: this machine has no such video device (see `ls /dev/video*`)",
                    device.display()
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// The pipeline's head, ending in an element named `src` whose output is raw video (for
    /// screen and camera) or a container stream (for the others; `Test` is built elsewhere).
    pub fn head(&self, fps: u32) -> String {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        match self {
            Source::Test => String::new(),
            Source::File(path) => format!("filesrc location=\"{}\" name=src", quote(&path.to_string_lossy())),
            Source::Uri(uri) => format!("urisourcebin uri=\"{}\" name=src", quote(uri)),
            Source::Udp { host, port } => format!(
                "udpsrc address={host} port={port} buffer-size=2097152 caps=\"video/mpegts,systemstream=(boolean)true\" name=src"
            ),
            Source::Srt(url) => format!("srtsrc uri=\"{}\" latency=125 name=src", quote(url)),
            Source::Stdin => "fdsrc fd=0 name=src".to_string(),
            Source::Screen => {
                format!(
                    "ximagesrc use-damage=false show-pointer=true ! video/x-raw,framerate={fps}/1 ! identity name=src"
                )
            }
            Source::V4l2(device) => format!(
                "v4l2src device=\"{}\" ! videorate ! video/x-raw,framerate={fps}/1 ! identity name=src",
                quote(&device.to_string_lossy())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_source() {
        let parse = |s: &str| s.parse::<Source>().unwrap();
        assert_eq!(parse("test"), Source::Test);
        assert_eq!(parse("file:/a b.mp4"), Source::File("/a b.mp4".into()));
        assert_eq!(parse("uri:http://x/y.ts"), Source::Uri("http://x/y.ts".into()));
        assert_eq!(
            parse("udp://:5000"),
            Source::Udp {
                host: "0.0.0.0".into(),
                port: 5000
            }
        );
        assert_eq!(
            parse("udp://[::1]:5000"),
            Source::Udp {
                host: "::1".into(),
                port: 5000
            }
        );
        assert_eq!(parse("srt://:9000"), Source::Srt("srt://:9000".into()));
        assert_eq!(parse("stdin"), Source::Stdin);
        assert_eq!(parse("screen"), Source::Screen);
        assert_eq!(parse("v4l2"), Source::V4l2("/dev/video0".into()));
        assert_eq!(parse("v4l2:/dev/video2"), Source::V4l2("/dev/video2".into()));
        for bad in [
            "camera",
            "file:",
            "udp://host",
            "udp://:port",
            "srt://host",
            "uri:nothing",
        ] {
            let error = bad.parse::<Source>().unwrap_err().to_string();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn sources_end_as_their_kind_should() {
        assert_eq!(Source::Test.on_end(), OnEnd::Finish);
        assert_eq!(Source::Stdin.on_end(), OnEnd::Finish);
        assert_eq!(Source::File("x".into()).on_end(), OnEnd::Loop);
        assert_eq!("udp://:1".parse::<Source>().unwrap().on_end(), OnEnd::Reconnect);
        assert!(Source::Stdin.needs_pacing() && !Source::Screen.is_container());
    }
}
