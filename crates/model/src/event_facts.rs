//! The routing facts of a webhook body, read in one pass without building the body's tree.
//!
//! The ingress validates every POSTed body and reads a handful of facts from it (the event name,
//! the order ids, Tradecloud's message id). Parsing into a `serde_json::Value` allocates a node
//! per member, which was a quarter of the ingress's CPU per request; this reads the same facts
//! with the same parser (so the same syntax errors and nesting limit), keeping only strings it
//! needs. What it reads matches `Value`'s view of the body: of duplicate names the last counts,
//! and members are visited in name order.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// One top-level member of a body: its text (when it is a string) and, when it is an object,
/// the strings among its `orderId`, `legacyOrderId`, `messageId` and `meta.messageId`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub text: Option<String>,
    pub order_id: Option<String>,
    pub legacy_order_id: Option<String>,
    pub message_id: Option<String>,
    pub meta_message_id: Option<String>,
}

impl Member {
    /// `orderId` or `legacyOrderId` (any other name: none).
    pub fn id(&self, field: &str) -> Option<&str> {
        match field {
            "orderId" => self.order_id.as_deref(),
            "legacyOrderId" => self.legacy_order_id.as_deref(),
            _ => None,
        }
    }
}

/// A body's top-level members by name; `None` when the body is JSON but not an object.
pub(crate) fn read(body: &[u8]) -> Result<Option<BTreeMap<String, Member>>, serde_json::Error> {
    serde_json::from_slice::<TopLevel>(body).map(|t| t.0)
}

/// The same facts of a body already read as a `Value` (a tXML body, rendered as JSON).
pub(crate) fn from_value(body: &serde_json::Value) -> Option<BTreeMap<String, Member>> {
    use serde_json::Value;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    Some(
        body.as_object()?
            .iter()
            .map(|(k, m)| {
                let member = Member {
                    text: m.as_str().map(str::to_owned),
                    order_id: text(m.get("orderId")),
                    legacy_order_id: text(m.get("legacyOrderId")),
                    message_id: text(m.get("messageId")),
                    meta_message_id: text(m.get("meta").and_then(|m| m.get("messageId"))),
                };
                (k.clone(), member)
            })
            .collect(),
    )
}

struct TopLevel(Option<BTreeMap<String, Member>>);

impl<'de> de::Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

/// Skips what a visitor does not keep (any scalar, an array's elements).
macro_rules! skip_scalars {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok($value)
        }
    };
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    skip_scalars!(TopLevel(None));

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TopLevel(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            members.insert(name, map.next_value::<MemberSeed>()?.0);
        }
        Ok(TopLevel(Some(members)))
    }
}

struct MemberSeed(Member);

impl<'de> de::Deserialize<'de> for MemberSeed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MemberVisitor).map(MemberSeed)
    }
}

struct MemberVisitor;

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Member;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    skip_scalars!(Member::default());

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Member {
            text: Some(v.to_owned()),
            ..Member::default()
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut member = Member::default();
        while let Some(name) = map.next_key::<Name>()? {
            match name {
                Name::OrderId => member.order_id = map.next_value::<Text>()?.0,
                Name::LegacyOrderId => member.legacy_order_id = map.next_value::<Text>()?.0,
                Name::MessageId => member.message_id = map.next_value::<Text>()?.0,
                Name::Meta => member.meta_message_id = map.next_value::<MemberSeed>()?.0.message_id,
                Name::Other => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(member)
    }
}

/// The member names read, without allocating any name.
enum Name {
    OrderId,
    LegacyOrderId,
    MessageId,
    Meta,
    Other,
}

impl<'de> de::Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
                Ok(match v {
                    "orderId" => Name::OrderId,
                    "legacyOrderId" => Name::LegacyOrderId,
                    "messageId" => Name::MessageId,
                    "meta" => Name::Meta,
                    _ => Name::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Any value, skipped through the parser's `deserialize_any` (not `IgnoredAny`, whose fast skip
/// has no nesting limit): a body nested deeper than `serde_json::Value` takes is refused alike.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            skip_scalars!(Skip);
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// A string value, or nothing for any other value.
struct Text(Option<String>);

impl<'de> de::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            skip_scalars!(Text(None));
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(Some(v.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Text(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    /// What `Value` says of the same body, member by member.
    fn by_value(body: &str) -> Option<BTreeMap<String, Member>> {
        from_value(&serde_json::from_str(body).unwrap())
    }

    #[test]
    fn reads_what_value_reads() {
        for body in [
            r#"{"eventName":"E","orderEvent":{"orderId":"o-1","meta":{"messageId":"m-1"}}}"#,
            r#"{"eventName":"E","meta":{"messageId":"m-top","orderId":"x"},"b":{"orderId":7}}"#,
            // Duplicate names: the last counts, also when it is not a string.
            r#"{"eventName":"A","eventName":"B","e":{"orderId":"1","orderId":{"a":1}}}"#,
            r#"{"e":{"legacyOrderId":"9","meta":[1,{"messageId":"no"}],"x":[{"orderId":"no"}]}}"#,
            r#"{"eventName":"E\u00e9\n","z":{"orderId":"\"q\""},"a":{"orderId":"first"}}"#,
            r#"{"n":null,"t":true,"f":1.5e3,"i":-3,"s":[],"o":{}}"#,
            "[1,2]",
            "\"text\"",
            "12",
            " {} ",
        ] {
            assert_eq!(read(body.as_bytes()).unwrap(), by_value(body), "{body}");
        }
    }

    #[test]
    fn refuses_what_value_refuses() {
        for body in [
            "",
            "{",
            r#"{"a":}"#,
            r#"{"a":1}x"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":1e400}"#,
            &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
            &format!(r#"{{"a":{}1{}}}"#, "{\"b\":".repeat(200), "}".repeat(200)),
        ] {
            let value = serde_json::from_str::<Value>(body).unwrap_err();
            let facts = read(body.as_bytes()).unwrap_err();
            assert_eq!(facts.to_string(), value.to_string(), "{body}");
        }
    }
}
