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

/// The order id and purchase order number of a body that was refused, as far as it can be read
/// (for the journal; never for routing): any top-level member holding an object with `orderId`
/// (or `id`) and `buyerOrder.purchaseOrderNumber`.
pub fn order_hint(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let known = WEBHOOK_EVENT_MEMBERS.iter().filter_map(|m| members.get(*m));
    known
        .chain(members.values())
        .filter_map(Value::as_object)
        .map(|event| {
            let order = text(event.get("orderId").or_else(|| event.get("id")));
            let po = text(
                event
                    .get("buyerOrder")
                    .and_then(|b| b.get("purchaseOrderNumber")),
            );
            (order, po)
        })
        .find(|(order, po)| order.is_some() || po.is_some())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::order_hint;

    #[test]
    fn a_refused_body_still_names_its_order_where_it_can() {
        let no_event_name =
            br#"{"orderEvent":{"orderId":"o-1","buyerOrder":{"purchaseOrderNumber":"PO-1"}}}"#;
        assert_eq!(
            order_hint(no_event_name),
            (Some("o-1".to_owned()), Some("PO-1".to_owned()))
        );
        let unknown_member = br#"{"eventName":1,"futureEvent":{"id":"o-2"}}"#;
        assert_eq!(order_hint(unknown_member), (Some("o-2".to_owned()), None));
        assert_eq!(order_hint(b"{not json"), (None, None));
        assert_eq!(order_hint(br#"[{"orderId":"o-3"}]"#), (None, None));
        assert_eq!(order_hint(br#"{"orderEvent":{"orderId":7}}"#), (None, None));
    }
}
