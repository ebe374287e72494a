//! The live window: the chunks a node holds, keyed by (epoch, seq), judged by the newest
//! signed broadcaster timestamp seen — never the local clock. Memory is bounded by it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use shoal_proto::{Chunk, ChunkFlags};

/// What happened to a chunk offered to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Stored,
    Duplicate,
    /// Older than the window: refused, never stored.
    Late,
}

#[derive(Debug)]
pub struct Window {
    span_us: u64,
    newest_us: u64,
    /// The epoch of the newest chunk: the one the broadcaster is live on.
    live_epoch: Option<u64>,
    /// Newest seq held in the live epoch (asked for on every chunk and tick).
    live_newest_seq: Option<u64>,
    chunks: HashMap<u64, BTreeMap<u64, Chunk>>,
    bytes: usize,
}

impl Window {
    pub fn new(span: Duration) -> Self {
        Window {
            span_us: span.as_micros() as u64,
            newest_us: 0,
            live_epoch: None,
            live_newest_seq: None,
            chunks: HashMap::new(),
            bytes: 0,
        }
    }

    pub fn admit(&mut self, chunk: &Chunk) -> Admit {
        let h = &chunk.header;
        if h.timestamp_us.saturating_add(self.span_us) < self.newest_us {
            return Admit::Late;
        }
        let epoch = self.chunks.entry(h.epoch).or_default();
        if epoch.contains_key(&h.seq) {
            return Admit::Duplicate;
        }
        epoch.insert(h.seq, chunk.clone());
        self.bytes += chunk.payload.len();
        if h.timestamp_us > self.newest_us || self.live_epoch.is_none() {
            self.newest_us = h.timestamp_us;
            self.live_epoch = Some(h.epoch);
            self.evict();
        }
        if let Some(live) = self.live_epoch {
            self.live_newest_seq = self.chunks.get(&live).and_then(|c| c.last_key_value()).map(|(s, _)| *s);
        }
        Admit::Stored
    }

    fn evict(&mut self) {
        let oldest = self.newest_us.saturating_sub(self.span_us);
        let mut freed = 0;
        self.chunks.retain(|_, chunks| {
            while let Some(entry) = chunks.first_entry() {
                if entry.get().header.timestamp_us >= oldest {
                    break;
                }
                freed += entry.remove().payload.len();
            }
            !chunks.is_empty()
        });
        self.bytes -= freed;
    }

    pub fn get(&self, epoch: u64, seq: u64) -> Option<&Chunk> {
        self.chunks.get(&epoch)?.get(&seq)
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
        self.chunks.get(&epoch).into_iter().flat_map(|c| c.keys().copied())
    }

    pub fn newest_seq(&self, epoch: u64) -> Option<u64> {
        if Some(epoch) == self.live_epoch {
            return self.live_newest_seq;
        }
        self.chunks.get(&epoch)?.last_key_value().map(|(s, _)| *s)
    }

    /// Start of the newest segment in the live epoch that is held from its first chunk.
    pub fn newest_segment_start(&self) -> Option<u64> {
        let chunks = self.chunks.get(&self.live_epoch?)?;
        chunks
            .values()
            .rev()
            .find(|c| c.header.flags.has(ChunkFlags::SEGMENT_START))
            .map(|c| c.header.seq)
    }

    /// True once some segment of the live epoch is held whole: its first chunk up to the
    /// next segment's first chunk, nothing missing.
    pub fn holds_whole_segment(&self) -> bool {
        let Some(chunks) = self.live_epoch.and_then(|e| self.chunks.get(&e)) else {
            return false;
        };
        let mut run_start: Option<u64> = None;
        let mut prev: Option<u64> = None;
        for (&seq, chunk) in chunks {
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
        self.chunks.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
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
}
