//! The real `tributary-load` binary against a real `tributary` node: small
//! bounded scenarios whose report must add up (every frame a fast player
//! should get, it got), failures named with their reason, and a real FLV
//! file published with clock stamps that ffmpeg still plays and decodes.
//!
//! The node binary is the workspace's `target/<profile>/tributary`, which
//! `cargo nextest run --workspace` (and `cargo test --workspace`) builds
//! with the root package's tests; when it is missing (a run of this package
//! alone) the test builds it with cargo first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

fn node_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_BIN_EXE_tributary-load"))
                .parent()
                .expect("binary has a directory")
                .to_path_buf();
            let node = dir.join("tributary");
            if !node.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.args(["build", "-p", "tributary", "--bin", "tributary"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"));
                if dir.ends_with("release") {
                    cmd.arg("--release");
                }
                let status = cmd.status().expect("run cargo build");
                assert!(
                    status.success() && node.exists(),
                    "could not build {}",
                    node.display()
                );
            }
            node
        })
        .clone()
}

/// A node on a port of its own, killed (by its own PID) when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
    /// The HTTP media listener, when started with one.
    media: Option<SocketAddr>,
    /// The SRT listener, when started with one.
    srt: Option<SocketAddr>,
    log: std::sync::Arc<Mutex<String>>,
    /// The admin listener, once the node has logged it.
    http: std::sync::Arc<Mutex<Option<SocketAddr>>>,
}

