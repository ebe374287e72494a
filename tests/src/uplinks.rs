//! The shaped-uplink lab: the real binaries, each in a network namespace of its own on one
//! bridged segment, and each viewer behind the uplink of a home router — a namespace of its
//! own bridging the viewer to the segment, a `tbf` qdisc on its egress with a given rate and
//! a deep queue. The broadcaster and the gateway (which measures
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
/// How long the household's bulk uploads run: the one started before shoal (it spans the
/// swarm's start), and the one started after.
const BEFORE_S: u64 = 30;
const AFTER_S: u64 = 12;

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
    /// The viewer whose household pings and uploads (an index into `uplinks_kbps`): by
    /// default the first of the strongest, which relays.
    pub household: usize,
    /// Also run a bulk upload started before shoal (30 s more).
    pub tcp_before: bool,
    /// The household's TCP congestion control (`cubic`, as Windows, macOS, Linux and most
    /// phones send; `bbr`, which keeps little queue for a delay-based sender to see; `reno`).
    pub household_tcp: String,
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

    /// A host on the segment at `NET`.`n`. Shaped (`kbps`, queue ms), it sits behind a home
    /// router of its own: a namespace bridging the host to the segment, whose egress towards
    /// the segment is a `tbf` of that rate and queue. (On the host's own interface, the tbf
    /// would push back on the host's TCP — TCP Small Queues keep a sender's bytes in a local
    /// qdisc to a millisecond or so — and a household's bulk upload would never fill the
    /// queue as it does a real router's.)
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
        match shape {
            None => {
                run(&[
                    "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &public,
                ])?;
            }
            Some((kbps, queue_ms)) => {
                let router = self.ns(&format!("r{n}"));
                run(&["ip", "netns", "add", &router])?;
                self.namespaces.push(router.clone());
                run(&[
                    "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", "home", "netns", &router,
                ])?;
                run(&[
                    "ip", "link", "add", "wan", "netns", &router, "type", "veth", "peer", "name", &port, "netns",
                    &public,
                ])?;
                run(&["ip", "-n", &router, "link", "add", "lan", "type", "bridge"])?;
                for dev in ["home", "wan"] {
                    run(&["ip", "-n", &router, "link", "set", dev, "master", "lan", "up"])?;
                }
                run(&["ip", "-n", &router, "link", "set", "lan", "up"])?;
                // The home router's uplink: this rate, and a queue this deep before it drops.
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &router,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "wan",
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
        }
        run(&["ip", "-n", &public, "link", "set", &port, "master", "br0", "up"])?;
        address(&ns, "eth0", &format!("{NET}.{n}/24"))?;
        // A default route, so each node knows its own address to put in tickets and HELLOs
        // (the segment leads nowhere else).
        run(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("{NET}.1")])?;
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

/// A bulk TCP upload from the household's namespace to the broadcaster's, running on its own.
struct BulkFlow {
    sink: usize,
    sender: Proc,
    started: Instant,
    seconds: u64,
}

impl BulkFlow {
    fn start(
        lab: &mut Lab,
        dir: &Path,
        household: &str,
        tcp: &str,
        tag: &str,
        seconds: u64,
    ) -> anyhow::Result<BulkFlow> {
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
                tcp.to_string(),
            ],
        )?;
        Ok(BulkFlow {
            sink,
            sender,
            started: Instant::now(),
            seconds,
        })
    }

    /// Waits for the flow to end; the mean kbit/s the sink received over its seconds
    /// `from..to` (the first two are slow start).
    fn finish(self, lab: &mut Lab, from: u64, to: u64) -> f64 {
        let end = self.started + Duration::from_secs(self.seconds) + Duration::from_millis(1500);
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        drop(self.sender);
        let text = std::fs::read_to_string(&lab.procs[self.sink].stdout).unwrap_or_default();
        lab.procs[self.sink].kill();
        let per_second: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let window: Vec<u64> = per_second
            .iter()
            .copied()
            .skip(from as usize)
            .take(to.saturating_sub(from) as usize)
            .collect();
        window.iter().sum::<u64>() as f64 * 8.0 / 1000.0 / window.len().max(1) as f64
    }
}

/// A bulk TCP upload from the household for `seconds`, alone on its flow; its steady kbit/s.
fn bulk_upload(lab: &mut Lab, dir: &Path, household: &str, tcp: &str, tag: &str, seconds: u64) -> anyhow::Result<f64> {
    let flow = BulkFlow::start(lab, dir, household, tcp, tag, seconds)?;
    Ok(flow.finish(lab, 2, seconds))
}

/// The gateway's skipped segments and stalls as they happen, read from its stats twice a second.
struct GatewayTimeline {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Value>>,
}

