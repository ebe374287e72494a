//! `shoal-gateway`: joins a stream's swarm as a peer and re-serves it as HLS on localhost,
//! so VLC, a browser, a kiosk or ffmpeg can play it.

mod assembler;
mod gateway;
mod http;
mod metrics;
mod packager;
mod playlist;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shoal_peer::net::stats::{now_us, spawn_writer};
use shoal_peer::ops::cli::{self, SwarmArgs, TicketArgs};
use shoal_peer::ops::status;
use shoal_peer::{Node, NodeConfig};
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::playlist::Latency;

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
            let name = (!name.is_empty()).then(|| name.clone());
            eprintln!("looking for streams on the local network…");
            let found =
                tokio::task::spawn_blocking(move || shoal_peer::discovery::lan::find(name.as_deref(), LAN_SEARCH))
                    .await??;
            eprintln!("found \"{}\" on the local network", found.ticket.name);
            found.ticket
        }
        _ => args.ticket.load()?,
    };
    let listener = tokio::net::TcpListener::bind(args.http).await.with_context(|| {
        format!(
            "cannot serve HTTP on {} (is another gateway running? pick another --http)",
            args.http
        )
    })?;
    let http_addr = listener.local_addr()?;
    cli::check_reachable(&ticket, &args.swarm)?;
    let dht = args.swarm.dht()?;
    let dial = cli::dial_list(&ticket, args.swarm.bootstrap_addrs().await?, args.swarm.no_discovery);
    let mut core = args.swarm.core_config();
    core.deliver = true;
    let mut node = Node::spawn(NodeConfig {
        // The gateway serves its counters at /stats.json and writes them itself.
        stats_json: None,
        ..args.swarm.node_config(ticket.stream_key, dial, core)
    })
    .await?;
    let gateway = Gateway::new(ticket.name.clone(), args.latency, node.stats());
    let cancel = CancellationToken::new();
    // Kiosks on this network can join through us too.
    let _announcement = match &args.lan {
        Some(_) => Some(shoal_peer::discovery::lan::announce(
            &ticket,
            node.local_addr().port(),
            &node.node_id().short(),
        )?),
        None => None,
    };
    if let Some(dht) = dht {
        let finder = node.peer_finder();
        tokio::spawn(shoal_peer::discovery::dht::follow(
            dht,
            ticket.stream_key,
            finder,
            cancel.clone(),
        ));
    }
    let mut deliveries = node.take_deliveries().context("node gives no deliveries")?;
    let feeder = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            while let Some(chunk) = deliveries.recv().await {
                gateway.push(chunk, now_us());
            }
        })
    };
    let writer = args.swarm.stats_json.clone().map(|path| {
        let gateway = gateway.clone();
        spawn_writer(path, move || gateway.snapshot(), cancel.clone())
    });

    println!(
        "watching \"{}\": open http://{http_addr}/ — or play http://{http_addr}/live.m3u8 in VLC",
        ticket.name
    );
    let status_gateway = gateway.clone();
    let server = axum::serve(listener, http::router(gateway)).with_graceful_shutdown({
        let cancel = cancel.clone();
        async move { cancel.cancelled().await }
    });
    let server = tokio::spawn(async move { server.await });
    let status = tokio::spawn(status::show(node.stats(), cancel.clone(), move |_: &status::Now| {
        let s = status_gateway.snapshot();
        let behind = s.segment_latency_ms.p50.map_or("–".to_string(), status::duration);
        format!(
            " · {} segments served, ready {behind} after the broadcaster",
            s.segments.published
        )
    }));
    cli::shutdown_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    let _ = status.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    feeder.abort();
    node.shutdown().await;
    Ok(())
}
