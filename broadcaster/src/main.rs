//! `shoal-broadcaster`: encodes a live source, cuts it into signed chunks and seeds the swarm.

mod chunker;
mod encoding;
mod health;
mod key;
mod pipeline;
mod recorder;
mod source;
mod ticket;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ed25519_dalek::SigningKey;
use shoal_peer::Node;
use shoal_peer::net::node::Publisher;
use shoal_peer::net::stats::now_us;
use shoal_peer::ops::cli::{self, SwarmArgs, UploadMode};
use shoal_peer::ops::status;
use shoal_proto::{Chunk, ChunkFlags};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::chunker::Chunker;
use crate::encoding::{Encoder, Encoding, Resolution};
use crate::health::Health;
use crate::pipeline::Output;
use crate::recorder::Recorder;
use crate::source::{Audio, Source};
use crate::ticket::Tickets;

/// Stream a live source to a shoal swarm: encode, cut into signed chunks, seed the peers.
#[derive(Parser, Debug)]
#[command(version, args_override_self = true)]
struct Args {
    /// What to stream: test (picture and tone), file:PATH (looped), uri:URL, udp://HOST:PORT
    /// or srt://[HOST]:PORT (MPEG-TS from OBS or ffmpeg), stdin (MPEG-TS piped in), screen
    /// (the X display), v4l2[:DEVICE] (a camera).
    #[arg(long, default_value = "test")]
    source: Source,
    /// Sound for the screen or a camera: pulse, alsa or none.
    #[arg(long, value_enum, default_value_t = Audio::None)]
    audio: Audio,
    /// H.264 encoder: auto (the GPU's through VA-API where present, else x264), x264, vaapi.
    #[arg(long, value_enum, default_value_t = Encoder::Auto)]
    encoder: Encoder,
    /// Re-encode H.264/AAC input too (normally passed through untouched, which saves the
    /// CPU; re-encode to change its bitrate or size).
    #[arg(long)]
    transcode: bool,
    /// Announce the stream on the local network (mDNS): `shoal-gateway --lan` finds it with
    /// no ticket typed in.
    #[arg(long)]
    lan: bool,
    /// Also write what is broadcast to this MPEG-TS file, as it goes.
    #[arg(long, value_name = "PATH")]
    record: Option<PathBuf>,
    /// The stream key (created, mode 0600, if missing). Keep it: it is the stream's identity.
    #[arg(long, value_name = "PATH")]
    key: Option<PathBuf>,
    /// The stream's name, shown to viewers.
    #[arg(long, default_value = "shoal live")]
    name: String,
    /// Write the stream's ticket here (it is printed on stdout too).
    #[arg(long, value_name = "PATH")]
    ticket_file: Option<PathBuf>,
    /// Total stream bitrate when encoding (video + 128 kbit/s audio).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(200..=50_000))]
    bitrate_kbps: u32,
    /// Segment length; a keyframe starts every segment (passed-through video is cut at its
    /// own keyframes: set the sender's keyframe interval to this).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(200..=10_000))]
    segment_ms: u64,
    /// Picture size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720")]
    resolution: Resolution,
    /// Frames per second.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=120))]
    fps: u32,
    #[command(flatten)]
    swarm: SwarmArgs,
    /// TOML file with any of these flags as keys (flags on the command line win).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Signed chunks waiting for the swarm node.
const PUBLISH_QUEUE: usize = 256;

fn main() {
    let args: Args = cli::parse();
    cli::run(|| broadcast(args));
}

async fn broadcast(args: Args) -> anyhow::Result<()> {
    gstreamer::init().context("cannot initialise GStreamer")?;
    let encoding = Encoding {
        resolution: args.resolution,
        fps: args.fps,
        bitrate_kbps: args.bitrate_kbps,
        segment_ms: args.segment_ms,
        encoder: args.encoder.resolve()?,
        transcode: args.transcode,
    };
    pipeline::check(&args.source, args.audio, &encoding)?;
    let recorder = args.record.as_deref().map(Recorder::create).transpose()?;
    let key_path = args.key.clone().unwrap_or_else(key::default_path);
    let key = key::load_or_create(&key_path)?;
    let bootstrap = args.swarm.bootstrap_addrs().await?;
    let core = shoal_peer::state::Config {
        source: true,
        ..args.swarm.core_config()
    };
    // Its node ID is the stream key itself, proven in every handshake: the source cannot be
    // impersonated, and every peer knows which neighbour it is.
    let node = Node::spawn(shoal_peer::NodeConfig {
        node_key: Some(key.clone()),
        // The stream's own upload never steps aside.
        upload_mode: args.swarm.upload_mode_or(UploadMode::Foreground),
        ..args.swarm.node_config(key.verifying_key(), bootstrap.clone(), core)
    })
    .await?;

    let tickets = Tickets {
        key: key.verifying_key(),
        name: args.name.clone(),
        bootstrap,
        local: shoal_peer::net::transport::advertised_addrs(node.local_addr()),
        file: args.ticket_file.clone(),
    };
    let dht_done = CancellationToken::new();
    if let Some(dht) = args.swarm.dht()? {
        let (key, addrs, stats) = (key.clone(), tickets.make(&[]).addrs, node.stats());
        let public = move || stats.public_addrs();
        tokio::spawn(shoal_peer::discovery::dht::publish(
            dht,
            key,
            addrs,
            public,
            dht_done.clone(),
        ));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Health::default());
    let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
    let mut encoder = {
        let input = Input {
            source: args.source.clone(),
            audio: args.audio,
            encoding,
            health: health.clone(),
        };
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || encode(&input, &key, &stop, tx, recorder))
    };
    let (first_tx, first_rx) = oneshot::channel();
    let publisher = tokio::spawn(publish(rx, node.publisher(), node.stats(), first_tx));

