//! The deterministic swarm simulator behind `shoal-sim`: the same `State` code as the real
//! peer, on virtual time, over a network model with per-link latency and jitter, per-packet
//! loss and retransmission, and an upload cap on every byte a node sends. Churn, hostile
//! peers and late joiners included. Metrics are observed here, not reported by the peers.

mod calendar;
mod config;
mod cpu;
mod driver;
mod encoder;
mod evil;
mod household;
mod network;
mod report;
mod router;
mod sender;
mod uplink;
mod watch;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use shoal_proto::NodeId;

use calendar::Calendar;
pub use config::{SimConfig, parse_household, parse_join_uplinks, parse_upload_mix};
use cpu::{Cpu, Work};
pub use cpu::{CpuConfig, CpuReport};
use driver::NodeIo;
use encoder::Encoder;
use evil::Evil;
use report::QueueReads;
pub use report::{Latency, Report, Startup};
use router::Router;
use sender::Sender;
pub use sender::SenderModel;
use shoal_core::drive;
use shoal_core::state::{self, Action, Event, State};
use uplink::{Payload, Queued, Uplink};
pub use watch::WatchReport;

enum Role {
    Honest(Box<State>),
    Evil(Evil),
}

struct Node {
    role: Role,
    addr: SocketAddr,
    online: bool,
    joined_us: u64,
    left_us: Option<u64>,
    startup_us: Option<u64>,
    /// When its uplink controller first measured the uplink (seen full).
    measured_us: Option<u64>,
    /// Ticks at which its controller read its uplink's queue, and of those how many read
    /// one of half the target or more while its router held under a tenth of that (the
    /// queue was on the ACKs' way back), or under a tenth while the router held half or more.
    queue_reads: QueueReads,
    upload_bps: f64,
    /// What waits to be sent, and how fast the node's transport sends it.
    uplink: Uplink,
    sender: Sender,
    /// The household router in front of the uplink (`None`: the node sends at exactly its
    /// uplink's rate and nothing queues beyond it).
    router: Option<Router>,
    sent_data: u64,
    sent_control: u64,
    sent_padding: u64,
    /// When each neighbour was last heard from, and last sent anything (for QUIC's idle
    /// timeout and keep-alives).
    heard: HashMap<usize, u64>,
    spoke: HashMap<usize, u64>,
    /// The item on the paced lane, until its last byte is out.
    in_flight: Option<InFlight>,
    /// Its household's own bulk upload through the same router (`--cross-traffic`).
    household: Option<household::Household>,
    /// Which neighbour gets the next padding.
    pad_turn: usize,
    /// Chunks emitted after its startup that it held within the deadline.
    on_time: u64,
    /// What waits for a core (only with a shared CPU).
    inbox: Vec<Item>,
    /// Queued for a core or running on one: new work waits for the next slice.
    on_cpu: bool,
    cpu_us: f64,
    /// A watcher (`--watchers`): the segments a gateway on it would have published.
    watch: Option<watch::Watch>,
}

/// An item being sent on a node's paced lane.
struct InFlight {
    q: Queued,
    wire: usize,
    /// Packets lost at random and sent again, and the delay that adds.
    resent: usize,
    delay: u64,
}

/// Work a node does when it gets a core.
#[derive(Debug)]
enum Item {
    Tick,
    Arrive { from: usize, payload: Payload },
}

