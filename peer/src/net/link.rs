//! One QUIC connection to a neighbour, whichever side dialed: the HELLO exchange, then the
//! control stream both ways, one unidirectional stream per chunk both ways (newest first,
//! verified before it reaches the core), until the connection closes.

use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use ed25519_dalek::VerifyingKey;
use shoal_proto::chunk::{HEADER_LEN, MAX_CHUNK_WIRE};
use shoal_proto::message::MAX_FRAME;
use shoal_proto::{Chunk, DecodeError, Message, NodeId, PROTOCOL_VERSION, close};
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use shoal_core::limits::Limits;
use shoal_core::state::{Event, Reject};

use super::mailbox::{Input, LinkHandle};
use super::pacer::{PIECE, Pacer};
use super::stamps::{self, Stamps};
use super::stats::{Kind, Link as LinkStats, Stats};

/// Chunk streams written to one neighbour at once; priorities order them inside QUIC.
const STREAMS_IN_FLIGHT: usize = 32;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunks in a row a neighbour let expire (none taken in between) before it is dropped as
/// too slow: a few seconds of stream.
const SLOW_AFTER_EXPIRED: usize = 64;
/// Control messages of unknown types skipped on one link before it counts as garbage.
const MAX_UNKNOWN_MESSAGES: usize = 256;

/// What this node says about itself in HELLO.
#[derive(Clone)]
pub struct Identity {
    pub node_id: NodeId,
    pub stream_key: VerifyingKey,
    /// Where this node accepts connections; grows when the router maps a port to it.
    pub listen: tokio::sync::watch::Receiver<Vec<SocketAddr>>,
}

/// The neighbour's side of a finished handshake.
pub struct Peer {
    pub node_id: NodeId,
    pub listen: Vec<SocketAddr>,
    pub observed: Option<SocketAddr>,
}

/// Exchanges HELLOs on the control stream: the dialer opens it and speaks first.
pub async fn handshake(
    conn: &quinn::Connection,
    me: &Identity,
    outbound: bool,
) -> anyhow::Result<(Peer, quinn::SendStream, quinn::RecvStream, BytesMut)> {
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        node_id: me.node_id,
        stream_key: me.stream_key.to_bytes(),
        listen: me.listen.borrow().clone(),
        observed: Some(conn.remote_address()),
    };
    let exchange = async {
        let (mut send, mut recv) = if outbound {
            conn.open_bi().await?
        } else {
            conn.accept_bi().await?
        };
        send.write_all(&hello.to_frame()).await?;
        let mut buf = BytesMut::new();
        let (theirs, _) = read_message(&mut recv, &mut buf)
            .await?
            .context("closed before HELLO")?;
        anyhow::Ok((theirs, send, recv, buf))
    };
    let (theirs, send, recv, buf) = tokio::time::timeout(HELLO_TIMEOUT, exchange)
        .await
        .context("no HELLO in time")??;
    let Message::Hello {
        version,
        node_id,
        stream_key,
        listen,
        observed,
    } = theirs
    else {
        bail!("first message was {}, not HELLO", theirs.kind());
    };
    if version != PROTOCOL_VERSION {
        conn.close(close::PROTOCOL.into(), b"protocol version");
        bail!("speaks protocol version {version}, we speak {PROTOCOL_VERSION}");
    }
    if stream_key != me.stream_key.to_bytes() {
        conn.close(close::STREAM_MISMATCH.into(), b"another stream");
        bail!("serves another stream");
    }
    // Who it is, is the key it proved; what it says is only checked against that.
    let proven = super::transport::peer_node_id(conn).context("proved no node key")?;
    if node_id != proven {
        conn.close(close::IDENTITY.into(), b"node ID not proven");
        return Err(ClaimedAnotherId {
            claimed: node_id,
            proven,
        }
        .into());
    }
    Ok((
        Peer {
            node_id,
            listen,
            observed,
        },
        send,
        recv,
        buf,
    ))
}

