//! Arbitrary bytes into the AMF0 reader, and through avmplus markers the AMF3
//! one: values or an error, never a panic. Whatever decodes must re-encode to
//! bytes that decode to an equal value (NaN aside) and encode the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::protocol::amf0::{self, Amf0Reader, Amf0Value};
use tributary::protocol::amf3::Amf3Value;

const MAX_DEPTH: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut reader = Amf0Reader::new(data, MAX_DEPTH);
    while !reader.is_empty() {
        let before = reader.position();
        let Ok(value) = reader.read_value() else {
            return;
        };
        assert!(reader.position() > before, "a value consumed no input");

        let mut once = Vec::new();
        amf0::write_value(&mut once, &value);
        let mut again_reader = Amf0Reader::new(&once, MAX_DEPTH);
        let again = match again_reader.read_value() {
            Ok(v) => v,
            Err(e) => panic!("{value:?} encoded to {once:02x?}, which fails to decode: {e}"),
        };
        assert!(again_reader.is_empty(), "trailing bytes after {again:?}");
        // Byte comparison holds even with NaN: payloads are copied exactly.
        let mut twice = Vec::new();
        amf0::write_value(&mut twice, &again);
        assert_eq!(once, twice, "encoding is not a fixpoint for {value:?}");
        if exactly_encodable(&value) {
            assert_eq!(again, value);
        }
    }
});

/// Whether `encode` then `decode` must give back an equal value: no NaN
/// (never equal to itself), and no string the writer must promote to a long
/// string or cut short (lossy decoding can grow a string past its limit).
fn exactly_encodable(v: &Amf0Value) -> bool {
    let short = |s: &str| s.len() <= usize::from(u16::MAX);
    let props = |p: &[(String, Amf0Value)]| p.iter().all(|(k, v)| short(k) && exactly_encodable(v));
    match v {
        Amf0Value::Number(n) | Amf0Value::Date { millis: n, .. } => !n.is_nan(),
        Amf0Value::String(s) => short(s),
        Amf0Value::Object(p) | Amf0Value::EcmaArray(p) => props(p),
        Amf0Value::TypedObject {
            class_name,
            properties,
        } => short(class_name) && props(properties),
        Amf0Value::StrictArray(items) => items.iter().all(exactly_encodable),
        Amf0Value::Avmplus(v) => amf3_exactly_encodable(v),
        _ => true,
    }
}

fn amf3_exactly_encodable(v: &Amf3Value) -> bool {
    let members = |m: &[(String, Amf3Value)]| m.iter().all(|(_, v)| amf3_exactly_encodable(v));
    match v {
        Amf3Value::Double(n) | Amf3Value::Date(n) => !n.is_nan(),
        Amf3Value::VectorDouble { items, .. } => !items.iter().any(|n| n.is_nan()),
        Amf3Value::Array { assoc, dense } => {
            members(assoc) && dense.iter().all(amf3_exactly_encodable)
        }
        Amf3Value::Object {
            sealed, dynamic, ..
        } => members(sealed) && members(dynamic),
        Amf3Value::VectorObject { items, .. } => items.iter().all(amf3_exactly_encodable),
        Amf3Value::Dictionary { entries, .. } => entries
            .iter()
            .all(|(k, v)| amf3_exactly_encodable(k) && amf3_exactly_encodable(v)),
        _ => true,
    }
}
