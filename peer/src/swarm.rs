//! Joining a stream's swarm from code: the options every role shares (where to listen, whom
//! to dial, discovery, upload, limits), checked once, and the node they start. The viewer,
//! the relay and the broadcaster are built on it; the binaries fill it from their flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use shoal_core::limits::Limits;
use shoal_core::state;
use shoal_core::uplink::Mode;

use crate::net::node::{Node, NodeConfig};
use crate::net::transport::ListenError;

/// How a node finds the swarm and takes part in it. `SwarmOptions::default()` is what the
/// binaries do without flags; change the fields you need.
///
/// ```
/// let mut options = shoal_peer::swarm::SwarmOptions::default();
/// options.bootstrap = vec!["relay.example.org:7000".to_string()];
/// options.upload_kbps = Some(0); // a metered link: watch, upload nothing
/// assert!(options.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SwarmOptions {
    /// UDP address for QUIC; port 0 picks a free one. Default `0.0.0.0:0`.
    pub listen: SocketAddr,
    /// Peers to dial besides the ticket's addresses, as `HOST:PORT` (names are resolved).
    pub bootstrap: Vec<String>,
    /// Dial the ticket's addresses and meet peers through peer exchange (default). Off: the
    /// bootstrap peers only (fixed chains, locked-down kiosks).
    pub discovery: bool,
    /// Find the swarm through the BitTorrent Mainline DHT.
    pub dht: Dht,
    /// Ask the router to forward a public port here (PCP, NAT-PMP, UPnP-IGD). Default on;
    /// never when listening on loopback.
    pub port_mapping: bool,
    /// The most this node uploads, in kbit/s; `Some(0)` uploads no chunks at all.
    pub upload_kbps: Option<u64>,
    /// How chunk uploads share the uplink; `None` takes the role's default (background for
    /// viewers and relays, foreground for the broadcaster and public relays).
    pub upload_mode: Option<UploadMode>,
    /// How much of the stream is kept and relayed, by the broadcaster's clock (2 s - 10 min).
    pub window: Duration,
    /// Neighbours kept in the active set (1 - 256).
    pub max_neighbours: usize,
    /// Connections dialled to this node at once, set-up included (1 - 4096).
    pub max_incoming_connections: usize,
    /// Rewrite this file with the node's counters (JSON) about once a second.
    pub stats_json: Option<PathBuf>,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        let limits = Limits::default();
        SwarmOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            bootstrap: Vec::new(),
            discovery: true,
            dht: Dht::Off,
            port_mapping: true,
            upload_kbps: None,
            upload_mode: None,
            window: limits.window,
            max_neighbours: limits.max_neighbours,
            max_incoming_connections: limits.max_incoming_connections,
            stats_json: None,
        }
    }
}

/// Whether and how to use the Mainline DHT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dht {
    /// Not at all (the default).
    #[default]
    Off,
    /// The public DHT: the broadcaster publishes its addresses there, signed by the stream
    /// key; everyone else looks them up, so a ticket needs no address. (Your address becomes
    /// visible to anyone with the stream key.)
    Public,
    /// A private DHT, starting from these `HOST:PORT` nodes.
    Nodes(Vec<String>),
}

/// How chunk uploads share the machine's uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadMode {
    /// Step aside for the household's calls, games and uploads, as µTP does.
    Background,
    /// Paced only by the upload cap.
    Foreground,
}

impl From<UploadMode> for Mode {
    fn from(m: UploadMode) -> Mode {
        match m {
            UploadMode::Background => Mode::Background,
            UploadMode::Foreground => Mode::Foreground,
        }
    }
}

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmError {
    /// The UDP address is taken, or not this machine's.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the socket could not be bound.
        #[source]
        source: std::io::Error,
    },
    /// A bootstrap peer that is not a `HOST:PORT` that resolves.
    #[error("bootstrap peer {peer:?} is not a HOST:PORT that resolves")]
    Bootstrap {
        /// The peer as given.
        peer: String,
        /// Why it did not resolve.
        #[source]
        source: std::io::Error,
    },
    /// Nothing says where the swarm is: no address in the ticket, no bootstrap peer, no DHT.
    #[error("the ticket lists no address: look the stream up in the DHT, or give a bootstrap peer")]
    NoAddress,
    /// An option out of its range.
    #[error("{name}: {why}")]
    Invalid {
        /// The `SwarmOptions` field.
        name: &'static str,
        /// What is wrong with its value.
        why: String,
    },
    /// The DHT node could not start.
    #[error("cannot start the DHT node: {0}")]
    Dht(String),
    /// Anything else that stopped the node from starting (TLS setup, randomness).
    #[error("cannot start the swarm node: {0}")]
    Start(String),
}

