//! The GStreamer side: a source muxed to MPEG-TS (H.264 + AAC) and pulled from an appsink on
//! a plain thread. H.264 and AAC input passes through untouched; anything else is encoded
//! (a keyframe every segment). A source that stops is covered by a slate until it is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::encoding::Encoding;
use crate::health::Health;
use crate::source::{Audio, OnEnd, Source};

/// No media from a live source for this long: the slate goes on. (A segment is a second:
/// any longer and the viewers' players would stall before the slate reaches them.)
const STALL_AFTER: Duration = Duration::from_secs(1);
/// A lost source's pipeline is built again this often until it plays.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
const MUX_TAIL: &str = "mpegtsmux name=mux ! appsink name=sink sync=false max-buffers=256";

/// Fails with the first missing GStreamer element and the package to install, or with what
/// else the source lacks (a display, a device, a file). GStreamer must be initialised.
pub fn check(source: &Source, audio: Audio, enc: &Encoding) -> anyhow::Result<()> {
    for (element, package) in enc.elements().into_iter().chain(source.elements(audio)) {
        if gst::ElementFactory::find(element).is_none() {
            bail!("GStreamer element {element} is missing: install {package} (scripts/setup does)");
        }
    }
    source.check_available()
}

struct Running {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    bus: gst::Bus,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl Running {
    fn launch(description: &str) -> anyhow::Result<Running> {
        let pipeline = gst::parse::launch(description)
            .context("cannot build the GStreamer pipeline")?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("GStreamer did not return a pipeline"))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| anyhow!("pipeline has no appsink"))?;
        let bus = pipeline.bus().ok_or_else(|| anyhow!("pipeline has no bus"))?;
        Ok(Running { pipeline, sink, bus })
    }

    fn play(self, what: &str) -> anyhow::Result<Running> {
        if self.pipeline.set_state(gst::State::Playing).is_err() {
            let detail = self
                .bus
                .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])
                .and_then(|m| match m.view() {
                    gst::MessageView::Error(e) => Some(e.error().to_string()),
                    _ => None,
                })
                .unwrap_or_else(|| "the pipeline would not start".into());
            bail!("{what}: {detail}");
        }
        Ok(self)
    }

    /// The bus's news: `Some(Err)` on an error, `Some(Ok)` at the end of the media.
    fn ended(&self) -> Option<Result<(), String>> {
        while let Some(msg) = self.bus.pop() {
            match msg.view() {
                gst::MessageView::Error(err) => {
                    let detail = err.debug().map(|d| format!(" ({d})")).unwrap_or_default();
                    tracing::debug!("GStreamer: {}{detail}", err.error());
                    return Some(Err(err.error().to_string()));
                }
                gst::MessageView::Eos(_) => return Some(Ok(())),
                _ => {}
            }
        }
        None
    }

    fn pull(&self, wait: Duration) -> Option<gst::Sample> {
        self.sink
            .try_pull_sample(gst::ClockTime::from_nseconds(wait.as_nanos() as u64))
    }
}

fn build(source: &Source, audio: Audio, enc: &Encoding, health: &Arc<Health>) -> anyhow::Result<Running> {
    let description = match source {
        Source::Test => {
            let gst_caps = video_caps(enc);
            let overlay = if gst::ElementFactory::find("clockoverlay").is_some() {
                "clockoverlay time-format=\"%H:%M:%S\" font-desc=\"Sans 36\" ! "
            } else {
                ""
            };
            format!(
                "videotestsrc is-live=true pattern=smpte ! {gst_caps} ! {overlay}{} ! mux. \
                 audiotestsrc is-live=true wave=sine freq=440 volume=0.2 ! {} ! mux. {MUX_TAIL}",
                enc.video_branch(),
                enc.audio_branch()
            )
        }
        Source::Screen | Source::V4l2(_) => {
            let sound = match audio {
                Audio::Pulse => format!("pulsesrc ! {} ! mux.", enc.audio_branch()),
                Audio::Alsa => format!("alsasrc ! {} ! mux.", enc.audio_branch()),
                Audio::None => String::new(),
            };
            format!(
                "{} ! {} ! mux. {sound} {MUX_TAIL}",
                source.head(enc.fps),
                enc.video_branch()
            )
        }
        _ => format!("{} ! parsebin name=demux {MUX_TAIL}", source.head(enc.fps)),
    };
    let running = Running::launch(&description)?;
    if source.is_container() {
        link_streams(&running.pipeline, source, enc, health.clone())?;
    }
    Ok(running)
}

