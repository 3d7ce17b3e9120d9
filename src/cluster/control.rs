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

use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures_lite::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::wire::{self, Frame, Joiner};
use super::{
    unix_ms, ClaimResult, ClusterSettings, ClusterStats, Located, NodeInfo, Registration, Request,
    ShardCommand,
};
use crate::protocol::media::{classify_audio, classify_video, PacketKind};
use crate::protocol::{MessageType, RawMessage};
use crate::stream::StreamKey;

const STREAMS_BUCKET: &str = "tributary_streams";
const NODES_BUCKET: &str = "tributary_nodes";
/// An attachment not renewed for this long ends the export to that node.
const ATTACH_TTL: Duration = Duration::from_secs(3);
/// A relaying node renews its attachment this often.
const ATTACH_RENEW: Duration = Duration::from_millis(750);
/// A relay ends after this many renewals in a row go unanswered; a node
/// that moves to another NATS server is back well within it.
const MAX_MISSED_RENEWALS: u32 = 3;
/// A relayed stream's sequence may skip this many messages at most (NATS
/// dropping for a slow consumer); a larger jump is not believed.
const MAX_SEQ_JUMP: u64 = 1 << 20;
/// The longest the control thread waits to hand one media frame to the
/// NATS client.
const PUBLISH_WAIT: Duration = Duration::from_millis(50);
/// One registry or request round trip.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a relaying node waits for a whole snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// Housekeeping tick: attachments, wants, refresh and heartbeats.
const TICK: Duration = Duration::from_millis(250);

