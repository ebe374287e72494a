//! What a simulated run is: the audience and its uplinks, the network, the stream, churn,
//! hostile peers, and (optionally) the one machine's CPU they share.

use shoal_core::limits;

use super::cpu::CpuConfig;
use super::sender::SenderModel;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub peers: usize,
    pub duration_s: u64,
    pub bitrate_kbps: u64,
    pub rtt_ms: u64,
    pub jitter_ms: u64,
    pub loss: f64,
    pub churn_per_min: f64,
    pub malicious: f64,
    /// (share of peers, upload as a multiple of the bitrate).
    pub upload_mix: Vec<(f64, f64)>,
    pub source_upload_x: f64,
    /// Peers are not told their upload (their links still have `upload_mix`'s rate): they
    /// learn it, as `shoal-peer` without `--upload-kbps` does (or, with the `greedy` sender,
    /// take the default number of children, as before the real-uplinks issue).
    pub upload_unknown: bool,
    /// Depth of the household router's queue in front of every uplink, ms (`tc tbf …
    /// latency`); 0 for the model before it: nodes send at exactly their uplink's rate.
    pub router_queue_ms: u64,
    /// kB the router holds beyond `router_queue_ms` of its rate (`tc tbf … burst`).
    pub router_burst_kb: u64,
    /// The congestion control nodes run.
    pub sender: SenderModel,
    /// The uplink controllers read one-way delays (receivers echo the nodes' stamps, as
    /// `shoal-peer` does), not only round trips (which carry the receiver's own uplink queue
    /// on the ACK's way back).
    pub one_way_delay: bool,
    /// Share of viewers whose household uploads in bulk through the same router now and
    /// then (20 s on, 40 s off, Cubic-like).
    pub cross_traffic: f64,
    pub deadline_ms: u64,
    pub seed: u64,
    pub fps: u64,
    pub segment_ms: u64,
    /// Peers join spread over the first this-many seconds.
    pub join_spread_s: u64,
    /// How long a vanished neighbour takes to notice (the nodes' QUIC idle timeout).
    pub detect_ms: u64,
    /// Every node shares this machine's cores (None: each has its own).
    pub cpu: Option<CpuConfig>,
    /// Viewers that upload nothing (the lab's gateway, `--upload-kbps 0`), joined first and
    /// unshaped; the report says what a gateway on them would have published.
    pub watchers: usize,
    /// The lab's way to join: these uplinks (multiples of the bitrate) in this order, one
    /// every `join_every_ms` (instead of `peers` drawn from `upload_mix`).
    pub join_uplinks: Option<Vec<f64>>,
    pub join_every_ms: u64,
    /// Households that upload in given periods: (viewer in join order, [(start s, end s)]).
    pub households: Vec<(usize, Vec<(u64, u64)>)>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            peers: 100,
            duration_s: 120,
            bitrate_kbps: 2000,
            rtt_ms: 50,
            jitter_ms: 10,
            loss: 0.0,
            churn_per_min: 0.0,
            malicious: 0.0,
            upload_mix: vec![(0.3, 0.5), (0.5, 2.0), (0.2, 5.0)],
            source_upload_x: 5.0,
            upload_unknown: true,
            router_queue_ms: 400,
            router_burst_kb: 0,
            one_way_delay: true,
            sender: SenderModel::Controlled,
            cross_traffic: 0.0,
            deadline_ms: 3000,
            seed: 1,
            fps: 30,
            segment_ms: 1000,
            join_spread_s: 10,
            detect_ms: limits::IDLE_TIMEOUT.as_millis() as u64,
            cpu: None,
            watchers: 0,
            join_uplinks: None,
            join_every_ms: 500,
            households: Vec::new(),
        }
    }
}

/// Parses `0.3:0.5,0.5:2,0.2:5`.
pub fn parse_upload_mix(s: &str) -> Result<Vec<(f64, f64)>, String> {
    let mix: Vec<(f64, f64)> = s
        .split(',')
        .map(|part| {
            let (share, multiple) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not share:multiple"))?;
            Ok((
                share.trim().parse().map_err(|_| format!("bad share {share:?}"))?,
                multiple
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad multiple {multiple:?}"))?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let total: f64 = mix.iter().map(|m| m.0).sum();
    if mix.is_empty() || (total - 1.0).abs() > 0.01 || mix.iter().any(|m| m.0 < 0.0 || m.1 < 0.0) {
        return Err(format!(
            "upload mix shares must be ≥ 0 and add up to 1 (they add up to {total})"
        ));
    }
    Ok(mix)
}

/// Parses `0.5,2,5` (uplinks as multiples of the bitrate, in join order).
pub fn parse_join_uplinks(s: &str) -> Result<Vec<f64>, String> {
    s.split(',')
        .map(|m| match m.trim().parse::<f64>() {
            Ok(m) if m >= 0.0 => Ok(m),
            _ => Err(format!("{m:?} is not a multiple of the bitrate")),
        })
        .collect()
}

/// Parses `4:0-28:50-62` (viewer 4's household uploads from 0 s to 28 s and 50 s to 62 s).
pub fn parse_household(s: &str) -> Result<(usize, Vec<(u64, u64)>), String> {
    let mut parts = s.split(':');
    let viewer = parts
        .next()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{s:?} does not start with a viewer's index"))?;
    let periods = parts
        .map(|p| {
            let (a, b) = p.split_once('-').ok_or_else(|| format!("{p:?} is not START-END"))?;
            match (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
                (Ok(a), Ok(b)) if a < b => Ok((a, b)),
                _ => Err(format!("{p:?} is not START-END in whole seconds, START < END")),
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    if periods.is_empty() {
        return Err(format!("{s:?} gives no period"));
    }
    Ok((viewer, periods))
}
