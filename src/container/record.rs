//! Recording, sans-IO: what a recorder writes and when, how a recorded
//! file is read back, which files a time range needs, and which files the
//! retention rules delete. The shard's recorder (`node::record`) does the
//! I/O through glommio; the media listener serves what [`plan`] chooses.
//!
//! - A recording is a run of **segment files**, each a complete fragmented
//!   MP4 (CMAF): the packager's init segment, then one `moof` + `mdat` per
//!   fragment, appended as each completes. A file starts at a keyframe
//!   (the packager's segments do) and closes at the first segment boundary
//!   at or past `record.segment_secs`, on a new decoder configuration, when
//!   the stream ends, or after a gap.
//! - A file is named by the wall-clock time of its first sample,
//!   `YYYYMMDDTHHMMSS.mmmZ.mp4` (UTC), in a directory per stream:
//!   `APP/NAME` with each `/` of the name written `%2F` (no stream name
//!   holds `%`, so the mapping is one to one and no name opens a second
//!   directory level).
//! - After a crash a file may end in a fragment cut short; [`scan`] finds
//!   where the last complete fragment ends, and the node truncates the file
//!   there when it starts.

use std::collections::VecDeque;

use bytes::Bytes;
use mp4_atom::{Atom, FourCC};

use super::packager::Output;
use super::window::Part;
use crate::stream::StreamKey;

/// What the recorder does next, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a new segment file with this init segment; its first sample
    /// played `lead_ms` before the moment this action is taken.
    Open { init: Bytes, lead_ms: f64 },
    /// Append one fragment to the open file.
    Append {
        bytes: Vec<Bytes>,
        size: usize,
        duration_ms: f64,
    },
    /// Close the open file (it is complete).
    Close,
}

/// The packager's output as segment files: a [`super::packager::Output`]
/// that queues [`Action`]s for the recorder to carry out.
pub struct Recording {
    segment_ms: f64,
    init: Option<Bytes>,
    /// The init of the open file differs from `init` (a new configuration):
    /// the next segment starts a new file.
    init_changed: bool,
    open: bool,
    /// How long the open file plays, ms.
    file_ms: f64,
    /// The next part starts a segment (so it may start a file).
    at_segment_start: bool,
    /// Parts are dropped until the next segment start (after a gap).
    skipping: bool,
    actions: VecDeque<Action>,
}

impl Recording {
    pub fn new(segment_secs: u32) -> Recording {
        Recording {
            segment_ms: segment_secs as f64 * 1000.0,
            init: None,
            init_changed: false,
            open: false,
            file_ms: 0.0,
            at_segment_start: true,
            skipping: false,
            actions: VecDeque::new(),
        }
    }

    /// The next action, if any.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The recorder could not keep up (its write queue is full) or a write
    /// failed: the open file closes, queued appends are dropped, and the
    /// recording goes on in a new file from the next keyframe. Returns how
    /// many fragments were dropped from the queue.
    pub fn gap(&mut self) -> usize {
        let before = self.actions.len();
        self.actions.retain(|a| !matches!(a, Action::Append { .. }));
        let dropped = before - self.actions.len();
        // An Open left in the queue would open a file with no fragment.
        self.actions.retain(|a| !matches!(a, Action::Open { .. }));
        if self.open {
            self.actions.push_back(Action::Close);
            self.open = false;
        }
        self.skipping = true;
        dropped
    }

    /// Closes the open file now (recording stopped).
    pub fn stop(&mut self) {
        if self.open {
            self.actions.push_back(Action::Close);
            self.open = false;
        }
        self.skipping = true;
    }

    /// Starts again after [`Recording::stop`], at the next keyframe.
    pub fn resume(&mut self) {
        self.skipping = true;
    }
}

impl Output for Recording {
    fn init(&mut self, init: Bytes, _codecs: Option<String>, _resolution: Option<(u16, u16)>) {
        if self.init.as_ref() != Some(&init) {
            self.init_changed = self.open;
            self.init = Some(init);
        }
    }

    fn part(&mut self, part: Part, end_segment: bool) {
        let starts_segment = self.at_segment_start;
        self.at_segment_start = end_segment;
        if starts_segment && part.independent {
            let due = self.file_ms >= self.segment_ms || self.init_changed;
            if self.open && due {
                self.actions.push_back(Action::Close);
                self.open = false;
            }
            if !self.open {
                if let Some(init) = self.init.clone() {
                    self.actions.push_back(Action::Open {
                        init,
                        lead_ms: part.duration * 1000.0,
                    });
                    self.open = true;
                    self.init_changed = false;
                    self.skipping = false;
                    self.file_ms = 0.0;
                }
            }
        }
        if !self.open || self.skipping {
            return;
        }
        self.file_ms += part.duration * 1000.0;
        self.actions.push_back(Action::Append {
            size: part.size,
            bytes: part.bytes,
            duration_ms: part.duration * 1000.0,
        });
    }

    fn close_segment(&mut self) {
        self.at_segment_start = true;
    }

    fn end(&mut self) {
        self.stop();
        self.skipping = false;
        self.at_segment_start = true;
    }
}

// ----- names

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn split_ms(unix_ms: u64) -> (i64, u32, u32, u64) {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    (y, m, d, secs % 86_400)
}

