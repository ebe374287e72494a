//! The push trees: the stream is split into stripes (seq modulo stripes) and each stripe
//! flows down its own tree. A node picks, per stripe, the neighbour closest to the source
//! that has room as its parent (GRAFT), takes children while its upload allows, and
//! replaces a parent that goes quiet. The source takes one child per stripe, so it uploads
//! about one copy of the stream however large the audience.

use std::time::{Duration, Instant};

use shoal_proto::message::NO_DEPTH;
use shoal_proto::{Message, NodeId};

use super::{Action, State};

/// A stripe deeper than this is treated as cut off (ends count-to-infinity loops).
const MAX_DEPTH: u8 = 32;
/// How long to wait for chunks after a GRAFT before trying another parent.
const GRAFT_TIMEOUT: Duration = Duration::from_millis(1500);
/// A neighbour that refused or failed as parent is not asked again for this long.
const PARENT_COOLDOWN: Duration = Duration::from_secs(5);
/// A neighbour counts as on the stream if it announced a fresh chunk this recently.
const FRESH_WITHIN: Duration = Duration::from_secs(2);
/// A neighbour that claims a place in the trees has shown a chunk by now: it announces what it
/// gets every `have_interval`, and a newcomer lacks everything.
const PROOF_WITHIN: Duration = Duration::from_secs(1);
/// Least time between two moves of one stripe to a closer parent.
const CLIMB_INTERVAL: Duration = Duration::from_secs(3);
/// After finding no better parent, how long before looking again.
const CLIMB_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub(super) struct Stripe {
    pub parent: Option<NodeId>,
    /// When the parent last pushed a new chunk of this stripe (or when it was grafted).
    pub parent_active: Option<Instant>,
    pub children: Vec<NodeId>,
    /// Newest seq of this stripe held.
    pub newest: Option<u64>,
    /// Seqs of this stripe up to here were checked for a stall (each is checked once).
    pub stall_checked: Option<u64>,
    /// When a chunk of this stripe newer than the parent's last one arrived from elsewhere.
    pub overtaken: Option<Instant>,
    /// No climbing attempt before this (one just went out, or none was better).
    pub climb_after: Option<Instant>,
    /// The parent has delivered a chunk of this stripe since it was chosen.
    pub delivering: bool,
    /// A closer parent grafted onto, not yet delivering (make-before-break).
    pub pending: Option<(NodeId, Instant)>,
}

impl State {
    pub(super) fn stripe_of(&self, seq: u64) -> usize {
        (seq % u64::from(self.config.stripes.max(1))) as usize
    }

    /// Hop count from the source in `stripe` (0 at the source).
    pub(super) fn depth(&self, stripe: usize) -> u8 {
        if self.config.source {
            return 0;
        }
        let Some(parent) = self.stripes[stripe].parent else {
            return NO_DEPTH;
        };
        // Depth is earned: until the parent has delivered, this node is not really on the tree
        // (and a lying neighbour's claims do not spread through it).
        if !self.stripes[stripe].delivering {
            return NO_DEPTH;
        }
        match self.neighbours.get(&parent).map(|n| n.depths[stripe]) {
            Some(d) if d < MAX_DEPTH => d + 1,
            _ => NO_DEPTH,
        }
    }

    /// Children this node can feed in all, in stripe units (one child of one stripe).
    pub(super) fn slots(&self) -> usize {
        if self.config.source {
            return self.config.source_fanout * usize::from(self.config.stripes);
        }
        match (self.config.upload_bps, self.stream_bps()) {
            (Some(cap), Some(rate)) if rate > 0.0 => {
                let per_child = rate / f64::from(self.config.stripes);
                let slots = ((cap as f64 * (1.0 - self.config.upload_reserve)) / per_child).floor() as usize;
                // A node that cannot pass on one whole copy stays a leaf: a weak link inside a
                // tree would make it deep, and its upload is better spent on repairs.
                if slots < usize::from(self.config.stripes) {
                    0
                } else {
                    slots
                }
            }
            // Until the stream's rate is known, a capped node takes no children.
            (Some(_), _) => 0,
            (None, _) => self.config.default_slots,
        }
    }

    fn children_total(&self) -> usize {
        self.stripes.iter().map(|s| s.children.len()).sum()
    }

    pub(super) fn free_slots(&self) -> usize {
        self.slots().saturating_sub(self.children_total())
    }

