//! Codec and packet classification of RTMP audio/video message payloads
//! (legacy FLV tag headers and Enhanced RTMP v1/v2 ExHeaders).
//!
//! Owns the answer to "which codec, is this a sequence header, is this a
//! keyframe" from the first bytes of a payload, which is what a GOP cache, a
//! stream's codec record and a late-joining player need. It must never
//! allocate, look past the tag header (the codec bitstream is not its
//! business), or panic on any input: a payload is peer data.
//!
//! Long (about 1,000 lines): classification of every legacy and Enhanced RTMP
//! audio and video format, and its tests inline (about 500 lines).

use thiserror::Error;

/// A video codec, as signalled by a legacy CodecID or an Enhanced RTMP FourCC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    Avc,
    Hevc,
    Av1,
    Vp9,
    Vp8,
    Vvc,
    /// Any other legacy CodecID: 2 Sorenson H.263, 3 screen video, 4 VP6,
    /// 5 VP6 with alpha, 6 screen video v2 (and reserved values).
    Legacy(u8),
    /// An enhanced FourCC this module does not know. Enhanced command frames
    /// carry no FourCC at all and report [`VideoCodec::UNSPECIFIED`].
    FourCc([u8; 4]),
}

impl VideoCodec {
    /// A short lowercase name, as the HTTP API and the registry show it.
    pub fn name(self) -> String {
        match self {
            Self::Avc => "h264".into(),
            Self::Hevc => "hevc".into(),
            Self::Av1 => "av1".into(),
            Self::Vp9 => "vp9".into(),
            Self::Vp8 => "vp8".into(),
            Self::Vvc => "vvc".into(),
            Self::Legacy(id) => format!("codec-id-{id}"),
            Self::FourCc(f) => String::from_utf8_lossy(&f).into_owned(),
        }
    }

    /// Codec of an enhanced command frame, whose header has no FourCC.
    pub const UNSPECIFIED: Self = Self::FourCc([0; 4]);

    /// The codec a FourCC names; unknown ones are kept as [`VideoCodec::FourCc`].
    pub fn from_fourcc(fourcc: [u8; 4]) -> Self {
        match &fourcc {
            b"avc1" => Self::Avc,
            b"hvc1" => Self::Hevc,
            b"av01" => Self::Av1,
            b"vp09" => Self::Vp9,
            b"vp08" => Self::Vp8,
            b"vvc1" => Self::Vvc,
            _ => Self::FourCc(fourcc),
        }
    }

    /// The FourCC that names this codec in Enhanced RTMP (what a server lists
    /// in `fourCcList`); `None` for codecs that only exist as legacy ids.
    pub fn fourcc(self) -> Option<[u8; 4]> {
        match self {
            Self::Avc => Some(*b"avc1"),
            Self::Hevc => Some(*b"hvc1"),
            Self::Av1 => Some(*b"av01"),
            Self::Vp9 => Some(*b"vp09"),
            Self::Vp8 => Some(*b"vp08"),
            Self::Vvc => Some(*b"vvc1"),
            Self::Legacy(_) => None,
            Self::FourCc(f) => Some(f),
        }
    }
}

/// An audio codec, as signalled by a legacy SoundFormat or an Enhanced RTMP
/// FourCC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    Aac,
    Mp3,
    Opus,
    Flac,
    Ac3,
    Eac3,
    /// Any other legacy SoundFormat (PCM, ADPCM, Nellymoser, G.711, Speex,
    /// device-specific, reserved).
    Legacy(u8),
    /// An enhanced FourCC this module does not know.
    FourCc([u8; 4]),
}

impl AudioCodec {
    /// A short lowercase name, as the HTTP API and the registry show it.
    pub fn name(self) -> String {
        match self {
            Self::Aac => "aac".into(),
            Self::Mp3 => "mp3".into(),
            Self::Opus => "opus".into(),
            Self::Flac => "flac".into(),
            Self::Ac3 => "ac3".into(),
            Self::Eac3 => "eac3".into(),
            Self::Legacy(id) => format!("sound-format-{id}"),
            Self::FourCc(f) => String::from_utf8_lossy(&f).into_owned(),
        }
    }

    /// The codec a FourCC names; unknown ones are kept as [`AudioCodec::FourCc`].
    pub fn from_fourcc(fourcc: [u8; 4]) -> Self {
        match &fourcc {
            b"mp4a" => Self::Aac,
            b".mp3" => Self::Mp3,
            b"Opus" => Self::Opus,
            b"fLaC" => Self::Flac,
            b"ac-3" => Self::Ac3,
            b"ec-3" => Self::Eac3,
            _ => Self::FourCc(fourcc),
        }
    }

    /// The FourCC that names this codec in Enhanced RTMP; `None` for codecs
    /// that only exist as legacy SoundFormats.
    pub fn fourcc(self) -> Option<[u8; 4]> {
        match self {
            Self::Aac => Some(*b"mp4a"),
            Self::Mp3 => Some(*b".mp3"),
            Self::Opus => Some(*b"Opus"),
            Self::Flac => Some(*b"fLaC"),
            Self::Ac3 => Some(*b"ac-3"),
            Self::Eac3 => Some(*b"ec-3"),
            Self::Legacy(_) => None,
            Self::FourCc(f) => Some(f),
        }
    }
}

/// What a media message carries, independent of codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Decoder configuration (AVC/HEVC record, AudioSpecificConfig, enhanced
    /// SequenceStart or MPEG2TSSequenceStart): a late joiner needs the latest
    /// one before any frame.
    SequenceHeader,
    /// Coded frames (legacy codecs without packet types are always this).
    Frame,
    EndOfSequence,
    /// Enhanced video Metadata (AMF, e.g. HDR colour info).
    Metadata,
    /// Video command frames, audio MultichannelConfig: not media, not config.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoInfo {
    pub codec: VideoCodec,
    pub kind: PacketKind,
    /// True only for coded frames (`kind == Frame`) with FrameType 1: where a
    /// player may start decoding. Generated keyframes (4) are not counted.
    pub keyframe: bool,
    /// Enhanced RTMP ExHeader (IsExHeader bit set).
    pub enhanced: bool,
    /// Enhanced Multitrack packet; `codec` is then the first track's.
    pub multitrack: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioInfo {
    pub codec: AudioCodec,
    pub kind: PacketKind,
    /// Enhanced RTMP ExHeader (SoundFormat 9).
    pub enhanced: bool,
    /// Enhanced Multitrack packet; `codec` is then the first track's.
    pub multitrack: bool,
}