/// A segment file's name for a first sample at `unix_ms`.
pub fn segment_name(unix_ms: u64) -> String {
    let (y, mo, d, s) = split_ms(unix_ms);
    format!(
        "{y:04}{mo:02}{d:02}T{:02}{:02}{:02}.{:03}Z.mp4",
        s / 3600,
        s / 60 % 60,
        s % 60,
        unix_ms % 1000
    )
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn to_unix_ms(y: i64, mo: u64, d: u64, h: u64, mi: u64, s: u64, ms: u64) -> Option<u64> {
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || s > 60
        || ms > 999
    {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    // 31 February and the like: the date must survive the round trip.
    if civil_from_days(days) != (y, mo as u32, d as u32) {
        return None;
    }
    let secs = days as u64 * 86_400 + h * 3600 + mi * 60 + s;
    Some(secs * 1000 + ms)
}

/// The start time (unix ms) a segment file's name gives; None for any
/// other name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let b = name.as_bytes();
    // ASCII first: every slice below is then on a character boundary.
    if !name.is_ascii() || b.len() != 24 || b[8] != b'T' || b[15] != b'.' || &b[19..] != b"Z.mp4" {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits(&name[r]);
    to_unix_ms(
        n(0..4)? as i64,
        n(4..6)?,
        n(6..8)?,
        n(9..11)?,
        n(11..13)?,
        n(13..15)?,
        n(16..19)?,
    )
}

/// An RFC 3339 time (`2026-12-04T03:59:00Z`, `...00.250+01:00`) as unix
/// ms.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(digits);
    let (y, mo, d) = (n(0..4)? as i64, n(5..7)?, n(8..10)?);
    let (h, mi, sec) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 || len > 9 {
            return None;
        }
        let first3 = format!("{:0<3}", &frac[..len.min(3)]);
        ms = digits(&first3)?;
        rest = &frac[len..];
    }
    let offset_min: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            let oh = digits(&rest[1..3])? as i64;
            let om = digits(&rest[4..6])? as i64;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 60 + om;
            if rb[0] == b'-' {
                -o
            } else {
                o
            }
        }
    };
    let local = to_unix_ms(y, mo, d, h, mi, sec, ms)? as i64;
    u64::try_from(local - offset_min * 60_000).ok()
}

/// An RFC 3339 UTC time for unix ms (what the API shows).
pub fn format_rfc3339(unix_ms: u64) -> String {
    let (y, mo, d, s) = split_ms(unix_ms);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        unix_ms % 1000
    )
}

/// The directory of `key`'s recordings under `record.path`: the app, then
/// the name with each `/` written `%2F`. None when a part is too long for
/// a file name (255 bytes).
pub fn stream_dir(key: &StreamKey) -> Option<(String, String)> {
    let name = key.name().replace('/', "%2F");
    (key.app().len() <= 255 && name.len() <= 255).then(|| (key.app().to_owned(), name))
}

/// The stream a recording directory pair names, if any.
pub fn stream_of_dir(app: &str, name: &str) -> Option<StreamKey> {
    let name = name.replace("%2F", "/");
    StreamKey::parse(&format!("{app}/{name}")).ok()
}

// ----- reading a recorded file back

/// One fragment of a recorded file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fragment {
    /// Where its `moof` starts, and its length with its `mdat`.
    pub offset: u64,
    pub len: u64,
    /// Media time of its first sample and how long it plays, seconds (the
    /// video track's, or the audio's when there is no video).
    pub start: f64,
    pub duration: f64,
    /// It starts with a keyframe (every audio-only fragment does).
    pub independent: bool,
}

/// What [`scan`] found in a recorded file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileIndex {
    /// Bytes of the init segment (`ftyp` + `moov`) at the start.
    pub init_len: u64,
    pub fragments: Vec<Fragment>,
    /// Where the last complete box ends: the file's length unless a crash
    /// cut its last fragment short.
    pub complete_len: u64,
}

impl FileIndex {
    /// How long the file plays, seconds.
    pub fn duration(&self) -> f64 {
        match (self.fragments.first(), self.fragments.last()) {
            (Some(a), Some(b)) => (b.start + b.duration - a.start).max(0.0),
            _ => 0.0,
        }
    }
}

/// A box header: total size and type, and the header's own length.
pub fn box_header(b: &[u8]) -> Option<(u64, [u8; 4], u64)> {
    if b.len() < 8 {
        return None;
    }
    let size = u32::from_be_bytes(b[0..4].try_into().ok()?) as u64;
    let kind: [u8; 4] = b[4..8].try_into().ok()?;
    match size {
        1 => {
            let big = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
            (big >= 16).then_some((big, kind, 16))
        }
        0 => None, // "to the end of the file": never written by us
        n if n >= 8 => Some((n, kind, 8)),
        _ => None,
    }
}

/// The timescale of each track (id, timescale, is video) of an init
/// segment's `moov` body.
pub fn moov_tracks(body: &[u8]) -> Option<Vec<(u32, u32, bool)>> {
    let mut buf = body;
    let moov = mp4_atom::Moov::decode_body(&mut buf).ok()?;
    Some(
        moov.trak
            .iter()
            .map(|t| {
                (
                    t.tkhd.track_id,
                    t.mdia.mdhd.timescale,
                    t.mdia.hdlr.handler == FourCC::new(b"vide"),
                )
            })
            .collect(),
    )
}

