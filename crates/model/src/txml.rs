//! tXML: Tradecloud's XML rendering of its webhook JSON, which the current connector can send
//! instead (`Content-Type: application/xml`). Tradecloud calls it "a 1-on-1 translation of the
//! proprietary JSON format"; no public sample exists, so the shape read here is an assumption,
//! written down in `docs/connector.md` to be checked against the first real tXML webhook:
//!
//! * the root element (any name) stands for the JSON body object; each child element is a member,
//!   named as the JSON key;
//! * an element with child elements is an object, one with text only is a string (decimals stay
//!   text; the model accepts numbers as strings), an empty one is `null`;
//! * an array is either the element repeated (`<lines>..</lines><lines>..</lines>`) or a wrapper
//!   holding one element per item (`<lines><line>..</line><line>..</line></lines>`); for the
//!   members Tradecloud documents as arrays ([`ARRAY_FIELDS`]) a single occurrence is an array of
//!   one, for any other member a repeated element is an array;
//! * attributes (namespaces, `xsi:*`) are ignored.
//!
//! Parsed with quick-xml: no DTD is accepted (a `<!DOCTYPE` is refused), and no entity other than
//! XML's five predefined ones and character references is expanded, so an "entity bomb" or an
//! external entity cannot be expressed.

use quick_xml::events::Event;
use serde_json::{Map, Value};

/// Members Tradecloud documents as arrays.
pub const ARRAY_FIELDS: [&str; 10] = [
    "lines",
    "deliverySchedule",
    "deliveryScheduleIncludingRequests",
    "scheduledDeliveries",
    "chargeLines",
    "properties",
    "notes",
    "labels",
    "documents",
    "attachments",
];

/// Elements nested deeper than this are refused.
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TxmlError {
    #[error("the XML does not parse: {0}")]
    Parse(String),
    #[error("a DTD (<!DOCTYPE ...>) is not accepted")]
    Dtd,
    #[error(
        "the entity &{0}; is not accepted (only XML's predefined entities and character references)"
    )]
    Entity(String),
    #[error("elements are nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("the XML has no root element with fields")]
    Empty,
}

/// A `Content-Type`'s media type, lower case, without parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a `Content-Type` is XML: `application/xml`, `text/xml` or `application/*+xml`.
pub fn is_xml(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/xml"
        || essence == "text/xml"
        || (essence.starts_with("application/") && essence.ends_with("+xml"))
}

/// Whether a `Content-Type` is JSON: `application/json` or `application/*+json`.
pub fn is_json(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[derive(Default)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
    /// `<x/>` (null) rather than `<x></x>` (an empty string).
    self_closing: bool,
}

fn parse_error(e: impl std::fmt::Display) -> TxmlError {
    TxmlError::Parse(e.to_string())
}

fn local_name(raw: &[u8]) -> Result<String, TxmlError> {
    let name = std::str::from_utf8(raw).map_err(parse_error)?;
    Ok(name.rsplit(':').next().unwrap_or(name).to_owned())
}

fn tree(xml: &str) -> Result<Node, TxmlError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| TxmlError::Parse(format!("at byte {}: {e}", reader.buffer_position())))?;
        match event {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(TxmlError::TooDeep);
                }
                if root.is_some() && stack.is_empty() {
                    return Err(TxmlError::Parse("more than one root element".to_owned()));
                }
                stack.push(Node {
                    name: local_name(e.name().as_ref())?,
                    ..Node::default()
                });
            }
            Event::Empty(e) => {
                let node = Node {
                    name: local_name(e.name().as_ref())?,
                    self_closing: true,
                    ..Node::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None if root.is_none() => root = Some(node),
                    None => return Err(TxmlError::Parse("more than one root element".to_owned())),
                }
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| parse_error("an end tag without a start"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => {
                let text = t.decode().map_err(parse_error)?;
                match stack.last_mut() {
                    Some(node) => node.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => {
                        return Err(TxmlError::Parse("text outside the root element".to_owned()));
                    }
                }
            }
            Event::CData(c) => {
                let text = c.decode().map_err(parse_error)?;
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&text);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(parse_error)?
                } else {
                    let name = r.decode().map_err(parse_error)?;
                    match name.as_ref() {
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "amp" => Some('&'),
                        "apos" => Some('\''),
                        "quot" => Some('"'),
                        other => return Err(TxmlError::Entity(other.to_owned())),
                    }
                };
                if let (Some(c), Some(node)) = (resolved, stack.last_mut()) {
                    node.text.push(c);
                }
            }
            Event::DocType(_) => return Err(TxmlError::Dtd),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(TxmlError::Parse(format!(
            "the element <{}> is not closed",
            stack.last().map(|n| n.name.as_str()).unwrap_or_default()
        )));
    }
    root.ok_or(TxmlError::Empty)
}

/// `lines` -> `line`, `properties` -> `property`.
fn singular(name: &str) -> String {
    if let Some(stem) = name.strip_suffix("ies") {
        format!("{stem}y")
    } else {
        name.strip_suffix('s').unwrap_or(name).to_owned()
    }
}

