//! A stream's LL-HLS window: the init segments, segments and parts the
//! packager built, the playlists written from them (media and
//! multivariant, with the low-latency tags), the blocking-reload rule, the
//! names of its resources, and its viewers' sessions. Sans-IO: no clock of
//! its own (every call takes `now`), no socket, no lock; the node keeps
//! each window behind a mutex and serves it.
//!
//! Playlists are written here rather than with `m3u8-rs`, which knows none
//! of the low-latency tags (PART, PART-INF, PRELOAD-HINT, SERVER-CONTROL).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

/// One viewer of a window: the address it was given to, when it last
/// asked, whether a request has named it since, and what it holds while it
/// lasts (the node's player place: dropped when the session goes).
pub struct Session {
    pub peer: IpAddr,
    pub last_seen: Instant,
    /// A request has named it since it was given out.
    pub confirmed: bool,
    _hold: Box<dyn Send>,
}

impl Session {
    pub fn new(hold: impl Send + 'static, peer: IpAddr, now: Instant) -> Self {
        Self {
            peer,
            last_seen: now,
            confirmed: false,
            _hold: Box::new(hold),
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("last_seen", &self.last_seen)
            .field("confirmed", &self.confirmed)
            .finish_non_exhaustive()
    }
}

/// One partial segment: a `moof` + `mdat` as shared `Bytes`.
#[derive(Debug)]
pub struct Part {
    pub bytes: Vec<Bytes>,
    pub size: usize,
    /// Seconds.
    pub duration: f64,
    /// Starts with a keyframe.
    pub independent: bool,
}

#[derive(Debug)]
pub struct Segment {
    pub msn: u64,
    /// The init segment it needs (its generation).
    pub init: u32,
    pub parts: Vec<Arc<Part>>,
    pub complete: bool,
}

impl Segment {
    pub fn duration(&self) -> f64 {
        self.parts.iter().map(|p| p.duration).sum()
    }
}

/// A stream's LL-HLS window, as every shard serves it.
#[derive(Debug)]
pub struct Window {
    /// Each init segment still needed, by generation.
    inits: VecDeque<(u32, Bytes)>,
    pub init: Option<Bytes>,
    init_gen: u32,
    pub segments: VecDeque<Segment>,
    next_msn: u64,
    /// Seconds: the part target as configured, and the target duration,
    /// fixed for the window's life (the packager never makes a segment
    /// longer).
    pub part_target: f64,
    pub target_duration: u32,
    /// Discontinuities that left the window (EXT-X-DISCONTINUITY-SEQUENCE).
    discontinuity_sequence: u64,
    pub ended: bool,
    /// When someone last asked for it.
    pub last_request: Instant,
    /// Shards with a request waiting on this window (bit per shard).
    pub watchers: u64,
    /// Bumped on every change; and what was built since the start.
    pub version: u64,
    pub parts_built: u64,
    pub segments_built: u64,
    /// Its viewers, by session ID.
    sessions: HashMap<String, Session>,
    /// What the multivariant playlist says of it: its tracks' RFC 6381
    /// codecs (when every track's is known) and its picture size.
    pub codecs: Option<String>,
    pub resolution: Option<(u16, u16)>,
}

/// One variant of a multivariant playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Its media playlist, relative to the multivariant playlist.
    pub uri: String,
    /// Bits per second (at least 1).
    pub bandwidth: u64,
    pub codecs: Option<String>,
    pub resolution: Option<(u16, u16)>,
}

/// A multivariant playlist of `variants`, the first the stream itself.
/// CODECS is written only when every variant's is known (a player that
/// reads CODECS on some variants may drop the others).
pub fn multivariant_playlist(variants: &[Variant]) -> String {
    let all_codecs = variants.iter().all(|v| v.codecs.is_some());
    let mut out = String::from("#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        out.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={}",
            v.bandwidth.max(1)
        ));
        if let (true, Some(c)) = (all_codecs, &v.codecs) {
            out.push_str(&format!(",CODECS=\"{c}\""));
        }
        if let Some((w, h)) = v.resolution.filter(|&(w, h)| w > 0 && h > 0) {
            out.push_str(&format!(",RESOLUTION={w}x{h}"));
        }
        out.push('\n');
        out.push_str(&v.uri);
        out.push('\n');
    }
    out
}

/// What a blocking playlist request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub msn: u64,
    pub part: Option<usize>,
}

