//! The one place that encodes and decodes the bridge's bus messages: the trigger envelope on the
//! triggers topic, the order message on the orders topic, and dead letters. Every header name
//! lives here; backends only carry headers ([`tcb_bus::Message`]).
//!
//! Trigger envelope, schema `trigger.v2` (JSON, camelCase): `schemaVersion`, `id`, `receivedAt`,
//! `method` (`GET`/`POST`/`PUT`), `kind` (`order-id`/`event`), and either `orderId` or
//! `legacyOrderId` (GET), or `eventName`, `orderId`?, `legacyOrderId`?, `tradecloudMessageId`?,
//! `contentType`? and `body`: the request body embedded as JSON, byte-exact (POST/PUT).
//! `trigger.v1` envelopes (the body base64 in a string) are still read; any other version is an
//! error the worker dead-letters with that reason.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tcb_bus::{CLOUDEVENTS_PREFIX, Headers, Message};
use uuid::Uuid;

use crate::message::Scope;
use crate::output::Output;
use crate::trigger::{
    EventMethod, EventName, EventTrigger, Method, OrderId, OrderRef, Trigger, TriggerEnvelope,
    TriggerError, TriggerKind,
};

/// The envelope version the ingress writes.
pub const TRIGGER_SCHEMA_VERSION: &str = "trigger.v2";
/// The first envelope version, still read.
pub const TRIGGER_SCHEMA_VERSION_V1: &str = "trigger.v1";
/// The media type of every payload the bridge writes.
pub const JSON: &str = "application/json";

/// Header names.
pub mod header {
    /// Id of the trigger a message stems from (UUIDv7).
    pub const TRIGGER_ID: &str = "tcb-trigger-id";
    /// Content type of the payload.
    pub const CONTENT_TYPE: &str = "content-type";
    /// Schema version of the payload (`trigger.v2`, `order-message.v1`).
    pub const SCHEMA_VERSION: &str = "tcb-schema-version";
    /// W3C trace context: the span that published the message, and vendor state.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// Why a trigger went to the dead-letter topic.
    pub const DEAD_LETTER_REASON: &str = "tcb-dead-letter-reason";
    /// The class of that reason (`undecodable`, `not_found`, ...: [`super::DeadLetterKind`]).
    pub const DEAD_LETTER_KIND: &str = "tcb-dead-letter-kind";
    /// Which topic a dead-lettered message was consumed from.
    pub const DEAD_LETTER_SOURCE: &str = "tcb-dead-letter-source";
    /// How many times processing was tried before the trigger was dead-lettered.
    pub const DEAD_LETTER_ATTEMPTS: &str = "tcb-dead-letter-attempts";
    /// The first error of those attempts, and when the first and the last failed (RFC 3339).
    pub const DEAD_LETTER_FIRST_ERROR: &str = "tcb-dead-letter-first-error";
    pub const DEAD_LETTER_FIRST_FAILED_AT: &str = "tcb-dead-letter-first-failed-at";
    pub const DEAD_LETTER_LAST_FAILED_AT: &str = "tcb-dead-letter-last-failed-at";

    /// Every dead-letter header, removed again by `revive`.
    pub const DEAD_LETTER_ALL: [&str; 7] = [
        DEAD_LETTER_REASON,
        DEAD_LETTER_KIND,
        DEAD_LETTER_SOURCE,
        DEAD_LETTER_ATTEMPTS,
        DEAD_LETTER_FIRST_ERROR,
        DEAD_LETTER_FIRST_FAILED_AT,
        DEAD_LETTER_LAST_FAILED_AT,
    ];
    /// Tradecloud's `eventName` (absent for GET triggers and fetched orders).
    pub const EVENT_NAME: &str = "tcb-event-name";
    /// The order message's deterministic id.
    pub const MESSAGE_ID: &str = "tcb-message-id";
}

