//! MPEG-TS out: the stream model's messages as the TS an SRT player reads
//! (H.264 and HEVC in Annex B, AAC in ADTS, Opus with its TS control
//! headers), in 188-byte packets.
//!
//! Hand-written, and small: a PAT and a PMT (CRC-32/MPEG-2) before the
//! first frame and every video keyframe, one PES per message, the PCR on
//! the first packet of each video PES (or audio's, with no video). The
//! `mpeg2ts` crate writes through `std::io::Write` one packet struct at a
//! time; this writes straight into the caller's buffer, and what it must
//! get right (Annex B with parameter sets at keyframes, ADTS headers from
//! the AudioSpecificConfig, Opus's descriptors) is outside any muxer crate
//! anyway.
//!
//! Timestamps: DTS = the message's ms + 700 ms, in 90 kHz (33 bits); PCR
//! runs 100 ms behind the DTS, as MediaMTX's does.

use bytes::{BufMut, BytesMut};

use crate::protocol::media::{audio_body, video_body, AudioCodec, PacketKind, VideoCodec};
use crate::protocol::{MessageType, RawMessage};

pub const PACKET: usize = 188;
const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
const AUDIO_PID: u16 = 0x101;
const OFFSET_MS: u64 = 700;
const PCR_BEHIND_90K: u64 = 9000;
const WRAP: u64 = 1 << 33;

#[derive(Clone, PartialEq)]
enum Video {
    H264 {
        length_size: usize,
        /// SPS and PPS, each with its start code.
        sets: Vec<u8>,
    },
    Hevc {
        length_size: usize,
        /// VPS, SPS and PPS, each with its start code.
        sets: Vec<u8>,
    },
}

#[derive(Clone, Copy, PartialEq)]
enum Audio {
    /// ADTS fields from the AudioSpecificConfig.
    Aac {
        profile: u8,
        rate_index: u8,
        channels: u8,
    },
    Opus {
        channels: u8,
    },
}

/// One player's TS writer: its continuity counters and the stream's
/// configuration as the sequence headers gave it.
#[derive(Default)]
pub struct TsOut {
    video: Option<Video>,
    audio: Option<Audio>,
    cc: [u8; 4],
    /// The PMT written last described these tracks.
    psi_for: Option<(bool, Option<Audio>)>,
    /// Dropping video until a keyframe (a player that just joined, or
    /// that dropped frames).
    need_key: bool,
    started: bool,
}

impl TsOut {
    pub fn new() -> Self {
        Self {
            need_key: true,
            ..Self::default()
        }
    }

    /// Skips video up to the next keyframe (and audio with it): the
    /// caller dropped some of this writer's output.
    pub fn resync(&mut self) {
        self.need_key = true;
        self.started = false;
    }

    /// Appends `m` as TS packets to `out`. Metadata, unknown codecs and
    /// frames before the first keyframe write nothing.
    pub fn push(&mut self, m: &RawMessage, out: &mut BytesMut) {
        match m.type_id {
            MessageType::VIDEO => self.video(m, out),
            MessageType::AUDIO => self.audio(m, out),
            _ => {}
        }
    }

