//! A node's counters, shared between its tasks: bytes by kind and by neighbour, chunk
//! verdicts, latency samples; read as one `Snapshot`, the `--stats-json` / `/stats.json` object.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_proto::NodeId;
use tokio_util::sync::CancellationToken;

use shoal_core::limits::{self, Limits};
use shoal_core::state::{Counters, State};

use crate::discovery::observed::{Mapping, Observed};

/// Latency samples kept for percentiles: the most recent ones (≈ 2 min at 30 chunks/s).
const LATENCY_SAMPLES: usize = 4096;
/// Closed neighbours remembered in the stats (the newest ones), beside the connected ones.
const CLOSED_LINKS_KEPT: usize = 64;

/// Bytes exchanged with one neighbour.
#[derive(Debug)]
pub struct Link {
    /// The key the neighbour proved in the handshake.
    pub node_id: NodeId,
    /// Its address as this node sees it (the connection's remote address).
    pub addr: SocketAddr,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connected: AtomicBool,
    /// While it is open: QUIC's own counts are read from it.
    conn: Mutex<Option<quinn::Connection>>,
    /// Its counts when it closed.
    wire_at_close: Mutex<Wire>,
}

impl Link {
    /// What the link's packets carried out of this node, as QUIC counted it.
    fn wire(&self) -> Wire {
        match &*lock(&self.conn) {
            Some(conn) => Wire::of(conn),
            None => *lock(&self.wire_at_close),
        }
    }
}

/// What went out on the wire, as QUIC counts it: every byte of every datagram sent
/// (chunks, control, acknowledgements, retransmissions, headers), and those of packets
/// declared lost. The difference is what the uplink carried to the other end, unlike the
/// bytes handed to streams, which a full router queue never sees off. (Packets still in flight
/// when a connection closes are neither acknowledged nor declared lost, so they count as
/// carried: with many short-lived connections the figure runs high.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wire {
    /// Bytes of every UDP datagram sent.
    pub sent_bytes: u64,
    /// Bytes of the packets QUIC declared lost.
    pub lost_bytes: u64,
}

impl Wire {
    fn of(conn: &quinn::Connection) -> Wire {
        let stats = conn.stats();
        Wire {
            sent_bytes: stats.udp_tx.bytes,
            lost_bytes: stats.path.lost_bytes,
        }
    }

    fn add(&mut self, other: Wire) {
        self.sent_bytes += other.sent_bytes;
        self.lost_bytes += other.lost_bytes;
    }

    /// Sent less lost: what reached the other end, bytes (high when connections closed with
    /// packets in flight).
    pub fn carried_bytes(&self) -> u64 {
        self.sent_bytes.saturating_sub(self.lost_bytes)
    }
}

#[derive(Default)]
struct Totals {
    data: AtomicU64,
    control: AtomicU64,
}

impl Totals {
    fn read(&self) -> ByKind {
        ByKind {
            data: self.data.load(Relaxed),
            control: self.control.load(Relaxed),
        }
    }
}

/// What a counted byte carried.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Chunks, whole as encoded: header, payload and signature.
    Data,
    /// Control messages, as framed on the control stream.
    Control,
}

/// What the stats show of the core, copied from it about once a second.
#[derive(Clone, Default)]
struct CoreView {
    counters: Counters,
    startup: Option<Duration>,
    /// Measured stream rate, bit/s.
    stream_bps: Option<f64>,
    /// Hops from the broadcaster per stripe.
    depths: Vec<u8>,
}

/// A node's counters, moved by its tasks as they go and read as one `Snapshot`.
pub struct Stats {
    node_id: NodeId,
    /// The broadcaster's node ID: its stream key, proven in the handshake.
    source: NodeId,
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
    /// Chunks for neighbours given up unsent (or cut part-way) at their deadline.
    expired: AtomicU64,
    /// Handshakes refused for a HELLO claiming another node's ID.
    identity_refused: AtomicU64,
    /// What closed links no longer listed had sent on the wire.
    wire_forgotten: Mutex<Wire>,
    /// Where neighbours see this node.
    observed: Mutex<Observed>,
    mapping: Mutex<Option<Mapping>>,
    uplink: Mutex<Option<shoal_core::uplink::Report>>,
    padding_sent: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave counters inconsistent in a way that matters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    /// Counters at zero for node `node_id`, in the stream whose broadcaster is `source`.
    pub fn new(node_id: NodeId, source: NodeId, limits: Limits) -> Arc<Self> {
        Arc::new(Stats {
            node_id,
            source,
            bytes_in: Totals::default(),
            bytes_out: Totals::default(),
            links: Mutex::new(Vec::new()),
            core: Mutex::default(),
            latency_ms: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
            latency_histogram: Mutex::default(),
            live: Mutex::default(),
            connections_refused: AtomicU64::new(0),
            slow_dropped: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            identity_refused: AtomicU64::new(0),
            wire_forgotten: Mutex::default(),
            observed: Mutex::default(),
            mapping: Mutex::default(),
            uplink: Mutex::default(),
            padding_sent: AtomicU64::new(0),
            limits,
        })
    }