/// Why a message cannot be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("the trigger envelope does not parse: {0}")]
    Json(#[source] serde_json::Error),
    #[error("unknown trigger envelope version {0:?} (this bridge reads trigger.v1 and trigger.v2)")]
    UnknownVersion(String),
    #[error("the trigger envelope is invalid: {0}")]
    Invalid(String),
    #[error("the trigger envelope's {field} is invalid: {source}")]
    Field {
        field: &'static str,
        #[source]
        source: TriggerError,
    },
    #[error("cannot serialize the message: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// The envelope on the wire. `B` is the body: `&RawValue` or `Box<RawValue>` (v2: the JSON
/// itself), `String` (v1: base64). Strings borrow from the payload where they can.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a, B> {
    #[serde(borrow)]
    schema_version: Cow<'a, str>,
    id: Uuid,
    received_at: DateTime<Utc>,
    method: Method,
    kind: TriggerKind,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    order_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    legacy_order_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    event_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    tradecloud_message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    content_type: Option<Cow<'a, str>>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    body: Option<B>,
}

fn none<B>() -> Option<B> {
    None
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Version<'a> {
    #[serde(borrow)]
    schema_version: Option<Cow<'a, str>>,
}

/// The envelope as the JSON payload of a trigger message.
pub fn trigger_json(trigger: &TriggerEnvelope) -> Result<Vec<u8>, CodecError> {
    let mut wire: Wire<'_, &RawValue> = Wire {
        schema_version: Cow::Borrowed(TRIGGER_SCHEMA_VERSION),
        id: trigger.id,
        received_at: trigger.received_at,
        method: trigger.method(),
        kind: trigger.kind(),
        order_id: None,
        legacy_order_id: None,
        event_name: None,
        tradecloud_message_id: None,
        content_type: None,
        body: None,
    };
    match &trigger.trigger {
        Trigger::Order(OrderRef::V2(id)) => wire.order_id = Some(Cow::Borrowed(id.as_str())),
        Trigger::Order(OrderRef::Legacy(id)) => {
            wire.legacy_order_id = Some(Cow::Borrowed(id.as_str()))
        }
        Trigger::Event(e) => {
            wire.order_id = borrowed(&e.order_id);
            wire.legacy_order_id = borrowed(&e.legacy_order_id);
            wire.event_name = Some(Cow::Borrowed(e.event_name.as_str()));
            wire.tradecloud_message_id = e.tradecloud_message_id.as_deref().map(Cow::Borrowed);
            wire.content_type = e.content_type.as_deref().map(Cow::Borrowed);
            wire.body = Some(&e.body);
        }
    }
    serde_json::to_vec(&wire).map_err(CodecError::Serialize)
}

fn borrowed(id: &Option<OrderId>) -> Option<Cow<'_, str>> {
    id.as_ref().map(|i| Cow::Borrowed(i.as_str()))
}

/// Parses a trigger envelope of any supported version.
pub fn parse_trigger(payload: &[u8]) -> Result<TriggerEnvelope, CodecError> {
    let version: Version<'_> = serde_json::from_slice(payload).map_err(CodecError::Json)?;
    match version.schema_version.as_deref() {
        Some(TRIGGER_SCHEMA_VERSION) => {
            let wire: Wire<'_, Box<RawValue>> =
                serde_json::from_slice(payload).map_err(CodecError::Json)?;
            from_wire(wire, Ok)
        }
        Some(TRIGGER_SCHEMA_VERSION_V1) => {
            let wire: Wire<'_, String> =
                serde_json::from_slice(payload).map_err(CodecError::Json)?;
            from_wire(wire, v1_body)
        }
        Some(other) => Err(CodecError::UnknownVersion(other.to_owned())),
        None => Err(CodecError::Invalid("it has no schemaVersion".to_owned())),
    }
}

fn order_id(field: &'static str, id: Option<&str>) -> Result<Option<OrderId>, CodecError> {
    id.map(|id| OrderId::parse(id).map_err(|source| CodecError::Field { field, source }))
        .transpose()
}

