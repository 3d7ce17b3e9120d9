//! A deterministic synthetic live stream with the sizes and cadence of a
//! real encoder, and valid media: H.264 (Constrained Baseline, 1280x720,
//! CAVLC) whose keyframes are IDR pictures of Intra 16x16 macroblocks and
//! whose inter frames are P pictures of skipped macroblocks (a grey
//! picture), each frame padded to its size with a filler-data NAL unit (as
//! a CBR encoder pads); and AAC-LC stereo frames of silence, padded with a
//! fill element. So every server's parser takes it and ffmpeg decodes it.
//! Used by the benches, the allocation test and the load generator.

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
    let seq_video = avc_sequence_header();
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
            let mut payload = vec![0xAF, 0x01];
            payload.extend_from_slice(&aac_silence(shape.audio_frame_bytes.saturating_sub(2)));
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
        let in_gop = frame % gop_frames;
        let key = in_gop == 0;
        rng = xorshift(rng);
        let jitter = 0.5 + (rng % 1000) as f64 / 1000.0;
        let len = if key { unit * 6.0 } else { unit * jitter }.max(16.0) as usize;
        let gop = frame / gop_frames;
        let mut payload = vec![if key { 0x17 } else { 0x27 }, 0x01, 0, 0, 0];
        let slice = match key {
            true => idr_slice(gop as u32 & 1),
            false => p_slice(in_gop as u32),
        };
        put_nal(&mut payload, &slice);
        // A filler-data NAL unit (type 12) brings the frame to its size.
        let pad = len.saturating_sub(payload.len() + 4 + 2).max(1);
        let mut filler = vec![0xFF; pad + 2];
        filler[0] = 0x0C;
        filler[pad + 1] = 0x80;
        put_nal(&mut payload, &filler);
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

/// Picture size in macroblocks (1280x720).
const MB_WIDTH: u32 = 80;
const MB_HEIGHT: u32 = 45;
/// `log2_max_frame_num_minus4` of the SPS: frame_num has 8 bits.
const FRAME_NUM_BITS: u32 = 8;

/// An RBSP written bit by bit (Exp-Golomb codes as H.264 clause 9.1 has
/// them).
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u8,
    n: u32,
}

impl Bits {
    fn u(&mut self, bits: u32, value: u32) {
        for i in (0..bits).rev() {
            self.acc = self.acc << 1 | ((value >> i) & 1) as u8;
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc);
                (self.acc, self.n) = (0, 0);
            }
        }
    }
    fn ue(&mut self, value: u32) {
        let v = value + 1;
        let len = 32 - v.leading_zeros();
        self.u(len - 1, 0);
        self.u(len, v);
    }
    fn se(&mut self, value: i32) {
        let mapped = if value > 0 {
            2 * value as u32 - 1
        } else {
            2 * value.unsigned_abs()
        };
        self.ue(mapped);
    }
    /// `rbsp_trailing_bits`: a stop bit, then zeros to a byte.
    fn finish(mut self) -> Vec<u8> {
        self.u(1, 1);
        while self.n != 0 {
            self.u(1, 0);
        }
        self.out
    }
}

