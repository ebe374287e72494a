//! The stream's ticket: what a viewer needs to find the broadcaster. It lists the bootstrap
//! relays, then the addresses beyond this network's NAT (the port the router maps here, the
//! address neighbours see), then the local ones; a viewer dials them all at once and keeps the
//! first that answers. The outside addresses are learnt after start, so the ticket changes.

use std::net::SocketAddr;

use ed25519_dalek::VerifyingKey;
use shoal_proto::Ticket;

pub struct Tickets {
    pub key: VerifyingKey,
    pub name: String,
    pub bootstrap: Vec<SocketAddr>,
    /// Where this machine's own network reaches the broadcaster.
    pub local: Vec<SocketAddr>,
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
