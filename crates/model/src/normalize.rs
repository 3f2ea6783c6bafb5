//! Pure functions from a trigger (and, for a GET trigger, the fetched order) to an [`OrderMessage`].

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event_name;
use crate::message::{
    Delivery, EventType, Header, MessageLine, Money, ORDER_MESSAGE_SCHEMA_VERSION, OrderMessage,
    Scope, TriggerInfo,
};
use crate::order::{DeliveryLine, LegacyOrder, Line, Order, Price, Prices};
use crate::trigger::{OrderRef, Trigger, TriggerEnvelope};
use crate::webhook::{EventObject, WebhookBody};

/// Namespace of the deterministic message ids (UUIDv5).
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_8b7d_4c3a_9e51_0d2f_7a6b_5c41);

/// Why a trigger cannot become a message. All of these are permanent (poison): retrying the
/// same input gives the same error, so the worker dead-letters the trigger.
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    #[error("the trigger is an order-id trigger but an event was expected, or the reverse")]
    WrongKind,
    #[error("the event body does not parse: {0}")]
    EventBody(String),
    #[error("the fetched order does not parse: {0}")]
    FetchedOrder(String),
}

/// A POST/PUT trigger's event -> a `partial-event` message.
pub fn normalize_event(
    trigger: &TriggerEnvelope,
    processed_at: DateTime<Utc>,
) -> Result<OrderMessage, NormalizeError> {
    let Trigger::Event(event) = &trigger.trigger else {
        return Err(NormalizeError::WrongKind);
    };
    let raw = event.body.get();
    let original: Value = if event
        .content_type
        .as_deref()
        .is_some_and(crate::txml::is_xml)
    {
        // tXML: the XML text, read into the JSON body it renders.
        let xml: String =
            serde_json::from_str(raw).map_err(|e| NormalizeError::EventBody(e.to_string()))?;
        crate::txml::to_json(&xml).map_err(|e| NormalizeError::EventBody(e.to_string()))?
    } else {
        serde_json::from_str(raw).map_err(|e| NormalizeError::EventBody(e.to_string()))?
    };
    let body: WebhookBody = serde_json::from_value(original.clone())
        .map_err(|e| NormalizeError::EventBody(e.to_string()))?;
    let event_name = body
        .event_name
        .clone()
        .or_else(|| Some(event.event_name.as_str().to_owned()));
    let (event_type, order) = match body.event() {
        Some((kind, order)) => (Some(event_type(kind)), order.clone()),
        None => (None, Order::default()),
    };
    let lines: Vec<MessageLine> = order.lines.iter().map(line).collect();
    let affected = lines.iter().filter_map(|l| l.id.clone()).collect();
    Ok(OrderMessage {
        schema_version: ORDER_MESSAGE_SCHEMA_VERSION.to_owned(),
        message_id: event_identity(event),
        scope: Scope::PartialEvent,
        event_category: event_name.as_deref().map(event_name::category),
        actor: event_name.as_deref().map(event_name::actor),
        event_name,
        event_type,
        order_id: order
            .any_id()
            .map(str::to_owned)
            .or_else(|| event.order_id.as_ref().map(|id| id.as_str().to_owned())),
        legacy_order_id: order.legacy_order_id.clone().or_else(|| {
            event
                .legacy_order_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
        }),
        order_version: order.version,
        last_updated_at: order.last_updated_at.clone(),
        header: header(&order),
        lines,
        affected_line_ids: Some(affected),
        trigger: trigger_info(trigger),
        processed_at,
        original,
    })
}

