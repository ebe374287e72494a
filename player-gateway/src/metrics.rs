//! `/metrics`: the gateway's stats in the Prometheus (OpenMetrics) text format, written by
//! `prometheus-client` from one stats snapshot per scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use shoal_peer::net::stats::{ByKind, Percentiles};

use crate::gateway::GatewayStats;

/// What a scrape answers with: the content type and the text.
pub fn render(stats: GatewayStats) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("shoal");
    registry.register_collector(Box::new(Scrape(stats)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The OpenMetrics text's content type (Prometheus reads it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One snapshot, encoded as metrics when the registry is.
#[derive(Debug)]
struct Scrape(GatewayStats);

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn by_kind(e: &mut DescriptorEncoder, name: &str, help: &str, bytes: ByKind) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (kind, value) in [("data", bytes.data), ("control", bytes.control)] {
        ConstCounter::new(value).encode(family.encode_family(&[("kind", kind)])?)?;
    }
    Ok(())
}

fn quantiles(e: &mut DescriptorEncoder, name: &str, help: &str, p: Percentiles) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (quantile, value) in [("0.50", p.p50), ("0.95", p.p95), ("0.99", p.p99)] {
        if let Some(value) = value {
            ConstGauge::new(value).encode(family.encode_family(&[("quantile", quantile)])?)?;
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let swarm = &s.swarm;
        by_kind(
            &mut e,
            "bytes_received",
            "Bytes received from neighbours.",
            swarm.bytes_in,
        )?;
        by_kind(&mut e, "bytes_sent", "Bytes sent to neighbours.", swarm.bytes_out)?;
        counter(
            &mut e,
            "chunks_verified",
            "Chunks received that verified and were new.",
            swarm.chunks.verified,
        )?;
        counter(
            &mut e,
            "chunks_duplicate",
            "Chunks received again.",
            swarm.chunks.duplicate,
        )?;
        counter(
            &mut e,
            "chunks_late",
            "Chunks refused as older than the window.",
            swarm.chunks.late,
        )?;
        let mut rejected = e.encode_descriptor(
            "chunks_rejected",
            "Chunks or messages refused, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &swarm.chunks.rejected {
            ConstCounter::new(*n).encode(rejected.encode_family(&[("reason", reason.as_str())])?)?;
        }
        gauge(
            &mut e,
            "neighbours",
            "Connected neighbours.",
            swarm.connected_neighbours() as f64,
        )?;
        quantiles(
            &mut e,
            "chunk_latency_ms",
            "Broadcaster timestamp to chunk held verified.",
            swarm.latency_ms,
        )?;
        // The snapshot's buckets are cumulative, the encoder's per bucket.
        let h = &swarm.latency_histogram_ms;
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = h
            .buckets
            .iter()
            .map(|b| {
                let upper = b.le_ms.map_or(f64::INFINITY, |ms| ms / 1000.0);
                let own = b.count.saturating_sub(below);
                below = b.count;
                (upper, own)
            })
            .collect();
        e.encode_descriptor(
            "chunk_latency_seconds",
            "Broadcaster timestamp to chunk held verified, every chunk since start.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum_ms / 1000.0,
            h.count,
            &buckets,
            None,
        )?;
        if let Some(ms) = swarm.startup_ms {
            gauge(
                &mut e,
                "startup_seconds",
                "Joining to holding a whole segment.",
                ms as f64 / 1000.0,
            )?;
        }
        counter(
            &mut e,
            "playlist_stalls",
            "Times the playlist went more than 2.5 s without a new segment before the stream ended.",
            s.segments.stalls,
        )?;
        quantiles(
            &mut e,
            "segment_latency_ms",
            "Broadcaster timestamp of a segment's start to the segment being servable.",
            s.segment_latency_ms,
        )?;
        counter(
            &mut e,
            "segments_published",
            "Segments served in the playlist.",
            s.segments.published,
        )?;
        counter(
            &mut e,
            "segments_skipped",
            "Segments the swarm could not complete in time.",
            s.segments.skipped,
        )
    }
}
