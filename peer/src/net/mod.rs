//! The swarm over QUIC: the endpoint (`transport`), one task set per neighbour (`link`), what
//! they tell the node loop (`mailbox`), the loop that owns the core (`node`), and the
//! counters they all keep (`stats`).

pub mod link;
mod links;
pub mod mailbox;
#[cfg(feature = "netem")]
pub mod netem;
pub mod node;
pub mod pacer;
pub mod stats;
pub mod transport;
