//! End to end on loopback: real broadcaster, relays and gateway processes, real QUIC, real
//! HLS decoded by ffmpeg.

use std::time::Duration;

use shoal_tests::player::ffmpeg;
use shoal_tests::process::test_dir;
use shoal_tests::swarm::{self, http_get};

/// broadcaster → peer 1 → peer 2 → gateway, each hop given only the previous one: ffmpeg
/// decodes the gateway's HLS, and everything the gateway got came from peer 2.
#[test]
fn a_relay_chain_plays_in_ffmpeg() {
    let dir = test_dir("chain");
    let b = swarm::broadcaster(&dir, &[]).unwrap();
    let p1 = swarm::relay(&dir, "peer1", &b.ticket_file, &b.node.addr).unwrap();
    let p2 = swarm::relay(&dir, "peer2", &b.ticket_file, &p1.addr).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &p2.addr).unwrap();

    let (status, playlist) = http_get(&gw.url("/live.m3u8")).unwrap();
    let playlist = String::from_utf8_lossy(&playlist).to_string();
    assert_eq!(status, 200, "{playlist}");
    assert!(playlist.contains("#EXT-X-PROGRAM-DATE-TIME:"), "{playlist}");

    let play = ffmpeg(&gw.url("/live.m3u8"), 10).unwrap();
    assert!(play.success, "ffmpeg failed: {:?}", play.errors);
    assert!(play.seconds >= 8.0, "decoded only {:.1} s", play.seconds);
    assert!(play.frames >= 8 * 30, "decoded only {} frames", play.frames);
    assert!(play.errors.is_empty(), "ffmpeg reported errors: {:?}", play.errors);

    // The playlist rolled on while ffmpeg played and holds at least three segments.
    let (_, later) = http_get(&gw.url("/live.m3u8")).unwrap();
    let later = String::from_utf8_lossy(&later).to_string();
    assert!(later.matches("#EXTINF:").count() >= 3, "{later}");
    assert_ne!(playlist, later);

    let stats = gw.stats();
    let p2_id = p2.node_id();
    let sources: Vec<&str> = stats["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["bytes_in"].as_u64().unwrap_or(0) > 0)
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec![p2_id.as_str()], "gateway's data came from {sources:?}");
    assert!(stats["chunks"]["verified"].as_u64().unwrap() > 300, "{stats}");
    assert_eq!(stats["chunks"]["rejected"], serde_json::json!({}));
    // Each relay got the stream once, from upstream.
    let p1_stats = p1.stats();
    assert!(p1_stats["bytes_in"]["data"].as_u64().unwrap() > 500_000, "{p1_stats}");
    eprintln!(
        "gateway chunk latency {} ms, segment latency {} ms, startup {} ms",
        stats["latency_ms"], stats["segment_latency_ms"], stats["startup_ms"]
    );
}

