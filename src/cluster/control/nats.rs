//! The seam between the control thread and NATS: what it asks of a client
//! (publish, request, subscribe, flush) and of a registry bucket (create,
//! update and delete by revision, read, list). [`NatsClient`] is the real
//! one, async-nats over TCP; the unit tests drive the control thread's
//! claim, refresh, fence and relay logic through an in-process bus with
//! the same semantics (`fake.rs`), the way quinn-proto's tests drive a
//! connection without sockets. The end-to-end tests use real nats-server
//! processes.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures_lite::StreamExt;

/// A message as a subscriber sees it (async-nats' own type: its fields are
/// plain data).
pub(super) type Msg = async_nats::Message;

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KvError {
    /// `create` of a key that holds a value.
    Exists,
    /// `update` or `delete` with a revision that is not the key's last.
    WrongRevision,
    Other(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Exists => f.write_str("key exists"),
            KvError::WrongRevision => f.write_str("wrong last revision"),
            KvError::Other(e) => f.write_str(e),
        }
    }
}

/// A key's current value and its revision (a deleted or purged key has
/// none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KvEntry {
    pub value: Bytes,
    pub revision: u64,
}

/// One registry bucket (JetStream key-value).
pub(super) trait Kv: Clone + 'static {
    fn entry(&self, key: &str) -> impl Future<Output = Result<Option<KvEntry>, KvError>>;
    /// Writes `value` only if `key` holds none; its new revision.
    fn create(&self, key: &str, value: Bytes) -> impl Future<Output = Result<u64, KvError>>;
    /// Writes `value` only if `key`'s last revision is `revision`.
    fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> impl Future<Output = Result<u64, KvError>>;
    fn put(&self, key: &str, value: Bytes) -> impl Future<Output = Result<u64, KvError>>;
    /// Deletes `key` only if its last revision is `revision`.
    fn delete_expect_revision(
        &self,
        key: &str,
        revision: u64,
    ) -> impl Future<Output = Result<(), KvError>>;
    /// The keys that hold a value.
    fn keys(&self) -> impl Future<Output = Result<Vec<String>, KvError>>;
}

/// An object store bucket (JetStream): the recordings' copies.
pub(super) trait Objects: Clone + 'static {
    /// Whether object `name` is stored.
    fn has(&self, name: &str) -> impl Future<Output = Result<bool, String>>;
    /// Stores the file at `path` as object `name`; its size.
    fn put_file(&self, name: &str, path: &Path) -> impl Future<Output = Result<u64, String>>;
    /// Writes object `name` into a new file at `dest`; its size. Err (the
    /// file left to the caller to remove) when it is missing, larger than
    /// `max` bytes, or arrives short.
    fn get_file(
        &self,
        name: &str,
        dest: &Path,
        max: u64,
    ) -> impl Future<Output = Result<u64, String>>;
}

/// A NATS connection.
pub(super) trait Nats: Clone + 'static {
    type Kv: Kv;
    type Objects: Objects;
    type Sub: futures_lite::Stream<Item = Msg> + Unpin + 'static;
    fn connected(&self) -> bool;
    /// The largest message the server takes.
    fn max_payload(&self) -> usize;
    fn new_inbox(&self) -> String;
    fn publish(&self, subject: String, payload: Bytes) -> impl Future<Output = Result<(), String>>;
    fn publish_with_reply(
        &self,
        subject: String,
        reply: String,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), String>>;
    fn request(
        &self,
        subject: String,
        payload: Bytes,
    ) -> impl Future<Output = Result<Msg, RequestErrorKind>>;
    fn subscribe(&self, subject: String) -> impl Future<Output = Result<Self::Sub, String>>;
    fn flush(&self) -> impl Future<Output = Result<(), String>>;
    /// Opens registry bucket `bucket`, creating it if missing: entries
    /// expire after `ttl`, kept on `replicas` servers, in memory.
    fn open_bucket(
        &self,
        bucket: &str,
        ttl: Duration,
        replicas: usize,
    ) -> impl Future<Output = Result<Self::Kv, String>>;
    /// Opens object store `bucket`, creating it if missing: objects expire
    /// after `max_age` (zero: never), the bucket holds at most `max_bytes`
    /// (0: the server's limits), on `replicas` servers, on disk.
    fn open_objects(
        &self,
        bucket: &str,
        max_age: Duration,
        max_bytes: u64,
        replicas: usize,
    ) -> impl Future<Output = Result<Self::Objects, String>>;
}

/// The real client: async-nats.
#[derive(Clone)]
pub(super) struct NatsClient {
    client: Client,
    js: jetstream::Context,
}

