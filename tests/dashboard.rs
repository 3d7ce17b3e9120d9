//! The Grafana dashboard (`deploy/grafana/tributary.json`) and the alert
//! rules (`deploy/prometheus/alerts.yml`) against a real Prometheus
//! (Debian's) scraping real nodes under load: a two-node cluster on a real
//! nats-server, ffmpeg publishing to one node, which records and pushes to
//! a third, players over RTMP on both nodes, LL-HLS and HTTP-FLV. Every
//! query of every panel must return series; every alert expression must
//! evaluate; `promtool check rules` and `promtool test rules` pass.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    cluster_node, ffmpeg_player, free_port, get, publish, temp_file, wait_live, write_config,
    LibPlayer, NatsServer, Node, Proc,
};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Percent-encodes a PromQL expression for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the dashboard's panels, with Grafana's variables as a
/// user who picked every node would have them.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/tributary.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$instance", ".*")
                .replace("$__rate_interval", "10s");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect()
}

fn query(prometheus: SocketAddr, expr: &str) -> serde_json::Value {
    let (status, body) = get(prometheus, &format!("/api/v1/query?query={}", encode(expr)));
    assert!(status.contains(" 200"), "{expr}: {status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v
}

fn series(v: &serde_json::Value) -> usize {
    v["data"]["result"].as_array().map_or(0, Vec::len)
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .expect("promtool (scripts/test installs prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
}

#[test]
fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let nats = NatsServer::start("dashboard");
    let target = Node::start(1);
    let records = temp_file("dashboard-records");
    let config = write_config(
        "dashboard.toml",
        &format!(
            "[record]\npath = \"{}\"\n[push.apps.live]\ntargets = [\"rtmp://{}/pushed/{{name}}\"]\n",
            records.display(),
            target.addr
        ),
    );
    let a = cluster_node(
        &nats,
        "a",
        1,
        &[
            "--config",
            config.to_str().unwrap(),
            "--media-listen",
            "127.0.0.1:0",
        ],
    );
    let b = cluster_node(&nats, "b", 1, &["--media-listen", "127.0.0.1:0"]);
    let _encoder = publish(&a.url("dash"), 90);
    wait_live(&a.url("dash"));
    let _here = LibPlayer::start(a.addr, "dash");
    let relayed = LibPlayer::start(b.addr, "dash");
    relayed.wait_for("media relayed from A", |e| e.len() > 30);
    let _flv = ffmpeg_player(
        &format!("http://{}/live/dash.flv", b.media.unwrap()),
        &temp_file("dashboard.flv"),
        Some(60),
    );
    // An LL-HLS player: the playlist asked for keeps the stream packaged.
    let hls = a.media.unwrap();
    let (status, _) = get(hls, "/live/dash/index.m3u8");
    assert!(status.contains(" 200"), "{status}");

    let port = free_port();
    let prometheus = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = temp_file("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let targets: Vec<String> = [&a, &b, &target]
        .iter()
        .map(|n| format!("\"{}\"", n.http))
        .collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: tributary\n    static_configs:\n      - targets: [{}]\n",
            repo().join("deploy/prometheus/alerts.yml").display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let _prometheus = Proc::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdout(Stdio::null()),
    );

    // Polled: a rate needs two scrapes in its window, LL-HLS its parts.
    let queries = dashboard_queries();
    assert!(queries.len() >= 30, "{} queries", queries.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut empty: Vec<String>;
    loop {
        let _ = get(hls, "/live/dash/index.m3u8");
        empty = if std::net::TcpStream::connect(prometheus).is_ok()
            && series(&query(prometheus, "up{job=\"tributary\"} == 1")) == 3
        {
            queries
                .iter()
                .filter(|(_, q)| series(&query(prometheus, q)) == 0)
                .map(|(title, q)| format!("{title}: {q}"))
                .collect()
        } else {
            vec!["Prometheus not scraping all three nodes yet".into()]
        };
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        empty.is_empty(),
        "queries with no series:\n{}",
        empty.join("\n")
    );
    eprintln!(
        "dashboard: all {} queries returned series from Prometheus",
        queries.len()
    );

    // The node variable lists every node.
    let (_, body) = get(
        prometheus,
        "/api/v1/label/instance/values?match%5B%5D=tributary_connections",
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(3), "{body}");
    // Per stream: this stream, with its viewers here and on B.
    let per_stream = query(
        prometheus,
        "sum by (stream) (tributary_stream_viewers{stream=\"dash\"})",
    );
    let viewers: f64 = per_stream["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(viewers >= 3.0, "dash has {viewers} viewers: {per_stream}");
    // Every alert evaluates on live data (series or none).
    for expr in alert_exprs() {
        query(prometheus, &expr);
    }
    let ready = query(prometheus, "min(tributary_ready)");
    assert_eq!(ready["data"]["result"][0]["value"][1], "1", "{ready}");
}
