//! Arbitrary bytes as MPEG-TS into the SRT ingest's reader, in pieces
//! the first byte chooses: messages or nothing, never a panic; every
//! message it makes is audio or video with a payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::container::ts::TsIn;
use tributary::protocol::MessageType;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let piece = 188 * (usize::from(split % 8) + 1);
    let mut t = TsIn::new();
    let mut out = Vec::new();
    for chunk in rest.chunks(piece) {
        t.push(chunk, &mut out);
    }
    for m in &out {
        assert!(m.type_id == MessageType::AUDIO || m.type_id == MessageType::VIDEO);
        assert!(!m.payload.is_empty());
    }
});
