//! The upload cap (`--upload-kbps`): a token bucket every outgoing chunk stream draws from,
//! so a node never sends faster than its owner allows, whatever its neighbours ask.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Pacer {
    bytes_per_s: f64,
    burst: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl Pacer {
    pub fn new(kbps: u64) -> Self {
        let bytes_per_s = kbps as f64 * 1000.0 / 8.0;
        // A quarter second of burst, and at least one whole chunk.
        let burst = (bytes_per_s / 4.0).max(32.0 * 1024.0);
        Pacer {
            bytes_per_s,
            burst,
            bucket: Mutex::new((burst, Instant::now())),
        }
    }

    /// How long to wait before `bytes` may go out; the bytes are taken from the bucket now.
    fn reserve(&self, bytes: usize) -> Duration {
        let mut guard = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *guard;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.bytes_per_s).min(self.burst);
        *last = now;
        *tokens -= bytes as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.bytes_per_s)
        }
    }

    /// `--upload-kbps 0`: watch without uploading any chunk.
    pub fn allows_nothing(&self) -> bool {
        self.bytes_per_s <= 0.0
    }

    pub async fn take(&self, bytes: usize) {
        if self.allows_nothing() {
            return std::future::pending().await;
        }
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_turns_into_waiting_time_at_the_set_rate() {
        let pacer = Pacer::new(800); // 100 kB/s, 32 KiB burst
        assert_eq!(pacer.reserve(32 * 1024), Duration::ZERO);
        let wait = pacer.reserve(50_000);
        assert!(
            wait > Duration::from_millis(490) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }
}
