//! The shaped-uplink lab, short (tests/src/uplinks.rs; `scripts/uplinks` runs the whole
//! table): four viewers without `--upload-kbps` behind 1, 4, 10 and 4 Mbit/s home routers with
//! 400 ms queues, a gateway that uploads nothing, and the 10 Mbit/s viewer's household pinging
//! and uploading over TCP (Cubic) through the same router. Runs where network namespaces can
//! be made (root, as in CI); elsewhere it records a skip by name.

use shoal_tests::process::test_dir;
use shoal_tests::skip;
use shoal_tests::uplinks::{self, Config};

#[test]
fn viewers_learn_their_uplinks_and_step_aside_for_the_household() {
    let Some(()) = skip::unless_namespaces("uplinks::viewers_learn_their_uplinks_and_step_aside_for_the_household")
    else {
        return;
    };
    let config = Config {
        uplinks_kbps: vec![1000, 4000, 10000, 4000],
        queue_ms: 400,
        bitrate_kbps: 2000,
        seconds: 40,
        declare: false,
        household: 2,
        household_tcp: "cubic".into(),
        tcp_before: false,
    };
    let dir = test_dir("uplinks");
    let r = uplinks::run_lab(&dir, &config).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    let h = &r["household"];
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    // The household's viewer relays: its uplink carries the swarm, not just its own share.
    assert!(
        num(&h["viewer_upload_kbps"]["before_tcp"]) >= 500.0,
        "the household's viewer relays little: {h}"
    );
    // Its ping gains at most the controller's target over an idle uplink...
    assert!(num(&h["ping_with_shoal_ms"]["p95"]) <= 100.0, "{h}");
    // ...and its TCP upload keeps at least 80 % of what it gets with shoal off.
    assert!(
        num(&h["tcp_started_after_shoal_kbps"]) >= 0.8 * num(&h["tcp_alone_kbps"]),
        "{h}"
    );
    // Every viewer that relays learnt its uplink within 0.7-1.0x, 20 s after it joined (a
    // measurement may read a few percent over the tbf's nominal rate).
    for v in r["viewers"].as_array().unwrap() {
        if num(&v["carried_kbps"]) < 500.0 {
            continue;
        }
        let ratio = num(&v["estimate_at_20s_ratio"]);
        assert!((0.7..=1.05).contains(&ratio), "estimate {ratio} of the uplink: {v}");
    }
    // The swarm formed: the gateway (which relays nothing) played it.
    assert!(num(&r["gateway"]["segments_published"]) >= 30.0, "{r}");
    assert!(num(&r["source_upload_ratio"]) <= 1.5, "{r}");
}
