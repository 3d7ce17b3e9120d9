//! Recordings on the media listener, played by time range from the node
//! that holds them:
//!
//! - `GET /recordings/APP/KEY.mp4?start=RFC3339&duration=SECONDS` (or
//!   `&end=RFC3339`): one fragmented MP4 from the last keyframe at or before
//!   `start` to the end of the range, across segment files (as MediaMTX's
//!   playback server answers). It stops before a file whose timeline does
//!   not continue the one before (a new publish, a gap).
//! - `GET /recordings/APP/KEY/index.m3u8?start=...[&end=...]`: a VOD HLS
//!   playlist over the files (each keyframe run of fragments one media
//!   segment, a byte range of its file), so hls.js plays a recording. It
//!   spans every node's files of the range: a stream that moved between
//!   nodes (a failover, a takeover) is one playlist, with a discontinuity
//!   where it moved, each file's wall-clock start its
//!   `EXT-X-PROGRAM-DATE-TIME` (the gap shows).
//! - `GET /recordings/APP/KEY/START.mp4`: one segment file, with `Range`
//!   (206) for the playlist's byte ranges.
//!
//! A recording this node does not hold is fetched from the node that holds
//! it (the cluster's index names it; `cluster::control::recording`), its
//! answer relayed as it comes, and the connection closed after it.
//!
//! Every request follows the play rules (a token, the webhook), as a live
//! play does. Only files the node's [`Library`] lists are opened (the path
//! is built from the parsed stream name and a listed file name, never from
//! the URL), read-only, without following a symbolic link in its last
//! component (the directories under `record.path` are the operator's), through
//! glommio (the shard's io_uring). A body streams in chunks, each waiting
//! for room in the connection's queue.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{BufferedFile, OpenOptions};

use crate::container::record::{self, FileIndex, Piece};
use crate::node::admission::{self, Asker, Refusal};
use crate::node::context::ConnectionContext;
use crate::node::record::Library;
use crate::node::ring::conn::Conn;
use crate::protocol::server::redact;
use crate::stream::StreamKey;

use super::request::{head_with, refusal_failure, Failure, RecordingAsk};

/// A body is read and queued this many bytes at a time.
const CHUNK: usize = 256 * 1024;
/// Bytes queued on the connection past which the next chunk waits.
const QUEUE_LIMIT: usize = 2 * 1024 * 1024;

/// Who asks, and for what.
pub(super) struct RecordingRequest<'a> {
    pub(super) conn: &'a Rc<Conn>,
    pub(super) peer: SocketAddr,
    pub(super) key: StreamKey,
    pub(super) ask: RecordingAsk,
    pub(super) query: &'a str,
    pub(super) range: Option<&'a str>,
    pub(super) head_only: bool,
    pub(super) keep_alive: bool,
}

fn not_found(why: &str) -> Failure {
    Failure::new(404, "not_found", why.to_owned())
}

fn io_failure(e: std::io::Error) -> Failure {
    Failure::new(
        503,
        "limit",
        format!("the recording could not be read: {e}"),
    )
}

/// Serves one request; Err is the failure to answer (and close with).
pub(super) async fn serve_recording(
    r: RecordingRequest<'_>,
    library: Option<&Library>,
    ctx: &ConnectionContext,
    cors: &str,
) -> Result<(), Failure> {
    let asker = Asker {
        conn: r.conn.id,
        key: &r.key,
        query: r.query,
        peer: r.peer,
    };
    if let Err(refusal) = admission::authorize(crate::auth::Action::Play, &asker, ctx).await {
        if let Refusal::Auth { kind, .. } = &refusal {
            ctx.stats.add_auth_refused(kind);
        }
        tracing::info!(conn = r.conn.id, stream = %redact(&r.key), "recording play refused: {refusal}");
        return Err(refusal_failure(&refusal));
    }
    // A request with the internal credential is another node's fetch: it
    // is answered from this node's files only, never relayed again.
    let internal = crate::output::pipeline::is_internal(r.query);
    if let (RecordingAsk::Playlist { .. }, false) = (&r.ask, internal) {
        return merged_playlist(&r, library, ctx, cors).await;
    }
    let here = library.filter(|l| !l.list(&r.key).is_empty());
    let Some(library) = here else {
        return match internal {
            true => Err(not_found("no such recording on this node")),
            false => remote(&r, ctx, cors).await,
        };
    };
    match serve_local(&r, library, cors).await {
        // Not in this node's files: maybe in another node's (the stream was
        // published on several over time).
        Err(f) if f.status == 404 && !internal => remote(&r, ctx, cors).await.map_err(|_| f),
        other => other,
    }
}

