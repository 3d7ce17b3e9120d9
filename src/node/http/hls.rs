//! LL-HLS requests: a viewer's playlists (its first through the play rules
//! and the webhook, naming its session; its reloads blocking until the
//! part they ask for), and the init segments, segments and parts beside
//! them, from the stream's window in memory.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::protocol::server::redact;
use crate::stream::Protocol;

use crate::node::admission::{self, Asker, Refusal};
use crate::node::context::ConnectionContext;
use crate::node::hls::run::HlsShard;
use crate::node::hls::{self, lock, session, Block, Ready, Resource};
use crate::node::ring::conn::Conn;
use crate::node::ring::SocketRing;
use crate::stream::StreamKey;

use super::request::{head_with, refusal_failure, Failure};
use super::HttpContext;

/// Who asks for an LL-HLS resource.
pub(super) struct HlsAsk<'a> {
    pub(super) conn: &'a Rc<Conn>,
    pub(super) peer: SocketAddr,
    pub(super) key: StreamKey,
    pub(super) query: &'a str,
}

impl HlsAsk<'_> {
    /// The asker as admission reads it: the key and the request's query.
    pub(super) fn asker(&self) -> Asker<'_> {
        Asker {
            conn: self.conn.id,
            key: &self.key,
            query: self.query,
            peer: self.peer,
        }
    }
}

/// An LL-HLS answer: its content type, caching, and body (shared `Bytes`).
pub(super) struct Answer {
    pub(super) content_type: &'static str,
    pub(super) cache: &'static str,
    pub(super) body: Vec<Bytes>,
}

impl Answer {
    /// An init segment, segment or part.
    pub(super) fn media(body: Vec<Bytes>, cache: &'static str) -> Self {
        Self {
            content_type: "video/mp4",
            cache,
            body,
        }
    }

    pub(super) fn send(self, conn: &Conn, head_only: bool, cors: &str, keep_alive: bool) {
        let len = self.body.iter().map(Bytes::len).sum::<usize>().to_string();
        let head = head_with(
            200,
            &[
                ("Content-Type", self.content_type),
                ("Cache-Control", self.cache),
                ("Content-Length", &len),
            ],
            cors,
            keep_alive,
        );
        conn.push_urgent(head.freeze());
        if !head_only {
            for b in self.body {
                conn.push_urgent(b);
            }
        }
    }
}

/// The `_HLS_msn` / `_HLS_part` a playlist request blocks on, and the rest
/// of its query (for the URIs in the playlist).
pub(super) fn blocking(query: &str) -> Result<(Option<Block>, String), Failure> {
    let bad = |what| Failure::new(400, "bad_request", format!("bad {what}"));
    let (mut msn, mut part, mut rest) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("_HLS_msn", v)) => msn = Some(v.parse::<u64>().map_err(|_| bad("_HLS_msn"))?),
            Some(("_HLS_part", v)) => {
                part = Some(v.parse::<usize>().map_err(|_| bad("_HLS_part"))?)
            }
            Some(("_HLS_skip", _)) => {}
            _ => rest.push(pair),
        }
    }
    let block = match (msn, part) {
        (Some(msn), part) => Some(Block { msn, part }),
        (None, None) => None,
        (None, Some(_)) => return Err(bad("_HLS_part without _HLS_msn")),
    };
    Ok((block, rest.join("&")))
}

/// How long a request may wait for what it names (a blocking playlist
/// reload, the hinted part, the segment being built): three target
/// durations, the RFC's limit.
pub(super) fn wait_limit(window: &std::sync::Mutex<hls::Window>) -> Duration {
    Duration::from_secs(3 * lock(window).target_duration as u64)
}

pub(super) const FIRST_PLAYLIST_WAIT: Duration = Duration::from_secs(12);

/// Waits until `ready` gives an answer or `deadline` passes; `ready`
/// marks this shard as waiting on the window when it is not ready yet.
pub(super) async fn wait_for<T>(
    hls: &HlsShard,
    deadline: Instant,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        let seen = hls.wake.epoch();
        if let Some(t) = ready() {
            return Some(t);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        futures_lite::future::or(hls.wake.changed(seen), async {
            glommio::timer::sleep(deadline - now).await;
        })
        .await;
    }
}

