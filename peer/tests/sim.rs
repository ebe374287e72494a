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

#[test]
fn a_swarm_on_one_busy_machine_waits_for_its_cores() {
    // Thirty nodes on loopback links; once on cores of their own, once sharing one core that
    // each received chunk keeps busy for 1 ms: all of it once everyone has joined.
    let base = SimConfig {
        peers: 30,
        duration_s: 20,
        rtt_ms: 0,
        jitter_ms: 0,
        upload_mix: vec![(1.0, 50.0)],
        source_upload_x: 50.0,
        ..SimConfig::default()
    };
    let own = run(base.clone());
    let shared = run(SimConfig {
        cpu: Some(shoal_peer::sim::CpuConfig {
            cores: 1,
            other_cores: 0.0,
            wake_us: 35.0,
            chunk_us: 1000.0,
            message_us: 45.0,
        }),
        ..base
    });
    eprintln!("{own}\n{shared}");
    assert!(own.get("cpu").is_none(), "no CPU model unless asked");
    let p95 = |r: &serde_json::Value| r["latency_ms"]["p95"].as_u64().unwrap();
    assert!(
        p95(&shared) > 2 * p95(&own).max(5),
        "queueing for the core shows in latency"
    );
    let cpu = &shared["cpu"];
    let utilisation = cpu["utilisation"].as_f64().unwrap();
    assert!((0.6..=1.0).contains(&utilisation), "{cpu}");
    // A busy node finds several items per wake-up.
    let per_node = &cpu["per_node_s"];
    assert!(
        per_node["wakeups"].as_f64().unwrap() < per_node["chunks"].as_f64().unwrap(),
        "{cpu}"
    );
    assert!(shared["delivery_ratio"].as_f64().unwrap() >= 0.99, "{shared}");
}
