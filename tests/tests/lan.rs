//! Streams on the local network (mDNS), inside a network namespace the test makes (so no
//! real network hears it): a broadcaster started with `--lan`, and a gateway with `--lan` and
//! no ticket finds it and plays.

use std::time::Duration;

use shoal_tests::natlab::Netns;
use shoal_tests::player;
use shoal_tests::process::test_dir;
use shoal_tests::skip;
use shoal_tests::swarm::TEST_STREAM;

#[test]
fn a_gateway_finds_the_stream_on_the_lan_with_no_ticket() {
    let Some(()) = skip::unless_namespaces("lan::a_gateway_finds_the_stream_on_the_lan_with_no_ticket") else {
        return;
    };
    let dir = test_dir("lan");
    let ns = Netns::new("lan").unwrap();
    let key = dir.join("stream.key").display().to_string();
    let mut b = ns
        .start(
            &dir,
            "broadcaster",
            "shoal-broadcaster",
            &[&TEST_STREAM[..], &["--name", "stage one", "--key", &key, "--lan"]].concat(),
        )
        .unwrap();
    b.wait_for_line("shoal1", Duration::from_secs(20)).unwrap();
    let mut gw = ns
        .start(&dir, "gateway", "shoal-gateway", &["--lan", "--http", "127.0.0.1:8080"])
        .unwrap();
    gw.wait_for_line("open http://", Duration::from_secs(30)).unwrap();
    let said = gw.stderr_text();
    assert!(said.contains("found \"stage one\" on the local network"), "{said}");
    std::thread::sleep(Duration::from_secs(3));
    let play = player::ffmpeg_in(&["ip", "netns", "exec", &ns.name], "http://127.0.0.1:8080/live.m3u8", 5).unwrap();
    assert!(play.success && play.errors.is_empty(), "ffmpeg: {:?}", play.errors);
    assert!(play.seconds >= 4.0, "decoded only {:.1} s", play.seconds);
}
