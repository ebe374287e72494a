//! The rolling HLS media playlist, written by hand: it is a few lines, and players are picky
//! about exactly these few lines.

use std::fmt::Write;

use crate::assembler::Assembler;

/// Segments listed in the playlist (more are kept for players that are behind).
pub const SEGMENTS_LISTED: usize = 6;

pub fn render(a: &Assembler) -> String {
    let segments = a.segments();
    let skip = segments.len().saturating_sub(SEGMENTS_LISTED);
    let listed: Vec<_> = segments.iter().skip(skip).collect();
    // Discontinuities in segments kept but no longer listed still count as scrolled out.
    let hidden_discontinuities = segments.iter().take(skip).filter(|s| s.discontinuity).count() as u64;
    let target = listed
        .iter()
        .map(|s| s.duration_s.round().max(1.0) as u64)
        .max()
        .unwrap_or(1);
    let mut out = String::with_capacity(256 + 120 * listed.len());
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:3");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", listed.first().map_or(0, |s| s.msn));
    let _ = writeln!(
        out,
        "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
        a.discontinuity_sequence + hidden_discontinuities
    );
    for (i, s) in listed.iter().enumerate() {
        if s.discontinuity && i > 0 {
            let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
        }
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", iso8601(s.start_us));
        let _ = writeln!(out, "#EXTINF:{:.3},", s.duration_s);
        let _ = writeln!(out, "seg/{}.ts", s.msn);
    }
    if a.ended {
        let _ = writeln!(out, "#EXT-X-ENDLIST");
    }
    out
}

/// `2026-11-25T16:04:22.123Z` from µs since the Unix epoch.
pub fn iso8601(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        us / 1000 % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shoal_proto::{Chunk, ChunkFlags, ChunkHeader};

    #[test]
    fn dates_are_utc_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_764_087_862_123_456), "2025-11-25T16:24:22.123Z");
        assert_eq!(iso8601(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lists_the_newest_segments_with_dates_and_sequence() {
        let mut a = Assembler::default();
        for seq in 0..10u64 {
            let header = ChunkHeader {
                flags: ChunkFlags(ChunkFlags::SEGMENT_START),
                epoch: 1,
                seq,
                segment: seq,
                timestamp_us: seq * 1_000_000,
                payload_len: 1,
            };
            a.push(
                Chunk {
                    header,
                    payload: Bytes::from_static(b"x"),
                    signature: [0; 64],
                },
                0,
            );
        }
        let text = render(&a);
        assert!(
            text.starts_with("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:3\n"),
            "{text}"
        );
        assert_eq!(text.matches("#EXTINF:1.000,").count(), SEGMENTS_LISTED);
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:08.000Z\n#EXTINF:1.000,\nseg/8.ts\n"));
        assert!(!text.contains("ENDLIST"));
    }
}
