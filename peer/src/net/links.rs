//! The node loop's links to its neighbours, and what it does with the core's actions on them:
//! control messages and chunks into each link's bounded queues, verified chunks to the local
//! player, dials, and hang-ups with the close code their reason carries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_core::Driver;
use shoal_core::state::{DisconnectReason, Verdict};
use shoal_proto::{Chunk, ChunkHeader, Message, NodeId, close};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::connect::Dialer;
use super::mailbox::LinkHandle;
use super::stats::Stats;
use crate::events::NodeEvent;

/// How long a lingering hang-up waits for what was queued to go out.
const LINGER: Duration = Duration::from_millis(300);

pub(super) struct Links {
    pub by_id: HashMap<NodeId, LinkHandle>,
    pub stats: Arc<Stats>,
    pub deliveries: Option<mpsc::Sender<Chunk>>,
    pub dialer: Dialer,
    /// Latency counts chunks emitted since this node started (not the back-fill on joining).
    pub started_us: u64,
    slow_warned: bool,
    /// Neighbours hung up on while carrying out actions: the core is told they are down.
    pub hung_up: Vec<NodeId>,
    pub events: broadcast::Sender<NodeEvent>,
}

impl Links {
    pub fn new(
        stats: Arc<Stats>,
        deliveries: Option<mpsc::Sender<Chunk>>,
        dialer: Dialer,
        events: broadcast::Sender<NodeEvent>,
    ) -> Self {
        Links {
            by_id: HashMap::new(),
            stats,
            deliveries,
            dialer,
            started_us: super::stats::now_us(),
            slow_warned: false,
            hung_up: Vec::new(),
            events,
        }
    }
}

impl Driver for Links {
    fn send(&mut self, to: NodeId, msg: Message) {
        match &msg {
            Message::Graft { .. } | Message::Prune { .. } => tracing::debug!(neighbour = %to.short(), ?msg, "tree"),
            Message::Request { ranges, .. } => {
                let chunks: u64 = ranges.iter().map(|r| u64::from(r.len)).sum();
                tracing::trace!(neighbour = %to.short(), chunks, first = ranges.first().map(|r| r.start), "request");
            }
            _ => {}
        }
        if let Some(link) = self.by_id.get(&to)
            && let Err(mpsc::error::TrySendError::Full(_)) = link.control.try_send(msg)
        {
            tracing::warn!(neighbour = %to.short(), "control queue full: dropping a slow neighbour");
            link.conn.close(close::SLOW.into(), b"too slow");
        }
    }

    fn push(&mut self, to: NodeId, chunk: Arc<Chunk>, deadline: std::time::Instant) {
        if let Some(link) = self.by_id.get(&to)
            && link.chunks.try_send((chunk, Instant::from_std(deadline))).is_err()
            && !self.slow_warned
        {
            self.slow_warned = true;
            tracing::warn!(neighbour = %to.short(), "chunk queue full: skipping chunks for a slow neighbour");
        }
    }

    fn deliver(&mut self, chunk: Arc<Chunk>) {
        if let Some(tx) = &self.deliveries
            && tx.try_send(Arc::unwrap_or_clone(chunk)).is_err()
        {
            tracing::warn!("the local player is not keeping up: a chunk was not delivered");
        }
    }

    fn judged(&mut self, from: NodeId, h: ChunkHeader, verdict: Verdict) {
        if verdict != Verdict::New || h.timestamp_us < self.started_us {
            return;
        }
        let ms = self.stats.chunk_latency(h.timestamp_us);
        if ms > 500.0 {
            tracing::debug!(seq = h.seq, from = %from.short(), ms, "late chunk");
        }
        self.stats.live_chunk(h.epoch, h.seq);
    }

    fn dial(&mut self, addr: SocketAddr) {
        self.dialer.dial(addr);
    }

    fn disconnect(&mut self, id: NodeId, reason: DisconnectReason, linger: bool) {
        let Some(link) = self.by_id.remove(&id) else {
            return;
        };
        let why = reason.as_str();
        tracing::info!(neighbour = %id.short(), reason = why, "disconnecting");
        let _ = self.events.send(NodeEvent::NeighbourDown {
            node_id: id,
            why: why.to_string(),
        });
        self.stats.closed(&link.stats);
        self.hung_up.push(id);
        let code = reason.close_code();
        if linger {
            tokio::spawn(async move {
                tokio::time::sleep(LINGER).await;
                link.conn.close(code.into(), why.as_bytes());
            });
        } else {
            link.conn.close(code.into(), why.as_bytes());
        }
    }
}
