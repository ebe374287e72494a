//! Whether losses are the router's (tail drop at a full queue) or random (a lossy path): the
//! bytes acknowledged and lost while the queue stood at the top of what it has been, and while
//! it did not. A full router drops only at the top; random loss hits both alike. So a loss at
//! the top is congestion only when losses there are markedly more frequent than elsewhere.
//! (A scavenger that halves on every loss starves on a lossy path: Freenet removed its
//! LEDBAT++ for that.)

/// Each control step keeps this much of the evidence before it (≈ 5 s of memory at 100 ms).
const MEMORY: f64 = 0.98;
/// Bytes seen at the top before its loss rate means anything (≈ 30 packets).
const EVIDENCE_BYTES: f64 = 36_000.0;
/// At the top, losses must be this many times as frequent as elsewhere...
const RATIO: f64 = 2.0;
/// ...and this much more frequent in absolute terms.
const MARGIN: f64 = 0.005;
/// Losses this frequent wherever they come (five times the bench's random 2 %) mean the
/// uplink is overloaded, whatever the queue says: the household's traffic holds a shallow
/// router queue full, and the paths' base delays were all taken behind it.
const OVERLOAD: f64 = 0.1;

#[derive(Clone, Copy, Debug, Default)]
struct Bin {
    acked: f64,
    lost: f64,
}

impl Bin {
    fn rate(&self) -> f64 {
        let total = self.acked + self.lost;
        if total > 0.0 { self.lost / total } else { 0.0 }
    }
}

#[derive(Debug, Default)]
pub struct Losses {
    top: Bin,
    rest: Bin,
}

impl Losses {
    /// Bytes acknowledged, sent while the queue was at its top or not.
    pub fn acked(&mut self, bytes: u64, at_top: bool) {
        self.bin(at_top).acked += bytes as f64;
    }

    /// Bytes lost, sent while the queue was at its top or not; whether this loss is the
    /// router's.
    pub fn lost(&mut self, bytes: u64, at_top: bool) -> bool {
        self.bin(at_top).lost += bytes as f64;
        at_top
            && self.top.acked + self.top.lost >= EVIDENCE_BYTES
            && self.top.rate() > RATIO * self.rest.rate() + MARGIN
    }

    /// Whether losses come so often, wherever, that the uplink is overloaded.
    pub fn overloaded(&self) -> bool {
        let all = Bin {
            acked: self.top.acked + self.rest.acked,
            lost: self.top.lost + self.rest.lost,
        };
        all.acked + all.lost >= EVIDENCE_BYTES && all.rate() > OVERLOAD
    }

    /// One control step: older evidence counts for less.
    pub fn step(&mut self) {
        for bin in [&mut self.top, &mut self.rest] {
            bin.acked *= MEMORY;
            bin.lost *= MEMORY;
        }
    }

    /// For debugging: the loss rate at the top and elsewhere, and the evidence at the top.
    pub fn describe(&self) -> String {
        format!(
            "top {:.3} of {:.0} kB, rest {:.3} of {:.0} kB",
            self.top.rate(),
            (self.top.acked + self.top.lost) / 1000.0,
            self.rest.rate(),
            (self.rest.acked + self.rest.lost) / 1000.0
        )
    }

    fn bin(&mut self, at_top: bool) -> &mut Bin {
        if at_top { &mut self.top } else { &mut self.rest }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: enough for a unit test.
    fn random(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state % 1_000_000) as f64 / 1e6
    }

    #[test]
    fn random_loss_is_not_congestion_and_tail_drop_is() {
        let mut rng = 7;
        let mut random_loss = Losses::default();
        let mut congested = 0;
        // 2 % of packets lost, wherever the queue stands (at its top a quarter of the time).
        for i in 0..20_000u64 {
            let at_top = random(&mut rng) < 0.25;
            if random(&mut rng) < 0.02 {
                congested += usize::from(random_loss.lost(1200, at_top));
            } else {
                random_loss.acked(1200, at_top);
            }
            if i % 100 == 0 {
                random_loss.step();
            }
        }
        assert!(
            congested <= 5,
            "random loss taken for the router's {congested} times of ~400"
        );

        let mut tail = Losses::default();
        let (mut seen, mut drops) = (0, 0);
        // Losses only at the top (the router drops when full), 5 % of what is sent there.
        for i in 0..20_000u64 {
            let at_top = random(&mut rng) < 0.25;
            if at_top && random(&mut rng) < 0.05 {
                drops += 1;
                seen += usize::from(tail.lost(1200, true));
            } else {
                tail.acked(1200, at_top);
            }
            if i % 100 == 0 {
                tail.step();
            }
        }
        assert!(
            seen * 10 >= drops * 9,
            "tail drops seen as congestion {seen} times of {drops}"
        );
    }
}
