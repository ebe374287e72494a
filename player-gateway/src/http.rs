//! The gateway's HTTP face on localhost: the HLS playlist and segments, the stats as JSON and
//! Prometheus text, and a page to start from.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::json;

use crate::assembler::Assembler;
use crate::gateway::Gateway;
use crate::playlist::{self, Latency};

/// How long a playlist request waits for the first segment before answering 503.
const FIRST_SEGMENT_WAIT: Duration = Duration::from_secs(10);
/// How long a blocking playlist reload or a hinted part waits (three target durations).
const BLOCKING_WAIT: Duration = Duration::from_secs(3);

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
    let body = playlist::render(&g.assembler(), g.latency);
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
    let data = g.assembler().segment(msn).map(|s| s.data.clone());
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
    let mut data = find(&g.assembler());
    if data.is_none() && hinted(&g.assembler()) && g.wait_for(BLOCKING_WAIT, |a| find(a).is_some()).await {
        data = find(&g.assembler());
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
    match crate::metrics::render(g.snapshot()) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot render the metrics\n").into_response(),
    }
}

/// The player page, with the stream's name and the gateway's latency mode filled in, and its
/// base: where the router is mounted (`/`, or `/tv/` under `nest("/tv", …)`), so the page's
/// relative URLs reach this router whatever the prefix.
async fn index(State(g): State<Arc<Gateway>>, OriginalUri(uri): OriginalUri) -> Html<String> {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('"', "&quot;");
    let mut base = uri.path().to_string();
    if !base.ends_with('/') {
        base.push('/');
    }
    let name = escape(&g.name);
    let config = json!({"name": g.name, "lowLatency": g.latency == Latency::Low})
        .to_string()
        .replace("</", "<\\/");
    Html(
        include_str!("../assets/index.html")
            .replace("{{NAME}}", &name)
            .replace("{{BASE}}", &escape(&base))
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
