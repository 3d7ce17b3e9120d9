//! HTTP-FLV: `GET /APP/NAME.flv` admitted as a play and attached to the
//! hub as a player whose messages are FLV tags, encoded once per message
//! and shared by every HTTP-FLV viewer of the shard.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::protocol::flv::{write_header, FlvHeader};
use crate::protocol::server::redact;
use crate::stream::Protocol;

use crate::node::admission::{self, Asker, Refusal};
use crate::node::context::ConnectionContext;
use crate::node::gate::Ticket;
use crate::node::hub::{PlayOutcome, Player};
use crate::node::ring::conn::Conn;
use crate::stream::StreamKey;

use super::request::{refusal_failure, response_head, Failure};

/// An HTTP-FLV viewer being served.
pub(super) struct Viewer {
    pub(super) key: StreamKey,
    pub(super) _place: Ticket,
}

/// Admits an HTTP-FLV play and attaches the viewer; None for a HEAD (the
/// headers are all it gets).
pub(super) async fn start_flv(
    conn: &Rc<Conn>,
    peer: SocketAddr,
    key: &StreamKey,
    query: &str,
    head_only: bool,
    ctx: &ConnectionContext,
    cors: &str,
) -> Result<Option<Viewer>, Failure> {
    let who = Asker {
        conn: conn.id,
        key,
        query,
        peer,
    };
    let admitted = match admission::play(&who, Protocol::HttpFlv, ctx).await {
        Ok(p) => p,
        Err(refusal) => {
            if let Refusal::Auth { kind, .. } = &refusal {
                ctx.stats.add_auth_refused(kind);
            }
            tracing::info!(conn = conn.id, stream = %redact(key), "http-flv play refused: {refusal}");
            return Err(refusal_failure(&refusal));
        }
    };
    let (has_audio, has_video) = ctx
        .hub
        .read(|h| h.tracks(&admitted.key))
        .unwrap_or((true, true));
    let mut out = response_head(
        200,
        &[
            ("Content-Type", "video/x-flv"),
            ("Cache-Control", "no-cache, no-store"),
        ],
        cors,
    );
    if head_only {
        conn.push_urgent(out.freeze());
        return Ok(None);
    }
    write_header(
        &mut out,
        FlvHeader {
            has_audio,
            has_video,
        },
    );
    // The head and the FLV header leave before the cached media the hub
    // queues behind them.
    conn.push_urgent(out.freeze());
    conn.set_read_only_peer();
    let player = Player::flv(conn.id, conn.clone());
    let key = admitted.key;
    conn.set_latency(ctx.players.latency(key.app()));
    let (live, wait, now) = (admitted.live, admitted.wait, Instant::now());
    let outcome = ctx
        .hub
        .with(|h| h.start_player(&key, player, live, wait, now));
    if let PlayOutcome::NotFound = outcome {
        // It ended between the check and now: an empty body.
        return Ok(None);
    }
    ctx.stats.flv_viewers.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(conn = conn.id, stream = %redact(&key), "http-flv viewer");
    Ok(Some(Viewer {
        key,
        _place: admitted.place,
    }))
}
