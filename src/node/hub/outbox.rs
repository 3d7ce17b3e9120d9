//! What the hub asks of the world outside its shard, queued until the
//! shard's pumps (`node::pump`) move it: messages for other shards, requests
//! for the cluster's control thread, and exported media. Every queue is
//! bounded by a constant named here; hitting a bound is counted in
//! `tributary_queue_overflow_total`, and nothing waits or spawns to get
//! around it.

use std::collections::VecDeque;

use crate::cluster::{Export, Request};

use super::super::stats::{Queue, ShardStats};
use super::ShardMsg;

/// Control messages queued for one other shard while its mesh inbox is
/// full. Past this, advisory ones (published, unsubscribe) are dropped,
/// counted and logged: the waits they would end run out at their
/// deadlines. Those that end or move a stream's relay (subscribe, ended,
/// taken over, moved) are always kept; there are at most a few per stream.
pub const MESH_CONTROL_BACKLOG: usize = 1024;

/// Requests queued for the control thread while its queue is full. Past
/// this, advisory ones (want, stream reports) are dropped and counted;
/// unregister and release are always kept (one per stream).
pub const CLUSTER_BACKLOG: usize = 1024;

/// Exported media messages queued within one hub call; the pump offers
/// each to the control thread once and drops it (counted) if its queue is
/// full, so relaying nodes resume at the next keyframe.
pub const EXPORT_BACKLOG: usize = 256;

pub struct Outbox {
    shards: Vec<VecDeque<ShardMsg>>,
    cluster: VecDeque<Request>,
    exports: VecDeque<Export>,
}

impl Outbox {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| VecDeque::new()).collect(),
            cluster: VecDeque::new(),
            exports: VecDeque::new(),
        }
    }

    /// Queues a control message for `shard`.
    pub fn control(&mut self, shard: usize, msg: ShardMsg, stats: &ShardStats) {
        let Some(q) = self.shards.get_mut(shard) else {
            return;
        };
        let advisory = matches!(
            msg,
            ShardMsg::Published { .. } | ShardMsg::Unsubscribe { .. } | ShardMsg::HlsStart { .. }
        );
        if q.len() >= MESH_CONTROL_BACKLOG && advisory {
            stats.add_queue_overflow(Queue::MeshControl);
            tracing::warn!(
                shard,
                "control message to a shard dropped: its inbox stayed full"
            );
            return;
        }
        q.push_back(msg);
    }

    /// Queues a hint (an LL-HLS wake) for `shard` if nothing waits for it
    /// there; otherwise drops it, uncounted: the shard is busy, and its
    /// sweep wakes its waiting requests anyway.
    pub fn hint(&mut self, shard: usize, msg: ShardMsg) {
        if let Some(q) = self.shards.get_mut(shard).filter(|q| q.is_empty()) {
            q.push_back(msg);
        }
    }

    /// Queues media for `shard` if nothing waits for it there (its inbox
    /// took everything so far); false means that shard's inbox is full and
    /// the message is dropped.
    pub fn media(&mut self, shard: usize, msg: ShardMsg) -> bool {
        match self.shards.get_mut(shard) {
            Some(q) if q.is_empty() => {
                q.push_back(msg);
                true
            }
            _ => false,
        }
    }

    pub fn request(&mut self, req: Request, stats: &ShardStats) {
        let advisory = matches!(
            req,
            Request::Want { .. } | Request::StreamInfo { .. } | Request::Pushes { .. }
        );
        if self.cluster.len() >= CLUSTER_BACKLOG && advisory {
            stats.add_queue_overflow(Queue::ClusterRequests);
            tracing::warn!("request to the cluster dropped: its queue stayed full");
            return;
        }
        self.cluster.push_back(req);
    }

    /// Queues an export; past the bound media is dropped (counted), an
    /// end never is.
    pub fn export(&mut self, export: Export, stats: &ShardStats) {
        if self.exports.len() >= EXPORT_BACKLOG && matches!(export, Export::Media { .. }) {
            stats.add_queue_overflow(Queue::Exports);
            return;
        }
        self.exports.push_back(export);
    }

    pub fn pop_shard(&mut self, shard: usize) -> Option<ShardMsg> {
        self.shards.get_mut(shard)?.pop_front()
    }

    /// Puts back a message the shard's inbox refused, first in line.
    pub fn unpop_shard(&mut self, shard: usize, msg: ShardMsg) {
        if let Some(q) = self.shards.get_mut(shard) {
            q.push_front(msg);
        }
    }

    pub fn pop_request(&mut self) -> Option<Request> {
        self.cluster.pop_front()
    }

    pub fn unpop_request(&mut self, req: Request) {
        self.cluster.push_front(req);
    }

    pub fn pop_export(&mut self) -> Option<Export> {
        self.exports.pop_front()
    }

    /// Whether anything waits for `shard`.
    pub fn has_for(&self, shard: usize) -> bool {
        self.shards.get(shard).is_some_and(|q| !q.is_empty())
    }
}
