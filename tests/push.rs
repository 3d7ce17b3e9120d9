//! Restreaming against real targets: Debian's nginx-rtmp, another
//! Tributary over RTMPS with a private CA, a port nobody listens on and a
//! socket that accepts and never reads; ffmpeg publishes, ffmpeg players on
//! each side record, ffprobe counts what arrived. The admin API's push
//! routes, tried as an attacker would too.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// nginx-rtmp (Debian's libnginx-mod-rtmp) on a free loopback port, one
/// process (no master), killed by its PID when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    fn start(name: &str) -> Nginx {
        Self::start_on(name, None)
    }

    /// On `port` if given, else on a free port.
    fn start_on(name: &str, fixed: Option<u16>) -> Nginx {
        let dir = temp_file(&format!("nginx-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..20 {
            let port = fixed.unwrap_or_else(free_port);
            let conf = format!(
                "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
                 daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 error_log {dir}/error.log info;\npid {dir}/nginx.pid;\n\
                 events {{ worker_connections 256; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; application live2 {{ live on; }} }} }}\n",
                dir = dir.display()
            );
            std::fs::write(dir.join("nginx.conf"), conf).unwrap();
            let mut child = Command::new("nginx")
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx is required (apt-get install nginx libnginx-mod-rtmp)");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx { child, port, dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            // The port was taken between the probe and nginx's bind.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nginx-rtmp did not start");
    }

    fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live2/{key}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private CA and a certificate it signed for 127.0.0.1: (ca, cert, key).
fn private_ca(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let f = |s: &str| temp_file(&format!("{name}-{s}"));
    let (ca_key, ca, key, csr, cert, ext) = (
        f("ca.key"),
        f("ca.crt"),
        f("leaf.key"),
        f("leaf.csr"),
        f("leaf.crt"),
        f("leaf.ext"),
    );
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl is required")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    openssl(&[
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
        "/CN=Tributary test CA",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    (ca, cert, key)
}

