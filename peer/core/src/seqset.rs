//! A compact set of recent sequence numbers (a sliding bitmap): what a neighbour holds.
//! Bounded: seqs more than `MAX_SPAN` behind the newest are forgotten.

use std::collections::VecDeque;

/// Seqs remembered behind the newest one (≈ 2 min at 30 chunks/s).
pub const MAX_SPAN: u64 = 4096;
const WORDS: usize = (MAX_SPAN / 64) as usize;

#[derive(Clone, Debug, Default)]
pub struct SeqSet {
    /// Seq of bit 0 of word 0; always a multiple of 64.
    base: u64,
    words: VecDeque<u64>,
}

impl SeqSet {
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.words.is_empty() || seq >= self.base.saturating_add(2 * MAX_SPAN) {
            // Empty, or a jump past everything remembered: start over at `seq` rather than
            // slide there a word at a time (a claimed seq may be anything).
            self.words.clear();
            self.base = seq & !63;
        }
        if seq < self.base {
            return false; // older than we remember: not worth tracking
        }
        let mut word = ((seq - self.base) / 64) as usize;
        while word >= WORDS {
            self.words.pop_front();
            self.base += 64;
            word -= 1;
        }
        while self.words.len() <= word {
            self.words.push_back(0);
        }
        let bit = 1u64 << ((seq - self.base) % 64);
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        new
    }

    /// Inserts `start..start + len`; only the newest `MAX_SPAN` of them matter, so at most
    /// that many are visited whatever the range claims.
    pub fn insert_range(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        for seq in start.max(end.saturating_sub(MAX_SPAN))..end {
            self.insert(seq);
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        if seq < self.base {
            return false;
        }
        let word = ((seq - self.base) / 64) as usize;
        self.words
            .get(word)
            .is_some_and(|w| w & (1 << ((seq - self.base) % 64)) != 0)
    }

    /// The newest seq held, if any.
    pub fn newest(&self) -> Option<u64> {
        let (i, w) = self.words.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
        Some(self.base + i as u64 * 64 + 63 - u64::from(w.leading_zeros()))
    }

    /// No seq at all (words only ever gain bits until cleared).
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    pub fn clear(&mut self) {
        self.words.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_recent_and_forgets_old() {
        let mut s = SeqSet::default();
        assert!(s.insert(100));
        assert!(!s.insert(100));
        assert!(s.insert(170));
        assert!(s.contains(100) && s.contains(170) && !s.contains(101));
        s.insert(100 + MAX_SPAN + 64);
        assert!(!s.contains(100));
        assert!(s.contains(100 + MAX_SPAN + 64));
        assert!(!s.insert(5));
    }

    #[test]
    fn knows_the_newest_seq_it_holds() {
        let mut s = SeqSet::default();
        assert_eq!(s.newest(), None);
        s.insert_range(100, 30);
        assert_eq!(s.newest(), Some(129));
        s.insert(64 * 5 + 63);
        assert_eq!(s.newest(), Some(64 * 5 + 63));
    }

    #[test]
    fn a_claim_far_ahead_starts_over_at_once() {
        let mut s = SeqSet::default();
        s.insert(10);
        assert!(s.insert(u64::MAX - 1));
        assert!(s.contains(u64::MAX - 1) && !s.contains(10));
        assert!(s.words.len() <= WORDS);
    }

    #[test]
    fn a_huge_range_keeps_only_its_newest_span() {
        let mut s = SeqSet::default();
        s.insert_range(1000, 1 << 40);
        let end = 1000 + (1 << 40);
        // The oldest word may be partly forgotten (words are 64-aligned).
        assert!(s.contains(end - 1) && s.contains(end - MAX_SPAN + 64) && !s.contains(end - MAX_SPAN - 1));
        assert!(!s.contains(end));
    }
}
