//! One LL-HLS viewer, as a low-latency player behaves: the playlist, the
//! init segment, then from the newest independent part on, for each next
//! part a blocking playlist reload (`_HLS_msn`/`_HLS_part`) and the part
//! itself, over one keep-alive connection. Each part's fMP4 samples go
//! through the same [`PlayerCheck`] as RTMP messages (first frame a
//! keyframe, timestamps, frames lost, latency from the SEI stamp). A stall
//! is counted whenever the media fetched so far falls behind real time
//! (playing from the first part on, with no buffer beyond it).

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use mp4_atom::{Decode, Ftyp, Moof, Moov};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tributary::protocol::message::{MessageType, RawMessage};

use crate::connection::io_reason;
use crate::player::{PlayerOutcome, PlayerSpec};
use crate::player_check::PlayerCheck;
use crate::publisher::wall_clock_us;
use crate::stats::LiveCounters;

/// The largest answer taken (a segment of a high-bitrate stream).
const MAX_BODY: usize = 64 * 1024 * 1024;

struct Http {
    socket: TcpStream,
    buf: Vec<u8>,
    host: String,
}

impl Http {
    /// One GET on the keep-alive connection: (status, body).
    async fn get(&mut self, path: &str, deadline: Instant) -> Result<(u16, Bytes), String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.socket
            .write_all(req.as_bytes())
            .await
            .map_err(|e| io_reason("write", &e))?;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or("http: bad status line")?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if len > MAX_BODY {
                    return Err("http: answer too large".into());
                }
                while self.buf.len() < end + 4 + len {
                    self.read(&mut chunk, deadline).await?;
                }
                let body = Bytes::copy_from_slice(&self.buf[end + 4..end + 4 + len]);
                self.buf.drain(..end + 4 + len);
                return Ok((status, body));
            }
            self.read(&mut chunk, deadline).await?;
        }
    }

    async fn read(&mut self, chunk: &mut [u8], deadline: Instant) -> Result<(), String> {
        match timeout_at(deadline, self.socket.read(chunk)).await {
            Err(_) => Err("read: timed out".into()),
            Ok(Err(e)) => Err(io_reason("read", &e)),
            Ok(Ok(0)) => Err("closed by server".into()),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }
}

/// The parts of a media playlist a player acts on.
#[derive(Debug, Default)]
struct Playlist {
    /// (msn, part index, seconds, independent).
    parts: Vec<(u64, usize, f64, bool)>,
    /// Complete segments' numbers.
    complete: Vec<u64>,
    map: Option<String>,
    ended: bool,
}

impl Playlist {
    fn parse(text: &str) -> Playlist {
        let mut p = Playlist::default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
                let uri = attr(v, "URI").unwrap_or("");
                if let Some((m, n)) = part_of(uri) {
                    let d = attr(v, "DURATION")
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(0.0);
                    p.parts.push((m, n, d, v.contains("INDEPENDENT=YES")));
                }
            } else if let Some(v) = line.strip_prefix("#EXT-X-MAP:") {
                p.map = attr(v, "URI").map(str::to_owned);
            } else if line == "#EXT-X-ENDLIST" {
                p.ended = true;
            } else if let Some(seg) = line.strip_prefix("seg") {
                if let Some(m) = seg.split(".m4s").next().and_then(|m| m.parse().ok()) {
                    p.complete.push(m);
                }
            }
        }
        p
    }

    fn has(&self, m: u64, n: usize) -> bool {
        self.parts.iter().any(|p| (p.0, p.1) == (m, n))
    }

    /// Segment `m` is complete with fewer than `n + 1` parts: `m.n` will
    /// never exist.
    fn past_end(&self, m: u64, n: usize) -> bool {
        self.complete.contains(&m) && !self.parts.iter().any(|p| p.0 == m && p.1 >= n)
    }
}

/// The first variant's URI, when `text` is a multivariant playlist.
fn variant_uri(text: &str) -> Option<&str> {
    let mut lines = text.lines();
    lines.find(|l| l.starts_with("#EXT-X-STREAM-INF:"))?;
    lines
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
}

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[at..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    rest.split(['"', ',']).next()
}

fn part_of(uri: &str) -> Option<(u64, usize)> {
    let p = uri.strip_prefix("part")?.split(".m4s").next()?;
    let (m, n) = p.split_once('.')?;
    Some((m.parse().ok()?, n.parse().ok()?))
}

/// A track of the init segment: whether it is video, and its timescale.
type Tracks = HashMap<u32, (bool, u32)>;

