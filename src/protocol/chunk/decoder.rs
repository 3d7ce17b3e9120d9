//! Chunk decoder: bytes in any fragmentation → whole messages.
//!
//! Each chunk stream reassembles into its own `BytesMut` arena. A message is
//! handed out as `arena.split().freeze()`, which shares the arena's
//! allocation; once every message cut from an arena has been dropped, the
//! arena is reclaimed in place. So a continuation chunk never allocates, and
//! a message's first chunk at most once: only when consumers still hold the
//! arena (a GOP cache does) and it is full. It must never buffer more than the limits allow, and
//! never trust a length before checking it against them.
//!
//! Long (about 670 lines): the chunk decoder, and its tests inline (about 110
//! lines).

use bytes::{Bytes, BytesMut};

use crate::protocol::limits::Limits;
use crate::protocol::message::{MessageType, RawMessage};

use super::control::{ControlError, ControlMessage};
use super::{DEFAULT_CHUNK_SIZE, EXTENDED_TIMESTAMP};

/// Basic header (3) + type-0 message header (11) + extended timestamp (4).
const MAX_HEADER_LEN: usize = 18;
/// Smallest acknowledgement window honoured from a peer.
const MIN_ACK_WINDOW: u32 = 4096;
/// Smallest arena of a media chunk stream (audio, video, aggregates): small
/// messages such as audio frames share one allocation.
const ARENA_MIN: usize = 16 * 1024;
/// Smallest arena of other chunk streams (commands, control, metadata):
/// they carry a few small messages, and a player's connection keeps such
/// arenas for its whole life, so they stay small.
const CONTROL_ARENA_MIN: usize = 512;
/// Messages up to this size share arenas sized for two; larger ones get an
/// arena of their own size, released once the message is handed out, so an
/// idle chunk stream never pins more than twice this.
const SHARED_ARENA_MAX: u32 = 256 * 1024;
const TYPE_AUDIO: u8 = 8;
const TYPE_VIDEO: u8 = 9;
const TYPE_AGGREGATE: u8 = 22;
/// Besides one message of `max_message_len`, this much more may be
/// announced by messages in progress on other chunk streams at once.
const IN_PROGRESS_SLACK: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    #[error("chunk stream {csid}: header type {fmt} with no earlier header on that stream")]
    NoPreviousHeader { csid: u32, fmt: u8 },
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    MessageTooLarge { len: u32, limit: u32 },
    #[error("more than {limit} chunk streams")]
    TooManyChunkStreams { limit: usize },
    #[error("chunk size {size} is outside 1..={limit}")]
    InvalidChunkSize { size: u32, limit: u32 },
    #[error("bad control message: {0}")]
    Control(#[from] ControlError),
    #[error("{bytes} bytes announced by unfinished messages, over the limit of {limit}")]
    TooMuchInProgress { bytes: u64, limit: u64 },
}

#[derive(Debug)]
struct StreamState {
    csid: u32,
    /// Timestamp of the message in progress, or of the last one.
    timestamp: u32,
    /// Timestamp field of the last type 0-2 header: the delta a type-3
    /// header that starts a new message repeats (absolute after type 0, as
    /// ffmpeg and the spec's examples do).
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last type 0-2 header carried an extended timestamp, so type-3
    /// chunks may repeat it (ffmpeg) or not (librtmp, older OBS).
    extended: bool,
    received: u32,
    in_progress: bool,
    /// Largest message seen on this stream, capped at SHARED_ARENA_MAX:
    /// what the arena keeps room for.
    typical_len: u32,
    buf: BytesMut,
}

impl StreamState {
    /// Makes room for a message of `len` bytes. Reclaims the arena in place
    /// when every message cut from it has been dropped (no allocation, and
    /// the memory is still in cache); otherwise starts a new arena with room
    /// for two typical messages, so renewing costs at most one allocation
    /// per message and usually far less.
    fn ensure_room(&mut self, len: u32) {
        let len = len as usize;
        // Asking for one byte more than is left makes `try_reclaim` rewind
        // to the arena's start when nothing cut from it is alive, so the same
        // cache lines serve message after message.
        let rewind = len.max(self.buf.capacity() - self.buf.len() + 1);
        if self.buf.try_reclaim(rewind) || self.buf.capacity() - self.buf.len() >= len {
            return;
        }
        let typical = len.max(self.typical_len as usize);
        let floor = match self.type_id {
            TYPE_AUDIO | TYPE_VIDEO | TYPE_AGGREGATE => ARENA_MIN,
            _ => CONTROL_ARENA_MIN,
        };
        if typical <= SHARED_ARENA_MAX as usize {
            self.buf.reserve(floor.max(2 * typical));
        } else {
            self.buf.reserve(len);
        }
    }
}

