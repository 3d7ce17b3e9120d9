//! The node-wide stream directory: which shard owns each live stream key.
//! Touched only on publish, unpublish and play (rare), never per message, so
//! a mutex is fine here; media never goes near it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::StreamKey;

#[derive(Debug, Default)]
pub struct Directory {
    owners: Mutex<HashMap<StreamKey, usize>>,
}

impl Directory {
    /// Claims `key` for `shard`; false if it is live already.
    pub fn register(&self, key: &StreamKey, shard: usize) -> bool {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.contains_key(key) {
            return false;
        }
        owners.insert(key.clone(), shard);
        true
    }

    pub fn unregister(&self, key: &StreamKey, shard: usize) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.get(key) == Some(&shard) {
            owners.remove(key);
        }
    }

    pub fn owner(&self, key: &StreamKey) -> Option<usize> {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Every live stream and its owner shard.
    pub fn snapshot(&self) -> Vec<(StreamKey, usize)> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = owners.iter().map(|(k, s)| (k.clone(), *s)).collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.owners.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