    /// Starts counting a new connection to `node_id`. Beyond the 64 closed links kept, the oldest
    /// is forgotten; its wire bytes stay in the totals.
    pub fn link(&self, node_id: NodeId, conn: &quinn::Connection) -> Arc<Link> {
        let link = Arc::new(Link {
            node_id,
            addr: conn.remote_address(),
            bytes_in: 0.into(),
            bytes_out: 0.into(),
            connected: true.into(),
            conn: Mutex::new(Some(conn.clone())),
            wire_at_close: Mutex::default(),
        });
        let mut links = lock(&self.links);
        links.push(link.clone());
        let closed = links.iter().filter(|l| !l.connected.load(Relaxed)).count();
        if closed > CLOSED_LINKS_KEPT
            && let Some(i) = links.iter().position(|l| !l.connected.load(Relaxed))
        {
            let gone = links.remove(i);
            lock(&self.wire_forgotten).add(gone.wire());
        }
        link
    }

    /// Counts a neighbour dropped for not taking the chunks pushed to it.
    pub fn slow_dropped(&self) {
        self.slow_dropped.fetch_add(1, Relaxed);
    }

    /// Counts chunks for a neighbour given up at their deadline, unsent or cut part-way.
    pub fn expired(&self, chunks: usize) {
        self.expired.fetch_add(chunks as u64, Relaxed);
    }

    /// Counts a handshake refused because the HELLO claimed a node ID its sender did not prove.
    pub fn identity_refused(&self) {
        self.identity_refused.fetch_add(1, Relaxed);
    }

    /// Counts an incoming connection turned away because `max_incoming_connections` were open.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// Marks `link` closed, keeping QUIC's counts as they were when it closed.
    pub fn closed(&self, link: &Link) {
        link.connected.store(false, Relaxed);
        if let Some(conn) = lock(&link.conn).take() {
            *lock(&link.wire_at_close) = Wire::of(&conn);
        }
    }

    /// What this node's uplink carried, all links together (`Wire`).
    pub fn wire(&self) -> Wire {
        let mut total = *lock(&self.wire_forgotten);
        for link in lock(&self.links).iter() {
            total.add(link.wire());
        }
        total
    }

    /// Counts `n` bytes of `kind` read from a neighbour (and on its link, when given).
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

    /// Counts `n` bytes of `kind` handed to a neighbour's streams (and on its link, when given);
    /// a chunk counts once it went out whole before its deadline.
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
    pub fn mapping(&self) -> Option<Mapping> {
        *lock(&self.mapping)
    }

    /// What the uplink controller says now.
    pub fn set_uplink(&self, report: shoal_core::uplink::Report) {
        *lock(&self.uplink) = Some(report);
    }

    /// Padding datagrams sent to probe the uplink.
    pub fn padding_sent(&self, bytes: usize) {
        self.padding_sent.fetch_add(bytes as u64, Relaxed);
    }

