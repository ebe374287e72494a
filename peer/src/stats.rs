//! A node's counters, shared between its tasks: bytes by kind and by neighbour, chunk
//! verdicts, latency samples; rendered as the `--stats-json` / `/stats.json` object.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use shoal_proto::NodeId;
use tokio_util::sync::CancellationToken;

use crate::limits::Limits;
use crate::state::{Counters, State};

/// Latency samples kept for percentiles: the most recent ones (≈ 2 min at 30 chunks/s).
const LATENCY_SAMPLES: usize = 4096;
/// Closed neighbours remembered in the stats (the newest ones), beside the connected ones.
const CLOSED_LINKS_KEPT: usize = 64;

/// Bytes exchanged with one neighbour.
#[derive(Debug)]
pub struct Link {
    pub node_id: NodeId,
    pub addr: SocketAddr,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connected: AtomicBool,
}

#[derive(Default)]
struct Totals {
    data: AtomicU64,
    control: AtomicU64,
}

impl Totals {
    fn json(&self) -> Value {
        json!({"data": self.data.load(Relaxed), "control": self.control.load(Relaxed)})
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Data,
    Control,
}

/// What the stats show of the core, copied from it about once a second.
#[derive(Clone, Default)]
struct CoreView {
    counters: Counters,
    startup: Option<Duration>,
    /// Measured stream rate, bit/s.
    stream_bps: Option<f64>,
    /// Neighbours that are the broadcaster.
    sources: Vec<NodeId>,
    /// Hops from the broadcaster per stripe.
    depths: Vec<u8>,
}

pub struct Stats {
    node_id: NodeId,
    bytes_in: Totals,
    bytes_out: Totals,
    links: Mutex<Vec<Arc<Link>>>,
    core: Mutex<CoreView>,
    limits: Limits,
    latency_ms: Mutex<VecDeque<f64>>,
    /// (epoch, first seq, newest seq) of the chunks emitted since start that this node holds.
    live: Mutex<Option<(u64, u64, u64)>>,
    /// Every chunk's latency since start, in buckets (Prometheus' histogram).
    latency_histogram: Mutex<Histogram>,
    /// Incoming connections turned away because `max_incoming_connections` were open.
    connections_refused: AtomicU64,
    /// Neighbours dropped for not taking the chunks pushed to them.
    slow_dropped: AtomicU64,
    /// Where neighbours see this node.
    observed: Mutex<crate::observed::Observed>,
    mapping: Mutex<Option<crate::portmap::Mapping>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave counters inconsistent in a way that matters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    pub fn new(node_id: NodeId, limits: Limits) -> Arc<Self> {
        Arc::new(Stats {
            node_id,
            bytes_in: Totals::default(),
            bytes_out: Totals::default(),
            links: Mutex::new(Vec::new()),
            core: Mutex::default(),
            latency_ms: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
            latency_histogram: Mutex::default(),
            live: Mutex::default(),
            connections_refused: AtomicU64::new(0),
            slow_dropped: AtomicU64::new(0),
            observed: Mutex::default(),
            mapping: Mutex::default(),
            limits,
        })
    }

    pub fn link(&self, node_id: NodeId, addr: SocketAddr) -> Arc<Link> {
        let link = Arc::new(Link {
            node_id,
            addr,
            bytes_in: 0.into(),
            bytes_out: 0.into(),
            connected: true.into(),
        });
        let mut links = lock(&self.links);
        links.push(link.clone());
        let closed = links.iter().filter(|l| !l.connected.load(Relaxed)).count();
        if closed > CLOSED_LINKS_KEPT
            && let Some(i) = links.iter().position(|l| !l.connected.load(Relaxed))
        {
            links.remove(i);
        }
        link
    }

