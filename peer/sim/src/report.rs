//! What a run measured, observed by the harness (never reported by the peers): the JSON
//! object `shoal-sim` prints, with the definitions of DESIGN.md.

use std::time::Duration;

use serde::Serialize;

use shoal_proto::ChunkHeader;

use super::cpu::CpuReport;
use super::watch::WatchReport;
use super::{HISTOGRAM_MS, Role, SOURCE, Sim, index_of};

/// One run's results; `shoal-sim` prints it as one JSON object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub peers: usize,
    pub duration_s: u64,
    /// Chunks a peer held within the deadline, over chunks emitted while it was online after
    /// its startup.
    pub delivery_ratio: f64,
    /// Chunk timestamp → a peer holds it verified, over delivered chunks.
    pub latency_ms: Latency,
    /// Join → the peer holds a whole segment that starts with a keyframe.
    pub startup_ms: Startup,
    /// Join → the peer's uplink controller measured its uplink (relaying viewers that did).
    pub measured_ms: Startup,
    /// Bytes the source sent / stream bytes produced.
    pub source_upload_ratio: f64,
    pub max_peer_upload_ratio: f64,
    /// DATA bytes received twice / useful DATA bytes.
    pub duplicate_ratio: f64,
    /// Non-DATA message bytes / DATA bytes (QUIC's own headers and ACKs not counted).
    pub control_overhead_ratio: f64,
    pub forged_delivered: u64,
    /// Duplicates sent by the stripe's own parent / useful DATA bytes.
    pub duplicate_from_parent_ratio: f64,
    /// Chunks dropped in an uplink queue past their deadline.
    pub expired_in_queue: u64,
    /// Peers that ever joined (churn adds fresh ones).
    pub nodes_total: usize,
    pub source_upload_bps: u64,
    /// Queueing delay in the household routers, over everything honest nodes sent through
    /// them (absent without router queues).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_queue_ms: Option<Latency>,
    /// Items the routers dropped from full queues.
    pub router_dropped: u64,
    /// Connections closed because nothing came back for QUIC's idle timeout.
    pub idle_timeouts: u64,
    /// Neighbours dropped for letting their chunks expire in a row.
    pub slow_dropped: u64,
    /// Households' bulk uploads beside shoal (`--cross-traffic`): their mean rate while on,
    /// as a share of their uplinks (absent without cross traffic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_traffic_share: Option<f64>,
    /// The same for each upload period of the households given with `--household`, in order
    /// (the lab's "TCP before shoal" and "after").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub household_shares: Vec<f64>,
    /// Padding bytes (capacity probes) / DATA bytes.
    pub padding_ratio: f64,
    /// Honest viewers' learnt capacity / their uplink's rate, at the end: p10 and p50
    /// (absent when nothing is learnt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_learnt: Option<Ratios>,
    /// How viewers' uplink controllers read their queues against what their routers held,
    /// over every tick: the share read full (half the delay target) while the router held
    /// under a tenth of that, and read empty while it held that much (absent without reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_misread: Option<Misread>,
    pub wall_s: f64,
    /// Only when the shared CPU is modelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuReport>,
    /// What a gateway on the watchers would have shown (only with `--watchers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchReport>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Misread {
    /// Read a queue the router did not hold: it was on the ACKs' way back (the receiver's
    /// own uplink), which round trips cannot tell from ours.
    pub phantom: f64,
    /// Read no queue while the router held one.
    pub hidden: f64,
}

/// One node's queue readings against its router (see `Report::queue_misread`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QueueReads {
    reads: u64,
    phantom: u64,
    hidden: u64,
}

impl QueueReads {
    /// Half the 60 ms target: a queue the controller takes for a full uplink.
    const FULL_US: u64 = 30_000;

    pub(crate) fn add(&mut self, read_us: u64, router_us: u64) {
        self.reads += 1;
        if read_us >= Self::FULL_US && router_us < Self::FULL_US / 10 {
            self.phantom += 1;
        }
        if read_us < Self::FULL_US / 10 && router_us >= Self::FULL_US {
            self.hidden += 1;
        }
    }
}

