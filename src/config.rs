//! Node configuration: the TOML file (`config/tributary.toml` documents
//! every key and its default), command-line overrides, and validation that
//! names the key at fault. Owns no runtime state and opens no socket.
//!
//! Long (about 740 lines): every section's keys, defaults and validation,
//! kept in one file so each default sits beside its key, plus the command
//! line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::protocol::Limits;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub rtmp: RtmpConfig,
    pub limits: LimitsConfig,
    pub streams: StreamsConfig,
    pub players: PlayersConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub media: MediaConfig,
    pub push: PushConfig,
    pub exec: ExecConfig,
    pub record: RecordConfig,
    pub srt: SrtConfig,
}

/// SRT (`[srt]`): a UDP listener for MPEG-TS publishers and players,
/// through libsrt 1.5 (loaded only when `listen` is set).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SrtConfig {
    /// The UDP address; unset = no SRT.
    pub listen: Option<SocketAddr>,
    /// SRT's latency (`SRTO_LATENCY`, ms): how long the receiver holds
    /// packets to repair losses. The larger of the two ends' wins.
    pub latency_ms: u32,
    /// A passphrase (AES, 10 to 79 bytes) every caller must hold, unless
    /// its app has its own.
    pub passphrase: Option<String>,
    /// `[srt.apps.NAME] passphrase = "..."`: one app's passphrase.
    pub apps: BTreeMap<String, AppSrt>,
    /// SRT connections open at once, in all and per caller address; past
    /// either, a caller is refused in the handshake (code 1402). 0 = none.
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
}

impl Default for SrtConfig {
    fn default() -> Self {
        Self {
            listen: None,
            latency_ms: 120,
            passphrase: None,
            apps: BTreeMap::new(),
            max_sessions: 1000,
            max_sessions_per_ip: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppSrt {
    pub passphrase: Option<String>,
}

impl SrtConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(20..=8000).contains(&self.latency_ms) {
            return Err(invalid("srt.latency_ms", "must be 20..=8000"));
        }
        let passes = self
            .apps
            .values()
            .filter_map(|a| a.passphrase.as_ref())
            .chain(self.passphrase.as_ref());
        for p in passes {
            if !(10..=79).contains(&p.len()) {
                return Err(invalid(
                    "srt.passphrase",
                    "a passphrase is 10 to 79 bytes (libsrt's bounds)",
                ));
            }
        }
        Ok(())
    }
}

/// HTTP media for browsers and HTTP players (HTTP-FLV), served by every
/// shard on the data plane.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// The HTTP media listener (every shard); unset = none.
    pub listen: Option<SocketAddr>,
    /// The same over HTTPS, with the `[tls]` certificates; unset = none.
    pub tls_listen: Option<SocketAddr>,
    /// `Access-Control-Allow-Origin` on every answer; empty = no CORS
    /// headers.
    pub cors_origin: String,
    /// LL-HLS: the part target and the segment target (segments start at
    /// keyframes, so a segment lasts at least this long, up to a GOP more).
    pub hls_part_ms: u32,
    pub hls_segment_ms: u32,
    /// Complete segments kept in memory per stream.
    pub hls_window_segments: usize,
    /// A stream nobody has asked for this long stops being packaged.
    pub hls_idle_ms: u64,
    /// LL-HLS viewers get a session in their playlist's URL (a
    /// multivariant playlist names it), so each is counted once whichever
    /// connections it uses. Off: the media playlist at once, and a viewer
    /// is a connection (for a cache in front that collapses playlist
    /// requests: per-viewer playlist URLs defeat it).
    pub hls_sessions: bool,
    /// RTMPT (RTMP tunnelled in HTTP) on the media listener, and RTMPTS on
    /// its TLS listener: `POST /open/1`, `/send`, `/idle`, `/close`.
    pub rtmpt: bool,
    /// RTMPT sessions open at once, on the node and per client address
    /// (0 = no limit).
    pub rtmpt_sessions: u64,
    pub rtmpt_sessions_per_ip: u32,
    /// An RTMPT session with no request for this long is closed.
    pub rtmpt_idle_ms: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tls_listen: None,
            cors_origin: "*".into(),
            hls_part_ms: 200,
            hls_segment_ms: 2000,
            hls_window_segments: 6,
            hls_idle_ms: 30_000,
            hls_sessions: true,
            rtmpt: true,
            rtmpt_sessions: 1000,
            rtmpt_sessions_per_ip: 64,
            rtmpt_idle_ms: 10_000,
        }
    }
}

/// RTMPS.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The RTMPS listener (every shard); unset = no RTMPS.
    pub listen: Option<SocketAddr>,
    /// Certificate chain and private key (PEM) for clients without SNI or
    /// with a name not listed in `sni`.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// More certificates, chosen by the name the client asks for (SNI).
    pub sni: Vec<SniCert>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Name of this node in the cluster; empty = the host name.
    pub id: String,
    /// Data-plane shards (one glommio executor each); 0 = one per online CPU.
    pub shards: usize,
    /// Memory each shard registers with io_uring, in KiB.
    pub io_memory_kib: usize,
    /// Receive buffers in each shard's socket ring (a power of two).
    pub recv_buffers: usize,
    /// Size of each receive buffer, in KiB.
    pub recv_buffer_kib: usize,
    /// Under load, a shard reaps its socket ring at most once per this
    /// many microseconds, so that one pass takes in many sockets' input.
    pub wake_interval_us: u64,
    /// Builds each shard's socket ring with DEFER_TASKRUN: fewer kernel
    /// passes per byte (ingest and fan-out CPU), but the kernel signals a
    /// quiet shard's ring through an RCU callback, so its input may wait
    /// 5 to 20 ms. Off (the default): a quiet shard wakes at once.
    pub defer_taskrun: bool,
    /// On SIGTERM/SIGINT, /readyz says 503 this long before the node stops
    /// accepting, so load balancers and health-checked DNS move first.
    pub drain_delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtmpConfig {
    pub listen: SocketAddr,
    /// Chunk size we send with (announced after connect).
    pub chunk_size: u32,
    /// Window Acknowledgement Size / Set Peer Bandwidth we announce.
    pub window_ack_size: u32,
    pub handshake_timeout_ms: u64,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// Connections per shard; more are refused at accept.
    pub max_connections_per_shard: usize,
    /// Connections on the whole node; 0 = no limit beyond the per-shard one.
    pub max_connections: u64,
    /// Connections from one client address; 0 = no limit.
    pub max_connections_per_ip: u32,
    /// Streams (createStream) one connection may open.
    pub max_streams_per_connection: u32,
    /// RTMPE (and RTMPTE): Adobe's encrypted handshake and RC4 stream.
    /// Obfuscation, not security: RTMPS is the secure choice.
    pub rtmpe: bool,
    /// `[rtmp.apps.NAME] rtmpe = false`: one app refuses RTMPE.
    pub apps: BTreeMap<String, AppRtmp>,
}

