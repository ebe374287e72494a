//! The swarm's sans-IO core: one `State` per node, fed `Event`s with the current time and
//! answering with `Action`s. No sockets, clocks or tasks: the quinn node, the simulator and
//! the unit tests all drive this same code.
//!
//! Dissemination: the stream is split into stripes, each pushed eagerly down its own tree
//! (`tree.rs`); every node announces what it holds to its neighbours in small batches
//! (HAVE) and pulls what its tree did not bring in time (REQUEST); neighbours come and go
//! through a bounded active set fed by peer exchange (`neighbours.rs`).

mod guard;
mod neighbours;
mod punch;
mod tree;
mod types;

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap as HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use shoal_proto::message::{SeqRange, ranges_of};
use shoal_proto::{Chunk, Message, NodeId};

pub use types::{Action, Config, Counters, DisconnectReason, Event, Reject, Verdict};

use crate::window::{Admit, Window};
use neighbours::Neighbour;
use tree::Stripe;

/// Most seqs one REQUEST may make a node send: bounds what a request flood costs.
const MAX_SERVED_PER_REQUEST: usize = 256;
/// Gaps further back than this behind the newest chunk are not chased.
const MAX_REPAIR_SPAN: u64 = 512;
/// A HAVE naming a chunk this close to our newest shows the sender is on the live stream.
const FRESH_SPAN: u64 = 64;
/// Chunks a joining node pulls at most to reach the start of the newest segment.
const MAX_BACKFILL: u64 = 256;
/// A stripe this many of its chunks behind the newest chunk held has stalled.
const STALLED_ROUNDS: u64 = 3;
/// Stream rate is measured over this much broadcaster time.
const RATE_SPAN_US: u64 = 2_000_000;

pub struct State {
    me: NodeId,
    config: Config,
    window: Window,
    rng: SmallRng,
    neighbours: HashMap<NodeId, Neighbour>,
    /// Known addresses not connected (node ID when known).
    passive: Vec<(Option<NodeId>, SocketAddr)>,
    dialling: HashMap<SocketAddr, Instant>,
    failed_dials: HashMap<SocketAddr, Instant>,
    banned: HashMap<NodeId, Instant>,
    stripes: Vec<Stripe>,
    /// (neighbour, stripe) → when it refused or failed as parent.
    cooldown: HashMap<(NodeId, u8), Instant>,
    status_dirty: bool,
    last_status: (Vec<u8>, usize),
    last_status_at: Option<Instant>,
    last_pex: Option<Instant>,
    last_rotation: Option<Instant>,
    /// Addresses given at start: asked again for peers when the neighbours feed us nothing.
    /// The public address the router forwards to this node, first in `config.listen`.
    mapped: Option<SocketAddr>,
    bootstrap: Vec<SocketAddr>,
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
    /// Address learnt by peer exchange → (the neighbour that told us, the node there).
    introduced: HashMap<SocketAddr, (NodeId, NodeId)>,
    /// Peers we are punching towards, since when.
    punching: HashMap<NodeId, Instant>,
    /// (broadcaster timestamp, bytes) of recent new chunks, for the stream rate.
    recent_bytes: VecDeque<(u64, usize)>,
    first_chunk_us: Option<u64>,
    /// Bytes this node may still spend serving REQUESTs (`None`: no cap to respect).
    repair_tokens: Option<f64>,
    repair_refilled: Option<Instant>,
    rate_bps: Option<f64>,
    last_new_chunk: Option<Instant>,
    /// When a neighbour last announced chunks newer than ours.
    last_news: Option<Instant>,
    started: Instant,
    startup: Option<Duration>,
    counters: Counters,
    actions: Vec<Action>,
}

