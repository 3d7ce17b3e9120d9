//! Arbitrary bytes, split at an arbitrary point, into a chunk decoder with
//! small limits: it must return messages or an error, never panic, and never
//! hand out a message larger than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::protocol::chunk::ChunkDecoder;
use tributary::protocol::Limits;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_message_len: 4096,
        max_chunk_size: 1024,
        max_chunk_streams: 8,
        ..Limits::default()
    };
    let mut dec = ChunkDecoder::new(limits);
    let cut = (split as usize).min(data.len());
    for part in [&data[..cut], &data[cut..]] {
        let mut input = part;
        loop {
            match dec.decode(&mut input) {
                Ok(Some(m)) => assert!(m.payload.len() <= 4096),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
