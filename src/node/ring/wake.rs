//! The shard's one wake-up primitive, [`Notify`]: a counter of events and
//! the tasks waiting for the next. The ring's driver waits on it for work
//! ([`Notify::wait`]: the events since it last woke); LL-HLS requests wait
//! on another for any window to change ([`Notify::changed`] from an epoch
//! they read before looking). All on one shard's thread: `Cell`s, no
//! atomics.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Notify {
    epoch: Cell<u64>,
    /// The epoch [`Notify::wait`] last returned at.
    seen: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Counts an event and wakes every waiting task.
    pub fn notify(&self) {
        self.epoch.set(self.epoch.get() + 1);
        let mut wakers = self.wakers.borrow_mut();
        if !wakers.is_empty() {
            let woken = std::mem::take(&mut *wakers);
            drop(wakers);
            for w in woken {
                w.wake();
            }
        }
    }

    /// The events so far: read it before looking at the state, then wait
    /// with [`Notify::changed`], and no event between is missed.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Ready once an event came after `seen`.
    pub fn changed(&self, seen: u64) -> Changed<'_> {
        Changed { notify: self, seen }
    }

    /// Ready once an event came since the last `wait` returned (for the
    /// one task that consumes them, the ring's driver).
    pub fn wait(&self) -> Wait<'_> {
        Wait(self)
    }

    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.borrow_mut();
        // A task polled again before an event (the ring's driver, between
        // its timers) is still waiting once. Only the last waker is
        // compared: with a thousand LL-HLS requests waiting, a scan of all
        // would be quadratic; their repeats are bounded by their polls and
        // go at the next event.
        if !wakers.last().is_some_and(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

pub struct Changed<'a> {
    notify: &'a Notify,
    seen: u64,
}

impl Future for Changed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() > self.seen {
            return Poll::Ready(());
        }
        self.notify.register(cx.waker());
        Poll::Pending
    }
}

pub struct Wait<'a>(&'a Notify);

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let n = self.0;
        let now = n.epoch.get();
        if now > n.seen.get() {
            n.seen.set(now);
            return Poll::Ready(());
        }
        n.register(cx.waker());
        Poll::Pending
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Counts its wakes.
    pub(in crate::node::ring) struct Count(pub(in crate::node::ring) AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A waker and the count of its wakes.
    pub(in crate::node::ring) fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn wait_takes_each_batch_of_events_once() {
        let n = Notify::default();
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        // An event before the wait: ready at once, then not again.
        n.notify();
        n.notify();
        assert!(std::pin::pin!(n.wait()).poll(&mut cx).is_ready());
        let mut w = std::pin::pin!(n.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        n.notify();
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "woken once");
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn changed_wakes_every_waiter_and_misses_no_event_after_its_epoch() {
        let n = Notify::default();
        let (a_count, a) = counter();
        let (b_count, b) = counter();
        let seen = n.epoch();
        let mut first = std::pin::pin!(n.changed(seen));
        let mut second = std::pin::pin!(n.changed(seen));
        assert!(first
            .as_mut()
            .poll(&mut Context::from_waker(&a))
            .is_pending());
        assert!(second
            .as_mut()
            .poll(&mut Context::from_waker(&b))
            .is_pending());
        n.notify();
        assert_eq!(a_count.0.load(Ordering::Relaxed), 1);
        assert_eq!(b_count.0.load(Ordering::Relaxed), 1);
        assert!(first.as_mut().poll(&mut Context::from_waker(&a)).is_ready());
        // An event between reading the epoch and waiting is not missed.
        let seen = n.epoch();
        n.notify();
        assert!(std::pin::pin!(n.changed(seen))
            .poll(&mut Context::from_waker(&a))
            .is_ready());
    }
}
