//! What one wake-up costs on this machine, the figure behind `shoal-sim --cpu-wake-us`:
//! a thread that sleeps 2 ms at a time, and two threads bouncing a 40-byte datagram over
//! loopback, each blocked in `recv` between turns. CPU time comes from the kernel's
//! per-thread accounting (`/proc/thread-self/schedstat`), so it includes the scheduler.
//!
//! `cargo run --release --example wakeup_cost`

use std::net::UdpSocket;
use std::time::{Duration, Instant};

const WAKEUPS: u32 = 3000;
const BOUNCES: u32 = 20_000;

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn timer_wakeups() -> f64 {
    let start = thread_cpu_ns();
    for _ in 0..WAKEUPS {
        std::thread::sleep(Duration::from_millis(2));
    }
    (thread_cpu_ns() - start) as f64 / 1e3 / f64::from(WAKEUPS)
}

/// Receives and sends back `BOUNCES` datagrams; returns this thread's CPU µs per turn.
fn bounce(socket: &UdpSocket, to: std::net::SocketAddr, serve_first: bool) -> std::io::Result<f64> {
    let mut buf = [0u8; 64];
    let start = thread_cpu_ns();
    if serve_first {
        socket.send_to(&buf[..40], to)?;
    }
    for _ in 0..BOUNCES {
        let n = socket.recv(&mut buf)?;
        socket.send_to(&buf[..n], to)?;
    }
    Ok((thread_cpu_ns() - start) as f64 / 1e3 / f64::from(BOUNCES))
}

fn main() -> std::io::Result<()> {
    println!(
        "timer wake-up from idle: {:.1} µs of CPU each ({WAKEUPS} sleeps of 2 ms)",
        timer_wakeups()
    );
    let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
    }
    let (a_addr, b_addr) = (a.local_addr()?, b.local_addr()?);
    let wall = Instant::now();
    let other = std::thread::spawn(move || bounce(&b, a_addr, false));
    let mine = bounce(&a, b_addr, true)?;
    let theirs = other
        .join()
        .map_err(|_| std::io::Error::other("the other thread panicked"))??;
    println!(
        "datagram ping-pong: {:.1} µs of CPU per wake-up, receive and send ({:.1} µs wall per hop)",
        (mine + theirs) / 2.0,
        wall.elapsed().as_secs_f64() * 1e6 / f64::from(2 * BOUNCES)
    );
    Ok(())
}
