//! Chunk decoder: bytes in any fragmentation → whole messages.
//!
//! Each chunk stream reassembles into its own `BytesMut` arena. A message is
//! handed out as `arena.split().freeze()`, which shares the arena's
//! allocation; once every message cut from an arena has been dropped, the
//! arena is reclaimed in place. So a continuation chunk never allocates, and
//! a message's first chunk at most once: only when consumers still hold the
//! arena (a GOP cache does) and it is full. It must never buffer more than the limits allow, and
//! never trust a length before checking it against them.

use bytes::{Bytes, BytesMut};

use crate::protocol::limits::Limits;
use crate::protocol::message::{MessageType, RawMessage};

use super::control::{ControlError, ControlMessage};
use super::{DEFAULT_CHUNK_SIZE, EXTENDED_TIMESTAMP};

/// Basic header (3) + type-0 message header (11) + extended timestamp (4).
const MAX_HEADER_LEN: usize = 18;
/// Messages up to this size get their whole buffer reserved at their first
/// chunk; larger ones grow as their bytes arrive, so memory follows what the
/// peer actually sent rather than what it announced.
const UPFRONT_RESERVE_MAX: u32 = 64 * 1024;
/// Smallest arena: small messages (audio, commands) share one allocation.
const ARENA_MIN: usize = 16 * 1024;

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
    /// Largest message seen on this stream, capped at UPFRONT_RESERVE_MAX:
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
        self.buf.reserve(ARENA_MIN.max(2 * typical));
    }
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
    /// Header bytes of a chunk whose header was split across reads.
    partial: [u8; MAX_HEADER_LEN],
    partial_len: usize,
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
            streams: Vec::with_capacity(8),
            partial: [0; MAX_HEADER_LEN],
            partial_len: 0,
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
            if let Some((slot, remaining)) = self.in_chunk {
                if input.is_empty() {
                    return Ok(None);
                }
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
                continue;
            }

            if self.continuation(input) {
                continue;
            }
            let header = match self.next_header(input)? {
                Some(h) => h,
                None => return Ok(None),
            };
            if let Some(message) = self.start_chunk(header)? {
                return Ok(Some(message));
            }
        }
    }

    /// Fast path for the commonest chunk: a one-byte type-3 header that
    /// continues the message in progress on the last chunk's stream, with
    /// no extended timestamp to look for.
    fn continuation(&mut self, input: &mut &[u8]) -> bool {
        let (Some(&b), 0) = (input.first(), self.partial_len) else {
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

    /// Reads a whole chunk header from the carried-over bytes and `input`,
    /// or keeps what there is for the next call.
    fn next_header(&mut self, input: &mut &[u8]) -> Result<Option<Header>, ChunkError> {
        if self.partial_len == 0 {
            return match self.parse_header(input) {
                Some(h) => {
                    *input = &input[h.len..];
                    self.bytes_received += h.len as u64;
                    Ok(Some(h))
                }
                None => {
                    // An incomplete header is shorter than MAX_HEADER_LEN.
                    self.partial[..input.len()].copy_from_slice(input);
                    self.partial_len = input.len();
                    *input = &[];
                    Ok(None)
                }
            };
        }
        let old = self.partial_len;
        let take = (MAX_HEADER_LEN - old).min(input.len());
        self.partial[old..old + take].copy_from_slice(&input[..take]);
        let buffered = self.partial;
        match self.parse_header(&buffered[..old + take]) {
            Some(h) => {
                let from_input = h.len - old;
                *input = &input[from_input..];
                self.partial_len = 0;
                self.bytes_received += h.len as u64;
                Ok(Some(h))
            }
            None => {
                self.partial_len = old + take;
                *input = &input[take..];
                Ok(None)
            }
        }
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
        st.in_progress = true;
        st.ensure_room(st.length.min(UPFRONT_RESERVE_MAX.max(self.chunk_size)));
        self.in_chunk = Some((slot, st.length.min(self.chunk_size)));
        Ok(None)
    }

    fn complete(&mut self, slot: usize) -> Result<RawMessage, ChunkError> {
        let st = &mut self.streams[slot];
        st.in_progress = false;
        let payload = if st.length == 0 {
            Bytes::new()
        } else {
            st.typical_len = st.typical_len.max(st.length.min(UPFRONT_RESERVE_MAX));
            st.buf.split().freeze()
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
                        }
                    }
                }
            }
            MessageType::WINDOW_ACK_SIZE => {
                if let ControlMessage::WindowAckSize(w) =
                    ControlMessage::parse(m.type_id, &m.payload)?
                {
                    self.ack_window = w;
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
