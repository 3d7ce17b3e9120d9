//! The node: data-plane shards (one glommio executor per core) and what they
//! share. Streams are owned by the shard of their publisher; other shards
//! subscribe once per stream over a bounded channel mesh and fan out locally.
//! The only node-wide state is the stream directory (rare path, behind a
//! mutex), the LL-HLS windows (`hls::Registry`: read per HTTP request,
//! written once per part, so that every shard serves the same segment
//! numbers) and counters. HTTP media (`http`, `hls`) is served by the same
//! shards, rings and hubs as RTMP.

mod admission;
mod context;
mod directory;
mod gate;
mod gop;
mod hls;
mod http;
mod hub;
mod pump;
mod push;
mod random;
mod record;
pub mod ring;
mod rtmp;
mod shard;
mod srt;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

use crate::auth::Auth;
use crate::cluster::{self, ClusterHandle, ClusterSettings};
use crate::config::Config;
use crate::tls::Certs;

pub use directory::{Directory, Listing, Report};
pub use gate::{Gate, GateLimits, REFUSED_KINDS};
pub use hls::Registry as HlsRegistry;
pub use push::PUSH_NOT_LIVE;
pub use record::{
    Library, RecordStats, Status as RecordStatus, ERROR_KINDS as RECORD_ERROR_KINDS,
    RECORD_NOT_LIVE,
};
pub use stats::{ShardStats, ERROR_KINDS, HTTP_REFUSALS, QUEUE_KINDS};

pub use crate::stream::StreamKey;

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Start(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::auth::KeysFileError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A running node's handle.
pub struct Node {
    pub rtmp_addr: SocketAddr,
    pub shards: usize,
    pub stats: Vec<Arc<ShardStats>>,
    pub directory: Arc<Directory>,
    /// The way to the cluster's control thread, when `cluster.nats` is set.
    pub cluster: Option<ClusterHandle>,
    pub node_id: String,
    pub gate: Arc<Gate>,
    /// Each shard's command queue (operator kicks from the admin plane).
    pub commands: Vec<tokio::sync::mpsc::Sender<crate::stream::ShardCommand>>,
    /// The RTMPS address, when RTMPS is on.
    pub rtmps_addr: Option<SocketAddr>,
    /// The HTTP and HTTPS media addresses, when on.
    pub media_addr: Option<SocketAddr>,
    pub media_tls_addr: Option<SocketAddr>,
    /// The SRT listener's address, when on; its counters and libsrt's
    /// version.
    pub srt_addr: Option<SocketAddr>,
    pub srt_counters: Option<Arc<crate::srt::thread::SrtCounters>>,
    pub srt_version: Option<String>,
    /// LL-HLS windows, node-wide.
    pub hls: Arc<hls::Registry>,
    pub auth: Arc<Auth>,
    /// The exec thread, when some app has pipelines or hooks.
    pub exec: Option<crate::exec::Exec>,
    /// This node's recordings, when `record.path` is set.
    pub recordings: Option<Arc<Library>>,
    pub certs: Option<Arc<Certs>>,
    stop: Arc<AtomicBool>,
    drained: Arc<AtomicUsize>,
    /// Kept, never joined: see `drain`.
    _handles: glommio::PoolThreadHandles<()>,
}

/// glommio refuses to start an executor with less locked memory than this.
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// Raises a resource's soft limit to its hard limit; returns both. Used
/// for RLIMIT_MEMLOCK (io_uring needs locked memory, and containers often
/// start with little) and RLIMIT_NOFILE (a socket per connection, and the
/// rings' fixed-file tables are bounded by it). The hard limit is the
/// operator's bound (systemd `LimitNOFILE=`, Docker `--ulimit`).
fn raise_limit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(resource, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(resource, &raised) == 0 {
                lim = raised;
            }
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// With port 0, pick a free port once so that every shard binds the same
/// one: a placeholder socket with SO_REUSEPORT holds it until they listen.
fn resolve_listen(addr: SocketAddr) -> Result<(SocketAddr, Option<socket2::Socket>), NodeError> {
    if addr.port() != 0 {
        return Ok((addr, None));
    }
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
        .and_then(|s| {
            s.set_reuse_port(true)?;
            s.bind(&addr.into())?;
            Ok(s)
        })
        .map_err(|e| NodeError::Start(format!("cannot reserve a port on {addr}: {e}")))?;
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| NodeError::Start("no local address".into()))?;
    Ok((local, Some(socket)))
}

/// Re-reads the auth keys file and the TLS certificates every 2 s if they
/// changed (a plain thread: a few `stat`s per tick).
fn spawn_reload(auth: Arc<Auth>, certs: Option<Arc<Certs>>, stop: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("tributary-reload".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(2));
                reload(&auth, certs.as_deref(), false);
            }
        });
}

