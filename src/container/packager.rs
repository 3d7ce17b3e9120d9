//! The LL-HLS packager of one stream: RTMP/FLV messages in, fMP4 parts
//! and segments out, into the stream's [`Window`]. Deterministic (no clock,
//! no I/O): the same messages give the same window.
//!
//! - Samples: H.264, HEVC and AV1 video (legacy FLV and Enhanced RTMP,
//!   single track), AAC and Opus audio. A sample's duration is the gap to
//!   the next one of its track, so each sample waits for its successor.
//! - Parts close before the video (or, with no video, the audio) would
//!   pass the part target; a segment closes at the first keyframe at or
//!   past the segment target, so every segment starts with a keyframe.
//! - New decoder configuration mid-stream starts a new init segment and a
//!   discontinuity.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::protocol::amf0::{Amf0Reader, Amf0Value};
use crate::protocol::media::{self, AudioCodec, PacketKind, VideoCodec};
use crate::protocol::{MessageType, RawMessage};

use super::fmp4::{
    aac_rate_channels, extra_audio_track, fragment, init_segment, AudioKind, AudioTrack, Sample,
    VideoKind, VideoTrack, AUDIO_TRACK, VIDEO_TIMESCALE, VIDEO_TRACK,
};
use super::window::{target_duration, Part, Window};

/// What one media message is to the packager.
#[derive(Debug, PartialEq, Eq)]
enum Unit {
    VideoConfig(VideoKind, Bytes),
    Video { key: bool, cts_ms: i32, data: Bytes },
    AudioConfig(AudioKind, Bytes),
    Audio(Bytes),
    Skip,
}

/// The window keeps its own copy of each sample and configuration, exact
/// in size: a slice of the message would pin the publisher's chunk arena
/// (`protocol::chunk::decoder`, shared by several messages) for the
/// window's whole life, seconds past the GOP cache's. One copy per stream,
/// never per viewer.
fn compact(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(data)
}

/// A video message as the packager takes it, read by `protocol::media`'s
/// tag model: a single-track H.264, HEVC or AV1 configuration or frame;
/// anything else is skipped.
fn video_unit(p: &Bytes, copy: bool) -> Unit {
    let Ok(body) = media::video_body(p) else {
        return Unit::Skip;
    };
    let kind = match body.info.codec {
        VideoCodec::Avc => VideoKind::Avc,
        VideoCodec::Hevc => VideoKind::Hevc,
        VideoCodec::Av1 => VideoKind::Av1,
        _ => return Unit::Skip,
    };
    let data = match copy {
        true => compact(&p[body.data_at..]),
        false => p.slice(body.data_at..),
    };
    match body.info.kind {
        _ if body.info.multitrack => Unit::Skip,
        PacketKind::SequenceHeader if body.config => Unit::VideoConfig(kind, data),
        PacketKind::Frame => Unit::Video {
            key: body.info.keyframe,
            cts_ms: body.cts_ms,
            data,
        },
        _ => Unit::Skip,
    }
}

/// One track's share of an audio message as the packager takes it: an
/// AAC or Opus configuration or frame; anything else is skipped.
fn audio_unit(p: &Bytes, part: &media::AudioPart, copy: bool) -> Unit {
    let kind = match part.codec {
        AudioCodec::Aac => AudioKind::Aac,
        // Opus over FLV is Enhanced RTMP only (a FourCC).
        AudioCodec::Opus => AudioKind::Opus,
        _ => return Unit::Skip,
    };
    let data = match copy {
        true => compact(&p[part.data.clone()]),
        false => p.slice(part.data.clone()),
    };
    match part.kind {
        PacketKind::SequenceHeader => Unit::AudioConfig(kind, data),
        PacketKind::Frame => Unit::Audio(data),
        _ => Unit::Skip,
    }
}

/// The RFC 6381 codecs of the tracks, for the multivariant playlist:
/// `avc1.PPCCLL` from the avcC record, `mp4a.40.N` from the
/// AudioSpecificConfig, `opus`; None when a track's is not known here
/// (HEVC and AV1 strings need more of their records than is read).
pub fn codecs(video: Option<&VideoTrack>, audio: Option<&AudioTrack>) -> Option<String> {
    let mut out = Vec::new();
    if let Some(v) = video {
        match v.kind {
            VideoKind::Avc if v.config.len() >= 4 => out.push(format!(
                "avc1.{:02x}{:02x}{:02x}",
                v.config[1], v.config[2], v.config[3]
            )),
            _ => return None,
        }
    }
    if let Some(a) = audio {
        match a.kind {
            AudioKind::Aac => {
                let object = a.config.first().map(|b| b >> 3)?;
                if object == 0 || object == 31 {
                    return None;
                }
                out.push(format!("mp4a.40.{object}"));
            }
            AudioKind::Opus => out.push("opus".into()),
        }
    }
    (!out.is_empty()).then(|| out.join(","))
}

