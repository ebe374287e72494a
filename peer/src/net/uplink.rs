//! The quinn side of the node's uplink controller (`shoal_core::uplink`): every connection's
//! congestion controller reports what QUIC measured — a round trip per acknowledged packet,
//! the bytes acknowledged, losses — to the one controller the node shares across its
//! connections, then does what BBR does for that connection's own window. The controller's
//! answer (the rate chunks are released at) is applied by the pacer, above QUIC.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;
use shoal_core::uplink::Uplink;

/// The node's uplink controller, shared by its connections and its pacer.
#[derive(Clone)]
pub struct SharedUplink(Arc<Mutex<Uplink>>);

impl SharedUplink {
    pub fn new(uplink: Uplink) -> Self {
        SharedUplink(Arc::new(Mutex::new(uplink)))
    }

    pub fn lock(&self) -> MutexGuard<'_, Uplink> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builds each connection's controller: BBR for its own window, reporting to the uplink.
pub struct Reporting {
    uplink: SharedUplink,
    bbr: Arc<BbrConfig>,
    next_path: AtomicU64,
}

impl Reporting {
    pub fn factory(uplink: SharedUplink) -> Arc<Self> {
        Arc::new(Reporting {
            uplink,
            bbr: Arc::new(BbrConfig::default()),
            next_path: AtomicU64::new(1),
        })
    }
}

impl ControllerFactory for Reporting {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Path {
            inner: self.bbr.clone().build(now, current_mtu),
            path: self.next_path.fetch_add(1, Relaxed),
            uplink: self.uplink.clone(),
            copies: Arc::new(()),
        })
    }
}

/// One connection's controller.
struct Path {
    inner: Box<dyn Controller>,
    path: u64,
    uplink: SharedUplink,
    /// Shared by the copies of this controller (quinn copies it when the path migrates, and
    /// `path_of` reads a copy): the last one dropped ends the path.
    copies: Arc<()>,
}

impl Drop for Path {
    fn drop(&mut self) {
        if Arc::strong_count(&self.copies) == 1 {
            self.uplink.lock().forget(self.path);
        }
    }
}

/// The uplink controller's ID for `conn`'s path, if its congestion controller reports to one.
pub fn path_of(conn: &quinn::Connection) -> Option<u64> {
    let copy = conn.congestion_state().into_any().downcast::<Path>().ok()?;
    Some(copy.path)
}

impl Controller for Path {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
        // The round trip of this very packet: send to acknowledgement.
        let mut uplink = self.uplink.lock();
        uplink.on_rtt(self.path, now.saturating_duration_since(sent), now);
        uplink.on_acked(self.path, bytes, sent);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_acked: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.uplink.lock().on_lost(self.path, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Path {
            inner: self.inner.clone_box(),
            path: self.path,
            uplink: self.uplink.clone(),
            copies: self.copies.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}
