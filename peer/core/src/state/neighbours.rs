//! Who a node talks to: a bounded active set of connected neighbours, a larger passive list
//! of addresses learnt by peer exchange (HyParView), dialling to refill the active set,
//! and turning newcomers away (with addresses to try instead) when full.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::seq::{IndexedRandom, SliceRandom};
use shoal_proto::message::{MAX_ADDRS, MAX_PEX_PEERS, NO_DEPTH};
use shoal_proto::{Message, NodeId, PeerInfo};

use super::guard::Bucket;
use super::{Action, DisconnectReason, State};
use crate::limits::EXTRA_FOR_CHILDREN;
use crate::seqset::SeqSet;

/// Dials started per tick at most, and dials in flight at most.
const DIALS_IN_FLIGHT: usize = 3;
/// A node that got nothing new for this long looks for other neighbours.
const STARVING_AFTER: Duration = Duration::from_secs(4);
/// Extra neighbours an orphaned node may dial to find a parent with room.
const ORPHAN_EXTRA: usize = 4;
/// Least time between two neighbours let go to make room for better ones.
const ROTATE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a starving newcomer keeps out a neighbour that lied about its place in the trees.
/// (Short: an honest node looks the same while the whole stream is stalled.)
const LIAR_BAN: Duration = Duration::from_secs(30);
/// Peers sent in one PEX message.
const PEX_SAMPLE: usize = 8;
/// How long an address that failed to answer is not dialled again.
const DIAL_FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// A neighbour silent this long is gone, whatever the transport still thinks: every
/// neighbour sends STATUS at least once a second. (A QUIC idle timeout takes longer, and a
/// dead parent near the source starves everyone below it until it is noticed.)
const SILENT_FOR: Duration = Duration::from_millis(2500);

#[derive(Debug)]
pub(super) struct Neighbour {
    pub addr: SocketAddr,
    pub listen: Vec<SocketAddr>,
    /// Chunks of the live epoch it holds (sent us, announced, or was sent by us).
    pub has: SeqSet,
    /// Its hop count from the source per stripe, as it last told us.
    pub depths: Vec<u8>,
    /// Its upload capacity (0 if unknown) and how many more children it can take.
    pub upload_kbps: u32,
    pub free_slots: u16,
    /// Seq of the newest segment start it told us about.
    pub segment_start: Option<(u64, u64)>,
    /// Requests it left unanswered: a neighbour that lies in HAVE is asked last.
    pub unanswered: u32,
    /// Times it went quiet as our parent.
    pub parent_failures: u32,
    /// When it last announced a chunk near the live edge (only such neighbours are parents).
    pub fresh: Option<std::time::Instant>,
    /// When it last sent anything at all.
    pub heard: Option<std::time::Instant>,
    /// When it became a neighbour.
    pub since: Option<std::time::Instant>,
    /// What it may still send us before it counts as flooding (`guard.rs`).
    pub control_budget: Bucket,
    pub request_budget: Bucket,
    pub stale_budget: Bucket,
}

impl Neighbour {
    /// Where others can reach it, best first: the address we see it at (behind a NAT, its
    /// public one; its own list holds only private ones), then those it listens on.
    pub fn reachable_addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.listen.iter().copied().filter(|a| *a != self.addr))
            .take(MAX_ADDRS)
            .collect()
    }

    pub fn new(addr: SocketAddr, listen: Vec<SocketAddr>, stripes: u8) -> Self {
        Neighbour {
            addr,
            listen,
            has: SeqSet::default(),
            depths: vec![NO_DEPTH; usize::from(stripes)],
            upload_kbps: 0,
            free_slots: 0,
            segment_start: None,
            unanswered: 0,
            parent_failures: 0,
            fresh: None,
            heard: None,
            since: None,
            control_budget: Bucket::default(),
            request_budget: Bucket::default(),
            stale_budget: Bucket::default(),
        }
    }
}

