//! Client of Tradecloud's order API.
//!
//! * API v2: `GET /v2/authentication/login` with Basic credentials answers with the tokens in the
//!   response headers `Set-Authorization` and `Set-Refresh-Token`; requests then carry
//!   `Authorization: Bearer <access>`. On a 401 the client refreshes (`GET
//!   /v2/authentication/refresh` with `Refresh-Token`, single use) or logs in again, and retries once.
//! * Legacy API v1: `GET /api/v1/purchaseOrder/{legacyOrderId}` with Basic auth on every request.
//! * At most `max_requests_per_second` requests (all kinds together; Tradecloud allows 10).
//!
//! Errors say whether a retry can help ([`TradecloudError::is_transient`]); retrying with back-off is
//! the caller's (the worker's) job, so it can also pause consumption meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tracing::Instrument;

/// The `[worker.tradecloud]` section.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TradecloudConfig {
    /// API v2 base URL: `https://api.tradecloud1.com` (production),
    /// `https://api.accp.tradecloud1.com` (acceptance), `https://api.test.tradecloud1.com` (test).
    pub base_url: String,
    /// E-mail of the Tradecloud user with the `integration` role.
    pub email: String,
    #[serde(serialize_with = "tcb_telemetry::redact::secret")]
    pub password: SecretString,
    /// Legacy API v1 base URL (`https://tradecloud.nl`, `https://accp.tradecloud.nl`, ...), for
    /// companies whose webhook sends legacy order ids. Unset: legacy triggers are dead-lettered.
    #[serde(default)]
    pub legacy_base_url: Option<String>,
    /// Legacy API v1 user name (Basic auth); defaults to `email`.
    #[serde(default)]
    pub legacy_username: Option<String>,
    /// Legacy API v1 password; defaults to `password`.
    #[serde(default, serialize_with = "tcb_telemetry::redact::optional_secret")]
    pub legacy_password: Option<SecretString>,
    /// Most requests per second to Tradecloud, all kinds together, for the whole deployment: a
    /// worker paces itself at its share (on Kafka, the share of the triggers topic's partitions it
    /// holds), 10% below it for jitter. Tradecloud allows 10.
    #[serde(default = "default_rate")]
    pub max_requests_per_second: u32,
    /// Requests to Tradecloud in flight at once from one worker (Tradecloud asks for 1).
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: u32,
    /// Timeout of one HTTP request.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// Extra CA certificate (PEM) to trust, for a test stand-in with its own CA.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_rate() -> u32 {
    10
}
fn default_concurrency() -> u32 {
    1
}
fn default_timeout() -> u64 {
    10_000
}

/// The crate's result.
pub type Result<T, E = TradecloudError> = std::result::Result<T, E>;

impl TradecloudConfig {
    /// Every problem of the section, each naming its key (relative to `worker.tradecloud`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (key, url) in [
            ("base_url", Some(&self.base_url)),
            ("legacy_base_url", self.legacy_base_url.as_ref()),
        ] {
            if let Some(url) = url
                && let Err(e) = check_url(url)
            {
                problems.push((key.to_owned(), e));
            }
        }
        if self.email.trim().is_empty() {
            problems.push(("email".to_owned(), "must not be empty".to_owned()));
        }
        if self.password.expose_secret().is_empty() {
            problems.push(("password".to_owned(), "must not be empty".to_owned()));
        }
        if self.max_requests_per_second == 0 {
            problems.push((
                "max_requests_per_second".to_owned(),
                "must be at least 1".to_owned(),
            ));
        }
        if !(1..=64).contains(&self.max_concurrent_requests) {
            problems.push((
                "max_concurrent_requests".to_owned(),
                "must be 1 to 64".to_owned(),
            ));
        }
        if self.request_timeout_ms == 0 {
            problems.push((
                "request_timeout_ms".to_owned(),
                "must be at least 1".to_owned(),
            ));
        }
        problems
    }
}

/// An http(s) URL with a host and no credentials, query or fragment.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err("must be an https:// (or http://) URL".to_owned());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not hold credentials (use email and password)".to_owned());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(())
}

/// What went wrong talking to Tradecloud. Never carries a credential or token.
#[derive(Debug, thiserror::Error)]
pub enum TradecloudError {
    #[error("order {0} not found at Tradecloud")]
    NotFound(String),
    #[error("Tradecloud refused the credentials ({0}); check worker.tradecloud.email/password")]
    Unauthorized(&'static str),
    #[error(
        "Tradecloud forbids {0} (403): the user needs the integration role for this company's orders"
    )]
    Forbidden(&'static str),
    #[error("Tradecloud answered {status} for {what}")]
    Status {
        status: u16,
        what: String,
        /// The answer's `Retry-After`, in seconds, when it had one.
        retry_after: Option<Duration>,
    },
    #[error("request to Tradecloud failed: {context}")]
    Request {
        context: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("legacy orders cannot be fetched: worker.tradecloud.legacy_base_url is not set")]
    LegacyNotConfigured,
    #[error("worker.tradecloud: {0}")]
    Config(String),
}

