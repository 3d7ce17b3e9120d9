//! The RTMP chunk stream: splitting messages into chunks and joining them
//! back, plus the protocol control messages that steer it (chunk size, abort,
//! acknowledgement window). Knows nothing of commands or media.

pub mod control;
pub mod decoder;
pub mod encoder;

pub use control::{ControlError, ControlMessage, UserControlEvent};
pub use decoder::{ChunkDecoder, ChunkError};
pub use encoder::{encode_message, ChunkEncoder};

/// RTMP's initial chunk size in both directions.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest timestamp that fits the 24-bit header field; `0xFFFFFF` itself
/// means "see the extended timestamp".
pub const EXTENDED_TIMESTAMP: u32 = 0x00FF_FFFF;
/// Largest message length the 24-bit length field can carry.
pub const MAX_MESSAGE_LEN: u32 = 0x00FF_FFFF;
/// Chunk stream ids fit in a 3-byte basic header up to this value.
pub const MAX_CSID: u32 = 65_599;
/// Chunk stream that carries protocol control messages.
pub const CONTROL_CSID: u32 = 2;
