//! Logging and trace context for every process of the bridge.
//!
//! Logs go to stderr, as JSON lines (`log_format = "json"`, the default for services) or as
//! readable text. `RUST_LOG` overrides the configured level. Trace context is W3C `traceparent`,
//! carried from the webhook request into message headers and on to the output message.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

pub mod health;
pub mod metrics;
pub mod redact;
pub mod trace_context;

/// The `[telemetry]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `json` (one JSON object a line) or `text`.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `info,tcb_worker=debug`; `RUST_LOG` wins when set.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".to_owned(),
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
}

impl TelemetryConfig {
    /// Every problem of the section, each naming its key (relative to `telemetry`).
    pub fn validate(&self) -> Vec<(String, String)> {
        match EnvFilter::try_new(&self.log_level) {
            Ok(_) => Vec::new(),
            Err(e) => vec![("log_level".to_owned(), e.to_string())],
        }
    }
}

/// Per-connection library noise kept below the default level unless the filter names the target
/// itself: a client that connects by IP address makes rustls warn "Illegal SNI extension" on
/// every connection.
const QUIET: [(&str, &str); 1] = [("rustls", "rustls=error")];

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

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(config: &TelemetryConfig) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => filter(&v),
        _ => filter(&config.log_level),
    }?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}
