//! The cluster: nodes share stream ownership and media through NATS. One
//! control thread (tokio, current-thread) owns the async-nats client, the
//! JetStream KV registry and the media relay bridge; shards reach it only
//! through bounded channels ([`ClusterHandle`] one way, [`ShardCommand`]
//! receivers the other). Without `cluster.nats` none of this starts and the
//! node is exactly the standalone node.
//!
//! - Registry: bucket `tributary_streams`, key = [`wire::token`] of
//!   `app/name`, value = [`Registration`] JSON. Publish = atomic create; the
//!   owner refreshes by compare-and-set; the bucket's max age expires the
//!   entries of dead nodes. Node heartbeats live in `tributary_nodes`.
//! - Media: the owner publishes a stream on `trib.media.<node>.<token>` only
//!   while some node is attached (`trib.attach.<node>`, renewed); a relaying
//!   node fetches the snapshot (`trib.snap.<node>`) and splices it with the
//!   live subject by sequence number.
//! - Viewers: each node answers `trib.viewers.<node>` with its viewers of
//!   each stream by protocol; `/api/streams?scope=cluster` asks every node
//!   with a live heartbeat and sums.

mod control;
pub mod splice;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::RawMessage;
use crate::stream::{Audience, StreamKey, Viewers};
pub use crate::stream::{ShardCommand, SnapshotReply};

/// Requests from shards to the control thread (claims, lookups,
/// unregisters, ...). Bounded.
pub const REQUEST_QUEUE: usize = 8192;
/// Exported media from shards to the control thread: its own queue, so a
/// publish claim never waits behind media. Offered with `try_send`; a full
/// queue is a counted drop, never a wait.
pub const EXPORT_QUEUE: usize = 8192;

/// How the cluster is reached and tuned (from `[cluster]` and `[node]`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_id: String,
    pub servers: Vec<String>,
    pub user: String,
    pub password: String,
    pub token: String,
    pub creds_file: String,
    pub nkey_seed: String,
    pub tls_ca_file: String,
    pub require_tls: bool,
    /// Registry entries of a node that stopped refreshing expire after this.
    pub registry_ttl: Duration,
    /// API push targets of a stream whose owner was lost are kept this long
    /// (the push-targets bucket's age limit).
    pub push_targets_keep: Duration,
    /// JetStream replicas of the registry buckets (3 in a 3-server cluster).
    pub kv_replicas: usize,
    pub max_message_len: u32,
    /// The most a snapshot from another node may hold (our GOP cache bound
    /// plus headers).
    pub max_snapshot_bytes: usize,
    /// What the heartbeat advertises.
    pub rtmp_addr: String,
    /// This node's viewers of each stream, by protocol: what it answers
    /// when a node sums the cluster's (`trib.viewers.<node>`).
    pub audience: Arc<Audience>,
    /// This node's recordings, listed in the cluster's index
    /// (`tributary_recordings`), when `record.path` is set.
    pub recordings: Option<Arc<dyn RecordingIndex>>,
    /// This node's media listener (loopback when it listens on every
    /// address): where it answers other nodes' asks for its recordings.
    pub media_addr: Option<std::net::SocketAddr>,
    /// `record.store = "nats"`: finished recording files are copied to the
    /// JetStream object store, and fetched from it when their node is gone.
    pub store: Option<StoreSettings>,
}

/// The recordings' object store (`record.store = "nats"`).
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Objects expire after this (zero: kept until deleted).
    pub max_age: Duration,
    /// The bucket's bound, bytes (0: the server's limits).
    pub max_bytes: u64,
    /// Where files fetched from the store are kept while they are played
    /// (`record.path/.store`), by node, app and stream as under
    /// `record.path`.
    pub cache: std::path::PathBuf,
}

/// A node's finished recording files as the cluster's index takes them
/// (`node::Library` is the one).
pub trait RecordingIndex: Send + Sync + std::fmt::Debug {
    /// The streams whose finished files changed since the last call, each
    /// with its finished files now (none: the stream has no file left).
    fn take_changed(&self) -> Vec<(StreamKey, Vec<crate::container::record::SegmentInfo>)>;
    /// Every stream counts as changed (a fresh server lost the index).
    fn mark_all(&self);
    /// `key` counts as changed (its entry could not be written).
    fn mark_changed(&self, key: &StreamKey);
    /// Where `key`'s finished file `file` is, if it is listed (for the
    /// object store's copy).
    fn path_of(&self, key: &StreamKey, file: &str) -> Option<std::path::PathBuf>;
}

