//! Every bound a node keeps on what its neighbours can make it hold or do, in one place with
//! its default. The memory a node may use follows from them (`memory_bound`): whatever the
//! swarm sends, a node holds at most its window of stream, a bounded amount per connection,
//! and a fixed amount for the program itself.

use std::time::Duration;

pub use shoal_proto::chunk::MAX_CHUNK_WIRE;
pub use shoal_proto::message::MAX_FRAME;

/// A connection with nothing received for this long is closed: the neighbour is gone. (The
/// QUIC node sets it as its idle timeout; the simulator takes as long to notice a departure.)
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Neighbours a node with room for children accepts beyond `max_neighbours`.
pub const EXTRA_FOR_CHILDREN: usize = 8;
/// Outbound connections beyond `max_neighbours` (an orphan looking for a parent, dials in flight).
const EXTRA_OUTBOUND: usize = 8;
/// What the program needs whatever the swarm does: code, runtime, TLS, allocator slack.
const FIXED_BYTES: u64 = 48 << 20;
/// Per connection beyond its windows: QUIC state, stream bookkeeping, queued control.
const PER_CONNECTION_BYTES: u64 = 256 << 10;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Stream kept and relayed, by broadcaster time: memory ≈ window × bitrate.
    pub window: Duration,
    /// Active neighbours: newcomers beyond this are turned away with other peers to try.
    pub max_neighbours: usize,
    /// Connections dialled to this node, handshaking or running, at once; more are refused.
    pub max_incoming_connections: usize,
    /// Control messages queued towards one neighbour; one that lets it fill is dropped as slow.
    pub control_queue: usize,
    /// Chunks queued towards one neighbour; when full, pushes to it are skipped.
    pub chunk_queue: usize,
    /// Bytes a neighbour may have sent us that we have not read yet (QUIC receive window).
    pub receive_window: u64,
    /// Bytes we may have written to a neighbour that it has not acknowledged (QUIC send window).
    pub send_window: u64,
    /// Control messages a neighbour may send per second, with two seconds' worth of burst.
    /// Honest nodes send a few dozen; past this the neighbour is banned for flooding.
    pub control_per_s: u32,
    /// Chunks a neighbour may ask of us per second, with two seconds' worth of burst. An
    /// honest one asks for its gaps and a segment on joining; past this it is banned.
    pub requested_per_s: u32,
    /// Chunks from outside the window a neighbour may send per second (two seconds' burst):
    /// honest ones send a few stragglers; a stream of stale chunks is an attack.
    pub stale_per_s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window: Duration::from_secs(30),
            max_neighbours: 10,
            max_incoming_connections: 32,
            control_queue: 256,
            chunk_queue: 512,
            receive_window: 1 << 20,
            send_window: 1 << 20,
            control_per_s: 200,
            requested_per_s: 1024,
            stale_per_s: 16,
        }
    }
}

impl Limits {
    /// Connections a node may hold at once, dialled by it or to it.
    pub fn max_connections(&self) -> usize {
        self.max_incoming_connections + self.max_neighbours + EXTRA_OUTBOUND
    }

    /// The most memory (bytes) a node keeping these limits should use for a stream of
    /// `bitrate_bps`: its window (chunk framing and allocator slack included), its queues and
    /// QUIC windows for every connection it may hold, and a fixed amount.
    pub fn memory_bound(&self, bitrate_bps: u64) -> u64 {
        let window = (self.window.as_secs_f64() * bitrate_bps as f64 / 8.0 * 1.5) as u64;
        let per_connection = self.receive_window + self.send_window + PER_CONNECTION_BYTES;
        window + self.max_connections() as u64 * per_connection + FIXED_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_bound_grows_with_window_and_bitrate() {
        let limits = Limits::default();
        let small = limits.memory_bound(1_000_000);
        assert!(limits.memory_bound(2_000_000) > small);
        let longer = Limits {
            window: Duration::from_secs(60),
            ..Limits::default()
        };
        // 30 s more of 1 Mbit/s, with slack: ≈ 5.6 MB.
        assert_eq!(longer.memory_bound(1_000_000) - small, 5_625_000);
    }
}
