//! A live swarm of real processes on loopback: a broadcaster with the test source, relay
//! peers, and a gateway, wired as the test asks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use crate::process::{Proc, binary, read_stats};
use shoal_peer::net::stats::Snapshot;

/// Small, cheap test stream: two of these run side by side on two cores.
pub const TEST_RESOLUTION: &str = "640x360";
pub const TEST_BITRATE_KBPS: &str = "800";
/// Broadcaster flags for that test stream.
pub const TEST_STREAM: [&str; 6] = [
    "--source",
    "test",
    "--resolution",
    TEST_RESOLUTION,
    "--bitrate-kbps",
    TEST_BITRATE_KBPS,
];
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Node {
    pub proc: Proc,
    /// The QUIC address it accepts connections on.
    pub addr: String,
    pub stats: PathBuf,
}

impl Node {
    pub fn stats(&self) -> serde_json::Value {
        read_stats(&self.stats)
    }

    /// The same stats, typed.
    pub fn snapshot(&self) -> Snapshot {
        read_stats(&self.stats)
    }

    pub fn node_id(&self) -> String {
        self.snapshot().node_id
    }
}

pub struct Gateway {
    pub proc: Proc,
    pub http: String,
    pub stats: PathBuf,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn stats(&self) -> serde_json::Value {
        read_stats(&self.stats)
    }
}

pub struct Broadcaster {
    pub node: Node,
    pub ticket_file: PathBuf,
}

pub fn broadcaster(dir: &Path, extra: &[&str]) -> anyhow::Result<Broadcaster> {
    broadcaster_on(dir, "127.0.0.1:0", extra)
}

/// A broadcaster accepting QUIC connections on `listen` (to restart one where it was).
pub fn broadcaster_on(dir: &Path, listen: &str, extra: &[&str]) -> anyhow::Result<Broadcaster> {
    let proc = start_broadcaster(dir, listen, extra, Stdio::null(), &[])?;
    broadcaster_ready(dir, proc)
}

