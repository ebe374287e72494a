//! A broadcaster as a library: a live source cut into signed chunks and seeded into the
//! swarm, with the stream's ticket, stats and events. The source is MPEG-TS an application
//! brings (a reader, or bytes it pushes), or — with the `gstreamer` feature — anything the
//! `shoal-broadcaster` binary streams (a test picture, a file, OBS over SRT or UDP, a camera).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use shoal_peer::Node;
use shoal_peer::discovery::lan::Announcement;
use shoal_peer::events::{EVENTS_QUEUE, Events, Lagging, NeighbourEvents, NodeEvent, forward};
use shoal_peer::net::node::Publisher;
use shoal_peer::net::stats::{Snapshot, Stats};
use shoal_peer::swarm::{Role, SwarmError, SwarmOptions, UploadMode};
use shoal_proto::{Chunk, ChunkFlags, NodeId, Ticket};
use tokio::io::AsyncRead;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::chunker::Chunker;
use crate::health::Health;
use crate::recorder::Recorder;
use crate::ticket::Tickets;

/// Signed chunks waiting for the swarm node.
const PUBLISH_QUEUE: usize = 256;
/// MPEG-TS handed over with `push_ts`, waiting to be cut.
const PUSH_QUEUE: usize = 64;
/// How long shutting down lets the end-of-stream chunk reach the neighbours.
const END_DRAIN: Duration = Duration::from_secs(3);

/// What the broadcaster streams.
#[non_exhaustive]
pub enum Source {
    /// MPEG-TS read as it arrives: H.264 video whose keyframes carry the random-access flag
    /// (ffmpeg and OBS set it), AAC audio, at the pace of real time (a live encoder, or
    /// `ffmpeg -re`). It is cut at its own keyframes, never re-encoded.
    MpegTs(Box<dyn AsyncRead + Send + Unpin>),
    /// The same, handed over with [`Broadcaster::push_ts`] as the application gets it.
    Push,
    /// Anything the `shoal-broadcaster` binary streams (`--source`), through GStreamer:
    /// encoded, or passed through when it is H.264 and AAC already.
    #[cfg(feature = "gstreamer")]
    Media(crate::media::MediaSource),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::MpegTs(_) => f.write_str("MpegTs(..)"),
            Source::Push => f.write_str("Push"),
            #[cfg(feature = "gstreamer")]
            Source::Media(m) => write!(f, "Media({m})"),
        }
    }
}

/// What a broadcaster tells as it happens.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BroadcasterEvent {
    /// The source's first media went out.
    SourcePlaying,
    /// The source stopped (a sender gone, a cable pulled): the slate stands in for it.
    SourceLost,
    /// The source is back.
    SourceBack,
    /// The source ended; the end of the stream was sent.
    Ended,
    /// The ticket changed: it lists an address beyond this network's NAT learnt since.
    TicketChanged(Ticket),
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

impl Lagging for BroadcasterEvent {
    fn lagged(missed: u64) -> Self {
        BroadcasterEvent::Lagged { missed }
    }
}

/// Why a broadcaster could not start, or a push failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// Joining the swarm failed.
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    /// The source cannot be played (a missing GStreamer plugin, a device that is not there,
    /// a file that is not media), with what it said.
    #[error("{0}")]
    Source(String),
    /// The source ended before it produced anything.
    #[error("the source ended before it produced anything")]
    SourceEndedEarly,
    /// The recording file cannot be created.
    #[error("{0}")]
    Record(String),
    /// Announcing the stream on the local network (mDNS) failed.
    #[error("cannot announce on the local network: {0}")]
    Lan(String),
    /// `push_ts` on a broadcaster whose source is not `Source::Push`, or that has stopped.
    #[error("this broadcaster takes no pushed MPEG-TS (its source is another, or it stopped)")]
    NotPushing,
}

