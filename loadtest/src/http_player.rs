//! One HTTP-FLV viewer: `GET /APP/KEY.flv`, then the FLV body read tag by
//! tag and checked like an RTMP player's messages ([`PlayerCheck`]: first
//! frame a keyframe, timestamps, frames lost, latency from the SEI stamp)
//! until the stream ends after the run's stop time or the drain deadline
//! passes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tributary::protocol::flv::FlvReader;
use tributary::protocol::message::MessageType;

use crate::connection::{io_reason, READ_BUFFER_BYTES};
use crate::player::{PlayerOutcome, PlayerSpec};
use crate::player_check::PlayerCheck;
use crate::publisher::wall_clock_us;
use crate::stats::LiveCounters;

/// The largest FLV tag taken (a keyframe of a high-bitrate stream).
const MAX_TAG: u32 = 16 * 1024 * 1024;
/// The largest answer head taken.
const MAX_HEAD: usize = 16 * 1024;

pub async fn run_flv_player(spec: PlayerSpec) -> PlayerOutcome {
    let mut outcome = PlayerOutcome {
        key: spec.key.clone(),
        ..Default::default()
    };
    let live = &spec.stats.live;
    let asked_at = Instant::now();
    let asked_wall_us = wall_clock_us();
    let mut body = Vec::new();
    let socket = match open(&spec, &mut body).await {
        Ok(s) => s,
        Err(reason) => {
            LiveCounters::add(&live.players_failed, 1);
            outcome.failure = Some(reason);
            return outcome;
        }
    };
    outcome.connected = true;
    outcome.check = PlayerCheck::new(asked_wall_us);
    outcome.check.steady_after_us = spec.steady_after_us;
    LiveCounters::add(&live.players_live, 1);
    let result = play(&spec, socket, body, &mut outcome, asked_at).await;
    spec.stats.record_latencies(outcome.check.take_latencies());
    if let Err(reason) = result {
        LiveCounters::add(&live.players_failed, 1);
        outcome.failure = Some(reason);
    }
    live.players_live
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    outcome
}

/// Connects, asks for the stream and reads the answer's head; what came
/// after it is left in `rest`.
async fn open(spec: &PlayerSpec, rest: &mut Vec<u8>) -> Result<TcpStream, String> {
    let deadline = spec.setup_deadline;
    let mut socket = match timeout_at(deadline, TcpStream::connect(spec.target.addr)).await {
        Err(_) => return Err("connect: timed out".into()),
        Ok(Err(e)) => return Err(io_reason("connect", &e)),
        Ok(Ok(s)) => s,
    };
    let _ = socket.set_nodelay(true);
    let url = &spec.target.url;
    let request = format!(
        "GET /{}/{}.flv HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: tributary-load\r\n\r\n",
        url.app, spec.key, url.host, url.port
    );
    socket
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_reason("setup write", &e))?;
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let status = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
            if status != "200" {
                return Err(format!("http {status}"));
            }
            rest.drain(..end + 4);
            return Ok(socket);
        }
        if rest.len() > MAX_HEAD {
            return Err("http: answer head too long".into());
        }
        let n = match timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return Err("setup: timed out".into()),
            Ok(Err(e)) => return Err(io_reason("setup read", &e)),
            Ok(Ok(0)) => return Err("setup: closed by server".into()),
            Ok(Ok(n)) => n,
        };
        rest.extend_from_slice(&buf[..n]);
    }
}

async fn play(
    spec: &PlayerSpec,
    mut socket: TcpStream,
    first: Vec<u8>,
    outcome: &mut PlayerOutcome,
    asked_at: Instant,
) -> Result<(), String> {
    let live = &spec.stats.live;
    let first_frame_deadline = Instant::now() + spec.first_frame_timeout;
    let mut reader = FlvReader::new(MAX_TAG);
    reader.push(&first);
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut n = first.len();
    loop {
        outcome.bytes += n as u64;
        LiveCounters::add(&live.bytes_in, n as u64);
        let now_us = wall_clock_us();
        let lost_before = outcome.check.frames_lost;
        let mut frames = 0u64;
        if reader.parsed_header().is_some() || reader.header().map_err(flv_reason)?.is_some() {
            while let Some(tag) = reader.next_tag().map_err(flv_reason)? {
                let m = tag.into_message(0, 1);
                if matches!(m.type_id, MessageType::AUDIO | MessageType::VIDEO) {
                    frames += 1;
                    outcome.on_message(&m, now_us, asked_at, &spec.stats);
                }
            }
        }
        outcome.after_read(frames, lost_before, &spec.stats);
        // The body ends with the stream.
        n = match outcome
            .timed_read(spec, first_frame_deadline, socket.read(&mut buf))
            .await?
        {
            Some(n) => n,
            None => return Ok(()),
        };
        reader.push(&buf[..n]);
    }
}

fn flv_reason(e: tributary::protocol::flv::FlvError) -> String {
    let text = e.to_string();
    format!("flv: {}", text.split(':').next().unwrap_or(&text))
}
