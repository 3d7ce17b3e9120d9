//! A request on the media listener, before it is served: its head parsed
//! and bounded ([`parse_head`]: no body, one framing), its target routed to
//! a stream under the one naming rule ([`route`]), and the answers that end
//! an exchange (failures, the CORS preflight) with their heads.

use bytes::{BufMut, Bytes, BytesMut};

use crate::node::admission::Refusal;
use crate::node::hls::Resource;
use crate::stream::StreamKey;

/// The largest request head (request line and headers) taken.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The most headers a request may carry.
pub(super) const MAX_HEADERS: usize = 48;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route<'a> {
    /// HTTP-FLV of `key`, with the request's query (where tokens live).
    Flv { key: StreamKey, query: &'a str },
    /// LL-HLS: a resource of `key`, with the request's query.
    Hls {
        key: StreamKey,
        resource: Resource,
        query: &'a str,
    },
    /// A recording of `key` (`/recordings/...`), with the request's query.
    Recording {
        key: StreamKey,
        ask: RecordingAsk,
        query: &'a str,
    },
    /// A CORS preflight.
    Preflight,
    /// RTMPT: a `POST` of the tunnel's exchange.
    Tunnel(TunnelAsk),
}

/// The longest session id a request may name.
const MAX_ID: usize = 64;

/// An RTMPT request, from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TunnelAsk {
    /// `/fcs/ident2`: a 404, and the connection stays.
    Ident,
    /// `/open/N`: a new session.
    Open,
    /// `/send/ID/SEQ`: RTMP bytes in the body.
    Send(Seq),
    /// `/idle/ID/SEQ`: a poll.
    Idle(Seq),
    /// `/close/ID/SEQ`.
    Close(Seq),
}

/// The session and sequence number a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seq {
    pub id: String,
    pub seq: u64,
}

impl TunnelAsk {
    /// The RTMPT request `path` is: Ok(None) when it is not RTMPT's, an
    /// error when it is and is malformed.
    pub(super) fn parse(path: &str) -> Result<Option<TunnelAsk>, Failure> {
        let bad = |why: &str| Failure::new(400, "bad_request", format!("RTMPT: {why}"));
        if path == "/fcs/ident2" {
            return Ok(Some(TunnelAsk::Ident));
        }
        let Some((cmd, rest)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Ok(None);
        };
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
        let named = |rest: &str| -> Result<Seq, Failure> {
            let (id, seq) = rest
                .split_once('/')
                .ok_or_else(|| bad("no sequence number"))?;
            if id.is_empty() || id.len() > MAX_ID || !id.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(bad("a malformed session id"));
            }
            if !digits(seq) {
                return Err(bad("a malformed sequence number"));
            }
            let seq = seq
                .parse()
                .map_err(|_| bad("a malformed sequence number"))?;
            Ok(Seq {
                id: id.to_owned(),
                seq,
            })
        };
        match cmd {
            "open" if digits(rest) => Ok(Some(TunnelAsk::Open)),
            "open" => Err(bad("a malformed open")),
            "send" => Ok(Some(TunnelAsk::Send(named(rest)?))),
            "idle" => Ok(Some(TunnelAsk::Idle(named(rest)?))),
            "close" => Ok(Some(TunnelAsk::Close(named(rest)?))),
            _ => Ok(None),
        }
    }
}

/// What a `/recordings/` request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RecordingAsk {
    /// `/recordings/APP/KEY.mp4?start=RFC3339&duration=SECONDS`: one MP4.
    Range { from_ms: u64, to_ms: u64 },
    /// `/recordings/APP/KEY/index.m3u8?start=...[&end=...]`: a VOD playlist;
    /// `open` (no end, no duration): up to now, and while the stream is
    /// recorded an EVENT playlist that grows (a live stream rewound).
    Playlist {
        from_ms: u64,
        to_ms: u64,
        open: bool,
    },
    /// `/recordings/APP/KEY/START.mp4`: one segment file (byte ranges).
    File(String),
}

/// The longest range one request may ask for.
pub(super) const MAX_RANGE_MS: u64 = 24 * 3600 * 1000;

