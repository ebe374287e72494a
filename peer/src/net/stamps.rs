//! One-way delay on each path, as µTP measures it. QUIC's round trips include the ACKs' way
//! back through the neighbour's own uplink: while a swarm forms, every neighbour's router
//! queue fills with its own probe, and a round trip reads that as ours. So while chunks go
//! out, a path carries a stamp now and then (a datagram with our clock); the neighbour echoes
//! it with its own clock at arrival, and the difference, less its least (the clocks' offset),
//! is the queue on our side of the path only.
//!
//! Every path is stamped, not only those chunks go out on: a leaf sends only control messages,
//! and with its paths unsampled its controller was blind, never probed, and stayed a leaf
//! (a viewer that joined beside its household's upload kept that upload's share for good).
//! A path no chunk piece stamped lately gets a stamp on its own every `IDLE_EVERY`.
//! (Not with every control write: links carry control messages many times a second, and
//! stamps and echoes that often on every link cost more packets than the samples are worth.)
//!
//! Datagrams on a link: padding (zeros, read and dropped), a stamp, or an echo. A neighbour
//! that does not echo (an older version) leaves its path on round trips.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::uplink::{SharedUplink, path_of};

const STAMP: u8 = 1;
const ECHO: u8 = 2;
const STAMP_LEN: usize = 1 + 8;
const ECHO_LEN: usize = 1 + 8 + 8;
/// A path is stamped at most this often (a datagram in a packet of its own costs ~50 bytes:
/// 8 kbit/s a path at most, and mostly it rides with the chunk's packets).
const STAMP_EVERY: Duration = Duration::from_millis(50);
/// A path nothing else stamped is stamped this often (a datagram of its own: ~2 kbit/s), so
/// the controller has fresh delays on it (it believes paths sampled within the last second).
const IDLE_EVERY: Duration = Duration::from_millis(300);
/// Echoes sent at most this often on a link (a neighbour cannot make us send more).
const ECHO_EVERY: Duration = Duration::from_millis(10);
/// One-way delays carry the clocks' offset, either way: shifted by this much they stay
/// positive (a Duration), and the base takes the shift away with the offset.
const SHIFT_US: i64 = 1 << 50;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn clock_us() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// A link's stamping: when it was last stamped (µs on our clock, 0 for never).
#[derive(Default)]
pub struct Stamps {
    last: AtomicU64,
}

impl Stamps {
    /// A piece of a chunk went out on `conn`: stamp the path if it is due (the stamp rides in
    /// the same packet).
    pub fn after_piece(&self, conn: &quinn::Connection) {
        self.stamp_unless_within(conn, STAMP_EVERY);
    }

    fn stamp_unless_within(&self, conn: &quinn::Connection, within: Duration) {
        let now = clock_us();
        let last = self.last.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < within.as_micros() as u64 {
            return;
        }
        if self.last.compare_exchange(last, now, Relaxed, Relaxed).is_err() {
            return; // another piece stamped it just now
        }
        let mut b = BytesMut::with_capacity(STAMP_LEN);
        b.put_u8(STAMP);
        b.put_u64(now);
        let _ = conn.send_datagram(b.freeze());
    }
}

/// Reads the neighbour's datagrams until the link ends: echoes its stamps, feeds the echoes
/// of ours to the uplink controller, drops padding; and stamps the path when nothing else
/// did for a while.
pub async fn serve(conn: quinn::Connection, uplink: SharedUplink, stamps: Arc<Stamps>) {
    let path = path_of(&conn);
    let mut echoed_at: Option<Instant> = None;
    let mut idle = tokio::time::interval(IDLE_EVERY);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let d = tokio::select! {
            d = conn.read_datagram() => match d {
                Ok(d) => d,
                Err(_) => return,
            },
            _ = idle.tick() => {
                stamps.stamp_unless_within(&conn, IDLE_EVERY);
                continue;
            }
        };
        match (d.first(), d.len()) {
            (Some(&STAMP), STAMP_LEN) => {
                let now = Instant::now();
                if echoed_at.is_some_and(|t| now.duration_since(t) < ECHO_EVERY) {
                    continue;
                }
                echoed_at = Some(now);
                let mut b = BytesMut::with_capacity(ECHO_LEN);
                b.put_u8(ECHO);
                b.put_slice(&d[1..STAMP_LEN]);
                b.put_u64(clock_us());
                let _ = conn.send_datagram(b.freeze());
            }
            (Some(&ECHO), ECHO_LEN) => {
                let Some(path) = path else { continue };
                if let Some(delay) = one_way(&d) {
                    uplink.lock().on_one_way(path, delay, Instant::now());
                }
            }
            _ => {} // padding (or a kind this version does not know)
        }
    }
}

