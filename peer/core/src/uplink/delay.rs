//! Queueing delay on this node's uplink, from round-trip samples: each path (connection) keeps
//! its own base delay (LEDBAT's history of per-minute minima), and the uplink's queue is what
//! trusted paths see above their bases. The household router's queue is common to every
//! path; what a single path adds (the neighbour's own uplink, on the ACK's way back) is not, so
//! the lower median of the paths' excess is ours.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

/// Base-delay history: one minimum per minute, for ten minutes (LEDBAT's BASE_HISTORY).
const BASE_HISTORY: usize = 10;
const BASE_BUCKET: Duration = Duration::from_secs(60);
/// Paths followed at once; beyond it the quietest is forgotten (a node has tens of neighbours).
pub const MAX_PATHS: usize = 256;
/// A path opened while the uplink's queue reads less than this takes its samples as base.
/// (Not zero: round trips jitter by a few milliseconds.)
const TRUST_BELOW: Duration = Duration::from_millis(15);
/// How long the largest recent sample is remembered (to tell tail drop from random loss).
const RECENT_MAX_FOR: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Path {
    /// (start of the minute, smallest sample in it), oldest first.
    base: VecDeque<(Instant, Duration)>,
    /// Smallest sample since the last control step.
    step_min: Option<Duration>,
    /// Largest sample lately, and when it was taken.
    recent_max: (Duration, Instant),
    latest: Duration,
    /// Its base is believed: the path was opened while our queue was (nearly) empty, or a
    /// slowdown has drained the queue since. (A path opened behind our own standing queue
    /// would take that queue for its base and report it as no delay at all.)
    trusted: bool,
    last_sample: Instant,
}

impl Path {
    fn base(&self) -> Duration {
        self.base.iter().map(|b| b.1).min().unwrap_or(self.latest)
    }
}

#[derive(Debug, Default)]
pub struct Delays {
    paths: HashMap<u64, Path>,
    /// The uplink's queueing delay at the last step, if any trusted path was sampled.
    queue: Option<Duration>,
}

impl Delays {
    /// One round-trip sample on `path`.
    pub fn sample(&mut self, path: u64, rtt: Duration, now: Instant) {
        let queue_empty = self.queue.is_none_or(|q| q < TRUST_BELOW);
        if !self.paths.contains_key(&path) && self.paths.len() >= MAX_PATHS {
            let quietest = self.paths.iter().min_by_key(|(_, p)| p.last_sample).map(|(id, _)| *id);
            if let Some(id) = quietest {
                self.paths.remove(&id);
            }
        }
        let p = self.paths.entry(path).or_insert_with(|| Path {
            base: VecDeque::new(),
            step_min: None,
            recent_max: (rtt, now),
            latest: rtt,
            trusted: queue_empty,
            last_sample: now,
        });
        match p.base.back_mut() {
            Some((start, min)) if now.duration_since(*start) < BASE_BUCKET => *min = (*min).min(rtt),
            _ => {
                p.base.push_back((now, rtt));
                if p.base.len() > BASE_HISTORY {
                    p.base.pop_front();
                }
            }
        }
        p.step_min = Some(p.step_min.map_or(rtt, |m| m.min(rtt)));
        if rtt >= p.recent_max.0 || now.duration_since(p.recent_max.1) > RECENT_MAX_FOR {
            p.recent_max = (rtt, now);
        }
        p.latest = rtt;
        p.last_sample = now;
    }

    /// The queue was seen drained (a slowdown): every path's base is now believed.
    pub fn trust_all(&mut self) {
        for p in self.paths.values_mut() {
            p.trusted = true;
        }
    }

    pub fn forget(&mut self, path: u64) {
        self.paths.remove(&path);
    }