/// Width and height from onMetaData, when it names them.
fn metadata_size(payload: &[u8]) -> Option<(u16, u16)> {
    let mut r = Amf0Reader::new(payload, 4);
    while !r.is_empty() {
        let v = r.read_value().ok()?;
        if let (Some(w), Some(h)) = (
            v.property("width").and_then(Amf0Value::as_number),
            v.property("height").and_then(Amf0Value::as_number),
        ) {
            return Some((w as u16, h as u16));
        }
    }
    None
}

/// A track's timeline: RTMP's 32-bit millisecond clock, unwrapped, and the
/// sample that waits for its successor to learn its duration.
#[derive(Default)]
struct Timeline {
    last_ms: Option<(u32, i64)>,
    waiting: Option<(i64, Sample)>,
}

impl Timeline {
    /// Milliseconds since the stream's start, across 32-bit wraps.
    fn unwrap(&mut self, ts: u32) -> i64 {
        let ms = match self.last_ms {
            None => ts as i64,
            Some((last, at)) => at + ts.wrapping_sub(last) as i32 as i64,
        };
        self.last_ms = Some((ts, ms));
        ms
    }
}

/// The longest a sample may last: a longer gap in a track's timestamps (a
/// pause, a jump) is taken as this, so no part or segment balloons.
const MAX_SAMPLE_MS: i64 = 1000;

/// Part and segment targets, and how many segments the window keeps.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub part_ms: u32,
    pub segment_ms: u32,
    pub window_segments: usize,
}

/// Audio tracks of a multitrack stream a packager follows (the first and
/// the extra ones).
pub const MAX_AUDIO_TRACKS: usize = 8;

/// Samples an extra audio track's part holds at most (a part's audio is a
/// second or so: this bounds a track whose timestamps run wild).
const MAX_EXTRA_SAMPLES: usize = 1024;

/// An audio track past the first of a multitrack stream (track id 1 and
/// on), followed when the output wants every track (a recording).
struct ExtraAudio {
    id: u8,
    track: AudioTrack,
    tl: Timeline,
    part: Vec<Sample>,
    /// The track is in the init segment last written (its samples are
    /// dropped until it is).
    in_init: bool,
}

/// The audio configuration of a sequence header.
fn audio_track(kind: AudioKind, config: Bytes) -> AudioTrack {
    let (rate, channels) = match kind {
        AudioKind::Aac => aac_rate_channels(&config).unwrap_or((44_100, 2)),
        AudioKind::Opus => (48_000, config.get(9).copied().unwrap_or(2) as u16),
    };
    AudioTrack {
        kind,
        config,
        rate,
        channels,
    }
}

/// `part`'s samples that end after `t` ms are split off (they go with the
/// next part); see [`Packager::cut_at`].
fn split_after(part: &mut Vec<Sample>, rate: f64, t: f64) -> Vec<Sample> {
    part.iter()
        .position(|a| audio_end_ms(a, rate) > t)
        .map(|i| part.split_off(i))
        .unwrap_or_default()
}

/// Audio samples kept while no segment is open, for the one the next
/// keyframe starts (only those playing from the keyframe on are used).
const MAX_WAITING_AUDIO: usize = 16;

/// When an audio sample ends, ms, at `rate` samples a second.
fn audio_end_ms(a: &Sample, rate: f64) -> f64 {
    (a.dts + a.duration as u64) as f64 * 1000.0 / rate
}

/// How long audio samples play, ms.
fn audio_ms(samples: &[Sample], rate: f64) -> f64 {
    samples
        .iter()
        .map(|a| a.duration as f64 * 1000.0 / rate)
        .sum()
}

/// Where a packager's output goes: the LL-HLS window ([`LiveWindow`]) or a
/// recording (`container::record`).
pub trait Output {
    /// A new init segment (the first, or a new decoder configuration), the
    /// RFC 6381 codecs it names when known, and the picture size.
    fn init(&mut self, init: Bytes, codecs: Option<String>, resolution: Option<(u16, u16)>);
    /// A part, in order; `end_segment`: it closes its segment.
    fn part(&mut self, part: Part, end_segment: bool);
    /// The open segment closes with no new part.
    fn close_segment(&mut self);
    /// The stream ended.
    fn end(&mut self);
}

/// The stream's LL-HLS window, keeping `keep` segments.
pub struct LiveWindow {
    window: Arc<Mutex<Window>>,
    keep: usize,
}

impl LiveWindow {
    fn with<R>(&self, f: impl FnOnce(&mut Window) -> R) -> R {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut w)
    }
}

