//! Recording on the shards: a stream's recorder runs on the shard that
//! publishes it (so one node of the cluster records each stream: the
//! registry's owner), as two tasks.
//!
//! - The **packager task** is a player of the stream in the hub (messages
//!   shared through a socketless `Conn`, like the LL-HLS packager): it feeds
//!   a [`Packager`] whose output is a [`Recording`], and queues the actions
//!   that come out for the writer, bounded by `record.queue_max_bytes`. Past
//!   the bound the recording marks a gap (the open file closes, a new one
//!   starts at the next keyframe) and counts it: the live stream never
//!   waits for the disk.
//! - The **writer task** carries the actions out through glommio's file API
//!   (the shard's io_uring): it opens each segment file (`O_NOFOLLOW`, never
//!   over an existing file), appends each fragment as one write, and syncs
//!   as `record.fsync` says. A failed write (a full disk, a read-only or
//!   vanished directory, a permission) stops the recording with the reason
//!   in the log, the API and `tributary_record_errors_total{kind}`; it tries
//!   again in a new file after `record.retry_ms`. A file left with no
//!   complete fragment is removed.
//!
//! Every file the recorders finish, and every file found under
//! `record.path` when the node starts, is in the node's [`Library`]: the
//! admin API lists it, the media listener serves it (only files it lists
//! are ever opened), and the retention thread deletes from it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::io::{Directory, DmaFile, OpenOptions};

use crate::config::Fsync;
use crate::container::packager::{Packager, Targets};
use crate::container::record::{self, Action, Recording, SegmentInfo};
use crate::protocol::server::redact;
use crate::stream::{RecordCommand, StreamKey};

use super::hub::{PlayOutcome, Player};
use super::pump::SharedHub;
use super::ring::conn::{Conn, Input, Notice, RingQueue};
use super::ring::{Notify, SocketRing};

/// What the recorders of every shard follow.
#[derive(Debug, Clone)]
pub struct RecordSettings {
    pub path: PathBuf,
    pub segment_secs: u32,
    pub fragment_ms: u32,
    pub fsync: Fsync,
    pub queue_max_bytes: usize,
    pub retry: Duration,
    /// Apps whose streams are recorded from their publish.
    pub all: BTreeSet<String>,
}

impl RecordSettings {
    fn targets(&self) -> Targets {
        Targets {
            part_ms: self.fragment_ms,
            // Where a file may close: at a keyframe, at least this apart.
            segment_ms: self.fragment_ms.max(2000),
            window_segments: 0,
        }
    }
}

/// Why a recording stopped, as `tributary_record_errors_total{kind}` and
/// the API name it.
pub const ERROR_KINDS: [&str; 5] = ["no_space", "read_only", "permission", "missing", "io"];

/// The OS error inside a glommio error (its message names the path and
/// the operation; the errno is what says what went wrong).
pub(crate) fn io_error<T>(e: glommio::GlommioError<T>) -> std::io::Error {
    match e {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

fn error_kind(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => "no_space",
        Some(libc::EROFS) => "read_only",
        Some(libc::EACCES) | Some(libc::EPERM) => "permission",
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => "missing",
        _ => match e.kind() {
            std::io::ErrorKind::NotFound => "missing",
            std::io::ErrorKind::PermissionDenied => "permission",
            _ => "io",
        },
    }
}

/// Node-wide recording counters (read at scrape time).
#[derive(Debug, Default)]
pub struct RecordStats {
    pub bytes_written: AtomicU64,
    pub segments: AtomicU64,
    pub gaps: AtomicU64,
    pub errors: [AtomicU64; 5],
    pub writes: AtomicU64,
    pub write_micros: AtomicU64,
    pub write_max_micros: AtomicU64,
    pub deleted: AtomicU64,
    pub active: AtomicU64,
    pub repaired: AtomicU64,
}

/// Every segment file of this node, by stream.
#[derive(Debug, Default)]
pub struct Library {
    root: PathBuf,
    streams: Mutex<BTreeMap<StreamKey, Vec<SegmentInfo>>>,
    /// Streams whose finished files changed since the cluster's index last
    /// took them.
    changed: Mutex<BTreeSet<StreamKey>>,
    pub stats: RecordStats,
}

impl crate::cluster::RecordingIndex for Library {
    fn take_changed(&self) -> Vec<(StreamKey, Vec<SegmentInfo>)> {
        let keys = std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()));
        keys.into_iter()
            .map(|k| {
                let files = self.list(&k).into_iter().filter(|s| !s.open).collect();
                (k, files)
            })
            .collect()
    }

    fn mark_all(&self) {
        let keys: Vec<StreamKey> = self.lock().keys().cloned().collect();
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(keys);
    }

    fn mark_changed(&self, key: &StreamKey) {
        self.mark(key);
    }

    fn path_of(&self, key: &StreamKey, file: &str) -> Option<PathBuf> {
        Library::path_of(self, key, file)
    }
}

