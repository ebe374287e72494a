//! The household router in front of a node's uplink: a FIFO that drains at the uplink's rate
//! and drops what arrives when it already holds `depth` of queue (a `tc tbf … latency`). The
//! node cannot see it; it learns of it only by the round trips and losses of what it sends.
//! Packets are taken in the order they arrive: a paced chunk's packets arrive one by one
//! while it is sent, and a control packet sent meanwhile queues behind only those already in.

pub struct Router {
    bytes_per_us: f64,
    depth_us: u64,
    /// When what has arrived so far has left (virtual µs).
    drains_at: u64,
    /// The paced item arriving now: its packets' arrival times not yet taken, its packet
    /// size, and what became of those taken.
    arriving: Vec<(u64, usize)>,
    taken: Passage,
    /// Queueing delay each item met, µs (for the report), and packets dropped.
    pub queued_us: Vec<u32>,
    pub dropped: u64,
}

/// What became of the packets handed to the router.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Passage {
    /// When the last packet that got through leaves the uplink (µs).
    pub leaves: u64,
    /// Packets dropped at a full queue.
    pub dropped: usize,
}

/// Queueing samples kept per router (a 120 s run at 30 items a second is far below it).
const MAX_SAMPLES: usize = 1 << 16;

impl Router {
    /// `depth_ms` of the uplink's rate, and `burst_kb` more (tbf's limit is rate × latency +
    /// burst).
    pub fn new(bits_per_s: f64, depth_ms: u64, burst_kb: u64) -> Self {
        let bytes_per_us = bits_per_s / 8.0 / 1e6;
        Router {
            bytes_per_us,
            depth_us: depth_ms * 1000 + (burst_kb as f64 * 1024.0 / bytes_per_us) as u64,
            drains_at: 0,
            arriving: Vec::new(),
            taken: Passage::default(),
            queued_us: Vec::new(),
            dropped: 0,
        }
    }

    /// What is queued at `now`, in µs of sending (counting the paced item's packets in).
    pub fn backlog_us(&self, now: u64) -> u64 {
        let mut drains_at = self.drains_at;
        for (at, size) in self.arriving.iter().take_while(|(at, _)| *at <= now) {
            if drains_at.saturating_sub(*at) <= self.depth_us {
                drains_at = (*at).max(drains_at) + (*size as f64 / self.bytes_per_us).ceil() as u64;
            }
        }
        drains_at.saturating_sub(now)
    }

    /// One packet arriving at `at`: queued, or dropped if the queue is past its depth.
    fn packet(&mut self, at: u64, size: usize, passage: &mut Passage, sample: bool) {
        let queued = self.drains_at.saturating_sub(at);
        if queued > self.depth_us {
            self.dropped += 1;
            passage.dropped += 1;
            return;
        }
        self.drains_at = at.max(self.drains_at) + (size as f64 / self.bytes_per_us).ceil() as u64;
        passage.leaves = self.drains_at;
        if sample && self.queued_us.len() < MAX_SAMPLES {
            self.queued_us.push(queued.min(u64::from(u32::MAX)) as u32);
        }
    }

    /// Takes in the paced item's packets that have arrived by `now`.
    fn take_arrived(&mut self, now: u64) {
        let due = self.arriving.iter().take_while(|(at, _)| *at <= now).count();
        let mut taken = self.taken;
        for (at, size) in self.arriving.drain(..due).collect::<Vec<_>>() {
            let first = taken == Passage::default();
            self.packet(at, size, &mut taken, first);
        }
        self.taken = taken;
    }

    /// A paced item's `bytes` start arriving at `now`, as packets of at most `packet` bytes
    /// spread evenly until `end`.
    pub fn start(&mut self, now: u64, end: u64, bytes: usize, packet: usize) {
        self.take_arrived(u64::MAX);
        let packets = bytes.div_ceil(packet).max(1);
        self.arriving = (0..packets)
            .map(|i| {
                let size = if i + 1 == packets { bytes - i * packet } else { packet };
                (now + (end - now) * (i as u64 + 1) / packets as u64, size)
            })
            .collect();
        self.taken = Passage {
            leaves: end,
            dropped: 0,
        };
    }

    /// The paced item has arrived whole (at `now`): what became of it.
    pub fn finish(&mut self, now: u64) -> Passage {
        self.take_arrived(now.max(self.arriving.last().map_or(0, |a| a.0)));
        std::mem::take(&mut self.taken)
    }

    /// `bytes` arrive at once at `now` (control, unpaced).
    pub fn pass_now(&mut self, now: u64, bytes: usize, packet: usize) -> Passage {
        self.take_arrived(now);
        let mut passage = Passage {
            leaves: now,
            dropped: 0,
        };
        let packets = bytes.div_ceil(packet).max(1);
        for i in 0..packets {
            let size = if i + 1 == packets { bytes - i * packet } else { packet };
            self.packet(now, size, &mut passage, i == 0);
        }
        passage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_at_the_uplink_rate_that_drops_packets_beyond_its_depth() {
        let mut r = Router::new(8e6, 2, 0); // 1 byte/µs, 2 ms deep
        // Sent at 2× the uplink's rate: each 1000-byte item takes 500 µs to send, 1000 to leave.
        let mut passages = Vec::new();
        for i in 0..6 {
            r.start(i * 500, i * 500 + 500, 1000, 1000);
            let p = r.finish(i * 500 + 500);
            passages.push((p.leaves, p.dropped));
        }
        assert_eq!(
            passages,
            [(1500, 0), (2500, 0), (3500, 0), (4500, 0), (5500, 0), (3000, 1)]
        );
        // Sent slower than the uplink: nothing queues, packets leave as they are sent.
        let mut r = Router::new(8e6, 2, 0);
        r.start(0, 2000, 1000, 500);
        assert_eq!(r.finish(2000).leaves, 2000 + 500);
        // A control packet sent halfway through a paced item waits only for what is in.
        let mut r = Router::new(8e6, 2, 0);
        r.start(0, 4000, 2000, 500); // 500 bytes a ms, drained at 1000 a ms
        let control = r.pass_now(2000, 100, 500);
        assert_eq!(
            control.leaves,
            2000 + 500 + 100,
            "behind one packet of the item, not four"
        );
        assert_eq!(r.finish(4000).leaves, 4000 + 500);
        // A burst of 4000 bytes into a 2 ms queue: the last packet is dropped.
        let mut r = Router::new(8e6, 2, 0);
        let p = r.pass_now(0, 4000, 1000);
        assert_eq!(p.dropped, 1, "the fourth packet finds 3 ms queued");
    }

    #[test]
    fn a_tbf_burst_deepens_the_queue_by_its_bytes() {
        // 1 Mbit/s, "30 ms" and a 16 kB burst, as the lab's tbf: 30 + 131 ms deep.
        let r = Router::new(1e6, 30, 16);
        assert_eq!(r.depth_us, 30_000 + 131_072);
        let mut r = Router::new(8e6, 2, 2); // 1 byte/µs: 2 ms and 2048 bytes more
        let p = r.pass_now(0, 5000, 1000);
        assert_eq!(p.dropped, 0, "4048 µs deep: the fifth packet finds 4 ms queued");
        assert_eq!(r.pass_now(0, 1000, 1000).dropped, 1);
    }
}
