//! The control thread's rules, driven through the NATS seam
//! ([`super::fake`]): claims against live, dead and taken-over owners,
//! the fence at refresh, registration after an outage, the publisher
//! leaving mid-claim, relays from attach to end, kicks and the cluster's
//! viewers. Each test is a few nodes on one in-process bus.

use std::future::Future;

use super::fake::{Bus, FakeNats};
use super::*;
use crate::protocol::MessageType;
use crate::stream::Protocol;

fn settings(node: &str) -> ClusterSettings {
    ClusterSettings {
        node_id: node.to_owned(),
        servers: Vec::new(),
        user: String::new(),
        password: String::new(),
        token: String::new(),
        creds_file: String::new(),
        nkey_seed: String::new(),
        tls_ca_file: String::new(),
        require_tls: false,
        registry_ttl: Duration::from_secs(6),
        push_targets_keep: Duration::from_secs(60),
        kv_replicas: 1,
        max_message_len: 1 << 20,
        max_snapshot_bytes: 1 << 20,
        rtmp_addr: format!("{node}:1935"),
        audience: Arc::default(),
        recordings: None,
        media_addr: None,
        store: None,
    }
}

/// Runs `f` on a current-thread runtime's `LocalSet`, as the control
/// thread runs.
fn run<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

struct Node {
    c: Rc<Control<FakeNats>>,
    nats: FakeNats,
    /// What the control thread tells shard 0.
    shard: mpsc::Receiver<ShardCommand>,
}

/// A node with its buckets open, answering other nodes' requests.
async fn node(bus: &Rc<Bus>, name: &str) -> Node {
    let nats = bus.client();
    let (tx, shard) = mpsc::channel(64);
    let c = Control::new(settings(name), nats.clone(), vec![tx], Arc::default());
    c.ensure_buckets().await.expect("buckets");
    tokio::task::spawn_local(c.clone().serve_requests());
    // The request subscription is made by that task: let it run.
    tokio::task::yield_now().await;
    Node { c, nats, shard }
}

fn key(s: &str) -> StreamKey {
    StreamKey::parse(s).expect("key")
}

async fn claim(n: &Node, k: &StreamKey, takeover: bool) -> ClaimResult {
    let (tx, rx) = oneshot::channel();
    n.c.claim(k, 0, takeover, tx).await;
    rx.await.expect("answer")
}

/// Starts a claim of `k` on `c` that is still asking the registry when
/// this returns (the bus holds registry operations); its answer comes on
/// the receiver.
async fn claim_in_flight(
    c: &Rc<Control<FakeNats>>,
    bus: &Bus,
    k: &StreamKey,
) -> (tokio::task::JoinHandle<()>, oneshot::Receiver<ClaimResult>) {
    bus.hold(true);
    let (reply, answer) = oneshot::channel();
    let task = tokio::task::spawn_local({
        let (c, k) = (c.clone(), k.clone());
        async move { c.claim(&k, 0, false, reply).await }
    });
    until("the claim asks the registry", || {
        c.owned.borrow().get(k).is_some_and(|o| o.claiming)
    })
    .await;
    (task, answer)
}

/// The registry's entry for `k`, as a test reads it.
fn owner(bus: &Bus, k: &StreamKey) -> Option<Registration> {
    let (v, _) = bus.value(STREAMS_BUCKET, &wire::token(k))?;
    Some(serde_json::from_slice(&v).expect("registration"))
}

fn conflicts(n: &Node) -> u64 {
    n.c.stats.registry_conflicts.load(Ordering::Relaxed)
}

/// The next command for shard 0, within a deadline.
async fn next_command(n: &mut Node) -> ShardCommand {
    tokio::time::timeout(Duration::from_secs(5), n.shard.recv())
        .await
        .expect("a shard command in time")
        .expect("queue open")
}

/// Polls (yielding to the other tasks) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn video(ts: u32, keyframe: bool) -> RawMessage {
    let first = if keyframe { 0x17 } else { 0x27 };
    RawMessage {
        csid: 6,
        timestamp: ts,
        type_id: MessageType::VIDEO,
        stream_id: 1,
        payload: Bytes::from(vec![first, 1, 0, 0, 0, 0xAA, 0xBB]),
    }
}