impl Library {
    /// A library of the files under `root` (created if missing): each
    /// segment file is read back (box headers and `moof`s), one that a
    /// crash cut short is truncated after its last complete fragment, and
    /// one with no complete fragment is removed. Runs before the shards
    /// start (plain blocking I/O).
    pub fn load(root: &Path) -> std::io::Result<Library> {
        std::fs::create_dir_all(root)?;
        let lib = Library {
            root: root.to_owned(),
            ..Default::default()
        };
        let mut streams = BTreeMap::new();
        // Below the root, what cannot be read (a stray file, lost+found) is
        // passed over with a warning, never a reason not to start.
        let subdirs = |dir: &Path| match read_dir_names(dir) {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!("recordings: {} passed over: {e}", dir.display());
                Vec::new()
            }
        };
        for app in read_dir_names(root)? {
            // `.store`: files fetched from the object store, not this
            // node's (no app name starts with a dot).
            if app.starts_with('.') || !root.join(&app).is_dir() {
                continue;
            }
            for name in subdirs(&root.join(&app)) {
                let Some(key) = record::stream_of_dir(&app, &name) else {
                    continue;
                };
                let dir = root.join(&app).join(&name);
                let mut files = Vec::new();
                if !dir.is_dir() {
                    continue;
                }
                for file in subdirs(&dir) {
                    let Some(start_ms) = record::parse_segment_name(&file) else {
                        continue;
                    };
                    if let Some(info) = lib.load_file(&dir.join(&file), &file, start_ms) {
                        files.push(info);
                    }
                }
                files.sort_by_key(|f| f.start_ms);
                if !files.is_empty() {
                    streams.insert(key, files);
                }
            }
        }
        *lib.lock() = streams;
        crate::cluster::RecordingIndex::mark_all(&lib);
        Ok(lib)
    }

    /// A library of `key`'s files `files` under `root` alone, as listed
    /// (another node's, fetched from the object store into the cache).
    pub fn view(root: PathBuf, key: StreamKey, files: Vec<SegmentInfo>) -> Library {
        Library {
            root,
            streams: Mutex::new(BTreeMap::from([(key, files)])),
            ..Default::default()
        }
    }

    fn load_file(&self, path: &Path, file: &str, start_ms: u64) -> Option<SegmentInfo> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .ok()?;
        let len = f.metadata().ok()?.len();
        let failed = std::cell::Cell::new(false);
        let read = |at: u64, n: usize| {
            let mut buf = vec![0; n];
            let got = match f.read_at(&mut buf, at) {
                Ok(got) => {
                    buf.truncate(got);
                    Some(buf)
                }
                Err(_) => {
                    failed.set(true);
                    None
                }
            };
            std::future::ready(got)
        };
        let index = futures_lite::future::block_on(record::scan(len, read));
        if failed.get() {
            // Not a crash's doing: left as it is, and not listed.
            tracing::warn!(
                "recording {}: could not be read; not listed",
                path.display()
            );
            return None;
        }
        let Some(index) = index.filter(|i| !i.fragments.is_empty()) else {
            if len <= REPAIR_LIMIT {
                // A writer killed before its first fragment.
                tracing::warn!(
                    "recording {}: nothing playable in it; removed",
                    path.display()
                );
                drop(f);
                let _ = std::fs::remove_file(path);
            } else {
                set_aside(path, "no fragment this node can read");
            }
            return None;
        };
        if len - index.complete_len > REPAIR_LIMIT {
            // More than a crash leaves behind (one fragment being
            // written): not cut, set aside for a person to look at.
            set_aside(path, "unreadable past its first fragments");
            return None;
        }
        // Blocks reserved past the end by a writer that was killed.
        {
            use std::os::unix::fs::MetadataExt;
            let allocated = f.metadata().map_or(0, |m| m.blocks() * 512);
            if allocated > len + (1 << 20) && index.complete_len == len {
                let _ = f.set_len(len + 1);
                let _ = f.set_len(len);
            }
        }
        if index.complete_len < len {
            tracing::warn!(
                "recording {}: cut short by a crash; truncated after its last complete fragment ({} of {len} bytes)",
                path.display(),
                index.complete_len
            );
            let _ = f.set_len(index.complete_len);
            let _ = f.sync_data();
            self.stats.repaired.fetch_add(1, Ordering::Relaxed);
        }
        Some(SegmentInfo {
            file: file.to_owned(),
            start_ms,
            duration_ms: (index.duration() * 1000.0) as u64,
            bytes: index.complete_len,
            open: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<StreamKey, Vec<SegmentInfo>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `key`'s files, oldest first.
    pub fn list(&self, key: &StreamKey) -> Vec<SegmentInfo> {
        self.lock().get(key).cloned().unwrap_or_default()
    }

    /// Every stream's files.
    pub fn all(&self) -> Vec<(StreamKey, Vec<SegmentInfo>)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The bytes of every file.
    pub fn usage(&self) -> u64 {
        self.lock().values().flatten().map(|s| s.bytes).sum()
    }

    /// Where `key`'s file `file` is, if the library lists it (no other path
    /// is ever opened for a request).
    pub fn path_of(&self, key: &StreamKey, file: &str) -> Option<PathBuf> {
        let listed = self.lock().get(key)?.iter().any(|s| s.file == file);
        let (app, name) = record::stream_dir(key)?;
        listed.then(|| self.root.join(app).join(name).join(file))
    }

    fn mark(&self, key: &StreamKey) {
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
    }

    fn update(&self, key: &StreamKey, info: SegmentInfo) {
        if !info.open {
            self.mark(key);
        }
        let mut map = self.lock();
        let files = map.entry(key.clone()).or_default();
        match files.iter_mut().find(|s| s.file == info.file) {
            Some(s) => *s = info,
            None => files.push(info),
        }
    }

    fn forget(&self, key: &StreamKey, file: &str) {
        self.mark(key);
        let mut map = self.lock();
        if let Some(files) = map.get_mut(key) {
            files.retain(|s| s.file != file);
            if files.is_empty() {
                map.remove(key);
            }
        }
    }

    /// Applies the retention rules (`record.delete_after_secs`,
    /// `record.max_bytes`): deletes the files they name, oldest first,
    /// never one being written. Blocking file I/O: runs on the retention
    /// thread, never on a shard. Returns how many it deleted.
    pub fn sweep(&self, now_ms: u64, max_age_ms: u64, max_bytes: u64) -> usize {
        let flat: Vec<(StreamKey, SegmentInfo)> = self
            .all()
            .into_iter()
            .flat_map(|(k, v)| v.into_iter().map(move |s| (k.clone(), s)))
            .collect();
        let infos: Vec<SegmentInfo> = flat.iter().map(|(_, s)| s.clone()).collect();
        let mut deleted = 0;
        for i in record::expired(&infos, now_ms, max_age_ms, max_bytes) {
            let (key, s) = &flat[i];
            let Some(path) = self.path_of(key, &s.file) else {
                continue;
            };
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("retention: {}: {e}", path.display());
                    continue;
                }
            }
            self.forget(key, &s.file);
            self.stats.deleted.fetch_add(1, Ordering::Relaxed);
            deleted += 1;
            tracing::info!(stream = %redact(key), "retention: deleted {}", s.file);
        }
        deleted
    }
}

