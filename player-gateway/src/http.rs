//! The gateway's HTTP face on localhost: the HLS playlist and segments, the stats as JSON and
//! Prometheus text, and a page to start from.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};
use shoal_peer::stats::{Stats, percentiles};
use tokio::sync::watch;

use crate::assembler::{Assembler, Segment};
use crate::playlist::{self, Latency};

/// How long a playlist request waits for the first segment before answering 503.
const FIRST_SEGMENT_WAIT: Duration = Duration::from_secs(10);
/// How long a blocking playlist reload or a hinted part waits (three target durations).
const BLOCKING_WAIT: Duration = Duration::from_secs(3);
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
}

/// A playlist that gets no new segment for this long has stalled its players.
const STALL_AFTER_US: u64 = 2_500_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gateway {
    pub fn new(name: String, latency: Latency, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Gateway {
            name,
            latency,
            stats,
            assembler: Mutex::new(Assembler::default()),
            updated: watch::channel(0).0,
            segment_latency_ms: Mutex::new(VecDeque::new()),
            stalls: Mutex::default(),
        })
    }

    /// Feeds a verified chunk to the assembler and wakes requests waiting for a part.
    pub fn push(&self, chunk: shoal_proto::Chunk, now_us: u64) {
        let mut a = lock(&self.assembler);
        let before = a.segments().back().map(|s| s.msn);
        if a.push(chunk, now_us) == 0 {
            return;
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
        }
    }

    /// Waits up to `limit` for `ready` to hold of the assembler; tells whether it did.
    async fn wait_for(&self, limit: Duration, ready: impl Fn(&Assembler) -> bool) -> bool {
        let mut updates = self.updated.subscribe();
        let wait = updates.wait_for(|_| ready(&lock(&self.assembler)));
        tokio::time::timeout(limit, wait).await.is_ok_and(|r| r.is_ok())
    }

    pub fn snapshot(&self) -> Value {
        let mut stats = self.stats.snapshot();
        let a = lock(&self.assembler);
        stats["stream"] = json!(self.name);
        stats["segments"] = json!({
            "published": a.segments().back().map_or(0, |s| s.msn + 1),
            "skipped": a.skipped,
            "stalls": lock(&self.stalls).1,
            "ended": a.ended,
            "recent": a.segments().iter().rev().take(10).map(|s| json!({
                "msn": s.msn,
                "bytes": s.data.len(),
                "duration_s": s.duration_s,
                "latency_ms": s.complete_us.saturating_sub(s.start_us) / 1000,
                "swarm_latency_ms": s.complete_us.saturating_sub(s.end_us) / 1000,
            })).collect::<Vec<_>>(),
        });
        stats["segment_latency_ms"] = percentiles(lock(&self.segment_latency_ms).iter().copied().collect());
        stats
    }
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/{asset}", get(asset))
        .route("/live.m3u8", get(live_playlist))
        .route("/seg/{name}", get(segment))
        .route("/part/{name}", get(part))
        .route("/stats.json", get(stats_json))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

/// `_HLS_msn` / `_HLS_part`: a low-latency player asking for the playlist once it lists
/// that part (blocking playlist reload).
#[derive(serde::Deserialize)]
struct Blocking {
    #[serde(rename = "_HLS_msn")]
    msn: Option<u64>,
    #[serde(rename = "_HLS_part")]
    part: Option<usize>,
}

async fn live_playlist(State(g): State<Arc<Gateway>>, Query(blocking): Query<Blocking>) -> Response {
    // Players that ignore parts need a whole segment to start with.
    if !g.wait_for(FIRST_SEGMENT_WAIT, |a| !a.segments().is_empty()).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "the stream has not reached this gateway yet\n",
        )
            .into_response();
    }
    if let Some(msn) = blocking.msn {
        // Answer once the part exists (or the stream moved past it), or after a while anyway.
        g.wait_for(BLOCKING_WAIT, |a| lists(a, msn, blocking.part)).await;
    }
    let body = playlist::render(&lock(&g.assembler), g.latency);
    (
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Whether the playlist lists segment `msn` whole, or its part `part`.
fn lists(a: &Assembler, msn: u64, part: Option<usize>) -> bool {
    if a.ended || a.segments().back().is_some_and(|s| s.msn >= msn) {
        return true;
    }
    match (a.open_segment(), part) {
        (Some(open), _) if open.msn > msn => true,
        (Some(open), Some(part)) => open.msn == msn && open.parts.len() > part,
        _ => false,
    }
}

fn media(data: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "video/mp2t"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        data,
    )
        .into_response()
}

async fn segment(State(g): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    let Some(msn) = name.strip_suffix(".ts").and_then(|n| n.parse::<u64>().ok()) else {
        return (StatusCode::NOT_FOUND, "no such segment\n").into_response();
    };
    let data = lock(&g.assembler).segment(msn).map(|s| s.data.clone());
    match data {
        Some(data) => media(data),
        None => (StatusCode::NOT_FOUND, "segment is not (or no longer) available\n").into_response(),
    }
}

/// `/part/MSN.INDEX.ts`; the part the playlist hints at next is waited for.
async fn part(State(g): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    let parsed = name
        .strip_suffix(".ts")
        .and_then(|n| n.split_once('.'))
        .and_then(|(m, i)| Some((m.parse::<u64>().ok()?, i.parse::<usize>().ok()?)));
    let Some((msn, index)) = parsed else {
        return (StatusCode::NOT_FOUND, "no such part\n").into_response();
    };
    let find = |a: &Assembler| a.part(msn, index).map(|p| p.data.clone());
    let hinted = |a: &Assembler| {
        a.next_part()
            .is_some_and(|(m, i)| (m, i) == (msn, index) || (m + 1, 0) == (msn, index))
    };
    let mut data = find(&lock(&g.assembler));
    if data.is_none() && hinted(&lock(&g.assembler)) && g.wait_for(BLOCKING_WAIT, |a| find(a).is_some()).await {
        data = find(&lock(&g.assembler));
    }
    match data {
        Some(data) => media(data),
        None => (StatusCode::NOT_FOUND, "part is not (or no longer) available\n").into_response(),
    }
}

