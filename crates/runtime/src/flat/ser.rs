//! Serde straight into the flat form: a land's state written as [`FlatValue`] without
//! the `serde_json::Value` tree in between, whose allocations (a `String` per name, a
//! `BTreeMap` per object) and drop were the largest part of a sync.
//!
//! The result is what `FlatValue::new(&serde_json::to_value(x)?)` would hold, with
//! two differences that change no JSON document: members stay in the order the type
//! serialises them (`to_value` sorts them by name), and a map that names a member
//! twice keeps both (a `Value` keeps the last). Numbers, map keys, enums and bytes
//! come out as serde_json has them. What serde_json refuses here is refused too, as
//! are `RawValue`s, which the caller then takes through `to_value`.

use serde::ser::{self, Serialize};

use super::{FlatValue, FlatWriter, Open};

/// Why a value could not be written flat.
#[derive(Debug)]
pub(crate) struct FlatError(String);

impl std::fmt::Display for FlatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FlatError {}

impl ser::Error for FlatError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

fn key_must_be_a_string() -> FlatError {
    FlatError("key must be a string".to_owned())
}

/// `value` flat, into a buffer of `capacity` bytes to start with.
pub(crate) fn to_flat<T: Serialize + ?Sized>(
    value: &T,
    capacity: usize,
) -> Result<FlatValue, FlatError> {
    let mut writer = FlatWriter::with_capacity(capacity);
    value.serialize(&mut writer)?;
    Ok(writer.finish())
}

/// serde_json's private name for a `RawValue`, which it parses rather than nests.
const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// Narrow integers, written as their 64-bit kind.
macro_rules! widened {
    ($($method:ident: $type:ty => $wide_method:ident: $wide:ty),*) => {$(
        fn $method(self, v: $type) -> Result<(), FlatError> {
            self.$wide_method(<$wide>::from(v))
        }
    )*};
}

impl<'w> ser::Serializer for &'w mut FlatWriter {
    type Ok = ();
    type Error = FlatError;
    type SerializeSeq = Container<'w>;
    type SerializeTuple = Container<'w>;
    type SerializeTupleStruct = Container<'w>;
    type SerializeTupleVariant = Variant<'w>;
    type SerializeMap = Container<'w>;
    type SerializeStruct = Container<'w>;
    type SerializeStructVariant = Variant<'w>;

    fn serialize_bool(self, v: bool) -> Result<(), FlatError> {
        self.bool(v);
        Ok(())
    }

    widened!(
        serialize_i8: i8 => serialize_i64: i64,
        serialize_i16: i16 => serialize_i64: i64,
        serialize_i32: i32 => serialize_i64: i64,
        serialize_u8: u8 => serialize_u64: u64,
        serialize_u16: u16 => serialize_u64: u64,
        serialize_u32: u32 => serialize_u64: u64
    );

    fn serialize_i64(self, v: i64) -> Result<(), FlatError> {
        self.signed(v);
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), FlatError> {
        if let Ok(v) = u64::try_from(v) {
            self.unsigned(v);
        } else if let Ok(v) = i64::try_from(v) {
            self.signed(v);
        } else {
            return Err(FlatError("number out of range".to_owned()));
        }
        Ok(())
    }

    fn serialize_u64(self, v: u64) -> Result<(), FlatError> {
        self.unsigned(v);
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), FlatError> {
        let v = u64::try_from(v).map_err(|_| FlatError("number out of range".to_owned()))?;
        self.unsigned(v);
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), FlatError> {
        self.float(f64::from(v));
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), FlatError> {
        self.float(v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), FlatError> {
        self.string(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), FlatError> {
        self.string(v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), FlatError> {
        let open = self.open_array(v.len());
        for byte in v {
            self.unsigned(u64::from(*byte));
        }
        self.close(open);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), FlatError> {
        self.null();
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), FlatError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), FlatError> {
        self.null();
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), FlatError> {
        self.null();
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), FlatError> {
        self.string(variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), FlatError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), FlatError> {
        let open = self.open_object(1);
        self.key(variant);
        value.serialize(&mut *self)?;
        self.close(open);
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Container<'w>, FlatError> {
        Ok(Container::open(self, false))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Container<'w>, FlatError> {
        Ok(Container::open(self, false))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Container<'w>, FlatError> {
        Ok(Container::open(self, false))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Variant<'w>, FlatError> {
        Ok(Variant::open(self, variant, false))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Container<'w>, FlatError> {
        Ok(Container::open(self, true))
    }

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Container<'w>, FlatError> {
        if name == RAW_VALUE {
            return Err(FlatError("a RawValue is not written flat".to_owned()));
        }
        Ok(Container::open(self, true))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Variant<'w>, FlatError> {
        Ok(Variant::open(self, variant, true))
    }
}

/// An array or object being written, its count kept as its contents come.
pub(crate) struct Container<'w> {
    writer: &'w mut FlatWriter,
    open: Open,
}