/// A v1 body: base64 of the JSON bytes.
fn v1_body(b64: String) -> Result<Box<RawValue>, CodecError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| CodecError::Invalid(format!("the v1 body is not base64: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| CodecError::Invalid(format!("the v1 body is not UTF-8: {e}")))?;
    RawValue::from_string(text)
        .map_err(|e| CodecError::Invalid(format!("the v1 body is not JSON: {e}")))
}

/// A decoded envelope of either version, validated into a [`TriggerEnvelope`].
fn from_wire<B>(
    w: Wire<'_, B>,
    body: impl FnOnce(B) -> Result<Box<RawValue>, CodecError>,
) -> Result<TriggerEnvelope, CodecError> {
    let trigger = match (w.kind, w.method) {
        (TriggerKind::OrderId, Method::Get) => match (
            order_id("orderId", w.order_id.as_deref())?,
            order_id("legacyOrderId", w.legacy_order_id.as_deref())?,
        ) {
            (Some(id), None) => Trigger::Order(OrderRef::V2(id)),
            (None, Some(id)) => Trigger::Order(OrderRef::Legacy(id)),
            _ => {
                return Err(CodecError::Invalid(
                    "an order-id trigger needs exactly one of orderId and legacyOrderId".to_owned(),
                ));
            }
        },
        (TriggerKind::Event, method @ (Method::Post | Method::Put)) => {
            let event_name = EventName::parse(w.event_name.as_deref().unwrap_or_default())
                .map_err(|source| CodecError::Field {
                    field: "eventName",
                    source,
                })?;
            let body =
                w.body.map(body).transpose()?.ok_or_else(|| {
                    CodecError::Invalid("an event trigger has no body".to_owned())
                })?;
            // As at the ingress, an event's unusable id is left out rather than refused.
            let lenient = |id: Option<Cow<'_, str>>| id.and_then(|id| OrderId::parse(&id).ok());
            Trigger::Event(EventTrigger {
                method: if method == Method::Put {
                    EventMethod::Put
                } else {
                    EventMethod::Post
                },
                event_name,
                order_id: lenient(w.order_id),
                legacy_order_id: lenient(w.legacy_order_id),
                tradecloud_message_id: w.tradecloud_message_id.map(Cow::into_owned),
                content_type: w.content_type.map(Cow::into_owned),
                body,
            })
        }
        (kind, method) => {
            return Err(CodecError::Invalid(format!(
                "a {kind:?} trigger cannot have method {}",
                method.as_str()
            )));
        }
    };
    Ok(TriggerEnvelope::from_parts(w.id, w.received_at, trigger))
}

/// The headers every message of the bridge carries, and the matching native fields.
fn message(
    key: String,
    payload: Vec<u8>,
    trigger_id: &Uuid,
    id: String,
    schema_version: &str,
    event_name: Option<&str>,
) -> Message {
    let mut headers = Headers::from([
        (header::TRIGGER_ID.to_owned(), trigger_id.to_string()),
        (header::CONTENT_TYPE.to_owned(), JSON.to_owned()),
        (header::SCHEMA_VERSION.to_owned(), schema_version.to_owned()),
    ]);
    if let Some(name) = event_name {
        headers.insert(header::EVENT_NAME.to_owned(), name.to_owned());
    }
    Message {
        key,
        headers,
        payload,
        id: Some(id),
        content_type: Some(JSON.to_owned()),
        routing_word: event_name.map(str::to_owned),
    }
}

/// A trigger as a bus message: key = order id, headers, the v2 envelope as payload. The trace
/// context is added by the publish (`tcb_bus::publish_traced`).
pub fn encode_trigger(trigger: &TriggerEnvelope) -> Result<Message, CodecError> {
    Ok(message(
        trigger.key(),
        trigger_json(trigger)?,
        &trigger.id,
        trigger.id.to_string(),
        TRIGGER_SCHEMA_VERSION,
        trigger.event_name().map(EventName::as_str),
    ))
}

/// The trigger a bus message carries.
pub fn decode_trigger(message: &Message) -> Result<TriggerEnvelope, CodecError> {
    parse_trigger(&message.payload)
}

/// An order message as a bus message: key = order id, headers incl. CloudEvents, JSON payload.
/// The trace context is added by the publish.
pub fn encode_order(order: &Output) -> Result<Message, CodecError> {
    let payload = order.to_json().map_err(CodecError::Serialize)?;
    let key = order
        .order_id()
        .or(order.legacy_order_id())
        .map(str::to_owned)
        .unwrap_or_else(|| order.trigger_id().to_string());
    let mut m = message(
        key,
        payload,
        &order.trigger_id(),
        order.message_id().to_string(),
        order.schema_version(),
        order.event_name(),
    );
    m.headers.insert(
        header::MESSAGE_ID.to_owned(),
        order.message_id().to_string(),
    );
    m.headers.extend(cloud_events(order));
    Ok(m)
}

/// The order message a bus message carries, of the version its schema header names.
pub fn decode_order(message: &Message) -> Result<Output, serde_json::Error> {
    let v2 = message
        .headers
        .get(header::SCHEMA_VERSION)
        .map(String::as_str)
        == Some(crate::message_v2::ORDER_MESSAGE_V2);
    Ok(if v2 {
        Output::V2(Box::new(serde_json::from_slice(&message.payload)?))
    } else {
        Output::V1(Box::new(serde_json::from_slice(&message.payload)?))
    })
}

/// CloudEvents 1.0 attributes of an order message, in the Kafka binding's `ce_` form (the
/// RabbitMQ backend maps them to the AMQP binding's `cloudEvents:`).
fn cloud_events(order: &Output) -> Vec<(String, String)> {
    let kind = match order.scope() {
        Scope::FullOrder => "com.tradecloud.order.full",
        Scope::PartialEvent => "com.tradecloud.order.event",
    };
    let ce = |attr: &str, value: String| (format!("{CLOUDEVENTS_PREFIX}{attr}"), value);
    let mut attrs = vec![
        ce("specversion", "1.0".to_owned()),
        ce("id", order.message_id().to_string()),
        ce("source", "tradecloud-bridge".to_owned()),
        ce("type", kind.to_owned()),
        ce("time", order.processed_at().to_rfc3339()),
        ce("dataschema", order.schema_version().to_owned()),
    ];
    if let Some(subject) = order.order_id().or(order.legacy_order_id()) {
        attrs.push(ce("subject", subject.to_owned()));
    }
    attrs
}

/// The native fields of a message received from the bus, restored from its headers (a backend
/// does not restore them), so that it can be published again as it was.
fn with_native_fields(mut m: Message) -> Message {
    m.id = m
        .headers
        .get(header::MESSAGE_ID)
        .or_else(|| m.headers.get(header::TRIGGER_ID))
        .cloned();
    m.content_type = m.headers.get(header::CONTENT_TYPE).cloned();
    m.routing_word = m.headers.get(header::EVENT_NAME).cloned();
    m
}

/// Why a trigger is dead-lettered, and what was tried before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The class of the reason: a bounded set, for metrics and alerts.
    pub kind: DeadLetterKind,
    pub reason: String,
    /// Attempts made (1 for a trigger that can never succeed).
    pub attempts: u32,
    /// The first failure, when it differs from the last (`reason`).
    pub first_error: Option<String>,
    pub first_failed_at: Option<DateTime<Utc>>,
    pub last_failed_at: Option<DateTime<Utc>>,
}

