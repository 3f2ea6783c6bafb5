//! Pure functions from a trigger (and a fetched order) to an [`OrderMessageV2`].
//!
//! The payload is read as [`Json`] (numbers keep their text) and each field with its documented
//! type; a field of another type becomes `null` plus a [`FieldWarning`], never a failure. Only a
//! payload that is not a JSON object at all is an error.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::event_name;
use crate::json::Json;
use crate::message::Scope;
use crate::message_v2::{
    ChargeLine, DecimalText, Delivery, Document, EventInfo, FieldWarning, HeaderV2, Item, LineV2,
    Money, ORDER_MESSAGE_V2, OrderMessageV2, PartyOrder, Price, Prices, Request, Values,
};
use crate::normalize::{NormalizeError, event_identity, event_type, order_identity, trigger_info};
use crate::trigger::{OrderRef, Trigger, TriggerEnvelope};
use crate::webhook::{EventObject, WEBHOOK_EVENT_MEMBERS};

/// A POST/PUT trigger's event -> a `partial-event` message v2.
pub fn normalize_event_v2(
    trigger: &TriggerEnvelope,
    processed_at: DateTime<Utc>,
) -> Result<OrderMessageV2, NormalizeError> {
    let Trigger::Event(event) = &trigger.trigger else {
        return Err(NormalizeError::WrongKind);
    };
    let raw = event.body.get();
    let (body, original) = if event
        .content_type
        .as_deref()
        .is_some_and(crate::txml::is_xml)
    {
        // tXML: the XML text, read into the JSON body it renders (all text: decimals as sent).
        let xml: String =
            serde_json::from_str(raw).map_err(|e| NormalizeError::EventBody(e.to_string()))?;
        let value =
            crate::txml::to_json(&xml).map_err(|e| NormalizeError::EventBody(e.to_string()))?;
        let original = serde_json::value::to_raw_value(&value)
            .map_err(|e| NormalizeError::EventBody(e.to_string()))?;
        (Json::from(&value), original)
    } else {
        let body = Json::parse(raw).map_err(|e| NormalizeError::EventBody(e.to_string()))?;
        (body, event.body.clone())
    };
    if !matches!(body, Json::Object(_)) {
        return Err(NormalizeError::EventBody("not a JSON object".to_owned()));
    }
    let mut r = Reader::default();
    let name = r
        .text(body.get("eventName"), &ROOT.key("eventName"))
        .unwrap_or_else(|| event.event_name.as_str().to_owned());
    let (object, member) = match WEBHOOK_EVENT_MEMBERS
        .iter()
        .find(|m| body.get(m).is_some_and(|v| !v.is_null()))
    {
        Some(m) => (Some(member_kind(m)), *m),
        None => (None, ""),
    };
    let base = ROOT.key(member);
    let order = r.object(body.get(member), &base);
    let lines: Vec<LineV2> = r
        .array(order.and_then(|o| o.get("lines")), &base.key("lines"))
        .iter()
        .enumerate()
        .map(|(i, l)| line(&mut r, l, &base.key("lines").index(i)))
        .collect();
    let affected = lines.iter().filter_map(|l| l.id.clone()).collect();
    let order_id = order
        .and_then(|o| r.text(o.get("orderId").or(o.get("id")), &base.key("orderId")))
        .or_else(|| event.order_id.as_ref().map(|id| id.as_str().to_owned()));
    let legacy_order_id = order
        .and_then(|o| r.text(o.get("legacyOrderId"), &base.key("legacyOrderId")))
        .or_else(|| {
            event
                .legacy_order_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
        });
    let (version, last_updated_at, portal_url, header) = order_facts(&mut r, order, &base);
    Ok(OrderMessageV2 {
        schema_version: ORDER_MESSAGE_V2.to_owned(),
        message_id: event_identity(event),
        scope: Scope::PartialEvent,
        event: Some(EventInfo {
            category: event_name::category(&name),
            actor: event_name::actor(&name),
            name,
            object: object.map(event_type),
            // Tradecloud's documents put `meta` in the event object; older bodies at the top.
            meta: pass(order.and_then(|o| o.get("meta")).or(body.get("meta"))),
        }),
        order_id,
        legacy_order_id,
        version,
        last_updated_at,
        portal_url,
        header,
        lines,
        affected_line_ids: Some(affected),
        warnings: r.warnings,
        trigger: trigger_info(trigger),
        processed_at,
        original,
        original_event: None,
    })
}

