//! Exec pipelines and hooks against real programs: the shipped ffmpeg
//! transcode template makes a 360p rendition of a 720p publish, published
//! back with the node's internal credential (the app's publish keys do
//! not list the rendition); killing the ffmpeg restarts it within the
//! backoff; a SIGKILL of the node leaves no ffmpeg running; the hooks run
//! once per publish with the stream in their environment.

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn pipelines(node: &Node, stream: &str) -> serde_json::Value {
    let (status, body) = get(node.http, &format!("/api/streams/{stream}/pipelines"));
    if status != "HTTP/1.1 200 OK" {
        return serde_json::Value::Null;
    }
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["pipelines"].clone()
}

fn wait_pipeline(
    node: &Node,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = pipelines(node, "live/cam");
        if list.get(0).is_some_and(&pred) {
            return list[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {list:#}\n{}",
            node.log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` runs (not gone, not a zombie).
fn running(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    !stat.is_empty() && state != Some("Z")
}

/// The rendition's video height, as ffprobe reads it.
fn height(url: &str) -> Option<u64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-rw_timeout",
            "5000000",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=height",
            "-of",
            "csv=p=0",
            url,
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn a_transcode_makes_a_rendition_restarts_when_killed_and_dies_with_the_node() {
    let hooks = temp_file("exec-hooks.log");
    let config = temp_file("exec.toml");
    std::fs::write(
        &config,
        format!(
            r#"[auth]
publish = "keys"
keys = ["cam"]
[exec]
backoff_min_ms = 300
backoff_max_ms = 1000
[exec.apps.live]
on_publish = ["sh", "-c", "echo \"$TRIBUTARY_EVENT $TRIBUTARY_APP/$TRIBUTARY_NAME\" >> {hooks}"]
on_unpublish = ["sh", "-c", "echo \"$TRIBUTARY_EVENT $TRIBUTARY_APP/$TRIBUTARY_NAME\" >> {hooks}"]
[[exec.apps.live.pipelines]]
name = "360p"
command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "{{input}}",
           "-vf", "scale=-2:360", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
           "-force_key_frames", "source", "-c:a", "copy", "-f", "flv", "{{output}}"]
"#,
            hooks = hooks.display()
        ),
    )
    .unwrap();
    let mut node = Node::start_with(1, &["--config", config.to_str().unwrap()]);
    let publisher = publish_sized(&[], &node.url("cam"), 60, "1280x720");

    // The rendition is published back and is 360 lines high.
    let first = wait_pipeline(&node, "the pipeline running", |p| p["state"] == "running");
    let rendition = node.url("cam_360p");
    wait_live(&rendition);
    assert_eq!(height(&rendition), Some(360));
    assert_eq!(height(&node.url("cam")), Some(720));
    let pid = first["pid"].as_u64().unwrap();
    assert!(running(pid));

    // Killed: it is started again within the backoff.
    // SAFETY: kill() on the pid of a process our node started for us.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let again = wait_pipeline(&node, "restarted", |p| {
        p["state"] == "running"
            && p["pid"].as_u64() != Some(pid)
            && p["restarts"].as_u64() >= Some(1)
    });
    let pid = again["pid"].as_u64().unwrap();
    wait_live(&rendition);
    // The route refuses what names no stream, and a stream with no pipeline.
    let (status, _) = get(node.http, "/api/streams/live/%2e%2e/pipelines");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let (status, _) = get(node.http, "/api/streams/live/nobody/pipelines");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (_, metrics) = get(node.http, "/metrics");
    assert!(metrics.contains("tributary_exec_running 1\n"), "{metrics}");
    assert!(
        metrics.contains("tributary_exec_starts_total "),
        "{metrics}"
    );

    // The hooks: once per publish of the stream, never for the rendition.
    let text = std::fs::read_to_string(&hooks).unwrap_or_default();
    assert_eq!(text.trim(), "publish live/cam", "{text}");

    // SIGKILL of the node: its ffmpeg goes with it.
    node.child.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        assert!(Instant::now() < deadline, "ffmpeg {pid} outlived the node");
        thread::sleep(Duration::from_millis(20));
    }
    drop(publisher);
}

#[test]
fn a_publish_ending_stops_its_pipeline_and_runs_the_unpublish_hook() {
    let hooks = temp_file("exec-hooks-2.log");
    let config = temp_file("exec-2.toml");
    std::fs::write(
        &config,
        format!(
            r#"[exec.apps.live]
on_unpublish = ["sh", "-c", "echo \"$TRIBUTARY_EVENT $TRIBUTARY_APP/$TRIBUTARY_NAME on $TRIBUTARY_NODE\" >> {hooks}"]
[[exec.apps.live.pipelines]]
name = "copy"
command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "{{input}}", "-c", "copy", "-f", "flv", "{{output}}"]
"#,
            hooks = hooks.display()
        ),
    )
    .unwrap();
    let node = Node::start_with(
        1,
        &[
            "--config",
            config.to_str().unwrap(),
            "--node-id",
            "exec-node",
        ],
    );
    let publisher = publish(&node.url("cam"), 30);
    let p = wait_pipeline(&node, "the pipeline running", |p| p["state"] == "running");
    let pid = p["pid"].as_u64().unwrap();
    wait_live(&node.url("cam_copy"));
    drop(publisher); // SIGKILL of the encoder: the node sees the publish end.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) || pipelines(&node, "live/cam") != serde_json::Value::Null {
        assert!(
            Instant::now() < deadline,
            "the pipeline outlived its stream"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&hooks).unwrap_or_default();
        if text.trim() == "unpublish live/cam on exec-node" {
            break;
        }
        assert!(Instant::now() < deadline, "hook log: {text:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// One GET on the media listener: (status line, body).
fn media_get(node: &Node, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let (status, answer) = raw_http(node.media.unwrap(), request.as_bytes());
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// EXTINF durations of a media playlist's complete segments.
fn segment_durations(playlist: &str) -> Vec<f64> {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|d| d.trim_end_matches(',').parse().ok())
        .collect()
}

#[test]
fn a_stream_and_its_rendition_are_one_adaptive_group_in_its_multivariant_playlist() {
    // A token app: the stream's play token plays the whole group.
    let config = temp_file("exec-abr.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\ntoken_secret = \"a-secret-of-sixteen-bytes\"\n[auth.apps.live]\nplay = \"token\"\n{TRANSCODE_360P}"
        ),
    )
    .unwrap();
    let node = Node::start_with(
        1,
        &[
            "--config",
            config.to_str().unwrap(),
            "--media-listen",
            "127.0.0.1:0",
        ],
    );
    let _publisher = publish_sized(&[], &node.url("cam"), 60, "1280x720");
    let (_, play) = get(node.http, "/api/play?stream=live/cam");
    let token = serde_json::from_str::<serde_json::Value>(&play).unwrap()["query"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("token="), "{play}");
    // The rendition plays over RTMP with the stream's token, and without
    // one it is refused.
    wait_live(&format!("{}?{token}", node.url("cam_360p")));
    assert_eq!(height(&node.url("cam_360p")), None);
    // The multivariant playlist lists both, once both are packaged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (status, text) = media_get(&node, &format!("/live/cam/index.m3u8?{token}"));
        assert!(status.ends_with("200 OK"), "{status}: {text}");
        if text.matches("RESOLUTION=").count() == 2 && text.contains("CODECS=") {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{text}");
    let variants: Vec<(&str, &str)> = text
        .lines()
        .zip(text.lines().skip(1))
        .filter(|(inf, _)| inf.starts_with("#EXT-X-STREAM-INF:"))
        .collect();
    assert_eq!(variants.len(), 2, "{text}");
    assert!(variants[0].0.contains("RESOLUTION=1280x720"), "{text}");
    assert!(variants[1].0.contains("RESOLUTION=640x360"), "{text}");
    for (inf, _) in &variants {
        assert!(
            inf.contains("CODECS=\"avc1.") && inf.contains(",mp4a.40.2\""),
            "{inf}"
        );
    }
    assert!(variants[0].1.starts_with("index.m3u8?"), "{text}");
    assert!(
        variants[1].1.starts_with("../cam_360p/index.m3u8?"),
        "{text}"
    );
    for (_, uri) in &variants {
        assert!(
            uri.contains("hls_session=") && uri.contains("token="),
            "{text}"
        );
    }
    // Each variant's media playlist answers, and their segments line up
    // (the rendition's keyframes are the source's).
    let source = media_get(&node, &format!("/live/cam/{}", variants[0].1)).1;
    let rendition = media_get(
        &node,
        &format!("/live/cam_360p/{}", &variants[1].1[3 + "cam_360p/".len()..]),
    )
    .1;
    let (a, b) = (segment_durations(&source), segment_durations(&rendition));
    assert!(!a.is_empty() && !b.is_empty(), "{source}\n{rendition}");
    let (la, lb) = (a[a.len() - 1], b[b.len() - 1]);
    assert!(
        (la - lb).abs() < 0.1,
        "last segments {la} s and {lb} s:\n{source}\n{rendition}"
    );
}