impl Output for LiveWindow {
    fn init(&mut self, init: Bytes, codecs: Option<String>, resolution: Option<(u16, u16)>) {
        self.with(|w| {
            w.set_init(init);
            w.codecs = codecs;
            w.resolution = resolution;
        });
    }

    fn part(&mut self, part: Part, end_segment: bool) {
        let keep = self.keep;
        self.with(|w| w.push_part(Arc::new(part), keep, end_segment));
    }

    fn close_segment(&mut self) {
        self.with(|w| w.close_segment());
    }

    fn end(&mut self) {
        self.with(|w| w.end());
    }
}

pub struct Packager<O: Output = LiveWindow> {
    targets: Targets,
    output: O,
    /// Samples are copied out of the messages (see [`compact`]).
    copy: bool,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    size: Option<(u16, u16)>,
    /// The init segment must be rebuilt (new configuration).
    init_dirty: bool,
    /// The last init segment was written (parts are dropped otherwise).
    init_ok: bool,
    /// The stream's first timestamp, ms: timelines start at zero.
    origin_ms: Option<i64>,
    vt: Timeline,
    at: Timeline,
    /// Samples of the part being built, per track.
    part_video: Vec<Sample>,
    part_audio: Vec<Sample>,
    /// Length of the part and segment being built, ms.
    part_ms: f64,
    part_audio_ms: f64,
    segment_ms: f64,
    /// The part being built starts with a keyframe.
    part_independent: bool,
    fragment_seq: u32,
    /// Whether a segment is open (it has parts).
    segment_open: bool,
    /// Follow every audio track of a multitrack stream, not the first alone.
    all_audio: bool,
    extras: Vec<ExtraAudio>,
    /// Reused for splitting audio messages into their tracks.
    scratch: Vec<media::AudioPart>,
    /// Test only: each part's first video and audio time (ms) as written.
    #[cfg(test)]
    starts: Vec<(Option<f64>, Option<f64>)>,
}

impl Packager<LiveWindow> {
    /// A packager for the LL-HLS window `window`.
    pub fn new(targets: Targets, window: Arc<Mutex<Window>>) -> Self {
        let keep = targets.window_segments;
        Self::with_output(targets, LiveWindow { window, keep })
    }

    pub fn window(&self) -> &Arc<Mutex<Window>> {
        &self.output.window
    }
}

impl<O: Output> Packager<O> {
    pub fn with_output(targets: Targets, output: O) -> Self {
        Self {
            targets,
            output,
            copy: true,
            video: None,
            audio: None,
            size: None,
            init_dirty: false,
            init_ok: false,
            origin_ms: None,
            vt: Timeline::default(),
            at: Timeline::default(),
            part_video: Vec::new(),
            part_audio: Vec::new(),
            part_ms: 0.0,
            part_audio_ms: 0.0,
            segment_ms: 0.0,
            part_independent: false,
            fragment_seq: 0,
            segment_open: false,
            all_audio: false,
            extras: Vec::new(),
            scratch: Vec::new(),
            #[cfg(test)]
            starts: Vec::new(),
        }
    }

    /// Samples share the messages' payloads instead of copies: for an
    /// output that lets go of them within moments (a recording, whose
    /// bounded write queue bounds what they pin).
    pub fn sharing_payloads(mut self) -> Self {
        self.copy = false;
        self
    }

    /// Every audio track of a multitrack stream goes into the output (as
    /// alternatives of one another), not the first alone: for a recording.
    /// (LL-HLS keeps one audio track per rendition.)
    pub fn all_audio_tracks(mut self) -> Self {
        self.all_audio = true;
        self
    }

    pub fn output(&mut self) -> &mut O {
        &mut self.output
    }

    /// Takes one message of the stream, in order.
    pub fn push(&mut self, m: &RawMessage) {
        let unit = match m.type_id {
            MessageType::VIDEO => video_unit(&m.payload, self.copy),
            MessageType::AUDIO => {
                let mut parts = std::mem::take(&mut self.scratch);
                if media::audio_parts(&m.payload, MAX_AUDIO_TRACKS, &mut parts).is_ok() {
                    for part in &parts {
                        let unit = audio_unit(&m.payload, part, self.copy);
                        if part.track == 0 {
                            self.take(unit, m.timestamp);
                        } else if self.all_audio {
                            self.take_extra(part.track, unit, m.timestamp);
                        }
                    }
                }
                self.scratch = parts;
                return;
            }
            MessageType::DATA_AMF0 => {
                if let Some(size) = metadata_size(&m.payload) {
                    self.size = Some(size);
                }
                Unit::Skip
            }
            _ => Unit::Skip,
        };
        self.take(unit, m.timestamp);
    }