/// What differs between the broadcaster, a relay and a viewer (for the crates that build
/// them on this one).
#[derive(Clone, Debug)]
pub struct Role {
    /// The broadcaster: depth 0 in every stripe, its chunks published, not received.
    pub source: bool,
    /// Verified chunks are handed to the caller (a viewer plays them).
    pub deliver: bool,
    /// Whether chunk uploads step aside for the household's traffic (`Background`) or are
    /// paced only by the upload cap (`Foreground`).
    pub upload_mode: UploadMode,
    /// The key it proves in handshakes; `None`: a fresh one (viewers and relays).
    pub node_key: Option<SigningKey>,
    /// A relay on a reachable address: many more neighbours.
    pub public: bool,
}

/// Neighbours a public relay keeps at least.
const PUBLIC_NEIGHBOURS: usize = 64;

/// A node started from the options, and its DHT node if one was asked for (to follow or
/// publish the stream's addresses with).
pub struct Started {
    /// The running node.
    pub node: Node,
    /// The DHT node, with `Dht::Public` or `Dht::Nodes`.
    pub dht: Option<mainline::async_dht::AsyncDht>,
}

impl SwarmOptions {
    /// The options checked, with one error naming what is wrong.
    pub fn validate(&self) -> Result<(), SwarmError> {
        let in_range = |name, v: usize, lo, hi| {
            (lo..=hi).contains(&v).then_some(()).ok_or(SwarmError::Invalid {
                name,
                why: format!("{v} is not within {lo}-{hi}"),
            })
        };
        in_range("max_neighbours", self.max_neighbours, 1, 256)?;
        in_range("max_incoming_connections", self.max_incoming_connections, 1, 4096)?;
        if !(Duration::from_secs(2)..=Duration::from_secs(600)).contains(&self.window) {
            return Err(SwarmError::Invalid {
                name: "window",
                why: format!("{:?} is not within 2 s - 10 min", self.window),
            });
        }
        Ok(())
    }

    fn wants_dht(&self) -> bool {
        self.dht != Dht::Off
    }

    /// Fails when nothing says where the swarm is.
    pub(crate) fn check_reachable(&self, ticket_addrs: &[SocketAddr]) -> Result<(), SwarmError> {
        if ticket_addrs.is_empty() && self.bootstrap.is_empty() && !self.wants_dht() {
            return Err(SwarmError::NoAddress);
        }
        Ok(())
    }

    /// Resolves the bootstrap peers (names allowed).
    pub(crate) async fn bootstrap_addrs(&self) -> Result<Vec<SocketAddr>, SwarmError> {
        let mut out = Vec::new();
        for peer in &self.bootstrap {
            let mut addrs = tokio::net::lookup_host(peer.as_str())
                .await
                .map_err(|source| SwarmError::Bootstrap {
                    peer: peer.clone(),
                    source,
                })?;
            out.extend(addrs.next());
        }
        Ok(out)
    }

    /// The core's configuration these options describe.
    pub(crate) fn core_config(&self) -> state::Config {
        state::Config {
            limits: Limits {
                window: self.window,
                max_neighbours: self.max_neighbours,
                max_incoming_connections: self.max_incoming_connections,
                ..Limits::default()
            },
            discovery: self.discovery,
            ..state::Config::default()
        }
    }

    /// Starts a node of `role` in the swarm of `stream_key`, dialling the bootstrap peers and
    /// (with discovery) `ticket_addrs`.
    pub async fn start(
        &self,
        stream_key: VerifyingKey,
        ticket_addrs: &[SocketAddr],
        role: Role,
    ) -> Result<Started, SwarmError> {
        self.validate()?;
        if !role.source {
            self.check_reachable(ticket_addrs)?;
        }
        let dht = match &self.dht {
            Dht::Off => None,
            Dht::Public => Some(crate::discovery::dht::join(&[])),
            Dht::Nodes(nodes) => Some(crate::discovery::dht::join(nodes)),
        }
        .transpose()
        .map_err(|e| SwarmError::Dht(format!("{e:#}")))?;
        let bootstrap = self.bootstrap_addrs().await?;
        let mut dial = bootstrap;
        if self.discovery && !role.source {
            dial.extend(ticket_addrs.iter().copied());
        }
        dial.dedup();
        let mut core = self.core_config();
        core.source = role.source;
        core.deliver = role.deliver;
        if role.public {
            // Everyone behind a NAT meets here first and learns of each other through it.
            core.limits.max_neighbours = core.limits.max_neighbours.max(PUBLIC_NEIGHBOURS);
            core.limits.max_incoming_connections = core.limits.max_incoming_connections.max(PUBLIC_NEIGHBOURS);
        }
        let node = Node::spawn(NodeConfig {
            stream_key,
            node_key: role.node_key,
            listen: self.listen,
            dial,
            upload_kbps: self.upload_kbps,
            upload_mode: self.upload_mode.unwrap_or(role.upload_mode).into(),
            core,
            stats_json: self.stats_json.clone(),
            port_mapping: self.port_mapping,
        })
        .await
        .map_err(|e| match e.downcast::<ListenError>() {
            Ok(ListenError { addr, source }) => SwarmError::Listen { addr, source },
            Err(e) => SwarmError::Start(format!("{e:#}")),
        })?;
        Ok(Started { node, dht })
    }
}