impl DeadLetter {
    /// A trigger that can never succeed: one attempt, this reason.
    pub fn poison(kind: DeadLetterKind, reason: impl Into<String>) -> Self {
        let now = Utc::now();
        Self {
            kind,
            reason: reason.into(),
            attempts: 1,
            first_error: None,
            first_failed_at: Some(now),
            last_failed_at: Some(now),
        }
    }
}

/// Why a trigger was dead-lettered, as a class (the label of
/// `tcb_worker_dead_letters_total{reason}` and the `tcb-dead-letter-kind` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterKind {
    /// The message is no trigger the bridge can read.
    Undecodable,
    /// The POSTed or PUT event does not make an order message.
    InvalidEvent,
    /// The order Tradecloud returned does not make an order message.
    InvalidOrder,
    /// Tradecloud kept answering 404 for the order.
    NotFound,
    /// Tradecloud refused the request for good (a 4xx other than 401/403/404/408/429).
    Rejected,
    /// A transient failure lasted past `max_attempts` / `max_retry_seconds`.
    RetriesExhausted,
    /// The output topic will never take the message (too large, not authorized).
    OutputRefused,
}

impl DeadLetterKind {
    pub const ALL: [DeadLetterKind; 7] = [
        DeadLetterKind::Undecodable,
        DeadLetterKind::InvalidEvent,
        DeadLetterKind::InvalidOrder,
        DeadLetterKind::NotFound,
        DeadLetterKind::Rejected,
        DeadLetterKind::RetriesExhausted,
        DeadLetterKind::OutputRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Undecodable => "undecodable",
            DeadLetterKind::InvalidEvent => "invalid_event",
            DeadLetterKind::InvalidOrder => "invalid_order",
            DeadLetterKind::NotFound => "not_found",
            DeadLetterKind::Rejected => "rejected",
            DeadLetterKind::RetriesExhausted => "retries_exhausted",
            DeadLetterKind::OutputRefused => "output_refused",
        }
    }
}

