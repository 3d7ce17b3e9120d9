//! The latency carrier: an H.264 SEI NAL unit (payload type 5,
//! user_data_unregistered) that publishers put into every AVC coded-frame
//! message, carrying the frame's sequence number in its stream, its send
//! time (wall clock, µs since the Unix epoch) and the whole message's length
//! (so a player can check message boundaries).
//!
//! Why SEI: it lives inside the video payload, so every server forwards it
//! (nginx-rtmp drops data messages other than metadata), and decoders skip
//! unregistered user data, so a real file's stream stays playable. The
//! fields are ASCII hex, which never holds two zero bytes in a row, so the
//! NAL unit needs no emulation-prevention bytes. This module never reads a
//! clock: times are passed in.

use bytes::{BufMut, Bytes, BytesMut};

/// Identifies our SEI among others (x264 writes its own): ASCII, no zeros.
pub const CLOCK_UUID: [u8; 16] = *b"TributaryClock01";
/// Hex digits: sequence (16), send time in µs (16), message length (8).
const FIELDS_LEN: usize = 40;
const SEI_PAYLOAD_LEN: usize = CLOCK_UUID.len() + FIELDS_LEN;
/// NAL header (1), payload type (1), payload size (1), payload, rbsp stop.
const NAL_LEN: usize = 3 + SEI_PAYLOAD_LEN + 1;
/// What stamping adds to a message: a 4-byte NAL length and the NAL unit.
pub const STAMP_LEN: usize = 4 + NAL_LEN;
/// Flags, AVC packet type, composition time.
const AVC_HEADER_LEN: usize = 5;
const NAL_TYPE_SEI: u8 = 6;
const NAL_TYPE_AUD: u8 = 9;
const SEI_USER_DATA_UNREGISTERED: u8 = 5;

/// What a stamp says about one video frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockStamp {
    /// Coded video frames sent before this one on its stream.
    pub sequence: u64,
    /// When the publisher sent it: µs since the Unix epoch.
    pub sent_at_us: u64,
    /// Length of the whole message payload as sent.
    pub message_len: u32,
}

/// True for a legacy AVC coded-frame payload (what can carry a stamp when
/// its NAL units have 4-byte lengths).
pub fn is_avc_frame(payload: &[u8]) -> bool {
    payload.len() > AVC_HEADER_LEN
        && payload[0] & 0x80 == 0
        && payload[0] & 0x0F == 7
        && payload[1] == 1
}

/// Where the SEI goes: after an access unit delimiter if the frame starts
/// with a well-formed one (H.264 wants the AUD first), else first. Writer
/// and reader use the same rule, so they agree even on payloads that are
/// not NAL units at all (the synthetic stream's).
fn insertion_point(payload: &[u8]) -> usize {
    let Some(first) = payload.get(AVC_HEADER_LEN..AVC_HEADER_LEN + 5) else {
        return AVC_HEADER_LEN;
    };
    let len = u32::from_be_bytes([first[0], first[1], first[2], first[3]]) as usize;
    let end = AVC_HEADER_LEN + 4 + len;
    if first[4] & 0x1F == NAL_TYPE_AUD && end <= payload.len() {
        end
    } else {
        AVC_HEADER_LEN
    }
}

/// Returns `payload` with a stamp inserted, built in `arena` (reused across
/// calls, so stamping costs no allocation once the arena is warm and earlier
/// messages are gone). `None` if the payload is not an AVC coded frame.
pub fn stamp(
    arena: &mut BytesMut,
    payload: &[u8],
    sequence: u64,
    sent_at_us: u64,
) -> Option<Bytes> {
    if !is_avc_frame(payload) {
        return None;
    }
    let at = insertion_point(payload);
    let total = payload.len() + STAMP_LEN;
    let message_len = u32::try_from(total).ok()?;
    arena.reserve(total.max(64 * 1024));
    arena.put_slice(&payload[..at]);
    arena.put_u32(NAL_LEN as u32);
    arena.put_u8(NAL_TYPE_SEI);
    arena.put_u8(SEI_USER_DATA_UNREGISTERED);
    arena.put_u8(SEI_PAYLOAD_LEN as u8);
    arena.put_slice(&CLOCK_UUID);
    put_hex(arena, sequence, 16);
    put_hex(arena, sent_at_us, 16);
    put_hex(arena, u64::from(message_len), 8);
    arena.put_u8(0x80);
    arena.put_slice(&payload[at..]);
    Some(arena.split().freeze())
}

