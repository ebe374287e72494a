//! Making connections: dialling a peer the core asks for, and running a connection, dialled
//! or accepted, as a link until it ends.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use shoal_core::state::Event;
use shoal_proto::close;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::link::{self, Identity, Shared};
use super::mailbox::Input;

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the core loop needs to dial the peers the core asks for.
pub(super) struct Dialer {
    pub endpoint: quinn::Endpoint,
    pub identity: Identity,
    pub shared: Shared,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    /// The addresses given at start not reached yet: the first failure to reach each is
    /// worth a warning (the core keeps trying).
    pub unreachable: Arc<Mutex<HashSet<SocketAddr>>>,
}

impl Dialer {
    pub(super) fn dial(&self, addr: SocketAddr) {
        let (endpoint, identity, shared, cancel) = (
            self.endpoint.clone(),
            self.identity.clone(),
            self.shared.clone(),
            self.cancel.clone(),
        );
        let unreachable = self.unreachable.clone();
        self.tasks.spawn(async move {
            let failed = match dial(&endpoint, addr).await {
                Ok(conn) => {
                    lock(&unreachable).remove(&addr);
                    !run_link(conn, &identity, true, &shared, &cancel).await
                }
                Err(e) => {
                    if lock(&unreachable).remove(&addr) {
                        tracing::warn!(%addr, "cannot reach {addr}: {e:#} (retrying)");
                    } else {
                        tracing::debug!(%addr, "dial failed: {e:#}");
                    }
                    true
                }
            };
            if failed {
                let _ = shared.events.send(Input::Event(Event::DialFailed { addr })).await;
            }
        });
    }
}

async fn dial(endpoint: &quinn::Endpoint, addr: SocketAddr) -> anyhow::Result<quinn::Connection> {
    let connecting = endpoint.connect(addr, super::transport::SERVER_NAME)?;
    Ok(tokio::time::timeout(DIAL_TIMEOUT, connecting)
        .await
        .context("timed out")??)
}

/// Handshakes, registers the link with the core, and runs it until the connection ends;
/// false if it never became a link (the handshake failed, or it was ourselves).
pub(super) async fn run_link(
    conn: quinn::Connection,
    identity: &Identity,
    outbound: bool,
    shared: &Shared,
    cancel: &CancellationToken,
) -> bool {
    let remote = conn.remote_address();
    let (peer, send, recv, buf) = match link::handshake(&conn, identity, outbound).await {
        Ok(parts) => parts,
        Err(e) => {
            if let Some(lie) = e.downcast_ref::<link::ClaimedAnotherId>() {
                // Refused, not banned: a ban by the claimed ID would hit the real node.
                tracing::warn!(%remote, "refused a peer that {lie}");
                shared.stats.identity_refused();
            } else {
                tracing::warn!(%remote, "handshake failed: {e:#}");
                conn.close(close::PROTOCOL.into(), b"handshake");
            }
            return false;
        }
    };
    if peer.node_id == identity.node_id {
        conn.close(close::DUPLICATE.into(), b"self");
        return false;
    }
    let node_id = peer.node_id;
    let Some(mut tasks) = link::start(conn.clone(), &peer, outbound, send, recv, buf, shared).await else {
        return false;
    };
    tokio::select! {
        _ = conn.closed() => {}
        _ = cancel.cancelled() => {
            // Let the core's goodbye go out before the tasks stop.
            let _ = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
        }
    }
    tasks.abort_all();
    let why = conn
        .close_reason()
        .map_or_else(|| "shutting down".to_string(), |e| e.to_string());
    let _ = shared
        .events
        .send(Input::Unlinked {
            node_id,
            conn_id: conn.stable_id(),
            why,
        })
        .await;
    true
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave a set of addresses inconsistent in a way that matters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