#[test]
fn a_free_key_is_registered_and_a_live_owner_keeps_it() {
    run(async {
        let bus = Bus::new();
        let a = node(&bus, "a").await;
        let b = node(&bus, "b").await;
        let k = key("live/one");
        assert_eq!(
            claim(&a, &k, false).await,
            ClaimResult::Registered { pushes: vec![] }
        );
        assert_eq!(owner(&bus, &k).expect("entry").node, "a");
        // A answers its pings: B is refused and named the owner.
        assert_eq!(claim(&b, &k, false).await, ClaimResult::Refused("a".into()));
        assert_eq!(conflicts(&b), 1);
        assert_eq!(owner(&bus, &k).expect("entry").node, "a");
        assert!(!b.c.owned.borrow().contains_key(&k));
        // A second publish of the same key on A itself is refused too.
        assert_eq!(claim(&a, &k, false).await, ClaimResult::Refused("a".into()));
    });
}

/// Nodes A and B on one bus; A owns `live/one`, with a push target added
/// over the API.
async fn owner_with_api_targets() -> (Rc<Bus>, Node, Node, StreamKey, Vec<String>) {
    let bus = Bus::new();
    let a = node(&bus, "a").await;
    let b = node(&bus, "b").await;
    let k = key("live/one");
    claim(&a, &k, false).await;
    let urls = vec!["rtmp://example.invalid/app/x".to_owned()];
    a.c.handle(Request::Pushes {
        key: k.clone(),
        shard: 0,
        urls: urls.clone(),
    })
    .await;
    (bus, a, b, k, urls)
}

#[test]
fn a_dead_owners_entry_is_taken_with_its_push_targets() {
    run(async {
        let (bus, a, b, k, urls) = owner_with_api_targets().await;
        a.c.refresh().await;
        assert_eq!(owner(&bus, &k).expect("entry").pushes, urls);
        // A is killed: its entry stays (until the TTL), its pings go
        // unanswered. (Its targets' own copy is gone: B takes them from
        // the entry.)
        a.nats.cut_off(true);
        bus.expire(PUSHES_BUCKET, &wire::token(&k));
        assert_eq!(
            claim(&b, &k, false).await,
            ClaimResult::Registered {
                pushes: urls.clone()
            }
        );
        let entry = owner(&bus, &k).expect("entry");
        assert_eq!((entry.node.as_str(), entry.pushes), ("b", urls));
        // Not a conflict: nobody lost a live stream.
        assert_eq!(conflicts(&b), 0);
    });
}

#[test]
fn push_targets_outlive_a_dead_owners_expired_entry_and_end_with_a_goodbye() {
    run(async {
        let (bus, a, b, k, urls) = owner_with_api_targets().await;
        until("the targets kept", || {
            bus.value(PUSHES_BUCKET, &wire::token(&k)).is_some()
        })
        .await;
        // A is killed and the encoder comes back to B only after A's entry
        // expired: B takes the targets up all the same.
        a.nats.cut_off(true);
        bus.expire(STREAMS_BUCKET, &wire::token(&k));
        assert_eq!(
            claim(&b, &k, false).await,
            ClaimResult::Registered {
                pushes: urls.clone()
            }
        );
        b.c.refresh().await;
        let entry = owner(&bus, &k).expect("entry");
        assert_eq!((entry.node.as_str(), entry.pushes), ("b", urls));
        // A goodbye on B forgets them: the next publish starts without.
        b.c.handle(Request::Unregister {
            key: k.clone(),
            shard: 0,
        })
        .await;
        until("the goodbye written", || {
            bus.value(PUSHES_BUCKET, &wire::token(&k))
                .is_some_and(|(v, _)| v.as_ref() == b"[]")
        })
        .await;
        assert_eq!(
            claim(&b, &k, false).await,
            ClaimResult::Registered { pushes: Vec::new() }
        );
    });
}

#[test]
fn targets_removed_over_the_api_stay_removed_when_a_stale_write_lands_last() {
    run(async {
        let (bus, a, _b, k, urls) = owner_with_api_targets().await;
        let token = wire::token(&k);
        until("the targets kept", || {
            bus.value(PUSHES_BUCKET, &token).is_some()
        })
        .await;
        a.c.handle(Request::Pushes {
            key: k.clone(),
            shard: 0,
            urls: Vec::new(),
        })
        .await;
        until("the removal written", || {
            bus.value(PUSHES_BUCKET, &token)
                .is_some_and(|(v, _)| v.as_ref() == b"[]")
        })
        .await;
        // The earlier write lands after the removal's.
        a.c.keep_pushes(&k, &urls).await;
        let (_, stale) = bus.value(PUSHES_BUCKET, &token).expect("kept");
        a.c.refresh().await;
        until("the removal written again", || {
            bus.value(PUSHES_BUCKET, &token)
                .is_some_and(|(v, rev)| rev > stale && v.as_ref() == b"[]")
        })
        .await;
        // Once is enough: later refreshes of a stream without targets write
        // nothing.
        let (_, rev) = bus.value(PUSHES_BUCKET, &token).expect("kept");
        a.c.refresh().await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(bus.value(PUSHES_BUCKET, &token).expect("kept").1, rev);
    });
}

