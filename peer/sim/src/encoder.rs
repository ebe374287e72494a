//! Chunk sizes as a real encoder makes them: one chunk per frame at the frame rate, a
//! keyframe at each segment start about five times the size of other frames and split into
//! ≤ 16 KiB chunks. Payloads are slices of one shared buffer, never copied.

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;
use shoal_proto::chunk::MAX_CHUNK_PAYLOAD;
use shoal_proto::{Chunk, ChunkFlags, ChunkHeader};

/// Whole TS packets that fit a chunk.
const CHUNK_BYTES: usize = MAX_CHUNK_PAYLOAD / 188 * 188;
/// A keyframe is this many times the size of an average other frame.
const KEYFRAME_FACTOR: f64 = 5.0;

pub struct Encoder {
    frame_interval_us: u64,
    frames_per_segment: u64,
    /// Average size of a non-key frame, chosen so the stream meets its bitrate.
    delta_bytes: f64,
    frame: u64,
    seq: u64,
    payload: Bytes,
}

impl Encoder {
    pub fn new(bitrate_kbps: u64, fps: u64, segment_ms: u64) -> Self {
        let frames_per_segment = (fps * segment_ms / 1000).max(1);
        let bytes_per_segment = bitrate_kbps as f64 * 1000.0 / 8.0 * segment_ms as f64 / 1000.0;
        let delta_bytes = bytes_per_segment / (frames_per_segment as f64 - 1.0 + KEYFRAME_FACTOR);
        Encoder {
            frame_interval_us: 1_000_000 / fps.max(1),
            frames_per_segment,
            delta_bytes,
            frame: 0,
            seq: 0,
            payload: Bytes::from(vec![0x47u8; CHUNK_BYTES]),
        }
    }

    pub fn frame_interval_us(&self) -> u64 {
        self.frame_interval_us
    }

    /// The chunks of the next frame, stamped `timestamp_us`.
    pub fn next_frame(&mut self, timestamp_us: u64, rng: &mut SmallRng) -> Vec<Chunk> {
        let key = self.frame.is_multiple_of(self.frames_per_segment);
        let segment = self.frame / self.frames_per_segment;
        self.frame += 1;
        let mean = if key {
            self.delta_bytes * KEYFRAME_FACTOR
        } else {
            self.delta_bytes
        };
        let mut left = (mean * rng.random_range(0.7..1.3)).max(188.0) as usize;
        let mut chunks = Vec::new();
        let mut first = true;
        while left > 0 {
            let len = left.min(CHUNK_BYTES);
            left -= len;
            let mut flags = 0;
            if first {
                flags |= ChunkFlags::FRAME_START;
                if key {
                    flags |= ChunkFlags::KEYFRAME | ChunkFlags::SEGMENT_START;
                }
            }
            first = false;
            let header = ChunkHeader {
                flags: ChunkFlags(flags),
                epoch: 1,
                seq: self.seq,
                segment,
                timestamp_us,
                payload_len: len as u32,
            };
            self.seq += 1;
            chunks.push(Chunk {
                header,
                payload: self.payload.slice(..len),
                signature: [0; 64],
            });
        }
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn meets_the_bitrate_with_keyframe_bursts() {
        let mut e = Encoder::new(2000, 30, 1000);
        let mut rng = SmallRng::seed_from_u64(1);
        let frames: Vec<Vec<Chunk>> = (0..300).map(|i| e.next_frame(i * 33_333, &mut rng)).collect();
        let bytes: usize = frames.iter().flatten().map(|c| c.payload.len()).sum();
        let kbps = bytes as f64 * 8.0 / 10.0 / 1000.0;
        assert!((kbps - 2000.0).abs() < 100.0, "{kbps}");
        assert!(frames[0].len() >= 2, "a keyframe spans chunks");
        assert!(frames[0][0].header.flags.has(ChunkFlags::SEGMENT_START));
        assert!(frames.iter().flatten().all(|c| c.payload.len() <= MAX_CHUNK_PAYLOAD));
    }
}
