//! MPEG-TS in: what an SRT publisher sends (188-byte packets, seven to a
//! 1316-byte message), turned into the stream model's FLV-style messages.
//! Sans-IO: bytes in, [`RawMessage`]s out, nothing held past a bound.
//!
//! - [`mpeg2ts_reader`] finds the programme (PAT, PMT, a changed PMT) and
//!   cuts each elementary stream into PES packets with their PTS and DTS.
//! - H.264 (stream type 0x1B): each access unit's Annex B NAL units become
//!   one AVC video message (length-prefixed NAL units, composition time
//!   from PTS - DTS); SPS and PPS become the AVC sequence header, sent
//!   again whenever they change; access unit delimiters are dropped.
//!   Video starts at the first IDR picture.
//! - HEVC (0x24): the same, as Enhanced RTMP (`hvc1`): VPS, SPS and PPS
//!   become the HEVCDecoderConfigurationRecord of the sequence start
//!   (profile, tier, level and flags from the SPS; 4:2:0 8-bit assumed
//!   in the record's informative fields, the parameter sets themselves
//!   carried whole); video starts at the first IRAP picture.
//! - AAC in ADTS (0x0F): each frame becomes one AAC audio message; the
//!   ADTS header gives the AudioSpecificConfig of the sequence header.
//! - Opus (private data, 0x06, with the registration descriptor `Opus`):
//!   each access unit after its control header becomes one Enhanced RTMP
//!   `Opus` message; the sequence start is an OpusHead whose channel count
//!   the first packet's TOC byte gives (mono or stereo, mapping family 0).
//! - Other stream types are skipped and named once ([`TsIn::skipped`]).
//! - Timestamps are milliseconds from the first one seen, across the
//!   33-bit wrap.
//!
//! A PES is complete when the next one of its stream starts (the reader
//! ends a PES there), so each stream's messages leave one PES late: a
//! frame of video, a PES of audio. A PES over [`MAX_PES`] is dropped, as
//! is one hit by a continuity error (a lost packet); both are counted.

use bytes::{BufMut, Bytes, BytesMut};
use mpeg2ts_reader::demultiplex::{
    self, DemuxContext, FilterChangeset, FilterRequest, PatPacketFilter, PmtPacketFilter,
};
use mpeg2ts_reader::descriptor::CoreDescriptors;
use mpeg2ts_reader::pes::{self, ElementaryStreamConsumer, PesContents, PesHeader, PtsDts};
use mpeg2ts_reader::smptera::FormatIdentifier;
use mpeg2ts_reader::StreamType;

use crate::protocol::{MessageType, RawMessage};

/// The largest PES taken (a 4K keyframe is well under it).
pub const MAX_PES: usize = 8 * 1024 * 1024;

/// The chunk streams the messages name (as an encoder's).
const VIDEO_CSID: u32 = 6;
const AUDIO_CSID: u32 = 4;

/// 2^33: where PTS and DTS wrap.
const WRAP: u64 = 1 << 33;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    H264,
    Hevc,
    Aac,
    Opus,
}

/// One PES, complete.
struct Pes {
    kind: Kind,
    pts: Option<u64>,
    dts: Option<u64>,
    data: Vec<u8>,
}

mpeg2ts_reader::packet_filter_switch! {
    Filter<Ctx> {
        Pes: pes::PesPacketFilter<Ctx, Es>,
        Pat: PatPacketFilter<Ctx>,
        Pmt: PmtPacketFilter<Ctx>,
        Null: demultiplex::NullPacketFilter<Ctx>,
    }
}

/// The reader's context: its filters, and what they completed.
pub struct Ctx {
    changeset: FilterChangeset<Filter>,
    done: Vec<Pes>,
    /// Stream types met and not served (named once each).
    skipped: Vec<u8>,
    dropped: u64,
    /// Served streams the programme announced: (video, audio).
    announced: (bool, bool),
}

impl DemuxContext for Ctx {
    type F = Filter;

    fn filter_changeset(&mut self) -> &mut FilterChangeset<Filter> {
        &mut self.changeset
    }

