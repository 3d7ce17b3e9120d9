//! One data-plane shard: a glommio executor pinned to a core, its socket
//! ring (its own io_uring) with its `SO_REUSEPORT` listeners, its hub, and
//! its end of the cross-shard mesh. Every connection it accepts lives here
//! until it closes.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::OwnedFd;

use futures_lite::StreamExt;
use glommio::channels::channel_mesh::MeshBuilder;

use crate::cluster::ClusterHandle;
use crate::config::{Config, DuplicatePublish, OnUnpublish, PlayUnknown};
use crate::protocol::server::ServerConfig;
use crate::stream::{ShardCommand, ShardCommands};

use super::context::ConnectionContext;
use super::directory::Directory;
use super::hls::packager::Targets;
use super::hls::run::HlsShard;
use super::hls::{self};
use super::http::{self, HttpContext};
use super::hub::ShardMsg;
use super::hub::{Hub, HubConfig};
use super::pump::SharedHub;
use super::push::Pushes;
use super::record::Recorders;
use super::ring::conn::Notice;
use super::ring::{ListenKind, SocketRing, Timeouts};
use super::rtmp::serve;
use super::stats::ShardStats;

pub struct ShardSetup {
    pub config: Arc<Config>,
    pub directory: Arc<Directory>,
    /// This shard's own clone of the mesh builder (see `Node::start`).
    pub mesh: Option<MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>>,
    /// Every shard's counters; this shard uses the one at its mesh id.
    pub stats: Vec<Arc<ShardStats>>,
    pub stop: Arc<AtomicBool>,
    /// Set once this shard listens.
    pub listening: Arc<std::sync::atomic::AtomicUsize>,
    /// Counted once this shard has drained at shutdown.
    pub drained: Arc<std::sync::atomic::AtomicUsize>,
    /// The cluster's control thread, when clustered.
    pub cluster: Option<ClusterHandle>,
    /// Every shard's command queue (this shard takes its own).
    pub commands: ShardCommands,
    pub auth: Arc<crate::auth::Auth>,
    pub gate: Arc<super::gate::Gate>,
    /// The TLS configuration, when RTMPS or HTTPS media is on (the
    /// addresses, resolved, are in `config`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// LL-HLS windows, node-wide.
    pub hls: Arc<super::hls::Registry>,
    /// Set when a shard failed to start.
    pub failed: Arc<AtomicBool>,
    pub webhook: Option<crate::webhook::Webhook>,
    pub push: Arc<super::push::PushSettings>,
    pub exec: Option<crate::exec::Exec>,
    pub record: Option<Arc<super::record::RecordSettings>>,
    pub recordings: Option<Arc<super::record::Library>>,
    /// Each shard's end of the SRT thread's events, when SRT is on (this
    /// shard takes its own).
    pub srt: Option<SrtInboxes>,
}

pub type SrtInboxes =
    Arc<std::sync::Mutex<Vec<Option<tokio::sync::mpsc::Receiver<crate::srt::thread::Event>>>>>;

/// Runs a shard; on an error it logs, counts the shard as failed and parks
/// (its executor must not be torn down with io_uring work in flight).
pub async fn run_or_park(setup: ShardSetup) {
    let failed = setup.failed.clone();
    if let Err(e) = run(setup).await {
        tracing::error!("{e}");
        failed.store(true, Ordering::SeqCst);
    }
    std::future::pending::<()>().await;
}

/// A listening socket with SO_REUSEPORT, so that every shard binds the
/// same address and the kernel spreads connections over them.
fn listen_on(addr: std::net::SocketAddr) -> std::io::Result<OwnedFd> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(OwnedFd::from(socket))
}

/// Why a shard did not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("no mesh builder left for this shard")]
    NoMesh,
    #[error("joining the shard mesh failed")]
    MeshJoin,
    #[error("more shards than counters")]
    NoCounters,
    #[error("shard {shard}: {source}")]
    Ring {
        shard: usize,
        source: super::ring::RingError,
    },
    #[error("shard {shard}: cannot listen{what} on {addr}: {source}")]
    Listen {
        shard: usize,
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("shard {0}: no command queue")]
    NoCommandQueue(usize),
}

