//! Push targets on the stream's shard: every stream this shard publishes
//! is pushed to its app's configured targets and to those added over the
//! API, each on its own outgoing RTMP or RTMPS connection through the
//! shard's socket ring, driven by the sans-IO `ClientSession`.
//!
//! A target is a player of its stream as far as the hub goes: media
//! reaches it encoded once per shard (the same `Bytes` as the RTMP players
//! with its stream id and chunk size), under the slow-player rules (past
//! its queue bound it drops to the next keyframe; stuck past
//! `players.max_lag_ms` it is cut), so it can never stall the publisher, a
//! player or another target. A target that fails backs off
//! (`output::push::Lifecycle`) and reconnects from the cached keyframe.
//! The publisher's node is the registry owner in a cluster (a publish is
//! refused elsewhere), so each target gets the stream from one node.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::output::push::{Backoff, Lifecycle, PushUrl, PushUrlError, State, Template};
use crate::protocol::client::{ClientConfig, ClientEvent, ClientSession, Role};
use crate::protocol::server::redact;
use crate::protocol::Limits;
use crate::stream::{PushCommand, StreamKey};

use super::hub::Player;
use super::pump::SharedHub;
use super::ring::conn::{Conn, End, Input, Notice};
use super::ring::tls::decrypt;
use super::ring::{Notify, SocketRing};
use super::stats::ShardStats;

/// How long a target's name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every shard's pushes share: the node's push settings.
pub struct PushSettings {
    /// Each app's target templates.
    pub templates: BTreeMap<String, Vec<Template>>,
    pub backoff: Backoff,
    /// rtmps:// targets' TLS configuration (system roots and `ca_file`).
    pub tls: Arc<rustls::ClientConfig>,
    pub max_per_stream: usize,
    /// How often a live target's media leaves (`Conn::set_batch`).
    pub batch: Duration,
    /// The chunk size pushes send with: the players' own, so that one
    /// encoding of each message serves both.
    pub chunk_size: u32,
    pub limits: Limits,
    /// Sent in connect's flashVer (`output::push::flash_ver`), so that a
    /// node of this cluster that gets the push refuses it as a loop.
    pub node_id: String,
}

/// Who asked for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `[push.apps.NAME] targets`.
    Config,
    /// `POST /api/streams/APP/KEY/pushes`.
    Api,
    /// The publish webhook's answer.
    Webhook,
}

/// One target of one stream, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushStatus {
    pub id: u64,
    /// The URL with its stream key cut short.
    pub url: String,
    pub origin: Origin,
    pub state: State,
    /// Milliseconds in this state.
    pub for_ms: u64,
    /// Bytes written to the target, all its connections together.
    pub bytes: u64,
    pub reconnects: u64,
    /// The last error, as the target or the socket said it.
    pub error: Option<String>,
    /// While backing off: milliseconds until the next try.
    pub retry_in_ms: Option<u64>,
}

/// What `AddError::NotLive` says (the API answers it 404).
pub const PUSH_NOT_LIVE: &str = "the stream is not published on this node";

/// Why a target was not added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("{}", PUSH_NOT_LIVE)]
    NotLive,
    #[error("the stream has {0} push targets already (push.max_per_stream)")]
    TooMany(usize),
    #[error("the stream is pushed to that URL already")]
    Duplicate,
}

struct Target {
    id: u64,
    url: PushUrl,
    /// What the API and the logs show: the URL, its key cut short.
    shown: String,
    origin: Origin,
    life: RefCell<Lifecycle>,
    /// The connection of the try in progress.
    conn: RefCell<Option<Rc<Conn>>>,
    stopped: Cell<bool>,
    /// Wakes a backoff wait when the target is stopped.
    wake: Notify,
    /// Bytes of its finished connections.
    bytes: Cell<u64>,
}

impl Target {
    /// Stops the target: a connection in progress ends its publish the way
    /// ffmpeg does (told by a notice, so that what is queued goes first), a
    /// backoff wait ends.
    fn stop(&self, stats: &ShardStats) {
        self.stopped.set(true);
        if let Some(conn) = self.conn.borrow().as_ref() {
            if !conn.notice(Notice::Shutdown, stats) {
                conn.close();
            }
        }
        self.wake.notify();
    }

