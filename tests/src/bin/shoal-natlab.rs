//! `shoal-natlab` (run through `scripts/natlab`): builds the NAT lab in network namespaces,
//! streams through it, prints one JSON report, and removes everything.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse().context("usage: shoal-natlab [SECONDS]")?,
        None => 25,
    };
    if let Some(why) = shoal_tests::natlab::unavailable() {
        println!("natlab: skipped: {why}");
        return Ok(());
    }
    let dir = shoal_tests::process::test_dir("natlab");
    let report = shoal_tests::natlab::run_lab(&dir, seconds)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("natlab: logs in {}", dir.display());
    Ok(())
}
