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
use std::time::Duration;

use common::*;

/// An ffmpeg 9 player recording `seconds` of every video and audio track.
fn play(url: &str, file: &Path, seconds: u32) -> Proc {
    let output = ["-map", "0:v", "-map", "0:a"];
    ffmpeg_player_with(&ffmpeg9(), url, file, Some(seconds), &output)
}

fn case(key: &str, video: &[&str], audio: &[&str], audio_tracks: usize, codecs: (&str, &str)) {
    let node = Node::start_with(2, &["--media-listen", "127.0.0.1:0"]);
    let url = node.url(key);
    let media = node.media.unwrap();
    let publisher = publish9(&url, 9, video, audio, audio_tracks);
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
    let publisher = publish9(&source.url("hevcpush"), 9, &video, &["-c:a", "aac"], 1);
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