#[derive(Debug)]
enum Ev {
    Frame,
    Tick(usize),
    TxDone(usize),
    /// An ACK (or a loss report) reaches node `node` for what it sent on `path`.
    Acked {
        node: usize,
        path: usize,
        bytes: u64,
        /// When what is acknowledged was sent (its last packet), and the round trip sampled
        /// (0: none, a loss report).
        sent_us: u64,
        rtt_us: u64,
        /// What the receiver echoed, its clock at arrival less
        /// ours at sending (0: none).
        one_way_us: u64,
        /// Bytes declared lost on the way (in packets dropped or lost at random).
        lost: u64,
    },
    /// What the router dropped, queued again at its sender.
    Resend(usize, Queued),
    /// A node's household sends through its router.
    Household(usize),
    Arrive {
        to: usize,
        from: usize,
        payload: Payload,
    },
    Connect {
        from: usize,
        to: usize,
    },
    DialFailed {
        node: usize,
        addr: SocketAddr,
    },
    Down {
        node: usize,
        peer: usize,
    },
    Close {
        node: usize,
        peer: usize,
    },
    /// A node's slice on the shared CPU ends: what it took from its inbox takes effect.
    Ran {
        node: usize,
        items: Vec<Item>,
    },
    Churn,
    Join(usize),
}

const SOURCE: usize = 0;
const TICK_US: u64 = 50_000;
/// When the lab's gateway joins (watchers, and the first of `--join-uplinks` just after).
const LAB_START_US: u64 = 500_000;
/// Latency histogram resolution: 1 ms buckets up to a minute.
const HISTOGRAM_MS: usize = 60_000;

pub struct Sim {
    cfg: SimConfig,
    rng: SmallRng,
    base: Instant,
    now: u64,
    /// Pending events; ties in time run in the order scheduled, so a seed replays exactly.
    queue: Calendar<Ev>,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    links: HashSet<(usize, usize)>,
    encoder: Encoder,
    /// Timestamps of every emitted chunk, in order (for delivery denominators).
    emitted: Vec<u64>,
    /// The stream's segments: where each starts, and its chunks.
    segments: watch::Segments,
    /// The watchers' chunk latencies, ms.
    watch_latency_ms: Vec<u64>,
    stream_bytes: u64,
    latency_ms: Vec<u64>,
    delivered: u64,
    useful_data: u64,
    duplicate_data: u64,
    dup_from_parent: u64,
    forged_delivered: u64,
    actions: Vec<Action>,
    scratch: BytesMut,
    /// `SHOAL_SIM_TRACE=n`: print node n's uplink twice a second.
    trace: Option<usize>,
    /// `SHOAL_SIM_DEBUG`: latencies (ms) per 10 s of the run, printed at the end.
    debug_latency: Option<Vec<Vec<u32>>>,
    /// `SHOAL_SIM_DEBUG`: per 5 s and stripe, chunks delivered and how many of them late.
    debug_late: Vec<Vec<(u64, u64)>>,
    stripes: usize,
    dump_at_us: Option<u64>,
    /// Connections closed by QUIC's idle timeout, and neighbours dropped as too slow.
    idle_timeouts: u64,
    slow_dropped: u64,
    cpu: Option<Cpu>,
}

fn node_id(index: usize) -> NodeId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(index as u64).to_le_bytes());
    id[8] = 0x5a;
    NodeId(id)
}

fn index_of(id: &NodeId) -> usize {
    u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes")) as usize
}

