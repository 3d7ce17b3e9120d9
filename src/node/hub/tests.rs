//! The hub in memory: several shards' hubs sharing one directory, their
//! outboxes routed by hand, players' output read back from their queues,
//! time passed in. No sockets, no executor, no sleeps.
//!
//! The hub's unit tests and its property test, with the in-memory shards
//! they share.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::super::directory::Directory;
use super::super::ring::conn::{Conn, Notice, RingQueue};
use super::super::stats::ShardStats;
use super::outbox::MESH_CONTROL_BACKLOG;
use super::*;
use crate::stream::ShardCommand;
use crate::stream::StreamKey;

const VIDEO: u8 = 9;
const AUDIO: u8 = 8;
const DATA: u8 = 18;

fn message(type_id: u8, timestamp: u32, payload: Vec<u8>) -> RawMessage {
    RawMessage {
        csid: 4,
        timestamp,
        type_id: crate::protocol::MessageType(type_id),
        stream_id: 1,
        payload: Bytes::from(payload),
    }
}

fn metadata() -> RawMessage {
    message(DATA, 0, b"\x02\x00\x0aonMetaData".to_vec())
}

fn video_header() -> RawMessage {
    message(VIDEO, 0, vec![0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff])
}

fn frame(keyframe: bool, timestamp: u32, size: usize) -> RawMessage {
    let mut p = vec![if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0];
    p.resize(size.max(5), 0xAB);
    message(VIDEO, timestamp, p)
}

fn audio_header(track: u8) -> RawMessage {
    // Enhanced audio, multitrack, one track, sequence start, mp4a.
    message(
        AUDIO,
        0,
        vec![0x95, 0x00, b'm', b'p', b'4', b'a', track, 0x11, 0x90],
    )
}

fn audio(timestamp: u32) -> RawMessage {
    message(AUDIO, timestamp, vec![0xAF, 1, 0x21, 0x10])
}

/// What a player's connection got, in order: (message type, first payload
/// byte) per message. Marks it sent, as the ring would.
fn received(c: &Conn) -> Vec<(u8, u8)> {
    let mut got = Vec::new();
    while let Some(b) = c.pop_output() {
        c.sent(b.len());
        // Hub output is one type-0 chunk header (basic header of one byte,
        // 11 bytes of message header) in front of each message.
        got.push((b[7], b[12]));
    }
    got
}

fn notices(c: &Conn) -> Vec<Notice> {
    std::iter::from_fn(|| c.take_notice()).collect()
}

fn config() -> HubConfig {
    HubConfig {
        gop_cache_max_bytes: 1 << 20,
        queue_max_bytes: 64 * 1024,
        max_lag_ms: 1000,
        unpublish_wait: None,
        play_wait: None,
        takeover: false,
    }
}

/// A node's shards in memory.
struct Shards {
    hubs: Vec<Hub>,
    stats: Vec<Arc<ShardStats>>,
    ring: Rc<RingQueue>,
    now: Instant,
    /// What the hubs asked of the cluster, in order.
    requests: Vec<Request>,
    next_conn: u64,
}

impl Shards {
    fn new(n: usize, config: HubConfig, clustered: bool) -> Self {
        let directory = Arc::new(Directory::default());
        let now = Instant::now();
        let stats: Vec<_> = (0..n).map(|_| Arc::new(ShardStats::default())).collect();
        let hubs = (0..n)
            .map(|i| {
                Hub::new(
                    i,
                    n,
                    config,
                    directory.clone(),
                    stats[i].clone(),
                    clustered,
                    now,
                )
            })
            .collect();
        Self {
            hubs,
            stats,
            ring: Rc::new(RingQueue::default()),
            now,
            requests: Vec::new(),
            next_conn: 0,
        }
    }

    fn conn(&mut self) -> Rc<Conn> {
        self.next_conn += 1;
        let id = self.next_conn;
        Rc::new(Conn::new(id, id as u32, self.ring.clone(), None))
    }