    fn construct(&mut self, req: FilterRequest<'_, '_>) -> Filter {
        match req {
            FilterRequest::ByPid(mpeg2ts_reader::psi::pat::PAT_PID) => {
                Filter::Pat(PatPacketFilter::default())
            }
            FilterRequest::ByPid(_) | FilterRequest::Nit { .. } => {
                Filter::Null(demultiplex::NullPacketFilter::default())
            }
            FilterRequest::Pmt {
                pid,
                program_number,
            } => Filter::Pmt(PmtPacketFilter::new(pid, program_number)),
            FilterRequest::ByStream {
                stream_type,
                stream_info,
                ..
            } => {
                let opus = || {
                    stream_info.descriptors::<CoreDescriptors<'_>>().any(|d| {
                        matches!(d, Ok(CoreDescriptors::Registration(r))
                            if r.format_identifier() == FormatIdentifier::from(&b"Opus"[..]))
                    })
                };
                let kind = match stream_type {
                    StreamType::H264 => Kind::H264,
                    StreamType::H265 => Kind::Hevc,
                    StreamType::ADTS => Kind::Aac,
                    StreamType::H222_0_PES_PRIVATE_DATA if opus() => Kind::Opus,
                    other => {
                        let code = u8::from(other);
                        if !self.skipped.contains(&code) {
                            self.skipped.push(code);
                        }
                        return Filter::Null(demultiplex::NullPacketFilter::default());
                    }
                };
                match kind {
                    Kind::H264 | Kind::Hevc => self.announced.0 = true,
                    Kind::Aac | Kind::Opus => self.announced.1 = true,
                }
                Filter::Pes(pes::PesPacketFilter::new(Es {
                    kind,
                    current: None,
                    expect: None,
                    over: false,
                    last_len: 0,
                }))
            }
        }
    }
}

/// One elementary stream's PES being gathered.
pub struct Es {
    kind: Kind,
    current: Option<Pes>,
    /// The payload length a bounded PES header announced.
    expect: Option<usize>,
    /// A bounded PES was taken whole; more payload before the next start
    /// means it was taken short.
    over: bool,
    /// The size of the last PES taken.
    last_len: usize,
}

impl Es {
    fn complete_if_whole(&mut self, ctx: &mut Ctx) {
        let whole = match (&self.current, self.expect) {
            (Some(p), Some(n)) => p.data.len() >= n,
            _ => false,
        };
        if whole {
            if let Some(p) = self.current.take() {
                self.last_len = p.data.len();
                ctx.done.push(p);
            }
            self.over = true;
        }
    }
}

impl ElementaryStreamConsumer<Ctx> for Es {
    fn start_stream(&mut self, _ctx: &mut Ctx) {}

    fn begin_packet(&mut self, ctx: &mut Ctx, header: PesHeader<'_>) {
        if let Some(p) = self.current.take() {
            self.last_len = p.data.len();
            ctx.done.push(p);
        }
        self.over = false;
        let length = match header.pes_packet_length() {
            pes::PesLength::Bounded(l) => Some(usize::from(l.get())),
            pes::PesLength::Unbounded => None,
        };
        let PesContents::Parsed(Some(parsed)) = header.contents() else {
            return;
        };
        let (pts, dts, fields) = match parsed.pts_dts() {
            Ok(PtsDts::PtsOnly(Ok(pts))) => (Some(pts.value()), Some(pts.value()), 5),
            Ok(PtsDts::Both {
                pts: Ok(pts),
                dts: Ok(dts),
            }) => (Some(pts.value()), Some(dts.value()), 10),
            _ => (None, None, 0),
        };
        let payload = parsed.payload();
        if payload.len() > MAX_PES {
            ctx.dropped += 1;
            return;
        }
        // A bounded PES is whole once its payload is in: taken then, not
        // when the next one starts (a frame earlier). Its header holds
        // the timestamps and, from the muxers met, nothing else; were
        // there more, the PES would be taken short, and what follows it is
        // counted as dropped.
        self.expect = length.and_then(|l| l.checked_sub(3 + fields));
        // Room for the whole PES at once where its length is known, or for
        // one as large as the last (frames of a stream are alike): no
        // regrowth copies as its packets come in.
        let room = self
            .expect
            .unwrap_or(self.last_len)
            .clamp(payload.len(), MAX_PES);
        let mut data = Vec::with_capacity(room);
        data.extend_from_slice(payload);
        self.current = Some(Pes {
            kind: self.kind,
            pts,
            dts,
            data,
        });
        self.complete_if_whole(ctx);
    }

