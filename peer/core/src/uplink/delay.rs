//! Queueing delay on this node's uplink, from round-trip samples: each path (connection) keeps
//! its own base delay (LEDBAT's history of per-minute minima), and the uplink's queue is what
//! trusted paths see above their bases. The household router's queue is common to every
//! path; what a single path adds (the neighbour's own uplink, on the ACK's way back) is not, so
//! the lower quartile of the paths' excess is ours.

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
/// A path's current delay is the least of its samples this recent (at most this many).
const CURRENT_FOR: Duration = Duration::from_millis(300);
const CURRENT_MAX: usize = 32;
/// A loss counts as the router's only with at least this much queue on the uplink.
const LOSS_NEEDS_QUEUE: Duration = Duration::from_millis(10);
/// A path's samples must spread this much for a top to mean anything.
const TOP_NEEDS_RANGE: Duration = Duration::from_millis(2);
/// How long the largest recent sample is remembered (to tell tail drop from random loss).
const RECENT_MAX_FOR: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Path {
    /// (start of the minute, smallest sample in it), oldest first.
    base: VecDeque<(Instant, Duration)>,
    /// Smallest sample since the last control step.
    /// Samples of the last `CURRENT_FOR`, oldest first (bounded), and whether any came in
    /// the current step. Their least, less the base, is the path's queue now (LEDBAT's
    /// current-delay filter: a single sample jitters).
    recent: VecDeque<(Instant, Duration)>,
    sampled: bool,
    /// Largest sample lately, and when it was taken.
    recent_max: (Duration, Instant),
    latest: Duration,
    /// Its base is believed: the path was opened while our queue was (nearly) empty, or a
    /// slowdown has drained the queue since. (A path opened behind our own standing queue
    /// would take that queue for its base and report it as no delay at all.)
    trusted: bool,
    last_sample: Instant,
    /// Its delays are one-way (the receiver's clock less our send time, from its echoes):
    /// only our uplink and the path forward, not the ACKs' way back through the receiver's
    /// own uplink. Round trips then only time the path.
    one_way: bool,
    /// The least round trip seen on it (for timing, whatever its delays are).
    rtt_min: Option<Duration>,
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
    /// Trusted paths sampled in the last step.
    witnesses: usize,
}

/// A delay sample on a path.
#[derive(Clone, Copy, Debug)]
pub enum Sample {
    /// QUIC's round trip of an acknowledged packet: our uplink's queue, the path both ways,
    /// and the receiver's uplink on the ACK's way back.
    RoundTrip(Duration),
    /// The receiver's clock at arrival less our clock at sending (plus an unknown constant:
    /// the clocks' offset, which the base takes away).
    OneWay(Duration),
}

impl Delays {
    /// One sample on `path`. Once a path has one-way samples, its round trips only time it.
    /// `quiet`: the uplink carries little of ours now, so a new path's samples are its base.
    pub fn sample(&mut self, path: u64, sample: Sample, now: Instant, quiet: bool) {
        if let (Sample::RoundTrip(rtt), Some(p)) = (sample, self.paths.get_mut(&path)) {
            p.rtt_min = Some(p.rtt_min.map_or(rtt, |m| m.min(rtt)));
            if p.one_way {
                return;
            }
        }
        if let (Sample::OneWay(_), Some(p)) = (sample, self.paths.get(&path))
            && !p.one_way
        {
            // (A path that turns to one-way delays starts its history anew, as a new path;
            // believed at once if its round trips were and showed no queue now.)
            let rtt_min = p.rtt_min;
            let clear = p.trusted
                && p.recent
                    .iter()
                    .map(|(_, d)| *d)
                    .min()
                    .is_some_and(|d| d.saturating_sub(p.base()) < TRUST_BELOW);
            self.paths.remove(&path);
            self.record(path, sample, now, quiet, rtt_min);
            if let Some(p) = self.paths.get_mut(&path) {
                p.trusted |= clear;
            }
            return;
        }
        self.record(path, sample, now, quiet, None);
    }

