//! Port mapping: asks the router in front of this node (PCP, NAT-PMP or UPnP-IGD, whichever
//! it answers) to forward a public port to the node's UDP socket, so peers anywhere can dial
//! it rather than only the ones it dials. The `portmapper` crate speaks the three protocols
//! and renews the mapping; this task tells the node what the router gave.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use super::observed::Mapping;

/// How often to ask again when the router offered no mapping (it may be switched on later,
/// or the laptop may move to another network).
const RETRY: Duration = Duration::from_secs(300);
/// Time given to the router to drop the mapping at shutdown.
const RELEASE: Duration = Duration::from_millis(300);

/// Whether a node listening on `local` could have a port mapped to it: IPv4 (the protocols
/// map IPv4), not loopback (nothing outside could use it; tests bind there).
pub fn applies(local: SocketAddr) -> bool {
    match local.ip() {
        IpAddr::V4(ip) => !ip.is_loopback(),
        IpAddr::V6(_) => false,
    }
}

/// Keeps a mapping to `local`'s port for as long as `cancel` is not cancelled, and releases
/// it then.
pub async fn run<T: From<Option<Mapping>>>(local: SocketAddr, inputs: mpsc::Sender<T>, cancel: CancellationToken) {
    let Some(port) = NonZeroU16::new(local.port()) else {
        return;
    };
    let client = portmapper::Client::new(portmapper::Config::default());
    let mut external = client.watch_external_address();
    let mut protocol = None;
    loop {
        if protocol.is_none() {
            protocol = tokio::select! {
                _ = cancel.cancelled() => return,
                probe = client.probe() => match probe {
                    Ok(Ok(found)) => offered(&found),
                    Ok(Err(e)) => {
                        tracing::debug!("no port mapping: {e}");
                        None
                    }
                    Err(_) => return,
                },
            };
            match protocol {
                Some(name) => {
                    tracing::debug!("the router offers port mapping ({name})");
                    client.update_local_port(port);
                }
                None => tracing::debug!("the router offers no port mapping (no PCP, NAT-PMP or UPnP answer)"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            // The crate renews a mapping it has but does not retry one refused.
            _ = tokio::time::sleep(RETRY) => {
                if protocol.is_some() && external.borrow().is_none() {
                    client.procure_mapping();
                }
            }
            changed = external.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = (*external.borrow_and_update()).map(|addr| Mapping {
                    external: SocketAddr::V4(addr),
                    protocol: protocol.unwrap_or("port mapping"),
                });
                announce(now, &inputs).await;
                if now.is_none() {
                    // Lost (the router restarted, the lease was refused): look again.
                    protocol = None;
                }
            }
        }
    }
    client.deactivate();
    tokio::time::sleep(RELEASE).await;
}

/// The protocol the crate will use, in its order of preference.
fn offered(found: &portmapper::ProbeOutput) -> Option<&'static str> {
    if found.pcp {
        Some("PCP")
    } else if found.nat_pmp {
        Some("NAT-PMP")
    } else if found.upnp {
        Some("UPnP")
    } else {
        None
    }
}

async fn announce<T: From<Option<Mapping>>>(mapping: Option<Mapping>, inputs: &mpsc::Sender<T>) {
    match mapping {
        Some(m) => tracing::info!(
            external = %m.external,
            "the router forwards {} to this node ({}): peers anywhere can dial it",
            m.external,
            m.protocol
        ),
        None => tracing::info!("the router dropped this node's port mapping"),
    }
    let _ = inputs.send(mapping.into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipv4_addresses_beyond_loopback_are_mapped() {
        assert!(applies("0.0.0.0:7000".parse().unwrap()));
        assert!(applies("192.168.1.20:7000".parse().unwrap()));
        assert!(!applies("127.0.0.1:7000".parse().unwrap()));
        assert!(!applies("[::]:7000".parse().unwrap()));
    }
}
