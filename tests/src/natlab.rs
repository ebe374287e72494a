//! A NAT lab in network namespaces this process creates and removes itself: a public
//! segment (198.18.0.0/24) with a `--public` relay peer, a broadcaster behind one NAT, and
//! three viewers behind their own NATs — two port-restricted cone NATs (nftables masquerade)
//! and one symmetric NAT (masquerade random). Then: does every viewer play, who connected to
//! whom, and how much came straight from another NATed peer rather than through the relay.
//!
//! The port-mapping lab is smaller: a broadcaster behind a router running miniupnpd (PCP,
//! NAT-PMP and UPnP-IGD, or only some), one viewer behind a cone NAT, no relay: the viewer
//! reaches the broadcaster only if the router forwards a port to it and the ticket says where.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::player;
use crate::process::{Proc, binary, read_stats};

/// The public segment of the NAT lab (198.18.0.0/24).
const PUBLIC: &str = "198.18.0";
/// The public segment of the port-mapping lab. miniupnpd refuses to map on a router whose
/// outside address is private or reserved (198.18.0.0/15 and every documentation range
/// included), so this lab's "internet" uses an ordinary-looking prefix; it exists only
/// inside namespaces that have no link to the host or any real network.
const MAPPING_PUBLIC: &str = "11.22.33";
/// The relay's address on the public segment.
const RELAY: &str = "198.18.0.10";
const RELAY_PORT: u16 = 7000;
/// QUIC port every NATed node binds (masquerade keeps it where it can).
const NODE_PORT: u16 = 7100;

/// The NATs: name, kind, and the role of the host behind it.
const SITES: &[(&str, Nat)] = &[
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
pub(crate) fn start_in(
    ns: &str,
    dir: &Path,
    name: &str,
    program: &str,
    args: &[impl AsRef<str>],
) -> anyhow::Result<Proc> {
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
pub(crate) fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// Removes the namespaces a lab left behind when its process was killed (a lab names its
/// namespaces `shoal<pid>-…` or `shoalu<pid>-…`; a pid no longer running owns nothing).
pub(crate) fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("shoal") else {
            continue;
        };
        let digits: String = rest
            .trim_start_matches('u')
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let owner_gone = digits
            .parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if owner_gone {
            remove_namespace(name);
        }
    }
}

/// The namespaces of one lab; removed, with everything running in them, when dropped.
struct Lab {
    prefix: String,
    /// The public segment's /24, as "a.b.c"; router n is at a.b.c.(n + 1).
    public: &'static str,
    sites: &'static [(&'static str, Nat)],
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