fn tracks(init: &[u8]) -> Result<Tracks, String> {
    let mut buf = init;
    Ftyp::decode(&mut buf).map_err(|e| format!("init: {e}"))?;
    let moov = Moov::decode(&mut buf).map_err(|e| format!("init: {e}"))?;
    Ok(moov
        .trak
        .iter()
        .map(|t| {
            let video = t.mdia.hdlr.handler == mp4_atom::FourCC::new(b"vide");
            (t.tkhd.track_id, (video, t.mdia.mdhd.timescale.max(1)))
        })
        .collect())
}

/// A part's samples as FLV-style messages (legacy AVC and AAC headers), in
/// decode order per track, and its media duration in seconds.
fn samples(part: &Bytes, tracks: &Tracks) -> Result<(Vec<RawMessage>, f64), String> {
    let mut buf = &part[..];
    let moof = Moof::decode(&mut buf).map_err(|e| format!("part: {e}"))?;
    let mut out = Vec::new();
    let mut video_secs = 0.0;
    let mut audio_secs = 0.0;
    for traf in &moof.traf {
        let Some(&(video, scale)) = tracks.get(&traf.tfhd.track_id) else {
            continue;
        };
        let mut dts = traf.tfdt.as_ref().map_or(0, |t| t.base_media_decode_time);
        for trun in &traf.trun {
            let mut at = trun.data_offset.unwrap_or(0).max(0) as usize;
            for s in trun.samples.iter() {
                let size = s.size.unwrap_or(0) as usize;
                let data = part
                    .get(at..at + size)
                    .ok_or("part: a sample past the end")?;
                at += size;
                let duration = s.duration.unwrap_or(0) as u64;
                let ms = (dts * 1000 / scale as u64) as u32;
                let mut payload = BytesMut::with_capacity(size + 5);
                if video {
                    let key = s.flags.unwrap_or(0) & 0x0001_0000 == 0;
                    let cts = (s.cts.unwrap_or(0) * 1000 / scale as i64) as i32;
                    payload.put_u8(if key { 0x17 } else { 0x27 });
                    payload.put_u8(1);
                    payload.put_slice(&cts.to_be_bytes()[1..]);
                    video_secs += duration as f64 / scale as f64;
                } else {
                    payload.put_slice(&[0xAF, 1]);
                    audio_secs += duration as f64 / scale as f64;
                }
                payload.put_slice(data);
                out.push(RawMessage {
                    csid: 0,
                    timestamp: ms,
                    type_id: if video {
                        MessageType::VIDEO
                    } else {
                        MessageType::AUDIO
                    },
                    stream_id: 1,
                    payload: payload.freeze(),
                });
                dts += duration;
            }
        }
    }
    let secs = if video_secs > 0.0 {
        video_secs
    } else {
        audio_secs
    };
    Ok((out, secs))
}

