//! The live window: the chunks a node holds, keyed by (epoch, seq), judged by the newest
//! signed broadcaster timestamp seen — never the local clock. Memory is bounded by it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::{Chunk, ChunkFlags};

/// Seqs one epoch may span: far more than 30 s of any real stream, and a bound on memory
/// whatever seq a chunk claims.
const MAX_SEQ_SPAN: u64 = 1 << 16;

/// What happened to a chunk offered to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Stored,
    Duplicate,
    /// Older than the window: refused, never stored.
    Late,
}

/// The chunks of one epoch, indexed by seq: lookups are one index, not a tree walk, which
/// is most of what a relay does per chunk.
#[derive(Debug)]
struct Epoch {
    id: u64,
    /// Seq of `slots[0]`; the back slot is always filled, so it is the newest seq.
    base: u64,
    /// Shared, not copied: a relay holds the same chunk it pushes to its children.
    slots: VecDeque<Option<Arc<Chunk>>>,
    held: usize,
    newest_segment_start: Option<u64>,
}

impl Epoch {
    fn new(id: u64, seq: u64) -> Self {
        Epoch {
            id,
            base: seq,
            slots: VecDeque::new(),
            held: 0,
            newest_segment_start: None,
        }
    }

    fn get(&self, seq: u64) -> Option<&Arc<Chunk>> {
        self.slots
            .get(usize::try_from(seq.checked_sub(self.base)?).ok()?)?
            .as_ref()
    }

    fn newest_seq(&self) -> Option<u64> {
        (!self.slots.is_empty()).then(|| self.base + self.slots.len() as u64 - 1)
    }

    /// Stores `chunk`; also returns the payload bytes of chunks pushed out to make room.
    fn insert(&mut self, chunk: &Arc<Chunk>) -> (Admit, usize) {
        let seq = chunk.header.seq;
        if let Some(newest) = self.newest_seq()
            && seq.saturating_add(MAX_SEQ_SPAN) <= newest
        {
            return (Admit::Late, 0);
        }
        // A seq far ahead pushes the oldest out first: the ring never outgrows the span,
        // whatever seq a chunk claims.
        let mut freed = 0;
        while !self.slots.is_empty() && seq >= self.base && seq - self.base >= MAX_SEQ_SPAN {
            freed += self.pop_oldest();
        }
        if self.slots.is_empty() {
            self.base = seq;
        }
        while seq < self.base {
            self.slots.push_front(None);
            self.base -= 1;
        }
        let index = (seq - self.base) as usize;
        if index >= self.slots.len() {
            self.slots.resize(index + 1, None);
        }
        let slot = &mut self.slots[index];
        if slot.is_some() {
            return (Admit::Duplicate, freed);
        }
        *slot = Some(chunk.clone());
        self.held += 1;
        if chunk.header.flags.has(ChunkFlags::SEGMENT_START) && self.newest_segment_start.is_none_or(|s| s < seq) {
            self.newest_segment_start = Some(seq);
        }
        (Admit::Stored, freed)
    }

    fn pop_oldest(&mut self) -> usize {
        let freed = match self.slots.pop_front().flatten() {
            Some(chunk) => {
                self.held -= 1;
                chunk.payload.len()
            }
            None => 0,
        };
        self.base += 1;
        if self.newest_segment_start.is_some_and(|s| s < self.base) {
            self.newest_segment_start = None;
        }
        freed
    }

    /// Drops chunks stamped before `oldest_us`, oldest seq first; returns the bytes freed.
    fn evict(&mut self, oldest_us: u64) -> usize {
        let mut freed = 0;
        while let Some(front) = self.slots.front() {
            if front.as_ref().is_some_and(|c| c.header.timestamp_us >= oldest_us) {
                break;
            }
            freed += self.pop_oldest();
        }
        freed
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = &Chunk> {
        self.slots.iter().flatten().map(|c| &**c)
    }
}

#[derive(Debug)]
pub struct Window {
    span_us: u64,
    newest_us: u64,
    /// The epoch of the newest chunk: the one the broadcaster is live on.
    live_epoch: Option<u64>,
    /// A handful at most: the live epoch and stragglers of earlier ones.
    epochs: Vec<Epoch>,
    bytes: usize,
}

impl Window {
    pub fn new(span: Duration) -> Self {
        Window {
            span_us: span.as_micros() as u64,
            newest_us: 0,
            live_epoch: None,
            epochs: Vec::new(),
            bytes: 0,
        }
    }

    fn epoch(&self, id: u64) -> Option<&Epoch> {
        self.epochs.iter().find(|e| e.id == id)
    }

    pub fn admit(&mut self, chunk: &Arc<Chunk>) -> Admit {
        let h = &chunk.header;
        if h.timestamp_us.saturating_add(self.span_us) < self.newest_us {
            return Admit::Late;
        }
        let index = match self.epochs.iter().position(|e| e.id == h.epoch) {
            Some(i) => i,
            None => {
                self.epochs.push(Epoch::new(h.epoch, h.seq));
                self.epochs.len() - 1
            }
        };
        let (admit, freed) = self.epochs[index].insert(chunk);
        self.bytes -= freed;
        if admit != Admit::Stored {
            return admit;
        }
        self.bytes += chunk.payload.len();
        if h.timestamp_us > self.newest_us || self.live_epoch.is_none() {
            self.newest_us = h.timestamp_us;
            self.live_epoch = Some(h.epoch);
        }
        self.evict();
        Admit::Stored
    }