#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaError {
    /// An empty payload. For audio this is the legacy "silence" message,
    /// which callers may want to forward rather than reject.
    #[error("empty media payload")]
    Empty,
    #[error("media tag header truncated")]
    Truncated,
    #[error("unknown or reserved video frame type {0}")]
    UnknownFrameType(u8),
    #[error("unknown or reserved packet type {0}")]
    UnknownPacketType(u8),
    #[error("unknown multitrack type {0}")]
    UnknownMultitrackType(u8),
    /// A Multitrack header whose per-track packet type is Multitrack or ModEx
    /// again, which the spec forbids.
    #[error("packet type {0} is not allowed inside a multitrack packet")]
    NestedPacketType(u8),
}

// Legacy video CodecIDs with an AVCPacketType byte and composition time.
const CODEC_ID_AVC: u8 = 7;
// Not in the Adobe spec: the Chinese CDN extension (SRS, nginx-http-flv,
// flv.js) that predates Enhanced RTMP and is still sent by some encoders.
const CODEC_ID_HEVC: u8 = 12;

const FRAME_KEY: u8 = 1;
const FRAME_COMMAND: u8 = 5;

const VIDEO_SEQUENCE_START: u8 = 0;
const VIDEO_CODED_FRAMES: u8 = 1;
const VIDEO_SEQUENCE_END: u8 = 2;
const VIDEO_CODED_FRAMES_X: u8 = 3;
const VIDEO_METADATA: u8 = 4;
const VIDEO_MPEG2TS_SEQUENCE_START: u8 = 5;
const VIDEO_MULTITRACK: u8 = 6;
const VIDEO_MOD_EX: u8 = 7;

const SOUND_MP3: u8 = 2;
const SOUND_EX_HEADER: u8 = 9;
const SOUND_AAC: u8 = 10;
const SOUND_MP3_8K: u8 = 14;

const AUDIO_SEQUENCE_START: u8 = 0;
const AUDIO_CODED_FRAMES: u8 = 1;
const AUDIO_SEQUENCE_END: u8 = 2;
const AUDIO_MULTICHANNEL_CONFIG: u8 = 4;
const AUDIO_MULTITRACK: u8 = 5;
const AUDIO_MOD_EX: u8 = 7;

const MULTITRACK_ONE_TRACK: u8 = 0;
const MULTITRACK_MANY_CODECS: u8 = 2;

/// Legacy AVC/HEVC header: flags, packet type, SI24 composition time.
const LEGACY_AVC_HEADER_LEN: usize = 5;

/// Classifies an RTMP video message payload (= FLV video tag body).
pub fn classify_video(payload: &[u8]) -> Result<VideoInfo, MediaError> {
    let first = *payload.first().ok_or(MediaError::Empty)?;
    if first & 0x80 != 0 {
        classify_enhanced_video(payload)
    } else {
        classify_legacy_video(payload)
    }
}

/// Classifies an RTMP audio message payload (= FLV audio tag body).
pub fn classify_audio(payload: &[u8]) -> Result<AudioInfo, MediaError> {
    let first = *payload.first().ok_or(MediaError::Empty)?;
    let format = first >> 4;
    match format {
        SOUND_EX_HEADER => classify_enhanced_audio(payload),
        SOUND_AAC => {
            let kind = match payload.get(1) {
                None => return Err(MediaError::Truncated),
                Some(0) => PacketKind::SequenceHeader,
                Some(1) => PacketKind::Frame,
                Some(&other) => return Err(MediaError::UnknownPacketType(other)),
            };
            Ok(legacy_audio(AudioCodec::Aac, kind))
        }
        SOUND_MP3 | SOUND_MP3_8K => Ok(legacy_audio(AudioCodec::Mp3, PacketKind::Frame)),
        _ => Ok(legacy_audio(AudioCodec::Legacy(format), PacketKind::Frame)),
    }
}

fn legacy_audio(codec: AudioCodec, kind: PacketKind) -> AudioInfo {
    AudioInfo {
        codec,
        kind,
        enhanced: false,
        multitrack: false,
    }
}

fn classify_legacy_video(payload: &[u8]) -> Result<VideoInfo, MediaError> {
    let mut r = Reader::new(payload);
    let flags = r.u8()?;
    // Bit 7 is clear here, so this is the whole 3-bit frame type.
    let frame_type = flags >> 4;
    let codec_id = flags & 0x0F;
    let codec = match codec_id {
        CODEC_ID_AVC => VideoCodec::Avc,
        CODEC_ID_HEVC => VideoCodec::Hevc,
        other => VideoCodec::Legacy(other),
    };
    let kind = if frame_type == FRAME_COMMAND {
        // The byte after the flags is a VideoCommand, not a packet type.
        r.u8()?;
        PacketKind::Other
    } else if !(1..=4).contains(&frame_type) {
        return Err(MediaError::UnknownFrameType(frame_type));
    } else if matches!(codec, VideoCodec::Avc | VideoCodec::Hevc) {
        let packet_type = r.u8()?;
        let kind = match packet_type {
            0 => PacketKind::SequenceHeader,
            1 => PacketKind::Frame,
            2 => PacketKind::EndOfSequence,
            other => return Err(MediaError::UnknownPacketType(other)),
        };
        // A header shorter than its fixed part is a broken sender, and a
        // muxer copying it into MP4/TS would choke on it later.
        if payload.len() < LEGACY_AVC_HEADER_LEN {
            return Err(MediaError::Truncated);
        }
        kind
    } else {
        PacketKind::Frame
    };
    Ok(VideoInfo {
        codec,
        kind,
        keyframe: kind == PacketKind::Frame && frame_type == FRAME_KEY,
        enhanced: false,
        multitrack: false,
    })
}

