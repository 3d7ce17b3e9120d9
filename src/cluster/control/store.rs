//! Recordings that outlive their node (`record.store = "nats"`): each
//! finished file is copied to the JetStream object store
//! [`STORE_BUCKET`], named `NODE/STREAM/FILE` (both as `wire::token`s).
//! A node asked for a recording whose node is gone (or does not answer)
//! fetches the files the request needs from the store into its cache,
//! `record.path/.store/NODE/APP/NAME/FILE`, and serves them as it serves
//! its own. Copies go one at a time, in the order files finish; a failed
//! one is tried again after [`RETRY`]. Cached files unused for
//! [`CACHE_TTL`] are removed.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::*;
use crate::container::record::{self, SegmentInfo};

pub(super) const STORE_BUCKET: &str = "tributary_recordings_store";
/// Files waiting to be copied at most (past it, the rest are copied after
/// the next reconnect lists every file again).
const MAX_QUEUE: usize = 65_536;
/// After a failed copy or open, the next try waits this long.
const RETRY: Duration = Duration::from_secs(5);
/// One copy or download may take this long (a segment of many minutes).
const TRANSFER_LIMIT: Duration = Duration::from_secs(600);
/// The largest object fetched from the store.
const MAX_OBJECT: u64 = 16 << 30;
/// A cached file not used for this long is removed.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// The cache is swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What the control thread knows of its copies.
#[derive(Default)]
pub(super) struct StoreState {
    queue: RefCell<VecDeque<(StreamKey, String)>>,
    queued: RefCell<HashSet<(StreamKey, String)>>,
    /// Per stream, the files known to be in the store.
    stored: RefCell<HashMap<StreamKey, HashSet<String>>>,
    /// A copy task is running.
    pub(super) busy: Cell<bool>,
    /// No copy or open is tried before this.
    retry_at: Cell<Option<Instant>>,
    /// A store error was logged since the last success.
    warned: Cell<bool>,
    /// Cache files being downloaded now.
    fetching: RefCell<HashSet<PathBuf>>,
    last_sweep: Cell<Option<Instant>>,
}

/// The object's name of `node`'s (a `wire::token`) file `file` of `key`.
pub(super) fn object_name(node: &str, key: &StreamKey, file: &str) -> String {
    format!("{node}/{}/{file}", wire::token(key))
}

impl<N: Nats> Control<N> {
    fn store_failed(&self, what: &str) {
        count(&self.stats.store_errors);
        self.store.retry_at.set(Some(Instant::now() + RETRY));
        if !self.store.warned.replace(true) {
            tracing::warn!("recordings' object store: {what}");
        }
    }

    fn store_retry_due(&self) -> bool {
        self.store
            .retry_at
            .get()
            .is_none_or(|t| Instant::now() >= t)
    }

    /// Opens the object store if it is on and not open.
    pub(super) async fn open_objects(&self) {
        let Some(st) = &self.s.store else {
            return;
        };
        if self.objects.borrow().is_some() || !self.store_retry_due() {
            return;
        }
        let open =
            self.client
                .open_objects(STORE_BUCKET, st.max_age, st.max_bytes, self.s.kv_replicas);
        match tokio::time::timeout(OP_TIMEOUT, open).await {
            Ok(Ok(o)) => *self.objects.borrow_mut() = Some(o),
            Ok(Err(e)) => self.store_failed(&e),
            Err(_) => self.store_failed("opening it timed out"),
        }
    }

    /// `key`'s finished files now: those not in the store are queued.
    pub(super) fn queue_store(&self, key: &StreamKey, files: &[SegmentInfo]) {
        if self.s.store.is_none() {
            return;
        }
        let mut stored = self.store.stored.borrow_mut();
        let done = stored.entry(key.clone()).or_default();
        // Deleted files are forgotten.
        done.retain(|f| files.iter().any(|s| &s.file == f));
        let mut queue = self.store.queue.borrow_mut();
        let mut queued = self.store.queued.borrow_mut();
        for s in files {
            let item = (key.clone(), s.file.clone());
            if !done.contains(&s.file) && queue.len() < MAX_QUEUE && queued.insert(item.clone()) {
                queue.push_back(item);
            }
        }
        if done.is_empty() {
            stored.remove(key);
        }
    }

    /// Starts copying what is queued, unless a copy runs or waits to retry.
    pub(super) fn store_next(self: &Rc<Self>) {
        if self.s.store.is_none()
            || self.store.busy.get()
            || self.store.queue.borrow().is_empty()
            || !self.store_retry_due()
        {
            return;
        }
        let (Some(objects), Some(recordings)) =
            (self.objects.borrow().clone(), self.s.recordings.clone())
        else {
            return;
        };
        self.store.busy.set(true);
        let c = self.clone();
        tokio::task::spawn_local(async move {
            loop {
                let next = c.store.queue.borrow_mut().pop_front();
                let Some((key, file)) = next else {
                    break;
                };
                c.store
                    .queued
                    .borrow_mut()
                    .remove(&(key.clone(), file.clone()));
                // Deleted since it was queued: nothing to copy.
                let Some(path) = recordings.path_of(&key, &file) else {
                    continue;
                };
                let name = object_name(&c.me, &key, &file);
                let copy = async {
                    if objects.has(&name).await? {
                        return Ok(None);
                    }
                    objects.put_file(&name, &path).await.map(Some)
                };
                let copied = match tokio::time::timeout(TRANSFER_LIMIT, copy).await {
                    Ok(r) => r,
                    Err(_) => Err("timed out".to_owned()),
                };
                match copied {
                    Ok(bytes) => {
                        if let Some(bytes) = bytes {
                            count(&c.stats.store_uploads);
                            c.stats
                                .store_upload_bytes
                                .fetch_add(bytes, Ordering::Relaxed);
                            tracing::debug!(stream = %key, file, bytes, "recording copied to the object store");
                        }
                        c.store.warned.set(false);
                        c.store
                            .stored
                            .borrow_mut()
                            .entry(key)
                            .or_default()
                            .insert(file);
                    }
                    Err(e) => {
                        c.store_failed(&format!("copying {file} of {key}: {e}"));
                        if c.store
                            .queued
                            .borrow_mut()
                            .insert((key.clone(), file.clone()))
                        {
                            c.store.queue.borrow_mut().push_front((key, file));
                        }
                        break;
                    }
                }
            }
            c.store.busy.set(false);
        });
    }

