//! Enhanced RTMP end to end with a current ffmpeg (the static ffmpeg 9 that
//! PyPI's imageio-ffmpeg ships; scripts/test installs it and names it in
//! TRIBUTARY_FFMPEG9): HEVC+AAC, AV1+Opus and H.264 with two audio tracks
//! published to a two-shard node, each played by players that join
//! mid-stream, and judged by ffprobe on what they recorded: codecs, track
//! count, frames, keyframe first. The single-audio-track streams are also
//! played over HTTP-FLV and LL-HLS from the node's media listener; and
//! HEVC+AAC pushed to another Tributary arrives as HEVC.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ffmpeg_player_with, get, temp_file, Node, Proc};

fn ffmpeg9() -> PathBuf {
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
fn publish(url: &str, seconds: u32, video: &[&str], audio: &[&str], audio_tracks: usize) -> Proc {
    let mut cmd = Command::new(ffmpeg9());
    cmd.args(common::LIVE_LAVFI_INPUT)
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

/// Polls the admin API until `key` is live on the node.
fn wait_published(node: &Node, key: &str) {
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

/// An ffmpeg 9 player recording `seconds` of every video and audio track.
fn play(url: &str, file: &Path, seconds: u32) -> Proc {
    let output = ["-map", "0:v", "-map", "0:a"];
    ffmpeg_player_with(&ffmpeg9(), url, file, Some(seconds), &output)
}

struct Track {
    kind: String,
    codec: String,
    frames: usize,
}

/// ffprobe's count of every stream's frames in a recording.
fn tracks(file: &Path) -> Vec<Track> {
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
fn first_video_is_key(file: &Path) -> bool {
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

fn case(key: &str, video: &[&str], audio: &[&str], audio_tracks: usize, codecs: (&str, &str)) {
    let node = Node::start_with(2, &["--media-listen", "127.0.0.1:0"]);
    let url = node.url(key);
    let media = node.media.unwrap();
    let publisher = publish(&url, 9, video, audio, audio_tracks);
    wait_published(&node, key);
    // Join mid-stream: the players start once the stream has run a while,
    // so what they get first comes from the GOP cache.
    std::thread::sleep(Duration::from_millis(1500));
    // Three players: with two shards, most of them land on the shard that
    // does not hold the publisher and take the stream over the mesh.
    let mut urls = vec![url.clone(); 3];
    if audio_tracks == 1 {
        // HTTP media carries one audio track (LL-HLS: the first).
        urls.push(format!("http://{media}/live/{key}.flv"));
        urls.push(format!("http://{media}/live/{key}/index.m3u8"));
    }
    let files: Vec<PathBuf> = (0..urls.len())
        .map(|i| temp_file(&format!("{key}-{i}.mkv")))
        .collect();
    let players: Vec<Proc> = files
        .iter()
        .zip(&urls)
        .map(|(f, u)| play(u, f, 3))
        .collect();
    for p in players {
        p.wait(Duration::from_secs(30)).expect("player");
    }
    drop(publisher);
    for f in &files {
        let t = tracks(f);
        let video: Vec<&Track> = t.iter().filter(|t| t.kind == "video").collect();
        let audio: Vec<&Track> = t.iter().filter(|t| t.kind == "audio").collect();
        assert_eq!(video.len(), 1, "{}: video tracks", f.display());
        assert_eq!(video[0].codec, codecs.0);
        // 3 s at 25 fps; the first frames wait for a keyframe at most.
        assert!(
            video[0].frames >= 60,
            "{}: {} video frames",
            f.display(),
            video[0].frames
        );
        assert_eq!(audio.len(), audio_tracks, "{}: audio tracks", f.display());
        for a in &audio {
            assert_eq!(a.codec, codecs.1);
            assert!(
                a.frames >= 100,
                "{}: {} audio frames",
                f.display(),
                a.frames
            );
        }
        assert!(
            first_video_is_key(f),
            "{}: first video frame is not a keyframe",
            f.display()
        );
    }
}

#[test]
fn hevc_and_aac_from_ffmpeg_9_play_on_both_shards() {
    case(
        "hevc",
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=error",
        ],
        &["-c:a", "aac", "-b:a", "64k"],
        1,
        ("hevc", "aac"),
    );
}

#[test]
fn av1_and_opus_from_ffmpeg_9_play_on_both_shards() {
    case(
        "av1",
        &[
            "-c:v",
            "libsvtav1",
            "-preset",
            "12",
            "-svtav1-params",
            "lp=1",
        ],
        &["-c:a", "libopus", "-b:a", "64k"],
        1,
        ("av1", "opus"),
    );
}

#[test]
fn h264_with_two_audio_tracks_keeps_both_for_late_players() {
    case(
        "twotracks",
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
        ("h264", "aac"),
    );
}

/// A push carries Enhanced RTMP as it came: HEVC + AAC from ffmpeg 9,
/// pushed to another Tributary, is HEVC + AAC there.
#[test]
fn hevc_and_aac_pushed_to_another_tributary_arrive_as_hevc() {
    let target = Node::start(1);
    let config = temp_file("ertmp-push.toml");
    std::fs::write(
        &config,
        format!(
            "[push.apps.live]\ntargets = [\"rtmp://{}/live/{{name}}\"]\n",
            target.addr
        ),
    )
    .unwrap();
    let source = Node::start_with(1, &["--config", config.to_str().unwrap()]);
    let video = [
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error",
    ];
    let publisher = publish(&source.url("hevcpush"), 9, &video, &["-c:a", "aac"], 1);
    wait_published(&target, "hevcpush");
    let file = temp_file("hevcpush.mkv");
    play(&target.url("hevcpush"), &file, 3)
        .wait(Duration::from_secs(30))
        .expect("player");
    drop(publisher);
    let t = tracks(&file);
    let video: Vec<&Track> = t.iter().filter(|t| t.kind == "video").collect();
    let audio: Vec<&Track> = t.iter().filter(|t| t.kind == "audio").collect();
    assert_eq!(video.len(), 1, "video tracks");
    assert_eq!(video[0].codec, "hevc");
    assert!(video[0].frames >= 60, "{} video frames", video[0].frames);
    assert_eq!(audio.len(), 1, "audio tracks");
    assert_eq!(audio[0].codec, "aac");
    assert!(
        first_video_is_key(&file),
        "first video frame is not a keyframe"
    );
}
