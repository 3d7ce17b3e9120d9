//! The HTTP admin plane, on the control-plane thread (a tokio
//! current-thread runtime, the only place tokio runs): `/metrics`
//! (Prometheus text, per shard), `/healthz`, `/readyz`, `/api/node` and
//! `/api/streams` (JSON, with each stream's viewers by protocol;
//! `?scope=cluster` asks the cluster registry and every node). It
//! reads the shards' counters, the stream directory and the cluster
//! counters; it is never on the media path. `DELETE /api/streams/APP/KEY`
//! kicks that publisher on whatever node of the cluster has it;
//! `/api/play?stream=APP/KEY` answers the query a play needs under the play
//! rules (a signed token for a token app), for the console's previews. With
//! `http.admin_token` set, `/api/*` asks for `Authorization: Bearer TOKEN`
//! (`/metrics` and the probes stay open); without it, `/api/*` answers only
//! requests whose `Host` is an IP address or localhost, against DNS
//! rebinding. HTTP/1.1 by hyper, keep-alive
//! included; request headers, time per request and per connection, and
//! connections at once are bounded.
//!
//! Long (about 900 lines): the HTTP routes and the Prometheus families they
//! render, one per counter the node keeps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::cluster::{ClusterAudience, ClusterHandle, ClusterStats, NodeAudience};
use crate::node::{
    Directory, Gate, ShardStats, ERROR_KINDS, HTTP_REFUSALS, QUEUE_KINDS, REFUSED_KINDS,
};
use crate::stream::StreamKey;

/// What the admin plane reports on.
pub struct AdminState {
    pub node_id: String,
    pub rtmp_addr: SocketAddr,
    pub shards: Vec<Arc<ShardStats>>,
    pub directory: Arc<Directory>,
    pub ready: Arc<AtomicBool>,
    pub started: Instant,
    pub cluster: Option<ClusterHandle>,
    pub gate: Arc<Gate>,
    /// Each shard's command queue (kicks).
    pub commands: Vec<tokio::sync::mpsc::Sender<crate::stream::ShardCommand>>,
    /// Empty = the API is open (keep the admin address private).
    pub admin_token: String,
    /// The HTTP media listener, when on (the console's previews use it).
    pub media_addr: Option<SocketAddr>,
    /// The node's LL-HLS windows (their memory, for the metrics).
    pub hls: Arc<crate::node::HlsRegistry>,
    /// The play rules (the console's preview asks for a play token).
    pub auth: Arc<crate::auth::Auth>,
}

/// How long a play token that `/api/play` hands out is valid.
const PREVIEW_TOKEN_TTL_SECS: u64 = 3600;

const MAX_REQUEST: usize = 8 * 1024;
/// The longest a client may take to send a request's headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one admin connection stays open (keep-alive included).
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);
/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;

type Reply = hyper::Response<Full<Bytes>>;

/// Binds `addr` and serves on a thread of its own; returns the bound address.
pub fn spawn(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let metrics = Metrics::new().map_err(std::io::Error::other)?;
    let state = Arc::new((state, metrics));
    crate::control_thread::spawn("tributary-control", move || async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("admin listener: {e}");
                return;
            }
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                state.1.admin_refused.inc();
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(req, &state.0, &state.1).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .max_buf_size(MAX_REQUEST)
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service);
                let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
                drop(slot);
            });
        }
    })?;
    Ok(local)
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    reply(status, "text/plain", Bytes::from_static(body.as_bytes()))
}

fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
    reply(status, "application/json", body.to_string())
}

