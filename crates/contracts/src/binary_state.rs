//! Binary state frames (`?sync=binary`): RFC 7386 merge patches in a compact encoding
//! that names each member once per land (a key table) instead of once per frame.
//! docs/runtime-protocol.md "Binary state frames" is the specification; the encoder and
//! decoder live together so that their round trip is tested in one place.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

/// First byte of a binary frame carrying a state merge (the only kind so far).
pub const FRAME_STATE_MERGE: u8 = 0x01;
/// Entries a land's key table holds at most; later names are spelled out in each frame.
pub const MAX_KEYS: usize = 1024;
/// Longer names are never entered in the table.
pub const MAX_KEY_BYTES: usize = 64;
/// Objects and arrays nest at most this deep in a frame the decoder accepts.
const MAX_DEPTH: usize = 128;

mod tag {
    pub(super) const NULL: u8 = 0x00;
    pub(super) const FALSE: u8 = 0x01;
    pub(super) const TRUE: u8 = 0x02;
    pub(super) const OBJECT: u8 = 0x03;
    pub(super) const ARRAY: u8 = 0x04;
    pub(super) const INT: u8 = 0x05;
    pub(super) const BIG_UINT: u8 = 0x06;
    pub(super) const FLOAT: u8 = 0x07;
    pub(super) const STRING: u8 = 0x08;
    pub(super) const STRING_ENTRY: u8 = 0x09;
    /// `DECIMAL + scale`, scale 0..=15.
    pub(super) const DECIMAL: u8 = 0x10;
}

/// The key header that ends an object.
const KEY_END: u64 = 3;
const MAX_SCALE: usize = 15;
const POWERS_OF_TEN: [f64; MAX_SCALE + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Mantissas of decimal floats stay below 2⁵³, where every integer is an exact double.
const MAX_EXACT_MANTISSA: f64 = 9_007_199_254_740_992.0;

/// A land's key table as the server keeps it: append-only, capped at [`MAX_KEYS`].
#[derive(Debug, Default, Clone)]
pub struct KeyTable {
    entries: HashMap<String, u64>,
    names: Vec<String>,
}

impl KeyTable {
    /// Every entry so far, entry *i* at index *i* (the `keys` of `join.ok`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn entry(&self, name: &str) -> Option<u64> {
        self.entries.get(name).copied()
    }
}

/// How a writer treats names missing from the table.
#[derive(Debug)]
enum Names<'t> {
    /// Enters them, recording a definition for the frame (the land's shared part).
    Enter(&'t mut KeyTable),
    /// Spells them out (one player's private part: the other players never see its
    /// definitions, so it must not change the shared table).
    LookUp(&'t KeyTable),
}

/// Writes keys and values of a merge patch into caller-owned buffers, so that a nested
/// object can be written aside and kept or dropped.
#[derive(Debug)]
pub struct BinaryWriter<'t> {
    names: Names<'t>,
    definitions: Vec<u8>,
    defined: u64,
}

impl<'t> BinaryWriter<'t> {
    /// A writer that enters new names in `table`.
    pub fn entering(table: &'t mut KeyTable) -> Self {
        Self::new(Names::Enter(table))
    }

    /// A writer that only uses entries `table` already has.
    pub fn looking_up(table: &'t KeyTable) -> Self {
        Self::new(Names::LookUp(table))
    }

    fn new(names: Names<'t>) -> Self {
        Self {
            names,
            definitions: Vec::new(),
            defined: 0,
        }
    }

    /// The `defs` block of the frame: the entries this writer added.
    pub fn into_definitions(self) -> Vec<u8> {
        let mut block = Vec::with_capacity(self.definitions.len() + 2);
        write_varint(&mut block, self.defined);
        block.extend_from_slice(&self.definitions);
        block
    }

    pub fn key(&mut self, out: &mut Vec<u8>, key: &str) {
        if let Some(index) = self.table_entry(key) {
            write_varint(out, index << 2);
        } else if let Some(number) = canonical_integer(key) {
            write_varint(out, (number << 2) | 1);
        } else {
            write_varint(out, ((key.len() as u64) << 2) | 2);
            out.extend_from_slice(key.as_bytes());
        }
    }

