//! The control thread: the only place async-nats runs (a tokio
//! current-thread runtime with a `LocalSet`, so its state is plain
//! `Rc`/`RefCell`). It owns the registry entries of this node's streams,
//! answers other nodes' attach and snapshot requests, exports attached
//! streams, and relays remote streams to the shard that asked. It never
//! blocks a shard: shards hear from it through bounded queues.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures_lite::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::wire::{self, Frame, Joiner};
use super::{
    unix_ms, ClaimResult, ClusterAudience, ClusterError, ClusterSettings, ClusterStats, Export,
    IndexedFile, Located, NodeAudience, NodeInfo, NodesFiles, Registration, RegistryError, Request,
    ShardCommand,
};
use crate::protocol::RawMessage;
use crate::stream::StreamKey;

mod export;
#[cfg(test)]
mod fake;
mod nats;
mod recording;
mod registry;
mod relay;
mod store;
#[cfg(test)]
mod tests;

use nats::{Kv, KvError, Nats, NatsClient, Objects};

const STREAMS_BUCKET: &str = "tributary_streams";
const NODES_BUCKET: &str = "tributary_nodes";
/// Each node's finished recording files of each stream
/// (`NODE.STREAM`, both as `wire::token`s); kept until deleted.
const RECORDINGS_BUCKET: &str = "tributary_recordings";
/// Each stream's push targets added over the API (a JSON list of URLs),
/// written by its owner at every change and refresh: they outlive the
/// stream's entry by `[cluster] push_targets_keep_ms`, so an owner lost
/// without a goodbye hands them to the next one.
const PUSHES_BUCKET: &str = "tributary_push_targets";
/// How long a publish waits to read the push targets an earlier owner kept.
const PUSHES_READ_TIMEOUT: Duration = Duration::from_millis(500);
/// The most one index entry holds; past it, the oldest files are left out.
const MAX_INDEX_ENTRY: usize = 256 * 1024;
/// An attachment not renewed for this long ends the export to that node.
const ATTACH_TTL: Duration = Duration::from_secs(3);
/// A relaying node renews its attachment this often.
const ATTACH_RENEW: Duration = Duration::from_millis(750);
/// A relay ends after this many renewals in a row go unanswered; a node
/// that moves to another NATS server is back well within it.
const MAX_MISSED_RENEWALS: u32 = 3;
/// The longest the control thread waits to hand one media frame to the
/// NATS client.
const PUBLISH_WAIT: Duration = Duration::from_millis(50);
/// One registry or request round trip.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node summing the cluster's viewers waits for each answer.
const VIEWERS_WAIT: Duration = Duration::from_millis(800);
/// How long a relaying node waits for a whole snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon an entry the registry did not take (NATS away, or JetStream
/// electing a leader) is tried again, rather than at the next refresh.
const UNREGISTERED_RETRY: Duration = Duration::from_secs(1);
/// Housekeeping tick: attachments, wants, refresh and heartbeats.
const TICK: Duration = Duration::from_millis(250);

pub(super) fn spawn(
    settings: ClusterSettings,
    requests: mpsc::Receiver<Request>,
    exports: mpsc::Receiver<Export>,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    stats: Arc<ClusterStats>,
) -> std::io::Result<()> {
    crate::control_thread::spawn("tributary-nats", move || {
        run(settings, requests, exports, shards, stats)
    })
}

/// A stream this node publishes.
struct Owned {
    shard: usize,
    registration: Registration,
    /// Our entry's revision; None until registered (NATS was down).
    revision: Option<u64>,
    /// Nodes attached to its media, and when each last renewed.
    attached: HashMap<String, Instant>,
    exporting: bool,
    subject: String,
    /// Which claim made this entry (see `claim`).
    claim: u64,
    /// The API push targets went to their bucket since the last refresh
    /// that found none: the next such refresh writes the empty list again,
    /// in case two writes of a quick change landed out of order.
    pushes_kept: bool,
    /// Its claim is still asking the registry: a refresh leaves it alone
    /// (two writes of our own entry at once would fail one of them, and a
    /// refresh that lost would close our own publisher).
    claiming: bool,
}

/// A remote stream relayed to a shard here (starting or running).
struct Relay {
    generation: u64,
    stop: Option<oneshot::Sender<()>>,
}

struct Wanted {
    shard: usize,
    until: Instant,
}