impl State {
    pub fn new(me: NodeId, config: Config, seed: u64, now: Instant) -> Self {
        let stripes = (0..config.stripes.max(1)).map(|_| Stripe::default()).collect();
        State {
            me,
            window: Window::new(config.limits.window),
            rng: SmallRng::seed_from_u64(seed),
            neighbours: HashMap::default(),
            passive: Vec::new(),
            dialling: HashMap::default(),
            failed_dials: HashMap::default(),
            banned: HashMap::default(),
            stripes,
            cooldown: HashMap::default(),
            status_dirty: true,
            last_status: (Vec::new(), 0),
            last_status_at: None,
            last_pex: None,
            last_rotation: None,
            mapped: None,
            bootstrap: Vec::new(),
            unannounced: Vec::new(),
            last_have: None,
            floor: None,
            backfilled: false,
            missing: BTreeMap::new(),
            requested: HashMap::default(),
            introduced: HashMap::default(),
            punching: HashMap::default(),
            recent_bytes: VecDeque::new(),
            first_chunk_us: None,
            repair_tokens: None,
            repair_refilled: None,
            rate_bps: None,
            last_new_chunk: None,
            last_news: None,
            started: now,
            startup: None,
            counters: Counters::default(),
            config,
            actions: Vec::new(),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    pub fn config(&self) -> &Config {
        &self.config
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

    /// Parent per stripe (`None` where the stripe is orphaned).
    pub fn parents(&self) -> Vec<Option<NodeId>> {
        self.stripes.iter().map(|s| s.parent).collect()
    }

    /// Neighbours that are the source (depth 0 in a stripe, as they say).
    pub fn sources(&self) -> Vec<NodeId> {
        self.neighbours
            .iter()
            .filter(|(_, n)| n.depths.contains(&0))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Hop count from the source per stripe (255 where cut off).
    pub fn depths(&self) -> Vec<u8> {
        (0..self.stripes.len()).map(|s| self.depth(s)).collect()
    }

    pub fn children(&self) -> usize {
        self.stripes.iter().map(|s| s.children.len()).sum()
    }

    pub fn is_banned(&self, id: &NodeId, now: Instant) -> bool {
        self.banned.get(id).is_some_and(|until| *until > now)
    }

    /// The router now forwards `external` to this node (or no longer does): it heads the
    /// addresses this node tells others, and is never dialled as someone else's.
    pub fn set_mapped(&mut self, external: Option<SocketAddr>) {
        if let Some(old) = self.mapped.take() {
            self.config.listen.retain(|a| *a != old);
        }
        if let Some(addr) = external
            && !self.config.listen.contains(&addr)
        {
            self.config.listen.insert(0, addr);
            self.mapped = Some(addr);
        }
    }

    /// Adds addresses to dial (bootstrap peers, a ticket's addresses).
    pub fn add_peers(&mut self, addrs: &[SocketAddr]) {
        for addr in addrs {
            self.learn(std::slice::from_ref(addr));
            if !self.bootstrap.contains(addr) {
                self.bootstrap.push(*addr);
            }
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> std::vec::Drain<'_, Action> {
        match event {
            Event::NeighbourUp {
                id,
                addr,
                listen,
                outbound,
            } => self.on_neighbour_up(id, addr, listen, outbound, now),
            Event::NeighbourDown { id } => self.on_neighbour_down(id),
            Event::DialFailed { addr } => self.on_dial_failed(addr, now),
            Event::Control { from, msg } => self.on_control(from, msg, now),
            Event::Chunk { from, chunk } => self.on_chunk(Some(from), chunk, now),
            Event::Rejected { from, reason } => self.on_rejected(from, reason, now),
            Event::Publish(chunk) => self.on_chunk(None, chunk, now),
            Event::Tick => self.on_tick(now),
        }
        self.actions.drain(..)
    }

    fn on_control(&mut self, from: NodeId, msg: Message, now: Instant) {
        if let Err(reason) = self.police_control(from, &msg, now) {
            return self.on_rejected(from, reason, now);
        }
        let Some(n) = self.neighbours.get_mut(&from) else {
            return;
        };
        n.heard = Some(now);
        match msg {
            Message::Have { epoch, ranges } => self.on_have(from, epoch, &ranges, now),
            Message::Request { epoch, ranges } => self.on_request(from, epoch, &ranges, now),
            Message::Graft { stripe } => self.on_graft(from, stripe),
            Message::Prune { stripe } => self.on_prune(from, stripe, now),
            Message::Status {
                depths,
                upload_kbps,
                free_slots,
                epoch,
                segment_start,
            } => {
                if let Some(n) = self.neighbours.get_mut(&from) {
                    for (mine, theirs) in n.depths.iter_mut().zip(depths) {
                        *mine = theirs;
                    }
                    n.upload_kbps = upload_kbps;
                    n.free_slots = free_slots;
                    n.segment_start = segment_start.map(|s| (epoch, s));
                }
            }
            Message::Pex { peers } => self.on_pex(from, peers),
            Message::Introduce { target } => self.on_introduce(from, target),
            Message::Punch { peer, addrs } => self.on_punch(peer, &addrs, now),
            Message::Goodbye { .. } => self.evict(from, DisconnectReason::Goodbye),
            // HELLO is the driver's; CANCEL is not acted on by this core yet.
            _ => {}
        }
    }

    fn on_have(&mut self, from: NodeId, epoch: u64, ranges: &[SeqRange], now: Instant) {
        if self.window.live_epoch().is_some_and(|l| l != epoch) {
            // Another epoch: the broadcaster may have restarted. Once ours has gone quiet, a
            // neighbour announcing one is worth grafting to (what it pushes is verified like
            // anything else, and its first newer chunk moves us to the new epoch).
            if !self.stream_is_flowing(now)
                && let Some(n) = self.neighbours.get_mut(&from)
            {
                n.fresh = Some(now);
            }
            return;
        }
        let newest_held = self.window.newest_seq(epoch);
        if ranges
            .iter()
            .any(|r| newest_held.is_none_or(|n| r.start + u64::from(r.len) > n + 1))
        {
            self.last_news = Some(now);
        }
        // Fresh: it holds chunks near the live edge, so it is really on the stream.
        let fresh_from = newest_held.map_or(0, |n| n.saturating_sub(FRESH_SPAN));
        if ranges.iter().any(|r| r.start + u64::from(r.len) > fresh_from)
            && let Some(n) = self.neighbours.get_mut(&from)
        {
            n.fresh = Some(now);
        }
        let Some(neighbour) = self.neighbours.get_mut(&from) else {
            return;
        };
        for r in ranges {
            neighbour.has.insert_range(r.start, u64::from(r.len));
        }
    }

    /// First contact with the stream: pull from the start of the newest segment a neighbour
    /// holds, so playback can begin at a keyframe right away.
    /// From the strongest uploader among the neighbours that told us a segment start.
    fn maybe_backfill(&mut self, now: Instant) {
        if self.backfilled || self.config.source {
            return;
        }
        let Some((from, (epoch, start))) = self
            .neighbours
            .iter()
            .filter_map(|(id, n)| n.segment_start.map(|s| (*id, s, n.upload_kbps)))
            .max_by_key(|(id, _, up)| (*up, std::cmp::Reverse(*id)))
            .map(|(id, s, _)| (id, s))
        else {
            return;
        };
        if self.window.live_epoch().is_some_and(|l| l != epoch) {
            return;
        }
        self.backfilled = true;
        let newest = self
            .window
            .live_epoch()
            .and_then(|e| self.window.newest_seq(e))
            .unwrap_or(start + MAX_BACKFILL);
        let end = newest.min(start + MAX_BACKFILL);
        let seqs: Vec<u64> = (start..end).filter(|s| !self.window.contains(epoch, *s)).collect();
        self.floor = Some(self.floor.map_or(start, |f| f.min(start)));
        if seqs.is_empty() {
            return;
        }
        for seq in &seqs {
            // Gaps like any other: if the answer does not come, repair asks elsewhere.
            self.requested.insert(*seq, (from, now));
            self.missing.insert(*seq, now);
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
        // The source's upload is for new chunks: it repairs only the children it feeds.
        if self.config.source && !self.stripes.iter().any(|s| s.children.contains(&from)) {
            return;
        }
        let deadline = now + self.config.push_deadline;
        let mut served = 0;
        self.refill_repair_budget(now);
        for seq in ranges.iter().flat_map(SeqRange::iter).take(MAX_SERVED_PER_REQUEST) {
            if let Some(chunk) = self.window.get(epoch, seq) {
                // Repairs come out of what the children leave of the upload; past that the
                // requester times out and asks someone with room.
                if let Some(tokens) = &mut self.repair_tokens {
                    if *tokens < chunk.encoded_len() as f64 {
                        self.counters.requests_refused += 1;
                        break;
                    }
                    *tokens -= chunk.encoded_len() as f64;
                }
                served += 1;
                if let Some(n) = self.neighbours.get_mut(&from) {
                    n.has.insert(seq);
                }
                self.actions.push(Action::Push {
                    to: from,
                    chunk: chunk.clone(),
                    deadline,
                });
            }
        }
        self.counters.requests_served += served;
    }

    /// Tops up the bytes this node may spend on repairs: its capacity less what its children
    /// take and a tenth for control, over time, with a second's worth of burst.
    fn refill_repair_budget(&mut self, now: Instant) {
        let (Some(cap), Some(rate)) = (self.config.upload_bps, self.stream_bps()) else {
            self.repair_tokens = None; // uncapped, or not measured yet: no budget to keep
            return;
        };
        let children = self.stripes.iter().map(|s| s.children.len()).sum::<usize>() as f64;
        let spare_bps = (cap as f64 * 0.9 - children * rate / f64::from(self.config.stripes)).max(0.0);
        let elapsed = self
            .repair_refilled
            .map_or(1.0, |t| now.duration_since(t).as_secs_f64());
        self.repair_refilled = Some(now);
        let burst = spare_bps / 8.0;
        let tokens = self.repair_tokens.unwrap_or(burst);
        self.repair_tokens = Some((tokens + elapsed * spare_bps / 8.0).min(burst));
    }

    fn on_chunk(&mut self, from: Option<NodeId>, chunk: Arc<Chunk>, now: Instant) {
        if let Some(n) = from.and_then(|id| self.neighbours.get_mut(&id)) {
            n.heard = Some(now);
        }
        let (epoch, seq) = (chunk.header.epoch, chunk.header.seq);
        let previous_epoch = self.window.live_epoch();
        let admit = self.window.admit(&chunk);
        if let Some(from) = from {
            let verdict = match admit {
                Admit::Stored => Verdict::New,
                Admit::Duplicate => Verdict::Duplicate {
                    from_parent: self.stripes[self.stripe_of(seq)].parent == Some(from),
                },
                Admit::Late => Verdict::Late,
            };
            self.actions.push(Action::Judged {
                from,
                header: chunk.header,
                verdict,
            });
        }
        match admit {
            Admit::Late => {
                self.counters.late += 1;
                if let Some(from) = from
                    && let Err(reason) = self.police_stale(from, now)
                {
                    self.on_rejected(from, reason, now);
                }
                return;
            }
            Admit::Duplicate => {
                self.counters.duplicate += 1;
                self.counters.duplicate_bytes += chunk.encoded_len() as u64;
                self.mark_has(from, seq);
                return;
            }
            Admit::Stored => {}
        }
        match from {
            Some(_) => {
                self.counters.verified += 1;
                self.counters.verified_bytes += chunk.encoded_len() as u64;
            }
            None => {
                self.counters.published += 1;
                self.counters.published_bytes += chunk.encoded_len() as u64;
            }
        }
        if self.window.live_epoch() != previous_epoch {
            self.on_new_epoch(seq);
        }
        if self.window.live_epoch() != Some(epoch) {
            return; // a straggler from an older epoch: kept for repair, not spread
        }
        self.last_new_chunk = Some(now);
        self.note_rate(chunk.header.timestamp_us, chunk.payload.len());
        if let Some((asked, _)) = self.requested.remove(&seq)
            && let Some(n) = self.neighbours.get_mut(&asked)
        {
            n.unanswered = n.unanswered.saturating_sub(1);
        }
        self.missing.remove(&seq);
        let s = self.stripe_of(seq);
        let previous_newest = self.stripes[s].newest;
        self.note_gaps(seq, previous_newest, now);
        self.mark_has(from, seq);
        self.unannounced.push(seq);
        self.note_stripe_chunk(s, from, seq, now);
        if self.startup.is_none() && self.window.holds_whole_segment() {
            self.startup = Some(now.saturating_duration_since(self.started));
        }

        let age_us = self
            .window
            .newest_timestamp_us()
            .saturating_sub(chunk.header.timestamp_us);
        if let Some(left) = self.config.push_deadline.checked_sub(Duration::from_micros(age_us)) {
            let deadline = now + left;
            for i in 0..self.stripes[s].children.len() {
                let child = self.stripes[s].children[i];
                if Some(child) != from
                    && let Some(n) = self.neighbours.get_mut(&child)
                    && n.has.insert(seq)
                {
                    self.actions.push(Action::Push {
                        to: child,
                        chunk: chunk.clone(),
                        deadline,
                    });
                }
            }
        }
        if self.config.deliver {
            self.actions.push(Action::Deliver(chunk));
        }
    }

    fn note_rate(&mut self, timestamp_us: u64, bytes: usize) {
        let newest = self.window.newest_timestamp_us();
        self.recent_bytes.push_back((timestamp_us, bytes));
        self.first_chunk_us = Some(self.first_chunk_us.map_or(timestamp_us, |f| f.min(timestamp_us)));
        let from = newest.saturating_sub(RATE_SPAN_US);
        // Mostly in timestamp order (back-fill aside): trimming the front is enough.
        while self.recent_bytes.front().is_some_and(|(ts, _)| *ts < from) {
            self.recent_bytes.pop_front();
        }
        // Measured once half a second of stream is seen (over up to two seconds); kept
        // between updates.
        if let Some(first) = self.first_chunk_us {
            let span = newest.saturating_sub(first).min(RATE_SPAN_US);
            if span >= RATE_SPAN_US / 4 {
                let bytes: usize = self.recent_bytes.iter().map(|(_, b)| b).sum();
                self.rate_bps = Some(bytes as f64 * 8.0 * 1e6 / span as f64);
            }
        }
    }

    /// The stream's rate in bit/s over the last two seconds of broadcaster time, once seen.
    pub fn stream_bps(&self) -> Option<f64> {
        self.rate_bps
    }

    fn on_new_epoch(&mut self, first_seq: u64) {
        for n in self.neighbours.values_mut() {
            n.has.clear();
        }
        for stripe in &mut self.stripes {
            stripe.newest = None;
            stripe.stall_checked = None;
        }
        self.missing.clear();
        self.requested.clear();
        self.unannounced.clear();
        self.recent_bytes.clear();
        self.first_chunk_us = None;
        self.floor = Some(first_seq);
    }

    fn mark_has(&mut self, from: Option<NodeId>, seq: u64) {
        if let Some(n) = from.and_then(|id| self.neighbours.get_mut(&id)) {
            n.has.insert(seq);
        }
    }

    /// Records as gaps the seqs of `seq`'s stripe between the stripe's previous newest and
    /// `seq`: each stripe flows down one path, so a later chunk of the same stripe means an
    /// earlier one is missing, not merely still on its way along another path.
    fn note_gaps(&mut self, seq: u64, previous_newest: Option<u64>, now: Instant) {
        let Some(epoch) = self.window.live_epoch() else { return };
        let floor = *self.floor.get_or_insert(seq);
        let k = u64::from(self.config.stripes.max(1));
        let newest_any = self.window.newest_seq(epoch).unwrap_or(seq);
        let low = floor.max(newest_any.saturating_sub(MAX_REPAIR_SPAN));
        let mut m = match previous_newest {
            Some(p) if p < seq => p + k,
            Some(_) => return,
            // First chunk of this stripe: everything of the stripe from the floor on.
            None => low + (seq % k + k - low % k) % k,
        };
        while m < seq {
            if m >= low && !self.window.contains(epoch, m) {
                self.missing.entry(m).or_insert(now);
            }
            m += k;
        }
    }

    /// A stripe whose parent died sends nothing, so no later chunk of it reveals a gap: its
    /// chunks count as missing once the other stripes are `STALLED_ROUNDS` chunks of it
    /// ahead, and are pulled from neighbours that have them while the tree heals.
    fn note_stalled_stripes(&mut self, now: Instant) {
        if self.config.source {
            return;
        }
        let Some(epoch) = self.window.live_epoch() else { return };
        let (Some(newest), Some(floor)) = (self.window.newest_seq(epoch), self.floor) else {
            return;
        };
        let k = u64::from(self.config.stripes.max(1));
        let low = floor.max(newest.saturating_sub(MAX_REPAIR_SPAN));
        for s in 0..k {
            let stripe = &self.stripes[s as usize];
            let first_low = low + (s + k - low % k) % k;
            let mut m = [stripe.newest, stripe.stall_checked]
                .into_iter()
                .flatten()
                .map(|n| n + k)
                .max()
                .unwrap_or(first_low)
                .max(first_low);
            let mut checked = None;
            while m + STALLED_ROUNDS * k <= newest {
                if !self.window.contains(epoch, m) {
                    self.missing.entry(m).or_insert(now);
                }
                checked = Some(m);
                m += k;
            }
            if checked.is_some() {
                self.stripes[s as usize].stall_checked = checked;
            }
        }
    }

    fn on_rejected(&mut self, from: NodeId, reason: Reject, now: Instant) {
        *self.counters.rejected.entry(reason.as_str()).or_default() += 1;
        // Honest peers verify before forwarding, so forged or malformed data is proof of a
        // bad peer: disconnect and ban it by node ID.
        self.banned.insert(from, now + self.config.ban_for);
        self.counters.banned += 1;
        if self.neighbours.remove(&from).is_some() {
            self.forget_in_trees(from);
        }
        self.passive.retain(|p| p.0 != Some(from));
        self.actions.push(Action::Disconnect {
            id: from,
            reason: DisconnectReason::Rejected(reason),
        });
    }

    fn on_tick(&mut self, now: Instant) {
        self.banned.retain(|_, until| *until > now);
        self.expire_punches(now);
        if self
            .last_have
            .is_none_or(|t| now.duration_since(t) >= self.config.have_interval)
        {
            self.last_have = Some(now);
            self.announce();
        }
        self.maybe_backfill(now);
        self.note_stalled_stripes(now);
        self.repair(now);
        self.maintain_trees(now);
        self.broadcast_status(now);
        self.maintain_neighbours(now);
    }

    fn announce(&mut self) {
        let Some(epoch) = self.window.live_epoch() else { return };
        if self.unannounced.is_empty() {
            return;
        }
        self.unannounced.sort_unstable();
        for (id, n) in &self.neighbours {
            let ranges = ranges_of(self.unannounced.iter().copied().filter(|s| !n.has.contains(*s)));
            if !ranges.is_empty() {
                self.actions.push(Action::Send {
                    to: *id,
                    msg: Message::Have { epoch, ranges },
                });
            }
        }
        self.unannounced.clear();
    }

    fn repair(&mut self, now: Instant) {
        let Some(epoch) = self.window.live_epoch() else { return };
        let newest = self.window.newest_seq(epoch).unwrap_or(0);
        self.missing.retain(|s, _| *s + MAX_REPAIR_SPAN >= newest);
        let mut asks: HashMap<NodeId, Vec<u64>> = HashMap::default();
        let k = u64::from(self.config.stripes.max(1));
        for (&seq, &since) in &self.missing {
            // While the stripe's parent is delivering, the gap is most likely a chunk it
            // sends late (newer ones go first): give it longer before asking someone else.
            let stripe = &self.stripes[(seq % k) as usize];
            let parent_busy = stripe
                .parent_active
                .is_some_and(|t| now.duration_since(t) < self.config.repair_after);
            let wait = if parent_busy {
                self.config.repair_after * 5 / 2
            } else {
                self.config.repair_after
            };
            if now.duration_since(since) < wait {
                continue;
            }
            let previous = self.requested.get(&seq).copied();
            if let Some((_, at)) = previous
                && now.duration_since(at) < self.config.request_timeout
            {
                continue;
            }
            if let Some((asked, _)) = previous
                && let Some(n) = self.neighbours.get_mut(&asked)
            {
                n.unanswered += 1;
            }
            let previous = previous.map(|(id, _)| id);
            let holder = self
                .neighbours
                .iter()
                .filter(|(id, n)| n.has.contains(seq) && Some(**id) != previous)
                // The least-failing, then strongest uploader: repairs cost upload too.
                .min_by_key(|(id, n)| (n.unanswered, std::cmp::Reverse(n.upload_kbps), **id))
                .map(|(id, _)| *id)
                // Nobody else has it: ask the same neighbour again.
                .or(previous.filter(|p| self.neighbours.get(p).is_some_and(|n| n.has.contains(seq))));
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
