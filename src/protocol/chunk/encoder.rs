//! Chunk encoder: messages → chunks.
//!
//! Two ways out. [`encode_message`] writes a message with a type-0 header on
//! its first chunk, so its bytes do not depend on what the peer saw before:
//! encode once, write the same `Bytes` to every player. [`ChunkEncoder`]
//! compresses headers (types 1-2) toward a single peer, for commands and for
//! a publishing client. Never mix the two on one chunk stream without
//! [`ChunkEncoder::forget`].

use bytes::{BufMut, BytesMut};

use crate::protocol::message::RawMessage;

use super::{DEFAULT_CHUNK_SIZE, EXTENDED_TIMESTAMP, MAX_CSID};

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    debug_assert!((2..=MAX_CSID).contains(&csid));
    let fmt = fmt << 6;
    if csid < 64 {
        out.put_u8(fmt | csid as u8);
    } else if csid < 320 {
        out.put_u8(fmt);
        out.put_u8((csid - 64) as u8);
    } else {
        let id = csid - 64;
        out.put_u8(fmt | 1);
        out.put_u8(id as u8);
        out.put_u8((id >> 8) as u8);
    }
}

fn put_u24(out: &mut BytesMut, v: u32) {
    out.put_u8((v >> 16) as u8);
    out.put_u8((v >> 8) as u8);
    out.put_u8(v as u8);
}

/// Upper bound of the bytes `msg` takes once chunked.
pub fn encoded_len(chunk_size: u32, payload_len: usize, csid: u32) -> usize {
    let basic = if csid < 64 {
        1
    } else if csid < 320 {
        2
    } else {
        3
    };
    let chunks = payload_len.div_ceil(chunk_size as usize).max(1);
    basic + 11 + 4 + payload_len + (chunks - 1) * (basic + 4)
}

/// Writes the message header of type `fmt` (0-2) and the whole payload,
/// continuation chunks as type 3, repeating the extended timestamp when the
/// first header used one (what the spec asks and ffmpeg does).
fn put_message(out: &mut BytesMut, chunk_size: u32, fmt: u8, ts_field: u32, msg: &RawMessage) {
    let extended = ts_field >= EXTENDED_TIMESTAMP;
    let payload = &msg.payload[..];
    out.reserve(encoded_len(chunk_size, payload.len(), msg.csid));
    put_basic_header(out, fmt, msg.csid);
    put_u24(
        out,
        if extended {
            EXTENDED_TIMESTAMP
        } else {
            ts_field
        },
    );
    if fmt <= 1 {
        put_u24(out, payload.len() as u32);
        out.put_u8(msg.type_id.0);
    }
    if fmt == 0 {
        out.put_u32_le(msg.stream_id);
    }
    if extended {
        out.put_u32(ts_field);
    }
    let mut chunks = payload.chunks(chunk_size as usize);
    if let Some(first) = chunks.next() {
        out.extend_from_slice(first);
    }
    for chunk in chunks {
        put_basic_header(out, 3, msg.csid);
        if extended {
            out.put_u32(ts_field);
        }
        out.extend_from_slice(chunk);
    }
}

/// Encodes `msg` with a type-0 header on its first chunk, independent of any
/// earlier message: the bytes can go unchanged to any number of peers that
/// use `chunk_size`.
pub fn encode_message(out: &mut BytesMut, chunk_size: u32, msg: &RawMessage) {
    put_message(out, chunk_size, 0, msg.timestamp, msg);
}

#[derive(Debug, Clone, Copy)]
struct LastHeader {
    csid: u32,
    timestamp: u32,
    length: usize,
    type_id: u8,
    stream_id: u32,
}

