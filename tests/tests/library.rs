//! shoal as a library, the way an application embeds it: a relay and a viewer started from
//! code (in this process) on a real broadcaster, the viewer's page and playlist mounted under
//! the application's own axum server at a prefix, played by ffmpeg there and at the viewer's
//! own URL, its events and stats read, and everything shut down with nothing left running:
//! threads back to what they were, ports bindable again. And an application broadcasting the
//! MPEG-TS its own encoder makes (ffmpeg here), which goes through no GStreamer.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use shoal_broadcaster::{Broadcaster, BroadcasterEvent, Source};
use shoal_gateway::{Viewer, ViewerEvent};
use shoal_peer::relay::Relay;
use shoal_peer::swarm::SwarmOptions;
use shoal_proto::Ticket;
use shoal_tests::player::{chromium, ffmpeg, probe};
use shoal_tests::process::test_dir;
use shoal_tests::swarm::{broadcaster, http_get};

const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Waits until `ready` holds, for at most `limit`.
fn eventually(limit: Duration, ready: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ready()
}

/// ffmpeg on its own thread (joined: no thread outlives it), so the runtime keeps running.
async fn play(url: String, seconds: u32) -> shoal_tests::player::Playback {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(ffmpeg(&url, seconds).expect("ffmpeg runs"));
    });
    rx.await.expect("ffmpeg thread")
}

async fn get(url: String) -> (u16, String) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let (status, body) = http_get(&url).expect("GET answers");
        let _ = tx.send((status, String::from_utf8_lossy(&body).into_owned()));
    });
    rx.await.expect("GET thread")
}

#[test]
fn a_viewer_embedded_in_an_app_plays_under_a_prefix_and_leaves_nothing_running() {
    let dir = test_dir("library");
    let b = broadcaster(&dir, &[]).expect("broadcaster starts");
    let ticket: Ticket = std::fs::read_to_string(&b.ticket_file)
        .expect("ticket file")
        .trim()
        .parse()
        .expect("ticket");
    // Idle threads of the blocking pool go quickly, so the count can come back to baseline.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(100))
        .enable_all()
        .build()
        .expect("runtime");
    let baseline = threads();
    let (viewer_ports, relay_port) = runtime.block_on(async {
        // A relay between the broadcaster and the viewer, fixed chain.
        let mut options = SwarmOptions::default();
        options.listen = LOOPBACK;
        options.bootstrap = vec![b.node.addr.clone()];
        options.discovery = false;
        let relay = Relay::builder(ticket.clone())
            .swarm(options)
            .start()
            .await
            .expect("relay starts");
        let viewer = Viewer::builder(ticket.clone())
            .listen(LOOPBACK)
            .bootstrap([relay.local_addr().to_string()])
            .discovery(false)
            .start()
            .await
            .expect("viewer starts");
        let mut events = viewer.events();
        let mut relay_events = relay.events();

        // The application's own server, with the viewer mounted at /tv.
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "the app's own page" }))
            .nest("/tv", viewer.router());
        let listener = tokio::net::TcpListener::bind(LOOPBACK).await.expect("app port");
        let app_addr = listener.local_addr().expect("app addr");
        let app_stop = tokio_util::sync::CancellationToken::new();
        let server = {
            let stop = app_stop.clone();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            })
        };

        // Live, a segment, a neighbour: as they happen.
        let (mut live, mut segment, mut neighbour) = (false, false, false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !(live && segment && neighbour) {
            let event = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("live within 30 s")
                .expect("events flow");
            match event {
                ViewerEvent::Live => live = true,
                ViewerEvent::SegmentPublished { duration, latency, .. } => {
                    assert!(
                        duration > Duration::ZERO && latency < Duration::from_secs(10),
                        "{event:?}"
                    );
                    segment = true;
                }
                ViewerEvent::NeighbourUp { .. } => neighbour = true,
                _ => {}
            }
        }
        assert!(
            matches!(
                relay_events.next().await,
                Some(shoal_peer::events::NodeEvent::NeighbourUp { .. })
            ),
            "the relay tells its neighbours"
        );

        // Its own URL plays.
        let url = viewer.playlist_url().expect("served on localhost by default");
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let own = play(url, 4).await;
        assert!(
            own.success && own.frames > 50,
            "frames {} errors {:?}",
            own.frames,
            own.errors
        );

        // Mounted at /tv: the page names its base and its files are there; the playlist plays.
        let (status, page) = get(format!("http://{app_addr}/tv")).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains(r#"<base href="/tv/">"#), "{page}");
        let (status, _) = get(format!("http://{app_addr}/tv/player.js")).await;
        assert_eq!(status, 200, "the page's script under the prefix");
        let (status, home) = get(format!("http://{app_addr}/")).await;
        assert_eq!((status, home.as_str()), (200, "the app's own page"));
        let mounted = play(format!("http://{app_addr}/tv/live.m3u8"), 4).await;
        assert!(
            mounted.success && mounted.frames > 50,
            "frames {} errors {:?}",
            mounted.frames,
            mounted.errors
        );

        // And the page plays there, in a browser (hls.js, every URL under /tv).
        let page = {
            let (url, shot) = (format!("http://{app_addr}/tv"), dir.join("page.png"));
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = tx.send(chromium(&url, 8, &shot).expect("the browser runs"));
            });
            rx.await.expect("browser thread")
        };
        assert!(page.errors.is_empty(), "page errors: {:?}", page.errors);
        assert!(page.played_s >= 6.0 && page.frames >= 100, "{page:?}");
        assert_eq!(page.state, "live", "{page:?}");

        let stats = viewer.stats();
        assert!(stats.segments.published > 0, "{:?}", stats.segments);
        assert_eq!(stats.stream, "e2e");
        assert!(stats.swarm.connected_neighbours() >= 1);
        assert!(relay.stats().chunks.verified > 0, "the relay passed chunks on");

        let ports = (viewer.local_addr(), viewer.http_addr().expect("http"));
        let relay_port = relay.local_addr();
        app_stop.cancel();
        let _ = server.await;
        viewer.shutdown().await;
        relay.shutdown().await;
        // The viewer's events end with it.
        let rest = tokio::time::timeout(Duration::from_secs(5), async { while events.next().await.is_some() {} }).await;
        assert!(rest.is_ok(), "the event stream ends after shutdown");
        (ports, relay_port)
    });
    // Nothing left running: its threads are gone and its ports can be bound again.
    assert!(
        eventually(Duration::from_secs(5), || threads() <= baseline),
        "{} threads, {baseline} before",
        threads()
    );
    let (quic, http) = viewer_ports;
    assert!(UdpSocket::bind(quic).is_ok(), "the viewer's QUIC port {quic} is free");
    assert!(UdpSocket::bind(relay_port).is_ok(), "the relay's QUIC port is free");
    assert!(TcpListener::bind(http).is_ok(), "the viewer's HTTP port {http} is free");
    drop(runtime);
}

