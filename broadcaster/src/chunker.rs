//! Cuts the muxer's MPEG-TS byte stream into chunks: a new chunk at every video frame start
//! (and every 16 KiB inside big frames), a new segment at every keyframe, each segment
//! opening with fresh PAT and PMT copies whose continuity counters run on.

use bytes::{Bytes, BytesMut};
use shoal_proto::chunk::MAX_CHUNK_PAYLOAD;
use shoal_proto::ts::{self, PACKET_LEN, PAT_PID, Packet, ProgramMap};
use shoal_proto::{ChunkFlags, ChunkHeader};

/// Audio-only streams: cut a chunk about this often.
const AUDIO_CHUNK_US: u64 = 50_000;
const MAX_PACKETS: usize = MAX_CHUNK_PAYLOAD / PACKET_LEN;

/// A chunk ready to sign: header (without payload length) and payload.
pub type Cut = (ChunkHeader, Bytes);

pub struct Chunker {
    epoch: u64,
    segment_us: u64,
    map: ProgramMap,
    pat: Option<[u8; PACKET_LEN]>,
    pmt: Option<[u8; PACKET_LEN]>,
    psi_cc: [u8; 2],
    /// Bytes of a packet split across input buffers.
    partial: Vec<u8>,
    pending: BytesMut,
    pending_flags: u8,
    pending_since_us: u64,
    next_seq: u64,
    /// Segment number of the segment being cut; `None` until the first keyframe.
    segment: Option<u64>,
    segment_started_us: u64,
    discontinuity: bool,
    /// Media changed: nothing is kept until the new media's first keyframe.
    resync: bool,
}

impl Chunker {
    pub fn new(epoch: u64, segment_ms: u64) -> Self {
        Chunker {
            epoch,
            segment_us: segment_ms * 1000,
            map: ProgramMap::default(),
            pat: None,
            pmt: None,
            psi_cc: [0, 0],
            partial: Vec::new(),
            pending: BytesMut::new(),
            pending_flags: 0,
            pending_since_us: 0,
            next_seq: 0,
            segment: None,
            segment_started_us: 0,
            discontinuity: false,
            resync: false,
        }
    }

    /// Other media follows (a looped file, the slate on or off): ends the current chunk,
    /// forgets the old stream's tables, and starts again at the new one's first keyframe,
    /// flagged as a discontinuity. Returns the chunk it ended, if any.
    // (Only GStreamer sources restart: a looped file, the slate on or off.)
    #[cfg_attr(not(feature = "gstreamer"), allow(dead_code))]
    pub fn restart(&mut self, now_us: u64) -> Vec<Cut> {
        let mut out = Vec::new();
        self.flush(now_us, &mut out);
        self.partial.clear();
        self.map = ProgramMap::default();
        self.pat = None;
        self.pmt = None;
        self.resync = true;
        self.discontinuity = true;
        out
    }

    /// Feeds muxer output; returns the chunks completed by it, stamped `now_us`.
    pub fn push(&mut self, data: &[u8], now_us: u64) -> Vec<Cut> {
        let mut out = Vec::new();
        let mut data = data;
        if !self.partial.is_empty() {
            let need = PACKET_LEN - self.partial.len();
            let take = need.min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == PACKET_LEN {
                let packet = std::mem::take(&mut self.partial);
                self.packet(&packet, now_us, &mut out);
            }
        }
        let whole = data.len() / PACKET_LEN * PACKET_LEN;
        for packet in data[..whole].chunks_exact(PACKET_LEN) {
            self.packet(packet, now_us, &mut out);
        }
        self.partial.extend_from_slice(&data[whole..]);
        out
    }

    /// Emits what is pending, flagged end-of-stream (the broadcast is over).
    pub fn finish(&mut self, now_us: u64) -> Cut {
        let mut out = Vec::new();
        self.pending_flags |= ChunkFlags::END_OF_STREAM;
        self.flush(now_us, &mut out);
        out.pop()
            .unwrap_or_else(|| (self.header(ChunkFlags::END_OF_STREAM, now_us), Bytes::new()))
    }

    fn header(&mut self, flags: u8, now_us: u64) -> ChunkHeader {
        let seq = self.next_seq;
        self.next_seq += 1;
        ChunkHeader {
            flags: ChunkFlags(flags),
            epoch: self.epoch,
            seq,
            segment: self.segment.unwrap_or(0),
            timestamp_us: now_us,
            payload_len: 0,
        }
    }