fn video_caps(enc: &Encoding) -> String {
    format!(
        "video/x-raw,width={},height={},framerate={}/1",
        enc.resolution.width, enc.resolution.height, enc.fps
    )
}

/// The slate: a still picture and silence, encoded like any raw source.
fn slate(enc: &Encoding) -> anyhow::Result<Running> {
    let text = if gst::ElementFactory::find("textoverlay").is_some() {
        "textoverlay text=\"The broadcast will resume shortly\" font-desc=\"Sans 28\" valignment=center halignment=center ! "
    } else {
        ""
    };
    let description = format!(
        "videotestsrc is-live=true pattern=black ! {} ! {text}{} ! mux. \
         audiotestsrc is-live=true wave=silence ! {} ! mux. {MUX_TAIL}",
        video_caps(enc),
        enc.video_branch(),
        enc.audio_branch()
    );
    Running::launch(&description)?.play("slate")
}

/// Links the first video and the first audio stream the demuxer finds, once each stream's
/// format is known (its first caps): H.264 and AAC pass through (unless `--transcode`),
/// anything else is decoded and encoded.
fn link_streams(pipeline: &gst::Pipeline, source: &Source, enc: &Encoding, health: Arc<Health>) -> anyhow::Result<()> {
    let demux = pipeline
        .by_name("demux")
        .ok_or_else(|| anyhow!("pipeline has no demuxer"))?;
    let linker = Arc::new(Linker {
        pipeline: pipeline.downgrade(),
        mux: pipeline
            .by_name("mux")
            .ok_or_else(|| anyhow!("pipeline has no muxer"))?,
        enc: enc.clone(),
        pace: source.needs_pacing(),
        taken: Mutex::new((false, false)),
        health,
    });
    demux.connect_pad_added(move |_, pad| {
        if let Some(caps) = pad.current_caps() {
            linker.take(pad, &caps);
            return;
        }
        let linker = linker.clone();
        pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |pad, info| {
            if let Some(gst::PadProbeData::Event(event)) = &info.data
                && let gst::EventView::Caps(caps) = event.view()
            {
                linker.take(pad, caps.caps());
                return gst::PadProbeReturn::Remove;
            }
            gst::PadProbeReturn::Ok
        });
    });
    Ok(())
}

/// Gives each demuxed stream its branch into the muxer.
struct Linker {
    pipeline: gst::glib::WeakRef<gst::Pipeline>,
    mux: gst::Element,
    enc: Encoding,
    pace: bool,
    /// Whether a video and an audio stream were taken.
    taken: Mutex<(bool, bool)>,
    health: Arc<Health>,
}

impl Linker {
    fn take(&self, pad: &gst::Pad, caps: &gst::CapsRef) {
        let Some(pipeline) = self.pipeline.upgrade() else {
            return;
        };
        let Some(s) = caps.structure(0) else { return };
        let kind = s.name().to_string();
        let (branch, what) = self.branch(&kind, s);
        let result = (|| -> anyhow::Result<()> {
            let bin = gst::parse::bin_from_description(&branch, true)?;
            pipeline.add(&bin)?;
            let sink = bin.static_pad("sink").ok_or_else(|| anyhow!("branch has no sink"))?;
            pad.link(&sink).with_context(|| format!("{caps} into {branch}"))?;
            if let Some(src) = bin.static_pad("src") {
                let mux_pad = self
                    .mux
                    .request_pad_simple("sink_%d")
                    .ok_or_else(|| anyhow!("muxer refused a pad"))?;
                if let Err(e) = src.link(&mux_pad) {
                    self.mux.release_request_pad(&mux_pad);
                    return Err(e).with_context(|| format!("{branch} into the muxer"));
                }
            }
            bin.sync_state_with_parent()?;
            Ok(())
        })();
        match result {
            Ok(()) if !what.is_empty() => {
                tracing::info!("{what}");
                self.health.set_media(&what);
            }
            Ok(()) => {}
            Err(e) => tracing::error!("cannot take the {kind} stream: {e:#}"),
        }
    }