async fn run(mut setup: ShardSetup) -> Result<(), ShardError> {
    let (senders, receivers) = setup
        .mesh
        .take()
        .ok_or(ShardError::NoMesh)?
        .join()
        .await
        .map_err(|_| ShardError::MeshJoin)?;
    let shard = senders.peer_id();
    let stats = setup
        .stats
        .get(shard)
        .cloned()
        .ok_or(ShardError::NoCounters)?;
    let config = &setup.config;
    let ring = open_ring(shard, config, &stats)?;
    setup.listening.fetch_add(1, Ordering::SeqCst);
    let hub = start_hub(shard, &setup, &stats, Rc::new(senders));
    let ctx = connection_context(shard, &setup, &stats, &hub, &ring);
    take_commands(shard, &setup, &hub, &ctx)?;
    if let Some(inboxes) = &setup.srt {
        let inbox = inboxes
            .lock()
            .ok()
            .and_then(|mut i| i.get_mut(shard).and_then(Option::take));
        if let Some(inbox) = inbox {
            glommio::spawn_local(super::srt::serve(inbox, ctx.clone(), ring.clone())).detach();
        }
    }
    let hls = hls_shard(shard, &setup);
    take_mesh(receivers, &hub, &hls, &ctx, &ring);
    let http_ctx = http_context(&setup, &hls);
    let on_accept = accept_handler(shard, &setup, &stats, &ring, &ctx, &http_ctx);
    glommio::spawn_local(ring.clone().drive(on_accept)).detach();
    spawn_sweep(&hub, &ring, &hls, &http_ctx);

    while !setup.stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    ring.stop_accepting();
    drain(shard, &hub, &ctx, &stats, &ring).await;
    setup.drained.fetch_add(1, Ordering::SeqCst);
    // Never return: tearing the executor down with io_uring operations in
    // flight (mesh receivers, timers, the socket ring) corrupts memory. The
    // process exits from main once every shard has drained.
    std::future::pending::<()>().await;
    Ok(())
}

/// The shard's socket ring, listening on every configured address.
fn open_ring(
    shard: usize,
    config: &Config,
    stats: &Arc<ShardStats>,
) -> Result<Rc<SocketRing>, ShardError> {
    let ring = SocketRing::new(
        config.node.recv_buffers,
        config.node.recv_buffer_kib * 1024,
        stats.clone(),
        Timeouts {
            handshake: Duration::from_millis(config.rtmp.handshake_timeout_ms),
            idle: Duration::from_millis(config.rtmp.idle_timeout_ms),
            write: Duration::from_millis(config.players.max_lag_ms),
        },
        Duration::from_millis(config.players.send_coalesce_ms),
        Duration::from_micros(config.node.wake_interval_us),
        config.node.defer_taskrun,
        (shard as u64) << 48,
    )
    .map_err(|source| ShardError::Ring { shard, source })?;
    let listen = |addr, what| {
        listen_on(addr).map_err(|source| ShardError::Listen {
            shard,
            what,
            addr,
            source,
        })
    };
    let listeners = [
        (Some(config.rtmp.listen), ListenKind::Rtmp, ""),
        (config.tls.listen, ListenKind::Rtmps, " for RTMPS"),
        (config.media.listen, ListenKind::Http, " for HTTP media"),
        (
            config.media.tls_listen,
            ListenKind::Https,
            " for HTTPS media",
        ),
    ];
    let mut fds = Vec::new();
    for (addr, kind, what) in listeners {
        if let Some(addr) = addr {
            fds.push((listen(addr, what)?, kind));
        }
    }
    for (fd, kind) in fds {
        ring.listen(fd, kind);
    }
    Ok(ring)
}

/// The shard's hub and the pumps that move its outbox.
fn start_hub(
    shard: usize,
    setup: &ShardSetup,
    stats: &Arc<ShardStats>,
    mesh: Rc<glommio::channels::channel_mesh::Senders<ShardMsg>>,
) -> Rc<SharedHub> {
    let config = &setup.config;
    let hub = Hub::new(
        shard,
        mesh.nr_consumers(),
        HubConfig {
            gop_cache_max_bytes: config.streams.gop_cache_max_bytes,
            queue_max_bytes: config.players.queue_max_bytes,
            max_lag_ms: config.players.max_lag_ms,
            unpublish_wait: (config.streams.on_unpublish == OnUnpublish::Wait)
                .then(|| Duration::from_millis(config.streams.unpublish_wait_timeout_ms)),
            takeover: config.streams.duplicate_publish == DuplicatePublish::Takeover,
            play_wait: (config.streams.play_unknown == PlayUnknown::Wait)
                .then(|| Duration::from_millis(config.streams.play_wait_timeout_ms)),
        },
        setup.directory.clone(),
        stats.clone(),
        setup.cluster.is_some(),
        std::time::Instant::now(),
    );
    let hub = SharedHub::new(hub, mesh, setup.cluster.clone());
    hub.spawn_pumps(shard);
    hub
}

