//! A real browser: Debian's Chromium, headless, driven by playwright-core
//! (tests/browser/preview.mjs; scripts/test installs both). It opens the
//! web console of one node, starts the preview of a stream that ffmpeg
//! publishes to another node of the cluster (an app whose players need a
//! signed token, which the console gets from the admin API), and reports
//! what the page saw:
//! the video's currentTime must advance, no hls.js or mpegts.js error may
//! fire, and playback must stay close to the live edge (LL-HLS ≤ 2 s,
//! HTTP-FLV ≤ 1 s). The console's table must count the preview among the
//! stream's viewers by protocol, beside an RTMP player on the publisher's
//! node. Each run saves a screenshot in target/browser/. A second test
//! (tests/browser/pushes.mjs) reads a stream's push targets from the
//! console's table: one live, one backing off with the error it got.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{cluster_node, publish, wait_live, NatsServer};

/// What the page saw, as preview.mjs prints it.
#[derive(Debug)]
struct Seen {
    times: Vec<f64>,
    latencies: Vec<f64>,
    errors: Vec<String>,
    /// The stream's viewers by protocol in the console's table at the end.
    viewers: serde_json::Value,
}

fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Runs a driver of tests/browser/ with `args`; what it printed, as JSON.
fn run_driver(script: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new("node")
        .arg(driver_dir().join(script))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("node is required (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{script}: output is not JSON ({e}): {stdout}"))
}

