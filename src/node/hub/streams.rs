//! The hub's streams: a slab indexed by [`StreamId`] (what the media path
//! uses, no string hashing per message), with a key index for the rare
//! paths (publish, play).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::super::gop::GopCache;
use super::super::ring::conn::Conn;
use super::{Player, RELAY_CONN};
use crate::stream::StreamKey;

/// A stream's handle on its shard: a slot and that slot's generation, so a
/// handle kept past its stream's end finds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamId {
    slot: u32,
    generation: u32,
}

/// A shard relaying one of this shard's streams.
pub(super) struct RemoteSubscriber {
    pub(super) shard: usize,
    /// The stream's id on that shard.
    pub(super) id: StreamId,
    /// Its inbox was full when the snapshot was due: send it before
    /// anything else.
    pub(super) needs_snapshot: bool,
    pub(super) waiting_key: bool,
}

pub(super) struct Stream {
    pub(super) key: StreamKey,
    /// The publishing connection when this shard owns the stream
    /// ([`RELAY_CONN`] when it relays it from another node); None for a
    /// relay of another shard's stream.
    pub(super) publisher: Option<u64>,
    /// Its output, so a takeover or a kick can close it.
    pub(super) publisher_out: Option<Rc<Conn>>,
    pub(super) gop: GopCache,
    pub(super) players: Vec<Player>,
    /// Shards that relay this stream (owner side).
    pub(super) remote: Vec<RemoteSubscriber>,
    /// Messages from the publisher so far: the sequence other nodes splice by.
    pub(super) seq: u64,
    /// Some node of the cluster is attached: messages go to the control thread.
    pub(super) export: bool,
    /// A node relay with nobody watching since then.
    pub(super) idle_since: Option<Instant>,
    /// Payload bytes from the publisher since the last stream report.
    pub(super) bytes: u64,
}

impl Stream {
    pub(super) fn new(
        key: StreamKey,
        publisher: Option<u64>,
        out: Option<Rc<Conn>>,
        gop_max: usize,
    ) -> Self {
        Self {
            key,
            publisher,
            publisher_out: out,
            gop: GopCache::new(gop_max),
            players: Vec::new(),
            remote: Vec::new(),
            seq: 0,
            export: false,
            idle_since: None,
            bytes: 0,
        }
    }

    pub(super) fn is_node_relay(&self) -> bool {
        self.publisher == Some(RELAY_CONN)
    }

    /// Its publisher is a connection on this shard.
    pub(super) fn is_local(&self) -> bool {
        self.publisher.is_some_and(|c| c != RELAY_CONN)
    }
}

/// The shard's streams: a slab indexed by [`StreamId`], and the key index
/// for the rare paths.
#[derive(Default)]
pub(super) struct Streams {
    pub(super) slots: Vec<(u32, Option<Stream>)>,
    pub(super) free: Vec<u32>,
    pub(super) index: HashMap<StreamKey, StreamId>,
}

impl Streams {
    pub(super) fn insert(&mut self, stream: Stream) -> StreamId {
        let key = stream.key.clone();
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.1 = Some(stream);
        let id = StreamId {
            slot,
            generation: entry.0,
        };
        self.index.insert(key, id);
        id
    }

    pub(super) fn get(&self, id: StreamId) -> Option<&Stream> {
        match self.slots.get(id.slot as usize)? {
            (g, Some(s)) if *g == id.generation => Some(s),
            _ => None,
        }
    }

    pub(super) fn get_mut(&mut self, id: StreamId) -> Option<&mut Stream> {
        match self.slots.get_mut(id.slot as usize)? {
            (g, Some(s)) if *g == id.generation => Some(s),
            _ => None,
        }
    }

    pub(super) fn id(&self, key: &StreamKey) -> Option<StreamId> {
        self.index.get(key).copied()
    }

    pub(super) fn by_key(&self, key: &StreamKey) -> Option<&Stream> {
        self.get(self.id(key)?)
    }

    pub(super) fn by_key_mut(&mut self, key: &StreamKey) -> Option<&mut Stream> {
        self.get_mut(self.id(key)?)
    }

    pub(super) fn remove(&mut self, id: StreamId) -> Option<Stream> {
        let entry = self.slots.get_mut(id.slot as usize)?;
        if entry.0 != id.generation || entry.1.is_none() {
            return None;
        }
        let stream = entry.1.take()?;
        entry.0 = entry.0.wrapping_add(1);
        self.free.push(id.slot);
        self.index.remove(&stream.key);
        Some(stream)
    }

    pub(super) fn remove_key(&mut self, key: &StreamKey) -> Option<Stream> {
        self.remove(self.id(key)?)
    }

    pub(super) fn ids(&self) -> Vec<StreamId> {
        self.index.values().copied().collect()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Stream> {
        self.slots.iter_mut().filter_map(|(_, s)| s.as_mut())
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &Stream> {
        self.slots.iter().filter_map(|(_, s)| s.as_ref())
    }
}
