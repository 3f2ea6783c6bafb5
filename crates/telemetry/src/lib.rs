//! Logging and trace context for every process of the bridge.
//!
//! Logs go to stderr, as JSON lines (`log_format = "json"`, the default for services) or as
//! readable text. `RUST_LOG` overrides the configured level. Traces are OpenTelemetry spans
//! ([`otel`]), exported over OTLP when an endpoint is set; every log line written inside a span
//! carries that span's `trace_id` and `span_id`.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

pub mod health;
pub mod metrics;
pub mod otel;
pub mod redact;
pub mod spans;

/// The `[telemetry]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `json` (one JSON object a line) or `text`.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `info,tcb_worker=debug`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// Span export over OTLP (off unless an endpoint is set here or in `OTEL_*` variables).
    pub otlp: otel::OtlpConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".to_owned(),
            otlp: otel::OtlpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.log_level: {0}")]
    Filter(String),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
    #[error("telemetry.otlp: {0}")]
    Otlp(String),
}

impl TelemetryConfig {
    /// Every problem of the section, each naming its key (relative to `telemetry`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = match EnvFilter::try_new(&self.log_level) {
            Ok(_) => Vec::new(),
            Err(e) => vec![("log_level".to_owned(), e.to_string())],
        };
        problems.extend(
            self.otlp
                .validate()
                .into_iter()
                .map(|(k, v)| (format!("otlp.{k}"), v)),
        );
        problems
    }
}

/// Library noise kept below the default level unless the filter names the target itself: a
/// client that connects by IP address makes rustls warn "Illegal SNI extension" on every
/// connection; the OpenTelemetry SDK's own events are kept from warnings up (a failed export).
const QUIET: [(&str, &str); 2] = [
    ("rustls", "rustls=error"),
    ("opentelemetry", "opentelemetry=warn"),
];

/// The log filter: `spec` plus [`QUIET`] for the targets it does not name.
pub fn filter(spec: &str) -> Result<EnvFilter, TelemetryError> {
    let mut filter = EnvFilter::try_new(spec).map_err(|e| TelemetryError::Filter(e.to_string()))?;
    for (target, directive) in QUIET {
        if !spec.contains(target)
            && let Ok(d) = directive.parse()
        {
            filter = filter.add_directive(d);
        }
    }
    Ok(filter)
}

/// Installs the global subscriber: logs, and the OpenTelemetry layer that turns `tracing` spans
/// into OpenTelemetry spans (exported when `[telemetry.otlp]` or `OTEL_*` name an endpoint).
/// `service` is the default service name. Call once, early, inside the Tokio runtime; call
/// [`otel::shutdown`] at the end so the last spans are sent.
pub fn init(config: &TelemetryConfig, service: &str) -> Result<(), TelemetryError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => filter(&v),
        _ => filter(&config.log_level),
    }?;
    let tracer = otel::install(otel::provider(&config.otlp, service)?);
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_level(false)
        .with_target(false)
        // The bridge's own spans, and its warnings and errors as events on them; nothing else
        // (a library's debug events would cost every request).
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(spans::TARGET, tracing::Level::INFO)
                .with_target("tcb_", tracing::Level::WARN),
        );
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match config.log_format {
        LogFormat::Json => fmt
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            ))
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .boxed(),
        LogFormat::Text => fmt
            .event_format(WithTraceIds(tracing_subscriber::fmt::format()))
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(spans)
        .with(logs.with_filter(filter))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)
}

use tracing_subscriber::Layer;

/// A log format plus the current span's `trace_id` and `span_id`: as two more JSON keys (the
/// line is one JSON object) or as ` trace_id=... span_id=...` at the end of a text line.
struct WithTraceIds<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The registry's current span, not this layer's: with `log_level = "warn"` the span is
        // not logged, but its ids are.
        let ids = tracing::dispatcher::get_default(|d| {
            let id = event
                .parent()
                .cloned()
                .or_else(|| d.current_span().id().cloned())?;
            otel::current_ids(&id, d)
        });
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let body = line.trim_end_matches('\n');
        if body.ends_with('}') && body.starts_with('{') {
            let open = &body[..body.len() - 1];
            writeln!(
                writer,
                "{open},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            )
        } else {
            writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
        }
    }
}