/// Each node (by id) with its finished files of a stream.
pub type NodesFiles = Vec<(String, Vec<IndexedFile>)>;

/// One node's finished files of a stream, as the cluster's index lists them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IndexedFile {
    pub file: String,
    pub start_ms: u64,
    pub duration_ms: u64,
    pub bytes: u64,
}

impl ClusterSettings {
    /// Owned entries are refreshed this often: three tries per TTL.
    pub fn refresh_interval(&self) -> Duration {
        self.registry_ttl / 3
    }
}

/// A registry value: who owns a stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    pub node: String,
    pub shard: usize,
    /// Unix time in ms when the publish started.
    pub started_ms: u64,
    /// Codecs of the sequence headers ("h264", "aac", ...), empty until seen.
    #[serde(default)]
    pub video_codec: String,
    #[serde(default)]
    pub audio_codec: String,
    /// Media bitrate over the last report interval.
    #[serde(default)]
    pub bitrate_kbps: u64,
    /// The push targets added over the admin API (URLs): a new owner after
    /// a failover takes them up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pushes: Vec<String>,
}

/// What a publish claim got from the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    /// Ours, with the API push targets of the entry it replaced (a dead
    /// owner's, or one taken over).
    Registered { pushes: Vec<String> },
    /// Live on another node (named), and takeover is off.
    Refused(String),
    /// NATS is unreachable: publish locally, register when it returns.
    Unavailable,
}

/// Where the registry says a stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    Remote(String),
    /// Registered to this node (a shard is about to have it, or just lost it).
    Here,
    Absent,
    Unavailable,
}

/// Shard → control thread.
#[derive(Debug)]
pub enum Request {
    Claim {
        key: StreamKey,
        shard: usize,
        takeover: bool,
        reply: oneshot::Sender<ClaimResult>,
    },
    /// The local publisher of `key` on `shard` left.
    Unregister { key: StreamKey, shard: usize },
    Locate {
        key: StreamKey,
        reply: oneshot::Sender<Located>,
    },
    /// Players on `shard` wait for `key` until `until`: relay it here as soon
    /// as some node publishes it.
    Want {
        key: StreamKey,
        shard: usize,
        until: Instant,
    },
    /// What a local stream carries now (written into its registry entry at
    /// the next refresh).
    StreamInfo {
        key: StreamKey,
        shard: usize,
        video_codec: String,
        audio_codec: String,
        bitrate_kbps: u64,
    },
    /// Nobody on this node watches the relay of `key` any more.
    Release { key: StreamKey },
    /// The push targets added over the API to `key`, published on `shard`,
    /// are now `urls` (written into its registry entry at the next refresh).
    Pushes {
        key: StreamKey,
        shard: usize,
        urls: Vec<String>,
    },
    /// Every stream of the cluster, for `/api/streams?scope=cluster`.
    List {
        reply: oneshot::Sender<Result<Vec<(StreamKey, Registration)>, RegistryError>>,
    },
    /// Every node's heartbeat, for `/api/nodes`.
    Nodes {
        reply: oneshot::Sender<Result<Vec<NodeInfo>, RegistryError>>,
    },
    /// Every node's viewers of each stream, summed, for
    /// `/api/streams?scope=cluster`.
    Viewers {
        reply: oneshot::Sender<Result<ClusterAudience, RegistryError>>,
    },
    /// Answered once everything asked before it is done and sent (shutdown).
    Flush { reply: oneshot::Sender<()> },
    /// Every node's finished files of `key`, from the cluster's index.
    Recordings {
        key: StreamKey,
        reply: oneshot::Sender<Result<NodesFiles, RegistryError>>,
    },
    /// Fetch `path` (under `/recordings/`) from `node`'s media listener:
    /// its HTTP answer, in `chunks` (closed at the end).
    FetchRecording {
        node: String,
        path: String,
        range: Option<String>,
        chunks: mpsc::Sender<Bytes>,
    },
    /// Fetch `node`'s files `files` of `key` from the object store into
    /// the cache; answers the cache directory that stands for `node`'s
    /// `record.path` (its files under `APP/NAME/`).
    FetchStored {
        key: StreamKey,
        node: String,
        files: Vec<String>,
        reply: oneshot::Sender<Result<std::path::PathBuf, String>>,
    },
    /// Kick the publisher of `key` on whatever node has it; answers the node.
    Kick {
        key: StreamKey,
        reply: oneshot::Sender<Result<String, RegistryError>>,
    },
}

