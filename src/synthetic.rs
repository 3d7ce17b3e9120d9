//! A deterministic synthetic live stream: AVC-shaped video and AAC-shaped
//! audio messages with the sizes and cadence of a real encoder. Used by the
//! benches, the allocation test and the load generator, where the payload
//! bytes do not matter but their sizes, timing and headers do. It must never
//! be mistaken for decodable media: players cannot decode it.

use bytes::Bytes;

use crate::protocol::message::{MessageType, RawMessage};

/// Shape of the stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamShape {
    pub video_bitrate_bps: u32,
    pub fps: u32,
    pub keyframe_interval_ms: u32,
    /// Audio frame every this many ms (AAC at 44.1 kHz: ~23 ms).
    pub audio_interval_ms: u32,
    pub audio_frame_bytes: usize,
}

impl Default for StreamShape {
    /// 2.5 Mbit/s video at 30 fps with a keyframe every 2 s, 128 kbit/s-ish audio.
    fn default() -> Self {
        Self {
            video_bitrate_bps: 2_500_000,
            fps: 30,
            keyframe_interval_ms: 2_000,
            audio_interval_ms: 23,
            audio_frame_bytes: 400,
        }
    }
}

/// ffmpeg's chunk streams for audio and video.
pub const AUDIO_CSID: u32 = 4;
pub const VIDEO_CSID: u32 = 6;

/// Sequence headers (AVC decoder configuration, AAC AudioSpecificConfig),
/// then `duration_ms` of interleaved audio and video in timestamp order.
/// Keyframes are about 6× an inter frame, inter frames vary ±50%: with the
/// defaults video messages span about 5-60 KB.
pub fn stream(shape: StreamShape, stream_id: u32, duration_ms: u32) -> Vec<RawMessage> {
    let mut out = Vec::new();
    let seq_video: &[u8] = &[
        0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x1F, 0xFF, 0xE1, 0x00, 0x04, 0x67, 0x64, 0x00,
        0x1F, 0x01, 0x00, 0x04, 0x68, 0xEE, 0x3C, 0x80,
    ];
    let seq_audio: &[u8] = &[0xAF, 0x00, 0x12, 0x10];
    out.push(message(
        VIDEO_CSID,
        0,
        MessageType::VIDEO,
        stream_id,
        seq_video.to_vec(),
    ));
    out.push(message(
        AUDIO_CSID,
        0,
        MessageType::AUDIO,
        stream_id,
        seq_audio.to_vec(),
    ));

    let frame_ms = 1000.0 / f64::from(shape.fps);
    let gop_frames = (shape.keyframe_interval_ms as usize * shape.fps as usize / 1000).max(1);
    // Per GOP: one keyframe of 6 units and (gop-1) inter frames of 1 unit.
    let bytes_per_gop =
        f64::from(shape.video_bitrate_bps) / 8.0 * f64::from(shape.keyframe_interval_ms) / 1000.0;
    let unit = bytes_per_gop / (gop_frames as f64 + 5.0);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut frame = 0usize;
    let mut audio_ts = 0u32;
    loop {
        let video_ts = (frame as f64 * frame_ms) as u32;
        if video_ts >= duration_ms && audio_ts >= duration_ms {
            break;
        }
        if audio_ts <= video_ts && audio_ts < duration_ms {
            let mut payload = vec![0u8; shape.audio_frame_bytes];
            payload[0] = 0xAF;
            payload[1] = 0x01;
            fill(&mut payload[2..], &mut rng);
            out.push(message(
                AUDIO_CSID,
                audio_ts,
                MessageType::AUDIO,
                stream_id,
                payload,
            ));
            audio_ts += shape.audio_interval_ms;
            continue;
        }
        if video_ts >= duration_ms {
            audio_ts = duration_ms;
            continue;
        }
        let key = frame.is_multiple_of(gop_frames);
        rng = xorshift(rng);
        let jitter = 0.5 + (rng % 1000) as f64 / 1000.0;
        let len = if key { unit * 6.0 } else { unit * jitter }.max(16.0) as usize;
        let mut payload = vec![0u8; len];
        payload[0] = if key { 0x17 } else { 0x27 };
        payload[1] = 0x01;
        fill(&mut payload[5..], &mut rng);
        out.push(message(
            VIDEO_CSID,
            video_ts,
            MessageType::VIDEO,
            stream_id,
            payload,
        ));
        frame += 1;
    }
    out
}

fn message(
    csid: u32,
    timestamp: u32,
    type_id: MessageType,
    stream_id: u32,
    payload: Vec<u8>,
) -> RawMessage {
    RawMessage {
        csid,
        timestamp,
        type_id,
        stream_id,
        payload: Bytes::from(payload),
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn fill(buf: &mut [u8], rng: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *rng = xorshift(*rng);
        chunk.copy_from_slice(&rng.to_le_bytes()[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_the_description() {
        let msgs = stream(StreamShape::default(), 1, 10_000);
        let video: Vec<_> = msgs
            .iter()
            .skip(2)
            .filter(|m| m.type_id == MessageType::VIDEO)
            .collect();
        let audio = msgs
            .iter()
            .skip(2)
            .filter(|m| m.type_id == MessageType::AUDIO)
            .count();
        assert_eq!(video.len(), 300);
        assert!((430..=436).contains(&audio), "{audio}");
        let bytes: usize = video.iter().map(|m| m.payload.len()).sum();
        let bps = bytes as f64 * 8.0 / 10.0;
        assert!((2_200_000.0..2_800_000.0).contains(&bps), "{bps}");
        let max = video.iter().map(|m| m.payload.len()).max().unwrap();
        let min = video.iter().map(|m| m.payload.len()).min().unwrap();
        assert!(max > 40_000 && max < 70_000 && min > 3_000, "{min} {max}");
        assert_eq!(video.iter().filter(|m| m.payload[0] == 0x17).count(), 5);
        assert!(msgs.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    }
}
