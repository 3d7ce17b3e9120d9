//! The shard's socket ring: an io_uring of the shard's own (the `io-uring`
//! crate), beside glommio's, for every socket the shard serves.
//!
//! - Accept is one multishot ACCEPT per listener; stopping is a cancel.
//! - Reads are one multishot RECV per connection into the shard's shared
//!   provided-buffer ring ([`buffers`]): an idle connection holds no read
//!   buffer. Received buffers go to the connection's inbox; running out of
//!   buffers (ENOBUFS) re-arms the receive once buffers are back, counted.
//! - Writes: a connection's queued `Bytes` leave as one SENDMSG with an
//!   iovec each (no copy), at most one in flight per socket; a short send
//!   resumes where it stopped.
//! - Sockets are registered files (Linux 6.13 and newer): each accepted
//!   socket also sits in the ring's fixed-file table at its slot, so
//!   receives and sends name it by index and the kernel looks up no fd per
//!   operation. Its slot is cleared before the fd is closed (the table
//!   holds its own reference).
//! - One task drives it from glommio: the ring signals an eventfd that the
//!   task awaits through glommio; each wake reaps every completion, then
//!   submits all queued work with one `io_uring_enter`.
//! - One deadline sweep per shard ([`SocketRing::sweep`]) covers the
//!   handshake, idle and write-stall limits: no timer per read or write.
//!
//! Memory handed to the kernel (buffers, iovecs, msghdrs, `Bytes` being
//! sent) stays alive until its completion; a socket is closed only when
//! nothing is in flight on it; the ring itself is never dropped (a shard
//! parks at shutdown; a panic aborts the process).
//!
//! This file is the driver (submit, wait, reap, dispatch) and the accept
//! and receive paths over one slot table, with the ring's own tests; the
//! write path is `send.rs`, closing and the sweep `close.rs`, TLS both ways
//! `tls.rs`, the per-socket handle `conn.rs`, the wake primitive `wake.rs`.

pub mod buffers;
mod close;
pub mod conn;
pub mod probe;
mod send;
pub mod tls;
pub mod wake;

pub use wake::Notify;

use send::SendBuf;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use self::buffers::{BufPool, BUFFER_GROUP};
use self::conn::{Conn, End, RingQueue, MAX_HELD_BUFFERS};
use super::stats::ShardStats;

/// Submission queue entries per shard ring (completions: four times this).
const RING_ENTRIES: u32 = 1024;
/// At most this many `Bytes` (iovecs) in one send.
const MAX_IOVECS: usize = 64;
/// At most this many bytes in one send.
const MAX_SEND_BYTES: usize = 1 << 20;
/// A closing connection gets this long to flush what it has queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// The most sockets a shard's fixed-file table holds (the open-files limit
/// bounds it too); sockets at slots past it are named by fd.
const MAX_FIXED_FILES: u32 = 65536;

/// What a submission was: its completion is dispatched by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Cancel = 4,
}

/// A submission's `user_data`: the operation, the slot it is for (a socket,
/// or a listener's index for an accept) and the slot's generation when it
/// was submitted, so that a completion for a socket since closed and its
/// slot reused is known for stale. Packed as 4 bits of op, 28 of
/// generation, 32 of slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UserData {
    op: Op,
    slot: u32,
    generation: u32,
}

impl UserData {
    const GENERATION_MASK: u32 = 0x0FFF_FFFF;

    fn new(op: Op, slot: u32, generation: u32) -> Self {
        Self {
            op,
            slot,
            generation: generation & Self::GENERATION_MASK,
        }
    }

    fn encode(self) -> u64 {
        ((self.op as u64) << 60) | ((self.generation as u64) << 32) | self.slot as u64
    }

    /// None for a value no submission of this ring carries.
    fn decode(ud: u64) -> Option<Self> {
        let op = match ud >> 60 {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Cancel,
            _ => return None,
        };
        Some(Self {
            op,
            slot: ud as u32,
            generation: ((ud >> 32) as u32) & Self::GENERATION_MASK,
        })
    }

    /// Whether this names the slot's current socket (generations wrap at
    /// 28 bits, as they are packed).
    fn is_current(self, generation: u32) -> bool {
        self.generation == generation & Self::GENERATION_MASK
    }
}

/// How many sockets the fixed-file table holds: [`MAX_FIXED_FILES`], or
/// fewer under the open-files limit (the kernel refuses a larger table).
fn fixed_file_limit() -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_cur.min(MAX_FIXED_FILES as u64) as u32
}

fn user_data(op: Op, slot: u32, generation: u32) -> u64 {
    UserData::new(op, slot, generation).encode()
}

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
    #[error(transparent)]
    Pool(#[from] buffers::PoolError),
    #[error("io_uring here lacks provided-buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19 and newer): {0}")]
    BufRing(std::io::Error),
    #[error("cannot set up the ring's eventfd: {0}")]
    EventFd(std::io::Error),
}

struct Socket {
    fd: OwnedFd,
    /// It is in the ring's fixed-file table, at its slot.
    fixed: bool,
    conn: Rc<Conn>,
    recv: Recv,
    /// Its send's buffers (kept between sends for their capacity).
    send: Option<Box<SendBuf>>,
    send_op: SendOp,
    accepted_at: Instant,
    last_read: Instant,
    /// The last time a send made progress (or began from idle).
    last_progress: Instant,
    life: Life,
}

/// Where a socket's receive stands. The fd closes only once no receive is
/// in flight, so an ended receive still remembers one that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    /// None in flight; one may be armed.
    Idle,
    /// A multishot receive is in flight.
    Armed,
    /// EOF or an error: never receive again.
    Ended,
    /// Ended, with the multishot still in flight (its completions drop).
    EndedInFlight,
}

