//! SRT publishers and players (`srt://host:port/app` URLs), through the
//! node's own libsrt binding (`tributary::srt::ffi`, loaded at run time).
//!
//! A publisher paces the source as an RTMP publisher does, stamps each
//! video frame ([`crate::clock_sei`]), writes the messages as MPEG-TS
//! (`tributary::container::ts_out`) and sends it in 1316-byte messages. A
//! player reads TS, demuxes it (`tributary::container::ts`) and checks the
//! messages like any other player ([`crate::player_check`]).
//!
//! Sockets are non-blocking once connected. One poller thread waits in
//! libsrt's epoll (edge-triggered) and wakes the player whose socket became
//! readable; a publisher's send never blocks (a full send buffer is waited
//! out 1 ms at a time, and counted as lag).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio::time::{sleep, sleep_until, Instant};
use tributary::container::ts::TsIn;
use tributary::container::ts_out::TsOut;
use tributary::protocol::message::{MessageType, RawMessage};
use tributary::srt::ffi::{self, Lib, Socket};

use crate::clock_sei;
use crate::player::{PlayerOutcome, PlayerSpec};
use crate::player_check::PlayerCheck;
use crate::publisher::{wall_clock_us, PublisherOutcome, PublisherSpec};
use crate::stats::LiveCounters;

/// SRT's latency the tool asks for (ms), as ffmpeg's default 120.
const LATENCY_MS: i32 = 120;

/// The poller: libsrt's epoll, and who to wake for each socket.
struct Poller {
    lib: &'static Lib,
    eid: i32,
    waiting: Mutex<HashMap<Socket, Arc<Notify>>>,
}

static POLLER: OnceLock<Result<Arc<Poller>, String>> = OnceLock::new();

fn poller() -> Result<Arc<Poller>, String> {
    POLLER
        .get_or_init(|| {
            let lib = Lib::get()?;
            let eid = lib.epoll_create()?;
            let p = Arc::new(Poller {
                lib,
                eid,
                waiting: Mutex::new(HashMap::new()),
            });
            let run = p.clone();
            std::thread::Builder::new()
                .name("load-srt-poll".into())
                .spawn(move || run.run())
                .map_err(|e| e.to_string())?;
            Ok(p)
        })
        .clone()
}

impl Poller {
    fn run(&self) {
        let mut events = [ffi::EpollEvent::default(); 256];
        loop {
            let n = self.lib.epoll_wait(self.eid, &mut events, 100);
            let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            for ev in &events[..n] {
                if let Some(w) = waiting.get(&ev.fd) {
                    w.notify_one();
                }
            }
        }
    }

    fn watch(&self, s: Socket) -> Result<Arc<Notify>, String> {
        let notify = Arc::new(Notify::new());
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(s, notify.clone());
        self.lib
            .epoll_add(self.eid, s, ffi::EPOLL_IN | ffi::EPOLL_ERR | ffi::EPOLL_ET)?;
        Ok(notify)
    }

    fn forget(&self, s: Socket) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&s);
    }
}

