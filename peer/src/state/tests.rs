use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_proto::message::SeqRange;
use shoal_proto::{ChunkFlags, Message};

use super::*;
use crate::testing::{chunk, node};

fn addr() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

fn state_with(neighbours: &[u8], now: Instant) -> State {
    let mut s = State::new(
        node(0),
        Config {
            deliver: true,
            ..Config::default()
        },
        now,
    );
    for n in neighbours {
        let _ = s
            .handle(
                Event::NeighbourUp {
                    id: node(*n),
                    addr: addr(),
                },
                now,
            )
            .count();
    }
    s
}

fn pushes(actions: &[Action]) -> Vec<(NodeId, u64)> {
    actions
        .iter()
        .filter_map(|a| {
            if let Action::Push { to, chunk, .. } = a {
                Some((*to, chunk.seq()))
            } else {
                None
            }
        })
        .collect()
}

fn requests(actions: &[Action]) -> Vec<(NodeId, Vec<SeqRange>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                to,
                msg: Message::Request { ranges, .. },
            } => Some((*to, ranges.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn new_chunk_goes_to_every_neighbour_but_its_sender_and_the_consumer() {
    let now = Instant::now();
    let mut s = state_with(&[1, 2, 3], now);
    let actions: Vec<_> = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 0, 1_000, ChunkFlags::SEGMENT_START),
            },
            now,
        )
        .collect();
    let mut to: Vec<_> = pushes(&actions).into_iter().map(|(n, _)| n).collect();
    to.sort();
    assert_eq!(to, vec![node(2), node(3)]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Deliver(c) if c.seq() == 0))
    );
    assert_eq!(s.counters().verified, 1);
}

#[test]
fn duplicates_are_counted_and_never_forwarded() {
    let now = Instant::now();
    let mut s = state_with(&[1, 2], now);
    let _ = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 0, 1_000, 0),
            },
            now,
        )
        .count();
    let again: Vec<_> = s
        .handle(
            Event::Chunk {
                from: node(2),
                chunk: chunk(1, 0, 1_000, 0),
            },
            now,
        )
        .collect();
    assert!(again.is_empty());
    assert_eq!(s.counters().duplicate, 1);
}

#[test]
fn a_neighbour_that_announced_a_chunk_is_not_pushed_it() {
    let now = Instant::now();
    let mut s = state_with(&[1, 2], now);
    let _ = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 0, 1_000, 0),
            },
            now,
        )
        .count();
    let _ = s
        .handle(
            Event::Control {
                from: node(2),
                msg: Message::Have {
                    epoch: 1,
                    ranges: vec![SeqRange { start: 1, len: 1 }],
                },
            },
            now,
        )
        .count();
    let actions: Vec<_> = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 1, 2_000, 0),
            },
            now,
        )
        .collect();
    assert!(pushes(&actions).is_empty());
}

#[test]
fn stale_chunks_are_refused_and_old_pushes_dropped() {
    let now = Instant::now();
    let mut s = state_with(&[1, 2], now);
    let _ = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 100, 40_000_000, 0),
            },
            now,
        )
        .count();
    let late: Vec<_> = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 1, 5_000_000, 0),
            },
            now,
        )
        .collect();
    assert!(late.is_empty());
    assert_eq!(s.counters().late, 1);
    // Inside the window but 5 s behind the newest: stored, yet not pushed (past the deadline).
    let old: Vec<_> = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 50, 35_000_000, 0),
            },
            now,
        )
        .collect();
    assert!(pushes(&old).is_empty());
    assert!(s.window().contains(1, 50));
}

