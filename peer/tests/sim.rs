//! A small simulated swarm, run on every test pass: the swarm core must deliver the stream to
//! everyone while the source uploads about one copy, and must not when the physics forbid it.

use shoal_peer::sim::{Sim, SimConfig};

fn run(cfg: SimConfig) -> serde_json::Value {
    Sim::new(cfg).run()
}

#[test]
fn a_hundred_peers_get_the_stream_and_the_source_uploads_it_about_once() {
    let r = run(SimConfig {
        peers: 100,
        duration_s: 60,
        loss: 0.01,
        ..SimConfig::default()
    });
    eprintln!("{r}");
    assert!(r["delivery_ratio"].as_f64().unwrap() >= 0.99, "{r}");
    assert!(r["source_upload_ratio"].as_f64().unwrap() <= 1.5, "{r}");
    assert!(r["latency_ms"]["p50"].as_u64().unwrap() <= 1000, "{r}");
    assert_eq!(r["forged_delivered"], 0);
}

#[test]
fn an_audience_that_cannot_upload_enough_is_not_all_served() {
    // Everyone uploads half the stream: together they cannot carry it.
    let r = run(SimConfig {
        peers: 60,
        duration_s: 30,
        upload_mix: vec![(1.0, 0.5)],
        ..SimConfig::default()
    });
    eprintln!("{r}");
    assert!(r["delivery_ratio"].as_f64().unwrap() < 0.9, "{r}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let cfg = SimConfig {
        peers: 30,
        duration_s: 10,
        loss: 0.02,
        ..SimConfig::default()
    };
    let (mut a, mut b) = (run(cfg.clone()), run(cfg));
    a["wall_s"] = 0.into();
    b["wall_s"] = 0.into();
    assert_eq!(a, b);
}
