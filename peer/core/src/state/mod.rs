//! The swarm's sans-IO core: one `State` per node, fed `Event`s with the current time and
//! answering with `Action`s. No sockets, clocks or tasks: the quinn node, the simulator and
//! the unit tests all drive this same code.
//!
//! `State` routes each event to the concepts that own the node's data and passes what one
//! learns to the others:
//! - `trees`: the stripes' push trees (parents, children, depths, STATUS);
//! - `neighbourhood`: the active and passive sets, dialling, bans, peer exchange;
//! - `repair`: HAVE announcements, gaps, REQUESTs, back-fill and the repair budget;
//! - `meter`: the stream's rate and whether it flows;
//! - `punch`: introductions for hole punching; `guard`: what a neighbour may send.

mod guard;
mod meter;
mod neighbourhood;
mod punch;
mod repair;
mod stripes;
mod trees;
mod types;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::message::{SeqRange, ranges_of};
use shoal_proto::{Chunk, Message, NodeId};

use types::Outbox;
pub use types::{Action, Config, Counters, DisconnectReason, Event, Reject, Verdict};

use crate::window::{Admit, Window};
use meter::StreamMeter;
use neighbourhood::Neighbourhood;
use punch::Punches;
use repair::Repair;
use trees::{Ctx, Trees};

/// A HAVE naming a chunk this close to our newest shows the sender is on the live stream.
const FRESH_SPAN: u64 = 64;
/// A node that got nothing new for this long looks for other neighbours.
const STARVING_AFTER: Duration = Duration::from_secs(4);
/// How long a starving newcomer keeps out a neighbour that lied about its place in the trees.
/// (Short: an honest node looks the same while the whole stream is stalled.)
const LIAR_BAN: Duration = Duration::from_secs(30);
/// Share of a copy of the stream the source spends on repairs, at most...
const SOURCE_REPAIR_SHARE: f64 = 0.4;
/// ...and copies of the stream it sends in all, children and repairs together (QUIC adds a
/// few percent on the wire).
const SOURCE_CEILING: f64 = 1.42;
/// Seconds of that share the source may spend at once (a swarm forming, or a relay's
/// household taking its uplink, needs it all at once, and then for a long while not).
const SOURCE_REPAIR_BURST_S: f64 = 10.0;
/// HAVEs are judged against our live edge only while chunks arrive this recently.
const HAVE_CHECK_WITHIN: Duration = Duration::from_secs(1);

pub struct State {
    me: NodeId,
    config: Config,
    window: Window,
    view: Neighbourhood,
    trees: Trees,
    repair: Repair,
    meter: StreamMeter,
    punches: Punches,
    /// The public address the router forwards to this node, first in `config.listen`.
    mapped: Option<SocketAddr>,
    /// The upload the owner declared (`--upload-kbps`): a hard cap on what is learnt.
    declared_upload: Option<u64>,
    started: Instant,
    startup: Option<Duration>,
    out: Outbox,
    /// Whom a chunk is pushed to, in order: (its children in the stripe, who).
    push_order: Vec<(std::cmp::Reverse<u8>, NodeId)>,
}