#[test]
fn a_takeover_fences_the_old_owner_at_its_refresh() {
    run(async {
        let bus = Bus::new();
        let mut a = node(&bus, "a").await;
        let b = node(&bus, "b").await;
        let k = key("live/one");
        claim(&a, &k, false).await;
        assert_eq!(
            claim(&b, &k, true).await,
            ClaimResult::Registered { pushes: vec![] }
        );
        assert_eq!(owner(&bus, &k).expect("entry").node, "b");
        assert_eq!(conflicts(&b), 1);
        // A's next refresh finds a revision not its own and a live owner.
        a.c.refresh().await;
        match next_command(&mut a).await {
            ShardCommand::Fence { key } => assert_eq!(key, k),
            other => panic!("expected a fence, got {other:?}"),
        }
        assert!(!a.c.owned.borrow().contains_key(&k));
        assert_eq!(conflicts(&a), 1);
        assert_eq!(owner(&bus, &k).expect("entry").node, "b");
        // B's refresh keeps its entry.
        b.c.refresh().await;
        assert_eq!(owner(&bus, &k).expect("entry").node, "b");
    });
}

#[test]
fn a_publish_made_while_nats_was_away_registers_when_a_fresh_server_returns() {
    run(async {
        let bus = Bus::new();
        let a = node(&bus, "a").await;
        let k = key("live/one");
        bus.set_down(true);
        assert_eq!(claim(&a, &k, false).await, ClaimResult::Unavailable);
        assert_eq!(a.c.stats.registry_errors.load(Ordering::Relaxed), 1);
        assert_eq!(a.c.owned.borrow().get(&k).map(|o| o.revision), Some(None));
        // A fresh server: the registry and the buckets are gone.
        bus.wipe();
        bus.set_down(false);
        a.c.on_event(Event::Connected);
        assert!(a.c.streams_kv().is_none());
        a.c.ensure_buckets().await.expect("buckets");
        a.c.refresh().await;
        assert_eq!(owner(&bus, &k).expect("entry").node, "a");
        let (_, rev) = bus.value(STREAMS_BUCKET, &wire::token(&k)).expect("entry");
        assert_eq!(
            a.c.owned.borrow().get(&k).map(|o| o.revision),
            Some(Some(rev))
        );
        // The heartbeat went out with it.
        assert!(bus.value(NODES_BUCKET, "a").is_some());
    });
}

#[test]
fn a_refresh_leaves_a_claim_that_is_asking_the_registry_alone() {
    run(async {
        let bus = Bus::new();
        let a = node(&bus, "a").await;
        let k = key("live/one");
        // The registry answers nothing for now: the claim waits in it.
        let (claiming, answer) = claim_in_flight(&a.c, &bus, &k).await;
        let refresh = tokio::task::spawn_local({
            let c = a.c.clone();
            async move { c.refresh().await }
        });
        tokio::task::yield_now().await;
        bus.hold(false);
        assert!(matches!(
            answer.await.expect("answer"),
            ClaimResult::Registered { .. }
        ));
        claiming.await.expect("claim");
        refresh.await.expect("refresh");
        // One write of the entry, the claim's: the refresh made none (two
        // at once would fail one, and a refresh that lost would close our
        // own publisher).
        let (_, rev) = bus.value(STREAMS_BUCKET, &wire::token(&k)).expect("entry");
        assert_eq!(rev, 1);
        assert_eq!(
            a.c.owned.borrow().get(&k).map(|o| (o.revision, o.claiming)),
            Some((Some(1), false))
        );
        assert_eq!(conflicts(&a), 0);
    });
}

