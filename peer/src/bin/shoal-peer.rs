//! `shoal-peer`: a headless relay. Joins a stream by its ticket and relays verified chunks to
//! its neighbours, uploading as much as `--upload-kbps` allows.

use clap::Parser;
use shoal_peer::ops::cli::{self, SwarmArgs, TicketArgs};
use shoal_peer::ops::status;
use shoal_peer::relay::Relay;
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

fn main() {
    let args: Args = cli::parse();
    cli::run(|| relay(args));
}

async fn relay(args: Args) -> anyhow::Result<()> {
    let ticket = args.ticket.load()?;
    let relay = Relay::builder(ticket.clone())
        .swarm(args.swarm.options())
        .public(args.public)
        .start()
        .await
        .map_err(cli::in_flag_terms)?;
    println!(
        "relaying \"{}\" on {} as node {}",
        ticket.name,
        relay.local_addr(),
        relay.node_id().short()
    );
    let done = CancellationToken::new();
    let status = status::show(|| relay.stats(), done.clone(), status::nothing);
    let wait = async {
        cli::shutdown_signal().await;
        done.cancel();
    };
    tokio::join!(status, wait);
    tracing::info!("shutting down");
    relay.shutdown().await;
    Ok(())
}
