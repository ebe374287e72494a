//! Where neighbours see this node (each HELLO says it): behind a NAT, that is the node's
//! address on the internet, which it cannot know by itself. An address counts once two
//! different neighbours report it (one could lie or be mistaken).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use shoal_proto::NodeId;

/// Distinct neighbours that must report an address before it is believed.
const CONFIRMED_BY: usize = 2;
/// Addresses and reporters remembered at most (neighbours choose what they report).
const MAX_ADDRS: usize = 16;
const MAX_REPORTERS: usize = 16;

/// A mapping the router made (PCP, NAT-PMP, UPnP-IGD: `portmap.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Where peers outside reach this node.
    pub external: SocketAddr,
    pub protocol: &'static str,
}

#[derive(Debug, Default)]
pub struct Observed {
    seen: BTreeMap<SocketAddr, BTreeSet<NodeId>>,
}

impl Observed {
    /// `by` sees us at `addr`; true when that makes `addr` newly confirmed.
    pub fn report(&mut self, addr: SocketAddr, by: NodeId) -> bool {
        if !self.seen.contains_key(&addr) && self.seen.len() >= MAX_ADDRS {
            return false;
        }
        let reporters = self.seen.entry(addr).or_default();
        if reporters.len() >= MAX_REPORTERS || !reporters.insert(by) {
            return false;
        }
        reporters.len() == CONFIRMED_BY
    }

    /// Addresses enough neighbours agree on.
    pub fn confirmed(&self) -> Vec<SocketAddr> {
        self.seen
            .iter()
            .filter(|(_, by)| by.len() >= CONFIRMED_BY)
            .map(|(addr, _)| *addr)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_believed_once_two_neighbours_report_it() {
        let mut o = Observed::default();
        let public: SocketAddr = "198.18.0.3:7100".parse().unwrap();
        let a = NodeId([1; 32]);
        assert!(!o.report(public, a));
        assert!(!o.report(public, a), "the same neighbour twice is one report");
        assert!(o.confirmed().is_empty());
        assert!(o.report(public, NodeId([2; 32])));
        assert!(!o.report(public, NodeId([3; 32])), "confirmed once");
        assert_eq!(o.confirmed(), vec![public]);
        // A liar naming many addresses fills a bounded table.
        for port in 0..100u16 {
            o.report(SocketAddr::from(([10, 0, 0, 1], port)), a);
        }
        assert!(o.seen.len() <= MAX_ADDRS);
    }
}
