//! `shoal-bulk`: a household's bulk TCP upload for the shaped-uplink lab. `shoal-bulk sink
//! ADDR` accepts connections and prints, once a second, the bytes received in that second;
//! `shoal-bulk send ADDR SECONDS [cubic|bbr|reno]` sends as fast as TCP (with that congestion
//! control) lets it for that long, then stops.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["sink", addr] => sink(addr),
        ["send", addr, seconds] => send(addr, Duration::from_secs(seconds.parse().context("SECONDS")?), None),
        ["send", addr, seconds, tcp] => send(
            addr,
            Duration::from_secs(seconds.parse().context("SECONDS")?),
            Some(tcp),
        ),
        _ => anyhow::bail!("usage: shoal-bulk sink ADDR | shoal-bulk send ADDR SECONDS [CONGESTION-CONTROL]"),
    }
}

fn sink(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    counted.fetch_add(n as u64, Relaxed);
                }
            });
        }
    });
    let mut out = std::io::stdout().lock();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        writeln!(out, "{}", received.swap(0, Relaxed))?;
        out.flush()?;
    }
}

fn send(addr: &str, seconds: Duration, tcp: Option<&str>) -> anyhow::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(tcp) = tcp {
        socket
            .set_tcp_congestion(tcp.as_bytes())
            .with_context(|| format!("cannot use TCP congestion control {tcp}"))?;
    }
    let to: std::net::SocketAddr = addr.parse().with_context(|| format!("{addr} is not ADDR:PORT"))?;
    socket
        .connect(&to.into())
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut stream: TcpStream = socket.into();
    stream.set_write_timeout(Some(Duration::from_millis(500)))?;
    let buf = vec![0u8; 16 * 1024];
    let end = Instant::now() + seconds;
    while Instant::now() < end {
        match stream.write(&buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
