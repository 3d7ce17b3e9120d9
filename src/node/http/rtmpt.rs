//! RTMPT: RTMP tunnelled in HTTP on the media listener, and RTMPTS, the
//! same over its TLS listener (`[media] rtmpt`).
//!
//! A client `POST`s `/open/1` and gets a session id; from then on every
//! request names it and its sequence number (`/send/ID/SEQ` with RTMP
//! bytes as the body, `/idle/ID/SEQ` to poll, `/close/ID/SEQ`), starting
//! at 0 and one up per request. Each answer is `200` with a body of one
//! polling-interval byte and then whatever RTMP bytes the session has
//! queued, at once: no request is held open, because ffmpeg blocks on
//! every one. `/fcs/ident2`, which Flash-style clients send first, is a
//! `404` that keeps the connection.
//!
//! A session is an RTMP connection like any other ([`Conn::tunnel`]): the
//! same `rtmp::serve` task and `ServerSession`, the same hub, limits and
//! auth. Its input is what `/send` bodies carry, streamed to it as they
//! arrive (bounded, the feeder waits for the session to take it); its
//! output waits in its queue, shared `Bytes`, until a request takes it
//! into an answer uncopied. Session ids are 128 random bits, bound to the
//! client's address; a request with another address, an unknown id or a
//! sequence number out of order is refused (the last also ends the
//! session: bytes were lost). Sessions are bounded on the node and per
//! address (`[media] rtmpt_sessions`, `rtmpt_sessions_per_ip`), and one
//! with no request for `rtmpt_idle_ms`, or with no RTMP handshake within
//! `rtmp.handshake_timeout_ms`, is closed.
//!
//! A session lives on the shard whose HTTP connection opened it; ffmpeg
//! and librtmp keep that one connection for the whole session. A request
//! that lands on another shard (a client that reconnects) finds no such
//! session: a 404.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};

use super::request::{head_with, Failure, TunnelAsk};
use crate::node::context::ConnectionContext;
use crate::node::hls::session;
use crate::node::ring::conn::{Conn, End};
use crate::node::ring::SocketRing;

/// The most body bytes fed to a session and not yet taken by it.
const MAX_UNTAKEN: usize = 256 * 1024;

/// The most RTMP bytes one answer carries (at least one whole `Bytes`).
const MAX_ANSWER: usize = 1024 * 1024;

/// The body `/open`, `/idle` and `/close` carry is one byte (0x00) from
/// both clients; this is what is taken, and discarded.
const MAX_SMALL_BODY: usize = 64;

/// Requests a session whose RTMP connection has ended gets answered (its
/// last output, then empty answers) before it is forgotten: a client's
/// own closing requests race the end and should not read as errors.
const ENDED_ANSWERS: u32 = 8;

/// One RTMPT session.
struct Tunnel {
    conn: Rc<Conn>,
    ip: IpAddr,
    next_seq: Cell<u64>,
    opened: Instant,
    last: Cell<Instant>,
    /// Answers in a row that carried no RTMP bytes (the polling byte
    /// grows with them).
    empty: Cell<u32>,
    /// Requests answered since its connection ended with nothing left.
    after_end: Cell<u32>,
}

/// The shard's RTMPT sessions.
pub struct Tunnels {
    sessions: RefCell<HashMap<String, Rc<Tunnel>>>,
    enabled: bool,
    idle: Duration,
    handshake: Duration,
}

impl Tunnels {
    pub fn new(enabled: bool, idle: Duration, handshake: Duration) -> Self {
        Self {
            sessions: RefCell::default(),
            enabled,
            idle,
            handshake,
        }
    }

    /// The deadlines: a session with no request for the idle limit, or
    /// no RTMP handshake in time, is closed; a closed one is forgotten
    /// when nobody has come for it in that time (or at its `/close`, or
    /// after [`ENDED_ANSWERS`] more requests).
    pub fn sweep(&self, now: Instant) {
        self.sessions.borrow_mut().retain(|_, t| {
            let idle = now.duration_since(t.last.get()) > self.idle;
            if t.conn.is_closed() {
                return !idle;
            }
            if idle {
                t.conn.end(End::Timeout("RTMPT session idle"));
            } else if !t.conn.is_connected() && now.duration_since(t.opened) > self.handshake {
                t.conn.end(End::Timeout("no RTMP handshake in time"));
            }
            true
        });
    }
}

