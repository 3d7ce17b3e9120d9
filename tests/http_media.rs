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
    self_signed, temp_file, wait_live, write_config, NatsServer, Node, Proc,
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

/// A one-shard node with the config `text` and a media listener.
fn media_node_with_config(name: &str, text: &str) -> Node {
    let config = write_config(name, text);
    Node::start_with(
        1,
        &[
            "--config",
            config.to_str().unwrap(),
            "--media-listen",
            "127.0.0.1:0",
        ],
    )
}

#[test]
fn bad_requests_get_a_clear_4xx_and_close_only_their_connection() {
    let node = media_node_with_config("http-auth.toml", "[auth]\ntoken_secret = \"a-secret-of-sixteen-bytes\"\n[auth.apps.paid]\nplay = \"token\"\n");
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
    // A request head that never completes holds only its own connection:
    // the viewer above and the requests below go on meanwhile (the
    // handshake limit closes it later).
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
    let node = media_node_with_config(
        "http-slow.toml",
        "[players]\nqueue_max_bytes = 65536\nmax_lag_ms = 1500\n",
    );
    let url = node.url("slow");
    let publisher = common::publish_lossless(&url);
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

/// One keep-alive HTTP/1.1 connection: requests in turn, answers read by
/// their Content-Length.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// (status code, body).
    fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        self.read_answer()
    }

    /// The next answer on the connection: (status code, body).
    fn read_answer(&mut self) -> (u16, Vec<u8>) {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head[9..12].parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while self.buf.len() < end + 4 + len {
                    let n = self.stream.read(&mut chunk).unwrap();
                    assert!(n > 0, "closed in the middle of an answer");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return (status, body);
            }
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before an answer");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A media playlist as the checker reads it.
#[derive(Debug, Default)]
struct Playlist {
    target: f64,
    part_target: f64,
    part_hold_back: f64,
    can_block: bool,
    media_sequence: u64,
    /// (msn, EXTINF) of each complete segment.
    segments: Vec<(u64, f64)>,
    /// (msn, index, duration, independent) of each listed part.
    parts: Vec<(u64, usize, f64, bool)>,
    hint: Option<(u64, usize)>,
    ended: bool,
}

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[at..];
    let rest = rest.strip_prefix('"').map_or(rest, |r| r);
    Some(rest.split(['"', ',']).next().unwrap_or(""))
}

fn part_uri(uri: &str) -> (u64, usize) {
    let p = uri.strip_prefix("part").unwrap();
    let p = p.split(".m4s").next().unwrap();
    let (m, n) = p.split_once('.').unwrap();
    (m.parse().unwrap(), n.parse().unwrap())
}

fn parse_playlist(text: &str) -> Playlist {
    let mut p = Playlist::default();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("#EXTM3U"), "{text}");
    let mut extinf = None;
    for line in lines {
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            p.target = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART-INF:") {
            p.part_target = attr(v, "PART-TARGET").unwrap().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXT-X-SERVER-CONTROL:") {
            p.can_block = attr(v, "CAN-BLOCK-RELOAD") == Some("YES");
            p.part_hold_back = attr(v, "PART-HOLD-BACK").unwrap().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            p.media_sequence = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            let (m, n) = part_uri(attr(v, "URI").unwrap());
            let d = attr(v, "DURATION").unwrap().parse().unwrap();
            p.parts.push((m, n, d, v.contains("INDEPENDENT=YES")));
        } else if let Some(v) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            assert_eq!(attr(v, "TYPE"), Some("PART"), "{line}");
            p.hint = Some(part_uri(attr(v, "URI").unwrap()));
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            extinf = Some(v.trim_end_matches(',').parse::<f64>().unwrap());
        } else if line == "#EXT-X-ENDLIST" {
            p.ended = true;
        } else if let Some(seg) = line.strip_prefix("seg") {
            let msn = seg.split(".m4s").next().unwrap().parse().unwrap();
            p.segments
                .push((msn, extinf.take().expect("EXTINF before a segment URI")));
        }
    }
    p
}