/// Reloads what changed (everything with `force`), logging the outcome.
fn reload(auth: &Auth, certs: Option<&Certs>, force: bool) {
    match auth.reload() {
        Ok(true) => tracing::info!("auth keys file reloaded"),
        Ok(false) => {}
        Err(e) => tracing::warn!("{e}; keeping the keys read before"),
    }
    if let Some(certs) = certs {
        match certs.reload(force) {
            Ok(true) => tracing::info!("TLS certificates reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!("TLS certificates: {e}; keeping the ones in use"),
        }
    }
}

/// The exec thread, when some app has pipelines or hooks. Its pipelines
/// reach the node at `addr`, on loopback when it listens on every address.
fn start_exec(
    config: &Config,
    node_id: &str,
    addr: SocketAddr,
) -> Result<Option<crate::exec::Exec>, NodeError> {
    if config.exec.apps.is_empty() {
        return Ok(None);
    }
    let own = match addr.ip() {
        ip if !ip.is_unspecified() => addr,
        std::net::IpAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
    };
    let settings = crate::exec::ExecSettings {
        apps: config.exec.apps(),
        max_processes: config.exec.max_processes,
        backoff: crate::output::push::Backoff {
            min: Duration::from_millis(config.exec.backoff_min_ms),
            max: Duration::from_millis(config.exec.backoff_max_ms),
        },
        rtmp: own.to_string(),
        node_id: node_id.to_owned(),
    };
    crate::exec::Exec::start(settings)
        .map(Some)
        .map_err(|e| NodeError::Start(format!("cannot start the exec thread: {e}")))
}

/// The node's recordings (the files under `record.path`, read back and
/// repaired) and what its recorders follow, when `record.path` is set; the
/// retention thread when a limit is.
#[allow(clippy::type_complexity)]
fn start_recording(
    config: &Config,
) -> Result<(Option<Arc<record::RecordSettings>>, Option<Arc<Library>>), NodeError> {
    let r = &config.record;
    if !r.enabled() {
        return Ok((None, None));
    }
    let library = Library::load(&r.path)
        .map_err(|e| NodeError::Start(format!("record.path {}: {e}", r.path.display())))?;
    let library = Arc::new(library);
    if r.delete_after_secs > 0 || r.max_bytes > 0 {
        record::spawn_retention(
            library.clone(),
            Duration::from_secs(r.delete_after_secs),
            r.max_bytes,
            Duration::from_secs(RETENTION_EVERY_SECS),
        )
        .map_err(|e| NodeError::Start(format!("cannot start the retention thread: {e}")))?;
    }
    let settings = record::RecordSettings {
        path: r.path.clone(),
        segment_secs: r.segment_secs,
        fragment_ms: r.fragment_ms,
        fsync: r.fsync(),
        queue_max_bytes: r.queue_max_bytes,
        retry: Duration::from_millis(r.retry_ms),
        all: r
            .apps
            .iter()
            .filter(|(_, a)| a.record == "all")
            .map(|(app, _)| app.clone())
            .collect(),
    };
    Ok((Some(Arc::new(settings)), Some(library)))
}

/// How often the retention rules run.
const RETENTION_EVERY_SECS: u64 = 2;

/// What every shard's pushes share: the app templates (checked by the
/// config's validation), the backoff and the TLS client configuration.
fn push_settings(config: &Config) -> Result<Arc<push::PushSettings>, NodeError> {
    let p = &config.push;
    Ok(Arc::new(push::PushSettings {
        templates: p.templates(),
        backoff: p.backoff(),
        tls: crate::tls::client_config(&p.ca_file)?,
        max_per_stream: p.max_per_stream,
        batch: Duration::from_millis(p.send_batch_ms),
        chunk_size: config.rtmp.chunk_size,
        limits: config.protocol_limits(),
        node_id: config.node_id(),
    }))
}

/// Raises the open-files limit, and the locked-memory limit io_uring
/// needs; refuses to start below [`GLOMMIO_MIN_MEMLOCK`]. Returns the
/// locked-memory limit (soft, hard).
fn raise_limits() -> Result<(u64, u64), NodeError> {
    raise_limit(libc::RLIMIT_NOFILE);
    let (memlock, memlock_max) = raise_limit(libc::RLIMIT_MEMLOCK);
    if memlock < GLOMMIO_MIN_MEMLOCK {
        return Err(NodeError::Start(format!(
            "RLIMIT_MEMLOCK is {memlock} bytes (hard limit {memlock_max}); io_uring needs at least {GLOMMIO_MIN_MEMLOCK} \
             per shard to start. Raise it: systemd LimitMEMLOCK=infinity in the unit, docker --ulimit memlock=-1, \
             or ulimit -l unlimited in the shell that starts tributary"
        )));
    }
    Ok((memlock, memlock_max))
}

/// Resolves every listen address (port 0 to a real port, held by a
/// placeholder socket until the shards listen with `SO_REUSEPORT`).
fn resolve_listeners(config: &mut Config) -> Result<Vec<socket2::Socket>, NodeError> {
    let mut placeholders = Vec::new();
    let mut resolve = |listen: SocketAddr| -> Result<SocketAddr, NodeError> {
        let (addr, placeholder) = resolve_listen(listen)?;
        placeholders.extend(placeholder);
        Ok(addr)
    };
    config.rtmp.listen = resolve(config.rtmp.listen)?;
    config.tls.listen = config.tls.listen.map(&mut resolve).transpose()?;
    config.media.listen = config.media.listen.map(&mut resolve).transpose()?;
    config.media.tls_listen = config.media.tls_listen.map(&mut resolve).transpose()?;
    Ok(placeholders)
}

/// The publish/play webhook's thread, when `auth.webhook_url` is set.
fn start_webhook(
    config: &Config,
    node_id: &str,
) -> Result<Option<crate::webhook::Webhook>, NodeError> {
    if config.auth.webhook_url.is_empty() {
        return Ok(None);
    }
    let settings = crate::webhook::WebhookSettings {
        url: config.auth.webhook_url.clone(),
        timeout: Duration::from_millis(config.auth.webhook_timeout_ms),
        fail_closed: config.auth.webhook_fail_closed,
        on_play: config.auth.webhook_on_play,
        node_id: node_id.to_owned(),
    };
    crate::webhook::Webhook::start(settings)
        .map(Some)
        .map_err(|e| NodeError::Start(format!("webhook thread: {e}")))
}

/// The cluster's control thread, when `cluster.nats` names servers.
fn start_cluster(
    config: &Config,
    node_id: &str,
    addr: SocketAddr,
    gate: &Gate,
    command_senders: &[tokio::sync::mpsc::Sender<crate::stream::ShardCommand>],
    recordings: Option<Arc<dyn cluster::RecordingIndex>>,
) -> Result<Option<ClusterHandle>, NodeError> {
    if config.cluster.nats.is_empty() {
        if config.record.stored() {
            tracing::warn!("record.store = \"nats\" does nothing without cluster.nats");
        }
        return Ok(None);
    }
    let c = &config.cluster;
    let settings = ClusterSettings {
        node_id: node_id.to_owned(),
        servers: c.nats.clone(),
        user: c.user.clone(),
        password: c.password.clone(),
        token: c.token.clone(),
        creds_file: c.creds_file.clone(),
        nkey_seed: c.nkey_seed.clone(),
        tls_ca_file: c.tls_ca_file.clone(),
        require_tls: c.require_tls,
        registry_ttl: Duration::from_millis(c.registry_ttl_ms),
        push_targets_keep: Duration::from_millis(c.push_targets_keep_ms.max(c.registry_ttl_ms)),
        kv_replicas: c.kv_replicas,
        max_message_len: config.limits.max_message_len,
        max_snapshot_bytes: config.streams.gop_cache_max_bytes
            + 3 * config.limits.max_message_len as usize,
        rtmp_addr: addr.to_string(),
        audience: gate.audience().clone(),
        recordings,
        media_addr: config.media.listen.map(|a| match a.ip() {
            ip if !ip.is_unspecified() => a,
            std::net::IpAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], a.port())),
            std::net::IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
        }),
        store: config.record.stored().then(|| cluster::StoreSettings {
            max_age: Duration::from_secs(config.record.delete_after_secs),
            max_bytes: config.record.store_max_bytes,
            cache: config.record.path.join(".store"),
        }),
    };
    Ok(Some(cluster::start(settings, command_senders.to_vec())?))
}

