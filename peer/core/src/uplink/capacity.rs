//! What the uplink carries, from what it delivered: bytes acknowledged. While a queue stands
//! on the uplink (half the delay target or more) it is full, so what it delivers then is the
//! capacity (or our share of it, beside the household's traffic); a second with too little
//! of that (a keyframe's burst is not a full uplink) only shows the capacity is at least
//! what went through.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);
/// Full time in a window that makes it a measure of the capacity.
const FULL_FOR: Duration = Duration::from_millis(300);
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

#[derive(Debug)]
pub struct Capacity {
    window_start: Instant,
    step_start: Instant,
    acked: u64,
    acked_step: u64,
    /// Bytes acknowledged in the window's full steps, and how long those lasted.
    acked_full: u64,
    full_for: Duration,
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
}

impl Capacity {
    pub fn new(now: Instant) -> Self {
        Capacity {
            window_start: now,
            step_start: now,
            acked: 0,
            acked_step: 0,
            acked_full: 0,
            full_for: Duration::ZERO,
            estimate: None,
            how: How::Unknown,
            measured_at: None,
            fell_at: None,
            recent_sent: 0.0,
            probing: false,
            peak: None,
        }
    }

    /// A probe starts: a fresh window, whose measure is taken as it is.
    pub fn probe_from(&mut self, now: Instant) {
        self.window_start = now;
        self.step_start = now;
        self.acked = 0;
        self.acked_step = 0;
        self.acked_full = 0;
        self.full_for = Duration::ZERO;
        self.probing = true;
    }

    pub fn acked(&mut self, bytes: u64) {
        self.acked += bytes;
        self.acked_step += bytes;
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
        if limited && (congested || queue.is_some_and(|q| q >= target / 2)) {
            self.acked_full += self.acked_step;
            self.full_for += now.duration_since(self.step_start);
        }
        self.acked_step = 0;
        self.step_start = now;
        let elapsed = now.duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        let delivered = self.acked as f64 * 8.0 / elapsed.as_secs_f64();
        if self.full_for >= FULL_FOR {
            let delivered = self.acked_full as f64 * 8.0 / self.full_for.as_secs_f64();
            // (A probe that finds far more than the estimate took the uplink back from the
            // household: that is the uplink now. Otherwise measures are averaged.)
            let new = match (self.how, self.estimate) {
                (How::Measured, Some(e)) if !(self.probing && delivered > 1.5 * e) => 0.5 * e + 0.5 * delivered,
                _ => delivered,
            };
            self.probing = false;
            if self.estimate.is_some_and(|e| new < 0.7 * e) {
                self.fell_at = Some(now);
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
        } else if self.acked > 0 {
            self.estimate = Some(self.estimate.map_or(delivered, |e| e.max(delivered)));
            if self.how == How::Unknown {
                self.how = How::AtLeast;
            }
        }
        self.window_start = now;
        self.acked = 0;
        self.acked_full = 0;
        self.full_for = Duration::ZERO;
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
        c.acked(acked_bytes);
        for _ in 0..10 {
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
            c.acked(if i < 2 { 50_000 } else { 5_000 });
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
}
