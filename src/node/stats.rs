//! Per-shard counters. Each is written only by its own shard, with relaxed
//! atomics so that other threads (logs, metrics) can read them; uncontended,
//! they cost what a plain add does.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters a shard shares with the rest of the node.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub connections: AtomicU64,
    pub publishers: AtomicU64,
    pub players: AtomicU64,
    pub dropped_frames_slow: AtomicU64,
    pub dropped_frames_shard: AtomicU64,
    pub disconnected_slow: AtomicU64,
    pub protocol_errors: AtomicU64,
}

impl ShardStats {
    pub fn add_dropped_frames_slow(&self) {
        self.dropped_frames_slow.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_dropped_frames_shard(&self) {
        self.dropped_frames_shard.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_disconnected_slow(&self) {
        self.disconnected_slow.fetch_add(1, Ordering::Relaxed);
    }
}
