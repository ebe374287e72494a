//! What a gateway would have shown its players, for the watchers (`--watchers`: viewers that
//! upload nothing, as the lab's gateway with `--upload-kbps 0`): by the gateway's own rules,
//! a segment is skipped when its chunks are not all held 4 s (broadcaster time) after it
//! started, and the playlist stalls when no segment is published for 2.5 s.

use std::collections::BTreeMap;

use serde::Serialize;

use super::report::Latency;

/// The gateway's `GIVE_UP_US` and `STALL_AFTER_US` (player-gateway/src/assembler.rs,
/// gateway.rs).
const GIVE_UP_US: u64 = 4_000_000;
const STALL_AFTER_US: u64 = 2_500_000;

/// The stream's segments as the source emitted them: first chunk's timestamp, chunk count.
#[derive(Default)]
pub struct Segments {
    emitted: BTreeMap<u64, (u64, u32)>,
}

impl Segments {
    pub fn emitted(&mut self, segment: u64, timestamp_us: u64) {
        let e = self.emitted.entry(segment).or_insert((timestamp_us, 0));
        e.1 += 1;
    }

    /// When `segment` started (its first chunk's timestamp).
    pub fn start(&self, segment: u64) -> Option<u64> {
        self.emitted.get(&segment).map(|e| e.0)
    }
}

/// One watcher's segments: chunks held within the gateway's patience, and when the last came
/// (both in broadcaster time).
#[derive(Default)]
pub struct Watch {
    held: BTreeMap<u64, (u32, u64)>,
}

impl Watch {
    /// A chunk of `segment` is held at broadcaster time `now_us`; the segment started at
    /// `start_us`.
    pub fn held(&mut self, segment: u64, start_us: u64, now_us: u64) {
        if now_us > start_us + GIVE_UP_US {
            return;
        }
        let h = self.held.entry(segment).or_default();
        h.0 += 1;
        h.1 = h.1.max(now_us);
    }
}

/// The watchers' segments between their startup and the end of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WatchReport {
    pub watchers: usize,
    pub segments_published: u64,
    pub segments_skipped: u64,
    pub playlist_stalls: u64,
    /// Their chunks' latency (timestamp → held).
    pub latency_ms: Option<Latency>,
}

impl WatchReport {
    /// Adds one watcher that started playing at `from_us` (broadcaster time), judged up to
    /// `to_us`.
    pub fn add(&mut self, watch: &Watch, segments: &Segments, from_us: u64, to_us: u64) {
        self.watchers += 1;
        let mut last_complete: Option<u64> = None;
        for (seg, (start, chunks)) in segments.emitted.range(..) {
            if *start < from_us || *start + GIVE_UP_US > to_us {
                continue;
            }
            match watch.held.get(seg) {
                Some((held, complete)) if held >= chunks => {
                    self.segments_published += 1;
                    if let Some(l) = last_complete.filter(|l| complete.saturating_sub(*l) > STALL_AFTER_US) {
                        self.playlist_stalls += 1;
                        if std::env::var_os("SHOAL_SIM_WATCH").is_some() {
                            eprintln!("stall {} ms to {} ms (segment {seg})", l / 1000, complete / 1000);
                        }
                    }
                    last_complete = Some(*complete);
                }
                _ => self.segments_skipped += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_not_whole_in_time_is_skipped_and_a_long_gap_stalls() {
        let mut segments = Segments::default();
        for (seg, start) in [(0, 0), (1, 1_000_000), (2, 2_000_000), (3, 3_000_000)] {
            segments.emitted(seg, start);
            segments.emitted(seg, start + 500_000);
        }
        let mut w = Watch::default();
        w.held(0, 0, 100_000);
        w.held(0, 0, 600_000);
        // Segment 1: one chunk only; segment 2: its second chunk too late.
        w.held(1, 1_000_000, 1_600_000);
        w.held(2, 2_000_000, 2_100_000);
        w.held(2, 2_000_000, 6_100_000);
        w.held(3, 3_000_000, 3_600_000);
        w.held(3, 3_000_000, 3_700_000);
        let mut r = WatchReport::default();
        r.add(&w, &segments, 0, 10_000_000);
        assert_eq!((r.segments_published, r.segments_skipped), (2, 2));
        assert_eq!(r.playlist_stalls, 1, "0.6 s → 3.7 s with nothing between");
    }
}
