//! One shard's stream hub: the streams this shard owns (their publisher is
//! here, or it relays them from another node of the cluster), the streams it
//! relays from other shards for local players, and the fan-out to local
//! players. Shard-local (`Rc`/`RefCell`), never shared; other
//! shards are reached only by messages over the bounded mesh. Each message is
//! encoded once per (stream id, chunk size) and the same `Bytes` queued to
//! every player.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::Senders;

use crate::cluster::{ClusterHandle, Request, ShardCommand};
use crate::protocol::chunk::encode_message;
use crate::protocol::server::{
    ServerSession, PLAYER_AUDIO_CSID, PLAYER_DATA_CSID, PLAYER_VIDEO_CSID,
};
use crate::protocol::{MessageType, RawMessage};

use super::conn::Conn;
use super::directory::{Claim, Directory};
use super::gop::{GopCache, Kind};
use super::stats::ShardStats;
use super::{ShardMsg, StreamKey};

/// A player attached to a stream on this shard.
pub struct Player {
    pub conn: u64,
    pub stream_id: u32,
    pub chunk_size: u32,
    pub out: Rc<Conn>,
    pub session: Rc<RefCell<ServerSession>>,
    /// Dropping frames until the next keyframe (slow, or just joined a
    /// stream with no keyframe cached).
    waiting_key: bool,
    /// When it started falling behind.
    behind_since: Option<Instant>,
}

impl Player {
    pub fn new(
        conn: u64,
        stream_id: u32,
        out: Rc<Conn>,
        session: Rc<RefCell<ServerSession>>,
    ) -> Self {
        let chunk_size = session.borrow().chunk_size();
        Self {
            conn,
            stream_id,
            chunk_size,
            out,
            session,
            waiting_key: false,
            behind_since: None,
        }
    }
}

struct RemoteSubscriber {
    shard: usize,
    /// Its inbox was full when the snapshot was due: send it before
    /// anything else.
    needs_snapshot: bool,
    waiting_key: bool,
}

/// The "publisher" of a stream this shard relays from another node.
pub const RELAY_CONN: u64 = u64::MAX;

/// A relay from another node that nobody watches is kept this long (a
/// player reconnecting, other shards subscribing) before it is released.
const RELAY_IDLE_GRACE: Duration = Duration::from_secs(2);

/// How long a play of a stream found on another node waits for the relay
/// to start, when `play_unknown` does not say to wait longer.
pub const RELAY_START_WAIT: Duration = Duration::from_secs(5);

struct Stream {
    /// The publishing connection when this shard owns the stream
    /// ([`RELAY_CONN`] when it relays it from another node).
    publisher: Option<u64>,
    /// Its outbox, so a takeover can close it.
    publisher_out: Option<Rc<Conn>>,
    gop: GopCache,
    players: Vec<Player>,
    /// Shards that relay this stream (owner side).
    remote: Vec<RemoteSubscriber>,
    /// Messages from the publisher so far: the sequence other nodes splice by.
    seq: u64,
    /// Some node of the cluster is attached: messages go to the control thread.
    export: bool,
    /// A node relay with nobody watching since then.
    idle_since: Option<Instant>,
    /// Payload bytes from the publisher since the last stream report.
    bytes: u64,
}

impl Stream {
    fn new(publisher: Option<u64>, publisher_out: Option<Rc<Conn>>, gop_max: usize) -> Self {
        Self {
            publisher,
            publisher_out,
            gop: GopCache::new(gop_max),
            players: Vec::new(),
            remote: Vec::new(),
            seq: 0,
            export: false,
            idle_since: None,
            bytes: 0,
        }
    }

    fn is_node_relay(&self) -> bool {
        self.publisher == Some(RELAY_CONN)
    }

    /// Its publisher is a connection on this shard.
    fn is_local(&self) -> bool {
        self.publisher.is_some_and(|c| c != RELAY_CONN)
    }
}

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

