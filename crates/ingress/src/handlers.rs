//! Routes and handlers of the public listener.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;
use tcb_bus::BusError;
use tcb_model::{EventMethod, IdKind, OrderId, TriggerEnvelope, codec};

use crate::{ApiError, AppState};

const ALLOW_BASE: &str = "GET, POST, PUT";
const ALLOW_ID: &str = "GET";

pub(crate) fn routes(cfg: &mut web::ServiceConfig, path: &str) {
    let base = if path.is_empty() { "/" } else { path };
    cfg.service(
        web::resource(base)
            .route(web::get().to(get_by_query))
            .route(web::post().to(event))
            .route(web::put().to(event))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ApiError::MethodNotAllowed(ALLOW_BASE))
            })),
    )
    .service(
        web::resource(format!("{path}/{{id}}"))
            .route(web::get().to(get_by_path))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ApiError::MethodNotAllowed(ALLOW_ID))
            })),
    )
    .default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::NotFound)
    }));
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdQuery {
    order_id: Option<String>,
    legacy_order_id: Option<String>,
}

async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let peer = req.peer_addr().map(|a| a.ip());
    match state.auth.check(header).await {
        Ok(()) => {
            if let Some(ip) = peer {
                state.auth_failures.succeeded(ip);
            }
            Ok(())
        }
        Err(refusal) if refusal.transient => Err(ApiError::Unavailable {
            reason: refusal.reason,
            retry_after: state.retry_after_seconds,
        }),
        Err(refusal) => {
            // Guessing is slowed down: repeated failures from one address wait before their 401.
            if let Some(ip) = peer {
                let delay = state.auth_failures.failed_at(ip, std::time::Instant::now());
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            Err(ApiError::Unauthorized {
                challenges: state.auth.challenges(&refusal),
                reason: refusal.reason,
            })
        }
    }
}

/// An answer's body that also holds the request's body until the answer is sent: actix looks at
/// the request body when the answer is done, and closes the connection when it is still unread
/// and held, where a dropped chunked body would be drained for as long as the client trickles
/// it (`force_close` alone does not stop that drain).
struct HoldingRequestBody {
    answer: actix_web::body::BoxBody,
    _request: web::Payload,
}

impl actix_web::body::MessageBody for HoldingRequestBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.answer.size()
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<web::Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().answer).poll_next(cx)
    }
}

/// The handler's answer, with the request body held until it is sent when the request has one
/// (see [`HoldingRequestBody`]); a request without a body is answered as it is.
fn answer(
    req: &HttpRequest,
    result: Result<HttpResponse, ApiError>,
    payload: web::Payload,
) -> HttpResponse {
    let response = match result {
        Ok(r) => r,
        Err(e) => HttpResponse::from_error(e),
    };
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if !has_body {
        return response;
    }
    response
        .map_body(|_, answer| HoldingRequestBody {
            answer,
            _request: payload,
        })
        .map_into_boxed_body()
}

async fn get_by_path(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    answer(&req, get_by_path_inner(&req, &state, &id).await, payload)
}

async fn get_by_path_inner(
    req: &HttpRequest,
    state: &AppState,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    authenticate(req, state).await?;
    publish_order_id(req, state, state.path_id, id)
        .await
        .inspect_err(|e| journal_refusal(req, state, e, Some(id), None))
}

async fn get_by_query(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    answer(&req, get_by_query_inner(&req, &state).await, payload)
}

async fn get_by_query_inner(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    authenticate(req, state).await?;
    get_by_query_authenticated(req, state)
        .await
        .inspect_err(|e| journal_refusal(req, state, e, None, None))
}

async fn get_by_query_authenticated(
    req: &HttpRequest,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<IdQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    let (kind, id) = match (&query.order_id, &query.legacy_order_id) {
        (Some(id), None) => (IdKind::OrderId, id),
        (None, Some(id)) => (IdKind::LegacyOrderId, id),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give orderId or legacyOrderId, not both".to_owned(),
            ));
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "a GET needs the order id: <path>/{id}, ?orderId= or ?legacyOrderId=".to_owned(),
            ));
        }
    };
    publish_order_id(req, state, kind, id).await
}

/// A GET trigger: validates the id and publishes it.
async fn publish_order_id(
    req: &HttpRequest,
    state: &AppState,
    kind: IdKind,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let trigger = TriggerEnvelope::get(kind, id, Utc::now())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    publish(req, state, trigger).await
}