/// Connects to `spec`'s target with `stream_id`, blocking on a thread of
/// tokio's pool; the socket is non-blocking afterwards.
async fn connect(
    target: &crate::target::Target,
    stream_id: String,
    deadline: Instant,
) -> Result<(&'static Lib, Socket), String> {
    let lib = Lib::get()?;
    let addr = target.addr;
    let timeout_ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        .clamp(100, 30_000) as i32;
    tokio::task::spawn_blocking(move || {
        let s = lib.create_socket()?;
        let setup = || -> Result<(), String> {
            lib.set_str(s, ffi::STREAMID, &stream_id)?;
            lib.set_int(s, ffi::LATENCY, LATENCY_MS)?;
            lib.set_int(s, CONNTIMEO, timeout_ms)?;
            lib.connect(s, addr)?;
            lib.set_bool(s, ffi::RCVSYN, false)?;
            lib.set_bool(s, ffi::SNDSYN, false)?;
            Ok(())
        };
        match setup() {
            Ok(()) => Ok((lib, s)),
            Err(e) => {
                lib.close(s);
                Err(format!("srt connect: {e}"))
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

fn message(type_id: MessageType, timestamp: u32, payload: bytes::Bytes) -> RawMessage {
    RawMessage {
        csid: 0,
        timestamp,
        type_id,
        stream_id: 1,
        payload,
    }
}

/// `SRTO_CONNTIMEO` (ms).
const CONNTIMEO: i32 = 36;

fn stream_id(spec_app: &str, key: &str, publish: bool) -> String {
    let mode = if publish { "publish" } else { "request" };
    format!("#!::r={spec_app}/{key},m={mode}")
}

pub async fn run_srt_publisher(spec: PublisherSpec) -> PublisherOutcome {
    let mut outcome = PublisherOutcome {
        key: spec.key.clone(),
        ..Default::default()
    };
    let live = &spec.stats.live;
    let id = stream_id(&spec.target.url.app, &spec.key, true);
    let (lib, sock) = match connect(&spec.target, id, spec.setup_deadline).await {
        Ok(c) => c,
        Err(reason) => {
            LiveCounters::add(&live.publishers_failed, 1);
            outcome.failure = Some(reason);
            return outcome;
        }
    };
    outcome.connected = true;
    LiveCounters::add(&live.publishers_live, 1);
    if let Err(reason) = publish(&spec, lib, sock, &mut outcome).await {
        LiveCounters::add(&live.publishers_failed, 1);
        outcome.failure = Some(reason);
    } else {
        // As an encoder that stops cleanly: what was sent is acknowledged
        // and played out (the latency) before the close, which in live
        // mode drops whatever is still buffered.
        let deadline = Instant::now() + Duration::from_secs(2);
        while lib.get_int(sock, ffi::SNDDATA).unwrap_or(0) > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(10)).await;
        }
        let latency = lib.get_int(sock, ffi::PEERLATENCY).unwrap_or(LATENCY_MS);
        sleep(Duration::from_millis(
            u64::try_from(latency).unwrap_or(120) + 50,
        ))
        .await;
    }
    lib.close(sock);
    live.publishers_live
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    outcome
}

/// Sends `out` in whole SRT messages, waiting out a full send buffer.
async fn send_all(lib: &Lib, sock: Socket, out: &mut BytesMut) -> Result<u64, String> {
    let mut sent = 0;
    while !out.is_empty() {
        let n = out.len().min(ffi::LIVE_PAYLOAD);
        match lib.send(sock, &out[..n]) {
            Ok(true) => {
                let _ = out.split_to(n);
                sent += n as u64;
            }
            Ok(false) => sleep(Duration::from_millis(1)).await,
            Err(e) => return Err(format!("srt send: {e}")),
        }
    }
    Ok(sent)
}

async fn publish(
    spec: &PublisherSpec,
    lib: &'static Lib,
    sock: Socket,
    outcome: &mut PublisherOutcome,
) -> Result<(), String> {
    let source = &spec.source;
    let live = &spec.stats.live;
    let mut ts = TsOut::new();
    let mut out = BytesMut::new();
    for m in &source.sequence_headers {
        ts.push(&message(m.type_id, 0, m.payload.clone()), &mut out);
    }
    let started = Instant::now();
    let mut arena = BytesMut::new();
    let (mut next, mut loop_base_ms, mut sequence) = (0usize, 0u64, 0u64);
    loop {
        let elapsed_ms = (Instant::now() - started).as_millis() as u64;
        let mut frames = 0u64;
        while Instant::now() < spec.stop_at {
            let m = &source.body[next];
            let t = loop_base_ms + u64::from(m.timestamp);
            if t > elapsed_ms {
                break;
            }
            outcome.max_lag_ms = outcome.max_lag_ms.max(elapsed_ms - t);
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
            ts.push(&message(m.type_id, t as u32, payload), &mut out);
            frames += 1;
            next += 1;
            if next == source.body.len() {
                next = 0;
                loop_base_ms += u64::from(source.loop_ms);
            }
        }
        let sent = send_all(lib, sock, &mut out).await?;
        outcome.bytes_sent += sent;
        outcome.frames_sent += frames;
        outcome.video_frames_sent = sequence;
        LiveCounters::add(&live.bytes_out, sent);
        LiveCounters::add(&live.frames_out, frames);
        if Instant::now() >= spec.stop_at {
            return Ok(());
        }
        let m = &source.body[next];
        let due = started + Duration::from_millis(loop_base_ms + u64::from(m.timestamp));
        sleep_until(due.min(spec.stop_at)).await;
    }
}

pub async fn run_srt_player(spec: PlayerSpec) -> PlayerOutcome {
    let mut outcome = PlayerOutcome {
        key: spec.key.clone(),
        ..Default::default()
    };
    let live = &spec.stats.live;
    let asked_at = Instant::now();
    let asked_wall_us = wall_clock_us();
    let poller = match poller() {
        Ok(p) => p,
        Err(e) => {
            LiveCounters::add(&live.players_failed, 1);
            outcome.failure = Some(e);
            return outcome;
        }
    };
    let id = stream_id(&spec.target.url.app, &spec.key, false);
    let (lib, sock) = match connect(&spec.target, id, spec.setup_deadline).await {
        Ok(c) => c,
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
    let result = match poller.watch(sock) {
        Ok(notify) => play(&spec, lib, sock, &notify, &mut outcome, asked_at).await,
        Err(e) => Err(e),
    };
    poller.forget(sock);
    lib.close(sock);
    spec.stats.record_latencies(outcome.check.take_latencies());
    if let Err(reason) = result {
        LiveCounters::add(&live.players_failed, 1);
        outcome.failure = Some(reason);
    }
    live.players_live
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    outcome
}

async fn play(
    spec: &PlayerSpec,
    lib: &'static Lib,
    sock: Socket,
    notify: &Notify,
    outcome: &mut PlayerOutcome,
    asked_at: Instant,
) -> Result<(), String> {
    let live = &spec.stats.live;
    let first_frame_deadline = Instant::now() + spec.first_frame_timeout;
    let mut ts = TsIn::new();
    let mut messages = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Everything libsrt holds now, then wait for its next edge.
        let read = async {
            let mut n = 0;
            loop {
                match lib.recv(sock, &mut buf[n..n + ffi::LIVE_MAX_PAYLOAD]) {
                    Ok(0) if n > 0 => return Ok(n),
                    Ok(0) => notify.notified().await,
                    Ok(k) => {
                        n += k;
                        if n + ffi::LIVE_MAX_PAYLOAD > buf.len() {
                            return Ok(n);
                        }
                    }
                    // The server closed, or the link broke: the end.
                    Err(_) => return Ok(n),
                }
            }
        };
        let n = match outcome.timed_read(spec, first_frame_deadline, read).await? {
            Some(n) => n,
            None => return Ok(()),
        };
        outcome.bytes += n as u64;
        LiveCounters::add(&live.bytes_in, n as u64);
        let now_us = wall_clock_us();
        let lost_before = outcome.check.frames_lost;
        ts.push(&buf[..n], &mut messages);
        let mut frames = 0;
        for m in messages.drain(..) {
            frames += 1;
            outcome.on_message(&m, now_us, asked_at, &spec.stats);
        }
        outcome.after_read(frames, lost_before, &spec.stats);
    }
}
