//! AMF3: the values Flash-era clients put after an avmplus marker (0x11) in
//! AMF3 command and data messages (RTMP types 17 and 15).
//!
//! Owns `Amf3Value`, its reader with the string and trait reference tables,
//! and its writer. It must never resolve object references (a one-byte
//! reference can name a huge object again and again: they stay indices),
//! never copy a referenced string without charging the reader's text budget,
//! and never preallocate from a count the remaining input could not hold.
//!
//! Decoded: every marker of the January 2013 spec, vectors (0x0D-0x10) and
//! dictionaries (0x11) into dedicated variants. Refused with an error:
//! externalizable objects, whose body only their class knows how to read.
//! The writer emits everything inline and no references, so it needs no
//! tables.
//!
//! Every AMF3 type's decoder and encoder, with the reference tables, and
//! their round-trip tests inline.

use bytes::BufMut;

pub use crate::protocol::amf0::AmfError;
use crate::protocol::amf0::{
    enter, truncate_at_char, ByteCursor, TextBudget, MAX_DEPTH_CEILING, PREALLOC_LIMIT,
};

const UNDEFINED: u8 = 0x00;
const NULL: u8 = 0x01;
const FALSE: u8 = 0x02;
const TRUE: u8 = 0x03;
const INTEGER: u8 = 0x04;
const DOUBLE: u8 = 0x05;
const STRING: u8 = 0x06;
const XML_DOCUMENT: u8 = 0x07;
const DATE: u8 = 0x08;
const ARRAY: u8 = 0x09;
const OBJECT: u8 = 0x0A;
const XML: u8 = 0x0B;
const BYTE_ARRAY: u8 = 0x0C;
const VECTOR_INT: u8 = 0x0D;
const VECTOR_UINT: u8 = 0x0E;
const VECTOR_DOUBLE: u8 = 0x0F;
const VECTOR_OBJECT: u8 = 0x10;
const DICTIONARY: u8 = 0x11;

/// Smallest value of the 29-bit signed integer type.
pub const INTEGER_MIN: i32 = -(1 << 28);
/// Largest value of the 29-bit signed integer type.
pub const INTEGER_MAX: i32 = (1 << 28) - 1;

/// Largest length, count or reference index a U29 with a flag bit holds.
const U28_MAX: usize = (1 << 28) - 1;
/// Largest sealed-member count a U29O-traits holds (it has four flag bits).
const SEALED_MAX: usize = (1 << 25) - 1;

/// An AMF3 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf3Value {
    Undefined,
    Null,
    Boolean(bool),
    /// A 29-bit signed integer. The writer sends values outside
    /// [`INTEGER_MIN`]..=[`INTEGER_MAX`] as a `Double`, as Flash does.
    Integer(i32),
    Double(f64),
    String(String),
    /// 0x07, the legacy `flash.xml.XMLDocument`.
    XmlDocument(String),
    /// Milliseconds since the epoch, UTC.
    Date(f64),
    /// Associative part (non-empty keys; the writer skips empty ones, which
    /// the format uses as the terminator) and dense part.
    Array {
        assoc: Vec<(String, Amf3Value)>,
        dense: Vec<Amf3Value>,
    },
    /// `class_name` is `None` for anonymous objects (an empty class name on
    /// the wire). Dynamic members with empty names cannot be written.
    Object {
        class_name: Option<String>,
        sealed: Vec<(String, Amf3Value)>,
        dynamic: Vec<(String, Amf3Value)>,
    },
    /// 0x0B, E4X `XML`.
    Xml(String),
    ByteArray(Vec<u8>),
    /// A reference to an earlier date, array, object, XML, byte array,
    /// vector or dictionary: the index in the object table, not resolved.
    /// The writer sends it with the object marker.
    Reference(u32),
    VectorInt {
        fixed: bool,
        items: Vec<i32>,
    },
    VectorUint {
        fixed: bool,
        items: Vec<u32>,
    },
    VectorDouble {
        fixed: bool,
        items: Vec<f64>,
    },
    /// `type_name` is the element class, `"*"` for untyped.
    VectorObject {
        fixed: bool,
        type_name: String,
        items: Vec<Amf3Value>,
    },
    Dictionary {
        weak_keys: bool,
        entries: Vec<(Amf3Value, Amf3Value)>,
    },
}

impl Amf3Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer or a double.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Self::Integer(i) => Some(f64::from(*i)),
            Self::Double(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The first member named `key`: an object's sealed members, then its
    /// dynamic ones; an array's associative part.
    pub fn property(&self, key: &str) -> Option<&Amf3Value> {
        match self {
            Self::Object {
                sealed, dynamic, ..
            } => find_member(sealed, key).or_else(|| find_member(dynamic, key)),
            Self::Array { assoc, .. } => find_member(assoc, key),
            _ => None,
        }
    }
}

fn find_member<'v>(members: &'v [(String, Amf3Value)], key: &str) -> Option<&'v Amf3Value> {
    members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Reads AMF3 values one at a time from a byte slice. String and trait
/// tables last as long as the reader, as the spec has them last for one
/// stream of values; strings materialized through them (references, class
/// and member names) are charged against a budget of four times the input
/// plus 4 KiB, past which reading fails with `TooLarge`.
#[derive(Debug)]
pub struct Amf3Reader<'a> {
    cur: ByteCursor<'a>,
    tables: Amf3Tables,
    budget: TextBudget,
    max_depth: usize,
}

