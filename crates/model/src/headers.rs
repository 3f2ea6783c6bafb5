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
