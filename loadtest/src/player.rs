//! One player: connects, plays a stream key, and checks every message it
//! receives with [`PlayerCheck`] until the publisher leaves after the run's
//! stop time or the drain deadline passes. Reads go into one buffer per
//! connection; the session reassembles messages in arenas it reuses, so the
//! steady state allocates nothing per message.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};
use tributary::protocol::client::{ClientEvent, Role};

use crate::connection::{io_reason, protocol_reason, RtmpConnection};
use crate::player_check::{MediaSeen, PlayerCheck};
use crate::publisher::wall_clock_us;
use crate::stats::{LiveCounters, RunStats};
use crate::target::Target;

pub struct PlayerSpec {
    pub index: usize,
    pub target: Target,
    pub key: String,
    pub setup_deadline: Instant,
    /// A player with no keyframe this long after play started fails.
    pub first_frame_timeout: Duration,
    /// When publishers stop: after it, the stream ending is expected.
    pub stop_at: Instant,
    /// When the player stops reading, whatever happens.
    pub drain_until: Instant,
    /// Wall time (µs) after which a frame later than the hold latency
    /// means the player does not hold (see `PlayerCheck::steady_after_us`).
    pub steady_after_us: u64,
    pub stats: Arc<RunStats>,
    /// RTMP players: connect again this long after the connection is lost
    /// or the stream ends before the run's stop time (None: stop), as a
    /// web player's reconnect loop does.
    pub reconnect: Option<Duration>,
    /// How long each reconnect may take to play again.
    pub setup_timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct PlayerOutcome {
    pub key: String,
    pub connected: bool,
    pub failure: Option<String>,
    pub bytes: u64,
    pub check: PlayerCheck,
    pub first_frame_ms: Option<f64>,
    /// The publisher's end (UnpublishNotify or StreamEOF) arrived.
    pub saw_end: bool,
    /// LL-HLS viewers: blocking playlist reloads, parts fetched, and how
    /// often the media fetched fell behind real time.
    pub hls_reloads: u64,
    pub hls_parts: u64,
    pub stalls: u64,
    /// With reconnects: each time the player was away, from the lost
    /// connection to its first new frame (ms), and why it was lost.
    pub absences: Vec<(u64, String)>,
}

impl PlayerOutcome {
    /// Held the stream: connected, no failure, a keyframe, every check
    /// clean, no live frame later than `max_latency_us`. (Frames the
    /// publisher sent that never came are checked where the publisher's
    /// count is known: in the report.)
    pub fn holding(&self, max_latency_us: u64) -> bool {
        self.connected
            && self.failure.is_none()
            && self.check.video_frames > 0
            && self.check.clean()
            && self.check.max_latency_us <= max_latency_us
    }
}

impl PlayerOutcome {
    /// Checks one audio or video message an HTTP viewer took in: the first
    /// keyframe's arrival is recorded, latencies handed over in batches.
    pub fn on_message(
        &mut self,
        m: &tributary::protocol::message::RawMessage,
        now_us: u64,
        asked_at: Instant,
        stats: &RunStats,
    ) {
        if self.check.on_media(m, now_us) == MediaSeen::FirstKeyframe {
            let ms = asked_at.elapsed().as_secs_f64() * 1000.0;
            self.first_frame_ms = Some(ms);
            stats.record_first_frame((ms * 1000.0) as u64);
        }
        if self.check.latency_batch_full() {
            stats.record_latencies(self.check.take_latencies());
        }
    }

    /// A player's next read, under its deadline (the first frame's until it
    /// has one, then the end of the drain): `Some(n)` bytes read, `None` when
    /// the player is done (the drain is over, or the stream ended once the
    /// publishers stopped), or why it failed.
    pub async fn timed_read(
        &mut self,
        spec: &PlayerSpec,
        first_frame_deadline: Instant,
        read: impl std::future::Future<Output = std::io::Result<usize>>,
    ) -> Result<Option<usize>, String> {
        let deadline = if self.first_frame_ms.is_none() {
            first_frame_deadline.min(spec.drain_until)
        } else {
            spec.drain_until
        };
        match timeout_at(deadline, read).await {
            Err(_) if self.first_frame_ms.is_none() => Err(format!(
                "no keyframe within {} s",
                spec.first_frame_timeout.as_secs()
            )),
            Err(_) => Ok(None),
            Ok(Err(e)) => Err(io_reason("read", &e)),
            Ok(Ok(0)) if Instant::now() >= spec.stop_at && self.first_frame_ms.is_some() => {
                self.saw_end = true;
                Ok(None)
            }
            Ok(Ok(0)) => Err("closed by server".into()),
            Ok(Ok(n)) => Ok(Some(n)),
        }
    }

