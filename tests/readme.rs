//! The README, kept true: its quick start run as written (the node with the
//! README's flags, the README's ffmpeg publish, and each of its three play
//! URLs played by ffmpeg and judged by ffprobe, where a person would use
//! ffplay), and a docs check of the rest: every flag it names is one the
//! binary takes, every file it names exists, every `[section] key` is in
//! config/tributary.toml, and every metric it names is one a node exports.
//!
//! Ports: the node's three listeners and the clients' URLs are moved to
//! free loopback ports (tests run in parallel, beside other servers);
//! nothing else of a command is changed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{ffmpeg_player, free_port, get, probe, temp_file, wait_live, Node, Proc};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The shell commands of the README's ```sh blocks between two markers,
/// continuation lines joined.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.split(" # ").next().unwrap_or("").trim_end();
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head.trim_start());
            pending.push(' ');
            continue;
        }
        pending.push_str(line.trim_start());
        if !pending.trim().is_empty() {
            out.push(pending.trim().to_owned());
        }
        pending.clear();
    }
    out
}

fn quickstart() -> Vec<String> {
    let text = readme();
    let start = text
        .find("<!-- quickstart")
        .expect("the quick start's marker");
    let end = text
        .find("<!-- /quickstart -->")
        .expect("the quick start's end marker");
    commands(&text[start..end])
}