    /// One unit of the video track or the first audio track.
    fn take(&mut self, unit: Unit, timestamp: u32) {
        match unit {
            Unit::VideoConfig(kind, config) => {
                let (width, height) = self.size.unwrap_or((0, 0));
                let track = VideoTrack {
                    kind,
                    config,
                    width,
                    height,
                };
                if self.video.as_ref() != Some(&track) {
                    self.video = Some(track);
                    self.init_dirty = true;
                }
            }
            Unit::AudioConfig(kind, config) => {
                let track = audio_track(kind, config);
                if self.audio.as_ref() != Some(&track) {
                    self.audio = Some(track);
                    self.init_dirty = true;
                }
            }
            Unit::Video { key, cts_ms, data } if self.video.is_some() => {
                let ms = self.rebase(timestamp, true);
                let sample = Sample {
                    dts: (ms.max(0) as u64) * (VIDEO_TIMESCALE as u64 / 1000),
                    duration: 0,
                    cts: cts_ms * (VIDEO_TIMESCALE as i32 / 1000),
                    key,
                    data,
                };
                if let Some((prev_ms, mut prev)) = self.vt.waiting.replace((ms, sample)) {
                    let gap = (ms - prev_ms).clamp(0, MAX_SAMPLE_MS);
                    prev.duration = gap as u32 * (VIDEO_TIMESCALE / 1000);
                    self.add_video(prev, gap as f64);
                }
            }
            Unit::Audio(data) if self.audio.is_some() => {
                let rate = self.audio.as_ref().map_or(48_000, |a| a.rate) as i64;
                let ms = self.rebase(timestamp, false);
                let sample = Sample {
                    dts: (ms.max(0) * rate / 1000) as u64,
                    duration: 0,
                    cts: 0,
                    key: true,
                    data,
                };
                if let Some((prev_ms, mut prev)) = self.at.waiting.replace((ms, sample)) {
                    let gap = (ms - prev_ms).clamp(0, MAX_SAMPLE_MS);
                    let end = ((prev_ms + gap).max(0) * rate / 1000) as u64;
                    prev.duration = end.saturating_sub(prev.dts) as u32;
                    self.add_audio(prev, gap as f64);
                }
            }
            _ => {}
        }
    }

    /// One unit of an audio track past the first.
    fn take_extra(&mut self, id: u8, unit: Unit, timestamp: u32) {
        let at = self.extras.iter().position(|e| e.id == id);
        match unit {
            Unit::AudioConfig(kind, config) => {
                let track = audio_track(kind, config);
                match at {
                    Some(i) if self.extras[i].track == track => {}
                    Some(i) => {
                        self.extras[i].track = track;
                        self.init_dirty = true;
                    }
                    None if self.extras.len() + 1 < MAX_AUDIO_TRACKS => {
                        self.extras.push(ExtraAudio {
                            id,
                            track,
                            tl: Timeline::default(),
                            part: Vec::new(),
                            in_init: false,
                        });
                        self.init_dirty = true;
                    }
                    None => {}
                }
            }
            Unit::Audio(data) => {
                let Some(i) = at else { return };
                let ms = self.extras[i].tl.unwrap(timestamp);
                let ms = ms - *self.origin_ms.get_or_insert(ms);
                let e = &mut self.extras[i];
                let rate = e.track.rate as i64;
                let sample = Sample {
                    dts: (ms.max(0) * rate / 1000) as u64,
                    duration: 0,
                    cts: 0,
                    key: true,
                    data,
                };
                if let Some((prev_ms, mut prev)) = e.tl.waiting.replace((ms, sample)) {
                    let gap = (ms - prev_ms).clamp(0, MAX_SAMPLE_MS);
                    let end = ((prev_ms + gap).max(0) * rate / 1000) as u64;
                    prev.duration = end.saturating_sub(prev.dts) as u32;
                    self.add_extra(i, prev);
                }
            }
            _ => {}
        }
    }

    /// An extra audio track's sample joins the part being built (or, while
    /// no segment has begun, waits with the first track's audio for the
    /// keyframe that starts one).
    fn add_extra(&mut self, i: usize, s: Sample) {
        if self.video.is_none() && self.audio.is_none() {
            // Nothing would cut its parts.
            return;
        }
        let waiting = self.video.is_some() && !self.building();
        let e = &mut self.extras[i];
        let cap = if waiting {
            MAX_WAITING_AUDIO
        } else {
            MAX_EXTRA_SAMPLES
        };
        if e.part.len() >= cap {
            e.part.remove(0);
        }
        e.part.push(s);
    }

    /// The message's time on its track, ms since the stream's origin.
    fn rebase(&mut self, ts: u32, video: bool) -> i64 {
        let ms = if video {
            self.vt.unwrap(ts)
        } else {
            self.at.unwrap(ts)
        };
        self.origin_ms.get_or_insert(ms);
        ms - self.origin_ms.unwrap_or(0)
    }