/// The first sample flags bit that says "not a sync sample".
const NON_SYNC: u32 = 0x0001_0000;

/// A `moof` body's time and keyframe, on the track [`scan`] follows:
/// (start, duration, independent) in seconds.
pub fn moof_times(body: &[u8], tracks: &[(u32, u32, bool)]) -> Option<(f64, f64, bool)> {
    let mut buf = body;
    let moof = mp4_atom::Moof::decode_body(&mut buf).ok()?;
    let main = tracks
        .iter()
        .find(|t| t.2)
        .or_else(|| tracks.first())
        .copied()?;
    let traf = moof.traf.iter().find(|t| t.tfhd.track_id == main.0);
    let Some(traf) = traf else {
        // This fragment has no sample of the main track (audio only for a
        // moment): timed by any track it has, never a keyframe.
        let traf = moof.traf.first()?;
        let scale = tracks.iter().find(|t| t.0 == traf.tfhd.track_id)?.1 as f64;
        let (start, duration, _) = traf_times(traf, scale)?;
        return Some((start, duration, false));
    };
    let (start, duration, key) = traf_times(traf, main.1 as f64)?;
    Some((start, duration, key || !main.2))
}

fn traf_times(traf: &mp4_atom::Traf, scale: f64) -> Option<(f64, f64, bool)> {
    if scale <= 0.0 {
        return None;
    }
    let base = traf.tfdt.as_ref()?.base_media_decode_time;
    let default = traf.tfhd.default_sample_duration.unwrap_or(0);
    let mut ticks = 0u64;
    let mut first_flags = None;
    for run in &traf.trun {
        match &run.samples {
            mp4_atom::TrunSamples::Explicit(entries) => {
                for e in entries {
                    ticks += e.duration.unwrap_or(default) as u64;
                    first_flags.get_or_insert(e.flags.unwrap_or(0));
                }
            }
            _ => return None,
        }
    }
    let key = first_flags.is_some_and(|f| f & NON_SYNC == 0);
    Some((base as f64 / scale, ticks as f64 / scale, key))
}

/// Reads a recorded file's structure through `read(offset, len)` (which
/// answers at most `len` bytes at `offset`, fewer at the end of the file):
/// the init segment, every complete fragment, and where the last complete
/// one ends. Reads box headers and `moof`s only, never `mdat` bodies.
/// None when the file does not start with an init segment we can read.
pub async fn scan<R, F>(file_len: u64, mut read: R) -> Option<FileIndex>
where
    R: FnMut(u64, usize) -> F,
    F: std::future::Future<Output = Option<Vec<u8>>>,
{
    /// The largest `moov` or `moof` read whole.
    const MAX_META: u64 = 4 << 20;
    let mut at = 0u64;
    let mut out = FileIndex::default();
    let mut tracks = None;
    let mut pending: Option<(u64, f64, f64, bool)> = None;
    while at < file_len {
        let head = read(at, 16).await?;
        let Some((size, kind, hlen)) = box_header(&head) else {
            break;
        };
        if at.checked_add(size).is_none_or(|end| end > file_len) {
            break; // cut short by a crash
        }
        match &kind {
            b"ftyp" | b"styp" | b"free" | b"sidx" => {}
            b"moov" if size <= MAX_META => {
                let body = read(at + hlen, (size - hlen) as usize).await?;
                tracks = Some(moov_tracks(&body)?);
                out.init_len = at + size;
            }
            b"moof" if size <= MAX_META => {
                let body = read(at + hlen, (size - hlen) as usize).await?;
                let Some((start, duration, key)) = moof_times(&body, tracks.as_ref()?) else {
                    break;
                };
                pending = Some((at, start, duration, key));
            }
            b"mdat" => {
                if let Some((offset, start, duration, independent)) = pending.take() {
                    out.fragments.push(Fragment {
                        offset,
                        len: at + size - offset,
                        start,
                        duration,
                        independent,
                    });
                }
            }
            _ => break,
        }
        at += size;
        if pending.is_none() {
            out.complete_len = at;
        }
    }
    tracks.map(|_| out)
}

// ----- choosing what a time range needs

/// A finished or open segment file of a stream, as the index lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentInfo {
    pub file: String,
    pub start_ms: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    /// Being written now.
    pub open: bool,
}

/// One file's share of a time range: its init, then these fragments.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub file: String,
    /// The wall-clock start of its first fragment, unix ms.
    pub start_ms: u64,
    pub init_len: u64,
    pub fragments: Vec<Fragment>,
    /// Its timeline does not continue the previous piece's (a new
    /// publish, a gap, another configuration).
    pub discontinuity: bool,
}

