//! Low-Latency HLS (RFC 8216bis with its low-latency extensions) from
//! every node: fMP4 (CMAF) parts and segments in memory, playlists with
//! `EXT-X-PART`, `EXT-X-PRELOAD-HINT`, `EXT-X-SERVER-CONTROL` and blocking
//! reload (`_HLS_msn` / `_HLS_part`). Players without LL-HLS read the same
//! playlist as ordinary HLS (they ignore the part tags).
//!
//! - One packager per stream per node, started by the first request, on
//!   the shard that has the stream (its publisher, or its relay from another
//!   node; a request on another shard asks that shard to start it). It is a
//!   player of the stream like any other, under the same slow-player
//!   rules, that takes the messages themselves (nothing encoded) from a
//!   [`Conn`](super::ring::conn::Conn) with no socket.
//! - Its [`Window`] is shared node-wide (`Arc<Mutex>`), so a viewer's
//!   requests agree on segment numbers whichever shard takes them. Requests
//!   take the lock briefly; the packager once per part. A request that
//!   blocks waits on its shard's [`Notify`](super::ring::Notify); the packager's shard wakes its
//!   own and tells the other shards over the mesh.
//! - A window keeps `media.hls_window_segments` segments, and is freed when
//!   its stream ends (after a grace for players to read the end) or when
//!   nobody has asked for it for `media.hls_idle_ms`.
//! - A viewer is a session its requests name (see [`session`]), kept in
//!   its window.
//!
//! The packaging itself, the window and its playlists are sans-IO, in
//! [`crate::container`]; this module runs them on the shards.

pub mod run;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use crate::container::packager;
pub use crate::container::window::{multivariant_playlist, Block, Ready, Resource, Window};

use crate::stream::StreamKey;

/// The windows of this node's packaged streams.
#[derive(Default)]
pub struct Registry {
    windows: Mutex<HashMap<StreamKey, Arc<Mutex<Window>>>>,
}

impl Registry {
    pub fn get(&self, key: &StreamKey) -> Option<Arc<Mutex<Window>>> {
        self.lock().get(key).cloned()
    }

    /// Registers a new window for `key`, unless one is there already.
    pub fn insert(&self, key: &StreamKey, window: Arc<Mutex<Window>>) -> bool {
        let mut map = self.lock();
        if map.contains_key(key) {
            return false;
        }
        map.insert(key.clone(), window);
        true
    }

    pub fn remove(&self, key: &StreamKey, window: &Arc<Mutex<Window>>) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|w| Arc::ptr_eq(w, window)) {
            map.remove(key);
        }
    }

    /// Windows and the bytes their parts hold (memory per stream).
    /// (Also: the waiting shards, read and cleared by the packager.)
    pub fn usage(&self) -> (usize, usize) {
        let map = self.lock();
        let bytes = map
            .values()
            .map(|w| {
                let w = lock(w);
                w.segments
                    .iter()
                    .flat_map(|s| &s.parts)
                    .map(|p| p.size)
                    .sum::<usize>()
            })
            .sum();
        (map.len(), bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Arc<Mutex<Window>>>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Locks a window (a poisoned lock is still usable: nothing panics with
/// it held but a bug, and the process aborts on a panic anyway).
pub fn lock(w: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}
