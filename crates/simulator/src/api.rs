//! The Tradecloud API stand-in.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::orders;

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// API v2 login e-mail and password.
    pub email: String,
    pub password: String,
    /// Legacy API v1 Basic credentials.
    pub legacy_username: String,
    pub legacy_password: String,
    /// Requests per rolling second before 429 (Tradecloud: 10).
    pub rate_limit_per_second: usize,
    /// The `Retry-After` (seconds) of a 429 for exceeding that limit. Tradecloud's documents do
    /// not say whether it sends one, so by default none; injected 429s can carry one.
    pub rate_limit_retry_after: Option<u64>,
    /// Lifetime of an access token (Tradecloud: 1 hour).
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (Tradecloud: 24 hours); a refresh with an older one is 401.
    pub refresh_token_ttl: Duration,
    /// Serve HTTPS (TLS 1.2 and 1.3) with a certificate of a CA made at start
    /// ([`Simulator::ca_pem`]), as Tradecloud serves only HTTPS.
    pub tls: bool,
    /// The customer's identity provider (OAuth webhook auth), served beside the API.
    pub idp: crate::idp::IdpConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            email: "integration@example.com".to_owned(),
            password: "simulator-password".to_owned(),
            legacy_username: "legacy-user".to_owned(),
            legacy_password: "legacy-password".to_owned(),
            rate_limit_per_second: 10,
            rate_limit_retry_after: None,
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(24 * 3600),
            tls: false,
            idp: crate::idp::IdpConfig::default(),
        }
    }
}

/// How many order requests' trace context the stand-in keeps.
pub const TRACES_KEPT: usize = 1000;

/// The trace context one order request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSeen {
    pub order_id: String,
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// What the stand-in has served, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub logins: u64,
    pub refreshes: u64,
    pub order_fetches: u64,
    pub legacy_fetches: u64,
    pub rate_limited: u64,
    pub unauthorized: u64,
    pub injected_failures: u64,
    /// Answers held back by an injected delay.
    pub slow_answers: u64,
    /// Refreshes refused because the refresh token had expired.
    pub expired_refreshes: u64,
    /// The most requests for one order the API was answering at once (Tradecloud's clients
    /// should have at most one in flight per order).
    pub max_in_flight_per_order: u64,
    /// The most requests (of any kind) in any rolling second, including refused ones.
    pub max_per_second: u64,
}

#[derive(Default)]
struct Counters {
    logins: AtomicU64,
    refreshes: AtomicU64,
    order_fetches: AtomicU64,
    legacy_fetches: AtomicU64,
    rate_limited: AtomicU64,
    unauthorized: AtomicU64,
    injected_failures: AtomicU64,
    slow_answers: AtomicU64,
    expired_refreshes: AtomicU64,
    max_in_flight_per_order: AtomicU64,
    max_per_second: AtomicU64,
}

/// Something the real API does now and then, injected into the next order requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// An error answer: 500, 502, 503, 504 (Tradecloud's gateway and service errors), 403 (the
    /// integration role is missing), 429 (over the rate limit), each with `Retry-After`
    /// (seconds) when given.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// The answer comes, but only after this long (Tradecloud times requests out after 5 s on
    /// its side; a client timeout shorter than that sees a timeout).
    Slow(Duration),
}

struct State {
    config: SimConfig,
    idp: crate::idp::Idp,
    access: Mutex<HashMap<String, Instant>>,
    /// Refresh tokens and when each expires.
    refresh: Mutex<HashMap<String, Instant>>,
    versions: Mutex<HashMap<String, u64>>,
    window: Mutex<VecDeque<Instant>>,
    /// Order requests being answered now, per order.
    in_flight: Mutex<HashMap<String, u64>>,
    /// Faults for the next order requests, in order, each with how many requests it has left.
    faults: Mutex<VecDeque<(Fault, u32)>>,
    /// Orders that answer this status for ever (until healed).
    failing: Mutex<HashMap<String, u16>>,
    /// Every request answers 503 (Tradecloud is down).
    down: AtomicBool,
    /// The integration user's credentials are revoked (logins 401) or its role is gone (403).
    revoked: AtomicBool,
    forbidden: AtomicBool,
    /// Every request seen in the last second (for `max_per_second`).
    seen: Mutex<VecDeque<Instant>>,
    /// The trace context of the last [`TRACES_KEPT`] order requests, in order.
    traceparents: Mutex<VecDeque<TraceSeen>>,
    counters: Counters,
}

