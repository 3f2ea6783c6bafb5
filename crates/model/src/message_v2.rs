//! The order message, version 2: what an ERP books from.
//!
//! Per line it keeps apart what Tradecloud keeps apart: the buyer's `requested` values, the
//! `current` ones (issued or confirmed), the `confirmed` (agreed) ones, the supplier's `proposed`
//! changes and `reopenRequest`, each with delivery schedule, prices and charge lines, and the
//! views including open requests. Every decimal is the exact text Tradecloud sent (`"78.90"`).
//! A field that does not have its documented type is `null` here, with an entry in `warnings`;
//! the message is delivered all the same. `original` is the payload, byte for byte.
//!
//! The doc comments are the field reference: `docs/schemas/order-message.v2.json` is generated
//! from them (`UPDATE_SCHEMA=1 cargo test -p tcb-model --test golden_v2`; the test fails while
//! it is stale), `docs/message.md` explains them with Tradecloud's definitions.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event_name::Actor;
use crate::json::Json;
use crate::message::{EventType, Scope, TriggerInfo};

/// Value of `schemaVersion`.
pub const ORDER_MESSAGE_V2: &str = "order-message.v2";

/// A decimal exactly as Tradecloud sent it, scale included (`"78.90"`, `"100.000"`); from a JSON
/// number or a quoted one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DecimalText(pub String);

impl JsonSchema for DecimalText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DecimalText".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DECIMAL_PATTERN,
            "description": "A decimal as the exact text Tradecloud sent (scale kept: \"78.90\")."
        })
    }
}

/// What a [`DecimalText`] may look like (a JSON number's grammar).
pub const DECIMAL_PATTERN: &str = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$";

/// One order message v2: one per trigger.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Tradecloud order message v2")]
pub struct OrderMessageV2 {
    /// Always `order-message.v2`.
    pub schema_version: String,
    /// Deterministic: the same for every redelivery of the same input (same event
    /// `meta.messageId` or body; same order id and version), so consumers can de-duplicate on it.
    pub message_id: Uuid,
    /// `full-order`: every line of the order. `partial-event`: only the lines the event affected
    /// (Tradecloud's events carry no others).
    pub scope: Scope,
    /// The event this message answers; null for an order fetched for a GET trigger.
    pub event: Option<EventInfo>,
    /// The API v2 order id.
    pub order_id: Option<String>,
    /// The legacy (API v1) order id, for legacy orders.
    pub legacy_order_id: Option<String>,
    /// The order's version (an integer Tradecloud raises with every change); absent on legacy
    /// orders.
    pub version: Option<i64>,
    /// Tradecloud's `lastUpdatedAt` of the order, as sent.
    pub last_updated_at: Option<String>,
    /// The order in Tradecloud's portal.
    pub portal_url: Option<String>,
    pub header: HeaderV2,
    /// The lines in the payload: all of them for `full-order`, the affected ones for
    /// `partial-event`.
    pub lines: Vec<LineV2>,
    /// Ids of the lines the event affected; null for a fetched order.
    pub affected_line_ids: Option<Vec<String>>,
    /// Fields that did not have their documented type: each is null in this message, and
    /// `original` has what was sent. Empty when everything read cleanly.
    pub warnings: Vec<FieldWarning>,
    pub trigger: TriggerInfo,
    /// When the worker produced this message.
    pub processed_at: DateTime<Utc>,
    /// The payload this message was made from, byte for byte: the event body (a tXML body as
    /// the JSON it renders), or the fetched order.
    #[schemars(with = "Json")]
    pub original: Box<RawValue>,
    /// For an event enriched with the full order (`[worker] enrichment`): the event body, byte
    /// for byte (`original` is then the fetched order). Null otherwise.
    #[schemars(with = "Option<Json>")]
    pub original_event: Option<Box<RawValue>>,
}

/// The event a message answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventInfo {
    /// Tradecloud's `eventName` (e.g. `OrderChangesProposedBySupplier`); names Tradecloud adds
    /// later pass through.
    pub name: String,
    /// The kebab-case category (`confirmed`, `changes-proposed`, ...).
    pub category: String,
    /// Who caused it, from the name's suffix.
    pub actor: Actor,
    /// Which event object the body carried; null for a body with none the bridge knows.
    pub object: Option<EventType>,
    /// `meta` of the body: Tradecloud's `messageId`, `source` and `createdDateTime`.
    pub meta: Option<Json>,
}

