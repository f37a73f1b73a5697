//! JSON objects parsed the way a security token (and a callout body) must be: a member that
//! appears twice is an error, at any depth. serde_json keeps the last duplicate silently, so two parsers (ours and
//! whoever minted or inspects the token) could disagree on what a claim says.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

#[derive(Debug, PartialEq, Eq)]
pub enum StrictError {
    NotJson,
    NotAnObject,
    Duplicate,
}

const DUPLICATE: &str = "duplicate member";
/// Nesting bound: tokens are flat and callouts a few levels deep; a deeply nested document is
/// an attack on the parser.
const MAX_DEPTH: usize = 16;

/// Parses `bytes` as one JSON object with no duplicated member names anywhere.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, StrictError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = match StrictValue::deserialize_at(&mut de, 0) {
        Ok(v) => v,
        Err(e) if e.to_string().starts_with(DUPLICATE) => return Err(StrictError::Duplicate),
        Err(_) => return Err(StrictError::NotJson),
    };
    de.end().map_err(|_| StrictError::NotJson)?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(StrictError::NotAnObject),
    }
}

/// Whether any object in `v` (at any depth) has two member names equal but for ASCII case.
/// Readers that look members up case-insensitively ([`crate::json_lookup`]) would pick one of
/// them; another parser might pick the other.
pub fn has_case_variants(m: &Map<String, Value>) -> bool {
    // Pairwise for the small objects callouts have; a set for a large (hostile) one.
    let clash = if m.len() <= 16 {
        let keys: Vec<&String> = m.keys().collect();
        keys.iter()
            .enumerate()
            .any(|(i, a)| keys[i + 1..].iter().any(|b| a.eq_ignore_ascii_case(b)))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(m.len());
        !m.keys().all(|k| seen.insert(k.to_ascii_lowercase()))
    };
    clash || m.values().any(value_has_case_variants)
}

fn value_has_case_variants(v: &Value) -> bool {
    match v {
        Value::Object(m) => has_case_variants(m),
        Value::Array(a) => a.iter().any(value_has_case_variants),
        _ => false,
    }
}

struct StrictValue;

impl StrictValue {
    fn deserialize_at<'de, D: Deserializer<'de>>(d: D, depth: usize) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor { depth })
    }
}

struct Seed {
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize_at(d, self.depth)
    }
}

struct ValueVisitor {
    depth: usize,
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
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
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("too deep"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed {
            depth: self.depth + 1,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("too deep"));
        }
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Seed {
                depth: self.depth + 1,
            })?;
            if out.insert(k, v).is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(out))
    }
}

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StrictValue::deserialize_at(d, 0).map(|_| StrictValue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_variants_are_found_at_any_depth_in_small_and_large_objects() {
        let m = |v: Value| v.as_object().unwrap().clone();
        assert!(!has_case_variants(&m(
            serde_json::json!({"Stage": 1, "data": {"a": [{"b": 1}]}})
        )));
        assert!(has_case_variants(&m(
            serde_json::json!({"Stage": 1, "stage": 2})
        )));
        assert!(has_case_variants(&m(
            serde_json::json!({"x": [{"Id": 1, "ID": 2}]})
        )));
        let mut large = Map::new();
        for i in 0..40 {
            large.insert(format!("k{i}"), Value::Null);
        }
        assert!(!has_case_variants(&large));
        large.insert("K7".into(), Value::Null);
        assert!(has_case_variants(&large));
    }

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        assert!(parse_object(br#"{"a":1,"b":{"c":2}}"#).is_ok());
        assert_eq!(
            parse_object(br#"{"a":1,"a":2}"#),
            Err(StrictError::Duplicate)
        );
        assert_eq!(
            parse_object(br#"{"cnf":{"jwk":{"n":"x","n":"y"}}}"#),
            Err(StrictError::Duplicate)
        );
        // Escapes are decoded before comparing: "\u0061" is "a".
        assert_eq!(
            parse_object(br#"{"a":1,"\u0061":2}"#),
            Err(StrictError::Duplicate)
        );
    }

    #[test]
    fn non_objects_and_garbage_are_told_apart() {
        assert_eq!(parse_object(b"[1]"), Err(StrictError::NotAnObject));
        assert_eq!(parse_object(b"{"), Err(StrictError::NotJson));
        assert_eq!(parse_object(b"{} x"), Err(StrictError::NotJson));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(parse_object(deep.as_bytes()), Err(StrictError::NotJson));
    }
}
