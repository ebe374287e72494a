//! `shoal-broadcaster`: encodes a live source, cuts it into signed chunks and seeds the swarm.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shoal_broadcaster::media::{Audio, Encoder, MediaOptions, MediaSource, Resolution};
use shoal_broadcaster::{Broadcaster, BroadcasterEvent, Source, key};
use shoal_peer::net::stats::write_atomically_text;
use shoal_peer::ops::cli::{self, SwarmArgs};
use shoal_peer::ops::status;
use shoal_proto::Ticket;
use tokio_util::sync::CancellationToken;

/// Stream a live source to a shoal swarm: encode, cut into signed chunks, seed the peers.
#[derive(Parser, Debug)]
#[command(version, args_override_self = true)]
struct Args {
    /// What to stream: test (picture and tone), file:PATH (looped), uri:URL, udp://HOST:PORT
    /// or srt://[HOST]:PORT (MPEG-TS from OBS or ffmpeg), stdin (MPEG-TS piped in), screen
    /// (the X display), v4l2[:DEVICE] (a camera).
    #[arg(long, default_value = "test")]
    source: MediaSource,
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

fn main() {
    let args: Args = cli::parse();
    cli::run(|| broadcast(args));
}

async fn broadcast(args: Args) -> anyhow::Result<()> {
    let key = key::load_or_create(&args.key.clone().unwrap_or_else(key::default_path))?;
    let mut media = MediaOptions::default();
    media.audio = args.audio;
    media.encoder = args.encoder;
    media.transcode = args.transcode;
    media.bitrate_kbps = args.bitrate_kbps;
    media.resolution = args.resolution;
    media.fps = args.fps;
    let start = Broadcaster::builder(key)
        .name(args.name.clone())
        .segment(Duration::from_millis(args.segment_ms))
        .swarm(args.swarm.options())
        .source(Source::Media(args.source.clone()))
        .media(media)
        .record(args.record.clone())
        .announce_on_lan(args.lan)
        .start();
    // The ticket is handed out once the source really plays: a file that is not media, or a
    // device that fails, ends here with its error and no ticket.
    let b = tokio::select! {
        b = start => b?,
        _ = cli::shutdown_signal() => return Ok(()),
    };
    hand_out(&b.ticket(), args.ticket_file.as_deref())?;
    tracing::info!(name = %args.name, listen = %b.local_addr(), "broadcasting; share the ticket above");
    for line in b.stats().media {
        println!("{line}");
    }
    let mut events = b.events();
    let done = CancellationToken::new();
    let status = status::show(
        || b.stats().swarm,
        done.clone(),
        |now: &status::Now| {
            // A CDN would send one copy of the stream per viewer; the source sends about one in all.
            let upload = match now.stats.stream_bps.map(|bps| bps as f64) {
                Some(bps) if bps > 0.0 => format!(
                    " · stream {:.2} Mbit/s · uploading {:.2}× it (a CDN: 1× per viewer)",
                    bps / 1e6,
                    now.mbps_out * 1e6 / bps
                ),
                _ => String::new(),
            };
            format!(" · {}{upload}", b.stats().source)
        },
    );
    let run = async {
        let result = loop {
            tokio::select! {
                _ = cli::shutdown_signal() => {
                    tracing::info!("stopping: ending the broadcast");
                    break Ok(());
                }
                ended = b.finished() => break ended.map_err(anyhow::Error::from),
                Some(event) = events.next() => {
                    if let BroadcasterEvent::TicketChanged(ticket) = event {
                        tracing::info!(
                            "this stream is now reachable from outside at {}: the ticket below lists it too{}",
                            ticket.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                            if args.ticket_file.is_some() { " (ticket file rewritten)" } else { "" }
                        );
                        if let Err(e) = hand_out(&ticket, args.ticket_file.as_deref()) {
                            tracing::warn!("{e:#}");
                        }
                    }
                }
            }
        };
        done.cancel();
        result
    };
    let ((), result) = tokio::join!(status, run);
    b.shutdown().await;
    result
}

/// Writes the ticket file (if asked for) and prints the ticket.
fn hand_out(ticket: &Ticket, file: Option<&Path>) -> anyhow::Result<()> {
    if let Some(path) = file {
        write_atomically_text(path, &format!("{ticket}\n"))
            .with_context(|| format!("cannot write ticket file {}", path.display()))?;
    }
    println!("{ticket}");
    Ok(())
}
