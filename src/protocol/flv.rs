//! FLV: the file/HTTP container whose tags are RTMP audio, video and data
//! messages with an 11-byte header.
//!
//! Owns the FLV header and tag framing, reading (incrementally, from bytes in
//! any fragmentation) and writing, and the 1:1 mapping between tags and
//! [`RawMessage`]s. It must never buffer a tag larger than the limit it was
//! given, trust a length before checking it, panic on any input, or look
//! inside a payload (codec parsing is `media`'s, AMF is `amf0`'s).
//!
//! Long (about 700 lines): FLV reading and writing, and their tests inline
//! (about 300 lines).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::protocol::message::{MessageType, RawMessage};

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// "FLV", version, flags, DataOffset.
pub const HEADER_LEN: usize = 9;
/// TagType, DataSize u24, Timestamp u24, TimestampExtended, StreamID u24.
pub const TAG_HEADER_LEN: usize = 11;
/// The PreviousTagSize field after the header and after every tag.
const PREVIOUS_TAG_SIZE_LEN: usize = 4;
/// Largest payload a tag's 24-bit DataSize can describe.
pub const MAX_TAG_PAYLOAD: u32 = 0xFF_FFFF;

const FLAG_AUDIO: u8 = 0x04;
const FLAG_VIDEO: u8 = 0x01;
/// The Filter bit of the tag type byte: the payload is encrypted or otherwise
/// pre-processed, and we cannot pass it on as a plain RTMP message.
const TAG_FILTER_BIT: u8 = 0x20;
const TAG_TYPE_MASK: u8 = 0x1F;
/// Payloads up to this size get their whole buffer at the tag header; larger
/// ones grow as their bytes arrive, so memory follows what the peer actually
/// sent rather than what it announced.
const UPFRONT_RESERVE_MAX: usize = 64 * 1024;

/// The FLV file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlvHeader {
    pub has_audio: bool,
    pub has_video: bool,
}

/// One FLV tag: an RTMP audio, video or AMF0 data message without the chunk
/// stream details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvTag {
    /// 8 audio, 9 video, 18 script data (the RTMP message type ids).
    pub tag_type: u8,
    /// Milliseconds, with the extended byte as bits 24-31.
    pub timestamp: u32,
    pub payload: Bytes,
}

impl FlvTag {
    /// The RTMP message carrying this tag. Shares the payload.
    pub fn into_message(self, csid: u32, stream_id: u32) -> RawMessage {
        RawMessage {
            csid,
            timestamp: self.timestamp,
            type_id: MessageType(self.tag_type),
            stream_id,
            payload: self.payload,
        }
    }

    /// The tag for an audio, video or AMF0 data message; `None` for any
    /// other message type, which FLV cannot hold. Shares the payload.
    ///
    /// Data messages are taken as they are: turning RTMP's
    /// `@setDataFrame onMetaData {..}` into a file's `onMetaData {..}` is the
    /// caller's decision.
    pub fn from_message(m: &RawMessage) -> Option<FlvTag> {
        match m.type_id {
            MessageType::AUDIO | MessageType::VIDEO | MessageType::DATA_AMF0 => Some(FlvTag {
                tag_type: m.type_id.0,
                timestamp: m.timestamp,
                payload: m.payload.clone(),
            }),
            _ => None,
        }
    }