/// Serves `r` from this node's files.
async fn serve_local(
    r: &RecordingRequest<'_>,
    library: &Library,
    cors: &str,
) -> Result<(), Failure> {
    match &r.ask {
        RecordingAsk::File(name) => serve_file(r, library, name, cors).await,
        RecordingAsk::Range { from_ms, to_ms } => {
            let pieces = plan(library, &r.key, *from_ms, *to_ms).await?;
            // One timeline: the MP4 stops at the first discontinuity.
            let end = pieces
                .iter()
                .skip(1)
                .position(|p| p.discontinuity)
                .map_or(pieces.len(), |i| i + 1);
            serve_range(r, library, &pieces[..end], cors).await
        }
        RecordingAsk::Playlist {
            from_ms,
            to_ms,
            open,
        } => {
            let (blocks, event) = local_blocks(library, &r.key, *from_ms, *to_ms, *open).await?;
            answer_playlist(r, &blocks, event, cors);
            Ok(())
        }
    }
}

/// This node's playlist blocks of the range. `open` (a range up to now)
/// while the stream's last file is still being written: an EVENT playlist
/// (the flag), without the last keyframe run of that file (it grows until
/// the next keyframe; a segment of an EVENT playlist never changes).
async fn local_blocks(
    library: &Library,
    key: &StreamKey,
    from_ms: u64,
    to_ms: u64,
    open: bool,
) -> Result<(Vec<record::PlaylistBlock>, bool), Failure> {
    let pieces = plan(library, key, from_ms, to_ms).await?;
    let mut blocks = record::playlist_blocks(&pieces);
    let writing = library
        .list(key)
        .last()
        .filter(|s| s.open)
        .map(|s| s.file.clone());
    let event = open && writing.is_some();
    if event {
        if let Some(last) = blocks
            .last_mut()
            .filter(|b| Some(&b.file) == writing.as_ref())
        {
            last.segments.pop();
        }
    }
    Ok((blocks, event))
}

/// Answers the playlist of `blocks` (`event`: EVENT, the recording goes
/// on), its URIs carrying the viewer's query.
fn answer_playlist(
    r: &RecordingRequest<'_>,
    blocks: &[record::PlaylistBlock],
    event: bool,
    cors: &str,
) {
    let rest: Vec<&str> = r.query.split('&').filter(|p| keep_in_uris(p)).collect();
    let body = record::render_vod_playlist(blocks, &rest.join("&"), event);
    let len = body.len().to_string();
    let head = head_with(
        200,
        &[
            ("Content-Type", "application/vnd.apple.mpegurl"),
            ("Cache-Control", "no-cache"),
            ("Content-Length", &len),
        ],
        cors,
        r.keep_alive,
    );
    r.conn.push_urgent(head.freeze());
    if !r.head_only {
        r.conn.push_urgent(Bytes::from(body));
    }
}

/// The longest playlist another node's answer may be.
const MAX_REMOTE_PLAYLIST: usize = 8 * 1024 * 1024;

