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
    check_recording, cluster_node, ffmpeg_player, get, has_status, longest_stall, media_count,
    publish, temp_file, wait_live, LibPlayer, NatsServer, Node,
};
use tributary::protocol::client::ClientEvent;
use tributary::protocol::MessageType;

/// Sum of a metric over its label sets (shards), from /metrics.
fn metric(node: &Node, name: &str) -> u64 {
    let (_, body) = get(node.http, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
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

    // Every node sees the stream in the registry, owned by A, and soon
    // what it carries.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(c.http, "/api/streams?scope=cluster");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let streams = v["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 1, "{body}");
        assert_eq!(streams[0]["node"], "a", "{body}");
        assert_eq!(streams[0]["name"], "cam", "{body}");
        if streams[0]["video_codec"] == "h264"
            && streams[0]["audio_codec"] == "aac"
            && streams[0]["bitrate_kbps"].as_u64().unwrap_or(0) > 20
        {
            break;
        }
        assert!(Instant::now() < deadline, "no codecs or bitrate: {body}");
        thread::sleep(Duration::from_millis(100));
    }

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
    let (_, nodes) = get(c.http, "/api/nodes");
    for id in ["a", "b", "c"] {
        assert!(nodes.contains(&format!("\"node\":\"{id}\"")), "{nodes}");
    }

    // A stops (SIGTERM) while publishing: its entry is deleted on the way
    // out, not left to expire.
    let mut a = a;
    let status = a.stop().expect("A stops on SIGTERM");
    assert!(status.success(), "A exit status {status}");
    let (_, body) = get(c.http, "/api/streams?scope=cluster");
    assert!(!body.contains("\"cam\""), "entry left behind: {body}");
    drop(publisher);
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

#[test]
fn losing_one_server_of_a_three_server_nats_cluster_keeps_streams_flowing() {
    let servers = common::nats_cluster("tri");
    let config = temp_file("cluster-tri.toml");
    std::fs::write(&config, "[cluster]\nkv_replicas = 3\n").unwrap();
    let config = config.to_str().unwrap();
    // A knows only the server that will die; it finds the others through
    // the cluster's gossip, as clients of a NATS cluster do.
    let a = cluster_node(&servers[0], "a", 1, &["--config", config]);
    let b = cluster_node(&servers[1], "b", 2, &["--config", config]);
    let publisher = publish(&a.url("tri"), 25);
    wait_live(&a.url("tri"));
    let player = LibPlayer::start(b.addr, "tri");
    player.wait_for("media relayed from A", |e| media_count(e) > 30);

    let mut servers = servers;
    drop(servers.remove(0)); // killed: A's server
    let stall = longest_stall(&player, Duration::from_secs(6));
    eprintln!("longest stall on B's player across the NATS server loss: {stall:?}");
    assert!(stall <= Duration::from_secs(2), "media stalled {stall:?}");
    assert!(
        !has_status(
            &player.events.lock().unwrap(),
            "NetStream.Play.UnpublishNotify"
        ),
        "the stream was ended"
    );
    assert!(
        metric(&a, "tributary_nats_connects_total") >= 2,
        "A reconnected"
    );
    // The registry survived (once JetStream has a new leader for it) with
    // the stream still owned by A.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = get(b.http, "/api/streams?scope=cluster");
        if body.contains("\"node\":\"a\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "registry lost the stream: {body}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    drop(publisher);
}

#[test]
fn without_nats_local_streams_work_and_the_registry_is_rebuilt_when_it_returns() {
    let nats = NatsServer::start("down");
    let port = nats.port.to_string();
    let a = cluster_node(&nats, "a", 2, &[]);
    let b = cluster_node(&nats, "b", 1, &[]);
    drop(nats);
    for node in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(node, "tributary_nats_connected") != 0 {
            assert!(Instant::now() < deadline, "NATS loss never noticed");
            thread::sleep(Duration::from_millis(50));
        }
    }
    // Publishing and playing on one node need no NATS.
    let solo = publish(&a.url("solo"), 20);
    wait_live(&a.url("solo"));
    let file = temp_file("cluster-solo.flv");
    ffmpeg_player(&a.url("solo"), &file, Some(3))
        .wait(Duration::from_secs(30))
        .unwrap();
    check_recording(&file, 50);
    // Meanwhile both nodes take the same key: a conflict for later.
    let on_a = publish(&a.url("both"), 20);
    let on_b = publish(&b.url("both"), 20);
    wait_live(&a.url("both"));
    wait_live(&b.url("both"));

    // NATS returns (empty: the registry was in its memory): each node
    // registers what it owns, and one of the two "both" publishers wins.
    let _nats = NatsServer::start_with("down-again", &["-p", &port]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let owner = loop {
        let (_, body) = get(b.http, "/api/streams?scope=cluster");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let streams = v["streams"].as_array().cloned().unwrap_or_default();
        let find = |name: &str| {
            streams
                .iter()
                .find(|s| s["name"] == name)
                .map(|s| s["node"].as_str().unwrap_or("").to_owned())
        };
        if let (Some(solo), Some(both)) = (find("solo"), find("both")) {
            assert_eq!(solo, "a");
            break both;
        }
        assert!(Instant::now() < deadline, "registry not rebuilt: {body}");
        thread::sleep(Duration::from_millis(100));
    };
    // The rule: the entry registered first wins; the other node closes
    // its publisher (ffmpeg sees the connection end and fails).
    let (winner, loser) = if owner == "a" {
        (on_a, on_b)
    } else {
        (on_b, on_a)
    };
    assert!(
        loser.wait(Duration::from_secs(20)).is_err(),
        "the losing publisher kept publishing"
    );
    let conflicts = metric(&a, "tributary_registry_conflicts_total")
        + metric(&b, "tributary_registry_conflicts_total");
    assert!(conflicts >= 1);
    drop(winner);
    drop(solo);
}

#[test]
fn with_takeover_a_publish_on_another_node_fences_the_old_one() {
    let config = temp_file("cluster-takeover.toml");
    std::fs::write(
        &config,
        "[streams]\nduplicate_publish = \"takeover\"\n[cluster]\nregistry_ttl_ms = 3000\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let nats = NatsServer::start("takeover");
    let a = cluster_node(&nats, "a", 1, &["--config", config]);
    let b = cluster_node(&nats, "b", 1, &["--config", config]);
    let old = publish(&a.url("move"), 30);
    wait_live(&a.url("move"));
    let new = publish(&b.url("move"), 30);
    let started = Instant::now();
    // The old owner stops within one refresh interval (1 s) of the new
    // entry, plus ffmpeg noticing.
    assert!(
        old.wait(Duration::from_secs(10)).is_err(),
        "the fenced publisher kept publishing"
    );
    eprintln!(
        "old publisher cut {:?} after the takeover",
        started.elapsed()
    );
    // The cluster listing names B (polled: on a loaded machine one listing
    // may time out, and the next answers).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = get(a.http, "/api/streams?scope=cluster");
        if body.contains("\"node\":\"b\"") {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // And a player on A now gets B's stream.
    let file = temp_file("cluster-takeover.flv");
    ffmpeg_player(&a.url("move"), &file, Some(3))
        .wait(Duration::from_secs(30))
        .unwrap();
    check_recording(&file, 50);
    drop(new);
}

#[test]
fn with_credentials_and_a_small_max_payload_frames_are_split_and_joined() {
    // A server that asks for a password and takes 8 KiB messages at most:
    // most video frames cross it in several parts.
    let conf = temp_file("nats-auth.conf");
    std::fs::write(
        &conf,
        "max_payload: 8192\nauthorization { user: tri, password: s3cret }\n",
    )
    .unwrap();
    let nats = NatsServer::start_with("auth", &["-c", conf.to_str().unwrap()]);
    let good = temp_file("cluster-auth.toml");
    std::fs::write(&good, "[cluster]\nuser = \"tri\"\npassword = \"s3cret\"\n").unwrap();
    let good = good.to_str().unwrap();
    let a = cluster_node(&nats, "a", 1, &["--config", good]);
    let b = cluster_node(&nats, "b", 2, &["--config", good]);

    let publisher = publish(&a.url("split"), 8);
    wait_live(&a.url("split"));
    let file = temp_file("cluster-split.flv");
    ffmpeg_player(&b.url("split"), &file, Some(4))
        .wait(Duration::from_secs(30))
        .unwrap();
    check_recording(&file, 75);
    let frames = metric(&b, "tributary_nats_messages_in_total");
    assert!(
        frames > 150,
        "{frames} NATS messages: frames were not split"
    );
    assert_eq!(metric(&b, "tributary_relay_gaps_total"), 0);

    // A wrong password: the node runs, standalone in effect, and says so.
    let bad = temp_file("cluster-auth-bad.toml");
    std::fs::write(&bad, "[cluster]\nuser = \"tri\"\npassword = \"wrong\"\n").unwrap();
    let url = nats.url();
    let c = Node::start_with(
        1,
        &[
            "--node-id",
            "c",
            "--nats",
            &url,
            "--config",
            bad.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c
        .log
        .lock()
        .unwrap()
        .to_lowercase()
        .contains("authorization")
    {
        assert!(
            Instant::now() < deadline,
            "no authorization error logged:\n{}",
            c.log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&c, "tributary_nats_connected"), 0);
    drop(publisher);
}

/// The coded video frames a player got: timestamp and whether a keyframe
/// (sequence headers and end-of-sequence left out).
fn video_timeline(player: &LibPlayer) -> Vec<(u32, bool)> {
    use tributary::protocol::media::{classify_video, PacketKind};
    player
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Media(m) if m.type_id == MessageType::VIDEO => {
                let info = classify_video(&m.payload).ok()?;
                (info.kind == PacketKind::Frame).then_some((m.timestamp, info.keyframe))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_relayed_stream_has_no_gap_and_no_duplicate() {
    let nats = NatsServer::start("splice");
    let a = cluster_node(&nats, "a", 1, &[]);
    let b = cluster_node(&nats, "b", 1, &[]);
    let publisher = publish(&a.url("exact"), 6);
    wait_live(&a.url("exact"));
    let local = LibPlayer::start(a.addr, "exact");
    let remote = LibPlayer::start(b.addr, "exact");
    for p in [&local, &remote] {
        p.wait_for("the end of the stream", |e| {
            has_status(e, "NetStream.Play.UnpublishNotify")
        });
    }
    publisher.wait(Duration::from_secs(30)).unwrap();
    let local = video_timeline(&local);
    let remote = video_timeline(&remote);
    // Both start on a keyframe; from the later start on, the relayed
    // player saw exactly what the local one saw.
    assert!(local.first().is_some_and(|f| f.1) && remote.first().is_some_and(|f| f.1));
    let from = local[0].0.max(remote[0].0);
    let tail = |v: &[(u32, bool)]| {
        v.iter()
            .filter(|f| f.0 >= from)
            .copied()
            .collect::<Vec<_>>()
    };
    let (l, r) = (tail(&local), tail(&remote));
    assert!(r.len() > 75, "{} frames relayed", r.len());
    assert_eq!(l, r, "relayed timeline differs from the local one");
    let bad: Vec<_> = r.windows(2).filter(|w| w[0].0 >= w[1].0).collect();
    assert!(
        bad.is_empty(),
        "duplicate or reordered frames: {bad:?} in {r:?}"
    );
}

#[test]
fn an_operator_kicks_a_publisher_on_another_node_with_the_admin_token() {
    let config = temp_file("cluster-kick.toml");
    std::fs::write(&config, "[http]\nadmin_token = \"t0ken-for-tests\"\n").unwrap();
    let config = config.to_str().unwrap();
    let nats = NatsServer::start("kick");
    let a = Node::start_with(
        1,
        &["--node-id", "a", "--nats", &nats.url(), "--config", config],
    );
    let b = Node::start_with(
        1,
        &["--node-id", "b", "--nats", &nats.url(), "--config", config],
    );
    let publisher = publish(&a.url("kickme"), 30);
    wait_live(&a.url("kickme"));
    let token = Some("t0ken-for-tests");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !common::http(b.http, "GET", "/api/streams?scope=cluster", token)
        .1
        .contains("kickme")
    {
        assert!(Instant::now() < deadline, "never registered");
        thread::sleep(Duration::from_millis(100));
    }

    // Without the token (or a wrong one) the API says no; metrics stay open.
    let path = "/api/streams/live/kickme";
    assert_eq!(
        common::http(b.http, "DELETE", path, None).0,
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        common::http(b.http, "DELETE", path, Some("wrong")).0,
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        common::http(b.http, "GET", "/api/streams", None).0,
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(get(b.http, "/metrics").0, "HTTP/1.1 200 OK");

    // Asked on B, done on A.
    let (status, body) = common::http(b.http, "DELETE", path, token);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("\"node\":\"a\""), "{body}");
    assert!(
        publisher.wait(Duration::from_secs(10)).is_err(),
        "the kicked publisher went on"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::http(b.http, "GET", "/api/streams?scope=cluster", token)
        .1
        .contains("kickme")
    {
        assert!(Instant::now() < deadline, "entry left after the kick");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        common::http(a.http, "DELETE", path, token).0,
        "HTTP/1.1 404 Not Found"
    );
}

#[test]
fn a_takeover_on_the_owner_node_restarts_players_on_other_nodes() {
    let config = temp_file("cluster-owner-takeover.toml");
    std::fs::write(&config, "[streams]\nduplicate_publish = \"takeover\"\n").unwrap();
    let config = config.to_str().unwrap();
    let nats = NatsServer::start("owner-takeover");
    let a = cluster_node(&nats, "a", 2, &["--config", config]);
    let b = cluster_node(&nats, "b", 2, &["--config", config]);
    let first = publish(&a.url("swap"), 30);
    wait_live(&a.url("swap"));
    let player = LibPlayer::start(b.addr, "swap");
    player.wait_for("media relayed from A", |e| media_count(e) > 30);
    let before = player.events.lock().unwrap().len();

    let second = publish(&a.url("swap"), 6);
    player.wait_for("PublishNotify for the new publisher", |e| {
        has_status(&e[before..], "NetStream.Play.PublishNotify")
    });
    player.wait_for("media of the new publisher", |e| {
        media_count(&e[before..]) > 60
    });
    assert!(
        first.wait(Duration::from_secs(10)).is_err(),
        "the old publisher went on"
    );
    second.wait(Duration::from_secs(30)).unwrap();
}

/// A CA and a server certificate for 127.0.0.1 signed by it (openssl).
fn test_ca_and_server_cert() -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_file("nats-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is required");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "srv.crt",
    ]);
    (dir.join("ca.crt"), dir.join("srv.crt"), dir.join("srv.key"))
}

#[test]
fn nodes_reach_nats_over_tls_with_the_configured_ca() {
    let (ca, cert, key) = test_ca_and_server_cert();
    let nats = NatsServer::start_with(
        "tls",
        &[
            "--tls",
            "--tlscert",
            cert.to_str().unwrap(),
            "--tlskey",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let trusting = temp_file("cluster-tls.toml");
    std::fs::write(
        &trusting,
        format!("[cluster]\ntls_ca_file = \"{}\"\n", ca.display()),
    )
    .unwrap();
    let a = Node::start_with(
        1,
        &[
            "--node-id",
            "a",
            "--nats",
            &url,
            "--config",
            trusting.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(a.http, "/api/streams?scope=cluster").0 != "HTTP/1.1 200 OK" {
        assert!(
            Instant::now() < deadline,
            "no registry over TLS:\n{}",
            a.log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&a, "tributary_nats_connected"), 1);
    // Without the CA the server's certificate is not trusted: the
    // handshake fails (async-nats reports it as an IO error) and the node
    // never connects.
    let b = Node::start_with(1, &["--node-id", "b", "--nats", &url]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.log.lock().unwrap().contains("NATS client error") {
        assert!(
            Instant::now() < deadline,
            "no NATS error logged:\n{}",
            b.log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&b, "tributary_nats_connected"), 0);
    assert!(!b.log.lock().unwrap().contains("NATS connected"));
}
