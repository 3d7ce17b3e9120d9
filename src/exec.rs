//! Exec pipelines and hooks on a control-plane thread of their own (a tokio
//! current-thread runtime): when a stream is published on this node, its
//! app's pipelines start (an ffmpeg transcode into a rendition, or any
//! program), each restarted with backoff when it exits, and stopped when
//! the stream ends; its `on_publish` and `on_unpublish` hooks run once.
//! Shards tell it through a bounded queue and never wait for it.
//!
//! Every child is bounded in number (`exec.max_processes` running at once
//! on the node), in its own process group (stopped with SIGTERM to the
//! group, then SIGKILL), and dies with the node: `PR_SET_PDEATHSIG` sends
//! it SIGKILL when this thread, which lives as long as the process, is
//! gone, a SIGKILL of the node included. Its stderr is logged with the
//! stream's name, at most [`LOG_LINES`] lines per [`LOG_WINDOW`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::output::pipeline::{Pipeline, Vars};
use crate::output::push::{Backoff, Lifecycle, State};
use crate::protocol::server::redact;
use crate::stream::StreamKey;

/// Requests queued from the shards; past it a request is dropped, counted.
const QUEUE: usize = 1024;
/// Lines of one child's stderr logged per window; the rest are counted.
pub const LOG_LINES: u32 = 20;
pub const LOG_WINDOW: Duration = Duration::from_secs(10);
/// How long a stopped child has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// One app's pipelines and hooks.
#[derive(Debug, Clone, Default)]
pub struct AppExec {
    pub pipelines: Vec<Pipeline>,
    pub on_publish: Option<Pipeline>,
    pub on_unpublish: Option<Pipeline>,
    /// Run when a recording file of the stream is complete (nginx-rtmp's
    /// `exec_record_done`).
    pub on_record_done: Option<Pipeline>,
}

/// A finished recording file, as its hook hears of it.
#[derive(Debug, Clone)]
pub struct RecordDone {
    pub path: std::path::PathBuf,
    pub start_ms: u64,
    pub duration_ms: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ExecSettings {
    pub apps: BTreeMap<String, AppExec>,
    pub max_processes: usize,
    pub backoff: Backoff,
    /// The node's RTMP address its own pipelines play from and publish to.
    pub rtmp: String,
    pub node_id: String,
}

/// The exec thread's counters, read by the metrics.
#[derive(Debug, Default)]
pub struct ExecStats {
    pub running: AtomicU64,
    pub starts: AtomicU64,
    pub exits: AtomicU64,
    /// Starts refused: `max_processes` were running.
    pub refused: AtomicU64,
    /// Requests from the shards dropped at a full queue.
    pub dropped: AtomicU64,
}

/// A stream's publish or its end, in the order the shards saw them.
#[derive(Debug)]
enum Event {
    /// `publisher` (its connection) published `key` with `query`.
    Published {
        key: StreamKey,
        publisher: u64,
        query: String,
    },
    Unpublished {
        key: StreamKey,
        publisher: u64,
    },
    RecordDone {
        key: StreamKey,
        done: RecordDone,
    },
}

/// Events from the shards, in order. A publish past [`QUEUE`] waiting is
/// dropped (counted); an end never is, so no pipeline outlives its stream:
/// ends are bounded by the publishes before them.
#[derive(Debug, Default)]
struct Events {
    queue: std::sync::Mutex<std::collections::VecDeque<Event>>,
    wake: Notify,
}

/// The shards' and the admin plane's way to the exec thread.
#[derive(Clone, Debug)]
pub struct Exec {
    events: Arc<Events>,
    status: mpsc::Sender<(StreamKey, oneshot::Sender<Option<Vec<serde_json::Value>>>)>,
    pub stats: Arc<ExecStats>,
}

impl Exec {
    /// Starts the exec thread.
    pub fn start(settings: ExecSettings) -> std::io::Result<Exec> {
        let (status, rx) = mpsc::channel(64);
        let stats = Arc::new(ExecStats::default());
        let events = Arc::new(Events::default());
        let (s, e) = (stats.clone(), events.clone());
        crate::control_thread::spawn("tributary-exec", move || serve(settings, e, rx, s))?;
        Ok(Exec {
            events,
            status,
            stats,
        })
    }

