//! The hub's traffic with other shards (subscriptions, snapshots, relayed
//! media) and with the cluster (node relays, exports, kicks, fences, stream
//! reports): the second half of `impl Hub`.

use std::time::Instant;

use crate::cluster::Request;
use crate::protocol::RawMessage;
use crate::stream::ShardCommand;

use super::super::directory::Report;
use super::super::gop::GopCache;
use super::fanout::{attach, fan_out};
use super::streams::{RemoteSubscriber, Stream, StreamId};
use super::ShardMsg;
use super::{Hub, RELAY_CONN, RELAY_IDLE_GRACE, STREAM_REPORT_INTERVAL};
use crate::stream::StreamKey;

impl Hub {
    // ----- other shards

    /// A message from another shard.
    pub fn on_shard_message(&mut self, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Subscribe { key, shard, id } => self.subscribe(key, shard, id),
            ShardMsg::Published { key } => self.wake(&key, now),
            // The shard's LL-HLS side takes these before the hub.
            ShardMsg::HlsStart { .. } | ShardMsg::HlsChanged => {}
            ShardMsg::TakenOver { key } => {
                if self
                    .streams
                    .by_key(&key)
                    .is_some_and(|s| s.publisher.is_some())
                {
                    self.hand_over(&key, now);
                }
                self.wake(&key, now);
            }
            ShardMsg::Moved { key } => {
                if let Some(id) = self.shard_relay(&key) {
                    if let Some(relay) = self.streams.remove(id) {
                        self.park_resumed(&key, relay.players, now);
                    }
                }
                self.wake(&key, now);
            }
            ShardMsg::Unsubscribe { key, shard } => {
                if let Some(stream) = self.streams.by_key_mut(&key) {
                    stream.remote.retain(|s| s.shard != shard);
                }
            }
            ShardMsg::Snapshot { id, messages } => {
                let Some(stream) = self.streams.get_mut(id).filter(|s| s.publisher.is_none())
                else {
                    return;
                };
                for m in &messages {
                    stream.gop.push(m);
                }
                for player in std::mem::take(&mut stream.players) {
                    attach(&stream.gop, &mut stream.players, player, &mut self.memo);
                }
            }
            ShardMsg::Media { id, message } => {
                let Some(stream) = self.streams.get_mut(id).filter(|s| s.publisher.is_none())
                else {
                    return;
                };
                let kind = stream.gop.push(&message);
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
            ShardMsg::Ended { id } => {
                if self.streams.get(id).is_some_and(|s| s.publisher.is_none()) {
                    if let Some(relay) = self.streams.remove(id) {
                        self.stream_ended(&relay.key, relay.players, now);
                    }
                }
            }
        }
    }

    /// This shard's relay of another shard's stream `key`.
    fn shard_relay(&self, key: &StreamKey) -> Option<StreamId> {
        let id = self.streams.id(key)?;
        self.streams.get(id)?.publisher.is_none().then_some(id)
    }

    /// Shard `shard` has players for `key` (its relay `id`): the snapshot,
    /// then live media; Ended if the stream is not here.
    fn subscribe(&mut self, key: StreamKey, shard: usize, id: StreamId) {
        let Some(stream) = self
            .streams
            .by_key_mut(&key)
            .filter(|s| s.publisher.is_some())
        else {
            self.tell(shard, ShardMsg::Ended { id });
            return;
        };
        let messages: Vec<RawMessage> = stream.gop.snapshot().cloned().collect();
        let sent = self.out.media(shard, ShardMsg::Snapshot { id, messages });
        stream.remote.retain(|s| s.shard != shard);
        stream.remote.push(RemoteSubscriber {
            shard,
            id,
            needs_snapshot: !sent,
            waiting_key: false,
        });
    }

    // ----- the cluster

