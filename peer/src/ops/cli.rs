//! Command-line plumbing every shoal binary shares: swarm and ticket flags, `--config` TOML
//! files, logging, Ctrl-C, and the one-line error exit.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use shoal_proto::Ticket;

use shoal_core::limits::Limits;

use crate::swarm::{Dht, SwarmOptions};

/// Swarm options shared by the broadcaster, the relay peer and the gateway.
#[derive(clap::Args, Debug, Clone)]
pub struct SwarmArgs {
    /// UDP address to accept QUIC connections on (port 0 picks a free one).
    #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// A peer to dial besides the ticket's addresses; repeat for several. Re-dialled until it answers.
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Vec<String>,
    /// Find the swarm through the BitTorrent Mainline DHT: the broadcaster publishes its
    /// addresses there, signed by the stream key; everyone else looks them up, so a ticket
    /// needs no address. (Your address becomes visible to anyone with the stream key.)
    #[arg(long)]
    pub dht: bool,
    /// DHT nodes to start from instead of the public DHT's (a private DHT); implies --dht.
    #[arg(long, value_name = "HOST:PORT")]
    pub dht_bootstrap: Vec<String>,
    /// Do not ask the router to forward a port to this node (by default it is asked through
    /// PCP, NAT-PMP or UPnP-IGD, so peers outside can dial in; not when listening on loopback).
    #[arg(long)]
    pub no_port_mapping: bool,
    /// Dial only the --bootstrap peers: ignore the ticket's addresses (fixed chains, locked-down kiosks).
    #[arg(long)]
    pub no_discovery: bool,
    /// The most this node uploads, in kbit/s (default: no cap; 0: upload no chunks at all).
    #[arg(long, value_name = "KBPS")]
    pub upload_kbps: Option<u64>,
    /// How chunk uploads share this machine's uplink: `background` steps aside for the
    /// household's calls, games and uploads, as µTP does (the default for viewers and
    /// relays); `foreground` is paced only by --upload-kbps (the default for the broadcaster
    /// and --public relays).
    #[arg(long, value_enum, value_name = "MODE")]
    pub upload_mode: Option<UploadMode>,
    /// Rewrite this file with the node's counters (JSON) about once a second.
    #[arg(long, value_name = "PATH")]
    pub stats_json: Option<PathBuf>,
    /// Seconds of stream kept and relayed, judged by the broadcaster's clock.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(2..=600))]
    pub window_s: u64,
    /// Neighbours kept in the active set; newcomers beyond it are handed other peers.
    #[arg(long, default_value_t = Limits::default().max_neighbours as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_neighbours: u64,
    /// Connections dialled to this node at once, set-up included; more are refused.
    #[arg(long, default_value_t = Limits::default().max_incoming_connections as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_incoming_connections: u64,
}

pub use crate::swarm::UploadMode;

impl SwarmArgs {
    /// The swarm options these flags describe.
    pub fn options(&self) -> SwarmOptions {
        SwarmOptions {
            listen: self.listen,
            bootstrap: self.bootstrap.clone(),
            discovery: !self.no_discovery,
            dht: match (self.dht, self.dht_bootstrap.is_empty()) {
                (_, false) => Dht::Nodes(self.dht_bootstrap.clone()),
                (true, true) => Dht::Public,
                (false, true) => Dht::Off,
            },
            port_mapping: !self.no_port_mapping,
            upload_kbps: self.upload_kbps,
            upload_mode: self.upload_mode,
            window: Duration::from_secs(self.window_s),
            max_neighbours: self.max_neighbours as usize,
            max_incoming_connections: self.max_incoming_connections as usize,
            stats_json: self.stats_json.clone(),
        }
    }
}

/// Where a binary reads its ticket from.
#[derive(clap::Args, Debug, Clone)]
pub struct TicketArgs {
    /// The stream's ticket, as printed by the broadcaster (shoal1…).
    #[arg(long, value_name = "TICKET", conflicts_with = "ticket_file")]
    pub ticket: Option<String>,
    /// A file holding the ticket (the broadcaster's --ticket-file).
    #[arg(long, value_name = "PATH")]
    pub ticket_file: Option<PathBuf>,
}

