//! Orders and webhook bodies built from Tradecloud's documented examples ([`crate::documents`]),
//! with their ids, order number and version made the simulator's: the same id and version always
//! give the same JSON, so tests can compute what the bridge must publish. Decimals keep the text
//! the documents give them (`100.000`, `78.90`).
//!
//! A simulated order has two lines. As its version grows, line 1 goes through the documented
//! stages in turn ([`Stage`]: issued, proposed, confirmed, reopen requested, rejected,
//! cancelled); line 2 is issued at versions 1 and 2 and confirmed from version 3. An event holds
//! only line 1, the line whose change it reports (Tradecloud: "an event holds only the lines
//! affected by it"); a fetched order holds both.

use chrono::{DateTime, Duration, TimeZone, Utc};
use tcb_model::json::Json;

use crate::Webhook;
use crate::documents::{self, event_object, parse};

/// The base of all generated timestamps.
fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0)
        .single()
        .unwrap_or_default()
}

/// The last eight letters and digits of an id, upper case.
fn short(id: &str) -> String {
    let alnum: Vec<char> = id.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    alnum[alnum.len().saturating_sub(8)..]
        .iter()
        .collect::<String>()
        .to_uppercase()
}

/// `lastUpdatedAt` of version `version`.
pub fn last_updated_at(version: u64) -> String {
    (epoch() + Duration::seconds(version as i64))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The purchase order number of a simulated order.
pub fn purchase_order_number(order_id: &str) -> String {
    format!("PO-{}", short(order_id))
}

/// The id of line `n` (1-based) of a simulated order.
pub fn line_id(order_id: &str, n: usize) -> String {
    format!("{order_id}-line-{n}")
}

/// Where line 1 of a simulated order is at a version, each a documented state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Issued by the buyer: current = requested values, no confirmed line.
    Issued,
    /// The supplier proposed other values (`supplierLine.requests.proposal`, `OpenSupplierProposal`).
    Proposed,
    /// Confirmed (`confirmedLine`, with charge lines).
    Confirmed,
    /// The supplier asks to reopen the confirmed line (`requests.reopenRequest`).
    ReopenRequested,
    /// Rejected by the supplier (processStatus `Rejected`).
    Rejected,
    /// Cancelled by the buyer.
    Cancelled,
}

const STAGES: [Stage; 6] = [
    Stage::Issued,
    Stage::Proposed,
    Stage::Confirmed,
    Stage::ReopenRequested,
    Stage::Rejected,
    Stage::Cancelled,
];

/// The stage of line 1 at `version` (1 issued, 2 proposed, ... 6 cancelled; 7 the cancellation
/// reverted, `RevertedCancelledLine`, and issued again, and so on).
pub fn stage(version: u64) -> Stage {
    STAGES[((version.max(1) - 1) % STAGES.len() as u64) as usize]
}

/// The documented event that brings line 1 to its stage at `version`.
pub fn stage_event_name(version: u64) -> &'static str {
    match stage(version) {
        Stage::Issued if version <= 1 => "OrderIssuedByBuyer",
        Stage::Issued => "CancelledOrderLinesRevertedByBuyer",
        Stage::Proposed => "OrderChangesProposedBySupplier",
        Stage::Confirmed => "OrderLinesConfirmedBySupplier",
        Stage::ReopenRequested => "OrderLinesReopenRequestedBySupplier",
        Stage::Rejected => "OrderLinesRejectedBySupplier",
        Stage::Cancelled => "OrderLinesCancelledByBuyer",
    }
}

fn string(text: impl Into<String>) -> Json {
    Json::String(text.into())
}

/// Line `k` (0-based) of a documented body's event object.
fn documented_line(text: &str, k: usize) -> Json {
    event_object(&parse(text))
        .get("lines")
        .and_then(|l| l.items().get(k))
        .cloned()
        .unwrap_or_default()
}

/// A line's `status` object.
fn status(process: &str, logistics: &str) -> Json {
    Json::Object(vec![
        ("processStatus".to_owned(), string(process)),
        ("logisticsStatus".to_owned(), string(logistics)),
    ])
}