/// The RFC 8216bis rules a low-latency media playlist must keep.
fn check_rules(p: &Playlist, text: &str) {
    assert!(p.target >= 1.0, "{text}");
    assert!(p.part_target > 0.0 && p.can_block, "{text}");
    assert!(
        p.part_hold_back >= 2.0 * p.part_target,
        "PART-HOLD-BACK: {text}"
    );
    for (i, (msn, d)) in p.segments.iter().enumerate() {
        assert_eq!(
            *msn,
            p.media_sequence + i as u64,
            "segment numbering: {text}"
        );
        assert!(d.round() <= p.target, "EXTINF over the target: {text}");
    }
    let open = p.segments.last().map_or(p.media_sequence, |s| s.0 + 1);
    let mut last: Option<(u64, usize)> = None;
    for (i, &(msn, n, d, independent)) in p.parts.iter().enumerate() {
        assert!(d <= p.part_target + 0.0005, "part over PART-TARGET: {text}");
        assert!(msn <= open, "a part of an unlisted segment: {text}");
        match last {
            Some((m, k)) if m == msn => assert_eq!(n, k + 1, "part numbering: {text}"),
            _ => {
                assert_eq!(n, 0, "a segment's parts start at 0: {text}");
                assert!(
                    independent,
                    "a segment starts with an independent part: {text}"
                );
            }
        }
        let last_of_segment = p.parts.get(i + 1).is_none_or(|next| next.0 != msn);
        if !last_of_segment && !independent {
            assert!(
                d >= 0.85 * p.part_target,
                "a part under 85% of PART-TARGET: {text}"
            );
        }
        last = Some((msn, n));
    }
    // A complete segment's parts add up to its EXTINF.
    for &(msn, d) in &p.segments {
        let parts: Vec<f64> = p.parts.iter().filter(|x| x.0 == msn).map(|x| x.2).collect();
        if !parts.is_empty() {
            assert!(
                (parts.iter().sum::<f64>() - d).abs() < 0.01,
                "{msn}: {text}"
            );
        }
    }
    if !p.ended {
        let hint = p.hint.expect("a live playlist has a preload hint");
        let expected = match last {
            Some((m, k)) if m == open => (m, k + 1),
            _ => (open, 0),
        };
        assert_eq!(hint, expected, "the hint names the next part: {text}");
    }
}

/// A viewer's first playlist request (`base`/index.m3u8, `query` added):
/// the multivariant playlist that names its session, checked; then the
/// media playlist it names. (The query every later request carries, that
/// media playlist.)
fn open_session(conn: &mut KeepAlive, base: &str, query: &str) -> (String, String) {
    let path = match query {
        "" => format!("{base}/index.m3u8"),
        q => format!("{base}/index.m3u8?{q}"),
    };
    let (status, body) = conn.get(&path);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{text}");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("#EXTM3U"), "{text}");
    assert_eq!(lines.next(), Some("#EXT-X-INDEPENDENT-SEGMENTS"), "{text}");
    let inf = lines.next().unwrap_or("");
    let bandwidth: u64 = inf
        .strip_prefix("#EXT-X-STREAM-INF:BANDWIDTH=")
        .and_then(|b| b.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no EXT-X-STREAM-INF:BANDWIDTH: {text}"));
    // The stream is some hundreds of kbit/s: a measured peak.
    assert!(bandwidth > 50_000, "{text}");
    let uri = lines.next().unwrap_or("");
    let session = uri
        .strip_prefix("index.m3u8?")
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("hls_session=")))
        .unwrap_or_else(|| panic!("no session in the variant's URI: {text}"));
    assert_eq!(session.len(), 32, "{text}");
    assert!(
        uri.contains(query),
        "the variant's URI keeps the query: {text}"
    );
    let later = uri.strip_prefix("index.m3u8?").unwrap().to_owned();
    let (status, body) = conn.get(&format!("{base}/{uri}"));
    let media = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{media}");
    assert!(media.contains("#EXT-X-PART-INF"), "{media}");
    (later, media)
}

