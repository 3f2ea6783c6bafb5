#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Normalization on fixtures shaped like Tradecloud's payloads; every message must validate
//! against the published JSON Schema.

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use std::str::FromStr;
use tcb_model::event_name::Actor;
use tcb_model::message::{EventType, Scope, json_schema};
use tcb_model::{
    EventMethod, IdKind, OrderMessage, TriggerEnvelope, normalize_event, normalize_fetched_order,
};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn schema_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/schemas/order-message.v1.json")
}

fn assert_valid(msg: &OrderMessage) {
    let schema: Value = serde_json::from_slice(&std::fs::read(schema_path()).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let instance = serde_json::to_value(msg).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "schema errors: {errors:?}");
}

fn event(name: &str) -> (TriggerEnvelope, OrderMessage) {
    let body = fixture(name);
    let t =
        TriggerEnvelope::event(EventMethod::Post, Some("application/json"), &body, at()).unwrap();
    let m = normalize_event(&t, at()).unwrap();
    assert_valid(&m);
    (t, m)
}

#[test]
fn published_schema_matches_the_types() {
    let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(schema_path(), &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(schema_path()).unwrap_or_default();
    assert_eq!(
        on_disk, generated,
        "docs/schemas is stale: run UPDATE_SCHEMA=1 cargo test -p tcb-model"
    );
}

#[test]
fn fetched_order_becomes_a_full_order_message() {
    let body = fixture("order-v2.json");
    let t = TriggerEnvelope::get(
        IdKind::OrderId,
        "8c5b3c1e-4a0f-4b8e-9d55-0e2f3c4b5a61",
        at(),
    )
    .unwrap();
    let m = normalize_fetched_order(&t, &body, at()).unwrap();
    assert_valid(&m);
    assert_eq!(m.scope, Scope::FullOrder);
    assert_eq!(
        m.order_id.as_deref(),
        Some("8c5b3c1e-4a0f-4b8e-9d55-0e2f3c4b5a61")
    );
    assert_eq!(m.order_version, Some(3));
    assert_eq!(m.event_name, None);
    assert_eq!(m.affected_line_ids, None);
    assert_eq!(
        m.header.purchase_order_number.as_deref(),
        Some("PO0123456789")
    );
    assert_eq!(m.header.sales_order_number.as_deref(), Some("SO-77"));
    assert_eq!(m.header.process_status.as_deref(), Some("Confirmed"));
    assert_eq!(m.header.order_type.as_deref(), Some("Purchase"));
    assert_eq!(m.lines.len(), 2);
    let l = &m.lines[0];
    assert_eq!(l.position.as_deref(), Some("0001"));
    assert!(!l.split_by_supplier);
    assert_eq!(l.item_name.as_deref(), Some("Round tube ø60x45"));
    assert_eq!(l.sales_order_position.as_deref(), Some("10"));
    // decimals exact, whether sent as numbers or as quoted strings
    assert_eq!(l.delivery_schedule[0].quantity, Some(dec("1111.11")));
    assert_eq!(l.delivery_schedule[1].quantity, Some(dec("2222.220")));
    assert_eq!(l.net_price.as_ref().unwrap().value, Some(dec("617.28")));
    assert_eq!(l.gross_price.as_ref().unwrap().value, Some(dec("1234.56")));
    assert_eq!(l.price_unit_quantity, Some(dec("100")));
    let split = &m.lines[1];
    assert!(split.split_by_supplier);
    assert_eq!(split.original_position.as_deref(), Some("0001"));
    assert_eq!(
        split.in_progress_status.as_deref(),
        Some("OpenSupplierProposal")
    );
    assert_eq!(split.delivery_schedule[0].quantity, Some(dec("0.1")));
    // the original is kept verbatim, unknown fields included
    let original: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m.original, original);
    // decimals are strings on the wire
    let wire = serde_json::to_value(&m).unwrap();
    assert_eq!(
        wire["lines"][0]["deliverySchedule"][1]["quantity"],
        "2222.220"
    );
}

#[test]
fn message_id_is_deterministic_per_input() {
    let body = fixture("order-v2.json");
    let t1 = TriggerEnvelope::get(
        IdKind::OrderId,
        "8c5b3c1e-4a0f-4b8e-9d55-0e2f3c4b5a61",
        at(),
    )
    .unwrap();
    let t2 = TriggerEnvelope::get(
        IdKind::OrderId,
        "8c5b3c1e-4a0f-4b8e-9d55-0e2f3c4b5a61",
        at(),
    )
    .unwrap();
    let a = normalize_fetched_order(&t1, &body, at()).unwrap();
    let b = normalize_fetched_order(&t2, &body, Utc::now()).unwrap();
    assert_ne!(a.trigger.id, b.trigger.id);
    assert_eq!(
        a.message_id, b.message_id,
        "same order version -> same message id"
    );
    let newer = String::from_utf8(body)
        .unwrap()
        .replace("\"version\": 3", "\"version\": 4");
    let c = normalize_fetched_order(&t1, newer.as_bytes(), at()).unwrap();
    assert_ne!(a.message_id, c.message_id, "new version -> new message id");

    let (t, e1) = event("event-lines-confirmed.json");
    let redelivered =
        tcb_model::codec::parse_trigger(&tcb_model::codec::trigger_json(&t).unwrap()).unwrap();
    assert_eq!(
        normalize_event(&redelivered, Utc::now())
            .unwrap()
            .message_id,
        e1.message_id
    );
    let (_, other) = event("event-single-delivery.json");
    assert_ne!(other.message_id, e1.message_id);
}