/// A HELLO claimed a node ID other than the key its sender proved in the handshake.
#[derive(Debug, thiserror::Error)]
#[error("claims node ID {} but proved {}", claimed.short(), proven.short())]
pub struct ClaimedAnotherId {
    pub claimed: NodeId,
    pub proven: NodeId,
}

/// Reads one control frame and its length; `Ok(None)` at a clean end of stream.
async fn read_message(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> anyhow::Result<Option<(Message, usize)>> {
    loop {
        if let Some(len) = Message::frame_len(buf)? {
            let frame = buf.split_to(len);
            return Ok(Some((Message::decode_frame(&frame)?, len)));
        }
        buf.reserve(4096.min(MAX_FRAME));
        if recv.read_buf(buf).await? == 0 {
            if !buf.is_empty() {
                // The stream ended inside a frame.
                return Err(DecodeError::Short.into());
            }
            return Ok(None);
        }
    }
}

/// Everything a link's tasks share with the node.
#[derive(Clone)]
pub struct Shared {
    pub stream_key: VerifyingKey,
    pub events: mpsc::Sender<Input>,
    pub stats: Arc<Stats>,
    pub pacer: Arc<Pacer>,
    pub limits: Limits,
}

/// Hands the link to the node loop, then starts its tasks: the node learns of the
/// neighbour before anything it says can arrive. The tasks end when the connection does (the
/// returned `JoinSet` owns them); `None` if the node has stopped.
pub async fn start(
    conn: quinn::Connection,
    peer: &Peer,
    outbound: bool,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    shared: &Shared,
) -> Option<JoinSet<()>> {
    let stats = shared.stats.link(peer.node_id, &conn);
    let (control_tx, control_rx) = mpsc::channel(shared.limits.control_queue);
    let (chunk_tx, chunk_rx) = mpsc::channel(shared.limits.chunk_queue);
    let handle = LinkHandle {
        node_id: peer.node_id,
        listen: peer.listen.clone(),
        observed: peer.observed,
        outbound,
        conn: conn.clone(),
        control: control_tx,
        chunks: chunk_tx,
        stats: stats.clone(),
    };
    shared.events.send(Input::Linked(handle)).await.ok()?;
    shared.pacer.add_connection(conn.clone());
    let mut tasks = JoinSet::new();
    let stamps = Arc::new(Stamps::default());
    let uplink = shared.pacer.uplink().clone();
    tasks.spawn(stamps::serve(conn.clone(), uplink, stamps.clone()));
    tasks.spawn(read_control(peer.node_id, recv, buf, shared.clone(), stats.clone()));
    tasks.spawn(write_control(send, control_rx, shared.clone(), stats.clone()));
    tasks.spawn(read_chunks(peer.node_id, conn.clone(), shared.clone(), stats.clone()));
    tasks.spawn(write_chunks(conn, stamps, chunk_rx, shared.clone(), stats));
    Some(tasks)
}

async fn to_core(shared: &Shared, event: Event) {
    let _ = shared.events.send(Input::Event(event)).await;
}

async fn read_control(
    from: NodeId,
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
    shared: Shared,
    stats: Arc<LinkStats>,
) {
    let mut unknown = 0;
    loop {
        let error = match read_message(&mut recv, &mut buf).await {
            Ok(Some((msg, len))) => {
                shared.stats.received(Some(&stats), Kind::Control, len);
                if matches!(msg, Message::Graft { .. } | Message::Prune { .. }) {
                    tracing::debug!(neighbour = %from.short(), ?msg, "tree from");
                }
                to_core(&shared, Event::Control { from, msg }).await;
                continue;
            }
            Ok(None) => return,
            Err(e) => e,
        };
        let reason = match error.downcast_ref::<DecodeError>() {
            // A newer peer's message: skip it and keep the link, within reason.
            Some(DecodeError::UnknownMessage(_)) if unknown < MAX_UNKNOWN_MESSAGES => {
                unknown += 1;
                continue;
            }
            Some(DecodeError::TooLong { .. }) => Reject::Oversized,
            Some(_) => Reject::Protocol,
            None => return, // the connection went away
        };
        tracing::debug!(neighbour = %from.short(), "bad control frame: {error}");
        to_core(&shared, Event::Rejected { from, reason }).await;
        return;
    }
}

async fn write_control(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Message>,
    shared: Shared,
    stats: Arc<LinkStats>,
) {
    let mut buf = BytesMut::new();
    while let Some(msg) = rx.recv().await {
        msg.encode_frame(&mut buf);
        // Batch whatever else is queued into the same write.
        while let Ok(more) = rx.try_recv() {
            more.encode_frame(&mut buf);
        }
        let frame = buf.split().freeze();
        shared.stats.sent(Some(&stats), Kind::Control, frame.len());
        if send.write_chunk(frame).await.is_err() {
            return;
        }
    }
}

async fn read_chunks(from: NodeId, conn: quinn::Connection, shared: Shared, stats: Arc<LinkStats>) {
    let mut readers = JoinSet::new();
    while let Ok(mut recv) = conn.accept_uni().await {
        while readers.try_join_next().is_some() {}
        let (shared, stats) = (shared.clone(), stats.clone());
        readers.spawn(async move {
            let event = match recv.read_to_end(MAX_CHUNK_WIRE).await {
                Ok(bytes) => {
                    shared.stats.received(Some(&stats), Kind::Data, bytes.len());
                    verify(from, Bytes::from(bytes), &shared.stream_key)
                }
                Err(quinn::ReadToEndError::TooLong) => Some(Event::Rejected {
                    from,
                    reason: Reject::Oversized,
                }),
                // Reset by the sender (deadline passed) or connection gone: nothing to judge.
                Err(_) => None,
            };
            if let Some(event) = event {
                to_core(&shared, event).await;
            }
        });
    }
}

/// Decodes and verifies one chunk stream's bytes: only a verified chunk reaches the core.
fn verify(from: NodeId, mut bytes: Bytes, stream_key: &VerifyingKey) -> Option<Event> {
    let reason = match Chunk::decode(&mut bytes) {
        Ok(chunk) if bytes.is_empty() => match chunk.verify(stream_key) {
            Ok(()) => {
                return Some(Event::Chunk {
                    from,
                    chunk: Arc::new(chunk),
                });
            }
            Err(_) => Reject::BadSignature,
        },
        Ok(_) => Reject::Malformed,
        Err(DecodeError::TooLong { .. }) => Reject::Oversized,
        Err(_) => Reject::Malformed,
    };
    Some(Event::Rejected { from, reason })
}

/// A queued chunk, ordered newest first.
struct Queued(Arc<Chunk>, Instant);

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.0.header.seq == other.0.header.seq
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.header.timestamp_us, self.0.header.seq).cmp(&(other.0.header.timestamp_us, other.0.header.seq))
    }
}