    /// Records a sample of the kind the path reads (a new path takes the sample's kind, and
    /// `rtt_min` if it has one already).
    fn record(&mut self, path: u64, sample: Sample, now: Instant, quiet: bool, rtt_min: Option<Duration>) {
        let (rtt, one_way) = match sample {
            Sample::RoundTrip(d) => (d, false),
            Sample::OneWay(d) => (d, true),
        };
        let queue_empty = quiet && self.queue.is_none_or(|q| q < TRUST_BELOW);
        if !self.paths.contains_key(&path) && self.paths.len() >= MAX_PATHS {
            let quietest = self.paths.iter().min_by_key(|(_, p)| p.last_sample).map(|(id, _)| *id);
            if let Some(id) = quietest {
                self.paths.remove(&id);
            }
        }
        let p = self.paths.entry(path).or_insert_with(|| Path {
            base: VecDeque::new(),
            recent: VecDeque::new(),
            sampled: false,
            recent_max: (rtt, now),
            latest: rtt,
            trusted: queue_empty,
            last_sample: now,
            one_way,
            rtt_min: if one_way { rtt_min } else { Some(rtt) },
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
        while p
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > CURRENT_FOR)
            || p.recent.len() >= CURRENT_MAX
        {
            p.recent.pop_front();
        }
        p.recent.push_back((now, rtt));
        p.sampled = true;
        if rtt >= p.recent_max.0 || now.duration_since(p.recent_max.1) > RECENT_MAX_FOR {
            p.recent_max = (rtt, now);
        }
        p.latest = rtt;
        p.last_sample = now;
    }

    /// The queue was drained (a slowdown) since `t`: the paths sampled since are believed.
    pub fn trust_sampled_since(&mut self, t: Instant) {
        for p in self.paths.values_mut() {
            if p.last_sample >= t {
                p.trusted = true;
            }
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
                if !std::mem::take(&mut p.sampled) {
                    return None;
                }
                let current = p.recent.iter().map(|(_, rtt)| *rtt).min()?;
                p.trusted.then(|| current.saturating_sub(p.base()))
            })
            .collect();
        // The lower quartile: what the least delayed paths share. Our own queue delays every
        // path alike; a neighbour whose household fills its uplink delays only the ACKs of its
        // own path, and a third of a swarm's viewers may be such neighbours (the median then
        // read their queues as ours, and the whole swarm yielded to them). (Not the smallest:
        // one path whose base was taken behind a queue would hide it from all the others.)
        excess.sort_unstable();
        let queue = excess.get(excess.len().saturating_sub(1) / 4).copied();
        if queue.is_some() {
            self.queue = queue;
        }
        self.witnesses = excess.len();
        queue
    }

    /// Whether the last step's queue was seen on more than one path. One path alone may be
    /// reading its neighbour's full uplink (the ACKs queue there): enough to slow down for,
    /// not to conclude what our uplink carries.
    pub fn corroborated(&self) -> bool {
        self.witnesses >= 2
    }

    /// The queueing delay at the last step that measured one.
    pub fn queue(&self) -> Option<Duration> {
        self.queue
    }

    /// Whether `path`'s latest sample sits at the top of what it has seen lately (its top
    /// quarter) while the uplink holds a real queue: where a full router drops. (`loss.rs`
    /// tells the router's drops from random loss by how often losses come there.)
    pub fn at_top(&self, path: u64) -> bool {
        // Below a real queue, a loss is random (jitter alone spans a few milliseconds).
        if self.queue.is_none_or(|q| q < LOSS_NEEDS_QUEUE) {
            return false;
        }
        let Some(p) = self.paths.get(&path) else {
            return false;
        };
        let base = p.base();
        let range = p.recent_max.0.saturating_sub(base);
        range >= TOP_NEEDS_RANGE && p.latest.saturating_sub(base) * 4 >= range * 3
    }

