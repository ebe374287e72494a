//! A hostile neighbour for tests: it joins a real peer over QUIC like any viewer, records a
//! few real chunks, and then misbehaves in one chosen way per connection, each under a node
//! key of its own (proven in the handshake), so every attack can be checked to end in its own
//! ban. It also tries to pass for other nodes, claiming IDs whose keys it does not hold.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use ed25519_dalek::SigningKey;
use shoal_peer::net::link::{self, Identity};
use shoal_proto::chunk::MAX_CHUNK_WIRE;
use shoal_proto::close;
use shoal_proto::message::SeqRange;
use shoal_proto::{Chunk, Message, NodeId, Ticket};
use tokio::time::{Instant, timeout};

/// Ways to misbehave. Each names the reject counter (`chunks.rejected.<counter>` in the
/// target's stats) it must raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Real chunks with a payload byte flipped.
    ForgedSignature,
    /// Real chunks, unaltered, claimed under other sequence numbers.
    ReplayedUnderOtherSeq,
    /// Real chunks claimed under the previous epoch.
    ReplayedUnderOldEpoch,
    /// Well-formed chunks signed by another stream's key.
    OtherStreamsKey,
    /// Real chunks from before the target's window, sent again and again.
    OutsideTheWindow,
    /// A chunk stream longer than any chunk may be.
    OversizedChunk,
    /// The first half of a real chunk.
    TruncatedChunk,
    /// Bytes that are no chunk at all.
    GarbageChunk,
    /// A control frame whose header claims a megabyte.
    OversizedFrame,
    /// Half a control frame, then the end of the stream.
    TruncatedFrame,
    /// A control frame with a known type and nonsense inside.
    GarbageFrame,
    /// HAVE after HAVE, as fast as the connection carries them.
    HaveFlood,
    /// HAVE naming chunks far beyond the live edge.
    FalseHave,
    /// REQUEST after REQUEST for the whole window, never reading what comes back.
    RequestFlood,
}

impl Attack {
    pub const ALL: [Attack; 14] = [
        Attack::ForgedSignature,
        Attack::ReplayedUnderOtherSeq,
        Attack::ReplayedUnderOldEpoch,
        Attack::OtherStreamsKey,
        Attack::OversizedChunk,
        Attack::TruncatedChunk,
        Attack::GarbageChunk,
        Attack::OversizedFrame,
        Attack::TruncatedFrame,
        Attack::GarbageFrame,
        Attack::HaveFlood,
        Attack::FalseHave,
        Attack::RequestFlood,
        // Last: what was recorded on joining must have left the target's window.
        Attack::OutsideTheWindow,
    ];

    pub fn counter(self) -> &'static str {
        match self {
            Attack::ForgedSignature
            | Attack::ReplayedUnderOtherSeq
            | Attack::ReplayedUnderOldEpoch
            | Attack::OtherStreamsKey => "bad_signature",
            Attack::OutsideTheWindow => "stale",
            Attack::OversizedChunk | Attack::OversizedFrame => "oversized",
            Attack::TruncatedChunk | Attack::GarbageChunk => "malformed",
            Attack::TruncatedFrame | Attack::GarbageFrame => "protocol",
            Attack::HaveFlood => "control_flood",
            Attack::FalseHave => "false_have",
            Attack::RequestFlood => "request_flood",
        }
    }
}

pub struct Outcome {
    /// Streams or messages written before the target hung up.
    pub sent: usize,
    /// How the target ended the connection (QUIC application close code), if it did.
    pub closed_with: Option<u64>,
    /// The target reset the connection instead (a stateless reset: it had closed it, and its
    /// CONNECTION_CLOSE was lost among a flood of packets this side never read).
    pub reset: bool,
    /// How the connection ended, in words (for failure messages).
    pub ended: String,
}

impl Outcome {
    /// Waits up to `linger` for the target to end `conn`, after `sent` streams or messages.
    async fn after(conn: &quinn::Connection, sent: usize, linger: Duration) -> Outcome {
        let (closed_with, reset, ended) = how_it_ended(conn, linger).await;
        Outcome {
            sent,
            closed_with,
            reset,
            ended,
        }
    }
}

/// Writes each of `streams` on a chunk stream of its own; how many went out before the
/// target stopped taking them.
async fn push_streams(conn: &quinn::Connection, streams: Vec<Bytes>) -> usize {
    let mut sent = 0;
    for bytes in streams {
        let Ok(mut send) = conn.open_uni().await else { break };
        if send.write_all(&bytes).await.is_err() || send.finish().is_err() {
            break;
        }
        sent += 1;
    }
    sent
}