/// An exported stream whose publisher left: its registry entry is gone
/// (the request queue, in order with claims), its last messages may still
/// be on the export queue. Its End frame goes out when the export queue
/// reaches its `Export::Ended`, or after [`DRAIN_LIMIT`].
struct Draining {
    subject: String,
    since: Instant,
}

/// The longest an ended export waits for its `Export::Ended` (a full export
/// queue can drop it) before its End frame is sent anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

struct Control<N: Nats> {
    s: ClusterSettings,
    me: String,
    client: N,
    streams_kv: RefCell<Option<N::Kv>>,
    nodes_kv: RefCell<Option<N::Kv>>,
    recordings_kv: RefCell<Option<N::Kv>>,
    pushes_kv: RefCell<Option<N::Kv>>,
    /// The recordings' object store (`record.store = "nats"`), once open.
    objects: RefCell<Option<N::Objects>>,
    /// Copies to the object store: what is queued and done.
    store: store::StoreState,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    stats: Arc<ClusterStats>,
    owned: RefCell<HashMap<StreamKey, Owned>>,
    /// Ended exports waiting for their `Export::Ended` (see [`Draining`]).
    draining: RefCell<HashMap<StreamKey, Draining>>,
    /// `Export::Ended` seen before the stream's Unregister, and when.
    ended_early: RefCell<HashMap<StreamKey, Instant>>,
    relays: RefCell<HashMap<StreamKey, Relay>>,
    wanted: RefCell<HashMap<StreamKey, Wanted>>,
    next_generation: Cell<u64>,
    /// Unregister tasks still running (Flush waits for them).
    pending: Cell<usize>,
    /// A NATS client error was logged since the last connect.
    warned: Cell<bool>,
    /// Set on (re)connect: refresh and re-register at the next tick.
    refresh_now: Cell<bool>,
    started_ms: u64,
}

/// Tries of each server (by URL) since the client last connected.
type Tries = HashMap<String, usize>;

/// The server a (re)connect tries next: of those tried the fewest times,
/// a named one (the config's list) before one a server advertised, at
/// random among equals. A try counts as the client's own failure count or
/// ours, whichever is more: a name that no longer resolves fails without
/// the client counting it. Advertised servers are addresses: a lost
/// server's address (a container's or a pod's, gone with it) costs a whole
/// connection timeout per try, where its name fails at once. They are
/// still tried once the names have been, so a node that names one server
/// of a cluster moves to the others when it is lost.
fn next_server(
    pool: &[async_nats::Server],
    tries: &mut Tries,
) -> Option<async_nats::ReconnectToServer> {
    let rank = |s: &async_nats::Server, tries: &Tries| {
        let ours = tries.get(s.addr.as_url_str()).copied().unwrap_or(0);
        (s.failed_attempts.max(ours), s.is_discovered)
    };
    let best = pool.iter().map(|s| rank(s, tries)).min()?;
    let equals: Vec<_> = pool.iter().filter(|s| rank(s, tries) == best).collect();
    let pick = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as usize
    };
    let chosen = equals[pick % equals.len()];
    *tries
        .entry(chosen.addr.as_url_str().to_owned())
        .or_insert(0) += 1;
    Some(async_nats::ReconnectToServer {
        addr: chosen.addr.clone(),
        // The reconnect delay callback's.
        delay: None,
    })
}