/// A NAL unit of `header` and `rbsp`, start-code emulation prevented.
fn nal(header: u8, rbsp: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut zeros = 0;
    for &b in rbsp {
        if zeros == 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// Appends a NAL unit with its 4-byte length (AVCC).
fn put_nal(out: &mut Vec<u8>, nal: &[u8]) {
    out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
    out.extend_from_slice(nal);
}

/// Sequence parameter set: Constrained Baseline, level 3.1, 1280x720,
/// frame_num of 8 bits, POC type 2 (output order is decoding order), one
/// reference frame.
fn sps() -> Vec<u8> {
    let mut b = Bits::default();
    b.u(8, 66); // profile_idc: Baseline
    b.u(8, 0xC0); // constraint_set0 and set1: Constrained Baseline
    b.u(8, 31); // level_idc
    b.ue(0); // seq_parameter_set_id
    b.ue(FRAME_NUM_BITS - 4); // log2_max_frame_num_minus4
    b.ue(2); // pic_order_cnt_type
    b.ue(1); // max_num_ref_frames
    b.u(1, 0); // gaps_in_frame_num_value_allowed_flag
    b.ue(MB_WIDTH - 1);
    b.ue(MB_HEIGHT - 1);
    b.u(1, 1); // frame_mbs_only_flag
    b.u(1, 1); // direct_8x8_inference_flag
    b.u(1, 0); // frame_cropping_flag
    b.u(1, 0); // vui_parameters_present_flag
    nal(0x67, &b.finish())
}

/// Picture parameter set: CAVLC, one slice group, QP 26, no deblocking
/// control.
fn pps() -> Vec<u8> {
    let mut b = Bits::default();
    b.ue(0); // pic_parameter_set_id
    b.ue(0); // seq_parameter_set_id
    b.u(1, 0); // entropy_coding_mode_flag: CAVLC
    b.u(1, 0); // bottom_field_pic_order_in_frame_present_flag
    b.ue(0); // num_slice_groups_minus1
    b.ue(0); // num_ref_idx_l0_default_active_minus1
    b.ue(0); // num_ref_idx_l1_default_active_minus1
    b.u(1, 0); // weighted_pred_flag
    b.u(2, 0); // weighted_bipred_idc
    b.se(0); // pic_init_qp_minus26
    b.se(0); // pic_init_qs_minus26
    b.se(0); // chroma_qp_index_offset
    b.u(1, 0); // deblocking_filter_control_present_flag
    b.u(1, 0); // constrained_intra_pred_flag
    b.u(1, 0); // redundant_pic_cnt_present_flag
    nal(0x68, &b.finish())
}

/// The AVC sequence header message: an AVCDecoderConfigurationRecord of
/// the SPS and PPS.
fn avc_sequence_header() -> Vec<u8> {
    let (sps, pps) = (sps(), pps());
    let mut out = vec![0x17, 0x00, 0, 0, 0, 1, sps[1], sps[2], sps[3], 0xFF, 0xE1];
    out.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    out.extend_from_slice(&sps);
    out.push(1);
    out.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    out.extend_from_slice(&pps);
    out
}

/// An IDR picture, one slice: every macroblock I_16x16 with DC prediction
/// and no residual (mb_type 3, chroma DC, qp delta 0, an empty luma DC
/// block), which decodes to mid grey.
fn idr_slice(idr_pic_id: u32) -> Vec<u8> {
    let mut b = Bits::default();
    b.ue(0); // first_mb_in_slice
    b.ue(7); // slice_type: I (all slices of the picture)
    b.ue(0); // pic_parameter_set_id
    b.u(FRAME_NUM_BITS, 0); // frame_num
    b.ue(idr_pic_id);
    b.u(1, 0); // no_output_of_prior_pics_flag
    b.u(1, 0); // long_term_reference_flag
    b.se(0); // slice_qp_delta
    for _ in 0..MB_WIDTH * MB_HEIGHT {
        b.ue(3); // mb_type I_16x16_2_0_0
        b.ue(0); // intra_chroma_pred_mode: DC
        b.se(0); // mb_qp_delta
        b.u(1, 1); // coeff_token of the luma DC block: no coefficient (nC 0)
    }
    nal(0x65, &b.finish())
}

/// A P picture, one slice, every macroblock skipped (a copy of the
/// reference). `frame_num`: its place in the GOP.
fn p_slice(frame_num: u32) -> Vec<u8> {
    let mut b = Bits::default();
    b.ue(0); // first_mb_in_slice
    b.ue(5); // slice_type: P (all slices of the picture)
    b.ue(0); // pic_parameter_set_id
    b.u(FRAME_NUM_BITS, frame_num % (1 << FRAME_NUM_BITS));
    b.u(1, 0); // num_ref_idx_active_override_flag
    b.u(1, 0); // ref_pic_list_modification_flag_l0
    b.u(1, 0); // adaptive_ref_pic_marking_mode_flag
    b.se(0); // slice_qp_delta
    b.ue(MB_WIDTH * MB_HEIGHT); // mb_skip_run: the whole picture
    nal(0x41, &b.finish())
}

/// An AAC-LC raw data block of `len` bytes (at least 8): a stereo channel
/// pair element of silence (no scale factor band coded), then fill
/// elements to the size, then the end element.
fn aac_silence(len: usize) -> Vec<u8> {
    let len = len.max(8);
    let mut b = Bits::default();
    b.u(3, 1); // ID_CPE
    b.u(4, 0); // element_instance_tag
    b.u(1, 1); // common_window
    b.u(1, 0); // ics_reserved_bit
    b.u(2, 0); // window_sequence: ONLY_LONG_SEQUENCE
    b.u(1, 0); // window_shape
    b.u(6, 0); // max_sfb: nothing coded
    b.u(1, 0); // predictor_data_present
    b.u(2, 0); // ms_mask_present
    for _ in 0..2 {
        b.u(8, 100); // global_gain
        b.u(1, 0); // pulse_data_present
        b.u(1, 0); // tns_data_present
        b.u(1, 0); // gain_control_data_present
    }
    // 43 bits so far, and the end element's 3 to come. Fill elements
    // (ID_FIL) carry the rest: one of `cnt` payload bytes takes 7 + 8 cnt
    // bits (15 + 8 cnt with an escape count, for 15..=269 bytes).
    let mut left = (len * 8).saturating_sub(43 + 3);
    while left >= 7 + 8 {
        let long = (left.saturating_sub(15) / 8).min(269);
        if long >= 15 {
            b.u(3, 6); // ID_FIL
            b.u(4, 15);
            b.u(8, (long - 14) as u32); // esc_count: cnt = 15 + esc_count - 1
            fill_payload(&mut b, long);
            left -= 15 + 8 * long;
        } else {
            let short = ((left - 7) / 8).min(14);
            b.u(3, 6); // ID_FIL
            b.u(4, short as u32);
            fill_payload(&mut b, short);
            left -= 7 + 8 * short;
        }
    }
    b.u(3, 7); // ID_END
               // Zeros to the byte (the raw data block's byte alignment).
    while b.n != 0 {
        b.u(1, 0);
    }
    b.out
}

/// An extension payload of `cnt` bytes: EXT_FILL, its nibble, fill bytes.
fn fill_payload(b: &mut Bits, cnt: usize) {
    b.u(4, 0);
    b.u(4, 0);
    for _ in 1..cnt {
        b.u(8, 0xA5);
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
