//! Who a node talks to: a bounded active set of connected neighbours with what each told us
//! and showed us, a larger passive list of addresses learnt by peer exchange (HyParView),
//! dialling to refill the active set, bans, and turning newcomers away (with addresses to try
//! instead) when full.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rustc_hash::FxHashMap as HashMap;
use shoal_proto::message::{MAX_ADDRS, MAX_PEX_PEERS, NO_DEPTH};
use shoal_proto::{NodeId, PeerInfo};

use super::Config;
use super::guard::Budgets;
use crate::limits::EXTRA_FOR_CHILDREN;
use crate::seqset::SeqSet;

/// Dials started per tick at most, and dials in flight at most.
const DIALS_IN_FLIGHT: usize = 3;
/// Extra neighbours an orphaned node may dial to find a parent with room.
const ORPHAN_EXTRA: usize = 4;
/// Least time between two neighbours let go to make room for better ones.
const ROTATE_INTERVAL: Duration = Duration::from_secs(2);
/// Peers sent in one PEX message.
const PEX_SAMPLE: usize = 8;
/// How long an address that failed to answer is not dialled again.
const DIAL_FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// A dial that never reported back is given up on after this long.
const DIAL_GIVE_UP: Duration = Duration::from_secs(10);
/// A neighbour silent this long is gone, whatever the transport still thinks: every
/// neighbour sends STATUS at least once a second. (A QUIC idle timeout takes longer, and a
/// dead parent near the source starves everyone below it until it is noticed.)
const SILENT_FOR: Duration = Duration::from_millis(2500);
/// First wait before dialling a pinned address again, doubling up to `PIN_BACKOFF_MAX`.
const PIN_BACKOFF: Duration = Duration::from_millis(250);
const PIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection to a pinned address that lasted this long was a working one: the next
/// re-dial starts from the shortest wait again.
const PIN_STEADY: Duration = Duration::from_secs(10);
/// Pinned addresses kept at most (the DHT may keep telling new ones): the oldest go first.
const MAX_PINNED: usize = 32;
/// A neighbour counts as on the stream if it announced a fresh chunk this recently.
const FRESH_WITHIN: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(super) struct Neighbour {
    pub addr: SocketAddr,
    pub listen: Vec<SocketAddr>,
    /// Chunks of the live epoch it holds (sent us, announced, or was sent by us).
    pub has: SeqSet,
    /// Its hop count from the source per stripe, as it last told us.
    pub depths: Vec<u8>,
    /// Its children per stripe, as it last told us.
    pub children: Vec<u8>,
    /// Its upload capacity (0 if unknown) and how many more children it can take.
    pub upload_kbps: u32,
    pub free_slots: u16,
    /// The stream's rate as it measures it (kbit/s, 0 if not yet).
    pub stream_kbps: u32,
    /// Seq of the newest segment start it told us about.
    pub segment_start: Option<(u64, u64)>,
    /// Requests it left unanswered: a neighbour that lies in HAVE is asked last.
    pub unanswered: u32,
    /// Times it went quiet as our parent.
    pub parent_failures: u32,
    /// When it last announced a chunk near the live edge (only such neighbours are parents).
    pub fresh: Option<Instant>,
    /// When it last sent anything at all.
    pub heard: Option<Instant>,
    /// When it became a neighbour.
    pub since: Option<Instant>,
    /// What it may still send us before it counts as flooding (`guard.rs`).
    pub budgets: Budgets,
}

impl Neighbour {
    pub fn new(addr: SocketAddr, listen: Vec<SocketAddr>, stripes: u8) -> Self {
        Neighbour {
            addr,
            listen,
            has: SeqSet::default(),
            depths: vec![NO_DEPTH; usize::from(stripes)],
            children: vec![0; usize::from(stripes)],
            upload_kbps: 0,
            free_slots: 0,
            stream_kbps: 0,
            segment_start: None,
            unanswered: 0,
            parent_failures: 0,
            fresh: None,
            heard: None,
            since: None,
            budgets: Budgets::default(),
        }
    }

    /// Where others can reach it, best first: the address we see it at (behind a NAT, its
    /// public one; its own list holds only private ones), then those it listens on.
    pub fn reachable_addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.listen.iter().copied().filter(|a| *a != self.addr))
            .take(MAX_ADDRS)
            .collect()
    }

    /// Nearest it says it is to the source in any stripe.
    pub fn min_depth(&self) -> u8 {
        self.depths.iter().copied().min().unwrap_or(NO_DEPTH)
    }
}

