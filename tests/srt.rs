//! SRT end to end, with real clients and libsrt on both sides: ffmpeg 5.1
//! (`srt://`, built with libsrt) and `srt-live-transmit` publish MPEG-TS
//! into the node's SRT listener; the stream plays over RTMP, HTTP-FLV and
//! LL-HLS, also from another node of a NATS cluster, judged by ffprobe.
//! And an attacker's tries at the listener: stream ids that name no stream
//! or climb out of it, modes it does not serve, the auth rules, a wrong or
//! missing passphrase, a key already live, garbage datagrams, another
//! stream's signed token; each is refused and the stream already live is
//! not harmed. A publish through a lossy link keeps every frame.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    check_recording, cluster_node, ffmpeg_player, metric_sum, temp_file, wait_log, wait_published,
    write_config, NatsServer, Node, Proc, LIVE_LAVFI_INPUT,
};

/// ffmpeg's arguments for `seconds` of live H.264 + AAC, muxed as TS.
fn ts_source(seconds: u32) -> Vec<String> {
    let mut args: Vec<String> = LIVE_LAVFI_INPUT.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            &format!("testsrc2=size=320x240:rate=25:duration={seconds}"),
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:duration={seconds}"),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "mpegts",
        ]
        .map(str::to_owned),
    );
    args
}

/// ffmpeg publishing `seconds` over SRT with `streamid` (and more URL
/// options, `&`-joined).
fn publish_srt(node: &Node, streamid: &str, options: &str, seconds: u32) -> Proc {
    let mut url = format!(
        "srt://{}?streamid={streamid}&pkt_size=1316",
        node.srt.unwrap()
    );
    if !options.is_empty() {
        url.push('&');
        url.push_str(options);
    }
    Proc::spawn(
        "ffmpeg",
        Command::new("ffmpeg").args(ts_source(seconds)).arg(url),
    )
}

/// A node with SRT (and a media listener) and `config`.
fn srt_node(name: &str, config: &str, extra: &[&str]) -> Node {
    let config = write_config(name, config);
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--srt-listen",
        "127.0.0.1:0",
        "--media-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Node::start_with(2, &args)
}

fn count_log(node: &Node, line: &str) -> usize {
    node.log.lock().unwrap().matches(line).count()
}