impl State {
    pub(super) fn on_neighbour_up(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        listen: Vec<SocketAddr>,
        outbound: bool,
        now: Instant,
    ) {
        for a in &listen {
            self.dialling.remove(a);
        }
        self.dialling.remove(&addr);
        if id == self.me || self.is_banned(&id, now) {
            self.actions.push(Action::Disconnect {
                id,
                reason: DisconnectReason::Banned,
            });
            return;
        }
        self.note_punch_success(id);
        if self.neighbours.contains_key(&id) {
            self.actions.push(Action::Disconnect {
                id,
                reason: DisconnectReason::Duplicate,
            });
            return;
        }
        // Room for children is room for neighbours: a strong node accepts beyond the usual
        // bound, up to a hard cap, since its children must be its neighbours.
        let limit = if self.free_slots() > 0 {
            self.config.limits.max_neighbours + EXTRA_FOR_CHILDREN
        } else {
            self.config.limits.max_neighbours
        };
        if !outbound && self.neighbours.len() >= limit {
            // Full: hand the newcomer other peers to try, then hang up (HyParView).
            self.learn(&listen);
            let peers = self.pex_sample(Some(id));
            self.actions.push(Action::Send {
                to: id,
                msg: Message::Pex { peers },
            });
            self.actions.push(Action::Disconnect {
                id,
                reason: DisconnectReason::Full,
            });
            return;
        }
        self.passive.retain(|p| !listen.contains(&p.1));
        let mut neighbour = Neighbour::new(addr, listen, self.config.stripes);
        neighbour.heard = Some(now);
        neighbour.since = Some(now);
        self.neighbours.insert(id, neighbour);
        self.send_status_to(id);
        // Tell the newcomer what we hold, so it can start from us.
        if let Some(epoch) = self.window.live_epoch() {
            let ranges = shoal_proto::message::ranges_of(self.window.seqs(epoch));
            if !ranges.is_empty() {
                self.actions.push(Action::Send {
                    to: id,
                    msg: Message::Have { epoch, ranges },
                });
            }
        }
        if self.config.discovery {
            let peers = self.pex_sample(Some(id));
            if !peers.is_empty() {
                self.actions.push(Action::Send {
                    to: id,
                    msg: Message::Pex { peers },
                });
            }
        }
    }

    pub(super) fn on_neighbour_down(&mut self, id: NodeId) {
        if let Some(n) = self.neighbours.remove(&id) {
            self.forget_in_trees(id);
            self.requested.retain(|_, (asked, _)| *asked != id);
            // It may come back: keep its address for later, behind fresher ones.
            if self.config.discovery {
                self.learn(&n.listen);
            }
        }
    }

