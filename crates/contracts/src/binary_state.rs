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
    /// An object with the keys of the previous object value of its enclosing object.
    pub(super) const SHAPED: u8 = 0x0A;
    /// `DECIMAL + scale`, scale 0..=15.
    pub(super) const DECIMAL: u8 = 0x10;
    /// `DELTA + scale`: a float that moved by a decimal step from its previous value.
    pub(super) const DELTA: u8 = 0x20;
    /// `SMALL_STEP + 32 + d`, d in −32..=31: a float that moved by d steps of its
    /// previous value's own scale.
    pub(super) const SMALL_STEP: u8 = 0x40;
}

/// The range of steps a `SMALL_STEP` tag holds.
const SMALL_STEPS: std::ops::RangeInclusive<i64> = -32..=31;

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
/// object can be written aside and kept or dropped (see [`Self::open_object`]).
#[derive(Debug)]
pub struct BinaryWriter<'t> {
    names: Names<'t>,
    definitions: Vec<u8>,
    defined: u64,
    /// The objects being written, innermost last (the first is the frame's own); the
    /// entries past `depth` are kept for their buffers, so a tick allocates little.
    levels: Vec<Level>,
    depth: usize,
}

/// One object (or array) being written.
#[derive(Debug, Default)]
struct Level {
    /// Where each member's key header and value start in the object's buffer.
    members: Vec<(usize, usize)>,
    /// The key headers of the last object among the members' values, back to back:
    /// headers delimit themselves, so equal bytes are equal keys in equal order.
    last_shape: Vec<u8>,
    has_shape: bool,
    /// False for an array's items, which have no enclosing object to take a shape from.
    shapes: bool,
    /// Scratch for the key headers of a whole object written as this level's value.
    headers: Vec<u8>,
    header_ends: Vec<usize>,
}

impl Level {
    fn reset(&mut self, shapes: bool) {
        self.members.clear();
        self.last_shape.clear();
        self.has_shape = false;
        self.shapes = shapes;
    }