    fn video(&mut self, m: &RawMessage, out: &mut BytesMut) {
        let Ok(body) = video_body(&m.payload) else {
            return;
        };
        let data = &m.payload[body.data_at.min(m.payload.len())..];
        if body.info.multitrack {
            return;
        }
        if body.config {
            self.video = match body.info.codec {
                VideoCodec::Avc => avc_config(data),
                VideoCodec::Hevc => hevc_config(data),
                _ => None,
            };
            return;
        }
        if body.info.kind != PacketKind::Frame {
            return;
        }
        let Some(video) = self.video.clone() else {
            return;
        };
        let key = body.info.keyframe;
        if self.need_key && !key {
            return;
        }
        self.need_key = false;
        self.started = true;
        let (hevc, length_size, sets) = match &video {
            Video::H264 { length_size, sets } => (false, *length_size, sets),
            Video::Hevc { length_size, sets } => (true, *length_size, sets),
        };
        let mut es = BytesMut::with_capacity(data.len() + sets.len() + 64);
        es.put_slice(if hevc {
            &[0, 0, 0, 1, 0x46, 0x01, 0x50]
        } else {
            &[0, 0, 0, 1, 0x09, 0xF0]
        });
        let has_sets = nal_units(data, length_size).any(|n| {
            let t = if hevc {
                (n[0] >> 1) & 0x3F
            } else {
                n[0] & 0x1F
            };
            if hevc {
                (32..=34).contains(&t)
            } else {
                t == 7 || t == 8
            }
        });
        if key && !has_sets {
            es.put_slice(sets);
        }
        for nal in nal_units(data, length_size) {
            let t = if hevc {
                (nal[0] >> 1) & 0x3F
            } else {
                nal[0] & 0x1F
            };
            // The AUD is ours.
            if (hevc && t == 35) || (!hevc && t == 9) {
                continue;
            }
            es.put_slice(&[0, 0, 0, 1]);
            es.put_slice(nal);
        }
        if key {
            self.psi(out);
        }
        let dts = ts90(m.timestamp);
        let pts = (dts + (body.cts_ms.max(0) as u64) * 90) % WRAP;
        self.pes(out, VIDEO_PID, 0xE0, pts, Some(dts), &es, true, key);
    }

    fn audio(&mut self, m: &RawMessage, out: &mut BytesMut) {
        let Ok(body) = audio_body(&m.payload) else {
            return;
        };
        if body.info.multitrack {
            return;
        }
        let data = &m.payload[body.data_at.min(m.payload.len())..];
        match body.info.kind {
            PacketKind::SequenceHeader => {
                self.audio = match body.info.codec {
                    AudioCodec::Aac => aac_config(data),
                    // OpusHead: the channel count is its tenth byte.
                    AudioCodec::Opus => data.get(9).map(|&c| Audio::Opus { channels: c }),
                    _ => None,
                };
                return;
            }
            PacketKind::Frame => {}
            _ => return,
        }
        let Some(audio) = self.audio else {
            return;
        };
        // With video, audio waits for the first keyframe so that the
        // player starts on a picture.
        if self.video.is_some() && !self.started {
            return;
        }
        if self.psi_for != Some((self.video.is_some(), self.audio)) {
            self.psi(out);
        }
        let mut es = BytesMut::with_capacity(data.len() + 16);
        let stream_id = match audio {
            Audio::Aac {
                profile,
                rate_index,
                channels,
            } => {
                let len = data.len() + 7;
                if len > 0x1FFF {
                    return;
                }
                es.put_slice(&[
                    0xFF,
                    0xF1,
                    (profile << 6) | (rate_index << 2) | ((channels >> 2) & 1),
                    ((channels & 3) << 6) | ((len >> 11) as u8 & 3),
                    (len >> 3) as u8,
                    ((len as u8 & 7) << 5) | 0x1F,
                    0xFC,
                ]);
                0xC0
            }
            Audio::Opus { .. } => {
                es.put_slice(&[0x7F, 0xE0]);
                let mut n = data.len();
                while n >= 255 {
                    es.put_u8(255);
                    n -= 255;
                }
                es.put_u8(n as u8);
                0xBD
            }
        };
        es.put_slice(data);
        let pts = ts90(m.timestamp);
        let pcr = self.video.is_none();
        self.pes(out, AUDIO_PID, stream_id, pts, None, &es, pcr, false);
    }

