//! The admin listener, apart from the public one: `/healthz` (the process serves), `/readyz`
//! (the broker is reachable and publishes can succeed), `/metrics` (Prometheus text format;
//! `docs/metrics.md`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::json;
use tcb_bus::Publisher;

use crate::IngressError;

/// How long a readiness probe waits for the broker.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// A started admin server.
pub struct Admin {
    pub local_addr: SocketAddr,
    handle: ServerHandle,
}

impl Admin {
    pub fn start(listen: SocketAddr, publisher: Arc<dyn Publisher>) -> Result<Self, IngressError> {
        let publisher = web::Data::from(Arc::new(publisher));
        if tcb_telemetry::metrics::handle().is_none() {
            tracing::warn!("another metrics recorder is installed: /metrics stays empty");
        }
        let server = HttpServer::new(move || {
            App::new()
                .app_data(publisher.clone())
                .route(
                    "/healthz",
                    web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
                )
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

async fn readyz(publisher: web::Data<Arc<dyn Publisher>>) -> HttpResponse {
    match tokio::time::timeout(READY_TIMEOUT, publisher.check_ready()).await {
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