/// One app's RTMP settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppRtmp {
    pub rtmpe: Option<bool>,
}

impl RtmpConfig {
    /// Whether an RTMPE connection may `connect` to `app`.
    pub fn rtmpe_allowed(&self, app: &str) -> bool {
        self.apps
            .get(app)
            .and_then(|a| a.rtmpe)
            .unwrap_or(self.rtmpe)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_chunk_size: u32,
    pub max_message_len: u32,
    pub max_chunk_streams: usize,
    pub max_amf_depth: usize,
    pub max_command_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePublish {
    /// A second publisher of a live key gets NetStream.Publish.BadName.
    Reject,
    /// The new publisher replaces the old one (encoders that reconnect
    /// before the server noticed the old TCP connection died).
    Takeover,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnpublish {
    /// Players stay and resume when the key is published again.
    Wait,
    /// Players are closed.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlayUnknown {
    /// Wait for the stream to be published, up to `play_wait_timeout_ms`.
    Wait,
    /// Answer NetStream.Play.StreamNotFound at once.
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    pub duplicate_publish: DuplicatePublish,
    pub on_unpublish: OnUnpublish,
    /// With on_unpublish = "wait": how long players wait for a re-publish.
    pub unpublish_wait_timeout_ms: u64,
    pub play_unknown: PlayUnknown,
    pub play_wait_timeout_ms: u64,
    /// Bytes of the last GOP a stream keeps for new players.
    pub gop_cache_max_bytes: usize,
    /// Messages queued from the owner shard to each other shard.
    pub shard_channel_capacity: usize,
    /// Streams published on this node at once; 0 = no limit.
    pub max_publishers: u64,
    /// Ingest cap per publisher, in kbit/s (reads are paced to it, so TCP
    /// slows the encoder down); 0 = none.
    pub max_ingest_kbps: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlayersConfig {
    /// Bytes queued for one player before frames are dropped up to the next keyframe.
    pub queue_max_bytes: usize,
    /// A player that stays behind (dropping) this long is disconnected.
    pub max_lag_ms: u64,
    /// Players of one stream on this node, every protocol together (RTMP,
    /// HTTP-FLV, LL-HLS connections); 0 = no limit.
    pub max_per_stream: u32,
    /// Media waits up to this long so that one send carries several
    /// messages (fewer packets, wakes and syscalls per byte); 0 = send at once.
    pub send_coalesce_ms: u64,
    /// The latency budget of every player (RTMP and HTTP-FLV), ms: how long
    /// its media may wait so that one send carries more of it, video
    /// included (SRS's `mw_latency`). 0: each message is sent at once.
    /// Unset: the low-latency default (video at once, audio and data up to
    /// `send_coalesce_ms` for the next video frame).
    pub latency_ms: Option<u64>,
    /// `[players.apps.NAME] latency_ms = N`: one app's budget instead.
    pub apps: BTreeMap<String, AppPlayers>,
}

/// One app's players.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppPlayers {
    pub latency_ms: Option<u64>,
}

/// How long a player's media may wait for a send (its latency budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Video at once; audio and data wait up to this many ms for the next
    /// video frame, to leave in its send.
    LowLatency { audio_wait_ms: u64 },
    /// Every message at once.
    Immediate,
    /// Everything queued leaves at most this many ms after the first of it,
    /// in one send.
    Budget { ms: u64 },
}

impl Latency {
    /// The mode's name, as `/api/streams` gives it.
    pub fn mode(self) -> &'static str {
        match self {
            Latency::LowLatency { .. } => "low-latency",
            Latency::Immediate => "immediate",
            Latency::Budget { .. } => "budget",
        }
    }

    /// The most a message waits, ms.
    pub fn max_wait_ms(self) -> u64 {
        match self {
            Latency::LowLatency { audio_wait_ms } => audio_wait_ms,
            Latency::Immediate => 0,
            Latency::Budget { ms } => ms,
        }
    }
}

impl PlayersConfig {
    /// The latency budget of `app`'s players: the app's own, else the
    /// node's, else the low-latency default.
    pub fn latency(&self, app: &str) -> Latency {
        let ms = self
            .apps
            .get(app)
            .and_then(|a| a.latency_ms)
            .or(self.latency_ms);
        match ms {
            None => Latency::LowLatency {
                audio_wait_ms: self.send_coalesce_ms,
            },
            Some(0) => Latency::Immediate,
            Some(ms) => Latency::Budget { ms },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// When set, `/api/*` asks for `Authorization: Bearer <token>`.
    pub admin_token: String,
    /// A file whose content (trimmed) is the admin token, read at start:
    /// a Kubernetes Secret, a Compose secret or a systemd credential.
    pub admin_token_file: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: "info", "tributary=debug", ...
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishAuth {
    /// Anyone may publish any key.
    Open,
    /// The stream key must be listed (`keys`, or the keys file).
    Keys,
    /// A signed, unexpired token in the query.
    Token,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlayAuth {
    Open,
    Token,
}

/// One app's rule (`[auth.apps.NAME]`); unset fields are open.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppAuth {
    pub publish: PublishAuth,
    pub play: PlayAuth,
    pub keys: Vec<String>,
}

impl Default for AppAuth {
    fn default() -> Self {
        Self {
            publish: PublishAuth::Open,
            play: PlayAuth::Open,
            keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The rule for apps without their own `[auth.apps.NAME]`.
    pub publish: PublishAuth,
    pub play: PlayAuth,
    pub keys: Vec<String>,
    /// One key per line (`key`, or `app/key` for one app); `#` comments.
    /// Re-read when it changes.
    pub keys_file: String,
    /// HMAC-SHA256 secret of `?token=...&expires=...`.
    pub token_secret: String,
    /// An HTTP service asked before every publish (and play, with
    /// `webhook_on_play`): 2xx allows. Empty = none.
    pub webhook_url: String,
    pub webhook_timeout_ms: u64,
    /// Refuse when the service cannot be reached in time.
    pub webhook_fail_closed: bool,
    pub webhook_on_play: bool,
    pub apps: BTreeMap<String, AppAuth>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            publish: PublishAuth::Open,
            play: PlayAuth::Open,
            keys: Vec::new(),
            keys_file: String::new(),
            token_secret: String::new(),
            webhook_url: String::new(),
            webhook_timeout_ms: 2_000,
            webhook_fail_closed: true,
            webhook_on_play: false,
            apps: BTreeMap::new(),
        }
    }
}

/// Restreaming (`[push]`): where each app's streams are pushed, and how.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// The first wait after a failed try; it doubles up to the maximum.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// PEM certificates trusted for rtmps:// targets besides the system's
    /// roots (a private CA). Empty = the system's only.
    pub ca_file: PathBuf,
    /// Targets one stream may have, static and added over the API.
    pub max_per_stream: usize,
    /// A live target's media leaves in batches at most this many ms
    /// apart, video included (fewer, larger sends); 0 = as players'.
    pub send_batch_ms: u64,
    /// `[push.apps.NAME] targets = [...]`: URL templates each stream of
    /// the app is pushed to.
    pub apps: BTreeMap<String, AppPush>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            backoff_min_ms: 1_000,
            backoff_max_ms: 30_000,
            ca_file: PathBuf::new(),
            max_per_stream: 16,
            send_batch_ms: 100,
            apps: BTreeMap::new(),
        }
    }
}

/// One app's push targets.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppPush {
    pub targets: Vec<String>,
}