/// The fragments of `files` (each with its wall-clock start, unix ms, and
/// its index) that play `[from_ms, to_ms)`: from the last keyframe at or
/// before `from_ms` to the first fragment that starts at or after `to_ms`.
pub fn plan(files: &[(u64, String, FileIndex)], from_ms: u64, to_ms: u64) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    // Where the previous piece's media ends, seconds.
    let mut last_end: Option<f64> = None;
    for (start_ms, file, index) in files {
        let Some(first) = index.fragments.first() else {
            continue;
        };
        let wall = |f: &Fragment| *start_ms as f64 + (f.start - first.start) * 1000.0;
        let frags = &index.fragments;
        // The fragment to start from: the last keyframe at or before from_ms.
        let begin = frags
            .iter()
            .rposition(|f| f.independent && wall(f) <= from_ms as f64)
            .or_else(|| frags.iter().position(|f| f.independent))
            .unwrap_or(0);
        let ends = frags.last().map_or(0.0, |f| wall(f) + f.duration * 1000.0);
        if ends <= from_ms as f64 {
            continue;
        }
        let chosen: Vec<Fragment> = frags[begin..]
            .iter()
            .filter(|f| wall(f) < to_ms as f64)
            .copied()
            .collect();
        // The chosen fragments must start with a keyframe.
        let chosen = match chosen.iter().position(|f| f.independent) {
            Some(i) => chosen[i..].to_vec(),
            None => continue,
        };
        let Some(c0) = chosen.first() else {
            continue;
        };
        // The media timeline decides (a publish faster than real time, or
        // a clock step, moves the wall clock but not the media's).
        let discontinuity = last_end.is_some_and(|end| (c0.start - end).abs() > 0.5);
        last_end = Some(chosen.last().map_or(c0.start, |f| f.start + f.duration));
        out.push(Piece {
            file: file.clone(),
            start_ms: wall(c0).max(0.0) as u64,
            init_len: index.init_len,
            fragments: chosen,
            discontinuity,
        });
    }
    out
}

/// One file's part of a VOD playlist: its init and its media segments.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistBlock {
    pub file: String,
    /// The wall-clock start of its first segment, unix ms.
    pub start_ms: u64,
    pub init_len: u64,
    /// Its timeline does not continue the previous block's.
    pub discontinuity: bool,
    /// Its media segments: (offset, length, seconds).
    pub segments: Vec<(u64, u64, f64)>,
}

/// `pieces` as playlist blocks: each keyframe-started run of fragments one
/// media segment (a byte range of its file).
pub fn playlist_blocks(pieces: &[Piece]) -> Vec<PlaylistBlock> {
    let mut out = Vec::with_capacity(pieces.len());
    for p in pieces {
        let mut segments: Vec<(u64, u64, f64)> = Vec::new();
        for f in &p.fragments {
            match segments.last_mut() {
                Some(s) if !f.independent => {
                    s.1 += f.len;
                    s.2 += f.duration;
                }
                _ => segments.push((f.offset, f.len, f.duration)),
            }
        }
        out.push(PlaylistBlock {
            file: p.file.clone(),
            start_ms: p.start_ms,
            init_len: p.init_len,
            discontinuity: p.discontinuity,
            segments,
        });
    }
    out
}

/// A VOD HLS playlist over `pieces`: each keyframe-started run of
/// fragments one media segment (a byte range of its file), each file's init
/// its `EXT-X-MAP`. Segment URIs are the file names with `query` (the
/// viewer's token) behind them.
pub fn vod_playlist(pieces: &[Piece], query: &str) -> String {
    render_vod_playlist(&playlist_blocks(pieces), query, false)
}

/// The VOD playlist of `blocks`. Each block starts with its wall-clock time
/// (`EXT-X-PROGRAM-DATE-TIME`), so a player shows when it was recorded and a
/// gap between blocks is visible. `event`: the recording goes on (an
/// `EVENT` playlist, no end: a player reloads it and plays on to the live
/// edge; its segments never change, only new ones are added).
pub fn render_vod_playlist(blocks: &[PlaylistBlock], query: &str, event: bool) -> String {
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    let target = blocks
        .iter()
        .flat_map(|b| &b.segments)
        .map(|s| s.2.round() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    // An EVENT playlist's target duration may not change between reloads:
    // one that a keyframe interval up to 10 s fits.
    let (target, kind) = match event {
        true => (target.max(EVENT_TARGET_SECS), "EVENT"),
        false => (target, "VOD"),
    };
    let mut out = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-PLAYLIST-TYPE:{kind}\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    );
    let mut any = false;
    for b in blocks {
        if b.segments.is_empty() {
            continue;
        }
        if any && b.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        any = true;
        out.push_str(&format!(
            "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXT-X-MAP:URI=\"{}{q}\",BYTERANGE=\"{}@0\"\n",
            format_rfc3339(b.start_ms),
            b.file,
            b.init_len
        ));
        for (offset, len, secs) in &b.segments {
            out.push_str(&format!(
                "#EXTINF:{secs:.3},\n#EXT-X-BYTERANGE:{len}@{offset}\n{}{q}\n",
                b.file
            ));
        }
    }
    if !event {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

/// The target duration of an EVENT playlist, seconds.
pub const EVENT_TARGET_SECS: u64 = 10;

/// The blocks of a playlist [`render_vod_playlist`] wrote (another node's
/// answer); None for anything else. Every file it names must be a
/// recording's file name, so what another node answers can never point a
/// viewer elsewhere. The flag: it is an EVENT playlist (no end yet).
pub fn parse_vod_playlist(text: &str) -> Option<(Vec<PlaylistBlock>, bool)> {
    let mut lines = text.lines();
    if lines.next()? != "#EXTM3U" {
        return None;
    }
    let mut out: Vec<PlaylistBlock> = Vec::new();
    let (mut discontinuity, mut date) = (false, None);
    let (mut secs, mut range) = (None, None);
    let mut ended = false;
    let file_of = |uri: &str| {
        let name = uri.split('?').next().unwrap_or("");
        parse_segment_name(name).map(|start| (name.to_owned(), start))
    };
    let number = |s: &str| s.parse::<u64>().ok();
    let byterange = |s: &str| {
        let (len, at) = s.split_once('@')?;
        Some((number(at)?, number(len)?))
    };
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line == "#EXT-X-ENDLIST" {
            ended = true;
            continue;
        }
        if line == "#EXT-X-DISCONTINUITY" {
            discontinuity = true;
        } else if let Some(t) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            date = Some(parse_rfc3339(t)?);
        } else if let Some(map) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
            let (uri, rest) = map.split_once('"')?;
            let (at, len) = byterange(rest.strip_prefix(",BYTERANGE=\"")?.strip_suffix('"')?)?;
            let (file, named) = file_of(uri)?;
            if at != 0 {
                return None;
            }
            out.push(PlaylistBlock {
                file,
                start_ms: date.take().unwrap_or(named),
                init_len: len,
                discontinuity: std::mem::take(&mut discontinuity) && !out.is_empty(),
                segments: Vec::new(),
            });
        } else if let Some(d) = line.strip_prefix("#EXTINF:") {
            let d: f64 = d.trim_end_matches(',').parse().ok()?;
            if !d.is_finite() || d < 0.0 {
                return None;
            }
            secs = Some(d);
        } else if let Some(r) = line.strip_prefix("#EXT-X-BYTERANGE:") {
            range = Some(byterange(r)?);
        } else if line.starts_with('#') {
            // Header tags (version, target duration, type).
            continue;
        } else {
            let block = out.last_mut()?;
            let (file, _) = file_of(line)?;
            let (offset, len) = range.take()?;
            if file != block.file {
                return None;
            }
            block.segments.push((offset, len, secs.take()?));
        }
    }
    Some((out, !ended))
}

