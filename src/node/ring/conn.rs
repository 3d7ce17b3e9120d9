//! One connection's state as its three users share it on the shard: the
//! socket ring fills its inbox with received buffers and drains its output
//! queue into sends; the connection task reads the inbox; the hub queues
//! media for it. Single-shard (`Rc`), never locked.
//!
//! Output is a queue of shared `Bytes` (session replies and media, in
//! order), counted in bytes (queued and in flight) so the hub can apply the
//! slow-player rules; the ring gathers it into one SENDMSG with an iovec
//! per `Bytes`, so nothing is copied per player.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::buffers::Lease;
use crate::protocol::RawMessage;

/// Why a connection's input ended.
#[derive(Debug)]
pub enum End {
    /// The peer closed its side.
    Eof,
    Read(std::io::Error),
    Write(std::io::Error),
    /// No handshake, or no input, within the limit.
    Timeout(&'static str),
    /// The peer took no bytes for this long: cut like a slow player.
    Stalled(std::time::Duration),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Eof => f.write_str("closed by peer"),
            End::Read(e) => write!(f, "read: {e}"),
            End::Write(e) => write!(f, "write: {e}"),
            End::Timeout(what) => f.write_str(what),
            End::Stalled(d) => write!(f, "write stalled for {d:?}"),
        }
    }
}

/// What the hub (or the shard, at shutdown) tells a connection to apply
/// to its own session: nothing else touches a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The stream played on `stream_id` ended: write UnpublishNotify and
    /// StreamEOF. With `waiting` the player stays parked for a re-publish;
    /// otherwise the connection closes once that is written.
    Ended { stream_id: u32, waiting: bool },
    /// The stream came back: write PublishNotify, then call `Hub::resume`,
    /// which attaches the player (fresh headers and a keyframe follow).
    Republished { stream_id: u32 },
    /// A play that waited for its stream: it never came. StreamNotFound,
    /// then close.
    NotFound { stream_id: u32 },
    /// The node is shutting down: an encoder that can reconnect is asked
    /// to; anything else closes.
    Shutdown,
}

/// Notices a connection may have waiting; past this it is closed (and
/// counted): its task has stopped taking input.
pub const MAX_NOTICES: usize = 16;

/// What the connection task gets next.
#[derive(Debug)]
pub enum Input {
    Data(Lease),
    /// RTMPT: bytes a `/send` body carried (see [`Conn::tunnel`]).
    Tunnel(Bytes),
    Notice(Notice),
    End(End),
    /// Closed on this side (kick, takeover, slow player, shutdown, refusal).
    Closed,
}

/// Work the connection asks of the ring; the ring drains these lists.
#[derive(Default)]
pub struct RingQueue {
    /// Connections with output queued and possibly no send in flight.
    pub dirty: RefCell<Vec<u32>>,
    /// Connections whose receive should be paused or resumed (see
    /// `SocketRing::reconcile`).
    pub reconcile: RefCell<Vec<u32>>,
    /// Some output is a reply a peer waits for: send without coalescing.
    pub urgent: Cell<bool>,
    /// Batched connections (push targets) with output queued, each with
    /// when its batch is due: they join `dirty` then.
    pub deferred: RefCell<Vec<(u32, Instant)>>,
    pub notify: super::wake::Notify,
}

/// A connection holds at most this many received buffers; past it the ring
/// stops receiving for it until it has read them (back-pressure).
pub const MAX_HELD_BUFFERS: usize = 4;

/// Output queue slots a connection keeps between bursts.
const KEPT_QUEUE_CAPACITY: usize = 16;

