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
//! `/api/streams/APP/KEY/pushes` lists, adds and removes a stream's push
//! targets (`pushes.rs`).
//!
//! This file is the server and its routes; `metrics.rs` renders the
//! Prometheus families, one per counter the node keeps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};

use crate::cluster::{ClusterAudience, ClusterHandle, ClusterStats, NodeAudience};
use crate::node::{Directory, Gate, ShardStats};
use crate::stream::StreamKey;

mod metrics;
mod pushes;
mod recordings;
use metrics::Metrics;

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
    /// The exec thread, when pipelines or hooks are configured.
    pub exec: Option<crate::exec::Exec>,
    /// This node's recordings, when `record.path` is set.
    pub recordings: Option<std::sync::Arc<crate::node::Library>>,
    /// The players' settings: each app's latency budget, for the listing.
    pub players: crate::config::PlayersConfig,
    /// The SRT listener's counters, when SRT is on.
    pub srt: Option<Arc<crate::srt::thread::SrtCounters>>,
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
    if path.starts_with("/api/") {
        if let Some(refusal) = api_refusal(&req, state) {
            return refusal;
        }
    }
    if let Some(target) = path.strip_prefix("/api/streams/") {
        if let Some((stream, id)) = pushes::parse(target, req.method()) {
            let (stream, id) = (stream.to_owned(), id.map(str::to_owned));
            return pushes::serve(req, state, &stream, id.as_deref()).await;
        }
        if let Some(stream) = recordings::parse(target, req.method()) {
            let stream = stream.to_owned();
            return recordings::serve(req, state, &stream).await;
        }
        if let (Some(stream), &Method::GET) = (target.strip_suffix("/pipelines"), req.method()) {
            return pipelines(state, stream).await;
        }
        if req.method() == Method::DELETE {
            return kick(state, target).await;
        }
    }
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET; DELETE /api/streams/APP/KEY; POST /api/streams/APP/KEY/pushes\n",
        );
    }
    if let Some(answer) = console(path) {
        return answer;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(state),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(state),
        ),
        "/api/node" => node_info(state),
        "/api/streams" if query.split('&').any(|q| q == "scope=cluster") => {
            cluster_streams(state).await
        }
        "/api/play" => play_query(state, query),
        "/api/nodes" => nodes(state).await,
        "/api/recordings" => recordings::list(state, query).await,
        "/api/streams" => node_streams(state),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Why a request to `/api/*` is refused, if it is: without
/// `http.admin_token`, a `Host` that is not an address or localhost; with
/// it, a missing or wrong bearer token.
fn api_refusal(req: &hyper::Request<hyper::body::Incoming>, state: &AdminState) -> Option<Reply> {
    if state.admin_token.is_empty() {
        // An open API answers only what a browser sends to an address or to
        // localhost: a page whose name was rebound to this address (DNS
        // rebinding) would otherwise read it and kick publishers as if it
        // were the console. With a token, the token is the check.
        let host = req.headers().get(HOST).map(HeaderValue::as_bytes);
        if !host.is_none_or(host_is_address) {
            return Some(text(
                StatusCode::FORBIDDEN,
                "with http.admin_token empty, /api/* answers only requests to an IP address or localhost (Host header); set http.admin_token to use a host name\n",
            ));
        }
    }
    if !state.admin_token.is_empty() {
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|t| constant_time_eq(t.as_bytes(), state.admin_token.as_bytes()))
        {
            return Some(text(
                StatusCode::UNAUTHORIZED,
                "Authorization: Bearer <http.admin_token> required\n",
            ));
        }
    }
    None
}