pub async fn run_hls_player(spec: PlayerSpec) -> PlayerOutcome {
    let mut outcome = PlayerOutcome {
        key: spec.key.clone(),
        ..Default::default()
    };
    let live = &spec.stats.live;
    let asked_at = Instant::now();
    outcome.check = PlayerCheck::new(wall_clock_us());
    outcome.check.steady_after_us = spec.steady_after_us;
    let result = play(&spec, &mut outcome, asked_at).await;
    spec.stats.record_latencies(outcome.check.take_latencies());
    if outcome.connected {
        live.players_live
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    if let Err(reason) = result {
        LiveCounters::add(&live.players_failed, 1);
        outcome.failure = Some(reason);
    }
    outcome
}

async fn play(
    spec: &PlayerSpec,
    outcome: &mut PlayerOutcome,
    asked_at: Instant,
) -> Result<(), String> {
    let live = &spec.stats.live;
    let url = &spec.target.url;
    let socket = match timeout_at(spec.setup_deadline, TcpStream::connect(spec.target.addr)).await {
        Err(_) => return Err("connect: timed out".into()),
        Ok(Err(e)) => return Err(io_reason("connect", &e)),
        Ok(Ok(s)) => s,
    };
    let _ = socket.set_nodelay(true);
    let mut http = Http {
        socket,
        buf: Vec::new(),
        host: format!("{}:{}", url.host, url.port),
    };
    let base = format!("/{}/{}", url.app, spec.key);
    let first_deadline = (Instant::now() + spec.first_frame_timeout).min(spec.drain_until);
    let (status, body) = http
        .get(&format!("{base}/index.m3u8"), first_deadline)
        .await?;
    if status != 200 {
        return Err(format!("http {status}"));
    }
    // A multivariant playlist (Tributary's names the viewer's session):
    // its media playlist, whose query every reload carries.
    let mut body = String::from_utf8_lossy(&body).into_owned();
    let mut query = String::new();
    if let Some(uri) = variant_uri(&body) {
        if !uri.starts_with("index.m3u8") {
            return Err(format!("multivariant playlist: unexpected URI {uri}"));
        }
        query = uri
            .split_once('?')
            .map(|(_, q)| q.to_owned())
            .unwrap_or_default();
        let (status, media) = http.get(&format!("{base}/{uri}"), first_deadline).await?;
        if status != 200 {
            return Err(format!("media playlist: http {status}"));
        }
        body = String::from_utf8_lossy(&media).into_owned();
    }
    let and = if query.is_empty() {
        String::new()
    } else {
        format!("{query}&")
    };
    let mut playlist = Playlist::parse(&body);
    let map = playlist.map.clone().ok_or("playlist: no EXT-X-MAP")?;
    let (status, init) = http.get(&format!("{base}/{map}"), first_deadline).await?;
    if status != 200 {
        return Err(format!("init: http {status}"));
    }
    let tracks = tracks(&init)?;
    outcome.connected = true;
    LiveCounters::add(&live.players_live, 1);
    // The newest independent part: where a low-latency player starts.
    let (mut m, mut n) = playlist
        .parts
        .iter()
        .rev()
        .find(|p| p.3)
        .map(|p| (p.0, p.1))
        .ok_or("playlist: no independent part")?;
    let mut played_from: Option<Instant> = None;
    let mut media_secs = 0.0;
    loop {
        let deadline = if outcome.first_frame_ms.is_none() {
            first_deadline
        } else {
            spec.drain_until
        };
        if Instant::now() >= spec.drain_until {
            return Ok(());
        }
        if playlist.past_end(m, n) {
            (m, n) = (m + 1, 0);
            continue;
        }
        if !playlist.has(m, n) {
            if playlist.ended {
                outcome.saw_end = true;
                return match Instant::now() >= spec.stop_at {
                    true => Ok(()),
                    false => Err("stream ended early".into()),
                };
            }
            let path = format!("{base}/index.m3u8?{and}_HLS_msn={m}&_HLS_part={n}");
            let (status, body) = match http.get(&path, deadline).await {
                Err(e) if Instant::now() >= spec.stop_at => {
                    outcome.saw_end = true;
                    let _ = e;
                    return Ok(());
                }
                other => other?,
            };
            outcome.hls_reloads += 1;
            match status {
                200 => playlist = Playlist::parse(&String::from_utf8_lossy(&body)),
                // Fell out of the window, or the stream is gone.
                _ if Instant::now() >= spec.stop_at => {
                    outcome.saw_end = true;
                    return Ok(());
                }
                s => return Err(format!("playlist reload: http {s}")),
            }
            continue;
        }
        let (status, part) = http
            .get(&format!("{base}/part{m}.{n}.m4s"), deadline)
            .await?;
        if status != 200 {
            return Err(format!("part: http {status}"));
        }
        outcome.bytes += part.len() as u64;
        LiveCounters::add(&live.bytes_in, part.len() as u64);
        outcome.hls_parts += 1;
        let (messages, secs) = samples(&part, &tracks)?;
        let now_us = wall_clock_us();
        let lost_before = outcome.check.frames_lost;
        for msg in &messages {
            outcome.on_message(msg, now_us, asked_at, &spec.stats);
        }
        outcome.after_read(messages.len() as u64, lost_before, &spec.stats);
        // Playing from the first part on: a part that arrives after the
        // media before it has run out is a stall.
        let now = Instant::now();
        let start = *played_from.get_or_insert(now);
        let behind = now.duration_since(start).as_secs_f64() - media_secs;
        if behind > 0.0 && media_secs > 0.0 {
            outcome.stalls += 1;
            played_from = Some(start + std::time::Duration::from_secs_f64(behind));
        }
        media_secs += secs;
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_playlist_names_its_parts_segments_and_end() {
        let text = "#EXTM3U\n#EXT-X-MAP:URI=\"init1.mp4\"\n\
            #EXT-X-PART:DURATION=0.200,URI=\"part4.0.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=0.120,URI=\"part4.1.m4s\"\n#EXTINF:0.320,\nseg4.m4s\n\
            #EXT-X-PART:DURATION=0.200,URI=\"part5.0.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part5.1.m4s\"\n";
        let p = Playlist::parse(text);
        assert_eq!(p.map.as_deref(), Some("init1.mp4"));
        assert_eq!(p.parts.len(), 3);
        assert!(p.has(5, 0) && !p.has(5, 1));
        assert!(p.past_end(4, 2) && !p.past_end(4, 1) && !p.past_end(5, 1));
        assert_eq!(p.complete, vec![4]);
        assert!(!p.ended);
        assert!(Playlist::parse("#EXTM3U\n#EXT-X-ENDLIST\n").ended);
        assert_eq!(variant_uri(text), None);
    }

    #[test]
    fn a_multivariant_playlist_names_its_media_playlist() {
        let text = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1200000\n\nindex.m3u8?hls_session=ab\n";
        assert_eq!(variant_uri(text), Some("index.m3u8?hls_session=ab"));
    }
}