    fn status(&self, now: Instant) -> PushStatus {
        let life = self.life.borrow();
        let live_bytes = self.conn.borrow().as_ref().map_or(0, |c| c.written());
        PushStatus {
            id: self.id,
            url: self.shown.clone(),
            origin: self.origin,
            state: life.state(),
            for_ms: now.saturating_duration_since(life.since()).as_millis() as u64,
            bytes: self.bytes.get() + live_bytes,
            reconnects: life.reconnects(),
            error: life.last_error().map(str::to_owned),
            retry_in_ms: life
                .retry_at()
                .map(|at| at.saturating_duration_since(now).as_millis() as u64),
        }
    }
}

/// The push targets of the streams published on this shard.
pub struct Pushes {
    settings: Arc<PushSettings>,
    hub: Rc<SharedHub>,
    ring: Rc<SocketRing>,
    stats: Arc<ShardStats>,
    streams: RefCell<HashMap<StreamKey, Vec<Rc<Target>>>>,
    /// The connection whose publish each stream's targets belong to.
    owners: RefCell<HashMap<StreamKey, u64>>,
    next_id: Cell<u64>,
}

impl Pushes {
    pub fn new(
        settings: Arc<PushSettings>,
        hub: Rc<SharedHub>,
        ring: Rc<SocketRing>,
        stats: Arc<ShardStats>,
    ) -> Rc<Self> {
        Rc::new(Self {
            settings,
            hub,
            ring,
            stats,
            streams: RefCell::new(HashMap::new()),
            owners: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
        })
    }

    /// `key` is published on this shard (with `query`): its app's targets
    /// start, and those the publish webhook named (`hooked`). A template
    /// the publish cannot fill (a query parameter it names is missing), or
    /// a URL from the webhook that is not one, shows as a failed target.
    pub fn started(
        self: &Rc<Self>,
        key: &StreamKey,
        publisher: u64,
        query: &str,
        hooked: &[String],
        kept: &[String],
    ) {
        let previous = self.owners.borrow().get(key).copied();
        if let Some(previous) = previous {
            self.stopped(key, previous);
        }
        self.owners.borrow_mut().insert(key.clone(), publisher);
        self.streams.borrow_mut().insert(key.clone(), Vec::new());
        let templates = self.settings.templates.get(key.app()).cloned();
        let configured = templates.unwrap_or_default().into_iter().map(|t| {
            let url = t.expand(key, query);
            (url, t.redacted(), Origin::Config)
        });
        let from_hook = hooked.iter().map(|u| {
            let url = PushUrl::parse(u);
            let shown = match &url {
                Ok(url) => url.redacted(),
                Err(_) => crate::output::push::redact_url(u),
            };
            (url, shown, Origin::Webhook)
        });
        // Added over the API to an earlier publish of this stream (on the
        // owner before a failover): they go on here.
        let from_api = kept.iter().map(|u| {
            let url = PushUrl::parse(u);
            (url, crate::output::push::redact_url(u), Origin::Api)
        });
        for (url, shown, origin) in configured.chain(from_hook).chain(from_api) {
            let added = match url {
                Ok(url) => self.add(key, url, origin).map(|_| ()),
                Err(e) => {
                    self.add_failed(key, shown.clone(), origin, e);
                    Ok(())
                }
            };
            if let Err(e) = added {
                tracing::warn!(stream = %redact(key), target = %shown, "push target not started: {e}");
            }
        }
        if !kept.is_empty() {
            self.keep(key);
        }
    }

    /// Tells the cluster the stream's API targets, for its registry entry
    /// (a new owner after a failover takes them up). Nothing standalone.
    fn keep(&self, key: &StreamKey) {
        let urls: Vec<String> = self
            .streams
            .borrow()
            .get(key)
            .map_or_else(Vec::new, |targets| {
                targets
                    .iter()
                    .filter(|t| t.origin == Origin::Api && t.life.borrow().state() != State::Failed)
                    .map(|t| t.url.to_url())
                    .collect()
            });
        let shard = self.hub.read(|h| h.shard());
        let req = crate::cluster::Request::Pushes {
            key: key.clone(),
            shard,
            urls,
        };
        self.hub.with(|h| h.tell_cluster(req));
    }