async fn route(
    req: hyper::Request<hyper::body::Incoming>,
    state: &AdminState,
    metrics: &Metrics,
) -> Reply {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    if path.starts_with("/api/") && state.admin_token.is_empty() {
        // An open API answers only what a browser sends to an address or to
        // localhost: a page whose name was rebound to this address (DNS
        // rebinding) would otherwise read it and kick publishers as if it
        // were the console. With a token, the token is the check.
        let host = req.headers().get(HOST).map(HeaderValue::as_bytes);
        if !host.is_none_or(host_is_address) {
            return text(
                StatusCode::FORBIDDEN,
                "with http.admin_token empty, /api/* answers only requests to an IP address or localhost (Host header); set http.admin_token to use a host name\n",
            );
        }
    }
    if path.starts_with("/api/") && !state.admin_token.is_empty() {
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|t| constant_time_eq(t.as_bytes(), state.admin_token.as_bytes()))
        {
            return text(
                StatusCode::UNAUTHORIZED,
                "Authorization: Bearer <http.admin_token> required\n",
            );
        }
    }
    if req.method() == Method::DELETE {
        if let Some(target) = path.strip_prefix("/api/streams/") {
            return kick(state, target).await;
        }
    }
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET, or DELETE /api/streams/APP/KEY\n",
        );
    }
    if let Some(answer) = console(path) {
        return answer;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            // A cluster node cut off from NATS can serve only its own
            // streams: not ready, so health-checked DNS sends players elsewhere.
            let nats_down = state
                .cluster
                .as_ref()
                .is_some_and(|c| ClusterStats::get(&c.stats.connected) == 0);
            let ready = state.ready.load(Ordering::Relaxed);
            if nats_down && ready {
                text(StatusCode::SERVICE_UNAVAILABLE, "not connected to NATS\n")
            } else if ready {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(state),
        ),
        "/api/node" => {
            let sum = |f: fn(&ShardStats) -> u64| state.shards.iter().map(|s| f(s)).sum::<u64>();
            let body = serde_json::json!({
                "node_id": state.node_id,
                "version": env!("CARGO_PKG_VERSION"),
                "rtmp_listen": state.rtmp_addr.to_string(),
                "shards": state.shards.len(),
                "uptime_seconds": state.started.elapsed().as_secs(),
                "ready": state.ready.load(Ordering::Relaxed),
                "cluster": state.cluster.is_some(),
                "connections": sum(|s| ShardStats::get(&s.connections)),
                "publishers": sum(|s| ShardStats::get(&s.publishers)),
                "players": sum(|s| ShardStats::get(&s.players)),
                "media_listen": state.media_addr.map(|a| a.to_string()),
                "viewers": {
                    "rtmp": sum(|s| ShardStats::get(&s.players)
                        .saturating_sub(ShardStats::get(&s.flv_viewers))
                        .saturating_sub(ShardStats::get(&s.hls_windows))),
                    "http_flv": sum(|s| ShardStats::get(&s.flv_viewers)),
                    "ll_hls": sum(|s| ShardStats::get(&s.hls_viewers)),
                },
                "hls_streams": sum(|s| ShardStats::get(&s.hls_windows)),
            });
            json(StatusCode::OK, &body)
        }
        "/api/streams" if query.split('&').any(|q| q == "scope=cluster") => {
            let Some(cluster) = &state.cluster else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "this node is not in a cluster (cluster.nats is empty)\n",
                );
            };
            let (list, viewers) = tokio::join!(cluster.list(), cluster.viewers());
            match list {
                Ok(list) => {
                    // Without the cluster's viewers the streams are still
                    // listed, with this node's viewers and the reason.
                    let audience = viewers.unwrap_or_else(|e| {
                        let mut own = ClusterAudience {
                            error: Some(e.to_string()),
                            ..ClusterAudience::default()
                        };
                        own.add(NodeAudience::of(&state.node_id, state.gate.audience()));
                        own
                    });
                    let streams: Vec<_> = list
                        .into_iter()
                        .map(|(key, reg)| {
                            let viewers = audience
                                .streams
                                .get(key.as_str())
                                .copied()
                                .unwrap_or_default();
                            serde_json::json!({
                                "app": key.app(), "name": key.name(), "node": reg.node,
                                "shard": reg.shard, "started_ms": reg.started_ms,
                                "video_codec": reg.video_codec, "audio_codec": reg.audio_codec,
                                "bitrate_kbps": reg.bitrate_kbps,
                                "viewers": viewers, "viewers_total": viewers.total(),
                            })
                        })
                        .collect();
                    let body = serde_json::json!({
                        "scope": "cluster", "streams": streams,
                        "viewers_from": audience.answered, "viewers_missing": audience.missing,
                        "viewers_error": audience.error,
                    });
                    json(StatusCode::OK, &body)
                }
                Err(e) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({ "error": e.to_string() }),
                ),
            }
        }
        "/api/play" => {
            // What a play of `stream=APP/KEY` must add to its URL under the
            // play rules (a token valid for an hour, or nothing): the
            // console's previews of token apps use it.
            let Some(stream) = query.split('&').find_map(|q| q.strip_prefix("stream=")) else {
                return text(StatusCode::BAD_REQUEST, "GET /api/play?stream=APP/KEY\n");
            };
            let key = match StreamKey::from_url_path(stream) {
                Ok(key) => key,
                Err(e) => return bad_name(e),
            };
            let now = crate::cluster::unix_ms() / 1000;
            let query = state.auth.play_query(&key, now, PREVIEW_TOKEN_TTL_SECS);
            let expires = (!query.is_empty()).then_some(now + PREVIEW_TOKEN_TTL_SECS);
            let body = serde_json::json!({
                "stream": key.as_str(), "app": key.app(), "name": key.name(),
                "query": query, "expires": expires,
            });
            json(StatusCode::OK, &body)
        }
        "/api/nodes" => {
            let Some(cluster) = &state.cluster else {
                let body = serde_json::json!({ "nodes": [{
                    "node": state.node_id, "rtmp": state.rtmp_addr.to_string(),
                }]});
                return json(StatusCode::OK, &body);
            };
            match cluster.nodes().await {
                Ok(nodes) => json(StatusCode::OK, &serde_json::json!({ "nodes": nodes })),
                Err(e) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({ "error": e.to_string() }),
                ),
            }
        }
        "/api/streams" => {
            let audience = state.gate.audience();
            let streams: Vec<_> = state
                .directory
                .snapshot()
                .into_iter()
                .map(|l| {
                    let viewers = audience.of(&l.key);
                    serde_json::json!({
                        "app": l.key.app(), "name": l.key.name(), "node": state.node_id,
                        "shard": l.shard, "relayed": l.relayed, "started_ms": l.started_ms,
                        "video_codec": l.report.video_codec, "audio_codec": l.report.audio_codec,
                        "bitrate_kbps": l.report.bitrate_kbps,
                        "viewers": viewers, "viewers_total": viewers.total(),
                    })
                })
                .collect();
            let body = serde_json::json!({ "scope": "node", "streams": streams });
            json(StatusCode::OK, &body)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The web console: static files embedded in the binary (`console/`),
/// the players among them from the npm registry (`scripts/vendor-console`).
fn console(path: &str) -> Option<Reply> {
    let (ctype, body): (&'static str, &'static [u8]) = match path {
        "/" | "/console" => {
            let mut r = reply(StatusCode::FOUND, "text/plain", "the console: /console/\n");
            r.headers_mut().insert(
                hyper::header::LOCATION,
                HeaderValue::from_static("/console/"),
            );
            return Some(r);
        }
        "/console/" | "/console/index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../console/index.html"),
        ),
        "/console/console.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../console/console.js"),
        ),
        "/console/vendor/hls.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../console/vendor/hls.min.js"),
        ),
        "/console/vendor/mpegts.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../console/vendor/mpegts.js"),
        ),
        "/console/vendor/LICENSES.txt" => (
            "text/plain; charset=utf-8",
            include_bytes!("../console/vendor/LICENSES.txt"),
        ),
        _ => return None,
    };
    Some(reply(StatusCode::OK, ctype, Bytes::from_static(body)))
}