    /// Delivers every queued shard message (and what it causes) and
    /// collects the cluster requests.
    fn route(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..self.hubs.len() {
                for to in 0..self.hubs.len() {
                    while let Some(m) = self.hubs[from].outbox().pop_shard(to) {
                        self.hubs[to].on_shard_message(m, self.now);
                        moved = true;
                    }
                }
                while let Some(r) = self.hubs[from].outbox().pop_request() {
                    self.requests.push(r);
                }
                while self.hubs[from].outbox().pop_export().is_some() {}
            }
            if !moved {
                return;
            }
        }
    }

    fn publish(&mut self, shard: usize, key: &StreamKey, out: &Rc<Conn>) -> Option<StreamId> {
        let now = self.now;
        let id = self.hubs[shard].publish(key, out.id, out.clone(), 1, now);
        self.route();
        id
    }

    fn send(&mut self, shard: usize, id: StreamId, m: RawMessage) {
        let now = self.now;
        self.hubs[shard].on_publisher_message(id, m, now);
        self.route();
    }

    fn play(&mut self, shard: usize, key: &StreamKey, out: &Rc<Conn>) -> PlayOutcome {
        let player = Player::new(out.id, 1, 4096, out.clone());
        let outcome = self.hubs[shard].play(key, player);
        self.route();
        outcome
    }

    fn players(&self, shard: usize) -> u64 {
        self.stats[shard].players.load(Ordering::Relaxed)
    }

    fn publishers(&self, shard: usize) -> u64 {
        self.stats[shard].publishers.load(Ordering::Relaxed)
    }
}

fn key(name: &str) -> StreamKey {
    StreamKey::from(format!("live/{name}").as_str())
}

#[test]
fn a_late_player_starts_from_metadata_each_tracks_header_and_the_keyframe() {
    let mut node = Shards::new(1, config(), false);
    let (k, publisher, player) = (key("a"), node.conn(), node.conn());
    let id = node.publish(0, &k, &publisher).unwrap();
    for m in [
        metadata(),
        video_header(),
        audio_header(0),
        audio_header(1),
        frame(false, 10, 100), // before any keyframe: not cached
        frame(true, 33, 1000),
        audio(40),
        frame(false, 66, 100),
    ] {
        node.send(0, id, m);
    }
    assert!(matches!(node.play(0, &k, &player), PlayOutcome::Attached));
    assert_eq!(
        received(&player),
        vec![
            (DATA, 0x02),
            (VIDEO, 0x17), // the AVC sequence header
            (AUDIO, 0x95), // track 0's AudioSpecificConfig
            (AUDIO, 0x95), // track 1's
            (VIDEO, 0x17), // the keyframe
            (AUDIO, 0xAF),
            (VIDEO, 0x27),
        ]
    );
    node.send(0, id, audio(70));
    assert_eq!(received(&player), vec![(AUDIO, 0xAF)], "then live media");
    assert_eq!((node.players(0), node.publishers(0)), (1, 1));
}

#[test]
fn a_slow_player_drops_to_the_next_keyframe_then_is_cut_past_max_lag() {
    let mut node = Shards::new(1, config(), false);
    let (k, publisher, slow, fast) = (key("a"), node.conn(), node.conn(), node.conn());
    let id = node.publish(0, &k, &publisher).unwrap();
    node.send(0, id, video_header());
    node.play(0, &k, &slow);
    node.play(0, &k, &fast);
    received(&slow);
    // 20 KiB frames: the fourth passes the slow player's 64 KiB queue.
    node.send(0, id, frame(true, 0, 20_000));
    received(&fast);
    for t in 1..6 {
        node.send(0, id, frame(false, t * 33, 20_000));
        assert_eq!(received(&fast).len(), 1, "the fast player gets every frame");
    }
    let dropped = node.stats[0].dropped_frames_slow.load(Ordering::Relaxed);
    assert_eq!(
        dropped, 3,
        "frames 4 and 5 passed the limit, and frame 3 did"
    );
    // It catches up, but a P-frame would not decode: it waits for a keyframe.
    assert_eq!(received(&slow).len(), 3);
    node.send(0, id, frame(false, 200, 100));
    assert_eq!(received(&slow), vec![]);
    node.send(0, id, frame(true, 233, 100));
    assert_eq!(
        received(&slow),
        vec![(VIDEO, 0x17)],
        "resumes at the keyframe"
    );
    // Behind again, and for longer than max_lag_ms: cut.
    received(&fast);
    for t in 0..4 {
        node.send(0, id, frame(false, 300 + t, 20_000));
        received(&fast);
    }
    assert!(!slow.is_closed());
    node.now += Duration::from_millis(1001);
    node.send(0, id, frame(false, 400, 100));
    assert!(slow.is_closed(), "cut after max_lag_ms behind");
    assert_eq!(node.stats[0].disconnected_slow.load(Ordering::Relaxed), 1);
    assert_eq!(node.players(0), 1, "the cut player left the gauge");
    assert!(!fast.is_closed());
}

