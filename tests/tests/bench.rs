//! A small real swarm through the benchmark harness (`scripts/bench-swarm` runs the big ones):
//! ten peer processes finding each other by peer exchange must all get the stream in time,
//! with the broadcaster uploading about one copy.

use std::time::Duration;

use shoal_tests::bench::{self, Config};
use shoal_tests::process::test_dir;

#[test]
fn ten_peers_get_the_stream_from_a_source_uploading_about_one_copy() {
    let dir = test_dir("bench-small");
    let config = Config {
        peers: 10,
        duration: Duration::from_secs(20),
        bitrate_kbps: 1000,
        churn_per_min: 0.0,
        emulated: false,
        baseline_origin: true,
        seed: 1,
    };
    let report = bench::run(&config, &dir).unwrap();
    eprintln!("{report}");
    let delivery = report["delivery_ratio"].as_f64().unwrap();
    assert!(delivery >= 0.99, "delivery {delivery}: {report}");
    let source = report["source_upload_ratio"].as_f64().unwrap();
    assert!(source <= 2.0, "the source uploaded {source} copies: {report}");
    assert!(report["latency_ms"]["p95"].as_f64().unwrap() < 2000.0, "{report}");
    assert_eq!(report["gateway_playlist_stalls"], 0, "{report}");
    // Ten HLS players on one origin cost it about ten copies.
    let origin = report["baseline_origin"]["upload_ratio"].as_f64().unwrap();
    assert!(origin > 5.0, "the origin sent only {origin} copies: {report}");
}
