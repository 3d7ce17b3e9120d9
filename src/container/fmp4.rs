//! Fragmented MP4 (CMAF) for LL-HLS: the init segment (`ftyp` + `moov`)
//! and one `moof` + `mdat` per partial segment, muxing video and audio.
//!
//! The boxes are `mp4-atom`'s. The one thing written by hand is the `mdat`
//! header: its body is the samples' own shared `Bytes`, sent as iovecs
//! behind the header, so no sample is copied into a fragment (mp4-atom's
//! `Mdat` owns a `Vec<u8>`).

use bytes::Bytes;
use mp4_atom::esds::{DecoderConfig, DecoderSpecific, EsDescriptor, SLConfig};
use mp4_atom::{
    Audio, Av01, Av1c, Avc1, Avcc, Codec, Dinf, Dops, Dref, DrefEntry, Encode, Esds, FourCC, Ftyp,
    Hdlr, Hvc1, Hvcc, Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mp4a, Mvex, Mvhd, Opus, Smhd, Stbl, Stco,
    Stsc, Stsd, Stsz, Stts, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, TrunSamples, Url,
    Visual, Vmhd,
};

/// Video track id and timescale (90 kHz, as MPEG-TS and most players use).
pub const VIDEO_TRACK: u32 = 1;
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// Audio track id; its timescale is the sample rate.
pub const AUDIO_TRACK: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoKind {
    Avc,
    Hevc,
    Av1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioKind {
    Aac,
    Opus,
}

/// A video track: its codec, its decoder configuration record as the
/// publisher sent it (avcC, hvcC or av1C body), and its picture size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTrack {
    pub kind: VideoKind,
    pub config: Bytes,
    pub width: u16,
    pub height: u16,
}

/// An audio track: codec, configuration (AudioSpecificConfig, or an Opus
/// ID header), sample rate and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTrack {
    pub kind: AudioKind,
    pub config: Bytes,
    pub rate: u32,
    pub channels: u16,
}

/// One sample of a fragment, in its track's timescale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub dts: u64,
    pub duration: u32,
    /// Composition offset (pts - dts).
    pub cts: i32,
    pub key: bool,
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum Fmp4Error {
    #[error("bad {what} configuration: {source}")]
    Config {
        what: &'static str,
        source: mp4_atom::Error,
    },
    #[error("bad Opus ID header")]
    OpusHead,
    #[error("encoding {0}: {1}")]
    Encode(&'static str, mp4_atom::Error),
}

fn config_err(what: &'static str) -> impl FnOnce(mp4_atom::Error) -> Fmp4Error {
    move |source| Fmp4Error::Config { what, source }
}

fn decode_record<T: mp4_atom::Atom>(what: &'static str, body: &[u8]) -> Result<T, Fmp4Error> {
    let mut buf = body;
    T::decode_body(&mut buf).map_err(config_err(what))
}

/// The sample rate and channel count an AudioSpecificConfig names.
pub fn aac_rate_channels(asc: &[u8]) -> Option<(u32, u16)> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let (a, b) = (*asc.first()?, *asc.get(1)?);
    let index = ((a & 0x07) << 1) | (b >> 7);
    let channels = (b >> 3) & 0x0F;
    Some((*RATES.get(index as usize)?, channels as u16))
}

/// The Opus ID header ("OpusHead", RFC 7845) as the dOps box holds it.
fn dops(head: &[u8]) -> Result<Dops, Fmp4Error> {
    if head.len() < 19 || &head[..8] != b"OpusHead" {
        return Err(Fmp4Error::OpusHead);
    }
    Ok(Dops {
        output_channel_count: head[9],
        pre_skip: u16::from_le_bytes([head[10], head[11]]),
        input_sample_rate: u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
        output_gain: i16::from_le_bytes([head[16], head[17]]),
        channel_mapping: None,
    })
}

fn visual(v: &VideoTrack) -> Visual {
    Visual {
        data_reference_index: 1,
        width: v.width,
        height: v.height,
        ..Default::default()
    }
}

