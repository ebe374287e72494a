//! shoal's wire types: the signed chunk, the control messages, the stream ticket, and the
//! little MPEG-TS knowledge that chunking and HLS packaging share. No I/O, no async.

pub mod chunk;
pub mod close;
pub mod codec;
#[doc(hidden)]
pub mod fuzzing;
pub mod message;
pub mod node_id;
pub mod ticket;
pub mod ts;

pub use chunk::{Chunk, ChunkFlags, ChunkHeader, VerifyError};
pub use codec::DecodeError;
pub use message::{Message, PeerInfo, SeqRange};
pub use node_id::NodeId;
pub use ticket::{Ticket, TicketError};

/// Version of the wire protocol spoken in HELLO; peers with another version are refused.
/// (2: STATUS tells the stream's rate; 3: and the children per stripe.)
pub const PROTOCOL_VERSION: u16 = 3;
/// QUIC ALPN of shoal connections.
pub const ALPN: &[u8] = b"shoal/1";