#[test]
fn ll_hls_playlists_keep_the_rfc_rules_and_blocking_reloads_answer_in_time() {
    let node = Node::start_with(2, &["--media-listen", "127.0.0.1:0"]);
    let media = node.media.unwrap();
    let publisher = publish(&node.url("ll"), 20);
    wait_live(&node.url("ll"));
    let mut conn = KeepAlive::connect(media);
    // The first playlist waits for a whole segment; it names the viewer's
    // session, which its reloads carry. The media URIs are every viewer's
    // (a cache in front shares them).
    let (session, text) = open_session(&mut conn, "/live/ll", "");
    assert!(!text.contains("hls_session"), "{text}");
    let mut p = parse_playlist(&text);
    check_rules(&p, &text);
    assert!(!p.parts.is_empty() && !p.segments.is_empty(), "{text}");
    let map = attr(text.split("#EXT-X-MAP:").nth(1).unwrap(), "URI").unwrap();
    let (status, init) = conn.get(&format!("/live/ll/{map}"));
    assert_eq!(status, 200);
    assert_eq!(&init[4..8], b"ftyp");
    // Follow the live edge with blocking reloads for a while, on this
    // connection and on fresh ones (which may land on the other shard: the
    // numbering must agree).
    let mut waits = Vec::new();
    let mut durations = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut round = 0;
    while Instant::now() < deadline {
        let (m, n) = p.hint.unwrap();
        let path = format!("/live/ll/index.m3u8?{session}&_HLS_msn={m}&_HLS_part={n}");
        let started = Instant::now();
        let (status, body) = if round % 3 == 2 {
            KeepAlive::connect(media).get(&path)
        } else {
            conn.get(&path)
        };
        waits.push(started.elapsed());
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        let next = parse_playlist(&text);
        check_rules(&next, &text);
        assert!(next.media_sequence >= p.media_sequence, "{text}");
        assert_eq!(
            next.target, p.target,
            "EXT-X-TARGETDURATION changed: {text}"
        );
        assert!(
            next.parts.iter().any(|x| (x.0, x.1) == (m, n))
                || next.segments.iter().any(|s| s.0 == m),
            "the blocking reload for {m}.{n} came back without it: {text}"
        );
        for &(msn, d) in &next.segments {
            assert_eq!(
                *durations.entry(msn).or_insert(d),
                d,
                "segment {msn} changed"
            );
        }
        // The part it waited for is there, and is a fragment.
        let (status, part) = conn.get(&format!("/live/ll/part{m}.{n}.m4s"));
        assert_eq!(status, 200);
        assert_eq!(&part[4..8], b"moof");
        p = next;
        round += 1;
    }
    assert!(round >= 15, "only {round} blocking reloads in 5 s");
    let slowest = waits.iter().max().unwrap().as_secs_f64();
    eprintln!("{round} blocking reloads, the slowest answered in {slowest:.3} s");
    // Each waits for the next part, which takes up to a part target to
    // build; the margin is for this shared 2-core machine.
    assert!(
        slowest <= p.part_target + 0.25,
        "a blocking reload took {slowest:.3} s (part target {})",
        p.part_target
    );
    // A request for the hinted part blocks until it exists.
    let (m, n) = p.hint.unwrap();
    let (status, part) = conn.get(&format!("/live/ll/part{m}.{n}.m4s"));
    assert_eq!(status, 200);
    assert_eq!(&part[4..8], b"moof");
    // One viewer, whichever connections its requests took.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "tributary_viewers", "ll-hls") != 1 {
        assert!(
            Instant::now() < deadline,
            "LL-HLS viewers: {}",
            get(node.http, "/metrics").1
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Bad requests: too far ahead, not in the window, no such stream.
    let far = p.segments.last().unwrap().0 + 5;
    let (status, _) = conn.get(&format!("/live/ll/index.m3u8?{session}&_HLS_msn={far}"));
    assert_eq!(status, 400, "(and it closes the connection)");
    let (status, _) = raw_http(media, b"GET /live/ll/part0.99.m4s HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = raw_http(media, b"GET /live/nobody/index.m3u8 HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(metric(&node, "tributary_hls_parts_total", "") > 20);
    assert!(metric(&node, "tributary_hls_segments_total", "") >= 2);
    drop(publisher);
}

#[test]
fn ll_hls_plays_in_ffmpeg_from_a_node_other_than_the_publishers() {
    let nats = NatsServer::start("ll-hls");
    let a = cluster_node(&nats, "a", 1, &[]);
    let b = cluster_node(&nats, "b", 2, &["--media-listen", "127.0.0.1:0"]);
    let publisher = publish(&a.url("far"), 16);
    wait_live(&a.url("far"));
    let file = temp_file("ll-hls-remote.mp4");
    let url = format!("http://{}/live/far/index.m3u8", b.media.unwrap());
    ffmpeg_player(&url, &file, Some(4))
        .wait(Duration::from_secs(30))
        .unwrap();
    check_recording(&file, 75);
    check_frames_fit_duration(&file);
    drop(publisher);
}

/// The viewers `/api/streams` (at `path`) shows for `key`:
/// (rtmp, http_flv, ll_hls), None while the stream is not listed.
fn listed_viewers(node: &Node, path: &str, key: &str) -> Option<(u64, u64, u64)> {
    let (status, body) = get(node.http, path);
    if !status.contains("200") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let (app, name) = key.split_once('/').unwrap();
    let s = v["streams"]
        .as_array()?
        .iter()
        .find(|s| s["app"] == app && s["name"] == name)?;
    let n = |p: &str| s["viewers"][p].as_u64().unwrap_or(0);
    assert_eq!(
        s["viewers_total"].as_u64(),
        Some(n("rtmp") + n("http_flv") + n("ll_hls")),
        "{body}"
    );
    Some((n("rtmp"), n("http_flv"), n("ll_hls")))
}

/// Polls until `node`'s listing at `path` shows `want` viewers of `key`.
fn wait_viewers(node: &Node, path: &str, key: &str, want: (u64, u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = None;
    while Instant::now() < deadline {
        seen = listed_viewers(node, path, key);
        if seen == Some(want) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{path} never showed {want:?} viewers of {key} (last: {seen:?})");
}

#[test]
fn viewers_by_protocol_per_stream_are_summed_over_the_cluster() {
    let nats = NatsServer::start("viewers");
    let a = cluster_node(&nats, "a", 1, &["--media-listen", "127.0.0.1:0"]);
    let b = cluster_node(&nats, "b", 2, &["--media-listen", "127.0.0.1:0"]);
    let publisher = publish(&a.url("seen"), 40);
    wait_live(&a.url("seen"));
    // An RTMP player on the publisher's node, an HTTP-FLV viewer and an
    // LL-HLS viewer on the other.
    let rtmp = common::LibPlayer::start(a.addr, "seen");
    let mut flv = TcpStream::connect(b.media.unwrap()).unwrap();
    flv.write_all(b"GET /live/seen.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut drain = flv.try_clone().unwrap();
    let drained = thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut hls = KeepAlive::connect(b.media.unwrap());
    let (session, _) = open_session(&mut hls, "/live/seen", "");

    // Each node's own listing shows its viewers; the cluster's, the sums.
    wait_viewers(&a, "/api/streams", "live/seen", (1, 0, 0));
    wait_viewers(&b, "/api/streams", "live/seen", (0, 1, 1));
    for node in [&a, &b] {
        wait_viewers(node, "/api/streams?scope=cluster", "live/seen", (1, 1, 1));
    }
    let (_, body) = get(a.http, "/api/streams?scope=cluster");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["viewers_from"], serde_json::json!(["a", "b"]), "{body}");
    assert_eq!(v["viewers_missing"], serde_json::json!([]), "{body}");
    // A standalone reading of the node's streams has their codecs too (from
    // the hub's stream reports, every 2 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = get(b.http, "/api/streams");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let s = &v["streams"][0];
        if s["video_codec"] == "h264" && s["audio_codec"] == "aac" {
            assert_eq!(s["relayed"], true, "{body}");
            assert!(s["bitrate_kbps"].as_u64().unwrap() > 0, "{body}");
            assert!(s["started_ms"].as_u64().unwrap() > 0, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "no codecs in {body}");
        thread::sleep(Duration::from_millis(100));
    }

    // The LL-HLS viewer's requests on a new connection are the same viewer.
    let mut again = KeepAlive::connect(b.media.unwrap());
    let (status, _) = again.get(&format!("/live/seen/index.m3u8?{session}"));
    assert_eq!(status, 200);
    wait_viewers(&b, "/api/streams", "live/seen", (0, 1, 1));

    // Viewers that leave are taken out of the sums: an HTTP-FLV viewer when
    // its connection closes, an LL-HLS viewer when it stops asking.
    flv.shutdown(std::net::Shutdown::Both).unwrap();
    drained.join().unwrap();
    drop((hls, again));
    wait_viewers(&a, "/api/streams?scope=cluster", "live/seen", (1, 0, 0));
    wait_viewers(&b, "/api/streams", "live/seen", (0, 0, 0));
    drop(rtmp);
    drop(publisher);
}

#[test]
fn the_player_limit_per_stream_counts_ll_hls_viewers() {
    let node = media_node_with_config("http-limit.toml", "[players]\nmax_per_stream = 1\n");
    let media = node.media.unwrap();
    let publisher = publish(&node.url("one"), 30);
    wait_live(&node.url("one"));
    let mut first = KeepAlive::connect(media);
    let (session, _) = open_session(&mut first, "/live/one", "");
    wait_viewers(&node, "/api/streams", "live/one", (0, 0, 1));
    // The same viewer reloads its playlist, on another connection too, and
    // asks it with another query (a new token, say): still one viewer, not
    // over the limit.
    let reload = format!("/live/one/index.m3u8?{session}");
    assert_eq!(first.get(&reload).0, 200);
    assert_eq!(KeepAlive::connect(media).get(&reload).0, 200);
    assert_eq!(first.get(&format!("{reload}&token=2")).0, 200);
    // The connection asking again without naming its session gets the one
    // it was given.
    let (_, body) = first.get("/live/one/index.m3u8");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains(&session), "{text}");
    wait_viewers(&node, "/api/streams", "live/one", (0, 0, 1));
    // A request without the session is a second viewer, over the limit:
    // 503, whether it asks for the playlist or for HTTP-FLV.
    let (status, text) = raw_http(
        media,
        b"GET /live/one/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{text}");
    assert!(text.contains("player limit"), "{text}");
    let (status, _) = raw_http(media, b"GET /live/one.flv HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    // Its place comes back when the viewer stops asking (its session idles
    // out, three target durations and a second).
    drop(first);
    wait_viewers(&node, "/api/streams", "live/one", (0, 0, 0));
    let mut next = KeepAlive::connect(media);
    open_session(&mut next, "/live/one", "");
    // A session the node no longer knows (it idled out) is authorized and
    // admitted again: here over the limit, since `next` holds the place.
    let (status, _) = raw_http(
        media,
        format!("GET {reload} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    drop(publisher);
}

#[test]
fn without_hls_sessions_the_playlist_comes_at_once_and_a_viewer_is_a_connection() {
    let node = media_node_with_config("http-no-sessions.toml", "[media]\nhls_sessions = false\n");
    let media = node.media.unwrap();
    let publisher = publish(&node.url("plain"), 30);
    wait_live(&node.url("plain"));
    let mut one = KeepAlive::connect(media);
    for _ in 0..2 {
        let (status, body) = one.get("/live/plain/index.m3u8");
        let text = String::from_utf8(body).unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("#EXT-X-PART-INF"), "{text}");
        assert!(
            !text.contains("EXT-X-STREAM-INF") && !text.contains("hls_session"),
            "{text}"
        );
    }
    wait_viewers(&node, "/api/streams", "live/plain", (0, 0, 1));
    let mut two = KeepAlive::connect(media);
    assert_eq!(two.get("/live/plain/index.m3u8").0, 200);
    wait_viewers(&node, "/api/streams", "live/plain", (0, 0, 2));
    drop((one, two));
    wait_viewers(&node, "/api/streams", "live/plain", (0, 0, 0));
    drop(publisher);
}

#[test]
fn the_admin_api_hands_out_play_tokens_that_pass_the_play_rules() {
    let node = media_node_with_config("http-play-token.toml", "[auth]\ntoken_secret = \"a-secret-of-sixteen-bytes\"\n[auth.apps.paid]\nplay = \"token\"\n[http]\nadmin_token = \"adm\"\n");
    let media = node.media.unwrap();
    let publisher = publish(&format!("rtmp://{}/paid/cam", node.addr), 30);
    let (status, _) = common::http(node.http, "GET", "/api/play?stream=paid/cam", None);
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let (status, body) = common::http(node.http, "GET", "/api/play?stream=paid%2Fcam", Some("adm"));
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let query = v["query"].as_str().unwrap().to_owned();
    assert!(query.starts_with("token="), "{body}");
    assert!(v["expires"].as_u64().is_some(), "{body}");
    // An open app needs nothing.
    let (_, body) = common::http(node.http, "GET", "/api/play?stream=live/cam", Some("adm"));
    assert!(body.contains(r#""query":"""#), "{body}");
    let (status, _) = common::http(node.http, "GET", "/api/play", Some("adm"));
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    // With a token set, the token is the check: a host name is fine.
    let (status, _) = common::http_to(
        node.http,
        "admin.example",
        "GET",
        "/api/play?stream=live/cam",
        Some("adm"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    // The token plays; without it the play is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let request = format!("HEAD /paid/cam.flv?{query} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, text) = raw_http(media, request.as_bytes());
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(status.contains("404"), "{text}");
        assert!(Instant::now() < deadline, "the stream never went live");
        thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = raw_http(media, b"HEAD /paid/cam.flv HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    drop(publisher);
}

/// The status of `HEAD path` on the media listener, polled until it is not
/// a 404 (the stream is not live yet).
fn head_status_once_live(media: std::net::SocketAddr, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, text) = raw_http(media, request.as_bytes());
        if !status.contains("404") {
            return status;
        }
        assert!(Instant::now() < deadline, "{path} never went live: {text}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_token_app_protects_its_streams_whichever_way_a_client_splits_the_url() {
    let node = media_node_with_config("http-split.toml", "[auth]\ntoken_secret = \"a-secret-of-sixteen-bytes\"\n[auth.apps.paid]\nplay = \"token\"\n[http]\nadmin_token = \"adm\"\n");
    let media = node.media.unwrap();
    // OBS's split: server rtmp://HOST/paid, stream key s/t.
    let publisher = common::publish_with(
        &["-rtmp_app", "paid", "-rtmp_playpath", "s/t"],
        &format!("rtmp://{}/paid", node.addr),
        30,
    );
    let (status, body) = common::http(node.http, "GET", "/api/play?stream=paid/s/t", Some("adm"));
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let query = v["query"].as_str().unwrap().to_owned();
    assert!(query.starts_with("token="), "{body}");
    assert_eq!(
        head_status_once_live(media, &format!("/paid/s/t.flv?{query}")),
        "HTTP/1.1 200 OK"
    );
    // Every HTTP reading of the name is the app `paid`, so none plays
    // without the token: plain, and with the slashes percent-encoded.
    for path in [
        "/paid/s/t.flv",
        "/paid/s/t/index.m3u8",
        "/paid%2Fs/t.flv",
        "/paid/s%2Ft.flv",
        "/paid%2Fs%2Ft/index.m3u8",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, text) = raw_http(media, request.as_bytes());
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "{path}: {text}");
    }
    // The LL-HLS playlist with the token plays.
    let mut conn = KeepAlive::connect(media);
    let (status, body) = conn.get(&format!("/paid/s/t/index.m3u8?{query}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // A name that is not one reading is refused, not guessed at.
    for path in ["/paid/s//t.flv", "/paid/../live/t.flv", "/paid/s%252Ft.flv"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, text) = raw_http(media, request.as_bytes());
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{path}: {text}");
    }
    // The admin API names it as the rule does: app `paid`, name `s/t`.
    let (_, body) = common::http(node.http, "GET", "/api/streams", Some("adm"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stream = &v["streams"][0];
    assert_eq!(
        (stream["app"].as_str(), stream["name"].as_str()),
        (Some("paid"), Some("s/t")),
        "{body}"
    );
    // ffmpeg's own split of rtmp://HOST/paid/s/t (app `paid/s`, name `t`)
    // is the same stream under the same rule: refused without the token,
    // played with it.
    let rtmp = format!("rtmp://{}/paid/s/t", node.addr);
    let refused = Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "10000000", &rtmp])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "played without a token");
    let played = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-rw_timeout",
            "10000000",
            "-show_streams",
            &format!("{rtmp}?{query}"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&played.stdout).contains("codec_type=video"),
        "{}",
        String::from_utf8_lossy(&played.stderr)
    );
    // The admin API takes the same rule: names it cannot read are a 400
    // with the reason, and the kick names the stream however it is
    // encoded.
    for path in [
        "/api/play?stream=paid//t",
        "/api/play?stream=paid%252Fs%252Ft",
        "/api/play?stream=paid",
    ] {
        let (status, body) = common::http(node.http, "GET", path, Some("adm"));
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{path}: {body}");
    }
    for path in [
        "/api/streams/paid/..%2Fs/t",
        "/api/streams/paid/s/t%3F",
        "/api/streams/paid%",
    ] {
        let (status, body) = common::http(node.http, "DELETE", path, Some("adm"));
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{path}: {body}");
    }
    let (status, body) = common::http(
        node.http,
        "DELETE",
        "/api/streams/paid%2Fs%2Ft",
        Some("adm"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains(r#""kicked":true"#), "{body}");
    drop(publisher);
}

#[test]
fn a_request_with_a_body_gets_400_and_exactly_one_answer() {
    let node = media_node_with_config("http-framing.toml", "");
    let media = node.media.unwrap();
    let smuggled = "GET /live/cam.flv HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        format!("GET /live/cam/index.m3u8 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
        format!("HEAD /live/cam.flv HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("OPTIONS /live/cam.flv HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx{smuggled}"),
        format!("GET /live/cam.flv HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n{smuggled}"),
        format!("GET /live/cam.flv HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n{smuggled}"),
        format!("GET /live/cam.flv HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n{smuggled}"),
    ];
    for request in &cases {
        let (status, text) = raw_http(media, request.as_bytes());
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{request:?}: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{request:?}: {text}");
    }
    assert!(metric(&node, "tributary_http_refused_total", "bad_request") >= cases.len() as u64);
    // A Content-Length of 0 is no body: the request is served as usual.
    let (status, _) = raw_http(
        media,
        b"GET /live/nobody.flv HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // Pipelined requests without bodies are each answered, in order.
    let publisher = publish(&node.url("cam"), 20);
    wait_live(&node.url("cam"));
    let mut conn = KeepAlive::connect(media);
    conn.stream
        .write_all(b"GET /live/cam/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\nGET /live/cam/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (first, a) = conn.read_answer();
    let (second, b) = conn.read_answer();
    assert_eq!((first, second), (200, 200));
    assert_eq!(a, b, "the same connection is given the same session");
    drop(publisher);
}