impl TradecloudError {
    /// Whether the same request can succeed later: 5xx, 429, timeouts, connection errors, and
    /// refused credentials (an operator can fix those without losing the trigger).
    pub fn is_transient(&self) -> bool {
        match self {
            TradecloudError::NotFound(_) | TradecloudError::LegacyNotConfigured => false,
            TradecloudError::Status { status, .. } => {
                *status == 429 || *status >= 500 || *status == 408
            }
            TradecloudError::Unauthorized(_)
            | TradecloudError::Forbidden(_)
            | TradecloudError::Request { .. }
            | TradecloudError::Config(_) => true,
        }
    }
}

#[derive(Clone)]
struct Tokens {
    access: SecretString,
    refresh: Option<SecretString>,
}

/// The client. Cheap to clone; clones share tokens and the rate limit.
#[derive(Clone)]
pub struct TradecloudClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    email: String,
    password: SecretString,
    legacy_base_url: Option<String>,
    legacy_basic: String,
    tokens: Mutex<Option<Tokens>>,
    /// When the last login was refused (cleared by a successful one).
    login_refused_at: std::sync::Mutex<Option<std::time::Instant>>,
    pacer: Pacer,
    in_flight: tokio::sync::Semaphore,
}

/// How long a refused login is not tried again.
const LOGIN_REFUSAL_HOLD: Duration = Duration::from_secs(4);

/// The part of the rate left unused: requests spaced evenly at the sender can arrive bunched (network
/// and scheduling jitter), and several workers' paces are not aligned, so pacing at exactly the
/// limit can put 11 requests into one of Tradecloud's seconds (seen with two workers at 5/s each).
const PACE_HEADROOM: f64 = 0.1;

/// Spaces requests evenly: at most one per interval, no bursts. The interval can change at run
/// time (a worker's share of the deployment's rate changes at every Kafka rebalance).
struct Pacer {
    rate: f64,
    interval_nanos: AtomicU64,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        let pacer = Self {
            rate,
            interval_nanos: AtomicU64::new(0),
            next: Mutex::new(tokio::time::Instant::now()),
        };
        pacer.set_share(1.0);
        pacer
    }

    /// Paces at `share` (0 to 1) of the configured rate, less [`PACE_HEADROOM`]; 0 stops
    /// requests until it changes.
    fn set_share(&self, share: f64) {
        let per_second = self.rate * share.clamp(0.0, 1.0) * (1.0 - PACE_HEADROOM);
        let nanos = if per_second > 0.0 {
            (1e9 / per_second) as u64
        } else {
            u64::MAX
        };
        self.interval_nanos.store(nanos, Ordering::Relaxed);
    }

    async fn until_ready(&self) {
        // Waiters queue on the lock, so each takes the next slot in turn.
        let mut next = self.next.lock().await;
        loop {
            let nanos = self.interval_nanos.load(Ordering::Relaxed);
            let now = tokio::time::Instant::now();
            if nanos == u64::MAX {
                // A share of 0: look again every second.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            if *next <= now {
                *next = now + Duration::from_nanos(nanos);
                return;
            }
            tokio::time::sleep_until((*next).min(now + Duration::from_secs(1))).await;
        }
    }
}