    /// A command from the cluster's control thread or the admin plane.
    pub fn on_cluster(&mut self, cmd: ShardCommand, now: Instant) {
        match cmd {
            ShardCommand::RelayStart { key, messages } => self.relay_start(key, messages, now),
            ShardCommand::RelayMedia { key, message } => {
                if let Some(id) = self.streams.id(&key) {
                    if self.streams.get(id).is_some_and(Stream::is_node_relay) {
                        self.on_publisher_message(id, message, now);
                    }
                }
            }
            ShardCommand::RelayEnded { key } => {
                if let Some(id) = self.streams.id(&key) {
                    self.unpublish(id, RELAY_CONN, now);
                }
            }
            ShardCommand::RelayRestart { key } => self.relay_restart(&key, now),
            ShardCommand::Export { key, on } => {
                if let Some(stream) = self.streams.by_key_mut(&key).filter(|s| s.is_local()) {
                    stream.export = on;
                }
            }
            ShardCommand::Snapshot { key, reply } => {
                let snapshot = self
                    .streams
                    .by_key(&key)
                    .filter(|s| s.is_local())
                    .map(|s| (s.gop.snapshot().cloned().collect(), s.seq));
                let _ = reply.send(snapshot);
            }
            ShardCommand::Kick { key, reply } => {
                let publisher = self
                    .streams
                    .by_key(&key)
                    .filter(|s| s.is_local())
                    .and_then(|s| s.publisher_out.clone());
                if let Some(out) = &publisher {
                    tracing::info!(stream = %crate::protocol::server::redact(&key), "publisher kicked by an operator");
                    out.close();
                }
                let _ = reply.send(publisher.is_some());
            }
            // Taken by the shard's command loop before the hub.
            ShardCommand::Push(_) | ShardCommand::Record(_) => {}
            ShardCommand::Fence { key } => {
                if self.streams.by_key(&key).is_some_and(Stream::is_local) {
                    tracing::info!(stream = %crate::protocol::server::redact(&key), "another node took the stream over; closing its publisher here");
                    self.directory.unregister(&key, self.shard);
                    self.hand_over(&key, now);
                }
            }
        }
    }

    /// The control thread has the snapshot of a remote stream: this shard
    /// now publishes it locally, and waiting players (here and on other
    /// shards) attach.
    fn relay_start(&mut self, key: StreamKey, messages: Vec<RawMessage>, now: Instant) {
        if self.streams.id(&key).is_some() || !self.directory.claim_relay(&key, self.shard) {
            // Published here meanwhile: the relay is not needed.
            self.tell_cluster(Request::Release { key });
            return;
        }
        let mut stream = Stream::new(
            key.clone(),
            Some(RELAY_CONN),
            None,
            self.config.gop_cache_max_bytes,
        );
        for m in &messages {
            stream.gop.push(m);
        }
        self.streams.insert(stream);
        self.tell_others(|| ShardMsg::Published { key: key.clone() });
        self.wake(&key, now);
    }

    /// The remote stream has a new publisher (a takeover on its node): its
    /// players here, and the shards relaying it from here, start over on
    /// the new one as after a local takeover: PublishNotify, then fresh
    /// headers and a keyframe.
    fn relay_restart(&mut self, key: &StreamKey, now: Instant) {
        let Some(stream) = self.streams.by_key_mut(key).filter(|s| s.is_node_relay()) else {
            return;
        };
        stream.gop = GopCache::new(self.config.gop_cache_max_bytes);
        let players = std::mem::take(&mut stream.players);
        let remote = std::mem::take(&mut stream.remote);
        for sub in remote {
            self.tell(sub.shard, ShardMsg::Moved { key: key.clone() });
        }
        self.park_resumed(key, players, now);
        self.wake(key, now);
    }

    /// Node relays nobody has watched for [`RELAY_IDLE_GRACE`] are released.
    pub(super) fn release_idle_relays(&mut self, now: Instant) {
        let mut idle = Vec::new();
        for stream in self.streams.iter_mut() {
            if !stream.is_node_relay() {
                continue;
            }
            if !stream.players.is_empty() || !stream.remote.is_empty() {
                stream.idle_since = None;
                continue;
            }
            let since = *stream.idle_since.get_or_insert(now);
            if now.duration_since(since) >= RELAY_IDLE_GRACE {
                idle.push(stream.key.clone());
            }
        }
        for key in idle {
            self.streams.remove_key(&key);
            self.directory.unregister(&key, self.shard);
            self.tell_cluster(Request::Release { key });
        }
    }

    /// Writes each stream's codecs and bitrate into the node's directory
    /// (`/api/streams`), and tells the cluster those of local streams, for
    /// their registry entries.
    pub(super) fn report_streams(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.reported);
        if elapsed < STREAM_REPORT_INTERVAL {
            return;
        }
        self.reported = now;
        let ms = elapsed.as_millis().max(1) as u64;
        let mut reports = Vec::new();
        for stream in self.streams.iter_mut() {
            if !stream.is_local() && !stream.is_node_relay() {
                continue;
            }
            let (video, audio) = stream.gop.codecs();
            let report = Report {
                video_codec: video.unwrap_or_default(),
                audio_codec: audio.unwrap_or_default(),
                bitrate_kbps: stream.bytes * 8 / ms,
            };
            stream.bytes = 0;
            self.directory
                .report(&stream.key, self.shard, report.clone());
            if self.clustered && stream.is_local() {
                reports.push(Request::StreamInfo {
                    key: stream.key.clone(),
                    shard: self.shard,
                    video_codec: report.video_codec,
                    audio_codec: report.audio_codec,
                    bitrate_kbps: report.bitrate_kbps,
                });
            }
        }
        for r in reports {
            self.tell_cluster(r);
        }
    }
}
