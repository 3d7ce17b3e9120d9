//! `deploy/compose` end to end, on a Docker engine of this test's own
//! (Debian's dockerd, its state in a temporary folder, stopped by its PID):
//! the images built by `deploy/image/build` with nothing pulled, the
//! secrets made by `deploy/make-secrets`, the three-node, three-NATS-server
//! cluster brought up by Debian's docker-compose 1.29, ffmpeg publishing to
//! node-1 and players on node-2 and node-3, a NATS server and then the
//! owning node killed mid-stream, recovery, and `down` with nothing left.
//!
//! Needs root and a container engine; `scripts/test` installs docker.io and
//! docker-compose and says in the log whether this test runs. Where the
//! machine cannot run containers, scripts/test sets
//! TRIBUTARY_COMPOSE_SKIP to the reason and the test prints it and returns.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    ffmpeg_player, has_status, http, longest_stall, media_count, probe, publish, temp_file,
    wait_live, LibPlayer,
};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The docker CLI that matches Debian's dockerd (`/usr/local/bin/docker`
/// may be a newer client).
fn docker_cli() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

fn step(what: &str) {
    eprintln!("compose: {what}");
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/test installs it)"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A dockerd of this test's own. Dropped: SIGTERM by its PID, then its
/// state removed.
struct Engine {
    dockerd: Child,
    dir: PathBuf,
    host: String,
}