enum Step {
    Message(RawMessage),
    Progress,
    NeedMore,
}

#[derive(Debug, Clone, Copy)]
struct Header {
    fmt: u8,
    csid: u32,
    timestamp_field: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    len: usize,
}

/// Reassembles RTMP chunks into messages. One per connection and direction.
#[derive(Debug)]
pub struct ChunkDecoder {
    limits: Limits,
    chunk_size: u32,
    streams: Vec<StreamState>,
    /// Bytes from earlier input not yet processed (a header split across
    /// reads, and what followed it): they come before the next input.
    pending: [u8; MAX_HEADER_LEN],
    pending_len: usize,
    /// Sum of the announced lengths of messages in progress: bounded so a
    /// peer cannot hold many large messages half-sent at once.
    in_progress_bytes: u64,
    /// The chunk whose payload is being read: (stream slot, bytes left).
    in_chunk: Option<(usize, u32)>,
    /// Slot of the last chunk's stream: the next chunk is most often its
    /// type-3 continuation.
    last_slot: usize,
    bytes_received: u64,
    ack_window: u32,
    acked: u64,
}

impl ChunkDecoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: Vec::new(),
            pending: [0; MAX_HEADER_LEN],
            pending_len: 0,
            in_progress_bytes: 0,
            in_chunk: None,
            last_slot: 0,
            bytes_received: 0,
            ack_window: 0,
            acked: 0,
        }
    }

    /// The peer's current chunk size (what it set with Set Chunk Size).
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes consumed so far (headers and payload).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Sets the acknowledgement window: after this many bytes received,
    /// [`poll_ack`](Self::poll_ack) yields a sequence number to acknowledge.
    /// The decoder applies a Window Acknowledgement Size from the peer itself.
    pub fn set_ack_window(&mut self, window: u32) {
        self.ack_window = window;
    }

    /// An Acknowledgement is due: returns its sequence number (total bytes
    /// received, modulo 2^32, as the spec says).
    pub fn poll_ack(&mut self) -> Option<u32> {
        if self.ack_window > 0 && self.bytes_received - self.acked >= u64::from(self.ack_window) {
            self.acked = self.bytes_received;
            Some(self.bytes_received as u32)
        } else {
            None
        }
    }

    /// Consumes bytes from `input` until a message is complete (returned) or
    /// the input is used up (`Ok(None)`). Call again with the rest of the
    /// input after each message. Set Chunk Size, Abort and Window
    /// Acknowledgement Size from the peer are applied here and still returned.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<RawMessage>, ChunkError> {
        loop {
            if self.pending_len == 0 {
                // The hot path: payload, and one-byte continuation headers,
                // straight from the input.
                if let Some((slot, remaining)) = self.in_chunk {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    if let Some(m) = self.payload(input, slot, remaining)? {
                        return Ok(Some(m));
                    }
                    continue;
                }
                if input.is_empty() {
                    return Ok(None);
                }
                if self.continuation(input) {
                    if let (Some((slot, remaining)), false) = (self.in_chunk, input.is_empty()) {
                        if let Some(m) = self.payload(input, slot, remaining)? {
                            return Ok(Some(m));
                        }
                    }
                    continue;
                }
                match self.header(input)? {
                    Step::Message(m) => return Ok(Some(m)),
                    Step::Progress => continue,
                    Step::NeedMore => {
                        // A header is shorter than MAX_HEADER_LEN.
                        self.pending[..input.len()].copy_from_slice(input);
                        self.pending_len = input.len();
                        *input = &[];
                        return Ok(None);
                    }
                }
            }
            // Bytes left over from an earlier call come first; join as much
            // input as a header may need and step through them the same way.
            let take = (MAX_HEADER_LEN - self.pending_len).min(input.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&input[..take]);
            self.pending_len += take;
            *input = &input[take..];
            let joined = self.pending;
            let mut p = &joined[..self.pending_len];
            let step = self.step(&mut p);
            let used = self.pending_len - p.len();
            self.pending.copy_within(used..self.pending_len, 0);
            self.pending_len -= used;
            match step? {
                Step::Message(m) => return Ok(Some(m)),
                Step::Progress => {}
                Step::NeedMore if input.is_empty() => return Ok(None),
                Step::NeedMore => {}
            }
        }
    }

    /// One unit of work on `input`: some chunk payload, or one chunk header.
    fn step(&mut self, input: &mut &[u8]) -> Result<Step, ChunkError> {
        if let Some((slot, remaining)) = self.in_chunk {
            if input.is_empty() {
                return Ok(Step::NeedMore);
            }
            return Ok(match self.payload(input, slot, remaining)? {
                Some(m) => Step::Message(m),
                None => Step::Progress,
            });
        }
        if self.continuation(input) {
            return Ok(Step::Progress);
        }
        self.header(input)
    }

    /// Copies payload of the current chunk from non-empty `input`; returns
    /// the message if that completed it.
    #[inline]
    fn payload(
        &mut self,
        input: &mut &[u8],
        slot: usize,
        remaining: u32,
    ) -> Result<Option<RawMessage>, ChunkError> {
        let n = (remaining as usize).min(input.len());
        let st = &mut self.streams[slot];
        st.buf.extend_from_slice(&input[..n]);
        *input = &input[n..];
        st.received += n as u32;
        self.bytes_received += n as u64;
        let remaining = remaining - n as u32;
        if remaining > 0 {
            self.in_chunk = Some((slot, remaining));
            return Ok(None);
        }
        self.in_chunk = None;
        if st.received == st.length {
            return self.complete(slot).map(Some);
        }
        Ok(None)
    }

    /// Reads and applies one whole chunk header, if `input` holds it.
    fn header(&mut self, input: &mut &[u8]) -> Result<Step, ChunkError> {
        let Some(header) = self.parse_header(input) else {
            return Ok(Step::NeedMore);
        };
        *input = &input[header.len..];
        self.bytes_received += header.len as u64;
        Ok(match self.start_chunk(header)? {
            Some(m) => Step::Message(m),
            None => Step::Progress,
        })
    }

    /// Fast path for the commonest chunk: a one-byte type-3 header that
    /// continues the message in progress on the last chunk's stream, with
    /// no extended timestamp to look for.
    #[inline]
    fn continuation(&mut self, input: &mut &[u8]) -> bool {
        let Some(&b) = input.first() else {
            return false;
        };
        let Some(st) = self.streams.get(self.last_slot) else {
            return false;
        };
        if b >> 6 != 3 || u32::from(b & 0x3F) != st.csid || !st.in_progress || st.extended {
            return false;
        }
        *input = &input[1..];
        self.bytes_received += 1;
        self.in_chunk = Some((
            self.last_slot,
            (st.length - st.received).min(self.chunk_size),
        ));
        true
    }

    /// Parses one chunk header if `b` holds all of it. Pure: the stream
    /// state is only read (to know whether a type-3 chunk may carry an
    /// extended timestamp).
    fn parse_header(&self, b: &[u8]) -> Option<Header> {
        let first = *b.first()?;
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3F {
            0 => (u32::from(*b.get(1)?) + 64, 2),
            1 => (u32::from(*b.get(1)?) + u32::from(*b.get(2)?) * 256 + 64, 3),
            id => (u32::from(id), 1),
        };
        let mut h = Header {
            fmt,
            csid,
            timestamp_field: 0,
            length: 0,
            type_id: 0,
            stream_id: 0,
            extended: false,
            len: 0,
        };
        let mh = [11, 7, 3, 0][usize::from(fmt)];
        let m = b.get(pos..pos + mh)?;
        if fmt <= 2 {
            h.timestamp_field = u24(&m[0..3]);
        }
        if fmt <= 1 {
            h.length = u24(&m[3..6]);
            h.type_id = m[6];
        }
        if fmt == 0 {
            h.stream_id = u32::from_le_bytes([m[7], m[8], m[9], m[10]]);
        }
        pos += mh;
        if fmt <= 2 {
            if h.timestamp_field == EXTENDED_TIMESTAMP {
                let e = b.get(pos..pos + 4)?;
                h.timestamp_field = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
                h.extended = true;
                pos += 4;
            }
        } else if let Some(st) = self.streams.iter().find(|s| s.csid == csid) {
            if st.extended {
                // Type 3 after an extended header: the 4 bytes are there only
                // if the sender repeats them. Take them only when they equal
                // the stored field; otherwise they are payload.
                let e = b.get(pos..pos + 4)?;
                if u32::from_be_bytes([e[0], e[1], e[2], e[3]]) == st.delta {
                    pos += 4;
                }
            }
        }
        h.len = pos;
        Some(h)
    }

    /// Applies a chunk header; returns a message at once if it starts an
    /// empty one.
    fn start_chunk(&mut self, h: Header) -> Result<Option<RawMessage>, ChunkError> {
        let slot = match self.streams.iter().position(|s| s.csid == h.csid) {
            Some(slot) => slot,
            None => {
                if h.fmt != 0 {
                    return Err(ChunkError::NoPreviousHeader {
                        csid: h.csid,
                        fmt: h.fmt,
                    });
                }
                if self.streams.len() >= self.limits.max_chunk_streams {
                    return Err(ChunkError::TooManyChunkStreams {
                        limit: self.limits.max_chunk_streams,
                    });
                }
                self.streams.push(StreamState {
                    csid: h.csid,
                    timestamp: 0,
                    delta: 0,
                    length: 0,
                    type_id: 0,
                    stream_id: 0,
                    extended: false,
                    received: 0,
                    in_progress: false,
                    typical_len: 0,
                    buf: BytesMut::new(),
                });
                self.streams.len() - 1
            }
        };
        self.last_slot = slot;
        let st = &mut self.streams[slot];
        if h.fmt == 3 && st.in_progress {
            let left = st.length - st.received;
            self.in_chunk = Some((slot, left.min(self.chunk_size)));
            return Ok(None);
        }
        if st.in_progress {
            // A new message header before the last message ended: the sender
            // abandoned it (as after an Abort). Drop the partial bytes.
            st.buf.clear();
            st.in_progress = false;
            self.in_progress_bytes -= u64::from(st.length);
        }
        match h.fmt {
            0 => {
                st.timestamp = h.timestamp_field;
                st.stream_id = h.stream_id;
            }
            3 => st.timestamp = st.timestamp.wrapping_add(st.delta),
            _ => st.timestamp = st.timestamp.wrapping_add(h.timestamp_field),
        }
        if h.fmt <= 2 {
            st.delta = h.timestamp_field;
            st.extended = h.extended;
        }
        if h.fmt <= 1 {
            st.length = h.length;
            st.type_id = h.type_id;
        }
        if st.length > self.limits.max_message_len {
            return Err(ChunkError::MessageTooLarge {
                len: st.length,
                limit: self.limits.max_message_len,
            });
        }
        st.received = 0;
        if st.length == 0 {
            return self.complete(slot).map(Some);
        }
        let limit = u64::from(self.limits.max_message_len) + IN_PROGRESS_SLACK;
        let bytes = self.in_progress_bytes + u64::from(st.length);
        if bytes > limit {
            return Err(ChunkError::TooMuchInProgress { bytes, limit });
        }
        self.in_progress_bytes = bytes;
        st.in_progress = true;
        st.ensure_room(st.length);
        self.in_chunk = Some((slot, st.length.min(self.chunk_size)));
        Ok(None)
    }

    fn complete(&mut self, slot: usize) -> Result<RawMessage, ChunkError> {
        let st = &mut self.streams[slot];
        if st.in_progress {
            st.in_progress = false;
            self.in_progress_bytes -= u64::from(st.length);
        }
        let payload = if st.length == 0 {
            Bytes::new()
        } else {
            st.typical_len = st.typical_len.max(st.length.min(SHARED_ARENA_MAX));
            let payload = st.buf.split().freeze();
            if st.length > SHARED_ARENA_MAX {
                st.buf = BytesMut::new();
            }
            payload
        };
        let message = RawMessage {
            csid: st.csid,
            timestamp: st.timestamp,
            type_id: MessageType(st.type_id),
            stream_id: st.stream_id,
            payload,
        };
        if message.stream_id == 0 {
            self.apply_control(&message)?;
        }
        Ok(message)
    }

    /// The control messages that change how the following chunks are read
    /// must take effect before the next chunk header.
    fn apply_control(&mut self, m: &RawMessage) -> Result<(), ChunkError> {
        match m.type_id {
            MessageType::SET_CHUNK_SIZE => {
                if let ControlMessage::SetChunkSize(size) =
                    ControlMessage::parse(m.type_id, &m.payload)?
                {
                    if size == 0 || size > self.limits.max_chunk_size {
                        return Err(ChunkError::InvalidChunkSize {
                            size,
                            limit: self.limits.max_chunk_size,
                        });
                    }
                    self.chunk_size = size;
                }
            }
            MessageType::ABORT => {
                if let ControlMessage::Abort { csid } =
                    ControlMessage::parse(m.type_id, &m.payload)?
                {
                    if let Some(st) = self.streams.iter_mut().find(|s| s.csid == csid) {
                        if st.in_progress {
                            st.in_progress = false;
                            st.buf.clear();
                            self.in_progress_bytes -= u64::from(st.length);
                        }
                    }
                }
            }
            MessageType::WINDOW_ACK_SIZE => {
                if let ControlMessage::WindowAckSize(w) =
                    ControlMessage::parse(m.type_id, &m.payload)?
                {
                    // A tiny window would make every byte in cost an
                    // Acknowledgement out; no real peer asks for one.
                    self.ack_window = w.max(MIN_ACK_WINDOW);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn u24(b: &[u8]) -> u32 {
    u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2])
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};

    use super::*;
    use crate::protocol::chunk::encode_message;

    fn extended_message() -> RawMessage {
        RawMessage {
            csid: 6,
            timestamp: 0x0100_0000,
            type_id: MessageType::VIDEO,
            stream_id: 1,
            payload: Bytes::from((0..300u32).map(|i| i as u8).collect::<Vec<_>>()),
        }
    }

    /// The same message with type-3 chunks that omit the extended timestamp
    /// (librtmp, OBS before 30.1), then a short message after it.
    fn omitted_wire() -> (BytesMut, Vec<RawMessage>) {
        let m = extended_message();
        let mut b = BytesMut::new();
        b.extend_from_slice(&[
            0x06, 0xFF, 0xFF, 0xFF, 0x00, 0x01, 0x2C, 0x09, 0x01, 0, 0, 0,
        ]);
        b.extend_from_slice(&[0x01, 0x00, 0x00, 0x00]);
        b.extend_from_slice(&m.payload[..128]);
        b.put_u8(0xC6);
        b.extend_from_slice(&m.payload[128..256]);
        b.put_u8(0xC6);
        b.extend_from_slice(&m.payload[256..]);
        let after = RawMessage {
            csid: 4,
            timestamp: 5,
            type_id: MessageType::AUDIO,
            stream_id: 1,
            payload: Bytes::from_static(&[0xAF, 0x01, 7]),
        };
        encode_message(&mut b, 128, &after);
        (b, vec![m, after])
    }

    fn decode_split(wire: &[u8], cuts: &[usize]) -> Vec<RawMessage> {
        let mut dec = ChunkDecoder::new(Limits::default());
        let mut got = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
            let mut input = &wire[from..cut];
            from = cut;
            while let Some(m) = dec.decode(&mut input).unwrap() {
                got.push(m);
            }
            assert!(input.is_empty());
        }
        assert_eq!(dec.bytes_received(), wire.len() as u64);
        got
    }

    #[test]
    fn omitted_extended_timestamp_split_at_every_offset() {
        let (wire, expected) = omitted_wire();
        for cut in 0..=wire.len() {
            assert_eq!(decode_split(&wire, &[cut]), expected, "cut at {cut}");
        }
        let every: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(decode_split(&wire, &every), expected);
    }

    #[test]
    fn repeated_extended_timestamp_split_at_every_offset() {
        let m = extended_message();
        let mut wire = BytesMut::new();
        encode_message(&mut wire, 128, &m);
        for a in 0..=wire.len() {
            for b in [a, (a + 3).min(wire.len()), (a + 5).min(wire.len())] {
                assert_eq!(
                    decode_split(&wire, &[a, b]),
                    vec![m.clone()],
                    "cuts {a} {b}"
                );
            }
        }
    }

    #[test]
    fn unfinished_messages_are_bounded() {
        let limits = Limits {
            max_message_len: 2 * 1024 * 1024,
            ..Limits::default()
        };
        let mut dec = ChunkDecoder::new(limits);
        let mut wire = BytesMut::new();
        // First chunk of a 2 MiB message on each of several chunk streams.
        let mut err = None;
        for csid in 3..8u8 {
            wire.clear();
            wire.extend_from_slice(&[csid, 0, 0, 0, 0x20, 0x00, 0x00, 0x09, 1, 0, 0, 0]);
            wire.extend_from_slice(&[0; 128]);
            let mut input = &wire[..];
            if let Err(e) = dec.decode(&mut input) {
                err = Some(e);
                break;
            }
        }
        assert!(
            matches!(err, Some(ChunkError::TooMuchInProgress { .. })),
            "{err:?}"
        );
    }
}