/// What a broadcaster's stats are: the swarm node's, and its source's.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BroadcasterStats {
    /// The swarm node's counters (what `--stats-json` writes).
    pub swarm: Snapshot,
    /// What the source carries and how it is handled ("video: H.264 high 1280x720, passed
    /// through"), as far as known.
    pub media: Vec<String>,
    /// "source OK · 1.00× real time", "SOURCE LOST 4 s ago (slate on)": for a status line.
    pub source: String,
}

/// Sets a broadcaster up; `start` joins the swarm and starts the source.
pub struct BroadcasterBuilder {
    key: SigningKey,
    name: String,
    segment: Duration,
    swarm: SwarmOptions,
    source: Source,
    record: Option<PathBuf>,
    announce_on_lan: bool,
    #[cfg(feature = "gstreamer")]
    media: crate::media::MediaOptions,
}

impl BroadcasterBuilder {
    /// The stream's name, shown to viewers (default "shoal live").
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// What to stream (default: a test picture and tone with `gstreamer`, else `Push`).
    pub fn source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    /// Segment length; a keyframe starts every segment (default 1 s). Passed-through video
    /// is cut at its own keyframes: set the sender's keyframe interval to this.
    pub fn segment(mut self, segment: Duration) -> Self {
        self.segment = segment;
        self
    }

    /// All the swarm options at once.
    pub fn swarm(mut self, swarm: SwarmOptions) -> Self {
        self.swarm = swarm;
        self
    }