    // The ticket is handed out once the source really plays: a file that is not media, or a
    // device that fails, ends here with its error and no ticket.
    let mut first_rx = first_rx;
    tokio::select! {
        // (A dropped sender is no media: the encoder's own result then tells why.)
        Ok(()) = &mut first_rx => {}
        ended = &mut encoder => {
            ended.context("encoder thread failed")??;
            anyhow::bail!("the source ended before it produced anything");
        }
        _ = cli::shutdown_signal() => {
            stop.store(true, Ordering::Relaxed);
            node.shutdown().await;
            return Ok(());
        }
    }
    let public = node.stats().public_addrs();
    let ticket = tickets.make(&public);
    tickets.hand_out(&ticket)?;
    let _announcement = if args.lan {
        Some(shoal_peer::discovery::lan::announce(
            &ticket,
            node.local_addr().port(),
            &node.node_id().short(),
        )?)
    } else {
        None
    };
    tracing::info!(name = %args.name, listen = %node.local_addr(), "broadcasting; share the ticket above");

    let status_done = CancellationToken::new();
    tokio::spawn(tickets.follow(node.stats(), public, status_done.clone()));
    for line in health.media() {
        println!("{line}");
    }
    let stats = node.stats();
    let status = tokio::spawn(status::show(
        move || stats.snapshot(),
        status_done.clone(),
        move |now: &status::Now| {
            // A CDN would send one copy of the stream per viewer; the source sends about one in all.
            let upload = match now.stats.stream_bps.map(|bps| bps as f64) {
                Some(bps) if bps > 0.0 => format!(
                    " · stream {:.2} Mbit/s · uploading {:.2}× it (a CDN: 1× per viewer)",
                    bps / 1e6,
                    now.mbps_out * 1e6 / bps
                ),
                _ => String::new(),
            };
            format!(" · {}{upload}", health.summary())
        },
    ));
    let result = tokio::select! {
        _ = cli::shutdown_signal() => {
            tracing::info!("stopping: ending the broadcast");
            stop.store(true, Ordering::Relaxed);
            Ok(())
        }
        ended = encoder => {
            stop.store(true, Ordering::Relaxed);
            ended.context("encoder thread failed")?
        }
    };
    status_done.cancel();
    dht_done.cancel();
    let _ = status.await;
    // Let the end-of-stream chunk reach the neighbours before saying goodbye.
    let _ = tokio::time::timeout(Duration::from_secs(3), publisher).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.shutdown().await;
    result
}

/// What the encoding thread reads from.
struct Input {
    source: Source,
    audio: Audio,
    encoding: Encoding,
    health: Arc<Health>,
}

