//! Push targets, sans-IO: a target's URL template (`{app}`, `{name}`,
//! `{query.NAME}`) checked once when it is configured and expanded per
//! stream; the expanded URL split into address, app and stream key as OBS
//! splits a server URL and a key; and [`Lifecycle`], the state of one
//! target (connecting, live, backing off, failed) with its exponential
//! backoff and jitter, time passed in.
//!
//! The split rule is the node's own naming rule: the app is the first path
//! segment, the stream key is the rest (it may hold `/` and a `?query`):
//! `rtmp://a.rtmp.youtube.com/live2/KEY` connects to app `live2` and
//! publishes `KEY`.

use std::fmt;
use std::time::{Duration, Instant};

use crate::stream::StreamKey;

/// What a push says it is in its connect's `flashVer`: a Tributary node
/// that receives a publish saying this, from its own process or from a
/// node of its own cluster, refuses it (a loop).
const PUSH_FLASH_VER: &str = "FMLE/3.0 (compatible; tributary push; node=";

/// Who pushed a publish, as its `flashVer` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pusher<'a> {
    /// The node id (unique in a cluster; standalone nodes on one host
    /// share their default, the host name).
    pub node: &'a str,
    /// The pushing process's [`instance`].
    pub instance: u64,
}

/// This process's instance: a random number drawn once, which tells a
/// node's own pushes from another process's with the same node id.
pub fn instance() -> u64 {
    static INSTANCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INSTANCE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// The `flashVer` of a push from node `node`, this process.
pub fn flash_ver(node: &str) -> String {
    format!("{PUSH_FLASH_VER}{node}; instance={:016x})", instance())
}

/// Who a publish's `flashVer` says pushed it, if it is a push.
pub fn pushed_by(flash_ver: &str) -> Option<Pusher<'_>> {
    let rest = flash_ver.strip_prefix(PUSH_FLASH_VER)?.strip_suffix(')')?;
    let (node, instance) = rest.rsplit_once("; instance=")?;
    let instance = u64::from_str_radix(instance, 16).ok()?;
    Some(Pusher { node, instance })
}

/// The start of a loop refusal's description: a push that hears it stops
/// (no retry can succeed).
pub const LOOP_REFUSED: &str = "a push from this cluster";

/// The longest URL a target may have, once expanded.
pub const MAX_URL_LEN: usize = 2048;

/// Why a push URL or template is refused; the message names the part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushUrlError {
    #[error("the URL is empty")]
    Empty,
    #[error("the URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("the scheme must be rtmp:// or rtmps://")]
    Scheme,
    #[error("the URL holds whitespace or a control character")]
    BadChar,
    #[error("no host")]
    NoHost,
    #[error("user info (user@host) is not supported; put credentials in the stream key")]
    UserInfo,
    #[error("the port is not a number from 1 to 65535")]
    Port,
    #[error("no app: the path must be /APP/KEY")]
    NoApp,
    #[error("no stream key: the path must be /APP/KEY")]
    NoKey,
    #[error("a fragment (#) has no meaning in an RTMP URL")]
    Fragment,
    #[error("unbalanced braces in the template")]
    Braces,
    #[error("unknown placeholder {{{0}}}: use {{app}}, {{name}} or {{query.NAME}}")]
    Placeholder(String),
    #[error("the publish has no query parameter {0:?} the template names")]
    MissingParameter(String),
}

/// A target's address and what to send: the result of splitting a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushUrl {
    /// rtmps://
    pub tls: bool,
    /// A name or an address (IPv6 without its brackets).
    pub host: String,
    pub port: u16,
    pub app: String,
    /// The stream key with its `?query`, as the target expects it.
    pub key: String,
}