    fn continue_packet(&mut self, ctx: &mut Ctx, data: &[u8]) {
        if self.over {
            // Past a bounded PES's end, before the next one starts.
            ctx.dropped += 1;
            self.over = false;
            return;
        }
        if let Some(p) = &mut self.current {
            if p.data.len() + data.len() > MAX_PES {
                self.current = None;
                ctx.dropped += 1;
            } else {
                p.data.extend_from_slice(data);
            }
        }
        self.complete_if_whole(ctx);
    }

    fn end_packet(&mut self, ctx: &mut Ctx) {
        if let Some(p) = self.current.take() {
            self.last_len = p.data.len();
            ctx.done.push(p);
        }
    }

    fn continuity_error(&mut self, ctx: &mut Ctx) {
        if self.current.take().is_some() {
            ctx.dropped += 1;
        }
    }
}

/// One TS packet.
const PACKET: usize = 188;
/// How much a stream's start may hold while it waits for every track's
/// configuration: past either bound, what came is sent as it is.
const MAX_HELD: usize = 8 * 1024 * 1024;
const MAX_HELD_MS: u32 = 3000;

/// A sequence header (AVC/AAC, or Enhanced RTMP's sequence start).
fn is_header(m: &RawMessage) -> bool {
    use crate::protocol::media::{classify_audio, classify_video, PacketKind};
    match m.type_id {
        MessageType::VIDEO => {
            classify_video(&m.payload).is_ok_and(|i| i.kind == PacketKind::SequenceHeader)
        }
        MessageType::AUDIO => {
            classify_audio(&m.payload).is_ok_and(|i| i.kind == PacketKind::SequenceHeader)
        }
        _ => false,
    }
}

/// A stream's TS in, its messages out.
pub struct TsIn {
    ctx: Ctx,
    demux: demultiplex::Demultiplex<Ctx>,
    /// The first timestamp (90 kHz, unwrapped) and the last seen.
    base: Option<u64>,
    last: u64,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    /// HEVC's VPS (its SPS and PPS share the fields above).
    vps: Option<Bytes>,
    /// The AVC sequence header was sent and an IDR picture seen since.
    video_started: bool,
    header_sent: bool,
    audio_config: Option<[u8; 2]>,
    /// Opus: the channel count its sequence start named.
    opus_channels: Option<u8>,
    messages: u64,
    /// The start of a packet an earlier call ended in (a caller such as
    /// srt-live-transmit cuts its messages anywhere, not at packets).
    carry: Vec<u8>,
    /// Until every announced stream has its configuration (or the wait is
    /// over), messages wait here, so that the stream starts, as an RTMP
    /// publish does, with every sequence header before any frame: a player
    /// or packager that starts with the first keyframe knows every track.
    held: Option<Vec<RawMessage>>,
    held_bytes: usize,
}

impl Default for TsIn {
    fn default() -> Self {
        Self::new()
    }
}

impl TsIn {
    pub fn new() -> Self {
        let mut ctx = Ctx {
            changeset: FilterChangeset::default(),
            done: Vec::new(),
            skipped: Vec::new(),
            dropped: 0,
            announced: (false, false),
        };
        let demux = demultiplex::Demultiplex::new(&mut ctx);
        Self {
            ctx,
            demux,
            base: None,
            last: 0,
            sps: None,
            pps: None,
            vps: None,
            video_started: false,
            header_sent: false,
            audio_config: None,
            opus_channels: None,
            messages: 0,
            carry: Vec::with_capacity(PACKET),
            held: Some(Vec::new()),
            held_bytes: 0,
        }
    }

