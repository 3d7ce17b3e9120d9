//! How a stream's messages cross NATS between nodes: each RTMP message is
//! one or more frames (a message bigger than the server's `max_payload` is
//! split and joined again), numbered by the owner's per-stream sequence so
//! that a relaying node can splice the snapshot with live media and see
//! gaps. Also the encoding of stream keys into NATS subject tokens and KV
//! keys. Pure bytes, no I/O; a peer's frames are checked, never trusted.
//!
//! Frame layout (big-endian), 22 bytes of header then the part:
//! `kind u8 | seq u64 | type_id u8 | timestamp u32 | total_len u32 | offset u32 | part`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{MessageType, RawMessage};

pub const HEADER_LEN: usize = 22;

/// A stream's sequence numbers carry its epoch in their top bits: each new
/// publisher of a key (a takeover too) starts a new epoch, so a relaying
/// node tells "another publisher" from "a gap". The low bits count.
pub const EPOCH_SHIFT: u32 = 40;

/// The epoch of a sequence number.
pub fn epoch(seq: u64) -> u64 {
    seq >> EPOCH_SHIFT
}

/// The first sequence number of a new stream started at `unix_micros` by
/// connection `conn`: a 24-bit epoch that differs from the key's previous
/// one in practice (time and connection mixed), never 0.
pub fn first_seq(unix_micros: u64, conn: u64) -> u64 {
    let mixed = (unix_micros ^ conn.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let epoch = (mixed >> 40) & 0xFF_FFFF;
    epoch.max(1) << EPOCH_SHIFT
}

const KIND_MEDIA: u8 = 1;
const KIND_END: u8 = 2;
const KIND_SNAPSHOT_END: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame shorter than its header ({0} bytes)")]
    Short(usize),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("message of {0} bytes is over the limit")]
    TooLong(u32),
    #[error("part at offset {offset} of {total} does not continue message {seq}")]
    Discontinuous { seq: u64, offset: u32, total: u32 },
}

/// What a complete frame (or run of frames) carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Media {
        seq: u64,
        message: RawMessage,
    },
    /// The publisher left; the stream is over.
    End,
    /// The snapshot is complete; live media continues after `seq`.
    SnapshotEnd {
        seq: u64,
    },
}

fn header(out: &mut BytesMut, kind: u8, seq: u64, type_id: u8, ts: u32, total: u32, offset: u32) {
    out.put_u8(kind);
    out.put_u64(seq);
    out.put_u8(type_id);
    out.put_u32(ts);
    out.put_u32(total);
    out.put_u32(offset);
}

/// Encodes `message` as frames of at most `max_frame` bytes each (header
/// included) and hands each to `emit`. `max_frame` below 1 KiB is raised to it.
pub fn encode_media(seq: u64, message: &RawMessage, max_frame: usize, mut emit: impl FnMut(Bytes)) {
    let room = max_frame.max(1024) - HEADER_LEN;
    let payload = &message.payload;
    let total = payload.len() as u32;
    let mut offset = 0usize;
    loop {
        let end = (offset + room).min(payload.len());
        let mut out = BytesMut::with_capacity(HEADER_LEN + end - offset);
        header(
            &mut out,
            KIND_MEDIA,
            seq,
            message.type_id.0,
            message.timestamp,
            total,
            offset as u32,
        );
        out.extend_from_slice(&payload[offset..end]);
        emit(out.freeze());
        offset = end;
        if offset >= payload.len() {
            return;
        }
    }
}

pub fn encode_end() -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN);
    header(&mut out, KIND_END, 0, 0, 0, 0, 0);
    out.freeze()
}

pub fn encode_snapshot_end(seq: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN);
    header(&mut out, KIND_SNAPSHOT_END, seq, 0, 0, 0, 0);
    out.freeze()
}

/// Joins frames back into messages. A message in one frame costs no copy
/// (its payload is a slice of the frame); a split one is joined into a
/// buffer sized from its announced length, bounded by `max_message_len`.
#[derive(Debug)]
pub struct Joiner {
    max_message_len: u32,
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    seq: u64,
    type_id: u8,
    timestamp: u32,
    total: u32,
    buf: BytesMut,
}

