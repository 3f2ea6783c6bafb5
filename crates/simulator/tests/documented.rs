//! The simulator's orders and webhooks are Tradecloud's documented examples: every stage of an
//! order, every event kind, read by the order message v2 as the documents say, with no
//! warning, and by the deprecated v1 without an error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{TimeZone, Utc};
use tcb_model::{EventMethod, IdKind, OrderMessageV2, TriggerEnvelope};
use tcb_simulator::orders::{self, Stage, stage};

fn at() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()
}

fn event_v2(body: &[u8]) -> OrderMessageV2 {
    let t =
        TriggerEnvelope::event(EventMethod::Post, Some("application/json"), body, at()).unwrap();
    tcb_model::normalize_event(&t, at()).unwrap();
    let m = tcb_model::normalize_event_v2(&t, at()).unwrap();
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    m
}

fn fetched_v2(order_id: &str, version: u64) -> OrderMessageV2 {
    let body = orders::order(order_id, version).to_string();
    let t = TriggerEnvelope::get(IdKind::OrderId, order_id, at()).unwrap();
    tcb_model::normalize_fetched_order(&t, body.as_bytes(), at()).unwrap();
    let m = tcb_model::normalize_fetched_order_v2(&t, body.as_bytes(), at()).unwrap();
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    m
}

#[test]
fn line_one_goes_through_every_documented_stage() {
    let expected = [
        (Stage::Issued, "Issued", None),
        (Stage::Proposed, "InProgress", Some("OpenSupplierProposal")),
        (Stage::Confirmed, "Confirmed", None),
        (
            Stage::ReopenRequested,
            "InProgress",
            Some("OpenSupplierReopenRequest"),
        ),
        (Stage::Rejected, "Rejected", None),
        (Stage::Cancelled, "Cancelled", None),
    ];
    for (version, (want_stage, process, in_progress)) in (1..).zip(expected) {
        assert_eq!(stage(version), want_stage);
        let m = fetched_v2("o-stages", version);
        assert_eq!(m.lines.len(), 2);
        let [one, two] = [&m.lines[0], &m.lines[1]];
        assert_eq!(one.id.as_deref(), Some("o-stages-line-1"));
        assert_eq!(two.id.as_deref(), Some("o-stages-line-2"));
        assert_eq!(
            (
                one.process_status.as_deref(),
                one.in_progress_status.as_deref()
            ),
            (Some(process), in_progress),
            "version {version}"
        );
        assert_eq!(one.proposed.is_some(), want_stage == Stage::Proposed);
        assert_eq!(
            one.reopen_request.is_some(),
            want_stage == Stage::ReopenRequested
        );
        // Agreed values only while confirmed.
        assert_eq!(one.confirmed.is_some(), want_stage == Stage::Confirmed);
        assert_eq!(two.confirmed.is_some(), version >= 3, "version {version}");
        assert_eq!(m.version, Some(version as i64));
        assert_eq!(
            m.header.purchase_order_number.as_deref(),
            Some("PO-OSTAGES")
        );
    }
    assert_eq!(stage(7), Stage::Issued);
}

#[test]
fn decimals_keep_the_text_the_documents_give_them() {
    let text = orders::order("o-dec", 3).to_string();
    assert!(text.contains(r#""quantity":100.000"#), "{text}");
    assert!(text.contains(r#""value":78.90"#), "{text}");
    let m = fetched_v2("o-dec", 3);
    let confirmed = m.lines[0].confirmed.as_ref().unwrap();
    assert_eq!(
        confirmed.delivery_schedule[0]
            .quantity
            .as_ref()
            .map(|q| q.0.as_str()),
        Some("100.000")
    );
    // The documented confirmation's charge line comes along.
    assert_eq!(confirmed.charge_lines.len(), 1);
}

#[test]
fn an_event_holds_only_the_line_it_reports_with_meta_inside() {
    for version in 1..=6 {
        let body = orders::event("o-ev", version, "OrderLinesUpdatedByBuyer", "m-1").to_string();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["orderEvent"]["meta"]["messageId"], "m-1");
        assert_eq!(json["orderEvent"]["lines"].as_array().unwrap().len(), 1);
        let m = event_v2(body.as_bytes());
        assert_eq!(m.lines[0].id.as_deref(), Some("o-ev-line-1"));
    }
}

#[test]
fn documents_and_single_delivery_webhooks_are_the_documented_ones() {
    let body = orders::documents_event("o-doc", 2, "OrderDocumentsAttachedBySupplier", "m-d");
    let m = event_v2(body.to_string().as_bytes());
    assert_eq!(m.header.buyer.documents.len(), 1);
    assert_eq!(
        m.header.buyer.documents[0].object_id.as_deref(),
        Some("67aa8ece-5d41-496f-a94c-483e360b833b")
    );
    assert_eq!(m.lines[0].documents.len(), 1);
    assert_eq!(m.header.purchase_order_number.as_deref(), Some("PO-ODOC"));

    // Proposed: the documented single-delivery proposal.
    let body = orders::single_delivery_event("o-sd", 2, "OrderChangesProposedBySupplier", "m-s");
    let m = event_v2(body.to_string().as_bytes());
    assert_eq!(m.lines.len(), 1);
    assert!(m.lines[0].scheduled_delivery.is_some());
    // The proposal shows in the planned values (requests included), not in the current ones.
    assert_eq!(
        m.lines[0].in_progress_status.as_deref(),
        Some("OpenSupplierProposal")
    );
    assert_ne!(
        m.lines[0]
            .including_requests
            .as_ref()
            .unwrap()
            .delivery_schedule,
        m.lines[0].current.delivery_schedule
    );
    // Otherwise the documented split: line 1 and a new line 3 without a buyer position.
    let body = orders::single_delivery_event("o-sd", 3, "OrderLinesConfirmedBySupplier", "m-t");
    let m = event_v2(body.to_string().as_bytes());
    let ids: Vec<_> = m.lines.iter().map(|l| l.id.clone().unwrap()).collect();
    assert_eq!(ids, ["o-sd-line-1", "o-sd-line-3"]);
    assert!(!m.lines[0].split_by_supplier);
    assert!(m.lines[1].split_by_supplier);
}

#[test]
fn the_legacy_order_is_the_migration_model_with_this_orders_number() {
    let body = orders::legacy_order("4711").to_string();
    let t = TriggerEnvelope::get(IdKind::LegacyOrderId, "4711", at()).unwrap();
    let m = tcb_model::normalize_fetched_order_v2(&t, body.as_bytes(), at()).unwrap();
    assert_eq!(m.header.purchase_order_number.as_deref(), Some("PO-L-4711"));
    // The v2 order id the migration model carries is kept.
    assert_eq!(
        m.order_id.as_deref(),
        Some("3fa85f64-5717-4562-b3fc-2c963f66afa6")
    );
}
