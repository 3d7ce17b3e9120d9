//! One RTMP connection on its shard: takes the buffers the shard's socket
//! ring received for it, drives the sans-IO `ServerSession` over them
//! (through rustls for RTMPS), turns its events into hub calls, and queues
//! replies for the ring to send. A protocol error closes this connection
//! only, with one log line naming the peer and the reason (never a stream
//! key in clear).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::auth::{Action, Auth};
use crate::cluster::{ClaimResult, ClusterHandle, Located, Request};
use crate::protocol::server::{redact, ServerConfig, ServerEvent, ServerSession, SessionError};
use crate::protocol::RawMessage;

use super::conn::{Conn, End, Input};
use super::gate::{Gate, Ticket};
use super::hub::{Hub, PlayOutcome, Player, RELAY_START_WAIT};
use super::ring::buffers::Lease;
use super::ring::SocketRing;
use super::stats::ShardStats;
use super::StreamKey;

/// An open connection as its shard's drain sees it.
pub type OpenConnection = (std::rc::Weak<Conn>, std::rc::Weak<RefCell<ServerSession>>);

/// What a connection needs from its shard.
pub struct ConnectionContext {
    /// Every open connection's outbox, so shutdown can close them all.
    pub open: RefCell<Vec<OpenConnection>>,
    pub hub: Rc<RefCell<Hub>>,
    pub stats: Arc<ShardStats>,
    pub shard: usize,
    pub auth: Arc<Auth>,
    pub webhook: Option<crate::webhook::Webhook>,
    pub gate: Arc<Gate>,
    /// Ingest cap per publisher (0 = none).
    pub max_ingest_bytes_per_sec: u64,
    /// Set when the node is in a cluster: publish claims and remote plays.
    pub cluster: Option<ClusterHandle>,
    pub session: ServerConfig,
}

/// The stream key a publish or play names: the connection's app and the
/// stream name, without the `?query` (where tokens live).
fn stream_key(session: &ServerSession, name: &str) -> StreamKey {
    let app = session.connect_info().map_or("", |c| c.app.as_str());
    let name = name.split('?').next().unwrap_or("");
    StreamKey::from(format!("{app}/{name}"))
}