/// Commands from the cluster's control thread (relayed media among them),
/// and the admin plane's kicks through the same queue, into the hub.
fn take_commands(
    shard: usize,
    setup: &ShardSetup,
    hub: &Rc<SharedHub>,
    ctx: &Rc<ConnectionContext>,
) -> Result<(), ShardError> {
    {
        let rx = setup
            .commands
            .lock()
            .ok()
            .and_then(|mut c| c.get_mut(shard).and_then(Option::take));
        let Some(mut rx) = rx else {
            return Err(ShardError::NoCommandQueue(shard));
        };
        let hub = hub.clone();
        let pushes = ctx.pushes.clone();
        let recorders = ctx.recorders.clone();
        glommio::spawn_local(async move {
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    ShardCommand::Push(cmd) => pushes.command(cmd),
                    ShardCommand::Record(cmd) => recorders.command(cmd),
                    cmd => hub.with(|h| h.on_cluster(cmd, std::time::Instant::now())),
                }
            }
        })
        .detach();
    }
    Ok(())
}

/// What every connection task of this shard shares.
fn connection_context(
    shard: usize,
    setup: &ShardSetup,
    stats: &Arc<ShardStats>,
    hub: &Rc<SharedHub>,
    ring: &Rc<SocketRing>,
) -> Rc<ConnectionContext> {
    let config = &setup.config;
    let pushes = Pushes::new(setup.push.clone(), hub.clone(), ring.clone(), stats.clone());
    let recorders = Recorders::new(
        setup.record.clone(),
        setup.recordings.clone(),
        hub.clone(),
        ring.clone(),
        setup.exec.clone(),
    );
    Rc::new(ConnectionContext {
        pushes,
        recorders,
        exec: setup.exec.clone(),
        rtmp_ip: config.rtmp.listen.ip(),
        players: Arc::new(config.players.clone()),
        rtmp: Arc::new(config.rtmp.clone()),
        open: RefCell::new(Vec::new()),
        reconnects_asked: std::cell::Cell::new(0),
        hub: hub.clone(),
        stats: stats.clone(),
        shard,
        auth: setup.auth.clone(),
        webhook: setup.webhook.clone(),
        gate: setup.gate.clone(),
        max_ingest_bytes_per_sec: config.streams.max_ingest_kbps * 1000 / 8,
        cluster: setup.cluster.clone(),
        session: ServerConfig {
            limits: config.protocol_limits(),
            chunk_size: config.rtmp.chunk_size,
            window_ack_size: config.rtmp.window_ack_size,
            max_streams: config.rtmp.max_streams_per_connection,
        },
    })
}

/// The shard's side of LL-HLS: the node's windows, its wake, the targets.
fn hls_shard(shard: usize, setup: &ShardSetup) -> Rc<HlsShard> {
    let config = &setup.config;
    Rc::new(HlsShard {
        registry: setup.hls.clone(),
        wake: Default::default(),
        targets: Targets {
            part_ms: config.media.hls_part_ms,
            segment_ms: config.media.hls_segment_ms,
            window_segments: config.media.hls_window_segments,
        },
        idle: Duration::from_millis(config.media.hls_idle_ms),
        shard,
    })
}

/// Messages from other shards, one task per peer. LL-HLS's are the
/// shard's own: start packaging a stream this shard has, or wake the
/// requests waiting on a window.
fn take_mesh(
    mut receivers: glommio::channels::channel_mesh::Receivers<ShardMsg>,
    hub: &Rc<SharedHub>,
    hls: &Rc<HlsShard>,
    ctx: &Rc<ConnectionContext>,
    ring: &Rc<SocketRing>,
) {
    for (_, mut rx) in receivers.streams() {
        let (hub, hls, ctx, ring) = (hub.clone(), hls.clone(), ctx.clone(), ring.clone());
        glommio::spawn_local(async move {
            while let Some(msg) = rx.next().await {
                match msg {
                    ShardMsg::HlsChanged => hls.wake.notify(),
                    ShardMsg::HlsStart { key } => {
                        let mine = hub.read(|h| h.owner(&key) == Some(h.shard()));
                        if mine && hls.registry.get(&key).is_none() {
                            hls::run::start(&key, true, Duration::ZERO, &hls, &ctx, ring.new_id());
                        }
                    }
                    msg => hub.with(|h| h.on_shard_message(msg, std::time::Instant::now())),
                }
            }
        })
        .detach();
    }
}

/// What the shard's HTTP media connections share.
fn http_context(setup: &ShardSetup, hls: &Rc<HlsShard>) -> Rc<HttpContext> {
    let config = &setup.config;
    Rc::new(HttpContext {
        cors_origin: config.media.cors_origin.clone(),
        hls_sessions: config.media.hls_sessions,
        hls: hls.clone(),
        renditions: config.exec.renditions(),
        recordings: setup.recordings.clone(),
        tunnels: http::Tunnels::new(
            config.media.rtmpt,
            Duration::from_millis(config.media.rtmpt_idle_ms),
            Duration::from_millis(config.rtmp.handshake_timeout_ms),
        ),
    })
}

