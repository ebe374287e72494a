//! What the uplink carries, from what it delivered: bytes acknowledged. While a queue stands
//! on the uplink (half the delay target or more) it is full, so what it delivers then is the
//! capacity (or our share of it, beside the household's traffic); a second with too little
//! of that (a keyframe's burst is not a full uplink) only shows the capacity is at least
//! what went through.
//!
//! What was acknowledged in a spell counts at most at the pace the uplink passed it, per
//! path (BBR's delivery rate takes the longer of the send and ACK spans; ours allows for our
//! own queue's growth): a receiver whose own uplink queue drains sends a backlog of ACKs at
//! once, and those came faster than our uplink carried.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

const WINDOW: Duration = Duration::from_secs(1);
/// Full time in a window that makes it a measure of the capacity.
const FULL_FOR: Duration = Duration::from_millis(300);
/// A full spell shorter than this is not measured: its ends (a router's burst, a queue read
/// a step late) weigh too much in it, at a low rate above all.
const SPELL_MIN: Duration = Duration::from_millis(300);
/// A measure counts at most this much above the most the uplink carried lately.
const RISE_MOST: f64 = 1.1;
/// The most the uplink was seen to carry is remembered this long (the estimate itself falls
/// to our share while the household's traffic lasts).
const PEAK_FOR: Duration = Duration::from_secs(300);
/// A fall of the estimate is "lately" for this long (probe again soon, to see it come back).
const FELL_LATELY: Duration = Duration::from_secs(30);

/// How the capacity estimate was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum How {
    /// Nothing delivered yet.
    #[default]
    Unknown,
    /// Only lower bounds: the uplink never filled.
    AtLeast,
    /// Seen full: what it delivered then.
    Measured,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            How::Unknown => "unknown",
            How::AtLeast => "at least",
            How::Measured => "measured",
        }
    }
}

/// One path's acknowledgements over a span: the bytes, and when the first and the last of
/// them were sent.
#[derive(Clone, Copy, Debug)]
struct Acks {
    bytes: u64,
    first_sent: Instant,
    last_sent: Instant,
}

impl Acks {
    fn add(&mut self, other: Acks) {
        self.bytes += other.bytes;
        self.first_sent = self.first_sent.min(other.first_sent);
        self.last_sent = self.last_sent.max(other.last_sent);
    }
}

/// What a span of steps (a full spell, a window) had acknowledged, per path, and the
/// queueing delay at its ends.
#[derive(Debug, Default)]
struct Span {
    acks: HashMap<u64, Acks>,
    queue_first: Option<Duration>,
    queue_last: Option<Duration>,
}

impl Span {
    fn add_step(&mut self, step: &HashMap<u64, Acks>, queue: Option<Duration>) {
        for (path, acks) in step {
            self.acks.entry(*path).and_modify(|a| a.add(*acks)).or_insert(*acks);
        }
        if let Some(q) = queue {
            self.queue_first.get_or_insert(q);
            self.queue_last = Some(q);
        }
    }

    fn clear(&mut self) {
        *self = Span::default();
    }

    /// Bytes acknowledged over `span`, each path's counted at most at the pace the uplink
    /// passed them: over the time they took to send, plus how much longer our own queue
    /// made the last of them wait than the first. (Longer than the span: their ACKs came
    /// bunched.)
    fn paced_bytes(&self, span: Duration) -> f64 {
        let grew = match (self.queue_first, self.queue_last) {
            (Some(first), Some(last)) => last.as_secs_f64() - first.as_secs_f64(),
            _ => 0.0,
        };
        let span = span.as_secs_f64();
        self.acks
            .values()
            .map(|a| {
                let passed_over = a.last_sent.duration_since(a.first_sent).as_secs_f64() + grew;
                a.bytes as f64 * if passed_over > span { span / passed_over } else { 1.0 }
            })
            .sum()
    }
}

