//! SRT sessions on a shard: the connections the SRT thread
//! (`crate::srt::thread`) accepted for this shard. Each is a task with a
//! socketless `Conn` (its handle in the hub, as an RTMPT session's is): a
//! publisher's TS is fed into it, demuxed (`container::ts`) and published
//! through the same admission and hub calls as an RTMP publish. A player
//! is a consumer on the shard (as the LL-HLS packager is): the hub queues
//! it the stream's messages under the slow-player rules, and its task
//! writes them as TS (`container::ts_out`) with libsrt's own send, which is
//! thread-safe and never blocks: a full send buffer drops to the next
//! keyframe.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use bytes::BytesMut;

use crate::container::ts::TsIn;
use crate::container::ts_out::{TsOut, PACKET};
use crate::protocol::RawMessage;
use crate::srt::ffi::{Lib, Socket};
use crate::srt::thread::Event;
use crate::srt::{Mode, Request};
use crate::stream::{Protocol, StreamKey};

use super::admission::{self, Asker};
use super::context::ConnectionContext;
use super::hub::{PlayOutcome, Player};
use super::ring::conn::{Conn, Input, Notice, RingQueue};
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
                let (conn, queue) = match request.mode {
                    Mode::Publish => (Conn::tunnel(ring.new_id()), None),
                    Mode::Request => {
                        let (conn, queue) = Conn::detached(ring.new_id());
                        (conn, Some(queue))
                    }
                };
                sessions.borrow_mut().insert(sock, conn.clone());
                {
                    let mut open = ctx.open.borrow_mut();
                    open.retain(|w| w.strong_count() > 0);
                    open.push(Rc::downgrade(&conn));
                }
                let task = session(sock, peer, request, (conn, queue), ctx.clone(), lib);
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
    (conn, queue): (Rc<Conn>, Option<Rc<RingQueue>>),
    ctx: Rc<ConnectionContext>,
    lib: &'static Lib,
) {
    ctx.stats.srt_sessions.fetch_add(1, Ordering::Relaxed);
    match queue {
        None => publish(sock, peer, &request, &conn, &ctx, lib).await,
        Some(queue) => play(sock, peer, &request, &conn, &queue, &ctx, lib).await,
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
                    last = add_link_stats(lib, sock, &last, Side::Receiving, ctx);
                    let latency_ms = lib.get_int(sock, crate::srt::ffi::RCVLATENCY).unwrap_or(0);
                    let link = super::directory::SrtLink {
                        lost: u64::try_from(last.pktRcvLossTotal).unwrap_or(0),
                        retransmitted: u64::try_from(last.pktRcvRetrans).unwrap_or(0),
                        dropped: u64::try_from(last.pktRcvDropTotal).unwrap_or(0),
                        rtt_ms: last.msRTT,
                        latency_ms: u32::try_from(latency_ms).unwrap_or(0),
                    };
                    ctx.hub.with(|h| h.report_srt(&key, link));
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
    add_link_stats(lib, sock, &last, Side::Receiving, ctx);
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

/// Which end of the link this node is: the counters that tell its losses.
#[derive(Clone, Copy)]
enum Side {
    /// A publisher's link: packets missing on arrival, received again,
    /// dropped as too late.
    Receiving,
    /// A player's link: packets its receiver reported lost, sent again,
    /// dropped as too late to send.
    Sending,
}

/// (lost, retransmitted, dropped) of `st` for `side`.
fn counts(st: &crate::srt::ffi::Stats, side: Side) -> [i32; 3] {
    match side {
        Side::Receiving => [st.pktRcvLossTotal, st.pktRcvRetrans, st.pktRcvDropTotal],
        Side::Sending => [st.pktSndLossTotal, st.pktRetransTotal, st.pktSndDropTotal],
    }
}

/// Adds what libsrt counted for `sock` since `last` to the shard's SRT
/// counters; returns the counts now.
fn add_link_stats(
    lib: &Lib,
    sock: Socket,
    last: &crate::srt::ffi::Stats,
    side: Side,
    ctx: &ConnectionContext,
) -> crate::srt::ffi::Stats {
    let Some(now) = lib.stats(sock) else {
        return *last;
    };
    let s = &ctx.stats;
    let counters = [&s.srt_lost, &s.srt_retransmitted, &s.srt_dropped];
    for ((c, a), b) in counters
        .iter()
        .zip(counts(&now, side))
        .zip(counts(last, side))
    {
        c.fetch_add(
            u64::try_from(a.saturating_sub(b)).unwrap_or(0),
            Ordering::Relaxed,
        );
    }
    now
}

/// TS a player's task writes per message, at most, before it looks at its
/// input again: one SRT message is 7 packets.
const SEND_CHUNK: usize = crate::srt::ffi::LIVE_PAYLOAD;

async fn play(
    sock: Socket,
    peer: SocketAddr,
    request: &Request,
    conn: &Rc<Conn>,
    queue: &Rc<RingQueue>,
    ctx: &Rc<ConnectionContext>,
    lib: &'static Lib,
) {
    let who = Asker {
        conn: conn.id,
        key: &request.key,
        query: &request.query,
        peer,
    };
    let admitted = match admission::play(&who, Protocol::Srt, ctx).await {
        Ok(p) => p,
        Err(refusal) => {
            if let admission::Refusal::Auth { kind, .. } = &refusal {
                ctx.stats.add_auth_refused(kind);
            }
            tracing::info!(conn = conn.id, %peer, stream = %redact(&request.key),
                "srt: play refused: {refusal}");
            return;
        }
    };
    let key = admitted.key.clone();
    let player = Player::local(conn.id, conn.clone());
    let now = Instant::now();
    let outcome = ctx
        .hub
        .with(|h| h.start_player(&key, player, admitted.live, admitted.wait, now));
    if let PlayOutcome::NotFound = outcome {
        tracing::info!(conn = conn.id, stream = %redact(&key), "srt: play: no such stream");
        return;
    }
    ctx.stats.srt_viewers.fetch_add(1, Ordering::Relaxed);
    tracing::info!(conn = conn.id, %peer, stream = %redact(&key), "srt: playing");
    let mut ts = TsOut::new();
    let mut out = BytesMut::new();
    let mut stats_at = Instant::now();
    let mut last = lib.stats(sock).unwrap_or_default();
    'serve: loop {
        conn.unschedule();
        queue.dirty.borrow_mut().clear();
        while let Some(m) = conn.pop_message() {
            ts.push(&m, &mut out);
            while out.len() >= SEND_CHUNK {
                let chunk = out.split_to(SEND_CHUNK);
                match send(lib, sock, &chunk, &mut ts, ctx) {
                    Ok(true) => {}
                    Ok(false) => out.clear(),
                    Err(e) => {
                        tracing::info!(conn = conn.id, "srt: player gone: {e}");
                        break 'serve;
                    }
                }
            }
        }
        // What is left is whole packets (TsOut writes nothing else): send
        // it now rather than wait for the next message.
        if !out.is_empty() {
            debug_assert_eq!(out.len() % PACKET, 0);
            let chunk = out.split();
            if let Err(e) = send(lib, sock, &chunk, &mut ts, ctx) {
                tracing::info!(conn = conn.id, "srt: player gone: {e}");
                break;
            }
        }
        if stats_at.elapsed().as_secs() >= 1 {
            stats_at = Instant::now();
            last = add_link_stats(lib, sock, &last, Side::Sending, ctx);
        }
        let input = futures_lite::future::or(
            async {
                queue.notify.wait().await;
                None
            },
            async { Some(conn.next_input().await) },
        )
        .await;
        match input {
            None | Some(Input::Data(_)) | Some(Input::Tunnel(_)) => {}
            Some(Input::Notice(Notice::Ended { waiting: true, .. })) => {}
            Some(Input::Notice(Notice::Republished { stream_id })) => {
                // A new publisher: new timestamps and maybe a new
                // configuration, from its keyframe on.
                ts = TsOut::new();
                ctx.hub.with(|h| h.resume(&key, conn.id, stream_id));
            }
            // The stream ended: what is sent reaches the player before the
            // socket closes.
            Some(Input::Notice(Notice::Ended { .. })) => {
                linger(lib, sock).await;
                break;
            }
            // The node stops, the hub cut a slow player, or the SRT thread
            // saw the caller leave.
            Some(_) => break,
        }
    }
    add_link_stats(lib, sock, &last, Side::Sending, ctx);
    ctx.stats.srt_viewers.fetch_sub(1, Ordering::Relaxed);
    drop(admitted.place);
    tracing::info!(conn = conn.id, stream = %redact(&key), "srt: play ended");
}

/// Sends one SRT message to a player: Ok(false) when libsrt's send buffer
/// is full (the player is behind: its writer starts again at a keyframe),
/// Err when the player is gone.
fn send(
    lib: &Lib,
    sock: Socket,
    chunk: &[u8],
    ts: &mut TsOut,
    ctx: &ConnectionContext,
) -> Result<bool, String> {
    let sent = lib.send(sock, chunk)?;
    if sent {
        ctx.stats.add_out(chunk.len() as u64);
    } else {
        ts.resync();
        ctx.stats.add_dropped_frames_slow();
    }
    Ok(sent)
}

/// Waits until the player has acknowledged what was sent (at most 1 s),
/// then for its latency: a live-mode receiver still holds that much
/// undelivered, and a close now would lose it (libsrt's linger is off in
/// live mode).
async fn linger(lib: &Lib, sock: Socket) {
    let deadline = Instant::now() + std::time::Duration::from_secs(1);
    while lib.get_int(sock, crate::srt::ffi::SNDDATA).unwrap_or(0) > 0 && Instant::now() < deadline
    {
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
    }
    let latency = lib.get_int(sock, crate::srt::ffi::PEERLATENCY).unwrap_or(0);
    let latency = u64::try_from(latency).unwrap_or(0).min(8000);
    glommio::timer::sleep(std::time::Duration::from_millis(latency + 20)).await;
}