impl Joiner {
    pub fn new(max_message_len: u32) -> Self {
        Self {
            max_message_len,
            partial: None,
        }
    }

    /// Takes one frame; returns a frame once a message is complete. A part
    /// that does not continue the message in progress drops that message
    /// and is an error (the caller counts a gap and resynchronises).
    pub fn push(&mut self, frame: Bytes) -> Result<Option<Frame>, WireError> {
        if frame.len() < HEADER_LEN {
            return Err(WireError::Short(frame.len()));
        }
        let kind = frame[0];
        let seq = u64::from_be_bytes(frame[1..9].try_into().unwrap_or([0; 8]));
        let type_id = frame[9];
        let timestamp = u32::from_be_bytes(frame[10..14].try_into().unwrap_or([0; 4]));
        let total = u32::from_be_bytes(frame[14..18].try_into().unwrap_or([0; 4]));
        let offset = u32::from_be_bytes(frame[18..22].try_into().unwrap_or([0; 4]));
        match kind {
            KIND_END => {
                self.partial = None;
                return Ok(Some(Frame::End));
            }
            KIND_SNAPSHOT_END => {
                self.partial = None;
                return Ok(Some(Frame::SnapshotEnd { seq }));
            }
            KIND_MEDIA => {}
            other => return Err(WireError::Kind(other)),
        }
        if total > self.max_message_len {
            self.partial = None;
            return Err(WireError::TooLong(total));
        }
        let part = frame.slice(HEADER_LEN..);
        let message = |payload: Bytes| RawMessage {
            csid: 0,
            timestamp,
            type_id: MessageType(type_id),
            stream_id: 0,
            payload,
        };
        if offset == 0 && part.len() as u32 == total {
            self.partial = None;
            return Ok(Some(Frame::Media {
                seq,
                message: message(part),
            }));
        }
        if offset == 0 {
            let mut buf = BytesMut::with_capacity(total as usize);
            if part.len() as u32 > total {
                return Err(WireError::Discontinuous { seq, offset, total });
            }
            buf.extend_from_slice(&part);
            self.partial = Some(Partial {
                seq,
                type_id,
                timestamp,
                total,
                buf,
            });
            return Ok(None);
        }
        let Some(p) = self.partial.as_mut() else {
            return Err(WireError::Discontinuous { seq, offset, total });
        };
        let continues = p.seq == seq
            && p.type_id == type_id
            && p.timestamp == timestamp
            && p.total == total
            && p.buf.len() as u32 == offset
            && offset as u64 + part.len() as u64 <= total as u64;
        if !continues {
            self.partial = None;
            return Err(WireError::Discontinuous { seq, offset, total });
        }
        p.buf.extend_from_slice(&part);
        if p.buf.len() as u32 == total {
            let p = self
                .partial
                .take()
                .map(|p| p.buf.freeze())
                .unwrap_or_default();
            return Ok(Some(Frame::Media {
                seq,
                message: message(p),
            }));
        }
        Ok(None)
    }
}

