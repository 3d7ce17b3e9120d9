//! What shards tell each other about streams, over the bounded channel
//! mesh between them: subscriptions, the snapshot and live media a
//! subscriber's hub relays, and the LL-HLS requests a shard hands to the
//! one that has the stream.

use crate::protocol::RawMessage;
use crate::stream::StreamKey;

use super::StreamId;

/// What shards tell each other about streams. Cloning shares payloads.
/// Per-message traffic (snapshot, media, end) names the subscriber's own
/// `StreamId` for the stream, so the receiver hashes no key.
#[derive(Debug, Clone)]
pub enum ShardMsg {
    /// `shard` has players for `key` (its relay `id`): send it the
    /// snapshot, then live media.
    Subscribe {
        key: StreamKey,
        shard: usize,
        id: StreamId,
    },
    Unsubscribe {
        key: StreamKey,
        shard: usize,
    },
    /// Metadata, sequence headers and the last GOP, in order.
    Snapshot {
        id: StreamId,
        messages: Vec<RawMessage>,
    },
    Media {
        id: StreamId,
        message: RawMessage,
    },
    /// The publisher left (or the stream was never here).
    Ended {
        id: StreamId,
    },
    /// `key` was just published (on the sending shard): attach waiting players.
    Published {
        key: StreamKey,
    },
    /// A new publisher on the sending shard took `key` over from this one.
    TakenOver {
        key: StreamKey,
    },
    /// The stream this shard relays moved to another owner: re-subscribe.
    Moved {
        key: StreamKey,
    },
    /// A viewer asked for `key` over LL-HLS on the sending shard: package
    /// it here, where the stream is (the shard takes it, not the hub).
    HlsStart {
        key: StreamKey,
    },
    /// An LL-HLS window changed: wake the requests waiting on one (the
    /// shard takes it, not the hub).
    HlsChanged,
}
