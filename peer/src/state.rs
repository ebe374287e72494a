//! The swarm's sans-IO core: one `State` per node, fed `Event`s with the current time and
//! answering with `Action`s. No sockets, clocks or tasks: the quinn node, the simulator and
//! the unit tests all drive this same code.
//!
//! Dissemination today: every new verified chunk is pushed at once to each neighbour not
//! known to hold it; new holdings are announced (HAVE) in small batches; gaps are pulled
//! (REQUEST) from a neighbour that announced them once a push had time to arrive; a joining
//! node back-fills the last few seconds so it can start at a whole keyframe segment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_proto::message::{SeqRange, ranges_of};
use shoal_proto::{Chunk, Message, NodeId};

use crate::window::{Admit, Window};

#[derive(Clone, Debug)]
pub struct Config {
    /// How much stream a node keeps, judged by broadcaster timestamps.
    pub window: Duration,
    /// How often new holdings are announced to neighbours.
    pub have_interval: Duration,
    /// How long a gap may stay open before it is pulled from a neighbour that has it.
    pub repair_after: Duration,
    /// How long to wait for a requested chunk before asking another neighbour.
    pub request_timeout: Duration,
    /// Chunks to back-fill on joining (≈ 3 s at 30 fps): enough for one whole segment.
    pub join_backfill: u64,
    /// A pushed chunk older than this (behind the newest) is dropped instead of sent late.
    pub push_deadline: Duration,
    /// How long a neighbour that sent forged or malformed data stays banned.
    pub ban_for: Duration,
    /// Emit `Action::Deliver` for every new chunk (the gateway wants them; a relay does not).
    pub deliver: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: Duration::from_secs(30),
            have_interval: Duration::from_millis(200),
            repair_after: Duration::from_millis(250),
            request_timeout: Duration::from_millis(600),
            join_backfill: 90,
            push_deadline: Duration::from_secs(3),
            ban_for: Duration::from_secs(600),
            deliver: false,
        }
    }
}

/// Why a chunk or message from a neighbour was refused before reaching the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    BadSignature,
    Malformed,
    Oversized,
    Protocol,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::BadSignature => "bad_signature",
            Reject::Malformed => "malformed",
            Reject::Oversized => "oversized",
            Reject::Protocol => "protocol",
        }
    }
}

#[derive(Debug)]
pub enum Event {
    NeighbourUp {
        id: NodeId,
        addr: SocketAddr,
    },
    NeighbourDown {
        id: NodeId,
    },
    Control {
        from: NodeId,
        msg: Message,
    },
    /// A chunk whose signature the driver has verified.
    Chunk {
        from: NodeId,
        chunk: Chunk,
    },
    Rejected {
        from: NodeId,
        reason: Reject,
    },
    /// A chunk this node produced (the broadcaster).
    Publish(Chunk),
    Tick,
}

