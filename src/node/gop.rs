//! The per-stream cache a new player starts from: metadata, a sequence
//! header per track (audio and video; Enhanced RTMP multitrack streams have
//! several), and the last GOP (bounded in bytes). Holds shared `Bytes`
//! only; never copies a payload.

use std::collections::VecDeque;

use crate::protocol::media::{
    audio_track, classify_audio, classify_video, video_track, PacketKind,
};
use crate::protocol::{MessageType, RawMessage};

#[derive(Debug)]
pub struct GopCache {
    max_bytes: usize,
    metadata: Option<RawMessage>,
    /// The latest sequence header of each track, by track id, in the
    /// order the tracks first appeared.
    video_headers: Vec<(u8, RawMessage)>,
    audio_headers: Vec<(u8, RawMessage)>,
    gop: VecDeque<RawMessage>,
    gop_bytes: usize,
}

/// What a message is to the fan-out: a keyframe starts a GOP (and is where
/// a dropping player may resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub keyframe: bool,
    pub header: bool,
}

impl GopCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            metadata: None,
            video_headers: Vec::new(),
            audio_headers: Vec::new(),
            gop: VecDeque::new(),
            gop_bytes: 0,
        }
    }

    /// Records `m` (metadata, audio or video) and says what it is.
    pub fn push(&mut self, m: &RawMessage) -> Kind {
        let mut kind = Kind {
            keyframe: false,
            header: false,
        };
        match m.type_id {
            MessageType::VIDEO => match classify_video(&m.payload) {
                Ok(info) if info.kind == PacketKind::SequenceHeader => {
                    set_header(&mut self.video_headers, video_track(&m.payload), m);
                    kind.header = true;
                }
                Ok(info) if info.keyframe => {
                    kind.keyframe = true;
                    self.gop.clear();
                    self.gop_bytes = 0;
                    self.keep(m);
                }
                _ if !self.gop.is_empty() => self.keep(m),
                _ => {}
            },
            MessageType::AUDIO => match classify_audio(&m.payload) {
                Ok(info) if info.kind == PacketKind::SequenceHeader => {
                    set_header(&mut self.audio_headers, audio_track(&m.payload), m);
                    kind.header = true;
                }
                _ if !self.gop.is_empty() => self.keep(m),
                _ => {}
            },
            _ => {
                self.metadata = Some(m.clone());
                kind.header = true;
            }
        }
        kind
    }

    /// Appends to the GOP, which starts at a keyframe. A GOP too long to
    /// cache is dropped whole: new players then wait for the next keyframe.
    fn keep(&mut self, m: &RawMessage) {
        if self.gop_bytes + m.payload.len() > self.max_bytes {
            self.gop.clear();
            self.gop_bytes = 0;
            return;
        }
        self.gop_bytes += m.payload.len();
        self.gop.push_back(m.clone());
    }

    /// What a new player gets first, in order.
    pub fn snapshot(&self) -> impl Iterator<Item = &RawMessage> {
        self.metadata
            .iter()
            .chain(self.video_headers.iter().map(|(_, m)| m))
            .chain(self.audio_headers.iter().map(|(_, m)| m))
            .chain(&self.gop)
    }

    /// The codecs the current sequence headers name.
    pub fn codecs(&self) -> (Option<String>, Option<String>) {
        let video = self
            .video_headers
            .first()
            .map(|(_, m)| m)
            .and_then(|m| classify_video(&m.payload).ok())
            .map(|i| i.codec.name());
        let audio = self
            .audio_headers
            .first()
            .map(|(_, m)| m)
            .and_then(|m| classify_audio(&m.payload).ok())
            .map(|i| i.codec.name());
        (video, audio)
    }

    pub fn has_keyframe(&self) -> bool {
        !self.gop.is_empty()
    }
}

/// Replaces `track`'s sequence header, or adds it. Tracks are few (a
/// handful at most), so a list beats a map.
fn set_header(headers: &mut Vec<(u8, RawMessage)>, track: u8, m: &RawMessage) {
    match headers.iter_mut().find(|(t, _)| *t == track) {
        Some((_, h)) => *h = m.clone(),
        None => headers.push((track, m.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn audio(payload: &'static [u8]) -> RawMessage {
        RawMessage {
            csid: 4,
            timestamp: 0,
            type_id: MessageType::AUDIO,
            stream_id: 1,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn each_audio_track_keeps_its_own_sequence_header() {
        let mut gop = GopCache::new(1 << 20);
        // Enhanced audio (SoundFormat 9), Multitrack (5); OneTrack (0) with
        // SequenceStart (0); FourCC mp4a; track id; AudioSpecificConfig.
        let track0 = audio(&[0x95, 0x00, b'm', b'p', b'4', b'a', 0, 0x11, 0x90]);
        let track1 = audio(&[0x95, 0x00, b'm', b'p', b'4', b'a', 1, 0x12, 0x10]);
        let track1_again = audio(&[0x95, 0x00, b'm', b'p', b'4', b'a', 1, 0x11, 0x88]);
        for m in [&track0, &track1, &track1_again] {
            assert!(gop.push(m).header);
        }
        let headers: Vec<_> = gop.snapshot().map(|m| m.payload.clone()).collect();
        assert_eq!(headers, vec![track0.payload, track1_again.payload]);
        // A legacy AAC header is track 0's.
        let legacy = audio(&[0xAF, 0x00, 0x12, 0x10]);
        gop.push(&legacy);
        assert_eq!(gop.snapshot().count(), 2);
        assert_eq!(gop.snapshot().next().unwrap().payload, legacy.payload);
    }
}
