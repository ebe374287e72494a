//! The rolling HLS media playlist, written by hand: it is a few lines, and players are picky
//! about exactly these few lines. In low-latency mode the same playlist also lists parts
//! (LL-HLS): hls.js plays them about a second behind the broadcaster, while VLC and ffmpeg
//! ignore them and play the whole segments.

use std::fmt::Write;

use crate::assembler::{Assembler, PART_TARGET_US, Segment};

/// Segments listed in the playlist (more are kept for players that are behind).
pub const SEGMENTS_LISTED: usize = 6;
/// Finished segments whose parts are still listed, besides the open one's.
const SEGMENTS_WITH_PARTS: usize = 2;
/// How far behind the newest part a low-latency player starts: three parts.
const PART_HOLD_BACK_S: f64 = 3.0 * PART_TARGET_US as f64 / 1e6;

/// How the gateway trades latency for smoothness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Latency {
    /// LL-HLS parts, blocking reload and preload hints: ≈ 1 s behind in hls.js.
    Low,
    /// Whole segments only: players keep about three segments of buffer.
    Normal,
}

pub fn render(a: &Assembler, latency: Latency) -> String {
    let low = latency == Latency::Low;
    let segments = a.segments();
    let skip = segments.len().saturating_sub(SEGMENTS_LISTED);
    let listed: Vec<&Segment> = segments.iter().skip(skip).collect();
    let open = a.open_segment().filter(|_| low && !a.ended);
    // Discontinuities in segments kept but no longer listed still count as scrolled out.
    let hidden_discontinuities = segments.iter().take(skip).filter(|s| s.discontinuity).count() as u64;
    let target = listed
        .iter()
        .map(|s| s.duration_s.round().max(1.0) as u64)
        .max()
        .unwrap_or(1);
    let first_msn = listed.first().or(open.as_ref()).map_or(0, |s| s.msn);
    let mut out = String::with_capacity(512 + 400 * listed.len());
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:{}", if low { 9 } else { 3 });
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    if low {
        let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={:.3}", PART_TARGET_US as f64 / 1e6);
        let _ = writeln!(
            out,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={PART_HOLD_BACK_S:.3}"
        );
    }
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first_msn}");
    let _ = writeln!(
        out,
        "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
        a.discontinuity_sequence + hidden_discontinuities
    );
    let with_parts = listed.len().saturating_sub(SEGMENTS_WITH_PARTS);
    for (i, s) in listed.iter().enumerate() {
        segment_head(&mut out, s, i > 0);
        if low && i >= with_parts {
            parts(&mut out, s);
        }
        let _ = writeln!(out, "#EXTINF:{:.3},", s.duration_s);
        let _ = writeln!(out, "seg/{}.ts", s.msn);
    }
    if let Some(s) = open {
        if !s.parts.is_empty() {
            segment_head(&mut out, s, !listed.is_empty());
            parts(&mut out, s);
        }
        if let Some((msn, part)) = a.next_part() {
            let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part/{msn}.{part}.ts\"");
        }
    }
    if a.ended {
        let _ = writeln!(out, "#EXT-X-ENDLIST");
    }
    out
}

fn segment_head(out: &mut String, s: &Segment, not_first: bool) {
    if s.discontinuity && not_first {
        let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
    }
    let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", iso8601(s.start_us));
}

fn parts(out: &mut String, s: &Segment) {
    for (i, p) in s.parts.iter().enumerate() {
        let independent = if p.independent { ",INDEPENDENT=YES" } else { "" };
        let _ = writeln!(
            out,
            "#EXT-X-PART:DURATION={:.3},URI=\"part/{}.{i}.ts\"{independent}",
            p.duration_s, s.msn
        );
    }
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
        let text = render(&a, Latency::Normal);
        assert!(
            text.starts_with("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:3\n"),
            "{text}"
        );
        assert!(!text.contains("PART"), "{text}");
        assert_eq!(text.matches("#EXTINF:1.000,").count(), SEGMENTS_LISTED);
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:08.000Z\n#EXTINF:1.000,\nseg/8.ts\n"));
        assert!(!text.contains("ENDLIST"));
    }

    #[test]
    fn low_latency_lists_recent_parts_and_hints_the_next() {
        let mut a = Assembler::default();
        // 1 s segments of 30 frames at 30 fps: five 0.2 s parts each; 3.5 segments in all.
        for seq in 0..105u64 {
            let mut flags = ChunkFlags::FRAME_START;
            if seq % 30 == 0 {
                flags |= ChunkFlags::SEGMENT_START;
            }
            let mut packet = vec![0xff; shoal_proto::ts::PACKET_LEN];
            packet[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10]);
            let header = ChunkHeader {
                flags: ChunkFlags(flags),
                epoch: 1,
                seq,
                segment: seq / 30,
                timestamp_us: seq * 33_333,
                payload_len: packet.len() as u32,
            };
            a.push(
                Chunk {
                    header,
                    payload: Bytes::from(packet),
                    signature: [0; 64],
                },
                0,
            );
        }
        let text = render(&a, Latency::Low);
        assert!(text.contains("#EXT-X-VERSION:9\n"), "{text}");
        assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.200\n"), "{text}");
        assert!(text.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600\n"));
        // Segment 0's parts are no longer listed; 1 and 2 have five each, the open 3 has two.
        assert!(!text.contains("part/0."), "{text}");
        assert_eq!(
            text.matches("#EXT-X-PART:DURATION=0.200,URI=\"part/1.").count(),
            5,
            "{text}"
        );
        assert!(text.contains("URI=\"part/2.0.ts\",INDEPENDENT=YES\n"), "{text}");
        assert!(text.contains("URI=\"part/3.1.ts\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part/3.2.ts\"\n"));
        assert_eq!(text.matches("#EXTINF:").count(), 3, "{text}");
        assert!(text.ends_with("part/3.2.ts\"\n"), "{text}");
    }
}