/// A POST/PUT trigger's event plus the order fetched after it -> a `full-order` message v2 that
/// names the event (its name, actor, `meta`, affected lines and message id) and keeps the event
/// body in `originalEvent`.
pub fn normalize_enriched_event_v2(
    trigger: &TriggerEnvelope,
    fetched: &[u8],
    processed_at: DateTime<Utc>,
) -> Result<OrderMessageV2, NormalizeError> {
    let Trigger::Event(event) = &trigger.trigger else {
        return Err(NormalizeError::WrongKind);
    };
    let order_ref = event
        .order_ref()
        .ok_or_else(|| NormalizeError::EventBody("the event names no order to fetch".to_owned()))?;
    let from_event = normalize_event_v2(trigger, processed_at)?;
    let mut message = fetched_v2(trigger, &order_ref, fetched, processed_at)?;
    message.event = from_event.event;
    message.affected_line_ids = from_event.affected_line_ids;
    message.message_id = from_event.message_id;
    // The event's own type problems (their paths point into the event body).
    message.warnings.extend(from_event.warnings);
    message.original_event = Some(event.body.clone());
    Ok(message)
}

/// A GET trigger plus the order fetched for it (API v2, or legacy API v1 when the trigger names
/// a legacy order) -> a `full-order` message v2.
pub fn normalize_fetched_order_v2(
    trigger: &TriggerEnvelope,
    fetched: &[u8],
    processed_at: DateTime<Utc>,
) -> Result<OrderMessageV2, NormalizeError> {
    let Trigger::Order(order_ref) = &trigger.trigger else {
        return Err(NormalizeError::WrongKind);
    };
    fetched_v2(trigger, order_ref, fetched, processed_at)
}

/// The order fetched for `order_ref` as a `full-order` message v2 answering `trigger`.
fn fetched_v2(
    trigger: &TriggerEnvelope,
    order_ref: &OrderRef,
    fetched: &[u8],
    processed_at: DateTime<Utc>,
) -> Result<OrderMessageV2, NormalizeError> {
    let text = std::str::from_utf8(fetched)
        .map_err(|e| NormalizeError::FetchedOrder(format!("not UTF-8: {e}")))?;
    let order = Json::parse(text).map_err(|e| NormalizeError::FetchedOrder(e.to_string()))?;
    if !matches!(order, Json::Object(_)) {
        return Err(NormalizeError::FetchedOrder("not a JSON object".to_owned()));
    }
    let original: Box<RawValue> =
        serde_json::from_str(text).map_err(|e| NormalizeError::FetchedOrder(e.to_string()))?;
    let mut r = Reader::default();
    // The legacy and the v2 order differ in what they carry, not in the message made of them.
    let (order_id, legacy_order_id, version, last_updated_at, portal_url, header, lines) =
        match order_ref {
            OrderRef::Legacy(legacy_id) => {
                let (header, lines) = legacy(&mut r, &order);
                let order_id = r.text(order.get("orderId"), &ROOT.key("orderId"));
                let legacy_id = Some(legacy_id.as_str().to_owned());
                (order_id, legacy_id, None, None, None, header, lines)
            }
            OrderRef::V2(requested) => {
                let order_id = r
                    .text(order.get("id").or(order.get("orderId")), &ROOT.key("id"))
                    .or_else(|| Some(requested.as_str().to_owned()));
                let legacy_order_id =
                    r.text(order.get("legacyOrderId"), &ROOT.key("legacyOrderId"));
                let lines_path = ROOT.key("lines");
                let lines = r
                    .array(order.get("lines"), &lines_path)
                    .iter()
                    .enumerate()
                    .map(|(i, l)| line(&mut r, l, &lines_path.index(i)))
                    .collect();
                let (version, last_updated_at, portal_url, header) =
                    order_facts(&mut r, Some(&order), &ROOT);
                (
                    order_id,
                    legacy_order_id,
                    version,
                    last_updated_at,
                    portal_url,
                    header,
                    lines,
                )
            }
        };
    Ok(OrderMessageV2 {
        schema_version: ORDER_MESSAGE_V2.to_owned(),
        message_id: order_identity(
            order_ref,
            order_id.as_deref(),
            version,
            last_updated_at.as_deref(),
            fetched,
        ),
        scope: Scope::FullOrder,
        event: None,
        order_id,
        legacy_order_id,
        version,
        last_updated_at,
        portal_url,
        header,
        lines,
        affected_line_ids: None,
        warnings: r.warnings,
        trigger: trigger_info(trigger),
        processed_at,
        original,
        original_event: None,
    })
}

