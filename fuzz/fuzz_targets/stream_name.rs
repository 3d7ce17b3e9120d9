//! Arbitrary text through the one stream-name rule, as an HTTP path and as
//! RTMP's connect app, tcUrl and name: a key or a refusal, never a panic.
//! Whatever is taken is one reading: its app is one segment, it parses back
//! to itself from its joined form, from its parts and from its
//! percent-encoded path, and holds nothing a second decoding could change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::stream::StreamKey;

fn check(key: &StreamKey) {
    let (app, name) = (key.app(), key.name());
    assert!(!app.is_empty() && !app.contains('/'), "{key:?}");
    assert!(!key.contains('%') && !key.contains('?'), "{key:?}");
    assert_eq!(StreamKey::parse(key).as_ref(), Ok(key));
    assert_eq!(StreamKey::new(app, name).as_ref(), Ok(key));
    let encoded: String = key
        .bytes()
        .map(|b| match b {
            b'/' => "/".to_owned(),
            b => format!("%{b:02X}"),
        })
        .collect();
    assert_eq!(StreamKey::from_url_path(&encoded).as_ref(), Ok(key));
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = StreamKey::from_url_path(&text) {
        check(&key);
    }
    let mut parts = text.splitn(3, '\n');
    let (app, tc_url, name) = (
        parts.next().unwrap_or(""),
        parts.next(),
        parts.next().unwrap_or(""),
    );
    if let Ok((key, _query)) = StreamKey::from_rtmp(app, tc_url, name) {
        check(&key);
    }
});
