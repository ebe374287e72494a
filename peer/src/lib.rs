//! The shoal swarm: the sans-IO `State` that decides what to send where, the quinn node that
//! drives it over real connections, and the command-line plumbing shared by every binary.

pub mod cli;
pub mod dht;
pub mod lan;
pub mod limits;
pub mod link;
#[cfg(feature = "netem")]
pub mod netem;
pub mod node;
pub mod observed;
pub mod pacer;
pub mod portmap;
pub mod seqset;
pub mod sim;
pub mod state;
pub mod stats;
pub mod status;
pub mod transport;
pub mod window;

#[cfg(test)]
pub(crate) mod testing;

pub use node::{Node, NodeConfig};
pub use state::{Action, Event, State};
