//! Hole punching: two peers that cannot reach each other directly (each behind a NAT that
//! lets in only replies) connect by dialling each other at the same moment. The one whose
//! dial failed asks the neighbour that told it about the other (INTRODUCE); that neighbour,
//! connected to both, tells the other where it sees the first (PUNCH), and both dial. Each
//! side's outgoing packets open its NAT for the other's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;
use shoal_proto::{Message, NodeId};

use super::neighbourhood::Neighbourhood;
use super::{Action, Counters, Outbox};

/// A punch that has not connected in this long failed.
const PUNCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Punches in flight at most (each costs a dial): a neighbour naming addresses cannot make
/// this node dial more than this many at once.
const PUNCHES_IN_FLIGHT: usize = 4;
/// Addresses of a PUNCH dialled at most.
const PUNCH_ADDRS: usize = 2;

#[derive(Debug, Default)]
pub(super) struct Punches {
    /// Address learnt by peer exchange → (the neighbour that told us, the node there).
    introduced: HashMap<SocketAddr, (NodeId, NodeId)>,
    /// Peers we are punching towards, since when.
    punching: HashMap<NodeId, Instant>,
}

impl Punches {
    /// Neighbour `by` told us `node` is at `addr`: it can introduce us if dialling fails.
    pub fn introduced_by(&mut self, by: NodeId, addr: SocketAddr, node: NodeId, max: usize) {
        if self.introduced.len() < max {
            self.introduced.insert(addr, (by, node));
        }
    }

    /// Forgets introductions to addresses no longer kept.
    pub fn retain_known(&mut self, view: &Neighbourhood) {
        self.introduced.retain(|addr, _| view.is_passive(addr));
    }

    /// A dial to `addr` failed. If a neighbour introduced that peer, ask it to have the peer
    /// dial us, and dial again at once; true if so (then it is not a failure yet).
    pub fn after_failed_dial(
        &mut self,
        addr: SocketAddr,
        view: &Neighbourhood,
        now: Instant,
        out: &mut Outbox,
    ) -> bool {
        let Some((introducer, target)) = self.introduced.remove(&addr) else {
            return false;
        };
        if !view.contains(&introducer) || view.contains(&target) || self.punching.len() >= PUNCHES_IN_FLIGHT {
            return false;
        }
        self.punching.insert(target, now);
        out.counters.punch_attempts += 1;
        out.send(introducer, Message::Introduce { target });
        // Not counted among the dials in flight: finding other neighbours goes on meanwhile.
        out.push(Action::Dial(addr));
        true
    }

    /// `from` asks to be introduced to our neighbour `target`: tell `target` where we see
    /// `from` (its NAT's address for it) and where it listens.
    pub fn on_introduce(&self, from: NodeId, target: NodeId, view: &Neighbourhood, out: &mut Outbox) {
        if from == target || !view.contains(&target) {
            return;
        }
        let Some(addrs) = view.get(&from).map(|n| n.reachable_addrs()) else {
            return;
        };
        out.counters.introductions += 1;
        out.send(target, Message::Punch { peer: from, addrs });
    }

    /// A neighbour says `peer` (not us) is dialling us now: dial it back at once (at most
    /// `PUNCH_ADDRS` of its addresses, none of our own).
    pub fn on_punch(
        &mut self,
        peer: NodeId,
        addrs: &[SocketAddr],
        own: &[SocketAddr],
        view: &mut Neighbourhood,
        now: Instant,
        out: &mut Outbox,
    ) {
        if view.is_banned(&peer, now) || view.contains(&peer) || self.punching.len() >= PUNCHES_IN_FLIGHT {
            return;
        }
        self.punching.insert(peer, now);
        out.counters.punch_attempts += 1;
        for addr in addrs.iter().take(PUNCH_ADDRS) {
            if !own.contains(addr) && view.dialling_to(*addr, now) {
                out.push(Action::Dial(*addr));
            }
        }
    }

    /// A neighbour came up: if we were punching towards it, that worked.
    pub fn connected(&mut self, id: NodeId, counters: &mut Counters) {
        if self.punching.remove(&id).is_some() {
            counters.punch_succeeded += 1;
        }
    }

    /// Punches that never connected are counted as failed.
    pub fn expire(&mut self, now: Instant, counters: &mut Counters) {
        let before = self.punching.len();
        self.punching
            .retain(|_, since| now.duration_since(*since) < PUNCH_TIMEOUT);
        counters.punch_failed += (before - self.punching.len()) as u64;
    }
}
