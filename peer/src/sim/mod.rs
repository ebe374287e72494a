//! The deterministic swarm simulator behind `shoal-sim`: the same `State` code as the real
//! peer, on virtual time, over a network model with per-link latency and jitter, per-packet
//! loss and retransmission, and an upload cap on every byte a node sends. Churn, hostile
//! peers and late joiners included. Metrics are observed here, not reported by the peers.

mod calendar;
mod cpu;
mod encoder;
mod evil;
mod uplink;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shoal_proto::{Message, NodeId};

use crate::state::{self, Action, Event, Reject, State};
use calendar::Calendar;
pub use cpu::CpuConfig;
use cpu::{Cpu, Work};
use encoder::Encoder;
use evil::Evil;
use uplink::{PACKET_BYTES, Payload, Uplink};

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub peers: usize,
    pub duration_s: u64,
    pub bitrate_kbps: u64,
    pub rtt_ms: u64,
    pub jitter_ms: u64,
    pub loss: f64,
    pub churn_per_min: f64,
    pub malicious: f64,
    /// (share of peers, upload as a multiple of the bitrate).
    pub upload_mix: Vec<(f64, f64)>,
    pub source_upload_x: f64,
    /// Peers' configs leave their upload unset (their links still have `upload_mix`'s rate).
    pub upload_unknown: bool,
    pub deadline_ms: u64,
    pub seed: u64,
    pub fps: u64,
    pub segment_ms: u64,
    /// Peers join spread over the first this-many seconds.
    pub join_spread_s: u64,
    /// How long a vanished neighbour takes to notice (the nodes' QUIC idle timeout).
    pub detect_ms: u64,
    /// Every node shares this machine's cores (None: each has its own).
    pub cpu: Option<CpuConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            peers: 100,
            duration_s: 120,
            bitrate_kbps: 2000,
            rtt_ms: 50,
            jitter_ms: 10,
            loss: 0.0,
            churn_per_min: 0.0,
            malicious: 0.0,
            upload_mix: vec![(0.3, 0.5), (0.5, 2.0), (0.2, 5.0)],
            source_upload_x: 5.0,
            upload_unknown: false,
            deadline_ms: 3000,
            seed: 1,
            fps: 30,
            segment_ms: 1000,
            join_spread_s: 10,
            detect_ms: crate::transport::IDLE_TIMEOUT.as_millis() as u64,
            cpu: None,
        }
    }
}

