//! A JSON value laid out in one buffer, in document order: the form in which a land
//! keeps what it last sent (the shared view, and the private view of each JSON Patch
//! connection) between syncs, as the base of the next diff.
//!
//! A `serde_json::Value` tree spreads a state over hundreds of allocations. By the
//! time a land syncs again, other lands have pushed them out of the caches, and the
//! diff's walk over the previous tree was a chain of cache misses (`diff_at` was a
//! quarter of the sync bench over 200 lands, a seventh of a busy server). Read front
//! to back, one buffer is what the prefetcher handles best, and it is a fraction of
//! the tree's size.
//!
//! Layout, little-endian: a tag byte, then
//! - null, false, true: nothing;
//! - unsigned, signed, float: the 8 bytes of the `u64`, `i64` or `f64`;
//! - string: `u32` length, bytes;
//! - array: `u32` element count, `u32` length of the elements in bytes, elements;
//! - object: `u32` member count, `u32` length of the members in bytes, members, each
//!   a `u32` key length, the key's bytes and the value.
//!
//! Lengths that do not fit in a `u32` (a 4 GiB state) are not representable: such a
//! state is kept as `null`, which only makes the next diff replace everything.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

mod ser;

pub(crate) use ser::to_flat;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const UNSIGNED: u8 = 3;
const SIGNED: u8 = 4;
const FLOAT: u8 = 5;
const STRING: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;

/// A whole JSON document in one buffer.
#[derive(Debug, Clone)]
pub(crate) struct FlatValue {
    bytes: Vec<u8>,
}

impl Default for FlatValue {
    /// `null`.
    fn default() -> Self {
        Self { bytes: vec![NULL] }
    }
}

impl FlatValue {
    pub(crate) fn new(value: &Value) -> Self {
        let mut writer = FlatWriter::with_capacity(0);
        writer.value(value);
        writer.finish()
    }

    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes the document takes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn root(&self) -> Flat<'_> {
        Flat::at(&self.bytes)
    }

    /// The document as a tree again.
    pub(crate) fn to_value(&self) -> Value {
        self.root().to_value()
    }
}

/// Writes a [`FlatValue`] front to back, a whole value at a time or, for a walk
/// that visits every member anyway (the diff), piece by piece.
pub(crate) struct FlatWriter {
    bytes: Vec<u8>,
    /// A length did not fit in a `u32`; the document will be `null`.
    overflowed: bool,
}

/// An object or array opened by [`FlatWriter`], to be closed once its contents are in.
#[must_use]
pub(crate) struct Open {
    /// Where its count and then its length in bytes go.
    count_at: usize,
    /// Members or elements written so far, when the count was not known up front.
    counted: usize,
}

impl Open {
    /// One more member or element of an [`FlatWriter::open_uncounted`] container.
    pub(crate) fn count(&mut self) {
        self.counted += 1;
    }
}

