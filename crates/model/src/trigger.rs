//! The trigger envelope: what the ingress publishes to the triggers topic.
//!
//! A [`TriggerEnvelope`] can only be built outside this crate through [`TriggerEnvelope::order_id`]
//! and [`TriggerEnvelope::event`], which validate the request; so an unvalidated request cannot be
//! forwarded (the struct is `#[non_exhaustive]`). Deserializing one (in the worker) is the other way in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::webhook::WEBHOOK_EVENT_MEMBERS;

/// Schema version written in the envelope and in the message headers.
pub const TRIGGER_SCHEMA_VERSION: &str = "trigger.v1";
/// Longest order id accepted in a GET trigger.
pub const MAX_ID_LEN: usize = 128;

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

/// Why a request is not a valid trigger. Each is a client error (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerError {
    #[error("the order id is empty")]
    EmptyId,
    #[error("the order id is longer than {MAX_ID_LEN} characters")]
    IdTooLong,
    #[error("the order id may only contain letters, digits, '-', '_', '.' and ':'")]
    IdCharacters,
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the body is not a JSON object")]
    NotObject,
    #[error("the body has no eventName string")]
    MissingEventName,
}

/// The trigger as it travels on the triggers topic (JSON, camelCase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct TriggerEnvelope {
    /// `trigger.v1`.
    pub schema_version: String,
    /// UUIDv7, so ids sort by time.
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    /// The HTTP method Tradecloud used.
    pub method: String,
    pub kind: TriggerKind,
    pub order_id: Option<String>,
    pub legacy_order_id: Option<String>,
    pub event_name: Option<String>,
    /// Tradecloud's `meta.messageId`, when the body has one.
    pub tradecloud_message_id: Option<String>,
    pub content_type: Option<String>,
    /// The request body byte-for-byte, base64 (standard alphabet); absent for GET.
    #[serde(with = "body_base64", default)]
    pub body: Option<Vec<u8>>,
}

impl TriggerEnvelope {
    /// A GET trigger naming an order.
    pub fn order_id(
        method: &str,
        id_kind: IdKind,
        id: &str,
        received_at: DateTime<Utc>,
    ) -> Result<Self, TriggerError> {
        validate_id(id)?;
        let (order_id, legacy_order_id) = match id_kind {
            IdKind::OrderId => (Some(id.to_owned()), None),
            IdKind::LegacyOrderId => (None, Some(id.to_owned())),
        };
        Ok(Self {
            schema_version: TRIGGER_SCHEMA_VERSION.to_owned(),
            id: Uuid::now_v7(),
            received_at,
            method: method.to_owned(),
            kind: TriggerKind::OrderId,
            order_id,
            legacy_order_id,
            event_name: None,
            tradecloud_message_id: None,
            content_type: None,
            body: None,
        })
    }

    /// A POST/PUT trigger with a JSON event body. Only bodies that can never succeed are refused:
    /// not JSON, not an object, no `eventName`. Unknown event names and members are accepted.
    pub fn event(
        method: &str,
        content_type: Option<&str>,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Self, TriggerError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| TriggerError::NotJson(e.to_string()))?;
        let object = value.as_object().ok_or(TriggerError::NotObject)?;
        let event_name = match object.get("eventName").and_then(|v| v.as_str()) {
            Some(name) if !name.trim().is_empty() => name.to_owned(),
            _ => return Err(TriggerError::MissingEventName),
        };
        // Only the routing facts are read here, from any member: a body whose event object does
        // not parse is still accepted, and the worker dead-letters it, so nothing is lost.
        let member_str = |field: &str| {
            WEBHOOK_EVENT_MEMBERS
                .iter()
                .filter_map(|m| object.get(*m))
                .chain(object.values())
                .find_map(|v| v.get(field).and_then(|id| id.as_str()))
                .map(str::to_owned)
        };
        let order_id = member_str("orderId");
        let legacy_order_id = member_str("legacyOrderId");
        let message_id = object
            .get("meta")
            .and_then(|m| m.get("messageId"))
            .and_then(|id| id.as_str())
            .map(str::to_owned)
            .or_else(|| {
                object
                    .values()
                    .find_map(|v| v.get("meta")?.get("messageId")?.as_str())
                    .map(str::to_owned)
            });
        Ok(Self {
            schema_version: TRIGGER_SCHEMA_VERSION.to_owned(),
            id: Uuid::now_v7(),
            received_at,
            method: method.to_owned(),
            kind: TriggerKind::Event,
            order_id,
            legacy_order_id,
            event_name: Some(event_name),
            tradecloud_message_id: message_id,
            content_type: content_type.map(str::to_owned),
            body: Some(body.to_vec()),
        })
    }

    /// The message key: the order id, so one order's triggers stay in order. A trigger without
    /// any order id is keyed by its own id.
    pub fn key(&self) -> String {
        self.order_id
            .clone()
            .or_else(|| self.legacy_order_id.clone())
            .unwrap_or_else(|| self.id.to_string())
    }

    /// The envelope as the JSON payload of a bus message.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, ids, dates and bytes always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn validate_id(id: &str) -> Result<(), TriggerError> {
    if id.is_empty() {
        return Err(TriggerError::EmptyId);
    }
    if id.len() > MAX_ID_LEN {
        return Err(TriggerError::IdTooLong);
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(TriggerError::IdCharacters);
    }
    Ok(())
}

