//! What a simulated node has waiting to send: one transmission at a time at the pace its
//! sender sets, retransmissions and control messages first, then the newest chunk; a chunk
//! past its deadline is dropped instead of sent. Loss and retransmission are per 1200-byte packet, as in QUIC.
//! Control messages waiting for the same neighbour go out together, as bytes waiting on one
//! QUIC stream share packets.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use shoal_proto::{Chunk, Message};

pub const PACKET_BYTES: usize = 1200;
/// Chunk streams the quinn node keeps open to one neighbour (link.rs).
const STREAMS_IN_FLIGHT: usize = 32;

#[derive(Debug, Clone)]
pub enum Payload {
    /// Control messages for one neighbour, in the order sent.
    Control(Vec<Message>),
    /// A chunk, and whether its signature is forged.
    Chunk(Arc<Chunk>, bool),
    /// Bytes that carry nothing: a probe of what the uplink carries.
    Padding,
    /// QUIC's keep-alive on an otherwise quiet connection.
    Ping,
}

#[derive(Debug)]
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
    /// Something sent outside the chunk order (padding).
    pub fn new(to: usize, payload: Payload, bytes: usize, deadline: u64) -> Self {
        Queued {
            to,
            payload,
            bytes,
            deadline,
            key: (u64::MAX, std::cmp::Reverse(0)),
        }
    }

    /// The same item, now `bytes` long (what is left of it to send again).
    pub fn with_bytes(self, bytes: usize) -> Self {
        Queued { bytes, ..self }
    }

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
    pub busy: bool,
    control: VecDeque<Queued>,
    /// Chunk bytes to send again, before any new chunk.
    again: VecDeque<Queued>,
    /// Newest first across all neighbours (one scheduler for the uplink)...
    chunks: BinaryHeap<Queued>,
    /// ...or, as the quinn node wrote chunks before its uplink controller: each neighbour's
    /// connection takes up to `STREAMS_IN_FLIGHT` chunk streams at once, which then go out
    /// however late (their deadline only covered the write into QUIC, which is immediate),
    /// connections served in turn; further chunks wait newest first and expire.
    per_link: bool,
    links: HashMap<usize, BinaryHeap<Queued>>,
    committed: HashMap<usize, VecDeque<Queued>>,
    turns: VecDeque<usize>,
    order: u64,
    /// Chunks dropped because their deadline passed in the queue.
    pub expired: u64,
    /// Per neighbour, chunks that expired since one was sent.
    expired_in_row: HashMap<usize, u32>,
}

impl Uplink {
    /// Chunks queued per connection, connections served in turn.
    pub fn per_link() -> Self {
        Uplink {
            per_link: true,
            ..Uplink::default()
        }
    }

    pub fn push(&mut self, to: usize, payload: Payload, bytes: usize, deadline: u64) {
        self.order += 1;
        let key = match &payload {
            Payload::Padding | Payload::Ping => (u64::MAX, std::cmp::Reverse(self.order)),
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
            Payload::Control(_) | Payload::Padding | Payload::Ping => self.control.push_back(queued),
            Payload::Chunk(..) if self.per_link => {
                if self.links.get(&to).is_none_or(|h| h.is_empty())
                    && self.committed.get(&to).is_none_or(|c| c.is_empty())
                {
                    self.turns.push_back(to);
                }
                self.links.entry(to).or_default().push(queued);
            }
            Payload::Chunk(..) => self.chunks.push(queued),
        }
    }

    /// Bytes the router dropped, sent again ahead of anything new (QUIC retransmits first):
    /// control at once, chunk bytes first on the paced lane (QUIC's congestion control
    /// paces retransmissions too).
    pub fn push_again(&mut self, to: usize, payload: Payload, bytes: usize, deadline: u64) {
        self.order += 1;
        let key = (u64::MAX, std::cmp::Reverse(self.order));
        let q = Queued {
            to,
            payload,
            bytes,
            deadline,
            key,
        };
        match q.payload {
            Payload::Chunk(..) => self.again.push_back(q),
            _ => self.control.push_front(q),
        }
    }

