//! The vocabulary of the swarm core: its configuration, the events it is fed, the actions it
//! answers with, and the counters it keeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::{Chunk, ChunkHeader, Message, NodeId, close};

use crate::limits::Limits;

#[derive(Clone, Debug)]
pub struct Config {
    /// Bounds on what neighbours can make this node hold or do (window, neighbours, rates).
    pub limits: Limits,
    /// The stream is split into this many stripes (chunk seq modulo stripes), each pushed
    /// down its own tree, so no single parent carries the whole stream or a whole keyframe.
    pub stripes: u8,
    /// This node's upload capacity in bit/s, all bytes included; `None` if unknown.
    pub upload_bps: Option<u64>,
    /// The broadcaster: depth 0 in every stripe, one child per stripe so it uploads ≈ 1×.
    pub source: bool,
    /// Children per stripe the source feeds (its upload ≈ this × the stream).
    pub source_fanout: usize,
    /// Children taken when the upload capacity is unknown (per stripe-slot units).
    pub default_slots: usize,
    /// Most children per stripe, whatever the capacity: bounds per-hop serialisation delay.
    pub max_children_per_stripe: usize,
    /// Share of the upload kept free of eager pushes, for control, repair and bursts.
    pub upload_reserve: f64,
    /// How often new holdings are announced to neighbours.
    pub have_interval: Duration,
    /// How often depths and free slots are told to neighbours (also sent on change).
    pub status_interval: Duration,
    /// How long a gap may stay open before it is pulled from a neighbour that has it.
    pub repair_after: Duration,
    /// How long to wait for a requested chunk before asking another neighbour.
    pub request_timeout: Duration,
    /// A parent that sent nothing of its stripe for this long, while others did, is replaced.
    pub parent_timeout: Duration,
    /// A pushed chunk older than this (behind the newest) is dropped instead of sent late.
    pub push_deadline: Duration,
    /// How long a neighbour that sent forged or malformed data stays banned.
    pub ban_for: Duration,
    /// Active neighbours: dial more below this (newcomers are refused above `limits.max_neighbours`).
    pub active_min: usize,
    /// Known addresses kept for later (HyParView's passive view).
    pub passive_max: usize,
    /// How often a sample of known peers is sent to each neighbour.
    pub pex_interval: Duration,
    /// Emit `Action::Deliver` for every new chunk (the gateway wants them; a relay does not).
    pub deliver: bool,
    /// Take part in peer exchange (off: stay with the bootstrap peers).
    pub discovery: bool,
    /// This node's own addresses: never dialled, and told to others in HELLO.
    pub listen: Vec<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            stripes: 4,
            upload_bps: None,
            source: false,
            source_fanout: 1,
            default_slots: 8,
            max_children_per_stripe: 8,
            upload_reserve: 0.2,
            have_interval: Duration::from_millis(200),
            status_interval: Duration::from_secs(1),
            repair_after: Duration::from_millis(400),
            request_timeout: Duration::from_millis(800),
            parent_timeout: Duration::from_millis(1200),
            push_deadline: Duration::from_secs(3),
            ban_for: Duration::from_secs(600),
            active_min: 5,
            passive_max: 64,
            pex_interval: Duration::from_secs(5),
            deliver: false,
            discovery: true,
            listen: Vec::new(),
        }
    }
}

/// Why a chunk or message from a neighbour was refused before reaching the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    BadSignature,
    Malformed,
    Oversized,
    Protocol,
    /// More control messages than `limits.control_per_s` allows.
    ControlFlood,
    /// Asked for more chunks than `limits.requested_per_s` allows.
    RequestFlood,
    /// Announced chunks further ahead of the live edge than can exist.
    FalseHave,
    /// Sent more chunks from outside the window than `limits.stale_per_s` allows.
    Stale,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::BadSignature => "bad_signature",
            Reject::Malformed => "malformed",
            Reject::Oversized => "oversized",
            Reject::Protocol => "protocol",
            Reject::ControlFlood => "control_flood",
            Reject::RequestFlood => "request_flood",
            Reject::FalseHave => "false_have",
            Reject::Stale => "stale",
        }
    }
}