/// Confirmation line `k` as issued: the current and planned values are the buyer's requested
/// ones, there is no confirmed line yet.
fn issued_line(k: usize) -> Json {
    let mut line = documented_line(documents::CONFIRMATION, k);
    let requested = line.get("buyerLine").cloned().unwrap_or_default();
    line.remove("confirmedLine");
    for (current, from) in [
        ("deliverySchedule", "deliverySchedule"),
        ("deliveryScheduleIncludingRequests", "deliverySchedule"),
        ("prices", "prices"),
        ("pricesIncludingRequests", "prices"),
    ] {
        line.set(current, requested.get(from).cloned().unwrap_or_default());
    }
    line.set("status", status("Issued", "Open"));
    line
}

/// Line 1 at `stage`, from the document that shows that stage.
fn first_line(stage: Stage) -> Json {
    match stage {
        Stage::Issued => issued_line(0),
        Stage::Proposed => documented_line(documents::PROPOSAL, 0),
        Stage::Confirmed => documented_line(documents::CONFIRMATION, 0),
        Stage::ReopenRequested => documented_line(documents::REOPEN_REQUEST, 0),
        Stage::Rejected => {
            let mut line = issued_line(0);
            line.set("status", status("Rejected", "Open"));
            line
        }
        Stage::Cancelled => documented_line(documents::CANCELLATION, 0),
    }
}

/// Line `n` (1-based) of the order at `version`, with the simulator's id and timestamp.
fn line(order_id: &str, n: usize, version: u64) -> Json {
    let mut line = match (n, version) {
        (1, _) => first_line(stage(version)),
        (_, 1 | 2) => issued_line(1),
        _ => documented_line(documents::CONFIRMATION, 1),
    };
    line.set("id", string(line_id(order_id, n)));
    line.set("lastUpdatedAt", string(last_updated_at(version)));
    line
}

/// The order status: line 1's (the line that changes).
fn order_status(version: u64) -> Json {
    first_line(stage(version))
        .get("status")
        .and_then(|s| s.get("processStatus"))
        .map(|p| {
            let logistics = if p == &string("Cancelled") {
                "Cancelled"
            } else {
                "Open"
            };
            Json::Object(vec![
                ("processStatus".to_owned(), p.clone()),
                ("logisticsStatus".to_owned(), string(logistics)),
            ])
        })
        .unwrap_or_default()
}

/// The order header members of the documented confirmation, made this order's.
fn header(order_id: &str, version: u64) -> Vec<(String, Json)> {
    let documented = event_object(&parse(documents::CONFIRMATION));
    let mut buyer_order = documented.get("buyerOrder").cloned().unwrap_or_default();
    buyer_order.set(
        "purchaseOrderNumber",
        string(purchase_order_number(order_id)),
    );
    vec![
        ("buyerOrder".to_owned(), buyer_order),
        (
            "supplierOrder".to_owned(),
            documented.get("supplierOrder").cloned().unwrap_or_default(),
        ),
        (
            "indicators".to_owned(),
            documented.get("indicators").cloned().unwrap_or_default(),
        ),
        ("status".to_owned(), order_status(version)),
        ("version".to_owned(), Json::Number(version.to_string())),
    ]
}

/// A fetched API v2 order (`GET /v2/order/{id}`), with all its lines.
pub fn order(order_id: &str, version: u64) -> Json {
    let mut members = vec![("id".to_owned(), string(order_id))];
    members.extend(header(order_id, version));
    members.push((
        "lines".to_owned(),
        Json::Array(vec![line(order_id, 1, version), line(order_id, 2, version)]),
    ));
    members.push(("lastUpdatedAt".to_owned(), string(last_updated_at(version))));
    Json::Object(members)
}

/// The documented `meta` of an event object, with this message's id and time.
fn meta(documented: &Json, message_id: &str, version: u64) -> Json {
    let mut meta = documented.get("meta").cloned().unwrap_or_default();
    meta.set("messageId", string(message_id));
    if let Some(source) = meta.get_mut("source") {
        source.set("traceId", string(message_id));
    }
    meta.set("createdDateTime", string(last_updated_at(version)));
    meta
}

