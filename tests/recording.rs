//! Recording end to end: ffmpeg (Debian's and ffmpeg 9) publishes, the node
//! records, ffprobe judges each file and what the media listener plays
//! back by time range (one MP4; the VOD playlist, read by ffmpeg's HLS
//! demuxer). `kill -9` of the node at random points leaves only files that
//! play; a full disk (a tmpfs the test mounts) stops the recording, not the
//! live stream, and recording resumes once there is room; retention deletes
//! by age and by size, never the file being written; the routes refuse bad
//! input as an attacker would send it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A node recording the `live` app into `dir`, with `extra` config.
fn recording_node(name: &str, dir: &Path, extra: &str) -> Node {
    let config = write_config(
        &format!("{name}.toml"),
        &format!(
            "[record]\npath = \"{}\"\nfragment_ms = 500\n{extra}\n[record.apps.live]\nrecord = \"all\"\n",
            dir.display()
        ),
    );
    Node::start_with(
        1,
        &[
            "--config",
            config.to_str().unwrap(),
            "--media-listen",
            "127.0.0.1:0",
        ],
    )
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The node's files of `stream`, as `/api/recordings` lists them.
fn listed(node: &Node, stream: &str) -> Vec<serde_json::Value> {
    let (status, body) = get(node.http, &format!("/api/recordings?stream={stream}"));
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    json(&body)["recordings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `/api/recordings` until `f` holds for the listing.
fn wait_listed(
    node: &Node,
    stream: &str,
    what: &str,
    mut f: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let files = listed(node, stream);
        if f(&files) {
            return files;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {files:?}\n{}",
            node.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A stream's recording state (`GET .../recording`).
fn state(node: &Node, stream: &str) -> serde_json::Value {
    let (_, body) = get(node.http, &format!("/api/streams/{stream}/recording"));
    json(&body)
}

/// The segment files under `dir`, oldest first.
fn mp4s(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.extension().is_some_and(|e| e == "mp4"));
    out.sort();
    out
}

/// Video packets' pts (seconds) and keyframe flags, in file order.
fn video_packets(file: &Path) -> Vec<(f64, bool)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "packet=pts_time,flags", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (t, f) = l.split_once(',')?;
            Some((t.parse().ok()?, f.starts_with('K')))
        })
        .collect()
}

/// What ffprobe says on stderr about a file (empty when it reads cleanly).
fn ffprobe_errors(file: &Path) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
        ])
        .arg(file)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn video_frames(file: &Path) -> usize {
    tracks(file)
        .iter()
        .find(|t| t.kind == "video")
        .map_or(0, |t| t.frames)
}

/// Downloads `path` from the media listener into `file`; the status code.
fn download(media: std::net::SocketAddr, path: &str, file: &Path) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(media).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer head");
    std::fs::write(file, &answer[end + 4..]).unwrap();
    let head = String::from_utf8_lossy(&answer[..end]);
    head.split(' ').nth(1).unwrap_or("").to_owned()
}