/// What a playlist request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Now,
    /// Not yet: wait.
    Wait,
    /// Too far ahead of the live edge (the RFC's 400).
    TooFar,
}

/// The most viewers' sessions one window holds (each is a player's place,
/// so `players.max_per_stream` bounds them first where it is set; each
/// takes about 1 KB).
pub const MAX_SESSIONS: usize = 50_000;

/// The target duration for a segment target: half as long again, rounded
/// up to whole seconds. Segments close at the first keyframe past the
/// segment target, and at the latest at this (so a long GOP is cut).
pub fn target_duration(segment_target_ms: u32) -> u32 {
    (segment_target_ms as u64 * 3).div_ceil(2000).max(1) as u32
}

impl Window {
    /// `first` numbers the first segment and init segment: a clock value,
    /// so that a later window of the same key never reuses a URI that a
    /// cache may hold.
    pub fn new(part_target_ms: u32, segment_target_ms: u32, first: u64, now: Instant) -> Self {
        Self {
            inits: VecDeque::new(),
            init: None,
            init_gen: first as u32,
            segments: VecDeque::new(),
            next_msn: first,
            part_target: part_target_ms as f64 / 1000.0,
            target_duration: target_duration(segment_target_ms),
            discontinuity_sequence: 0,
            ended: false,
            last_request: now,
            watchers: 0,
            version: 0,
            parts_built: 0,
            segments_built: 0,
            sessions: HashMap::new(),
            codecs: None,
            resolution: None,
        }
    }

