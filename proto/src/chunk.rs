//! The chunk: a run of whole MPEG-TS packets (one video frame, or part of a big one), with
//! a fixed-size header, signed by the broadcaster's stream key over a domain-prefixed message.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::codec::{DecodeError, get_array, get_u8, get_u32, get_u64, need};

/// Chunk format version carried in every header.
pub const CHUNK_VERSION: u8 = 1;
/// Largest payload a chunk may carry (87 TS packets fit).
pub const MAX_CHUNK_PAYLOAD: usize = 16 * 1024;
/// Encoded header size: version, flags, epoch, seq, segment, timestamp, payload length.
pub const HEADER_LEN: usize = 1 + 1 + 8 + 8 + 8 + 8 + 4;
pub const SIGNATURE_LEN: usize = 64;
/// Largest encoded chunk; a reader never buffers more than this for one chunk.
pub const MAX_CHUNK_WIRE: usize = HEADER_LEN + MAX_CHUNK_PAYLOAD + SIGNATURE_LEN;
/// Domain separation: a chunk signature can never be mistaken for any other signed thing.
pub const SIGNING_PREFIX: &[u8] = b"shoal-chunk-v1";

/// Header bits a player and the gateway need without parsing the payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChunkFlags(pub u8);

impl ChunkFlags {
    /// The chunk starts a video frame (a PES start on the video PID).
    pub const FRAME_START: u8 = 1 << 0;
    /// The frame this chunk starts is a keyframe.
    pub const KEYFRAME: u8 = 1 << 1;
    /// The chunk starts a segment (a keyframe; it begins with PAT and PMT).
    pub const SEGMENT_START: u8 = 1 << 2;
    /// Media before this chunk does not continue into it (source restarted or replaced).
    pub const DISCONTINUITY: u8 = 1 << 3;
    /// The broadcast ended with this chunk.
    pub const END_OF_STREAM: u8 = 1 << 4;
    const KNOWN: u8 = 0x1f;

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: ChunkFlags,
    /// Random id chosen at broadcaster start: a restart never reuses (epoch, seq).
    pub epoch: u64,
    pub seq: u64,
    pub segment: u64,
    /// Broadcaster wall clock when the chunk was cut, µs since the Unix epoch.
    pub timestamp_us: u64,
    pub payload_len: u32,
}

impl ChunkHeader {
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(CHUNK_VERSION);
        buf.put_u8(self.flags.0);
        buf.put_u64(self.epoch);
        buf.put_u64(self.seq);
        buf.put_u64(self.segment);
        buf.put_u64(self.timestamp_us);
        buf.put_u32(self.payload_len);
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.encode(&mut &mut out[..]);
        out
    }

    /// Decodes the fixed-size header; rejects unknown versions and oversized payloads.
    pub fn decode(buf: &mut impl Buf) -> Result<Self, DecodeError> {
        need(buf, HEADER_LEN)?;
        let version = get_u8(buf)?;
        if version != CHUNK_VERSION {
            return Err(DecodeError::Version(version));
        }
        let flags = get_u8(buf)?;
        if flags & !ChunkFlags::KNOWN != 0 {
            return Err(DecodeError::Invalid("chunk flags"));
        }
        let header = ChunkHeader {
            flags: ChunkFlags(flags),
            epoch: get_u64(buf)?,
            seq: get_u64(buf)?,
            segment: get_u64(buf)?,
            timestamp_us: get_u64(buf)?,
            payload_len: get_u32(buf)?,
        };
        if header.payload_len as usize > MAX_CHUNK_PAYLOAD {
            return Err(DecodeError::TooLong {
                what: "chunk payload",
                len: header.payload_len as usize,
                max: MAX_CHUNK_PAYLOAD,
            });
        }
        Ok(header)
    }
}

/// A signed chunk. Cloning is cheap: the payload is shared, never copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub header: ChunkHeader,
    pub payload: Bytes,
    pub signature: [u8; SIGNATURE_LEN],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("chunk signature does not verify against the stream key")]
pub struct VerifyError;