/// A webhook body: `eventName` and one event object (`meta` inside it, as Tradecloud documents
/// it). An `OrderDocumentsAttachedBy…` name gives an `orderDocumentsEvent`
/// ([`documents_event`]); any other an `orderEvent` holding line 1 at `version`.
pub fn event(order_id: &str, version: u64, event_name: &str, message_id: &str) -> Json {
    if event_name.starts_with("OrderDocumentsAttached") {
        return documents_event(order_id, version, event_name, message_id);
    }
    let documented = event_object(&parse(documents::CONFIRMATION));
    let mut members = vec![("orderId".to_owned(), string(order_id))];
    members.extend(header(order_id, version));
    members.push((
        "lines".to_owned(),
        Json::Array(vec![line(order_id, 1, version)]),
    ));
    members.push(("meta".to_owned(), meta(&documented, message_id, version)));
    members.push(("lastUpdatedAt".to_owned(), string(last_updated_at(version))));
    webhook_body(event_name, "orderEvent", Json::Object(members))
}

fn webhook_body(event_name: &str, key: &str, event: Json) -> Json {
    Json::Object(vec![
        ("eventName".to_owned(), string(event_name)),
        (key.to_owned(), event),
    ])
}

/// A documented body made this order's: its order id, purchase order number, line ids (in
/// order, `line_ids`), message id and timestamps.
fn documented_event(
    text: &str,
    key: &str,
    order_id: &str,
    version: u64,
    event_name: &str,
    message_id: &str,
    line_ids: &[String],
) -> Json {
    let mut event = event_object(&parse(text));
    event.set("orderId", string(order_id));
    if let Some(buyer_order) = event.get_mut("buyerOrder") {
        buyer_order.set(
            "purchaseOrderNumber",
            string(purchase_order_number(order_id)),
        );
    }
    if event.get("version").is_some() {
        event.set("version", Json::Number(version.to_string()));
    }
    if let Some(Json::Array(lines)) = event.get_mut("lines") {
        for (line, id) in lines.iter_mut().zip(line_ids) {
            line.set("id", string(id.clone()));
            if line.get("lastUpdatedAt").is_some() {
                line.set("lastUpdatedAt", string(last_updated_at(version)));
            }
        }
    }
    let documented_meta = event.clone();
    event.set("meta", meta(&documented_meta, message_id, version));
    event.set("lastUpdatedAt", string(last_updated_at(version)));
    webhook_body(event_name, key, event)
}

/// An `orderDocumentsEvent` (the documents webhook): order and line documents of line 1.
pub fn documents_event(order_id: &str, version: u64, event_name: &str, message_id: &str) -> Json {
    documented_event(
        documents::DOCUMENTS,
        "orderDocumentsEvent",
        order_id,
        version,
        event_name,
        message_id,
        &[line_id(order_id, 1)],
    )
}

/// A `singleDeliveryOrderEvent` (the simple delivery-schedule style): while line 1 is proposed,
/// the documented proposal; otherwise the documented split, line 1 confirmed with part of its
/// quantity and a new line 3 (position null) with the rest.
pub fn single_delivery_event(
    order_id: &str,
    version: u64,
    event_name: &str,
    message_id: &str,
) -> Json {
    let (text, lines) = if stage(version) == Stage::Proposed {
        (documents::SINGLE_DELIVERY, vec![line_id(order_id, 1)])
    } else {
        (
            documents::SPLIT_LINE,
            vec![line_id(order_id, 1), line_id(order_id, 3)],
        )
    };
    documented_event(
        text,
        "singleDeliveryOrderEvent",
        order_id,
        version,
        event_name,
        message_id,
        &lines,
    )
}

/// A legacy (API v1) purchase order: Tradecloud's migration model, with `code` (the purchase
/// order number) `PO-L-{legacy_id}`.
pub fn legacy_order(legacy_id: &str) -> Json {
    let mut order = parse(documents::LEGACY_PURCHASE_ORDER);
    order.set("code", string(format!("PO-L-{legacy_id}")));
    order
}

fn body(json: &Json) -> Vec<u8> {
    json.to_string().into_bytes()
}