impl<'a> Amf3Reader<'a> {
    /// `max_depth` bounds how deeply arrays, objects, object vectors and
    /// dictionaries nest; it is capped at [`MAX_DEPTH_CEILING`].
    pub fn new(input: &'a [u8], max_depth: usize) -> Self {
        Self {
            cur: ByteCursor::new(input),
            tables: Amf3Tables::default(),
            budget: TextBudget::for_input(input.len()),
            max_depth: max_depth.min(MAX_DEPTH_CEILING),
        }
    }

    /// Decodes the next value. After an error, stop reading.
    pub fn read_value(&mut self) -> Result<Amf3Value, AmfError> {
        Amf3Decoder {
            cur: &mut self.cur,
            tables: &mut self.tables,
            budget: &mut self.budget,
            max_depth: self.max_depth,
        }
        .value(0)
    }

    /// Whether all input has been consumed.
    pub fn is_empty(&self) -> bool {
        self.cur.remaining() == 0
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.cur.position()
    }
}

/// Where a string's bytes sit in the input. Tables hold these rather than
/// copies, so a table costs the same whatever the strings' lengths.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn is_empty(self) -> bool {
        self.start == self.end
    }
}

#[derive(Debug)]
struct Traits {
    class_name: Span,
    sealed: Vec<Span>,
    dynamic: bool,
}

/// The reference tables of one AMF3 context. Objects are not tabled: their
/// references stay indices.
#[derive(Debug, Default)]
pub(crate) struct Amf3Tables {
    strings: Vec<Span>,
    traits: Vec<Traits>,
}

/// A header's low bit: an inline value with the rest as a length or count,
/// or a reference with the rest as the index.
enum Header {
    Inline(u32),
    Reference(u32),
}

/// One AMF3 decoding pass over a cursor it borrows, so an AMF0 reader can
/// hand over its own cursor and budget at an avmplus marker.
pub(crate) struct Amf3Decoder<'r, 'a> {
    pub(crate) cur: &'r mut ByteCursor<'a>,
    pub(crate) tables: &'r mut Amf3Tables,
    pub(crate) budget: &'r mut TextBudget,
    pub(crate) max_depth: usize,
}

impl Amf3Decoder<'_, '_> {
    /// Dispatch only: every arm is a call in tail position, so the frame
    /// that recursion repeats stays small (debug builds give each arm's
    /// temporaries their own stack slots).
    pub(crate) fn value(&mut self, depth: usize) -> Result<Amf3Value, AmfError> {
        let marker = self.cur.u8()?;
        match marker {
            ARRAY => self.array(depth),
            OBJECT => self.object(depth),
            VECTOR_OBJECT => self.object_vector(depth),
            DICTIONARY => self.dictionary(depth),
            _ => self.leaf(marker),
        }
    }

    /// A value that holds no other values.
    #[inline(never)]
    fn leaf(&mut self, marker: u8) -> Result<Amf3Value, AmfError> {
        Ok(match marker {
            UNDEFINED => Amf3Value::Undefined,
            NULL => Amf3Value::Null,
            FALSE => Amf3Value::Boolean(false),
            TRUE => Amf3Value::Boolean(true),
            INTEGER => Amf3Value::Integer(from_u29(self.u29()?)),
            DOUBLE => Amf3Value::Double(self.cur.f64()?),
            STRING => Amf3Value::String(self.string()?),
            XML_DOCUMENT | XML => match self.header()? {
                Header::Reference(index) => Amf3Value::Reference(index),
                Header::Inline(len) => {
                    let bytes = self.cur.take(len as usize)?;
                    let text = self.budget.text(bytes)?;
                    if marker == XML {
                        Amf3Value::Xml(text)
                    } else {
                        Amf3Value::XmlDocument(text)
                    }
                }
            },
            DATE => match self.header()? {
                Header::Reference(index) => Amf3Value::Reference(index),
                // The rest of the header carries nothing for a date.
                Header::Inline(_) => Amf3Value::Date(self.cur.f64()?),
            },
            BYTE_ARRAY => match self.header()? {
                Header::Reference(index) => Amf3Value::Reference(index),
                Header::Inline(len) => Amf3Value::ByteArray(self.cur.take(len as usize)?.to_vec()),
            },
            VECTOR_INT => self.number_vector(i32::from_be_bytes, |fixed, items| {
                Amf3Value::VectorInt { fixed, items }
            })?,
            VECTOR_UINT => self.number_vector(u32::from_be_bytes, |fixed, items| {
                Amf3Value::VectorUint { fixed, items }
            })?,
            VECTOR_DOUBLE => self.number_vector(f64::from_be_bytes, |fixed, items| {
                Amf3Value::VectorDouble { fixed, items }
            })?,
            other => return Err(AmfError::UnknownMarker(other)),
        })
    }

    fn object_vector(&mut self, depth: usize) -> Result<Amf3Value, AmfError> {
        let count = match self.header()? {
            Header::Reference(index) => return Ok(Amf3Value::Reference(index)),
            Header::Inline(count) => count,
        };
        let fixed = self.cur.u8()? != 0;
        let type_name = self.string()?;
        let depth = enter(depth, self.max_depth)?;
        let count = self.count(count, 1)?;
        let mut items = Vec::with_capacity(count.min(PREALLOC_LIMIT));
        for _ in 0..count {
            items.push(self.value(depth)?);
        }
        Ok(Amf3Value::VectorObject {
            fixed,
            type_name,
            items,
        })
    }