/// A tunnel request whose body is being read.
pub(super) struct Pending {
    ask: TunnelAsk,
    tunnel: Option<Rc<Tunnel>>,
    /// Body bytes still to come.
    pub(super) left: usize,
}

fn session_failure(why: impl Into<String>) -> Failure {
    Failure::new(404, "rtmpt_session", why)
}

/// Starts a request once its head is parsed: the session it names is
/// looked up and its sequence number checked, before any of its body is
/// read.
pub(super) fn begin(
    ask: TunnelAsk,
    body: usize,
    peer: SocketAddr,
    tunnels: &Tunnels,
    now: Instant,
) -> Result<Pending, Failure> {
    if !tunnels.enabled {
        return Err(Failure::new(405, "method", "RTMPT is off on this node"));
    }
    let small = match ask {
        TunnelAsk::Send(_) => false,
        TunnelAsk::Ident | TunnelAsk::Open | TunnelAsk::Idle(_) | TunnelAsk::Close(_) => true,
    };
    if small && body > MAX_SMALL_BODY {
        return Err(Failure::new(
            400,
            "bad_request",
            format!("RTMPT: this request's body is at most {MAX_SMALL_BODY} bytes"),
        ));
    }
    let tunnel = match &ask {
        TunnelAsk::Ident | TunnelAsk::Open => None,
        TunnelAsk::Send(s) | TunnelAsk::Idle(s) | TunnelAsk::Close(s) => {
            let mut sessions = tunnels.sessions.borrow_mut();
            // Another address naming a session is told what a wrong id
            // is: it learns nothing of the session.
            let Some(t) = sessions.get(&s.id).filter(|t| t.ip == peer.ip()).cloned() else {
                return Err(session_failure("no such RTMPT session"));
            };
            if t.conn.is_closed() && t.conn.queued_bytes() == 0 {
                // Its last output was answered: a few more requests get an
                // empty answer (the client's closing ones), then none.
                let n = t.after_end.get() + 1;
                t.after_end.set(n);
                if n > ENDED_ANSWERS {
                    sessions.remove(&s.id);
                    return Err(session_failure("the RTMPT session has ended"));
                }
            }
            let expected = t.next_seq.get();
            if s.seq != expected {
                // A request lost or replayed: the session's byte stream has
                // a hole, so it ends.
                sessions.remove(&s.id);
                t.conn.end(End::Timeout("RTMPT request out of sequence"));
                t.conn.close();
                return Err(Failure::new(
                    400,
                    "rtmpt_session",
                    format!(
                        "RTMPT request out of sequence: expected {expected}, got {}",
                        s.seq
                    ),
                ));
            }
            t.next_seq.set(expected + 1);
            t.last.set(now);
            Some(t)
        }
    };
    Ok(Pending {
        ask,
        tunnel,
        left: body,
    })
}

/// Takes `bytes` of the body: a `/send`'s go to its session (copied once,
/// out of the receive buffer), waiting while the session has more than
/// [`MAX_UNTAKEN`] not yet taken; the others' are discarded.
pub(super) async fn feed(p: &mut Pending, bytes: &[u8]) {
    p.left -= bytes.len();
    if let (TunnelAsk::Send(_), Some(t)) = (&p.ask, &p.tunnel) {
        if !bytes.is_empty() && t.conn.push_tunnel_input(Bytes::copy_from_slice(bytes)) {
            t.conn.tunnel_taken(MAX_UNTAKEN).await;
        }
    }
}

/// What answering needs of the connection and its shard.
pub(super) struct Answering<'a> {
    pub conn: &'a Conn,
    pub peer: SocketAddr,
    pub ctx: &'a Rc<ConnectionContext>,
    pub ring: &'a Rc<SocketRing>,
    pub tunnels: &'a Tunnels,
    pub cors: &'a str,
    pub keep_alive: bool,
}

