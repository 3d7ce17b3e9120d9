//! Real clients for the end-to-end tests: child processes with deadlines
//! (killed by their own PID if a test ends first), ffmpeg publishing, and
//! ffprobe's verdict on what a player recorded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A child process that is killed (by its PID, through `Child`) if the
/// test ends first.
pub struct Proc(pub Child, pub &'static str);

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} is required (scripts/test installs it): {e}"));
        Proc(child, name)
    }

    /// Waits for exit with a deadline; returns stderr on failure.
    pub fn wait(mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.0.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("{} failed ({status}): {}", self.1, tail(&err)))
                };
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not finish in {limit:?}", self.1));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// ffmpeg's arguments up to a real-time lavfi input: quiet, paced, and the
/// `-i` whose source string follows.
pub const LIVE_LAVFI_INPUT: [&str; 7] = [
    "-hide_banner",
    "-loglevel",
    "error",
    "-re",
    "-f",
    "lavfi",
    "-i",
];

/// ffmpeg publishing `seconds` of H.264 + AAC at real-time pace, a keyframe
/// every second.
pub fn publish(url: &str, seconds: u32) -> Proc {
    publish_with(&[], url, seconds)
}

/// [`publish`] with ffmpeg output options before the URL (`-rtmp_app`,
/// `-rtmp_playpath`: how OBS splits a server URL and a stream key).
pub fn publish_with(options: &[&str], url: &str, seconds: u32) -> Proc {
    publish_sized(options, url, seconds, "320x240")
}

/// A config section: the `live` app's 360p transcode, the shipped
/// template's shape (keyframes on the source's) with a faster preset.
pub const TRANSCODE_360P: &str = r#"[[exec.apps.live.pipelines]]
name = "360p"
command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "{input}",
           "-vf", "scale=-2:360", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
           "-force_key_frames", "source", "-c:a", "aac", "-f", "flv", "{output}"]
"#;

/// [`publish_with`] at another picture size (`1280x720`).
pub fn publish_sized(options: &[&str], url: &str, seconds: u32, size: &str) -> Proc {
    Proc::spawn(
        "ffmpeg",
        Command::new("ffmpeg")
            .args(LIVE_LAVFI_INPUT)
            .args([
                &format!("testsrc2=size={size}:rate=25:duration={seconds}"),
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
                "flv",
            ])
            .args(options)
            .arg(url),
    )
}

/// ffmpeg publishing 30 s of lossless 640x480 video, tens of Mbit/s: loopback
/// socket buffers hold megabytes, and a stalled player's must fill before
/// the node's queue for it grows.
pub fn publish_lossless(url: &str) -> Proc {
    Proc::spawn(
        "ffmpeg",
        Command::new("ffmpeg").args(LIVE_LAVFI_INPUT).args([
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
            url,
        ]),
    )
}

/// Polls until the stream answers a play (an ffprobe that finds a video
/// stream), with a deadline.
pub fn wait_live(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-rw_timeout",
                "3000000",
                "-show_entries",
                "stream=codec_name",
                "-of",
                "csv=p=0",
                url,
            ])
            .output()
            .expect("ffprobe is required");
        if String::from_utf8_lossy(&out.stdout).contains("h264") {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never went live");
}

pub struct Probe {
    pub codecs: Vec<String>,
    pub video_frames: usize,
    pub first_video_key: bool,
    pub monotonic: bool,
}

/// ffprobe's view of a recorded file: codecs, video frame count, whether
/// the first video frame is a keyframe, whether timestamps never go back.
pub fn probe(file: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .unwrap();
    let codecs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts,flags",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .unwrap();
    let packets: Vec<(i64, bool)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(',');
            let pts = parts.next()?.parse().ok()?;
            Some((pts, parts.next()?.starts_with('K')))
        })
        .collect();
    // Decode order, so compare dts-like order loosely: pts may reorder
    // with B-frames, but ultrafast/zerolatency has none.
    Probe {
        codecs,
        video_frames: packets.len(),
        first_video_key: packets.first().is_some_and(|p| p.1),
        monotonic: packets.windows(2).all(|w| w[0].0 <= w[1].0),
    }
}

pub fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tributary-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn check_recording(file: &Path, min_frames: usize) {
    let p = probe(file);
    assert!(
        p.codecs.iter().any(|c| c == "h264"),
        "codecs {:?}",
        p.codecs
    );
    assert!(p.codecs.iter().any(|c| c == "aac"), "codecs {:?}", p.codecs);
    assert!(
        p.video_frames >= min_frames,
        "{} video frames",
        p.video_frames
    );
    assert!(p.first_video_key, "first video frame is not a keyframe");
    assert!(p.monotonic, "video timestamps go backwards");
}

