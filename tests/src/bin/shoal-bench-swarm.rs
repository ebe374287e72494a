//! `shoal-bench-swarm` (run through `scripts/bench-swarm`): starts a broadcaster, N peers and
//! a gateway on loopback, streams for a while, and prints one JSON object of measurements.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shoal_tests::bench::{self, Config};

/// Measure a real shoal swarm on this machine.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Relay peers (each its own process), besides the broadcaster and one gateway.
    #[arg(long, default_value_t = 50)]
    peers: usize,
    /// Seconds to stream.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    #[arg(long, default_value_t = 2000)]
    bitrate_kbps: u32,
    /// Fraction of the peers killed (no goodbye) and replaced by fresh ones each minute.
    #[arg(long, default_value_t = 0.0)]
    churn_per_min: f64,
    /// Round trip added to every path (emulated in each node's socket; needs binaries built
    /// with the `netem` feature, as scripts/bench-swarm does).
    #[arg(long, default_value_t = 0)]
    rtt_ms: u64,
    /// Share of datagrams dropped on arrival at every node.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Also serve the stream from one plain HTTP origin to as many HLS players as there are
    /// peers, in the same run, and report the bytes it sent beside the swarm's figures.
    #[arg(long)]
    baseline_origin: bool,
    /// Seeds the choice of the peers churn kills (any of them, not the oldest first).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let emulated = args.rtt_ms > 0 || args.loss > 0.0;
    if emulated {
        let spec = format!("rtt_ms={},loss={}", args.rtt_ms, args.loss);
        // SAFETY: no other thread exists yet; every node started later inherits it.
        unsafe { std::env::set_var(shoal_tests::bench::NETEM_ENV, spec) };
    }
    let dir = shoal_tests::process::test_dir("bench-swarm");
    let config = Config {
        peers: args.peers,
        duration: Duration::from_secs(args.duration_s),
        bitrate_kbps: args.bitrate_kbps,
        churn_per_min: args.churn_per_min,
        emulated,
        baseline_origin: args.baseline_origin,
        seed: args.seed,
    };
    let report = bench::run(&config, &dir)?;
    let text = report.to_string();
    println!("{text}");
    if let Some(path) = args.json {
        std::fs::write(&path, format!("{text}\n")).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Leave the logs of a run that went well out of the way (SHOAL_BENCH_KEEP=1 keeps them).
    if std::env::var_os("SHOAL_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("bench-swarm: logs and stats kept in {}", dir.display());
    }
    Ok(())
}