    fn dictionary(&mut self, depth: usize) -> Result<Amf3Value, AmfError> {
        let count = match self.header()? {
            Header::Reference(index) => return Ok(Amf3Value::Reference(index)),
            Header::Inline(count) => count,
        };
        let weak_keys = self.cur.u8()? != 0;
        let depth = enter(depth, self.max_depth)?;
        let count = self.count(count, 2)?;
        let mut entries = Vec::with_capacity(count.min(PREALLOC_LIMIT));
        for _ in 0..count {
            let key = self.value(depth)?;
            let value = self.value(depth)?;
            entries.push((key, value));
        }
        Ok(Amf3Value::Dictionary { weak_keys, entries })
    }

    fn array(&mut self, depth: usize) -> Result<Amf3Value, AmfError> {
        let dense_count = match self.header()? {
            Header::Reference(index) => return Ok(Amf3Value::Reference(index)),
            Header::Inline(count) => count,
        };
        let depth = enter(depth, self.max_depth)?;
        let mut assoc = Vec::new();
        loop {
            let key = self.string()?;
            if key.is_empty() {
                break;
            }
            let value = self.value(depth)?;
            assoc.push((key, value));
        }
        let count = self.count(dense_count, 1)?;
        let mut dense = Vec::with_capacity(count.min(PREALLOC_LIMIT));
        for _ in 0..count {
            dense.push(self.value(depth)?);
        }
        Ok(Amf3Value::Array { assoc, dense })
    }

    fn object(&mut self, depth: usize) -> Result<Amf3Value, AmfError> {
        let header = self.u29()?;
        if header & 0b1 == 0 {
            return Ok(Amf3Value::Reference(header >> 1));
        }
        let depth = enter(depth, self.max_depth)?;
        let traits_index = self.traits(header)?;
        let (class_span, sealed_count, dynamic) = match self.tables.traits.get(traits_index) {
            Some(t) => (t.class_name, t.sealed.len(), t.dynamic),
            None => {
                return Err(AmfError::BadReference {
                    table: "trait",
                    index: traits_index as u32,
                })
            }
        };
        let class_name = if class_span.is_empty() {
            None
        } else {
            Some(self.materialize(class_span)?)
        };
        // One value byte per sealed member at least: a referenced trait
        // with many members cannot make a short object allocate for them.
        let sealed_count = self.count(sealed_count as u32, 1)?;
        let mut sealed = Vec::with_capacity(sealed_count.min(PREALLOC_LIMIT));
        for i in 0..sealed_count {
            // Looked up afresh each time: reading a member value may grow
            // the trait table, and cloning the member list per object would
            // cost memory a peer controls.
            let span = self
                .tables
                .traits
                .get(traits_index)
                .and_then(|t| t.sealed.get(i))
                .copied()
                .unwrap_or_default();
            let name = self.materialize(span)?;
            let value = self.value(depth)?;
            sealed.push((name, value));
        }
        let mut dynamic_members = Vec::new();
        if dynamic {
            loop {
                let name = self.string()?;
                if name.is_empty() {
                    break;
                }
                let value = self.value(depth)?;
                dynamic_members.push((name, value));
            }
        }
        Ok(Amf3Value::Object {
            class_name,
            sealed,
            dynamic: dynamic_members,
        })
    }

    /// The trait table index of an object's traits: a reference checked
    /// against the table, or inline traits read and tabled.
    #[inline(never)]
    fn traits(&mut self, header: u32) -> Result<usize, AmfError> {
        if header & 0b10 == 0 {
            let index = header >> 2;
            if index as usize >= self.tables.traits.len() {
                return Err(AmfError::BadReference {
                    table: "trait",
                    index,
                });
            }
            return Ok(index as usize);
        }
        if header & 0b100 != 0 {
            let class_name = self.string()?;
            return Err(AmfError::Externalizable(class_name));
        }
        let dynamic = header & 0b1000 != 0;
        let class_name = self.string_span()?;
        // Each member name takes at least one byte.
        let count = self.count(header >> 4, 1)?;
        let mut sealed = Vec::with_capacity(count.min(PREALLOC_LIMIT));
        for _ in 0..count {
            sealed.push(self.string_span()?);
        }
        self.tables.traits.push(Traits {
            class_name,
            sealed,
            dynamic,
        });
        Ok(self.tables.traits.len() - 1)
    }

    /// Vector.<int>, Vector.<uint> or Vector.<Number>: fixed-size big-endian
    /// items, all present in the input before anything is allocated.
    fn number_vector<const N: usize, T>(
        &mut self,
        item: fn([u8; N]) -> T,
        make: fn(bool, Vec<T>) -> Amf3Value,
    ) -> Result<Amf3Value, AmfError> {
        let count = match self.header()? {
            Header::Reference(index) => return Ok(Amf3Value::Reference(index)),
            Header::Inline(count) => count as usize,
        };
        let fixed = self.cur.u8()? != 0;
        let len = count.checked_mul(N).ok_or(AmfError::UnexpectedEnd)?;
        let bytes = self.cur.take(len)?;
        let items = bytes
            .chunks_exact(N)
            .filter_map(|chunk| <[u8; N]>::try_from(chunk).ok())
            .map(item)
            .collect();
        Ok(make(fixed, items))
    }