impl Recv {
    fn in_flight(self) -> bool {
        matches!(self, Recv::Armed | Recv::EndedInFlight)
    }

    /// The multishot stopped (its last completion).
    fn stopped(self) -> Recv {
        match self {
            Recv::Armed => Recv::Idle,
            Recv::EndedInFlight => Recv::Ended,
            other => other,
        }
    }

    /// Nothing more is to be read.
    fn end(self) -> Recv {
        if self.in_flight() {
            Recv::EndedInFlight
        } else {
            Recv::Ended
        }
    }
}

/// Whether a send is in flight (one at most per socket: its `SendBuf`
/// must outlive it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendOp {
    Idle,
    InFlight,
}

/// Where a socket stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Open,
    /// Its task is done: flush what is queued until this deadline.
    Closing(Instant),
    /// The flush deadline passed: shut down, closed once nothing is in
    /// flight.
    Forced,
}

impl Life {
    fn closing(self) -> bool {
        self != Life::Open
    }
}

struct Slot {
    generation: u32,
    socket: Option<Socket>,
}

/// What a listener serves: its accepted sockets go to `on_accept` with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenKind {
    Rtmp,
    Rtmps,
    /// HTTP media (HTTP-FLV).
    Http,
    Https,
}

impl ListenKind {
    pub fn tls(self) -> bool {
        matches!(self, ListenKind::Rtmps | ListenKind::Https)
    }

    pub fn http(self) -> bool {
        matches!(self, ListenKind::Http | ListenKind::Https)
    }
}

struct Listener {
    fd: Option<OwnedFd>,
    kind: ListenKind,
    armed: bool,
    stopping: bool,
    retry_at: Option<Instant>,
}

/// Deadlines the sweep applies.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub handshake: Duration,
    pub idle: Duration,
    pub write: Duration,
}

/// Where the ring's submissions go: the kernel's io_uring or, in unit
/// tests, a list the test reads while it feeds completions to `complete`
/// by hand (the seam quinn-proto's tests use for packets). In a build
/// without tests the enum has one variant and every match on it is free
/// (so the size difference between the two does not matter).
#[allow(clippy::large_enum_variant)]
enum Submissions {
    Kernel(IoUring),
    #[cfg(test)]
    Fed(Vec<squeue::Entry>),
}

impl Submissions {
    /// The kernel's ring; None for a fed one.
    fn kernel(&mut self) -> Option<&mut IoUring> {
        match self {
            Submissions::Kernel(ring) => Some(ring),
            #[cfg(test)]
            Submissions::Fed(_) => None,
        }
    }
}

pub struct SocketRing {
    ring: RefCell<Submissions>,
    pool: Rc<BufPool>,
    queue: Rc<RingQueue>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    listeners: RefCell<Vec<Listener>>,
    /// Connections whose receive ended on ENOBUFS, to re-arm.
    starved: RefCell<Vec<(u32, u64)>>,
    /// Entries that did not fit in the submission queue.
    backlog: RefCell<VecDeque<squeue::Entry>>,
    /// The eventfd the ring signals completions on, until `drive` hands it
    /// to its glommio file.
    efd: Cell<Option<OwnedFd>>,
    stats: Arc<ShardStats>,
    timeouts: Timeouts,
    next_id: Cell<u64>,
    /// How long queued media may wait so that one send carries more.
    coalesce: Duration,
    /// When the pending send round is due (coalescing).
    flush_due: Cell<Option<Instant>>,
    /// Under load, completions are reaped at most once per this interval.
    wake_interval: Duration,
    /// The size of the ring's fixed-file table (0: none).
    fixed_files: u32,
    /// When completions were last reaped: the time of every input that
    /// pass handed out, read by connections instead of a clock each.
    reaped_at: Cell<Instant>,
}