fn video_codec(v: &VideoTrack) -> Result<Codec, Fmp4Error> {
    Ok(match v.kind {
        VideoKind::Avc => Avc1 {
            visual: visual(v),
            avcc: decode_record::<Avcc>("avcC", &v.config)?,
            ..Default::default()
        }
        .into(),
        VideoKind::Hevc => Hvc1 {
            visual: visual(v),
            hvcc: decode_record::<Hvcc>("hvcC", &v.config)?,
            ..Default::default()
        }
        .into(),
        VideoKind::Av1 => Av01 {
            visual: visual(v),
            av1c: decode_record::<Av1c>("av1C", &v.config)?,
            ..Default::default()
        }
        .into(),
    })
}

fn audio_codec(a: &AudioTrack) -> Result<Codec, Fmp4Error> {
    let audio = Audio {
        data_reference_index: 1,
        channel_count: a.channels,
        sample_size: 16,
        sample_rate: (a.rate.min(u16::MAX as u32) as u16).into(),
    };
    Ok(match a.kind {
        AudioKind::Aac => {
            let mut body = &a.config[..];
            let dec_specific = <DecoderSpecific as mp4_atom::Decode>::decode(&mut body)
                .map_err(config_err("AudioSpecificConfig"))?;
            Mp4a {
                audio,
                esds: Esds {
                    es_desc: EsDescriptor {
                        es_id: 2,
                        dec_config: DecoderConfig {
                            object_type_indication: 0x40,
                            stream_type: 5,
                            up_stream: 0,
                            buffer_size_db: Default::default(),
                            max_bitrate: 0,
                            avg_bitrate: 0,
                            dec_specific: Some(dec_specific),
                        },
                        sl_config: SLConfig::default(),
                        ..Default::default()
                    },
                },
                btrt: None,
                taic: None,
            }
            .into()
        }
        AudioKind::Opus => Opus {
            audio,
            dops: dops(&a.config)?,
            btrt: None,
        }
        .into(),
    })
}

