//! RTMP messages as the chunk layer delivers them: a header and one shared
//! payload. Owns the message type numbers; parsing of payloads lives with the
//! kind of payload (`command`, `media`, control in `chunk::control`).

use bytes::Bytes;

/// An RTMP message type id (the byte in a type-0/1 chunk header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType(pub u8);

impl MessageType {
    pub const SET_CHUNK_SIZE: Self = Self(1);
    pub const ABORT: Self = Self(2);
    pub const ACKNOWLEDGEMENT: Self = Self(3);
    pub const USER_CONTROL: Self = Self(4);
    pub const WINDOW_ACK_SIZE: Self = Self(5);
    pub const SET_PEER_BANDWIDTH: Self = Self(6);
    pub const AUDIO: Self = Self(8);
    pub const VIDEO: Self = Self(9);
    pub const DATA_AMF3: Self = Self(15);
    pub const SHARED_OBJECT_AMF3: Self = Self(16);
    pub const COMMAND_AMF3: Self = Self(17);
    pub const DATA_AMF0: Self = Self(18);
    pub const SHARED_OBJECT_AMF0: Self = Self(19);
    pub const COMMAND_AMF0: Self = Self(20);
    pub const AGGREGATE: Self = Self(22);

    /// Protocol control messages (1-6) travel on chunk stream 2, stream 0.
    pub fn is_protocol_control(self) -> bool {
        (1..=6).contains(&self.0)
    }

    pub fn is_media(self) -> bool {
        self == Self::AUDIO || self == Self::VIDEO
    }
}

/// One reassembled message. The payload is shared: cloning a `RawMessage`
/// never copies media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Chunk stream it arrived on (or will leave on).
    pub csid: u32,
    /// Absolute timestamp in milliseconds (wraps at 2^32).
    pub timestamp: u32,
    pub type_id: MessageType,
    /// Message stream id (0 for control and connection-level commands).
    pub stream_id: u32,
    pub payload: Bytes,
}
