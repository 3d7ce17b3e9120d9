//! The node-wide stream directory: which shard owns each live stream key,
//! and what the stream carries (for `/api/streams`). Touched on publish,
//! unpublish, play and a stream report every 2 s (rare), never per
//! message, so a mutex is fine here; media never goes near it.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::stream::StreamKey;

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
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    shard: usize,
    relayed: bool,
    /// Unix ms when this node started having it.
    started_ms: u64,
    report: Report,
    /// The publisher's SRT link, when it publishes over SRT.
    srt: Option<SrtLink>,
}

/// An SRT publisher's link as libsrt counts it (since it connected).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SrtLink {
    /// Packets found missing, received again (repaired), and dropped as
    /// too late to play.
    pub lost: u64,
    pub retransmitted: u64,
    pub dropped: u64,
    pub rtt_ms: f64,
    /// The latency the two ends agreed (ms).
    pub latency_ms: u32,
}

impl Eq for SrtLink {}

impl Owner {
    fn new(shard: usize, relayed: bool) -> Owner {
        Owner {
            shard,
            relayed,
            started_ms: crate::cluster::unix_ms(),
            report: Report::default(),
            srt: None,
        }
    }
}

/// What a stream carries, as its shard last reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Codecs of its sequence headers ("h264", "aac", ...); empty until seen.
    pub video_codec: String,
    pub audio_codec: String,
    /// Media bitrate over the last report interval.
    pub bitrate_kbps: u64,
}

/// One live stream of the node, as `/api/streams` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub key: StreamKey,
    pub shard: usize,
    pub relayed: bool,
    pub started_ms: u64,
    pub report: Report,
    pub srt: Option<SrtLink>,
}

#[derive(Debug, Default)]
pub struct Directory {
    owners: Mutex<HashMap<StreamKey, Owner>>,
}

impl Directory {
    /// Claims `key` for `shard`, taking it from its owner if `takeover`.
    pub fn claim(&self, key: &StreamKey, shard: usize, takeover: bool) -> Claim {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let owner = Owner::new(shard, false);
        match owners.get(key) {
            None => {
                owners.insert(key.clone(), owner);
                Claim::Registered
            }
            Some(old) if takeover || old.relayed => {
                let old = old.shard;
                owners.insert(key.clone(), owner);
                Claim::TakenFrom(old)
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
        owners.insert(key.clone(), Owner::new(shard, true));
        true
    }

    /// What `key`, as `shard` has it, carries now.
    pub fn report(&self, key: &StreamKey, shard: usize, report: Report) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = owners.get_mut(key).filter(|o| o.shard == shard) {
            o.report = report;
        }
    }

    /// The SRT link of `key`'s publisher on `shard`.
    pub fn report_srt(&self, key: &StreamKey, shard: usize, link: SrtLink) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = owners.get_mut(key).filter(|o| o.shard == shard) {
            o.srt = Some(link);
        }
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

    /// Every live stream: its owner shard, whether it is relayed from
    /// another node, and what it carries; sorted by key.
    pub fn snapshot(&self) -> Vec<Listing> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = owners
            .iter()
            .map(|(k, o)| Listing {
                key: k.clone(),
                shard: o.shard,
                relayed: o.relayed,
                started_ms: o.started_ms,
                report: o.report.clone(),
                srt: o.srt,
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    pub fn len(&self) -> usize {
        self.owners.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_reach_the_listing_of_their_owner_only() {
        let d = Directory::default();
        let key = StreamKey::from("live/a");
        assert_eq!(d.claim(&key, 0, false), Claim::Registered);
        let report = Report {
            video_codec: "h264".into(),
            audio_codec: "aac".into(),
            bitrate_kbps: 2500,
        };
        // A shard that does not own the key (a late report) changes nothing.
        d.report(&key, 1, report.clone());
        assert_eq!(d.snapshot()[0].report, Report::default());
        d.report(&key, 0, report.clone());
        let l = &d.snapshot()[0];
        assert_eq!((l.shard, l.relayed, &l.report), (0, false, &report));
        assert!(l.started_ms > 0);
        // A takeover starts the listing over.
        assert_eq!(d.claim(&key, 1, true), Claim::TakenFrom(0));
        assert_eq!(d.snapshot()[0].report, Report::default());
        assert!(d.claim_relay(&StreamKey::from("live/b"), 1));
        assert!(d.snapshot()[1].relayed);
    }
}