    fn tell(&self, event: Event) {
        {
            let mut queue = self.events.queue.lock().unwrap_or_else(|p| p.into_inner());
            let droppable = matches!(event, Event::Published { .. } | Event::RecordDone { .. });
            if queue.len() >= QUEUE && droppable {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("exec: an event dropped, the exec queue is full");
                return;
            }
            queue.push_back(event);
        }
        self.events.wake.notify_one();
    }

    /// `publisher` published `key` on this node (from a shard; never
    /// waits).
    pub fn published(&self, key: &StreamKey, publisher: u64, query: &str) {
        self.tell(Event::Published {
            key: key.clone(),
            publisher,
            query: query.to_owned(),
        });
    }

    /// `publisher`'s publish of `key` ended (from a shard; never waits).
    /// Nothing stops when the stream's pipelines are another publisher's.
    pub fn unpublished(&self, key: &StreamKey, publisher: u64) {
        self.tell(Event::Unpublished {
            key: key.clone(),
            publisher,
        });
    }

    /// A recording file of `key` is complete: its app's `on_record_done`
    /// hook runs (from a shard; never waits).
    pub fn record_done(&self, key: &StreamKey, done: RecordDone) {
        self.tell(Event::RecordDone {
            key: key.clone(),
            done,
        });
    }

    /// Each pipeline of `key` (JSON objects); None when it has none here.
    pub async fn status(&self, key: &StreamKey) -> Option<Vec<serde_json::Value>> {
        let (reply, rx) = oneshot::channel();
        self.status.send((key.clone(), reply)).await.ok()?;
        rx.await.ok().flatten()
    }
}

/// One running pipeline of one stream.
struct Child {
    pipeline: Pipeline,
    life: RefCell<Lifecycle>,
    pid: Cell<Option<u32>>,
    stopped: Cell<bool>,
    stop: Notify,
}

impl Child {
    fn status(&self, now: Instant) -> serde_json::Value {
        let life = self.life.borrow();
        let state = match life.state() {
            State::Connecting => "starting",
            State::Live => "running",
            State::BackingOff => "backing_off",
            State::Failed => "failed",
        };
        serde_json::json!({
            "name": self.pipeline.name,
            "state": state,
            "pid": self.pid.get(),
            "for_ms": now.saturating_duration_since(life.since()).as_millis() as u64,
            "restarts": life.reconnects(),
            "error": life.last_error(),
            "retry_in_ms": life.retry_at().map(|at| at.saturating_duration_since(now).as_millis() as u64),
        })
    }
}

struct Supervisor {
    settings: ExecSettings,
    stats: Arc<ExecStats>,
    streams: RefCell<HashMap<StreamKey, Vec<Rc<Child>>>>,
    /// The publish (its connection) each stream's pipelines belong to.
    owners: RefCell<HashMap<StreamKey, u64>>,
    running: Cell<usize>,
}

async fn serve(
    settings: ExecSettings,
    events: Arc<Events>,
    mut status: mpsc::Receiver<(StreamKey, oneshot::Sender<Option<Vec<serde_json::Value>>>)>,
    stats: Arc<ExecStats>,
) {
    let state = Rc::new(Supervisor {
        settings,
        stats,
        streams: RefCell::new(HashMap::new()),
        owners: RefCell::new(HashMap::new()),
        running: Cell::new(0),
    });
    loop {
        let asked = futures_lite::future::or(
            async {
                events.wake.notified().await;
                None
            },
            async { Some(status.recv().await) },
        )
        .await;
        if let Some(asked) = asked {
            let Some((key, reply)) = asked else {
                return;
            };
            let now = Instant::now();
            let list = state
                .streams
                .borrow()
                .get(&key)
                .map(|c| c.iter().map(|c| c.status(now)).collect());
            let _ = reply.send(list);
        }
        loop {
            let event = events
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            match event {
                Some(Event::Published {
                    key,
                    publisher,
                    query,
                }) => state.published(key, publisher, query),
                Some(Event::Unpublished { key, publisher }) => state.unpublished(&key, publisher),
                Some(Event::RecordDone { key, done }) => state.record_done(&key, done),
                None => break,
            }
        }
    }
}

impl Supervisor {
    fn published(self: &Rc<Self>, key: StreamKey, publisher: u64, query: String) {
        self.unpublished_quietly(&key);
        self.owners.borrow_mut().insert(key.clone(), publisher);
        let Some(app) = self.settings.apps.get(key.app()).cloned() else {
            return;
        };
        if let Some(hook) = &app.on_publish {
            self.hook(hook, &key, &query, "publish", &[]);
        }
        let mut children = Vec::new();
        for pipeline in app.pipelines {
            let child = Rc::new(Child {
                pipeline,
                life: RefCell::new(Lifecycle::new(self.settings.backoff, Instant::now())),
                pid: Cell::new(None),
                stopped: Cell::new(false),
                stop: Notify::new(),
            });
            tokio::task::spawn_local(self.clone().supervise(key.clone(), child.clone()));
            children.push(child);
        }
        if !children.is_empty() {
            self.streams.borrow_mut().insert(key, children);
        }
    }

