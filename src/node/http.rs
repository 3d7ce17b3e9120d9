//! HTTP media on the shards (`[media] listen`, `--media-listen`): the same
//! socket ring, the same send path and the same hub as RTMP players.
//!
//! - `GET /APP/KEY.flv[?query]` is HTTP-FLV: a `200` with an FLV header,
//!   then the stream from its GOP cache (metadata, sequence headers, the
//!   last keyframe on) and live, as FLV tags encoded once per message and
//!   shared by every HTTP-FLV viewer of the shard. The body ends when the
//!   stream does (the connection closes). Any stream live anywhere in the
//!   cluster plays, relayed as an RTMP play is; the `[auth]` play rules
//!   apply (a `?token=`, the webhook). The slow-player rules are RTMP's.
//! - `GET /APP/KEY/index.m3u8` is Low-Latency HLS (see [`super::hls`]):
//!   a viewer's first request gets a multivariant playlist naming its
//!   session ([`super::hls::session`]), its reloads the media playlist,
//!   with blocking reload (`_HLS_msn`, `_HLS_part`); its
//!   `init*.mp4`, `seg*.m4s` and `part*.*.m4s` beside it, from memory. A
//!   request for the part the playlist hints at waits for it. These answers
//!   keep the connection open for the next request.
//! - `HEAD` answers the same headers without a body; `OPTIONS` answers a
//!   CORS preflight.
//! - Bad input gets a clear 4xx with the reason in the body and closes that
//!   connection: a malformed request 400, a request head over 8 KiB 431,
//!   another method 405, an unknown path or stream 404, a refused play 403,
//!   a player limit 503. A request head must arrive within
//!   `rtmp.handshake_timeout_ms`.
//!
//! Requests are parsed with `httparse` straight from the ring's buffers
//! (copied only while a request head is split across reads).
//!
//! Long (about 1000 lines, an eighth of them tests): one connection loop
//! serves both media kinds, and the routes, answers and admission of each
//! kind sit beside it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::flv::{write_header, FlvHeader};
use crate::protocol::server::redact;
use crate::stream::Protocol;

use super::admission::{self, Asker, Refusal};
use super::conn::{Conn, End, Input, Notice};
use super::connection::{decrypt, ConnectionContext};
use super::gate::Ticket;
use super::hls::run::HlsShard;
use super::hls::{self, lock, session, Block, Ready, Resource};
use super::hub::{PlayOutcome, Player};
use super::ring::SocketRing;
use super::StreamKey;

/// The largest request head (request line and headers) taken.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The most headers a request may carry.
const MAX_HEADERS: usize = 48;
/// The most input held for requests not yet answered (pipelining).
const MAX_PIPELINED: usize = 64 * 1024;
/// Answers queued and not yet sent past which the next pipelined request
/// waits (a client that asks faster than it reads).
const MAX_ANSWER_BACKLOG: usize = 4 * 1024 * 1024;