impl SocketRing {
    /// Sets up the ring, its buffer ring and its eventfd.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        recv_buffers: usize,
        buffer_size: usize,
        stats: Arc<ShardStats>,
        timeouts: Timeouts,
        coalesce: Duration,
        wake_interval: Duration,
        defer_taskrun: bool,
        first_id: u64,
    ) -> Result<Rc<SocketRing>, RingError> {
        let ring = probe::build_ring(RING_ENTRIES, defer_taskrun)?;
        let pool = BufPool::new(recv_buffers, buffer_size)?;
        let (addr, entries) = pool.ring_addr();
        // SAFETY: the ring of entries lives in `pool`, which the SocketRing
        // keeps for its whole life, and the SocketRing is never dropped
        // while the kernel can use it (see the module doc).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(addr, entries, BUFFER_GROUP, 0)
                .map_err(RingError::BufRing)?;
        }
        // SAFETY: eventfd takes no pointers.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(RingError::EventFd(std::io::Error::last_os_error()));
        }
        // SAFETY: a new eventfd that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        // The kernel takes its own reference to the eventfd: it stays
        // valid for the ring even if ours is closed.
        ring.submitter()
            .register_eventfd(efd.as_raw_fd())
            .map_err(RingError::EventFd)?;
        // A sparse table: every entry empty until a socket is put in. Only
        // where a file leaves the table on its own (see
        // `probe::PER_FILE_FIXED_FILES`); elsewhere sockets are named by fd.
        let fixed_files = match probe::kernel_version().1 >= probe::PER_FILE_FIXED_FILES {
            true => fixed_file_limit(),
            false => 0,
        };
        let fixed_files = match fixed_files {
            0 => 0,
            n => match ring.submitter().register_files_sparse(n) {
                Ok(()) => n,
                Err(e) => {
                    tracing::warn!("no fixed-file table ({e}); sockets are named by fd");
                    0
                }
            },
        };
        Ok(Self::assemble(
            Submissions::Kernel(ring),
            pool,
            Some(efd),
            fixed_files,
            stats,
            timeouts,
            coalesce,
            wake_interval,
            first_id,
        ))
    }

    /// A ring with no kernel behind it (see [`Submissions`]): no buffer
    /// ring, eventfd or fixed-file table; never driven. Its send rounds
    /// wait up to `coalesce`.
    #[cfg(test)]
    fn fed(
        recv_buffers: usize,
        buffer_size: usize,
        stats: Arc<ShardStats>,
        timeouts: Timeouts,
        coalesce: Duration,
    ) -> Rc<SocketRing> {
        let pool = BufPool::new(recv_buffers, buffer_size).expect("the buffer pool");
        Self::assemble(
            Submissions::Fed(Vec::new()),
            pool,
            None,
            0,
            stats,
            timeouts,
            coalesce,
            Duration::ZERO,
            0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        ring: Submissions,
        pool: Rc<BufPool>,
        efd: Option<OwnedFd>,
        fixed_files: u32,
        stats: Arc<ShardStats>,
        timeouts: Timeouts,
        coalesce: Duration,
        wake_interval: Duration,
        first_id: u64,
    ) -> Rc<SocketRing> {
        Rc::new(SocketRing {
            ring: RefCell::new(ring),
            pool,
            queue: Rc::new(RingQueue::default()),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            listeners: RefCell::new(Vec::new()),
            starved: RefCell::new(Vec::new()),
            backlog: RefCell::new(VecDeque::new()),
            efd: Cell::new(efd),
            stats,
            timeouts,
            next_id: Cell::new(first_id),
            coalesce,
            flush_due: Cell::new(None),
            wake_interval,
            fixed_files,
            reaped_at: Cell::new(Instant::now()),
        })
    }

    /// Updates the fixed-file table from `slot` on.
    fn update_files(&self, slot: u32, fds: &[RawFd]) -> std::io::Result<usize> {
        match self.ring.borrow_mut().kernel() {
            Some(ring) => ring.submitter().register_files_update(slot, fds),
            None => Err(std::io::ErrorKind::Unsupported.into()),
        }
    }

    /// Starts accepting on a listening socket.
    pub fn listen(&self, fd: OwnedFd, kind: ListenKind) {
        let mut listeners = self.listeners.borrow_mut();
        listeners.push(Listener {
            fd: Some(fd),
            kind,
            armed: false,
            stopping: false,
            retry_at: None,
        });
        let index = listeners.len() - 1;
        drop(listeners);
        self.arm_accept(index);
    }

    fn arm_accept(&self, index: usize) {
        let entry = {
            let mut listeners = self.listeners.borrow_mut();
            let Some(l) = listeners.get_mut(index) else {
                return;
            };
            let Some(fd) = &l.fd else {
                return;
            };
            if l.armed || l.stopping {
                return;
            }
            l.armed = true;
            l.retry_at = None;
            opcode::AcceptMulti::new(types::Fd(fd.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(user_data(Op::Accept, index as u32, 0))
        };
        self.push(entry);
    }

    /// Stops accepting: cancels every listener's accept; each listener
    /// closes once its accept has completed.
    pub fn stop_accepting(&self) {
        let mut cancels = Vec::new();
        for (i, l) in self.listeners.borrow_mut().iter_mut().enumerate() {
            l.stopping = true;
            if l.armed {
                cancels.push(user_data(Op::Accept, i as u32, 0));
            } else {
                l.fd = None;
            }
        }
        for ud in cancels {
            self.cancel(ud);
        }
        self.queue.notify.notify();
    }

    /// A new connection id, unique on the node.
    pub fn new_id(&self) -> u64 {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        id
    }

    /// Takes an accepted socket into the ring and starts receiving on it.
    pub fn register(&self, fd: OwnedFd, tls: Option<crate::tls::RingTls>) -> Rc<Conn> {
        let id = self.new_id();
        let slot = self.free.borrow_mut().pop().unwrap_or_else(|| {
            let mut slots = self.slots.borrow_mut();
            slots.push(Slot {
                generation: 0,
                socket: None,
            });
            (slots.len() - 1) as u32
        });
        let conn = Rc::new(Conn::new(id, slot, self.queue.clone(), tls));
        let now = Instant::now();
        // The table takes its own reference to the socket; the slot was
        // cleared when its last socket closed (`maybe_close`).
        let fixed = slot < self.fixed_files
            && match self.update_files(slot, &[fd.as_raw_fd()]) {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!("fixed-file slot {slot}: {e}; this socket is named by fd");
                    false
                }
            };
        self.slots.borrow_mut()[slot as usize].socket = Some(Socket {
            fd,
            fixed,
            conn: conn.clone(),
            recv: Recv::Idle,
            send: None,
            send_op: SendOp::Idle,
            accepted_at: now,
            last_read: now,
            last_progress: now,
            life: Life::Open,
        });
        self.arm_recv(slot);
        if conn.tls.is_some() {
            // rustls may have nothing to say before the ClientHello, but the
            // schedule costs nothing.
            conn.schedule();
        }
        conn
    }

    fn arm_recv(&self, slot: u32) {
        let entry = {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[slot as usize];
            let Some(sock) = s.socket.as_mut() else {
                return;
            };
            if sock.recv != Recv::Idle || sock.life.closing() {
                return;
            }
            sock.recv = Recv::Armed;
            let entry = match sock.fixed {
                true => opcode::RecvMulti::new(types::Fixed(slot), BUFFER_GROUP).build(),
                false => {
                    opcode::RecvMulti::new(types::Fd(sock.fd.as_raw_fd()), BUFFER_GROUP).build()
                }
            };
            entry.user_data(user_data(Op::Recv, slot, s.generation))
        };
        self.push(entry);
    }

    fn cancel(&self, target: u64) {
        self.push(
            opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data(Op::Cancel, 0, 0)),
        );
    }

    /// Queues an entry; when the submission queue is full, submits first.
    fn push(&self, entry: squeue::Entry) {
        if !self.backlog.borrow().is_empty() {
            // Keep submission order: behind what is already waiting.
            self.backlog.borrow_mut().push_back(entry);
            return;
        }
        let mut ring = self.ring.borrow_mut();
        #[cfg(test)]
        if let Submissions::Fed(entries) = &mut *ring {
            return entries.push(entry);
        }
        let Some(ring) = ring.kernel() else {
            return;
        };
        // SAFETY: every entry points only at memory that outlives its
        // completion: listener and socket fds (and fixed-file slots) stay
        // open until their last completion, send buffers live in their
        // socket's boxed SendBuf until the send completes, and receives
        // select from the pool.
        let pushed = unsafe { ring.submission().push(&entry).is_ok() };
        if pushed {
            return;
        }
        let _ = ring.submit();
        // SAFETY: as above.
        if unsafe { ring.submission().push(&entry).is_err() } {
            self.backlog.borrow_mut().push_back(entry);
        }
    }

    /// Submits what is queued (and runs deferred completions) in one
    /// `io_uring_enter`, only when there is something to do.
    fn submit(&self) {
        let mut ring = self.ring.borrow_mut();
        let Some(ring) = ring.kernel() else {
            return;
        };
        let mut backlog = self.backlog.borrow_mut();
        while let Some(entry) = backlog.front() {
            // SAFETY: as in `push`.
            if unsafe { ring.submission().push(entry).is_err() } {
                break;
            }
            backlog.pop_front();
        }
        let needed = {
            let sq = ring.submission();
            !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
        };
        if needed {
            if let Err(e) = ring.submit() {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) {
                    tracing::warn!("io_uring submit failed: {e}");
                }
            }
        }
    }

    fn has_completions(&self) -> bool {
        let mut ring = self.ring.borrow_mut();
        let Some(ring) = ring.kernel() else {
            return false;
        };
        let mut cq = ring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// Runs the ring until the process exits. `on_accept` gets every
    /// accepted socket and what its listener serves.
    pub async fn drive(self: Rc<Self>, mut on_accept: impl FnMut(OwnedFd, ListenKind)) {
        let Some(efd) = self.efd.take() else {
            tracing::error!("the socket ring is driven once only");
            return;
        };
        // SAFETY: the eventfd is ours and used by nothing else; glommio's
        // file owns it from here (and is never dropped: see the module doc).
        let file = Rc::new(unsafe { glommio::io::BufferedFile::from_raw_fd(efd.into_raw_fd()) });
        let wait_kernel = |file: Rc<glommio::io::BufferedFile>| async move {
            let _ = file.read_at(0, 8).await;
        };
        let mut kernel = Box::pin(wait_kernel(file.clone()));
        let mut last_reap = Instant::now();
        loop {
            // Deferred completions run in this enter (GETEVENTS).
            self.submit();
            let reaped = self.reap(Instant::now(), &mut on_accept);
            if reaped > 0 {
                last_reap = Instant::now();
                // Let the connections woken above run; their output joins
                // this round's submission.
                futures_lite::future::yield_now().await;
            }
            self.reconcile();
            let now = Instant::now();
            let due = self.send_round(now);
            self.rearm_starved();
            self.submit();
            if reaped == 0 && !self.has_completions() {
                let from_kernel = futures_lite::future::or(
                    async {
                        (&mut kernel).await;
                        true
                    },
                    futures_lite::future::or(
                        async {
                            self.queue.notify.wait().await;
                            false
                        },
                        async {
                            match due {
                                Some(at) => {
                                    glommio::timer::sleep(at.saturating_duration_since(now)).await
                                }
                                None => std::future::pending::<()>().await,
                            }
                            false
                        },
                    ),
                )
                .await;
                if !from_kernel {
                    continue;
                }
                kernel = Box::pin(wait_kernel(file.clone()));
            }
            // Under load, let completions gather: reap at most once per
            // wake interval, so one enter and one pass take in many
            // sockets' input.
            let since = last_reap.elapsed();
            if since < self.wake_interval {
                glommio::timer::sleep(self.wake_interval - since).await;
            }
        }
    }

    /// When the input a connection is handed now arrived: the time of the
    /// last reap (input only ever comes from one, and the tasks it wakes run
    /// right after it), so a connection reads no clock per receive.
    pub fn reaped_at(&self) -> Instant {
        self.reaped_at.get()
    }

    /// Reaps every completion; returns how many.
    fn reap(&self, now: Instant, on_accept: &mut impl FnMut(OwnedFd, ListenKind)) -> usize {
        self.reaped_at.set(now);
        let mut total = 0;
        let mut batch = [(0u64, 0i32, 0u32); 64];
        loop {
            let n = {
                let mut ring = self.ring.borrow_mut();
                let Some(ring) = ring.kernel() else {
                    return total;
                };
                let mut n = 0;
                for cqe in ring.completion().take(batch.len()) {
                    batch[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                    n += 1;
                }
                n
            };
            if n == 0 {
                return total;
            }
            total += n;
            for &(ud, res, flags) in &batch[..n] {
                self.complete(ud, res, flags, now, on_accept);
            }
        }
    }

    fn complete(
        &self,
        ud: u64,
        res: i32,
        flags: u32,
        now: Instant,
        on_accept: &mut impl FnMut(OwnedFd, ListenKind),
    ) {
        let Some(ud) = UserData::decode(ud) else {
            return;
        };
        match ud.op {
            Op::Accept => self.accepted(ud.slot as usize, res, flags, now, on_accept),
            Op::Recv => self.received(ud, res, flags, now),
            Op::Send => self.sent(ud, res, now),
            Op::Cancel => {}
        }
    }

    fn accepted(
        &self,
        index: usize,
        res: i32,
        flags: u32,
        now: Instant,
        on_accept: &mut impl FnMut(OwnedFd, ListenKind),
    ) {
        let (kind, stopping) = {
            let mut listeners = self.listeners.borrow_mut();
            let Some(l) = listeners.get_mut(index) else {
                return;
            };
            if !cqueue::more(flags) {
                l.armed = false;
            }
            (l.kind, l.stopping)
        };
        if res >= 0 {
            // SAFETY: a successful accept completion carries a new fd that
            // nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if !stopping {
                on_accept(fd, kind);
            }
        } else if res != -libc::ECANCELED {
            // EMFILE and friends: back off rather than spin.
            tracing::warn!("accept failed: {}", std::io::Error::from_raw_os_error(-res));
            let mut listeners = self.listeners.borrow_mut();
            if let Some(l) = listeners.get_mut(index) {
                l.retry_at = Some(now + Duration::from_millis(50));
            }
            return;
        }
        let mut listeners = self.listeners.borrow_mut();
        let Some(l) = listeners.get_mut(index) else {
            return;
        };
        if l.armed {
            return;
        }
        if l.stopping {
            l.fd = None;
        } else {
            drop(listeners);
            self.arm_accept(index);
        }
    }

    fn received(&self, ud: UserData, res: i32, flags: u32, now: Instant) {
        let slot = ud.slot;
        let lease = match cqueue::buffer_select(flags) {
            Some(bid) => {
                let lease = self.pool.lease(bid, res.max(0) as usize);
                if lease.is_none() {
                    // A length past the buffer: give the buffer back anyway.
                    drop(self.pool.lease(bid, 0));
                }
                lease
            }
            None => None,
        };
        let more = cqueue::more(flags);
        let mut cancel = None;
        let mut rearm = false;
        {
            let mut slots = self.slots.borrow_mut();
            let Some(s) = slots
                .get_mut(slot as usize)
                .filter(|s| ud.is_current(s.generation))
            else {
                // A stale completion: `lease` drops, the buffer goes back.
                return;
            };
            let generation = s.generation;
            let Some(sock) = s.socket.as_mut() else {
                return;
            };
            if !more {
                sock.recv = sock.recv.stopped();
            }
            if res > 0 {
                sock.last_read = now;
                self.stats.add_in(res as u64);
                match lease {
                    Some(lease) if !sock.life.closing() => {
                        let full = sock.conn.push_input(lease);
                        if full && !sock.conn.paused.replace(true) && more {
                            cancel = Some(user_data(Op::Recv, slot, generation));
                        }
                    }
                    Some(_) => {}
                    None => {
                        sock.recv = sock.recv.end();
                        sock.conn.end(End::Read(std::io::Error::other(
                            "the kernel named a receive buffer outside the pool",
                        )));
                    }
                }
            } else if res == 0 {
                sock.recv = sock.recv.end();
                sock.conn.end(End::Eof);
            } else if res == -libc::ENOBUFS {
                self.stats.add_recv_no_buffers();
                self.starved.borrow_mut().push((slot, sock.conn.id));
            } else if res != -libc::ECANCELED {
                sock.recv = sock.recv.end();
                sock.conn
                    .end(End::Read(std::io::Error::from_raw_os_error(-res)));
            }
            if sock.recv == Recv::Idle && res != -libc::ENOBUFS {
                if sock.conn.is_held() || sock.conn.paused.get() {
                    // Paused: the connection asks to resume once it has
                    // caught up (or its hold ends), and `reconcile` re-arms.
                    sock.conn.paused.set(true);
                } else {
                    rearm = true;
                }
            }
        }
        if let Some(ud) = cancel {
            self.cancel(ud);
        }
        if rearm {
            self.arm_recv(slot);
        }
        self.maybe_close(slot);
    }

    /// Pauses or resumes receiving for connections that asked.
    fn reconcile(&self) {
        let list = std::mem::take(&mut *self.queue.reconcile.borrow_mut());
        for slot in list {
            let (arm, cancel) = {
                let mut slots = self.slots.borrow_mut();
                let Some(s) = slots.get_mut(slot as usize) else {
                    continue;
                };
                let generation = s.generation;
                let Some(sock) = s.socket.as_mut() else {
                    continue;
                };
                let conn = &sock.conn;
                if conn.is_held() || conn.inbox_len() >= MAX_HELD_BUFFERS {
                    let first = !conn.paused.replace(true);
                    (
                        false,
                        (first && sock.recv.in_flight())
                            .then(|| user_data(Op::Recv, slot, generation)),
                    )
                } else {
                    conn.paused.set(false);
                    (sock.recv == Recv::Idle, None)
                }
            };
            if let Some(ud) = cancel {
                self.cancel(ud);
            }
            if arm {
                self.arm_recv(slot);
            }
        }
    }

    fn rearm_starved(&self) {
        if self.pool.available() == 0 || self.starved.borrow().is_empty() {
            return;
        }
        let starved = std::mem::take(&mut *self.starved.borrow_mut());
        for (slot, id) in starved {
            let arm = {
                let slots = self.slots.borrow();
                let Some(sock) = slots
                    .get(slot as usize)
                    .and_then(|s| s.socket.as_ref())
                    .filter(|s| s.conn.id == id)
                else {
                    continue;
                };
                if sock.conn.paused.get() || sock.conn.is_held() {
                    // Re-armed by `reconcile` when it resumes.
                    sock.conn.paused.set(true);
                    false
                } else {
                    true
                }
            };
            if arm {
                self.arm_recv(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::conn::Input;
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn user_data_round_trips_and_knows_a_stale_generation() {
        let ud = UserData::new(Op::Send, 123_456, 0x0ABC_DEF1);
        assert_eq!(UserData::decode(ud.encode()), Some(ud));
        let ud = UserData::new(Op::Recv, u32::MAX, u32::MAX);
        let back = UserData::decode(ud.encode()).unwrap();
        assert_eq!(
            (back.op, back.slot, back.generation),
            (Op::Recv, u32::MAX, 0x0FFF_FFFF)
        );
        // The slot's own generation, wrapped as packed, is current; the one
        // before it (the socket that had the slot) is stale.
        assert!(back.is_current(u32::MAX));
        assert!(!UserData::new(Op::Recv, 7, 41).is_current(42));
        assert!(UserData::new(Op::Recv, 7, 42).is_current(42));
        for op in [Op::Accept, Op::Recv, Op::Send, Op::Cancel] {
            let ud = UserData::new(op, 1, 2);
            assert_eq!(UserData::decode(ud.encode()), Some(ud));
        }
        // Nothing this ring submits has op 0 or 5..15.
        assert_eq!(UserData::decode(0), None);
        assert_eq!(UserData::decode(5 << 60), None);
    }

    /// A ring with no kernel behind it: what it submits is read back with
    /// `submitted`, the completions a test feeds `complete` are the only
    /// ones it sees. Its sockets are one end of a Unix socket pair.
    fn fed_ring(stats: Arc<ShardStats>) -> Rc<SocketRing> {
        fed_ring_coalescing(stats, Duration::ZERO)
    }

    fn fed_ring_coalescing(stats: Arc<ShardStats>, coalesce: Duration) -> Rc<SocketRing> {
        let timeouts = Timeouts {
            handshake: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            write: Duration::from_secs(60),
        };
        SocketRing::fed(8, 4096, stats, timeouts, coalesce)
    }

    fn fed_socket(ring: &SocketRing) -> (Rc<Conn>, u32, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let conn = ring.register(OwnedFd::from(ours), None);
        let slot = conn.slot();
        let generation = ring.slots.borrow()[slot as usize].generation;
        (conn, generation, theirs)
    }

    /// What the ring submitted since the last call: each entry's op and slot.
    fn submitted(ring: &SocketRing) -> Vec<(Op, u32)> {
        match &mut *ring.ring.borrow_mut() {
            Submissions::Fed(entries) => entries
                .drain(..)
                .filter_map(|e| UserData::decode(e.get_user_data()))
                .map(|ud| (ud.op, ud.slot))
                .collect(),
            Submissions::Kernel(_) => panic!("not a fed ring"),
        }
    }

    fn recv_armed(ring: &SocketRing, slot: u32) -> bool {
        ring.slots.borrow()[slot as usize]
            .socket
            .as_ref()
            .is_some_and(|s| s.recv == Recv::Armed)
    }

    fn poll_input(conn: &Conn) -> Option<Input> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::future::Future::poll(std::pin::pin!(conn.next_input()), &mut cx) {
            std::task::Poll::Ready(input) => Some(input),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn fed_completions_a_stale_one_enobufs_and_a_cancel_racing_a_receive() {
        let stats = Arc::new(ShardStats::default());
        let ring = fed_ring(stats.clone());
        let mut on_accept = |_: OwnedFd, _: ListenKind| panic!("no listener here");
        let now = Instant::now();
        let (conn, generation, _peer) = fed_socket(&ring);
        let slot = conn.slot();
        assert!(recv_armed(&ring, slot), "registering arms the receive");
        assert_eq!(submitted(&ring), [(Op::Recv, slot)]);
        let more = 1 << 1; // IORING_CQE_F_MORE: the multishot goes on.
        assert!(cqueue::more(more));

        // A completion for the socket that had the slot before: nothing.
        let stale = UserData::new(Op::Recv, slot, generation.wrapping_sub(1)).encode();
        ring.complete(stale, 0, 0, now, &mut on_accept);
        assert!(poll_input(&conn).is_none() && recv_armed(&ring, slot));
        // A value no submission carries, and a cancel's own completion.
        ring.complete(0, 5, 0, now, &mut on_accept);
        ring.complete(
            user_data(Op::Cancel, 0, 0),
            -libc::ENOENT,
            0,
            now,
            &mut on_accept,
        );
        assert!(poll_input(&conn).is_none());

        // ENOBUFS ends the multishot: counted, the socket waits for buffers
        // (re-armed by `rearm_starved`), and the connection loses nothing.
        let recv = UserData::new(Op::Recv, slot, generation).encode();
        ring.complete(recv, -libc::ENOBUFS, 0, now, &mut on_accept);
        assert_eq!(ShardStats::get(&stats.recv_no_buffers), 1);
        assert_eq!(*ring.starved.borrow(), vec![(slot, conn.id)]);
        assert!(!recv_armed(&ring, slot) && poll_input(&conn).is_none());
        assert!(submitted(&ring).is_empty());
        ring.rearm_starved();
        assert!(recv_armed(&ring, slot), "buffers are free: armed again");
        assert_eq!(submitted(&ring), [(Op::Recv, slot)]);

        // A cancel (the connection paused) racing a receive: the cancel's
        // ECANCELED ends the multishot and re-arms it once the connection
        // has resumed, never while it is paused.
        conn.paused.set(true);
        ring.complete(recv, -libc::ECANCELED, 0, now, &mut on_accept);
        assert!(!recv_armed(&ring, slot) && poll_input(&conn).is_none());
        conn.paused.set(false);
        ring.queue.reconcile.borrow_mut().push(slot);
        assert!(submitted(&ring).is_empty(), "nothing armed while paused");
        ring.reconcile();
        assert!(recv_armed(&ring, slot), "resumed: armed again");
        assert_eq!(submitted(&ring), [(Op::Recv, slot)]);
        // Unpaused, an ECANCELED re-arms at once.
        ring.complete(recv, -libc::ECANCELED, 0, now, &mut on_accept);
        assert!(recv_armed(&ring, slot));
        assert_eq!(submitted(&ring), [(Op::Recv, slot)]);

        // Bytes the kernel says it put in no buffer of the pool end the
        // connection with that reason, whatever the multishot does next.
        ring.complete(recv, 5, more, now, &mut on_accept);
        match poll_input(&conn) {
            Some(Input::End(End::Read(e))) => {
                assert!(e.to_string().contains("outside the pool"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Its multishot is still in flight: the fd stays open until it
        // stops. The task's finish cancels it; the cancel's last completion
        // lets the socket close.
        ring.finish(&conn);
        assert_eq!(ring.open_sockets(), 1);
        // (A cancel names its target in its entry, not in its user data.)
        assert!(submitted(&ring).iter().any(|&(op, _)| op == Op::Cancel));
        ring.complete(recv, 5, more, now, &mut on_accept);
        assert_eq!(ring.open_sockets(), 1, "still in flight");
        ring.complete(recv, -libc::ECANCELED, 0, now, &mut on_accept);
        assert_eq!(ring.open_sockets(), 0);
        // A completion for the closed socket's slot is stale now.
        ring.complete(recv, 0, 0, now, &mut on_accept);
        assert!(submitted(&ring).is_empty());
    }

    #[test]
    fn a_fed_eof_ends_the_connection_and_a_send_error_closes_it() {
        let stats = Arc::new(ShardStats::default());
        let ring = fed_ring(stats);
        let mut on_accept = |_: OwnedFd, _: ListenKind| panic!("no listener here");
        let now = Instant::now();
        let (conn, generation, _peer) = fed_socket(&ring);
        let slot = conn.slot();
        ring.complete(
            UserData::new(Op::Recv, slot, generation).encode(),
            0,
            0,
            now,
            &mut on_accept,
        );
        assert!(matches!(poll_input(&conn), Some(Input::End(End::Eof))));
        assert!(!recv_armed(&ring, slot), "never armed after EOF");
        // A send that fails (the peer is gone) closes the connection.
        let (conn, generation, _peer) = fed_socket(&ring);
        conn.push(Bytes::from_static(b"hello"));
        submitted(&ring);
        ring.send_round(now);
        assert_eq!(submitted(&ring), [(Op::Send, conn.slot())]);
        ring.complete(
            UserData::new(Op::Send, conn.slot(), generation).encode(),
            -libc::EPIPE,
            0,
            now,
            &mut on_accept,
        );
        assert!(conn.is_closed());
    }

    #[test]
    fn a_receive_that_ended_remembers_one_in_flight() {
        assert_eq!(Recv::Armed.end(), Recv::EndedInFlight);
        assert_eq!(Recv::Idle.end(), Recv::Ended);
        assert_eq!(Recv::EndedInFlight.stopped(), Recv::Ended);
        assert_eq!(Recv::Armed.stopped(), Recv::Idle);
        assert_eq!(Recv::Ended.stopped(), Recv::Ended);
        assert!(Recv::EndedInFlight.in_flight() && !Recv::Ended.in_flight());
        assert!(Life::Forced.closing() && !Life::Open.closing());
    }

    #[test]
    fn a_short_send_resumes_where_it_stopped() {
        let mut send = SendBuf::new();
        send.bufs.push_back(Bytes::from_static(b"abc"));
        send.bufs.push_back(Bytes::from_static(b"defgh"));
        send.advance(4);
        assert_eq!(send.bufs.len(), 1);
        assert_eq!(&send.bufs[0][..], b"efgh");
        let msg = send.prepare();
        // SAFETY: `msg` points into `send`, alive here.
        let iov = unsafe { &*(*msg).msg_iov };
        assert_eq!(iov.iov_len, 4);
        assert_eq!(iov.iov_base as *const u8, send.bufs[0].as_ptr());
        send.advance(4);
        assert!(send.bufs.is_empty());
    }

    /// A socket ring in a real glommio shard on its own thread, listening on
    /// a loopback port (returned); `serve` runs on each accepted
    /// connection's task. The executor is never dropped: its thread parks
    /// with the ring.
    fn ring_server<F, Fut>(buffers: usize, size: usize, stats: Arc<ShardStats>, serve: F) -> u16
    where
        F: Fn(Rc<SocketRing>, Rc<Conn>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ex = glommio::LocalExecutorBuilder::default()
                .io_memory(512 * 1024)
                .make()
                .expect("a glommio executor");
            ex.run(async move {
                let timeouts = Timeouts {
                    handshake: Duration::from_secs(60),
                    idle: Duration::from_secs(60),
                    write: Duration::from_secs(60),
                };
                let ring = SocketRing::new(
                    buffers,
                    size,
                    stats,
                    timeouts,
                    Duration::ZERO,
                    Duration::ZERO,
                    false,
                    0,
                )
                .expect("the socket ring");
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                ring.listen(OwnedFd::from(listener), ListenKind::Rtmp);
                let on_accept = {
                    let ring = ring.clone();
                    move |fd: OwnedFd, _kind: ListenKind| {
                        let conn = ring.register(fd, None);
                        glommio::spawn_local(serve(ring.clone(), conn)).detach();
                    }
                };
                glommio::spawn_local(ring.clone().drive(on_accept)).detach();
                std::future::pending::<()>().await;
            });
        });
        port_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the ring listens")
    }

    /// The ring end to end inside a real glommio shard: an echo server on
    /// the socket ring with a two-buffer pool of 1 KiB, so receives run out
    /// of buffers (ENOBUFS) again and again. 4 MiB through it must come
    /// back byte for byte (multishot receive re-armed, leases handed back,
    /// SENDMSG with partial sends resumed), and the exhaustion be counted.
    #[test]
    fn an_echo_through_a_starved_ring_loses_nothing() {
        let stats = Arc::new(ShardStats::default());
        let port = ring_server(2, 1024, stats.clone(), |ring, conn| async move {
            while let Input::Data(lease) = conn.next_input().await {
                // Hold the input a moment (a yield) so other receives find
                // the pool empty.
                futures_lite::future::yield_now().await;
                conn.push(Bytes::copy_from_slice(&lease));
            }
            ring.finish(&conn);
        });
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let data: Vec<u8> = (0..4u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut writer = client.try_clone().unwrap();
        let sent = data.clone();
        let feeder = std::thread::spawn(move || writer.write_all(&sent).unwrap());
        let mut back = vec![0u8; data.len()];
        client.read_exact(&mut back).expect("the echo, whole");
        feeder.join().unwrap();
        assert!(back == data, "the echo differs from what was sent");
        let starved = stats
            .recv_no_buffers
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(starved > 0, "the two-buffer pool never ran out");
        assert_eq!(
            stats.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            data.len() as u64
        );
    }

    /// Sockets live in the ring's fixed-file table, which holds its own
    /// reference to each: a connection the server ends must still reach its
    /// peer as an end (the slot is cleared before the fd is closed), and the
    /// slot must then serve the next socket. Each connection gets its
    /// greeting echoed, then the server closes it.
    #[test]
    fn fixed_file_sockets_close_and_their_slots_serve_again() {
        let stats = Arc::new(ShardStats::default());
        let fixed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = fixed.clone();
        let port = ring_server(8, 4096, stats, move |ring, conn| {
            let seen = seen.clone();
            async move {
                if ring.is_fixed(conn.slot()) {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if let Input::Data(lease) = conn.next_input().await {
                    conn.push(Bytes::copy_from_slice(&lease));
                }
                ring.finish(&conn);
            }
        });
        // A connection that stays open, its multishot receive armed, while
        // the others come and go: their ends must not wait for its requests.
        let keeper = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        for i in 0..3 {
            let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let hello = format!("hello {i}");
            client.write_all(hello.as_bytes()).unwrap();
            let mut back = Vec::new();
            client
                .read_to_end(&mut back)
                .expect("the echo, then the end of the connection");
            assert_eq!(back, hello.as_bytes());
        }
        // Where the kernel has per-file fixed files, every socket used the
        // table (the keeper too).
        let expected = match probe::kernel_version().1 >= probe::PER_FILE_FIXED_FILES {
            true => 4,
            false => 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while fixed.load(std::sync::atomic::Ordering::Relaxed) != expected {
            assert!(
                Instant::now() < deadline,
                "{fixed:?} sockets in the table, not {expected}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(keeper);
    }

    /// A batched connection (a push target) is left out of the send rounds
    /// until its batch is due, urgent video included; the others are not;
    /// a close ends the batching.
    #[test]
    fn a_batched_connection_waits_for_its_batch_and_the_others_do_not() {
        let ring = fed_ring(Arc::new(ShardStats::default()));
        let (batched, _, _peer_a) = fed_socket(&ring);
        let (plain, _, _peer_b) = fed_socket(&ring);
        ring.queue.dirty.borrow_mut().clear();
        batched.unschedule();
        plain.unschedule();
        batched.set_batch(Duration::from_millis(100));
        let now = Instant::now();
        batched.push_urgent(Bytes::from_static(b"video"));
        assert!(
            !ring.queue.urgent.get(),
            "a batched connection's video is not urgent"
        );
        assert!(ring.queue.dirty.borrow().is_empty());
        assert_eq!(ring.queue.deferred.borrow().len(), 1);
        plain.push_urgent(Bytes::from_static(b"video"));
        assert_eq!(*ring.queue.dirty.borrow(), vec![plain.slot()]);
        // This round sends the plain one; the batch waits, and the round
        // says when it is due.
        let due = ring.send_round(now).expect("the batch's time");
        assert!(due > now && due <= Instant::now() + Duration::from_millis(100));
        assert_eq!(ring.queue.deferred.borrow().len(), 1);
        assert!(ring.queue.dirty.borrow().is_empty());
        // Queued more meanwhile: still one entry, one send when due.
        batched.push(Bytes::from_static(b"audio"));
        assert_eq!(ring.queue.deferred.borrow().len(), 1);
        assert_eq!(ring.send_round(due), None, "due: sent, nothing left");
        assert!(ring.queue.deferred.borrow().is_empty());
        // Closing: what is left goes with the next round, not a batch
        // later, even when it was already waiting for one.
        batched.set_batch(Duration::from_millis(100));
        batched.unschedule();
        batched.push(Bytes::from_static(b"deleteStream"));
        assert_eq!(ring.queue.deferred.borrow().len(), 1);
        ring.finish(&batched);
        assert_eq!(*ring.queue.dirty.borrow(), vec![batched.slot()]);
    }

    /// A batch that is due has waited its budget already: it leaves in that
    /// round, not a send-coalescing interval later.
    #[test]
    fn a_due_batch_does_not_wait_for_the_send_coalescing_too() {
        let ring = fed_ring_coalescing(Arc::new(ShardStats::default()), Duration::from_millis(30));
        let (batched, _, _peer) = fed_socket(&ring);
        ring.queue.dirty.borrow_mut().clear();
        batched.unschedule();
        batched.set_batch(Duration::from_millis(100));
        let now = Instant::now();
        batched.push(Bytes::from_static(b"audio"));
        let due = ring.send_round(now).expect("the batch's time");
        submitted(&ring);
        assert_eq!(ring.send_round(due), None, "sent when due");
        assert_eq!(submitted(&ring), vec![(Op::Send, batched.slot())]);
    }
}