/// What the export queue carries, in the order the shard produced it.
#[derive(Debug)]
pub enum Export {
    /// A message of a stream this node exports (owner side).
    Media {
        key: StreamKey,
        seq: u64,
        message: RawMessage,
    },
    /// The exported stream's publisher left (its `Request::Unregister` is
    /// on the request queue, in order with claims): relaying nodes hear the
    /// end after its last message. If this is lost to a full queue, the
    /// control thread sends the end a little later anyway.
    Ended { key: StreamKey },
}

/// A node's heartbeat entry (bucket `tributary_nodes`), refreshed with the
/// registry; it expires with the same TTL when the node is gone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub rtmp: String,
    pub started_ms: u64,
    /// Streams published on it.
    pub streams: usize,
    /// Its process's `output::push::instance` (0 from a node that predates
    /// it): a push that names it comes from this cluster.
    #[serde(default)]
    pub instance: u64,
}

/// The cluster's viewers of each stream (by its key, `app/name`), summed
/// over the nodes that answered in time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterAudience {
    pub streams: HashMap<String, Viewers>,
    /// The nodes whose viewers are in the sums (this one included).
    pub answered: Vec<String>,
    /// Nodes with a live heartbeat that did not answer in time.
    pub missing: Vec<String>,
    /// Why the other nodes were not asked (their heartbeats could not be
    /// read): the sums are this node's alone.
    pub error: Option<String>,
}

impl ClusterAudience {
    /// Adds one node's viewers to the sums.
    pub fn add(&mut self, a: NodeAudience) {
        for (key, v) in a.streams {
            self.streams.entry(key).or_default().add(&v);
        }
        self.answered.push(a.node);
    }
}

/// What a node answers on `trib.viewers.<node>`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeAudience {
    pub node: String,
    pub streams: Vec<(String, Viewers)>,
}

impl NodeAudience {
    /// The viewers of each stream on `node`, from its audience.
    pub fn of(node: &str, audience: &Audience) -> NodeAudience {
        NodeAudience {
            node: node.to_owned(),
            streams: audience
                .snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

/// Cluster counters, written by the control thread (and the drop counter by
/// shards), read at scrape time.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// 1 while connected to a NATS server.
    pub connected: AtomicU64,
    pub reconnects: AtomicU64,
    pub relayed_streams: AtomicU64,
    pub exported_streams: AtomicU64,
    pub nats_bytes_out: AtomicU64,
    pub nats_messages_out: AtomicU64,
    pub nats_bytes_in: AtomicU64,
    pub nats_messages_in: AtomicU64,
    /// Gaps in a relayed stream's sequence (resumed at the next keyframe).
    pub relay_gaps: AtomicU64,
    /// Exported messages dropped because the request queue was full.
    pub export_drops: AtomicU64,
    pub registry_ops: AtomicU64,
    pub registry_errors: AtomicU64,
    /// Publishes refused or fenced because another node owned the key.
    pub registry_conflicts: AtomicU64,
    pub snapshots: AtomicU64,
    /// Sum of snapshot fetch times, in µs (with `snapshots`, the mean).
    pub snapshot_micros: AtomicU64,
    pub snapshot_max_micros: AtomicU64,
    /// Recording files copied to the object store, and their bytes.
    pub store_uploads: AtomicU64,
    pub store_upload_bytes: AtomicU64,
    /// Files fetched from the object store for playback.
    pub store_downloads: AtomicU64,
    /// Object store operations that failed.
    pub store_errors: AtomicU64,
}

impl ClusterStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: {0}")]
    Start(String),
    #[error("cluster.creds_file {file}: {reason}")]
    Creds { file: String, reason: String },
    #[error("NATS: {0}")]
    Connect(String),
}

/// Why the registry, the control thread or another node could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("cluster control thread is gone")]
    Gone,
    #[error("NATS is not configured correctly")]
    NotConfigured,
    #[error("not connected to NATS")]
    NotConnected,
    #[error("registry not open")]
    NotOpen,
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("no such stream")]
    NoSuchStream,
    /// What NATS or JetStream said.
    #[error("{0}")]
    Nats(String),
}