/// Settings of the HTTP media listener.
pub struct HttpContext {
    /// `Access-Control-Allow-Origin`; empty = no CORS headers.
    pub cors_origin: String,
    /// LL-HLS viewers named by a session in their playlist URL (else a
    /// viewer is a connection).
    pub hls_sessions: bool,
    pub hls: Rc<HlsShard>,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// HTTP-FLV of `key`, with the request's query (where tokens live).
    Flv { key: StreamKey, query: &'a str },
    /// LL-HLS: a resource of `key`, with the request's query.
    Hls {
        key: StreamKey,
        resource: Resource,
        query: &'a str,
    },
    /// A CORS preflight.
    Preflight,
}

/// An answer that ends the exchange, and how it is counted.
#[derive(Debug, PartialEq, Eq)]
struct Failure {
    status: u16,
    reason: String,
    /// As in [`super::stats::HTTP_REFUSALS`].
    kind: &'static str,
}

impl Failure {
    fn new(status: u16, kind: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            kind,
        }
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A parsed request head: the method, the path with its query, whether
/// the client keeps the connection open, and the head's length.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    keep_alive: bool,
    len: usize,
}

/// Parses a request head from `buf`: None while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Request>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => Err(Failure::new(
            431,
            "header_too_large",
            format!("the request head is over {MAX_REQUEST_HEAD} bytes"),
        )),
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) if len > MAX_REQUEST_HEAD => Err(Failure::new(
            431,
            "header_too_large",
            format!("the request head is over {MAX_REQUEST_HEAD} bytes"),
        )),
        Ok(httparse::Status::Complete(len)) => {
            check_no_body(req.headers)?;
            let close = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection")
                    && String::from_utf8_lossy(h.value)
                        .split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("close"))
            });
            Ok(Some(Request {
                method: req.method.unwrap_or_default().to_owned(),
                target: req.path.unwrap_or_default().to_owned(),
                keep_alive: req.version == Some(1) && !close,
                len,
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(Failure::new(
            431,
            "header_too_large",
            format!("more than {MAX_HEADERS} headers"),
        )),
        Err(e) => Err(Failure::new(
            400,
            "bad_request",
            format!("malformed request: {e}"),
        )),
    }
}

/// Refuses a request that carries a body or frames one ambiguously: every
/// method served here (GET, HEAD, OPTIONS) has none, and reading a body's
/// bytes as the next request would answer requests nobody sent (request
/// smuggling behind a proxy that keeps connections open). A
/// `Transfer-Encoding` of any kind, a `Content-Length` other than `0`, or
/// more than one `Content-Length` is a 400 that closes the connection.
fn check_no_body(headers: &[httparse::Header<'_>]) -> Result<(), Failure> {
    let bad = |why: &str| Failure::new(400, "bad_request", why);
    let mut lengths = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("a request here carries no body (Transfer-Encoding)"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if lengths > 1 {
                return Err(bad("more than one Content-Length"));
            }
            let value = h.value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(bad("a malformed Content-Length"));
            }
            if value.iter().any(|&d| d != b'0') {
                return Err(bad("a request here carries no body (Content-Length)"));
            }
        }
    }
    Ok(())
}

/// Whether `input` may join the `held` bytes of requests not yet answered
/// (pipelining is bounded by [`MAX_PIPELINED`]).
fn may_hold(held: usize, input: usize) -> Result<(), Failure> {
    if held + input > MAX_PIPELINED {
        return Err(Failure::new(
            431,
            "pipeline_overflow",
            format!("over {MAX_PIPELINED} bytes of requests ahead of their answers"),
        ));
    }
    Ok(())
}

/// Where a request goes, from its method and target.
fn route(req: &Request) -> Result<(Route<'_>, bool), Failure> {
    let head = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        "OPTIONS" => return Ok((Route::Preflight, false)),
        other => {
            return Err(Failure::new(
                405,
                "method",
                format!("method {other} is not served here (GET, HEAD, OPTIONS)"),
            ))
        }
    };
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.target.as_str(), None),
    };
    let not_found = || {
        Failure::new(
            404,
            "not_found",
            "no such path (try /APP/KEY.flv or /APP/KEY/index.m3u8)",
        )
    };
    let path = path.strip_prefix('/').ok_or_else(not_found)?;
    // The path is decoded once, here; the stream's name is then read by
    // the one rule (`StreamKey`), which refuses a `%` left after decoding.
    let bad_name = |e: crate::stream::NameError| {
        Failure::new(400, "bad_request", format!("not a stream name: {e}"))
    };
    let path = crate::stream::percent_decode(path).map_err(bad_name)?;
    let query = query.unwrap_or("");
    let (dir, file) = path.rsplit_once('/').ok_or_else(not_found)?;
    if let Some(resource) = Resource::parse(file) {
        if !dir.contains('/') {
            return Err(not_found());
        }
        let key = StreamKey::parse(dir).map_err(bad_name)?;
        return Ok((
            Route::Hls {
                key,
                resource,
                query,
            },
            head,
        ));
    }
    if let Some(joined) = path.strip_suffix(".flv") {
        let key = StreamKey::parse(joined).map_err(bad_name)?;
        return Ok((Route::Flv { key, query }, head));
    }
    Err(not_found())
}

fn refusal_failure(r: &Refusal) -> Failure {
    match r {
        Refusal::Auth { reason, .. } => Failure::new(403, "forbidden", reason.clone()),
        Refusal::NotFound => Failure::new(404, "not_found", "no such stream"),
        Refusal::BadName(_) => Failure::new(400, "bad_request", r.to_string()),
        other => Failure::new(503, "limit", other.to_string()),
    }
}

/// The head of an answer that closes the connection, CORS headers included
/// when configured.
fn response_head(status: u16, headers: &[(&str, &str)], cors: &str) -> BytesMut {
    head_with(status, headers, cors, false)
}