    pub(super) fn on_dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        self.dialling.remove(&addr);
        if self.punch_after_failed_dial(addr, now) {
            return;
        }
        self.passive.retain(|p| p.1 != addr);
        self.failed_dials.insert(addr, now);
    }

    /// Adds addresses to the passive list (newest first, bounded).
    pub(super) fn learn(&mut self, addrs: &[SocketAddr]) {
        for addr in addrs.iter().take(1) {
            if self.config.listen.contains(addr) || self.passive.iter().any(|p| p.1 == *addr) {
                continue;
            }
            if self.neighbours.values().any(|n| n.listen.contains(addr)) {
                continue;
            }
            self.passive.push((None, *addr));
        }
        let excess = self.passive.len().saturating_sub(self.config.passive_max);
        if excess > 0 {
            self.passive.drain(..excess);
        }
    }

    pub(super) fn on_pex(&mut self, from: NodeId, peers: Vec<PeerInfo>) {
        if !self.config.discovery {
            return;
        }
        for peer in peers {
            if peer.node_id == self.me
                || self.neighbours.contains_key(&peer.node_id)
                || self.banned.contains_key(&peer.node_id)
            {
                continue;
            }
            self.learn(&peer.addrs);
            if let Some(entry) = self.passive.iter_mut().find(|p| peer.addrs.first() == Some(&p.1)) {
                entry.0 = Some(peer.node_id);
                // Who told us, in case it takes both of us dialling at once (punch.rs).
                if self.introduced.len() < self.config.passive_max {
                    self.introduced.insert(entry.1, (from, peer.node_id));
                }
            }
        }
    }

    /// Up to `PEX_SAMPLE` peers (neighbours and passive ones) with their addresses.
    pub(super) fn pex_sample(&mut self, exclude: Option<NodeId>) -> Vec<PeerInfo> {
        // First the neighbours nearest the source that have room for children: that is where
        // a newcomer should attach for a shallow tree. Then a random few, for a mixed graph.
        let mut near: Vec<(u8, u16, NodeId)> = self
            .neighbours
            .iter()
            .filter(|(id, n)| {
                Some(**id) != exclude && !n.listen.is_empty() && n.free_slots > 0 && n.parent_failures == 0
            })
            .map(|(id, n)| (n.depths.iter().copied().min().unwrap_or(NO_DEPTH), n.free_slots, *id))
            .collect();
        near.sort_by_key(|(depth, free, id)| (*depth, u16::MAX - free, *id));
        let chosen: Vec<NodeId> = near.iter().take(PEX_SAMPLE / 2).map(|(_, _, id)| *id).collect();
        // The random rest: picked before any address list is built (the passive list is long).
        let mut others: Vec<(NodeId, Option<SocketAddr>)> = self
            .neighbours
            .iter()
            .filter(|(id, n)| Some(**id) != exclude && !n.listen.is_empty() && !chosen.contains(id))
            .map(|(id, _)| (*id, None))
            .chain(
                self.passive
                    .iter()
                    .filter_map(|p| p.0.filter(|id| Some(*id) != exclude).map(|id| (id, Some(p.1)))),
            )
            .collect();
        let want = PEX_SAMPLE.min(MAX_PEX_PEERS).saturating_sub(chosen.len());
        let (picked, _) = others.partial_shuffle(&mut self.rng, want);
        let info = |id: NodeId, passive: Option<SocketAddr>| {
            let addrs = match passive {
                Some(addr) => vec![addr],
                None => self.neighbours.get(&id)?.reachable_addrs(),
            };
            Some(PeerInfo { node_id: id, addrs })
        };
        chosen
            .iter()
            .map(|id| (*id, None))
            .chain(picked.iter().copied())
            .filter_map(|(id, passive)| info(id, passive))
            .collect()
    }

    /// Neighbours that claim a place in the trees but showed no chunk (`claims_without_proof`).
    fn liars(&self, now: Instant) -> Vec<NodeId> {
        self.neighbours
            .iter()
            .filter(|(_, n)| self.claims_without_proof(n, now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Drops neighbour `id` from the view and the trees, and hangs up on it.
    pub(super) fn evict(&mut self, id: NodeId, reason: DisconnectReason) {
        self.neighbours.remove(&id);
        self.forget_in_trees(id);
        self.actions.push(Action::Disconnect { id, reason });
    }

    /// Lets the least useful neighbour go, at most once per `ROTATE_INTERVAL`; true if it was
    /// time (whether or not one could be let go).
    fn rotate_out_one(&mut self, now: Instant) -> bool {
        if self
            .last_rotation
            .is_some_and(|t| now.duration_since(t) <= ROTATE_INTERVAL)
        {
            return false;
        }
        self.last_rotation = Some(now);
        if let Some(id) = self.least_useful_neighbour() {
            self.evict(id, DisconnectReason::Full);
        }
        true
    }

    /// A neighbour that is neither parent nor child of ours, with no room and farthest from
    /// the source.
    fn least_useful_neighbour(&self) -> Option<NodeId> {
        let involved = |id: &NodeId| {
            self.stripes
                .iter()
                .any(|s| s.parent == Some(*id) || s.children.contains(id) || s.pending.is_some_and(|(p, _)| p == *id))
        };
        self.neighbours
            .iter()
            .filter(|(id, n)| !involved(id) && (n.free_slots == 0 || !self.is_fresh(n) || n.parent_failures > 0))
            // Those that show no fresh chunks or failed us first, then the deepest.
            .max_by_key(|(id, n)| {
                (
                    !self.is_fresh(n),
                    n.parent_failures,
                    n.depths.iter().copied().min().unwrap_or(NO_DEPTH),
                    **id,
                )
            })
            .map(|(id, _)| *id)
    }

    /// Keeps the active set between its bounds and spreads addresses now and then.
    pub(super) fn maintain_neighbours(&mut self, now: Instant) {
        let silent: Vec<NodeId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.heard.is_some_and(|t| now.duration_since(t) > SILENT_FOR))
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            self.on_neighbour_down(id);
            self.counters.silent_dropped += 1;
            self.actions.push(Action::Disconnect {
                id,
                reason: DisconnectReason::Silent,
            });
        }
        self.failed_dials
            .retain(|_, at| now.duration_since(*at) < DIAL_FAILURE_BACKOFF);
        if !self.config.discovery {
            return;
        }
        // Below the minimum, or a stripe has no parent among the neighbours: meet more peers.
        let orphaned = !self.config.source
            && self.stripes.iter().any(|s| s.parent.is_none())
            && self.window.live_epoch().is_some();
        let mut wanted = self.config.active_min.saturating_sub(self.neighbours.len());
        // Starving: joined a while ago and still nothing. The neighbours we have cannot or
        // will not feed us (a newcomer that landed among liars): drop the worst and ask the
        // bootstrap peers again for others. (A node that had the stream and lost a parent is
        // repaired by its trees instead: dropping neighbours then only makes churn worse.)
        let starving =
            !self.config.source && self.last_new_chunk.is_none() && now.duration_since(self.started) > STARVING_AFTER;
        if starving {
            // Landed among liars (they dial whoever they hear of): shed them, and keep them off
            // for a while, so room is left for peers that can feed us.
            for liar in self.liars(now) {
                self.evict(liar, DisconnectReason::NoChunks);
                self.banned.insert(liar, now + LIAR_BAN);
            }
        }
        if starving && self.rotate_out_one(now) {
            let bootstrap = self.bootstrap.clone();
            for addr in &bootstrap {
                self.learn(std::slice::from_ref(addr));
            }
            self.failed_dials.retain(|a, _| !bootstrap.contains(a));
            wanted = wanted.max(1);
        } else if orphaned {
            if self.neighbours.len() < self.config.limits.max_neighbours + ORPHAN_EXTRA {
                wanted = wanted.max(1);
            } else {
                // Full of neighbours none of which can feed us: let the least useful go.
                self.rotate_out_one(now);
            }
        }
        let room = DIALS_IN_FLIGHT.saturating_sub(self.dialling.len()).min(wanted);
        for _ in 0..room {
            let candidates: Vec<SocketAddr> = self
                .passive
                .iter()
                .map(|p| p.1)
                .filter(|a| !self.dialling.contains_key(a) && !self.failed_dials.contains_key(a))
                .collect();
            let Some(addr) = candidates.choose(&mut self.rng).copied() else {
                break;
            };
            self.dialling.insert(addr, now);
            self.actions.push(Action::Dial(addr));
        }
        // A dial that never reported back is given up on.
        self.dialling
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(10));

        if self
            .last_pex
            .is_none_or(|t| now.duration_since(t) >= self.config.pex_interval)
        {
            self.last_pex = Some(now);
            let passive = &self.passive;
            self.introduced.retain(|addr, _| passive.iter().any(|p| p.1 == *addr));
            let ids: Vec<NodeId> = self.neighbours.keys().copied().collect();
            if let Some(to) = ids.choose(&mut self.rng).copied() {
                let peers = self.pex_sample(Some(to));
                if !peers.is_empty() {
                    self.actions.push(Action::Send {
                        to,
                        msg: Message::Pex { peers },
                    });
                }
            }
        }
    }
}