    /// What the router forwards to this node now (`None`: no mapping, or it was lost).
    pub fn set_mapping(&self, mapping: Option<Mapping>) {
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

    /// Copies what the stats show of the core: its counters, startup time, stream rate, depths.
    pub fn set_core(&self, core: &State) {
        *lock(&self.core) = CoreView {
            counters: core.counters().clone(),
            startup: core.startup(),
            stream_bps: core.stream_bps(),
            depths: core.depths(),
        };
    }

    /// Every counter at this moment: the object `--stats-json` and `/stats.json` write.
    pub fn snapshot(&self) -> Snapshot {
        let CoreView {
            counters,
            startup,
            stream_bps,
            depths,
        } = lock(&self.core).clone();
        let neighbours = lock(&self.links)
            .iter()
            .map(|l| NeighbourStats {
                node_id: l.node_id.to_hex(),
                addr: l.addr,
                connected: l.connected.load(Relaxed),
                source: l.node_id == self.source,
                bytes_in: l.bytes_in.load(Relaxed),
                bytes_out: l.bytes_out.load(Relaxed),
                wire_out: l.wire(),
            })
            .collect();
        let samples: Vec<f64> = lock(&self.latency_ms).iter().copied().collect();
        Snapshot {
            node_id: self.node_id.to_hex(),
            neighbours,
            bytes_in: self.bytes_in.read(),
            bytes_out: self.bytes_out.read(),
            wire_out: self.wire(),
            chunks: ChunkCounts {
                verified: counters.verified,
                verified_bytes: counters.verified_bytes,
                published: counters.published,
                published_bytes: counters.published_bytes,
                duplicate: counters.duplicate,
                duplicate_bytes: counters.duplicate_bytes,
                late: counters.late,
                expired: self.expired.load(Relaxed),
                rejected: counters.rejected.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            },
            requests: Requests {
                sent: counters.requests_sent,
                served: counters.requests_served,
            },
            banned: counters.banned,
            public_addrs: self.public_addrs(),
            port_mapping: self.mapping().map(|m| PortMapping {
                external: m.external,
                protocol: m.protocol.to_string(),
            }),
            punch: Punch {
                attempts: counters.punch_attempts,
                succeeded: counters.punch_succeeded,
                failed: counters.punch_failed,
                introductions: counters.introductions,
            },
            connections_refused: self.connections_refused.load(Relaxed),
            slow_dropped: self.slow_dropped.load(Relaxed),
            identity_refused: self.identity_refused.load(Relaxed),
            stream_bps: stream_bps.map(|b| b.round() as u64),
            depths,
            limits: LimitsView {
                window_s: self.limits.window.as_secs(),
                max_neighbours: self.limits.max_neighbours,
                max_incoming_connections: self.limits.max_incoming_connections,
                control_queue: self.limits.control_queue,
                chunk_queue: self.limits.chunk_queue,
                receive_window: self.limits.receive_window,
                send_window: self.limits.send_window,
                max_frame: limits::MAX_FRAME,
                max_chunk: limits::MAX_CHUNK_WIRE,
                memory_bound_bytes: stream_bps.map(|b| self.limits.memory_bound(b as u64)),
            },
            latency_ms: percentiles(samples),
            latency_histogram_ms: lock(&self.latency_histogram).view(),
            live_chunks: lock(&self.live).map(|(epoch, first_seq, newest_seq)| LiveChunks {
                epoch,
                first_seq,
                newest_seq,
            }),
            startup_ms: startup.map(|d| d.as_millis() as u64),
            uplink: lock(&self.uplink).as_ref().map(|r| UplinkView {
                mode: r.mode.as_str().into(),
                capacity_kbps: r.capacity_bps.map(|b| (b / 1000.0).round() as u64),
                how: r.how.as_str().into(),
                pacing_kbps: r.pacing_bps.map(|b| (b / 1000.0).round() as u64),
                queue_ms: r.queue.map(|q| q.as_secs_f64() * 1000.0),
                target_ms: r.target.as_secs_f64() * 1000.0,
                probing: r.probing,
                yielding: r.yielding,
                padding_bytes: self.padding_sent.load(Relaxed),
            }),
        }
    }
}

/// The uplink as this node learnt it, and how it paces its chunk uploads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UplinkView {
    /// `background` (steps aside for the household) or `foreground`.
    pub mode: String,
    /// What the uplink carries, kbit/s (none until it has been seen to carry anything).
    pub capacity_kbps: Option<u64>,
    /// How `capacity_kbps` was found: `measured` (seen full), `at least` (never seen full),
    /// `unknown`.
    pub how: String,
    /// The rate chunks are released at, kbit/s (none: unpaced).
    pub pacing_kbps: Option<u64>,
    /// Queueing delay on the uplink at the last measure, ms (none before the first).
    pub queue_ms: Option<f64>,
    /// The queueing delay it holds at most (60 ms, or less behind a router seen to drop
    /// before its queue got that deep).
    #[serde(default)]
    pub target_ms: f64,
    /// Sending padding to see whether the uplink carries more than it has been seen to.
    pub probing: bool,
    /// Holding back for a queue the household built.
    pub yielding: bool,
    /// Padding sent to probe the uplink, bytes.
    pub padding_bytes: u64,
}