pub struct Conn {
    pub id: u64,
    /// Its slot in the shard's socket table.
    slot: u32,
    ring: Rc<RingQueue>,
    queue: RefCell<VecDeque<Bytes>>,
    /// Bytes queued plus bytes in flight.
    bytes: Cell<usize>,
    closed: Cell<bool>,
    /// In the ring's dirty list already.
    scheduled: Cell<bool>,
    inbox: RefCell<VecDeque<Lease>>,
    notices: RefCell<VecDeque<Notice>>,
    end: RefCell<Option<End>>,
    /// The ring stopped receiving for it (inbox full or paced).
    pub(in crate::node) paused: Cell<bool>,
    /// The task holds input back (ingest cap): the ring pauses receiving.
    held: Cell<bool>,
    /// The RTMP handshake and connect are done (the handshake deadline no
    /// longer applies).
    connected: Cell<bool>,
    /// The peer only reads from here on (an HTTP-FLV viewer): the idle
    /// limit does not apply; the write-stall limit does.
    read_only_peer: Cell<bool>,
    /// HTTP media: its bytes out are also counted as HTTP bytes.
    http: Cell<bool>,
    waker: Cell<Option<Waker>>,
    /// The task waiting for its output to fall to a bound, and the bound
    /// (an HTTP connection whose client asks faster than it reads).
    room: Cell<Option<(usize, Waker)>>,
    /// A consumer on the shard (the LL-HLS packager) takes messages, not
    /// bytes: what the hub queues for it, payloads shared.
    messages: Option<Box<RefCell<VecDeque<RawMessage>>>>,
    /// RTMPT: what the tunnel's `/send` bodies carried, not yet taken
    /// by the session task (see [`Conn::tunnel`]).
    tunnel_in: Option<Box<TunnelIn>>,
    /// RTMPE: what is queued from here on is encrypted as it is queued
    /// (each connection's own copy: the stream is per connection).
    cipher: RefCell<Option<crate::protocol::rtmpe::Cipher>>,
    /// RTMPS: close_notify has been queued.
    pub(in crate::node) close_notified: Cell<bool>,
    /// Bytes the socket took, since it opened (TLS records included).
    written: Cell<u64>,
    /// Its output leaves in batches at most this often (a push target:
    /// see `Conn::set_batch`); None: with the shard's next send round.
    batch: Cell<Option<Duration>>,
    /// A player whose latency budget is 0: every message it is queued
    /// starts a send round at once (audio too).
    immediate: Cell<bool>,
    /// RTMPS: the TLS session the ring encrypts output through and the
    /// task decrypts input through.
    pub tls: Option<Box<RefCell<crate::tls::RingTls>>>,
}

impl Conn {
    pub(in crate::node) fn new(
        id: u64,
        slot: u32,
        ring: Rc<RingQueue>,
        tls: Option<crate::tls::RingTls>,
    ) -> Self {
        Self {
            id,
            slot,
            ring,
            queue: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            closed: Cell::new(false),
            scheduled: Cell::new(false),
            inbox: RefCell::new(VecDeque::new()),
            notices: RefCell::new(VecDeque::new()),
            end: RefCell::new(None),
            paused: Cell::new(false),
            held: Cell::new(false),
            connected: Cell::new(false),
            read_only_peer: Cell::new(false),
            http: Cell::new(false),
            waker: Cell::new(None),
            room: Cell::new(None),
            messages: None,
            tunnel_in: None,
            cipher: RefCell::new(None),
            close_notified: Cell::new(false),
            written: Cell::new(0),
            batch: Cell::new(None),
            immediate: Cell::new(false),
            tls: tls.map(|t| Box::new(RefCell::new(t))),
        }
    }

    /// A connection with no socket, for a consumer on the shard (the
    /// LL-HLS packager): the messages the hub queues wait in it as they
    /// are ([`Conn::pop_message`]), and its own ring queue's notify wakes
    /// that consumer.
    pub(in crate::node) fn detached(id: u64) -> (Rc<Conn>, Rc<RingQueue>) {
        let queue = Rc::new(RingQueue::default());
        let mut conn = Conn::new(id, u32::MAX, queue.clone(), None);
        conn.messages = Some(Box::default());
        (Rc::new(conn), queue)
    }

    /// A connection with no socket of its own, for an RTMP session
    /// tunnelled in HTTP (RTMPT): the HTTP connections that carry its
    /// requests feed its input ([`Conn::push_tunnel_input`]) and take its
    /// output ([`Conn::take_tunnel_output`]) into their answers.
    pub(in crate::node) fn tunnel(id: u64) -> Rc<Conn> {
        let mut conn = Conn::new(id, u32::MAX, Rc::new(RingQueue::default()), None);
        conn.tunnel_in = Some(Box::default());
        Rc::new(conn)
    }