impl TradecloudClient {
    pub fn new(config: &TradecloudConfig) -> Result<Self, TradecloudError> {
        tcb_telemetry::metrics::tradecloud_registered();
        if let Some((key, message)) = config.validate().into_iter().next() {
            return Err(TradecloudError::Config(format!("{key}: {message}")));
        }

        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("tradecloud-bridge/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| TradecloudError::Config(format!("ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| TradecloudError::Config(format!("ca_file {}: {e}", ca.display())))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| TradecloudError::Config(format!("HTTP client: {e}")))?;
        let legacy_user = config.legacy_username.as_deref().unwrap_or(&config.email);
        let legacy_password = config.legacy_password.as_ref().unwrap_or(&config.password);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url: config.base_url.trim_end_matches('/').to_owned(),
                email: config.email.clone(),
                password: config.password.clone(),
                legacy_base_url: config
                    .legacy_base_url
                    .as_ref()
                    .map(|u| u.trim_end_matches('/').to_owned()),
                legacy_basic: format!(
                    "Basic {}",
                    STANDARD.encode(format!("{legacy_user}:{}", legacy_password.expose_secret()))
                ),
                tokens: Mutex::new(None),
                login_refused_at: std::sync::Mutex::new(None),
                pacer: Pacer::new(f64::from(config.max_requests_per_second)),
                in_flight: tokio::sync::Semaphore::new(config.max_concurrent_requests as usize),
            }),
        })
    }

    /// `GET /v2/order/{id}`: the order's JSON bytes as Tradecloud sent them.
    pub async fn get_order(&self, order_id: &str) -> Result<Vec<u8>, TradecloudError> {
        let url = format!(
            "{}/v2/order/{}",
            self.inner.base_url,
            encode_segment(order_id)
        );
        let mut tokens = self.tokens().await?;
        let mut renewed = false;
        loop {
            let response = self
                .send(
                    "order",
                    self.inner
                        .http
                        .get(&url)
                        .bearer_auth(tokens.access.expose_secret()),
                )
                .await?;
            match response.status() {
                StatusCode::OK => return body(response).await,
                StatusCode::UNAUTHORIZED if !renewed => {
                    tokens = self.renew(&tokens).await?;
                    renewed = true;
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(TradecloudError::Unauthorized(
                        "order request after a fresh login",
                    ));
                }
                StatusCode::NOT_FOUND => {
                    return Err(TradecloudError::NotFound(order_id.to_owned()));
                }
                StatusCode::FORBIDDEN => return Err(TradecloudError::Forbidden("GET order")),
                _ => return Err(status_error(&response, "GET order")),
            }
        }
    }

    /// `GET /api/v1/purchaseOrder/{legacyOrderId}` on the legacy platform.
    pub async fn get_legacy_order(
        &self,
        legacy_order_id: &str,
    ) -> Result<Vec<u8>, TradecloudError> {
        let base = self
            .inner
            .legacy_base_url
            .as_deref()
            .ok_or(TradecloudError::LegacyNotConfigured)?;
        let url = format!(
            "{base}/api/v1/purchaseOrder/{}",
            encode_segment(legacy_order_id)
        );
        let response = self
            .send(
                "legacy_order",
                self.inner
                    .http
                    .get(&url)
                    .header(AUTHORIZATION, &self.inner.legacy_basic),
            )
            .await?;
        match response.status() {
            StatusCode::OK => body(response).await,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(TradecloudError::Unauthorized("legacy API v1"))
            }
            StatusCode::NOT_FOUND => Err(TradecloudError::NotFound(legacy_order_id.to_owned())),
            _ => Err(status_error(&response, "GET legacy purchase order")),
        }
    }

    /// Paces this client at `share` (0 to 1) of `max_requests_per_second`.
    pub fn set_rate_share(&self, share: f64) {
        self.inner.pacer.set_share(share);
    }

    /// One request of `kind` (a label of `tcb_tradecloud_requests_total`), within the concurrency
    /// bound and the pace.
    async fn send(
        &self,
        kind: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, TradecloudError> {
        let _slot = self
            .inner
            .in_flight
            .acquire()
            .await
            .map_err(|_| TradecloudError::Config("the client is closed".to_owned()))?;
        let waiting = std::time::Instant::now();
        self.inner.pacer.until_ready().await;
        tcb_telemetry::metrics::tradecloud_paced(waiting.elapsed());
        let (client, request) = request.build_split();
        let mut request = request.map_err(request_error)?;
        let span = request_span(kind, &request);
        // Tradecloud (and any proxy in between) can continue the trace.
        tcb_telemetry::otel::inject(&span, |name, value| {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
                request.headers_mut().insert(name, v);
            }
        });
        let started = std::time::Instant::now();
        let result = client.execute(request).instrument(span.clone()).await;
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        match status {
            Some(status) => tcb_telemetry::spans::http_status(&span, status, false),
            None => tcb_telemetry::spans::http_failed(
                &span,
                result.as_ref().err().map_or("error", error_type),
            ),
        }
        tcb_telemetry::metrics::tradecloud_request(kind, status, started.elapsed());
        result.map_err(request_error)
    }

    /// The current tokens, logging in first when there are none.
    async fn tokens(&self) -> Result<Tokens, TradecloudError> {
        let mut guard = self.inner.tokens.lock().await;
        if let Some(t) = guard.as_ref() {
            return Ok(t.clone());
        }
        let fresh = self.login().await?;
        *guard = Some(fresh.clone());
        Ok(fresh)
    }

    /// After a 401 with `stale`: refresh once (or log in), unless another task already did.
    async fn renew(&self, stale: &Tokens) -> Result<Tokens, TradecloudError> {
        let mut guard = self.inner.tokens.lock().await;
        if let Some(current) = guard.as_ref()
            && current.access.expose_secret() != stale.access.expose_secret()
        {
            return Ok(current.clone());
        }
        let fresh = match &stale.refresh {
            Some(refresh) => match self.refresh(refresh).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!(error = %e, "token refresh failed; logging in again");
                    self.login().await?
                }
            },
            None => self.login().await?,
        };
        *guard = Some(fresh.clone());
        Ok(fresh)
    }

    /// Logs in, unless a login was refused moments ago: then it fails at once, so that many
    /// requests waiting for tokens do not each try the refused credentials (a lock-out risk).
    async fn login(&self) -> Result<Tokens, TradecloudError> {
        if let Ok(refused) = self.inner.login_refused_at.lock()
            && refused.is_some_and(|at| at.elapsed() < LOGIN_REFUSAL_HOLD)
        {
            return Err(TradecloudError::Unauthorized(
                "login (refused moments ago; not tried again yet)",
            ));
        }
        let result = self.try_login().await;
        if let Ok(mut refused) = self.inner.login_refused_at.lock() {
            *refused = match &result {
                Err(TradecloudError::Unauthorized(_)) => Some(std::time::Instant::now()),
                _ => None,
            };
        }
        result
    }

    async fn try_login(&self) -> Result<Tokens, TradecloudError> {
        let url = format!("{}/v2/authentication/login", self.inner.base_url);
        let response = self
            .send(
                "login",
                self.inner
                    .http
                    .get(&url)
                    .basic_auth(&self.inner.email, Some(self.inner.password.expose_secret())),
            )
            .await?;
        match response.status() {
            StatusCode::OK => tokens_from(response.headers(), "login"),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(TradecloudError::Unauthorized("login"))
            }
            status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                Err(status_error(&response, "login"))
            }
            // Any other answer means the login itself is wrong (e.g. a base URL that is not the
            // API): no order can be fetched, so it is a configuration problem, not one order's.
            status => Err(TradecloudError::Config(format!(
                "login answered {status}; check worker.tradecloud.base_url"
            ))),
        }
    }

    async fn refresh(&self, refresh: &SecretString) -> Result<Tokens, TradecloudError> {
        let url = format!("{}/v2/authentication/refresh", self.inner.base_url);
        let response = self
            .send(
                "refresh",
                self.inner
                    .http
                    .get(&url)
                    .header("Refresh-Token", refresh.expose_secret()),
            )
            .await?;
        match response.status() {
            StatusCode::OK => tokens_from(response.headers(), "refresh"),
            _ => Err(status_error(&response, "token refresh")),
        }
    }
}

