//! One RTMP connection on its shard: takes the buffers the shard's socket
//! ring received for it, drives the sans-IO `ServerSession` over them
//! (through rustls for RTMPS), turns its events into hub calls, and queues
//! replies for the ring to send. A protocol error closes this connection
//! only, with one log line naming the peer and the reason (never a stream
//! key in clear).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::auth::Action;
use crate::protocol::server::{redact, ServerEvent, ServerSession, SessionError};
use crate::protocol::RawMessage;
use crate::stream::Protocol;

use super::admission::{self, Asker, Refusal};
use super::context::ConnectionContext;
use super::gate::Ticket;
use super::hub::{PlayOutcome, Player, StreamId};
use super::ring::conn::{Conn, End, Input, Notice};
use super::ring::tls::decrypt;
use super::ring::SocketRing;
use crate::stream::StreamKey;

/// Queues what the session has to send (replies the peer waits for).
fn flush(session: &mut ServerSession, out: &Conn) {
    let mut bytes = BytesMut::new();
    session.poll_transmit(&mut bytes);
    out.push_urgent(bytes.freeze());
}

/// The stream a publish or play of `name` names on this connection (its
/// `connect`'s app and tcUrl, under the one naming rule), and the query.
fn key_of(session: &ServerSession, name: &str) -> Result<(StreamKey, String), Refusal> {
    let (app, tc_url) = session
        .connect_info()
        .map_or(("", None), |c| (c.app.as_str(), c.tc_url.as_deref()));
    StreamKey::from_rtmp(app, tc_url, name).map_err(|e| Refusal::BadName(e.to_string()))
}

/// Answers a refused publish or play with the refusal's status and reason,
/// counts and logs it (never the key in clear), and closes the connection
/// after an auth refusal once the answer is written.
fn refuse(
    action: Action,
    stream_id: u32,
    (conn, name): (u64, &str),
    refusal: &Refusal,
    session: &mut ServerSession,
    outbox: &Conn,
    ctx: &ConnectionContext,
) {
    let reason = refusal.to_string();
    match action {
        Action::Publish => session.reject_publish(stream_id, refusal.code(action), &reason),
        Action::Play => session.reject_play(stream_id, refusal.code(action), &reason),
    }
    if let Refusal::Auth { kind, .. } = refusal {
        ctx.stats.add_auth_refused(kind);
    }
    tracing::info!(conn, stream = %redact(name), "{} refused: {reason}", action.as_str());
    if refusal.closes() {
        flush(session, outbox);
        outbox.close();
    }
}

