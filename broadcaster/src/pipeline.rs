//! The GStreamer side: a live source encoded to H.264 + AAC in MPEG-TS (x264 zerolatency, a
//! keyframe every segment), pulled from an appsink on a plain thread.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, anyhow, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A generated picture (with the wall clock when the text plugin is installed) and tone.
    Test,
    /// Any media file GStreamer decodes, played in real time and looped.
    File(PathBuf),
}

impl FromStr for Source {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Source> {
        match s {
            "test" => Ok(Source::Test),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Source::File(PathBuf::from(path))),
                _ => bail!("unknown source {s:?}: use \"test\" or \"file:PATH\""),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub width: u32,
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

#[derive(Clone, Debug)]
pub struct Encoding {
    pub resolution: Resolution,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub segment_ms: u64,
}

const AUDIO_KBPS: u32 = 128;

impl Encoding {
    fn video_branch(&self) -> String {
        let Resolution { width, height } = self.resolution;
        let key_int = (u64::from(self.fps) * self.segment_ms / 1000).max(1);
        let video_kbps = self.bitrate_kbps.saturating_sub(AUDIO_KBPS).max(100);
        format!(
            "videoconvert ! videoscale ! videorate ! video/x-raw,format=I420,width={width},height={height},framerate={}/1 \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={key_int} bitrate={video_kbps} \
             ! video/x-h264,profile=baseline ! h264parse config-interval=-1 ! queue",
            self.fps
        )
    }

    fn audio_branch(&self) -> String {
        format!(
            "audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 ! voaacenc bitrate={} ! aacparse ! queue",
            AUDIO_KBPS * 1000
        )
    }
}

/// Elements every source needs, with the Debian package that brings each.
const NEEDED: &[(&str, &str)] = &[
    ("x264enc", "gstreamer1.0-plugins-ugly"),
    ("voaacenc", "gstreamer1.0-plugins-bad"),
    ("mpegtsmux", "gstreamer1.0-plugins-bad"),
    ("h264parse", "gstreamer1.0-plugins-bad"),
    ("aacparse", "gstreamer1.0-plugins-good"),
    ("videoconvert", "gstreamer1.0-plugins-base"),
    ("audioconvert", "gstreamer1.0-plugins-base"),
    ("appsink", "gstreamer1.0-plugins-base"),
];

/// Fails with the first missing GStreamer element and the package to install.
pub fn check_plugins(source: &Source) -> anyhow::Result<()> {
    gst::init().context("cannot initialise GStreamer")?;
    let extra: &[(&str, &str)] = match source {
        Source::Test => &[
            ("videotestsrc", "gstreamer1.0-plugins-base"),
            ("audiotestsrc", "gstreamer1.0-plugins-base"),
        ],
        Source::File(_) => &[
            ("decodebin", "gstreamer1.0-plugins-base"),
            ("clocksync", "gstreamer1.0-plugins-base"),
        ],
    };
    for (element, package) in NEEDED.iter().chain(extra) {
        if gst::ElementFactory::find(element).is_none() {
            bail!("GStreamer element {element} is missing: install {package} (scripts/setup does)");
        }
    }
    if let Source::File(path) = source {
        std::fs::File::open(path).with_context(|| format!("cannot open source file {}", path.display()))?;
    }
    Ok(())
}

struct Running {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn build(source: &Source, enc: &Encoding) -> anyhow::Result<Running> {
    let tail = "mpegtsmux name=mux ! appsink name=sink sync=false max-buffers=256";
    let description = match source {
        Source::Test => {
            let Resolution { width, height } = enc.resolution;
            let overlay = if gst::ElementFactory::find("clockoverlay").is_some() {
                "clockoverlay time-format=\"%H:%M:%S\" font-desc=\"Sans 36\" ! "
            } else {
                ""
            };
            format!(
                "videotestsrc is-live=true pattern=smpte ! video/x-raw,width={width},height={height},framerate={}/1 ! {overlay}{} ! mux. \
                 audiotestsrc is-live=true wave=sine freq=440 volume=0.2 ! {} ! mux. {tail}",
                enc.fps,
                enc.video_branch(),
                enc.audio_branch()
            )
        }
        Source::File(_) => format!("filesrc name=src ! decodebin name=dec {tail}"),
    };
    let pipeline = gst::parse::launch(&description)
        .context("cannot build the GStreamer pipeline")?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("GStreamer did not return a pipeline"))?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| anyhow!("pipeline has no appsink"))?;
    if let Source::File(path) = source {
        let src = pipeline
            .by_name("src")
            .ok_or_else(|| anyhow!("pipeline has no filesrc"))?;
        src.set_property("location", path.to_string_lossy().as_ref());
        link_decoded_pads(&pipeline, enc)?;
    }
    Ok(Running { pipeline, sink })
}

/// Encodes the first video and first audio stream decodebin finds, each paced to real time.
fn link_decoded_pads(pipeline: &gst::Pipeline, enc: &Encoding) -> anyhow::Result<()> {
    let dec = pipeline
        .by_name("dec")
        .ok_or_else(|| anyhow!("pipeline has no decodebin"))?;
    let mux = pipeline
        .by_name("mux")
        .ok_or_else(|| anyhow!("pipeline has no muxer"))?;
    let weak = pipeline.downgrade();
    let (video, audio) = (enc.video_branch(), enc.audio_branch());
    let done = Arc::new(std::sync::Mutex::new((false, false)));
    dec.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let kind = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
        let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
        let branch = if kind.starts_with("video/") && !done.0 {
            done.0 = true;
            format!("clocksync ! {video}")
        } else if kind.starts_with("audio/") && !done.1 {
            done.1 = true;
            format!("clocksync ! {audio}")
        } else {
            return;
        };
        let linked = (|| -> anyhow::Result<()> {
            let bin = gst::parse::bin_from_description(&branch, true)?;
            pipeline.add(&bin)?;
            let mux_pad = mux
                .request_pad_simple("sink_%d")
                .ok_or_else(|| anyhow!("muxer refused a pad"))?;
            bin.static_pad("src")
                .ok_or_else(|| anyhow!("branch has no src"))?
                .link(&mux_pad)?;
            pad.link(&bin.static_pad("sink").ok_or_else(|| anyhow!("branch has no sink"))?)?;
            bin.sync_state_with_parent()?;
            Ok(())
        })();
        if let Err(e) = linked {
            tracing::error!("cannot encode the decoded {kind} stream: {e:#}");
        }
    });
    Ok(())
}

