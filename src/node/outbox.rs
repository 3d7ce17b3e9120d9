//! A connection's outgoing queue: session replies and shared media `Bytes`,
//! in order, counted in bytes so the hub can apply the slow-player policy.
//! Single-shard only (`Rc`), never locked; the connection task drains it
//! into batched writes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

/// Messages smaller than this are copied into a shared write batch; larger
/// ones are written from their own buffer.
const COALESCE_BELOW: usize = 4096;

#[derive(Debug)]
pub struct Outbox {
    queue: RefCell<VecDeque<Bytes>>,
    bytes: Cell<usize>,
    closed: Cell<bool>,
    doorbell: LocalSender<()>,
}

impl Outbox {
    /// The outbox and the receiver its owner waits on for "something queued".
    pub fn new() -> (Self, LocalReceiver<()>) {
        let (doorbell, rx) = local_channel::new_bounded(1);
        (
            Self {
                queue: RefCell::new(VecDeque::with_capacity(64)),
                bytes: Cell::new(0),
                closed: Cell::new(false),
                doorbell,
            },
            rx,
        )
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.get()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    pub fn push(&self, b: Bytes) {
        if self.closed.get() || b.is_empty() {
            return;
        }
        self.bytes.set(self.bytes.get() + b.len());
        self.queue.borrow_mut().push_back(b);
        self.ring();
    }

    /// Asks the connection to flush what is queued and close.
    pub fn close(&self) {
        self.closed.set(true);
        self.ring();
    }

    fn ring(&self) {
        // A full doorbell already says "look at the queue".
        let _ = self.doorbell.try_send(());
    }

    /// The next write: a large message as its own shared `Bytes` (no copy
    /// per player), or small ones (replies, audio) coalesced into `batch` up
    /// to `max` bytes, so one write carries every queued message that fits.
    pub fn next_write(&self, batch: &mut BytesMut, max: usize) -> Option<Bytes> {
        let mut q = self.queue.borrow_mut();
        while let Some(front) = q.front() {
            let large = front.len() >= COALESCE_BELOW;
            if large && !batch.is_empty() {
                break;
            }
            if !batch.is_empty() && batch.len() + front.len() > max {
                break;
            }
            let b = q.pop_front()?;
            self.bytes.set(self.bytes.get() - b.len());
            if large {
                return Some(b);
            }
            batch.extend_from_slice(&b);
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }
}
