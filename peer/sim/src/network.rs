//! The network model: per-link latency and jitter, per-1200-byte packet loss with
//! retransmission after about an RTT (costing upload again), one transmission at a time on
//! each node's capped uplink, and arrival at the other end.

use rand::Rng;
use shoal_core::state::{Event, Reject};
use shoal_proto::Message;

use super::uplink::{PACKET_BYTES, Payload};
use super::{Ev, Role, Sim, node_id};

impl Sim {
    pub(crate) fn one_way_us(&mut self) -> u64 {
        let jitter = if self.cfg.jitter_ms > 0 {
            self.rng.random_range(0..=self.cfg.jitter_ms * 1000)
        } else {
            0
        };
        self.cfg.rtt_ms * 500 + jitter
    }

    /// Bytes `msg` takes on the wire, encoded into a reused buffer.
    pub(crate) fn frame_len(&mut self, msg: &Message) -> usize {
        self.scratch.clear();
        msg.encode_frame(&mut self.scratch);
        self.scratch.len()
    }

    pub(crate) fn enqueue(&mut self, from: usize, to: usize, payload: Payload, bytes: usize, deadline: u64) {
        if !self.links.contains(&(from.min(to), from.max(to))) {
            return;
        }
        self.nodes[from].uplink.push(to, payload, bytes, deadline);
    }

    /// Starts the next transmission on `n`'s uplink if it is idle.
    pub(crate) fn transmit(&mut self, n: usize) {
        if self.nodes[n].uplink.busy || !self.nodes[n].online {
            return;
        }
        let Some(q) = self.nodes[n].uplink.pop(self.now) else {
            return;
        };
        // Every lost packet is sent again (costing upload) after about an RTT.
        let packets = q.bytes.div_ceil(PACKET_BYTES);
        let mut resent = 0usize;
        let mut delay = 0u64;
        if self.cfg.loss > 0.0 {
            for _ in 0..packets {
                let mut tries = 0u64;
                while self.rng.random::<f64>() < self.cfg.loss && tries < 8 {
                    tries += 1;
                }
                resent += tries as usize;
                delay = delay.max(tries * (self.cfg.rtt_ms * 1000 * 5 / 4 + 1000));
            }
        }
        let wire = q.bytes + resent * PACKET_BYTES.min(q.bytes);
        let tx = self.nodes[n].uplink.tx_us(wire);
        match &q.payload {
            Payload::Chunk(..) => self.nodes[n].sent_data += wire as u64,
            Payload::Control(_) => self.nodes[n].sent_control += wire as u64,
        }
        self.nodes[n].uplink.busy = true;
        self.schedule(self.now + tx, Ev::TxDone(n));
        let arrive = self.now + tx + self.one_way_us() + delay;
        self.schedule(
            arrive,
            Ev::Arrive {
                to: q.to,
                from: n,
                payload: q.payload,
            },
        );
    }

    pub(crate) fn arrive(&mut self, to: usize, from: usize, payload: Payload) {
        if !self.nodes[to].online || !self.links.contains(&(from.min(to), from.max(to))) {
            return;
        }
        match &mut self.nodes[to].role {
            Role::Evil(evil) => {
                let out = evil.receive(from, &payload);
                self.evil_out(to, out);
            }
            Role::Honest(_) => match payload {
                Payload::Control(messages) => {
                    for msg in messages {
                        self.feed(
                            to,
                            Event::Control {
                                from: node_id(from),
                                msg,
                            },
                        );
                    }
                }
                // The driver verifies signatures before the core sees a chunk.
                Payload::Chunk(_, true) => self.feed(
                    to,
                    Event::Rejected {
                        from: node_id(from),
                        reason: Reject::BadSignature,
                    },
                ),
                Payload::Chunk(chunk, false) => {
                    self.feed(
                        to,
                        Event::Chunk {
                            from: node_id(from),
                            chunk,
                        },
                    );
                }
            },
        }
    }
}
