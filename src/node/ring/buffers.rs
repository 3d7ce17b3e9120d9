//! The shard's receive buffers: one provided-buffer ring
//! (IORING_REGISTER_PBUF_RING) that every connection of the shard shares,
//! so an idle connection holds no read buffer. The kernel picks a buffer
//! when data arrives and names it in the completion; the connection reads
//! it through a [`Lease`], whose drop hands the buffer back to the ring.
//!
//! The memory (the buffers and the ring of entries) is allocated once and
//! never freed while the kernel may use it: a shard never tears its socket
//! ring down (it parks at shutdown, and a panic aborts the process).

use std::alloc::{alloc, alloc_zeroed, Layout};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// The buffer group id the shard's receives select from.
pub const BUFFER_GROUP: u16 = 0;

const PAGE: usize = 4096;

/// Why a pool cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the receive buffer count must be a power of two from 2 to 32768, not {0}")]
    Count(usize),
    #[error("receive buffers must be 1 KiB to 1 MiB, not {0} bytes")]
    Size(usize),
    #[error("cannot allocate {0} bytes of receive buffers")]
    Alloc(usize),
}

/// A ring of `count` buffers of `size` bytes that the kernel fills.
pub struct BufPool {
    /// The ring of entries the kernel takes buffers from (page aligned).
    entries: *mut BufRingEntry,
    /// The buffers, `count * size` bytes, never read before the kernel
    /// wrote them (so never zeroed: untouched pages cost no memory).
    memory: *mut u8,
    count: u16,
    size: usize,
    /// Our copy of the ring's tail: buffers handed back so far.
    tail: Cell<u16>,
    /// Buffers leased to connections (not in the ring).
    leased: Cell<usize>,
}

impl BufPool {
    /// Allocates the buffers and fills the ring with all of them. The
    /// caller registers [`ring_addr`](Self::ring_addr) with the kernel.
    pub fn new(count: usize, size: usize) -> Result<Rc<BufPool>, PoolError> {
        if !(2..=32768).contains(&count) || !count.is_power_of_two() {
            return Err(PoolError::Count(count));
        }
        if !(1024..=1 << 20).contains(&size) {
            return Err(PoolError::Size(size));
        }
        let ring_bytes = (count * std::mem::size_of::<BufRingEntry>()).max(PAGE);
        let ring_layout =
            Layout::from_size_align(ring_bytes, PAGE).map_err(|_| PoolError::Alloc(ring_bytes))?;
        let mem_layout = Layout::from_size_align(count * size, PAGE)
            .map_err(|_| PoolError::Alloc(count * size))?;
        // SAFETY: both layouts have a non-zero size (checked above).
        let (entries, memory) = unsafe { (alloc_zeroed(ring_layout), alloc(mem_layout)) };
        if entries.is_null() || memory.is_null() {
            return Err(PoolError::Alloc(count * size));
        }
        let pool = BufPool {
            entries: entries.cast(),
            memory,
            count: count as u16,
            size,
            tail: Cell::new(0),
            leased: Cell::new(count),
        };
        for bid in 0..count as u16 {
            pool.give_back(bid);
        }
        Ok(Rc::new(pool))
    }

    /// The ring's address and entry count, for IORING_REGISTER_PBUF_RING.
    pub fn ring_addr(&self) -> (u64, u16) {
        (self.entries as u64, self.count)
    }

    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// Buffers the kernel can fill now.
    pub fn available(&self) -> usize {
        self.count as usize - self.leased.get()
    }

    /// Takes buffer `bid`, which a completion says holds `len` bytes.
    /// None when the kernel named a buffer that is not its to name (a bug
    /// somewhere, never trusted blindly).
    pub fn lease(self: &Rc<Self>, bid: u16, len: usize) -> Option<Lease> {
        if bid >= self.count || len > self.size {
            return None;
        }
        self.leased.set(self.leased.get() + 1);
        Some(Lease {
            pool: self.clone(),
            bid,
            len,
            start: 0,
        })
    }

    /// Puts buffer `bid` back at the ring's tail and publishes the tail.
    fn give_back(&self, bid: u16) {
        let tail = self.tail.get();
        let index = (tail & (self.count - 1)) as usize;
        // SAFETY: `index < count`, so the entry lies inside the ring's
        // allocation. The kernel reads entries only between its head and the
        // published tail; this one is past the tail until the store below.
        unsafe {
            let entry = &mut *self.entries.add(index);
            entry.set_addr(self.memory.add(bid as usize * self.size) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail field overlays entry 0's reserved field, inside
        // the ring; the kernel reads it with an acquire load, and this
        // release store makes the entry written above visible first.
        unsafe {
            let shared = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*shared).store(tail, Ordering::Release);
        }
        self.leased.set(self.leased.get() - 1);
    }
}

/// One filled receive buffer, owned by a connection until dropped.
pub struct Lease {
    pool: Rc<BufPool>,
    bid: u16,
    len: usize,
    /// Bytes already consumed from the front.
    start: usize,
}

impl Lease {
    /// Drops the first `n` bytes (consumed).
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.len);
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.len
    }
}

impl std::ops::Deref for Lease {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the kernel wrote `len` bytes into buffer `bid` and then
        // gave it to us in a completion; it is out of the ring (so the
        // kernel will not write it) until this lease's drop hands it back,
        // and only this lease names it. `bid < count` and `len <= size`
        // were checked in `lease`.
        unsafe {
            let base = self.pool.memory.add(self.bid as usize * self.pool.size);
            std::slice::from_raw_parts(base.add(self.start), self.len - self.start)
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.give_back(self.bid);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Lease(bid {}, {} bytes)",
            self.bid,
            self.len - self.start
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(pool: &BufPool) -> u16 {
        // SAFETY: reads the published tail of a live pool.
        unsafe { (*(BufRingEntry::tail(pool.entries) as *const AtomicU16)).load(Ordering::Acquire) }
    }

    #[test]
    fn a_new_pool_offers_every_buffer_and_leases_hand_them_back() {
        let pool = BufPool::new(4, 1024).unwrap();
        assert_eq!(pool.available(), 4);
        assert_eq!(tail(&pool), 4);
        // Pretend the kernel filled buffer 2 with 5 bytes.
        // SAFETY: buffer 2 lies inside the pool's memory; no lease names it.
        unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), pool.memory.add(2 * 1024), 5) };
        let mut lease = pool.lease(2, 5).unwrap();
        assert_eq!(pool.available(), 3);
        assert_eq!(&lease[..], b"hello");
        lease.consume(2);
        assert_eq!(&lease[..], b"llo");
        lease.consume(10);
        assert!(lease.is_empty());
        drop(lease);
        assert_eq!(pool.available(), 4);
        assert_eq!(tail(&pool), 5, "the buffer went back at the tail");
        // SAFETY: the fifth give-back (tail 4) wrote ring slot 4 % 4 = 0,
        // inside the ring.
        let entry = unsafe { &*pool.entries };
        assert_eq!(entry.bid(), 2);
        assert_eq!(entry.len(), 1024);
    }

    #[test]
    fn out_of_range_buffers_are_refused() {
        let pool = BufPool::new(2, 1024).unwrap();
        assert!(pool.lease(2, 10).is_none());
        assert!(pool.lease(0, 1025).is_none());
        assert!(BufPool::new(3, 1024).is_err());
        assert!(BufPool::new(4, 100).is_err());
    }
}