/// The most a crash can leave past a file's last complete fragment (the
/// fragment being written, with its last block's padding); a file that
/// holds more it cannot read is set aside, never cut.
const REPAIR_LIMIT: u64 = 64 << 20;

/// Renames a file the start-up scan will not repair (`NAME.damaged`, which
/// names no segment, so it is never listed or served again).
fn set_aside(path: &Path, why: &str) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".damaged");
    match std::fs::rename(path, &aside) {
        Ok(()) => tracing::warn!(
            "recording {}: {why}; set aside as {}",
            path.display(),
            Path::new(&aside).display()
        ),
        Err(e) => tracing::warn!("recording {}: {why}; not listed ({e})", path.display()),
    }
}

fn read_dir_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The retention thread: sweeps the library every `every`.
pub fn spawn_retention(
    library: Arc<Library>,
    max_age: Duration,
    max_bytes: u64,
    every: Duration,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tributary-retention".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            library.sweep(
                crate::cluster::unix_ms(),
                max_age.as_millis() as u64,
                max_bytes,
            );
        })
        .map(|_| ())
}

// ----- one stream's recording

/// A recording's state, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// "recording", "failed" (trying again) or "stopped".
    pub state: &'static str,
    /// The file being written.
    pub file: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<&'static str>,
    pub bytes: u64,
    pub segments: u64,
    pub gaps: u64,
}

