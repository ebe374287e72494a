//! Turns verified chunks back into HLS segments: runs of whole chunks from one segment start
//! to the next, published in order once complete. Starts at the oldest keyframe segment it
//! holds on joining, skips a segment the swarm could not complete in time, and follows a
//! restarted broadcaster (new epoch) with a discontinuity.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use shoal_proto::ts::{self, PTS_HZ, ProgramMap};
use shoal_proto::{Chunk, ChunkFlags};

/// Segments kept for players that are behind the live edge.
pub const SEGMENTS_KEPT: usize = 12;
/// A segment still incomplete this long (broadcaster time) after it started is skipped.
const GIVE_UP_US: u64 = 4_000_000;

#[derive(Clone, Debug)]
pub struct Segment {
    /// Media sequence number in this gateway's playlist.
    pub msn: u64,
    pub data: Bytes,
    pub duration_s: f64,
    /// Broadcaster timestamp of the segment's first chunk (µs since the Unix epoch).
    pub start_us: u64,
    /// Broadcaster timestamp of its last chunk.
    pub end_us: u64,
    /// When this gateway had all of it (local wall clock, µs).
    pub complete_us: u64,
    pub discontinuity: bool,
}

#[derive(Default)]
pub struct Assembler {
    epoch: Option<u64>,
    newest_us: u64,
    chunks: BTreeMap<u64, Chunk>,
    /// Seq of the next segment start to publish; `None` until the first one is chosen.
    next_start: Option<u64>,
    segments: VecDeque<Segment>,
    next_msn: u64,
    discontinuity: bool,
    /// Discontinuities that scrolled out of the playlist (EXT-X-DISCONTINUITY-SEQUENCE).
    pub discontinuity_sequence: u64,
    pub ended: bool,
    pub skipped: u64,
}

impl Assembler {
    pub fn segments(&self) -> &VecDeque<Segment> {
        &self.segments
    }

    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.msn == msn)
    }

    /// Adds a verified chunk; returns how many segments became available.
    pub fn push(&mut self, chunk: Chunk, now_us: u64) -> usize {
        let h = chunk.header;
        if self.epoch != Some(h.epoch) {
            if self.epoch.is_some() && h.timestamp_us <= self.newest_us {
                return 0; // a straggler from an epoch that is over
            }
            // A (re)started broadcast: follow it, marking the break for players.
            self.discontinuity = self.epoch.is_some();
            self.epoch = Some(h.epoch);
            self.chunks.clear();
            self.next_start = None;
            self.ended = false;
        }
        self.newest_us = self.newest_us.max(h.timestamp_us);
        if self.next_start.is_some_and(|s| h.seq < s) {
            return 0;
        }
        self.chunks.insert(h.seq, chunk);
        let mut published = 0;
        while self.publish_next(now_us) {
            published += 1;
        }
        published
    }

    fn is_start(chunk: &Chunk) -> bool {
        chunk.header.flags.has(ChunkFlags::SEGMENT_START)
    }

    fn publish_next(&mut self, now_us: u64) -> bool {
        let start = match self.next_start {
            Some(s) => s,
            None => match self.chunks.values().find(|c| Self::is_start(c)) {
                Some(c) => {
                    let s = c.header.seq;
                    self.chunks = self.chunks.split_off(&s);
                    self.next_start = Some(s);
                    s
                }
                None => return false,
            },
        };
        let Some(first) = self.chunks.get(&start) else {
            return false;
        };
        let first_ts = first.header.timestamp_us;
        // The segment ends before the next segment start, or with an end-of-stream chunk.
        let end = self
            .chunks
            .range(start + 1..)
            .find(|(_, c)| Self::is_start(c))
            .map(|(s, _)| *s);
        let eos = self
            .chunks
            .range(start..)
            .find(|(_, c)| c.header.flags.has(ChunkFlags::END_OF_STREAM))
            .map(|(s, _)| *s + 1);
        let Some(end) = (match (end, eos) {
            (Some(e), Some(x)) => Some(e.min(x)),
            (e, x) => e.or(x),
        }) else {
            return false;
        };
        let complete = (start..end).all(|s| self.chunks.contains_key(&s));
        if !complete {
            if self.newest_us.saturating_sub(first_ts) > GIVE_UP_US {
                // The swarm could not complete it in time: skip to the next segment.
                self.chunks = self.chunks.split_off(&end);
                self.next_start = Some(end);
                self.discontinuity = true;
                self.skipped += 1;
                return true;
            }
            return false;
        }
        let mut rest = self.chunks.split_off(&end);
        std::mem::swap(&mut rest, &mut self.chunks);
        let parts: Vec<Chunk> = rest.into_values().collect();
        self.next_start = Some(end);
        let ended = parts
            .last()
            .is_some_and(|c| c.header.flags.has(ChunkFlags::END_OF_STREAM));
        let next_pts = self.chunks.get(&end).and_then(|c| video_pts(&c.payload));
        self.add_segment(parts, next_pts, now_us);
        if ended {
            self.ended = true;
        }
        true
    }

    fn add_segment(&mut self, parts: Vec<Chunk>, next_pts: Option<u64>, now_us: u64) {
        let len = parts.iter().map(|c| c.payload.len()).sum();
        let mut data = BytesMut::with_capacity(len);
        parts.iter().for_each(|c| data.extend_from_slice(&c.payload));
        let start_us = parts.first().map_or(0, |c| c.header.timestamp_us);
        let end_us = parts.last().map_or(0, |c| c.header.timestamp_us);
        let discontinuity = std::mem::take(&mut self.discontinuity)
            || parts
                .first()
                .is_some_and(|c| c.header.flags.has(ChunkFlags::DISCONTINUITY));
        // Duration from video timestamps when both ends have one, else from chunk stamps.
        let pts_duration = match (parts.first().and_then(|c| video_pts(&c.payload)), next_pts) {
            (Some(a), Some(b)) if b > a => Some((b - a) as f64 / PTS_HZ as f64),
            _ => None,
        };
        let stamp_duration = match self.chunks.values().next() {
            Some(next) => next.header.timestamp_us.saturating_sub(start_us),
            None => end_us.saturating_sub(start_us),
        } as f64
            / 1e6;
        let duration_s = pts_duration.filter(|d| *d < 60.0).unwrap_or(stamp_duration);
        let segment = Segment {
            msn: self.next_msn,
            data: data.freeze(),
            duration_s,
            start_us,
            end_us,
            complete_us: now_us,
            discontinuity,
        };
        self.next_msn += 1;
        self.segments.push_back(segment);
        while self.segments.len() > SEGMENTS_KEPT {
            if self.segments.pop_front().is_some_and(|s| s.discontinuity) {
                self.discontinuity_sequence += 1;
            }
        }
    }
}

