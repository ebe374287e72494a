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
        if self.words.is_empty() {
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

    pub fn contains(&self, seq: u64) -> bool {
        if seq < self.base {
            return false;
        }
        let word = ((seq - self.base) / 64) as usize;
        self.words
            .get(word)
            .is_some_and(|w| w & (1 << ((seq - self.base) % 64)) != 0)
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
}