fn member_kind(member: &str) -> EventObject {
    match member {
        "orderEvent" => EventObject::Order,
        "orderDocumentsEvent" => EventObject::Documents,
        _ => EventObject::SingleDelivery,
    }
}

/// Version, `lastUpdatedAt`, `portalUrl` and the header of an order object at `base`.
fn order_facts(
    r: &mut Reader,
    order: Option<&Json>,
    base: &Path<'_>,
) -> (Option<i64>, Option<String>, Option<String>, HeaderV2) {
    let field = |k: &str| order.and_then(|o| o.get(k));
    let version = r.integer(field("version"), &base.key("version"));
    let last_updated_at = r.text(field("lastUpdatedAt"), &base.key("lastUpdatedAt"));
    let portal_url = r.text(field("portalUrl"), &base.key("portalUrl"));
    let buyer_path = base.key("buyerOrder");
    let buyer = r.object(field("buyerOrder"), &buyer_path);
    let supplier_path = base.key("supplierOrder");
    let supplier = r.object(field("supplierOrder"), &supplier_path);
    let status_path = base.key("status");
    let status = r.object(field("status"), &status_path);
    let header = HeaderV2 {
        purchase_order_number: r.text(
            buyer.and_then(|b| b.get("purchaseOrderNumber")),
            &buyer_path.key("purchaseOrderNumber"),
        ),
        order_type: r.text(
            buyer.and_then(|b| b.get("orderType")),
            &buyer_path.key("orderType"),
        ),
        process_status: r.text(
            status.and_then(|s| s.get("processStatus")),
            &status_path.key("processStatus"),
        ),
        logistics_status: r.text(
            status.and_then(|s| s.get("logisticsStatus")),
            &status_path.key("logisticsStatus"),
        ),
        indicators: pass(field("indicators")),
        event_dates: pass(field("eventDates")),
        buyer: party(r, buyer, &buyer_path, "supplierAccountNumber"),
        supplier: party(r, supplier, &supplier_path, "buyerAccountNumber"),
    };
    (version, last_updated_at, portal_url, header)
}

/// The members of `buyerOrder`/`supplierOrder` this message names (the rest go to `other`).
const PARTY_FIELDS: [&str; 12] = [
    "companyId",
    "description",
    "contact",
    "properties",
    "notes",
    "labels",
    "deliveryAddress",
    "terms",
    "documents",
    "purchaseOrderNumber",
    "orderType",
    "salesOrderNumber",
];