/// A stream key (`app/name`) as one NATS subject token and KV key: ASCII
/// letters, digits, `-` and `_` stay, every other byte becomes `=XX`.
/// Injective, so two keys never share a subject.
pub fn token(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The inverse of [`token`]; None for anything `token` cannot produce.
pub fn untoken(token: &str) -> Option<String> {
    crate::stream::unescape(token, b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: usize) -> RawMessage {
        RawMessage {
            csid: 6,
            timestamp: 123_456,
            type_id: MessageType::VIDEO,
            stream_id: 1,
            payload: Bytes::from((0..len).map(|i| (i * 7) as u8).collect::<Vec<_>>()),
        }
    }

    fn roundtrip(len: usize, max_frame: usize) -> (usize, RawMessage) {
        let m = msg(len);
        let mut frames = Vec::new();
        encode_media(42, &m, max_frame, |f| frames.push(f));
        let mut j = Joiner::new(16 << 20);
        let mut got = None;
        for (i, f) in frames.iter().enumerate() {
            assert!(f.len() <= max_frame.max(1024));
            let r = j.push(f.clone()).unwrap();
            if i + 1 < frames.len() {
                assert!(r.is_none());
            } else {
                got = r;
            }
        }
        let Some(Frame::Media { seq, message }) = got else {
            panic!("no message");
        };
        assert_eq!(seq, 42);
        (frames.len(), message)
    }

    #[test]
    fn small_message_is_one_frame_and_shares_the_payload() {
        let (n, m) = roundtrip(500, 1 << 20);
        assert_eq!(n, 1);
        assert_eq!(m.payload, msg(500).payload);
        assert_eq!(m.timestamp, 123_456);
        assert_eq!(m.type_id, MessageType::VIDEO);
    }

    #[test]
    fn big_message_is_split_at_max_payload_and_joined() {
        let (n, m) = roundtrip(3_000_000, 1 << 20);
        assert_eq!(n, 3);
        assert_eq!(m.payload, msg(3_000_000).payload);
        // Exactly at the boundary, and an empty message.
        let room = (1 << 20) - HEADER_LEN;
        assert_eq!(roundtrip(room, 1 << 20).0, 1);
        assert_eq!(roundtrip(room + 1, 1 << 20).0, 2);
        assert_eq!(roundtrip(0, 1 << 20).0, 1);
    }

    #[test]
    fn a_lost_part_is_an_error_and_the_next_message_still_joins() {
        let mut frames = Vec::new();
        encode_media(1, &msg(5000), 2048, |f| frames.push(f));
        encode_media(2, &msg(100), 2048, |f| frames.push(f));
        let mut j = Joiner::new(1 << 20);
        assert!(j.push(frames[0].clone()).unwrap().is_none());
        // frames[1] lost
        assert!(j.push(frames[2].clone()).is_err());
        let last = frames.last().unwrap().clone();
        assert!(matches!(
            j.push(last),
            Ok(Some(Frame::Media { seq: 2, .. }))
        ));
    }

    #[test]
    fn hostile_frames_are_errors() {
        let mut j = Joiner::new(1 << 20);
        assert_eq!(
            j.push(Bytes::from_static(b"short")),
            Err(WireError::Short(5))
        );
        let mut f = BytesMut::new();
        header(&mut f, 9, 0, 0, 0, 0, 0);
        assert_eq!(j.push(f.freeze()), Err(WireError::Kind(9)));
        let mut f = BytesMut::new();
        header(&mut f, KIND_MEDIA, 0, 9, 0, u32::MAX, 0);
        assert_eq!(j.push(f.freeze()), Err(WireError::TooLong(u32::MAX)));
        // A part claiming to be longer than its message.
        let mut f = BytesMut::new();
        header(&mut f, KIND_MEDIA, 0, 9, 0, 2, 0);
        f.extend_from_slice(b"abc");
        assert!(j.push(f.freeze()).is_err());
        // A continuation with nothing in progress.
        let mut f = BytesMut::new();
        header(&mut f, KIND_MEDIA, 0, 9, 0, 10, 4);
        f.extend_from_slice(b"abc");
        assert!(j.push(f.freeze()).is_err());
    }

    #[test]
    fn end_markers() {
        let mut j = Joiner::new(1 << 20);
        assert_eq!(j.push(encode_end()), Ok(Some(Frame::End)));
        assert_eq!(
            j.push(encode_snapshot_end(77)),
            Ok(Some(Frame::SnapshotEnd { seq: 77 }))
        );
    }

    #[test]
    fn tokens_are_safe_and_reversible() {
        for key in ["live/abc", "live/a.b*c>d e", "app/ünï", "x/=3D", ""] {
            let t = token(key);
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='));
            assert_eq!(untoken(&t).as_deref(), Some(key));
        }
        assert_ne!(token("a/b"), token("a_b"));
        assert_eq!(untoken("=Z1"), None);
        assert_eq!(untoken("=4"), None);
        assert_eq!(untoken("=+9"), None, "two hex digits, no sign");
    }
}
