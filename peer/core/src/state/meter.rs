//! The stream as this node sees it: its rate over the last ten seconds of broadcaster time,
//! when a new chunk last arrived, and when a neighbour last announced chunks newer than ours.
//! A silent parent is a problem only while the stream flows; capacity is counted in copies of
//! the measured rate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Stream rate is measured over this much broadcaster time: ten segments or so, so that
/// one keyframe more or less in the span moves it by little (children are counted in copies
/// of it, and a rate that jitters sheds and takes them back in turn).
const RATE_SPAN_US: u64 = 10_000_000;
/// ...and first measured once this much is seen.
const FIRST_SPAN_US: u64 = 500_000;
/// The stream flows if a new chunk arrived this recently...
const FLOWING_CHUNK: Duration = Duration::from_millis(500);
/// ...or a neighbour announced a newer one this recently.
const FLOWING_NEWS: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct StreamMeter {
    /// (broadcaster timestamp, bytes) of recent new chunks.
    recent_bytes: VecDeque<(u64, usize)>,
    first_chunk_us: Option<u64>,
    rate_bps: Option<f64>,
    last_new_chunk: Option<Instant>,
    /// When a neighbour last announced chunks newer than ours.
    last_news: Option<Instant>,
    /// The rate neighbours tell (bit/s), planned with until this node measures its own.
    told_bps: Option<f64>,
}

impl StreamMeter {
    /// A new chunk of the live epoch is held; `newest_us` is the newest timestamp held.
    pub fn note_chunk(&mut self, timestamp_us: u64, bytes: usize, newest_us: u64, now: Instant) {
        self.last_new_chunk = Some(now);
        self.recent_bytes.push_back((timestamp_us, bytes));
        self.first_chunk_us = Some(self.first_chunk_us.map_or(timestamp_us, |f| f.min(timestamp_us)));
        let from = newest_us.saturating_sub(RATE_SPAN_US);
        // Mostly in timestamp order (back-fill aside): trimming the front is enough.
        while self.recent_bytes.front().is_some_and(|(ts, _)| *ts < from) {
            self.recent_bytes.pop_front();
        }
        // Measured once half a second of stream is seen (over up to ten seconds); kept
        // between updates.
        if let Some(first) = self.first_chunk_us {
            let span = newest_us.saturating_sub(first).min(RATE_SPAN_US);
            if span >= FIRST_SPAN_US {
                let bytes: usize = self.recent_bytes.iter().map(|(_, b)| b).sum();
                self.rate_bps = Some(bytes as f64 * 8.0 * 1e6 / span as f64);
            }
        }
    }

    /// A neighbour announced chunks newer than any we hold.
    pub fn note_news(&mut self, now: Instant) {
        self.last_news = Some(now);
    }

    /// A new epoch began: its rate is measured afresh (the last figure stands meanwhile).
    pub fn new_epoch(&mut self) {
        self.recent_bytes.clear();
        self.first_chunk_us = None;
    }

    /// The stream's rate in bit/s over the last ten seconds of broadcaster time, once seen.
    pub fn bps(&self) -> Option<f64> {
        self.rate_bps
    }

    /// What neighbours say the stream's rate is (their median), or `None`.
    pub fn set_told(&mut self, bps: Option<f64>) {
        self.told_bps = bps;
    }

    /// The rate children are planned with: ours once measured, else what neighbours tell.
    /// (A newcomer that nobody feeds yet must know whether it could pass the stream on, to
    /// ask a full parent to make room for it.)
    pub fn plan_bps(&self) -> Option<f64> {
        self.rate_bps.or(self.told_bps)
    }

    pub fn last_new_chunk(&self) -> Option<Instant> {
        self.last_new_chunk
    }

    /// A new chunk arrived within `within`.
    pub fn received_within(&self, now: Instant, within: Duration) -> bool {
        self.last_new_chunk
            .is_some_and(|t| now.saturating_duration_since(t) < within)
    }

    /// True once chunks arrive at all (so a silent parent is a problem, not a quiet stream):
    /// we receive new chunks, or neighbours announce new ones.
    pub fn is_flowing(&self, now: Instant) -> bool {
        self.last_new_chunk
            .is_some_and(|t| now.duration_since(t) < FLOWING_CHUNK)
            || self.last_news.is_some_and(|t| now.duration_since(t) < FLOWING_NEWS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_known_after_half_a_second_of_stream() {
        let t0 = Instant::now();
        let mut m = StreamMeter::default();
        // 30 chunks a second of 1000 bytes: 240 kbit/s.
        for i in 0..=16u64 {
            m.note_chunk(i * 33_333, 1000, i * 33_333, t0);
            if i * 33_333 < 500_000 {
                assert_eq!(m.bps(), None, "not before half a second ({i})");
            }
        }
        let bps = m.bps().expect("measured");
        assert!((230_000.0..260_000.0).contains(&bps), "{bps}");
        m.new_epoch();
        assert_eq!(
            m.bps(),
            Some(bps),
            "the last figure stands until the new epoch is measured"
        );
    }

    #[test]
    fn the_stream_flows_while_chunks_or_news_arrive() {
        let t0 = Instant::now();
        let mut m = StreamMeter::default();
        assert!(!m.is_flowing(t0));
        m.note_chunk(0, 100, 0, t0);
        assert!(m.is_flowing(t0 + Duration::from_millis(400)));
        assert!(!m.is_flowing(t0 + Duration::from_millis(600)));
        m.note_news(t0 + Duration::from_millis(600));
        assert!(m.is_flowing(t0 + Duration::from_millis(1500)));
        assert!(!m.is_flowing(t0 + Duration::from_millis(1700)));
    }
}