pub(crate) fn run(cmd: &[&str]) -> anyhow::Result<()> {
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
pub(crate) fn address(ns: &str, dev: &str, cidr: &str) -> anyhow::Result<()> {
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

    /// The public segment (`public`.0/24, the namespace "pub" at .10), and each site's
    /// router and host.
    fn build(public_net: &'static str, sites: &'static [(&'static str, Nat)]) -> anyhow::Result<Lab> {
        remove_stale_namespaces();
        let mut lab = Lab {
            prefix: format!("shoal{}", std::process::id()),
            public: public_net,
            sites,
            namespaces: Vec::new(),
            procs: Vec::new(),
        };
        let public = lab.add_ns("pub")?;
        run(&["ip", "-n", &public, "link", "add", "br0", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            &public,
            "addr",
            "add",
            &format!("{public_net}.10/24"),
            "dev",
            "br0",
        ])?;
        run(&["ip", "-n", &public, "link", "set", "br0", "up"])?;
        for (i, (site, nat)) in sites.iter().enumerate() {
            let n = i + 1;
            let router = lab.add_ns(&format!("r{n}"))?;
            let host = lab.add_ns(site)?;
            let port = format!("w{n}");
            run(&[
                "ip", "link", "add", "wan", "netns", &router, "type", "veth", "peer", "name", &port, "netns", &public,
            ])?;
            run(&["ip", "-n", &public, "link", "set", &port, "master", "br0", "up"])?;
            address(&router, "wan", &format!("{public_net}.{}/24", n + 1))?;
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

    /// Starts the broadcaster (test stream, `dir`/ticket, `dir`/broadcaster.json) in its site
    /// with `extra` flags, and waits for its ticket.
    fn start_broadcaster(&mut self, dir: &Path, extra: &[String]) -> anyhow::Result<usize> {
        let mut args: Vec<String> = crate::swarm::TEST_STREAM.iter().map(|a| a.to_string()).collect();
        args.extend(
            [
                "--listen",
                &format!("0.0.0.0:{NODE_PORT}"),
                "--ticket-file",
                &dir.join("ticket").display().to_string(),
                "--key",
                &dir.join("stream.key").display().to_string(),
                "--stats-json",
                &dir.join("broadcaster.json").display().to_string(),
            ]
            .map(String::from),
        );
        args.extend_from_slice(extra);
        let i = self.spawn(dir, "broadcaster", "broadcaster", "shoal-broadcaster", &args)?;
        self.procs[i].wait_for_line("shoal1", Duration::from_secs(30))?;
        Ok(i)
    }

    /// Starts a gateway in `site` (stats in `dir`/`site`.json, player on the site's
    /// 127.0.0.1:8080) with the broadcaster's ticket file, and waits for it to serve.
    fn start_viewer(&mut self, dir: &Path, site: &str) -> anyhow::Result<()> {
        let args = [
            "--ticket-file",
            &dir.join("ticket").display().to_string(),
            "--listen",
            &format!("0.0.0.0:{NODE_PORT}"),
            "--http",
            "127.0.0.1:8080",
            "--stats-json",
            &dir.join(format!("{site}.json")).display().to_string(),
        ]
        .map(String::from);
        let i = self.spawn(dir, site, site, "shoal-gateway", &args)?;
        self.procs[i].wait_for_line("open http://", Duration::from_secs(20))?;
        Ok(())
    }

    /// Which site an address belongs to, as seen from the public segment or inside a site.
    fn site_of(&self, addr: &str) -> String {
        let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
        if ip == format!("{}.10", self.public) {
            return "relay".into();
        }
        for (i, (site, _)) in self.sites.iter().enumerate() {
            if ip == format!("{}.{}", self.public, i + 2) || ip == format!("198.19.{}.2", i + 1) {
                return (*site).into();
            }
        }
        format!("unknown {ip}")
    }

    /// Runs miniupnpd on the router of site `index`, answering `offer` on its LAN side, with
    /// the nftables chains it adds its forwarding rules to.
    fn serve_port_mapping(&mut self, dir: &Path, index: usize, offer: Offer) -> anyhow::Result<()> {
        if !Path::new(MINIUPNPD).exists() {
            bail!("{MINIUPNPD} is missing: install miniupnpd-nftables (scripts/setup does)");
        }
        let router = self.ns(&format!("r{}", index + 1));
        Lab::nft(
            &router,
            "table inet miniupnpd {\n\
               chain miniupnpd { }\n\
               chain prerouting_miniupnpd { }\n\
               chain postrouting_miniupnpd { }\n\
               chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }\n\
               chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n\
               chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }\n\
             }\n",
        )?;
        let yes = |on: bool| if on { "yes" } else { "no" };
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan\nlistening_ip=lan\nport=5000\n\
                 enable_upnp={}\nenable_natpmp={}\n\
                 secure_mode=yes\nsystem_uptime=no\n\
                 upnp_table_name=miniupnpd\nupnp_nat_table_name=miniupnpd\n\
                 lease_file={}\n\
                 allow 1024-65535 198.19.0.0/16 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                yes(offer.upnp),
                yes(offer.pcp_nat_pmp),
                dir.join("miniupnpd.leases").display()
            ),
        )?;
        let args: Vec<String> = [
            "netns",
            "exec",
            &router,
            MINIUPNPD,
            "-d",
            "-f",
            &conf.display().to_string(),
            "-P",
            &dir.join("miniupnpd.pid").display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        self.procs.push(Proc::start(dir, "miniupnpd", Path::new("ip"), &args)?);
        Ok(())
    }
}

/// Where Debian's miniupnpd-nftables puts the daemon (scripts/setup installs it).
const MINIUPNPD: &str = "/usr/sbin/miniupnpd";

/// What the lab's router offers for port mapping.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    pub upnp: bool,
    /// miniupnpd answers both on one switch.
    pub pcp_nat_pmp: bool,
}

/// Builds the lab, streams for `seconds`, checks every viewer with ffmpeg, and reports.
pub fn run_lab(dir: &Path, seconds: u64) -> anyhow::Result<Value> {
    let mut lab = Lab::build(PUBLIC, SITES)?;
    let ticket = dir.join("ticket");
    let stats = |name: &str| -> PathBuf { dir.join(format!("{name}.json")) };
    let s = |p: &Path| p.display().to_string();
    lab.start_broadcaster(dir, &["--bootstrap".into(), format!("{RELAY}:{RELAY_PORT}")])?;
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
        lab.start_viewer(dir, viewer)?;
    }
    std::thread::sleep(Duration::from_secs(seconds).saturating_sub(started.elapsed()));

    let mut report = serde_json::Map::new();
    for viewer in &viewers {
        let ns = lab.ns(viewer);
        let play = player::ffmpeg_in(&["ip", "netns", "exec", &ns], "http://127.0.0.1:8080/live.m3u8", 6)?;
        let st: Value = read_stats(&stats(viewer));
        let mut by_site = serde_json::Map::new();
        let mut total = 0u64;
        for n in st["neighbours"].as_array().into_iter().flatten() {
            let bytes = n["bytes_in"].as_u64().unwrap_or(0);
            total += bytes;
            if n["connected"] == true || bytes > 0 {
                let site = lab.site_of(n["addr"].as_str().unwrap_or_default());
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
    let relay_stats: Value = read_stats(&stats("relay"));
    report.insert(
        "relay_introductions".into(),
        relay_stats["punch"]["introductions"].clone(),
    );
    Ok(Value::Object(report))
}

/// The port-mapping lab's sites: the broadcaster's router maps ports, the viewer's does not.
const MAPPING_SITES: &[(&str, Nat)] = &[("broadcaster", Nat::Cone), ("viewer", Nat::Cone)];
/// How long the broadcaster may take to get a mapping and list it in its ticket.
const MAPPING_WITHIN: Duration = Duration::from_secs(20);

/// Builds the port-mapping lab with `offer` on the broadcaster's router, waits for the
/// ticket to list the mapped address, has the viewer play through it, and reports.
pub fn run_mapping_lab(dir: &Path, offer: Offer) -> anyhow::Result<Value> {
    let mut lab = Lab::build(MAPPING_PUBLIC, MAPPING_SITES)?;
    lab.serve_port_mapping(dir, 0, offer)?;
    let ticket_file = dir.join("ticket");
    let stats = |name: &str| -> PathBuf { dir.join(format!("{name}.json")) };
    let broadcaster = lab.start_broadcaster(dir, &[])?;
    let first: shoal_proto::Ticket = std::fs::read_to_string(&ticket_file)?.trim().parse()?;

    // The router's outside address, with whatever port it gave.
    let outside = format!("{MAPPING_PUBLIC}.2");
    let started = Instant::now();
    let ticket = loop {
        let text = std::fs::read_to_string(&ticket_file).unwrap_or_default();
        if let Ok(t) = text.trim().parse::<shoal_proto::Ticket>()
            && t.addrs.iter().any(|a| a.ip().to_string() == outside)
        {
            break t;
        }
        if started.elapsed() > MAPPING_WITHIN {
            bail!(
                "the ticket never listed a mapped address ({outside}:…) in {MAPPING_WITHIN:?}: {text}\nbroadcaster:\n{}",
                lab.procs[broadcaster].stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let listed_after = started.elapsed(); // counted from the first ticket

    lab.start_viewer(dir, "viewer")?;
    std::thread::sleep(Duration::from_secs(6));
    let play = player::ffmpeg_in(
        &["ip", "netns", "exec", &lab.ns("viewer")],
        "http://127.0.0.1:8080/live.m3u8",
        5,
    )?;
    let viewer_stats: Value = read_stats(&stats("viewer"));
    let mut connected_to = Vec::new();
    for n in viewer_stats["neighbours"].as_array().into_iter().flatten() {
        if n["bytes_in"].as_u64().unwrap_or(0) > 0 {
            connected_to.push(json!({"addr": n["addr"], "site": lab.site_of(n["addr"].as_str().unwrap_or_default()), "bytes_in": n["bytes_in"]}));
        }
    }
    let broadcaster_stats: Value = read_stats(&stats("broadcaster"));
    // The forwarding rules miniupnpd keeps for the mapping: there while the broadcaster runs,
    // gone once it stopped (it releases its mapping as it shuts down).
    let router = lab.ns("r1");
    let rules = || -> usize {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &router,
                "nft",
                "list",
                "chain",
                "inet",
                "miniupnpd",
                "prerouting_miniupnpd",
            ])
            .output();
        out.map_or(0, |o| String::from_utf8_lossy(&o.stdout).matches("dnat").count())
    };
    let rules_running = rules();
    lab.procs[broadcaster].interrupt(Duration::from_secs(10));
    let mut rules_after = rules();
    for _ in 0..30 {
        if rules_after == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        rules_after = rules();
    }
    Ok(json!({
        "offer": format!("{offer:?}"),
        "port_mapping": broadcaster_stats["port_mapping"],
        "router_rules": {"while_broadcasting": rules_running, "after_shutdown": rules_after},
        "first_ticket_addrs": first.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "ticket_addrs": ticket.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "listed_after_ms": listed_after.as_millis() as u64,
        "viewer": {
            "played_s": (play.seconds * 10.0).round() / 10.0,
            "play_errors": play.errors,
            "startup_ms": viewer_stats["startup_ms"],
            "received_from": connected_to,
        },
    }))
}
