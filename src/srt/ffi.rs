//! libsrt, loaded at run time (dlopen) and only when `[srt] listen` is
//! set: a node without SRT needs no libsrt, and the build needs no headers.
//! The declarations follow libsrt 1.5's `srt.h` (Debian 12 ships 1.5.1);
//! [`Lib::load`] refuses an older library by its version.
//!
//! libsrt's API is thread-safe: sockets are integer handles looked up under
//! its own lock, so any thread may call into it with any handle, and a
//! handle that was closed only makes a call fail.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::net::SocketAddr;
use std::sync::OnceLock;

pub type Socket = c_int;

pub const INVALID: Socket = -1;

// SRT_SOCKOPT (srt.h).
pub const SNDSYN: c_int = 1;
pub const RCVSYN: c_int = 2;
pub const STATE: c_int = 17;
/// Bytes in the send buffer not yet acknowledged (`SRTO_SNDDATA`, read).
pub const SNDDATA: c_int = 19;
/// Messages ready to read (`SRTO_RCVDATA`, read).
pub const RCVDATA: c_int = 20;
pub const LATENCY: c_int = 23;
pub const PASSPHRASE: c_int = 26;
pub const PEERLATENCY: c_int = 44;
pub const RCVLATENCY: c_int = 43;
pub const STREAMID: c_int = 46;
pub const PAYLOADSIZE: c_int = 49;

// SRT_EPOLL_OPT.
pub const EPOLL_IN: c_int = 0x1;
pub const EPOLL_ERR: c_int = 0x8;
/// Edge-triggered: an event once per change (`SRT_EPOLL_ET`).
pub const EPOLL_ET: c_int = 1 << 31;

// SRT_SOCKSTATUS.
pub const STATUS_BROKEN: c_int = 6;
pub const STATUS_CLOSING: c_int = 7;
pub const STATUS_CLOSED: c_int = 8;
pub const STATUS_NONEXIST: c_int = 9;

// Error codes (SRT_ERRNO): MJ_AGAIN minors, for a non-blocking socket.
pub const EASYNCSND: c_int = 6001;
pub const EASYNCRCV: c_int = 6002;

// Rejection reasons a listener callback gives (access_control.h).
pub const REJX_BAD_REQUEST: c_int = 1400;
pub const REJX_UNAUTHORIZED: c_int = 1401;
pub const REJX_OVERLOAD: c_int = 1402;
pub const REJX_FORBIDDEN: c_int = 1403;
pub const REJX_BAD_MODE: c_int = 1405;

/// The live-mode payload of one message: 7 TS packets
/// (`SRT_LIVE_DEF_PLSIZE`).
pub const LIVE_PAYLOAD: usize = 1316;
/// The largest live-mode payload (`SRT_LIVE_MAX_PLSIZE`).
pub const LIVE_MAX_PAYLOAD: usize = 1456;

/// `SRT_EPOLL_EVENT`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct EpollEvent {
    pub fd: Socket,
    pub events: c_int,
}