pub(super) fn spawn(
    settings: ClusterSettings,
    requests: mpsc::Receiver<Request>,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    stats: Arc<ClusterStats>,
) -> std::io::Result<()> {
    crate::control_thread::spawn("tributary-nats", move || {
        run(settings, requests, shards, stats)
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

struct Control {
    s: ClusterSettings,
    me: String,
    client: Client,
    js: jetstream::Context,
    streams_kv: RefCell<Option<kv::Store>>,
    nodes_kv: RefCell<Option<kv::Store>>,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    stats: Arc<ClusterStats>,
    owned: RefCell<HashMap<StreamKey, Owned>>,
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

async fn connect(s: &ClusterSettings, events: mpsc::Sender<Event>) -> Result<Client, String> {
    let mut opts = ConnectOptions::new()
        .name(format!("tributary {}", s.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(OP_TIMEOUT)
        .request_timeout(Some(OP_TIMEOUT))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(2000))
        })
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.try_send(event);
            }
        });
    if !s.creds_file.is_empty() {
        opts = opts
            .credentials_file(&s.creds_file)
            .await
            .map_err(|e| format!("cluster.creds_file {}: {e}", s.creds_file))?;
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
        .map_err(|e| format!("NATS: {e}"))
}

async fn run(
    settings: ClusterSettings,
    mut requests: mpsc::Receiver<Request>,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    stats: Arc<ClusterStats>,
) {
    let (events_tx, mut events) = mpsc::channel(64);
    let client = match connect(&settings, events_tx).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}; this node runs standalone");
            // Keep answering shards so that nothing waits on us.
            while let Some(req) = requests.recv().await {
                refuse(req);
            }
            return;
        }
    };
    let me = wire::token(&settings.node_id);
    let control = Rc::new(Control {
        js: jetstream::new(client.clone()),
        me,
        client,
        s: settings,
        streams_kv: RefCell::new(None),
        nodes_kv: RefCell::new(None),
        shards,
        stats,
        owned: RefCell::new(HashMap::new()),
        relays: RefCell::new(HashMap::new()),
        wanted: RefCell::new(HashMap::new()),
        next_generation: Cell::new(0),
        pending: Cell::new(0),
        warned: Cell::new(false),
        refresh_now: Cell::new(true),
        started_ms: unix_ms(),
    });
    {
        let c = control.clone();
        tokio::task::spawn_local(async move {
            while let Some(event) = events.recv().await {
                c.on_event(event);
            }
        });
    }
    tokio::task::spawn_local(control.clone().serve_requests());
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
            let _ = reply.send(Err("NATS is not configured correctly".into()));
        }
        Request::Nodes { reply } => {
            let _ = reply.send(Err("NATS is not configured correctly".into()));
        }
        Request::Flush { reply } => {
            let _ = reply.send(());
        }
        Request::Kick { reply, .. } => {
            let _ = reply.send(Err("NATS is not configured correctly".into()));
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

/// A relayed stream may resume after a gap here: a keyframe, a sequence
/// header or metadata.
fn resumes(m: &RawMessage) -> bool {
    match m.type_id {
        MessageType::VIDEO => classify_video(&m.payload)
            .map(|i| i.keyframe || i.kind == PacketKind::SequenceHeader)
            .unwrap_or(false),
        MessageType::AUDIO => classify_audio(&m.payload)
            .map(|i| i.kind == PacketKind::SequenceHeader)
            .unwrap_or(false),
        _ => true,
    }
}

fn count(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Control {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn max_frame(&self) -> usize {
        match self.client.server_info().max_payload {
            0 => 1 << 20,
            n => n,
        }
    }

    fn streams_kv(&self) -> Option<kv::Store> {
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

    /// Creates the registry buckets if missing. The KV stream is made
    /// directly (not with `create_key_value`), which works on nats-server
    /// 2.9 as well as on newer servers.
    async fn ensure_buckets(&self) -> Result<(), String> {
        for (bucket, slot) in [
            (STREAMS_BUCKET, &self.streams_kv),
            (NODES_BUCKET, &self.nodes_kv),
        ] {
            if slot.borrow().is_some() {
                continue;
            }
            let ttl = self.s.registry_ttl;
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
                num_replicas: self.s.kv_replicas,
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            };
            tokio::time::timeout(OP_TIMEOUT, self.js.get_or_create_stream(config))
                .await
                .map_err(|_| format!("creating bucket {bucket}: timed out"))?
                .map_err(|e| format!("creating bucket {bucket}: {e}"))?;
            let store = tokio::time::timeout(OP_TIMEOUT, self.js.get_key_value(bucket))
                .await
                .map_err(|_| format!("opening bucket {bucket}: timed out"))?
                .map_err(|e| format!("opening bucket {bucket}: {e}"))?;
            *slot.borrow_mut() = Some(store);
        }
        Ok(())
    }

    async fn handle(self: &Rc<Self>, req: Request) {
        match req {
            Request::Media { key, seq, message } => self.export(&key, seq, &message).await,
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

    fn registration_value(reg: &Registration) -> Bytes {
        Bytes::from(serde_json::to_vec(reg).unwrap_or_default())
    }

    async fn entry(&self, key: &str) -> Result<Option<(Registration, u64)>, String> {
        let kv = self.streams_kv().ok_or("registry not open")?;
        count(&self.stats.registry_ops);
        let entry = tokio::time::timeout(OP_TIMEOUT, kv.entry(wire::token(key)))
            .await
            .map_err(|_| "registry read timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(entry.and_then(|e| {
            if e.operation != kv::Operation::Put {
                return None;
            }
            let reg: Registration = serde_json::from_slice(&e.value).ok()?;
            Some((reg, e.revision))
        }))
    }

    /// Whether the node named in a registry entry still answers.
    async fn alive(&self, node: &str) -> bool {
        let subject = format!("trib.ping.{}", wire::token(node));
        matches!(
            tokio::time::timeout(
                Duration::from_millis(800),
                self.client.request(subject, Bytes::new())
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// The registry step of a publish. Rule for a key found registered:
    /// a live owner keeps it (unless takeover); a dead owner's entry is
    /// replaced by compare-and-set.
    async fn claim(
        &self,
        key: &StreamKey,
        shard: usize,
        takeover: bool,
        reply: oneshot::Sender<ClaimResult>,
    ) {
        let local_owner = self.owned.borrow().get(key).map(|o| o.shard);
        if local_owner.is_some() && !takeover {
            let _ = reply.send(ClaimResult::Refused(self.s.node_id.clone()));
            return;
        }
        let registration = Registration {
            node: self.s.node_id.clone(),
            shard,
            started_ms: unix_ms(),
            video_codec: String::new(),
            audio_codec: String::new(),
            bitrate_kbps: 0,
        };
        // The entry goes into `owned` before the registry answers, so that
        // an Unregister arriving meanwhile (the publisher left, or the
        // shard stopped waiting) finds it; the claim id tells whether it is
        // still ours afterwards.
        let claim = self.next_generation.get() + 1;
        self.next_generation.set(claim);
        let subject = format!("trib.media.{}.{}", self.me, wire::token(key));
        {
            let mut owned = self.owned.borrow_mut();
            let previous = owned.insert(
                key.clone(),
                Owned {
                    shard,
                    registration: registration.clone(),
                    revision: None,
                    attached: HashMap::new(),
                    exporting: false,
                    subject,
                    claim,
                },
            );
            // A local takeover keeps the attachments: the new shard exports.
            if let (Some(prev), Some(o)) = (previous, owned.get_mut(key)) {
                o.attached = prev.attached;
                o.exporting = !o.attached.is_empty();
            }
        }
        let result = self.register(key, &registration, takeover).await;
        let still = self
            .owned
            .borrow()
            .get(key)
            .is_some_and(|o| o.claim == claim);
        let answer = match result {
            Ok(Some(rev)) if still => {
                if let Some(o) = self.owned.borrow_mut().get_mut(key) {
                    o.revision = Some(rev);
                }
                ClaimResult::Registered
            }
            Ok(Some(rev)) => {
                // The publisher left while the registry answered: take the
                // entry back out (compare-and-set). If a newer local claim
                // replaced ours (a takeover), the entry is that one's.
                let replaced = self.owned.borrow().contains_key(key);
                if let (false, Some(kv)) = (replaced, self.streams_kv()) {
                    count(&self.stats.registry_ops);
                    let _ = tokio::time::timeout(
                        OP_TIMEOUT,
                        kv.delete_expect_revision(wire::token(key), Some(rev)),
                    )
                    .await;
                }
                ClaimResult::Registered
            }
            Ok(None) => {
                count(&self.stats.registry_conflicts);
                // A shard that stopped waiting publishes anyway, as when
                // NATS is away: keep the entry unregistered so the refresh
                // applies the conflict rule (the registered owner wins).
                if still && !reply.is_closed() {
                    self.owned.borrow_mut().remove(key);
                }
                match self.entry(key).await {
                    Ok(Some((other, _))) => ClaimResult::Refused(other.node),
                    _ => ClaimResult::Refused(String::new()),
                }
            }
            Err(e) => {
                count(&self.stats.registry_errors);
                tracing::warn!(stream = %crate::protocol::server::redact(key), "registry unavailable ({e}); publishing locally, will register when NATS returns");
                ClaimResult::Unavailable
            }
        };
        let _ = reply.send(answer);
    }

    /// Writes our entry for `key`: Ok(Some(revision)) when it is ours,
    /// Ok(None) when a live node owns it, Err when the registry is
    /// unreachable.
    async fn register(
        &self,
        key: &StreamKey,
        registration: &Registration,
        takeover: bool,
    ) -> Result<Option<u64>, String> {
        if !self.connected() {
            return Err("not connected".into());
        }
        let kv = self.streams_kv().ok_or("registry not open")?;
        let value = Self::registration_value(registration);
        let token = wire::token(key);
        count(&self.stats.registry_ops);
        match tokio::time::timeout(OP_TIMEOUT, kv.create(&token, value.clone())).await {
            Err(_) => return Err("registry create timed out".into()),
            Ok(Ok(rev)) => return Ok(Some(rev)),
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Ok(Err(e)) => return Err(e.to_string()),
        }
        let Some((current, revision)) = self.entry(key).await? else {
            // Deleted or expired between the two calls: try once more.
            count(&self.stats.registry_ops);
            return match tokio::time::timeout(OP_TIMEOUT, kv.create(&token, value)).await {
                Ok(Ok(rev)) => Ok(Some(rev)),
                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("registry create timed out".into()),
            };
        };
        let ours = current.node == self.s.node_id;
        let stale = !ours && !takeover && !self.alive(&current.node).await;
        if !(ours || takeover || stale) {
            return Ok(None);
        }
        if stale {
            tracing::info!(
                stream = %crate::protocol::server::redact(key),
                "node {} no longer answers; taking its registry entry",
                current.node
            );
        } else if takeover && !ours {
            count(&self.stats.registry_conflicts);
            tracing::info!(
                stream = %crate::protocol::server::redact(key),
                "taking the stream over from node {}",
                current.node
            );
        }
        count(&self.stats.registry_ops);
        match tokio::time::timeout(OP_TIMEOUT, kv.update(&token, value, revision)).await {
            Ok(Ok(rev)) => Ok(Some(rev)),
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("registry update timed out".into()),
        }
    }

    /// The local publisher left: end the export and delete our entry. The
    /// entry leaves `owned` at once; the NATS side runs in a task that a
    /// later Flush waits for.
    fn unregister(self: &Rc<Self>, key: StreamKey, shard: usize) {
        let removed = {
            let mut owned = self.owned.borrow_mut();
            match owned.get(&key) {
                Some(o) if o.shard == shard => owned.remove(&key),
                _ => None,
            }
        };
        let Some(o) = removed else {
            return;
        };
        if o.exporting {
            self.stats.exported_streams.fetch_sub(1, Ordering::Relaxed);
        }
        self.pending.set(self.pending.get() + 1);
        let c = self.clone();
        tokio::task::spawn_local(async move {
            if o.exporting {
                let end = c.client.publish(o.subject.clone(), wire::encode_end());
                let _ = tokio::time::timeout(PUBLISH_WAIT, end).await;
            }
            if let (Some(rev), Some(kv), true) = (o.revision, c.streams_kv(), c.connected()) {
                count(&c.stats.registry_ops);
                let _ = tokio::time::timeout(
                    OP_TIMEOUT,
                    kv.delete_expect_revision(wire::token(&key), Some(rev)),
                )
                .await;
            }
            c.pending.set(c.pending.get() - 1);
        });
    }

    /// Publishes one message of an exported stream. Never waits long: while
    /// NATS is away (the client's queue full) messages are dropped and
    /// counted, and the relaying nodes resume at a keyframe.
    async fn export(&self, key: &StreamKey, seq: u64, message: &RawMessage) {
        let subject = match self.owned.borrow().get(key) {
            Some(o) if o.exporting => o.subject.clone(),
            _ => return,
        };
        if !self.connected() {
            count(&self.stats.export_drops);
            return;
        }
        let mut frames = Vec::with_capacity(1);
        wire::encode_media(seq, message, self.max_frame(), |f| frames.push(f));
        for f in frames {
            self.stats
                .nats_bytes_out
                .fetch_add(f.len() as u64, Ordering::Relaxed);
            count(&self.stats.nats_messages_out);
            let sent = tokio::time::timeout(PUBLISH_WAIT, self.client.publish(subject.clone(), f));
            if !matches!(sent.await, Ok(Ok(()))) {
                count(&self.stats.export_drops);
                return;
            }
        }
    }

    /// Attach, snapshot, ping and detach requests from other nodes.
    async fn serve_requests(self: Rc<Self>) {
        let subject = format!("trib.*.{}", self.me);
        let mut sub = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!("NATS subscribe {subject}: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let verb = msg.subject.split('.').nth(1).unwrap_or("").to_owned();
            let c = self.clone();
            tokio::task::spawn_local(async move {
                match verb.as_str() {
                    "ping" => {
                        let _ = c.client.publish(reply, Bytes::from_static(b"pong")).await;
                    }
                    "attach" => {
                        let ok = c.on_attach(&msg.payload).await;
                        let body = serde_json::to_vec(&AttachReply { ok }).unwrap_or_default();
                        let _ = c.client.publish(reply, body.into()).await;
                    }
                    "detach" => {
                        if let Ok(r) = serde_json::from_slice::<AttachRequest>(&msg.payload) {
                            if let Some(o) = c.owned.borrow_mut().get_mut(r.key.as_str()) {
                                o.attached.remove(&r.node);
                            }
                        }
                        let _ = c.client.publish(reply, Bytes::new()).await;
                    }
                    "snap" => c.on_snapshot(&msg.payload, reply).await,
                    "kick" => {
                        let key = String::from_utf8_lossy(&msg.payload);
                        let done = c.kick_local(&StreamKey::from(key.as_ref())).await;
                        let body: &'static [u8] = if done { b"ok" } else { b"no" };
                        let _ = c.client.publish(reply, Bytes::from_static(body)).await;
                    }
                    _ => {}
                }
            });
        }
    }

    async fn on_attach(&self, payload: &[u8]) -> bool {
        let Ok(r) = serde_json::from_slice::<AttachRequest>(payload) else {
            return false;
        };
        let start = {
            let mut owned = self.owned.borrow_mut();
            let Some(o) = owned.get_mut(r.key.as_str()) else {
                return false;
            };
            o.attached.insert(r.node, Instant::now());
            let start = !o.exporting;
            o.exporting = true;
            start.then_some(o.shard)
        };
        if let Some(shard) = start {
            self.stats.exported_streams.fetch_add(1, Ordering::Relaxed);
            // Awaited before the reply, so the shard exports before it
            // takes the snapshot the attached node asks for next.
            let _ = self.shards[shard]
                .send(ShardCommand::Export {
                    key: StreamKey::from(r.key.as_str()),
                    on: true,
                })
                .await;
        }
        true
    }

    async fn on_snapshot(&self, payload: &[u8], reply: async_nats::Subject) {
        let key = std::str::from_utf8(payload).unwrap_or("");
        let shard = self.owned.borrow().get(key).map(|o| o.shard);
        let snapshot = match shard {
            Some(shard) => {
                let (tx, rx) = oneshot::channel();
                let cmd = ShardCommand::Snapshot {
                    key: StreamKey::from(key),
                    reply: tx,
                };
                if self.shards[shard].send(cmd).await.is_ok() {
                    rx.await.ok().flatten()
                } else {
                    None
                }
            }
            None => None,
        };
        let Some((messages, last)) = snapshot else {
            let _ = self.client.publish(reply, wire::encode_end()).await;
            return;
        };
        let max = self.max_frame();
        for (i, m) in messages.iter().enumerate() {
            let mut frames = Vec::with_capacity(1);
            wire::encode_media(i as u64, m, max, |f| frames.push(f));
            for f in frames {
                self.stats
                    .nats_bytes_out
                    .fetch_add(f.len() as u64, Ordering::Relaxed);
                count(&self.stats.nats_messages_out);
                let _ = self.client.publish(reply.clone(), f).await;
            }
        }
        let _ = self
            .client
            .publish(reply, wire::encode_snapshot_end(last))
            .await;
    }

    /// Kicks the local publisher of `key`, if this node has it.
    async fn kick_local(&self, key: &StreamKey) -> bool {
        let Some(shard) = self.owned.borrow().get(key).map(|o| o.shard) else {
            return false;
        };
        let (reply, rx) = oneshot::channel();
        let cmd = ShardCommand::Kick {
            key: key.clone(),
            reply,
        };
        self.shards[shard].send(cmd).await.is_ok() && rx.await.unwrap_or(false)
    }

    /// Kicks the publisher of `key` here or on the node that owns it.
    async fn kick(&self, key: &StreamKey) -> Result<String, String> {
        if self.kick_local(key).await {
            return Ok(self.s.node_id.clone());
        }
        let (reg, _) = self.entry(key).await?.ok_or("no such stream")?;
        if reg.node == self.s.node_id {
            return Err("no such stream".into());
        }
        let subject = format!("trib.kick.{}", wire::token(&reg.node));
        let answer = self
            .client
            .request(subject, Bytes::copy_from_slice(key.as_bytes()))
            .await
            .map_err(|e| format!("node {}: {e}", reg.node))?;
        if answer.payload.as_ref() == b"ok" {
            Ok(reg.node)
        } else {
            Err("no such stream".into())
        }
    }

    // ----- relaying side

    async fn locate(&self, key: &str) -> (Located, Option<Registration>) {
        if !self.connected() || self.streams_kv().is_none() {
            return (Located::Unavailable, None);
        }
        match self.entry(key).await {
            Ok(Some((reg, _))) if reg.node == self.s.node_id => (Located::Here, Some(reg)),
            Ok(Some((reg, _))) => (Located::Remote(reg.node.clone()), Some(reg)),
            Ok(None) => (Located::Absent, None),
            Err(_) => (Located::Unavailable, None),
        }
    }

    /// Starts relaying `key` if it is wanted, published on another node and
    /// not relayed yet. (An entry whose node is gone is left to expire: a
    /// re-publish anywhere replaces it at once, see `register`.)
    fn try_pull(self: &Rc<Self>, key: StreamKey) {
        if self.relays.borrow().contains_key(&key) || !self.connected() {
            return;
        }
        let Some(shard) = self.wanted.borrow().get(&key).map(|w| w.shard) else {
            return;
        };
        let generation = self.next_generation.get() + 1;
        self.next_generation.set(generation);
        let (stop_tx, stop_rx) = oneshot::channel();
        self.relays.borrow_mut().insert(
            key.clone(),
            Relay {
                generation,
                stop: Some(stop_tx),
            },
        );
        let c = self.clone();
        tokio::task::spawn_local(async move {
            if let Ok(Some((reg, _))) = c.entry(&key).await {
                if reg.node != c.s.node_id {
                    c.relay(&key, &reg.node, shard, stop_rx).await;
                }
            }
            let mut relays = c.relays.borrow_mut();
            if relays.get(&key).is_some_and(|r| r.generation == generation) {
                relays.remove(&key);
            }
        });
    }

    async fn attach(&self, owner: &str, key: &str) -> Result<bool, async_nats::RequestErrorKind> {
        let body = serde_json::to_vec(&AttachRequest {
            key: key.to_owned(),
            node: self.s.node_id.clone(),
        })
        .unwrap_or_default();
        let subject = format!("trib.attach.{}", wire::token(owner));
        match self.client.request(subject, body.into()).await {
            Ok(msg) => Ok(serde_json::from_slice::<AttachReply>(&msg.payload)
                .map(|r| r.ok)
                .unwrap_or(false)),
            Err(e) => Err(e.kind()),
        }
    }

    /// Relays `key` from `owner` to `shard` until the stream ends, the
    /// owner stops answering, or the shard releases it.
    async fn relay(
        &self,
        key: &StreamKey,
        owner: &str,
        shard: usize,
        mut stop: oneshot::Receiver<()>,
    ) {
        let subject = format!("trib.media.{}.{}", wire::token(owner), wire::token(key));
        let Ok(mut live) = self.client.subscribe(subject).await else {
            return;
        };
        if self.client.flush().await.is_err() {
            return;
        }
        if !matches!(self.attach(owner, key).await, Ok(true)) {
            return;
        }
        let t0 = Instant::now();
        let Some((messages, last)) = self.fetch_snapshot(owner, key).await else {
            return;
        };
        let micros = t0.elapsed().as_micros() as u64;
        count(&self.stats.snapshots);
        self.stats
            .snapshot_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.stats
            .snapshot_max_micros
            .fetch_max(micros, Ordering::Relaxed);
        // Released while attaching or fetching: do not start it.
        if !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            return;
        }
        let start = ShardCommand::RelayStart {
            key: key.clone(),
            messages,
        };
        if self.shards[shard].send(start).await.is_err() {
            return;
        }
        self.stats.relayed_streams.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream = %crate::protocol::server::redact(key), "relaying from node {owner}");
        let mut current_epoch = wire::epoch(last);
        let mut expected = last.saturating_add(1);
        let mut resync = false;
        let mut joiner = Joiner::new(self.s.max_message_len);
        let mut renew = tokio::time::interval(ATTACH_RENEW);
        renew.tick().await;
        let mut missed_renewals = 0;
        let ended = loop {
            tokio::select! {
                _ = &mut stop => break false,
                msg = live.next() => {
                    let Some(msg) = msg else { break true };
                    count(&self.stats.nats_messages_in);
                    self.stats.nats_bytes_in.fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
                    match joiner.push(msg.payload) {
                        Ok(Some(Frame::Media { seq, message })) => {
                            if wire::epoch(seq) != current_epoch {
                                // A new publisher on the owner node.
                                current_epoch = wire::epoch(seq);
                                expected = seq;
                                resync = true;
                                let cmd = ShardCommand::RelayRestart { key: key.clone() };
                                if self.shards[shard].send(cmd).await.is_err() {
                                    break false;
                                }
                            }
                            if seq < expected {
                                continue;
                            }
                            if seq - expected > MAX_SEQ_JUMP {
                                // Not a gap NATS could make: ignore it.
                                count(&self.stats.relay_gaps);
                                continue;
                            }
                            if seq > expected {
                                count(&self.stats.relay_gaps);
                                resync = true;
                            }
                            expected = seq.saturating_add(1);
                            if resync {
                                if !resumes(&message) {
                                    continue;
                                }
                                resync = false;
                            }
                            let cmd = ShardCommand::RelayMedia { key: key.clone(), message };
                            if self.shards[shard].try_send(cmd).is_err() {
                                count(&self.stats.relay_gaps);
                                resync = true;
                            }
                        }
                        Ok(Some(Frame::End)) => break true,
                        Ok(_) => {}
                        Err(_) => {
                            count(&self.stats.relay_gaps);
                            resync = true;
                        }
                    }
                }
                _ = renew.tick() => {
                    match self.attach(owner, key).await {
                        Ok(true) => missed_renewals = 0,
                        // The owner answers that the stream is gone.
                        Ok(false) => break true,
                        // Nobody listens on its subject (the node is gone,
                        // or it is reconnecting to another NATS server), or
                        // no answer in time: gone after a few in a row.
                        Err(_) => {
                            missed_renewals += 1;
                            if missed_renewals >= MAX_MISSED_RENEWALS {
                                break true;
                            }
                        }
                    }
                }
            }
        };
        self.stats.relayed_streams.fetch_sub(1, Ordering::Relaxed);
        if ended {
            tracing::info!(stream = %crate::protocol::server::redact(key), "relay from node {owner} ended");
            let _ = self.shards[shard]
                .send(ShardCommand::RelayEnded { key: key.clone() })
                .await;
        } else {
            let body = serde_json::to_vec(&AttachRequest {
                key: key.to_string(),
                node: self.s.node_id.clone(),
            })
            .unwrap_or_default();
            let _ = self
                .client
                .publish(format!("trib.detach.{}", wire::token(owner)), body.into())
                .await;
        }
    }

    /// Asks the owner for its cache; frames arrive on an inbox until the
    /// snapshot-end frame, which names the last sequence number it holds.
    async fn fetch_snapshot(&self, owner: &str, key: &str) -> Option<(Vec<RawMessage>, u64)> {
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.ok()?;
        self.client.flush().await.ok()?;
        self.client
            .publish_with_reply(
                format!("trib.snap.{}", wire::token(owner)),
                inbox,
                Bytes::copy_from_slice(key.as_bytes()),
            )
            .await
            .ok()?;
        let mut joiner = Joiner::new(self.s.max_message_len);
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let deadline = tokio::time::Instant::now() + SNAPSHOT_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, sub.next()).await.ok()??;
            count(&self.stats.nats_messages_in);
            self.stats
                .nats_bytes_in
                .fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
            match joiner.push(msg.payload).ok()? {
                Some(Frame::Media { message, .. }) => {
                    // Another node's cache, bounded like ours.
                    bytes += message.payload.len();
                    if bytes > self.s.max_snapshot_bytes {
                        tracing::warn!(
                            "snapshot from node {owner} over {} bytes; not relayed",
                            self.s.max_snapshot_bytes
                        );
                        return None;
                    }
                    messages.push(message);
                }
                Some(Frame::SnapshotEnd { seq }) => return Some((messages, seq)),
                Some(Frame::End) => return None,
                None => {}
            }
        }
    }

    async fn list(&self) -> Result<Vec<(String, Registration)>, String> {
        let kv = self.streams_kv().ok_or("registry not open")?;
        let keys = tokio::time::timeout(OP_TIMEOUT, async {
            let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while let Some(k) = keys.next().await {
                out.push(k.map_err(|e| e.to_string())?);
            }
            Ok::<_, String>(out)
        })
        .await
        .map_err(|_| "registry listing timed out".to_string())??;
        let mut out = Vec::new();
        for token in keys {
            let Some(key) = wire::untoken(&token) else {
                continue;
            };
            if let Ok(Some((reg, _))) = self.entry(&key).await {
                out.push((key, reg));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, String> {
        let kv = self.nodes_kv.borrow().clone().ok_or("registry not open")?;
        tokio::time::timeout(OP_TIMEOUT, async {
            let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
            let mut names = Vec::new();
            while let Some(k) = keys.next().await {
                names.push(k.map_err(|e| e.to_string())?);
            }
            let mut out = Vec::new();
            for name in names {
                if let Ok(Some(v)) = kv.get(name).await {
                    if let Ok(info) = serde_json::from_slice::<NodeInfo>(&v) {
                        out.push(info);
                    }
                }
            }
            out.sort_by(|a, b| a.node.cmp(&b.node));
            Ok(out)
        })
        .await
        .map_err(|_| "node listing timed out".to_string())?
    }

    // ----- housekeeping

    async fn housekeeping(self: Rc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        let mut last_refresh = Instant::now();
        loop {
            tick.tick().await;
            let now = Instant::now();
            if self.connected() {
                if let Err(e) = self.ensure_buckets().await {
                    tracing::warn!("{e}");
                }
            }
            self.expire_attachments(now).await;
            self.wanted.borrow_mut().retain(|_, w| w.until > now);
            let wanted: Vec<StreamKey> = self.wanted.borrow().keys().cloned().collect();
            for key in wanted {
                self.try_pull(key);
            }
            let due = self.refresh_now.get()
                || now.duration_since(last_refresh) >= self.s.refresh_interval();
            if due && self.connected() && self.streams_kv().is_some() {
                self.refresh_now.set(false);
                last_refresh = now;
                self.refresh().await;
            }
        }
    }

    async fn expire_attachments(&self, now: Instant) {
        let mut stop = Vec::new();
        for (key, o) in self.owned.borrow_mut().iter_mut() {
            o.attached
                .retain(|_, at| now.duration_since(*at) < ATTACH_TTL);
            if o.exporting && o.attached.is_empty() {
                o.exporting = false;
                stop.push((key.clone(), o.shard));
            }
        }
        for (key, shard) in stop {
            self.stats.exported_streams.fetch_sub(1, Ordering::Relaxed);
            let _ = self.shards[shard]
                .send(ShardCommand::Export { key, on: false })
                .await;
        }
    }

    /// Refreshes every owned entry by compare-and-set, registers the ones
    /// made while NATS was away, fences the ones another node took, and
    /// writes this node's heartbeat.
    async fn refresh(&self) {
        let owned: Vec<(StreamKey, Registration, Option<u64>, usize)> = self
            .owned
            .borrow()
            .iter()
            .map(|(k, o)| (k.clone(), o.registration.clone(), o.revision, o.shard))
            .collect();
        let Some(kv) = self.streams_kv() else {
            return;
        };
        for (key, reg, revision, shard) in owned {
            let token = wire::token(&key);
            let value = Self::registration_value(&reg);
            count(&self.stats.registry_ops);
            let result = match revision {
                Some(rev) => {
                    match tokio::time::timeout(OP_TIMEOUT, kv.update(&token, value, rev)).await {
                        Ok(Ok(rev)) => Ok(Some(rev)),
                        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            // Taken over, or expired while we could not refresh.
                            self.register(&key, &reg, false).await
                        }
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("timed out".into()),
                    }
                }
                None => self.register(&key, &reg, false).await,
            };
            match result {
                Ok(Some(rev)) => {
                    if let Some(o) = self.owned.borrow_mut().get_mut(&key) {
                        if o.shard == shard {
                            o.revision = Some(rev);
                        }
                    }
                }
                Ok(None) => {
                    // Rule: the entry in the registry wins. Another node
                    // holds this key (a takeover, or a publish made while
                    // NATS was split from us): our publisher is closed.
                    count(&self.stats.registry_conflicts);
                    tracing::warn!(
                        stream = %crate::protocol::server::redact(&key),
                        "another node owns this stream in the registry; closing the local publisher"
                    );
                    let removed = {
                        let mut owned = self.owned.borrow_mut();
                        match owned.get(&key) {
                            Some(o) if o.shard == shard => owned.remove(&key),
                            _ => None,
                        }
                    };
                    if let Some(o) = removed {
                        if o.exporting {
                            self.stats.exported_streams.fetch_sub(1, Ordering::Relaxed);
                            let end = self.client.publish(o.subject, wire::encode_end());
                            let _ = tokio::time::timeout(PUBLISH_WAIT, end).await;
                        }
                        let _ = self.shards[shard]
                            .send(ShardCommand::Fence { key: key.clone() })
                            .await;
                    }
                }
                Err(e) => {
                    count(&self.stats.registry_errors);
                    tracing::debug!("registry refresh: {e}");
                }
            }
        }
        let nodes = self.nodes_kv.borrow().clone();
        if let Some(nodes) = nodes {
            let hb = NodeInfo {
                node: self.s.node_id.clone(),
                rtmp: self.s.rtmp_addr.clone(),
                started_ms: self.started_ms,
                streams: self.owned.borrow().len(),
            };
            let body = serde_json::to_vec(&hb).unwrap_or_default();
            count(&self.stats.registry_ops);
            let _ = tokio::time::timeout(OP_TIMEOUT, nodes.put(&self.me, body.into())).await;
        }
    }
}