#[test]
fn players_wait_for_a_republish_then_resume_after_their_notice() {
    let mut node = Shards::new(
        1,
        HubConfig {
            unpublish_wait: Some(Duration::from_secs(5)),
            ..config()
        },
        false,
    );
    let (k, first, player) = (key("a"), node.conn(), node.conn());
    let id = node.publish(0, &k, &first).unwrap();
    node.send(0, id, video_header());
    node.send(0, id, frame(true, 0, 100));
    node.play(0, &k, &player);
    received(&player);
    node.hubs[0].unpublish(id, first.id, node.now);
    assert_eq!(
        notices(&player),
        vec![Notice::Ended {
            stream_id: 1,
            waiting: true
        }]
    );
    assert_eq!(
        (node.players(0), node.publishers(0)),
        (1, 0),
        "still a player"
    );
    // The publisher's late messages find no stream.
    node.send(0, id, frame(false, 33, 100));
    assert_eq!(received(&player), vec![]);

    let second = node.conn();
    let id2 = node.publish(0, &k, &second).unwrap();
    assert_ne!(id, id2);
    assert_eq!(notices(&player), vec![Notice::Republished { stream_id: 1 }]);
    node.send(0, id2, video_header());
    node.send(0, id2, frame(true, 0, 100));
    assert_eq!(
        received(&player),
        vec![],
        "nothing before its PublishNotify"
    );
    node.hubs[0].resume(&k, player.id, 1);
    assert_eq!(
        received(&player),
        vec![(VIDEO, 0x17), (VIDEO, 0x17)],
        "then fresh headers and the keyframe"
    );

    // Ended again, and nobody comes back within the wait: closed.
    node.hubs[0].unpublish(id2, second.id, node.now);
    node.hubs[0].tick(node.now + Duration::from_secs(4));
    assert!(!player.is_closed());
    node.hubs[0].tick(node.now + Duration::from_secs(6));
    assert!(player.is_closed());
    assert_eq!(node.players(0), 0);
}

#[test]
fn a_play_that_waits_for_its_stream_starts_with_it_or_hears_not_found() {
    let mut node = Shards::new(2, config(), false);
    let (k, early, late, publisher) = (key("a"), node.conn(), node.conn(), node.conn());
    let now = node.now;
    let wait = Duration::from_secs(3);
    let p = Player::new(early.id, 1, 4096, early.clone());
    assert!(matches!(
        node.hubs[1].park(&k, p, wait, now),
        PlayOutcome::Subscribing
    ));
    assert_eq!(node.players(1), 1);
    // Published on the other shard: the waiting player subscribes to it.
    let id = node.publish(0, &k, &publisher).unwrap();
    node.send(0, id, video_header());
    node.send(0, id, frame(true, 0, 100));
    assert_eq!(received(&early), vec![(VIDEO, 0x17), (VIDEO, 0x17)]);
    assert!(notices(&early).is_empty(), "Play.Start was its notice");

    let p = Player::new(late.id, 1, 4096, late.clone());
    node.hubs[1].park(&key("never"), p, wait, now);
    node.hubs[1].tick(now + wait);
    assert_eq!(notices(&late), vec![Notice::NotFound { stream_id: 1 }]);
    assert_eq!(node.players(1), 1);
}