    pub fn slow_dropped(&self) {
        self.slow_dropped.fetch_add(1, Relaxed);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    pub fn closed(&self, link: &Link) {
        link.connected.store(false, Relaxed);
    }

    pub fn received(&self, link: Option<&Link>, kind: Kind, n: usize) {
        let n = n as u64;
        match kind {
            Kind::Data => self.bytes_in.data.fetch_add(n, Relaxed),
            Kind::Control => self.bytes_in.control.fetch_add(n, Relaxed),
        };
        if let Some(link) = link {
            link.bytes_in.fetch_add(n, Relaxed);
        }
    }

    pub fn sent(&self, link: Option<&Link>, kind: Kind, n: usize) {
        let n = n as u64;
        match kind {
            Kind::Data => self.bytes_out.data.fetch_add(n, Relaxed),
            Kind::Control => self.bytes_out.control.fetch_add(n, Relaxed),
        };
        if let Some(link) = link {
            link.bytes_out.fetch_add(n, Relaxed);
        }
    }

    /// Neighbour `by` sees this node at `addr`; true when enough agree for the first time.
    pub fn observed_at(&self, addr: SocketAddr, by: NodeId) -> bool {
        lock(&self.observed).report(addr, by)
    }

    /// This node's addresses beyond its NAT: the one its router maps to it, then the ones
    /// its neighbours agree they see it at.
    pub fn public_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.mapping().map(|m| m.external).into_iter().collect();
        for addr in lock(&self.observed).confirmed() {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }

    /// What the router forwards to this node, if it does.
    pub fn mapping(&self) -> Option<crate::portmap::Mapping> {
        *lock(&self.mapping)
    }

    pub fn set_mapping(&self, mapping: Option<crate::portmap::Mapping>) {
        *lock(&self.mapping) = mapping;
    }

    /// Records that a chunk stamped `timestamp_us` (broadcaster clock) is now held verified;
    /// returns its latency in ms.
    pub fn chunk_latency(&self, timestamp_us: u64) -> f64 {
        let ms = now_us().saturating_sub(timestamp_us) as f64 / 1000.0;
        lock(&self.latency_histogram).observe(ms);
        let mut samples = lock(&self.latency_ms);
        if samples.len() == LATENCY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(ms);
        ms
    }

    /// A chunk emitted since this node started became held: the span of seqs these cover,
    /// per epoch, tells a benchmark how many it should have got.
    pub fn live_chunk(&self, epoch: u64, seq: u64) {
        let mut live = lock(&self.live);
        match &mut *live {
            Some((e, first, newest)) if *e == epoch => {
                *first = (*first).min(seq);
                *newest = (*newest).max(seq);
            }
            _ => *live = Some((epoch, seq, seq)),
        }
    }

    pub fn set_core(&self, core: &State) {
        *lock(&self.core) = CoreView {
            counters: core.counters().clone(),
            startup: core.startup(),
            stream_bps: core.stream_bps(),
            sources: core.sources(),
            depths: core.depths(),
        };
    }

    pub fn data_bytes_out(&self) -> u64 {
        self.bytes_out.data.load(Relaxed)
    }

    pub fn snapshot(&self) -> Value {
        let CoreView {
            counters,
            startup,
            stream_bps,
            sources,
            depths,
        } = lock(&self.core).clone();
        let neighbours: Vec<Value> = lock(&self.links)
            .iter()
            .map(|l| {
                json!({
                    "node_id": l.node_id.to_hex(),
                    "addr": l.addr.to_string(),
                    "connected": l.connected.load(Relaxed),
                    "source": sources.contains(&l.node_id),
                    "bytes_in": l.bytes_in.load(Relaxed),
                    "bytes_out": l.bytes_out.load(Relaxed),
                })
            })
            .collect();
        let samples: Vec<f64> = lock(&self.latency_ms).iter().copied().collect();
        json!({
            "node_id": self.node_id.to_hex(),
            "neighbours": neighbours,
            "bytes_in": self.bytes_in.json(),
            "bytes_out": self.bytes_out.json(),
            "chunks": {
                "verified": counters.verified,
                "verified_bytes": counters.verified_bytes,
                "published": counters.published,
                "published_bytes": counters.published_bytes,
                "duplicate_bytes": counters.duplicate_bytes,
                "rejected": counters.rejected,
                "duplicate": counters.duplicate,
                "late": counters.late,
            },
            "requests": {"sent": counters.requests_sent, "served": counters.requests_served},
            "banned": counters.banned,
            "public_addrs": self.public_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "port_mapping": self.mapping().map(|m| json!({"external": m.external.to_string(), "protocol": m.protocol})),
            "punch": {
                "attempts": counters.punch_attempts,
                "succeeded": counters.punch_succeeded,
                "failed": counters.punch_failed,
                "introductions": counters.introductions,
            },
            "connections_refused": self.connections_refused.load(Relaxed),
            "slow_dropped": self.slow_dropped.load(Relaxed),
            "stream_bps": stream_bps.map(|b| b.round() as u64),
            "depths": depths,
            "limits": {
                "window_s": self.limits.window.as_secs(),
                "max_neighbours": self.limits.max_neighbours,
                "max_incoming_connections": self.limits.max_incoming_connections,
                "control_queue": self.limits.control_queue,
                "chunk_queue": self.limits.chunk_queue,
                "receive_window": self.limits.receive_window,
                "send_window": self.limits.send_window,
                "max_frame": crate::limits::MAX_FRAME,
                "max_chunk": crate::limits::MAX_CHUNK_WIRE,
                // What this node should stay under at the stream rate it measured.
                "memory_bound_bytes": stream_bps.map(|b| self.limits.memory_bound(b as u64)),
            },
            "latency_ms": percentiles(samples),
            "latency_histogram_ms": lock(&self.latency_histogram).json(),
            "live_chunks": lock(&self.live).map(|(epoch, first, newest)| json!({"epoch": epoch, "first_seq": first, "newest_seq": newest})),
            "startup_ms": startup.map(|d| d.as_millis() as u64),
        })
    }
}

/// Upper bounds (ms) of the latency histogram's buckets; one more counts everything.
pub const LATENCY_BUCKETS_MS: [f64; 11] = [
    50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0,
];

/// Cumulative counts per bucket, as Prometheus reads them: `le` counts every sample ≤ it.
#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS_MS.len()],
    count: u64,
    sum_ms: f64,
    /// Fine log-spaced counts (bucket k holds samples up to `FINE_BASE^k` ms, ≈ 5 % wide):
    /// histograms of many nodes add up, so a benchmark gets percentiles over a whole swarm.
    fine: BTreeMap<u32, u64>,
}

/// Ratio between the bounds of neighbouring fine buckets.
pub const FINE_BASE: f64 = 1.05;

/// The fine bucket a latency falls in (1 ms and below: bucket 0).
pub fn fine_bucket(ms: f64) -> u32 {
    if ms <= 1.0 {
        0
    } else {
        (ms.ln() / FINE_BASE.ln()).ceil() as u32
    }
}

/// The upper bound (ms) of fine bucket `bucket`: the inverse of `fine_bucket`.
pub fn fine_bucket_bound_ms(bucket: u32) -> f64 {
    FINE_BASE.powi(bucket as i32)
}

impl Histogram {
    fn observe(&mut self, ms: f64) {
        for (bound, count) in LATENCY_BUCKETS_MS.iter().zip(&mut self.counts) {
            if ms <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum_ms += ms;
        *self.fine.entry(fine_bucket(ms)).or_default() += 1;
    }

    /// Buckets in order, the last one (`le_ms` null) counting every sample.
    fn json(&self) -> Value {
        let buckets: Vec<Value> = LATENCY_BUCKETS_MS
            .iter()
            .zip(self.counts)
            .map(|(bound, count)| json!({"le_ms": bound, "count": count}))
            .chain([json!({"le_ms": null, "count": self.count})])
            .collect();
        let fine: serde_json::Map<String, Value> = self.fine.iter().map(|(k, n)| (k.to_string(), json!(n))).collect();
        json!({"buckets": buckets, "count": self.count, "sum_ms": self.sum_ms, "fine": fine})
    }
}

/// p50/p95/p99 of `samples` in ms (null when there are none).
pub fn percentiles(mut samples: Vec<f64>) -> Value {
    if samples.is_empty() {
        return json!({"p50": null, "p95": null, "p99": null});
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        (samples[i] * 10.0).round() / 10.0
    };
    json!({"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)})
}

/// Wall clock in µs since the Unix epoch (the clock chunk timestamps use).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Writes `value` to `path` atomically: a reader never sees a half-written file.
pub fn write_atomically(path: &Path, value: &Value) -> std::io::Result<()> {
    write_atomically_text(path, &serde_json::to_string_pretty(value).unwrap_or_default())
}

/// Writes `text` to a temporary file beside `path`, then renames it into place.
pub fn write_atomically_text(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Rewrites `path` about once a second with `snapshot()` until `cancel` fires, then once more.
pub fn spawn_writer(
    path: PathBuf,
    snapshot: impl Fn() -> Value + Send + 'static,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut warned = false;
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = cancel.cancelled() => true,
            };
            if let Err(e) = write_atomically(&path, &snapshot())
                && !warned
            {
                tracing::warn!("cannot write stats to {}: {e}", path.display());
                warned = true;
            }
            if stop {
                break;
            }
        }
    })
}