fn head_with(status: u16, headers: &[(&str, &str)], cors: &str, keep_alive: bool) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(format!("HTTP/1.1 {status} {}\r\n", status_text(status)).as_bytes());
    out.put_slice(if keep_alive {
        b"Server: tributary\r\nConnection: keep-alive\r\n".as_slice()
    } else {
        b"Server: tributary\r\nConnection: close\r\n".as_slice()
    });
    for (name, value) in headers {
        out.put_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !cors.is_empty() {
        out.put_slice(format!("Access-Control-Allow-Origin: {cors}\r\n").as_bytes());
    }
    out.put_slice(b"\r\n");
    out
}

fn failure_response(f: &Failure, cors: &str) -> Bytes {
    let body = format!("{}\n", f.reason);
    let len = body.len().to_string();
    let mut out = response_head(
        f.status,
        &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", &len),
        ],
        cors,
    );
    out.put_slice(body.as_bytes());
    out.freeze()
}

fn preflight_response(cors: &str) -> Bytes {
    let mut headers = vec![("Content-Length", "0")];
    if !cors.is_empty() {
        headers.push(("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"));
        headers.push(("Access-Control-Allow-Headers", "*"));
        headers.push(("Access-Control-Max-Age", "86400"));
    }
    response_head(204, &headers, cors).freeze()
}

/// An HTTP-FLV viewer being served.
struct Viewer {
    key: StreamKey,
    _place: Ticket,
}