/// A running stand-in. Dropping it does not stop it; call [`Simulator::stop`].
pub struct Simulator {
    pub addr: SocketAddr,
    /// The PEM of the CA whose certificate the API serves, when it serves HTTPS.
    ca_pem: Option<String>,
    state: Arc<State>,
    handle: ServerHandle,
}

impl Simulator {
    /// Starts on `addr` (port 0 picks a free port).
    pub fn start(config: SimConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let state = Arc::new(State {
            idp: crate::idp::Idp::new(config.idp.clone()),
            config,
            access: Mutex::new(HashMap::new()),
            refresh: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            window: Mutex::new(VecDeque::new()),
            in_flight: Mutex::new(HashMap::new()),
            faults: Mutex::new(VecDeque::new()),
            failing: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            forbidden: AtomicBool::new(false),
            seen: Mutex::new(VecDeque::new()),
            traceparents: Mutex::new(VecDeque::new()),
            counters: Counters::default(),
        });
        let tls = if state.config.tls {
            Some(tls_config().map_err(std::io::Error::other)?)
        } else {
            None
        };
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v2/authentication/login", web::get().to(login))
                .route("/v2/authentication/refresh", web::get().to(refresh))
                .route("/v2/authentication/logout", web::post().to(logout))
                .route("/v2/order/{id}", web::get().to(get_order))
                .route(
                    "/api/v1/purchaseOrder/{id}",
                    web::get().to(get_legacy_order),
                )
                .route("/sim/orders/{id}/bump", web::post().to(bump))
                .route("/sim/orders/{id}/fail/{status}", web::post().to(fail))
                .route("/sim/orders/{id}/heal", web::post().to(heal))
                .route("/sim/stats", web::get().to(stats))
                .route("/sim/faults", web::post().to(inject))
                .route("/{tenant}/discovery/v2.0/keys", web::get().to(idp_keys))
                .route("/{tenant}/oauth2/v2.0/token", web::post().to(idp_token))
        })
        .workers(2)
        .disable_signals();
        let (server, ca_pem) = match tls {
            Some((config, ca_pem)) => (server.bind_rustls_0_23(addr, config)?, Some(ca_pem)),
            None => (server.bind(addr)?, None),
        };
        let addr = server.addrs().first().copied().unwrap_or(addr);
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            addr,
            ca_pem,
            state,
            handle,
        })
    }

    /// `http://addr`, or `https://127.0.0.1:port` when it serves HTTPS: the API base URL.
    pub fn base_url(&self) -> String {
        match self.ca_pem {
            Some(_) => format!("https://127.0.0.1:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// The PEM of the CA to trust for HTTPS (`worker.tradecloud.ca_file`), when it serves HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The identity provider (keys, rotation, minting tokens for tests).
    pub fn idp(&self) -> &crate::idp::Idp {
        &self.state.idp
    }

    /// The `iss` of the provider's tokens.
    pub fn idp_issuer(&self) -> String {
        self.state.idp.issuer(&self.base_url())
    }

    /// The provider's JWKS URL (`ingress.auth.jwks_url`).
    pub fn idp_jwks_url(&self) -> String {
        format!(
            "{}/{}/discovery/v2.0/keys",
            self.base_url(),
            self.state.idp.config.tenant
        )
    }

    /// The provider's token endpoint (client credentials).
    pub fn idp_token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.base_url(),
            self.state.idp.config.tenant
        )
    }

    /// The order changes: its version goes up by one. Returns the new version.
    pub fn bump(&self, order_id: &str) -> u64 {
        self.state.bump(order_id)
    }

    /// The version `GET /v2/order/{id}` serves now.
    pub fn version(&self, order_id: &str) -> u64 {
        self.state.version(order_id)
    }

    /// The next `n` order requests answer 503 (replacing any fault injected before).
    pub fn fail_next(&self, n: u32) {
        self.clear_faults();
        self.inject(
            Fault::Status {
                status: 503,
                retry_after: None,
            },
            n,
        );
    }

    /// The next `n` order requests meet `fault` (after any injected before).
    pub fn inject(&self, fault: Fault, n: u32) {
        self.state.inject(fault, n);
    }

    /// No injected fault is left.
    pub fn clear_faults(&self) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Every refresh token expires now (the next refresh gets 401, as after 24 hours).
    pub fn expire_refresh_tokens(&self) {
        if let Ok(mut r) = self.state.refresh.lock() {
            for expiry in r.values_mut() {
                *expiry = Instant::now();
            }
        }
    }

    /// `GET /v2/order/{order_id}` answers `status` for ever (until [`Simulator::heal_order`]).
    pub fn fail_order(&self, order_id: &str, status: u16) {
        if let Ok(mut f) = self.state.failing.lock() {
            f.insert(order_id.to_owned(), status);
        }
    }

    pub fn heal_order(&self, order_id: &str) {
        if let Ok(mut f) = self.state.failing.lock() {
            f.remove(order_id);
        }
    }

    /// Tradecloud down (every request answers 503) or back.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// The integration user's credentials revoked (logins and tokens refused) or restored.
    pub fn set_credentials_revoked(&self, revoked: bool) {
        self.state.revoked.store(revoked, Ordering::SeqCst);
        if revoked {
            self.expire_access_tokens();
        }
    }

    /// The integration role taken away (order requests answer 403) or given back.
    pub fn set_forbidden(&self, forbidden: bool) {
        self.state.forbidden.store(forbidden, Ordering::SeqCst);
    }

    /// Every access token expires now (the next order request gets 401).
    pub fn expire_access_tokens(&self) {
        if let Ok(mut a) = self.state.access.lock() {
            a.clear();
        }
    }

    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// The W3C trace context the last order requests carried, in order (requests without a
    /// `traceparent` are left out; at most [`TRACES_KEPT`]).
    pub fn traceparents(&self) -> Vec<TraceSeen> {
        self.state
            .traceparents
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

impl State {
    fn inject(&self, fault: Fault, n: u32) {
        if n > 0 {
            let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            faults.push_back((fault, n));
        }
    }

    /// The fault the next order request meets, if any.
    fn next_fault(&self) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let (fault, left) = faults.front_mut()?;
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            faults.pop_front();
        }
        Some(fault)
    }

    fn bump(&self, order_id: &str) -> u64 {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let e = v.entry(order_id.to_owned()).or_insert(1);
        *e += 1;
        *e
    }

    fn version(&self, order_id: &str) -> u64 {
        let v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        v.get(order_id).copied().unwrap_or(1)
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            logins: c.logins.load(Ordering::SeqCst),
            refreshes: c.refreshes.load(Ordering::SeqCst),
            order_fetches: c.order_fetches.load(Ordering::SeqCst),
            legacy_fetches: c.legacy_fetches.load(Ordering::SeqCst),
            rate_limited: c.rate_limited.load(Ordering::SeqCst),
            unauthorized: c.unauthorized.load(Ordering::SeqCst),
            injected_failures: c.injected_failures.load(Ordering::SeqCst),
            slow_answers: c.slow_answers.load(Ordering::SeqCst),
            expired_refreshes: c.expired_refreshes.load(Ordering::SeqCst),
            max_in_flight_per_order: c.max_in_flight_per_order.load(Ordering::SeqCst),
            max_per_second: c.max_per_second.load(Ordering::SeqCst),
        }
    }

    /// Records one request for `max_per_second`.
    fn saw(&self) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while seen
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            seen.pop_front();
        }
        seen.push_back(now);
        self.counters
            .max_per_second
            .fetch_max(seen.len() as u64, Ordering::SeqCst);
    }

    /// Counts the request; `false` when it is over the rolling one-second limit.
    fn admit(&self) -> bool {
        self.saw();
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            w.pop_front();
        }
        if w.len() >= self.config.rate_limit_per_second {
            self.counters.rate_limited.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        w.push_back(now);
        true
    }

    fn issue_tokens(&self) -> HttpResponse {
        let access = format!("access-{}", uuid::Uuid::new_v4());
        let refresh = format!("refresh-{}", uuid::Uuid::new_v4());
        self.access
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                access.clone(),
                Instant::now() + self.config.access_token_ttl,
            );
        self.refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                refresh.clone(),
                Instant::now() + self.config.refresh_token_ttl,
            );
        HttpResponse::Ok()
            .insert_header(("Set-Authorization", access))
            .insert_header(("Set-Refresh-Token", refresh))
            .json(json!({"status": "ok"}))
    }

    fn bearer_valid(&self, req: &HttpRequest) -> bool {
        let Some(token) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let access = self.access.lock().unwrap_or_else(|p| p.into_inner());
        access.get(token).is_some_and(|exp| *exp > Instant::now())
    }
}

