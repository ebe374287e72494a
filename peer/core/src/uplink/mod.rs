//! This node's uplink: how fast to release chunks so the household's router queue stays short
//! and the household's own traffic comes first, and what the uplink carries, learnt from the
//! link rather than declared. One per node, shared by all its connections: they all queue in
//! the same router, so one controller sees the whole load, picks what goes first (newest
//! chunks, across neighbours), and gives the swarm core one capacity to plan children with.
//!
//! The controller is LEDBAT++ (draft-irtf-iccrg-ledbat-plus-plus) in rate form, on round
//! trips (QUIC measures no one-way delay): hold the queueing delay under a 60 ms target,
//! grow in proportion to how far below it we are, cut in proportion to how far above, keep
//! each path's base delay as a history of per-minute minima, and every few seconds slow down
//! to let the queue drain and every path see its true base. A loss cuts the rate only when
//! it comes with a full queue: random loss (2 % in the bench) alone never starves it (the
//! trap that made Freenet drop its LEDBAT++).
//!
//! Sans-IO: the driver reports round-trip samples, acknowledged and lost bytes, and chunk
//! bytes released (and whether the rate held them back), and calls `poll` now and then.

mod capacity;
mod delay;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use capacity::Capacity;
pub use capacity::How;
use delay::Delays;

/// How often the rate is adjusted.
pub const STEP: Duration = Duration::from_millis(100);
/// Rate before anything is known.
const INITIAL_BPS: f64 = 1_000_000.0;
/// The least a yielding uplink keeps sending (LEDBAT's two packets per round trip, roughly):
/// it keeps round-trip samples coming, so it sees the household's traffic go away.
pub const FLOOR_BPS: f64 = 64_000.0;
/// Steps over which the delivery rate is the largest seen (ACKs come in bursts).
const DELIVERED_STEPS: usize = 3;
/// Slowdowns: how long the rate stays at the floor, and how often.
const SLOWDOWN: Duration = Duration::from_millis(200);
const SLOWDOWN_EVERY: Duration = Duration::from_secs(10);
/// A probe ends after this long even if the uplink never filled (a fast, unshaped uplink).
const PROBE_FOR: Duration = Duration::from_secs(6);
/// Probes are spaced out while the estimate holds, up to this.
const PROBE_SPACING_MAX: Duration = Duration::from_secs(300);
const PROBE_SPACING_MIN: Duration = Duration::from_secs(10);

/// Whose traffic yields on a shared uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Less than best effort: chunk uploads step aside for the household's traffic (viewers).
    #[default]
    Background,
    /// Best effort: paced only by `--upload-kbps` (the broadcaster, public relays).
    Foreground,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Background => "background",
            Mode::Foreground => "foreground",
        }
    }
}

#[derive(Clone, Debug)]
pub struct UplinkConfig {
    pub mode: Mode,
    /// Queueing delay the controller holds at most (LEDBAT++: 60 ms).
    pub target: Duration,
    /// `--upload-kbps`: a hard cap, in bit/s.
    pub cap_bps: Option<f64>,
    /// Probe what the uplink carries when nothing else shows it.
    pub probe: bool,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            mode: Mode::Background,
            target: Duration::from_millis(60),
            cap_bps: None,
            probe: true,
        }
    }
}

/// What the uplink is doing, for stats and the status line.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub mode: Mode,
    /// The rate chunks are released at (bit/s); `None` when only the cap paces them.
    pub pacing_bps: Option<f64>,
    /// What the uplink carries (bit/s), and how that was found.
    pub capacity_bps: Option<f64>,
    pub how: How,
    /// Queueing delay on the uplink at the last measure.
    pub queue: Option<Duration>,
    pub probing: bool,
    /// The rate is held down by a queue we did not build (the household's traffic).
    pub yielding: bool,
}

#[derive(Debug)]
pub struct Uplink {
    cfg: UplinkConfig,
    delays: Delays,
    capacity: Capacity,
    /// Rate the controller allows, bit/s.
    rate: f64,
    step_at: Instant,
    sent_step: u64,
    held_step: u64,
    acked_step: u64,
    /// Delivery rate (bit/s) of the last few steps, newest last.
    delivered: VecDeque<f64>,
    /// A loss came with a full queue in this step.
    congested_step: bool,
    /// Steps in a row that measured (almost) no queue.
    empty_steps: u32,
    slowdown_until: Option<Instant>,
    next_slowdown: Option<Instant>,
    rate_before_slowdown: f64,
    last_change: Option<Instant>,
    probe_until: Option<Instant>,
    next_probe: Option<Instant>,
    probe_spacing: Duration,
    yielding: bool,
}