impl<'w> Container<'w> {
    fn open(writer: &'w mut FlatWriter, object: bool) -> Self {
        let open = writer.open_uncounted(object);
        Self { writer, open }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FlatError> {
        self.open.count();
        value.serialize(&mut *self.writer)
    }

    fn member<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), FlatError> {
        self.open.count();
        self.writer.key(key);
        value.serialize(&mut *self.writer)
    }

    fn close(self) -> Result<(), FlatError> {
        self.writer.close(self.open);
        Ok(())
    }
}

/// The serde traits for arrays: each element counted and written in turn.
macro_rules! array_container {
    ($($trait:ident::$method:ident),*) => {$(
        impl ser::$trait for Container<'_> {
            type Ok = ();
            type Error = FlatError;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FlatError> {
                self.element(value)
            }

            fn end(self) -> Result<(), FlatError> {
                self.close()
            }
        }
    )*};
}

array_container!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field
);

impl ser::SerializeMap for Container<'_> {
    type Ok = ();
    type Error = FlatError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), FlatError> {
        self.open.count();
        key.serialize(MapKey(&mut *self.writer))
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FlatError> {
        value.serialize(&mut *self.writer)
    }

    fn end(self) -> Result<(), FlatError> {
        self.close()
    }
}

impl ser::SerializeStruct for Container<'_> {
    type Ok = ();
    type Error = FlatError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), FlatError> {
        self.member(key, value)
    }

    fn end(self) -> Result<(), FlatError> {
        self.close()
    }
}

/// `{"variant": [...]}` or `{"variant": {...}}`, as serde_json writes enum variants.
pub(crate) struct Variant<'w> {
    outer: Open,
    inner: Container<'w>,
}

impl<'w> Variant<'w> {
    fn open(writer: &'w mut FlatWriter, variant: &str, object: bool) -> Self {
        let outer = writer.open_object(1);
        writer.key(variant);
        Self {
            outer,
            inner: Container::open(writer, object),
        }
    }

    fn close(self) -> Result<(), FlatError> {
        let Container { writer, open } = self.inner;
        writer.close(open);
        writer.close(self.outer);
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Variant<'_> {
    type Ok = ();
    type Error = FlatError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FlatError> {
        self.inner.element(value)
    }

    fn end(self) -> Result<(), FlatError> {
        self.close()
    }
}

impl ser::SerializeStructVariant for Variant<'_> {
    type Ok = ();
    type Error = FlatError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), FlatError> {
        self.inner.member(key, value)
    }

    fn end(self) -> Result<(), FlatError> {
        self.close()
    }
}

/// Integer map keys, written as their decimal text.
macro_rules! integer_keys {
    ($($method:ident: $type:ty),*) => {$(
        fn $method(self, v: $type) -> Result<(), FlatError> {
            self.integer(v)
        }
    )*};
}

/// A map key, written as serde_json writes one: strings as they are, numbers, bools
/// and chars as their text; anything else is refused.
struct MapKey<'w>(&'w mut FlatWriter);

impl MapKey<'_> {
    fn text(self, text: &str) -> Result<(), FlatError> {
        self.0.key(text);
        Ok(())
    }

    fn integer(self, v: impl itoa::Integer) -> Result<(), FlatError> {
        self.text(itoa::Buffer::new().format(v))
    }

    fn float<F: Serialize>(self, v: F, finite: bool) -> Result<(), FlatError> {
        if !finite {
            return Err(FlatError("float key must be finite".to_owned()));
        }
        let text = serde_json::to_string(&v).map_err(|err| FlatError(err.to_string()))?;
        self.text(&text)
    }
}