impl Node {
    fn start() -> Node {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Node {
        // A caller's own RTMP address (a restart on the same port) wins.
        let rtmp = if extra.contains(&"--rtmp-listen") {
            &[][..]
        } else {
            &["--rtmp-listen", "127.0.0.1:0"][..]
        };
        let mut child = Command::new(node_binary())
            .args(rtmp)
            .args(["--http-listen", "127.0.0.1:0", "--shards", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tributary");
        let log = std::sync::Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        let http = std::sync::Arc::new(Mutex::new(None));
        let http_sink = http.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("http listening on ").nth(1) {
                    *http_sink.lock().unwrap() = addr.trim().parse().ok();
                }
                for prefix in [
                    "rtmp listening on ",
                    "media listening on ",
                    "srt listening on ",
                ] {
                    if let Some(addr) = line.split(prefix).nth(1) {
                        let addr = addr.split_whitespace().next().unwrap_or("").to_owned();
                        let _ = tx.send((prefix, addr));
                    }
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let next = || {
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("node did not start: {}", log.lock().unwrap()))
        };
        // The RTMP address is logged first, then the media one (if any).
        let addr = next().1.parse().expect("node prints its address");
        let media = extra
            .contains(&"--media-listen")
            .then(|| next().1.parse().expect("node prints its media address"));
        let srt = extra
            .contains(&"--srt-listen")
            .then(|| next().1.parse().expect("node prints its SRT address"));
        Node {
            child,
            addr,
            media,
            srt,
            log,
            http,
        }
    }

    /// A gauge or counter of the node's /metrics (summed over its labels),
    /// or None while it cannot be read.
    fn metric(&self, name: &str) -> Option<f64> {
        let addr = (*self.http.lock().unwrap())?;
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let values = body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        Some(values.sum())
    }

    fn url(&self) -> String {
        format!("rtmp://{}/live", self.addr)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct LoadRun {
    status: i32,
    stdout: String,
    report: Value,
}

/// Runs tributary-load with a deadline; the JSON report is parsed.
fn run_load(args: &[&str], limit: Duration) -> LoadRun {
    let dir = temp_dir();
    let json = dir.join(format!("report-{}.json", unique()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tributary-load"))
        .args(args)
        .args(["--quiet", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tributary-load");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tributary-load {args:?} did not finish in {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let report = std::fs::read(&json)
        .map(|b| serde_json::from_slice(&b).expect("report is JSON"))
        .unwrap_or_else(|_| panic!("no report; stdout {stdout} stderr {stderr}"));
    LoadRun {
        status: status.code().unwrap_or(-1),
        stdout,
        report,
    }
}

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tributary-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn n(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for p in path.split('.') {
        cur = &cur[p];
    }
    cur.as_u64()
        .or_else(|| cur.as_f64().map(|f| f as u64))
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}

#[test]
fn one_publisher_three_players_every_frame_accounted_for() {
    let node = Node::start();
    let run = run_load(
        &[
            "--url",
            &node.url(),
            "--publishers",
            "1",
            "--players",
            "3",
            "--duration",
            "3",
            "--drain",
            "3",
            "--require-all-holding",
        ],
        Duration::from_secs(25),
    );
    let r = &run.report;
    assert_eq!(
        run.status,
        0,
        "{}\nnode log:\n{}",
        run.stdout,
        node.log.lock().unwrap()
    );
    assert_eq!(n(r, "publishers.connected"), 1);
    assert_eq!(n(r, "publishers.failed"), 0);
    assert_eq!(n(r, "players.connected"), 3);
    assert_eq!(n(r, "players.failed"), 0);
    assert_eq!(n(r, "players.holding"), 3);
    assert_eq!(
        n(r, "players.saw_end"),
        3,
        "players see the publisher leave"
    );
    // Frames received = frames sent from each player's first keyframe on.
    let expected = n(r, "players.video_frames_expected");
    assert!(expected > 3 * 30, "{expected}");
    assert_eq!(n(r, "players.video_frames"), expected);
    assert_eq!(n(r, "players.video_frames_missing"), 0);
    assert_eq!(n(r, "players.gaps"), 0);
    assert_eq!(n(r, "players.bad_messages"), 0);
    assert_eq!(n(r, "players.timestamp_regressions"), 0);
    assert_eq!(n(r, "players.first_video_not_key"), 0);
    let sent = n(r, "publishers.video_frames");
    assert_eq!(sent, r["streams"][0]["video_frames_sent"].as_u64().unwrap());
    assert!(
        n(r, "players.frames") > n(r, "players.video_frames"),
        "audio counted too"
    );
    assert!(n(r, "players.bytes") > 3 * 500_000);
    assert!(n(r, "latency_ms.samples") > 0);
    assert_eq!(n(r, "first_frame_ms.samples"), 3);
    for key in ["p50", "p90", "p99", "max"] {
        assert!(r["latency_ms"][key].as_f64().unwrap() < 2_000.0);
    }
    assert!(r["duration_s"].as_f64().unwrap() >= 3.0);
    assert!(run.stdout.contains("players"), "{}", run.stdout);
}

/// Runs the load tool on a node with `args` (after `--url`); once `ready`
/// holds, SIGKILLs the node and starts another on its port, so every
/// connection is lost at once and reconnects fail until it is up. Returns
/// the run and the new node.
fn load_across_a_restart(args: &[&str], ready: impl Fn(&Node) -> bool) -> (LoadRun, Node) {
    let mut node = Node::start();
    let addr = node.addr;
    let mut all = vec!["--url".to_owned(), node.url()];
    all.extend(args.iter().map(|a| a.to_string()));
    let load = thread::spawn(move || {
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run_load(&all, Duration::from_secs(30))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready(&node) {
        assert!(Instant::now() < deadline, "the load never started");
        thread::sleep(Duration::from_millis(20));
    }
    let _ = node.child.kill();
    let _ = node.child.wait();
    thread::sleep(Duration::from_millis(500));
    let back = Node::start_with(&["--rtmp-listen", &addr.to_string()]);
    (load.join().unwrap(), back)
}

#[test]
fn a_reconnecting_publisher_comes_back_after_its_node_restarts_and_says_how_long_it_was_away() {
    let (run, back) = load_across_a_restart(
        &[
            "--publishers",
            "1",
            "--players",
            "0",
            "--duration",
            "8",
            "--reconnect-ms",
            "200",
        ],
        |node| node.log.lock().unwrap().contains("publishing"),
    );
    let r = &run.report;
    assert_eq!(n(r, "publishers.failed"), 0, "{}", run.stdout);
    let absences = r["publishers"]["absences"].as_array().unwrap();
    assert_eq!(absences.len(), 1, "{}", run.stdout);
    let away = absences[0]["ms"].as_u64().unwrap();
    assert!((500..5_000).contains(&away), "away {away} ms");
    assert!(
        run.stdout.contains("publishers away: 1 times"),
        "{}",
        run.stdout
    );
    assert!(
        back.log.lock().unwrap().contains("publishing"),
        "the publisher is back on the new node"
    );
}

#[test]
fn reconnecting_players_come_back_after_their_node_restarts_and_count_what_they_missed() {
    // Both players playing, then the restart.
    let (run, _back) = load_across_a_restart(
        &[
            "--publishers",
            "1",
            "--players",
            "2",
            "--duration",
            "8",
            "--reconnect-ms",
            "200",
            "--player-reconnect-ms",
            "200",
        ],
        |node| node.metric("tributary_players") == Some(2.0),
    );
    let r = &run.report;
    assert_eq!(n(r, "players.failed"), 0, "{}", run.stdout);
    let absences = r["players"]["absences"].as_array().unwrap();
    assert_eq!(absences.len(), 2, "{}", run.stdout);
    for a in absences {
        let away = a["ms"].as_u64().unwrap();
        assert!(
            (500..6_000).contains(&away),
            "away {away} ms: {}",
            run.stdout
        );
    }
    // What they missed is what fell due while they were away:
    // every other frame arrived once, none lost on a live connection.
    let missed = n(r, "players.video_frames_missed_reconnecting");
    assert!(missed > 0, "{}", run.stdout);
    assert_eq!(
        n(r, "players.video_frames_missing"),
        missed,
        "{}",
        run.stdout
    );
    assert_eq!(n(r, "players.frames_lost"), 0, "{}", run.stdout);
    assert_eq!(n(r, "players.out_of_order"), 0, "{}", run.stdout);
    assert_eq!(n(r, "players.timestamp_regressions"), 0, "{}", run.stdout);
    assert!(
        run.stdout.contains("players away: 2 times"),
        "{}",
        run.stdout
    );
}

#[test]
fn http_flv_viewers_are_checked_like_rtmp_players() {
    let node = Node::start_with(&["--media-listen", "127.0.0.1:0"]);
    let media = format!("http://{}/live", node.media.unwrap());
    let run = run_load(
        &[
            "--publish-url",
            &node.url(),
            "--url",
            &media,
            "--publishers",
            "1",
            "--players",
            "3",
            "--duration",
            "3",
            "--drain",
            "3",
            "--require-all-holding",
        ],
        Duration::from_secs(25),
    );
    let r = &run.report;
    assert_eq!(
        run.status,
        0,
        "{}\nnode log:\n{}",
        run.stdout,
        node.log.lock().unwrap()
    );
    assert_eq!(n(r, "players.connected"), 3);
    assert_eq!(n(r, "players.holding"), 3);
    assert_eq!(n(r, "players.saw_end"), 3, "the body ends with the stream");
    let expected = n(r, "players.video_frames_expected");
    assert!(expected > 3 * 30, "{expected}");
    assert_eq!(n(r, "players.video_frames"), expected);
    assert_eq!(n(r, "players.gaps"), 0);
    assert_eq!(n(r, "players.bad_messages"), 0);
    assert_eq!(n(r, "players.first_video_not_key"), 0);
    assert!(n(r, "latency_ms.samples") > 0);
    assert_eq!(n(r, "first_frame_ms.samples"), 3);
}

#[test]
fn rtmpt_publishers_and_players_tunnel_every_frame_through_http() {
    let node = Node::start_with(&["--media-listen", "127.0.0.1:0"]);
    let url = format!("rtmpt://{}/live", node.media.unwrap());
    let run = run_load(
        &[
            "--url",
            &url,
            "--publishers",
            "1",
            "--players",
            "3",
            "--duration",
            "3",
            "--drain",
            "3",
            "--require-all-holding",
        ],
        Duration::from_secs(25),
    );
    let r = &run.report;
    assert_eq!(
        run.status,
        0,
        "{}\nnode log:\n{}",
        run.stdout,
        node.log.lock().unwrap()
    );
    assert_eq!(n(r, "publishers.connected"), 1);
    assert_eq!(n(r, "players.holding"), 3);
    let expected = n(r, "players.video_frames_expected");
    assert!(expected > 3 * 30, "{expected}");
    assert_eq!(n(r, "players.video_frames"), expected);
    assert_eq!(n(r, "players.gaps"), 0);
    assert_eq!(n(r, "players.bad_messages"), 0);
    assert!(n(r, "latency_ms.samples") > 0);
}

#[test]
fn srt_publishers_and_players_carry_every_frame_as_mpeg_ts() {
    let node = Node::start_with(&["--srt-listen", "127.0.0.1:0"]);
    let srt = format!("srt://{}/live", node.srt.unwrap());
    let rtmp = node.url();
    // SRT in and out; then SRT in, RTMP out.
    for (url, publish) in [(srt.as_str(), srt.as_str()), (rtmp.as_str(), srt.as_str())] {
        let run = run_load(
            &[
                "--url",
                url,
                "--publish-url",
                publish,
                "--publishers",
                "1",
                "--players",
                "3",
                "--duration",
                "3",
                "--drain",
                "3",
                "--require-all-holding",
            ],
            Duration::from_secs(30),
        );
        let r = &run.report;
        assert_eq!(
            run.status,
            0,
            "{}\nnode log:\n{}",
            run.stdout,
            node.log.lock().unwrap()
        );
        assert_eq!(n(r, "players.holding"), 3, "{}", run.stdout);
        let expected = n(r, "players.video_frames_expected");
        assert!(expected > 3 * 30, "{expected}");
        assert_eq!(n(r, "players.video_frames"), expected);
        assert_eq!(n(r, "players.gaps"), 0);
        assert_eq!(n(r, "players.bad_messages"), 0);
        assert!(n(r, "latency_ms.samples") > 0);
    }
}

#[test]
fn ll_hls_viewers_follow_the_live_edge_part_by_part() {
    let node = Node::start_with(&["--media-listen", "127.0.0.1:0"]);
    let media = format!("http://{}/live", node.media.unwrap());
    let run = run_load(
        &[
            "--publish-url",
            &node.url(),
            "--url",
            &media,
            "--http-viewers",
            "hls",
            "--publishers",
            "1",
            "--players",
            "3",
            "--duration",
            "6",
            "--drain",
            "3",
        ],
        Duration::from_secs(30),
    );
    let r = &run.report;
    assert_eq!(
        run.status,
        0,
        "{}\nnode log:\n{}",
        run.stdout,
        node.log.lock().unwrap()
    );
    assert_eq!(n(r, "players.connected"), 3);
    assert_eq!(n(r, "players.failed"), 0, "{}", run.stdout);
    // Every frame from each viewer's first keyframe on, in order.
    let expected = n(r, "players.video_frames_expected");
    assert!(expected > 3 * 60, "{expected}");
    assert_eq!(n(r, "players.video_frames"), expected, "{}", run.stdout);
    assert_eq!(n(r, "players.gaps"), 0);
    assert_eq!(n(r, "players.bad_messages"), 0);
    assert_eq!(n(r, "players.timestamp_regressions"), 0);
    assert_eq!(n(r, "players.first_video_not_key"), 0);
    // Part by part, each after a blocking reload.
    assert!(n(r, "players.hls_parts") > 3 * 15, "{}", run.stdout);
    assert!(n(r, "players.hls_reloads") > 3 * 10, "{}", run.stdout);
    assert!(n(r, "latency_ms.samples") > 0);
    assert!(run.stdout.contains("LL-HLS:"), "{}", run.stdout);
}

#[test]
fn failed_connections_are_reported_with_their_reason() {
    let node = Node::start();
    // A port nobody listens on: bind one, then free it.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let run = run_load(
        &[
            "--url",
            &format!("rtmp://{closed}/live"),
            "--publishers",
            "0",
            "--players",
            "2",
            "--duration",
            "1",
            "--drain",
            "0",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        run.status, 0,
        "a run that measured failures still completes"
    );
    assert_eq!(n(&run.report, "players.failed"), 2);
    assert_eq!(n(&run.report, "players.connected"), 0);
    assert_eq!(
        run.report["players"]["failures"]["connect: ConnectionRefused"].as_u64(),
        Some(2),
        "{:#}",
        run.report["players"]
    );

    let run = run_load(
        &[
            "--url",
            &node.url(),
            "--key",
            "nobody-publishes-this",
            "--publishers",
            "0",
            "--players",
            "1",
            "--duration",
            "1",
            "--drain",
            "0",
            "--require-all-holding",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.status, 3, "--require-all-holding fails the run");
    assert_eq!(
        run.report["players"]["failures"]["rejected: NetStream.Play.StreamNotFound"].as_u64(),
        Some(1),
        "{:#}",
        run.report["players"]
    );
    assert!(
        run.stdout.contains("NetStream.Play.StreamNotFound"),
        "{}",
        run.stdout
    );
}

fn ffmpeg(args: &[&str], limit: Duration) -> Result<String, String> {
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ffmpeg is required: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("ffmpeg {args:?} did not finish in {limit:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    if status.success() {
        Ok(err)
    } else {
        Err(err)
    }
}

#[test]
fn a_real_file_published_with_clock_stamps_stays_playable() {
    let dir = temp_dir();
    let source = dir.join(format!("source-{}.flv", unique()));
    let src = source.to_str().unwrap();
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25:duration=3",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-y",
            src,
        ],
        Duration::from_secs(20),
    )
    .expect("make the source file");

    plays_stamped_in_ffmpeg(&dir, &["--file", src], 75);
}

/// The load tool publishes `source` (its arguments) with clock stamps while
/// ffmpeg plays 4 s of it from the node: ffmpeg decodes what it recorded
/// with no complaint, at least `min_frames` video frames and AAC, and the
/// tool's own player gets every frame, each stamped.
fn plays_stamped_in_ffmpeg(dir: &std::path::Path, source: &[&str], min_frames: u64) {
    let node = Node::start();
    let url = node.url();
    let loader = {
        let url = url.clone();
        let source: Vec<String> = source.iter().map(|s| s.to_string()).collect();
        thread::spawn(move || {
            let mut args = vec!["--url", &url, "--key", "file"];
            args.extend(source.iter().map(String::as_str));
            args.extend(["--players", "1", "--duration", "9", "--drain", "2"]);
            run_load(&args, Duration::from_secs(25))
        })
    };
    // ffmpeg records 4 s of what the load tool publishes (looping the
    // 3-second file), then decodes it all.
    let recording = dir.join(format!("played-{}.flv", unique()));
    let rec = recording.to_str().unwrap();
    let play_url = format!("{url}/file");
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        match ffmpeg(
            &[
                "-rw_timeout",
                "3000000",
                "-i",
                &play_url,
                "-t",
                "4",
                "-c",
                "copy",
                "-y",
                rec,
            ],
            Duration::from_secs(12),
        ) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("ffmpeg could not play {play_url}: {e}"),
        }
    }
    let errors = ffmpeg(&["-i", rec, "-f", "null", "-"], Duration::from_secs(20))
        .expect("the recording decodes");
    assert!(errors.trim().is_empty(), "decoder complained: {errors}");
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
            rec,
        ])
        .output()
        .expect("ffprobe is required");
    let text = String::from_utf8_lossy(&probe.stdout).to_string();
    let video_frames: u64 = text
        .lines()
        .find(|l| l.starts_with("h264"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no h264 stream: {text}"));
    assert!(text.lines().any(|l| l.starts_with("aac")), "{text}");
    assert!(video_frames >= min_frames, "{video_frames} frames in 4 s");

    let run = loader.join().expect("load thread");
    let r = &run.report;
    assert_eq!(run.status, 0, "{}", run.stdout);
    assert_eq!(n(r, "publishers.connected"), 1);
    assert_eq!(n(r, "players.holding"), 1, "{}", run.stdout);
    assert_eq!(
        n(r, "players.unstamped_video"),
        0,
        "every real frame carries a stamp"
    );
    assert_eq!(n(r, "players.video_frames_missing"), 0);
    assert!(n(r, "latency_ms.samples") > 100);
}

/// The synthetic stream is real H.264 and AAC: stamped by the tool and
/// played back through the node, ffmpeg decodes it with no complaint.
#[test]
fn the_synthetic_stream_published_with_clock_stamps_decodes_in_ffmpeg() {
    let dir = temp_dir();
    plays_stamped_in_ffmpeg(
        &dir,
        &["--bitrate", "2.5M", "--fps", "30", "--gop", "60"],
        110,
    );
}

#[test]
fn connections_spread_round_robin_over_several_urls() {
    let (a, b) = (Node::start(), Node::start());
    // Publisher i → node i mod 2 with stream i; player j → node j mod 2
    // playing stream j mod 2: every player finds its stream only if both
    // lists are taken round-robin in step.
    let run = run_load(
        &[
            "--url",
            &a.url(),
            "--url",
            &b.url(),
            "--publishers",
            "2",
            "--players",
            "4",
            "--streams",
            "2",
            "--duration",
            "3",
            "--require-all-holding",
        ],
        Duration::from_secs(25),
    );
    assert_eq!(run.status, 0, "{}", run.stdout);
    assert_eq!(run.report["targets"].as_array().unwrap().len(), 2);
    assert_eq!(n(&run.report, "players.holding"), 4);
    let streams = run.report["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    assert!(streams.iter().all(|s| s["players"] == 2), "{streams:?}");
}

/// `scripts/stress-shutdown`, short: a two-shard node under publishers,
/// players, half-open and garbage connections gets SIGTERM mid-churn, five
/// times; every exit is status 0 with no panic, glibc or sanitizer text.
/// (The benchmark run is 500 cycles: BENCHMARKS.md.)
#[test]
fn a_node_under_churn_exits_cleanly_on_every_sigterm() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let out = std::env::temp_dir().join(format!("tributary-stress-{}", std::process::id()));
    let status = Command::new(repo.join("scripts/stress-shutdown"))
        .arg("--cycles")
        .arg("5")
        .arg("--node")
        .arg(node_binary())
        .arg("--load")
        .arg(env!("CARGO_BIN_EXE_tributary-load"))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run scripts/stress-shutdown");
    assert!(status.success(), "an abnormal exit: see {}", out.display());
    let _ = std::fs::remove_dir_all(&out);
}