#[test]
fn order_event_becomes_a_partial_event_message() {
    let (t, m) = event("event-lines-confirmed.json");
    assert_eq!(m.scope, Scope::PartialEvent);
    assert_eq!(
        m.event_name.as_deref(),
        Some("OrderLinesConfirmedBySupplier")
    );
    assert_eq!(m.event_category.as_deref(), Some("confirmed"));
    assert_eq!(m.actor, Some(Actor::Supplier));
    assert_eq!(m.event_type, Some(EventType::Order));
    assert_eq!(m.order_version, Some(4));
    assert_eq!(m.affected_line_ids, Some(vec!["line-0002".to_owned()]));
    assert_eq!(m.lines[0].delivery_schedule[0].quantity, Some(dec("10.50")));
    assert_eq!(
        m.lines[0].net_price.as_ref().unwrap().value,
        Some(dec("19.99"))
    );
    assert_eq!(m.trigger.id, t.id);
    assert_eq!(
        m.trigger.tradecloud_message_id.as_deref(),
        Some("0e4c8d2a-5f61-4f0e-a3b2-7c9d1e2f3a4b")
    );
}

#[test]
fn single_delivery_event_maps_the_status_line() {
    let (_, m) = event("event-single-delivery.json");
    assert_eq!(m.event_type, Some(EventType::SingleDelivery));
    assert_eq!(m.actor, Some(Actor::Buyer));
    let l = &m.lines[0];
    assert_eq!(
        l.position.as_deref(),
        Some("1"),
        "numeric position read as a string"
    );
    assert_eq!(l.delivery_schedule.len(), 1);
    assert_eq!(l.delivery_schedule[0].date.as_deref(), Some("2027-01-15"));
    assert_eq!(l.delivery_schedule[0].quantity, Some(dec("1234.56")));
    assert_eq!(
        l.net_price.as_ref().unwrap().currency_iso.as_deref(),
        Some("USD")
    );
}

#[test]
fn unknown_event_name_and_members_pass_through() {
    let (_, m) = event("event-unknown.json");
    assert_eq!(m.event_name.as_deref(), Some("OrderLinesTeleportedByRobot"));
    assert_eq!(m.actor, Some(Actor::System));
    assert_eq!(m.event_category.as_deref(), Some("teleported-by-robot"));
    assert_eq!(
        m.order_id.as_deref(),
        Some("99999999-0000-4000-8000-000000000099")
    );
    assert_eq!(m.original["hologramEvent"]["what"], "unknown member");
    assert_eq!(m.original["orderEvent"]["lines"][0]["newLineField"][2], 3);
}

#[test]
fn legacy_order_is_normalized() {
    let body = fixture("legacy-order.json");
    let t = TriggerEnvelope::get(IdKind::LegacyOrderId, "PO0123456789", at()).unwrap();
    let m = normalize_fetched_order(&t, &body, at()).unwrap();
    assert_valid(&m);
    assert_eq!(m.order_id, None);
    assert_eq!(m.legacy_order_id.as_deref(), Some("PO0123456789"));
    assert_eq!(
        m.header.purchase_order_number.as_deref(),
        Some("PO0123456789")
    );
    assert_eq!(m.header.supplier_account_number.as_deref(), Some("540830"));
    assert!(!m.lines.is_empty());
    assert_eq!(
        m.lines[0].id.as_deref(),
        Some("3fa85f64-5717-4562-b3fc-2c963f66afa7")
    );
    assert_eq!(m.lines[0].position.as_deref(), Some("10"));
}

#[test]
fn poison_is_an_error_not_a_panic() {
    let t = TriggerEnvelope::event(
        EventMethod::Post,
        None,
        br#"{"eventName":"X","orderEvent":{"lines":"no"}}"#,
        at(),
    )
    .unwrap();
    assert!(normalize_event(&t, at()).is_err());
    let g = TriggerEnvelope::get(IdKind::OrderId, "o-1", at()).unwrap();
    assert!(normalize_fetched_order(&g, b"<html>", at()).is_err());
    assert!(normalize_fetched_order(&g, b"[]", at()).is_err());
    assert!(
        normalize_event(&g, at()).is_err(),
        "a GET trigger is not an event"
    );
}
