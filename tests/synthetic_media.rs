//! The synthetic stream (the load tool's, the benches') is real media:
//! written to an FLV file, Debian's ffmpeg and ffmpeg 9 decode every video
//! and audio frame with no error, the first a keyframe, at the size and
//! rate it was shaped to.

mod common;

use std::path::Path;
use std::process::Command;

use bytes::BytesMut;
use tributary::protocol::flv::{write_header, write_tag, FlvHeader};
use tributary::protocol::MessageType;
use tributary::synthetic::{self, StreamShape};

fn write_flv(shape: StreamShape, duration_ms: u32, file: &Path) -> (usize, usize) {
    let mut out = BytesMut::new();
    write_header(
        &mut out,
        FlvHeader {
            has_audio: true,
            has_video: true,
        },
    );
    let (mut video, mut audio) = (0, 0);
    for (i, m) in synthetic::stream(shape, 1, duration_ms).iter().enumerate() {
        if i >= 2 {
            match m.type_id {
                MessageType::VIDEO => video += 1,
                _ => audio += 1,
            }
        }
        write_tag(&mut out, m.type_id.0, m.timestamp, &m.payload);
    }
    std::fs::write(file, &out).unwrap();
    (video, audio)
}

/// Decodes `file` with `ffmpeg`: (video frames, audio frames, stderr).
fn decode(ffmpeg: &Path, file: &Path) -> (usize, usize, String) {
    let out = Command::new(ffmpeg)
        .args(["-hide_banner", "-v", "error", "-xerror", "-i"])
        .arg(file)
        .args(["-f", "framecrc", "-"])
        .output()
        .expect("ffmpeg");
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |stream: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with(stream))
            .count()
    };
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {err}", file.display());
    (count("0,"), count("1,"), err)
}

#[test]
fn the_synthetic_stream_decodes_in_ffmpeg_5_and_9_every_frame() {
    for (name, shape) in [
        ("default", StreamShape::default()),
        (
            "low",
            StreamShape {
                video_bitrate_bps: 200_000,
                fps: 25,
                keyframe_interval_ms: 1_000,
                ..StreamShape::default()
            },
        ),
    ] {
        let file = common::temp_file(&format!("synthetic-{name}.flv"));
        let (video, audio) = write_flv(shape, 6_000, &file);
        for ffmpeg in [Path::new("ffmpeg").to_path_buf(), common::ffmpeg9()] {
            let (v, a, err) = decode(&ffmpeg, &file);
            assert!(err.is_empty(), "{name}, {}: {err}", ffmpeg.display());
            assert_eq!((v, a), (video, audio), "{name}, {}", ffmpeg.display());
        }
        // ffprobe: H.264 Constrained Baseline 1280x720 and AAC-LC stereo,
        // a keyframe every keyframe interval, the first frame one.
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-show_entries"])
            .args([
                "stream=codec_name,profile,width,height,channels",
                "-of",
                "csv=p=0",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&probe.stdout);
        assert!(
            text.contains("h264,Constrained Baseline,1280,720"),
            "{text}"
        );
        assert!(text.contains("aac,LC,2"), "{text}");
        let keys = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0"])
            .args(["-show_entries", "packet=flags", "-of", "csv=p=0"])
            .arg(&file)
            .output()
            .unwrap();
        let flags: Vec<bool> = String::from_utf8_lossy(&keys.stdout)
            .lines()
            .map(|l| l.starts_with('K'))
            .collect();
        assert!(flags[0], "{name}: a keyframe first");
        let expected = 6_000 / shape.keyframe_interval_ms as usize;
        assert_eq!(flags.iter().filter(|k| **k).count(), expected, "{name}");
    }
}