#[test]
fn a_takeover_from_another_shard_closes_the_old_publisher_and_moves_players() {
    let mut node = Shards::new(
        2,
        HubConfig {
            takeover: true,
            ..config()
        },
        false,
    );
    let (k, old, player, new) = (key("a"), node.conn(), node.conn(), node.conn());
    let old_id = node.publish(0, &k, &old).unwrap();
    node.send(0, old_id, video_header());
    node.send(0, old_id, frame(true, 0, 100));
    assert!(matches!(
        node.play(1, &k, &player),
        PlayOutcome::Subscribing
    ));
    assert_eq!(received(&player), vec![(VIDEO, 0x17), (VIDEO, 0x17)]);

    let new_id = node.publish(1, &k, &new).unwrap();
    assert!(old.is_closed(), "the old publisher is closed");
    assert_eq!((node.publishers(0), node.publishers(1)), (0, 1));
    assert_eq!(notices(&player), vec![Notice::Republished { stream_id: 1 }]);
    node.hubs[1].resume(&k, player.id, 1);
    // Late input of the old publisher goes nowhere.
    node.send(0, old_id, frame(false, 33, 100));
    node.send(1, new_id, video_header());
    node.send(1, new_id, frame(true, 0, 100));
    assert_eq!(received(&player), vec![(VIDEO, 0x17), (VIDEO, 0x17)]);
    assert_eq!((node.players(0), node.players(1)), (0, 1));
}

#[test]
fn a_full_shard_inbox_drops_media_to_the_next_keyframe_and_bounds_control() {
    let mut node = Shards::new(2, config(), false);
    let (k, publisher, player) = (key("a"), node.conn(), node.conn());
    let id = node.publish(0, &k, &publisher).unwrap();
    node.send(0, id, video_header());
    node.send(0, id, frame(true, 0, 100));
    node.play(1, &k, &player);
    received(&player);
    // Shard 1's inbox takes nothing: nothing is routed from here on.
    let now = node.now;
    for t in 1..=3 {
        node.hubs[0].on_publisher_message(id, frame(false, t * 33, 100), now);
    }
    assert_eq!(
        node.stats[0].dropped_frames_shard.load(Ordering::Relaxed),
        1,
        "one message waits for the inbox, the next is dropped (and the one after skipped: no keyframe)"
    );
    node.route();
    assert_eq!(received(&player).len(), 1);
    node.send(0, id, frame(false, 133, 100));
    assert_eq!(received(&player), vec![], "a P-frame after a gap is no use");
    node.send(0, id, frame(true, 166, 100));
    assert_eq!(received(&player), vec![(VIDEO, 0x17)]);

    // Advisory control messages queue up to their bound, then are counted;
    // those that end or move a relay are kept.
    for i in 0..MESH_CONTROL_BACKLOG + 5 {
        let msg = ShardMsg::Published {
            key: key(&i.to_string()),
        };
        node.hubs[0].tell(1, msg);
    }
    node.hubs[0].tell(1, ShardMsg::Moved { key: key("kept") });
    let overflow = &node.stats[0].queue_overflow[crate::node::stats::Queue::MeshControl as usize];
    assert_eq!(overflow.load(Ordering::Relaxed), 5);
    let mut last = None;
    while let Some(m) = node.hubs[0].outbox().pop_shard(1) {
        last = Some(m);
    }
    assert!(
        matches!(last, Some(ShardMsg::Moved { .. })),
        "the move was kept"
    );
}

#[test]
fn a_node_relay_starts_feeds_ends_and_is_released_when_idle() {
    let mut node = Shards::new(2, config(), true);
    let (k, player) = (key("remote"), node.conn());
    let now = node.now;
    let snapshot = vec![video_header(), frame(true, 0, 100)];
    node.hubs[0].on_cluster(
        ShardCommand::RelayStart {
            key: k.clone(),
            messages: snapshot,
        },
        now,
    );
    node.route();
    assert!(node.hubs[1].is_live(&k), "every shard sees it");
    assert!(matches!(
        node.play(1, &k, &player),
        PlayOutcome::Subscribing
    ));
    assert_eq!(received(&player), vec![(VIDEO, 0x17), (VIDEO, 0x17)]);
    node.hubs[0].on_cluster(
        ShardCommand::RelayMedia {
            key: k.clone(),
            message: frame(false, 33, 100),
        },
        now,
    );
    node.route();
    assert_eq!(received(&player), vec![(VIDEO, 0x27)]);
    node.hubs[0].on_cluster(ShardCommand::RelayEnded { key: k.clone() }, now);
    node.route();
    assert_eq!(
        notices(&player),
        vec![Notice::Ended {
            stream_id: 1,
            waiting: false
        }]
    );
    assert!(!node.hubs[1].is_live(&k));
    assert_eq!(node.players(1), 0);
    assert!(
        !node
            .requests
            .iter()
            .any(|r| matches!(r, Request::Unregister { .. })),
        "a relay is not this node's to unregister"
    );

    // A relay nobody watches is released after its grace.
    node.hubs[0].on_cluster(
        ShardCommand::RelayStart {
            key: k.clone(),
            messages: Vec::new(),
        },
        now,
    );
    node.hubs[0].tick(now + Duration::from_secs(1));
    node.hubs[0].tick(now + Duration::from_secs(4));
    node.route();
    assert!(matches!(node.requests.last(), Some(Request::Release { key }) if *key == k));
    assert!(!node.hubs[0].is_live(&k));
}

