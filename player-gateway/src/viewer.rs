//! A viewer as a library: joins a stream's swarm by its ticket and serves it as HLS for any
//! player on this machine, from a localhost URL or mounted under an application's own axum
//! server, with typed stats and a stream of events. (What `shoal-gateway` runs.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_peer::Node;
use shoal_peer::discovery::lan::Announcement;
use shoal_peer::events::{EVENTS_QUEUE, Events, Lagging, NeighbourEvents, NodeEvent, forward};
use shoal_peer::net::stats::{now_us, spawn_writer};
use shoal_peer::swarm::{Dht, Role, SwarmError, SwarmOptions, UploadMode};
use shoal_proto::{NodeId, Ticket};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::gateway::{Gateway, GatewayStats};
use crate::playlist::Latency;

/// The library's own HTTP address: loopback, a free port (the binary's is 127.0.0.1:8080).
const DEFAULT_HTTP: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
/// How long shutting down waits for players' open requests (long polls) before cutting them.
const HTTP_DRAIN: Duration = Duration::from_secs(2);
/// How often the viewer looks at whether its playlist is still moving.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// No new segment for this long: the stream is offline (the broadcaster stopped, or the swarm
/// lost this viewer).
const OFFLINE_AFTER: Duration = Duration::from_secs(10);

/// What a viewer tells as it happens.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ViewerEvent {
    /// Segments flow: the first one, or the first after the stream went offline.
    Live,
    /// A new segment is ready to play.
    SegmentPublished {
        /// Its media sequence number in the playlist.
        msn: u64,
        /// How long it plays.
        duration: Duration,
        /// Broadcaster timestamp of its first frame → ready here.
        latency: Duration,
    },
    /// A segment the swarm could not bring whole in time was skipped (players see a
    /// discontinuity).
    SegmentSkipped,
    /// No new segment for 2.5 s: players have run dry.
    Stall,
    /// No new segment for 10 s, the stream not ended: the broadcaster is gone, or this
    /// viewer lost the swarm.
    Offline,
    /// The broadcaster restarted (a new stream epoch): players see a discontinuity.
    NewEpoch {
        /// The new epoch.
        epoch: u64,
    },
    /// The broadcaster ended the stream.
    Ended,
    /// A connection to another node is up.
    NeighbourUp {
        /// The key the neighbour proved in the handshake.
        node_id: NodeId,
        /// Where it is.
        addr: SocketAddr,
    },
    /// A neighbour is gone.
    NeighbourDown {
        /// The key it had proved.
        node_id: NodeId,
        /// How the connection ended.
        why: String,
    },
    /// This listener fell behind and missed this many events.
    Lagged {
        /// Events dropped for it.
        missed: u64,
    },
}

impl Lagging for ViewerEvent {
    fn lagged(missed: u64) -> Self {
        ViewerEvent::Lagged { missed }
    }
}

/// Why a viewer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewerError {
    /// Joining the swarm failed.
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    /// The HTTP address is taken, or not this machine's.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Announcing or finding the stream on the local network (mDNS) failed.
    #[error("{0}")]
    Lan(String),
}

/// Sets a viewer up; `start` joins the swarm and opens the HTTP server.
#[derive(Clone, Debug)]
pub struct ViewerBuilder {
    ticket: Ticket,
    swarm: SwarmOptions,
    http: Option<SocketAddr>,
    latency: Latency,
    announce_on_lan: bool,
}

impl ViewerBuilder {
    /// All the swarm options at once.
    pub fn swarm(mut self, swarm: SwarmOptions) -> Self {
        self.swarm = swarm;
        self
    }

