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
