//! One data-plane shard: a glommio executor pinned to a core, its own
//! `SO_REUSEPORT` listener, its hub, and its end of the cross-shard mesh.
//! Every connection it accepts lives here until it closes.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;

use crate::cluster::{ClusterHandle, ShardCommands};
use crate::config::{Config, DuplicatePublish, OnUnpublish, PlayUnknown};
use crate::protocol::server::ServerConfig;

use super::connection::{serve, ConnectionContext};
use super::directory::Directory;
use super::hub::{Hub, HubConfig};
use super::stats::ShardStats;
use super::ShardMsg;

pub struct ShardSetup {
    pub config: Arc<Config>,
    pub directory: Arc<Directory>,
    pub mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
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
    pub gate: Arc<super::Gate>,
    /// The RTMPS address (resolved) and the TLS acceptor, when on.
    pub tls: Option<(std::net::SocketAddr, futures_rustls::TlsAcceptor)>,
    pub webhook: Option<crate::webhook::Webhook>,
}

pub async fn run(setup: ShardSetup) -> Result<(), String> {
    let (senders, receivers) = setup
        .mesh
        .join()
        .await
        .map_err(|_| "joining the shard mesh failed".to_string())?;
    let shard = senders.peer_id();
    let stats = setup
        .stats
        .get(shard)
        .cloned()
        .ok_or("more shards than counters")?;
    let config = &setup.config;
    let listener = TcpListener::bind(config.rtmp.listen).map_err(|e| {
        format!(
            "shard {shard}: cannot listen on {}: {e}",
            config.rtmp.listen
        )
    })?;
    let tls_listener = match &setup.tls {
        Some((addr, _)) => Some(
            TcpListener::bind(addr)
                .map_err(|e| format!("shard {shard}: cannot listen for RTMPS on {addr}: {e}"))?,
        ),
        None => None,
    };
    setup.listening.fetch_add(1, Ordering::SeqCst);

    let hub = Rc::new(RefCell::new(Hub::new(
        shard,
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
        Rc::new(senders),
        stats.clone(),
        setup.cluster.clone(),
    )));

    // Commands from the cluster's control thread (relayed media among them).
    // (The admin plane kicks publishers through the same queue.)
    {
        let rx = setup
            .commands
            .lock()
            .map_err(|_| "shard command queues poisoned".to_string())?
            .get_mut(shard)
            .and_then(Option::take);
        let Some(mut rx) = rx else {
            return Err(format!("shard {shard}: no command queue"));
        };
        let hub = hub.clone();
        glommio::spawn_local(async move {
            while let Some(cmd) = rx.recv().await {
                hub.borrow_mut().on_cluster(cmd);
            }
        })
        .detach();
    }

    // Messages from other shards, one task per peer.
    let mut receivers = receivers;
    for (_, mut rx) in receivers.streams() {
        let hub = hub.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.next().await {
                hub.borrow_mut().on_shard_message(msg);
            }
        })
        .detach();
    }

    // Waits (for a stream to appear or come back) end at their deadlines.
    {
        let (hub, stop) = (hub.clone(), setup.stop.clone());
        glommio::spawn_local(async move {
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(250)).await;
                hub.borrow_mut().expire(std::time::Instant::now());
            }
        })
        .detach();
    }

    let ctx = Rc::new(ConnectionContext {
        open: RefCell::new(Vec::new()),
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
        handshake_timeout: Duration::from_millis(config.rtmp.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(config.rtmp.idle_timeout_ms),
        write_timeout: Duration::from_millis(config.players.max_lag_ms),
    });
    // RTMPS: its own accept loop; after the TLS handshake a connection is
    // served exactly like a plain one, with the same hub.
    if let (Some(listener), Some((_, acceptor))) = (tls_listener, setup.tls.clone()) {
        let (ctx, stop, gate, stats) = (
            ctx.clone(),
            setup.stop.clone(),
            setup.gate.clone(),
            stats.clone(),
        );
        let max_connections = config.rtmp.max_connections_per_shard as u64;
        glommio::spawn_local(async move {
            let mut next_conn: u64 = ((shard as u64) << 48) | (1 << 40);
            while !stop.load(Ordering::Relaxed) {
                let Some(socket) = accept(&listener).await else {
                    continue;
                };
                let Ok(peer) = socket.peer_addr() else {
                    continue;
                };
                if stats.connections.load(Ordering::Relaxed) >= max_connections {
                    gate.refused[0].fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(ticket) = gate.connection(peer.ip()) else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                next_conn += 1;
                let (acceptor, ctx, conn) = (acceptor.clone(), ctx.clone(), next_conn);
                glommio::spawn_local(async move {
                    let handshake = futures_lite::future::or(
                        async { Some(acceptor.accept(socket).await) },
                        async {
                            glommio::timer::sleep(ctx.handshake_timeout).await;
                            None
                        },
                    )
                    .await;
                    match handshake {
                        Some(Ok(tls)) => serve(tls, peer, conn, ctx, ticket).await,
                        Some(Err(e)) => {
                            ctx.stats.add_protocol_error("handshake");
                            tracing::info!(%peer, conn, "TLS handshake failed: {e}");
                        }
                        None => ctx.stats.add_protocol_error("timeout"),
                    }
                })
                .detach();
            }
        })
        .detach();
    }

    let max_connections = config.rtmp.max_connections_per_shard as u64;
    let mut next_conn: u64 = (shard as u64) << 48;
    let mut backoff = Duration::from_millis(5);
    while !setup.stop.load(Ordering::Relaxed) {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            None
        })
        .await;
        let socket = match accepted {
            None => continue,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(shard, "accept failed: {e}");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        let peer = match socket.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        if stats.connections.load(Ordering::Relaxed) >= max_connections {
            tracing::debug!(shard, %peer, "refused: {max_connections} connections on this shard");
            setup.gate.refused[0].fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Node-wide and per-address limits: over them, the socket is
        // closed at once (counted, not logged: a flood must not flood logs).
        let Ok(ticket) = setup.gate.connection(peer.ip()) else {
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        next_conn += 1;
        glommio::spawn_local(serve(socket, peer, next_conn, ctx.clone(), ticket)).detach();
    }
    drop(listener);

    // Drain: players hear the stream ended, every connection flushes what it
    // has queued and closes, within a bounded time. Encoders that said they
    // can (Enhanced RTMP v2 capsEx Reconnect) are asked to reconnect, which
    // through DNS lands them on another node, and keep their connection
    // until they go or the grace ends.
    hub.borrow_mut().shutdown();
    let mut asked = 0;
    for (outbox, session) in ctx.open.borrow().iter() {
        let Some(outbox) = outbox.upgrade() else {
            continue;
        };
        let reconnecting = session
            .upgrade()
            .and_then(|s| {
                let mut s = s.try_borrow_mut().ok()?;
                if !s.is_publishing() {
                    return None;
                }
                s.request_reconnect(None, "this node is shutting down: reconnect")
                    .then(|| {
                        let mut out = bytes::BytesMut::new();
                        s.poll_transmit(&mut out);
                        outbox.push(out.freeze());
                    })
            })
            .is_some();
        if reconnecting {
            asked += 1;
        } else {
            outbox.close();
        }
    }
    if asked > 0 {
        tracing::info!(shard, "asked {asked} encoders to reconnect elsewhere");
    }
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    while stats.connections.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let left = stats.connections.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            shard,
            "{left} connections still open after {SHUTDOWN_GRACE:?}; closing them"
        );
        for (outbox, _) in ctx.open.borrow().iter() {
            if let Some(outbox) = outbox.upgrade() {
                outbox.close();
            }
        }
    }
    setup.drained.fetch_add(1, Ordering::SeqCst);
    // Never return: tearing the executor down with io_uring operations in
    // flight (mesh receivers, timers) corrupted the heap at thread exit. The
    // process exits from main once every shard has drained.
    std::future::pending::<()>().await;
    Ok(())
}

/// How long a stopping shard waits for its connections to flush and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One accepted socket, or None after 200 ms (so the caller sees `stop`)
/// or on an accept error (after a short pause: EMFILE must not spin).
async fn accept(listener: &TcpListener) -> Option<glommio::net::TcpStream> {
    let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
        glommio::timer::sleep(Duration::from_millis(200)).await;
        None
    })
    .await?;
    match accepted {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("accept failed: {e}");
            glommio::timer::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}
