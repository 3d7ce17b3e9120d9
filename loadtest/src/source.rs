//! What publishers send: a synthetic H.264/AAC stream (valid, decodable; from
//! `tributary::synthetic`) or a real FLV file, as a body that is looped with
//! timestamps continued. Built once and shared by every publisher: payloads
//! are `Bytes`, so a thousand publishers hold one copy.

use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use tributary::protocol::amf0::{Amf0Reader, Amf0Value};
use tributary::protocol::flv::{FlvReader, MAX_TAG_PAYLOAD, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};
use tributary::protocol::media::{classify_audio, classify_video, PacketKind};
use tributary::protocol::message::MessageType;
use tributary::synthetic::{self, StreamShape};

/// Largest FLV file loaded into memory.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// A synthetic body lasts at least this long before it loops (a whole
/// number of GOPs, so the keyframe cadence holds across loops).
const SYNTHETIC_LOOP_MS: u32 = 10_000;

/// One audio or video message of the source.
#[derive(Debug, Clone)]
pub struct SourceMessage {
    pub type_id: MessageType,
    /// Milliseconds from the start of the body.
    pub timestamp: u32,
    pub payload: Bytes,
}

/// A stream ready to publish: metadata and sequence headers once, then the
/// body again and again, each loop `loop_ms` after the one before.
#[derive(Debug, Clone)]
pub struct MediaSource {
    pub metadata: Option<Amf0Value>,
    pub sequence_headers: Vec<SourceMessage>,
    pub body: Vec<SourceMessage>,
    pub loop_ms: u32,
    /// What it is, for the report.
    pub description: String,
}

impl MediaSource {
    /// The synthetic stream: `video_bitrate_bps` of video at `fps`, a
    /// keyframe every `gop_frames`, plus AAC-shaped audio.
    pub fn synthetic(video_bitrate_bps: u32, fps: u32, gop_frames: u32) -> anyhow::Result<Self> {
        if fps == 0 || fps > 240 || gop_frames == 0 {
            bail!("--fps must be 1..=240 and --gop at least 1");
        }
        let gop_ms = (gop_frames * 1000 / fps).max(1);
        let loop_ms = gop_ms * SYNTHETIC_LOOP_MS.div_ceil(gop_ms);
        let shape = StreamShape {
            video_bitrate_bps,
            fps,
            keyframe_interval_ms: gop_ms,
            ..StreamShape::default()
        };
        let mut messages = synthetic::stream(shape, 1, loop_ms).into_iter();
        let sequence_headers = messages
            .by_ref()
            .take(2)
            .map(|m| SourceMessage {
                type_id: m.type_id,
                timestamp: 0,
                payload: m.payload,
            })
            .collect();
        let body = messages
            .map(|m| SourceMessage {
                type_id: m.type_id,
                timestamp: m.timestamp,
                payload: m.payload,
            })
            .collect();
        let metadata = Amf0Value::EcmaArray(vec![
            ("width".into(), Amf0Value::Number(1280.0)),
            ("height".into(), Amf0Value::Number(720.0)),
            ("videocodecid".into(), Amf0Value::Number(7.0)),
            ("audiocodecid".into(), Amf0Value::Number(10.0)),
            ("framerate".into(), Amf0Value::Number(f64::from(fps))),
            (
                "videodatarate".into(),
                Amf0Value::Number(f64::from(video_bitrate_bps) / 1000.0),
            ),
            (
                "encoder".into(),
                Amf0Value::String("tributary-load synthetic".into()),
            ),
        ]);
        Ok(Self {
            metadata: Some(metadata),
            sequence_headers,
            body,
            loop_ms,
            description: format!(
                "synthetic {:.2} Mbit/s video, {fps} fps, GOP {gop_frames} frames",
                f64::from(video_bitrate_bps) / 1e6
            ),
        })
    }