#[test]
fn pushes_carry_a_deadline_shortened_by_the_chunks_age() {
    let now = Instant::now();
    let mut s = state_with(&[1, 2], now);
    let _ = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 10, 10_000_000, 0),
            },
            now,
        )
        .count();
    let actions: Vec<_> = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 9, 9_000_000, 0),
            },
            now,
        )
        .collect();
    let deadline = actions
        .iter()
        .find_map(|a| {
            if let Action::Push { deadline, .. } = a {
                Some(*deadline)
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(deadline, now + Duration::from_secs(2));
}

#[test]
fn gaps_are_pulled_from_a_holder_after_a_grace_time_then_from_another() {
    let t0 = Instant::now();
    let mut s = state_with(&[1, 2], t0);
    let _ = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 0, 1_000, 0),
            },
            t0,
        )
        .count();
    let _ = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 2, 3_000, 0),
            },
            t0,
        )
        .count();
    let have = Message::Have {
        epoch: 1,
        ranges: vec![SeqRange { start: 0, len: 3 }],
    };
    let _ = s
        .handle(
            Event::Control {
                from: node(2),
                msg: have.clone(),
            },
            t0,
        )
        .count();
    let _ = s
        .handle(
            Event::Control {
                from: node(1),
                msg: have,
            },
            t0,
        )
        .count();
    assert!(
        requests(
            &s.handle(Event::Tick, t0 + Duration::from_millis(100))
                .collect::<Vec<_>>()
        )
        .is_empty()
    );

    let first = requests(
        &s.handle(Event::Tick, t0 + Duration::from_millis(300))
            .collect::<Vec<_>>(),
    );
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1, vec![SeqRange { start: 1, len: 1 }]);
    // Unanswered: after the timeout the other holder is asked.
    let second = requests(
        &s.handle(Event::Tick, t0 + Duration::from_millis(1000))
            .collect::<Vec<_>>(),
    );
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].0, first[0].0);
}

#[test]
fn requests_are_served_from_the_window_and_bounded() {
    let now = Instant::now();
    let mut s = state_with(&[1, 2], now);
    for seq in 0..10 {
        let _ = s
            .handle(
                Event::Chunk {
                    from: node(1),
                    chunk: chunk(1, seq, seq * 1000, 0),
                },
                now,
            )
            .count();
    }
    let ask = Message::Request {
        epoch: 1,
        ranges: vec![SeqRange {
            start: 5,
            len: 1000,
        }],
    };
    let actions: Vec<_> = s
        .handle(
            Event::Control {
                from: node(2),
                msg: ask,
            },
            now,
        )
        .collect();
    let served: Vec<_> = pushes(&actions)
        .into_iter()
        .filter(|(to, _)| *to == node(2))
        .map(|(_, s)| s)
        .collect();
    assert_eq!(served, vec![5, 6, 7, 8, 9]);
}

#[test]
fn a_forger_is_disconnected_banned_and_refused_on_return() {
    let now = Instant::now();
    let mut s = state_with(&[1], now);
    let actions: Vec<_> = s
        .handle(
            Event::Rejected {
                from: node(1),
                reason: Reject::BadSignature,
            },
            now,
        )
        .collect();
    assert!(matches!(actions[..], [Action::Disconnect { id, .. }] if id == node(1)));
    assert_eq!(s.counters().rejected.get("bad_signature"), Some(&1));
    let back: Vec<_> = s
        .handle(
            Event::NeighbourUp {
                id: node(1),
                addr: addr(),
            },
            now + Duration::from_secs(1),
        )
        .collect();
    assert!(matches!(back[..], [Action::Disconnect { .. }]));
    assert_eq!(s.neighbours().count(), 0);
}

#[test]
fn a_joining_node_backfills_the_last_seconds() {
    let now = Instant::now();
    let mut s = state_with(&[1], now);
    let have = Message::Have {
        epoch: 1,
        ranges: vec![SeqRange { start: 0, len: 200 }],
    };
    let actions: Vec<_> = s
        .handle(
            Event::Control {
                from: node(1),
                msg: have,
            },
            now,
        )
        .collect();
    assert_eq!(
        requests(&actions),
        vec![(
            node(1),
            vec![SeqRange {
                start: 110,
                len: 90
            }]
        )]
    );
}

#[test]
fn startup_is_measured_to_the_first_whole_segment() {
    let t0 = Instant::now();
    let mut s = state_with(&[1], t0);
    let t1 = t0 + Duration::from_millis(700);
    let _ = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 0, 1_000, ChunkFlags::SEGMENT_START),
            },
            t1,
        )
        .count();
    let _ = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 1, 2_000, 0),
            },
            t1,
        )
        .count();
    assert_eq!(s.startup(), None);
    let _ = s
        .handle(
            Event::Chunk {
                from: node(1),
                chunk: chunk(1, 2, 3_000, ChunkFlags::SEGMENT_START),
            },
            t1,
        )
        .count();
    assert_eq!(s.startup(), Some(Duration::from_millis(700)));
}
