//! JSON read without losing anything: every number is kept as the text it was sent as (`78.90`
//! stays `78.90`, a 30-digit id stays whole), members keep their order.
//!
//! `serde_json::Value` turns numbers into `f64`/`i64`; its `arbitrary_precision` feature would
//! keep the text but changes how every other crate in the build sees numbers. So this reads the
//! body in one pass with `jiter` (pydantic's strict JSON iterator), which hands out each
//! number's bytes as written.

use schemars::JsonSchema;
use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value whose numbers are their exact text.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Json {
    #[default]
    Null,
    Bool(bool),
    /// The number exactly as written (`78.90`, `-1e3`).
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members in the order sent.
    Object(Vec<(String, Json)>),
}

/// Nesting deeper than this is refused (a body is data, not a stack exhaustion attempt).
const MAX_DEPTH: usize = 128;

/// Why [`Json::parse`] stopped.
enum Walk {
    Jiter(jiter::JiterError),
    TooDeep,
}

impl From<jiter::JiterError> for Walk {
    fn from(e: jiter::JiterError) -> Self {
        Walk::Jiter(e)
    }
}

impl Json {
    /// Parses JSON text (strict JSON: no `NaN`, no trailing commas or text).
    pub fn parse(text: &str) -> Result<Json, serde_json::Error> {
        let mut iter = jiter::Jiter::new(text.as_bytes());
        let mut read = || -> Result<Json, Walk> {
            let peek = iter.peek()?;
            let json = Self::walk(&mut iter, peek, 0)?;
            iter.finish()?;
            Ok(json)
        };
        let parsed = read();
        parsed.map_err(|e| match e {
            Walk::Jiter(e) => serde::de::Error::custom(format!(
                "{} at {}",
                e.error_type,
                iter.error_position(e.index)
            )),
            Walk::TooDeep => serde::de::Error::custom("JSON nested too deeply"),
        })
    }

    fn walk(iter: &mut jiter::Jiter<'_>, peek: jiter::Peek, depth: usize) -> Result<Json, Walk> {
        use jiter::Peek;
        if depth > MAX_DEPTH {
            return Err(Walk::TooDeep);
        }
        Ok(match peek {
            Peek::Null => {
                iter.known_null()?;
                Json::Null
            }
            Peek::True | Peek::False => Json::Bool(iter.known_bool(peek)?),
            Peek::String => Json::String(iter.known_str()?.to_owned()),
            Peek::Array => {
                let mut items = Vec::new();
                let mut next = iter.known_array()?;
                while let Some(peek) = next {
                    items.push(Self::walk(iter, peek, depth + 1)?);
                    next = iter.array_step()?;
                }
                Json::Array(items)
            }
            Peek::Object => {
                let mut members = Vec::new();
                let mut key = iter.known_object()?.map(str::to_owned);
                while let Some(k) = key {
                    let peek = iter.peek()?;
                    members.push((k, Self::walk(iter, peek, depth + 1)?));
                    key = iter.next_key()?.map(str::to_owned);
                }
                Json::Object(members)
            }
            // A number's bytes are ASCII digits, signs, `.`, `e`/`E`.
            _ => Json::Number(String::from_utf8_lossy(iter.known_number_bytes(peek)?).into_owned()),
        })
    }

    /// The member `key` of an object (the last one, when a key repeats).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The member `key` of an object, to change in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Object(members) => members
                .iter_mut()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets the member `key` of an object (replacing it where it is, else appending it); does
    /// nothing to anything but an object.
    pub fn set(&mut self, key: &str, value: Json) {
        if let Some(slot) = self.get_mut(key) {
            *slot = value;
        } else if let Json::Object(members) = self {
            members.push((key.to_owned(), value));
        }
    }

    /// Removes every member `key` of an object.
    pub fn remove(&mut self, key: &str) {
        if let Json::Object(members) = self {
            members.retain(|(k, _)| k != key);
        }
    }

    /// The items of an array; nothing for anything else.
    pub fn items(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            _ => &[],
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// The JSON type's name, for messages (`object`, `array`, `string`, `number`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Number(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }
}

/// Compact JSON text, numbers as written.
impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

impl From<&serde_json::Value> for Json {
    fn from(value: &serde_json::Value) -> Self {
        use serde_json::Value;
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.to_string()),
            Value::String(s) => Json::String(s.clone()),
            Value::Array(a) => Json::Array(a.iter().map(Json::from).collect()),
            Value::Object(o) => {
                Json::Object(o.iter().map(|(k, v)| (k.clone(), Json::from(v))).collect())
            }
        }
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            // Written as the same text (serde_json writes a raw value verbatim).
            Json::Number(text) => RawValue::from_string(text.clone())
                .map_err(serde::ser::Error::custom)?
                .serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    /// Through `serde_json::Value` (numbers lose their text): for reading messages back, e.g. in
    /// tests; bodies from Tradecloud are read with [`Json::parse`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(|v| Json::from(&v))
    }
}

impl JsonSchema for Json {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyJson".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Any JSON, as Tradecloud sent it (numbers with their exact text)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn numbers_keep_their_text_and_members_their_order() {
        let text = r#"{"b": 78.90, "a": [1, -0.500, 1e3, 123456789012345678901234567890], "s": "x\"y", "t": true, "n": null}"#;
        let json = Json::parse(text).unwrap();
        assert_eq!(json.get("b"), Some(&Json::Number("78.90".to_owned())));
        let a: Vec<&Json> = json.get("a").unwrap().items().iter().collect();
        assert_eq!(
            a,
            [
                &Json::Number("1".to_owned()),
                &Json::Number("-0.500".to_owned()),
                &Json::Number("1e3".to_owned()),
                &Json::Number("123456789012345678901234567890".to_owned())
            ]
        );
        assert_eq!(json.get("s"), Some(&Json::String("x\"y".to_owned())));
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"b":78.90,"a":[1,-0.500,1e3,123456789012345678901234567890],"s":"x\"y","t":true,"n":null}"#
        );
        let Json::Object(members) = &json else {
            panic!()
        };
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "s", "t", "n"]);
    }

    #[test]
    fn bad_or_deep_input_is_an_error_not_a_crash() {
        assert!(Json::parse("{\"a\": }").is_err());
        assert!(Json::parse("[1, 2").is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(Json::parse(&deep).is_err());
        let deep_objects = "{\"a\":".repeat(200) + "1" + &"}".repeat(200);
        assert!(Json::parse(&deep_objects).is_err());
        for strict in [
            "NaN",
            "-Infinity",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\":1} x",
            "01",
            "'a'",
        ] {
            assert!(Json::parse(strict).is_err(), "{strict}");
        }
        assert_eq!(
            Json::parse(r#""\u00e9\ud83d\ude00\n""#).unwrap(),
            Json::String("\u{e9}\u{1f600}\n".to_owned())
        );
        assert_eq!(
            Json::parse(" 7.0 ").unwrap(),
            Json::Number("7.0".to_owned())
        );
    }
}