impl PushConfig {
    /// Each app's templates, checked (`validate` has refused bad ones).
    pub fn templates(&self) -> BTreeMap<String, Vec<crate::output::push::Template>> {
        self.apps
            .iter()
            .map(|(app, p)| {
                let t = p
                    .targets
                    .iter()
                    .filter_map(|t| crate::output::push::Template::parse(t).ok())
                    .collect();
                (app.clone(), t)
            })
            .collect()
    }

    pub fn backoff(&self) -> crate::output::push::Backoff {
        crate::output::push::Backoff {
            min: std::time::Duration::from_millis(self.backoff_min_ms),
            max: std::time::Duration::from_millis(self.backoff_max_ms),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(100..=60_000).contains(&self.backoff_min_ms) {
            return Err(invalid("push.backoff_min_ms", "must be 100..=60000"));
        }
        if self.backoff_max_ms < self.backoff_min_ms || self.backoff_max_ms > 3_600_000 {
            return Err(invalid(
                "push.backoff_max_ms",
                "must be at least push.backoff_min_ms and at most 3600000",
            ));
        }
        if !(1..=256).contains(&self.max_per_stream) {
            return Err(invalid("push.max_per_stream", "must be 1..=256"));
        }
        if self.send_batch_ms > 1000 {
            return Err(invalid("push.send_batch_ms", "must be at most 1000"));
        }
        for (app, p) in &self.apps {
            if let Err(e) = crate::stream::StreamKey::new(app, "name") {
                return Err(invalid(
                    "push.apps",
                    format!("{app:?} is not an app name (one path segment): {e}"),
                ));
            }
            if p.targets.len() > self.max_per_stream {
                return Err(invalid(
                    "push.apps.targets",
                    format!("app {app:?} lists more targets than push.max_per_stream"),
                ));
            }
            for t in &p.targets {
                if let Err(e) = crate::output::push::Template::parse(t) {
                    return Err(invalid(
                        "push.apps.targets",
                        format!("app {app:?}: `{t}`: {e}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Recording (`[record]`): which apps' streams are recorded, where, in
/// files of what length, how durably, and for how long.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordConfig {
    /// The directory recordings go under (`APP/NAME/START.mp4`); created
    /// if missing. Empty = recording is off on this node.
    pub path: PathBuf,
    /// A file closes at the first keyframe at or past this length, s.
    pub segment_secs: u32,
    /// Each fragment (`moof` + `mdat`) is appended when this much media is
    /// in it, ms: what a crash can lose at most.
    pub fragment_ms: u32,
    /// `"fragment"`: fdatasync after each fragment; `"segment"`: when a
    /// file closes; `"never"`: leave it to the kernel.
    pub fsync: String,
    /// A stream's writes waiting at most, bytes: past it the recording
    /// marks a gap (a new file from the next keyframe) and counts it.
    pub queue_max_bytes: usize,
    /// Files older than this are deleted, s (0 = kept by age).
    pub delete_after_secs: u64,
    /// The node's recordings are kept under this many bytes, the oldest
    /// deleted first (0 = no limit). The file being written is never
    /// deleted.
    pub max_bytes: u64,
    /// After a write error, how long until the recording tries again in a
    /// new file, ms.
    pub retry_ms: u64,
    /// `"nats"`: each finished file is also copied to the cluster's
    /// JetStream object store (bucket `tributary_recordings_store`), so any
    /// node serves it after the node that made it is gone; `"off"` (the
    /// default): files live on their node only.
    pub store: String,
    /// The object store's bucket holds at most this many bytes (0 = the
    /// JetStream server's own limits); set when the bucket is created. Its
    /// objects are kept `delete_after_secs` (0 = until deleted).
    pub store_max_bytes: u64,
    /// `[record.apps.NAME] record = "all"`: every stream of the app is
    /// recorded from its publish; "off" (the default): only those started
    /// over the API.
    pub apps: BTreeMap<String, AppRecord>,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            segment_secs: 300,
            fragment_ms: 1000,
            fsync: "segment".into(),
            queue_max_bytes: 32 << 20,
            delete_after_secs: 0,
            max_bytes: 0,
            retry_ms: 5_000,
            store: "off".into(),
            store_max_bytes: 0,
            apps: BTreeMap::new(),
        }
    }
}

/// One app's recording rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppRecord {
    pub record: String,
}

impl Default for AppRecord {
    fn default() -> Self {
        Self {
            record: "off".into(),
        }
    }
}

/// When a recording's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Fragment,
    Segment,
    Never,
}

impl RecordConfig {
    pub fn enabled(&self) -> bool {
        !self.path.as_os_str().is_empty()
    }

    /// Whether `app`'s streams are recorded from their publish.
    pub fn records_all(&self, app: &str) -> bool {
        self.enabled() && self.apps.get(app).is_some_and(|a| a.record == "all")
    }

    /// Whether finished files are copied to the NATS object store.
    pub fn stored(&self) -> bool {
        self.store == "nats"
    }

    pub fn fsync(&self) -> Fsync {
        match self.fsync.as_str() {
            "fragment" => Fsync::Fragment,
            "never" => Fsync::Never,
            _ => Fsync::Segment,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.segment_secs) {
            return Err(invalid("record.segment_secs", "must be 1..=86400"));
        }
        if !(100..=10_000).contains(&self.fragment_ms) {
            return Err(invalid("record.fragment_ms", "must be 100..=10000"));
        }
        if !matches!(self.fsync.as_str(), "fragment" | "segment" | "never") {
            return Err(invalid(
                "record.fsync",
                "must be \"fragment\", \"segment\" or \"never\"",
            ));
        }
        if !(1 << 16..=1 << 32).contains(&self.queue_max_bytes) {
            return Err(invalid(
                "record.queue_max_bytes",
                "must be 65536..=4294967296",
            ));
        }
        if !(100..=3_600_000).contains(&self.retry_ms) {
            return Err(invalid("record.retry_ms", "must be 100..=3600000"));
        }
        if !matches!(self.store.as_str(), "off" | "nats") {
            return Err(invalid("record.store", "must be \"off\" or \"nats\""));
        }
        if self.store == "nats" && !self.enabled() {
            return Err(invalid(
                "record.store",
                "\"nats\" needs record.path (where this node records and caches stored files)",
            ));
        }
        for (app, a) in &self.apps {
            if let Err(e) = crate::stream::StreamKey::new(app, "name") {
                return Err(invalid(
                    "record.apps",
                    format!("{app:?} is not an app name (one path segment): {e}"),
                ));
            }
            if !matches!(a.record.as_str(), "all" | "off") {
                return Err(invalid(
                    "record.apps.record",
                    format!("app {app:?}: must be \"all\" or \"off\""),
                ));
            }
            if a.record == "all" && !self.enabled() {
                return Err(invalid(
                    "record.path",
                    format!("app {app:?} records all its streams, but record.path is empty"),
                ));
            }
        }
        Ok(())
    }
}

/// Exec pipelines and hooks (`[exec]`): programs run for each stream
/// published on this node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecConfig {
    /// Processes running at once on the node, pipelines and hooks.
    pub max_processes: usize,
    /// The first wait before a pipeline that exited starts again; it
    /// doubles up to the maximum.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// `[exec.apps.NAME]`: each app's pipelines and hooks.
    pub apps: BTreeMap<String, AppExecConfig>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            max_processes: 16,
            backoff_min_ms: 1_000,
            backoff_max_ms: 30_000,
            apps: BTreeMap::new(),
        }
    }
}

/// One app's pipelines (`[[exec.apps.NAME.pipelines]]`) and hooks.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppExecConfig {
    pub pipelines: Vec<PipelineConfig>,
    /// A program run once when a stream of the app is published, and when
    /// it ends (argument lists; empty = none).
    pub on_publish: Vec<String>,
    pub on_unpublish: Vec<String>,
    /// A program run when a recording file of a stream of the app is
    /// complete (`[record]`), with TRIBUTARY_FILE, TRIBUTARY_START,
    /// TRIBUTARY_DURATION and TRIBUTARY_BYTES in its environment.
    pub on_record_done: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Its rendition's suffix: `APP/NAME_PIPELINE`.
    pub name: String,
    pub command: Vec<String>,
}