    /// A real FLV file, loaded whole (at most [`MAX_FILE_BYTES`]).
    pub fn from_flv(path: &Path) -> anyhow::Result<Self> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        if size > MAX_FILE_BYTES {
            bail!(
                "{}: {size} bytes, over the {MAX_FILE_BYTES} limit",
                path.display()
            );
        }
        let data = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        let mut reader = FlvReader::new(MAX_TAG_PAYLOAD);
        reader.push(&data);
        reader
            .header()
            .with_context(|| format!("{}: not FLV", path.display()))?
            .with_context(|| format!("{}: truncated header", path.display()))?;
        let mut metadata = None;
        let mut sequence_headers: Vec<SourceMessage> = Vec::new();
        let mut body = Vec::new();
        while let Some(tag) = reader
            .next_tag()
            .with_context(|| format!("{}: bad tag", path.display()))?
        {
            let header = match tag.tag_type {
                TAG_SCRIPT => {
                    if metadata.is_none() {
                        metadata = parse_on_metadata(&tag.payload);
                    }
                    continue;
                }
                TAG_VIDEO => classify_video(&tag.payload)
                    .map(|i| i.kind == PacketKind::SequenceHeader)
                    .unwrap_or(false),
                TAG_AUDIO => classify_audio(&tag.payload)
                    .map(|i| i.kind == PacketKind::SequenceHeader)
                    .unwrap_or(false),
                _ => continue,
            };
            let m = SourceMessage {
                type_id: MessageType(tag.tag_type),
                timestamp: tag.timestamp,
                payload: tag.payload,
            };
            if header && body.is_empty() {
                sequence_headers.push(SourceMessage { timestamp: 0, ..m });
            } else if !header {
                body.push(m);
            }
        }
        if body.is_empty() {
            bail!("{}: no audio or video frames", path.display());
        }
        let start = body.iter().map(|m| m.timestamp).min().unwrap_or(0);
        for m in &mut body {
            m.timestamp -= start;
        }
        let video_ts: Vec<u32> = body
            .iter()
            .filter(|m| m.type_id == MessageType::VIDEO)
            .map(|m| m.timestamp)
            .collect();
        let last = body.iter().map(|m| m.timestamp).max().unwrap_or(0);
        // The next loop starts one frame interval after the last frame.
        let step = match video_ts.as_slice() {
            [first, .., last_v] if video_ts.len() > 1 => {
                (last_v.saturating_sub(*first) / (video_ts.len() as u32 - 1)).max(1)
            }
            _ => 40,
        };
        Ok(Self {
            metadata,
            sequence_headers,
            body,
            loop_ms: last + step,
            description: format!("{} (looped every {} ms)", path.display(), last + step),
        })
    }

    /// Average bits per second of the body.
    pub fn bitrate_bps(&self) -> f64 {
        let bytes: usize = self.body.iter().map(|m| m.payload.len()).sum();
        bytes as f64 * 8.0 * 1000.0 / f64::from(self.loop_ms.max(1))
    }
}

/// `onMetaData {..}` (or `@setDataFrame onMetaData {..}`) → its properties.
fn parse_on_metadata(payload: &[u8]) -> Option<Amf0Value> {
    let mut reader = Amf0Reader::new(payload, 16);
    let mut name = reader.read_value().ok()?;
    if name.as_str() == Some("@setDataFrame") {
        name = reader.read_value().ok()?;
    }
    if name.as_str() != Some("onMetaData") {
        return None;
    }
    reader.read_value().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_body_loops_on_a_gop_boundary() {
        let s = MediaSource::synthetic(2_500_000, 30, 60).unwrap();
        assert_eq!(s.loop_ms, 10_000);
        assert_eq!(s.sequence_headers.len(), 2);
        let first_video = s
            .body
            .iter()
            .find(|m| m.type_id == MessageType::VIDEO)
            .unwrap();
        assert_eq!(first_video.payload[0], 0x17);
        let bps = s.bitrate_bps();
        assert!((2_400_000.0..2_900_000.0).contains(&bps), "{bps}");
    }
}
