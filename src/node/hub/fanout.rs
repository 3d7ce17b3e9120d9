//! The fan-out to a stream's local players: each message is encoded once
//! per wire form (RTMP chunks for a stream id and chunk size, or an FLV
//! tag for HTTP-FLV) and the same `Bytes` queued to every player, under the
//! slow-player rules.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::protocol::flv;
use crate::protocol::server::encode_for_player;
use crate::protocol::{MessageType, RawMessage};

use super::super::gop::{GopCache, Kind};
use super::super::ring::conn::{Conn, Notice};
use super::super::stats::ShardStats;
use super::HubConfig;

/// How a player's media is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RTMP chunks, on the player's stream id, at its chunk size.
    Rtmp,
    /// FLV tags (HTTP-FLV).
    Flv,
    /// The messages themselves, for a consumer on the shard (the LL-HLS
    /// packager): nothing is encoded.
    Local,
}

/// A player attached to a stream on this shard.
pub struct Player {
    pub conn: u64,
    /// The RTMP message stream it plays on.
    pub stream_id: u32,
    /// The connection's outgoing chunk size.
    pub chunk_size: u32,
    pub format: Format,
    pub out: Rc<Conn>,
    /// Dropping frames until the next keyframe (slow, or just joined a
    /// stream with no keyframe cached).
    pub(super) waiting_key: bool,
    /// When it started falling behind.
    behind_since: Option<Instant>,
}

impl Player {
    pub fn new(conn: u64, stream_id: u32, chunk_size: u32, out: Rc<Conn>) -> Self {
        Self {
            conn,
            stream_id,
            chunk_size,
            format: Format::Rtmp,
            out,
            waiting_key: false,
            behind_since: None,
        }
    }

    /// An HTTP-FLV viewer (one per connection, so its "stream id" is 1).
    pub fn flv(conn: u64, out: Rc<Conn>) -> Self {
        Self {
            format: Format::Flv,
            ..Self::new(conn, 1, 0, out)
        }
    }

    /// A consumer on the shard that takes the messages as they are, from a
    /// detached `Conn` (`Conn::pop_message`).
    pub fn local(conn: u64, out: Rc<Conn>) -> Self {
        Self {
            format: Format::Local,
            ..Self::new(conn, 1, 0, out)
        }
    }

    pub(super) fn is(&self, conn: u64, stream_id: u32) -> bool {
        self.conn == conn && self.stream_id == stream_id
    }
}

/// Encoded bytes per wire form (format, stream id, chunk size) for the
/// message in flight.
pub type Memo = Vec<((Format, u32, u32), Bytes)>;

/// Starts a player: what the cache holds (metadata, headers, last GOP from
/// its keyframe); live media follows.
pub fn attach(gop: &GopCache, players: &mut Vec<Player>, mut player: Player, memo: &mut Memo) {
    player.waiting_key = !gop.has_keyframe();
    for m in gop.snapshot() {
        memo.clear();
        send(&player, m, memo);
    }
    players.push(player);
}

fn encoded(player: &Player, m: &RawMessage, memo: &mut Memo) -> Bytes {
    let key = match player.format {
        Format::Rtmp => (Format::Rtmp, player.stream_id, player.chunk_size),
        Format::Flv | Format::Local => (player.format, 0, 0),
    };
    if let Some((_, b)) = memo.iter().find(|(k, _)| *k == key) {
        return b.clone();
    }
    let mut out = BytesMut::new();
    match player.format {
        Format::Rtmp => encode_for_player(&mut out, player.chunk_size, player.stream_id, m),
        // Nothing but media reaches players. An RTMP message's length fits
        // an FLV tag's (both 24 bits).
        Format::Flv => {
            if is_media(m) {
                out.reserve(flv::TAG_HEADER_LEN + m.payload.len() + 4);
                flv::write_tag(&mut out, m.type_id.0, m.timestamp, &m.payload);
            }
        }
        Format::Local => {}
    }
    let b = out.freeze();
    memo.push((key, b.clone()));
    b
}

/// Audio, video and AMF0 data (metadata): what FLV carries (with tag
/// types of the same numbers) and what the packager reads.
fn is_media(m: &RawMessage) -> bool {
    matches!(
        m.type_id,
        MessageType::AUDIO | MessageType::VIDEO | MessageType::DATA_AMF0
    )
}

/// Queues `m` for `player`. A video frame starts the shard's next send
/// round at once; audio and data may wait for it (up to
/// `players.send_coalesce_ms`), so that a player's audio leaves in the same
/// send as the next video frame instead of a packet of its own. A player
/// with a latency budget of 0 has every message sent at once; one with a
/// budget batches everything (`Conn::set_latency`). A local consumer gets
/// the message itself.
fn send(player: &Player, m: &RawMessage, memo: &mut Memo) {
    if player.format == Format::Local {
        if is_media(m) {
            player.out.push_message(m);
        }
        return;
    }
    let b = encoded(player, m, memo);
    if m.type_id == MessageType::VIDEO || player.out.is_immediate() {
        player.out.push_urgent(b);
    } else {
        player.out.push(b);
    }
}

/// Queues `m` to every player, encoded once per (stream id, chunk size).
/// A player whose queue would pass its byte limit drops frames up to the
/// next keyframe; one that stays behind past `max_lag_ms` is disconnected.
/// Players that leave the list (closed or cut) leave the players gauge.
pub fn fan_out(
    players: &mut Vec<Player>,
    m: &RawMessage,
    kind: Kind,
    config: &HubConfig,
    stats: &ShardStats,
    memo: &mut Memo,
    now: Instant,
) {
    memo.clear();
    let before = players.len();
    let mut sent = 0;
    players.retain_mut(|p| {
        if p.out.is_closed() {
            return false;
        }
        if p.waiting_key {
            if kind.keyframe && p.out.queued_bytes() + m.payload.len() <= config.queue_max_bytes {
                p.waiting_key = false;
                p.behind_since = None;
            } else if !kind.header {
                stats.add_dropped_frames_slow();
                if p.behind_since
                    .is_some_and(|t| now.duration_since(t).as_millis() as u64 > config.max_lag_ms)
                {
                    stats.add_disconnected_slow();
                    p.out.close();
                    return false;
                }
                return true;
            }
        } else if p.out.queued_bytes() + m.payload.len() > config.queue_max_bytes && !kind.header {
            p.waiting_key = true;
            p.behind_since.get_or_insert(now);
            stats.add_dropped_frames_slow();
            return true;
        }
        send(p, m, memo);
        sent += 1;
        true
    });
    stats.add_messages_out(sent);
    let left = (before - players.len()) as u64;
    if left > 0 {
        stats.players.fetch_sub(left, Ordering::Relaxed);
    }
}

/// The publisher is gone: each player is told (its connection writes
/// NetStream.Play.UnpublishNotify and StreamEOF). With `keep`, the players
/// are returned to wait for a re-publish; the others' connections close
/// once the notice is written.
pub fn end_players(players: Vec<Player>, keep: bool, stats: &ShardStats) -> Vec<Player> {
    let mut kept = Vec::new();
    for p in players {
        let told = p.out.notice(
            Notice::Ended {
                stream_id: p.stream_id,
                waiting: keep,
            },
            stats,
        );
        if keep && told && !p.out.is_closed() {
            kept.push(p);
        }
    }
    kept
}