/// The most pipelines one app may have.
pub const MAX_PIPELINES: usize = 16;

impl ExecConfig {
    /// Each app's checked pipelines and hooks (`validate` refused bad ones).
    pub fn apps(&self) -> BTreeMap<String, crate::exec::AppExec> {
        use crate::output::pipeline::Pipeline;
        let hook = |name: &str, args: &[String]| match args.is_empty() {
            true => None,
            false => Pipeline::new(name, args).ok(),
        };
        self.apps
            .iter()
            .map(|(app, a)| {
                let exec = crate::exec::AppExec {
                    pipelines: a
                        .pipelines
                        .iter()
                        .filter_map(|p| Pipeline::new(&p.name, &p.command).ok())
                        .collect(),
                    on_publish: hook("publish", &a.on_publish),
                    on_unpublish: hook("unpublish", &a.on_unpublish),
                    on_record_done: hook("recorded", &a.on_record_done),
                };
                (app.clone(), exec)
            })
            .collect()
    }

    /// Per app, the names of the pipelines that publish a rendition
    /// (`NAME_PIPELINE`): what a multivariant playlist lists and a play
    /// token of `NAME` plays.
    pub fn renditions(&self) -> BTreeMap<String, Vec<String>> {
        self.apps()
            .into_iter()
            .map(|(app, e)| {
                let names = e.pipelines.iter().filter(|p| p.publishes());
                (app, names.map(|p| p.name.clone()).collect())
            })
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        use crate::output::pipeline::Pipeline;
        if !(1..=1024).contains(&self.max_processes) {
            return Err(invalid("exec.max_processes", "must be 1..=1024"));
        }
        if !(100..=60_000).contains(&self.backoff_min_ms) {
            return Err(invalid("exec.backoff_min_ms", "must be 100..=60000"));
        }
        if self.backoff_max_ms < self.backoff_min_ms || self.backoff_max_ms > 3_600_000 {
            return Err(invalid(
                "exec.backoff_max_ms",
                "must be at least exec.backoff_min_ms and at most 3600000",
            ));
        }
        for (app, a) in &self.apps {
            if let Err(e) = crate::stream::StreamKey::new(app, "name") {
                return Err(invalid(
                    "exec.apps",
                    format!("{app:?} is not an app name (one path segment): {e}"),
                ));
            }
            if a.pipelines.len() > MAX_PIPELINES {
                return Err(invalid(
                    "exec.apps.pipelines",
                    format!("app {app:?} has more than {MAX_PIPELINES} pipelines"),
                ));
            }
            let mut names = std::collections::BTreeSet::new();
            for p in &a.pipelines {
                if let Err(e) = Pipeline::new(&p.name, &p.command) {
                    return Err(invalid(
                        "exec.apps.pipelines",
                        format!("app {app:?}, pipeline {:?}: {e}", p.name),
                    ));
                }
                if !names.insert(&p.name) {
                    return Err(invalid(
                        "exec.apps.pipelines",
                        format!("app {app:?} names pipeline {:?} twice", p.name),
                    ));
                }
            }
            for (key, hook) in [
                ("exec.apps.on_publish", &a.on_publish),
                ("exec.apps.on_unpublish", &a.on_unpublish),
                ("exec.apps.on_record_done", &a.on_record_done),
            ] {
                if !hook.is_empty() {
                    if let Err(e) = Pipeline::new("hook", hook) {
                        return Err(invalid(key, format!("app {app:?}: {e}")));
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers; empty = standalone node.
    pub nats: Vec<String>,
    /// NATS credentials: user and password, a token, an nkey seed, or a
    /// creds file (JWT + nkey); empty = none.
    pub user: String,
    pub password: String,
    pub token: String,
    /// A file whose content (trimmed) is the NATS token, read at start.
    pub token_file: String,
    pub nkey_seed: String,
    pub creds_file: String,
    /// A CA bundle (PEM) to verify the NATS servers' certificates.
    pub tls_ca_file: String,
    pub require_tls: bool,
    /// A dead node's registry entries expire after this; owners refresh
    /// theirs every third of it.
    pub registry_ttl_ms: u64,
    /// How long a stream's push targets added over the API outlive an
    /// owner lost without a goodbye: a re-publish on another node within it
    /// takes them up. At least `registry_ttl_ms` is used.
    pub push_targets_keep_ms: u64,
    /// JetStream replicas of the registry buckets (3 on a 3-server NATS cluster).
    pub kv_replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats: Vec::new(),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            token_file: String::new(),
            nkey_seed: String::new(),
            creds_file: String::new(),
            tls_ca_file: String::new(),
            require_tls: false,
            registry_ttl_ms: 6_000,
            push_targets_keep_ms: 120_000,
            kv_replicas: 1,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            shards: 0,
            io_memory_kib: 512,
            recv_buffers: 256,
            recv_buffer_kib: 16,
            wake_interval_us: 2000,
            defer_taskrun: false,
            drain_delay_ms: 0,
        }
    }
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1935)),
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_connections_per_shard: 10_000,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_streams_per_connection: 8,
            rtmpe: true,
            apps: BTreeMap::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_chunk_size: l.max_chunk_size,
            max_message_len: l.max_message_len,
            max_chunk_streams: l.max_chunk_streams,
            max_amf_depth: l.max_amf_depth,
            max_command_len: l.max_command_len,
        }
    }
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            duplicate_publish: DuplicatePublish::Reject,
            on_unpublish: OnUnpublish::Close,
            unpublish_wait_timeout_ms: 30_000,
            play_unknown: PlayUnknown::NotFound,
            play_wait_timeout_ms: 10_000,
            gop_cache_max_bytes: 16 * 1024 * 1024,
            shard_channel_capacity: 1024,
            max_publishers: 0,
            max_ingest_kbps: 0,
        }
    }
}