    /// A wire count checked against the input still unread, given the least
    /// bytes each element takes.
    fn count(&self, count: u32, min_bytes_each: usize) -> Result<usize, AmfError> {
        let count = count as usize;
        if count.saturating_mul(min_bytes_each) > self.cur.remaining() {
            return Err(AmfError::UnexpectedEnd);
        }
        Ok(count)
    }

    /// A variable-length unsigned 29-bit integer: up to three bytes of seven
    /// bits with a continuation flag, then a full fourth byte.
    fn u29(&mut self) -> Result<u32, AmfError> {
        let mut v = 0u32;
        for _ in 0..3 {
            let b = self.cur.u8()?;
            v = (v << 7) | u32::from(b & 0x7F);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Ok((v << 8) | u32::from(self.cur.u8()?))
    }

    fn header(&mut self) -> Result<Header, AmfError> {
        let v = self.u29()?;
        Ok(if v & 1 == 0 {
            Header::Reference(v >> 1)
        } else {
            Header::Inline(v >> 1)
        })
    }

    /// A UTF-8-vr string's place in the input: inline (and then tabled,
    /// unless empty, as the spec says) or by reference to the table.
    fn string_span(&mut self) -> Result<Span, AmfError> {
        match self.header()? {
            Header::Reference(index) => {
                self.tables
                    .strings
                    .get(index as usize)
                    .copied()
                    .ok_or(AmfError::BadReference {
                        table: "string",
                        index,
                    })
            }
            Header::Inline(0) => Ok(Span::default()),
            Header::Inline(len) => {
                let start = self.cur.position();
                self.cur.take(len as usize)?;
                let span = Span {
                    start,
                    end: self.cur.position(),
                };
                self.tables.strings.push(span);
                Ok(span)
            }
        }
    }

    fn string(&mut self) -> Result<String, AmfError> {
        let span = self.string_span()?;
        self.materialize(span)
    }

    fn materialize(&mut self, span: Span) -> Result<String, AmfError> {
        let bytes = self
            .cur
            .input()
            .get(span.start..span.end)
            .unwrap_or_default();
        self.budget.text(bytes)
    }
}

/// Sign-extends a 29-bit integer.
fn from_u29(v: u32) -> i32 {
    ((v << 3) as i32) >> 3
}

/// Appends `v` to `out`, which must be able to grow (`BytesMut`, `Vec<u8>`).
///
/// Everything is written inline. What the format cannot express is cut short
/// rather than written wrong: strings, byte arrays and lists past 2^28 - 1
/// bytes or items, more than 2^25 - 1 sealed members; a `Reference` index
/// keeps its low 28 bits. Empty keys in an array's associative part or an
/// object's dynamic members are skipped (the empty key ends the list).
pub fn write_value<B: BufMut>(out: &mut B, v: &Amf3Value) {
    match v {
        Amf3Value::Undefined => out.put_u8(UNDEFINED),
        Amf3Value::Null => out.put_u8(NULL),
        Amf3Value::Boolean(false) => out.put_u8(FALSE),
        Amf3Value::Boolean(true) => out.put_u8(TRUE),
        Amf3Value::Integer(i) => {
            if (INTEGER_MIN..=INTEGER_MAX).contains(i) {
                out.put_u8(INTEGER);
                put_u29(out, *i as u32);
            } else {
                out.put_u8(DOUBLE);
                out.put_f64(f64::from(*i));
            }
        }
        Amf3Value::Double(d) => {
            out.put_u8(DOUBLE);
            out.put_f64(*d);
        }
        Amf3Value::String(s) => {
            out.put_u8(STRING);
            put_utf8_vr(out, s);
        }
        Amf3Value::XmlDocument(s) => {
            out.put_u8(XML_DOCUMENT);
            put_utf8_vr(out, s);
        }
        Amf3Value::Xml(s) => {
            out.put_u8(XML);
            put_utf8_vr(out, s);
        }
        Amf3Value::Date(millis) => {
            out.put_u8(DATE);
            put_inline_len(out, 0);
            out.put_f64(*millis);
        }
        Amf3Value::Array { assoc, dense } => {
            let dense = &dense[..dense.len().min(U28_MAX)];
            out.put_u8(ARRAY);
            put_inline_len(out, dense.len());
            put_members(out, assoc);
            for item in dense {
                write_value(out, item);
            }
        }
        Amf3Value::Object {
            class_name,
            sealed,
            dynamic,
        } => {
            let sealed = &sealed[..sealed.len().min(SEALED_MAX)];
            // Anonymous objects are dynamic in ActionScript.
            let is_dynamic = class_name.is_none() || !dynamic.is_empty();
            out.put_u8(OBJECT);
            put_u29(
                out,
                (sealed.len() as u32) << 4 | u32::from(is_dynamic) << 3 | 0b011,
            );
            put_utf8_vr(out, class_name.as_deref().unwrap_or(""));
            for (name, _) in sealed {
                put_utf8_vr(out, name);
            }
            for (_, value) in sealed {
                write_value(out, value);
            }
            if is_dynamic {
                put_members(out, dynamic);
            }
        }
        Amf3Value::ByteArray(bytes) => {
            let bytes = &bytes[..bytes.len().min(U28_MAX)];
            out.put_u8(BYTE_ARRAY);
            put_inline_len(out, bytes.len());
            out.put_slice(bytes);
        }
        Amf3Value::Reference(index) => {
            out.put_u8(OBJECT);
            put_u29(out, (index & U28_MAX as u32) << 1);
        }
        Amf3Value::VectorInt { fixed, items } => {
            let items = &items[..items.len().min(U28_MAX)];
            put_vector_header(out, VECTOR_INT, items.len(), *fixed);
            items.iter().for_each(|i| out.put_i32(*i));
        }
        Amf3Value::VectorUint { fixed, items } => {
            let items = &items[..items.len().min(U28_MAX)];
            put_vector_header(out, VECTOR_UINT, items.len(), *fixed);
            items.iter().for_each(|i| out.put_u32(*i));
        }
        Amf3Value::VectorDouble { fixed, items } => {
            let items = &items[..items.len().min(U28_MAX)];
            put_vector_header(out, VECTOR_DOUBLE, items.len(), *fixed);
            items.iter().for_each(|d| out.put_f64(*d));
        }
        Amf3Value::VectorObject {
            fixed,
            type_name,
            items,
        } => {
            let items = &items[..items.len().min(U28_MAX)];
            put_vector_header(out, VECTOR_OBJECT, items.len(), *fixed);
            put_utf8_vr(out, type_name);
            for item in items {
                write_value(out, item);
            }
        }
        Amf3Value::Dictionary { weak_keys, entries } => {
            let entries = &entries[..entries.len().min(U28_MAX)];
            put_vector_header(out, DICTIONARY, entries.len(), *weak_keys);
            for (key, value) in entries {
                write_value(out, key);
                write_value(out, value);
            }
        }
    }
}

/// Name/value pairs up to the empty name that ends them.
fn put_members<B: BufMut>(out: &mut B, members: &[(String, Amf3Value)]) {
    for (name, value) in members.iter().filter(|(name, _)| !name.is_empty()) {
        put_utf8_vr(out, name);
        write_value(out, value);
    }
    put_inline_len(out, 0);
}

/// Marker, inline count and the flag byte vectors and dictionaries share.
fn put_vector_header<B: BufMut>(out: &mut B, marker: u8, count: usize, flag: bool) {
    out.put_u8(marker);
    put_inline_len(out, count);
    out.put_u8(u8::from(flag));
}

fn put_utf8_vr<B: BufMut>(out: &mut B, s: &str) {
    let s = truncate_at_char(s, U28_MAX);
    put_inline_len(out, s.len());
    out.put_slice(s.as_bytes());
}

/// The header of an inline value: its length or count and the inline flag.
fn put_inline_len<B: BufMut>(out: &mut B, len: usize) {
    put_u29(out, (len.min(U28_MAX) as u32) << 1 | 1);
}

/// Writes the low 29 bits of `v` in the shortest U29 form.
fn put_u29<B: BufMut>(out: &mut B, v: u32) {
    let v = v & 0x1FFF_FFFF;
    if v < 0x80 {
        out.put_u8(v as u8);
    } else if v < 0x4000 {
        out.put_slice(&[(v >> 7) as u8 | 0x80, (v & 0x7F) as u8]);
    } else if v < 0x20_0000 {
        out.put_slice(&[
            (v >> 14) as u8 | 0x80,
            (v >> 7) as u8 | 0x80,
            (v & 0x7F) as u8,
        ]);
    } else {
        out.put_slice(&[
            (v >> 22) as u8 | 0x80,
            (v >> 15) as u8 | 0x80,
            (v >> 8) as u8 | 0x80,
            v as u8,
        ]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_one(input: &[u8]) -> Result<Amf3Value, AmfError> {
        let mut r = Amf3Reader::new(input, 32);
        let v = r.read_value()?;
        assert!(r.is_empty(), "trailing bytes after {v:?}");
        Ok(v)
    }

    fn decode_all(input: &[u8]) -> Result<Vec<Amf3Value>, AmfError> {
        let mut r = Amf3Reader::new(input, 32);
        let mut out = Vec::new();
        while !r.is_empty() {
            out.push(r.read_value()?);
        }
        Ok(out)
    }

    fn encode(v: &Amf3Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&mut out, v);
        out
    }

    fn both_ways(bytes: &[u8], v: Amf3Value) {
        assert_eq!(decode_one(bytes), Ok(v.clone()), "decoding {bytes:02x?}");
        assert_eq!(encode(&v), bytes, "encoding {v:?}");
    }

    fn s(text: &str) -> Amf3Value {
        Amf3Value::String(text.into())
    }

    #[test]
    fn u29_integer_forms() {
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (0x7F, &[0x7F]),
            (0x80, &[0x81, 0x00]),
            (0x3FFF, &[0xFF, 0x7F]),
            (0x4000, &[0x81, 0x80, 0x00]),
            (0x1F_FFFF, &[0xFF, 0xFF, 0x7F]),
            (0x20_0000, &[0x80, 0xC0, 0x80, 0x00]),
            (INTEGER_MAX, &[0xBF, 0xFF, 0xFF, 0xFF]),
            (-1, &[0xFF, 0xFF, 0xFF, 0xFF]),
            (-2, &[0xFF, 0xFF, 0xFF, 0xFE]),
            (-256, &[0xFF, 0xFF, 0xFF, 0x00]),
            (INTEGER_MIN, &[0xC0, 0x80, 0x80, 0x00]),
        ];
        for &(n, form) in cases {
            both_ways(&[&[INTEGER][..], form].concat(), Amf3Value::Integer(n));
        }
        // A reader accepts non-shortest forms too.
        assert_eq!(decode_one(&[0x04, 0x80, 0x01]), Ok(Amf3Value::Integer(1)));
    }

    #[test]
    fn integers_outside_29_bits_are_written_as_doubles() {
        assert_eq!(
            encode(&Amf3Value::Integer(1 << 28)),
            [0x05, 0x41, 0xB0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            decode_one(&encode(&Amf3Value::Integer(i32::MIN))),
            Ok(Amf3Value::Double(f64::from(i32::MIN)))
        );
    }

    #[test]
    fn scalars() {
        both_ways(&[0x00], Amf3Value::Undefined);
        both_ways(&[0x01], Amf3Value::Null);
        both_ways(&[0x02], Amf3Value::Boolean(false));
        both_ways(&[0x03], Amf3Value::Boolean(true));
        both_ways(
            &[0x05, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0],
            Amf3Value::Double(1.5),
        );
        both_ways(&[0x06, 0x01], s(""));
        both_ways(&[0x06, 0x07, b'a', b'b', b'c'], s("abc"));
        both_ways(
            &[0x07, 0x09, b'<', b'a', b'/', b'>'],
            Amf3Value::XmlDocument("<a/>".into()),
        );
        both_ways(
            &[0x0B, 0x09, b'<', b'b', b'/', b'>'],
            Amf3Value::Xml("<b/>".into()),
        );
        both_ways(
            &[0x08, 0x01, 0x42, 0x77, 0x48, 0x76, 0xE8, 0x00, 0x00, 0x00],
            Amf3Value::Date(1_600_000_000_000.0),
        );
        both_ways(&[0x0C, 0x07, 1, 2, 3], Amf3Value::ByteArray(vec![1, 2, 3]));
        assert_eq!(decode_one(&[0x06, 0x05, b'\xE9', b't']), Ok(s("\u{FFFD}t")));
    }

    #[test]
    fn long_string_length_in_two_bytes() {
        let text = "z".repeat(200);
        // 200 << 1 | 1 = 401 = 0b11_0010001
        let bytes = encode(&s(&text));
        assert_eq!(bytes[..3], [0x06, 0x83, 0x11]);
        assert_eq!(decode_one(&bytes), Ok(s(&text)));
    }

    #[test]
    fn arrays() {
        both_ways(
            &[0x09, 0x05, 0x01, 0x04, 0x01, 0x06, 0x03, b'x'],
            Amf3Value::Array {
                assoc: vec![],
                dense: vec![Amf3Value::Integer(1), s("x")],
            },
        );
        both_ways(
            &[0x09, 0x03, 0x03, b'k', 0x02, 0x01, 0x01],
            Amf3Value::Array {
                assoc: vec![("k".into(), Amf3Value::Boolean(false))],
                dense: vec![Amf3Value::Null],
            },
        );
    }

    #[test]
    fn anonymous_dynamic_object() {
        // Traits inline, dynamic, no sealed members: 0b1011; class "".
        both_ways(
            &[0x0A, 0x0B, 0x01, 0x03, b'a', 0x04, 0x07, 0x01],
            Amf3Value::Object {
                class_name: None,
                sealed: vec![],
                dynamic: vec![("a".into(), Amf3Value::Integer(7))],
            },
        );
    }

    #[test]
    fn string_references() {
        assert_eq!(
            decode_all(&[
                0x06, 0x07, b'a', b'b', b'c', 0x06, 0x00, 0x06, 0x01, 0x06, 0x03, b'd', 0x06, 0x02
            ]),
            Ok(vec![s("abc"), s("abc"), s(""), s("d"), s("d")])
        );
        // Empty strings are never tabled: index 1 is "d", not "".
        // Keys and class names share the string table with values.
        assert_eq!(
            decode_one(&[0x09, 0x01, 0x03, b'k', 0x06, 0x00, 0x01]),
            Ok(Amf3Value::Array {
                assoc: vec![("k".into(), s("k"))],
                dense: vec![],
            })
        );
        assert_eq!(
            decode_one(&[0x06, 0x02]),
            Err(AmfError::BadReference {
                table: "string",
                index: 1
            })
        );
    }

    #[test]
    fn trait_references() {
        // Class "Pt" with sealed member "x", not dynamic: (1 << 4) | 0b0011.
        let bytes = [
            0x09, 0x05, 0x01, // array, two dense items, no associative part
            0x0A, 0x13, 0x05, b'P', b't', 0x03, b'x', 0x04, 0x01, // Pt { x: 1 }
            0x0A, 0x01, 0x04, 0x02, // traits reference 0: Pt { x: 2 }
        ];
        let pt = |x| Amf3Value::Object {
            class_name: Some("Pt".into()),
            sealed: vec![("x".into(), Amf3Value::Integer(x))],
            dynamic: vec![],
        };
        assert_eq!(
            decode_one(&bytes),
            Ok(Amf3Value::Array {
                assoc: vec![],
                dense: vec![pt(1), pt(2)],
            })
        );
        assert_eq!(encode(&pt(1)), bytes[3..12]);
        assert_eq!(
            decode_one(&[0x0A, 0x05]),
            Err(AmfError::BadReference {
                table: "trait",
                index: 1
            })
        );
    }

    #[test]
    fn object_references_stay_indices() {
        both_ways(&[0x0A, 0x04], Amf3Value::Reference(2));
        for marker in [0x07, 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11] {
            assert_eq!(decode_one(&[marker, 0x06]), Ok(Amf3Value::Reference(3)));
        }
    }

    #[test]
    fn externalizable_is_refused() {
        assert_eq!(
            decode_one(&[0x0A, 0x07, 0x03, b'A']),
            Err(AmfError::Externalizable("A".into()))
        );
    }

    #[test]
    fn vectors_and_dictionary() {
        both_ways(
            &[
                0x0D, 0x05, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x02,
            ],
            Amf3Value::VectorInt {
                fixed: false,
                items: vec![-1, 2],
            },
        );
        both_ways(
            &[0x0E, 0x03, 0x01, 0xFF, 0xFF, 0xFF, 0xFF],
            Amf3Value::VectorUint {
                fixed: true,
                items: vec![u32::MAX],
            },
        );
        both_ways(
            &[0x0F, 0x03, 0x00, 0xBF, 0xF0, 0, 0, 0, 0, 0, 0],
            Amf3Value::VectorDouble {
                fixed: false,
                items: vec![-1.0],
            },
        );
        both_ways(
            &[0x10, 0x05, 0x00, 0x03, b'*', 0x01, 0x06, 0x01],
            Amf3Value::VectorObject {
                fixed: false,
                type_name: "*".into(),
                items: vec![Amf3Value::Null, s("")],
            },
        );
        both_ways(
            &[0x11, 0x03, 0x01, 0x06, 0x03, b'k', 0x04, 0x09],
            Amf3Value::Dictionary {
                weak_keys: true,
                entries: vec![(s("k"), Amf3Value::Integer(9))],
            },
        );
        // A vector whose items are not all there is refused before any
        // allocation for them.
        assert_eq!(
            decode_one(&[0x0F, 0xBF, 0xFF, 0xFF, 0xFF, 0x00, 0x00]),
            Err(AmfError::UnexpectedEnd)
        );
    }

    #[test]
    fn unknown_marker() {
        assert_eq!(decode_one(&[0x12]), Err(AmfError::UnknownMarker(0x12)));
    }

    #[test]
    fn repeated_string_references_hit_the_budget() {
        // One 1000-byte string, then 5000 one-byte references to it: five
        // megabytes from eleven kilobytes.
        let mut bytes = vec![0x09];
        let mut header = Vec::new();
        put_inline_len(&mut header, 5001);
        bytes.extend_from_slice(&header);
        bytes.push(0x01);
        bytes.push(0x06);
        let mut len = Vec::new();
        put_inline_len(&mut len, 1000);
        bytes.extend_from_slice(&len);
        bytes.extend(std::iter::repeat_n(b'x', 1000));
        for _ in 0..5000 {
            bytes.extend_from_slice(&[0x06, 0x00]);
        }
        assert_eq!(decode_one(&bytes), Err(AmfError::TooLarge));
        // Trait member names repeat the same way and are charged as well.
        let mut traits = vec![0x09];
        traits.extend_from_slice(&header);
        traits.extend_from_slice(&[0x01, 0x0A, 0x13, 0x01]);
        traits.extend_from_slice(&len);
        traits.extend(std::iter::repeat_n(b'm', 1000));
        traits.push(0x01);
        for _ in 0..5000 {
            traits.extend_from_slice(&[0x0A, 0x01, 0x01]);
        }
        assert_eq!(decode_one(&traits), Err(AmfError::TooLarge));
        // A few references are fine.
        let mut few = vec![0x09, 0x09, 0x01, 0x06];
        few.extend_from_slice(&len);
        few.extend(std::iter::repeat_n(b'x', 1000));
        few.extend_from_slice(&[0x06, 0x00, 0x06, 0x00, 0x06, 0x00]);
        assert!(decode_one(&few).is_ok());
    }

    #[test]
    fn depth_limit() {
        // Arrays of one dense element, nested; objects nested by a dynamic
        // member.
        let arrays = |levels: usize| {
            let mut b = [0x09, 0x03, 0x01].repeat(levels);
            b.push(0x01);
            b
        };
        let objects = |levels: usize| {
            let mut b = [0x0A, 0x0B, 0x01, 0x03, b'a'].repeat(levels);
            b.push(0x01);
            b.extend(std::iter::repeat_n(0x01, levels));
            b
        };
        for input in [arrays(10), objects(10)] {
            assert!(Amf3Reader::new(&input, 10).read_value().is_ok());
            assert_eq!(
                Amf3Reader::new(&input, 9).read_value(),
                Err(AmfError::TooDeep { limit: 9 })
            );
        }
        let handle = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || {
                let limit = MAX_DEPTH_CEILING;
                for input in [arrays(100_000), objects(100_000)] {
                    assert_eq!(
                        Amf3Reader::new(&input, usize::MAX).read_value(),
                        Err(AmfError::TooDeep { limit })
                    );
                }
                assert!(Amf3Reader::new(&objects(limit), usize::MAX)
                    .read_value()
                    .is_ok());
            });
        assert!(handle.map(|h| h.join().is_ok()).unwrap_or(false));
    }

    #[test]
    fn every_truncation_is_unexpected_end() {
        let v = Amf3Value::Object {
            class_name: Some("C".into()),
            sealed: vec![("n".into(), Amf3Value::Integer(300_000))],
            dynamic: vec![
                ("s".into(), s("text")),
                ("d".into(), Amf3Value::Date(1.0)),
                ("b".into(), Amf3Value::ByteArray(vec![9; 3])),
                (
                    "v".into(),
                    Amf3Value::VectorDouble {
                        fixed: true,
                        items: vec![1.0],
                    },
                ),
            ],
        };
        let bytes = encode(&v);
        assert_eq!(decode_one(&bytes), Ok(v));
        for cut in 0..bytes.len() {
            assert_eq!(
                Amf3Reader::new(&bytes[..cut], 32).read_value(),
                Err(AmfError::UnexpectedEnd),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn property_lookup() {
        let v = Amf3Value::Object {
            class_name: None,
            sealed: vec![("a".into(), Amf3Value::Integer(1))],
            dynamic: vec![("b".into(), Amf3Value::Double(2.0))],
        };
        assert_eq!(v.property("a").and_then(Amf3Value::as_number), Some(1.0));
        assert_eq!(v.property("b").and_then(Amf3Value::as_number), Some(2.0));
        assert_eq!(v.property("c"), None);
    }

    fn number() -> impl Strategy<Value = f64> {
        any::<f64>().prop_filter("NaN never equals itself", |n| !n.is_nan())
    }

    /// Values the writer can represent exactly: integers in 29 bits, named
    /// classes non-empty, keys in terminated lists non-empty, no NaN.
    pub(crate) fn arb_amf3() -> impl Strategy<Value = Amf3Value> {
        let leaf = prop_oneof![
            Just(Amf3Value::Undefined),
            Just(Amf3Value::Null),
            any::<bool>().prop_map(Amf3Value::Boolean),
            (INTEGER_MIN..=INTEGER_MAX).prop_map(Amf3Value::Integer),
            number().prop_map(Amf3Value::Double),
            ".{0,12}".prop_map(Amf3Value::String),
            ".{0,12}".prop_map(Amf3Value::XmlDocument),
            number().prop_map(Amf3Value::Date),
            ".{0,12}".prop_map(Amf3Value::Xml),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(Amf3Value::ByteArray),
            (0..=U28_MAX as u32).prop_map(Amf3Value::Reference),
            (any::<bool>(), prop::collection::vec(any::<i32>(), 0..6))
                .prop_map(|(fixed, items)| Amf3Value::VectorInt { fixed, items }),
            (any::<bool>(), prop::collection::vec(any::<u32>(), 0..6))
                .prop_map(|(fixed, items)| Amf3Value::VectorUint { fixed, items }),
            (any::<bool>(), prop::collection::vec(number(), 0..6))
                .prop_map(|(fixed, items)| Amf3Value::VectorDouble { fixed, items }),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let members = prop::collection::vec((".{1,6}", inner.clone()), 0..5);
            prop_oneof![
                (members.clone(), prop::collection::vec(inner.clone(), 0..5))
                    .prop_map(|(assoc, dense)| Amf3Value::Array { assoc, dense }),
                (
                    prop::option::of(".{1,6}"),
                    prop::collection::vec((".{0,6}", inner.clone()), 0..5),
                    members
                )
                    .prop_map(|(class_name, sealed, dynamic)| Amf3Value::Object {
                        class_name,
                        sealed,
                        dynamic
                    }),
                (
                    any::<bool>(),
                    ".{0,6}",
                    prop::collection::vec(inner.clone(), 0..5)
                )
                    .prop_map(|(fixed, type_name, items)| {
                        Amf3Value::VectorObject {
                            fixed,
                            type_name,
                            items,
                        }
                    }),
                (
                    any::<bool>(),
                    prop::collection::vec((inner.clone(), inner), 0..4)
                )
                    .prop_map(|(weak_keys, entries)| Amf3Value::Dictionary { weak_keys, entries }),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(values in prop::collection::vec(arb_amf3(), 1..4)) {
            let mut bytes = Vec::new();
            for v in &values {
                write_value(&mut bytes, v);
            }
            let mut r = Amf3Reader::new(&bytes, 32);
            for v in &values {
                prop_assert_eq!(&r.read_value()?, v);
            }
            prop_assert!(r.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut r = Amf3Reader::new(&bytes, 16);
            while !r.is_empty() {
                let before = r.position();
                let Ok(v) = r.read_value() else { break };
                prop_assert!(r.position() > before);
                let once = encode(&v);
                let again = Amf3Reader::new(&once, 16).read_value()?;
                prop_assert_eq!(encode(&again), once);
            }
        }

        #[test]
        fn amf3_shaped_bytes_never_panic(
            parts in prop::collection::vec(prop_oneof![
                Just(vec![0x09, 0x03, 0x01]), Just(vec![0x0A, 0x0B, 0x01]), Just(vec![0x0A, 0x13, 0x03, b'C']),
                Just(vec![0x0A, 0x01]), Just(vec![0x0A, 0x05]), Just(vec![0x06, 0x00]), Just(vec![0x06, 0x03, b'k']),
                Just(vec![0x03, b'a']), Just(vec![0x01]), Just(vec![0x10, 0x03, 0x00, 0x01]),
                Just(vec![0x11, 0x03, 0x00]), Just(vec![0x0D, 0x03, 0x00]),
                prop::collection::vec(any::<u8>(), 1..4),
            ], 0..64)
        ) {
            let bytes = parts.concat();
            let mut r = Amf3Reader::new(&bytes, 8);
            while !r.is_empty() {
                if r.read_value().is_err() {
                    break;
                }
            }
        }
    }
}
