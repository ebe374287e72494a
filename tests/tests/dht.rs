//! Finding a swarm through the Mainline DHT, on a DHT of a few nodes on loopback (never the
//! public one): the broadcaster publishes its addresses under its stream key, and a gateway
//! holding a ticket with no address at all — key and name only — finds it and plays.

use shoal_proto::Ticket;
use shoal_tests::player::ffmpeg;
use shoal_tests::process::test_dir;
use shoal_tests::swarm::{self, http_get};
use std::time::{Duration, Instant};

#[test]
fn a_ticket_without_addresses_finds_the_swarm_on_the_dht() {
    let testnet = mainline::Testnet::builder(8).build().expect("a local DHT");
    let boot = testnet.bootstrap[0].clone();
    let dir = test_dir("dht");
    let b = swarm::broadcaster(&dir, &["--dht-bootstrap", &boot]).unwrap();

    let full: Ticket = std::fs::read_to_string(&b.ticket_file).unwrap().trim().parse().unwrap();
    let bare = Ticket::new(full.stream_key, &full.name, vec![]);
    let bare_file = dir.join("bare.ticket");
    std::fs::write(&bare_file, format!("{bare}\n")).unwrap();

    let gw = swarm::gateway_with(&dir, &bare_file, &["--dht-bootstrap", &boot]).unwrap();
    // The lookup runs until the broadcaster's item is there; then the playlist fills.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !http_get(&gw.url("/live.m3u8")).is_ok_and(|(status, _)| status == 200) {
        assert!(Instant::now() < deadline, "no stream found: {}", gw.proc.stderr_text());
        std::thread::sleep(Duration::from_millis(250));
    }
    let play = ffmpeg(&gw.url("/live.m3u8"), 5).unwrap();
    assert!(play.success && play.errors.is_empty(), "ffmpeg: {:?}", play.errors);
    assert!(play.seconds >= 4.0, "decoded only {:.1} s", play.seconds);
    let said = gw.proc.stderr_text();
    assert!(said.contains("found the swarm on the DHT"), "{said}");
    let published = b.node.proc.stderr_text();
    assert!(
        published.contains("published the swarm's addresses on the DHT"),
        "{published}"
    );
}
