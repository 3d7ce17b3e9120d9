//! LL-HLS viewers, counted by session rather than by connection.
//!
//! A browser fetches a playlist and its parts over whatever connections
//! its pool holds, so a connection is not a viewer. As SRS does with its
//! `hls_ctx`, the first playlist request of a viewer (one whose query has
//! no `hls_session`) is authorized under the play rules and answered with
//! a multivariant playlist of one variant: the same media playlist, its
//! URI carrying `hls_session=ID`. Every HLS player follows it and reloads
//! that URI, so each playlist request names its viewer. Parts, segments
//! and init segments keep URIs shared by every viewer (a cache in front
//! serves them to all).
//!
//! A session holds its viewer's place among the stream's players (the
//! [`Ticket`]). It is admitted once its multivariant playlist is answered,
//! is pending until a request names it (a client that never follows the
//! playlist holds a place only briefly), and is let go when its viewer has
//! asked nothing for [`Window::session_idle`](super::Window::session_idle).
//! It is bound to its viewer's address: a request naming a session the
//! window does not know (it idled out, the window is new, or another
//! address names it) is authorized again and takes the place again. A
//! connection that asks again without a session gets the session it was
//! given, so one connection holds one place per stream.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::node::gate::Ticket;
use crate::node::ShardStats;

/// The query parameter that names a viewer's session.
pub const PARAM: &str = "hls_session";

/// A session ID: 128 random bits, as 32 lowercase hex digits.
const ID_LEN: usize = 32;

/// One LL-HLS viewer: its place among the stream's players, counted in
/// the LL-HLS viewers of the shard that admitted it.
#[derive(Debug)]
pub struct Session {
    _place: Ticket,
    stats: Arc<ShardStats>,
    /// The address of the viewer it was given to.
    pub peer: IpAddr,
    pub last_seen: Instant,
    /// A request has named it since it was given out.
    pub confirmed: bool,
}

impl Session {
    pub fn new(place: Ticket, stats: Arc<ShardStats>, peer: IpAddr, now: Instant) -> Session {
        stats.hls_viewers.fetch_add(1, Ordering::Relaxed);
        Session {
            _place: place,
            stats,
            peer,
            last_seen: now,
            confirmed: false,
        }
    }
}

/// The session a connection was given for a stream (asked with `query`).
#[derive(Debug)]
pub struct Given {
    pub key: crate::node::StreamKey,
    pub query: String,
    pub id: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stats.hls_viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A new session ID, from the kernel's random source; None if it fails
/// (getrandom(2) fails only before Linux 3.17, which io_uring rules out).
pub fn new_id() -> Option<String> {
    let mut bytes = [0u8; ID_LEN / 2];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes
        // for the whole call, and getrandom(2) writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Takes `hls_session=ID` out of a query: the ID (when well formed) and the
/// rest of the query, in order.
pub fn split(query: &str) -> (Option<&str>, String) {
    let mut id = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((PARAM, v)) => {
                if v.len() == ID_LEN && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    id = Some(v);
                }
            }
            _ => rest.push(pair),
        }
    }
    (id, rest.join("&"))
}

/// `query` with the session's parameter appended.
pub fn with(query: &str, id: &str) -> String {
    if query.is_empty() {
        format!("{PARAM}={id}")
    } else {
        format!("{query}&{PARAM}={id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_random_hex_and_read_back_from_a_query() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_eq!(a.len(), ID_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
        let query = with("token=t&expires=9", &a);
        assert_eq!(
            split(&query),
            (Some(a.as_str()), "token=t&expires=9".into())
        );
        assert_eq!(split(&with("", &b)), (Some(b.as_str()), String::new()));
        // A malformed ID is no session (and is left out of the URIs).
        assert_eq!(split("hls_session=xyz&a=1"), (None, "a=1".into()));
        let long = format!("hls_session={a}0");
        assert_eq!(split(&long), (None, String::new()));
        assert_eq!(split(""), (None, String::new()));
    }
}