/// A recording's time range from a query: `start` (RFC 3339) and either
/// `duration` (seconds) or `end` (RFC 3339); without either, until now
/// (the flag: an open range).
fn time_range(query: &str, now_ms: u64) -> Result<(u64, u64, bool), Failure> {
    let bad = |why: &str| Failure::new(400, "bad_request", why.to_owned());
    let get = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    };
    let decode = |v: &str| {
        crate::stream::percent_decode(v).map_err(|_| bad("a malformed escape in the query"))
    };
    let start = get("start").ok_or_else(|| bad("a recording range needs start=RFC3339"))?;
    let from = crate::container::record::parse_rfc3339(&decode(start)?)
        .ok_or_else(|| bad("start is not an RFC 3339 time (2026-12-04T03:59:00Z)"))?;
    let open = get("duration").is_none() && get("end").is_none();
    let to = match (get("duration"), get("end")) {
        (Some(_), Some(_)) => return Err(bad("duration or end, not both")),
        (Some(d), None) => {
            let secs: f64 = d
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0)
                .ok_or_else(|| bad("duration is a positive number of seconds"))?;
            from.saturating_add((secs * 1000.0).min(u64::MAX as f64 / 2.0) as u64)
        }
        (None, Some(e)) => crate::container::record::parse_rfc3339(&decode(e)?)
            .ok_or_else(|| bad("end is not an RFC 3339 time"))?,
        (None, None) => now_ms.max(from + 1),
    };
    if to <= from {
        return Err(bad("the range ends before it starts"));
    }
    if to - from > MAX_RANGE_MS {
        return Err(bad("a range is at most 24 hours"));
    }
    Ok((from, to, open))
}

/// Routes `/recordings/...` (the path after `recordings/`).
fn recording_route<'a>(path: &str, query: &'a str) -> Result<Route<'a>, Failure> {
    let bad_name = |e: crate::stream::NameError| {
        Failure::new(400, "bad_request", format!("not a stream name: {e}"))
    };
    let now = crate::cluster::unix_ms();
    if let Some(stream) = path.strip_suffix("/index.m3u8") {
        let key = StreamKey::parse(stream).map_err(bad_name)?;
        let (from_ms, to_ms, open) = time_range(query, now)?;
        let ask = RecordingAsk::Playlist {
            from_ms,
            to_ms,
            open,
        };
        return Ok(Route::Recording { key, ask, query });
    }
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    let ranged = query.split('&').any(|p| p.starts_with("start="));
    if !ranged && crate::container::record::parse_segment_name(file).is_some() {
        let key = StreamKey::parse(dir).map_err(bad_name)?;
        let ask = RecordingAsk::File(file.to_owned());
        return Ok(Route::Recording { key, ask, query });
    }
    let Some(stream) = path.strip_suffix(".mp4") else {
        return Err(Failure::new(
            404,
            "not_found",
            "no such recording path (try /recordings/APP/KEY.mp4?start=...&duration=... or /recordings/APP/KEY/index.m3u8?start=...)",
        ));
    };
    let key = StreamKey::parse(stream).map_err(bad_name)?;
    let (from_ms, to_ms, _) = time_range(query, now)?;
    let ask = RecordingAsk::Range { from_ms, to_ms };
    Ok(Route::Recording { key, ask, query })
}

/// An answer that ends the exchange, and how it is counted.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Failure {
    pub(super) status: u16,
    pub(super) reason: String,
    /// As in [`super::stats::HTTP_REFUSALS`].
    pub(super) kind: &'static str,
}

impl Failure {
    pub(super) fn new(status: u16, kind: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            kind,
        }
    }
}

pub(super) fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        416 => "Range Not Satisfiable",
        304 => "Not Modified",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A parsed request head: the method, the path with its query, whether
/// the client keeps the connection open, and the head's length.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) keep_alive: bool,
    pub(super) len: usize,
    /// Its `Range` header, if any.
    pub(super) range: Option<String>,
    /// The body's length (a `POST`'s Content-Length; 0 for every other
    /// method, which may carry none).
    pub(super) body: usize,
}

