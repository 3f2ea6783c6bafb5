//! The trigger: what the ingress publishes to the triggers topic.
//!
//! A [`TriggerEnvelope`] is either a GET naming an order ([`Trigger::Order`]) or a POST/PUT carrying
//! an event ([`Trigger::Event`]); nothing in between can be built. Outside this crate it is made
//! only through [`TriggerEnvelope::get`] and [`TriggerEnvelope::event`], which validate the
//! request (the struct is `#[non_exhaustive]`), or decoded from the bus by [`crate::codec`], which
//! validates the same way. So an unvalidated request cannot be forwarded.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event_facts;
use crate::webhook::WEBHOOK_EVENT_MEMBERS;

/// Longest order id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest `eventName` accepted, in bytes (Tradecloud's longest is under 60).
pub const MAX_EVENT_NAME_LEN: usize = 128;

/// Whether the trigger names an order (GET) or carries an event (POST/PUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerKind {
    /// A GET with the order id: the worker fetches the order.
    OrderId,
    /// A POST/PUT with an event body.
    Event,
}

/// Which id a GET trigger carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IdKind {
    /// An API v2 order id.
    OrderId,
    /// A legacy (API v1) order id.
    LegacyOrderId,
}

/// The HTTP method Tradecloud used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// The method of an event trigger: only POST and PUT carry a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMethod {
    Post,
    Put,
}

impl From<EventMethod> for Method {
    fn from(m: EventMethod) -> Self {
        match m {
            EventMethod::Post => Method::Post,
            EventMethod::Put => Method::Put,
        }
    }
}

/// Why a request is not a valid trigger. Each is a client error (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerError {
    #[error("the order id is empty")]
    EmptyId,
    #[error("the order id is longer than {MAX_ID_LEN} bytes")]
    IdTooLong,
    #[error("the order id must not be only dots ('..') or contain control characters")]
    IdCharacters,
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the body is not a JSON object")]
    NotObject,
    #[error("the tXML body: {0}")]
    NotXml(String),
    #[error("the body has no eventName string")]
    MissingEventName,
    #[error("the eventName is longer than {MAX_EVENT_NAME_LEN} bytes")]
    EventNameTooLong,
    #[error("the eventName contains control characters")]
    EventNameCharacters,
}

/// The conversions of a validated string newtype (`parse` holds the rules): serde goes through
/// `parse` too, so a deserialized value is as valid as a parsed one.
macro_rules! validated_string {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = TriggerError;
            fn try_from(s: String) -> Result<Self, TriggerError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A Tradecloud order id (API v2 `orderId` or legacy `legacyOrderId`): not empty, at most
/// [`MAX_ID_LEN`] bytes, not only dots (`..` would be a path segment), no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrderId(String);

impl OrderId {
    pub fn parse(id: &str) -> Result<Self, TriggerError> {
        if id.is_empty() {
            return Err(TriggerError::EmptyId);
        }
        if id.len() > MAX_ID_LEN {
            return Err(TriggerError::IdTooLong);
        }
        if id.chars().all(|c| c == '.') || id.chars().any(char::is_control) {
            return Err(TriggerError::IdCharacters);
        }
        Ok(Self(id.to_owned()))
    }
}

validated_string!(OrderId);

/// Tradecloud's `eventName`: not blank, at most [`MAX_EVENT_NAME_LEN`] bytes, no control
/// characters. Unknown names are fine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventName(String);

impl EventName {
    pub fn parse(name: &str) -> Result<Self, TriggerError> {
        if name.trim().is_empty() {
            return Err(TriggerError::MissingEventName);
        }
        if name.len() > MAX_EVENT_NAME_LEN {
            return Err(TriggerError::EventNameTooLong);
        }
        if name.chars().any(char::is_control) {
            return Err(TriggerError::EventNameCharacters);
        }
        Ok(Self(name.to_owned()))
    }
}

validated_string!(EventName);

/// The order a GET trigger names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderRef {
    /// An API v2 order id: fetched from `/v2/order/{id}`.
    V2(OrderId),
    /// A legacy (API v1) order id: fetched from the legacy platform.
    Legacy(OrderId),
}