impl Default for PlayersConfig {
    fn default() -> Self {
        Self {
            queue_max_bytes: 8 * 1024 * 1024,
            max_lag_ms: 10_000,
            max_per_stream: 0,
            send_coalesce_ms: 30,
            latency_ms: None,
            apps: BTreeMap::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: String::new(),
            admin_token_file: String::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

impl Config {
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text, path)?;
        config.read_secret_files(path.parent().unwrap_or(Path::new(".")))?;
        Ok(config)
    }

    /// Fills `http.admin_token` and `cluster.token` from their `*_file`
    /// keys (a relative path is taken from the config file's directory).
    /// A secret named both ways, or a file that is missing or empty, stops
    /// the start: a node must never come up open because its secret was not
    /// mounted.
    fn read_secret_files(&mut self, dir: &Path) -> Result<(), ConfigError> {
        let secrets: [(&'static str, &'static str, &String, &mut String); 2] = [
            (
                "http.admin_token_file",
                "http.admin_token",
                &self.http.admin_token_file,
                &mut self.http.admin_token,
            ),
            (
                "cluster.token_file",
                "cluster.token",
                &self.cluster.token_file,
                &mut self.cluster.token,
            ),
        ];
        for (key, inline, file, value) in secrets {
            if file.is_empty() {
                continue;
            }
            if !value.is_empty() {
                return Err(invalid(
                    key,
                    format!("set either {key} or {inline}, not both"),
                ));
            }
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(invalid(key, format!("{} is empty", path.display())));
            }
            *value = secret.to_owned();
        }
        Ok(())
    }

    /// This node's name: `node.id`, or the host name when that is empty.
    pub fn node_id(&self) -> String {
        if !self.node.id.is_empty() {
            return self.node.id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "tributary".into())
    }

    /// The protocol limits as the protocol core takes them.
    pub fn protocol_limits(&self) -> Limits {
        Limits {
            max_chunk_size: self.limits.max_chunk_size,
            max_message_len: self.limits.max_message_len,
            max_chunk_streams: self.limits.max_chunk_streams,
            max_amf_depth: self.limits.max_amf_depth,
            max_command_len: self.limits.max_command_len,
        }
    }

