//! A running swarm node: the quinn endpoint, the accept and dial loops, and the one task
//! that owns the sans-IO `State`, feeds it events and carries out its actions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use shoal_proto::{Chunk, Message, NodeId, close};
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use shoal_core::drive;
use shoal_core::state::{self, Event, State};
use shoal_core::uplink::{Mode, Uplink, UplinkConfig};

use super::connect::{Dialer, run_link};
use super::link::{Identity, Shared};
use super::links::Links;
use super::mailbox::{Input, LinkHandle};
use super::pacer::Pacer;
use super::stats::{Stats, spawn_writer};
use super::uplink::{Reporting, SharedUplink};
use crate::events::{EVENTS_QUEUE, Events, NodeEvent};

/// Events queued towards the core from all links together.
const INPUT_QUEUE: usize = 4096;
/// Verified chunks queued towards the local consumer (the gateway).
const DELIVERY_QUEUE: usize = 1024;
/// How often the core gets a `Tick`.
const TICK: Duration = Duration::from_millis(50);
/// How often `shoal::uplink` debug lines are written.
const TRACE_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub stream_key: VerifyingKey,
    /// The key this node proves in every handshake: its node ID is the public half. `None`:
    /// a fresh one for this run (viewers and relays; an ID that outlived the show would only
    /// be a handle to follow a viewer by). The broadcaster passes its stream key, so every
    /// peer knows for certain which neighbour is the source.
    pub node_key: Option<SigningKey>,
    pub listen: SocketAddr,
    /// Addresses dialled at start and re-dialled whenever they are not connected.
    pub dial: Vec<SocketAddr>,
    /// The most this node uploads, in kbit/s (all chunk streams together).
    pub upload_kbps: Option<u64>,
    /// Whether its chunk uploads step aside for the household's traffic (background) or
    /// are paced only by `upload_kbps` (foreground: the broadcaster, public relays).
    pub upload_mode: Mode,
    pub core: state::Config,
    pub stats_json: Option<PathBuf>,
    /// Ask the router to forward a public port here (PCP, NAT-PMP, UPnP-IGD).
    pub port_mapping: bool,
}

