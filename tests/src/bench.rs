//! `scripts/bench-swarm`: a real swarm on this machine — one broadcaster, N `shoal-peer`
//! processes that find each other by peer exchange, one gateway — run for a while, then
//! measured from the nodes' `--stats-json` files and /proc, with the simulator's definitions
//! (DESIGN.md): one JSON object.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shoal_peer::net::stats::{Snapshot, fine_bucket_bound_ms as bucket_ms};

use crate::process::read_stats;
use crate::swarm::{self, Node};

/// A chunk held later than this after it was emitted does not count as delivered.
pub const DEADLINE_MS: f64 = 3000.0;
/// Peers started at once: a crowd arriving together, not all in the same millisecond.
const JOIN_SPACING: Duration = Duration::from_millis(40);
/// Chunks a node must have been there for to be considered for the worst node's ratio.
const WORST_NODE_SPAN: u64 = 100;
/// After the broadcast ends, stragglers are waited for this long before counting.
const DRAIN: Duration = Duration::from_secs(4);

#[derive(Clone, Debug)]
pub struct Config {
    pub peers: usize,
    pub duration: Duration,
    pub bitrate_kbps: u32,
    /// Fraction of the relay peers killed (SIGKILL) and replaced by fresh ones each minute.
    pub churn_per_min: f64,
    /// Delay and loss are emulated (`NETEM_ENV` is set for the nodes): check they apply it.
    pub emulated: bool,
    /// Also serve the stream from one plain HTTP origin to as many players as there are
    /// peers, in the same run, and report what that origin sent.
    pub baseline_origin: bool,
    /// Seeds the choice of churn's victims.
    pub seed: u64,
}

/// The nodes' delay-and-loss setting (peer/src/netem.rs), inherited from this process.
pub const NETEM_ENV: &str = "SHOAL_NETEM";

/// A relay peer of the run, with when it joined and the CPU it had used when measuring began.
struct Peer {
    node: Node,
    cpu_at_start: Option<Duration>,
    measured_from: Instant,
}

impl Peer {
    fn start(dir: &Path, name: &str, ticket: &Path, bootstrap: &str) -> anyhow::Result<Peer> {
        let node = swarm::peer(dir, name, ticket, bootstrap, &[])?;
        Ok(Peer {
            cpu_at_start: node.proc.cpu_time(),
            measured_from: Instant::now(),
            node,
        })
    }
}