#[derive(Debug)]
pub enum Event {
    /// A connection is up and HELLOs were exchanged. `listen` is where the neighbour accepts
    /// connections (from its HELLO); `outbound` if this node dialled.
    NeighbourUp {
        id: NodeId,
        addr: SocketAddr,
        listen: Vec<SocketAddr>,
        outbound: bool,
    },
    NeighbourDown {
        id: NodeId,
    },
    /// A `Dial` failed (nobody answered, or the handshake failed).
    DialFailed {
        addr: SocketAddr,
    },
    Control {
        from: NodeId,
        msg: Message,
    },
    /// A chunk whose signature the driver has verified.
    Chunk {
        from: NodeId,
        chunk: Arc<Chunk>,
    },
    Rejected {
        from: NodeId,
        reason: Reject,
    },
    /// A chunk this node produced (the broadcaster).
    Publish(Arc<Chunk>),
    Tick,
}

#[derive(Debug, Clone)]
pub enum Action {
    Send {
        to: NodeId,
        msg: Message,
    },
    /// Send a chunk on its own stream; drop it instead if not sent by `deadline`.
    Push {
        to: NodeId,
        chunk: Arc<Chunk>,
        deadline: Instant,
    },
    /// A new verified chunk for the local consumer.
    Deliver(Arc<Chunk>),
    /// What became of a chunk a neighbour sent: drivers measure latency and duplicates by it.
    Judged {
        from: NodeId,
        header: ChunkHeader,
        verdict: Verdict,
    },
    Dial(SocketAddr),
    Disconnect {
        id: NodeId,
        reason: DisconnectReason,
    },
}

/// A received chunk's fate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Newly held.
    New,
    /// Held already; `from_parent` if its stripe's parent sent it again.
    Duplicate { from_parent: bool },
    /// Older than the window: refused.
    Late,
}

/// Why the core hangs up on a neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Banned (or this node itself, dialled by mistake).
    Banned,
    /// Already a neighbour under this node ID.
    Duplicate,
    /// No room: it was handed other peers to try, or let go to make room for better ones.
    Full,
    /// It said GOODBYE.
    Goodbye,
    /// Claimed a place in the trees with no chunk to show while this node starved.
    NoChunks,
    /// Said nothing for longer than any neighbour may.
    Silent,
    /// Sent what honest peers never do: banned.
    Rejected(Reject),
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Banned => "banned",
            DisconnectReason::Duplicate => "duplicate",
            DisconnectReason::Full => "full",
            DisconnectReason::Goodbye => "goodbye",
            DisconnectReason::NoChunks => "no chunks",
            DisconnectReason::Silent => "silent",
            DisconnectReason::Rejected(reject) => reject.as_str(),
        }
    }

    /// The QUIC close code that tells the neighbour why.
    pub fn close_code(self) -> u32 {
        match self {
            DisconnectReason::Goodbye => close::GOODBYE,
            DisconnectReason::Full | DisconnectReason::Duplicate => close::DUPLICATE,
            DisconnectReason::Silent => close::SLOW,
            DisconnectReason::Banned | DisconnectReason::NoChunks | DisconnectReason::Rejected(_) => close::BANNED,
        }
    }
}

/// What handling an event produces: actions for the driver, and the counters it moved.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub actions: Vec<Action>,
    pub counters: Counters,
}

impl Outbox {
    pub fn push(&mut self, action: Action) {
        if let Action::Push { chunk, .. } = &action {
            self.counters.pushed_bytes += chunk.encoded_len() as u64;
        }
        self.actions.push(action);
    }

    pub fn send(&mut self, to: NodeId, msg: Message) {
        self.actions.push(Action::Send { to, msg });
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub verified: u64,
    pub verified_bytes: u64,
    /// Chunks this node produced (the broadcaster), and their wire bytes.
    pub published: u64,
    pub published_bytes: u64,
    /// Chunk bytes handed to the links to send (to children, to those leaving, as repairs).
    pub pushed_bytes: u64,
    pub duplicate: u64,
    pub duplicate_bytes: u64,
    pub late: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub requests_sent: u64,
    pub requests_served: u64,
    /// Chunks asked of us that we had but did not send: no upload left for repairs.
    pub requests_refused: u64,
    pub banned: u64,
    pub parent_changes: u64,
    /// The trees' churn, by cause: children told to go because the upload no longer carries
    /// them, children displaced for a stronger newcomer, parents that told us to go, parents
    /// left for going quiet, and parents left for a nearer or timelier one.
    pub children_shed: u64,
    pub children_displaced: u64,
    pub pruned_by_parent: u64,
    pub parents_quiet: u64,
    pub parents_switched: u64,
    /// Neighbours dropped for saying nothing for too long.
    pub silent_dropped: u64,
    /// Hole punching: punches started (as the dialler or the dialled), connected, timed out,
    /// and introductions made for two neighbours.
    pub punch_attempts: u64,
    pub punch_succeeded: u64,
    pub punch_failed: u64,
    pub introductions: u64,
}