/// Whether a `Host` header names an IP address or localhost (RFC 6761:
/// `localhost` and `*.localhost` never go to DNS), with or without a port.
fn host_is_address(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if !(after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok()))
        {
            return false;
        }
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
}

/// A 400 for a stream the naming rule refuses, with its reason.
fn bad_name(e: crate::stream::NameError) -> Reply {
    let body = format!("not a stream name (APP/NAME): {e}\n");
    reply(StatusCode::BAD_REQUEST, "text/plain", Bytes::from(body))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// DELETE /api/streams/APP/KEY: the publisher of APP/KEY is closed, here or
/// on the node of the cluster that has it; its players are told the stream
/// ended.
async fn kick(state: &AdminState, target: &str) -> Reply {
    let key = match StreamKey::from_url_path(target) {
        Ok(key) => key,
        Err(e) => return bad_name(e),
    };
    let local = state
        .directory
        .snapshot()
        .into_iter()
        .find(|l| l.key == key && !l.relayed)
        .map(|l| l.shard);
    let mut result = Err(crate::cluster::RegistryError::NoSuchStream);
    if let Some(tx) = local.and_then(|shard| state.commands.get(shard)) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let cmd = crate::stream::ShardCommand::Kick {
            key: key.clone(),
            reply,
        };
        if tx.send(cmd).await.is_ok() && rx.await.unwrap_or(false) {
            result = Ok(state.node_id.clone());
        }
    }
    if result.is_err() {
        if let Some(cluster) = &state.cluster {
            result = cluster.kick(&key).await;
        }
    }
    match result {
        Ok(node) => {
            tracing::info!(stream = %crate::protocol::server::redact(&key), "kicked through the HTTP API (node {node})");
            json(
                StatusCode::OK,
                &serde_json::json!({ "kicked": true, "node": node }),
            )
        }
        Err(e) => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "kicked": false, "error": e.to_string() }),
        ),
    }
}