impl State {
    pub fn new(me: NodeId, config: Config, seed: u64, now: Instant) -> Self {
        State {
            me,
            window: Window::new(config.limits.window),
            view: Neighbourhood::new(me, seed),
            trees: Trees::new(config.stripes),
            repair: Repair::new(config.stripes),
            meter: StreamMeter::default(),
            punches: Punches::default(),
            mapped: None,
            declared_upload: config.upload_bps,
            started: now,
            startup: None,
            out: Outbox::default(),
            push_order: Vec::new(),
            config,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.out.counters
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Time from creation until a whole keyframe segment was held.
    pub fn startup(&self) -> Option<Duration> {
        self.startup
    }

    pub fn neighbours(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.view.iter().map(|(id, n)| (*id, n.addr))
    }

    /// Parent per stripe (`None` where the stripe is orphaned).
    pub fn parents(&self) -> Vec<Option<NodeId>> {
        self.trees.parents()
    }

    /// Hop count from the source per stripe (255 where cut off).
    pub fn depths(&self) -> Vec<u8> {
        self.trees.depths(&self.config, &self.view)
    }

    pub fn children(&self) -> usize {
        self.trees.children_total()
    }

    /// Children this node can feed in all, in stripe units (one child of one stripe).
    pub fn slots(&self) -> usize {
        self.trees.slots(&self.config, self.meter.plan_bps())
    }

    pub fn is_banned(&self, id: &NodeId, now: Instant) -> bool {
        self.view.is_banned(id, now)
    }

    /// The stream's rate in bit/s over the last ten seconds of broadcaster time, once seen.
    pub fn stream_bps(&self) -> Option<f64> {
        self.meter.bps()
    }

    /// What the uplink was seen to carry (bit/s), from the node's uplink controller; `None`
    /// when nothing is known. Children are planned with the smaller of it and the declared
    /// `--upload-kbps`, and shed (newest first) when it falls.
    pub fn set_upload_capacity(&mut self, learnt: Option<u64>) {
        self.config.upload_bps = match (self.declared_upload, learnt) {
            (Some(d), Some(l)) => Some(d.min(l)),
            (d, l) => d.or(l),
        };
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

    /// Pins addresses (bootstrap peers, a ticket's, the DHT's): dialled whenever this node is
    /// not connected to whoever is there, with a growing wait between tries.
    pub fn add_peers(&mut self, addrs: &[SocketAddr]) {
        self.view.pin(addrs, &self.config);
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> std::vec::Drain<'_, Action> {
        match event {
            Event::NeighbourUp {
                id,
                addr,
                listen,
                outbound,
            } => self.on_neighbour_up(id, addr, listen, outbound, now),
            Event::NeighbourDown { id } => self.on_neighbour_down(id, now),
            Event::DialFailed { addr } => self.on_dial_failed(addr, now),
            Event::Control { from, msg } => self.on_control(from, msg, now),
            Event::Chunk { from, chunk } => self.on_chunk(Some(from), chunk, now),
            Event::Rejected { from, reason } => self.on_rejected(from, reason, now),
            Event::Publish(chunk) => self.on_chunk(None, chunk, now),
            Event::Tick => self.on_tick(now),
        }
        self.out.actions.drain(..)
    }

    /// The read-only view the trees take of the rest of the node.
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            config: &self.config,
            meter: &self.meter,
            view: &self.view,
            window: &self.window,
        }
    }

    fn on_neighbour_up(&mut self, id: NodeId, addr: SocketAddr, listen: Vec<SocketAddr>, outbound: bool, now: Instant) {
        self.view.dialled(addr, &listen);
        if id == self.me || self.view.is_banned(&id, now) {
            self.out.push(Action::Disconnect {
                id,
                reason: DisconnectReason::Banned,
            });
            return;
        }
        self.punches.connected(id, &mut self.out.counters);
        if self.view.contains(&id) {
            self.out.push(Action::Disconnect {
                id,
                reason: DisconnectReason::Duplicate,
            });
            return;
        }
        let room_for_children = self.trees.free_slots(&self.config, self.meter.plan_bps()) > 0;
        if !outbound && !self.view.has_room(&self.config, room_for_children) {
            // Full: hand the newcomer other peers to try, then hang up (HyParView).
            self.view.learn(&listen, &self.config);
            let peers = self.view.pex_sample(Some(id));
            self.out.send(id, Message::Pex { peers });
            self.out.push(Action::Disconnect {
                id,
                reason: DisconnectReason::Full,
            });
            return;
        }
        self.view.admit(id, addr, listen, self.config.stripes, now);
        let msg = self.trees.status_message(&self.ctx(), &self.window);
        self.out.send(id, msg);
        // Tell the newcomer what we hold, so it can start from us.
        if let Some(epoch) = self.window.live_epoch() {
            let ranges = ranges_of(self.window.seqs(epoch));
            if !ranges.is_empty() {
                self.out.send(id, Message::Have { epoch, ranges });
            }
        }
        if self.config.discovery {
            let peers = self.view.pex_sample(Some(id));
            if !peers.is_empty() {
                self.out.send(id, Message::Pex { peers });
            }
        }
    }

    fn on_neighbour_down(&mut self, id: NodeId, now: Instant) {
        if self.view.remove(&id, &self.config, true, now).is_some() {
            self.trees.forget(id);
            self.repair.forget(id);
        }
    }

    fn on_dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        self.view.dial_ended(addr, now);
        if self.punches.after_failed_dial(addr, &self.view, now, &mut self.out) {
            return;
        }
        self.view.dial_failed(addr, now);
    }

