//! What the data plane and the cluster both speak, so that neither imports
//! the other: a stream's node-wide key, and the commands a shard takes from
//! outside its executor (the cluster's control thread, the admin plane).

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::protocol::RawMessage;

/// A stream's node-wide name: `app/stream` (no query string).
pub type StreamKey = Arc<str>;

/// Commands from the control thread to each shard (relayed media included).
pub const SHARD_QUEUE: usize = 4096;

/// The owner side's answer to a snapshot request: the cache in order and
/// the sequence number of the last message it holds.
pub type SnapshotReply = Option<(Vec<RawMessage>, u64)>;

/// Control thread → one shard.
#[derive(Debug)]
pub enum ShardCommand {
    /// Start relaying `key` on this shard as a local publisher would.
    RelayStart {
        key: StreamKey,
        messages: Vec<RawMessage>,
    },
    RelayMedia {
        key: StreamKey,
        message: RawMessage,
    },
    /// The remote publisher left or its node is gone.
    RelayEnded {
        key: StreamKey,
    },
    /// The remote stream has a new publisher (new epoch): start players over.
    RelayRestart {
        key: StreamKey,
    },
    /// Some node is (or no node is any more) attached to `key`: send its
    /// messages to the control thread.
    Export {
        key: StreamKey,
        on: bool,
    },
    Snapshot {
        key: StreamKey,
        reply: oneshot::Sender<SnapshotReply>,
    },
    /// Another node took `key` over: close the local publisher.
    Fence {
        key: StreamKey,
    },
    /// An operator kicks the local publisher of `key` (HTTP DELETE);
    /// answers whether there was one.
    Kick {
        key: StreamKey,
        reply: oneshot::Sender<bool>,
    },
}

/// The per-shard ends of the command channels, taken once by each shard.
pub type ShardCommands = Arc<Mutex<Vec<Option<mpsc::Receiver<ShardCommand>>>>>;

/// One bounded command queue per shard: the senders (for the control
/// thread and the admin plane) and the receivers each shard takes once.
pub fn command_channels(shards: usize) -> (Vec<mpsc::Sender<ShardCommand>>, ShardCommands) {
    let mut senders = Vec::with_capacity(shards);
    let mut receivers = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel(SHARD_QUEUE);
        senders.push(tx);
        receivers.push(Some(rx));
    }
    (senders, Arc::new(Mutex::new(receivers)))
}

/// How a viewer watches a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// An RTMP or RTMPS play.
    Rtmp,
    /// `GET /APP/KEY.flv`.
    HttpFlv,
    /// An LL-HLS viewer: a session its playlist requests name.
    LlHls,
}

/// A stream's viewers on one node (or summed over the cluster), by protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Viewers {
    #[serde(default)]
    pub rtmp: u32,
    #[serde(default)]
    pub http_flv: u32,
    #[serde(default)]
    pub ll_hls: u32,
}

impl Viewers {
    pub fn total(&self) -> u32 {
        self.rtmp
            .saturating_add(self.http_flv)
            .saturating_add(self.ll_hls)
    }

    pub fn add(&mut self, other: &Viewers) {
        self.rtmp = self.rtmp.saturating_add(other.rtmp);
        self.http_flv = self.http_flv.saturating_add(other.http_flv);
        self.ll_hls = self.ll_hls.saturating_add(other.ll_hls);
    }

    fn of(&mut self, protocol: Protocol) -> &mut u32 {
        match protocol {
            Protocol::Rtmp => &mut self.rtmp,
            Protocol::HttpFlv => &mut self.http_flv,
            Protocol::LlHls => &mut self.ll_hls,
        }
    }
}

/// The node's viewers of each stream, by protocol: what the player limit
/// counts, what `/api/streams` shows, and what this node answers when
/// another node sums the cluster's audience. Changed on play and leave
/// (rare: a mutex is fine), never per message.
#[derive(Debug, Default)]
pub struct Audience {
    per_stream: Mutex<std::collections::HashMap<StreamKey, Viewers>>,
}

impl Audience {
    /// Adds a viewer of `key` unless the stream already has `limit`
    /// viewers of any protocol (0 = no limit); false when refused.
    pub fn join(&self, key: &StreamKey, protocol: Protocol, limit: u32) -> bool {
        let mut per_stream = self.per_stream.lock().unwrap_or_else(|e| e.into_inner());
        let total = per_stream.get(key).map_or(0, Viewers::total);
        if limit > 0 && total >= limit {
            return false;
        }
        let n = per_stream.entry(key.clone()).or_default().of(protocol);
        *n = n.saturating_add(1);
        true
    }

    /// Takes back a viewer that [`Audience::join`] added.
    pub fn leave(&self, key: &StreamKey, protocol: Protocol) {
        let mut per_stream = self.per_stream.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = per_stream.get_mut(key) {
            let n = v.of(protocol);
            *n = n.saturating_sub(1);
            if v.total() == 0 {
                per_stream.remove(key);
            }
        }
    }

    /// The viewers of `key` on this node.
    pub fn of(&self, key: &str) -> Viewers {
        self.per_stream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    /// Every stream that has viewers here, sorted by key.
    pub fn snapshot(&self) -> Vec<(StreamKey, Viewers)> {
        let per_stream = self.per_stream.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = per_stream.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_counts_by_protocol_under_one_limit() {
        let audience = Audience::default();
        let key = StreamKey::from("live/a");
        assert!(audience.join(&key, Protocol::Rtmp, 3));
        assert!(audience.join(&key, Protocol::HttpFlv, 3));
        assert!(audience.join(&key, Protocol::LlHls, 3));
        // The limit is over every protocol together.
        assert!(!audience.join(&key, Protocol::Rtmp, 3));
        assert!(audience.join(&StreamKey::from("live/b"), Protocol::LlHls, 3));
        assert_eq!(
            audience.of("live/a"),
            Viewers {
                rtmp: 1,
                http_flv: 1,
                ll_hls: 1
            }
        );
        audience.leave(&key, Protocol::HttpFlv);
        assert!(audience.join(&key, Protocol::Rtmp, 3));
        assert_eq!(audience.of("live/a").rtmp, 2);
        assert_eq!(audience.of("live/a").http_flv, 0);
        for p in [Protocol::Rtmp, Protocol::Rtmp, Protocol::LlHls] {
            audience.leave(&key, p);
        }
        // A stream nobody watches is gone from the table.
        let keys: Vec<_> = audience.snapshot().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![StreamKey::from("live/b")]);
        // A leave with nothing to take back changes nothing.
        audience.leave(&key, Protocol::Rtmp);
        assert_eq!(audience.of("live/a"), Viewers::default());
    }

    #[test]
    fn viewers_sum_and_read_partial_json() {
        let mut sum = Viewers::default();
        sum.add(&Viewers {
            rtmp: 2,
            http_flv: 0,
            ll_hls: 1,
        });
        let other: Viewers = serde_json::from_str(r#"{"http_flv":4}"#).unwrap();
        sum.add(&other);
        assert_eq!(sum.total(), 7);
        assert_eq!(sum.http_flv, 4);
    }
}
