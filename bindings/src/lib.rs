//! shoal for apps: one interface (uniffi) over the shoal library, from which Kotlin, Swift
//! and Python bindings are generated. A viewer: start it from a ticket, give its playlist URL
//! to the platform's player (ExoPlayer, AVPlayer, a web view), follow its events and stats,
//! stop it. A broadcaster: start it, share its ticket, push the MPEG-TS the app's encoder
//! makes, stop it.
//!
//! The library runs on a small tokio runtime of its own (two threads, started on first use):
//! foreign executors poll the async functions, and every call hops onto that runtime.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};

uniffi::setup_scaffolding!("shoal");

/// The runtime every call runs on.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("shoal")
        .enable_all()
        .build()
        .expect("a tokio runtime for shoal")
});

/// Runs `work` on shoal's runtime, from whatever executor awaits it.
async fn on_runtime<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> Result<T, ShoalError> {
    RUNTIME.spawn(work).await.map_err(|e| ShoalError::Failed {
        message: format!("shoal's task failed: {e}"),
    })
}

/// What went wrong, in words to show or log.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ShoalError {
    /// A ticket, address or option that is not valid.
    #[error("{message}")]
    Invalid { message: String },
    /// Starting or running failed (a port taken, the swarm unreachable, a source that stopped).
    #[error("{message}")]
    Failed { message: String },
}

fn invalid(message: impl ToString) -> ShoalError {
    ShoalError::Invalid {
        message: message.to_string(),
    }
}

fn failed(message: impl ToString) -> ShoalError {
    ShoalError::Failed {
        message: message.to_string(),
    }
}

fn addr(text: &str, what: &str) -> Result<SocketAddr, ShoalError> {
    text.parse()
        .map_err(|_| invalid(format!("{what} {text:?} is not an IP:PORT")))
}

/// How to start a viewer.
#[derive(uniffi::Record)]
pub struct ViewerConfig {
    /// The stream's ticket (`shoal1…`).
    pub ticket: String,
    /// Where to serve the playlist and page: `127.0.0.1:0` (a free port) is the usual.
    pub http: String,
    /// The UDP address for QUIC (`0.0.0.0:0`: every interface, a free port).
    pub listen: String,
    /// The most it uploads to other viewers, kbit/s; `None`: what the uplink carries, learnt,
    /// stepping aside for other traffic; `Some(0)` on metered networks.
    pub upload_kbps: Option<u64>,
    /// Peers to dial besides the ticket's (`HOST:PORT`).
    pub bootstrap: Vec<String>,
    /// LL-HLS parts, about a second behind (otherwise whole segments, more buffer).
    pub low_latency: bool,
}

/// A viewer's counters now.
#[derive(uniffi::Record)]
pub struct ViewerStats {
    /// Neighbours connected.
    pub neighbours: u32,
    /// Bytes received and sent (chunks and control).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Chunks verified and kept.
    pub chunks_verified: u64,
    /// Chunk latency (broadcaster → held here), ms, over recent chunks.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Start → the first whole segment held, ms.
    pub startup_ms: Option<u64>,
    /// Segments ready to play, skipped, and playlist stalls.
    pub segments_published: u64,
    pub segments_skipped: u64,
    pub stalls: u64,
    /// The broadcaster ended the stream.
    pub ended: bool,
}

/// What a viewer tells as it happens.
#[derive(uniffi::Enum)]
pub enum ViewerEvent {
    /// Segments flow (the first, or the first after going offline).
    Live,
    /// A segment is ready; how long it plays and how far behind the broadcaster it is.
    SegmentPublished {
        msn: u64,
        duration_ms: u64,
        latency_ms: u64,
    },
    /// A segment could not be brought whole in time.
    SegmentSkipped,
    /// No new segment for 2.5 s.
    Stall,
    /// No new segment for 10 s.
    Offline,
    /// The broadcaster restarted.
    NewEpoch { epoch: u64 },
    /// The broadcaster ended the stream.
    Ended,
    /// A neighbour connected.
    NeighbourUp { node_id: String, addr: String },
    /// A neighbour went, and why.
    NeighbourDown { node_id: String, why: String },
    /// This listener fell behind and missed events.
    Lagged { missed: u64 },
    /// Something newer than these bindings know of.
    Other { what: String },
}