/// Whether `node` (a member Tradecloud documents as an array) is a wrapper holding the items.
fn is_wrapper(node: &Node) -> bool {
    let Some(first) = node.children.first() else {
        return false;
    };
    let same = node.children.iter().all(|c| c.name == first.name);
    let item_like = first.name == singular(&node.name)
        || first.name == node.name
        || ["item", "element", "entry", "value"].contains(&first.name.as_str())
        || node.name.starts_with(&first.name)
        || first.name.starts_with(&singular(&node.name));
    same && (node.children.len() > 1 || item_like)
}

fn value(node: &Node) -> Value {
    if node.children.is_empty() {
        return if node.self_closing {
            Value::Null
        } else {
            Value::String(node.text.clone())
        };
    }
    let mut object = Map::new();
    // Members in the order they first appear, each with all its elements (one pass).
    let mut names: Vec<&str> = Vec::new();
    let mut by_name: std::collections::HashMap<&str, Vec<&Node>> = std::collections::HashMap::new();
    for c in &node.children {
        let items = by_name.entry(c.name.as_str()).or_default();
        if items.is_empty() {
            names.push(&c.name);
        }
        items.push(c);
    }
    for name in names {
        let items = by_name.remove(name).unwrap_or_default();
        let member = if ARRAY_FIELDS.contains(&name) {
            match items.as_slice() {
                [one] if is_wrapper(one) => Value::Array(one.children.iter().map(value).collect()),
                [one] if one.children.is_empty() && one.self_closing => Value::Array(Vec::new()),
                _ => Value::Array(items.iter().map(|n| value(n)).collect()),
            }
        } else if let [one] = items.as_slice() {
            value(one)
        } else {
            Value::Array(items.iter().map(|n| value(n)).collect())
        };
        object.insert(name.to_owned(), member);
    }
    Value::Object(object)
}

/// The JSON body a tXML document stands for.
pub fn to_json(xml: &str) -> Result<Value, TxmlError> {
    let root = tree(xml)?;
    if root.children.is_empty() {
        return Err(TxmlError::Empty);
    }
    Ok(value(&root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_objects_and_both_array_styles() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<webhook xmlns="https://tradecloud1.com/txml">
  <eventName>OrderLinesConfirmedBySupplier</eventName>
  <orderEvent>
    <orderId>o-1</orderId>
    <version>4</version>
    <buyerOrder><purchaseOrderNumber>PO &amp; 1 &#x263A;</purchaseOrderNumber><notes/><description></description></buyerOrder>
    <lines><id>l-1</id><deliverySchedule><deliveryScheduleLine><quantity>78.90</quantity></deliveryScheduleLine></deliverySchedule></lines>
    <lines><id>l-2</id><deliverySchedule><quantity>1</quantity></deliverySchedule></lines>
  </orderEvent>
  <meta><messageId><![CDATA[m<1>]]></messageId></meta>
</webhook>"#;
        assert_eq!(
            to_json(xml).unwrap(),
            json!({
                "eventName": "OrderLinesConfirmedBySupplier",
                "orderEvent": {
                    "orderId": "o-1",
                    "version": "4",
                    "buyerOrder": {"purchaseOrderNumber": "PO & 1 \u{263A}", "notes": [], "description": ""},
                    "lines": [
                        {"id": "l-1", "deliverySchedule": [{"quantity": "78.90"}]},
                        {"id": "l-2", "deliverySchedule": [{"quantity": "1"}]},
                    ],
                },
                "meta": {"messageId": "m<1>"},
            })
        );
        // A wrapper around the lines, one of them.
        let wrapped = "<w><orderEvent><lines><line><id>a</id></line></lines></orderEvent></w>";
        assert_eq!(
            to_json(wrapped).unwrap()["orderEvent"]["lines"],
            json!([{"id": "a"}])
        );
    }

    #[test]
    fn dtds_entities_and_broken_documents_are_refused() {
        let dtd =
            r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><w><a>&lol;</a></w>"#;
        assert!(matches!(to_json(dtd), Err(TxmlError::Dtd)));
        let entity = "<w><a>&lol;</a></w>";
        assert!(matches!(to_json(entity), Err(TxmlError::Entity(e)) if e == "lol"));
        for broken in [
            "<w><a>1</b></w>",
            "<w><a>1</a>",
            "",
            "just text",
            "<w/>",
            "<a>1</a><b>2</b>",
        ] {
            assert!(to_json(broken).is_err(), "{broken:?}");
        }
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(matches!(to_json(&deep), Err(TxmlError::TooDeep)));
    }

    #[test]
    fn xml_content_types() {
        for ct in [
            "application/xml",
            "text/xml; charset=utf-8",
            "application/vnd.tradecloud+xml",
        ] {
            assert!(is_xml(ct), "{ct}");
        }
        for ct in ["application/json", "text/plain", "application/xml-dtd"] {
            assert!(!is_xml(ct), "{ct}");
        }
    }
}
