//! The RTMP variants end to end, with real clients: RTMPT (RTMP tunnelled
//! in HTTP) on the media listener and RTMPTS on its TLS listener,
//! published and played by ffmpeg 5.1 and played by rtmpdump; RTMPE and
//! RTMPTE published and played by ffmpeg 9 and played by rtmpdump, across
//! a two-node cluster; all judged by ffprobe. And an attacker's tries at
//! the tunnel (a wrong session, a sequence out of order, another address,
//! garbage RTMP, a chunked body, too many sessions, an idle one) and at
//! RTMPE where it is refused, each refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    check_recording, cluster_node, ffmpeg9, ffmpeg_player, ffmpeg_player_with, metric_sum, publish,
    publish9, self_signed, temp_file, wait_live, wait_log, wait_published, write_config,
    NatsServer, Node, Proc,
};

/// A node with a media listener (and `config`), on `shards` shards.
fn media_node(shards: usize, name: &str, config: &str) -> Node {
    let config = write_config(name, config);
    Node::start_with(
        shards,
        &[
            "--config",
            config.to_str().unwrap(),
            "--media-listen",
            "127.0.0.1:0",
        ],
    )
}

fn rtmpt_url(node: &Node, key: &str) -> String {
    format!("rtmpt://{}/live/{key}", node.media.unwrap())
}

/// rtmpdump playing `url` for `seconds` of media into `file`; it exits 0
/// (complete) or 2 (stopped before a live stream's end, as --stop does).
fn rtmpdump(url: &str, file: &std::path::Path, seconds: u32) -> Result<(), String> {
    let player = Proc::spawn(
        "rtmpdump",
        Command::new("rtmpdump")
            .args([
                "-q",
                "--live",
                "-r",
                url,
                "--stop",
                &seconds.to_string(),
                "-o",
            ])
            .arg(file),
    );
    match player.wait(Duration::from_secs(40)) {
        Err(e) if !e.contains("exit status: 2") => Err(e),
        _ => Ok(()),
    }
}