    /// The publisher of `key` (connection `publisher`) left: its targets
    /// end their publish and go. Nothing when the stream's targets are
    /// another publisher's (it took the stream over).
    pub fn stopped(&self, key: &StreamKey, publisher: u64) {
        if self.owners.borrow().get(key) != Some(&publisher) {
            return;
        }
        self.owners.borrow_mut().remove(key);
        let targets = self.streams.borrow_mut().remove(key);
        for t in targets.unwrap_or_default() {
            t.stop(&self.stats);
        }
    }

    /// Adds a target to a stream published on this shard; returns its id.
    pub fn add(
        self: &Rc<Self>,
        key: &StreamKey,
        url: PushUrl,
        origin: Origin,
    ) -> Result<u64, AddError> {
        let target = {
            let mut streams = self.streams.borrow_mut();
            let targets = streams.get_mut(key).ok_or(AddError::NotLive)?;
            if targets.len() >= self.settings.max_per_stream {
                return Err(AddError::TooMany(targets.len()));
            }
            if targets.iter().any(|t| t.url == url) {
                return Err(AddError::Duplicate);
            }
            let shown = url.redacted();
            let target = self.new_target(url, shown, origin);
            targets.push(target.clone());
            target
        };
        tracing::info!(stream = %redact(key), target = %target.shown, "pushing");
        glommio::spawn_local(self.clone().run(key.clone(), target.clone())).detach();
        Ok(target.id)
    }