async fn write_chunks(
    conn: quinn::Connection,
    stamps: Arc<Stamps>,
    mut rx: mpsc::Receiver<(Arc<Chunk>, Instant)>,
    shared: Shared,
    stats: Arc<LinkStats>,
) {
    let slots = Arc::new(Semaphore::new(STREAMS_IN_FLIGHT));
    let mut queue = BinaryHeap::new();
    let mut writers = JoinSet::new();
    // Chunks that missed their deadline since one last went out whole.
    let expired_in_row = Arc::new(AtomicUsize::new(0));
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some((chunk, deadline)) => queue.push(Queued(chunk, deadline)),
                None => return,
            }
        }
        while let Ok((chunk, deadline)) = rx.try_recv() {
            queue.push(Queued(chunk, deadline));
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Newest first: whatever arrived while we waited for a slot is considered too.
        while let Ok((chunk, deadline)) = rx.try_recv() {
            queue.push(Queued(chunk, deadline));
        }
        let now = Instant::now();
        if queue.len() > shared.limits.chunk_queue {
            let before = queue.len();
            queue.retain(|q| q.1 > now);
            shared.stats.expired(before - queue.len());
            if !shared.pacer.paces() {
                expired_in_row.fetch_add(before - queue.len(), Relaxed);
            }
        }
        // A neighbour that takes nothing in time, or lets more than the queue's worth of
        // live chunks pile up, cannot be fed: drop it (it may come back, or find others).
        if expired_in_row.load(Relaxed) >= SLOW_AFTER_EXPIRED || queue.len() > shared.limits.chunk_queue {
            tracing::info!(neighbour = %stats.node_id.short(), "dropping a neighbour that does not take its chunks");
            shared.stats.slow_dropped();
            conn.close(close::SLOW.into(), b"too slow");
            return;
        }
        let Some(Queued(chunk, deadline)) = queue.pop() else {
            continue;
        };
        if shared.pacer.allows_nothing() {
            continue; // this node uploads no chunks at all
        }
        if now >= deadline {
            // Behind its deadline in our queue: the neighbour's slowness, unless our own
            // pace held it back.
            shared.stats.expired(1);
            if !shared.pacer.paces() {
                expired_in_row.fetch_add(1, Relaxed);
            }
            continue;
        }
        while writers.try_join_next().is_some() {}
        let (conn, shared, stats, expired_in_row, stamps) = (
            conn.clone(),
            shared.clone(),
            stats.clone(),
            expired_in_row.clone(),
            stamps.clone(),
        );
        writers.spawn(async move {
            let _slot = slot;
            let len = chunk.encoded_len();
            let stamp = chunk.header.timestamp_us;
            // Opening the stream waits for the neighbour's stream credit: the deadline covers it.
            let mut send = match tokio::time::timeout_at(deadline, conn.open_uni()).await {
                Ok(Ok(send)) => send,
                Ok(Err(_)) => return, // the connection went away
                Err(_) => {
                    shared.stats.expired(1);
                    expired_in_row.fetch_add(1, Relaxed);
                    return;
                }
            };
            // Newer chunks get higher priority; i32 wraps only after years of chunks.
            let _ = send.set_priority((chunk.header.seq & 0x7fff_ffff) as i32);
            let header = Bytes::copy_from_slice(&chunk.header.to_bytes()[..HEADER_LEN]);
            let sig = Bytes::copy_from_slice(&chunk.signature);
            // Waiting for our own uplink's pace is not the neighbour's slowness.
            let pacing = AtomicBool::new(false);
            let write = async {
                // A few packets at a time, as the uplink's pace lets them out.
                for mut part in [header, chunk.payload.clone(), sig] {
                    while !part.is_empty() {
                        let piece = part.split_to(part.len().min(PIECE));
                        pacing.store(true, Relaxed);
                        shared.pacer.take(piece.len(), stamp).await;
                        pacing.store(false, Relaxed);
                        send.write_chunk(piece).await?;
                        stamps.after_piece(&conn);
                    }
                }
                anyhow::Ok(())
            };
            match tokio::time::timeout_at(deadline, write).await {
                Ok(Ok(())) => {
                    let _ = send.finish();
                    expired_in_row.store(0, Relaxed);
                    shared.stats.sent(Some(&stats), Kind::Data, len);
                }
                Ok(Err(_)) => {} // the connection went away
                Err(_) => {
                    // Not sent whole in time: the neighbour must not read half a chunk.
                    let _ = send.reset(close::EXPIRED.into());
                    shared.stats.expired(1);
                    if !pacing.load(Relaxed) {
                        expired_in_row.fetch_add(1, Relaxed);
                    }
                }
            }
        });
    }
}