impl NatsClient {
    pub(super) fn new(client: Client) -> NatsClient {
        NatsClient {
            js: jetstream::new(client.clone()),
            client,
        }
    }
}

fn other(e: impl std::fmt::Display) -> KvError {
    KvError::Other(e.to_string())
}

impl Kv for kv::Store {
    async fn entry(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        let entry = kv::Store::entry(self, key).await.map_err(other)?;
        Ok(entry.and_then(|e| {
            (e.operation == kv::Operation::Put).then_some(KvEntry {
                value: e.value,
                revision: e.revision,
            })
        }))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        kv::Store::create(self, key, value)
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => KvError::Exists,
                _ => other(e),
            })
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        kv::Store::update(self, key, value, revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => KvError::WrongRevision,
                _ => other(e),
            })
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        kv::Store::put(self, key, value).await.map_err(other)
    }

    async fn delete_expect_revision(&self, key: &str, revision: u64) -> Result<(), KvError> {
        kv::Store::delete_expect_revision(self, key, Some(revision))
            .await
            .map_err(other)
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        let mut keys = kv::Store::keys(self).await.map_err(other)?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            out.push(k.map_err(other)?);
        }
        Ok(out)
    }
}

impl Objects for object_store::ObjectStore {
    async fn has(&self, name: &str) -> Result<bool, String> {
        match self.info(name).await {
            Ok(info) => Ok(!info.deleted),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn put_file(&self, name: &str, path: &Path) -> Result<u64, String> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let info = self.put(name, &mut file).await.map_err(|e| e.to_string())?;
        Ok(info.size as u64)
    }

    async fn get_file(&self, name: &str, dest: &Path, max: u64) -> Result<u64, String> {
        use tokio::io::AsyncWriteExt;
        let mut object = self.get(name).await.map_err(|e| e.to_string())?;
        let size = object.info().size as u64;
        if size > max {
            return Err(format!("{name}: {size} bytes, more than {max}"));
        }
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .await
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        // The object's reader checks its digest at the end.
        let mut limited = tokio::io::AsyncReadExt::take(&mut object, max + 1);
        let got = tokio::io::copy(&mut limited, &mut out)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        out.flush().await.map_err(|e| e.to_string())?;
        if got != size {
            return Err(format!("{name}: {got} of {size} bytes"));
        }
        Ok(got)
    }
}

impl Nats for NatsClient {
    type Kv = kv::Store;
    type Objects = object_store::ObjectStore;
    type Sub = async_nats::Subscriber;

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), String> {
        self.client
            .publish(subject, payload)
            .await
            .map_err(|e| e.to_string())
    }

    async fn publish_with_reply(
        &self,
        subject: String,
        reply: String,
        payload: Bytes,
    ) -> Result<(), String> {
        self.client
            .publish_with_reply(subject, reply, payload)
            .await
            .map_err(|e| e.to_string())
    }

    async fn request(&self, subject: String, payload: Bytes) -> Result<Msg, RequestErrorKind> {
        self.client
            .request(subject, payload)
            .await
            .map_err(|e| e.kind())
    }

    async fn subscribe(&self, subject: String) -> Result<Self::Sub, String> {
        self.client
            .subscribe(subject)
            .await
            .map_err(|e| e.to_string())
    }

    async fn flush(&self) -> Result<(), String> {
        self.client.flush().await.map_err(|e| e.to_string())
    }

    /// The KV stream is made directly (not with `create_key_value`), which
    /// works on nats-server 2.9 as well as on newer servers.
    async fn open_bucket(
        &self,
        bucket: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<kv::Store, String> {
        let config = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            duplicate_window: ttl.min(Duration::from_secs(120)),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| format!("creating bucket {bucket}: {e}"))?;
        self.js
            .get_key_value(bucket)
            .await
            .map_err(|e| format!("opening bucket {bucket}: {e}"))
    }

    /// The object store's stream is made directly, as the KV buckets' are
    /// (nats-server 2.9 and newer).
    async fn open_objects(
        &self,
        bucket: &str,
        max_age: Duration,
        max_bytes: u64,
        replicas: usize,
    ) -> Result<object_store::ObjectStore, String> {
        let config = jetstream::stream::Config {
            name: format!("OBJ_{bucket}"),
            subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
            max_age,
            max_bytes: match max_bytes {
                0 => -1,
                n => n.min(i64::MAX as u64) as i64,
            },
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| format!("creating object store {bucket}: {e}"))?;
        self.js
            .get_object_store(bucket)
            .await
            .map_err(|e| format!("opening object store {bucket}: {e}"))
    }
}
