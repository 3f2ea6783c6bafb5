//! The JSON body of a webhook `POST`/`PUT`: `eventName` plus one event object and optional `meta`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::order::{Meta, Order};

/// Which event object a body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventObject {
    /// `orderEvent`: the order with the affected lines.
    Order,
    /// `singleDeliveryOrderEvent` (`simpleOrderEvent` in 2023-24): one scheduled delivery per line.
    SingleDelivery,
    /// `orderDocumentsEvent`: documents attached to the order.
    Documents,
}

/// The members of a webhook body that hold the event object, in the order they are looked for.
pub const WEBHOOK_EVENT_MEMBERS: [&str; 4] = [
    "orderEvent",
    "singleDeliveryOrderEvent",
    "simpleOrderEvent",
    "orderDocumentsEvent",
];

/// A webhook body. Unknown members are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WebhookBody {
    pub event_name: Option<String>,
    pub order_event: Option<Order>,
    #[serde(alias = "simpleOrderEvent")]
    pub single_delivery_order_event: Option<Order>,
    pub order_documents_event: Option<Order>,
    pub meta: Option<Meta>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl WebhookBody {
    /// The event object and which kind it is; `None` when the body carries none the bridge knows.
    pub fn event(&self) -> Option<(EventObject, &Order)> {
        if let Some(o) = &self.order_event {
            Some((EventObject::Order, o))
        } else if let Some(o) = &self.single_delivery_order_event {
            Some((EventObject::SingleDelivery, o))
        } else {
            self.order_documents_event
                .as_ref()
                .map(|o| (EventObject::Documents, o))
        }
    }
}