/// What an honest viewer got.
pub struct Watched {
    /// Chunks the target pushed.
    pub received: usize,
    /// How the target ended the connection, if it did.
    pub closed_with: Option<u64>,
}

struct Control {
    send: quinn::SendStream,
    _recv: quinn::RecvStream,
}

pub struct Adversary {
    ticket: Ticket,
    target: SocketAddr,
    endpoint: quinn::Endpoint,
    /// Real chunks, in the order they came, recorded when the adversary joined.
    recorded: Vec<Chunk>,
}

/// A node key of the adversary's own making (tests give each attack its own).
pub fn node_key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[0xb0 ^ n; 32])
}

/// The node ID `node_key(n)` proves.
pub fn node_id(n: u8) -> NodeId {
    NodeId(node_key(n).verifying_key().to_bytes())
}

impl Adversary {
    /// Joins `target` as an ordinary viewer would and records `chunks` real chunks, giving
    /// up after `within`.
    pub async fn join(
        ticket: &Ticket,
        target: SocketAddr,
        chunks: usize,
        within: Duration,
    ) -> anyhow::Result<Adversary> {
        let endpoint =
            shoal_peer::net::transport::endpoint("127.0.0.1:0".parse()?, &Default::default(), &node_key(0xff))?;
        let mut adversary = Adversary {
            ticket: ticket.clone(),
            target,
            endpoint,
            recorded: Vec::new(),
        };
        let (conn, mut control) = adversary.connect(&node_key(0xff), node_id(0xff)).await?;
        let deadline = Instant::now() + within;
        let status = viewer_hello();
        let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = heartbeat.tick() => control.send.write_all(&status).await?,
                accepted = conn.accept_uni() => {
                    let mut recv = accepted.context("the target hung up while we recorded")?;
                    if let Ok(bytes) = recv.read_to_end(MAX_CHUNK_WIRE).await
                        && let Ok(chunk) = Chunk::decode(&mut Bytes::from(bytes))
                    {
                        adversary.recorded.push(chunk);
                    }
                    if adversary.recorded.len() >= chunks {
                        break;
                    }
                }
            }
        }
        conn.close(close::GOODBYE.into(), b"");
        anyhow::ensure!(
            adversary.recorded.len() >= chunks,
            "the target sent only {} chunks in {within:?}",
            adversary.recorded.len()
        );
        Ok(adversary)
    }

    pub fn recorded(&self) -> &[Chunk] {
        &self.recorded
    }

    /// Connects proving `key`, and handshakes claiming `claim`; the control stream's halves
    /// are kept open (a dropped receive half would tell the target to stop sending).
    async fn connect(&self, key: &SigningKey, claim: NodeId) -> anyhow::Result<(quinn::Connection, Control)> {
        let conn = self.dial(key).await?;
        let control = self.handshake(&conn, claim).await?;
        Ok((conn, control))
    }

    /// A QUIC connection to the target in which this adversary proves `key`.
    async fn dial(&self, key: &SigningKey) -> anyhow::Result<quinn::Connection> {
        let config = shoal_peer::net::transport::client_config(key, &Default::default())?;
        self.endpoint
            .connect_with(config, self.target, shoal_peer::net::transport::SERVER_NAME)?
            .await
            .context("connecting to the target peer")
    }

    async fn handshake(&self, conn: &quinn::Connection, node_id: NodeId) -> anyhow::Result<Control> {
        let me = Identity {
            node_id,
            stream_key: self.ticket.stream_key,
            listen: tokio::sync::watch::channel(vec![]).1,
        };
        let (_peer, send, recv, _buf) = link::handshake(conn, &me, true).await?;
        Ok(Control { send, _recv: recv })
    }

    /// Connects as the holder of `key`, carries out `attack`, and waits up to `linger` for the
    /// target to hang up.
    pub async fn attack(&self, attack: Attack, key: &SigningKey, linger: Duration) -> anyhow::Result<Outcome> {
        let (conn, mut control) = self.connect(key, own_id(key)).await?;
        let newest = self.recorded.last().context("nothing recorded")?;
        let mut sent = 0;
        match attack {
            Attack::ForgedSignature
            | Attack::ReplayedUnderOtherSeq
            | Attack::ReplayedUnderOldEpoch
            | Attack::OtherStreamsKey
            | Attack::OutsideTheWindow
            | Attack::OversizedChunk
            | Attack::TruncatedChunk
            | Attack::GarbageChunk => {
                sent = push_streams(&conn, self.chunk_streams(attack)).await;
            }
            Attack::OversizedFrame | Attack::TruncatedFrame | Attack::GarbageFrame => {
                let mut frame = BytesMut::new();
                match attack {
                    Attack::OversizedFrame => {
                        frame.put_u8(2);
                        frame.put_u32(1 << 20);
                        frame.put_bytes(0, 64 * 1024);
                    }
                    Attack::TruncatedFrame => {
                        let have = Message::Have {
                            epoch: newest.header.epoch,
                            ranges: vec![SeqRange { start: 0, len: 1 }; 8],
                        };
                        let whole = have.to_frame();
                        frame.extend_from_slice(&whole[..whole.len() / 2]);
                    }
                    _ => {
                        frame.put_u8(1); // HELLO's type, with a body that is none
                        frame.put_u32(24);
                        frame.put_slice(b"\x00\x01this is not a hello");
                    }
                }
                if control.send.write_all(&frame).await.is_ok() {
                    sent += 1;
                }
                let _ = control.send.finish();
            }
            Attack::HaveFlood | Attack::FalseHave | Attack::RequestFlood => {
                let epoch = newest.header.epoch;
                let (msg, count) = match attack {
                    Attack::HaveFlood => (
                        Message::Have {
                            epoch,
                            ranges: vec![SeqRange {
                                start: newest.header.seq,
                                len: 1,
                            }],
                        },
                        5000,
                    ),
                    Attack::FalseHave => (
                        Message::Have {
                            epoch,
                            ranges: vec![SeqRange {
                                start: newest.header.seq + 1_000_000,
                                len: 64,
                            }],
                        },
                        1,
                    ),
                    _ => (
                        Message::Request {
                            epoch,
                            ranges: vec![SeqRange {
                                start: newest.header.seq.saturating_sub(900),
                                len: 1000,
                            }],
                        },
                        100,
                    ),
                };
                let frame = msg.to_frame();
                for _ in 0..count {
                    if control.send.write_all(&frame).await.is_err() {
                        break;
                    }
                    sent += 1;
                }
            }
        }
        Ok(Outcome::after(&conn, sent, linger).await)
    }

    /// What goes on each chunk stream of a chunk attack.
    fn chunk_streams(&self, attack: Attack) -> Vec<Bytes> {
        let newest = self.recorded.last().expect("recorded chunks").clone();
        let altered = |change: &dyn Fn(&mut Chunk, u64)| -> Vec<Bytes> {
            (0..5)
                .map(|i| {
                    let mut c = newest.clone();
                    change(&mut c, i);
                    c.to_bytes()
                })
                .collect()
        };
        match attack {
            Attack::ForgedSignature => altered(&|c, i| {
                // About two seconds ahead: the real chunk of that seq does not exist yet.
                c.header.seq += 60 + i;
                let mut payload = c.payload.to_vec();
                if let Some(byte) = payload.get_mut(100) {
                    *byte ^= 0x55;
                }
                c.payload = Bytes::from(payload);
            }),
            Attack::ReplayedUnderOtherSeq => altered(&|c, i| c.header.seq += 60 + i),
            Attack::ReplayedUnderOldEpoch => altered(&|c, _| c.header.epoch = c.header.epoch.wrapping_sub(1)),
            Attack::OtherStreamsKey => {
                let other = SigningKey::from_bytes(&[7; 32]);
                (0..5)
                    .filter_map(|i| {
                        let mut header = newest.header;
                        header.seq += 60 + i;
                        Chunk::sign(header, newest.payload.clone(), &other).ok()
                    })
                    .map(|c| c.to_bytes())
                    .collect()
            }
            Attack::OutsideTheWindow => self.recorded.iter().map(Chunk::to_bytes).collect(),
            Attack::OversizedChunk => vec![Bytes::from(vec![0x47; MAX_CHUNK_WIRE + 4096])],
            Attack::TruncatedChunk => {
                let whole = newest.to_bytes();
                vec![whole.slice(..whole.len() / 2)]
            }
            Attack::GarbageChunk => vec![Bytes::from_static(b"GET / HTTP/1.1\r\nHost: shoal\r\n\r\n")],
            _ => Vec::new(),
        }
    }

    /// Connects as the holder of `key`, asks for every stripe and keeps saying STATUS, but
    /// never reads a chunk: a child the target cannot feed. Waits up to `linger` for it to
    /// hang up.
    pub async fn never_read(&self, key: &SigningKey, linger: Duration) -> anyhow::Result<Outcome> {
        let (conn, mut control) = self.connect(key, own_id(key)).await?;
        let hello = viewer_hello();
        let deadline = Instant::now() + linger;
        let mut sent = 0;
        while Instant::now() < deadline && conn.close_reason().is_none() {
            if control.send.write_all(&hello).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(Outcome::after(&conn, sent, Duration::from_secs(1)).await)
    }

    /// Connects again as the holder of `key` and tells whether the target hangs up at once,
    /// saying it is banned.
    pub async fn is_turned_away(&self, key: &SigningKey) -> anyhow::Result<bool> {
        let conn = self.dial(key).await?;
        // The target may hang up before or after our HELLO exchange finishes.
        let _control = self.handshake(&conn, own_id(key)).await;
        Ok(closed_with(&conn, Duration::from_secs(3)).await == Some(u64::from(close::BANNED)))
    }

    /// Proves `key` but claims to be `claim` in HELLO, then pushes a forged chunk as that
    /// node would be blamed for; waits up to `linger` for the target to hang up.
    pub async fn impersonate(&self, key: &SigningKey, claim: NodeId, linger: Duration) -> anyhow::Result<Outcome> {
        let conn = self.dial(key).await?;
        // The target may hang up before or after our HELLO exchange finishes.
        let _control = self.handshake(&conn, claim).await;
        let sent = push_streams(&conn, self.chunk_streams(Attack::ForgedSignature)).await;
        Ok(Outcome::after(&conn, sent, linger).await)
    }

    /// Connects as an honest viewer holding `key` (claiming its own ID) and counts the chunks
    /// the target pushes within `within`; `closed_with` says if it hung up meanwhile.
    pub async fn watch(&self, key: &SigningKey, within: Duration) -> anyhow::Result<Watched> {
        let (conn, mut control) = self.connect(key, own_id(key)).await?;
        let deadline = Instant::now() + within;
        let status = viewer_hello();
        let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
        let mut received = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = heartbeat.tick() => {
                    if control.send.write_all(&status).await.is_err() {
                        break;
                    }
                }
                accepted = conn.accept_uni() => {
                    let Ok(mut recv) = accepted else { break };
                    if recv.read_to_end(MAX_CHUNK_WIRE).await.is_ok() {
                        received += 1;
                    }
                }
            }
        }
        let closed_with = conn.close_reason().and_then(|reason| match reason {
            quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
            _ => None,
        });
        conn.close(close::GOODBYE.into(), b"");
        Ok(Watched { received, closed_with })
    }

    /// Opens `count` QUIC connections to the target, `batch` at a time, sending nothing on
    /// them; returns how many the target refused.
    pub async fn connection_flood(&self, count: usize, batch: usize) -> usize {
        let mut refused = 0;
        for _ in 0..count.div_ceil(batch) {
            let attempts: Vec<_> = (0..batch)
                .filter_map(|_| {
                    self.endpoint
                        .connect(self.target, shoal_peer::net::transport::SERVER_NAME)
                        .ok()
                })
                .map(|connecting| timeout(Duration::from_secs(2), connecting))
                .collect();
            let mut open = Vec::new();
            for attempt in attempts {
                match attempt.await {
                    Ok(Ok(conn)) => open.push(conn),
                    _ => refused += 1,
                }
            }
            for conn in open {
                conn.close(0u32.into(), b"");
            }
        }
        refused
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"");
    }
}

