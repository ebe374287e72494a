//! The broadcaster's inputs, end to end: ffmpeg pushes H.264 (High, 640x360) + AAC as OBS
//! would — over UDP, over SRT, into stdin — and the gateway's HLS carries that same video,
//! passed through; a sender that stops is covered by the slate; the screen is captured
//! under Xvfb.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use shoal_tests::player::{self, ffmpeg, probe};
use shoal_tests::process::{Proc, test_dir};
use shoal_tests::pusher::{self, PROFILE, SIZE};
use shoal_tests::swarm::{self, Broadcaster, Gateway, http_get};

/// Asserts the gateway serves the pushed video untouched (same profile and size) with AAC,
/// that ffmpeg plays it cleanly, and that the recording holds it too.
fn assert_passed_through(dir: &Path, b: &Broadcaster, gw: &Gateway) {
    let streams = probe(&gw.url("/live.m3u8")).unwrap();
    let video = streams
        .iter()
        .find(|s| s.codec_name == "h264")
        .expect("no H.264 stream");
    assert_eq!(
        (video.profile.as_deref(), video.width, video.height),
        (Some(PROFILE), Some(SIZE.0), Some(SIZE.1)),
        "not passed through: {streams:?}"
    );
    assert!(streams.iter().any(|s| s.codec_name == "aac"), "no AAC: {streams:?}");

    let cpu_before = b.node.proc.cpu_time().unwrap_or_default();
    let started = Instant::now();
    let play = ffmpeg(&gw.url("/live.m3u8"), 8).unwrap();
    assert!(play.success && play.errors.is_empty(), "ffmpeg: {:?}", play.errors);
    assert!(play.seconds >= 7.0, "decoded only {:.1} s", play.seconds);
    let cpu = b.node.proc.cpu_time().unwrap_or_default().saturating_sub(cpu_before);
    eprintln!(
        "broadcaster CPU while passing through: {:.1} % of a core",
        100.0 * cpu.as_secs_f64() / started.elapsed().as_secs_f64()
    );

    let recorded = probe(&dir.join("recording.ts").display().to_string()).unwrap();
    assert!(
        recorded
            .iter()
            .any(|s| s.codec_name == "h264" && s.width == Some(SIZE.0) && s.profile.as_deref() == Some(PROFILE)),
        "recording: {recorded:?}"
    );
}

fn record_flag(dir: &Path) -> String {
    dir.join("recording.ts").display().to_string()
}

#[test]
fn h264_pushed_over_udp_passes_through_and_plays() {
    let dir = test_dir("source-udp");
    let port = pusher::free_udp_port().unwrap();
    let source = format!("udp://127.0.0.1:{port}");
    let record = record_flag(&dir);
    let proc = swarm::start_broadcaster(
        &dir,
        "127.0.0.1:0",
        &["--source", &source, "--record", &record],
        Stdio::null(),
        &[],
    )
    .unwrap();
    let _push = pusher::push(&dir, "pusher", &format!("{source}?pkt_size=1316")).unwrap();
    let b = swarm::broadcaster_ready(&dir, proc).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &b.node.addr).unwrap();
    assert_passed_through(&dir, &b, &gw);
    let said = std::fs::read_to_string(&b.node.proc.stdout).unwrap();
    assert!(said.contains("video: H.264 high 640x360, passed through"), "{said}");
}

#[test]
fn h264_pushed_over_srt_passes_through_and_plays() {
    let dir = test_dir("source-srt");
    let port = pusher::free_udp_port().unwrap();
    let record = record_flag(&dir);
    // The broadcaster listens, as for OBS; ffmpeg calls once it is up.
    let proc = swarm::start_broadcaster(
        &dir,
        "127.0.0.1:0",
        &[
            "--source",
            &format!("srt://127.0.0.1:{port}?mode=listener"),
            "--record",
            &record,
        ],
        Stdio::null(),
        &[],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _push = pusher::push(&dir, "pusher", &format!("srt://127.0.0.1:{port}?mode=caller")).unwrap();
    let b = swarm::broadcaster_ready(&dir, proc).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &b.node.addr).unwrap();
    assert_passed_through(&dir, &b, &gw);
}

#[test]
fn h264_piped_into_stdin_passes_through_and_plays() {
    let dir = test_dir("source-stdin");
    let (_push, pipe) = pusher::pipe(&dir, "pusher").unwrap();
    let record = record_flag(&dir);
    let proc = swarm::start_broadcaster(
        &dir,
        "127.0.0.1:0",
        &["--source", "stdin", "--record", &record],
        Stdio::from(pipe),
        &[],
    )
    .unwrap();
    let b = swarm::broadcaster_ready(&dir, proc).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &b.node.addr).unwrap();
    assert_passed_through(&dir, &b, &gw);
}