/// Parses `0.3:0.5,0.5:2,0.2:5`.
pub fn parse_upload_mix(s: &str) -> Result<Vec<(f64, f64)>, String> {
    let mix: Vec<(f64, f64)> = s
        .split(',')
        .map(|part| {
            let (share, multiple) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not share:multiple"))?;
            Ok((
                share.trim().parse().map_err(|_| format!("bad share {share:?}"))?,
                multiple
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad multiple {multiple:?}"))?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let total: f64 = mix.iter().map(|m| m.0).sum();
    if mix.is_empty() || (total - 1.0).abs() > 0.01 || mix.iter().any(|m| m.0 < 0.0 || m.1 < 0.0) {
        return Err(format!(
            "upload mix shares must be ≥ 0 and add up to 1 (they add up to {total})"
        ));
    }
    Ok(mix)
}

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
    upload_bps: f64,
    uplink: Uplink,
    sent_data: u64,
    sent_control: u64,
    /// Chunks emitted after its startup that it held within the deadline.
    on_time: u64,
    /// What waits for a core (only with a shared CPU).
    inbox: Vec<Item>,
    /// Queued for a core or running on one: new work waits for the next slice.
    on_cpu: bool,
    cpu_us: f64,
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
    stream_bytes: u64,
    latency_ms: Vec<u64>,
    delivered: u64,
    useful_data: u64,
    duplicate_data: u64,
    dup_from_parent: u64,
    forged_delivered: u64,
    actions: Vec<Action>,
    scratch: BytesMut,
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
            stream_bytes: 0,
            latency_ms: vec![0; HISTOGRAM_MS + 1],
            delivered: 0,
            useful_data: 0,
            duplicate_data: 0,
            dup_from_parent: 0,
            forged_delivered: 0,
            actions: Vec::new(),
            scratch: BytesMut::new(),
            cpu: cfg.cpu.clone().map(Cpu::new),
            cfg,
        };
        let bitrate = sim.cfg.bitrate_kbps as f64 * 1000.0;
        sim.add_node(bitrate * sim.cfg.source_upload_x, false, true);
        for _ in 0..sim.cfg.peers {
            let join = sim.rng.random_range(0..=sim.cfg.join_spread_s * 1_000_000);
            let index = sim.spawn_peer();
            sim.schedule(join, Ev::Join(index));
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
        self.add_node(bitrate * multiple, evil, false)
    }

    fn add_node(&mut self, upload_bps: f64, evil: bool, source: bool) -> usize {
        let index = self.nodes.len();
        let addr = addr_of(index);
        let config = state::Config {
            source,
            upload_bps: (source || !self.cfg.upload_unknown).then_some(upload_bps as u64),
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
            upload_bps,
            uplink: Uplink::new(upload_bps),
            sent_data: 0,
            sent_control: 0,
            on_time: 0,
            inbox: Vec::new(),
            on_cpu: false,
            cpu_us: 0.0,
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

    fn one_way_us(&mut self) -> u64 {
        let jitter = if self.cfg.jitter_ms > 0 {
            self.rng.random_range(0..=self.cfg.jitter_ms * 1000)
        } else {
            0
        };
        self.cfg.rtt_ms * 500 + jitter
    }

    pub fn run(mut self) -> Value {
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
            Ev::TxDone(n) => {
                self.nodes[n].uplink.busy = false;
                self.transmit(n);
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
                    match &mut self.nodes[node].role {
                        Role::Honest(_) => self.feed(node, Event::NeighbourDown { id: node_id(peer) }),
                        Role::Evil(evil) => evil.down(peer),
                    }
                }
            }
            Ev::Close { node, peer } => self.close(node, peer),
            Ev::Join(n) => {
                self.nodes[n].online = true;
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

    fn tick(&mut self, n: usize) {
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
                    Item::Tick => {}
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
        for action in actions.drain(..) {
            match action {
                Action::Send { to, msg } => {
                    let bytes = self.frame_len(&msg);
                    self.enqueue(n, index_of(&to), Payload::Control(vec![msg]), bytes, u64::MAX);
                }
                Action::Push { to, chunk, deadline } => {
                    let deadline_us = deadline.saturating_duration_since(self.base).as_micros() as u64;
                    let bytes = chunk.encoded_len();
                    self.enqueue(n, index_of(&to), Payload::Chunk(chunk, false), bytes, deadline_us);
                }
                Action::Deliver(chunk) => self.observe_delivery(n, chunk.header.timestamp_us),
                Action::Dial(addr) => self.dial(n, addr),
                Action::Disconnect { id, reason } => {
                    let peer = index_of(&id);
                    if matches!(reason, "full" | "duplicate") {
                        // A polite close: what was queued (addresses to try) goes out first.
                        let delay = self.cfg.rtt_ms * 1000 + 50_000;
                        self.schedule(self.now + delay, Ev::Close { node: n, peer });
                    } else {
                        self.close(n, peer);
                    }
                }
            }
        }
        self.actions = actions;
        // Sent after the handler returns, as a real event loop would: what it queued together
        // competes for the link together.
        self.transmit(n);
    }

    /// Bytes `msg` takes on the wire, encoded into a reused buffer.
    fn frame_len(&mut self, msg: &Message) -> usize {
        self.scratch.clear();
        msg.encode_frame(&mut self.scratch);
        self.scratch.len()
    }

    fn close(&mut self, n: usize, peer: usize) {
        if self.links.remove(&(n.min(peer), n.max(peer))) {
            self.nodes[n].uplink.forget(peer);
            let delay = self.one_way_us();
            self.schedule(self.now + delay, Ev::Down { node: peer, peer: n });
        }
    }

    fn observe_delivery(&mut self, n: usize, timestamp_us: u64) {
        let node = &mut self.nodes[n];
        let emitted_at = timestamp_us.saturating_sub(1_000_000);
        if emitted_at < node.joined_us {
            return; // back-fill of what was sent before it joined
        }
        let latency_us = self.now.saturating_sub(emitted_at);
        self.delivered += 1;
        self.latency_ms[((latency_us / 1000) as usize).min(HISTOGRAM_MS)] += 1;
        if node.startup_us.is_some_and(|s| emitted_at >= s) && latency_us <= self.cfg.deadline_ms * 1000 {
            node.on_time += 1;
        }
    }

    fn enqueue(&mut self, from: usize, to: usize, payload: Payload, bytes: usize, deadline: u64) {
        if !self.links.contains(&(from.min(to), from.max(to))) {
            return;
        }
        self.nodes[from].uplink.push(to, payload, bytes, deadline);
    }

    /// Starts the next transmission on `n`'s uplink if it is idle.
    fn transmit(&mut self, n: usize) {
        if self.nodes[n].uplink.busy || !self.nodes[n].online {
            return;
        }
        let Some(q) = self.nodes[n].uplink.pop(self.now) else {
            return;
        };
        // Every lost packet is sent again (costing upload) after about an RTT.
        let packets = q.bytes.div_ceil(PACKET_BYTES);
        let mut resent = 0usize;
        let mut delay = 0u64;
        if self.cfg.loss > 0.0 {
            for _ in 0..packets {
                let mut tries = 0u64;
                while self.rng.random::<f64>() < self.cfg.loss && tries < 8 {
                    tries += 1;
                }
                resent += tries as usize;
                delay = delay.max(tries * (self.cfg.rtt_ms * 1000 * 5 / 4 + 1000));
            }
        }
        let wire = q.bytes + resent * PACKET_BYTES.min(q.bytes);
        let tx = self.nodes[n].uplink.tx_us(wire);
        match &q.payload {
            Payload::Chunk(..) => self.nodes[n].sent_data += wire as u64,
            Payload::Control(_) => self.nodes[n].sent_control += wire as u64,
        }
        self.nodes[n].uplink.busy = true;
        self.schedule(self.now + tx, Ev::TxDone(n));
        let arrive = self.now + tx + self.one_way_us() + delay;
        self.schedule(
            arrive,
            Ev::Arrive {
                to: q.to,
                from: n,
                payload: q.payload,
            },
        );
    }

    fn arrive(&mut self, to: usize, from: usize, payload: Payload) {
        if !self.nodes[to].online || !self.links.contains(&(from.min(to), from.max(to))) {
            return;
        }
        match &mut self.nodes[to].role {
            Role::Evil(evil) => {
                let out = evil.receive(from, &payload);
                self.evil_out(to, out);
            }
            Role::Honest(state) => match payload {
                Payload::Control(messages) => {
                    for msg in messages {
                        self.feed(
                            to,
                            Event::Control {
                                from: node_id(from),
                                msg,
                            },
                        );
                    }
                }
                // The driver verifies signatures before the core sees a chunk.
                Payload::Chunk(_, true) => self.feed(
                    to,
                    Event::Rejected {
                        from: node_id(from),
                        reason: Reject::BadSignature,
                    },
                ),
                Payload::Chunk(chunk, false) => {
                    let held = state.window().contains(chunk.header.epoch, chunk.header.seq);
                    if held {
                        self.duplicate_data += chunk.payload.len() as u64;
                        let s = (chunk.header.seq % u64::from(state.config().stripes)) as usize;
                        if state.parents().get(s).copied().flatten() == Some(node_id(from)) {
                            self.dup_from_parent += chunk.payload.len() as u64;
                        }
                    } else {
                        self.useful_data += chunk.payload.len() as u64;
                    }
                    self.feed(
                        to,
                        Event::Chunk {
                            from: node_id(from),
                            chunk,
                        },
                    );
                }
            },
        }
    }

    fn evil_out(&mut self, n: usize, out: Vec<(usize, Payload)>) {
        for (to, payload) in out {
            let bytes = match &payload {
                Payload::Control(messages) => messages.iter().map(|m| self.frame_len(m)).sum(),
                Payload::Chunk(c, _) => c.encoded_len(),
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

    fn report(&self, wall: Duration) -> Value {
        let end = self.cfg.duration_s * 1_000_000;
        let deadline = self.cfg.deadline_ms * 1000;
        let (mut expected, mut on_time, mut startups) = (0u64, 0u64, Vec::new());
        let mut max_peer_upload: f64 = 0.0;
        let bytes_per_us = self.stream_bytes as f64 / end.max(1) as f64;
        for node in self.nodes.iter().skip(1) {
            if matches!(node.role, Role::Evil(_)) || (node.joined_us == 0 && !node.online && node.left_us.is_none()) {
                continue;
            }
            let online_until = node.left_us.unwrap_or(end);
            if std::env::var_os("SHOAL_SIM_DEBUG").is_some()
                && let Role::Honest(state) = &node.role
            {
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
                max_peer_upload =
                    max_peer_upload.max((node.sent_data + node.sent_control) as f64 / (bytes_per_us * online_s));
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
        let mut report = json!({
            "peers": self.cfg.peers,
            "duration_s": self.cfg.duration_s,
            "delivery_ratio": round(on_time as f64 / expected.max(1) as f64, 5),
            "latency_ms": {
                "p50": self.histogram_pct(0.50), "p95": self.histogram_pct(0.95),
                "p99": self.histogram_pct(0.99), "max": self.histogram_pct(1.0),
            },
            "startup_ms": {"p50": pct(&startups, 0.5), "p95": pct(&startups, 0.95)},
            "source_upload_ratio": round((source.sent_data + source.sent_control) as f64 / self.stream_bytes.max(1) as f64, 3),
            "max_peer_upload_ratio": round(max_peer_upload, 3),
            "duplicate_ratio": round(self.duplicate_data as f64 / self.useful_data.max(1) as f64, 4),
            "control_overhead_ratio": round(control_sent as f64 / data_sent.max(1) as f64, 4),
            "forged_delivered": self.forged_delivered,
            "duplicate_from_parent_ratio": round(self.dup_from_parent as f64 / self.useful_data.max(1) as f64, 4),
            "expired_in_queue": self.nodes.iter().map(|n| n.uplink.expired).sum::<u64>(),
            "nodes_total": self.nodes.len() - 1,
            "source_upload_bps": source.upload_bps as u64,
            "wall_s": round(wall.as_secs_f64(), 2),
        });
        if let Some(cpu) = &self.cpu {
            let peers = self.nodes.iter().skip(1).filter(|n| n.joined_us > 0 || n.online);
            let (busy, seconds) = peers.fold((0.0, 0.0), |(b, s), n| {
                (
                    b + n.cpu_us,
                    s + n.left_us.unwrap_or(end).saturating_sub(n.joined_us) as f64 / 1e6,
                )
            });
            report["cpu"] = cpu.report(end, busy, seconds);
        }
        report
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

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