impl std::fmt::Display for Report {
    /// One line of JSON, as `shoal-sim` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Ratios {
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Startup {
    pub p50: u64,
    pub p95: u64,
}

impl Sim {
    pub(crate) fn observe_delivery(&mut self, n: usize, header: &ChunkHeader) {
        let node = &mut self.nodes[n];
        let emitted_at = header.timestamp_us.saturating_sub(1_000_000);
        if let (Some(watch), Some(start)) = (&mut node.watch, self.segments.start(header.segment)) {
            // (Broadcaster time runs a second ahead of the simulator's.)
            watch.held(header.segment, start, self.now + 1_000_000);
        }
        if emitted_at < node.joined_us {
            return; // back-fill of what was sent before it joined
        }
        let latency_us = self.now.saturating_sub(emitted_at);
        if node.watch.is_some() {
            self.watch_latency_ms.push(latency_us / 1000);
            if std::env::var_os("SHOAL_SIM_WATCH").is_some() {
                eprintln!("watch {} {} {}", self.now / 1000, latency_us / 1000, header.seq);
            }
        }
        if let Some(windows) = &mut self.debug_latency {
            let w = (self.now / 10_000_000) as usize;
            if windows.len() <= w {
                windows.resize(w + 1, Vec::new());
            }
            windows[w].push((latency_us / 1000) as u32);
            // (A whole stripe late at once is a tree's top that stepped aside or left.)
            let w = (self.now / 5_000_000) as usize;
            let stripes = self.stripes;
            if self.debug_late.len() <= w {
                self.debug_late.resize(w + 1, vec![(0, 0); stripes]);
            }
            let cell = &mut self.debug_late[w][header.seq as usize % stripes];
            cell.0 += 1;
            cell.1 += u64::from(latency_us > self.cfg.deadline_ms * 1000);
        }
        self.delivered += 1;
        self.latency_ms[((latency_us / 1000) as usize).min(HISTOGRAM_MS)] += 1;
        if node.startup_us.is_some_and(|s| emitted_at >= s) && latency_us <= self.cfg.deadline_ms * 1000 {
            node.on_time += 1;
        }
    }

