//! One publisher: connects, publishes its stream key, sends the source's
//! metadata and sequence headers, then the body at its own pace (by
//! message timestamp against a monotonic clock), looped with timestamps
//! continued, every AVC frame stamped with [`crate::clock_sei`]. Stops
//! sending at the run's stop time and closes the stream the way ffmpeg does.

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
    let conn = RtmpConnection::open(
        &spec.target,
        Role::Publish,
        &spec.key,
        spec.index as u64 * 2 + 1,
        spec.setup_deadline,
    )
    .await;
    let mut conn = match conn {
        Ok(c) => c,
        Err(reason) => {
            LiveCounters::add(&live.publishers_failed, 1);
            outcome.failure = Some(reason);
            return outcome;
        }
    };
    outcome.connected = true;
    LiveCounters::add(&live.publishers_live, 1);
    if let Err(reason) = publish(&spec, &mut conn, &mut outcome).await {
        LiveCounters::add(&live.publishers_failed, 1);
        outcome.failure = Some(reason);
    } else {
        conn.close(CLOSE_LINGER).await;
    }
    live.publishers_live
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    outcome
}

async fn publish(
    spec: &PublisherSpec,
    conn: &mut RtmpConnection,
    outcome: &mut PublisherOutcome,
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
    let started = Instant::now();
    let mut arena = BytesMut::new();
    let mut next = 0usize;
    let mut loop_base_ms = 0u64;
    let mut sequence = 0u64;
    let mut scratch = [0u8; 4096];
    loop {
        let now = Instant::now();
        let elapsed_ms = (now - started).as_millis() as u64;
        let mut frames = 0u64;
        // Everything due by now, unless the run is over.
        while Instant::now() < spec.stop_at {
            let m = &source.body[next];
            let ts = loop_base_ms + u64::from(m.timestamp);
            if ts > elapsed_ms {
                break;
            }
            outcome.max_lag_ms = outcome.max_lag_ms.max(elapsed_ms - ts);
            let payload = if m.type_id == MessageType::VIDEO {
                match clock_sei::stamp(&mut arena, &m.payload, sequence, wall_clock_us()) {
                    Some(p) => {
                        sequence += 1;
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
            next += 1;
            if next == source.body.len() {
                next = 0;
                loop_base_ms += u64::from(source.loop_ms);
            }
        }
        let n = conn.flush().await.map_err(|e| io_reason("write", &e))? as u64;
        outcome.bytes_sent += n;
        outcome.frames_sent += frames;
        outcome.video_frames_sent = sequence;
        LiveCounters::add(&live.bytes_out, n);
        LiveCounters::add(&live.frames_out, frames);
        if Instant::now() >= spec.stop_at {
            return Ok(());
        }
        let due =
            started + Duration::from_millis(loop_base_ms + u64::from(source.body[next].timestamp));
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
