//! Control messages, sent as length-prefixed frames on the one bidirectional stream of a
//! connection. Every count and length is bounded before anything is allocated.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};

use crate::NodeId;
use crate::codec::{
    DecodeError, get_addr, get_addrs, get_array, get_count, get_u8, get_u16, get_u32, get_u64, need, put_addr,
    put_addrs,
};

/// Largest control frame body; a frame announcing more is refused unread.
pub const MAX_FRAME: usize = 16 * 1024;
/// Frame prefix: type (1 byte) + body length (4 bytes).
pub const FRAME_HEADER_LEN: usize = 5;
pub const MAX_RANGES: usize = 64;
pub const MAX_ADDRS: usize = 8;
pub const MAX_PEX_PEERS: usize = 32;
/// Longest run one range may name: a range can never ask for more than the window holds.
pub const MAX_RANGE_LEN: u32 = 1 << 16;

/// A run of sequence numbers `start .. start + len` within one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    pub start: u64,
    pub len: u32,
}

impl SeqRange {
    pub fn contains(&self, seq: u64) -> bool {
        seq >= self.start && seq - self.start < u64::from(self.len)
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + use<> {
        let start = self.start;
        (0..u64::from(self.len)).map(move |i| start.wrapping_add(i))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub node_id: NodeId,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// First message on a connection, from both sides.
    Hello {
        version: u16,
        node_id: NodeId,
        /// The stream this node serves; a mismatch ends the connection.
        stream_key: [u8; 32],
        /// Addresses this node accepts connections on (empty if it accepts none).
        listen: Vec<SocketAddr>,
        /// The address this node sees the other side at (lets NATed peers learn theirs).
        observed: Option<SocketAddr>,
    },
    /// "I hold these chunks."
    Have { epoch: u64, ranges: Vec<SeqRange> },
    /// "Send me these chunks."
    Request { epoch: u64, ranges: Vec<SeqRange> },
    /// "None of these chunks between us": from a node asked for them, it will not send them
    /// (not held, or no upload left for repairs), and the asker asks someone else.
    Cancel { epoch: u64, ranges: Vec<SeqRange> },
    /// Peers the sender knows, for the receiver to dial.
    Pex { peers: Vec<PeerInfo> },
    /// The sender is leaving; `reason` is a close code.
    Goodbye { reason: u8 },
    /// "Push me every chunk of this stripe as soon as you have it" (become my parent).
    Graft { stripe: u8 },
    /// "Stop pushing me this stripe", or, in answer to GRAFT, "I cannot be your parent".
    Prune { stripe: u8 },
    /// What a neighbour needs to pick parents: the sender's hop count from the source per
    /// stripe (255 = not receiving it), its children per stripe (a node cut off from a stripe
    /// with children of it brings a whole subtree back when it finds a parent), its upload
    /// capacity (kbit/s, 0 if unknown), how many
    /// more children it can take (one child of one stripe each), the stream's rate as it
    /// measures it (kbit/s, 0 if not yet: a newcomer that has received nothing plans its
    /// children with it), and where the newest segment it holds starts (so a joining node
    /// can start at a keyframe).
    Status {
        depths: Vec<u8>,
        /// As many as `depths` (encoded after them; a shorter list is padded with zeros).
        children: Vec<u8>,
        upload_kbps: u32,
        free_slots: u16,
        stream_kbps: u32,
        epoch: u64,
        segment_start: Option<u64>,
    },
    /// "Ask your neighbour `target` to dial me": the sender could not reach it directly (both
    /// behind NATs, most likely), and both dialling at once opens a path through them.
    Introduce { target: NodeId },
    /// "`peer` is dialling you at once: dial it now at these addresses" (the first is where the
    /// introducer sees it), so each side's NAT lets the other's packets in.
    Punch { peer: NodeId, addrs: Vec<SocketAddr> },
}

/// Depth value meaning "not receiving this stripe".
pub const NO_DEPTH: u8 = u8::MAX;
/// Most stripes a stream may be split into.
pub const MAX_STRIPES: usize = 16;

const HELLO: u8 = 1;
const HAVE: u8 = 2;
const REQUEST: u8 = 3;
const CANCEL: u8 = 4;
const PEX: u8 = 5;
const GOODBYE: u8 = 6;
const GRAFT: u8 = 7;
const PRUNE: u8 = 8;
const STATUS: u8 = 9;
const INTRODUCE: u8 = 10;
const PUNCH: u8 = 11;

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Have { .. } => "have",
            Message::Request { .. } => "request",
            Message::Cancel { .. } => "cancel",
            Message::Pex { .. } => "pex",
            Message::Goodbye { .. } => "goodbye",
            Message::Graft { .. } => "graft",
            Message::Prune { .. } => "prune",
            Message::Status { .. } => "status",
            Message::Introduce { .. } => "introduce",
            Message::Punch { .. } => "punch",
        }
    }

    /// Appends one frame: type, body length, body.
    pub fn encode_frame(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u8(0);
        buf.put_u32(0);
        let ty = self.encode_body(buf);
        let body_len = (buf.len() - start - FRAME_HEADER_LEN) as u32;
        buf[start] = ty;
        buf[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&body_len.to_be_bytes());
    }

    pub fn to_frame(&self) -> BytesMut {
        let mut buf = BytesMut::with_capacity(64);
        self.encode_frame(&mut buf);
        buf
    }

    fn encode_body(&self, buf: &mut impl BufMut) -> u8 {
        match self {
            Message::Hello {
                version,
                node_id,
                stream_key,
                listen,
                observed,
            } => {
                buf.put_u16(*version);
                buf.put_slice(&node_id.0);
                buf.put_slice(stream_key);
                put_addrs(buf, listen, MAX_ADDRS);
                match observed {
                    Some(addr) => {
                        buf.put_u8(1);
                        put_addr(buf, addr);
                    }
                    None => buf.put_u8(0),
                }
                HELLO
            }
            Message::Have { epoch, ranges } => {
                put_ranges(buf, *epoch, ranges);
                HAVE
            }
            Message::Request { epoch, ranges } => {
                put_ranges(buf, *epoch, ranges);
                REQUEST
            }
            Message::Cancel { epoch, ranges } => {
                put_ranges(buf, *epoch, ranges);
                CANCEL
            }
            Message::Pex { peers } => {
                let peers = &peers[..peers.len().min(MAX_PEX_PEERS)];
                buf.put_u8(peers.len() as u8);
                for peer in peers {
                    buf.put_slice(&peer.node_id.0);
                    put_addrs(buf, &peer.addrs, MAX_ADDRS);
                }
                PEX
            }
            Message::Goodbye { reason } => {
                buf.put_u8(*reason);
                GOODBYE
            }
            Message::Graft { stripe } => {
                buf.put_u8(*stripe);
                GRAFT
            }
            Message::Prune { stripe } => {
                buf.put_u8(*stripe);
                PRUNE
            }
            Message::Status {
                depths,
                children,
                upload_kbps,
                free_slots,
                stream_kbps,
                epoch,
                segment_start,
            } => {
                let depths = &depths[..depths.len().min(MAX_STRIPES)];
                buf.put_u8(depths.len() as u8);
                buf.put_slice(depths);
                for s in 0..depths.len() {
                    buf.put_u8(children.get(s).copied().unwrap_or(0));
                }
                buf.put_u32(*upload_kbps);
                buf.put_u16(*free_slots);
                buf.put_u32(*stream_kbps);
                buf.put_u64(*epoch);
                match segment_start {
                    Some(seq) => {
                        buf.put_u8(1);
                        buf.put_u64(*seq);
                    }
                    None => buf.put_u8(0),
                }
                STATUS
            }
            Message::Introduce { target } => {
                buf.put_slice(&target.0);
                INTRODUCE
            }
            Message::Punch { peer, addrs } => {
                buf.put_slice(&peer.0);
                put_addrs(buf, addrs, MAX_ADDRS);
                PUNCH
            }
        }
    }

    /// Reads the frame header; `Ok(None)` until the whole frame is buffered. Refuses a body
    /// longer than `MAX_FRAME` before waiting for it.
    pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(DecodeError::TooLong {
                what: "control frame",
                len,
                max: MAX_FRAME,
            });
        }
        Ok((buf.len() >= FRAME_HEADER_LEN + len).then_some(FRAME_HEADER_LEN + len))
    }

    /// Decodes one whole frame. Unknown types give `UnknownMessage` so newer peers can add
    /// messages; trailing bytes inside a frame are an error.
    pub fn decode_frame(mut frame: &[u8]) -> Result<Message, DecodeError> {
        let ty = get_u8(&mut frame)?;
        let len = get_u32(&mut frame)? as usize;
        if len > MAX_FRAME {
            return Err(DecodeError::TooLong {
                what: "control frame",
                len,
                max: MAX_FRAME,
            });
        }
        need(&frame, len)?;
        let mut body = &frame[..len];
        let msg = match ty {
            HELLO => Message::Hello {
                version: get_u16(&mut body)?,
                node_id: NodeId(get_array(&mut body)?),
                stream_key: get_array(&mut body)?,
                listen: get_addrs(&mut body, MAX_ADDRS)?,
                observed: match get_u8(&mut body)? {
                    0 => None,
                    1 => Some(get_addr(&mut body)?),
                    _ => return Err(DecodeError::Invalid("hello observed flag")),
                },
            },
            HAVE => {
                let (epoch, ranges) = get_ranges(&mut body)?;
                Message::Have { epoch, ranges }
            }
            REQUEST => {
                let (epoch, ranges) = get_ranges(&mut body)?;
                Message::Request { epoch, ranges }
            }
            CANCEL => {
                let (epoch, ranges) = get_ranges(&mut body)?;
                Message::Cancel { epoch, ranges }
            }
            PEX => {
                let n = get_count(&mut body, "pex peers", MAX_PEX_PEERS)?;
                let peers = (0..n)
                    .map(|_| {
                        Ok(PeerInfo {
                            node_id: NodeId(get_array(&mut body)?),
                            addrs: get_addrs(&mut body, MAX_ADDRS)?,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Message::Pex { peers }
            }
            GOODBYE => Message::Goodbye {
                reason: get_u8(&mut body)?,
            },
            GRAFT => Message::Graft {
                stripe: get_u8(&mut body)?,
            },
            PRUNE => Message::Prune {
                stripe: get_u8(&mut body)?,
            },
            STATUS => {
                let n = get_count(&mut body, "stripe depths", MAX_STRIPES)?;
                need(&body, n)?;
                let depths = body[..n].to_vec();
                body = &body[n..];
                need(&body, n)?;
                let children = body[..n].to_vec();
                body = &body[n..];
                Message::Status {
                    depths,
                    children,
                    upload_kbps: get_u32(&mut body)?,
                    free_slots: get_u16(&mut body)?,
                    stream_kbps: get_u32(&mut body)?,
                    epoch: get_u64(&mut body)?,
                    segment_start: match get_u8(&mut body)? {
                        0 => None,
                        1 => Some(get_u64(&mut body)?),
                        _ => return Err(DecodeError::Invalid("status segment flag")),
                    },
                }
            }
            INTRODUCE => Message::Introduce {
                target: NodeId(get_array(&mut body)?),
            },
            PUNCH => Message::Punch {
                peer: NodeId(get_array(&mut body)?),
                addrs: get_addrs(&mut body, MAX_ADDRS)?,
            },
            other => return Err(DecodeError::UnknownMessage(other)),
        };
        if body.has_remaining() {
            return Err(DecodeError::Invalid("trailing bytes in frame"));
        }
        Ok(msg)
    }
}

fn put_ranges(buf: &mut impl BufMut, epoch: u64, ranges: &[SeqRange]) {
    let ranges = &ranges[..ranges.len().min(MAX_RANGES)];
    buf.put_u64(epoch);
    buf.put_u8(ranges.len() as u8);
    for r in ranges {
        buf.put_u64(r.start);
        buf.put_u32(r.len);
    }
}

fn get_ranges(buf: &mut impl Buf) -> Result<(u64, Vec<SeqRange>), DecodeError> {
    let epoch = get_u64(buf)?;
    let n = get_count(buf, "range list", MAX_RANGES)?;
    let ranges = (0..n)
        .map(|_| {
            let range = SeqRange {
                start: get_u64(buf)?,
                len: get_u32(buf)?,
            };
            if range.len > MAX_RANGE_LEN {
                return Err(DecodeError::TooLong {
                    what: "range",
                    len: range.len as usize,
                    max: MAX_RANGE_LEN as usize,
                });
            }
            Ok(range)
        })
        .collect::<Result<_, _>>()?;
    Ok((epoch, ranges))
}

/// Turns sorted sequence numbers into ranges (at most `MAX_RANGES`, newest kept).
pub fn ranges_of(seqs: impl IntoIterator<Item = u64>) -> Vec<SeqRange> {
    let mut ranges: Vec<SeqRange> = Vec::new();
    for seq in seqs {
        match ranges.last_mut() {
            Some(r) if r.start + u64::from(r.len) == seq && r.len < MAX_RANGE_LEN => r.len += 1,
            _ => ranges.push(SeqRange { start: seq, len: 1 }),
        }
    }
    if ranges.len() > MAX_RANGES {
        ranges.drain(..ranges.len() - MAX_RANGES);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    fn arb_ranges() -> impl Strategy<Value = Vec<SeqRange>> {
        proptest::collection::vec(
            (any::<u64>(), 0..=MAX_RANGE_LEN).prop_map(|(start, len)| SeqRange { start, len }),
            0..MAX_RANGES,
        )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<u16>(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                proptest::collection::vec(arb_addr(), 0..MAX_ADDRS),
                proptest::option::of(arb_addr())
            )
                .prop_map(|(version, id, stream_key, listen, observed)| {
                    Message::Hello {
                        version,
                        node_id: NodeId(id),
                        stream_key,
                        listen,
                        observed,
                    }
                }),
            (any::<u64>(), arb_ranges()).prop_map(|(epoch, ranges)| Message::Have { epoch, ranges }),
            (any::<u64>(), arb_ranges()).prop_map(|(epoch, ranges)| Message::Request { epoch, ranges }),
            (any::<u64>(), arb_ranges()).prop_map(|(epoch, ranges)| Message::Cancel { epoch, ranges }),
            proptest::collection::vec(
                (any::<[u8; 32]>(), proptest::collection::vec(arb_addr(), 0..MAX_ADDRS)).prop_map(|(id, addrs)| {
                    PeerInfo {
                        node_id: NodeId(id),
                        addrs,
                    }
                }),
                0..MAX_PEX_PEERS
            )
            .prop_map(|peers| Message::Pex { peers }),
            any::<u8>().prop_map(|reason| Message::Goodbye { reason }),
            any::<u8>().prop_map(|stripe| Message::Graft { stripe }),
            any::<[u8; 32]>().prop_map(|id| Message::Introduce { target: NodeId(id) }),
            (any::<[u8; 32]>(), proptest::collection::vec(arb_addr(), 0..MAX_ADDRS)).prop_map(|(id, addrs)| {
                Message::Punch {
                    peer: NodeId(id),
                    addrs,
                }
            }),
            any::<u8>().prop_map(|stripe| Message::Prune { stripe }),
            (
                proptest::collection::vec(any::<(u8, u8)>(), 0..MAX_STRIPES),
                any::<u32>(),
                any::<u16>(),
                any::<u32>(),
                any::<u64>(),
                proptest::option::of(any::<u64>())
            )
                .prop_map(
                    |(stripes, upload_kbps, free_slots, stream_kbps, epoch, segment_start)| {
                        Message::Status {
                            depths: stripes.iter().map(|s| s.0).collect(),
                            children: stripes.iter().map(|s| s.1).collect(),
                            upload_kbps,
                            free_slots,
                            stream_kbps,
                            epoch,
                            segment_start,
                        }
                    }
                ),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(msg in arb_message()) {
            let frame = msg.to_frame();
            prop_assert!(frame.len() <= FRAME_HEADER_LEN + MAX_FRAME);
            prop_assert_eq!(Message::frame_len(&frame).unwrap(), Some(frame.len()));
            prop_assert_eq!(Message::decode_frame(&frame).unwrap(), msg);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::frame_len(&bytes);
            let _ = Message::decode_frame(&bytes);
        }
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let frame = Message::Goodbye { reason: 3 }.to_frame();
        for cut in 0..frame.len() {
            assert_eq!(Message::frame_len(&frame[..cut]), Ok(None));
        }
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let header = [HAVE, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(Message::frame_len(&header), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(
            ranges_of([1, 2, 3, 7, 8]),
            vec![SeqRange { start: 1, len: 3 }, SeqRange { start: 7, len: 2 }]
        );
    }
}