/// ffmpeg's HLS demuxer reads the playlist at `url` into `file`.
fn read_through_hls(url: &str, file: &Path) {
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            url,
            "-c",
            "copy",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = temp_file(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SECONDS: u32 = 12;

#[test]
fn h264_aac_is_recorded_in_files_ffprobe_plays_and_played_back_by_time_range() {
    let dir = fresh_dir("rec-h264");
    let hooked = temp_file("rec-h264-done.log");
    let _ = std::fs::remove_file(&hooked);
    let hook = format!(
        "segment_secs = 3\n[exec.apps.live]\non_record_done = [\"sh\", \"-c\", \"echo $TRIBUTARY_EVENT $TRIBUTARY_FILE $TRIBUTARY_DURATION $TRIBUTARY_BYTES >> {}\"]",
        hooked.display()
    );
    let node = recording_node("rec-h264", &dir, &hook);
    let media = node.media.unwrap();
    let publisher = publish(&node.url("cam"), SECONDS);
    let open = wait_listed(&node, "live/cam", "an open file", |f| {
        f.iter().any(|s| s["open"] == true)
    });
    assert_eq!(state(&node, "live/cam")["state"], "recording");
    publisher
        .wait(Duration::from_secs(SECONDS as u64 + 20))
        .unwrap();
    let files = wait_listed(&node, "live/cam", "every file closed", |f| {
        !f.is_empty() && f.iter().all(|s| s["open"] == false)
    });
    assert_eq!(files[0]["file"], open[0]["file"]);
    let on_disk = mp4s(&dir.join("live/cam"));
    assert_eq!(on_disk.len(), files.len(), "{files:?}");
    assert!(files.len() >= 3, "12 s in files of 3 s: {files:?}");
    // The hook ran once per file, naming it, its duration and bytes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&hooked).unwrap_or_default();
        if text.lines().count() >= files.len() || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for f in &files {
        let name = f["file"].as_str().unwrap();
        let line = lines
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no hook for {name}: {lines}"));
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], "record_done", "{line}");
        assert!(Path::new(fields[1]).starts_with(&dir), "{line}");
        assert_eq!(
            fields[3],
            f["bytes"].as_u64().unwrap().to_string(),
            "{line}"
        );
    }
    assert_eq!(lines.lines().count(), files.len(), "{lines}");

    // Each file plays: H.264 and AAC, from a keyframe; the frames of all of
    // them are the frames sent; one timeline across them.
    let mut frames = 0;
    let mut last_pts: Option<f64> = None;
    for f in &on_disk {
        let t = tracks(f);
        let codecs: Vec<&str> = t.iter().map(|t| t.codec.as_str()).collect();
        assert_eq!(codecs, ["h264", "aac"], "{}", f.display());
        assert!(
            ffprobe_errors(f).is_empty(),
            "{}: {}",
            f.display(),
            ffprobe_errors(f)
        );
        let packets = video_packets(f);
        assert!(packets[0].1, "{} starts with a keyframe", f.display());
        if let Some(last) = last_pts {
            let gap = packets[0].0 - last;
            assert!(
                (0.0..0.1).contains(&gap),
                "{}: the timeline goes from {last} to {}",
                f.display(),
                packets[0].0
            );
        }
        assert!(packets.windows(2).all(|w| w[0].0 < w[1].0));
        last_pts = packets.last().map(|p| p.0);
        frames += video_frames(f);
    }
    assert_eq!(
        frames,
        SECONDS as usize * 25,
        "every frame sent is recorded"
    );
    let total: f64 = files.iter().map(|s| s["duration"].as_f64().unwrap()).sum();
    assert!(
        (total - SECONDS as f64).abs() <= 1.0,
        "recorded {total} s of {SECONDS} s (a GOP is 1 s)"
    );

    // One MP4 of the whole range, across the files.
    let start = files[0]["start"].as_str().unwrap().to_owned();
    let whole = temp_file("rec-h264-whole.mp4");
    let path = format!("/recordings/live/cam.mp4?start={start}&duration=60");
    assert_eq!(download(media, &path, &whole), "200");
    assert_eq!(video_frames(&whole), SECONDS as usize * 25);
    assert!(
        ffprobe_errors(&whole).is_empty(),
        "{}",
        ffprobe_errors(&whole)
    );
    // A part of it: from the keyframe before 4.5 s in, 3 s.
    let start_ms = files[0]["start"].as_str().unwrap();
    let from = shift(start_ms, 4500);
    let part = temp_file("rec-h264-part.mp4");
    let path = format!("/recordings/live/cam.mp4?start={from}&duration=3");
    assert_eq!(download(media, &path, &part), "200");
    let n = video_frames(&part);
    assert!(
        (75..=125).contains(&n),
        "{n} frames for 3 s from a keyframe"
    );
    assert!(
        video_packets(&part)[0].1,
        "the range starts with a keyframe"
    );

    // The VOD playlist: one EXT-X-MAP per file, a keyframe run per
    // segment; ffmpeg's HLS demuxer reads every frame through it.
    let (status, m3u8) = get(
        media,
        &format!("/recordings/live/cam/index.m3u8?start={start}"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{m3u8}");
    assert_eq!(m3u8.matches("#EXT-X-MAP:").count(), files.len(), "{m3u8}");
    assert!(
        // Segments start at keyframes, 2 s apart at least.
        m3u8.matches("#EXTINF:").count() >= SECONDS as usize / 2 - 1,
        "{m3u8}"
    );
    assert!(m3u8.ends_with("#EXT-X-ENDLIST\n"));
    let through_hls = temp_file("rec-h264-hls.mp4");
    read_through_hls(
        &format!("http://{media}/recordings/live/cam/index.m3u8?start={start}"),
        &through_hls,
    );
    assert_eq!(video_frames(&through_hls), SECONDS as usize * 25);

    // A byte range of one file: 206, the bytes of the file.
    let first = &on_disk[0];
    let name = first.file_name().unwrap().to_str().unwrap();
    let answer = raw_http(
        media,
        format!("GET /recordings/live/cam/{name} HTTP/1.1\r\nHost: x\r\nRange: bytes=4-11\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(answer.0, "HTTP/1.1 206 Partial Content", "{answer:?}");
    let bytes = std::fs::read(first).unwrap();
    let body = answer.1.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body.as_bytes(), &bytes[4..12]);
}

/// `rfc3339` plus `ms` milliseconds, as RFC 3339 (UTC, ms).
fn shift(rfc3339: &str, ms: u64) -> String {
    let t = tributary::container::record::parse_rfc3339(rfc3339).unwrap();
    tributary::container::record::format_rfc3339(t + ms)
}

fn ffmpeg9_case(key: &str, video: &[&str], audio: &[&str], audio_tracks: usize, codecs: &[&str]) {
    let dir = fresh_dir(&format!("rec9-{key}"));
    let node = recording_node(&format!("rec9-{key}"), &dir, "segment_secs = 4");
    let seconds = 9;
    let publisher = publish9(&node.url(key), seconds, video, audio, audio_tracks);
    publisher
        .wait(Duration::from_secs(seconds as u64 + 30))
        .unwrap();
    let stream = format!("live/{key}");
    wait_listed(&node, &stream, "every file closed", |f| {
        !f.is_empty() && f.iter().all(|s| s["open"] == false)
    });
    let files = mp4s(&dir.join("live").join(key));
    assert!(files.len() >= 2, "{files:?}");
    let mut frames = 0;
    let mut audio_frames = vec![0; audio_tracks];
    for f in &files {
        let t = tracks(f);
        let found: Vec<&str> = t.iter().map(|t| t.codec.as_str()).collect();
        assert_eq!(found, codecs, "{}", f.display());
        assert!(first_video_is_key(f), "{}", f.display());
        frames += video_frames(f);
        for (n, a) in t.iter().filter(|t| t.kind == "audio").enumerate() {
            audio_frames[n] += a.frames;
        }
    }
    assert_eq!(frames, seconds as usize * 25, "{key}");
    // Every audio track is there, whole: the second as long as the first
    // (a frame or two either side where a file starts).
    let first = audio_frames[0];
    assert!(first > 0, "{audio_frames:?}");
    for n in &audio_frames {
        assert!(
            n.abs_diff(first) <= 2 * files.len(),
            "{key}: {audio_frames:?}"
        );
    }
}

#[test]
fn hevc_aac_from_ffmpeg_9_is_recorded() {
    ffmpeg9_case(
        "hevc",
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=error:bframes=0",
        ],
        &["-c:a", "aac"],
        1,
        &["hevc", "aac"],
    );
}

#[test]
fn av1_opus_from_ffmpeg_9_is_recorded() {
    ffmpeg9_case(
        "av1",
        &[
            "-c:v",
            "libsvtav1",
            "-preset",
            "12",
            "-svtav1-params",
            "keyint=25",
        ],
        &["-c:a", "libopus"],
        1,
        &["av1", "opus"],
    );
}

/// Every audio track of a multitrack stream (Enhanced RTMP, ffmpeg 9) is
/// in the recording: one MP4 track each, alternatives of one another.
#[test]
fn two_audio_tracks_from_ffmpeg_9_are_both_recorded() {
    ffmpeg9_case(
        "twoaudio",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ],
        &["-c:a", "aac", "-b:a", "64k"],
        2,
        &["h264", "aac", "aac"],
    );
}

/// A pseudo-random sequence for the kill points (fixed seed: a failure
/// repeats).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn after_kill_9_at_random_points_every_file_plays_and_keeps_what_was_written() {
    let dir = fresh_dir("rec-kill");
    let mut rng = Lcg(20261204);
    let mut written: Vec<(String, u64)> = Vec::new();
    let mut checked = BTreeSet::new();
    for round in 0..20 {
        let mut node = recording_node("rec-kill", &dir, "segment_secs = 2\nfsync = \"never\"");
        let publisher = publish(&node.url("cam"), 30);
        // At least one fragment past the init segment, then a random moment.
        let files = wait_listed(&node, "live/cam", "a fragment written", |f| {
            f.iter()
                .any(|s| s["open"] == true && s["bytes"].as_u64().unwrap_or(0) > 20_000)
        });
        let wait = rng.below(1500);
        std::thread::sleep(Duration::from_millis(wait));
        let files = {
            let later = listed(&node, "live/cam");
            if later.is_empty() {
                files
            } else {
                later
            }
        };
        node.child.kill().unwrap(); // SIGKILL
        let _ = node.child.wait();
        drop(publisher);
        for f in &files {
            written.push((
                f["file"].as_str().unwrap().to_owned(),
                f["bytes"].as_u64().unwrap(),
            ));
        }
        // Before any repair: every file this round left plays, from a
        // keyframe.
        let open: Vec<&str> = files
            .iter()
            .filter(|f| f["open"] == true)
            .filter_map(|f| f["file"].as_str())
            .collect();
        for f in mp4s(&dir.join("live/cam")) {
            let name = f.file_name().unwrap().to_str().unwrap().to_owned();
            if !checked.insert(name.clone()) && !open.contains(&name.as_str()) {
                continue;
            }
            assert!(
                video_frames(&f) > 0,
                "round {round}: {} does not play",
                f.display()
            );
            assert!(first_video_is_key(&f), "round {round}: {}", f.display());
        }
    }
    // Every file holds at least what the node had said it wrote; after the
    // restart's repair each reads cleanly to its end.
    let node = recording_node("rec-kill", &dir, "segment_secs = 2");
    let files = listed(&node, "live/cam");
    for (file, bytes) in &written {
        let path = dir.join("live/cam").join(file);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        assert!(
            len >= *bytes,
            "{file}: {len} bytes on disk, {bytes} reported written"
        );
        assert!(
            files.iter().any(|f| f["file"] == file.as_str()),
            "{file} not listed"
        );
        assert!(
            ffprobe_errors(&path).is_empty(),
            "{file}: {}",
            ffprobe_errors(&path)
        );
    }
    let names: BTreeSet<&str> = written.iter().map(|w| w.0.as_str()).collect();
    assert!(names.len() >= 20, "{names:?}");
}

