//! Arbitrary bytes, cut into frames by a length prefix, into the joiner of
//! relayed messages (what a node takes from NATS) and on into the splice
//! that decides what the shard gets: messages or errors, never a panic,
//! never a message longer than the limit. A message the joiner accepts
//! must survive encode → join unchanged at any frame size. Within an
//! epoch the splice delivers strictly increasing sequence numbers, and
//! after a gap the first message it delivers is one a player can resume
//! from.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tributary::cluster::splice::{resumes, Splice};
use tributary::cluster::wire::{encode_media, epoch, Frame, Joiner};

const LIMIT: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut joiner = Joiner::new(LIMIT);
    let mut splice: Option<Splice> = None;
    let mut last_delivered: Option<u64> = None;
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let frame = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        let (seq, message) = match joiner.push(frame) {
            Ok(Some(Frame::Media { seq, message })) => (seq, message),
            Err(_) => {
                if let Some(s) = &mut splice {
                    s.lost();
                }
                continue;
            }
            Ok(_) => continue,
        };
        assert!(message.payload.len() as u32 <= LIMIT);
        let max_frame = 1024 + (seq % 4096) as usize;
        let mut again = Joiner::new(LIMIT);
        let mut out = None;
        encode_media(seq, &message, max_frame, |f| {
            out = again.push(f).expect("own frames join");
        });
        assert_eq!(out, Some(Frame::Media { seq, message: message.clone() }));

        // The first message stands for the snapshot's last one.
        let s = splice.get_or_insert_with(|| Splice::new(seq));
        let resyncing = s.is_resyncing();
        let step = s.on_media(seq, &message);
        if step.restart {
            last_delivered = None;
        }
        if step.deliver {
            if let Some(prev) = last_delivered {
                assert!(seq > prev, "delivered {seq} after {prev}");
                assert_eq!(epoch(seq), epoch(prev));
            }
            if resyncing || step.gap || step.restart {
                assert!(resumes(&message), "resumed at a message nobody can start from");
            }
            last_delivered = Some(seq);
        }
    }
});