/// A sound-only input (a radio show) plays through as sound only.
#[test]
fn audio_only_input_plays() {
    let dir = test_dir("source-audio");
    let port = pusher::free_udp_port().unwrap();
    let source = format!("udp://127.0.0.1:{port}");
    let proc = swarm::start_broadcaster(&dir, "127.0.0.1:0", &["--source", &source], Stdio::null(), &[]).unwrap();
    let _push = pusher::push_audio_only(&dir, "pusher", &format!("{source}?pkt_size=1316")).unwrap();
    let b = swarm::broadcaster_ready(&dir, proc).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &b.node.addr).unwrap();
    let streams = probe(&gw.url("/live.m3u8")).unwrap();
    let codecs: Vec<&str> = streams.iter().map(|s| s.codec_name.as_str()).collect();
    assert_eq!(codecs, vec!["aac"], "{streams:?}");
    let play = ffmpeg(&gw.url("/live.m3u8"), 5).unwrap();
    assert!(play.success && play.errors.is_empty(), "ffmpeg: {:?}", play.errors);
    assert!(play.seconds >= 4.0, "decoded only {:.1} s", play.seconds);
}

/// Segments published so far: the playlist's first media sequence number plus those listed.
fn segments_published(gw: &Gateway) -> u64 {
    let (_, body) = http_get(&gw.url("/live.m3u8")).unwrap();
    let text = String::from_utf8_lossy(&body);
    let first: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no media sequence in {text}"));
    first + text.matches("#EXTINF:").count() as u64
}

/// The sender stops for 5 s (OBS restarted): the slate keeps the playlist moving, marked as a
/// discontinuity, and the pushed video plays again when the sender is back.
#[test]
fn a_source_that_drops_is_covered_by_the_slate_and_plays_again() {
    let dir = test_dir("source-drop");
    let port = pusher::free_udp_port().unwrap();
    let source = format!("udp://127.0.0.1:{port}");
    let url = format!("{source}?pkt_size=1316");
    let proc = swarm::start_broadcaster(&dir, "127.0.0.1:0", &["--source", &source], Stdio::null(), &[]).unwrap();
    let push = pusher::push(&dir, "pusher1", &url).unwrap();
    let b = swarm::broadcaster_ready(&dir, proc).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &b.node.addr).unwrap();
    std::thread::sleep(Duration::from_secs(4));

    drop(push);
    let before = segments_published(&gw);
    std::thread::sleep(Duration::from_secs(5));
    let during = segments_published(&gw);
    assert!(
        during >= before + 3,
        "the playlist stalled: {before} → {during} segments"
    );
    let (_, body) = http_get(&gw.url("/live.m3u8")).unwrap();
    let playlist = String::from_utf8_lossy(&body).to_string();
    assert!(playlist.contains("#EXT-X-DISCONTINUITY"), "{playlist}");
    assert!(!playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    let log = b.node.proc.stderr_text();
    assert!(log.contains("showing the slate"), "{log}");

    let _push = pusher::push(&dir, "pusher2", &url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b.node.proc.stderr_text().contains("is back") {
        assert!(Instant::now() < deadline, "the source never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Once the slate's segments have left the playlist's live edge, the pushed video plays.
    std::thread::sleep(Duration::from_secs(4));
    let play = ffmpeg(&gw.url("/live.m3u8"), 5).unwrap();
    assert!(
        play.success && play.seconds >= 4.0,
        "ffmpeg: {:.1} s {:?}",
        play.seconds,
        play.errors
    );
    let stats = gw.stats();
    assert_eq!(stats["segments"]["stalls"], 0, "{stats}");
}

/// `--source screen` under a virtual X display (Xvfb, installed by scripts/setup).
#[test]
fn the_screen_is_captured_under_xvfb() {
    let dir = test_dir("source-screen");
    let display = format!(":{}", 90 + std::process::id() % 100);
    let xvfb = Proc::start(
        &dir,
        "xvfb",
        Path::new("Xvfb"),
        &[
            display.clone(),
            "-screen".into(),
            "0".into(),
            "640x360x24".into(),
            "-nolisten".into(),
            "tcp".into(),
        ],
    )
    .expect("Xvfb (scripts/setup installs xvfb)");
    let socket = format!("/tmp/.X11-unix/X{}", &display[1..]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&socket).exists() {
        assert!(Instant::now() < deadline, "Xvfb did not start: {}", xvfb.stderr_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // An empty root window is picture enough: the test is that it is captured and plays.
    let proc = swarm::start_broadcaster(
        &dir,
        "127.0.0.1:0",
        &["--source", "screen", "--fps", "15"],
        Stdio::null(),
        &[("DISPLAY", &display)],
    )
    .unwrap();
    let b = swarm::broadcaster_ready(&dir, proc).unwrap();
    let gw = swarm::gateway(&dir, &b.ticket_file, &b.node.addr).unwrap();
    let streams = probe(&gw.url("/live.m3u8")).unwrap();
    assert!(
        streams
            .iter()
            .any(|s| s.codec_name == "h264" && s.width == Some(640) && s.height == Some(360)),
        "{streams:?}"
    );
    let play = player::ffmpeg(&gw.url("/live.m3u8"), 5).unwrap();
    assert!(
        play.success && play.seconds >= 4.0,
        "ffmpeg: {:.1} s {:?}",
        play.seconds,
        play.errors
    );
    drop(xvfb);
}
