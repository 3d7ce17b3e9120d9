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

/// Who has a key on this node: the shard, and whether that shard relays
/// it from another node of the cluster rather than having its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    shard: usize,
    relayed: bool,
}

#[derive(Debug, Default)]
pub struct Directory {
    owners: Mutex<HashMap<StreamKey, Owner>>,
}

impl Directory {
    /// Claims `key` for `shard`, taking it from its owner if `takeover`.
    pub fn claim(&self, key: &StreamKey, shard: usize, takeover: bool) -> Claim {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let owner = Owner {
            shard,
            relayed: false,
        };
        match owners.get(key).copied() {
            None => {
                owners.insert(key.clone(), owner);
                Claim::Registered
            }
            Some(old) if takeover || old.relayed => {
                owners.insert(key.clone(), owner);
                Claim::TakenFrom(old.shard)
            }
            Some(_) => Claim::Refused,
        }
    }

    /// Registers `shard` as relaying `key` from another node, if no shard
    /// has the key yet.
    pub fn claim_relay(&self, key: &StreamKey, shard: usize) -> bool {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.contains_key(key) {
            return false;
        }
        owners.insert(
            key.clone(),
            Owner {
                shard,
                relayed: true,
            },
        );
        true
    }

    pub fn unregister(&self, key: &StreamKey, shard: usize) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.get(key).is_some_and(|o| o.shard == shard) {
            owners.remove(key);
        }
    }

    pub fn owner(&self, key: &StreamKey) -> Option<usize> {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map(|o| o.shard)
    }

    /// Every live stream: its owner shard, and whether it is relayed from
    /// another node.
    pub fn snapshot(&self) -> Vec<(StreamKey, usize, bool)> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = owners
            .iter()
            .map(|(k, o)| (k.clone(), o.shard, o.relayed))
            .collect();
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