    /// Takes TS bytes and appends the messages they completed, in order.
    /// The bytes need not end at a packet's end: a partial packet waits for
    /// the next call.
    pub fn push(&mut self, mut ts: &[u8], out: &mut Vec<RawMessage>) {
        if !self.carry.is_empty() {
            let take = (PACKET - self.carry.len()).min(ts.len());
            self.carry.extend_from_slice(&ts[..take]);
            ts = &ts[take..];
            if self.carry.len() < PACKET {
                return;
            }
            let packet = std::mem::take(&mut self.carry);
            self.demux.push(&mut self.ctx, &packet);
            self.carry = packet;
            self.carry.clear();
        }
        let whole = ts.len() - ts.len() % PACKET;
        self.demux.push(&mut self.ctx, &ts[..whole]);
        self.carry.extend_from_slice(&ts[whole..]);
        let done = std::mem::take(&mut self.ctx.done);
        let Some(mut held) = self.held.take() else {
            self.take_all(done, out);
            return;
        };
        let before = held.len();
        self.take_all(done, &mut held);
        self.held_bytes += held[before..]
            .iter()
            .map(|m| m.payload.len())
            .sum::<usize>();
        let (video, audio) = self.ctx.announced;
        let ready = (!video || self.header_sent) && (!audio || self.has_audio_config());
        let span = match (held.first(), held.last()) {
            (Some(a), Some(b)) => b.timestamp.saturating_sub(a.timestamp),
            _ => 0,
        };
        if (video || audio) && ready || self.held_bytes > MAX_HELD || span > MAX_HELD_MS {
            // Sequence headers first, then the rest in their order.
            let (headers, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(is_header);
            out.extend(headers);
            out.extend(rest);
        } else {
            self.held = Some(held);
        }
    }

    fn take_all(&mut self, done: Vec<Pes>, out: &mut Vec<RawMessage>) {
        for pes in done {
            match pes.kind {
                Kind::H264 | Kind::Hevc => self.video(pes, out),
                Kind::Aac => self.audio(pes, out),
                Kind::Opus => self.opus(pes, out),
            }
        }
    }

    fn has_audio_config(&self) -> bool {
        self.audio_config.is_some() || self.opus_channels.is_some()
    }

    /// Stream types met that are not served (HEVC 0x24, Opus in 0x06...).
    pub fn skipped(&self) -> &[u8] {
        &self.ctx.skipped
    }

    /// PES dropped: over [`MAX_PES`], or cut by a lost packet.
    pub fn dropped(&self) -> u64 {
        self.ctx.dropped
    }

    /// Messages made so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Milliseconds since the first timestamp, unwrapping the 33 bits.
    fn ms(&mut self, ts90: u64) -> u32 {
        let base = *self.base.get_or_insert(ts90);
        // The 33-bit value nearest the last one seen.
        let mut t = (self.last & !(WRAP - 1)) | (ts90 & (WRAP - 1));
        if t + WRAP / 2 < self.last {
            t += WRAP;
        } else if t > self.last + WRAP / 2 && t >= WRAP {
            t -= WRAP;
        }
        self.last = self.last.max(t);
        (t.saturating_sub(base) / 90) as u32
    }

    fn emit(
        &mut self,
        out: &mut Vec<RawMessage>,
        type_id: MessageType,
        timestamp: u32,
        payload: Bytes,
    ) {
        self.messages += 1;
        out.push(RawMessage {
            csid: if type_id == MessageType::VIDEO {
                VIDEO_CSID
            } else {
                AUDIO_CSID
            },
            timestamp,
            type_id,
            stream_id: 1,
            payload,
        });
    }

    fn video(&mut self, pes: Pes, out: &mut Vec<RawMessage>) {
        let (Some(pts), Some(dts)) = (pes.pts, pes.dts) else {
            return;
        };
        let hevc = pes.kind == Kind::Hevc;
        let mut nals = Vec::new();
        let mut key = false;
        let mut changed = false;
        for nal in annex_b(&pes.data) {
            let (slot, keyframe, delimiter) = if hevc {
                if nal.len() < 2 {
                    continue;
                }
                let t = (nal[0] >> 1) & 0x3f;
                let slot = match t {
                    32 => Some(&mut self.vps),
                    33 => Some(&mut self.sps),
                    34 => Some(&mut self.pps),
                    _ => None,
                };
                (slot, (16..=23).contains(&t), t == 35)
            } else {
                let t = nal[0] & 0x1f;
                let slot = match t {
                    7 => Some(&mut self.sps),
                    8 => Some(&mut self.pps),
                    _ => None,
                };
                (slot, t == 5, t == 9)
            };
            match slot {
                Some(slot) => {
                    changed |= slot.as_deref() != Some(nal);
                    *slot = Some(Bytes::copy_from_slice(nal));
                }
                None if delimiter => {}
                None => {
                    key |= keyframe;
                    nals.push(nal);
                }
            }
        }
        let timestamp = self.ms(dts);
        if changed || !self.header_sent {
            let header = if hevc {
                self.hevc_header()
            } else {
                self.avc_header()
            };
            if let Some(header) = header {
                self.emit(out, MessageType::VIDEO, timestamp, header);
                self.header_sent = true;
            }
        }
        if !self.header_sent || nals.is_empty() {
            return;
        }
        if !self.video_started && !key {
            return;
        }
        self.video_started = true;
        let cts = (pts as i64 - dts as i64).rem_euclid(WRAP as i64);
        let cts = if cts > (WRAP / 2) as i64 {
            cts - WRAP as i64
        } else {
            cts
        } / 90;
        let size: usize = nals.iter().map(|n| n.len() + 4).sum();
        let mut tag = BytesMut::with_capacity(8 + size);
        let frame = if key { 1 } else { 2 };
        if hevc {
            // Enhanced RTMP: IsExHeader, the frame type, PacketTypeCodedFrames.
            tag.put_u8(0x80 | (frame << 4) | 1);
            tag.put_slice(b"hvc1");
        } else {
            tag.put_u8((frame << 4) | 7);
            tag.put_u8(1);
        }
        tag.put_slice(&(cts as i32).to_be_bytes()[1..]);
        for nal in nals {
            tag.put_u32(nal.len() as u32);
            tag.put_slice(nal);
        }
        self.emit(out, MessageType::VIDEO, timestamp, tag.freeze());
    }

    /// HEVC's sequence start (Enhanced RTMP): an
    /// HEVCDecoderConfigurationRecord of the last VPS, SPS and PPS.
    fn hevc_header(&self) -> Option<Bytes> {
        let (vps, sps, pps) = (self.vps.as_ref()?, self.sps.as_ref()?, self.pps.as_ref()?);
        // The SPS's profile_tier_level, general part: after its 2-byte
        // NAL header and one byte of ids, 12 bytes (emulation prevention
        // removed).
        let rbsp = unescape(&sps[..sps.len().min(64)]);
        let ptl = rbsp.get(3..15)?;
        let max_sub_layers = ((rbsp[2] >> 1) & 7) + 1;
        let nested = rbsp[2] & 1;
        let mut out = BytesMut::with_capacity(64 + vps.len() + sps.len() + pps.len());
        out.put_u8(0x90); // IsExHeader, keyframe, PacketTypeSequenceStart
        out.put_slice(b"hvc1");
        out.put_u8(1); // configurationVersion
        out.put_slice(ptl); // profile space/tier/idc, compatibility, constraints, level
        out.put_u16(0xF000); // min_spatial_segmentation_idc 0
        out.put_u8(0xFC); // parallelismType 0
        out.put_u8(0xFC | 1); // chroma_format_idc 1 (4:2:0)
        out.put_u8(0xF8); // bit_depth_luma_minus8 0
        out.put_u8(0xF8); // bit_depth_chroma_minus8 0
        out.put_u16(0); // avgFrameRate
        out.put_u8((max_sub_layers << 3) | (nested << 2) | 3); // lengthSizeMinusOne 3
        out.put_u8(3);
        for (t, nal) in [(32u8, vps), (33, sps), (34, pps)] {
            if nal.len() > u16::MAX as usize {
                return None;
            }
            out.put_u8(0x80 | t);
            out.put_u16(1);
            out.put_u16(nal.len() as u16);
            out.put_slice(nal);
        }
        Some(out.freeze())
    }

    /// The AVC sequence header: an AVCDecoderConfigurationRecord of the
    /// last SPS and PPS, once both are known.
    fn avc_header(&self) -> Option<Bytes> {
        let (sps, pps) = (self.sps.as_ref()?, self.pps.as_ref()?);
        if sps.len() < 4 || sps.len() > u16::MAX as usize || pps.len() > u16::MAX as usize {
            return None;
        }
        let mut out = BytesMut::with_capacity(16 + sps.len() + pps.len());
        out.put_slice(&[0x17, 0, 0, 0, 0, 1, sps[1], sps[2], sps[3], 0xFF, 0xE1]);
        out.put_u16(sps.len() as u16);
        out.put_slice(sps);
        out.put_u8(1);
        out.put_u16(pps.len() as u16);
        out.put_slice(pps);
        Some(out.freeze())
    }

    fn audio(&mut self, pes: Pes, out: &mut Vec<RawMessage>) {
        let Some(pts) = pes.pts else {
            return;
        };
        let mut rest = &pes.data[..];
        let mut index = 0u64;
        while let Some(frame) = Adts::parse(rest) {
            let config = frame.config();
            let ms = self.ms(pts + index * 1024 * 90_000 / u64::from(frame.rate));
            if self.audio_config != Some(config) {
                self.audio_config = Some(config);
                let header = Bytes::from(vec![0xAF, 0, config[0], config[1]]);
                self.emit(out, MessageType::AUDIO, ms, header);
            }
            let raw = &rest[frame.header_len..frame.len];
            let mut tag = BytesMut::with_capacity(2 + raw.len());
            tag.put_slice(&[0xAF, 1]);
            tag.put_slice(raw);
            self.emit(out, MessageType::AUDIO, ms, tag.freeze());
            rest = &rest[frame.len..];
            index += 1;
        }
    }
}

impl TsIn {
    fn opus(&mut self, pes: Pes, out: &mut Vec<RawMessage>) {
        let Some(pts) = pes.pts else {
            return;
        };
        let mut rest = &pes.data[..];
        let mut at = pts;
        while let Some((packet, used)) = opus_access_unit(rest) {
            rest = &rest[used..];
            if packet.is_empty() {
                continue;
            }
            let channels = if packet[0] & 0x04 != 0 { 2 } else { 1 };
            let ms = self.ms(at);
            if self.opus_channels != Some(channels) {
                self.opus_channels = Some(channels);
                let mut head = BytesMut::with_capacity(24);
                // SoundFormat 9 (ExHeader), AudioPacketType SequenceStart.
                head.put_u8(0x90);
                head.put_slice(b"Opus");
                head.put_slice(b"OpusHead");
                head.put_u8(1); // version
                head.put_u8(channels);
                head.put_u16_le(0); // pre-skip: not carried in TS
                head.put_u32_le(48_000);
                head.put_u16_le(0); // output gain
                head.put_u8(0); // mapping family 0: mono or stereo
                self.emit(out, MessageType::AUDIO, ms, head.freeze());
            }
            let mut tag = BytesMut::with_capacity(5 + packet.len());
            tag.put_u8(0x91); // CodedFrames
            tag.put_slice(b"Opus");
            tag.put_slice(packet);
            self.emit(out, MessageType::AUDIO, ms, tag.freeze());
            at += u64::from(opus_duration_48k(packet)) * 90_000 / 48_000;
        }
    }
}

/// One Opus access unit of a PES (ETSI TS 102 366 style control header:
/// 0x7FE0 | flags, the size as 0xFF bytes and a last byte, optional trim
/// and extension fields): the packet and the bytes used.
fn opus_access_unit(b: &[u8]) -> Option<(&[u8], usize)> {
    if b.len() < 3 || b[0] != 0x7F || b[1] & 0xE0 != 0xE0 {
        return None;
    }
    let (start_trim, end_trim, extension) = (b[1] & 0x10 != 0, b[1] & 0x08 != 0, b[1] & 0x04 != 0);
    let mut i = 2;
    let mut size = 0usize;
    loop {
        let v = *b.get(i)?;
        i += 1;
        size += usize::from(v);
        if v != 0xFF {
            break;
        }
    }
    i += 2 * usize::from(start_trim) + 2 * usize::from(end_trim);
    if extension {
        let len = usize::from(*b.get(i)?);
        i += 1 + len;
    }
    let packet = b.get(i..i.checked_add(size)?)?;
    Some((packet, i + size))
}

/// An Opus packet's duration in 48 kHz samples, from its TOC byte (RFC
/// 6716, 3.1); 960 (20 ms) when it cannot be read.
fn opus_duration_48k(packet: &[u8]) -> u32 {
    let Some(&toc) = packet.first() else {
        return 960;
    };
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config & 3)],
        12..=15 => [480, 960][usize::from(config & 1)],
        _ => [120, 240, 480, 960][usize::from(config & 3)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map_or(1, |c| u32::from(c & 0x3F).max(1)),
    };
    frame * frames
}