fn run_preview(console: &str, stream: &str, kind: &str, seconds: u32) -> Seen {
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join(format!("preview-{kind}.png"));
    let _ = std::fs::remove_file(&shot);
    let output = Command::new("node")
        .arg(driver_dir().join("preview.mjs"))
        .args([console, stream, kind])
        .arg(&shot)
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .output()
        .expect(
            "node is required (scripts/test installs it, and playwright-core into tests/browser)",
        );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser driver failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("driver output is not JSON ({e}): {stdout}"));
    let samples = v["samples"].as_array().expect("samples").clone();
    let mut errors: Vec<String> = v["pageErrors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("page: {e}"))
        .collect();
    if let Some(last) = samples.last() {
        errors.extend(
            last["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e.as_str().unwrap_or("").to_owned()),
        );
    }
    Seen {
        times: samples
            .iter()
            .filter_map(|s| s["currentTime"].as_f64())
            .collect(),
        latencies: samples
            .iter()
            .filter_map(|s| s["latency"].as_f64())
            .collect(),
        errors,
        viewers: v["viewers"].clone(),
    }
}

fn check(seen: &Seen, seconds: u32, max_latency: f64) {
    assert!(seen.errors.is_empty(), "player errors: {:?}", seen.errors);
    let first = seen.times.iter().copied().find(|t| *t > 0.0);
    let last = seen.times.last().copied().unwrap_or(0.0);
    let played = first.map_or(0.0, |f| last - f);
    assert!(
        played >= seconds as f64 / 2.0,
        "currentTime advanced {played:.2} s in {seconds} s: {:?}",
        seen.times
    );
    // Once playing has settled (the last third of the run), playback stays
    // near the live edge.
    let settled = &seen.latencies[seen.latencies.len() * 2 / 3..];
    assert!(!settled.is_empty(), "no latency reading: {seen:?}");
    let worst = settled.iter().copied().fold(0.0, f64::max);
    eprintln!("settled latency behind the live edge: worst {worst:.2} s of {settled:?}");
    assert!(
        worst <= max_latency,
        "{worst:.2} s behind the live edge (limit {max_latency} s): {:?}",
        seen.latencies
    );
}

/// Node B's console counts its own preview (over `protocol`) and node A's
/// RTMP player among the stream's viewers.
fn check_viewers(seen: &Seen, protocol: &str) {
    let n = |p: &str| seen.viewers[p].as_u64();
    assert_eq!(
        n("rtmp"),
        Some(1),
        "viewers in the console: {}",
        seen.viewers
    );
    // One viewer, whichever of its pooled connections hls.js used.
    assert_eq!(
        n(protocol),
        Some(1),
        "viewers in the console: {}",
        seen.viewers
    );
}

#[test]
fn the_console_previews_a_stream_of_another_node_in_chromium() {
    // Players of `live` need a signed token: the console asks the admin
    // API for one (`/api/play`) before it starts a preview.
    let secret = "a-secret-of-sixteen-bytes";
    let config = common::temp_file("browser-auth.toml");
    std::fs::write(
        &config,
        format!("[auth]\ntoken_secret = \"{secret}\"\n[auth.apps.live]\nplay = \"token\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let nats = NatsServer::start("browser");
    let a = cluster_node(&nats, "a", 1, &["--config", config]);
    let b = cluster_node(
        &nats,
        "b",
        2,
        &["--config", config, "--media-listen", "127.0.0.1:0"],
    );
    let publisher = publish(&a.url("cam"), 40);
    let expires = tributary::cluster::unix_ms() / 1000 + 600;
    let token = tributary::auth::sign(
        secret.as_bytes(),
        tributary::auth::Action::Play,
        "live",
        "cam",
        expires,
    );
    let play = format!("cam?token={token}&expires={expires}");
    wait_live(&format!("{}?token={token}&expires={expires}", a.url("cam")));
    let rtmp = common::LibPlayer::start(a.addr, &play);
    let console = format!("http://{}/console/", b.http);
    let seen = run_preview(&console, "live/cam", "hls", 10);
    check(&seen, 10, 2.0);
    check_viewers(&seen, "ll_hls");
    let seen = run_preview(&console, "live/cam", "flv", 8);
    check(&seen, 8, 1.0);
    check_viewers(&seen, "http_flv");
    drop(rtmp);
    drop(publisher);
}

/// The console lists a stream's push targets with their state and the
/// error a failing one got (the table refreshes with the page).
#[test]
fn the_console_shows_a_streams_push_targets_and_their_errors() {
    let target = common::Node::start(1);
    let refusing = common::free_port();
    let config = common::temp_file("browser-push.toml");
    std::fs::write(
        &config,
        format!(
            "[push]\nbackoff_min_ms = 200\nbackoff_max_ms = 500\n[push.apps.live]\ntargets = [\"rtmp://{}/live/{{name}}\", \"rtmp://127.0.0.1:{refusing}/live/{{name}}\"]\n",
            target.addr
        ),
    )
    .unwrap();
    let node = common::Node::start_with(1, &["--config", config.to_str().unwrap()]);
    let _publisher = common::publish(&node.url("shown"), 30);
    common::wait_live(&target.url("shown"));
    let v = run_driver(
        "pushes.mjs",
        &[
            &format!("http://{}/", node.http),
            "live/shown",
            "live",
            "backing_off",
        ],
    );
    assert_eq!(v["pageErrors"].as_array().map(Vec::len), Some(0), "{v}");
    let rows = v["rows"].as_array().unwrap();
    let state = |port: u16| {
        rows.iter()
            .find(|r| {
                r[1].as_str()
                    .is_some_and(|u| u.contains(&format!(":{port}/")))
            })
            .unwrap_or_else(|| panic!("no row for port {port}: {v}"))
    };
    assert_eq!(state(target.addr.port())[3], "live", "{v}");
    let failing = state(refusing);
    assert_eq!(failing[3], "backing_off", "{v}");
    assert!(failing[7].as_str().unwrap().contains("refused"), "{v}");
}

/// An adaptive group in Chromium: a 720p publish and its 360p rendition
/// (the shipped ffmpeg template's shape) play as two hls.js levels; told
/// to switch, the preview plays frames of the other rendition.
#[test]
fn hls_js_plays_a_stream_and_its_rendition_as_levels_and_switches_between_them() {
    let config = common::temp_file("browser-abr.toml");
    std::fs::write(&config, common::TRANSCODE_360P).unwrap();
    let node = common::Node::start_with(
        1,
        &[
            "--config",
            config.to_str().unwrap(),
            "--media-listen",
            "127.0.0.1:0",
        ],
    );
    let _publisher = common::publish_sized(&[], &node.url("group"), 90, "1280x720");
    common::wait_live(&node.url("group_360p"));
    let v = run_driver(
        "levels.mjs",
        &[&format!("http://{}/", node.http), "live/group"],
    );
    eprintln!("{v}");
    assert_eq!(v["pageErrors"].as_array().map(Vec::len), Some(0), "{v}");
    let mut levels: Vec<u64> = v["levels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_u64())
        .collect();
    levels.sort();
    assert_eq!(levels, [360, 720], "{v}");
    let (before, after) = (v["before"].as_u64(), v["after"].as_u64());
    assert!(
        before.is_some() && after.is_some() && before != after,
        "{v}"
    );
    assert!(v["advanced"].as_f64().unwrap_or(0.0) > 1.0, "{v}");
}

/// A node recording the `live` app (4 s files) into a fresh directory,
/// with its media listener.
fn recording_node(name: &str) -> common::Node {
    let dir = common::temp_file(name);
    let _ = std::fs::remove_dir_all(&dir);
    let config = common::write_config(
        &format!("{name}.toml"),
        &format!(
            "[record]\npath = \"{}\"\nsegment_secs = 4\n[record.apps.live]\nrecord = \"all\"\n",
            dir.display()
        ),
    );
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--media-listen",
        "127.0.0.1:0",
    ];
    common::Node::start_with(1, &args)
}

/// A recording played back in Chromium: the console lists the node's
/// recorded stream, and its "play" button plays the VOD playlist through
/// hls.js; playback advances with no error. The screenshot is
/// target/browser/recording.png.
#[test]
fn the_console_plays_a_recording_through_its_vod_playlist() {
    let node = recording_node("browser-rec");
    common::publish(&node.url("rec"), 10)
        .wait(std::time::Duration::from_secs(40))
        .unwrap();
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("recording.png");
    let _ = std::fs::remove_file(&shot);
    let v = run_driver(
        "recording.mjs",
        &[
            &format!("http://{}/", node.http),
            "live/rec",
            shot.to_str().unwrap(),
            "6",
        ],
    );
    assert_eq!(v["pageErrors"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0), "{v}");
    let times: Vec<f64> = v["times"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_f64())
        .collect();
    let last = times.last().copied().unwrap_or(0.0);
    assert!(last > 3.0, "playback reached {last} s: {v}");
    assert!(times.windows(2).all(|w| w[1] >= w[0]), "{v}");
    assert!(shot.exists(), "no screenshot");
}

/// A live stream rewound in Chromium: the console's "rewind" on a stream
/// being published and recorded plays its recording from minutes back
/// through hls.js, on past what was recorded when it started (the EVENT
/// playlist grows), with no error. The screenshot is
/// target/browser/rewind.png.
#[test]
fn the_console_rewinds_a_live_stream_and_plays_on_to_the_live_edge() {
    let node = recording_node("browser-rewind");
    let publisher = common::publish(&node.url("rewound"), 40);
    // Recorded for a few seconds: the playlist up to now is an EVENT one.
    let media = node.media.unwrap();
    let start =
        tributary::container::record::format_rfc3339(tributary::cluster::unix_ms() - 300_000);
    let path = format!("/recordings/live/rewound/index.m3u8?start={start}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let recorded = loop {
        let (status, body) = common::get(media, &path);
        let secs: f64 = body
            .lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .filter_map(|d| d.trim_end_matches(',').parse::<f64>().ok())
            .sum();
        if status.contains("200") && secs >= 2.0 {
            assert!(body.contains("#EXT-X-PLAYLIST-TYPE:EVENT"), "{body}");
            assert!(!body.contains("#EXT-X-ENDLIST"), "{body}");
            break secs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not recorded: {status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("rewind.png");
    let _ = std::fs::remove_file(&shot);
    let v = run_driver(
        "recording.mjs",
        &[
            &format!("http://{}/", node.http),
            "live/rewound",
            shot.to_str().unwrap(),
            "12",
            "rewind",
        ],
    );
    assert_eq!(v["pageErrors"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0), "{v}");
    let times: Vec<f64> = v["times"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_f64())
        .collect();
    let last = times.last().copied().unwrap_or(0.0);
    // Past what the playlist held when the browser started: it grew.
    assert!(
        last > recorded + 5.0,
        "playback reached {last} s, {recorded} s recorded at the start: {v}"
    );
    assert!(times.windows(2).all(|w| w[1] >= w[0]), "{v}");
    assert!(shot.exists(), "no screenshot");
    drop(publisher);
    // Once the recording stops, the playlist has an end.
    drop(node);
}