fn party(r: &mut Reader, o: Option<&Json>, path: &Path<'_>, account_key: &str) -> PartyOrder {
    let Some(o) = o else {
        return PartyOrder::default();
    };
    let f = |k: &str| o.get(k);
    let other: Vec<(String, Json)> = match o {
        Json::Object(members) => members
            .iter()
            .filter(|(k, _)| k != account_key && !PARTY_FIELDS.contains(&k.as_str()))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    PartyOrder {
        company_id: r.text(f("companyId"), &path.key("companyId")),
        account_number: r.text(f(account_key), &path.key(account_key)),
        description: r.text(f("description"), &path.key("description")),
        contact: pass(f("contact")),
        properties: pass(f("properties")),
        notes: pass(f("notes")),
        labels: pass(f("labels")),
        delivery_address: pass(f("deliveryAddress")),
        terms: pass(f("terms")),
        documents: documents(r, f("documents"), &path.key("documents")),
        other: (!other.is_empty()).then_some(Json::Object(other)),
    }
}

fn documents(r: &mut Reader, v: Option<&Json>, path: &Path<'_>) -> Vec<Document> {
    r.array(v, path)
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let p = path.index(i);
            let d = r.object(Some(d), &p)?;
            let mut t = |k: &str| r.text(d.get(k), &p.key(k));
            Some(Document {
                object_id: t("objectId"),
                name: t("name"),
                kind: t("type").or_else(|| t("category")),
                url: t("url"),
                description: t("description"),
                revision: t("revision"),
                code: t("code"),
                original: d.clone(),
            })
        })
        .collect()
}

fn line(r: &mut Reader, l: &Json, path: &Path<'_>) -> LineV2 {
    let Some(l) = r.object(Some(l), path) else {
        return LineV2::default();
    };
    let f = |k: &str| l.get(k);
    let buyer_path = path.key("buyerLine");
    let buyer = r.object(f("buyerLine"), &buyer_path);
    let b = |k: &str| buyer.and_then(|b| b.get(k));
    let supplier_path = path.key("supplierLine");
    let supplier = r.object(f("supplierLine"), &supplier_path);
    let s = |k: &str| supplier.and_then(|s| s.get(k));
    let requests_path = supplier_path.key("requests");
    let requests = r.object(s("requests"), &requests_path);
    let status_path = path.key("status");
    let status = r.object(f("status"), &status_path);
    let st = |k: &str| status.and_then(|s| s.get(k));
    let item_path = buyer_path.key("item");
    let item = r.object(b("item"), &item_path);
    let it = |k: &str| item.and_then(|i| i.get(k));
    // Single-delivery lines carry their current state in `statusLine`.
    let status_line_path = path.key("statusLine");
    let status_line = r.object(f("statusLine"), &status_line_path);
    let scheduled = status_line
        .and_then(|s| s.get("scheduledDelivery"))
        .and_then(|d| delivery(r, d, &status_line_path.key("scheduledDelivery")));
    let position = r.text(b("position"), &buyer_path.key("position"));
    let (current, including_requests) = match status_line {
        Some(s) => {
            let mut current = values(r, Some(s), &status_line_path, "", "prices", "");
            current.delivery_schedule.extend(scheduled.clone());
            let mut planned = values(r, Some(s), &status_line_path, "", "pricesInclRequests", "");
            planned
                .delivery_schedule
                .extend(s.get("scheduledDeliveryInclRequests").and_then(|d| {
                    delivery(r, d, &status_line_path.key("scheduledDeliveryInclRequests"))
                }));
            (current, planned)
        }
        None => (
            values(
                r,
                Some(l),
                path,
                "deliverySchedule",
                "prices",
                "chargeLines",
            ),
            values(
                r,
                Some(l),
                path,
                "deliveryScheduleIncludingRequests",
                "pricesIncludingRequests",
                "chargeLinesIncludingRequests",
            ),
        ),
    };
    let process_status = r.text(st("processStatus"), &status_path.key("processStatus"));
    LineV2 {
        id: r.text(f("id"), &path.key("id")),
        line_type: r.text(b("lineType").or(f("lineType")), &buyer_path.key("lineType")),
        split_by_supplier: buyer.is_some() && position.is_none(),
        position,
        original_position: r.text(b("originalPosition"), &buyer_path.key("originalPosition")),
        description: r.text(b("description"), &buyer_path.key("description")),
        item: Item {
            number: r.text(it("number"), &item_path.key("number")),
            revision: r.text(it("revision"), &item_path.key("revision")),
            name: r.text(it("name"), &item_path.key("name")),
            purchase_unit_of_measure_iso: r.text(
                it("purchaseUnitOfMeasureIso"),
                &item_path.key("purchaseUnitOfMeasureIso"),
            ),
            supplier_item_number: r.text(
                it("supplierItemNumber"),
                &item_path.key("supplierItemNumber"),
            ),
        },
        sales_order_number: r.text(
            s("salesOrderNumber"),
            &supplier_path.key("salesOrderNumber"),
        ),
        sales_order_line_position: r.text(
            s("salesOrderLinePosition").or(s("salesOrderPosition")),
            &supplier_path.key("salesOrderLinePosition"),
        ),
        project_number: r.text(b("projectNumber"), &buyer_path.key("projectNumber")),
        production_number: r.text(b("productionNumber"), &buyer_path.key("productionNumber")),

        in_progress_status: r.text(st("inProgressStatus"), &status_path.key("inProgressStatus")),
        logistics_status: r.text(st("logisticsStatus"), &status_path.key("logisticsStatus")),
        indicators: pass(f("indicators")),
        requested: buyer
            .map(|b| {
                values(
                    r,
                    Some(b),
                    &buyer_path,
                    "deliverySchedule",
                    "prices",
                    "chargeLines",
                )
            })
            .filter(|v| !v.is_empty()),
        current,
        confirmed: r
            .object(f("confirmedLine"), &path.key("confirmedLine"))
            .filter(|_| process_status.as_deref() == Some("Confirmed"))
            .map(|c| {
                values(
                    r,
                    Some(c),
                    &path.key("confirmedLine"),
                    "deliverySchedule",
                    "prices",
                    "chargeLines",
                )
            }),
        proposed: request(
            r,
            requests.and_then(|q| q.get("proposal")),
            &requests_path.key("proposal"),
        ),
        reopen_request: request(
            r,
            requests.and_then(|q| q.get("reopenRequest")),
            &requests_path.key("reopenRequest"),
        ),
        buyer_requests: pass(b("requests")),
        including_requests: Some(including_requests).filter(|v| !v.is_empty()),
        scheduled_delivery: scheduled,
        process_status,
        terms: pass(b("terms")),
        properties: pass(b("properties")),
        notes: pass(b("notes")),
        labels: pass(b("labels")),
        documents: documents(r, b("documents"), &buyer_path.key("documents")),
        merged_item_details: pass(f("mergedItemDetails")),
        event_dates: pass(f("eventDates")),
        last_updated_at: r.text(f("lastUpdatedAt"), &path.key("lastUpdatedAt")),
    }
}

