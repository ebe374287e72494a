//! Just enough MPEG-TS to cut chunks on video frames and package HLS: packet fields, the
//! PAT/PMT program map, keyframe flags and PES timestamps. Single-section PSI only.

pub const PACKET_LEN: usize = 188;
pub const SYNC_BYTE: u8 = 0x47;
pub const PAT_PID: u16 = 0;
/// 90 kHz clock of PTS/PCR.
pub const PTS_HZ: u64 = 90_000;

/// A view on one 188-byte TS packet.
#[derive(Clone, Copy)]
pub struct Packet<'a>(&'a [u8]);

impl<'a> Packet<'a> {
    /// `None` unless `bytes` is exactly one packet starting with the sync byte.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() == PACKET_LEN && bytes[0] == SYNC_BYTE).then_some(Packet(bytes))
    }

    /// The whole packet.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }

    pub fn pid(&self) -> u16 {
        u16::from_be_bytes([self.0[1] & 0x1f, self.0[2]])
    }

    /// payload_unit_start_indicator: a PES or PSI section starts in this packet.
    pub fn unit_start(&self) -> bool {
        self.0[1] & 0x40 != 0
    }

    pub fn continuity(&self) -> u8 {
        self.0[3] & 0x0f
    }

    fn adaptation_len(&self) -> Option<usize> {
        (self.0[3] & 0x20 != 0).then(|| usize::from(self.0[4]))
    }

    /// random_access_indicator: a keyframe starts here.
    pub fn random_access(&self) -> bool {
        matches!(self.adaptation_len(), Some(len) if len > 0 && self.0[5] & 0x40 != 0)
    }

    pub fn payload(&self) -> &'a [u8] {
        if self.0[3] & 0x10 == 0 {
            return &[];
        }
        let start = 4 + self.adaptation_len().map_or(0, |len| len + 1);
        self.0.get(start..).unwrap_or(&[])
    }
}

/// Sets the continuity counter of a packet held in `bytes`.
pub fn set_continuity(bytes: &mut [u8], cc: u8) {
    bytes[3] = (bytes[3] & 0xf0) | (cc & 0x0f);
}

/// Splits `data` into packets; a trailing partial packet or lost sync ends the iteration.
pub fn packets(data: &[u8]) -> impl Iterator<Item = Packet<'_>> {
    data.chunks(PACKET_LEN).map_while(Packet::new)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Video,
    Audio,
    Other,
}

fn stream_kind(stream_type: u8) -> StreamKind {
    match stream_type {
        0x01 | 0x02 | 0x10 | 0x1b | 0x24 => StreamKind::Video,
        0x03 | 0x04 | 0x0f | 0x11 | 0x81 => StreamKind::Audio,
        _ => StreamKind::Other,
    }
}

/// What the PAT and PMT say: which PID carries the PMT, video and audio.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramMap {
    pub pmt_pid: Option<u16>,
    pub video_pid: Option<u16>,
    pub audio_pids: Vec<u16>,
}

impl ProgramMap {
    /// True for packets of the PAT or PMT.
    pub fn is_psi(&self, pid: u16) -> bool {
        pid == PAT_PID || Some(pid) == self.pmt_pid
    }

    /// Learns from a PAT or PMT packet; returns true if the packet was one.
    pub fn observe(&mut self, packet: &Packet) -> bool {
        let pid = packet.pid();
        if !self.is_psi(pid) {
            return false;
        }
        if packet.unit_start()
            && let Some(section) = psi_section(packet.payload())
        {
            if pid == PAT_PID {
                self.read_pat(section);
            } else {
                self.read_pmt(section);
            }
        }
        true
    }

    fn read_pat(&mut self, section: &[u8]) {
        // After the 8-byte section header: (program_number, pid) pairs; program 0 is the NIT.
        for entry in section.get(8..).unwrap_or(&[]).chunks_exact(4) {
            let program = u16::from_be_bytes([entry[0], entry[1]]);
            if program != 0 {
                self.pmt_pid = Some(u16::from_be_bytes([entry[2] & 0x1f, entry[3]]));
                return;
            }
        }
    }