impl Engine {
    fn start() -> Engine {
        // Short paths: the exec root holds unix sockets (108 bytes at most).
        let dir = PathBuf::from(format!("/tmp/trib-dk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host = format!("unix://{}/d.sock", dir.display());
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let dockerd = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .args(["-H", &host])
            // No docker0 of its own, and compose's networks from a pool
            // unlikely to meet another engine's on this machine.
            .args(["--bridge", "none"])
            .args(["--default-address-pool", "base=10.213.0.0/16,size=24"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (scripts/test installs docker.io)");
        let engine = Engine { dockerd, dir, host };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = engine
                .docker()
                .args(["info", "--format", "{{.ServerVersion}}"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                std::fs::read_to_string(engine.dir.join("dockerd.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(200));
        }
        engine
    }

    fn docker(&self) -> Command {
        let mut cmd = Command::new(docker_cli());
        cmd.env("DOCKER_HOST", &self.host);
        cmd
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of the child we spawned and have not
        // reaped yet, so the PID is still ours.
        unsafe {
            libc::kill(self.dockerd.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.dockerd.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.dockerd.kill();
        let _ = self.dockerd.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster of one run: its project name, ports and secrets. Dropped:
/// `docker-compose down -v`, also when the test panics.
struct Cluster<'a> {
    engine: &'a Engine,
    project: String,
    secrets: PathBuf,
    /// Host ports per node (RTMP, media, admin), as Docker picked them: the
    /// test leaves them to Docker, so that no other test can take a port
    /// between its choice and the bind. Read again after a (re)start.
    ports: RefCell<[[u16; 3]; 3]>,
}

impl Cluster<'_> {
    fn compose(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.env("DOCKER_HOST", &self.engine.host)
            .env("TRIB_SECRETS", &self.secrets)
            .env("TRIB_PUBLISH_ADDR", "127.0.0.1")
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(repo().join("deploy/compose/compose.yaml"))
            .args(args);
        // Empty: Docker picks a free host port (compose.yaml's `${VAR-default}`).
        for node in 1..=3 {
            for kind in ["RTMP", "MEDIA", "ADMIN"] {
                cmd.env(format!("TRIB_{kind}_{node}"), "");
            }
        }
        cmd
    }

    /// Reads the host ports Docker gave the running nodes.
    fn read_ports(&self) {
        let out = run(
            self.engine.docker().args([
                "ps",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
                "--format",
                "{{.Label \"com.docker.compose.service\"}} {{.Ports}}",
            ]),
            "docker ps",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut ports = self.ports.borrow_mut();
        for line in text.lines() {
            let Some((service, list)) = line.split_once(' ') else {
                continue;
            };
            let Some(node) = service
                .strip_prefix("node-")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=3).contains(n))
            else {
                continue;
            };
            // "127.0.0.1:49153->1935/tcp, 127.0.0.1:49154->8081/tcp, ..."
            for mapping in list.split(", ") {
                let Some((host, inner)) = mapping.split_once("->") else {
                    continue;
                };
                let host_port = host.rsplit(':').next().and_then(|p| p.parse().ok());
                let slot = match inner {
                    "1935/tcp" => 0,
                    "8081/tcp" => 1,
                    "8080/tcp" => 2,
                    _ => continue,
                };
                if let Some(port) = host_port {
                    ports[node - 1][slot] = port;
                }
            }
        }
        for (node, p) in ports.iter().enumerate() {
            assert!(
                p.iter().all(|&p| p != 0),
                "node-{} has no published ports: {text}",
                node + 1
            );
        }
    }

    fn port(&self, node: usize, slot: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.borrow()[node - 1][slot]))
    }

    fn rtmp(&self, node: usize) -> SocketAddr {
        self.port(node, 0)
    }

    fn media(&self, node: usize) -> SocketAddr {
        self.port(node, 1)
    }

    fn admin(&self, node: usize) -> SocketAddr {
        self.port(node, 2)
    }

    /// The last lines of every service's log, for a failure's message.
    fn logs(&self) -> String {
        let out = self
            .compose(&["logs", "--no-color", "--timestamps", "--tail", "40"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The NATS server that leads the registry bucket's JetStream stream
    /// (the last to log that it became its leader), polled for 20 s.
    fn registry_leader(&self) -> String {
        let t0 = Instant::now();
        loop {
            let out = self
                .compose(&["logs", "--no-color", "nats-1", "nats-2", "nats-3"])
                .output()
                .unwrap();
            let logs = String::from_utf8_lossy(&out.stdout);
            // "nats-2_1  | [1] 2026/12/08 02:52:07.302039 [INF] JetStream
            // cluster new stream leader for '$G > KV_tributary_streams'":
            // the log's own time orders the lines of the three servers
            // (Compose v2 names the service nats-2-1).
            let leader = logs
                .lines()
                .filter(|l| l.ends_with("new stream leader for '$G > KV_tributary_streams'"))
                .filter_map(|l| {
                    let (service, rest) = l.split_once('|')?;
                    let mut words = rest.split_whitespace().skip(1);
                    let when = format!("{} {}", words.next()?, words.next()?);
                    Some((
                        when,
                        service
                            .trim()
                            .trim_end_matches(|c: char| c.is_ascii_digit()),
                    ))
                })
                .max()
                .map(|(_, service)| service.trim_end_matches(['_', '-']).to_owned());
            if let Some(leader) = leader.filter(|l| l.starts_with("nats-")) {
                return leader;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no NATS server says it leads the registry's stream: {}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls (20 s at most: a NATS leader election and a refresh) until a
    /// play of `key` on `node` finds the stream, and says how long that
    /// took after `what`. Past 2 s (or with TRIBUTARY_COMPOSE_LOGS set),
    /// the nodes' logs are printed for the record.
    fn found_by(&self, node: usize, key: &str, what: &str) {
        let url = format!("rtmp://{}/{}", self.rtmp(node), key);
        let t0 = Instant::now();
        while !answers(&url) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "node-{node} never found the stream; the nodes' logs:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(200));
        }
        let found = t0.elapsed();
        step(&format!("{what}: node-{node} found it {found:?} later"));
        if found > Duration::from_secs(2) || std::env::var_os("TRIBUTARY_COMPOSE_LOGS").is_some() {
            step(&format!(
                "the nodes' logs, for the record:\n{}",
                self.logs()
            ));
        }
    }

    /// Polls the node's /readyz through the published port.
    fn wait_ready(&self, node: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if TcpStream::connect(self.admin(node)).is_ok() {
                let (status, _) = http(self.admin(node), "GET", "/readyz", None);
                if status.contains(" 200") {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("node-{node} not ready in {limit:?}: {}", self.logs());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--timeout", "25"]).output();
    }
}

/// Whether `url` answers a play with video now (one ffprobe, 3 s at most).
fn answers(url: &str) -> bool {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "3000000"])
        .args(["-show_entries", "stream=codec_name", "-of", "csv=p=0", url])
        .stdin(Stdio::null())
        .output()
        .expect("ffprobe is required");
    String::from_utf8_lossy(&out.stdout).contains("h264")
}

/// ffmpeg plays `url` for 3 s into a file; ffprobe judges it. A failure
/// prints the cluster's logs.
fn plays(cluster: &Cluster, url: &str, name: &str) {
    let file = temp_file(name);
    ffmpeg_player(url, &file, Some(3))
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{url}: {e}; the nodes' logs:\n{}", cluster.logs()));
    let p = probe(&file);
    assert!(
        p.codecs.iter().any(|c| c == "h264") && p.codecs.iter().any(|c| c == "aac"),
        "{url}: {:?}",
        p.codecs
    );
    assert!(p.video_frames >= 30, "{url}: {} frames", p.video_frames);
    assert!(p.first_video_key, "{url}: the first frame is no keyframe");
}

#[test]
fn compose_cluster_builds_runs_survives_a_nats_and_a_node_loss_and_tears_down() {
    if let Ok(reason) = std::env::var("TRIBUTARY_COMPOSE_SKIP") {
        eprintln!("compose: SKIPPED: {reason}");
        return;
    }
    let engine = Engine::start();
    step("dockerd up");

    let stage = engine.dir.join("stage");
    let out = run(
        Command::new(repo().join("deploy/image/build"))
            .args(["--binary", env!("CARGO_BIN_EXE_tributary")])
            .env("DOCKER", docker_cli())
            .env("DOCKER_HOST", &engine.host)
            .env("TRIB_IMAGE_STAGE", &stage),
        "deploy/image/build",
    );
    step(String::from_utf8_lossy(&out.stdout).trim());
    let images = run(
        engine
            .docker()
            .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]),
        "docker image ls",
    );
    let images = String::from_utf8_lossy(&images.stdout).into_owned();
    for image in ["tributary:local", "tributary-nats:local"] {
        assert!(images.contains(image), "{image} not built: {images}");
    }
    // The image runs as the unprivileged user.
    let user = run(
        engine.docker().args([
            "image",
            "inspect",
            "-f",
            "{{.Config.User}}",
            "tributary:local",
        ]),
        "docker image inspect",
    );
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "10001:10001");

    let secrets = engine.dir.join("secrets");
    run(
        Command::new(repo().join("deploy/make-secrets")).arg(&secrets),
        "deploy/make-secrets",
    );
    let key = std::fs::read_to_string(secrets.join("stream-keys")).unwrap();
    let stream = key
        .trim()
        .strip_prefix("live/")
        .expect("live/KEY")
        .to_owned();
    let admin_token = std::fs::read_to_string(secrets.join("admin-token")).unwrap();
    let admin_token = admin_token.trim();

    let cluster = Cluster {
        engine: &engine,
        project: format!("tribtest{}", std::process::id()),
        secrets,
        ports: RefCell::new([[0; 3]; 3]),
    };
    run(&mut cluster.compose(&["up", "-d"]), "docker-compose up");
    cluster.read_ports();
    for node in 1..=3 {
        cluster.wait_ready(node, Duration::from_secs(60));
    }
    step("cluster up: three nodes ready, three NATS servers");

    // Closed as shipped: the admin API wants its token, a publish its key.
    let (status, _) = http(cluster.admin(1), "GET", "/api/streams", None);
    assert!(
        status.contains(" 401"),
        "admin API without the token: {status}"
    );
    let refused = publish(&format!("rtmp://{}/live/not-a-key", cluster.rtmp(1)), 2)
        .wait(Duration::from_secs(20));
    assert!(refused.is_err(), "a publish without a key was let in");

    let _encoder = publish(&format!("rtmp://{}/{}", cluster.rtmp(1), key.trim()), 120);
    wait_live(&format!("rtmp://{}/{}", cluster.rtmp(1), key.trim()));
    // A new cluster's JetStream may still be electing its streams' leaders:
    // node-1 then publishes unregistered and registers once one answers
    // (retried every second).
    cluster.found_by(2, key.trim(), "node-1 plays the publish");
    plays(
        &cluster,
        &format!("rtmp://{}/{}", cluster.rtmp(2), key.trim()),
        "compose-node2.flv",
    );
    plays(
        &cluster,
        &format!("http://{}/{}.flv", cluster.media(3), key.trim()),
        "compose-node3.flv",
    );
    let (status, body) = http(
        cluster.admin(2),
        "GET",
        "/api/streams?scope=cluster",
        Some(admin_token),
    );
    assert!(status.contains(" 200"), "{status}");
    assert!(body.contains("\"node\":\"node-1\""), "{body}");
    step("published to node-1; ffprobe judged RTMP from node-2 and HTTP-FLV from node-3");

    // A NATS server killed mid-stream: the cluster test's bound holds (no
    // stall over 2 s, the stream not ended).
    let player = LibPlayer::start(cluster.rtmp(2), &stream);
    player.wait_for("media relayed from node-1", |e| media_count(e) > 30);
    // The one killed is the NATS server that leads the registry's stream:
    // the worst case, as writes to the registry wait for an election.
    let leader = cluster.registry_leader();
    run(
        &mut cluster.compose(&["kill", &leader]),
        "kill a NATS server",
    );
    let stall = longest_stall(&player, Duration::from_secs(6));
    step(&format!(
        "{leader} (leading the registry) killed: longest stall of node-2's player {stall:?}"
    ));
    assert!(
        stall <= Duration::from_secs(2),
        "media stalled {stall:?}; the nodes' logs:\n{}",
        cluster.logs()
    );
    assert!(
        !has_status(
            &player.events.lock().unwrap(),
            "NetStream.Play.UnpublishNotify"
        ),
        "the stream was ended by the loss of a NATS server"
    );

    // The owning node killed (SIGKILL, no goodbye): node-2's player is told
    // when its relay's attachment renewals go unanswered (a few 0.75 s
    // renewals; 8 s allowed), and the encoder, reconnecting to another
    // node, is played from a third.
    run(&mut cluster.compose(&["kill", "node-1"]), "kill node-1");
    let killed = Instant::now();
    drop(_encoder);
    let deadline = killed + Duration::from_secs(20);
    while !has_status(
        &player.events.lock().unwrap(),
        "NetStream.Play.UnpublishNotify",
    ) {
        assert!(Instant::now() < deadline, "node-2's player never told");
        thread::sleep(Duration::from_millis(50));
    }
    let told = killed.elapsed();
    step(&format!(
        "node-1 killed: node-2's player told after {told:?}"
    ));
    assert!(told < Duration::from_secs(8), "told after {told:?}");
    let _again = publish(&format!("rtmp://{}/{}", cluster.rtmp(3), key.trim()), 120);
    wait_live(&format!("rtmp://{}/{}", cluster.rtmp(3), key.trim()));
    // node-2 finds the stream once node-3's claim is in the registry: at
    // once, unless the killed NATS server led the registry's JetStream
    // stream. Then no write lands until the other two elect a leader
    // (nats-server waits 4-9 s for a lost leader before it campaigns), and
    // node-3, publishing locally meanwhile, registers at its first refresh
    // after the election.
    cluster.found_by(2, key.trim(), "node-3 plays the re-publish");
    plays(
        &cluster,
        &format!("rtmp://{}/{}", cluster.rtmp(2), key.trim()),
        "compose-node2-again.flv",
    );

    // Both come back; node-1 rejoins and plays the stream node-3 owns.
    run(
        &mut cluster.compose(&["start", &leader, "node-1"]),
        "start the NATS server and node-1",
    );
    cluster.read_ports();
    cluster.wait_ready(1, Duration::from_secs(60));
    cluster.found_by(1, key.trim(), "node-1 ready again");
    plays(
        &cluster,
        &format!("rtmp://{}/{}", cluster.rtmp(1), key.trim()),
        "compose-node1-back.flv",
    );
    step("recovered: published again on node-3, played from node-2 and the restarted node-1");

    run(
        &mut cluster.compose(&["down", "-v", "--timeout", "25"]),
        "docker-compose down",
    );
    let left = run(engine.docker().args(["ps", "-aq"]), "docker ps");
    assert!(left.stdout.is_empty(), "containers left after down");
    let volumes = run(
        engine.docker().args(["volume", "ls", "-q"]),
        "docker volume ls",
    );
    assert!(volumes.stdout.is_empty(), "volumes left after down");
    step("torn down: no container and no volume left");
    drop(cluster);
    drop(_again);
}