/// A field that did not have its documented type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldWarning {
    /// Where, as a JSON Pointer into `original` (e.g. `/orderEvent/lines/0/deliverySchedule/0/quantity`).
    pub path: String,
    /// What was expected (`decimal`, `string`, `integer`, `boolean`, `object`, `array`).
    pub expected: String,
    /// The JSON type that came (`string`, `number`, ...).
    pub found: String,
}

/// The order header: the buyer's and the supplier's parts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderV2 {
    /// `buyerOrder.purchaseOrderNumber` (legacy: the order's `code`).
    pub purchase_order_number: Option<String>,
    /// `Purchase`, `Forecast`, `RFQ`, or a value Tradecloud adds later.
    pub order_type: Option<String>,
    /// `Issued`, `InProgress`, `Confirmed`, `Rejected`, `Completed`, `Cancelled` (lower case on
    /// legacy orders), or later values.
    pub process_status: Option<String>,
    /// `Open`, `Produced`, `ReadyToShip`, `Shipped`, `Delivered`, `Cancelled`, or later values.
    pub logistics_status: Option<String>,
    /// The order's `indicators` (e.g. `deliveryOverdue`), as sent.
    pub indicators: Option<Json>,
    /// The order's `eventDates`, as sent.
    pub event_dates: Option<Json>,
    pub buyer: PartyOrder,
    pub supplier: PartyOrder,
}

/// One side's part of the order header (`buyerOrder` or `supplierOrder`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartyOrder {
    /// The Tradecloud company id of this side.
    pub company_id: Option<String>,
    /// The buyer's account number of the supplier (`buyerOrder.supplierAccountNumber`) or the
    /// supplier's of the buyer (`supplierOrder.buyerAccountNumber`).
    pub account_number: Option<String>,
    pub description: Option<String>,
    /// The contact person, as sent.
    pub contact: Option<Json>,
    /// `[{key, value}]`, as sent.
    pub properties: Option<Json>,
    /// Free-text notes, as sent.
    pub notes: Option<Json>,
    /// Labels, as sent.
    pub labels: Option<Json>,
    /// The delivery address(es), as sent.
    pub delivery_address: Option<Json>,
    /// Terms (incoterms, payment terms, ...), as sent.
    pub terms: Option<Json>,
    pub documents: Vec<Document>,
    /// The members this message does not name, as sent (nothing Tradecloud adds is lost).
    pub other: Option<Json>,
}

/// A document attached to the order or a line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Document {
    /// The object-storage id (fetch the file with it).
    pub object_id: Option<String>,
    pub name: Option<String>,
    /// The document's type or category, as sent.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub url: Option<String>,
    pub description: Option<String>,
    pub revision: Option<String>,
    /// The document's own code (e.g. a drawing number).
    pub code: Option<String>,
    /// Every member as sent.
    pub original: Json,
}

