//! The SRT thread: the listener, libsrt's epoll, accepts and publishers'
//! reads. What it learns goes to the shard that owns the connection, as
//! [`Event`]s on that shard's bounded channel; it never waits on a shard.
//!
//! A caller is screened before it is accepted, in libsrt's listener hook
//! (on libsrt's own thread): its stream id must read ([`Request::parse`])
//! and pass the auth rules, or it hears a rejection code (1400 bad
//! request, 1405 bad mode, 1401 or 1403 from the rules). The hook sets the
//! app's passphrase on the new socket, so libsrt itself refuses a caller
//! whose key does not match. The shard then admits the publish or play in
//! full (the webhook, limits, the cluster's claim), as for RTMP.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::ffi::{self, Lib, Socket};
use super::{Mode, Request};
use crate::auth::{Action, Auth};
use crate::config::SrtConfig;

/// What a shard hears about its SRT connections.
#[derive(Debug)]
pub enum Event {
    /// A caller was accepted for this shard.
    Open {
        sock: Socket,
        peer: SocketAddr,
        request: Request,
    },
    /// TS from a publisher: whole messages, batched.
    Data { sock: Socket, data: Bytes },
    /// The connection broke or the caller left.
    Closed { sock: Socket },
}

/// Events a shard may have waiting; past it, a publisher's data is dropped
/// (and counted) rather than the thread waiting.
pub const SHARD_EVENTS: usize = 4096;
/// One batch of a publisher's messages handed to its shard at most.
const BATCH: usize = 64 * 1024;
/// How often the thread looks at its stop flag and for sockets a shard
/// closed.
const TICK: Duration = Duration::from_millis(100);

/// Counters of the SRT listener, node-wide.
#[derive(Debug, Default)]
pub struct SrtCounters {
    /// Callers refused before accept, by the stream id's or the rules'
    /// reason.
    pub refused_stream_id: AtomicU64,
    pub refused_auth: AtomicU64,
    /// Callers refused by `srt.max_sessions` or `srt.max_sessions_per_ip`.
    pub refused_limit: AtomicU64,
    /// Callers accepted.
    pub accepted: AtomicU64,
    /// Publisher bytes dropped because their shard's channel was full.
    pub dropped_bytes: AtomicU64,
}

/// The listener's hook state, shared with libsrt's thread for the
/// process's life (leaked: the listener lives until the process exits).
struct Hook {
    lib: &'static Lib,
    auth: Arc<Auth>,
    passphrase: HashMap<String, String>,
    default_passphrase: Option<String>,
    counters: Arc<SrtCounters>,
    open: Arc<Open>,
    max_sessions: usize,
    max_per_ip: usize,
}

/// SRT connections open, in all and per caller address: the hook refuses
/// past the limits; the thread counts accepts and ends.
#[derive(Default)]
struct Open {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Open {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether one more from `ip` fits (0 = no limit).
    fn fits(&self, ip: IpAddr, max: usize, max_per_ip: usize) -> bool {
        let map = self.lock();
        let total: usize = map.values().sum();
        (max == 0 || total < max)
            && (max_per_ip == 0 || map.get(&ip).copied().unwrap_or(0) < max_per_ip)
    }

    fn add(&self, ip: IpAddr) {
        *self.lock().entry(ip).or_default() += 1;
    }