    /// How long a viewer's session lasts without a request: three target
    /// durations (the longest a blocking request may wait, and past the
    /// reload interval of a player without LL-HLS), and a second.
    pub fn session_idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(3 * self.target_duration as u64 + 1)
    }

    /// How long a session given out waits for its first request: a
    /// target duration and a second.
    pub fn session_pending(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.target_duration as u64 + 1)
    }

    /// Marks session `id` as seen from `peer`; false if the window does not
    /// know it, or knows it as another address's.
    pub fn touch(&mut self, id: &str, peer: std::net::IpAddr, now: Instant) -> bool {
        match self.sessions.get_mut(id) {
            Some(s) if s.peer == peer => {
                s.last_seen = now;
                s.confirmed = true;
                true
            }
            _ => false,
        }
    }

    /// Adds a viewer's session; false (and the session dropped, its place
    /// given back) when the window holds [`MAX_SESSIONS`] already.
    pub fn admit(&mut self, id: String, session: Session) -> bool {
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&id) {
            return false;
        }
        self.sessions.insert(id, session);
        true
    }

    /// Lets go of the sessions idle for longer than [`Self::session_idle`],
    /// and of those given out and never named for
    /// [`Self::session_pending`] (all of them when `all`); how many are
    /// left.
    pub fn expire_sessions(&mut self, now: Instant, all: bool) -> usize {
        let (idle, pending) = (self.session_idle(), self.session_pending());
        self.sessions.retain(|_, s| {
            let limit = if s.confirmed { idle } else { pending };
            !all && now.saturating_duration_since(s.last_seen) <= limit
        });
        self.sessions.len()
    }

    /// The highest bitrate of its complete segments, in bits per second
    /// (the multivariant playlist's BANDWIDTH); of its parts before that.
    pub fn peak_bitrate(&self) -> u64 {
        let rate = |bytes: usize, secs: f64| {
            if secs > 0.0 {
                (bytes as f64 * 8.0 / secs) as u64
            } else {
                0
            }
        };
        let segments = self.segments.iter().filter(|s| s.complete);
        let peak = segments
            .map(|s| rate(s.parts.iter().map(|p| p.size).sum(), s.duration()))
            .max()
            .unwrap_or(0);
        if peak > 0 {
            return peak;
        }
        let parts = self.segments.iter().flat_map(|s| s.parts.iter());
        parts.map(|p| rate(p.size, p.duration)).max().unwrap_or(0)
    }

    /// The multivariant playlist a viewer's first request gets: one
    /// variant, this media playlist, with `query` (its session in it).
    pub fn multivariant(&self, query: &str) -> String {
        multivariant_playlist(&[self.variant(format!("index.m3u8?{query}"))])
    }

    /// This window as a variant at `uri`.
    pub fn variant(&self, uri: String) -> Variant {
        Variant {
            uri,
            bandwidth: self.peak_bitrate(),
            codecs: self.codecs.clone(),
            resolution: self.resolution,
        }
    }

    pub fn set_init(&mut self, init: Bytes) {
        self.init_gen += 1;
        self.inits.push_back((self.init_gen, init.clone()));
        self.init = Some(init);
    }

    pub fn init_segment(&self, generation: u32) -> Option<Bytes> {
        self.inits
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, b)| b.clone())
    }

    /// Adds a part to the open segment (opening one if none is), and with
    /// `close` completes that segment in the same step (so no playlist
    /// ever hints at a part that will not come).
    pub fn push_part(&mut self, part: Arc<Part>, keep: usize, close: bool) {
        if self.segments.back().is_none_or(|s| s.complete) {
            self.segments.push_back(Segment {
                msn: self.next_msn,
                init: self.init_gen,
                parts: Vec::new(),
                complete: false,
            });
            self.next_msn += 1;
            while self.segments.iter().filter(|s| s.complete).count() > keep.max(1) {
                let gone = self.segments.pop_front();
                let next = self.segments.front().map(|s| s.init);
                if gone.is_some_and(|g| Some(g.init) != next) {
                    self.discontinuity_sequence += 1;
                }
            }
            let oldest = self.segments.front().map_or(0, |s| s.init);
            self.inits.retain(|(g, _)| *g >= oldest);
        }
        if let Some(s) = self.segments.back_mut() {
            s.parts.push(part);
        }
        self.parts_built += 1;
        self.version += 1;
        if close {
            self.close_segment();
        }
    }

    /// The stream ended: the playlist says so.
    pub fn end(&mut self) {
        self.ended = true;
        self.version += 1;
    }

    pub fn close_segment(&mut self) {
        if let Some(s) = self.segments.back_mut().filter(|s| !s.complete) {
            s.complete = true;
            self.segments_built += 1;
            self.version += 1;
        }
    }

    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        self.segments.get(msn.checked_sub(first)? as usize)
    }

    /// Whether the playlist holds what a blocking request waits for.
    pub fn ready(&self, block: Option<Block>) -> Ready {
        let Some(b) = block else {
            // Players without LL-HLS need a whole segment to start with.
            return if !self.segments.iter().any(|s| s.complete) && !self.ended {
                Ready::Wait
            } else {
                Ready::Now
            };
        };
        if self.ended {
            return Ready::Now;
        }
        let Some(last) = self.segments.back() else {
            return if b.msn <= 1 {
                Ready::Wait
            } else {
                Ready::TooFar
            };
        };
        if b.msn > last.msn + 2 {
            return Ready::TooFar;
        }
        let have = match b.part {
            // Segment M complete, or a later one started.
            None => b.msn < last.msn || (b.msn == last.msn && last.complete),
            Some(p) => {
                b.msn < last.msn || (b.msn == last.msn && (last.complete || p < last.parts.len()))
            }
        };
        if have {
            Ready::Now
        } else {
            Ready::Wait
        }
    }

    /// The media playlist. `query` (a token, say) is appended to every URI
    /// so that each request carries it.
    pub fn playlist(&self, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let mut out = String::with_capacity(2048);
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{}\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}\n\
             #EXT-X-PART-INF:PART-TARGET={:.3}\n#EXT-X-MEDIA-SEQUENCE:{}\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:{}\n",
            self.target_duration,
            self.part_target * 3.0,
            self.part_target,
            self.segments.front().map_or(self.next_msn, |s| s.msn),
            self.discontinuity_sequence,
        );
        // Parts are listed for the last segments only (about three target
        // durations back from the live edge), as the RFC recommends.
        let with_parts = self.segments.len().saturating_sub(3);
        let mut init = None;
        for (i, s) in self.segments.iter().enumerate() {
            if init != Some(s.init) {
                if init.is_some() {
                    out.push_str("#EXT-X-DISCONTINUITY\n");
                }
                let _ = writeln!(out, "#EXT-X-MAP:URI=\"init{}.mp4{q}\"", s.init);
                init = Some(s.init);
            }
            if i >= with_parts {
                for (n, p) in s.parts.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "#EXT-X-PART:DURATION={:.3},URI=\"part{}.{n}.m4s{q}\"{}",
                        p.duration,
                        s.msn,
                        if p.independent {
                            ",INDEPENDENT=YES"
                        } else {
                            ""
                        }
                    );
                }
            }
            if s.complete {
                let _ = writeln!(out, "#EXTINF:{:.3},\nseg{}.m4s{q}", s.duration(), s.msn);
            }
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        } else {
            let (msn, part) = match self.segments.back() {
                Some(s) if !s.complete => (s.msn, s.parts.len()),
                Some(s) => (s.msn + 1, 0),
                None => (self.next_msn, 0),
            };
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part{msn}.{part}.m4s{q}\""
            );
        }
        out
    }
}

