//! Lazy push and pull: every node announces what it newly holds (HAVE, in batches), notes
//! the chunks its trees did not bring (gaps behind a stripe's newer chunk, whole stripes
//! that stalled), and pulls them from neighbours that have them (REQUEST), asking another
//! when one does not answer. A joining node back-fills from the start of the newest segment.
//! Requests it serves come out of what its children leave of its upload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;
use shoal_proto::message::{SeqRange, ranges_of};
use shoal_proto::{Chunk, Message, NodeId};

use super::neighbourhood::Neighbourhood;
use super::stripes::Stripes;
use super::trees::Trees;
use super::{Action, Config, Outbox};
use crate::window::Window;

/// Most seqs one REQUEST may make a node send: bounds what a request flood costs.
const MAX_SERVED_PER_REQUEST: usize = 256;
/// Gaps further back than this behind the newest chunk are not chased.
const MAX_REPAIR_SPAN: u64 = 512;
/// Chunks a joining node pulls at most to reach the start of the newest segment.
const MAX_BACKFILL: u64 = 256;
/// A stripe this many of its chunks behind the newest chunk held has stalled.
const STALLED_ROUNDS: u64 = 3;

/// How far one stripe's chunks have come.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Newest seq of this stripe held.
    newest: Option<u64>,
    /// Seqs of this stripe up to here were checked for a stall (each is checked once).
    stall_checked: Option<u64>,
}

/// A request out for a chunk: whom, when, and whether that neighbour said no (CANCEL).
#[derive(Debug, Clone, Copy)]
struct Asked {
    who: NodeId,
    at: Instant,
    refused: bool,
}

#[derive(Debug)]
pub(super) struct Repair {
    k: Stripes,
    stripes: Vec<Progress>,
    /// Seqs stored since the last HAVE round.
    unannounced: Vec<u64>,
    last_have: Option<Instant>,
    /// Lowest seq of the live epoch this node wants; nothing older is repaired.
    floor: Option<u64>,
    backfilled: bool,
    /// Gap → when it was first seen open.
    missing: BTreeMap<u64, Instant>,
    /// Seq → the last request for it.
    requested: HashMap<u64, Asked>,
    /// Bytes this node may still spend serving REQUESTs (`None`: no cap to respect).
    tokens: Option<f64>,
    refilled: Option<Instant>,
}

impl Repair {
    pub fn new(stripes: u8) -> Self {
        let k = Stripes::new(stripes);
        Repair {
            k,
            stripes: vec![Progress::default(); k.count()],
            unannounced: Vec::new(),
            last_have: None,
            floor: None,
            backfilled: false,
            missing: BTreeMap::new(),
            requested: HashMap::default(),
            tokens: None,
            refilled: None,
        }
    }

    /// A new chunk of the live epoch is held: no longer missing, its stripe's earlier chunks
    /// still absent are gaps, and it is announced in the next HAVE round. Returns the
    /// neighbour it had been asked of, if any.
    pub fn note_new_chunk(&mut self, seq: u64, window: &Window, now: Instant) -> Option<NodeId> {
        let asked = self.requested.remove(&seq).map(|a| a.who);
        self.missing.remove(&seq);
        let s = self.k.of(seq);
        self.note_gaps(seq, self.stripes[s].newest, window, now);
        self.unannounced.push(seq);
        let progress = &mut self.stripes[s];
        progress.newest = Some(progress.newest.map_or(seq, |n| n.max(seq)));
        asked
    }

    /// A new epoch (the broadcaster restarted): everything known of the old one goes.
    pub fn new_epoch(&mut self, first_seq: u64) {
        for stripe in &mut self.stripes {
            *stripe = Progress::default();
        }
        self.missing.clear();
        self.requested.clear();
        self.unannounced.clear();
        self.floor = Some(first_seq);
    }

    /// A neighbour is gone: what it was asked for is asked elsewhere.
    pub fn forget(&mut self, id: NodeId) {
        self.requested.retain(|_, a| a.who != id);
    }

    /// Records as gaps the seqs of `seq`'s stripe between the stripe's previous newest and
    /// `seq`: each stripe flows down one path, so a later chunk of the same stripe means an
    /// earlier one is missing, not merely still on its way along another path.
    fn note_gaps(&mut self, seq: u64, previous_newest: Option<u64>, window: &Window, now: Instant) {
        let Some(epoch) = window.live_epoch() else { return };
        let floor = *self.floor.get_or_insert(seq);
        let k = self.k.step();
        let newest_any = window.newest_seq(epoch).unwrap_or(seq);
        let low = floor.max(newest_any.saturating_sub(MAX_REPAIR_SPAN));
        let mut m = match previous_newest {
            Some(p) if p < seq => p + k,
            Some(_) => return,
            // First chunk of this stripe: everything of the stripe from the floor on.
            None => self.k.first_from(low, self.k.of(seq)),
        };
        while m < seq {
            if m >= low && !window.contains(epoch, m) {
                self.missing.entry(m).or_insert(now);
            }
            m += k;
        }
    }

