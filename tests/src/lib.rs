//! Helpers for shoal's end-to-end tests: start the real binaries on loopback, read what they
//! print and their stats files, play the result with real players, and stop everything.

pub mod adversary;
pub mod bench;
pub mod natlab;
pub mod origin;
pub mod player;
pub mod process;
pub mod pusher;
pub mod skip;
pub mod swarm;
pub mod uplinks;
