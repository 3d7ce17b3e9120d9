//! SRT sessions on a shard: the connections the SRT thread
//! (`crate::srt::thread`) accepted for this shard. Each is a task with a
//! socketless `Conn` (its handle in the hub, as an RTMPT session's is): a
//! publisher's TS is fed into it, demuxed (`container::ts`) and published
//! through the same admission and hub calls as an RTMP publish.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::container::ts::TsIn;
use crate::protocol::RawMessage;
use crate::srt::ffi::{Lib, Socket};
use crate::srt::thread::Event;
use crate::srt::{Mode, Request};
use crate::stream::StreamKey;

use super::admission::{self, Asker};
use super::context::ConnectionContext;
use super::ring::conn::{Conn, Input, Notice};
use super::ring::SocketRing;

/// TS fed to a session and not yet demuxed, at most: past it, the SRT
/// thread's batches for it are dropped (the session's task is stuck).
const MAX_UNTAKEN: usize = 4 * 1024 * 1024;

fn redact(key: &StreamKey) -> String {
    crate::protocol::server::redact(key.as_str())
}

/// Takes this shard's SRT events until the channel closes.
pub async fn serve(
    mut inbox: mpsc::Receiver<Event>,
    ctx: Rc<ConnectionContext>,
    ring: Rc<SocketRing>,
) {
    let lib = match Lib::get() {
        Ok(lib) => lib,
        Err(e) => {
            tracing::error!("srt: {e}");
            return;
        }
    };
    let sessions: Rc<RefCell<HashMap<Socket, Rc<Conn>>>> = Rc::default();
    while let Some(event) = inbox.recv().await {
        match event {
            Event::Open {
                sock,
                peer,
                request,
            } => {
                let conn = Conn::tunnel(ring.new_id());
                sessions.borrow_mut().insert(sock, conn.clone());
                {
                    let mut open = ctx.open.borrow_mut();
                    open.retain(|w| w.strong_count() > 0);
                    open.push(Rc::downgrade(&conn));
                }
                let task = session(sock, peer, request, conn, ctx.clone(), lib);
                glommio::spawn_local(task).detach();
            }
            Event::Data { sock, data } => {
                let sessions = sessions.borrow();
                let Some(conn) = sessions.get(&sock) else {
                    continue;
                };
                if conn.tunnel_untaken() > MAX_UNTAKEN {
                    ctx.stats.add_srt_dropped(data.len() as u64);
                } else {
                    conn.push_tunnel_input(data);
                }
            }
            Event::Closed { sock } => {
                if let Some(conn) = sessions.borrow_mut().remove(&sock) {
                    conn.close();
                }
            }
        }
    }
}

async fn session(
    sock: Socket,
    peer: SocketAddr,
    request: Request,
    conn: Rc<Conn>,
    ctx: Rc<ConnectionContext>,
    lib: &'static Lib,
) {
    ctx.stats.srt_sessions.fetch_add(1, Ordering::Relaxed);
    match request.mode {
        Mode::Publish => publish(sock, peer, &request, &conn, &ctx, lib).await,
        Mode::Request => {
            tracing::info!(conn = conn.id, %peer, stream = %redact(&request.key),
                "srt: playing over SRT is not served yet; caller closed");
        }
    }
    lib.close(sock);
    conn.close();
    ctx.hub.with(|h| h.leave(conn.id));
    ctx.stats.srt_sessions.fetch_sub(1, Ordering::Relaxed);
}

async fn publish(
    sock: Socket,
    peer: SocketAddr,
    request: &Request,
    conn: &Rc<Conn>,
    ctx: &Rc<ConnectionContext>,
    lib: &'static Lib,
) {
    let who = Asker {
        conn: conn.id,
        key: &request.key,
        query: &request.query,
        peer,
    };
    let p = match admission::publish(&who, None, conn, ctx).await {
        Ok(p) => p,
        Err(refusal) => {
            if let admission::Refusal::Auth { kind, .. } = &refusal {
                ctx.stats.add_auth_refused(kind);
            }
            tracing::info!(conn = conn.id, %peer, stream = %redact(&request.key),
                "srt: publish refused: {refusal}");
            return;
        }
    };
    let key = p.key.clone();
    tracing::info!(conn = conn.id, %peer, stream = %redact(&key), "srt: publishing");
    let outputs = !crate::output::pipeline::is_internal(&request.query);
    if outputs {
        ctx.pushes
            .started(&key, conn.id, &request.query, &p.pushes, &p.kept);
        ctx.recorders.started(&key, conn.id);
        if let Some(exec) = &ctx.exec {
            exec.published(&key, conn.id, &request.query);
        }
    }
    let mut ts = TsIn::new();
    let mut messages: Vec<RawMessage> = Vec::new();
    let mut stats_at = Instant::now();
    let mut last = lib.stats(sock).unwrap_or_default();
    loop {
        match conn.next_input().await {
            Input::Tunnel(data) => {
                ctx.stats.add_in(data.len() as u64);
                ts.push(&data, &mut messages);
                let now = Instant::now();
                for m in messages.drain(..) {
                    ctx.stats.add_message_in();
                    ctx.hub.with(|h| h.on_publisher_message(p.id, m, now));
                }
                if now.duration_since(stats_at).as_secs() >= 1 {
                    stats_at = now;
                    last = add_link_stats(lib, sock, &last, ctx);
                }
            }
            // The node stops: an SRT caller cannot be asked to reconnect
            // elsewhere, so it is closed.
            Input::Notice(Notice::Shutdown) => break,
            Input::Notice(_) => {}
            // Closed: taken over, kicked, or the SRT thread saw it end.
            _ => break,
        }
    }
    add_link_stats(lib, sock, &last, ctx);
    ctx.hub.with(|h| h.unpublish(p.id, conn.id, Instant::now()));
    if outputs {
        ctx.pushes.stopped(&key, conn.id);
        ctx.recorders.stopped(&key, conn.id);
        if let Some(exec) = &ctx.exec {
            exec.unpublished(&key, conn.id);
        }
    }
    if ts.dropped() > 0 {
        tracing::info!(conn = conn.id, stream = %redact(&key), dropped = ts.dropped(),
            "srt: PES dropped (lost packets or over the size limit)");
    }
    drop(p.place);
    tracing::info!(conn = conn.id, stream = %redact(&key), "srt: unpublished");
}

/// Adds what libsrt counted for `sock` since `last` to the shard's SRT
/// counters; returns the counts now.
fn add_link_stats(
    lib: &Lib,
    sock: Socket,
    last: &crate::srt::ffi::Stats,
    ctx: &ConnectionContext,
) -> crate::srt::ffi::Stats {
    let Some(now) = lib.stats(sock) else {
        return *last;
    };
    let delta = |a: i32, b: i32| u64::try_from(a.saturating_sub(b)).unwrap_or(0);
    let s = &ctx.stats;
    s.srt_lost.fetch_add(
        delta(now.pktRcvLossTotal, last.pktRcvLossTotal),
        Ordering::Relaxed,
    );
    s.srt_retransmitted.fetch_add(
        delta(now.pktRcvRetrans, last.pktRcvRetrans),
        Ordering::Relaxed,
    );
    s.srt_dropped.fetch_add(
        delta(now.pktRcvDropTotal, last.pktRcvDropTotal),
        Ordering::Relaxed,
    );
    now
}