impl PushUrl {
    pub fn parse(url: &str) -> Result<PushUrl, PushUrlError> {
        if url.is_empty() {
            return Err(PushUrlError::Empty);
        }
        if url.len() > MAX_URL_LEN {
            return Err(PushUrlError::TooLong);
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PushUrlError::BadChar);
        }
        if url.contains('#') {
            return Err(PushUrlError::Fragment);
        }
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("rtmps://") {
            (true, &url[8..])
        } else if lower.starts_with("rtmp://") {
            (false, &url[7..])
        } else {
            return Err(PushUrlError::Scheme);
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(PushUrlError::UserInfo);
        }
        let (host, port) = split_authority(authority)?;
        let default_port = if tls { 443 } else { 1935 };
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(PushUrlError::Port),
            },
        };
        let (app, key) = path.split_once('/').unwrap_or((path, ""));
        if app.is_empty() || app.contains('?') {
            return Err(PushUrlError::NoApp);
        }
        if key.is_empty() || key.starts_with('?') {
            return Err(PushUrlError::NoKey);
        }
        Ok(PushUrl {
            tls,
            host: host.to_owned(),
            port,
            app: app.to_owned(),
            key: key.to_owned(),
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "rtmps"
        } else {
            "rtmp"
        }
    }

    /// `host:port`, IPv6 in brackets.
    pub fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }

    /// The tcUrl connect sends: scheme, authority and app.
    pub fn tc_url(&self) -> String {
        format!("{}://{}/{}", self.scheme(), self.authority(), self.app)
    }

    /// The whole URL, as `parse` reads it back.
    pub fn to_url(&self) -> String {
        format!("{}/{}", self.tc_url(), self.key)
    }

    /// The URL with its stream key cut to a few characters, for logs and
    /// the API (a platform's stream key is a secret).
    pub fn redacted(&self) -> String {
        format!(
            "{}/{}",
            self.tc_url(),
            crate::protocol::server::redact(&self.key)
        )
    }
}

fn split_authority(authority: &str) -> Result<(&str, Option<&str>), PushUrlError> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(PushUrlError::NoHost)?;
        if host.is_empty() || host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(PushUrlError::NoHost);
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(PushUrlError::Port),
            },
        };
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    if host.is_empty() || !host.chars().all(name_ok) {
        return Err(PushUrlError::NoHost);
    }
    Ok((host, port))
}

/// A URL (or what should be one) with what follows its app cut short: the
/// part past `scheme://authority/app/` is a stream key, a secret. Control
/// characters are replaced, and it is at most 200 characters.
pub fn redact_url(url: &str) -> String {
    // User info (a password) before the host: nothing of it is shown.
    let authority = url.split("://").nth(1).and_then(|r| r.split('/').next());
    if authority.is_some_and(|a| a.contains('@')) {
        return crate::protocol::server::redact(url);
    }
    let shown = match url.match_indices('/').nth(3) {
        Some((at, _)) => format!(
            "{}{}",
            &url[..=at],
            crate::protocol::server::redact(&url[at + 1..])
        ),
        None => crate::protocol::server::redact(url),
    };
    shown
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    App,
    Name,
    Query(String),
}

/// A push URL with placeholders, checked when it is configured: its pieces
/// are known and an expansion with sample values is a valid URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, PushUrlError> {
        let mut pieces = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pieces.push(Piece::Text(rest.to_owned()));
                    break;
                }
                Some(at) if rest.as_bytes()[at] == b'}' => return Err(PushUrlError::Braces),
                Some(at) => {
                    if at > 0 {
                        pieces.push(Piece::Text(rest[..at].to_owned()));
                    }
                    let close = rest[at..].find('}').ok_or(PushUrlError::Braces)? + at;
                    let inner = &rest[at + 1..close];
                    if inner.contains('{') {
                        return Err(PushUrlError::Braces);
                    }
                    let ident = |s: &str| {
                        !s.is_empty()
                            && s.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    };
                    pieces.push(match inner {
                        "app" => Piece::App,
                        "name" => Piece::Name,
                        q => match q.strip_prefix("query.") {
                            Some(p) if ident(p) => Piece::Query(p.to_owned()),
                            _ => return Err(PushUrlError::Placeholder(inner.to_owned())),
                        },
                    });
                    rest = &rest[close + 1..];
                }
            }
        }
        let template = Template {
            source: source.to_owned(),
            pieces,
        };
        // Sample values: what is left must be a URL on its own.
        let sample: String = template
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::App => "app",
                Piece::Name => "name",
                Piece::Query(_) => "value",
            })
            .collect();
        PushUrl::parse(&sample)?;
        Ok(template)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The template with what follows its app cut short, for logs and the
    /// API (a literal stream key in it is a secret).
    pub fn redacted(&self) -> String {
        redact_url(&self.source)
    }

    /// The URL for one stream: its app and name, and the parameters of its
    /// publish query (`a=1&b=2`, values as they came).
    pub fn expand(&self, key: &StreamKey, query: &str) -> Result<PushUrl, PushUrlError> {
        let mut url = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => url.push_str(t),
                Piece::App => url.push_str(key.app()),
                Piece::Name => url.push_str(key.name()),
                Piece::Query(p) => {
                    let value = query_param(query, p)
                        .ok_or_else(|| PushUrlError::MissingParameter(p.clone()))?;
                    url.push_str(value);
                }
            }
        }
        PushUrl::parse(&url)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where a target is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Resolving, connecting, handshaking, or waiting for Publish.Start.
    Connecting,
    /// Publishing: media flows.
    Live,
    /// The last try failed; the next is due at `retry_at`.
    BackingOff,
    /// Given up: an error no retry can fix (a parameter the template names
    /// is missing from the publish).
    Failed,
}

