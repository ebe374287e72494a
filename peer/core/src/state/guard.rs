//! What a neighbour may send before it counts as hostile: rates of control messages,
//! requested chunks and stale chunks, and HAVEs that claim chunks that cannot exist yet.
//! Honest nodes stay far inside these bounds; a breach is handled like a forged chunk (the
//! neighbour is dropped and banned by node ID), since it costs us work for nothing.

use std::time::Instant;

use shoal_proto::Message;
use shoal_proto::message::SeqRange;

use super::Reject;
use crate::limits::Limits;
use crate::seqset;

/// A token bucket: `rate` tokens per second, holding up to two seconds' worth.
#[derive(Debug, Default)]
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// Takes `n` tokens if there are that many; a new bucket starts full.
    fn take(&mut self, n: u64, rate: u32, now: Instant) -> bool {
        let burst = 2.0 * f64::from(rate);
        let elapsed = self
            .at
            .map_or(f64::INFINITY, |at| now.saturating_duration_since(at).as_secs_f64());
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(burst);
        self.at = Some(now);
        if self.tokens < n as f64 {
            return false;
        }
        self.tokens -= n as f64;
        true
    }
}

/// What one neighbour may still send us before it counts as flooding.
#[derive(Debug, Default)]
pub(super) struct Budgets {
    control: Bucket,
    requests: Bucket,
    stale: Bucket,
}

/// Seqs a list of ranges names, counted without walking them.
fn seqs_named(ranges: &[SeqRange]) -> u64 {
    ranges.iter().map(|r| u64::from(r.len)).sum()
}

/// Charges a control message to its sender's budgets and checks what it claims.
/// `live_edge` is our live epoch and newest seq while our own stream flows (HAVEs are what is
/// being checked, so it is judged by chunks actually received).
pub(super) fn police_control(
    n: &mut Budgets,
    msg: &Message,
    limits: &Limits,
    live_edge: Option<(u64, u64)>,
    now: Instant,
) -> Result<(), Reject> {
    if !n.control.take(1, limits.control_per_s, now) {
        return Err(Reject::ControlFlood);
    }
    match msg {
        Message::Request { ranges, .. } if !n.requests.take(seqs_named(ranges), limits.requested_per_s, now) => {
            Err(Reject::RequestFlood)
        }
        // While our stream flows we are within seconds of the live edge: a chunk further
        // ahead than a neighbour's holdings are even tracked does not exist yet.
        Message::Have { epoch, ranges }
            if live_edge.is_some_and(|(live, held)| {
                *epoch == live
                    && ranges
                        .iter()
                        .any(|r| r.start.saturating_add(u64::from(r.len)) > held + seqset::MAX_SPAN)
            }) =>
        {
            Err(Reject::FalseHave)
        }
        _ => Ok(()),
    }
}

/// Counts a chunk from outside the window against its sender.
pub(super) fn police_stale(n: Option<&mut Budgets>, limits: &Limits, now: Instant) -> Result<(), Reject> {
    let within = n.is_none_or(|n| n.stale.take(1, limits.stale_per_s, now));
    if within { Ok(()) } else { Err(Reject::Stale) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_with_two_seconds_of_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        assert!(b.take(20, 10, t0));
        assert!(!b.take(1, 10, t0));
        assert!(b.take(10, 10, t0 + Duration::from_secs(1)));
        assert!(!b.take(1, 10, t0 + Duration::from_secs(1)));
        // Idle for long: refills to the burst, no further.
        assert!(b.take(20, 10, t0 + Duration::from_secs(60)));
        assert!(!b.take(1, 10, t0 + Duration::from_secs(60)));
    }
}
