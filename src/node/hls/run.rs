//! A stream's packager task, on the shard that has the stream: a player of
//! the stream in the hub (its messages, payloads shared, through a
//! socketless `Conn`: nothing is encoded for it), feeding
//! the [`Packager`], waking waiting requests when the window changes, and
//! letting go when the stream ends or nobody asks for it.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::server::redact;

use super::super::context::ConnectionContext;
use super::super::hub::{PlayOutcome, Player};
use super::super::ring::conn::{Conn, Input, Notice};
use super::super::ring::Notify;
use super::packager::{Packager, Targets};
use super::{lock, Registry, Window};
use crate::stream::StreamKey;

/// A window stays this long after its stream ended, so players read the
/// end of the playlist.
const ENDED_GRACE: Duration = Duration::from_secs(10);
/// How often an idle packager checks whether anyone still asks.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The shard's LL-HLS state.
pub struct HlsShard {
    /// Node-wide: every shard's requests read the same windows.
    pub registry: Arc<Registry>,
    /// Wakes this shard's waiting requests.
    pub wake: Notify,
    pub targets: Targets,
    pub idle: Duration,
    pub shard: usize,
}

/// Starts packaging `key` on this shard, unless some shard already does;
/// returns the window either way. `live`: the stream is on this shard now;
/// otherwise the packager waits `wait` for it (its relay from another node).
pub fn start(
    key: &StreamKey,
    live: bool,
    wait: Duration,
    hls: &Rc<HlsShard>,
    ctx: &Rc<ConnectionContext>,
    id: u64,
) -> Option<Arc<Mutex<Window>>> {
    let now = Instant::now();
    let first = super::super::admission::unix_micros() / 1_000_000;
    let window = Arc::new(Mutex::new(Window::new(
        hls.targets.part_ms,
        hls.targets.segment_ms,
        first,
        now,
    )));
    if !hls.registry.insert(key, window.clone()) {
        if let Some(w) = hls.registry.get(key) {
            return Some(w);
        }
    }
    let (conn, queue) = Conn::detached(id);
    let player = Player::local(id, conn.clone());
    let outcome = ctx
        .hub
        .with(|h| h.start_player(key, player, live, wait, now));
    if let PlayOutcome::NotFound = outcome {
        hls.registry.remove(key, &window);
        return None;
    }
    ctx.stats.hls_windows.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(stream = %redact(key), "LL-HLS packaging");
    let task = run(
        key.clone(),
        conn,
        queue,
        Packager::new(hls.targets, window.clone()),
        hls.clone(),
        ctx.clone(),
    );
    glommio::spawn_local(task).detach();
    // Requests on any shard may be waiting for this window to exist.
    hls.wake.notify();
    ctx.hub.with(|h| h.hls_changed(u64::MAX));
    Some(window)
}

async fn run(
    key: StreamKey,
    conn: Rc<Conn>,
    queue: Rc<super::super::ring::conn::RingQueue>,
    mut packager: Packager,
    hls: Rc<HlsShard>,
    ctx: Rc<ConnectionContext>,
) {
    let window = packager.window().clone();
    let (mut version, mut parts, mut segments) = (0, 0, 0);
    let mut idle = false;
    let mut expired_at = Instant::now();
    loop {
        // Take what the hub queued (unscheduled first, so that anything
        // queued meanwhile notifies again).
        conn.unschedule();
        queue.dirty.borrow_mut().clear();
        while let Some(m) = conn.pop_message() {
            packager.push(&m);
        }
        let (now, watchers, last_request, built) = {
            let mut w = lock(&window);
            // Viewers that stopped asking give back their places (once a
            // check, at most).
            if expired_at.elapsed() >= IDLE_CHECK {
                expired_at = Instant::now();
                w.expire_sessions(expired_at, false);
            }
            (
                w.version,
                w.watchers,
                w.last_request,
                (w.parts_built, w.segments_built),
            )
        };
        if now != version {
            version = now;
            ctx.stats
                .hls_parts
                .fetch_add(built.0 - parts, Ordering::Relaxed);
            ctx.stats
                .hls_segments
                .fetch_add(built.1 - segments, Ordering::Relaxed);
            (parts, segments) = built;
            wake_all(&hls, &ctx, watchers);
        }
        if last_request.elapsed() > hls.idle {
            tracing::debug!(stream = %redact(&key), "LL-HLS: nobody asks any more");
            idle = true;
            break;
        }
        let input = futures_lite::future::or(
            async {
                queue.notify.wait().await;
                None
            },
            futures_lite::future::or(async { Some(conn.next_input().await) }, async {
                glommio::timer::sleep(IDLE_CHECK).await;
                None
            }),
        )
        .await;
        match input {
            None | Some(Input::Data(_)) => {}
            Some(Input::Notice(Notice::Ended { waiting: true, .. })) => {}
            Some(Input::Notice(Notice::Republished { stream_id })) => {
                // A new publisher: new timestamps, maybe a new
                // configuration; a discontinuity in the same playlist.
                packager.restart();
                ctx.hub.with(|h| h.resume(&key, conn.id, stream_id));
            }
            // The stream ended (or never came), the node stops, or the hub
            // cut the packager as a slow player.
            Some(_) => break,
        }
    }
    ctx.hub.with(|h| h.leave(conn.id));
    conn.close();
    ctx.stats.hls_windows.fetch_sub(1, Ordering::Relaxed);
    if !idle {
        // The stream ended: players read the end of the playlist for a
        // while (a playlist request for the key once it is live again, here
        // or in the cluster, starts a new window at once), then it goes.
        packager.finish();
        let watchers = std::mem::take(&mut lock(&window).watchers);
        wake_all(&hls, &ctx, watchers);
        glommio::timer::sleep(ENDED_GRACE).await;
    }
    hls.registry.remove(&key, &window);
    // Its viewers' places go with it (a request that names one of them
    // later starts over: authorized, and counted, again).
    lock(&window).expire_sessions(Instant::now(), true);
}

/// Wakes the requests waiting on a window: this shard's now, the others'
/// through the mesh.
fn wake_all(hls: &HlsShard, ctx: &ConnectionContext, watchers: u64) {
    hls.wake.notify();
    if watchers & !(1 << hls.shard.min(63)) != 0 {
        ctx.hub.with(|h| h.hls_changed(watchers));
    }
}
