//! Tests that cannot run on this machine say so by name instead of passing quietly: each
//! skip is written to `SHOAL_SKIPPED_DIR` (set by `scripts/test`), which lists them at the
//! end of the run and fails it when the machine could have run them after all.

use std::path::PathBuf;

/// Where skips are recorded: `SHOAL_SKIPPED_DIR`, else a folder in the system's temp dir.
pub fn dir() -> PathBuf {
    std::env::var_os("SHOAL_SKIPPED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("shoal-skipped-tests"))
}

/// Records that `test` did not run here, and why.
pub fn record(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    let dir = dir();
    let written = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(dir.join(test), format!("{why}\n")));
    if let Err(e) = written {
        eprintln!("cannot record the skip in {}: {e}", dir.display());
    }
}

/// `Some(())` when the network-namespace lab can run; otherwise records the skip of `test`.
/// Use as `let Some(()) = skip::unless_namespaces("…") else { return };`.
pub fn unless_namespaces(test: &str) -> Option<()> {
    match crate::natlab::unavailable() {
        None => Some(()),
        Some(why) => {
            record(test, &why);
            None
        }
    }
}
