//! The spans of the bridge, one function per kind, named and attributed by the OpenTelemetry
//! semantic conventions for HTTP and messaging (`docs/observability.md` lists them). Tradecloud
//! ids are span attributes (`tradecloud.order_id`, `tradecloud.event_name`), never metric labels.
//!
//! Every span here has the target [`TARGET`], which the OpenTelemetry layer exports.

use tracing::Span;
use tracing::field::Empty;

/// The target of every span of the bridge.
pub const TARGET: &str = "tcb::span";

/// The longest text a caller (or an error chain) puts into an attribute.
const MAX_TEXT: usize = 256;

/// `text` cut to [`MAX_TEXT`] bytes at a character boundary.
fn bounded(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The method as the HTTP conventions want it: a known one, else `_OTHER` (a client cannot
/// choose span names).
fn known_method(method: &str) -> &str {
    match method {
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH" => {
            method
        }
        _ => "_OTHER",
    }
}

/// The webhook request Tradecloud makes (HTTP server). Continue the caller's trace with
/// [`crate::otel::set_parent`] before entering it.
pub fn webhook(
    method: &str,
    scheme: &str,
    route: Option<&str>,
    path: &str,
    client_address: Option<&str>,
    user_agent: Option<&str>,
    protocol_version: &str,
) -> Span {
    let method = known_method(method);
    let (path, user_agent) = (bounded(path), user_agent.map(bounded));
    tracing::info_span!(
        target: TARGET,
        "webhook",
        otel.name = %format_args!("{method}{}{}", if route.is_some() { " " } else { "" }, route.unwrap_or("")),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        url.path = path,
        url.scheme = scheme,
        client.address = client_address,
        user_agent.original = user_agent,
        network.protocol.version = protocol_version,
        http.response.status_code = Empty,
        error.type = Empty,
        tcb.trigger_id = Empty,
        tradecloud.order_id = Empty,
        tradecloud.event_name = Empty,
    )
}

/// The answer of an HTTP span: a server span fails on a 5xx only, a client span on any 4xx/5xx
/// (as the HTTP conventions say).
pub fn http_status(span: &Span, status: u16, server: bool) {
    // Integers as i64: the OpenTelemetry layer records unsigned ones as text.
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 || (!server && status >= 400) {
        span.record("error.type", status.to_string().as_str());
        span.record("otel.status_code", "ERROR");
    }
}

/// A transport failure of an HTTP client span (no answer).
pub fn http_failed(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}

/// What a trigger names, on the span that handles it.
pub fn trigger(span: &Span, trigger_id: &str, order_id: Option<&str>, event_name: Option<&str>) {
    span.record("tcb.trigger_id", trigger_id);
    if let Some(id) = order_id {
        span.record("tradecloud.order_id", id);
    }
    if let Some(name) = event_name {
        span.record("tradecloud.event_name", name);
    }
}

/// The publish of a message (messaging producer): the trigger by the ingress, the output or the
/// dead letter (`dead_letter` true) by the worker. The operation is named as the system names it
/// (`publish` for RabbitMQ, `send` otherwise), `dead_letter` for a dead letter. The message
/// carries this span's context.
pub fn publish(
    system: &'static str,
    dead_letter: bool,
    destination: &str,
    message_id: &str,
) -> Span {
    let operation = match (dead_letter, system) {
        (true, _) => "dead_letter",
        (false, "rabbitmq") => "publish",
        (false, _) => "send",
    };
    tracing::info_span!(
        target: TARGET,
        "publish",
        otel.name = %format_args!("{operation} {destination}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = operation,
        messaging.destination.name = destination,
        messaging.message.id = message_id,
        error.type = Empty,
        tcb.dead_letter.reason = Empty,
        tcb.dead_letter.detail = Empty,
    )
}

/// The worker's processing of one trigger (messaging consumer); its parent is the context the
/// trigger's headers carry.
pub fn process(
    system: &'static str,
    source: &str,
    group: &str,
    message_id: &str,
    position: &str,
) -> Span {
    tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = %format_args!("process {source}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = source,
        messaging.consumer.group.name = group,
        messaging.message.id = message_id,
        tcb.position = position,
        tcb.trigger_id = Empty,
        tradecloud.order_id = Empty,
        tradecloud.event_name = Empty,
        tcb.coalesced = Empty,
    )
}

/// One request to Tradecloud's API (HTTP client): `kind` is `login`, `refresh`, `order` or
/// `legacy_order`; the URL holds no secret (tokens and passwords travel in headers and bodies).
pub fn tradecloud_request(
    kind: &'static str,
    method: &str,
    url_template: &str,
    url: &str,
    server_address: &str,
    server_port: u16,
) -> Span {
    tracing::info_span!(
        target: TARGET,
        "tradecloud",
        otel.name = %format_args!("{method} {url_template}"),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method,
        url.full = url,
        url.template = url_template,
        server.address = server_address,
        server.port = i64::from(server_port),
        http.response.status_code = Empty,
        error.type = Empty,
        tcb.tradecloud.request = kind,
    )
}

/// One fetch of an order from Tradecloud, with its retries (internal): the first GET trigger's
/// child, linked to every other trigger it serves.
pub fn fetch(key: &str, triggers: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "fetch",
        otel.name = "fetch order",
        otel.kind = "internal",
        otel.status_code = Empty,
        tradecloud.order_id = key,
        tcb.coalesced = triggers as i64,
        error.type = Empty,
    )
}

/// Turning a Tradecloud event or order into the output message (internal).
pub fn normalize(source: &'static str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "normalize",
        otel.kind = "internal",
        otel.status_code = Empty,
        tcb.source = source,
        error.type = Empty,
    )
}

/// A span's work failed: `error.type` (a short, bounded class) and status ERROR.
pub fn failed(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}

/// The dead letter a publish span sends: its reason class and text.
pub fn dead_letter(span: &Span, reason: &str, detail: &str) {
    span.record("tcb.dead_letter.reason", reason);
    span.record("tcb.dead_letter.detail", bounded(detail));
}
