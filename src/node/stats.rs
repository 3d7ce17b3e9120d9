//! Per-shard counters. Each is written only by its own shard and read by
//! the control plane at scrape time. The counters are added to with a plain
//! relaxed load and store ([`add`]), not `fetch_add`: on x86 that is a
//! `lock xadd`, a full barrier that waits for every store before it, and
//! some of these are counted per player per message. Updated per read,
//! write or message, never per byte.

use std::sync::atomic::{AtomicU64, Ordering};

/// Kinds of protocol error, as counted and exported.
pub const ERROR_KINDS: [&str; 5] = ["handshake", "chunk", "command", "sequence", "timeout"];

/// Why an HTTP media request was refused, as counted and exported
/// (`tributary_http_refused_total{reason}`).
pub const HTTP_REFUSALS: [&str; 9] = [
    "bad_request",
    "header_too_large",
    "pipeline_overflow",
    "method",
    "not_found",
    "forbidden",
    "limit",
    "body_too_large",
    "rtmpt_session",
];

/// Bounded queues whose overflow is counted, as exported
/// (`tributary_queue_overflow_total{queue}`).
pub const QUEUE_KINDS: [&str; 4] = ["mesh_control", "cluster_requests", "exports", "notices"];

/// A bounded queue, indexed like [`QUEUE_KINDS`].
#[derive(Debug, Clone, Copy)]
pub enum Queue {
    /// Control messages for another shard (`hub::MESH_CONTROL_BACKLOG`).
    MeshControl = 0,
    /// Requests for the cluster's control thread (`hub::CLUSTER_BACKLOG`).
    ClusterRequests = 1,
    /// Exported media within one hub call (`hub::EXPORT_BACKLOG`).
    Exports = 2,
    /// Notices for one connection (`conn::MAX_NOTICES`).
    Notices = 3,
}

#[derive(Debug, Default)]
pub struct ShardStats {
    pub connections: AtomicU64,
    /// Connections accepted, publishes and plays started, since start.
    pub connections_total: AtomicU64,
    pub publishes_total: AtomicU64,
    pub plays_total: AtomicU64,
    pub publishers: AtomicU64,
    pub players: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub dropped_frames_slow: AtomicU64,
    pub dropped_frames_shard: AtomicU64,
    pub disconnected_slow: AtomicU64,
    /// Receives that ended on an empty buffer ring (ENOBUFS) and re-armed.
    pub recv_no_buffers: AtomicU64,
    /// RTMPE (and RTMPTE) handshakes completed.
    pub rtmpe_sessions: AtomicU64,
    /// Indexed like [`ERROR_KINDS`].
    pub protocol_errors: [AtomicU64; 5],
    /// Publishes and plays refused by auth, indexed like
    /// [`crate::auth::REFUSAL_KINDS`].
    pub auth_refused: [AtomicU64; 6],
    /// Indexed like [`QUEUE_KINDS`].
    pub queue_overflow: [AtomicU64; 4],
    /// HTTP-FLV viewers now (they are among `players` too).
    pub flv_viewers: AtomicU64,
    /// LL-HLS viewers (sessions) this shard admitted and still counted.
    pub hls_viewers: AtomicU64,
    /// HTTP media requests answered, and bytes written to HTTP peers.
    pub http_requests: AtomicU64,
    pub http_bytes_out: AtomicU64,
    /// LL-HLS: streams packaged on this shard now; parts and segments
    /// built since the start.
    pub hls_windows: AtomicU64,
    pub hls_parts: AtomicU64,
    pub hls_segments: AtomicU64,
    /// Indexed like [`HTTP_REFUSALS`].
    pub http_refused: [AtomicU64; 9],
    /// Push targets publishing now (they are among `players` too).
    pub push_live: AtomicU64,
    /// Connections opened to push targets, tries that failed, and bytes
    /// written to targets (counted when each connection ends).
    pub push_connects: AtomicU64,
    pub push_failures: AtomicU64,
    pub push_bytes: AtomicU64,
    /// SRT connections on this shard now (publishers and players), and
    /// the players among them (they are among `players` too).
    pub srt_sessions: AtomicU64,
    pub srt_viewers: AtomicU64,
    /// SRT packets libsrt counted on this shard's connections: lost on the
    /// way in, retransmitted to us, and dropped as too late to play.
    pub srt_lost: AtomicU64,
    pub srt_retransmitted: AtomicU64,
    pub srt_dropped: AtomicU64,
    /// SRT TS bytes dropped because a session's task took none for a
    /// while (it held `node::srt`'s bound).
    pub srt_dropped_bytes: AtomicU64,
}

/// Adds `n` to a counter that only this shard's thread writes: a relaxed
/// load and store, which compile to plain moves. A reader on another thread
/// sees a whole value, at worst one add late.
fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl ShardStats {
    /// Adds `n` to one of this shard's counters (see [`add`]).
    pub fn bump(c: &AtomicU64, n: u64) {
        add(c, n);
    }
    pub fn add_dropped_frames_slow(&self) {
        add(&self.dropped_frames_slow, 1);
    }
    pub fn add_dropped_frames_shard(&self) {
        add(&self.dropped_frames_shard, 1);
    }
    pub fn add_recv_no_buffers(&self) {
        add(&self.recv_no_buffers, 1);
    }
    pub fn add_disconnected_slow(&self) {
        add(&self.disconnected_slow, 1);
    }
    pub fn add_protocol_error(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            add(&self.protocol_errors[i], 1);
        }
    }
    pub fn add_auth_refused(&self, kind: &str) {
        if let Some(i) = crate::auth::REFUSAL_KINDS.iter().position(|k| *k == kind) {
            add(&self.auth_refused[i], 1);
        }
    }
    pub fn add_queue_overflow(&self, queue: Queue) {
        add(&self.queue_overflow[queue as usize], 1);
    }
    pub fn add_http_out(&self, bytes: u64) {
        add(&self.http_bytes_out, bytes);
    }
    pub fn add_http_refused(&self, reason: &str) {
        if let Some(i) = HTTP_REFUSALS.iter().position(|k| *k == reason) {
            add(&self.http_refused[i], 1);
        }
    }
    pub fn add_srt_dropped(&self, bytes: u64) {
        add(&self.srt_dropped_bytes, bytes);
    }
    pub fn add_in(&self, bytes: u64) {
        add(&self.bytes_in, bytes);
    }
    pub fn add_out(&self, bytes: u64) {
        add(&self.bytes_out, bytes);
    }
    pub fn add_message_in(&self) {
        add(&self.messages_in, 1);
    }
    pub fn add_messages_out(&self, n: u64) {
        add(&self.messages_out, n);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