    /// The UDP address for QUIC (default `0.0.0.0:0`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.swarm.listen = addr;
        self
    }

    /// Relays to seed first, as `HOST:PORT`; they are listed first in the ticket.
    pub fn bootstrap(mut self, peers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.swarm.bootstrap = peers.into_iter().map(Into::into).collect();
        self
    }

    /// Also write what is broadcast to this MPEG-TS file, as it goes.
    pub fn record(mut self, path: Option<PathBuf>) -> Self {
        self.record = path;
        self
    }

    /// Announce the stream on the local network (mDNS): viewers there find it with no ticket.
    pub fn announce_on_lan(mut self, on: bool) -> Self {
        self.announce_on_lan = on;
        self
    }

    /// How `Source::Media` is encoded (bitrate, size, encoder, audio, passthrough).
    #[cfg(feature = "gstreamer")]
    pub fn media(mut self, media: crate::media::MediaOptions) -> Self {
        self.media = media;
        self
    }

    /// Joins the swarm and starts the source. Returns once its first media went out (so a
    /// source that cannot play fails here, and the ticket handed out plays), or at once for
    /// `Source::Push`.
    pub async fn start(self) -> Result<Broadcaster, BroadcastError> {
        // (Taken apart: a source reader is Send but not Sync, and the future must be Send.)
        let BroadcasterBuilder {
            key,
            name,
            segment,
            swarm,
            source,
            record,
            announce_on_lan,
            #[cfg(feature = "gstreamer")]
                media: media_options,
        } = self;
        let segment_ms = segment.as_millis().clamp(200, 10_000) as u64;
        #[cfg(feature = "gstreamer")]
        let media = match &source {
            Source::Media(m) => Some(crate::media::prepare(m, &media_options, segment_ms)?),
            _ => None,
        };
        let recorder = record
            .as_deref()
            .map(Recorder::create)
            .transpose()
            .map_err(|e| BroadcastError::Record(format!("{e:#}")))?;
        let role = Role {
            source: true,
            deliver: false,
            // The stream's own upload never steps aside.
            upload_mode: UploadMode::Foreground,
            // Its node ID is the stream key itself, proven in every handshake: the source
            // cannot be impersonated, and every peer knows which neighbour it is.
            node_key: Some(key.clone()),
            public: false,
        };
        let started = swarm.start(key.verifying_key(), &[], role).await?;
        let node = started.node;
        let bootstrap = resolve(&swarm.bootstrap).await;
        let tickets = Tickets {
            key: key.verifying_key(),
            name: name.clone(),
            bootstrap,
            local: shoal_peer::net::transport::advertised_addrs(node.local_addr()),
        };
        let (events, _) = broadcast::channel(EVENTS_QUEUE);
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if let Some(dht) = started.dht {
            let (key, addrs, stats) = (key.clone(), tickets.make(&[]).addrs, node.stats());
            let public = move || stats.public_addrs();
            tasks.spawn(shoal_peer::discovery::dht::publish(
                dht,
                key,
                addrs,
                public,
                cancel.clone(),
            ));
        }
        tasks.spawn(forward(node.events(), events.clone()));

        // Stops the source when the broadcaster goes, or if starting it goes no further.
        let stop = SourceStop::default();
        let health = Arc::new(Health::with_events(events.clone()));
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let (first_tx, first_rx) = oneshot::channel();
        let (ended_tx, ended) = watch::channel(None);
        let publisher = tokio::spawn(publish(rx, node.publisher(), node.stats(), first_tx));
        let cut = Cut {
            chunker: Chunker::new(random_epoch()?, segment_ms),
            segment_ms,
            key: key.clone(),
            recorder,
        };
        let mut push = None;
        let source: tokio::task::JoinHandle<Result<(), BroadcastError>> = match source {
            Source::MpegTs(reader) => tokio::spawn(crate::ingest::run(
                crate::ingest::Input::reader(reader),
                cut,
                tx,
                health.clone(),
                stop.token(),
            )),
            Source::Push => {
                let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE);
                push = Some(push_tx);
                tokio::spawn(crate::ingest::run(
                    crate::ingest::Input::Pushed(push_rx),
                    cut,
                    tx,
                    health.clone(),
                    stop.token(),
                ))
            }
            #[cfg(feature = "gstreamer")]
            Source::Media(source) => {
                let (health, stop) = (health.clone(), stop.flag());
                let (media, options) = (media.expect("prepared above"), media_options.clone());
                tokio::task::spawn_blocking(move || {
                    crate::media::encode(&source, &options, media, cut, tx, &health, &stop)
                        .map_err(|e| BroadcastError::Source(format!("{e:#}")))
                })
            }
        };
        // The ticket is handed out once the source really plays: a file that is not media,
        // or a device that fails, ends here with its error and no ticket.
        let source = if push.is_some() {
            source
        } else {
            let mut source = source;
            tokio::select! {
                // (A dropped sender is no media: the source's own result then tells why.)
                Ok(()) = first_rx => {}
                ended = &mut source => {
                    ended.map_err(|e| BroadcastError::Source(format!("the source failed: {e}")))??;
                    return Err(BroadcastError::SourceEndedEarly);
                }
            }
            source
        };
        let _ = events.send(BroadcasterEvent::SourcePlaying);
        // The source's end: the stream's end, told once the end-of-stream chunk went out.
        {
            let events = events.clone();
            tasks.spawn(async move {
                let result = match source.await {
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(format!("the source failed: {e}")),
                    Ok(Ok(())) => None,
                };
                let _ = tokio::time::timeout(END_DRAIN, publisher).await;
                let _ = events.send(BroadcasterEvent::Ended);
                let _ = ended_tx.send(Some(result));
            });
        }
        let ticket = tickets.make(&node.stats().public_addrs());
        let (ticket_tx, ticket_rx) = watch::channel(ticket.clone());
        tasks.spawn(follow_ticket(
            tickets,
            node.stats(),
            ticket_tx,
            events.clone(),
            cancel.clone(),
        ));
        let announcement = if announce_on_lan {
            let a = shoal_peer::discovery::lan::announce(&ticket, node.local_addr().port(), &node.node_id().short())
                .map_err(|e| BroadcastError::Lan(format!("{e:#}")))?;
            Some(a)
        } else {
            None
        };
        Ok(Broadcaster {
            node,
            ticket: ticket_rx,
            events,
            push,
            health,
            stop,
            ended,
            tasks,
            _stop: cancel.clone().drop_guard(),
            cancel,
            _announcement: announcement,
        })
    }
}