/// Serves one HTTP media connection until it closes.
pub async fn serve(
    conn: Rc<Conn>,
    peer: SocketAddr,
    ctx: Rc<ConnectionContext>,
    http: Rc<HttpContext>,
    ring: Rc<SocketRing>,
    _place: Ticket,
) {
    {
        let mut open = ctx.open.borrow_mut();
        open.retain(|w| w.strong_count() > 0);
        open.push(Rc::downgrade(&conn));
    }
    let cors = http.cors_origin.as_str();
    // The request head so far, while it is split across reads.
    let mut head: Vec<u8> = Vec::new();
    let mut plain = Vec::new();
    let mut viewer: Option<Viewer> = None;
    // The LL-HLS session this connection was last given (it gets the same
    // one when it asks again without naming it).
    let mut given: Option<session::Given> = None;
    let reason: Option<String> = loop {
        let mut lease = match conn.next_input().await {
            Input::Data(lease) => lease,
            Input::Notice(notice) => match notice {
                Notice::Ended { waiting: true, .. } => continue,
                Notice::Republished { stream_id } => {
                    if let Some(v) = &viewer {
                        ctx.hub.with(|h| h.resume(&v.key, conn.id, stream_id));
                    }
                    continue;
                }
                // The stream ended (or never came), or the node stops: the
                // body ends with the connection.
                Notice::Ended { .. } | Notice::NotFound { .. } | Notice::Shutdown => break None,
            },
            Input::Closed | Input::End(End::Eof) => break None,
            Input::End(e @ End::Stalled(_)) => {
                ctx.stats.add_disconnected_slow();
                break Some(e.to_string());
            }
            Input::End(e) => break Some(e.to_string()),
        };
        if viewer.is_some() {
            // Nothing more is read once the body streams.
            continue;
        }
        let input: &[u8] = match &conn.tls {
            None => &lease[..],
            Some(tls) => {
                plain.clear();
                if let Err(e) = decrypt(tls, &mut lease, &mut plain) {
                    conn.schedule();
                    break Some(format!("TLS: {e}"));
                }
                if tls.borrow().wants_write() {
                    conn.schedule();
                }
                &plain
            }
        };
        if input.is_empty() {
            continue;
        }
        if let Err(f) = may_hold(head.len(), input.len()) {
            break Some(fail(&conn, &ctx, &f, cors));
        }
        head.extend_from_slice(input);
        drop(lease);
        // Every complete request in the buffer, in order (keep-alive and
        // pipelining); the loop ends when the head is incomplete again.
        let mut done: Option<Option<String>> = None;
        while done.is_none() {
            // A client that asks faster than it reads waits for its answers
            // to drain (the write-stall limit cuts one that stops reading).
            conn.room(MAX_ANSWER_BACKLOG).await;
            let req = match parse_head(&head) {
                Ok(None) => break,
                Ok(Some(req)) => req,
                Err(f) => {
                    done = Some(Some(fail(&conn, &ctx, &f, cors)));
                    break;
                }
            };
            head.drain(..req.len);
            conn.set_connected();
            ctx.stats.http_requests.fetch_add(1, Ordering::Relaxed);
            let (route, head_only) = match route(&req) {
                Ok(r) => r,
                Err(f) => {
                    done = Some(Some(fail(&conn, &ctx, &f, cors)));
                    break;
                }
            };
            match route {
                Route::Preflight => {
                    conn.push_urgent(preflight_response(cors));
                    done = Some(None);
                }
                Route::Flv { key, query } => {
                    match start_flv(&conn, peer, &key, query, head_only, &ctx, cors).await {
                        Ok(Some(v)) => viewer = Some(v),
                        Ok(None) => {}
                        Err(f) => done = Some(Some(fail(&conn, &ctx, &f, cors))),
                    }
                    // The FLV body runs until the stream ends; a HEAD closes.
                    if viewer.is_none() && done.is_none() {
                        done = Some(None);
                    }
                    break;
                }
                Route::Hls {
                    key,
                    resource,
                    query,
                } => {
                    let who = HlsAsk {
                        conn: &conn,
                        peer,
                        key,
                        query,
                    };
                    match serve_hls(&who, resource, &mut given, &ctx, &http, &ring).await {
                        Ok(answer) => {
                            let keep = req.keep_alive;
                            answer.send(&conn, head_only, cors, keep);
                            if !keep {
                                done = Some(None);
                            }
                        }
                        Err(f) => done = Some(Some(fail(&conn, &ctx, &f, cors))),
                    }
                }
            }
        }
        if let Some(reason) = done {
            break reason;
        }
        if viewer.is_some() {
            continue;
        }
        if conn.is_closed() {
            break None;
        }
    };
    if let Some(reason) = reason {
        tracing::info!(%peer, conn = conn.id, "http connection closed: {reason}");
    }
    if viewer.take().is_some() {
        ctx.stats.flv_viewers.fetch_sub(1, Ordering::Relaxed);
    }
    ctx.hub.with(|h| h.leave(conn.id));
    ring.finish(&conn);
    ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Answers a failure, counts it and returns the line to log.
fn fail(conn: &Conn, ctx: &ConnectionContext, f: &Failure, cors: &str) -> String {
    ctx.stats.add_http_refused(f.kind);
    conn.push_urgent(failure_response(f, cors));
    format!("{} {}", f.status, f.reason)
}

/// Admits an HTTP-FLV play and attaches the viewer; None for a HEAD (the
/// headers are all it gets).
async fn start_flv(
    conn: &Rc<Conn>,
    peer: SocketAddr,
    key: &StreamKey,
    query: &str,
    head_only: bool,
    ctx: &ConnectionContext,
    cors: &str,
) -> Result<Option<Viewer>, Failure> {
    let who = Asker {
        conn: conn.id,
        key,
        query,
        peer,
    };
    let admitted = match admission::play(&who, Protocol::HttpFlv, ctx).await {
        Ok(p) => p,
        Err(refusal) => {
            if let Refusal::Auth { kind, .. } = &refusal {
                ctx.stats.add_auth_refused(kind);
            }
            tracing::info!(conn = conn.id, stream = %redact(key), "http-flv play refused: {refusal}");
            return Err(refusal_failure(&refusal));
        }
    };
    let (has_audio, has_video) = ctx
        .hub
        .read(|h| h.tracks(&admitted.key))
        .unwrap_or((true, true));
    let mut out = response_head(
        200,
        &[
            ("Content-Type", "video/x-flv"),
            ("Cache-Control", "no-cache, no-store"),
        ],
        cors,
    );
    if head_only {
        conn.push_urgent(out.freeze());
        return Ok(None);
    }
    write_header(
        &mut out,
        FlvHeader {
            has_audio,
            has_video,
        },
    );
    // The head and the FLV header leave before the cached media the hub
    // queues behind them.
    conn.push_urgent(out.freeze());
    conn.set_read_only_peer();
    let player = Player::flv(conn.id, conn.clone());
    let key = admitted.key;
    let (live, wait, now) = (admitted.live, admitted.wait, Instant::now());
    let outcome = ctx
        .hub
        .with(|h| h.start_player(&key, player, live, wait, now));
    if let PlayOutcome::NotFound = outcome {
        // It ended between the check and now: an empty body.
        return Ok(None);
    }
    ctx.stats.flv_viewers.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(conn = conn.id, stream = %redact(&key), "http-flv viewer");
    Ok(Some(Viewer {
        key,
        _place: admitted.place,
    }))
}

/// Who asks for an LL-HLS resource.
struct HlsAsk<'a> {
    conn: &'a Rc<Conn>,
    peer: SocketAddr,
    key: StreamKey,
    query: &'a str,
}