impl GatewayTimeline {
    fn follow(path: std::path::PathBuf) -> GatewayTimeline {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let (mut skipped, mut stalls, mut events) = (0u64, 0u64, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let at = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
                let now = (
                    v["segments"]["skipped"].as_u64().unwrap_or(0),
                    v["segments"]["stalls"].as_u64().unwrap_or(0),
                );
                if now.0 > skipped {
                    events.push(json!({"at_s": at, "skipped": now.0 - skipped}));
                }
                if now.1 > stalls {
                    events.push(json!({"at_s": at, "stalls": now.1 - stalls}));
                }
                (skipped, stalls) = (skipped.max(now.0), stalls.max(now.1));
            }
            events
        });
        GatewayTimeline { stop, thread }
    }

    fn stop(self) -> Vec<Value> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// What a viewer's uplink carried (QUIC's count), sampled: (when, bytes, the rate its uplink
/// controller allowed in kbit/s, its queue in ms).
fn carried(path: &Path) -> (Instant, u64, Option<u64>, Option<f64>) {
    let s: Snapshot = read_stats(path);
    let u = s.uplink.as_ref();
    (
        Instant::now(),
        s.wire_out.carried_bytes(),
        u.and_then(|u| u.pacing_kbps),
        u.and_then(|u| u.queue_ms),
    )
}

/// kbit/s between consecutive samples.
fn rates(samples: &[(Instant, u64, Option<u64>, Option<f64>)]) -> Vec<f64> {
    samples
        .windows(2)
        .map(|w| {
            let secs = w[1].0.duration_since(w[0].0).as_secs_f64().max(0.001);
            w[1].1.saturating_sub(w[0].1) as f64 * 8.0 / 1000.0 / secs
        })
        .collect()
}