    pub(super) fn on_graft(&mut self, from: NodeId, stripe: u8) {
        let s = usize::from(stripe);
        let ok = s < self.stripes.len()
            && self.depth(s) < MAX_DEPTH
            && self.stripes[s].parent != Some(from)
            && self.stripes[s].pending.is_none_or(|(p, _)| p != from)
            && !self.stripes[s].children.contains(&from)
            && self.stripes[s].children.len() < self.max_children(s)
            && self.free_slots() > 0;
        if !ok {
            if s < self.stripes.len() && self.stripes[s].children.contains(&from) {
                return;
            }
            if !(s < self.stripes.len() && self.make_room(from, s)) {
                self.actions.push(Action::Send {
                    to: from,
                    msg: Message::Prune { stripe },
                });
                return;
            }
        }
        // Children that upload most come first in the push order: their subtrees wait on them.
        let strength = |id: &NodeId| self.neighbours.get(id).map_or(0, |n| n.upload_kbps);
        let at = self.stripes[s]
            .children
            .iter()
            .position(|c| strength(c) < strength(&from));
        let at = at.unwrap_or(self.stripes[s].children.len());
        self.stripes[s].children.insert(at, from);
        self.status_dirty = true;
    }

    /// Full, but asked by a neighbour that uploads markedly more than our weakest child of
    /// this stripe, or by a comparable one while a child takes several stripes from us: let
    /// the newcomer in and send the displaced child to find another parent. Strong uploaders
    /// end up near the source, trees stay shallow, and stripes spread over different nodes.
    fn make_room(&mut self, from: NodeId, s: usize) -> bool {
        if self.depth(s) >= MAX_DEPTH
            || self.stripes[s].parent == Some(from)
            || self.stripes[s].pending.is_some_and(|(p, _)| p == from)
        {
            return false;
        }
        let strength = |id: &NodeId| self.neighbours.get(id).map_or(0, |n| n.upload_kbps);
        // How many other stripes a child already takes from us.
        let others = |id: &NodeId| {
            (0..self.stripes.len())
                .filter(|t| *t != s && self.stripes[*t].children.contains(id))
                .count()
        };
        // (Upload unknown on both sides, as when nobody passed --upload-kbps, is comparable.)
        let newcomer = strength(&from);
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
        self.actions.push(Action::Send {
            to: displaced,
            msg: Message::Prune { stripe: s as u8 },
        });
        true
    }

    fn max_children(&self, _stripe: usize) -> usize {
        if self.config.source {
            self.config.source_fanout
        } else {
            self.config.max_children_per_stripe
        }
    }

    pub(super) fn on_prune(&mut self, from: NodeId, stripe: u8, now: Instant) {
        let s = usize::from(stripe);
        if s >= self.stripes.len() {
            return;
        }
        if self.stripes[s].parent == Some(from) {
            self.drop_parent(s, now);
        }
        if self.stripes[s].pending.is_some_and(|(p, _)| p == from) {
            self.stripes[s].pending = None;
        }
        let before = self.stripes[s].children.len();
        self.stripes[s].children.retain(|c| *c != from);
        if self.stripes[s].children.len() != before {
            self.status_dirty = true;
        }
        self.cooldown.insert((from, stripe), now);
    }

    fn drop_parent(&mut self, s: usize, now: Instant) {
        if let Some(old) = self.stripes[s].parent.take() {
            self.cooldown.insert((old, s as u8), now);
        }
        self.stripes[s].parent_active = None;
        self.stripes[s].overtaken = None;
        self.stripes[s].delivering = false;
        self.status_dirty = true;
    }

    pub(super) fn forget_in_trees(&mut self, id: NodeId) {
        for stripe in &mut self.stripes {
            if stripe.pending.is_some_and(|(p, _)| p == id) {
                stripe.pending = None;
            }
            if stripe.parent == Some(id) {
                stripe.parent = None;
                stripe.parent_active = None;
                stripe.overtaken = None;
                stripe.delivering = false;
            }
            stripe.children.retain(|c| *c != id);
        }
        self.status_dirty = true;
    }

    /// A new chunk of `stripe` arrived from `from`: keeps the parent's liveness up to date.
    pub(super) fn note_stripe_chunk(&mut self, s: usize, from: Option<NodeId>, seq: u64, now: Instant) {
        let stripe = &mut self.stripes[s];
        stripe.newest = Some(stripe.newest.map_or(seq, |n| n.max(seq)));
        if let Some((pending, _)) = stripe.pending
            && from == Some(pending)
        {
            // The closer parent delivers: switch to it and release the old one.
            stripe.pending = None;
            if let Some(old) = stripe.parent.replace(pending) {
                self.actions.push(Action::Send {
                    to: old,
                    msg: Message::Prune { stripe: s as u8 },
                });
            }
            stripe.parent_active = Some(now);
            stripe.overtaken = None;
            stripe.delivering = true;
            self.status_dirty = true;
            self.counters.parent_changes += 1;
            return;
        }
        if from.is_some() && from == stripe.parent {
            if !stripe.delivering {
                stripe.delivering = true;
                self.status_dirty = true;
            }
            stripe.parent_active = Some(now);
            stripe.overtaken = None;
        } else if stripe.parent.is_some() && stripe.overtaken.is_none() {
            stripe.overtaken = Some(now);
        }
    }