/// A message that could not be processed, for the dead-letter topic: the message as it was, with
/// the reason, the attempts and where it came from.
pub fn dead_letter(message: &Message, why: &DeadLetter, source_topic: &str) -> Message {
    let mut m = with_native_fields(message.clone());
    let mut put = |name: &str, value: String| m.headers.insert(name.to_owned(), value);
    put(header::DEAD_LETTER_REASON, why.reason.clone());
    put(header::DEAD_LETTER_KIND, why.kind.as_str().to_owned());
    put(header::DEAD_LETTER_SOURCE, source_topic.to_owned());
    put(header::DEAD_LETTER_ATTEMPTS, why.attempts.to_string());
    if let Some(first) = &why.first_error {
        put(header::DEAD_LETTER_FIRST_ERROR, first.clone());
    }
    if let Some(at) = why.first_failed_at {
        put(header::DEAD_LETTER_FIRST_FAILED_AT, at.to_rfc3339());
    }
    if let Some(at) = why.last_failed_at {
        put(header::DEAD_LETTER_LAST_FAILED_AT, at.to_rfc3339());
    }
    m
}

/// A dead letter made a trigger again (for `replay`), and why it had been dead-lettered.
pub fn revive(dead: &Message) -> (Message, Option<String>) {
    let mut m = with_native_fields(dead.clone());
    let reason = m.headers.remove(header::DEAD_LETTER_REASON);
    for name in header::DEAD_LETTER_ALL {
        m.headers.remove(name);
    }
    (m, reason)
}

/// The trigger id a message names in its headers.
pub fn trigger_id(message: &Message) -> Option<&str> {
    message.headers.get(header::TRIGGER_ID).map(String::as_str)
}