#[test]
fn an_app_broadcasts_the_mpeg_ts_of_its_own_encoder_and_a_viewer_plays_it() {
    let dir = test_dir("library-ts");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // The app's encoder: H.264 High 640x360 + AAC in MPEG-TS, in real time.
        let (_pusher, stdout) = shoal_tests::pusher::pipe(&dir, "encoder").expect("ffmpeg");
        let ts = tokio::process::ChildStdout::from_std(stdout).expect("async pipe");
        let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
        let b = Broadcaster::builder(key)
            .name("from the app")
            .listen(LOOPBACK)
            .source(Source::MpegTs(Box::new(ts)))
            .start()
            .await
            .expect("the broadcaster starts once the input plays");
        let mut b_events = b.events();
        let ticket = b.ticket();
        assert_eq!(ticket.name, "from the app");
        assert!(
            b.stats()
                .media
                .iter()
                .any(|m| m.contains("MPEG-TS from the application")),
            "{:?}",
            b.stats().media
        );
        let viewer = Viewer::builder(ticket).listen(LOOPBACK).start().await.expect("viewer");
        let mut events = viewer.events();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let event = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("a segment within 30 s");
            if matches!(event, Some(ViewerEvent::SegmentPublished { .. })) {
                break;
            }
        }
        let url = viewer.playlist_url().expect("url");
        let played = play(url.clone(), 4).await;
        assert!(
            played.success && played.frames > 50,
            "frames {} errors {:?}",
            played.frames,
            played.errors
        );
        // Passed through untouched: the encoder's own profile and size.
        let streams = {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = tx.send(probe(&url).expect("ffprobe"));
            });
            rx.await.expect("probe thread")
        };
        let video = streams.iter().find(|s| s.codec_name == "h264").expect("video");
        assert_eq!((video.width, video.height), (Some(640), Some(360)), "{video:?}");
        assert_eq!(
            video.profile.as_deref(),
            Some(shoal_tests::pusher::PROFILE),
            "passed through"
        );
        assert!(
            matches!(b_events.next().await, Some(BroadcasterEvent::NeighbourUp { .. })),
            "the broadcaster tells its neighbours"
        );
        // The broadcast ends: the viewer is told.
        b.shutdown().await;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.next().await {
                    Some(ViewerEvent::Ended) => return true,
                    None => return false,
                    _ => {}
                }
            }
        })
        .await;
        assert_eq!(ended, Ok(true), "the viewer hears the end of the stream");
        viewer.shutdown().await;
    });
}