/// The node's RTMPS address, from its log.
fn rtmps_addr(node: &Node) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = node.log.lock().unwrap().clone();
        if let Some(rest) = log.split("rtmps listening on ").nth(1) {
            return rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no RTMPS address logged:\n{log}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP request with a body to the admin API: (status line, body).
/// The stream's push targets; Null while it is not published.
fn pushes(node: &Node, stream: &str) -> serde_json::Value {
    let (status, body) = get(node.http, &format!("/api/streams/{stream}/pushes"));
    if status == "HTTP/1.1 404 Not Found" {
        return serde_json::Value::Null;
    }
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["pushes"].clone()
}

/// Polls the push list until `pred` holds for it, with a deadline.
fn wait_pushes(
    node: &Node,
    stream: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = pushes(node, stream);
        if pred(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {list:#}\n{}",
            log_tail(node)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn state_of(list: &serde_json::Value, port: u16) -> Option<&serde_json::Value> {
    list.as_array()?.iter().find(|t| {
        t["url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!(":{port}/")))
    })
}

/// Polls `what` until it holds, with a deadline.
fn wait_until(what: &str, mut holds: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !holds() {
        assert!(Instant::now() < deadline, "never: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A metric family of the node, summed over the series whose labels hold
/// `label` ("" for all).
/// Players the node counts (those waiting for their stream too).
fn players(node: &Node) -> u64 {
    metric_sum(node, "tributary_players", "")
}

/// Established TCP connections to a loopback port (`ss`).
fn connections_to(port: u16) -> usize {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .expect("ss (iproute2) is required");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn log_tail(node: &Node) -> String {
    let log = node.log.lock().unwrap();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

const SECONDS: u32 = 20;
/// 25 frames a second (`common::publish`); 95% must arrive.
const MIN_FRAMES: usize = (SECONDS as usize * 25) * 95 / 100;

#[test]
fn a_stream_is_pushed_to_nginx_rtmp_and_to_a_tributary_over_rtmps_with_a_private_ca() {
    let nginx = Nginx::start("a");
    let (ca, cert, key) = private_ca("push-a");
    let target = Node::start_with(
        1,
        &[
            "--config",
            write_config(
                "push-target.toml",
                "[streams]\nplay_unknown = \"wait\"\nplay_wait_timeout_ms = 30000\n",
            )
            .to_str()
            .unwrap(),
            "--rtmps-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let tls = rtmps_addr(&target);
    let config = write_config(
        "push-source.toml",
        &format!(
            "[push]\nca_file = \"{}\"\n[push.apps.live]\ntargets = [\"rtmp://127.0.0.1:{}/live2/{{name}}\", \"rtmps://{tls}/live/{{app}}-{{name}}\"]\n",
            ca.display(),
            nginx.port
        ),
    );
    let source = Node::start_with(2, &["--config", config.to_str().unwrap()]);

    // Players on both targets first (both wait for the stream), so that
    // every published frame can be counted.
    let at_nginx = temp_file("push-nginx.flv");
    let at_target = temp_file("push-target.flv");
    let p1 = ffmpeg_player(&nginx.url("cam"), &at_nginx, None);
    let p2 = ffmpeg_player(&target.url("live-cam"), &at_target, None);
    wait_until("the player waiting at nginx", || {
        connections_to(nginx.port) >= 1
    });
    wait_until("the player waiting at the target", || players(&target) >= 1);
    let publisher = publish(&source.url("cam"), SECONDS);
    let list = wait_pushes(&source, "live/cam", "both targets live", |l| {
        l.as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|t| t["state"] == "live"))
    });
    assert!(list.to_string().contains("rtmps://"), "{list}");
    publisher
        .wait(Duration::from_secs(SECONDS as u64 + 20))
        .unwrap();
    // The publisher ended: each target's player ends (on the unpublish, or
    // its read timeout); how it exits does not matter, what it wrote does.
    let _ = p1.wait(Duration::from_secs(20));
    let _ = p2.wait(Duration::from_secs(20));
    for (what, file) in [
        ("nginx-rtmp", &at_nginx),
        ("tributary over rtmps", &at_target),
    ] {
        let p = probe(file);
        eprintln!("{what}: {} of {} frames", p.video_frames, SECONDS * 25);
        assert!(
            p.video_frames >= MIN_FRAMES,
            "{what}: {} of {} frames\n{}",
            p.video_frames,
            SECONDS * 25,
            log_tail(&source)
        );
        check_recording(file, MIN_FRAMES);
    }
    // The stream is gone: so are its targets.
    let (status, _) = get(source.http, "/api/streams/live/cam/pushes");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

/// A socket that accepts and then never reads nor writes.
fn silent_listener() -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((s, _)) = listener.accept() {
                held.push(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
    });
    (port, handle)
}

#[test]
fn a_refusing_and_a_silent_target_cost_the_healthy_one_and_the_players_nothing() {
    let wait = "[streams]\nplay_unknown = \"wait\"\nplay_wait_timeout_ms = 30000\n";
    let healthy = Node::start_with(
        1,
        &[
            "--config",
            write_config("ind-healthy.toml", wait).to_str().unwrap(),
        ],
    );
    let refusing = free_port();
    let (silent, _held) = silent_listener();
    let config = write_config(
        "ind-source.toml",
        &format!(
            "{wait}[rtmp]\nhandshake_timeout_ms = 1500\n[push]\nbackoff_min_ms = 500\nbackoff_max_ms = 2000\n\
             [push.apps.live]\ntargets = [\"rtmp://{}/live/{{name}}\", \"rtmp://127.0.0.1:{refusing}/live2/{{name}}\", \"rtmp://127.0.0.1:{silent}/live/{{name}}\"]\n",
            healthy.addr
        ),
    );
    let source = Node::start_with(2, &["--config", config.to_str().unwrap()]);
    let at_healthy = temp_file("ind-healthy.flv");
    let at_source = temp_file("ind-source.flv");
    let p1 = ffmpeg_player(&healthy.url("cam"), &at_healthy, None);
    let p2 = ffmpeg_player(&source.url("cam"), &at_source, None);
    wait_until("the players waiting", || {
        players(&healthy) >= 1 && players(&source) >= 1
    });
    let publisher = publish(&source.url("cam"), SECONDS);

    // The dead ones show their state and the error as the socket said it.
    let list = wait_pushes(
        &source,
        "live/cam",
        "healthy live, the others failing",
        |l| {
            let healthy = state_of(l, healthy.addr.port()).is_some_and(|t| t["state"] == "live");
            let refused = state_of(l, refusing).is_some_and(|t| {
                t["error"].as_str().is_some_and(|e| e.contains("refused"))
                    && t["reconnects"].as_u64() >= Some(1)
            });
            let silent = state_of(l, silent).is_some_and(|t| {
                t["error"].as_str().is_some_and(|e| e.contains("timeout"))
                    && t["reconnects"].as_u64() >= Some(1)
            });
            healthy && refused && silent
        },
    );
    eprintln!("{list:#}");
    // And the metrics count them.
    let text = get(source.http, "/metrics").1;
    let sum = |name: &str| metric_sum(&source, name, "");
    assert_eq!(sum("tributary_push_live"), 1, "{text}");
    assert!(sum("tributary_push_failures_total") >= 2, "{text}");
    assert!(sum("tributary_push_connects_total") >= 3, "{text}");

    // A target added over the API while the stream is live, then removed:
    // nothing else is disturbed (the frame counts below).
    let nginx = Nginx::start("ind");
    let at_nginx = temp_file("ind-nginx.flv");
    let p3 = ffmpeg_player(&nginx.url("extra"), &at_nginx, None);
    let (status, body) = send(
        source.http,
        "POST",
        "/api/streams/live/cam/pushes",
        "application/json",
        &format!("{{\"url\": \"{}\"}}", nginx.url("extra")),
    );
    assert_eq!(status, "HTTP/1.1 201 Created", "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap();
    wait_pushes(&source, "live/cam", "the added target live", |l| {
        state_of(l, nginx.port).is_some_and(|t| t["state"] == "live" && t["origin"] == "api")
    });
    // It reaches nginx: the player there gets a few seconds of it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::metadata(&at_nginx).map_or(0, |m| m.len()) < 50_000 {
        assert!(Instant::now() < deadline, "nothing arrived at nginx");
        thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = send(
        source.http,
        "DELETE",
        &format!("/api/streams/live/cam/pushes/{id}"),
        "application/json",
        "",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    wait_pushes(&source, "live/cam", "the removed target gone", |l| {
        state_of(l, nginx.port).is_none()
    });
    let _ = p3.wait(Duration::from_secs(15));
    check_recording(&at_nginx, 25);

    // The refusing one comes up: it gets the stream within the backoff.
    let late = Nginx::start_on("late", Some(refusing));
    wait_pushes(&source, "live/cam", "the late target live", |l| {
        state_of(l, refusing).is_some_and(|t| t["state"] == "live")
    });
    wait_live(&late.url("cam"));

    publisher
        .wait(Duration::from_secs(SECONDS as u64 + 20))
        .unwrap();
    let _ = p1.wait(Duration::from_secs(20));
    let _ = p2.wait(Duration::from_secs(20));
    for (what, file) in [
        ("the healthy target", &at_healthy),
        ("a player of the source", &at_source),
    ] {
        let p = probe(file);
        eprintln!("{what}: {} of {} frames", p.video_frames, SECONDS * 25);
        assert!(
            p.video_frames >= (SECONDS as usize * 25) * 99 / 100,
            "{what}: {} frames\n{}",
            p.video_frames,
            log_tail(&source)
        );
        check_recording(file, MIN_FRAMES);
    }
}

#[test]
fn the_push_api_refuses_what_it_cannot_use_and_names_the_field() {
    let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_port = garbage.local_addr().unwrap().port();
    thread::spawn(move || {
        // A "server" that answers the handshake with noise, then closes.
        for mut s in garbage.incoming().take(50).flatten() {
            let _ = s.write_all(&[0x42; 4000]);
        }
    });
    let source = Node::start_with(1, &[]);
    let publisher = publish(&source.url("api"), 15);
    wait_live(&source.url("api"));
    let path = "/api/streams/live/api/pushes";
    let post = |content_type: &str, body: &str| send(source.http, "POST", path, content_type, body);

    // A form or text/plain (what a page can send without a preflight).
    let (s, b) = post("text/plain", "{\"url\": \"rtmp://127.0.0.1:1/a/b\"}");
    assert_eq!(s, "HTTP/1.1 415 Unsupported Media Type", "{b}");
    let (s, _) = post(
        "application/x-www-form-urlencoded",
        "url=rtmp://127.0.0.1:1/a/b",
    );
    assert_eq!(s, "HTTP/1.1 415 Unsupported Media Type");
    // Bodies that are not one URL field, each refused naming the part.
    for (body, says) in [
        ("{\"url\": \"http://127.0.0.1/a/b\"}", "url: the scheme"),
        ("{\"url\": \"rtmp://127.0.0.1/a\"}", "url: no stream key"),
        ("{\"url\": \"rtmp://u:p@127.0.0.1/a/b\"}", "url: user info"),
        (
            "{\"url\": \"rtmp://127.0.0.1/a/b\\n\"}",
            "url: the URL holds whitespace",
        ),
        ("{\"url\": 5}", "invalid type"),
        ("{\"uri\": \"rtmp://127.0.0.1/a/b\"}", "unknown field `uri`"),
        ("{}", "missing field `url`"),
        ("not json", "body:"),
    ] {
        let (s, b) = post("application/json", body);
        assert_eq!(s, "HTTP/1.1 400 Bad Request", "{body}: {b}");
        assert!(b.contains(says), "{body}: {b}");
    }
    let huge = format!("{{\"url\": \"rtmp://127.0.0.1/a/{}\"}}", "k".repeat(9000));
    let (s, _) = post("application/json", &huge);
    assert_eq!(s, "HTTP/1.1 413 Payload Too Large");
    // Streams that are not published here, and names the rule refuses.
    let (s, _) = send(
        source.http,
        "POST",
        "/api/streams/live/nobody/pushes",
        "application/json",
        "{\"url\": \"rtmp://127.0.0.1:1/a/b\"}",
    );
    assert_eq!(s, "HTTP/1.1 404 Not Found");
    let (s, _) = get(source.http, "/api/streams/live/%2e%2e/pushes");
    assert_eq!(s, "HTTP/1.1 400 Bad Request");
    let (s, _) = send(
        source.http,
        "DELETE",
        &format!("{path}/999"),
        "application/json",
        "",
    );
    assert_eq!(s, "HTTP/1.1 404 Not Found");

    // A push to the node itself is refused as a loop, and not retried.
    let (s, b) = post(
        "application/json",
        &format!("{{\"url\": \"rtmp://{}/live/again\"}}", source.addr),
    );
    assert_eq!(s, "HTTP/1.1 201 Created", "{b}");
    wait_pushes(&source, "live/api", "the push to itself failed", |l| {
        state_of(l, source.addr.port()).is_some_and(|t| {
            t["state"] == "failed" && t["error"].as_str().is_some_and(|e| e.contains("loop"))
        })
    });

    // A target that answers with garbage costs only its own connection.
    let url = format!("{{\"url\": \"rtmp://127.0.0.1:{garbage_port}/live/x\"}}");
    let (s, b) = post("application/json", &url);
    assert_eq!(s, "HTTP/1.1 201 Created", "{b}");
    let (s, b) = post("application/json", &url);
    assert_eq!(s, "HTTP/1.1 409 Conflict", "the same target twice: {b}");
    wait_pushes(&source, "live/api", "the garbage target failing", |l| {
        state_of(l, garbage_port).is_some_and(|t| {
            t["state"] == "backing_off"
                && t["error"].as_str().is_some_and(|e| e.contains("handshake"))
        })
    });
    // The stream and the node are fine.
    let file = temp_file("api-player.flv");
    ffmpeg_player(&source.url("api"), &file, Some(3))
        .wait(Duration::from_secs(20))
        .unwrap();
    check_recording(&file, 25);
    drop(publisher);
}

/// How many streams the node lists as live.
fn live_streams(node: &Node) -> usize {
    let (_, body) = get(node.http, "/api/streams");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["streams"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn in_a_cluster_only_the_owner_pushes_and_a_failover_pushes_again_from_the_new_owner() {
    // The target refuses a second publisher of a live key: two pushes at
    // once would show as a refusal in its log.
    let target = Node::start_with(1, &[]);
    let config = write_config(
        "push-cluster.toml",
        &format!(
            "[cluster]\nregistry_ttl_ms = 3000\n[push]\nbackoff_min_ms = 200\nbackoff_max_ms = 1000\n\
             [push.apps.live]\ntargets = [\"rtmp://{}/live/{{name}}\"]\n",
            target.addr
        ),
    );
    let config = config.to_str().unwrap();
    let nats = NatsServer::start("push-cluster");
    let mut a = cluster_node(&nats, "a", 1, &["--config", config]);
    let b = cluster_node(&nats, "b", 1, &["--config", config]);
    let first = publish(&a.url("cam"), 60);
    wait_pushes(&a, "live/cam", "A pushes", |l| l[0]["state"] == "live");
    wait_live(&target.url("cam"));
    // B knows the stream (a player there would get it) but does not push.
    let (status, body) = get(b.http, "/api/streams/live/cam/pushes");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "{body}");
    assert!(body.contains("\"node\":\"a\""), "{body}");
    assert_eq!(live_streams(&target), 1);
    // A push from A to B, a node of the same cluster, would loop: B
    // refuses it and A stops trying.
    let (status, body) = send(
        a.http,
        "POST",
        "/api/streams/live/cam/pushes",
        "application/json",
        &format!("{{\"url\": \"rtmp://{}/live/copy\"}}", b.addr),
    );
    assert_eq!(status, "HTTP/1.1 201 Created", "{body}");
    wait_pushes(&a, "live/cam", "the push to B refused as a loop", |l| {
        state_of(l, b.addr.port()).is_some_and(|t| {
            t["state"] == "failed" && t["error"].as_str().is_some_and(|e| e.contains("loop"))
        })
    });
    assert!(b.log.lock().unwrap().contains("would loop"));
    // A target added over the API on A is kept in the registry entry...
    let late_target = Node::start_with(1, &[]);
    let (status, body) = send(
        a.http,
        "POST",
        "/api/streams/live/cam/pushes",
        "application/json",
        &format!("{{\"url\": \"rtmp://{}/live/kept\"}}", late_target.addr),
    );
    assert_eq!(status, "HTTP/1.1 201 Created", "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(b.http, "/api/streams?scope=cluster");
        if body.contains("\"api_pushes\":1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API target never reached the registry: {body}"
        );
        thread::sleep(Duration::from_millis(50));
    }

    a.child.kill().unwrap(); // SIGKILL: A's sockets close with it.
    drop(first);
    // The encoder comes back, to B, only after A's registry entry expired
    // (an encoder's reconnect delay, or a slow machine): the API target is
    // kept apart from the entry and outlives it. A's push died with A.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = get(b.http, "/api/streams?scope=cluster");
        if body.contains("\"streams\":[]") {
            break;
        }
        assert!(Instant::now() < deadline, "A's entry never expired: {body}");
        thread::sleep(Duration::from_millis(50));
    }
    let second = publish(&b.url("cam"), 60);
    wait_pushes(&b, "live/cam", "B pushes after the failover", |l| {
        l[0]["state"] == "live"
    });
    wait_live(&target.url("cam"));
    // ...and B, the new owner, pushes to it too (a loop refused is not kept).
    let list = wait_pushes(&b, "live/cam", "B takes up the API target", |l| {
        state_of(l, late_target.addr.port())
            .is_some_and(|t| t["state"] == "live" && t["origin"] == "api")
    });
    assert!(state_of(&list, b.addr.port()).is_none(), "{list:#}");
    wait_live(&late_target.url("kept"));
    let log = target.log.lock().unwrap().clone();
    assert!(
        !log.contains("publish refused"),
        "two pushes at once:\n{log}"
    );
    let publishes = log.matches("publishing").count();
    assert_eq!(publishes, 2, "one push from A, then one from B:\n{log}");
    drop(second);
}

/// A publish webhook on a free port that allows everything and names, in
/// its answer, the push targets `targets` (JSON strings).
fn hook_naming(targets: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut conn in listener.incoming().take(20).flatten() {
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // The request: headers, then a body of Content-Length bytes.
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = std::io::Read::read(&mut conn, &mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_lowercase();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let body = format!("{{\"push\": [{targets}]}}");
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn the_publish_webhook_names_push_targets_in_its_answer() {
    let target = Node::start_with(1, &[]);
    let hook = hook_naming(format!(
        "\"rtmp://{}/live/from-hook\", \"ftp://not.a.target/x/y\"",
        target.addr
    ));
    let config = write_config(
        "push-hook.toml",
        &format!("[auth]\nwebhook_url = \"http://{hook}/on_publish\"\n"),
    );
    let source = Node::start_with(1, &["--config", config.to_str().unwrap()]);
    let publisher = publish(&source.url("hooked"), 15);
    let list = wait_pushes(&source, "live/hooked", "the webhook's targets", |l| {
        l.as_array().is_some_and(|a| a.len() == 2)
            && state_of(l, target.addr.port()).is_some_and(|t| t["state"] == "live")
    });
    let hooked = state_of(&list, target.addr.port()).unwrap();
    assert_eq!(hooked["origin"], "webhook", "{list:#}");
    // The URL that is not one is listed, failed, with the reason.
    let bad = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "failed")
        .unwrap_or_else(|| panic!("{list:#}"));
    assert!(bad["error"].as_str().unwrap().contains("scheme"), "{bad}");
    wait_live(&target.url("from-hook"));
    drop(publisher);
}

#[test]
fn a_target_that_stops_reading_mid_stream_drops_to_keyframes_is_cut_and_comes_back() {
    let healthy = Node::start_with(1, &[]);
    let stalled = Nginx::start("stalled");
    let config = write_config(
        "stall-source.toml",
        &format!(
            "[players]\nqueue_max_bytes = 1048576\nmax_lag_ms = 4000\n[rtmp]\nhandshake_timeout_ms = 1500\n\
             [push]\nbackoff_min_ms = 200\nbackoff_max_ms = 1000\n\
             [push.apps.live]\ntargets = [\"rtmp://{}/live/{{name}}\", \"{}\"]\n",
            healthy.addr,
            stalled.url("{name}")
        ),
    );
    let source = Node::start_with(1, &["--config", config.to_str().unwrap()]);
    // Tens of Mbit/s: the loopback socket buffers of a target that stops
    // reading fill within a second or two.
    let publisher = publish_lossless(&source.url("big"));
    wait_pushes(&source, "live/big", "both live", |l| {
        l.as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|t| t["state"] == "live"))
    });
    // SAFETY: SIGSTOP to the nginx this test started, by its PID.
    unsafe {
        libc::kill(stalled.child.id() as i32, libc::SIGSTOP);
    }
    let list = wait_pushes(&source, "live/big", "the stalled target cut", |l| {
        state_of(l, stalled.port).is_some_and(|t| t["reconnects"].as_u64() >= Some(1))
    });
    eprintln!("{list:#}");
    let text = get(source.http, "/metrics").1;
    let dropped = metric_sum(&source, "tributary_dropped_frames_total", "slow_player");
    assert!(
        dropped > 0,
        "no frame dropped for the stalled target:\n{text}"
    );
    // The healthy target never noticed: live, never reconnected, and a
    // player there gets every frame of a 4 s window.
    let healthy_state = state_of(&list, healthy.addr.port()).unwrap();
    assert_eq!(healthy_state["state"], "live", "{list:#}");
    assert_eq!(healthy_state["reconnects"], 0, "{list:#}");
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-rw_timeout",
            "5000000",
            "-read_intervals",
            "%+4",
            "-count_packets",
        ])
        .args([
            "-select_streams",
            "v",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
        ])
        .arg(healthy.url("big"))
        .output()
        .unwrap();
    let packets: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        packets >= 95,
        "{packets} video packets in 4 s at the healthy target"
    );
    // SAFETY: as above: SIGCONT to our nginx.
    unsafe {
        libc::kill(stalled.child.id() as i32, libc::SIGCONT);
    }
    wait_pushes(&source, "live/big", "the stalled target back", |l| {
        state_of(l, stalled.port).is_some_and(|t| t["state"] == "live")
    });
    drop(publisher);
}

#[test]
fn after_a_takeover_the_new_publisher_keeps_the_streams_targets() {
    let target = Node::start_with(1, &[]);
    let config = write_config(
        "push-takeover.toml",
        &format!(
            "[streams]\nduplicate_publish = \"takeover\"\n[push.apps.live]\ntargets = [\"rtmp://{}/live/{{name}}\"]\n",
            target.addr
        ),
    );
    let source = Node::start_with(2, &["--config", config.to_str().unwrap()]);
    let first = publish(&source.url("cam"), 60);
    let list = wait_pushes(&source, "live/cam", "the first publisher's push", |l| {
        l[0]["state"] == "live"
    });
    assert_eq!(list.as_array().unwrap().len(), 1);
    let second = publish(&source.url("cam"), 60);
    // The first publisher is let go and its connection ends ("unpublished"
    // in the log): the stream's target is the second publisher's by then,
    // and stays.
    let _ = first.wait(Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !source.log.lock().unwrap().contains("unpublished") {
        assert!(Instant::now() < deadline, "{}", log_tail(&source));
        thread::sleep(Duration::from_millis(20));
    }
    let list = wait_pushes(&source, "live/cam", "the second publisher's push", |l| {
        l.as_array().is_some_and(|a| a.len() == 1) && l[0]["state"] == "live"
    });
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    wait_live(&target.url("cam"));
    drop(second);
}
