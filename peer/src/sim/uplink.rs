//! A node's upload link in the simulator: one transmission at a time at the node's upload
//! rate, control messages first, then the newest chunk; a chunk past its deadline is
//! dropped instead of sent. Loss and retransmission are per 1200-byte packet, as in QUIC.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use shoal_proto::{Chunk, Message};

pub const PACKET_BYTES: usize = 1200;

#[derive(Debug, Clone)]
pub enum Payload {
    Control(Message),
    /// A chunk, and whether its signature is forged.
    Chunk(Chunk, bool),
}

pub struct Queued {
    pub to: usize,
    /// Boxed: queue and event heap entries stay small, so reordering them is cheap.
    pub payload: Box<Payload>,
    pub bytes: usize,
    /// Virtual µs after which the chunk is not worth sending.
    pub deadline: u64,
    /// Sending order, computed once: control first in the order queued, then chunks newest
    /// first.
    key: (u8, u64, std::cmp::Reverse<u64>),
}

impl Queued {
    fn key(&self) -> (u8, u64, std::cmp::Reverse<u64>) {
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
    queue: BinaryHeap<Queued>,
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
            Payload::Control(_) => (1, u64::MAX, std::cmp::Reverse(self.order)),
            Payload::Chunk(c, _) => (0, c.header.timestamp_us, std::cmp::Reverse(self.order)),
        };
        self.queue.push(Queued {
            to,
            payload: Box::new(payload),
            bytes,
            deadline,
            key,
        });
    }

    /// The next thing worth sending at `now`; expired chunks are dropped on the way.
    pub fn pop(&mut self, now: u64) -> Option<Queued> {
        while let Some(q) = self.queue.pop() {
            if matches!(*q.payload, Payload::Chunk(..)) && now > q.deadline {
                self.expired += 1;
                continue;
            }
            return Some(q);
        }
        None
    }

    /// Drops everything queued towards `to` (the link is gone).
    pub fn forget(&mut self, to: usize) {
        self.queue.retain(|q| q.to != to);
    }

    /// Transmission time of `bytes` in µs.
    pub fn tx_us(&self, bytes: usize) -> u64 {
        (bytes as f64 / self.bytes_per_us).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::chunk;

    #[test]
    fn control_first_then_newest_chunk_and_expired_chunks_dropped() {
        let mut up = Uplink::new(8e6);
        up.push(1, Payload::Chunk(chunk(1, 1, 1_000, 0), false), 200, 10);
        up.push(1, Payload::Chunk(chunk(1, 2, 2_000, 0), false), 200, 1_000);
        up.push(1, Payload::Control(Message::Goodbye { reason: 0 }), 6, u64::MAX);
        up.push(1, Payload::Chunk(chunk(1, 3, 3_000, 0), false), 200, 1_000);
        let order: Vec<String> = std::iter::from_fn(|| up.pop(100))
            .map(|q| match *q.payload {
                Payload::Control(_) => "control".to_string(),
                Payload::Chunk(c, _) => format!("seq {}", c.header.seq),
            })
            .collect();
        // Seq 1's deadline (10 µs) passed while it waited: it is never sent.
        assert_eq!(order, ["control", "seq 3", "seq 2"]);
        assert_eq!(up.expired, 1);
        assert_eq!(up.tx_us(1000), 1000);
    }
}