/// `SRT_TRACEBSTATS` (`struct CBytePerfMon`) of libsrt 1.5, field for
/// field: libsrt writes the whole struct, so every field must be here in
/// order even where nothing reads it.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
#[allow(non_snake_case)]
pub struct Stats {
    pub msTimeStamp: i64,
    pub pktSentTotal: i64,
    pub pktRecvTotal: i64,
    pub pktSndLossTotal: c_int,
    pub pktRcvLossTotal: c_int,
    pub pktRetransTotal: c_int,
    pub pktSentACKTotal: c_int,
    pub pktRecvACKTotal: c_int,
    pub pktSentNAKTotal: c_int,
    pub pktRecvNAKTotal: c_int,
    pub usSndDurationTotal: i64,
    pub pktSndDropTotal: c_int,
    pub pktRcvDropTotal: c_int,
    pub pktRcvUndecryptTotal: c_int,
    pub byteSentTotal: u64,
    pub byteRecvTotal: u64,
    pub byteRcvLossTotal: u64,
    pub byteRetransTotal: u64,
    pub byteSndDropTotal: u64,
    pub byteRcvDropTotal: u64,
    pub byteRcvUndecryptTotal: u64,
    pub pktSent: i64,
    pub pktRecv: i64,
    pub pktSndLoss: c_int,
    pub pktRcvLoss: c_int,
    pub pktRetrans: c_int,
    pub pktRcvRetrans: c_int,
    pub pktSentACK: c_int,
    pub pktRecvACK: c_int,
    pub pktSentNAK: c_int,
    pub pktRecvNAK: c_int,
    pub mbpsSendRate: f64,
    pub mbpsRecvRate: f64,
    pub usSndDuration: i64,
    pub pktReorderDistance: c_int,
    pub pktRcvAvgBelatedTime: f64,
    pub pktRcvBelated: i64,
    pub pktSndDrop: c_int,
    pub pktRcvDrop: c_int,
    pub pktRcvUndecrypt: c_int,
    pub byteSent: u64,
    pub byteRecv: u64,
    pub byteRcvLoss: u64,
    pub byteRetrans: u64,
    pub byteSndDrop: u64,
    pub byteRcvDrop: u64,
    pub byteRcvUndecrypt: u64,
    pub usPktSndPeriod: f64,
    pub pktFlowWindow: c_int,
    pub pktCongestionWindow: c_int,
    pub pktFlightSize: c_int,
    pub msRTT: f64,
    pub mbpsBandwidth: f64,
    pub byteAvailSndBuf: c_int,
    pub byteAvailRcvBuf: c_int,
    pub mbpsMaxBW: f64,
    pub byteMSS: c_int,
    pub pktSndBuf: c_int,
    pub byteSndBuf: c_int,
    pub msSndBuf: c_int,
    pub msSndTsbPdDelay: c_int,
    pub pktRcvBuf: c_int,
    pub byteRcvBuf: c_int,
    pub msRcvBuf: c_int,
    pub msRcvTsbPdDelay: c_int,
    pub pktSndFilterExtraTotal: c_int,
    pub pktRcvFilterExtraTotal: c_int,
    pub pktRcvFilterSupplyTotal: c_int,
    pub pktRcvFilterLossTotal: c_int,
    pub pktSndFilterExtra: c_int,
    pub pktRcvFilterExtra: c_int,
    pub pktRcvFilterSupply: c_int,
    pub pktRcvFilterLoss: c_int,
    pub pktReorderTolerance: c_int,
    pub pktSentUniqueTotal: i64,
    pub pktRecvUniqueTotal: i64,
    pub byteSentUniqueTotal: u64,
    pub byteRecvUniqueTotal: u64,
    pub pktSentUnique: i64,
    pub pktRecvUnique: i64,
    pub byteSentUnique: u64,
    pub byteRecvUnique: u64,
}

/// `srt_listen_callback_fn`: called on libsrt's receiving thread with the
/// new socket and the caller's stream id before the connection is
/// accepted; a negative return rejects it.
pub type ListenHook = unsafe extern "C" fn(
    opaque: *mut c_void,
    ns: Socket,
    hs_version: c_int,
    peer: *const libc::sockaddr,
    stream_id: *const c_char,
) -> c_int;

/// The entry points used, resolved once.
pub struct Lib {
    startup: unsafe extern "C" fn() -> c_int,
    getversion: unsafe extern "C" fn() -> u32,
    create_socket: unsafe extern "C" fn() -> Socket,
    setsockflag: unsafe extern "C" fn(Socket, c_int, *const c_void, c_int) -> c_int,
    getsockflag: unsafe extern "C" fn(Socket, c_int, *mut c_void, *mut c_int) -> c_int,
    bind: unsafe extern "C" fn(Socket, *const libc::sockaddr, c_int) -> c_int,
    listen: unsafe extern "C" fn(Socket, c_int) -> c_int,
    listen_callback: unsafe extern "C" fn(Socket, Option<ListenHook>, *mut c_void) -> c_int,
    accept: unsafe extern "C" fn(Socket, *mut libc::sockaddr, *mut c_int) -> Socket,
    connect: unsafe extern "C" fn(Socket, *const libc::sockaddr, c_int) -> c_int,
    recvmsg: unsafe extern "C" fn(Socket, *mut c_char, c_int) -> c_int,
    sendmsg: unsafe extern "C" fn(Socket, *const c_char, c_int, c_int, c_int) -> c_int,
    close: unsafe extern "C" fn(Socket) -> c_int,
    getsockname: unsafe extern "C" fn(Socket, *mut libc::sockaddr, *mut c_int) -> c_int,
    getlasterror: unsafe extern "C" fn(*mut c_int) -> c_int,
    getlasterror_str: unsafe extern "C" fn() -> *const c_char,
    getsockstate: unsafe extern "C" fn(Socket) -> c_int,
    epoll_create: unsafe extern "C" fn() -> c_int,
    epoll_add_usock: unsafe extern "C" fn(c_int, Socket, *const c_int) -> c_int,
    epoll_remove_usock: unsafe extern "C" fn(c_int, Socket) -> c_int,
    epoll_uwait: unsafe extern "C" fn(c_int, *mut EpollEvent, c_int, i64) -> c_int,
    epoll_set: unsafe extern "C" fn(c_int, i32) -> i32,
    bstats: unsafe extern "C" fn(Socket, *mut Stats, c_int) -> c_int,
    setrejectreason: unsafe extern "C" fn(Socket, c_int) -> c_int,
    setloglevel: unsafe extern "C" fn(c_int),
}