/// The NAL units of an Annex B access unit (start codes and trailing zero
/// bytes removed; empty units skipped).
fn annex_b(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    // Start codes found with memchr's SIMD search: a frame is scanned
    // whole, every frame of every SRT publisher.
    let starts: Vec<usize> = memchr::memmem::find_iter(data, &[0, 0, 1])
        .map(|i| i + 3)
        .collect();
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| s - 3)
        .chain(std::iter::once(data.len()))
        .collect();
    starts.into_iter().zip(ends).filter_map(move |(s, e)| {
        let mut e = e;
        // A four-byte start code's leading zero, or trailing zeros.
        while e > s && data[e - 1] == 0 {
            e -= 1;
        }
        (e > s).then(|| &data[s..e])
    })
}

/// A NAL unit's bytes without emulation prevention (00 00 03 -> 00 00).
fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// One ADTS frame's header.
#[derive(Debug, PartialEq, Eq)]
struct Adts {
    /// The MPEG-4 audio object type (profile + 1).
    object_type: u8,
    rate_index: u8,
    rate: u32,
    channels: u8,
    header_len: usize,
    /// The whole frame, header included.
    len: usize,
}

const ADTS_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

impl Adts {
    /// The frame at the start of `b`, if it is one and is whole.
    fn parse(b: &[u8]) -> Option<Adts> {
        if b.len() < 7 || b[0] != 0xFF || b[1] & 0xF6 != 0xF0 {
            return None;
        }
        let header_len = if b[1] & 1 == 1 { 7 } else { 9 };
        let object_type = (b[2] >> 6) + 1;
        let rate_index = (b[2] >> 2) & 0x0F;
        let rate = *ADTS_RATES.get(rate_index as usize)?;
        let channels = ((b[2] & 1) << 2) | (b[3] >> 6);
        let len = (usize::from(b[3] & 3) << 11) | (usize::from(b[4]) << 3) | usize::from(b[5] >> 5);
        if len <= header_len || len > b.len() {
            return None;
        }
        Some(Adts {
            object_type,
            rate_index,
            rate,
            channels,
            header_len,
            len,
        })
    }