async fn event(
    req: HttpRequest,
    state: web::Data<AppState>,
    mut payload: web::Payload,
) -> HttpResponse {
    match event_inner(&req, &state, &mut payload).await {
        // The body was read to its end: nothing to hold.
        Ok(response) => response,
        Err(e) => answer(&req, Err(e), payload),
    }
}

async fn event_inner(
    req: &HttpRequest,
    state: &AppState,
    payload: &mut web::Payload,
) -> Result<HttpResponse, ApiError> {
    authenticate(req, state).await?;
    let mut body = None;
    event_authenticated(req, state, payload, &mut body)
        .await
        .inspect_err(|e| {
            let (order, po) = body
                .as_deref()
                .map(tcb_model::webhook::order_hint)
                .unwrap_or_default();
            journal_refusal(req, state, e, order.as_deref(), po.as_deref());
        })
}

async fn event_authenticated(
    req: &HttpRequest,
    state: &AppState,
    payload: &mut web::Payload,
    read: &mut Option<Vec<u8>>,
) -> Result<HttpResponse, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if content_type.len() > 128 {
        return Err(ApiError::BadRequest(
            "Content-Type is longer than 128 bytes".to_owned(),
        ));
    }
    if !tcb_model::txml::is_json(&content_type) && !tcb_model::txml::is_xml(&content_type) {
        return Err(ApiError::UnsupportedMediaType(content_type));
    }
    let body = crate::body::read(req, payload, state.max_body_bytes, state.body_read_timeout)
        .await
        .map_err(|e| match e {
            // A body too slow to arrive is cut off, but answered 503: Tradecloud retries that,
            // where a 408 (a 4xx) would lose the order change if the sender was just slow.
            ApiError::RequestTimeout { after, .. } => ApiError::RequestTimeout {
                after,
                retry_after: state.retry_after_seconds,
            },
            e => e,
        })?;
    // The routes send only POST and PUT here.
    let method = if req.method() == actix_web::http::Method::PUT {
        EventMethod::Put
    } else {
        EventMethod::Post
    };
    let trigger = TriggerEnvelope::event(method, Some(&content_type), &body, Utc::now())
        .map_err(|e| ApiError::BadRequest(e.to_string()));
    *read = Some(body);
    publish(req, state, trigger?).await
}

