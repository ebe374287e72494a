//! A household's own traffic on a share of the viewers' uplinks (`--cross-traffic`): a bulk
//! TCP upload through the same router queue, on for a while and off for a while. It grows
//! as Cubic does (slow start, then back to its last peak within seconds of a drop, cutting
//! by 30 % when its packets are dropped at the full queue), so it fills the router's queue
//! the way a real upload does, and shoal must step aside for it. With too small a window to
//! see three duplicate ACKs (under four packets in flight), a drop costs a retransmission
//! timeout instead, doubling while they repeat: that is how a real TCP upload collapses when
//! something else holds a shallow router queue full. Its periods are random
//! (`--cross-traffic`) or given (`--household`, as the lab runs one before and one after).

use rand::Rng;
use rand::rngs::SmallRng;

/// How often the household's sending is worked out.
pub const TICK_US: u64 = 10_000;
/// On for this long, off for this long (the start of the first period is random).
const ON_US: u64 = 20_000_000;
const OFF_US: u64 = 40_000_000;
const PACKET_BITS: f64 = 1200.0 * 8.0;
/// Fewer packets in flight than this, and a drop is found by timeout, not duplicate ACKs.
const FAST_RETRANSMIT_PACKETS: f64 = 4.0;
/// Linux's least retransmission timeout, and the most it backs off to here.
const MIN_RTO_US: u64 = 200_000;
const MAX_RTO_US: u64 = 3_200_000;

/// What one upload period (on, then off) achieved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Period {
    pub start_us: u64,
    pub end_us: u64,
    /// Bits that got through the router.
    pub delivered_bits: f64,
}

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
    /// Waiting for a retransmission timeout until then, and how long the next one is.
    timeout_until: Option<u64>,
    rto_us: u64,
    owed_bits: f64,
    /// The periods so far, the current one last.
    pub done: Vec<Period>,
}

impl Household {
    pub fn new(rng: &mut SmallRng) -> Self {
        Self::with(rng.random_range(0..ON_US + OFF_US), Vec::new())
    }

    /// A household that uploads in the given periods (virtual µs, start..end) only.
    pub fn scheduled(mut periods: Vec<(u64, u64)>) -> Self {
        periods.sort_unstable();
        let first = periods.first().map_or(u64::MAX, |p| p.0);
        Self::with(first, periods)
    }

    fn with(toggle_at: u64, periods: Vec<(u64, u64)>) -> Self {
        Household {
            rate: 0.0,
            peak: 0.0,
            slow_start: true,
            on: false,
            toggle_at,
            periods,
            last_drop: 0,
            timeout_until: None,
            rto_us: MIN_RTO_US,
            owed_bits: 0.0,
            done: Vec::new(),
        }
    }

    /// Uploading now.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Uploads in given periods (the lab's), whether or not its viewer runs shoal.
    pub fn is_scheduled(&self) -> bool {
        !self.periods.is_empty()
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
            if self.on {
                // Each upload starts afresh, in slow start.
                (self.rate, self.peak, self.slow_start) = (PACKET_BITS * 10.0 / 0.05, 0.0, true);
                (self.timeout_until, self.rto_us) = (None, MIN_RTO_US);
                self.done.push(Period {
                    start_us: now,
                    end_us: self.toggle_at,
                    delivered_bits: 0.0,
                });
            }
        }
        if !self.on {
            return 0;
        }
        let dt = TICK_US as f64 / 1e6;
        let rtt = (rtt_us as f64 / 1e6).max(0.005);
        match self.timeout_until {
            Some(t) if now < t => return 0,
            Some(_) => {
                // The timeout fired: one packet a round trip, in slow start up to half the
                // rate it had.
                self.timeout_until = None;
                self.peak = self.rate / 2.0;
                self.rate = PACKET_BITS / rtt;
                self.slow_start = true;
            }
            None => {}
        }
        if self.slow_start {
            self.rate *= 2f64.powf(dt / rtt);
            if self.peak > 0.0 && self.rate >= self.peak {
                self.slow_start = false;
            }
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
        if let Some(p) = self.done.last_mut() {
            p.delivered_bits += bytes * 8.0;
        }
        bytes as usize
    }

    /// `packets` of the `bytes` sent at `now` were dropped at the router (at most one cut a
    /// round trip; a timeout when too few were in flight to see duplicate ACKs).
    pub fn dropped(&mut self, now: u64, rtt_us: u64, packets: usize) {
        if let Some(p) = self.done.last_mut() {
            p.delivered_bits -= packets as f64 * PACKET_BITS;
        }
        if self.timeout_until.is_some() || now.saturating_sub(self.last_drop) < rtt_us {
            return;
        }
        self.last_drop = now;
        let in_flight = self.rate * (rtt_us as f64 / 1e6).max(0.001) / PACKET_BITS;
        if in_flight < FAST_RETRANSMIT_PACKETS {
            self.timeout_until = Some(now + self.rto_us);
            self.rto_us = (self.rto_us * 2).min(MAX_RTO_US);
            return;
        }
        self.rto_us = MIN_RTO_US;
        self.peak = self.rate;
        self.rate *= 0.7;
        self.slow_start = false;
    }

    /// Share of the uplink (`uplink_bps`) each period so far got through.
    pub fn shares(&self, uplink_bps: f64, now: u64) -> Vec<f64> {
        self.done
            .iter()
            .filter_map(|p| {
                let secs = (p.end_us.min(now).saturating_sub(p.start_us)) as f64 / 1e6;
                (secs > 0.0).then(|| p.delivered_bits.max(0.0) / secs / uplink_bps)
            })
            .collect()
    }
}
