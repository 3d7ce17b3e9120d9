//! What the data plane and the cluster both speak, so that neither imports
//! the other: a stream's node-wide key, and the commands a shard takes from
//! outside its executor (the cluster's control thread, the admin plane).

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::protocol::RawMessage;

/// A stream's name: its app and its name within the app, joined as
/// `app/name`, made only by the parsers below, under one rule:
///
/// - the **app is one path segment**: everything up to the first `/`;
/// - the **name may hold `/`** (an OBS stream key `s/t`): everything after;
/// - every segment of either is non-empty, is not `.` or `..`, and holds no
///   control character, no whitespace and none of `? # % \`;
/// - the app is at most [`MAX_APP`] bytes, the whole key [`MAX_KEY`].
///
/// So `rtmp://HOST/paid/s/t` names app `paid`, name `s/t`, whether the
/// client sent connect's app `paid` and the name `s/t` (OBS) or app
/// `paid/s` and the name `t` (ffmpeg, librtmp), and so does
/// `http://HOST/paid/s/t.flv`. An HTTP path is percent-decoded once, in
/// [`StreamKey::from_url_path`]; since no name holds `%`, a name that
/// decodes to another escape is refused, never decoded again. The auth
/// rules, the registry, the NATS subjects and the admin API all take this
/// key, so each sees the same app.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey(Arc<str>);

/// The longest app, in bytes.
pub const MAX_APP: usize = 128;
/// The longest key (`app/name`), in bytes.
pub const MAX_KEY: usize = 512;

/// Why a stream name was refused: the text a client or operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

impl NameError {
    fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

/// Checks one segment of an app or a name.
fn check_segment(segment: &str, what: &str) -> Result<(), NameError> {
    if segment.is_empty() {
        return Err(NameError::new(format!("the {what} has an empty part")));
    }
    if segment == "." || segment == ".." {
        return Err(NameError::new(format!("the {what} has a `{segment}` part")));
    }
    if let Some(c) = segment
        .chars()
        .find(|&c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '%' | '\\'))
    {
        return Err(NameError::new(format!(
            "the {what} holds {c:?}, which no stream name may hold"
        )));
    }
    Ok(())
}

impl StreamKey {
    /// The key of `app` and `name` (neither with a query): the app one
    /// segment, the name one or more.
    pub fn new(app: &str, name: &str) -> Result<Self, NameError> {
        if app.contains('/') {
            return Err(NameError::new("an app is one path segment (no `/`)"));
        }
        check_segment(app, "app")?;
        if app.len() > MAX_APP {
            return Err(NameError::new(format!("the app is over {MAX_APP} bytes")));
        }
        if name.is_empty() {
            return Err(NameError::new("no stream name"));
        }
        for segment in name.split('/') {
            check_segment(segment, "stream name")?;
        }
        let key = format!("{app}/{name}");
        if key.len() > MAX_KEY {
            return Err(NameError::new(format!(
                "the stream name is over {MAX_KEY} bytes with its app"
            )));
        }
        Ok(Self(key.into()))
    }

    /// The key of `app/name` as one string (a registry entry, an admin
    /// path after decoding): the app up to the first `/`.
    pub fn parse(joined: &str) -> Result<Self, NameError> {
        match joined.split_once('/') {
            Some((app, name)) => Self::new(app, name),
            None => Err(NameError::new("a stream is named APP/NAME")),
        }
    }

    /// The key an RTMP client names with connect's `app` (which may hold
    /// `/` and a `?query`), its `tcUrl` (where the app is missing) and the
    /// play or publish name (with its `?query`); and the query, where
    /// tokens live: the name's, then the app's.
    pub fn from_rtmp(
        app: &str,
        tc_url: Option<&str>,
        name: &str,
    ) -> Result<(Self, String), NameError> {
        let (app, mut app_query) = app.split_once('?').unwrap_or((app, ""));
        let mut app = app.trim_matches('/').to_owned();
        if app.is_empty() {
            // The app from the tcUrl's path, and its query with it:
            // rtmp://host[:port]/APP[?q].
            let path = tc_url
                .and_then(|u| u.split_once("://"))
                .and_then(|(_, rest)| rest.split_once('/'))
                .map_or("", |(_, path)| path);
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            app = path.trim_matches('/').to_owned();
            app_query = query;
        }
        if app.is_empty() {
            return Err(NameError::new("connect named no app"));
        }
        let (stream, name_query) = name.split_once('?').unwrap_or((name, ""));
        let key = Self::parse(&format!("{app}/{stream}"))?;
        let query = match (name_query, app_query) {
            (q, "") | ("", q) => q.to_owned(),
            (q, a) => format!("{q}&{a}"),
        };
        Ok((key, query))
    }

