//! Repackages runs of chunks into HLS parts. A low-latency player may start at any part, so
//! each part opens with the PAT and PMT; the copies the broadcaster put at segment starts are
//! dropped, and the gateway numbers its own PSI continuity counters so that parts, and the
//! segments made of them, read as one unbroken stream (VLC logs every break otherwise).

use bytes::{Bytes, BytesMut};
use shoal_proto::Chunk;
use shoal_proto::ts::{self, PACKET_LEN, PAT_PID, ProgramMap};

#[derive(Default)]
pub struct Packager {
    map: ProgramMap,
    pat: Option<[u8; PACKET_LEN]>,
    pmt: Option<[u8; PACKET_LEN]>,
    /// Next continuity counters of the PAT and the PMT.
    cc: [u8; 2],
}

impl Packager {
    /// A new broadcast may bring another program map: learn it afresh.
    pub fn reset(&mut self) {
        self.map = ProgramMap::default();
        self.pat = None;
        self.pmt = None;
    }

    pub fn video_pid(&self) -> Option<u16> {
        self.map.video_pid
    }

    /// PAT and PMT (once known), then the chunks' packets without their own PSI.
    pub fn part(&mut self, chunks: &[Chunk]) -> Bytes {
        let len = chunks.iter().map(|c| c.payload.len()).sum::<usize>() + 2 * PACKET_LEN;
        let mut media = BytesMut::with_capacity(len);
        for chunk in chunks {
            for packet in ts::packets(&chunk.payload) {
                if self.map.observe(&packet) {
                    let copy: [u8; PACKET_LEN] = packet.bytes().try_into().expect("a packet is 188 bytes");
                    if packet.unit_start() {
                        match packet.pid() {
                            PAT_PID => self.pat = Some(copy),
                            _ => self.pmt = Some(copy),
                        }
                    }
                    continue;
                }
                media.extend_from_slice(packet.bytes());
            }
        }
        let mut out = BytesMut::with_capacity(len);
        for (i, psi) in [self.pat, self.pmt].into_iter().enumerate() {
            if let Some(mut packet) = psi {
                ts::set_continuity(&mut packet, self.cc[i]);
                self.cc[i] = (self.cc[i] + 1) & 0x0f;
                out.extend_from_slice(&packet);
            }
        }
        out.extend_from_slice(&media);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ChunkFlags, ChunkHeader};

    fn packet(pid: u16, unit_start: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0xff; PACKET_LEN];
        p[0] = 0x47;
        p[1] = (if unit_start { 0x40 } else { 0 }) | (pid >> 8) as u8;
        p[2] = pid as u8;
        p[3] = 0x10;
        p[4..4 + payload.len()].copy_from_slice(payload);
        p
    }

    /// A PAT naming PMT PID 0x1000 and a PMT naming video PID 0x100 (CRCs not checked).
    fn psi() -> Vec<u8> {
        let pat = [0, 0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00, 0, 0, 0, 0];
        let pmt = [
            0, 0x02, 0xb0, 18, 0, 1, 0xc1, 0, 0, 0xe1, 0x00, 0xf0, 0, 0x1b, 0xe1, 0x00, 0xf0, 0, 0, 0, 0, 0,
        ];
        [packet(0, true, &pat), packet(0x1000, true, &pmt)].concat()
    }

    fn chunk(payload: Vec<u8>) -> Chunk {
        Chunk {
            header: ChunkHeader {
                flags: ChunkFlags(0),
                epoch: 1,
                seq: 0,
                segment: 0,
                timestamp_us: 0,
                payload_len: payload.len() as u32,
            },
            payload: Bytes::from(payload),
            signature: [0; 64],
        }
    }

    #[test]
    fn every_part_opens_with_psi_whose_counters_run_on() {
        let mut p = Packager::default();
        let video = packet(0x100, true, &[0, 0, 1, 0xe0]);
        let first = p.part(&[chunk([psi(), video.clone()].concat())]);
        let second = p.part(&[chunk(video.clone()), chunk(video.clone())]);
        let third = p.part(&[chunk([psi(), video.clone()].concat())]);
        assert_eq!(p.video_pid(), Some(0x100));
        for (part, packets) in [(&first, 3), (&second, 4), (&third, 3)] {
            assert_eq!(part.len(), packets * PACKET_LEN);
        }
        let counters =
            |part: &Bytes| -> Vec<(u16, u8)> { ts::packets(part).take(2).map(|p| (p.pid(), p.continuity())).collect() };
        assert_eq!(counters(&first), vec![(0, 0), (0x1000, 0)]);
        assert_eq!(counters(&second), vec![(0, 1), (0x1000, 1)]);
        assert_eq!(counters(&third), vec![(0, 2), (0x1000, 2)]);
        // The media packets follow untouched.
        assert_eq!(&second[2 * PACKET_LEN..3 * PACKET_LEN], &video[..]);
    }
}