/// What the two tasks of one recording share.
struct Rec {
    key: StreamKey,
    actions: RefCell<VecDeque<Action>>,
    /// Bytes in `actions`.
    queued: Cell<usize>,
    wake: Notify,
    /// The packager task is done: the writer ends once `actions` is empty.
    done: Cell<bool>,
    /// Asked to stop (the API): the packager task ends.
    stop: Cell<bool>,
    stop_wake: Notify,
    /// After a failed write: no file until then.
    failed_until: Cell<Option<Instant>>,
    error: RefCell<Option<(String, &'static str)>>,
    file: RefCell<Option<String>>,
    bytes: Cell<u64>,
    segments: Cell<u64>,
    gaps: Cell<u64>,
}

impl Rec {
    fn status(&self) -> Status {
        let failed = self.failed_until.get().is_some();
        let error = self.error.borrow().clone();
        Status {
            state: if self.done.get() {
                "stopped"
            } else if failed {
                "failed"
            } else {
                "recording"
            },
            file: self.file.borrow().clone(),
            error: error.as_ref().map(|e| e.0.clone()),
            error_kind: error.map(|e| e.1),
            bytes: self.bytes.get(),
            segments: self.segments.get(),
            gaps: self.gaps.get(),
        }
    }

    /// Drops every queued append and open (their file is to close).
    fn drop_queued(&self) {
        let mut actions = self.actions.borrow_mut();
        actions.retain(|a| matches!(a, Action::Close));
        self.queued.set(0);
    }
}

fn action_size(a: &Action) -> usize {
    match a {
        Action::Open { init, .. } => init.len(),
        Action::Append { size, .. } => *size,
        Action::Close => 0,
    }
}

/// The recordings of the streams published on one shard.
pub struct Recorders {
    settings: Option<Arc<RecordSettings>>,
    library: Option<Arc<Library>>,
    hub: Rc<SharedHub>,
    ring: Rc<SocketRing>,
    /// Runs the apps' `on_record_done` hooks.
    exec: Option<crate::exec::Exec>,
    /// Each stream's recording and the publisher it belongs to.
    streams: RefCell<HashMap<StreamKey, (u64, Rc<Rec>)>>,
    /// Streams published here, by publisher (the API may start one).
    published: RefCell<HashMap<StreamKey, u64>>,
}

impl Recorders {
    pub fn new(
        settings: Option<Arc<RecordSettings>>,
        library: Option<Arc<Library>>,
        hub: Rc<SharedHub>,
        ring: Rc<SocketRing>,
        exec: Option<crate::exec::Exec>,
    ) -> Rc<Recorders> {
        Rc::new(Recorders {
            settings,
            library,
            hub,
            ring,
            exec,
            streams: RefCell::new(HashMap::new()),
            published: RefCell::new(HashMap::new()),
        })
    }

    /// `key` is published on this shard by `publisher`: recorded at once if
    /// its app records all its streams.
    pub fn started(self: &Rc<Self>, key: &StreamKey, publisher: u64) {
        let Some(settings) = self.settings.clone() else {
            return;
        };
        self.published.borrow_mut().insert(key.clone(), publisher);
        if settings.all.contains(key.app()) {
            let _ = self.start(key);
        }
    }

    /// `key`'s publisher left: its recording ends with it (the packager
    /// task hears the end from the hub and closes the file).
    pub fn stopped(&self, key: &StreamKey, publisher: u64) {
        if self.published.borrow().get(key) == Some(&publisher) {
            self.published.borrow_mut().remove(key);
        }
        let mut streams = self.streams.borrow_mut();
        if streams.get(key).is_some_and(|(p, _)| *p == publisher) {
            if let Some((_, rec)) = streams.remove(key) {
                rec.stop.set(true);
                rec.stop_wake.notify();
            }
        }
    }

