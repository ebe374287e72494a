//! What the fuzz targets (`fuzz/`) check, shared with the corpus replay test so the saved
//! inputs are run on every `scripts/test`: no decoder panics on any bytes, and whatever
//! decodes encodes back to the same value.

use std::str::FromStr;

use bytes::BytesMut;
use ed25519_dalek::SigningKey;

use crate::ts::{self, ProgramMap};
use crate::{Chunk, Message, Ticket};

/// A chunk decoded from anything re-encodes to what it was, and never verifies: nobody
/// forges an ed25519 signature by flipping bytes.
pub fn chunk(data: &[u8]) {
    let mut buf = data;
    let Ok(chunk) = Chunk::decode(&mut buf) else { return };
    let again = Chunk::decode(&mut chunk.to_bytes()).expect("a decoded chunk re-encodes");
    assert_eq!(again, chunk);
    let key = SigningKey::from_bytes(&[0x5a; 32]).verifying_key();
    assert!(chunk.verify(&key).is_err(), "a chunk out of nowhere verified");
}

/// One control frame: decodes, or is refused with an error.
pub fn message(data: &[u8]) {
    let Ok(msg) = Message::decode_frame(data) else { return };
    let again = Message::decode_frame(&msg.to_frame()).expect("a decoded message re-encodes");
    assert_eq!(again, msg);
}

/// A control stream as it arrives, in pieces of any size: frames are cut out as the
/// stream driver does, and a frame too long is refused before its body is awaited.
pub fn frames(data: &[u8]) {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut buffered = BytesMut::new();
    for part in data.chunks(piece) {
        buffered.extend_from_slice(part);
        loop {
            match Message::frame_len(&buffered) {
                Ok(Some(len)) => {
                    assert!(len <= buffered.len());
                    let frame = buffered.split_to(len);
                    let _ = Message::decode_frame(&frame);
                }
                Ok(None) => break,
                Err(_) => return, // the driver closes the stream here
            }
        }
    }
}

/// A ticket pasted by a user: parses, or says why not; what parses prints back the same.
pub fn ticket(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(ticket) = Ticket::from_str(text) else { return };
    assert_eq!(Ticket::from_str(&ticket.to_string()), Ok(ticket));
}

/// MPEG-TS as the gateway reads it from chunk payloads.
pub fn mpeg_ts(data: &[u8]) {
    let mut map = ProgramMap::default();
    for packet in ts::packets(data) {
        map.observe(&packet);
        let _ = (packet.pid(), packet.continuity(), packet.random_access());
        if packet.unit_start() {
            let _ = ts::pes_pts(packet.payload());
        }
    }
}

/// A fuzz target's check.
pub type Check = fn(&[u8]);

/// Every target, by the name of its directory under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("chunk", chunk),
    ("message", message),
    ("frames", frames),
    ("ticket", ticket),
    ("mpeg_ts", mpeg_ts),
];

/// Replays the saved corpus of every target (`fuzz/corpus/<target>/`).
#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for &(name, check) in super::TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut replayed = 0;
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                check(&std::fs::read(&path).expect("corpus file"));
                replayed += 1;
            }
            assert!(replayed > 0, "no corpus for {name}");
        }
    }
}