impl From<shoal::ViewerEvent> for ViewerEvent {
    fn from(e: shoal::ViewerEvent) -> Self {
        use shoal::ViewerEvent as E;
        match e {
            E::Live => ViewerEvent::Live,
            E::SegmentPublished { msn, duration, latency } => ViewerEvent::SegmentPublished {
                msn,
                duration_ms: duration.as_millis() as u64,
                latency_ms: latency.as_millis() as u64,
            },
            E::SegmentSkipped => ViewerEvent::SegmentSkipped,
            E::Stall => ViewerEvent::Stall,
            E::Offline => ViewerEvent::Offline,
            E::NewEpoch { epoch } => ViewerEvent::NewEpoch { epoch },
            E::Ended => ViewerEvent::Ended,
            E::NeighbourUp { node_id, addr } => ViewerEvent::NeighbourUp {
                node_id: node_id.short(),
                addr: addr.to_string(),
            },
            E::NeighbourDown { node_id, why } => ViewerEvent::NeighbourDown {
                node_id: node_id.short(),
                why,
            },
            E::Lagged { missed } => ViewerEvent::Lagged { missed },
            other => ViewerEvent::Other {
                what: format!("{other:?}"),
            },
        }
    }
}

/// A running viewer.
#[derive(uniffi::Object)]
pub struct Viewer {
    inner: Mutex<Option<shoal::Viewer>>,
    events: tokio::sync::Mutex<shoal::Events<shoal::ViewerEvent>>,
    playlist: Option<String>,
    page: Option<String>,
}

/// Starts a viewer: joins the stream's swarm and serves it on localhost.
#[uniffi::export]
pub async fn start_viewer(config: ViewerConfig) -> Result<Arc<Viewer>, ShoalError> {
    let ticket: shoal::Ticket = config.ticket.parse().map_err(invalid)?;
    let http = addr(&config.http, "http")?;
    let listen = addr(&config.listen, "listen")?;
    let latency = if config.low_latency {
        shoal::Latency::Low
    } else {
        shoal::Latency::Normal
    };
    let builder = shoal::Viewer::builder(ticket)
        .http(Some(http))
        .listen(listen)
        .upload_kbps(config.upload_kbps)
        .bootstrap(config.bootstrap)
        .latency(latency);
    let viewer = on_runtime(builder.start()).await?.map_err(failed)?;
    Ok(Arc::new(Viewer {
        events: tokio::sync::Mutex::new(viewer.events()),
        playlist: viewer.playlist_url(),
        page: viewer.page_url(),
        inner: Mutex::new(Some(viewer)),
    }))
}

impl Viewer {
    fn with<T>(&self, f: impl FnOnce(&shoal::Viewer) -> T) -> Result<T, ShoalError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.as_ref().map(f).ok_or_else(|| failed("the viewer was stopped"))
    }
}

#[uniffi::export]
impl Viewer {
    /// The playlist any player opens (`http://127.0.0.1:PORT/live.m3u8`).
    pub fn playlist_url(&self) -> Option<String> {
        self.playlist.clone()
    }

    /// The player page (`http://127.0.0.1:PORT/`), for a web view.
    pub fn page_url(&self) -> Option<String> {
        self.page.clone()
    }

    /// Its counters now.
    pub fn stats(&self) -> Result<ViewerStats, ShoalError> {
        self.with(|v| {
            let s = v.stats();
            ViewerStats {
                neighbours: s.swarm.connected_neighbours() as u32,
                bytes_in: s.swarm.bytes_in.total(),
                bytes_out: s.swarm.bytes_out.total(),
                chunks_verified: s.swarm.chunks.verified,
                latency_p50_ms: s.swarm.latency_ms.p50,
                latency_p95_ms: s.swarm.latency_ms.p95,
                startup_ms: s.swarm.startup_ms,
                segments_published: s.segments.published,
                segments_skipped: s.segments.skipped,
                stalls: s.segments.stalls,
                ended: s.segments.ended,
            }
        })
    }

    /// All its counters, as the gateway's `/stats.json` gives them.
    pub fn stats_json(&self) -> Result<String, ShoalError> {
        self.with(|v| serde_json::to_string(&v.stats()).unwrap_or_default())
    }

    /// The next event; `None` once the viewer has stopped.
    pub async fn next_event(self: Arc<Self>) -> Option<ViewerEvent> {
        on_runtime(async move { self.events.lock().await.next().await })
            .await
            .ok()
            .flatten()
            .map(ViewerEvent::from)
    }

    /// Says goodbye to its neighbours and stops everything it started.
    pub async fn stop(&self) {
        let viewer = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(viewer) = viewer {
            let _ = on_runtime(viewer.shutdown()).await;
        }
    }
}

/// How to start a broadcaster of MPEG-TS the app pushes.
#[derive(uniffi::Record)]
pub struct BroadcasterConfig {
    /// The stream's name, shown to viewers.
    pub name: String,
    /// The stream key's 32 secret bytes; `None`: a new stream (keep `key()` to continue it).
    pub key: Option<Vec<u8>>,
    /// The UDP address for QUIC (`0.0.0.0:0`).
    pub listen: String,
    /// Relays to seed first (`HOST:PORT`).
    pub bootstrap: Vec<String>,
}

