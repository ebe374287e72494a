//! How the source is doing, for the performer's status line: what it carries and whether it
//! is live or covered by the slate.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::broadcast::BroadcasterEvent;

/// Media speed is measured over this much wall time.
const SPEED_SPAN: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Health {
    state: Mutex<State>,
    /// Where the source going and coming back is told.
    events: Option<tokio::sync::broadcast::Sender<BroadcasterEvent>>,
}

#[derive(Default)]
struct State {
    /// Since when the slate stands in for the source.
    lost_since: Option<Instant>,
    /// What the source carries and how it is handled ("video: H.264 …, passed through").
    media: Vec<String>,
    /// Whether media ever came.
    playing: bool,
    /// (when, media timestamp in ns) of recent output, for the speed against real time.
    progress: VecDeque<(Instant, u64)>,
}

impl Health {
    pub fn with_events(events: tokio::sync::broadcast::Sender<BroadcasterEvent>) -> Self {
        Health {
            state: Mutex::default(),
            events: Some(events),
        }
    }

    fn tell(&self, event: BroadcasterEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Output came from the source now, stamped `media_ns` (the muxer's timestamp) if it has
    /// one.
    pub fn media_arrived(&self, media_ns: Option<u64>) {
        let now = Instant::now();
        let mut state = self.state();
        if state.lost_since.take().is_some() && state.playing {
            self.tell(BroadcasterEvent::SourceBack);
        }
        state.playing = true;
        let Some(media_ns) = media_ns else { return };
        // A timestamp going back is other media (a loop, a restart): measure afresh.
        if state.progress.back().is_some_and(|(_, t)| media_ns < *t) {
            state.progress.clear();
        }
        state.progress.push_back((now, media_ns));
        while state
            .progress
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > SPEED_SPAN)
        {
            state.progress.pop_front();
        }
    }

    // (Only GStreamer sources are covered by the slate when they stop.)
    #[cfg_attr(not(feature = "gstreamer"), allow(dead_code))]
    pub fn source_lost(&self) {
        let mut state = self.state();
        if state.lost_since.is_none() && state.playing {
            self.tell(BroadcasterEvent::SourceLost);
        }
        state.lost_since.get_or_insert_with(Instant::now);
        state.progress.clear();
    }

    /// Media time made per wall time lately (1.0: keeping up), once two seconds are seen.
    pub fn speed(&self) -> Option<f64> {
        let state = self.state();
        let ((t0, m0), (t1, m1)) = (state.progress.front()?, state.progress.back()?);
        let wall = t1.duration_since(*t0).as_secs_f64();
        (wall >= 2.0).then(|| (m1 - m0) as f64 / 1e9 / wall)
    }

    pub fn set_media(&self, what: &str) {
        let mut state = self.state();
        let kind = what.split(':').next().unwrap_or_default();
        state.media.retain(|m| !m.starts_with(kind));
        state.media.push(what.to_string());
    }

    /// "source OK" or "NO SOURCE for 12 s (slate on)", for the status line.
    pub fn summary(&self) -> String {
        let state = self.state();
        match state.lost_since {
            Some(since) if state.playing => format!("SOURCE LOST {} s ago (slate on)", since.elapsed().as_secs()),
            Some(since) => format!("waiting for the source for {} s (slate on)", since.elapsed().as_secs()),
            None if state.playing => {
                drop(state);
                match self.speed() {
                    // Below real time for long: the encoder (or the sender) cannot keep up.
                    Some(speed) if speed < 0.95 => format!("source OK · FALLING BEHIND: {speed:.2}× real time"),
                    Some(speed) => format!("source OK · {speed:.2}× real time"),
                    None => "source OK".to_string(),
                }
            }
            None => "starting".to_string(),
        }
    }

    pub fn media(&self) -> Vec<String> {
        self.state().media.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_follows_the_source() {
        let h = Health::default();
        assert_eq!(h.summary(), "starting");
        h.source_lost();
        assert!(h.summary().starts_with("waiting for the source"));
        h.media_arrived(Some(0));
        assert_eq!(h.summary(), "source OK");
        assert_eq!(h.speed(), None, "too soon to say");
        h.source_lost();
        assert!(h.summary().starts_with("SOURCE LOST"));
        h.set_media("video: H.264 high 640x360, passed through");
        h.set_media("video: again");
        assert_eq!(h.media(), vec!["video: again".to_string()]);
    }
}