/// One step of the property test. Connections are numbered; connection
/// `c` lives on shard `c % 3`.
#[derive(Debug, Clone)]
enum Op {
    Publish(usize, usize),
    Unpublish(usize),
    Play(usize, usize),
    Park(usize, usize),
    StopPlay(usize),
    Leave(usize),
    Media(usize, bool),
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6usize, 0..3usize).prop_map(|(c, k)| Op::Publish(c, k)),
        (0..6usize).prop_map(Op::Unpublish),
        (0..6usize, 0..3usize).prop_map(|(c, k)| Op::Play(c, k)),
        (0..6usize, 0..3usize).prop_map(|(c, k)| Op::Park(c, k)),
        (0..6usize).prop_map(Op::StopPlay),
        (0..6usize).prop_map(Op::Leave),
        (0..3usize, any::<bool>()).prop_map(|(k, key)| Op::Media(k, key)),
        (0..4000u64).prop_map(Op::Tick),
    ]
}

/// A connection as the property test drives it: what the connection task
/// would do with its notices and its closing.
struct Client {
    out: Rc<Conn>,
    publishing: Option<(usize, StreamId)>,
    playing: Option<usize>,
}

fn run(ops: Vec<Op>, takeover: bool, wait: bool) {
    let config = HubConfig {
        takeover,
        unpublish_wait: wait.then_some(Duration::from_secs(2)),
        queue_max_bytes: 1 << 30,
        ..config()
    };
    let mut node = Shards::new(3, config, false);
    let keys: Vec<StreamKey> = (0..3).map(|i| key(&i.to_string())).collect();
    let mut clients: Vec<Client> = (0..6)
        .map(|_| Client {
            out: node.conn(),
            publishing: None,
            playing: None,
        })
        .collect();
    let shard = |c: usize| c % 3;
    for op in ops.into_iter().chain((0..6).map(Op::Leave)) {
        let now = node.now;
        match op {
            Op::Publish(c, k) if clients[c].publishing.is_none() && !clients[c].out.is_closed() => {
                let out = clients[c].out.clone();
                if let Some(id) = node.hubs[shard(c)].publish(&keys[k], out.id, out, 1, now) {
                    clients[c].publishing = Some((k, id));
                    node.hubs[shard(c)].on_publisher_message(id, frame(true, 0, 10), now);
                }
            }
            Op::Unpublish(c) => {
                if let Some((_, id)) = clients[c].publishing.take() {
                    node.hubs[shard(c)].unpublish(id, clients[c].out.id, now);
                }
            }
            Op::Play(c, k) | Op::Park(c, k)
                if clients[c].playing.is_none() && !clients[c].out.is_closed() =>
            {
                let out = clients[c].out.clone();
                let player = Player::new(out.id, 1, 4096, out);
                let hub = &mut node.hubs[shard(c)];
                let outcome = match op {
                    Op::Play(..) => hub.play(&keys[k], player),
                    _ => hub.park(&keys[k], player, Duration::from_secs(1), now),
                };
                if !matches!(outcome, PlayOutcome::NotFound) {
                    clients[c].playing = Some(k);
                }
            }
            Op::StopPlay(c) if clients[c].playing.take().is_some() => {
                node.hubs[shard(c)].stop_play(clients[c].out.id, 1);
            }
            Op::Leave(c) => {
                if let Some((_, id)) = clients[c].publishing.take() {
                    node.hubs[shard(c)].unpublish(id, clients[c].out.id, now);
                }
                clients[c].playing = None;
                node.hubs[shard(c)].leave(clients[c].out.id);
            }
            Op::Media(k, keyframe) => {
                for (c, client) in clients.iter().enumerate() {
                    if let Some((pk, id)) = client.publishing {
                        if pk == k {
                            node.hubs[shard(c)].on_publisher_message(
                                id,
                                frame(keyframe, 1, 10),
                                now,
                            );
                        }
                    }
                }
            }
            Op::Tick(ms) => {
                node.now += Duration::from_millis(ms);
                for hub in &mut node.hubs {
                    hub.tick(node.now);
                }
            }
            _ => {}
        }
        // The connections react, as their tasks would, until nothing moves.
        loop {
            node.route();
            let mut acted = false;
            for (c, client) in clients.iter_mut().enumerate() {
                for n in notices(&client.out) {
                    acted = true;
                    match n {
                        Notice::Republished { stream_id } => {
                            if let Some(k) = client.playing {
                                node.hubs[shard(c)].resume(&keys[k], client.out.id, stream_id);
                            }
                        }
                        Notice::Ended { waiting: true, .. } => {}
                        _ => client.out.close(),
                    }
                }
                received(&client.out);
                if client.out.is_closed()
                    && (client.publishing.is_some() || client.playing.is_some())
                {
                    acted = true;
                    if let Some((_, id)) = client.publishing.take() {
                        node.hubs[shard(c)].unpublish(id, client.out.id, node.now);
                    }
                    client.playing = None;
                    node.hubs[shard(c)].leave(client.out.id);
                }
            }
            if !acted {
                break;
            }
        }
        for (i, hub) in node.hubs.iter().enumerate() {
            // Every gauge matches what the hub holds.
            assert_eq!(
                node.stats[i].players.load(Ordering::Relaxed),
                hub.player_count() as u64
            );
            assert_eq!(
                node.stats[i].publishers.load(Ordering::Relaxed),
                hub.local_streams() as u64
            );
            // No player is attached to a dead stream.
            for stream in hub.streams.iter().filter(|s| !s.players.is_empty()) {
                let live = match stream.publisher {
                    Some(_) => true,
                    None => node.hubs.iter().any(|owner| {
                        owner.streams.by_key(&stream.key).is_some_and(|s| {
                            s.publisher.is_some() && s.remote.iter().any(|r| r.shard == i)
                        })
                    }),
                };
                assert!(
                    live,
                    "players attached to a dead stream {:?} on shard {i}",
                    stream.key
                );
            }
        }
    }
    // Everyone left: nothing is held anywhere.
    node.now += Duration::from_secs(60);
    for hub in &mut node.hubs {
        hub.tick(node.now);
    }
    node.route();
    for (i, hub) in node.hubs.iter().enumerate() {
        assert_eq!(node.stats[i].players.load(Ordering::Relaxed), 0);
        assert_eq!(node.stats[i].publishers.load(Ordering::Relaxed), 0);
        assert_eq!(
            hub.streams.iter().count(),
            0,
            "shard {i} still holds streams"
        );
        assert!(hub.waiting.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn any_interleaving_ends_with_nothing_attached_and_gauges_at_zero(
        ops in proptest::collection::vec(op(), 0..60),
        takeover in any::<bool>(),
        wait in any::<bool>(),
    ) {
        run(ops, takeover, wait);
    }
}

#[test]
fn an_exported_stream_ends_behind_its_last_message() {
    let mut node = Shards::new(1, config(), true);
    let (k, publisher) = (key("out"), node.conn());
    let now = node.now;
    let id = node.hubs[0]
        .publish(&k, publisher.id, publisher.clone(), 1, now)
        .unwrap();
    node.hubs[0].on_cluster(
        ShardCommand::Export {
            key: k.clone(),
            on: true,
        },
        now,
    );
    node.hubs[0].on_publisher_message(id, frame(true, 0, 100), now);
    node.hubs[0].on_publisher_message(id, frame(false, 33, 100), now);
    node.hubs[0].unpublish(id, publisher.id, now);
    let out = node.hubs[0].outbox();
    let mut exports = Vec::new();
    while let Some(e) = out.pop_export() {
        exports.push(match e {
            crate::cluster::Export::Media { seq, .. } => format!("media {}", seq & 0xFFFF),
            crate::cluster::Export::Ended { key } => format!("end {key}"),
        });
    }
    assert_eq!(
        exports,
        ["media 1", "media 2", "end live/out"],
        "the end follows the media"
    );
    let mut unregisters = 0;
    while let Some(r) = out.pop_request() {
        unregisters += matches!(r, Request::Unregister { .. }) as usize;
    }
    assert_eq!(
        unregisters, 1,
        "the registry entry goes in order with claims"
    );
}

#[test]
fn players_resume_when_the_republish_on_a_third_shard_came_before_the_end() {
    let mut node = Shards::new(
        3,
        HubConfig {
            unpublish_wait: Some(Duration::from_secs(5)),
            ..config()
        },
        false,
    );
    let (k, first, second, player) = (key("a"), node.conn(), node.conn(), node.conn());
    let id = node.publish(0, &k, &first).unwrap();
    node.send(0, id, frame(true, 0, 100));
    node.play(2, &k, &player);
    received(&player);
    // The end on shard 0 and the new publish on shard 1, with shard 1's
    // Published reaching shard 2 before shard 0's Ended.
    let now = node.now;
    node.hubs[0].unpublish(id, first.id, now);
    node.hubs[1]
        .publish(&k, second.id, second.clone(), 1, now)
        .unwrap();
    while let Some(m) = node.hubs[1].outbox().pop_shard(2) {
        node.hubs[2].on_shard_message(m, now);
    }
    node.route();
    assert_eq!(
        notices(&player),
        vec![
            Notice::Ended {
                stream_id: 1,
                waiting: true
            },
            Notice::Republished { stream_id: 1 }
        ]
    );
    node.hubs[2].resume(&k, player.id, 1);
    node.route();
    assert_eq!(node.players(2), 1);
}

#[test]
fn a_local_consumer_gets_the_messages_themselves_under_the_slow_player_rules() {
    let mut node = Shards::new(1, config(), false);
    let (k, publisher) = (key("local"), node.conn());
    let (consumer, _queue) = Conn::detached(99);
    let id = node.publish(0, &k, &publisher).unwrap();
    let keyframe = frame(true, 33, 1000);
    for m in [metadata(), video_header(), keyframe.clone()] {
        node.send(0, id, m);
    }
    let outcome = node.hubs[0].play(&k, Player::local(99, consumer.clone()));
    node.route();
    assert!(matches!(outcome, PlayOutcome::Attached));
    // Nothing is encoded for it: no bytes in its output queue, and the
    // cached messages arrive as they came, payloads shared.
    assert!(!consumer.has_output());
    let got: Vec<_> = std::iter::from_fn(|| consumer.pop_message()).collect();
    assert_eq!(
        got.iter().map(|m| m.type_id).collect::<Vec<_>>(),
        vec![
            crate::protocol::MessageType::DATA_AMF0,
            crate::protocol::MessageType::VIDEO,
            crate::protocol::MessageType::VIDEO
        ]
    );
    assert_eq!(
        got[2].payload.as_ptr(),
        keyframe.payload.as_ptr(),
        "not copied"
    );
    assert_eq!(consumer.queued_bytes(), 0, "taken messages leave the count");
    // Live media follows; while it is not taken, it counts against the
    // player's queue limit like bytes, and a consumer that falls behind
    // drops to the next keyframe.
    node.send(0, id, audio(40));
    assert_eq!(consumer.queued_bytes(), audio(40).payload.len());
    let limit = config().queue_max_bytes;
    let mut t = 50;
    for _ in 0..limit / 10_000 + 2 {
        node.send(0, id, frame(false, t, 10_000));
        t += 33;
    }
    let queued = consumer.queued_bytes();
    assert!(
        queued <= limit,
        "{queued} bytes queued past the limit {limit}"
    );
    node.send(0, id, frame(false, t, 10_000));
    assert_eq!(consumer.queued_bytes(), queued, "dropped while behind");
    // Taken again, it resumes at the next keyframe.
    while consumer.pop_message().is_some() {}
    node.send(0, id, frame(false, t + 33, 100));
    assert!(
        consumer.pop_message().is_none(),
        "still waiting for a keyframe"
    );
    node.send(0, id, frame(true, t + 66, 100));
    assert!(consumer.pop_message().is_some());
    // A socket's Conn takes no messages.
    let plain = node.conn();
    plain.push_message(&audio(1));
    assert_eq!(plain.queued_bytes(), 0);
}