/// Polls until `name` (summed over its label sets) is `want`.
fn wait_metric(node: &Node, name: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = metric_sum(node, name, "");
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {n}, not {want}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rtmpt_publishes_and_plays_with_ffmpeg_and_rtmpdump() {
    let node = media_node(2, "rtmpt.toml", "");
    let publisher = publish(&rtmpt_url(&node, "tun"), 12);
    // The tunnelled publish plays over plain RTMP.
    wait_live(&node.url("tun"));
    let over_rtmpt = temp_file("rtmpt-ffmpeg.flv");
    let ffmpeg = ffmpeg_player(&rtmpt_url(&node, "tun"), &over_rtmpt, Some(4));
    let over_rtmp = temp_file("rtmpt-as-rtmp.flv");
    let plain = ffmpeg_player(&node.url("tun"), &over_rtmp, Some(4));
    let dumped = temp_file("rtmpt-rtmpdump.flv");
    rtmpdump(&rtmpt_url(&node, "tun"), &dumped, 4).unwrap();
    ffmpeg.wait(Duration::from_secs(30)).unwrap();
    plain.wait(Duration::from_secs(30)).unwrap();
    for file in [&over_rtmpt, &over_rtmp, &dumped] {
        check_recording(file, 75);
    }
    publisher.wait(Duration::from_secs(40)).unwrap();
    // Every client closed its session.
    wait_metric(&node, "tributary_rtmpt_sessions", 0);
}

#[test]
fn rtmpts_publishes_and_plays_over_the_https_listener() {
    let (cert, key) = self_signed("rtmpts.test");
    let config = write_config("rtmpts.toml", "[media]\ntls_listen = \"127.0.0.1:0\"\n");
    let node = Node::start_with(
        1,
        &[
            "--config",
            config.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let https = loop {
        let log = node.log.lock().unwrap().clone();
        if let Some(rest) = log.split("https listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no HTTPS address logged:\n{log}");
        thread::sleep(Duration::from_millis(20));
    };
    let url = format!("rtmpts://{https}/live/sealed");
    // ffmpeg 5.1 does not verify the certificate by default.
    let publisher = publish(&url, 12);
    wait_live(&node.url("sealed"));
    let over_rtmpts = temp_file("rtmpts-ffmpeg.flv");
    let ffmpeg = ffmpeg_player(&url, &over_rtmpts, Some(4));
    // librtmp 2.4 (Debian's rtmpdump) crashed on a TLS 1.3 session ticket
    // before the node stopped sending them.
    let dumped = temp_file("rtmpts-rtmpdump.flv");
    rtmpdump(&url, &dumped, 4).unwrap();
    ffmpeg.wait(Duration::from_secs(30)).unwrap();
    check_recording(&over_rtmpts, 75);
    check_recording(&dumped, 75);
    publisher.wait(Duration::from_secs(40)).unwrap();
}

/// ffmpeg 9 publishing H.264 and AAC to `url` (rtmpe://, rtmpte://).
fn publish_encrypted(url: &str, seconds: u32) -> Proc {
    publish9(
        url,
        seconds,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ],
        &["-c:a", "aac", "-b:a", "64k"],
        1,
    )
}

#[test]
fn rtmpe_and_rtmpte_publish_and_play_with_ffmpeg_9_and_rtmpdump_across_a_cluster() {
    let nats = NatsServer::start("rtmpe");
    let media = ["--media-listen", "127.0.0.1:0"];
    let a = cluster_node(&nats, "rtmpe-a", 2, &media);
    let b = cluster_node(&nats, "rtmpe-b", 2, &media);
    // RTMPE into node A; ffmpeg 9 and rtmpdump play it over RTMPE there,
    // and ffmpeg 5.1 plays it over RTMPT from node B.
    let publisher = publish_encrypted(&format!("rtmpe://{}/live/sealed", a.addr), 14);
    wait_published(&a, "sealed");
    let url = format!("rtmpe://{}/live/sealed", a.addr);
    let over_rtmpe = temp_file("rtmpe-ffmpeg9.flv");
    let ffmpeg = ffmpeg_player_with(&ffmpeg9(), &url, &over_rtmpe, Some(4), &[]);
    let from_b = temp_file("rtmpe-as-rtmpt-on-b.flv");
    let relayed = ffmpeg_player(&rtmpt_url(&b, "sealed"), &from_b, Some(4));
    let dumped = temp_file("rtmpe-rtmpdump.flv");
    rtmpdump(&url, &dumped, 4).unwrap();
    ffmpeg.wait(Duration::from_secs(30)).unwrap();
    relayed.wait(Duration::from_secs(30)).unwrap();
    for file in [&over_rtmpe, &from_b, &dumped] {
        check_recording(file, 75);
    }
    publisher.wait(Duration::from_secs(40)).unwrap();

    // RTMPTE into node B's media listener; played over RTMPTE there by
    // ffmpeg 9 and rtmpdump, and over RTMP from node A.
    let publisher = publish_encrypted(&format!("rtmpte://{}/live/tunnelled", b.media.unwrap()), 14);
    wait_published(&b, "tunnelled");
    let url = format!("rtmpte://{}/live/tunnelled", b.media.unwrap());
    let over_rtmpte = temp_file("rtmpte-ffmpeg9.flv");
    let ffmpeg = ffmpeg_player_with(&ffmpeg9(), &url, &over_rtmpte, Some(4), &[]);
    let from_a = temp_file("rtmpte-as-rtmp-on-a.flv");
    let relayed = ffmpeg_player(&a.url("tunnelled"), &from_a, Some(4));
    let dumped = temp_file("rtmpte-rtmpdump.flv");
    rtmpdump(&url, &dumped, 4).unwrap();
    ffmpeg.wait(Duration::from_secs(30)).unwrap();
    relayed.wait(Duration::from_secs(30)).unwrap();
    for file in [&over_rtmpte, &from_a, &dumped] {
        check_recording(file, 75);
    }
    publisher.wait(Duration::from_secs(40)).unwrap();
    assert!(metric_sum(&a, "tributary_rtmpe_sessions_total", "") >= 3);
    assert!(metric_sum(&b, "tributary_rtmpe_sessions_total", "") >= 3);
}

#[test]
fn rtmpe_is_refused_by_an_app_that_says_so_by_a_node_without_it_and_without_a_digest() {
    let node = Node::start_with(
        1,
        &[
            "--config",
            write_config("rtmpe-apps.toml", "[rtmp.apps.plain]\nrtmpe = false\n")
                .to_str()
                .unwrap(),
        ],
    );
    let refused = publish_encrypted(&format!("rtmpe://{}/plain/x", node.addr), 3);
    assert!(
        refused.wait(Duration::from_secs(20)).is_err(),
        "RTMPE publish to a plain app passed"
    );
    wait_log(&node, "RTMPE connect refused by the app's rule");
    assert!(metric_sum(&node, "tributary_auth_refused_total", "rtmpe") >= 1);
    // The same app over plain RTMP, and RTMPE to another app, pass.
    let plain = publish(&format!("rtmp://{}/plain/x", node.addr), 2);
    plain.wait(Duration::from_secs(20)).unwrap();
    let other = publish_encrypted(&format!("rtmpe://{}/live/y", node.addr), 2);
    other.wait(Duration::from_secs(20)).unwrap();

    // An RTMPE C0 with a C1 that carries no digest: refused, and the
    // node goes on serving.
    let mut garbage = TcpStream::connect(node.addr).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut c0c1 = vec![6u8];
    c0c1.extend((0..1536u32).map(|i| (i * 7 + 3) as u8));
    garbage.write_all(&c0c1).unwrap();
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer);
    assert!(answer.is_empty(), "no S0S1S2 for a C1 without a digest");
    wait_log(&node, "RTMPE: C1 carries no valid digest");
    let after = publish_encrypted(&format!("rtmpe://{}/live/after", node.addr), 2);
    after.wait(Duration::from_secs(20)).unwrap();

    let off = Node::start_with(
        1,
        &[
            "--config",
            write_config("rtmpe-off.toml", "[rtmp]\nrtmpe = false\n")
                .to_str()
                .unwrap(),
        ],
    );
    let refused = publish_encrypted(&format!("rtmpe://{}/live/z", off.addr), 3);
    assert!(refused.wait(Duration::from_secs(20)).is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !off.log.lock().unwrap().contains("version 6") {
        assert!(Instant::now() < deadline, "{}", off.log.lock().unwrap());
        thread::sleep(Duration::from_millis(50));
    }
}

/// One keep-alive HTTP connection speaking RTMPT by hand.
struct Tunnel {
    stream: TcpStream,
}

impl Tunnel {
    fn connect(media: SocketAddr) -> Tunnel {
        Self::connect_from(media, "127.0.0.1")
    }

    /// From another loopback address (127.0.0.0/8 is all loopback).
    fn connect_from(media: SocketAddr, local: &str) -> Tunnel {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let local: SocketAddr = format!("{local}:0").parse().unwrap();
        socket.bind(&local.into()).unwrap();
        socket.connect(&media.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Tunnel { stream }
    }

    fn post(&mut self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.send_raw(
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-fcs\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        self.send_raw(body);
        self.answer()
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next answer: its status and body (by its Content-Length).
    fn answer(&mut self) -> (u16, Vec<u8>) {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.stream.read(&mut byte).unwrap();
            assert_eq!(n, 1, "the connection closed mid-answer: {head:?}");
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let status = text[9..12].parse().unwrap();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("every answer has a Content-Length")
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).unwrap();
        (status, body)
    }

    /// Whether the node closed the connection: EOF after what it sent, or
    /// a reset (it closed with bytes of ours unread); not a read timeout.
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    fn open(&mut self) -> String {
        let (status, body) = self.post("/open/1", &[0]);
        assert_eq!(status, 200);
        let id = String::from_utf8(body).unwrap();
        assert!(id.ends_with('\n'), "{id:?}");
        id.trim_end().to_owned()
    }
}

#[test]
fn rtmpt_refuses_wrong_sessions_sequences_bodies_and_floods() {
    let node = media_node(
        1,
        "rtmpt-attack.toml",
        "[media]\nrtmpt_sessions_per_ip = 4\nrtmpt_idle_ms = 1000\n",
    );
    let media = node.media.unwrap();
    let mut t = Tunnel::connect(media);
    // Flash's first request is a 404 that keeps the connection.
    assert_eq!(t.post("/fcs/ident2", &[0]).0, 404);
    let id = t.open();
    assert_eq!(id.len(), 32, "{id}");
    // A poll with nothing queued: 200 and the polling byte alone.
    let (status, body) = t.post(&format!("/idle/{id}/0"), &[0]);
    assert_eq!((status, body.len()), (200, 1));

    // Another address naming the session learns nothing, and the session
    // goes on for its own client.
    let mut other = Tunnel::connect_from(media, "127.0.0.2");
    assert_eq!(other.post(&format!("/idle/{id}/1"), &[0]).0, 404);
    assert!(other.closed());
    assert_eq!(t.post(&format!("/idle/{id}/1"), &[0]).0, 200);

    // A sequence number out of order is refused, and ends the session.
    let (status, body) = t.post(&format!("/idle/{id}/7"), &[0]);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("out of sequence"));
    assert!(t.closed());
    let mut t = Tunnel::connect(media);
    assert_eq!(t.post(&format!("/idle/{id}/2"), &[0]).0, 404);
    assert!(t.closed());

    // An id nobody was given.
    let mut t = Tunnel::connect(media);
    assert_eq!(
        t.post("/send/0123456789abcdef0123456789abcdef/0", b"x").0,
        404
    );

    // Garbage where the RTMP handshake should be: the session ends, and
    // the next request is told so.
    let mut t = Tunnel::connect(media);
    let id = t.open();
    let (status, _) = t.post(&format!("/send/{id}/0"), &[0x42; 1537]);
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 1;
    loop {
        let (status, _) = t.post(&format!("/idle/{id}/{seq}"), &[0]);
        if status == 404 {
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "the garbage session stayed open");
        seq += 1;
        thread::sleep(Duration::from_millis(20));
    }

    // A chunked body is refused with one answer, before anything of it is
    // taken as RTMP.
    let mut t = Tunnel::connect(media);
    let id = t.open();
    t.send_raw(
        format!("POST /send/{id}/0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n\x03\r\n0\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(t.answer().0, 400);
    assert!(t.closed());
    // A GET where RTMPT is POST, and a POST elsewhere.
    let mut t = Tunnel::connect(media);
    assert_eq!(t.post("/live/cam.flv", &[0]).0, 405);

    // Sessions per address are bounded (four here).
    let mut held: Vec<Tunnel> = Vec::new();
    let refused = loop {
        let mut t = Tunnel::connect(media);
        let (status, _) = t.post("/open/1", &[0]);
        if status != 200 {
            break status;
        }
        held.push(t);
        assert!(held.len() <= 4, "more than four sessions from one address");
    };
    assert_eq!(refused, 503);
    assert!(metric_sum(&node, "tributary_limit_refused_total", "ip_rtmpt_sessions") >= 1);

    // Sessions nobody polls end after rtmpt_idle_ms, and give their
    // places back.
    drop(held);
    wait_metric(&node, "tributary_rtmpt_sessions", 0);
    wait_log(&node, "RTMPT session idle");
    let mut t = Tunnel::connect(media);
    t.open();
    assert!(metric_sum(&node, "tributary_http_refused_total", "rtmpt_session") >= 4);
}