    /// A PAT and a PMT for the tracks known now.
    fn psi(&mut self, out: &mut BytesMut) {
        let video = self.video.is_some();
        self.psi_for = Some((video, self.audio));
        // PAT: program 1 at PMT_PID.
        let mut pat = Vec::with_capacity(16);
        pat.extend_from_slice(&[0x00, 0xB0, 13, 0x00, 0x01, 0xC1, 0, 0, 0x00, 0x01]);
        pat.extend_from_slice(&[0xE0 | (PMT_PID >> 8) as u8, PMT_PID as u8]);
        let crc = crc32(&pat);
        pat.extend_from_slice(&crc.to_be_bytes());
        self.section(out, 0x0000, 0, &pat);
        // PMT.
        let pcr_pid = if video { VIDEO_PID } else { AUDIO_PID };
        let mut streams = Vec::new();
        if let Some(v) = &self.video {
            let kind = match v {
                Video::H264 { .. } => 0x1B,
                Video::Hevc { .. } => 0x24,
            };
            streams.extend_from_slice(&[kind, 0xE0 | (VIDEO_PID >> 8) as u8, VIDEO_PID as u8]);
            streams.extend_from_slice(&[0xF0, 0]);
        }
        match self.audio {
            Some(Audio::Aac { .. }) => {
                streams.extend_from_slice(&[0x0F, 0xE0 | (AUDIO_PID >> 8) as u8, AUDIO_PID as u8]);
                streams.extend_from_slice(&[0xF0, 0]);
            }
            Some(Audio::Opus { channels }) => {
                streams.extend_from_slice(&[0x06, 0xE0 | (AUDIO_PID >> 8) as u8, AUDIO_PID as u8]);
                // Registration "Opus", and the DVB extension descriptor
                // with the channel configuration.
                let descriptors = [0x05, 4, b'O', b'p', b'u', b's', 0x7F, 2, 0x80, channels];
                streams.extend_from_slice(&[0xF0, descriptors.len() as u8]);
                streams.extend_from_slice(&descriptors);
            }
            None => {}
        }
        let section_len = 9 + streams.len() + 4;
        let mut pmt = Vec::with_capacity(section_len + 3);
        pmt.extend_from_slice(&[
            0x02,
            0xB0 | (section_len >> 8) as u8,
            section_len as u8,
            0x00,
            0x01,
            0xC1,
            0,
            0,
            0xE0 | (pcr_pid >> 8) as u8,
            pcr_pid as u8,
            0xF0,
            0,
        ]);
        pmt.extend_from_slice(&streams);
        let crc = crc32(&pmt);
        pmt.extend_from_slice(&crc.to_be_bytes());
        self.section(out, PMT_PID, 1, &pmt);
    }

    /// One PSI section in one packet (a pointer field, then 0xFF fill).
    fn section(&mut self, out: &mut BytesMut, pid: u16, cc_slot: usize, section: &[u8]) {
        let cc = self.next_cc(cc_slot);
        out.reserve(PACKET);
        out.put_slice(&[0x47, 0x40 | (pid >> 8) as u8, pid as u8, 0x10 | cc, 0x00]);
        let n = section.len().min(PACKET - 5);
        out.put_slice(&section[..n]);
        out.put_bytes(0xFF, PACKET - 5 - n);
    }

    fn next_cc(&mut self, slot: usize) -> u8 {
        let cc = self.cc[slot];
        self.cc[slot] = (cc + 1) & 0x0F;
        cc
    }