fn own_id(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

/// What a viewer says every half second: its STATUS (every neighbour must say something, or
/// be dropped as silent) and a GRAFT for every stripe (again and again: the target may not
/// have the stream yet).
fn viewer_hello() -> BytesMut {
    let stripes = shoal_peer::state::Config::default().stripes;
    let mut frames = Message::Status {
        depths: vec![shoal_proto::message::NO_DEPTH; usize::from(stripes)],
        children: vec![0; usize::from(stripes)],
        upload_kbps: 0,
        free_slots: 0,
        stream_kbps: 0,
        epoch: 0,
        segment_start: None,
    }
    .to_frame();
    for stripe in 0..stripes {
        frames.extend_from_slice(&Message::Graft { stripe }.to_frame());
    }
    frames
}

async fn closed_with(conn: &quinn::Connection, linger: Duration) -> Option<u64> {
    how_it_ended(conn, linger).await.0
}

/// The application close code the target ended the connection with, whether it reset it, and
/// how it ended in words.
async fn how_it_ended(conn: &quinn::Connection, linger: Duration) -> (Option<u64>, bool, String) {
    match timeout(linger, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            (Some(close.error_code.into_inner()), false, format!("closed: {close}"))
        }
        Ok(quinn::ConnectionError::Reset) => (None, true, "reset".into()),
        Ok(other) => (None, false, other.to_string()),
        Err(_) => (None, false, format!("still open after {linger:?}")),
    }
}
