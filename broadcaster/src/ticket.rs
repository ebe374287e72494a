//! The stream's ticket: what a viewer needs to find the broadcaster. It lists the bootstrap
//! relays, then the addresses beyond this network's NAT (the port the router maps here, the
//! address neighbours see), then the local ones; a viewer dials them all at once and keeps the
//! first that answers. The outside addresses are learnt after start, so when they change the
//! ticket file is rewritten and the new ticket printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use shoal_peer::net::stats::{Stats, write_atomically_text};
use shoal_proto::Ticket;
use tokio_util::sync::CancellationToken;

/// How often the outside addresses are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);

pub struct Tickets {
    pub key: VerifyingKey,
    pub name: String,
    pub bootstrap: Vec<SocketAddr>,
    /// Where this machine's own network reaches the broadcaster.
    pub local: Vec<SocketAddr>,
    pub file: Option<PathBuf>,
}

impl Tickets {
    /// The ticket, given the addresses beyond the NAT known now.
    pub fn make(&self, public: &[SocketAddr]) -> Ticket {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in self.bootstrap.iter().chain(public).chain(&self.local) {
            if !addrs.contains(addr) {
                addrs.push(*addr);
            }
        }
        Ticket::new(self.key, &self.name, addrs)
    }

    /// Writes the ticket file (if asked for) and prints the ticket.
    pub fn hand_out(&self, ticket: &Ticket) -> anyhow::Result<()> {
        if let Some(path) = &self.file {
            write_atomically_text(path, &format!("{ticket}\n"))
                .with_context(|| format!("cannot write ticket file {}", path.display()))?;
        }
        println!("{ticket}");
        Ok(())
    }

    /// Hands out a new ticket whenever the addresses beyond the NAT change, until `cancel`.
    pub async fn follow(self, stats: Arc<Stats>, mut public: Vec<SocketAddr>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
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
            let shown: Vec<String> = public.iter().map(ToString::to_string).collect();
            tracing::info!(
                "this stream is now reachable from outside at {}: the ticket below lists it too{}",
                if shown.is_empty() {
                    "no address".to_string()
                } else {
                    shown.join(", ")
                },
                if self.file.is_some() {
                    " (ticket file rewritten)"
                } else {
                    ""
                }
            );
            if let Err(e) = self.hand_out(&self.make(&public)) {
                tracing::warn!("{e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn relays_come_first_then_outside_then_local_addresses_once_each() {
        let tickets = Tickets {
            key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key(),
            name: "stage".into(),
            bootstrap: vec![addr("198.18.0.10:7000")],
            local: vec![addr("192.168.1.20:7001"), addr("127.0.0.1:7001")],
            file: None,
        };
        let t = tickets.make(&[addr("203.0.113.5:7001"), addr("198.18.0.10:7000")]);
        assert_eq!(
            t.addrs,
            vec![
                addr("198.18.0.10:7000"),
                addr("203.0.113.5:7001"),
                addr("192.168.1.20:7001"),
                addr("127.0.0.1:7001")
            ]
        );
        let printed = t.to_string();
        assert!(printed.len() < 200, "a ticket stays short: {printed}");
        assert_eq!(printed.parse::<Ticket>().unwrap().addrs, t.addrs);
    }
}
