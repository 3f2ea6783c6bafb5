//! Names of the message headers the bridge writes, one place for all backends.

/// Id of the trigger a message stems from (UUIDv7).
pub const TRIGGER_ID: &str = "tcb-trigger-id";
/// Content type of the payload.
pub const CONTENT_TYPE: &str = "content-type";
/// Schema version of the payload (`trigger.v1`, `order-message.v1`).
pub const SCHEMA_VERSION: &str = "tcb-schema-version";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";
/// Why a trigger went to the dead-letter topic.
pub const DEAD_LETTER_REASON: &str = "tcb-dead-letter-reason";
/// Which topic a dead-lettered message was consumed from.
pub const DEAD_LETTER_SOURCE: &str = "tcb-dead-letter-source";
/// Tradecloud's `eventName` (absent for GET triggers).
pub const EVENT_NAME: &str = "tcb-event-name";
/// The normalized message's deterministic id.
pub const MESSAGE_ID: &str = "tcb-message-id";

/// The headers every message of the bridge carries: trigger id, JSON content type, schema
/// version, trace context and, when there is one, the event name.
pub fn common(
    trigger_id: &uuid::Uuid,
    schema_version: &str,
    traceparent: &str,
    event_name: Option<&str>,
) -> Vec<(String, String)> {
    let mut h = vec![
        (TRIGGER_ID.to_owned(), trigger_id.to_string()),
        (CONTENT_TYPE.to_owned(), "application/json".to_owned()),
        (SCHEMA_VERSION.to_owned(), schema_version.to_owned()),
        (TRACEPARENT.to_owned(), traceparent.to_owned()),
    ];
    if let Some(name) = event_name {
        h.push((EVENT_NAME.to_owned(), name.to_owned()));
    }
    h
}

/// CloudEvents 1.0 attributes of an output message, in the Kafka binding's `ce_` form. The AMQP
/// binding writes the same attributes with the `cloudEvents:` prefix instead.
pub fn cloud_events(message: &crate::OrderMessage) -> Vec<(String, String)> {
    let kind = match message.scope {
        crate::message::Scope::FullOrder => "com.tradecloud.order.full",
        crate::message::Scope::PartialEvent => "com.tradecloud.order.event",
    };
    let mut attrs = vec![
        ("ce_specversion".to_owned(), "1.0".to_owned()),
        ("ce_id".to_owned(), message.message_id.to_string()),
        ("ce_source".to_owned(), "tradecloud-bridge".to_owned()),
        ("ce_type".to_owned(), kind.to_owned()),
        ("ce_time".to_owned(), message.processed_at.to_rfc3339()),
        ("ce_dataschema".to_owned(), "order-message.v1".to_owned()),
    ];
    if let Some(subject) = message
        .order_id
        .as_ref()
        .or(message.legacy_order_id.as_ref())
    {
        attrs.push(("ce_subject".to_owned(), subject.clone()));
    }
    attrs
}
