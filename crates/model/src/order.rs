//! The order as Tradecloud sends it: in an event (only the affected lines, id in `orderId`) or
//! fetched from API v2 (all lines, id in `id`), plus the legacy API v1 order.
//!
//! Every struct keeps the fields it does not name in `extra`, so nothing Tradecloud adds is lost;
//! every named field is optional because Tradecloud documents no required ones.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lenient::{null_as_default, string_or_number};

type Extra = Map<String, Value>;

/// An API v2 order, or the order object of an order event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Order {
    /// The order id in a fetched order.
    pub id: Option<String>,
    /// The order id in an event.
    pub order_id: Option<String>,
    /// Set on orders that came from the legacy platform.
    pub legacy_order_id: Option<String>,
    /// Integer order version; absent on legacy orders.
    #[serde(deserialize_with = "crate::lenient::native_or_text")]
    pub version: Option<i64>,
    pub buyer_order: Option<BuyerOrder>,
    pub supplier_order: Option<SupplierOrder>,
    pub indicators: Option<Indicators>,
    pub status: Option<OrderStatus>,
    #[serde(deserialize_with = "null_as_default")]
    pub lines: Vec<Line>,
    pub last_updated_at: Option<String>,
    pub meta: Option<Meta>,
    pub portal_url: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Order {
    /// The order id, from whichever field carries it.
    pub fn any_id(&self) -> Option<&str> {
        self.id.as_deref().or(self.order_id.as_deref())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BuyerOrder {
    pub company_id: Option<String>,
    pub supplier_account_number: Option<String>,
    pub purchase_order_number: Option<String>,
    pub description: Option<String>,
    pub order_type: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SupplierOrder {
    pub company_id: Option<String>,
    pub buyer_account_number: Option<String>,
    pub sales_order_number: Option<String>,
    pub description: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Indicators {
    #[serde(deserialize_with = "crate::lenient::native_or_text")]
    pub delivery_overdue: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OrderStatus {
    pub process_status: Option<String>,
    pub logistics_status: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `meta` of an event or order: `messageId` is Tradecloud's only per-message id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    pub message_id: Option<String>,
    pub created_date_time: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Line {
    pub id: Option<String>,
    pub line_type: Option<String>,
    pub buyer_line: Option<BuyerLine>,
    pub supplier_line: Option<SupplierLine>,
    #[serde(deserialize_with = "null_as_default")]
    pub delivery_schedule: Vec<DeliveryLine>,
    pub prices: Option<Prices>,
    pub indicators: Option<Indicators>,
    pub status: Option<LineStatus>,
    /// Present instead of the schedule in `singleDeliveryOrderEvent` lines.
    pub status_line: Option<StatusLine>,
    pub last_updated_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BuyerLine {
    /// Null on a line the supplier created by splitting another.
    #[serde(deserialize_with = "string_or_number")]
    pub position: Option<String>,
    #[serde(deserialize_with = "string_or_number")]
    pub original_position: Option<String>,
    pub description: Option<String>,
    pub item: Option<Item>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Item {
    pub number: Option<String>,
    pub revision: Option<String>,
    pub name: Option<String>,
    pub purchase_unit_of_measure_iso: Option<String>,
    pub supplier_item_number: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SupplierLine {
    pub sales_order_number: Option<String>,
    #[serde(deserialize_with = "string_or_number")]
    pub sales_order_position: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One delivery of a schedule (`deliverySchedule[]`, `scheduledDelivery`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeliveryLine {
    #[serde(deserialize_with = "string_or_number")]
    pub position: Option<String>,
    pub date: Option<String>,
    /// Exact; accepted as a JSON number or a quoted string.
    pub quantity: Option<Decimal>,
    pub status: Option<String>,
    pub etd: Option<String>,
    pub eta: Option<String>,
    pub transport_mode: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Prices {
    pub gross_price: Option<Price>,
    pub discount_percentage: Option<Decimal>,
    pub net_price: Option<Price>,
    pub price_unit_of_measure_iso: Option<String>,
    pub price_unit_quantity: Option<Decimal>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Price {
    pub price_in_transaction_currency: Option<Amount>,
    pub price_in_base_currency: Option<Amount>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Amount {
    pub value: Option<Decimal>,
    pub currency_iso: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LineStatus {
    pub process_status: Option<String>,
    pub in_progress_status: Option<String>,
    pub logistics_status: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The single-delivery form of a line's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatusLine {
    pub scheduled_delivery: Option<DeliveryLine>,
    pub prices: Option<Prices>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A legacy (API v1, tradecloud.nl) purchase order. Its response schema is not public: this
/// follows the closest public shape (Tradecloud's migration model) and keeps everything else.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LegacyOrder {
    #[serde(deserialize_with = "string_or_number")]
    pub id: Option<String>,
    pub order_id: Option<String>,
    /// The purchase order number.
    pub code: Option<String>,
    pub supplier: Option<LegacyCompany>,
    pub customer: Option<LegacyCompany>,
    pub status: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub lines: Vec<LegacyLine>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LegacyCompany {
    pub company_id: Option<String>,
    pub code: Option<String>,
    pub name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LegacyLine {
    pub line_id: Option<String>,
    pub code: Option<String>,
    #[serde(deserialize_with = "string_or_number")]
    pub row: Option<String>,
    pub status: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}