fn basic_matches(req: &HttpRequest, user: &str, password: &str) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v.trim()).ok())
        .is_some_and(|given| given == format!("{user}:{password}").as_bytes())
}

/// The rate limit, then the credentials: the answer that refuses the request, if any.
fn gate(state: &State, authorized: bool) -> Option<HttpResponse> {
    if !state.admit() {
        Some(too_many(state))
    } else if state.down.load(Ordering::SeqCst) {
        Some(HttpResponse::ServiceUnavailable().json(json!({"message": "down for maintenance"})))
    } else if !authorized || state.revoked.load(Ordering::SeqCst) {
        Some(unauthorized(state))
    } else {
        None
    }
}

fn too_many(state: &State) -> HttpResponse {
    let mut answer = HttpResponse::TooManyRequests();
    if let Some(seconds) = state.config.rate_limit_retry_after {
        answer.insert_header((header::RETRY_AFTER, seconds.to_string()));
    }
    answer.json(json!({"message": "rate limit exceeded"}))
}

fn unauthorized(state: &State) -> HttpResponse {
    state.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Unauthorized().json(json!({"message": "unauthorized"}))
}

async fn login(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !state.admit() {
        return too_many(&state);
    }
    if state.down.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().json(json!({"message": "down for maintenance"}));
    }
    if !basic_matches(&req, &state.config.email, &state.config.password)
        || state.revoked.load(Ordering::SeqCst)
    {
        return unauthorized(&state);
    }
    state.counters.logins.fetch_add(1, Ordering::SeqCst);
    state.issue_tokens()
}