/// Pulls the pipeline's output, cuts and signs chunks (and records them); runs on a
/// blocking thread.
fn encode(
    input: &Input,
    key: &SigningKey,
    stop: &AtomicBool,
    tx: mpsc::Sender<Chunk>,
    mut recorder: Option<Recorder>,
) -> anyhow::Result<()> {
    let mut epoch_bytes = [0u8; 8];
    getrandom::fill(&mut epoch_bytes).map_err(|e| anyhow::anyhow!("no system randomness for the stream epoch: {e}"))?;
    let mut chunker = Chunker::new(u64::from_le_bytes(epoch_bytes), input.encoding.segment_ms);
    let mut send = |header, payload: bytes::Bytes| -> bool {
        if let Some(r) = &mut recorder {
            r.write(&payload);
        }
        match Chunk::sign(header, payload, key) {
            Ok(chunk) => tx.blocking_send(chunk).is_ok(),
            Err(e) => {
                tracing::error!("cannot sign a chunk: {e}");
                true
            }
        }
    };
    let mut open = true;
    let mut keyframes = KeyframeWatch::new(input.encoding.segment_ms);
    let result = pipeline::run(
        &input.source,
        input.audio,
        &input.encoding,
        &input.health,
        stop,
        |out| {
            let cuts = match out {
                Output::Data(bytes) => chunker.push(bytes, now_us()),
                Output::Restarted => chunker.restart(now_us()),
            };
            for (header, payload) in cuts {
                if header.flags.has(ChunkFlags::SEGMENT_START) {
                    keyframes.segment_started(header.timestamp_us);
                }
                open &= send(header, payload);
            }
            if !open {
                stop.store(true, Ordering::Relaxed);
            }
        },
    );
    let (header, payload) = chunker.finish(now_us());
    send(header, payload);
    result
}

/// Segments are cut at the input's keyframes: passed-through video from a sender with a long
/// keyframe interval (OBS's default is several seconds) makes long segments and every viewer
/// that much further behind. Says so, now and then.
struct KeyframeWatch {
    segment_us: u64,
    last_start_us: Option<u64>,
    warned_at_us: Option<u64>,
}

impl KeyframeWatch {
    fn new(segment_ms: u64) -> Self {
        KeyframeWatch {
            segment_us: segment_ms * 1000,
            last_start_us: None,
            warned_at_us: None,
        }
    }

    fn segment_started(&mut self, at_us: u64) {
        let Some(last) = self.last_start_us.replace(at_us) else {
            return;
        };
        let gap_us = at_us.saturating_sub(last);
        let recently = self.warned_at_us.is_some_and(|w| at_us.saturating_sub(w) < 60_000_000);
        if gap_us > 2 * self.segment_us && !recently {
            self.warned_at_us = Some(at_us);
            tracing::warn!(
                "the input has a keyframe only every {:.1} s: set the sender's keyframe interval to {:.1} s (OBS: Keyframe Interval), or add --transcode; viewers are that much further behind",
                gap_us as f64 / 1e6,
                self.segment_us as f64 / 1e6
            );
        }
    }
}

/// Hands chunks to the swarm and logs what the source uploads now and then.
async fn publish(
    mut rx: mpsc::Receiver<Chunk>,
    publisher: Publisher,
    stats: Arc<shoal_peer::net::stats::Stats>,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut produced: u64 = 0;
    let mut chunks: u64 = 0;
    let mut reported: u64 = 0;
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    loop {
        tokio::select! {
            chunk = rx.recv() => {
                let Some(chunk) = chunk else { break };
                // Media, not the end-of-stream chunk a failing source still sends.
                if !chunk.header.flags.has(ChunkFlags::END_OF_STREAM)
                    && let Some(first) = first.take()
                {
                    let _ = first.send(());
                }
                produced += chunk.encoded_len() as u64;
                chunks += 1;
                if publisher.publish(chunk).await.is_err() {
                    break;
                }
            }
            _ = report.tick() => {
                let sent = stats.wire().carried_bytes();
                // Over the last ten seconds (the total would grow without end).
                let stream_kbps = (produced - reported) * 8 / 1000 / 10;
                reported = produced;
                tracing::info!(
                    chunks,
                    stream_kbps,
                    upload_ratio = format!("{:.2}", sent as f64 / produced.max(1) as f64),
                    "streaming"
                );
            }
        }
    }
}