/// A node's stats at one moment: what `--stats-json`, `/stats.json`, `/metrics`, the status
/// line and the benchmarks read (the keys are DESIGN.md's contract).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// This node's ID (the key it proves in handshakes), hex.
    pub node_id: String,
    /// Connected neighbours and the most recently closed ones.
    pub neighbours: Vec<NeighbourStats>,
    /// Bytes read from neighbours' QUIC streams (chunks, control), duplicates and forged chunks included.
    pub bytes_in: ByKind,
    /// Bytes handed to QUIC streams (chunks, control).
    pub bytes_out: ByKind,
    /// What the uplink carried, as QUIC counted it.
    #[serde(default)]
    pub wire_out: Wire,
    /// Chunks received or produced, by verdict.
    pub chunks: ChunkCounts,
    /// Repair requests this node sent, and chunks it served in answer to others'.
    pub requests: Requests,
    /// Neighbours banned for forgeries, floods or lies.
    pub banned: u64,
    /// This node's addresses beyond its NAT: the mapped one, then those neighbours agree on.
    pub public_addrs: Vec<SocketAddr>,
    /// The port the router forwards to this node (PCP, NAT-PMP or UPnP); none until one is got.
    pub port_mapping: Option<PortMapping>,
    /// Hole punches and the introductions that start them.
    pub punch: Punch,
    /// Incoming connections turned away because `max_incoming_connections` were open.
    pub connections_refused: u64,
    /// Neighbours dropped for not taking the chunks pushed to them.
    pub slow_dropped: u64,
    /// Handshakes refused because the HELLO claimed a node ID its sender did not prove.
    #[serde(default)]
    pub identity_refused: u64,
    /// The stream's rate as measured, bit/s (none until a chunk is held).
    pub stream_bps: Option<u64>,
    /// Hops from the broadcaster per stripe (255: cut off).
    pub depths: Vec<u8>,
    /// The bounds this node keeps, and the memory they add up to.
    pub limits: LimitsView,
    /// Chunk timestamp → held verified, over recent chunks emitted since this node started.
    pub latency_ms: Percentiles,
    /// The same latency over every such chunk since start, as a histogram.
    pub latency_histogram_ms: HistogramView,
    /// The seqs of chunks emitted since start that this node holds (a benchmark's denominator;
    /// none until one arrives).
    pub live_chunks: Option<LiveChunks>,
    /// Start → a whole keyframe segment held, ms (none until then).
    pub startup_ms: Option<u64>,
    /// What the uplink carries and how chunk uploads are paced.
    #[serde(default)]
    pub uplink: Option<UplinkView>,
}

impl Snapshot {
    /// Neighbours still connected (the list also keeps recently closed ones).
    pub fn connected_neighbours(&self) -> usize {
        self.neighbours.iter().filter(|n| n.connected).count()
    }
}

/// One neighbour, connected or recently closed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NeighbourStats {
    /// Its node ID (the key it proved in the handshake), hex.
    pub node_id: String,
    /// Its address as this node sees it.
    pub addr: SocketAddr,
    /// False once the connection closed.
    pub connected: bool,
    /// It is the broadcaster (it proved the stream key).
    pub source: bool,
    /// Bytes read from it: chunks and control.
    pub bytes_in: u64,
    /// Bytes handed to its QUIC streams: chunks and control.
    pub bytes_out: u64,
    /// What the uplink carried to it, as QUIC counted it.
    #[serde(default)]
    pub wire_out: Wire,
}

/// Bytes, by what they carried.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ByKind {
    /// Chunks as encoded (header, payload, signature), bytes.
    pub data: u64,
    /// Control messages as framed, bytes.
    pub control: u64,
}

impl ByKind {
    /// Chunks and control together, bytes.
    pub fn total(&self) -> u64 {
        self.data + self.control
    }
}

/// Chunks by verdict: new ones received or produced, copies already held, late, refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChunkCounts {
    /// Received from neighbours, verified and new (and their wire bytes).
    pub verified: u64,
    /// Those chunks' encoded size, bytes: the useful download.
    pub verified_bytes: u64,
    /// Produced by this node (the broadcaster).
    pub published: u64,
    /// Those chunks' encoded size, bytes.
    pub published_bytes: u64,
    /// Received again while already held.
    pub duplicate: u64,
    /// Those copies' encoded size, bytes: download wasted.
    pub duplicate_bytes: u64,
    /// Older than the window.
    pub late: u64,
    /// Pushed or served to a neighbour but given up at its deadline, unsent or cut part-way
    /// (our uplink's pace held it, or the neighbour took too long): the neighbour asks elsewhere.
    #[serde(default)]
    pub expired: u64,
    /// Refused, by reason: `bad_signature`, `malformed`, `oversized`, `protocol`,
    /// `control_flood`, `request_flood`, `false_have`, `stale`.
    pub rejected: BTreeMap<String, u64>,
}

