//! SRT: a UDP listener (`[srt] listen`) for MPEG-TS publishers and
//! players, through libsrt ([`ffi`], loaded at run time).
//!
//! One thread ([`thread`]) owns the listener and libsrt's epoll: it accepts,
//! reads each publisher's messages and hands them, batched, to the shard
//! that owns the connection over a bounded channel. A shard (`node::srt`)
//! admits the publish or play through the same admission as RTMP, demuxes
//! the TS into the stream model, and sends a player's TS with libsrt
//! itself (its sends are thread-safe and never block).
//!
//! Which stream a caller means is its stream id ([`Request::parse`]), in
//! the access-control form SRS and MediaMTX read.

pub mod ffi;
pub mod thread;

use crate::stream::StreamKey;

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// It sends a stream (`m=publish`).
    Publish,
    /// It receives one (`m=request`, the default as in SRS).
    Request,
}

/// A caller's stream id, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub mode: Mode,
    pub key: StreamKey,
    /// Where tokens live, as in an RTMP name's `?query`: `token=...`.
    pub query: String,
}

/// Why a stream id was refused, with the rejection code the caller hears.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BadStreamId {
    pub reason: String,
    pub code: i32,
}

fn bad(reason: impl Into<String>) -> BadStreamId {
    BadStreamId {
        reason: reason.into(),
        code: ffi::REJX_BAD_REQUEST,
    }
}

impl Request {
    /// Reads a stream id:
    /// - `#!::r=APP/KEY,m=publish` (or `m=request`), SRT's access-control
    ///   form: `r` the stream, `m` the mode (request when absent), `u`, `s`
    ///   and `t=stream` accepted, `h=APP/KEY` as SRS's older form; any other
    ///   key is passed on as a query parameter (`token=...`), and a query
    ///   may also follow the stream in `r` (`r=live/a?token=...`);
    /// - `publish:APP/KEY[?query]` and `read:APP/KEY[?query]`, MediaMTX's;
    /// - `APP/KEY[?query]`: a play, as SRS reads it.
    ///
    /// Some ffmpeg builds pass `streamid=` on undecoded, so `%23!::...` is
    /// read as its percent-decoding.
    pub fn parse(id: &str) -> Result<Request, BadStreamId> {
        if id.starts_with("%23!::") {
            let decoded =
                crate::stream::percent_decode(id).map_err(|e| bad(format!("stream id: {e}")))?;
            return Self::parse(&decoded);
        }
        if let Some(rest) = id.strip_prefix("#!::") {
            return Self::keyed(rest);
        }
        let (mode, rest) = if let Some(r) = id.strip_prefix("publish:") {
            (Mode::Publish, r)
        } else if let Some(r) = id.strip_prefix("read:") {
            (Mode::Request, r)
        } else {
            (Mode::Request, id)
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        Self::named(mode, path, query.to_owned())
    }

    fn keyed(rest: &str) -> Result<Request, BadStreamId> {
        let (mut mode, mut path, mut query) = (Mode::Request, None::<String>, Vec::new());
        for pair in rest.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("stream id item {pair:?} is not key=value")))?;
            match k {
                "r" => path = Some(v.to_owned()),
                "h" if v.contains('/') => path = path.or_else(|| Some(v.to_owned())),
                "h" | "u" | "s" => {}
                "t" if v == "stream" => {}
                "t" => {
                    return Err(BadStreamId {
                        reason: format!("stream id type {v:?}: only t=stream is served"),
                        code: ffi::REJX_BAD_MODE,
                    })
                }
                "m" => {
                    mode = match v.to_ascii_lowercase().as_str() {
                        "publish" => Mode::Publish,
                        "request" => Mode::Request,
                        _ => {
                            return Err(BadStreamId {
                                reason: format!(
                                    "stream id mode {v:?}: m=publish or m=request only"
                                ),
                                code: ffi::REJX_BAD_MODE,
                            })
                        }
                    }
                }
                _ => query.push(pair),
            }
        }
        let path = path.ok_or_else(|| bad("stream id names no stream (r=APP/KEY)"))?;
        let (path, in_path) = match path.split_once('?') {
            Some((p, q)) => (p.to_owned(), q.to_owned()),
            None => (path, String::new()),
        };
        let mut q = in_path;
        for pair in query {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(pair);
        }
        Self::named(mode, &path, q)
    }

    fn named(mode: Mode, path: &str, query: String) -> Result<Request, BadStreamId> {
        let key = StreamKey::parse(path.trim_matches('/'))
            .map_err(|e| bad(format!("stream id {path:?}: {e}")))?;
        Ok(Request { mode, key, query })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> StreamKey {
        StreamKey::parse(s).unwrap()
    }

    #[test]
    fn reads_the_access_control_form() {
        let r = Request::parse("#!::r=live/cam,m=publish").unwrap();
        assert_eq!(
            (r.mode, r.key, r.query.as_str()),
            (Mode::Publish, key("live/cam"), "")
        );
        let r = Request::parse("#!::m=REQUEST,r=live/cam/hd,token=abc,u=ann").unwrap();
        assert_eq!(
            (r.mode, r.key, r.query.as_str()),
            (Mode::Request, key("live/cam/hd"), "token=abc")
        );
        let r = Request::parse("#!::r=live/cam?token=a,exp=9,m=publish").unwrap();
        assert_eq!(r.query, "token=a&exp=9");
        // SRS's older form, the stream in `h`.
        assert_eq!(
            Request::parse("#!::h=live/cam").unwrap().key,
            key("live/cam")
        );
        // Left percent-encoded by the caller (Debian's ffmpeg 5.1 does).
        let r = Request::parse("%23!::r=live/cam,m=publish").unwrap();
        assert_eq!((r.mode, r.key), (Mode::Publish, key("live/cam")));
        // No mode: a play.
        assert_eq!(Request::parse("#!::r=live/x").unwrap().mode, Mode::Request);
    }

    #[test]
    fn reads_the_plain_forms() {
        let r = Request::parse("live/cam?token=t").unwrap();
        assert_eq!(
            (r.mode, r.key, r.query.as_str()),
            (Mode::Request, key("live/cam"), "token=t")
        );
        let r = Request::parse("publish:live/cam").unwrap();
        assert_eq!((r.mode, r.key), (Mode::Publish, key("live/cam")));
        assert_eq!(Request::parse("read:live/cam").unwrap().mode, Mode::Request);
    }

    #[test]
    fn refuses_what_names_no_stream_or_breaks_the_naming_rule() {
        for id in [
            "",
            "cam",
            "#!::m=publish",
            "#!::r",
            "#!::r=../etc/passwd,m=publish",
            "#!::r=live/%2e%2e,m=publish",
            "live/a b",
            "publish:live/..",
            "#!::r=live/a\u{0}b",
        ] {
            let e = Request::parse(id).unwrap_err();
            assert_eq!(e.code, ffi::REJX_BAD_REQUEST, "{id:?}: {e}");
        }
        for id in ["#!::r=live/a,m=bidirectional", "#!::r=live/a,t=file"] {
            assert_eq!(
                Request::parse(id).unwrap_err().code,
                ffi::REJX_BAD_MODE,
                "{id:?}"
            );
        }
    }
}
