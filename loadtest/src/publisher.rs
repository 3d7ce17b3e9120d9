//! One publisher: connects, publishes its stream key, sends the source's
//! metadata and sequence headers, then the body at its own pace (by
//! message timestamp against a monotonic clock), looped with timestamps
//! continued, every AVC frame stamped with [`crate::clock_sei`]. Stops
//! sending at the run's stop time and closes the stream the way ffmpeg does.
//! With a reconnect delay, a publisher whose connection is lost connects
//! again and goes on with its stream's clock, as an encoder's reconnect
//! loop does.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::time::{sleep_until, Instant};
use tributary::protocol::client::{ClientEvent, Role};
use tributary::protocol::message::MessageType;

use crate::clock_sei;
use crate::connection::{io_reason, protocol_reason, RtmpConnection};
use crate::source::MediaSource;
use crate::stats::{LiveCounters, RunStats};
use crate::target::Target;

/// How long a closing publisher waits for the server to close in turn.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

pub struct PublisherSpec {
    pub index: usize,
    pub target: Target,
    pub key: String,
    pub source: Arc<MediaSource>,
    pub setup_deadline: Instant,
    pub stop_at: Instant,
    pub stats: Arc<RunStats>,
    /// Connect again this long after the connection is lost (None: stop).
    pub reconnect: Option<Duration>,
    /// How long each reconnect may take to publish again.
    pub setup_timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct PublisherOutcome {
    pub key: String,
    pub connected: bool,
    pub failure: Option<String>,
    pub bytes_sent: u64,
    pub frames_sent: u64,
    /// Coded video frames sent (sequence numbers 0..this).
    pub video_frames_sent: u64,
    /// Worst lateness of a message against its timestamp (ms): a publisher
    /// the server (or this machine) could not keep up with.
    pub max_lag_ms: u64,
    /// With reconnects: each time the stream was away, from the lost
    /// connection to publishing again (ms), and why it was lost.
    pub absences: Vec<(u64, String)>,
}

/// Where a publisher is in its stream: kept across reconnects.
struct Position {
    started: Instant,
    next: usize,
    loop_base_ms: u64,
    sequence: u64,
}

pub fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub async fn run_publisher(spec: PublisherSpec) -> PublisherOutcome {
    let mut outcome = PublisherOutcome {
        key: spec.key.clone(),
        ..Default::default()
    };
    let live = &spec.stats.live;
    let mut position = Position {
        started: Instant::now(),
        next: 0,
        loop_base_ms: 0,
        sequence: 0,
    };
    let mut deadline = spec.setup_deadline;
    // Set while away: when the connection was lost, and why.
    let mut lost: Option<(Instant, String)> = None;
    loop {
        let conn = RtmpConnection::open(
            &spec.target,
            Role::Publish,
            &spec.key,
            spec.index as u64 * 2 + 1,
            deadline,
        )
        .await;
        let failure = match conn {
            Err(reason) => reason,
            Ok(mut conn) => {
                if let Some((at, why)) = lost.take() {
                    outcome
                        .absences
                        .push((at.elapsed().as_millis() as u64, why));
                }
                outcome.connected = true;
                LiveCounters::add(&live.publishers_live, 1);
                let sent = publish(&spec, &mut conn, &mut outcome, &mut position).await;
                live.publishers_live
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                match sent {
                    Ok(()) => {
                        conn.close(CLOSE_LINGER).await;
                        return outcome;
                    }
                    Err(reason) => reason,
                }
            }
        };
        let retry = spec.reconnect.filter(|_| outcome.connected);
        let Some(delay) = retry.filter(|d| Instant::now() + *d < spec.stop_at) else {
            if let Some((at, why)) = lost.take() {
                outcome.absences.push((
                    at.elapsed().as_millis() as u64,
                    format!("{why}; never back"),
                ));
            }
            LiveCounters::add(&live.publishers_failed, 1);
            outcome.failure = Some(failure);
            return outcome;
        };
        lost.get_or_insert((Instant::now(), failure));
        tokio::time::sleep(delay).await;
        deadline = (Instant::now() + spec.setup_timeout).min(spec.stop_at);
    }
}

async fn publish(
    spec: &PublisherSpec,
    conn: &mut RtmpConnection,
    outcome: &mut PublisherOutcome,
    position: &mut Position,
) -> Result<(), String> {
    let source = &spec.source;
    let live = &spec.stats.live;
    if let Some(meta) = &source.metadata {
        conn.session
            .send_metadata(meta)
            .map_err(|e| protocol_reason(&e))?;
    }
    for m in &source.sequence_headers {
        conn.session
            .send_media(m.type_id, 0, m.payload.clone())
            .map_err(|e| protocol_reason(&e))?;
    }
    // Whatever the server sent after Publish.Start (onBWDone...).
    conn.feed(|_| true).map_err(|e| protocol_reason(&e))?;
    let Position {
        started,
        next,
        loop_base_ms,
        sequence,
    } = position;
    let started = *started;
    let mut arena = BytesMut::new();
    let mut scratch = [0u8; 4096];
    // Back after an absence: what fell due meanwhile is gone (its video
    // frames keep their sequence numbers, so players count them missing);
    // the stream resumes at the next keyframe.
    if *next > 0 || *loop_base_ms > 0 {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let mut skipping = true;
        while skipping {
            let m = &source.body[*next];
            let due = *loop_base_ms + u64::from(m.timestamp) <= elapsed_ms;
            let key = m.type_id == MessageType::VIDEO
                && tributary::protocol::media::classify_video(&m.payload).is_ok_and(|v| v.keyframe);
            if key && !due {
                skipping = false;
            } else {
                if m.type_id == MessageType::VIDEO {
                    *sequence += 1;
                }
                *next += 1;
                if *next == source.body.len() {
                    *next = 0;
                    *loop_base_ms += u64::from(source.loop_ms);
                }
            }
        }
    }
    loop {
        let now = Instant::now();
        let elapsed_ms = (now - started).as_millis() as u64;
        let mut frames = 0u64;
        // Everything due by now, unless the run is over.
        while Instant::now() < spec.stop_at {
            let m = &source.body[*next];
            let ts = *loop_base_ms + u64::from(m.timestamp);
            if ts > elapsed_ms {
                break;
            }
            outcome.max_lag_ms = outcome.max_lag_ms.max(elapsed_ms - ts);
            let payload = if m.type_id == MessageType::VIDEO {
                match clock_sei::stamp(&mut arena, &m.payload, *sequence, wall_clock_us()) {
                    Some(p) => {
                        *sequence += 1;
                        p
                    }
                    None => m.payload.clone(),
                }
            } else {
                m.payload.clone()
            };
            conn.session
                .send_media(m.type_id, ts as u32, payload)
                .map_err(|e| protocol_reason(&e))?;
            frames += 1;
            *next += 1;
            if *next == source.body.len() {
                *next = 0;
                *loop_base_ms += u64::from(source.loop_ms);
            }
        }
        let n = conn.flush().await.map_err(|e| io_reason("write", &e))? as u64;
        outcome.bytes_sent += n;
        outcome.frames_sent += frames;
        outcome.video_frames_sent = *sequence;
        LiveCounters::add(&live.bytes_out, n);
        LiveCounters::add(&live.frames_out, frames);
        if Instant::now() >= spec.stop_at {
            return Ok(());
        }
        let due = started
            + Duration::from_millis(*loop_base_ms + u64::from(source.body[*next].timestamp));
        // Meanwhile, answer the server (acknowledgements, pings) and notice
        // if it ends our stream.
        tokio::select! {
            read = conn.socket.read_alongside_writes(&mut scratch) => {
                let n = read.map_err(|e| io_reason("read", &e))?;
                if n == 0 {
                    return Err("closed by server while publishing".into());
                }
                let mut rest = &scratch[..n];
                while !rest.is_empty() {
                    let used = conn.session.handle_input(rest).map_err(|e| protocol_reason(&e))?;
                    rest = &rest[used..];
                    while let Some(event) = conn.session.poll_event() {
                        if let ClientEvent::Status { level, code, .. } = event {
                            if level == "error" || code == "NetStream.Unpublish.Success" {
                                return Err(format!("ended by server: {code}"));
                            }
                        }
                    }
                    if used == 0 {
                        break;
                    }
                }
            }
            _ = sleep_until(due.min(spec.stop_at)) => {}
        }
    }
}