/// What an LL-HLS media request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Playlist,
    Init(u32),
    Segment(u64),
    Part(u64, usize),
}

impl Resource {
    pub fn parse(file: &str) -> Option<Resource> {
        if file == "index.m3u8" {
            return Some(Resource::Playlist);
        }
        if let Some(g) = file
            .strip_prefix("init")
            .and_then(|f| f.strip_suffix(".mp4"))
        {
            return g.parse().ok().map(Resource::Init);
        }
        if let Some(m) = file
            .strip_prefix("seg")
            .and_then(|f| f.strip_suffix(".m4s"))
        {
            return m.parse().ok().map(Resource::Segment);
        }
        let p = file.strip_prefix("part")?.strip_suffix(".m4s")?;
        let (m, n) = p.split_once('.')?;
        Some(Resource::Part(m.parse().ok()?, n.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(ms: u32, independent: bool) -> Arc<Part> {
        Arc::new(Part {
            bytes: vec![Bytes::from_static(b"x")],
            size: 1,
            duration: ms as f64 / 1000.0,
            independent,
        })
    }

    #[test]
    fn a_multivariant_playlist_lists_each_variant_with_codecs_only_when_all_have_them() {
        let v = |uri: &str, bandwidth, codecs: Option<&str>, resolution| Variant {
            uri: uri.into(),
            bandwidth,
            codecs: codecs.map(str::to_owned),
            resolution,
        };
        let both = multivariant_playlist(&[
            v(
                "index.m3u8?s=1",
                2_000_000,
                Some("avc1.64001f,mp4a.40.2"),
                Some((1280, 720)),
            ),
            v(
                "../cam_360p/index.m3u8?s=1",
                600_000,
                Some("avc1.64001e,mp4a.40.2"),
                Some((640, 360)),
            ),
        ]);
        assert_eq!(
            both,
            "#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=2000000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=1280x720\nindex.m3u8?s=1\n\
             #EXT-X-STREAM-INF:BANDWIDTH=600000,CODECS=\"avc1.64001e,mp4a.40.2\",RESOLUTION=640x360\n../cam_360p/index.m3u8?s=1\n"
        );
        let one_unknown = multivariant_playlist(&[
            v("a", 0, Some("avc1.64001f"), None),
            v("b", 5, None, Some((0, 0))),
        ]);
        assert!(!one_unknown.contains("CODECS"), "{one_unknown}");
        assert!(!one_unknown.contains("RESOLUTION"), "{one_unknown}");
        assert!(
            one_unknown.contains("BANDWIDTH=1\na\n"),
            "at least 1: {one_unknown}"
        );
    }

    #[test]
    fn the_multivariant_playlist_names_the_media_playlist_at_its_peak_rate() {
        let mut w = Window::new(200, 400, 1, Instant::now());
        // Nothing built yet: a nominal rate.
        assert_eq!(
            w.multivariant("hls_session=x"),
            "#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:BANDWIDTH=1\nindex.m3u8?hls_session=x\n"
        );
        let sized = |bytes: usize, ms: u32| {
            Arc::new(Part {
                bytes: vec![Bytes::from(vec![0; bytes])],
                size: bytes,
                duration: ms as f64 / 1000.0,
                independent: true,
            })
        };
        // A part of 5000 bytes in 200 ms: 200 kbit/s, while no segment is
        // complete; then the segments' peak.
        w.push_part(sized(5000, 200), 4, false);
        assert_eq!(w.peak_bitrate(), 200_000);
        w.push_part(sized(1000, 200), 4, true);
        w.push_part(sized(20000, 200), 4, false);
        w.push_part(sized(20000, 200), 4, true);
        assert_eq!(w.peak_bitrate(), 800_000);
        assert!(w.multivariant("q").contains("BANDWIDTH=800000\n"));
    }

    #[test]
    fn resources_parse_from_their_names() {
        assert_eq!(Resource::parse("index.m3u8"), Some(Resource::Playlist));
        assert_eq!(Resource::parse("init3.mp4"), Some(Resource::Init(3)));
        assert_eq!(Resource::parse("seg12.m4s"), Some(Resource::Segment(12)));
        assert_eq!(Resource::parse("part12.4.m4s"), Some(Resource::Part(12, 4)));
        for bad in [
            "seg.m4s",
            "part1.m4s",
            "partx.1.m4s",
            "index.m3u",
            "init.mp4",
        ] {
            assert_eq!(Resource::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn blocking_reload_waits_for_the_part_it_names() {
        let now = Instant::now();
        let mut w = Window::new(200, 1000, 0, now);
        assert_eq!(w.ready(None), Ready::Wait, "nothing to list yet");
        w.set_init(Bytes::from_static(b"init"));
        w.push_part(part(200, true), 4, false);
        w.push_part(part(200, false), 4, false);
        let at = |msn, part| Some(Block { msn, part });
        assert_eq!(w.ready(None), Ready::Wait, "no whole segment yet");
        assert_eq!(w.ready(at(0, Some(1))), Ready::Now);
        assert_eq!(w.ready(at(0, Some(2))), Ready::Wait);
        assert_eq!(w.ready(at(0, None)), Ready::Wait, "segment 0 is open");
        assert_eq!(w.ready(at(1, Some(0))), Ready::Wait);
        assert_eq!(w.ready(at(3, None)), Ready::TooFar);
        w.close_segment();
        assert_eq!(w.ready(None), Ready::Now);
        assert_eq!(w.ready(at(0, None)), Ready::Now);
        assert_eq!(
            w.ready(at(0, Some(7))),
            Ready::Now,
            "a closed segment has all its parts"
        );
        w.push_part(part(200, true), 4, false);
        assert_eq!(w.ready(at(1, Some(0))), Ready::Now);
    }

    #[test]
    fn the_playlist_lists_parts_segments_and_the_preload_hint() {
        let mut w = Window::new(200, 1000, 0, Instant::now());
        w.set_init(Bytes::from_static(b"i"));
        for seg in 0..5 {
            for n in 0..5 {
                w.push_part(part(200, n == 0), 3, seg < 4 && n == 4);
            }
        }
        let text = w.playlist("token=t");
        assert!(text.starts_with("#EXTM3U\n"), "{text}");
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"), "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"), "{text}");
        assert!(
            text.contains("CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600"),
            "{text}"
        );
        assert!(
            text.contains("#EXT-X-PART-INF:PART-TARGET=0.200\n"),
            "{text}"
        );
        // Three complete segments kept (1, 2, 3) and the open one (4).
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:1\n"), "{text}");
        assert!(
            text.contains("#EXT-X-MAP:URI=\"init1.mp4?token=t\"\n"),
            "{text}"
        );
        assert!(
            text.contains("#EXTINF:1.000,\nseg3.m4s?token=t\n"),
            "{text}"
        );
        assert!(!text.contains("seg4.m4s"), "{text}");
        assert!(!text.contains("part1.0.m4s"), "{text}");
        assert!(
            text.contains(
                "#EXT-X-PART:DURATION=0.200,URI=\"part4.0.m4s?token=t\",INDEPENDENT=YES\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part4.5.m4s?token=t\"\n"),
            "{text}"
        );
        // A new configuration: a discontinuity and a new map.
        w.close_segment();
        w.set_init(Bytes::from_static(b"j"));
        w.push_part(part(200, true), 3, false);
        w.ended = true;
        let text = w.playlist("");
        assert!(
            text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init2.mp4\"\n"),
            "{text}"
        );
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
        assert!(w.init_segment(1).is_some() && w.init_segment(2).is_some());
        // Once the last segment of the first init leaves the window, the
        // discontinuity sequence counts it.
        for _ in 0..4 {
            w.push_part(part(200, true), 3, true);
        }
        let text = w.playlist("");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
        assert!(!text.contains("init1.mp4"), "{text}");
        assert!(Window::new(200, 2000, 1_700_000_000, Instant::now())
            .playlist("")
            .contains("#EXT-X-MEDIA-SEQUENCE:1700000000\n"));
        assert_eq!(target_duration(2000), 3);
        assert_eq!(target_duration(1000), 2);
    }
}