/// Parses a request head from `buf`: None while it is incomplete.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<Request>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => Err(Failure::new(
            431,
            "header_too_large",
            format!("the request head is over {MAX_REQUEST_HEAD} bytes"),
        )),
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) if len > MAX_REQUEST_HEAD => Err(Failure::new(
            431,
            "header_too_large",
            format!("the request head is over {MAX_REQUEST_HEAD} bytes"),
        )),
        Ok(httparse::Status::Complete(len)) => {
            let body = if req.method == Some("POST") {
                body_length(req.headers)?
            } else {
                check_no_body(req.headers)?;
                0
            };
            let close = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection")
                    && String::from_utf8_lossy(h.value)
                        .split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("close"))
            });
            let mut ranges = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("range"));
            let range = ranges
                .next()
                .map(|h| String::from_utf8_lossy(h.value).into_owned());
            if ranges.next().is_some() {
                return Err(Failure::new(
                    400,
                    "bad_request",
                    "more than one Range header",
                ));
            }
            Ok(Some(Request {
                method: req.method.unwrap_or_default().to_owned(),
                target: req.path.unwrap_or_default().to_owned(),
                keep_alive: req.version == Some(1) && !close,
                len,
                range,
                body,
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(Failure::new(
            431,
            "header_too_large",
            format!("more than {MAX_HEADERS} headers"),
        )),
        Err(e) => Err(Failure::new(
            400,
            "bad_request",
            format!("malformed request: {e}"),
        )),
    }
}

/// Refuses a request that carries a body or frames one ambiguously: every
/// method served here (GET, HEAD, OPTIONS) has none, and reading a body's
/// bytes as the next request would answer requests nobody sent (request
/// smuggling behind a proxy that keeps connections open). A
/// `Transfer-Encoding` of any kind, a `Content-Length` other than `0`, or
/// more than one `Content-Length` is a 400 that closes the connection.
pub(super) fn check_no_body(headers: &[httparse::Header<'_>]) -> Result<(), Failure> {
    let bad = |why: &str| Failure::new(400, "bad_request", why);
    let mut lengths = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("a request here carries no body (Transfer-Encoding)"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if lengths > 1 {
                return Err(bad("more than one Content-Length"));
            }
            let value = h.value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(bad("a malformed Content-Length"));
            }
            if value.iter().any(|&d| d != b'0') {
                return Err(bad("a request here carries no body (Content-Length)"));
            }
        }
    }
    Ok(())
}

/// The largest request body taken (an RTMPT `/send`; it is streamed to
/// its session as it arrives, never held whole).
pub(super) const MAX_BODY: usize = 8 * 1024 * 1024;

/// A `POST`'s body length, framed one way only: exactly one
/// `Content-Length` of digits, at most [`MAX_BODY`], and no
/// `Transfer-Encoding` (a chunked or doubly framed body is where request
/// smuggling lives). Anything else is a 400 that closes the connection.
pub(super) fn body_length(headers: &[httparse::Header<'_>]) -> Result<usize, Failure> {
    let bad = |why: &str| Failure::new(400, "bad_request", why);
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(
                "a body here is framed by Content-Length only (Transfer-Encoding)",
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(bad("more than one Content-Length"));
            }
            let value = h.value.trim_ascii();
            if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
                return Err(bad("a malformed Content-Length"));
            }
            let n: usize = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("a malformed Content-Length"))?;
            length = Some(n);
        }
    }
    let n = length.ok_or_else(|| bad("a POST needs a Content-Length"))?;
    if n > MAX_BODY {
        return Err(Failure::new(
            413,
            "body_too_large",
            format!("a body is at most {MAX_BODY} bytes"),
        ));
    }
    Ok(n)
}