    /// Starts recording `key` (published here); Ok(false) if it already is.
    pub fn start(self: &Rc<Self>, key: &StreamKey) -> Result<bool, String> {
        let (Some(settings), Some(library)) = (self.settings.clone(), self.library.clone()) else {
            return Err("recording is off on this node (record.path is empty)".into());
        };
        let Some(publisher) = self.published.borrow().get(key).copied() else {
            return Err(RECORD_NOT_LIVE.into());
        };
        if record::stream_dir(key).is_none() {
            return Err("the stream's name is too long for a file name".into());
        }
        let running = self.streams.borrow().get(key).map(|(_, r)| !r.done.get());
        match running {
            Some(true) => return Ok(false),
            // Its recording ended by itself (the hub cut it): a new one.
            Some(false) => {
                self.streams.borrow_mut().remove(key);
            }
            None => {}
        }
        let id = self.ring.new_id();
        let (conn, queue) = Conn::detached(id);
        let player = Player::local(id, conn.clone());
        let now = Instant::now();
        let outcome = self
            .hub
            .with(|h| h.start_player(key, player, true, Duration::ZERO, now));
        if let PlayOutcome::NotFound = outcome {
            return Err(RECORD_NOT_LIVE.into());
        }
        let rec = Rc::new(Rec {
            key: key.clone(),
            actions: RefCell::new(VecDeque::new()),
            queued: Cell::new(0),
            wake: Notify::default(),
            done: Cell::new(false),
            stop: Cell::new(false),
            stop_wake: Notify::default(),
            failed_until: Cell::new(None),
            error: RefCell::new(None),
            file: RefCell::new(None),
            bytes: Cell::new(0),
            segments: Cell::new(0),
            gaps: Cell::new(0),
        });
        self.streams
            .borrow_mut()
            .insert(key.clone(), (publisher, rec.clone()));
        library.stats.active.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream = %redact(key), "recording");
        // A recording keeps every audio track of a multitrack stream.
        let packager =
            Packager::with_output(settings.targets(), Recording::new(settings.segment_secs))
                .sharing_payloads()
                .all_audio_tracks();
        glommio::spawn_local(package(
            rec.clone(),
            conn,
            queue,
            packager,
            settings.clone(),
            self.hub.clone(),
            library.clone(),
        ))
        .detach();
        glommio::spawn_local(write(rec, settings, library, self.exec.clone())).detach();
        Ok(true)
    }

    /// Stops recording `key`; false if it was not recorded here.
    pub fn stop(&self, key: &StreamKey) -> bool {
        match self.streams.borrow_mut().remove(key) {
            Some((_, rec)) => {
                rec.stop.set(true);
                rec.stop_wake.notify();
                true
            }
            None => false,
        }
    }

    pub fn status(&self, key: &StreamKey) -> Option<Status> {
        if let Some((_, rec)) = self.streams.borrow().get(key) {
            return Some(rec.status());
        }
        self.published.borrow().contains_key(key).then_some(Status {
            state: "stopped",
            file: None,
            error: None,
            error_kind: None,
            bytes: 0,
            segments: 0,
            gaps: 0,
        })
    }

    /// An admin API command for a stream of this shard.
    pub fn command(self: &Rc<Self>, cmd: RecordCommand) {
        match cmd {
            RecordCommand::Start { key, reply } => {
                let _ = reply.send(self.start(&key));
            }
            RecordCommand::Stop { key, reply } => {
                let _ = reply.send(self.stop(&key));
            }
            RecordCommand::Status { key, reply } => {
                let status = self.status(&key).and_then(|s| serde_json::to_value(s).ok());
                let _ = reply.send(status);
            }
        }
    }
}

/// What `Recorders::start` answers for a stream not published on the shard.
pub const RECORD_NOT_LIVE: &str = "the stream is not published on this node";

/// The step by which a file's size (its blocks reserved) runs ahead of its
/// content; what is not used is given back when it closes.
const PREALLOCATE: u64 = 16 << 20;

/// How often the packager task takes the messages the hub queued.
const DRAIN_EVERY: Duration = Duration::from_millis(200);