/// Repair: chunks asked of neighbours to fill gaps, and sent to neighbours that asked.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Requests {
    /// REQUEST messages sent (one may name several chunks).
    pub sent: u64,
    /// Chunks sent in answer to neighbours' REQUESTs.
    pub served: u64,
}

/// A port the router forwards to this node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortMapping {
    /// Where peers outside reach this node.
    pub external: SocketAddr,
    /// How it was got: `PCP`, `NAT-PMP` or `UPnP`.
    pub protocol: String,
}

/// Hole punching: punches started, connected, timed out, and introductions made.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Punch {
    /// Punches started, as the dialler or the dialled.
    pub attempts: u64,
    /// Punches that connected.
    pub succeeded: u64,
    /// Punches that timed out.
    pub failed: u64,
    /// Introductions this node made: it told one neighbour to dial back another (PUNCH).
    pub introductions: u64,
}

/// The bounds this node keeps (`shoal_core::limits`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LimitsView {
    /// Stream kept and relayed, seconds of broadcaster time (`--window-s`).
    pub window_s: u64,
    /// Active neighbours at most; newcomers beyond are turned away with other peers to try.
    pub max_neighbours: usize,
    /// Connections dialled to this node at once, handshaking or running; more are refused.
    pub max_incoming_connections: usize,
    /// Control messages queued towards one neighbour; one that lets it fill is dropped as slow.
    pub control_queue: usize,
    /// Chunks queued towards one neighbour; when full, pushes to it are skipped.
    pub chunk_queue: usize,
    /// Bytes a neighbour may send that this node has not read yet (QUIC receive window).
    pub receive_window: u64,
    /// Bytes this node may write to a neighbour unacknowledged (QUIC send window).
    pub send_window: u64,
    /// Largest control frame body accepted, bytes.
    pub max_frame: usize,
    /// Largest encoded chunk accepted, bytes.
    pub max_chunk: usize,
    /// What this node should stay under at the stream rate it measured, bytes (none until
    /// the rate is measured).
    pub memory_bound_bytes: Option<u64>,
}

/// Percentiles in ms (none when there are no samples).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// The median, ms.
    pub p50: Option<f64>,
    /// 95th percentile, ms.
    pub p95: Option<f64>,
    /// 99th percentile, ms.
    pub p99: Option<f64>,
}

/// Every chunk's latency since start, in Prometheus' cumulative buckets and fine ones.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistogramView {
    /// Cumulative counts at each bound of `LATENCY_BUCKETS_MS`, then one counting every sample.
    pub buckets: Vec<Bucket>,
    /// Samples in all.
    pub count: u64,
    /// Their latencies added up, ms.
    pub sum_ms: f64,
    /// Fine log-spaced counts by bucket number (`fine_bucket`): they add up across nodes.
    pub fine: BTreeMap<u32, u64>,
}

/// Samples at most `le_ms` (all of them where `le_ms` is none).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// Upper bound, ms; none: no bound (Prometheus' `+Inf`).
    pub le_ms: Option<f64>,
    /// Samples at most `le_ms`.
    pub count: u64,
}

/// The chunks emitted since this node started that it got (new, from neighbours), in the
/// current epoch: it should hold `newest_seq - first_seq + 1` of them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct LiveChunks {
    /// The broadcaster's epoch (random at each start); a new one starts the span again.
    pub epoch: u64,
    /// The lowest seq got.
    pub first_seq: u64,
    /// The highest seq got.
    pub newest_seq: u64,
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
    fn view(&self) -> HistogramView {
        let buckets = LATENCY_BUCKETS_MS
            .iter()
            .zip(self.counts)
            .map(|(bound, count)| Bucket {
                le_ms: Some(*bound),
                count,
            })
            .chain([Bucket {
                le_ms: None,
                count: self.count,
            }])
            .collect();
        HistogramView {
            buckets,
            count: self.count,
            sum_ms: self.sum_ms,
            fine: self.fine.clone(),
        }
    }
}

/// p50/p95/p99 of `samples` in ms (null when there are none).
pub fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        Some((samples[i] * 10.0).round() / 10.0)
    };
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// Wall clock in µs since the Unix epoch (the clock chunk timestamps use).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Writes `value` as JSON to `path` atomically: a reader never sees a half-written file.
pub fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
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
pub fn spawn_writer<T: Serialize>(
    path: PathBuf,
    snapshot: impl Fn() -> T + Send + 'static,
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