/// One playlist of the blocks from several sources (this node's files,
/// other nodes' answers), in time order. Where two sources overlap in time
/// (a takeover: the old owner records on until it is fenced), the source
/// playing goes on with its blocks that start before the other's next
/// block ends, so each source's run stays whole and nothing recorded is
/// left out. A block that follows one from another source starts a new
/// timeline: a discontinuity.
pub fn merge_playlists(sources: Vec<Vec<PlaylistBlock>>) -> Vec<PlaylistBlock> {
    let mut queues: Vec<std::collections::VecDeque<PlaylistBlock>> = sources
        .into_iter()
        .map(|mut blocks| {
            blocks.retain(|b| !b.segments.is_empty());
            blocks.sort_by_key(|b| b.start_ms);
            blocks.into()
        })
        .collect();
    let ends = |b: &PlaylistBlock| {
        b.start_ms + (b.segments.iter().map(|s| s.2).sum::<f64>() * 1000.0) as u64
    };
    let mut out = Vec::new();
    let mut current: Option<usize> = None;
    while let Some(earliest) = (0..queues.len())
        .filter(|&i| !queues[i].is_empty())
        .min_by_key(|&i| queues[i][0].start_ms)
    {
        let pick = match current {
            Some(c)
                if c != earliest
                    && queues[c]
                        .front()
                        .is_some_and(|b| b.start_ms < ends(&queues[earliest][0])) =>
            {
                c
            }
            _ => earliest,
        };
        let Some(mut b) = queues[pick].pop_front() else {
            break;
        };
        if current.is_some_and(|c| c != pick) {
            b.discontinuity = true;
        }
        current = Some(pick);
        out.push(b);
    }
    out
}

// ----- retention