    /// RTMPT: queues bytes of a `/send` body for the session task. False
    /// for a connection that is not a tunnel, or closed.
    pub(in crate::node) fn push_tunnel_input(&self, b: Bytes) -> bool {
        let Some(tunnel) = &self.tunnel_in else {
            return false;
        };
        if self.closed.get() {
            return false;
        }
        tunnel.bytes.set(tunnel.bytes.get() + b.len());
        tunnel.queue.borrow_mut().push_back(b);
        self.wake();
        true
    }

    /// Tunnel input fed and not yet taken by the session task, in bytes.
    pub(in crate::node) fn tunnel_untaken(&self) -> usize {
        self.tunnel_in.as_ref().map_or(0, |t| t.bytes.get())
    }

    /// RTMPT: resolves once the session task has taken at most `limit`
    /// bytes fed, or the connection is closed. One waiter at a time.
    pub(in crate::node) fn tunnel_taken(&self, limit: usize) -> TunnelTaken<'_> {
        TunnelTaken { conn: self, limit }
    }

    /// RTMPT: takes queued output for an answer, whole `Bytes` (shared,
    /// not copied) up to about `max` bytes (at least one if any is
    /// queued), into `out`; returns the bytes taken.
    pub(in crate::node) fn take_tunnel_output(&self, max: usize, out: &mut Vec<Bytes>) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(b) = self.pop_output() else {
                break;
            };
            taken += b.len();
            self.sent(b.len());
            out.push(b);
        }
        if !self.has_output() {
            // Its own ring queue has no ring to drain it: forget the
            // schedule so the next output schedules afresh.
            self.unschedule();
            self.ring.dirty.borrow_mut().clear();
            self.ring.deferred.borrow_mut().clear();
        }
        taken
    }

    /// Queues a message for a consumer on the shard (a detached `Conn`):
    /// counted in [`Conn::queued_bytes`] as bytes are, so the slow-player
    /// rules hold for it too. Nothing for a socket's `Conn`.
    pub fn push_message(&self, m: &RawMessage) {
        let Some(messages) = &self.messages else {
            return;
        };
        if self.closed.get() {
            return;
        }
        self.bytes.set(self.bytes.get() + m.payload.len());
        messages.borrow_mut().push_back(m.clone());
        self.schedule();
    }

    /// The next message queued for a consumer on the shard.
    pub(in crate::node) fn pop_message(&self) -> Option<RawMessage> {
        let m = self.messages.as_ref()?.borrow_mut().pop_front()?;
        self.sent(m.payload.len());
        Some(m)
    }

    pub(in crate::node) fn slot(&self) -> u32 {
        self.slot
    }

    // ----- output (hub and connection task)

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.get()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Queues media or a notice: it leaves with the shard's next send
    /// round, which may wait up to `players.send_coalesce_ms` so that one
    /// send carries several messages.
    pub fn push(&self, b: Bytes) {
        if self.closed.get() || b.is_empty() {
            return;
        }
        let b = match &mut *self.cipher.borrow_mut() {
            None => b,
            Some(c) => {
                let mut sealed = b.to_vec();
                c.apply(&mut sealed);
                Bytes::from(sealed)
            }
        };
        self.bytes.set(self.bytes.get() + b.len());
        self.queue.borrow_mut().push_back(b);
        self.schedule();
    }

    /// Queues a reply the peer waits for (handshake, command results):
    /// the next send round starts at once.
    pub fn push_urgent(&self, b: Bytes) {
        if !b.is_empty() && !self.closed.get() {
            self.push(b);
            if self.batch.get().is_some() {
                // Batched: nothing here is waited for.
                return;
            }
            self.ring.urgent.set(true);
            // Already scheduled (audio waiting): the round must start now.
            self.ring.notify.notify();
        }
    }

    /// RTMPE: everything queued after this is encrypted with `cipher`, in
    /// the order queued (the order it is sent).
    pub fn set_cipher(&self, cipher: crate::protocol::rtmpe::Cipher) {
        *self.cipher.borrow_mut() = Some(cipher);
    }

    /// Applies a player's latency budget (`players.latency_ms`): the
    /// low-latency default changes nothing; 0 sends each message at once;
    /// a budget batches its media ([`set_batch`](Self::set_batch)), video
    /// included, audio and video in one queue so they stay in order.
    pub fn set_latency(&self, latency: crate::config::Latency) {
        match latency {
            crate::config::Latency::LowLatency { .. } => {}
            crate::config::Latency::Immediate => self.immediate.set(true),
            crate::config::Latency::Budget { ms } => self.set_batch(Duration::from_millis(ms)),
        }
    }

    /// Whether every message queued for it is sent at once.
    pub fn is_immediate(&self) -> bool {
        self.immediate.get()
    }

    /// From now on, what is queued leaves at most `every` after the first
    /// of it, video included, in one send: for a peer that takes media and
    /// waits for nothing (a push target), fewer and larger sends. Closing
    /// ends the batching.
    pub fn set_batch(&self, every: Duration) {
        self.batch.set((!every.is_zero()).then_some(every));
    }

    /// Asks the connection to flush what is queued and close.
    pub fn close(&self) {
        // What is left goes now, not a batch later.
        self.batch.set(None);
        if !self.closed.replace(true) {
            self.wake();
            self.wake_room();
            if let Some(waker) = self.tunnel_in.as_ref().and_then(|t| t.taken.take()) {
                waker.1.wake();
            }
        }
    }

    /// Resolves once at most `limit` bytes are queued or in flight, or the
    /// connection is closed: woken by the send completions that make the
    /// room, never polled on a timer. One task waits at a time.
    pub fn room(&self, limit: usize) -> Room<'_> {
        Room { conn: self, limit }
    }

    fn wake_room(&self) {
        if let Some((limit, waker)) = self.room.take() {
            if self.closed.get() || self.bytes.get() <= limit {
                waker.wake();
            } else {
                self.room.set(Some((limit, waker)));
            }
        }
    }

    /// Queues a notice for the connection task (see [`Notice`]). False if
    /// the connection is closed, or had [`MAX_NOTICES`] waiting (it is
    /// closed then).
    pub fn notice(&self, notice: Notice, stats: &crate::node::stats::ShardStats) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut notices = self.notices.borrow_mut();
        if notices.len() >= MAX_NOTICES {
            drop(notices);
            stats.add_queue_overflow(crate::node::stats::Queue::Notices);
            self.close();
            return false;
        }
        notices.push_back(notice);
        drop(notices);
        self.wake();
        true
    }

    /// The next notice, as the connection task would get it (tests).
    #[cfg(test)]
    pub(in crate::node) fn take_notice(&self) -> Option<Notice> {
        self.notices.borrow_mut().pop_front()
    }

    /// Puts the connection on the ring's list of sockets to send for.
    pub(in crate::node) fn schedule(&self) {
        if !self.scheduled.replace(true) {
            match self.batch.get() {
                Some(every) if !self.closed.get() => {
                    let due = Instant::now() + every;
                    self.ring.deferred.borrow_mut().push((self.slot, due));
                }
                _ => self.ring.dirty.borrow_mut().push(self.slot),
            }
            self.ring.notify.notify();
        }
    }

    /// Schedules for the shard's next send round whatever its batching: a
    /// batch that did not fit one send goes on at once, and a closing
    /// connection's output does not wait. (In the dirty list twice is
    /// harmless: the second pass finds nothing.)
    pub(in crate::node) fn schedule_now(&self) {
        self.scheduled.set(true);
        self.ring.dirty.borrow_mut().push(self.slot);
        self.ring.notify.notify();
    }

    // ----- the ring's side of output

    pub(in crate::node) fn unschedule(&self) {
        self.scheduled.set(false);
    }

    /// Pops queued output for a send. A queue that grew for a burst (a
    /// new player's GOP cache) gives the memory back once it drains.
    pub(in crate::node) fn pop_output(&self) -> Option<Bytes> {
        let mut queue = self.queue.borrow_mut();
        let b = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEPT_QUEUE_CAPACITY {
            queue.shrink_to(KEPT_QUEUE_CAPACITY);
        }
        b
    }

    pub(in crate::node) fn has_output(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// `n` bytes left the queue for good (sent, or turned into TLS records).
    pub(in crate::node) fn sent(&self, n: usize) {
        self.bytes.set(self.bytes.get().saturating_sub(n));
        self.wake_room();
    }

    /// The socket took `n` bytes.
    pub(in crate::node) fn wrote(&self, n: usize) {
        self.written.set(self.written.get() + n as u64);
    }

    /// Bytes the socket took since it opened.
    pub fn written(&self) -> u64 {
        self.written.get()
    }

    /// `n` bytes joined the count without passing through the queue (TLS
    /// records in flight).
    pub(in crate::node) fn added(&self, n: usize) {
        self.bytes.set(self.bytes.get() + n);
    }

    /// Output nobody will send any more (the socket is gone).
    pub(in crate::node) fn discard_output(&self) {
        self.queue.borrow_mut().clear();
        self.bytes.set(0);
        self.closed.set(true);
        self.wake_room();
    }

    // ----- input (the ring fills, the task reads)

    pub(in crate::node) fn push_input(&self, lease: Lease) -> bool {
        let mut inbox = self.inbox.borrow_mut();
        inbox.push_back(lease);
        let full = inbox.len() >= MAX_HELD_BUFFERS;
        drop(inbox);
        self.wake();
        full
    }

    pub(in crate::node) fn inbox_len(&self) -> usize {
        self.inbox.borrow().len()
    }

    pub(in crate::node) fn drop_input(&self) {
        self.inbox.borrow_mut().clear();
    }

    /// Ends the connection's input: the task sees it after the buffers
    /// already received. The first reason wins.
    pub(in crate::node) fn end(&self, why: End) {
        let mut end = self.end.borrow_mut();
        if end.is_none() {
            *end = Some(why);
        }
        drop(end);
        self.wake();
    }

    pub(in crate::node) fn is_connected(&self) -> bool {
        self.connected.get()
    }

    pub fn set_connected(&self) {
        self.connected.set(true);
    }

    /// From here on the peer only reads: no idle limit (see the sweep).
    pub fn set_read_only_peer(&self) {
        self.read_only_peer.set(true);
    }

    pub(in crate::node) fn expects_input(&self) -> bool {
        !self.read_only_peer.get()
    }

    /// Marks an HTTP media connection (counted apart in bytes out).
    pub fn set_http(&self) {
        self.http.set(true);
    }

    pub(in crate::node) fn is_http(&self) -> bool {
        self.http.get()
    }

    /// Holds input back (true) or lets it flow again (false); either way
    /// the ring reconciles its receive with it.
    pub fn hold(&self, on: bool) {
        self.held.set(on);
        self.ask_reconcile();
    }

    pub(in crate::node) fn is_held(&self) -> bool {
        self.held.get()
    }

    fn ask_reconcile(&self) {
        if self.slot == u32::MAX {
            // No socket (a tunnel, a consumer on the shard): no receive.
            return;
        }
        self.ring.reconcile.borrow_mut().push(self.slot);
        self.ring.notify.notify();
    }

    /// The next received buffer, or why input ended.
    pub fn next_input(&self) -> NextInput<'_> {
        NextInput { conn: self }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

pub struct NextInput<'a> {
    conn: &'a Conn,
}