/// Serves one connection, plain TCP or TLS, until it closes. Its socket is
/// the shard ring's: input arrives in `conn`'s inbox, output leaves from
/// its queue; the shard's sweep applies the handshake, idle and write-stall
/// limits by ending its input.
pub async fn serve(
    conn: Rc<Conn>,
    peer: SocketAddr,
    ctx: Rc<ConnectionContext>,
    ring: Rc<SocketRing>,
    _place: Ticket,
) {
    let id = conn.id;
    let mut session = ServerSession::new(ctx.session, 0, id ^ 0x5DEE_CE66_D1CE_5EED);
    if ctx.rtmp.rtmpe {
        // The Diffie-Hellman key is made only if the client asks for RTMPE.
        if let Some(random) = super::random::bytes::<32>() {
            session.allow_rtmpe(&random);
        }
    }
    {
        let mut open = ctx.open.borrow_mut();
        open.retain(|w| w.strong_count() > 0);
        open.push(Rc::downgrade(&conn));
    }
    let mut state = ConnState {
        conn: id,
        peer,
        publishing: None,
        publisher_place: None,
        outputs: false,
        playing: Vec::new(),
        events: Vec::new(),
    };
    let session = &mut session;
    let mut pace = Pace::new(ctx.max_ingest_bytes_per_sec);
    // RTMPS only: decrypted bytes the session has not taken yet.
    let mut plain = Vec::new();
    let reason: Option<String> = loop {
        let mut lease = match conn.next_input().await {
            Input::Data(lease) => lease,
            Input::Tunnel(bytes) => {
                // RTMPT: what a `/send` body carried (no TLS here: an
                // RTMPTS tunnel's TLS is its HTTP connection's).
                let (n, now) = (bytes.len(), ring.reaped_at());
                let r = state.on_input(&bytes, session, &conn, &ctx, now).await;
                if let Err(e) =
                    after_input(r, n, now, &mut state, &mut pace, session, &conn, &ctx).await
                {
                    break Some(e);
                }
                continue;
            }
            Input::Notice(notice) => {
                state.on_notice(notice, session, &conn, &ctx);
                continue;
            }
            Input::Closed | Input::End(End::Eof) => break None,
            Input::End(e @ End::Timeout(_)) => {
                ctx.stats.add_protocol_error("timeout");
                break Some(e.to_string());
            }
            Input::End(e @ End::Stalled(_)) => {
                // The peer stopped reading: a player stuck this long is cut.
                ctx.stats.add_disconnected_slow();
                break Some(e.to_string());
            }
            Input::End(e) => break Some(e.to_string()),
        };
        let n = lease.len();
        let now = ring.reaped_at();
        let result = match &conn.tls {
            None => {
                let r = state.on_input(&lease[..], session, &conn, &ctx, now).await;
                lease.consume(n);
                r
            }
            Some(tls) => match decrypt(tls, &mut lease, &mut plain) {
                Err(e) => {
                    // rustls may have an alert to send before the close.
                    conn.schedule();
                    ctx.stats.add_protocol_error("handshake");
                    break Some(format!("TLS: {e}"));
                }
                Ok(()) => {
                    drop(lease);
                    if conn.tls.as_ref().is_some_and(|t| t.borrow().wants_write()) {
                        conn.schedule();
                    }
                    let r = state.on_input(&plain, session, &conn, &ctx, now).await;
                    plain.clear();
                    r
                }
            },
        };
        if let Err(e) =
            after_input(result, n, now, &mut state, &mut pace, session, &conn, &ctx).await
        {
            break Some(e);
        }
    };
    if let Some(reason) = reason {
        tracing::info!(%peer, conn = id, "connection closed: {reason}");
    }
    state.leave(&ctx, Instant::now());
    // The ring flushes what is queued (error answers, notices) for a short
    // while, then closes the socket. A tunnel has no socket: closing it
    // lets its HTTP side answer what is left and forget it.
    ring.finish(&conn);
    conn.close();
    ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// After `n` bytes of input were handled: a session error ends the
/// connection (the reason returned); the connection is marked connected
/// once its session is; a publisher over the ingest cap is held back.
#[allow(clippy::too_many_arguments)]
async fn after_input(
    result: Result<(), SessionError>,
    n: usize,
    now: Instant,
    state: &mut ConnState,
    pace: &mut Pace,
    session: &ServerSession,
    conn: &Conn,
    ctx: &ConnectionContext,
) -> Result<(), String> {
    if let Err(e) = result {
        ctx.stats.add_protocol_error(error_kind(&e));
        return Err(e.to_string());
    }
    if !conn.is_connected() && session.is_connected() {
        conn.set_connected();
    }
    if state.publishing.is_some() {
        // Over the ingest cap: hold input back for a while (the ring
        // stops receiving, and the idle clock does not run meanwhile;
        // a tunnel's feeder waits for its input to be taken).
        if let Some(wait) = pace.take(n as u64, now) {
            conn.hold(true);
            glommio::timer::sleep(wait).await;
            conn.hold(false);
        }
    }
    Ok(())
}

fn error_kind(e: &SessionError) -> &'static str {
    match e {
        SessionError::Handshake(_) => "handshake",
        SessionError::Chunk(_) => "chunk",
        SessionError::Command(_) => "command",
        _ => "sequence",
    }
}