    /// Chunks neighbours announced that this node lacks and no parent of its own will bring:
    /// missing, like gaps, once it holds the stream at all. (Bounded: no further ahead than
    /// `MAX_REPAIR_SPAN` past what it holds, and `SeqSet` bounds what a HAVE can name.)
    pub fn note_announced(&mut self, seqs: impl Iterator<Item = u64>, now: Instant) {
        let Some(floor) = self.floor else { return };
        let newest = self.stripes.iter().filter_map(|p| p.newest).max().unwrap_or(floor);
        for seq in seqs.take_while(|seq| *seq <= newest + MAX_REPAIR_SPAN) {
            self.missing.entry(seq).or_insert(now);
        }
    }

    /// A stripe whose parent died sends nothing, so no later chunk of it reveals a gap: its
    /// chunks count as missing once the other stripes are `STALLED_ROUNDS` chunks of it
    /// ahead, and are pulled from neighbours that have them while the tree heals.
    pub fn note_stalled_stripes(&mut self, window: &Window, now: Instant) {
        let Some(epoch) = window.live_epoch() else { return };
        let (Some(newest), Some(floor)) = (window.newest_seq(epoch), self.floor) else {
            return;
        };
        let k = self.k.step();
        let low = floor.max(newest.saturating_sub(MAX_REPAIR_SPAN));
        for s in 0..self.k.count() {
            let stripe = self.stripes[s];
            let first_low = self.k.first_from(low, s);
            let mut m = [stripe.newest, stripe.stall_checked]
                .into_iter()
                .flatten()
                .map(|n| n + k)
                .max()
                .unwrap_or(first_low)
                .max(first_low);
            let mut checked = None;
            while m + STALLED_ROUNDS * k <= newest {
                if !window.contains(epoch, m) {
                    self.missing.entry(m).or_insert(now);
                }
                checked = Some(m);
                m += k;
            }
            if checked.is_some() {
                self.stripes[s].stall_checked = checked;
            }
        }
    }

    /// Once per `have_interval`: HAVE of what was stored since, to each neighbour that may
    /// lack it.
    pub fn announce(&mut self, now: Instant, config: &Config, window: &Window, view: &Neighbourhood, out: &mut Outbox) {
        if self
            .last_have
            .is_some_and(|t| now.duration_since(t) < config.have_interval)
        {
            return;
        }
        self.last_have = Some(now);
        let Some(epoch) = window.live_epoch() else { return };
        if self.unannounced.is_empty() {
            return;
        }
        self.unannounced.sort_unstable();
        for (id, n) in view.iter() {
            let ranges = ranges_of(self.unannounced.iter().copied().filter(|s| !n.has.contains(*s)));
            if !ranges.is_empty() {
                out.send(*id, Message::Have { epoch, ranges });
            }
        }
        self.unannounced.clear();
    }

    /// First contact with the stream: pull from the start of the newest segment a neighbour
    /// holds, so playback can begin at a keyframe right away. From the strongest uploader
    /// among the neighbours that told us a segment start, up to the newest chunk it holds:
    /// what comes after reaches us from our parents. (Asking for chunks not yet made left
    /// each of them missing from the start: as soon as any neighbour announced one it was
    /// asked for, beside the parent's push. In the lab every joiner so asked for its first
    /// 256 chunks twice, and repairs swamped the forming swarm's uplinks.)
    pub fn maybe_backfill(&mut self, now: Instant, window: &Window, view: &Neighbourhood, out: &mut Outbox) {
        if self.backfilled {
            return;
        }
        let Some((from, (epoch, start), held)) = view
            .iter()
            .filter_map(|(id, n)| Some((*id, n.segment_start?, n.has.newest()?, n.upload_kbps)))
            .max_by_key(|(id, _, _, up)| (*up, std::cmp::Reverse(*id)))
            .map(|(id, s, held, _)| (id, s, held))
        else {
            return;
        };
        if window.live_epoch().is_some_and(|l| l != epoch) {
            return;
        }
        self.backfilled = true;
        let newest = window.live_epoch().and_then(|e| window.newest_seq(e)).unwrap_or(held);
        let end = (newest.min(held) + 1).min(start + MAX_BACKFILL);
        let seqs: Vec<u64> = (start..end).filter(|s| !window.contains(epoch, *s)).collect();
        self.floor = Some(self.floor.map_or(start, |f| f.min(start)));
        if seqs.is_empty() {
            return;
        }
        for seq in &seqs {
            // Gaps like any other: if the answer does not come, repair asks elsewhere.
            self.requested.insert(
                *seq,
                Asked {
                    who: from,
                    at: now,
                    refused: false,
                },
            );
            self.missing.insert(*seq, now);
        }
        out.counters.requests_sent += 1;
        out.send(
            from,
            Message::Request {
                epoch,
                ranges: ranges_of(seqs),
            },
        );
    }