    /// Sheds children beyond what the upload allows (the newest first), replaces quiet
    /// parents, climbs towards the source, and finds parents for orphaned stripes.
    pub(super) fn maintain_trees(&mut self, now: Instant) {
        let slots = self.slots();
        while self.children_total() > slots {
            let Some(s) = (0..self.stripes.len()).max_by_key(|s| self.stripes[*s].children.len()) else {
                break;
            };
            let Some(child) = self.stripes[s].children.pop() else {
                break;
            };
            self.actions.push(Action::Send {
                to: child,
                msg: Message::Prune { stripe: s as u8 },
            });
            self.status_dirty = true;
        }
        if self.config.source {
            return;
        }
        self.cooldown.retain(|_, at| now.duration_since(*at) < PARENT_COOLDOWN);
        for s in 0..self.stripes.len() {
            if let Some(parent) = self.stripes[s].parent {
                let quiet = self.stripes[s]
                    .parent_active
                    .is_none_or(|t| now.duration_since(t) > GRAFT_TIMEOUT);
                let overtaken = self.stripes[s]
                    .overtaken
                    .is_some_and(|t| now.duration_since(t) > self.config.parent_timeout);
                let cut_off = self.neighbours.get(&parent).is_some_and(|n| n.depths[s] >= MAX_DEPTH)
                    && self.stripes[s]
                        .parent_active
                        .is_none_or(|t| now.duration_since(t) > self.config.parent_timeout);
                // Silent far longer than a parent may be: whatever the stream does, move on.
                let silent = self.stripes[s]
                    .parent_active
                    .is_none_or(|t| now.duration_since(t) > 2 * GRAFT_TIMEOUT);
                if (quiet && overtaken) || cut_off || (quiet && self.stream_is_flowing(now)) || silent {
                    // Took the GRAFT and never delivered anything: a black hole, or as bad.
                    // (One that delivered and then went quiet most likely lost its own parent.)
                    let never_delivered = !self.stripes[s].delivering;
                    self.actions.push(Action::Send {
                        to: parent,
                        msg: Message::Prune { stripe: s as u8 },
                    });
                    self.drop_parent(s, now);
                    self.counters.parent_changes += 1;
                    if quiet && !cut_off && never_delivered {
                        self.strike(parent);
                    }
                } else {
                    self.maybe_climb(s, now);
                    continue;
                }
            }
            if let Some(candidate) = self.best_parent(s, now) {
                self.stripes[s].parent = Some(candidate);
                self.stripes[s].parent_active = Some(now);
                self.stripes[s].delivering = false;
                self.status_dirty = true;
                self.actions.push(Action::Send {
                    to: candidate,
                    msg: Message::Graft { stripe: s as u8 },
                });
            }
        }
    }

