//! The ring's write path: a connection's queued `Bytes` gathered into one
//! SENDMSG (an iovec each, or one TLS record buffer), one send in flight
//! per socket, short sends resumed, and the shard's send rounds (video and
//! replies at once, audio and data up to `players.send_coalesce_ms` later).

use super::*;

/// One send in flight, kept at a stable address until its completion: the
/// kernel reads the msghdr and iovecs, and the data the iovecs point into.
pub(super) struct SendBuf {
    pub(super) bufs: VecDeque<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl SendBuf {
    pub(super) fn new() -> Box<SendBuf> {
        Box::new(SendBuf {
            bufs: VecDeque::new(),
            iov: Vec::new(),
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            msg: unsafe { std::mem::zeroed() },
        })
    }

    pub(super) fn len(&self) -> usize {
        self.bufs.iter().map(Bytes::len).sum()
    }

    /// Drops `n` sent bytes from the front.
    pub(super) fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.bufs.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.bufs.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Points the msghdr's iovecs at the buffers.
    pub(super) fn prepare(&mut self) -> *const libc::msghdr {
        self.iov.clear();
        self.iov.extend(self.bufs.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }));
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
        &self.msg
    }
}

impl SocketRing {
    /// Sends for the connections with output queued, now or, when
    /// coalescing, once the round is due; returns when a round is pending.
    pub(super) fn send_round(&self, now: Instant) -> Option<Instant> {
        // Batched connections whose batch is due join this round.
        let mut next_batch: Option<Instant> = None;
        {
            let mut deferred = self.queue.deferred.borrow_mut();
            if !deferred.is_empty() {
                let mut dirty = self.queue.dirty.borrow_mut();
                deferred.retain(|&(slot, due)| {
                    if due <= now {
                        dirty.push(slot);
                        // It has waited its budget: this round, not a
                        // coalescing interval later.
                        self.queue.urgent.set(true);
                        false
                    } else {
                        next_batch = Some(next_batch.map_or(due, |n| n.min(due)));
                        true
                    }
                });
            }
        }
        if self.queue.dirty.borrow().is_empty() {
            self.flush_due.set(None);
            return next_batch;
        }
        if !self.coalesce.is_zero() && !self.queue.urgent.get() {
            let due = self.flush_due.get().unwrap_or(now + self.coalesce);
            self.flush_due.set(Some(due));
            if now < due {
                return Some(next_batch.map_or(due, |n| n.min(due)));
            }
        }
        self.queue.urgent.set(false);
        self.flush_due.set(None);
        self.flush(now);
        next_batch
    }

    pub(super) fn sent(&self, ud: UserData, res: i32, now: Instant) {
        let slot = ud.slot;
        let mut resend = false;
        {
            let mut slots = self.slots.borrow_mut();
            let Some(sock) = slots
                .get_mut(slot as usize)
                .filter(|s| ud.is_current(s.generation))
                .and_then(|s| s.socket.as_mut())
            else {
                return;
            };
            sock.send_op = SendOp::Idle;
            let Some(send) = sock.send.as_mut() else {
                return;
            };
            if res >= 0 {
                let n = res as usize;
                send.advance(n);
                if send.bufs.is_empty() && send.bufs.capacity() > 16 {
                    send.bufs.shrink_to(16);
                    send.iov.shrink_to(16);
                }
                sock.conn.sent(n);
                sock.conn.wrote(n);
                self.stats.add_out(n as u64);
                if sock.conn.is_http() {
                    self.stats.add_http_out(n as u64);
                }
                sock.last_progress = now;
                let tls_pending = sock
                    .conn
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.borrow().wants_write());
                if !send.bufs.is_empty() && sock.life != Life::Forced {
                    resend = true;
                } else if sock.conn.has_output() || tls_pending || sock.life.closing() {
                    // The rest of a batch that did not fit one send.
                    sock.conn.schedule_now();
                }
            } else {
                send.bufs.clear();
                sock.conn
                    .end(End::Write(std::io::Error::from_raw_os_error(-res)));
                sock.conn.discard_output();
            }
        }
        if resend {
            self.start_send(slot);
        }
        self.maybe_close(slot);
    }

    /// Sends for every connection with output queued and no send in flight.
    pub(super) fn flush(&self, now: Instant) {
        let dirty = std::mem::take(&mut *self.queue.dirty.borrow_mut());
        for &slot in &dirty {
            let ready = {
                let mut slots = self.slots.borrow_mut();
                let Some(sock) = slots.get_mut(slot as usize).and_then(|s| s.socket.as_mut())
                else {
                    continue;
                };
                sock.conn.unschedule();
                if sock.send_op == SendOp::InFlight || sock.life == Life::Forced {
                    continue;
                }
                let send = sock.send.get_or_insert_with(SendBuf::new);
                gather(&sock.conn, send);
                if send.bufs.is_empty() {
                    false
                } else {
                    sock.last_progress = now;
                    true
                }
            };
            if ready {
                self.start_send(slot);
            }
            self.maybe_close(slot);
        }
        // Give the list's allocation back for reuse.
        let mut list = self.queue.dirty.borrow_mut();
        if list.is_empty() {
            let mut dirty = dirty;
            dirty.clear();
            *list = dirty;
        }
    }

    pub(super) fn start_send(&self, slot: u32) {
        let entry = {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[slot as usize];
            let generation = s.generation;
            let Some(sock) = s.socket.as_mut() else {
                return;
            };
            let Some(send) = sock.send.as_mut() else {
                return;
            };
            sock.send_op = SendOp::InFlight;
            let msg = send.prepare();
            let entry = match sock.fixed {
                true => opcode::SendMsg::new(types::Fixed(slot), msg),
                false => opcode::SendMsg::new(types::Fd(sock.fd.as_raw_fd()), msg),
            };
            entry
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(user_data(Op::Send, slot, generation))
        };
        self.push(entry);
    }
}

/// Moves a connection's queued output into its send: plain `Bytes` as they
/// are, or, over TLS, encrypted into one record buffer.
fn gather(conn: &Conn, send: &mut SendBuf) {
    let Some(tls) = &conn.tls else {
        let mut bytes = send.len();
        while send.bufs.len() < MAX_IOVECS && bytes < MAX_SEND_BYTES {
            let Some(b) = conn.pop_output() else {
                break;
            };
            bytes += b.len();
            send.bufs.push_back(b);
        }
        return;
    };
    if let Some(records) = super::tls::encrypt(conn, tls) {
        send.bufs.push_back(records);
    }
}