    fn remove(&self, ip: IpAddr) {
        let mut map = self.lock();
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

impl Hook {
    fn screen(&self, ns: Socket, peer: Option<SocketAddr>, id: &str) -> c_int {
        let Some(peer) = peer else {
            self.lib.reject(ns, ffi::REJX_BAD_REQUEST);
            return -1;
        };
        if !self
            .open
            .fits(peer.ip(), self.max_sessions, self.max_per_ip)
        {
            tracing::info!(%peer, "srt: caller refused: over the SRT session limit");
            self.counters.refused_limit.fetch_add(1, Ordering::Relaxed);
            self.lib.reject(ns, ffi::REJX_OVERLOAD);
            return -1;
        }
        let request = match Request::parse(id) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(reason = %e, "srt: caller refused");
                self.counters
                    .refused_stream_id
                    .fetch_add(1, Ordering::Relaxed);
                self.lib.reject(ns, e.code);
                return -1;
            }
        };
        let action = match request.mode {
            Mode::Publish => Action::Publish,
            Mode::Request => Action::Play,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Err(refusal) = self.auth.check(action, &request.key, &request.query, now) {
            tracing::info!(reason = %refusal, "srt: caller refused by the auth rules");
            self.counters.refused_auth.fetch_add(1, Ordering::Relaxed);
            let code = match refusal.kind() {
                "no_token" | "bad_token" | "expired" => ffi::REJX_UNAUTHORIZED,
                _ => ffi::REJX_FORBIDDEN,
            };
            self.lib.reject(ns, code);
            return -1;
        }
        let pass = self
            .passphrase
            .get(request.key.app())
            .or(self.default_passphrase.as_ref());
        if let Some(pass) = pass {
            if let Err(e) = self.lib.set_str(ns, ffi::PASSPHRASE, pass) {
                tracing::warn!("srt: cannot set the app's passphrase: {e}");
                self.lib.reject(ns, ffi::REJX_OVERLOAD);
                return -1;
            }
        }
        0
    }
}

/// libsrt's listener hook: screens a caller by its stream id.
///
/// # Safety
/// Called by libsrt with `opaque` the leaked `Hook` given to
/// `srt_listen_callback`, and `stream_id` null or NUL-terminated.
unsafe extern "C" fn listen_hook(
    opaque: *mut c_void,
    ns: Socket,
    _hs_version: c_int,
    peer: *const libc::sockaddr,
    stream_id: *const c_char,
) -> c_int {
    // Never unwind into C: a panic here would abort anyway (panic =
    // "abort"), but catch it in builds that unwind.
    std::panic::catch_unwind(|| {
        // SAFETY: `opaque` is the `&'static Hook` leaked in `start`.
        let hook = unsafe { &*(opaque as *const Hook) };
        let id = if stream_id.is_null() {
            String::new()
        } else {
            // SAFETY: libsrt passes a NUL-terminated string (at most 512
            // bytes), valid for the call.
            unsafe { CStr::from_ptr(stream_id) }
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: libsrt passes the caller's address, a sockaddr of its
        // family, valid for the call.
        let peer = unsafe { ffi::peer_of(peer) };
        hook.screen(ns, peer, &id)
    })
    .unwrap_or(-1)
}

/// The listener, started: its address and each shard's end of the event
/// channel (taken once by each shard).
pub struct Started {
    pub addr: SocketAddr,
    pub inboxes: Vec<Option<mpsc::Receiver<Event>>>,
    pub counters: Arc<SrtCounters>,
    pub version: String,
}

/// Loads libsrt, binds the listener and starts the thread. It stops when
/// `stop` is set (the listener closes; the shards close their sessions).
pub fn start(
    config: &SrtConfig,
    auth: Arc<Auth>,
    shards: usize,
    stop: Arc<AtomicBool>,
) -> Result<Started, String> {
    let addr = config
        .listen
        .ok_or_else(|| "srt.listen is not set".to_owned())?;
    let lib = Lib::get()?;
    let listener = lib.create_socket()?;
    let setup = || -> Result<(), String> {
        lib.set_bool(listener, ffi::RCVSYN, false)?;
        lib.set_bool(listener, ffi::SNDSYN, false)?;
        // Inherited by accepted sockets: each side's latency is at least
        // this (the larger of the two ends' wins, as SRT negotiates).
        lib.set_int(listener, ffi::LATENCY, config.latency_ms as c_int)?;
        lib.bind(listener, addr)?;
        lib.listen(listener, 128)?;
        Ok(())
    };
    if let Err(e) = setup() {
        lib.close(listener);
        return Err(format!("srt: cannot listen on {addr}: {e}"));
    }
    let counters = Arc::new(SrtCounters::default());
    let open = Arc::new(Open::default());
    let hook: &'static Hook = Box::leak(Box::new(Hook {
        open: open.clone(),
        max_sessions: config.max_sessions,
        max_per_ip: config.max_sessions_per_ip,
        lib,
        auth,
        passphrase: config
            .apps
            .iter()
            .filter_map(|(app, a)| a.passphrase.clone().map(|p| (app.clone(), p)))
            .collect(),
        default_passphrase: config.passphrase.clone(),
        counters: counters.clone(),
    }));
    // SAFETY: `hook` is leaked, so it outlives the listener; it is only
    // read (its counters are atomics), so libsrt's threads may use it.
    unsafe {
        lib.listen_callback(
            listener,
            listen_hook,
            (hook as *const Hook).cast_mut().cast(),
        )?;
    }
    let bound = lib.local_addr(listener).unwrap_or(addr);
    let eid = lib.epoll_create()?;
    lib.epoll_add(eid, listener, ffi::EPOLL_IN | ffi::EPOLL_ERR)?;
    let mut senders = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel(SHARD_EVENTS);
        senders.push(tx);
        inboxes.push(Some(rx));
    }
    let thread_counters = counters.clone();
    std::thread::Builder::new()
        .name("tributary-srt".into())
        .spawn(move || {
            Loop {
                lib,
                eid,
                listener,
                senders,
                socks: HashMap::new(),
                closed: Vec::new(),
                next_shard: 0,
                counters: thread_counters,
                open,
            }
            .run(&stop)
        })
        .map_err(|e| format!("srt: cannot start its thread: {e}"))?;
    Ok(Started {
        addr: bound,
        inboxes,
        counters,
        version: lib.version(),
    })
}