impl FlatWriter {
    /// A writer with `capacity` bytes to start with: a land's next state takes about
    /// what its last one took, and growing the buffer step by step copied it over and
    /// over (a sixth of the sync bench's time).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(capacity),
            overflowed: false,
        }
    }

    fn len_u32(&mut self, len: usize) {
        let len = u32::try_from(len).unwrap_or_else(|_| {
            self.overflowed = true;
            0
        });
        self.bytes.extend_from_slice(&len.to_le_bytes());
    }

    fn open(&mut self, tag: u8, count: usize) -> Open {
        self.bytes.push(tag);
        let count_at = self.bytes.len();
        self.len_u32(count);
        self.bytes.extend_from_slice(&[0; 4]);
        Open {
            count_at,
            counted: 0,
        }
    }

    /// An object or array whose count is only known once its contents are in (a
    /// serde sequence or map of unknown length): [`Open::count`] each one.
    pub(crate) fn open_uncounted(&mut self, object: bool) -> Open {
        self.open(if object { OBJECT } else { ARRAY }, 0)
    }

    pub(crate) fn open_object(&mut self, members: usize) -> Open {
        self.open(OBJECT, members)
    }

    pub(crate) fn open_array(&mut self, elements: usize) -> Open {
        self.open(ARRAY, elements)
    }

    /// The next member's name, before its value.
    pub(crate) fn key(&mut self, key: &str) {
        self.len_u32(key.len());
        self.bytes.extend_from_slice(key.as_bytes());
    }

    pub(crate) fn close(&mut self, open: Open) {
        let length_at = open.count_at + 4;
        let length = self.bytes.len() - length_at - 4;
        let length = u32::try_from(length).unwrap_or_else(|_| {
            self.overflowed = true;
            0
        });
        if let Some(slot) = self.bytes.get_mut(length_at..length_at + 4) {
            slot.copy_from_slice(&length.to_le_bytes());
        }
        if open.counted > 0 {
            let count = u32::try_from(open.counted).unwrap_or_else(|_| {
                self.overflowed = true;
                0
            });
            if let Some(slot) = self.bytes.get_mut(open.count_at..open.count_at + 4) {
                slot.copy_from_slice(&count.to_le_bytes());
            }
        }
    }

    pub(crate) fn null(&mut self) {
        self.bytes.push(NULL);
    }

    pub(crate) fn bool(&mut self, flag: bool) {
        self.bytes.push(if flag { TRUE } else { FALSE });
    }

    pub(crate) fn unsigned(&mut self, number: u64) {
        self.bytes.push(UNSIGNED);
        self.bytes.extend_from_slice(&number.to_le_bytes());
    }

    /// A signed integer as serde_json keeps it: unsigned when not negative.
    pub(crate) fn signed(&mut self, number: i64) {
        match u64::try_from(number) {
            Ok(unsigned) => self.unsigned(unsigned),
            Err(_) => {
                self.bytes.push(SIGNED);
                self.bytes.extend_from_slice(&number.to_le_bytes());
            }
        }
    }

    /// A float as serde_json keeps it: `null` when not finite.
    pub(crate) fn float(&mut self, number: f64) {
        if number.is_finite() {
            self.bytes.push(FLOAT);
            self.bytes.extend_from_slice(&number.to_le_bytes());
        } else {
            self.null();
        }
    }

    pub(crate) fn string(&mut self, text: &str) {
        self.bytes.push(STRING);
        self.len_u32(text.len());
        self.bytes.extend_from_slice(text.as_bytes());
    }

    /// A whole value, contents included.
    pub(crate) fn value(&mut self, value: &Value) {
        match value {
            Value::Null => self.null(),
            Value::Bool(flag) => self.bool(*flag),
            Value::Number(number) => {
                if let Some(unsigned) = number.as_u64() {
                    self.unsigned(unsigned);
                } else if let Some(signed) = number.as_i64() {
                    self.signed(signed);
                } else {
                    self.float(number.as_f64().unwrap_or(0.0));
                }
            }
            Value::String(text) => self.string(text),
            Value::Array(elements) => {
                let open = self.open_array(elements.len());
                for element in elements {
                    self.value(element);
                }
                self.close(open);
            }
            Value::Object(members) => {
                let open = self.open_object(members.len());
                for (key, member) in members {
                    self.key(key);
                    self.value(member);
                }
                self.close(open);
            }
        }
    }

    pub(crate) fn finish(mut self) -> FlatValue {
        if self.overflowed {
            self.bytes.clear();
            self.bytes.push(NULL);
        }
        FlatValue { bytes: self.bytes }
    }
}

/// One value inside a [`FlatValue`]: the slice starting at its tag (and running to
/// the end of the buffer).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flat<'a> {
    bytes: &'a [u8],
}