    /// Its AudioSpecificConfig.
    fn config(&self) -> [u8; 2] {
        [
            (self.object_type << 3) | (self.rate_index >> 1),
            ((self.rate_index & 1) << 7) | (self.channels << 3),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_units_are_split_on_three_and_four_byte_start_codes() {
        let au = [
            0, 0, 0, 1, 9, 0xF0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x65, 7, 8, 0, 0,
        ];
        let nals: Vec<&[u8]> = annex_b(&au).collect();
        assert_eq!(
            nals,
            vec![&[9, 0xF0][..], &[0x67, 1, 2][..], &[0x65, 7, 8][..]]
        );
        assert_eq!(annex_b(&[1, 2, 3]).count(), 0);
        assert_eq!(annex_b(&[0, 0, 1]).count(), 0);
    }

    #[test]
    fn opus_access_units_and_their_durations_are_read() {
        // Control header, size 3 (no trims), a 20 ms CELT stereo packet.
        let pes = [0x7F, 0xE0, 3, 0xFC, 1, 2, 0x7F, 0xF0, 1, 0, 0, 9];
        let (packet, used) = opus_access_unit(&pes).unwrap();
        assert_eq!((packet, used), (&pes[3..6], 6));
        // With a start trim: two more bytes before the packet.
        let (packet, _) = opus_access_unit(&pes[6..]).unwrap();
        assert_eq!(packet, &[9]);
        assert!(opus_access_unit(&[0x7F, 0xE0, 0xFF]).is_none(), "cut");
        assert!(
            opus_access_unit(&[0x7F, 0xE0, 5, 1]).is_none(),
            "shorter than its size"
        );
        assert_eq!(opus_duration_48k(&[0xFC]), 960, "CELT 20 ms");
        assert_eq!(opus_duration_48k(&[0xFC | 3, 3]), 2880, "three frames");
        assert_eq!(opus_duration_48k(&[0x08]), 960, "SILK 20 ms");
    }

    #[test]
    fn emulation_prevention_bytes_are_removed() {
        assert_eq!(
            unescape(&[0, 0, 3, 1, 0, 0, 3, 0, 0, 3]),
            vec![0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(unescape(&[1, 3, 0, 3]), vec![1, 3, 0, 3]);
    }

    #[test]
    fn an_adts_header_gives_its_frame_and_audio_specific_config() {
        // AAC LC, 48 kHz (index 3), stereo, a 10-byte frame, no CRC.
        let frame = [0xFF, 0xF1, 0x4C, 0x80, 0x01, 0x5F, 0xFC, 0xAA, 0xBB, 0xCC];
        let a = Adts::parse(&frame).unwrap();
        assert_eq!(
            (a.object_type, a.rate, a.channels, a.header_len, a.len),
            (2, 48000, 2, 7, 10)
        );
        // 2 << 3 | 3 >> 1, (3 & 1) << 7 | 2 << 3: the familiar 0x11 0x90.
        assert_eq!(a.config(), [0x11, 0x90]);
        assert!(
            Adts::parse(&frame[..9]).is_none(),
            "a cut frame is not taken"
        );
        assert!(
            Adts::parse(&[0xFF, 0xF1, 0x7C, 0x80, 0x01, 0x5F, 0xFC, 0]).is_none(),
            "rate 15"
        );
        assert!(Adts::parse(&[0x47; 16]).is_none());
    }

    #[test]
    fn timestamps_count_from_the_first_and_cross_the_33_bit_wrap() {
        let mut t = TsIn::new();
        assert_eq!(t.ms(WRAP - 90_000), 0);
        assert_eq!(t.ms(WRAP - 45_000), 500);
        assert_eq!(t.ms(45_000), 1500, "past the wrap");
        assert_eq!(t.ms(90_000), 2000);
        // A B-frame's earlier PTS stays in place.
        assert_eq!(t.ms(80_000), 1888);
    }

    #[test]
    fn garbage_and_cut_packets_make_no_message_and_no_panic() {
        let mut t = TsIn::new();
        let mut out = Vec::new();
        let mut state = 7u32;
        for _ in 0..200 {
            let mut buf = vec![0u8; 188 * 7];
            for (i, b) in buf.iter_mut().enumerate() {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                *b = (state >> 16) as u8;
                if i % 188 == 0 {
                    *b = 0x47;
                }
            }
            t.push(&buf, &mut out);
            t.push(&buf[..100], &mut out);
        }
        assert!(out.is_empty());
    }
}