/// Why a message was dead-lettered, when it is a dead letter.
pub fn dead_letter_reason(message: &Message) -> Option<&str> {
    message
        .headers
        .get(header::DEAD_LETTER_REASON)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::IdKind;

    #[test]
    fn an_event_trigger_round_trips_with_its_body_as_raw_json() {
        let body = br#"{"eventName":"OrderIssuedByBuyer","orderEvent":{"orderId":"o-1","x":78.90},"meta":{"messageId":"m-1"}}"#;
        let t =
            TriggerEnvelope::event(EventMethod::Put, Some("application/json"), body, Utc::now())
                .unwrap();
        let m = encode_trigger(&t).unwrap();
        assert_eq!(m.key, "o-1");
        assert_eq!(m.routing_word.as_deref(), Some("OrderIssuedByBuyer"));
        assert_eq!(m.headers[header::SCHEMA_VERSION], "trigger.v2");
        assert_eq!(m.headers[header::EVENT_NAME], "OrderIssuedByBuyer");
        assert!(
            !m.headers.contains_key(header::TRACEPARENT),
            "added by the publish"
        );
        let text = std::str::from_utf8(&m.payload).unwrap();
        assert!(
            text.contains(std::str::from_utf8(body).unwrap()),
            "the body is embedded byte-exact: {text}"
        );
        assert!(!text.contains("base64"));
        assert_eq!(decode_trigger(&m).unwrap(), t);
    }

    #[test]
    fn an_order_id_trigger_round_trips() {
        for kind in [IdKind::OrderId, IdKind::LegacyOrderId] {
            let t = TriggerEnvelope::get(kind, "4711", Utc::now()).unwrap();
            let m = encode_trigger(&t).unwrap();
            assert!(!m.headers.contains_key(header::EVENT_NAME));
            assert_eq!(m.routing_word, None);
            assert_eq!(decode_trigger(&m).unwrap(), t);
        }
    }

    /// Written by the bridge before envelope v2 (commit 2deae37), byte for byte.
    const V1_EVENT: &str = r#"{"schemaVersion":"trigger.v1","id":"0193a0a4-1b2c-7d3e-8f40-5a6b7c8d9e0f","receivedAt":"2026-11-29T10:02:03.456Z","method":"POST","kind":"event","orderId":"o-1","legacyOrderId":null,"eventName":"OrderIssuedByBuyer","tradecloudMessageId":"m-1","contentType":"application/json","body":"eyJldmVudE5hbWUiOiJPcmRlcklzc3VlZEJ5QnV5ZXIiLCJvcmRlckV2ZW50Ijp7Im9yZGVySWQiOiJvLTEifSwibWV0YSI6eyJtZXNzYWdlSWQiOiJtLTEifX0="}"#;
    const V1_GET: &str = r#"{"schemaVersion":"trigger.v1","id":"0193a0a4-1b2c-7d3e-8f40-5a6b7c8d9e10","receivedAt":"2026-11-29T10:02:03.456Z","method":"GET","kind":"order-id","orderId":null,"legacyOrderId":"PO-1","eventName":null,"tradecloudMessageId":null,"contentType":null,"body":null}"#;

    #[test]
    fn v1_envelopes_are_still_read() {
        let t = parse_trigger(V1_EVENT.as_bytes()).unwrap();
        assert_eq!(t.key(), "o-1");
        assert_eq!(t.method(), Method::Post);
        let Trigger::Event(e) = &t.trigger else {
            panic!("an event")
        };
        assert_eq!(
            e.body.get(),
            r#"{"eventName":"OrderIssuedByBuyer","orderEvent":{"orderId":"o-1"},"meta":{"messageId":"m-1"}}"#
        );
        let t = parse_trigger(V1_GET.as_bytes()).unwrap();
        assert_eq!(
            t.trigger,
            Trigger::Order(OrderRef::Legacy(OrderId::parse("PO-1").unwrap()))
        );
    }

    #[test]
    fn unknown_versions_and_invalid_envelopes_are_errors() {
        let v3 = V1_GET.replace("trigger.v1", "trigger.v3");
        assert!(matches!(
            parse_trigger(v3.as_bytes()),
            Err(CodecError::UnknownVersion(v)) if v == "trigger.v3"
        ));
        let dots = V1_GET.replace("\"PO-1\"", "\"..\"");
        assert!(matches!(
            parse_trigger(dots.as_bytes()),
            Err(CodecError::Field {
                field: "legacyOrderId",
                ..
            })
        ));
        let both = V1_GET.replace("\"orderId\":null", "\"orderId\":\"x\"");
        assert!(matches!(
            parse_trigger(both.as_bytes()),
            Err(CodecError::Invalid(_))
        ));
        let post_get = V1_GET.replace("\"GET\"", "\"POST\"");
        assert!(matches!(
            parse_trigger(post_get.as_bytes()),
            Err(CodecError::Invalid(_))
        ));
        assert!(matches!(parse_trigger(b"[]"), Err(CodecError::Json(_))));
        assert!(matches!(parse_trigger(b"{}"), Err(CodecError::Invalid(_))));
    }

    #[test]
    fn dead_letters_keep_the_message_and_revive_without_their_headers() {
        let t = TriggerEnvelope::event(
            EventMethod::Post,
            None,
            br#"{"eventName":"E","orderEvent":{"orderId":"o"}}"#,
            Utc::now(),
        )
        .unwrap();
        let mut received = encode_trigger(&t).unwrap();
        // What a backend hands out: headers only, no native fields.
        received.id = None;
        received.routing_word = None;
        received.content_type = None;
        let dead = dead_letter(
            &received,
            &DeadLetter {
                attempts: 3,
                first_error: Some("first".to_owned()),
                ..DeadLetter::poison(DeadLetterKind::NotFound, "it broke")
            },
            "triggers",
        );
        assert_eq!(dead.headers[header::DEAD_LETTER_ATTEMPTS], "3");
        assert_eq!(dead.headers[header::DEAD_LETTER_KIND], "not_found");
        assert_eq!(dead.headers[header::DEAD_LETTER_FIRST_ERROR], "first");
        assert_eq!(dead_letter_reason(&dead), Some("it broke"));
        assert_eq!(dead.routing_word.as_deref(), Some("E"));
        assert_eq!(dead.id, Some(t.id.to_string()));
        let (again, reason) = revive(&dead);
        assert_eq!(reason.as_deref(), Some("it broke"));
        assert_eq!(again.headers, encode_trigger(&t).unwrap().headers);
        assert_eq!(trigger_id(&again), Some(t.id.to_string().as_str()));
    }
}