impl Values {
    fn is_empty(&self) -> bool {
        self.delivery_schedule.is_empty() && self.prices.is_none() && self.charge_lines.is_empty()
    }
}

/// The schedule, prices and charge lines of `o` under the given member names (`""`: none).
fn values(
    r: &mut Reader,
    o: Option<&Json>,
    path: &Path<'_>,
    schedule: &str,
    price: &str,
    charges: &str,
) -> Values {
    let f = |k: &str| o.and_then(|o| o.get(k)).filter(|_| !k.is_empty());
    let schedule_path = path.key(schedule);
    let charges_path = path.key(charges);
    Values {
        delivery_schedule: r
            .array(f(schedule), &schedule_path)
            .iter()
            .enumerate()
            .filter_map(|(i, d)| delivery(r, d, &schedule_path.index(i)))
            .collect(),
        prices: prices(r, f(price), &path.key(price)),
        charge_lines: r
            .array(f(charges), &charges_path)
            .iter()
            .enumerate()
            .filter_map(|(i, c)| charge_line(r, c, &charges_path.index(i)))
            .collect(),
    }
}

fn charge_line(r: &mut Reader, c: &Json, path: &Path<'_>) -> Option<ChargeLine> {
    let c = r.object(Some(c), path)?;
    let mut t = |k: &str| r.text(c.get(k), &path.key(k));
    let (position, charge_type_code, charge_description, price_unit_of_measure_iso) = (
        t("position"),
        t("chargeTypeCode"),
        t("chargeDescription"),
        t("priceUnitOfMeasureIso"),
    );
    Some(ChargeLine {
        position,
        charge_type_code,
        charge_description,
        quantity: r.decimal(c.get("quantity"), &path.key("quantity")),
        price: price(r, c.get("price"), &path.key("price")),
        price_unit_of_measure_iso,
    })
}