impl Uplink {
    pub fn new(cfg: UplinkConfig, now: Instant) -> Self {
        let rate = cfg.cap_bps.map_or(INITIAL_BPS, |c| c.min(INITIAL_BPS));
        Uplink {
            capacity: Capacity::new(now),
            delays: Delays::default(),
            rate,
            step_at: now,
            sent_step: 0,
            held_step: 0,
            acked_step: 0,
            delivered: VecDeque::new(),
            congested_step: false,
            empty_steps: 0,
            slowdown_until: None,
            next_slowdown: None,
            rate_before_slowdown: rate,
            last_change: None,
            probe_until: None,
            next_probe: cfg.probe.then_some(now),
            probe_spacing: PROBE_SPACING_MIN,
            yielding: false,
            cfg,
        }
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    /// A round-trip sample on `path` (one per acknowledged packet is fine).
    pub fn on_rtt(&mut self, path: u64, rtt: Duration, now: Instant) {
        self.delays.sample(path, rtt, now);
    }

    /// Bytes the other end acknowledged: what the uplink carried.
    pub fn on_acked(&mut self, bytes: u64) {
        self.capacity.acked(bytes);
        self.acked_step += bytes;
    }

    /// Bytes declared lost on `path`: a congestion signal only with a full queue.
    pub fn on_lost(&mut self, path: u64) {
        if self.cfg.mode == Mode::Background
            && self.slowdown_until.is_none()
            && self.delays.loss_is_congestion(path, self.cfg.target)
        {
            self.congested_step = true;
        }
    }

    /// Chunk bytes released to the link; `held` if they had waited for the rate (more was
    /// asked of the uplink than the controller allowed).
    pub fn on_sent(&mut self, bytes: usize, held: bool) {
        self.sent_step += bytes as u64;
        if held {
            self.held_step += bytes as u64;
        }
    }

    /// The connection of `path` closed.
    pub fn forget(&mut self, path: u64) {
        self.delays.forget(path);
    }

    /// Rate to release chunks at (bit/s), or `None` for unpaced.
    pub fn pacing_bps(&self) -> Option<f64> {
        match self.cfg.mode {
            Mode::Background => Some(self.rate),
            Mode::Foreground => self.cfg.cap_bps,
        }
    }

    /// Padding to send now (bit/s), to learn what the uplink carries: the room between the
    /// rate and what chunks use, while a probe runs.
    pub fn probe_bps(&self) -> f64 {
        if self.probe_until.is_none() {
            return 0.0;
        }
        (self.rate - self.capacity.recent_sent_bps()).max(0.0)
    }

    /// What the core may plan children with (bit/s): what the uplink was seen to carry, up
    /// to the cap; `None` until anything was seen.
    pub fn capacity_bps(&self) -> Option<f64> {
        let seen = self.capacity.bps()?;
        Some(self.cfg.cap_bps.map_or(seen, |c| c.min(seen)))
    }

    pub fn report(&self) -> Report {
        Report {
            mode: self.cfg.mode,
            pacing_bps: self.pacing_bps(),
            capacity_bps: self.capacity_bps(),
            how: self.capacity.how(),
            queue: self.delays.queue(),
            probing: self.probe_until.is_some(),
            yielding: self.yielding,
        }
    }

    /// Runs the control step when one is due.
    pub fn poll(&mut self, now: Instant) {
        if now.duration_since(self.step_at) < STEP {
            return;
        }
        let elapsed = now.duration_since(self.step_at).as_secs_f64();
        self.step_at = now;
        let queue = self.delays.step();
        if queue.is_some_and(|q| q < Duration::from_millis(5)) {
            self.empty_steps += 1;
        } else if queue.is_some() {
            self.empty_steps = 0;
        }
        let sent_bps = self.sent_step as f64 * 8.0 / elapsed;
        // More was asked than allowed for a good part of the step (or padding filled it):
        // the rate, not the demand, set what went out.
        let limited = self.held_step * 4 >= self.sent_step.max(1) || self.probe_until.is_some();
        self.sent_step = 0;
        self.held_step = 0;
        self.delivered.push_back(self.acked_step as f64 * 8.0 / elapsed);
        if self.delivered.len() > DELIVERED_STEPS {
            self.delivered.pop_front();
        }
        self.acked_step = 0;
        self.capacity.step(now, queue, self.cfg.target, sent_bps);
        self.run_probe(now);
        if self.slowing_down(now) {
            return;
        }
        // What the uplink delivered lately: the rate, when the rate was too high.
        let delivered = self.delivered.iter().copied().fold(0.0, f64::max);
        // Gain on what was delivered, by where the queue stands: ×1.25 with no queue, ×1 at
        // half the target (where it settles, so the target is a ceiling rather than a
        // standing queue), ×0.83 at the target, ×0.5 at twice the target or when a loss came
        // with a full queue.
        let gain = queue.map_or(1.0, |q| {
            let (q, half) = (q.as_secs_f64(), self.cfg.target.as_secs_f64() / 2.0);
            if q <= half {
                // Quick while the uplink shows no queue for a while (starting, or taking it
                // back), gentle near where it settles.
                let most = if self.empty_steps >= 3 { 0.25 } else { 0.1 };
                1.0 + most * (1.0 - q / half)
            } else {
                (1.0 - 0.5 * (q - half) / (3.0 * half)).max(0.5)
            }
        });
        let mut gain = gain;
        if std::mem::take(&mut self.congested_step) {
            gain = gain.min(0.5);
        }
        // A change shows in the samples only a round trip (queue included) later: until then
        // the queue still reflects the rate before it, and is no reason to change again
        // (LEDBAT changes its window once a round trip).
        let settling = self.last_change.is_some_and(|t| {
            let feedback = self.delays.smallest_base().unwrap_or_default() + queue.unwrap_or_default() + STEP;
            now.duration_since(t) < feedback
        });
        if !settling {
            let next = if gain < 1.0 {
                (delivered * gain).min(self.rate)
            } else if limited {
                delivered.max(FLOOR_BPS) * gain
            } else {
                // Asked for less than allowed: keep the rate (demand comes back), but hold
                // none the uplink never tried beyond twice what was used.
                let next = delivered.max(FLOOR_BPS) * gain;
                self.rate.max(next).min((2.0 * sent_bps).max(INITIAL_BPS).max(next))
            };
            if next != self.rate {
                self.rate = next;
                self.last_change = Some(now);
            }
        }
        let cap = self.cfg.cap_bps.unwrap_or(f64::INFINITY);
        self.rate = self.rate.clamp(FLOOR_BPS.min(cap), cap.max(FLOOR_BPS.min(cap)));
        // Over target while sending under half of what the uplink carries: the queue is
        // the household's, and we are stepping aside.
        self.yielding =
            queue.is_some_and(|q| q > self.cfg.target) && self.capacity.bps().is_some_and(|c| self.rate < 0.5 * c);
    }

    /// LEDBAT++'s periodic slowdown: the rate drops to the floor long enough for our own
    /// queue to drain, so every path's base delay is measured again. True while it lasts.
    fn slowing_down(&mut self, now: Instant) -> bool {
        if self.cfg.mode == Mode::Foreground || self.delays.is_empty() {
            return false;
        }
        if let Some(until) = self.slowdown_until {
            if now < until {
                return true;
            }
            self.slowdown_until = None;
            self.rate = self.rate_before_slowdown;
            self.delays.trust_all();
            self.next_slowdown = Some(now + SLOWDOWN_EVERY);
            return false;
        }
        let next = *self.next_slowdown.get_or_insert(now + SLOWDOWN_EVERY);
        // Only worth it when we hold a queue; an empty one shows every base already.
        if now >= next && self.probe_until.is_none() && self.delays.queue().is_some_and(|q| q > self.cfg.target / 4) {
            self.rate_before_slowdown = self.rate;
            self.rate = FLOOR_BPS;
            self.slowdown_until = Some(now + SLOWDOWN);
            return true;
        }
        if now >= next {
            self.next_slowdown = Some(now + SLOWDOWN_EVERY);
        }
        false
    }

    /// Starts a probe when due (the estimate is unproven or stale), ends it once the uplink
    /// was seen full or it ran long enough.
    fn run_probe(&mut self, now: Instant) {
        if let Some(until) = self.probe_until {
            if now >= until || self.capacity.measured_since(until - PROBE_FOR) {
                self.probe_until = None;
                // Spaced out while it keeps finding the same; soon again after a fall.
                self.probe_spacing = if self.capacity.fell_lately() {
                    PROBE_SPACING_MIN
                } else {
                    (self.probe_spacing * 2).min(PROBE_SPACING_MAX)
                };
                self.next_probe = Some(now + self.probe_spacing);
            }
            return;
        }
        let Some(next) = self.next_probe else {
            return;
        };
        // A node that fills its uplink with chunks shows what it carries without padding.
        if self
            .capacity
            .measured_since(now.checked_sub(self.probe_spacing).unwrap_or(now))
        {
            self.next_probe = Some(now + self.probe_spacing);
            return;
        }
        if now >= next && !self.delays.is_empty() && self.slowdown_until.is_none() {
            self.probe_until = Some(now + PROBE_FOR);
        }
    }
}

#[cfg(test)]
mod tests;
