//! What a connection between two shoal nodes costs to set up: QUIC and TLS 1.3 on loopback,
//! dialled one after another, timed from `connect` until both sides hold the connection.
//!
//! `cargo run --release --example handshake_cost`

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use shoal_peer::net::transport;

const CONNECTIONS: usize = 300;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let limits = Default::default();
    // Each side proves its node key (mutual TLS, ed25519 certificates).
    let server = transport::endpoint("127.0.0.1:0".parse()?, &limits, &SigningKey::from_bytes(&[1; 32]))?;
    let client = transport::endpoint("127.0.0.1:0".parse()?, &limits, &SigningKey::from_bytes(&[2; 32]))?;
    let addr = server.local_addr()?;
    let accept = tokio::spawn(async move {
        for _ in 0..CONNECTIONS {
            let Some(incoming) = server.accept().await else { break };
            if let Ok(conn) = incoming.await {
                drop(conn);
            }
        }
    });
    let mut times: Vec<Duration> = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let started = Instant::now();
        let conn = client.connect(addr, transport::SERVER_NAME)?.await?;
        times.push(started.elapsed());
        assert_eq!(
            transport::peer_node_id(&conn).map(|id| id.0),
            Some(SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes()),
            "the server proved its key"
        );
        conn.close(0u32.into(), b"");
    }
    accept.abort();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{CONNECTIONS} connections: median {:.2} ms, p95 {:.2} ms, min {:.2} ms",
        ms(times[CONNECTIONS / 2]),
        ms(times[CONNECTIONS * 95 / 100]),
        ms(times[0])
    );
    let _ = limits;
    Ok(())
}