fn classify_enhanced_video(payload: &[u8]) -> Result<VideoInfo, MediaError> {
    let mut r = Reader::new(payload);
    let flags = r.u8()?;
    let frame_type = (flags >> 4) & 0x07;
    let mut packet_type = r.skip_mod_ex(flags & 0x0F, VIDEO_MOD_EX)?;

    // Spec order: ModEx, then command frames (which carry a VideoCommand
    // byte and no FourCC), then Multitrack. Metadata ignores the frame type.
    if packet_type != VIDEO_METADATA {
        if frame_type == FRAME_COMMAND {
            r.u8()?;
            return Ok(VideoInfo {
                codec: VideoCodec::UNSPECIFIED,
                kind: PacketKind::Other,
                keyframe: false,
                enhanced: true,
                multitrack: false,
            });
        }
        if !(1..=4).contains(&frame_type) {
            return Err(MediaError::UnknownFrameType(frame_type));
        }
    }

    let multitrack = packet_type == VIDEO_MULTITRACK;
    if multitrack {
        packet_type = r.multitrack_packet_type(VIDEO_MULTITRACK, VIDEO_MOD_EX)?;
    }
    let kind = match packet_type {
        VIDEO_SEQUENCE_START | VIDEO_MPEG2TS_SEQUENCE_START => PacketKind::SequenceHeader,
        VIDEO_CODED_FRAMES | VIDEO_CODED_FRAMES_X => PacketKind::Frame,
        VIDEO_SEQUENCE_END => PacketKind::EndOfSequence,
        VIDEO_METADATA => PacketKind::Metadata,
        other => return Err(MediaError::UnknownPacketType(other)),
    };
    // With ManyTracksManyCodecs the FourCC moves into each track, but the
    // first track's sits exactly where the shared one would: same read.
    let codec = VideoCodec::from_fourcc(r.fourcc()?);
    Ok(VideoInfo {
        codec,
        kind,
        keyframe: kind == PacketKind::Frame && frame_type == FRAME_KEY,
        enhanced: true,
        multitrack,
    })
}

fn classify_enhanced_audio(payload: &[u8]) -> Result<AudioInfo, MediaError> {
    let mut r = Reader::new(payload);
    let flags = r.u8()?;
    let mut packet_type = r.skip_mod_ex(flags & 0x0F, AUDIO_MOD_EX)?;
    let multitrack = packet_type == AUDIO_MULTITRACK;
    if multitrack {
        packet_type = r.multitrack_packet_type(AUDIO_MULTITRACK, AUDIO_MOD_EX)?;
    }
    let kind = match packet_type {
        AUDIO_SEQUENCE_START => PacketKind::SequenceHeader,
        AUDIO_CODED_FRAMES => PacketKind::Frame,
        AUDIO_SEQUENCE_END => PacketKind::EndOfSequence,
        AUDIO_MULTICHANNEL_CONFIG => PacketKind::Other,
        other => return Err(MediaError::UnknownPacketType(other)),
    };
    let codec = AudioCodec::from_fourcc(r.fourcc()?);
    Ok(AudioInfo {
        codec,
        kind,
        enhanced: true,
        multitrack,
    })
}

/// A single-track coded video tag body, as a muxer reads it: what it is,
/// its composition time, and where its codec data starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoBody {
    pub info: VideoInfo,
    /// The decoder configuration record (legacy AVCPacketType 0, or
    /// Enhanced SequenceStart), not an MPEG-2 TS descriptor.
    pub config: bool,
    /// Composition time offset, ms (legacy AVC/HEVC and Enhanced
    /// CodedFrames of AVC/HEVC carry one; 0 otherwise).
    pub cts_ms: i32,
    /// Where the configuration record or the coded frame data starts.
    pub data_at: usize,
}

/// A single-track audio tag body: what it is and where its codec data
/// starts (the AudioSpecificConfig or the raw frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioBody {
    pub info: AudioInfo,
    pub data_at: usize,
}

fn si24(b: [u8; 3]) -> i32 {
    (i32::from_be_bytes([b[0], b[1], b[2], 0])) >> 8
}

/// Reads a video tag body's header (legacy or Enhanced RTMP, ModEx
/// skipped) to its codec data. Multitrack packets, command frames and
/// Metadata are classified but carry no single track's data: their
/// `data_at` is the payload's end.
pub fn video_body(payload: &[u8]) -> Result<VideoBody, MediaError> {
    let info = classify_video(payload)?;
    let single =
        !info.multitrack && matches!(info.kind, PacketKind::SequenceHeader | PacketKind::Frame);
    if !single {
        return Ok(VideoBody {
            info,
            config: false,
            cts_ms: 0,
            data_at: payload.len(),
        });
    }
    let mut r = Reader::new(payload);
    let flags = r.u8()?;
    let avc_like = matches!(info.codec, VideoCodec::Avc | VideoCodec::Hevc);
    let (config, cts) = if !info.enhanced {
        if !avc_like {
            // Legacy codecs without a packet type: the frame follows.
            return Ok(VideoBody {
                info,
                config: false,
                cts_ms: 0,
                data_at: 1,
            });
        }
        let packet_type = r.u8()?;
        (packet_type == 0, si24(r.take::<3>()?))
    } else {
        let packet_type = r.skip_mod_ex(flags & 0x0F, VIDEO_MOD_EX)?;
        r.fourcc()?;
        let cts = if packet_type == VIDEO_CODED_FRAMES && avc_like {
            si24(r.take::<3>()?)
        } else {
            0
        };
        (packet_type == VIDEO_SEQUENCE_START, cts)
    };
    Ok(VideoBody {
        info,
        config,
        cts_ms: cts,
        data_at: r.pos,
    })
}

/// Reads an audio tag body's header to its codec data (AAC's packet type,
/// Enhanced RTMP's FourCC, ModEx skipped). Multitrack and MultichannelConfig
/// packets carry no single track's data: `data_at` is the payload's end.
pub fn audio_body(payload: &[u8]) -> Result<AudioBody, MediaError> {
    let info = classify_audio(payload)?;
    let single =
        !info.multitrack && matches!(info.kind, PacketKind::SequenceHeader | PacketKind::Frame);
    let data_at = match (single, info.enhanced, info.codec) {
        (false, _, _) => payload.len(),
        (true, false, AudioCodec::Aac) => 2,
        (true, false, _) => 1,
        (true, true, _) => {
            let mut r = Reader::new(payload);
            let flags = r.u8()?;
            r.skip_mod_ex(flags & 0x0F, AUDIO_MOD_EX)?;
            r.fourcc()?;
            r.pos
        }
    };
    Ok(AudioBody { info, data_at })
}

/// One track's share of an audio packet: its id, codec, what it carries
/// and where its codec data lies in the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPart {
    pub track: u8,
    pub codec: AudioCodec,
    pub kind: PacketKind,
    pub data: std::ops::Range<usize>,
}

