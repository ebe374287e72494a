//! Turns verified chunks back into HLS: parts (runs of whole chunks, ≈ 0.2 s, published as
//! soon as they are whole, for low-latency players) and segments (a keyframe to the next,
//! made of its parts, for every player). Starts at the first keyframe it holds on joining,
//! skips a segment the swarm could not complete in time, and follows a restarted
//! broadcaster (new epoch) with a discontinuity.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use shoal_proto::ts::{self, PTS_HZ};
use shoal_proto::{Chunk, ChunkFlags};

use crate::packager::Packager;

/// Segments kept for players that are behind the live edge.
pub const SEGMENTS_KEPT: usize = 12;
/// A part is cut at the first frame start at least this long (broadcaster time) after it began.
pub const PART_TARGET_US: u64 = 200_000;
/// Frame timestamps jitter: a frame this close to the target still ends the part.
const PART_SLACK_US: u64 = 20_000;
/// A segment still incomplete this long (broadcaster time) after it started is skipped.
const GIVE_UP_US: u64 = 4_000_000;

#[derive(Clone, Debug)]
pub struct Part {
    pub data: Bytes,
    pub duration_s: f64,
    /// Starts with a keyframe: a player may begin here.
    pub independent: bool,
}

#[derive(Clone, Debug)]
pub struct Segment {
    /// Media sequence number in this gateway's playlist.
    pub msn: u64,
    /// Its parts, in order; a finished segment's data is theirs end to end.
    pub parts: Vec<Part>,
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

/// The segment being received: its parts so far and the chunks of the part after them.
struct Open {
    segment: Segment,
    pending: Vec<Chunk>,
}

#[derive(Default)]
pub struct Assembler {
    epoch: Option<u64>,
    newest_us: u64,
    /// Chunks not yet taken into a part, by seq (all at or after `cursor`).
    chunks: BTreeMap<u64, Chunk>,
    /// Seq of the next chunk to take; `None` until the first segment start is chosen.
    cursor: Option<u64>,
    open: Option<Open>,
    segments: VecDeque<Segment>,
    next_msn: u64,
    discontinuity: bool,
    packager: Packager,
    /// Discontinuities that scrolled out of the playlist (EXT-X-DISCONTINUITY-SEQUENCE).
    pub discontinuity_sequence: u64,
    pub ended: bool,
    pub skipped: u64,
}

impl Assembler {
    /// Finished segments, oldest first.
    /// The stream epoch being assembled (a broadcaster restart starts a new one).
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    pub fn segments(&self) -> &VecDeque<Segment> {
        &self.segments
    }

    /// The segment being received, with the parts it has so far.
    pub fn open_segment(&self) -> Option<&Segment> {
        self.open.as_ref().map(|o| &o.segment)
    }