    /// The UDP address for QUIC (default `0.0.0.0:0`: every interface, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.swarm.listen = addr;
        self
    }

    /// The most this viewer uploads to others, in kbit/s (default: what the uplink carries,
    /// learnt, stepping aside for the household; `Some(0)`: nothing, e.g. on a metered link).
    pub fn upload_kbps(mut self, kbps: Option<u64>) -> Self {
        self.swarm.upload_kbps = kbps;
        self
    }

    /// Peers to dial besides the ticket's, as `HOST:PORT`.
    pub fn bootstrap(mut self, peers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.swarm.bootstrap = peers.into_iter().map(Into::into).collect();
        self
    }

    /// Off: dial only the bootstrap peers (default on: the ticket's addresses and peer exchange).
    pub fn discovery(mut self, on: bool) -> Self {
        self.swarm.discovery = on;
        self
    }

    /// Find the swarm through the Mainline DHT.
    pub fn dht(mut self, dht: Dht) -> Self {
        self.swarm.dht = dht;
        self
    }

    /// How much of the stream is kept and relayed (default 30 s).
    pub fn window(mut self, window: Duration) -> Self {
        self.swarm.window = window;
        self
    }

    /// Where to serve the playlist, the player page and the stats; `None`: no server of its
    /// own (mount `Viewer::router` in yours). Default `127.0.0.1:0`, a free port.
    pub fn http(mut self, addr: Option<SocketAddr>) -> Self {
        self.http = addr;
        self
    }

    /// `Low`: LL-HLS parts, about a second behind in a browser (default); `Normal`: whole
    /// segments, more buffer.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// Announce the stream on the local network (mDNS), so kiosks there find it with no ticket.
    pub fn announce_on_lan(mut self, on: bool) -> Self {
        self.announce_on_lan = on;
        self
    }

    /// Rewrite this file with the viewer's stats (JSON) about once a second.
    pub fn stats_json(mut self, path: Option<PathBuf>) -> Self {
        self.swarm.stats_json = path;
        self
    }

    /// Opens the HTTP server (first: a taken port fails before anything joins), joins the
    /// swarm, and starts turning chunks into segments.
    pub async fn start(self) -> Result<Viewer, ViewerError> {
        let listener = match self.http {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ViewerError::Http { addr, source })?,
            ),
            None => None,
        };
        let http_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        // The viewer writes its own, richer stats file (segments too).
        let mut swarm = self.swarm.clone();
        let stats_json = swarm.stats_json.take();
        let role = Role {
            source: false,
            deliver: true,
            upload_mode: UploadMode::Background,
            node_key: None,
            public: false,
        };
        let started = swarm.start(self.ticket.stream_key, &self.ticket.addrs, role).await?;
        let mut node = started.node;
        let (events, _) = broadcast::channel(EVENTS_QUEUE);
        let gateway = Gateway::new(self.ticket.name.clone(), self.latency, node.stats(), events.clone());
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let announcement = if self.announce_on_lan {
            let a =
                shoal_peer::discovery::lan::announce(&self.ticket, node.local_addr().port(), &node.node_id().short())
                    .map_err(|e| ViewerError::Lan(format!("{e:#}")))?;
            Some(a)
        } else {
            None
        };
        if let Some(dht) = started.dht {
            tasks.spawn(shoal_peer::discovery::dht::follow(
                dht,
                self.ticket.stream_key,
                node.peer_finder(),
                cancel.clone(),
            ));
        }
        if let Some(mut deliveries) = node.take_deliveries() {
            let gateway = gateway.clone();
            tasks.spawn(async move {
                while let Some(chunk) = deliveries.recv().await {
                    gateway.push(chunk, now_us());
                }
            });
        }
        tasks.spawn(forward(node.events(), events.clone()));
        tasks.spawn(watch_playlist(gateway.clone(), events.clone(), cancel.clone()));
        if let Some(path) = stats_json {
            let gateway = gateway.clone();
            let writer = spawn_writer(path, move || gateway.snapshot(), cancel.clone());
            tasks.spawn(async move {
                let _ = writer.await;
            });
        }
        if let Some(listener) = listener {
            let app = crate::http::router(gateway.clone());
            let stop = cancel.clone();
            tasks.spawn(async move {
                let server = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
                if let Err(e) = server.await {
                    tracing::warn!("the HTTP server stopped: {e}");
                }
            });
        }
        Ok(Viewer {
            gateway,
            node,
            http_addr,
            events,
            tasks,
            _stop: cancel.clone().drop_guard(),
            cancel,
            _announcement: announcement,
        })
    }
}

impl NeighbourEvents for ViewerEvent {
    fn from_node(event: NodeEvent) -> Option<Self> {
        match event {
            NodeEvent::NeighbourUp { node_id, addr } => Some(ViewerEvent::NeighbourUp { node_id, addr }),
            NodeEvent::NeighbourDown { node_id, why } => Some(ViewerEvent::NeighbourDown { node_id, why }),
            _ => None,
        }
    }
}

