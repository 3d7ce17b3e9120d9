//! Who may publish and play: per app, open, a list of stream keys (in the
//! config or a keys file that is reloaded when it changes), or an
//! HMAC-signed token with an expiry in the URL query. Decisions are made on
//! the shard at publish/play time (rare), never per message; the key set
//! sits behind a lock that only a reload writes.
//!
//! A token is `?token=HEX&expires=UNIX_SECONDS` after the stream key, where
//! HEX = hex(HMAC-SHA256(token_secret, "ACTION:APP/STREAM:EXPIRES")) and
//! ACTION is `publish` or `play`. With openssl:
//! `printf 'publish:live/cam:1790000000' | openssl dgst -sha256 -hmac SECRET`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{AuthConfig, PlayAuth, PublishAuth};
use crate::stream::StreamKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Play,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Play => "play",
        }
    }
}

/// Why a request was refused: said to the client (an encoder shows it) and
/// logged, never with the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("invalid stream key")]
    BadKey,
    #[error("a token is required (?token=...&expires=...)")]
    NoToken,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token")]
    BadToken,
}

impl Refusal {
    /// The label it is counted under.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::BadKey => "bad_key",
            Refusal::NoToken => "no_token",
            Refusal::Expired => "expired",
            Refusal::BadToken => "bad_token",
        }
    }
}

/// Labels of [`Refusal::kind`], as exported.
/// (`webhook` counts refusals by the publish/play webhook.)
pub const REFUSAL_KINDS: [&str; 6] = [
    "bad_key",
    "no_token",
    "expired",
    "bad_token",
    "webhook",
    "rtmpe",
];

#[derive(Debug, Clone)]
struct Rule {
    publish: PublishAuth,
    play: PlayAuth,
    keys: HashSet<String>,
}

/// Keys from the keys file: for any app, or for one app.
#[derive(Debug, Default)]
struct FileKeys {
    any: HashSet<String>,
    per_app: HashSet<(String, String)>,
}

#[derive(Debug)]
pub struct Auth {
    default: Rule,
    apps: HashMap<String, Rule>,
    secret: Vec<u8>,
    keys_file: Option<PathBuf>,
    file: RwLock<(Option<SystemTime>, Arc<FileKeys>)>,
    /// Per app, the exec pipelines that publish renditions
    /// (`NAME_PIPELINE`): a play token of `NAME` plays them too, so that
    /// one token plays a whole adaptive group.
    renditions: HashMap<String, Vec<String>>,
}

type HmacSha256 = Hmac<Sha256>;

fn rule(publish: PublishAuth, play: PlayAuth, keys: &[String]) -> Rule {
    Rule {
        publish,
        play,
        keys: keys.iter().cloned().collect(),
    }
}

fn parse_keys(text: &str) -> FileKeys {
    let mut keys = FileKeys::default();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match line.split_once('/') {
            Some((app, key)) => {
                keys.per_app.insert((app.to_owned(), key.to_owned()));
            }
            None => {
                keys.any.insert(line.to_owned());
            }
        }
    }
    keys
}