/// Every track's share of an audio packet, in order, into `out` (cleared
/// first): a single-track packet is track 0 (its data as [`audio_body`]
/// finds it); an Enhanced RTMP Multitrack packet (OneTrack, ManyTracks or
/// ManyTracksManyCodecs) is split per track, each size checked against the
/// payload. At most `max` parts are taken.
pub fn audio_parts(payload: &[u8], max: usize, out: &mut Vec<AudioPart>) -> Result<(), MediaError> {
    out.clear();
    let info = classify_audio(payload)?;
    if !info.multitrack {
        let body = audio_body(payload)?;
        out.push(AudioPart {
            track: 0,
            codec: info.codec,
            kind: info.kind,
            data: body.data_at..payload.len(),
        });
        return Ok(());
    }
    let mut r = Reader::new(payload);
    let flags = r.u8()?;
    r.skip_mod_ex(flags & 0x0F, AUDIO_MOD_EX)?;
    let b = r.buf.get(r.pos).copied().ok_or(MediaError::Truncated)?;
    let (mt_type, packet_type) = (
        b >> 4,
        r.multitrack_packet_type(AUDIO_MULTITRACK, AUDIO_MOD_EX)?,
    );
    let kind = match packet_type {
        AUDIO_SEQUENCE_START => PacketKind::SequenceHeader,
        AUDIO_CODED_FRAMES => PacketKind::Frame,
        AUDIO_SEQUENCE_END => PacketKind::EndOfSequence,
        AUDIO_MULTICHANNEL_CONFIG => PacketKind::Other,
        other => return Err(MediaError::UnknownPacketType(other)),
    };
    let many_codecs = mt_type == MULTITRACK_MANY_CODECS;
    let mut codec = match many_codecs {
        true => AudioCodec::FourCc([0; 4]),
        false => AudioCodec::from_fourcc(r.fourcc()?),
    };
    while r.pos < payload.len() && out.len() < max {
        if many_codecs {
            codec = AudioCodec::from_fourcc(r.fourcc()?);
        }
        let track = r.u8()?;
        let len = match mt_type {
            MULTITRACK_ONE_TRACK => payload.len() - r.pos,
            _ => {
                let [a, b, c] = r.take::<3>()?;
                u32::from_be_bytes([0, a, b, c]) as usize
            }
        };
        let at = r.pos;
        r.skip(len)?;
        out.push(AudioPart {
            track,
            codec,
            kind,
            data: at..at + len,
        });
        if mt_type == MULTITRACK_ONE_TRACK {
            break;
        }
    }
    Ok(())
}

/// The track an Enhanced RTMP multitrack audio packet names (its first
/// track's id); 0 for every other audio packet. A stream keeps one sequence
/// header per track, so a player that joins later can decode every track.
pub fn audio_track(payload: &[u8]) -> u8 {
    let ex = payload.first().is_some_and(|b| b >> 4 == SOUND_EX_HEADER);
    if !ex {
        return 0;
    }
    multitrack_track(payload, AUDIO_MULTITRACK, AUDIO_MOD_EX).unwrap_or(0)
}

/// The track an Enhanced RTMP multitrack video packet names; 0 otherwise.
pub fn video_track(payload: &[u8]) -> u8 {
    let ex = payload.first().is_some_and(|b| b & 0x80 != 0);
    let command = payload
        .first()
        .is_some_and(|b| (b >> 4) & 0x07 == FRAME_COMMAND);
    if !ex || command {
        return 0;
    }
    multitrack_track(payload, VIDEO_MULTITRACK, VIDEO_MOD_EX).unwrap_or(0)
}

/// Walks flags, ModEx and the multitrack header to the first track id:
/// `[flags] [ModEx..] [multitrack type|packet type] FourCC trackId`
/// (ManyTracksManyCodecs puts the first track's FourCC at the same place).
fn multitrack_track(payload: &[u8], multitrack: u8, mod_ex: u8) -> Result<u8, MediaError> {
    let mut r = Reader::new(payload);
    let flags = r.u8()?;
    if r.skip_mod_ex(flags & 0x0F, mod_ex)? != multitrack {
        return Ok(0);
    }
    r.multitrack_packet_type(multitrack, mod_ex)?;
    r.fourcc()?;
    r.u8()
}