    /// Whether an object whose key headers are `pieces` (back to back) can be written
    /// `SHAPED` here; remembers them as the last shape either way.
    fn take_shape<'p>(&mut self, pieces: impl Iterator<Item = &'p [u8]> + Clone) -> bool {
        if !self.shapes {
            return false;
        }
        let mut offset = 0;
        let mut same = self.has_shape;
        let mut any = false;
        for piece in pieces.clone() {
            any = true;
            same = same && self.last_shape.get(offset..offset + piece.len()) == Some(piece);
            offset += piece.len();
        }
        if same && any && offset == self.last_shape.len() {
            return true;
        }
        self.last_shape.clear();
        for piece in pieces {
            self.last_shape.extend_from_slice(piece);
        }
        self.has_shape = true;
        false
    }
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
        let mut writer = Self {
            names,
            definitions: Vec::new(),
            defined: 0,
            levels: Vec::new(),
            depth: 0,
        };
        writer.push_level(true);
        writer
    }

    /// The `defs` block of the frame: the entries this writer added.
    pub fn into_definitions(self) -> Vec<u8> {
        let mut block = Vec::with_capacity(self.definitions.len() + 2);
        write_varint(&mut block, self.defined);
        block.extend_from_slice(&self.definitions);
        block
    }

    fn push_level(&mut self, shapes: bool) {
        if self.depth == self.levels.len() {
            self.levels.push(Level::default());
        }
        if let Some(level) = self.levels.get_mut(self.depth) {
            level.reset(shapes);
        }
        self.depth += 1;
    }

    fn pop_level(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// The level at `depth` (0 is the frame's own object).
    fn level(&mut self, depth: usize) -> Option<&mut Level> {
        self.levels.get_mut(depth)
    }

    pub fn key(&mut self, out: &mut Vec<u8>, key: &str) {
        let key_start = out.len();
        self.write_key(out, key);
        let value_start = out.len();
        if let Some(level) = self
            .depth
            .checked_sub(1)
            .and_then(|at| self.levels.get_mut(at))
        {
            level.members.push((key_start, value_start));
        }
    }

    fn write_key(&mut self, out: &mut Vec<u8>, key: &str) {
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

    /// Starts an object whose members the next calls write into a buffer of their own,
    /// which [`Self::close_object`] then takes.
    pub fn open_object(&mut self) {
        self.push_level(true);
    }

    /// Ends the object opened last, whose members were written to `members`, and
    /// writes it to `out` as the value of `key`; nothing when it has no members.
    pub fn close_object(&mut self, out: &mut Vec<u8>, key: &str, members: &[u8]) {
        self.pop_level();
        if members.is_empty() {
            return;
        }
        let inner_depth = self.depth;
        let shaped = match self.levels.split_at_mut(inner_depth) {
            (outer, [inner, ..]) => {
                let headers = inner
                    .members
                    .iter()
                    .map(|&(key, value)| &members[key..value]);
                outer
                    .last_mut()
                    .is_some_and(|parent| parent.take_shape(headers))
            }
            _ => false,
        };
        self.key(out, key);
        let Some(inner) = self.levels.get(inner_depth) else {
            return;
        };
        if shaped {
            out.push(tag::SHAPED);
            let value_ends = inner
                .members
                .iter()
                .skip(1)
                .map(|&(key_start, _)| key_start)
                .chain([members.len()]);
            for (&(_, value_start), value_end) in inner.members.iter().zip(value_ends) {
                out.extend_from_slice(&members[value_start..value_end]);
            }
        } else {
            out.push(tag::OBJECT);
            out.extend_from_slice(members);
            write_varint(out, KEY_END);
        }
    }

    /// A member's new value; `previous` is what the member held before, which a float
    /// may be written relative to.
    pub fn value(&mut self, out: &mut Vec<u8>, previous: Option<&Value>, value: &Value) {
        match value {
            Value::Null => out.push(tag::NULL),
            Value::Bool(false) => out.push(tag::FALSE),
            Value::Bool(true) => out.push(tag::TRUE),
            Value::Number(number) => {
                let change = previous
                    .filter(|previous| previous.is_f64())
                    .and_then(Value::as_f64)
                    .zip(number.as_f64().filter(|_| number.is_f64()));
                if !change.is_some_and(|(previous, next)| write_float_step(out, previous, next)) {
                    write_number(out, number);
                }
            }
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
                self.push_level(false);
                for item in items {
                    self.value(out, None, item);
                }
                self.pop_level();
            }
            Value::Object(members) => self.whole_object(out, members),
        }
    }

    /// An object value written whole (not merged member by member): its key headers go
    /// to the new level's scratch first, to tell whether its parent has its shape.
    fn whole_object(&mut self, out: &mut Vec<u8>, members: &serde_json::Map<String, Value>) {
        self.push_level(true);
        let own = self.depth - 1;
        let (mut headers, mut ends) = match self.level(own) {
            Some(level) => (
                std::mem::take(&mut level.headers),
                std::mem::take(&mut level.header_ends),
            ),
            None => (Vec::new(), Vec::new()),
        };
        headers.clear();
        ends.clear();
        for key in members.keys() {
            self.write_key(&mut headers, key);
            ends.push(headers.len());
        }
        let shaped = !members.is_empty()
            && own
                .checked_sub(1)
                .and_then(|parent| self.level(parent))
                .is_some_and(|parent| parent.take_shape(std::iter::once(&headers[..])));
        if members.is_empty()
            && let Some(parent) = own.checked_sub(1).and_then(|parent| self.level(parent))
        {
            parent.take_shape(std::iter::empty());
        }
        out.push(if shaped { tag::SHAPED } else { tag::OBJECT });
        let mut key_start = 0;
        for (member, &key_end) in members.values().zip(&ends) {
            if !shaped {
                out.extend_from_slice(&headers[key_start..key_end]);
            }
            key_start = key_end;
            self.value(out, None, member);
        }
        if !shaped {
            write_varint(out, KEY_END);
        }
        if let Some(level) = self.level(own) {
            level.headers = headers;
            level.header_ends = ends;
        }
        self.pop_level();
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
    if let Some((scale, mantissa)) = decimal(float) {
        out.push(tag::DECIMAL + scale);
        write_varint(out, zigzag(mantissa));
    } else {
        out.push(tag::FLOAT);
        out.extend_from_slice(&float.to_le_bytes());
    }
}

/// `next` as a step from `previous`: a small one in the tag byte when `next` is a
/// decimal at `previous`'s own scale, else at `next`'s scale when `previous` is a
/// decimal there too and the step is shorter than `next` itself.
fn write_float_step(out: &mut Vec<u8>, previous: f64, next: f64) -> bool {
    if let Some((scale, base)) = decimal(previous) {
        let power = POWERS_OF_TEN[usize::from(scale)];
        let target = (next * power).round();
        if target.abs() < MAX_EXACT_MANTISSA && target / power == next {
            // Both below 2⁵³ in magnitude: the cast is exact, the difference cannot overflow.
            let step = target as i64 - base;
            if SMALL_STEPS.contains(&step) {
                // In 0..=63 by the range check.
                out.push(tag::SMALL_STEP + (step - SMALL_STEPS.start()) as u8);
                return true;
            }
        }
    }
    let Some((scale, mantissa)) = decimal(next) else {
        return false;
    };
    let power = POWERS_OF_TEN[usize::from(scale)];
    // What the client computes from the number it holds: round(p × 10^scale).
    let base = (previous * power).round();
    if base.abs() >= MAX_EXACT_MANTISSA || base / power != previous {
        return false;
    }
    // Both below 2⁵³ in magnitude: the cast is exact and the difference cannot overflow.
    let step = zigzag(mantissa - base as i64);
    if varint_len(step) >= varint_len(zigzag(mantissa)) {
        return false;
    }
    out.push(tag::DELTA + scale);
    write_varint(out, step);
    true
}

/// `(scale, m)` with `float == m / 10^scale` exactly, for the smallest scale ≤ 15.
fn decimal(float: f64) -> Option<(u8, i64)> {
    if float == 0.0 && float.is_sign_negative() {
        return None;
    }
    for (scale, power) in (0u8..).zip(POWERS_OF_TEN) {
        let mantissa = (float * power).round();
        if mantissa.abs() >= MAX_EXACT_MANTISSA {
            return None;
        }
        if mantissa / power == float {
            // Integral and below 2⁵³ in magnitude, so the cast is exact.
            return Some((scale, mantissa as i64));
        }
    }
    None
}

fn varint_len(value: u64) -> u32 {
    (64 - value.leading_zeros()).max(1).div_ceil(7)
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame ends early")]
    Truncated,
    #[error("unknown frame kind {0:#04x}")]
    UnknownFrameKind(u8),
    #[error("unknown value tag {0:#04x}")]
    UnknownTag(u8),
    #[error("bad key header {0}")]
    BadKeyHeader(u64),
    /// A definition or a reference past the end of the key table.
    #[error("key table has no entry {0}")]
    NoSuchEntry(u64),
    #[error("a name or string is not UTF-8")]
    NotUtf8,
    #[error("values nest deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A varint of more than 64 bits, or a float JSON cannot hold.
    #[error("a number out of range")]
    BadNumber,
    /// `SHAPED` where the enclosing object has no object before it (or in an array).
    #[error("a shaped object with no object before it")]
    NoShape,
    /// A float step where the state holds no number to step from.
    #[error("a float step with no number before it")]
    NoPrevious,
    #[error("bytes after the end of the frame")]
    TrailingBytes,
}

/// Decodes a binary state frame into its `seq` and merge patch, first adding the
/// frame's definitions to `keys` (the client's copy of the land's table). `state` is
/// the client's state at `seq - 1`, which float steps are relative to; a reader
/// without one (a load generator that keeps no state) passes `None` and gets `null`
/// for each step.
pub fn decode_state_merge(
    frame: &[u8],
    keys: &mut Vec<String>,
    state: Option<&Value>,
) -> Result<(u64, Value), DecodeError> {
    let mut reader = Reader {
        bytes: frame,
        keys,
        stateless: state.is_none(),
    };
    let seq = reader.header()?;
    let (merge, _) = reader.object_body(0, state.and_then(Value::as_object), None)?;
    if !reader.bytes.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok((seq, Value::Object(merge)))
}

/// Only the frame's `seq` and definitions (added to `keys`): what a client without a
/// state mirror needs to keep its table right for the frames it does decode.
pub fn decode_definitions(frame: &[u8], keys: &mut Vec<String>) -> Result<u64, DecodeError> {
    Reader {
        bytes: frame,
        keys,
        stateless: true,
    }
    .header()
}

struct Reader<'b, 'k> {
    bytes: &'b [u8],
    keys: &'k mut Vec<String>,
    /// No state to take float steps from: they decode as `null`.
    stateless: bool,
}

/// Where a value sits: its previous value (for a float step) and, as a member of an
/// object, the keys of the object before it (for `SHAPED`).
#[derive(Clone, Copy)]
struct Slot<'a> {
    previous: Option<&'a Value>,
    shape: Option<&'a [String]>,
}

