//! The shoal swarm over real networks: the quinn node that drives the sans-IO core
//! (`shoal-core`) over QUIC, the ways peers find each other, and what every binary shares for
//! running it (flags, stats, the status line, logging). Grouped by layer, each using only the
//! ones listed before it:
//!
//! - `discovery`: Mainline DHT, mDNS on the LAN, port mapping, addresses neighbours see;
//!   services that find addresses, knowing nothing of the node;
//! - `net`: the QUIC endpoint, one task set per neighbour link, the node loop that owns the
//!   core, and the counters they keep;
//! - `ops`: the status line, logging, command-line plumbing.

pub mod discovery;
#[warn(missing_docs)]
pub mod events;
pub mod net;
pub mod ops;
#[warn(missing_docs)]
pub mod relay;
#[warn(missing_docs)]
pub mod swarm;

pub use net::node::{Node, NodeConfig, Publisher};
pub use shoal_core::{Action, Event, State, limits, state};
