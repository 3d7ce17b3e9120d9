//! Real clients for the end-to-end tests: child processes with deadlines
//! (killed by their own PID if a test ends first), ffmpeg publishing, and
//! ffprobe's verdict on what a player recorded.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A child process that is killed (by its PID, through `Child`) if the
/// test ends first.
pub struct Proc(pub Child, pub &'static str);

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} is required (scripts/test installs it): {e}"));
        Proc(child, name)
    }

    /// Waits for exit with a deadline; returns stderr on failure.
    pub fn wait(mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.0.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("{} failed ({status}): {}", self.1, tail(&err)))
                };
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not finish in {limit:?}", self.1));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// ffmpeg publishing `seconds` of H.264 + AAC at real-time pace, a keyframe
/// every second.
pub fn publish(url: &str, seconds: u32) -> Proc {
    Proc::spawn(
        "ffmpeg",
        Command::new("ffmpeg").args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size=320x240:rate=25:duration={seconds}"),
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:duration={seconds}"),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "flv",
            url,
        ]),
    )
}

/// Polls until the stream answers a play (an ffprobe that finds a video
/// stream), with a deadline.
pub fn wait_live(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-rw_timeout",
                "3000000",
                "-show_entries",
                "stream=codec_name",
                "-of",
                "csv=p=0",
                url,
            ])
            .output()
            .expect("ffprobe is required");
        if String::from_utf8_lossy(&out.stdout).contains("h264") {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never went live");
}

pub struct Probe {
    pub codecs: Vec<String>,
    pub video_frames: usize,
    pub first_video_key: bool,
    pub monotonic: bool,
}

/// ffprobe's view of a recorded file: codecs, video frame count, whether
/// the first video frame is a keyframe, whether timestamps never go back.
pub fn probe(file: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .unwrap();
    let codecs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts,flags",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .unwrap();
    let packets: Vec<(i64, bool)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(',');
            let pts = parts.next()?.parse().ok()?;
            Some((pts, parts.next()?.starts_with('K')))
        })
        .collect();
    // Decode order, so compare dts-like order loosely: pts may reorder
    // with B-frames, but ultrafast/zerolatency has none.
    Probe {
        codecs,
        video_frames: packets.len(),
        first_video_key: packets.first().is_some_and(|p| p.1),
        monotonic: packets.windows(2).all(|w| w[0].0 <= w[1].0),
    }
}

pub fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tributary-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn check_recording(file: &Path, min_frames: usize) {
    let p = probe(file);
    assert!(
        p.codecs.iter().any(|c| c == "h264"),
        "codecs {:?}",
        p.codecs
    );
    assert!(p.codecs.iter().any(|c| c == "aac"), "codecs {:?}", p.codecs);
    assert!(
        p.video_frames >= min_frames,
        "{} video frames",
        p.video_frames
    );
    assert!(p.first_video_key, "first video frame is not a keyframe");
    assert!(p.monotonic, "video timestamps go backwards");
}

/// ffmpeg playing `url` into `file` (stream copy) for `seconds`, or until
/// the server ends the stream.
pub fn ffmpeg_player(url: &str, file: &Path, seconds: Option<u32>) -> Proc {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-rw_timeout",
        "5000000",
        "-i",
        url,
    ]);
    if let Some(s) = seconds {
        cmd.args(["-t", &s.to_string()]);
    }
    cmd.args(["-c", "copy"]).arg(file);
    Proc::spawn("ffmpeg", &mut cmd)
}