mod body_base64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match body {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .transpose()
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
        let t = TriggerEnvelope::order_id("GET", IdKind::OrderId, "a1b2-c3", now()).unwrap();
        assert_eq!(t.key(), "a1b2-c3");
        assert_eq!(t.kind, TriggerKind::OrderId);
        assert_eq!(
            TriggerEnvelope::order_id("GET", IdKind::OrderId, "", now()),
            Err(TriggerError::EmptyId)
        );
        assert_eq!(
            TriggerEnvelope::order_id("GET", IdKind::OrderId, "a/b", now()),
            Err(TriggerError::IdCharacters)
        );
        assert_eq!(
            TriggerEnvelope::order_id("GET", IdKind::OrderId, &"x".repeat(129), now()),
            Err(TriggerError::IdTooLong)
        );
        let legacy = TriggerEnvelope::order_id("GET", IdKind::LegacyOrderId, "123", now()).unwrap();
        assert_eq!(legacy.legacy_order_id.as_deref(), Some("123"));
        assert_eq!(legacy.order_id, None);
        assert_eq!(legacy.key(), "123");
    }

    #[test]
    fn event_trigger_keeps_the_body_byte_for_byte() {
        let body = br#"{ "eventName":"OrderIssuedByBuyer", "orderEvent": {"orderId":"o-1"},
            "meta": {"messageId": "m-1"}, "somethingNew": 1 }"#;
        let t = TriggerEnvelope::event("POST", Some("application/json"), body, now()).unwrap();
        assert_eq!(t.order_id.as_deref(), Some("o-1"));
        assert_eq!(t.tradecloud_message_id.as_deref(), Some("m-1"));
        assert_eq!(t.event_name.as_deref(), Some("OrderIssuedByBuyer"));
        let back: TriggerEnvelope = serde_json::from_slice(&t.to_json()).unwrap();
        assert_eq!(back.body.as_deref(), Some(&body[..]));
        assert_eq!(back, t);
    }

    #[test]
    fn unknown_event_object_still_yields_the_key() {
        let body = br#"{"eventName":"OrderThingHappened","futureEvent":{"orderId":"o-9"}}"#;
        let t = TriggerEnvelope::event("PUT", None, body, now()).unwrap();
        assert_eq!(t.key(), "o-9");
    }

    #[test]
    fn bodies_that_can_never_succeed_are_refused() {
        let bad = |b: &[u8]| TriggerEnvelope::event("POST", None, b, now()).unwrap_err();
        assert!(matches!(bad(b"{nope"), TriggerError::NotJson(_)));
        assert_eq!(bad(b"[1,2]"), TriggerError::NotObject);
        assert_eq!(bad(br#"{"orderEvent":{}}"#), TriggerError::MissingEventName);
        assert_eq!(
            bad(br#"{"eventName":"  "}"#),
            TriggerError::MissingEventName
        );
        // A known member of an unexpected shape is the worker's to dead-letter, not a 400.
        let odd = br#"{"eventName":"X","orderEvent":{"orderId":"o-2","lines":"no"}}"#;
        let t = TriggerEnvelope::event("POST", None, odd, now()).unwrap();
        assert_eq!(t.key(), "o-2");
    }
}