fn request(r: &mut Reader, v: Option<&Json>, path: &Path<'_>) -> Option<Request> {
    let q = r.object(v, path)?;
    Some(Request {
        values: values(
            r,
            Some(q),
            path,
            "deliverySchedule",
            "prices",
            "chargeLines",
        ),
        reason: r.text(q.get("reason"), &path.key("reason")),
        status: r.text(q.get("status"), &path.key("status")),
    })
}

fn delivery(r: &mut Reader, d: &Json, path: &Path<'_>) -> Option<Delivery> {
    let d = r.object(Some(d), path)?;
    let mut t = |k: &str| r.text(d.get(k), &path.key(k));
    let (position, date, status, etd, eta, transport_mode) = (
        t("position"),
        t("date"),
        t("status"),
        t("etd"),
        t("eta"),
        t("transportMode"),
    );
    Some(Delivery {
        position,
        date,
        quantity: r.decimal(d.get("quantity"), &path.key("quantity")),
        status,
        etd,
        eta,
        transport_mode,
    })
}

fn prices(r: &mut Reader, v: Option<&Json>, path: &Path<'_>) -> Option<Prices> {
    let p = r.object(v, path)?;
    Some(Prices {
        gross_price: price(r, p.get("grossPrice"), &path.key("grossPrice")),
        discount_percentage: r
            .decimal(p.get("discountPercentage"), &path.key("discountPercentage")),
        net_price: price(r, p.get("netPrice"), &path.key("netPrice")),
        price_unit_of_measure_iso: r.text(
            p.get("priceUnitOfMeasureIso"),
            &path.key("priceUnitOfMeasureIso"),
        ),
        price_unit_quantity: r.decimal(p.get("priceUnitQuantity"), &path.key("priceUnitQuantity")),
    })
}

fn price(r: &mut Reader, v: Option<&Json>, path: &Path<'_>) -> Option<Price> {
    let p = r.object(v, path)?;
    Some(Price {
        transaction_currency: money(
            r,
            p.get("priceInTransactionCurrency"),
            &path.key("priceInTransactionCurrency"),
        ),
        base_currency: money(
            r,
            p.get("priceInBaseCurrency"),
            &path.key("priceInBaseCurrency"),
        ),
    })
}

fn money(r: &mut Reader, v: Option<&Json>, path: &Path<'_>) -> Option<Money> {
    let m = r.object(v, path)?;
    Some(Money {
        value: r.decimal(m.get("value"), &path.key("value")),
        currency_iso: r.text(m.get("currencyIso"), &path.key("currencyIso")),
    })
}

/// A legacy (API v1) purchase order, as far as its body allows: Tradecloud's migration model
/// names the requested and confirmed values of a line (`quantityRequested`,
/// `netPurchasePriceConfirmed`, `deliveryDateTimeRequested`, ...); `current` is the confirmed
/// values where there are any, else the requested ones (an assumption: the legacy model has no
/// "current").
fn legacy(r: &mut Reader, o: &Json) -> (HeaderV2, Vec<LineV2>) {
    let party = |r: &mut Reader, k: &str| {
        let at = ROOT.key(k);
        let p = r.object(o.get(k), &at);
        (
            p.and_then(|p| r.text(p.get("companyId"), &at.key("companyId"))),
            p.and_then(|p| r.text(p.get("code"), &at.key("code"))),
        )
    };
    let (supplier_company, supplier_code) = party(r, "supplier");
    let (customer_company, customer_code) = party(r, "customer");
    let header = HeaderV2 {
        purchase_order_number: r.text(o.get("code"), &ROOT.key("code")),
        process_status: r.text(o.get("status"), &ROOT.key("status")),
        buyer: PartyOrder {
            company_id: customer_company,
            account_number: supplier_code,
            description: r.text(o.get("description"), &ROOT.key("description")),
            delivery_address: pass(o.get("deliveryAddress")),
            ..PartyOrder::default()
        },
        supplier: PartyOrder {
            company_id: supplier_company,
            account_number: customer_code,
            description: r.text(
                o.get("supplierDescription"),
                &ROOT.key("supplierDescription"),
            ),
            ..PartyOrder::default()
        },
        ..HeaderV2::default()
    };
    let lines_path = ROOT.key("lines");
    let lines = r
        .array(o.get("lines"), &lines_path)
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let path = lines_path.index(i);
            let Some(l) = r.object(Some(l), &path) else {
                return LineV2::default();
            };
            let mut t = |k: &str| r.text(l.get(k), &path.key(k));
            let (id, position, status, description) =
                (t("lineId"), t("row"), t("status"), t("description"));
            let item = Item {
                number: t("itemCode"),
                revision: t("itemRevision"),
                name: t("itemName"),
                purchase_unit_of_measure_iso: t("purchaseUnit"),
                supplier_item_number: t("supplierItemCode"),
            };
            let price_unit = t("priceUnit");
            let requested = legacy_values(r, l, &path, "Requested", price_unit.clone());
            let confirmed = legacy_values(r, l, &path, "Confirmed", price_unit);
            LineV2 {
                id,
                position,
                description,
                item,
                process_status: status,
                properties: pass(l.get("properties")),
                current: confirmed.clone().or(requested.clone()).unwrap_or_default(),
                requested,
                confirmed,
                ..LineV2::default()
            }
        })
        .collect();
    (header, lines)
}