/// Where a request goes, from its method and target.
pub(super) fn route(req: &Request) -> Result<(Route<'_>, bool), Failure> {
    let head = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        "OPTIONS" => return Ok((Route::Preflight, false)),
        "POST" => {
            let path = req
                .target
                .split_once('?')
                .map_or(req.target.as_str(), |(p, _)| p);
            return match TunnelAsk::parse(path)? {
                Some(ask) => Ok((Route::Tunnel(ask), false)),
                None => Err(Failure::new(
                    405,
                    "method",
                    "POST is served only for RTMPT (/open/1, /send, /idle, /close)",
                )),
            };
        }
        other => {
            return Err(Failure::new(
                405,
                "method",
                format!("method {other} is not served here (GET, HEAD, OPTIONS)"),
            ))
        }
    };
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.target.as_str(), None),
    };
    let not_found = || {
        Failure::new(
            404,
            "not_found",
            "no such path (try /APP/KEY.flv or /APP/KEY/index.m3u8)",
        )
    };
    let path = path.strip_prefix('/').ok_or_else(not_found)?;
    // The path is decoded once, here; the stream's name is then read by
    // the one rule (`StreamKey`), which refuses a `%` left after decoding.
    let bad_name = |e: crate::stream::NameError| {
        Failure::new(400, "bad_request", format!("not a stream name: {e}"))
    };
    let path = crate::stream::percent_decode(path).map_err(bad_name)?;
    let query = query.unwrap_or("");
    // The query goes into playlists' quoted URI attributes as it came:
    // a `"` would end the attribute and add others (send it as %22).
    if query.contains('"') {
        return Err(Failure::new(
            400,
            "bad_request",
            "a query with a '\"' (send it as %22)",
        ));
    }
    if let Some(rest) = path.strip_prefix("recordings/") {
        return Ok((recording_route(rest, query)?, head));
    }
    let (dir, file) = path.rsplit_once('/').ok_or_else(not_found)?;
    if let Some(resource) = Resource::parse(file) {
        if !dir.contains('/') {
            return Err(not_found());
        }
        let key = StreamKey::parse(dir).map_err(bad_name)?;
        return Ok((
            Route::Hls {
                key,
                resource,
                query,
            },
            head,
        ));
    }
    if let Some(joined) = path.strip_suffix(".flv") {
        let key = StreamKey::parse(joined).map_err(bad_name)?;
        return Ok((Route::Flv { key, query }, head));
    }
    Err(not_found())
}

pub(super) fn refusal_failure(r: &Refusal) -> Failure {
    match r {
        Refusal::Auth { reason, .. } => Failure::new(403, "forbidden", reason.clone()),
        Refusal::NotFound => Failure::new(404, "not_found", "no such stream"),
        Refusal::BadName(_) => Failure::new(400, "bad_request", r.to_string()),
        other => Failure::new(503, "limit", other.to_string()),
    }
}

/// The head of an answer that closes the connection, CORS headers included
/// when configured.
pub(super) fn response_head(status: u16, headers: &[(&str, &str)], cors: &str) -> BytesMut {
    head_with(status, headers, cors, false)
}

pub(super) fn head_with(
    status: u16,
    headers: &[(&str, &str)],
    cors: &str,
    keep_alive: bool,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(format!("HTTP/1.1 {status} {}\r\n", status_text(status)).as_bytes());
    out.put_slice(if keep_alive {
        b"Server: tributary\r\nConnection: keep-alive\r\n".as_slice()
    } else {
        b"Server: tributary\r\nConnection: close\r\n".as_slice()
    });
    for (name, value) in headers {
        out.put_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !cors.is_empty() {
        out.put_slice(format!("Access-Control-Allow-Origin: {cors}\r\n").as_bytes());
    }
    out.put_slice(b"\r\n");
    out
}

pub(super) fn failure_response(f: &Failure, cors: &str) -> Bytes {
    let body = format!("{}\n", f.reason);
    let len = body.len().to_string();
    let mut out = response_head(
        f.status,
        &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", &len),
        ],
        cors,
    );
    out.put_slice(body.as_bytes());
    out.freeze()
}