fn addr_of(index: usize) -> SocketAddr {
    // Addresses are labels inside the simulation only; nothing is sent anywhere.
    SocketAddr::from(([198, 18, (index >> 8) as u8, index as u8], 7000 + (index >> 16) as u16))
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let rng = SmallRng::seed_from_u64(cfg.seed);
        let encoder = Encoder::new(cfg.bitrate_kbps, cfg.fps, cfg.segment_ms);
        let mut sim = Sim {
            rng,
            base: Instant::now(),
            now: 0,
            queue: Calendar::new(),
            nodes: Vec::new(),
            by_addr: HashMap::default(),
            links: HashSet::default(),
            encoder,
            emitted: Vec::new(),
            segments: watch::Segments::default(),
            watch_latency_ms: Vec::new(),
            stream_bytes: 0,
            latency_ms: vec![0; HISTOGRAM_MS + 1],
            delivered: 0,
            useful_data: 0,
            duplicate_data: 0,
            dup_from_parent: 0,
            forged_delivered: 0,
            actions: Vec::new(),
            scratch: BytesMut::new(),
            idle_timeouts: 0,
            trace: std::env::var("SHOAL_SIM_TRACE").ok().and_then(|s| s.parse().ok()),
            debug_latency: std::env::var_os("SHOAL_SIM_DEBUG").map(|_| Vec::new()),
            debug_late: Vec::new(),
            stripes: usize::from(state::Config::default().stripes),
            dump_at_us: std::env::var("SHOAL_SIM_DUMP")
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .map(|s| (s * 1e6) as u64),
            slow_dropped: 0,
            cpu: cfg.cpu.clone().map(Cpu::new),
            cfg,
        };
        let bitrate = sim.cfg.bitrate_kbps as f64 * 1000.0;
        sim.add_node(bitrate * sim.cfg.source_upload_x, false, true);
        // Watchers come first, as the lab's gateway does, unshaped and uploading nothing.
        for _ in 0..sim.cfg.watchers {
            let index = sim.add_node(bitrate * 100.0, false, false);
            sim.nodes[index].watch = Some(watch::Watch::default());
            sim.nodes[index].router = None;
            sim.schedule(LAB_START_US, Ev::Join(index));
        }
        match sim.cfg.join_uplinks.clone() {
            // The lab's way: these uplinks, in this order, one every `join_every_ms`.
            Some(uplinks) => {
                for (i, multiple) in uplinks.iter().enumerate() {
                    let evil = sim.rng.random::<f64>() < sim.cfg.malicious;
                    let index = sim.add_node(bitrate * multiple, evil, false);
                    let join = LAB_START_US + 60_000 + i as u64 * sim.cfg.join_every_ms * 1000;
                    sim.schedule(join, Ev::Join(index));
                }
            }
            None => {
                for _ in 0..sim.cfg.peers {
                    let join = sim.rng.random_range(0..=sim.cfg.join_spread_s * 1_000_000);
                    let index = sim.spawn_peer();
                    sim.schedule(join, Ev::Join(index));
                }
            }
        }
        // Given households' uploads (`--household`), on the viewers they name (in join order).
        for (viewer, periods) in sim.cfg.households.clone() {
            let index = 1 + sim.cfg.watchers + viewer;
            if index < sim.nodes.len() && sim.cfg.router_queue_ms > 0 {
                let periods = periods.iter().map(|(a, b)| (a * 1_000_000, b * 1_000_000)).collect();
                sim.nodes[index].household = Some(household::Household::scheduled(periods));
                sim.schedule(0, Ev::Household(index));
            }
        }
        sim.schedule(0, Ev::Frame);
        if sim.cfg.churn_per_min > 0.0 {
            sim.schedule(sim.cfg.join_spread_s * 1_000_000 + 1_000_000, Ev::Churn);
        }
        sim
    }

    fn spawn_peer(&mut self) -> usize {
        let bitrate = self.cfg.bitrate_kbps as f64 * 1000.0;
        let draw: f64 = self.rng.random();
        let mut acc = 0.0;
        let mut multiple = self.cfg.upload_mix.last().map_or(1.0, |m| m.1);
        for (share, m) in &self.cfg.upload_mix {
            acc += share;
            if draw < acc {
                multiple = *m;
                break;
            }
        }
        let evil = self.rng.random::<f64>() < self.cfg.malicious;
        let n = self.add_node(bitrate * multiple, evil, false);
        if self.cfg.router_queue_ms > 0 && self.rng.random::<f64>() < self.cfg.cross_traffic {
            self.nodes[n].household = Some(household::Household::new(&mut self.rng));
        }
        n
    }

    fn add_node(&mut self, upload_bps: f64, evil: bool, source: bool) -> usize {
        let index = self.nodes.len();
        let addr = addr_of(index);
        // What the node is told it may upload: the source its cap, a watcher nothing (the
        // lab's gateway, `--upload-kbps 0`), and viewers their uplink only with --declare-upload.
        let watcher = !source && index <= self.cfg.watchers;
        // (The broadcaster declares no upload either, as shoal-broadcaster without a cap:
        // its link still carries only `--source-upload-x` times the stream.)
        let declared = if watcher {
            Some(0.0)
        } else {
            (!source && !self.cfg.upload_unknown).then_some(upload_bps)
        };
        let config = state::Config {
            source,
            upload_bps: declared.map(|d| d as u64),
            deliver: true,
            listen: vec![addr],
            ..state::Config::default()
        };
        let role = if evil {
            Role::Evil(Evil::new(config.stripes))
        } else {
            Role::Honest(Box::new(State::new(
                node_id(index),
                config,
                self.cfg.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                self.base,
            )))
        };
        self.nodes.push(Node {
            role,
            addr,
            online: source,
            joined_us: 0,
            left_us: None,
            startup_us: if source { Some(0) } else { None },
            measured_us: None,
            queue_reads: QueueReads::default(),
            upload_bps,
            // Before the uplink controller, each connection had its own chunk queue.
            uplink: if self.cfg.router_queue_ms > 0 && self.cfg.sender == SenderModel::Greedy {
                Uplink::per_link()
            } else {
                Uplink::default()
            },
            sender: if self.cfg.router_queue_ms == 0 {
                Sender::Exact
            } else {
                Sender::new(self.cfg.sender, source, declared, self.base)
            },
            router: (self.cfg.router_queue_ms > 0)
                .then(|| Router::new(upload_bps, self.cfg.router_queue_ms, self.cfg.router_burst_kb)),
            sent_data: 0,
            sent_control: 0,
            sent_padding: 0,
            heard: HashMap::default(),
            spoke: HashMap::default(),
            in_flight: None,
            household: None,
            pad_turn: 0,
            on_time: 0,
            inbox: Vec::new(),
            on_cpu: false,
            cpu_us: 0.0,
            watch: None,
        });
        self.by_addr.insert(addr, index);
        if source {
            self.schedule(0, Ev::Tick(index));
        }
        index
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.queue.push(at, ev);
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    pub fn run(mut self) -> Report {
        let wall = Instant::now();
        let end = self.cfg.duration_s * 1_000_000;
        while let Some((at, ev)) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            self.step(ev);
        }
        self.report(wall.elapsed())
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Frame => {
                let ts = self.now + 1_000_000;
                let chunks = self.encoder.next_frame(ts, &mut self.rng);
                for chunk in chunks {
                    self.emitted.push(ts);
                    self.segments.emitted(chunk.header.segment, ts);
                    self.stream_bytes += chunk.encoded_len() as u64;
                    self.feed(SOURCE, Event::Publish(Arc::new(chunk)));
                }
                let next = self.now + self.encoder.frame_interval_us();
                self.schedule(next, Ev::Frame);
            }
            Ev::Tick(n) => {
                if !self.nodes[n].online {
                    return;
                }
                if self.cpu.is_some() {
                    // A tick still waiting for a core is not doubled.
                    if !self.nodes[n].inbox.iter().any(|i| matches!(i, Item::Tick)) {
                        self.give_work(n, Item::Tick);
                    }
                } else {
                    self.tick(n);
                }
                self.schedule(self.now + TICK_US, Ev::Tick(n));
            }
            Ev::TxDone(n) => self.tx_done(n),
            Ev::Acked {
                node,
                path,
                bytes,
                sent_us,
                rtt_us,
                one_way_us,
                lost,
            } => {
                let now = self.instant();
                let sent = self.base + Duration::from_micros(sent_us);
                let n = &mut self.nodes[node];
                if n.online && bytes > 0 {
                    n.heard.insert(path, self.now);
                }
                if n.online {
                    // (A loss report carries no round trip: QUIC samples none from it.)
                    let rtt = (rtt_us > 0).then(|| Duration::from_micros(rtt_us));
                    if one_way_us > 0 {
                        n.sender.one_way(path as u64, Duration::from_micros(one_way_us), now);
                    }
                    n.sender.acked(path as u64, bytes, sent, rtt, lost, now);
                }
            }
            Ev::Household(n) => self.household(n),
            Ev::Resend(n, q) => {
                if self.nodes[n].online && self.links.contains(&(n.min(q.to), n.max(q.to))) {
                    self.nodes[n].uplink.push_again(q.to, q.payload, q.bytes, q.deadline);
                    self.transmit(n);
                }
            }
            Ev::Arrive { to, from, payload } if self.cpu.is_some() => {
                if self.nodes[to].online {
                    self.give_work(to, Item::Arrive { from, payload });
                }
            }
            Ev::Arrive { to, from, payload } => self.arrive(to, from, payload),
            Ev::Ran { node, items } => {
                if let Some(cpu) = &mut self.cpu {
                    cpu.release();
                }
                for item in items {
                    match item {
                        Item::Tick if self.nodes[node].online => self.tick(node),
                        Item::Tick => {}
                        Item::Arrive { from, payload } => self.arrive(node, from, payload),
                    }
                }
                self.nodes[node].on_cpu = false;
                if !self.nodes[node].inbox.is_empty() {
                    self.queue_for_cpu(node);
                }
                self.run_cpu();
            }
            Ev::Connect { from, to } => {
                if !self.nodes[from].online {
                    return;
                }
                if !self.nodes[to].online || self.links.contains(&(from.min(to), from.max(to))) {
                    let addr = self.nodes[to].addr;
                    self.feed(from, Event::DialFailed { addr });
                    return;
                }
                self.links.insert((from.min(to), from.max(to)));
                for (x, y) in [(from, to), (to, from)] {
                    self.nodes[x].heard.insert(y, self.now);
                    self.nodes[x].spoke.insert(y, self.now);
                }
                let (a, b) = (self.nodes[from].addr, self.nodes[to].addr);
                self.neighbour_up(to, from, a, false);
                self.neighbour_up(from, to, b, true);
            }
            Ev::DialFailed { node, addr } => {
                if self.nodes[node].online {
                    self.feed(node, Event::DialFailed { addr });
                }
            }
            Ev::Down { node, peer } => {
                if self.nodes[node].online {
                    self.nodes[node].uplink.forget(peer);
                    self.nodes[node].sender.forget(peer as u64);
                    match &mut self.nodes[node].role {
                        Role::Honest(_) => self.feed(node, Event::NeighbourDown { id: node_id(peer) }),
                        Role::Evil(evil) => evil.down(peer),
                    }
                }
            }
            Ev::Close { node, peer } => self.close(node, peer),
            Ev::Join(n) => {
                self.nodes[n].online = true;
                if self.nodes[n].household.as_ref().is_some_and(|h| !h.is_scheduled()) {
                    self.schedule(self.now, Ev::Household(n));
                }
                self.nodes[n].joined_us = self.now;
                let bootstrap = self.nodes[SOURCE].addr;
                if let Role::Honest(state) = &mut self.nodes[n].role {
                    state.add_peers(&[bootstrap]);
                } else {
                    self.dial(n, bootstrap);
                }
                let phase = self.rng.random_range(0..TICK_US);
                self.schedule(self.now + phase, Ev::Tick(n));
            }
            Ev::Churn => {
                // Each second, this share of the peers leaves without a goodbye and as
                // many fresh peers join.
                let per_second = self.cfg.churn_per_min / 60.0 * self.cfg.peers as f64;
                let mut leaving = per_second.floor() as usize;
                if self.rng.random::<f64>() < per_second.fract() {
                    leaving += 1;
                }
                let online: Vec<usize> = (1..self.nodes.len()).filter(|i| self.nodes[*i].online).collect();
                let gone: Vec<usize> = online.choose_multiple(&mut self.rng, leaving).copied().collect();
                for n in gone {
                    self.leave(n);
                    let fresh = self.spawn_peer();
                    self.schedule(self.now, Ev::Join(fresh));
                }
                self.schedule(self.now + 1_000_000, Ev::Churn);
            }
        }
    }

    /// `SHOAL_SIM_DUMP=t`: every node's uplink, household, parents and depths at `t` s, one
    /// line each (to see a stripe's tree when it fails).
    fn dump_trees(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let Role::Honest(state) = &node.role else { continue };
            let (pacing, yielding) = match &node.sender {
                Sender::Controlled(u) => {
                    let r = u.report();
                    (r.pacing_bps.unwrap_or(0.0) / 1e6, r.yielding)
                }
                _ => (0.0, false),
            };
            let parents: Vec<i64> = state
                .parents()
                .iter()
                .map(|p| p.map_or(-1, |id| index_of(&id) as i64))
                .collect();
            eprintln!(
                "DUMP {i} up {:.1}x household {} pacing {pacing:.2} Mbit/s yielding {yielding} children {} parents {parents:?} depths {:?} backlog {} ms",
                node.upload_bps / (self.cfg.bitrate_kbps as f64 * 1000.0),
                node.household
                    .as_ref()
                    .map_or("none", |h| if h.is_on() { "on" } else { "off" }),
                state.children(),
                state.depths(),
                node.router.as_ref().map_or(0, |r| r.backlog_us(self.now) / 1000)
            );
        }
    }

    fn tick(&mut self, n: usize) {
        let now = self.instant();
        let node = &mut self.nodes[n];
        node.sender.poll(now);
        // The core plans children with what the uplink was seen to carry.
        if let (Role::Honest(state), Sender::Controlled(_)) = (&mut node.role, &node.sender) {
            state.set_upload_capacity(node.sender.plan_bps());
            if node.measured_us.is_none() && node.sender.measured() {
                node.measured_us = Some(self.now);
            }
            if n != SOURCE
                && let Some(read) = node.sender.queue()
            {
                let routers = node.router.as_ref().map_or(0, |r| r.backlog_us(self.now));
                node.queue_reads.add(read.as_micros() as u64, routers);
            }
        }
        if self.trace == Some(n) && self.now % 500_000 < TICK_US {
            let node = &self.nodes[n];
            let backlog = node.router.as_ref().map_or(0, |r| r.backlog_us(self.now) / 1000);
            eprintln!(
                "t {:.1} expired {} data {} control {} padding {} backlog {backlog} ms children {} {}",
                self.now as f64 / 1e6,
                node.uplink.expired,
                node.sent_data,
                node.sent_control,
                node.sent_padding,
                match &node.role {
                    Role::Honest(s) => s.children(),
                    _ => 0,
                },
                node.sender.describe()
            );
        }
        if n == SOURCE && self.dump_at_us.is_some_and(|t| self.now / TICK_US == t / TICK_US) {
            self.dump_trees();
        }
        self.keep_alive(n);
        match &mut self.nodes[n].role {
            Role::Honest(_) => self.feed(n, Event::Tick),
            Role::Evil(evil) => {
                let out = evil.tick();
                self.evil_out(n, out);
            }
        }
    }

    /// Puts work in a node's inbox for its next slice on the shared CPU.
    fn give_work(&mut self, n: usize, item: Item) {
        self.nodes[n].inbox.push(item);
        if !self.nodes[n].on_cpu {
            self.queue_for_cpu(n);
            self.run_cpu();
        }
    }

    fn queue_for_cpu(&mut self, n: usize) {
        self.nodes[n].on_cpu = true;
        if let Some(cpu) = &mut self.cpu {
            cpu.wake(n);
        }
    }

    /// Gives free cores to queued nodes; each takes all its waiting work.
    fn run_cpu(&mut self) {
        let Some(cpu) = &mut self.cpu else { return };
        while let Some(n) = cpu.dispatch() {
            let node = &mut self.nodes[n];
            if !node.online {
                // Gone while it waited: a killed process takes no CPU.
                node.inbox.clear();
                node.on_cpu = false;
                cpu.release();
                continue;
            }
            let items = std::mem::take(&mut node.inbox);
            let mut work = Work::default();
            for item in &items {
                match item {
                    Item::Arrive {
                        payload: Payload::Chunk(..),
                        ..
                    } => work.chunks += 1,
                    Item::Arrive {
                        payload: Payload::Control(messages),
                        ..
                    } => work.messages += messages.len() as u64,
                    Item::Tick
                    | Item::Arrive {
                        payload: Payload::Padding | Payload::Ping,
                        ..
                    } => {}
                }
            }
            let (cost, held) = cpu.slice(work);
            node.cpu_us += cost;
            self.queue.push(self.now + held, Ev::Ran { node: n, items });
        }
    }

    fn neighbour_up(&mut self, node: usize, peer: usize, addr: SocketAddr, outbound: bool) {
        match &mut self.nodes[node].role {
            Role::Honest(_) => self.feed(
                node,
                Event::NeighbourUp {
                    id: node_id(peer),
                    addr,
                    listen: vec![addr],
                    outbound,
                },
            ),
            Role::Evil(evil) => {
                let out = evil.up(peer);
                self.evil_out(node, out);
            }
        }
    }

    fn leave(&mut self, n: usize) {
        self.nodes[n].online = false;
        self.nodes[n].left_us = Some(self.now);
        let peers: Vec<usize> = self
            .links
            .iter()
            .filter(|(a, b)| *a == n || *b == n)
            .map(|(a, b)| if *a == n { *b } else { *a })
            .collect();
        for p in peers {
            self.links.remove(&(n.min(p), n.max(p)));
            let detect = self.cfg.detect_ms * 1000;
            self.schedule(self.now + detect, Ev::Down { node: p, peer: n });
        }
    }

    fn dial(&mut self, from: usize, addr: SocketAddr) {
        match self.by_addr.get(&addr).copied() {
            Some(to) if to != from => {
                let rtt = self.cfg.rtt_ms * 1000;
                self.schedule(self.now + rtt, Ev::Connect { from, to });
            }
            _ => self.schedule(self.now + 1_000_000, Ev::DialFailed { node: from, addr }),
        }
    }

    /// Hands an event to an honest node's `State` and carries out what it answers.
    fn feed(&mut self, n: usize, event: Event) {
        let now = self.instant();
        let Role::Honest(state) = &mut self.nodes[n].role else {
            return;
        };
        let startup_before = state.startup();
        self.actions.extend(state.handle(event, now));
        if startup_before.is_none() && state.startup().is_some() {
            self.nodes[n].startup_us = Some(self.now);
        }
        let mut actions = std::mem::take(&mut self.actions);
        drive(actions.drain(..), &mut NodeIo { sim: self, n });
        self.actions = actions;
        // Sent after the handler returns, as a real event loop would: what it queued together
        // competes for the link together.
        self.transmit(n);
    }

    fn close(&mut self, n: usize, peer: usize) {
        if self.links.remove(&(n.min(peer), n.max(peer))) {
            self.nodes[n].uplink.forget(peer);
            self.nodes[n].sender.forget(peer as u64);
            let delay = self.one_way_us();
            self.schedule(self.now + delay, Ev::Down { node: peer, peer: n });
        }
    }

    fn evil_out(&mut self, n: usize, out: Vec<(usize, Payload)>) {
        for (to, payload) in out {
            let bytes = match &payload {
                Payload::Control(messages) => messages.iter().map(|m| self.frame_len(m)).sum(),
                Payload::Chunk(c, _) => c.encoded_len(),
                Payload::Padding | Payload::Ping => 0,
            };
            self.enqueue(n, to, payload, bytes, u64::MAX);
        }
        self.transmit(n);
        if let Role::Evil(evil) = &mut self.nodes[n].role {
            for addr in evil.take_dials() {
                self.dial(n, addr);
            }
        }
    }
}
