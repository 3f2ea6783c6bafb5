//! The public webhook endpoint Tradecloud calls, and the admin endpoint beside it.
//!
//! Contract (see `README.md`, "Status codes"): 200 only after the trigger is durable on the bus;
//! 503 with `Retry-After` on any transient failure (Tradecloud retries >500 only); 400, 401, 404,
//! 405, 413, 415 for requests that can never succeed, each with a short JSON error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use serde::Deserialize;
use tcb_bus::Publisher;
use tcb_model::IdKind;
use tracing::Instrument;

pub mod admin;
pub mod auth;
mod body;
pub mod console;
mod error;
mod handlers;
mod refusal;
pub mod tls;

pub use auth::{AuthConfig, Credentials, OauthConfig};
pub use error::ApiError;

/// The `[ingress]` section.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// Address of the public HTTPS listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Path Tradecloud calls: `GET <path>/{id}`, `GET <path>?orderId=`, `POST`/`PUT <path>`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Which id a `GET <path>/{id}` carries: `orderId` (API v2) or `legacyOrderId` (API v1 companies).
    #[serde(default = "default_path_id")]
    pub path_id: IdKind,
    /// Largest accepted request body in bytes, after decoding a `Content-Encoding` (gzip,
    /// deflate); larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Connections open at once, over all HTTP workers; past it new ones wait in the backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A TLS handshake must be done within this long, or the connection is closed.
    #[serde(default = "default_tls_handshake_timeout")]
    pub tls_handshake_timeout_ms: u64,
    /// A request's head (request line and headers) must arrive within this long (a slow client
    /// holding connections open, "slowloris", is cut off).
    #[serde(default = "default_request_head_timeout")]
    pub request_head_timeout_ms: u64,
    /// A request's body must arrive within this long after its head: 503 (retried by Tradecloud) and the connection
    /// closed otherwise.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this long; 0: no keep-alive (each request on
    /// a connection of its own, so every request head is under `request_head_timeout_ms`).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_seconds: u64,
    /// How long a request waits for the broker's acknowledgement before answering 503.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// `Retry-After` seconds sent with every 503.
    #[serde(default = "default_retry_after")]
    pub retry_after_seconds: u32,
    /// HTTP worker threads (actix workers); defaults to the number of cores.
    #[serde(default)]
    pub http_workers: Option<usize>,
    /// How long a graceful shutdown lets in-flight requests finish.
    #[serde(default = "default_shutdown")]
    pub shutdown_timeout_seconds: u64,
    pub tls: tls::TlsConfig,
    /// One credential or a list (`[[ingress.auth]]`): any of them is accepted.
    pub auth: Credentials,
}

impl IngressConfig {
    /// A config with every optional key at its default.
    pub fn new(listen: SocketAddr, tls: tls::TlsConfig, auth: AuthConfig) -> Self {
        Self {
            listen,
            path: default_path(),
            path_id: default_path_id(),
            max_body_bytes: default_max_body(),
            max_connections: default_max_connections(),
            tls_handshake_timeout_ms: default_tls_handshake_timeout(),
            request_head_timeout_ms: default_request_head_timeout(),
            body_read_timeout_ms: default_body_read_timeout(),
            keep_alive_seconds: default_keep_alive(),
            ack_timeout_ms: default_ack_timeout(),
            retry_after_seconds: default_retry_after(),
            http_workers: None,
            shutdown_timeout_seconds: default_shutdown(),
            tls,
            auth: auth.into(),
        }
    }