    /// Checks every value a TOML type cannot; names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.srt.validate()?;
        let r = &self.rtmp;
        if !(128..=65_536).contains(&r.chunk_size) {
            return Err(invalid("rtmp.chunk_size", "must be 128..=65536"));
        }
        if r.window_ack_size == 0 {
            return Err(invalid("rtmp.window_ack_size", "must be positive"));
        }
        if r.handshake_timeout_ms == 0 {
            return Err(invalid("rtmp.handshake_timeout_ms", "must be positive"));
        }
        if r.idle_timeout_ms == 0 {
            return Err(invalid("rtmp.idle_timeout_ms", "must be positive"));
        }
        if r.max_connections_per_shard == 0 {
            return Err(invalid(
                "rtmp.max_connections_per_shard",
                "must be positive",
            ));
        }
        if r.max_streams_per_connection == 0 {
            return Err(invalid(
                "rtmp.max_streams_per_connection",
                "must be positive",
            ));
        }
        let l = &self.limits;
        if !(128..=0x7FFF_FFFF).contains(&l.max_chunk_size) {
            return Err(invalid("limits.max_chunk_size", "must be 128..=2147483647"));
        }
        if !(1024..=0x00FF_FFFF).contains(&l.max_message_len) {
            return Err(invalid(
                "limits.max_message_len",
                "must be 1024..=16777215 (RTMP's 24-bit length)",
            ));
        }
        if !(4..=65_536).contains(&l.max_chunk_streams) {
            return Err(invalid("limits.max_chunk_streams", "must be 4..=65536"));
        }
        if !(2..=1024).contains(&l.max_amf_depth) {
            return Err(invalid("limits.max_amf_depth", "must be 2..=1024"));
        }
        if !(1024..=l.max_message_len).contains(&l.max_command_len) {
            return Err(invalid(
                "limits.max_command_len",
                "must be 1024..=limits.max_message_len",
            ));
        }
        let s = &self.streams;
        if s.unpublish_wait_timeout_ms == 0 {
            return Err(invalid(
                "streams.unpublish_wait_timeout_ms",
                "must be positive",
            ));
        }
        if s.play_wait_timeout_ms == 0 {
            return Err(invalid("streams.play_wait_timeout_ms", "must be positive"));
        }
        if s.gop_cache_max_bytes < 64 * 1024 {
            return Err(invalid(
                "streams.gop_cache_max_bytes",
                "must be at least 65536",
            ));
        }
        if s.shard_channel_capacity == 0 {
            return Err(invalid(
                "streams.shard_channel_capacity",
                "must be positive",
            ));
        }
        let p = &self.players;
        if p.queue_max_bytes < 64 * 1024 {
            return Err(invalid("players.queue_max_bytes", "must be at least 65536"));
        }
        if p.max_lag_ms == 0 {
            return Err(invalid("players.max_lag_ms", "must be positive"));
        }
        let n = self.node.recv_buffers;
        if !(2..=32768).contains(&n) || !n.is_power_of_two() {
            return Err(invalid(
                "node.recv_buffers",
                "must be a power of two from 2 to 32768",
            ));
        }
        if !(1..=1024).contains(&self.node.recv_buffer_kib) {
            return Err(invalid("node.recv_buffer_kib", "must be 1 to 1024"));
        }
        if self.node.wake_interval_us > 100_000 {
            return Err(invalid("node.wake_interval_us", "must be at most 100000"));
        }
        if self.players.send_coalesce_ms > 1000 {
            return Err(invalid("players.send_coalesce_ms", "must be at most 1000"));
        }
        if self.players.latency_ms.is_some_and(|ms| ms > 1000) {
            return Err(invalid("players.latency_ms", "must be at most 1000"));
        }
        for (app, a) in &self.players.apps {
            if a.latency_ms.is_some_and(|ms| ms > 1000) {
                return Err(invalid(
                    "players.apps.NAME.latency_ms",
                    format!("must be at most 1000 (app {app:?})"),
                ));
            }
        }
        if self.node.io_memory_kib < 64 {
            return Err(invalid("node.io_memory_kib", "must be at least 64"));
        }
        let a = &self.auth;
        for app in a.apps.keys() {
            // A rule no stream's app can match would protect nothing.
            if let Err(e) = crate::stream::StreamKey::new(app, "name") {
                return Err(invalid(
                    "auth.apps",
                    format!("{app:?} is not an app name (one path segment): {e}"),
                ));
            }
        }
        let rules = std::iter::once((a.publish, a.play, &a.keys))
            .chain(a.apps.values().map(|r| (r.publish, r.play, &r.keys)));
        for (publish, play, keys) in rules {
            let token = publish == PublishAuth::Token || play == PlayAuth::Token;
            if token && a.token_secret.len() < 16 {
                return Err(invalid(
                    "auth.token_secret",
                    "a rule uses tokens: set a secret of at least 16 bytes",
                ));
            }
            if publish == PublishAuth::Keys && keys.is_empty() && a.keys_file.is_empty() {
                return Err(invalid(
                    "auth.keys",
                    "a rule says publish = \"keys\" but no keys are listed and auth.keys_file is empty",
                ));
            }
        }
        if !a.webhook_url.is_empty() && !a.webhook_url.starts_with("http://") {
            return Err(invalid(
                "auth.webhook_url",
                "must be an http:// URL (run the hook beside the node or on a private network)",
            ));
        }
        if !(100..=30_000).contains(&a.webhook_timeout_ms) {
            return Err(invalid("auth.webhook_timeout_ms", "must be 100..=30000"));
        }
        if !(1_500..=600_000).contains(&self.cluster.registry_ttl_ms) {
            return Err(invalid("cluster.registry_ttl_ms", "must be 1500..=600000"));
        }
        if !(1_000..=86_400_000).contains(&self.cluster.push_targets_keep_ms) {
            return Err(invalid(
                "cluster.push_targets_keep_ms",
                "must be 1000..=86400000",
            ));
        }
        if !(1..=5).contains(&self.cluster.kv_replicas) {
            return Err(invalid("cluster.kv_replicas", "must be 1..=5"));
        }
        if !self.cluster.password.is_empty() && self.cluster.user.is_empty() {
            return Err(invalid("cluster.password", "set cluster.user as well"));
        }
        let m = &self.media;
        if !(50..=5000).contains(&m.hls_part_ms) {
            return Err(invalid("media.hls_part_ms", "must be 50..=5000"));
        }
        if m.hls_segment_ms < m.hls_part_ms || m.hls_segment_ms > 60_000 {
            return Err(invalid(
                "media.hls_segment_ms",
                "must be at least media.hls_part_ms and at most 60000",
            ));
        }
        if !(2..=100).contains(&m.hls_window_segments) {
            return Err(invalid("media.hls_window_segments", "must be 2..=100"));
        }
        if m.hls_idle_ms == 0 {
            return Err(invalid("media.hls_idle_ms", "must be positive"));
        }
        if !(500..=300_000).contains(&m.rtmpt_idle_ms) {
            // ffmpeg polls every 50 ms at most when idle; a session is
            // held this long after its client's last request.
            return Err(invalid("media.rtmpt_idle_ms", "must be 500..=300000"));
        }
        if self.media.tls_listen.is_some()
            && (self.tls.cert.as_os_str().is_empty() || self.tls.key.as_os_str().is_empty())
        {
            return Err(invalid(
                "tls.cert",
                "HTTPS media (media.tls_listen) needs tls.cert and tls.key",
            ));
        }
        if self.tls.listen.is_some()
            && (self.tls.cert.as_os_str().is_empty() || self.tls.key.as_os_str().is_empty())
        {
            return Err(invalid(
                "tls.cert",
                "RTMPS (tls.listen) needs tls.cert and tls.key",
            ));
        }
        self.push.validate()?;
        self.exec.validate()?;
        self.record.validate()?;
        for url in &self.cluster.nats {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return Err(invalid(
                    "cluster.nats",
                    format!("`{url}` is not a nats:// or tls:// URL"),
                ));
            }
        }
        Ok(())
    }
}

