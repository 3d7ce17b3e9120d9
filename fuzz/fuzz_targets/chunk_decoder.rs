//! Arbitrary bytes, split at points the input chooses (its first 4 bytes),
//! into a chunk decoder with small limits: it must return messages or an
//! error, never panic, and never hand out a message larger than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::protocol::chunk::ChunkDecoder;
use tributary::protocol::Limits;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (cuts, data) = data.split_at(4);
    let limits = Limits {
        max_message_len: 4096,
        max_chunk_size: 1024,
        max_chunk_streams: 8,
        ..Limits::default()
    };
    let mut dec = ChunkDecoder::new(limits);
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        // Pieces of 1..=256 bytes, sizes from the cut bytes in turn.
        let n = (usize::from(cuts[i % 4]) + 1).min(rest.len());
        i += 1;
        let mut input = &rest[..n];
        rest = &rest[n..];
        loop {
            match dec.decode(&mut input) {
                Ok(Some(m)) => assert!(m.payload.len() <= 4096),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