/// The bootstrap relays, resolved, for the ticket (the node dials them already).
async fn resolve(peers: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for peer in peers {
        if let Ok(mut addrs) = tokio::net::lookup_host(peer.as_str()).await {
            out.extend(addrs.next());
        }
    }
    out
}

/// Stops the source when dropped (or asked): the flag a GStreamer thread polls, the token an
/// async reader waits on.
#[derive(Default)]
struct SourceStop {
    flag: Arc<AtomicBool>,
    token: CancellationToken,
}

impl SourceStop {
    #[cfg(feature = "gstreamer")]
    fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    fn stop(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.token.cancel();
    }
}

impl Drop for SourceStop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How MPEG-TS becomes signed chunks: the chunker, the key, and the recording.
pub(crate) struct Cut {
    pub chunker: Chunker,
    segment_ms: u64,
    key: SigningKey,
    recorder: Option<Recorder>,
}

impl Cut {
    pub fn segment_ms(&self) -> u64 {
        self.segment_ms
    }

    /// Signs a cut chunk (and records it).
    pub fn sign(&mut self, header: shoal_proto::ChunkHeader, payload: Bytes) -> Option<Chunk> {
        if let Some(r) = &mut self.recorder {
            r.write(&payload);
        }
        match Chunk::sign(header, payload, &self.key) {
            Ok(chunk) => Some(chunk),
            Err(e) => {
                tracing::error!("cannot sign a chunk: {e}");
                None
            }
        }
    }
}

fn random_epoch() -> Result<u64, BroadcastError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| BroadcastError::Source(format!("no system randomness for the stream epoch: {e}")))?;
    Ok(u64::from_le_bytes(bytes))
}

impl NeighbourEvents for BroadcasterEvent {
    fn from_node(event: NodeEvent) -> Option<Self> {
        match event {
            NodeEvent::NeighbourUp { node_id, addr } => Some(BroadcasterEvent::NeighbourUp { node_id, addr }),
            NodeEvent::NeighbourDown { node_id, why } => Some(BroadcasterEvent::NeighbourDown { node_id, why }),
            _ => None,
        }
    }
}

/// How often the addresses beyond the NAT are looked at.
const TICKET_CHECK: Duration = Duration::from_secs(2);

/// Makes a new ticket whenever the addresses beyond the NAT change.
async fn follow_ticket(
    tickets: Tickets,
    stats: Arc<Stats>,
    ticket: watch::Sender<Ticket>,
    events: broadcast::Sender<BroadcasterEvent>,
    cancel: CancellationToken,
) {
    let mut public = stats.public_addrs();
    let mut tick = tokio::time::interval(TICKET_CHECK);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = stats.public_addrs();
        if now == public {
            continue;
        }
        public = now;
        let new = tickets.make(&public);
        ticket.send_replace(new.clone());
        let _ = events.send(BroadcasterEvent::TicketChanged(new));
    }
}

/// Hands chunks to the swarm and logs what the source uploads now and then.
async fn publish(mut rx: mpsc::Receiver<Chunk>, publisher: Publisher, stats: Arc<Stats>, first: oneshot::Sender<()>) {
    let mut first = Some(first);
    let mut produced: u64 = 0;
    let mut chunks: u64 = 0;
    let mut reported: u64 = 0;
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    loop {
        tokio::select! {
            chunk = rx.recv() => {
                let Some(chunk) = chunk else { break };
                // Media, not the end-of-stream chunk a failing source still sends.
                if !chunk.header.flags.has(ChunkFlags::END_OF_STREAM)
                    && let Some(first) = first.take()
                {
                    let _ = first.send(());
                }
                produced += chunk.encoded_len() as u64;
                chunks += 1;
                if publisher.publish(chunk).await.is_err() {
                    break;
                }
            }
            _ = report.tick() => {
                let sent = stats.wire().carried_bytes();
                // Over the last ten seconds (the total would grow without end).
                let stream_kbps = (produced - reported) * 8 / 1000 / 10;
                reported = produced;
                tracing::info!(
                    chunks,
                    stream_kbps,
                    upload_ratio = format!("{:.2}", sent as f64 / produced.max(1) as f64),
                    "streaming"
                );
            }
        }
    }
}

