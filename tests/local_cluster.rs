//! `deploy/local-cluster.sh` end to end: it starts three NATS servers and
//! three nodes in a network namespace of its own, with one DNS name that
//! resolves round-robin to all three; ffmpeg publishes through the name and
//! plays through it many times, and every play must get the stream, on more
//! than one node. Needs root (network namespaces), like the script; CI runs
//! as root. The namespace and state directory are unique to this run, so
//! parallel runs and a user's own `tribnet` never collide.

use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{check_recording, get, temp_file, Proc};

const NAME: &str = "tributary.test";
const NODES: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

/// The cluster of one test run; `down` runs when it is dropped, also when
/// the test panics.
struct LocalCluster {
    netns: String,
    state: PathBuf,
}

impl LocalCluster {
    fn up() -> LocalCluster {
        let uid = std::fs::metadata("/proc/self").map(|m| m.uid());
        assert_eq!(
            uid.ok(),
            Some(0),
            "tests/local_cluster.rs needs root, like deploy/local-cluster.sh \
             (network namespaces, /etc/netns): run it with sudo, or as root as CI does"
        );
        let cluster = LocalCluster {
            netns: format!("tribtest{}", std::process::id()),
            state: temp_file("local-cluster"),
        };
        // Built before `up` runs, so a failed start is cleaned up too.
        cluster.script("up").wait(Duration::from_secs(50)).unwrap();
        cluster
    }

    fn script(&self, what: &str) -> Proc {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local-cluster.sh");
        Proc::spawn(
            "deploy/local-cluster.sh",
            Command::new(script)
                .arg(what)
                .env("TRIBUTARY_BIN", env!("CARGO_BIN_EXE_tributary"))
                .env("TRIB_NETNS", &self.netns)
                .env("TRIB_STATE_DIR", &self.state)
                .env("TRIB_NAME", NAME)
                .env("TRIB_SHARDS", "1"),
        )
    }

    /// `program` run inside the cluster's namespace (its resolver answers
    /// NAME).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// An HTTP GET from inside the namespace: a thread that joins it (only
    /// that thread) and asks.
    fn get(&self, addr: SocketAddr, path: &str) -> String {
        let netns = File::open(format!("/run/netns/{}", self.netns)).expect("the namespace");
        let path = path.to_owned();
        thread::spawn(move || {
            // SAFETY: setns on a descriptor we own and keep open for the
            // call; CLONE_NEWNET moves only this thread, which ends here.
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            get(addr, &path).1
        })
        .join()
        .unwrap()
    }

    /// Media messages each node has queued to players so far.
    fn messages_to_players(&self) -> Vec<u64> {
        let name = "tributary_messages_out_total";
        NODES
            .iter()
            .map(|ip| {
                let body = self.get(format!("{ip}:8080").parse().unwrap(), "/metrics");
                body.lines()
                    .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64
            })
            .collect()
    }

    /// Polls until a play through the name finds a video stream.
    fn wait_live(&self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = self
                .command("ffprobe")
                .args(["-v", "error", "-rw_timeout", "3000000"])
                .args(["-show_entries", "stream=codec_name", "-of", "csv=p=0", url])
                .output()
                .expect("ffprobe is required");
            if String::from_utf8_lossy(&out.stdout).contains("h264") {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("{url} never went live");
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for what in ["node-1", "node-2", "node-3", "nats-1", "dnsmasq"] {
            let log =
                std::fs::read_to_string(self.state.join(format!("{what}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out += &format!("--- {what}.log\n");
            out += &lines[lines.len().saturating_sub(10)..].join("\n");
            out.push('\n');
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        if let Err(e) = self.script("down").wait(Duration::from_secs(30)) {
            eprintln!("{e}");
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn words(args: &str) -> impl Iterator<Item = &str> {
    args.split_whitespace()
}

#[test]
fn every_play_through_the_round_robin_name_works_on_more_than_one_node() {
    let cluster = LocalCluster::up();

    // The name has three A records, and the resolver rotates their order
    // from one answer to the next: that rotation is the round-robin, since
    // ffmpeg connects to the first address it gets.
    let mut firsts = HashSet::new();
    for _ in 0..3 {
        let out = cluster
            .command("getent")
            .args(["ahosts", NAME])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let addrs: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("STREAM"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let distinct: HashSet<&str> = addrs.iter().copied().collect();
        assert_eq!(distinct, HashSet::from(NODES), "{NAME} resolves to {text}");
        firsts.insert(addrs[0].to_owned());
    }
    assert_eq!(firsts.len(), 3, "the order never rotates: {firsts:?}");

    // The shipped config asks for a stream key: the one `up` made.
    let key = std::fs::read_to_string(cluster.state.join("secrets/stream-keys")).unwrap();
    let url = format!("rtmp://{NAME}/{}", key.lines().next().unwrap());
    let publisher = Proc::spawn(
        "ffmpeg",
        cluster
            .command("ffmpeg")
            .args(words("-hide_banner -loglevel error -re"))
            .args(words(
                "-f lavfi -i testsrc2=size=320x240:rate=25:duration=30",
            ))
            .args(words("-f lavfi -i sine=frequency=440:duration=30"))
            .args(words(
                "-c:v libx264 -preset ultrafast -tune zerolatency -g 25",
            ))
            .args(words("-c:a aac -b:a 64k -f flv"))
            .arg(&url),
    );
    cluster.wait_live(&url);

    // Nine plays at once, each resolving the name for itself.
    let before = cluster.messages_to_players();
    let files: Vec<PathBuf> = (0..9)
        .map(|i| temp_file(&format!("local-cluster-play-{i}.flv")))
        .collect();
    let players: Vec<Proc> = files
        .iter()
        .map(|file| {
            Proc::spawn(
                "ffmpeg",
                cluster
                    .command("ffmpeg")
                    .args(words("-hide_banner -loglevel error -y -rw_timeout 5000000"))
                    .args(["-i", &url])
                    .args(words("-t 3 -c copy"))
                    .arg(file),
            )
        })
        .collect();
    for (i, player) in players.into_iter().enumerate() {
        if let Err(e) = player.wait(Duration::from_secs(30)) {
            panic!("play {i} through {NAME} failed: {e}");
        }
    }
    for file in &files {
        check_recording(file, 40);
    }

    // A node that served a play queued it some seconds of media; the
    // publisher's node queues nothing for the publisher itself.
    let after = cluster.messages_to_players();
    let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        served.iter().filter(|&&n| n >= 25).count() >= 2,
        "plays all landed on one node (messages to players per node: {served:?})"
    );
    eprintln!("messages to players per node: {served:?}");
    drop(publisher);
}
