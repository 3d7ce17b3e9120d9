//! The `tributary` binary end to end, with real clients: ffmpeg publishes;
//! ffmpeg, rtmpdump and GStreamer play from a two-shard node, so players
//! land on both shards and streams are relayed across the shard mesh.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    auth_service, check_recording, ffmpeg_player, get, publish, self_signed, temp_file, wait_live,
    LibPlayer, Node, Proc,
};

#[test]
fn ffmpeg_publishes_and_four_ffmpeg_players_on_two_shards_play() {
    let node = Node::start(2);
    let url = node.url("cam");
    let publisher = publish(&url, 10);
    wait_live(&url);
    let players: Vec<_> = (0..4)
        .map(|i| {
            let file = temp_file(&format!("node-ffmpeg-{i}.flv"));
            (ffmpeg_player(&url, &file, Some(3)), file)
        })
        .collect();
    for (player, file) in players {
        player
            .wait(Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{e}\nnode log:\n{}", node.log.lock().unwrap()));
        check_recording(&file, 50);
    }
    publisher.wait(Duration::from_secs(40)).unwrap();
}

#[test]
fn rtmpdump_and_gstreamer_play_until_the_publisher_leaves() {
    let node = Node::start(2);
    let url = node.url("both");
    let publisher = publish(&url, 6);
    wait_live(&url);
    let gst_file = temp_file("node-gst.flv");
    // No duration: GStreamer ends only when the node says the stream ended.
    let gst = Proc::spawn(
        "gst-launch-1.0",
        Command::new("gst-launch-1.0").args(["-q", "-e"]).args(
            format!(
                "rtmp2src location={url} timeout=5 ! flvdemux name=d \
                 d.video ! queue ! h264parse ! mux. d.audio ! queue ! aacparse ! mux. \
                 flvmux name=mux streamable=true ! filesink location={}",
                gst_file.display()
            )
            .split_whitespace(),
        ),
    );
    let dump_file = temp_file("node-rtmpdump.flv");
    let dump = Proc::spawn(
        "rtmpdump",
        Command::new("rtmpdump")
            .args(["-q", "--live", "-r", &url, "-o"])
            .arg(&dump_file),
    );
    publisher.wait(Duration::from_secs(40)).unwrap();
    gst.wait(Duration::from_secs(20)).unwrap();
    if let Err(e) = dump.wait(Duration::from_secs(20)) {
        assert!(e.contains("exit status: 2"), "{e}");
    }
    check_recording(&gst_file, 50);
    check_recording(&dump_file, 50);
}

#[test]
fn duplicate_publish_refused_unknown_play_not_found_garbage_closed() {
    let mut node = Node::start(2);
    let url = node.url("dup");
    let first = publish(&url, 15);
    wait_live(&url);
    let second = publish(&url, 2);
    assert!(
        second.wait(Duration::from_secs(20)).is_err(),
        "second publisher was accepted"
    );

    // The admin plane sees the stream, the publisher and the traffic.
    assert_eq!(get(node.http, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(get(node.http, "/readyz").0, "HTTP/1.1 200 OK");
    let (_, streams) = get(node.http, "/api/streams");
    assert!(streams.contains("\"name\":\"dup\""), "{streams}");
    let (_, metrics) = get(node.http, "/metrics");
    let publishers: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tributary_publishers{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(publishers, 1, "{metrics}");
    assert!(
        metrics.contains("tributary_bytes_in_total{shard="),
        "{metrics}"
    );
    assert_eq!(get(node.http, "/nope").0, "HTTP/1.1 404 Not Found");

    let none = ffmpeg_player(&node.url("nobody"), &temp_file("node-none.flv"), Some(1));
    assert!(
        none.wait(Duration::from_secs(20)).is_err(),
        "playing an unknown key succeeded"
    );

    // A client that sends nonsense is closed; the node keeps serving.
    let mut junk = TcpStream::connect(node.addr).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    junk.write_all(&[3]).unwrap();
    junk.write_all(&[0xAB; 1536 * 2]).unwrap();
    // A type-1 header on a chunk stream that never had a type-0 one.
    junk.write_all(&[0x43, 0, 0, 0, 0, 0, 8, 9]).unwrap();
    let mut sink = Vec::new();
    let _ = junk.read_to_end(&mut sink);
    let file = temp_file("node-after-junk.flv");
    ffmpeg_player(&url, &file, Some(2))
        .wait(Duration::from_secs(30))
        .unwrap();
    check_recording(&file, 25);

    first.wait(Duration::from_secs(40)).unwrap();
    let status = node.stop().expect("node stops on SIGTERM");
    assert!(status.success(), "exit status {status}");
    let log = node.log.lock().unwrap();
    assert!(
        log.contains("connection closed"),
        "the bad client is logged:\n{log}"
    );
    assert!(
        !log.contains("live/dup"),
        "a stream key was logged in clear:\n{log}"
    );
}

#[test]
fn sigterm_ends_players_and_exits_promptly() {
    let mut node = Node::start(2);
    let url = node.url("shutdown");
    let publisher = publish(&url, 30);
    wait_live(&url);
    let file = temp_file("node-shutdown.flv");
    // No duration: this player ends only when the node ends the stream.
    let player = ffmpeg_player(&url, &file, None);
    // Wait until this player is receiving (its recording grows).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < 50_000 {
        assert!(Instant::now() < deadline, "the player never received media");
        thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let status = node.stop().expect("node stops within 10 s of SIGTERM");
    assert!(
        status.success(),
        "exit status {status}\n{}",
        node.log.lock().unwrap()
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    // ffmpeg ends its recording cleanly on UnpublishNotify / end of stream.
    player.wait(Duration::from_secs(15)).unwrap();
    check_recording(&file, 10);
    drop(publisher);
}

/// Sum of a metric over its shards (and other labels) in a scrape.
fn metric(node: &Node, name: &str, label: &str) -> u64 {
    let (_, text) = get(node.http, "/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_player_that_stops_reading_loses_frames_then_is_cut() {
    use tributary::protocol::client::{ClientConfig, ClientEvent, ClientSession, Role};

    let config = temp_file("slow.toml");
    std::fs::write(
        &config,
        "[players]\nqueue_max_bytes = 65536\nmax_lag_ms = 1500\n",
    )
    .unwrap();
    let node = Node::start_with(1, &["--config", config.to_str().unwrap()]);
    let url = node.url("slow");
    let publisher = common::publish_lossless(&url);
    wait_live(&url);

    // A real RTMP player with a tiny receive buffer that stops reading as
    // soon as the server says Play.Start.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&node.addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let tc_url = format!("rtmp://{}/live", node.addr);
    let mut client =
        ClientSession::new(ClientConfig::new(Role::Play, &tc_url, "live", "slow"), 0, 1);
    let mut buf = vec![0u8; 4096];
    let mut out = bytes::BytesMut::new();
    let mut playing = false;
    while !playing {
        out.clear();
        client.poll_transmit(&mut out);
        stream.write_all(&out).unwrap();
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before Play.Start");
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let used = client.handle_input(rest).unwrap();
            rest = &rest[used..];
            while let Some(e) = client.poll_event() {
                playing |= matches!(e, ClientEvent::PlayStarted { .. });
            }
        }
    }
    out.clear();
    client.poll_transmit(&mut out);
    stream.write_all(&out).unwrap();

    let deadline = Instant::now() + Duration::from_secs(25);
    while metric(&node, "tributary_slow_players_disconnected_total", "") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stalled player was never cut:\n{}\n{}",
            node.log.lock().unwrap(),
            get(node.http, "/metrics").1
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&node, "tributary_dropped_frames_total", "slow_player") > 0);
    // Every player that left was counted out (ffprobe's deleteStream too).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "tributary_players", "") != 0 {
        assert!(
            Instant::now() < deadline,
            "players gauge never returned to 0"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // The node ends the stalled connection: reading what is left ends in EOF
    // (or a reset), not in a timeout.
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut sink = Vec::new();
    if let Err(e) = stream.read_to_end(&mut sink) {
        assert_ne!(
            e.kind(),
            std::io::ErrorKind::WouldBlock,
            "connection left open"
        );
    }
    drop(publisher);
}

#[test]
fn players_waiting_for_a_key_start_when_it_is_published() {
    let config = temp_file("play-wait.toml");
    std::fs::write(
        &config,
        "[streams]\nplay_unknown = \"wait\"\nplay_wait_timeout_ms = 20000\n",
    )
    .unwrap();
    let node = Node::start_with(2, &["--config", config.to_str().unwrap()]);
    let url = node.url("later");
    // Three players before any publisher: on both shards, most likely.
    let players: Vec<_> = (0..3)
        .map(|i| {
            let file = temp_file(&format!("node-wait-{i}.flv"));
            (ffmpeg_player(&url, &file, Some(3)), file)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&node, "tributary_players", "") < 3 {
        assert!(Instant::now() < deadline, "players did not park");
        thread::sleep(Duration::from_millis(50));
    }
    let publisher = publish(&url, 8);
    for (player, file) in players {
        player.wait(Duration::from_secs(40)).unwrap();
        check_recording(&file, 50);
    }
    publisher.wait(Duration::from_secs(40)).unwrap();
}

#[test]
fn with_unpublish_wait_a_player_resumes_on_the_next_publisher() {
    use tributary::protocol::client::ClientEvent;
    use tributary::protocol::media::{classify_video, PacketKind};

    let config = temp_file("unpublish-wait.toml");
    std::fs::write(
        &config,
        "[streams]\non_unpublish = \"wait\"\nunpublish_wait_timeout_ms = 20000\n",
    )
    .unwrap();
    let node = Node::start_with(2, &["--config", config.to_str().unwrap()]);
    let url = node.url("again");
    let first = publish(&url, 3);
    wait_live(&url);
    let player = LibPlayer::start(node.addr, "again");
    let media = |e: &[ClientEvent]| {
        e.iter()
            .filter(|e| matches!(e, ClientEvent::Media(_)))
            .count()
    };
    player.wait_for("media", |e| media(e) > 20);
    first.wait(Duration::from_secs(30)).unwrap();
    let status = |code: &'static str| {
        move |e: &[ClientEvent]| {
            e.iter()
                .any(|e| matches!(e, ClientEvent::Status { code: c, .. } if c == code))
        }
    };
    player.wait_for("UnpublishNotify", status("NetStream.Play.UnpublishNotify"));
    let before = player.events.lock().unwrap().len();

    let second = publish(&url, 3);
    player.wait_for("PublishNotify", status("NetStream.Play.PublishNotify"));
    player.wait_for("media from the second publisher", |e| {
        media(&e[before..]) > 20
    });
    second.wait(Duration::from_secs(30)).unwrap();

    let events = player.events.lock().unwrap();
    let after: Vec<_> = events[before..]
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Media(m) if m.type_id == tributary::protocol::MessageType::VIDEO => {
                Some(m)
            }
            _ => None,
        })
        .collect();
    let first_video = classify_video(&after[0].payload).unwrap();
    assert_eq!(
        first_video.kind,
        PacketKind::SequenceHeader,
        "fresh sequence header first"
    );
    assert!(
        classify_video(&after[1].payload).unwrap().keyframe,
        "then a keyframe"
    );
}

#[test]
fn a_second_publisher_takes_a_live_key_over() {
    use tributary::protocol::client::ClientEvent;
    use tributary::protocol::media::{classify_video, PacketKind};

    let config = temp_file("takeover.toml");
    std::fs::write(&config, "[streams]\nduplicate_publish = \"takeover\"\n").unwrap();
    let node = Node::start_with(2, &["--config", config.to_str().unwrap()]);
    let url = node.url("takeme");
    let first = publish(&url, 30);
    wait_live(&url);
    let player = LibPlayer::start(node.addr, "takeme");
    let media = |e: &[ClientEvent]| {
        e.iter()
            .filter(|e| matches!(e, ClientEvent::Media(_)))
            .count()
    };
    player.wait_for("media", |e| media(e) > 20);
    let before = player.events.lock().unwrap().len();

    // The reconnecting encoder: the old one is cut, the player follows.
    let second = publish(&url, 4);
    let err = first.wait(Duration::from_secs(20)).unwrap_err();
    assert!(err.contains("failed"), "{err}");
    player.wait_for("PublishNotify", |e| {
        e[before..].iter().any(|e| matches!(e, ClientEvent::Status { code, .. } if code == "NetStream.Play.PublishNotify"))
    });
    player.wait_for("media from the new publisher", |e| media(&e[before..]) > 20);
    second.wait(Duration::from_secs(30)).unwrap();
    let events = player.events.lock().unwrap();
    let notify = before
        + events[before..]
            .iter()
            .position(|e| matches!(e, ClientEvent::Status { code, .. } if code == "NetStream.Play.PublishNotify"))
            .unwrap();
    let video: Vec<_> = events[notify..]
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Media(m) if m.type_id == tributary::protocol::MessageType::VIDEO => {
                Some(m)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        classify_video(&video[0].payload).unwrap().kind,
        PacketKind::SequenceHeader
    );
    assert!(classify_video(&video[1].payload).unwrap().keyframe);
}

fn run_to_exit(shell: &str) -> (i32, String) {
    let out = Command::new("bash").args(["-c", shell]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn startup_errors_name_their_cause() {
    let bin = env!("CARGO_BIN_EXE_tributary");
    let (code, err) = run_to_exit(&format!(
        "ulimit -l 64 && exec {bin} --rtmp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0"
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("RLIMIT_MEMLOCK") && err.contains("LimitMEMLOCK"),
        "{err}"
    );

    let bad = temp_file("bad.toml");
    std::fs::write(&bad, "[rtmp]\nchunk_size = 7\n").unwrap();
    let (code, err) = run_to_exit(&format!("exec {bin} --config {}", bad.display()));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rtmp.chunk_size"), "{err}");

    let (code, err) = run_to_exit(&format!("exec {bin} --shards two"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--shards"), "{err}");

    let (code, out) = {
        let o = Command::new(bin).arg("--help").output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--rtmp-listen",
        "--http-listen",
        "--node-id",
        "--nats",
        "--shards",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn stream_keys_and_signed_tokens_are_checked() {
    use tributary::auth::{sign, Action};
    let keys = temp_file("auth-keys.txt");
    std::fs::write(&keys, "filekey\n").unwrap();
    let secret = "0123456789abcdef0123";
    let config = temp_file("auth.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\npublish = \"keys\"\nkeys = [\"confkey\"]\nkeys_file = \"{}\"\n\
             token_secret = \"{secret}\"\n[auth.apps.paid]\npublish = \"token\"\nplay = \"token\"\n",
            keys.display()
        ),
    )
    .unwrap();
    let node = Node::start_with(1, &["--config", config.to_str().unwrap()]);

    assert!(
        publish(&node.url("nope"), 2)
            .wait(Duration::from_secs(20))
            .is_err(),
        "an unknown key published"
    );
    publish(&node.url("confkey"), 1)
        .wait(Duration::from_secs(20))
        .unwrap();
    publish(&node.url("filekey"), 1)
        .wait(Duration::from_secs(20))
        .unwrap();
    // The keys file changes: the new key works within the reload period.
    std::fs::write(&keys, "newkey\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while publish(&node.url("newkey"), 1)
        .wait(Duration::from_secs(20))
        .is_err()
    {
        assert!(Instant::now() < deadline, "the new key never worked");
    }

    // App "paid": a token for publish, another for play.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now + 600;
    let url = |action, exp: u64| {
        let t = sign(secret.as_bytes(), action, "paid", "cam", exp);
        format!("rtmp://{}/paid/cam?token={t}&expires={exp}", node.addr)
    };
    let publisher = publish(&url(Action::Publish, exp), 6);
    wait_live(&url(Action::Play, exp));
    for bad in [
        format!("rtmp://{}/paid/cam", node.addr),
        url(Action::Publish, exp),
        url(Action::Play, now - 10),
    ] {
        let file = temp_file("auth-refused.flv");
        assert!(
            ffmpeg_player(&bad, &file, Some(1))
                .wait(Duration::from_secs(20))
                .is_err(),
            "played with {bad}"
        );
    }
    let file = temp_file("auth-play.flv");
    ffmpeg_player(&url(Action::Play, exp), &file, Some(2))
        .wait(Duration::from_secs(30))
        .unwrap();
    check_recording(&file, 25);
    publisher.wait(Duration::from_secs(30)).unwrap();

    let (_, metrics) = get(node.http, "/metrics");
    for reason in ["bad_key", "no_token", "bad_token", "expired"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("tributary_auth_refused_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no {reason} counter:\n{metrics}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
    let log = node.log.lock().unwrap();
    assert!(log.contains("publish refused: invalid stream key"), "{log}");
    let token = sign(secret.as_bytes(), Action::Publish, "paid", "cam", exp);
    for secret_text in ["confkey", "filekey", "newkey", &token[..8]] {
        assert!(!log.contains(secret_text), "{secret_text} logged:\n{log}");
    }
}

/// Opens a TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    let src: SocketAddr = format!("{from}:0").parse().ok()?;
    socket.bind(&src.into()).ok()?;
    socket
        .connect_timeout(&to.into(), Duration::from_secs(2))
        .ok()?;
    let stream: TcpStream = socket.into();
    stream.set_nonblocking(true).ok()?;
    Some(stream)
}

#[test]
fn a_flood_of_idle_and_slowloris_connections_does_not_stop_flowing_streams() {
    let config = temp_file("flood.toml");
    std::fs::write(
        &config,
        "[rtmp]\nhandshake_timeout_ms = 1500\nmax_connections_per_ip = 64\n",
    )
    .unwrap();
    let node = Node::start_with(2, &["--config", config.to_str().unwrap()]);
    let url = node.url("steady");
    let publisher = publish(&url, 14);
    wait_live(&url);
    let file = temp_file("flood-player.flv");
    let player = ffmpeg_player(&url, &file, Some(8));

    // From another loopback address: 300 connections, kept open for 6 s;
    // odd ones send nothing, even ones dribble a handshake a byte at a
    // time (slowloris). Any the node closes are opened again.
    let addr = node.addr;
    let flood = thread::spawn(move || {
        let mut opened = 0u32;
        let mut socks: Vec<Option<TcpStream>> = (0..300).map(|_| None).collect();
        let end = Instant::now() + Duration::from_secs(6);
        while Instant::now() < end {
            for (i, slot) in socks.iter_mut().enumerate() {
                let alive = match slot {
                    Some(s) if i % 2 == 0 => s.write_all(&[3]).is_ok(),
                    Some(s) => {
                        let mut b = [0u8; 1];
                        !matches!(s.read(&mut b), Ok(0) | Ok(1))
                    }
                    None => false,
                };
                if !alive {
                    *slot = connect_from("127.0.0.2", addr);
                    opened += 1;
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
        opened
    });
    player.wait(Duration::from_secs(40)).unwrap();
    let opened = flood.join().unwrap();
    check_recording(&file, 180);
    publisher.wait(Duration::from_secs(40)).unwrap();

    let (_, metrics) = get(node.http, "/metrics");
    let value = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let refused = value("tributary_limit_refused_total{limit=\"ip_connections\"}");
    let timeouts = value("tributary_protocol_errors_total{kind=\"timeout\"");
    eprintln!("flood: {opened} connections opened, {refused} refused by the per-address limit, {timeouts} handshake timeouts");
    assert!(refused > 100, "{refused} refused\n{metrics}");
    assert!(timeouts >= 64, "{timeouts} timeouts\n{metrics}");
}

#[test]
fn publisher_and_player_limits_refuse_the_one_too_many() {
    let config = temp_file("limits.toml");
    std::fs::write(
        &config,
        "[streams]\nmax_publishers = 1\n[players]\nmax_per_stream = 1\n",
    )
    .unwrap();
    let node = Node::start_with(2, &["--config", config.to_str().unwrap()]);
    let publisher = publish(&node.url("one"), 8);
    wait_live(&node.url("one"));
    assert!(
        publish(&node.url("two"), 2)
            .wait(Duration::from_secs(20))
            .is_err(),
        "a second publisher got in"
    );
    let first = LibPlayer::start(node.addr, "one");
    first.wait_for("media", |e| {
        e.iter()
            .filter(|e| matches!(e, tributary::protocol::client::ClientEvent::Media(_)))
            .count()
            > 10
    });
    let file = temp_file("limits-second.flv");
    assert!(
        ffmpeg_player(&node.url("one"), &file, Some(1))
            .wait(Duration::from_secs(20))
            .is_err(),
        "a second player got in"
    );
    let (_, metrics) = get(node.http, "/metrics");
    for limit in ["publishers", "stream_players"] {
        assert!(
            metrics.contains(&format!(
                "tributary_limit_refused_total{{limit=\"{limit}\"}} 1"
            )),
            "{limit}:\n{metrics}"
        );
    }
    // An operator kicks the publisher (no admin token configured here).
    let (status, body) = common::http(node.http, "DELETE", "/api/streams/live/one", None);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        publisher.wait(Duration::from_secs(10)).is_err(),
        "the kicked publisher went on"
    );
    let gone = common::http(node.http, "DELETE", "/api/streams/live/one", None).0;
    assert_eq!(gone, "HTTP/1.1 404 Not Found");
}

/// The subject of the certificate a TLS server presents (openssl s_client).
fn served_subject(addr: SocketAddr, sni: Option<&str>, extra: &[&str]) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn rtmps_beside_rtmp_with_sni_certificates_reloaded_live() {
    let (cert, key) = self_signed("default.test");
    let (b_cert, b_key) = self_signed("b.test");
    let config = temp_file("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[[tls.sni]]\nname = \"b.test\"\ncert = \"{}\"\nkey = \"{}\"\n",
            b_cert.display(),
            b_key.display()
        ),
    )
    .unwrap();
    let node = Node::start_with(
        2,
        &[
            "--config",
            config.to_str().unwrap(),
            "--rtmps-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let tls_addr: SocketAddr = loop {
        let log = node.log.lock().unwrap().clone();
        if let Some(rest) = log.split("rtmps listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no RTMPS address logged:\n{log}");
        thread::sleep(Duration::from_millis(20));
    };
    let rtmps = |key: &str| format!("rtmps://{tls_addr}/live/{key}");

    // Published over RTMPS, played over RTMP; and the other way round.
    let publisher = publish(&rtmps("secure"), 10);
    wait_live(&node.url("secure"));
    let plain_file = temp_file("tls-plain.flv");
    let tls_file = temp_file("tls-tls.flv");
    let plain = ffmpeg_player(&node.url("secure"), &plain_file, Some(4));
    let tls = ffmpeg_player(&rtmps("secure"), &tls_file, Some(4));

    // Certificates by SNI, over TLS 1.2 and 1.3 (rustls has nothing older;
    // this machine's openssl cannot speak TLS 1.1 to prove it).
    assert!(served_subject(tls_addr, None, &[]).contains("default.test"));
    assert!(served_subject(tls_addr, Some("b.test"), &[]).contains("b.test"));
    assert!(served_subject(tls_addr, Some("other.test"), &[]).contains("default.test"));
    assert!(served_subject(tls_addr, None, &["-tls1_2"]).contains("default.test"));
    assert!(served_subject(tls_addr, None, &["-tls1_3"]).contains("default.test"));

    // A new default certificate on disk is served to new connections while
    // the RTMPS player above goes on.
    let (new_cert, new_key) = self_signed("renewed.test");
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served_subject(tls_addr, None, &[]).contains("renewed.test") {
        assert!(
            Instant::now() < deadline,
            "the certificate was not reloaded"
        );
        thread::sleep(Duration::from_millis(200));
    }
    // SIGHUP re-reads them too, without waiting for a change.
    // SAFETY: kill() on our own child's PID.
    unsafe {
        libc::kill(node.child.id() as i32, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log.lock().unwrap().contains("SIGHUP: reloading") {
        assert!(Instant::now() < deadline, "SIGHUP not handled");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(served_subject(tls_addr, None, &[]).contains("renewed.test"));
    plain.wait(Duration::from_secs(30)).unwrap();
    tls.wait(Duration::from_secs(30)).unwrap();
    check_recording(&plain_file, 75);
    check_recording(&tls_file, 75);
    publisher.wait(Duration::from_secs(30)).unwrap();
}

#[test]
fn a_draining_node_asks_capable_encoders_to_reconnect() {
    use tributary::protocol::client::{ClientConfig, ClientEvent, ClientSession, Role};
    let mut node = Node::start(2);
    let addr = node.addr;
    // An Enhanced RTMP v2 encoder (capsEx Reconnect), made with our client
    // session: no mainstream encoder implements the request yet.
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let encoder = thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let tc_url = format!("rtmp://{addr}/live");
        let mut config = ClientConfig::new(Role::Publish, &tc_url, "live", "capable");
        config.caps_ex = Some(1.0);
        let mut client = ClientSession::new(config, 0, 9);
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = bytes::BytesMut::new();
        loop {
            out.clear();
            client.poll_transmit(&mut out);
            stream.write_all(&out).unwrap();
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let used = client.handle_input(rest).unwrap();
                rest = &rest[used..];
                while let Some(e) = client.poll_event() {
                    let reconnect = matches!(&e, ClientEvent::Status { code, .. }
                        if code == "NetConnection.Connect.ReconnectRequest");
                    sink.lock().unwrap().push(e);
                    if reconnect {
                        // What an encoder does: go (to another node).
                        return;
                    }
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, ClientEvent::PublishStarted { .. }))
    {
        assert!(Instant::now() < deadline, "never published");
        thread::sleep(Duration::from_millis(20));
    }
    // A plain ffmpeg publisher too: it is simply closed.
    let plain = publish(&node.url("plain"), 30);
    wait_live(&node.url("plain"));

    let stopping = Instant::now();
    let status = node.stop().expect("node stops");
    assert!(status.success(), "{status}");
    encoder.join().unwrap();
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, ClientEvent::Status { code, .. }
            if code == "NetConnection.Connect.ReconnectRequest")),
        "no ReconnectRequest"
    );
    // The encoder left when asked, so the node did not wait out its grace.
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopping.elapsed()
    );
    assert!(node
        .log
        .lock()
        .unwrap()
        .contains("asked 1 encoders to reconnect"));
    assert!(plain.wait(Duration::from_secs(10)).is_err());
}

#[test]
fn the_publish_webhook_allows_refuses_and_fails_closed() {
    let (service, seen) = auth_service();
    let config = temp_file("webhook.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nwebhook_url = \"http://{service}/on_publish\"\nwebhook_timeout_ms = 1000\n"
        ),
    )
    .unwrap();
    let node = Node::start_with(1, &["--config", config.to_str().unwrap()]);
    let publisher = publish(&format!("{}?session=42", node.url("good")), 4);
    wait_live(&node.url("good"));
    for refused in ["bad", "slow"] {
        assert!(
            publish(&node.url(refused), 1)
                .wait(Duration::from_secs(20))
                .is_err(),
            "{refused} published"
        );
    }
    publisher.wait(Duration::from_secs(30)).unwrap();
    let seen = seen.lock().unwrap().clone();
    let good = seen
        .iter()
        .find(|v| v["stream"] == "good")
        .expect("good asked");
    assert_eq!(good["action"], "publish");
    assert_eq!(good["app"], "live");
    assert_eq!(good["query"], "session=42");
    assert_eq!(good["client_ip"], "127.0.0.1");
    // Plays are not asked unless webhook_on_play.
    assert!(seen.iter().all(|v| v["action"] == "publish"));
    let log = node.log.lock().unwrap().clone();
    assert!(
        log.contains("publish refused: stream not on the list"),
        "{log}"
    );
    assert!(
        log.contains("publish refused: the auth service did not answer in time"),
        "{log}"
    );

    // Unreachable with fail_closed = false: publishing goes on.
    let closed_port = common::free_port();
    let open = temp_file("webhook-open.toml");
    std::fs::write(
        &open,
        format!("[auth]\nwebhook_url = \"http://127.0.0.1:{closed_port}/\"\nwebhook_fail_closed = false\n"),
    )
    .unwrap();
    let lenient = Node::start_with(1, &["--config", open.to_str().unwrap()]);
    publish(&lenient.url("anything"), 1)
        .wait(Duration::from_secs(20))
        .unwrap();
}

#[test]
fn the_admin_api_keeps_connections_alive_and_refuses_huge_headers() {
    let node = Node::start(1);
    // Two requests on one connection (HTTP/1.1 keep-alive), both answered.
    let mut s = TcpStream::connect(node.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let read_reply = |s: &mut TcpStream| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("ok\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    for _ in 0..2 {
        write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let reply = read_reply(&mut s);
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    }
    // A header past the 8 KiB bound: a 4xx, and that connection closes.
    let mut s = TcpStream::connect(node.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let huge = "a".repeat(16 * 1024);
    let _ = write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    // The server is fine.
    assert_eq!(get(node.http, "/healthz").0, "HTTP/1.1 200 OK");
}

#[test]
fn an_open_admin_api_answers_only_requests_to_an_address_or_localhost() {
    // No admin token: a page whose host name was rebound to the admin
    // address (DNS rebinding) must not read the API or kick publishers.
    let node = Node::start(1);
    let port = node.http.port();
    for host in [
        node.http.to_string(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = common::http_to(node.http, &host, "GET", "/api/streams", None);
        assert_eq!(status, "HTTP/1.1 200 OK", "{host}: {body}");
    }
    for host in [format!("rebind.example:{port}"), "127.0.0.1.nip.io".into()] {
        for (method, path) in [("GET", "/api/streams"), ("DELETE", "/api/streams/live/cam")] {
            let (status, body) = common::http_to(node.http, &host, method, path, None);
            assert_eq!(status, "HTTP/1.1 403 Forbidden", "{host} {method} {path}");
            assert!(body.contains("http.admin_token"), "{body}");
        }
        // Metrics, probes and the console's own pages stay open.
        for path in ["/metrics", "/healthz", "/console/"] {
            let (status, _) = common::http_to(node.http, &host, "GET", path, None);
            assert_eq!(status, "HTTP/1.1 200 OK", "{host} {path}");
        }
    }
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes_and_json_is_one_object_a_line() {
    // stderr is a pipe here, as it is for a file or journald.
    let human = Node::start(1);
    let log = human.log.lock().unwrap().clone();
    assert!(log.contains("rtmp listening on"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "ANSI escapes in a piped log: {log:?}"
    );
    let json = Node::start_with(1, &["--log-format", "json"]);
    let log = json.log.lock().unwrap().clone();
    assert!(!log.is_empty());
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string(), "{line}");
    }
}

/// What one player saw of a stream, from a [`LibPlayer`]'s log: how many
/// media messages a send round carried (reads less than 15 ms apart count
/// as one round), and how far its latest audio and video drifted apart.
struct Rounds {
    messages: usize,
    rounds: usize,
    worst_av_gap_ms: i64,
    in_order: bool,
}

fn rounds(player: &LibPlayer, skip: Duration) -> Rounds {
    use tributary::protocol::client::ClientEvent;
    use tributary::protocol::message::MessageType;
    let events = player.events.lock().unwrap();
    let reads = player.reads.lock().unwrap();
    // Frames, not the sequence headers (AVC and AAC configs, sent with
    // the timestamp they were published at, before the GOP cache's frames).
    let media = |e: &ClientEvent| match e {
        ClientEvent::Media(m) if m.payload.get(1) == Some(&0) => None,
        ClientEvent::Media(m) if m.type_id == MessageType::VIDEO => Some((true, m.timestamp)),
        ClientEvent::Media(m) if m.type_id == MessageType::AUDIO => Some((false, m.timestamp)),
        _ => None,
    };
    let first = reads
        .iter()
        .find(|(_, seen)| events[..*seen].iter().any(|e| media(e).is_some()))
        .expect("no media arrived")
        .0;
    let (mut messages, mut rounds, mut last_round) = (0, 0, None::<Instant>);
    let (mut video, mut audio) = (None::<u32>, None::<u32>);
    let (mut worst, mut in_order, mut done) = (0i64, true, 0);
    // Rounds are counted past `skip` (the GOP cache's burst comes first).
    for &(at, seen) in reads.iter() {
        let got: Vec<_> = events[done..seen].iter().filter_map(media).collect();
        done = seen;
        for &(is_video, ts) in &got {
            let last = if is_video { &mut video } else { &mut audio };
            in_order &= last.is_none_or(|l| l <= ts);
            *last = Some(ts);
            if let (Some(v), Some(a)) = (video, audio) {
                worst = worst.max((i64::from(v) - i64::from(a)).abs());
            }
        }
        if got.is_empty() || at < first + skip {
            continue;
        }
        messages += got.len();
        if last_round.is_none_or(|l| at.duration_since(l) >= Duration::from_millis(15)) {
            rounds += 1;
        }
        last_round = Some(at);
    }
    Rounds {
        messages,
        rounds,
        worst_av_gap_ms: worst,
        in_order,
    }
}

#[test]
fn a_latency_budget_batches_a_players_media_and_keeps_it_in_step() {
    let config = common::write_config(
        "latency.toml",
        "[players]\nlatency_ms = 0\n[players.apps.batched]\nlatency_ms = 400\n",
    );
    let node = Node::start_with(1, &["--config", config.to_str().unwrap()]);
    let now_url = node.url("now");
    let batched_url = format!("rtmp://{}/batched/late", node.addr);
    let publishers = [publish(&now_url, 14), publish(&batched_url, 14)];
    wait_live(&now_url);
    wait_live(&batched_url);

    // The mode of each is in the listing.
    let (_, body) = get(node.http, "/api/streams");
    let listing: serde_json::Value = serde_json::from_str(&body).unwrap();
    let latency_of = |app: &str| {
        listing["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["app"] == app)
            .unwrap_or_else(|| panic!("no {app} stream in {body}"))["players_latency"]
            .clone()
    };
    assert_eq!(
        latency_of("live"),
        serde_json::json!({"mode": "immediate", "max_wait_ms": 0})
    );
    assert_eq!(
        latency_of("batched"),
        serde_json::json!({"mode": "budget", "max_wait_ms": 400})
    );

    // ffmpeg plays the batched stream, and ffprobe finds it whole.
    let file = temp_file("latency-batched.flv");
    let ffmpeg = ffmpeg_player(&batched_url, &file, Some(4));

    let now = LibPlayer::start(node.addr, "now");
    let late = LibPlayer::start_app(node.addr, "batched", "late");
    let enough_video = |events: &[tributary::protocol::client::ClientEvent]| {
        events
            .iter()
            .filter(|e| {
                matches!(e, tributary::protocol::client::ClientEvent::Media(m)
                    if m.type_id == tributary::protocol::message::MessageType::VIDEO)
            })
            .count()
            >= 150
    };
    now.wait_for("150 video frames, immediate", enough_video);
    late.wait_for("150 video frames, batched", enough_video);
    ffmpeg
        .wait(Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("{e}\nnode log:\n{}", node.log.lock().unwrap()));
    check_recording(&file, 50);

    // Past the GOP cache's burst, the immediate player gets a message or
    // two a send; the batched one gets up to 400 ms of media at a time
    // (25 fps video and 43 audio frames a second: about 27 a round).
    let skip = Duration::from_millis(1500);
    let (now, late) = (rounds(&now, skip), rounds(&late, skip));
    let per_round = |r: &Rounds| r.messages as f64 / r.rounds.max(1) as f64;
    eprintln!(
        "messages per send round: immediate {:.1}, 400 ms budget {:.1}",
        per_round(&now),
        per_round(&late)
    );
    assert!(
        per_round(&now) < 8.0,
        "immediate: {} messages in {} rounds",
        now.messages,
        now.rounds
    );
    assert!(
        per_round(&late) > 15.0,
        "batched: {} messages in {} rounds",
        late.messages,
        late.rounds
    );
    // Audio and video stay in order and in step in both.
    for (name, r) in [("immediate", &now), ("batched", &late)] {
        assert!(r.in_order, "{name}: timestamps went back");
        assert!(
            r.worst_av_gap_ms < 500,
            "{name}: audio and video {} ms apart",
            r.worst_av_gap_ms
        );
    }
    for p in publishers {
        p.wait(Duration::from_secs(40)).unwrap();
    }
}