    fn read_pmt(&mut self, section: &[u8]) {
        let Some(info_len) = section
            .get(10..12)
            .map(|b| usize::from(u16::from_be_bytes([b[0] & 0x0f, b[1]])))
        else {
            return;
        };
        let mut rest = section.get(12 + info_len..).unwrap_or(&[]);
        self.video_pid = None;
        self.audio_pids.clear();
        while rest.len() >= 5 {
            let pid = u16::from_be_bytes([rest[1] & 0x1f, rest[2]]);
            match stream_kind(rest[0]) {
                StreamKind::Video if self.video_pid.is_none() => self.video_pid = Some(pid),
                StreamKind::Audio => self.audio_pids.push(pid),
                _ => {}
            }
            let es_info = usize::from(u16::from_be_bytes([rest[3] & 0x0f, rest[4]]));
            rest = rest.get(5 + es_info..).unwrap_or(&[]);
        }
    }
}

/// The section body after the pointer field, without its CRC; `None` if it does not fit.
fn psi_section(payload: &[u8]) -> Option<&[u8]> {
    let pointer = usize::from(*payload.first()?);
    let section = payload.get(1 + pointer..)?;
    let len = usize::from(u16::from_be_bytes([*section.get(1)? & 0x0f, *section.get(2)?]));
    // section_length counts from after its own field and includes the 4-byte CRC.
    section.get(..3 + len.checked_sub(4)?)
}

/// PTS of a PES that starts in `payload`, in 90 kHz ticks.
pub fn pes_pts(payload: &[u8]) -> Option<u64> {
    if payload.len() < 14 || payload[..3] != [0, 0, 1] || payload[7] & 0x80 == 0 {
        return None;
    }
    let b = &payload[9..14];
    Some(
        (u64::from(b[0] >> 1) & 0x07) << 30
            | u64::from(b[1]) << 22
            | (u64::from(b[2]) >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4]) >> 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pid: u16, unit_start: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            SYNC_BYTE,
            (pid >> 8) as u8 | if unit_start { 0x40 } else { 0 },
            pid as u8,
            0x10,
        ];
        p.extend_from_slice(payload);
        p.resize(PACKET_LEN, 0xff);
        p
    }

    #[test]
    fn reads_pat_and_pmt() {
        // PAT: program 1 → PMT pid 0x1000.
        let pat = packet(
            0,
            true,
            &[0, 0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00, 1, 2, 3, 4],
        );
        // PMT: H.264 on 0x41, AAC on 0x42.
        let pmt = packet(
            0x1000,
            true,
            &[
                0, 0x02, 0xb0, 23, 0, 1, 0xc1, 0, 0, 0xe0, 0x41, 0xf0, 0, 0x1b, 0xe0, 0x41, 0xf0, 0, 0x0f, 0xe0, 0x42,
                0xf0, 0, 1, 2, 3, 4,
            ],
        );
        let mut map = ProgramMap::default();
        assert!(map.observe(&Packet::new(&pat).unwrap()));
        assert_eq!(map.pmt_pid, Some(0x1000));
        assert!(map.observe(&Packet::new(&pmt).unwrap()));
        assert_eq!(map.video_pid, Some(0x41));
        assert_eq!(map.audio_pids, vec![0x42]);
    }

    #[test]
    fn reads_pts() {
        // PTS = 0x1_2345_6789 encoded in the 5-byte marker format.
        let pts: u64 = 0x1_2345_6789;
        let b = [
            0x21 | ((pts >> 29) & 0x0e) as u8,
            (pts >> 22) as u8,
            ((pts >> 14) & 0xfe) as u8 | 1,
            (pts >> 7) as u8,
            ((pts << 1) & 0xfe) as u8 | 1,
        ];
        let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5];
        pes.extend_from_slice(&b);
        assert_eq!(pes_pts(&pes), Some(pts));
    }

    #[test]
    fn garbage_is_not_a_packet() {
        assert!(Packet::new(&[0u8; 188]).is_none());
        assert!(Packet::new(&[0x47; 187]).is_none());
        let mut map = ProgramMap::default();
        let junk = packet(0, true, &[200, 1, 2]);
        map.observe(&Packet::new(&junk).unwrap());
        assert_eq!(map, ProgramMap::default());
    }
}
