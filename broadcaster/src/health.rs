//! How the source is doing, for the performer's status line: what it carries and whether it
//! is live or covered by the slate.

use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Since when the slate stands in for the source.
    lost_since: Option<Instant>,
    /// What the source carries and how it is handled ("video: H.264 …, passed through").
    media: Vec<String>,
    /// Whether media ever came.
    playing: bool,
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn media_arrived(&self) {
        let mut state = self.state();
        state.lost_since = None;
        state.playing = true;
    }

    pub fn source_lost(&self) {
        self.state().lost_since.get_or_insert_with(Instant::now);
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
            None if state.playing => "source OK".to_string(),
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
        h.media_arrived();
        assert_eq!(h.summary(), "source OK");
        h.source_lost();
        assert!(h.summary().starts_with("SOURCE LOST"));
        h.set_media("video: H.264 high 640x360, passed through");
        h.set_media("video: again");
        assert_eq!(h.media(), vec!["video: again".to_string()]);
    }
}