fn words(command: &str) -> Vec<String> {
    command.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_quick_start_publishes_and_plays_as_written() {
    let steps = quickstart();
    assert_eq!(steps.len(), 6, "{steps:#?}");
    assert_eq!(steps[0], "cargo build --release", "the build step");
    // The node, with the README's own arguments.
    let node_args = words(&steps[1]);
    assert_eq!(node_args[0], "target/release/tributary");
    let (rtmp, media) = (free_port(), free_port());
    let mut args: Vec<String> = node_args[1..]
        .iter()
        .map(|a| a.replace("0.0.0.0:8081", &format!("127.0.0.1:{media}")))
        .collect();
    assert!(
        args.iter().any(|a| a == &format!("127.0.0.1:{media}")),
        "the quick start turns on the media listener on 8081: {args:?}"
    );
    args.extend(["--rtmp-listen".into(), format!("127.0.0.1:{rtmp}")]);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // Node::start_with adds --rtmp-listen/--http-listen 127.0.0.1:0 before
    // these; the later --rtmp-listen would clash, so start it directly.
    let node = start_node(&arg_refs);
    let moved = |s: &str| {
        s.replace("rtmp://127.0.0.1/", &format!("rtmp://127.0.0.1:{rtmp}/"))
            .replace("127.0.0.1:8081", &format!("127.0.0.1:{media}"))
    };

    // The publish, as written but for the port.
    let publish = words(&moved(&steps[2]));
    assert_eq!(publish[0], "ffmpeg");
    let _encoder = Proc::spawn("ffmpeg", Command::new("ffmpeg").args(&publish[1..]));
    let url = publish.last().unwrap().clone();
    wait_live(&url);

    // Each play URL, played for 3 s by ffmpeg and judged by ffprobe.
    for (i, step) in steps[3..].iter().enumerate() {
        let play = words(&moved(step));
        assert_eq!(play[0], "ffplay", "{step}");
        let file = temp_file(&format!("readme-play-{i}.ts"));
        ffmpeg_player(&play[1], &file, Some(3))
            .wait(Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{}: {e}", play[1]));
        let p = probe(&file);
        assert!(
            p.codecs.iter().any(|c| c == "h264") && p.codecs.iter().any(|c| c == "aac"),
            "{}: {:?}",
            play[1],
            p.codecs
        );
        assert!(
            p.video_frames >= 30,
            "{}: {} frames",
            play[1],
            p.video_frames
        );
    }
    // The console the README sends a browser to.
    let (status, _) = get(node.http, "/");
    assert!(status.contains(" 302"), "console: {status}");
    let (status, body) = get(node.http, "/console/");
    assert!(
        status.contains(" 200") && body.contains("<html"),
        "console: {status}"
    );
}

/// The node with exactly `args` plus an HTTP admin on a free port.
fn start_node(args: &[&str]) -> Node {
    let http = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["--http-listen", &http];
    all.extend_from_slice(args);
    Node::start_exact(&all)
}

fn help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("--help")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_flag_file_key_and_metric_the_readme_names_exists() {
    let text = readme();
    let help = help();
    assert!(
        help.contains("LL-HLS"),
        "--help says the media listener serves LL-HLS: {help}"
    );

    // Flags: the configuration table's and the node's command lines'.
    let mut flags = BTreeSet::new();
    for line in text.lines() {
        let node_line = line.trim_start().starts_with("target/release/tributary ");
        let table_row = line.starts_with("| `--");
        if !(node_line || table_row) {
            continue;
        }
        for word in line.split(|c: char| c.is_whitespace() || c == '`' || c == ',') {
            if let Some(flag) = word.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap();
                if !flag.is_empty() {
                    flags.insert(format!("--{flag}"));
                }
            }
        }
    }
    assert!(flags.len() >= 10, "{flags:?}");
    for flag in &flags {
        assert!(
            help.contains(&format!("{flag} ")),
            "README names {flag}; tributary --help has no such flag"
        );
    }

    // Files and folders of the repository.
    let mut paths = BTreeSet::new();
    for piece in text.split(|c: char| c.is_whitespace() || "`()[]<>,\"'".contains(c)) {
        let piece = piece.trim_end_matches(['.', ':', ';']);
        let top = piece.split('/').next().unwrap_or("");
        let is_repo_path = [
            "deploy", "docs", "config", "scripts", "tests", "loadtest", "fuzz",
        ]
        .contains(&top)
            && piece.contains('/');
        if is_repo_path || piece.ends_with(".md") && !piece.contains("://") {
            paths.insert(piece.to_owned());
        }
    }
    assert!(paths.len() >= 10, "{paths:?}");
    for path in &paths {
        assert!(
            repo().join(path).exists(),
            "README names {path}, which is not in the repository"
        );
    }

    // `[section] key` pairs, against the shipped config's keys.
    let config = std::fs::read_to_string(repo().join("config/tributary.toml")).unwrap();
    let mut rest = text.as_str();
    let mut keys = 0;
    while let Some(i) = rest.find("`[") {
        rest = &rest[i + 2..];
        let Some(close) = rest.find(']') else { break };
        let section = &rest[..close];
        let after = &rest[close + 1..];
        let section_header = format!("[{section}]");
        if !section.contains('.') {
            assert!(
                config.contains(&format!("\n{section_header}\n")),
                "README names [{section}], not a section of config/tributary.toml"
            );
        }
        if let Some(key) = after.strip_prefix(' ') {
            let key: String = key
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !key.is_empty() && !section.contains('.') {
                let body = config
                    .split(&format!("\n{section_header}\n"))
                    .nth(1)
                    .unwrap();
                let body = body.split("\n[").next().unwrap();
                assert!(
                    body.contains(&format!("\n{key} =")) || body.contains(&format!("# {key} =")),
                    "README names [{section}] {key}, which config/tributary.toml does not document"
                );
                keys += 1;
            }
        }
    }
    assert!(keys >= 8, "{keys} keys checked");

    // Metric names: families a node exports, or (those with labels, which
    // show only once they have a series) registered by the metrics code.
    let node = Node::start(1);
    let (_, metrics) = get(node.http, "/metrics");
    let source = std::fs::read_to_string(repo().join("src/admin/metrics.rs")).unwrap();
    let mut names = BTreeSet::new();
    for piece in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '*')) {
        if piece.starts_with("tributary_") {
            names.insert(piece.to_owned());
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        let found = match name.strip_suffix('*') {
            Some(prefix) => metrics.contains(&format!("# TYPE {prefix}")),
            None => {
                metrics.contains(&format!("# TYPE {name} "))
                    || source.contains(&format!("\"{name}\""))
            }
        };
        assert!(
            found,
            "README names {name}; a node's /metrics has no such family"
        );
    }
}