async fn connect(s: &ClusterSettings, events: mpsc::Sender<Event>) -> Result<Client, ClusterError> {
    let picked = Arc::new(std::sync::Mutex::new(Tries::new()));
    let connected = picked.clone();
    let mut opts = ConnectOptions::new()
        .name(format!("tributary {}", s.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(OP_TIMEOUT)
        // Which server next: see `next_server`.
        .reconnect_to_server_callback(move |pool, _| {
            let mut tries = picked.lock().unwrap_or_else(|e| e.into_inner());
            std::future::ready(next_server(&pool, &mut tries))
        })
        .request_timeout(Some(OP_TIMEOUT))
        // The first try at once (the next server of the list), then 100 ms
        // more per try, at most 2 s.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts.saturating_sub(1) as u64).min(2000))
        })
        .event_callback(move |event| {
            if matches!(event, Event::Connected) {
                connected.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            let events = events.clone();
            async move {
                let _ = events.try_send(event);
            }
        });
    if !s.creds_file.is_empty() {
        opts = opts
            .credentials_file(&s.creds_file)
            .await
            .map_err(|e| ClusterError::Creds {
                file: s.creds_file.clone(),
                reason: e.to_string(),
            })?;
    }
    if !s.nkey_seed.is_empty() {
        opts = opts.nkey(s.nkey_seed.clone());
    }
    if !s.token.is_empty() {
        opts = opts.token(s.token.clone());
    }
    if !s.user.is_empty() {
        opts = opts.user_and_password(s.user.clone(), s.password.clone());
    }
    if !s.tls_ca_file.is_empty() {
        opts = opts.add_root_certificates(s.tls_ca_file.clone().into());
    }
    if s.require_tls {
        opts = opts.require_tls(true);
    }
    opts.connect(s.servers.clone())
        .await
        .map_err(|e| ClusterError::Connect(e.to_string()))
}

async fn run(
    settings: ClusterSettings,
    mut requests: mpsc::Receiver<Request>,
    mut exports: mpsc::Receiver<Export>,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    stats: Arc<ClusterStats>,
) {
    let (events_tx, mut events) = mpsc::channel(64);
    let client = match connect(&settings, events_tx).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}; this node runs standalone");
            // Nothing is exported; the queue closes.
            exports.close();
            // Keep answering shards so that nothing waits on us.
            while let Some(req) = requests.recv().await {
                refuse(req);
            }
            return;
        }
    };
    let control = Control::new(settings, NatsClient::new(client), shards, stats);
    {
        let c = control.clone();
        tokio::task::spawn_local(async move {
            while let Some(event) = events.recv().await {
                c.on_event(event);
            }
        });
    }
    serve(control, requests, exports).await;
}

impl<N: Nats> Control<N> {
    fn new(
        settings: ClusterSettings,
        client: N,
        shards: Vec<mpsc::Sender<ShardCommand>>,
        stats: Arc<ClusterStats>,
    ) -> Rc<Control<N>> {
        Rc::new(Control {
            me: wire::token(&settings.node_id),
            client,
            s: settings,
            streams_kv: RefCell::new(None),
            nodes_kv: RefCell::new(None),
            recordings_kv: RefCell::new(None),
            pushes_kv: RefCell::new(None),
            objects: RefCell::new(None),
            store: store::StoreState::default(),
            shards,
            stats,
            owned: RefCell::new(HashMap::new()),
            draining: RefCell::new(HashMap::new()),
            ended_early: RefCell::new(HashMap::new()),
            relays: RefCell::new(HashMap::new()),
            wanted: RefCell::new(HashMap::new()),
            next_generation: Cell::new(0),
            pending: Cell::new(0),
            warned: Cell::new(false),
            refresh_now: Cell::new(true),
            started_ms: unix_ms(),
        })
    }
}

/// The control thread's tasks on the current `LocalSet`: other nodes'
/// requests, the export queue, housekeeping, and the shards' requests
/// until their queue closes.
async fn serve<N: Nats>(
    control: Rc<Control<N>>,
    mut requests: mpsc::Receiver<Request>,
    mut exports: mpsc::Receiver<Export>,
) {
    tokio::task::spawn_local(control.clone().serve_requests());
    {
        // Exported media has its own queue and task: a claim never waits
        // behind media.
        let c = control.clone();
        tokio::task::spawn_local(async move {
            while let Some(e) = exports.recv().await {
                match e {
                    Export::Media { key, seq, message } => c.export(&key, seq, &message).await,
                    Export::Ended { key } => c.export_ended(key).await,
                }
            }
        });
    }
    tokio::task::spawn_local(control.clone().housekeeping());
    while let Some(req) = requests.recv().await {
        control.handle(req).await;
    }
}

