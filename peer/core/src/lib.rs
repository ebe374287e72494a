//! shoal's swarm core, sans IO: one `State` per node, fed `Event`s with the current time and
//! answering with `Action`s. The quinn node (`shoal-peer`), the simulator (`shoal-sim`) and
//! the unit tests all drive this same code; nothing here sleeps, spawns or reads a clock.

pub mod drive;
pub mod limits;
pub mod seqset;
pub mod state;
pub mod uplink;
pub mod window;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use drive::{Driver, drive};
pub use state::{Action, Event, State};