/// A token bucket over bytes read from a publisher: one second of burst,
/// then `rate` bytes per second.
struct Pace {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    /// Spends `n` bytes; returns how long to wait before reading more.
    fn take(&mut self, n: u64, now: Instant) -> Option<Duration> {
        if self.rate == 0 {
            return None;
        }
        let rate = self.rate as f64;
        let refill = now.duration_since(self.last).as_secs_f64() * rate;
        self.last = now;
        self.tokens = (self.tokens + refill).min(rate) - n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate))
    }
}

struct ConnState {
    conn: u64,
    peer: SocketAddr,
    /// The stream it publishes: key, its id in the hub, the message stream.
    publishing: Option<(StreamKey, StreamId, u32)>,
    /// The node-wide publisher place this connection holds while publishing.
    publisher_place: Option<Ticket>,
    /// Its publish started the stream's pushes and exec pipelines (it is
    /// not a rendition).
    outputs: bool,
    /// Streams it plays, each with its place under the per-stream limit.
    playing: Vec<(StreamKey, u32, Ticket)>,
    events: Vec<ServerEvent>,
}

impl ConnState {
    async fn on_input(
        &mut self,
        mut input: &[u8],
        session: &mut ServerSession,
        outbox: &Rc<Conn>,
        ctx: &ConnectionContext,
        now: Instant,
    ) -> Result<(), SessionError> {
        let mut stalled = 0;
        // RTMPE: the session may hold decrypted input it has not decoded.
        while !input.is_empty() || session.has_pending_input() {
            let used = session.handle_input(input)?;
            if let Some(cipher) = session.take_outbound_cipher() {
                // The handshake leaves in clear; what follows is encrypted.
                flush(session, outbox);
                outbox.set_cipher(cipher);
                ctx.stats.rtmpe_sessions.fetch_add(1, Ordering::Relaxed);
            }
            let mut progressed = used > 0;
            while let Some(e) = session.poll_event() {
                self.events.push(e);
                progressed = true;
            }
            input = &input[used..];
            let mut events = std::mem::take(&mut self.events);
            for event in events.drain(..) {
                match event {
                    ServerEvent::Media { message, .. } => {
                        ctx.stats.add_message_in();
                        self.on_publisher_message(message, ctx, now);
                    }
                    ServerEvent::Metadata {
                        payload, timestamp, ..
                    } => self.on_publisher_message(
                        RawMessage {
                            csid: 0,
                            timestamp,
                            type_id: crate::protocol::MessageType::DATA_AMF0,
                            stream_id: 0,
                            payload,
                        },
                        ctx,
                        now,
                    ),
                    // Commands are rare and their handling is a large
                    // future (auth, webhook, cluster claims): boxed, so an
                    // idle connection's task stays small.
                    other => Box::pin(self.on_event(other, session, outbox, ctx)).await,
                }
            }
            self.events = events;
            flush(session, outbox);
            if !progressed {
                stalled += 1;
                if stalled > 2 {
                    return Err(SessionError::Closed);
                }
            } else {
                stalled = 0;
            }
        }
        Ok(())
    }

