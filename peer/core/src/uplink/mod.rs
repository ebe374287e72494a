//! This node's uplink: how fast to release chunks so the household's router queue stays short
//! and the household's own traffic comes first, and what the uplink carries, learnt from the
//! link rather than declared. One per node, shared by all its connections: they all queue in
//! the same router, so one controller sees the whole load, picks what goes first (newest
//! chunks, across neighbours), and gives the swarm core one capacity to plan children with.
//!
//! The controller is LEDBAT++ (draft-irtf-iccrg-ledbat-plus-plus) in rate form, on round
//! trips (QUIC measures no one-way delay): hold the queueing delay under a 60 ms target,
//! following the bottleneck's delivery rate with a gain set by the queue, keep each path's
//! base delay as a history of per-minute minima, and slow down to let the queue drain when
//! too few paths' bases can be believed or a queue has stood for long. A loss cuts the rate
//! only when losses come markedly more often at the queue's top than elsewhere (`loss.rs`):
//! random loss (2 % in the bench) never starves it (the trap that made Freenet drop its
//! LEDBAT++). docs/uplinks.md has the parameters.
//!
//! Sans-IO: the driver reports round-trip samples, acknowledged and lost bytes, and chunk
//! bytes released (and whether the rate held them back), and calls `poll` now and then.

mod capacity;
mod delay;
mod loss;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use capacity::Capacity;
pub use capacity::How;
use delay::{Delays, Sample};
use loss::Losses;

/// After stepping aside, children are planned with the rate left for this long.
const YIELD_HOLD: Duration = Duration::from_secs(5);
/// Share of the measured capacity chunks are released at, at most (between probes).
const UNDER_CAPACITY: f64 = 0.95;
/// How often the rate is adjusted.
pub const STEP: Duration = Duration::from_millis(100);
/// Rate before anything is known.
const INITIAL_BPS: f64 = 1_000_000.0;
/// The least a yielding uplink keeps sending (LEDBAT's two packets per round trip, roughly):
/// it keeps round-trip samples coming, so it sees the household's traffic go away.
pub const FLOOR_BPS: f64 = 64_000.0;
/// Steps over which the delivery rate is followed (ACKs come in bursts: rates are taken over
/// two steps).
const DELIVERED_STEPS: usize = 10;
/// Slowdowns: how long the rate stays at the floor, and how often.
/// (LEDBAT++ slows down every nine slowdowns' length; every slowdown holds back the chunks
/// of this node's children, and a new path's base is taken less the queue the others see, so
/// shoal slows down less often.)
const SLOWDOWN: Duration = Duration::from_millis(200);
const SLOWDOWN_MAX: Duration = Duration::from_millis(500);
/// After drops at a full queue, growth is a packet a round trip for this long.
const GENTLE_AFTER_DROPS: Duration = Duration::from_secs(10);
/// Drops while sending this share of what the uplink was seen to carry or more are our own
/// overshoot (a keyframe's burst, growth past the measure): the rate goes back to
/// `AFTER_OVERSHOOT` of what it carried, not to half; when drops come again within
/// `DROPS_AGAIN`, of what it delivered in the last second too (beside a household's flow, that
/// is our shrinking share).
const OVERSHOOT_SHARE: f64 = 0.85;
const AFTER_OVERSHOOT: f64 = 0.85;
/// Steps (a second) of a queue standing (at twice the target, or again after drops) after
/// which drops are not our overshoot.
const STANDS_NOT_OURS: u32 = 10;
const DROPS_AGAIN: Duration = Duration::from_secs(5);
/// Drops reported this soon after a cut were mostly sent before it (they show a round trip,
/// the queue and QUIC's loss detection later): one cut per episode, as TCP's recovery.
const RECOVERY: Duration = Duration::from_secs(1);
const PACKET_BITS: f64 = 1200.0 * 8.0;
/// The least delay target, whatever the router drops at.
const MIN_TARGET: Duration = Duration::from_millis(10);
/// A queue under this reads as empty whatever the target: one-way delays wander by a few
/// milliseconds (a base taken at a quieter moment, timers, scheduling). Behind a shallow
/// router, a quarter of the least target read 2-4 ms of that as a standing queue, and the
/// uplink was not probed back after the household's upload for 5 s and more.
const EMPTY_QUEUE: Duration = Duration::from_millis(5);
/// Without drops for this long, the target grows back by a quarter.
const TARGET_REGROW: Duration = Duration::from_secs(30);
/// Too few believed paths call for a slowdown this often at most.
const BLIND_SLOWDOWN_EVERY: Duration = Duration::from_secs(5);
/// Under this share of what the uplink carries, new paths see it quiet.
const QUIET_SHARE: f64 = 0.25;
/// Pressure this recent makes a quiet uplink worth probing again.
const PRESSED_LATELY: Duration = Duration::from_secs(60);
/// After a fall of the estimate, an empty queue this many steps (a second) calls a probe.
const FREED_STEPS: u32 = 10;
/// More to send and no queue for this many steps (2.5 s): grow past the measured capacity.
const ROOM_STEPS: u32 = 25;
/// A queue standing this many steps (five seconds) calls for a slowdown when one is due.
const STANDING_STEPS: u32 = 50;
const SLOWDOWN_EVERY: Duration = Duration::from_secs(30);
/// A probe ends after this long even if the uplink never filled (a fast, unshaped uplink).
const PROBE_FOR: Duration = Duration::from_secs(6);
/// A probe pads up to this rate at most, and ends once the uplink was seen to carry nine
/// tenths of it. (The estimate is taken over a second while the rate grows threefold in one:
/// on loopback, first joiners padded towards 100 Mbit/s each, and ten nodes' padding took
/// the CPU from their chunks on a 2-core machine.)
const PROBE_ENOUGH_BPS: f64 = 25_000_000.0;
/// A probe's own queue has drained this long after it ended (the deepest router queues hold
/// 400 ms, and the rate after it is under what the uplink carries).
const PROBE_DRAINS_IN: Duration = Duration::from_secs(2);
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
    /// The queueing delay held at most: the configured target, or less behind a router that
    /// drops before its queue reaches it.
    pub target: Duration,
    pub probing: bool,
    /// The rate is held down by a queue we did not build (the household's traffic).
    pub yielding: bool,
}