    fn unpublished_quietly(&self, key: &StreamKey) {
        let children = self.streams.borrow_mut().remove(key);
        for child in children.unwrap_or_default() {
            child.stopped.set(true);
            child.stop.notify_one();
        }
    }

    fn unpublished(self: &Rc<Self>, key: &StreamKey, publisher: u64) {
        // After a takeover the stream is the new publisher's.
        if self.owners.borrow().get(key) != Some(&publisher) {
            return;
        }
        self.owners.borrow_mut().remove(key);
        self.unpublished_quietly(key);
        let hook = self
            .settings
            .apps
            .get(key.app())
            .and_then(|a| a.on_unpublish.clone());
        if let Some(hook) = hook {
            self.hook(&hook, key, "", "unpublish", &[]);
        }
    }

    fn record_done(self: &Rc<Self>, key: &StreamKey, done: RecordDone) {
        let hook = self
            .settings
            .apps
            .get(key.app())
            .and_then(|a| a.on_record_done.clone());
        let Some(hook) = hook else {
            return;
        };
        let extra = [
            ("TRIBUTARY_FILE", done.path.display().to_string()),
            (
                "TRIBUTARY_START",
                crate::container::record::format_rfc3339(done.start_ms),
            ),
            (
                "TRIBUTARY_DURATION",
                format!("{:.3}", done.duration_ms as f64 / 1000.0),
            ),
            ("TRIBUTARY_BYTES", done.bytes.to_string()),
        ];
        self.hook(&hook, key, "", "record_done", &extra);
    }

