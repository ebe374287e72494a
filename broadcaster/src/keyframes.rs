//! Segments are cut at the input's keyframes: passed-through video from a sender with a long
//! keyframe interval (OBS's default is several seconds) makes long segments and every viewer
//! that much further behind. Says so, now and then.

pub(crate) struct KeyframeWatch {
    segment_us: u64,
    last_start_us: Option<u64>,
    warned_at_us: Option<u64>,
}

impl KeyframeWatch {
    pub fn new(segment_ms: u64) -> Self {
        KeyframeWatch {
            segment_us: segment_ms * 1000,
            last_start_us: None,
            warned_at_us: None,
        }
    }

    pub fn segment_started(&mut self, at_us: u64) {
        let Some(last) = self.last_start_us.replace(at_us) else {
            return;
        };
        let gap_us = at_us.saturating_sub(last);
        let recently = self.warned_at_us.is_some_and(|w| at_us.saturating_sub(w) < 60_000_000);
        if gap_us > 2 * self.segment_us && !recently {
            self.warned_at_us = Some(at_us);
            tracing::warn!(
                "the input has a keyframe only every {:.1} s: set the sender's keyframe interval to {:.1} s (OBS: Keyframe Interval), or add --transcode; viewers are that much further behind",
                gap_us as f64 / 1e6,
                self.segment_us as f64 / 1e6
            );
        }
    }
}