#[derive(Debug)]
pub struct Uplink {
    cfg: UplinkConfig,
    delays: Delays,
    losses: Losses,
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
    /// The delay target in force: the configured one, or less behind a router that drops
    /// before its queue reaches it (a shallow, well-managed queue); and the queue at which
    /// drops came lately.
    target: Duration,
    drops_at: Option<Duration>,
    target_set: Instant,
    /// Steps in a row with a queue of a quarter of the target or more.
    standing_steps: u32,
    /// Steps in a row with more to send and (almost) no queue.
    room_steps: u32,
    /// Steps in a row with (almost) no queue.
    quiet_steps: u32,
    /// Steps in a row with a queue of twice the target or more.
    deep_steps: u32,
    /// The last drop that came with a full queue.
    last_congestion: Option<Instant>,
    /// When the last slowdown ended.
    slowed_at: Option<Instant>,
    /// When drops last cut the rate.
    cut_at: Option<Instant>,
    /// Why the rate last changed (for tracing).
    why: &'static str,
    /// When a queue we did not want last stood (drops, or over the target), and when the
    /// last probe started.
    pressed_at: Option<Instant>,
    probed_at: Option<Instant>,
    slowdown_until: Option<Instant>,
    next_slowdown: Option<Instant>,
    rate_before_slowdown: f64,
    last_change: Option<Instant>,
    probe_until: Option<Instant>,
    next_probe: Option<Instant>,
    probe_spacing: Duration,
    /// A probe ended and its queue has not yet drained: that queue is ours, not pressure
    /// (until then at the latest: beside a household's upload, the queue never drains).
    probe_draining: Option<Instant>,
    yielding: bool,
    /// Until when children are planned with the rate the household leaves us, not the
    /// uplink's capacity: a household's upload lasts a while, and children a parent cannot
    /// feed are better off finding another one now than being fed late.
    yielded_until: Option<Instant>,
}