    /// Asks for the gaps that stayed open long enough, each of the least-failing, strongest
    /// neighbour that has it (another than the one asked last time, when there is one).
    pub fn request(
        &mut self,
        now: Instant,
        config: &Config,
        window: &Window,
        trees: &Trees,
        view: &mut Neighbourhood,
        out: &mut Outbox,
    ) {
        let Some(epoch) = window.live_epoch() else { return };
        let newest = window.newest_seq(epoch).unwrap_or(0);
        self.missing.retain(|s, _| *s + MAX_REPAIR_SPAN >= newest);
        let mut asks: HashMap<NodeId, Vec<u64>> = HashMap::default();
        for (&seq, &since) in &self.missing {
            // While the stripe's parent is delivering (and keeping up), the gap is most likely
            // a chunk it sends late (newer ones go first): give it longer before asking
            // someone else.
            // A stripe no parent feeds brings nothing by waiting: ask at once.
            let stripe = trees.stripe_of(seq);
            let wait = if trees.parent_delivered_within(stripe, now, config.repair_after) && !trees.parent_lags(stripe)
            {
                config.repair_after * 3 / 2
            } else if trees.parent_delivered_within(stripe, now, config.parent_timeout) {
                config.repair_after
            } else {
                Duration::ZERO
            };
            if now.duration_since(since) < wait {
                continue;
            }
            let previous = self.requested.get(&seq).copied();
            // (One that said no is asked elsewhere at once.)
            if let Some(a) = previous
                && !a.refused
                && now.duration_since(a.at) < config.request_timeout
            {
                continue;
            }
            if let Some(a) = previous
                && !a.refused
                && let Some(n) = view.get_mut(&a.who)
            {
                n.unanswered += 1;
            }
            // Timed out: the chunk is late by now, and the source is asked first.
            let timed_out = previous.is_some_and(|a| !a.refused);
            let previous = previous.map(|a| a.who);
            let holder = view
                .iter()
                .filter(|(id, n)| n.has.contains(seq) && Some(**id) != previous)
                // The least-failing, then strongest uploader: repairs cost upload too. The
                // source (depth 0, not our parent) is the last resort, but the first once a
                // request went unanswered.
                .min_by_key(|(id, n)| {
                    let source = n.depths.get(stripe) == Some(&0) && trees.parent(stripe) != Some(**id);
                    let rank = match (source, timed_out) {
                        (true, true) => 0,
                        (false, _) => 1,
                        (true, false) => 2,
                    };
                    (rank, n.unanswered, std::cmp::Reverse(n.upload_kbps), **id)
                })
                .map(|(id, _)| *id)
                // Nobody else has it: ask the same neighbour again.
                .or(previous.filter(|p| view.get(p).is_some_and(|n| n.has.contains(seq))));
            if let Some(holder) = holder {
                asks.entry(holder).or_default().push(seq);
                self.requested.insert(
                    seq,
                    Asked {
                        who: holder,
                        at: now,
                        refused: false,
                    },
                );
            }
        }
        for (to, seqs) in asks {
            out.counters.requests_sent += 1;
            out.send(
                to,
                Message::Request {
                    epoch,
                    ranges: ranges_of(seqs),
                },
            );
        }
    }