impl Reader<'_, '_> {
    /// The frame kind, `seq` and definitions; returns `seq`.
    fn header(&mut self) -> Result<u64, DecodeError> {
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
                Ok(at) if at < self.keys.len() => self.keys[at] = name,
                Ok(at) if at == self.keys.len() => self.keys.push(name),
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

    fn entry(&self, index: u64) -> Result<String, DecodeError> {
        usize::try_from(index)
            .ok()
            .and_then(|at| self.keys.get(at))
            .cloned()
            .ok_or(DecodeError::NoSuchEntry(index))
    }

    fn key(&mut self) -> Result<Option<String>, DecodeError> {
        let header = self.varint()?;
        Ok(Some(match header & 3 {
            0 => self.entry(header >> 2)?,
            1 => (header >> 2).to_string(),
            2 => {
                let bytes = self.take(header >> 2)?;
                std::str::from_utf8(bytes)
                    .map_err(|_| DecodeError::NotUtf8)?
                    .to_owned()
            }
            _ if header == KEY_END => return Ok(None),
            _ => return Err(DecodeError::BadKeyHeader(header)),
        }))
    }

    /// An object's members: key headers up to `END`, or one value per key of `shape`.
    /// `previous` is the object the state held there. Returns the members and their
    /// keys in frame order (the shape a later `SHAPED` sibling reuses).
    fn object_body(
        &mut self,
        depth: usize,
        previous: Option<&Map<String, Value>>,
        shape: Option<&[String]>,
    ) -> Result<(Map<String, Value>, Vec<String>), DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let mut members = Map::new();
        let mut order = Vec::new();
        let mut last_shape: Option<Vec<String>> = None;
        let mut shaped_keys = shape.map(<[String]>::iter);
        loop {
            let key = match &mut shaped_keys {
                Some(keys) => keys.next().cloned(),
                None => self.key()?,
            };
            let Some(key) = key else {
                return Ok((members, order));
            };
            let slot = Slot {
                previous: previous.and_then(|object| object.get(&key)),
                shape: last_shape.as_deref(),
            };
            let (value, value_shape) = self.value(depth, slot)?;
            if let Some(value_shape) = value_shape {
                last_shape = Some(value_shape);
            }
            order.push(key.clone());
            members.insert(key, value);
        }
    }