    /// Drops neighbour `id` from the view and the trees, and hangs up on it.
    fn evict(&mut self, id: NodeId, reason: DisconnectReason, now: Instant) {
        self.view.remove(&id, &self.config, false, now);
        self.trees.forget(id);
        self.out.push(Action::Disconnect { id, reason });
    }

    fn on_control(&mut self, from: NodeId, msg: Message, now: Instant) {
        let live_edge = self
            .meter
            .received_within(now, HAVE_CHECK_WITHIN)
            .then(|| {
                self.window
                    .live_epoch()
                    .and_then(|e| Some((e, self.window.newest_seq(e)?)))
            })
            .flatten();
        let Some(n) = self.view.get_mut(&from) else {
            return;
        };
        if let Err(reason) = guard::police_control(&mut n.budgets, &msg, &self.config.limits, live_edge, now) {
            return self.on_rejected(from, reason, now);
        }
        n.heard = Some(now);
        match msg {
            Message::Have { epoch, ranges } => self.on_have(from, epoch, &ranges, now),
            Message::Request { epoch, ranges } => self.on_request(from, epoch, &ranges, now),
            Message::Graft { stripe } => {
                let cx = Ctx {
                    config: &self.config,
                    meter: &self.meter,
                    view: &self.view,
                    window: &self.window,
                };
                self.trees.on_graft(from, stripe, now, &cx, &mut self.out);
            }
            Message::Prune { stripe } => self.trees.on_prune(from, stripe, now, &mut self.out),
            Message::Status {
                depths,
                children,
                upload_kbps,
                free_slots,
                stream_kbps,
                epoch,
                segment_start,
            } => {
                if let Some(n) = self.view.get_mut(&from) {
                    for (mine, theirs) in n.depths.iter_mut().zip(depths) {
                        *mine = theirs;
                    }
                    for (mine, theirs) in n.children.iter_mut().zip(children) {
                        *mine = theirs;
                    }
                    n.upload_kbps = upload_kbps;
                    n.free_slots = free_slots;
                    n.stream_kbps = stream_kbps;
                    n.segment_start = segment_start.map(|s| (epoch, s));
                }
                self.meter.set_told(self.view.told_stream_bps());
            }
            Message::Pex { peers } => {
                for (addr, node) in self.view.on_pex(peers, &self.config) {
                    // Who told us, in case it takes both of us dialling at once (punch.rs).
                    self.punches.introduced_by(from, addr, node, self.config.passive_max);
                }
            }
            Message::Introduce { target } => self.punches.on_introduce(from, target, &self.view, &mut self.out),
            // (Never ourselves: a PUNCH naming us is someone's mistake or a trick.)
            Message::Punch { peer, .. } if peer == self.me => {}
            Message::Punch { peer, addrs } => {
                self.punches
                    .on_punch(peer, &addrs, &self.config.listen, &mut self.view, now, &mut self.out)
            }
            Message::Goodbye { .. } => self.evict(from, DisconnectReason::Goodbye, now),
            // A neighbour will not send what we asked of it.
            Message::Cancel { epoch, ranges } if self.window.live_epoch() == Some(epoch) => {
                self.repair.refused(from, &ranges)
            }
            // HELLO is the driver's.
            _ => {}
        }
    }

    fn on_have(&mut self, from: NodeId, epoch: u64, ranges: &[SeqRange], now: Instant) {
        if self.window.live_epoch().is_some_and(|l| l != epoch) {
            // Another epoch: the broadcaster may have restarted. Once ours has gone quiet, a
            // neighbour announcing one is worth grafting to (what it pushes is verified like
            // anything else, and its first newer chunk moves us to the new epoch).
            if !self.meter.is_flowing(now)
                && let Some(n) = self.view.get_mut(&from)
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
            self.meter.note_news(now);
        }
        let Some(neighbour) = self.view.get_mut(&from) else {
            return;
        };
        // Fresh: it holds chunks near the live edge, so it is really on the stream.
        let fresh_from = newest_held.map_or(0, |n| n.saturating_sub(FRESH_SPAN));
        if ranges.iter().any(|r| r.start + u64::from(r.len) > fresh_from) {
            neighbour.fresh = Some(now);
        }
        for r in ranges {
            neighbour.has.insert_range(r.start, u64::from(r.len));
        }
        // Chunks announced ahead of ours, in stripes no parent is feeding, are pulled like
        // gaps (Plumtree's lazy path). Without it a node whose trees cannot form (a full
        // source whose only child cannot pass anything on) never gets past its back-fill.
        let (Some(newest_held), false) = (newest_held, self.config.source) else {
            return;
        };
        let feeding = self.config.parent_timeout;
        let unfed = |s: usize| !self.trees.parent_delivered_within(s, now, feeding);
        let announced = ranges
            .iter()
            .flat_map(SeqRange::iter)
            .filter(|seq| *seq > newest_held && unfed(self.trees.stripe_of(*seq)));
        self.repair.note_announced(announced, now);
    }

