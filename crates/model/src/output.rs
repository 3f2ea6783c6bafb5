//! What the worker publishes to the orders topic: an order message of the configured version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::{ORDER_MESSAGE_SCHEMA_VERSION, OrderMessage, Scope, TriggerInfo};
use crate::message_v2::{ORDER_MESSAGE_V2, OrderMessageV2};
use crate::normalize::NormalizeError;
use crate::trigger::TriggerEnvelope;

/// Which order message the worker publishes (`[worker] message_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageVersion {
    /// `order-message.v1`: deprecated, kept for existing consumers (what a config without the
    /// key gets).
    #[default]
    V1,
    /// `order-message.v2`: requested, current, confirmed and proposed values apart; what new
    /// configs use.
    V2,
}

/// What the worker does with a POST/PUT event (`[worker] enrichment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enrichment {
    /// Publish the event as it came (only the lines it affected).
    #[default]
    Event,
    /// Fetch the order after every event (through the GET triggers' coalescing, rate limit and
    /// token flow) and publish the full order, naming the event.
    FullOrder,
    /// Fetch the order only for an event that carries no lines (a documents event, a contact or
    /// label change); publish the others as they came.
    WhenPartial,
}

/// An order message of either version.
#[derive(Debug, Clone)]
pub enum Output {
    V1(Box<OrderMessage>),
    V2(Box<OrderMessageV2>),
}

impl Output {
    /// A POST/PUT trigger's event as a message of `version`.
    pub fn event(
        version: MessageVersion,
        trigger: &TriggerEnvelope,
        at: DateTime<Utc>,
    ) -> Result<Output, NormalizeError> {
        Ok(match version {
            MessageVersion::V1 => Output::V1(Box::new(crate::normalize_event(trigger, at)?)),
            MessageVersion::V2 => Output::V2(Box::new(crate::normalize_event_v2(trigger, at)?)),
        })
    }

    /// A GET trigger's fetched order as a message of `version`.
    pub fn fetched(
        version: MessageVersion,
        trigger: &TriggerEnvelope,
        fetched: &[u8],
        at: DateTime<Utc>,
    ) -> Result<Output, NormalizeError> {
        Ok(match version {
            MessageVersion::V1 => Output::V1(Box::new(crate::normalize_fetched_order(
                trigger, fetched, at,
            )?)),
            MessageVersion::V2 => Output::V2(Box::new(crate::normalize_fetched_order_v2(
                trigger, fetched, at,
            )?)),
        })
    }

    /// A POST/PUT trigger's event plus the order fetched after it (message v2 only: the
    /// config refuses enrichment with v1).
    pub fn enriched(
        version: MessageVersion,
        trigger: &TriggerEnvelope,
        fetched: &[u8],
        at: DateTime<Utc>,
    ) -> Result<Output, NormalizeError> {
        match version {
            MessageVersion::V2 => Ok(Output::V2(Box::new(
                crate::normalize_v2::normalize_enriched_event_v2(trigger, fetched, at)?,
            ))),
            MessageVersion::V1 => Err(NormalizeError::EventBody(
                "enrichment needs message_version v2".to_owned(),
            )),
        }
    }

    pub fn message_id(&self) -> Uuid {
        match self {
            Output::V1(m) => m.message_id,
            Output::V2(m) => m.message_id,
        }
    }

    pub fn schema_version(&self) -> &'static str {
        match self {
            Output::V1(_) => ORDER_MESSAGE_SCHEMA_VERSION,
            Output::V2(_) => ORDER_MESSAGE_V2,
        }
    }

    pub fn scope(&self) -> Scope {
        match self {
            Output::V1(m) => m.scope,
            Output::V2(m) => m.scope,
        }
    }

    pub fn order_id(&self) -> Option<&str> {
        match self {
            Output::V1(m) => m.order_id.as_deref(),
            Output::V2(m) => m.order_id.as_deref(),
        }
    }

    pub fn legacy_order_id(&self) -> Option<&str> {
        match self {
            Output::V1(m) => m.legacy_order_id.as_deref(),
            Output::V2(m) => m.legacy_order_id.as_deref(),
        }
    }

    pub fn event_name(&self) -> Option<&str> {
        match self {
            Output::V1(m) => m.event_name.as_deref(),
            Output::V2(m) => m.event.as_ref().map(|e| e.name.as_str()),
        }
    }

    pub fn purchase_order_number(&self) -> Option<&str> {
        match self {
            Output::V1(m) => m.header.purchase_order_number.as_deref(),
            Output::V2(m) => m.header.purchase_order_number.as_deref(),
        }
    }

    /// The order's version (a fetched order's, or the event's when it carries one).
    pub fn version(&self) -> Option<i64> {
        match self {
            Output::V1(m) => m.order_version,
            Output::V2(m) => m.version,
        }
    }

    pub fn trigger_id(&self) -> Uuid {
        self.trigger().id
    }

    /// The trigger the message answers.
    pub fn trigger(&self) -> &TriggerInfo {
        match self {
            Output::V1(m) => &m.trigger,
            Output::V2(m) => &m.trigger,
        }
    }

    /// How many lines the message has.
    pub fn line_count(&self) -> usize {
        match self {
            Output::V1(m) => m.lines.len(),
            Output::V2(m) => m.lines.len(),
        }
    }

    pub fn processed_at(&self) -> DateTime<Utc> {
        match self {
            Output::V1(m) => m.processed_at,
            Output::V2(m) => m.processed_at,
        }
    }

    /// Fields of a v2 message that did not have their documented type (none for v1).
    pub fn warnings(&self) -> usize {
        match self {
            Output::V1(_) => 0,
            Output::V2(m) => m.warnings.len(),
        }
    }

    /// The message as JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Output::V1(m) => serde_json::to_vec(m),
            Output::V2(m) => serde_json::to_vec(m),
        }
    }
}