/// What a flat value is, with its contents.
pub(crate) enum Kind<'a> {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    /// UTF-8, as written from a `String`; left unchecked on the diff's path.
    String(&'a [u8]),
    Array(Elements<'a>),
    Object(Members<'a>),
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    bytes
        .get(at..at + 4)
        .and_then(|word| <[u8; 4]>::try_from(word).ok())
        .map_or(0, |word| u32::from_le_bytes(word) as usize)
}

fn u64_at(bytes: &[u8], at: usize) -> [u8; 8] {
    bytes
        .get(at..at + 8)
        .and_then(|word| <[u8; 8]>::try_from(word).ok())
        .unwrap_or_default()
}

impl<'a> Flat<'a> {
    fn at(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Bytes the value takes, tag included.
    fn size(self) -> usize {
        match self.bytes.first() {
            Some(&(UNSIGNED | SIGNED | FLOAT)) => 9,
            Some(&STRING) => 5 + u32_at(self.bytes, 1),
            Some(&(ARRAY | OBJECT)) => 9 + u32_at(self.bytes, 5),
            _ => 1,
        }
    }

    pub(crate) fn kind(self) -> Kind<'a> {
        let bytes = self.bytes;
        match bytes.first() {
            Some(&FALSE) => Kind::Bool(false),
            Some(&TRUE) => Kind::Bool(true),
            Some(&UNSIGNED) => Kind::Unsigned(u64::from_le_bytes(u64_at(bytes, 1))),
            Some(&SIGNED) => Kind::Signed(i64::from_le_bytes(u64_at(bytes, 1))),
            Some(&FLOAT) => Kind::Float(f64::from_le_bytes(u64_at(bytes, 1))),
            Some(&STRING) => {
                let len = u32_at(bytes, 1);
                Kind::String(bytes.get(5..5 + len).unwrap_or_default())
            }
            Some(&ARRAY) => Kind::Array(Elements {
                left: u32_at(bytes, 1),
                rest: contents(bytes),
            }),
            Some(&OBJECT) => Kind::Object(Members {
                len: u32_at(bytes, 1),
                left: u32_at(bytes, 1),
                start: contents(bytes),
                rest: contents(bytes),
            }),
            _ => Kind::Null,
        }
    }

    /// Whether the two are equal scalars (as `Value`'s `==` has it); objects and
    /// arrays answer `false`: the diff walks them member by member.
    pub(crate) fn same_scalar(self, other: Flat<'_>) -> bool {
        match (self.kind(), other.kind()) {
            (Kind::Null, Kind::Null) => true,
            (Kind::Bool(a), Kind::Bool(b)) => a == b,
            (Kind::Unsigned(a), Kind::Unsigned(b)) => a == b,
            (Kind::Signed(a), Kind::Signed(b)) => a == b,
            (Kind::Float(a), Kind::Float(b)) => a == b,
            (Kind::String(a), Kind::String(b)) => a == b,
            _ => false,
        }
    }

    pub(crate) fn is_object(self) -> bool {
        self.bytes.first() == Some(&OBJECT)
    }

    /// The value as compact JSON, as serde_json writes the `Value` it holds.
    pub(crate) fn to_json(self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the value as compact JSON, as serde_json writes the `Value` it holds.
    pub(crate) fn write_json(self, out: &mut Vec<u8>) {
        match self.kind() {
            Kind::Null => out.extend_from_slice(b"null"),
            Kind::Bool(true) => out.extend_from_slice(b"true"),
            Kind::Bool(false) => out.extend_from_slice(b"false"),
            Kind::Unsigned(number) => {
                out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes())
            }
            Kind::Signed(number) => {
                out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes())
            }
            // Writing a finite float or a string into a Vec cannot fail.
            Kind::Float(number) => {
                let _ = serde_json::to_writer(&mut *out, &number);
            }
            Kind::String(text) => {
                let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(text));
            }
            Kind::Array(elements) => {
                out.push(b'[');
                for (index, element) in elements.enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    element.write_json(out);
                }
                out.push(b']');
            }
            Kind::Object(members) => {
                out.push(b'{');
                for (index, (key, member)) in members.enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(key));
                    out.push(b':');
                    member.write_json(out);
                }
                out.push(b'}');
            }
        }
    }

    pub(crate) fn to_value(self) -> Value {
        match self.kind() {
            Kind::Null => Value::Null,
            Kind::Bool(flag) => Value::Bool(flag),
            Kind::Unsigned(number) => Value::from(number),
            Kind::Signed(number) => Value::from(number),
            Kind::Float(number) => Number::from_f64(number).map_or(Value::Null, Value::Number),
            Kind::String(text) => Value::String(String::from_utf8_lossy(text).into_owned()),
            Kind::Array(elements) => Value::Array(elements.map(Flat::to_value).collect()),
            Kind::Object(members) => Value::Object(
                members
                    .map(|(key, member)| {
                        (String::from_utf8_lossy(key).into_owned(), member.to_value())
                    })
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

/// The bytes of an array's elements or an object's members.
fn contents(bytes: &[u8]) -> &[u8] {
    let len = u32_at(bytes, 5);
    bytes.get(9..9 + len).unwrap_or_default()
}

/// An array's elements, in order.
#[derive(Clone)]
pub(crate) struct Elements<'a> {
    left: usize,
    rest: &'a [u8],
}

impl<'a> Iterator for Elements<'a> {
    type Item = Flat<'a>;

    fn next(&mut self) -> Option<Flat<'a>> {
        if self.left == 0 || self.rest.is_empty() {
            return None;
        }
        let element = Flat::at(self.rest);
        self.rest = self.rest.get(element.size()..).unwrap_or_default();
        self.left -= 1;
        Some(element)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

impl Elements<'_> {
    pub(crate) fn len(&self) -> usize {
        self.left
    }
}

/// An object's members, in order.
#[derive(Clone)]
pub(crate) struct Members<'a> {
    /// Members in the whole object.
    len: usize,
    left: usize,
    /// The first member's bytes, and those of the next one to read.
    start: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Iterator for Members<'a> {
    /// The key's bytes (UTF-8, as written from a `String`) and the value.
    type Item = (&'a [u8], Flat<'a>);

    fn next(&mut self) -> Option<(&'a [u8], Flat<'a>)> {
        if self.left == 0 || self.rest.is_empty() {
            return None;
        }
        let key_len = u32_at(self.rest, 0);
        let key = self.rest.get(4..4 + key_len).unwrap_or_default();
        let value = Flat::at(self.rest.get(4 + key_len..).unwrap_or_default());
        self.rest = self
            .rest
            .get(4 + key_len + value.size()..)
            .unwrap_or_default();
        self.left -= 1;
        Some((key, value))
    }
}

impl<'a> Members<'a> {
    /// Members in the whole object, however many were read.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Finds members by name, for a walk that mostly reads them in order.
    pub(crate) fn lookup(&self) -> MemberLookup<'a> {
        MemberLookup {
            members: self.restart(),
            scans: 0,
            index: None,
        }
    }

    /// All the members again, from the first.
    pub(crate) fn restart(&self) -> Members<'a> {
        Members {
            len: self.len,
            left: self.len,
            start: self.start,
            rest: self.start,
        }
    }
}

/// Scans the members for a name while few names are looked up, then indexes them:
/// an object whose names all changed since (a map keyed by ids that churn) would
/// otherwise cost a scan per name.
pub(crate) struct MemberLookup<'a> {
    members: Members<'a>,
    scans: usize,
    index: Option<HashMap<&'a [u8], Flat<'a>>>,
}

/// Scans that one object's lookups may make before its members are indexed.
const SCANS_BEFORE_INDEX: usize = 4;

impl<'a> MemberLookup<'a> {
    /// The member named `key` (its UTF-8 bytes).
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Flat<'a>> {
        if self.index.is_none() && self.scans >= SCANS_BEFORE_INDEX {
            self.index = Some(self.members.restart().collect());
        }
        if let Some(index) = &self.index {
            return index.get(key).copied();
        }
        self.scans += 1;
        self.members
            .restart()
            .find_map(|(name, value)| (name == key).then_some(value))
    }
}
