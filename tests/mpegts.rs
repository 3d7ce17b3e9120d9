//! MPEG-TS in (what SRT publishers send), judged by ffprobe: ffmpeg muxes
//! H.264 and AAC into TS; the node's reader turns it into the stream's
//! messages; those written as FLV must play whole (codecs, frame count,
//! a keyframe first, timestamps in order, the duration). HEVC becomes
//! Enhanced RTMP, which ffmpeg 9 decodes. A TS whose PMT is broken gives
//! nothing, and a stream type not served is named. And back: the node's
//! TS writer (what SRT players get) turns those messages into TS that
//! ffprobe and ffmpeg read whole, for each codec.

use std::path::Path;
use std::process::Command;

use bytes::BytesMut;
use tributary::container::ts::TsIn;
use tributary::container::ts_out::TsOut;
use tributary::protocol::flv::{write_header, write_tag, FlvHeader};
use tributary::protocol::media::{classify_video, PacketKind, VideoCodec};
use tributary::protocol::RawMessage;

mod common;
use common::{check_recording, duration, ffmpeg9, probe, temp_file};

/// ffmpeg's TS of `seconds` of test video and a sine, with `codec`.
fn make_ts(name: &str, seconds: u32, video: &[&str]) -> Vec<u8> {
    let file = temp_file(name);
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size=320x240:rate=25:duration={seconds}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args(video)
        .args(["-g", "25", "-c:a", "aac", "-b:a", "64k", "-f", "mpegts"])
        .arg(&file)
        .output()
        .expect("ffmpeg is required (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&file).unwrap()
}

/// Feeds `ts` in SRT-sized messages (seven packets each).
fn demux(ts: &[u8]) -> (TsIn, Vec<RawMessage>) {
    let mut t = TsIn::new();
    let mut out = Vec::new();
    for message in ts.chunks(188 * 7) {
        t.push(message, &mut out);
    }
    (t, out)
}

/// How many frames of the `map`ped stream ffmpeg 9 decodes from `file`
/// (Enhanced RTMP in FLV, which Debian's 5.1 does not read).
fn decoded_by_ffmpeg9(file: &Path, map: &str) -> usize {
    let out = Command::new(ffmpeg9())
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(file)
        .args(["-map", map, "-f", "framemd5", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count()
}

/// The node's TS of `messages`, as an SRT player would get it.
fn write_ts(path: &Path, messages: &[RawMessage]) {
    let mut ts = TsOut::new();
    let mut out = BytesMut::new();
    for m in messages {
        ts.push(m, &mut out);
    }
    assert_eq!(out.len() % 188, 0);
    std::fs::write(path, &out).unwrap();
}

fn write_flv(path: &Path, messages: &[RawMessage]) {
    let mut out = BytesMut::new();
    write_header(
        &mut out,
        FlvHeader {
            has_audio: true,
            has_video: true,
        },
    );
    for m in messages {
        write_tag(&mut out, m.type_id.0, m.timestamp, &m.payload);
    }
    std::fs::write(path, &out).unwrap();
}

#[test]
fn h264_and_aac_in_ts_become_messages_that_play_whole() {
    for b_frames in ["0", "2"] {
        let ts = make_ts(
            &format!("h264-bf{b_frames}.ts"),
            6,
            &["-c:v", "libx264", "-preset", "ultrafast", "-bf", b_frames],
        );
        let (t, messages) = demux(&ts);
        assert_eq!(t.dropped(), 0);
        assert!(t.skipped().is_empty(), "{:?}", t.skipped());
        // Cut anywhere (srt-live-transmit reads its input in chunks that
        // need not end at a packet): the same messages.
        for size in [1, 1000, 1317] {
            let mut cut = TsIn::new();
            let mut again = Vec::new();
            for piece in ts.chunks(size) {
                cut.push(piece, &mut again);
            }
            assert_eq!(again.len(), messages.len(), "pieces of {size}");
            assert!(again
                .iter()
                .zip(&messages)
                .all(|(a, b)| a.payload == b.payload && a.timestamp == b.timestamp));
        }
        let flv = temp_file(&format!("from-ts-bf{b_frames}.flv"));
        write_flv(&flv, &messages);
        // And back to TS, as an SRT player gets it.
        let back = temp_file(&format!("back-bf{b_frames}.ts"));
        write_ts(&back, &messages);
        let p = probe(&back);
        assert!(p.codecs.iter().any(|c| c == "h264") && p.codecs.iter().any(|c| c == "aac"));
        assert!(
            p.video_frames >= 148,
            "{} frames back in TS",
            p.video_frames
        );
        assert!(p.first_video_key);
        let seconds = duration(&back);
        assert!((5.4..=6.2).contains(&seconds), "{seconds} s back in TS");
        // Read again by the node: its PES are bounded, so each is taken as
        // soon as it is in, and every frame comes back (none waits for a
        // next one that never comes).
        let (again, round) = demux(&std::fs::read(&back).unwrap());
        assert_eq!(again.dropped(), 0);
        let frames = |v: &[RawMessage], t: u8| v.iter().filter(|m| m.type_id.0 == t).count();
        assert_eq!(frames(&round, 9), frames(&messages, 9), "video round trip");
        assert_eq!(frames(&round, 8), frames(&messages, 8), "audio round trip");
        // Each stream leaves one PES late: the last video frame and the
        // last PES of audio are still held when the input ends.
        if b_frames == "0" {
            check_recording(&flv, 148);
        } else {
            // With B-frames presentation order differs from decode order;
            // ffprobe must still find every frame, a keyframe first.
            let p = probe(&flv);
            assert!(p.codecs.iter().any(|c| c == "h264") && p.codecs.iter().any(|c| c == "aac"));
            assert!(p.video_frames >= 148, "{} frames", p.video_frames);
            assert!(p.first_video_key);
            assert!(
                messages
                    .iter()
                    .any(|m| m.type_id.0 == 9 && m.payload[2..5] != [0, 0, 0]),
                "no composition time"
            );
        }
        let seconds = duration(&flv);
        assert!((5.5..=6.2).contains(&seconds), "{seconds} s");
        // Sequence headers first, then media whose timestamps never go
        // back, per stream (decode order).
        assert_eq!(messages[0].payload[..2], [0x17, 0]);
        // Both tracks' sequence headers before any frame, as an RTMP
        // publish starts (TS carries no header up front; the audio's comes
        // with its first frame, which may follow the first picture).
        let aac_header = messages.iter().position(|m| m.payload[..2] == [0xAF, 0]);
        let first_frame = messages.iter().position(|m| m.payload[1] == 1);
        assert!(aac_header < first_frame, "{aac_header:?} {first_frame:?}");
        let mut last = [0u32; 2];
        for m in &messages {
            let i = usize::from(m.type_id.0 == 9);
            assert!(m.timestamp >= last[i], "{} after {}", m.timestamp, last[i]);
            last[i] = m.timestamp;
        }
    }
}

#[test]
fn a_broken_pmt_gives_nothing_and_an_unserved_codec_is_named() {
    let ts = make_ts("pmt.ts", 2, &["-c:v", "libx264", "-preset", "ultrafast"]);
    // ffmpeg puts the PMT on PID 0x1000; flip a byte of every PMT
    // section, so its CRC fails.
    let mut broken = ts.clone();
    for packet in broken.chunks_mut(188) {
        let pid = (u16::from(packet[1] & 0x1f) << 8) | u16::from(packet[2]);
        if pid == 0x1000 {
            packet[12] ^= 0xFF;
        }
    }
    let (_, messages) = demux(&broken);
    assert!(
        messages.is_empty(),
        "{} messages from a TS with no valid PMT",
        messages.len()
    );

    // MPEG-2 video is not served: named, and the AAC beside it still
    // comes through.
    let mpeg2 = make_ts("mpeg2.ts", 2, &["-c:v", "mpeg2video"]);
    let (t, messages) = demux(&mpeg2);
    assert_eq!(t.skipped(), &[0x02], "MPEG-2 video is named as not served");
    assert!(messages.iter().any(|m| m.type_id.0 == 8));
    assert!(messages.iter().all(|m| m.type_id.0 == 8));
}

#[test]
fn hevc_in_ts_becomes_enhanced_rtmp_that_plays_whole() {
    let ts = make_ts(
        "hevc.ts",
        4,
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=error:bframes=0",
        ],
    );
    let (t, messages) = demux(&ts);
    assert!(t.skipped().is_empty(), "{:?}", t.skipped());
    assert_eq!(
        &messages[0].payload[..5],
        b"\x90hvc1",
        "the sequence start first"
    );
    // The node reads what it made as an HEVC sequence start, then frames
    // with a keyframe first.
    let info = |m: &RawMessage| classify_video(&m.payload).unwrap();
    let first = info(&messages[0]);
    assert_eq!(
        (first.codec, first.kind),
        (VideoCodec::Hevc, PacketKind::SequenceHeader)
    );
    let frame = messages
        .iter()
        .find(|m| m.type_id.0 == 9 && info(m).kind == PacketKind::Frame);
    assert!(frame.is_some_and(|m| info(m).keyframe));
    let flv = temp_file("hevc-from-ts.flv");
    write_flv(&flv, &messages);
    // Enhanced RTMP in FLV: ffmpeg 9 reads it (Debian's 5.1 does not).
    let frames = decoded_by_ffmpeg9(&flv, "0:v");
    assert!(frames >= 98, "{frames} HEVC frames decoded");
    let back = temp_file("hevc-back.ts");
    write_ts(&back, &messages);
    let frames = decoded_by_ffmpeg9(&back, "0:v");
    assert!(frames >= 98, "{frames} HEVC frames decoded back from TS");
}

#[test]
fn opus_in_ts_becomes_enhanced_rtmp_that_decodes() {
    // Debian's ffmpeg muxes Opus into TS (registration descriptor "Opus");
    // ffmpeg 9 decodes the Enhanced RTMP it becomes.
    let file = temp_file("opus.ts");
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=320x240:rate=25:duration=4")
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=4",
        ])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25"])
        .args(["-c:a", "libopus", "-ac", "2", "-b:a", "64k", "-f", "mpegts"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (t, messages) = demux(&std::fs::read(&file).unwrap());
    assert!(t.skipped().is_empty(), "{:?}", t.skipped());
    let audio: Vec<&RawMessage> = messages.iter().filter(|m| m.type_id.0 == 8).collect();
    assert_eq!(&audio[0].payload[..13], b"\x90OpusOpusHead");
    assert_eq!(audio[0].payload[14], 2, "stereo, from the TOC byte");
    let flv = temp_file("opus-from-ts.flv");
    write_flv(&flv, &messages);
    let frames = decoded_by_ffmpeg9(&flv, "0:a");
    // 20 ms packets over 4 s, less the PES still held at the end.
    assert!(
        (170..=201).contains(&frames),
        "{frames} Opus frames decoded"
    );
    let back = temp_file("opus-back.ts");
    write_ts(&back, &messages);
    let again = decoded_by_ffmpeg9(&back, "0:a");
    assert!(
        (170..=201).contains(&again),
        "{again} Opus frames decoded back from TS"
    );
    // Their timestamps advance 20 ms a packet.
    let coded: Vec<u32> = audio.iter().skip(1).map(|m| m.timestamp).collect();
    assert!(
        coded.windows(2).all(|w| w[1] >= w[0] && w[1] - w[0] <= 21),
        "{coded:?}"
    );
}