    /// After a read: latencies handed over, and the frames taken in and
    /// lost since `lost_before` counted live.
    pub fn after_read(&mut self, frames: u64, lost_before: u64, stats: &RunStats) {
        stats.record_latencies(self.check.take_latencies());
        LiveCounters::add(&stats.live.frames_in, frames);
        LiveCounters::add(
            &stats.live.frames_lost,
            self.check.frames_lost - lost_before,
        );
    }
}

pub async fn run_player(spec: PlayerSpec) -> PlayerOutcome {
    let mut outcome = PlayerOutcome {
        key: spec.key.clone(),
        ..Default::default()
    };
    let live = &spec.stats.live;
    let mut deadline = spec.setup_deadline;
    // Set while away: when the connection was lost, and why.
    let mut lost: Option<(Instant, String)> = None;
    loop {
        let asked_at = Instant::now();
        let asked_wall_us = wall_clock_us();
        let conn = RtmpConnection::open(
            &spec.target,
            Role::Play,
            &spec.key,
            spec.index as u64 * 2,
            deadline,
        )
        .await;
        let failure = match conn {
            Err(reason) => reason,
            Ok(mut conn) => {
                if outcome.connected {
                    outcome.check.rejoin(asked_wall_us);
                } else {
                    outcome.connected = true;
                    outcome.check = PlayerCheck::new(asked_wall_us);
                    outcome.check.steady_after_us = spec.steady_after_us;
                }
                LiveCounters::add(&live.players_live, 1);
                let result = play(&spec, &mut conn, &mut outcome, asked_at, &mut lost).await;
                outcome.bytes += conn.session.bytes_received();
                spec.stats.record_latencies(outcome.check.take_latencies());
                live.players_live
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                match result {
                    Ok(()) => {
                        never_back(&mut outcome, lost);
                        return outcome;
                    }
                    Err(reason) => reason,
                }
            }
        };
        let retry = spec.reconnect.filter(|_| outcome.connected);
        let Some(delay) = retry.filter(|d| Instant::now() + *d < spec.stop_at) else {
            never_back(&mut outcome, lost);
            LiveCounters::add(&live.players_failed, 1);
            outcome.failure = Some(failure);
            return outcome;
        };
        lost.get_or_insert((Instant::now(), failure));
        tokio::time::sleep(delay).await;
        deadline = (Instant::now() + spec.setup_timeout).min(spec.drain_until);
    }
}

/// The player ends while away (`lost`): that absence never ended.
fn never_back(outcome: &mut PlayerOutcome, lost: Option<(Instant, String)>) {
    if let Some((at, why)) = lost {
        let ms = at.elapsed().as_millis() as u64;
        outcome.absences.push((ms, format!("{why}; never back")));
    }
}

async fn play(
    spec: &PlayerSpec,
    conn: &mut RtmpConnection,
    outcome: &mut PlayerOutcome,
    asked_at: Instant,
    lost: &mut Option<(Instant, String)>,
) -> Result<(), String> {
    let live = &spec.stats.live;
    let first_frame_deadline = Instant::now() + spec.first_frame_timeout;
    let mut counted_bytes = 0u64;
    let mut ended: Option<String> = None;
    loop {
        let now_us = wall_clock_us();
        let check = &mut outcome.check;
        let mut frames = 0u64;
        let mut first_key = false;
        let mut back = false;
        let lost_before = check.frames_lost;
        conn.feed(|event| {
            match event {
                ClientEvent::Media(m) => {
                    frames += 1;
                    match check.on_media(&m, now_us) {
                        MediaSeen::FirstKeyframe => first_key = true,
                        MediaSeen::Back => back = true,
                        MediaSeen::Other => {}
                    }
                    if check.latency_batch_full() {
                        spec.stats.record_latencies(check.take_latencies());
                    }
                }
                ClientEvent::Status { code, .. } if code == "NetStream.Play.UnpublishNotify" => {
                    ended = Some(code);
                }
                ClientEvent::StreamEof { .. } => ended = Some("StreamEOF".into()),
                _ => {}
            }
            true
        })
        .map_err(|e| protocol_reason(&e))?;
        // Hand latencies over after every read, so the per-second figures
        // are not shaped by batch boundaries.
        spec.stats.record_latencies(check.take_latencies());
        if first_key {
            let ms = asked_at.elapsed().as_secs_f64() * 1000.0;
            outcome.first_frame_ms = Some(ms);
            spec.stats.record_first_frame((ms * 1000.0) as u64);
        }
        if let Some((at, why)) = lost.take_if(|_| back || first_key) {
            outcome
                .absences
                .push((at.elapsed().as_millis() as u64, why));
        }
        let received = conn.session.bytes_received();
        LiveCounters::add(&live.bytes_in, received - counted_bytes);
        LiveCounters::add(&live.frames_in, frames);
        LiveCounters::add(&live.frames_lost, check.frames_lost - lost_before);
        counted_bytes = received;
        conn.flush().await.map_err(|e| io_reason("write", &e))?;
        if let Some(code) = ended.take() {
            outcome.saw_end = true;
            if Instant::now() < spec.stop_at {
                return Err(format!("stream ended early ({code})"));
            }
            return Ok(());
        }
        let read = outcome.timed_read(spec, first_frame_deadline, conn.read());
        let read = if lost.is_some() {
            // Played again: a connection that brings no new frame in time
            // is given up like a first play without a keyframe.
            timeout_at(first_frame_deadline, read).await.map_err(|_| {
                format!(
                    "no new frame within {} s of playing again",
                    spec.first_frame_timeout.as_secs()
                )
            })?
        } else {
            read.await
        };
        if read?.is_none() {
            return Ok(());
        }
    }
}