/// How long players of a taken-over stream wait for the new publisher when
/// no unpublish wait is configured.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// A player parked until its stream is published (again).
struct Waiting {
    player: Player,
    deadline: Instant,
    /// It was playing when the publisher left: it gets PublishNotify when
    /// the stream comes back; otherwise StreamNotFound if it never does.
    resumed: bool,
}

pub enum PlayOutcome {
    Attached,
    /// Relayed from another shard: attached, media follows its snapshot.
    Subscribing,
    NotFound,
}

pub struct Hub {
    shard: usize,
    config: HubConfig,
    directory: Arc<Directory>,
    mesh: Rc<Senders<ShardMsg>>,
    streams: HashMap<StreamKey, Stream>,
    waiting: HashMap<StreamKey, Vec<Waiting>>,
    pub stats: Arc<ShardStats>,
    /// Encoded bytes per (stream id, chunk size) for the message in flight.
    memo: Vec<((u32, u32), Bytes)>,
    cluster: Option<ClusterHandle>,
    /// When local streams were last reported to the cluster.
    reported: Instant,
}

/// How often a shard tells the cluster what its streams carry.
const STREAM_REPORT_INTERVAL: Duration = Duration::from_secs(2);

impl Hub {
    pub fn new(
        shard: usize,
        config: HubConfig,
        directory: Arc<Directory>,
        mesh: Rc<Senders<ShardMsg>>,
        stats: Arc<ShardStats>,
        cluster: Option<ClusterHandle>,
    ) -> Self {
        Self {
            shard,
            config,
            directory,
            mesh,
            streams: HashMap::new(),
            waiting: HashMap::new(),
            stats,
            memo: Vec::with_capacity(2),
            cluster,
            reported: Instant::now(),
        }
    }

    pub fn takeover(&self) -> bool {
        self.config.takeover
    }

    /// Asks the cluster to relay `key` here as soon as any node has it.
    fn want(&self, key: &StreamKey, until: Instant) {
        if let Some(c) = &self.cluster {
            c.tell(Request::Want {
                key: key.clone(),
                shard: self.shard,
                until,
            });
        }
    }

    /// Registers a publisher node-wide. False: the key is live elsewhere.
    pub fn publish(&mut self, key: &StreamKey, conn: u64, out: Rc<Conn>) -> bool {
        let claim = self.directory.claim(key, self.shard, self.config.takeover);
        match claim {
            Claim::Refused => return false,
            Claim::Registered => {}
            Claim::TakenFrom(shard) if shard == self.shard => self.hand_over(key),
            Claim::TakenFrom(shard) => self.tell(shard, ShardMsg::TakenOver { key: key.clone() }),
        }
        // This shard may have been relaying the key to players of its own:
        // they move to the new local stream (woken below).
        if let Some(relay) = self.streams.remove(key) {
            self.park_resumed(key, relay.players);
        }
        let mut stream = Stream::new(Some(conn), Some(out), self.config.gop_cache_max_bytes);
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        stream.seq = crate::cluster::wire::first_seq(micros, conn);
        // A takeover keeps the key's attachments to other nodes: export at
        // once (the control thread drops it if nobody is attached).
        stream.export = self.cluster.is_some() && matches!(claim, Claim::TakenFrom(_));
        self.streams.insert(key.clone(), stream);
        // Shards with players waiting for this key attach them now.
        for shard in 0..self.mesh.nr_consumers() {
            if shard != self.shard {
                self.tell(shard, ShardMsg::Published { key: key.clone() });
            }
        }
        self.wake(key);
        true
    }

    /// Another publisher took `key` over: close the old publisher, and park
    /// this shard's players, and tell relaying shards to park theirs, as
    /// resumed; the new owner's Published wakes them onto the new stream.
    fn hand_over(&mut self, key: &StreamKey) {
        let Some(old) = self.streams.remove(key) else {
            return;
        };
        if let Some(out) = &old.publisher_out {
            out.close();
        }
        if old.is_node_relay() {
            if let Some(c) = &self.cluster {
                c.tell(Request::Release { key: key.clone() });
            }
        }
        for sub in &old.remote {
            self.tell(sub.shard, ShardMsg::Moved { key: key.clone() });
        }
        self.park_resumed(key, old.players);
    }