/// PTS of the first video PES that starts in `payload` (a chunk that begins with PAT/PMT).
fn video_pts(payload: &[u8]) -> Option<u64> {
    let mut map = ProgramMap::default();
    for packet in ts::packets(payload) {
        if map.observe(&packet) {
            continue;
        }
        if Some(packet.pid()) == map.video_pid && packet.unit_start() {
            return ts::pes_pts(packet.payload());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::ChunkHeader;

    fn chunk(epoch: u64, seq: u64, ts: u64, flags: u8) -> Chunk {
        Chunk {
            header: ChunkHeader {
                flags: ChunkFlags(flags),
                epoch,
                seq,
                segment: 0,
                timestamp_us: ts,
                payload_len: 1,
            },
            payload: Bytes::from(vec![seq as u8]),
            signature: [0; 64],
        }
    }

    const S: u8 = ChunkFlags::SEGMENT_START;

    #[test]
    fn publishes_whole_segments_in_order_whatever_the_arrival_order() {
        let mut a = Assembler::default();
        // Before the first segment start: never published.
        a.push(chunk(1, 0, 0, 0), 0);
        a.push(chunk(1, 1, 1_000_000, S), 0);
        a.push(chunk(1, 3, 1_600_000, 0), 0);
        a.push(chunk(1, 4, 2_000_000, S), 0);
        assert!(a.segments().is_empty(), "seq 2 is missing");
        assert_eq!(a.push(chunk(1, 2, 1_300_000, 0), 7), 1);
        let seg = &a.segments()[0];
        assert_eq!(
            (seg.msn, &seg.data[..], seg.duration_s, seg.start_us),
            (0, &[1u8, 2, 3][..], 1.0, 1_000_000)
        );
        a.push(chunk(1, 5, 2_500_000, ChunkFlags::END_OF_STREAM), 8);
        assert_eq!(a.segments().len(), 2);
        assert!(a.ended);
    }

    #[test]
    fn an_incomplete_segment_is_skipped_after_a_while_with_a_discontinuity() {
        let mut a = Assembler::default();
        a.push(chunk(1, 10, 1_000_000, S), 0);
        a.push(chunk(1, 12, 2_000_000, S), 0);
        a.push(chunk(1, 13, 3_000_000, S), 0);
        assert!(a.segments().is_empty());
        a.push(chunk(1, 14, 6_000_000, S), 0);
        assert_eq!(a.skipped, 1);
        let msns: Vec<u64> = a.segments().iter().map(|s| s.msn).collect();
        assert_eq!(msns, vec![0, 1]);
        assert!(a.segments()[0].discontinuity);
    }

    #[test]
    fn a_new_epoch_is_followed_with_a_discontinuity_and_old_stragglers_ignored() {
        let mut a = Assembler::default();
        a.push(chunk(1, 0, 1_000_000, S), 0);
        a.push(chunk(1, 1, 2_000_000, S), 0);
        a.push(chunk(2, 0, 5_000_000, S), 0);
        a.push(chunk(1, 2, 2_500_000, S), 0);
        a.push(chunk(2, 1, 6_000_000, S), 0);
        let segs: Vec<(u64, bool)> = a.segments().iter().map(|s| (s.start_us, s.discontinuity)).collect();
        assert_eq!(segs, vec![(1_000_000, false), (5_000_000, true)]);
    }

    #[test]
    fn keeps_a_bounded_number_of_segments() {
        let mut a = Assembler::default();
        for seq in 0..100 {
            a.push(chunk(1, seq, seq * 1_000_000, S), 0);
        }
        assert_eq!(a.segments().len(), SEGMENTS_KEPT);
        assert_eq!(a.segments().back().unwrap().msn, 98);
    }
}
