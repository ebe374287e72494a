//! A node's identity: the 32-byte public key of its own (per-node) ed25519 key, proven in every
//! QUIC handshake. Bans, duplicate-connection resolution and per-neighbour stats key on it,
//! not on IPs.

use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The 64 hex digits `to_hex` writes, back.
    pub fn from_hex(hex: &str) -> Option<NodeId> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(NodeId(id))
    }

    /// First five bytes in hex: enough to tell nodes apart in logs.
    pub fn short(&self) -> String {
        self.to_hex()[..10].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}
