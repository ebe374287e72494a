//! The swarm over QUIC: the endpoint (`transport`), dialling and running connections
//! (`connect`), one task set per neighbour (`link`, with its one-way delay `stamps`), what they tell the node loop (`mailbox`), the loop that owns the core (`node`), and the
//! counters they all keep (`stats`).

mod connect;
pub mod link;
mod links;
pub mod mailbox;
#[cfg(feature = "netem")]
pub mod netem;
pub mod node;
pub mod pacer;
mod stamps;
#[warn(missing_docs)]
pub mod stats;
pub mod transport;
pub mod uplink;