async fn stats_json(State(g): State<Arc<Gateway>>) -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], axum::Json(g.snapshot())).into_response()
}

async fn metrics(State(g): State<Arc<Gateway>>) -> Response {
    let s = g.snapshot();
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, samples: Vec<(String, Value)>| {
        out.push_str(&format!("# HELP shoal_{name} {help}\n# TYPE shoal_{name} {kind}\n"));
        for (labels, value) in samples {
            if let Some(v) = value.as_f64() {
                out.push_str(&format!("shoal_{name}{labels} {v}\n"));
            }
        }
    };
    let by_kind = |v: &Value| {
        vec![
            ("{kind=\"data\"}".to_string(), v["data"].clone()),
            ("{kind=\"control\"}".to_string(), v["control"].clone()),
        ]
    };
    metric(
        "bytes_received_total",
        "Bytes received from neighbours.",
        "counter",
        by_kind(&s["bytes_in"]),
    );
    metric(
        "bytes_sent_total",
        "Bytes sent to neighbours.",
        "counter",
        by_kind(&s["bytes_out"]),
    );
    metric(
        "chunks_verified_total",
        "Chunks received that verified and were new.",
        "counter",
        vec![(String::new(), s["chunks"]["verified"].clone())],
    );
    metric(
        "chunks_duplicate_total",
        "Chunks received again.",
        "counter",
        vec![(String::new(), s["chunks"]["duplicate"].clone())],
    );
    metric(
        "chunks_late_total",
        "Chunks refused as older than the window.",
        "counter",
        vec![(String::new(), s["chunks"]["late"].clone())],
    );
    let rejected = s["chunks"]["rejected"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    metric(
        "chunks_rejected_total",
        "Chunks or messages refused, by reason.",
        "counter",
        rejected,
    );
    let connected = s["neighbours"]
        .as_array()
        .map_or(0, |n| n.iter().filter(|n| n["connected"] == true).count());
    metric(
        "neighbours",
        "Connected neighbours.",
        "gauge",
        vec![(String::new(), json!(connected))],
    );
    let quantiles = |v: &Value| {
        ["p50", "p95", "p99"]
            .iter()
            .map(|q| (format!("{{quantile=\"0.{}\"}}", &q[1..]), v[*q].clone()))
            .collect()
    };
    metric(
        "chunk_latency_ms",
        "Broadcaster timestamp to chunk held verified.",
        "gauge",
        quantiles(&s["latency_ms"]),
    );
    let histogram = &s["latency_histogram_ms"];
    let buckets = histogram["buckets"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|bucket| {
                    let le = bucket["le_ms"]
                        .as_f64()
                        .map_or("+Inf".to_string(), |ms| (ms / 1000.0).to_string());
                    (format!("_bucket{{le=\"{le}\"}}"), bucket["count"].clone())
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut samples = buckets;
    samples.push((
        "_sum".to_string(),
        json!(histogram["sum_ms"].as_f64().unwrap_or(0.0) / 1000.0),
    ));
    samples.push(("_count".to_string(), histogram["count"].clone()));
    metric(
        "chunk_latency_seconds",
        "Broadcaster timestamp to chunk held verified, every chunk since start.",
        "histogram",
        samples,
    );
    metric(
        "startup_seconds",
        "Joining to holding a whole segment.",
        "gauge",
        vec![(String::new(), json!(s["startup_ms"].as_f64().map(|ms| ms / 1000.0)))],
    );
    metric(
        "playlist_stalls_total",
        "Times the playlist went more than 2.5 s without a new segment before the stream ended.",
        "counter",
        vec![(String::new(), s["segments"]["stalls"].clone())],
    );
    metric(
        "segment_latency_ms",
        "Broadcaster timestamp of a segment's start to the segment being servable.",
        "gauge",
        quantiles(&s["segment_latency_ms"]),
    );
    metric(
        "segments_published_total",
        "Segments served in the playlist.",
        "counter",
        vec![(String::new(), s["segments"]["published"].clone())],
    );
    metric(
        "segments_skipped_total",
        "Segments the swarm could not complete in time.",
        "counter",
        vec![(String::new(), s["segments"]["skipped"].clone())],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The player page, with the stream's name and the gateway's latency mode filled in.
async fn index(State(g): State<Arc<Gateway>>) -> Html<String> {
    let name = g.name.replace('&', "&amp;").replace('<', "&lt;").replace('"', "&quot;");
    let config = json!({"name": g.name, "lowLatency": g.latency == Latency::Low})
        .to_string()
        .replace("</", "<\\/");
    Html(
        include_str!("../assets/index.html")
            .replace("{{NAME}}", &name)
            .replace("{{CONFIG}}", &config),
    )
}

/// The page's script, style and hls.js, from inside the binary: the page needs no internet.
async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "player.js" => (include_str!("../assets/player.js"), "text/javascript"),
        "player.css" => (include_str!("../assets/player.css"), "text/css"),
        "hls.min.js" => (include_str!("../assets/hls.min.js"), "text/javascript"),
        _ => return (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    };
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=3600")],
        body,
    )
        .into_response()
}