/// A viewer's VOD playlist over every node's files of the range: this
/// node's, each live holder's (its playlist, asked through the cluster), and
/// with the object store those of nodes gone. A stream that moved between
/// nodes (a failover, a takeover) is one playlist, a discontinuity where
/// it moved. A holder out of reach leaves its part out (logged); nothing in
/// reach is a 404, or a 503 when a holder did not answer. A range up to now
/// of a stream being recorded (here, or on its owner, asked too: its open
/// file is in no index yet) is an EVENT playlist: the console's rewind of
/// a live stream plays on to the live edge.
async fn merged_playlist(
    r: &RecordingRequest<'_>,
    library: Option<&Library>,
    ctx: &ConnectionContext,
    cors: &str,
) -> Result<(), Failure> {
    let RecordingAsk::Playlist {
        from_ms,
        to_ms,
        open,
    } = r.ask
    else {
        return Err(not_found("not a playlist"));
    };
    let mut sources = Vec::new();
    let mut event = false;
    if let Some(l) = library.filter(|l| !l.list(&r.key).is_empty()) {
        match local_blocks(l, &r.key, from_ms, to_ms, open).await {
            Ok((blocks, e)) => {
                sources.push(blocks);
                event |= e;
            }
            Err(f) if f.status == 404 => {}
            Err(f) => return Err(f),
        }
    }
    let mut unanswered = None;
    if let Some(cluster) = ctx.cluster.as_ref() {
        let mut nodes = cluster.recordings(&r.key).await.unwrap_or_default();
        let me = cluster.node_id.as_ref();
        let owner = match open {
            true => match cluster.locate(&r.key).await {
                crate::cluster::Located::Remote(node) => Some(node),
                _ => None,
            },
            false => None,
        };
        if let Some(owner) = &owner {
            if !nodes.iter().any(|(n, _)| n == owner) {
                nodes.push((owner.clone(), Vec::new()));
            }
        }
        let live = live_nodes(ctx).await;
        for (node, files) in nodes.iter().filter(|(n, _)| n != me) {
            let files: Vec<&crate::cluster::IndexedFile> = files
                .iter()
                .filter(|f| overlaps(f, from_ms, to_ms))
                .collect();
            let owns = owner.as_ref() == Some(node);
            if files.is_empty() && !owns {
                continue;
            }
            let mut blocks = None;
            if live.contains(node) {
                // The owner is asked up to its now: an EVENT answer while it
                // records.
                let to = (!(open && owns)).then_some(to_ms);
                if let Some((b, e)) = remote_playlist(r, cluster, node, from_ms, to).await {
                    event |= e && owns;
                    blocks = Some(b);
                }
            }
            if files.is_empty() {
                // The owner's open file alone: nothing in the store yet.
                if let Some(b) = blocks {
                    sources.push(b);
                }
                continue;
            }
            if blocks.is_none() && cluster.store {
                blocks = match stored_view(r, cluster, node, &files).await {
                    Ok(view) => match plan(&view, &r.key, from_ms, to_ms).await {
                        Ok(pieces) => Some(record::playlist_blocks(&pieces)),
                        Err(_) => None,
                    },
                    Err(_) => None,
                };
            }
            match blocks {
                Some(b) => sources.push(b),
                None => {
                    tracing::info!(conn = r.conn.id, stream = %redact(&r.key), "recording playlist: node {node}'s part is out of reach, left out");
                    unanswered = Some(node.clone());
                }
            }
        }
    }
    let blocks = record::merge_playlists(sources);
    // A recording that has just begun has no whole keyframe run yet: an
    // EVENT playlist with no segment, which a player reloads.
    if blocks.is_empty() && !event {
        return Err(match unanswered {
            Some(node) => Failure::new(
                503,
                "limit",
                format!("node {node} holds the recording and does not answer"),
            ),
            None => not_found("no recording of the stream in that range"),
        });
    }
    answer_playlist(r, &blocks, event, cors);
    Ok(())
}