fn trak(
    id: u32,
    timescale: u32,
    handler: &[u8; 4],
    codec: Codec,
    video: Option<&VideoTrack>,
) -> Trak {
    let (vmhd, smhd) = match video {
        Some(_) => (Some(Vmhd::default()), None),
        None => (None, Some(Smhd::default())),
    };
    Trak {
        tkhd: Tkhd {
            track_id: id,
            enabled: true,
            in_movie: true,
            volume: if video.is_some() { 0.into() } else { 1.into() },
            width: video.map_or(0, |v| v.width).into(),
            height: video.map_or(0, |v| v.height).into(),
            ..Default::default()
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale,
                language: "und".into(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: FourCC::new(handler),
                name: String::from(if video.is_some() {
                    "VideoHandler"
                } else {
                    "SoundHandler"
                }),
            },
            minf: Minf {
                vmhd,
                smhd,
                dinf: Dinf {
                    dref: Dref {
                        entries: vec![DrefEntry::Url(Url::default())],
                    },
                },
                stbl: Stbl {
                    stsd: Stsd {
                        codecs: vec![codec],
                    },
                    stts: Stts::default(),
                    stsc: Stsc::default(),
                    stsz: Stsz::default(),
                    stco: Some(Stco::default()),
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// The track id of the `n`th audio track past the first (multitrack).
pub fn extra_audio_track(n: usize) -> u32 {
    AUDIO_TRACK + 1 + n as u32
}

/// The init segment for these tracks (either may be absent), and any
/// further audio tracks (ids from [`extra_audio_track`]).
pub fn init_segment(
    video: Option<&VideoTrack>,
    audio: Option<&AudioTrack>,
    extra_audio: &[&AudioTrack],
) -> Result<Bytes, Fmp4Error> {
    let mut traks = Vec::new();
    let mut trex = Vec::new();
    if let Some(v) = video {
        traks.push(trak(
            VIDEO_TRACK,
            VIDEO_TIMESCALE,
            b"vide",
            video_codec(v)?,
            Some(v),
        ));
        trex.push(Trex {
            track_id: VIDEO_TRACK,
            default_sample_description_index: 1,
            ..Default::default()
        });
    }
    if let Some(a) = audio {
        traks.push(trak(AUDIO_TRACK, a.rate, b"soun", audio_codec(a)?, None));
        trex.push(Trex {
            track_id: AUDIO_TRACK,
            default_sample_description_index: 1,
            ..Default::default()
        });
    }
    for (n, a) in extra_audio.iter().enumerate() {
        let id = extra_audio_track(n);
        traks.push(trak(id, a.rate, b"soun", audio_codec(a)?, None));
        trex.push(Trex {
            track_id: id,
            default_sample_description_index: 1,
            ..Default::default()
        });
    }
    if !extra_audio.is_empty() {
        // The audio tracks are alternatives of one another: a player plays
        // one of them.
        for t in traks
            .iter_mut()
            .filter(|t| t.mdia.hdlr.handler == FourCC::new(b"soun"))
        {
            t.tkhd.alternate_group = 1;
        }
    }
    let ftyp = Ftyp {
        major_brand: FourCC::new(b"iso6"),
        minor_version: 0,
        compatible_brands: [b"iso6", b"cmfc", b"mp41", b"dash"]
            .iter()
            .map(|b| FourCC::new(b))
            .collect(),
    };
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: extra_audio_track(extra_audio.len()),
            ..Default::default()
        },
        mvex: Some(Mvex { mehd: None, trex }),
        trak: traks,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(1024);
    ftyp.encode(&mut out)
        .map_err(|e| Fmp4Error::Encode("ftyp", e))?;
    moov.encode(&mut out)
        .map_err(|e| Fmp4Error::Encode("moov", e))?;
    Ok(Bytes::from(out))
}

/// Sample flags: a sync sample depends on nothing; others depend on
/// earlier samples and are not sync samples.
fn sample_flags(key: bool) -> u32 {
    if key {
        0x0200_0000
    } else {
        0x0101_0000
    }
}

/// One fragment (`moof` + `mdat`) carrying `tracks`' samples, each track's
/// run after the previous one's in the `mdat`. Returns the `Bytes` to send
/// in order: the boxes, then every sample's data, shared.
pub fn fragment(sequence: u32, tracks: &[(u32, &[Sample])]) -> Result<Vec<Bytes>, Fmp4Error> {
    let tracks: Vec<_> = tracks.iter().filter(|(_, s)| !s.is_empty()).collect();
    let build = |offsets: &[i32]| Moof {
        mfhd: Mfhd {
            sequence_number: sequence,
        },
        traf: tracks
            .iter()
            .zip(offsets)
            .map(|((id, samples), offset)| Traf {
                tfhd: Tfhd {
                    track_id: *id,
                    default_base_is_moof: true,
                    ..Default::default()
                },
                tfdt: Some(Tfdt {
                    base_media_decode_time: samples[0].dts,
                }),
                trun: vec![Trun {
                    data_offset: Some(*offset),
                    samples: TrunSamples::Explicit(
                        samples
                            .iter()
                            .map(|s| TrunEntry {
                                duration: Some(s.duration),
                                size: Some(s.data.len() as u32),
                                flags: Some(sample_flags(s.key)),
                                cts: Some(s.cts as i64),
                            })
                            .collect(),
                    ),
                }],
                ..Default::default()
            })
            .collect(),
    };
    // The data offsets depend on the moof's size, which does not depend on
    // their values: size it once with zeros, then write it for real.
    let mut probe = Vec::new();
    build(&vec![0; tracks.len()])
        .encode(&mut probe)
        .map_err(|e| Fmp4Error::Encode("moof", e))?;
    let mut offsets = Vec::with_capacity(tracks.len());
    let mut at = probe.len() + 8;
    let mut body = 0usize;
    for (_, samples) in &tracks {
        offsets.push(at as i32);
        let n: usize = samples.iter().map(|s| s.data.len()).sum();
        at += n;
        body += n;
    }
    let mut head = Vec::with_capacity(probe.len() + 8);
    build(&offsets)
        .encode(&mut head)
        .map_err(|e| Fmp4Error::Encode("moof", e))?;
    head.extend_from_slice(&((body + 8) as u32).to_be_bytes());
    head.extend_from_slice(b"mdat");
    let mut out = Vec::with_capacity(1 + tracks.iter().map(|(_, s)| s.len()).sum::<usize>());
    out.push(Bytes::from(head));
    for (_, samples) in &tracks {
        out.extend(samples.iter().map(|s| s.data.clone()));
    }
    Ok(out)
}