/// A running broadcaster. Dropping it stops it at once; `shutdown` ends the stream for
/// viewers (an end-of-stream chunk), says goodbye to its neighbours and releases its port.
pub struct Broadcaster {
    node: Node,
    ticket: watch::Receiver<Ticket>,
    events: broadcast::Sender<BroadcasterEvent>,
    push: Option<mpsc::Sender<Bytes>>,
    health: Arc<Health>,
    stop: SourceStop,
    /// Once the source ended: `Some(None)`, or `Some(Some(why))` when it failed.
    ended: watch::Receiver<Option<Option<String>>>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
    _stop: DropGuard,
    _announcement: Option<Announcement>,
}

impl Broadcaster {
    /// A broadcaster of the stream `key` identifies (the key *is* the stream: keep it to keep
    /// viewers' tickets working across restarts).
    pub fn builder(key: SigningKey) -> BroadcasterBuilder {
        BroadcasterBuilder {
            key,
            name: "shoal live".to_string(),
            segment: Duration::from_secs(1),
            swarm: SwarmOptions::default(),
            #[cfg(feature = "gstreamer")]
            source: Source::Media(crate::media::MediaSource::Test),
            #[cfg(not(feature = "gstreamer"))]
            source: Source::Push,
            record: None,
            announce_on_lan: false,
            #[cfg(feature = "gstreamer")]
            media: crate::media::MediaOptions::default(),
        }
    }

    /// The ticket viewers join with (it changes when an address beyond the NAT is learnt:
    /// `events()` says so).
    pub fn ticket(&self) -> Ticket {
        self.ticket.borrow().clone()
    }

    /// Where it accepts QUIC connections.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// Its node ID: the stream key.
    pub fn node_id(&self) -> NodeId {
        self.node.node_id()
    }

    /// Its counters now, and how the source is doing.
    pub fn stats(&self) -> BroadcasterStats {
        BroadcasterStats {
            swarm: self.node.stats().snapshot(),
            media: self.health.media(),
            source: self.health.summary(),
        }
    }

    /// What happens from now on (events before this call are not replayed).
    pub fn events(&self) -> Events<BroadcasterEvent> {
        Events::new(self.events.subscribe())
    }

    /// Hands MPEG-TS bytes to a `Source::Push` broadcaster: any split, as the application
    /// gets them; waits while the swarm is behind.
    pub async fn push_ts(&self, ts: Bytes) -> Result<(), BroadcastError> {
        let push = self.push.as_ref().ok_or(BroadcastError::NotPushing)?;
        push.send(ts).await.map_err(|_| BroadcastError::NotPushing)
    }

    /// Waits until the source ends by itself (the input ended, the pushing stopped), and
    /// tells whether it failed.
    pub async fn finished(&self) -> Result<(), BroadcastError> {
        let mut ended = self.ended.clone();
        let failed = match ended.wait_for(Option::is_some).await {
            Ok(end) => end.clone().flatten(),
            Err(_) => None,
        };
        failed.map_or(Ok(()), |why| Err(BroadcastError::Source(why)))
    }

    /// Ends the stream: the source stops, the end-of-stream chunk reaches the neighbours
    /// (up to 3 s), then goodbye to each of them and every task stopped.
    pub async fn shutdown(mut self) {
        self.stop.stop();
        // The pushed stream ends: the ingest sends the end of the stream.
        self.push = None;
        let mut ended = self.ended.clone();
        let _ = tokio::time::timeout(END_DRAIN, ended.wait_for(Option::is_some)).await;
        // (Let the end-of-stream chunk leave before the connections close.)
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.cancel.cancel();
        self.tasks.shutdown().await;
        self.node.shutdown().await;
    }
}

impl std::fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcaster")
            .field("stream", &self.ticket.borrow().name)
            .field("listen", &self.node.local_addr())
            .finish()
    }
}