/// The packager task: hub messages in, actions queued for the writer.
async fn package(
    rec: Rc<Rec>,
    conn: Rc<Conn>,
    queue: Rc<RingQueue>,
    mut packager: Packager<Recording>,
    settings: Arc<RecordSettings>,
    hub: Rc<SharedHub>,
    library: Arc<Library>,
) {
    let mut was_failed = false;
    loop {
        conn.unschedule();
        queue.dirty.borrow_mut().clear();
        while let Some(m) = conn.pop_message() {
            packager.push(&m);
        }
        // After a failed write: nothing is written until the retry is due,
        // then a new file from the next keyframe.
        match rec.failed_until.get() {
            Some(until) if Instant::now() < until => {
                was_failed = true;
                while packager.output().next_action().is_some() {}
            }
            Some(_) => {
                rec.failed_until.set(None);
            }
            None => {}
        }
        if was_failed && rec.failed_until.get().is_none() {
            was_failed = false;
            packager.output().gap();
        }
        if rec.stop.get() {
            packager.finish();
        }
        forward(&rec, &mut packager, &settings, &library);
        if rec.stop.get() {
            break;
        }
        let retry = rec.failed_until.get();
        let input = futures_lite::future::or(
            // The hub's messages wait in the socketless `Conn` (under the
            // slow-player bound) and are taken a few times a second: a
            // wake per message cost more than the packaging.
            async {
                glommio::timer::sleep(DRAIN_EVERY).await;
                None
            },
            futures_lite::future::or(async { Some(conn.next_input().await) }, async {
                match retry {
                    Some(until) => {
                        glommio::timer::sleep(until.saturating_duration_since(Instant::now())).await
                    }
                    None => rec.stop_wake.wait().await,
                }
                None
            }),
        )
        .await;
        match input {
            None | Some(Input::Data(_)) => {}
            Some(Input::Notice(Notice::Ended { waiting: true, .. })) => {}
            Some(Input::Notice(Notice::Republished { stream_id })) => {
                packager.restart();
                hub.with(|h| h.resume(&rec.key, conn.id, stream_id));
            }
            // The stream ended, the node stops, or the hub cut us.
            Some(_) => {
                while let Some(m) = conn.pop_message() {
                    packager.push(&m);
                }
                packager.finish();
                forward(&rec, &mut packager, &settings, &library);
                break;
            }
        }
    }
    hub.with(|h| h.leave(conn.id));
    conn.close();
    rec.done.set(true);
    rec.wake.notify();
}

/// Moves the packager's actions to the writer's queue, within its bound.
fn forward(
    rec: &Rec,
    packager: &mut Packager<Recording>,
    settings: &RecordSettings,
    library: &Library,
) {
    while let Some(a) = packager.output().next_action() {
        let size = action_size(&a);
        // One action always fits an empty queue (a fragment larger than
        // the bound would otherwise never be written).
        if rec.queued.get() > 0 && rec.queued.get() + size > settings.queue_max_bytes {
            // The disk is slower than the stream: a gap, counted.
            rec.drop_queued();
            packager.output().gap();
            rec.gaps.set(rec.gaps.get() + 1);
            library.stats.gaps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stream = %redact(&rec.key), "recording: the disk is behind; a gap (a new file from the next keyframe)");
            continue;
        }
        rec.queued.set(rec.queued.get() + size);
        rec.actions.borrow_mut().push_back(a);
    }
    rec.wake.notify();
}

/// The file being written, with `O_DIRECT` where the filesystem has it
/// (the kernel reads the fragments from our buffer: no copy into the page
/// cache, which cost as much as the rest of recording together). Writes
/// are whole blocks: the last, partial block is kept in `tail` and written
/// again, zero-padded, with the next fragment. The file's size runs ahead
/// of its content (`reserved`); it is cut to `pos` when it closes (and,
/// after a crash, to its last complete fragment when the node starts: a
/// zero box header ends a scan, so a reader of the file before then reads
/// every complete fragment and stops at the zeros).
struct Open {
    file: DmaFile,
    tail: Vec<u8>,
    name: String,
    /// The bytes of the file (past it, the last block's padding, then
    /// zeros up to `reserved`).
    pos: u64,
    /// The file's size as `fallocate` set it: blocks reserved ahead of the
    /// writes (0 where the filesystem cannot), so a write does not extend
    /// the file (block allocation and a size update per write). On ext4
    /// each write is still handed to an io_uring worker thread (its
    /// timestamp update and the unwritten-extent conversion need the
    /// journal, which io_uring's non-blocking first try may not wait for:
    /// `scripts/bench-record --io-stat` counts them).
    reserved: u64,
    /// Cleared when `fallocate` fails: the file grows by its writes.
    reserving: bool,
    init_len: u64,
    start_ms: u64,
    media_ms: f64,
}