#[test]
fn a_claim_the_registry_could_not_take_is_retried_within_a_second_not_at_the_refresh() {
    run(async {
        let bus = Bus::new();
        // Refreshes every 10 s: a registration sooner than that is the retry.
        let mut s = settings("a");
        s.registry_ttl = Duration::from_secs(30);
        let (tx, _shard) = mpsc::channel(64);
        let c = Control::new(s, bus.client(), vec![tx], Arc::default());
        c.ensure_buckets().await.expect("buckets");
        let k = key("live/one");
        // JetStream without a leader: connected, but no write is answered.
        bus.hold(true);
        let (reply, answer) = oneshot::channel();
        c.claim(&k, 0, false, reply).await;
        assert_eq!(answer.await.expect("answer"), ClaimResult::Unavailable);
        assert_eq!(
            c.owned.borrow().get(&k).map(|o| (o.revision, o.claiming)),
            Some((None, false))
        );
        // The leader is back: the housekeeping tick registers it at once,
        // without a whole refresh (no heartbeat written with it).
        bus.hold(false);
        let back = tokio::time::Instant::now();
        // (Not the refresh a (re)connect asks for at the first tick.)
        c.refresh_now.set(false);
        tokio::task::spawn_local(c.clone().housekeeping());
        until("registered", || owner(&bus, &k).is_some()).await;
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "{:?}",
            back.elapsed()
        );
        assert!(c
            .owned
            .borrow()
            .get(&k)
            .is_some_and(|o| o.revision.is_some()));
        assert!(bus.value(NODES_BUCKET, "a").is_none(), "no refresh yet");
    });
}

#[test]
fn a_publish_made_during_a_split_yields_to_the_registered_owner() {
    run(async {
        let bus = Bus::new();
        let mut a = node(&bus, "a").await;
        let b = node(&bus, "b").await;
        let k = key("live/one");
        a.nats.cut_off(true);
        assert_eq!(claim(&a, &k, false).await, ClaimResult::Unavailable);
        // Meanwhile B's encoder publishes the same key and registers it.
        assert_eq!(
            claim(&b, &k, false).await,
            ClaimResult::Registered { pushes: vec![] }
        );
        a.nats.cut_off(false);
        tokio::task::spawn_local(a.c.clone().serve_requests());
        a.c.refresh().await;
        match next_command(&mut a).await {
            ShardCommand::Fence { key } => assert_eq!(key, k),
            other => panic!("expected a fence, got {other:?}"),
        }
        assert_eq!(owner(&bus, &k).expect("entry").node, "b");
    });
}

#[test]
fn an_unregister_deletes_only_its_own_revision() {
    run(async {
        let bus = Bus::new();
        let a = node(&bus, "a").await;
        let b = node(&bus, "b").await;
        let k = key("live/one");
        claim(&a, &k, false).await;
        a.c.unregister(k.clone(), 0);
        until("the entry deleted", || owner(&bus, &k).is_none()).await;
        until("no task pending", || a.c.pending.get() == 0).await;

        // Taken over by B: A's publisher leaving must not delete B's entry.
        claim(&a, &k, false).await;
        claim(&b, &k, true).await;
        a.c.unregister(k.clone(), 0);
        until("no task pending", || a.c.pending.get() == 0).await;
        assert_eq!(owner(&bus, &k).expect("entry").node, "b");
        // An unregister from another shard than the owner's is ignored.
        b.c.unregister(k.clone(), 1);
        until("no task pending", || b.c.pending.get() == 0).await;
        assert!(b.c.owned.borrow().contains_key(&k));
    });
}

#[test]
fn the_publisher_leaving_during_its_claim_takes_the_entry_back_out() {
    run(async {
        let bus = Bus::new();
        let a = node(&bus, "a").await;
        let k = key("live/one");
        let (_claiming, rx) = claim_in_flight(&a.c, &bus, &k).await;
        // The publisher leaves before the registry answers.
        a.c.unregister(k.clone(), 0);
        assert!(!a.c.owned.borrow().contains_key(&k));
        bus.hold(false);
        assert_eq!(
            rx.await.expect("answer"),
            ClaimResult::Registered { pushes: vec![] }
        );
        until("no task pending", || a.c.pending.get() == 0).await;
        assert!(owner(&bus, &k).is_none(), "the entry was left behind");
    });
}