/// A tmpfs of `size` mounted on `dir` while this lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs the suite as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_recording_not_the_live_stream_and_recording_resumes() {
    let dir = fresh_dir("rec-full");
    let _fs = Tmpfs::mount(&dir, "1500k");
    let node = recording_node("rec-full", &dir, "segment_secs = 1\nretry_ms = 300");
    let seconds = 24;
    let publisher = publish_sized(&[], &node.url("full"), seconds, "640x360");
    wait_listed(&node, "live/full", "a file", |f| !f.is_empty());
    let watched = temp_file("rec-full-player.flv");
    let player = ffmpeg_player(&node.url("full"), &watched, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let s = state(&node, "live/full");
        if s["state"] == "failed" {
            break s;
        }
        assert!(Instant::now() < deadline, "the disk never filled: {s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(failed["error_kind"], "no_space", "{failed}");
    assert!(metric_sum(&node, "tributary_record_errors_total", "no_space") >= 1);
    // Room again: the files written so far go (as an operator would).
    let before: BTreeSet<PathBuf> = mp4s(&dir.join("live/full")).into_iter().collect();
    for f in &before {
        std::fs::remove_file(f).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = state(&node, "live/full");
        let fresh = mp4s(&dir.join("live/full"))
            .into_iter()
            .any(|f| !before.contains(&f) && std::fs::metadata(&f).map_or(0, |m| m.len()) > 10_000);
        if s["state"] == "recording" && fresh {
            break;
        }
        assert!(Instant::now() < deadline, "recording did not resume: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    publisher
        .wait(Duration::from_secs(seconds as u64 + 20))
        .unwrap();
    let _ = player.wait(Duration::from_secs(20));
    // The player lost no frame: 25 fps, every step 40 ms.
    let packets = video_packets(&watched);
    assert!(packets.len() > 250, "{} frames played", packets.len());
    for w in packets.windows(2) {
        let step = w[1].0 - w[0].0;
        assert!(
            step < 0.05,
            "a hole in what the player got: {} to {}",
            w[0].0,
            w[1].0
        );
    }
}

#[test]
fn retention_deletes_by_age_never_the_open_file() {
    let dir = fresh_dir("rec-age");
    let node = recording_node("rec-age", &dir, "segment_secs = 1\ndelete_after_secs = 2");
    let publisher = publish(&node.url("old"), 14);
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while metric_sum(&node, "tributary_record_deleted_total", "") < 3 {
        assert!(Instant::now() < deadline, "nothing was deleted");
        for f in listed(&node, "live/old") {
            let name = f["file"].as_str().unwrap().to_owned();
            if f["open"] == true {
                let path = dir.join("live/old").join(&name);
                // Listed open: on disk, whatever the sweep did.
                assert!(
                    path.exists()
                        || !listed(&node, "live/old")
                            .iter()
                            .any(|g| g["file"] == name.as_str() && g["open"] == true)
                );
            }
            seen.insert(name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let oldest = seen.iter().next().unwrap().clone();
    assert!(
        !dir.join("live/old").join(&oldest).exists(),
        "{oldest} was kept"
    );
    assert!(listed(&node, "live/old")
        .iter()
        .all(|f| f["file"] != oldest.as_str()));
    drop(publisher);
}

#[test]
fn retention_keeps_the_node_under_max_bytes_oldest_first() {
    let dir = fresh_dir("rec-size");
    let node = recording_node("rec-size", &dir, "segment_secs = 1\nmax_bytes = 300000");
    let publisher = publish(&node.url("big"), 10);
    publisher.wait(Duration::from_secs(30)).unwrap();
    let files = wait_listed(&node, "live/big", "the node under max_bytes", |f| {
        !f.is_empty()
            && f.iter().all(|s| s["open"] == false)
            && f.iter().map(|s| s["bytes"].as_u64().unwrap()).sum::<u64>() <= 300_000
    });
    assert!(metric_sum(&node, "tributary_record_deleted_total", "") >= 1);
    let on_disk: u64 = mp4s(&dir.join("live/big"))
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(on_disk <= 300_000, "{on_disk} bytes on disk");
    // The newest are the ones kept.
    let last = files.last().unwrap()["file"].as_str().unwrap();
    assert!(dir.join("live/big").join(last).exists());
}

#[test]
fn recording_routes_refuse_bad_input_and_follow_the_play_rules() {
    let dir = fresh_dir("rec-bad");
    // A file that is a symbolic link to a file outside the directory, named
    // like a segment: never listed, never served.
    std::fs::create_dir_all(dir.join("live/cam")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("live/cam/20200101T000000.000Z.mp4"))
        .unwrap();
    // Stray entries where apps and streams would be: passed over.
    std::fs::write(dir.join("stray"), b"x").unwrap();
    std::fs::write(dir.join("live/not-a-dir"), b"x").unwrap();
    let node = recording_node(
        "rec-bad",
        &dir,
        "[auth]\ntoken_secret = \"a-secret-of-sixteen-bytes\"\n[auth.apps.paid]\nplay = \"token\"\n[record.apps.paid]\nrecord = \"all\"",
    );
    let media = node.media.unwrap();
    let publisher = publish(&node.url("cam"), 30);
    let paid = publish(&format!("rtmp://{}/paid/cam", node.addr), 30);
    let files = wait_listed(&node, "live/cam", "a fragment", |f| {
        f.iter().any(|s| s["bytes"].as_u64().unwrap_or(0) > 20_000)
    });
    assert!(files
        .iter()
        .all(|f| f["file"] != "20200101T000000.000Z.mp4"));
    let start = files[0]["start"].as_str().unwrap().to_owned();
    let status = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        raw_http(media, request.as_bytes()).0
    };
    let ok = format!("/recordings/live/cam.mp4?start={start}&duration=1");
    assert_eq!(status(&ok), "HTTP/1.1 200 OK");
    for (path, want) in [
        ("/recordings/live/cam.mp4", "400"),
        ("/recordings/live/cam.mp4?start=yesterday", "400"),
        ("/recordings/live/cam.mp4?start=2026-02-30T00:00:00Z", "400"),
        (
            &format!("/recordings/live/cam.mp4?start={start}&duration=-1"),
            "400",
        ),
        (
            &format!("/recordings/live/cam.mp4?start={start}&duration=NaN"),
            "400",
        ),
        (
            &format!("/recordings/live/cam.mp4?start={start}&duration=999999"),
            "400",
        ),
        (
            &format!("/recordings/live/cam.mp4?start={start}&duration=1&end={start}"),
            "400",
        ),
        (
            &format!("/recordings/live/cam.mp4?start={start}&end=2000-01-01T00:00:00Z"),
            "400",
        ),
        (
            "/recordings/live/cam.mp4?start=2000-01-01T00:00:00Z&duration=5",
            "404",
        ),
        (
            "/recordings/live/none.mp4?start=2000-01-01T00:00:00Z&duration=5",
            "404",
        ),
        ("/recordings/live/cam/20200101T000000.000Z.mp4", "404"),
        ("/recordings/live/cam/20990101T000000.000Z.mp4", "404"),
        ("/recordings/live/../../etc/passwd", "404"),
        (
            "/recordings/live/../../etc/passwd.mp4?start=2026-01-01T00:00:00Z",
            "400",
        ),
        (
            "/recordings/live/%2e%2e/cam/index.m3u8?start=2026-01-01T00:00:00Z",
            "400",
        ),
        (
            "/recordings/..%2F..%2Fetc/cam.mp4?start=2026-01-01T00:00:00Z",
            "400",
        ),
        (
            "/recordings/live/cam%252F/index.m3u8?start=2026-01-01T00:00:00Z",
            "400",
        ),
        ("/recordings/live/cam/passwd", "404"),
        // A 24-byte name with a multi-byte character where the 'T' goes.
        ("/recordings/live/cam/1234567%C3%A90123456789Z.mp4", "400"),
        ("/recordings/live/cam/20261204%C3%A935900.123Z.mp4", "400"),
        ("/recordings/live", "404"),
    ] {
        let got = status(path);
        assert!(
            got.starts_with(&format!("HTTP/1.1 {want}")),
            "{path}: {got}"
        );
    }
    // A byte range past the end is refused as such.
    let name = files[0]["file"].as_str().unwrap();
    let answer = raw_http(
        media,
        format!("GET /recordings/live/cam/{name} HTTP/1.1\r\nHost: x\r\nRange: bytes=999999999-\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(answer.0.starts_with("HTTP/1.1 416"), "{answer:?}");

    // A token app's recordings need its token, as its live streams do.
    let paid_files = wait_listed(&node, "paid/cam", "a fragment", |f| {
        f.iter().any(|s| s["bytes"].as_u64().unwrap_or(0) > 20_000)
    });
    let pstart = paid_files[0]["start"].as_str().unwrap().to_owned();
    let path = format!("/recordings/paid/cam.mp4?start={pstart}&duration=1");
    assert!(status(&path).starts_with("HTTP/1.1 403"));
    // The node is still up after all of that.
    assert_eq!(status(&ok), "HTTP/1.1 200 OK");
    let (_, body) = get(node.http, "/api/play?stream=paid/cam");
    let query = json(&body)["query"].as_str().unwrap().to_owned();
    assert_eq!(status(&format!("{path}&{query}")), "HTTP/1.1 200 OK");
    let m3u8 = format!("/recordings/paid/cam/index.m3u8?start={pstart}&duration=60&{query}");
    let (st, playlist) = get(media, &m3u8);
    assert_eq!(st, "HTTP/1.1 200 OK");
    // The playlist's URIs carry the token, not the range.
    assert!(playlist.contains(&format!(".mp4?{query}\"")), "{playlist}");
    assert!(
        !playlist.contains("start=") && !playlist.contains("duration="),
        "{playlist}"
    );

    // The API: JSON only, known streams only, start and stop.
    let post = |path: &str, ct: &str, body: &str| send(node.http, "POST", path, ct, body);
    let (s, _) = post("/api/streams/live/cam/recording", "text/plain", "");
    assert_eq!(s, "HTTP/1.1 415 Unsupported Media Type");
    let (s, _) = post(
        "/api/streams/live/cam/recording",
        "application/json",
        "{\"x\":1}",
    );
    assert_eq!(s, "HTTP/1.1 400 Bad Request");
    let (s, _) = post(
        "/api/streams/live/nobody/recording",
        "application/json",
        "{}",
    );
    assert_eq!(s, "HTTP/1.1 404 Not Found");
    let (s, _) = post("/api/streams/live/../x/recording", "application/json", "{}");
    assert_eq!(s, "HTTP/1.1 400 Bad Request");
    let (s, body) = post("/api/streams/live/cam/recording", "application/json", "{}");
    assert_eq!(s, "HTTP/1.1 200 OK", "already recording: {body}");
    let (s, _) = send(
        node.http,
        "DELETE",
        "/api/streams/live/cam/recording",
        "application/json",
        "",
    );
    assert_eq!(s, "HTTP/1.1 200 OK");
    wait_listed(&node, "live/cam", "the file closed", |f| {
        f.iter().all(|s| s["open"] == false)
    });
    assert_eq!(state(&node, "live/cam")["state"], "stopped");
    let (s, _) = send(
        node.http,
        "DELETE",
        "/api/streams/live/cam/recording",
        "application/json",
        "",
    );
    assert_eq!(s, "HTTP/1.1 404 Not Found");
    let (s, _) = post("/api/streams/live/cam/recording", "application/json", "");
    assert_eq!(s, "HTTP/1.1 201 Created");
    wait_listed(&node, "live/cam", "a new file", |f| {
        f.iter().any(|s| s["open"] == true)
    });
    drop(publisher);
    drop(paid);
}

/// Two cluster nodes `a` and `b` on one nats-server, each recording the
/// `live` app into its own fresh directory (2 s files), with `extra` config
/// (`[record]` keys first, then other sections).
struct RecordingPair {
    a: Node,
    b: Node,
    da: PathBuf,
    db: PathBuf,
    /// Bind it (`_nats`, first) where the pair is taken apart: the server
    /// lives as long as the test, and goes after the nodes.
    _nats: NatsServer,
}

fn recording_pair(name: &str, record_extra: &str, extra: &str) -> RecordingPair {
    let nats = NatsServer::start(name);
    let (da, db) = (
        fresh_dir(&format!("{name}-a")),
        fresh_dir(&format!("{name}-b")),
    );
    let node = |id: &str, dir: &Path| {
        let config = write_config(
            &format!("{name}-{id}.toml"),
            &format!(
                "[record]\npath = \"{}\"\nsegment_secs = 2\n{record_extra}\n[record.apps.live]\nrecord = \"all\"\n{extra}\n",
                dir.display()
            ),
        );
        let args = [
            "--config",
            config.to_str().unwrap(),
            "--media-listen",
            "127.0.0.1:0",
        ];
        cluster_node(&nats, id, 1, &args)
    };
    let (a, b) = (node("a", &da), node("b", &db));
    RecordingPair {
        a,
        b,
        da,
        db,
        _nats: nats,
    }
}

#[test]
fn in_a_cluster_only_the_publishing_node_records_and_every_node_lists_and_serves_it() {
    let RecordingPair {
        _nats, a, b, db, ..
    } = recording_pair("rec-cluster", "", "");
    let publisher = publish(&a.url("cam"), 8);
    // B plays it (a relay through NATS), and records nothing of it.
    wait_live(&b.url("cam"));
    // Rewound from B while A records it: A's open file is in no index yet,
    // B asks the owner, and the playlist up to now is an EVENT one.
    let ago = tributary::container::record::format_rfc3339(tributary::cluster::unix_ms() - 300_000);
    let live_path = format!("/recordings/live/cam/index.m3u8?start={ago}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get(b.media.unwrap(), &live_path);
        if status == "HTTP/1.1 200 OK" && body.contains("#EXTINF") {
            assert!(body.contains("#EXT-X-PLAYLIST-TYPE:EVENT"), "{body}");
            assert!(!body.contains("ENDLIST"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live playlist from B: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let played = temp_file("rec-cluster-played.flv");
    let player = ffmpeg_player(&b.url("cam"), &played, None);
    publisher.wait(Duration::from_secs(30)).unwrap();
    let _ = player.wait(Duration::from_secs(20));
    assert!(video_frames(&played) > 0, "B played nothing");
    let on_a = wait_listed(&a, "live/cam", "A's files closed", |f| {
        f.len() >= 2 && f.iter().all(|s| s["open"] == false)
    });
    assert!(mp4s(&db.join("live/cam")).is_empty(), "B recorded too");
    // B lists A's files from the cluster's index, each naming node a.
    let on_b = wait_listed(&b, "live/cam", "A's files listed on B", |f| {
        f.len() == on_a.len()
    });
    for (x, y) in on_a.iter().zip(&on_b) {
        assert_eq!((&x["file"], &x["start"]), (&y["file"], &y["start"]));
        assert_eq!(y["node"], "a");
    }
    // B serves A's recording, fetched through the cluster: one MP4 of the
    // whole range, and the VOD playlist with its byte ranges.
    let bm = b.media.unwrap();
    let start = on_a[0]["start"].as_str().unwrap().to_owned();
    let whole = temp_file("rec-cluster-whole.mp4");
    let path = format!("/recordings/live/cam.mp4?start={start}&duration=60");
    assert_eq!(download(bm, &path, &whole), "200");
    assert_eq!(
        video_frames(&whole),
        8 * 25,
        "every frame, from node a through b"
    );
    assert!(
        ffprobe_errors(&whole).is_empty(),
        "{}",
        ffprobe_errors(&whole)
    );
    let through_hls = temp_file("rec-cluster-hls.mp4");
    read_through_hls(
        &format!("http://{bm}/recordings/live/cam/index.m3u8?start={start}"),
        &through_hls,
    );
    assert_eq!(video_frames(&through_hls), 8 * 25);
    // The playlist B relays names A's files with the viewer's query, and
    // never A's internal credential.
    let (st, playlist) = get(
        bm,
        &format!("/recordings/live/cam/index.m3u8?start={start}&token=viewer"),
    );
    assert_eq!(st, "HTTP/1.1 200 OK", "{playlist}");
    assert!(playlist.contains(".mp4?token=viewer"), "{playlist}");
    // The recording has stopped: a VOD playlist, with its end.
    assert!(playlist.ends_with("#EXT-X-ENDLIST\n"), "{playlist}");
    assert!(!playlist.contains("tributary_internal"), "{playlist}");
    // A stream nobody recorded: 404 from B too.
    let path = format!("/recordings/live/none.mp4?start={start}&duration=60");
    assert_eq!(download(bm, &path, &temp_file("rec-cluster-none")), "404");
}

/// `record.store = "nats"`: every finished file is copied to the NATS
/// object store, and after its node is killed (its disk gone too) another
/// node still serves the recording: the range MP4 and the VOD playlist,
/// every frame.
#[test]
fn with_the_nats_store_a_recording_outlives_the_node_that_made_it() {
    let RecordingPair {
        _nats, a, b, da, ..
    } = recording_pair("rec-store", "store = \"nats\"", "");
    let seconds = 6;
    publish(&a.url("kept"), seconds)
        .wait(Duration::from_secs(30))
        .unwrap();
    let on_a = wait_listed(&a, "live/kept", "A's files closed", |f| {
        f.len() >= 2 && f.iter().all(|s| s["open"] == false)
    });
    // Every file copied to the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_sum(&a, "tributary_record_store_uploads_total", "") < on_a.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "not every file reached the store:\n{}",
            a.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric_sum(&a, "tributary_record_store_upload_bytes_total", "") > 0);
    // A is killed, and its files are gone with its disk.
    drop(a);
    std::fs::remove_dir_all(&da).unwrap();
    let bm = b.media.unwrap();
    let start = on_a[0]["start"].as_str().unwrap().to_owned();
    let whole = temp_file("rec-store-whole.mp4");
    let path = format!("/recordings/live/kept.mp4?start={start}&duration=60");
    assert_eq!(
        download(bm, &path, &whole),
        "200",
        "{}",
        b.log.lock().unwrap()
    );
    assert_eq!(video_frames(&whole), seconds as usize * 25, "every frame");
    assert!(
        ffprobe_errors(&whole).is_empty(),
        "{}",
        ffprobe_errors(&whole)
    );
    let through_hls = temp_file("rec-store-hls.mp4");
    read_through_hls(
        &format!("http://{bm}/recordings/live/kept/index.m3u8?start={start}"),
        &through_hls,
    );
    assert_eq!(video_frames(&through_hls), seconds as usize * 25);
    assert!(metric_sum(&b, "tributary_record_store_downloads_total", "") >= on_a.len() as u64);
    // B's cache is not B's recordings: its own listing names node a only.
    for f in listed(&b, "live/kept") {
        assert_eq!(f["node"], "a", "{f}");
    }
    // A range with nothing in it is still a 404.
    let path = format!("/recordings/live/none.mp4?start={start}&duration=60");
    assert_eq!(download(bm, &path, &temp_file("rec-store-none")), "404");
}

/// A takeover moves a recorded stream to another node: the new owner goes
/// on recording in its own files, and either node's VOD playlist spans
/// both, a discontinuity where the stream moved and each file's
/// wall-clock start named (the gap shows); ffprobe reads through it every
/// frame both nodes wrote.
#[test]
fn after_a_takeover_the_new_owner_records_on_and_the_playlist_spans_both_nodes() {
    let RecordingPair {
        _nats,
        a,
        b,
        da,
        db,
        ..
    } = recording_pair(
        "rec-move",
        "",
        "[streams]\nduplicate_publish = \"takeover\"\n[cluster]\nregistry_ttl_ms = 3000",
    );
    let old = publish(&a.url("moved"), 30);
    wait_listed(&a, "live/moved", "A recording", |f| f.len() >= 2);
    // The encoder comes back on B: B takes the stream over, A's publisher
    // is fenced.
    let seconds = 4;
    let new = publish(&b.url("moved"), seconds);
    assert!(
        old.wait(Duration::from_secs(15)).is_err(),
        "the fenced publisher kept publishing"
    );
    new.wait(Duration::from_secs(30)).unwrap();
    let closed = |f: &[serde_json::Value], node: &str| {
        let mine: Vec<_> = f.iter().filter(|s| s["node"] == node).collect();
        !mine.is_empty() && mine.iter().all(|s| s["open"] == false)
    };
    let files = wait_listed(&b, "live/moved", "both nodes' files closed", |f| {
        closed(f, "a") && closed(f, "b")
    });
    // Each node recorded only while it owned the stream.
    let frames = |dir: &Path| -> usize {
        mp4s(&dir.join("live/moved"))
            .iter()
            .map(|f| video_frames(f))
            .sum()
    };
    let (on_a, on_b) = (frames(&da), frames(&db));
    assert!(on_a >= 50, "A recorded {on_a} frames");
    assert_eq!(on_b, seconds as usize * 25, "B's part, every frame");
    let start = files[0]["start"].as_str().unwrap().to_owned();
    for node in [&a, &b] {
        let m = node.media.unwrap();
        let url = format!("/recordings/live/moved/index.m3u8?start={start}&token=v");
        let (st, playlist) = get(m, &url);
        assert_eq!(st, "HTTP/1.1 200 OK", "{playlist}");
        assert_eq!(
            playlist.matches("#EXT-X-DISCONTINUITY").count(),
            1,
            "{playlist}"
        );
        for f in &files {
            let name = f["file"].as_str().unwrap();
            assert!(
                playlist.contains(&format!("\n{name}?token=v\n")),
                "{name} missing:\n{playlist}"
            );
        }
        // Each file's wall-clock start: A's run, then B's after the cut.
        let dates: Vec<&str> = playlist
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
            .collect();
        assert_eq!(dates.len(), files.len(), "{playlist}");
        let (before, after) = playlist.split_once("#EXT-X-DISCONTINUITY").unwrap();
        for f in &files {
            let part = if f["node"] == "a" { before } else { after };
            assert!(
                part.contains(f["file"].as_str().unwrap()),
                "{f} on the wrong side:\n{playlist}"
            );
        }
        assert!(!playlist.contains("tributary_internal"), "{playlist}");
        // Every frame both nodes wrote, read through the playlist.
        let through = video_packets(Path::new(&format!("http://{m}{url}")));
        assert_eq!(through.len(), on_a + on_b, "through the playlist of {m}");
        assert!(through[0].1, "a keyframe first");
    }
}