#[test]
fn an_srt_publish_from_ffmpeg_plays_as_rtmp_flv_ll_hls_and_srt_on_both_nodes_of_a_cluster() {
    let nats = NatsServer::start("srt");
    let a = cluster_node(
        &nats,
        "srt-a",
        2,
        &[
            "--srt-listen",
            "127.0.0.1:0",
            "--media-listen",
            "127.0.0.1:0",
        ],
    );
    let b = cluster_node(
        &nats,
        "srt-b",
        2,
        &[
            "--srt-listen",
            "127.0.0.1:0",
            "--media-listen",
            "127.0.0.1:0",
        ],
    );
    let publisher = publish_srt(&a, "#!::r=live/field,m=publish", "", 14);
    wait_published(&a, "field");
    let players = [
        (a.url("field"), "srt-rtmp-a.flv"),
        (b.url("field"), "srt-rtmp-b.flv"),
        (
            format!("http://{}/live/field.flv", a.media.unwrap()),
            "srt-flv-a.flv",
        ),
        (
            format!("http://{}/live/field/index.m3u8", b.media.unwrap()),
            "srt-hls-b.mkv",
        ),
        // And over SRT from the other node, as MPEG-TS.
        (
            format!(
                "srt://{}?streamid=#!::r=live/field,m=request",
                b.srt.unwrap()
            ),
            "srt-srt-b.ts",
        ),
    ];
    // srt-live-transmit plays it from node A (a plain stream id is a
    // play), writing the TS to its stdout until the stream ends.
    let slt_file = temp_file("srt-live-transmit-a.ts");
    let slt = Command::new("srt-live-transmit")
        .args([
            "-q",
            "-a:no",
            &format!("srt://{}?streamid=live/field", a.srt.unwrap()),
            "file://con",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&slt_file).unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("srt-live-transmit");
    let slt = Proc(slt, "srt-live-transmit");
    let running: Vec<(Proc, std::path::PathBuf)> = players
        .iter()
        .map(|(url, name)| {
            let file = temp_file(name);
            (ffmpeg_player(url, &file, Some(4)), file)
        })
        .collect();
    for (p, file) in running {
        p.wait(Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        eprintln!("checking {}", file.display());
        // 4 s at 25 fps, less the wait for a keyframe.
        check_recording(&file, 75);
    }
    publisher.wait(Duration::from_secs(40)).unwrap();
    wait_log(&a, "srt: unpublished");
    // The stream's end closes the SRT player; it has the whole stream
    // from its first keyframe.
    slt.wait(Duration::from_secs(30)).unwrap();
    check_recording(&slt_file, 250);
    assert!(metric_sum(&a, "tributary_srt_callers_total", "accepted") >= 2);
    assert!(metric_sum(&a, "tributary_bytes_in_total", "") > 100_000);
}

#[test]
fn srt_live_transmit_publishes_with_the_apps_passphrase_and_a_wrong_one_is_refused() {
    let node = srt_node(
        "srt-pass.toml",
        "[srt]\nlatency_ms = 200\n[srt.apps.secure]\npassphrase = \"correct horse battery\"\n",
        &[],
    );
    let srt = node.srt.unwrap();
    // ffmpeg makes the TS; srt-live-transmit (libsrt's own tool) carries it
    // from its stdin, in MediaMTX's plain stream id form.
    let source = |seconds: u32, passphrase: &str| {
        let mut ffmpeg = Command::new("ffmpeg")
            .args(ts_source(seconds))
            .arg("-")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ffmpeg");
        let stdout = ffmpeg.stdout.take().unwrap();
        let slt = Command::new("srt-live-transmit")
            .args([
                "-q",
                "file://con",
                &format!(
                    "srt://{srt}?streamid=publish:secure/relay&passphrase={passphrase}&latency=200"
                ),
            ])
            .stdin(Stdio::from(stdout))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("srt-live-transmit is required (scripts/test installs srt-tools)");
        (Proc(ffmpeg, "ffmpeg"), Proc(slt, "srt-live-transmit"))
    };
    // The wrong passphrase: libsrt refuses it in the handshake; nothing is
    // published.
    let (_ff, _slt) = source(4, "wrong horse battery");
    thread::sleep(Duration::from_millis(1500));
    assert!(!node.log.lock().unwrap().contains("srt: publishing"));
    drop((_ff, _slt));
    // No passphrase at all: refused too.
    let refused = publish_srt(&node, "publish:secure/relay", "", 3);
    assert!(refused.wait(Duration::from_secs(20)).is_err());
    assert!(!node.log.lock().unwrap().contains("srt: publishing"));

    let (ffmpeg, slt) = source(10, "correct horse battery");
    wait_published(&node, "relay");
    let file = temp_file("srt-live-transmit.flv");
    let player = ffmpeg_player(
        &format!("rtmp://{}/secure/relay", node.addr),
        &file,
        Some(4),
    );
    player.wait(Duration::from_secs(40)).unwrap();
    check_recording(&file, 75);
    ffmpeg.wait(Duration::from_secs(30)).unwrap();
    drop(slt);
}

#[test]
fn the_srt_listener_refuses_bad_stream_ids_modes_rules_and_garbage_and_keeps_serving() {
    let node = srt_node(
        "srt-attack.toml",
        "[auth.apps.private]\npublish = \"keys\"\nkeys = [\"allowed\"]\n",
        &[],
    );
    let live = publish_srt(&node, "#!::r=live/steady,m=publish", "", 16);
    wait_published(&node, "steady");

    // Stream ids that name no stream, climb out of the app, or ask for a
    // mode or type not served; and a key the rules refuse.
    for id in [
        "#!::m=publish",
        "#!::r=../../etc/passwd,m=publish",
        "#!::r=live/a%2F..%2Fb,m=publish",
        "#!::r=live/x,m=bidirectional",
        "#!::r=live/x,t=file,m=publish",
        "justone",
        "#!::r=private/other,m=publish",
    ] {
        let p = publish_srt(&node, id, "", 2);
        assert!(
            p.wait(Duration::from_secs(20)).is_err(),
            "{id}: the publish went through"
        );
    }
    assert!(metric_sum(&node, "tributary_srt_callers_total", "stream_id") >= 6);
    assert!(metric_sum(&node, "tributary_srt_callers_total", "auth") >= 1);

    // A key already live: admitted by SRT, refused by admission, closed.
    let before = count_log(&node, "srt: publish refused");
    let twin = publish_srt(&node, "#!::r=live/steady,m=publish", "", 3);
    let _ = twin.wait(Duration::from_secs(20));
    assert!(count_log(&node, "srt: publish refused") > before);

    // Garbage datagrams at the port, of every size up to the MTU.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for n in [0usize, 1, 4, 16, 64, 200, 1316, 1500] {
        let junk: Vec<u8> = (0..n).map(|i| (i * 131 + n) as u8).collect();
        s.send_to(&junk, node.srt.unwrap()).unwrap();
    }
    // A handshake-looking header (control bit set, type 0 induction) with
    // a nonsense body.
    let mut fake = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    fake.extend_from_slice(&[0xff; 48]);
    s.send_to(&fake, node.srt.unwrap()).unwrap();

    // The allowed key of the private app still publishes, and the steady
    // stream played through all of it.
    let allowed = publish_srt(&node, "#!::r=private/allowed,m=publish", "", 6);
    wait_published(&node, "allowed");
    let file = temp_file("srt-steady.flv");
    let player = ffmpeg_player(&node.url("steady"), &file, Some(4));
    player.wait(Duration::from_secs(40)).unwrap();
    check_recording(&file, 75);
    allowed.wait(Duration::from_secs(30)).unwrap();
    live.wait(Duration::from_secs(40)).unwrap();
    assert_eq!(
        node.log.lock().unwrap().matches("panicked").count(),
        0,
        "{}",
        node.log.lock().unwrap()
    );
}

#[test]
fn srt_sessions_are_bounded_per_address_in_the_handshake() {
    let node = srt_node("srt-limit.toml", "[srt]\nmax_sessions_per_ip = 2\n", &[]);
    let publisher = publish_srt(&node, "publish:live/few", "", 12);
    wait_published(&node, "few");
    let url = format!("srt://{}?streamid=live/few", node.srt.unwrap());
    let first = temp_file("srt-limit-1.ts");
    let player = ffmpeg_player(&url, &first, Some(4));
    wait_log(&node, "srt: playing");
    // The third from 127.0.0.1 is refused before it is accepted.
    let refused = ffmpeg_player(&url, &temp_file("srt-limit-2.ts"), Some(2));
    assert!(refused.wait(Duration::from_secs(20)).is_err());
    assert!(metric_sum(&node, "tributary_srt_callers_total", "limit") >= 1);
    player.wait(Duration::from_secs(30)).unwrap();
    check_recording(&first, 75);
    drop(publisher);
}

/// A lossy, slow link in user space between a caller and the node's SRT
/// port: each way, datagrams are dropped with a probability (a fixed
/// pseudo-random sequence) and delayed, as a `tc netem` qdisc on that
/// way's egress would. (These machines' kernel has no netem:
/// `CONFIG_NET_SCH_NETEM is not set`.) Stops when dropped.
struct LossyLink {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl LossyLink {
    /// `forward`: (loss, delay) from the caller to the node; `back`: from
    /// the node to the caller.
    fn start(
        to: std::net::SocketAddr,
        forward: (f64, Duration),
        back_way: (f64, Duration),
    ) -> LossyLink {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(to).unwrap();
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let caller: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
        let mut threads = Vec::new();
        // seed, socket to read, and where each datagram goes
        for (seed, from_front, (loss, delay)) in [
            (0x1234_5678u64, true, forward),
            (0x9abc_def0u64, false, back_way),
        ] {
            let (rx, tx) = (
                if from_front { &front } else { &back }.try_clone().unwrap(),
                if from_front { &back } else { &front }.try_clone().unwrap(),
            );
            let (stop, dropped, caller) = (stop.clone(), dropped.clone(), caller.clone());
            threads.push(thread::spawn(move || {
                rx.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
                let mut state = seed;
                let mut queue: std::collections::VecDeque<(Instant, Vec<u8>)> =
                    std::collections::VecDeque::new();
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let got = if from_front {
                        rx.recv_from(&mut buf).map(|(n, a)| {
                            *caller.lock().unwrap() = Some(a);
                            n
                        })
                    } else {
                        rx.recv(&mut buf)
                    };
                    if let Ok(n) = got {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        if (state % 1_000_000) as f64 / 1_000_000.0 < loss {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        } else {
                            queue.push_back((Instant::now() + delay, buf[..n].to_vec()));
                        }
                    }
                    while queue.front().is_some_and(|(due, _)| *due <= Instant::now()) {
                        let (_, d) = queue.pop_front().unwrap();
                        let _ = if from_front {
                            tx.send(&d)
                        } else {
                            match *caller.lock().unwrap() {
                                Some(a) => tx.send_to(&d, a),
                                None => Ok(0),
                            }
                        };
                    }
                }
            }));
        }
        LossyLink {
            addr,
            stop,
            dropped,
            threads,
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn a_2_5_mbit_srt_publish_over_a_lossy_link_plays_with_every_frame_and_the_losses_repaired() {
    let node = srt_node("srt-loss.toml", "[srt]\nlatency_ms = 200\n", &[]);
    // One netem qdisc on the publisher's side: 2% of its datagrams lost
    // and 40 ms of delay on the way to the node; ACKs and NAKs come back
    // as they are.
    let link = LossyLink::start(
        node.srt.unwrap(),
        (0.02, Duration::from_millis(40)),
        (0.0, Duration::ZERO),
    );
    let seconds = 30;
    // 2.5 Mbit/s on the wire: the TS muxer pads to a constant rate.
    let mut args = ts_source(seconds);
    let at = args.iter().position(|a| a == "mpegts").unwrap();
    for (i, extra) in [
        "-b:v", "2000k", "-maxrate", "2000k", "-bufsize", "1000k", "-muxrate", "2500k",
    ]
    .iter()
    .enumerate()
    {
        args.insert(at - 1 + i, extra.to_string());
    }
    let publisher = Proc::spawn(
        "ffmpeg",
        Command::new("ffmpeg").args(&args).arg(format!(
            "srt://{}?streamid=publish:live/lossy&pkt_size=1316&latency=200000",
            link.addr
        )),
    );
    wait_published(&node, "lossy");
    let file = temp_file("srt-lossy.flv");
    // From the stream's first seconds to its end.
    let player = ffmpeg_player(&node.url("lossy"), &file, None);
    // /api/streams shows the publisher's link while it runs: losses found
    // and repaired, its round trip and the latency the ends agreed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let api = loop {
        let (_, body) = common::get(node.http, "/api/streams");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let srt = v["streams"][0]["srt"].clone();
        if srt["packets_retransmitted"].as_u64().unwrap_or(0) > 10 {
            break srt;
        }
        assert!(Instant::now() < deadline, "no SRT link in {body}");
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(api["latency_ms"], 200, "{api}");
    assert!(api["rtt_ms"].as_f64().unwrap() >= 35.0, "{api}");
    assert!(api["packets_lost"].as_u64().unwrap() > 0, "{api}");
    publisher.wait(Duration::from_secs(60)).unwrap();
    player.wait(Duration::from_secs(30)).unwrap();
    // Every frame from the first keyframe the player saw to the end: the
    // video's timestamps step 40 ms (25 fps) with no gap.
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let pts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(
        pts.len() >= 25 * (seconds as usize - 4),
        "{} frames",
        pts.len()
    );
    let repaired = metric_sum(&node, "tributary_srt_packets_retransmitted_total", "");
    let lost = metric_sum(&node, "tributary_srt_packets_lost_total", "");
    let late = metric_sum(&node, "tributary_srt_packets_dropped_total", "");
    eprintln!(
        "lossy link: {} datagrams dropped; node: {lost} lost, {repaired} retransmitted, {late} too late",
        link.dropped()
    );
    let gaps: Vec<(f64, f64)> = pts
        .windows(2)
        .filter(|w| w[1] - w[0] > 0.041)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(gaps.is_empty(), "missing frames between {gaps:?}");
    assert!(link.dropped() > 100, "{} datagrams dropped", link.dropped());
    assert!(
        lost > 50 && repaired >= lost,
        "lost {lost}, repaired {repaired}"
    );
    assert_eq!(late, 0, "packets dropped as too late");
}

#[test]
fn a_signed_token_in_the_stream_id_admits_a_publish_and_a_wrong_one_is_refused() {
    let secret = "a-secret-of-thirty-two-bytes-long";
    let node = srt_node(
        "srt-token.toml",
        &format!("[auth]\ntoken_secret = \"{secret}\"\n[auth.apps.signed]\npublish = \"token\"\n"),
        &[],
    );
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let good = tributary::auth::sign(
        secret.as_bytes(),
        tributary::auth::Action::Publish,
        "signed",
        "cam",
        expires,
    );
    // Another stream's token, and none: refused in the handshake.
    let other = tributary::auth::sign(
        secret.as_bytes(),
        tributary::auth::Action::Publish,
        "signed",
        "other",
        expires,
    );
    for id in [
        format!("#!::r=signed/cam,m=publish,token={other},expires={expires}"),
        "#!::r=signed/cam,m=publish".to_owned(),
    ] {
        let p = publish_srt(&node, &id, "", 2);
        assert!(p.wait(Duration::from_secs(20)).is_err(), "{id}");
    }
    assert!(metric_sum(&node, "tributary_srt_callers_total", "auth") >= 2);
    let publisher = publish_srt(
        &node,
        &format!("#!::r=signed/cam,m=publish,token={good},expires={expires}"),
        "",
        6,
    );
    wait_published(&node, "cam");
    let file = temp_file("srt-signed.flv");
    let player = ffmpeg_player(&format!("rtmp://{}/signed/cam", node.addr), &file, Some(3));
    player.wait(Duration::from_secs(30)).unwrap();
    check_recording(&file, 50);
    publisher.wait(Duration::from_secs(30)).unwrap();
}

#[test]
fn the_webhook_is_asked_for_srt_publishes_and_plays_and_its_no_refuses_them() {
    let (service, seen) = common::auth_service();
    let node = srt_node(
        "srt-webhook.toml",
        &format!(
            "[auth]\nwebhook_url = \"http://{service}/on_srt\"\nwebhook_timeout_ms = 1000\nwebhook_on_play = true\n"
        ),
        &[],
    );
    // The service refuses what is not `good*`, and does not answer for
    // `slow*` in time: both publishes are cut.
    for refused in ["bad", "slow"] {
        let p = publish_srt(&node, &format!("#!::r=live/{refused},m=publish"), "", 2);
        assert!(
            p.wait(Duration::from_secs(20)).is_err(),
            "{refused} published over SRT"
        );
    }
    wait_log(&node, "publish refused: stream not on the list");
    wait_log(
        &node,
        "publish refused: the auth service did not answer in time",
    );
    let publisher = publish_srt(&node, "#!::r=live/good,m=publish,session=42", "", 8);
    wait_published(&node, "good");
    // A play over SRT is asked too: allowed for `good`, refused for
    // `bad-play` before any lookup of the stream.
    let file = temp_file("srt-webhook-play.ts");
    ffmpeg_player(
        &format!(
            "srt://{}?streamid=#!::r=live/good,m=request",
            node.srt.unwrap()
        ),
        &file,
        Some(3),
    )
    .wait(Duration::from_secs(30))
    .unwrap();
    check_recording(&file, 50);
    let refused_play = temp_file("srt-webhook-refused.ts");
    assert!(ffmpeg_player(
        &format!(
            "srt://{}?streamid=#!::r=live/bad-play,m=request",
            node.srt.unwrap()
        ),
        &refused_play,
        Some(2),
    )
    .wait(Duration::from_secs(20))
    .is_err());
    wait_log(&node, "play refused: stream not on the list");
    publisher.wait(Duration::from_secs(30)).unwrap();

    let seen = seen.lock().unwrap().clone();
    let asked = |action: &str, stream: &str| {
        seen.iter()
            .find(|v| v["action"] == action && v["stream"] == stream)
            .unwrap_or_else(|| panic!("{action} {stream} not asked: {seen:?}"))
            .clone()
    };
    let good = asked("publish", "good");
    assert_eq!(good["app"], "live");
    assert_eq!(good["query"], "session=42");
    assert_eq!(good["client_ip"], "127.0.0.1");
    asked("publish", "bad");
    asked("play", "good");
    asked("play", "bad-play");
    assert!(metric_sum(&node, "tributary_auth_refused_total", "webhook") >= 2);
}