/// The i-th webhook of a sample burst (`demo`, `simulate`): GET (path, query, legacy query),
/// POST and PUT order events, documents and single-delivery events, in turn.
pub fn burst_webhook(
    i: usize,
    sim: &crate::Simulator,
    events_only: bool,
) -> (&'static str, Webhook) {
    let order = format!("demo-order-{:03}", i % 12);
    let kind = if events_only {
        [2, 3, 5, 6][i % 4]
    } else {
        i % 7
    };
    let message_id = || uuid::Uuid::new_v4().to_string();
    match kind {
        0 => {
            sim.bump(&order);
            ("GET path", Webhook::GetPath(order))
        }
        1 => {
            sim.bump(&order);
            ("GET query", Webhook::GetQuery(order))
        }
        2 | 3 => {
            let version = sim.bump(&order);
            // The event of the order's new stage (by the buyer or by the supplier, so both
            // roles' webhooks), now and then a name Tradecloud may add later.
            let name = if i % 11 == 3 {
                "OrderLinesTeleportedByRobot"
            } else {
                stage_event_name(version)
            };
            let json = event(&order, version, name, &message_id());
            if kind == 2 {
                ("POST", Webhook::Post(body(&json)))
            } else {
                ("PUT", Webhook::Put(body(&json)))
            }
        }
        5 => {
            let name = if i.is_multiple_of(2) {
                "OrderDocumentsAttachedByBuyer"
            } else {
                "OrderDocumentsAttachedBySupplier"
            };
            let json = documents_event(&order, sim.version(&order), name, &message_id());
            ("POST documents", Webhook::Post(body(&json)))
        }
        6 => {
            let version = sim.bump(&order);
            let name = if stage(version) == Stage::Proposed {
                "OrderChangesProposedBySupplier"
            } else {
                // The documented split is a confirmation.
                "OrderLinesConfirmedBySupplier"
            };
            let json = single_delivery_event(&order, version, name, &message_id());
            ("POST single delivery", Webhook::Post(body(&json)))
        }
        _ => (
            "GET legacy",
            Webhook::GetLegacyQuery(format!("{}", 700_000 + i)),
        ),
    }
}

/// A webhook body in tXML, Tradecloud's XML rendering of its JSON, in the shape
/// `docs/connector.md` assumes: a `<webhook>` root, members as elements, scalars as text (numbers
/// as written in the JSON), `null` as an empty element; arrays as the element repeated, or with
/// `wrap_arrays` as a wrapper holding one element per item, named in the singular.
pub fn to_txml(body: &Json, wrap_arrays: bool) -> String {
    use tcb_model::json::Json as Value;
    fn escape(text: &str, out: &mut String) {
        for c in text.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&apos;"),
                c => out.push(c),
            }
        }
    }
    fn singular(name: &str) -> String {
        match name.strip_suffix("ies") {
            Some(stem) => format!("{stem}y"),
            None => name.strip_suffix('s').unwrap_or(name).to_owned(),
        }
    }
    fn element(name: &str, value: &Value, wrap: bool, out: &mut String) {
        match value {
            Value::Array(items) if wrap => {
                out.push_str(&format!("<{name}>"));
                let item = singular(name);
                for v in items {
                    element(&item, v, wrap, out);
                }
                out.push_str(&format!("</{name}>"));
            }
            Value::Array(items) if items.is_empty() => out.push_str(&format!("<{name}/>")),
            Value::Array(items) => {
                for v in items {
                    element(name, v, wrap, out);
                }
            }
            Value::Null => out.push_str(&format!("<{name}/>")),
            Value::Object(members) => {
                out.push_str(&format!("<{name}>"));
                for (k, v) in members {
                    element(k, v, wrap, out);
                }
                out.push_str(&format!("</{name}>"));
            }
            Value::String(s) => {
                out.push_str(&format!("<{name}>"));
                escape(s, out);
                out.push_str(&format!("</{name}>"));
            }
            // Numbers as the text they were written as.
            Value::Number(text) => out.push_str(&format!("<{name}>{text}</{name}>")),
            Value::Bool(b) => out.push_str(&format!("<{name}>{b}</{name}>")),
        }
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    element("webhook", body, wrap_arrays, &mut out);
    out
}
