//! One simulated node's I/O: what its core's actions become in the modelled network, by the
//! same `shoal_core::drive` rules as the quinn node's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use shoal_core::Driver;
use shoal_core::state::{DisconnectReason, Verdict};
use shoal_proto::{Chunk, ChunkHeader, Message, NodeId};

use super::uplink::Payload;
use super::{Ev, Sim, index_of};

/// Node `n` of `sim`, carrying out its core's actions.
pub(crate) struct NodeIo<'a> {
    pub sim: &'a mut Sim,
    pub n: usize,
}

impl Driver for NodeIo<'_> {
    fn send(&mut self, to: NodeId, msg: Message) {
        // SHOAL_SIM_TRACE=n: the tree messages and REQUESTs node n sends, and the PRUNEs it
        // is sent.
        let traced = self.sim.trace == Some(self.n)
            && matches!(
                msg,
                Message::Graft { .. } | Message::Prune { .. } | Message::Request { .. }
            )
            || self.sim.trace == Some(index_of(&to)) && matches!(msg, Message::Prune { .. } | Message::Graft { .. });
        if traced {
            eprintln!(
                "tree {} ms: {} -> {}: {msg:?}",
                self.sim.now / 1000,
                self.n,
                index_of(&to)
            );
        }
        let bytes = self.sim.frame_len(&msg);
        self.sim
            .enqueue(self.n, index_of(&to), Payload::Control(vec![msg]), bytes, u64::MAX);
    }

    fn push(&mut self, to: NodeId, chunk: Arc<Chunk>, deadline: Instant) {
        let deadline_us = deadline.saturating_duration_since(self.sim.base).as_micros() as u64;
        let bytes = chunk.encoded_len();
        self.sim
            .enqueue(self.n, index_of(&to), Payload::Chunk(chunk, false), bytes, deadline_us);
    }

    fn deliver(&mut self, chunk: Arc<Chunk>) {
        self.sim.observe_delivery(self.n, &chunk.header);
    }

    fn judged(&mut self, from: NodeId, header: ChunkHeader, verdict: Verdict) {
        let bytes = u64::from(header.payload_len);
        // SHOAL_SIM_WATCH: the chunks the watchers (and the traced node) get, when, from whom.
        if verdict == Verdict::New
            && (self.sim.nodes[self.n].watch.is_some() || self.sim.trace == Some(self.n))
            && std::env::var_os("SHOAL_SIM_WATCH").is_some()
            && let super::Role::Honest(state) = &self.sim.nodes[self.n].role
        {
            let parents = state.parents();
            let s = (header.seq % parents.len() as u64) as usize;
            let latency = (self.sim.now + 1_000_000).saturating_sub(header.timestamp_us) / 1000;
            eprintln!(
                "got {} {} {} from {} parent {:?}",
                self.sim.now / 1000,
                latency,
                header.seq,
                index_of(&from),
                parents[s].map(|p| index_of(&p))
            );
        }
        match verdict {
            Verdict::Duplicate { from_parent } => {
                self.sim.duplicate_data += bytes;
                if from_parent {
                    self.sim.dup_from_parent += bytes;
                }
            }
            Verdict::New | Verdict::Late => self.sim.useful_data += bytes,
        }
    }

    fn dial(&mut self, addr: SocketAddr) {
        self.sim.dial(self.n, addr);
    }

    fn disconnect(&mut self, id: NodeId, _reason: DisconnectReason, linger: bool) {
        let peer = index_of(&id);
        if linger {
            // What was queued goes out first: about a one-way trip and some.
            let delay = self.sim.cfg.rtt_ms * 1000 + 50_000;
            self.sim
                .schedule(self.sim.now + delay, Ev::Close { node: self.n, peer });
        } else {
            self.sim.close(self.n, peer);
        }
    }
}