impl HlsAsk<'_> {
    /// The asker as admission reads it: the key and the request's query.
    fn asker(&self) -> Asker<'_> {
        Asker {
            conn: self.conn.id,
            key: &self.key,
            query: self.query,
            peer: self.peer,
        }
    }
}

/// An LL-HLS answer: its content type, caching, and body (shared `Bytes`).
struct Answer {
    content_type: &'static str,
    cache: &'static str,
    body: Vec<Bytes>,
}

impl Answer {
    /// An init segment, segment or part.
    fn media(body: Vec<Bytes>, cache: &'static str) -> Self {
        Self {
            content_type: "video/mp4",
            cache,
            body,
        }
    }

    fn send(self, conn: &Conn, head_only: bool, cors: &str, keep_alive: bool) {
        let len = self.body.iter().map(Bytes::len).sum::<usize>().to_string();
        let head = head_with(
            200,
            &[
                ("Content-Type", self.content_type),
                ("Cache-Control", self.cache),
                ("Content-Length", &len),
            ],
            cors,
            keep_alive,
        );
        conn.push_urgent(head.freeze());
        if !head_only {
            for b in self.body {
                conn.push_urgent(b);
            }
        }
    }
}

/// The `_HLS_msn` / `_HLS_part` a playlist request blocks on, and the rest
/// of its query (for the URIs in the playlist).
fn blocking(query: &str) -> Result<(Option<Block>, String), Failure> {
    let bad = |what| Failure::new(400, "bad_request", format!("bad {what}"));
    let (mut msn, mut part, mut rest) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("_HLS_msn", v)) => msn = Some(v.parse::<u64>().map_err(|_| bad("_HLS_msn"))?),
            Some(("_HLS_part", v)) => {
                part = Some(v.parse::<usize>().map_err(|_| bad("_HLS_part"))?)
            }
            Some(("_HLS_skip", _)) => {}
            _ => rest.push(pair),
        }
    }
    let block = match (msn, part) {
        (Some(msn), part) => Some(Block { msn, part }),
        (None, None) => None,
        (None, Some(_)) => return Err(bad("_HLS_part without _HLS_msn")),
    };
    Ok((block, rest.join("&")))
}

/// How long a request may wait for what it names (a blocking playlist
/// reload, the hinted part, the segment being built): three target
/// durations, the RFC's limit.
fn wait_limit(window: &std::sync::Mutex<hls::Window>) -> Duration {
    Duration::from_secs(3 * lock(window).target_duration as u64)
}
const FIRST_PLAYLIST_WAIT: Duration = Duration::from_secs(12);

/// Waits until `ready` gives an answer or `deadline` passes; `ready`
/// marks this shard as waiting on the window when it is not ready yet.
async fn wait_for<T>(
    hls: &HlsShard,
    deadline: Instant,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        let seen = hls.wake.epoch();
        if let Some(t) = ready() {
            return Some(t);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        futures_lite::future::or(hls.wake.changed(seen), async {
            glommio::timer::sleep(deadline - now).await;
        })
        .await;
    }
}

/// The stream's window on this node, its packaging started (here, or on
/// the shard that has the stream) if it is not yet.
async fn window_of(
    who: &HlsAsk<'_>,
    ctx: &Rc<ConnectionContext>,
    http: &HttpContext,
    ring: &SocketRing,
) -> Result<std::sync::Arc<std::sync::Mutex<hls::Window>>, Failure> {
    let hls = &http.hls;
    let asker = who.asker();
    let key = asker.key();
    let not_found = || Failure::new(404, "not_found", "no such stream");
    if let Some(w) = hls.registry.get(&key) {
        if !lock(&w).ended {
            return Ok(w);
        }
        // Its stream ended. If the key is live again (here or anywhere in
        // the cluster), a new window starts now rather than after the old
        // one's grace; otherwise players read its end.
        match admission::locate(&asker, ctx).await {
            Ok((_, live, _)) if live || ctx.cluster.is_some() => {
                hls.registry.remove(&key, &w);
                // Its viewers give back their places now: their next
                // requests are admitted to the new window.
                lock(&w).expire_sessions(Instant::now(), true);
            }
            _ => return Ok(w),
        }
    }
    let owner = ctx.hub.read(|h| h.owner(&key));
    match owner {
        Some(o) if o != hls.shard => {
            // That shard packages it; this one waits for the window.
            ctx.hub.with(|h| h.ask_to_package(o, key.clone()));
            let deadline = Instant::now() + FIRST_PLAYLIST_WAIT;
            wait_for(hls, deadline, || hls.registry.get(&key))
                .await
                .ok_or_else(not_found)
        }
        Some(_) => hls::run::start(&key, true, Duration::ZERO, hls, ctx, ring.new_id())
            .ok_or_else(not_found),
        None => {
            let (key, live, wait) = admission::locate(&asker, ctx)
                .await
                .map_err(|r| refusal_failure(&r))?;
            if live {
                // Published here meanwhile: ask again, it has an owner now.
                return Err(Failure::new(503, "limit", "the stream is starting; retry"));
            }
            hls::run::start(&key, false, wait, hls, ctx, ring.new_id()).ok_or_else(not_found)
        }
    }
}

