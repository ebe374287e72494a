//! A small simulated swarm, run on every test pass: the swarm core must deliver the stream to
//! everyone while the source uploads about one copy, and must not when the physics forbid it.

use shoal_sim::{Report, Sim, SimConfig};

fn run(cfg: SimConfig) -> Report {
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
    assert!(r.delivery_ratio >= 0.99, "{r}");
    assert!(r.source_upload_ratio <= 1.5, "{r}");
    assert!(r.latency_ms.p50 <= 1000, "{r}");
    assert_eq!(r.forged_delivered, 0);
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
    assert!(r.delivery_ratio < 0.9, "{r}");
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
    a.wall_s = 0.0;
    b.wall_s = 0.0;
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
        // Loopback, as scripts/bench-swarm: no household routers.
        router_queue_ms: 0,
        ..SimConfig::default()
    };
    let own = run(base.clone());
    let shared = run(SimConfig {
        cpu: Some(shoal_sim::CpuConfig {
            cores: 1,
            other_cores: 0.0,
            wake_us: 35.0,
            chunk_us: 1000.0,
            message_us: 45.0,
        }),
        ..base
    });
    eprintln!("{own}\n{shared}");
    assert!(own.cpu.is_none(), "no CPU model unless asked");
    let p95 = |r: &Report| r.latency_ms.p95;
    assert!(
        p95(&shared) > 2 * p95(&own).max(5),
        "queueing for the core shows in latency"
    );
    let cpu = shared.cpu.as_ref().expect("the CPU model was asked for");
    assert!((0.6..=1.0).contains(&cpu.utilisation), "{shared}");
    // A busy node finds several items per wake-up.
    assert!(cpu.per_node_s.wakeups < cpu.per_node_s.chunks, "{shared}");
    assert!(shared.delivery_ratio >= 0.99, "{shared}");
}

#[test]
fn declared_uplinks_form_a_swarm_even_when_a_weak_viewer_joins_first() {
    // The real-uplinks case: 2 Mbit/s, viewers on 1 / 4 / 10 Mbit/s declaring them. At these
    // seeds a 1 Mbit/s viewer joined first and took every stripe of the source; nobody else
    // could pull past its back-fill or take a stripe from it (delivery 0.14).
    // (The core's rules alone: capacities declared, every node sending at exactly its rate.)
    for seed in [2, 4, 7] {
        let r = run(SimConfig {
            peers: 8,
            duration_s: 60,
            upload_mix: vec![(0.375, 0.5), (0.375, 2.0), (0.25, 5.0)],
            source_upload_x: 50.0,
            upload_unknown: false,
            router_queue_ms: 0,
            seed,
            ..SimConfig::default()
        });
        assert!(r.delivery_ratio >= 0.99, "seed {seed}: {r}");
    }
}

#[test]
fn undeclared_uplinks_behind_deep_router_queues_are_learnt_and_kept_short() {
    // The real-uplinks lab's mix, as users run it: nobody declares an upload, every uplink
    // sits behind a 400 ms router queue. Before the uplink controller the routers stayed
    // full (`--sender greedy`: queue p95 about 380 ms) and some seeds collapsed.
    for seed in [1, 2, 3] {
        let r = run(SimConfig {
            peers: 8,
            duration_s: 45,
            rtt_ms: 1,
            jitter_ms: 0,
            upload_mix: vec![(0.375, 0.5), (0.375, 2.0), (0.25, 5.0)],
            source_upload_x: 50.0,
            seed,
            ..SimConfig::default()
        });
        assert!(r.delivery_ratio >= 0.999, "seed {seed}: {r}");
        assert!(r.source_upload_ratio <= 1.5, "seed {seed}: {r}");
        let queue = r.router_queue_ms.expect("routers are modelled by default");
        assert!(queue.p95 <= 100, "seed {seed}: {r}");
        let learnt = r.capacity_learnt.expect("capacity is learnt by default");
        assert!(learnt.p10 >= 0.7 && learnt.p50 <= 1.05, "seed {seed}: {r}");
    }
}
