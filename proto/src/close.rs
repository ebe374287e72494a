//! QUIC application close codes (and the stream reset code) shoal speaks: both sides of a
//! connection, and a peer written by someone else, read why a connection ended from them.

/// Leaving politely (GOODBYE), or let go without blame.
pub const GOODBYE: u32 = 0;
/// Broke the protocol: bad HELLO, another protocol version.
pub const PROTOCOL: u32 = 1;
/// Sent what honest peers never do (a forgery, a flood, a lie): banned by node ID.
pub const BANNED: u32 = 2;
/// Already connected, or no room: try the peers we sent instead.
pub const DUPLICATE: u32 = 3;
/// Serves another stream.
pub const STREAM_MISMATCH: u32 = 4;
/// Does not take what is sent to it in time, or said nothing for too long.
pub const SLOW: u32 = 5;
/// Claimed a node ID other than the key it proved in the handshake.
pub const IDENTITY: u32 = 6;
/// Stream reset code: the chunk missed its deadline.
pub const EXPIRED: u32 = 16;
