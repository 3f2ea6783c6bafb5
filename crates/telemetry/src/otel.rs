//! OpenTelemetry traces: the OTLP exporter, W3C trace-context propagation through HTTP and
//! message headers, and the semantic-convention spans every part of the bridge opens.
//!
//! Export is on when an endpoint is configured (`[telemetry.otlp] endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and
//! `OTEL_SDK_DISABLED` is not `true`. Without export, spans still get ids (so logs carry
//! `trace_id` and messages carry `traceparent`), but nothing is recorded unless the incoming
//! context was sampled, and nothing is sent anywhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::TelemetryError;

/// The `[telemetry.otlp]` section: where spans go. Every key has a standard `OTEL_*` variable,
/// which wins when set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector, e.g. `http://otel-collector:4318` (HTTP) or `http://otel-collector:4317`
    /// (gRPC); for HTTP, `/v1/traces` is added when the URL has no path. Unset: no export.
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
    pub endpoint: Option<String>,
    /// `http/protobuf` (the default, as the OpenTelemetry specification says) or `grpc`.
    /// (`OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`)
    pub protocol: Option<OtlpProtocol>,
    /// Headers sent with every export, e.g. an API key; secret, never logged.
    /// (`OTEL_EXPORTER_OTLP_HEADERS` as `k1=v1,k2=v2`)
    #[serde(serialize_with = "crate::redact::secret_values")]
    pub headers: BTreeMap<String, SecretString>,
    /// Export timeout in seconds (default 10). (`OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds)
    pub timeout_seconds: Option<u64>,
    /// The service name (default `tradecloud-bridge-ingress`, `-worker`, or `tradecloud-bridge`
    /// for a process running both). (`OTEL_SERVICE_NAME`; more attributes with
    /// `OTEL_RESOURCE_ATTRIBUTES`)
    pub service_name: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0 (default 1.0); a trace Tradecloud (or any
    /// caller) started follows the caller's decision. (`OTEL_TRACES_SAMPLER` and
    /// `OTEL_TRACES_SAMPLER_ARG` replace this sampler entirely.)
    pub sample_ratio: Option<f64>,
}

impl PartialEq for OtlpConfig {
    fn eq(&self, other: &Self) -> bool {
        let headers = |c: &Self| {
            c.headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
                .collect::<Vec<_>>()
        };
        self.endpoint == other.endpoint
            && self.protocol == other.protocol
            && headers(self) == headers(other)
            && self.timeout_seconds == other.timeout_seconds
            && self.service_name == other.service_name
            && self.sample_ratio == other.sample_ratio
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpConfig {
    /// Every problem of the section, each naming its key (relative to `telemetry.otlp`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Some(ratio) = self.sample_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            problems.push((
                "sample_ratio".to_owned(),
                format!("{ratio} is not between 0.0 and 1.0"),
            ));
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            problems.push((
                "endpoint".to_owned(),
                format!("{e:?} is not an http:// or https:// URL"),
            ));
        }
        if self.timeout_seconds == Some(0) {
            problems.push((
                "timeout_seconds".to_owned(),
                "must be at least 1".to_owned(),
            ));
        }
        problems
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether spans are exported: an endpoint is set and the SDK is not disabled.
pub fn export_enabled(config: &OtlpConfig) -> bool {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let endpoint = config.endpoint.is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled
}

fn protocol(config: &OtlpConfig) -> Result<OtlpProtocol, TelemetryError> {
    let from_env =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match from_env.as_deref().map(str::trim) {
        None => Ok(config.protocol.unwrap_or(OtlpProtocol::HttpProtobuf)),
        Some("grpc") => Ok(OtlpProtocol::Grpc),
        Some("http/protobuf") => Ok(OtlpProtocol::HttpProtobuf),
        Some(other) => Err(TelemetryError::Otlp(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {other:?}: expected one of `grpc`, `http/protobuf`"
        ))),
    }
}