/// An address given at start (bootstrap peers, a ticket's, the DHT's): dialled whenever this
/// node is not connected to whoever is there, with a growing wait between tries.
#[derive(Debug)]
struct Pinned {
    addr: SocketAddr,
    /// No dial before this.
    next: Option<Instant>,
    backoff: Duration,
    /// A dial is under way.
    dialling: bool,
    /// Connected since then.
    up_since: Option<Instant>,
}

impl Pinned {
    fn is(&self, addr: SocketAddr, listen: &[SocketAddr]) -> bool {
        self.addr == addr || listen.contains(&self.addr)
    }

    /// Not connected any more (or the dial failed): try again after the current wait.
    fn retry_later(&mut self, now: Instant) {
        if self
            .up_since
            .take()
            .is_some_and(|t| now.duration_since(t) >= PIN_STEADY)
        {
            self.backoff = PIN_BACKOFF;
        }
        self.dialling = false;
        self.next = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(PIN_BACKOFF_MAX);
    }
}

pub(super) struct Neighbourhood {
    me: NodeId,
    /// The active set: connected neighbours.
    pub active: HashMap<NodeId, Neighbour>,
    /// Known addresses not connected (node ID when known).
    passive: Vec<(Option<NodeId>, SocketAddr)>,
    dialling: HashMap<SocketAddr, Instant>,
    failed_dials: HashMap<SocketAddr, Instant>,
    banned: HashMap<NodeId, Instant>,
    /// Addresses given at start, re-dialled whenever not connected.
    pinned: Vec<Pinned>,
    last_pex: Option<Instant>,
    last_rotation: Option<Instant>,
    rng: SmallRng,
}

