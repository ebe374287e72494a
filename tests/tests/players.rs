//! Real players on the gateway, through a relay of the swarm: headless Chromium plays the
//! player page (hls.js, low-latency HLS) and must stay close behind the broadcaster; VLC
//! plays /live.m3u8 and must decode pictures with no errors.

use std::time::Duration;

use shoal_tests::player::{chromium, vlc};
use shoal_tests::process::test_dir;
use shoal_tests::swarm;

/// Low-latency mode must keep the browser within this of the broadcaster (goal: 1.5 s).
const MAX_LATENCY_S: f64 = 2.5;

#[test]
fn the_page_plays_in_chromium_close_behind_the_broadcaster_and_vlc_plays_the_playlist() {
    let dir = test_dir("players");
    let b = swarm::broadcaster(&dir, &[]).unwrap();
    let relay = swarm::relay(&dir, "relay", &b.ticket_file, &b.node.addr).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &relay.addr).unwrap();

    let page = chromium(&gw.url("/"), 12, &dir.join("page.png")).unwrap();
    eprintln!(
        "chromium: played {:.1} s, {} frames ({} dropped, {} stalls), latency {:?} s (max {:?}, hls.js target {:?}), first frame after {} ms",
        page.played_s,
        page.frames,
        page.dropped,
        page.stalls,
        page.latency_s,
        page.latency_max_s,
        page.hls_target_latency_s,
        page.first_frame_ms
    );
    assert!(page.errors.is_empty(), "page errors: {:?}", page.errors);
    assert!(page.played_s >= 10.0, "the video advanced only {:.1} s", page.played_s);
    assert!(page.frames >= 10 * 25, "decoded only {} frames", page.frames);
    assert!(
        page.dropped * 20 <= page.frames,
        "dropped {} of {}",
        page.dropped,
        page.frames
    );
    assert_eq!(page.state, "live");
    let latency = page.latency_s.expect("hls.js gave no playing date");
    assert!(latency <= MAX_LATENCY_S, "{latency:.2} s behind the broadcaster");

    // What the gateway reports about that playback.
    let (_, metrics) = swarm::http_get(&gw.url("/metrics")).unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        "shoal_chunk_latency_seconds_bucket{le=\"+Inf\"}",
        "shoal_chunk_latency_seconds_count",
        "shoal_startup_seconds",
        "shoal_playlist_stalls_total",
        "shoal_chunks_verified_total",
        "shoal_bytes_received_total{kind=\"data\"}",
    ] {
        assert!(metrics.contains(line), "no {line} in /metrics:\n{metrics}");
    }
    let stats = gw.stats();
    eprintln!(
        "gateway: startup {} ms, playlist stalls {}, chunk latency {}",
        stats["startup_ms"], stats["segments"]["stalls"], stats["latency_ms"]
    );
    assert!(
        stats["latency_histogram_ms"]["count"].as_u64().unwrap() > 300,
        "{stats}"
    );

    let played = vlc(&gw.url("/live.m3u8"), 10, &dir).unwrap();
    assert!(
        played.first_picture,
        "VLC decoded no picture (log in {})",
        dir.display()
    );
    assert!(played.errors.is_empty(), "VLC reported: {:#?}", played.errors);
}

/// A kiosk left alone: the broadcaster dies (SIGKILL) while the page plays and comes back a
/// few seconds later; the relay dials it again by itself and the page, after saying the
/// stream is offline, plays the new broadcast without anybody touching it.
#[test]
fn the_page_resumes_by_itself_when_the_broadcaster_comes_back() {
    let dir = test_dir("resume");
    let mut b = swarm::broadcaster(&dir, &[]).unwrap();
    let relay = swarm::relay(&dir, "relay", &b.ticket_file, &b.node.addr).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &relay.addr).unwrap();
    let url = gw.url("/");
    let shot = dir.join("resumed.png");
    let page = std::thread::spawn(move || chromium(&url, 40, &shot));

    std::thread::sleep(Duration::from_secs(10));
    let listen = b.node.addr.clone();
    b.node.proc.kill();
    std::thread::sleep(Duration::from_secs(4));
    let _b2 = swarm::broadcaster_on(&dir, &listen, &[]).unwrap();

    let page = page.join().unwrap().unwrap();
    eprintln!(
        "resumed: state {}, {:.1} s played in the last 3 s, {} stalls, latency at the end {:?} s",
        page.state, page.played_last_3s, page.stalls, page.latency_end_s
    );
    assert!(page.errors.is_empty(), "page errors: {:?}", page.errors);
    assert_eq!(page.state, "live", "the page did not come back by itself");
    assert!(page.played_last_3s >= 2.0, "the video is not playing at the end");
    let latency = page.latency_end_s.expect("no playing date at the end");
    assert!(
        latency <= MAX_LATENCY_S,
        "{latency:.2} s behind the restarted broadcaster"
    );
    let stats = gw.stats();
    assert!(
        stats["segments"]["stalls"].as_u64().unwrap() >= 1,
        "the outage went unnoticed: {stats}"
    );
}