impl Node {
    /// Starts the shards and returns once every one of them listens.
    pub fn start(mut config: Config) -> Result<Node, NodeError> {
        let shards = if config.node.shards == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            config.node.shards
        };
        let (memlock, memlock_max) = raise_limits()?;
        let placeholders = resolve_listeners(&mut config)?;
        let addr = config.rtmp.listen;
        let (tls, certs) = if config.tls.listen.is_some() || config.media.tls_listen.is_some() {
            let certs = Certs::load(&config.tls)?;
            let acceptor = crate::tls::server_config(certs.clone())?;
            (Some(acceptor), Some(certs))
        } else {
            (None, None)
        };
        let node_id = config.node_id();
        let push = push_settings(&config)?;
        // A play token of a stream plays its renditions too.
        let renditions = config.exec.renditions().into_iter().collect();
        let auth = Arc::new(Auth::new(&config.auth)?.with_renditions(renditions));
        let webhook = start_webhook(&config, &node_id)?;
        let gate = Gate::new(GateLimits {
            connections: config.rtmp.max_connections,
            connections_per_ip: config.rtmp.max_connections_per_ip,
            publishers: config.streams.max_publishers,
            players_per_stream: config.players.max_per_stream,
            tunnels: config.media.rtmpt_sessions,
            tunnels_per_ip: config.media.rtmpt_sessions_per_ip,
        });
        let (command_senders, commands) = crate::stream::command_channels(shards);
        let (record, recordings) = start_recording(&config)?;
        let index = recordings
            .clone()
            .map(|l| l as Arc<dyn cluster::RecordingIndex>);
        let cluster = start_cluster(&config, &node_id, addr, &gate, &command_senders, index)?;
        let exec = start_exec(&config, &node_id, addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let srt = match config.srt.listen {
            Some(_) => Some(
                crate::srt::thread::start(&config.srt, auth.clone(), shards, stop.clone())
                    .map_err(NodeError::Start)?,
            ),
            None => None,
        };
        let (srt_addr, srt_counters, srt_version) = match &srt {
            Some(s) => (
                Some(s.addr),
                Some(s.counters.clone()),
                Some(s.version.clone()),
            ),
            None => (None, None, None),
        };
        let srt_inboxes = srt.map(|s| Arc::new(std::sync::Mutex::new(s.inboxes)));
        let config = Arc::new(config);
        let directory = Arc::new(Directory::default());
        let mesh = MeshBuilder::full(shards, config.streams.shard_channel_capacity);
        // glommio 0.9's MeshBuilder is `Send` but counts its clones with a
        // non-atomic `Rc`. Cloned on the shard threads while other shards
        // dropped theirs, the count went low and the builder was freed
        // while still in use (AddressSanitizer caught it under
        // scripts/stress-shutdown). So every clone is made here, on one
        // thread, before any shard starts; each shard takes one by move;
        // and the original is never dropped. Concurrent drops alone can
        // only leave the count too high: a 56-byte leak, never a free.
        let builders: Vec<_> = (0..shards).map(|_| mesh.clone()).collect();
        std::mem::forget(mesh);
        let builders = Arc::new(std::sync::Mutex::new(builders));
        let listening = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let stats: Vec<Arc<ShardStats>> = (0..shards)
            .map(|_| Arc::new(ShardStats::default()))
            .collect();
        let io_memory = config.node.io_memory_kib * 1024;
        let hls = Arc::new(hls::Registry::default());
        let setup = {
            let failed = failed.clone();
            let (config, directory, stop, listening, drained, stats, cluster, auth, gate, tls) = (
                config.clone(),
                directory.clone(),
                stop.clone(),
                listening.clone(),
                drained.clone(),
                stats.clone(),
                cluster.clone(),
                auth.clone(),
                gate.clone(),
                tls.clone(),
            );
            let webhook = webhook.clone();
            let hls = hls.clone();
            let push = push.clone();
            let exec = exec.clone();
            let (record, recordings) = (record.clone(), recordings.clone());
            let srt_inboxes = srt_inboxes.clone();
            move || {
                let setup = shard::ShardSetup {
                    config: config.clone(),
                    directory: directory.clone(),
                    mesh: builders.lock().ok().and_then(|mut b| b.pop()),
                    stats: stats.clone(),
                    stop: stop.clone(),
                    listening: listening.clone(),
                    drained: drained.clone(),
                    cluster: cluster.clone(),
                    commands: commands.clone(),
                    auth: auth.clone(),
                    gate: gate.clone(),
                    tls: tls.clone(),
                    webhook: webhook.clone(),
                    hls: hls.clone(),
                    failed: failed.clone(),
                    push: push.clone(),
                    exec: exec.clone(),
                    record: record.clone(),
                    recordings: recordings.clone(),
                    srt: srt_inboxes.clone(),
                };
                shard::run_or_park(setup)
            }
        };
        let handles = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(shards, None))
            .io_memory(io_memory)
            .name("tributary-shard")
            .on_all_shards(setup)
            .map_err(|e| {
                NodeError::Start(format!(
                    "cannot start {shards} shards: {e}. RLIMIT_MEMLOCK is {memlock} bytes (hard limit {memlock_max}); \
                     io_uring needs more: raise it (systemd: LimitMEMLOCK=infinity, shell: ulimit -l unlimited) \
                     or lower node.io_memory_kib"
                ))
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while listening.load(Ordering::SeqCst) < shards {
            if Instant::now() > deadline || failed.load(Ordering::SeqCst) {
                // Shards that did start drain and park; the caller exits.
                // Each failed shard has logged its own error.
                stop.store(true, Ordering::SeqCst);
                return Err(NodeError::Start(format!(
                    "not every shard started listening on {addr} (RLIMIT_MEMLOCK {memlock} bytes); see the log"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(placeholders);
        spawn_reload(auth.clone(), certs.clone(), stop.clone());
        Ok(Node {
            rtmp_addr: addr,
            shards,
            stats,
            directory,
            cluster,
            node_id,
            gate,
            commands: command_senders,
            rtmps_addr: config.tls.listen,
            media_addr: config.media.listen,
            media_tls_addr: config.media.tls_listen,
            srt_addr,
            srt_counters,
            srt_version,
            hls,
            auth,
            exec,
            recordings,
            certs,
            stop,
            drained,
            _handles: handles,
        })
    }

    /// Re-reads the keys file and the certificates now (SIGHUP).
    pub fn reload(&self) {
        reload(&self.auth, self.certs.as_deref(), true);
    }

    /// Tells every shard to stop accepting and drain; returns at once.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops accepting and blocks until every shard has drained (its
    /// connections told, flushed and closed) or `limit` passes. Returns
    /// whether all drained. Drained shards park rather than tear their
    /// executors down (in-flight io_uring operations and executor teardown
    /// do not mix); the caller exits the process next.
    pub fn drain(&mut self, limit: Duration) -> bool {
        self.stop();
        let deadline = Instant::now() + limit;
        while self.drained.load(Ordering::SeqCst) < self.shards {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}