    fn table_entry(&mut self, key: &str) -> Option<u64> {
        match &mut self.names {
            Names::LookUp(table) => table.entry(key),
            Names::Enter(table) => {
                if let Some(index) = table.entry(key) {
                    return Some(index);
                }
                if table.names.len() >= MAX_KEYS
                    || key.len() > MAX_KEY_BYTES
                    || canonical_integer(key).is_some()
                {
                    return None;
                }
                let index = table.names.len() as u64;
                table.names.push(key.to_owned());
                table.entries.insert(key.to_owned(), index);
                write_varint(&mut self.definitions, index);
                write_varint(&mut self.definitions, key.len() as u64);
                self.definitions.extend_from_slice(key.as_bytes());
                self.defined += 1;
                Some(index)
            }
        }
    }

    /// An object value whose members (`key value …`) were written to `members`.
    pub fn object(out: &mut Vec<u8>, members: &[u8]) {
        out.push(tag::OBJECT);
        out.extend_from_slice(members);
        write_varint(out, KEY_END);
    }

    pub fn value(&mut self, out: &mut Vec<u8>, value: &Value) {
        match value {
            Value::Null => out.push(tag::NULL),
            Value::Bool(false) => out.push(tag::FALSE),
            Value::Bool(true) => out.push(tag::TRUE),
            Value::Number(number) => write_number(out, number),
            Value::String(text) => {
                if let Some(index) = self.names_table().entry(text) {
                    out.push(tag::STRING_ENTRY);
                    write_varint(out, index);
                } else {
                    out.push(tag::STRING);
                    write_varint(out, text.len() as u64);
                    out.extend_from_slice(text.as_bytes());
                }
            }
            Value::Array(items) => {
                out.push(tag::ARRAY);
                write_varint(out, items.len() as u64);
                for item in items {
                    self.value(out, item);
                }
            }
            Value::Object(members) => {
                out.push(tag::OBJECT);
                for (key, member) in members {
                    self.key(out, key);
                    self.value(out, member);
                }
                write_varint(out, KEY_END);
            }
        }
    }

    fn names_table(&self) -> &KeyTable {
        match &self.names {
            Names::Enter(table) => table,
            Names::LookUp(table) => table,
        }
    }
}

/// A whole binary frame: the shared part's definitions and members, then one player's
/// private members (written with [`BinaryWriter::looking_up`]).
pub fn state_merge_frame(seq: u64, definitions: &[u8], shared: &[u8], private: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(definitions.len() + shared.len() + private.len() + 12);
    frame.push(FRAME_STATE_MERGE);
    write_varint(&mut frame, seq);
    frame.extend_from_slice(definitions);
    frame.extend_from_slice(shared);
    frame.extend_from_slice(private);
    write_varint(&mut frame, KEY_END);
    frame
}

/// `"0"`, `"12"`: decimal digits without a leading zero, below 2⁶⁰ so the key header
/// keeps its two low bits.
fn canonical_integer(key: &str) -> Option<u64> {
    let bytes = key.as_bytes();
    if bytes.is_empty() || bytes.len() > 18 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    key.parse().ok()
}

fn write_number(out: &mut Vec<u8>, number: &Number) {
    if let Some(integer) = number.as_i64() {
        out.push(tag::INT);
        write_varint(out, zigzag(integer));
    } else if let Some(integer) = number.as_u64() {
        out.push(tag::BIG_UINT);
        write_varint(out, integer);
    } else if let Some(float) = number.as_f64() {
        write_float(out, float);
    }
}