    fn evict(&mut self) {
        let oldest = self.newest_us.saturating_sub(self.span_us);
        let mut freed = 0;
        self.epochs.retain_mut(|e| {
            freed += e.evict(oldest);
            e.held > 0
        });
        self.bytes -= freed;
    }

    pub fn get(&self, epoch: u64, seq: u64) -> Option<&Arc<Chunk>> {
        self.epoch(epoch)?.get(seq)
    }

    pub fn contains(&self, epoch: u64, seq: u64) -> bool {
        self.get(epoch, seq).is_some()
    }

    pub fn live_epoch(&self) -> Option<u64> {
        self.live_epoch
    }

    pub fn newest_timestamp_us(&self) -> u64 {
        self.newest_us
    }

    /// Sequence numbers held in `epoch`, oldest first.
    pub fn seqs(&self, epoch: u64) -> impl Iterator<Item = u64> + '_ {
        self.epoch(epoch)
            .into_iter()
            .flat_map(|e| e.iter().map(|c| c.header.seq))
    }

    pub fn newest_seq(&self, epoch: u64) -> Option<u64> {
        self.epoch(epoch)?.newest_seq()
    }

    /// Start of the newest segment in the live epoch that is held from its first chunk.
    pub fn newest_segment_start(&self) -> Option<u64> {
        self.epoch(self.live_epoch?)?.newest_segment_start
    }

    /// True once some segment of the live epoch is held whole: its first chunk up to the
    /// next segment's first chunk, nothing missing.
    pub fn holds_whole_segment(&self) -> bool {
        let Some(epoch) = self.live_epoch.and_then(|e| self.epoch(e)) else {
            return false;
        };
        let mut run_start: Option<u64> = None;
        let mut prev: Option<u64> = None;
        for chunk in epoch.iter() {
            let seq = chunk.header.seq;
            if prev.is_some_and(|p| p + 1 != seq) {
                run_start = None;
            }
            if chunk.header.flags.has(ChunkFlags::SEGMENT_START) {
                if run_start.is_some() {
                    return true;
                }
                run_start = Some(seq);
            }
            prev = Some(seq);
        }
        false
    }

    pub fn len(&self) -> usize {
        self.epochs.iter().map(|e| e.held).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::chunk;

    #[test]
    fn refuses_chunks_older_than_the_window() {
        let mut w = Window::new(Duration::from_secs(30));
        assert_eq!(w.admit(&chunk(1, 100, 60_000_000, 0)), Admit::Stored);
        assert_eq!(w.admit(&chunk(1, 1, 29_000_000, 0)), Admit::Late);
        assert_eq!(w.admit(&chunk(1, 2, 31_000_000, 0)), Admit::Stored);
        assert_eq!(w.admit(&chunk(1, 2, 31_000_000, 0)), Admit::Duplicate);
    }

    #[test]
    fn evicts_by_broadcaster_time_and_frees_memory() {
        let mut w = Window::new(Duration::from_secs(1));
        for seq in 0..100 {
            w.admit(&chunk(1, seq, seq * 100_000, 0));
        }
        // 1 s at 10 chunks/s: 11 chunks (inclusive) remain.
        assert_eq!(w.len(), 11);
        assert_eq!(w.bytes(), 11 * 188);
        assert_eq!(w.seqs(1).next(), Some(89));
    }

    #[test]
    fn finds_whole_segments() {
        let mut w = Window::new(Duration::from_secs(30));
        w.admit(&chunk(1, 10, 1_000, ChunkFlags::SEGMENT_START));
        w.admit(&chunk(1, 11, 2_000, 0));
        w.admit(&chunk(1, 13, 4_000, ChunkFlags::SEGMENT_START));
        assert!(!w.holds_whole_segment());
        w.admit(&chunk(1, 12, 3_000, 0));
        assert!(w.holds_whole_segment());
        assert_eq!(w.newest_segment_start(), Some(13));
    }

    #[test]
    fn stores_older_seqs_behind_the_first_and_keeps_epochs_apart() {
        let mut w = Window::new(Duration::from_secs(30));
        assert_eq!(w.admit(&chunk(1, 50, 5_000, 0)), Admit::Stored);
        // A repair of something older than the first chunk held, then a new epoch.
        assert_eq!(w.admit(&chunk(1, 47, 4_700, ChunkFlags::SEGMENT_START)), Admit::Stored);
        assert_eq!(w.admit(&chunk(2, 0, 6_000, 0)), Admit::Stored);
        assert_eq!(w.seqs(1).collect::<Vec<_>>(), [47, 50]);
        assert!(w.contains(1, 47) && !w.contains(1, 48) && w.contains(2, 0));
        assert_eq!(w.newest_seq(1), Some(50));
        assert_eq!(w.live_epoch(), Some(2));
        assert_eq!(
            w.newest_segment_start(),
            None,
            "the live epoch has no segment start yet"
        );
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn a_seq_far_ahead_pushes_the_oldest_out_instead_of_growing() {
        let mut w = Window::new(Duration::from_secs(30));
        w.admit(&chunk(1, 0, 1_000, ChunkFlags::SEGMENT_START));
        assert_eq!(w.admit(&chunk(1, 10 * MAX_SEQ_SPAN, 2_000, 0)), Admit::Stored);
        assert_eq!(w.seqs(1).collect::<Vec<_>>(), [10 * MAX_SEQ_SPAN]);
        assert_eq!(w.newest_segment_start(), None);
        assert_eq!(w.bytes(), 188);
        // And one more than the span behind the newest is refused.
        assert_eq!(w.admit(&chunk(1, 9 * MAX_SEQ_SPAN, 2_000, 0)), Admit::Late);
    }
}