/// Runs the swarm described by `config` in `dir` and returns the report.
pub fn run(config: &Config, dir: &Path) -> anyhow::Result<Value> {
    let bitrate = config.bitrate_kbps.to_string();
    let mut broadcaster = swarm::broadcaster(dir, &["--bitrate-kbps", &bitrate])?;
    if config.emulated {
        anyhow::ensure!(
            broadcaster.node.proc.stderr_text().contains("emulating delay and loss"),
            "{NETEM_ENV} is set but the nodes ignore it: build them with the netem feature (scripts/bench-swarm does)"
        );
    }
    let ticket = broadcaster.ticket_file.clone();
    let source = broadcaster.node.addr.clone();
    let mut peers = Vec::with_capacity(config.peers);
    for i in 0..config.peers {
        peers.push(
            Peer::start(dir, &format!("peer{i}"), &ticket, &source).with_context(|| format!("starting peer {i}"))?,
        );
        std::thread::sleep(JOIN_SPACING);
    }
    let gateway = swarm::gateway_in_swarm(dir, &ticket, &source)?;
    eprintln!(
        "bench-swarm: {} peers and a gateway joined; streaming for {:?}",
        config.peers, config.duration
    );

    // The baseline: the gateway is a plain HTTP origin too; as many HLS players as peers poll it.
    let baseline = config.baseline_origin.then(|| {
        let produced = broadcaster.node.snapshot().chunks.published_bytes;
        (crate::origin::start(&gateway.url(""), config.peers), produced)
    });

    // Churn: kill one relay now and then, without goodbye, and start a fresh one.
    let started = Instant::now();
    let kill_every = (config.churn_per_min > 0.0)
        .then(|| Duration::from_secs_f64(60.0 / (config.churn_per_min * config.peers as f64)));
    let mut next_kill = kill_every.map(|every| started + every);
    let mut fresh = config.peers;
    let mut rng = SmallRng::seed_from_u64(config.seed);
    while started.elapsed() < config.duration {
        std::thread::sleep(Duration::from_millis(100));
        if let (Some(at), Some(every)) = (next_kill, kill_every)
            && Instant::now() >= at
        {
            next_kill = Some(at + every);
            // Any peer may leave: the oldest are the top of the trees, the newest leaves.
            let victim = rng.random_range(0..peers.len());
            peers[victim].node.proc.kill();
            peers[victim] = Peer::start(dir, &format!("peer{fresh}"), &ticket, &source)?;
            fresh += 1;
        }
    }

    // Per-peer CPU over the measured time, and memory now, before the broadcast ends.
    let cpu_pct: Vec<f64> = peers
        .iter()
        .filter_map(|p| {
            let used = p.node.proc.cpu_time()?.checked_sub(p.cpu_at_start?)?;
            Some(100.0 * used.as_secs_f64() / p.measured_from.elapsed().as_secs_f64())
        })
        .collect();
    let rss_mib: Vec<f64> = peers
        .iter()
        .filter_map(|p| p.node.proc.rss_bytes())
        .map(|b| b as f64 / 1048576.0)
        .collect();

    let origin = baseline.map(|(players, produced_before)| {
        let sent = players.stop();
        let produced = broadcaster
            .node
            .snapshot()
            .chunks
            .published_bytes
            .saturating_sub(produced_before);
        json!({
            "players": config.peers,
            "bytes_sent": sent,
            "upload_ratio": round(sent as f64 / produced.max(1) as f64, 2),
        })
    });

    // End the broadcast (every peer then holds the end-of-stream chunk), let stragglers land,
    // and read everyone's final counters.
    broadcaster.node.proc.interrupt(Duration::from_secs(10));
    std::thread::sleep(DRAIN);
    let source_stats = broadcaster.node.snapshot();
    let peer_stats: Vec<Snapshot> = peers.iter().map(|p| p.node.snapshot()).collect();
    // The gateway's stats are a node's with its playlist's beside them.
    let gateway_stats = gateway.stats();
    let gateway_swarm: Snapshot = read_stats(&gateway.stats);

    let mut fine = BTreeMap::new();
    let (mut delivered, mut expected) = (0u64, 0u64);
    let (mut duplicate_bytes, mut useful_bytes) = (0u64, 0u64);
    let mut startups = Vec::new();
    let mut worst: Option<(f64, String)> = None;
    for s in peer_stats.iter().chain([&gateway_swarm]) {
        let delivered_before = delivered;
        for (&bucket, &count) in &s.latency_histogram_ms.fine {
            *fine.entry(bucket).or_insert(0u64) += count;
            if bucket_ms(bucket) <= DEADLINE_MS {
                delivered += count;
            }
        }
        if let Some(live) = s.live_chunks {
            let (first, newest) = (live.first_seq, live.newest_seq);
            expected += newest - first + 1;
            let mine = (delivered - delivered_before) as f64 / (newest - first + 1) as f64;
            // (A peer churn started in the last seconds says little about anything.)
            if newest - first >= WORST_NODE_SPAN && worst.as_ref().is_none_or(|(w, _)| mine < *w) {
                worst = Some((mine, s.node_id.clone()));
            }
        }
        duplicate_bytes += s.chunks.duplicate_bytes;
        useful_bytes += s.chunks.verified_bytes;
        startups.extend(s.startup_ms.map(|ms| ms as f64));
    }
    // Stop everyone together rather than one by one as they are dropped.
    for p in &peers {
        p.node.proc.signal_interrupt();
    }
    gateway.proc.signal_interrupt();

    let produced = source_stats.chunks.published_bytes as f64;
    let sent = source_stats.bytes_out.total() as f64;
    let report = json!({
        "peers": config.peers,
        "duration_s": config.duration.as_secs(),
        "bitrate_kbps": config.bitrate_kbps,
        "churn_per_min": config.churn_per_min,
        "seed": config.seed,
        "netem": std::env::var(NETEM_ENV).ok(),
        "peers_replaced": fresh - config.peers,
        "delivery_ratio": round((delivered as f64 / expected.max(1) as f64).min(1.0), 5),
        "delivery_ratio_worst_node": worst.as_ref().map(|(w, _)| round(w.min(1.0), 4)),
        "worst_node": worst.map(|(_, id)| id),
        "latency_ms": {
            "p50": percentile(&fine, 0.50),
            "p95": percentile(&fine, 0.95),
            "p99": percentile(&fine, 0.99),
        },
        "source_upload_ratio": round(sent / produced.max(1.0), 3),
        "duplicate_ratio": round(duplicate_bytes as f64 / useful_bytes.max(1) as f64, 4),
        "cpu_core_pct_per_peer": round(mean(&cpu_pct), 2),
        "rss_mib_per_peer": round(mean(&rss_mib), 1),
        "gateway_segment_latency_ms": {
            "p50": gateway_stats["segment_latency_ms"]["p50"],
            "p95": gateway_stats["segment_latency_ms"]["p95"],
        },
        // Times the gateway's playlist went 2.5 s without a new segment (before the end).
        "gateway_playlist_stalls": gateway_stats["segments"]["stalls"],
        "baseline_origin": origin,
        "startup_ms": {
            "p50": sorted_percentile(&mut startups.clone(), 0.50),
            "p95": sorted_percentile(&mut startups, 0.95),
        },
    });
    Ok(report)
}

/// The `q` quantile of merged fine buckets, as the bucket's upper bound (≤ 5 % high).
fn percentile(fine: &BTreeMap<u32, u64>, q: f64) -> Option<f64> {
    let total: u64 = fine.values().sum();
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    fine.iter().find_map(|(bucket, count)| {
        seen += count;
        (seen >= rank).then(|| bucket_ms(*bucket).round())
    })
}

fn sorted_percentile(values: &mut [f64], q: f64) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let i = ((q * values.len() as f64).ceil() as usize).checked_sub(1)?;
    values.get(i.min(values.len().checked_sub(1)?)).map(|v| v.round())
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_merged_buckets() {
        let fine: BTreeMap<u32, u64> = [(10, 50), (20, 45), (40, 5)].into();
        assert_eq!(percentile(&fine, 0.5), Some(bucket_ms(10).round()));
        assert_eq!(percentile(&fine, 0.95), Some(bucket_ms(20).round()));
        assert_eq!(percentile(&fine, 0.99), Some(bucket_ms(40).round()));
        assert_eq!(percentile(&BTreeMap::new(), 0.5), None);
        assert_eq!(sorted_percentile(&mut [3.0, 1.0, 2.0, 4.0], 0.5), Some(2.0));
    }
}