impl RegistryError {
    /// Wraps an async-nats error (their types are many; the message is
    /// what an operator needs).
    pub fn nats(e: impl std::fmt::Display) -> Self {
        RegistryError::Nats(e.to_string())
    }
}

/// The shards' way to the control thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClusterHandle {
    requests: mpsc::Sender<Request>,
    exports: mpsc::Sender<Export>,
    pub stats: Arc<ClusterStats>,
    pub node_id: Arc<str>,
    /// `record.store = "nats"`: recordings are copied to, and played from,
    /// the object store.
    pub store: bool,
}

/// The longest a shard waits on the registry (publish claim, play lookup)
/// before treating NATS as unavailable: the client is not kept waiting.
pub const REGISTRY_WAIT: Duration = Duration::from_secs(5);
/// The longest a player waits for files fetched from the object store.
const STORE_FETCH_WAIT: Duration = Duration::from_secs(120);
/// Files one playback fetches from the object store at most (a range
/// longer than that many files is cut short).
pub const MAX_STORE_FETCH: usize = 64;

/// `f`, or None after `limit` (on a shard's glommio timer).
async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

impl ClusterHandle {
    /// From a shard: sends the request `make` builds around a reply channel
    /// and waits for the answer up to [`REGISTRY_WAIT`] (on the shard's own
    /// timer); None if the control thread did not answer in time.
    async fn ask_within<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        let req = make(reply);
        within(REGISTRY_WAIT, async {
            self.requests.send(req).await.ok()?;
            rx.await.ok()
        })
        .await
        .flatten()
    }

    /// Whether the process `instance` of node `node` is a node of this
    /// cluster (its heartbeat is in the registry), from a shard; false when
    /// the registry does not answer.
    pub async fn is_node(&self, node: &str, instance: u64) -> bool {
        let nodes = self.ask_within(|reply| Request::Nodes { reply }).await;
        matches!(nodes, Some(Ok(list))
            if list.iter().any(|n| n.node == node && n.instance == instance))
    }

    /// Claims `key` cluster-wide for this node (from a shard).
    pub async fn claim(&self, key: &StreamKey, shard: usize, takeover: bool) -> ClaimResult {
        let key = key.clone();
        self.ask_within(|reply| Request::Claim {
            key,
            shard,
            takeover,
            reply,
        })
        .await
        .unwrap_or(ClaimResult::Unavailable)
    }

    /// Where the registry says `key` is (from a shard).
    pub async fn locate(&self, key: &StreamKey) -> Located {
        let key = key.clone();
        self.ask_within(|reply| Request::Locate { key, reply })
            .await
            .unwrap_or(Located::Unavailable)
    }

    /// Sends the request `make` builds around a reply channel and waits for
    /// the answer (admin thread: no deadline of its own, the HTTP request
    /// has one).
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RegistryError>>) -> Request,
    ) -> Result<T, RegistryError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| RegistryError::Gone)?;
        rx.await.map_err(|_| RegistryError::Gone)?
    }

    /// Every registered stream of the cluster.
    pub async fn list(&self) -> Result<Vec<(StreamKey, Registration)>, RegistryError> {
        self.ask(|reply| Request::List { reply }).await
    }

    /// Every node's finished recording files of `key` (the cluster's index).
    pub async fn recordings(&self, key: &StreamKey) -> Result<NodesFiles, RegistryError> {
        let key = key.clone();
        self.ask(|reply| Request::Recordings { key, reply }).await
    }

    /// `node`'s HTTP answer to `path` (a recording it holds), as it comes;
    /// None if the control thread does not take the request.
    pub async fn fetch_recording(
        &self,
        node: &str,
        path: String,
        range: Option<String>,
    ) -> Option<mpsc::Receiver<Bytes>> {
        let (chunks, rx) = mpsc::channel(4);
        let req = Request::FetchRecording {
            node: node.to_owned(),
            path,
            range,
            chunks,
        };
        within(REGISTRY_WAIT, self.requests.send(req))
            .await
            .and_then(Result::ok)?;
        Some(rx)
    }

    /// `node`'s files `files` of `key`, fetched from the object store into
    /// this node's cache: the directory standing for `node`'s
    /// `record.path`. Err when the store is off or does not have them.
    pub async fn fetch_stored(
        &self,
        key: &StreamKey,
        node: &str,
        files: Vec<String>,
    ) -> Result<std::path::PathBuf, String> {
        let (reply, rx) = oneshot::channel();
        let req = Request::FetchStored {
            key: key.clone(),
            node: node.to_owned(),
            files,
            reply,
        };
        within(REGISTRY_WAIT, self.requests.send(req))
            .await
            .and_then(Result::ok)
            .ok_or("the cluster is not answering")?;
        // A download takes as long as the files are big: no short limit.
        within(STORE_FETCH_WAIT, rx)
            .await
            .ok_or("the object store did not answer in time")?
            .map_err(|_| "the cluster is gone".to_owned())?
    }

    /// Every node of the cluster that is alive (its heartbeat not expired).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        self.ask(|reply| Request::Nodes { reply }).await
    }

    /// Every stream's viewers on every node that answers, by protocol.
    pub async fn viewers(&self) -> Result<ClusterAudience, RegistryError> {
        self.ask(|reply| Request::Viewers { reply }).await
    }

    /// Kicks the publisher of `key` wherever it is; answers its node.
    pub async fn kick(&self, key: &StreamKey) -> Result<String, RegistryError> {
        let key = key.clone();
        self.ask(|reply| Request::Kick { key, reply }).await
    }

    /// From a plain thread (shutdown): waits until the control thread has
    /// handled everything queued before (registry entries of stopped
    /// publishers deleted, end-of-stream sent to relaying nodes) and
    /// flushed it to NATS, or `limit` passes. Returns whether it finished.
    pub fn flush_blocking(&self, limit: Duration) -> bool {
        let (reply, mut rx) = oneshot::channel();
        let deadline = Instant::now() + limit;
        let mut req = Request::Flush { reply };
        loop {
            match self.requests.try_send(req) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(r)) if Instant::now() < deadline => {
                    req = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        while Instant::now() < deadline {
            match rx.try_recv() {
                Ok(()) => return true,
                Err(oneshot::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Offers a fire-and-forget request (unregister, want, release, a
    /// stream report) without waiting; a full queue hands
    /// it back. Shards keep such requests in their hub's bounded outbox and
    /// a pump sends them ([`ClusterHandle::request`]).
    pub fn try_request(&self, req: Request) -> Result<(), Request> {
        match self.requests.try_send(req) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(req)) => Err(req),
            // The control thread is gone (shutdown): nothing to deliver to.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }

    /// Sends a request, waiting for room in the queue.
    pub async fn request(&self, req: Request) {
        let _ = self.requests.send(req).await;
    }

    /// Offers an export; one that finds the export queue full is dropped
    /// and counted. Relaying nodes see a gap in media and resume at the
    /// next keyframe; a lost end is sent by the control thread after
    /// `DRAIN_LIMIT`.
    pub fn export(&self, export: Export) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.exports.try_send(export) {
            ClusterStats::add(&self.stats.export_drops, 1);
        }
    }
}

/// Starts the control thread; it connects to NATS in the background (and
/// keeps trying), so a node starts even while NATS is down.
pub fn start(
    settings: ClusterSettings,
    senders: Vec<mpsc::Sender<ShardCommand>>,
) -> Result<ClusterHandle, ClusterError> {
    let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
    let (export_tx, export_rx) = mpsc::channel(EXPORT_QUEUE);
    let stats = Arc::new(ClusterStats::default());
    let handle = ClusterHandle {
        requests: req_tx,
        exports: export_tx,
        stats: stats.clone(),
        node_id: Arc::from(settings.node_id.as_str()),
        store: settings.store.is_some(),
    };
    control::spawn(settings, req_rx, export_rx, senders, stats)
        .map_err(|e| ClusterError::Start(format!("cannot start the control thread: {e}")))?;
    Ok(handle)
}

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