    pub(crate) fn report(&self, wall: Duration) -> Report {
        let end = self.cfg.duration_s * 1_000_000;
        let deadline = self.cfg.deadline_ms * 1000;
        let (mut expected, mut on_time, mut startups) = (0u64, 0u64, Vec::new());
        let mut max_peer_upload: f64 = 0.0;
        let bytes_per_us = self.stream_bytes as f64 / end.max(1) as f64;
        if std::env::var_os("SHOAL_SIM_DEBUG").is_some()
            && let Role::Honest(source) = &self.nodes[SOURCE].role
        {
            let c = source.counters();
            eprintln!(
                "source requests served {} refused {}; sent data {} control {}; pushed {:.3} of what it published; displaced {} shed {}",
                c.requests_served,
                c.requests_refused,
                self.nodes[SOURCE].sent_data,
                self.nodes[SOURCE].sent_control,
                c.pushed_bytes as f64 / c.published_bytes.max(1) as f64,
                c.children_displaced,
                c.children_shed
            );
        }
        if let Some(windows) = &self.debug_latency {
            let p95: Vec<u32> = windows
                .iter()
                .map(|w| {
                    let mut w = w.clone();
                    w.sort_unstable();
                    w.get(w.len() * 95 / 100).copied().unwrap_or(0)
                })
                .collect();
            eprintln!("latency p95 per 10 s: {p95:?}");
            for (w, cells) in self.debug_late.iter().enumerate() {
                let late: Vec<String> = cells
                    .iter()
                    .map(|(n, l)| format!("{:.2}", *l as f64 / (*n).max(1) as f64))
                    .collect();
                eprintln!("late share per stripe at {} s: {}", w * 5, late.join(" "));
            }
        }
        if std::env::var_os("SHOAL_SIM_DEBUG").is_some() {
            let mut t = [0u64; 6];
            for node in &self.nodes {
                if let Role::Honest(state) = &node.role {
                    let c = state.counters();
                    for (i, v) in [
                        c.children_shed,
                        c.children_displaced,
                        c.pruned_by_parent,
                        c.parents_quiet,
                        c.parents_switched,
                        c.requests_sent,
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        t[i] += v;
                    }
                }
            }
            eprintln!(
                "trees: shed {} displaced {} pruned_by_parent {} quiet {} switched {} requests {}",
                t[0], t[1], t[2], t[3], t[4], t[5]
            );
        }
        for node in self.nodes.iter().skip(1) {
            if matches!(node.role, Role::Evil(_)) || (node.joined_us == 0 && !node.online && node.left_us.is_none()) {
                continue;
            }
            let online_until = node.left_us.unwrap_or(end);
            if std::env::var_os("SHOAL_SIM_DEBUG").is_some()
                && let Role::Honest(state) = &node.role
            {
                let c = state.counters();
                eprintln!(
                    "{} requests sent {} served {} refused {}",
                    node.addr, c.requests_sent, c.requests_served, c.requests_refused
                );
                if let Some(r) = &node.router {
                    let mut q = r.queued_us.clone();
                    q.sort_unstable();
                    eprintln!(
                        "{} router: dropped {} queue p50 {} p95 {} ms; sender {}",
                        node.addr,
                        r.dropped,
                        q.get(q.len() / 2).copied().unwrap_or(0) / 1000,
                        q.get(q.len() * 95 / 100).copied().unwrap_or(0) / 1000,
                        node.sender.describe()
                    );
                }
                eprintln!(
                    "{} up {:.1}x expired {} joined {} startup {:?} on_time {} neighbours {} children {} depths {:?} parents {:?} counters {:?}",
                    node.addr,
                    node.upload_bps / (self.cfg.bitrate_kbps as f64 * 1000.0),
                    node.uplink.expired,
                    node.joined_us / 1000,
                    node.startup_us.map(|s| s / 1000),
                    node.on_time,
                    state.neighbours().count(),
                    state.children(),
                    state.depths(),
                    state
                        .parents()
                        .iter()
                        .map(|p| p.map(|id| index_of(&id)))
                        .collect::<Vec<_>>(),
                    state.counters()
                );
            }
            if let Some(start) = node.startup_us {
                let to = online_until.saturating_sub(deadline);
                if to > start {
                    let lo = self.emitted.partition_point(|ts| ts - 1_000_000 < start);
                    let hi = self.emitted.partition_point(|ts| ts - 1_000_000 < to);
                    expected += hi.saturating_sub(lo) as u64;
                    on_time += node.on_time.min(hi.saturating_sub(lo) as u64);
                    if std::env::var_os("SHOAL_SIM_DEBUG").is_some() && node.on_time < (hi - lo) as u64 {
                        eprintln!(
                            "MISS {} up {:.1}x joined {} startup {} missed {} of {}",
                            node.addr,
                            node.upload_bps / (self.cfg.bitrate_kbps as f64 * 1000.0),
                            node.joined_us / 1000,
                            start / 1000,
                            (hi - lo) as u64 - node.on_time,
                            hi - lo
                        );
                    }
                }
                startups.push(start - node.joined_us);
            } else if online_until.saturating_sub(node.joined_us) > 10_000_000 {
                // Online for ten seconds and never started: everything it should have had is missed.
                let lo = self
                    .emitted
                    .partition_point(|ts| ts - 1_000_000 < node.joined_us + 5_000_000);
                let hi = self
                    .emitted
                    .partition_point(|ts| ts - 1_000_000 < online_until.saturating_sub(deadline));
                expected += hi.saturating_sub(lo) as u64;
            }
            let online_s = online_until.saturating_sub(node.joined_us) as f64;
            if online_s > 5e6 {
                max_peer_upload = max_peer_upload
                    .max((node.sent_data + node.sent_control + node.sent_padding) as f64 / (bytes_per_us * online_s));
            }
        }
        let source = &self.nodes[SOURCE];
        let data_sent: u64 = self.nodes.iter().map(|n| n.sent_data).sum();
        let control_sent: u64 = self
            .nodes
            .iter()
            .filter(|n| matches!(n.role, Role::Honest(_)))
            .map(|n| n.sent_control)
            .sum();
        startups.sort_unstable();
        let pct = |v: &[u64], q: f64| {
            v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(0)
                / 1000
        };
        let cpu = self.cpu.as_ref().map(|cpu| {
            let peers = self.nodes.iter().skip(1).filter(|n| n.joined_us > 0 || n.online);
            let (busy, seconds) = peers.fold((0.0, 0.0), |(b, s), n| {
                (
                    b + n.cpu_us,
                    s + n.left_us.unwrap_or(end).saturating_sub(n.joined_us) as f64 / 1e6,
                )
            });
            cpu.report(end, busy, seconds)
        });
        let honest = || self.nodes.iter().filter(|n| matches!(n.role, Role::Honest(_)));
        let mut queued: Vec<u32> = honest()
            .filter_map(|n| n.router.as_ref())
            .flat_map(|r| r.queued_us.iter().copied())
            .collect();
        queued.sort_unstable();
        let router_queue_ms = (!queued.is_empty()).then(|| {
            let at = |q: f64| u64::from(queued[((queued.len() - 1) as f64 * q).round() as usize]) / 1000;
            Latency {
                p50: at(0.5),
                p95: at(0.95),
                p99: at(0.99),
                max: at(1.0),
            }
        });
        let mut learnt: Vec<f64> = honest()
            .skip(1)
            .filter(|n| n.online && n.watch.is_none())
            .filter_map(|n| Some(n.sender.capacity_bps()? / n.upload_bps))
            .collect();
        learnt.sort_by(f64::total_cmp);
        let mut measured: Vec<u64> = honest()
            .skip(1)
            .filter(|n| n.watch.is_none())
            .filter_map(|n| Some(n.measured_us? - n.joined_us))
            .collect();
        measured.sort_unstable();
        let capacity_learnt = (!learnt.is_empty()).then(|| {
            let at = |q: f64| round(learnt[((learnt.len() - 1) as f64 * q).round() as usize], 3);
            Ratios {
                p10: at(0.1),
                p50: at(0.5),
                p90: at(0.9),
            }
        });
        let reads = honest().skip(1).fold(QueueReads::default(), |mut all, n| {
            all.reads += n.queue_reads.reads;
            all.phantom += n.queue_reads.phantom;
            all.hidden += n.queue_reads.hidden;
            all
        });
        let queue_misread = (reads.reads > 0).then(|| Misread {
            phantom: round(reads.phantom as f64 / reads.reads as f64, 4),
            hidden: round(reads.hidden as f64 / reads.reads as f64, 4),
        });
        let padding: u64 = self.nodes.iter().map(|n| n.sent_padding).sum();
        let watch = (self.cfg.watchers > 0).then(|| {
            let mut report = WatchReport::default();
            for n in self.nodes.iter().filter(|n| n.watch.is_some()) {
                // (Broadcaster time runs a second ahead of the simulator's.)
                let from = n.startup_us.unwrap_or(n.joined_us + 5_000_000) + 1_000_000;
                let to = n.left_us.unwrap_or(end) + 1_000_000;
                if let Some(w) = &n.watch {
                    report.add(w, &self.segments, from, to);
                }
            }
            let mut ms = self.watch_latency_ms.clone();
            ms.sort_unstable();
            report.latency_ms = (!ms.is_empty()).then(|| {
                let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
                Latency {
                    p50: at(0.5),
                    p95: at(0.95),
                    p99: at(0.99),
                    max: at(1.0),
                }
            });
            report
        });
        Report {
            watch,
            router_queue_ms,
            router_dropped: self
                .nodes
                .iter()
                .filter_map(|n| n.router.as_ref())
                .map(|r| r.dropped)
                .sum(),
            idle_timeouts: self.idle_timeouts,
            cross_traffic_share: {
                let shares: Vec<f64> = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.household.as_ref().map(|h| h.shares(n.upload_bps, self.now)))
                    .flatten()
                    .collect();
                (!shares.is_empty()).then(|| round(shares.iter().sum::<f64>() / shares.len() as f64, 3))
            },
            household_shares: self
                .nodes
                .iter()
                .filter_map(|n| {
                    n.household
                        .as_ref()
                        .filter(|h| h.is_scheduled())
                        .map(|h| h.shares(n.upload_bps, self.now))
                })
                .flatten()
                .map(|s| round(s, 3))
                .collect(),
            slow_dropped: self.slow_dropped,
            padding_ratio: round(padding as f64 / data_sent.max(1) as f64, 4),
            capacity_learnt,
            queue_misread,
            peers: self.cfg.peers,
            duration_s: self.cfg.duration_s,
            delivery_ratio: round(on_time as f64 / expected.max(1) as f64, 5),
            latency_ms: Latency {
                p50: self.histogram_pct(0.50),
                p95: self.histogram_pct(0.95),
                p99: self.histogram_pct(0.99),
                max: self.histogram_pct(1.0),
            },
            startup_ms: Startup {
                p50: pct(&startups, 0.5),
                p95: pct(&startups, 0.95),
            },
            measured_ms: Startup {
                p50: pct(&measured, 0.5),
                p95: pct(&measured, 0.95),
            },
            source_upload_ratio: round(
                (source.sent_data + source.sent_control) as f64 / self.stream_bytes.max(1) as f64,
                3,
            ),
            max_peer_upload_ratio: round(max_peer_upload, 3),
            duplicate_ratio: round(self.duplicate_data as f64 / self.useful_data.max(1) as f64, 4),
            control_overhead_ratio: round(control_sent as f64 / data_sent.max(1) as f64, 4),
            forged_delivered: self.forged_delivered,
            duplicate_from_parent_ratio: round(self.dup_from_parent as f64 / self.useful_data.max(1) as f64, 4),
            expired_in_queue: self.nodes.iter().map(|n| n.uplink.expired).sum::<u64>(),
            nodes_total: self.nodes.len() - 1,
            source_upload_bps: source.upload_bps as u64,
            wall_s: round(wall.as_secs_f64(), 2),
            cpu,
        }
    }

    fn histogram_pct(&self, q: f64) -> u64 {
        let total: u64 = self.latency_ms.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, count) in self.latency_ms.iter().enumerate() {
            seen += count;
            if seen >= target {
                return ms as u64;
            }
        }
        HISTOGRAM_MS as u64
    }
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