/// Every accepted socket, plain or TLS, RTMP or HTTP: limits first, then
/// the ring takes it and a task serves it. Over a limit the socket is
/// closed at once (counted, not logged: a flood must not flood logs).
fn accept_handler(
    shard: usize,
    setup: &ShardSetup,
    stats: &Arc<ShardStats>,
    ring: &Rc<SocketRing>,
    ctx: &Rc<ConnectionContext>,
    http_ctx: &Rc<HttpContext>,
) -> impl FnMut(OwnedFd, ListenKind) + 'static {
    let config = &setup.config;
    {
        let (ring, ctx, gate, stats) =
            (ring.clone(), ctx.clone(), setup.gate.clone(), stats.clone());
        let tls_config = setup.tls.clone();
        let http_ctx = http_ctx.clone();
        let max_connections = config.rtmp.max_connections_per_shard as u64;
        move |fd: OwnedFd, kind: ListenKind| {
            let socket = socket2::SockRef::from(&fd);
            let Some(peer) = socket.peer_addr().ok().and_then(|a| a.as_socket()) else {
                return;
            };
            if stats.connections.load(Ordering::Relaxed) >= max_connections {
                tracing::debug!(shard, %peer, "refused: {max_connections} connections on this shard");
                gate.refused[0].fetch_add(1, Ordering::Relaxed);
                return;
            }
            let Ok(ticket) = gate.connection(peer.ip()) else {
                return;
            };
            let _ = socket.set_nodelay(true);
            let tls = match (kind.tls(), &tls_config) {
                (false, _) => None,
                (true, Some(config)) => match crate::tls::accept(config) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(%peer, "TLS session: {e}");
                        return;
                    }
                },
                (true, None) => return,
            };
            let conn = ring.register(fd, tls);
            // Counted here, not in the task, so that one batch of accepts
            // cannot pass the limit above before any task has run.
            stats.connections.fetch_add(1, Ordering::Relaxed);
            stats.connections_total.fetch_add(1, Ordering::Relaxed);
            if kind.http() {
                conn.set_http();
                let task = http::serve(
                    conn,
                    peer,
                    ctx.clone(),
                    http_ctx.clone(),
                    ring.clone(),
                    ticket,
                );
                glommio::spawn_local(task).detach();
            } else {
                glommio::spawn_local(serve(conn, peer, ctx.clone(), ring.clone(), ticket)).detach();
            }
        }
    }
}

/// The one deadline sweep: connections' handshake, idle and write-stall
/// limits (RTMPT sessions' too), and waits for a stream to appear or come
/// back. It runs on through the drain (closing sockets have a flush
/// deadline).
fn spawn_sweep(
    hub: &Rc<SharedHub>,
    ring: &Rc<SocketRing>,
    hls: &Rc<HlsShard>,
    http: &Rc<HttpContext>,
) {
    {
        let (hub, ring, hls, http) = (hub.clone(), ring.clone(), hls.clone(), http.clone());
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(SWEEP_INTERVAL).await;
                let now = std::time::Instant::now();
                ring.sweep(now);
                http.tunnels.sweep(now);
                hub.with(|h| h.tick(now));
                // A wake from another shard may have been dropped at a
                // full inbox: waiting LL-HLS requests look again.
                hls.wake.notify();
            }
        })
        .detach();
    }
}

/// Drain: players hear the stream ended, every connection flushes what it
/// has queued and closes, within a bounded time. Encoders that said they
/// can (Enhanced RTMP v2 capsEx Reconnect) are asked to reconnect, which
/// through DNS lands them on another node, and keep their connection
/// until they go or the grace ends (see `Notice::Shutdown`).
async fn drain(
    shard: usize,
    hub: &Rc<SharedHub>,
    ctx: &Rc<ConnectionContext>,
    stats: &Arc<ShardStats>,
    ring: &Rc<SocketRing>,
) {
    hub.with(|h| h.shutdown());
    for conn in ctx.open.borrow().iter() {
        if let Some(conn) = conn.upgrade() {
            conn.notice(Notice::Shutdown, stats);
        }
    }
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    while stats.connections.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let asked = ctx.reconnects_asked.get();
    if asked > 0 {
        tracing::info!(shard, "asked {asked} encoders to reconnect elsewhere");
    }
    let left = stats.connections.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            shard,
            "{left} connections still open after {SHUTDOWN_GRACE:?}; closing them"
        );
        for conn in ctx.open.borrow().iter() {
            if let Some(conn) = conn.upgrade() {
                conn.close();
            }
        }
    }
    // The ring flushes what the closing connections queued (end-of-stream
    // notices) and closes their sockets, within its flush deadline.
    let flushed = std::time::Instant::now() + Duration::from_secs(2);
    while ring.open_sockets() > 0 && std::time::Instant::now() < flushed {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// How often the shard sweeps its deadlines.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// How long a stopping shard waits for its connections to flush and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