impl Uplink {
    pub fn new(cfg: UplinkConfig, now: Instant) -> Self {
        let rate = cfg.cap_bps.map_or(INITIAL_BPS, |c| c.min(INITIAL_BPS));
        Uplink {
            capacity: Capacity::new(now),
            delays: Delays::default(),
            losses: Losses::default(),
            rate,
            step_at: now,
            sent_step: 0,
            held_step: 0,
            acked_step: 0,
            delivered: VecDeque::new(),
            congested_step: false,
            target: cfg.target,
            drops_at: None,
            target_set: now,
            standing_steps: 0,
            room_steps: 0,
            quiet_steps: 0,
            deep_steps: 0,
            last_congestion: None,
            slowed_at: None,
            cut_at: None,
            why: "start",
            pressed_at: None,
            probed_at: None,
            slowdown_until: None,
            next_slowdown: None,
            rate_before_slowdown: rate,
            last_change: None,
            probe_until: None,
            next_probe: cfg.probe.then_some(now),
            probe_spacing: PROBE_SPACING_MIN,
            probe_draining: None,
            yielding: false,
            yielded_until: None,
            cfg,
        }
    }

    /// Whether chunks wait for a rate here at all: always in the background, in the
    /// foreground only under `--upload-kbps` (fixed at the start).
    pub fn paces(&self) -> bool {
        self.pacing_bps().is_some()
    }

    /// A round-trip sample on `path` (one per acknowledged packet is fine).
    pub fn on_rtt(&mut self, path: u64, rtt: Duration, now: Instant) {
        self.sample(path, Sample::RoundTrip(rtt), now);
    }

    /// A one-way delay sample on `path`: the receiver's clock when a packet arrived less ours
    /// when it was sent (any constant offset between the clocks is fine). A path with these
    /// reads our uplink's queue without the receiver's own on the way back.
    pub fn on_one_way(&mut self, path: u64, delay: Duration, now: Instant) {
        self.sample(path, Sample::OneWay(delay), now);
    }

    fn sample(&mut self, path: u64, sample: Sample, now: Instant) {
        // A path first sampled while we send little sees our uplink's queue empty (unless
        // the household's traffic fills it: nothing tells that apart from the path's base).
        let most = self.capacity.bps().unwrap_or(INITIAL_BPS).max(INITIAL_BPS);
        let quiet = self.probe_until.is_none() && self.capacity.recent_sent_bps() < QUIET_SHARE * most;
        self.delays.sample(path, sample, now, quiet);
    }

    /// Bytes sent at `sent` that the other end acknowledged on `path`: what the uplink
    /// carried.
    pub fn on_acked(&mut self, path: u64, bytes: u64, sent: Instant) {
        self.capacity.acked(path, bytes, sent);
        self.acked_step += bytes;
        self.losses.acked(bytes, self.delays.at_top(path));
    }