/// The stream's window on this node, its packaging started (here, or on
/// the shard that has the stream) if it is not yet.
pub(super) async fn window_of(
    who: &HlsAsk<'_>,
    ctx: &Rc<ConnectionContext>,
    http: &HttpContext,
    ring: &SocketRing,
) -> Result<std::sync::Arc<std::sync::Mutex<hls::Window>>, Failure> {
    let hls = &http.hls;
    let asker = who.asker();
    let key = asker.key();
    let not_found = || Failure::new(404, "not_found", "no such stream");
    if let Some(w) = hls.registry.get(&key) {
        if !lock(&w).ended {
            return Ok(w);
        }
        // Its stream ended. If the key is live again (here or anywhere in
        // the cluster), a new window starts now rather than after the old
        // one's grace; otherwise players read its end.
        match admission::locate(&asker, ctx).await {
            Ok((_, live, _)) if live || ctx.cluster.is_some() => {
                hls.registry.remove(&key, &w);
                // Its viewers give back their places now: their next
                // requests are admitted to the new window.
                lock(&w).expire_sessions(Instant::now(), true);
            }
            _ => return Ok(w),
        }
    }
    // Twice at most: a stream that became live here while `locate` asked
    // (published here, or relayed here for another viewer) has an owner
    // on the second look.
    for first in [true, false] {
        let owner = ctx.hub.read(|h| h.owner(&key));
        match owner {
            Some(o) if o != hls.shard => {
                // That shard packages it; this one waits for the window.
                ctx.hub.with(|h| h.ask_to_package(o, key.clone()));
                let deadline = Instant::now() + FIRST_PLAYLIST_WAIT;
                return wait_for(hls, deadline, || hls.registry.get(&key))
                    .await
                    .ok_or_else(not_found);
            }
            Some(_) => {
                return hls::run::start(&key, true, Duration::ZERO, hls, ctx, ring.new_id())
                    .ok_or_else(not_found)
            }
            None => {
                let (key, live, wait) = admission::locate(&asker, ctx)
                    .await
                    .map_err(|r| refusal_failure(&r))?;
                if !live {
                    return hls::run::start(&key, false, wait, hls, ctx, ring.new_id())
                        .ok_or_else(not_found);
                }
                if !first {
                    break;
                }
            }
        }
    }
    Err(Failure::new(503, "limit", "the stream is starting; retry"))
}

