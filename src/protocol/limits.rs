//! Limits on what a peer may make us hold. Each has a documented default and
//! a typed error where it is enforced; none may be exceeded by any input.

/// Bounds on what one RTMP connection may make the protocol core hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest chunk size a peer may set with Set Chunk Size (bytes).
    /// Default 65,536: OBS uses 4,096, ffmpeg and nginx-rtmp up to 60,000.
    pub max_chunk_size: u32,
    /// Largest message a peer may announce (bytes). Default 8 MiB: a 4K
    /// keyframe at a high bitrate fits; the RTMP ceiling is 16 MiB - 1.
    /// Unfinished messages on all chunk streams together may announce at
    /// most this plus 1 MiB.
    pub max_message_len: u32,
    /// Chunk streams a peer may use on one connection. Default 16: real
    /// clients use 3 to 8. Each keeps a reassembly arena of at most 512 KiB
    /// between messages.
    pub max_chunk_streams: usize,
    /// Deepest nesting of AMF objects and arrays. Default 32.
    pub max_amf_depth: usize,
    /// Most bytes a command or data message may carry (they are parsed into
    /// values, unlike media). Default 64 KiB.
    pub max_command_len: u32,
}

/// The size of C0+C1 and of C2 together: a handshake never needs more.
pub const HANDSHAKE_BYTES: usize = 1 + 1536 + 1536;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_chunk_size: 65_536,
            max_message_len: 8 * 1024 * 1024,
            max_chunk_streams: 16,
            max_amf_depth: 32,
            max_command_len: 64 * 1024,
        }
    }
}
