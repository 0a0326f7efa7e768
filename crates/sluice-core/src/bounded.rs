//! One decoder for every value that comes from outside — trigger payloads (JSON or
//! MessagePack) and HTTP bodies — with the same limits: nesting depth, number of elements,
//! integers that fit 64 bits, and no duplicate keys. A value past a limit is refused with
//! a reason that names it; nothing is coerced.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// How deep arrays and objects may nest.
pub const MAX_DEPTH: usize = 64;
/// How many array elements and object members a value may hold in all.
pub const MAX_ELEMENTS: usize = 100_000;

/// A JSON text as a value, within the limits.
pub fn from_json(bytes: &[u8]) -> Result<Value, String> {
    check_integer_literals(bytes)?;
    let mut budget = MAX_ELEMENTS;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Bounded {
        depth: 0,
        budget: &mut budget,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// A MessagePack value, within the limits.
pub fn from_msgpack(bytes: &[u8]) -> Result<Value, String> {
    let mut budget = MAX_ELEMENTS;
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    Bounded {
        depth: 0,
        budget: &mut budget,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())
}

/// A JSON value built while counting depth and elements, refusing duplicate keys.
struct Bounded<'a> {
    depth: usize,
    budget: &'a mut usize,
}

impl Bounded<'_> {
    fn child(&mut self) -> Bounded<'_> {
        Bounded {
            depth: self.depth + 1,
            budget: self.budget,
        }
    }

    fn spend<E: de::Error>(&mut self) -> Result<(), E> {
        if *self.budget == 0 {
            return Err(E::custom(format!(
                "more than {MAX_ELEMENTS} elements in all"
            )));
        }
        *self.budget -= 1;
        Ok(())
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!(
                "nested more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::from)
            .or_else(|_| u64::try_from(v).map(Value::from))
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(Value::from)
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can hold")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        String::from_utf8(v.to_vec())
            .map(Value::String)
            .map_err(|_| E::custom("binary data that is not UTF-8 text"))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut items = Vec::new();
        loop {
            self.spend()?;
            match seq.next_element_seed(self.child())? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.spend()?;
            if members.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(self.child())?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

/// Refuses integer literals (no fraction, no exponent) outside 64 bits, which a JSON parser
/// would otherwise turn into a float.
fn check_integer_literals(bytes: &[u8]) -> Result<(), String> {
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let is_float = i < bytes.len() && matches!(bytes[i], b'.' | b'e' | b'E');
            if !is_float {
                let literal = std::str::from_utf8(&bytes[start..i]).unwrap_or_default();
                let fits = literal.parse::<i64>().is_ok() || literal.parse::<u64>().is_ok();
                if !fits && literal != "-" {
                    return Err(format!("integer {literal} does not fit in 64 bits"));
                }
            }
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || bytes[i] == b'.'
                    || bytes[i] == b'+'
                    || bytes[i] == b'-')
            {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_within_the_limits_decode_as_they_are() {
        let text =
            br#"{"a": [1, -2, 18446744073709551615, 1.5e300, "x\"1e999"], "b": {"c": null}}"#;
        assert_eq!(
            from_json(text).unwrap(),
            json!({"a": [1, -2, 18446744073709551615u64, 1.5e300, "x\"1e999"], "b": {"c": null}})
        );
        let packed = rmp_serde::to_vec(&json!({"a": [1, "x"]})).unwrap();
        assert_eq!(from_msgpack(&packed).unwrap(), json!({"a": [1, "x"]}));
    }

    #[test]
    fn what_is_past_a_limit_is_refused_with_the_reason() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(
            from_json(deep.as_bytes())
                .unwrap_err()
                .contains("nested more than 64")
        );
        let mut value = json!(1);
        for _ in 0..200 {
            value = json!([value]);
        }
        let packed = rmp_serde::to_vec(&value).unwrap();
        assert!(
            from_msgpack(&packed)
                .unwrap_err()
                .contains("nested more than 64")
        );
        assert!(
            from_json(br#"{"a": 1, "a": 2}"#)
                .unwrap_err()
                .contains("duplicate key \"a\"")
        );
        assert!(
            from_json(b"[123456789012345678901234567890]")
                .unwrap_err()
                .contains("integer 123456789012345678901234567890 does not fit")
        );
        let wide = format!("[{}0]", "0,".repeat(MAX_ELEMENTS));
        assert!(from_json(wide.as_bytes()).unwrap_err().contains("elements"));
    }
}