impl ser::Serializer for MapKey<'_> {
    type Ok = ();
    type Error = FlatError;
    type SerializeSeq = ser::Impossible<(), FlatError>;
    type SerializeTuple = ser::Impossible<(), FlatError>;
    type SerializeTupleStruct = ser::Impossible<(), FlatError>;
    type SerializeTupleVariant = ser::Impossible<(), FlatError>;
    type SerializeMap = ser::Impossible<(), FlatError>;
    type SerializeStruct = ser::Impossible<(), FlatError>;
    type SerializeStructVariant = ser::Impossible<(), FlatError>;

    fn serialize_bool(self, v: bool) -> Result<(), FlatError> {
        self.text(if v { "true" } else { "false" })
    }

    integer_keys!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128
    );

    fn serialize_f32(self, v: f32) -> Result<(), FlatError> {
        self.float(v, v.is_finite())
    }

    fn serialize_f64(self, v: f64) -> Result<(), FlatError> {
        self.float(v, v.is_finite())
    }

    fn serialize_char(self, v: char) -> Result<(), FlatError> {
        self.text(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), FlatError> {
        self.text(v)
    }

    fn serialize_bytes(self, _v: &[u8]) -> Result<(), FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_none(self) -> Result<(), FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_unit(self) -> Result<(), FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), FlatError> {
        self.text(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), FlatError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, FlatError> {
        Err(key_must_be_a_string())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, FlatError> {
        Err(key_must_be_a_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;
    use serde_json::json;

    use super::to_flat;

    #[derive(Serialize)]
    enum Shape {
        Dot,
        Circle(f32),
        Line(i8, i8),
        Box { width: u16, height: u16 },
    }

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize)]
    struct Id(u64);

    #[derive(Serialize)]
    struct State {
        phase: &'static str,
        ratio: f32,
        far: f64,
        nan: f64,
        negative: i32,
        big: u64,
        wide: i128,
        letter: char,
        maybe: Option<u8>,
        nothing: Option<u8>,
        unit: Unit,
        id: Id,
        pair: (bool, String),
        #[serde(with = "serde_bytes_as_seq")]
        bytes: Vec<u8>,
        shapes: Vec<Shape>,
        by_number: BTreeMap<u32, &'static str>,
        by_shape: BTreeMap<char, i64>,
        by_flag: BTreeMap<bool, u8>,
        empty: Vec<u8>,
        empty_map: BTreeMap<String, u8>,
    }

    /// `serialize_bytes`, which serde's derive only calls when asked to.
    mod serde_bytes_as_seq {
        pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(bytes)
        }
    }

    #[test]
    fn a_state_written_flat_is_what_serde_json_makes_of_it() {
        let state = State {
            phase: "wave \"2\"",
            ratio: 1.1,
            far: 1e300,
            nan: f64::NAN,
            negative: -7,
            big: u64::MAX,
            wide: -5,
            letter: 'é',
            maybe: Some(3),
            nothing: None,
            unit: Unit,
            id: Id(42),
            pair: (true, "x/y~z".to_owned()),
            bytes: vec![0, 255],
            shapes: vec![
                Shape::Dot,
                Shape::Circle(0.5),
                Shape::Line(-1, 2),
                Shape::Box {
                    width: 3,
                    height: 4,
                },
            ],
            by_number: BTreeMap::from([(2, "two"), (10, "ten")]),
            by_shape: BTreeMap::from([('a', -1)]),
            by_flag: BTreeMap::from([(true, 1)]),
            empty: Vec::new(),
            empty_map: BTreeMap::new(),
        };
        let flat = to_flat(&state, 0).unwrap();
        assert_eq!(flat.to_value(), serde_json::to_value(&state).unwrap());
        // Members stay in the order the type gives them.
        let json = flat.root().to_json();
        assert!(
            json.starts_with(r#"{"phase":"wave \"2\"","ratio":1.100000023841858,"#),
            "{json}"
        );
        assert!(
            json.contains(r#""by_number":{"2":"two","10":"ten"}"#),
            "{json}"
        );
    }

    #[test]
    fn what_serde_json_refuses_is_refused() {
        assert!(to_flat(&BTreeMap::from([(vec![1u8], 1)]), 0).is_err());
        assert!(to_flat(&BTreeMap::from([((), 1)]), 0).is_err());
        assert!(to_flat(&u128::MAX, 0).is_err());
        let raw = serde_json::value::to_raw_value(&json!({"a": 1})).unwrap();
        assert!(to_flat(&raw, 0).is_err());
    }
}
