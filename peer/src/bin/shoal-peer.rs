//! `shoal-peer`: a headless relay. Joins a stream by its ticket and relays verified chunks to
//! its neighbours, uploading as much as `--upload-kbps` allows.

use clap::Parser;
use shoal_peer::Node;
use shoal_peer::ops::cli::{self, SwarmArgs, TicketArgs, UploadMode};
use shoal_peer::ops::status;
use tokio_util::sync::CancellationToken;

/// Relay a shoal stream: verify every chunk and pass it on to other viewers.
#[derive(Parser, Debug)]
#[command(version, args_override_self = true)]
struct Args {
    #[command(flatten)]
    ticket: TicketArgs,
    #[command(flatten)]
    swarm: SwarmArgs,
    /// This machine is reachable from anywhere (a server): serve as rendezvous and first hop
    /// for broadcasters and viewers behind NAT, keeping many more neighbours (at least 64).
    #[arg(long)]
    public: bool,
    /// TOML file with any of these flags as keys (flags on the command line win).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

/// Neighbours a `--public` relay keeps at least.
const PUBLIC_NEIGHBOURS: usize = 64;

fn main() {
    let args: Args = cli::parse();
    cli::run(|| relay(args));
}

async fn relay(args: Args) -> anyhow::Result<()> {
    let ticket = args.ticket.load()?;
    cli::check_reachable(&ticket, &args.swarm)?;
    let dht = args.swarm.dht()?;
    let dial = cli::dial_list(&ticket, args.swarm.bootstrap_addrs().await?, args.swarm.no_discovery);
    let mut core = args.swarm.core_config();
    if args.public {
        // Everyone behind a NAT meets here first and learns of each other through it.
        core.limits.max_neighbours = core.limits.max_neighbours.max(PUBLIC_NEIGHBOURS);
        core.limits.max_incoming_connections = core.limits.max_incoming_connections.max(PUBLIC_NEIGHBOURS);
    }
    // A public relay is a server: its upload is what it is there for.
    let mode = if args.public {
        UploadMode::Foreground
    } else {
        UploadMode::Background
    };
    let node = Node::spawn(shoal_peer::NodeConfig {
        upload_mode: args.swarm.upload_mode_or(mode),
        ..args.swarm.node_config(ticket.stream_key, dial, core)
    })
    .await?;
    println!(
        "relaying \"{}\" on {} as node {}",
        ticket.name,
        node.local_addr(),
        node.node_id().short()
    );
    let status_done = CancellationToken::new();
    if let Some(dht) = dht {
        let finder = node.peer_finder();
        tokio::spawn(shoal_peer::discovery::dht::follow(
            dht,
            ticket.stream_key,
            finder,
            status_done.clone(),
        ));
    }
    let status = tokio::spawn(status::show(node.stats(), status_done.clone(), status::nothing));
    cli::shutdown_signal().await;
    status_done.cancel();
    let _ = status.await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
