//! `shoal-gateway`: joins a stream's swarm as a peer and re-serves it as HLS on localhost,
//! so VLC, a browser, a kiosk or ffmpeg can play it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shoal_gateway::{Latency, Viewer, ViewerError};
use shoal_peer::ops::cli::{self, SwarmArgs, TicketArgs};
use shoal_peer::ops::status;
use tokio_util::sync::CancellationToken;

/// Watch a shoal stream: join its swarm and serve it as HLS to any player on this machine.
#[derive(Parser, Debug)]
#[command(version, args_override_self = true)]
struct Args {
    #[command(flatten)]
    ticket: TicketArgs,
    /// Where to serve the player page and /live.m3u8.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    http: SocketAddr,
    /// low: LL-HLS parts, ≈ 1 s behind in the browser; normal: whole segments, more buffer.
    #[arg(long, value_enum, default_value = "low")]
    latency: Latency,
    #[command(flatten)]
    swarm: SwarmArgs,
    /// Find the stream on the local network (mDNS) when no ticket is given — the one there,
    /// or the one called NAME — and announce it there for others.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    lan: Option<String>,
    /// TOML file with any of these flags as keys (flags on the command line win).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() {
    let args: Args = cli::parse();
    cli::run(|| serve(args));
}

/// How long `--lan` looks for a stream before giving up.
const LAN_SEARCH: Duration = Duration::from_secs(10);

async fn serve(args: Args) -> anyhow::Result<()> {
    let ticket = match &args.lan {
        Some(name) if !args.ticket.given() => {
            eprintln!("looking for streams on the local network…");
            let name = (!name.is_empty()).then(|| name.clone());
            let ticket = Viewer::find_on_lan(name, LAN_SEARCH).await?;
            eprintln!("found \"{}\" on the local network", ticket.name);
            ticket
        }
        _ => args.ticket.load()?,
    };
    let viewer = Viewer::builder(ticket)
        .swarm(args.swarm.options())
        .http(Some(args.http))
        .latency(args.latency)
        // Kiosks on this network can join through us too.
        .announce_on_lan(args.lan.is_some())
        .start()
        .await
        .map_err(|e| match e {
            ViewerError::Http { addr, source } => anyhow::anyhow!(
                "cannot serve HTTP on {addr} (is another gateway running? pick another --http): {source}"
            ),
            ViewerError::Swarm(e) => cli::in_flag_terms(e),
            e => e.into(),
        })?;
    let http = viewer.http_addr().unwrap_or(args.http);
    println!(
        "watching \"{}\": open http://{http}/ — or play http://{http}/live.m3u8 in VLC",
        viewer.name()
    );
    let done = CancellationToken::new();
    let status = status::show(
        || viewer.stats().swarm,
        done.clone(),
        |_: &status::Now| {
            let s = viewer.stats();
            let behind = s.segment_latency_ms.p50.map_or("–".to_string(), status::duration);
            format!(
                " · {} segments served, ready {behind} after the broadcaster",
                s.segments.published
            )
        },
    );
    let wait = async {
        cli::shutdown_signal().await;
        done.cancel();
    };
    tokio::join!(status, wait);
    tracing::info!("shutting down");
    viewer.shutdown().await;
    Ok(())
}
