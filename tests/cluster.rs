//! The cluster end to end: several `tributary` nodes on loopback sharing a
//! real `nats-server` (JetStream on), with real clients. A stream published
//! on one node plays on the others; the registry keeps a key unique
//! cluster-wide; a killed owner's players are told and resume on the next
//! publisher anywhere; a node relays a stream once however many players it
//! has.

use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    check_recording, ffmpeg_player, get, publish, temp_file, wait_live, LibPlayer, NatsServer, Node,
};
use tributary::protocol::client::ClientEvent;
use tributary::protocol::MessageType;

fn cluster_node(nats: &NatsServer, id: &str, shards: usize, extra: &[&str]) -> Node {
    let url = nats.url();
    let mut args = vec!["--node-id", id, "--nats", &url];
    args.extend_from_slice(extra);
    let node = Node::start_with(shards, &args);
    // Connected and the registry open: the node answers a cluster listing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(node.http, "/api/streams?scope=cluster").0 != "HTTP/1.1 200 OK" {
        assert!(
            Instant::now() < deadline,
            "node {id} never reached the registry:\n{}",
            node.log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(50));
    }
    node
}

/// Sum of a metric over its label sets (shards), from /metrics.
fn metric(node: &Node, name: &str) -> u64 {
    let (_, body) = get(node.http, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn media_count(events: &[ClientEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Media(_)))
        .count()
}

fn has_status(events: &[ClientEvent], code: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ClientEvent::Status { code: c, .. } if c == code))
}

#[test]
fn published_on_one_node_plays_on_the_others_and_stays_unique() {
    let nats = NatsServer::start("plays");
    let a = cluster_node(&nats, "a", 1, &[]);
    let b = cluster_node(&nats, "b", 2, &[]);
    let c = cluster_node(&nats, "c", 1, &[]);
    let publisher = publish(&a.url("cam"), 12);
    wait_live(&a.url("cam"));

    // Two players on B (both shards, likely) and one on C, at once.
    let files: Vec<_> = (0..3)
        .map(|i| temp_file(&format!("cluster-play-{i}.flv")))
        .collect();
    let players = [
        ffmpeg_player(&b.url("cam"), &files[0], Some(4)),
        ffmpeg_player(&b.url("cam"), &files[1], Some(4)),
        ffmpeg_player(&c.url("cam"), &files[2], Some(4)),
    ];

    // Every node sees the stream in the registry, owned by A.
    let (status, body) = get(c.http, "/api/streams?scope=cluster");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let streams = v["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "{body}");
    assert_eq!(streams[0]["node"], "a", "{body}");
    assert_eq!(streams[0]["name"], "cam", "{body}");

    // A second publisher of the same key on B is refused.
    let dup = publish(&b.url("cam"), 2);
    assert!(
        dup.wait(Duration::from_secs(20)).is_err(),
        "a duplicate publish on another node was accepted"
    );
    assert!(metric(&b, "tributary_registry_conflicts_total") >= 1);

    for p in players {
        p.wait(Duration::from_secs(40)).unwrap();
    }
    for f in &files {
        check_recording(f, 75);
    }
    assert!(metric(&b, "tributary_snapshots_total") >= 1);
    publisher.wait(Duration::from_secs(40)).unwrap();
}

#[test]
fn when_the_owner_is_killed_players_are_told_and_resume_on_a_new_publisher() {
    let config = temp_file("cluster-failover.toml");
    std::fs::write(
        &config,
        "[streams]\non_unpublish = \"wait\"\nunpublish_wait_timeout_ms = 30000\n\
         [cluster]\nregistry_ttl_ms = 3000\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let nats = NatsServer::start("failover");
    let mut a = cluster_node(&nats, "a", 1, &["--config", config]);
    let b = cluster_node(&nats, "b", 2, &["--config", config]);
    let c = cluster_node(&nats, "c", 1, &["--config", config]);
    let _first = publish(&a.url("fail"), 60);
    wait_live(&a.url("fail"));
    let player = LibPlayer::start(b.addr, "fail");
    player.wait_for("media relayed from A", |e| media_count(e) > 30);

    a.child.kill().unwrap(); // SIGKILL: no goodbye to anyone.
    let killed = Instant::now();
    player.wait_for("UnpublishNotify", |e| {
        has_status(e, "NetStream.Play.UnpublishNotify")
    });
    let told = killed.elapsed();
    eprintln!("players on B told {told:?} after A was killed");
    // The bound: one refresh interval plus the registry TTL (1 s + 3 s).
    assert!(told < Duration::from_secs(4), "players told after {told:?}");

    // A's registry entry goes (deleted by the first node that finds A
    // gone, or expired by the TTL).
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let (_, body) = get(b.http, "/api/streams?scope=cluster");
        if !body.contains("\"fail\"") {
            break;
        }
        assert!(Instant::now() < deadline, "entry still there: {body}");
        thread::sleep(Duration::from_millis(100));
    }

    let before = player.events.lock().unwrap().len();
    let second = publish(&c.url("fail"), 5);
    player.wait_for("PublishNotify", |e| {
        has_status(&e[before..], "NetStream.Play.PublishNotify")
    });
    player.wait_for("media relayed from C", |e| media_count(&e[before..]) > 30);
    second.wait(Duration::from_secs(30)).unwrap();

    let events = player.events.lock().unwrap();
    let video: Vec<_> = events[before..]
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Media(m) if m.type_id == MessageType::VIDEO => Some(m),
            _ => None,
        })
        .collect();
    use tributary::protocol::media::{classify_video, PacketKind};
    assert_eq!(
        classify_video(&video[0].payload).unwrap().kind,
        PacketKind::SequenceHeader,
        "a fresh sequence header first"
    );
    assert!(
        classify_video(&video[1].payload).unwrap().keyframe,
        "then a keyframe"
    );
    assert!(
        video.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
        "timestamps after the resume are monotonic"
    );
}

#[test]
fn a_hundred_players_on_one_node_cost_the_owner_one_relay_stream() {
    let nats = NatsServer::start("fanout");
    let a = cluster_node(&nats, "a", 1, &[]);
    let b = cluster_node(&nats, "b", 2, &[]);
    let publisher = publish(&a.url("many"), 10);
    wait_live(&a.url("many"));
    let players: Vec<LibPlayer> = (0..100).map(|_| LibPlayer::start(b.addr, "many")).collect();
    for p in &players {
        p.wait_for("media on every player", |e| media_count(e) > 40);
    }
    assert_eq!(metric(&b, "tributary_relayed_streams"), 1);
    assert_eq!(metric(&a, "tributary_exported_streams"), 1);
    publisher.wait(Duration::from_secs(40)).unwrap();

    // A sent the stream to NATS once: its NATS bytes out are about what its
    // publisher sent it (plus framing and one snapshot), not 100 times that.
    let ingest = metric(&a, "tributary_bytes_in_total");
    let relayed = metric(&a, "tributary_nats_bytes_out_total");
    eprintln!("A: {ingest} bytes in, {relayed} bytes to NATS for 100 players on B");
    assert!(ingest > 100_000, "publisher sent {ingest} bytes");
    assert!(
        relayed < ingest * 3 / 2,
        "A sent {relayed} bytes to NATS for {ingest} bytes in"
    );
    let received = metric(&b, "tributary_nats_bytes_in_total");
    assert!(
        received < ingest * 3 / 2,
        "B took {received} bytes from NATS for {ingest} bytes published"
    );
}