/// Starts a broadcaster (reading `stdin`, with `env` added) without waiting for its ticket:
/// the source it reads may have to be started next.
pub fn start_broadcaster(
    dir: &Path,
    listen: &str,
    extra: &[&str],
    stdin: Stdio,
    env: &[(&str, &str)],
) -> anyhow::Result<Proc> {
    let ticket_file = dir.join("ticket");
    let stats = dir.join("broadcaster.json");
    let mut args = vec![
        "--source".into(),
        "test".into(),
        "--listen".into(),
        listen.into(),
        "--ticket-file".into(),
        ticket_file.display().to_string(),
        "--key".into(),
        dir.join("stream.key").display().to_string(),
        "--name".into(),
        "e2e".into(),
        "--resolution".into(),
        TEST_RESOLUTION.into(),
        "--bitrate-kbps".into(),
        TEST_BITRATE_KBPS.into(),
        "--stats-json".into(),
        stats.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::start_with(dir, "broadcaster", &binary("shoal-broadcaster"), &args, stdin, env)
}

/// Waits for a started broadcaster's ticket (printed once its source plays).
pub fn broadcaster_ready(dir: &Path, mut proc: Proc) -> anyhow::Result<Broadcaster> {
    let (ticket_file, stats) = (dir.join("ticket"), dir.join("broadcaster.json"));
    let ticket = proc.wait_for_line("shoal1", START_TIMEOUT)?;
    let parsed: shoal_proto::Ticket = ticket.trim().parse().context("broadcaster printed a bad ticket")?;
    let addr = parsed.addrs.first().context("ticket lists no address")?.to_string();
    Ok(Broadcaster {
        node: Node { proc, addr, stats },
        ticket_file,
    })
}

/// Flags of a node that joins by `ticket_file`, dials only `upstream`, and writes `stats`.
fn downstream_args(ticket_file: &Path, upstream: &str, stats: &Path) -> Vec<String> {
    let (ticket, stats) = (ticket_file.display().to_string(), stats.display().to_string());
    [
        "--ticket-file",
        &ticket,
        "--listen",
        "127.0.0.1:0",
        "--bootstrap",
        upstream,
        "--no-discovery",
        "--stats-json",
        &stats,
    ]
    .map(String::from)
    .to_vec()
}

/// A relay peer as users run it: it dials `bootstrap` and finds the rest of the swarm by
/// peer exchange.
pub fn peer(dir: &Path, name: &str, ticket_file: &Path, bootstrap: &str, extra: &[&str]) -> anyhow::Result<Node> {
    let stats = dir.join(format!("{name}.json"));
    let mut args: Vec<String> = downstream_args(ticket_file, bootstrap, &stats)
        .into_iter()
        .filter(|a| a != "--no-discovery")
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    start_relay(dir, name, &args, stats)
}

/// A relay peer that dials only `upstream`.
pub fn relay(dir: &Path, name: &str, ticket_file: &Path, upstream: &str) -> anyhow::Result<Node> {
    relay_with(dir, name, ticket_file, upstream, &[])
}

/// A relay peer that dials only `upstream`, with `extra` flags.
pub fn relay_with(dir: &Path, name: &str, ticket_file: &Path, upstream: &str, extra: &[&str]) -> anyhow::Result<Node> {
    let stats = dir.join(format!("{name}.json"));
    let mut args = downstream_args(ticket_file, upstream, &stats);
    args.extend(extra.iter().map(|s| s.to_string()));
    start_relay(dir, name, &args, stats)
}

fn start_relay(dir: &Path, name: &str, args: &[String], stats: PathBuf) -> anyhow::Result<Node> {
    let mut proc = Proc::start(dir, name, &binary("shoal-peer"), args)?;
    let line = proc.wait_for_line("relaying", START_TIMEOUT)?;
    let addr = line
        .split(" on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("relay printed no address")?
        .to_string();
    Ok(Node { proc, addr, stats })
}

/// A gateway that dials only `upstream`, serving HTTP on a free loopback port.
pub fn gateway(dir: &Path, ticket_file: &Path, upstream: &str) -> anyhow::Result<Gateway> {
    gateway_on(dir, ticket_file, upstream, "127.0.0.1:0")
}

/// A gateway that dials only `upstream`, serving HTTP on `http` (to restart one where it was).
pub fn gateway_on(dir: &Path, ticket_file: &Path, upstream: &str, http: &str) -> anyhow::Result<Gateway> {
    let stats = dir.join("gateway.json");
    let args = downstream_args(ticket_file, upstream, &stats);
    start_gateway(dir, args, http, stats)
}

/// A gateway as users run it: it dials `bootstrap` and finds the swarm by peer exchange.
pub fn gateway_in_swarm(dir: &Path, ticket_file: &Path, bootstrap: &str) -> anyhow::Result<Gateway> {
    let stats = dir.join("gateway.json");
    let args = downstream_args(ticket_file, bootstrap, &stats)
        .into_iter()
        .filter(|a| a != "--no-discovery")
        .collect();
    start_gateway(dir, args, "127.0.0.1:0", stats)
}

/// A gateway given only `ticket_file` and `extra` flags (how it finds the swarm is up to them).
pub fn gateway_with(dir: &Path, ticket_file: &Path, extra: &[&str]) -> anyhow::Result<Gateway> {
    let stats = dir.join("gateway.json");
    let mut args: Vec<String> = [
        "--ticket-file",
        &ticket_file.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--stats-json",
        &stats.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    start_gateway(dir, args, "127.0.0.1:0", stats)
}

fn start_gateway(dir: &Path, mut args: Vec<String>, http: &str, stats: PathBuf) -> anyhow::Result<Gateway> {
    args.extend(["--http".to_string(), http.to_string()]);
    let mut proc = Proc::start(dir, "gateway", &binary("shoal-gateway"), &args)?;
    let line = proc.wait_for_line("open http://", START_TIMEOUT)?;
    let http = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .context("gateway printed no URL")?
        .to_string();
    Ok(Gateway { proc, http, stats })
}

/// Fetches `url` over plain HTTP/1.1 on loopback (status, body).
pub fn http_get(url: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    http_fetch(url).map(|(status, body, _)| (status, body))
}

/// Fetches `url` (status, body, and every byte the server sent: headers and body).
pub fn http_fetch(url: &str) -> anyhow::Result<(u16, Vec<u8>, usize)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("not an http URL")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header")?;
    let head = String::from_utf8_lossy(&response[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = response[head_end + 4..].to_vec();
    // Chunked bodies are only used for streams we don't fetch here; plain bodies suffice.
    Ok((status, body, response.len()))
}