    /// What `path`'s latest sample had above its base.
    #[cfg(test)]
    fn sample_quiet(&mut self, path: u64, rtt: Duration, now: Instant) {
        self.sample(path, Sample::RoundTrip(rtt), now, true);
    }

    pub fn excess(&self, path: u64) -> Option<Duration> {
        let p = self.paths.get(&path)?;
        Some(p.latest.saturating_sub(p.base()))
    }

    /// For debugging: each path's base, latest sample and whether it is trusted.
    pub fn describe(&self) -> String {
        let mut v: Vec<String> = self
            .paths
            .iter()
            .map(|(id, p)| {
                let untrusted = if p.trusted { "" } else { "?" };
                // (One-way delays carry the clocks' offset: their excess is what counts.)
                if p.one_way {
                    format!("{id}:+{}{untrusted}", p.latest.saturating_sub(p.base()).as_millis())
                } else {
                    format!("{id}:{}/{}{untrusted}", p.base().as_millis(), p.latest.as_millis())
                }
            })
            .collect();
        v.sort();
        v.join(" ")
    }

    /// The least round trip of any path (one-way bases carry the clocks' offset).
    pub fn smallest_rtt(&self) -> Option<Duration> {
        self.paths.values().filter_map(|p| p.rtt_min).min()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Trusted paths sampled lately: what the queue is measured on.
    pub fn trusted_lately(&self, now: Instant) -> usize {
        self.paths
            .values()
            .filter(|p| p.trusted && now.duration_since(p.last_sample) < Duration::from_secs(1))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_queue_one_path_alone_sees_is_not_corroborated() {
        let t0 = Instant::now();
        let mut d = Delays::default();
        d.sample_quiet(1, ms(20), t0);
        d.sample_quiet(2, ms(50), t0);
        d.step();
        // Only path 1 answers in this step, 100 ms late (its neighbour's uplink is full).
        d.sample_quiet(1, ms(120), t0 + ms(400));
        assert_eq!(d.step(), Some(ms(100)), "still a queue to slow down for");
        assert!(!d.corroborated(), "one path alone");
        // Both answer, both late: the queue is ours.
        d.sample_quiet(1, ms(120), t0 + ms(800));
        d.sample_quiet(2, ms(150), t0 + ms(800));
        assert_eq!(d.step(), Some(ms(100)));
        assert!(d.corroborated());
    }

    #[test]
    fn the_queue_is_what_most_paths_see_above_their_bases() {
        let t0 = Instant::now();
        let at = |n: u64| t0 + ms(n * 400);
        let mut d = Delays::default();
        // Three neighbours, 20, 50 and 80 ms away, sampled while our queue was empty.
        d.sample_quiet(1, ms(20), at(0));
        d.sample_quiet(2, ms(80), at(0));
        d.sample_quiet(3, ms(50), at(0));
        assert_eq!(d.step(), Some(ms(0)));
        // Our router queue fills by 50 ms; neighbour 2's own uplink adds 100 more to its ACKs.
        d.sample_quiet(1, ms(70), at(1));
        d.sample_quiet(2, ms(230), at(1));
        d.sample_quiet(3, ms(100), at(1));
        assert_eq!(d.step(), Some(ms(50)), "what most paths share");
        // A path opened behind that queue takes it for its base: not believed yet.
        d.sample_quiet(4, ms(60), at(2));
        assert_eq!(d.step(), None, "path 4 alone, not believed");
        // A slowdown drains the queue: path 4 shows its true base and is believed from then on.
        d.sample_quiet(4, ms(10), at(3));
        d.trust_sampled_since(at(3));
        d.step();
        d.sample_quiet(1, ms(90), at(4));
        d.sample_quiet(4, ms(80), at(4));
        assert_eq!(d.step(), Some(ms(70)), "paths 1 and 4 agree");
        assert_eq!(d.step(), None, "nothing sampled in this step");
        assert_eq!(d.queue(), Some(ms(70)), "the last measured queue stays");
        // A single late sample is not a queue: the least of the last 300 ms is.
        d.sample_quiet(1, ms(25), at(5));
        d.sample_quiet(1, ms(95), at(5) + ms(50));
        d.sample_quiet(4, ms(12), at(5));
        assert_eq!(d.step(), Some(ms(2)));
        // Most neighbours' households fill their own uplinks: their ACKs come 400 ms late.
        let mut d = Delays::default();
        for p in 1..=5 {
            d.sample_quiet(p, ms(20 + p), at(0));
        }
        d.step();
        for p in 1..=5 {
            let reverse = if p <= 3 { 400 } else { 0 };
            d.sample_quiet(p, ms(20 + p + 10 + reverse), at(1));
        }
        assert_eq!(d.step(), Some(ms(10)), "our queue, not theirs");
    }

    #[test]
    fn one_way_delays_do_not_read_the_neighbours_queues_on_the_way_back() {
        let t0 = Instant::now();
        let at = |n: u64| t0 + ms(n * 400);
        // Two neighbours, 20 and 40 ms away; their clocks are off ours by 5 and 90 s.
        let offsets = [ms(5_000), ms(90_000)];
        let mut rtt = Delays::default();
        let mut one_way = Delays::default();
        for d in [&mut rtt, &mut one_way] {
            d.sample_quiet(1, ms(20), at(0));
            d.sample_quiet(2, ms(40), at(0));
            d.step();
        }
        // Their echoes come: the paths turn to one-way delays, believed (no queue then).
        one_way.sample(1, Sample::OneWay(offsets[0] + ms(10)), at(1), false);
        one_way.sample(2, Sample::OneWay(offsets[1] + ms(20)), at(1), false);
        assert_eq!(one_way.step(), Some(ms(0)));
        // Both neighbours' households fill their uplinks: our ACKs wait 200 ms there.
        rtt.sample_quiet(1, ms(220), at(2));
        rtt.sample_quiet(2, ms(240), at(2));
        assert_eq!(rtt.step(), Some(ms(200)), "round trips cannot tell it from ours");
        for (path, offset) in [(1, offsets[0]), (2, offsets[1])] {
            one_way.sample(path, Sample::RoundTrip(ms(200 + 20 * path)), at(2), false);
            one_way.sample(path, Sample::OneWay(offset + ms(10 * path)), at(2), false);
        }
        assert_eq!(one_way.step(), Some(ms(0)), "our side of the paths is empty");
        // Our own router's queue holds 50 ms: one-way delays show it.
        for (path, offset) in [(1, offsets[0]), (2, offsets[1])] {
            one_way.sample(path, Sample::OneWay(offset + ms(10 * path + 50)), at(3), false);
        }
        assert_eq!(one_way.step(), Some(ms(50)));
        assert_eq!(one_way.smallest_rtt(), Some(ms(20)), "round trips still time the paths");
    }

    #[test]
    fn a_sample_at_the_top_of_a_real_queue_is_where_the_router_drops() {
        let t0 = Instant::now();
        let mut d = Delays::default();
        for i in 0..50 {
            d.sample_quiet(1, ms(50 + i % 3), t0 + ms(i * 10));
        }
        d.step();
        assert!(!d.at_top(1), "a steady 50 ms path has no queue to top");
        // Someone else's TCP filled the router queue before we came: it swings between 280
        // and 400 ms, and we took its low for our base.
        let mut d = Delays::default();
        for i in 0..100 {
            // A sawtooth: up 3 ms every 10 ms from 280, back to 280 at the top.
            d.sample_quiet(7, ms(280 + (i * 3) % 121), t0 + ms(i * 10));
        }
        for i in 0..20 {
            d.sample_quiet(7, ms(370 + i), t0 + ms(1000 + i * 10));
        }
        d.step();
        assert!(d.at_top(7), "as the queue tops out");
        d.sample_quiet(7, ms(285), t0 + ms(1210));
        assert!(!d.at_top(7), "as the queue is low");
    }
}