/// A legacy line's `...Requested` or `...Confirmed` values; none when it has none of them.
fn legacy_values(
    r: &mut Reader,
    l: &Json,
    path: &Path<'_>,
    which: &str,
    price_unit: Option<String>,
) -> Option<Values> {
    let key = |k: &str| format!("{k}{which}");
    let quantity = r.decimal(l.get(&key("quantity")), &path.key(&key("quantity")));
    let date = r
        .text(
            l.get(&key("deliveryDateTime")),
            &path.key(&key("deliveryDateTime")),
        )
        .map(|d| d.chars().take(10).collect());
    let amount = |r: &mut Reader, k: &str| -> Option<Price> {
        let m = money(r, l.get(&key(k)), &path.key(&key(k)))?;
        Some(Price {
            transaction_currency: Some(m),
            base_currency: None,
        })
    };
    let gross = amount(r, "grossPurchasePrice");
    let net = amount(r, "netPurchasePrice");
    let discount = r.decimal(
        l.get(&key("discountPercentage")),
        &path.key(&key("discountPercentage")),
    );
    let unit_quantity = r.decimal(
        l.get(&key("priceUnitQuantity")),
        &path.key(&key("priceUnitQuantity")),
    );
    let schedule = (quantity.is_some() || date.is_some()).then(|| Delivery {
        date,
        quantity,
        ..Delivery::default()
    });
    let has_prices = gross.is_some() || net.is_some() || discount.is_some();
    let prices = has_prices.then_some(Prices {
        gross_price: gross,
        discount_percentage: discount,
        net_price: net,
        price_unit_of_measure_iso: price_unit,
        price_unit_quantity: unit_quantity,
    });
    (schedule.is_some() || prices.is_some()).then(|| Values {
        delivery_schedule: schedule.into_iter().collect(),
        prices,
        charge_lines: Vec::new(),
    })
}

/// A value passed through as sent; nothing for absent or null.
fn pass(v: Option<&Json>) -> Option<Json> {
    v.filter(|v| !v.is_null()).cloned()
}

/// Where a field is in the payload, as a JSON Pointer (`/orderEvent/lines/0/id`). Built as the
/// reader descends and written out only for a warning: most fields have their documented type,
/// so most paths are never written.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

/// The payload itself (`""` as a JSON Pointer).
static ROOT: Path<'static> = Path::Root;

impl<'a> Path<'a> {
    fn key(&'a self, key: &'a str) -> Path<'a> {
        Path::Key(self, key)
    }

    fn index(&'a self, index: usize) -> Path<'a> {
        Path::Index(self, index)
    }
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(parent, key) => write!(f, "{parent}/{key}"),
            Path::Index(parent, index) => write!(f, "{parent}/{index}"),
        }
    }
}