/// One order line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LineV2 {
    pub id: Option<String>,
    /// `Item`, `Service`, `Charge`, or later values.
    pub line_type: Option<String>,
    /// The buyer's position; null on a line the supplier created by a split.
    pub position: Option<String>,
    /// The position of the line this one was split from.
    pub original_position: Option<String>,
    /// True when the supplier created this line by splitting another (no buyer position).
    pub split_by_supplier: bool,
    pub description: Option<String>,
    pub item: Item,
    /// The supplier's sales order number for this line (`supplierLine.salesOrderNumber`).
    pub sales_order_number: Option<String>,
    /// The supplier's position on it (`supplierLine.salesOrderLinePosition`, also read from
    /// `salesOrderPosition`).
    pub sales_order_line_position: Option<String>,
    pub project_number: Option<String>,
    pub production_number: Option<String>,
    /// `Issued`, `InProgress`, `Confirmed`, `Rejected`, `Completed`, `Cancelled`, or later values.
    pub process_status: Option<String>,
    /// What is open on the line: `OpenSupplierProposal`, `OpenSupplierReopenRequest`, ...
    pub in_progress_status: Option<String>,
    pub logistics_status: Option<String>,
    /// The line's `indicators` (e.g. `deliveryOverdue`), as sent.
    pub indicators: Option<Json>,
    /// The buyer's requested values (`buyerLine`): what the buyer issued.
    pub requested: Option<Values>,
    /// The current values (`deliverySchedule`, `prices`, `chargeLines`): the issued ones, or
    /// the confirmed ones once confirmed. Not necessarily agreed.
    pub current: Values,
    /// The agreed values (`confirmedLine`), present only while the line's process status is
    /// `Confirmed` (Tradecloud: "only agreed when the line's process status is Confirmed"; a
    /// reopened or cancelled line's `confirmedLine` is in `original`).
    pub confirmed: Option<Values>,
    /// The supplier's proposal (`supplierLine.requests.proposal`), with its reason and status.
    pub proposed: Option<Request>,
    /// The supplier's reopen request (`supplierLine.requests.reopenRequest`).
    pub reopen_request: Option<Request>,
    /// The buyer's open requests (`buyerLine.requests`), as sent.
    pub buyer_requests: Option<Json>,
    /// The current values including open requests (`deliveryScheduleIncludingRequests`,
    /// `pricesIncludingRequests`; single delivery: `statusLine.scheduledDeliveryInclRequests`,
    /// `statusLine.pricesInclRequests`): what is planned if the open requests are approved.
    pub including_requests: Option<Values>,
    /// The one delivery of a single-delivery line (`statusLine.scheduledDelivery`, open
    /// requests not included); also the only entry of `current.deliverySchedule`.
    pub scheduled_delivery: Option<Delivery>,
    pub terms: Option<Json>,
    pub properties: Option<Json>,
    pub notes: Option<Json>,
    pub labels: Option<Json>,
    pub documents: Vec<Document>,
    /// `mergedItemDetails`, as sent.
    pub merged_item_details: Option<Json>,
    /// `eventDates` of the line, as sent.
    pub event_dates: Option<Json>,
    pub last_updated_at: Option<String>,
}

/// The item of a line (`buyerLine.item`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Item {
    pub number: Option<String>,
    pub revision: Option<String>,
    pub name: Option<String>,
    pub purchase_unit_of_measure_iso: Option<String>,
    pub supplier_item_number: Option<String>,
}

/// A set of line values: schedule, prices and charge lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    pub delivery_schedule: Vec<Delivery>,
    pub prices: Option<Prices>,
    /// Additional cost lines of the order line (freight, ...). Tradecloud deprecates them for
    /// new work in favour of lines with `lineType` `Charge`, but still sends them.
    pub charge_lines: Vec<ChargeLine>,
}

/// An additional cost of an order line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChargeLine {
    /// Identifies the charge line.
    pub position: Option<String>,
    /// The charge reason code (UNCL7161), e.g. `FC` (freight).
    pub charge_type_code: Option<String>,
    /// Free text, like "Transport costs".
    pub charge_description: Option<String>,
    pub quantity: Option<DecimalText>,
    /// The price of the charge line.
    pub price: Option<Price>,
    pub price_unit_of_measure_iso: Option<String>,
}

/// A supplier request on a line: proposed values, why, and where it stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    #[serde(flatten)]
    pub values: Values,
    /// The supplier's reason.
    pub reason: Option<String>,
    /// `Open`, `Approved`, `Rejected`, `Closed`, or later values.
    pub status: Option<String>,
}

/// One delivery of a schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delivery {
    pub position: Option<String>,
    /// `YYYY-MM-DD`.
    pub date: Option<String>,
    pub quantity: Option<DecimalText>,
    pub status: Option<String>,
    /// Estimated time of departure, as sent.
    pub etd: Option<String>,
    /// Estimated time of arrival, as sent.
    pub eta: Option<String>,
    pub transport_mode: Option<String>,
}

/// The prices of a line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Prices {
    pub gross_price: Option<Price>,
    /// Percent, e.g. `"5.00"`.
    pub discount_percentage: Option<DecimalText>,
    /// The price per price unit after discount.
    pub net_price: Option<Price>,
    pub price_unit_of_measure_iso: Option<String>,
    /// How many units the price is for.
    pub price_unit_quantity: Option<DecimalText>,
}

/// A price in the transaction currency and in the buyer's base currency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    pub transaction_currency: Option<Money>,
    pub base_currency: Option<Money>,
}

/// An amount of money.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Money {
    pub value: Option<DecimalText>,
    pub currency_iso: Option<String>,
}

/// The JSON Schema of [`OrderMessageV2`], as published in `docs/schemas/`.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(OrderMessageV2)).unwrap_or(serde_json::Value::Null)
}