/// The writer task: the queued actions, through the shard's io_uring.
async fn write(
    rec: Rc<Rec>,
    settings: Arc<RecordSettings>,
    library: Arc<Library>,
    exec: Option<crate::exec::Exec>,
) {
    let done = Done {
        rec: &rec,
        settings: &settings,
        library: &library,
        exec: exec.as_ref(),
    };
    let mut open: Option<Open> = None;
    loop {
        let action = rec.actions.borrow_mut().pop_front();
        let Some(action) = action else {
            if rec.done.get() {
                break;
            }
            rec.wake.wait().await;
            continue;
        };
        rec.queued
            .set(rec.queued.get().saturating_sub(action_size(&action)));
        let result = match action {
            Action::Open { init, lead_ms } => {
                if let Some(o) = open.take() {
                    done.close(o).await;
                }
                match create(&rec.key, &settings, lead_ms).await {
                    Ok((file, name, start_ms)) => {
                        let mut o = Open {
                            file,
                            tail: Vec::new(),
                            name,
                            pos: 0,
                            reserved: 0,
                            reserving: true,
                            init_len: init.len() as u64,
                            start_ms,
                            media_ms: 0.0,
                        };
                        reserve(&mut o, 1).await;
                        let written = append(&mut o, &[init], &library).await;
                        *rec.file.borrow_mut() = Some(o.name.clone());
                        open = Some(o);
                        written
                    }
                    Err(e) => Err(e),
                }
            }
            Action::Append {
                bytes, duration_ms, ..
            } => match &mut open {
                Some(o) => {
                    let mut written = append(o, &bytes, &library).await;
                    if written.is_ok() && settings.fsync == Fsync::Fragment {
                        // The fragment is on the disk before it is listed.
                        written = o.file.fdatasync().await.map_err(io_error);
                    }
                    if written.is_ok() {
                        o.media_ms += duration_ms;
                        rec.bytes.set(
                            rec.bytes.get() + bytes.iter().map(|b| b.len() as u64).sum::<u64>(),
                        );
                        library.update(&rec.key, info(o, true));
                    }
                    written
                }
                None => Ok(()),
            },
            Action::Close => {
                if let Some(o) = open.take() {
                    done.close(o).await;
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            let kind = error_kind(&e);
            let at = ERROR_KINDS.iter().position(|k| *k == kind).unwrap_or(4);
            library.stats.errors[at].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stream = %redact(&rec.key), "recording stopped: {e} ({kind}); trying again in {} ms", settings.retry.as_millis());
            *rec.error.borrow_mut() = Some((e.to_string(), kind));
            rec.failed_until.set(Some(Instant::now() + settings.retry));
            rec.drop_queued();
            rec.stop_wake.notify();
            if let Some(o) = open.take() {
                done.abandon(o).await;
            }
        } else if rec.error.borrow().is_some() && open.is_some() && rec.failed_until.get().is_none()
        {
            // Writing works again.
            *rec.error.borrow_mut() = None;
        }
    }
    if let Some(o) = open.take() {
        done.close(o).await;
    }
    *rec.file.borrow_mut() = None;
    library.stats.active.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(stream = %redact(&rec.key), "recording ended");
}

fn info(o: &Open, open: bool) -> SegmentInfo {
    SegmentInfo {
        file: o.name.clone(),
        start_ms: o.start_ms,
        duration_ms: o.media_ms as u64,
        bytes: o.pos,
        open,
    }
}

/// Creates the stream's next segment file (and its directories): never
/// over an existing file, never through a symbolic link.
async fn create(
    key: &StreamKey,
    settings: &RecordSettings,
    lead_ms: f64,
) -> std::io::Result<(DmaFile, String, u64)> {
    let (app, name) = record::stream_dir(key)
        .ok_or_else(|| std::io::Error::other("the stream's name is too long for a file name"))?;
    let app_dir = settings.path.join(app);
    let dir = app_dir.join(name);
    for d in [&app_dir, &dir] {
        Directory::create(d).await.map_err(io_error)?;
    }
    let mut start_ms = crate::cluster::unix_ms().saturating_sub(lead_ms as u64);
    for _ in 0..16 {
        let name = record::segment_name(start_ms);
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .dma_open(dir.join(&name))
            .await;
        match opened.map_err(io_error) {
            Ok(file) => {
                if settings.fsync != Fsync::Never {
                    if let Ok(d) = Directory::open(&dir).await {
                        let _ = d.sync().await;
                    }
                }
                return Ok((file, name, start_ms));
            }
            // Two files in one millisecond (a restart): the next one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => start_ms += 1,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free file name"))
}

/// Makes the file's size (its reserved blocks) reach past `end`, by
/// `PREALLOCATE` at a time. Where `fallocate` fails (a filesystem without
/// it, a disk too full for a whole step) the writes extend the file
/// themselves: slower, never wrong.
async fn reserve(o: &mut Open, end: u64) {
    if !o.reserving || end <= o.reserved {
        return;
    }
    let want = end.div_ceil(PREALLOCATE) * PREALLOCATE;
    if o.file.pre_allocate(want, false).await.is_ok() {
        o.reserved = want;
    } else {
        o.reserving = false;
    }
}

/// Appends `bytes` as one write of whole blocks from the start of the
/// last partial one (a fragment is never split over writes).
async fn append(o: &mut Open, bytes: &[bytes::Bytes], library: &Library) -> std::io::Result<()> {
    let len: usize = bytes.iter().map(|b| b.len()).sum();
    let t0 = Instant::now();
    let align = o.file.alignment().max(1) as usize;
    let from = o.pos - o.tail.len() as u64;
    let data = o.tail.len() + len;
    let size = data.div_ceil(align) * align;
    reserve(o, from + size as u64).await;
    let mut buf = o.file.alloc_dma_buffer(size);
    let b = buf.as_bytes_mut();
    let mut at = o.tail.len();
    b[..at].copy_from_slice(&o.tail);
    for part in bytes {
        b[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    b[data..].fill(0);
    let keep = data % align;
    let tail = b[data - keep..data].to_vec();
    let n = o.file.write_at(buf, from).await.map_err(io_error)?;
    if n < data {
        // A short write of a block device: the disk is full.
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    o.tail = tail;
    o.pos += len as u64;
    let micros = t0.elapsed().as_micros() as u64;
    let s = &library.stats;
    s.writes.fetch_add(1, Ordering::Relaxed);
    s.write_micros.fetch_add(micros, Ordering::Relaxed);
    s.write_max_micros.fetch_max(micros, Ordering::Relaxed);
    s.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
    Ok(())
}

/// What finishing a file takes.
struct Done<'a> {
    rec: &'a Rec,
    settings: &'a RecordSettings,
    library: &'a Library,
    exec: Option<&'a crate::exec::Exec>,
}

impl Done<'_> {
    /// A finished file: synced (unless `record.fsync = "never"`), listed,
    /// its hook told.
    async fn close(&self, o: Open) {
        if o.pos <= o.init_len {
            return self.abandon(o).await;
        }
        // The last block's padding goes, and the blocks reserved past the
        // end with it (a truncate to the size the file has frees nothing).
        let _ = o.file.truncate(o.pos + 1).await;
        let _ = o.file.truncate(o.pos).await;
        if self.settings.fsync != Fsync::Never {
            let _ = o.file.fdatasync().await;
        }
        let listed = info(&o, false);
        let _ = o.file.close().await;
        self.finished(listed);
        self.rec.segments.set(self.rec.segments.get() + 1);
        self.library.stats.segments.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, listed: SegmentInfo) {
        let (rec, library) = (self.rec, self.library);
        *rec.file.borrow_mut() = None;
        let path = library.path_of(&rec.key, &listed.file);
        let done = path.map(|path| crate::exec::RecordDone {
            path,
            start_ms: listed.start_ms,
            duration_ms: listed.duration_ms,
            bytes: listed.bytes,
        });
        library.update(&rec.key, listed);
        if let (Some(exec), Some(done)) = (self.exec, done) {
            exec.record_done(&rec.key, done);
        }
    }

    /// A file a write failed in: what it holds up to its last complete
    /// fragment is kept (and listed); a file with none is removed.
    async fn abandon(&self, o: Open) {
        *self.rec.file.borrow_mut() = None;
        if o.pos <= o.init_len {
            self.library.forget(&self.rec.key, &o.name);
            let _ = o.file.remove().await;
            let _ = o.file.close().await;
            return;
        }
        // A failed write may have left part of a fragment behind it; the
        // reserved blocks go too.
        let _ = o.file.truncate(o.pos + 1).await;
        let _ = o.file.truncate(o.pos).await;
        let listed = info(&o, false);
        let _ = o.file.close().await;
        self.finished(listed);
    }
}