// SAFETY: `Lib` holds only function pointers into a library that is never
// unloaded (the dlopen handle is leaked), and libsrt's functions may be
// called from any thread.
unsafe impl Send for Lib {}
// SAFETY: as above; nothing in `Lib` is mutated after `load`.
unsafe impl Sync for Lib {}

/// The file names tried, in order: the upstream name, then Debian's two
/// builds (OpenSSL and GnuTLS).
const NAMES: [&CStr; 5] = [
    c"libsrt.so.1.5",
    c"libsrt-openssl.so.1.5",
    c"libsrt-gnutls.so.1.5",
    c"libsrt.so",
    c"libsrt-gnutls.so",
];

/// `1.5.0` as `srt_getversion` encodes it.
const MIN_VERSION: u32 = 0x01_05_00;

static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();

/// Resolves `name` in `handle` as a function of type `T`.
///
/// # Safety
/// `T` must be the function's true type (a `fn` pointer of its C
/// signature).
unsafe fn symbol<T: Copy>(handle: *mut c_void, name: &CStr) -> Result<T, String> {
    // SAFETY: `handle` is a live dlopen handle (never closed) and `name` a
    // NUL-terminated string.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        return Err(format!("libsrt has no {}", name.to_string_lossy()));
    }
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: `p` is the non-null address of `name`, and the caller
    // promises `T` is its function-pointer type, which has the size of a
    // data pointer (checked above).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