/// `/readyz`: ready unless draining, or cut off from NATS in a cluster.
fn readyz(state: &AdminState) -> Reply {
    match readiness(state) {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// What `/readyz` answers (and `tributary_ready` shows): ready unless
/// draining, or a cluster node cut off from NATS, which can serve only its
/// own streams (not ready, so health-checked DNS sends players elsewhere).
pub(crate) fn readiness(state: &AdminState) -> Result<(), &'static str> {
    let nats_down = state
        .cluster
        .as_ref()
        .is_some_and(|c| ClusterStats::get(&c.stats.connected) == 0);
    if !state.ready.load(Ordering::Relaxed) {
        Err("not ready\n")
    } else if nats_down {
        Err("not connected to NATS\n")
    } else {
        Ok(())
    }
}

/// `/api/node`: this node, its counters summed over its shards.
fn node_info(state: &AdminState) -> Reply {
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
                .saturating_sub(ShardStats::get(&s.srt_viewers))
                .saturating_sub(ShardStats::get(&s.hls_windows))),
            "http_flv": sum(|s| ShardStats::get(&s.flv_viewers)),
            "ll_hls": sum(|s| ShardStats::get(&s.hls_viewers)),
            "srt": sum(|s| ShardStats::get(&s.srt_viewers)),
        },
        "hls_streams": sum(|s| ShardStats::get(&s.hls_windows)),
    });
    json(StatusCode::OK, &body)
}

/// `/api/streams?scope=cluster`: the registry's streams with the
/// viewers summed over every node that answered.
async fn cluster_streams(state: &AdminState) -> Reply {
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
                        "api_pushes": reg.pushes.len(),
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

/// `/api/play?stream=APP/KEY`: what a play of it must add to its URL
/// under the play rules (a token valid for an hour, or nothing): the
/// console's previews of token apps use it.
fn play_query(state: &AdminState, query: &str) -> Reply {
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

/// `/api/nodes`: the cluster's nodes, or this one alone.
async fn nodes(state: &AdminState) -> Reply {
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

/// `/api/streams`: this node's streams, with their viewers here.
fn node_streams(state: &AdminState) -> Reply {
    let audience = state.gate.audience();
    let streams: Vec<_> = state
        .directory
        .snapshot()
        .into_iter()
        .map(|l| {
            let viewers = audience.of(&l.key);
            let latency = state.players.latency(l.key.app());
            serde_json::json!({
                "app": l.key.app(), "name": l.key.name(), "node": state.node_id,
                "shard": l.shard, "relayed": l.relayed, "started_ms": l.started_ms,
                "video_codec": l.report.video_codec, "audio_codec": l.report.audio_codec,
                "bitrate_kbps": l.report.bitrate_kbps,
                "viewers": viewers, "viewers_total": viewers.total(),
                "players_latency": {
                    "mode": latency.mode(), "max_wait_ms": latency.max_wait_ms(),
                },
                "srt": l.srt.map(|s| serde_json::json!({
                    "packets_lost": s.lost, "packets_retransmitted": s.retransmitted,
                    "packets_dropped": s.dropped, "rtt_ms": s.rtt_ms, "latency_ms": s.latency_ms,
                })),
            })
        })
        .collect();
    let body = serde_json::json!({ "scope": "node", "streams": streams });
    json(StatusCode::OK, &body)
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
            include_bytes!("../../console/index.html"),
        ),
        "/console/console.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../console/console.js"),
        ),
        "/console/vendor/hls.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../console/vendor/hls.min.js"),
        ),
        "/console/vendor/mpegts.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../console/vendor/mpegts.js"),
        ),
        "/console/vendor/LICENSES.txt" => (
            "text/plain; charset=utf-8",
            include_bytes!("../../console/vendor/LICENSES.txt"),
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

/// GET /api/streams/APP/KEY/pipelines: the stream's exec pipelines on this
/// node (state, pid, restarts, the last exit).
async fn pipelines(state: &AdminState, stream: &str) -> Reply {
    let key = match StreamKey::from_url_path(stream) {
        Ok(key) => key,
        Err(e) => return bad_name(e),
    };
    let list = match &state.exec {
        Some(exec) => exec.status(&key).await,
        None => None,
    };
    match list {
        Some(list) => json(StatusCode::OK, &serde_json::json!({ "pipelines": list })),
        None => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "the stream runs no pipeline on this node" }),
        ),
    }
}

/// Whether a request says its body is JSON: a web page can send a form
/// or `text/plain` to the admin address without a CORS preflight, never
/// JSON, so the routes that change something ask for it.
fn is_json(req: &hyper::Request<hyper::body::Incoming>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
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