/// Reads fields with their documented types, noting each that has another.
#[derive(Default)]
struct Reader {
    warnings: Vec<FieldWarning>,
}

impl Reader {
    fn warn(&mut self, path: &Path<'_>, expected: &str, found: &Json) {
        self.warnings.push(FieldWarning {
            path: path.to_string(),
            expected: expected.to_owned(),
            found: found.kind().to_owned(),
        });
    }

    fn object<'a>(&mut self, v: Option<&'a Json>, path: &Path<'_>) -> Option<&'a Json> {
        match v? {
            Json::Null => None,
            o @ Json::Object(_) => Some(o),
            other => {
                self.warn(path, "object", other);
                None
            }
        }
    }

    fn array<'a>(&mut self, v: Option<&'a Json>, path: &Path<'_>) -> &'a [Json] {
        match v {
            None | Some(Json::Null) => &[],
            Some(Json::Array(items)) => items,
            Some(other) => {
                self.warn(path, "array", other);
                &[]
            }
        }
    }

    /// A string; a number is taken as its text (ids and positions come as either).
    fn text(&mut self, v: Option<&Json>, path: &Path<'_>) -> Option<String> {
        match v? {
            Json::Null => None,
            Json::String(s) => Some(s.clone()),
            Json::Number(n) => Some(n.clone()),
            other => {
                self.warn(path, "string", other);
                None
            }
        }
    }

    /// A decimal: a JSON number's text, or a string holding one (Tradecloud's 2020 format).
    fn decimal(&mut self, v: Option<&Json>, path: &Path<'_>) -> Option<DecimalText> {
        match v? {
            Json::Null => None,
            Json::Number(n) => Some(DecimalText(n.clone())),
            Json::String(s) if is_decimal(s.trim()) => Some(DecimalText(s.trim().to_owned())),
            other => {
                self.warn(path, "decimal", other);
                None
            }
        }
    }

    fn integer(&mut self, v: Option<&Json>, path: &Path<'_>) -> Option<i64> {
        let parsed = match v? {
            Json::Null => return None,
            Json::Number(n) | Json::String(n) => n.trim().parse::<i64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.warn(path, "integer", v?);
        }
        parsed
    }
}

/// Whether `s` is a decimal in JSON's number grammar (`78.90`, `-1`, `1e3`).
fn is_decimal(s: &str) -> bool {
    s.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        && serde_json::from_str::<&RawValue>(s).is_ok()
        && !s.contains(|c: char| c.is_whitespace())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::IdKind;

    fn warning_paths(id_kind: IdKind, body: serde_json::Value) -> Vec<String> {
        let at = chrono::Utc::now();
        let t = TriggerEnvelope::get(id_kind, "4711", at).unwrap();
        let m = normalize_fetched_order_v2(&t, body.to_string().as_bytes(), at).unwrap();
        m.warnings.into_iter().map(|w| w.path).collect()
    }

    /// A fetched order's paths start at its root (`/version`, not `/orderEvent/version`), down
    /// through keys and list positions; a legacy order's through its own members.
    #[test]
    fn warnings_point_into_the_fetched_order() {
        let order = serde_json::json!({
            "id": "4711",
            "version": "three",
            "buyerOrder": {"purchaseOrderNumber": {}, "documents": [{"name": []}]},
            "lines": [
                {"id": "l-0"},
                {"id": "l-1", "buyerLine": {"position": [], "deliverySchedule": [{"quantity": "x"}]}}
            ]
        });
        assert_eq!(
            warning_paths(IdKind::OrderId, order),
            [
                "/lines/1/buyerLine/position",
                "/lines/1/buyerLine/deliverySchedule/0/quantity",
                "/version",
                "/buyerOrder/purchaseOrderNumber",
                "/buyerOrder/documents/0/name",
            ]
        );
        let legacy = serde_json::json!({
            "supplier": {"code": []},
            "lines": [{"lineId": "l-0", "quantityRequested": "many"}]
        });
        assert_eq!(
            warning_paths(IdKind::LegacyOrderId, legacy),
            ["/supplier/code", "/lines/0/quantityRequested"]
        );
    }
}