async fn refresh(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !state.admit() {
        return too_many(&state);
    }
    if req.headers().contains_key(header::AUTHORIZATION) {
        return HttpResponse::BadRequest()
            .json(json!({"message": "refresh takes only Refresh-Token"}));
    }
    if state.revoked.load(Ordering::SeqCst) {
        return unauthorized(&state);
    }
    let token = req
        .headers()
        .get("Refresh-Token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Single use: a refresh token is gone once used.
    let expiry = state
        .refresh
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(token);
    match expiry {
        None => return unauthorized(&state),
        Some(expiry) if expiry <= Instant::now() => {
            state
                .counters
                .expired_refreshes
                .fetch_add(1, Ordering::SeqCst);
            return unauthorized(&state);
        }
        Some(_) => {}
    }
    state.counters.refreshes.fetch_add(1, Ordering::SeqCst);
    state.issue_tokens()
}

async fn logout(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if let Some(token) = req
        .headers()
        .get("Refresh-Token")
        .and_then(|v| v.to_str().ok())
    {
        state
            .refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }
    HttpResponse::Ok().finish()
}

async fn get_order(
    req: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(traceparent) = header("traceparent")
        && let Ok(mut t) = state.traceparents.lock()
    {
        if t.len() >= TRACES_KEPT {
            t.pop_front();
        }
        t.push_back(TraceSeen {
            order_id: id.as_str().to_owned(),
            traceparent,
            tracestate: header("tracestate"),
        });
    }
    if let Some(refused) = gate(&state, state.bearer_valid(&req)) {
        return refused;
    }
    let _answering = InFlight::start(&state, id.as_str());
    match state.next_fault() {
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            state
                .counters
                .injected_failures
                .fetch_add(1, Ordering::SeqCst);
            let status = actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
            let mut answer = HttpResponse::build(status);
            if let Some(seconds) = retry_after {
                answer.insert_header((header::RETRY_AFTER, seconds.to_string()));
            }
            return answer.json(json!({"message": "injected failure"}));
        }
        Some(Fault::Slow(delay)) => {
            state.counters.slow_answers.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
        }
        None => {}
    }
    if state.forbidden.load(Ordering::SeqCst) {
        return HttpResponse::Forbidden()
            .json(json!({"message": "the user lacks the integration role"}));
    }
    let failing = state
        .failing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id.as_str())
        .copied();
    if let Some(status) = failing {
        let status = actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut answer = HttpResponse::build(status);
        if status.as_u16() == 429 || status.as_u16() == 503 {
            answer.insert_header((header::RETRY_AFTER, "2"));
        }
        return answer.json(json!({"message": "this order fails"}));
    }
    if id.starts_with("missing") {
        return HttpResponse::NotFound().json(json!({"message": "order not found"}));
    }
    state.counters.order_fetches.fetch_add(1, Ordering::SeqCst);
    json_answer(&orders::order(&id, state.version(&id)))
}

async fn get_legacy_order(
    req: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
) -> HttpResponse {
    let authorized = basic_matches(
        &req,
        &state.config.legacy_username,
        &state.config.legacy_password,
    );
    if let Some(refused) = gate(&state, authorized) {
        return refused;
    }
    if id.starts_with("missing") {
        return HttpResponse::NotFound().json(json!({"message": "purchase order not found"}));
    }
    state.counters.legacy_fetches.fetch_add(1, Ordering::SeqCst);
    json_answer(&orders::legacy_order(&id))
}

async fn bump(state: web::Data<State>, id: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"id": id.as_str(), "version": state.bump(&id)}))
}

