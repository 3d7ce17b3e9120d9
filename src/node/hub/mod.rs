//! One shard's stream hub, as a deterministic core like `ServerSession`:
//! the streams this shard owns (their publisher is here, or it relays them
//! from another node of the cluster), the streams it relays from other
//! shards for local players, the players waiting for a stream, and the
//! fan-out.
//!
//! It takes events (publish, play, leave, a publisher's message, a message
//! from another shard, a cluster command, a tick), each with `now`. It does
//! no I/O and reads no clock: what it asks of other shards and of the
//! cluster waits in its [`Outbox`] for the shard's pumps (`node::pump`),
//! media goes into players' output queues (`Conn`), and what a player's
//! session must hear (the stream ended, came back, was never found) goes to
//! its connection as a [`Notice`]: only a connection touches its session.
//!
//! Shard-local (`Rc`), never shared. Streams are found by key on the rare
//! paths (publish, play) and by [`StreamId`] per message: no string is
//! hashed per message.
//!
//! The publish, play, wait and leave lifecycle is one `impl`, because each step keeps the gauges and the waiting list consistent
//! with the others; the traffic with other shards and the cluster is
//! `relay.rs`, the fan-out `fanout.rs`, the slab `streams.rs`.

mod fanout;
mod mesh;
mod outbox;
mod relay;
mod streams;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Export, Request};
use crate::protocol::RawMessage;

use super::directory::{Claim, Directory};
use super::ring::conn::{Conn, Notice};
use super::stats::ShardStats;
use crate::stream::StreamKey;
pub use mesh::ShardMsg;

pub use fanout::Player;
use fanout::{attach, end_players, fan_out, Memo};
pub use outbox::Outbox;
pub use streams::StreamId;
use streams::{Stream, Streams};

/// The "publisher" of a stream this shard relays from another node.
pub const RELAY_CONN: u64 = u64::MAX;

/// A relay from another node that nobody watches is kept this long (a
/// player reconnecting, other shards subscribing) before it is released.
const RELAY_IDLE_GRACE: Duration = Duration::from_secs(2);

/// How long a play of a stream found on another node waits for the relay
/// to start, when `play_unknown` does not say to wait longer.
pub const RELAY_START_WAIT: Duration = Duration::from_secs(5);

/// How long players of a taken-over stream wait for the new publisher when
/// no unpublish wait is configured.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// How often a shard tells the cluster what its streams carry.
const STREAM_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Settings the hub applies.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub gop_cache_max_bytes: usize,
    pub queue_max_bytes: usize,
    pub max_lag_ms: u64,
    /// `on_unpublish = "wait"`: how long players wait for a re-publish.
    pub unpublish_wait: Option<Duration>,
    /// `play_unknown = "wait"`: how long a play waits for its stream.
    pub play_wait: Option<Duration>,
    /// `duplicate_publish = "takeover"`.
    pub takeover: bool,
}

/// A player parked until its stream is published (again).
struct Waiting {
    player: Player,
    deadline: Instant,
    /// It was playing when the publisher left: its session hears
    /// PublishNotify when the stream comes back; otherwise StreamNotFound
    /// if it never does.
    resumed: bool,
    /// Told the stream is back; attached once its connection has written
    /// the notice ([`Hub::resume`]), so that media follows it.
    notified: bool,
}

pub enum PlayOutcome {
    Attached,
    /// Relayed from another shard, or waiting for the stream: media follows.
    Subscribing,
    NotFound,
}

pub struct Hub {
    shard: usize,
    shards: usize,
    config: HubConfig,
    directory: Arc<Directory>,
    /// The node is in a cluster: requests go to the control thread.
    clustered: bool,
    streams: Streams,
    waiting: HashMap<StreamKey, Vec<Waiting>>,
    stats: Arc<ShardStats>,
    memo: Memo,
    out: Outbox,
    /// When local streams were last reported to the cluster.
    reported: Instant,
}

impl Hub {
    pub fn new(
        shard: usize,
        shards: usize,
        config: HubConfig,
        directory: Arc<Directory>,
        stats: Arc<ShardStats>,
        clustered: bool,
        now: Instant,
    ) -> Self {
        Self {
            shard,
            shards,
            config,
            directory,
            clustered,
            streams: Streams::default(),
            waiting: HashMap::new(),
            stats,
            memo: Vec::with_capacity(2),
            out: Outbox::new(shards),
            reported: now,
        }
    }

    pub fn takeover(&self) -> bool {
        self.config.takeover
    }

