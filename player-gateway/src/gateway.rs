//! The gateway's state: the assembler that turns verified chunks into parts and segments,
//! who is waiting for the next one, and what the stream's segments measured (latency,
//! skips, playlist stalls). The HTTP routes (`http.rs`) only read it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_peer::net::stats::{Percentiles, Snapshot, Stats, percentiles};
use tokio::sync::{broadcast, watch};

use crate::assembler::{Assembler, Segment};
use crate::playlist::Latency;
use crate::viewer::ViewerEvent;

/// Per-segment latency samples kept.
const SEGMENT_SAMPLES: usize = 600;

pub struct Gateway {
    pub name: String,
    pub latency: Latency,
    pub stats: Arc<Stats>,
    assembler: Mutex<Assembler>,
    /// Bumped whenever a segment is published.
    updated: watch::Sender<u64>,
    /// Segment available − its first chunk's broadcaster timestamp, ms.
    segment_latency_ms: Mutex<VecDeque<f64>>,
    /// When the newest segment became available (local µs), and how often the playlist
    /// went without a new one for longer than `STALL_AFTER_US`.
    stalls: Mutex<(Option<u64>, u64)>,
    events: broadcast::Sender<ViewerEvent>,
    /// Segments are not flowing (none yet, or none for a long while): the next one is "live".
    quiet: std::sync::atomic::AtomicBool,
}

/// The gateway's stats: the swarm's, and what its playlist served (`/stats.json`,
/// `--stats-json`, `/metrics`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GatewayStats {
    /// The swarm node's stats; in the JSON their keys sit beside these.
    #[serde(flatten)]
    pub swarm: Snapshot,
    /// The stream's name.
    pub stream: String,
    /// What the playlist published.
    pub segments: Segments,
    /// Broadcaster timestamp of a segment's start → the segment servable here.
    pub segment_latency_ms: Percentiles,
}

/// The segments this gateway's playlist published.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Segments {
    /// Segments published since start (the newest media sequence number + 1).
    pub published: u64,
    /// Segments the swarm could not complete in time.
    pub skipped: u64,
    /// Times the playlist went more than 2.5 s without a new segment before the stream ended.
    pub stalls: u64,
    /// The broadcaster ended the stream (its last chunk said so).
    pub ended: bool,
    /// The newest ten, newest first.
    pub recent: Vec<SegmentStats>,
}

/// One published segment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SegmentStats {
    /// Its media sequence number in the playlist.
    pub msn: u64,
    /// Its size, bytes.
    pub bytes: usize,
    /// Its media duration, seconds.
    pub duration_s: f64,
    /// Its first chunk's broadcaster timestamp → the segment servable here, ms.
    pub latency_ms: u64,
    /// Its last chunk's broadcaster timestamp → the segment servable here.
    pub swarm_latency_ms: u64,
}

/// A playlist that gets no new segment for this long has stalled its players.
const STALL_AFTER_US: u64 = 2_500_000;
pub(crate) const STALL_AFTER: Duration = Duration::from_micros(STALL_AFTER_US);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gateway {
    pub fn new(name: String, latency: Latency, stats: Arc<Stats>, events: broadcast::Sender<ViewerEvent>) -> Arc<Self> {
        Arc::new(Gateway {
            name,
            latency,
            stats,
            assembler: Mutex::new(Assembler::default()),
            updated: watch::channel(0).0,
            segment_latency_ms: Mutex::new(VecDeque::new()),
            stalls: Mutex::default(),
            events,
            quiet: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Feeds a verified chunk to the assembler, wakes requests waiting for a part, and tells
    /// what changed (segments, skips, a new epoch, the end).
    pub fn push(&self, chunk: shoal_proto::Chunk, now_us: u64) {
        let mut a = lock(&self.assembler);
        let before = a.segments().back().map(|s| s.msn);
        let (epoch, skipped, ended) = (a.epoch(), a.skipped, a.ended);
        if a.push(chunk, now_us) == 0 {
            return;
        }
        let tell = |e| {
            let _ = self.events.send(e);
        };
        if let Some(new) = a.epoch().filter(|_| epoch.is_some() && a.epoch() != epoch) {
            tell(ViewerEvent::NewEpoch { epoch: new });
        }
        for _ in skipped..a.skipped {
            tell(ViewerEvent::SegmentSkipped);
        }
        self.updated.send_modify(|n| *n += 1);
        let new: Vec<&Segment> = a
            .segments()
            .iter()
            .filter(|s| before.is_none_or(|b| s.msn > b))
            .collect();
        let mut samples = lock(&self.segment_latency_ms);
        let mut stalls = lock(&self.stalls);
        for s in new {
            if stalls
                .0
                .is_some_and(|last| s.complete_us.saturating_sub(last) > STALL_AFTER_US)
            {
                stalls.1 += 1;
            }
            stalls.0 = Some(s.complete_us);
            if samples.len() == SEGMENT_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(s.complete_us.saturating_sub(s.start_us) as f64 / 1000.0);
            tracing::debug!(
                msn = s.msn,
                bytes = s.data.len(),
                duration = s.duration_s,
                "segment ready"
            );
            if self.quiet.swap(false, std::sync::atomic::Ordering::Relaxed) {
                tell(ViewerEvent::Live);
            }
            tell(ViewerEvent::SegmentPublished {
                msn: s.msn,
                duration: Duration::from_secs_f64(s.duration_s.max(0.0)),
                latency: Duration::from_micros(s.complete_us.saturating_sub(s.start_us)),
            });
        }
        if a.ended && !ended {
            tell(ViewerEvent::Ended);
        }
    }

    /// When the newest segment became available (local µs), and whether the stream ended.
    pub fn last_segment(&self) -> Option<(u64, bool)> {
        let last = lock(&self.stalls).0?;
        Some((last, lock(&self.assembler).ended))
    }

    /// The playlist has not moved for long: the next segment makes the stream live again.
    pub fn went_offline(&self) {
        self.quiet.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The assembler, locked: what the playlist, segments and parts are read from.
    pub fn assembler(&self) -> MutexGuard<'_, Assembler> {
        lock(&self.assembler)
    }

    /// Waits up to `limit` for `ready` to hold of the assembler; tells whether it did.
    pub async fn wait_for(&self, limit: Duration, ready: impl Fn(&Assembler) -> bool) -> bool {
        let mut updates = self.updated.subscribe();
        let wait = updates.wait_for(|_| ready(&lock(&self.assembler)));
        tokio::time::timeout(limit, wait).await.is_ok_and(|r| r.is_ok())
    }

    pub fn snapshot(&self) -> GatewayStats {
        let a = lock(&self.assembler);
        GatewayStats {
            swarm: self.stats.snapshot(),
            stream: self.name.clone(),
            segments: Segments {
                published: a.segments().back().map_or(0, |s| s.msn + 1),
                skipped: a.skipped,
                stalls: lock(&self.stalls).1,
                ended: a.ended,
                recent: a
                    .segments()
                    .iter()
                    .rev()
                    .take(10)
                    .map(|s| SegmentStats {
                        msn: s.msn,
                        bytes: s.data.len(),
                        duration_s: s.duration_s,
                        latency_ms: s.complete_us.saturating_sub(s.start_us) / 1000,
                        swarm_latency_ms: s.complete_us.saturating_sub(s.end_us) / 1000,
                    })
                    .collect(),
            },
            segment_latency_ms: percentiles(lock(&self.segment_latency_ms).iter().copied().collect()),
        }
    }
}
