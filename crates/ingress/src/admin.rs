//! The admin listener, apart from the public one: `/healthz` (the process makes progress: no
//! [`Probe`] is wedged), `/readyz`, `/metrics` (Prometheus text format; `docs/metrics.md`).
//!
//! `/readyz` means what a load balancer needs of the process:
//! * a process with the webhook listener ([`Readiness::Webhooks`]) is ready once the broker has
//!   answered a readiness check (so a new pod in a rolling update takes traffic only when it can
//!   store triggers), and from then on until it starts draining. A later broker outage does not
//!   make it unready: it answers 503 with `Retry-After` (Tradecloud retries those), where an
//!   unready endpoint would give Tradecloud connection errors instead. The body still reports the
//!   broker and the worker.
//! * a worker-only process ([`Readiness::Worker`]) is ready when the broker is reachable and no
//!   [`Probe`] is unready (e.g. the worker paused behind a circuit breaker).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::json;
use tcb_bus::Publisher;
use tcb_telemetry::health::Probe;

use crate::IngressError;

/// How long a readiness probe waits for the broker.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// A started admin server.
pub struct Admin {
    pub local_addr: SocketAddr,
    handle: ServerHandle,
}

/// What `/readyz` answers for.
#[derive(Clone)]
pub enum Readiness {
    /// The process serves webhooks: ready until it drains (the ingress's draining flag).
    Webhooks { draining: Arc<AtomicBool> },
    /// A worker only: ready when the broker is reachable and no probe is unready.
    Worker,
}

struct Checks {
    publisher: Arc<dyn Publisher>,
    probes: Vec<Arc<dyn Probe>>,
    readiness: Readiness,
    /// The broker answered a readiness check at least once.
    connected_once: AtomicBool,
}

impl Admin {
    pub fn start(
        listen: SocketAddr,
        publisher: Arc<dyn Publisher>,
        probes: Vec<Arc<dyn Probe>>,
        readiness: Readiness,
        console: Option<Arc<crate::console::Console>>,
    ) -> Result<Self, IngressError> {
        let checks = web::Data::new(Checks {
            publisher,
            probes,
            readiness,
            connected_once: AtomicBool::new(false),
        });
        if tcb_telemetry::metrics::handle().is_none() {
            tracing::warn!("another metrics recorder is installed: /metrics stays empty");
        }
        let server = HttpServer::new(move || {
            App::new()
                .app_data(checks.clone())
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
                .configure(|cfg| {
                    if let Some(c) = &console {
                        crate::console::routes(cfg, c.clone());
                    }
                })
        })
        .workers(1)
        .disable_signals()
        .bind(listen)
        .map_err(|source| IngressError::Bind {
            addr: listen,
            source,
        })?;
        let local_addr = server.addrs().first().copied().unwrap_or(listen);
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self { local_addr, handle })
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

async fn healthz(checks: web::Data<Checks>) -> HttpResponse {
    match checks.probes.iter().find_map(|p| p.wedged()) {
        None => HttpResponse::Ok().json(json!({"status": "ok"})),
        Some(reason) => {
            HttpResponse::ServiceUnavailable().json(json!({"status": "wedged", "reason": reason}))
        }
    }
}

async fn readyz(checks: web::Data<Checks>) -> HttpResponse {
    let (ready, body) = readiness(&checks).await;
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Whether the process is ready, and the body `/readyz` answers with; the `tcb_ready` gauge
/// follows.
async fn readiness(checks: &Checks) -> (bool, serde_json::Value) {
    let part = match checks.readiness {
        Readiness::Webhooks { .. } => "webhooks",
        Readiness::Worker => "worker",
    };
    let (ready, body) = evaluate(checks).await;
    tcb_telemetry::metrics::ready(part, ready);
    (ready, body)
}

async fn evaluate(checks: &Checks) -> (bool, serde_json::Value) {
    if let Readiness::Webhooks { draining } = &checks.readiness
        && draining.load(Ordering::SeqCst)
    {
        return (
            false,
            json!({"status": "draining", "reason": "shutting down"}),
        );
    }
    let worker = checks.probes.iter().find_map(|p| p.unready());
    let broker = match tokio::time::timeout(READY_TIMEOUT, checks.publisher.check_ready()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("the broker did not answer in time".to_owned()),
    };
    if broker.is_none() {
        checks.connected_once.store(true, Ordering::SeqCst);
    }
    let started = checks.connected_once.load(Ordering::SeqCst);
    let state = |problem: &Option<String>| problem.clone().unwrap_or_else(|| "ok".to_owned());
    let body = |status: &str| json!({"status": status, "broker": state(&broker), "worker": state(&worker)});
    let ready = match checks.readiness {
        Readiness::Webhooks { .. } => started,
        Readiness::Worker => broker.is_none() && worker.is_none(),
    };
    if ready {
        (true, body("ready"))
    } else {
        let mut body = body("not ready");
        body["reason"] = match &checks.readiness {
            Readiness::Webhooks { .. } => json!("not yet connected to the broker"),
            Readiness::Worker => json!(worker.or(broker)),
        };
        (false, body)
    }
}

async fn metrics(checks: web::Data<Checks>) -> HttpResponse {
    readiness(&checks).await;
    let body = tcb_telemetry::metrics::render();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