fn put_hex(out: &mut BytesMut, value: u64, digits: u32) {
    for i in (0..digits).rev() {
        let nibble = ((value >> (i * 4)) & 0xF) as u8;
        out.put_u8(b"0123456789abcdef"[nibble as usize]);
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(v))
    })
}

/// Reads the stamp of a video payload, if it has one where [`stamp`] puts
/// it. Any payload is safe to pass: peers control it.
pub fn read(payload: &[u8]) -> Option<ClockStamp> {
    if !is_avc_frame(payload) {
        return None;
    }
    let at = insertion_point(payload);
    let nal = payload.get(at..at + STAMP_LEN)?;
    if nal[..4] != (NAL_LEN as u32).to_be_bytes()
        || nal[4] & 0x1F != NAL_TYPE_SEI
        || nal[5] != SEI_USER_DATA_UNREGISTERED
        || usize::from(nal[6]) != SEI_PAYLOAD_LEN
        || nal[7..23] != CLOCK_UUID
    {
        return None;
    }
    let fields = &nal[23..23 + FIELDS_LEN];
    Some(ClockStamp {
        sequence: parse_hex(&fields[..16])?,
        sent_at_us: parse_hex(&fields[16..32])?,
        message_len: u32::try_from(parse_hex(&fields[32..40])?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![0x27, 0x01, 0, 0, 0];
        for n in nals {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    #[test]
    fn a_stamp_reads_back_and_keeps_the_frame() {
        let original = frame(&[&[0x41, 0x9A, 0x00, 0x00, 0x01]]);
        let mut arena = BytesMut::new();
        let stamped = stamp(&mut arena, &original, 42, 1_700_000_000_123_456).unwrap();
        assert_eq!(stamped.len(), original.len() + STAMP_LEN);
        let s = read(&stamped).unwrap();
        assert_eq!(s.sequence, 42);
        assert_eq!(s.sent_at_us, 1_700_000_000_123_456);
        assert_eq!(s.message_len as usize, stamped.len());
        // The original NAL follows the SEI untouched.
        assert_eq!(&stamped[5 + STAMP_LEN..], &original[5..]);
        // No start-code emulation inside the SEI NAL.
        let sei = &stamped[9..5 + STAMP_LEN];
        assert!(!sei.windows(3).any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 3));
    }

    #[test]
    fn the_sei_goes_after_an_access_unit_delimiter() {
        let original = frame(&[&[0x09, 0xF0], &[0x65, 0x88]]);
        let mut arena = BytesMut::new();
        let stamped = stamp(&mut arena, &original, 1, 2).unwrap();
        assert_eq!(&stamped[5..11], &[0, 0, 0, 2, 0x09, 0xF0]);
        assert_eq!(read(&stamped).unwrap().sequence, 1);
        // Garbage that looks like an AUD with a length past the end: the
        // stamp goes first, and reads back.
        let garbage = [0x27, 1, 0, 0, 0, 0x7F, 0, 0, 0, 0x09, 1, 2];
        let stamped = stamp(&mut arena, &garbage, 3, 4).unwrap();
        assert_eq!(read(&stamped).unwrap().sequence, 3);
    }

    #[test]
    fn unstamped_and_foreign_payloads_read_as_none() {
        assert_eq!(read(&frame(&[&[0x65, 1, 2, 3]])), None);
        assert_eq!(read(&[0x17, 0x00, 0, 0, 0, 1, 0x64]), None);
        assert_eq!(read(&[0xAF, 0x01, 1, 2]), None);
        assert_eq!(read(&[]), None);
        let mut arena = BytesMut::new();
        let mut s = stamp(&mut arena, &frame(&[&[0x65]]), 7, 8)
            .unwrap()
            .to_vec();
        s[30] = b'z';
        assert_eq!(read(&s), None);
    }
}