    /// Bytes declared lost on `path`: a congestion signal only where the router drops (at a
    /// full queue, markedly more often than elsewhere).
    pub fn on_lost(&mut self, path: u64, bytes: u64) {
        // (Overloaded: losses so frequent the router drops whatever the delay says; its queue
        // is then shallower than what the paths' bases hide, and the target goes below it.)
        let routers = self.losses.lost(bytes, self.delays.at_top(path)) || self.losses.overloaded();
        if self.cfg.mode == Mode::Background && self.slowdown_until.is_none() && routers {
            self.congested_step = true;
            // A router that drops at this queue is shallower than the target: aim below it.
            if let Some(q) = self.delays.excess(path) {
                let at = self.drops_at.map_or(q, |d| d.mul_f64(0.7) + q.mul_f64(0.3));
                self.drops_at = Some(at);
                self.target = at.mul_f64(0.8).clamp(MIN_TARGET, self.cfg.target);
            }
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

    /// Under this, the uplink's queue counts as empty (drained, quiet, with room).
    fn empty_below(&self) -> Duration {
        (self.target / 4).max(EMPTY_QUEUE)
    }

    /// The upload the swarm core may plan children with (bit/s), or `None` to let it use its
    /// defaults. A yielding (background) node plans with what it has seen its uplink carry,
    /// and until it has seen anything with the rate it starts at: enough to answer repairs,
    /// too little to take children (a newcomer is probed, not trusted). A foreground node
    /// (a public relay, presumed strong) plans with defaults until its uplink was seen full.
    pub fn plan_bps(&self) -> Option<f64> {
        match (self.cfg.mode, self.capacity.how()) {
            // (Measured or not: a node that stepped aside while it was still probing, with
            // only a lower bound, planned children on that bound and fed them at the floor.)
            (Mode::Background, _) if self.yielded_until.is_some() => {
                Some(self.capacity_bps().map_or(self.rate, |c| c.min(self.rate)))
            }
            (_, How::Measured) => self.capacity_bps(),
            // The owner's word stands until the uplink is seen to carry less, or drops its
            // packets under it (a household's upload that started before us holds the queue
            // we would measure with: then what it lets through is all we have).
            (Mode::Background, _) if self.cfg.cap_bps.is_some() => {
                let dropping = self
                    .last_congestion
                    .is_some_and(|t| self.step_at.saturating_duration_since(t) < GENTLE_AFTER_DROPS);
                let through = self.rate.max(self.capacity_bps().unwrap_or(0.0));
                self.cfg
                    .cap_bps
                    .map(|cap| if dropping { cap.min(through) } else { cap })
            }
            (Mode::Background, _) => {
                let seen = self.capacity_bps().unwrap_or(0.0).max(INITIAL_BPS);
                Some(self.cfg.cap_bps.map_or(seen, |c| c.min(seen)))
            }
            (Mode::Foreground, _) => self.cfg.cap_bps,
        }
    }

    /// For tracing: why the rate last changed.
    pub fn why(&self) -> &'static str {
        self.why
    }

    /// Paths whose delays are believed and fresh (sampled within the last second): the queue
    /// is read on these. Under two, the controller is blind (it slows down to see again).
    pub fn paths_believed(&self, now: Instant) -> usize {
        self.delays.trusted_lately(now)
    }

    /// For debugging: the paths' delays.
    pub fn describe_paths(&self) -> String {
        format!("{} losses {}", self.delays.describe(), self.losses.describe())
    }

    pub fn report(&self) -> Report {
        Report {
            mode: self.cfg.mode,
            pacing_bps: self.pacing_bps(),
            capacity_bps: self.capacity_bps(),
            how: self.capacity.how(),
            queue: self.delays.queue(),
            target: self.target,
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
        self.losses.step();
        let congested = std::mem::take(&mut self.congested_step);
        if !congested && now.duration_since(self.target_set) >= TARGET_REGROW {
            // No drop for a while: let the target grow back (the household may have changed
            // routers, or the drops were not the router's).
            self.target = self.target.mul_f64(1.25).min(self.cfg.target);
            self.target_set = now;
        } else if congested {
            self.target_set = now;
        }
        if let Some(q) = queue {
            let (standing, deep) = (q >= self.empty_below(), q >= 2 * self.target);
            self.standing_steps = if standing { self.standing_steps + 1 } else { 0 };
            self.quiet_steps = if standing { 0 } else { self.quiet_steps + 1 };
            self.deep_steps = if deep { self.deep_steps + 1 } else { 0 };
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
        // (A queue is proof of a full uplink only while we were sending all we could: with
        // less asked of it, it is a busy household, or noise.)
        // (Nor a queue only one path sees: see `Delays::corroborated`.)
        let full_evidence = queue.filter(|_| self.delays.corroborated());
        self.capacity.allowed(self.rate);
        self.capacity
            .step(now, full_evidence, self.target, congested, limited, sent_bps);
        self.run_probe(now);
        if self.slowing_down(now, queue) {
            return;
        }
        // What the uplink delivered: lately, and at most over the window (the bottleneck's
        // rate, once a queue stood: then the uplink, not we, set what went through).
        let pairs = self.delivered.iter().zip(self.delivered.iter().skip(1));
        let bottleneck = pairs.map(|(a, b)| (a + b) / 2.0).fold(0.0, f64::max);
        let recent = self.delivered.iter().rev().take(2).sum::<f64>() / 2.0;
        // Gain by where the queue stands: ×1.25 with (almost) none, ×1 at half the target
        // (where it settles, so the target is a ceiling rather than a standing queue), ×0.83
        // at the target, ×0.5 at twice the target or when a loss came with a full queue.
        let mut gain = queue.map_or(1.0, |q| {
            let (q, half) = (q.as_secs_f64(), self.target.as_secs_f64() / 2.0);
            if q <= half {
                1.0 + 0.25 * (1.0 - q / half)
            } else {
                // (×0.75 at most until twice the target: a keyframe's burst is no reason to
                // halve.)
                let floor = if q > 4.0 * half { 0.5 } else { 0.75 };
                (1.0 - 0.5 * (q - half) / (3.0 * half)).max(floor)
            }
        });
        // What the uplink was measured to carry (0 until it was).
        let measured = match self.capacity.how() {
            How::Measured => self.capacity.bps().unwrap_or(0.0),
            _ => 0.0,
        };
        // Drops while we sent near or past what the uplink was seen to carry (measured, or
        // at least delivered while a probe grows): most likely our own overshoot; back under
        // it, not to half (children were planned on it, and half of it starves them every
        // few seconds behind a shallow queue). Drops that come again soon cut under what it
        // delivered lately as well: beside a household's flow that is our share, and each
        // episode cuts into it. (Not the first: what it delivered in the last second is low
        // after a quiet spell, when a probe or the rate's growth overshoots.)
        let since_cut = self.cut_at.map(|t| now.duration_since(t));
        let again = since_cut.is_some_and(|d| d < DROPS_AGAIN);
        let carried = self.capacity.bps().unwrap_or(0.0);
        let carried = if again { carried.min(bottleneck) } else { carried };
        // (Drops soon after a cut belong to the episode that cut.)
        let recovering = since_cut.is_some_and(|d| d < RECOVERY);
        let cuts = congested && !recovering;
        // (Not drops at a queue that has stood at twice the target for a second, nor drops
        // again at a queue that has stood a second: that is someone else's upload filling the
        // router (ours drains under the 0.95 we hold to), and our share beside it is what we
        // keep by not cutting. A household's TCP that started beside a relay sending 0.9 of
        // its uplink got 0.68 and 0.74 of what it gets alone in the simulator's lab.)
        let someone_elses = self.deep_steps >= STANDS_NOT_OURS || (again && self.standing_steps >= STANDS_NOT_OURS);
        let overshoot = cuts && carried > 0.0 && self.rate >= OVERSHOOT_SHARE * carried && !someone_elses;
        if congested {
            self.last_congestion = Some(now);
        }
        if cuts {
            gain = gain.min(0.5);
        }
        // Someone else's traffic held the queue up (drops, or a queue over the target, while
        // we sent under half of what the uplink carries): once it is gone, probe again to
        // see the uplink come back. (Not our own probe's queue: that would call the next.)
        // (Nor the queue a probe left, until it drained: read as pressure, it called the next
        // probe a second later, and a 1 Mbit/s uplink was probed every few seconds.)
        if queue.is_some_and(|q| q < self.empty_below()) || self.probe_draining.is_some_and(|t| now >= t) {
            self.probe_draining = None;
        }
        if self.yielding
            && self.probe_until.is_none()
            && self.probe_draining.is_none()
            && (congested || queue.is_some_and(|q| q > self.target))
        {
            self.pressed_at = Some(now);
        }
        // A change shows in the samples only a round trip (queue included) later: until then
        // the queue still reflects the rate before it, and is no reason to change again
        // (LEDBAT changes its window once a round trip).
        let settling = self.last_change.is_some_and(|t| {
            let feedback = self.delays.smallest_rtt().unwrap_or_default() + queue.unwrap_or_default() + STEP;
            now.duration_since(t) < feedback
        });
        if !settling || overshoot {
            if cuts {
                self.cut_at = Some(now);
            }
            self.why = if overshoot {
                "overshoot"
            } else if cuts {
                "drops"
            } else if gain < 1.0 {
                "queue"
            } else {
                "grow"
            };
            // Down by the gain: from what the uplink delivered if we filled it, else from the
            // rate (what we sent was less: the queue is not all ours).
            let from = if limited { recent.min(self.rate) } else { self.rate };
            let down = (from.max(FLOOR_BPS) * gain).min(self.rate);
            let next = if overshoot {
                // (A softer cut, never a deeper one: on a fast link asked for little, what it
                // carried is only a lower bound, far under the rate.)
                down.max(AFTER_OVERSHOOT * carried).min(self.rate)
            } else if gain < 1.0 {
                down
            } else if limited {
                // More to send than the rate lets out: up to a quarter above what the uplink
                // was seen to deliver, never down without a queue.
                self.rate.max(bottleneck * gain)
            } else {
                // Asked for less than allowed: keep the rate (demand comes back, in bursts:
                // a keyframe to every child at once), but hold none the uplink was not seen
                // to carry and never tried beyond twice what was used.
                let next = self.rate.max(bottleneck * gain);
                let seen = self.capacity.bps().unwrap_or(0.0);
                next.min((2.0 * sent_bps).max(INITIAL_BPS).max(seen).max(bottleneck * gain))
            };
            // After drops at a full queue (someone else's TCP filled it, perhaps before we
            // came, so the delay looks like base), grow as LEDBAT does, a packet a round
            // trip: slower than the TCP, which then keeps its share.
            // (Up to what the uplink was measured to carry, quickly: a probe's own overshoot
            // drops some too.)
            let next = match self.last_congestion {
                Some(t) if next > self.rate.max(0.9 * measured) && now.duration_since(t) < GENTLE_AFTER_DROPS => {
                    let round_trip = self.delays.smallest_rtt().unwrap_or_default() + queue.unwrap_or_default() + STEP;
                    next.min(self.rate + PACKET_BITS / round_trip.as_secs_f64())
                }
                _ => next,
            };
            if next != self.rate {
                self.rate = next;
                self.last_change = Some(now);
            }
        }
        // Once the uplink was measured, stay a little under it: the queue then drains
        // instead of standing at the controller's set point (every hop's chunks wait in it,
        // and so do the household's packets). Probes measure it again, to see it grow.
        // (Not while more waits and the queue stays empty: the uplink has room beyond what
        // was measured, as when the household's traffic that was measured beside is gone.)
        self.room_steps = if limited && queue.is_some_and(|q| q < self.empty_below()) {
            self.room_steps + 1
        } else {
            0
        };
        let mut cap = self.cfg.cap_bps.unwrap_or(f64::INFINITY);
        if self.probe_until.is_some() {
            cap = cap.min(PROBE_ENOUGH_BPS);
        }
        if self.capacity.how() == How::Measured && self.probe_until.is_none() && self.room_steps < ROOM_STEPS {
            cap = cap.min(UNDER_CAPACITY * self.capacity.bps().unwrap_or(f64::INFINITY));
        }
        self.rate = self.rate.clamp(FLOOR_BPS.min(cap), cap.max(FLOOR_BPS.min(cap)));
        // Over target while sending under half of what the uplink carries: the queue is
        // the household's, and we are stepping aside.
        // (Half of the most it was seen to carry lately: the estimate itself falls to our
        // share while the household's traffic lasts.)
        self.yielding = queue.is_some_and(|q| q > self.target) && self.rate < 0.5 * self.capacity.peak_bps(now);
        if self.yielding {
            self.yielded_until = Some(now + YIELD_HOLD);
        } else if self.yielded_until.is_some_and(|t| now >= t) {
            self.yielded_until = None;
        }
    }

    /// LEDBAT++'s periodic slowdown: the rate drops to the floor long enough for our own
    /// queue to drain, so every path's base delay is measured again. True while it lasts.
    fn slowing_down(&mut self, now: Instant, queue: Option<Duration>) -> bool {
        if self.cfg.mode == Mode::Foreground || self.delays.is_empty() {
            return false;
        }
        if let Some(until) = self.slowdown_until {
            // Until the queue is seen drained (LEDBAT++ slows for two round trips, queue
            // included), at least `SLOWDOWN`, at most `SLOWDOWN_MAX`.
            let drained = queue.is_some_and(|q| q < self.empty_below());
            let started = until - SLOWDOWN;
            if now < until || (!drained && now.duration_since(started) < SLOWDOWN_MAX) {
                return true;
            }
            self.slowdown_until = None;
            self.rate = self.rate_before_slowdown;
            self.why = "slowdown over";
            // Drained (or as drained as our own queue gets at the floor in this long): the
            // paths sampled meanwhile show their bases.
            self.delays.trust_sampled_since(started + SLOWDOWN / 2);
            self.next_slowdown = Some(now + SLOWDOWN_EVERY);
            self.slowed_at = Some(now);
            return false;
        }
        let blind = !self.delays.is_empty() && self.delays.trusted_lately(now) < 2;
        let next = *self.next_slowdown.get_or_insert(now + SLOWDOWN_EVERY);
        let blind_due = blind
            && self
                .slowed_at
                .is_none_or(|t| now.duration_since(t) >= BLIND_SLOWDOWN_EVERY);
        if now < next && !blind_due {
            return false;
        }
        // Only while a queue has stood since the last one: an empty queue shows every path's
        // base already, and a slowdown holds back every child's chunks.
        // Or when too few paths are believed to measure the queue on (new neighbours came
        // while we sent): draining the queue lets every path's base be taken.
        // (A probe too: a newcomer opens most of its paths while its first probe fills the
        // queue, and a probe seen on fewer than two paths never shows the uplink full.)
        let due = blind || (self.probe_until.is_none() && self.standing_steps >= STANDING_STEPS);
        if due && self.rate > 2.0 * FLOOR_BPS {
            if let Some(until) = self.probe_until.as_mut() {
                *until += SLOWDOWN_MAX;
            }
            self.rate_before_slowdown = self.rate;
            self.rate = FLOOR_BPS;
            self.why = if blind { "slowdown (blind)" } else { "slowdown" };
            self.slowdown_until = Some(now + SLOWDOWN);
            return true;
        }
        false
    }

    /// Starts a probe when due (the estimate is unproven or stale), ends it once the uplink
    /// was seen full or it ran long enough.
    fn run_probe(&mut self, now: Instant) {
        if let Some(until) = self.probe_until {
            // (An uplink that carries this much has more room than any swarm asks of it: a
            // fast line is not filled with padding to find its end.)
            let enough = self.capacity.bps().is_some_and(|c| c >= 0.9 * PROBE_ENOUGH_BPS);
            let found = self.probed_at.is_some_and(|t| self.capacity.measured_since(t));
            if now >= until || enough || found {
                self.probe_until = None;
                self.probe_draining = Some(now + PROBE_DRAINS_IN);
                // What it found is the rate from now on (a little under it: the queue the
                // probe built drains).
                if found && let Some(c) = self.capacity.bps() {
                    self.rate = (UNDER_CAPACITY * c).max(FLOOR_BPS);
                    self.why = "probe found";
                    self.last_change = Some(now);
                }
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
        // Soon after the estimate fell (the household took the uplink), probe as soon as the
        // queue has been empty a while: the uplink may be free again.
        // (Pressure is the queue we stepped aside for, or a fall of the estimate: our share
        // beside a household's traffic. Freed once the queue is quiet again, and only the
        // first time after it.)
        let pressed_at = self.pressed_at.max(self.capacity.fell_at());
        let pressed = self.capacity.fell_lately() || pressed_at.is_some_and(|t| now.duration_since(t) < PRESSED_LATELY);
        let freed = pressed && self.quiet_steps >= FREED_STEPS && self.probed_at < pressed_at;
        // A node that fills its uplink with chunks shows what it carries without padding.
        // (Not once the household's traffic went away: what was measured beside it was only
        // our share.)
        if !freed
            && self
                .capacity
                .measured_since(now.checked_sub(self.probe_spacing).unwrap_or(now))
        {
            self.next_probe = Some(now + self.probe_spacing);
            return;
        }
        // (Not before two paths are believed: the queue the probe builds must be seen.)
        let seeing = self.delays.trusted_lately(now) >= 2;
        if (now >= next || freed) && seeing && self.slowdown_until.is_none() {
            self.probe_until = Some(now + PROBE_FOR);
            self.probed_at = Some(now);
            // The uplink carried its peak a few minutes ago at most, and the queue is quiet
            // now: half of it at once, the rest as the probe grows.
            // (The drops of the household's flow are over with it: no gentle growth after
            // them, or a fast uplink takes many seconds to come back.)
            if freed {
                self.last_congestion = None;
                self.rate = self.rate.max(0.5 * self.capacity.peak_bps(now));
                self.why = "freed";
                self.last_change = Some(now);
            }
            // What the probe finds is measured from now on, alone (a window begun beside the
            // household's traffic would end it at once with that traffic's leftovers).
            self.capacity.probe_from(now);
        }
    }
}

#[cfg(test)]
mod tests;
