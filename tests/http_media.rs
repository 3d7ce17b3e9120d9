//! HTTP media end to end: HTTP-FLV played by ffmpeg from the node's media
//! listener (another shard, another node of the cluster, over HTTPS),
//! judged by ffprobe; bad requests answered with a clear 4xx that closes
//! only their own connection; a viewer that stops reading is cut like a
//! slow RTMP player.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    check_recording, cluster_node, duration, ffmpeg_player, get, probe, publish, raw_http,
    self_signed, temp_file, wait_live, NatsServer, Node, Proc,
};

/// Sum of a metric over the label sets whose text contains `label`.
fn metric(node: &Node, name: &str, label: &str) -> u64 {
    let (_, text) = get(node.http, "/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The frame count fits the recording's length (25 frames a second, give
/// or take a few frames at either end).
fn check_frames_fit_duration(file: &std::path::Path) {
    let p = probe(file);
    let seconds = duration(file);
    let expected = seconds * 25.0;
    assert!(seconds > 2.0, "{seconds} s recorded");
    assert!(
        (p.video_frames as f64 - expected).abs() <= expected * 0.15 + 3.0,
        "{} frames in {seconds} s",
        p.video_frames
    );
}

#[test]
fn http_flv_plays_from_both_shards_starting_at_a_keyframe() {
    let node = Node::start_with(2, &["--media-listen", "127.0.0.1:0"]);
    let publisher = publish(&node.url("cam"), 14);
    wait_live(&node.url("cam"));
    // Two viewers at once: SO_REUSEPORT puts them on either shard, so one
    // of them is likely on the shard that does not own the stream.
    let files: Vec<_> = (0..2)
        .map(|i| temp_file(&format!("http-flv-{i}.flv")))
        .collect();
    let players: Vec<_> = files
        .iter()
        .map(|f| ffmpeg_player(&node.flv_url("cam"), f, Some(4)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "tributary_viewers", "http-flv") < 2 {
        assert!(
            Instant::now() < deadline,
            "the viewers were never counted:\n{}",
            get(node.http, "/metrics").1
        );
        thread::sleep(Duration::from_millis(50));
    }
    for p in players {
        p.wait(Duration::from_secs(20)).unwrap();
    }
    for f in &files {
        check_recording(f, 75);
        check_frames_fit_duration(f);
    }
    assert!(metric(&node, "tributary_http_bytes_out_total", "") > 100_000);
    assert!(metric(&node, "tributary_http_requests_total", "") >= 2);
    // The viewers left: the gauge is back to zero.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "tributary_viewers", "http-flv") != 0 {
        assert!(Instant::now() < deadline, "viewer gauge stuck");
        thread::sleep(Duration::from_millis(50));
    }
    drop(publisher);
}

#[test]
fn http_flv_plays_a_stream_published_on_another_node() {
    let nats = NatsServer::start("http-flv");
    let a = cluster_node(&nats, "a", 1, &[]);
    let b = cluster_node(&nats, "b", 2, &["--media-listen", "127.0.0.1:0"]);
    let publisher = publish(&a.url("remote"), 14);
    wait_live(&a.url("remote"));
    let file = temp_file("http-flv-remote.flv");
    ffmpeg_player(&b.flv_url("remote"), &file, Some(4))
        .wait(Duration::from_secs(25))
        .unwrap();
    check_recording(&file, 75);
    check_frames_fit_duration(&file);
    drop(publisher);
}

#[test]
fn https_media_serves_http_flv_with_the_tls_certificates() {
    let (cert, key) = self_signed("media.test");
    let node = Node::start_with(
        1,
        &[
            "--config",
            write_config(
                "https.toml",
                "[media]\ntls_listen = \"127.0.0.1:0\"\ncors_origin = \"\"\n",
            )
            .to_str()
            .unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let log = node.log.lock().unwrap().clone();
        if let Some(rest) = log.split("https listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no HTTPS address logged:\n{log}");
        thread::sleep(Duration::from_millis(20));
    };
    let publisher = publish(&node.url("tls"), 12);
    wait_live(&node.url("tls"));
    let file = temp_file("https-flv.flv");
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-tls_verify",
        "0",
        "-rw_timeout",
        "5000000",
        "-i",
        &format!("https://{addr}/live/tls.flv"),
        "-t",
        "3",
        "-c",
        "copy",
    ])
    .arg(&file);
    Proc::spawn("ffmpeg", &mut cmd)
        .wait(Duration::from_secs(20))
        .unwrap();
    check_recording(&file, 50);
    drop(publisher);
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = temp_file(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_requests_get_a_clear_4xx_and_close_only_their_connection() {
    let config = write_config(
        "http-auth.toml",
        "[auth]\ntoken_secret = \"a-secret-of-sixteen-bytes\"\n[auth.apps.paid]\nplay = \"token\"\n",
    );
    let node = Node::start_with(
        1,
        &[
            "--config",
            config.to_str().unwrap(),
            "--media-listen",
            "127.0.0.1:0",
        ],
    );
    let media = node.media.unwrap();
    let publisher = publish(&node.url("cam"), 20);
    wait_live(&node.url("cam"));
    // A viewer that stays connected through all of it.
    let file = temp_file("http-flv-beside-bad.flv");
    let viewer = ffmpeg_player(&node.flv_url("cam"), &file, Some(5));

    let (status, text) = raw_http(media, b"GET /live/cam.flv HTTP/1.1\r\nHo st: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{text}");
    assert!(text.contains("malformed request"), "{text}");
    let mut huge = b"GET /live/cam.flv HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(9 * 1024, b'a');
    let (status, _) = raw_http(media, &huge);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    let (status, text) = raw_http(media, b"GET /live/nobody.flv HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(text.ends_with("no such stream\n"), "{text}");
    let (status, _) = raw_http(media, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = raw_http(media, b"DELETE /live/cam.flv HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    // The per-app play rule: a token is needed, and its absence is named.
    let (status, text) = raw_http(media, b"GET /paid/cam.flv HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{text}");
    assert!(text.contains("token"), "{text}");
    // A CORS preflight, and HEAD of a live stream.
    let (status, text) = raw_http(media, b"OPTIONS /live/cam.flv HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 204 No Content");
    assert!(text.contains("Access-Control-Allow-Origin: *"), "{text}");
    let (status, text) = raw_http(media, b"HEAD /live/cam.flv HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(text.contains("Content-Type: video/x-flv"), "{text}");
    // A request head that never completes is cut at the handshake limit;
    // that is slow by design, so only its start is checked here: the node
    // still serves others meanwhile.
    let mut slow = TcpStream::connect(media).unwrap();
    slow.write_all(b"GET /live/cam.flv HTTP/1.1\r\n").unwrap();

    viewer.wait(Duration::from_secs(20)).unwrap();
    check_recording(&file, 100);
    assert!(metric(&node, "tributary_http_refused_total", "bad_request") >= 1);
    assert!(metric(&node, "tributary_http_refused_total", "header_too_large") >= 1);
    assert!(metric(&node, "tributary_http_refused_total", "not_found") >= 2);
    assert!(metric(&node, "tributary_http_refused_total", "method") >= 1);
    assert!(metric(&node, "tributary_http_refused_total", "forbidden") >= 1);
    drop(slow);
    drop(publisher);
}

#[test]
fn an_http_flv_viewer_that_stops_reading_is_cut_like_a_slow_player() {
    let config = write_config(
        "http-slow.toml",
        "[players]\nqueue_max_bytes = 65536\nmax_lag_ms = 1500\n",
    );
    let node = Node::start_with(
        1,
        &[
            "--config",
            config.to_str().unwrap(),
            "--media-listen",
            "127.0.0.1:0",
        ],
    );
    let url = node.url("slow");
    // Lossless video, tens of Mbit/s: loopback socket buffers hold
    // megabytes, and they must fill before the node's queue grows.
    let publisher = Proc::spawn(
        "ffmpeg",
        Command::new("ffmpeg").args(common::LIVE_LAVFI_INPUT).args([
            "testsrc2=size=640x480:rate=25:duration=30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-qp",
            "0",
            "-g",
            "25",
            "-f",
            "flv",
            &url,
        ]),
    );
    wait_live(&url);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&node.media.unwrap().into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /live/slow.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200 OK"));
    // From here on it reads nothing.
    let deadline = Instant::now() + Duration::from_secs(25);
    while metric(&node, "tributary_slow_players_disconnected_total", "") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stalled viewer was never cut:\n{}",
            node.log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&node, "tributary_dropped_frames_total", "slow_player") > 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "tributary_viewers", "http-flv") != 0 {
        assert!(Instant::now() < deadline, "viewer gauge stuck");
        thread::sleep(Duration::from_millis(100));
    }
    drop(stream);
    drop(publisher);
}