    /// `node`'s files `files` of `key`, fetched from the store into the
    /// cache (those cached already are used as they are); the directory
    /// that stands for `node`'s `record.path`.
    pub(super) async fn fetch_stored(
        &self,
        key: &StreamKey,
        node: &str,
        files: &[String],
    ) -> Result<PathBuf, String> {
        let st = self
            .s
            .store
            .as_ref()
            .ok_or("record.store is off on this node")?;
        if files.len() > crate::cluster::MAX_STORE_FETCH {
            return Err(format!("{} files asked for at once", files.len()));
        }
        // Names become paths: only what this node's own recorder would
        // name a file, under directories built from the parsed stream key.
        if let Some(bad) = files
            .iter()
            .find(|f| record::parse_segment_name(f).is_none())
        {
            return Err(format!("{bad:?} is not a recording's file name"));
        }
        let (app, name) = record::stream_dir(key).ok_or("not a recorded stream's name")?;
        let node = wire::token(node);
        let root = st.cache.join(&node);
        let dir = root.join(app).join(name);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        self.sweep_cache(&st.cache);
        let objects = self
            .objects
            .borrow()
            .clone()
            .ok_or("the object store is not open")?;
        for file in files {
            let dest = dir.join(file);
            // Another request may be fetching it: wait for that one.
            while self.store.fetching.borrow().contains(&dest) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let cached = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::File::options()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
            };
            if let Ok(f) = cached {
                // Used again: kept another CACHE_TTL.
                let _ = f.set_modified(SystemTime::now());
                continue;
            }
            self.store.fetching.borrow_mut().insert(dest.clone());
            let part = dir.join(format!(".{file}.part"));
            let _ = tokio::fs::remove_file(&part).await;
            let object = object_name(&node, key, file);
            let got = match tokio::time::timeout(
                TRANSFER_LIMIT,
                objects.get_file(&object, &part, MAX_OBJECT),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("{object}: timed out")),
            };
            let done = match got {
                Ok(_) => tokio::fs::rename(&part, &dest)
                    .await
                    .map_err(|e| format!("{}: {e}", dest.display())),
                Err(e) => Err(e),
            };
            self.store.fetching.borrow_mut().remove(&dest);
            if let Err(e) = done {
                let _ = tokio::fs::remove_file(&part).await;
                count(&self.stats.store_errors);
                return Err(e);
            }
            count(&self.stats.store_downloads);
        }
        Ok(root)
    }

    /// Removes cached files unused for [`CACHE_TTL`] (on a blocking
    /// thread; at most every [`SWEEP_EVERY`]).
    fn sweep_cache(&self, cache: &Path) {
        let now = Instant::now();
        if self
            .store
            .last_sweep
            .get()
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.store.last_sweep.set(Some(now));
        let cache = cache.to_owned();
        tokio::task::spawn_blocking(move || sweep(&cache, CACHE_TTL));
    }
}

/// Removes the files four levels under `cache` (`NODE/APP/NAME/FILE`)
/// last modified more than `ttl` ago, and the directories left empty.
/// Symbolic links are not followed.
fn sweep(cache: &Path, ttl: Duration) -> usize {
    fn walk(dir: &Path, depth: usize, ttl: Duration, removed: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let old = |meta: &std::fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > ttl)
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if depth < 3 && meta.is_dir() {
                walk(&e.path(), depth + 1, ttl, removed);
                // Only one unchanged for `ttl` (not one a fetch has just
                // made), and only when empty (remove_dir fails otherwise).
                if e.path().symlink_metadata().is_ok_and(|m| old(&m)) {
                    let _ = std::fs::remove_dir(e.path());
                }
            } else if depth == 3
                && meta.is_file()
                && old(&meta)
                && std::fs::remove_file(e.path()).is_ok()
            {
                *removed += 1;
            }
        }
    }
    let mut removed = 0;
    walk(cache, 0, ttl, &mut removed);
    removed
}

#[test]
fn the_cache_sweep_removes_old_files_only_four_levels_down() {
    let root = std::env::temp_dir().join(format!("trib-store-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("a/live/cam");
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join("20260101T000000.000Z.mp4");
    let new = dir.join("20260101T000500.000Z.mp4");
    for f in [&old, &new] {
        std::fs::write(f, b"x").unwrap();
    }
    let past = SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(past)
        .unwrap();
    // A file higher up is not the sweep's, however old.
    let stray = root.join("a/stray");
    std::fs::write(&stray, b"x").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(past)
        .unwrap();
    assert_eq!(sweep(&root, CACHE_TTL), 1);
    assert!(!old.exists() && new.exists() && stray.exists());
    std::fs::remove_file(&new).unwrap();
    sweep(&root, CACHE_TTL);
    assert!(dir.exists(), "a directory changed lately is kept");
    for d in [&dir, &dir.parent().unwrap().to_owned()] {
        std::fs::File::open(d).unwrap().set_modified(past).unwrap();
    }
    sweep(&root, CACHE_TTL);
    assert!(!dir.exists(), "old empty directories removed");
    let _ = std::fs::remove_dir_all(&root);
}
