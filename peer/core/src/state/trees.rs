//! The push trees: the stream is split into stripes (seq modulo stripes) and each stripe
//! flows down its own tree. A node picks, per stripe, the neighbour closest to the source
//! that has room as its parent (GRAFT), takes children while its upload allows, and
//! replaces a parent that goes quiet. The source takes one child per stripe, so it uploads
//! about one copy of the stream however large the audience. Depths and room are told to
//! neighbours in STATUS.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;
use shoal_proto::message::NO_DEPTH;
use shoal_proto::{Message, NodeId};

use super::meter::StreamMeter;
use super::neighbourhood::{Neighbour, Neighbourhood};
use super::stripes::Stripes;
use super::{Config, Outbox};
use crate::window::Window;

/// A stripe deeper than this is treated as cut off (ends count-to-infinity loops).
const MAX_DEPTH: u8 = 32;
/// How long to wait for chunks after a GRAFT before trying another parent.
const GRAFT_TIMEOUT: Duration = Duration::from_millis(1500);
/// A neighbour that refused or failed as parent is not asked again for this long.
const PARENT_COOLDOWN: Duration = Duration::from_secs(5);
/// A neighbour that claims a place in the trees has shown a chunk by now: it announces what it
/// gets every `have_interval`, and a newcomer lacks everything.
const PROOF_WITHIN: Duration = Duration::from_secs(1);
/// A parent that goes quiet is left after `GRAFT_TIMEOUT` and this per hop of its depth (up
/// to `QUIET_STAGGER_DEPTHS` hops).
const QUIET_STAGGER: Duration = Duration::from_millis(100);
const QUIET_STAGGER_DEPTHS: u8 = 8;
/// Least time between two moves of one stripe to a closer parent.
const CLIMB_INTERVAL: Duration = Duration::from_secs(3);
/// After finding no better parent, how long before looking again.
const CLIMB_RETRY: Duration = Duration::from_millis(500);
/// STATUS changes are told at most this often (and unchanged ones every `status_interval`).
const STATUS_MIN_GAP: Duration = Duration::from_millis(100);
/// A parent whose chunks come this far behind the newest held is routed around (a few hops'
/// pacing and a keyframe's burst stay well under it).
const LAG_LIMIT_US: f64 = 500_000.0;
/// Weight of a new chunk in the parent's lag.
const LAG_GAIN: f64 = 0.2;
/// A parent left for lagging is not asked again for this stripe for this long: its
/// household's upload may last a while.
const LAGGED_COOLDOWN: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
struct Stripe {
    parent: Option<NodeId>,
    /// When the parent last pushed a new chunk of this stripe (or when it was grafted).
    parent_active: Option<Instant>,
    children: Vec<NodeId>,
    /// When a chunk of this stripe newer than the parent's last one arrived from elsewhere.
    overtaken: Option<Instant>,
    /// No climbing attempt before this (one just went out, or none was better).
    climb_after: Option<Instant>,
    /// The parent has delivered a chunk of this stripe since it was chosen.
    delivering: bool,
    /// A closer parent grafted onto, not yet delivering (make-before-break).
    pending: Option<(NodeId, Instant)>,
    /// Children told to go (PRUNE), still pushed to until then so they find another parent
    /// before their chunks stop (make-before-break, from the parent's side).
    leaving: Vec<(NodeId, Instant)>,
    /// The parent that told us to go and may still feed us: told once the next one delivers.
    released: Option<NodeId>,
    /// How far behind the newest chunk held the parent's chunks come (µs, smoothed): a
    /// parent that stepped aside for its household's traffic still delivers, but late.
    lag_us: Option<f64>,
}

impl Stripe {
    fn is_pending(&self, id: NodeId) -> bool {
        self.pending.is_some_and(|(p, _)| p == id)
    }
}

/// The stream rate a node plans with before it has measured one.
const ASSUMED_STREAM_BPS: f64 = 4_000_000.0;
/// How long a child told to go is still fed: long enough to graft onto another parent and
/// get its first chunk.
const LEAVE_GRACE: Duration = Duration::from_secs(3);
const SOURCE_LEAVE_GRACE: Duration = Duration::from_secs(1);
/// How long a child shed because our upload no longer carries it is still fed: the upload is
/// short already, so only until a nearby parent takes it.
const SHED_GRACE: Duration = Duration::from_secs(1);