    /// Closes a control step: the uplink's queueing delay over it (the lower median of the
    /// excess over base of the paths sampled in the step), or `None` if none was.
    pub fn step(&mut self) -> Option<Duration> {
        let mut excess: Vec<Duration> = self
            .paths
            .values_mut()
            .filter_map(|p| {
                let min = p.step_min.take()?;
                p.trusted.then(|| min.saturating_sub(p.base()))
            })
            .collect();
        // The lower median: what most paths share. (The smallest would let one path whose
        // base was taken behind a queue hide the queue from all the others.)
        excess.sort_unstable();
        let queue = excess.get(excess.len().saturating_sub(1) / 2).copied();
        if queue.is_some() {
            self.queue = queue;
        }
        queue
    }

    /// The queueing delay at the last step that measured one.
    pub fn queue(&self) -> Option<Duration> {
        self.queue
    }

    /// Whether a loss on `path` came with a full queue (tail drop at the router) rather than
    /// at random: the path's latest sample sits in the top quarter of what it has seen lately,
    /// over a range wider than jitter.
    pub fn loss_is_congestion(&self, path: u64, target: Duration) -> bool {
        if self.queue.is_some_and(|q| q >= target / 2) {
            return true;
        }
        let Some(p) = self.paths.get(&path) else {
            return false;
        };
        let base = p.base();
        let range = p.recent_max.0.saturating_sub(base);
        range >= Duration::from_millis(20) && p.latest.saturating_sub(base) * 4 >= range * 3
    }

    /// What `path`'s latest sample had above its base.
    pub fn excess(&self, path: u64) -> Option<Duration> {
        let p = self.paths.get(&path)?;
        Some(p.latest.saturating_sub(p.base()))
    }

    pub fn smallest_base(&self) -> Option<Duration> {
        self.paths.values().map(Path::base).min()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_queue_is_what_most_paths_see_above_their_bases() {
        let t0 = Instant::now();
        let mut d = Delays::default();
        // Three neighbours, 20, 50 and 80 ms away, sampled while our queue was empty.
        d.sample(1, ms(20), t0);
        d.sample(2, ms(80), t0);
        d.sample(3, ms(50), t0);
        assert_eq!(d.step(), Some(ms(0)));
        // Our router queue fills by 50 ms; neighbour 2's own uplink adds 100 more to its ACKs.
        d.sample(1, ms(70), t0 + ms(100));
        d.sample(2, ms(230), t0 + ms(100));
        d.sample(3, ms(100), t0 + ms(100));
        assert_eq!(d.step(), Some(ms(50)), "what most paths share");
        // A path opened behind that queue takes it for its base: not believed yet.
        d.sample(4, ms(60), t0 + ms(150));
        d.sample(4, ms(60), t0 + ms(200));
        assert_eq!(d.step(), None, "path 4 alone, not believed");
        // A slowdown drains the queue: path 4 shows its true base and is believed from then on.
        d.sample(4, ms(10), t0 + ms(300));
        d.trust_all();
        d.step();
        d.sample(1, ms(90), t0 + ms(400));
        d.sample(4, ms(80), t0 + ms(400));
        assert_eq!(d.step(), Some(ms(70)), "paths 1 and 4 agree");
        assert_eq!(d.step(), None, "nothing sampled in this step");
        assert_eq!(d.queue(), Some(ms(70)), "the last measured queue stays");
    }

    #[test]
    fn random_loss_at_steady_delay_is_not_congestion_but_loss_at_a_full_queue_is() {
        let t0 = Instant::now();
        let target = ms(60);
        let mut d = Delays::default();
        for i in 0..50 {
            d.sample(1, ms(50 + i % 3), t0 + ms(i * 10));
        }
        d.step();
        assert!(
            !d.loss_is_congestion(1, target),
            "2 % random loss on a steady 50 ms path"
        );
        // Someone else's TCP filled the router queue before we came: base 280, swinging to 400.
        let mut d = Delays::default();
        for i in 0..40 {
            d.sample(7, ms(280 + (i * 3) % 121), t0 + ms(i * 10));
        }
        d.sample(7, ms(395), t0 + ms(500));
        assert!(d.loss_is_congestion(7, target), "loss as the queue tops out");
        d.sample(7, ms(285), t0 + ms(510));
        assert!(!d.loss_is_congestion(7, target), "loss as the queue is low");
    }
}