/// Bounds-checked cursor over a payload prefix.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn u8(&mut self) -> Result<u8, MediaError> {
        let b = *self.buf.get(self.pos).ok_or(MediaError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], MediaError> {
        let end = self.pos.checked_add(N).ok_or(MediaError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(MediaError::Truncated)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        self.pos = end;
        Ok(out)
    }

    fn fourcc(&mut self) -> Result<[u8; 4], MediaError> {
        self.take::<4>()
    }

    fn skip(&mut self, n: usize) -> Result<(), MediaError> {
        let end = self.pos.checked_add(n).ok_or(MediaError::Truncated)?;
        if end > self.buf.len() {
            return Err(MediaError::Truncated);
        }
        self.pos = end;
        Ok(())
    }

    /// Skips any ModEx blocks (Enhanced RTMP v2) and returns the packet type
    /// they wrap. Each block: size UI8 + 1 (a size of 256 means a UI16 + 1
    /// follows instead), the data, then ModExType (high nibble, ignored: only
    /// TimestampOffsetNano exists and it does not change classification) and
    /// the next packet type (low nibble). Every pass consumes at least three
    /// bytes, so the loop ends with the payload.
    fn skip_mod_ex(&mut self, mut packet_type: u8, mod_ex: u8) -> Result<u8, MediaError> {
        while packet_type == mod_ex {
            let mut size = usize::from(self.u8()?) + 1;
            if size == 256 {
                size = usize::from(u16::from_be_bytes(self.take::<2>()?)) + 1;
            }
            self.skip(size)?;
            packet_type = self.u8()? & 0x0F;
        }
        Ok(packet_type)
    }

    /// Reads the AvMultitrackType / per-track PacketType byte.
    fn multitrack_packet_type(&mut self, multitrack: u8, mod_ex: u8) -> Result<u8, MediaError> {
        let b = self.u8()?;
        let multitrack_type = b >> 4;
        if multitrack_type > MULTITRACK_MANY_CODECS {
            return Err(MediaError::UnknownMultitrackType(multitrack_type));
        }
        let packet_type = b & 0x0F;
        if packet_type == multitrack || packet_type == mod_ex {
            return Err(MediaError::NestedPacketType(packet_type));
        }
        Ok(packet_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_bodies_are_read_to_their_codec_data() {
        // Legacy AVC: a keyframe with a negative composition time.
        let b = video_body(&[0x17, 1, 0xFF, 0xFF, 0xFE, 9]).unwrap();
        assert_eq!(
            (b.info.keyframe, b.config, b.cts_ms, b.data_at),
            (true, false, -2, 5)
        );
        let b = video_body(&[0x17, 0, 0, 0, 0, 1, 2]).unwrap();
        assert_eq!((b.config, b.data_at), (true, 5));
        // Enhanced: HEVC SequenceStart, AVC CodedFrames (with cts) and
        // CodedFramesX (without), AV1 CodedFrames (no cts), and a ModEx
        // block before the packet type.
        let b = video_body(&[0x90, b'h', b'v', b'c', b'1', 7]).unwrap();
        assert_eq!(
            (b.info.codec, b.config, b.data_at),
            (VideoCodec::Hevc, true, 5)
        );
        let b = video_body(&[0x91, b'a', b'v', b'c', b'1', 0, 0, 3, 9]).unwrap();
        assert_eq!((b.cts_ms, b.data_at), (3, 8));
        let b = video_body(&[0xA3, b'a', b'v', b'c', b'1', 9]).unwrap();
        assert_eq!((b.info.keyframe, b.cts_ms, b.data_at), (false, 0, 5));
        let b = video_body(&[0x91, b'a', b'v', b'0', b'1', 9]).unwrap();
        assert_eq!((b.cts_ms, b.data_at), (0, 5));
        let b = video_body(&[0x97, 0, 0xAA, 0x01, b'a', b'v', b'0', b'1', 9]).unwrap();
        assert_eq!((b.info.codec, b.data_at), (VideoCodec::Av1, 8));
        // MPEG2TSSequenceStart is a sequence header, not a config record.
        assert!(
            !video_body(&[0x95, b'a', b'v', b'0', b'1', 9])
                .unwrap()
                .config
        );
        // A legacy codec without a packet type, and truncated headers.
        assert_eq!(video_body(&[0x22, 9]).unwrap().data_at, 1);
        assert!(video_body(&[0x17, 1, 0]).is_err());
        assert!(video_body(&[0x91, b'a', b'v', b'c', b'1', 0]).is_err());
        // Audio: legacy AAC, Enhanced Opus, and a legacy codec.
        let a = audio_body(&[0xAF, 0, 0x12, 0x10]).unwrap();
        assert_eq!((a.info.kind, a.data_at), (PacketKind::SequenceHeader, 2));
        let a = audio_body(&[0x91, b'O', b'p', b'u', b's', 3]).unwrap();
        assert_eq!(
            (a.info.codec, a.info.kind, a.data_at),
            (AudioCodec::Opus, PacketKind::Frame, 5)
        );
        assert_eq!(audio_body(&[0x2F, 1]).unwrap().data_at, 1);
        assert!(audio_body(&[0xAF]).is_err());
    }

    /// A real AVCDecoderConfigurationRecord (x264 baseline 320x240: SPS and
    /// PPS) behind the legacy `0x17 0x00 000000` header.
    const AVC_SEQUENCE_HEADER: &[u8] = &[
        0x17, 0x00, 0x00, 0x00, 0x00, // keyframe | AVC, seq header, cts 0
        0x01, 0x42, 0xC0, 0x1E, 0xFF, // version, profile 66, compat, level 30, NALU len 4
        0xE1, 0x00, 0x19, // 1 SPS, 25 bytes
        0x67, 0x42, 0xC0, 0x1E, 0xD9, 0x01, 0x41, 0xFB, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0xC0, 0xF1, 0x62, 0xE4, 0x80, 0x00, // SPS
        0x01, 0x00, 0x04, // 1 PPS, 4 bytes
        0x68, 0xCB, 0x83, 0xCB, // PPS
    ];

    fn video(payload: &[u8]) -> VideoInfo {
        classify_video(payload).unwrap()
    }

    fn audio(payload: &[u8]) -> AudioInfo {
        classify_audio(payload).unwrap()
    }

    fn legacy_video(codec: VideoCodec, kind: PacketKind, keyframe: bool) -> VideoInfo {
        VideoInfo {
            codec,
            kind,
            keyframe,
            enhanced: false,
            multitrack: false,
        }
    }

    fn enhanced_video(codec: VideoCodec, kind: PacketKind, keyframe: bool) -> VideoInfo {
        VideoInfo {
            codec,
            kind,
            keyframe,
            enhanced: true,
            multitrack: false,
        }
    }

    fn enhanced_audio(codec: AudioCodec, kind: PacketKind) -> AudioInfo {
        AudioInfo {
            codec,
            kind,
            enhanced: true,
            multitrack: false,
        }
    }

    #[test]
    fn avc_sequence_header() {
        assert_eq!(
            video(AVC_SEQUENCE_HEADER),
            legacy_video(VideoCodec::Avc, PacketKind::SequenceHeader, false)
        );
    }

    #[test]
    fn avc_frames() {
        // Keyframe: IDR NALU behind a 4-byte length, cts 0x000042.
        let key = [0x17, 0x01, 0x00, 0x00, 0x42, 0, 0, 0, 2, 0x65, 0x88];
        assert_eq!(
            video(&key),
            legacy_video(VideoCodec::Avc, PacketKind::Frame, true)
        );
        let inter = [0x27, 0x01, 0x00, 0x00, 0x00, 0, 0, 0, 2, 0x41, 0x9A];
        assert_eq!(
            video(&inter),
            legacy_video(VideoCodec::Avc, PacketKind::Frame, false)
        );
        let eos = [0x17, 0x02, 0, 0, 0];
        assert_eq!(
            video(&eos),
            legacy_video(VideoCodec::Avc, PacketKind::EndOfSequence, false)
        );
    }

    #[test]
    fn legacy_hevc() {
        let seq = [0x1C, 0x00, 0, 0, 0, 0x01, 0x01, 0x60];
        assert_eq!(
            video(&seq),
            legacy_video(VideoCodec::Hevc, PacketKind::SequenceHeader, false)
        );
        let key = [0x1C, 0x01, 0, 0, 0, 0, 0, 0, 2, 0x26, 0x01];
        assert_eq!(
            video(&key),
            legacy_video(VideoCodec::Hevc, PacketKind::Frame, true)
        );
        let inter = [0x2C, 0x01, 0, 0, 0, 0, 0, 0, 2, 0x02, 0x01];
        assert_eq!(
            video(&inter),
            legacy_video(VideoCodec::Hevc, PacketKind::Frame, false)
        );
    }

    #[test]
    fn other_legacy_video() {
        // Sorenson H.263 keyframe, VP6 inter frame: no packet type byte.
        assert_eq!(
            video(&[0x12, 0x00, 0x00]),
            legacy_video(VideoCodec::Legacy(2), PacketKind::Frame, true)
        );
        assert_eq!(
            video(&[0x24]),
            legacy_video(VideoCodec::Legacy(4), PacketKind::Frame, false)
        );
        // Command frame (start of seek) is not media.
        assert_eq!(
            video(&[0x57, 0x00]),
            legacy_video(VideoCodec::Avc, PacketKind::Other, false)
        );
        // Generated keyframe is not a keyframe for our purposes.
        assert!(!video(&[0x47, 0x01, 0, 0, 0]).keyframe);
    }

    #[test]
    fn aac_and_mp3() {
        assert_eq!(
            audio(&[0xAF, 0x00, 0x12, 0x10]),
            legacy_audio(AudioCodec::Aac, PacketKind::SequenceHeader)
        );
        assert_eq!(
            audio(&[0xAF, 0x01, 0x21, 0x10, 0x04, 0x60]),
            legacy_audio(AudioCodec::Aac, PacketKind::Frame)
        );
        // Mono AAC flags still mean AAC.
        assert_eq!(audio(&[0xAE, 0x01, 0x21]).codec, AudioCodec::Aac);
        assert_eq!(
            audio(&[0x2F, 0xFF, 0xFB, 0x90, 0x64]),
            legacy_audio(AudioCodec::Mp3, PacketKind::Frame)
        );
        assert_eq!(audio(&[0xE2, 0xFF]).codec, AudioCodec::Mp3);
        assert_eq!(
            audio(&[0x82, 0xD5]),
            legacy_audio(AudioCodec::Legacy(8), PacketKind::Frame)
        );
    }

    #[test]
    fn enhanced_hevc() {
        // 0x90: ex header | keyframe | SequenceStart.
        let seq = [0x90, b'h', b'v', b'c', b'1', 0x01, 0x01, 0x60];
        assert_eq!(
            video(&seq),
            enhanced_video(VideoCodec::Hevc, PacketKind::SequenceHeader, false)
        );
        // CodedFrames carries SI24 composition time.
        let key = [
            0x91, b'h', b'v', b'c', b'1', 0, 0, 0x21, 0, 0, 0, 2, 0x26, 0x01,
        ];
        assert_eq!(
            video(&key),
            enhanced_video(VideoCodec::Hevc, PacketKind::Frame, true)
        );
        // CodedFramesX: no composition time.
        let inter = [0xA3, b'h', b'v', b'c', b'1', 0, 0, 0, 2, 0x02, 0x01];
        assert_eq!(
            video(&inter),
            enhanced_video(VideoCodec::Hevc, PacketKind::Frame, false)
        );
        let end = [0x92, b'h', b'v', b'c', b'1'];
        assert_eq!(
            video(&end),
            enhanced_video(VideoCodec::Hevc, PacketKind::EndOfSequence, false)
        );
    }

    #[test]
    fn enhanced_av1_and_vp9() {
        let av1_seq = [0x90, b'a', b'v', b'0', b'1', 0x81, 0x00, 0x0C, 0x00];
        assert_eq!(
            video(&av1_seq),
            enhanced_video(VideoCodec::Av1, PacketKind::SequenceHeader, false)
        );
        let av1_key = [0x91, b'a', b'v', b'0', b'1', 0x12, 0x00, 0x0A];
        assert_eq!(
            video(&av1_key),
            enhanced_video(VideoCodec::Av1, PacketKind::Frame, true)
        );
        let av1_inter = [0xA1, b'a', b'v', b'0', b'1', 0x12, 0x00, 0x32];
        assert_eq!(
            video(&av1_inter),
            enhanced_video(VideoCodec::Av1, PacketKind::Frame, false)
        );
        let vp9_seq = [0x90, b'v', b'p', b'0', b'9', 0x01, 0x00, 0x00, 0x00];
        assert_eq!(
            video(&vp9_seq),
            enhanced_video(VideoCodec::Vp9, PacketKind::SequenceHeader, false)
        );
        let vp9_key = [0x93, b'v', b'p', b'0', b'9', 0x82, 0x49, 0x83];
        assert_eq!(
            video(&vp9_key),
            enhanced_video(VideoCodec::Vp9, PacketKind::Frame, true)
        );
        let vp9_inter = [0xA3, b'v', b'p', b'0', b'9', 0x86, 0x00];
        assert_eq!(
            video(&vp9_inter),
            enhanced_video(VideoCodec::Vp9, PacketKind::Frame, false)
        );
        // AVC over the enhanced header, and the other FourCCs.
        assert_eq!(
            video(&[0x91, b'a', b'v', b'c', b'1', 0, 0, 0]).codec,
            VideoCodec::Avc
        );
        assert_eq!(
            video(&[0x93, b'v', b'p', b'0', b'8']).codec,
            VideoCodec::Vp8
        );
        assert_eq!(
            video(&[0x93, b'v', b'v', b'c', b'1']).codec,
            VideoCodec::Vvc
        );
        assert_eq!(
            video(&[0x93, b'x', b'y', b'z', b'w']).codec,
            VideoCodec::FourCc(*b"xyzw")
        );
    }

    #[test]
    fn enhanced_metadata_mpeg2ts_and_command() {
        // Metadata ignores the frame type, even a reserved one.
        let meta = [0x84, b'h', b'v', b'c', b'1', 0x02];
        assert_eq!(
            video(&meta),
            enhanced_video(VideoCodec::Hevc, PacketKind::Metadata, false)
        );
        let meta_reserved_frame = [0xF4, b'h', b'v', b'c', b'1', 0x02];
        assert_eq!(video(&meta_reserved_frame).kind, PacketKind::Metadata);
        let ts = [0x95, b'h', b'v', b'c', b'1'];
        assert_eq!(video(&ts).kind, PacketKind::SequenceHeader);
        // Command frame: one VideoCommand byte, no FourCC.
        let cmd = [0xD1, 0x01];
        assert_eq!(
            video(&cmd),
            enhanced_video(VideoCodec::UNSPECIFIED, PacketKind::Other, false)
        );
    }

    #[test]
    fn audio_parts_split_every_track_and_check_each_size() {
        let mut out = Vec::new();
        // Legacy AAC frame: track 0, data after the packet type.
        audio_parts(&[0xAF, 0x01, 0x21, 0x10], 8, &mut out).unwrap();
        assert_eq!(
            out,
            vec![AudioPart {
                track: 0,
                codec: AudioCodec::Aac,
                kind: PacketKind::Frame,
                data: 2..4
            }]
        );
        // Multitrack (5) | OneTrack | SequenceStart; mp4a; track 1; the ASC.
        let one = [0x95, 0x00, b'm', b'p', b'4', b'a', 0x01, 0x12, 0x10];
        audio_parts(&one, 8, &mut out).unwrap();
        assert_eq!(
            out,
            vec![AudioPart {
                track: 1,
                codec: AudioCodec::Aac,
                kind: PacketKind::SequenceHeader,
                data: 7..9
            }]
        );
        // ManyTracks | CodedFrames; Opus; tracks 1 and 2, sizes 1 and 2.
        let many = [
            0x95, 0x11, b'O', b'p', b'u', b's', 0x01, 0, 0, 1, 0xAA, 0x02, 0, 0, 2, 0xBB, 0xCC,
        ];
        audio_parts(&many, 8, &mut out).unwrap();
        let got: Vec<(u8, AudioCodec, std::ops::Range<usize>)> = out
            .iter()
            .map(|p| (p.track, p.codec, p.data.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(1, AudioCodec::Opus, 10..11), (2, AudioCodec::Opus, 15..17)]
        );
        audio_parts(&many, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1, "at most max parts");
        // ManyTracksManyCodecs: a FourCC per track.
        let codecs = [
            0x95, 0x21, b'm', b'p', b'4', b'a', 0x00, 0, 0, 1, 0xAA, b'O', b'p', b'u', b's', 0x03,
            0, 0, 1, 0xBB,
        ];
        audio_parts(&codecs, 8, &mut out).unwrap();
        let got: Vec<(u8, AudioCodec)> = out.iter().map(|p| (p.track, p.codec)).collect();
        assert_eq!(got, vec![(0, AudioCodec::Aac), (3, AudioCodec::Opus)]);
        // A size past the payload, a truncated track header: refused.
        let long = [0x95, 0x11, b'O', b'p', b'u', b's', 0x01, 0, 0, 9, 0xAA];
        assert_eq!(audio_parts(&long, 8, &mut out), Err(MediaError::Truncated));
        let cut = [0x95, 0x11, b'O', b'p', b'u', b's', 0x01, 0];
        assert_eq!(audio_parts(&cut, 8, &mut out), Err(MediaError::Truncated));
        assert!(audio_parts(&[], 8, &mut out).is_err());
    }

    #[test]
    fn multitrack_one_track() {
        // Multitrack (6) | keyframe; OneTrack | CodedFrames; av01; track 0.
        let tag = [0x96, 0x01, b'a', b'v', b'0', b'1', 0x00, 0x12, 0x00];
        assert_eq!(
            video(&tag),
            VideoInfo {
                codec: VideoCodec::Av1,
                kind: PacketKind::Frame,
                keyframe: true,
                enhanced: true,
                multitrack: true,
            }
        );
    }

    #[test]
    fn multitrack_many_tracks_many_codecs() {
        // ManyTracksManyCodecs | SequenceStart; then per track FourCC,
        // trackId, UI24 size, body.
        let tag = [
            0x96, 0x20, //
            b'h', b'v', b'c', b'1', 0x00, 0x00, 0x00, 0x02, 0x01, 0x01, //
            b'a', b'v', b'c', b'1', 0x01, 0x00, 0x00, 0x02, 0x01, 0x42,
        ];
        assert_eq!(
            video(&tag),
            VideoInfo {
                codec: VideoCodec::Hevc,
                kind: PacketKind::SequenceHeader,
                keyframe: false,
                enhanced: true,
                multitrack: true,
            }
        );
        // ManyTracks shares one FourCC up front.
        let many = [
            0xA6, 0x11, b'v', b'p', b'0', b'9', 0x00, 0x00, 0x00, 0x01, 0x86, 0x01, 0x00, 0x00,
            0x01, 0x86,
        ];
        let info = video(&many);
        assert_eq!(info.codec, VideoCodec::Vp9);
        assert_eq!(info.kind, PacketKind::Frame);
        assert!(!info.keyframe && info.multitrack);
    }

    #[test]
    fn multitrack_rejects_nesting_and_unknown_types() {
        assert_eq!(
            classify_video(&[0x96, 0x06, b'a', b'v', b'0', b'1']),
            Err(MediaError::NestedPacketType(6))
        );
        assert_eq!(
            classify_video(&[0x96, 0x31, b'a', b'v', b'0', b'1']),
            Err(MediaError::UnknownMultitrackType(3))
        );
        assert_eq!(
            classify_audio(&[0x95, 0x07, b'O', b'p', b'u', b's']),
            Err(MediaError::NestedPacketType(7))
        );
    }

    #[test]
    fn mod_ex_wrapped() {
        // ModEx (7) | keyframe; 3 bytes of TimestampOffsetNano; then
        // ModExType 0 | CodedFrames; FourCC.
        let tag = [
            0x97, 0x02, 0x00, 0x01, 0x00, 0x01, b'h', b'v', b'c', b'1', 0, 0, 0,
        ];
        assert_eq!(
            video(&tag),
            enhanced_video(VideoCodec::Hevc, PacketKind::Frame, true)
        );
        // Two ModEx blocks, the second one with a 16-bit size (300 bytes),
        // wrapping a Multitrack OneTrack SequenceStart.
        let mut tag = vec![0x97, 0x00, 0xAA, 0x07, 0xFF, 0x01, 0x2B];
        tag.extend_from_slice(&[0u8; 300]);
        tag.extend_from_slice(&[0x06, 0x00, b'a', b'v', b'0', b'1', 0x00]);
        let info = video(&tag);
        assert_eq!(info.codec, VideoCodec::Av1);
        assert_eq!(info.kind, PacketKind::SequenceHeader);
        assert!(info.multitrack && !info.keyframe);
        // Audio ModEx around CodedFrames.
        let audio_tag = [
            0x97, 0x02, 0x00, 0x01, 0x00, 0x01, b'O', b'p', b'u', b's', 0xFC,
        ];
        assert_eq!(
            audio(&audio_tag),
            enhanced_audio(AudioCodec::Opus, PacketKind::Frame)
        );
        // A ModEx block running past the end is truncation, not a panic.
        assert_eq!(
            classify_video(&[0x97, 0x10, 0x00]),
            Err(MediaError::Truncated)
        );
        assert_eq!(
            classify_video(&[0x97, 0xFF, 0xFF]),
            Err(MediaError::Truncated)
        );
    }

    #[test]
    fn enhanced_audio_codecs() {
        // Opus ID header as SequenceStart.
        let opus_seq = [
            0x90, b'O', b'p', b'u', b's', b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd',
        ];
        assert_eq!(
            audio(&opus_seq),
            enhanced_audio(AudioCodec::Opus, PacketKind::SequenceHeader)
        );
        assert_eq!(
            audio(&[0x91, b'O', b'p', b'u', b's', 0xFC, 0xFF]),
            enhanced_audio(AudioCodec::Opus, PacketKind::Frame)
        );
        let flac_seq = [0x90, b'f', b'L', b'a', b'C', b'f', b'L', b'a', b'C', 0x00];
        assert_eq!(
            audio(&flac_seq),
            enhanced_audio(AudioCodec::Flac, PacketKind::SequenceHeader)
        );
        assert_eq!(
            audio(&[0x91, b'f', b'L', b'a', b'C', 0xFF, 0xF8]),
            enhanced_audio(AudioCodec::Flac, PacketKind::Frame)
        );
        assert_eq!(
            audio(&[0x92, b'm', b'p', b'4', b'a']),
            enhanced_audio(AudioCodec::Aac, PacketKind::EndOfSequence)
        );
        assert_eq!(
            audio(&[0x94, b'a', b'c', b'-', b'3', 0x01, 0x02]),
            enhanced_audio(AudioCodec::Ac3, PacketKind::Other)
        );
        assert_eq!(
            audio(&[0x91, b'e', b'c', b'-', b'3']).codec,
            AudioCodec::Eac3
        );
        assert_eq!(
            audio(&[0x91, b'.', b'm', b'p', b'3']).codec,
            AudioCodec::Mp3
        );
        assert_eq!(
            audio(&[0x91, b'a', b'b', b'c', b'd']).codec,
            AudioCodec::FourCc(*b"abcd")
        );
        // Multitrack ManyTracks of Opus.
        let mt = [
            0x95, 0x11, b'O', b'p', b'u', b's', 0x00, 0x00, 0x00, 0x01, 0xFC,
        ];
        assert_eq!(
            audio(&mt),
            AudioInfo {
                codec: AudioCodec::Opus,
                kind: PacketKind::Frame,
                enhanced: true,
                multitrack: true,
            }
        );
    }

    #[test]
    fn reserved_values_are_errors() {
        assert_eq!(
            classify_video(&[0x07, 0x01, 0, 0, 0]),
            Err(MediaError::UnknownFrameType(0))
        );
        assert_eq!(
            classify_video(&[0xE1, b'a', b'v', b'0', b'1']),
            Err(MediaError::UnknownFrameType(6))
        );
        assert_eq!(
            classify_video(&[0x17, 0x03, 0, 0, 0]),
            Err(MediaError::UnknownPacketType(3))
        );
        assert_eq!(
            classify_video(&[0x98, b'a', b'v', b'0', b'1']),
            Err(MediaError::UnknownPacketType(8))
        );
        assert_eq!(
            classify_audio(&[0xAF, 0x02]),
            Err(MediaError::UnknownPacketType(2))
        );
        assert_eq!(
            classify_audio(&[0x93, b'm', b'p', b'4', b'a']),
            Err(MediaError::UnknownPacketType(3))
        );
    }

    #[test]
    fn truncated_inputs_are_errors() {
        assert_eq!(classify_video(&[]), Err(MediaError::Empty));
        assert_eq!(classify_audio(&[]), Err(MediaError::Empty));
        for cut in 1..LEGACY_AVC_HEADER_LEN {
            assert_eq!(
                classify_video(&AVC_SEQUENCE_HEADER[..cut]),
                Err(MediaError::Truncated),
                "cut at {cut}"
            );
        }
        assert_eq!(classify_audio(&[0xAF]), Err(MediaError::Truncated));
        for cut in 1..5 {
            assert_eq!(
                classify_video(&[0x90, b'h', b'v', b'c', b'1'][..cut]),
                Err(MediaError::Truncated)
            );
            assert_eq!(
                classify_audio(&[0x90, b'O', b'p', b'u', b's'][..cut]),
                Err(MediaError::Truncated)
            );
        }
        assert_eq!(classify_video(&[0x96]), Err(MediaError::Truncated));
        assert_eq!(
            classify_video(&[0x96, 0x20, b'h']),
            Err(MediaError::Truncated)
        );
        assert_eq!(classify_video(&[0xD1]), Err(MediaError::Truncated));
        assert_eq!(classify_video(&[0x57]), Err(MediaError::Truncated));
    }

    #[test]
    fn fourcc_round_trip() {
        for codec in [
            VideoCodec::Avc,
            VideoCodec::Hevc,
            VideoCodec::Av1,
            VideoCodec::Vp9,
            VideoCodec::Vp8,
            VideoCodec::Vvc,
        ] {
            let fourcc = codec.fourcc().unwrap();
            assert_eq!(VideoCodec::from_fourcc(fourcc), codec);
        }
        for codec in [
            AudioCodec::Aac,
            AudioCodec::Mp3,
            AudioCodec::Opus,
            AudioCodec::Flac,
            AudioCodec::Ac3,
            AudioCodec::Eac3,
        ] {
            let fourcc = codec.fourcc().unwrap();
            assert_eq!(AudioCodec::from_fourcc(fourcc), codec);
        }
        assert_eq!(VideoCodec::Legacy(2).fourcc(), None);
        assert_eq!(AudioCodec::Legacy(3).fourcc(), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = classify_video(&payload);
            let _ = classify_audio(&payload);
        }
    }
}