/// Whether an upload of `kbps` (as a neighbour told it) carries a whole copy of the stream
/// beside the reserve: enough to be a parent in every stripe.
fn forwards_a_copy(kbps: u32, cx: &Ctx) -> bool {
    let stream_bps = cx.meter.plan_bps().unwrap_or(ASSUMED_STREAM_BPS);
    f64::from(kbps) * 1000.0 * (1.0 - cx.config.upload_reserve) >= stream_bps
}

/// What the trees consult elsewhere in the node, read-only.
pub(super) struct Ctx<'a> {
    pub config: &'a Config,
    pub meter: &'a StreamMeter,
    pub view: &'a Neighbourhood,
    pub window: &'a Window,
}

pub(super) struct Trees {
    k: Stripes,
    stripes: Vec<Stripe>,
    /// (neighbour, stripe) → until when it is not asked to be parent (it refused, failed, or
    /// lagged).
    cooldown: HashMap<(NodeId, u8), Instant>,
    /// Depths or room changed since the last STATUS.
    status_dirty: bool,
    last_status: (Vec<u8>, usize),
    last_status_at: Option<Instant>,
}

impl Trees {
    pub fn new(stripes: u8) -> Self {
        let k = Stripes::new(stripes);
        Trees {
            k,
            stripes: (0..k.count()).map(|_| Stripe::default()).collect(),
            cooldown: HashMap::default(),
            status_dirty: true,
            last_status: (Vec::new(), 0),
            last_status_at: None,
        }
    }

    pub fn stripe_of(&self, seq: u64) -> usize {
        self.k.of(seq)
    }

    /// Parent per stripe (`None` where the stripe is orphaned).
    pub fn parents(&self) -> Vec<Option<NodeId>> {
        self.stripes.iter().map(|s| s.parent).collect()
    }

    pub fn parent(&self, s: usize) -> Option<NodeId> {
        self.stripes[s].parent
    }

    pub fn is_orphaned(&self) -> bool {
        self.stripes.iter().any(|s| s.parent.is_none())
    }

    pub fn children_total(&self) -> usize {
        self.stripes.iter().map(|s| s.children.len()).sum()
    }