    fn vars<'a>(&'a self, key: &'a StreamKey, pipeline: &'a str) -> Vars<'a> {
        Vars {
            key,
            rtmp: &self.settings.rtmp,
            node: &self.settings.node_id,
            pipeline,
        }
    }

    /// Takes a place under `max_processes`, or says why not.
    fn take_place(&self) -> Result<(), String> {
        if self.running.get() >= self.settings.max_processes {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "{} processes are running (exec.max_processes)",
                self.running.get()
            ));
        }
        self.running.set(self.running.get() + 1);
        self.stats.running.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn give_place(&self) {
        self.running.set(self.running.get().saturating_sub(1));
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// A hook: run once, its environment naming the stream; not restarted.
    fn hook(
        self: &Rc<Self>,
        hook: &Pipeline,
        key: &StreamKey,
        query: &str,
        event: &'static str,
        extra: &[(&'static str, String)],
    ) {
        if let Err(e) = self.take_place() {
            tracing::warn!(stream = %redact(key), "on_{event} hook not run: {e}");
            return;
        }
        let argv = hook.command(&self.vars(key, &hook.name));
        let mut env = vec![
            ("TRIBUTARY_EVENT", event.to_owned()),
            ("TRIBUTARY_APP", key.app().to_owned()),
            ("TRIBUTARY_NAME", key.name().to_owned()),
            ("TRIBUTARY_QUERY", query.to_owned()),
            ("TRIBUTARY_NODE", self.settings.node_id.clone()),
        ];
        env.extend_from_slice(extra);
        let state = self.clone();
        let key = key.clone();
        tokio::task::spawn_local(async move {
            match spawn(&argv, &env) {
                Ok(mut child) => {
                    state.stats.starts.fetch_add(1, Ordering::Relaxed);
                    let label = format!("on_{event}");
                    log_stderr(&mut child, &key, &label);
                    let status = child.wait().await;
                    state.stats.exits.fetch_add(1, Ordering::Relaxed);
                    if let Ok(s) = status {
                        if !s.success() {
                            tracing::warn!(stream = %redact(&key), "{label} hook {}: {s}", argv[0]);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %redact(&key), "on_{event} hook {}: {e}", argv[0])
                }
            }
            state.give_place();
        });
    }

    /// One pipeline's life: start, wait for its exit or its stop, back off,
    /// start again, until the stream ends.
    async fn supervise(self: Rc<Self>, key: StreamKey, child: Rc<Child>) {
        let mut seed = (std::process::id() as u64) << 32 | 0x9E37_79B9;
        while !child.stopped.get() {
            let error = match self.run_once(&key, &child).await {
                Ok(()) => break,
                Err(e) => e,
            };
            if child.stopped.get() {
                break;
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let jitter = (seed >> 11) as f64 / (1u64 << 53) as f64;
            let now = Instant::now();
            let at = child.life.borrow_mut().failed(now, error.clone(), jitter);
            tracing::warn!(
                stream = %redact(&key),
                "pipeline {}: {error}; restarting in {} ms",
                child.pipeline.name,
                at.saturating_duration_since(now).as_millis()
            );
            let wait = at.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(wait, child.stop.notified()).await;
            if child.stopped.get() {
                break;
            }
            child.life.borrow_mut().retry(Instant::now());
        }
    }

    /// Runs the pipeline once: Ok when it was stopped, Err with why it
    /// ended otherwise.
    async fn run_once(&self, key: &StreamKey, child: &Child) -> Result<(), String> {
        self.take_place()?;
        let argv = child
            .pipeline
            .command(&self.vars(key, &child.pipeline.name));
        let result = async {
            let mut process = spawn(&argv, &[]).map_err(|e| format!("{}: {e}", argv[0]))?;
            self.stats.starts.fetch_add(1, Ordering::Relaxed);
            child.pid.set(process.id());
            child.life.borrow_mut().live(Instant::now());
            tracing::info!(stream = %redact(key), pid = process.id(), "pipeline {} started", child.pipeline.name);
            log_stderr(&mut process, key, &child.pipeline.name);
            let exited = futures_lite::future::or(
                async { Some(process.wait().await) },
                async {
                    child.stop.notified().await;
                    None
                },
            )
            .await;
            let result = match exited {
                Some(Ok(status)) => Err(format!("exited: {status}")),
                Some(Err(e)) => Err(format!("wait: {e}")),
                None => {
                    stop(&mut process).await;
                    Ok(())
                }
            };
            self.stats.exits.fetch_add(1, Ordering::Relaxed);
            child.pid.set(None);
            result
        }
        .await;
        self.give_place();
        result
    }
}

/// Starts `argv` in a process group of its own that dies with this thread
/// (the exec thread lives as long as the node), stdin and stdout to
/// /dev/null, stderr piped.
fn spawn(argv: &[String], env: &[(&str, String)]) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: setpgid, prctl, getppid
    // and _exit are, and it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // Its own group: a stop signals the group, grandchildren too.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SIGKILL when the thread that forked it (the exec thread,
            // which lives as long as the node) is gone.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The node died between the fork and the prctl: go now.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM to the child's group, then SIGKILL after [`STOP_GRACE`].
async fn stop(process: &mut tokio::process::Child) {
    if let Some(pid) = process.id() {
        // SAFETY: kill() takes no pointers; the group is our child's own
        // (setpgid in `spawn`), not yet reaped, so its id is still ours.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGTERM);
        }
        if tokio::time::timeout(STOP_GRACE, process.wait())
            .await
            .is_err()
        {
            // SAFETY: as above.
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
            let _ = process.wait().await;
        }
    }
}

/// The longest stderr line logged, in characters; the rest is dropped.
const MAX_LINE: usize = 300;
/// Bytes of a line read before the credential is cut out and the line
/// cut to [`MAX_LINE`] characters: four bytes a character and the
/// credential's length more, so that a credential the read cuts starts
/// past the characters shown, never shown in part.
const READ_LINE: usize = 4 * MAX_LINE + 64;

/// Logs the child's stderr with the stream's name, at most [`LOG_LINES`]
/// lines per [`LOG_WINDOW`] (the rest counted in one line). Lines end at
/// `\n` or `\r` (ffmpeg's progress line), each cut to [`MAX_LINE`] bytes
/// as it is read: a child that never ends a line costs no more than that.
fn log_stderr(process: &mut tokio::process::Child, key: &StreamKey, label: &str) {
    let Some(mut stderr) = process.stderr.take() else {
        return;
    };
    let (key, label) = (redact(key), label.to_owned());
    tokio::task::spawn_local(async move {
        let mut rate = LineRate::new(Instant::now());
        let mut line: Vec<u8> = Vec::with_capacity(MAX_LINE);
        let mut buf = [0u8; 4096];
        loop {
            let n = match tokio::io::AsyncReadExt::read(&mut stderr, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                if b == b'\n' || b == b'\r' {
                    if !line.is_empty() {
                        rate.log(&key, &label, &line);
                        line.clear();
                    }
                } else if line.len() < READ_LINE {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            rate.log(&key, &label, &line);
        }
        if rate.dropped > 0 {
            tracing::warn!(stream = %key, "{label}: {} more lines not logged", rate.dropped);
        }
    });
}

/// At most [`LOG_LINES`] lines per [`LOG_WINDOW`].
struct LineRate {
    window: Instant,
    shown: u32,
    dropped: u64,
}

impl LineRate {
    fn new(now: Instant) -> Self {
        Self {
            window: now,
            shown: 0,
            dropped: 0,
        }
    }

    fn log(&mut self, key: &str, label: &str, line: &[u8]) {
        if self.window.elapsed() >= LOG_WINDOW {
            if self.dropped > 0 {
                tracing::warn!(stream = %key, "{label}: {} more lines not logged", self.dropped);
            }
            *self = Self::new(Instant::now());
        }
        if self.shown >= LOG_LINES {
            self.dropped += 1;
            return;
        }
        self.shown += 1;
        let text = String::from_utf8_lossy(line);
        let text: String = crate::output::pipeline::without_secret(&text)
            .chars()
            .take(MAX_LINE)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        tracing::info!(stream = %key, "{label}: {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// The pre_exec closure, run in real children: each leads its own
    /// process group, and dies when the thread that started it is gone.
    #[test]
    fn a_child_leads_its_own_group_and_dies_with_the_thread_that_started_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // The shell's own /proc/self/stat (a builtin read, no fork):
            // its fifth field is the process group.
            let mut child = spawn(
                &argv(&[
                    "sh",
                    "-c",
                    "read -r a b c d pgrp rest < /proc/self/stat; echo $$ $pgrp >&2",
                ]),
                &[],
            )
            .unwrap();
            let mut err = String::new();
            let mut stderr = child.stderr.take().unwrap();
            tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err)
                .await
                .unwrap();
            assert!(child.wait().await.unwrap().success());
            let mut parts = err.split_whitespace();
            assert_eq!(parts.next(), parts.next(), "leads its own group: {err}");
        });

        // Started on a thread that then ends, with the handle forgotten (no
        // kill on drop): PR_SET_PDEATHSIG kills it.
        let pid = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let child = spawn(&argv(&["sleep", "30"]), &[]).unwrap();
                let pid = child.id().unwrap();
                std::mem::forget(child);
                pid
            })
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Gone, or a zombie nobody has reaped yet: not running.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "child {pid} outlived its thread: {stat}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