#[derive(Debug)]
pub struct Capacity {
    window_start: Instant,
    step_start: Instant,
    /// The window's acknowledgements.
    window: Span,
    /// This step's acknowledgements per path, and the current full spell's (its steps that
    /// count) and how long it has lasted.
    step_acks: HashMap<u64, Acks>,
    spell: Span,
    spell_for: Duration,
    /// Bytes acknowledged in the window's full spells (at most at the pace they were sent),
    /// and how long those lasted.
    acked_full: f64,
    full_for: Duration,
    /// The last step was full.
    was_full: bool,
    estimate: Option<f64>,
    how: How,
    measured_at: Option<Instant>,
    fell_at: Option<Instant>,
    /// Chunk bytes released, smoothed over a few steps (bit/s).
    recent_sent: f64,
    /// The highest estimate of the last `PEAK_FOR`, and when it was made.
    peak: Option<(f64, Instant)>,
    /// A probe runs: a measure far above the estimate replaces it instead of being averaged
    /// in (it measures the uplink itself, not the share the household left).
    probing: bool,
    /// The most the controller allowed in the window (bit/s): nothing was delivered faster.
    allowed_most: f64,
}

impl Capacity {
    pub fn new(now: Instant) -> Self {
        Capacity {
            window_start: now,
            step_start: now,
            window: Span::default(),
            step_acks: HashMap::default(),
            spell: Span::default(),
            spell_for: Duration::ZERO,
            acked_full: 0.0,
            full_for: Duration::ZERO,
            was_full: false,
            estimate: None,
            how: How::Unknown,
            measured_at: None,
            fell_at: None,
            recent_sent: 0.0,
            probing: false,
            peak: None,
            allowed_most: 0.0,
        }
    }

    /// The controller allows `bps` now (called every step, before `step`).
    pub fn allowed(&mut self, bps: f64) {
        self.allowed_most = self.allowed_most.max(bps);
    }

    /// The most a measure in this window may count: a little over the most the uplink
    /// carried lately (ACKs that a receiver's draining queue bunched can read 10-20 % over
    /// the uplink); in a probe, over what it sent at most (the household's traffic that held
    /// the estimate at our share may be gone: the probe measures the uplink itself).
    fn ceiling(&self, now: Instant) -> f64 {
        let lately = self.peak_bps(now);
        RISE_MOST
            * if self.probing {
                lately.max(self.allowed_most)
            } else {
                lately
            }
    }

    /// A probe starts: a fresh window, whose measure is taken as it is.
    pub fn probe_from(&mut self, now: Instant) {
        self.window_start = now;
        self.step_start = now;
        self.window.clear();
        self.step_acks.clear();
        self.spell.clear();
        self.spell_for = Duration::ZERO;
        self.acked_full = 0.0;
        self.full_for = Duration::ZERO;
        self.was_full = false;
        self.probing = true;
    }

    /// `bytes` sent at `sent` on `path` were acknowledged.
    pub fn acked(&mut self, path: u64, bytes: u64, sent: Instant) {
        let acks = Acks {
            bytes,
            first_sent: sent,
            last_sent: sent,
        };
        self.step_acks.entry(path).and_modify(|a| a.add(acks)).or_insert(acks);
    }

    /// The full spell is over (or the window is): what it delivered joins the window's.
    fn end_spell(&mut self) {
        if self.spell_for >= SPELL_MIN {
            self.acked_full += self.spell.paced_bytes(self.spell_for);
            self.full_for += self.spell_for;
        }
        self.spell_for = Duration::ZERO;
        self.spell.clear();
    }