    fn packet(&mut self, bytes: &[u8], now_us: u64, out: &mut Vec<Cut>) {
        let Some(packet) = Packet::new(bytes) else {
            // Lost sync: drop the packet; the muxer never produces this.
            return;
        };
        if self.map.observe(&packet) {
            // PSI is re-emitted at each segment start instead, with its own counters.
            let copy: [u8; PACKET_LEN] = bytes.try_into().expect("packet is 188 bytes");
            if packet.pid() == PAT_PID {
                self.pat = Some(copy);
            } else {
                self.pmt = Some(copy);
            }
            return;
        }
        let pid = packet.pid();
        let video = self.map.video_pid;
        let starts_frame = Some(pid) == video && packet.unit_start();
        let audio_cut = video.is_none()
            && self.map.audio_pids.contains(&pid)
            && packet.unit_start()
            && now_us.saturating_sub(self.pending_since_us) >= AUDIO_CHUNK_US;
        if starts_frame || audio_cut {
            self.flush(now_us, out);
            let keyframe = if video.is_some() { packet.random_access() } else { true };
            let segment_due = keyframe
                && (self.segment.is_none()
                    || self.resync
                    || video.is_some()
                    || now_us.saturating_sub(self.segment_started_us) >= self.segment_us);
            let mut flags = if video.is_some() { ChunkFlags::FRAME_START } else { 0 };
            if keyframe && video.is_some() {
                flags |= ChunkFlags::KEYFRAME;
            }
            if segment_due && self.start_segment(now_us) {
                flags |= ChunkFlags::SEGMENT_START;
                self.resync = false;
            }
            self.pending_flags |= flags;
            self.pending_since_us = now_us;
        } else if self.pending.len() + PACKET_LEN > MAX_PACKETS * PACKET_LEN {
            self.flush(now_us, out);
            self.pending_since_us = now_us;
        }
        if self.segment.is_some() && !self.resync {
            self.pending.extend_from_slice(bytes);
        }
    }

    /// Opens a segment: the pending chunk begins with PAT and PMT. False until both are known.
    fn start_segment(&mut self, now_us: u64) -> bool {
        let (Some(pat), Some(pmt)) = (self.pat, self.pmt) else {
            return false;
        };
        self.segment = Some(self.segment.map_or(0, |s| s + 1));
        self.segment_started_us = now_us;
        for (i, mut packet) in [pat, pmt].into_iter().enumerate() {
            ts::set_continuity(&mut packet, self.psi_cc[i]);
            self.psi_cc[i] = (self.psi_cc[i] + 1) & 0x0f;
            self.pending.extend_from_slice(&packet);
        }
        true
    }

