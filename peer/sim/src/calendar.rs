//! The simulator's event queue: a calendar of 1 ms buckets over the next second, and a heap
//! for what lies beyond. Events pop in exactly the order a single heap keyed by (time,
//! insertion order) would give, but each pop only touches the small heap of the current
//! millisecond instead of one heap holding every pending event of ten thousand nodes.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

const BUCKET_US: u64 = 1_000;
/// Buckets ahead of the current one: most events (arrivals, transmissions, ticks) fall
/// within a second; timeouts and joins further out wait in `later`.
const BUCKETS: usize = 1_024;

struct Entry<T> {
    at: u64,
    order: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

pub struct Calendar<T> {
    /// Bucket `slot % BUCKETS` holds only events of that one slot.
    buckets: Vec<Vec<Entry<T>>>,
    /// Events a full turn or more ahead, earliest first.
    later: BinaryHeap<Reverse<Entry<T>>>,
    /// Events of the current millisecond, sorted latest first (popped from the end).
    current: Vec<Entry<T>>,
    /// Events scheduled into the current millisecond while it runs, earliest first.
    arrived: BinaryHeap<Reverse<Entry<T>>>,
    /// The millisecond `current` holds.
    slot: u64,
    order: u64,
    len: usize,
}

impl<T> Calendar<T> {
    pub fn new() -> Self {
        Calendar {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            later: BinaryHeap::new(),
            current: Vec::new(),
            arrived: BinaryHeap::new(),
            slot: 0,
            order: 0,
            len: 0,
        }
    }

    /// Schedules `item` at `at` µs, which is not before the last time popped.
    pub fn push(&mut self, at: u64, item: T) {
        self.order += 1;
        self.len += 1;
        let slot = at / BUCKET_US;
        let entry = Entry {
            at,
            order: self.order,
            item,
        };
        if slot <= self.slot {
            self.arrived.push(Reverse(entry));
        } else if slot < self.slot + BUCKETS as u64 {
            self.buckets[(slot % BUCKETS as u64) as usize].push(entry);
        } else {
            self.later.push(Reverse(entry));
        }
    }

    /// The earliest event, with its time.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        if self.len == 0 {
            return None;
        }
        while self.current.is_empty() && self.arrived.is_empty() {
            self.slot += 1;
            let index = (self.slot % BUCKETS as u64) as usize;
            // Swapped, not copied: the emptied vector becomes the bucket for a later turn.
            std::mem::swap(&mut self.current, &mut self.buckets[index]);
            while let Some(Reverse(first)) = self.later.peek()
                && first.at / BUCKET_US <= self.slot
            {
                let Some(Reverse(entry)) = self.later.pop() else { break };
                self.current.push(entry);
            }
            // One sort of the millisecond is cheaper than a heap pop per event.
            self.current.sort_unstable_by(|a, b| b.cmp(a));
        }
        let from_current = match (self.current.last(), self.arrived.peek()) {
            (Some(c), Some(Reverse(a))) => c < a,
            (c, _) => c.is_some(),
        };
        let entry = if from_current {
            self.current.pop()?
        } else {
            self.arrived.pop()?.0
        };
        self.len -= 1;
        Some((entry.at, entry.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_then_insertion_order_across_turns() {
        let mut cal = Calendar::new();
        let times = [5_000u64, 10, 10, 9_000_000, 999, 1_000, 20_000_000, 5_000];
        for (i, at) in times.iter().enumerate() {
            cal.push(*at, i);
        }
        let mut popped = Vec::new();
        while let Some((at, i)) = cal.pop() {
            popped.push((at, i));
            if i == 4 {
                // Scheduled while running, into the millisecond being worked on.
                cal.push(at + 1, 100);
            }
        }
        assert_eq!(
            popped,
            [
                (10, 1),
                (10, 2),
                (999, 4),
                (1_000, 5),
                (1_000, 100),
                (5_000, 0),
                (5_000, 7),
                (9_000_000, 3),
                (20_000_000, 6)
            ]
        );
    }
}