    /// With `play_unknown = "wait"`: how long a play may wait for its stream.
    pub fn play_wait(&self) -> Option<Duration> {
        self.config.play_wait
    }

    /// What waits to leave the shard, for its pumps.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.out
    }

    /// A request for the control thread (a connection's claim rollback).
    pub fn tell_cluster(&mut self, req: Request) {
        if self.clustered {
            self.out.request(req, &self.stats);
        }
    }

    /// LL-HLS: asks `shard` to package `key` (advisory: asked again with
    /// the next request).
    pub fn ask_to_package(&mut self, shard: usize, key: StreamKey) {
        self.tell(shard, ShardMsg::HlsStart { key });
    }

    /// LL-HLS: wakes the requests waiting on the shards in `shards` (a bit
    /// each), this one excepted.
    pub fn hls_changed(&mut self, shards: u64) {
        for shard in 0..self.shards.min(64) {
            if shard != self.shard && shards & (1 << shard) != 0 {
                self.out.hint(shard, ShardMsg::HlsChanged);
            }
        }
    }

    /// The shard that owns `key` on this node, if any.
    pub fn owner(&self, key: &StreamKey) -> Option<usize> {
        self.directory.owner(key)
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    fn tell(&mut self, shard: usize, msg: ShardMsg) {
        self.out.control(shard, msg, &self.stats);
    }

    fn tell_others(&mut self, msg: impl Fn() -> ShardMsg) {
        for shard in 0..self.shards {
            if shard != self.shard {
                self.tell(shard, msg());
            }
        }
    }

    /// Asks the cluster to relay `key` here as soon as any node has it.
    fn want(&mut self, key: &StreamKey, until: Instant) {
        self.tell_cluster(Request::Want {
            key: key.clone(),
            shard: self.shard,
            until,
        });
    }

    fn players_gauge(&self, delta: i64) {
        if delta >= 0 {
            self.stats
                .players
                .fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.stats
                .players
                .fetch_sub(-delta as u64, Ordering::Relaxed);
        }
    }

    /// A local stream ended: the cluster drops its registry entry (on the
    /// request queue, in order with claims). An exported one also marks
    /// its end on the export queue, behind its last messages, so relaying
    /// nodes get all of them before the end.
    fn unregister(&mut self, stream: &Stream) {
        if !self.clustered {
            return;
        }
        let key = stream.key.clone();
        if stream.export {
            self.out
                .export(Export::Ended { key: key.clone() }, &self.stats);
        }
        self.tell_cluster(Request::Unregister {
            key,
            shard: self.shard,
        });
    }

    /// Removes a stream; a local one leaves the publisher gauge.
    fn remove_stream(&mut self, id: StreamId) -> Option<Stream> {
        let stream = self.streams.remove(id)?;
        if stream.is_local() {
            self.stats.publishers.fetch_sub(1, Ordering::Relaxed);
        }
        Some(stream)
    }

    // ----- publishers

    /// Registers a publisher node-wide; None: the key is live elsewhere on
    /// this node. `unix_micros` seeds the sequence other nodes splice by.
    pub fn publish(
        &mut self,
        key: &StreamKey,
        conn: u64,
        out: Rc<Conn>,
        unix_micros: u64,
        now: Instant,
    ) -> Option<StreamId> {
        let claim = self.directory.claim(key, self.shard, self.config.takeover);
        match claim {
            Claim::Refused => return None,
            Claim::Registered => {}
            Claim::TakenFrom(shard) if shard == self.shard => self.hand_over(key, now),
            Claim::TakenFrom(shard) => self.tell(shard, ShardMsg::TakenOver { key: key.clone() }),
        }
        // This shard may have been relaying the key to players of its own:
        // they move to the new local stream (woken below).
        if let Some(relay) = self.streams.remove_key(key) {
            self.park_resumed(key, relay.players, now);
        }
        let mut stream = Stream::new(
            key.clone(),
            Some(conn),
            Some(out),
            self.config.gop_cache_max_bytes,
        );
        stream.seq = crate::cluster::wire::first_seq(unix_micros, conn);
        // A takeover keeps the key's attachments to other nodes: export at
        // once (the control thread drops it if nobody is attached).
        stream.export = self.clustered && matches!(claim, Claim::TakenFrom(_));
        let id = self.streams.insert(stream);
        self.stats.publishers.fetch_add(1, Ordering::Relaxed);
        self.stats.publishes_total.fetch_add(1, Ordering::Relaxed);
        // Shards with players waiting for this key attach them now.
        self.tell_others(|| ShardMsg::Published { key: key.clone() });
        self.wake(key, now);
        Some(id)
    }

    /// Another publisher took `key` over: close the old publisher, and park
    /// this shard's players, and tell relaying shards to park theirs, as
    /// resumed; the new owner's Published wakes them onto the new stream.
    fn hand_over(&mut self, key: &StreamKey, now: Instant) {
        let Some(id) = self.streams.id(key) else {
            return;
        };
        let Some(old) = self.remove_stream(id) else {
            return;
        };
        if let Some(out) = &old.publisher_out {
            out.close();
        }
        if old.is_node_relay() {
            self.tell_cluster(Request::Release { key: key.clone() });
        }
        for sub in &old.remote {
            self.tell(sub.shard, ShardMsg::Moved { key: key.clone() });
        }
        self.park_resumed(key, old.players, now);
    }

    /// Metadata or media from the publisher of stream `id`.
    pub fn on_publisher_message(&mut self, id: StreamId, message: RawMessage, now: Instant) {
        let Some(stream) = self.streams.get_mut(id) else {
            return;
        };
        let kind = stream.gop.push(&message);
        stream.seq += 1;
        stream.bytes += message.payload.len() as u64;
        if stream.export {
            self.out.export(
                Export::Media {
                    key: stream.key.clone(),
                    seq: stream.seq,
                    message: message.clone(),
                },
                &self.stats,
            );
        }
        for sub in &mut stream.remote {
            if sub.needs_snapshot {
                let messages: Vec<RawMessage> = stream.gop.snapshot().cloned().collect();
                let msg = ShardMsg::Snapshot {
                    id: sub.id,
                    messages,
                };
                if self.out.media(sub.shard, msg) {
                    // The snapshot already holds this message.
                    sub.needs_snapshot = false;
                    sub.waiting_key = !stream.gop.has_keyframe();
                }
                continue;
            }
            if sub.waiting_key && !kind.keyframe && !kind.header {
                continue;
            }
            let msg = ShardMsg::Media {
                id: sub.id,
                message: message.clone(),
            };
            if !self.out.media(sub.shard, msg) {
                // That shard's inbox is full: it resumes at the next keyframe.
                sub.waiting_key = true;
                self.stats.add_dropped_frames_shard();
            } else if kind.keyframe {
                sub.waiting_key = false;
            }
        }
        fan_out(
            &mut stream.players,
            &message,
            kind,
            &self.config,
            &self.stats,
            &mut self.memo,
            now,
        );
    }

    /// The publisher `conn` of stream `id` left: unregister, tell players
    /// and relaying shards.
    pub fn unpublish(&mut self, id: StreamId, conn: u64, now: Instant) {
        if self
            .streams
            .get(id)
            .is_none_or(|s| s.publisher != Some(conn))
        {
            return;
        }
        let Some(stream) = self.remove_stream(id) else {
            return;
        };
        self.directory.unregister(&stream.key, self.shard);
        if conn != RELAY_CONN {
            self.unregister(&stream);
        }
        for sub in &stream.remote {
            self.tell(sub.shard, ShardMsg::Ended { id: sub.id });
        }
        self.stream_ended(&stream.key, stream.players, now);
    }

    /// An SRT publisher's link counters, for `/api/streams`.
    pub fn report_srt(&self, key: &StreamKey, link: super::directory::SrtLink) {
        self.directory.report_srt(key, self.shard, link);
    }

    /// Whether `key` is published anywhere on this node.
    pub fn is_live(&self, key: &StreamKey) -> bool {
        self.streams
            .by_key(key)
            .is_some_and(|s| s.publisher.is_some())
            || self.directory.owner(key).is_some()
    }

    /// Whether the stream, as cached here, has (audio, video) sequence
    /// headers; None when it is not on this shard or has none yet.
    pub fn tracks(&self, key: &StreamKey) -> Option<(bool, bool)> {
        let (video, audio) = self.streams.by_key(key)?.gop.codecs();
        (audio.is_some() || video.is_some()).then_some((audio.is_some(), video.is_some()))
    }

    // ----- players

    /// A play request for `key`: attach the player here (owned or already
    /// relayed), subscribe to the owner shard, or not found.
    pub fn play(&mut self, key: &StreamKey, player: Player) -> PlayOutcome {
        let outcome = self.attach_player(key, player);
        if !matches!(outcome, PlayOutcome::NotFound) {
            self.players_gauge(1);
            self.stats.plays_total.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    fn attach_player(&mut self, key: &StreamKey, mut player: Player) -> PlayOutcome {
        if let Some(stream) = self.streams.by_key_mut(key) {
            attach(&stream.gop, &mut stream.players, player, &mut self.memo);
            return PlayOutcome::Attached;
        }
        let Some(owner) = self.directory.owner(key) else {
            return PlayOutcome::NotFound;
        };
        if owner == self.shard {
            // Registered here but not in the map: the publisher is mid-exit.
            return PlayOutcome::NotFound;
        }
        // Held until the owner's snapshot arrives and starts it.
        player.waiting_key = true;
        let mut relay = Stream::new(key.clone(), None, None, self.config.gop_cache_max_bytes);
        relay.players.push(player);
        let id = self.streams.insert(relay);
        self.tell(
            owner,
            ShardMsg::Subscribe {
                key: key.clone(),
                shard: self.shard,
                id,
            },
        );
        PlayOutcome::Subscribing
    }

    /// Parks a player until `key` is published (here or, in a cluster, on
    /// any node), up to `wait`; attaches it at once if it already is.
    pub fn park(
        &mut self,
        key: &StreamKey,
        player: Player,
        wait: Duration,
        now: Instant,
    ) -> PlayOutcome {
        if self.is_live(key) {
            return self.play(key, player);
        }
        let deadline = now + wait;
        self.want(key, deadline);
        self.waiting.entry(key.clone()).or_default().push(Waiting {
            player,
            deadline,
            resumed: false,
            notified: false,
        });
        self.players_gauge(1);
        self.stats.plays_total.fetch_add(1, Ordering::Relaxed);
        PlayOutcome::Subscribing
    }

    /// Starts a player admission let in: attached now when its stream was
    /// live on this node at admission, else parked for up to `wait`.
    pub fn start_player(
        &mut self,
        key: &StreamKey,
        player: Player,
        live: bool,
        wait: Duration,
        now: Instant,
    ) -> PlayOutcome {
        if live {
            self.play(key, player)
        } else {
            self.park(key, player, wait, now)
        }
    }

    /// Parks players that were watching `key` until it is live again.
    fn park_resumed(&mut self, key: &StreamKey, players: Vec<Player>, now: Instant) {
        let deadline = now + self.config.unpublish_wait.unwrap_or(TAKEOVER_WAIT);
        self.park_all(key, players, deadline);
    }

    fn park_all(&mut self, key: &StreamKey, players: Vec<Player>, deadline: Instant) {
        if players.is_empty() {
            return;
        }
        self.want(key, deadline);
        let list = self.waiting.entry(key.clone()).or_default();
        list.extend(players.into_iter().map(|player| Waiting {
            player,
            deadline,
            resumed: true,
            notified: false,
        }));
    }

    /// `key` is live (here or on another shard): attach its waiting players;
    /// those that were playing first hear it came back (see [`Hub::resume`]).
    /// While it is not, they stay parked until their deadlines.
    fn wake(&mut self, key: &StreamKey, _now: Instant) {
        if !self.is_live(key) {
            return;
        }
        let Some(list) = self.waiting.remove(key) else {
            return;
        };
        let mut still = Vec::new();
        for mut w in list {
            if w.notified {
                still.push(w);
            } else if w.resumed {
                w.notified = w.player.out.notice(
                    Notice::Republished {
                        stream_id: w.player.stream_id,
                    },
                    &self.stats,
                );
                if w.notified {
                    still.push(w);
                } else {
                    self.players_gauge(-1);
                }
            } else {
                let out = w.player.out.clone();
                if let PlayOutcome::NotFound = self.attach_player(key, w.player) {
                    // Gone again between the check and now.
                    out.close();
                    self.players_gauge(-1);
                }
            }
        }
        if !still.is_empty() {
            self.waiting.insert(key.clone(), still);
        }
    }

    /// The connection of a player told its stream came back has written
    /// that notice: attach it now. If the stream is gone again the player
    /// stays parked until its deadline.
    pub fn resume(&mut self, key: &StreamKey, conn: u64, stream_id: u32) {
        let live = self.is_live(key);
        let Some(list) = self.waiting.get_mut(key) else {
            return;
        };
        let Some(i) = list
            .iter()
            .position(|w| w.notified && w.player.is(conn, stream_id))
        else {
            return;
        };
        if !live {
            list[i].notified = false;
            return;
        }
        let w = list.swap_remove(i);
        if list.is_empty() {
            self.waiting.remove(key);
        }
        let out = w.player.out.clone();
        if let PlayOutcome::NotFound = self.attach_player(key, w.player) {
            out.close();
            self.players_gauge(-1);
        }
    }

    /// Players of a stream that ended: told so, then parked for a
    /// re-publish or let go.
    fn stream_ended(&mut self, key: &StreamKey, players: Vec<Player>, now: Instant) {
        let before = players.len();
        let kept = end_players(players, self.config.unpublish_wait.is_some(), &self.stats);
        self.players_gauge(kept.len() as i64 - before as i64);
        if let Some(wait) = self.config.unpublish_wait {
            self.park_all(key, kept, now + wait);
            // Another shard may have published the key again already (its
            // Published came before this end): resume at once.
            self.wake(key, now);
        }
    }

    /// Player `conn` stopped playing on `stream_id`.
    pub fn stop_play(&mut self, conn: u64, stream_id: u32) {
        self.remove_players(|p| p.is(conn, stream_id));
    }

    /// A connection left: every player it had goes.
    pub fn leave(&mut self, conn: u64) {
        self.remove_players(|p| p.conn == conn);
    }

    fn remove_players(&mut self, gone: impl Fn(&Player) -> bool) {
        let mut removed = 0usize;
        self.waiting.retain(|_, list| {
            let before = list.len();
            list.retain(|w| !gone(&w.player));
            removed += before - list.len();
            !list.is_empty()
        });
        let mut emptied = Vec::new();
        for stream in self.streams.iter_mut() {
            let before = stream.players.len();
            stream.players.retain(|p| !gone(p));
            removed += before - stream.players.len();
            if stream.publisher.is_none() && stream.players.is_empty() {
                emptied.push(stream.key.clone());
            }
        }
        self.players_gauge(-(removed as i64));
        // A relay nobody here watches any more: stop the owner sending it.
        for key in emptied {
            self.streams.remove_key(&key);
            if let Some(owner) = self.directory.owner(&key) {
                self.tell(
                    owner,
                    ShardMsg::Unsubscribe {
                        key,
                        shard: self.shard,
                    },
                );
            }
        }
    }

    // ----- time

    /// The shard's periodic tick: waits past their deadline end
    /// (StreamNotFound for a play that never found its stream, a plain end
    /// for a player whose stream left), idle relays are released, and the
    /// cluster hears what local streams carry.
    pub fn tick(&mut self, now: Instant) {
        self.release_idle_relays(now);
        self.report_streams(now);
        let mut expired = Vec::new();
        self.waiting.retain(|_, list| {
            let mut i = 0;
            while i < list.len() {
                // A player told its stream is back waits for its connection
                // to resume it, whatever the deadline.
                if list[i].deadline <= now && !list[i].notified {
                    expired.push(list.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            !list.is_empty()
        });
        self.players_gauge(-(expired.len() as i64));
        for w in expired {
            if w.resumed {
                // It heard the stream end (or, after a takeover, nothing):
                // the connection just closes.
                w.player.out.close();
            } else {
                let stream_id = w.player.stream_id;
                w.player
                    .out
                    .notice(Notice::NotFound { stream_id }, &self.stats);
            }
        }
    }

    /// Shutdown: every player here is told its stream ended; owned streams
    /// leave the directory and the registry.
    pub fn shutdown(&mut self) {
        for id in self.streams.ids() {
            let Some(stream) = self.remove_stream(id) else {
                continue;
            };
            if stream.publisher.is_some() {
                self.directory.unregister(&stream.key, self.shard);
            }
            if stream.is_local() {
                self.unregister(&stream);
            } else if stream.is_node_relay() {
                self.tell_cluster(Request::Release {
                    key: stream.key.clone(),
                });
            }
            let n = stream.players.len();
            end_players(stream.players, false, &self.stats);
            self.players_gauge(-(n as i64));
        }
        for (_, list) in std::mem::take(&mut self.waiting) {
            self.players_gauge(-(list.len() as i64));
            for w in list {
                w.player.out.close();
            }
        }
    }

    // ----- for tests

    /// Players attached to streams or waiting for one.
    #[cfg(test)]
    pub fn player_count(&self) -> usize {
        self.streams.iter().map(|s| s.players.len()).sum::<usize>()
            + self.waiting.values().map(Vec::len).sum::<usize>()
    }

    /// Streams whose publisher is a connection here.
    #[cfg(test)]
    pub fn local_streams(&self) -> usize {
        self.streams.iter().filter(|s| s.is_local()).count()
    }
}