    /// The msn the next part will belong to, and its index there (the preload hint).
    pub fn next_part(&self) -> Option<(u64, usize)> {
        match &self.open {
            Some(o) => Some((o.segment.msn, o.segment.parts.len())),
            None => self.cursor.map(|_| (self.next_msn, 0)),
        }
    }

    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.msn == msn)
    }

    /// Part `index` of segment `msn`, finished or still open.
    pub fn part(&self, msn: u64, index: usize) -> Option<&Part> {
        self.segment(msn)
            .or(self.open_segment().filter(|s| s.msn == msn))
            .and_then(|s| s.parts.get(index))
    }

    /// Adds a verified chunk; returns how many parts became available.
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
            self.cursor = None;
            self.abandon_open(now_us);
            self.ended = false;
            self.packager.reset();
        }
        self.newest_us = self.newest_us.max(h.timestamp_us);
        if self.cursor.is_some_and(|c| h.seq < c) {
            return 0;
        }
        self.chunks.insert(h.seq, chunk);
        let mut published = self.take_contiguous(now_us);
        if self.give_up_if_stuck(now_us) {
            published += self.take_contiguous(now_us);
        }
        published
    }

    fn is_start(chunk: &Chunk) -> bool {
        chunk.header.flags.has(ChunkFlags::SEGMENT_START)
    }

    /// Takes chunks in seq order from the cursor while they are there, cutting parts and
    /// segments as it goes; returns the parts cut.
    fn take_contiguous(&mut self, now_us: u64) -> usize {
        let cursor = match self.cursor {
            Some(c) => c,
            // Joining: start at the first segment start held; what is before it is useless.
            None => match self.chunks.values().find(|c| Self::is_start(c)) {
                Some(c) => {
                    let s = c.header.seq;
                    self.chunks = self.chunks.split_off(&s);
                    s
                }
                None => return 0,
            },
        };
        self.cursor = Some(cursor);
        let mut cut = 0;
        while let Some(chunk) = self.cursor.and_then(|c| self.chunks.remove(&c)) {
            self.cursor = self.cursor.map(|c| c + 1);
            let ts = chunk.header.timestamp_us;
            if Self::is_start(&chunk) {
                if self.open.is_some() {
                    // Across a discontinuity the next segment's clocks say nothing about
                    // this one's end: it lasts as long as its own media.
                    let (next_ts, next_pts) = if chunk.header.flags.has(ChunkFlags::DISCONTINUITY) {
                        (None, None)
                    } else {
                        (Some(ts), first_video_pts(&chunk.payload, self.packager.video_pid()))
                    };
                    cut += self.cut_part(next_ts, now_us);
                    let end = self.open.as_ref().map_or(ts, |o| {
                        o.segment.start_us + o.segment.parts.iter().map(|p| (p.duration_s * 1e6) as u64).sum::<u64>()
                    });
                    self.close_segment(next_pts, next_ts.unwrap_or(end), now_us);
                }
                self.begin_segment(&chunk);
            } else if let Some(open) = &self.open
                && chunk.header.flags.has(ChunkFlags::FRAME_START)
                && open
                    .pending
                    .first()
                    .is_some_and(|f| ts >= f.header.timestamp_us + PART_TARGET_US - PART_SLACK_US)
            {
                cut += self.cut_part(Some(ts), now_us);
            }
            let Some(open) = &mut self.open else { continue };
            let eos = chunk.header.flags.has(ChunkFlags::END_OF_STREAM);
            open.pending.push(chunk);
            if eos {
                cut += self.cut_part(None, now_us);
                self.close_segment(None, ts, now_us);
                self.ended = true;
            }
        }
        cut
    }

    fn begin_segment(&mut self, first: &Chunk) {
        let discontinuity =
            std::mem::take(&mut self.discontinuity) || first.header.flags.has(ChunkFlags::DISCONTINUITY);
        self.open = Some(Open {
            segment: Segment {
                msn: self.next_msn,
                parts: Vec::new(),
                data: Bytes::new(),
                duration_s: 0.0,
                start_us: first.header.timestamp_us,
                end_us: first.header.timestamp_us,
                complete_us: 0,
                discontinuity,
            },
            pending: Vec::new(),
        });
        self.next_msn += 1;
    }

    /// Packages the pending chunks as the open segment's next part, lasting until the chunk
    /// stamped `next_ts` (the next part's first); returns 1 if it did.
    fn cut_part(&mut self, next_ts: Option<u64>, now_us: u64) -> usize {
        let Some(open) = &mut self.open else { return 0 };
        if open.pending.is_empty() {
            return 0;
        }
        let chunks = std::mem::take(&mut open.pending);
        let start = chunks[0].header.timestamp_us;
        let last = chunks.last().map_or(start, |c| c.header.timestamp_us);
        // The last part of a stream lasts to its last chunk plus a frame's worth.
        let span_us = next_ts
            .filter(|e| *e > start)
            .unwrap_or(last + 33_333)
            .saturating_sub(start);
        open.segment.parts.push(Part {
            data: self.packager.part(&chunks),
            duration_s: span_us as f64 / 1e6,
            independent: Self::is_start(&chunks[0]),
        });
        open.segment.end_us = last;
        open.segment.complete_us = now_us;
        1
    }

    /// Finishes the open segment: its data is its parts end to end.
    fn close_segment(&mut self, next_pts: Option<u64>, next_ts: u64, now_us: u64) {
        let Some(Open { mut segment, .. }) = self.open.take() else {
            return;
        };
        let mut data = BytesMut::with_capacity(segment.parts.iter().map(|p| p.data.len()).sum());
        segment.parts.iter().for_each(|p| data.extend_from_slice(&p.data));
        segment.data = data.freeze();
        // Duration from video timestamps when both ends have one, else from chunk stamps.
        let first_pts = segment
            .parts
            .first()
            .and_then(|p| first_video_pts(&p.data, self.packager.video_pid()));
        let pts_duration = match (first_pts, next_pts) {
            (Some(a), Some(b)) if b > a => Some((b - a) as f64 / PTS_HZ as f64),
            _ => None,
        };
        let stamp_duration = next_ts.max(segment.end_us).saturating_sub(segment.start_us) as f64 / 1e6;
        segment.duration_s = pts_duration.filter(|d| *d < 60.0).unwrap_or(stamp_duration);
        segment.complete_us = now_us;
        self.segments.push_back(segment);
        while self.segments.len() > SEGMENTS_KEPT {
            if self.segments.pop_front().is_some_and(|s| s.discontinuity) {
                self.discontinuity_sequence += 1;
            }
        }
    }

    /// Ends the open segment early (its broadcast stopped, or the swarm could not complete
    /// it). Media sequence numbers must run on without a gap and a part once served must not
    /// change, so a segment with parts is published with just those; one without any gives
    /// its number to the next segment.
    fn abandon_open(&mut self, now_us: u64) {
        let Some(open) = &mut self.open else { return };
        if open.segment.parts.is_empty() {
            self.next_msn = open.segment.msn;
            self.open = None;
            return;
        }
        open.pending.clear();
        let parts_us: f64 = open.segment.parts.iter().map(|p| p.duration_s * 1e6).sum();
        let end = open.segment.start_us + parts_us as u64;
        self.close_segment(None, end, now_us);
    }

    /// A segment the swarm has not completed long after it started is given up, and playback
    /// goes on at the next segment start held, after a discontinuity.
    fn give_up_if_stuck(&mut self, now_us: u64) -> bool {
        let Some(open) = &self.open else { return false };
        if self.newest_us.saturating_sub(open.segment.start_us) <= GIVE_UP_US {
            return false;
        }
        let Some(next) = self.chunks.values().find(|c| Self::is_start(c)).map(|c| c.header.seq) else {
            return false;
        };
        tracing::info!(
            waiting_for = ?self.cursor,
            held_from = ?self.chunks.keys().next(),
            next_segment = next,
            "a segment the swarm did not complete in time is skipped"
        );
        self.abandon_open(now_us);
        self.chunks = self.chunks.split_off(&next);
        self.cursor = Some(next);
        self.discontinuity = true;
        self.skipped += 1;
        true
    }
}