/// Answers for a control thread that could not start.
fn refuse(req: Request) {
    match req {
        Request::Claim { reply, .. } => {
            let _ = reply.send(ClaimResult::Unavailable);
        }
        Request::Locate { reply, .. } => {
            let _ = reply.send(Located::Unavailable);
        }
        Request::List { reply } => {
            let _ = reply.send(Err(RegistryError::NotConfigured));
        }
        Request::Nodes { reply } => {
            let _ = reply.send(Err(RegistryError::NotConfigured));
        }
        Request::Viewers { reply } => {
            let _ = reply.send(Err(RegistryError::NotConfigured));
        }
        Request::Flush { reply } => {
            let _ = reply.send(());
        }
        Request::Kick { reply, .. } => {
            let _ = reply.send(Err(RegistryError::NotConfigured));
        }
        Request::Recordings { reply, .. } => {
            let _ = reply.send(Err(RegistryError::NotConfigured));
        }
        Request::FetchStored { reply, .. } => {
            let _ = reply.send(Err("no cluster".into()));
        }
        _ => {}
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AttachRequest {
    key: String,
    node: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AttachReply {
    ok: bool,
}

fn count(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl<N: Nats> Control<N> {
    fn connected(&self) -> bool {
        self.client.connected()
    }

    fn max_frame(&self) -> usize {
        match self.client.max_payload() {
            0 => 1 << 20,
            n => n,
        }
    }

    fn streams_kv(&self) -> Option<N::Kv> {
        self.streams_kv.borrow().clone()
    }

    fn on_event(&self, event: Event) {
        match event {
            Event::Connected => {
                if self.stats.connected.swap(1, Ordering::Relaxed) == 0 {
                    count(&self.stats.reconnects);
                }
                tracing::info!("NATS connected");
                self.warned.set(false);
                // The server may be a fresh one (the registry lost with it):
                // reopen the buckets, creating them if missing, and
                // re-register what this node owns at once.
                *self.streams_kv.borrow_mut() = None;
                *self.nodes_kv.borrow_mut() = None;
                *self.recordings_kv.borrow_mut() = None;
                *self.pushes_kv.borrow_mut() = None;
                *self.objects.borrow_mut() = None;
                if let Some(r) = &self.s.recordings {
                    r.mark_all();
                }
                self.refresh_now.set(true);
            }
            Event::Disconnected => {
                self.stats.connected.store(0, Ordering::Relaxed);
                tracing::warn!("NATS disconnected; reconnecting");
            }
            Event::SlowConsumer(_) => count(&self.stats.relay_gaps),
            Event::ClientError(e) => {
                // Once per outage, not once per reconnect attempt.
                if self.stats.connected.load(Ordering::Relaxed) == 1 || !self.warned.replace(true) {
                    tracing::warn!("NATS client error: {e}");
                }
            }
            Event::ServerError(e) => tracing::warn!("NATS server error: {e}"),
            other => tracing::info!("NATS: {other}"),
        }
    }

    /// Opens the registry buckets, creating them if missing.
    async fn ensure_buckets(&self) -> Result<(), RegistryError> {
        for (bucket, slot, max_age) in [
            (STREAMS_BUCKET, &self.streams_kv, self.s.registry_ttl),
            (NODES_BUCKET, &self.nodes_kv, self.s.registry_ttl),
        ] {
            if slot.borrow().is_some() {
                continue;
            }
            let open = self.client.open_bucket(bucket, max_age, self.s.kv_replicas);
            let store = tokio::time::timeout(OP_TIMEOUT, open)
                .await
                .map_err(|_| RegistryError::Timeout("opening a registry bucket"))?
                .map_err(RegistryError::nats)?;
            *slot.borrow_mut() = Some(store);
        }
        if self.recordings_kv.borrow().is_none() {
            // The index outlives a node's heartbeat: no expiry.
            let open =
                self.client
                    .open_bucket(RECORDINGS_BUCKET, Duration::ZERO, self.s.kv_replicas);
            let store = tokio::time::timeout(OP_TIMEOUT, open)
                .await
                .map_err(|_| RegistryError::Timeout("opening the recordings index"))?
                .map_err(RegistryError::nats)?;
            *self.recordings_kv.borrow_mut() = Some(store);
        }
        if self.pushes_kv.borrow().is_none() {
            // Not needed to publish or play: a failure here is tried again
            // at the next tick and holds nothing else up.
            let open = self.client.open_bucket(
                PUSHES_BUCKET,
                self.s.push_targets_keep,
                self.s.kv_replicas,
            );
            match tokio::time::timeout(OP_TIMEOUT, open).await {
                Ok(Ok(store)) => *self.pushes_kv.borrow_mut() = Some(store),
                Ok(Err(e)) => tracing::debug!("push targets bucket: {e}"),
                Err(_) => tracing::debug!("push targets bucket: opening it timed out"),
            }
        }
        Ok(())
    }

    async fn handle(self: &Rc<Self>, req: Request) {
        match req {
            Request::Claim {
                key,
                shard,
                takeover,
                reply,
            } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    c.claim(&key, shard, takeover, reply).await;
                });
            }
            Request::Unregister { key, shard } => self.unregister(key, shard),
            Request::Locate { key, reply } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    let _ = reply.send(c.locate(&key).await.0);
                });
            }
            Request::Want { key, shard, until } => {
                {
                    let mut wanted = self.wanted.borrow_mut();
                    let w = wanted.entry(key.clone()).or_insert(Wanted { shard, until });
                    w.shard = shard;
                    w.until = w.until.max(until);
                }
                self.try_pull(key);
            }
            Request::StreamInfo {
                key,
                shard,
                video_codec,
                audio_codec,
                bitrate_kbps,
            } => {
                if let Some(o) = self.owned.borrow_mut().get_mut(&key) {
                    if o.shard == shard {
                        o.registration.video_codec = video_codec;
                        o.registration.audio_codec = audio_codec;
                        o.registration.bitrate_kbps = bitrate_kbps;
                    }
                }
            }
            Request::Pushes { key, shard, urls } => {
                let ours = match self.owned.borrow_mut().get_mut(&key) {
                    Some(o) if o.shard == shard => {
                        o.registration.pushes = urls.clone();
                        o.pushes_kept = true;
                        true
                    }
                    _ => false,
                };
                if ours {
                    self.spawn_keep_pushes(&key, &urls);
                }
            }
            Request::Release { key } => {
                // Nobody here watches it: stop wanting it too.
                self.wanted.borrow_mut().remove(&key);
                if let Some(mut relay) = self.relays.borrow_mut().remove(&key) {
                    if let Some(stop) = relay.stop.take() {
                        let _ = stop.send(());
                    }
                }
            }
            Request::List { reply } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    let _ = reply.send(c.list().await);
                });
            }
            Request::Nodes { reply } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    let _ = reply.send(c.nodes().await);
                });
            }
            Request::Viewers { reply } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    let _ = reply.send(c.viewers().await);
                });
            }
            Request::FetchRecording {
                node,
                path,
                range,
                chunks,
            } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    c.fetch_recording(node, path, range, chunks).await;
                });
            }
            Request::FetchStored {
                key,
                node,
                files,
                reply,
            } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    let _ = reply.send(c.fetch_stored(&key, &node, &files).await);
                });
            }
            Request::Recordings { key, reply } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    let _ = reply.send(c.indexed(&key).await);
                });
            }
            Request::Kick { key, reply } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    let _ = reply.send(c.kick(&key).await);
                });
            }
            Request::Flush { reply } => {
                let c = self.clone();
                tokio::task::spawn_local(async move {
                    let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
                    while c.pending.get() > 0 && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if c.connected() {
                        let _ = tokio::time::timeout(OP_TIMEOUT, c.client.flush()).await;
                    }
                    let _ = reply.send(());
                });
            }
        }
    }

    // ----- owner side

    async fn housekeeping(self: Rc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        let mut last_refresh = Instant::now();
        let mut last_retry = Instant::now();
        loop {
            tick.tick().await;
            let now = Instant::now();
            if self.connected() {
                if let Err(e) = self.ensure_buckets().await {
                    tracing::warn!("{e}");
                }
            }
            if self.connected() {
                self.open_objects().await;
                self.publish_index().await;
                self.store_next();
            }
            self.expire_attachments(now).await;
            self.expire_draining(now).await;
            self.wanted.borrow_mut().retain(|_, w| w.until > now);
            let wanted: Vec<StreamKey> = self.wanted.borrow().keys().cloned().collect();
            for key in wanted {
                self.try_pull(key);
            }
            let due = self.refresh_now.get()
                || now.duration_since(last_refresh) >= self.s.refresh_interval();
            let unregistered = || {
                self.owned
                    .borrow()
                    .values()
                    .any(|o| o.revision.is_none() && !o.claiming)
            };
            let retry = now.duration_since(last_retry) >= UNREGISTERED_RETRY && unregistered();
            if self.connected() && self.streams_kv().is_some() {
                if due {
                    self.refresh_now.set(false);
                    last_refresh = now;
                    last_retry = now;
                    self.refresh().await;
                } else if retry {
                    last_retry = now;
                    self.register_unregistered().await;
                }
            }
        }
    }
}