    /// A segment has begun (a keyframe is in it).
    fn building(&self) -> bool {
        self.segment_open || !self.part_video.is_empty()
    }

    /// The longest a segment may grow: the playlist's target duration.
    fn hard_max_ms(&self) -> f64 {
        target_duration(self.targets.segment_ms) as f64 * 1000.0
    }

    fn add_video(&mut self, s: Sample, ms: f64) {
        let length = self.segment_ms + self.part_ms;
        // A new segment at a keyframe past the segment target, or at once
        // on a new configuration; without a keyframe only at the target
        // duration (a GOP longer than that is cut).
        let at_key = s.key && (length >= self.targets.segment_ms as f64 || self.init_dirty);
        // Where the next part's video begins: audio from there on goes with it.
        let next_ms = s.dts as f64 * 1000.0 / VIDEO_TIMESCALE as f64;
        if self.building() && (at_key || length + ms > self.hard_max_ms()) {
            self.cut_at(true, Some(next_ms));
        } else if !self.part_video.is_empty() && self.part_ms + ms > self.targets.part_ms as f64 {
            self.cut_at(false, Some(next_ms));
        }
        if !self.building() {
            if !s.key {
                // Nothing before the first keyframe: no segment could
                // start (nor does the audio waiting for one).
                self.part_audio.clear();
                self.part_audio_ms = 0.0;
                self.extras.iter_mut().for_each(|e| e.part.clear());
                return;
            }
            // A segment starts: of the audio that waited, what plays from
            // the keyframe on.
            if let Some(rate) = self.audio.as_ref().map(|a| a.rate as f64) {
                self.part_audio.retain(|a| audio_end_ms(a, rate) > next_ms);
                self.part_audio_ms = audio_ms(&self.part_audio, rate);
            }
            for e in &mut self.extras {
                let rate = e.track.rate as f64;
                e.part.retain(|a| audio_end_ms(a, rate) > next_ms);
            }
        }
        if self.part_video.is_empty() {
            self.part_independent = s.key;
        }
        self.part_ms += ms;
        self.part_video.push(s);
    }

    fn add_audio(&mut self, s: Sample, ms: f64) {
        let part_target = self.targets.part_ms as f64;
        if self.video.is_some() {
            if !self.building() {
                // Kept for the segment a keyframe may start (a few frames).
                if self.part_audio.len() >= MAX_WAITING_AUDIO {
                    self.part_audio.remove(0);
                }
                self.part_audio.push(s);
                return;
            }
            self.part_audio.push(s);
            self.part_audio_ms += ms;
            // Video stopped while audio goes on: audio cuts the parts.
            if self.part_video.is_empty() && self.part_audio_ms >= 2.0 * part_target {
                let end = self.segment_ms + self.part_audio_ms >= self.hard_max_ms();
                self.cut(end);
            }
            return;
        }
        // Audio only: audio cuts the parts, and every sample is independent.
        if !self.part_audio.is_empty() && self.part_audio_ms + ms > part_target {
            let end = self.segment_ms + self.part_audio_ms >= self.targets.segment_ms as f64;
            self.cut(end);
        }
        if self.part_audio.is_empty() {
            self.part_independent = true;
        }
        self.part_audio_ms += ms;
        self.part_audio.push(s);
    }

    /// Closes the part being built (if it has samples) and, with
    /// `end_segment`, its segment, in one step of the window.
    fn cut(&mut self, end_segment: bool) {
        self.cut_at(end_segment, None);
    }

