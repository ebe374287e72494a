//! The status line at the bottom of a terminal: neighbours, rates in and out, latency,
//! rewritten every second. Only when stderr is a terminal: logs and pipes get plain lines.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::log::{CLEAR_LINE, SHOWN};
use crate::net::stats::{Snapshot, UplinkView};

/// What one second of the status line is made of.
pub struct Now<'a> {
    /// The node's stats snapshot.
    pub stats: &'a Snapshot,
    pub mbps_in: f64,
    pub mbps_out: f64,
}

/// Shows the status line until `cancel`, if stderr is a terminal, from the node's counters
/// as `stats` gives them; `extra` adds what the binary knows besides the swarm (the
/// gateway's segments, the broadcaster's upload).
pub async fn show(stats: impl Fn() -> Snapshot, cancel: CancellationToken, extra: impl Fn(&Now) -> String) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: Option<(u64, u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let s = stats();
        // Out: what the uplink carried (QUIC's count), not what was handed to streams.
        let (bytes_in, bytes_out, now) = (s.bytes_in.total(), s.wire_out.carried_bytes(), Instant::now());
        let rate = |now_bytes: u64, then: u64, at: Instant| {
            now_bytes.saturating_sub(then) as f64 * 8.0 / now.duration_since(at).as_secs_f64().max(0.001) / 1e6
        };
        let (mbps_in, mbps_out) = last.map_or((0.0, 0.0), |(i, o, at)| (rate(bytes_in, i, at), rate(bytes_out, o, at)));
        last = Some((bytes_in, bytes_out, now));
        let neighbours = s.connected_neighbours();
        let latency = s.latency_ms.p50.map_or("–".to_string(), duration);
        let line = format!(
            "{neighbours} neighbours · in {mbps_in:.2} Mbit/s · out {mbps_out:.2} Mbit/s · latency {latency}{}{}",
            s.uplink.as_ref().map_or(String::new(), uplink),
            extra(&Now {
                stats: &s,
                mbps_in,
                mbps_out
            })
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(CLEAR_LINE);
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
        SHOWN.store(true, Relaxed);
    }
    if SHOWN.swap(false, Relaxed) {
        let _ = std::io::stderr().write_all(CLEAR_LINE);
    }
}

/// ` · uplink 3.8 Mbit/s (measured) · yielding`: what the uplink carries and whether shoal
/// is stepping aside for the household.
pub fn uplink(u: &UplinkView) -> String {
    let capacity = match (u.capacity_kbps, u.how.as_str()) {
        (Some(kbps), "measured") => format!("{:.1} Mbit/s", kbps as f64 / 1000.0),
        (Some(kbps), _) => format!("≥ {:.1} Mbit/s", kbps as f64 / 1000.0),
        (None, _) => "unknown".to_string(),
    };
    let doing = if u.yielding {
        " · yielding to other traffic"
    } else if u.probing {
        " · probing"
    } else {
        ""
    };
    format!(" · uplink {capacity}{doing}")
}

/// No extra: the swarm's facts only.
pub fn nothing(_: &Now) -> String {
    String::new()
}

/// `850 ms`, `1.4 s`: what a person reads at a glance.
pub fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}