/// ffmpeg playing `url` into `file` (stream copy) for `seconds`, or until
/// the server ends the stream.
pub fn ffmpeg_player(url: &str, file: &Path, seconds: Option<u32>) -> Proc {
    ffmpeg_player_with(Path::new("ffmpeg"), url, file, seconds, &[])
}

/// [`ffmpeg_player`] with another ffmpeg binary and output options (such
/// as `-map`) placed before the stream copy.
pub fn ffmpeg_player_with(
    ffmpeg: &Path,
    url: &str,
    file: &Path,
    seconds: Option<u32>,
    output: &[&str],
) -> Proc {
    let mut cmd = Command::new(ffmpeg);
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-rw_timeout",
        "5000000",
        "-i",
        url,
    ]);
    if let Some(s) = seconds {
        cmd.args(["-t", &s.to_string()]);
    }
    cmd.args(output).args(["-c", "copy"]).arg(file);
    Proc::spawn("ffmpeg", &mut cmd)
}

/// The `tributary` binary on loopback port 0, its log captured.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    pub http: SocketAddr,
    /// The HTTP media listener, when `--media-listen` was given.
    pub media: Option<SocketAddr>,
    /// The SRT listener, when `--srt-listen` was given.
    pub srt: Option<SocketAddr>,
    pub log: Arc<Mutex<String>>,
}

impl Node {
    pub fn start(shards: usize) -> Node {
        Self::start_with(shards, &[])
    }

    pub fn start_with(shards: usize, extra: &[&str]) -> Node {
        let shards = shards.to_string();
        let mut args = vec![
            "--rtmp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--shards",
            &shards,
        ];
        args.extend_from_slice(extra);
        Self::start_exact(&args)
    }

    /// The node with exactly these arguments (it must log an RTMP and an
    /// HTTP address, as every node does).
    pub fn start_exact(args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tributary");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for prefix in [
                    "rtmp listening on ",
                    "media listening on ",
                    "srt listening on ",
                    "http listening on ",
                ] {
                    if let Some(addr) = line.split(prefix).nth(1) {
                        // Up to a space, or the quote that ends a JSON
                        // log line's message.
                        let addr = addr
                            .split(|c: char| c.is_whitespace() || c == '"')
                            .next()
                            .unwrap_or("")
                            .to_owned();
                        let _ = tx.send((prefix, addr));
                    }
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        // The node logs its RTMP address, its media address (if any), then
        // the admin's, which is last.
        let (mut addr, mut media, mut srt) = (None, None, None);
        let http = loop {
            let (prefix, value) = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("node did not start: {}", log.lock().unwrap()));
            let value: SocketAddr = value.parse().unwrap();
            match prefix {
                "rtmp listening on " => addr = Some(value),
                "media listening on " => media = Some(value),
                "srt listening on " => srt = Some(value),
                _ => break value,
            }
        };
        let addr = addr.expect("the node logs its RTMP address first");
        Node {
            child,
            addr,
            http,
            media,
            srt,
            log,
        }
    }

    pub fn url(&self, key: &str) -> String {
        format!("rtmp://{}/live/{key}", self.addr)
    }

    /// The HTTP-FLV URL of `live/key` (the node must have `--media-listen`).
    pub fn flv_url(&self, key: &str) -> String {
        let media = self.media.expect("a node started with --media-listen");
        format!("http://{media}/live/{key}.flv")
    }

    /// SIGTERM, then wait with a deadline; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill() on our own child's PID.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET against the admin server: (status line, body).
pub fn get(addr: SocketAddr, path: &str) -> (String, String) {
    http(addr, "GET", path, None)
}

/// How many media messages a player has seen.
pub fn media_count(events: &[tributary::protocol::client::ClientEvent]) -> usize {
    use tributary::protocol::client::ClientEvent;
    events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Media(_)))
        .count()
}

/// Whether a player was sent the onStatus `code`.
pub fn has_status(events: &[tributary::protocol::client::ClientEvent], code: &str) -> bool {
    use tributary::protocol::client::ClientEvent;
    events
        .iter()
        .any(|e| matches!(e, ClientEvent::Status { code: c, .. } if c == code))
}

/// Samples a player's media count every 20 ms for `how_long`; returns the
/// longest time the count stood still.
pub fn longest_stall(player: &LibPlayer, how_long: Duration) -> Duration {
    let end = Instant::now() + how_long;
    let mut last_change = Instant::now();
    let mut last = media_count(&player.events.lock().unwrap());
    let mut worst = Duration::ZERO;
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
        let n = media_count(&player.events.lock().unwrap());
        if n != last {
            worst = worst.max(last_change.elapsed());
            last = n;
            last_change = Instant::now();
        }
    }
    worst.max(last_change.elapsed())
}