impl Lib {
    /// libsrt, loaded and started once per process (the first call); the
    /// error says what is missing and how to install it.
    pub fn get() -> Result<&'static Lib, String> {
        LIB.get_or_init(Lib::load).as_ref().map_err(Clone::clone)
    }

    fn load() -> Result<Lib, String> {
        let mut handle = std::ptr::null_mut();
        for name in NAMES {
            // SAFETY: a NUL-terminated file name; loading libsrt runs its
            // constructors, which only set up its globals.
            handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if !handle.is_null() {
                break;
            }
        }
        if handle.is_null() {
            return Err(
                "SRT needs libsrt 1.5 (Debian and Ubuntu: apt install libsrt1.5-openssl or \
                 libsrt1.5-gnutls); none of libsrt.so.1.5, libsrt-openssl.so.1.5, \
                 libsrt-gnutls.so.1.5 could be loaded"
                    .into(),
            );
        }
        // SAFETY: each type below is the C signature srt.h (1.5) declares
        // for that name.
        let lib = unsafe {
            Lib {
                startup: symbol(handle, c"srt_startup")?,
                getversion: symbol(handle, c"srt_getversion")?,
                create_socket: symbol(handle, c"srt_create_socket")?,
                setsockflag: symbol(handle, c"srt_setsockflag")?,
                getsockflag: symbol(handle, c"srt_getsockflag")?,
                bind: symbol(handle, c"srt_bind")?,
                listen: symbol(handle, c"srt_listen")?,
                listen_callback: symbol(handle, c"srt_listen_callback")?,
                accept: symbol(handle, c"srt_accept")?,
                connect: symbol(handle, c"srt_connect")?,
                recvmsg: symbol(handle, c"srt_recvmsg")?,
                sendmsg: symbol(handle, c"srt_sendmsg")?,
                close: symbol(handle, c"srt_close")?,
                getsockname: symbol(handle, c"srt_getsockname")?,
                getlasterror: symbol(handle, c"srt_getlasterror")?,
                getlasterror_str: symbol(handle, c"srt_getlasterror_str")?,
                getsockstate: symbol(handle, c"srt_getsockstate")?,
                epoll_create: symbol(handle, c"srt_epoll_create")?,
                epoll_add_usock: symbol(handle, c"srt_epoll_add_usock")?,
                epoll_remove_usock: symbol(handle, c"srt_epoll_remove_usock")?,
                epoll_uwait: symbol(handle, c"srt_epoll_uwait")?,
                epoll_set: symbol(handle, c"srt_epoll_set")?,
                bstats: symbol(handle, c"srt_bstats")?,
                setrejectreason: symbol(handle, c"srt_setrejectreason")?,
                setloglevel: symbol(handle, c"srt_setloglevel")?,
            }
        };
        // SAFETY: no arguments; returns the version compiled into libsrt.
        let version = unsafe { (lib.getversion)() };
        if version < MIN_VERSION {
            return Err(format!(
                "libsrt {}.{}.{} is too old: SRT needs 1.5 or later",
                version >> 16,
                (version >> 8) & 0xff,
                version & 0xff
            ));
        }
        // SAFETY: no arguments; safe to call more than once. Log level 3
        // (LOG_ERR): libsrt's own notices would flood stderr.
        unsafe {
            if (lib.startup)() < 0 {
                return Err(format!("srt_startup failed: {}", lib.last_error()));
            }
            (lib.setloglevel)(3);
        }
        Ok(lib)
    }

    /// libsrt's version as "1.5.1".
    pub fn version(&self) -> String {
        // SAFETY: no arguments.
        let v = unsafe { (self.getversion)() };
        format!("{}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
    }

    /// The calling thread's last libsrt error, as text.
    pub fn last_error(&self) -> String {
        // SAFETY: returns a pointer to a thread-local NUL-terminated string
        // (or null), valid until the next libsrt call on this thread; it is
        // copied at once.
        let p = unsafe { (self.getlasterror_str)() };
        if p.is_null() {
            return "unknown SRT error".into();
        }
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// The calling thread's last libsrt error code.
    pub fn last_code(&self) -> c_int {
        // SAFETY: a null errno pointer is allowed (not written).
        unsafe { (self.getlasterror)(std::ptr::null_mut()) }
    }

    pub fn create_socket(&self) -> Result<Socket, String> {
        // SAFETY: no arguments.
        let s = unsafe { (self.create_socket)() };
        if s == INVALID {
            return Err(self.last_error());
        }
        Ok(s)
    }

    /// Sets an integer option.
    pub fn set_int(&self, s: Socket, opt: c_int, value: c_int) -> Result<(), String> {
        let v = value;
        // SAFETY: `v` lives across the call; libsrt reads `size_of(int)`
        // bytes from it.
        let r = unsafe {
            (self.setsockflag)(
                s,
                opt,
                (&v as *const c_int).cast(),
                std::mem::size_of::<c_int>() as c_int,
            )
        };
        if r < 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    /// Sets a boolean option.
    pub fn set_bool(&self, s: Socket, opt: c_int, value: bool) -> Result<(), String> {
        let v = value;
        // SAFETY: `v` lives across the call; libsrt reads one `bool`.
        let r = unsafe { (self.setsockflag)(s, opt, (&v as *const bool).cast(), 1) };
        if r < 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    /// Sets a string option (a passphrase, a stream id).
    pub fn set_str(&self, s: Socket, opt: c_int, value: &str) -> Result<(), String> {
        // SAFETY: libsrt copies `value.len()` bytes from the live slice.
        let r = unsafe { (self.setsockflag)(s, opt, value.as_ptr().cast(), value.len() as c_int) };
        if r < 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    /// Reads an integer option.
    pub fn get_int(&self, s: Socket, opt: c_int) -> Option<c_int> {
        let mut v: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as c_int;
        // SAFETY: libsrt writes at most `len` bytes into `v`, both live.
        let r = unsafe { (self.getsockflag)(s, opt, (&mut v as *mut c_int).cast(), &mut len) };
        (r >= 0).then_some(v)
    }

    /// The stream id an accepted socket's caller set (at most 512 bytes).
    pub fn stream_id(&self, s: Socket) -> Option<String> {
        let mut buf = [0u8; 513];
        let mut len = buf.len() as c_int;
        // SAFETY: libsrt writes at most `len` bytes into the live buffer
        // and sets `len` to the length written.
        let r = unsafe { (self.getsockflag)(s, STREAMID, buf.as_mut_ptr().cast(), &mut len) };
        if r < 0 {
            return None;
        }
        let len = (len.max(0) as usize).min(buf.len());
        let id = &buf[..len];
        let id = id.split(|&b| b == 0).next().unwrap_or(&[]);
        Some(String::from_utf8_lossy(id).into_owned())
    }

    pub fn bind(&self, s: Socket, addr: SocketAddr) -> Result<(), String> {
        let (storage, len) = to_sockaddr(addr);
        // SAFETY: `storage` holds a sockaddr of `len` bytes for the call.
        let r = unsafe { (self.bind)(s, (&storage as *const libc::sockaddr_storage).cast(), len) };
        if r < 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    /// Connects a caller socket (blocking unless the socket is not).
    pub fn connect(&self, s: Socket, addr: SocketAddr) -> Result<(), String> {
        let (storage, len) = to_sockaddr(addr);
        // SAFETY: `storage` holds a sockaddr of `len` bytes for the call.
        let r =
            unsafe { (self.connect)(s, (&storage as *const libc::sockaddr_storage).cast(), len) };
        if r < 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    pub fn listen(&self, s: Socket, backlog: c_int) -> Result<(), String> {
        // SAFETY: plain integers.
        if unsafe { (self.listen)(s, backlog) } < 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    /// Installs the listener's hook.
    ///
    /// # Safety
    /// `opaque` must stay valid, and safe to use from libsrt's threads, for
    /// as long as the listener `s` exists (callers pass a leaked `'static`).
    pub unsafe fn listen_callback(
        &self,
        s: Socket,
        hook: ListenHook,
        opaque: *mut c_void,
    ) -> Result<(), String> {
        // SAFETY: `hook` has the callback's C signature; the caller
        // guarantees `opaque`'s lifetime.
        if unsafe { (self.listen_callback)(s, Some(hook), opaque) } < 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    /// The address a socket is bound to.
    pub fn local_addr(&self, s: Socket) -> Option<SocketAddr> {
        // SAFETY: a zeroed sockaddr_storage is a valid value of it.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as c_int;
        // SAFETY: libsrt writes at most `len` bytes into `storage`.
        let r = unsafe {
            (self.getsockname)(
                s,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return None;
        }
        from_sockaddr(&storage)
    }

    /// Accepts one connection of a listener (non-blocking), with the
    /// caller's address.
    pub fn accept(&self, s: Socket) -> Option<(Socket, Option<SocketAddr>)> {
        // SAFETY: zeroed sockaddr_storage is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as c_int;
        // SAFETY: libsrt writes at most `len` bytes into `storage`.
        let ns = unsafe {
            (self.accept)(
                s,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        (ns != INVALID).then(|| (ns, from_sockaddr(&storage)))
    }

    /// Receives one message into `buf`: Ok(n), Ok(0) when nothing is
    /// waiting (a non-blocking socket), Err when the connection is over.
    pub fn recv(&self, s: Socket, buf: &mut [u8]) -> Result<usize, String> {
        // SAFETY: libsrt writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { (self.recvmsg)(s, buf.as_mut_ptr().cast(), buf.len() as c_int) };
        if n >= 0 {
            return Ok(n as usize);
        }
        if self.last_code() == EASYNCRCV {
            return Ok(0);
        }
        Err(self.last_error())
    }

    /// Sends one message (at most the payload size): Ok(true) sent,
    /// Ok(false) the send buffer is full, Err the connection is over.
    pub fn send(&self, s: Socket, msg: &[u8]) -> Result<bool, String> {
        // SAFETY: libsrt copies `msg.len()` bytes from the live slice. TTL
        // -1 (none), in order.
        let n = unsafe { (self.sendmsg)(s, msg.as_ptr().cast(), msg.len() as c_int, -1, 1) };
        if n >= 0 {
            return Ok(true);
        }
        if self.last_code() == EASYNCSND {
            return Ok(false);
        }
        Err(self.last_error())
    }

    pub fn close(&self, s: Socket) {
        // SAFETY: an integer handle; closing one that is gone only fails.
        unsafe { (self.close)(s) };
    }

    /// The socket's state (`SRT_SOCKSTATUS`).
    pub fn state(&self, s: Socket) -> c_int {
        // SAFETY: an integer handle.
        unsafe { (self.getsockstate)(s) }
    }

    /// Whether the socket is gone or going (broken, closing, closed).
    pub fn is_over(&self, s: Socket) -> bool {
        matches!(
            self.state(s),
            STATUS_BROKEN | STATUS_CLOSING | STATUS_CLOSED | STATUS_NONEXIST
        )
    }

    /// The connection's counters since it started.
    pub fn stats(&self, s: Socket) -> Option<Stats> {
        let mut st = Stats::default();
        // SAFETY: libsrt writes one `SRT_TRACEBSTATS` into `st`, whose
        // layout is that struct's (see `Stats`). clear = 0.
        let r = unsafe { (self.bstats)(s, &mut st, 0) };
        (r >= 0).then_some(st)
    }

    /// Called from a listener hook: the reason the caller hears.
    pub fn reject(&self, s: Socket, reason: c_int) {
        // SAFETY: integers.
        unsafe { (self.setrejectreason)(s, reason) };
    }

    pub fn epoll_create(&self) -> Result<c_int, String> {
        // SAFETY: no arguments.
        let e = unsafe { (self.epoll_create)() };
        if e < 0 {
            return Err(self.last_error());
        }
        // An empty set waits its timeout instead of failing at once
        // (SRT_EPOLL_ENABLE_EMPTY).
        // SAFETY: integers.
        unsafe { (self.epoll_set)(e, 1) };
        Ok(e)
    }

    pub fn epoll_add(&self, e: c_int, s: Socket, events: c_int) -> Result<(), String> {
        // SAFETY: `events` lives across the call; libsrt reads one int.
        if unsafe { (self.epoll_add_usock)(e, s, &events) } < 0 {
            return Err(self.last_error());
        }
        Ok(())
    }

    pub fn epoll_remove(&self, e: c_int, s: Socket) {
        // SAFETY: integers.
        unsafe { (self.epoll_remove_usock)(e, s) };
    }

    /// Waits up to `ms` for events into `out`; the number filled.
    pub fn epoll_wait(&self, e: c_int, out: &mut [EpollEvent], ms: i64) -> usize {
        // SAFETY: libsrt writes at most `out.len()` events into `out`.
        let n = unsafe { (self.epoll_uwait)(e, out.as_mut_ptr(), out.len() as c_int, ms) };
        (n.max(0) as usize).min(out.len())
    }
}

/// A `SocketAddr` as a C sockaddr and its length.
fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, c_int) {
    let sa: socket2::SockAddr = addr.into();
    // SAFETY: a zeroed sockaddr_storage is a valid value of it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = (sa.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: both regions are at least `len` bytes and do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        );
    }
    (storage, len as c_int)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: `storage` is a whole sockaddr_storage; socket2 reads its
    // family to decide the length.
    let sa = unsafe {
        socket2::SockAddr::new(
            *storage,
            std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        )
    };
    sa.as_socket()
}

/// The peer address a listener hook is given.
///
/// # Safety
/// `peer` is null or points to a sockaddr of its family's size.
pub unsafe fn peer_of(peer: *const libc::sockaddr) -> Option<SocketAddr> {
    if peer.is_null() {
        return None;
    }
    // SAFETY: non-null; the family field is at the start of any sockaddr.
    let family = unsafe { (*peer).sa_family } as c_int;
    let len = match family {
        libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
        _ => return None,
    };
    // SAFETY: a zeroed sockaddr_storage is a valid value of it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: `len` bytes of the caller's sockaddr of that family are
    // readable (the function's contract), and the storage holds at least
    // that many; the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            peer.cast::<u8>(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        );
    }
    from_sockaddr(&storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_struct_has_libsrt_1_5s_size() {
        // CBytePerfMon of 1.5.1 on x86_64, as gcc lays out srt.h's struct
        // (sizeof and offsetof printed by a C program built from it).
        assert_eq!(std::mem::size_of::<Stats>(), 496);
        assert_eq!(std::mem::offset_of!(Stats, msRTT), 328);
        assert_eq!(std::mem::offset_of!(Stats, byteRecvUnique), 488);
    }

    #[test]
    fn socket_addresses_round_trip_through_c() {
        for a in ["127.0.0.1:9000", "[::1]:65535"] {
            let addr: SocketAddr = a.parse().unwrap();
            let (storage, _) = to_sockaddr(addr);
            assert_eq!(from_sockaddr(&storage), Some(addr));
            // SAFETY: `storage` is a full sockaddr of its family.
            let peer = unsafe { peer_of((&storage as *const libc::sockaddr_storage).cast()) };
            assert_eq!(peer, Some(addr));
        }
        // SAFETY: null is allowed.
        assert_eq!(unsafe { peer_of(std::ptr::null()) }, None);
    }
}