/// A POST/PUT trigger: the event body as received, and the routing facts read from it.
#[derive(Debug, Clone)]
pub struct EventTrigger {
    pub method: EventMethod,
    pub event_name: EventName,
    /// `orderId` of the event object, when it has one.
    pub order_id: Option<OrderId>,
    /// `legacyOrderId` of the event object, when it has one.
    pub legacy_order_id: Option<OrderId>,
    /// Tradecloud's `meta.messageId`, when the body has one.
    pub tradecloud_message_id: Option<String>,
    /// The request's `Content-Type`.
    pub content_type: Option<String>,
    /// The body, byte-exact: the JSON itself, or for a tXML body (an XML `content_type`) a JSON
    /// string holding the XML text.
    pub body: Box<RawValue>,
}

impl EventTrigger {
    /// The order the event names, to fetch it whole: its v2 order id, else its legacy id.
    pub fn order_ref(&self) -> Option<OrderRef> {
        self.order_id
            .clone()
            .map(OrderRef::V2)
            .or_else(|| self.legacy_order_id.clone().map(OrderRef::Legacy))
    }

    /// Whether the event object holds any line (an event holds only the lines it affected; a
    /// documents event, a contact or label change holds none). A tXML body counts as none.
    pub fn carries_lines(&self) -> bool {
        let Ok(body) = serde_json::from_str::<serde_json::Value>(self.body.get()) else {
            return false;
        };
        WEBHOOK_EVENT_MEMBERS
            .iter()
            .filter_map(|m| body.get(*m))
            .any(|e| {
                e.get("lines")
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|l| !l.is_empty())
            })
    }
}

impl PartialEq for EventTrigger {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method
            && self.event_name == other.event_name
            && self.order_id == other.order_id
            && self.legacy_order_id == other.legacy_order_id
            && self.tradecloud_message_id == other.tradecloud_message_id
            && self.content_type == other.content_type
            && self.body.get() == other.body.get()
    }
}

/// What a trigger is.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// A GET naming an order.
    Order(OrderRef),
    /// A POST/PUT with an event.
    Event(EventTrigger),
}

/// A trigger with its identity and arrival time.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TriggerEnvelope {
    /// UUIDv7, so ids sort by time.
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    pub trigger: Trigger,
}

impl TriggerEnvelope {
    /// Builds an envelope from parts that are already valid (decoding from the bus).
    pub(crate) fn from_parts(id: Uuid, received_at: DateTime<Utc>, trigger: Trigger) -> Self {
        Self {
            id,
            received_at,
            trigger,
        }
    }

    /// A GET trigger naming an order.
    pub fn get(
        id_kind: IdKind,
        id: &str,
        received_at: DateTime<Utc>,
    ) -> Result<Self, TriggerError> {
        let id = OrderId::parse(id)?;
        let order = match id_kind {
            IdKind::OrderId => OrderRef::V2(id),
            IdKind::LegacyOrderId => OrderRef::Legacy(id),
        };
        Ok(Self::from_parts(
            Uuid::now_v7(),
            received_at,
            Trigger::Order(order),
        ))
    }