/// The shortest exact decimal (`46.58` is 4658 at scale 2) when there is one, else the
/// eight bytes of the double.
fn write_float(out: &mut Vec<u8>, float: f64) {
    let is_negative_zero = float == 0.0 && float.is_sign_negative();
    if !is_negative_zero {
        for (scale, power) in POWERS_OF_TEN.iter().enumerate() {
            let mantissa = (float * power).round();
            if mantissa.abs() >= MAX_EXACT_MANTISSA {
                break;
            }
            if mantissa / power == float {
                out.push(tag::DECIMAL + scale as u8);
                // In range of i64 (below 2⁵³) and integral, so the cast is exact.
                write_varint(out, zigzag(mantissa as i64));
                return;
            }
        }
    }
    out.push(tag::FLOAT);
    out.extend_from_slice(&float.to_le_bytes());
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Why a binary frame was refused; the client answers any of them with `sync.request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    UnknownFrameKind(u8),
    UnknownTag(u8),
    BadKeyHeader(u64),
    /// A definition or a reference past the end of the key table.
    NoSuchEntry(u64),
    NotUtf8,
    TooDeep,
    /// A number the JSON model cannot hold (a decimal with a non-finite value).
    BadNumber,
    TrailingBytes,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => f.write_str("frame ends early"),
            Self::UnknownFrameKind(kind) => write!(f, "unknown frame kind {kind:#04x}"),
            Self::UnknownTag(tag) => write!(f, "unknown value tag {tag:#04x}"),
            Self::BadKeyHeader(header) => write!(f, "bad key header {header}"),
            Self::NoSuchEntry(index) => write!(f, "key table has no entry {index}"),
            Self::NotUtf8 => f.write_str("a name or string is not UTF-8"),
            Self::TooDeep => write!(f, "values nest deeper than {MAX_DEPTH}"),
            Self::BadNumber => f.write_str("a number JSON cannot hold"),
            Self::TrailingBytes => f.write_str("bytes after the end of the frame"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a binary state frame into its `seq` and merge patch, first adding the
/// frame's definitions to `keys` (the client's copy of the land's table).
pub fn decode_state_merge(
    frame: &[u8],
    keys: &mut Vec<String>,
) -> Result<(u64, Value), DecodeError> {
    let mut reader = Reader { bytes: frame };
    let seq = reader.header(keys)?;
    let merge = reader.members(keys, 0)?;
    if !reader.bytes.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok((seq, Value::Object(merge)))
}

/// Only the frame's `seq` and definitions (added to `keys`): what a client without a
/// state mirror needs to keep its table right for the frames it does decode.
pub fn decode_definitions(frame: &[u8], keys: &mut Vec<String>) -> Result<u64, DecodeError> {
    Reader { bytes: frame }.header(keys)
}

struct Reader<'b> {
    bytes: &'b [u8],
}

impl Reader<'_> {
    /// The frame kind, `seq` and definitions; returns `seq`.
    fn header(&mut self, keys: &mut Vec<String>) -> Result<u64, DecodeError> {
        let kind = self.byte()?;
        if kind != FRAME_STATE_MERGE {
            return Err(DecodeError::UnknownFrameKind(kind));
        }
        let seq = self.varint()?;
        let definitions = self.varint()?;
        for _ in 0..definitions {
            let index = self.varint()?;
            let name = self.string()?;
            match usize::try_from(index) {
                Ok(at) if at < keys.len() => keys[at] = name,
                Ok(at) if at == keys.len() => keys.push(name),
                _ => return Err(DecodeError::NoSuchEntry(index)),
            }
        }
        Ok(seq)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.bytes.split_first().ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    fn take(&mut self, len: u64) -> Result<&[u8], DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        if len > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            if shift == 63 && byte > 1 {
                // Bits past the 64th: not a value below 2⁶⁴.
                return Err(DecodeError::BadNumber);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadNumber)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.varint()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8)
    }

    fn entry(keys: &[String], index: u64) -> Result<&String, DecodeError> {
        usize::try_from(index)
            .ok()
            .and_then(|at| keys.get(at))
            .ok_or(DecodeError::NoSuchEntry(index))
    }

    fn members(
        &mut self,
        keys: &[String],
        depth: usize,
    ) -> Result<Map<String, Value>, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let mut members = Map::new();
        loop {
            let header = self.varint()?;
            let key = match header & 3 {
                0 => Self::entry(keys, header >> 2)?.clone(),
                1 => (header >> 2).to_string(),
                2 => {
                    let bytes = self.take(header >> 2)?;
                    std::str::from_utf8(bytes)
                        .map_err(|_| DecodeError::NotUtf8)?
                        .to_owned()
                }
                _ if header == KEY_END => return Ok(members),
                _ => return Err(DecodeError::BadKeyHeader(header)),
            };
            let value = self.value(keys, depth)?;
            members.insert(key, value);
        }
    }

    fn value(&mut self, keys: &[String], depth: usize) -> Result<Value, DecodeError> {
        let tag = self.byte()?;
        Ok(match tag {
            tag::NULL => Value::Null,
            tag::FALSE => Value::Bool(false),
            tag::TRUE => Value::Bool(true),
            tag::OBJECT => Value::Object(self.members(keys, depth + 1)?),
            tag::ARRAY => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                let count = self.varint()?;
                // Each item takes at least a byte: a bigger count is a lie.
                if count > self.bytes.len() as u64 {
                    return Err(DecodeError::Truncated);
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(keys, depth + 1)?);
                }
                Value::Array(items)
            }
            tag::INT => Value::from(unzigzag(self.varint()?)),
            tag::BIG_UINT => Value::from(self.varint()?),
            tag::FLOAT => {
                let bytes: [u8; 8] = self
                    .take(8)?
                    .try_into()
                    .map_err(|_| DecodeError::Truncated)?;
                float(f64::from_le_bytes(bytes))?
            }
            tag::STRING => Value::String(self.string()?),
            tag::STRING_ENTRY => Value::String(Self::entry(keys, self.varint()?)?.clone()),
            decimal if (tag::DECIMAL..=tag::DECIMAL + MAX_SCALE as u8).contains(&decimal) => {
                let mantissa = unzigzag(self.varint()?) as f64;
                float(mantissa / POWERS_OF_TEN[usize::from(decimal - tag::DECIMAL)])?
            }
            unknown => return Err(DecodeError::UnknownTag(unknown)),
        })
    }
}

fn float(value: f64) -> Result<Value, DecodeError> {
    Number::from_f64(value)
        .map(Value::Number)
        .ok_or(DecodeError::BadNumber)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    /// The example of docs/runtime-protocol.md, also asserted by the TypeScript SDK.
    const GOLDEN: [u8; 25] = [
        0x01, 0x07, 0x01, 0x03, 0x04, b'l', b't', b'-', b'1', 0x00, 0x03, 0x0c, 0x03, 0x04, 0x12,
        0xe4, 0x48, 0x08, 0x05, 0x64, 0x03, 0x31, 0x00, 0x03, 0x03,
    ];

    #[test]
    fn the_documented_frame_encodes_and_decodes() {
        let mut table = KeyTable::default();
        let mut writer = BinaryWriter::entering(&mut table);
        let mut ignored = Vec::new();
        for name in ["heroes", "x", "y"] {
            writer.key(&mut ignored, name);
        }
        // A client that joined now holds those three entries.
        let joined = table.names().to_vec();
        assert_eq!(joined, names(&["heroes", "x", "y"]));

        let mut writer = BinaryWriter::entering(&mut table);
        let mut hero = Vec::new();
        writer.key(&mut hero, "x");
        writer.value(&mut hero, &json!(46.58));
        writer.key(&mut hero, "y");
        writer.value(&mut hero, &json!(50));
        let mut heroes = Vec::new();
        writer.key(&mut heroes, "lt-1");
        BinaryWriter::object(&mut heroes, &hero);
        writer.key(&mut heroes, "12");
        writer.value(&mut heroes, &Value::Null);
        let mut shared = Vec::new();
        writer.key(&mut shared, "heroes");
        BinaryWriter::object(&mut shared, &heroes);
        let frame = state_merge_frame(7, &writer.into_definitions(), &shared, &[]);
        assert_eq!(frame, GOLDEN);

        let mut keys = joined;
        let (seq, merge) = decode_state_merge(&frame, &mut keys).unwrap();
        assert_eq!(seq, 7);
        assert_eq!(
            merge,
            json!({"heroes": {"lt-1": {"x": 46.58, "y": 50}, "12": null}})
        );
        assert_eq!(keys, table.names());
    }

    fn round_trip(value: &Value) -> Value {
        let mut table = KeyTable::default();
        let mut writer = BinaryWriter::entering(&mut table);
        let mut members = Vec::new();
        writer.key(&mut members, "v");
        writer.value(&mut members, value);
        let frame = state_merge_frame(1, &writer.into_definitions(), &members, &[]);
        let mut keys = Vec::new();
        let (_, mut merge) = decode_state_merge(&frame, &mut keys).unwrap();
        merge["v"].take()
    }

    #[test]
    fn numbers_keep_their_kind_and_every_bit() {
        for value in [
            json!(0),
            json!(-1),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(10.0),
            json!(-0.5),
            json!(0.1),
            json!(1e-7),
            json!(123_456.789_012_345_6),
            json!(1e300),
            json!(-0.0),
            json!(f64::MIN_POSITIVE),
            json!(std::f64::consts::PI),
        ] {
            let back = round_trip(&value);
            assert_eq!(back, value, "{value}");
            assert_eq!(back.is_f64(), value.is_f64(), "{value}");
            if let (Some(a), Some(b)) = (back.as_f64(), value.as_f64()) {
                assert_eq!(a.to_bits(), b.to_bits(), "{value}");
            }
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        let mut keys = names(&["a"]);
        let cases: [(&[u8], DecodeError); 9] = [
            (&[], DecodeError::Truncated),
            (&[0x02, 0, 0, 3], DecodeError::UnknownFrameKind(2)),
            (&[0x01, 0, 0, 0x00, 0x0f], DecodeError::UnknownTag(0x0f)),
            (&[0x01, 0, 0, 0x07], DecodeError::BadKeyHeader(7)),
            (&[0x01, 0, 0, 0x04, 0x00, 0x03], DecodeError::NoSuchEntry(1)),
            (
                &[0x01, 0, 1, 0x05, 0x01, b'z', 3],
                DecodeError::NoSuchEntry(5),
            ),
            (&[0x01, 0, 0, 0x06, 0xff, 0x00, 3], DecodeError::NotUtf8),
            (
                &[0x01, 0, 0, 0x00, 0x04, 0x7f, 0x00],
                DecodeError::Truncated,
            ),
            (&[0x01, 0, 0, 3, 0], DecodeError::TrailingBytes),
        ];
        for (frame, error) in cases {
            assert_eq!(
                decode_state_merge(frame, &mut keys),
                Err(error),
                "{frame:02x?}"
            );
        }
        let mut deep = vec![0x01, 0, 0];
        for _ in 0..200 {
            deep.extend_from_slice(&[0x00, tag::OBJECT]);
        }
        assert_eq!(
            decode_state_merge(&deep, &mut keys),
            Err(DecodeError::TooDeep)
        );
    }

    #[test]
    fn the_table_is_capped_and_private_writers_leave_it_alone() {
        let mut table = KeyTable::default();
        let mut writer = BinaryWriter::looking_up(&table);
        let mut out = Vec::new();
        writer.key(&mut out, "gold");
        assert_eq!(writer.into_definitions(), [0]);
        assert!(table.names().is_empty());

        let mut writer = BinaryWriter::entering(&mut table);
        for index in 0..MAX_KEYS + 10 {
            writer.key(&mut out, &format!("k{index}"));
        }
        writer.key(&mut out, &"long".repeat(20));
        writer.key(&mut out, "007");
        assert_eq!(table.names().len(), MAX_KEYS);
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-100_000i64..100_000, 0u32..4)
                .prop_map(|(m, s)| Value::from(m as f64 / 10f64.powi(s as i32))),
            "[a-c0-9é]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-d0-9]{0,2}", inner, 0..4)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any JSON value survives the trip bit for bit, through a table the decoder
        /// rebuilds from the definitions alone.
        #[test]
        fn any_value_round_trips(values in proptest::collection::vec(json_value(), 1..4)) {
            let mut table = KeyTable::default();
            let mut keys = Vec::new();
            for (seq, value) in values.iter().enumerate() {
                let mut writer = BinaryWriter::entering(&mut table);
                let mut members = Vec::new();
                writer.key(&mut members, "value");
                writer.value(&mut members, value);
                let frame = state_merge_frame(seq as u64, &writer.into_definitions(), &members, &[]);
                let (back_seq, merge) = decode_state_merge(&frame, &mut keys).unwrap();
                proptest::prop_assert_eq!(back_seq, seq as u64);
                proptest::prop_assert_eq!(&merge["value"], value);
                proptest::prop_assert_eq!(&keys[..], table.names());
            }
        }
    }
}