pub struct Node {
    node_id: NodeId,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    inputs: mpsc::Sender<Input>,
    stats: Arc<Stats>,
    deliveries: Option<mpsc::Receiver<Chunk>>,
    events: broadcast::Sender<NodeEvent>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    pub async fn spawn(config: NodeConfig) -> anyhow::Result<Node> {
        let node_key = match config.node_key.clone() {
            Some(key) => key,
            None => SigningKey::from_bytes(&random_seed()?),
        };
        let node_id = NodeId(node_key.verifying_key().to_bytes());
        let uplink = SharedUplink::new(Uplink::new(
            UplinkConfig {
                mode: config.upload_mode,
                cap_bps: config.upload_kbps.map(|k| k as f64 * 1000.0),
                // A foreground node is presumed strong; a node that uploads nothing has
                // nothing to learn.
                probe: config.upload_mode == Mode::Background && config.upload_kbps != Some(0),
                ..UplinkConfig::default()
            },
            Instant::now().into_std(),
        ));
        let endpoint = super::transport::endpoint_with(
            config.listen,
            &config.core.limits,
            &node_key,
            Reporting::factory(uplink.clone()),
        )?;
        let local_addr = endpoint.local_addr()?;
        let stats = Stats::new(
            node_id,
            NodeId(config.stream_key.to_bytes()),
            config.core.limits.clone(),
        );
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (inputs, input_rx) = mpsc::channel(INPUT_QUEUE);
        let (events, _) = broadcast::channel(EVENTS_QUEUE);
        let (delivery_tx, delivery_rx) = mpsc::channel(DELIVERY_QUEUE);

        let listen = super::transport::advertised_addrs(local_addr);
        let (listen_tx, listen_rx) = watch::channel(listen.clone());
        let identity = Identity {
            node_id,
            stream_key: config.stream_key,
            listen: listen_rx,
        };
        let pacer = Pacer::new(uplink.clone(), config.upload_kbps == Some(0), stats.clone());
        tasks.spawn(pacer.clone().run(cancel.clone()));
        let shared = Shared {
            stream_key: config.stream_key,
            events: inputs.clone(),
            stats: stats.clone(),
            pacer,
            limits: config.core.limits.clone(),
        };
        let mut core_config = config.core;
        core_config.listen = listen;
        if let Some(kbps) = config.upload_kbps {
            core_config.upload_bps = Some(kbps * 1000);
        }
        let deliver = core_config.deliver;
        let core_seed = u64::from_le_bytes(random_seed()?[..8].try_into().expect("8 bytes"));
        let mut core = State::new(node_id, core_config, core_seed, Instant::now().into_std());
        let dialer = Dialer {
            endpoint: endpoint.clone(),
            identity: identity.clone(),
            shared: shared.clone(),
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            unreachable: Arc::new(Mutex::new(config.dial.iter().copied().collect())),
        };
        // The core dials these at once, and again whenever it is not connected to them.
        core.add_peers(&config.dial);
        let links = Links::new(stats.clone(), deliver.then_some(delivery_tx), dialer, events.clone());
        tasks.spawn(run_core(core, input_rx, links, listen_tx, uplink));
        tasks.spawn(accept(
            endpoint.clone(),
            identity.clone(),
            shared.clone(),
            cancel.clone(),
        ));
        if config.port_mapping && crate::discovery::portmap::applies(local_addr) {
            tasks.spawn(crate::discovery::portmap::run(
                local_addr,
                inputs.clone(),
                cancel.clone(),
            ));
        }
        if let Some(path) = config.stats_json {
            let stats = stats.clone();
            tasks.spawn(spawn_writer(path, move || stats.snapshot(), cancel.clone()));
        }
        tracing::info!(node = %node_id.short(), %local_addr, "node up");
        Ok(Node {
            node_id,
            local_addr,
            endpoint,
            inputs,
            stats,
            deliveries: Some(delivery_rx),
            events,
            cancel,
            tasks,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Verified chunks, as they become held (only with `core.deliver`).
    pub fn take_deliveries(&mut self) -> Option<mpsc::Receiver<Chunk>> {
        self.deliveries.take()
    }

    /// Neighbours coming and going, from now on.
    pub fn events(&self) -> Events<NodeEvent> {
        Events::new(self.events.subscribe())
    }

    /// A handle the broadcaster uses to put its own chunks into the swarm.
    pub fn publisher(&self) -> Publisher {
        Publisher(self.inputs.clone())
    }

    /// Where to hand addresses found elsewhere (the DHT): the node dials them like a ticket's.
    pub fn peer_finder(&self) -> impl Fn(Vec<SocketAddr>) + Send + 'static {
        let inputs = self.inputs.clone();
        move |addrs| {
            // A full queue drops this lookup's answer; the next lookup brings it again.
            let _ = inputs.try_send(Input::Discovered(addrs));
        }
    }

    /// Says goodbye to every neighbour, closes the endpoint and waits for the tasks.
    /// Returns once the node's UDP port is free again (or a second later at most).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        self.endpoint.close(close::GOODBYE.into(), b"goodbye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        // The socket goes when quinn's endpoint driver next runs after its last handle drops:
        // wait for that, so a caller may bind the port again at once.
        let addr = self.local_addr;
        drop(self);
        let released = async {
            while std::net::UdpSocket::bind(addr).is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), released).await;
    }
}

impl Drop for Node {
    /// Stops every task the node started (without the goodbyes `shutdown` sends).
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Clone)]
pub struct Publisher(mpsc::Sender<Input>);

impl Publisher {
    /// Hands a signed chunk to the swarm; waits if the node is behind.
    pub async fn publish(&self, chunk: Chunk) -> anyhow::Result<()> {
        self.0
            .send(Input::Publish(chunk))
            .await
            .map_err(|_| anyhow::anyhow!("the swarm node has stopped"))
    }
}

