//! The shaped-uplink lab: the real binaries, each in a network namespace of its own on one
//! bridged segment, and each viewer behind the uplink of a home router — a `tbf` qdisc on its
//! egress with a given rate and a deep queue. The broadcaster and the gateway (which measures
//! and uploads nothing) are unshaped. One viewer's household pings the broadcaster through the
//! same uplink and, at times, uploads in bulk over TCP: how much of it shoal leaves them is
//! what "steps aside" means.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_peer::net::stats::Snapshot;

use crate::natlab::{address, remove_namespace, run, start_in};
use crate::process::{Proc, read_stats};

/// The segment every namespace is on ("pub" holds the bridge at .1).
const NET: &str = "198.18.0";
const NODE_PORT: u16 = 7000;
const BULK_PORT: u16 = 7100;
const BROADCASTER: &str = "198.18.0.2";

/// One run of the lab.
#[derive(Clone, Debug)]
pub struct Config {
    /// Each viewer's uplink in kbit/s, in the order they join.
    pub uplinks_kbps: Vec<u32>,
    /// The routers' queue, as tbf's `latency`.
    pub queue_ms: u32,
    pub bitrate_kbps: u32,
    /// How long the swarm streams once everyone joined.
    pub seconds: u64,
    /// Each viewer declares 90 % of its uplink with `--upload-kbps` (what users do not).
    pub declare: bool,
    /// The viewer whose household pings and uploads (an index into `uplinks_kbps`).
    pub household: usize,
}

/// The lab's namespaces and processes, removed when dropped.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.procs.clear();
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A host on the segment at `NET`.`n`, its uplink shaped to `kbps` (none: unshaped).
    fn host(&mut self, name: &str, n: u8, shape: Option<(u32, u32)>) -> anyhow::Result<String> {
        let ns = self.ns(name);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ])?;
        let port = format!("p{n}");
        let public = self.ns("pub");
        run(&[
            "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &public,
        ])?;
        run(&["ip", "-n", &public, "link", "set", &port, "master", "br0", "up"])?;
        address(&ns, "eth0", &format!("{NET}.{n}/24"))?;
        // A default route, so each node knows its own address to put in tickets and HELLOs
        // (the segment leads nowhere else).
        run(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("{NET}.1")])?;
        if let Some((kbps, queue_ms)) = shape {
            // The home router's uplink: this rate, and a queue this deep before it drops.
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                &format!("{kbps}kbit"),
                "burst",
                "16kb",
                "latency",
                &format!("{queue_ms}ms"),
            ])?;
        }
        Ok(ns)
    }

    fn start(&mut self, dir: &Path, host: &str, name: &str, program: &str, args: &[String]) -> anyhow::Result<usize> {
        self.procs.push(start_in(&self.ns(host), dir, name, program, args)?);
        Ok(self.procs.len() - 1)
    }
}

/// Pings `to` from inside `ns` every 200 ms for `seconds`; the RTTs in ms.
fn ping(ns: &str, to: &str, seconds: u64) -> Vec<f64> {
    let count = (seconds * 5).to_string();
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-i", "0.2", "-W", "2", "-c", &count, to,
        ])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn percentile(mut v: Vec<f64>, q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[((v.len() - 1) as f64 * q).round() as usize] * 10.0).round() / 10.0)
}