/// Header compression toward one peer: type 1 when only the length or type
/// changed, type 2 when only the timestamp moved forward, type 0 otherwise.
///
/// It never starts a message with a type-3 header: receivers disagree on
/// which delta such a header repeats after a type-0 header, and the two bytes
/// saved are not worth a timestamp jump in someone's player.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    last: Vec<LastHeader>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            last: Vec::with_capacity(8),
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Use after sending Set Chunk Size to the peer (and not before).
    pub fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = size.max(1);
    }

    /// Forget what the peer last saw on `csid` (after writing messages on it
    /// by another path): the next message there gets a type-0 header.
    pub fn forget(&mut self, csid: u32) {
        self.last.retain(|h| h.csid != csid);
    }

    /// Appends `msg`, chunked, to `out`.
    pub fn write(&mut self, out: &mut BytesMut, msg: &RawMessage) {
        let slot = self.last.iter().position(|h| h.csid == msg.csid);
        let (fmt, ts_field) = match slot.map(|i| self.last[i]) {
            Some(prev) if prev.stream_id == msg.stream_id && msg.timestamp >= prev.timestamp => {
                let delta = msg.timestamp - prev.timestamp;
                if prev.length == msg.payload.len() && prev.type_id == msg.type_id.0 {
                    (2, delta)
                } else {
                    (1, delta)
                }
            }
            _ => (0, msg.timestamp),
        };
        put_message(out, self.chunk_size, fmt, ts_field, msg);
        let now = LastHeader {
            csid: msg.csid,
            timestamp: msg.timestamp,
            length: msg.payload.len(),
            type_id: msg.type_id.0,
            stream_id: msg.stream_id,
        };
        match slot {
            Some(i) => self.last[i] = now,
            None => self.last.push(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::chunk::{ChunkDecoder, ChunkError};
    use crate::protocol::limits::Limits;
    use crate::protocol::message::MessageType;

    fn msg(csid: u32, ts: u32, type_id: u8, stream_id: u32, len: usize) -> RawMessage {
        RawMessage {
            csid,
            timestamp: ts,
            type_id: MessageType(type_id),
            stream_id,
            payload: Bytes::from(
                (0..len)
                    .map(|i| (i * 7 + ts as usize) as u8)
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn decode_all(dec: &mut ChunkDecoder, mut input: &[u8]) -> Result<Vec<RawMessage>, ChunkError> {
        let mut out = Vec::new();
        while let Some(m) = dec.decode(&mut input)? {
            out.push(m);
        }
        assert!(input.is_empty());
        Ok(out)
    }

    #[test]
    fn spec_example_type0_header_bytes() {
        let mut out = BytesMut::new();
        let m = RawMessage {
            csid: 3,
            timestamp: 1000,
            type_id: MessageType::COMMAND_AMF0,
            stream_id: 1,
            payload: Bytes::from_static(&[0xAA; 4]),
        };
        encode_message(&mut out, 128, &m);
        assert_eq!(
            &out[..],
            &[
                0x03, 0x00, 0x03, 0xE8, 0x00, 0x00, 0x04, 0x14, 0x01, 0x00, 0x00, 0x00, 0xAA, 0xAA,
                0xAA, 0xAA
            ]
        );
    }

    #[test]
    fn basic_header_sizes() {
        for (csid, expected) in [
            (2u32, vec![0x02]),
            (63, vec![0x3F]),
            (64, vec![0x00, 0x00]),
            (319, vec![0x00, 0xFF]),
            (320, vec![0x01, 0x00, 0x01]),
            (65_599, vec![0x01, 0xFF, 0xFF]),
        ] {
            let mut out = BytesMut::new();
            put_basic_header(&mut out, 0, csid);
            assert_eq!(&out[..], &expected[..], "csid {csid}");
            let mut out = BytesMut::new();
            let m = msg(csid, 5, 9, 1, 300);
            encode_message(&mut out, 128, &m);
            let mut dec = ChunkDecoder::new(Limits::default());
            assert_eq!(decode_all(&mut dec, &out).unwrap(), vec![m]);
        }
    }

    #[test]
    fn compressed_headers_round_trip_through_decoder() {
        let mut enc = ChunkEncoder::new();
        let mut out = BytesMut::new();
        let messages = vec![
            msg(6, 0, 9, 1, 500),
            msg(6, 33, 9, 1, 500),          // type 2
            msg(6, 66, 9, 1, 800),          // type 1
            msg(4, 10, 8, 1, 200),          // new stream, type 0
            msg(6, 100, 9, 1, 800),         // type 2
            msg(6, 50, 9, 1, 10),           // backwards: type 0
            msg(4, 0xFFFF_FFF0, 8, 1, 300), // extended timestamp
            msg(4, 0xFFFF_FFF8, 8, 1, 300), // small delta after extended
        ];
        for m in &messages {
            enc.write(&mut out, m);
        }
        let mut dec = ChunkDecoder::new(Limits::default());
        assert_eq!(decode_all(&mut dec, &out).unwrap(), messages);
    }

    #[test]
    fn header_types_are_the_expected_ones() {
        let mut enc = ChunkEncoder::new();
        let mut out = BytesMut::new();
        enc.write(&mut out, &msg(6, 0, 9, 1, 10));
        assert_eq!(out[0] >> 6, 0);
        out.clear();
        enc.write(&mut out, &msg(6, 40, 9, 1, 10));
        assert_eq!(out[0] >> 6, 2);
        assert_eq!(out.len(), 1 + 3 + 10);
        out.clear();
        enc.write(&mut out, &msg(6, 80, 9, 1, 11));
        assert_eq!(out[0] >> 6, 1);
        assert_eq!(out.len(), 1 + 7 + 11);
    }

    #[test]
    fn extended_timestamp_repeated_on_continuation_chunks() {
        let m = msg(6, 0x0100_0000, 9, 1, 300);
        let mut out = BytesMut::new();
        encode_message(&mut out, 128, &m);
        // 12 header + 4 ext + 128 + (1 + 4 + 128) + (1 + 4 + 44)
        assert_eq!(out.len(), 12 + 4 + 128 + 133 + 49);
        assert_eq!(&out[145..149], &[0x01, 0x00, 0x00, 0x00]);
        let mut dec = ChunkDecoder::new(Limits::default());
        assert_eq!(decode_all(&mut dec, &out).unwrap(), vec![m]);
    }

    /// librtmp and OBS before 30.1 leave the extended timestamp out of
    /// type-3 chunks; the decoder must read both forms.
    #[test]
    fn extended_timestamp_omitted_on_continuation_chunks() {
        let m = msg(6, 0x0100_0000, 9, 1, 300);
        let mut out = BytesMut::new();
        out.extend_from_slice(&[
            0x06, 0xFF, 0xFF, 0xFF, 0x00, 0x01, 0x2C, 0x09, 0x01, 0, 0, 0,
        ]);
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0x00]);
        out.extend_from_slice(&m.payload[..128]);
        out.put_u8(0xC6);
        out.extend_from_slice(&m.payload[128..256]);
        out.put_u8(0xC6);
        out.extend_from_slice(&m.payload[256..]);
        let mut dec = ChunkDecoder::new(Limits::default());
        assert_eq!(decode_all(&mut dec, &out).unwrap(), vec![m]);
    }

    #[test]
    fn type3_new_message_repeats_the_delta() {
        // type 0 at 1000, type 2 delta 20, type 3 → 1040 (spec example 1),
        // and type 0 at 40 then type 3 → 80 (ffmpeg's reading of type 0).
        let mut b = BytesMut::new();
        b.extend_from_slice(&[
            0x04, 0x00, 0x03, 0xE8, 0x00, 0x00, 0x02, 0x08, 0x01, 0, 0, 0, 1, 2,
        ]);
        b.extend_from_slice(&[0x84, 0x00, 0x00, 0x14, 3, 4]);
        b.extend_from_slice(&[0xC4, 5, 6]);
        b.extend_from_slice(&[
            0x05, 0x00, 0x00, 0x28, 0x00, 0x00, 0x01, 0x09, 0x01, 0, 0, 0, 7,
        ]);
        b.extend_from_slice(&[0xC5, 8]);
        let mut dec = ChunkDecoder::new(Limits::default());
        let got: Vec<u32> = decode_all(&mut dec, &b)
            .unwrap()
            .iter()
            .map(|m| m.timestamp)
            .collect();
        assert_eq!(got, vec![1000, 1020, 1040, 40, 80]);
    }

    #[test]
    fn interleaved_streams_and_byte_by_byte_input() {
        // Audio and video chunks interleaved the way ffmpeg sends them.
        let video = msg(6, 40, 9, 1, 1000);
        let audio = msg(4, 41, 8, 1, 300);
        let mut b = BytesMut::new();
        let mut v = BytesMut::new();
        encode_message(&mut v, 128, &video);
        let mut a = BytesMut::new();
        encode_message(&mut a, 128, &audio);
        // video first chunk (12 + 128), audio whole, video rest.
        b.extend_from_slice(&v[..140]);
        b.extend_from_slice(&a);
        b.extend_from_slice(&v[140..]);
        let mut dec = ChunkDecoder::new(Limits::default());
        let mut got = Vec::new();
        for byte in b.chunks(1) {
            let mut input = byte;
            while let Some(m) = dec.decode(&mut input).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![audio, video]);
    }

    #[test]
    fn set_chunk_size_and_abort() {
        let mut enc = ChunkEncoder::new();
        let mut out = BytesMut::new();
        let set = crate::protocol::chunk::ControlMessage::SetChunkSize(4096).to_message();
        enc.write(&mut out, &set);
        enc.set_chunk_size(4096);
        let big = msg(6, 0, 9, 1, 10_000);
        enc.write(&mut out, &big);
        // A partial message on csid 7, then Abort(7), then a whole message on 7.
        out.extend_from_slice(&[0x07, 0, 0, 0, 0x00, 0x20, 0x00, 0x09, 0x01, 0, 0, 0]);
        out.extend_from_slice(&[9; 4096]);
        let abort = crate::protocol::chunk::ControlMessage::Abort { csid: 7 }.to_message();
        enc.write(&mut out, &abort);
        let after = msg(7, 5, 9, 1, 20);
        enc.forget(7);
        enc.write(&mut out, &after);
        let mut dec = ChunkDecoder::new(Limits::default());
        let got = decode_all(&mut dec, &out).unwrap();
        assert_eq!(dec.chunk_size(), 4096);
        assert_eq!(got, vec![set, big, abort, after]);
    }

    #[test]
    fn limits_are_errors() {
        let limits = Limits {
            max_message_len: 1000,
            max_chunk_streams: 2,
            ..Limits::default()
        };
        let mut dec = ChunkDecoder::new(limits);
        let mut input: &[u8] = &[0x04, 0, 0, 0, 0x00, 0x03, 0xE9, 0x09, 1, 0, 0, 0];
        assert_eq!(
            dec.decode(&mut input),
            Err(ChunkError::MessageTooLarge {
                len: 1001,
                limit: 1000
            })
        );

        let mut dec = ChunkDecoder::new(limits);
        let mut b = BytesMut::new();
        for csid in 3..6 {
            encode_message(&mut b, 128, &msg(csid, 0, 9, 1, 1));
        }
        assert_eq!(
            decode_all(&mut dec, &b),
            Err(ChunkError::TooManyChunkStreams { limit: 2 })
        );

        let mut dec = ChunkDecoder::new(Limits::default());
        let mut input: &[u8] = &[0x44, 0, 0, 0, 0, 0, 1, 9];
        assert_eq!(
            dec.decode(&mut input),
            Err(ChunkError::NoPreviousHeader { csid: 4, fmt: 1 })
        );

        for size in [0u32, 0x8000_0000, 70_000] {
            let mut dec = ChunkDecoder::new(Limits::default());
            let mut b = BytesMut::new();
            let mut m = crate::protocol::chunk::ControlMessage::SetChunkSize(0).to_message();
            m.payload = Bytes::copy_from_slice(&size.to_be_bytes());
            encode_message(&mut b, 128, &m);
            assert!(matches!(
                decode_all(&mut dec, &b),
                Err(ChunkError::InvalidChunkSize { .. })
            ));
        }
    }

    #[test]
    fn acknowledgement_window() {
        let mut dec = ChunkDecoder::new(Limits::default());
        let mut b = BytesMut::new();
        encode_message(
            &mut b,
            128,
            &crate::protocol::chunk::ControlMessage::WindowAckSize(5000).to_message(),
        );
        for i in 0..40 {
            encode_message(&mut b, 128, &msg(6, i, 9, 1, 300));
        }
        let mut input = &b[..];
        let mut acks = Vec::new();
        while let Some(_m) = dec.decode(&mut input).unwrap() {
            if let Some(seq) = dec.poll_ack() {
                acks.push(seq);
            }
        }
        assert!(acks.len() >= 2, "{acks:?}");
        assert!(acks.windows(2).all(|w| w[1] - w[0] >= 5000));
        assert_eq!(dec.bytes_received(), b.len() as u64);
    }

    #[test]
    fn empty_message() {
        let m = msg(5, 9, 18, 1, 0);
        let mut b = BytesMut::new();
        encode_message(&mut b, 128, &m);
        let mut dec = ChunkDecoder::new(Limits::default());
        assert_eq!(decode_all(&mut dec, &b).unwrap(), vec![m]);
    }
}