    /// Every problem of the section, each naming its key (relative to `ingress`). TLS files are
    /// read by [`tls::server_config`], which `check-config` also runs.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, message: &str| {
            if !ok {
                problems.push((key.to_owned(), message.to_owned()));
            }
        };
        let path = &self.path;
        check(
            path.starts_with('/')
                && (path.len() == 1 || !path.ends_with('/'))
                && !path.contains("//")
                && !path.contains(['{', '}', '?', '#'])
                && !path.chars().any(char::is_whitespace),
            "path",
            "must start with '/', not end with '/', and hold no '//', '{', '}', '?', '#' or spaces",
        );
        check(
            self.max_body_bytes >= 1,
            "max_body_bytes",
            "must be at least 1",
        );
        check(
            self.max_connections >= 1,
            "max_connections",
            "must be at least 1",
        );
        for (key, ms) in [
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            ("request_head_timeout_ms", self.request_head_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
        ] {
            check(ms >= 1, key, "must be at least 1");
        }
        check(
            self.ack_timeout_ms >= 1,
            "ack_timeout_ms",
            "must be at least 1",
        );
        check(
            self.retry_after_seconds >= 1,
            "retry_after_seconds",
            "must be at least 1",
        );
        check(
            self.http_workers.is_none_or(|n| n >= 1),
            "http_workers",
            "must be at least 1",
        );
        problems.extend(self.auth.validate());
        problems
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_path() -> String {
    "/webhook".to_owned()
}
fn default_path_id() -> IdKind {
    IdKind::OrderId
}
fn default_max_body() -> usize {
    4 * 1024 * 1024
}
fn default_max_connections() -> usize {
    4096
}
fn default_tls_handshake_timeout() -> u64 {
    5_000
}
fn default_request_head_timeout() -> u64 {
    5_000
}
fn default_body_read_timeout() -> u64 {
    30_000
}
fn default_keep_alive() -> u64 {
    75
}
fn default_ack_timeout() -> u64 {
    5_000
}
fn default_retry_after() -> u32 {
    5
}
fn default_shutdown() -> u64 {
    20
}

/// The ingress crate's result.
pub type Result<T, E = IngressError> = std::result::Result<T, E>;

/// Errors starting the ingress.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("ingress.tls: {0}")]
    Tls(String),
    #[error("ingress.{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// State shared by the request handlers.
pub(crate) struct AppState {
    pub publisher: Arc<dyn Publisher>,
    pub topic: String,
    pub auth: auth::Authenticator,
    pub path_id: IdKind,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub ack_timeout: Duration,
    pub retry_after_seconds: u32,
    pub draining: Arc<AtomicBool>,
    pub auth_failures: refusal::AuthFailures,
    /// What happened to each trigger, for `trace` (none without `[journal]`).
    pub journal: Option<tcb_journal::Journal>,
}

/// A started ingress.
pub struct Ingress {
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    handle: ServerHandle,
    draining: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Reads the certificate files again when they change.
    certificate_watch: Option<tokio::task::JoinHandle<()>>,
}

impl Ingress {
    /// Binds and starts serving. Signals are not handled here: the caller decides when to
    /// [`Ingress::stop`].
    pub fn start(
        config: &IngressConfig,
        publisher: Arc<dyn Publisher>,
        triggers_topic: &str,
        journal: Option<tcb_journal::Journal>,
    ) -> Result<Self, IngressError> {
        if let Some((key, message)) = config.validate().into_iter().next() {
            return Err(IngressError::Invalid { key, message });
        }
        let tls = tls::server_config(&config.tls)?;
        let certificate_watch = tls
            .as_ref()
            .map(|t| tokio::spawn(t.certificate.clone().watch()));
        let draining = Arc::new(AtomicBool::new(false));
        let state = web::Data::new(AppState {
            publisher,
            topic: triggers_topic.to_owned(),
            auth: auth::Authenticator::new(&config.auth),
            path_id: config.path_id,
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
            retry_after_seconds: config.retry_after_seconds,
            draining: draining.clone(),
            auth_failures: refusal::AuthFailures::new(),
            journal,
        });
        tcb_telemetry::metrics::ingress_registered();
        let path = if config.path == "/" {
            String::new()
        } else {
            config.path.clone()
        };
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap_fn(|req, srv| {
                    let span = handlers::request_span(&req);
                    let response = {
                        let _entered = span.enter();
                        actix_web::dev::Service::call(srv, req)
                    };
                    async move {
                        let response = response.instrument(span.clone()).await?;
                        let status = response.status().as_u16();
                        tcb_telemetry::spans::http_status(&span, status, true);
                        tcb_telemetry::metrics::ingress_request(status);
                        let _entered = span.enter();
                        refusal::observe(&response);
                        Ok(response)
                    }
                })
                .configure(|cfg| handlers::routes(cfg, &path))
        })
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout_seconds)
        .client_request_timeout(Duration::from_millis(config.request_head_timeout_ms))
        .client_disconnect_timeout(Duration::from_secs(1))
        .keep_alive(match config.keep_alive_seconds {
            0 => actix_web::http::KeepAlive::Disabled,
            s => actix_web::http::KeepAlive::Timeout(Duration::from_secs(s)),
        })
        .tls_handshake_timeout(Duration::from_millis(config.tls_handshake_timeout_ms));
        let workers = config
            .http_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        server = server
            .workers(workers)
            // Per worker: the configured total shared out.
            .max_connections(config.max_connections.div_ceil(workers).max(1))
            // TLS handshakes in progress at once per worker (actix's default is 256): silent
            // sockets each hold one for up to the handshake timeout.
            .max_connection_rate(1024);
        let server = match tls {
            Some(tls) => server.bind_rustls_0_23(config.listen, tls.config),
            None => server.bind(config.listen),
        }
        .map_err(|source| IngressError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = server.addrs().first().copied().unwrap_or(config.listen);
        let server = server.run();
        let handle = server.handle();
        Ok(Self {
            local_addr,
            handle,
            draining,
            server: tokio::spawn(server),
            certificate_watch,
        })
    }

    /// Set when the ingress starts draining; `/readyz` goes 503 from then on.
    pub fn draining(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// Graceful stop: new requests get 503 at once, in-flight ones finish (up to the shutdown
    /// timeout), then the listener closes.
    pub async fn stop(self) {
        self.draining.store(true, Ordering::SeqCst);
        self.handle.stop(true).await;
        let _ = self.server.await;
        if let Some(w) = self.certificate_watch {
            w.abort();
        }
    }
}
