//! What reaches the node loop: events for the core from every link, links coming up and
//! going down, chunks to publish, addresses found elsewhere. Below both the node and its
//! links, so neither has to know the other to talk.

use std::net::SocketAddr;
use std::sync::Arc;

use shoal_core::Event;
use shoal_proto::{Chunk, Message, NodeId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::stats::Link as LinkStats;
use crate::discovery::observed::Mapping;

pub enum Input {
    Event(Event),
    Linked(LinkHandle),
    Unlinked {
        node_id: NodeId,
        conn_id: usize,
        /// How the connection ended, for the log.
        why: String,
    },
    Publish(Chunk),
    /// Addresses found elsewhere (the DHT), to dial like a ticket's.
    Discovered(Vec<SocketAddr>),
    /// What the router now forwards to this node, if anything.
    Mapped(Option<Mapping>),
}

impl From<Option<Mapping>> for Input {
    fn from(mapping: Option<Mapping>) -> Self {
        Input::Mapped(mapping)
    }
}

/// The node loop's handle on a running link.
pub struct LinkHandle {
    pub node_id: NodeId,
    pub listen: Vec<SocketAddr>,
    /// Where it sees us (its HELLO says).
    pub observed: Option<SocketAddr>,
    pub outbound: bool,
    pub conn: quinn::Connection,
    pub control: mpsc::Sender<Message>,
    pub chunks: mpsc::Sender<(Arc<Chunk>, Instant)>,
    pub stats: Arc<LinkStats>,
}
