//! Streams on the local network through mDNS (`--lan`): a node with a ticket announces the
//! stream (`_shoal._udp.local.`, the ticket's key and name in TXT, the node's addresses and
//! QUIC port in the records), and a gateway started with `--lan` and no ticket finds one — a
//! venue kiosk needs nothing typed in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use shoal_proto::Ticket;

const SERVICE: &str = "_shoal._udp.local.";
/// TXT key holding the stream's ticket (key and name; the addresses come from mDNS itself).
const TICKET_KEY: &str = "ticket";
/// After the first stream answers, others are waited for this long (to see if there are several).
const MORE_STREAMS_GRACE: Duration = Duration::from_millis(1500);

/// Keeps the stream announced while alive.
pub struct Announcement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

/// Announces `ticket`'s stream, joinable on this machine's addresses at `port`.
pub fn announce(ticket: &Ticket, port: u16, node_name: &str) -> anyhow::Result<Announcement> {
    let daemon = ServiceDaemon::new().context("cannot start mDNS")?;
    let bare = Ticket::new(ticket.stream_key, &ticket.name, Vec::new()).to_string();
    let instance = format!("{} ({node_name})", ticket.name);
    let host = format!("shoal-{node_name}.local.");
    let info = ServiceInfo::new(
        SERVICE,
        &instance,
        &host,
        "",
        port,
        [(TICKET_KEY, bare.as_str())].as_slice(),
    )
    .context("cannot describe the stream for mDNS")?
    .enable_addr_auto();
    let fullname = info.get_fullname().to_string();
    daemon.register(info).context("cannot announce the stream on mDNS")?;
    tracing::info!(name = %ticket.name, "announcing the stream on the local network (mDNS)");
    Ok(Announcement { daemon, fullname })
}

/// A stream found on the LAN: its ticket, with the addresses that announced it.
#[derive(Debug)]
pub struct Found {
    pub ticket: Ticket,
}

/// Looks for streams on the LAN for up to `wait`; picks the one named `name`, or the only one.
pub fn find(name: Option<&str>, wait: Duration) -> anyhow::Result<Found> {
    let daemon = ServiceDaemon::new().context("cannot start mDNS")?;
    let events = daemon.browse(SERVICE).context("cannot browse mDNS")?;
    let deadline = Instant::now() + wait;
    // Stream key → (ticket, addresses), merged over every node announcing that stream.
    let mut streams: BTreeMap<[u8; 32], (Ticket, Vec<SocketAddr>)> = BTreeMap::new();
    let mut settle: Option<Instant> = None;
    loop {
        let until = settle.map_or(deadline, |s| s.min(deadline));
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            break;
        };
        let Ok(event) = events.recv_timeout(left) else { break };
        let ServiceEvent::ServiceResolved(service) = event else {
            continue;
        };
        let Some(ticket) = service
            .get_property_val_str(TICKET_KEY)
            .and_then(|t| t.parse::<Ticket>().ok())
        else {
            continue; // not a shoal ticket: someone else's service, or garbage
        };
        if name.is_some_and(|n| n != ticket.name) {
            continue;
        }
        let addrs = service
            .get_addresses()
            .iter()
            .map(|ip| SocketAddr::new(ip.to_ip_addr(), service.get_port()));
        let entry = streams
            .entry(ticket.stream_key.to_bytes())
            .or_insert_with(|| (ticket, Vec::new()));
        for addr in addrs {
            if !entry.1.contains(&addr) {
                entry.1.push(addr);
            }
        }
        settle.get_or_insert_with(|| Instant::now() + MORE_STREAMS_GRACE);
    }
    let _ = daemon.shutdown();
    let mut found: Vec<(Ticket, Vec<SocketAddr>)> = streams.into_values().collect();
    match found.len() {
        0 => match name {
            Some(n) => bail!("no stream named {n:?} found on the local network in {wait:?}"),
            None => bail!("no stream found on the local network in {wait:?} (is the broadcaster started with --lan?)"),
        },
        1 => {
            let (ticket, addrs) = found.remove(0);
            Ok(Found {
                ticket: Ticket::new(ticket.stream_key, &ticket.name, addrs),
            })
        }
        _ => {
            let names: Vec<String> = found.iter().map(|(t, _)| format!("{:?}", t.name)).collect();
            bail!(
                "several streams on the local network ({}): pick one with --lan NAME",
                names.join(", ")
            )
        }
    }
}