/// A library RTMP player on its own thread, recording every event.
pub struct LibPlayer {
    pub events: Arc<Mutex<Vec<tributary::protocol::client::ClientEvent>>>,
    /// For each read from the socket: when it returned, and how many
    /// events had been seen once its bytes were decoded.
    pub reads: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl LibPlayer {
    pub fn start(addr: SocketAddr, key: &str) -> LibPlayer {
        Self::start_app(addr, "live", key)
    }

    pub fn start_app(addr: SocketAddr, app: &str, key: &str) -> LibPlayer {
        use tributary::protocol::client::{ClientConfig, ClientSession, Role};
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let tc_url = format!("rtmp://{addr}/{app}");
        let mut client = ClientSession::new(ClientConfig::new(Role::Play, &tc_url, app, key), 0, 3);
        let events = Arc::new(Mutex::new(Vec::new()));
        let reads = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let read_log = reads.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut out = bytes::BytesMut::new();
            loop {
                out.clear();
                client.poll_transmit(&mut out);
                if stream.write_all(&out).is_err() {
                    return;
                }
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let at = Instant::now();
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let Ok(used) = client.handle_input(rest) else {
                        return;
                    };
                    rest = &rest[used..];
                    while let Some(e) = client.poll_event() {
                        sink.lock().unwrap().push(e);
                    }
                }
                let seen = sink.lock().unwrap().len();
                read_log.lock().unwrap().push((at, seen));
            }
        });
        LibPlayer { events, reads }
    }

    pub fn wait_for(
        &self,
        what: &str,
        f: impl Fn(&[tributary::protocol::client::ClientEvent]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f(&self.events.lock().unwrap()) {
            assert!(Instant::now() < deadline, "never saw {what}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A real `nats-server` with JetStream on a free loopback port (it picks
/// the port; we read it from its log), its store in a temp directory.
pub struct NatsServer {
    pub child: Child,
    pub port: u16,
    pub cluster_port: Option<u16>,
}

impl NatsServer {
    pub fn start(name: &str) -> NatsServer {
        Self::start_with(name, &[])
    }

    /// `extra` goes on the command line (cluster and route flags).
    pub fn start_with(name: &str, extra: &[&str]) -> NatsServer {
        let dir = temp_file(&format!("nats-{name}"));
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-n", name, "-sd"])
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server is required (scripts/test installs it)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (what, marker) in [
                    ("client", "Listening for client connections on "),
                    ("route", "Listening for route connections on "),
                    ("ready", "Server is ready"),
                ] {
                    if let Some(addr) = line.split(marker).nth(1) {
                        let port = addr.rsplit(':').next().unwrap_or("").trim().parse().ok();
                        let _ = tx.send((what, port));
                    }
                }
            }
        });
        let (mut port, mut cluster_port) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("client", p)) => port = p,
                Ok(("route", p)) => cluster_port = p,
                Ok(_) => break,
                Err(_) => panic!("nats-server {name} did not start"),
            }
        }
        NatsServer {
            child,
            port: port.expect("nats-server client port"),
            cluster_port,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now (the OS picks it), for
/// servers that must know each other's ports before they start (NATS
/// routes). The window between this and the server binding it is tiny.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Three `nats-server`s routed into one cluster (JetStream clustered).
pub fn nats_cluster(name: &str) -> Vec<NatsServer> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let starts: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (name, cluster, routes) = (
                format!("{name}{i}"),
                format!("nats://127.0.0.1:{p}"),
                routes.clone(),
            );
            // They start together: each waits for the others' routes.
            thread::spawn(move || {
                NatsServer::start_with(
                    &name,
                    &[
                        "--cluster_name",
                        "tri",
                        "--cluster",
                        &cluster,
                        "--routes",
                        &routes,
                    ],
                )
            })
        })
        .collect();
    starts.into_iter().map(|t| t.join().unwrap()).collect()
}

/// An HTTP request against the admin server with an optional bearer token:
/// (status line, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (String, String) {
    http_to(addr, &addr.to_string(), method, path, token)
}

