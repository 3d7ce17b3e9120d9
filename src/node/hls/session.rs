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

pub use crate::container::window::Session;
use crate::node::gate::Ticket;
use crate::node::stats::ShardStats;

/// The query parameter that names a viewer's session.
pub const PARAM: &str = "hls_session";

/// A session ID: 128 random bits, as 32 lowercase hex digits.
const ID_LEN: usize = 32;

/// What an LL-HLS viewer's session holds while it lasts: its place among
/// the stream's players, counted in the LL-HLS viewers of the shard that
/// admitted it.
struct Place {
    _place: Ticket,
    stats: Arc<ShardStats>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.stats.hls_viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A viewer's session at `peer`, holding `place` until its window lets it
/// go.
pub fn viewer(place: Ticket, stats: Arc<ShardStats>, peer: IpAddr, now: Instant) -> Session {
    stats.hls_viewers.fetch_add(1, Ordering::Relaxed);
    Session::new(
        Place {
            _place: place,
            stats,
        },
        peer,
        now,
    )
}

/// The session a connection was given for a stream (asked with `query`).
#[derive(Debug)]
pub struct Given {
    pub key: crate::stream::StreamKey,
    pub query: String,
    pub id: String,
}

/// A new session ID, from the kernel's random source; None if it fails.
pub fn new_id() -> Option<String> {
    let bytes = crate::node::random::bytes::<{ ID_LEN / 2 }>()?;
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
    fn sessions_hold_their_places_until_they_idle_out() {
        use crate::container::window::Window;
        use crate::node::{Gate, GateLimits, StreamKey};
        use crate::stream::Protocol;
        use std::net::Ipv4Addr;
        let gate = Gate::new(GateLimits::default());
        let stats = Arc::new(ShardStats::default());
        let key = StreamKey::from("live/cam");
        let (here, there) = (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        );
        let t0 = Instant::now();
        let mut w = Window::new(200, 2000, 1, t0);
        let (idle, pending) = (w.session_idle(), w.session_pending());
        assert_eq!(idle, std::time::Duration::from_secs(3 * 3 + 1));
        assert_eq!(pending, std::time::Duration::from_secs(3 + 1));
        let session = |peer| {
            let place = gate.player(&key, Protocol::LlHls).unwrap();
            viewer(place, stats.clone(), peer, t0)
        };
        for id in ["a", "b", "c"] {
            assert!(w.admit(id.into(), session(here)));
        }
        let viewers = || gate.audience().of(&key).ll_hls;
        let gauge = || stats.hls_viewers.load(Ordering::Relaxed);
        assert_eq!((viewers(), gauge()), (3, 3));
        // A session is its address's: another one naming it is a stranger.
        assert!(!w.touch("x", here, t0) && !w.touch("a", there, t0));
        // `a` and `b` are named (confirmed); `c` never is, and goes after
        // the pending time; `a` asks again later, `b` does not.
        assert!(w.touch("a", here, t0) && w.touch("b", here, t0));
        assert_eq!(w.expire_sessions(t0 + pending / 2, false), 3);
        assert_eq!(w.expire_sessions(t0 + pending * 2, false), 2);
        assert!(w.touch("a", here, t0 + idle / 2));
        assert_eq!(w.expire_sessions(t0 + idle, false), 2);
        assert_eq!(w.expire_sessions(t0 + idle + idle / 4, false), 1);
        assert!(w.touch("a", here, t0 + idle) && !w.touch("b", here, t0 + idle));
        assert_eq!((viewers(), gauge()), (1, 1));
        // Readmitting a known ID (its viewer moved to another address)
        // replaces it: still one place.
        assert!(w.admit("a".into(), session(there)));
        assert_eq!(viewers(), 1);
        assert!(w.touch("a", there, t0 + idle));
        assert_eq!(w.expire_sessions(t0, true), 0);
        assert_eq!((viewers(), gauge()), (0, 0));
    }

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