/// The blocks of `node`'s own playlist of the range, asked through the
/// cluster (the node answers from its own files only), up to `to_ms` or
/// (None) its now; whether it is an EVENT playlist. No blocks when it has
/// nothing of the range (404); None when it does not answer a playlist.
async fn remote_playlist(
    r: &RecordingRequest<'_>,
    cluster: &crate::cluster::ClusterHandle,
    node: &str,
    from_ms: u64,
    to_ms: Option<u64>,
) -> Option<(Vec<record::PlaylistBlock>, bool)> {
    let mut path = format!(
        "/recordings/{}/index.m3u8?start={}",
        url_path(&r.key),
        record::format_rfc3339(from_ms),
    );
    if let Some(to) = to_ms {
        path.push_str(&format!("&end={}", record::format_rfc3339(to)));
    }
    let mut chunks = cluster.fetch_recording(node, path, None).await?;
    let mut answer = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        if answer.len() + chunk.len() > MAX_REMOTE_PLAYLIST {
            return None;
        }
        answer.extend_from_slice(&chunk);
    }
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    // It answered, and holds nothing of the range (a file listed within
    // the second of slack, an owner that records nothing).
    if answer.starts_with(b"HTTP/1.1 404 ") {
        return Some((Vec::new(), false));
    }
    if !answer.starts_with(b"HTTP/1.1 200 ") {
        return None;
    }
    record::parse_vod_playlist(std::str::from_utf8(&answer[end + 4..]).ok()?)
}

/// Whether a query parameter goes into a playlist's URIs: the viewer's
/// own (a token), never the range nor the node's internal credential.
fn keep_in_uris(p: &str) -> bool {
    !p.is_empty()
        && !["start=", "end=", "duration="]
            .iter()
            .any(|n| p.starts_with(n))
        && p.split('=').next() != Some(crate::output::pipeline::INTERNAL_PARAM)
}