/// Tells when the playlist stops moving: a stall after 2.5 s without a new segment, offline
/// after 10 s (once per gap; the next segment makes it live again).
async fn watch_playlist(gateway: Arc<Gateway>, events: broadcast::Sender<ViewerEvent>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    let (mut stalled, mut offline) = (None, None);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some((last_us, ended)) = gateway.last_segment() else {
            continue;
        };
        if ended {
            continue;
        }
        let quiet = Duration::from_micros(now_us().saturating_sub(last_us));
        if quiet >= crate::gateway::STALL_AFTER && stalled != Some(last_us) {
            stalled = Some(last_us);
            let _ = events.send(ViewerEvent::Stall);
        }
        if quiet >= OFFLINE_AFTER && offline != Some(last_us) {
            offline = Some(last_us);
            gateway.went_offline();
            let _ = events.send(ViewerEvent::Offline);
        }
    }
}

/// A running viewer. Dropping it stops it; `shutdown` also says goodbye to its neighbours
/// and waits until its ports are released.
pub struct Viewer {
    gateway: Arc<Gateway>,
    node: Node,
    http_addr: Option<SocketAddr>,
    events: broadcast::Sender<ViewerEvent>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
    _stop: DropGuard,
    _announcement: Option<Announcement>,
}

impl Viewer {
    /// A viewer of the stream of `ticket`, with default options.
    pub fn builder(ticket: Ticket) -> ViewerBuilder {
        ViewerBuilder {
            ticket,
            swarm: SwarmOptions::default(),
            http: Some(DEFAULT_HTTP),
            latency: Latency::Low,
            announce_on_lan: false,
        }
    }

    /// Looks for a stream on the local network (announced by a broadcaster or a viewer with
    /// LAN announcement on) for up to `wait`: the one called `name`, or the only one there.
    pub async fn find_on_lan(name: Option<String>, wait: Duration) -> Result<Ticket, ViewerError> {
        let found = tokio::task::spawn_blocking(move || shoal_peer::discovery::lan::find(name.as_deref(), wait))
            .await
            .map_err(|e| ViewerError::Lan(e.to_string()))?
            .map_err(|e| ViewerError::Lan(format!("{e:#}")))?;
        Ok(found.ticket)
    }

    /// The playlist any player opens (`http://127.0.0.1:PORT/live.m3u8`); `None` when the
    /// viewer serves no HTTP of its own.
    pub fn playlist_url(&self) -> Option<String> {
        self.http_addr.map(|a| format!("http://{a}/live.m3u8"))
    }

    /// The player page (`http://127.0.0.1:PORT/`); `None` without an HTTP server.
    pub fn page_url(&self) -> Option<String> {
        self.http_addr.map(|a| format!("http://{a}/"))
    }

    /// Where its HTTP server listens, if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where it accepts QUIC connections from other nodes.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// The key it proves to its neighbours.
    pub fn node_id(&self) -> NodeId {
        self.node.node_id()
    }

    /// The stream's name, from the ticket.
    pub fn name(&self) -> &str {
        &self.gateway.name
    }

    /// Its counters now: the swarm's and the playlist's (the same as `/stats.json`).
    pub fn stats(&self) -> GatewayStats {
        self.gateway.snapshot()
    }

    /// What happens from now on (events before this call are not replayed).
    pub fn events(&self) -> Events<ViewerEvent> {
        Events::new(self.events.subscribe())
    }

    /// The HLS playlist, segments, player page, stats and metrics, to mount under an
    /// application's own axum server. Nested at `/tv`, the page is at `/tv` (axum routes
    /// `/tv/` nowhere unless you add a redirect) and the playlist at `/tv/live.m3u8`; the
    /// page's links follow the prefix.
    ///
    /// ```no_run
    /// # async fn run(ticket: shoal_proto::Ticket) -> Result<(), Box<dyn std::error::Error>> {
    /// // No server of its own: the app's serves it.
    /// let viewer = shoal_gateway::Viewer::builder(ticket).http(None).start().await?;
    /// let app = axum::Router::new().nest("/tv", viewer.router());
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn router(&self) -> axum::Router {
        crate::http::router(self.gateway.clone())
    }

    /// Says goodbye to every neighbour and stops everything it started: the HTTP server
    /// (after up to 2 s for players' open requests), the swarm node, the announcements.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(HTTP_DRAIN, drain).await.is_err() {
            self.tasks.shutdown().await;
        }
        self.node.shutdown().await;
    }
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("stream", &self.gateway.name)
            .field("http", &self.http_addr)
            .field("node", &self.node.node_id().short())
            .finish()
    }
}
