//! The baseline shoal is measured against: one plain HTTP origin serving the same HLS to as
//! many players as the swarm has, each polling the playlist once a second (the target
//! duration) and fetching every new segment, as HLS players do. Counts what the origin sent.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::swarm::http_fetch;

const POLL: Duration = Duration::from_secs(1);

pub struct Players {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

/// Starts `count` players on `base` (`http://host:port`), each on its own thread.
pub fn start(base: &str, count: usize) -> Players {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..count)
        .map(|_| {
            let (base, stop) = (base.to_string(), stop.clone());
            std::thread::spawn(move || play(&base, &stop))
        })
        .collect();
    Players { stop, threads }
}

impl Players {
    /// Stops the players; returns the bytes the origin sent them, headers included.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap_or(0)).sum()
    }
}

/// One player: joins at the live edge, then fetches every segment that appears.
fn play(base: &str, stop: &AtomicBool) -> u64 {
    let mut fetched = HashSet::new();
    let mut bytes = 0u64;
    let mut joined = false;
    while !stop.load(Relaxed) {
        let started = Instant::now();
        if let Ok((200, playlist, sent)) = http_fetch(&format!("{base}/live.m3u8")) {
            bytes += sent as u64;
            let text = String::from_utf8_lossy(&playlist);
            for uri in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
                if fetched.insert(uri.to_string())
                    && joined
                    && let Ok((_, _, sent)) = http_fetch(&format!("{base}/{uri}"))
                {
                    bytes += sent as u64;
                }
            }
            joined = true;
        }
        std::thread::sleep(POLL.saturating_sub(started.elapsed()));
    }
    bytes
}
