//! Request bodies read at a cost proportional to their size. A JSON body parsed into
//! `serde_json::Value` costs 72 bytes per number, so a 16 MiB body of token ids would
//! take over 500 MiB. Here token-id lists (`prompt`, `tokens`) become `u32`s (4 bytes
//! each), and every other field is a `Value` drawn from a budget of
//! [`MAX_NODES`] JSON values per body (strings cost their bytes, as in the body).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::ApiError;

/// Most JSON values (numbers, strings, lists, objects…) one body may hold outside its
/// token-id lists: 65,536, about 4.5 MiB as `Value`s.
pub const MAX_NODES: usize = 1 << 16;

/// Keys whose value may be a long list of token ids (or a list of such lists).
const ID_KEYS: [&str; 2] = ["prompt", "tokens"];

/// A parsed request body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Body {
    /// Every field except token-id lists.
    pub fields: Map<String, Value>,
    /// `prompt` or `tokens` given as token ids: one list (`nested` false) or a list
    /// of lists.
    pub ids: Vec<(String, Ids)>,
}

/// Token ids of one field.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ids {
    pub lists: Vec<Vec<u32>>,
    pub nested: bool,
}

impl Body {
    /// Parses `bytes` (a JSON object).
    pub fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
        let budget = Cell::new(MAX_NODES);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let body = BodySeed(&budget)
            .deserialize(&mut de)
            .and_then(|b| de.end().map(|()| b))
            .map_err(|e| ApiError::bad(format!("Invalid JSON body: {e}"), None))?;
        Ok(body)
    }

    /// The same split for a body already held as a `Value` (tests, internal callers).
    pub fn from_value(v: Value) -> Result<Body, ApiError> {
        Body::parse(v.to_string().as_bytes())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The token ids given for `key`, if it held ids.
    pub fn ids(&self, key: &str) -> Option<&Ids> {
        self.ids.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether `key` is present (as a field or as token ids).
    pub fn has(&self, key: &str) -> bool {
        self.fields.contains_key(key) || self.ids(key).is_some()
    }
}

fn spend<E: de::Error>(budget: &Cell<usize>) -> Result<(), E> {
    match budget.get() {
        0 => Err(E::custom(format!(
            "the body holds more than {MAX_NODES} JSON values outside token-id lists"
        ))),
        n => {
            budget.set(n - 1);
            Ok(())
        }
    }
}

struct BodySeed<'a>(&'a Cell<usize>);

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Body;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Body, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = Body;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut body = Body::default();
        while let Some(key) = map.next_key::<String>()? {
            spend(self.0)?;
            if ID_KEYS.contains(&key.as_str()) {
                match map.next_value_seed(IdsOrValue(self.0))? {
                    Field::Ids(ids) => {
                        body.fields.shift_remove(&key);
                        body.ids.retain(|(k, _)| *k != key);
                        body.ids.push((key, ids));
                    }
                    Field::Value(v) => {
                        body.ids.retain(|(k, _)| *k != key);
                        body.fields.insert(key, v);
                    }
                }
            } else {
                let v = map.next_value_seed(Budgeted(self.0))?;
                body.fields.insert(key, v);
            }
        }
        Ok(body)
    }
}

/// Any JSON value, one unit of the budget per node.
struct Budgeted<'a>(&'a Cell<usize>);

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        spend(self.0)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        spend(self.0)?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        spend(self.0)?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        spend(self.0)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        spend(self.0)?;
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        spend(self.0)?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        spend(self.0)?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        spend(self.0)?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Budgeted(self.0))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        spend(self.0)?;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Budgeted(self.0))?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

enum Field {
    Ids(Ids),
    Value(Value),
}

/// A field that is token ids (`[1, 2]` or `[[1, 2], [3]]`) or any other value.
struct IdsOrValue<'a>(&'a Cell<usize>);

impl<'de> DeserializeSeed<'de> for IdsOrValue<'_> {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_any(self)
    }
}

/// The first element of a list decides what the list is.
enum First {
    Id(u32),
    List(Vec<u32>),
    Other(Value),
}

struct FirstSeed<'a>(&'a Cell<usize>);

impl<'de> DeserializeSeed<'de> for FirstSeed<'_> {
    type Value = First;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<First, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FirstSeed<'_> {
    type Value = First;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a token id, a list of token ids, or a string")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<First, E> {
        id(v).map(First::Id)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<First, E> {
        Budgeted(self.0).visit_i64(v).map(First::Other)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<First, E> {
        Budgeted(self.0).visit_f64(v).map(First::Other)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<First, E> {
        Budgeted(self.0).visit_bool(v).map(First::Other)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<First, E> {
        Budgeted(self.0).visit_str(v).map(First::Other)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<First, E> {
        Budgeted(self.0).visit_string(v).map(First::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<First, E> {
        Budgeted(self.0).visit_unit().map(First::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<First, A::Error> {
        Budgeted(self.0).visit_map(map).map(First::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<TokenId>()? {
            out.push(v.0);
        }
        Ok(First::List(out))
    }
}

fn id<E: de::Error>(v: u64) -> Result<u32, E> {
    u32::try_from(v).map_err(|_| E::custom(format!("token id {v} is out of range")))
}

/// One token id: a non-negative integer below 2^32.
struct TokenId(u32);

impl<'de> serde::Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TokenId, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TokenId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a token id (a non-negative integer)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TokenId, E> {
                id(v).map(TokenId)
            }
        }
        d.deserialize_u64(V)
    }
}

/// A list of token ids.
struct IdList(Vec<u32>);

impl<'de> serde::Deserialize<'de> for IdList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IdList, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of token ids")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IdList, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<TokenId>()? {
                    out.push(v.0);
                }
                Ok(IdList(out))
            }
        }
        d.deserialize_seq(V)
    }
}