impl Neighbourhood {
    pub fn new(me: NodeId, seed: u64) -> Self {
        Neighbourhood {
            me,
            active: HashMap::default(),
            passive: Vec::new(),
            dialling: HashMap::default(),
            failed_dials: HashMap::default(),
            banned: HashMap::default(),
            pinned: Vec::new(),
            last_pex: None,
            last_rotation: None,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    pub fn get(&self, id: &NodeId) -> Option<&Neighbour> {
        self.active.get(id)
    }

    pub fn get_mut(&mut self, id: &NodeId) -> Option<&mut Neighbour> {
        self.active.get_mut(id)
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.active.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.active.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Neighbour)> {
        self.active.iter()
    }

    /// Its advertised upload (0 if unknown or not a neighbour): who goes first, who is asked.
    /// The stream's rate as the neighbours that measured it tell it (bit/s): their median,
    /// so a minority that lies moves it little (and nothing once our own measure stands).
    pub fn told_stream_bps(&self) -> Option<f64> {
        let mut told: Vec<u32> = self.active.values().map(|n| n.stream_kbps).filter(|k| *k > 0).collect();
        if told.is_empty() {
            return None;
        }
        told.sort_unstable();
        Some(f64::from(told[(told.len() - 1) / 2]) * 1000.0)
    }

    pub fn strength(&self, id: &NodeId) -> u32 {
        self.active.get(id).map_or(0, |n| n.upload_kbps)
    }

    pub fn is_banned(&self, id: &NodeId, now: Instant) -> bool {
        self.banned.get(id).is_some_and(|until| *until > now)
    }

    /// Banned until `until`: not admitted, not learnt from PEX, dropped from the passive list.
    pub fn ban(&mut self, id: NodeId, until: Instant) {
        self.banned.insert(id, until);
        self.passive.retain(|p| p.0 != Some(id));
    }

    /// Keeps `id` out until `until` without touching what else is known of it.
    pub fn keep_out(&mut self, id: NodeId, until: Instant) {
        self.banned.insert(id, until);
    }

    /// A connection came up from or to one of these addresses: no longer being dialled.
    pub fn dialled(&mut self, addr: SocketAddr, listen: &[SocketAddr]) {
        for a in listen {
            self.dialling.remove(a);
        }
        self.dialling.remove(&addr);
    }

    /// A dial to `addr` is under way (for a punch: not counted against the dials in flight).
    pub fn dialling_to(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if self.dialling.contains_key(&addr) {
            return false;
        }
        self.dialling.insert(addr, now);
        true
    }

    /// Whether a newcomer dialling in finds room: a node with room for children accepts
    /// beyond the usual bound, up to a hard cap, since its children must be its neighbours.
    pub fn has_room(&self, config: &Config, room_for_children: bool) -> bool {
        let limit = if room_for_children {
            config.limits.max_neighbours + EXTRA_FOR_CHILDREN
        } else {
            config.limits.max_neighbours
        };
        self.active.len() < limit
    }

    /// Takes a connected peer into the active set.
    pub fn admit(&mut self, id: NodeId, addr: SocketAddr, listen: Vec<SocketAddr>, stripes: u8, now: Instant) {
        for p in self.pinned.iter_mut().filter(|p| p.is(addr, &listen)) {
            p.dialling = false;
            p.up_since = Some(now);
        }
        self.passive.retain(|p| !listen.contains(&p.1));
        let mut neighbour = Neighbour::new(addr, listen, stripes);
        neighbour.heard = Some(now);
        neighbour.since = Some(now);
        self.active.insert(id, neighbour);
    }

    /// Drops a neighbour from the active set; its addresses are kept for later when `keep`.
    pub fn remove(&mut self, id: &NodeId, config: &Config, keep: bool, now: Instant) -> Option<Neighbour> {
        let n = self.active.remove(id)?;
        for p in self.pinned.iter_mut().filter(|p| p.is(n.addr, &n.listen)) {
            p.retry_later(now);
        }
        // It may come back: keep its address for later, behind fresher ones.
        if keep && config.discovery {
            self.learn(&n.listen, config);
        }
        Some(n)
    }

    /// A dial failed: that address is not tried again for a while.
    pub fn dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        self.passive.retain(|p| p.1 != addr);
        self.failed_dials.insert(addr, now);
    }

    /// A dial to `addr` ended without a connection.
    pub fn dial_ended(&mut self, addr: SocketAddr, now: Instant) {
        self.dialling.remove(&addr);
        for p in self.pinned.iter_mut().filter(|p| p.addr == addr) {
            p.retry_later(now);
        }
    }

    /// Pins addresses (bootstrap peers, a ticket's, the DHT's): dialled at once, and again
    /// whenever this node is not connected to whoever is there.
    pub fn pin(&mut self, addrs: &[SocketAddr], config: &Config) {
        for addr in addrs {
            if config.listen.contains(addr) || self.pinned.iter().any(|p| p.addr == *addr) {
                continue;
            }
            if self.pinned.len() == MAX_PINNED {
                self.pinned.remove(0);
            }
            self.pinned.push(Pinned {
                addr: *addr,
                next: None,
                backoff: PIN_BACKOFF,
                dialling: false,
                up_since: None,
            });
        }
    }

    /// Pinned addresses due a dial: not connected, not being dialled, their wait over. With
    /// `wanted` false only the bookkeeping runs (dials that never reported back are given up).
    pub fn dial_pinned(&mut self, wanted: bool, now: Instant) -> Vec<SocketAddr> {
        let mut dials = Vec::new();
        for p in &mut self.pinned {
            let connected = self.active.values().any(|n| p.is(n.addr, &n.listen));
            if !wanted || connected || p.dialling || p.next.is_some_and(|t| now < t) {
                continue;
            }
            p.dialling = true;
            p.next = Some(now + DIAL_GIVE_UP); // if it never reports back
            dials.push(p.addr);
        }
        // A dial that never reported back is given up on.
        for p in &mut self.pinned {
            if p.dialling && p.next.is_some_and(|t| now >= t) {
                p.retry_later(now);
            }
        }
        dials
    }

    /// Adds the first of `addrs` to the passive list (newest last, bounded).
    pub fn learn(&mut self, addrs: &[SocketAddr], config: &Config) {
        for addr in addrs.iter().take(1) {
            if config.listen.contains(addr) || self.passive.iter().any(|p| p.1 == *addr) {
                continue;
            }
            if self.active.values().any(|n| n.listen.contains(addr)) {
                continue;
            }
            self.passive.push((None, *addr));
        }
        let excess = self.passive.len().saturating_sub(config.passive_max);
        if excess > 0 {
            self.passive.drain(..excess);
        }
    }

    /// Peers a neighbour told us about: learnt, with their node IDs. Returns the addresses
    /// learnt and who is there (the one that told us can introduce us: `punch.rs`).
    pub fn on_pex(&mut self, peers: Vec<PeerInfo>, config: &Config) -> Vec<(SocketAddr, NodeId)> {
        let mut learnt = Vec::new();
        if !config.discovery {
            return learnt;
        }
        for peer in peers {
            if peer.node_id == self.me
                || self.active.contains_key(&peer.node_id)
                || self.banned.contains_key(&peer.node_id)
            {
                continue;
            }
            self.learn(&peer.addrs, config);
            if let Some(entry) = self.passive.iter_mut().find(|p| peer.addrs.first() == Some(&p.1)) {
                entry.0 = Some(peer.node_id);
                learnt.push((entry.1, peer.node_id));
            }
        }
        learnt
    }

    pub fn is_passive(&self, addr: &SocketAddr) -> bool {
        self.passive.iter().any(|p| p.1 == *addr)
    }

    /// Up to `PEX_SAMPLE` peers (neighbours and passive ones) with their addresses.
    pub fn pex_sample(&mut self, exclude: Option<NodeId>) -> Vec<PeerInfo> {
        // First the neighbours nearest the source that have room for children: that is where
        // a newcomer should attach for a shallow tree. Then a random few, for a mixed graph.
        let mut near: Vec<(u8, u16, NodeId)> = self
            .active
            .iter()
            .filter(|(id, n)| {
                Some(**id) != exclude && !n.listen.is_empty() && n.free_slots > 0 && n.parent_failures == 0
            })
            .map(|(id, n)| (n.min_depth(), n.free_slots, *id))
            .collect();
        near.sort_by_key(|(depth, free, id)| (*depth, u16::MAX - free, *id));
        let chosen: Vec<NodeId> = near.iter().take(PEX_SAMPLE / 2).map(|(_, _, id)| *id).collect();
        // The random rest: picked before any address list is built (the passive list is long).
        let mut others: Vec<(NodeId, Option<SocketAddr>)> = self
            .active
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
                None => self.active.get(&id)?.reachable_addrs(),
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

    /// Whether a neighbour announced chunks near the live edge lately, judged against when
    /// this node last got a new chunk. Claims of depth from a neighbour that never shows
    /// fresh chunks are not trusted.
    pub fn is_fresh(&self, n: &Neighbour, last_new_chunk: Option<Instant>) -> bool {
        match last_new_chunk {
            Some(newest) => n.fresh.is_some_and(|t| t + FRESH_WITHIN >= newest),
            // Nothing received yet: prefer whoever has shown chunks at all.
            None => n.fresh.is_some() || !self.active.values().any(|m| m.fresh.is_some()),
        }
    }

    /// Neighbours that said nothing for longer than any neighbour may.
    pub fn silent(&self, now: Instant) -> Vec<NodeId> {
        self.active
            .iter()
            .filter(|(_, n)| n.heard.is_some_and(|t| now.duration_since(t) > SILENT_FOR))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Lifts the bans that ran out.
    pub fn expire_bans(&mut self, now: Instant) {
        self.banned.retain(|_, until| *until > now);
    }

    /// Forgets dial failures old enough to try those addresses again.
    pub fn expire_failed_dials(&mut self, now: Instant) {
        self.failed_dials
            .retain(|_, at| now.duration_since(*at) < DIAL_FAILURE_BACKOFF);
    }

    /// Starving: the pinned addresses are dialled again without waiting (whoever is there
    /// may hand us other peers).
    pub fn retry_pinned(&mut self) {
        for p in &mut self.pinned {
            p.next = None;
            p.backoff = PIN_BACKOFF;
        }
    }

    /// Whether an orphaned node may dial beyond its neighbour bound to find a parent.
    pub fn may_dial_for_orphan(&self, config: &Config) -> bool {
        self.active.len() < config.limits.max_neighbours + ORPHAN_EXTRA
    }

    /// True (and the clock restarted) at most once per `ROTATE_INTERVAL`.
    pub fn rotation_due(&mut self, now: Instant) -> bool {
        if self
            .last_rotation
            .is_some_and(|t| now.duration_since(t) <= ROTATE_INTERVAL)
        {
            return false;
        }
        self.last_rotation = Some(now);
        true
    }

    /// Dials up to `wanted` passive addresses, within `DIALS_IN_FLIGHT`; returns them.
    pub fn dial_more(&mut self, wanted: usize, now: Instant) -> Vec<SocketAddr> {
        let room = DIALS_IN_FLIGHT.saturating_sub(self.dialling.len()).min(wanted);
        let mut dials = Vec::new();
        for _ in 0..room {
            let candidates: Vec<SocketAddr> = self
                .passive
                .iter()
                .map(|p| p.1)
                .filter(|a| {
                    !self.dialling.contains_key(a)
                        && !self.failed_dials.contains_key(a)
                        && !self.pinned.iter().any(|p| p.addr == *a)
                })
                .collect();
            let Some(addr) = candidates.choose(&mut self.rng).copied() else {
                break;
            };
            self.dialling.insert(addr, now);
            dials.push(addr);
        }
        self.dialling.retain(|_, at| now.duration_since(*at) < DIAL_GIVE_UP);
        dials
    }

    /// True (and the clock restarted) once per `pex_interval`.
    pub fn pex_due(&mut self, config: &Config, now: Instant) -> bool {
        if self
            .last_pex
            .is_some_and(|t| now.duration_since(t) < config.pex_interval)
        {
            return false;
        }
        self.last_pex = Some(now);
        true
    }

    /// A neighbour picked at random (for a sample of known peers).
    pub fn random_neighbour(&mut self) -> Option<NodeId> {
        let ids: Vec<NodeId> = self.active.keys().copied().collect();
        ids.choose(&mut self.rng).copied()
    }

    /// A new epoch: what neighbours held of the old one says nothing of the new.
    pub fn clear_holdings(&mut self) {
        for n in self.active.values_mut() {
            n.has.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::node;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 7000))
    }

    #[test]
    fn the_passive_list_is_bounded_and_skips_what_is_known() {
        let config = Config {
            passive_max: 3,
            listen: vec![addr(1)],
            ..Config::default()
        };
        let mut view = Neighbourhood::new(node(1), 1);
        view.admit(node(2), addr(2), vec![addr(2)], 4, Instant::now());
        view.learn(&[addr(1)], &config); // our own
        view.learn(&[addr(2)], &config); // a neighbour's
        for n in 3..=6 {
            view.learn(&[addr(n)], &config);
        }
        assert!(!view.is_passive(&addr(1)) && !view.is_passive(&addr(2)));
        assert!(!view.is_passive(&addr(3)), "the oldest goes first");
        assert!((4..=6).all(|n| view.is_passive(&addr(n))));
    }

    #[test]
    fn dials_stay_within_their_bound_and_failed_addresses_rest() {
        let now = Instant::now();
        let config = Config::default();
        let mut view = Neighbourhood::new(node(1), 1);
        for n in 2..=9 {
            view.learn(&[addr(n)], &config);
        }
        let first = view.dial_more(10, now);
        assert_eq!(first.len(), DIALS_IN_FLIGHT);
        assert!(view.dial_more(10, now).is_empty(), "dials in flight fill the bound");
        for a in &first {
            view.dial_ended(*a, now);
            view.dial_failed(*a, now);
        }
        let second = view.dial_more(10, now);
        assert!(second.iter().all(|a| !first.contains(a)), "failed addresses rest");
    }

    #[test]
    fn a_ban_keeps_a_node_out_of_what_peer_exchange_teaches() {
        let now = Instant::now();
        let config = Config::default();
        let mut view = Neighbourhood::new(node(1), 1);
        view.ban(node(5), now + Duration::from_secs(60));
        let learnt = view.on_pex(
            vec![
                PeerInfo {
                    node_id: node(5),
                    addrs: vec![addr(5)],
                },
                PeerInfo {
                    node_id: node(6),
                    addrs: vec![addr(6)],
                },
            ],
            &config,
        );
        assert_eq!(learnt, vec![(addr(6), node(6))]);
        assert!(view.is_banned(&node(5), now));
        view.expire_bans(now + Duration::from_secs(61));
        assert!(!view.is_banned(&node(5), now + Duration::from_secs(61)));
    }
}