    fn on_request(&mut self, from: NodeId, epoch: u64, ranges: &[SeqRange], now: Instant) {
        let mut spare = repair::spare_bps(&self.config, self.meter.plan_bps(), self.trees.children_total());
        if self.config.source {
            // The source's upload is for new chunks: repairs get at most a share of a copy,
            // the last resort of a node the swarm could not serve in time (requesters ask
            // it last). (Two fifths of a copy: with its one copy to its children and what
            // QUIC adds, under 1.5x.)
            let share = self.meter.bps().map(|b| b * SOURCE_REPAIR_SHARE);
            spare = match (spare, share) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => b.or(a.map(|_| 0.0)),
            };
            if spare.is_none() {
                return;
            }
        }
        let burst_s = if self.config.source { SOURCE_REPAIR_BURST_S } else { 1.0 };
        self.repair.refill(spare, burst_s, now);
        if self.config.source {
            // Whatever the bursts, everything it sent stays under the ceiling (but for one
            // burst's worth: a forming swarm needs it at once, before much was published).
            let c = &self.out.counters;
            let burst = self
                .meter
                .bps()
                .map_or(0.0, |b| b / 8.0 * SOURCE_REPAIR_SHARE * SOURCE_REPAIR_BURST_S);
            self.repair
                .limit(SOURCE_CEILING * c.published_bytes as f64 + burst - c.pushed_bytes as f64);
        }
        let deadline = now + self.config.push_deadline;
        let window = &self.window;
        let held = |seq| window.get(epoch, seq);
        let refused = self
            .repair
            .serve(from, ranges, held, deadline, &mut self.view, &mut self.out);
        if !refused.is_empty() {
            let ranges = ranges_of(refused);
            self.out.send(from, Message::Cancel { epoch, ranges });
        }
    }

    fn on_chunk(&mut self, from: Option<NodeId>, chunk: Arc<Chunk>, now: Instant) {
        if let Some(n) = from.and_then(|id| self.view.get_mut(&id)) {
            n.heard = Some(now);
        }
        let (epoch, seq) = (chunk.header.epoch, chunk.header.seq);
        let previous_epoch = self.window.live_epoch();
        let admit = self.window.admit(&chunk);
        if let Some(from) = from {
            let verdict = match admit {
                Admit::Stored => Verdict::New,
                Admit::Duplicate => Verdict::Duplicate {
                    from_parent: self.trees.parent(self.trees.stripe_of(seq)) == Some(from),
                },
                Admit::Late => Verdict::Late,
            };
            self.out.push(Action::Judged {
                from,
                header: chunk.header,
                verdict,
            });
        }
        match admit {
            Admit::Late => {
                self.out.counters.late += 1;
                if let Some(from) = from
                    && let Err(reason) = guard::police_stale(
                        self.view.get_mut(&from).map(|n| &mut n.budgets),
                        &self.config.limits,
                        now,
                    )
                {
                    self.on_rejected(from, reason, now);
                }
                return;
            }
            Admit::Duplicate => {
                self.out.counters.duplicate += 1;
                self.out.counters.duplicate_bytes += chunk.encoded_len() as u64;
                self.mark_has(from, seq);
                return;
            }
            Admit::Stored => {}
        }
        match from {
            Some(_) => {
                self.out.counters.verified += 1;
                self.out.counters.verified_bytes += chunk.encoded_len() as u64;
            }
            None => {
                self.out.counters.published += 1;
                self.out.counters.published_bytes += chunk.encoded_len() as u64;
            }
        }
        if self.window.live_epoch() != previous_epoch {
            self.on_new_epoch(seq);
        }
        if self.window.live_epoch() != Some(epoch) {
            return; // a straggler from an older epoch: kept for repair, not spread
        }
        self.meter.note_chunk(
            chunk.header.timestamp_us,
            chunk.payload.len(),
            self.window.newest_timestamp_us(),
            now,
        );
        if let Some(asked) = self.repair.note_new_chunk(seq, &self.window, now)
            && let Some(n) = self.view.get_mut(&asked)
        {
            n.unanswered = n.unanswered.saturating_sub(1);
        }
        self.mark_has(from, seq);
        let s = self.trees.stripe_of(seq);
        let age_us = self
            .window
            .newest_timestamp_us()
            .saturating_sub(chunk.header.timestamp_us);
        self.trees
            .note_chunk(s, from, Duration::from_micros(age_us), now, &mut self.out);
        if self.startup.is_none() && self.window.holds_whole_segment() {
            self.startup = Some(now.saturating_duration_since(self.started));
        }

        if let Some(left) = self.config.push_deadline.checked_sub(Duration::from_micros(age_us)) {
            let deadline = now + left;
            // Children that pass the stripe on first, the most children first: the chunk
            // waits behind the others' copies in our uplink, and their subtrees wait with them.
            // (So do those of a child told to go, still fed: leaves told to go come last.)
            // (The order is built in a buffer kept from chunk to chunk: this runs for every
            // chunk.)
            let mut order = std::mem::take(&mut self.push_order);
            order.clear();
            order.extend(self.trees.push_targets(s, now).map(|c| {
                let children = self.view.get(&c).map_or(0, |n| n.children.get(s).copied().unwrap_or(0));
                (std::cmp::Reverse(children), c)
            }));
            order.sort_by_key(|(children, _)| *children);
            for &(_, child) in &order {
                if Some(child) != from
                    && let Some(n) = self.view.get_mut(&child)
                    && n.has.insert(seq)
                {
                    self.out.push(Action::Push {
                        to: child,
                        chunk: chunk.clone(),
                        deadline,
                    });
                }
            }
            self.push_order = order;
        }
        if self.config.deliver {
            self.out.push(Action::Deliver(chunk));
        }
    }

    fn on_new_epoch(&mut self, first_seq: u64) {
        self.view.clear_holdings();
        self.repair.new_epoch(first_seq);
        self.meter.new_epoch();
    }

    fn mark_has(&mut self, from: Option<NodeId>, seq: u64) {
        if let Some(n) = from.and_then(|id| self.view.get_mut(&id)) {
            n.has.insert(seq);
        }
    }

    fn on_rejected(&mut self, from: NodeId, reason: Reject, now: Instant) {
        *self.out.counters.rejected.entry(reason.as_str()).or_default() += 1;
        // Honest peers verify before forwarding, so forged or malformed data is proof of a
        // bad peer: disconnect and ban it by node ID.
        self.view.ban(from, now + self.config.ban_for);
        self.out.counters.banned += 1;
        if self.view.remove(&from, &self.config, false, now).is_some() {
            self.trees.forget(from);
        }
        self.out.push(Action::Disconnect {
            id: from,
            reason: DisconnectReason::Rejected(reason),
        });
    }

    fn on_tick(&mut self, now: Instant) {
        self.view.expire_bans(now);
        self.punches.expire(now, &mut self.out.counters);
        self.repair
            .announce(now, &self.config, &self.window, &self.view, &mut self.out);
        if !self.config.source {
            self.repair.maybe_backfill(now, &self.window, &self.view, &mut self.out);
            self.repair.note_stalled_stripes(&self.window, now);
        }
        self.repair.request(
            now,
            &self.config,
            &self.window,
            &self.trees,
            &mut self.view,
            &mut self.out,
        );
        self.maintain_trees(now);
        let cx = Ctx {
            config: &self.config,
            meter: &self.meter,
            view: &self.view,
            window: &self.window,
        };
        self.trees.broadcast_status(now, &cx, &self.window, &mut self.out);
        self.maintain_neighbours(now);
    }

    fn maintain_trees(&mut self, now: Instant) {
        let cx = Ctx {
            config: &self.config,
            meter: &self.meter,
            view: &self.view,
            window: &self.window,
        };
        let failed = self.trees.maintain(now, &cx, &mut self.out);
        // A parent took a GRAFT and then sent nothing while the stream flowed: it is asked
        // again only when no neighbour with a cleaner record has room. (Not banned: an honest
        // parent whose own parent failed looks the same for a moment.)
        for id in failed {
            if let Some(n) = self.view.get_mut(&id) {
                n.parent_failures += 1;
            }
        }
    }

    /// Keeps the active set between its bounds and spreads addresses now and then.
    fn maintain_neighbours(&mut self, now: Instant) {
        for id in self.view.silent(now) {
            self.on_neighbour_down(id, now);
            self.out.counters.silent_dropped += 1;
            self.out.push(Action::Disconnect {
                id,
                reason: DisconnectReason::Silent,
            });
        }
        self.view.expire_failed_dials(now);
        // Starving: joined a while ago and still nothing. The neighbours we have cannot or
        // will not feed us (a newcomer that landed among liars): drop the worst and ask the
        // bootstrap peers again for others. (A node that had the stream and lost a parent is
        // repaired by its trees instead: dropping neighbours then only makes churn worse.)
        let starving = !self.config.source
            && self.meter.last_new_chunk().is_none()
            && now.duration_since(self.started) > STARVING_AFTER;
        // The addresses given at start are a viewer's way in: once it has neighbours enough,
        // peer exchange does the rest, and a full source is not asked again and again. The
        // source keeps its relays, and a node without discovery has no other neighbours.
        let pinned_wanted =
            self.config.source || !self.config.discovery || self.view.len() < self.config.active_min || starving;
        for addr in self.view.dial_pinned(pinned_wanted, now) {
            self.out.push(Action::Dial(addr));
        }
        if !self.config.discovery {
            return;
        }
        // Below the minimum, or a stripe has no parent among the neighbours: meet more peers.
        let orphaned = !self.config.source && self.trees.is_orphaned() && self.window.live_epoch().is_some();
        let mut wanted = self.config.active_min.saturating_sub(self.view.len());
        if starving {
            // Landed among liars (they dial whoever they hear of): shed them, and keep them off
            // for a while, so room is left for peers that can feed us.
            for liar in self.trees.liars(now, &self.config, &self.view) {
                self.evict(liar, DisconnectReason::NoChunks, now);
                self.view.keep_out(liar, now + LIAR_BAN);
            }
        }
        if starving && self.rotate_out_one(now) {
            self.view.retry_pinned();
            wanted = wanted.max(1);
        } else if orphaned {
            if self.view.may_dial_for_orphan(&self.config) {
                wanted = wanted.max(1);
            } else {
                // Full of neighbours none of which can feed us: let the least useful go.
                self.rotate_out_one(now);
            }
        }
        for addr in self.view.dial_more(wanted, now) {
            self.out.push(Action::Dial(addr));
        }
        if self.view.pex_due(&self.config, now) {
            self.punches.retain_known(&self.view);
            if let Some(to) = self.view.random_neighbour() {
                let peers = self.view.pex_sample(Some(to));
                if !peers.is_empty() {
                    self.out.send(to, Message::Pex { peers });
                }
            }
        }
    }

    /// Lets the least useful neighbour go, at most once per rotation interval; true if it was
    /// time (whether or not one could be let go).
    fn rotate_out_one(&mut self, now: Instant) -> bool {
        if !self.view.rotation_due(now) {
            return false;
        }
        if let Some(id) = self.least_useful_neighbour() {
            self.evict(id, DisconnectReason::Full, now);
        }
        true
    }

    /// A neighbour that is neither parent nor child of ours, with no room and farthest from
    /// the source.
    fn least_useful_neighbour(&self) -> Option<NodeId> {
        let fresh = |n| self.view.is_fresh(n, self.meter.last_new_chunk());
        self.view
            .iter()
            .filter(|(id, n)| !self.trees.involves(id) && (n.free_slots == 0 || !fresh(n) || n.parent_failures > 0))
            // Those that show no fresh chunks or failed us first, then the deepest.
            .max_by_key(|(id, n)| (!fresh(n), n.parent_failures, n.min_depth(), **id))
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests;