/// A GET trigger plus the order fetched for it (API v2, or legacy API v1 when the trigger names
/// a legacy order) -> a `full-order` message.
pub fn normalize_fetched_order(
    trigger: &TriggerEnvelope,
    fetched: &[u8],
    processed_at: DateTime<Utc>,
) -> Result<OrderMessage, NormalizeError> {
    let Trigger::Order(order_ref) = &trigger.trigger else {
        return Err(NormalizeError::WrongKind);
    };
    let original: Value =
        serde_json::from_slice(fetched).map_err(|e| NormalizeError::FetchedOrder(e.to_string()))?;
    if !original.is_object() {
        return Err(NormalizeError::FetchedOrder("not a JSON object".to_owned()));
    }
    let (message_id, order_id, legacy_order_id, version, last_updated_at, header, lines) =
        match order_ref {
            OrderRef::Legacy(legacy_id) => {
                let order: LegacyOrder = serde_json::from_value(original.clone())
                    .map_err(|e| NormalizeError::FetchedOrder(e.to_string()))?;
                let legacy_id = Some(legacy_id.as_str().to_owned());
                (
                    order_identity(order_ref, None, None, None, fetched),
                    None,
                    legacy_id,
                    None,
                    None,
                    legacy_header(&order),
                    order.lines.iter().map(legacy_line).collect(),
                )
            }
            OrderRef::V2(requested) => {
                let order: Order = serde_json::from_value(original.clone())
                    .map_err(|e| NormalizeError::FetchedOrder(e.to_string()))?;
                let order_id = order
                    .any_id()
                    .map(str::to_owned)
                    .or_else(|| Some(requested.as_str().to_owned()));
                (
                    order_identity(
                        order_ref,
                        order_id.as_deref(),
                        order.version,
                        order.last_updated_at.as_deref(),
                        fetched,
                    ),
                    order_id,
                    order.legacy_order_id.clone(),
                    order.version,
                    order.last_updated_at.clone(),
                    header(&order),
                    order.lines.iter().map(line).collect(),
                )
            }
        };
    Ok(OrderMessage {
        schema_version: ORDER_MESSAGE_SCHEMA_VERSION.to_owned(),
        message_id,
        scope: Scope::FullOrder,
        event_name: None,
        event_category: None,
        actor: None,
        event_type: None,
        order_id,
        legacy_order_id,
        order_version: version,
        last_updated_at,
        header,
        lines,
        affected_line_ids: None,
        trigger: trigger_info(trigger),
        processed_at,
        original,
    })
}

/// The message id of an event: from Tradecloud's `meta.messageId`, else from the body, so every
/// redelivery of the same event gets the same id.
pub(crate) fn event_identity(event: &crate::trigger::EventTrigger) -> Uuid {
    let identity = match &event.tradecloud_message_id {
        Some(id) => format!("event:{id}"),
        None => format!("event-body:{}", hex_sha256(event.body.get().as_bytes())),
    };
    Uuid::new_v5(&MESSAGE_ID_NAMESPACE, identity.as_bytes())
}

/// The message id of a fetched order: from its id, version and `lastUpdatedAt`, else (no
/// version, or a legacy order) from the bytes fetched.
pub(crate) fn order_identity(
    order_ref: &OrderRef,
    order_id: Option<&str>,
    version: Option<i64>,
    last_updated_at: Option<&str>,
    fetched: &[u8],
) -> Uuid {
    let identity = match (order_ref, version) {
        (OrderRef::Legacy(legacy_id), _) => {
            format!("legacy:{}:{}", legacy_id.as_str(), hex_sha256(fetched))
        }
        (OrderRef::V2(_), Some(v)) => format!(
            "order:{}:v{v}:{}",
            order_id.unwrap_or_default(),
            last_updated_at.unwrap_or_default()
        ),
        (OrderRef::V2(_), None) => {
            format!(
                "order:{}:{}",
                order_id.unwrap_or_default(),
                hex_sha256(fetched)
            )
        }
    };
    Uuid::new_v5(&MESSAGE_ID_NAMESPACE, identity.as_bytes())
}

pub(crate) fn event_type(kind: EventObject) -> EventType {
    match kind {
        EventObject::Order => EventType::Order,
        EventObject::SingleDelivery => EventType::SingleDelivery,
        EventObject::Documents => EventType::Documents,
    }
}

pub(crate) fn trigger_info(t: &TriggerEnvelope) -> TriggerInfo {
    TriggerInfo {
        id: t.id,
        received_at: t.received_at,
        method: t.method().as_str().to_owned(),
        kind: t.kind(),
        tradecloud_message_id: t.tradecloud_message_id().map(str::to_owned),
    }
}

