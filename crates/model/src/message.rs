//! The normalized order message, version 1: what the worker publishes to the orders topic.
//!
//! The doc comments on these types are the field reference: `docs/schemas/order-message.v1.json` is
//! generated from them (`tradecloud-bridge schema`) and a test keeps the file in step.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::event_name::Actor;
use crate::trigger::TriggerKind;

/// Value of `schemaVersion`.
pub const ORDER_MESSAGE_SCHEMA_VERSION: &str = "order-message.v1";

/// One normalized order message: one per trigger. Decimals are strings, exact as Tradecloud sent them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Tradecloud order message v1")]
pub struct OrderMessage {
    /// Always `order-message.v1`.
    pub schema_version: String,
    /// Deterministic: the same for every redelivery of the same input (same event `meta.messageId`
    /// or body; same order id and version), so consumers can de-duplicate on it.
    pub message_id: Uuid,
    /// `full-order`: all lines of a fetched order (GET trigger). `partial-event`: only the lines an
    /// event affected (POST/PUT trigger).
    pub scope: Scope,
    /// Tradecloud's `eventName`; null for a fetched order.
    pub event_name: Option<String>,
    /// The event's kebab-case category (`confirmed`, `changes-proposed`, ...); null for a fetched order.
    pub event_category: Option<String>,
    /// Who caused the event; null for a fetched order.
    pub actor: Option<Actor>,
    /// Which event object the body carried (`order`, `single-delivery`, `documents`); null for a
    /// fetched order.
    pub event_type: Option<EventType>,
    /// The API v2 order id.
    pub order_id: Option<String>,
    /// The legacy (API v1) order id, for legacy orders.
    pub legacy_order_id: Option<String>,
    /// The order version; absent on legacy orders and in some events.
    pub order_version: Option<i64>,
    /// Tradecloud's `lastUpdatedAt` of the order, as sent.
    pub last_updated_at: Option<String>,
    pub header: Header,
    /// The lines in the payload: all of them for `full-order`, the affected ones for `partial-event`.
    pub lines: Vec<MessageLine>,
    /// Ids of the lines the event affected; null for a fetched order (not known).
    pub affected_line_ids: Option<Vec<String>>,
    pub trigger: TriggerInfo,
    /// When the worker produced this message.
    pub processed_at: DateTime<Utc>,
    /// The Tradecloud payload this message was made from, verbatim: the event body, or the
    /// fetched order.
    pub original: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    FullOrder,
    PartialEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    Order,
    SingleDelivery,
    Documents,
}

/// The order header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    pub purchase_order_number: Option<String>,
    pub sales_order_number: Option<String>,
    pub buyer_company_id: Option<String>,
    pub supplier_company_id: Option<String>,
    /// The buyer's account number of the supplier.
    pub supplier_account_number: Option<String>,
    /// The supplier's account number of the buyer.
    pub buyer_account_number: Option<String>,
    pub description: Option<String>,
    /// `Purchase`, `Forecast`, `RFQ`, or a value Tradecloud added later.
    pub order_type: Option<String>,
    /// `Issued`, `InProgress`, `Confirmed`, `Rejected`, `Completed`, `Cancelled`, or later values;
    /// lower case on legacy orders.
    pub process_status: Option<String>,
    /// `Open`, `Produced`, `ReadyToShip`, `Shipped`, `Delivered`, `Cancelled`, or later values.
    pub logistics_status: Option<String>,
    pub delivery_overdue: Option<bool>,
}

/// One order line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageLine {
    pub id: Option<String>,
    /// `Item`, `Service`, `Charge`, or later values.
    pub line_type: Option<String>,
    /// The buyer's position; null on a line the supplier created by a split.
    pub position: Option<String>,
    pub original_position: Option<String>,
    /// True when the supplier created this line by splitting another (no buyer position).
    pub split_by_supplier: bool,
    pub description: Option<String>,
    pub item_number: Option<String>,
    pub item_revision: Option<String>,
    pub item_name: Option<String>,
    pub supplier_item_number: Option<String>,
    pub unit_of_measure: Option<String>,
    pub sales_order_number: Option<String>,
    pub sales_order_position: Option<String>,
    pub process_status: Option<String>,
    pub in_progress_status: Option<String>,
    pub logistics_status: Option<String>,
    pub delivery_overdue: Option<bool>,
    /// The agreed delivery schedule (for single-delivery events: the one scheduled delivery).
    pub delivery_schedule: Vec<Delivery>,
    /// The net price per price unit, in the transaction currency.
    pub net_price: Option<Money>,
    pub gross_price: Option<Money>,
    pub discount_percentage: Option<Decimal>,
    pub price_unit_quantity: Option<Decimal>,
    pub price_unit_of_measure: Option<String>,
}

/// One delivery of a line's schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delivery {
    pub position: Option<String>,
    /// `YYYY-MM-DD`.
    pub date: Option<String>,
    pub quantity: Option<Decimal>,
    pub status: Option<String>,
    pub etd: Option<String>,
    pub eta: Option<String>,
    pub transport_mode: Option<String>,
}

/// An amount of money.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Money {
    pub value: Option<Decimal>,
    pub currency_iso: Option<String>,
}

/// The trigger this message answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerInfo {
    /// The trigger's UUIDv7.
    pub id: Uuid,
    /// When the ingress received the webhook call.
    pub received_at: DateTime<Utc>,
    /// The HTTP method of the webhook call.
    pub method: String,
    pub kind: TriggerKind,
    /// Tradecloud's `meta.messageId`, when the body had one.
    pub tradecloud_message_id: Option<String>,
}

/// The JSON Schema of [`OrderMessage`], as published in `docs/schemas/`.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(OrderMessage)).unwrap_or(Value::Null)
}
