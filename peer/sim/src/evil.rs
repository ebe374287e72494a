//! A hostile peer in the simulator: it announces chunks it lacks (false HAVE), claims to sit
//! next to the source with room for children, swallows every push it is given (black hole),
//! ignores REQUESTs, and sends forged chunks to everyone it meets. Like a real one it cannot
//! pass for another node: what it sends carries no sender, and the harness attributes it to
//! the link it came over (the real node takes the ID its neighbour proved in the handshake).

use rustc_hash::FxHashSet as HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use shoal_proto::message::SeqRange;
use shoal_proto::{Chunk, Message, PeerInfo};

use super::uplink::Payload;

pub struct Evil {
    stripes: u8,
    neighbours: HashSet<usize>,
    /// A real chunk seen, to forge copies of.
    template: Option<Chunk>,
    dials: Vec<SocketAddr>,
    ticks: u64,
}

impl Evil {
    pub fn new(stripes: u8) -> Self {
        Evil {
            stripes,
            neighbours: HashSet::default(),
            template: None,
            dials: Vec::new(),
            ticks: 0,
        }
    }

    fn lies(&self) -> Vec<Message> {
        let mut out = vec![Message::Status {
            depths: vec![1; usize::from(self.stripes)],
            children: vec![8; usize::from(self.stripes)],
            upload_kbps: 100_000,
            free_slots: 64,
            // (A stream far slighter than it is: newcomers would plan too many children.)
            stream_kbps: 100,
            epoch: 1,
            segment_start: None,
        }];
        if let Some(c) = &self.template {
            out.push(Message::Have {
                epoch: c.header.epoch,
                ranges: vec![SeqRange {
                    start: c.header.seq,
                    len: 400,
                }],
            });
        }
        out
    }

    pub fn up(&mut self, peer: usize) -> Vec<(usize, Payload)> {
        self.neighbours.insert(peer);
        vec![(peer, Payload::Control(self.lies()))]
    }

    pub fn down(&mut self, peer: usize) {
        self.neighbours.remove(&peer);
    }

    pub fn receive(&mut self, _from: usize, payload: &Payload) -> Vec<(usize, Payload)> {
        match payload {
            Payload::Chunk(chunk, _) if self.template.as_ref().is_none_or(|t| t.header.seq < chunk.header.seq) => {
                self.template = Some(Chunk::clone(chunk));
            }
            Payload::Control(messages) => {
                for message in messages {
                    if let Message::Pex { peers } = message {
                        // Spread to whoever it hears of.
                        self.dials
                            .extend(peers.iter().filter_map(|p: &PeerInfo| p.addrs.first().copied()).take(4));
                    }
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// Every tick: lie again; every second: a forged chunk to each neighbour.
    pub fn tick(&mut self) -> Vec<(usize, Payload)> {
        self.ticks += 1;
        let mut out = Vec::new();
        if self.ticks.is_multiple_of(20) {
            let lies = self.lies();
            out.extend(self.neighbours.iter().map(|n| (*n, Payload::Control(lies.clone()))));
            if let Some(t) = &self.template {
                let mut forged = t.clone();
                forged.header.seq += 30;
                let forged = Arc::new(forged);
                out.extend(
                    self.neighbours
                        .iter()
                        .map(|n| (*n, Payload::Chunk(forged.clone(), true))),
                );
            }
        }
        out
    }

    pub fn take_dials(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.dials)
    }
}
