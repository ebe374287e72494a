//! A household's own traffic on a share of the viewers' uplinks (`--cross-traffic`): a bulk
//! TCP upload through the same router queue, on for a while and off for a while. It grows
//! as Cubic does (slow start, then back to its last peak within seconds of a drop, cutting
//! by 30 % when its packets are dropped at the full queue), so it fills the router's queue
//! the way a real upload does, and shoal must step aside for it. Its periods are random
//! (`--cross-traffic`) or given (`--household`, as the lab runs one before and one after).

use rand::Rng;
use rand::rngs::SmallRng;

/// How often the household's sending is worked out.
pub const TICK_US: u64 = 10_000;
/// On for this long, off for this long (the start of the first period is random).
const ON_US: u64 = 20_000_000;
const OFF_US: u64 = 40_000_000;
const PACKET_BITS: f64 = 1200.0 * 8.0;

pub struct Household {
    /// Sending rate, bit/s, and the rate at the last drop.
    rate: f64,
    peak: f64,
    slow_start: bool,
    on: bool,
    /// When it turns on or off next (virtual µs).
    toggle_at: u64,
    /// Given periods (virtual µs, start..end), in order; empty: 20 s on, 40 s off.
    periods: Vec<(u64, u64)>,
    last_drop: u64,
    /// Bits sent while on, and µs spent on.
    pub sent_bits: f64,
    pub on_us: u64,
    owed_bits: f64,
}

impl Household {
    pub fn new(rng: &mut SmallRng) -> Self {
        Household {
            rate: 0.0,
            peak: 0.0,
            slow_start: true,
            on: false,
            toggle_at: rng.random_range(0..ON_US + OFF_US),
            periods: Vec::new(),
            last_drop: 0,
            sent_bits: 0.0,
            on_us: 0,
            owed_bits: 0.0,
        }
    }

    /// A household that uploads in the given periods (virtual µs, start..end) only.
    pub fn scheduled(mut periods: Vec<(u64, u64)>) -> Self {
        periods.sort_unstable();
        Household {
            rate: 0.0,
            peak: 0.0,
            slow_start: true,
            on: false,
            toggle_at: periods.first().map_or(u64::MAX, |p| p.0),
            periods,
            last_drop: 0,
            sent_bits: 0.0,
            on_us: 0,
            owed_bits: 0.0,
        }
    }

    /// When the household turns on or off after `now`, having just turned `on`.
    fn next_toggle(&self, now: u64) -> u64 {
        if self.periods.is_empty() {
            return now + if self.on { ON_US } else { OFF_US };
        }
        let mut edges = self.periods.iter().flat_map(|(a, b)| [*a, *b]);
        edges.find(|t| *t > now).unwrap_or(u64::MAX)
    }

    /// Bytes to hand the router this tick at `now`; `rtt_us` is what the flow's packets see.
    pub fn tick(&mut self, now: u64, rtt_us: u64) -> usize {
        if now >= self.toggle_at {
            self.on = !self.on;
            self.toggle_at = self.next_toggle(now);
            // Each upload starts afresh, in slow start.
            (self.rate, self.peak, self.slow_start) = (PACKET_BITS * 10.0 / 0.05, 0.0, true);
        }
        if !self.on {
            return 0;
        }
        self.on_us += TICK_US;
        let dt = TICK_US as f64 / 1e6;
        let rtt = (rtt_us as f64 / 1e6).max(0.005);
        if self.slow_start {
            self.rate *= 2f64.powf(dt / rtt);
        } else {
            // Back towards the last peak quickly, then beyond it a packet a round trip.
            let towards_peak = if self.rate < self.peak {
                0.3 * self.peak * dt
            } else {
                0.0
            };
            self.rate += towards_peak + PACKET_BITS / rtt * dt / rtt;
        }
        self.owed_bits += self.rate * dt;
        let bytes = (self.owed_bits / 8.0).floor();
        self.owed_bits -= bytes * 8.0;
        self.sent_bits += bytes * 8.0;
        bytes as usize
    }

    /// Some of what it sent was dropped at the router (at most one cut a round trip).
    pub fn dropped(&mut self, now: u64, rtt_us: u64) {
        if now.saturating_sub(self.last_drop) < rtt_us {
            return;
        }
        self.last_drop = now;
        self.peak = self.rate;
        self.rate *= 0.7;
        self.slow_start = false;
    }
}
