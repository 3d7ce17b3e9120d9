//! What a player verifies about the media it receives, free of I/O and
//! clocks (the receive time is passed in): first video frame a keyframe,
//! timestamps that never go back per track, message lengths that match the
//! stamp (message boundaries), sequence numbers without gaps (frames lost),
//! and end-to-end latency from the stamp's send time. Latency is kept only
//! for frames sent after the player asked to play: frames replayed from a
//! server's GOP cache were sent earlier and would measure the cache, not the
//! path. Nothing here allocates per message.

use tributary::protocol::media::{classify_audio, classify_video, PacketKind};
use tributary::protocol::message::{MessageType, RawMessage};

use crate::clock_sei;

/// Latency samples a player holds before handing them over in one batch.
pub const LATENCY_BATCH: usize = 64;

#[derive(Debug, Clone)]
pub struct PlayerCheck {
    /// Wall time (µs since the epoch) the player sent play: frames stamped
    /// before it came from a cache.
    pub live_after_us: u64,
    pub audio_frames: u64,
    /// Coded video frames from the first keyframe on.
    pub video_frames: u64,
    /// Video frames before the first keyframe (a server that starts a
    /// player mid-GOP): counted, not decodable.
    pub video_frames_before_key: u64,
    pub sequence_headers: u64,
    pub first_key_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
    /// Times the sequence jumped forward (each a gap of one or more frames).
    pub gaps: u64,
    /// Frames missing inside the gaps.
    pub frames_lost: u64,
    /// Sequence going backwards or repeating.
    pub out_of_order: u64,
    /// Players that reconnect: frames due while the player
    /// was away (the jump in sequence across a reconnect; not a loss on a
    /// live connection, so not in `gaps` or `frames_lost`)...
    pub missed_reconnecting: u64,
    /// ...and frames received again after a reconnect (a server's cache
    /// replaying what the player had), not counted as received.
    pub replayed: u64,
    pub timestamp_regressions: u64,
    /// Length on the wire differs from the length the publisher stamped, or
    /// a payload that does not parse as audio or video.
    pub bad_messages: u64,
    /// Coded video frames without our stamp (another publisher's stream).
    pub unstamped_video: u64,
    pub first_video_not_key: bool,
    /// Wall time (µs since the epoch) from which frames count toward
    /// `max_latency_us`: the end of the run's ramp, plus time to settle.
    pub steady_after_us: u64,
    /// Worst latency of a frame sent after `steady_after_us`, µs.
    pub max_latency_us: u64,
    last_video_ts: Option<u32>,
    last_audio_ts: Option<u32>,
    saw_coded_video: bool,
    /// Set by [`PlayerCheck::rejoin`]: the next frames are those of a new
    /// connection, after a keyframe.
    rejoining: bool,
    latency_us: [u64; LATENCY_BATCH],
    latency_len: usize,
}

/// What [`PlayerCheck::on_media`] saw, for the caller's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaSeen {
    FirstKeyframe,
    /// After a reconnect: the first frame the player had not seen.
    Back,
    Other,
}

impl Default for PlayerCheck {
    fn default() -> Self {
        Self::new(0)
    }
}

impl PlayerCheck {
    pub fn new(live_after_us: u64) -> Self {
        Self {
            live_after_us,
            audio_frames: 0,
            video_frames: 0,
            video_frames_before_key: 0,
            sequence_headers: 0,
            first_key_sequence: None,
            last_sequence: None,
            gaps: 0,
            frames_lost: 0,
            out_of_order: 0,
            missed_reconnecting: 0,
            replayed: 0,
            timestamp_regressions: 0,
            bad_messages: 0,
            unstamped_video: 0,
            first_video_not_key: false,
            steady_after_us: 0,
            max_latency_us: 0,
            last_video_ts: None,
            last_audio_ts: None,
            saw_coded_video: false,
            rejoining: false,
            latency_us: [0; LATENCY_BATCH],
            latency_len: 0,
        }
    }

    /// The player connected again (asked to play at wall time `now_us`):
    /// its new connection must start with a keyframe and may start with
    /// its timestamps anywhere; frames it already had are replays, and the
    /// jump to the first new one is what it missed while away.
    pub fn rejoin(&mut self, now_us: u64) {
        self.rejoining = true;
        self.live_after_us = now_us;
        self.saw_coded_video = false;
        self.last_video_ts = None;
        self.last_audio_ts = None;
    }

