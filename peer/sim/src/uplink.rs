//! A node's upload link in the simulator: one transmission at a time at the node's upload
//! rate, control messages first, then the newest chunk; a chunk past its deadline is
//! dropped instead of sent. Loss and retransmission are per 1200-byte packet, as in QUIC.
//! Control messages waiting for the same neighbour go out together, as bytes waiting on one
//! QUIC stream share packets.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use shoal_proto::{Chunk, Message};

pub const PACKET_BYTES: usize = 1200;

#[derive(Debug, Clone)]
pub enum Payload {
    /// Control messages for one neighbour, in the order sent.
    Control(Vec<Message>),
    /// A chunk, and whether its signature is forged.
    Chunk(Arc<Chunk>, bool),
}

pub struct Queued {
    pub to: usize,
    /// Inline, not boxed: a box would be one more cold cache line to fetch per arrival.
    pub payload: Payload,
    pub bytes: usize,
    /// Virtual µs after which the chunk is not worth sending.
    pub deadline: u64,
    /// Chunk sending order, computed once: newest first, then first queued.
    key: (u64, std::cmp::Reverse<u64>),
}

impl Queued {
    fn key(&self) -> (u64, std::cmp::Reverse<u64>) {
        self.key
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

#[derive(Default)]
pub struct Uplink {
    pub bytes_per_us: f64,
    pub busy: bool,
    control: VecDeque<Queued>,
    chunks: BinaryHeap<Queued>,
    order: u64,
    /// Chunks dropped because their deadline passed in the queue.
    pub expired: u64,
}

impl Uplink {
    pub fn new(bits_per_s: f64) -> Self {
        Uplink {
            bytes_per_us: bits_per_s / 8.0 / 1e6,
            ..Uplink::default()
        }
    }

    pub fn push(&mut self, to: usize, payload: Payload, bytes: usize, deadline: u64) {
        self.order += 1;
        let key = match &payload {
            Payload::Control(messages) => {
                if let Some(waiting) = self.control.iter_mut().find(|q| q.to == to)
                    && let Payload::Control(batch) = &mut waiting.payload
                {
                    batch.extend_from_slice(messages);
                    waiting.bytes += bytes;
                    return;
                }
                (u64::MAX, std::cmp::Reverse(self.order))
            }
            Payload::Chunk(c, _) => (c.header.timestamp_us, std::cmp::Reverse(self.order)),
        };
        let queued = Queued {
            to,
            payload,
            bytes,
            deadline,
            key,
        };
        match queued.payload {
            Payload::Control(_) => self.control.push_back(queued),
            Payload::Chunk(..) => self.chunks.push(queued),
        }
    }

    /// The next thing worth sending at `now`; expired chunks are dropped on the way.
    pub fn pop(&mut self, now: u64) -> Option<Queued> {
        if let Some(q) = self.control.pop_front() {
            return Some(q);
        }
        while let Some(q) = self.chunks.pop() {
            if now > q.deadline {
                self.expired += 1;
                continue;
            }
            return Some(q);
        }
        None
    }

    /// Drops everything queued towards `to` (the link is gone).
    pub fn forget(&mut self, to: usize) {
        self.control.retain(|q| q.to != to);
        self.chunks.retain(|q| q.to != to);
    }

    /// Transmission time of `bytes` in µs.
    pub fn tx_us(&self, bytes: usize) -> u64 {
        (bytes as f64 / self.bytes_per_us).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::testing::chunk;

    #[test]
    fn control_first_then_newest_chunk_and_expired_chunks_dropped() {
        let mut up = Uplink::new(8e6);
        up.push(1, Payload::Chunk(chunk(1, 1, 1_000, 0), false), 200, 10);
        up.push(1, Payload::Chunk(chunk(1, 2, 2_000, 0), false), 200, 1_000);
        up.push(1, Payload::Control(vec![Message::Goodbye { reason: 0 }]), 6, u64::MAX);
        up.push(1, Payload::Chunk(chunk(1, 3, 3_000, 0), false), 200, 1_000);
        up.push(2, Payload::Control(vec![Message::Goodbye { reason: 2 }]), 6, u64::MAX);
        up.push(1, Payload::Control(vec![Message::Goodbye { reason: 1 }]), 6, u64::MAX);
        let order: Vec<String> = std::iter::from_fn(|| up.pop(100))
            .map(|q| match q.payload {
                Payload::Control(batch) => format!("control to {}: {} messages, {} bytes", q.to, batch.len(), q.bytes),
                Payload::Chunk(c, _) => format!("seq {}", c.header.seq),
            })
            .collect();
        // Seq 1's deadline (10 µs) passed while it waited: it is never sent. The two control
        // messages for node 1 went out together, ahead of the one for node 2 queued between.
        assert_eq!(
            order,
            [
                "control to 1: 2 messages, 12 bytes",
                "control to 2: 1 messages, 6 bytes",
                "seq 3",
                "seq 2"
            ]
        );
        assert_eq!(up.expired, 1);
        assert_eq!(up.tx_us(1000), 1000);
    }
}
