//! How a driver carries out the core's actions. The quinn node and the simulator turn them
//! into I/O of their own kinds (QUIC streams, a modelled network), but by the same rules:
//! `drive` hands every action to the one method that does it, and decides which hang-ups
//! let queued messages go out first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use shoal_proto::{Chunk, ChunkHeader, Message, NodeId};

use crate::state::{Action, DisconnectReason, Verdict};

/// A driver's I/O, one method per kind of action.
pub trait Driver {
    /// A control message on the neighbour's control stream (in order, never dropped while
    /// the neighbour keeps up).
    fn send(&mut self, to: NodeId, msg: Message);
    /// A chunk on its own stream, newest first; dropped if not sent by `deadline`.
    fn push(&mut self, to: NodeId, chunk: Arc<Chunk>, deadline: Instant);
    /// A new verified chunk for the local consumer.
    fn deliver(&mut self, chunk: Arc<Chunk>);
    /// What became of a chunk a neighbour sent (for latency and duplicate figures).
    fn judged(&mut self, from: NodeId, header: ChunkHeader, verdict: Verdict);
    fn dial(&mut self, addr: SocketAddr);
    /// Hang up on `id`. With `linger`, what was queued for it goes out first.
    fn disconnect(&mut self, id: NodeId, reason: DisconnectReason, linger: bool);
}

/// Carries out `actions` in order.
pub fn drive(actions: impl IntoIterator<Item = Action>, driver: &mut impl Driver) {
    for action in actions {
        match action {
            Action::Send { to, msg } => driver.send(to, msg),
            Action::Push { to, chunk, deadline } => driver.push(to, chunk, deadline),
            Action::Deliver(chunk) => driver.deliver(chunk),
            Action::Judged { from, header, verdict } => driver.judged(from, header, verdict),
            Action::Dial(addr) => driver.dial(addr),
            Action::Disconnect { id, reason } => driver.disconnect(id, reason, lingers(reason)),
        }
    }
}

/// A newcomer turned away (full, or already connected) is handed peers to try instead: that
/// PEX must reach it before the connection closes. Every other hang-up is at once: the
/// neighbour left, went silent, or is not to be heard any more.
fn lingers(reason: DisconnectReason) -> bool {
    matches!(reason, DisconnectReason::Full | DisconnectReason::Duplicate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Reject;

    #[test]
    fn only_a_newcomer_turned_away_hears_what_was_queued_for_it() {
        assert!(lingers(DisconnectReason::Full));
        assert!(lingers(DisconnectReason::Duplicate));
        for reason in [
            DisconnectReason::Goodbye,
            DisconnectReason::Silent,
            DisconnectReason::Banned,
            DisconnectReason::NoChunks,
            DisconnectReason::Rejected(Reject::BadSignature),
        ] {
            assert!(!lingers(reason), "{reason:?}");
        }
    }
}