fn tokens_from(headers: &HeaderMap, what: &str) -> Result<Tokens, TradecloudError> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_start_matches("Bearer ").to_owned())
            .filter(|v| !v.is_empty())
    };
    let access = get("Set-Authorization").ok_or_else(|| {
        TradecloudError::Config(format!(
            "{what} answered without a Set-Authorization header; check worker.tradecloud.base_url"
        ))
    })?;
    Ok(Tokens {
        access: SecretString::from(access),
        refresh: get("Set-Refresh-Token").map(SecretString::from),
    })
}

/// An unexpected status, with the answer's `Retry-After` (seconds) when it has one.
fn status_error(response: &reqwest::Response, what: &str) -> TradecloudError {
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    TradecloudError::Status {
        status: response.status().as_u16(),
        what: what.to_owned(),
        retry_after,
    }
}

async fn body(response: reqwest::Response) -> Result<Vec<u8>, TradecloudError> {
    response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(request_error)
}

/// The client span of one request: `kind` names the URL's template.
fn request_span(kind: &'static str, request: &reqwest::Request) -> tracing::Span {
    let template = match kind {
        "order" => "/v2/order/{orderId}",
        "legacy_order" => "/api/v1/purchaseOrder/{id}",
        "login" => "/v2/authentication/login",
        "refresh" => "/v2/authentication/refresh",
        other => other,
    };
    let url = request.url();
    let mut shown = url.clone();
    shown.set_query(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    tcb_telemetry::spans::tradecloud_request(
        kind,
        request.method().as_str(),
        template,
        shown.as_str(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0),
    )
}

/// `error.type` of a request that got no answer.
fn error_type(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    }
}

fn request_error(source: reqwest::Error) -> TradecloudError {
    TradecloudError::Request {
        context: describe(&source),
        source,
    }
}

/// An error's description without the URL's query (none carries secrets, but keep logs short).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    match e.url() {
        Some(url) => format!(
            "{kind}: {}{}",
            url.origin().ascii_serialization(),
            url.path()
        ),
        None => kind.to_owned(),
    }
}

/// Ids are validated at the ingress (no control characters, not dots only) but may hold any other
/// character: everything outside `[A-Za-z0-9._:-]` is percent-encoded, so an id stays one path
/// segment (`a/../b` becomes `a%2F..%2Fb`).
pub(crate) fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_stays_one_path_segment() {
        assert_eq!(encode_segment("a/../b"), "a%2F..%2Fb");
        assert_eq!(encode_segment("a?b#c d%"), "a%3Fb%23c%20d%25");
        assert_eq!(encode_segment("PO-1.2:3_x"), "PO-1.2:3_x");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }
}
