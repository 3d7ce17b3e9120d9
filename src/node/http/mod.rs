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
//! - `GET /recordings/APP/KEY.mp4?start=...`, `.../index.m3u8?start=...`
//!   and the segment files: recordings by time range (see [`recording`]).
//!   `/recordings/` is this route's: an app named `recordings` is not
//!   served over HTTP.
//! - `POST /open/1`, `/send/ID/SEQ`, `/idle/ID/SEQ`, `/close/ID/SEQ` is
//!   RTMPT, an RTMP session tunnelled in HTTP (see [`rtmpt`]); a `POST`
//!   body has exactly one `Content-Length` and is streamed to its session.
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
//! This file is the connection loop; [`request`] parses a request head
//! and routes it, [`flv`], [`hls`], [`recording`] and [`rtmpt`] serve
//! each kind.

mod flv;
mod hls;
mod recording;
mod request;
mod rtmpt;

pub use rtmpt::Tunnels;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::context::ConnectionContext;
use super::gate::Ticket;
use super::hls::run::HlsShard;
use super::hls::session;
use super::ring::conn::Conn;
use super::ring::conn::{End, Input, Notice};
use super::ring::tls::decrypt;
use super::ring::SocketRing;

use flv::{start_flv, Viewer};
use hls::{serve_hls, HlsAsk};
use recording::{serve_recording, RecordingRequest};
use request::{failure_response, parse_head, preflight_response, route, Failure, Route};

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
    /// Per app, the exec pipelines that publish a rendition
    /// (`APP/NAME_PIPELINE`): a stream's multivariant playlist lists those
    /// that are live beside it.
    pub renditions: std::collections::BTreeMap<String, Vec<String>>,
    /// The node's recordings (`/recordings/...`), when `record.path` is set.
    pub recordings: Option<std::sync::Arc<super::record::Library>>,
    /// The shard's RTMPT sessions.
    pub tunnels: Tunnels,
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
    // An RTMPT request whose body is still arriving, and whether the
    // connection stays open after its answer.
    let mut body: Option<(rtmpt::Pending, bool)> = None;
    let reason: Option<String> = loop {
        let mut lease = match conn.next_input().await {
            Input::Data(lease) => lease,
            // No tunnel feeds an HTTP connection (it feeds tunnels).
            Input::Tunnel(_) => continue,
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
        // The rest of an RTMPT body first: it goes to its session, not
        // into the request buffer.
        let mut input = input;
        if let Some((pending, _)) = &mut body {
            let n = pending.left.min(input.len());
            rtmpt::feed(pending, &input[..n]).await;
            input = &input[n..];
            if pending.left > 0 {
                continue;
            }
            if let Some((pending, keep_alive)) = body.take() {
                let a = answering(&conn, peer, &ctx, &ring, &http, keep_alive);
                match rtmpt::answer(pending, &a).await {
                    Err(f) => break Some(fail(&conn, &ctx, &f, cors)),
                    Ok(false) => break None,
                    Ok(true) => {}
                }
            }
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
                Route::Tunnel(ask) => {
                    let now = ring.reaped_at();
                    let mut pending = match rtmpt::begin(ask, req.body, peer, &http.tunnels, now) {
                        Ok(p) => p,
                        Err(f) => {
                            done = Some(Some(fail(&conn, &ctx, &f, cors)));
                            break;
                        }
                    };
                    let n = pending.left.min(head.len());
                    rtmpt::feed(&mut pending, &head[..n]).await;
                    head.drain(..n);
                    if pending.left > 0 {
                        // The rest of the body comes with the next reads.
                        body = Some((pending, req.keep_alive));
                        break;
                    }
                    let a = answering(&conn, peer, &ctx, &ring, &http, req.keep_alive);
                    match rtmpt::answer(pending, &a).await {
                        Ok(true) => {}
                        Ok(false) => done = Some(None),
                        Err(f) => done = Some(Some(fail(&conn, &ctx, &f, cors))),
                    }
                }
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
                Route::Recording { key, ask, query } => {
                    let r = RecordingRequest {
                        conn: &conn,
                        peer,
                        key,
                        ask,
                        query,
                        range: req.range.as_deref(),
                        head_only,
                        keep_alive: req.keep_alive,
                    };
                    match serve_recording(r, http.recordings.as_deref(), &ctx, cors).await {
                        Ok(()) if req.keep_alive && !conn.is_closed() => {}
                        Ok(()) => done = Some(None),
                        Err(f) => done = Some(Some(fail(&conn, &ctx, &f, cors))),
                    }
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

fn answering<'a>(
    conn: &'a Conn,
    peer: SocketAddr,
    ctx: &'a Rc<ConnectionContext>,
    ring: &'a Rc<SocketRing>,
    http: &'a HttpContext,
    keep_alive: bool,
) -> rtmpt::Answering<'a> {
    rtmpt::Answering {
        conn,
        peer,
        ctx,
        ring,
        tunnels: &http.tunnels,
        cors: &http.cors_origin,
        keep_alive,
    }
}

/// Answers a failure, counts it and returns the line to log.
fn fail(conn: &Conn, ctx: &ConnectionContext, f: &Failure, cors: &str) -> String {
    ctx.stats.add_http_refused(f.kind);
    conn.push_urgent(failure_response(f, cors));
    format!("{} {}", f.status, f.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_input_is_bounded_under_its_own_reason() {
        assert!(may_hold(MAX_PIPELINED - 10, 10).is_ok());
        let f = may_hold(MAX_PIPELINED - 10, 11).unwrap_err();
        assert_eq!((f.status, f.kind), (431, "pipeline_overflow"));
    }
}