struct Loop {
    lib: &'static Lib,
    eid: c_int,
    listener: Socket,
    senders: Vec<mpsc::Sender<Event>>,
    /// Each open connection: its shard, whether it publishes, its
    /// caller's address.
    socks: HashMap<Socket, (usize, bool, IpAddr)>,
    /// Closes not yet told (their shard's channel was full).
    closed: Vec<(usize, Socket)>,
    next_shard: usize,
    counters: Arc<SrtCounters>,
    open: Arc<Open>,
}

impl Loop {
    fn run(mut self, stop: &AtomicBool) {
        let mut events = [ffi::EpollEvent::default(); 64];
        let mut buf = vec![0u8; ffi::LIVE_MAX_PAYLOAD];
        let mut swept = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let n = self
                .lib
                .epoll_wait(self.eid, &mut events, TICK.as_millis() as i64);
            for ev in &events[..n] {
                if ev.fd == self.listener {
                    self.accept_one();
                } else {
                    self.readable(ev.fd, ev.events, &mut buf);
                }
            }
            if swept.elapsed() >= Duration::from_secs(1) {
                swept = Instant::now();
                self.sweep();
            }
            self.tell_closed();
        }
        // The shards close their own sessions as they drain.
        self.lib.close(self.listener);
    }

    /// Accepts one caller (the listener stays readable while more wait:
    /// asking again when none is left only makes libsrt log an error).
    fn accept_one(&mut self) {
        if let Some((ns, peer)) = self.lib.accept(self.listener) {
            let request = self
                .lib
                .stream_id(ns)
                .ok_or_else(|| "no stream id".to_owned())
                .and_then(|id| Request::parse(&id).map_err(|e| e.reason));
            let (Ok(request), Some(peer)) = (request, peer) else {
                // The hook read it already: only a caller that changed
                // nothing can reach here, but refuse rather than guess.
                self.lib.close(ns);
                return;
            };
            let publish = request.mode == Mode::Publish;
            let events = if publish {
                ffi::EPOLL_IN | ffi::EPOLL_ERR
            } else {
                ffi::EPOLL_ERR
            };
            if self.lib.epoll_add(self.eid, ns, events).is_err() {
                self.lib.close(ns);
                return;
            }
            let shard = self.next_shard % self.senders.len();
            self.next_shard = self.next_shard.wrapping_add(1);
            let open = Event::Open {
                sock: ns,
                peer,
                request,
            };
            if self.senders[shard].try_send(open).is_err() {
                tracing::warn!("srt: shard {shard} is not taking connections; caller closed");
                self.lib.epoll_remove(self.eid, ns);
                self.lib.close(ns);
                return;
            }
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            self.open.add(peer.ip());
            self.socks.insert(ns, (shard, publish, peer.ip()));
        }
    }

    fn readable(&mut self, sock: Socket, events: c_int, buf: &mut [u8]) {
        let Some(&(shard, publish, _)) = self.socks.get(&sock) else {
            self.lib.epoll_remove(self.eid, sock);
            return;
        };
        let mut over = events & ffi::EPOLL_ERR != 0;
        if publish {
            let mut batch = BytesMut::new();
            // Only what libsrt says is ready: asking past it makes libsrt
            // throw (and catch) a C++ exception for the "again" it answers.
            let ready = self.lib.get_int(sock, ffi::RCVDATA).unwrap_or(1).max(1);
            for _ in 0..ready {
                match self.lib.recv(sock, buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        batch.extend_from_slice(&buf[..n]);
                        if batch.len() >= BATCH {
                            self.hand(shard, sock, batch.split().freeze());
                        }
                    }
                    Err(_) => {
                        over = true;
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                self.hand(shard, sock, batch.freeze());
            }
        }
        if over || self.lib.is_over(sock) {
            self.forget(sock);
        }
    }

    fn hand(&self, shard: usize, sock: Socket, data: Bytes) {
        let len = data.len() as u64;
        if self.senders[shard]
            .try_send(Event::Data { sock, data })
            .is_err()
        {
            self.counters
                .dropped_bytes
                .fetch_add(len, Ordering::Relaxed);
        }
    }

    fn forget(&mut self, sock: Socket) {
        // A closed socket left libsrt's epoll with its close (removing it
        // again only makes libsrt log an error); a broken one is still in.
        if self.lib.state(sock) == ffi::STATUS_BROKEN {
            self.lib.epoll_remove(self.eid, sock);
        }
        if let Some((shard, _, ip)) = self.socks.remove(&sock) {
            self.open.remove(ip);
            self.closed.push((shard, sock));
        }
    }

    /// Sockets a shard closed leave libsrt's epoll by themselves: forget
    /// them here too.
    fn sweep(&mut self) {
        let gone: Vec<Socket> = self
            .socks
            .keys()
            .copied()
            .filter(|&s| self.lib.is_over(s))
            .collect();
        for s in gone {
            self.forget(s);
        }
    }

    fn tell_closed(&mut self) {
        let senders = &self.senders;
        self.closed.retain(|&(shard, sock)| {
            matches!(
                senders[shard].try_send(Event::Closed { sock }),
                Err(mpsc::error::TrySendError::Full(_))
            )
        });
    }
}