    /// Parks players that were watching `key` until it is live again.
    fn park_resumed(&mut self, key: &StreamKey, players: Vec<Player>) {
        let deadline = Instant::now() + self.config.unpublish_wait.unwrap_or(TAKEOVER_WAIT);
        if !players.is_empty() {
            self.want(key, deadline);
        }
        let list = self.waiting.entry(key.clone()).or_default();
        list.extend(players.into_iter().map(|player| Waiting {
            player,
            deadline,
            resumed: true,
        }));
    }

    /// Removes and returns this shard's relay of `key` (never an owned stream).
    fn take_relay(&mut self, key: &StreamKey) -> Option<Stream> {
        if self.streams.get(key)?.publisher.is_some() {
            return None;
        }
        self.streams.remove(key)
    }

    /// Sends to another shard without waiting; when its inbox is full the
    /// message follows from a task (control messages, not media).
    fn tell(&self, shard: usize, msg: ShardMsg) {
        if self.mesh.try_send_to(shard, msg.clone()).is_err() {
            let mesh = self.mesh.clone();
            glommio::spawn_local(async move {
                let _ = mesh.send_to(shard, msg).await;
            })
            .detach();
        }
    }

    /// With `play_unknown = "wait"`: how long a play may wait for its stream.
    pub fn play_wait(&self) -> Option<Duration> {
        self.config.play_wait
    }

    /// Parks a player until `key` is published (here or, in a cluster, on
    /// any node), up to `wait`; attaches it at once if it already is.
    pub fn park(&mut self, key: &StreamKey, player: Player, wait: Duration) -> PlayOutcome {
        if self.is_live(key) {
            return self.play(key, player);
        }
        let deadline = Instant::now() + wait;
        self.want(key, deadline);
        self.waiting.entry(key.clone()).or_default().push(Waiting {
            player,
            deadline,
            resumed: false,
        });
        PlayOutcome::Subscribing
    }

    /// `key` is live (here or on another shard): attach its waiting players.
    /// While it is not, they stay parked until their deadlines.
    fn wake(&mut self, key: &StreamKey) {
        if !self.is_live(key) {
            return;
        }
        let Some(waiting) = self.waiting.remove(key) else {
            return;
        };
        for w in waiting {
            if w.resumed {
                if let Ok(mut session) = w.player.session.try_borrow_mut() {
                    session.notify_publish(w.player.stream_id);
                    let mut out = BytesMut::new();
                    session.poll_transmit(&mut out);
                    w.player.out.push(out.freeze());
                }
            }
            let out = w.player.out.clone();
            if let PlayOutcome::NotFound = self.play(key, w.player) {
                // Gone again between the notice and now.
                out.close();
            }
        }
    }