impl Chunk {
    /// Signs `payload` under `header` (whose `payload_len` is set here).
    pub fn sign(mut header: ChunkHeader, payload: Bytes, key: &SigningKey) -> Result<Chunk, DecodeError> {
        if payload.len() > MAX_CHUNK_PAYLOAD {
            return Err(DecodeError::TooLong {
                what: "chunk payload",
                len: payload.len(),
                max: MAX_CHUNK_PAYLOAD,
            });
        }
        header.payload_len = payload.len() as u32;
        let signature = key.sign(&signed_message(&header, &payload)).to_bytes();
        Ok(Chunk {
            header,
            payload,
            signature,
        })
    }

    /// Checks the broadcaster's signature; call before trusting anything past the header.
    pub fn verify(&self, stream_key: &VerifyingKey) -> Result<(), VerifyError> {
        let signature = Signature::from_bytes(&self.signature);
        stream_key
            .verify_strict(&signed_message(&self.header, &self.payload), &signature)
            .map_err(|_| VerifyError)
    }

    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len() + SIGNATURE_LEN
    }

    pub fn encode(&self, buf: &mut impl BufMut) {
        self.header.encode(buf);
        buf.put_slice(&self.payload);
        buf.put_slice(&self.signature);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Decodes one chunk. The payload is sliced from `buf` without copying when `buf` is `Bytes`.
    pub fn decode(buf: &mut impl Buf) -> Result<Chunk, DecodeError> {
        let header = ChunkHeader::decode(buf)?;
        need(buf, header.payload_len as usize + SIGNATURE_LEN)?;
        let payload = buf.copy_to_bytes(header.payload_len as usize);
        let signature = get_array::<SIGNATURE_LEN>(buf)?;
        Ok(Chunk {
            header,
            payload,
            signature,
        })
    }
}

fn signed_message(header: &ChunkHeader, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_PREFIX.len() + HEADER_LEN + payload.len());
    msg.extend_from_slice(SIGNING_PREFIX);
    msg.extend_from_slice(&header.to_bytes());
    msg.extend_from_slice(payload);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn header(flags: u8, seq: u64) -> ChunkHeader {
        ChunkHeader {
            flags: ChunkFlags(flags),
            epoch: 7,
            seq,
            segment: seq / 30,
            timestamp_us: 1_700_000_000_000_000u64.wrapping_add(seq),
            payload_len: 0,
        }
    }

    #[test]
    fn short_input_asks_for_more() {
        let chunk = Chunk::sign(header(1, 3), Bytes::from_static(&[0x47; 188]), &key(1)).unwrap();
        let bytes = chunk.to_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                Chunk::decode(&mut &bytes[..cut]),
                Err(DecodeError::Short),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_payload_is_refused_before_reading_it() {
        let mut h = header(0, 1);
        h.payload_len = (MAX_CHUNK_PAYLOAD + 1) as u32;
        let bytes = h.to_bytes();
        assert!(matches!(
            ChunkHeader::decode(&mut &bytes[..]),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn another_streams_key_is_rejected() {
        let chunk = Chunk::sign(header(1, 3), Bytes::from_static(b"frame"), &key(1)).unwrap();
        assert_eq!(chunk.verify(&key(2).verifying_key()), Err(VerifyError));
        assert_eq!(chunk.verify(&key(1).verifying_key()), Ok(()));
    }

    proptest! {
        #[test]
        fn round_trips(flags in 0u8..0x20, seq: u64, epoch: u64, ts: u64, payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut h = header(flags, seq);
            h.epoch = epoch;
            h.timestamp_us = ts;
            let chunk = Chunk::sign(h, Bytes::from(payload), &key(9)).unwrap();
            let bytes = chunk.to_bytes();
            let decoded = Chunk::decode(&mut bytes.clone()).unwrap();
            prop_assert_eq!(&decoded, &chunk);
            prop_assert!(decoded.verify(&key(9).verifying_key()).is_ok());
        }

        #[test]
        fn any_bit_flip_is_rejected(payload in proptest::collection::vec(any::<u8>(), 1..600), bit_seed: usize) {
            let chunk = Chunk::sign(header(3, 42), Bytes::from(payload), &key(5)).unwrap();
            let mut bytes = chunk.to_bytes().to_vec();
            let bit = bit_seed % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            // A flip either breaks decoding (version, flags, length) or the signature.
            if let Ok(decoded) = Chunk::decode(&mut &bytes[..]) {
                prop_assert!(decoded.verify(&key(5).verifying_key()).is_err());
            }
        }
    }
}