/// What the pulling thread reports.
pub enum Output<'a> {
    /// Muxed MPEG-TS bytes.
    Data(&'a [u8]),
    /// The source started over (a looped file): what follows is not continuous.
    Restarted,
}

/// Runs the pipeline until `stop` is set or the source ends, handing muxed bytes to `out`.
/// A file source loops forever.
pub fn run(source: &Source, enc: &Encoding, stop: &AtomicBool, mut out: impl FnMut(Output<'_>)) -> anyhow::Result<()> {
    let mut running = start(source, enc)?;
    let bus = running.pipeline.bus().ok_or_else(|| anyhow!("pipeline has no bus"))?;
    let mut bus = bus;
    while !stop.load(Ordering::Relaxed) {
        while let Some(msg) = bus.pop() {
            match msg.view() {
                gst::MessageView::Error(err) => bail!("{}: {}", describe(source), err.error()),
                gst::MessageView::Eos(_) => {
                    if matches!(source, Source::Test) {
                        return Ok(());
                    }
                    tracing::info!("{} ended: starting it over", describe(source));
                    drop(running);
                    running = start(source, enc)?;
                    bus = running.pipeline.bus().ok_or_else(|| anyhow!("pipeline has no bus"))?;
                    out(Output::Restarted);
                    break;
                }
                _ => {}
            }
        }
        if let Some(sample) = running.sink.try_pull_sample(gst::ClockTime::from_mseconds(100))
            && let Some(buffer) = sample.buffer()
            && let Ok(map) = buffer.map_readable()
        {
            out(Output::Data(map.as_slice()));
        }
    }
    Ok(())
}

fn start(source: &Source, enc: &Encoding) -> anyhow::Result<Running> {
    let running = build(source, enc)?;
    if running.pipeline.set_state(gst::State::Playing).is_err() {
        let bus = running.pipeline.bus();
        let detail = bus
            .and_then(|b| b.timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error]))
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(e.error().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "the pipeline would not start".into());
        bail!("{}: {detail}", describe(source));
    }
    Ok(running)
}

fn describe(source: &Source) -> String {
    match source {
        Source::Test => "test source".into(),
        Source::File(path) => format!("source file {}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources_and_resolutions() {
        assert_eq!("test".parse::<Source>().unwrap(), Source::Test);
        assert_eq!(
            "file:/a b.mp4".parse::<Source>().unwrap(),
            Source::File("/a b.mp4".into())
        );
        assert!(
            "camera"
                .parse::<Source>()
                .unwrap_err()
                .to_string()
                .contains("unknown source")
        );
        assert!("file:".parse::<Source>().is_err());
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
