//! Arbitrary bytes, cut into frames by a length prefix, into the joiner of
//! relayed messages (what a node takes from NATS): messages or errors,
//! never a panic, and never a message longer than the limit. A message the
//! joiner accepts must survive encode → join unchanged at any frame size.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tributary::cluster::wire::{encode_media, Frame, Joiner};

const LIMIT: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut joiner = Joiner::new(LIMIT);
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let frame = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        let Ok(Some(Frame::Media { seq, message })) = joiner.push(frame) else {
            continue;
        };
        assert!(message.payload.len() as u32 <= LIMIT);
        let max_frame = 1024 + (seq % 4096) as usize;
        let mut again = Joiner::new(LIMIT);
        let mut out = None;
        encode_media(seq, &message, max_frame, |f| {
            out = again.push(f).expect("own frames join");
        });
        assert_eq!(out, Some(Frame::Media { seq, message }));
    }
});
