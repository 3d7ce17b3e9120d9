//! Ending sockets: a connection's close (flush what is queued for up to
//! `CLOSE_FLUSH`, then `shutdown(2)`), the fd closed only once nothing is
//! in flight on it, and the shard's one deadline sweep.

use super::*;

impl SocketRing {
    /// The connection's task is done with it: flush what is queued (for up
    /// to `CLOSE_FLUSH`), then close the socket.
    pub fn finish(&self, conn: &Conn) {
        let slot = conn.slot();
        let cancel = {
            let mut slots = self.slots.borrow_mut();
            let Some(s) = slots.get_mut(slot as usize) else {
                return;
            };
            let generation = s.generation;
            let Some(sock) = s.socket.as_mut().filter(|sock| sock.conn.id == conn.id) else {
                return;
            };
            if sock.life != Life::Forced {
                sock.life = Life::Closing(Instant::now() + CLOSE_FLUSH);
            }
            sock.conn.close();
            sock.recv
                .in_flight()
                .then(|| user_data(Op::Recv, slot, generation))
        };
        if let Some(ud) = cancel {
            self.cancel(ud);
        }
        conn.schedule_now();
    }

    /// Closes a closing socket once nothing is in flight on it and its
    /// output is flushed (or the flush was forced).
    pub(super) fn maybe_close(&self, slot: u32) {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(slot as usize) else {
            return;
        };
        let Some(sock) = s.socket.as_ref() else {
            return;
        };
        if !sock.life.closing() || sock.recv.in_flight() || sock.send_op == SendOp::InFlight {
            return;
        }
        let flushed = !sock.conn.has_output()
            && sock.send.as_ref().is_none_or(|b| b.bufs.is_empty())
            && !sock
                .conn
                .tls
                .as_ref()
                .is_some_and(|t| t.borrow().wants_write());
        if !(flushed || sock.life == Life::Forced) {
            return;
        }
        if let Some(sock) = s.socket.take() {
            sock.conn.drop_input();
            sock.conn.discard_output();
            if sock.fixed {
                // Nothing is in flight on it: the table's reference goes
                // first, so closing the fd closes the socket.
                if let Err(e) = self.update_files(slot, &[-1]) {
                    // The table keeps the socket open until the slot is
                    // reused; the peer hears the end now all the same.
                    tracing::warn!("fixed-file slot {slot} not cleared: {e}");
                    // SAFETY: shutdown on an fd we own, nothing in flight.
                    unsafe { libc::shutdown(sock.fd.as_raw_fd(), libc::SHUT_RDWR) };
                }
            }
            drop(sock.fd);
        }
        // Completions carry 28 bits of it (see `user_data`).
        s.generation = s.generation.wrapping_add(1) & UserData::GENERATION_MASK;
        self.free.borrow_mut().push(slot);
    }

    /// The shard's one deadline sweep: handshake, idle and write-stall
    /// limits, the flush limit of closing sockets, and accept retries.
    pub fn sweep(&self, now: Instant) {
        let t = self.timeouts;
        let mut forced = Vec::new();
        for (i, s) in self.slots.borrow_mut().iter_mut().enumerate() {
            let Some(sock) = s.socket.as_mut() else {
                continue;
            };
            if sock.life.closing() {
                if matches!(sock.life, Life::Closing(deadline) if now >= deadline) {
                    sock.life = Life::Forced;
                    // SAFETY: shutdown on an fd we own; it makes any send or
                    // receive in flight on it complete.
                    unsafe { libc::shutdown(sock.fd.as_raw_fd(), libc::SHUT_RDWR) };
                    forced.push(i as u32);
                }
                continue;
            }
            let conn = &sock.conn;
            if conn.paused.get() || conn.is_held() {
                // The idle clock does not run while we hold input back.
                sock.last_read = now;
            }
            if !conn.is_connected() {
                if now.duration_since(sock.accepted_at) > t.handshake {
                    conn.end(End::Timeout("handshake timeout"));
                }
            } else if conn.expects_input() && now.duration_since(sock.last_read) > t.idle {
                conn.end(End::Timeout("idle timeout"));
            }
            if sock.send_op == SendOp::InFlight && now.duration_since(sock.last_progress) > t.write
            {
                conn.end(End::Stalled(t.write));
            }
        }
        for slot in forced {
            self.maybe_close(slot);
        }
        let retry: Vec<usize> = self
            .listeners
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, l)| l.retry_at.is_some_and(|at| now >= at))
            .map(|(i, _)| i)
            .collect();
        for i in retry {
            self.arm_accept(i);
        }
        self.queue.notify.notify();
    }

    /// Whether the socket at `slot` is named through the fixed-file table.
    #[cfg(test)]
    pub(super) fn is_fixed(&self, slot: u32) -> bool {
        self.slots
            .borrow()
            .get(slot as usize)
            .and_then(|s| s.socket.as_ref())
            .is_some_and(|s| s.fixed)
    }

    /// Sockets open on this ring (closing ones included).
    pub fn open_sockets(&self) -> usize {
        self.slots
            .borrow()
            .iter()
            .filter(|s| s.socket.is_some())
            .count()
    }
}