/// The HTTP endpoint from the config: `/v1/traces` added when the URL names no path.
fn http_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Builds the tracer provider: with an OTLP batch exporter when export is on (call inside a Tokio
/// runtime: the export runs on it and never blocks a request), without one otherwise.
pub(crate) fn provider(
    config: &OtlpConfig,
    default_service: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (read by the builder) win over our
    // defaults, as the specification says.
    let from_env = env("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let set_in_env = |key: &str| {
        from_env
            .split(',')
            .any(|kv| kv.split('=').next().is_some_and(|k| k.trim() == key))
    };
    let mut resource = Resource::builder();
    if !set_in_env("service.version") {
        resource =
            resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    if env("OTEL_SERVICE_NAME").is_none() && !set_in_env("service.name") {
        let name = config.service_name.as_deref().unwrap_or(default_service);
        resource = resource.with_service_name(name.to_owned());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if !export_enabled(config) {
        // Ids for logs and propagation; recorded only when the caller sampled (and then dropped).
        return Ok(builder
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build());
    }
    if env("OTEL_TRACES_SAMPLER").is_none() {
        let ratio = config.sample_ratio.unwrap_or(1.0);
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    // A timeout set here would override OTEL_EXPORTER_OTLP_TIMEOUT: only from the config.
    let timeout = config.timeout_seconds.map(Duration::from_secs).filter(|_| {
        env("OTEL_EXPORTER_OTLP_TIMEOUT").is_none()
            && env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_none()
    });
    let env_endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    let headers: HashMap<String, String> = if env("OTEL_EXPORTER_OTLP_HEADERS").is_some() {
        HashMap::new()
    } else {
        config
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
            .collect()
    };
    let failed = |e: opentelemetry_otlp::ExporterBuildError| {
        TelemetryError::Otlp(format!("cannot build the OTLP exporter: {e}"))
    };
    let exporter = match protocol(config)? {
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(t) = timeout {
                b = b.with_timeout(t);
            }
            if let (false, Some(e)) = (env_endpoint, &config.endpoint) {
                b = b.with_endpoint(e.clone());
            }
            if !headers.is_empty() {
                let mut metadata = tonic_metadata::MetadataMap::new();
                for (k, v) in &headers {
                    let key =
                        tonic_metadata::MetadataKey::from_bytes(k.as_bytes()).map_err(|_| {
                            TelemetryError::Otlp(format!("header name {k:?} is not valid"))
                        })?;
                    let value = v.parse().map_err(|_| {
                        TelemetryError::Otlp(format!("the value of header {k:?} is not valid"))
                    })?;
                    metadata.insert(key, value);
                }
                b = b.with_metadata(metadata);
            }
            b.build().map_err(failed)?
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(t) = timeout {
                b = b.with_timeout(t);
            }
            if let (false, Some(e)) = (env_endpoint, &config.endpoint) {
                b = b.with_endpoint(http_traces_url(e));
            }
            if !headers.is_empty() {
                b = b.with_headers(headers);
            }
            b.build().map_err(failed)?
        }
    };
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Ok(builder.with_span_processor(processor).build())
}

pub(crate) fn install(provider: SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    let tracer = provider.tracer("tradecloud-bridge");
    let _ = PROVIDER.set(provider);
    tracer
}

/// Sends what is still buffered and stops the exporter; call once, at the very end.
pub async fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let provider = provider.clone();
        // The SDK blocks while it flushes: off the async threads.
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing the last spans failed");
            }
        })
        .await;
    }
}

/// Sends what is buffered now (tests and benchmarks).
pub async fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let provider = provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }
}

mod tonic_metadata {
    pub use tonic::metadata::{MetadataKey, MetadataMap};
}

// ---- propagation ----------------------------------------------------------------------------

