//! SRT end to end, with real clients and libsrt on both sides: ffmpeg 5.1
//! (`srt://`, built with libsrt) and `srt-live-transmit` publish MPEG-TS
//! into the node's SRT listener; the stream plays over RTMP, HTTP-FLV and
//! LL-HLS, also from another node of a NATS cluster, judged by ffprobe.
//! And an attacker's tries at the listener: stream ids that name no stream
//! or climb out of it, modes it does not serve, the auth rules, a wrong or
//! missing passphrase, a key already live, garbage datagrams; each is
//! refused and the stream already live is not harmed.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    check_recording, cluster_node, ffmpeg_player, metric_sum, temp_file, wait_published,
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

/// Polls the node's log until it holds `line`.
fn wait_log(node: &Node, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !node.log.lock().unwrap().contains(line) {
        assert!(
            Instant::now() < deadline,
            "no {line:?} in:\n{}",
            node.log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(20));
    }
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