impl<'de> Visitor<'de> for IdsOrValue<'_> {
    type Value = Field;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, a list of strings, or token ids")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        spend(self.0)?;
        match seq.next_element_seed(FirstSeed(self.0))? {
            None => Ok(Field::Value(Value::Array(vec![]))),
            Some(First::Id(first)) => {
                let mut ids = vec![first];
                while let Some(v) = seq.next_element::<TokenId>()? {
                    ids.push(v.0);
                }
                Ok(Field::Ids(Ids {
                    lists: vec![ids],
                    nested: false,
                }))
            }
            Some(First::List(first)) => {
                let mut lists = vec![first];
                while let Some(v) = seq.next_element::<IdList>()? {
                    spend(self.0)?;
                    lists.push(v.0);
                }
                Ok(Field::Ids(Ids {
                    lists,
                    nested: true,
                }))
            }
            Some(First::Other(v)) => {
                let mut out = vec![v];
                while let Some(v) = seq.next_element_seed(Budgeted(self.0))? {
                    out.push(v);
                }
                Ok(Field::Value(Value::Array(out)))
            }
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field, E> {
        Budgeted(self.0).visit_bool(v).map(Field::Value)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field, E> {
        Budgeted(self.0).visit_i64(v).map(Field::Value)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field, E> {
        Budgeted(self.0).visit_u64(v).map(Field::Value)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field, E> {
        Budgeted(self.0).visit_f64(v).map(Field::Value)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        Budgeted(self.0).visit_str(v).map(Field::Value)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Field, E> {
        Budgeted(self.0).visit_string(v).map(Field::Value)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Field, E> {
        Budgeted(self.0).visit_unit().map(Field::Value)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field, A::Error> {
        Budgeted(self.0).visit_map(map).map(Field::Value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_ids_are_read_as_u32_lists() {
        let b = Body::parse(br#"{"prompt": [1, 2, 3], "n": 2, "stop": ["a"]}"#).unwrap();
        assert_eq!(
            b.ids("prompt"),
            Some(&Ids {
                lists: vec![vec![1, 2, 3]],
                nested: false
            })
        );
        assert_eq!(b.get("n"), Some(&json!(2)));
        assert!(b.get("prompt").is_none() && b.has("prompt"));
        let b = Body::parse(br#"{"prompt": [[5], [6, 7], []]}"#).unwrap();
        assert_eq!(
            b.ids("prompt").unwrap().lists,
            vec![vec![5], vec![6, 7], vec![]]
        );
        assert!(b.ids("prompt").unwrap().nested);
    }

    #[test]
    fn other_prompts_stay_values() {
        let b = Body::parse(br#"{"prompt": ["a", "b"]}"#).unwrap();
        assert_eq!(b.get("prompt"), Some(&json!(["a", "b"])));
        let b = Body::parse(br#"{"prompt": "x"}"#).unwrap();
        assert_eq!(b.get("prompt"), Some(&json!("x")));
        let b = Body::parse(br#"{"prompt": [-1, 2]}"#).unwrap();
        assert_eq!(b.get("prompt"), Some(&json!([-1, 2])));
        assert!(Body::parse(br#"{"prompt": [1, "a"]}"#).is_err());
        assert!(Body::parse(br#"{"prompt": [1, 4294967296]}"#).is_err());
        assert!(Body::parse(br#"{"prompt": [[1], 2]}"#).is_err());
    }

    #[test]
    fn not_an_object_or_trailing_bytes_are_errors() {
        for b in [&b"[]"[..], b"null", b"5", b"{", b"{} x", b"\xff"] {
            assert!(Body::parse(b).is_err(), "{b:?}");
        }
    }

    #[test]
    fn values_outside_token_lists_are_budgeted() {
        let many = format!("{{\"junk\": [{}1]}}", "1,".repeat(MAX_NODES));
        let e = Body::parse(many.as_bytes()).unwrap_err();
        assert!(
            e.message.contains("more than 65536 JSON values"),
            "{}",
            e.message
        );
        // The same count as token ids is fine.
        let ids = format!("{{\"prompt\": [{}1]}}", "1,".repeat(MAX_NODES));
        assert_eq!(
            Body::parse(ids.as_bytes())
                .unwrap()
                .ids("prompt")
                .unwrap()
                .lists[0]
                .len(),
            MAX_NODES + 1
        );
    }
}