    /// A value and, when it is an object with new keys, those keys.
    fn value(
        &mut self,
        depth: usize,
        slot: Slot<'_>,
    ) -> Result<(Value, Option<Vec<String>>), DecodeError> {
        let tag = self.byte()?;
        let value = match tag {
            tag::NULL => Value::Null,
            tag::FALSE => Value::Bool(false),
            tag::TRUE => Value::Bool(true),
            tag::OBJECT => {
                let previous = slot.previous.and_then(Value::as_object);
                let (members, order) = self.object_body(depth + 1, previous, None)?;
                return Ok((Value::Object(members), Some(order)));
            }
            tag::SHAPED => {
                let shape = slot.shape.ok_or(DecodeError::NoShape)?;
                let previous = slot.previous.and_then(Value::as_object);
                // Same keys as the last shape: it stays the last one.
                Value::Object(self.object_body(depth + 1, previous, Some(shape))?.0)
            }
            tag::ARRAY => {
                if depth + 1 >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                let count = self.varint()?;
                // Each item takes at least a byte: a bigger count is a lie.
                if count > self.bytes.len() as u64 {
                    return Err(DecodeError::Truncated);
                }
                let item_slot = Slot {
                    previous: None,
                    shape: None,
                };
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(depth + 1, item_slot)?.0);
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
            tag::STRING_ENTRY => {
                let index = self.varint()?;
                Value::String(self.entry(index)?)
            }
            decimal if (tag::DECIMAL..tag::DECIMAL + 16).contains(&decimal) => {
                let mantissa = unzigzag(self.varint()?) as f64;
                float(mantissa / POWERS_OF_TEN[usize::from(decimal - tag::DECIMAL)])?
            }
            step if (tag::DELTA..tag::DELTA + 16).contains(&step) => {
                let delta = unzigzag(self.varint()?);
                if self.stateless {
                    Value::Null
                } else {
                    let previous = slot
                        .previous
                        .and_then(Value::as_f64)
                        .ok_or(DecodeError::NoPrevious)?;
                    let power = POWERS_OF_TEN[usize::from(step - tag::DELTA)];
                    let base = (previous * power).round();
                    float((base + delta as f64) / power)?
                }
            }
            small if (tag::SMALL_STEP..tag::SMALL_STEP + 64).contains(&small) => {
                if self.stateless {
                    Value::Null
                } else {
                    let (scale, base) = slot
                        .previous
                        .and_then(Value::as_f64)
                        .and_then(decimal)
                        .ok_or(DecodeError::NoPrevious)?;
                    let step = i64::from(small - tag::SMALL_STEP) + SMALL_STEPS.start();
                    float((base + step) as f64 / POWERS_OF_TEN[usize::from(scale)])?
                }
            }
            unknown => return Err(DecodeError::UnknownTag(unknown)),
        };
        Ok((value, None))
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

    /// The members of `{"key": value}` written with `previous` as the member's
    /// previous value.
    fn member(
        writer: &mut BinaryWriter<'_>,
        out: &mut Vec<u8>,
        key: &str,
        previous: Option<&Value>,
        value: &Value,
    ) {
        writer.key(out, key);
        writer.value(out, previous, value);
    }

    /// The first example of docs/runtime-protocol.md (no shapes, no steps).
    const GOLDEN: [u8; 25] = [
        0x01, 0x07, 0x01, 0x03, 0x04, b'l', b't', b'-', b'1', 0x00, 0x03, 0x0c, 0x03, 0x04, 0x12,
        0xe4, 0x48, 0x08, 0x05, 0x64, 0x03, 0x31, 0x00, 0x03, 0x03,
    ];

    /// The example of docs/runtime-protocol.md, also asserted by the TypeScript SDK.
    const GOLDEN_STEPS: [u8; 23] = [
        0x01, 0x08, 0x01, 0x04, 0x04, b'l', b't', b'-', b'2', 0x00, 0x03, 0x0c, 0x03, 0x04, 0x22,
        0x4a, 0x03, 0x10, 0x0a, 0x22, 0x31, 0x03, 0x03,
    ];

    #[test]
    fn the_documented_frames_encode_and_decode() {
        let mut table = KeyTable::default();
        let mut writer = BinaryWriter::entering(&mut table);
        let mut ignored = Vec::new();
        for name in ["heroes", "x", "y"] {
            writer.key(&mut ignored, name);
        }
        // A client that joined now holds those three entries.
        let mut keys = table.names().to_vec();

        let mut writer = BinaryWriter::entering(&mut table);
        let mut shared = Vec::new();
        writer.open_object();
        let mut heroes = Vec::new();
        writer.open_object();
        let mut hero = Vec::new();
        member(&mut writer, &mut hero, "x", None, &json!(46.58));
        member(&mut writer, &mut hero, "y", None, &json!(50));
        writer.close_object(&mut heroes, "lt-1", &hero);
        member(&mut writer, &mut heroes, "12", None, &Value::Null);
        writer.close_object(&mut shared, "heroes", &heroes);
        let frame = state_merge_frame(7, &writer.into_definitions(), &shared, &[]);
        assert_eq!(frame, GOLDEN);
        let (seq, merge) = decode_state_merge(&frame, &mut keys, Some(&json!({}))).unwrap();
        assert_eq!(seq, 7);
        assert_eq!(
            merge,
            json!({"heroes": {"lt-1": {"x": 46.58, "y": 50}, "12": null}})
        );
        assert_eq!(keys, table.names());

        // Seq 8: both heroes step; the second reuses the first one's keys.
        let state = json!({"heroes": {"lt-1": {"x": 46.58, "y": 50}, "lt-2": {"x": 1.5, "y": 2}}});
        let mut writer = BinaryWriter::entering(&mut table);
        let mut shared = Vec::new();
        writer.open_object();
        let mut heroes = Vec::new();
        for (hero_key, before, after) in [("lt-1", 46.58, 46.95), ("lt-2", 1.5, 1.25)] {
            writer.open_object();
            let mut hero = Vec::new();
            member(
                &mut writer,
                &mut hero,
                "x",
                Some(&json!(before)),
                &json!(after),
            );
            writer.close_object(&mut heroes, hero_key, &hero);
        }
        writer.close_object(&mut shared, "heroes", &heroes);
        let frame = state_merge_frame(8, &writer.into_definitions(), &shared, &[]);
        assert_eq!(frame, GOLDEN_STEPS);
        let (seq, merge) = decode_state_merge(&frame, &mut keys, Some(&state)).unwrap();
        assert_eq!(seq, 8);
        assert_eq!(
            merge,
            json!({"heroes": {"lt-1": {"x": 46.95}, "lt-2": {"x": 1.25}}})
        );
        assert_eq!(keys, names(&["heroes", "x", "y", "lt-1", "lt-2"]));
        // Without a state a reader still gets the shape, with `null` for each step.
        let mut stateless_keys = keys.clone();
        let (_, merge) = decode_state_merge(&frame, &mut stateless_keys, None).unwrap();
        assert_eq!(
            merge,
            json!({"heroes": {"lt-1": {"x": null}, "lt-2": {"x": null}}})
        );
    }

    /// `{"v": value}` through a fresh table, `previous` being the member's old value.
    fn round_trip(previous: Option<&Value>, value: &Value) -> (Value, usize) {
        let mut table = KeyTable::default();
        let mut writer = BinaryWriter::entering(&mut table);
        let mut members = Vec::new();
        member(&mut writer, &mut members, "v", previous, value);
        let frame = state_merge_frame(1, &writer.into_definitions(), &members, &[]);
        let mut keys = Vec::new();
        let state = previous.map(|previous| json!({"v": previous}));
        let (_, mut merge) =
            decode_state_merge(&frame, &mut keys, Some(&state.unwrap_or_default())).unwrap();
        (merge["v"].take(), frame.len())
    }

    fn assert_same_number(back: &Value, value: &Value) {
        assert_eq!(back, value, "{value}");
        assert_eq!(back.is_f64(), value.is_f64(), "{value}");
        if let (Some(a), Some(b)) = (back.as_f64(), value.as_f64()) {
            assert_eq!(a.to_bits(), b.to_bits(), "{value}");
        }
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
            assert_same_number(&round_trip(None, &value).0, &value);
        }
    }

