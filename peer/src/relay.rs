//! A relay as a library: joins a stream's swarm by its ticket and passes verified chunks on
//! to other viewers, playing nothing itself (what `shoal-peer` runs).
//!
//! ```no_run
//! # async fn run(ticket: shoal_proto::Ticket) -> Result<(), shoal_peer::swarm::SwarmError> {
//! let relay = shoal_peer::relay::Relay::builder(ticket).upload_kbps(Some(4000)).start().await?;
//! println!("relaying on {}", relay.local_addr());
//! // ... until the app is done:
//! relay.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;

use shoal_proto::{NodeId, Ticket};
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::events::{Events, NodeEvent};
use crate::net::node::Node;
use crate::net::stats::Snapshot;
use crate::swarm::{Role, SwarmError, SwarmOptions, UploadMode};

/// Sets a relay up; `start` joins the swarm.
#[derive(Clone, Debug)]
pub struct RelayBuilder {
    ticket: Ticket,
    swarm: SwarmOptions,
    public: bool,
}

impl RelayBuilder {
    /// All the swarm options at once (listen address, bootstrap peers, discovery, upload,
    /// limits).
    pub fn swarm(mut self, swarm: SwarmOptions) -> Self {
        self.swarm = swarm;
        self
    }

    /// The UDP address to accept QUIC connections on (default `0.0.0.0:0`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.swarm.listen = addr;
        self
    }

    /// The most it uploads, in kbit/s (default: what the uplink carries, learnt).
    pub fn upload_kbps(mut self, kbps: Option<u64>) -> Self {
        self.swarm.upload_kbps = kbps;
        self
    }

    /// A machine reachable from anywhere (a server): rendezvous and first hop for nodes
    /// behind NAT, with many more neighbours, and an upload that never steps aside.
    pub fn public(mut self, public: bool) -> Self {
        self.public = public;
        self
    }

    /// Joins the swarm.
    pub async fn start(self) -> Result<Relay, SwarmError> {
        let role = Role {
            source: false,
            deliver: false,
            upload_mode: if self.public {
                UploadMode::Foreground
            } else {
                UploadMode::Background
            },
            node_key: None,
            public: self.public,
        };
        let started = self
            .swarm
            .start(self.ticket.stream_key, &self.ticket.addrs, role)
            .await?;
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if let Some(dht) = started.dht {
            tasks.spawn(crate::discovery::dht::follow(
                dht,
                self.ticket.stream_key,
                started.node.peer_finder(),
                cancel.clone(),
            ));
        }
        Ok(Relay {
            node: started.node,
            _stop: cancel.clone().drop_guard(),
            cancel,
            tasks,
        })
    }
}

/// A running relay. Dropping it stops it; `shutdown` also says goodbye to its neighbours
/// and waits until its ports are released.
pub struct Relay {
    node: Node,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
    _stop: DropGuard,
}

impl Relay {
    /// A relay for the stream of `ticket`, with default options.
    pub fn builder(ticket: Ticket) -> RelayBuilder {
        RelayBuilder {
            ticket,
            swarm: SwarmOptions::default(),
            public: false,
        }
    }

    /// Where it accepts QUIC connections.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// The key it proves to its neighbours.
    pub fn node_id(&self) -> NodeId {
        self.node.node_id()
    }

    /// Its counters now (the same as `--stats-json` writes).
    pub fn stats(&self) -> Snapshot {
        self.node.stats().snapshot()
    }

    /// Neighbours coming and going, from now on.
    pub fn events(&self) -> Events<NodeEvent> {
        self.node.events()
    }

    /// Says goodbye to every neighbour and stops everything it started.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.tasks.shutdown().await;
        self.node.shutdown().await;
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("node", &self.node.node_id().short())
            .finish()
    }
}