impl Future for NextInput<'_> {
    type Output = Input;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Input> {
        let conn = self.conn;
        if conn.closed.get() {
            // Why it closed, when the socket said (a write or read error,
            // a limit); a close of our own has no reason.
            return Poll::Ready(match conn.end.borrow_mut().take() {
                Some(e) => Input::End(e),
                None => Input::Closed,
            });
        }
        if let Some(notice) = conn.notices.borrow_mut().pop_front() {
            return Poll::Ready(Input::Notice(notice));
        }
        let mut inbox = conn.inbox.borrow_mut();
        if let Some(lease) = inbox.pop_front() {
            let drained = inbox.len() < MAX_HELD_BUFFERS / 2;
            drop(inbox);
            if drained && conn.paused.get() && !conn.held.get() {
                conn.ask_reconcile();
            }
            return Poll::Ready(Input::Data(lease));
        }
        drop(inbox);
        if let Some(tunnel) = &conn.tunnel_in {
            if let Some(b) = tunnel.queue.borrow_mut().pop_front() {
                tunnel.bytes.set(tunnel.bytes.get() - b.len());
                if let Some((limit, waker)) = tunnel.taken.take() {
                    if tunnel.bytes.get() <= limit {
                        waker.wake();
                    } else {
                        tunnel.taken.set(Some((limit, waker)));
                    }
                }
                return Poll::Ready(Input::Tunnel(b));
            }
        }
        if let Some(end) = conn.end.borrow_mut().take() {
            return Poll::Ready(Input::End(end));
        }
        conn.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// RTMPT input waiting for the session task.
#[derive(Default)]
struct TunnelIn {
    queue: RefCell<VecDeque<Bytes>>,
    bytes: Cell<usize>,
    /// The feeder waiting for the session to take input, and its bound.
    taken: Cell<Option<(usize, Waker)>>,
}

/// See [`Conn::tunnel_taken`].
pub struct TunnelTaken<'a> {
    conn: &'a Conn,
    limit: usize,
}

