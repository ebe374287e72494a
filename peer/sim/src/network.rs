//! The network model: each node sends one item at a time at its sender's pace into its
//! household router's FIFO (which drains at the uplink's rate and drops beyond its depth),
//! then per-link latency and jitter, per-1200-byte packet loss with retransmission after
//! about an RTT (costing upload again), and arrival at the other end; ACKs carry round trips
//! and losses back to the sender's congestion control, queued in the receiver's own router.

use rand::Rng;
use shoal_core::state::{Event, Reject};
use shoal_proto::Message;

use super::InFlight;
use super::router::Passage;
use super::sender::Sender;
use super::uplink::{PACKET_BYTES, Payload, Queued};
use super::{Ev, Role, Sim, index_of, node_id};

/// The quinn node's keep-alive interval and a PING packet's size.
const KEEP_ALIVE_US: u64 = 250_000;
const PING_BYTES: usize = 40;
const SLOW_AFTER_EXPIRED: u32 = 64;

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

    /// Sends what `n` has waiting: control, retransmissions and pings at once (their own
    /// QUIC streams and frames, not paced by the uplink controller), then, if the paced lane
    /// is idle, the newest chunk (or probe padding) at the sender's pace. Everything goes
    /// into the node's router queue (which may drop it), then over the path.
    pub(crate) fn transmit(&mut self, n: usize) {
        if !self.nodes[n].online {
            return;
        }
        // (Without routers, the simulator's first model: one lane at the uplink's rate.)
        if !matches!(self.nodes[n].sender, Sender::Exact) {
            while let Some(q) = self.nodes[n].uplink.pop_control(self.now) {
                self.send(n, q, false);
            }
        }
        if self.nodes[n].uplink.busy {
            return;
        }
        let exact = matches!(self.nodes[n].sender, Sender::Exact);
        let next = if exact {
            self.nodes[n].uplink.pop(self.now)
        } else {
            self.nodes[n].uplink.pop_chunk(self.now)
        };
        let Some(q) = next.or_else(|| self.padding(n)) else {
            return;
        };
        // More chunks wait behind this one: the pace, not the demand, sets what goes out.
        let held = self.nodes[n].uplink.has_chunks();
        self.send(n, q, held);
    }

    /// Sends one item: paced (the lane is busy until its last byte is out) or at once.
    fn send(&mut self, n: usize, q: Queued, held: bool) {
        let paced =
            matches!(self.nodes[n].sender, Sender::Exact) || matches!(q.payload, Payload::Chunk(..) | Payload::Padding);
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
        let node = &mut self.nodes[n];
        node.spoke.insert(q.to, self.now);
        match &q.payload {
            Payload::Chunk(..) => node.sent_data += wire as u64,
            Payload::Control(_) => node.sent_control += wire as u64,
            Payload::Padding => node.sent_padding += wire as u64,
            Payload::Ping => {}
        }
        if !paced {
            let passage = node.router.as_mut().map(|r| r.pass_now(self.now, wire, PACKET_BYTES));
            self.after_router(n, q, wire, resent, delay, self.now, passage);
            return;
        }
        let pace_bps = node.sender.pacing_bps(node.upload_bps);
        if matches!(q.payload, Payload::Chunk(..)) {
            node.sender.sent(wire, held);
        }
        let tx = ((wire as f64 * 8.0 / pace_bps) * 1e6).ceil() as u64;
        node.uplink.busy = true;
        if let Some(router) = &mut node.router {
            router.start(self.now, self.now + tx, wire, PACKET_BYTES);
        }
        node.in_flight = Some(InFlight { q, wire, resent, delay });
        self.schedule(self.now + tx, Ev::TxDone(n));
    }

    /// The paced lane's item is out of the node: what the router made of it.
    pub(crate) fn tx_done(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.uplink.busy = false;
        if let Some(f) = node.in_flight.take() {
            let passage = node.router.as_mut().map(|r| r.finish(self.now));
            self.after_router(n, f.q, f.wire, f.resent, f.delay, self.now, passage);
        }
        self.transmit(n);
    }

    /// After the router: a drop is heard of a round trip after the full queue, and what was
    /// dropped is sent again (the item arrives with its last packet); what got through
    /// arrives over the path and is acknowledged back.
    #[allow(clippy::too_many_arguments)]
    fn after_router(
        &mut self,
        n: usize,
        q: Queued,
        wire: usize,
        resent: usize,
        delay: u64,
        sent_last: u64,
        passage: Option<Passage>,
    ) {
        let leaves = match passage {
            None => sent_last,
            Some(Passage { leaves, dropped: 0 }) => leaves,
            Some(Passage { dropped, .. }) => {
                // (Loss shows when later packets are acknowledged: after the full queue.)
                let again = sent_last + self.cfg.router_queue_ms * 1000 + self.cfg.rtt_ms * 1000 * 5 / 4 + 1000;
                self.schedule(
                    again,
                    Ev::Acked {
                        node: n,
                        path: q.to,
                        bytes: wire.saturating_sub(dropped * PACKET_BYTES) as u64,
                        sent_us: sent_last,
                        rtt_us: 0,
                        one_way_us: 0,
                        lost: (dropped * PACKET_BYTES).min(wire) as u64,
                    },
                );
                if !matches!(q.payload, Payload::Padding | Payload::Ping) {
                    let rest = (dropped * PACKET_BYTES).min(wire);
                    self.schedule(again, Ev::Resend(n, q.with_bytes(rest)));
                }
                return;
            }
        };
        let there = self.one_way_us();
        let arrive = leaves + there + delay;
        if !matches!(self.nodes[n].sender, Sender::Exact) {
            // The ACK comes back over the path, out through the receiver's own uplink: behind
            // whatever its household router holds (a viewer whose household fills its uplink
            // acknowledges everything it receives that much later).
            // QUIC samples a round trip per packet, from when that packet was sent: the last
            // packet's, here (its wait in the router and the path, not the item's pacing).
            let ack_wait = self.nodes[q.to].router.as_ref().map_or(0, |r| r.backlog_us(self.now));
            let rtt_us = leaves.saturating_sub(sent_last) + there + ack_wait + self.one_way_us();
            // The receiver echoes our stamp with its clock (off ours by a constant the base
            // takes away); the echo comes back with the ACK.
            let one_way_us = if self.cfg.one_way_delay {
                let offset = (n as u64 * 7_919 + q.to as u64 * 104_729) % 1_000_000;
                leaves.saturating_sub(sent_last) + there + offset + 1
            } else {
                0
            };
            self.schedule(
                sent_last + rtt_us,
                Ev::Acked {
                    node: n,
                    path: q.to,
                    bytes: wire as u64,
                    sent_us: sent_last,
                    rtt_us,
                    one_way_us,
                    // (A lost packet of a small item, a control message, is small too.)
                    lost: (resent * PACKET_BYTES.min(wire)) as u64,
                },
            );
        }
        self.schedule(
            arrive,
            Ev::Arrive {
                to: q.to,
                from: n,
                payload: q.payload,
            },
        );
    }

    /// QUIC's idle timeout and keep-alives, where routers queue: a connection that heard
    /// nothing (no packet, no ACK) for the idle timeout is closed, and one that sent nothing
    /// for a keep-alive interval sends a PING. Behind a full router queue both happen, and
    /// the swarm loses the neighbour.
    pub(crate) fn keep_alive(&mut self, n: usize) {
        if self.cfg.router_queue_ms == 0 {
            return;
        }
        let Role::Honest(state) = &self.nodes[n].role else {
            return;
        };
        let neighbours: Vec<usize> = state.neighbours().map(|(id, _)| index_of(&id)).collect();
        // The quinn node drops a neighbour that let 64 chunks in a row expire in its queue
        // (link.rs), unless its own pacer held them.
        if !matches!(self.nodes[n].sender, Sender::Controlled(_)) {
            for peer in self.nodes[n].uplink.slow(SLOW_AFTER_EXPIRED) {
                self.slow_dropped += 1;
                self.close(n, peer);
                self.feed(n, Event::NeighbourDown { id: node_id(peer) });
            }
        }
        let idle = self.cfg.detect_ms * 1000;
        for peer in neighbours {
            if !self.links.contains(&(n.min(peer), n.max(peer))) {
                continue;
            }
            let node = &self.nodes[n];
            let heard = node.heard.get(&peer).copied().unwrap_or(self.now);
            if self.now.saturating_sub(heard) > idle {
                self.links.remove(&(n.min(peer), n.max(peer)));
                self.nodes[n].uplink.forget(peer);
                self.nodes[n].sender.forget(peer as u64);
                self.idle_timeouts += 1;
                self.feed(n, Event::NeighbourDown { id: node_id(peer) });
                continue;
            }
            let spoke = node.spoke.get(&peer).copied().unwrap_or(self.now);
            if self.now.saturating_sub(spoke) >= KEEP_ALIVE_US {
                self.nodes[n].spoke.insert(peer, self.now);
                self.enqueue(n, peer, Payload::Ping, PING_BYTES, u64::MAX);
            }
        }
        self.transmit(n);
    }

    /// A household's bulk upload: its packets into the node's router, a cut when some are
    /// dropped at the full queue.
    pub(crate) fn household(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let (Some(h), Some(router)) = (&mut node.household, &mut node.router) else {
            return;
        };
        // (A given household uploads whether its viewer runs shoal yet or not.)
        if !node.online && !h.is_scheduled() {
            return;
        }
        let rtt = self.cfg.rtt_ms * 1000 + router.backlog_us(self.now);
        let bytes = h.tick(self.now, rtt);
        if bytes > 0 {
            let passage = router.pass_now(self.now, bytes, PACKET_BYTES);
            if passage.dropped > 0 {
                h.dropped(self.now, rtt, passage.dropped.min(bytes.div_ceil(PACKET_BYTES)));
            }
        }
        self.schedule(self.now + super::household::TICK_US, Ev::Household(n));
    }

    /// Padding while the node's uplink controller probes what the uplink carries: to its
    /// neighbours in turn, a few packets at a time.
    fn padding(&mut self, n: usize) -> Option<Queued> {
        if self.nodes[n].sender.probe_bps() <= 0.0 {
            return None;
        }
        let Role::Honest(state) = &self.nodes[n].role else {
            return None;
        };
        let neighbours: Vec<usize> = state.neighbours().map(|(id, _)| index_of(&id)).collect();
        let node = &mut self.nodes[n];
        node.pad_turn = node.pad_turn.wrapping_add(1);
        let to = *neighbours.get(node.pad_turn % neighbours.len().max(1))?;
        Some(Queued::new(to, Payload::Padding, 4 * PACKET_BYTES, u64::MAX))
    }

    pub(crate) fn arrive(&mut self, to: usize, from: usize, payload: Payload) {
        if !self.nodes[to].online || !self.links.contains(&(from.min(to), from.max(to))) {
            return;
        }
        self.nodes[to].heard.insert(from, self.now);
        match &mut self.nodes[to].role {
            Role::Evil(evil) => {
                let out = evil.receive(from, &payload);
                self.evil_out(to, out);
            }
            Role::Honest(_) => match payload {
                Payload::Padding | Payload::Ping => {}
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