/// `POST /sim/orders/{id}/fail/{status}`: the order answers `status` (400 to 599) until healed
/// (for tests and demos driving a separate simulator process).
async fn fail(state: web::Data<State>, path: web::Path<(String, u16)>) -> HttpResponse {
    let (id, status) = path.into_inner();
    if !(400..600).contains(&status) {
        return HttpResponse::BadRequest().json(json!({"error": "status must be 400 to 599"}));
    }
    if let Ok(mut f) = state.failing.lock() {
        f.insert(id.clone(), status);
    }
    HttpResponse::Ok().json(json!({"id": id, "fails_with": status}))
}

/// `POST /sim/orders/{id}/heal`: the order is served again.
async fn heal(state: web::Data<State>, id: web::Path<String>) -> HttpResponse {
    if let Ok(mut f) = state.failing.lock() {
        f.remove(id.as_str());
    }
    HttpResponse::Ok().json(json!({"id": id.as_str(), "fails_with": null}))
}

/// One order request being answered: counted in `in_flight` until dropped.
struct InFlight<'a> {
    state: &'a State,
    order_id: String,
}

impl<'a> InFlight<'a> {
    fn start(state: &'a State, order_id: &str) -> Self {
        let mut in_flight = state.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = in_flight.entry(order_id.to_owned()).or_insert(0);
        *n += 1;
        state
            .counters
            .max_in_flight_per_order
            .fetch_max(*n, Ordering::SeqCst);
        Self {
            state,
            order_id: order_id.to_owned(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&self.order_id) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.order_id);
            }
        }
    }
}

/// A documented body as JSON text, decimals as the documents write them.
fn json_answer(body: &tcb_model::json::Json) -> HttpResponse {
    match serde_json::to_string(body) {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/json")
            .body(text),
        Err(e) => HttpResponse::InternalServerError().json(json!({"message": e.to_string()})),
    }
}

/// `POST /sim/faults?count=N&status=S&retry_after=SECONDS` or `?count=N&delay_ms=MS`: the next
/// `N` order requests meet the fault (for a separate simulator process).
async fn inject(state: web::Data<State>, query: web::Query<FaultQuery>) -> HttpResponse {
    let fault = match (query.status, query.delay_ms) {
        (Some(status), None) if (400..600).contains(&status) => Fault::Status {
            status,
            retry_after: query.retry_after,
        },
        (None, Some(ms)) => Fault::Slow(Duration::from_millis(ms)),
        _ => {
            return HttpResponse::BadRequest()
                .json(json!({"error": "give either status (400 to 599) or delay_ms, and count"}));
        }
    };
    let count = query.count.unwrap_or(1);
    if count == 0 {
        return HttpResponse::BadRequest().json(json!({"error": "count must be at least 1"}));
    }
    state.inject(fault.clone(), count);
    HttpResponse::Ok().json(json!({"injected": fault, "count": count}))
}

#[derive(Debug, Deserialize)]
struct FaultQuery {
    count: Option<u32>,
    status: Option<u16>,
    retry_after: Option<u64>,
    delay_ms: Option<u64>,
}

/// A CA made now and a certificate for `127.0.0.1` and `localhost` it signs: the server's
/// rustls config and the CA's PEM.
fn tls_config() -> Result<(rustls::ServerConfig, String), String> {
    let err = |e: rcgen::Error| format!("simulator certificate: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Tradecloud simulator CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err)?;
    let leaf_key = rcgen::KeyPair::generate().map_err(err)?;
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(err)?
        .signed_by(&leaf_key, &ca)
        .map_err(err)?;
    let key = rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| format!("simulator key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| format!("simulator TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .map_err(|e| format!("simulator TLS: {e}"))?;
    Ok((config, ca.pem()))
}

async fn stats(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

fn tenant_known(state: &State, tenant: &str) -> bool {
    tenant == state.idp.config.tenant
}

async fn idp_keys(state: web::Data<State>, tenant: web::Path<String>) -> HttpResponse {
    if !tenant_known(&state, &tenant) {
        return HttpResponse::NotFound().json(json!({"error": "unknown tenant"}));
    }
    HttpResponse::Ok().json(state.idp.jwks())
}

async fn idp_token(
    req: HttpRequest,
    state: web::Data<State>,
    tenant: web::Path<String>,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    if !tenant_known(&state, &tenant) {
        return HttpResponse::NotFound().json(json!({"error": "unknown tenant"}));
    }
    let scheme = if state.config.tls { "https" } else { "http" };
    let base = format!("{scheme}://{}", req.connection_info().host());
    match state.idp.token_response(&base, &form) {
        Ok(token) => HttpResponse::Ok().json(token),
        Err(error) => HttpResponse::Unauthorized().json(error),
    }
}