/// Answers one LL-HLS request. A viewer's first playlist request goes
/// through the play rules (and the webhook) and gets a multivariant
/// playlist naming its session; its reloads name the session, which keeps
/// its place among the stream's viewers ([`hls::session`]). Its parts and
/// segments have URIs every viewer shares.
async fn serve_hls(
    who: &HlsAsk<'_>,
    resource: Resource,
    given: &mut Option<session::Given>,
    ctx: &Rc<ConnectionContext>,
    http: &HttpContext,
    ring: &SocketRing,
) -> Result<Answer, Failure> {
    let hls = &http.hls;
    let asker = who.asker();
    let refused = |refusal: Refusal| {
        if let Refusal::Auth { kind, .. } = &refusal {
            ctx.stats.add_auth_refused(kind);
        }
        tracing::info!(conn = who.conn.id, stream = %redact(&who.key), "hls play refused: {refusal}");
        refusal_failure(&refusal)
    };
    let (block, query) = match resource {
        Resource::Playlist => blocking(who.query)?,
        _ => (None, String::new()),
    };
    // The viewer's session, and the rest of the query (what the media URIs
    // carry: the token, say).
    let (named, query) = session::split(&query);
    let peer = who.peer.ip();
    // A session to admit once the answer is ready.
    let mut admit: Option<(String, session::Session)> = None;
    // The multivariant playlist's query (with the session), when this
    // request is a viewer's first.
    let mut multivariant: Option<String> = None;
    let window = match resource {
        // A playlist goes through the play rules and the webhook (once per
        // viewer), and starts the packaging; the media it lists through
        // the rules only.
        Resource::Playlist => {
            let asker = Asker {
                query: &query,
                ..asker
            };
            let key = asker.key();
            let now = Instant::now();
            // A first request on a connection that was given a session
            // for this stream and query gets that session again.
            let again = given
                .as_ref()
                .filter(|g| named.is_none() && g.key == key && g.query == query)
                .map(|g| g.id.clone());
            let id = named.map(str::to_owned).or(again);
            let known = id.as_deref().is_some_and(|id| {
                hls.registry
                    .get(&key)
                    .is_some_and(|w| lock(&w).touch(id, peer, now))
            });
            if !known {
                admission::authorize(crate::auth::Action::Play, &asker, ctx)
                    .await
                    .map_err(refused)?;
            }
            let window = window_of(who, ctx, http, ring).await?;
            let id = match id {
                Some(id) => id,
                None => session::new_id()
                    .ok_or_else(|| Failure::new(503, "limit", "no random source for a session"))?,
            };
            if !known {
                let place = ctx
                    .gate
                    .player(&key, Protocol::LlHls)
                    .map_err(|_| refused(Refusal::PlayerLimit))?;
                let viewer = session::Session::new(place, ctx.stats.clone(), peer, now);
                admit = Some((id.clone(), viewer));
            }
            if named.is_none() {
                // Without sessions in URLs, the connection's own session
                // (`given`) is the viewer, and the playlist comes at once.
                if http.hls_sessions {
                    multivariant = Some(session::with(&query, &id));
                }
                *given = Some(session::Given {
                    key,
                    query: query.clone(),
                    id,
                });
            }
            window
        }
        _ => {
            let secs = admission::unix_micros() / 1_000_000;
            if let Err(r) = ctx
                .auth
                .check(crate::auth::Action::Play, &who.key, who.query, secs)
            {
                return Err(refused(Refusal::Auth {
                    reason: r.to_string(),
                    kind: r.kind(),
                }));
            }
            hls.registry
                .get(&asker.key())
                .ok_or_else(|| Failure::new(404, "not_found", "no such stream"))?
        }
    };
    let me = 1u64 << hls.shard.min(63);
    let gone = || Failure::new(404, "not_found", "not in the playlist's window");
    let timeout = || Failure::new(503, "limit", "not ready in time");
    match resource {
        Resource::Playlist => {
            let limit = match block {
                Some(_) => wait_limit(&window),
                None => FIRST_PLAYLIST_WAIT,
            };
            let text = wait_for(hls, Instant::now() + limit, || {
                let mut w = lock(&window);
                w.last_request = Instant::now();
                match w.ready(block) {
                    Ready::Now => Some(Ok(match &multivariant {
                        Some(q) => w.multivariant(q),
                        None => w.playlist(&query),
                    })),
                    Ready::TooFar => Some(Err(Failure::new(
                        400,
                        "bad_request",
                        "_HLS_msn is more than two segments past the live edge",
                    ))),
                    Ready::Wait => {
                        w.watchers |= me;
                        None
                    }
                }
            })
            .await
            .ok_or_else(timeout)??;
            // Answered: the viewer's session takes its place, pending from
            // now (the first answer may have waited for a segment).
            if let Some((id, mut viewer)) = admit {
                viewer.last_seen = Instant::now();
                if !lock(&window).admit(id, viewer) {
                    return Err(refused(Refusal::PlayerLimit));
                }
            }
            Ok(Answer {
                content_type: "application/vnd.apple.mpegurl",
                cache: "no-cache",
                body: vec![Bytes::from(text)],
            })
        }
        Resource::Init(generation) => {
            let init = lock(&window).init_segment(generation).ok_or_else(gone)?;
            Ok(Answer::media(vec![init], "max-age=3600"))
        }
        Resource::Segment(msn) => {
            let body = wait_for(hls, Instant::now() + wait_limit(&window), || {
                let mut w = lock(&window);
                w.last_request = Instant::now();
                match w.segment(msn) {
                    Some(s) if s.complete => Some(Ok(s
                        .parts
                        .iter()
                        .flat_map(|p| p.bytes.iter().cloned())
                        .collect::<Vec<_>>())),
                    // The segment being built: it will be complete soon.
                    Some(_) if !w.ended => {
                        w.watchers |= me;
                        None
                    }
                    _ => Some(Err(gone())),
                }
            })
            .await
            .ok_or_else(timeout)??;
            Ok(Answer::media(body, "max-age=60"))
        }
        Resource::Part(msn, n) => {
            let body = wait_for(hls, Instant::now() + wait_limit(&window), || {
                let mut w = lock(&window);
                w.last_request = Instant::now();
                let next = w.segments.back().map_or((0, 0), |s| {
                    if s.complete {
                        (s.msn + 1, 0)
                    } else {
                        (s.msn, s.parts.len())
                    }
                });
                match w.segment(msn).and_then(|s| s.parts.get(n)) {
                    Some(p) => Some(Ok(p.bytes.clone())),
                    // The part the playlist hints at: wait for it.
                    None if (msn, n) == next && !w.ended => {
                        w.watchers |= me;
                        None
                    }
                    None => Some(Err(gone())),
                }
            })
            .await
            .ok_or_else(timeout)??;
            Ok(Answer::media(body, "max-age=60"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            keep_alive: true,
            len: 0,
        }
    }

    #[test]
    fn a_request_head_is_taken_whole_and_bounded() {
        assert_eq!(
            parse_head(b"GET /live/a.flv HTTP/1.1\r\nHost: x\r\n"),
            Ok(None)
        );
        let head = b"GET /live/a.flv?token=t HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_head(head),
            Ok(Some(Request {
                len: head.len(),
                ..req("GET", "/live/a.flv?token=t")
            }))
        );
        let close = parse_head(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(!close.unwrap().unwrap().keep_alive);
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!old.unwrap().unwrap().keep_alive);
        let bad = parse_head(b"GET /live/a.flv HTTP/1.1\r\nHo st: x\r\n\r\n").unwrap_err();
        assert_eq!((bad.status, bad.kind), (400, "bad_request"));
        let mut huge = b"GET /live/a.flv HTTP/1.1\r\nX-Big: ".to_vec();
        huge.resize(MAX_REQUEST_HEAD, b'a');
        assert_eq!(parse_head(&huge).unwrap_err().status, 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many).unwrap_err().status, 431);
    }

    #[test]
    fn a_request_that_carries_a_body_is_refused() {
        for head in [
            "Content-Length: 40",
            "content-length: 1",
            "Content-Length: 00001",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: identity",
            "Content-Length: 0\r\nContent-Length: 0",
            "Content-Length: 0\r\nTransfer-Encoding: chunked",
            "Content-Length: +0",
            "Content-Length: -0",
            "Content-Length: 0x0",
            "Content-Length: 0, 0",
            "Content-Length: ",
        ] {
            let request = format!("GET /live/a.flv HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n");
            let f = parse_head(request.as_bytes()).unwrap_err();
            assert_eq!((f.status, f.kind), (400, "bad_request"), "{head}");
        }
        for head in ["Content-Length: 0", "Content-Length:  000 ", "X-Length: 5"] {
            let request = format!("HEAD /live/a.flv HTTP/1.1\r\n{head}\r\n\r\n");
            assert!(parse_head(request.as_bytes()).unwrap().is_some(), "{head}");
        }
    }

    #[test]
    fn pipelined_input_is_bounded_under_its_own_reason() {
        assert!(may_hold(MAX_PIPELINED - 10, 10).is_ok());
        let f = may_hold(MAX_PIPELINED - 10, 11).unwrap_err();
        assert_eq!((f.status, f.kind), (431, "pipeline_overflow"));
    }

    #[test]
    fn routes_name_the_stream_by_the_one_rule_and_keep_its_query() {
        assert_eq!(
            route(&req("GET", "/live/cam.flv?token=abc")).unwrap(),
            (
                Route::Flv {
                    key: StreamKey::from("live/cam"),
                    query: "token=abc"
                },
                false
            )
        );
        // The app is the first segment, whatever the path looks like.
        for target in ["/a/b/cam.flv", "/a%2Fb/cam.flv", "/a/b%2Fcam.flv"] {
            let request = req("HEAD", target);
            let (route, head) = route(&request).unwrap();
            assert!(head);
            assert_eq!(
                route,
                Route::Flv {
                    key: StreamKey::from("a/b/cam"),
                    query: ""
                },
                "{target}"
            );
        }
        match route(&req("GET", "/a/b/cam/index.m3u8?x=1")).unwrap().0 {
            Route::Hls { key, query, .. } => {
                assert_eq!((key.app(), key.name(), query), ("a", "b/cam", "x=1"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            route(&req("OPTIONS", "/live/cam.flv")).unwrap().0,
            Route::Preflight
        );
        for target in [
            "/",
            "/cam.flv",
            "/live/cam.mp4",
            "live/cam.flv",
            "/index.m3u8",
        ] {
            assert_eq!(
                route(&req("GET", target)).unwrap_err().status,
                404,
                "{target}"
            );
        }
        // A name that is not one reading: 400 with the reason.
        for target in [
            "/live/.flv",
            "/live//cam.flv",
            "/live/../x/cam.flv",
            "/live/cam%252F.flv",
            "/live/c%zzam.flv",
        ] {
            let f = route(&req("GET", target)).unwrap_err();
            assert_eq!((f.status, f.kind), (400, "bad_request"), "{target}");
        }
        assert_eq!(
            route(&req("POST", "/live/cam.flv")).unwrap_err().status,
            405
        );
    }

    #[test]
    fn blocking_directives_are_read_and_left_out_of_the_uris() {
        assert_eq!(blocking("").unwrap(), (None, String::new()));
        let (block, rest) = blocking("token=t&_HLS_msn=5&_HLS_part=2&_HLS_skip=YES").unwrap();
        assert_eq!(
            block,
            Some(Block {
                msn: 5,
                part: Some(2)
            })
        );
        assert_eq!(rest, "token=t");
        assert_eq!(
            blocking("_HLS_msn=7").unwrap().0,
            Some(Block { msn: 7, part: None })
        );
        assert_eq!(blocking("_HLS_part=1").unwrap_err().status, 400);
        assert_eq!(blocking("_HLS_msn=x").unwrap_err().status, 400);
    }

    #[test]
    fn answers_carry_their_status_reason_and_cors() {
        let f = Failure::new(403, "forbidden", "bad token");
        let text = String::from_utf8(failure_response(&f, "*").to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(
            text.contains("Access-Control-Allow-Origin: *\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 10\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nbad token\n"), "{text}");
        let text = String::from_utf8(preflight_response("").to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(!text.contains("Access-Control"), "{text}");
        assert_eq!(
            refusal_failure(&Refusal::NotFound).status,
            404,
            "an unknown stream"
        );
        assert_eq!(refusal_failure(&Refusal::PlayerLimit).status, 503);
    }
}
