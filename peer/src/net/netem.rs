//! Network emulation for benchmarks (feature `netem`, never in a normal build): loopback has
//! no delay and this machine has no netem qdisc, so a node's UDP socket itself delays what it
//! receives by half the round trip and drops a share of it. Every node of a benchmark runs
//! with `SHOAL_NETEM="rtt_ms=50,loss=0.02"`, so each path gets the whole RTT and the loss on
//! each direction.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::{Instant, Sleep};

/// The environment variable that turns emulation on.
pub const ENV: &str = "SHOAL_NETEM";
/// Datagrams held back at once; beyond this they are dropped, as a full router queue would.
const QUEUE_LIMIT: usize = 50_000;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Netem {
    pub rtt: Duration,
    pub loss: f64,
}

impl Netem {
    /// From `SHOAL_NETEM`, if set: `rtt_ms=50,loss=0.02` (either may be left out).
    pub fn from_env() -> anyhow::Result<Option<Netem>> {
        match std::env::var(ENV) {
            Ok(spec) => spec.parse().map(Some),
            Err(_) => Ok(None),
        }
    }
}

impl std::str::FromStr for Netem {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> anyhow::Result<Netem> {
        let mut netem = Netem {
            rtt: Duration::ZERO,
            loss: 0.0,
        };
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .with_context(|| format!("{ENV}: {item:?} is not key=value"))?;
            match key {
                "rtt_ms" => netem.rtt = Duration::from_millis(value.parse().context("rtt_ms")?),
                "loss" => netem.loss = value.parse().context("loss")?,
                _ => bail!("{ENV}: unknown key {key:?} (rtt_ms, loss)"),
            }
        }
        if !(0.0..1.0).contains(&netem.loss) {
            bail!("{ENV}: loss must be in [0, 1)");
        }
        Ok(netem)
    }
}

struct Held {
    due: Instant,
    data: Vec<u8>,
    addr: SocketAddr,
    ecn: Option<EcnCodepoint>,
    dst_ip: Option<IpAddr>,
}

struct State {
    queue: VecDeque<Held>,
    timer: Option<Pin<Box<Sleep>>>,
    rng: SmallRng,
    scratch: Vec<u8>,
}

/// A UDP socket whose received datagrams arrive late, or not at all.
pub struct Socket {
    inner: Arc<dyn AsyncUdpSocket>,
    netem: Netem,
    state: Mutex<State>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("netem::Socket").field("netem", &self.netem).finish()
    }
}

impl Socket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, netem: Netem) -> Self {
        // Room for a whole GRO batch of full-size datagrams.
        let scratch = (inner.max_receive_segments() * 1500).max(64 * 1024);
        Socket {
            inner,
            netem,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                timer: None,
                rng: SmallRng::seed_from_u64(seed()),
                scratch: vec![0; scratch],
            }),
        }
    }
}

impl AsyncUdpSocket for Socket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let one_way = self.netem.rtt / 2;
        // Take in whatever arrived, stamping when it may be handed on.
        loop {
            let mut scratch = std::mem::take(&mut st.scratch);
            let mut m = [RecvMeta::default()];
            let polled = self.inner.poll_recv(cx, &mut [IoSliceMut::new(&mut scratch)], &mut m);
            let arrived = match polled {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => {
                    st.scratch = scratch;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    st.scratch = scratch;
                    break;
                }
            };
            let due = Instant::now() + one_way;
            for m in &m[..arrived] {
                // A GRO buffer holds several datagrams, `stride` bytes apart.
                for datagram in scratch[..m.len].chunks(m.stride.max(1)) {
                    if st.rng.random::<f64>() < self.netem.loss || st.queue.len() >= QUEUE_LIMIT {
                        continue;
                    }
                    st.queue.push_back(Held {
                        due,
                        data: datagram.to_vec(),
                        addr: m.addr,
                        ecn: m.ecn,
                        dst_ip: m.dst_ip,
                    });
                }
            }
            st.scratch = scratch;
        }
        // Hand on what is due, one datagram per buffer.
        let now = Instant::now();
        let mut delivered = 0;
        while delivered < bufs.len().min(meta.len()) {
            let Some(front) = st.queue.front() else { break };
            if front.due > now {
                break;
            }
            let held = st.queue.pop_front().expect("front exists");
            let len = held.data.len().min(bufs[delivered].len());
            bufs[delivered][..len].copy_from_slice(&held.data[..len]);
            meta[delivered] = RecvMeta {
                addr: held.addr,
                len,
                stride: len,
                ecn: held.ecn,
                dst_ip: held.dst_ip,
            };
            delivered += 1;
        }
        if delivered > 0 {
            return Poll::Ready(Ok(delivered));
        }
        // Nothing due yet: wake when the oldest is.
        if let Some(front) = st.queue.front() {
            let due = front.due;
            let timer = st.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            timer.as_mut().reset(due);
            if timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A seed that differs between nodes (their drops must not be in step).
fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes) ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_settings() {
        let n: Netem = "rtt_ms=50,loss=0.02".parse().unwrap();
        assert_eq!((n.rtt, n.loss), (Duration::from_millis(50), 0.02));
        assert!("rtt=5".parse::<Netem>().is_err());
        assert!("loss=1.5".parse::<Netem>().is_err());
    }
}