/// The broadcaster stops (Ctrl-C: end of stream) and is started again with the same key
/// where it was: the gateway dials it again by itself, follows the new epoch with a
/// discontinuity, and the same playlist URL plays on in ffmpeg.
#[test]
fn a_restarted_broadcaster_is_followed_across_a_discontinuity() {
    let dir = test_dir("restart");
    let mut b = swarm::broadcaster(&dir, &[]).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &b.node.addr).unwrap();
    let (status, _) = http_get(&gw.url("/live.m3u8")).unwrap();
    assert_eq!(status, 200);
    let listen = b.node.addr.clone();
    assert!(
        b.node
            .proc
            .interrupt(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let ended = wait_for_playlist(&gw.url("/live.m3u8"), "#EXT-X-ENDLIST", Duration::from_secs(10));
    assert!(ended.contains("#EXT-X-ENDLIST"), "{ended}");

    let _b2 = swarm::broadcaster_on(&dir, &listen, &[]).unwrap();
    plays_across_the_discontinuity(&gw);
}

/// Neither side's crash loses the stream. The gateway, killed (SIGKILL) and started again
/// on the same port, plays on from the live edge; the broadcaster, killed with no goodbye and
/// started again with its key, begins a new epoch that the gateway follows with a
/// discontinuity, without ever ending the playlist.
#[test]
fn crashed_gateway_and_broadcaster_are_recovered_from() {
    let dir = test_dir("crash");
    let mut b = swarm::broadcaster(&dir, &[]).unwrap();
    let mut gw = swarm::gateway(&dir, &b.ticket_file, &b.node.addr).unwrap();
    let (status, _) = http_get(&gw.url("/live.m3u8")).unwrap();
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(3));

    gw.proc.kill();
    let http = gw.http.clone();
    let gw = swarm::gateway_on(&dir, &b.ticket_file, &b.node.addr, &http).unwrap();
    let restarted = std::time::Instant::now();
    let playlist = wait_for_playlist(&gw.url("/live.m3u8"), "#EXTINF:", Duration::from_secs(15));
    // It starts at the newest keyframe, not where the old process was.
    let first_pdt = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .unwrap_or_else(|| panic!("no date in {playlist}"));
    eprintln!(
        "restarted gateway's first segment is dated {first_pdt}, served after {:?}",
        restarted.elapsed()
    );
    let play = ffmpeg(&gw.url("/live.m3u8"), 6).unwrap();
    assert!(play.success && play.errors.is_empty(), "ffmpeg: {:?}", play.errors);
    assert!(play.seconds >= 5.0, "decoded only {:.1} s", play.seconds);
    let behind = gw.stats()["segment_latency_ms"]["p50"].as_f64().unwrap_or(f64::MAX);
    assert!(
        behind < 5000.0,
        "the restarted gateway is {behind} ms behind the live edge"
    );

    let listen = b.node.addr.clone();
    b.node.proc.kill();
    let _b2 = swarm::broadcaster_on(&dir, &listen, &[]).unwrap();
    plays_across_the_discontinuity(&gw);
}

/// The gateway's playlist takes in a restarted broadcaster's new epoch, marked as a
/// discontinuity and never ended, and ffmpeg plays the new epoch.
fn plays_across_the_discontinuity(gw: &swarm::Gateway) {
    let resumed = wait_for_playlist(&gw.url("/live.m3u8"), "#EXT-X-DISCONTINUITY\n", Duration::from_secs(30));
    assert!(resumed.contains("#EXT-X-DISCONTINUITY\n"), "{resumed}");
    assert!(!resumed.contains("#EXT-X-ENDLIST"), "{resumed}");
    // ffmpeg's HLS reader does not reset its decoders at a discontinuity (hls.js and VLC do):
    // let the new epoch fill the part of the playlist it starts from, then play that.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while segments_after_discontinuity(&gw.url("/live.m3u8")) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new epoch does not grow in the playlist"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let playlist = wait_for_playlist(&gw.url("/live.m3u8"), "", Duration::ZERO);
    let play = ffmpeg(&gw.url("/live.m3u8"), 6).unwrap();
    assert!(
        play.success && play.errors.is_empty(),
        "ffmpeg: {:?}\nplaylist when it started:\n{playlist}",
        play.errors
    );
    assert!(play.seconds >= 5.0, "decoded only {:.1} s", play.seconds);
}

/// Polls the playlist until it holds `marker` or `timeout` passes; returns the last one seen.
fn wait_for_playlist(url: &str, marker: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = http_get(url)
            .map(|(_, body)| String::from_utf8_lossy(&body).to_string())
            .unwrap_or_default();
        if text.contains(marker) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn segments_after_discontinuity(url: &str) -> usize {
    let text = wait_for_playlist(url, "", Duration::ZERO);
    text.split("#EXT-X-DISCONTINUITY\n")
        .nth(1)
        .map_or(0, |after| after.matches("#EXTINF:").count())
}