    /// Closes waits past their deadline: StreamNotFound for a play that
    /// never found its stream, plain close for a player whose stream left.
    pub fn expire(&mut self, now: Instant) {
        self.release_idle_relays(now);
        self.report_streams(now);
        let mut expired = Vec::new();
        self.waiting.retain(|_, list| {
            let mut i = 0;
            while i < list.len() {
                if list[i].deadline <= now {
                    expired.push(list.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            !list.is_empty()
        });
        for w in expired {
            if !w.resumed {
                if let Ok(mut session) = w.player.session.try_borrow_mut() {
                    session.send_status(
                        w.player.stream_id,
                        "error",
                        "NetStream.Play.StreamNotFound",
                        "the stream was not published in time",
                    );
                    let mut out = BytesMut::new();
                    session.poll_transmit(&mut out);
                    w.player.out.push(out.freeze());
                }
            }
            w.player.out.close();
        }
    }

    /// Players of a stream that ended: told so, then parked for a
    /// re-publish or closed.
    fn stream_ended(&mut self, key: &StreamKey, players: Vec<Player>) {
        let survivors = end_players(players, self.config.unpublish_wait.is_some());
        if let Some(wait) = self.config.unpublish_wait {
            let deadline = Instant::now() + wait;
            if !survivors.is_empty() {
                self.want(key, deadline);
            }
            let list = self.waiting.entry(key.clone()).or_default();
            list.extend(survivors.into_iter().map(|player| Waiting {
                player,
                deadline,
                resumed: true,
            }));
        }
    }

    /// Metadata or media from this shard's publisher of `key`.
    pub fn on_publisher_message(&mut self, key: &StreamKey, message: RawMessage) {
        let Some(stream) = self.streams.get_mut(key) else {
            return;
        };
        let kind = stream.gop.push(&message);
        stream.seq += 1;
        stream.bytes += message.payload.len() as u64;
        if stream.export {
            if let Some(c) = &self.cluster {
                c.export(key, stream.seq, &message);
            }
        }
        for sub in &mut stream.remote {
            if sub.needs_snapshot {
                let messages: Vec<RawMessage> = stream.gop.snapshot().cloned().collect();
                let msg = ShardMsg::Snapshot {
                    key: key.clone(),
                    messages,
                };
                if self.mesh.try_send_to(sub.shard, msg).is_err() {
                    continue;
                }
                // The snapshot already holds this message.
                sub.needs_snapshot = false;
                sub.waiting_key = !stream.gop.has_keyframe();
                continue;
            }
            if sub.waiting_key && !kind.keyframe && !kind.header {
                continue;
            }
            let msg = ShardMsg::Media {
                key: key.clone(),
                message: message.clone(),
            };
            if self.mesh.try_send_to(sub.shard, msg).is_err() {
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
        );
    }

    /// The publisher of `key` left: unregister, tell players and relays.
    pub fn unpublish(&mut self, key: &StreamKey, conn: u64) {
        let owned = self
            .streams
            .get(key)
            .is_some_and(|s| s.publisher == Some(conn));
        if !owned {
            return;
        }
        self.directory.unregister(key, self.shard);
        let Some(stream) = self.streams.remove(key) else {
            return;
        };
        if conn != RELAY_CONN {
            if let Some(c) = &self.cluster {
                c.tell(Request::Unregister {
                    key: key.clone(),
                    shard: self.shard,
                });
            }
        }
        for sub in &stream.remote {
            self.tell(sub.shard, ShardMsg::Ended { key: key.clone() });
        }
        self.stream_ended(key, stream.players);
    }

    /// Whether `key` is published anywhere on this node.
    pub fn is_live(&self, key: &StreamKey) -> bool {
        self.streams.get(key).is_some_and(|s| s.publisher.is_some())
            || self.directory.owner(key).is_some()
    }

    /// A play request for `key`: attach the player here (owned or already
    /// relayed), subscribe to the owner shard, or not found.
    pub fn play(&mut self, key: &StreamKey, player: Player) -> PlayOutcome {
        if let Some(stream) = self.streams.get_mut(key) {
            attach(stream, player, &mut self.memo);
            return PlayOutcome::Attached;
        }
        let Some(owner) = self.directory.owner(key) else {
            return PlayOutcome::NotFound;
        };
        if owner == self.shard {
            // Registered here but not in the map: the publisher is mid-exit.
            return PlayOutcome::NotFound;
        }
        // Held until the owner's snapshot arrives and `attach` starts it.
        let mut player = player;
        player.waiting_key = true;
        let mut relay = Stream::new(None, None, self.config.gop_cache_max_bytes);
        relay.players.push(player);
        self.streams.insert(key.clone(), relay);
        let mesh = self.mesh.clone();
        let msg = ShardMsg::Subscribe {
            key: key.clone(),
            shard: self.shard,
        };
        glommio::spawn_local(async move {
            let _ = mesh.send_to(owner, msg).await;
        })
        .detach();
        PlayOutcome::Subscribing
    }

    /// A player connection left or stopped playing.
    pub fn leave(&mut self, conn: u64) {
        self.waiting.retain(|_, list| {
            list.retain(|w| w.player.conn != conn);
            !list.is_empty()
        });
        let mut emptied = Vec::new();
        for (key, stream) in &mut self.streams {
            stream.players.retain(|p| p.conn != conn);
            if stream.publisher.is_none() && stream.players.is_empty() {
                emptied.push(key.clone());
            }
        }
        // A relay nobody here watches any more: stop the owner sending it.
        for key in emptied {
            self.streams.remove(&key);
            if let Some(owner) = self.directory.owner(&key) {
                let mesh = self.mesh.clone();
                let msg = ShardMsg::Unsubscribe {
                    key,
                    shard: self.shard,
                };
                glommio::spawn_local(async move {
                    let _ = mesh.send_to(owner, msg).await;
                })
                .detach();
            }
        }
    }

    /// Shutdown: every player here is told its stream ended; owned streams
    /// leave the directory.
    pub fn shutdown(&mut self) {
        for (key, stream) in self.streams.drain() {
            if stream.publisher.is_some() {
                self.directory.unregister(&key, self.shard);
            }
            if let Some(c) = &self.cluster {
                if stream.is_local() {
                    c.tell(Request::Unregister {
                        key: key.clone(),
                        shard: self.shard,
                    });
                } else if stream.is_node_relay() {
                    c.tell(Request::Release { key: key.clone() });
                }
            }
            end_players(stream.players, false);
        }
        for (_, list) in self.waiting.drain() {
            for w in list {
                w.player.out.close();
            }
        }
    }

    /// A message from another shard.
    pub fn on_shard_message(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Subscribe { key, shard } => {
                let Some(stream) = self.streams.get_mut(&key).filter(|s| s.publisher.is_some())
                else {
                    let mesh = self.mesh.clone();
                    glommio::spawn_local(async move {
                        let _ = mesh.send_to(shard, ShardMsg::Ended { key }).await;
                    })
                    .detach();
                    return;
                };
                let messages: Vec<RawMessage> = stream.gop.snapshot().cloned().collect();
                let sent = self
                    .mesh
                    .try_send_to(
                        shard,
                        ShardMsg::Snapshot {
                            key: key.clone(),
                            messages,
                        },
                    )
                    .is_ok();
                stream.remote.retain(|s| s.shard != shard);
                stream.remote.push(RemoteSubscriber {
                    shard,
                    needs_snapshot: !sent,
                    waiting_key: false,
                });
            }
            ShardMsg::Published { key } => self.wake(&key),
            ShardMsg::TakenOver { key } => {
                if self
                    .streams
                    .get(&key)
                    .is_some_and(|s| s.publisher.is_some())
                {
                    self.hand_over(&key);
                }
                self.wake(&key);
            }
            ShardMsg::Moved { key } => {
                if let Some(relay) = self.take_relay(&key) {
                    self.park_resumed(&key, relay.players);
                }
                self.wake(&key);
            }
            ShardMsg::Unsubscribe { key, shard } => {
                if let Some(stream) = self.streams.get_mut(&key) {
                    stream.remote.retain(|s| s.shard != shard);
                }
            }
            ShardMsg::Snapshot { key, messages } => {
                let Some(stream) = self.streams.get_mut(&key).filter(|s| s.publisher.is_none())
                else {
                    return;
                };
                for m in &messages {
                    stream.gop.push(m);
                }
                let players = std::mem::take(&mut stream.players);
                for player in players {
                    attach(stream, player, &mut self.memo);
                }
            }
            ShardMsg::Media { key, message } => {
                if let Some(stream) = self.streams.get_mut(&key).filter(|s| s.publisher.is_none()) {
                    let kind = stream.gop.push(&message);
                    fan_out(
                        &mut stream.players,
                        &message,
                        kind,
                        &self.config,
                        &self.stats,
                        &mut self.memo,
                    );
                }
            }
            ShardMsg::Ended { key } => {
                if let Some(relay) = self.take_relay(&key) {
                    self.stream_ended(&key, relay.players);
                }
            }
        }
    }
}

impl Hub {
    /// A command from the cluster's control thread.
    pub fn on_cluster(&mut self, cmd: ShardCommand) {
        match cmd {
            ShardCommand::RelayStart { key, messages } => self.relay_start(key, messages),
            ShardCommand::RelayMedia { key, message } => {
                if self.streams.get(&key).is_some_and(Stream::is_node_relay) {
                    self.on_publisher_message(&key, message);
                }
            }
            ShardCommand::RelayEnded { key } => self.unpublish(&key, RELAY_CONN),
            ShardCommand::RelayRestart { key } => self.relay_restart(&key),
            ShardCommand::Export { key, on } => {
                if let Some(stream) = self.streams.get_mut(&key).filter(|s| s.is_local()) {
                    stream.export = on;
                }
            }
            ShardCommand::Snapshot { key, reply } => {
                let snapshot = self
                    .streams
                    .get(&key)
                    .filter(|s| s.is_local())
                    .map(|s| (s.gop.snapshot().cloned().collect(), s.seq));
                let _ = reply.send(snapshot);
            }
            ShardCommand::Kick { key, reply } => {
                let publisher = self
                    .streams
                    .get(&key)
                    .filter(|s| s.is_local())
                    .and_then(|s| s.publisher_out.clone());
                if let Some(out) = &publisher {
                    tracing::info!(stream = %crate::protocol::server::redact(&key), "publisher kicked by an operator");
                    out.close();
                }
                let _ = reply.send(publisher.is_some());
            }
            ShardCommand::Fence { key } => {
                if self.streams.get(&key).is_some_and(Stream::is_local) {
                    tracing::info!(stream = %crate::protocol::server::redact(&key), "another node took the stream over; closing its publisher here");
                    self.directory.unregister(&key, self.shard);
                    self.hand_over(&key);
                }
            }
        }
    }

    /// The control thread has the snapshot of a remote stream: this shard
    /// now publishes it locally, and waiting players (here and on other
    /// shards) attach.
    fn relay_start(&mut self, key: StreamKey, messages: Vec<RawMessage>) {
        if self.streams.contains_key(&key) || !self.directory.claim_relay(&key, self.shard) {
            // Published here meanwhile: the relay is not needed.
            if let Some(c) = &self.cluster {
                c.tell(Request::Release { key });
            }
            return;
        }
        let mut stream = Stream::new(Some(RELAY_CONN), None, self.config.gop_cache_max_bytes);
        for m in &messages {
            stream.gop.push(m);
        }
        self.streams.insert(key.clone(), stream);
        for shard in 0..self.mesh.nr_consumers() {
            if shard != self.shard {
                self.tell(shard, ShardMsg::Published { key: key.clone() });
            }
        }
        self.wake(&key);
    }

    /// Tells the cluster each local stream's codecs and bitrate, for its
    /// registry entry.
    fn report_streams(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.reported);
        let Some(cluster) = &self.cluster else {
            return;
        };
        if elapsed < STREAM_REPORT_INTERVAL {
            return;
        }
        self.reported = now;
        let ms = elapsed.as_millis().max(1) as u64;
        for (key, stream) in &mut self.streams {
            if !stream.is_local() {
                continue;
            }
            let (video, audio) = stream.gop.codecs();
            cluster.tell(Request::StreamInfo {
                key: key.clone(),
                shard: self.shard,
                video_codec: video.unwrap_or_default(),
                audio_codec: audio.unwrap_or_default(),
                bitrate_kbps: stream.bytes * 8 / ms,
            });
            stream.bytes = 0;
        }
    }

    /// The remote stream has a new publisher (a takeover on its node): its
    /// players here, and the shards relaying it from here, start over on
    /// the new one as after a local takeover: PublishNotify, then fresh
    /// headers and a keyframe.
    fn relay_restart(&mut self, key: &StreamKey) {
        let Some(stream) = self.streams.get_mut(key).filter(|s| s.is_node_relay()) else {
            return;
        };
        stream.gop = GopCache::new(self.config.gop_cache_max_bytes);
        let players = std::mem::take(&mut stream.players);
        let remote = std::mem::take(&mut stream.remote);
        for sub in remote {
            self.tell(sub.shard, ShardMsg::Moved { key: key.clone() });
        }
        self.park_resumed(key, players);
        self.wake(key);
    }

    /// Node relays nobody has watched for [`RELAY_IDLE_GRACE`] are released.
    fn release_idle_relays(&mut self, now: Instant) {
        let mut idle = Vec::new();
        for (key, stream) in &mut self.streams {
            if !stream.is_node_relay() {
                continue;
            }
            if !stream.players.is_empty() || !stream.remote.is_empty() {
                stream.idle_since = None;
                continue;
            }
            let since = *stream.idle_since.get_or_insert(now);
            if now.duration_since(since) >= RELAY_IDLE_GRACE {
                idle.push(key.clone());
            }
        }
        for key in idle {
            self.streams.remove(&key);
            self.directory.unregister(&key, self.shard);
            if let Some(c) = &self.cluster {
                c.tell(Request::Release { key });
            }
        }
    }
}

/// Starts a player: what the cache holds (metadata, headers, last GOP from
/// its keyframe), then live media.
fn attach(stream: &mut Stream, mut player: Player, memo: &mut Vec<((u32, u32), Bytes)>) {
    player.waiting_key = !stream.gop.has_keyframe();
    for m in stream.gop.snapshot() {
        memo.clear();
        send(&player, m, memo);
    }
    stream.players.push(player);
}

fn encoded(player: &Player, m: &RawMessage, memo: &mut Vec<((u32, u32), Bytes)>) -> Bytes {
    let key = (player.stream_id, player.chunk_size);
    if let Some((_, b)) = memo.iter().find(|(k, _)| *k == key) {
        return b.clone();
    }
    let mut msg = m.clone();
    msg.stream_id = player.stream_id;
    msg.csid = match msg.type_id {
        MessageType::AUDIO => PLAYER_AUDIO_CSID,
        MessageType::VIDEO => PLAYER_VIDEO_CSID,
        _ => PLAYER_DATA_CSID,
    };
    let mut out = BytesMut::new();
    encode_message(&mut out, player.chunk_size, &msg);
    let b = out.freeze();
    memo.push((key, b.clone()));
    b
}

/// Queues `m` for `player`. A video frame starts the shard's next send
/// round at once; audio and data may wait for it (up to
/// `players.send_coalesce_ms`), so that a player's audio leaves in the same
/// send as the next video frame instead of a packet of its own.
fn send(player: &Player, m: &RawMessage, memo: &mut Vec<((u32, u32), Bytes)>) {
    let b = encoded(player, m, memo);
    if m.type_id == MessageType::VIDEO {
        player.out.push_urgent(b);
    } else {
        player.out.push(b);
    }
}

/// Queues `m` to every player, encoded once per (stream id, chunk size).
/// A player whose queue would pass its byte limit drops frames up to the
/// next keyframe; one that stays behind past `max_lag_ms` is disconnected.
fn fan_out(
    players: &mut Vec<Player>,
    m: &RawMessage,
    kind: Kind,
    config: &HubConfig,
    stats: &ShardStats,
    memo: &mut Vec<((u32, u32), Bytes)>,
) {
    memo.clear();
    let now = Instant::now();
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
        stats.add_message_out();
        true
    });
}

/// The publisher is gone: NetStream.Play.UnpublishNotify and StreamEOF to
/// each player. With `keep`, the players are returned (to wait for a
/// re-publish); otherwise their connections close once that is written.
fn end_players(players: Vec<Player>, keep: bool) -> Vec<Player> {
    let mut kept = Vec::new();
    for p in players {
        let notified = match p.session.try_borrow_mut() {
            Ok(mut session) => {
                session.notify_unpublish(p.stream_id);
                let mut out = BytesMut::new();
                session.poll_transmit(&mut out);
                p.out.push(out.freeze());
                true
            }
            // The connection is inside its own session right now (it also
            // published this stream): closing it is notice enough.
            Err(_) => false,
        };
        if keep && notified && !p.out.is_closed() {
            kept.push(p);
        } else {
            p.out.close();
        }
    }
    kept
}