/// Runs the lab once and reports what the swarm and the household saw.
pub fn run_lab(dir: &Path, config: &Config) -> anyhow::Result<Value> {
    crate::natlab::remove_stale_namespaces();
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
    let tcp_alone = bulk_upload(&mut lab, dir, &household, &config.household_tcp, "alone", 12)?;

    // A bulk upload started before shoal, running while the swarm starts.
    let before = if config.tcp_before {
        let flow = BulkFlow::start(&mut lab, dir, &household, &config.household_tcp, "before", BEFORE_S)?;
        std::thread::sleep(Duration::from_secs(2));
        Some(flow)
    } else {
        None
    };

    let ticket = dir.join("ticket").display().to_string();
    let stats = |name: &str| dir.join(format!("{name}.json"));
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
        &stats("broadcaster").display().to_string(),
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
            stats(name).display().to_string(),
        ]
    };
    let mut gw_args = common("gateway");
    gw_args.extend(["--upload-kbps", "0", "--http", "127.0.0.1:8080"].map(String::from));
    lab.start(dir, "gateway", "gateway", "shoal-gateway", &gw_args)?;
    let timeline = GatewayTimeline::follow(stats("gateway"));
    let mut joined = Vec::new();
    for (i, kbps) in config.uplinks_kbps.iter().enumerate() {
        let mut v = common(&format!("v{i}"));
        if config.declare {
            v.extend(["--upload-kbps".to_string(), (kbps * 9 / 10).to_string()]);
        }
        lab.start(dir, &format!("v{i}"), &format!("v{i}"), "shoal-peer", &v)?;
        joined.push(Instant::now());
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = Instant::now();
    // Each viewer's capacity estimate 20 s after it joined.
    let mut estimates: Vec<Value> = vec![Value::Null; joined.len()];
    for (i, at) in joined.iter().enumerate() {
        std::thread::sleep((*at + Duration::from_secs(20)).saturating_duration_since(Instant::now()));
        let s: Snapshot = read_stats(&stats(&format!("v{i}")));
        estimates[i] = json!(s.uplink);
    }
    // The flow that started first: what it kept while shoal ran beside it (from the
    // household viewer's join + 5 s to its end).
    let tcp_before = before.map(|flow| {
        let from = joined[config.household].duration_since(flow.started).as_secs() + 5;
        flow.finish(&mut lab, from, BEFORE_S).round()
    });

    // The household's ping while shoal runs, then a bulk upload started after it, the
    // viewer's upload sampled before, during and after it.
    std::thread::sleep(Duration::from_secs(5));
    let busy_ping = ping(&household, BROADCASTER, 10);
    let household_stats = stats(&format!("v{}", config.household));
    let mut samples = Vec::new();
    // (Stats files are rewritten once a second.)
    for _ in 0..4 {
        samples.push(carried(&household_stats));
        std::thread::sleep(Duration::from_secs(1));
    }
    let after = BulkFlow::start(&mut lab, dir, &household, &config.household_tcp, "after", AFTER_S)?;
    let flow_ends = after.started + Duration::from_secs(AFTER_S);
    while Instant::now() < flow_ends + Duration::from_secs(10) {
        samples.push(carried(&household_stats));
        std::thread::sleep(Duration::from_secs(1));
    }
    let after_started = after.started;
    let tcp_after = after.finish(&mut lab, 2, AFTER_S);
    let rate = rates(&samples);
    let uncontested = rate.iter().take(3).sum::<f64>() / 3.0;
    let allowed = |i: usize| samples[i].2.unwrap_or(0) as f64;
    let allowed_before = (0..4).map(allowed).sum::<f64>() / 4.0;
    // Seconds from the flow's end until the viewer's controller allows 80 % of the rate it
    // allowed before the flow again, and until the viewer uploads 80 % of what it did (the
    // swarm may have moved its children to others meanwhile); none if it never does.
    let after_end = samples.iter().position(|s| s.0 >= flow_ends).unwrap_or(samples.len());
    let since_end = |i: usize| (samples[i].0.duration_since(flow_ends).as_secs_f64() * 10.0).round() / 10.0;
    let rate_back = (after_end..samples.len())
        .find(|i| allowed(*i) >= 0.8 * allowed_before)
        .map(since_end);
    // (rate[i] is the second ending at samples[i + 1].)
    let upload_back = (after_end.saturating_sub(1)..rate.len())
        .find(|i| rate[*i] >= 0.8 * uncontested)
        .map(|i| since_end(i + 1));
    let series: Vec<Value> = samples
        .iter()
        .zip(std::iter::once(0.0).chain(rate.iter().copied()))
        .map(|(s, kbps)| {
            json!({
                "t_s": (s.0.saturating_duration_since(after_started).as_secs_f64() * 10.0).round() / 10.0,
                "upload_kbps": kbps.round(),
                "allowed_kbps": s.2,
                "queue_ms": s.3.map(|q| q.round()),
            })
        })
        .collect();
    let left = Duration::from_secs(config.seconds).saturating_sub(started.elapsed());
    std::thread::sleep(left);

    let source: Snapshot = read_stats(&stats("broadcaster"));
    let gateway: Value = read_stats(&stats("gateway"));
    let events = timeline.stop();
    let mut per_viewer = Vec::new();
    for (i, kbps) in config.uplinks_kbps.iter().enumerate() {
        let s: Snapshot = read_stats(&stats(&format!("v{i}")));
        let secs = joined[i].elapsed().as_secs_f64();
        let kbps_of = |bytes: u64| (bytes as f64 * 8.0 / 1000.0 / secs).round();
        let estimate_at_20s = estimates[i]["capacity_kbps"].as_f64();
        per_viewer.push(json!({
            "uplink_kbps": kbps,
            "latency_ms": s.latency_ms,
            // Handed to QUIC streams, and what the uplink carried (QUIC's count).
            "sent_kbps": kbps_of(s.bytes_out.total()),
            "carried_kbps": kbps_of(s.wire_out.carried_bytes()),
            "depths": s.depths,
            "estimate_at_20s": estimates[i],
            "estimate_at_20s_ratio": estimate_at_20s.map(|e| (e / f64::from(*kbps) * 100.0).round() / 100.0),
            "uplink_at_end": s.uplink,
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
            // When segments were skipped and the playlist stalled (s since the gateway started).
            "events": events,
        },
        "source_upload_ratio": (source.wire_out.carried_bytes() as f64 / produced * 100.0).round() / 100.0,
        "viewers": per_viewer,
        "household": {
            "viewer": config.household,
            "tcp": config.household_tcp,
            "ping_idle_ms": {"p50": percentile(idle_ping.clone(), 0.5), "p95": percentile(idle_ping, 0.95)},
            "ping_with_shoal_ms": {"p50": percentile(busy_ping.clone(), 0.5), "p95": percentile(busy_ping, 0.95)},
            "tcp_alone_kbps": tcp_alone.round(),
            "tcp_started_before_shoal_kbps": tcp_before,
            "tcp_started_after_shoal_kbps": tcp_after.round(),
            "viewer_upload_kbps": {
                "before_tcp": uncontested.round(),
                "during_tcp": (rate.iter().skip(5).take(AFTER_S as usize - 2).sum::<f64>()
                    / (AFTER_S as f64 - 2.0)).round(),
            },
            "allowed_kbps_before_tcp": allowed_before.round(),
            // Seconds after the flow stopped until shoal allows itself 80 % of its rate
            // before it again, and until it uploads 80 % of what it did.
            "take_back_s": rate_back,
            "upload_back_s": upload_back,
            // The viewer during the flow started after shoal (t from the flow's start).
            "series": series,
        },
    }))
}
