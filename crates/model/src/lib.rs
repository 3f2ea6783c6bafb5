//! The pure domain of tradecloud-bridge: no I/O.
//!
//! * [`webhook`]: the bodies Tradecloud POSTs/PUTs to the webhook, parsed leniently.
//! * [`order`]: the order as Tradecloud sends it (API v2 and legacy API v1), parsed leniently.
//! * [`trigger`]: the trigger the ingress publishes to the triggers topic.
//! * [`codec`]: the one encoding of both bus messages (trigger, order message) and their headers.
//! * [`message`]: the normalized order message v1 (deprecated; kept for existing consumers).
//! * [`message_v2`]: the order message v2 the worker publishes to the orders topic: requested,
//!   current, confirmed and proposed values apart, decimals exact, type problems as warnings.
//! * [`json`]: JSON read with every number's text kept.
//! * [`normalize`]: the pure functions from a trigger (and a fetched order) to a message.
//! * [`txml`]: Tradecloud's XML rendering of the webhook JSON, read into the same JSON.
//!
//! Leniency rules (from Tradecloud's compatibility promise): unknown fields are kept, unknown enum
//! values and event names are accepted as plain strings, decimals are accepted as JSON numbers or
//! strings and kept exact.

pub mod codec;
mod event_facts;
pub mod event_name;
pub mod json;
pub mod message;
pub mod message_v2;
pub mod normalize;
pub mod normalize_v2;
pub mod order;
pub mod output;
pub mod trigger;
pub mod txml;
pub mod webhook;

mod lenient;

pub use message::OrderMessage;
pub use message_v2::OrderMessageV2;
pub use normalize::{NormalizeError, normalize_event, normalize_fetched_order};
pub use normalize_v2::{normalize_event_v2, normalize_fetched_order_v2};
pub use output::{Enrichment, MessageVersion, Output};
pub use trigger::{
    EventMethod, EventName, IdKind, Method, OrderId, OrderRef, Trigger, TriggerEnvelope,
    TriggerError, TriggerKind,
};