/// Unix time in seconds (token expiry).
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks `action` on `name` against the auth rules, then the webhook if
/// there is one; on refusal answers with an error status naming the reason,
/// counts and logs it (without the key), and closes the connection once
/// that is written.
#[allow(clippy::too_many_arguments)]
async fn authorize(
    action: Action,
    stream_id: u32,
    name: &str,
    session: &Rc<RefCell<ServerSession>>,
    outbox: &Conn,
    ctx: &ConnectionContext,
    conn: u64,
    peer: SocketAddr,
) -> bool {
    let app = session
        .borrow()
        .connect_info()
        .map(|c| c.app.clone())
        .unwrap_or_default();
    let (reason, kind) = match ctx.auth.check(action, &app, name, unix_secs()) {
        Err(refusal) => (refusal.to_string(), refusal.kind()),
        Ok(()) => match &ctx.webhook {
            Some(hook) if hook.applies_to(action) => {
                match hook.ask(action, &app, name, &peer.ip().to_string()).await {
                    Ok(()) => return true,
                    Err(reason) => (reason, "webhook"),
                }
            }
            _ => return true,
        },
    };
    {
        let mut s = session.borrow_mut();
        match action {
            Action::Publish => s.reject_publish(stream_id, "NetStream.Publish.Rejected", &reason),
            Action::Play => s.reject_play(stream_id, "NetStream.Play.Failed", &reason),
        }
        let mut out = BytesMut::new();
        s.poll_transmit(&mut out);
        outbox.push_urgent(out.freeze());
    }
    outbox.close();
    ctx.stats.add_auth_refused(kind);
    tracing::info!(conn, app = %app, stream = %redact(name), "{} refused: {reason}", action.as_str());
    false
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
    let session = Rc::new(RefCell::new(ServerSession::new(
        ctx.session,
        0,
        id ^ 0x5DEE_CE66_D1CE_5EED,
    )));
    {
        let mut open = ctx.open.borrow_mut();
        open.retain(|(w, _)| w.strong_count() > 0);
        open.push((Rc::downgrade(&conn), Rc::downgrade(&session)));
    }
    let mut state = ConnState {
        conn: id,
        peer,
        publishing: None,
        publisher_place: None,
        playing: Vec::new(),
        events: Vec::new(),
    };
    let mut pace = Pace::new(ctx.max_ingest_bytes_per_sec);
    // RTMPS only: decrypted bytes the session has not taken yet.
    let mut plain = Vec::new();
    let reason: Option<String> = loop {
        let mut lease = match conn.next_input().await {
            Input::Data(lease) => lease,
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
        let result = match &conn.tls {
            None => {
                let r = state.on_input(&lease[..], &session, &conn, &ctx).await;
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
                    let r = state.on_input(&plain, &session, &conn, &ctx).await;
                    plain.clear();
                    r
                }
            },
        };
        if let Err(e) = result {
            ctx.stats.add_protocol_error(error_kind(&e));
            break Some(e.to_string());
        }
        if !conn.is_connected() && session.borrow().is_connected() {
            conn.set_connected();
        }
        if state.publishing.is_some() {
            // Over the ingest cap: hold input back for a while (the ring
            // stops receiving, and the idle clock does not run meanwhile).
            if let Some(wait) = pace.take(n as u64, Instant::now()) {
                conn.hold(true);
                glommio::timer::sleep(wait).await;
                conn.hold(false);
            }
        }
    };
    if let Some(reason) = reason {
        tracing::info!(%peer, conn = id, "connection closed: {reason}");
    }
    state.leave(&ctx);
    // The ring flushes what is queued (error answers, notices) for a short
    // while, then closes the socket.
    ring.finish(&conn);
    ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Feeds received TLS records to rustls and appends the plaintext to
/// `plain`.
fn decrypt(
    tls: &RefCell<crate::tls::ServerTls>,
    lease: &mut Lease,
    plain: &mut Vec<u8>,
) -> Result<(), String> {
    let mut tls = tls.borrow_mut();
    while !lease.is_empty() {
        let mut input: &[u8] = lease;
        let before = input.len();
        tls.read_tls(&mut input).map_err(|e| e.to_string())?;
        let used = before - input.len();
        lease.consume(used);
        let state = tls.process_new_packets().map_err(|e| e.to_string())?;
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let at = plain.len();
            plain.resize(at + n, 0);
            std::io::Read::read_exact(&mut tls.reader(), &mut plain[at..])
                .map_err(|e| e.to_string())?;
        }
        if used == 0 && n == 0 {
            return Err("TLS input not taken".into());
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
    publishing: Option<(StreamKey, u32)>,
    /// The node-wide publisher place this connection holds while publishing.
    publisher_place: Option<Ticket>,
    /// Streams it plays, each with its place under the per-stream limit.
    playing: Vec<(StreamKey, u32, Ticket)>,
    events: Vec<ServerEvent>,
}

impl ConnState {
    async fn on_input(
        &mut self,
        mut input: &[u8],
        session: &Rc<RefCell<ServerSession>>,
        outbox: &Rc<Conn>,
        ctx: &ConnectionContext,
    ) -> Result<(), SessionError> {
        let mut stalled = 0;
        while !input.is_empty() {
            // Collect events with the session borrowed, then act on them
            // with it released: the hub may reach other sessions.
            let used = {
                let mut s = session.borrow_mut();
                let used = s.handle_input(input)?;
                while let Some(e) = s.poll_event() {
                    self.events.push(e);
                }
                used
            };
            input = &input[used..];
            let mut events = std::mem::take(&mut self.events);
            for event in events.drain(..) {
                match event {
                    ServerEvent::Media { message, .. } => {
                        ctx.stats.add_message_in();
                        self.on_publisher_message(message, ctx);
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
                    ),
                    // Commands are rare and their handling is a large
                    // future (auth, webhook, cluster claims): boxed, so an
                    // idle connection's task stays small.
                    other => Box::pin(self.on_event(other, session, outbox, ctx)).await,
                }
            }
            self.events = events;
            let mut out = BytesMut::new();
            session.borrow_mut().poll_transmit(&mut out);
            outbox.push_urgent(out.freeze());
            if used == 0 {
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

    async fn on_event(
        &mut self,
        event: ServerEvent,
        session: &Rc<RefCell<ServerSession>>,
        outbox: &Rc<Conn>,
        ctx: &ConnectionContext,
    ) {
        match event {
            ServerEvent::ConnectRequest(_) => session.borrow_mut().accept_connect(),
            ServerEvent::PublishRequest {
                stream_id, name, ..
            } => {
                let key = stream_key(&session.borrow(), &name);
                let refuse = |where_: &str| {
                    session.borrow_mut().reject_publish(
                        stream_id,
                        "NetStream.Publish.BadName",
                        &format!("stream key is already being published{where_}"),
                    );
                    tracing::info!(conn = self.conn, stream = %redact(&key), "publish refused: key in use{where_}");
                };
                if self.publishing.is_some() {
                    return refuse("");
                }
                if !authorize(
                    Action::Publish,
                    stream_id,
                    &name,
                    session,
                    outbox,
                    ctx,
                    self.conn,
                    self.peer,
                )
                .await
                {
                    return;
                }
                let Ok(place) = ctx.gate.publisher() else {
                    session.borrow_mut().reject_publish(
                        stream_id,
                        "NetStream.Publish.Rejected",
                        "this node has reached its publisher limit",
                    );
                    tracing::info!(conn = self.conn, "publish refused: publisher limit");
                    return;
                };
                if let Some(cluster) = &ctx.cluster {
                    // The registry first: a key is live on one node only.
                    let takeover = ctx.hub.borrow().takeover();
                    match cluster.claim(&key, ctx.shard, takeover).await {
                        ClaimResult::Refused(node) if !node.is_empty() => {
                            return refuse(&format!(" on node {node}"));
                        }
                        ClaimResult::Refused(_) => return refuse(" in the cluster"),
                        ClaimResult::Registered | ClaimResult::Unavailable => {}
                    }
                }
                if !ctx
                    .hub
                    .borrow_mut()
                    .publish(&key, self.conn, outbox.clone())
                {
                    if let Some(cluster) = &ctx.cluster {
                        cluster.tell(Request::Unregister {
                            key: key.clone(),
                            shard: ctx.shard,
                        });
                    }
                    return refuse("");
                }
                session.borrow_mut().accept_publish(stream_id);
                ctx.stats.publishers.fetch_add(1, Ordering::Relaxed);
                ctx.stats.publishes_total.fetch_add(1, Ordering::Relaxed);
                tracing::info!(conn = self.conn, stream = %redact(&key), "publishing");
                self.publishing = Some((key, stream_id));
                self.publisher_place = Some(place);
            }
            ServerEvent::PlayRequest {
                stream_id, name, ..
            } => {
                if !authorize(
                    Action::Play,
                    stream_id,
                    &name,
                    session,
                    outbox,
                    ctx,
                    self.conn,
                    self.peer,
                )
                .await
                {
                    return;
                }
                let key = stream_key(&session.borrow(), &name);
                let mut live = ctx.hub.borrow().is_live(&key);
                let wait = ctx.hub.borrow().play_wait();
                // Not on this node: maybe on another node of the cluster.
                let mut remote = false;
                if let (false, Some(cluster)) = (live, &ctx.cluster) {
                    remote = matches!(cluster.locate(&key).await, Located::Remote(_));
                    live = ctx.hub.borrow().is_live(&key);
                }
                if !live && !remote && wait.is_none() {
                    session.borrow_mut().reject_play(
                        stream_id,
                        "NetStream.Play.StreamNotFound",
                        "no such stream",
                    );
                    return;
                }
                let Ok(place) = ctx.gate.player(&key) else {
                    session.borrow_mut().reject_play(
                        stream_id,
                        "NetStream.Play.Failed",
                        "this stream has reached its player limit on this node",
                    );
                    return;
                };
                // The session writes Play.Start first; flush it into the
                // outbox before the hub queues cached media behind it.
                session.borrow_mut().accept_play(stream_id);
                let mut out = BytesMut::new();
                session.borrow_mut().poll_transmit(&mut out);
                outbox.push_urgent(out.freeze());
                let player = Player::new(self.conn, stream_id, outbox.clone(), session.clone());
                if !live {
                    // Play.Start now; media once the key is published here
                    // or its relay from another node starts.
                    let wait = match (remote, wait) {
                        (true, w) => w.unwrap_or(RELAY_START_WAIT).max(RELAY_START_WAIT),
                        (false, w) => w.unwrap_or(RELAY_START_WAIT),
                    };
                    let parked = ctx.hub.borrow_mut().park(&key, player, wait);
                    if let PlayOutcome::NotFound = parked {
                        // Went live and ended again while we looked.
                        session.borrow_mut().notify_unpublish(stream_id);
                        return;
                    }
                    ctx.stats.players.fetch_add(1, Ordering::Relaxed);
                    ctx.stats.plays_total.fetch_add(1, Ordering::Relaxed);
                    self.playing.push((key, stream_id, place));
                    return;
                }
                match ctx.hub.borrow_mut().play(&key, player) {
                    PlayOutcome::NotFound => {
                        // It ended between the check and now.
                        session.borrow_mut().notify_unpublish(stream_id);
                    }
                    PlayOutcome::Attached | PlayOutcome::Subscribing => {
                        ctx.stats.players.fetch_add(1, Ordering::Relaxed);
                        ctx.stats.plays_total.fetch_add(1, Ordering::Relaxed);
                        self.playing.push((key, stream_id, place));
                    }
                }
            }
            ServerEvent::PublishEnded { .. } => self.stop_publishing(ctx),
            ServerEvent::PlayEnded { stream_id } => {
                let before = self.playing.len();
                self.playing.retain(|(_, id, _)| *id != stream_id);
                let ended = (before - self.playing.len()) as u64;
                ctx.stats.players.fetch_sub(ended, Ordering::Relaxed);
                if self.playing.is_empty() {
                    ctx.hub.borrow_mut().leave(self.conn);
                }
            }
            _ => {}
        }
    }

    /// Media or metadata from this connection's publisher, to the hub.
    fn on_publisher_message(&self, message: RawMessage, ctx: &ConnectionContext) {
        if let Some((key, _)) = &self.publishing {
            ctx.hub.borrow_mut().on_publisher_message(key, message);
        }
    }

    fn stop_publishing(&mut self, ctx: &ConnectionContext) {
        if let Some((key, _)) = self.publishing.take() {
            ctx.hub.borrow_mut().unpublish(&key, self.conn);
            ctx.stats.publishers.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(conn = self.conn, stream = %redact(&key), "unpublished");
        }
        self.publisher_place = None;
    }

    fn leave(&mut self, ctx: &ConnectionContext) {
        self.stop_publishing(ctx);
        if !self.playing.is_empty() {
            ctx.stats
                .players
                .fetch_sub(self.playing.len() as u64, Ordering::Relaxed);
            self.playing.clear();
        }
        ctx.hub.borrow_mut().leave(self.conn);
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