/// A stream name as a URL path (each byte outside the unreserved set and
/// `/` percent-encoded).
fn url_path(key: &StreamKey) -> String {
    let mut out = String::new();
    for b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(b) {
            out.push(*b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a listed file plays some of `[from, to)` (its listed duration
/// may lag the open file's end: a second of slack).
fn overlaps(f: &crate::cluster::IndexedFile, from: u64, to: u64) -> bool {
    f.start_ms < to && f.start_ms + f.duration_ms + 1000 > from
}

/// The nodes with a live heartbeat: only they can answer.
async fn live_nodes(ctx: &ConnectionContext) -> Vec<String> {
    let Some(cluster) = ctx.cluster.as_ref() else {
        return Vec::new();
    };
    cluster
        .nodes()
        .await
        .map(|n| n.into_iter().map(|n| n.node).collect())
        .unwrap_or_default()
}

/// The node of the cluster that holds what `r` asks for, and the path to
/// ask it (built from the parsed request, never the raw URL).
async fn holder(r: &RecordingRequest<'_>, ctx: &ConnectionContext) -> Option<(String, String)> {
    let cluster = ctx.cluster.as_ref()?;
    let nodes = cluster.recordings(&r.key).await.ok()?;
    let me = cluster.node_id.as_ref();
    let key = url_path(&r.key);
    let holds = |files: &[crate::cluster::IndexedFile], from: u64, to: u64| {
        files.iter().any(|f| overlaps(f, from, to))
    };
    let live = live_nodes(ctx).await;
    let others = nodes
        .into_iter()
        .filter(|(n, _)| n != me && live.contains(n));
    let range = |from: u64, to: u64| {
        format!(
            "start={}&end={}",
            record::format_rfc3339(from),
            record::format_rfc3339(to)
        )
    };
    match &r.ask {
        RecordingAsk::File(name) => others
            .into_iter()
            .find(|(_, files)| files.iter().any(|f| &f.file == name))
            .map(|(n, _)| (n, format!("/recordings/{key}/{name}"))),
        RecordingAsk::Range { from_ms, to_ms } => others
            .into_iter()
            .find(|(_, files)| holds(files, *from_ms, *to_ms))
            .map(|(n, _)| {
                (
                    n,
                    format!("/recordings/{key}.mp4?{}", range(*from_ms, *to_ms)),
                )
            }),
        RecordingAsk::Playlist { from_ms, to_ms, .. } => {
            // The playlist's URIs carry the viewer's query (its token), as
            // this node's own would.
            let rest: Vec<&str> = r.query.split('&').filter(|p| keep_in_uris(p)).collect();
            let mut q = range(*from_ms, *to_ms);
            for p in rest {
                q.push('&');
                q.push_str(p);
            }
            others
                .into_iter()
                .find(|(_, files)| holds(files, *from_ms, *to_ms))
                .map(|(n, _)| (n, format!("/recordings/{key}/index.m3u8?{q}")))
        }
    }
}

/// Relays the holding node's answer (its head included) and closes; when
/// no live node holds it (or the holder does not answer), serves it from
/// the object store.
async fn remote(
    r: &RecordingRequest<'_>,
    ctx: &ConnectionContext,
    cors: &str,
) -> Result<(), Failure> {
    let Some((node, path)) = holder(r, ctx).await else {
        return stored(r, ctx, cors).await;
    };
    let cluster = ctx
        .cluster
        .as_ref()
        .ok_or_else(|| not_found("no cluster"))?;
    let range = r.range.map(str::to_owned);
    let Some(mut chunks) = cluster.fetch_recording(&node, path, range).await else {
        return Err(Failure::new(503, "limit", "the cluster is not answering"));
    };
    let mut any = false;
    let mut head = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        if r.head_only {
            // A HEAD gets the head alone.
            head.extend_from_slice(&chunk);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                r.conn.push_urgent(Bytes::copy_from_slice(&head[..end + 4]));
                any = true;
                break;
            }
            continue;
        }
        r.conn.room(QUEUE_LIMIT).await;
        if r.conn.is_closed() {
            return Ok(());
        }
        any = true;
        r.conn.push_urgent(chunk);
    }
    if !any {
        let silent = Failure::new(
            503,
            "limit",
            format!("node {node} holds the recording and does not answer"),
        );
        return match ctx.cluster.as_ref().is_some_and(|c| c.store) {
            true => stored(r, ctx, cors).await.map_err(|_| silent),
            false => Err(silent),
        };
    }
    // The holder answered `Connection: close`: so does this node.
    r.conn.close();
    Ok(())
}

/// Serves `r` from another node's files in the object store
/// (`record.store = "nats"`): those the request needs are fetched into this
/// node's cache, then served as this node's own are.
async fn stored(
    r: &RecordingRequest<'_>,
    ctx: &ConnectionContext,
    cors: &str,
) -> Result<(), Failure> {
    let none = || not_found("no recording of the stream here or in the cluster");
    let cluster = ctx.cluster.as_ref().filter(|c| c.store).ok_or_else(none)?;
    let nodes = cluster.recordings(&r.key).await.map_err(|_| none())?;
    let me = cluster.node_id.as_ref();
    let wanted = |f: &crate::cluster::IndexedFile| match &r.ask {
        RecordingAsk::File(name) => &f.file == name,
        RecordingAsk::Range { from_ms, to_ms } | RecordingAsk::Playlist { from_ms, to_ms, .. } => {
            overlaps(f, *from_ms, *to_ms)
        }
    };
    for (node, files) in nodes.iter().filter(|(n, _)| n != me) {
        let files: Vec<&crate::cluster::IndexedFile> = files.iter().filter(|f| wanted(f)).collect();
        if files.is_empty() {
            continue;
        }
        let view = stored_view(r, cluster, node, &files).await?;
        return serve_local(r, &view, cors).await;
    }
    Err(none())
}

/// `node`'s `files` (at most [`crate::cluster::MAX_STORE_FETCH`]) fetched
/// from the object store into this node's cache, as a library to serve.
async fn stored_view(
    r: &RecordingRequest<'_>,
    cluster: &crate::cluster::ClusterHandle,
    node: &str,
    files: &[&crate::cluster::IndexedFile],
) -> Result<Library, Failure> {
    let files = &files[..files.len().min(crate::cluster::MAX_STORE_FETCH)];
    let names = files.iter().map(|f| f.file.clone()).collect();
    let root = match cluster.fetch_stored(&r.key, node, names).await {
        Ok(root) => root,
        Err(e) => {
            tracing::info!(conn = r.conn.id, stream = %redact(&r.key), "recording of node {node} not fetched from the object store: {e}");
            return Err(Failure::new(
                503,
                "limit",
                format!("node {node}'s recording is not in reach: {e}"),
            ));
        }
    };
    let infos = files
        .iter()
        .map(|f| record::SegmentInfo {
            file: f.file.clone(),
            start_ms: f.start_ms,
            duration_ms: f.duration_ms,
            bytes: f.bytes,
            open: false,
        })
        .collect();
    Ok(Library::view(root, r.key.clone(), infos))
}

/// Opens a listed file read-only, never through a symbolic link.
async fn open(library: &Library, key: &StreamKey, file: &str) -> Result<BufferedFile, Failure> {
    let path = library
        .path_of(key, file)
        .ok_or_else(|| not_found("no such recording"))?;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .buffered_open(&path)
        .await
        .map_err(|e| match crate::node::record::io_error(e) {
            e if e.kind() == std::io::ErrorKind::NotFound => not_found("no such recording"),
            e => io_failure(e),
        })
}

async fn read(file: &BufferedFile, at: u64, len: usize) -> Option<Vec<u8>> {
    file.read_at(at, len).await.ok().map(|r| r.to_vec())
}

/// A listed file's index (read through the shard's io_uring).
async fn index(library: &Library, key: &StreamKey, file: &str) -> Result<FileIndex, Failure> {
    let f = open(library, key, file).await?;
    let len = f
        .file_size()
        .await
        .map_err(|e| io_failure(crate::node::record::io_error(e)))?;
    let index = record::scan(len, |at, n| read(&f, at, n)).await;
    let _ = f.close().await;
    index.ok_or_else(|| not_found("the recording holds nothing playable"))
}

/// The pieces of `key`'s files that play `[from_ms, to_ms)`.
async fn plan(
    library: &Library,
    key: &StreamKey,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<Piece>, Failure> {
    let mut files = Vec::new();
    for s in library.list(key) {
        // A file's listed duration may lag the open one's end: a second of
        // slack.
        let ends = s.start_ms + s.duration_ms + 1000;
        if s.start_ms >= to_ms || ends <= from_ms {
            continue;
        }
        files.push((
            s.start_ms,
            s.file.clone(),
            index(library, key, &s.file).await?,
        ));
    }
    let pieces = record::plan(&files, from_ms, to_ms);
    if pieces.is_empty() {
        return Err(not_found("no recording of the stream in that range"));
    }
    Ok(pieces)
}

/// Queues `len` bytes of `file` from `at`, a chunk at a time.
async fn stream(conn: &Conn, file: &BufferedFile, mut at: u64, mut len: u64) -> Result<(), ()> {
    while len > 0 {
        conn.room(QUEUE_LIMIT).await;
        if conn.is_closed() {
            return Err(());
        }
        let n = len.min(CHUNK as u64) as usize;
        let chunk = read(file, at, n).await.ok_or(())?;
        if chunk.is_empty() {
            return Err(());
        }
        at += chunk.len() as u64;
        len -= chunk.len() as u64;
        conn.push_urgent(Bytes::from(chunk));
    }
    Ok(())
}

/// One MP4: the first piece's init, then every piece's fragments.
async fn serve_range(
    r: &RecordingRequest<'_>,
    library: &Library,
    pieces: &[Piece],
    cors: &str,
) -> Result<(), Failure> {
    let init_len = pieces.first().map_or(0, |p| p.init_len);
    let body: u64 = init_len
        + pieces
            .iter()
            .flat_map(|p| &p.fragments)
            .map(|f| f.len)
            .sum::<u64>();
    let len = body.to_string();
    let head = head_with(
        200,
        &[
            ("Content-Type", "video/mp4"),
            ("Cache-Control", "no-cache"),
            ("Content-Length", &len),
        ],
        cors,
        r.keep_alive,
    );
    r.conn.push_urgent(head.freeze());
    if r.head_only {
        return Ok(());
    }
    for (i, p) in pieces.iter().enumerate() {
        let f = match open(library, &r.key, &p.file).await {
            Ok(f) => f,
            // The head is out: all that is left is to end the connection.
            Err(_) => {
                r.conn.close();
                return Ok(());
            }
        };
        let mut sent = if i == 0 {
            stream(r.conn, &f, 0, p.init_len).await
        } else {
            Ok(())
        };
        for fr in &p.fragments {
            if sent.is_err() {
                break;
            }
            sent = stream(r.conn, &f, fr.offset, fr.len).await;
        }
        let _ = f.close().await;
        if sent.is_err() {
            r.conn.close();
            return Ok(());
        }
    }
    Ok(())
}

/// A single byte range of a file of `size` bytes (RFC 9110): `bytes=A-B`,
/// `bytes=A-` or `bytes=-N`. Ok(None): no Range; Err: not satisfiable.
pub(super) fn byte_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = header else {
        return Ok(None);
    };
    let spec = h.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let num = |s: &str| -> Result<u64, ()> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(());
        }
        s.parse().map_err(|_| ())
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n = num(n)?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (a, "") => (num(a)?, size.saturating_sub(1)),
        (a, b) => (num(a)?, num(b)?.min(size.saturating_sub(1))),
    };
    if size == 0 || start >= size || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn serve_file(
    r: &RecordingRequest<'_>,
    library: &Library,
    name: &str,
    cors: &str,
) -> Result<(), Failure> {
    let f = open(library, &r.key, name).await?;
    let size = f
        .file_size()
        .await
        .map_err(|e| io_failure(crate::node::record::io_error(e)))?;
    let (status, start, len, range) = match byte_range(r.range, size) {
        Ok(None) => (200, 0, size, None),
        Ok(Some((a, b))) => (206, a, b - a + 1, Some(format!("bytes {a}-{b}/{size}"))),
        Err(()) => {
            let _ = f.close().await;
            let head = head_with(
                416,
                &[
                    ("Content-Range", &format!("bytes */{size}")),
                    ("Content-Length", "0"),
                ],
                cors,
                r.keep_alive,
            );
            r.conn.push_urgent(head.freeze());
            return Ok(());
        }
    };
    let length = len.to_string();
    let mut headers = vec![
        ("Content-Type", "video/mp4"),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", "no-cache"),
        ("Content-Length", length.as_str()),
    ];
    if let Some(range) = &range {
        headers.push(("Content-Range", range.as_str()));
    }
    r.conn
        .push_urgent(head_with(status, &headers, cors, r.keep_alive).freeze());
    if !r.head_only && stream(r.conn, &f, start, len).await.is_err() {
        r.conn.close();
    }
    let _ = f.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn playlist_uris_keep_the_viewers_query_and_never_the_credential() {
        assert!(super::keep_in_uris("token=abc"));
        for p in ["", "start=x", "end=y", "duration=3", "tributary_internal=s"] {
            assert!(!super::keep_in_uris(p), "{p}");
        }
    }

    #[test]
    fn byte_ranges_are_read_as_rfc_9110_says_and_bad_ones_refused() {
        assert_eq!(byte_range(None, 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(byte_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=-500"), 100), Ok(Some((0, 99))));
        assert_eq!(byte_range(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        for bad in [
            "bytes=100-",
            "bytes=9-0",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=-0",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(byte_range(Some(bad), 100), Err(()), "{bad}");
        }
        assert_eq!(byte_range(Some("bytes=0-"), 0), Err(()));
    }
}
