//! How a simulated node paces what it sends: the transport's congestion control as it
//! behaves, fed with the round trips and losses the router's queue causes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shoal_core::uplink::{How, Mode, Uplink, UplinkConfig};

/// Which congestion control the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SenderModel {
    /// The core's uplink controller, as the quinn node runs it (since the real-uplinks issue).
    #[default]
    Controlled,
    /// The transport before it: a BBR connection per neighbour, each believing the queue it
    /// stands in is the path (its min-RTT estimate inflates while the queue never drains), so
    /// together they pace above the delivery rate and keep the router queue full, as the lab
    /// showed (ping through a relaying viewer's uplink: 450-515 ms behind a 400 ms queue).
    Greedy,
}

impl std::str::FromStr for SenderModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "controlled" => Ok(SenderModel::Controlled),
            "greedy" => Ok(SenderModel::Greedy),
            _ => Err(format!("unknown sender {s:?} (controlled or greedy)")),
        }
    }
}

pub enum Sender {
    /// Sends at exactly the uplink's rate (the simulator before router queues).
    Exact,
    Greedy(Greedy),
    Controlled(Box<Uplink>),
}

impl Sender {
    /// `declared`: the upload the node was told (`--upload-kbps`), a hard cap.
    pub fn new(model: SenderModel, foreground: bool, declared: Option<f64>, now: Instant) -> Self {
        match model {
            SenderModel::Greedy => Sender::Greedy(Greedy::new(now)),
            SenderModel::Controlled => {
                let cfg = UplinkConfig {
                    mode: if foreground { Mode::Foreground } else { Mode::Background },
                    probe: !foreground,
                    cap_bps: declared,
                    ..UplinkConfig::default()
                };
                Sender::Controlled(Box::new(Uplink::new(cfg, now)))
            }
        }
    }

    /// Rate chunks and padding leave the node at (bit/s). A foreground node's transport
    /// (BBR, alone on its uplink) paces at the uplink's rate.
    pub fn pacing_bps(&self, uplink_bps: f64) -> f64 {
        match self {
            Sender::Exact => uplink_bps,
            Sender::Greedy(g) => g.rate,
            Sender::Controlled(u) => u.pacing_bps().unwrap_or(uplink_bps),
        }
    }

    pub fn sent(&mut self, bytes: usize, held: bool) {
        if let Sender::Controlled(u) = self {
            u.on_sent(bytes, held);
        }
    }

    /// An acknowledgement for bytes sent on `path` at `sent` (a round trip `rtt` sampled,
    /// unless it is a loss report), with `lost` bytes declared lost on the way.
    pub fn acked(&mut self, path: u64, bytes: u64, sent: Instant, rtt: Option<Duration>, lost: u64, now: Instant) {
        match self {
            Sender::Exact => {}
            Sender::Greedy(g) => g.acked(bytes, now),
            Sender::Controlled(u) => {
                if let Some(rtt) = rtt {
                    u.on_rtt(path, rtt, now);
                }
                u.on_acked(path, bytes, sent);
                if lost > 0 {
                    u.on_lost(path, lost);
                }
                u.poll(now);
            }
        }
    }

    /// A one-way delay sample (a receiver echoed a stamp).
    pub fn one_way(&mut self, path: u64, delay: Duration, now: Instant) {
        if let Sender::Controlled(u) = self {
            u.on_one_way(path, delay, now);
        }
    }

    pub fn poll(&mut self, now: Instant) {
        match self {
            Sender::Exact => {}
            Sender::Greedy(g) => g.poll(now),
            Sender::Controlled(u) => u.poll(now),
        }
    }

    pub fn probe_bps(&self) -> f64 {
        match self {
            Sender::Controlled(u) => u.probe_bps(),
            _ => 0.0,
        }
    }

    /// What the core plans children with (see `Uplink::plan_bps`); `None` where nothing is
    /// learnt (the core keeps its declared upload or its defaults).
    pub fn plan_bps(&self) -> Option<u64> {
        match self {
            Sender::Controlled(u) => u.plan_bps().map(|b| b as u64),
            _ => None,
        }
    }

    pub fn capacity_bps(&self) -> Option<f64> {
        match self {
            Sender::Controlled(u) => u.capacity_bps(),
            _ => None,
        }
    }

    /// The uplink's queueing delay as the controller last read it.
    pub fn queue(&self) -> Option<Duration> {
        match self {
            Sender::Controlled(u) => u.report().queue,
            _ => None,
        }
    }

    /// Whether the uplink was seen full (its capacity measured, not only bounded).
    pub fn measured(&self) -> bool {
        matches!(self, Sender::Controlled(u) if u.report().how == How::Measured)
    }

    /// One line for `SHOAL_SIM_DEBUG`.
    pub fn describe(&self) -> String {
        match self {
            Sender::Exact => "exact".into(),
            Sender::Greedy(g) => format!("greedy {:.0} kbit/s", g.rate / 1e3),
            Sender::Controlled(u) => format!("{:?} paths {}", u.report(), u.describe_paths()),
        }
    }

    pub fn forget(&mut self, path: u64) {
        if let Sender::Controlled(u) = self {
            u.forget(path);
        }
    }
}

/// Paces at a multiple of the largest recent delivery rate and never slows for delay or
/// loss. The multiple is the lab's: a 1 Mbit/s viewer's router dropped 65 % of what it sent
/// (docs/uplinks.md), so its connections together sent about 3× what the uplink carried.
pub struct Greedy {
    rate: f64,
    delivered: VecDeque<f64>,
    acked: u64,
    step_at: Instant,
}

const GREEDY_STEP: Duration = Duration::from_millis(100);
const GREEDY_GAIN: f64 = 3.0;

impl Greedy {
    fn new(now: Instant) -> Self {
        Greedy {
            rate: 2e6,
            delivered: VecDeque::new(),
            acked: 0,
            step_at: now,
        }
    }

    fn acked(&mut self, bytes: u64, now: Instant) {
        self.acked += bytes;
        self.poll(now);
    }

    fn poll(&mut self, now: Instant) {
        let dt = now.duration_since(self.step_at);
        if dt < GREEDY_STEP {
            return;
        }
        self.step_at = now;
        self.delivered.push_back(self.acked as f64 * 8.0 / dt.as_secs_f64());
        self.acked = 0;
        if self.delivered.len() > 10 {
            self.delivered.pop_front();
        }
        let max = self.delivered.iter().copied().fold(0.0, f64::max);
        self.rate = (GREEDY_GAIN * max).max(1e6);
    }
}