    /// One PES of `es` on `pid`, cut into packets.
    #[allow(clippy::too_many_arguments)]
    fn pes(
        &mut self,
        out: &mut BytesMut,
        pid: u16,
        stream_id: u8,
        pts: u64,
        dts: Option<u64>,
        es: &[u8],
        pcr: bool,
        random_access: bool,
    ) {
        let mut header = Vec::with_capacity(19);
        header.extend_from_slice(&[0, 0, 1, stream_id]);
        let dts = dts.filter(|&d| d != pts);
        let header_data = if dts.is_some() { 10 } else { 5 };
        let pes_len = 3 + header_data + es.len();
        // Bounded where it fits (a reader can take the PES as soon as it
        // is in, not when the next starts); 0, "unbounded", for a video
        // PES over 16 bits.
        let len_field = if pes_len > 0xFFFF { 0 } else { pes_len as u16 };
        header.extend_from_slice(&len_field.to_be_bytes());
        header.push(0x80);
        header.push(if dts.is_some() { 0xC0 } else { 0x80 });
        header.push(header_data as u8);
        put_timestamp(&mut header, if dts.is_some() { 0x3 } else { 0x2 }, pts);
        if let Some(d) = dts {
            put_timestamp(&mut header, 0x1, d);
        }
        let slot = if pid == VIDEO_PID { 2 } else { 3 };
        let total = header.len() + es.len();
        out.reserve(total / 170 * PACKET + 2 * PACKET);
        let mut written = 0;
        let mut first = true;
        while written < total {
            // The adaptation field's bytes after its length byte, if the
            // packet has one (a field of length 0 is the length byte
            // alone): no allocation per packet.
            let mut af = [0xFFu8; PACKET];
            let mut af_n: Option<usize> = None;
            if first && (pcr || random_access) {
                af[0] = if random_access { 0x40 } else { 0 };
                af_n = Some(1);
                if pcr {
                    af[0] |= 0x10;
                    let base = (dts.unwrap_or(pts) + WRAP - PCR_BEHIND_90K) % WRAP;
                    af[1..7].copy_from_slice(&[
                        (base >> 25) as u8,
                        (base >> 17) as u8,
                        (base >> 9) as u8,
                        (base >> 1) as u8,
                        (((base & 1) as u8) << 7) | 0x7E,
                        0,
                    ]);
                    af_n = Some(7);
                }
            }
            // Room for payload with the adaptation field so far (its length
            // byte included when there is one).
            let mut room = PACKET - 4 - af_n.map_or(0, |n| n + 1);
            let left = total - written;
            if left < room {
                // Stuff the last packet: grow (or make) the adaptation
                // field by what the payload does not fill (0xFF bytes; a
                // new field's flags byte is 0).
                let pad = room - left;
                af_n = Some(match af_n {
                    Some(n) => n + pad,
                    None => {
                        af[0] = 0;
                        pad - 1
                    }
                });
                room = left;
            }
            let cc = self.next_cc(slot);
            let control = if af_n.is_some() { 0x30 } else { 0x10 };
            out.put_slice(&[
                0x47,
                (if first { 0x40 } else { 0 }) | (pid >> 8) as u8,
                pid as u8,
                control | cc,
            ]);
            if let Some(n) = af_n {
                out.put_u8(n as u8);
                out.put_slice(&af[..n]);
            }
            put_from(out, &header, es, written, room);
            written += room;
            first = false;
        }
    }
}

/// `n` bytes of header-then-es from offset `at`.
fn put_from(out: &mut BytesMut, header: &[u8], es: &[u8], at: usize, n: usize) {
    let mut at = at;
    let mut n = n;
    if at < header.len() {
        let k = (header.len() - at).min(n);
        out.put_slice(&header[at..at + k]);
        at += k;
        n -= k;
    }
    let from = at - header.len();
    out.put_slice(&es[from..from + n]);
}

fn put_timestamp(out: &mut Vec<u8>, prefix: u8, t: u64) {
    out.extend_from_slice(&[
        (prefix << 4) | ((((t >> 30) & 7) as u8) << 1) | 1,
        (t >> 22) as u8,
        ((((t >> 15) & 0x7F) as u8) << 1) | 1,
        (t >> 7) as u8,
        (((t & 0x7F) as u8) << 1) | 1,
    ]);
}

fn ts90(ms: u32) -> u64 {
    ((u64::from(ms) + OFFSET_MS) * 90) % WRAP
}

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, no reflection, initial all
/// ones), as PSI sections end with.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The NAL units of length-prefixed (AVCC/HVCC) data; stops at a length
/// that runs past the end.
fn nal_units(data: &[u8], length_size: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < length_size || length_size == 0 {
            return None;
        }
        let len = rest[..length_size]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        let nal = rest.get(length_size..length_size + len)?;
        rest = &rest[length_size + len..];
        (!nal.is_empty()).then_some(nal)
    })
}

fn avc_config(r: &[u8]) -> Option<Video> {
    let length_size = usize::from(*r.get(4)? & 3) + 1;
    let mut sets = Vec::new();
    let mut at = 5;
    for mask in [0x1F, 0xFF] {
        let n = usize::from(*r.get(at)? & mask);
        at += 1;
        for _ in 0..n {
            let len = usize::from(u16::from_be_bytes([*r.get(at)?, *r.get(at + 1)?]));
            let nal = r.get(at + 2..at + 2 + len)?;
            sets.extend_from_slice(&[0, 0, 0, 1]);
            sets.extend_from_slice(nal);
            at += 2 + len;
        }
    }
    Some(Video::H264 { length_size, sets })
}