/// A parameter of a query (`a=1&b=2`, what follows a name's `?`).
fn query_param<'a>(query: &'a str, param: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == param).then_some(v)
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The keys file could not be read (at start; on a reload the keys read
/// before stay).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("auth.keys_file {}: {reason}", path.display())]
pub struct KeysFileError {
    pub path: PathBuf,
    pub reason: String,
}

impl Auth {
    /// Builds the rules and reads the keys file once (an unreadable file
    /// is an error at start).
    pub fn new(config: &AuthConfig) -> Result<Auth, KeysFileError> {
        let auth = Auth {
            default: rule(config.publish, config.play, &config.keys),
            apps: config
                .apps
                .iter()
                .map(|(app, r)| (app.clone(), rule(r.publish, r.play, &r.keys)))
                .collect(),
            secret: config.token_secret.as_bytes().to_vec(),
            keys_file: (!config.keys_file.is_empty()).then(|| PathBuf::from(&config.keys_file)),
            file: RwLock::new((None, Arc::new(FileKeys::default()))),
            renditions: HashMap::new(),
        };
        auth.reload()?;
        Ok(auth)
    }

    /// The renditions each app's pipelines publish (see `renditions`).
    pub fn with_renditions(mut self, renditions: HashMap<String, Vec<String>>) -> Self {
        self.renditions = renditions;
        self
    }

    /// Whether anything is checked at all.
    pub fn is_open(&self) -> bool {
        let open = |r: &Rule| r.publish == PublishAuth::Open && r.play == PlayAuth::Open;
        open(&self.default) && self.apps.values().all(open)
    }

    /// Re-reads the keys file if it changed since the last read; returns
    /// whether it did.
    pub fn reload(&self) -> Result<bool, KeysFileError> {
        let Some(path) = &self.keys_file else {
            return Ok(false);
        };
        let failed = |e: std::io::Error| KeysFileError {
            path: path.clone(),
            reason: e.to_string(),
        };
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(failed)?;
        if self
            .file
            .read()
            .map(|f| f.0 == Some(modified))
            .unwrap_or(false)
        {
            return Ok(false);
        }
        let text = std::fs::read_to_string(path).map_err(failed)?;
        let keys = Arc::new(parse_keys(&text));
        if let Ok(mut f) = self.file.write() {
            *f = (Some(modified), keys);
        }
        Ok(true)
    }

    /// May `action` go ahead on `key`, asked with `query` (the part after
    /// `?`, where tokens live)? The rules are the key's app's: the app as
    /// [`StreamKey`]'s one naming rule reads it. `now` is Unix seconds.
    pub fn check(
        &self,
        action: Action,
        key: &StreamKey,
        query: &str,
        now: u64,
    ) -> Result<(), Refusal> {
        self.check_parts(action, key.app(), key.name(), query, now)
    }

    /// [`Auth::check`] on a name as the tests write it, `stream?query`.
    #[cfg(test)]
    fn check_name(&self, action: Action, app: &str, name: &str, now: u64) -> Result<(), Refusal> {
        let (stream, query) = name.split_once('?').unwrap_or((name, ""));
        self.check_parts(action, app, stream, query, now)
    }

    fn check_parts(
        &self,
        action: Action,
        app: &str,
        stream: &str,
        query: &str,
        now: u64,
    ) -> Result<(), Refusal> {
        let rule = self.apps.get(app).unwrap_or(&self.default);
        match (action, rule.publish, rule.play) {
            (Action::Publish, PublishAuth::Open, _) | (Action::Play, _, PlayAuth::Open) => Ok(()),
            (Action::Publish, PublishAuth::Keys, _) => {
                let file = self.file.read().map(|f| f.1.clone()).unwrap_or_default();
                let known = rule.keys.contains(stream)
                    || file.any.contains(stream)
                    || file.per_app.contains(&(app.to_owned(), stream.to_owned()));
                if known {
                    Ok(())
                } else {
                    Err(Refusal::BadKey)
                }
            }
            (Action::Play, _, PlayAuth::Token) => {
                // A rendition plays with its stream's token too (pipeline
                // names hold no '_', so NAME_PIPELINE names one stream).
                self.check_token(action, app, stream, query, now)
                    .or_else(|e| {
                        let names = self.renditions.get(app).map_or(&[][..], Vec::as_slice);
                        let group = names.iter().any(|p| {
                            crate::output::pipeline::rendition_of(stream, p).is_some_and(|base| {
                                self.check_token(action, app, base, query, now).is_ok()
                            })
                        });
                        if group {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
            }
            (Action::Publish, PublishAuth::Token, _) => {
                self.check_token(action, app, stream, query, now)
            }
        }
    }

    /// The query a play of `app/stream` needs under the rules, valid for
    /// `ttl` seconds from `now` (Unix seconds): empty for an app open to
    /// players, `token=HEX&expires=N` for a token app. The admin API hands
    /// it to the web console, so that its previews pass the play rules.
    pub fn play_query(&self, key: &StreamKey, now: u64, ttl: u64) -> String {
        let (app, stream) = (key.app(), key.name());
        let rule = self.apps.get(app).unwrap_or(&self.default);
        match rule.play {
            PlayAuth::Open => String::new(),
            PlayAuth::Token => {
                let expires = now.saturating_add(ttl);
                let token = sign(&self.secret, Action::Play, app, stream, expires);
                format!("token={token}&expires={expires}")
            }
        }
    }

    fn check_token(
        &self,
        action: Action,
        app: &str,
        stream: &str,
        query: &str,
        now: u64,
    ) -> Result<(), Refusal> {
        let (Some(token), Some(expires)) =
            (query_param(query, "token"), query_param(query, "expires"))
        else {
            return Err(Refusal::NoToken);
        };
        let expires_at: u64 = expires.parse().map_err(|_| Refusal::BadToken)?;
        let given = unhex(token).ok_or(Refusal::BadToken)?;
        let mut mac = HmacSha256::new_from_slice(&self.secret).map_err(|_| Refusal::BadToken)?;
        mac.update(format!("{}:{app}/{stream}:{expires}", action.as_str()).as_bytes());
        mac.verify_slice(&given).map_err(|_| Refusal::BadToken)?;
        if expires_at < now {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

/// The token for `action` on `app/stream` until `expires` (what a signing
/// service hands out; used by the tests).
pub fn sign(secret: &[u8], action: Action, app: &str, stream: &str, expires: u64) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{}:{app}/{stream}:{expires}", action.as_str()).as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppAuth;

    fn config() -> AuthConfig {
        let mut c = AuthConfig {
            publish: PublishAuth::Keys,
            keys: vec!["k1".into()],
            token_secret: "s3cret".into(),
            ..AuthConfig::default()
        };
        c.apps.insert(
            "paid".into(),
            AppAuth {
                publish: PublishAuth::Token,
                play: PlayAuth::Token,
                keys: vec![],
            },
        );
        c.apps.insert("open".into(), AppAuth::default());
        c
    }

    #[test]
    fn the_play_query_passes_the_play_rules() {
        let auth = Auth::new(&config()).unwrap();
        let now = 1_790_000_000;
        let q = auth.play_query(&StreamKey::parse("paid/cam").unwrap(), now, 3600);
        assert!(
            q.starts_with("token=") && q.ends_with("&expires=1790003600"),
            "{q}"
        );
        let name = format!("cam?{q}");
        assert_eq!(auth.check_name(Action::Play, "paid", &name, now), Ok(()));
        // It names its stream, its action, and it expires.
        assert_eq!(
            auth.check_name(Action::Play, "paid", &format!("other?{q}"), now),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            auth.check_name(Action::Publish, "paid", &name, now),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            auth.check_name(Action::Play, "paid", &name, now + 3601),
            Err(Refusal::Expired)
        );
        // Players of an open app need nothing.
        assert_eq!(
            auth.play_query(&StreamKey::parse("live/cam").unwrap(), now, 3600),
            ""
        );
    }

    #[test]
    fn keys_per_app_and_default() {
        let auth = Auth::new(&config()).unwrap();
        assert!(!auth.is_open());
        assert_eq!(auth.check_name(Action::Publish, "live", "k1", 0), Ok(()));
        assert_eq!(
            auth.check_name(Action::Publish, "live", "k1?x=1", 0),
            Ok(())
        );
        assert_eq!(
            auth.check_name(Action::Publish, "live", "k2", 0),
            Err(Refusal::BadKey)
        );
        assert_eq!(auth.check_name(Action::Play, "live", "anything", 0), Ok(()));
        assert_eq!(
            auth.check_name(Action::Publish, "open", "anything", 0),
            Ok(())
        );
    }

    #[test]
    fn tokens_are_bound_to_action_stream_and_expiry() {
        let auth = Auth::new(&config()).unwrap();
        let t = sign(b"s3cret", Action::Publish, "paid", "cam", 1000);
        let name = format!("cam?token={t}&expires=1000");
        assert_eq!(auth.check_name(Action::Publish, "paid", &name, 999), Ok(()));
        assert_eq!(
            auth.check_name(Action::Publish, "paid", &name, 1001),
            Err(Refusal::Expired)
        );
        // Another action, stream, expiry or secret: invalid.
        assert_eq!(
            auth.check_name(Action::Play, "paid", &name, 999),
            Err(Refusal::BadToken)
        );
        let other = format!("cam2?token={t}&expires=1000");
        assert_eq!(
            auth.check_name(Action::Publish, "paid", &other, 999),
            Err(Refusal::BadToken)
        );
        let later = format!("cam?token={t}&expires=2000");
        assert_eq!(
            auth.check_name(Action::Publish, "paid", &later, 999),
            Err(Refusal::BadToken)
        );
        let forged = sign(b"guess", Action::Publish, "paid", "cam", 1000);
        let forged = format!("cam?token={forged}&expires=1000");
        assert_eq!(
            auth.check_name(Action::Publish, "paid", &forged, 999),
            Err(Refusal::BadToken)
        );
        for bad in ["cam", "cam?token=zz&expires=1000", "cam?token=ab&expires=x"] {
            assert!(
                auth.check_name(Action::Publish, "paid", bad, 0).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_streams_play_token_plays_its_renditions_and_nothing_else() {
        let mut c = config();
        c.apps.get_mut("paid").unwrap().play = PlayAuth::Token;
        let renditions = HashMap::from([("paid".to_owned(), vec!["360p".to_owned()])]);
        let auth = Auth::new(&c).unwrap().with_renditions(renditions);
        let t = sign(c.token_secret.as_bytes(), Action::Play, "paid", "cam", 1000);
        let q = format!("token={t}&expires=1000");
        let play = |name: &str| auth.check_name(Action::Play, "paid", &format!("{name}?{q}"), 999);
        assert_eq!(play("cam"), Ok(()));
        assert_eq!(play("cam_360p"), Ok(()), "its rendition");
        assert_eq!(play("cam_720p"), Err(Refusal::BadToken), "not a rendition");
        assert_eq!(
            play("other_360p"),
            Err(Refusal::BadToken),
            "another stream's"
        );
        assert_eq!(play("cam360p"), Err(Refusal::BadToken));
        // A publish token is never stretched that way.
        let p = sign(
            c.token_secret.as_bytes(),
            Action::Publish,
            "paid",
            "cam",
            1000,
        );
        let q = format!("cam_360p?token={p}&expires=1000");
        assert_eq!(
            auth.check_name(Action::Publish, "paid", &q, 999),
            Err(Refusal::BadToken)
        );
    }

    #[test]
    fn keys_file_is_read_and_reloaded_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("tributary-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, "# comment\nfilekey\nlive/onlylive\n").unwrap();
        let mut c = config();
        c.keys_file = path.to_string_lossy().into_owned();
        let auth = Auth::new(&c).unwrap();
        assert_eq!(
            auth.check_name(Action::Publish, "live", "filekey", 0),
            Ok(())
        );
        assert_eq!(
            auth.check_name(Action::Publish, "live", "onlylive", 0),
            Ok(())
        );
        assert_eq!(
            auth.check_name(Action::Publish, "other", "onlylive", 0),
            Err(Refusal::BadKey)
        );
        // A rewrite with a later mtime replaces the keys.
        std::fs::write(&path, "newkey\n").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(auth.reload(), Ok(true));
        assert_eq!(auth.reload(), Ok(false));
        assert_eq!(
            auth.check_name(Action::Publish, "live", "newkey", 0),
            Ok(())
        );
        assert_eq!(
            auth.check_name(Action::Publish, "live", "filekey", 0),
            Err(Refusal::BadKey)
        );
    }
}