pub(super) fn preflight_response(cors: &str) -> Bytes {
    let mut headers = vec![("Content-Length", "0")];
    if !cors.is_empty() {
        headers.push(("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"));
        headers.push(("Access-Control-Allow-Headers", "*"));
        headers.push(("Access-Control-Max-Age", "86400"));
    }
    response_head(204, &headers, cors).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            keep_alive: true,
            len: 0,
            range: None,
            body: 0,
        }
    }

    #[test]
    fn a_playlist_range_without_end_is_open_up_to_now_and_bad_ranges_are_refused() {
        let start = "start=2026-12-07T03:00:00Z";
        let t0 = crate::container::record::parse_rfc3339("2026-12-07T03:00:00Z").unwrap();
        let now = t0 + 120_000;
        assert_eq!(time_range(start, now), Ok((t0, now, true)));
        assert_eq!(
            time_range(&format!("{start}&duration=60"), now),
            Ok((t0, t0 + 60_000, false))
        );
        let end = format!("{start}&end=2026-12-07T03:01:00Z");
        assert_eq!(time_range(&end, now), Ok((t0, t0 + 60_000, false)));
        // A parameter that only starts like one is not one.
        assert_eq!(
            time_range(&format!("{start}&ending=x"), now),
            Ok((t0, now, true))
        );
        for bad in [
            "",
            "start=yesterday",
            "start=2026-12-07T03:00:00Z&duration=60&end=2026-12-07T03:01:00Z",
            "start=2026-12-07T03:00:00Z&duration=-1",
            "start=2026-12-07T03:00:00Z&end=2026-12-07T02:00:00Z",
            "start=2026-12-07T03:00:00Z&duration=90000",
            "start=%ZZ",
        ] {
            assert_eq!(
                time_range(bad, now).map_err(|f| f.status),
                Err(400),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_request_head_is_taken_whole_and_bounded() {
        assert_eq!(
            parse_head(b"GET /live/a.flv HTTP/1.1\r\nHost: x\r\n"),
            Ok(None)
        );
        let head = b"GET /live/a.flv?token=t HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_head(head),
            Ok(Some(Request {
                len: head.len(),
                ..req("GET", "/live/a.flv?token=t")
            }))
        );
        let close = parse_head(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(!close.unwrap().unwrap().keep_alive);
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!old.unwrap().unwrap().keep_alive);
        let bad = parse_head(b"GET /live/a.flv HTTP/1.1\r\nHo st: x\r\n\r\n").unwrap_err();
        assert_eq!((bad.status, bad.kind), (400, "bad_request"));
        let mut huge = b"GET /live/a.flv HTTP/1.1\r\nX-Big: ".to_vec();
        huge.resize(MAX_REQUEST_HEAD, b'a');
        assert_eq!(parse_head(&huge).unwrap_err().status, 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many).unwrap_err().status, 431);
    }

    #[test]
    fn a_request_that_carries_a_body_is_refused() {
        for head in [
            "Content-Length: 40",
            "content-length: 1",
            "Content-Length: 00001",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: identity",
            "Content-Length: 0\r\nContent-Length: 0",
            "Content-Length: 0\r\nTransfer-Encoding: chunked",
            "Content-Length: +0",
            "Content-Length: -0",
            "Content-Length: 0x0",
            "Content-Length: 0, 0",
            "Content-Length: ",
        ] {
            let request = format!("GET /live/a.flv HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n");
            let f = parse_head(request.as_bytes()).unwrap_err();
            assert_eq!((f.status, f.kind), (400, "bad_request"), "{head}");
        }
        for head in ["Content-Length: 0", "Content-Length:  000 ", "X-Length: 5"] {
            let request = format!("HEAD /live/a.flv HTTP/1.1\r\n{head}\r\n\r\n");
            assert!(parse_head(request.as_bytes()).unwrap().is_some(), "{head}");
        }
    }

    #[test]
    fn paths_parse_to_their_requests_and_malformed_ones_are_refused() {
        let seq = |id: &str, seq| Seq { id: id.into(), seq };
        assert_eq!(
            TunnelAsk::parse("/fcs/ident2").unwrap(),
            Some(TunnelAsk::Ident)
        );
        assert_eq!(TunnelAsk::parse("/open/1").unwrap(), Some(TunnelAsk::Open));
        assert_eq!(
            TunnelAsk::parse("/send/ab12/0").unwrap(),
            Some(TunnelAsk::Send(seq("ab12", 0)))
        );
        assert_eq!(
            TunnelAsk::parse("/idle/ab12/41").unwrap(),
            Some(TunnelAsk::Idle(seq("ab12", 41)))
        );
        assert_eq!(
            TunnelAsk::parse("/close/ab12/7").unwrap(),
            Some(TunnelAsk::Close(seq("ab12", 7)))
        );
        for not_ours in ["/live/a.flv", "/", "", "/sendx/1/2", "/fcs/ident"] {
            assert_eq!(TunnelAsk::parse(not_ours).unwrap(), None, "{not_ours}");
        }
        for bad in [
            "/open/x",
            "/open/",
            "/send/ab12",
            "/send//0",
            "/send/ab12/",
            "/send/ab12/-1",
            "/send/ab12/+1",
            "/send/ab12/0/extra",
            "/send/../0",
            "/send/ab%2012/0",
            "/idle/ab12/99999999999999999999",
        ] {
            let f = TunnelAsk::parse(bad).unwrap_err();
            assert_eq!(f.status, 400, "{bad}");
        }
        let long = format!("/send/{}/0", "a".repeat(MAX_ID + 1));
        assert_eq!(TunnelAsk::parse(&long).unwrap_err().status, 400);
    }

    #[test]
    fn a_post_body_is_framed_by_one_content_length_only() {
        let post = |head: &str| {
            let request = format!("POST /send/abc/0 HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n");
            parse_head(request.as_bytes())
        };
        for head in [
            "",
            "Transfer-Encoding: chunked",
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "Content-Length: 5\r\nContent-Length: 5",
            "Content-Length: +5",
            "Content-Length: 5, 5",
            "Content-Length: 0x10",
            "Content-Length: 99999999999999999999",
        ] {
            let f = post(head).unwrap_err();
            assert_eq!((f.status, f.kind), (400, "bad_request"), "{head:?}");
        }
        let f = post(&format!("Content-Length: {}", MAX_BODY + 1)).unwrap_err();
        assert_eq!((f.status, f.kind), (413, "body_too_large"));
        let r = post("content-length: 1536").unwrap().unwrap();
        assert_eq!((r.method.as_str(), r.body), ("POST", 1536));
        // Only RTMPT's paths take a POST.
        let f = route(&req("POST", "/live/cam.flv")).unwrap_err();
        assert_eq!((f.status, f.kind), (405, "method"));
    }

    #[test]
    fn routes_name_the_stream_by_the_one_rule_and_keep_its_query() {
        assert_eq!(
            route(&req("GET", "/live/cam.flv?token=abc")).unwrap(),
            (
                Route::Flv {
                    key: StreamKey::from("live/cam"),
                    query: "token=abc"
                },
                false
            )
        );
        // The app is the first segment, whatever the path looks like.
        for target in ["/a/b/cam.flv", "/a%2Fb/cam.flv", "/a/b%2Fcam.flv"] {
            let request = req("HEAD", target);
            let (route, head) = route(&request).unwrap();
            assert!(head);
            assert_eq!(
                route,
                Route::Flv {
                    key: StreamKey::from("a/b/cam"),
                    query: ""
                },
                "{target}"
            );
        }
        match route(&req("GET", "/a/b/cam/index.m3u8?x=1")).unwrap().0 {
            Route::Hls { key, query, .. } => {
                assert_eq!((key.app(), key.name(), query), ("a", "b/cam", "x=1"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            route(&req("OPTIONS", "/live/cam.flv")).unwrap().0,
            Route::Preflight
        );
        for target in [
            "/",
            "/cam.flv",
            "/live/cam.mp4",
            "live/cam.flv",
            "/index.m3u8",
        ] {
            assert_eq!(
                route(&req("GET", target)).unwrap_err().status,
                404,
                "{target}"
            );
        }
        // A name that is not one reading: 400 with the reason.
        for target in [
            "/live/.flv",
            "/live//cam.flv",
            "/live/../x/cam.flv",
            "/live/cam%252F.flv",
            "/live/c%zzam.flv",
            "/live/c%+9am.flv",
            // A quote would end a playlist's URI attribute and add others.
            "/live/cam/index.m3u8?a=\",BYTERANGE=\"1@0",
            "/live/cam/part1.0.m4s?t=\"",
        ] {
            let f = route(&req("GET", target)).unwrap_err();
            assert_eq!((f.status, f.kind), (400, "bad_request"), "{target}");
        }
        assert_eq!(
            route(&req("POST", "/live/cam.flv")).unwrap_err().status,
            405
        );
    }

    #[test]
    fn answers_carry_their_status_reason_and_cors() {
        let f = Failure::new(403, "forbidden", "bad token");
        let text = String::from_utf8(failure_response(&f, "*").to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(
            text.contains("Access-Control-Allow-Origin: *\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 10\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nbad token\n"), "{text}");
        let text = String::from_utf8(preflight_response("").to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(!text.contains("Access-Control"), "{text}");
        assert_eq!(
            refusal_failure(&Refusal::NotFound).status,
            404,
            "an unknown stream"
        );
        assert_eq!(refusal_failure(&Refusal::PlayerLimit).status, 503);
    }
}
