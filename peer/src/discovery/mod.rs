//! How a node finds peers and is found beyond its ticket: the Mainline DHT, mDNS on the LAN,
//! a port its router forwards, and the address its neighbours see it at.

pub mod dht;
pub mod lan;
pub mod observed;
pub mod portmap;
