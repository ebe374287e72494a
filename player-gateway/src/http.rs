//! The gateway's HTTP face on localhost: the HLS playlist and segments, the stats as JSON and
//! Prometheus text, and a page to start from.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use shoal_peer::stats::{Stats, percentiles};
use tokio::sync::watch;

use crate::assembler::{Assembler, Segment};
use crate::playlist;

/// How long a playlist request waits for the first segment before answering 503.
const FIRST_SEGMENT_WAIT: Duration = Duration::from_secs(10);
/// Per-segment latency samples kept.
const SEGMENT_SAMPLES: usize = 600;

pub struct Gateway {
    pub name: String,
    pub stats: Arc<Stats>,
    assembler: Mutex<Assembler>,
    /// Bumped whenever a segment is published.
    updated: watch::Sender<u64>,
    /// Segment available − its first chunk's broadcaster timestamp, ms.
    segment_latency_ms: Mutex<VecDeque<f64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gateway {
    pub fn new(name: String, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Gateway {
            name,
            stats,
            assembler: Mutex::new(Assembler::default()),
            updated: watch::channel(0).0,
            segment_latency_ms: Mutex::new(VecDeque::new()),
        })
    }

    /// Feeds a verified chunk to the assembler and wakes waiting playlist requests.
    pub fn push(&self, chunk: shoal_proto::Chunk, now_us: u64) {
        let mut a = lock(&self.assembler);
        let before = a.segments().back().map(|s| s.msn);
        if a.push(chunk, now_us) == 0 {
            return;
        }
        let new: Vec<&Segment> = a
            .segments()
            .iter()
            .filter(|s| before.is_none_or(|b| s.msn > b))
            .collect();
        let mut samples = lock(&self.segment_latency_ms);
        for s in new {
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
        self.updated.send_modify(|n| *n += 1);
    }

    pub fn snapshot(&self) -> Value {
        let mut stats = self.stats.snapshot();
        let a = lock(&self.assembler);
        stats["stream"] = json!(self.name);
        stats["segments"] = json!({
            "published": a.segments().back().map_or(0, |s| s.msn + 1),
            "skipped": a.skipped,
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
        .route("/live.m3u8", get(live_playlist))
        .route("/seg/{name}", get(segment))
        .route("/stats.json", get(stats_json))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

async fn live_playlist(State(g): State<Arc<Gateway>>) -> Response {
    let mut updates = g.updated.subscribe();
    let ready = |g: &Gateway| !lock(&g.assembler).segments().is_empty();
    if !ready(&g) {
        let wait = updates.wait_for(|_| ready(&g));
        if tokio::time::timeout(FIRST_SEGMENT_WAIT, wait).await.is_err() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "the stream has not reached this gateway yet\n",
            )
                .into_response();
        }
    }
    let body = playlist::render(&lock(&g.assembler));
    (
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn segment(State(g): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    let Some(msn) = name.strip_suffix(".ts").and_then(|n| n.parse::<u64>().ok()) else {
        return (StatusCode::NOT_FOUND, "no such segment\n").into_response();
    };
    let data = lock(&g.assembler).segment(msn).map(|s| s.data.clone());
    match data {
        Some(data) => (
            [
                (header::CONTENT_TYPE, "video/mp2t"),
                (header::CACHE_CONTROL, "max-age=60"),
            ],
            data,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "segment is not (or no longer) available\n").into_response(),
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

async fn index(State(g): State<Arc<Gateway>>) -> Html<String> {
    let name = g.name.replace('&', "&amp;").replace('<', "&lt;");
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>{name} — shoal</title>\
         <h1>{name}</h1><p>Live stream: <a href=\"/live.m3u8\">/live.m3u8</a> — open it in VLC, mpv or ffplay.</p>\
         <video src=\"/live.m3u8\" controls autoplay muted style=\"max-width:100%\"></video>\
         <p><a href=\"/stats.json\">stats</a> · <a href=\"/metrics\">metrics</a></p>"
    ))
}
