//! Helpers for unit tests: chunks with a dummy signature (the core never checks it; the
//! driver verifies before the core sees a chunk).

use std::sync::Arc;

use bytes::Bytes;
use shoal_proto::{Chunk, ChunkFlags, ChunkHeader, NodeId};

pub fn chunk(epoch: u64, seq: u64, timestamp_us: u64, flags: u8) -> Arc<Chunk> {
    Arc::new(Chunk {
        header: ChunkHeader {
            flags: ChunkFlags(flags),
            epoch,
            seq,
            segment: 0,
            timestamp_us,
            payload_len: 188,
        },
        payload: Bytes::from_static(&[0x47; 188]),
        signature: [0; 64],
    })
}

pub fn node(n: u8) -> NodeId {
    NodeId([n; 32])
}