/// A bulk TCP upload from the household's namespace to the broadcaster's for `seconds`; the
/// mean kbit/s the sink received over its last `seconds - 2` (the first two are slow start).
fn bulk_upload(lab: &mut Lab, dir: &Path, household: &str, tag: &str, seconds: u64) -> anyhow::Result<f64> {
    let sink = lab.start(
        dir,
        "broadcaster",
        &format!("sink-{tag}"),
        "shoal-bulk",
        &["sink".into(), format!("0.0.0.0:{BULK_PORT}")],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let sender = start_in(
        household,
        dir,
        &format!("bulk-{tag}"),
        "shoal-bulk",
        &[
            "send".to_string(),
            format!("{BROADCASTER}:{BULK_PORT}"),
            seconds.to_string(),
        ],
    )?;
    std::thread::sleep(Duration::from_secs(seconds) + Duration::from_millis(1500));
    drop(sender);
    let text = std::fs::read_to_string(&lab.procs[sink].stdout).unwrap_or_default();
    lab.procs[sink].kill();
    let per_second: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let steady: Vec<u64> = per_second.iter().copied().skip(2).take(seconds as usize - 2).collect();
    Ok(steady.iter().sum::<u64>() as f64 * 8.0 / 1000.0 / steady.len().max(1) as f64)
}

/// Runs the lab once and reports what the swarm and the household saw.
pub fn run_lab(dir: &Path, config: &Config) -> anyhow::Result<Value> {
    let mut lab = Lab {
        prefix: format!("shoalu{}", std::process::id()),
        namespaces: Vec::new(),
        procs: Vec::new(),
    };
    let public = lab.ns("pub");
    run(&["ip", "netns", "add", &public])?;
    lab.namespaces.push(public.clone());
    run(&["ip", "-n", &public, "link", "add", "br0", "type", "bridge"])?;
    address(&public, "br0", &format!("{NET}.1/24"))?;
    lab.host("broadcaster", 2, None)?;
    lab.host("gateway", 3, None)?;
    let viewers: Vec<String> = (0..config.uplinks_kbps.len())
        .map(|i| {
            lab.host(
                &format!("v{i}"),
                10 + i as u8,
                Some((config.uplinks_kbps[i], config.queue_ms)),
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let household = viewers[config.household].clone();

    // The household alone first: its uplink idle, then its bulk upload with shoal off.
    let idle_ping = ping(&household, BROADCASTER, 5);
    let tcp_alone = bulk_upload(&mut lab, dir, &household, "alone", 12)?;

    let ticket = dir.join("ticket").display().to_string();
    let stats = |name: &str| dir.join(format!("{name}.json")).display().to_string();
    let mut args: Vec<String> = [
        "--source",
        "test",
        "--resolution",
        "640x360",
        "--bitrate-kbps",
        &config.bitrate_kbps.to_string(),
        "--listen",
        &format!("0.0.0.0:{NODE_PORT}"),
        "--ticket-file",
        &ticket,
        "--stats-json",
        &stats("broadcaster"),
    ]
    .map(String::from)
    .to_vec();
    args.extend(["--key".into(), dir.join("stream.key").display().to_string()]);
    let b = lab.start(dir, "broadcaster", "broadcaster", "shoal-broadcaster", &args)?;
    lab.procs[b].wait_for_line("shoal1", Duration::from_secs(30))?;
    let common = |name: &str| -> Vec<String> {
        vec![
            "--ticket-file".into(),
            ticket.clone(),
            "--listen".into(),
            format!("0.0.0.0:{NODE_PORT}"),
            "--stats-json".into(),
            stats(name),
        ]
    };
    let mut gw_args = common("gateway");
    gw_args.extend(["--upload-kbps", "0", "--http", "127.0.0.1:8080"].map(String::from));
    lab.start(dir, "gateway", "gateway", "shoal-gateway", &gw_args)?;
    for (i, kbps) in config.uplinks_kbps.iter().enumerate() {
        let mut v = common(&format!("v{i}"));
        if config.declare {
            v.extend(["--upload-kbps".to_string(), (kbps * 9 / 10).to_string()]);
        }
        lab.start(dir, &format!("v{i}"), &format!("v{i}"), "shoal-peer", &v)?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = Instant::now();
    // The household's ping while shoal runs (after a settling while), then its bulk upload.
    std::thread::sleep(Duration::from_secs(10));
    let busy_ping = ping(&household, BROADCASTER, 10);
    let tcp_with_shoal = bulk_upload(&mut lab, dir, &household, "shoal", 12)?;
    let left = Duration::from_secs(config.seconds).saturating_sub(started.elapsed());
    std::thread::sleep(left);

    let source: Snapshot = read_stats(&dir.join("broadcaster.json"));
    let gateway: Value = read_stats(&dir.join("gateway.json"));
    let mut per_viewer = Vec::new();
    for (i, kbps) in config.uplinks_kbps.iter().enumerate() {
        let s: Snapshot = read_stats(&dir.join(format!("v{i}.json")));
        let kbps_of = |bytes: u64| (bytes as f64 * 8.0 / 1000.0 / started.elapsed().as_secs_f64()).round();
        per_viewer.push(json!({
            "uplink_kbps": kbps,
            "latency_ms": s.latency_ms,
            // Handed to QUIC streams, and what the uplink carried (QUIC's count).
            "sent_kbps": kbps_of(s.bytes_out.total()),
            "carried_kbps": kbps_of(s.wire_out.carried_bytes()),
            "depths": s.depths,
        }));
    }
    let produced = source.chunks.published_bytes.max(1) as f64;
    Ok(json!({
        "uplinks_kbps": config.uplinks_kbps,
        "queue_ms": config.queue_ms,
        "declared": config.declare,
        "bitrate_kbps": config.bitrate_kbps,
        "gateway": {
            "segments_published": gateway["segments"]["published"],
            "segments_skipped": gateway["segments"]["skipped"],
            "playlist_stalls": gateway["segments"]["stalls"],
            "latency_ms": gateway["latency_ms"],
        },
        "source_upload_ratio": (source.wire_out.carried_bytes() as f64 / produced * 100.0).round() / 100.0,
        "viewers": per_viewer,
        "household": {
            "viewer": config.household,
            "ping_idle_ms": {"p50": percentile(idle_ping.clone(), 0.5), "p95": percentile(idle_ping, 0.95)},
            "ping_with_shoal_ms": {"p50": percentile(busy_ping.clone(), 0.5), "p95": percentile(busy_ping, 0.95)},
            "tcp_alone_kbps": tcp_alone.round(),
            "tcp_with_shoal_kbps": tcp_with_shoal.round(),
        },
    }))
}