    /// Applies what the hub (or the shard's drain) told this connection.
    fn on_notice(
        &mut self,
        notice: Notice,
        session: &mut ServerSession,
        outbox: &Conn,
        ctx: &ConnectionContext,
    ) {
        match notice {
            Notice::Ended { stream_id, waiting } => {
                session.notify_unpublish(stream_id);
                flush(session, outbox);
                if !waiting {
                    self.playing.retain(|(_, id, _)| *id != stream_id);
                    outbox.close();
                }
            }
            Notice::Republished { stream_id } => {
                session.notify_publish(stream_id);
                flush(session, outbox);
                if let Some((key, _, _)) = self.playing.iter().find(|(_, id, _)| *id == stream_id) {
                    ctx.hub.with(|h| h.resume(key, self.conn, stream_id));
                }
            }
            Notice::NotFound { stream_id } => {
                session.send_status(
                    stream_id,
                    "error",
                    "NetStream.Play.StreamNotFound",
                    "the stream was not published in time",
                );
                flush(session, outbox);
                outbox.close();
            }
            Notice::Shutdown => {
                // Encoders that said they can (Enhanced RTMP v2 capsEx
                // Reconnect) are asked to reconnect, which through DNS
                // lands them on another node; they keep the connection
                // until they go or the drain's grace ends.
                if session.is_publishing()
                    && session.request_reconnect(None, "this node is shutting down: reconnect")
                {
                    flush(session, outbox);
                    ctx.reconnects_asked.set(ctx.reconnects_asked.get() + 1);
                } else {
                    outbox.close();
                }
            }
        }
    }

    async fn on_event(
        &mut self,
        event: ServerEvent,
        session: &mut ServerSession,
        outbox: &Rc<Conn>,
        ctx: &ConnectionContext,
    ) {
        match event {
            ServerEvent::ConnectRequest(connect) => {
                if session.is_encrypted() && !ctx.rtmp.rtmpe_allowed(&connect.app) {
                    // Refused: RTMPE is obfuscation, and this app asks for
                    // RTMP or RTMPS.
                    session.reject_connect("RTMPE is refused for this app: use RTMPS or RTMP");
                    ctx.stats.add_auth_refused("rtmpe");
                    tracing::info!(
                        conn = self.conn,
                        app = %connect.app,
                        "RTMPE connect refused by the app's rule"
                    );
                    flush(session, outbox);
                    outbox.close();
                } else {
                    session.accept_connect();
                }
            }
            ServerEvent::PublishRequest {
                stream_id, name, ..
            } => self.publish(stream_id, &name, session, outbox, ctx).await,
            ServerEvent::PlayRequest {
                stream_id, name, ..
            } => self.play(stream_id, &name, session, outbox, ctx).await,
            ServerEvent::PublishEnded { .. } => self.stop_publishing(ctx, Instant::now()),
            ServerEvent::PlayEnded { stream_id } => {
                self.playing.retain(|(_, id, _)| *id != stream_id);
                ctx.hub.with(|h| h.stop_play(self.conn, stream_id));
            }
            _ => {}
        }
    }

    fn asker<'a>(&self, key: &'a StreamKey, query: &'a str) -> Asker<'a> {
        Asker {
            conn: self.conn,
            key,
            query,
            peer: self.peer,
        }
    }

    /// A publish request, through admission.
    async fn publish(
        &mut self,
        stream_id: u32,
        name: &str,
        session: &mut ServerSession,
        outbox: &Rc<Conn>,
        ctx: &ConnectionContext,
    ) {
        let mut query = String::new();
        let admitted = match (&self.publishing, key_of(session, name)) {
            (Some(_), _) => Err(Refusal::InUse { node: None }),
            (None, Err(refusal)) => Err(refusal),
            (None, Ok((key, q))) => {
                query = q;
                let flash_ver = session.connect_info().and_then(|c| c.flash_ver.as_deref());
                admission::publish(&self.asker(&key, &query), flash_ver, outbox, ctx).await
            }
        };
        match admitted {
            Ok(p) => {
                session.accept_publish(stream_id);
                tracing::info!(conn = self.conn, stream = %redact(&p.key), "publishing");
                // A rendition a pipeline publishes starts no push and no
                // pipeline: its outputs are its stream's.
                self.outputs = !crate::output::pipeline::is_internal(&query);
                if self.outputs {
                    ctx.pushes
                        .started(&p.key, self.conn, &query, &p.pushes, &p.kept);
                    ctx.recorders.started(&p.key, self.conn);
                    if let Some(exec) = &ctx.exec {
                        exec.published(&p.key, self.conn, &query);
                    }
                }
                self.publishing = Some((p.key, p.id, stream_id));
                self.publisher_place = Some(p.place);
            }
            Err(refusal) => refuse(
                Action::Publish,
                stream_id,
                (self.conn, name),
                &refusal,
                session,
                outbox,
                ctx,
            ),
        }
    }