/// An echo's one-way delay: the neighbour's clock at arrival less ours at sending, shifted
/// positive. `None` for a stamp we could not have sent (from the future).
fn one_way(echo: &Bytes) -> Option<Duration> {
    let sent = u64::from_be_bytes(echo[1..9].try_into().ok()?);
    let arrived = u64::from_be_bytes(echo[9..17].try_into().ok()?);
    if sent > clock_us() {
        return None;
    }
    let delay = (arrived as i64).wrapping_sub(sent as i64).checked_add(SHIFT_US)?;
    u64::try_from(delay).ok().map(Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(sent: u64, arrived: u64) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(ECHO);
        b.put_u64(sent);
        b.put_u64(arrived);
        b.freeze()
    }

    #[test]
    fn one_way_delays_keep_their_order_whatever_the_clocks_offset() {
        let sent = clock_us();
        // The neighbour's clock is behind ours, or far ahead: differences are what count.
        for offset in [-1_000_000_000i64, 0, 5_000_000_000] {
            let at = |d: i64| (sent as i64 + offset + d) as u64;
            let a = one_way(&echo(sent, at(10_000))).expect("an echo");
            let b = one_way(&echo(sent, at(70_000))).expect("an echo");
            assert_eq!(b - a, Duration::from_millis(60));
        }
        assert_eq!(one_way(&echo(sent + 10_000_000, sent)), None, "a stamp from the future");
    }

    #[tokio::test]
    async fn a_path_nothing_goes_out_on_keeps_its_delays_fresh() {
        use crate::net::transport::{SERVER_NAME, endpoint_with};
        use crate::net::uplink::Reporting;
        use ed25519_dalek::SigningKey;
        use shoal_core::limits::Limits;
        use shoal_core::uplink::{Uplink, UplinkConfig};

        let limits = Limits::default();
        let uplink = |now| SharedUplink::new(Uplink::new(UplinkConfig::default(), now));
        let (ours, theirs) = (uplink(Instant::now()), uplink(Instant::now()));
        let endpoint = |seed, uplink: &SharedUplink| {
            let key = SigningKey::from_bytes(&[seed; 32]);
            endpoint_with(
                "127.0.0.1:0".parse().unwrap(),
                &limits,
                &key,
                Reporting::factory(uplink.clone()),
            )
            .unwrap()
        };
        let (server, client) = (endpoint(1, &theirs), endpoint(2, &ours));
        let addr = server.local_addr().unwrap();
        let accepted = tokio::spawn(async move { server.accept().await.unwrap().await.unwrap() });
        let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
        let accepted = accepted.await.unwrap();
        let stamps = Arc::new(Stamps::default());
        tokio::spawn(serve(accepted, theirs, Arc::new(Stamps::default())));
        tokio::spawn(serve(conn.clone(), ours.clone(), stamps.clone()));
        // A piece of a chunk went out: the path reads one-way delays from the first echo on
        // (round trips then only time it). Then nothing more, as at a leaf: the path must
        // still be read, or the controller is blind and never probes its uplink.
        stamps.after_piece(&conn);
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                !ours.lock().describe_paths().contains('?'),
                "the path is believed from the start"
            );
        }
        let described = ours.lock().describe_paths();
        assert!(described.contains(":+"), "one-way delays: {described}");
        assert_eq!(ours.lock().paths_believed(Instant::now()), 1, "{described}");
        conn.close(0u32.into(), b"done");
    }
}