/// Reads one counter of a shard.
type Read = fn(&ShardStats) -> u64;

/// Prometheus families, filled from the shards' atomics at scrape time.
struct Metrics {
    registry: Registry,
    gauges: Vec<(IntGaugeVec, Read)>,
    counters: Vec<(IntCounterVec, Read)>,
    dropped: IntCounterVec,
    errors: IntCounterVec,
    overflow: IntCounterVec,
    refused: IntCounterVec,
    http_refused: IntCounterVec,
    viewers: IntGaugeVec,
    hls_bytes: prometheus::IntGauge,
    limited: IntCounterVec,
    cluster_gauges: Vec<(prometheus::IntGauge, ClusterRead)>,
    cluster_counters: Vec<(prometheus::IntCounter, ClusterRead)>,
    /// Admin connections closed at accept: `MAX_CONNECTIONS` were open.
    admin_refused: prometheus::IntCounter,
}

/// Reads one cluster counter.
type ClusterRead = fn(&ClusterStats) -> u64;

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["shard"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauges: Vec<(IntGaugeVec, Read)> = vec![
            (
                gauge("tributary_connections", "Open RTMP connections")?,
                |s| ShardStats::get(&s.connections),
            ),
            (
                gauge("tributary_publishers", "Streams being published")?,
                |s| ShardStats::get(&s.publishers),
            ),
            (
                gauge("tributary_players", "Players attached to a stream")?,
                |s| ShardStats::get(&s.players),
            ),
            (
                gauge(
                    "tributary_hls_streams",
                    "Streams packaged for LL-HLS (each is one player among tributary_players)",
                )?,
                |s| ShardStats::get(&s.hls_windows),
            ),
        ];
        let counters: Vec<(IntCounterVec, Read)> = vec![
            (
                counter(
                    "tributary_bytes_in_total",
                    "Bytes read from RTMP peers",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.bytes_in),
            ),
            (
                counter(
                    "tributary_bytes_out_total",
                    "Bytes written to RTMP peers",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.bytes_out),
            ),
            (
                counter(
                    "tributary_connections_total",
                    "RTMP connections accepted",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.connections_total),
            ),
            (
                counter("tributary_publishes_total", "Publishes started", &["shard"])?,
                |s| ShardStats::get(&s.publishes_total),
            ),
            (
                counter("tributary_plays_total", "Plays started", &["shard"])?,
                |s| ShardStats::get(&s.plays_total),
            ),
            (
                counter(
                    "tributary_messages_in_total",
                    "Audio and video messages received from publishers",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.messages_in),
            ),
            (
                counter(
                    "tributary_messages_out_total",
                    "Audio, video and data messages queued to players",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.messages_out),
            ),
            (
                counter(
                    "tributary_slow_players_disconnected_total",
                    "Players cut for staying behind past players.max_lag_ms",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.disconnected_slow),
            ),
            (
                counter(
                    "tributary_http_requests_total",
                    "HTTP media requests taken (each answered or refused)",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.http_requests),
            ),
            (
                counter(
                    "tributary_http_bytes_out_total",
                    "Bytes written to HTTP media peers (among tributary_bytes_out_total)",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.http_bytes_out),
            ),
            (
                counter(
                    "tributary_hls_parts_total",
                    "LL-HLS partial segments built",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.hls_parts),
            ),
            (
                counter(
                    "tributary_hls_segments_total",
                    "LL-HLS segments completed",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.hls_segments),
            ),
            (
                counter(
                    "tributary_recv_no_buffers_total",
                    "Receives that found the shard's buffer ring empty (ENOBUFS) and were re-armed",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.recv_no_buffers),
            ),
        ];
        let dropped = counter(
            "tributary_dropped_frames_total",
            "Frames not delivered, by reason",
            &["shard", "reason"],
        )?;
        let errors = counter(
            "tributary_protocol_errors_total",
            "Connections closed for a protocol error, by kind",
            &["shard", "kind"],
        )?;
        let overflow = counter(
            "tributary_queue_overflow_total",
            "Items dropped because a bounded queue was full, by queue",
            &["shard", "queue"],
        )?;
        let refused = counter(
            "tributary_auth_refused_total",
            "Publishes and plays refused by the auth rules, by reason",
            &["shard", "reason"],
        )?;
        let http_refused = counter(
            "tributary_http_refused_total",
            "HTTP media requests refused, by reason",
            &["shard", "reason"],
        )?;
        let viewers = IntGaugeVec::new(
            Opts::new(
                "tributary_viewers",
                "Players by protocol: rtmp, http-flv, and ll-hls (viewers' sessions, counted on the shard that admitted them)",
            ),
            &["shard", "protocol"],
        )?;
        registry.register(Box::new(viewers.clone()))?;
        let hls_bytes = prometheus::IntGauge::new(
            "tributary_hls_window_bytes",
            "Bytes of LL-HLS parts and segments held in memory, all streams",
        )?;
        registry.register(Box::new(hls_bytes.clone()))?;
        let limited = counter(
            "tributary_limit_refused_total",
            "Connections, publishes and plays refused by a limit, by limit",
            &["limit"],
        )?;
        let mut cluster_gauges = Vec::new();
        for (name, help, read) in [
            (
                "tributary_nats_connected",
                "1 while connected to a NATS server",
                (|c| ClusterStats::get(&c.connected)) as ClusterRead,
            ),
            (
                "tributary_relayed_streams",
                "Streams relayed here from other nodes",
                |c| ClusterStats::get(&c.relayed_streams),
            ),
            (
                "tributary_exported_streams",
                "Streams of this node that other nodes relay",
                |c| ClusterStats::get(&c.exported_streams),
            ),
            (
                "tributary_snapshot_max_microseconds",
                "Longest snapshot fetch from another node",
                |c| ClusterStats::get(&c.snapshot_max_micros),
            ),
        ] {
            let g = prometheus::IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            cluster_gauges.push((g, read));
        }
        let mut cluster_counters = Vec::new();
        for (name, help, read) in [
            (
                "tributary_nats_connects_total",
                "Connections made to a NATS server",
                (|c| ClusterStats::get(&c.reconnects)) as ClusterRead,
            ),
            (
                "tributary_nats_bytes_out_total",
                "Media bytes published to NATS",
                |c| ClusterStats::get(&c.nats_bytes_out),
            ),
            (
                "tributary_nats_messages_out_total",
                "Media frames published to NATS",
                |c| ClusterStats::get(&c.nats_messages_out),
            ),
            (
                "tributary_nats_bytes_in_total",
                "Media bytes received from NATS",
                |c| ClusterStats::get(&c.nats_bytes_in),
            ),
            (
                "tributary_nats_messages_in_total",
                "Media frames received from NATS",
                |c| ClusterStats::get(&c.nats_messages_in),
            ),
            (
                "tributary_relay_gaps_total",
                "Gaps in relayed streams (resumed at the next keyframe)",
                |c| ClusterStats::get(&c.relay_gaps),
            ),
            (
                "tributary_export_drops_total",
                "Messages not exported: the control queue was full",
                |c| ClusterStats::get(&c.export_drops),
            ),
            (
                "tributary_registry_operations_total",
                "Registry (JetStream KV) operations",
                |c| ClusterStats::get(&c.registry_ops),
            ),
            (
                "tributary_registry_errors_total",
                "Registry operations that failed",
                |c| ClusterStats::get(&c.registry_errors),
            ),
            (
                "tributary_registry_conflicts_total",
                "Publishes refused, taken over or fenced for another node's entry",
                |c| ClusterStats::get(&c.registry_conflicts),
            ),
            (
                "tributary_snapshots_total",
                "Snapshots fetched from other nodes",
                |c| ClusterStats::get(&c.snapshots),
            ),
            (
                "tributary_snapshot_microseconds_total",
                "Time spent fetching snapshots",
                |c| ClusterStats::get(&c.snapshot_micros),
            ),
        ] {
            let c = prometheus::IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            cluster_counters.push((c, read));
        }
        let admin_refused = prometheus::IntCounter::new(
            "tributary_admin_connections_refused_total",
            "HTTP admin connections closed at accept because 256 were already open",
        )?;
        registry.register(Box::new(admin_refused.clone()))?;
        Ok(Self {
            admin_refused,
            registry,
            gauges,
            counters,
            dropped,
            errors,
            overflow,
            refused,
            http_refused,
            viewers,
            hls_bytes,
            limited,
            cluster_gauges,
            cluster_counters,
        })
    }

    fn render(&self, state: &AdminState) -> Vec<u8> {
        for (i, s) in state.shards.iter().enumerate() {
            let shard = i.to_string();
            for (g, read) in &self.gauges {
                g.with_label_values(&[&shard]).set(read(s) as i64);
            }
            let set = |c: &IntCounterVec, labels: &[&str], v: u64| {
                let c = c.with_label_values(labels);
                c.reset();
                c.inc_by(v);
            };
            for (c, read) in &self.counters {
                set(c, &[&shard], read(s));
            }
            set(
                &self.dropped,
                &[&shard, "slow_player"],
                ShardStats::get(&s.dropped_frames_slow),
            );
            set(
                &self.dropped,
                &[&shard, "shard_queue_full"],
                ShardStats::get(&s.dropped_frames_shard),
            );
            for (k, kind) in crate::auth::REFUSAL_KINDS.iter().enumerate() {
                set(
                    &self.refused,
                    &[&shard, kind],
                    ShardStats::get(&s.auth_refused[k]),
                );
            }
            for (k, kind) in ERROR_KINDS.iter().enumerate() {
                set(
                    &self.errors,
                    &[&shard, kind],
                    ShardStats::get(&s.protocol_errors[k]),
                );
            }
            for (k, reason) in HTTP_REFUSALS.iter().enumerate() {
                set(
                    &self.http_refused,
                    &[&shard, reason],
                    ShardStats::get(&s.http_refused[k]),
                );
            }
            let flv = ShardStats::get(&s.flv_viewers);
            let rtmp = ShardStats::get(&s.players)
                .saturating_sub(flv)
                .saturating_sub(ShardStats::get(&s.hls_windows));
            let hls = ShardStats::get(&s.hls_viewers);
            for (protocol, n) in [("rtmp", rtmp), ("http-flv", flv), ("ll-hls", hls)] {
                self.viewers
                    .with_label_values(&[&shard, protocol])
                    .set(n as i64);
            }
            for (k, queue) in QUEUE_KINDS.iter().enumerate() {
                set(
                    &self.overflow,
                    &[&shard, queue],
                    ShardStats::get(&s.queue_overflow[k]),
                );
            }
        }
        for (i, kind) in REFUSED_KINDS.iter().enumerate() {
            let c = self.limited.with_label_values(&[kind]);
            c.reset();
            c.inc_by(state.gate.refused[i].load(Ordering::Relaxed));
        }
        if let Some(cluster) = &state.cluster {
            for (g, read) in &self.cluster_gauges {
                g.set(read(&cluster.stats) as i64);
            }
            for (c, read) in &self.cluster_counters {
                c.reset();
                c.inc_by(read(&cluster.stats));
            }
        }
        self.hls_bytes.set(state.hls.usage().1 as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::host_is_address;

    #[test]
    fn only_addresses_and_localhost_pass_as_the_host_of_an_open_api() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "localhost",
            "LocalHost:8080",
            "localhost.:8080",
            "console.localhost:8080",
        ] {
            assert!(host_is_address(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "x",
            "rebind.example",
            "rebind.example:8080",
            "localhost.example:8080",
            "127.0.0.1.nip.io",
            "127.0.0.1:http",
            "127.0.0.1:99999",
            "::1",
            "[::1",
            "[::1]x",
            "[fe80::1%eth0]",
            "",
        ] {
            assert!(!host_is_address(bad.as_bytes()), "{bad}");
        }
        assert!(!host_is_address(b"\xff127.0.0.1"));
    }
}