fn header(o: &Order) -> Header {
    let buyer = o.buyer_order.as_ref();
    let supplier = o.supplier_order.as_ref();
    Header {
        purchase_order_number: buyer.and_then(|b| b.purchase_order_number.clone()),
        sales_order_number: supplier.and_then(|s| s.sales_order_number.clone()),
        buyer_company_id: buyer.and_then(|b| b.company_id.clone()),
        supplier_company_id: supplier.and_then(|s| s.company_id.clone()),
        supplier_account_number: buyer.and_then(|b| b.supplier_account_number.clone()),
        buyer_account_number: supplier.and_then(|s| s.buyer_account_number.clone()),
        description: buyer.and_then(|b| b.description.clone()),
        order_type: buyer.and_then(|b| b.order_type.clone()),
        process_status: o.status.as_ref().and_then(|s| s.process_status.clone()),
        logistics_status: o.status.as_ref().and_then(|s| s.logistics_status.clone()),
        delivery_overdue: o.indicators.as_ref().and_then(|i| i.delivery_overdue),
    }
}

fn line(l: &Line) -> MessageLine {
    let buyer = l.buyer_line.as_ref();
    let item = buyer.and_then(|b| b.item.as_ref());
    let status = l.status.as_ref();
    let (schedule, prices): (Vec<Delivery>, Option<&Prices>) = match &l.status_line {
        Some(sl) => (
            sl.scheduled_delivery.iter().map(delivery).collect(),
            sl.prices.as_ref().or(l.prices.as_ref()),
        ),
        None => (
            l.delivery_schedule.iter().map(delivery).collect(),
            l.prices.as_ref(),
        ),
    };
    let position = buyer.and_then(|b| b.position.clone());
    MessageLine {
        id: l.id.clone(),
        line_type: l.line_type.clone(),
        split_by_supplier: buyer.is_some() && position.is_none(),
        position,
        original_position: buyer.and_then(|b| b.original_position.clone()),
        description: buyer.and_then(|b| b.description.clone()),
        item_number: item.and_then(|i| i.number.clone()),
        item_revision: item.and_then(|i| i.revision.clone()),
        item_name: item.and_then(|i| i.name.clone()),
        supplier_item_number: item.and_then(|i| i.supplier_item_number.clone()),
        unit_of_measure: item.and_then(|i| i.purchase_unit_of_measure_iso.clone()),
        sales_order_number: l
            .supplier_line
            .as_ref()
            .and_then(|s| s.sales_order_number.clone()),
        sales_order_position: l
            .supplier_line
            .as_ref()
            .and_then(|s| s.sales_order_position.clone()),
        process_status: status.and_then(|s| s.process_status.clone()),
        in_progress_status: status.and_then(|s| s.in_progress_status.clone()),
        logistics_status: status.and_then(|s| s.logistics_status.clone()),
        delivery_overdue: l.indicators.as_ref().and_then(|i| i.delivery_overdue),
        delivery_schedule: schedule,
        net_price: prices.and_then(|p| money(p.net_price.as_ref())),
        gross_price: prices.and_then(|p| money(p.gross_price.as_ref())),
        discount_percentage: prices.and_then(|p| p.discount_percentage),
        price_unit_quantity: prices.and_then(|p| p.price_unit_quantity),
        price_unit_of_measure: prices.and_then(|p| p.price_unit_of_measure_iso.clone()),
    }
}

fn delivery(d: &DeliveryLine) -> Delivery {
    Delivery {
        position: d.position.clone(),
        date: d.date.clone(),
        quantity: d.quantity,
        status: d.status.clone(),
        etd: d.etd.clone(),
        eta: d.eta.clone(),
        transport_mode: d.transport_mode.clone(),
    }
}

fn money(p: Option<&Price>) -> Option<Money> {
    let amount = p?.price_in_transaction_currency.as_ref()?;
    Some(Money {
        value: amount.value,
        currency_iso: amount.currency_iso.clone(),
    })
}

fn legacy_header(o: &LegacyOrder) -> Header {
    Header {
        purchase_order_number: o.code.clone(),
        buyer_company_id: o.customer.as_ref().and_then(|c| c.company_id.clone()),
        supplier_company_id: o.supplier.as_ref().and_then(|c| c.company_id.clone()),
        supplier_account_number: o.supplier.as_ref().and_then(|c| c.code.clone()),
        buyer_account_number: o.customer.as_ref().and_then(|c| c.code.clone()),
        process_status: o.status.clone(),
        ..Header::default()
    }
}

fn legacy_line(l: &crate::order::LegacyLine) -> MessageLine {
    MessageLine {
        id: l.line_id.clone(),
        position: l.row.clone(),
        process_status: l.status.clone(),
        ..MessageLine::default()
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}
