//! The field names a `Deserialize` struct accepts, read from serde's own metadata: serde hands them to
//! `deserialize_struct`, so a deserializer that stops there learns them without a separate list to drift.

use serde::{
    de::{self, Visitor},
    forward_to_deserialize_any, Deserialize, Deserializer,
};

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names read")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Stop
    }
}

struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The keys `T` accepts, or `None` if `T` is not a plain struct (maps, enums, custom impls).
pub fn field_names<'de, T: Deserialize<'de>>() -> Option<&'static [&'static str]> {
    let mut fields = None;
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Example {
        alpha: u32,
        #[serde(rename = "beta_key")]
        beta: String,
        #[serde(default)]
        gamma: Option<f64>,
    }

    #[test]
    fn reads_serde_field_names_including_renames() {
        assert_eq!(field_names::<Example>(), Some(&["alpha", "beta_key", "gamma"][..]));
        assert_eq!(field_names::<std::collections::HashMap<String, u32>>(), None);
    }
}