    /// Checks one audio or video message received at `now_us`.
    pub fn on_media(&mut self, m: &RawMessage, now_us: u64) -> MediaSeen {
        if m.type_id == MessageType::AUDIO {
            match classify_audio(&m.payload) {
                Ok(i) if i.kind == PacketKind::SequenceHeader => self.sequence_headers += 1,
                // A new connection's first audio may be a cache's replay:
                // counted again from its first new video frame.
                Ok(_) if self.rejoining => {}
                Ok(_) => {
                    self.audio_frames += 1;
                    check_ts(
                        &mut self.last_audio_ts,
                        m.timestamp,
                        &mut self.timestamp_regressions,
                    );
                }
                Err(_) => self.bad_messages += 1,
            }
            return MediaSeen::Other;
        }
        let info = match classify_video(&m.payload) {
            Ok(i) => i,
            Err(_) => {
                self.bad_messages += 1;
                return MediaSeen::Other;
            }
        };
        if info.kind == PacketKind::SequenceHeader {
            self.sequence_headers += 1;
            return MediaSeen::Other;
        }
        if info.kind != PacketKind::Frame {
            return MediaSeen::Other;
        }
        if !self.saw_coded_video {
            if self.rejoining && !info.keyframe {
                // A new connection that starts mid-GOP: not decodable.
                self.video_frames_before_key += 1;
                return MediaSeen::Other;
            }
            self.saw_coded_video = true;
            self.first_video_not_key |= !info.keyframe;
        }
        check_ts(
            &mut self.last_video_ts,
            m.timestamp,
            &mut self.timestamp_regressions,
        );
        let mut seen = MediaSeen::Other;
        if self.first_key_sequence.is_none() && self.video_frames == 0 {
            if !info.keyframe {
                self.video_frames_before_key += 1;
                return seen;
            }
            seen = MediaSeen::FirstKeyframe;
        }
        self.video_frames += 1;
        let Some(stamp) = clock_sei::read(&m.payload) else {
            self.unstamped_video += 1;
            return seen;
        };
        if stamp.message_len as usize != m.payload.len() {
            self.bad_messages += 1;
        }
        if self.rejoining {
            match self.last_sequence {
                Some(last) if stamp.sequence <= last => {
                    self.video_frames -= 1;
                    self.replayed += 1;
                    return seen;
                }
                Some(last) => self.missed_reconnecting += stamp.sequence - last - 1,
                None => self.first_key_sequence = Some(stamp.sequence),
            }
            self.rejoining = false;
            if seen == MediaSeen::Other {
                seen = MediaSeen::Back;
            }
            self.last_sequence = Some(stamp.sequence);
            self.sample_latency(&stamp, now_us);
            return seen;
        }
        match self.last_sequence {
            None => self.first_key_sequence = Some(stamp.sequence),
            Some(last) if stamp.sequence == last + 1 => {}
            Some(last) if stamp.sequence > last => {
                self.gaps += 1;
                self.frames_lost += stamp.sequence - last - 1;
            }
            Some(_) => self.out_of_order += 1,
        }
        self.last_sequence = Some(stamp.sequence);
        self.sample_latency(&stamp, now_us);
        seen
    }

    /// A latency sample for a frame sent after the player asked to play.
    fn sample_latency(&mut self, stamp: &clock_sei::ClockStamp, now_us: u64) {
        if stamp.sent_at_us >= self.live_after_us {
            let latency = now_us.saturating_sub(stamp.sent_at_us);
            if stamp.sent_at_us >= self.steady_after_us {
                self.max_latency_us = self.max_latency_us.max(latency);
            }
            self.latency_us[self.latency_len] = latency;
            self.latency_len += 1;
        }
    }

    /// True when the latency batch is full and should be handed over.
    pub fn latency_batch_full(&self) -> bool {
        self.latency_len == LATENCY_BATCH
    }

    /// Hands over the latency samples gathered since the last call.
    pub fn take_latencies(&mut self) -> &[u64] {
        let n = self.latency_len;
        self.latency_len = 0;
        &self.latency_us[..n]
    }

    /// Every check passed so far (no loss, order, timestamp or length error,
    /// first video a keyframe).
    pub fn clean(&self) -> bool {
        self.frames_lost == 0
            && self.out_of_order == 0
            && self.timestamp_regressions == 0
            && self.bad_messages == 0
            && !self.first_video_not_key
    }
}