    /// Sends what a neighbour asked for and we hold, within the repair budget (topped up by
    /// `refill` first); what is sent is dropped if not out by `deadline`. Returns what it
    /// cannot have (not held, or past the budget), for the caller to tell it at once
    /// (CANCEL), so it asks someone else.
    pub fn serve<'w>(
        &mut self,
        from: NodeId,
        ranges: &[SeqRange],
        held: impl Fn(u64) -> Option<&'w Arc<Chunk>>,
        deadline: Instant,
        view: &mut Neighbourhood,
        out: &mut Outbox,
    ) -> Vec<u64> {
        let mut served = 0;
        let mut refused = Vec::new();
        let mut broke = false;
        for seq in ranges.iter().flat_map(SeqRange::iter).take(MAX_SERVED_PER_REQUEST) {
            let Some(chunk) = held(seq).filter(|_| !broke) else {
                refused.push(seq);
                continue;
            };
            // Repairs come out of what the children leave of the upload; past that the
            // requester asks someone with room.
            if let Some(tokens) = &mut self.tokens {
                if *tokens < chunk.encoded_len() as f64 {
                    out.counters.requests_refused += 1;
                    broke = true;
                    refused.push(seq);
                    continue;
                }
                *tokens -= chunk.encoded_len() as f64;
            }
            served += 1;
            if let Some(n) = view.get_mut(&from) {
                n.has.insert(seq);
            }
            out.push(Action::Push {
                to: from,
                chunk: chunk.clone(),
                deadline,
            });
        }
        out.counters.requests_served += served;
        refused
    }

    /// `from` will not send these (CANCEL): what was asked of it is asked elsewhere now.
    pub fn refused(&mut self, from: NodeId, ranges: &[SeqRange]) {
        for seq in ranges.iter().flat_map(SeqRange::iter).take(MAX_SERVED_PER_REQUEST) {
            if let Some(a) = self.requested.get_mut(&seq)
                && a.who == from
            {
                a.refused = true;
            }
        }
    }

    /// Spends no more than `bytes` on repairs from now on (until the next top-up raises it).
    pub fn limit(&mut self, bytes: f64) {
        if let Some(tokens) = &mut self.tokens {
            *tokens = tokens.min(bytes.max(0.0));
        }
    }

    /// Tops up the bytes this node may spend on repairs at `spare_bps` (what its capacity
    /// leaves after its children and a tenth for control), with a second's worth of burst.
    /// `None`: uncapped, or the stream's rate not measured yet: no budget to keep.
    pub fn refill(&mut self, spare_bps: Option<f64>, burst_s: f64, now: Instant) {
        let Some(spare_bps) = spare_bps else {
            self.tokens = None;
            return;
        };
        let elapsed = self.refilled.map_or(1.0, |t| now.duration_since(t).as_secs_f64());
        self.refilled = Some(now);
        let burst = spare_bps / 8.0 * burst_s;
        let tokens = self.tokens.unwrap_or(burst);
        self.tokens = Some((tokens + elapsed * spare_bps / 8.0).min(burst));
    }
}

/// What a capped node's upload leaves for repairs, bit/s: its capacity less a tenth for
/// control and what its children take.
pub(super) fn spare_bps(config: &Config, stream_bps: Option<f64>, children: usize) -> Option<f64> {
    let (Some(cap), Some(rate)) = (config.upload_bps, stream_bps) else {
        return None;
    };
    Some((cap as f64 * 0.9 - children as f64 * rate / f64::from(config.stripes)).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::testing::chunk;

    fn window_with(seqs: &[u64]) -> Window {
        let mut w = Window::new(Limits::default().window);
        for s in seqs {
            w.admit(&chunk(1, *s, 1_000 + s * 1_000, 0));
        }
        w
    }

    #[test]
    fn a_later_chunk_of_a_stripe_reveals_the_gaps_behind_it() {
        let now = Instant::now();
        let mut r = Repair::new(4);
        let w = window_with(&[100]);
        r.note_new_chunk(100, &w, now);
        // 108 arrives, 104 (same stripe) never did.
        let w = window_with(&[100, 108]);
        r.note_new_chunk(108, &w, now);
        assert_eq!(r.missing.keys().copied().collect::<Vec<_>>(), vec![104]);
        r.note_new_chunk(104, &w, now);
        assert!(r.missing.is_empty());
    }

    #[test]
    fn a_stalled_stripe_is_missing_once_the_others_are_well_ahead() {
        let now = Instant::now();
        let mut r = Repair::new(4);
        // Stripes 0, 1 and 3 flow up to 119; stripe 2 stopped after 102.
        let seqs: Vec<u64> = (100..120).filter(|s| s % 4 != 2 || *s <= 102).collect();
        let w = window_with(&seqs);
        for s in &seqs {
            r.note_new_chunk(*s, &w, now);
        }
        r.note_stalled_stripes(&w, now);
        let missing: Vec<u64> = r.missing.keys().copied().collect();
        assert_eq!(missing, vec![106], "{missing:?}: three rounds behind is a stall");
    }

    #[test]
    fn the_repair_budget_is_what_children_leave_of_the_upload() {
        let config = Config {
            upload_bps: Some(2_000_000),
            ..Config::default()
        };
        // 1 Mbit/s stream in 4 stripes: three children take 750 kbit/s of the 1.8 Mbit/s.
        assert_eq!(spare_bps(&config, Some(1_000_000.0), 3), Some(1_050_000.0));
        assert_eq!(spare_bps(&config, None, 3), None, "not measured yet");
        assert_eq!(spare_bps(&Config::default(), Some(1_000_000.0), 3), None, "uncapped");
    }
}