/// PTS of the first video PES that starts in `data`.
fn first_video_pts(data: &[u8], video_pid: Option<u16>) -> Option<u64> {
    ts::packets(data)
        .find(|p| Some(p.pid()) == video_pid && p.unit_start())
        .and_then(|p| ts::pes_pts(p.payload()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::ChunkHeader;
    use shoal_proto::ts::PACKET_LEN;

    /// A chunk holding one TS packet of PID 0x100 marked with `seq`.
    fn chunk(epoch: u64, seq: u64, ts: u64, flags: u8) -> Chunk {
        let mut packet = vec![0xff; PACKET_LEN];
        packet[..5].copy_from_slice(&[0x47, 0x01, 0x00, 0x10, seq as u8]);
        Chunk {
            header: ChunkHeader {
                flags: ChunkFlags(flags | ChunkFlags::FRAME_START),
                epoch,
                seq,
                segment: 0,
                timestamp_us: ts,
                payload_len: PACKET_LEN as u32,
            },
            payload: Bytes::from(packet),
            signature: [0; 64],
        }
    }

    fn markers(data: &[u8]) -> Vec<u8> {
        ts::packets(data).map(|p| p.bytes()[4]).collect()
    }

    const S: u8 = ChunkFlags::SEGMENT_START;

    #[test]
    fn publishes_parts_as_they_fill_and_whole_segments_in_order() {
        let mut a = Assembler::default();
        // Before the first segment start: never published.
        a.push(chunk(1, 0, 0, 0), 0);
        a.push(chunk(1, 1, 1_000_000, S), 0);
        a.push(chunk(1, 3, 1_200_000, 0), 0);
        a.push(chunk(1, 4, 1_300_000, 0), 0);
        a.push(chunk(1, 5, 2_000_000, S), 0);
        assert!(a.segments().is_empty(), "seq 2 is missing");
        assert_eq!(a.open_segment().unwrap().parts.len(), 0);
        // Seq 2 arrives: the part 1..3 is cut at seq 3 (0.2 s in), the segment at seq 5.
        assert_eq!(a.push(chunk(1, 2, 1_100_000, 0), 7), 2);
        let seg = &a.segments()[0];
        assert_eq!((seg.msn, seg.duration_s, seg.start_us), (0, 1.0, 1_000_000));
        assert_eq!(markers(&seg.data), vec![1, 2, 3, 4]);
        let parts: Vec<(Vec<u8>, f64, bool)> = seg
            .parts
            .iter()
            .map(|p| (markers(&p.data), p.duration_s, p.independent))
            .collect();
        assert_eq!(parts, vec![(vec![1, 2], 0.2, true), (vec![3, 4], 0.8, false)]);
        assert_eq!(a.next_part(), Some((1, 0)));
        a.push(chunk(1, 6, 2_100_000, 0), 8);
        a.push(chunk(1, 7, 2_200_000, 0), 8);
        assert_eq!(a.part(1, 0).map(|p| markers(&p.data)), Some(vec![5, 6]));
        assert_eq!(a.next_part(), Some((1, 1)));
        a.push(chunk(1, 8, 2_500_000, ChunkFlags::END_OF_STREAM), 9);
        assert_eq!(a.segments().len(), 2);
        assert_eq!(markers(&a.segments()[1].data), vec![5, 6, 7, 8]);
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
        // The given-up segment had no part to show: its number goes to the next one.
        let msns: Vec<(u64, bool)> = a.segments().iter().map(|s| (s.msn, s.discontinuity)).collect();
        assert_eq!(msns, vec![(0, true), (1, false)]);
    }

    #[test]
    fn a_broadcast_cut_mid_segment_keeps_the_parts_already_served_and_the_numbering() {
        let mut a = Assembler::default();
        a.push(chunk(1, 0, 1_000_000, S), 0);
        a.push(chunk(1, 1, 1_200_000, 0), 0);
        a.push(chunk(1, 2, 1_400_000, 0), 0);
        // Two parts of segment 0 are out; the broadcaster dies and a new epoch starts.
        assert_eq!(a.open_segment().map(|s| s.parts.len()), Some(2));
        a.push(chunk(2, 0, 9_000_000, S), 0);
        a.push(chunk(2, 1, 10_000_000, S), 0);
        let segs: Vec<(u64, Vec<u8>, f64, bool)> = a
            .segments()
            .iter()
            .map(|s| (s.msn, markers(&s.data), s.duration_s, s.discontinuity))
            .collect();
        assert_eq!(segs, vec![(0, vec![0, 1], 0.4, false), (1, vec![0], 1.0, true)]);
    }

    #[test]
    fn a_segment_before_other_media_lasts_as_long_as_its_own() {
        let mut a = Assembler::default();
        a.push(chunk(1, 0, 1_000_000, S), 0);
        a.push(chunk(1, 1, 1_200_000, 0), 0);
        // The source dropped; the slate starts 3 s later, flagged as other media.
        a.push(chunk(1, 2, 4_200_000, S | ChunkFlags::DISCONTINUITY), 0);
        a.push(chunk(1, 3, 5_200_000, S), 0);
        let segs: Vec<(f64, bool)> = a
            .segments()
            .iter()
            .map(|s| ((s.duration_s * 1000.0).round() / 1000.0, s.discontinuity))
            .collect();
        assert_eq!(segs, vec![(0.233, false), (1.0, true)]);
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