/// Reads trace context from any header lookup.
struct Lookup<'a, F: Fn(&str) -> Option<&'a str>>(F);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Lookup<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The context a caller or a message carries (`traceparent`, `tracestate`); an empty context
/// (a new trace) when there is none or it is malformed.
pub fn extract<'a>(lookup: impl Fn(&str) -> Option<&'a str>) -> Context {
    TraceContextPropagator::new().extract(&Lookup(lookup))
}

/// The context of message headers.
pub fn extract_headers(headers: &BTreeMap<String, String>) -> Context {
    extract(|k| headers.get(k).map(String::as_str))
}

struct Insert<F: FnMut(&'static str, String)>(F);

impl<F: FnMut(&'static str, String)> Injector for Insert<F> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => (self.0)("traceparent", value),
            "tracestate" => (self.0)("tracestate", value),
            _ => {}
        }
    }
}

/// Writes `span`'s context as `traceparent` (and `tracestate` when there is one).
pub fn inject(span: &tracing::Span, mut put: impl FnMut(&'static str, String)) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut Insert(&mut put));
}

/// Writes `span`'s context into message headers, replacing what they carried.
pub fn inject_headers(span: &tracing::Span, headers: &mut BTreeMap<String, String>) {
    headers.remove("tracestate");
    inject(span, |k, v| {
        headers.insert(k.to_owned(), v);
    });
}

/// The span context of `span` (for links).
pub fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// The trace id of `span` as 32 hex digits (empty when there is none).
pub fn trace_id(span: &tracing::Span) -> String {
    let sc = span_context(span);
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Continues the trace of `parent` (an extracted context) in `span`.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    let _ = span.set_parent(parent);
}

/// Links `span` to `other` (a coalesced trigger's span).
pub fn link(span: &tracing::Span, other: &tracing::Span) {
    span.add_link(span_context(other));
}

/// Marks `span` failed with `message` (OpenTelemetry status ERROR).
pub fn set_error(span: &tracing::Span, message: impl Into<String>) {
    span.set_status(opentelemetry::trace::Status::error(message.into()));
}

/// The ids of the span the current log line is in, for log correlation.
pub(crate) fn current_ids(
    id: &tracing::span::Id,
    dispatch: &tracing::Dispatch,
) -> Option<(String, String)> {
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_get_the_traces_path_only_without_one() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("https://c/otlp/v1/traces"),
            "https://c/otlp/v1/traces"
        );
    }

    /// `[telemetry.otlp]` alone (no OTEL_* variable) sends spans to its endpoint's `/v1/traces`
    /// with its headers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_config_section_exports_with_its_headers() {
        use opentelemetry::trace::{Tracer as _, TracerProvider as _};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            assert!(env(var).is_none(), "the test needs {var} unset");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the exporter hung up");
                head.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&head).to_lowercase()
        });
        let config = OtlpConfig {
            endpoint: Some(format!("http://{addr}")),
            protocol: Some(OtlpProtocol::HttpProtobuf),
            headers: BTreeMap::from([("x-api-key".to_owned(), SecretString::from("k-123"))]),
            ..OtlpConfig::default()
        };
        let provider = provider(&config, "test-service").unwrap();
        provider.tracer("t").in_span("one", |_| {});
        let flushing = provider.clone();
        tokio::task::spawn_blocking(move || flushing.force_flush())
            .await
            .unwrap()
            .unwrap();
        let head = tokio::time::timeout(Duration::from_secs(10), received)
            .await
            .unwrap()
            .unwrap();
        assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
        assert!(head.contains("x-api-key: k-123"), "{head}");
        assert!(
            head.contains("content-type: application/x-protobuf"),
            "{head}"
        );
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }

    #[test]
    fn validation_names_the_key() {
        let c = OtlpConfig {
            endpoint: Some("collector:4317".to_owned()),
            sample_ratio: Some(1.5),
            timeout_seconds: Some(0),
            ..OtlpConfig::default()
        };
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["sample_ratio", "endpoint", "timeout_seconds"]);
        assert!(OtlpConfig::default().validate().is_empty());
    }
}