#[derive(Debug, Clone)]
pub enum Action {
    Send {
        to: NodeId,
        msg: Message,
    },
    /// Send a chunk on its own stream; drop it instead if not sent by `deadline`.
    Push {
        to: NodeId,
        chunk: Chunk,
        deadline: Instant,
    },
    /// A new verified chunk for the local consumer.
    Deliver(Chunk),
    Disconnect {
        id: NodeId,
        reason: &'static str,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub verified: u64,
    pub duplicate: u64,
    pub late: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub requests_sent: u64,
    pub requests_served: u64,
    pub banned: u64,
}

#[derive(Debug)]
struct Neighbour {
    addr: SocketAddr,
    /// Seqs of the live epoch this neighbour holds (sent us, announced, or was sent).
    has: BTreeSet<u64>,
}

pub struct State {
    me: NodeId,
    config: Config,
    window: Window,
    neighbours: HashMap<NodeId, Neighbour>,
    banned: HashMap<NodeId, Instant>,
    /// Seqs stored since the last HAVE round.
    unannounced: Vec<u64>,
    last_have: Option<Instant>,
    /// Lowest seq of the live epoch this node wants; nothing older is repaired.
    floor: Option<u64>,
    backfilled: bool,
    /// Gap → when it was first seen open.
    missing: BTreeMap<u64, Instant>,
    /// Seq → (neighbour asked, when).
    requested: HashMap<u64, (NodeId, Instant)>,
    started: Instant,
    startup: Option<Duration>,
    counters: Counters,
    actions: Vec<Action>,
}

/// Most seqs one REQUEST may make a node send: bounds what a request flood costs.
const MAX_SERVED_PER_REQUEST: usize = 512;
/// Gaps further back than this behind the newest chunk are not chased.
const MAX_REPAIR_SPAN: u64 = 512;

impl State {
    pub fn new(me: NodeId, config: Config, now: Instant) -> Self {
        State {
            me,
            window: Window::new(config.window),
            config,
            neighbours: HashMap::new(),
            banned: HashMap::new(),
            unannounced: Vec::new(),
            last_have: None,
            floor: None,
            backfilled: false,
            missing: BTreeMap::new(),
            requested: HashMap::new(),
            started: now,
            startup: None,
            counters: Counters::default(),
            actions: Vec::new(),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Time from creation until a whole keyframe segment was held.
    pub fn startup(&self) -> Option<Duration> {
        self.startup
    }

    pub fn neighbours(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.neighbours.iter().map(|(id, n)| (*id, n.addr))
    }

    pub fn is_banned(&self, id: &NodeId, now: Instant) -> bool {
        self.banned.get(id).is_some_and(|until| *until > now)
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> std::vec::Drain<'_, Action> {
        match event {
            Event::NeighbourUp { id, addr } => self.on_neighbour_up(id, addr, now),
            Event::NeighbourDown { id } => {
                self.neighbours.remove(&id);
                self.requested.retain(|_, (asked, _)| *asked != id);
            }
            Event::Control { from, msg } => self.on_control(from, msg, now),
            Event::Chunk { from, chunk } => self.on_chunk(Some(from), chunk, now),
            Event::Rejected { from, reason } => self.on_rejected(from, reason, now),
            Event::Publish(chunk) => self.on_chunk(None, chunk, now),
            Event::Tick => self.on_tick(now),
        }
        self.actions.drain(..)
    }

    fn on_neighbour_up(&mut self, id: NodeId, addr: SocketAddr, now: Instant) {
        if id == self.me || self.is_banned(&id, now) {
            self.actions.push(Action::Disconnect {
                id,
                reason: "banned",
            });
            return;
        }
        self.neighbours.insert(
            id,
            Neighbour {
                addr,
                has: BTreeSet::new(),
            },
        );
        // Tell the newcomer what we hold, so it can back-fill from us.
        if let Some(epoch) = self.window.live_epoch() {
            let ranges = ranges_of(self.window.seqs(epoch));
            if !ranges.is_empty() {
                self.actions.push(Action::Send {
                    to: id,
                    msg: Message::Have { epoch, ranges },
                });
            }
        }
    }

    fn on_control(&mut self, from: NodeId, msg: Message, now: Instant) {
        if !self.neighbours.contains_key(&from) {
            return;
        }
        match msg {
            Message::Have { epoch, ranges } => self.on_have(from, epoch, &ranges, now),
            Message::Request { epoch, ranges } => self.on_request(from, epoch, &ranges, now),
            Message::Goodbye { .. } => {
                self.actions.push(Action::Disconnect {
                    id: from,
                    reason: "goodbye",
                });
            }
            // HELLO is the driver's; CANCEL and PEX are not acted on by this core yet.
            _ => {}
        }
    }

    fn on_have(&mut self, from: NodeId, epoch: u64, ranges: &[SeqRange], now: Instant) {
        let live = self.window.live_epoch();
        if live.is_some_and(|l| l != epoch) {
            // Announcements for an epoch we have not seen yet are only useful once we have.
            return;
        }
        let Some(neighbour) = self.neighbours.get_mut(&from) else {
            return;
        };
        let mut newest = None;
        for r in ranges {
            neighbour.has.extend(r.iter());
            newest = newest.max(r.iter().last());
        }
        if live.is_none()
            && let Some(newest) = newest
            && !self.backfilled
        {
            self.backfill(from, epoch, newest, now);
        }
    }

    /// First contact with the stream: pull the last few seconds so a whole segment arrives.
    fn backfill(&mut self, from: NodeId, epoch: u64, newest: u64, now: Instant) {
        self.backfilled = true;
        let start = (newest + 1).saturating_sub(self.config.join_backfill);
        self.floor = Some(self.floor.map_or(start, |f| f.min(start)));
        let seqs: Vec<u64> = (start..=newest)
            .filter(|s| !self.window.contains(epoch, *s))
            .collect();
        for seq in &seqs {
            self.requested.insert(*seq, (from, now));
        }
        self.counters.requests_sent += 1;
        self.actions.push(Action::Send {
            to: from,
            msg: Message::Request {
                epoch,
                ranges: ranges_of(seqs),
            },
        });
    }

    fn on_request(&mut self, from: NodeId, epoch: u64, ranges: &[SeqRange], now: Instant) {
        let deadline = now + self.config.push_deadline;
        let mut served = 0;
        for seq in ranges
            .iter()
            .flat_map(SeqRange::iter)
            .take(MAX_SERVED_PER_REQUEST)
        {
            if let Some(chunk) = self.window.get(epoch, seq) {
                served += 1;
                self.actions.push(Action::Push {
                    to: from,
                    chunk: chunk.clone(),
                    deadline,
                });
            }
        }
        if let Some(n) = self.neighbours.get_mut(&from) {
            for seq in ranges
                .iter()
                .flat_map(SeqRange::iter)
                .take(MAX_SERVED_PER_REQUEST)
            {
                n.has.insert(seq);
            }
        }
        self.counters.requests_served += served;
    }

    fn on_chunk(&mut self, from: Option<NodeId>, chunk: Chunk, now: Instant) {
        let (epoch, seq) = (chunk.header.epoch, chunk.header.seq);
        let previous_epoch = self.window.live_epoch();
        match self.window.admit(&chunk) {
            Admit::Late => {
                self.counters.late += 1;
                return;
            }
            Admit::Duplicate => {
                self.counters.duplicate += 1;
                self.mark_has(from, seq);
                return;
            }
            Admit::Stored => {}
        }
        if from.is_some() {
            self.counters.verified += 1;
        }
        if self.window.live_epoch() != previous_epoch {
            self.on_new_epoch(seq);
        }
        if self.window.live_epoch() != Some(epoch) {
            // A straggler from an older epoch: keep it for repair, but don't spread it.
            return;
        }
        self.missing.remove(&seq);
        self.requested.remove(&seq);
        self.note_gaps(seq, now);
        self.mark_has(from, seq);
        self.unannounced.push(seq);
        if self.startup.is_none() && self.window.holds_whole_segment() {
            self.startup = Some(now.saturating_duration_since(self.started));
        }

        let age_us = self
            .window
            .newest_timestamp_us()
            .saturating_sub(chunk.header.timestamp_us);
        let Some(left) = self
            .config
            .push_deadline
            .checked_sub(Duration::from_micros(age_us))
        else {
            return;
        };
        let deadline = now + left;
        for (id, n) in &mut self.neighbours {
            if Some(*id) != from && n.has.insert(seq) {
                self.actions.push(Action::Push {
                    to: *id,
                    chunk: chunk.clone(),
                    deadline,
                });
            }
        }
        if self.config.deliver {
            self.actions.push(Action::Deliver(chunk));
        }
    }

    fn on_new_epoch(&mut self, first_seq: u64) {
        for n in self.neighbours.values_mut() {
            n.has.clear();
        }
        self.missing.clear();
        self.requested.clear();
        self.unannounced.clear();
        self.floor = Some(first_seq);
    }

    fn mark_has(&mut self, from: Option<NodeId>, seq: u64) {
        if let Some(n) = from.and_then(|id| self.neighbours.get_mut(&id)) {
            n.has.insert(seq);
        }
    }

    /// Records seqs between the floor and `seq` that are not held yet as gaps.
    fn note_gaps(&mut self, seq: u64, now: Instant) {
        let Some(epoch) = self.window.live_epoch() else {
            return;
        };
        let floor = *self.floor.get_or_insert(seq);
        let low = floor.max(seq.saturating_sub(MAX_REPAIR_SPAN));
        let newest = self.window.newest_seq(epoch).unwrap_or(seq);
        let gap_start = self
            .missing
            .last_key_value()
            .map_or(low, |(s, _)| (s + 1).max(low));
        for s in gap_start..newest {
            if !self.window.contains(epoch, s) {
                self.missing.entry(s).or_insert(now);
            }
        }
    }

    fn on_rejected(&mut self, from: NodeId, reason: Reject, now: Instant) {
        *self.counters.rejected.entry(reason.as_str()).or_default() += 1;
        // Honest peers verify before forwarding, so any forged or malformed data is proof
        // of a bad peer: disconnect and ban it by node ID.
        self.banned.insert(from, now + self.config.ban_for);
        self.counters.banned += 1;
        self.neighbours.remove(&from);
        self.actions.push(Action::Disconnect {
            id: from,
            reason: reason.as_str(),
        });
    }

    fn on_tick(&mut self, now: Instant) {
        self.banned.retain(|_, until| *until > now);
        if self
            .last_have
            .is_none_or(|t| now.duration_since(t) >= self.config.have_interval)
        {
            self.last_have = Some(now);
            self.announce();
        }
        self.repair(now);
    }

    fn announce(&mut self) {
        let Some(epoch) = self.window.live_epoch() else {
            return;
        };
        if self.unannounced.is_empty() {
            return;
        }
        self.unannounced.sort_unstable();
        for (id, n) in &self.neighbours {
            let seqs = self
                .unannounced
                .iter()
                .copied()
                .filter(|s| !n.has.contains(s));
            let ranges = ranges_of(seqs);
            if !ranges.is_empty() {
                self.actions.push(Action::Send {
                    to: *id,
                    msg: Message::Have { epoch, ranges },
                });
            }
        }
        self.unannounced.clear();
        // Forget what neighbours hold once it has left the window.
        if let Some(oldest) = self.window.seqs(epoch).next() {
            for n in self.neighbours.values_mut() {
                n.has = n.has.split_off(&oldest);
            }
        }
    }

    fn repair(&mut self, now: Instant) {
        let Some(epoch) = self.window.live_epoch() else {
            return;
        };
        let newest = self.window.newest_seq(epoch).unwrap_or(0);
        self.missing.retain(|s, _| *s + MAX_REPAIR_SPAN >= newest);
        let mut asks: HashMap<NodeId, Vec<u64>> = HashMap::new();
        for (&seq, &since) in &self.missing {
            if now.duration_since(since) < self.config.repair_after {
                continue;
            }
            if let Some((_, at)) = self.requested.get(&seq)
                && now.duration_since(*at) < self.config.request_timeout
            {
                continue;
            }
            let previous = self.requested.get(&seq).map(|(id, _)| *id);
            let holder = self
                .neighbours
                .iter()
                .filter(|(id, n)| n.has.contains(&seq) && Some(**id) != previous)
                .map(|(id, _)| *id)
                .min()
                .or(previous.filter(|p| self.neighbours.contains_key(p)));
            if let Some(holder) = holder {
                asks.entry(holder).or_default().push(seq);
                self.requested.insert(seq, (holder, now));
            }
        }
        for (to, seqs) in asks {
            self.counters.requests_sent += 1;
            self.actions.push(Action::Send {
                to,
                msg: Message::Request {
                    epoch,
                    ranges: ranges_of(seqs),
                },
            });
        }
    }
}

#[cfg(test)]
mod tests;
