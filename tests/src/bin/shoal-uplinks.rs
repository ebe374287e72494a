//! `shoal-uplinks` (run through `scripts/uplinks`): builds the shaped-uplink lab in network
//! namespaces, streams through it, prints one JSON report, and removes everything.
//!
//! `shoal-uplinks [--declare] [--queue-ms 400] [--seconds 60] [--bitrate-kbps 2000]
//! [--household N] [--household-tcp cubic|bbr|reno] 1000,4000,1000,4000,10000,1000,4000,10000` (the household: by default the
//! first of the strongest viewers)

use anyhow::Context;
use shoal_tests::process::test_dir;
use shoal_tests::uplinks::{self, Config};

const USAGE: &str = "usage: scripts/uplinks [--declare] [--queue-ms 400] [--seconds 60] \
[--bitrate-kbps 2000] [--household N] [--household-tcp cubic|bbr|reno] [KBPS,KBPS,...]
  viewers' uplinks in join order (default 1000,4000,1000,4000,10000,1000,4000,10000);
  the household is by default the first of the strongest viewers. Needs root.";

fn main() -> anyhow::Result<()> {
    if let Some(why) = shoal_tests::natlab::unavailable() {
        println!("uplinks: skipped: {why}");
        return Ok(());
    }
    let mut config = Config {
        uplinks_kbps: vec![1000, 4000, 1000, 4000, 10000, 1000, 4000, 10000],
        queue_ms: 400,
        bitrate_kbps: 2000,
        seconds: 60,
        declare: false,
        household: usize::MAX,
        household_tcp: "cubic".into(),
        tcp_before: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} takes a value"));
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--declare" => config.declare = true,
            "--queue-ms" => config.queue_ms = value("--queue-ms")?.parse()?,
            "--seconds" => config.seconds = value("--seconds")?.parse()?,
            "--bitrate-kbps" => config.bitrate_kbps = value("--bitrate-kbps")?.parse()?,
            "--household" => config.household = value("--household")?.parse()?,
            "--household-tcp" => config.household_tcp = value("--household-tcp")?,
            flag if flag.starts_with('-') => anyhow::bail!("unknown flag {flag}\n{USAGE}"),
            list => {
                config.uplinks_kbps = list
                    .split(',')
                    .map(|k| k.trim().parse().with_context(|| format!("{k:?} is not kbit/s")))
                    .collect::<anyhow::Result<_>>()?
            }
        }
    }
    if config.household == usize::MAX {
        // The first of the strongest: a viewer that relays at least one copy.
        let most = config.uplinks_kbps.iter().max().copied().unwrap_or(0);
        config.household = config.uplinks_kbps.iter().position(|k| *k == most).unwrap_or(0);
    }
    anyhow::ensure!(
        config.household < config.uplinks_kbps.len(),
        "--household names viewer {} of {}",
        config.household,
        config.uplinks_kbps.len()
    );
    let dir = test_dir("uplinks");
    let report = uplinks::run_lab(&dir, &config)?;
    eprintln!("uplinks: logs in {}", dir.display());
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