/// As [`http`], with `host` in the `Host` header.
pub fn http_to(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// A node of the cluster on `nats`, once it has reached the registry.
pub fn cluster_node(nats: &NatsServer, id: &str, shards: usize, extra: &[&str]) -> Node {
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

/// A self-signed certificate and key for `name` (EC P-256), as PEM files.
pub fn self_signed(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        temp_file(&format!("{name}.crt")),
        temp_file(&format!("{name}.key")),
    );
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is required");
    assert!(status.success());
    (cert, key)
}

/// A recording's duration in seconds, as ffprobe reads its container.
pub fn duration(file: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("ffprobe is required");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

/// One raw HTTP exchange: writes `request` as is, reads to the close;
/// returns (status line, whole answer). The server must close after it.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .expect("the server answers and closes the connection");
    let text = String::from_utf8_lossy(&answer).into_owned();
    (text.lines().next().unwrap_or("").to_owned(), text)
}

/// ffmpeg 9 (PyPI's imageio-ffmpeg): `TRIBUTARY_FFMPEG9`, else the one in
/// the venv `scripts/test` makes.
pub fn ffmpeg9() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIBUTARY_FFMPEG9") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ffmpeg9-venv/bin/python");
    let out = Command::new(&venv)
        .args(["-c", "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())"])
        .output()
        .unwrap_or_else(|e| {
            panic!("ffmpeg 9 is required: run scripts/test, which installs imageio-ffmpeg into {} ({e})", venv.display())
        });
    assert!(
        out.status.success(),
        "imageio-ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// ffmpeg 9 publishing `seconds` of test video and `audio_tracks` sine
/// tracks, encoded with `video` and `audio` codec arguments.
pub fn publish9(
    url: &str,
    seconds: u32,
    video: &[&str],
    audio: &[&str],
    audio_tracks: usize,
) -> Proc {
    let mut cmd = Command::new(ffmpeg9());
    cmd.args(LIVE_LAVFI_INPUT)
        .arg(format!("testsrc2=size=320x240:rate=25:duration={seconds}"));
    for i in 0..audio_tracks {
        cmd.args(["-f", "lavfi", "-i"]).arg(format!(
            "sine=frequency={}:sample_rate=48000:duration={seconds}",
            440 + 220 * i
        ));
    }
    cmd.args(["-map", "0:v"]);
    for i in 0..audio_tracks {
        cmd.args(["-map", &format!("{}:a", i + 1)]);
    }
    cmd.args(video)
        .args(["-g", "25"])
        .args(audio)
        .args(["-f", "flv", url]);
    Proc::spawn("ffmpeg 9", &mut cmd)
}

/// Polls the node's log (read from its stderr by a thread of its own)
/// until it holds `line`, with a deadline.
pub fn wait_log(node: &Node, line: &str) {
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

/// Polls the admin API until `key` is live on the node.
pub fn wait_published(node: &Node, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (_, body) = get(node.http, "/api/streams");
        if body.contains(&format!("\"name\":\"{key}\"")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{key} was never published: {}", node.log.lock().unwrap());
}

pub struct Track {
    pub kind: String,
    pub codec: String,
    pub frames: usize,
}

/// ffprobe's count of every stream's frames in a recording.
pub fn tracks(file: &Path) -> Vec<Track> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,nb_read_frames",
        ])
        .args(["-of", "csv=p=0"])
        .arg(file)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some(Track {
                codec: f.first()?.to_string(),
                kind: f.get(1)?.to_string(),
                frames: f.get(2)?.trim().parse().ok()?,
            })
        })
        .collect()
}

/// Whether the first video packet of `file` is a keyframe.
pub fn first_video_is_key(file: &Path) -> bool {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=flags",
        ])
        .args(["-read_intervals", "%+#1", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .trim_start()
        .starts_with('K')
}

/// A request with a body of `content_type`.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The sum of a metric's samples whose labels hold `label`.
pub fn metric_sum(node: &Node, name: &str, label: &str) -> u64 {
    let (_, text) = get(node.http, "/metrics");
    text.lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A config file named `name` in the test's directory, holding `text`.
pub fn write_config(name: &str, text: &str) -> PathBuf {
    let path = temp_file(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A tiny HTTP auth service on a free port: `good*` streams get 200, `slow*`
/// no answer for 3 s, anything else 403 with a reason. Records the bodies.
pub fn auth_service() -> (SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let sink = sink.clone();
            thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let n = conn.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body.to_owned();
                        }
                    }
                };
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let stream = v["stream"].as_str().unwrap_or("").to_owned();
                sink.lock().unwrap().push(v);
                let reply = if stream.starts_with("good") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_owned()
                } else if stream.starts_with("slow") {
                    thread::sleep(Duration::from_secs(3));
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_owned()
                } else {
                    let reason = "stream not on the list";
                    format!(
                        "HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\n\r\n{reason}",
                        reason.len()
                    )
                };
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
    (addr, seen)
}
