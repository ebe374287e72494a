//! The host's processor, for runs that put every node on one machine as `scripts/bench-swarm`
//! does. A node handles what has arrived for it only once one of the machine's cores is free,
//! and then handles all of it in one go, as an event loop drains its socket after `epoll_wait`:
//! every wake-up costs `wake_us` and every item its own cost, so a busy machine wakes its
//! nodes less often per item. Off by default: every node then has a machine of its own.

use std::collections::VecDeque;

use serde::Serialize;

#[derive(Clone, Debug, PartialEq)]
pub struct CpuConfig {
    /// Cores the machine has.
    pub cores: usize,
    /// Cores' worth taken by programs outside the swarm (the broadcaster's encoder, the gateway).
    pub other_cores: f64,
    /// CPU time one wake-up costs before any work (scheduler, `epoll_wait`, context switch).
    pub wake_us: f64,
    /// CPU time one chunk costs its receiver, including its forwarding and transport.
    pub chunk_us: f64,
    /// CPU time one control message costs its receiver, including its transport.
    pub message_us: f64,
}

/// What a node finds waiting when it wakes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Work {
    pub chunks: u64,
    pub messages: u64,
}

pub struct Cpu {
    config: CpuConfig,
    free_cores: usize,
    /// Nodes with work waiting for a core, first come first served.
    runnable: VecDeque<usize>,
    busy_us: f64,
    wakeups: u64,
    handled: Work,
}

impl Cpu {
    pub fn new(config: CpuConfig) -> Cpu {
        Cpu {
            free_cores: config.cores,
            config,
            runnable: VecDeque::new(),
            busy_us: 0.0,
            wakeups: 0,
            handled: Work::default(),
        }
    }

    /// Queues a node that has work and is neither queued nor running.
    pub fn wake(&mut self, node: usize) {
        self.runnable.push_back(node);
    }

    /// The next queued node, if a core is free for it now.
    pub fn dispatch(&mut self) -> Option<usize> {
        if self.free_cores == 0 {
            return None;
        }
        let node = self.runnable.pop_front()?;
        self.free_cores -= 1;
        Some(node)
    }

    /// CPU time a node's slice costs, and how long it holds its core: the other programs slow
    /// every core evenly.
    pub fn slice(&mut self, work: Work) -> (f64, u64) {
        let c = &self.config;
        let cost = c.wake_us + work.chunks as f64 * c.chunk_us + work.messages as f64 * c.message_us;
        let speed = (1.0 - c.other_cores / c.cores as f64).max(0.05);
        self.busy_us += cost;
        self.wakeups += 1;
        self.handled.chunks += work.chunks;
        self.handled.messages += work.messages;
        (cost, (cost / speed).ceil() as u64)
    }

    /// A slice ended and gave its core back.
    pub fn release(&mut self) {
        self.free_cores += 1;
    }

    pub fn report(&self, duration_us: u64, peer_cpu_us: f64, peer_seconds: f64) -> CpuReport {
        let c = &self.config;
        let capacity = c.cores as f64 * duration_us.max(1) as f64;
        let per_node_s = |n: u64| (n as f64 / peer_seconds.max(1e-9) * 10.0).round() / 10.0;
        CpuReport {
            cores: c.cores,
            utilisation: ((self.busy_us + c.other_cores * duration_us as f64) / capacity * 1000.0).round() / 1000.0,
            core_pct_per_peer: (peer_cpu_us / peer_seconds.max(1e-9) / 1e6 * 100.0 * 100.0).round() / 100.0,
            per_node_s: PerNode {
                wakeups: per_node_s(self.wakeups),
                chunks: per_node_s(self.handled.chunks),
                messages: per_node_s(self.handled.messages),
            },
        }
    }
}

/// What the shared CPU did over a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuReport {
    pub cores: usize,
    /// Busy share of all cores, other programs included.
    pub utilisation: f64,
    /// Percent of one core per peer.
    pub core_pct_per_peer: f64,
    pub per_node_s: PerNode,
}

/// Per peer per second online.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PerNode {
    pub wakeups: f64,
    pub chunks: f64,
    pub messages: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(cores: usize) -> Cpu {
        Cpu::new(CpuConfig {
            cores,
            other_cores: 0.0,
            wake_us: 30.0,
            chunk_us: 400.0,
            message_us: 50.0,
        })
    }

    #[test]
    fn nodes_wait_for_a_free_core_in_turn() {
        let mut c = cpu(1);
        c.wake(3);
        c.wake(5);
        assert_eq!(c.dispatch(), Some(3));
        assert_eq!(c.dispatch(), None, "the only core is taken");
        c.release();
        assert_eq!(c.dispatch(), Some(5));
    }

    #[test]
    fn one_wake_up_pays_for_everything_waiting() {
        let mut c = cpu(2);
        let (alone, _) = c.slice(Work { chunks: 1, messages: 0 });
        let (batch, _) = c.slice(Work { chunks: 2, messages: 2 });
        assert_eq!(alone, 430.0);
        assert_eq!(batch, 30.0 + 800.0 + 100.0);
    }

    #[test]
    fn other_programs_slow_every_core() {
        let mut c = Cpu::new(CpuConfig {
            other_cores: 1.0,
            ..cpu(2).config
        });
        let (cost, held) = c.slice(Work { chunks: 1, messages: 0 });
        assert_eq!((cost, held), (430.0, 860));
    }
}