    /// A play request, through admission, then to the hub.
    async fn play(
        &mut self,
        stream_id: u32,
        name: &str,
        session: &mut ServerSession,
        outbox: &Rc<Conn>,
        ctx: &ConnectionContext,
    ) {
        let admitted = match key_of(session, name) {
            Ok((key, query)) => {
                admission::play(&self.asker(&key, &query), Protocol::Rtmp, ctx).await
            }
            Err(refusal) => Err(refusal),
        };
        let admitted = match admitted {
            Ok(p) => p,
            Err(refusal) => {
                return refuse(
                    Action::Play,
                    stream_id,
                    (self.conn, name),
                    &refusal,
                    session,
                    outbox,
                    ctx,
                )
            }
        };
        // The session writes Play.Start first; flush it into the outbox
        // before the hub queues cached media behind it.
        session.accept_play(stream_id);
        flush(session, outbox);
        let player = Player::new(self.conn, stream_id, session.chunk_size(), outbox.clone());
        let key = admitted.key;
        outbox.set_latency(ctx.players.latency(key.app()));
        // Play.Start now; media once the key is published here or its
        // relay from another node starts (when it is not live yet).
        let (live, wait, now) = (admitted.live, admitted.wait, Instant::now());
        let outcome = ctx
            .hub
            .with(|h| h.start_player(&key, player, live, wait, now));
        match outcome {
            // It ended between the check and now.
            PlayOutcome::NotFound => session.notify_unpublish(stream_id),
            PlayOutcome::Attached | PlayOutcome::Subscribing => {
                self.playing.push((key, stream_id, admitted.place));
            }
        }
    }

    /// Media or metadata from this connection's publisher, to the hub.
    fn on_publisher_message(&self, message: RawMessage, ctx: &ConnectionContext, now: Instant) {
        if let Some((_, id, _)) = &self.publishing {
            let id = *id;
            ctx.hub.with(|h| h.on_publisher_message(id, message, now));
        }
    }

    fn stop_publishing(&mut self, ctx: &ConnectionContext, now: Instant) {
        if let Some((key, id, _)) = self.publishing.take() {
            ctx.hub.with(|h| h.unpublish(id, self.conn, now));
            // Only this publish's outputs: after a takeover the stream's
            // are the new publisher's.
            if self.outputs {
                ctx.pushes.stopped(&key, self.conn);
                ctx.recorders.stopped(&key, self.conn);
                if let Some(exec) = &ctx.exec {
                    exec.unpublished(&key, self.conn);
                }
            }
            tracing::info!(conn = self.conn, stream = %redact(&key), "unpublished");
        }
        self.publisher_place = None;
    }

    fn leave(&mut self, ctx: &ConnectionContext, now: Instant) {
        self.stop_publishing(ctx, now);
        self.playing.clear();
        ctx.hub.with(|h| h.leave(self.conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_allows_a_second_of_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut pace = Pace::new(1000);
        assert_eq!(pace.take(1000, t0), None, "one second of burst");
        let wait = pace.take(500, t0).unwrap();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Half a second later the debt is paid.
        assert_eq!(pace.take(0, t0 + Duration::from_millis(500)), None);
        // Sustained: 100 bytes every 100 ms is exactly the rate.
        let mut t = t0 + Duration::from_millis(500);
        for _ in 0..50 {
            t += Duration::from_millis(100);
            assert_eq!(pace.take(100, t), None);
        }
        assert!(Pace::new(0).take(u64::MAX, t0).is_none(), "0 = no cap");
    }
}
