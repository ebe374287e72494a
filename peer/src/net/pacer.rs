//! Releases chunk bytes to QUIC at the rate the node's uplink controller allows (never above
//! `--upload-kbps`), newest chunk first across all neighbours, a few packets at a time: the
//! household router's queue holds little, and a chunk that waited never goes ahead of a
//! fresher one. While the controller probes what the uplink carries, the gaps are filled
//! with padding datagrams. Control messages do not come through here: they never wait.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stats::Stats;
use super::uplink::SharedUplink;

/// Bytes of a chunk released at once: four packets.
pub const PIECE: usize = 4 * 1200;
/// A padding datagram's size (within any path's MTU).
const PADDING: usize = 1200;
static ZEROS: [u8; PADDING] = [0; PADDING];
/// How long the pacer sleeps at most: the controller is polled at least this often.
const POLL: Duration = Duration::from_millis(20);
/// Unused allowance kept: this much time's worth at the current rate, so that after a quiet
/// spell the uplink gets no burst.
const BURST: Duration = Duration::from_millis(10);

pub struct Pacer {
    uplink: SharedUplink,
    nothing: bool,
    /// Chunks wait here for a rate (fixed by the mode and the cap; read without the lock).
    paced: bool,
    waiting: Mutex<Waiting>,
    wake: Notify,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Waiting {
    queue: BinaryHeap<Waiter>,
    order: u64,
    /// Where padding can go, in turn.
    conns: Vec<quinn::Connection>,
    turn: usize,
}

struct Waiter {
    /// Newest first, then first come.
    key: (u64, Reverse<u64>),
    bytes: usize,
    grant: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

impl Pacer {
    /// `allows_nothing`: `--upload-kbps 0`, watch without uploading any chunk.
    pub fn new(uplink: SharedUplink, allows_nothing: bool, stats: Arc<Stats>) -> Arc<Self> {
        let paced = uplink.lock().paces();
        Arc::new(Pacer {
            uplink,
            nothing: allows_nothing,
            paced,
            waiting: Mutex::new(Waiting::default()),
            wake: Notify::new(),
            stats,
        })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn allows_nothing(&self) -> bool {
        self.nothing
    }

    /// Whether chunks can wait here (so a chunk expiring in a link's queue may be our own
    /// pace, not the neighbour's slowness).
    /// The uplink controller it paces for.
    pub fn uplink(&self) -> &SharedUplink {
        &self.uplink
    }

    pub fn paces(&self) -> bool {
        self.nothing || self.paced
    }

    /// Waits until `bytes` of a chunk stamped `timestamp_us` may go out.
    pub async fn take(&self, bytes: usize, timestamp_us: u64) {
        if self.nothing {
            return std::future::pending().await;
        }
        if !self.paces() {
            self.uplink.lock().on_sent(bytes, false);
            return;
        }
        let (grant, granted) = oneshot::channel();
        {
            let mut w = self.waiting();
            w.order += 1;
            let key = (timestamp_us, Reverse(w.order));
            w.queue.push(Waiter { key, bytes, grant });
        }
        self.wake.notify_one();
        let _ = granted.await;
    }

    /// A connection padding may go to while the uplink is probed.
    pub fn add_connection(&self, conn: quinn::Connection) {
        let mut w = self.waiting();
        w.conns.retain(|c| c.close_reason().is_none());
        w.conns.push(conn);
    }

    /// Grants waiting chunks at the controller's rate until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut allowance = 0.0f64; // bytes
        let mut last = Instant::now();
        loop {
            let now = Instant::now();
            let (rate, probe) = {
                let mut u = self.uplink.lock();
                u.poll(now.into_std());
                (u.pacing_bps(), u.probe_bps())
            };
            let Some(rate) = rate.filter(|r| *r > 0.0) else {
                // Unpaced (a foreground node without a cap): whoever waits goes.
                self.grant_all();
                last = now;
                if self.idle(&cancel).await {
                    return;
                }
                continue;
            };
            let per_s = rate / 8.0;
            let most = (per_s * BURST.as_secs_f64()).max(PIECE as f64);
            allowance = (allowance + now.duration_since(last).as_secs_f64() * per_s).min(most);
            last = now;
            if allowance < 0.0 {
                let wait = Duration::from_secs_f64(-allowance / per_s).min(POLL);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            if let Some((bytes, held)) = self.grant_newest() {
                allowance -= bytes as f64;
                self.uplink.lock().on_sent(bytes, held);
            } else if probe > 0.0 && self.pad() {
                allowance -= PADDING as f64;
            } else if self.idle(&cancel).await {
                return;
            }
        }
    }

    /// Waits for a chunk, or the next poll; true once cancelled.
    async fn idle(&self, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => true,
            _ = self.wake.notified() => false,
            _ = tokio::time::sleep(POLL) => false,
        }
    }

    /// Lets the newest waiting chunk go: its size, and whether others still wait.
    fn grant_newest(&self) -> Option<(usize, bool)> {
        let mut w = self.waiting();
        while let Some(next) = w.queue.pop() {
            // A chunk whose deadline passed while it waited has gone away.
            if next.grant.send(()).is_ok() {
                return Some((next.bytes, !w.queue.is_empty()));
            }
        }
        None
    }

    fn grant_all(&self) {
        let mut w = self.waiting();
        let mut uplink = self.uplink.lock();
        while let Some(next) = w.queue.pop() {
            if next.grant.send(()).is_ok() {
                uplink.on_sent(next.bytes, false);
            }
        }
    }

    /// One padding datagram to the next neighbour in turn; false if there is none to take it.
    fn pad(&self) -> bool {
        let mut w = self.waiting();
        w.conns.retain(|c| c.close_reason().is_none());
        if w.conns.is_empty() {
            return false;
        }
        w.turn = (w.turn + 1) % w.conns.len();
        let conn = &w.conns[w.turn];
        let size = conn.max_datagram_size().unwrap_or(0).min(PADDING);
        if size == 0 || conn.send_datagram(Bytes::from_static(&ZEROS[..size])).is_err() {
            return false;
        }
        self.stats.padding_sent(size);
        true
    }
}