    /// The branch for a stream of these caps, and what it does in words (empty: dropped).
    fn branch(&self, kind: &str, s: &gst::StructureRef) -> (String, String) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let pace = if self.pace { "clocksync ! " } else { "" };
        let enc = &self.enc;
        if kind.starts_with("video/") && !taken.0 {
            taken.0 = true;
            if kind == "video/x-h264" && !enc.transcode {
                let profile = s.get::<&str>("profile").unwrap_or("(profile unknown)");
                let size = match (s.get::<i32>("width"), s.get::<i32>("height")) {
                    (Ok(w), Ok(h)) => format!("{w}x{h}"),
                    _ => "(size unknown)".into(),
                };
                return (
                    format!("{pace}{}", Encoding::video_passthrough()),
                    format!("video: H.264 {profile} {size}, passed through"),
                );
            }
            let size = enc.resolution;
            return (
                format!("decodebin ! {pace}{}", enc.video_branch()),
                format!(
                    "video: {kind}, encoded to H.264 {}x{} at {} kbit/s",
                    size.width, size.height, enc.bitrate_kbps
                ),
            );
        }
        if kind.starts_with("audio/") && !taken.1 {
            taken.1 = true;
            let aac = kind == "audio/mpeg" && s.get::<i32>("mpegversion").is_ok_and(|v| v == 2 || v == 4);
            if aac && !enc.transcode {
                return (
                    format!("{pace}{}", Encoding::audio_passthrough()),
                    "audio: AAC, passed through".to_string(),
                );
            }
            return (
                format!("decodebin ! {pace}{}", enc.audio_branch()),
                format!("audio: {kind}, encoded to AAC"),
            );
        }
        // A second video, subtitles, data: taken and dropped, so the demuxer runs on.
        ("fakesink sync=false async=false".to_string(), String::new())
    }
}

/// Hands a pulled sample's muxed bytes to `out`.
fn hand_out(sample: &gst::Sample, out: &mut impl FnMut(Output<'_>)) {
    if let Some(buffer) = sample.buffer()
        && let Ok(map) = buffer.map_readable()
    {
        out(Output::Data(map.as_slice()));
    }
}

/// What the pulling thread reports.
pub enum Output<'a> {
    /// Muxed MPEG-TS bytes.
    Data(&'a [u8]),
    /// What follows is other media (looped file, slate on or off): not continuous.
    Restarted,
}

/// Runs the source until `stop` is set or it ends for good, handing muxed bytes to `out`: a
/// file loops, a sender or device that stops is covered by the slate and waited for.
pub fn run(
    source: &Source,
    audio: Audio,
    enc: &Encoding,
    health: &Arc<Health>,
    stop: &AtomicBool,
    mut out: impl FnMut(Output<'_>),
) -> anyhow::Result<()> {
    let start = || build(source, audio, enc, health).and_then(|r| r.play(&source.to_string()));
    let mut main = Some(start()?);
    let mut slate_on: Option<Running> = None;
    let mut last_media = Instant::now();
    let mut retry_at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(ended) = main.as_ref().and_then(Running::ended) {
            main = None;
            match (source.on_end(), ended) {
                (OnEnd::Finish, Ok(())) => return Ok(()),
                (OnEnd::Finish, Err(e)) => bail!("{source}: {e}"),
                (OnEnd::Loop, Err(e)) => bail!("{source}: {e}"),
                (OnEnd::Loop, Ok(())) => {
                    tracing::info!("{source} ended: starting it over");
                    main = Some(start()?);
                    out(Output::Restarted);
                }
                (OnEnd::Reconnect, ended) => {
                    let why = ended.err().unwrap_or_else(|| "it ended".into());
                    tracing::warn!("{source} lost ({why}): waiting for it to come back");
                    retry_at = Instant::now() + RECONNECT_EVERY;
                }
            }
        }
        if main.is_none() && Instant::now() >= retry_at {
            retry_at = Instant::now() + RECONNECT_EVERY;
            match start() {
                Ok(running) => main = Some(running),
                Err(e) => tracing::debug!("{source} not back yet: {e:#}"),
            }
        }
        let wait = if slate_on.is_some() || main.is_none() {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(100)
        };
        if let Some(sample) = main.as_ref().and_then(|m| m.pull(wait)) {
            if slate_on.take().is_some() {
                tracing::info!("{source} is back: the slate is off");
                out(Output::Restarted);
            }
            health.media_arrived(sample.buffer().and_then(|b| b.dts_or_pts()).map(|t| t.nseconds()));
            last_media = Instant::now();
            hand_out(&sample, &mut out);
            continue;
        }
        if slate_on.is_none() && source.on_end() == OnEnd::Reconnect && last_media.elapsed() >= STALL_AFTER {
            tracing::warn!("no media from the {source} for {STALL_AFTER:?}: showing the slate");
            health.source_lost();
            slate_on = Some(slate(enc)?);
            out(Output::Restarted);
        }
        if let Some(slate) = &slate_on {
            if let Some(Err(e)) = slate.ended() {
                bail!("the slate failed: {e}");
            }
            // What the slate has ready; the main source's pull above paces this loop.
            while let Some(sample) = slate.pull(Duration::ZERO) {
                hand_out(&sample, &mut out);
            }
        }
        if main.is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}