/// Which segments the retention rules delete (indexes into `segments`,
/// oldest first): those older than `max_age_ms` (0: no limit), then the
/// oldest until the rest fit in `max_bytes` (0: no limit). An open segment
/// is never deleted.
pub fn expired(
    segments: &[SegmentInfo],
    now_ms: u64,
    max_age_ms: u64,
    max_bytes: u64,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_by_key(|&i| (segments[i].start_ms, i));
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut out = Vec::new();
    for i in order {
        let s = &segments[i];
        if s.open {
            continue;
        }
        let end = s.start_ms + s.duration_ms;
        let old = max_age_ms > 0 && now_ms.saturating_sub(end) > max_age_ms;
        let over = max_bytes > 0 && total > max_bytes;
        if old || over {
            total -= s.bytes;
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(ms: f64, independent: bool) -> Part {
        Part {
            bytes: vec![Bytes::from_static(b"frag")],
            size: 4,
            duration: ms / 1000.0,
            independent,
        }
    }

    fn drain(r: &mut Recording) -> Vec<&'static str> {
        let mut out = Vec::new();
        while let Some(a) = r.next_action() {
            out.push(match a {
                Action::Open { .. } => "open",
                Action::Append { .. } => "append",
                Action::Close => "close",
            });
        }
        out
    }

    #[test]
    fn files_open_at_a_keyframe_and_close_at_the_first_segment_past_their_length() {
        let mut r = Recording::new(2);
        // Nothing before an init segment and a keyframe.
        r.part(part(500.0, false), false);
        assert!(drain(&mut r).is_empty());
        r.init(Bytes::from_static(b"init"), None, None);
        r.close_segment();
        r.part(part(500.0, true), false);
        r.part(part(500.0, false), true);
        r.part(part(500.0, true), false);
        r.part(part(500.0, false), false);
        // 2 s reached mid-segment: the file goes on to the segment's end.
        r.part(part(500.0, false), true);
        assert_eq!(
            drain(&mut r),
            ["open", "append", "append", "append", "append", "append"]
        );
        r.part(part(500.0, true), true);
        assert_eq!(drain(&mut r), ["close", "open", "append"]);
        // A new configuration: a new file at the next segment.
        r.init(Bytes::from_static(b"init2"), None, None);
        r.part(part(500.0, true), true);
        match (r.next_action(), r.next_action()) {
            (Some(Action::Close), Some(Action::Open { init, lead_ms })) => {
                assert_eq!((&init[..], lead_ms), (&b"init2"[..], 500.0));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(drain(&mut r), ["append"]);
        r.end();
        assert_eq!(drain(&mut r), ["close"]);
    }

    #[test]
    fn a_gap_closes_the_file_drops_the_queue_and_resumes_at_a_keyframe() {
        let mut r = Recording::new(60);
        r.init(Bytes::from_static(b"init"), None, None);
        r.part(part(500.0, true), false);
        r.part(part(500.0, false), false);
        assert_eq!(r.gap(), 2);
        assert_eq!(drain(&mut r), ["close"]);
        r.part(part(500.0, false), true);
        assert!(drain(&mut r).is_empty(), "no file opens mid-GOP");
        r.part(part(500.0, true), false);
        assert_eq!(drain(&mut r), ["open", "append"]);
        r.stop();
        r.part(part(500.0, false), true);
        assert_eq!(drain(&mut r), ["close"]);
        r.resume();
        r.part(part(500.0, true), false);
        assert_eq!(drain(&mut r), ["open", "append"]);
    }

    #[test]
    fn names_and_times_round_trip_and_bad_ones_are_refused() {
        let t = 1_796_356_740_123; // 2026-12-04T03:59:00.123Z
        assert_eq!(segment_name(t), "20261204T035900.123Z.mp4");
        assert_eq!(parse_segment_name("20261204T035900.123Z.mp4"), Some(t));
        assert_eq!(format_rfc3339(t), "2026-12-04T03:59:00.123Z");
        assert_eq!(parse_rfc3339("2026-12-04T03:59:00.123Z"), Some(t));
        assert_eq!(parse_rfc3339("2026-12-04T04:59:00.123+01:00"), Some(t));
        assert_eq!(parse_rfc3339("2026-12-04T03:59:00.1234567Z"), Some(t));
        assert_eq!(parse_rfc3339("2026-12-04t03:59:00Z"), Some(t - 123));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        for bad in [
            "",
            "2026-12-04",
            "2026-12-04T03:59:00",
            "2026-13-04T03:59:00Z",
            "2026-02-30T03:59:00Z",
            "2026-12-04T24:00:00Z",
            "2026-12-04T03:59:00.Z",
            "2026-12-04T03:59:00+1:00",
            "+2026-12-04T03:59:00Z",
            "2026-12-04T03:59:00Z junk",
            "1969-12-31T23:59:59Z",
            "2026-12-04T03:5a:00Z",
            "١٩٧٠-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
        for bad in [
            "",
            "x.mp4",
            "20261204T035900.123Z.mp",
            "20261204T035900.123Z.mp4/",
            "../1204T035900.123Z.mp4",
            "20261304T035900.123Z.mp4",
            "2026120AT035900.123Z.mp4",
            "1234567\u{e9}0123456789Z.mp4",
            "20261204\u{e9}35900.123Z.mp",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad:?}");
        }
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2026, 12, 4), (2100, 3, 1)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
    }

    #[test]
    fn a_stream_dir_is_one_level_and_maps_back() {
        let k = StreamKey::parse("live/s/t").unwrap();
        let (app, name) = stream_dir(&k).unwrap();
        assert_eq!((app.as_str(), name.as_str()), ("live", "s%2Ft"));
        assert_eq!(stream_of_dir(&app, &name), Some(k));
        assert_eq!(stream_of_dir("live", ".."), None);
        assert_eq!(stream_of_dir("live", "a%2F..%2Fb"), None);
        let long = StreamKey::parse(&format!("live/{}", "n".repeat(300))).unwrap();
        assert_eq!(stream_dir(&long), None);
    }

    fn frag(offset: u64, start: f64, independent: bool) -> Fragment {
        Fragment {
            offset,
            len: 100,
            start,
            duration: 1.0,
            independent,
        }
    }

    fn file(keys_every: usize, n: usize, media0: f64) -> FileIndex {
        FileIndex {
            init_len: 50,
            fragments: (0..n)
                .map(|i| frag(50 + 100 * i as u64, media0 + i as f64, i % keys_every == 0))
                .collect(),
            complete_len: 50 + 100 * n as u64,
        }
    }

    #[test]
    fn a_range_starts_at_the_keyframe_before_it_and_spans_files() {
        let files = vec![
            (10_000, "a.mp4".to_owned(), file(2, 6, 0.0)),
            (16_000, "b.mp4".to_owned(), file(2, 6, 6.0)),
            // A new publish: its timeline starts again.
            (30_000, "c.mp4".to_owned(), file(2, 4, 0.0)),
        ];
        let p = plan(&files, 13_500, 18_000);
        assert_eq!(p.len(), 2);
        let starts: Vec<f64> = p[0].fragments.iter().map(|f| f.start).collect();
        assert_eq!(starts, [2.0, 3.0, 4.0, 5.0]);
        let starts: Vec<f64> = p[1].fragments.iter().map(|f| f.start).collect();
        assert_eq!(starts, [6.0, 7.0]);
        assert!(!p[1].discontinuity);
        let p = plan(&files, 20_000, 32_000);
        assert_eq!(p.len(), 2);
        assert!(p[1].discontinuity);
        assert!(plan(&files, 50_000, 60_000).is_empty());
        assert!(plan(&files, 0, 5_000).is_empty());

        let m3u8 = vod_playlist(&plan(&files, 10_000, 22_000), "token=x");
        assert!(m3u8.starts_with("#EXTM3U\n"));
        assert!(m3u8.contains("#EXT-X-MAP:URI=\"a.mp4?token=x\",BYTERANGE=\"50@0\"\n"));
        // Keyframe runs of two fragments each: 200 bytes, 2 s.
        assert!(m3u8.contains("#EXTINF:2.000,\n#EXT-X-BYTERANGE:200@250\na.mp4?token=x\n"));
        assert_eq!(m3u8.matches("#EXTINF").count(), 6);
        assert!(!m3u8.contains("DISCONTINUITY"));
        assert!(m3u8.ends_with("#EXT-X-ENDLIST\n"));
    }

    fn block(file_ms: u64, discontinuity: bool) -> PlaylistBlock {
        PlaylistBlock {
            file: segment_name(file_ms),
            start_ms: file_ms + 40,
            init_len: 700,
            discontinuity,
            segments: vec![(700, 1000, 2.0), (1700, 900, 1.96)],
        }
    }

    #[test]
    fn a_playlist_reads_back_as_the_blocks_it_was_written_from() {
        let t = 1_796_000_000_000;
        let blocks = vec![
            block(t, false),
            block(t + 4_000, false),
            block(t + 60_000, true),
        ];
        let text = render_vod_playlist(&blocks, "token=a%20b", false);
        assert_eq!(text.matches("#EXT-X-PROGRAM-DATE-TIME:").count(), 3);
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY").count(), 1);
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD\n") && text.ends_with("#EXT-X-ENDLIST\n"));
        assert_eq!(parse_vod_playlist(&text), Some((blocks.clone(), false)));
        // A recording that goes on: EVENT, no end, a fixed target.
        let text = render_vod_playlist(&blocks, "", true);
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:EVENT\n#"), "{text}");
        assert!(text.contains("#EXT-X-TARGETDURATION:10\n"), "{text}");
        assert!(!text.contains("ENDLIST"));
        assert_eq!(parse_vod_playlist(&text), Some((blocks, true)));
    }

    #[test]
    fn another_nodes_playlist_naming_anything_but_a_recording_file_is_refused() {
        let t = 1_796_000_000_000;
        let good = render_vod_playlist(&[block(t, false)], "", false);
        assert!(parse_vod_playlist(&good).is_some());
        let name = segment_name(t);
        for evil in [
            "http://elsewhere.example/x.mp4",
            "../../../etc/passwd",
            "/etc/passwd",
            "20260101T000000.000Z.mp4/../../x",
        ] {
            let bad = good.replace(&name, evil);
            assert_eq!(parse_vod_playlist(&bad), None, "{evil}");
        }
        // A segment of a file its map does not name, a negative duration, a
        // map not at 0, text that is no playlist at all.
        let other = good.replacen(
            &format!("\n{name}"),
            &format!("\n{}", segment_name(t + 1)),
            1,
        );
        assert_eq!(parse_vod_playlist(&other), None);
        assert_eq!(
            parse_vod_playlist(&good.replace("#EXTINF:2.000", "#EXTINF:-2")),
            None
        );
        assert_eq!(
            parse_vod_playlist(&good.replace("\"700@0\"", "\"700@5\"")),
            None
        );
        assert_eq!(parse_vod_playlist("<html>"), None);
        assert_eq!(parse_vod_playlist(""), None);
    }

    #[test]
    fn blocks_of_two_nodes_merge_in_time_order_with_a_discontinuity_between() {
        let t = 1_796_000_000_000;
        let a = vec![block(t, false), block(t + 4_000, false)];
        let b = vec![block(t + 9_000, false), block(t + 13_000, false)];
        let merged = merge_playlists(vec![b, a]);
        let starts: Vec<u64> = merged.iter().map(|b| b.start_ms - t - 40).collect();
        assert_eq!(starts, [0, 4_000, 9_000, 13_000]);
        let cuts: Vec<bool> = merged.iter().map(|b| b.discontinuity).collect();
        assert_eq!(cuts, [false, false, true, false]);
        let text = render_vod_playlist(&merged, "", false);
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY").count(), 1);
        // A takeover: the old owner's last block starts after the new
        // owner's first; it stays with its own run.
        let a = vec![
            block(t, false),
            block(t + 4_000, false),
            block(t + 9_500, false),
        ];
        let b = vec![block(t + 9_000, false), block(t + 13_000, false)];
        let merged = merge_playlists(vec![a, b]);
        let starts: Vec<u64> = merged.iter().map(|b| b.start_ms - t - 40).collect();
        assert_eq!(starts, [0, 4_000, 9_500, 9_000, 13_000]);
        let cuts: Vec<bool> = merged.iter().map(|b| b.discontinuity).collect();
        assert_eq!(cuts, [false, false, false, true, false]);
    }

    use super::super::packager::{Packager, Targets};
    use crate::protocol::{MessageType, RawMessage};

    fn message(type_id: MessageType, ts: u32, payload: Vec<u8>) -> RawMessage {
        RawMessage {
            csid: 6,
            timestamp: ts,
            type_id,
            stream_id: 1,
            payload: Bytes::from(payload),
        }
    }

    /// 10 s of 25 fps H.264 (a keyframe a second) and 48 kHz AAC through a
    /// recording packager of 2 s files: the files as bytes.
    fn recorded() -> Vec<Vec<u8>> {
        let targets = Targets {
            part_ms: 500,
            segment_ms: 1000,
            window_segments: 0,
        };
        let mut p = Packager::with_output(targets, Recording::new(2));
        let avcc = vec![0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1E, 0xFF, 0xE0, 0];
        p.push(&message(MessageType::VIDEO, 0, avcc));
        p.push(&message(MessageType::AUDIO, 0, vec![0xAF, 0, 0x11, 0x90]));
        let (mut v, mut a) = (0u32, 0u32);
        while v < 250 {
            let (vt, at) = (v * 40, a * 1024 * 1000 / 48_000);
            if at <= vt {
                p.push(&message(MessageType::AUDIO, at, vec![0xAF, 1, 0x21, 0x10]));
                a += 1;
            } else {
                let b0 = if v % 25 == 0 { 0x17 } else { 0x27 };
                let frame = vec![b0, 1, 0, 0, 0, 0, 0, 0, 1, 0x65];
                p.push(&message(MessageType::VIDEO, vt, frame));
                v += 1;
            }
        }
        p.finish();
        let mut files: Vec<Vec<u8>> = Vec::new();
        while let Some(action) = p.output().next_action() {
            match action {
                Action::Open { init, .. } => files.push(init.to_vec()),
                Action::Append { bytes, size, .. } => {
                    let f = files.last_mut().expect("a file open");
                    let before = f.len();
                    bytes.iter().for_each(|b| f.extend_from_slice(b));
                    assert_eq!(f.len() - before, size);
                }
                Action::Close => {}
            }
        }
        files
    }

    fn scan_bytes(b: &[u8]) -> Option<FileIndex> {
        let read = |at: u64, len: usize| {
            let at = (at as usize).min(b.len());
            let end = at.saturating_add(len).min(b.len());
            std::future::ready(Some(b[at..end].to_vec()))
        };
        futures_lite::future::block_on(scan(b.len() as u64, read))
    }

    #[test]
    fn recorded_files_scan_back_and_a_cut_short_one_keeps_its_complete_fragments() {
        let files = recorded();
        assert_eq!(files.len(), 5, "10 s in files of 2 s");
        let mut media_end: Option<f64> = None;
        for f in &files {
            let index = scan_bytes(f).expect("an index");
            assert_eq!(index.complete_len, f.len() as u64);
            assert!(index.fragments.len() >= 3, "{index:?}");
            assert!(index.fragments[0].independent, "files start at a keyframe");
            assert!((index.duration() - 2.0).abs() < 0.1, "{}", index.duration());
            // One timeline across the files of a publish.
            if let Some(end) = media_end {
                assert!((index.fragments[0].start - end).abs() < 0.05);
            }
            let last = index.fragments.last().unwrap();
            media_end = Some(last.start + last.duration);
            let mut offset = index.init_len;
            for fr in &index.fragments {
                assert_eq!(fr.offset, offset);
                offset += fr.len;
            }
        }
        // A crash in the middle of the third fragment: two remain, and the
        // file is to be cut where the second ends.
        let f = &files[1];
        let index = scan_bytes(f).unwrap();
        let third = index.fragments[2];
        for cut in [
            third.offset + 3,
            third.offset + 20,
            third.offset + third.len - 1,
        ] {
            let short = scan_bytes(&f[..cut as usize]).unwrap();
            assert_eq!(short.fragments, index.fragments[..2]);
            assert_eq!(short.complete_len, third.offset);
        }
        // A file cut inside its init segment has nothing to play.
        assert_eq!(scan_bytes(&f[..index.init_len as usize - 1]), None);
        assert_eq!(scan_bytes(b""), None);
        assert_eq!(scan_bytes(b"\0\0\0\x08junk"), None);
    }

    #[test]
    fn retention_deletes_the_oldest_first_and_never_the_open_one() {
        let seg = |start_ms, bytes, open| SegmentInfo {
            file: String::new(),
            start_ms,
            duration_ms: 1000,
            bytes,
            open,
        };
        let s = vec![
            seg(3000, 10, false),
            seg(1000, 10, false),
            seg(5000, 10, true),
        ];
        assert_eq!(expired(&s, 10_000, 0, 0), Vec::<usize>::new());
        // By age: what ended over 7 s ago.
        assert_eq!(expired(&s, 10_000, 7_000, 0), [1]);
        assert_eq!(expired(&s, 10_000, 5_000, 0), [1, 0]);
        // By size: down to 15 bytes, oldest first.
        assert_eq!(expired(&s, 10_000, 0, 15), [1, 0]);
        // Never the open one, even over both limits.
        assert_eq!(expired(&s, 1_000_000, 1, 1), [1, 0]);
    }
}