    /// Chunks wait: whatever paces this uplink is holding them back.
    pub fn has_chunks(&self) -> bool {
        !self.again.is_empty() || !self.chunks.is_empty() || !self.links.is_empty() || !self.committed.is_empty()
    }

    /// Neighbours that let this many chunks in a row expire: too slow to feed.
    pub fn slow(&self, after: u32) -> Vec<usize> {
        self.expired_in_row
            .iter()
            .filter(|(_, n)| **n >= after)
            .map(|(to, _)| *to)
            .collect()
    }

    fn next_chunk(&mut self) -> Option<Queued> {
        if !self.per_link {
            return self.chunks.pop();
        }
        let to = self.turns.pop_front()?;
        let q = self.committed.get_mut(&to).and_then(|c| c.pop_front());
        let waiting = self.links.get(&to).is_some_and(|h| !h.is_empty())
            || self.committed.get(&to).is_some_and(|c| !c.is_empty());
        if waiting {
            self.turns.push_back(to);
        }
        q
    }

    /// Per-link mode: each connection takes up to `STREAMS_IN_FLIGHT` chunks, newest first;
    /// what waits beyond them expires at its deadline.
    fn commit(&mut self, now: u64) {
        if !self.per_link {
            return;
        }
        for (to, heap) in self.links.iter_mut() {
            let committed = self.committed.entry(*to).or_default();
            while committed.len() < STREAMS_IN_FLIGHT {
                let Some(q) = heap.pop() else { break };
                if now > q.deadline {
                    self.expired += 1;
                    *self.expired_in_row.entry(q.to).or_default() += 1;
                    continue;
                }
                committed.push_back(q);
            }
        }
        self.links.retain(|_, h| !h.is_empty());
        self.committed.retain(|_, c| !c.is_empty());
    }

    /// The next thing worth sending at `now`; expired chunks are dropped on the way.
    pub fn pop(&mut self, now: u64) -> Option<Queued> {
        self.pop_control(now).or_else(|| self.pop_chunk(now))
    }

    /// Control messages, retransmissions, pings: what is not paced.
    pub fn pop_control(&mut self, now: u64) -> Option<Queued> {
        while let Some(q) = self.control.pop_front() {
            if matches!(q.payload, Payload::Chunk(..)) && now > q.deadline {
                self.expired += 1; // a retransmission of a chunk whose stream was reset
                continue;
            }
            return Some(q);
        }
        None
    }

    /// The next chunk worth sending at `now` (or padding).
    pub fn pop_chunk(&mut self, now: u64) -> Option<Queued> {
        while let Some(q) = self.again.pop_front() {
            if now > q.deadline {
                self.expired += 1; // its stream was reset
                continue;
            }
            return Some(q);
        }
        self.commit(now);
        while let Some(q) = self.next_chunk() {
            if self.per_link {
                // Committed to QUIC: it goes out, however late.
                self.expired_in_row.remove(&q.to);
                return Some(q);
            }
            if now > q.deadline {
                self.expired += 1;
                *self.expired_in_row.entry(q.to).or_default() += 1;
                continue;
            }
            self.expired_in_row.remove(&q.to);
            return Some(q);
        }
        None
    }

    /// Drops everything queued towards `to` (the link is gone).
    pub fn forget(&mut self, to: usize) {
        self.control.retain(|q| q.to != to);
        self.again.retain(|q| q.to != to);
        self.chunks.retain(|q| q.to != to);
        self.links.remove(&to);
        self.committed.remove(&to);
        self.turns.retain(|t| *t != to);
        self.expired_in_row.remove(&to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::testing::chunk;

    #[test]
    fn control_first_then_newest_chunk_and_expired_chunks_dropped() {
        let mut up = Uplink::default();
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
                Payload::Padding | Payload::Ping => "padding".into(),
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
    }
}