    /// [`Packager::cut`] where the next part's video begins at `next_ms`:
    /// the audio samples that end after that time (the one playing across
    /// it included) move to the next part, so that its audio starts no later
    /// than its video. A sample is complete only once its successor arrives,
    /// so audio reaches the packager up to a frame later than the video it
    /// plays with; left in the part that closes, it would make the next
    /// part's audio start after its video, and a player that starts there
    /// would find a hole at the start of its buffer (hls.js reports
    /// `bufferSeekOverHole`).
    fn cut_at(&mut self, end_segment: bool, next_ms: Option<f64>) {
        if self.video.is_some() && !self.building() {
            // Audio waiting for a keyframe is no part of its own.
            self.part_audio.clear();
            self.part_audio_ms = 0.0;
            self.extras.iter_mut().for_each(|e| e.part.clear());
        }
        let rate = self.audio.as_ref().map(|a| a.rate as f64);
        let split = next_ms.filter(|_| !self.part_video.is_empty());
        let carried = match (split, rate) {
            (Some(t), Some(rate)) => split_after(&mut self.part_audio, rate, t),
            _ => Vec::new(),
        };
        let extras_carried: Vec<Vec<Sample>> = self
            .extras
            .iter_mut()
            .map(|e| match split {
                Some(t) => split_after(&mut e.part, e.track.rate as f64, t),
                None => Vec::new(),
            })
            .collect();
        let has_samples = !self.part_video.is_empty() || !self.part_audio.is_empty();
        if has_samples && (self.init_dirty && !self.segment_open || !self.init_ok) {
            self.publish_init();
        }
        if has_samples {
            self.fragment_seq = self.fragment_seq.wrapping_add(1);
            let video = std::mem::take(&mut self.part_video);
            let audio = std::mem::take(&mut self.part_audio);
            #[cfg(test)]
            self.starts.push((
                video
                    .first()
                    .map(|v| v.dts as f64 * 1000.0 / VIDEO_TIMESCALE as f64),
                audio
                    .first()
                    .zip(rate)
                    .map(|(a, rate)| a.dts as f64 * 1000.0 / rate),
            ));
            let ms = if video.is_empty() {
                self.part_audio_ms
            } else {
                self.part_ms
            };
            self.segment_ms += ms;
            let extra: Vec<Vec<Sample>> = self
                .extras
                .iter_mut()
                .map(|e| std::mem::take(&mut e.part))
                .collect();
            let mut tracks = vec![(VIDEO_TRACK, &video[..]), (AUDIO_TRACK, &audio[..])];
            let mut n = 0;
            for (e, samples) in self.extras.iter().zip(&extra) {
                // Numbered as the init segment numbers them.
                if e.in_init {
                    tracks.push((extra_audio_track(n), &samples[..]));
                    n += 1;
                }
            }
            let bytes = fragment(self.fragment_seq, &tracks);
            match bytes {
                // Parts without an init segment that players could decode
                // them with are dropped.
                Ok(bytes) if self.init_ok => {
                    let part = Part {
                        size: bytes.iter().map(Bytes::len).sum(),
                        bytes,
                        duration: ms / 1000.0,
                        independent: self.part_independent,
                    };
                    self.segment_open = true;
                    self.output.part(part, end_segment);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("LL-HLS: a part could not be written ({e}); dropped"),
            }
        } else if end_segment && self.segment_open {
            self.output.close_segment();
        }
        self.part_ms = 0.0;
        self.part_audio_ms = rate.map_or(0.0, |rate| audio_ms(&carried, rate));
        self.part_audio = carried;
        for (e, carried) in self.extras.iter_mut().zip(extras_carried) {
            if !has_samples {
                // No part was written: what it held stays for the next.
                let mut kept = std::mem::take(&mut e.part);
                kept.extend(carried);
                e.part = kept;
            } else {
                e.part = carried;
            }
        }
        if end_segment {
            self.segment_open = false;
            self.segment_ms = 0.0;
        }
    }

    fn publish_init(&mut self) {
        self.init_dirty = false;
        let extra: Vec<&AudioTrack> = self.extras.iter().map(|e| &e.track).collect();
        match init_segment(self.video.as_ref(), self.audio.as_ref(), &extra) {
            Ok(init) => {
                self.init_ok = true;
                self.extras.iter_mut().for_each(|e| e.in_init = true);
                let codecs = codecs(self.video.as_ref(), self.audio.as_ref());
                let resolution = self
                    .video
                    .as_ref()
                    .map(|v| (v.width, v.height))
                    .filter(|&(w, h)| w > 0 && h > 0);
                self.output.init(init, codecs, resolution);
            }
            Err(e) => {
                self.init_ok = false;
                tracing::warn!("LL-HLS: no init segment: {e}");
            }
        }
    }

    /// The stream came back with a new publisher: what waits is written,
    /// then timestamps start again after a discontinuity (a new init
    /// segment, even when the configuration is the same).
    pub fn restart(&mut self) {
        self.flush_waiting();
        self.cut(true);
        self.vt = Timeline::default();
        self.at = Timeline::default();
        for e in &mut self.extras {
            e.tl = Timeline::default();
            e.part.clear();
        }
        self.origin_ms = None;
        self.init_dirty = true;
    }

    /// The stream ended: what waits is written, and the playlist ends.
    pub fn finish(&mut self) {
        self.flush_waiting();
        self.cut(true);
        self.output.end();
    }

    /// The samples waiting for a successor get a nominal duration.
    fn flush_waiting(&mut self) {
        for i in 0..self.extras.len() {
            if let Some((_, mut s)) = self.extras[i].tl.waiting.take() {
                s.duration = 1024;
                self.add_extra(i, s);
            }
        }
        for video in [true, false] {
            let tl = if video { &mut self.vt } else { &mut self.at };
            if let Some((_, mut s)) = tl.waiting.take() {
                let (duration, ms) = if video {
                    (VIDEO_TIMESCALE / 25, 40.0)
                } else {
                    (1024, 0.0)
                };
                s.duration = duration;
                if video {
                    self.add_video(s, ms);
                } else {
                    self.add_audio(s, ms);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_name_avc_and_aac_from_their_records_and_nothing_they_cannot() {
        let avc = VideoTrack {
            kind: VideoKind::Avc,
            // avcC: version, profile 100 (High), compatibility 0, level 31.
            config: Bytes::from_static(&[1, 0x64, 0x00, 0x1f, 0xff]),
            width: 1280,
            height: 720,
        };
        let aac = AudioTrack {
            kind: AudioKind::Aac,
            // AAC LC (object type 2) at 44.1 kHz, stereo.
            config: Bytes::from_static(&[0x12, 0x10]),
            rate: 44_100,
            channels: 2,
        };
        assert_eq!(
            codecs(Some(&avc), Some(&aac)).as_deref(),
            Some("avc1.64001f,mp4a.40.2")
        );
        assert_eq!(codecs(None, Some(&aac)).as_deref(), Some("mp4a.40.2"));
        let hevc = VideoTrack {
            kind: VideoKind::Hevc,
            ..avc.clone()
        };
        assert_eq!(codecs(Some(&hevc), Some(&aac)), None, "not read: left out");
        let short = VideoTrack {
            config: Bytes::from_static(&[1, 0x64]),
            ..avc
        };
        assert_eq!(codecs(Some(&short), None), None);
        assert_eq!(codecs(None, None), None);
    }

    /// The unit of an audio message's first track, Skip when it has none.
    fn first_audio_unit(p: &Bytes) -> Unit {
        let mut parts = Vec::new();
        match media::audio_parts(p, MAX_AUDIO_TRACKS, &mut parts) {
            Ok(()) if !parts.is_empty() => audio_unit(p, &parts[0], true),
            _ => Unit::Skip,
        }
    }

    #[test]
    fn units_from_legacy_and_enhanced_payloads() {
        let avc_header = Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 2]);
        assert_eq!(
            video_unit(&avc_header, true),
            Unit::VideoConfig(VideoKind::Avc, Bytes::from_static(&[1, 2]))
        );
        let frame = Bytes::from_static(&[0x27, 1, 0xFF, 0xFF, 0xFE, 9]);
        assert_eq!(
            video_unit(&frame, true),
            Unit::Video {
                key: false,
                cts_ms: -2,
                data: Bytes::from_static(&[9])
            }
        );
        let hevc = Bytes::from_static(&[0x91, b'h', b'v', b'c', b'1', 0, 0, 40, 7]);
        assert_eq!(
            video_unit(&hevc, true),
            Unit::Video {
                key: true,
                cts_ms: 40,
                data: Bytes::from_static(&[7])
            }
        );
        let av1x = Bytes::from_static(&[0x93, b'a', b'v', b'0', b'1', 5]);
        assert!(matches!(
            video_unit(&av1x, true),
            Unit::Video { key: true, .. }
        ));
        let aac = Bytes::from_static(&[0xAF, 0, 0x12, 0x10]);
        assert_eq!(
            first_audio_unit(&aac),
            Unit::AudioConfig(AudioKind::Aac, Bytes::from_static(&[0x12, 0x10]))
        );
        let opus = Bytes::from_static(&[0x91, b'O', b'p', b'u', b's', 3]);
        assert_eq!(
            first_audio_unit(&opus),
            Unit::Audio(Bytes::from_static(&[3]))
        );
        for junk in [&[][..], &[0x17][..], &[0x9F, b'x'][..], &[0x22, 0][..]] {
            let b = Bytes::copy_from_slice(junk);
            assert_eq!(video_unit(&b, true), Unit::Skip, "{junk:?}");
            assert_eq!(first_audio_unit(&b), Unit::Skip, "{junk:?}");
        }
        assert_eq!(aac_rate_channels(&[0x12, 0x10]), Some((44_100, 2)));
        assert_eq!(aac_rate_channels(&[0x11, 0x90]), Some((48_000, 2)));
    }

    #[test]
    fn timelines_unwrap_the_32_bit_clock() {
        let mut t = Timeline::default();
        assert_eq!(t.unwrap(u32::MAX - 10), (u32::MAX - 10) as i64);
        assert_eq!(t.unwrap(5), u32::MAX as i64 + 6);
        assert_eq!(
            t.unwrap(3),
            u32::MAX as i64 + 4,
            "a step back stays a step back"
        );
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use std::time::Instant;

    fn video(ts: u32, key: bool) -> RawMessage {
        let b0 = if key { 0x17 } else { 0x27 };
        RawMessage {
            csid: 6,
            timestamp: ts,
            type_id: MessageType::VIDEO,
            stream_id: 1,
            payload: Bytes::from(vec![b0, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]),
        }
    }

    /// A packager of 200 ms parts and 1 s segments that has seen an H.264
    /// configuration (a minimal avcC: version 1, profile, compat, level,
    /// 0xFF, no SPS, no PPS).
    fn h264_packager() -> (Arc<Mutex<Window>>, Packager) {
        let window = Arc::new(Mutex::new(Window::new(200, 1000, 0, Instant::now())));
        let mut p = Packager::new(
            Targets {
                part_ms: 200,
                segment_ms: 1000,
                window_segments: 10,
            },
            window.clone(),
        );
        p.push(&RawMessage {
            payload: Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1E, 0xFF, 0xE0, 0]),
            ..video(0, true)
        });
        (window, p)
    }

    fn aac(ts: u32, header: bool) -> RawMessage {
        RawMessage {
            csid: 4,
            timestamp: ts,
            type_id: MessageType::AUDIO,
            stream_id: 1,
            // AAC, 48 kHz stereo config (0x11 0x90), or one raw frame.
            payload: Bytes::from(match header {
                true => vec![0xAF, 0, 0x11, 0x90],
                false => vec![0xAF, 1, 0x21, 0x10],
            }),
        }
    }

    /// Audio and video interleaved as an encoder sends them (30 fps video,
    /// 48 kHz AAC frames of 21.33 ms): every part's audio must start no
    /// later than its video, so a player starting at any part finds no hole
    /// at the start of its buffer; and audio stays contiguous across parts.
    #[test]
    fn each_part_has_audio_from_the_start_of_its_video() {
        let (_, mut p) = h264_packager();
        p.push(&aac(0, true));
        let (mut v, mut a) = (0u32, 0u32);
        while v < 300 {
            let vt = v * 1000 / 30;
            let at = a * 1024 * 1000 / 48_000;
            if at <= vt {
                p.push(&aac(at, false));
                a += 1;
            } else {
                p.push(&video(vt, v % 30 == 0));
                v += 1;
            }
        }
        assert!(p.starts.len() > 20, "{:?}", p.starts);
        for (i, (video, audio)) in p.starts.iter().enumerate() {
            let (Some(video), Some(audio)) = (video, audio) else {
                panic!("part {i} lacks a track: {:?}", p.starts);
            };
            assert!(
                audio <= video,
                "part {i}: audio from {audio} ms, video from {video} ms"
            );
            assert!(
                video - audio < 21.34,
                "part {i}: audio from {audio} ms, video from {video} ms"
            );
        }
    }

    #[test]
    fn parts_and_segments_follow_the_targets() {
        let (window, mut p) = h264_packager();
        for i in 0..100u32 {
            p.push(&video(1000 + i * 40, i % 25 == 0));
        }
        let w = window.lock().unwrap();
        let segs: Vec<_> = w
            .segments
            .iter()
            .map(|s| {
                (
                    s.complete,
                    s.parts.len(),
                    (s.duration() * 1000.0).round() as u32,
                )
            })
            .collect();
        assert_eq!(
            segs,
            vec![
                (true, 5, 1000),
                (true, 5, 1000),
                (true, 5, 1000),
                (false, 4, 800)
            ],
            "{w:?}"
        );
        assert!(w.init.is_some());
    }

    #[test]
    fn a_new_publisher_continues_the_numbering_after_a_discontinuity() {
        let window = Arc::new(Mutex::new(Window::new(200, 1000, 0, Instant::now())));
        let targets = Targets {
            part_ms: 200,
            segment_ms: 1000,
            window_segments: 10,
        };
        let mut p = Packager::new(targets, window.clone());
        let header = RawMessage {
            payload: Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1E, 0xFF, 0xE0, 0]),
            ..video(0, true)
        };
        p.push(&header);
        for i in 0..50u32 {
            p.push(&video(90_000 + i * 40, i % 25 == 0));
        }
        // The new publisher's clock starts again near zero.
        p.restart();
        p.push(&header);
        for i in 0..50u32 {
            p.push(&video(i * 40, i % 25 == 0));
        }
        p.finish();
        let w = window.lock().unwrap();
        let msns: Vec<u64> = w.segments.iter().map(|s| s.msn).collect();
        assert_eq!(msns, (0..msns.len() as u64).collect::<Vec<_>>(), "{msns:?}");
        let inits: Vec<u32> = w.segments.iter().map(|s| s.init).collect();
        assert_eq!(inits.first(), Some(&1));
        assert_eq!(
            inits.last(),
            Some(&2),
            "a new init after the restart: {inits:?}"
        );
        assert!(w.playlist("").contains("#EXT-X-DISCONTINUITY\n"));
        assert!(w.ended);
    }
}
