//! The NAT lab (tests/src/natlab.rs): a broadcaster and three viewers behind their own NATs,
//! one public relay. Runs where network namespaces can be made (root, as in CI); elsewhere it
//! records a skip by name, which `scripts/test` reports.

use shoal_tests::natlab;
use shoal_tests::process::test_dir;
use shoal_tests::skip;

#[test]
fn viewers_behind_nats_play_and_cone_nats_connect_directly() {
    let Some(()) = skip::unless_namespaces("natlab::viewers_behind_nats_play_and_cone_nats_connect_directly") else {
        return;
    };
    let dir = test_dir("natlab");
    let report = natlab::run_lab(&dir, 25).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    for viewer in ["viewer-a", "viewer-b", "viewer-c"] {
        let v = &report[viewer];
        assert!(v["played_s"].as_f64().unwrap() >= 5.0, "{viewer} did not play: {v}");
        assert_eq!(v["play_errors"], serde_json::json!([]), "{viewer}: {v}");
    }
    // The two cone-NAT viewers punched through to each other: data both ways, no relay.
    let from = |viewer: &str, site: &str| report[viewer]["bytes_in_from"][site].as_u64().unwrap_or(0);
    assert!(from("viewer-a", "viewer-b") > 0, "{report}");
    assert!(from("viewer-b", "viewer-a") > 0, "{report}");
    assert!(
        report["viewer-a"]["punch"]["succeeded"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(report["relay_introductions"].as_u64().unwrap() >= 1, "{report}");
    // Behind the symmetric NAT nothing punches through: it plays through the relay.
    for site in ["viewer-a", "viewer-b", "broadcaster"] {
        assert_eq!(from("viewer-c", site), 0, "{report}");
    }
    assert!(from("viewer-c", "relay") > 0, "{report}");
    // Neighbours told each viewer where they see it: behind the cone NAT that is one address
    // (the router's, the port kept); behind the symmetric NAT each saw another port.
    let public = |viewer: &str| report[viewer]["public_addrs"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        public("viewer-a"),
        vec![serde_json::json!("198.18.0.3:7100")],
        "{report}"
    );
    assert!(public("viewer-c").is_empty(), "{report}");
}

/// The broadcaster's router maps ports (miniupnpd); nothing else in the lab would let the
/// viewer behind another NAT reach it: no relay, and its own NAT lets nothing in unasked.
fn plays_through_a_mapped_port(offer: natlab::Offer, protocol: &str) {
    let Some(()) = skip::unless_namespaces(&format!("natlab::plays_through_a_mapped_port_{protocol}")) else {
        return;
    };
    let dir = test_dir(&format!("portmap-{protocol}"));
    let report = natlab::run_mapping_lab(&dir, offer).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report["port_mapping"]["protocol"], protocol, "{report}");
    let external = report["port_mapping"]["external"].as_str().unwrap();
    // The mapped address leads the outside ones in the ticket (after no relay: none here).
    assert_eq!(report["ticket_addrs"][0], external, "{report}");
    let v = &report["viewer"];
    assert!(v["played_s"].as_f64().unwrap() >= 4.0, "{report}");
    assert_eq!(v["play_errors"], serde_json::json!([]), "{report}");
    let from = v["received_from"].as_array().unwrap();
    assert!(
        from.iter().any(|n| n["addr"] == external && n["site"] == "broadcaster"),
        "the viewer got the stream through the mapped port: {report}"
    );
    // Nothing left behind: the router forwarded the port while it ran, and not after.
    assert!(
        report["router_rules"]["while_broadcasting"].as_u64() >= Some(1),
        "{report}"
    );
    assert_eq!(
        report["router_rules"]["after_shutdown"], 0,
        "the mapping outlived the broadcaster: {report}"
    );
}

#[test]
fn a_viewer_reaches_a_broadcaster_behind_nat_through_a_pcp_mapping() {
    plays_through_a_mapped_port(
        natlab::Offer {
            upnp: true,
            pcp_nat_pmp: true,
        },
        "PCP",
    );
}

#[test]
fn a_viewer_reaches_a_broadcaster_behind_nat_through_a_upnp_mapping() {
    plays_through_a_mapped_port(
        natlab::Offer {
            upnp: true,
            pcp_nat_pmp: false,
        },
        "UPnP",
    );
}