    fn new_target(&self, url: PushUrl, shown: String, origin: Origin) -> Rc<Target> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        Rc::new(Target {
            id,
            url,
            shown,
            origin,
            life: RefCell::new(Lifecycle::new(self.settings.backoff, Instant::now())),
            conn: RefCell::new(None),
            stopped: Cell::new(false),
            wake: Notify::default(),
            bytes: Cell::new(0),
        })
    }

    /// A template this publish cannot fill, or a URL the webhook named that
    /// is not one: listed, failed.
    fn add_failed(&self, key: &StreamKey, shown: String, origin: Origin, e: PushUrlError) {
        tracing::warn!(stream = %redact(key), "push target {shown} cannot be used: {e}");
        // Never connected to: the URL is a stand-in, the template is shown.
        let url = PushUrl {
            tls: false,
            host: String::new(),
            port: 0,
            app: String::new(),
            key: String::new(),
        };
        let target = self.new_target(url, shown, origin);
        target
            .life
            .borrow_mut()
            .give_up(Instant::now(), e.to_string());
        target.stopped.set(true);
        if let Some(targets) = self.streams.borrow_mut().get_mut(key) {
            targets.push(target);
        }
    }

    /// Removes a target; false when the stream has none with that id.
    pub fn remove(&self, key: &StreamKey, id: u64) -> bool {
        let mut streams = self.streams.borrow_mut();
        let Some(targets) = streams.get_mut(key) else {
            return false;
        };
        let Some(at) = targets.iter().position(|t| t.id == id) else {
            return false;
        };
        let target = targets.remove(at);
        tracing::info!(stream = %redact(key), target = %target.shown, "push removed");
        target.stop(&self.stats);
        true
    }

    /// The targets of `key`; None when it is not published on this shard.
    pub fn list(&self, key: &StreamKey) -> Option<Vec<PushStatus>> {
        let now = Instant::now();
        let streams = self.streams.borrow();
        let targets = streams.get(key)?;
        Some(targets.iter().map(|t| t.status(now)).collect())
    }

    /// The admin API's request (see `stream::PushCommand`).
    pub fn command(self: &Rc<Self>, cmd: PushCommand) {
        match cmd {
            PushCommand::List { key, reply } => {
                let list = self.list(&key).map(|l| {
                    l.iter()
                        .filter_map(|s| serde_json::to_value(s).ok())
                        .collect()
                });
                let _ = reply.send(list);
            }
            PushCommand::Add { key, url, reply } => {
                let added = self.add(&key, url, Origin::Api).map_err(|e| e.to_string());
                if added.is_ok() {
                    self.keep(&key);
                }
                let _ = reply.send(added);
            }
            PushCommand::Remove { key, id, reply } => {
                let removed = self.remove(&key, id);
                if removed {
                    self.keep(&key);
                }
                let _ = reply.send(removed);
            }
        }
    }

    /// One target's whole life: tries, backoffs, until it is stopped.
    async fn run(self: Rc<Self>, key: StreamKey, target: Rc<Target>) {
        let mut seed = jitter_seed(target.id);
        while !target.stopped.get() {
            let result = self.session(&key, &target).await;
            if target.stopped.get() {
                break;
            }
            let error = match result {
                // The stream ended under the target: it stops with it.
                Ok(()) => break,
                Err(e) if e.starts_with(crate::output::push::LOOP_REFUSED) => {
                    // The target is this cluster: no retry can help.
                    tracing::warn!(
                        stream = %redact(&key),
                        target = %target.shown,
                        "push refused by its target as a loop (the target is this cluster): {e}"
                    );
                    target.life.borrow_mut().give_up(Instant::now(), e);
                    if target.origin == Origin::Api {
                        // A failover must not take it up again.
                        self.keep(&key);
                    }
                    break;
                }
                Err(e) => e,
            };
            ShardStats::bump(&self.stats.push_failures, 1);
            seed = xorshift(seed);
            let jitter = (seed >> 11) as f64 / (1u64 << 53) as f64;
            let now = Instant::now();
            let at = target.life.borrow_mut().failed(now, error.clone(), jitter);
            tracing::warn!(
                stream = %redact(&key),
                target = %target.shown,
                "push failed: {error}; next try in {} ms",
                at.saturating_duration_since(now).as_millis()
            );
            let epoch = target.wake.epoch();
            if !target.stopped.get() {
                futures_lite::future::or(
                    glommio::timer::sleep(at.saturating_duration_since(Instant::now())),
                    target.wake.changed(epoch),
                )
                .await;
            }
            if target.stopped.get() {
                break;
            }
            target.life.borrow_mut().retry(Instant::now());
        }
    }

    /// One connection to the target: Ok when the stream (or the target)
    /// was stopped, Err with what went wrong otherwise.
    async fn session(&self, key: &StreamKey, target: &Rc<Target>) -> Result<(), String> {
        let addr = resolve(&target.url).await?;
        let fd = start_connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
        let tls = match target.url.tls {
            true => Some(
                crate::tls::connect(&self.settings.tls, &target.url.host)
                    .map_err(|e| format!("TLS: {e}"))?,
            ),
            false => None,
        };
        if target.stopped.get() {
            return Ok(());
        }
        let conn = self.ring.register(fd, tls);
        ShardStats::bump(&self.stats.push_connects, 1);
        *target.conn.borrow_mut() = Some(conn.clone());
        let mut live = false;
        let result = self.drive(key, target, &conn, &mut live).await;
        self.hub.with(|h| h.leave(conn.id));
        if live {
            self.stats.push_live.fetch_sub(1, Ordering::Relaxed);
        }
        self.ring.finish(&conn);
        target.conn.borrow_mut().take();
        target.bytes.set(target.bytes.get() + conn.written());
        ShardStats::bump(&self.stats.push_bytes, conn.written());
        result
    }

    async fn drive(
        &self,
        key: &StreamKey,
        target: &Target,
        conn: &Rc<Conn>,
        live: &mut bool,
    ) -> Result<(), String> {
        let url = &target.url;
        let mut config = ClientConfig::new(Role::Publish, &url.tc_url(), &url.app, &url.key);
        config.chunk_size = self.settings.chunk_size;
        config.limits = self.settings.limits;
        config.flash_ver = crate::output::push::flash_ver(&self.settings.node_id);
        let mut session = ClientSession::new(config, 0, jitter_seed(conn.id));
        flush(&mut session, conn);
        // TLS only: decrypted bytes the session has not taken yet.
        let mut plain = Vec::new();
        loop {
            let mut lease = match conn.next_input().await {
                Input::Data(lease) => lease,
                Input::Notice(Notice::Ended { .. } | Notice::Shutdown) => {
                    // The publisher left: end the publish as ffmpeg does.
                    session.close_stream();
                    flush(&mut session, conn);
                    return Ok(());
                }
                // Notices a push does not act on; no tunnel feeds a push.
                Input::Notice(_) | Input::Tunnel(_) => continue,
                Input::Closed if target.stopped.get() => {
                    session.close_stream();
                    flush(&mut session, conn);
                    return Ok(());
                }
                Input::Closed => {
                    return Err(
                        "cut: the target fell behind the stream (players.max_lag_ms)".into(),
                    )
                }
                Input::End(End::Eof) => return Err("the target closed the connection".into()),
                Input::End(e) => return Err(e.to_string()),
            };
            let input = match &conn.tls {
                None => {
                    let r = self.take_input(key, target, conn, &mut session, &lease[..], live);
                    let n = lease.len();
                    lease.consume(n);
                    r
                }
                Some(tls) => {
                    decrypt(tls, &mut lease, &mut plain).map_err(|e| format!("TLS: {e}"))?;
                    drop(lease);
                    let r = self.take_input(key, target, conn, &mut session, &plain, live);
                    plain.clear();
                    r
                }
            };
            match input {
                Ok(true) => {}
                Ok(false) => {
                    session.close_stream();
                    flush(&mut session, conn);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if conn.tls.as_ref().is_some_and(|t| t.borrow().wants_write()) {
                conn.schedule();
            }
        }
    }

    /// Feeds the target's bytes to the session; attaches the target to the
    /// stream once it says Publish.Start. Ok(false): the stream is gone.
    fn take_input(
        &self,
        key: &StreamKey,
        target: &Target,
        conn: &Rc<Conn>,
        session: &mut ClientSession,
        mut input: &[u8],
        live: &mut bool,
    ) -> Result<bool, String> {
        let mut stalled = 0;
        while !input.is_empty() {
            let used = session
                .handle_input(input)
                .map_err(|e| said(&e.to_string()))?;
            input = &input[used..];
            while let Some(event) = session.poll_event() {
                match event {
                    ClientEvent::ConnectRejected { description } => {
                        return Err(format!("connect refused: {}", said(&description)))
                    }
                    ClientEvent::StreamRejected { code, description } => {
                        let description = said(&description);
                        return Err(
                            match description.starts_with(crate::output::push::LOOP_REFUSED) {
                                true => description,
                                false => format!("{}: {description}", said(&code)),
                            },
                        );
                    }
                    ClientEvent::PublishStarted { stream_id } if !*live => {
                        let player =
                            Player::new(conn.id, stream_id, self.settings.chunk_size, conn.clone());
                        flush(session, conn);
                        let outcome = self.hub.with(|h| h.play(key, player));
                        if matches!(outcome, super::hub::PlayOutcome::NotFound) {
                            return Ok(false);
                        }
                        *live = true;
                        conn.set_connected();
                        // A target may say nothing while it takes media,
                        // and waits for none of it: batched sends.
                        conn.set_read_only_peer();
                        conn.set_batch(self.settings.batch);
                        self.stats.push_live.fetch_add(1, Ordering::Relaxed);
                        target.life.borrow_mut().live(Instant::now());
                    }
                    _ => {}
                }
            }
            flush(session, conn);
            if used == 0 {
                stalled += 1;
                if stalled > 2 {
                    return Err("the target's input was not taken".into());
                }
            } else {
                stalled = 0;
            }
        }
        Ok(true)
    }
}

/// What a target said, as the API and the logs show it: at most 200
/// characters, control characters replaced (a target's text is untrusted).
fn said(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Queues what the session has to send.
fn flush(session: &mut ClientSession, conn: &Conn) {
    let mut out = BytesMut::new();
    if session.poll_transmit(&mut out) > 0 {
        conn.push_urgent(out.freeze());
    }
}

/// The target's address: its IP, or its name resolved off the shard's
/// thread (the first address; a retry resolves again).
async fn resolve(url: &PushUrl) -> Result<SocketAddr, String> {
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, url.port));
    }
    let name = (url.host.clone(), url.port);
    let lookup = glommio::executor().spawn_blocking(move || {
        name.to_socket_addrs()
            .map(|mut addrs| addrs.next())
            .map_err(|e| e.to_string())
    });
    let timeout = async {
        glommio::timer::sleep(RESOLVE_TIMEOUT).await;
        Err("timed out".to_owned())
    };
    match futures_lite::future::or(lookup, timeout).await {
        Ok(Some(addr)) => Ok(addr),
        Ok(None) => Err(format!("{}: no address", url.host)),
        Err(e) => Err(format!("resolving {}: {e}", url.host)),
    }
}

/// A non-blocking socket with its connect under way: the ring's receive
/// and send on it wait for the connection (or fail with its error), and
/// the ring's handshake limit bounds the wait.
fn start_connect(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(OwnedFd::from(socket))
}

fn jitter_seed(id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    h.finish() | 1
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}