    /// True once chunks arrive at all (so a silent parent is a problem, not a quiet stream).
    /// (We receive new chunks, or neighbours announce new ones.)
    pub(super) fn stream_is_flowing(&self, now: Instant) -> bool {
        self.last_new_chunk
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(500))
            || self
                .last_news
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
    }

    /// A parent took a GRAFT and then sent nothing while the stream flowed: it is asked again
    /// only when no neighbour with a cleaner record has room. (Not banned: an honest parent
    /// whose own parent failed looks the same for a moment.)
    fn strike(&mut self, id: NodeId) {
        if let Some(n) = self.neighbours.get_mut(&id) {
            n.parent_failures += 1;
        }
    }

    /// Climbs towards the source, make-before-break: GRAFT onto a closer neighbour and keep
    /// the current parent until the new one's first chunk arrives (`note_stripe_chunk`).
    /// A strong uploader also asks closer neighbours that are full: they make room for it.
    fn maybe_climb(&mut self, s: usize, now: Instant) {
        if let Some((pending, since)) = self.stripes[s].pending {
            if now.duration_since(since) > GRAFT_TIMEOUT {
                self.stripes[s].pending = None;
                self.cooldown.insert((pending, s as u8), now);
                self.actions.push(Action::Send {
                    to: pending,
                    msg: Message::Prune { stripe: s as u8 },
                });
            }
            return;
        }
        if self.stripes[s].climb_after.is_some_and(|t| now < t) {
            return;
        }
        let Some(parent) = self.stripes[s].parent else { return };
        let Some(parent_depth) = self.neighbours.get(&parent).map(|n| n.depths[s]) else {
            return;
        };
        let strong = self.slots() >= 2 * usize::from(self.config.stripes);
        let mine: Vec<NodeId> = self.stripes[s].children.clone();
        let candidate = self
            .neighbours
            .iter()
            .filter(|(id, n)| {
                **id != parent
                    && n.depths[s] < parent_depth
                    && self.is_fresh(n)
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
        self.actions.push(Action::Send {
            to: better,
            msg: Message::Graft { stripe: s as u8 },
        });
    }

    /// Whether a neighbour announced chunks near the live edge lately (the source always is).
    /// Claims of depth from a neighbour that never shows fresh chunks are not trusted.
    pub(super) fn is_fresh(&self, n: &super::neighbours::Neighbour) -> bool {
        match self.last_new_chunk {
            Some(newest) => n.fresh.is_some_and(|t| t + FRESH_WITHIN >= newest),
            // Nothing received yet: prefer whoever has shown chunks at all.
            None => n.fresh.is_some() || !self.neighbours.values().any(|m| m.fresh.is_some()),
        }
    }

    /// Claims a place in the trees nearer the source than ours yet has shown no chunk since it
    /// became a neighbour: a liar. An honest node claims a depth only once its parent
    /// delivers, announces what it holds to every new neighbour at once, and, nearer the
    /// source, gets chunks before us and announces them; a child of ours holds what we sent.
    /// (One deeper than us may never have had a chunk we lacked: no proof either way.)
    pub(super) fn claims_without_proof(&self, n: &super::neighbours::Neighbour, now: Instant) -> bool {
        n.fresh.is_none()
            && n.has.is_empty()
            && n.depths
                .iter()
                .enumerate()
                .any(|(s, d)| *d < MAX_DEPTH && *d < self.depth(s))
            && n.since.is_some_and(|t| now.duration_since(t) > PROOF_WITHIN)
    }

    /// The neighbour nearest the source in stripe `s` with room for a child. Stripes are
    /// spread over neighbours not yet proven: one that takes GRAFTs for every stripe and
    /// delivers nothing (a black hole claiming to sit next to the source) would otherwise hold
    /// a newcomer's whole stream until each stripe times out; spread, the stripes that do flow
    /// show which neighbours are on the stream.
    fn best_parent(&self, s: usize, now: Instant) -> Option<NodeId> {
        let mine: Vec<NodeId> = self.stripes[s].children.clone();
        let unproven = |id: &NodeId| {
            self.stripes
                .iter()
                .filter(|t| t.parent == Some(*id) && !t.delivering)
                .count()
        };
        self.neighbours
            .iter()
            .filter(|(id, n)| {
                n.depths[s] < MAX_DEPTH
                    && self.is_fresh(n)
                    && !self.claims_without_proof(n, now)
                    && n.free_slots > 0
                    && !mine.contains(id)
                    && !self.cooldown.contains_key(&(**id, s as u8))
            })
            .min_by_key(|(id, n)| {
                (
                    n.parent_failures,
                    unproven(id),
                    n.depths[s],
                    u16::MAX - n.free_slots,
                    n.unanswered,
                    **id,
                )
            })
            .map(|(id, _)| *id)
    }

    pub(super) fn status_message(&self) -> Message {
        let epoch = self.window.live_epoch().unwrap_or(0);
        Message::Status {
            depths: (0..self.stripes.len()).map(|s| self.depth(s)).collect(),
            upload_kbps: self
                .config
                .upload_bps
                .map_or(0, |b| (b / 1000).min(u64::from(u32::MAX)) as u32),
            free_slots: self.free_slots().min(u16::MAX as usize) as u16,
            epoch,
            // The source leaves back-filling joiners to the swarm: its upload is for new chunks.
            segment_start: if self.config.source {
                None
            } else {
                self.window.newest_segment_start()
            },
        }
    }

    pub(super) fn send_status_to(&mut self, to: NodeId) {
        let msg = self.status_message();
        self.actions.push(Action::Send { to, msg });
    }

    /// Tells every neighbour our depths and room when they changed, else now and then.
    pub(super) fn broadcast_status(&mut self, now: Instant) {
        let depths: Vec<u8> = (0..self.stripes.len()).map(|s| self.depth(s)).collect();
        let free = self.free_slots();
        let changed = self.status_dirty || depths != self.last_status.0 || free != self.last_status.1;
        let due = self
            .last_status_at
            .is_none_or(|t| now.duration_since(t) >= self.config.status_interval);
        if !(changed
            && self
                .last_status_at
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(100))
            || due)
        {
            return;
        }
        self.status_dirty = false;
        self.last_status = (depths, free);
        self.last_status_at = Some(now);
        let msg = self.status_message();
        let ids: Vec<NodeId> = self.neighbours.keys().copied().collect();
        for to in ids {
            self.actions.push(Action::Send { to, msg: msg.clone() });
        }
    }
}