/// Answers a request whose body has all been read; Ok(false) when the
/// connection closes after the answer (a `/close`: the client is done with
/// it, and over TLS librtmp waits for our close_notify before it exits).
pub(super) async fn answer(p: Pending, a: &Answering<'_>) -> Result<bool, Failure> {
    match p.ask {
        TunnelAsk::Ident => {
            let head = head_with(404, &[("Content-Length", "0")], a.cors, a.keep_alive);
            a.conn.push_urgent(head.freeze());
            Ok(a.keep_alive)
        }
        TunnelAsk::Open => {
            let id = open(a)?;
            let body = format!("{id}\n");
            let len = body.len().to_string();
            let mut out = head_with(200, &fcs_headers(&len), a.cors, a.keep_alive);
            out.put_slice(body.as_bytes());
            a.conn.push_urgent(out.freeze());
            Ok(a.keep_alive)
        }
        TunnelAsk::Send(_) | TunnelAsk::Idle(_) => {
            let Some(t) = p.tunnel else {
                return Err(session_failure("no such RTMPT session"));
            };
            // What this request carried is taken (and the session has
            // answered it) before the answer is made.
            t.conn.tunnel_taken(0).await;
            respond(&t, a, a.keep_alive);
            Ok(a.keep_alive)
        }
        TunnelAsk::Close(s) => {
            let Some(t) = p.tunnel else {
                return Err(session_failure("no such RTMPT session"));
            };
            t.conn.close();
            respond(&t, a, false);
            a.tunnels.sessions.borrow_mut().remove(&s.id);
            Ok(false)
        }
    }
}

fn fcs_headers(len: &str) -> [(&'static str, &str); 3] {
    [
        ("Content-Type", "application/x-fcs"),
        ("Cache-Control", "no-cache"),
        ("Content-Length", len),
    ]
}

/// The polling-interval byte after `empty` answers in a row with no RTMP
/// bytes: 0 while data flows, then one more every ten empty answers, at
/// most 32 (as Red5 does; ffmpeg and librtmp read it and wait as they
/// choose).
fn polling_byte(empty: u32) -> u8 {
    (empty / 10).min(32) as u8
}

/// Answers with the polling byte and what the session has queued, its
/// `Bytes` queued on the connection as they are.
fn respond(t: &Tunnel, a: &Answering<'_>, keep_alive: bool) {
    let mut rtmp = Vec::new();
    let n = t.conn.take_tunnel_output(MAX_ANSWER, &mut rtmp);
    let empty = if n == 0 {
        t.empty.get().saturating_add(1)
    } else {
        0
    };
    t.empty.set(empty);
    let len = (1 + n).to_string();
    let mut head = head_with(200, &fcs_headers(&len), a.cors, keep_alive);
    head.put_u8(polling_byte(empty));
    a.conn.push_urgent(head.freeze());
    for b in rtmp {
        a.conn.push(b);
    }
}

/// Opens a session: its places under the limits, its id, its task.
fn open(a: &Answering<'_>) -> Result<String, Failure> {
    let ctx = a.ctx;
    let limit = |why: String| Failure::new(503, "limit", why);
    let place = ctx.gate.tunnel(a.peer.ip()).map_err(|r| {
        limit(match r {
            crate::node::gate::Refused::IpTunnels => {
                "too many RTMPT sessions from this address".into()
            }
            _ => "too many RTMPT sessions on this node".into(),
        })
    })?;
    let id = session::new_id().ok_or_else(|| limit("no random source for a session id".into()))?;
    let conn = Conn::tunnel(a.ring.new_id());
    let now = Instant::now();
    let tunnel = Rc::new(Tunnel {
        conn: conn.clone(),
        ip: a.peer.ip(),
        next_seq: Cell::new(0),
        opened: now,
        last: Cell::new(now),
        empty: Cell::new(0),
        after_end: Cell::new(0),
    });
    a.tunnels.sessions.borrow_mut().insert(id.clone(), tunnel);
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    ctx.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    let task = crate::node::rtmp::serve(conn, a.peer, ctx.clone(), a.ring.clone(), place);
    glommio::spawn_local(task).detach();
    tracing::debug!(peer = %a.peer, "RTMPT session opened");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_polling_byte_grows_with_empty_answers_and_is_capped() {
        assert_eq!(polling_byte(0), 0);
        assert_eq!(polling_byte(9), 0);
        assert_eq!(polling_byte(10), 1);
        assert_eq!(polling_byte(10_000), 32);
    }
}