    /// Whom a new chunk of stripe `s` is pushed to: the children, and those told to go
    /// that have not found another parent yet.
    pub fn push_targets(&self, s: usize, now: Instant) -> impl Iterator<Item = NodeId> + '_ {
        let stripe = &self.stripes[s];
        let leaving = stripe.leaving.iter().filter(move |(_, until)| now < *until);
        stripe.children.iter().copied().chain(leaving.map(|(id, _)| *id))
    }

    /// Tells a child of stripe `s` to find another parent, and keeps feeding it for `grace`
    /// (make-before-break, from the parent's side; none when `grace` is zero).
    fn shed(&mut self, s: usize, child: NodeId, now: Instant, grace: Duration, out: &mut Outbox) {
        out.send(child, Message::Prune { stripe: s as u8 });
        let leaving = &mut self.stripes[s].leaving;
        leaving.retain(|(id, until)| *id != child && now < *until);
        if !grace.is_zero() {
            leaving.push((child, now + grace));
        }
        self.status_dirty = true;
    }

    /// How long a child displaced for another is still fed. (The source, a shorter while: its
    /// upload is the stream's one copy, and a child it let go is usually fed by a nearby relay
    /// within a second.)
    fn displace_grace(config: &Config) -> Duration {
        if config.source { SOURCE_LEAVE_GRACE } else { LEAVE_GRACE }
    }

    /// Parent, pending parent or child of ours in some stripe.
    pub fn involves(&self, id: &NodeId) -> bool {
        self.stripes
            .iter()
            .any(|s| s.parent == Some(*id) || s.children.contains(id) || s.is_pending(*id))
    }

    /// The parent of stripe `s` delivers, but its chunks come well behind the others'.
    pub fn parent_lags(&self, s: usize) -> bool {
        self.stripes[s].lag_us.is_some_and(|l| l > LAG_LIMIT_US)
    }

    /// Whether the parent of stripe `s` delivered within `within`. (A parent just grafted
    /// onto has not: it brings chunks from now on, never the ones already missing.)
    pub fn parent_delivered_within(&self, s: usize, now: Instant, within: Duration) -> bool {
        let stripe = &self.stripes[s];
        stripe.delivering && stripe.parent_active.is_some_and(|t| now.duration_since(t) < within)
    }

    /// Hop count from the source in `stripe` (0 at the source).
    pub fn depth(&self, s: usize, config: &Config, view: &Neighbourhood) -> u8 {
        if config.source {
            return 0;
        }
        let Some(parent) = self.stripes[s].parent else {
            return NO_DEPTH;
        };
        // Depth is earned: until the parent has delivered, this node is not really on the tree
        // (and a lying neighbour's claims do not spread through it).
        if !self.stripes[s].delivering {
            return NO_DEPTH;
        }
        match view.get(&parent).map(|n| n.depths[s]) {
            Some(d) if d < MAX_DEPTH => d + 1,
            _ => NO_DEPTH,
        }
    }

    pub fn depths(&self, config: &Config, view: &Neighbourhood) -> Vec<u8> {
        (0..self.stripes.len()).map(|s| self.depth(s, config, view)).collect()
    }

    /// Children this node can feed in all, in stripe units (one child of one stripe).
    pub fn slots(&self, config: &Config, stream_bps: Option<f64>) -> usize {
        if config.source {
            return config.source_fanout * usize::from(config.stripes);
        }
        // Until the stream's rate is measured (nothing received yet), plan with a typical
        // one: a node that receives nothing because no parent has room must still be able to
        // ask a full parent (the source) to make room for it.
        let stream_bps = stream_bps.or(config.upload_bps.map(|_| ASSUMED_STREAM_BPS));
        match (config.upload_bps, stream_bps) {
            (Some(cap), Some(rate)) if rate > 0.0 => {
                let per_child = rate / f64::from(config.stripes);
                let slots = ((cap as f64 * (1.0 - config.upload_reserve)) / per_child).floor() as usize;
                // A node that cannot pass on one whole copy stays a leaf: a weak link inside a
                // tree would make it deep, and its upload is better spent on repairs.
                if slots < usize::from(config.stripes) { 0 } else { slots }
            }
            // Until the stream's rate is known, a capped node takes no children.
            (Some(_), _) => 0,
            (None, _) => config.default_slots,
        }
    }

    pub fn free_slots(&self, config: &Config, stream_bps: Option<f64>) -> usize {
        self.slots(config, stream_bps).saturating_sub(self.children_total())
    }

    fn max_children(config: &Config) -> usize {
        if config.source {
            config.source_fanout
        } else {
            config.max_children_per_stripe
        }
    }

    pub fn on_graft(&mut self, from: NodeId, stripe: u8, now: Instant, cx: &Ctx, out: &mut Outbox) {
        let s = usize::from(stripe);
        let ok = s < self.stripes.len()
            && self.depth(s, cx.config, cx.view) < MAX_DEPTH
            && self.stripes[s].parent != Some(from)
            && !self.stripes[s].is_pending(from)
            && !self.stripes[s].children.contains(&from)
            && self.stripes[s].children.len() < Self::max_children(cx.config)
            && self.free_slots(cx.config, cx.meter.plan_bps()) > 0;
        if !ok {
            if s < self.stripes.len() && self.stripes[s].children.contains(&from) {
                return;
            }
            if !(s < self.stripes.len() && self.make_room(from, s, now, cx, out)) {
                out.send(from, Message::Prune { stripe });
                return;
            }
        }
        // Children that upload most come first in the push order: their subtrees wait on them.
        let at = self.stripes[s]
            .children
            .iter()
            .position(|c| cx.view.strength(c) < cx.view.strength(&from));
        let at = at.unwrap_or(self.stripes[s].children.len());
        self.stripes[s].children.insert(at, from);
        self.stripes[s].leaving.retain(|(id, _)| *id != from);
        self.status_dirty = true;
    }

    /// Full, but asked by a neighbour that uploads markedly more than our weakest child of
    /// this stripe, or by a comparable one while a child takes several stripes from us: let
    /// the newcomer in and send the displaced child to find another parent. Strong uploaders
    /// end up near the source, trees stay shallow, and stripes spread over different nodes.
    fn make_room(&mut self, from: NodeId, s: usize, now: Instant, cx: &Ctx, out: &mut Outbox) -> bool {
        if self.depth(s, cx.config, cx.view) >= MAX_DEPTH
            || self.stripes[s].parent == Some(from)
            || self.stripes[s].is_pending(from)
        {
            return false;
        }
        let strength = |id: &NodeId| cx.view.strength(id);
        // How many other stripes a child already takes from us.
        let others = |id: &NodeId| {
            (0..self.stripes.len())
                .filter(|t| *t != s && self.stripes[*t].children.contains(id))
                .count()
        };
        // (Upload unknown on both sides, as when nobody passed --upload-kbps, is comparable.)
        let newcomer = strength(&from);
        // One cut off from the stripe with children of it brings its whole subtree back: a
        // child of ours that feeds nobody in this stripe makes way for it, whatever their
        // uploads (a leaf finds another parent easily; the subtree waits on its root).
        if let Some((t, i)) = self.subtree_room(from, s, cx) {
            let displaced = self.stripes[t].children.remove(i);
            out.counters.children_displaced += 1;
            self.shed(t, displaced, now, Self::displace_grace(cx.config), out);
            return true;
        }
        // Only for one that can pass a whole copy on: trading one leaf for another (a viewer
        // that measured nothing yet for the gateway that uploads nothing) only churns.
        if newcomer > 0 && !forwards_a_copy(newcomer, cx) {
            return false;
        }
        // A child that takes several stripes from us makes way for a comparable one that
        // takes none: then one departure cuts one stripe, not all of them (at the source,
        // where each stripe has one child, that is the difference between a hiccup and the
        // whole audience losing the stream).
        let spread = (others(&from) == 0)
            .then(|| {
                self.stripes[s]
                    .children
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| others(c) > 0 && u64::from(newcomer) * 3 >= u64::from(strength(c)) * 2)
                    .max_by_key(|(_, c)| (others(c), std::cmp::Reverse(strength(c))))
                    .map(|(i, _)| i)
            })
            .flatten();
        let i = match spread {
            Some(i) => i,
            None if newcomer == 0 => return false,
            None => {
                let Some((i, weakest)) = self.stripes[s]
                    .children
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, c)| strength(c))
                else {
                    return false;
                };
                // Markedly stronger only (half again), so children do not churn between equals.
                if u64::from(newcomer) * 2 < u64::from(strength(weakest)) * 3 {
                    return false;
                }
                i
            }
        };
        let displaced = self.stripes[s].children.remove(i);
        out.counters.children_displaced += 1;
        self.shed(s, displaced, now, Self::displace_grace(cx.config), out);
        true
    }

    /// Which child (stripe, index) makes way for `from`, cut off from stripe `s` with a
    /// subtree of it: the weakest of ours that feeds nobody in `s`, or else, when our room
    /// went to other stripes, the weakest leaf of the stripe with the most children (at least
    /// two more than `s`: each such move narrows the gap, so it settles). `None` if it brings
    /// no subtree or we have no such child.
    fn subtree_room(&self, from: NodeId, s: usize, cx: &Ctx) -> Option<(usize, usize)> {
        let brings = cx
            .view
            .get(&from)
            .is_some_and(|n| n.depths.get(s) == Some(&NO_DEPTH) && n.children.get(s).is_some_and(|c| *c > 0));
        if !brings {
            return None;
        }
        let leaf_of = |t: usize| {
            self.stripes[t]
                .children
                .iter()
                .enumerate()
                .filter(|(_, c)| cx.view.get(c).is_some_and(|n| n.children.get(t) == Some(&0)))
                .min_by_key(|(_, c)| cx.view.strength(c))
                .map(|(i, _)| (t, i))
        };
        leaf_of(s).or_else(|| {
            let here = self.stripes[s].children.len();
            let t = (0..self.stripes.len())
                .filter(|t| *t != s)
                .max_by_key(|t| self.stripes[*t].children.len())?;
            (self.stripes[t].children.len() >= here + 2)
                .then(|| leaf_of(t))
                .flatten()
        })
    }

    pub fn on_prune(&mut self, from: NodeId, stripe: u8, now: Instant, out: &mut Outbox) {
        let s = usize::from(stripe);
        if s >= self.stripes.len() {
            return;
        }
        if self.stripes[s].parent == Some(from) {
            out.counters.pruned_by_parent += 1;
            self.drop_parent(s, now);
            self.stripes[s].released = Some(from);
        }
        if self.stripes[s].is_pending(from) {
            self.stripes[s].pending = None;
        }
        let before = self.stripes[s].children.len();
        self.stripes[s].children.retain(|c| *c != from);
        self.stripes[s].leaving.retain(|(id, _)| *id != from);
        if self.stripes[s].children.len() != before {
            self.status_dirty = true;
        }
        self.cooldown.insert((from, stripe), now + PARENT_COOLDOWN);
    }

    fn drop_parent(&mut self, s: usize, now: Instant) {
        if let Some(old) = self.stripes[s].parent.take() {
            self.cooldown.insert((old, s as u8), now + PARENT_COOLDOWN);
        }
        self.stripes[s].parent_active = None;
        self.stripes[s].overtaken = None;
        self.stripes[s].delivering = false;
        self.stripes[s].lag_us = None;
        self.status_dirty = true;
    }

    /// A neighbour is gone: it is no parent or child of ours any more.
    pub fn forget(&mut self, id: NodeId) {
        for stripe in &mut self.stripes {
            if stripe.is_pending(id) {
                stripe.pending = None;
            }
            if stripe.parent == Some(id) {
                stripe.parent = None;
                stripe.parent_active = None;
                stripe.overtaken = None;
                stripe.delivering = false;
                stripe.lag_us = None;
            }
            stripe.children.retain(|c| *c != id);
            stripe.leaving.retain(|(c, _)| *c != id);
        }
        self.status_dirty = true;
    }

    /// A new chunk of stripe `s` arrived from `from`, `behind` the newest chunk held: keeps
    /// the parent's liveness and lag up to date, and switches to a pending parent once it
    /// delivers.
    pub fn note_chunk(&mut self, s: usize, from: Option<NodeId>, behind: Duration, now: Instant, out: &mut Outbox) {
        let stripe = &mut self.stripes[s];
        if let Some((pending, _)) = stripe.pending
            && from == Some(pending)
        {
            // The closer (or timelier) parent delivers: switch to it and release the old one.
            stripe.pending = None;
            if let Some(old) = stripe.parent.replace(pending) {
                out.send(old, Message::Prune { stripe: s as u8 });
                if stripe.lag_us.is_some_and(|l| l > LAG_LIMIT_US) {
                    self.cooldown.insert((old, s as u8), now + LAGGED_COOLDOWN);
                }
            }
            stripe.parent_active = Some(now);
            stripe.overtaken = None;
            stripe.lag_us = Some(behind.as_micros() as f64);
            stripe.delivering = true;
            self.status_dirty = true;
            out.counters.parent_changes += 1;
            out.counters.parents_switched += 1;
            return;
        }
        if from.is_some() && from == stripe.parent {
            if !stripe.delivering {
                stripe.delivering = true;
                self.status_dirty = true;
                // The parent that let us go still feeds us a moment: tell it we are fed.
                if let Some(old) = stripe.released.take()
                    && Some(old) != from
                {
                    out.send(old, Message::Prune { stripe: s as u8 });
                }
            }
            stripe.parent_active = Some(now);
            stripe.overtaken = None;
            let behind = behind.as_micros() as f64;
            stripe.lag_us = Some(stripe.lag_us.map_or(behind, |l| l + LAG_GAIN * (behind - l)));
        } else if stripe.parent.is_some() && stripe.overtaken.is_none() {
            stripe.overtaken = Some(now);
        }
    }

    /// Sheds children beyond what the upload allows (the newest first), replaces quiet
    /// parents, climbs towards the source, and finds parents for orphaned stripes. Returns the
    /// parents that took a GRAFT and never delivered (black holes, or as bad).
    pub fn maintain(&mut self, now: Instant, cx: &Ctx, out: &mut Outbox) -> Vec<NodeId> {
        let mut failed = Vec::new();
        let slots = self.slots(cx.config, cx.meter.plan_bps());
        // (A little over is tolerated: the reserve covers it, and an estimate that moves by
        // a few percent must not shed a child and take another in turn.)
        // (Not with no room at all: a node that stepped aside for its household keeps no child,
        // or a stripe's whole subtree waits behind its household's traffic.)
        let tolerated = if cx.config.source || slots == 0 {
            slots
        } else {
            slots + (slots / 8).max(1)
        };
        while self.children_total() > tolerated {
            let Some(s) = (0..self.stripes.len()).max_by_key(|s| self.stripes[*s].children.len()) else {
                break;
            };
            let Some(child) = self.stripes[s].children.pop() else {
                break;
            };
            out.counters.children_shed += 1;
            // Over capacity, but fed a moment longer so it finds another parent before its
            // chunks stop: a hard cut leaves a gap for repairs. (Not when stepped aside for the
            // household: what it pushed on would wait behind the household's traffic, and so
            // would the repairs it serves.)
            let grace = if slots == 0 { Duration::ZERO } else { SHED_GRACE };
            self.shed(s, child, now, grace, out);
        }
        if cx.config.source {
            return failed;
        }
        self.cooldown.retain(|_, until| now < *until);
        for s in 0..self.stripes.len() {
            if let Some(parent) = self.stripes[s].parent {
                let stripe = &self.stripes[s];
                // Deeper, a little more patient: where a feed breaks, the node next to the
                // break notices first and mends it (or tells its children it is cut off)
                // before every node below it leaves its parent too.
                let told_depth = cx.view.get(&parent).map(|n| n.depths[s]);
                let parent_depth = told_depth.map_or(0, |d| d.min(QUIET_STAGGER_DEPTHS));
                let quiet_after = GRAFT_TIMEOUT + QUIET_STAGGER * u32::from(parent_depth);
                let quiet = stripe.parent_active.is_none_or(|t| now.duration_since(t) > quiet_after);
                let overtaken = stripe
                    .overtaken
                    .is_some_and(|t| now.duration_since(t) > cx.config.parent_timeout);
                let cut_off = told_depth.is_some_and(|d| d >= MAX_DEPTH)
                    && stripe
                        .parent_active
                        .is_none_or(|t| now.duration_since(t) > cx.config.parent_timeout);
                // Silent far longer than a parent may be: whatever the stream does, move on.
                let silent = stripe
                    .parent_active
                    .is_none_or(|t| now.duration_since(t) > 2 * GRAFT_TIMEOUT);
                if (quiet && overtaken) || cut_off || (quiet && cx.meter.is_flowing(now)) || silent {
                    // Took the GRAFT and never delivered anything: a black hole, or as bad.
                    // (One that delivered and then went quiet most likely lost its own parent.)
                    let never_delivered = !stripe.delivering;
                    out.send(parent, Message::Prune { stripe: s as u8 });
                    self.drop_parent(s, now);
                    out.counters.parent_changes += 1;
                    out.counters.parents_quiet += 1;
                    if quiet && !cut_off && never_delivered {
                        failed.push(parent);
                    }
                } else {
                    self.maybe_climb(s, now, cx, out);
                    continue;
                }
            }
            let mut candidate = self.best_parent(s, now, cx, &failed);
            if candidate.is_none() {
                candidate = self.full_parent_to_ask(s, now, cx);
                // It judges whether to make room by what we told it: tell it now (our upload
                // may have just been measured; the tick's STATUS goes after this GRAFT).
                if let Some(full) = candidate {
                    out.send(full, self.status_message(cx, cx.window));
                }
            }
            if let Some(candidate) = candidate {
                self.stripes[s].parent = Some(candidate);
                self.stripes[s].parent_active = Some(now);
                self.stripes[s].delivering = false;
                self.status_dirty = true;
                out.send(candidate, Message::Graft { stripe: s as u8 });
            }
        }
        failed
    }

    /// Climbs towards the source, make-before-break: GRAFT onto a neighbour two hops closer,
    /// or onto the source when it has room (or, when the parent lags, one as close), and keep
    /// the current parent until the new one's first chunk arrives (`note_chunk`).
    /// A strong uploader also asks closer neighbours that are full: they make room for it.
    fn maybe_climb(&mut self, s: usize, now: Instant, cx: &Ctx, out: &mut Outbox) {
        if let Some((pending, since)) = self.stripes[s].pending {
            if now.duration_since(since) > GRAFT_TIMEOUT {
                self.stripes[s].pending = None;
                self.cooldown.insert((pending, s as u8), now + PARENT_COOLDOWN);
                out.send(pending, Message::Prune { stripe: s as u8 });
            }
            return;
        }
        if self.stripes[s].climb_after.is_some_and(|t| now < t) {
            return;
        }
        let Some(parent) = self.stripes[s].parent else { return };
        let Some(parent_depth) = cx.view.get(&parent).map(|n| n.depths[s]) else {
            return;
        };
        // Two hops nearer at least: one hop is worth less than the chunks a switch can lose
        // and the repairs it calls (at 200 peers, climbing for one hop switched each stripe's
        // parent every 8 s). The source with room is worth one (a gateway fed through a
        // relay beside it stalled after the broadcaster restarted, one run in three).
        // A parent that lags (it stepped aside for its household, or is overloaded) is left
        // for any neighbour as near the source: none of those is below us in the tree, so no
        // loop can form.
        let lagging = self.parent_lags(s);
        let strong = self.slots(cx.config, cx.meter.plan_bps()) >= 2 * usize::from(cx.config.stripes);
        let mine = &self.stripes[s].children;
        let candidate = cx
            .view
            .iter()
            .filter(|(id, n)| {
                **id != parent
                    && (n.depths[s].saturating_add(1) < parent_depth
                        || n.depths[s] == 0 && parent_depth > 0 && n.free_slots > 0
                        || lagging && n.depths[s] <= parent_depth)
                    && cx.view.is_fresh(n, cx.meter.last_new_chunk())
                    && (n.free_slots > 0 || strong)
                    && !mine.contains(id)
                    && !self.cooldown.contains_key(&(**id, s as u8))
            })
            .min_by_key(|(id, n)| (n.depths[s], u16::MAX - n.free_slots, **id))
            .map(|(id, _)| *id);
        let Some(better) = candidate else {
            // Nobody better now: look again in a while, not on every tick.
            self.stripes[s].climb_after = Some(now + CLIMB_RETRY);
            return;
        };
        self.stripes[s].pending = Some((better, now));
        self.stripes[s].climb_after = Some(now + CLIMB_INTERVAL);
        out.send(better, Message::Graft { stripe: s as u8 });
    }

    /// Claims a place in the trees nearer the source than ours yet has shown no chunk since it
    /// became a neighbour: a liar. An honest node claims a depth only once its parent
    /// delivers, announces what it holds to every new neighbour at once, and, nearer the
    /// source, gets chunks before us and announces them; a child of ours holds what we sent.
    /// (One deeper than us may never have had a chunk we lacked: no proof either way.)
    pub fn claims_without_proof(&self, n: &Neighbour, now: Instant, config: &Config, view: &Neighbourhood) -> bool {
        n.fresh.is_none()
            && n.has.is_empty()
            && n.depths
                .iter()
                .enumerate()
                .any(|(s, d)| *d < MAX_DEPTH && *d < self.depth(s, config, view))
            && n.since.is_some_and(|t| now.duration_since(t) > PROOF_WITHIN)
    }

    /// Neighbours that claim a place in the trees but showed no chunk (`claims_without_proof`).
    pub fn liars(&self, now: Instant, config: &Config, view: &Neighbourhood) -> Vec<NodeId> {
        view.iter()
            .filter(|(_, n)| self.claims_without_proof(n, now, config, view))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The neighbour nearest the source in stripe `s` with room for a child. Stripes are
    /// spread over neighbours not yet proven: one that takes GRAFTs for every stripe and
    /// delivers nothing (a black hole claiming to sit next to the source) would otherwise hold
    /// a newcomer's whole stream until each stripe times out; spread, the stripes that do flow
    /// show which neighbours are on the stream.
    /// (`failed` this round count as parent failures already.)
    fn best_parent(&self, s: usize, now: Instant, cx: &Ctx, failed: &[NodeId]) -> Option<NodeId> {
        let mine = &self.stripes[s].children;
        let unproven = |id: &NodeId| {
            self.stripes
                .iter()
                .filter(|t| t.parent == Some(*id) && !t.delivering)
                .count()
        };
        cx.view
            .iter()
            .filter(|(id, n)| {
                n.depths[s] < MAX_DEPTH
                    && cx.view.is_fresh(n, cx.meter.last_new_chunk())
                    && !self.claims_without_proof(n, now, cx.config, cx.view)
                    && n.free_slots > 0
                    && !mine.contains(id)
                    && !self.cooldown.contains_key(&(**id, s as u8))
            })
            .min_by_key(|(id, n)| {
                (
                    n.parent_failures + failed.iter().filter(|f| *f == *id).count() as u32,
                    unproven(id),
                    n.depths[s],
                    u16::MAX - n.free_slots,
                    n.unanswered,
                    **id,
                )
            })
            .map(|(id, _)| *id)
    }

    /// No neighbour with room feeds stripe `s`: a node that can pass on a whole copy asks the
    /// full one nearest the source, which makes room for it when it is markedly stronger than
    /// a child it has (a leaf that took the source's stripes gives way to a node that can
    /// forward them), and otherwise says no (and is not asked again for a while). Without
    /// this, a full source whose children cannot forward holds everyone else off for good.
    fn full_parent_to_ask(&self, s: usize, now: Instant, cx: &Ctx) -> Option<NodeId> {
        if self.slots(cx.config, cx.meter.plan_bps()) < usize::from(cx.config.stripes) {
            return None;
        }
        let mine = &self.stripes[s].children;
        cx.view
            .iter()
            .filter(|(id, n)| {
                n.depths[s] < MAX_DEPTH
                    && n.free_slots == 0
                    // (One that cannot pass a copy on has no child to give up for us; the
                    // source, which tells no upload unless capped, always has.)
                    && (n.depths[s] == 0 || forwards_a_copy(n.upload_kbps, cx))
                    && cx.view.is_fresh(n, cx.meter.last_new_chunk())
                    && !self.claims_without_proof(n, now, cx.config, cx.view)
                    && !mine.contains(id)
                    && !self.cooldown.contains_key(&(**id, s as u8))
            })
            .min_by_key(|(id, n)| (n.depths[s], n.parent_failures, **id))
            .map(|(id, _)| *id)
    }

    /// STATUS: our depths, upload, room, and where the newest segment starts.
    pub fn status_message(&self, cx: &Ctx, window: &Window) -> Message {
        let epoch = window.live_epoch().unwrap_or(0);
        Message::Status {
            depths: self.depths(cx.config, cx.view),
            children: self
                .stripes
                .iter()
                .map(|s| s.children.len().min(usize::from(u8::MAX)) as u8)
                .collect(),
            upload_kbps: cx
                .config
                .upload_bps
                .map_or(0, |b| (b / 1000).min(u64::from(u32::MAX)) as u32),
            free_slots: self.free_slots(cx.config, cx.meter.plan_bps()).min(u16::MAX as usize) as u16,
            // (Only what this node measured itself: rumours are not passed on.)
            stream_kbps: cx
                .meter
                .bps()
                .map_or(0, |b| (b / 1000.0).min(f64::from(u32::MAX)) as u32),
            epoch,
            // The source leaves back-filling joiners to the swarm: its upload is for new chunks.
            segment_start: if cx.config.source {
                None
            } else {
                window.newest_segment_start()
            },
        }
    }

    /// Tells every neighbour our depths and room when they changed, else now and then.
    pub fn broadcast_status(&mut self, now: Instant, cx: &Ctx, window: &Window, out: &mut Outbox) {
        let depths = self.depths(cx.config, cx.view);
        let free = self.free_slots(cx.config, cx.meter.plan_bps());
        let changed = self.status_dirty || depths != self.last_status.0 || free != self.last_status.1;
        let due = self
            .last_status_at
            .is_none_or(|t| now.duration_since(t) >= cx.config.status_interval);
        if !(changed
            && self
                .last_status_at
                .is_none_or(|t| now.duration_since(t) >= STATUS_MIN_GAP)
            || due)
        {
            return;
        }
        self.status_dirty = false;
        self.last_status = (depths, free);
        self.last_status_at = Some(now);
        let msg = self.status_message(cx, window);
        for to in cx.view.ids() {
            out.send(to, msg.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Action;
    use crate::testing::node;

    fn capped(kbps: u64) -> Config {
        Config {
            upload_bps: Some(kbps * 1000),
            ..Config::default()
        }
    }

    #[test]
    fn slots_follow_the_upload_in_copies_of_a_stripe() {
        let trees = Trees::new(4);
        // 2 Mbit/s stream, 4 stripes: a child of one stripe costs 500 kbit/s.
        let rate = Some(2_000_000.0);
        assert_eq!(trees.slots(&capped(10_000), rate), 16, "80 % of 10 Mbit/s");
        // Before the rate is measured, a typical 4 Mbit/s stream is assumed.
        assert_eq!(trees.slots(&capped(2_000), None), 0, "not a whole copy of it");
        assert_eq!(trees.slots(&capped(10_000), None), 8, "two copies of it");
        assert_eq!(trees.slots(&capped(2_000), rate), 0, "less than a whole copy: a leaf");
        assert_eq!(trees.slots(&Config::default(), rate), Config::default().default_slots);
        let source = Config {
            source: true,
            ..Config::default()
        };
        assert_eq!(trees.slots(&source, rate), 4, "one child per stripe");
    }

    #[test]
    fn a_pending_closer_parent_takes_over_when_it_delivers() {
        let now = Instant::now();
        let mut trees = Trees::new(2);
        trees.stripes[1].parent = Some(node(2));
        trees.stripes[1].pending = Some((node(3), now));
        let mut out = Outbox::default();
        trees.note_chunk(1, Some(node(2)), Duration::ZERO, now, &mut out);
        assert_eq!(trees.parents(), vec![None, Some(node(2))], "the old parent still feeds");
        trees.note_chunk(1, Some(node(3)), Duration::ZERO, now, &mut out);
        assert_eq!(trees.parents(), vec![None, Some(node(3))]);
        assert_eq!(out.counters.parent_changes, 1);
        assert!(matches!(
            &out.actions[..],
            [Action::Send { to, msg: Message::Prune { stripe: 1 } }] if *to == node(2)
        ));
        // Gone: no parent, no child of ours any more.
        trees.stripes[0].children.push(node(3));
        trees.forget(node(3));
        assert!(!trees.involves(&node(3)));
        assert!(trees.is_orphaned());
    }
}