/// What a broadcaster tells as it happens.
#[derive(uniffi::Enum)]
pub enum BroadcasterEvent {
    /// The stream ended.
    Ended,
    /// The ticket changed (an address beyond the NAT was learnt).
    TicketChanged { ticket: String },
    /// A neighbour connected.
    NeighbourUp { node_id: String, addr: String },
    /// A neighbour went, and why.
    NeighbourDown { node_id: String, why: String },
    /// This listener fell behind and missed events.
    Lagged { missed: u64 },
    /// Anything else (the source playing, lost or back).
    Other { what: String },
}

impl From<shoal::BroadcasterEvent> for BroadcasterEvent {
    fn from(e: shoal::BroadcasterEvent) -> Self {
        use shoal::BroadcasterEvent as E;
        match e {
            E::Ended => BroadcasterEvent::Ended,
            E::TicketChanged(t) => BroadcasterEvent::TicketChanged { ticket: t.to_string() },
            E::NeighbourUp { node_id, addr } => BroadcasterEvent::NeighbourUp {
                node_id: node_id.short(),
                addr: addr.to_string(),
            },
            E::NeighbourDown { node_id, why } => BroadcasterEvent::NeighbourDown {
                node_id: node_id.short(),
                why,
            },
            E::Lagged { missed } => BroadcasterEvent::Lagged { missed },
            other => BroadcasterEvent::Other {
                what: format!("{other:?}"),
            },
        }
    }
}

/// A running broadcaster.
#[derive(uniffi::Object)]
pub struct Broadcaster {
    inner: Mutex<Option<Arc<shoal::Broadcaster>>>,
    events: tokio::sync::Mutex<shoal::Events<shoal::BroadcasterEvent>>,
    key: Vec<u8>,
}

/// Starts a broadcaster that streams the MPEG-TS (H.264 + AAC, in real time) the app pushes.
#[uniffi::export]
pub async fn start_broadcaster(config: BroadcasterConfig) -> Result<Arc<Broadcaster>, ShoalError> {
    let seed: [u8; 32] = match config.key {
        Some(bytes) => bytes.try_into().map_err(|_| invalid("a stream key is 32 bytes"))?,
        None => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| failed(format!("no system randomness: {e}")))?;
            seed
        }
    };
    let listen = addr(&config.listen, "listen")?;
    let builder = shoal::Broadcaster::builder(ed25519_dalek::SigningKey::from_bytes(&seed))
        .name(config.name)
        .listen(listen)
        .bootstrap(config.bootstrap)
        .source(shoal::Source::Push);
    let broadcaster = on_runtime(builder.start()).await?.map_err(failed)?;
    Ok(Arc::new(Broadcaster {
        events: tokio::sync::Mutex::new(broadcaster.events()),
        inner: Mutex::new(Some(Arc::new(broadcaster))),
        key: seed.to_vec(),
    }))
}

impl Broadcaster {
    fn get(&self) -> Result<Arc<shoal::Broadcaster>, ShoalError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.clone().ok_or_else(|| failed("the broadcaster was stopped"))
    }
}

#[uniffi::export]
impl Broadcaster {
    /// The ticket viewers join with.
    pub fn ticket(&self) -> Result<String, ShoalError> {
        Ok(self.get()?.ticket().to_string())
    }

    /// The stream key's 32 secret bytes: keep them to broadcast the same stream again.
    pub fn key(&self) -> Vec<u8> {
        self.key.clone()
    }

    /// Hands over MPEG-TS bytes as the app's encoder makes them (any split).
    pub async fn push_ts(&self, data: Vec<u8>) -> Result<(), ShoalError> {
        let b = self.get()?;
        on_runtime(async move { b.push_ts(bytes::Bytes::from(data)).await })
            .await?
            .map_err(failed)
    }

    /// Its counters now, as `--stats-json` writes them.
    pub fn stats_json(&self) -> Result<String, ShoalError> {
        Ok(serde_json::to_string(&self.get()?.stats().swarm).unwrap_or_default())
    }

    /// The next event; `None` once the broadcaster has stopped.
    pub async fn next_event(self: Arc<Self>) -> Option<BroadcasterEvent> {
        on_runtime(async move { self.events.lock().await.next().await })
            .await
            .ok()
            .flatten()
            .map(BroadcasterEvent::from)
    }

    /// Ends the stream for its viewers and stops everything it started.
    pub async fn stop(&self) {
        let b = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(b) = b
            && let Ok(b) = Arc::try_unwrap(b)
        {
            let _ = on_runtime(b.shutdown()).await;
        }
    }
}
