//! Stripe arithmetic, in one place: the stream is split into stripes by chunk seq modulo
//! their count, and each stripe's seqs step by that count.

/// How many stripes there are (at least one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stripes(u64);

impl Stripes {
    pub fn new(count: u8) -> Self {
        Stripes(u64::from(count.max(1)))
    }

    pub fn count(self) -> usize {
        self.0 as usize
    }

    /// Between two seqs of one stripe.
    pub fn step(self) -> u64 {
        self.0
    }

    /// The stripe chunk `seq` belongs to.
    pub fn of(self, seq: u64) -> usize {
        (seq % self.0) as usize
    }

    /// The first seq of stripe `s` at or after `low`.
    pub fn first_from(self, low: u64, s: usize) -> u64 {
        let k = self.0;
        low + (s as u64 + k - low % k) % k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_map_to_stripes_and_each_stripe_steps_by_the_count() {
        let stripes = Stripes::new(4);
        assert_eq!(stripes.of(10), 2);
        assert_eq!(stripes.first_from(10, 2), 10);
        assert_eq!(stripes.first_from(10, 1), 13);
        assert_eq!(stripes.first_from(10, 3), 11);
        assert_eq!(Stripes::new(0).count(), 1, "never zero stripes");
    }
}