    #[test]
    fn floats_step_from_their_previous_value_only_when_shorter() {
        let (back, stepped) = round_trip(Some(&json!(46.58)), &json!(46.95));
        assert_same_number(&back, &json!(46.95));
        let (_, absolute) = round_trip(None, &json!(46.95));
        assert!(stepped < absolute, "{stepped} vs {absolute}");
        // Up to 32 steps of the previous value's scale fit in the tag byte: one byte
        // less than a step with its scale.
        for (previous, value) in [
            (46.58, 46.83),
            (46.58, 46.27),
            (7.0, 38.0),
            (-0.5, -3.5),
            (1.25, 1.0),
        ] {
            let (back, small) = round_trip(Some(&json!(previous)), &json!(value));
            assert_same_number(&back, &json!(value));
            let (_, whole) = round_trip(None, &json!(value));
            assert!(small < whole, "{previous} -> {value}: {small} vs {whole}");
        }
        // A previous value whose scaled form lands exactly on a half: rounded away from
        // zero on both sides (the TypeScript SDK asserts the same numbers).
        for (previous, value) in [
            (-287_869_588_838.498_5, -287_869_588_838.498_4),
            (-287_869_588_838.498_5, -287_869_588_838.5),
        ] {
            let (back, _) = round_trip(Some(&json!(previous)), &json!(value));
            assert_same_number(&back, &json!(value));
        }
        let (_, small) = round_trip(Some(&json!(46.58)), &json!(46.89));
        let (_, larger) = round_trip(Some(&json!(46.58)), &json!(46.91));
        assert_eq!(larger, small + 1);
        // Integers, a jump as long as the value, and a previous value that is no
        // decimal are written whole.
        for (previous, value) in [
            (json!(4), json!(5)),
            (json!(0.5), json!(90_000.5)),
            (json!(std::f64::consts::PI), json!(1.01)),
            (json!("a"), json!(1.5)),
        ] {
            let (back, with_previous) = round_trip(Some(&previous), &value);
            assert_same_number(&back, &value);
            assert_eq!(
                with_previous,
                round_trip(None, &value).1,
                "{previous} -> {value}"
            );
        }
    }

