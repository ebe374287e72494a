//! A NAT lab in network namespaces this process creates and removes itself: a public
//! segment (198.18.0.0/24) with a `--public` relay peer, a broadcaster behind one NAT, and
//! three viewers behind their own NATs — two port-restricted cone NATs (nftables masquerade)
//! and one symmetric NAT (masquerade random). Then: does every viewer play, who connected to
//! whom, and how much came straight from another NATed peer rather than through the relay.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::player;
use crate::process::{Proc, binary, read_stats};

/// The relay's address on the public segment.
const RELAY: &str = "198.18.0.10";
const RELAY_PORT: u16 = 7000;
/// QUIC port every NATed node binds (masquerade keeps it where it can).
const NODE_PORT: u16 = 7100;

/// The NATs: name, kind, and the role of the host behind it.
const SITES: [(&str, Nat); 4] = [
    ("broadcaster", Nat::Cone),
    ("viewer-a", Nat::Cone),
    ("viewer-b", Nat::Cone),
    ("viewer-c", Nat::Symmetric),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nat {
    /// Keeps the source port; lets in only replies from where a packet went.
    Cone,
    /// A new public port for every destination: punching cannot guess it.
    Symmetric,
}

/// Why the lab cannot run here, if it cannot (not root, no namespaces, no nftables).
pub fn unavailable() -> Option<String> {
    let probe = format!("shoal-probe-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    match made {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        }
        Ok(out) => {
            return Some(format!(
                "cannot create network namespaces: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(e) => return Some(format!("no `ip` command: {e}")),
    }
    if Command::new("nft").arg("--version").output().is_err() {
        return Some("no `nft` command (nftables)".into());
    }
    None
}

/// One empty network namespace with only loopback (multicast on), removed with everything
/// in it when dropped: for tests that must not reach any real network (mDNS).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Netns> {
        let name = format!("shoal{}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "multicast", "on", "up"])?;
        Ok(ns)
    }

    /// Starts a shoal binary inside.
    pub fn start(&self, dir: &Path, name: &str, program: &str, args: &[&str]) -> anyhow::Result<Proc> {
        start_in(&self.name, dir, name, program, args)
    }
}

/// Starts the shoal binary `program` inside namespace `ns`.
fn start_in(ns: &str, dir: &Path, name: &str, program: &str, args: &[impl AsRef<str>]) -> anyhow::Result<Proc> {
    let mut full = vec![
        "netns".to_string(),
        "exec".into(),
        ns.to_string(),
        binary(program).display().to_string(),
    ];
    full.extend(args.iter().map(|a| a.as_ref().to_string()));
    Proc::start(dir, name, Path::new("ip"), &full)
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_namespace(&self.name);
    }
}

/// Kills what runs in `ns` and deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// The namespaces of one lab; removed, with everything running in them, when dropped.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.procs.clear(); // Ctrl-C, then SIGKILL, each
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

fn run(cmd: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| format!("running {}", cmd[0]))?;
    if !out.status.success() {
        bail!("{}: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Gives `dev` in `ns` an address and brings it up.
fn address(ns: &str, dev: &str, cidr: &str) -> anyhow::Result<()> {
    run(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev])?;
    run(&["ip", "-n", ns, "link", "set", dev, "up"])
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn add_ns(&mut self, name: &str) -> anyhow::Result<String> {
        let ns = self.ns(name);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        for key in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", key])?;
        }
        Ok(ns)
    }

    fn nft(ns: &str, rules: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nft")?;
        child.stdin.take().context("nft stdin")?.write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// The public segment, and each site's router and host.
    fn build() -> anyhow::Result<Lab> {
        let mut lab = Lab {
            prefix: format!("shoal{}", std::process::id()),
            namespaces: Vec::new(),
            procs: Vec::new(),
        };
        let public = lab.add_ns("pub")?;
        run(&["ip", "-n", &public, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &public, "addr", "add", &format!("{RELAY}/24"), "dev", "br0"])?;
        run(&["ip", "-n", &public, "link", "set", "br0", "up"])?;
        for (i, (site, nat)) in SITES.iter().enumerate() {
            let n = i + 1;
            let router = lab.add_ns(&format!("r{n}"))?;
            let host = lab.add_ns(site)?;
            let port = format!("w{n}");
            run(&[
                "ip", "link", "add", "wan", "netns", &router, "type", "veth", "peer", "name", &port, "netns", &public,
            ])?;
            run(&["ip", "-n", &public, "link", "set", &port, "master", "br0", "up"])?;
            address(&router, "wan", &format!("198.18.0.{}/24", n + 1))?;
            run(&[
                "ip", "link", "add", "lan", "netns", &router, "type", "veth", "peer", "name", "eth0", "netns", &host,
            ])?;
            address(&router, "lan", &format!("198.19.{n}.1/24"))?;
            address(&host, "eth0", &format!("198.19.{n}.2/24"))?;
            run(&[
                "ip",
                "-n",
                &host,
                "route",
                "add",
                "default",
                "via",
                &format!("198.19.{n}.1"),
            ])?;
            run(&["ip", "netns", "exec", &router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let masquerade = match nat {
                Nat::Cone => "masquerade",
                Nat::Symmetric => "masquerade random",
            };
            // New inbound UDP to the router itself is dropped: without it an early punch packet
            // would create conntrack state that moves the host's own mapping (TOOLCHAIN.md).
            Lab::nft(
                &router,
                &format!(
                    "table ip nat {{\n chain post {{\n type nat hook postrouting priority srcnat;\n oifname \"wan\" {masquerade}\n }}\n}}\n\
                     table ip filter {{\n chain input {{\n type filter hook input priority 0;\n iifname \"wan\" ct state new meta l4proto udp drop\n }}\n}}\n"
                ),
            )?;
        }
        Ok(lab)
    }

    fn spawn(&mut self, dir: &Path, site: &str, name: &str, program: &str, args: &[String]) -> anyhow::Result<usize> {
        self.procs.push(start_in(&self.ns(site), dir, name, program, args)?);
        Ok(self.procs.len() - 1)
    }
}

/// Which site an address belongs to, as seen from the public segment or inside a site.
fn site_of(addr: &str) -> String {
    let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
    if ip == RELAY {
        return "relay".into();
    }
    for (i, (site, _)) in SITES.iter().enumerate() {
        if ip == format!("198.18.0.{}", i + 2) || ip == format!("198.19.{}.2", i + 1) {
            return (*site).into();
        }
    }
    format!("unknown {ip}")
}

/// Builds the lab, streams for `seconds`, checks every viewer with ffmpeg, and reports.
pub fn run_lab(dir: &Path, seconds: u64) -> anyhow::Result<Value> {
    let mut lab = Lab::build()?;
    let ticket = dir.join("ticket");
    let stats = |name: &str| -> PathBuf { dir.join(format!("{name}.json")) };
    let s = |p: &Path| p.display().to_string();
    let broadcaster = lab.spawn(
        dir,
        "broadcaster",
        "broadcaster",
        "shoal-broadcaster",
        &crate::swarm::TEST_STREAM
            .iter()
            .map(|a| a.to_string())
            .chain(
                [
                    "--listen",
                    &format!("0.0.0.0:{NODE_PORT}"),
                    "--bootstrap",
                    &format!("{RELAY}:{RELAY_PORT}"),
                    "--ticket-file",
                    &s(&ticket),
                    "--key",
                    &s(&dir.join("stream.key")),
                    "--stats-json",
                    &s(&stats("broadcaster")),
                ]
                .map(String::from),
            )
            .collect::<Vec<_>>(),
    )?;
    lab.procs[broadcaster].wait_for_line("shoal1", Duration::from_secs(30))?;
    let relay = lab.spawn(
        dir,
        "pub",
        "relay",
        "shoal-peer",
        &[
            "--public",
            "--ticket-file",
            &s(&ticket),
            "--listen",
            &format!("{RELAY}:{RELAY_PORT}"),
            "--stats-json",
            &s(&stats("relay")),
        ]
        .map(String::from),
    )?;
    lab.procs[relay].wait_for_line("relaying", Duration::from_secs(20))?;
    let started = Instant::now();
    let viewers: Vec<&str> = SITES[1..].iter().map(|(site, _)| *site).collect();
    for viewer in &viewers {
        let i = lab.spawn(
            dir,
            viewer,
            viewer,
            "shoal-gateway",
            &[
                "--ticket-file",
                &s(&ticket),
                "--listen",
                &format!("0.0.0.0:{NODE_PORT}"),
                "--http",
                "127.0.0.1:8080",
                "--stats-json",
                &s(&stats(viewer)),
            ]
            .map(String::from),
        )?;
        lab.procs[i].wait_for_line("open http://", Duration::from_secs(20))?;
    }
    std::thread::sleep(Duration::from_secs(seconds).saturating_sub(started.elapsed()));

    let mut report = serde_json::Map::new();
    for viewer in &viewers {
        let ns = lab.ns(viewer);
        let play = player::ffmpeg_in(&["ip", "netns", "exec", &ns], "http://127.0.0.1:8080/live.m3u8", 6)?;
        let st = read_stats(&stats(viewer));
        let mut by_site = serde_json::Map::new();
        let mut total = 0u64;
        for n in st["neighbours"].as_array().into_iter().flatten() {
            let bytes = n["bytes_in"].as_u64().unwrap_or(0);
            total += bytes;
            if n["connected"] == true || bytes > 0 {
                let site = site_of(n["addr"].as_str().unwrap_or_default());
                let entry = by_site.entry(site).or_insert(json!(0));
                *entry = json!(entry.as_u64().unwrap_or(0) + bytes);
            }
        }
        let via_relay = by_site.get("relay").and_then(Value::as_u64).unwrap_or(0);
        report.insert(
            (*viewer).to_string(),
            json!({
                "nat": format!("{:?}", SITES.iter().find(|(s, _)| s == viewer).map(|(_, n)| *n)),
                "played_s": (play.seconds * 10.0).round() / 10.0,
                "play_errors": play.errors,
                "startup_ms": st["startup_ms"],
                "bytes_in_from": by_site,
                "direct_share": if total > 0 { ((total - via_relay) as f64 / total as f64 * 1000.0).round() / 1000.0 } else { 0.0 },
                "punch": st["punch"],
                // Where its neighbours agree they see it: its NAT's public address.
                "public_addrs": st["public_addrs"],
            }),
        );
    }
    let relay_stats = read_stats(&stats("relay"));
    report.insert(
        "relay_introductions".into(),
        relay_stats["punch"]["introductions"].clone(),
    );
    Ok(Value::Object(report))
}