    /// One control step: `queue` is the uplink's queueing delay in it, if measured.
    /// `congested`: the router dropped what came with a full queue (a shallow router fills
    /// before the delay reaches the target).
    /// `limited`: more was asked of the uplink than sent (or a probe filled it).
    pub fn step(
        &mut self,
        now: Instant,
        queue: Option<Duration>,
        target: Duration,
        congested: bool,
        limited: bool,
        sent_bps: f64,
    ) {
        self.recent_sent = 0.7 * self.recent_sent + 0.3 * sent_bps;
        // (Not the first step of a full spell: a router's token bucket, filled while the
        // uplink idled, passes its burst at line rate as the queue begins, and over a short
        // spell that reads 10 % above the rate.)
        let full = limited && (congested || queue.is_some_and(|q| q >= target / 2));
        self.window.add_step(&self.step_acks, queue);
        if full && self.was_full {
            self.spell.add_step(&self.step_acks, queue);
            self.spell_for += now.duration_since(self.step_start);
        } else {
            self.end_spell();
        }
        self.step_acks.clear();
        self.was_full = full;
        self.step_start = now;
        let elapsed = now.duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        // (A spell still too short to measure goes on into the next window.)
        if self.spell_for >= SPELL_MIN {
            self.end_spell();
        }
        let acked = self.window.paced_bytes(elapsed);
        let delivered = acked * 8.0 / elapsed.as_secs_f64();
        if self.full_for >= FULL_FOR {
            let delivered = self.acked_full * 8.0 / self.full_for.as_secs_f64();
            // (A probe that finds far more than the estimate took the uplink back from the
            // household: that is the uplink now. Otherwise measures are averaged.)
            let new = match (self.how, self.estimate) {
                (How::Measured, Some(e)) => {
                    let delivered = delivered.min(self.ceiling(now));
                    if self.probing && delivered > 1.5 * e {
                        delivered
                    } else {
                        0.5 * e + 0.5 * delivered
                    }
                }
                _ => delivered,
            };
            self.probing = false;
            if self.estimate.is_some_and(|e| new < 0.7 * e) {
                self.fell_at = Some(now);
            }
            // A lower bound the uplink was seen to carry stays among what it carried lately:
            // a node measured first beside its household's upload (only its share) must not
            // forget it, or it grows back from that share once the household is done.
            if self.how == How::AtLeast
                && let Some(bound) = self.estimate
                && self
                    .peak
                    .is_none_or(|(p, at)| bound > p || now.duration_since(at) > PEAK_FOR)
            {
                self.peak = Some((bound, now));
            }
            self.estimate = Some(new);
            self.how = How::Measured;
            self.measured_at = Some(now);
            if self
                .peak
                .is_none_or(|(p, at)| new >= p || now.duration_since(at) > PEAK_FOR)
            {
                self.peak = Some((new, now));
            }
        } else if acked > 0.0 {
            // (A measured estimate rises this way by a few percent at a time, as above; in
            // a probe, up to what it sent.)
            let most = match self.how {
                How::Measured if self.probing => self.ceiling(now),
                How::Measured => RISE_MOST * self.estimate.unwrap_or(0.0),
                _ => f64::INFINITY,
            };
            self.estimate = Some(self.estimate.map_or(delivered, |e| e.max(delivered.min(most))));
            if self.how == How::Unknown {
                self.how = How::AtLeast;
            }
        }
        self.window_start = now;
        self.window.clear();
        self.acked_full = 0.0;
        self.full_for = Duration::ZERO;
        self.allowed_most = 0.0;
    }

    pub fn bps(&self) -> Option<f64> {
        self.estimate
    }

    /// The most the uplink was measured to carry in the last few minutes (the estimate
    /// before it was measured).
    pub fn peak_bps(&self, now: Instant) -> f64 {
        let estimate = self.estimate.unwrap_or(0.0);
        match self.peak {
            Some((p, at)) if now.duration_since(at) <= PEAK_FOR => p.max(estimate),
            _ => estimate,
        }
    }

    pub fn how(&self) -> How {
        self.how
    }

    pub fn recent_sent_bps(&self) -> f64 {
        self.recent_sent
    }

    /// Whether the uplink was seen full at or after `t`.
    pub fn measured_since(&self, t: Instant) -> bool {
        self.measured_at.is_some_and(|m| m >= t)
    }

    /// When the estimate last fell.
    pub fn fell_at(&self) -> Option<Instant> {
        self.fell_at
    }

