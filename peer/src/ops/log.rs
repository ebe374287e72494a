//! Log lines on stderr that do not tear the status line: one is cleared before a log line
//! prints, and the next second redraws it. RUST_LOG picks the level.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// A status line is on screen: log lines must clear it before they print.
pub(crate) static SHOWN: AtomicBool = AtomicBool::new(false);
pub(crate) const CLEAR_LINE: &[u8] = b"\r\x1b[2K";

/// Where log lines go: stderr, clearing the status line first when one is shown.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if SHOWN.load(Relaxed) {
            err.write_all(CLEAR_LINE)?;
        }
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Logs to stderr; RUST_LOG picks the level (default info).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,quinn=warn,quinn_proto=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .with_ansi(ansi)
        .init();
}
