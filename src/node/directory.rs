//! The node-wide stream directory: which shard owns each live stream key.
//! Touched only on publish, unpublish and play (rare), never per message, so
//! a mutex is fine here; media never goes near it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::StreamKey;

/// What a publish claim got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Registered,
    /// The key was live on this shard; it is ours now (takeover).
    TakenFrom(usize),
    /// The key is live and takeover is off.
    Refused,
}

#[derive(Debug, Default)]
pub struct Directory {
    owners: Mutex<HashMap<StreamKey, usize>>,
}

impl Directory {
    /// Claims `key` for `shard`, taking it from its owner if `takeover`.
    pub fn claim(&self, key: &StreamKey, shard: usize, takeover: bool) -> Claim {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        match owners.get(key).copied() {
            None => {
                owners.insert(key.clone(), shard);
                Claim::Registered
            }
            Some(old) if takeover => {
                owners.insert(key.clone(), shard);
                Claim::TakenFrom(old)
            }
            Some(_) => Claim::Refused,
        }
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