    pub fn fell_lately(&self) -> bool {
        self.measured_at
            .zip(self.fell_at)
            .is_some_and(|(m, f)| m.duration_since(f) < FELL_LATELY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(c: &mut Capacity, t: &mut Instant, acked_bytes: u64, queue_ms: u64) {
        for _ in 0..10 {
            c.acked(0, acked_bytes / 10, *t);
            *t += Duration::from_millis(100);
            c.step(
                *t,
                Some(Duration::from_millis(queue_ms)),
                Duration::from_millis(60),
                false,
                true,
                0.0,
            );
        }
    }

    #[test]
    fn a_full_uplink_measures_it_an_empty_one_only_bounds_it() {
        let mut t = Instant::now();
        let mut c = Capacity::new(t);
        assert_eq!((c.bps(), c.how()), (None, How::Unknown));
        second(&mut c, &mut t, 125_000, 2); // 1 Mbit/s through, no queue
        assert_eq!((c.bps(), c.how()), (Some(1e6), How::AtLeast));
        second(&mut c, &mut t, 375_000, 55); // 3 Mbit/s with a standing queue: full
        assert_eq!((c.bps(), c.how()), (Some(3e6), How::Measured));
        second(&mut c, &mut t, 125_000, 3); // less asked of it: still 3
        assert_eq!(c.bps(), Some(3e6));
        // A keyframe's burst: a queue for 200 ms of the second is not a full uplink.
        for (i, q) in [40, 40, 0, 0, 0, 0, 0, 0, 0, 0].into_iter().enumerate() {
            c.acked(0, if i < 2 { 50_000 } else { 5_000 }, t);
            t += Duration::from_millis(100);
            c.step(
                t,
                Some(Duration::from_millis(q)),
                Duration::from_millis(60),
                false,
                true,
                0.0,
            );
        }
        assert_eq!(c.bps(), Some(3e6));
        assert!(!c.fell_lately());
        // The household takes the uplink: full, and only 0.5 Mbit/s ours.
        second(&mut c, &mut t, 62_500, 120);
        second(&mut c, &mut t, 62_500, 120);
        assert!(c.bps().is_some_and(|b| b < 1.2e6), "{:?}", c.bps());
        assert!(c.fell_lately());
    }

    #[test]
    fn a_routers_burst_as_the_queue_begins_does_not_raise_the_measure() {
        let mut t = Instant::now();
        let mut c = Capacity::new(t);
        // 4 Mbit/s is 50 kB a step; the token bucket filled while idle lets 16 kB more
        // through as the queue begins, then a short full spell, then little to send.
        for (i, (bytes, q)) in [(66_000, 40), (50_000, 45), (50_000, 50), (50_000, 45)]
            .into_iter()
            .chain([(5_000, 0); 6])
            .enumerate()
        {
            c.acked(0, bytes, t);
            t += Duration::from_millis(100);
            c.step(
                t,
                Some(Duration::from_millis(q)),
                Duration::from_millis(60),
                false,
                i < 4,
                0.0,
            );
        }
        assert_eq!((c.bps(), c.how()), (Some(4e6), How::Measured));
    }

    #[test]
    fn acks_that_come_faster_than_they_were_sent_do_not_raise_the_measure() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut c = Capacity::new(t);
        // Path 0 carries 4 Mbit/s. Path 1's receiver had its own uplink queue full, and as
        // it drains, ACKs for what took two seconds to send arrive within one.
        for k in 1..=10u32 {
            c.acked(0, 50_000, t);
            c.acked(1, 25_000, t0 + Duration::from_millis(200) * k - Duration::from_secs(1));
            t += Duration::from_millis(100);
            c.step(
                t,
                Some(Duration::from_millis(50)),
                Duration::from_millis(60),
                false,
                true,
                0.0,
            );
        }
        // Sent at 4 + 1 Mbit/s; acknowledged at 6.
        let measured = c.bps().unwrap_or(0.0);
        assert!((4.9e6..5.3e6).contains(&measured), "{measured}");
    }

    #[test]
    fn one_measure_far_over_the_estimate_raises_it_a_little() {
        let mut t = Instant::now();
        let mut c = Capacity::new(t);
        second(&mut c, &mut t, 375_000, 55);
        assert_eq!(c.bps(), Some(3e6));
        // Bunched ACKs: 4.5 Mbit/s read once, over a full uplink of 3.
        second(&mut c, &mut t, 562_500, 55);
        assert!(c.bps().is_some_and(|b| b <= 3.15e6 + 1.0), "{:?}", c.bps());
        // Nor does a window that was not full.
        second(&mut c, &mut t, 562_500, 2);
        assert!(c.bps().is_some_and(|b| b <= 1.1 * 3.15e6 + 1.0), "{:?}", c.bps());
    }

    #[test]
    fn our_own_queue_draining_does_not_lower_the_measure() {
        let mut t = Instant::now();
        let mut c = Capacity::new(t);
        // 4 Mbit/s through a queue that drains from 200 to 50 ms: what is acknowledged
        // in a step was sent over more than a step, and still passed at the uplink's rate.
        for k in 0..10u32 {
            let q = Duration::from_millis(200) - Duration::from_millis(15) * k;
            for i in 0..10u32 {
                // (Each sent 10 ms before its ACK, plus the queue it waited in.)
                let acked_at = t + Duration::from_millis(10) * i;
                let waited = q - Duration::from_micros(1500) * i;
                c.acked(0, 5_000, acked_at - Duration::from_millis(10) - waited);
            }
            t += Duration::from_millis(100);
            c.step(t, Some(q), Duration::from_millis(60), false, true, 0.0);
        }
        let measured = c.bps().unwrap_or(0.0);
        assert!((3.8e6..=4.0e6).contains(&measured), "{measured}");
    }
}