    /// Writes this tag and its PreviousTagSize.
    ///
    /// # Panics
    /// As [`write_tag`].
    pub fn write<B: BufMut>(&self, out: &mut B) {
        write_tag(out, self.tag_type, self.timestamp, &self.payload);
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlvError {
    #[error("not an FLV stream (bad signature)")]
    BadSignature,
    /// DataOffset smaller than the header it follows.
    #[error("FLV header announces a data offset of {0}, less than 9")]
    BadDataOffset(u32),
    #[error("FLV tag of {size} bytes exceeds the limit of {limit}")]
    TagTooLarge { size: u32, limit: u32 },
    #[error("unknown FLV tag type {0}")]
    UnknownTagType(u8),
    /// The tag's Filter bit is set (encrypted or pre-processed payload).
    #[error("FLV tag of type {0} is encrypted or filtered")]
    FilteredTag(u8),
    /// Input ended inside the header or a tag (see [`FlvReader::finish`]).
    #[error("FLV stream ends inside a header or tag")]
    Truncated,
}

/// The tag whose header has been read and whose payload is arriving.
#[derive(Debug)]
struct PartialTag {
    tag_type: u8,
    timestamp: u32,
    size: usize,
    payload: BytesMut,
}

impl PartialTag {
    fn missing(&self) -> usize {
        self.size - self.payload.len()
    }

    fn fill_from(&mut self, data: &[u8]) -> usize {
        let n = self.missing().min(data.len());
        self.payload.extend_from_slice(&data[..n]);
        n
    }
}

/// Incremental FLV reader: push bytes as they arrive, then call
/// [`FlvReader::next_tag`] until it returns `Ok(None)`.
///
/// Memory is bounded by what the caller pushes without draining, plus one tag
/// of at most `max_tag_size`: a larger tag is rejected from its header. Each
/// tag gets its own exactly-sized payload, so keeping one (a sequence header
/// in a cache) pins nothing else. PreviousTagSize fields are skipped without
/// being checked, as ffmpeg does: writers get them wrong and they carry
/// nothing a forward reader needs.
///
/// Errors are final: once one is returned, every later call returns it
/// again, because a stream that lost its framing cannot be trusted to
/// recover it.
#[derive(Debug)]
pub struct FlvReader {
    max_tag_size: u32,
    /// Bytes pushed but not yet consumed by the parser.
    input: BytesMut,
    header: Option<FlvHeader>,
    /// Bytes to discard before the next tag header (PreviousTagSize, and any
    /// header extension a DataOffset above 9 announces).
    skip: u64,
    partial: Option<PartialTag>,
    failed: Option<FlvError>,
}

impl FlvReader {
    /// A reader that rejects tags whose payload exceeds `max_tag_size` bytes.
    pub fn new(max_tag_size: u32) -> Self {
        Self {
            max_tag_size,
            input: BytesMut::new(),
            header: None,
            skip: 0,
            partial: None,
            failed: None,
        }
    }

    /// The header, once it has been read.
    pub fn parsed_header(&self) -> Option<FlvHeader> {
        self.header
    }

    /// Bytes pushed but not yet parsed into a header or tag, plus the payload
    /// bytes of the tag in progress.
    pub fn buffered(&self) -> usize {
        self.input.len() + self.partial.as_ref().map_or(0, |p| p.payload.len())
    }

    /// Hands the reader more bytes. Never fails: parsing happens in
    /// [`FlvReader::header`] and [`FlvReader::next_tag`].
    pub fn push(&mut self, mut data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Fast paths while nothing is queued ahead of these bytes: drop what
        // is to be skipped and copy payload straight into its tag, instead of
        // going through `input`.
        if self.input.is_empty() {
            if self.skip > 0 {
                let n = clamp_len(self.skip, data.len());
                data = &data[n..];
                self.skip -= n as u64;
            }
            if let Some(partial) = self.partial.as_mut() {
                let n = partial.fill_from(data);
                data = &data[n..];
            }
        }
        self.input.extend_from_slice(data);
    }

    /// Reads the FLV header (9 bytes) once enough bytes have arrived.
    /// `Ok(None)` means more bytes are needed. PreviousTagSize0 and any
    /// header extension are skipped as they arrive.
    pub fn header(&mut self) -> Result<Option<FlvHeader>, FlvError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.header.is_some() {
            return Ok(self.header);
        }
        if self.input.len() < HEADER_LEN {
            return Ok(None);
        }
        // Version (byte 3) is not checked: only 1 exists, and readers such as
        // ffmpeg accept any.
        if &self.input[..3] != b"FLV" {
            return self.fail(FlvError::BadSignature);
        }
        let flags = self.input[4];
        let data_offset =
            u32::from_be_bytes([self.input[5], self.input[6], self.input[7], self.input[8]]);
        if (data_offset as usize) < HEADER_LEN {
            return self.fail(FlvError::BadDataOffset(data_offset));
        }
        self.input.advance(HEADER_LEN);
        self.skip = u64::from(data_offset) - HEADER_LEN as u64 + PREVIOUS_TAG_SIZE_LEN as u64;
        let header = FlvHeader {
            has_audio: flags & FLAG_AUDIO != 0,
            has_video: flags & FLAG_VIDEO != 0,
        };
        self.header = Some(header);
        Ok(Some(header))
    }

    /// The next complete tag; `Ok(None)` means more bytes are needed. Reads
    /// the header first if that has not happened yet.
    pub fn next_tag(&mut self) -> Result<Option<FlvTag>, FlvError> {
        if self.header()?.is_none() {
            return Ok(None);
        }
        loop {
            if self.skip > 0 {
                let n = clamp_len(self.skip, self.input.len());
                self.input.advance(n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            if let Some(partial) = self.partial.as_mut() {
                let n = partial.fill_from(&self.input);
                self.input.advance(n);
                if partial.missing() > 0 {
                    return Ok(None);
                }
                let Some(done) = self.partial.take() else {
                    return Ok(None);
                };
                self.skip = PREVIOUS_TAG_SIZE_LEN as u64;
                return Ok(Some(FlvTag {
                    tag_type: done.tag_type,
                    timestamp: done.timestamp,
                    payload: done.payload.freeze(),
                }));
            }
            if self.input.len() < TAG_HEADER_LEN {
                return Ok(None);
            }
            self.start_tag()?;
        }
    }

    /// Call at the end of input: `Err(Truncated)` if it stopped inside the
    /// header or a tag. A missing final PreviousTagSize is not an error.
    pub fn finish(&self) -> Result<(), FlvError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.header.is_none() || self.partial.is_some() || !self.input.is_empty() {
            return Err(FlvError::Truncated);
        }
        Ok(())
    }

    /// Parses the 11-byte tag header at the front of `input`.
    fn start_tag(&mut self) -> Result<(), FlvError> {
        let h = &self.input[..TAG_HEADER_LEN];
        // The top two bits are reserved for FMS and ignored by readers.
        if h[0] & TAG_FILTER_BIT != 0 {
            return self.fail(FlvError::FilteredTag(h[0] & TAG_TYPE_MASK));
        }
        let tag_type = h[0] & TAG_TYPE_MASK;
        if !matches!(tag_type, TAG_AUDIO | TAG_VIDEO | TAG_SCRIPT) {
            return self.fail(FlvError::UnknownTagType(tag_type));
        }
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]);
        if size > self.max_tag_size {
            return self.fail(FlvError::TagTooLarge {
                size,
                limit: self.max_tag_size,
            });
        }
        let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        // StreamID (h[8..11]) is always 0 and means nothing to a reader.
        self.input.advance(TAG_HEADER_LEN);
        let size = size as usize;
        self.partial = Some(PartialTag {
            tag_type,
            timestamp,
            size,
            payload: BytesMut::with_capacity(size.min(UPFRONT_RESERVE_MAX)),
        });
        Ok(())
    }