    #[test]
    fn siblings_with_the_same_keys_are_shaped() {
        let value = json!({
            "a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 4}, "n": 5, "c": {"x": 6, "y": {"x": 7, "y": 8}},
            "d": {"y": 9}, "e": {"y": 10}, "list": [{"y": 11}, {"y": 12}],
        });
        assert_eq!(round_trip(None, &value).0, value);
        // Once the names are in the table, a second hero costs its key, the tag and
        // its two values (two bytes each): six bytes, not the nine of an object with
        // its keys and END.
        let mut table = KeyTable::default();
        let mut frame_len = |heroes: &Value| {
            let mut writer = BinaryWriter::entering(&mut table);
            let mut members = Vec::new();
            member(&mut writer, &mut members, "heroes", None, heroes);
            state_merge_frame(1, &writer.into_definitions(), &members, &[]).len()
        };
        frame_len(&json!({"ann": {"x": 1, "y": 2}, "bob": {}}));
        let one = frame_len(&json!({"ann": {"x": 1, "y": 2}}));
        let two = frame_len(&json!({"ann": {"x": 1, "y": 2}, "bob": {"x": 3, "y": 4}}));
        assert_eq!(two - one, 6);
    }

    #[test]
    fn hostile_frames_are_refused() {
        let mut keys = names(&["a"]);
        let state = json!({"a": "text"});
        let cases: [(&[u8], DecodeError); 14] = [
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
            (&[0x01, 0, 0, 0x00, 0x0a, 3], DecodeError::NoShape),
            (
                &[0x01, 0, 0, 0x00, 0x04, 2, 0x03, 3, 0x0a, 3],
                DecodeError::NoShape,
            ),
            (&[0x01, 0, 0, 0x00, 0x22, 0x02, 3], DecodeError::NoPrevious),
            (&[0x01, 0, 0, 0x00, 0x61, 3], DecodeError::NoPrevious),
            (
                &[
                    0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                DecodeError::BadNumber,
            ),
        ];
        for (frame, error) in cases {
            assert_eq!(
                decode_state_merge(frame, &mut keys, Some(&state)),
                Err(error),
                "{frame:02x?}"
            );
        }
        let nested = |levels: usize| {
            let mut frame = vec![0x01, 0, 0];
            for _ in 0..levels {
                frame.extend_from_slice(&[0x00, tag::OBJECT]);
            }
            frame.extend(std::iter::repeat_n(0x03, levels + 1));
            frame
        };
        assert!(decode_state_merge(&nested(MAX_DEPTH - 1), &mut keys, None).is_ok());
        assert_eq!(
            decode_state_merge(&nested(MAX_DEPTH), &mut keys, None),
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
        /// Whatever the bytes, decoding answers with a value or an error, never a panic
        /// (a client reads frames from the network).
        #[test]
        fn any_bytes_decode_or_are_refused(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            state in json_value(),
        ) {
            let mut frame = vec![FRAME_STATE_MERGE, 1, 0];
            frame.extend_from_slice(&body);
            let mut keys = names(&["a", "b"]);
            let _ = decode_state_merge(&frame, &mut keys, Some(&state));
            let _ = decode_state_merge(&frame, &mut keys, None);
            let _ = decode_definitions(&body, &mut keys);
        }

        /// Any JSON value survives the trip bit for bit, written fresh or as a step from
        /// any previous value, through a table the decoder rebuilds from the
        /// definitions alone.
        #[test]
        fn any_value_round_trips(values in proptest::collection::vec(json_value(), 1..4)) {
            let mut table = KeyTable::default();
            let mut keys = Vec::new();
            let mut state = json!({});
            for (seq, value) in values.iter().enumerate() {
                let mut writer = BinaryWriter::entering(&mut table);
                let mut members = Vec::new();
                member(&mut writer, &mut members, "value", state.get("value"), value);
                let frame = state_merge_frame(seq as u64, &writer.into_definitions(), &members, &[]);
                let (back_seq, merge) = decode_state_merge(&frame, &mut keys, Some(&state)).unwrap();
                proptest::prop_assert_eq!(back_seq, seq as u64);
                proptest::prop_assert_eq!(&merge["value"], value);
                if let (Some(a), Some(b)) = (merge["value"].as_f64(), value.as_f64()) {
                    proptest::prop_assert_eq!(a.to_bits(), b.to_bits());
                }
                proptest::prop_assert_eq!(&keys[..], table.names());
                state = merge;
            }
        }
    }
}
