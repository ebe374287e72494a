//! `shoal-sim`: runs the swarm core on virtual time and prints one JSON object of what the
//! audience experienced (delivery, latency, startup, upload ratios).

use clap::Parser;

// Ten thousand simulated nodes allocate and free millions of small messages a second;
// mimalloc does that markedly faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use shoal_sim::{CpuConfig, Sim, SimConfig, parse_household, parse_join_uplinks, parse_upload_mix};

/// Simulate a shoal swarm: the real swarm core, a modelled network, one JSON line of results.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Viewers (the source comes on top).
    #[arg(long, default_value_t = 100)]
    peers: usize,
    #[arg(long, default_value_t = 120)]
    duration_s: u64,
    #[arg(long, default_value_t = 2000)]
    bitrate_kbps: u64,
    /// Round-trip time of every link.
    #[arg(long, default_value_t = 50)]
    rtt_ms: u64,
    /// Extra one-way delay, uniform in 0..=jitter.
    #[arg(long, default_value_t = 10)]
    jitter_ms: u64,
    /// Probability that a 1200-byte packet is lost (and sent again).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Share of the peers that leave (without goodbye) per minute, replaced by fresh ones.
    #[arg(long, default_value_t = 0.0)]
    churn_per_min: f64,
    /// Share of the peers that forge, black-hole, lie in HAVE and ignore REQUESTs.
    #[arg(long, default_value_t = 0.0)]
    malicious: f64,
    /// share:multiple,… — that share of peers uploads that multiple of the bitrate.
    #[arg(long, default_value = "0.3:0.5,0.5:2,0.2:5")]
    upload_mix: String,
    /// Peers are not told their upload, as `shoal-peer` without --upload-kbps (the default).
    #[arg(long, conflicts_with = "declare_upload")]
    upload_unknown: bool,
    /// Peers are told their upload, as with --upload-kbps set to their uplink's rate.
    #[arg(long)]
    declare_upload: bool,
    /// Depth of the household router queue in front of every uplink (0: nodes send at
    /// exactly their uplink's rate, and nothing queues).
    #[arg(long, default_value_t = 400)]
    router_queue_ms: u64,
    /// The router also holds this many kB more, as `tc tbf … burst` does (its limit is
    /// rate × latency + burst: the lab's 16 kB make a "30 ms" queue at 1 Mbit/s 158 ms deep).
    #[arg(long, default_value_t = 0)]
    router_burst_kb: u64,
    /// Uplink controllers read round trips only, as before one-way delay stamps (or against
    /// peers that do not echo them): round trips carry the receiver's own uplink queue on the
    /// ACK's way back.
    #[arg(long)]
    round_trips_only: bool,
    /// Congestion control the nodes run: controlled (the uplink controller) or greedy (the
    /// transport before it, which keeps router queues full).
    #[arg(long, default_value = "controlled")]
    sender: shoal_sim::SenderModel,
    /// Share of viewers whose household uploads in bulk through the same router now and then
    /// (20 s on, 40 s off, Cubic-like).
    #[arg(long, default_value_t = 0.0)]
    cross_traffic: f64,
    /// The source uploads at most this multiple of the bitrate.
    #[arg(long, default_value_t = 5.0)]
    source_upload_x: f64,
    /// A chunk held later than this after it was emitted counts as not delivered.
    #[arg(long, default_value_t = 3000)]
    deadline_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 30)]
    fps: u64,
    #[arg(long, default_value_t = 1000)]
    segment_ms: u64,
    /// Run every node on one machine with this many cores, as scripts/bench-swarm does
    /// (0: every node has a machine of its own).
    #[arg(long, default_value_t = 0)]
    cpu_cores: usize,
    /// Cores' worth of that machine taken by other programs (the encoder, the gateway).
    #[arg(long, default_value_t = 0.0)]
    cpu_other: f64,
    /// CPU µs one wake-up of a node costs before any work.
    #[arg(long, default_value_t = 42.0)]
    cpu_wake_us: f64,
    /// CPU µs a received chunk costs, with its forwarding and transport.
    #[arg(long, default_value_t = 465.0)]
    cpu_chunk_us: f64,
    /// CPU µs a received control message costs, with its transport.
    #[arg(long, default_value_t = 40.0)]
    cpu_message_us: f64,
    /// Viewers that upload nothing (as the lab's gateway with --upload-kbps 0), joined first
    /// and unshaped; the report's "watch" says what a gateway on them would have published.
    #[arg(long, default_value_t = 0)]
    watchers: usize,
    /// The lab's way to join: these uplinks (multiples of the bitrate), in this order, one
    /// every --join-every-ms (instead of --peers drawn from --upload-mix).
    #[arg(long)]
    join_uplinks: Option<String>,
    #[arg(long, default_value_t = 500)]
    join_every_ms: u64,
    /// VIEWER:START-END[:START-END…] — that viewer's household (in join order) uploads in
    /// bulk in those periods (seconds of the run); repeatable.
    #[arg(long)]
    household: Vec<String>,
}

fn main() {
    let a = Args::parse();
    let upload_mix = match parse_upload_mix(&a.upload_mix) {
        Ok(mix) => mix,
        Err(e) => {
            eprintln!("error: --upload-mix: {e}");
            std::process::exit(2);
        }
    };
    if a.cpu_cores > 0 && !(0.0..a.cpu_cores as f64).contains(&a.cpu_other) {
        eprintln!("error: --cpu-other must be at least 0 and less than --cpu-cores");
        std::process::exit(2);
    }
    if !(0.0..1.0).contains(&a.loss) || !(0.0..1.0).contains(&a.malicious) || a.churn_per_min < 0.0 || a.peers == 0 {
        eprintln!("error: --loss and --malicious must be in [0, 1), --churn-per-min ≥ 0, --peers ≥ 1");
        std::process::exit(2);
    }
    let join_uplinks = match a.join_uplinks.as_deref().map(parse_join_uplinks).transpose() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: --join-uplinks: {e}");
            std::process::exit(2);
        }
    };
    let households = match a
        .household
        .iter()
        .map(|h| parse_household(h))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: --household: {e}");
            std::process::exit(2);
        }
    };
    let cfg = SimConfig {
        peers: join_uplinks.as_ref().map_or(a.peers, Vec::len),
        watchers: a.watchers,
        join_uplinks,
        join_every_ms: a.join_every_ms,
        households,
        duration_s: a.duration_s,
        bitrate_kbps: a.bitrate_kbps,
        rtt_ms: a.rtt_ms,
        jitter_ms: a.jitter_ms,
        loss: a.loss,
        churn_per_min: a.churn_per_min,
        malicious: a.malicious,
        upload_mix,
        source_upload_x: a.source_upload_x,
        upload_unknown: !a.declare_upload,
        router_queue_ms: a.router_queue_ms,
        router_burst_kb: a.router_burst_kb,
        one_way_delay: !a.round_trips_only,
        sender: a.sender,
        cross_traffic: a.cross_traffic,
        deadline_ms: a.deadline_ms,
        seed: a.seed,
        fps: a.fps,
        segment_ms: a.segment_ms,
        cpu: (a.cpu_cores > 0).then_some(CpuConfig {
            cores: a.cpu_cores,
            other_cores: a.cpu_other,
            wake_us: a.cpu_wake_us,
            chunk_us: a.cpu_chunk_us,
            message_us: a.cpu_message_us,
        }),
        ..SimConfig::default()
    };
    println!("{}", Sim::new(cfg).run());
}
