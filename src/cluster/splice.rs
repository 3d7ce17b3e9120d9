//! Splicing a relayed stream: the snapshot a node fetched from the owner
//! ends at sequence number `last`; live messages arrive on the stream's
//! NATS subject, possibly from before `last`, with gaps (NATS drops under
//! load), duplicates, or a new epoch (a new publisher on the owner). The
//! splice decides, per message, whether the shard gets it. Pure: no I/O,
//! no clock; the relay task feeds it and acts on the answer.
//!
//! Rules:
//! - Messages the snapshot already holds (`seq <= last`) are skipped.
//! - A gap (a sequence number skipped, a frame that would not join, a
//!   message the shard's queue could not take) waits for a message a
//!   player can resume from: a keyframe, a sequence header or metadata.
//! - A jump of more than [`MAX_SEQ_JUMP`] is not a gap NATS could make: the
//!   message is ignored.
//! - A new epoch restarts the stream on the shard (players start over on
//!   the new publisher) and waits for a resumable message.

use crate::protocol::media::{classify_audio, classify_video, PacketKind};
use crate::protocol::{MessageType, RawMessage};

use super::wire;

/// The largest forward jump in sequence numbers taken as a gap.
pub const MAX_SEQ_JUMP: u64 = 1 << 20;

/// What to do with one relayed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// A new publisher on the owner: restart the stream on the shard first.
    pub restart: bool,
    /// Messages were lost before this one.
    pub gap: bool,
    /// Give the message to the shard.
    pub deliver: bool,
}

#[derive(Debug, Clone)]
pub struct Splice {
    epoch: u64,
    /// The next sequence number; None once the last possible one was seen.
    expected: Option<u64>,
    resync: bool,
}

impl Splice {
    /// After a snapshot that holds everything up to sequence `last`.
    pub fn new(last: u64) -> Self {
        Self {
            epoch: wire::epoch(last),
            expected: last.checked_add(1),
            resync: false,
        }
    }

    /// A live message with sequence number `seq`.
    pub fn on_media(&mut self, seq: u64, message: &RawMessage) -> Step {
        let mut step = Step {
            restart: false,
            gap: false,
            deliver: false,
        };
        if wire::epoch(seq) != self.epoch {
            self.epoch = wire::epoch(seq);
            self.expected = Some(seq);
            self.resync = true;
            step.restart = true;
        }
        let Some(expected) = self.expected.filter(|e| seq >= *e) else {
            return step;
        };
        if seq - expected > MAX_SEQ_JUMP {
            step.gap = true;
            return step;
        }
        if seq > expected {
            step.gap = true;
            self.resync = true;
        }
        self.expected = seq.checked_add(1);
        if self.resync {
            if !resumes(message) {
                return step;
            }
            self.resync = false;
        }
        step.deliver = true;
        step
    }

    /// Something was lost outside the sequence (a frame that would not
    /// join, a delivery the shard refused): wait for a resumable message.
    pub fn lost(&mut self) {
        self.resync = true;
    }

    /// Waiting for a resumable message.
    pub fn is_resyncing(&self) -> bool {
        self.resync
    }
}

/// A relayed stream may resume after a gap here: a keyframe, a sequence
/// header or metadata.
pub fn resumes(m: &RawMessage) -> bool {
    match m.type_id {
        MessageType::VIDEO => classify_video(&m.payload)
            .map(|i| i.keyframe || i.kind == PacketKind::SequenceHeader)
            .unwrap_or(false),
        MessageType::AUDIO => classify_audio(&m.payload)
            .map(|i| i.kind == PacketKind::SequenceHeader)
            .unwrap_or(false),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(keyframe: bool) -> RawMessage {
        RawMessage {
            csid: 6,
            timestamp: 0,
            type_id: MessageType::VIDEO,
            stream_id: 1,
            payload: Bytes::from(vec![if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0]),
        }
    }

    fn delivered(s: &mut Splice, seq: u64, keyframe: bool) -> bool {
        s.on_media(seq, &video(keyframe)).deliver
    }

    #[test]
    fn what_the_snapshot_holds_is_skipped_then_live_media_follows() {
        let base = wire::first_seq(1, 1);
        let mut s = Splice::new(base + 10);
        assert!(!delivered(&mut s, base + 9, false));
        assert!(!delivered(&mut s, base + 10, false));
        assert!(delivered(&mut s, base + 11, false));
        assert!(!delivered(&mut s, base + 11, false), "a duplicate");
        assert!(delivered(&mut s, base + 12, false));
    }

    #[test]
    fn a_gap_waits_for_a_keyframe() {
        let base = wire::first_seq(1, 1);
        let mut s = Splice::new(base);
        let step = s.on_media(base + 3, &video(false));
        assert!(step.gap && !step.deliver);
        assert!(!delivered(&mut s, base + 4, false));
        assert!(delivered(&mut s, base + 5, true));
        assert!(delivered(&mut s, base + 6, false));
        // A loss outside the sequence does the same.
        s.lost();
        assert!(!delivered(&mut s, base + 7, false));
        assert!(delivered(&mut s, base + 8, true));
    }

    #[test]
    fn an_absurd_jump_is_ignored_and_a_new_epoch_restarts() {
        let base = wire::first_seq(1, 1);
        let mut s = Splice::new(base);
        let step = s.on_media(base + MAX_SEQ_JUMP + 2, &video(true));
        assert!(step.gap && !step.deliver);
        assert!(delivered(&mut s, base + 1, false), "the stream goes on");
        let next = wire::first_seq(2, 2);
        assert_ne!(wire::epoch(next), wire::epoch(base));
        let step = s.on_media(next, &video(false));
        assert!(
            step.restart && !step.deliver,
            "restart, then wait for a keyframe"
        );
        let step = s.on_media(next + 1, &video(true));
        assert!(!step.restart && step.deliver);
    }

    #[test]
    fn the_last_sequence_number_is_delivered_once() {
        let mut s = Splice::new(u64::MAX - 1);
        assert!(delivered(&mut s, u64::MAX, false));
        assert!(!delivered(&mut s, u64::MAX, false), "found by fuzzing");
    }
}