/// What the command line asked for. Each flag overrides the config file
/// key its help names.
#[derive(Debug, Clone, Default, PartialEq, clap::Parser)]
#[command(
    name = "tributary",
    version,
    about = "tributary: RTMP ingest cluster node",
    after_help = "With no options: a standalone node on 0.0.0.0:1935, HTTP admin on \
                  127.0.0.1:8080, with the defaults documented in config/tributary.toml."
)]
pub struct Cli {
    /// Read settings from this TOML file
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// RTMP address, e.g. 0.0.0.0:1935 [rtmp.listen]
    #[arg(long, value_name = "ADDR")]
    pub rtmp_listen: Option<SocketAddr>,
    /// HTTP admin address (/metrics, /api) [http.listen]
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// This node's name in the cluster [node.id]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// NATS servers, comma-separated; none = standalone [cluster.nats]
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub nats: Option<Vec<String>>,
    /// Data-plane shards; 0 = one per CPU the node may use (affinity, cgroup quota) [node.shards]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// HTTP media address (HTTP-FLV, LL-HLS, RTMPT), e.g. 0.0.0.0:8081 [media.listen]
    #[arg(long, value_name = "ADDR")]
    pub media_listen: Option<SocketAddr>,
    /// SRT address (UDP), e.g. 0.0.0.0:8890 [srt.listen]
    #[arg(long, value_name = "ADDR")]
    pub srt_listen: Option<SocketAddr>,
    /// RTMPS address, e.g. 0.0.0.0:443 [tls.listen]
    #[arg(long, value_name = "ADDR")]
    pub rtmps_listen: Option<SocketAddr>,
    /// RTMPS certificate chain (PEM) [tls.cert]
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// RTMPS private key (PEM) [tls.key]
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Log lines as text or one JSON object each [log.format]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl Cli {
    /// The config file (if any) with these overrides applied, validated.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(a) = self.rtmp_listen {
            config.rtmp.listen = a;
        }
        if let Some(a) = self.http_listen {
            config.http.listen = a;
        }
        if let Some(id) = &self.node_id {
            config.node.id = id.clone();
        }
        if let Some(nats) = &self.nats {
            config.cluster.nats = nats
                .iter()
                .map(|u| u.trim())
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(n) = self.shards {
            config.node.shards = n;
        }
        if let Some(a) = self.media_listen {
            config.media.listen = Some(a);
        }
        if let Some(a) = self.srt_listen {
            config.srt.listen = Some(a);
        }
        if let Some(a) = self.rtmps_listen {
            config.tls.listen = Some(a);
        }
        if let Some(p) = &self.tls_cert {
            config.tls.cert = p.clone();
        }
        if let Some(p) = &self.tls_key {
            config.tls.key = p.clone();
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srt_settings_out_of_libsrts_bounds_are_refused() {
        let check = |text: &str| {
            Config::from_toml(text, Path::new("t.toml"))
                .unwrap()
                .validate()
        };
        assert!(check("[srt]\nlatency_ms = 200\npassphrase = \"ten bytes!\"\n").is_ok());
        for bad in [
            "[srt]\nlatency_ms = 5\n",
            "[srt]\nlatency_ms = 100000\n",
            "[srt]\npassphrase = \"short\"\n",
            "[srt.apps.live]\npassphrase = \"short\"\n",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        let long = format!("[srt]\npassphrase = \"{}\"\n", "x".repeat(80));
        assert!(check(&long).is_err());
        // An unknown key is an error, not ignored.
        assert!(Config::from_toml("[srt]\nlatncy_ms = 1\n", Path::new("t.toml")).is_err());
    }

    fn parse(s: &str) -> Result<Cli, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("tributary").chain(s.split_whitespace()))
    }

    #[test]
    fn a_latency_budget_per_app_overrides_the_nodes() {
        let text = "[players]\nlatency_ms = 100\n[players.apps.now]\nlatency_ms = 0\n";
        let c = Config::from_toml(text, Path::new("t.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.players.latency("live"), Latency::Budget { ms: 100 });
        assert_eq!(c.players.latency("now"), Latency::Immediate);
        let d = Config::default();
        assert_eq!(
            d.players.latency("live"),
            Latency::LowLatency { audio_wait_ms: 30 }
        );
        assert_eq!(d.players.latency("live").mode(), "low-latency");
        let over = "[players.apps.x]\nlatency_ms = 5000\n";
        let c = Config::from_toml(over, Path::new("t.toml")).unwrap();
        assert!(c.validate().is_err(), "a budget past 1 s is refused");
        let typo = "[players.apps.x]\nlatency = 5\n";
        assert!(Config::from_toml(typo, Path::new("t.toml")).is_err());
    }

    #[test]
    fn shipped_config_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tributary.toml");
        let file = Config::load(&path).unwrap();
        assert_eq!(file, Config::default());
        file.validate().unwrap();
    }

    #[test]
    fn secrets_come_from_files_and_a_missing_or_empty_one_stops_the_start() {
        let dir = std::env::temp_dir().join(format!("trib-secrets-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("secrets")).unwrap();
        let config = dir.join("node.toml");
        let write = |toml: &str| std::fs::write(&config, toml).unwrap();
        std::fs::write(dir.join("secrets/admin"), "s3cret-admin\n").unwrap();
        std::fs::write(dir.join("secrets/nats"), "  nats-tok \n").unwrap();
        std::fs::write(dir.join("secrets/empty"), "\n").unwrap();
        write("[http]\nadmin_token_file = \"secrets/admin\"\n[cluster]\ntoken_file = \"secrets/nats\"\n");
        let c = Config::load(&config).unwrap();
        assert_eq!(c.http.admin_token, "s3cret-admin");
        assert_eq!(c.cluster.token, "nats-tok");
        for (toml, says) in [
            (
                "[http]\nadmin_token_file = \"secrets/none\"\n",
                "cannot read",
            ),
            ("[http]\nadmin_token_file = \"secrets/empty\"\n", "is empty"),
            ("[cluster]\ntoken_file = \"secrets/empty\"\n", "is empty"),
            (
                "[http]\nadmin_token = \"x\"\nadmin_token_file = \"secrets/admin\"\n",
                "not both",
            ),
        ] {
            write(toml);
            let e = Config::load(&config).unwrap_err().to_string();
            assert!(e.contains(says), "{toml}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flags_override_the_file() {
        let cli = parse("--rtmp-listen 127.0.0.1:0 --http-listen=127.0.0.1:0 --node-id n1 --nats nats://a:4222,nats://b:4222 --shards 2").unwrap();
        let c = cli.resolve().unwrap();
        assert_eq!(c.rtmp.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.node.id, "n1");
        assert_eq!(c.cluster.nats.len(), 2);
        assert_eq!(c.node.shards, 2);
        assert_eq!(c.log.format, LogFormat::Human);
        let c = parse("--log-format json").unwrap().resolve().unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(parse("--log-format xml").is_err());
    }

    #[test]
    fn bad_input_names_the_key() {
        let err = Config::from_toml("[rtmp]\nchunk_size = 5", Path::new("x.toml"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("rtmp.chunk_size"), "{err}");
        let err = Config::from_toml("[rtmp]\nchunk_sise = 4096", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("chunk_sise"), "{err}");
        let err = Config::from_toml(
            "[streams]\nduplicate_publish = \"maybe\"",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("maybe"), "{err}");
        let err = Config::from_toml("[players]\nmax_lag_ms = 0", Path::new("x.toml"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("players.max_lag_ms"), "{err}");
        // API push targets not kept at all.
        let err = Config::from_toml("[cluster]\npush_targets_keep_ms = 0", Path::new("x.toml"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("cluster.push_targets_keep_ms"),
            "{err}"
        );
        let c = Config::from_toml(
            "[streams]\non_unpublish = \"wait\"\nplay_unknown = \"wait\"\nduplicate_publish = \"takeover\"",
            Path::new("x.toml"),
        )
        .unwrap();
        c.validate().unwrap();
        let err = Config::from_toml(
            "[auth.apps.\"paid/s\"]\nplay = \"open\"",
            Path::new("x.toml"),
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("auth.apps"), "{err}");
        // Exec pipelines: checked at load, naming the app and the pipeline.
        let ok = Config::from_toml(
            "[[exec.apps.live.pipelines]]\nname = \"360p\"\ncommand = [\"ffmpeg\", \"-i\", \"{input}\", \"{output}\"]",
            Path::new("x.toml"),
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.exec.apps()["live"].pipelines.len(), 1);
        let hooks = Config::from_toml(
            "[exec.apps.live]\non_publish = [\"/bin/true\"]\non_unpublish = [\"/bin/true\", \"{name}\"]",
            Path::new("x.toml"),
        )
        .unwrap();
        hooks.validate().unwrap();
        let live = &hooks.exec.apps()["live"];
        assert!(
            live.on_publish.is_some() && live.on_unpublish.is_some(),
            "{live:?}"
        );
        for (bad, says) in [
            ("[[exec.apps.live.pipelines]]\nname = \"a b\"\ncommand = [\"x\"]", "pipeline \"a b\""),
            ("[[exec.apps.live.pipelines]]\nname = \"p\"\ncommand = []", "the command is empty"),
            ("[[exec.apps.live.pipelines]]\nname = \"p\"\ncommand = [\"x\", \"{inptu}\"]", "unknown placeholder"),
            ("[[exec.apps.live.pipelines]]\nname = \"p\"\ncommand = [\"x\"]\n[[exec.apps.live.pipelines]]\nname = \"p\"\ncommand = [\"y\"]", "twice"),
            ("[exec.apps.live]\non_publish = [\"\"]", "exec.apps.on_publish"),
            ("[exec]\nmax_processes = 0", "exec.max_processes"),
        ] {
            let err = Config::from_toml(bad, Path::new("x.toml"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        // Push targets: templates are checked at load, naming the app.
        let ok = Config::from_toml(
            "[push.apps.live]\ntargets = [\"rtmp://a.example/live2/{name}\"]",
            Path::new("x.toml"),
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.push.templates()["live"].len(), 1);
        for (bad, says) in [
            ("[push.apps.live]\ntargets = [\"http://a/b/c\"]", "scheme"),
            (
                "[push.apps.live]\ntargets = [\"rtmp://a/b/{nam}\"]",
                "unknown placeholder",
            ),
            (
                "[push.apps.live]\ntargets = [\"rtmp://a/{app}\"]",
                "no stream key",
            ),
            ("[push.apps.\"a/b\"]\ntargets = []", "push.apps"),
            ("[push]\nbackoff_min_ms = 0", "push.backoff_min_ms"),
            (
                "[push]\nbackoff_min_ms = 5000\nbackoff_max_ms = 1000",
                "push.backoff_max_ms",
            ),
            ("[push]\nmax_per_stream = 0", "push.max_per_stream"),
            ("[record]\nfsync = \"always\"", "record.fsync"),
            ("[record]\nstore = \"s3\"", "record.store"),
            ("[record]\nstore = \"nats\"", "record.store"),
            ("[record]\nsegment_secs = 0", "record.segment_secs"),
            ("[record]\nfragment_ms = 50", "record.fragment_ms"),
            ("[record]\nqueue_max_bytes = 10", "record.queue_max_bytes"),
            ("[record.apps.live]\nrecord = \"all\"", "record.path"),
            (
                "[record]\npath = \"/r\"\n[record.apps.live]\nrecord = \"yes\"",
                "record.apps.record",
            ),
            (
                "[record]\npath = \"/r\"\n[record.apps.\"a/b\"]\nrecord = \"all\"",
                "record.apps",
            ),
            (
                "[exec.apps.live]\non_record_done = [\"\"]",
                "exec.apps.on_record_done",
            ),
        ] {
            let err = Config::from_toml(bad, Path::new("x.toml"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        assert!(parse("--shards two").is_err());
        assert!(parse("--bogus").is_err());
        assert!(parse("--rtmp-listen").is_err());
    }
}