impl Future for TunnelTaken<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let conn = self.conn;
        let Some(tunnel) = &conn.tunnel_in else {
            return Poll::Ready(());
        };
        if conn.closed.get() || tunnel.bytes.get() <= self.limit {
            return Poll::Ready(());
        }
        tunnel.taken.set(Some((self.limit, cx.waker().clone())));
        Poll::Pending
    }
}

/// See [`Conn::room`].
pub struct Room<'a> {
    conn: &'a Conn,
    limit: usize,
}

impl Future for Room<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let conn = self.conn;
        if conn.closed.get() || conn.bytes.get() <= self.limit {
            return Poll::Ready(());
        }
        conn.room.set(Some((self.limit, cx.waker().clone())));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::super::wake::tests::counter;
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_tunnel_feeds_its_session_waits_for_it_and_gives_its_output_whole() {
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let conn = Conn::tunnel(7);
        assert!(conn.push_tunnel_input(Bytes::from_static(b"abc")));
        assert!(conn.push_tunnel_input(Bytes::from_static(b"defg")));
        // The feeder waits until the session has taken all but `limit`.
        let mut taken = std::pin::pin!(conn.tunnel_taken(0));
        assert!(taken.as_mut().poll(&mut cx).is_pending());
        let mut next = std::pin::pin!(conn.next_input());
        match next.as_mut().poll(&mut cx) {
            Poll::Ready(Input::Tunnel(b)) => assert_eq!(&b[..], b"abc"),
            other => panic!("{other:?}"),
        }
        assert_eq!(count.0.load(Ordering::Relaxed), 0, "4 bytes still untaken");
        let mut next = std::pin::pin!(conn.next_input());
        assert!(matches!(
            next.as_mut().poll(&mut cx),
            Poll::Ready(Input::Tunnel(_))
        ));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(taken.as_mut().poll(&mut cx).is_ready());
        // Output leaves in whole Bytes, up to about the bound, and the
        // count the slow-player rules read follows.
        for _ in 0..3 {
            conn.push(Bytes::from(vec![1u8; 100]));
        }
        let mut out = Vec::new();
        assert_eq!(conn.take_tunnel_output(150, &mut out), 200);
        assert_eq!((out.len(), conn.queued_bytes()), (2, 100));
        assert_eq!(conn.take_tunnel_output(150, &mut out), 100);
        assert_eq!(conn.queued_bytes(), 0);
        // A close wakes a waiting feeder, and input is refused after it.
        assert!(conn.push_tunnel_input(Bytes::from_static(b"h")));
        let mut taken = std::pin::pin!(conn.tunnel_taken(0));
        assert!(taken.as_mut().poll(&mut cx).is_pending());
        conn.close();
        assert!(taken.as_mut().poll(&mut cx).is_ready());
        assert!(!conn.push_tunnel_input(Bytes::from_static(b"i")));
        // A socket's connection is no tunnel.
        let (plain, _queue) = Conn::detached(8);
        assert!(!plain.push_tunnel_input(Bytes::from_static(b"x")));
    }

    #[test]
    fn room_wakes_when_sends_make_it_and_when_the_connection_closes() {
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let (conn, _queue) = Conn::detached(1);
        conn.push(Bytes::from(vec![0u8; 100]));
        let mut room = std::pin::pin!(conn.room(40));
        assert!(room.as_mut().poll(&mut cx).is_pending());
        // A send that leaves too much queued does not wake it.
        conn.sent(50);
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        conn.sent(10);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(room.as_mut().poll(&mut cx).is_ready());
        // Waiting again, a close wakes it and it resolves.
        conn.push(Bytes::from(vec![0u8; 100]));
        let mut room = std::pin::pin!(conn.room(40));
        assert!(room.as_mut().poll(&mut cx).is_pending());
        conn.close();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(room.as_mut().poll(&mut cx).is_ready());
    }
}