fn check_ts(last: &mut Option<u32>, ts: u32, regressions: &mut u64) {
    if let Some(l) = *last {
        // Forward within half the 32-bit space is forward (wrap-around).
        if ts.wrapping_sub(l) > u32::MAX / 2 {
            *regressions += 1;
        }
    }
    *last = Some(ts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};

    fn video(key: bool, seq: u64, ts: u32, sent: u64) -> RawMessage {
        let body = [if key { 0x17 } else { 0x27 }, 1, 0, 0, 0, 0, 0, 0, 1, 0x65];
        let mut arena = BytesMut::new();
        RawMessage {
            csid: 6,
            timestamp: ts,
            type_id: MessageType::VIDEO,
            stream_id: 1,
            payload: clock_sei::stamp(&mut arena, &body, seq, sent).unwrap(),
        }
    }

    #[test]
    fn gaps_order_timestamps_and_latency() {
        let mut c = PlayerCheck::new(1_000);
        assert_eq!(c.on_media(&video(false, 4, 0, 10), 20), MediaSeen::Other);
        assert!(c.first_video_not_key);
        assert_eq!(
            c.on_media(&video(true, 5, 40, 500), 900),
            MediaSeen::FirstKeyframe
        );
        c.on_media(&video(false, 6, 80, 2_000), 2_300);
        c.on_media(&video(false, 9, 200, 3_000), 3_100);
        c.on_media(&video(false, 8, 160, 3_000), 3_100);
        assert_eq!(c.first_key_sequence, Some(5));
        assert_eq!(c.video_frames, 4);
        assert_eq!(c.video_frames_before_key, 1);
        assert_eq!((c.gaps, c.frames_lost, c.out_of_order), (1, 2, 1));
        assert_eq!(c.timestamp_regressions, 1);
        // The cached keyframe (sent at 500 < 1000) gives no latency sample.
        assert_eq!(c.take_latencies(), &[300, 100, 100]);
        assert!(!c.clean());
    }

    #[test]
    fn a_rejoin_counts_replays_and_what_was_missed_not_losses() {
        let mut c = PlayerCheck::new(0);
        c.on_media(&video(true, 0, 0, 1), 2);
        c.on_media(&video(false, 1, 40, 1), 2);
        c.on_media(&video(false, 2, 80, 1), 2);
        c.rejoin(100);
        // The new connection: a frame mid-GOP, then the cache from the
        // keyframe at 0 (replays), then frames 5 and 6 (3 and 4 missed).
        c.on_media(&video(false, 2, 80, 1), 101);
        assert_eq!(c.on_media(&video(true, 0, 0, 1), 101), MediaSeen::Other);
        c.on_media(&video(false, 1, 40, 1), 101);
        c.on_media(&video(false, 2, 80, 1), 101);
        assert_eq!(c.on_media(&video(false, 5, 200, 150), 160), MediaSeen::Back);
        assert_eq!(
            c.on_media(&video(false, 6, 240, 190), 200),
            MediaSeen::Other
        );
        assert_eq!(
            (c.video_frames, c.replayed, c.missed_reconnecting),
            (5, 3, 2)
        );
        assert_eq!(c.video_frames_before_key, 1);
        assert_eq!((c.gaps, c.frames_lost, c.out_of_order), (0, 0, 0));
        assert_eq!(c.timestamp_regressions, 0);
        assert!(!c.first_video_not_key);
        assert!(c.clean());
        // Latency from the frames sent after the rejoin only.
        let _ = c.take_latencies();
        c.rejoin(1_000);
        c.on_media(&video(true, 10, 400, 900), 1_001);
        c.on_media(&video(false, 11, 440, 1_010), 1_030);
        assert_eq!(c.missed_reconnecting, 5);
        assert_eq!(c.take_latencies(), &[20]);
    }

    #[test]
    fn a_cut_message_is_a_bad_message() {
        let mut c = PlayerCheck::new(0);
        let mut m = video(true, 0, 0, 1);
        m.payload = m.payload.slice(..m.payload.len() - 1);
        c.on_media(&m, 2);
        assert_eq!(c.bad_messages, 1);
        let garbage = RawMessage {
            payload: Bytes::new(),
            ..m
        };
        c.on_media(&garbage, 3);
        assert_eq!(c.bad_messages, 2);
    }
}