    fn flush(&mut self, now_us: u64, out: &mut Vec<Cut>) {
        if self.pending.is_empty() {
            self.pending_flags = 0;
            return;
        }
        let mut flags = std::mem::take(&mut self.pending_flags);
        if std::mem::take(&mut self.discontinuity) {
            flags |= ChunkFlags::DISCONTINUITY;
        }
        let header = self.header(flags, now_us);
        out.push((header, self.pending.split().freeze()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIDEO: u16 = 0x41;
    const AUDIO: u16 = 0x42;

    fn packet(pid: u16, unit_start: bool, random_access: bool, fill: u8) -> Vec<u8> {
        let mut p = vec![0x47, (pid >> 8) as u8 | if unit_start { 0x40 } else { 0 }, pid as u8];
        if random_access {
            p.extend_from_slice(&[0x30, 1, 0x40]);
        } else {
            p.push(0x10);
        }
        p.resize(PACKET_LEN, fill);
        p
    }

    fn psi() -> Vec<u8> {
        let mut out = Vec::new();
        let mut pat = vec![
            0x47, 0x40, 0x00, 0x10, 0, 0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00, 1, 2, 3, 4,
        ];
        pat.resize(PACKET_LEN, 0xff);
        let mut pmt = vec![
            0x47, 0x50, 0x00, 0x10, 0, 0x02, 0xb0, 23, 0, 1, 0xc1, 0, 0, 0xe0, 0x41, 0xf0, 0, 0x1b, 0xe0, 0x41, 0xf0,
            0, 0x0f, 0xe0, 0x42, 0xf0, 0, 1, 2, 3, 4,
        ];
        pmt.resize(PACKET_LEN, 0xff);
        out.extend(pat);
        out.extend(pmt);
        out
    }

    /// A frame of `packets` TS packets, keyframe or not.
    fn frame(packets: usize, key: bool) -> Vec<u8> {
        let mut out = packet(VIDEO, true, key, 1);
        for _ in 1..packets {
            out.extend(packet(VIDEO, false, false, 2));
        }
        out
    }

    #[test]
    fn cuts_at_frames_and_segments_at_keyframes_with_psi_first() {
        let mut c = Chunker::new(9, 1000);
        let mut stream = psi();
        stream.extend(frame(1, false)); // before the first keyframe: dropped
        stream.extend(frame(3, true));
        stream.extend(packet(AUDIO, true, false, 3));
        stream.extend(frame(2, false));
        stream.extend(frame(2, true));
        stream.extend(frame(1, false));
        // Feed in awkward pieces: packets split across buffers.
        let mut cuts = Vec::new();
        for piece in stream.chunks(100) {
            cuts.extend(c.push(piece, 5));
        }
        let flags: Vec<u8> = cuts.iter().map(|(h, _)| h.flags.0).collect();
        let seg = ChunkFlags::FRAME_START | ChunkFlags::KEYFRAME | ChunkFlags::SEGMENT_START;
        assert_eq!(flags, vec![seg, ChunkFlags::FRAME_START, seg]);
        let sizes: Vec<usize> = cuts.iter().map(|(_, p)| p.len() / PACKET_LEN).collect();
        assert_eq!(sizes, vec![2 + 3 + 1, 2, 2 + 2]);
        let segments: Vec<u64> = cuts.iter().map(|(h, _)| h.segment).collect();
        assert_eq!(segments, vec![0, 0, 1]);
        assert_eq!(cuts.iter().map(|(h, _)| h.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        // PSI copies lead each segment with continuity counters that run on.
        let second = &cuts[2].1;
        assert_eq!(Packet::new(&second[..188]).unwrap().pid(), 0);
        assert_eq!(Packet::new(&second[..188]).unwrap().continuity(), 1);
        assert_eq!(Packet::new(&second[188..376]).unwrap().continuity(), 1);
        let last = c.finish(6);
        assert!(last.0.flags.has(ChunkFlags::END_OF_STREAM));
        assert_eq!(last.1.len(), PACKET_LEN);
    }

    #[test]
    fn a_restart_waits_for_the_new_media_s_keyframe_and_flags_it() {
        let mut c = Chunker::new(9, 1000);
        let mut stream = psi();
        stream.extend(frame(2, true));
        stream.extend(frame(1, false));
        let mut cuts = c.push(&stream, 1);
        cuts.extend(c.restart(2));
        assert_eq!(cuts.len(), 2, "the open chunk is ended by the restart");
        assert!(cuts.iter().all(|(h, _)| !h.flags.has(ChunkFlags::DISCONTINUITY)));
        // The new media: tables, a frame cut mid-GOP (dropped), then its keyframe.
        let mut stream = psi();
        stream.extend(frame(1, false));
        stream.extend(frame(3, true));
        stream.extend(frame(1, false));
        let cuts = c.push(&stream, 3);
        assert_eq!(cuts.len(), 1);
        let (header, payload) = &cuts[0];
        assert!(header.flags.has(ChunkFlags::DISCONTINUITY) && header.flags.has(ChunkFlags::SEGMENT_START));
        assert_eq!((header.segment, payload.len() / PACKET_LEN), (1, 2 + 3));
    }

    #[test]
    fn big_frames_span_chunks_of_at_most_16_kib() {
        let mut c = Chunker::new(1, 1000);
        let mut stream = psi();
        stream.extend(frame(200, true));
        stream.extend(frame(1, false));
        let cuts = c.push(&stream, 0);
        assert!(
            cuts.iter()
                .all(|(_, p)| p.len() <= MAX_CHUNK_PAYLOAD && p.len() % PACKET_LEN == 0)
        );
        assert_eq!(cuts.iter().map(|(_, p)| p.len() / PACKET_LEN).sum::<usize>(), 202);
        assert!(cuts[0].0.flags.has(ChunkFlags::SEGMENT_START));
        assert!(!cuts[1].0.flags.has(ChunkFlags::FRAME_START));
    }
}