    /// A POST/PUT trigger with a JSON event body. Only bodies that can never succeed are refused:
    /// not JSON, not an object, no usable `eventName`, an order id that is not one. Unknown event
    /// names and members are accepted.
    pub fn event(
        method: EventMethod,
        content_type: Option<&str>,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Self, TriggerError> {
        let xml = content_type.is_some_and(crate::txml::is_xml);
        let members = if xml {
            let text = std::str::from_utf8(body)
                .map_err(|e| TriggerError::NotXml(format!("not UTF-8: {e}")))?;
            let value =
                crate::txml::to_json(text).map_err(|e| TriggerError::NotXml(e.to_string()))?;
            event_facts::from_value(&value)
        } else {
            event_facts::read(body).map_err(|e| TriggerError::NotJson(e.to_string()))?
        }
        .ok_or(TriggerError::NotObject)?;
        let event_name = match members.get("eventName").and_then(|m| m.text.as_deref()) {
            Some(name) => EventName::parse(name)?,
            None => return Err(TriggerError::MissingEventName),
        };
        // Only the routing facts are read here, from any member: a body whose event object does
        // not parse is still accepted, and the worker dead-letters it, so nothing is lost.
        // An id that is not one (empty, dots only, ...) is left out rather than refused: an
        // event needs no fetch, and Tradecloud would drop a 4xx for good. The trigger is then
        // keyed by its own id.
        let member_id = |field: &str| {
            WEBHOOK_EVENT_MEMBERS
                .iter()
                .filter_map(|m| members.get(*m))
                .chain(members.values())
                .find_map(|m| m.id(field))
                .and_then(|id| OrderId::parse(id).ok())
        };
        let order_id = member_id("orderId");
        let legacy_order_id = member_id("legacyOrderId");
        let tradecloud_message_id = members
            .get("meta")
            .and_then(|m| m.message_id.clone())
            .or_else(|| members.values().find_map(|m| m.meta_message_id.clone()));
        // Valid JSON is valid UTF-8; the raw value keeps the bytes (without surrounding blanks).
        // A tXML body travels byte-exact as a JSON string (its content type says so).
        let text =
            String::from_utf8(body.to_vec()).map_err(|e| TriggerError::NotJson(e.to_string()))?;
        let text = if xml {
            serde_json::to_string(&text).map_err(|e| TriggerError::NotXml(e.to_string()))?
        } else {
            text
        };
        let body = RawValue::from_string(text).map_err(|e| TriggerError::NotJson(e.to_string()))?;
        Ok(Self::from_parts(
            Uuid::now_v7(),
            received_at,
            Trigger::Event(EventTrigger {
                method,
                event_name,
                order_id,
                legacy_order_id,
                tradecloud_message_id,
                content_type: content_type.map(str::to_owned),
                body,
            }),
        ))
    }

    pub fn kind(&self) -> TriggerKind {
        match self.trigger {
            Trigger::Order(_) => TriggerKind::OrderId,
            Trigger::Event(_) => TriggerKind::Event,
        }
    }

    pub fn method(&self) -> Method {
        match &self.trigger {
            Trigger::Order(_) => Method::Get,
            Trigger::Event(e) => e.method.into(),
        }
    }

    /// The API v2 order id, from the GET or from the event body.
    pub fn order_id(&self) -> Option<&OrderId> {
        match &self.trigger {
            Trigger::Order(OrderRef::V2(id)) => Some(id),
            Trigger::Order(OrderRef::Legacy(_)) => None,
            Trigger::Event(e) => e.order_id.as_ref(),
        }
    }

    /// The legacy order id, from the GET or from the event body.
    pub fn legacy_order_id(&self) -> Option<&OrderId> {
        match &self.trigger {
            Trigger::Order(OrderRef::Legacy(id)) => Some(id),
            Trigger::Order(OrderRef::V2(_)) => None,
            Trigger::Event(e) => e.legacy_order_id.as_ref(),
        }
    }

    pub fn event_name(&self) -> Option<&EventName> {
        match &self.trigger {
            Trigger::Order(_) => None,
            Trigger::Event(e) => Some(&e.event_name),
        }
    }

    pub fn tradecloud_message_id(&self) -> Option<&str> {
        match &self.trigger {
            Trigger::Order(_) => None,
            Trigger::Event(e) => e.tradecloud_message_id.as_deref(),
        }
    }

    /// The order the trigger is about: its v2 id, else its legacy id.
    pub fn any_order_id(&self) -> Option<&OrderId> {
        self.order_id().or(self.legacy_order_id())
    }

    /// The message key: the order id, so one order's triggers stay in order. A trigger without
    /// any order id is keyed by its own id.
    pub fn key(&self) -> String {
        self.any_order_id()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_else(|| self.id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn get_trigger_validates_the_id() {
        let t = TriggerEnvelope::get(IdKind::OrderId, "a1b2-c3", now()).unwrap();
        assert_eq!(t.key(), "a1b2-c3");
        assert_eq!(t.kind(), TriggerKind::OrderId);
        assert_eq!(t.method(), Method::Get);
        let bad = |id: &str| TriggerEnvelope::get(IdKind::OrderId, id, now()).unwrap_err();
        assert_eq!(bad(""), TriggerError::EmptyId);
        assert_eq!(bad(".."), TriggerError::IdCharacters);
        assert_eq!(bad("."), TriggerError::IdCharacters);
        assert_eq!(bad("a\nb"), TriggerError::IdCharacters);
        assert_eq!(bad(&"x".repeat(257)), TriggerError::IdTooLong);
        assert!(TriggerEnvelope::get(IdKind::OrderId, &"x".repeat(256), now()).is_ok());
        assert_eq!(bad("..."), TriggerError::IdCharacters);
        assert!(TriggerEnvelope::get(IdKind::OrderId, "a..b", now()).is_ok());
        let legacy = TriggerEnvelope::get(IdKind::LegacyOrderId, "123", now()).unwrap();
        assert_eq!(legacy.legacy_order_id().map(OrderId::as_str), Some("123"));
        assert_eq!(legacy.order_id(), None);
        assert_eq!(legacy.key(), "123");
    }

    #[test]
    fn deserializing_an_id_validates_it() {
        assert!(serde_json::from_str::<OrderId>(r#"".."#).is_err());
        assert!(serde_json::from_str::<OrderId>(r#""""#).is_err());
        assert_eq!(
            serde_json::from_str::<OrderId>(r#""o-1""#)
                .unwrap()
                .as_str(),
            "o-1"
        );
        assert!(serde_json::from_str::<EventName>(r#""""#).is_err());
    }

    #[test]
    fn event_trigger_keeps_the_body_byte_for_byte() {
        let body = br#"{ "eventName":"OrderIssuedByBuyer", "orderEvent": {"orderId":"o-1"},
            "meta": {"messageId": "m-1"}, "somethingNew": 1.50 }"#;
        let t = TriggerEnvelope::event(EventMethod::Post, Some("application/json"), body, now())
            .unwrap();
        assert_eq!(t.order_id().map(OrderId::as_str), Some("o-1"));
        assert_eq!(t.tradecloud_message_id(), Some("m-1"));
        assert_eq!(
            t.event_name().map(EventName::as_str),
            Some("OrderIssuedByBuyer")
        );
        let Trigger::Event(e) = &t.trigger else {
            panic!("an event")
        };
        assert_eq!(e.body.get().as_bytes(), &body[..]);
    }

    #[test]
    fn unknown_event_object_still_yields_the_key() {
        let body = br#"{"eventName":"OrderThingHappened","futureEvent":{"orderId":"o-9"}}"#;
        let t = TriggerEnvelope::event(EventMethod::Put, None, body, now()).unwrap();
        assert_eq!(t.key(), "o-9");
        assert_eq!(t.method(), Method::Put);
    }

    #[test]
    fn bodies_that_can_never_succeed_are_refused() {
        let bad = |b: &[u8]| TriggerEnvelope::event(EventMethod::Post, None, b, now()).unwrap_err();
        assert!(matches!(bad(b"{nope"), TriggerError::NotJson(_)));
        assert_eq!(bad(b"[1,2]"), TriggerError::NotObject);
        assert_eq!(bad(br#"{"orderEvent":{}}"#), TriggerError::MissingEventName);
        assert_eq!(
            bad(br#"{"eventName":"  "}"#),
            TriggerError::MissingEventName
        );
        assert_eq!(bad(br#"{"eventName":7}"#), TriggerError::MissingEventName);
        let long = format!(r#"{{"eventName":"{}"}}"#, "E".repeat(129));
        assert_eq!(bad(long.as_bytes()), TriggerError::EventNameTooLong);
        assert_eq!(
            bad(br#"{"eventName":"A\u0000B"}"#),
            TriggerError::EventNameCharacters
        );
        // An unusable order id in an event is left out: keyed by the trigger's own id.
        let dots = br#"{"eventName":"X","orderEvent":{"orderId":".."}}"#;
        let t = TriggerEnvelope::event(EventMethod::Post, None, dots, now()).unwrap();
        assert_eq!(t.order_id(), None);
        assert_eq!(t.key(), t.id.to_string());
        // A known member of an unexpected shape is the worker's to dead-letter, not a 400.
        let odd = br#"{"eventName":"X","orderEvent":{"orderId":"o-2","lines":"no"}}"#;
        let t = TriggerEnvelope::event(EventMethod::Post, None, odd, now()).unwrap();
        assert_eq!(t.key(), "o-2");
    }
}
