//! Tradecloud's documented examples, as the simulator serves and sends them.
//!
//! Each body in `crates/simulator/documents/` is built from Tradecloud's public documents
//! (`tradecloud/tradecloud-docs-api-v2` field lists and examples, the .NET SDK and the reference
//! connector; `docs/tradecloud-fields.md` names the source of every field). Beside each body, its
//! `.expect.json` says what the documentation says an ERP must read from it; the golden tests of
//! the order message check that. The simulator builds every order and webhook from these bodies,
//! never from the bridge's own model.

use tcb_model::json::Json;

/// `OrderChangesProposedBySupplier`: a supplier proposal (line `OpenSupplierProposal`).
pub const PROPOSAL: &str = include_str!("../documents/proposal.json");
/// `OrderLinesReopenRequestedBySupplier`: a reopen request on a confirmed line.
pub const REOPEN_REQUEST: &str = include_str!("../documents/reopen-request.json");
/// `OrderLinesConfirmedBySupplier`: two confirmed lines, with charge lines.
pub const CONFIRMATION: &str = include_str!("../documents/confirmation.json");
/// `OrderLinesCancelledByBuyer`: a cancelled line.
pub const CANCELLATION: &str = include_str!("../documents/cancellation.json");
/// `OrderDocumentsAttachedByBuyer`: an `orderDocumentsEvent` (order and line documents).
pub const DOCUMENTS: &str = include_str!("../documents/documents.json");
/// A `singleDeliveryOrderEvent` with a proposal (the simple delivery-schedule style).
pub const SINGLE_DELIVERY: &str = include_str!("../documents/single-delivery.json");
/// A `singleDeliveryOrderEvent` of a line the supplier split (the new line's position is null).
pub const SPLIT_LINE: &str = include_str!("../documents/split-line.json");
/// A legacy (API v1) purchase order: Tradecloud's migration model, verbatim.
pub const LEGACY_PURCHASE_ORDER: &str =
    include_str!("../documents/legacy-migration-purchase-order.json");

/// Every documented example by name (the file's stem).
pub const EXAMPLES: [(&str, &str); 7] = [
    ("proposal", PROPOSAL),
    ("reopen-request", REOPEN_REQUEST),
    ("confirmation", CONFIRMATION),
    ("cancellation", CANCELLATION),
    ("documents", DOCUMENTS),
    ("single-delivery", SINGLE_DELIVERY),
    ("split-line", SPLIT_LINE),
];

/// A documented body, read without losing a decimal's text. The bodies are part of this crate
/// and checked by its tests, so a body that does not parse (impossible once they pass) reads
/// as `null`.
pub fn parse(text: &str) -> Json {
    Json::parse(text).unwrap_or_default()
}

/// The event object of a documented webhook body (`orderEvent`, `orderDocumentsEvent` or
/// `singleDeliveryOrderEvent`).
pub fn event_object(body: &Json) -> Json {
    [
        "orderEvent",
        "orderDocumentsEvent",
        "singleDeliveryOrderEvent",
    ]
    .iter()
    .find_map(|key| body.get(key))
    .cloned()
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_parses_and_names_its_event() {
        for (name, text) in EXAMPLES {
            let body = Json::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                matches!(body.get("eventName"), Some(Json::String(_))),
                "{name}: eventName"
            );
            let event = event_object(&body);
            assert!(
                matches!(event.get("orderId"), Some(Json::String(_))),
                "{name}: orderId"
            );
            assert!(
                !event.get("lines").map_or(&[][..], Json::items).is_empty(),
                "{name}: lines"
            );
        }
        assert!(Json::parse(LEGACY_PURCHASE_ORDER).is_ok());
    }
}