#[test]
fn a_relay_attaches_splices_the_snapshot_and_ends_with_the_stream() {
    run(async {
        let bus = Bus::new();
        let mut a = node(&bus, "a").await;
        let mut b = node(&bus, "b").await;
        let k = key("live/one");
        claim(&a, &k, false).await;
        b.c.handle(Request::Want {
            key: k.clone(),
            shard: 0,
            until: Instant::now() + Duration::from_secs(10),
        })
        .await;
        // A's shard is told to export, then asked for its cache.
        match next_command(&mut a).await {
            ShardCommand::Export { key, on: true } => assert_eq!(key, k),
            other => panic!("expected export on, got {other:?}"),
        }
        match next_command(&mut a).await {
            ShardCommand::Snapshot { key, reply } => {
                assert_eq!(key, k);
                let _ = reply.send(Some((vec![video(0, true), video(40, false)], 1)));
            }
            other => panic!("expected a snapshot request, got {other:?}"),
        }
        match next_command(&mut b).await {
            ShardCommand::RelayStart { key, messages } => {
                assert_eq!(key, k);
                let ts: Vec<u32> = messages.iter().map(|m| m.timestamp).collect();
                assert_eq!(ts, [0, 40]);
                assert_eq!(messages[0].payload, video(0, true).payload);
            }
            other => panic!("expected the relay start, got {other:?}"),
        }
        // Live media after the snapshot: what the snapshot held is not
        // delivered twice.
        a.c.export(&k, 1, &video(40, false)).await;
        a.c.export(&k, 2, &video(80, false)).await;
        match next_command(&mut b).await {
            ShardCommand::RelayMedia { key, message } => {
                assert_eq!((key, message.timestamp), (k.clone(), 80));
            }
            other => panic!("expected media, got {other:?}"),
        }
        assert_eq!(b.c.stats.relayed_streams.load(Ordering::Relaxed), 1);
        // The publisher on A leaves: B hears the end after the last media.
        a.c.unregister(k.clone(), 0);
        a.c.export_ended(k.clone()).await;
        match next_command(&mut b).await {
            ShardCommand::RelayEnded { key } => assert_eq!(key, k),
            other => panic!("expected the end, got {other:?}"),
        }
        until("the relay gone", || !b.c.relays.borrow().contains_key(&k)).await;
        assert_eq!(b.c.stats.relayed_streams.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn a_relay_from_a_node_that_stops_answering_ends_after_its_renewals() {
    run(async {
        let bus = Bus::new();
        let mut a = node(&bus, "a").await;
        let mut b = node(&bus, "b").await;
        let k = key("live/one");
        claim(&a, &k, false).await;
        b.c.handle(Request::Want {
            key: k.clone(),
            shard: 0,
            until: Instant::now() + Duration::from_secs(10),
        })
        .await;
        let _export = next_command(&mut a).await;
        match next_command(&mut a).await {
            ShardCommand::Snapshot { reply, .. } => {
                let _ = reply.send(Some((vec![video(0, true)], 0)));
            }
            other => panic!("expected a snapshot request, got {other:?}"),
        }
        assert!(matches!(
            next_command(&mut b).await,
            ShardCommand::RelayStart { .. }
        ));
        // A is killed without a word: no End frame ever comes.
        a.nats.cut_off(true);
        match next_command(&mut b).await {
            ShardCommand::RelayEnded { key } => assert_eq!(key, k),
            other => panic!("expected the end, got {other:?}"),
        }
    });
}

#[test]
fn a_kick_reaches_the_owning_node_and_a_bad_key_is_refused_there() {
    run(async {
        let bus = Bus::new();
        let mut a = node(&bus, "a").await;
        let b = node(&bus, "b").await;
        let k = key("live/one");
        claim(&a, &k, false).await;
        let c = b.c.clone();
        let kk = k.clone();
        let kick = tokio::task::spawn_local(async move { c.kick(&kk).await });
        match next_command(&mut a).await {
            ShardCommand::Kick { key, reply } => {
                assert_eq!(key, k);
                let _ = reply.send(true);
            }
            other => panic!("expected a kick, got {other:?}"),
        }
        assert_eq!(kick.await.expect("task").expect("kicked"), "a");
        // No such stream anywhere.
        assert!(matches!(
            b.c.kick(&key("live/none")).await,
            Err(RegistryError::NoSuchStream)
        ));
        // A kick request whose payload names no stream is answered "no".
        let answer = b
            .nats
            .request("trib.kick.a".into(), Bytes::from_static(b"../x"))
            .await
            .expect("answer");
        assert_eq!(answer.payload.as_ref(), b"no");
        // Nor does a malformed attach start an export.
        let answer = b
            .nats
            .request("trib.attach.a".into(), Bytes::from_static(b"{"))
            .await
            .expect("answer");
        assert_eq!(answer.payload.as_ref(), br#"{"ok":false}"#);
        assert!(!a.c.owned.borrow()[&k].exporting);
    });
}

#[test]
fn the_clusters_viewers_are_summed_and_a_silent_node_is_named() {
    run(async {
        let bus = Bus::new();
        let a = node(&bus, "a").await;
        let b = node(&bus, "b").await;
        let c = node(&bus, "c").await;
        let k = key("live/one");
        assert!(a.c.s.audience.join(&k, Protocol::Rtmp, 0));
        assert!(b.c.s.audience.join(&k, Protocol::HttpFlv, 0));
        assert!(b.c.s.audience.join(&k, Protocol::LlHls, 0));
        for n in [&a, &b, &c] {
            n.c.refresh().await;
        }
        c.nats.cut_off(true);
        let sums = a.c.viewers().await.expect("viewers");
        assert_eq!(sums.answered, ["a", "b"]);
        assert_eq!(sums.missing, ["c"]);
        assert_eq!(sums.streams[k.as_str()].total(), 3);
        let nodes = a.c.nodes().await.expect("nodes");
        let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    });
}

#[test]
fn the_listing_skips_keys_the_naming_rule_refuses() {
    run(async {
        let bus = Bus::new();
        let a = node(&bus, "a").await;
        claim(&a, &key("live/one"), false).await;
        claim(&a, &key("live/s/t"), false).await;
        // A key written by something else, naming no stream.
        let kv = a.c.streams_kv().expect("kv");
        kv.put("bad..key", Bytes::from_static(b"{}"))
            .await
            .expect("put");
        let listed: Vec<String> =
            a.c.list()
                .await
                .expect("list")
                .into_iter()
                .map(|(k, _)| k.to_string())
                .collect();
        assert_eq!(listed, ["live/one", "live/s/t"]);
    });
}

/// A node's recordings as the index takes them, for these tests.
#[derive(Debug, Default)]
struct Files(std::sync::Mutex<Vec<(StreamKey, Vec<crate::container::record::SegmentInfo>)>>);

impl super::super::RecordingIndex for Files {
    fn take_changed(&self) -> Vec<(StreamKey, Vec<crate::container::record::SegmentInfo>)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn mark_all(&self) {}
    fn path_of(&self, _: &StreamKey, _: &str) -> Option<std::path::PathBuf> {
        None
    }
    fn mark_changed(&self, key: &StreamKey) {
        self.0
            .lock()
            .unwrap()
            .push((key.clone(), vec![file("again.mp4")]));
    }
}

fn file(name: &str) -> crate::container::record::SegmentInfo {
    crate::container::record::SegmentInfo {
        file: name.to_owned(),
        start_ms: 1000,
        duration_ms: 2000,
        bytes: 300,
        open: false,
    }
}

#[test]
fn every_node_reads_a_nodes_recordings_from_the_index() {
    run(async {
        let bus = Bus::new();
        let files = Arc::new(Files::default());
        let nats = bus.client();
        let (tx, _shard) = mpsc::channel(64);
        let mut s = settings("a");
        s.recordings = Some(files.clone());
        let a = Control::new(s, nats, vec![tx], Arc::default());
        a.ensure_buckets().await.expect("buckets");
        let b = node(&bus, "b").await;
        let k = key("live/s/t");
        files
            .0
            .lock()
            .unwrap()
            .push((k.clone(), vec![file("1.mp4"), file("2.mp4")]));
        a.publish_index().await;
        let listed = b.c.indexed(&k).await.expect("index");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, "a");
        let names: Vec<&str> = listed[0].1.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(names, ["1.mp4", "2.mp4"]);
        assert!(b.c.indexed(&key("live/s")).await.expect("index").is_empty());
        // Its files all deleted: the entry lists nothing.
        files.0.lock().unwrap().push((k.clone(), Vec::new()));
        a.publish_index().await;
        assert!(b.c.indexed(&k).await.expect("index").is_empty());
        // NATS away: the change is kept for the next try.
        bus.set_down(true);
        files
            .0
            .lock()
            .unwrap()
            .push((k.clone(), vec![file("3.mp4")]));
        a.publish_index().await;
        assert_eq!(files.0.lock().unwrap().len(), 1, "kept for the next tick");
    });
}

#[test]
fn a_recording_fetched_from_another_node_survives_a_viewer_that_pauses() {
    run(async {
        // The holder's "media listener": one answer of 4 MiB (more than
        // the frames allowed in flight), for one connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let media = listener.local_addr().unwrap();
        const BODY: usize = 4 << 20;
        tokio::task::spawn_local(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let n = s.read(&mut head).await.unwrap();
            let asked = String::from_utf8_lossy(&head[..n]).into_owned();
            assert!(asked.starts_with("GET /recordings/live/cam.mp4?start=x&tributary_internal="));
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
            s.write_all(answer.as_bytes()).await.unwrap();
            s.write_all(&vec![7u8; BODY]).await.unwrap();
        });
        let bus = Bus::new();
        let (tx, _shard) = mpsc::channel(64);
        let mut s = settings("a");
        s.media_addr = Some(media);
        let holder = Control::new(s, bus.client(), vec![tx], Arc::default());
        tokio::task::spawn_local(holder.clone().serve_requests());
        tokio::task::yield_now().await;
        let b = node(&bus, "b").await;
        let (chunks, mut rx) = mpsc::channel(4);
        let c = b.c.clone();
        tokio::task::spawn_local(async move {
            let path = "/recordings/live/cam.mp4?start=x".to_owned();
            c.fetch_recording("a".into(), path, None, chunks).await;
        });
        // The viewer reads nothing for longer than a session may idle.
        tokio::time::sleep(super::recording::SESSION_IDLE + Duration::from_secs(2)).await;
        let mut got = Vec::new();
        while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            got.extend_from_slice(&chunk);
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
        assert_eq!(got.len(), head.len() + BODY, "the answer was cut short");
        assert!(got.starts_with(head.as_bytes()));
    });
}

/// A node's recordings on disk as the index and the store take them: one
/// directory of `live/cam`'s files.
#[derive(Debug)]
struct DiskFiles {
    dir: std::path::PathBuf,
    changed: std::sync::Mutex<Vec<(StreamKey, Vec<crate::container::record::SegmentInfo>)>>,
}

impl super::super::RecordingIndex for DiskFiles {
    fn take_changed(&self) -> Vec<(StreamKey, Vec<crate::container::record::SegmentInfo>)> {
        std::mem::take(&mut *self.changed.lock().unwrap())
    }
    fn mark_all(&self) {}
    fn mark_changed(&self, _: &StreamKey) {}
    fn path_of(&self, key: &StreamKey, file: &str) -> Option<std::path::PathBuf> {
        (key.to_string() == "live/cam").then(|| self.dir.join(file))
    }
}

fn store_settings(node: &str, root: &std::path::Path) -> ClusterSettings {
    let mut s = settings(node);
    s.store = Some(crate::cluster::StoreSettings {
        max_age: Duration::ZERO,
        max_bytes: 0,
        cache: root.join(node).join(".store"),
    });
    s
}

#[test]
fn a_finished_recording_is_copied_to_the_object_store_and_any_node_fetches_it() {
    let root = std::env::temp_dir().join(format!("trib-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("a/live/cam");
    std::fs::create_dir_all(&dir).unwrap();
    let name = "20260101T000000.000Z.mp4";
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(dir.join(name), &body).unwrap();
    run(async {
        let bus = Bus::new();
        let files = Arc::new(DiskFiles {
            dir: dir.clone(),
            changed: Default::default(),
        });
        let mut s = store_settings("a", &root);
        s.recordings = Some(files.clone());
        let (tx, _shard) = mpsc::channel(64);
        let a = Control::new(s, bus.client(), vec![tx], Arc::default());
        a.ensure_buckets().await.expect("buckets");
        a.open_objects().await;
        let k = key("live/cam");
        let listed = vec![file(name)];
        files
            .changed
            .lock()
            .unwrap()
            .push((k.clone(), listed.clone()));
        a.publish_index().await;
        a.store_next();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ClusterStats::get(&a.stats.store_uploads) == 0 {
            assert!(Instant::now() < deadline, "never copied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let objects = a.objects.borrow().clone().unwrap();
        assert_eq!(objects.names(), [format!("a/live=2Fcam/{name}")]);
        // Listed again (a reconnect): not copied again.
        files.changed.lock().unwrap().push((k.clone(), listed));
        a.publish_index().await;
        a.store_next();
        while a.store.busy.get() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ClusterStats::get(&a.stats.store_uploads), 1);

        // Node b, with node a gone: from the store into its cache.
        let (tx, _shard) = mpsc::channel(64);
        let b = Control::new(
            store_settings("b", &root),
            bus.client(),
            vec![tx],
            Arc::default(),
        );
        b.ensure_buckets().await.expect("buckets");
        b.open_objects().await;
        let cache = b
            .fetch_stored(&k, "a", &[name.to_owned()])
            .await
            .expect("fetched");
        assert_eq!(cache, root.join("b/.store/a"));
        assert_eq!(
            std::fs::read(cache.join("live/cam").join(name)).unwrap(),
            body
        );
        // Cached: not fetched again.
        b.fetch_stored(&k, "a", &[name.to_owned()])
            .await
            .expect("cached");
        assert_eq!(ClusterStats::get(&b.stats.store_downloads), 1);

        // Only what a recorder names a file becomes a path.
        for bad in [
            "../../../etc/passwd",
            "x.mp4",
            "20260101T000000.000Z.mp4/../x",
            "",
        ] {
            let e = b
                .fetch_stored(&k, "a", &[bad.to_owned()])
                .await
                .unwrap_err();
            assert!(e.contains("file name"), "{bad:?}: {e}");
        }
        // A node name is one directory, whatever it holds.
        objects.insert(&format!("=2E=2E/live=2Fcam/{name}"), b"dots");
        let cache = b
            .fetch_stored(&k, "..", &[name.to_owned()])
            .await
            .expect("fetched");
        assert_eq!(cache, root.join("b/.store/=2E=2E"));
        // Too many at once, and one the store lacks: refused, nothing left.
        let many = vec![name.to_owned(); crate::cluster::MAX_STORE_FETCH + 1];
        assert!(b.fetch_stored(&k, "a", &many).await.is_err());
        let missing = "20260101T000500.000Z.mp4";
        assert!(b
            .fetch_stored(&k, "a", &[missing.to_owned()])
            .await
            .is_err());
        let left: Vec<_> = std::fs::read_dir(root.join("b/.store/a/live/cam"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [name], "no partial file left");
        // A node with the store off fetches nothing.
        let c = node(&bus, "c").await;
        assert!(c.c.fetch_stored(&k, "a", &[name.to_owned()]).await.is_err());
    });
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_reconnect_tries_named_servers_before_advertised_ones_and_the_least_tried_first() {
    let server = |url: &str, failed_attempts: usize, is_discovered: bool| async_nats::Server {
        addr: url.parse().unwrap(),
        failed_attempts,
        did_connect: true,
        is_discovered,
        last_error: None,
    };
    let pick = |pool: &[async_nats::Server], tries: &mut Tries| {
        next_server(pool, tries)
            .unwrap()
            .addr
            .as_url_str()
            .to_owned()
    };
    assert!(next_server(&[], &mut Tries::new()).is_none());
    // A lost server's advertised address waits behind the names.
    let pool = [
        server("nats://10.0.0.3:4222", 0, true),
        server("nats://nats-1:4222", 0, false),
    ];
    let mut tries = Tries::new();
    assert_eq!(pick(&pool, &mut tries), "nats://nats-1:4222");
    // The name no longer resolves, which the client does not count as a
    // failure: it was tried, so the address comes next, then the name.
    assert_eq!(pick(&pool, &mut tries), "nats://10.0.0.3:4222");
    assert_eq!(pick(&pool, &mut tries), "nats://nats-1:4222");
    // A name the client saw fail waits behind an address that has not.
    let pool = [
        server("nats://10.0.0.3:4222", 0, true),
        server("nats://nats-1:4222", 1, false),
    ];
    assert_eq!(pick(&pool, &mut Tries::new()), "nats://10.0.0.3:4222");
    // Equals are taken at random: both come up.
    let pool = [
        server("nats://nats-1:4222", 0, false),
        server("nats://nats-2:4222", 0, false),
        server("nats://10.0.0.3:4222", 0, true),
    ];
    let picks: std::collections::HashSet<String> =
        (0..200).map(|_| pick(&pool, &mut Tries::new())).collect();
    assert_eq!(
        picks,
        ["nats://nats-1:4222", "nats://nats-2:4222"]
            .map(String::from)
            .into()
    );
}