fn hevc_config(r: &[u8]) -> Option<Video> {
    let length_size = usize::from(*r.get(21)? & 3) + 1;
    let arrays = usize::from(*r.get(22)?);
    let mut at = 23;
    let mut sets = Vec::new();
    for _ in 0..arrays {
        at += 1;
        let n = usize::from(u16::from_be_bytes([*r.get(at)?, *r.get(at + 1)?]));
        at += 2;
        for _ in 0..n {
            let len = usize::from(u16::from_be_bytes([*r.get(at)?, *r.get(at + 1)?]));
            let nal = r.get(at + 2..at + 2 + len)?;
            sets.extend_from_slice(&[0, 0, 0, 1]);
            sets.extend_from_slice(nal);
            at += 2 + len;
        }
    }
    Some(Video::Hevc { length_size, sets })
}

fn aac_config(asc: &[u8]) -> Option<Audio> {
    let (a, b) = (*asc.first()?, *asc.get(1)?);
    let object = a >> 3;
    let rate_index = ((a & 7) << 1) | (b >> 7);
    let channels = (b >> 3) & 0x0F;
    // ADTS carries profiles 1-4 and a rate index only.
    if !(1..=4).contains(&object) || rate_index > 12 {
        return None;
    }
    Some(Audio::Aac {
        profile: object - 1,
        rate_index,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_mpeg2s() {
        // The check value of CRC-32/MPEG-2.
        assert_eq!(crc32(b"123456789"), 0x0376_E6E7);
    }

    #[test]
    fn every_packet_is_188_bytes_with_a_sync_byte_whatever_the_size() {
        let mut t = TsOut::new();
        let mut out = BytesMut::new();
        // AAC-LC 48 kHz stereo.
        let header = RawMessage {
            csid: 4,
            timestamp: 0,
            type_id: MessageType::AUDIO,
            stream_id: 1,
            payload: bytes::Bytes::from_static(&[0xAF, 0, 0x11, 0x90]),
        };
        t.push(&header, &mut out);
        for n in [
            0usize, 1, 2, 100, 168, 169, 170, 171, 183, 184, 185, 1000, 5000,
        ] {
            let mut p = vec![0xAF, 1];
            p.extend(std::iter::repeat_n(0x55, n));
            let m = RawMessage {
                payload: p.into(),
                timestamp: n as u32,
                ..header.clone()
            };
            t.push(&m, &mut out);
            assert_eq!(out.len() % PACKET, 0, "{n}");
        }
        assert!(out.chunks(PACKET).all(|p| p[0] == 0x47));
    }

    #[test]
    fn what_a_publisher_sends_never_panics_it_and_leaves_whole_packets() {
        // Payloads a hostile publisher could send, through the parsers:
        // headers of every codec with random bodies and lengths.
        let mut state = 99u32;
        let mut rnd = move || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        };
        let prefixes: [&[u8]; 8] = [
            &[0x17, 0],
            &[0x17, 1, 0, 0, 0],
            &[0x27, 1, 0, 0, 0],
            &[0x90, b'h', b'v', b'c', b'1'],
            &[0x91, b'h', b'v', b'c', b'1', 0, 0, 0],
            &[0xAF, 0],
            &[0xAF, 1],
            &[0x90, b'O', b'p', b'u', b's'],
        ];
        for round in 0..3000 {
            let mut t = TsOut::new();
            let mut out = BytesMut::new();
            for p in prefixes.iter().cycle().skip(round % 8).take(6) {
                let mut payload = p.to_vec();
                let n = usize::from(rnd()) * (1 + round % 7);
                payload.extend((0..n).map(|_| rnd()));
                let type_id = if payload[0] == 0xAF || payload[1] == b'O' {
                    MessageType::AUDIO
                } else {
                    MessageType::VIDEO
                };
                let m = RawMessage {
                    csid: 6,
                    timestamp: u32::from(rnd()) << 24,
                    type_id,
                    stream_id: 1,
                    payload: payload.into(),
                };
                t.push(&m, &mut out);
                assert_eq!(out.len() % PACKET, 0);
            }
        }
    }
}