async fn run_core(
    mut core: State,
    mut inputs: mpsc::Receiver<Input>,
    mut links: Links,
    listen: watch::Sender<Vec<SocketAddr>>,
    uplink: SharedUplink,
) {
    let cancel = links.dialer.cancel.clone();
    let (stats, events) = (links.stats.clone(), links.events.clone());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (`RUST_LOG=shoal::uplink=debug`: what the uplink controller sees, every `TRACE_EVERY`.)
    let mut traced: Option<std::time::Instant> = None;
    let mut traced_rate = 0.0;
    let mut traced_capacity = None;
    loop {
        let input = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => Input::Event(Event::Tick),
            input = inputs.recv() => match input { Some(i) => i, None => break },
        };
        let now = Instant::now().into_std();
        let event = match input {
            Input::Event(event) => event,
            Input::Publish(chunk) => Event::Publish(Arc::new(chunk)),
            Input::Discovered(addrs) => {
                core.add_peers(&addrs);
                continue;
            }
            Input::Mapped(mapping) => {
                stats.set_mapping(mapping);
                core.set_mapped(mapping.map(|m| m.external));
                listen.send_replace(core.config().listen.clone());
                continue;
            }
            Input::Linked(link) => {
                if let Some(existing) = links.by_id.get(&link.node_id) {
                    // Two nodes that dial each other at once each hold two connections:
                    // both keep the one the smaller node ID dialled (closing "the new one"
                    // on each side closed both, and they dialled again, and again).
                    let me = core.node_id();
                    let dialler = |l: &LinkHandle| if l.outbound { me } else { l.node_id };
                    if dialler(&link) < dialler(existing) {
                        if let Some(old) = links.by_id.insert(link.node_id, link) {
                            old.conn.close(close::DUPLICATE.into(), b"already connected");
                            stats.closed(&old.stats);
                        }
                    } else {
                        link.conn.close(close::DUPLICATE.into(), b"already connected");
                    }
                    continue;
                }
                let event = Event::NeighbourUp {
                    id: link.node_id,
                    addr: link.conn.remote_address(),
                    listen: link.listen.clone(),
                    outbound: link.outbound,
                };
                tracing::info!(neighbour = %link.node_id.short(), addr = %link.conn.remote_address(), "neighbour up");
                if let Some(seen) = link.observed
                    && !core.config().listen.contains(&seen)
                    && stats.observed_at(seen, link.node_id)
                {
                    tracing::info!(%seen, "neighbours see this node at {seen}: its address beyond this network's NAT");
                }
                let _ = events.send(NodeEvent::NeighbourUp {
                    node_id: link.node_id,
                    addr: link.conn.remote_address(),
                });
                links.by_id.insert(link.node_id, link);
                event
            }
            Input::Unlinked { node_id, conn_id, why } => {
                if links.by_id.get(&node_id).is_none_or(|l| l.conn.stable_id() != conn_id) {
                    continue;
                }
                if let Some(link) = links.by_id.remove(&node_id) {
                    stats.closed(&link.stats);
                }
                tracing::info!(neighbour = %node_id.short(), %why, "neighbour down");
                let _ = events.send(NodeEvent::NeighbourDown { node_id, why });
                Event::NeighbourDown { id: node_id }
            }
        };
        let is_tick = matches!(event, Event::Tick);
        drive(core.handle(event, now), &mut links);
        for id in std::mem::take(&mut links.hung_up) {
            let _ = core.handle(Event::NeighbourDown { id }, now).count();
        }
        if is_tick {
            // The core plans children with what the uplink was seen to carry.
            let (report, plan, why) = {
                let u = uplink.lock();
                (u.report(), u.plan_bps(), u.why())
            };
            core.set_upload_capacity(plan.map(|b| b as u64));
            stats.set_core(&core);
            let rate = report.pacing_bps.unwrap_or(0.0);
            if rate != traced_rate {
                traced_rate = rate;
                tracing::trace!(target: "shoal::uplink", kbps = (rate / 1000.0).round(), why, queue = ?report.queue, "rate");
            }
            if report.capacity_bps != traced_capacity {
                traced_capacity = report.capacity_bps;
                let kbps = traced_capacity.map(|b| (b / 1000.0).round());
                tracing::trace!(target: "shoal::uplink", kbps, how = report.how.as_str(), "capacity");
            }
            if tracing::enabled!(target: "shoal::uplink", tracing::Level::DEBUG)
                && traced.is_none_or(|t| now.duration_since(t) >= TRACE_EVERY)
            {
                traced = Some(now);
                let c = core.counters();
                tracing::debug!(target: "shoal::uplink", ?report, plan, paths = %uplink.lock().describe_paths(), served = c.requests_served, refused = c.requests_refused, asked = c.requests_sent, verified = c.verified, children = core.children(), depths = ?core.depths(), "uplink");
            }
            stats.set_uplink(report);
        }
    }
    // Shutting down: tell every neighbour we are leaving.
    stats.set_core(&core);
    for link in links.by_id.values() {
        let _ = link.control.try_send(Message::Goodbye {
            reason: close::GOODBYE as u8,
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for link in links.by_id.values() {
        link.conn.close(close::GOODBYE.into(), b"goodbye");
    }
}

async fn accept(endpoint: quinn::Endpoint, identity: Identity, shared: Shared, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(shared.limits.max_incoming_connections));
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return,
            incoming = endpoint.accept() => match incoming { Some(i) => i, None => return },
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.stats.connection_refused();
            incoming.refuse();
            continue;
        };
        let (identity, shared, cancel) = (identity.clone(), shared.clone(), cancel.clone());
        connections.spawn(async move {
            let _slot = slot;
            match incoming.await {
                Ok(conn) => {
                    run_link(conn, &identity, false, &shared, &cancel).await;
                }
                Err(e) => tracing::debug!("incoming connection failed: {e}"),
            }
        });
    }
}

fn random_seed() -> anyhow::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    Ok(seed)
}
