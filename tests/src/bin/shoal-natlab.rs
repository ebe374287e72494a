//! `shoal-natlab` (run through `scripts/natlab`): builds the NAT lab in network namespaces,
//! streams through it, prints one JSON report, and removes everything. `shoal-natlab mapping`
//! runs the port-mapping lab instead, once with PCP/NAT-PMP and once with UPnP only.

use anyhow::Context;
use shoal_tests::natlab::{self, Offer};
use shoal_tests::process::test_dir;

fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1);
    if let Some(why) = natlab::unavailable() {
        println!("natlab: skipped: {why}");
        return Ok(());
    }
    let report = if arg.as_deref() == Some("mapping") {
        let mut both = serde_json::Map::new();
        for (name, pcp_nat_pmp) in [("pcp", true), ("upnp", false)] {
            let dir = test_dir(&format!("natlab-mapping-{name}"));
            let offer = Offer {
                upnp: true,
                pcp_nat_pmp,
            };
            both.insert(name.into(), natlab::run_mapping_lab(&dir, offer)?);
            eprintln!("natlab: logs in {}", dir.display());
        }
        serde_json::Value::Object(both)
    } else {
        let seconds: u64 = match arg {
            Some(s) => s.parse().context("usage: shoal-natlab [SECONDS | mapping]")?,
            None => 25,
        };
        let dir = test_dir("natlab");
        let report = natlab::run_lab(&dir, seconds)?;
        eprintln!("natlab: logs in {}", dir.display());
        report
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