/// Answers one LL-HLS request. A viewer's first playlist request goes
/// through the play rules (and the webhook) and gets a multivariant
/// playlist naming its session; its reloads name the session, which keeps
/// its place among the stream's viewers ([`hls::session`]). Its parts and
/// segments have URIs every viewer shares.
pub(super) async fn serve_hls(
    who: &HlsAsk<'_>,
    resource: Resource,
    given: &mut Option<session::Given>,
    ctx: &Rc<ConnectionContext>,
    http: &HttpContext,
    ring: &SocketRing,
) -> Result<Answer, Failure> {
    let hls = &http.hls;
    let asker = who.asker();
    let refused = |refusal: Refusal| {
        if let Refusal::Auth { kind, .. } = &refusal {
            ctx.stats.add_auth_refused(kind);
        }
        tracing::info!(conn = who.conn.id, stream = %redact(&who.key), "hls play refused: {refusal}");
        refusal_failure(&refusal)
    };
    let (block, query) = match resource {
        Resource::Playlist => blocking(who.query)?,
        _ => (None, String::new()),
    };
    // The viewer's session, and the rest of the query (what the media URIs
    // carry: the token, say).
    let (named, query) = session::split(&query);
    let peer = who.peer.ip();
    // A session to admit once the answer is ready.
    let mut admit: Option<(String, session::Session)> = None;
    // The multivariant playlist's query (with the session), when this
    // request is a viewer's first.
    let mut multivariant: Option<String> = None;
    let window = match resource {
        // A playlist goes through the play rules and the webhook (once per
        // viewer), and starts the packaging; the media it lists through
        // the rules only.
        Resource::Playlist => {
            let asker = Asker {
                query: &query,
                ..asker
            };
            let key = asker.key();
            let now = Instant::now();
            // A first request on a connection that was given a session
            // for this stream and query gets that session again.
            let again = given
                .as_ref()
                .filter(|g| named.is_none() && g.key == key && g.query == query)
                .map(|g| g.id.clone());
            let id = named.map(str::to_owned).or(again);
            let known = id.as_deref().is_some_and(|id| {
                hls.registry
                    .get(&key)
                    .is_some_and(|w| lock(&w).touch(id, peer, now))
            });
            if !known {
                admission::authorize(crate::auth::Action::Play, &asker, ctx)
                    .await
                    .map_err(refused)?;
            }
            let window = window_of(who, ctx, http, ring).await?;
            let id = match id {
                Some(id) => id,
                None => session::new_id()
                    .ok_or_else(|| Failure::new(503, "limit", "no random source for a session"))?,
            };
            if !known {
                let place = ctx
                    .gate
                    .player(&key, Protocol::LlHls)
                    .map_err(|_| refused(Refusal::PlayerLimit))?;
                let viewer = session::viewer(place, ctx.stats.clone(), peer, now);
                admit = Some((id.clone(), viewer));
            }
            if named.is_none() {
                // Without sessions in URLs, the connection's own session
                // (`given`) is the viewer, and the playlist comes at once.
                if http.hls_sessions {
                    multivariant = Some(session::with(&query, &id));
                }
                *given = Some(session::Given {
                    key,
                    query: query.clone(),
                    id,
                });
            }
            window
        }
        _ => {
            let secs = admission::unix_micros() / 1_000_000;
            if let Err(r) = ctx
                .auth
                .check(crate::auth::Action::Play, &who.key, who.query, secs)
            {
                return Err(refused(Refusal::Auth {
                    reason: r.to_string(),
                    kind: r.kind(),
                }));
            }
            hls.registry
                .get(&asker.key())
                .ok_or_else(|| Failure::new(404, "not_found", "no such stream"))?
        }
    };
    // A viewer's first request: the stream's live renditions are its
    // other variants (their windows start packaging now).
    let mut renditions = Vec::new();
    if multivariant.is_some() {
        renditions = rendition_windows(who, ctx, http, ring).await;
    }
    let text = match resource {
        Resource::Playlist => {
            let variants = multivariant.as_deref().map(|q| (q, &renditions[..]));
            playlist_text(hls, &window, block, variants, &query).await?
        }
        _ => return media(hls, &window, resource).await,
    };
    // Answered: the viewer's session takes its place, pending from now
    // (the first answer may have waited for a segment).
    if let Some((id, mut viewer)) = admit {
        viewer.last_seen = Instant::now();
        if !lock(&window).admit(id, viewer) {
            return Err(refused(Refusal::PlayerLimit));
        }
    }
    Ok(Answer {
        content_type: "application/vnd.apple.mpegurl",
        cache: "no-cache",
        body: vec![Bytes::from(text)],
    })
}

fn gone() -> Failure {
    Failure::new(404, "not_found", "not in the playlist's window")
}

fn timeout() -> Failure {
    Failure::new(503, "limit", "not ready in time")
}

/// A rendition's media playlist URI (relative to its stream's) and window.
type Rendition = (String, std::sync::Arc<std::sync::Mutex<hls::Window>>);

/// The windows of `who`'s renditions that are live (on this node or in the
/// cluster), each with its media playlist's URI relative to the stream's:
/// `../NAME_PIPELINE/index.m3u8`.
async fn rendition_windows(
    who: &HlsAsk<'_>,
    ctx: &Rc<ConnectionContext>,
    http: &HttpContext,
    ring: &SocketRing,
) -> Vec<Rendition> {
    let mut out = Vec::new();
    let Some(names) = http.renditions.get(who.key.app()) else {
        return out;
    };
    let last = who.key.name().rsplit('/').next().unwrap_or("");
    for pipeline in names {
        let name = crate::output::pipeline::rendition_name(who.key.name(), pipeline);
        let Ok(key) = StreamKey::new(who.key.app(), &name) else {
            continue;
        };
        let ask = HlsAsk {
            key: key.clone(),
            ..*who
        };
        // Live here or on another node: never a play that would wait.
        let live = ctx.hub.read(|h| h.is_live(&key))
            || match &ctx.cluster {
                Some(cluster) => matches!(
                    cluster.locate(&key).await,
                    crate::cluster::Located::Remote(_)
                ),
                None => false,
            };
        if !live {
            continue;
        }
        if let Ok(w) = window_of(&ask, ctx, http, ring).await {
            let uri = format!(
                "../{}/index.m3u8",
                crate::output::pipeline::rendition_name(last, pipeline)
            );
            out.push((uri, w));
        }
    }
    out
}