impl TicketArgs {
    /// Whether a ticket was given at all.
    pub fn given(&self) -> bool {
        self.ticket.is_some() || self.ticket_file.is_some()
    }

    pub fn load(&self) -> anyhow::Result<Ticket> {
        match (&self.ticket, &self.ticket_file) {
            (Some(text), _) => text.parse().context("--ticket is not a valid shoal ticket"),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read ticket file {}", path.display()))?;
                text.parse()
                    .with_context(|| format!("ticket file {} holds no valid shoal ticket", path.display()))
            }
            (None, None) => bail!("no ticket: pass --ticket TICKET or --ticket-file PATH"),
        }
    }
}

/// A swarm error in the words of the flags that fix it.
pub fn in_flag_terms(e: crate::swarm::SwarmError) -> anyhow::Error {
    match e {
        crate::swarm::SwarmError::NoAddress => {
            anyhow::anyhow!("the ticket lists no address: add --dht to look the stream up, or --bootstrap HOST:PORT")
        }
        e => e.into(),
    }
}

/// Parses the command line, with `--config FILE` (TOML) supplying defaults: each key is a flag
/// name, flags given on the command line win. Exits with one line on a bad config file.
pub fn parse<T: Parser>() -> T {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if let Some(path) = config_path(&args) {
        match config_args(&path) {
            Ok(extra) => {
                let at = 1.min(args.len());
                args.splice(at..at, extra);
            }
            Err(e) => fail(e),
        }
    }
    T::parse_from(args)
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Turns a TOML table into flags: `key = v` → `--key=v`, `true` → `--key`, arrays repeat.
pub fn config_args(path: &Path) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        anyhow::anyhow!(
            "config file {} is not valid TOML{}: {}",
            path.display(),
            line.map(|l| format!(" (line {l})")).unwrap_or_default(),
            e.message().trim()
        )
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        if flag == "--config" {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            other => vec![other],
        };
        for value in values {
            match value {
                toml::Value::Boolean(true) => out.push(flag.clone().into()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => out.push(format!("{flag}={s}").into()),
                toml::Value::Integer(i) => out.push(format!("{flag}={i}").into()),
                toml::Value::Float(f) => out.push(format!("{flag}={f}").into()),
                other => bail!("config file {}: {key} = {other} is not a flag value", path.display()),
            }
        }
    }
    Ok(out)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Prints `error: …` as one line and exits non-zero.
pub fn fail(e: anyhow::Error) -> ! {
    // One line, whatever the causes print: the problem is what a user should see first.
    let text = format!("{e:#}");
    eprintln!("error: {}", text.split_whitespace().collect::<Vec<_>>().join(" "));
    std::process::exit(1)
}

/// Runs a binary's async main on a multi-thread runtime and turns its error into one line.
pub fn run<F: std::future::Future<Output = anyhow::Result<()>>>(main: impl FnOnce() -> F) {
    super::log::init_tracing();
    // One thread: a node is mostly waiting on sockets and timers, and on a multi-thread
    // runtime waking tasks across threads cost a third of a relay's CPU (perf, bench-swarm).
    // Encoding runs on blocking threads of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => fail(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    if let Err(e) = runtime.block_on(main()) {
        fail(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_become_flags() {
        let dir = std::env::temp_dir().join(format!("shoal-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kiosk.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:0\"\nbootstrap = [\"a:1\", \"b:2\"]\nno_discovery = true\nupload-kbps = 500\n",
        )
        .unwrap();
        let args: Vec<String> = config_args(&path)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--bootstrap=a:1",
                "--bootstrap=b:2",
                "--listen=127.0.0.1:0",
                "--no-discovery",
                "--upload-kbps=500"
            ]
        );
        std::fs::write(&path, "listen = {a = 1}").unwrap();
        assert!(config_args(&path).is_err());
    }
}