/// Journals an authenticated request refused with a 4xx before anything was published
/// (Tradecloud does not retry it, so this is where the order change ends): the operator asking
/// "did we get PO-4711?" finds it by the order id or PO number, when the request named one.
/// Refusals after a publish attempt are journaled by [`publish`]; unauthenticated ones are not
/// journaled at all (anyone could fill the journal with them).
fn journal_refusal(
    req: &HttpRequest,
    state: &AppState,
    error: &ApiError,
    order_id: Option<&str>,
    po_number: Option<&str>,
) {
    let Some(journal) = &state.journal else {
        return;
    };
    if !matches!(
        error,
        ApiError::BadRequest(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::UnsupportedMediaType(_)
            | ApiError::UnsupportedEncoding(_)
    ) {
        return;
    }
    // Caller-controlled texts are cut: a refused request is not trusted to be sensible.
    let cut = |s: &str| s.chars().take(128).collect::<String>();
    let status = actix_web::ResponseError::status_code(error).as_u16();
    journal.record(
        tcb_journal::Entry::new(
            uuid::Uuid::now_v7().to_string(),
            tcb_journal::Stage::Refused,
        )
        .order(order_id.map(cut).as_deref())
        .po_number(po_number.map(cut).as_deref())
        .trace(&tcb_telemetry::otel::trace_id(&tracing::Span::current()))
        .detail(json!({
            "status": status,
            "peer": req.peer_addr().map(|a| a.ip().to_string()),
            "method": req.method().as_str(),
            "reason": error.code(),
            "error": cut(&error.to_string()),
        })),
    );
}

/// The server span of one request, continuing the caller's trace (`traceparent`, `tracestate`).
pub(crate) fn request_span(req: &actix_web::dev::ServiceRequest) -> tracing::Span {
    let headers = req.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let route = req.match_pattern();
    let peer = req.peer_addr().map(|a| a.ip().to_string());
    let version = match req.version() {
        actix_web::http::Version::HTTP_2 => "2",
        actix_web::http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    let scheme = req.connection_info().scheme().to_owned();
    let span = tcb_telemetry::spans::webhook(
        req.method().as_str(),
        &scheme,
        route.as_deref(),
        req.path(),
        peer.as_deref(),
        header("user-agent"),
        version,
    );
    tcb_telemetry::otel::set_parent(&span, tcb_telemetry::otel::extract(header));
    span
}

/// Publishes the validated trigger and answers 200 only once the bus holds it.
async fn publish(
    req: &HttpRequest,
    state: &AppState,
    trigger: TriggerEnvelope,
) -> Result<HttpResponse, ApiError> {
    let unavailable = |reason: String| ApiError::Unavailable {
        reason,
        retry_after: state.retry_after_seconds,
    };
    if state.draining.load(Ordering::SeqCst) {
        return Err(unavailable("the bridge is shutting down".to_owned()));
    }
    tcb_telemetry::spans::trigger(
        &tracing::Span::current(),
        &trigger.id.to_string(),
        trigger.any_order_id().map(OrderId::as_str),
        trigger.event_name().map(|n| n.as_str()),
    );
    let message = codec::encode_trigger(&trigger).map_err(|e| {
        tracing::error!(trigger_id = %trigger.id, error = %e, "cannot encode the trigger: 503");
        unavailable(format!("the trigger could not be encoded: {e}"))
    })?;
    let span = tcb_bus::publish_span(&*state.publisher, false, &state.topic, &message);
    let arrived = trigger.received_at;
    let journal = |stage: tcb_journal::Stage, detail: serde_json::Value| {
        if let Some(j) = &state.journal {
            j.record(
                tcb_journal::Entry::new(trigger.id.to_string(), stage)
                    // When the request arrived: before anything the worker does with it.
                    .at(arrived)
                    .order(trigger.any_order_id().map(OrderId::as_str))
                    .message(trigger.tradecloud_message_id())
                    .trace(&tcb_telemetry::otel::trace_id(&tracing::Span::current()))
                    .detail(detail),
            );
        }
    };
    let peer = req.peer_addr().map(|a| a.ip().to_string());
    let started = std::time::Instant::now();
    let outcome = tcb_bus::publish_traced(
        &*state.publisher,
        &span,
        &state.topic,
        message,
        state.ack_timeout,
    )
    .await;
    match outcome {
        Ok(position) => {
            tcb_telemetry::metrics::ingress_acked(started.elapsed());
            journal(
                tcb_journal::Stage::Accepted,
                json!({
                    "status": 200,
                    "peer": peer,
                    "method": trigger.method().as_str(),
                    "event": trigger.event_name().map(|n| n.as_str()),
                    "topic": state.topic,
                    "position": position,
                }),
            );
            tracing::info!(
                trigger_id = %trigger.id,
                order_id = trigger.order_id().map(OrderId::as_str).unwrap_or(""),
                legacy_order_id = trigger.legacy_order_id().map(OrderId::as_str).unwrap_or(""),
                event_name = trigger.event_name().map(|n| n.as_str()).unwrap_or(""),
                method = trigger.method().as_str(),
                "trigger accepted"
            );
            Ok(HttpResponse::Ok().json(json!({
                "status": "accepted",
                "triggerId": trigger.id,
            })))
        }
        // The broker will never take a message this large: a retry cannot help, so say so
        // (Tradecloud does not retry a 4xx) instead of a 503 that would be retried for ever.
        Err(e) => {
            let (status, error) = match &e {
                BusError::TooLarge { .. } => {
                    tracing::warn!(trigger_id = %trigger.id, error = %e.chain(), "trigger too large for the broker: 413");
                    (413, ApiError::TooLargeForBroker)
                }
                BusError::Timeout(_) => {
                    tracing::warn!(trigger_id = %trigger.id, timeout_ms = state.ack_timeout.as_millis() as u64, "broker acknowledgement timed out: 503");
                    (
                        503,
                        unavailable("the broker did not acknowledge in time".to_owned()),
                    )
                }
                _ => {
                    tracing::warn!(trigger_id = %trigger.id, error = %e.chain(), "trigger not stored: 503");
                    (
                        503,
                        unavailable(format!("the trigger could not be stored: {}", e.chain())),
                    )
                }
            };
            journal(
                tcb_journal::Stage::NotStored,
                json!({"status": status, "peer": peer, "reason": e.kind()}),
            );
            Err(error)
        }
    }
}