/// A playlist once the window can answer `block` (at once without one):
/// for a viewer's first request, the multivariant playlist with its query
/// (`variants.0`), listing the stream and its renditions (`variants.1`);
/// else the media playlist with `query`.
async fn playlist_text(
    hls: &HlsShard,
    window: &std::sync::Mutex<hls::Window>,
    block: Option<Block>,
    variants: Option<(&str, &[Rendition])>,
    query: &str,
) -> Result<String, Failure> {
    let me = 1u64 << hls.shard.min(63);
    let limit = match block {
        Some(_) => wait_limit(window),
        None => FIRST_PLAYLIST_WAIT,
    };
    wait_for(hls, Instant::now() + limit, || {
        let mut w = lock(window);
        w.last_request = Instant::now();
        match w.ready(block) {
            Ready::Now => Some(Ok(match variants {
                Some((q, renditions)) => {
                    let mut list = vec![w.variant(format!("index.m3u8?{q}"))];
                    drop(w);
                    for (uri, r) in renditions {
                        list.push(lock(r).variant(format!("{uri}?{q}")));
                    }
                    hls::multivariant_playlist(&list)
                }
                None => w.playlist(query),
            })),
            Ready::TooFar => Some(Err(Failure::new(
                400,
                "bad_request",
                "_HLS_msn is more than two segments past the live edge",
            ))),
            Ready::Wait => {
                w.watchers |= me;
                None
            }
        }
    })
    .await
    .ok_or_else(timeout)?
}

/// An init segment, a segment or a part of the window; a segment being
/// built, or the part the playlist hints at, is waited for.
async fn media(
    hls: &HlsShard,
    window: &std::sync::Mutex<hls::Window>,
    resource: Resource,
) -> Result<Answer, Failure> {
    let me = 1u64 << hls.shard.min(63);
    match resource {
        // Playlists are answered by `playlist_text`, never here.
        Resource::Playlist => Err(gone()),
        Resource::Init(generation) => {
            let init = lock(window).init_segment(generation).ok_or_else(gone)?;
            Ok(Answer::media(vec![init], "max-age=3600"))
        }
        Resource::Segment(msn) => {
            let body = wait_for(hls, Instant::now() + wait_limit(window), || {
                let mut w = lock(window);
                w.last_request = Instant::now();
                match w.segment(msn) {
                    Some(s) if s.complete => Some(Ok(s
                        .parts
                        .iter()
                        .flat_map(|p| p.bytes.iter().cloned())
                        .collect::<Vec<_>>())),
                    // The segment being built: it will be complete soon.
                    Some(_) if !w.ended => {
                        w.watchers |= me;
                        None
                    }
                    _ => Some(Err(gone())),
                }
            })
            .await
            .ok_or_else(timeout)??;
            Ok(Answer::media(body, "max-age=60"))
        }
        Resource::Part(msn, n) => {
            let body = wait_for(hls, Instant::now() + wait_limit(window), || {
                let mut w = lock(window);
                w.last_request = Instant::now();
                let next = w.segments.back().map_or((0, 0), |s| {
                    if s.complete {
                        (s.msn + 1, 0)
                    } else {
                        (s.msn, s.parts.len())
                    }
                });
                match w.segment(msn).and_then(|s| s.parts.get(n)) {
                    Some(p) => Some(Ok(p.bytes.clone())),
                    // The part the playlist hints at: wait for it.
                    None if (msn, n) == next && !w.ended => {
                        w.watchers |= me;
                        None
                    }
                    None => Some(Err(gone())),
                }
            })
            .await
            .ok_or_else(timeout)??;
            Ok(Answer::media(body, "max-age=60"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_directives_are_read_and_left_out_of_the_uris() {
        assert_eq!(blocking("").unwrap(), (None, String::new()));
        let (block, rest) = blocking("token=t&_HLS_msn=5&_HLS_part=2&_HLS_skip=YES").unwrap();
        assert_eq!(
            block,
            Some(Block {
                msn: 5,
                part: Some(2)
            })
        );
        assert_eq!(rest, "token=t");
        assert_eq!(
            blocking("_HLS_msn=7").unwrap().0,
            Some(Block { msn: 7, part: None })
        );
        assert_eq!(blocking("_HLS_part=1").unwrap_err().status, 400);
        assert_eq!(blocking("_HLS_msn=x").unwrap_err().status, 400);
    }
}
