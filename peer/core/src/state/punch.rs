//! Hole punching: two peers that cannot reach each other directly (each behind a NAT that
//! lets in only replies) connect by dialling each other at the same moment. The one whose
//! dial failed asks the neighbour that told it about the other (INTRODUCE); that neighbour,
//! connected to both, tells the other where it sees the first (PUNCH), and both dial. Each
//! side's outgoing packets open its NAT for the other's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_proto::{Message, NodeId};

use super::{Action, State};

/// A punch that has not connected in this long failed.
const PUNCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Punches in flight at most (each costs a dial): a neighbour naming addresses cannot make
/// this node dial more than this many at once.
const PUNCHES_IN_FLIGHT: usize = 4;
/// Addresses of a PUNCH dialled at most.
const PUNCH_ADDRS: usize = 2;

impl State {
    /// A dial to `addr` failed. If a neighbour introduced that peer, ask it to have the peer
    /// dial us, and dial again at once; true if so (then it is not a failure yet).
    pub(super) fn punch_after_failed_dial(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let Some((introducer, target)) = self.introduced.remove(&addr) else {
            return false;
        };
        if !self.neighbours.contains_key(&introducer)
            || self.neighbours.contains_key(&target)
            || self.punching.len() >= PUNCHES_IN_FLIGHT
        {
            return false;
        }
        self.punching.insert(target, now);
        self.counters.punch_attempts += 1;
        self.actions.push(Action::Send {
            to: introducer,
            msg: Message::Introduce { target },
        });
        // Not counted among the dials in flight: finding other neighbours goes on meanwhile.
        self.actions.push(Action::Dial(addr));
        true
    }

    /// `from` asks to be introduced to our neighbour `target`: tell `target` where we see
    /// `from` (its NAT's address for it) and where it listens.
    pub(super) fn on_introduce(&mut self, from: NodeId, target: NodeId) {
        if from == target || !self.neighbours.contains_key(&target) {
            return;
        }
        let Some(addrs) = self.neighbours.get(&from).map(|n| n.reachable_addrs()) else {
            return;
        };
        self.counters.introductions += 1;
        self.actions.push(Action::Send {
            to: target,
            msg: Message::Punch { peer: from, addrs },
        });
    }

    /// A neighbour says `peer` is dialling us now: dial it back at once.
    pub(super) fn on_punch(&mut self, peer: NodeId, addrs: &[SocketAddr], now: Instant) {
        if peer == self.me
            || self.is_banned(&peer, now)
            || self.neighbours.contains_key(&peer)
            || self.punching.len() >= PUNCHES_IN_FLIGHT
        {
            return;
        }
        self.punching.insert(peer, now);
        self.counters.punch_attempts += 1;
        for addr in addrs.iter().take(PUNCH_ADDRS) {
            if !self.config.listen.contains(addr) && !self.dialling.contains_key(addr) {
                self.dialling.insert(*addr, now);
                self.actions.push(Action::Dial(*addr));
            }
        }
    }

    /// A neighbour came up: if we were punching towards it, that worked.
    pub(super) fn note_punch_success(&mut self, id: NodeId) {
        if self.punching.remove(&id).is_some() {
            self.counters.punch_succeeded += 1;
        }
    }

    /// Punches that never connected are counted as failed.
    pub(super) fn expire_punches(&mut self, now: Instant) {
        let before = self.punching.len();
        self.punching
            .retain(|_, since| now.duration_since(*since) < PUNCH_TIMEOUT);
        self.counters.punch_failed += (before - self.punching.len()) as u64;
    }
}
