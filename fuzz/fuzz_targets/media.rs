//! Arbitrary bytes into the media classifiers and into an FLV reader with a
//! small tag limit, split at an arbitrary point: they must return a value or
//! an error, never panic, and the reader must never hand out a tag larger
//! than its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::protocol::flv::FlvReader;
use tributary::protocol::media::{classify_audio, classify_video};

const MAX_TAG: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let _ = classify_video(data);
    let _ = classify_audio(data);

    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    // Half the inputs get a valid header so the fuzzer reaches tag parsing
    // without having to discover the signature first.
    let header: &[u8] = if split & 1 == 0 {
        b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"
    } else {
        b""
    };
    let mut reader = FlvReader::new(MAX_TAG);
    reader.push(header);
    let cut = usize::from(split >> 1).min(rest.len());
    for part in [&rest[..cut], &rest[cut..]] {
        reader.push(part);
        loop {
            match reader.next_tag() {
                Ok(Some(tag)) => {
                    assert!(tag.payload.len() <= MAX_TAG as usize);
                    // Tags are what the classifiers see in production.
                    let _ = classify_video(&tag.payload);
                    let _ = classify_audio(&tag.payload);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = reader.finish();
});