/// Backoff between tries.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// A target that stayed live this long starts its backoff over.
pub const STABLE: Duration = Duration::from_secs(10);

/// One target's lifecycle. The I/O around it reports what happened
/// (`live`, `failed`) and asks when to try again.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    backoff: Backoff,
    state: State,
    since: Instant,
    /// Failures since the target was last live for [`STABLE`].
    failures: u32,
    retry_at: Option<Instant>,
    /// Tries after the first.
    reconnects: u64,
    last_error: Option<String>,
}

impl Lifecycle {
    pub fn new(backoff: Backoff, now: Instant) -> Self {
        Self {
            backoff,
            state: State::Connecting,
            since: now,
            failures: 0,
            retry_at: None,
            reconnects: 0,
            last_error: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// When the state was entered.
    pub fn since(&self) -> Instant {
        self.since
    }

    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The target said Publish.Start.
    pub fn live(&mut self, now: Instant) {
        self.state = State::Live;
        self.since = now;
        self.retry_at = None;
    }

    /// The try failed (or the live session broke) with `error`, as the
    /// target or the socket said it. `jitter` in [0, 1) spreads retries of
    /// many targets (±20%). Returns when to try again.
    pub fn failed(&mut self, now: Instant, error: String, jitter: f64) -> Instant {
        if self.state == State::Live && now.duration_since(self.since) >= STABLE {
            self.failures = 0;
        }
        let base = self
            .backoff
            .min
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.backoff.max);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        let delay = base.mul_f64(factor);
        self.failures = self.failures.saturating_add(1);
        self.state = State::BackingOff;
        self.since = now;
        self.last_error = Some(error);
        let at = now + delay;
        self.retry_at = Some(at);
        at
    }

    /// Gives up: no retry will help.
    pub fn give_up(&mut self, now: Instant, error: String) {
        self.state = State::Failed;
        self.since = now;
        self.retry_at = None;
        self.last_error = Some(error);
    }

    /// The backoff is over: connecting again.
    pub fn retry(&mut self, now: Instant) {
        self.state = State::Connecting;
        self.since = now;
        self.retry_at = None;
        self.reconnects += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_names_its_node_in_flash_ver() {
        let ours = flash_ver("node-1");
        let pusher = pushed_by(&ours).unwrap();
        assert_eq!((pusher.node, pusher.instance), ("node-1", instance()));
        assert_eq!(
            pushed_by(
                "FMLE/3.0 (compatible; tributary push; node=a; b; instance=00000000000000ff)"
            ),
            Some(Pusher {
                node: "a; b",
                instance: 255
            })
        );
        assert_eq!(
            pushed_by("FMLE/3.0 (compatible; tributary push; node=a)"),
            None
        );
        assert_eq!(pushed_by("FMLE/3.0 (compatible; FMSc/1.0)"), None);
        assert_eq!(pushed_by("FMLE/3.0 (compatible; tributary)"), None);
    }

    #[test]
    fn urls_split_as_obs_splits_a_server_and_a_key() {
        let u = PushUrl::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh").unwrap();
        assert_eq!(
            (
                u.tls,
                u.host.as_str(),
                u.port,
                u.app.as_str(),
                u.key.as_str()
            ),
            (false, "a.rtmp.youtube.com", 1935, "live2", "abcd-efgh")
        );
        assert_eq!(u.tc_url(), "rtmp://a.rtmp.youtube.com:1935/live2");
        assert_eq!(u.redacted(), "rtmp://a.rtmp.youtube.com:1935/live2/abc…");
        assert_eq!(PushUrl::parse(&u.to_url()), Ok(u.clone()));
        let u = PushUrl::parse("RTMPS://live-api-s.facebook.com:443/rtmp/FB-1-2?s_bl=1").unwrap();
        assert!(u.tls);
        assert_eq!((u.port, u.app.as_str()), (443, "rtmp"));
        assert_eq!(u.key, "FB-1-2?s_bl=1");
        let u = PushUrl::parse("rtmps://h/app/k").unwrap();
        assert_eq!(u.port, 443, "rtmps defaults to 443");
        let u = PushUrl::parse("rtmp://[::1]:1936/live/a/b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.key.as_str()),
            ("::1", 1936, "a/b")
        );
        assert_eq!(u.authority(), "[::1]:1936");
    }

    #[test]
    fn bad_urls_are_refused_with_the_part_named() {
        use PushUrlError::*;
        for (url, e) in [
            ("", Empty),
            ("http://h/app/k", Scheme),
            ("rtmp:/h/app/k", Scheme),
            ("rtmp://h/app/k x", BadChar),
            ("rtmp://h/app/k\n", BadChar),
            ("rtmp://h/app/k#f", Fragment),
            ("rtmp:///app/k", NoHost),
            ("rtmp://h%2F/app/k", NoHost),
            ("rtmp://u:p@h/app/k", UserInfo),
            ("rtmp://h:0/app/k", Port),
            ("rtmp://h:99999/app/k", Port),
            ("rtmp://h:x/app/k", Port),
            ("rtmp://[::1/app/k", NoHost),
            ("rtmp://[::1]x/app/k", Port),
            ("rtmp://h", NoApp),
            ("rtmp://h/", NoApp),
            ("rtmp://h//k", NoApp),
            ("rtmp://h/app", NoKey),
            ("rtmp://h/app/", NoKey),
            ("rtmp://h/app/?x=1", NoKey),
        ] {
            assert_eq!(PushUrl::parse(url), Err(e), "{url:?}");
        }
        let long = format!("rtmp://h/app/{}", "k".repeat(MAX_URL_LEN));
        assert_eq!(PushUrl::parse(&long), Err(TooLong));
    }

    #[test]
    fn templates_are_checked_once_and_expanded_per_stream() {
        let t = Template::parse("rtmp://cdn.example/{app}-out/{name}?t={query.token}").unwrap();
        let key = StreamKey::new("live", "cam/1").unwrap();
        let u = t.expand(&key, "token=abc&x=1").unwrap();
        assert_eq!(u.app, "live-out");
        assert_eq!(u.key, "cam/1?t=abc");
        assert_eq!(
            t.expand(&key, "x=1"),
            Err(PushUrlError::MissingParameter("token".into()))
        );
        assert_eq!(t.redacted(), "rtmp://cdn.example/{app}-out/{na…");
        let plain = Template::parse("rtmp://127.0.0.1:1936/live/fixed").unwrap();
        assert_eq!(plain.expand(&key, "").unwrap().key, "fixed");
        for (bad, e) in [
            (
                "rtmp://h/app/{nam}",
                PushUrlError::Placeholder("nam".into()),
            ),
            (
                "rtmp://h/app/{query.}",
                PushUrlError::Placeholder("query.".into()),
            ),
            ("rtmp://h/app/{name", PushUrlError::Braces),
            ("rtmp://h/app/name}", PushUrlError::Braces),
            ("rtmp://h/app/{{name}}", PushUrlError::Braces),
            ("rtmp://h/{app}", PushUrlError::NoKey),
            ("ftp://h/{app}/{name}", PushUrlError::Scheme),
        ] {
            assert_eq!(Template::parse(bad), Err(e), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_caps_and_starts_over_after_a_stable_session() {
        let t0 = Instant::now();
        let backoff = Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(8),
        };
        let mut l = Lifecycle::new(backoff, t0);
        assert_eq!(l.state(), State::Connecting);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            let at = l.failed(now, "refused".into(), 0.5);
            assert_eq!(l.state(), State::BackingOff);
            delays.push(at - now);
            now = at;
            l.retry(now);
        }
        let secs: Vec<u64> = delays.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8, 8], "doubles up to the cap");
        assert_eq!(l.reconnects(), 6);
        assert_eq!(l.last_error(), Some("refused"));
        // Jitter stays within ±20%.
        let mut j = Lifecycle::new(backoff, t0);
        assert_eq!(
            j.failed(t0, "e".into(), 0.0) - t0,
            Duration::from_millis(800)
        );
        let mut j = Lifecycle::new(backoff, t0);
        let most = j.failed(t0, "e".into(), 0.999_999) - t0;
        assert!(most < Duration::from_millis(1200) && most > Duration::from_millis(1199));
        // Live for a short while: the backoff goes on growing.
        l.live(now);
        let at = l.failed(now + Duration::from_secs(1), "reset".into(), 0.5);
        assert_eq!(at - (now + Duration::from_secs(1)), Duration::from_secs(8));
        // Live past STABLE: it starts over.
        now = at;
        l.retry(now);
        l.live(now);
        let later = now + STABLE;
        assert_eq!(
            l.failed(later, "reset".into(), 0.5) - later,
            Duration::from_secs(1)
        );
        l.give_up(later, "missing".into());
        assert_eq!((l.state(), l.retry_at()), (State::Failed, None));
    }
}