    /// The key an HTTP path names (`APP/NAME`, percent-encoded, no leading
    /// `/`, no query), decoded once.
    pub fn from_url_path(path: &str) -> Result<Self, NameError> {
        Self::parse(&percent_decode(path)?)
    }

    /// The app: the first segment.
    pub fn app(&self) -> &str {
        self.0.split_once('/').map_or("", |(app, _)| app)
    }

    /// The name within the app (may hold `/`).
    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, name)| name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Decodes `%XX` escapes once; refuses a broken escape or bytes that are
/// not UTF-8.
pub fn percent_decode(s: &str) -> Result<String, NameError> {
    unescape(s, b'%')
        .ok_or_else(|| NameError::new("a broken %-escape, or bytes that are not UTF-8"))
}

/// Decodes `<marker>XX` hex escapes (`%XX` in URL paths, `=XX` in NATS
/// subject tokens); None for a broken escape (two hex digits exactly, no
/// sign) or bytes that are not UTF-8.
pub fn unescape(s: &str, marker: u8) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == marker {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl std::ops::Deref for StreamKey {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for StreamKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for StreamKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Unit tests name their streams as literals that the rule takes.
#[cfg(test)]
impl From<&str> for StreamKey {
    fn from(joined: &str) -> Self {
        Self::parse(joined).expect("a test's stream name that the rule takes")
    }
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Commands from the control thread to each shard (relayed media included).
pub const SHARD_QUEUE: usize = 4096;

/// The owner side's answer to a snapshot request: the cache in order and
/// the sequence number of the last message it holds.
pub type SnapshotReply = Option<(Vec<RawMessage>, u64)>;

/// Control thread → one shard.
#[derive(Debug)]
pub enum ShardCommand {
    /// Start relaying `key` on this shard as a local publisher would.
    RelayStart {
        key: StreamKey,
        messages: Vec<RawMessage>,
    },
    RelayMedia {
        key: StreamKey,
        message: RawMessage,
    },
    /// The remote publisher left or its node is gone.
    RelayEnded {
        key: StreamKey,
    },
    /// The remote stream has a new publisher (new epoch): start players over.
    RelayRestart {
        key: StreamKey,
    },
    /// Some node is (or no node is any more) attached to `key`: send its
    /// messages to the control thread.
    Export {
        key: StreamKey,
        on: bool,
    },
    Snapshot {
        key: StreamKey,
        reply: oneshot::Sender<SnapshotReply>,
    },
    /// Another node took `key` over: close the local publisher.
    Fence {
        key: StreamKey,
    },
    /// An operator kicks the local publisher of `key` (HTTP DELETE);
    /// answers whether there was one.
    Kick {
        key: StreamKey,
        reply: oneshot::Sender<bool>,
    },
    /// The admin API on the push targets of a stream published here.
    Push(PushCommand),
    /// The admin API on the recording of a stream published here.
    Record(RecordCommand),
}

/// Admin plane → the shard that publishes `key`: its recording.
#[derive(Debug)]
pub enum RecordCommand {
    /// Starts recording; Ok(false) if it already was, Err why not.
    Start {
        key: StreamKey,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// Stops recording; whether it was.
    Stop {
        key: StreamKey,
        reply: oneshot::Sender<bool>,
    },
    /// The recording's state (JSON); None: not published here.
    Status {
        key: StreamKey,
        reply: oneshot::Sender<Option<serde_json::Value>>,
    },
}

/// Admin plane → the shard that publishes `key`: its push targets.
#[derive(Debug)]
pub enum PushCommand {
    /// Each target's status (JSON objects); None: not published here.
    List {
        key: StreamKey,
        reply: oneshot::Sender<Option<Vec<serde_json::Value>>>,
    },
    /// Adds a target (a URL checked by `output::push::PushUrl::parse`);
    /// answers its id, or why not.
    Add {
        key: StreamKey,
        url: crate::output::push::PushUrl,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Removes a target; answers whether the stream had it.
    Remove {
        key: StreamKey,
        id: u64,
        reply: oneshot::Sender<bool>,
    },
}

/// The per-shard ends of the command channels, taken once by each shard.
pub type ShardCommands = Arc<Mutex<Vec<Option<mpsc::Receiver<ShardCommand>>>>>;

/// One bounded command queue per shard: the senders (for the control
/// thread and the admin plane) and the receivers each shard takes once.
pub fn command_channels(shards: usize) -> (Vec<mpsc::Sender<ShardCommand>>, ShardCommands) {
    let mut senders = Vec::with_capacity(shards);
    let mut receivers = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = mpsc::channel(SHARD_QUEUE);
        senders.push(tx);
        receivers.push(Some(rx));
    }
    (senders, Arc::new(Mutex::new(receivers)))
}

/// How a viewer watches a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// An RTMP or RTMPS play.
    Rtmp,
    /// `GET /APP/KEY.flv`.
    HttpFlv,
    /// An LL-HLS viewer: a session its playlist requests name.
    LlHls,
    /// An SRT caller with `m=request`, taking MPEG-TS.
    Srt,
}

/// A stream's viewers on one node (or summed over the cluster), by protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Viewers {
    #[serde(default)]
    pub rtmp: u32,
    #[serde(default)]
    pub http_flv: u32,
    #[serde(default)]
    pub ll_hls: u32,
    #[serde(default)]
    pub srt: u32,
}

impl Viewers {
    pub fn total(&self) -> u32 {
        self.rtmp
            .saturating_add(self.http_flv)
            .saturating_add(self.ll_hls)
            .saturating_add(self.srt)
    }

    pub fn add(&mut self, other: &Viewers) {
        self.rtmp = self.rtmp.saturating_add(other.rtmp);
        self.http_flv = self.http_flv.saturating_add(other.http_flv);
        self.ll_hls = self.ll_hls.saturating_add(other.ll_hls);
        self.srt = self.srt.saturating_add(other.srt);
    }

    fn of(&mut self, protocol: Protocol) -> &mut u32 {
        match protocol {
            Protocol::Rtmp => &mut self.rtmp,
            Protocol::HttpFlv => &mut self.http_flv,
            Protocol::LlHls => &mut self.ll_hls,
            Protocol::Srt => &mut self.srt,
        }
    }
}

/// The node's viewers of each stream, by protocol: what the player limit
/// counts, what `/api/streams` shows, and what this node answers when
/// another node sums the cluster's audience. Changed on play and leave
/// (rare: a mutex is fine), never per message.
#[derive(Debug, Default)]
pub struct Audience {
    per_stream: Mutex<std::collections::HashMap<StreamKey, Viewers>>,
}

impl Audience {
    /// Adds a viewer of `key` unless the stream already has `limit`
    /// viewers of any protocol (0 = no limit); false when refused.
    pub fn join(&self, key: &StreamKey, protocol: Protocol, limit: u32) -> bool {
        let mut per_stream = self.per_stream.lock().unwrap_or_else(|e| e.into_inner());
        let total = per_stream.get(key).map_or(0, Viewers::total);
        if limit > 0 && total >= limit {
            return false;
        }
        let n = per_stream.entry(key.clone()).or_default().of(protocol);
        *n = n.saturating_add(1);
        true
    }

    /// Takes back a viewer that [`Audience::join`] added.
    pub fn leave(&self, key: &StreamKey, protocol: Protocol) {
        let mut per_stream = self.per_stream.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = per_stream.get_mut(key) {
            let n = v.of(protocol);
            *n = n.saturating_sub(1);
            if v.total() == 0 {
                per_stream.remove(key);
            }
        }
    }

    /// The viewers of `key` on this node.
    pub fn of(&self, key: &str) -> Viewers {
        self.per_stream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    /// Every stream that has viewers here, sorted by key.
    pub fn snapshot(&self) -> Vec<(StreamKey, Viewers)> {
        let per_stream = self.per_stream.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = per_stream.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way a client names `paid` + `s/t` is that one key, and what
    /// the rule cannot name as one reading is refused.
    #[test]
    fn one_rule_names_each_stream_the_same_from_rtmp_http_and_the_admin_api() {
        let want = ("paid", "s/t");
        // RTMP: (connect's app, tcUrl, play/publish name) → (key, query).
        let rtmp: &[(&str, Option<&str>, &str, &str)] = &[
            // OBS: server rtmp://HOST/paid, stream key s/t.
            ("paid", Some("rtmp://h:1935/paid"), "s/t", ""),
            // ffmpeg rtmp://HOST/paid/s/t: app up to the last slash.
            ("paid/s", Some("rtmp://h/paid/s"), "t", ""),
            // ffmpeg -rtmp_app paid -rtmp_playpath s/t.
            ("paid", Some("rtmp://h/paid/s/t"), "s/t", ""),
            // GStreamer's rtmp2sink and librtmp (rtmpdump, rtmpsink):
            // app/appinstance, then the playpath; a token in its query.
            (
                "paid/s",
                Some("rtmp://h/paid/s"),
                "t?token=ab&expires=9",
                "token=ab&expires=9",
            ),
            // A trailing slash on the app, as some encoders send it.
            ("paid/", Some("rtmp://h/paid/"), "s/t", ""),
            // A query on the app (Wowza style), and on both.
            ("paid?token=ab", None, "s/t", "token=ab"),
            ("paid/s?a=1", None, "t?b=2", "b=2&a=1"),
            // No app in connect: the tcUrl's path is the app, its query
            // the app's.
            ("", Some("rtmps://h:443/paid?x=1"), "s/t", "x=1"),
            ("", Some("rtmp://h/paid"), "s/t?y=2", "y=2"),
        ];
        for &(app, tc_url, name, query) in rtmp {
            let (key, q) = StreamKey::from_rtmp(app, tc_url, name)
                .unwrap_or_else(|e| panic!("{app:?} {name:?}: {e}"));
            assert_eq!((key.app(), key.name()), want, "{app:?} {name:?}");
            assert_eq!(&*key, "paid/s/t");
            assert_eq!(q, query, "{app:?} {name:?}");
        }
        // HTTP paths (after /, before the .flv or /index.m3u8) and admin
        // paths: encoded or not, one reading.
        for path in [
            "paid/s/t",
            "paid%2Fs/t",
            "paid/s%2Ft",
            "paid%2fs%2ft",
            "%70aid/s/t",
        ] {
            let key = StreamKey::from_url_path(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!((key.app(), key.name()), want, "{path}");
        }
        assert_eq!(StreamKey::parse("paid/s/t"), StreamKey::new("paid", "s/t"));
        // Refused, each with its reason.
        let refused: &[(&str, Option<&str>, &str)] = &[
            ("", None, "s/t"),
            ("", Some("rtmp://h"), "t"),
            ("paid", None, ""),
            ("paid", None, "?token=1"),
            ("paid", None, "s//t"),
            ("paid", None, "/t"),
            ("paid", None, "t/"),
            ("paid", None, "../live/t"),
            ("paid/.", None, "t"),
            ("pa id", None, "t"),
            ("paid", None, "s\t"),
            ("paid", None, "s\u{0}t"),
            ("paid", None, "s%2Ft"),
            ("paid", None, "s#t"),
        ];
        for &(app, tc_url, name) in refused {
            assert!(
                StreamKey::from_rtmp(app, tc_url, name).is_err(),
                "{app:?} {name:?} was taken"
            );
        }
        for path in [
            "paid",
            "paid/",
            "/paid/s",
            "paid//t",
            "paid/s%252Ft",
            "paid/%2e%2e/live/t",
            "paid/s%2",
            "paid/s%zz",
            "paid/%ff",
            "paid/s%3Ftoken=1",
            "paid/s%00",
            "paid/s%+9",
            "paid/s%-1",
        ] {
            assert!(StreamKey::from_url_path(path).is_err(), "{path} was taken");
        }
        let long = "n".repeat(MAX_KEY);
        assert!(StreamKey::new("live", &long).is_err());
        assert!(StreamKey::new(&"a".repeat(MAX_APP + 1), "n").is_err());
        assert!(StreamKey::new(&"a".repeat(MAX_APP), "n").is_ok());
        assert!(StreamKey::new("pa/id", "n").is_err());
        // Names beyond ASCII are names like any other.
        assert_eq!(
            StreamKey::from_url_path("live/caf%C3%A9").unwrap().name(),
            "café"
        );
        let err = StreamKey::from_url_path("paid/s//t").unwrap_err();
        assert_eq!(err.to_string(), "the stream name has an empty part");
    }

    /// What any parser takes is one reading: its app is one segment, and
    /// its joined form, its parts and its fully percent-encoded path all
    /// parse back to it (the fuzz target `stream_name` checks the same).
    fn one_reading(key: &StreamKey) {
        let (app, name) = (key.app(), key.name());
        assert!(!app.is_empty() && !app.contains('/'), "{key:?}");
        assert!(!key.contains('%') && !key.contains('?'), "{key:?}");
        assert_eq!(StreamKey::parse(key).as_ref(), Ok(key));
        assert_eq!(StreamKey::new(app, name).as_ref(), Ok(key));
        let encoded: String = key
            .bytes()
            .map(|b| match b {
                b'/' => "/".to_owned(),
                b => format!("%{b:02X}"),
            })
            .collect();
        assert_eq!(StreamKey::from_url_path(&encoded).as_ref(), Ok(key));
    }

    proptest::proptest! {
        #[test]
        fn every_name_taken_is_one_reading(
            path in "[a-z/%.?#2Ff ]{0,24}",
            app in "[a-z/?.]{0,8}",
            name in "[a-z/?=&.%]{0,12}",
        ) {
            if let Ok(key) = StreamKey::from_url_path(&path) {
                one_reading(&key);
            }
            if let Ok((key, _)) = StreamKey::from_rtmp(&app, None, &name) {
                one_reading(&key);
            }
        }
    }

    #[test]
    fn audience_counts_by_protocol_under_one_limit() {
        let audience = Audience::default();
        let key = StreamKey::from("live/a");
        assert!(audience.join(&key, Protocol::Rtmp, 3));
        assert!(audience.join(&key, Protocol::HttpFlv, 3));
        assert!(audience.join(&key, Protocol::LlHls, 3));
        // The limit is over every protocol together.
        assert!(!audience.join(&key, Protocol::Rtmp, 3));
        assert!(audience.join(&StreamKey::from("live/b"), Protocol::LlHls, 3));
        assert_eq!(
            audience.of("live/a"),
            Viewers {
                rtmp: 1,
                http_flv: 1,
                ll_hls: 1,
                srt: 0,
            }
        );
        audience.leave(&key, Protocol::HttpFlv);
        assert!(audience.join(&key, Protocol::Rtmp, 3));
        assert_eq!(audience.of("live/a").rtmp, 2);
        assert_eq!(audience.of("live/a").http_flv, 0);
        for p in [Protocol::Rtmp, Protocol::Rtmp, Protocol::LlHls] {
            audience.leave(&key, p);
        }
        // A stream nobody watches is gone from the table.
        let keys: Vec<_> = audience.snapshot().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![StreamKey::from("live/b")]);
        // A leave with nothing to take back changes nothing.
        audience.leave(&key, Protocol::Rtmp);
        assert_eq!(audience.of("live/a"), Viewers::default());
    }

    #[test]
    fn viewers_sum_and_read_partial_json() {
        let mut sum = Viewers::default();
        sum.add(&Viewers {
            rtmp: 2,
            http_flv: 0,
            ll_hls: 1,
            srt: 1,
        });
        // A node from before SRT sends no `srt`.
        let other: Viewers = serde_json::from_str(r#"{"http_flv":4}"#).unwrap();
        sum.add(&other);
        assert_eq!(sum.total(), 8);
        assert_eq!(sum.http_flv, 4);
    }
}
