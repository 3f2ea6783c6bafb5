//! The admin listener, apart from the public one: `/healthz` (the process makes progress: no
//! [`Probe`] is wedged), `/readyz` (the broker is reachable and publishes can succeed, and no
//! [`Probe`] is unready, e.g. the worker paused behind a circuit breaker), `/metrics` (Prometheus
//! text format; `docs/metrics.md`).

use std::net::SocketAddr;
use std::sync::Arc;
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

struct Checks {
    publisher: Arc<dyn Publisher>,
    probes: Vec<Arc<dyn Probe>>,
}

impl Admin {
    pub fn start(
        listen: SocketAddr,
        publisher: Arc<dyn Publisher>,
        probes: Vec<Arc<dyn Probe>>,
    ) -> Result<Self, IngressError> {
        let checks = web::Data::new(Checks { publisher, probes });
        if tcb_telemetry::metrics::handle().is_none() {
            tracing::warn!("another metrics recorder is installed: /metrics stays empty");
        }
        let server = HttpServer::new(move || {
            App::new()
                .app_data(checks.clone())
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
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
    if let Some(reason) = checks.probes.iter().find_map(|p| p.unready()) {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "reason": reason}));
    }
    match tokio::time::timeout(READY_TIMEOUT, checks.publisher.check_ready()).await {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "reason": e.to_string()})),
        Err(_) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "reason": "the broker did not answer in time"})),
    }
}

async fn metrics() -> HttpResponse {
    let body = tcb_telemetry::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
