//! The per-stream cache a new player starts from: metadata, the audio and
//! video sequence headers, and the last GOP (bounded in bytes). Holds shared
//! `Bytes` only; never copies a payload.

use std::collections::VecDeque;

use crate::protocol::media::{classify_audio, classify_video, PacketKind};
use crate::protocol::{MessageType, RawMessage};

#[derive(Debug)]
pub struct GopCache {
    max_bytes: usize,
    metadata: Option<RawMessage>,
    video_header: Option<RawMessage>,
    audio_header: Option<RawMessage>,
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
            video_header: None,
            audio_header: None,
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
                    self.video_header = Some(m.clone());
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
                    self.audio_header = Some(m.clone());
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
            .chain(&self.video_header)
            .chain(&self.audio_header)
            .chain(&self.gop)
    }

    /// The codecs the current sequence headers name.
    pub fn codecs(&self) -> (Option<String>, Option<String>) {
        let video = self
            .video_header
            .as_ref()
            .and_then(|m| classify_video(&m.payload).ok())
            .map(|i| i.codec.name());
        let audio = self
            .audio_header
            .as_ref()
            .and_then(|m| classify_audio(&m.payload).ok())
            .map(|i| i.codec.name());
        (video, audio)
    }

    pub fn has_keyframe(&self) -> bool {
        !self.gop.is_empty()
    }
}
