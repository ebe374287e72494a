//! Sources GStreamer reads (the `gstreamer` feature): what the `shoal-broadcaster` binary's
//! `--source` names — a test picture, a file, a URL, OBS over UDP or SRT, stdin, the screen, a
//! camera — encoded to H.264 and AAC, or passed through when they are already.

use std::sync::atomic::{AtomicBool, Ordering};

use shoal_peer::net::stats::now_us;
use shoal_proto::{Chunk, ChunkFlags};
use tokio::sync::mpsc;

use crate::broadcast::{BroadcastError, Cut};
use crate::health::Health;
use crate::keyframes::KeyframeWatch;
use crate::pipeline::{self, Output};

pub use crate::encoding::{Encoder, Resolution};
pub use crate::source::{Audio, Source as MediaSource};

/// How a media source is encoded (flags of the binary of the same names).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MediaOptions {
    /// Sound for the screen or a camera.
    pub audio: Audio,
    /// The H.264 encoder: the GPU's through VA-API where present, else x264.
    pub encoder: Encoder,
    /// Re-encode H.264/AAC input too (normally passed through untouched).
    pub transcode: bool,
    /// Total stream bitrate when encoding (video + 128 kbit/s audio).
    pub bitrate_kbps: u32,
    /// Picture size when encoding.
    pub resolution: Resolution,
    /// Frames per second when encoding.
    pub fps: u32,
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            audio: Audio::None,
            encoder: Encoder::Auto,
            transcode: false,
            bitrate_kbps: 2000,
            resolution: Resolution {
                width: 1280,
                height: 720,
            },
            fps: 30,
        }
    }
}

/// Checks that this machine can play `source` as asked (GStreamer, its plugins, the device,
/// the encoder), before anything joins the swarm: one error naming what is missing.
pub(crate) fn prepare(
    source: &MediaSource,
    options: &MediaOptions,
    segment_ms: u64,
) -> Result<crate::encoding::Encoding, BroadcastError> {
    let fail = |e: anyhow::Error| BroadcastError::Source(format!("{e:#}"));
    // (Process-wide and idempotent: the one global a media source needs.)
    gstreamer::init().map_err(|e| BroadcastError::Source(format!("cannot initialise GStreamer: {e}")))?;
    let encoding = crate::encoding::Encoding {
        resolution: options.resolution,
        fps: options.fps,
        bitrate_kbps: options.bitrate_kbps,
        segment_ms,
        encoder: options.encoder.resolve().map_err(fail)?,
        transcode: options.transcode,
    };
    pipeline::check(source, options.audio, &encoding).map_err(fail)?;
    Ok(encoding)
}

/// Pulls the pipeline's output, cuts and signs chunks (and records them) until `stop` or the
/// source ends for good; runs on a blocking thread.
pub(crate) fn encode(
    source: &MediaSource,
    options: &MediaOptions,
    encoding: crate::encoding::Encoding,
    mut cut: Cut,
    tx: mpsc::Sender<Chunk>,
    health: &std::sync::Arc<Health>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut open = true;
    let mut keyframes = KeyframeWatch::new(encoding.segment_ms);
    let result = pipeline::run(source, options.audio, &encoding, health, stop, |out| {
        let cuts = match out {
            Output::Data(bytes) => cut.chunker.push(bytes, now_us()),
            Output::Restarted => cut.chunker.restart(now_us()),
        };
        for (header, payload) in cuts {
            if header.flags.has(ChunkFlags::SEGMENT_START) {
                keyframes.segment_started(header.timestamp_us);
            }
            if let Some(chunk) = cut.sign(header, payload) {
                open &= tx.blocking_send(chunk).is_ok();
            }
        }
        if !open {
            stop.store(true, Ordering::Relaxed);
        }
    });
    let (header, payload) = cut.chunker.finish(now_us());
    if let Some(chunk) = cut.sign(header, payload) {
        let _ = tx.blocking_send(chunk);
    }
    result
}
