//! The encoder settings (`--bitrate-kbps`, `--resolution`, `--fps`, `--segment-ms`,
//! `--encoder`) and the GStreamer branches they make: H.264 with a keyframe every segment,
//! and AAC.

use std::str::FromStr;

use anyhow::{anyhow, bail};
use gstreamer as gst;

/// A picture size, `WIDTHxHEIGHT` on the command line (even sizes from 16x16 to 7680x4320).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
}

impl FromStr for Resolution {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Resolution> {
        let (w, h) = s
            .split_once('x')
            .ok_or_else(|| anyhow!("resolution {s:?} is not WIDTHxHEIGHT"))?;
        let (width, height): (u32, u32) = (w.parse()?, h.parse()?);
        if !(16..=7680).contains(&width) || !(16..=4320).contains(&height) || width % 2 == 1 || height % 2 == 1 {
            bail!("resolution {s:?} out of range (even sizes from 16x16 to 7680x4320)");
        }
        Ok(Resolution { width, height })
    }
}

/// Which H.264 encoder (`--encoder`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoder {
    /// The GPU's (VA-API) where present, else x264.
    Auto,
    /// Software (x264): works everywhere, costs CPU.
    X264,
    /// The GPU through VA-API (gstreamer1.0-vaapi and a VA driver).
    Vaapi,
}

const VAAPI_ELEMENT: &str = "vaapih264enc";

impl Encoder {
    /// The encoder to use on this machine; an explicit `vaapi` without VA-API is an error.
    pub fn resolve(self) -> anyhow::Result<Encoder> {
        let vaapi = gst::ElementFactory::find(VAAPI_ELEMENT).is_some();
        match self {
            Encoder::Auto if vaapi => Ok(Encoder::Vaapi),
            Encoder::Auto => Ok(Encoder::X264),
            Encoder::Vaapi if !vaapi => bail!(
                "--encoder vaapi: no VA-API H.264 encoder on this machine ({VAAPI_ELEMENT} missing: install gstreamer1.0-vaapi and the GPU's VA driver), or use --encoder x264"
            ),
            other => Ok(other),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Encoding {
    pub resolution: Resolution,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub segment_ms: u64,
    /// Resolved: `X264` or `Vaapi`.
    pub encoder: Encoder,
    /// Re-encode H.264/AAC input too (to change its size or bitrate).
    pub transcode: bool,
}

pub const AUDIO_KBPS: u32 = 128;

impl Encoding {
    /// Raw video in, H.264 (a keyframe every segment) out.
    pub fn video_branch(&self) -> String {
        let Resolution { width, height } = self.resolution;
        let key_int = (u64::from(self.fps) * self.segment_ms / 1000).max(1);
        let video_kbps = self.bitrate_kbps.saturating_sub(AUDIO_KBPS).max(100);
        let encoder = match self.encoder {
            Encoder::Vaapi => format!("vaapih264enc rate-control=cbr bitrate={video_kbps} keyframe-period={key_int}"),
            _ => format!(
                "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={key_int} bitrate={video_kbps} \
                 ! video/x-h264,profile=baseline"
            ),
        };
        format!(
            "videoconvert ! videoscale ! videorate ! video/x-raw,format=I420,width={width},height={height},framerate={}/1 \
             ! {encoder} ! h264parse config-interval=-1 ! queue",
            self.fps
        )
    }

    /// Raw audio in, AAC out.
    pub fn audio_branch(&self) -> String {
        format!(
            "audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 ! voaacenc bitrate={} ! aacparse ! queue",
            AUDIO_KBPS * 1000
        )
    }

    /// H.264 in, H.264 out untouched (parsed into access units, SPS/PPS before keyframes).
    pub fn video_passthrough() -> &'static str {
        "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! queue"
    }

    /// AAC in, AAC out untouched.
    pub fn audio_passthrough() -> &'static str {
        "aacparse ! queue"
    }

    /// Elements the encoder needs, with their packages.
    pub fn elements(&self) -> Vec<(&'static str, &'static str)> {
        let mut needed = vec![
            ("voaacenc", "gstreamer1.0-plugins-bad"),
            ("mpegtsmux", "gstreamer1.0-plugins-bad"),
            ("h264parse", "gstreamer1.0-plugins-bad"),
            ("aacparse", "gstreamer1.0-plugins-good"),
            ("videoconvert", "gstreamer1.0-plugins-base"),
            ("audioconvert", "gstreamer1.0-plugins-base"),
            ("appsink", "gstreamer1.0-plugins-base"),
        ];
        needed.push(match self.encoder {
            Encoder::Vaapi => (VAAPI_ELEMENT, "gstreamer1.0-vaapi"),
            _ => ("x264enc", "gstreamer1.0-plugins-ugly"),
        });
        needed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolutions() {
        assert_eq!(
            "640x360".parse::<Resolution>().unwrap(),
            Resolution {
                width: 640,
                height: 360
            }
        );
        assert!("641x360".parse::<Resolution>().is_err());
        assert!("big".parse::<Resolution>().is_err());
    }
}