    fn fail<T>(&mut self, err: FlvError) -> Result<T, FlvError> {
        self.failed = Some(err.clone());
        // Nothing more will be parsed: release what is held.
        self.input = BytesMut::new();
        self.partial = None;
        Err(err)
    }
}

/// `min(skip, len)` without a lossy cast on 32-bit targets.
fn clamp_len(skip: u64, len: usize) -> usize {
    usize::try_from(skip).map_or(len, |s| s.min(len))
}

/// Writes the 9-byte FLV header and PreviousTagSize0 (= 0).
pub fn write_header<B: BufMut>(out: &mut B, h: FlvHeader) {
    let mut flags = 0;
    if h.has_audio {
        flags |= FLAG_AUDIO;
    }
    if h.has_video {
        flags |= FLAG_VIDEO;
    }
    out.put_slice(b"FLV");
    out.put_u8(1);
    out.put_u8(flags);
    out.put_u32(HEADER_LEN as u32);
    out.put_u32(0);
}

/// Writes one tag: 11-byte header, payload, PreviousTagSize (= 11 + len).
///
/// # Panics
/// If `payload` is longer than [`MAX_TAG_PAYLOAD`] (16 MiB - 1), which FLV
/// cannot express. An RTMP message can never be that long (its length field
/// is 24 bits as well), so a tag made from one never is.
pub fn write_tag<B: BufMut>(out: &mut B, tag_type: u8, timestamp: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len <= MAX_TAG_PAYLOAD);
    let Some(len) = len else {
        panic!(
            "FLV tag payload of {} bytes exceeds {MAX_TAG_PAYLOAD}",
            payload.len()
        );
    };
    let [_, s1, s2, s3] = len.to_be_bytes();
    // FLV stores the low 24 bits first and the top byte after them.
    let [t0, t1, t2, t3] = timestamp.to_be_bytes();
    out.put_slice(&[tag_type, s1, s2, s3, t1, t2, t3, t0, 0, 0, 0]);
    out.put_slice(payload);
    out.put_u32(TAG_HEADER_LEN as u32 + len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_file(tags: &[FlvTag]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(
            &mut out,
            FlvHeader {
                has_audio: true,
                has_video: true,
            },
        );
        for t in tags {
            t.write(&mut out);
        }
        out
    }

    fn tag(tag_type: u8, timestamp: u32, payload: &[u8]) -> FlvTag {
        FlvTag {
            tag_type,
            timestamp,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn read_all(reader: &mut FlvReader) -> Result<Vec<FlvTag>, FlvError> {
        let mut tags = Vec::new();
        while let Some(t) = reader.next_tag()? {
            tags.push(t);
        }
        Ok(tags)
    }

    #[test]
    fn header_bytes() {
        let mut out = Vec::new();
        write_header(
            &mut out,
            FlvHeader {
                has_audio: true,
                has_video: true,
            },
        );
        assert_eq!(out, b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00");
        let mut r = FlvReader::new(1024);
        r.push(&out[..8]);
        assert_eq!(r.header(), Ok(None));
        r.push(&out[8..]);
        assert_eq!(
            r.header(),
            Ok(Some(FlvHeader {
                has_audio: true,
                has_video: true
            }))
        );
        assert_eq!(r.next_tag(), Ok(None));
        assert_eq!(r.finish(), Ok(()));

        let mut video_only = Vec::new();
        write_header(
            &mut video_only,
            FlvHeader {
                has_audio: false,
                has_video: true,
            },
        );
        assert_eq!(video_only[4], 0x01);
    }

    #[test]
    fn tag_bytes() {
        let mut out = Vec::new();
        write_tag(&mut out, TAG_AUDIO, 0x0102_0304, &[0xAF, 0x01]);
        assert_eq!(
            out,
            [
                8, 0, 0, 2, // type, size
                0x02, 0x03, 0x04, 0x01, // ts low 24 bits, then extended
                0, 0, 0, // stream id
                0xAF, 0x01, // payload
                0, 0, 0, 13, // previous tag size
            ]
        );
    }

    #[test]
    fn extended_timestamp_round_trip() {
        let tags = [
            tag(TAG_VIDEO, (1 << 24) + 5, &[0x17, 0x01]),
            tag(TAG_AUDIO, u32::MAX, &[0xAF, 0x01]),
        ];
        let mut r = FlvReader::new(1024);
        r.push(&sample_file(&tags));
        assert_eq!(read_all(&mut r).unwrap(), tags);
    }

    #[test]
    fn message_mapping() {
        let m = RawMessage {
            csid: 6,
            timestamp: 40,
            type_id: MessageType::VIDEO,
            stream_id: 1,
            payload: Bytes::from_static(&[0x27, 0x01, 0, 0, 0]),
        };
        let t = FlvTag::from_message(&m).unwrap();
        assert_eq!(t.tag_type, TAG_VIDEO);
        // Shared, not copied.
        assert_eq!(t.payload.as_ptr(), m.payload.as_ptr());
        assert_eq!(t.clone().into_message(6, 1), m);

        let data = RawMessage {
            type_id: MessageType::DATA_AMF0,
            ..m.clone()
        };
        assert_eq!(FlvTag::from_message(&data).unwrap().tag_type, TAG_SCRIPT);
        for other in [
            MessageType::COMMAND_AMF0,
            MessageType::DATA_AMF3,
            MessageType::AGGREGATE,
        ] {
            let msg = RawMessage {
                type_id: other,
                ..m.clone()
            };
            assert_eq!(FlvTag::from_message(&msg), None);
        }
    }

    #[test]
    fn wrong_previous_tag_size_is_ignored() {
        let tags = [
            tag(TAG_SCRIPT, 0, b"\x02\x00\x0aonMetaData"),
            tag(TAG_VIDEO, 33, &[0x17, 0x01, 0, 0, 0]),
        ];
        let mut file = sample_file(&tags);
        // Corrupt PreviousTagSize0 and the first tag's trailer.
        file[9..13].copy_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);
        let first_end = 13 + TAG_HEADER_LEN + tags[0].payload.len();
        file[first_end..first_end + 4].copy_from_slice(&[0xFF; 4]);
        let mut r = FlvReader::new(1024);
        r.push(&file);
        assert_eq!(read_all(&mut r).unwrap(), tags);
    }

    #[test]
    fn header_extension_is_skipped() {
        let mut file = b"FLV\x01\x01\x00\x00\x00\x0c".to_vec();
        file.extend_from_slice(&[0xEE; 3]); // 3 extension bytes
        file.extend_from_slice(&[0, 0, 0, 0]);
        write_tag(&mut file, TAG_VIDEO, 7, &[0x27, 0x01]);
        let mut r = FlvReader::new(1024);
        r.push(&file);
        assert_eq!(
            read_all(&mut r).unwrap(),
            [tag(TAG_VIDEO, 7, &[0x27, 0x01])]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut r = FlvReader::new(1024);
        r.push(b"FLX\x01\x05\x00\x00\x00\x09");
        assert_eq!(r.next_tag(), Err(FlvError::BadSignature));
        // Errors are final.
        r.push(&[0; 32]);
        assert_eq!(r.next_tag(), Err(FlvError::BadSignature));

        let mut r = FlvReader::new(1024);
        r.push(b"FLV\x01\x05\x00\x00\x00\x08");
        assert_eq!(r.header(), Err(FlvError::BadDataOffset(8)));

        let header = sample_file(&[]);
        let mut r = FlvReader::new(1024);
        r.push(&header);
        r.push(&[0x07, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.next_tag(), Err(FlvError::UnknownTagType(7)));

        let mut r = FlvReader::new(1024);
        r.push(&header);
        r.push(&[0x29, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.next_tag(), Err(FlvError::FilteredTag(9)));

        // Reserved top bits are ignored.
        let mut r = FlvReader::new(1024);
        r.push(&header);
        r.push(&[0xC9, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x27]);
        assert_eq!(r.next_tag(), Ok(Some(tag(TAG_VIDEO, 0, &[0x27]))));
    }

    #[test]
    fn oversized_tag_rejected_from_its_header() {
        let mut r = FlvReader::new(1000);
        r.push(&sample_file(&[]));
        // Announces 1001 bytes; none of them has arrived.
        r.push(&[9, 0, 0x03, 0xE9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            r.next_tag(),
            Err(FlvError::TagTooLarge {
                size: 1001,
                limit: 1000
            })
        );
        assert_eq!(r.buffered(), 0);
        // Exactly at the limit is fine.
        let mut r = FlvReader::new(1000);
        r.push(&sample_file(&[tag(TAG_VIDEO, 0, &[0x27; 1000])]));
        assert_eq!(read_all(&mut r).unwrap().len(), 1);
    }

    #[test]
    fn announced_size_is_not_reserved_up_front() {
        let mut r = FlvReader::new(MAX_TAG_PAYLOAD);
        r.push(&sample_file(&[]));
        r.push(&[9, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.next_tag(), Ok(None));
        let capacity = r.partial.as_ref().map_or(0, |p| p.payload.capacity());
        assert!(capacity <= UPFRONT_RESERVE_MAX, "reserved {capacity}");
    }

    #[test]
    fn finish_reports_truncation() {
        let file = sample_file(&[tag(TAG_AUDIO, 1, &[0xAF, 0x01, 0x21])]);
        // Without the final PreviousTagSize the file is still complete.
        let complete = &file[..file.len() - 4];
        let mut r = FlvReader::new(1024);
        r.push(complete);
        assert_eq!(read_all(&mut r).unwrap().len(), 1);
        assert_eq!(r.finish(), Ok(()));

        for cut in [0, 5, 14, 20, complete.len() - 1] {
            let mut r = FlvReader::new(1024);
            r.push(&file[..cut]);
            assert_eq!(read_all(&mut r).unwrap().len(), 0);
            assert_eq!(r.finish(), Err(FlvError::Truncated), "cut at {cut}");
        }
    }

    #[test]
    fn payloads_do_not_share_the_input_buffer() {
        let tags = [
            tag(TAG_AUDIO, 0, &[0xAF, 0x00, 0x12, 0x10]),
            tag(TAG_VIDEO, 0, &[0x17, 0x01, 0, 0, 0, 1, 2, 3]),
        ];
        let mut r = FlvReader::new(1024);
        r.push(&sample_file(&tags));
        let got = read_all(&mut r).unwrap();
        assert_eq!(got, tags);
        // Each payload is the sole owner of an exactly-sized buffer: a cached
        // sequence header pins only itself.
        for t in got {
            let len = t.payload.len();
            let owned = t.payload.try_into_mut().expect("payload shares a buffer");
            assert_eq!(owned.capacity(), len);
        }
    }

    fn arb_tag() -> impl Strategy<Value = FlvTag> {
        (
            prop_oneof![Just(TAG_AUDIO), Just(TAG_VIDEO), Just(TAG_SCRIPT)],
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(tag_type, timestamp, payload)| FlvTag {
                tag_type,
                timestamp,
                payload: Bytes::from(payload),
            })
    }

    proptest! {
        #[test]
        fn round_trip_any_fragmentation(
            tags in proptest::collection::vec(arb_tag(), 0..12),
            cuts in proptest::collection::vec(1usize..64, 1..200),
            drain_every_push in any::<bool>(),
        ) {
            let file = sample_file(&tags);
            let mut r = FlvReader::new(300);
            let mut got = Vec::new();
            let mut pos = 0;
            let mut cuts = cuts.into_iter().cycle();
            while pos < file.len() {
                let n = cuts.next().unwrap_or(1).min(file.len() - pos);
                r.push(&file[pos..pos + n]);
                pos += n;
                if drain_every_push {
                    got.extend(read_all(&mut r).unwrap());
                }
            }
            got.extend(read_all(&mut r).unwrap());
            prop_assert_eq!(got, tags);
            prop_assert_eq!(r.finish(), Ok(()));
            prop_assert_eq!(r.buffered(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            with_header in any::<bool>(),
        ) {
            let mut r = FlvReader::new(256);
            if with_header {
                r.push(&sample_file(&[]));
            }
            for chunk in data.chunks(7) {
                r.push(chunk);
                while let Ok(Some(_)) = r.next_tag() {}
            }
            let _ = r.finish();
        }
    }
}
