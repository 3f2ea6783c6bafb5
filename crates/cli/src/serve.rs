//! Starting and stopping the bridge's parts in one process.

use std::net::SocketAddr;
use std::sync::Arc;

use tcb_bus::Bus;
use tcb_ingress::Ingress;
use tcb_ingress::admin::{Admin, Readiness};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::CliError;
use crate::config::Config;

/// Which parts a process runs.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub ingress: bool,
    pub worker: bool,
}

impl Parts {
    /// Ingress and worker: `run`.
    pub const ALL: Parts = Parts {
        ingress: true,
        worker: true,
    };
}

/// The running parts.
pub struct Running {
    pub bus: Bus,
    pub ingress_addr: Option<SocketAddr>,
    ingress: Option<Ingress>,
    admin: Admin,
    cancel: CancellationToken,
    worker: Option<JoinHandle<Result<(), tcb_worker::WorkerError>>>,
    /// Flushed at the end, so the last triggers' entries are not lost with the process.
    journals: Vec<tcb_journal::Journal>,
}

impl Running {
    pub async fn start(config: &Config, parts: Parts) -> Result<Self, CliError> {
        let ingress_config = if parts.ingress {
            Some(config.ingress()?)
        } else {
            None
        };
        let worker_config = if parts.worker {
            Some(config.worker()?.clone())
        } else {
            None
        };
        for warning in config.warnings() {
            tracing::warn!(%warning, "configuration");
        }
        let bus = tcb_bus::connect(&config.bus).await?;
        let cancel = CancellationToken::new();
        let mut journals = Vec::new();
        let mut journal =
            |process: &'static str| -> Result<Option<tcb_journal::Journal>, CliError> {
                match &config.journal.path {
                    // A journal that cannot be opened (a full or read-only disk, a damaged file)
                    // must not keep webhooks from being answered: the bridge runs without it.
                    Some(path) => {
                        match tcb_journal::Journal::open(&config.journal, path, process) {
                            Ok(j) => {
                                journals.push(j.clone());
                                Ok(Some(j))
                            }
                            Err(e) => {
                                tracing::error!(error = %e, process, "the order journal cannot be opened: running without it");
                                Ok(None)
                            }
                        }
                    }
                    None => Ok(None),
                }
            };
        let worker = match worker_config {
            Some(c) => Some(
                tcb_worker::Worker::new(&c, bus.clone(), cancel.clone())?
                    .with_journal(journal("worker")?),
            ),
            None => None,
        };
        let probes: Vec<Arc<dyn tcb_telemetry::health::Probe>> = worker
            .iter()
            .map(|w| w.health() as Arc<dyn tcb_telemetry::health::Probe>)
            .collect();
        let ingress = match ingress_config {
            Some(c) => {
                let ingress = Ingress::start(
                    c,
                    bus.publisher(),
                    &bus.topics.triggers,
                    journal("ingress")?,
                )?;
                let scheme = match c.tls {
                    tcb_ingress::tls::TlsConfig::Off => "http",
                    _ => "https",
                };
                tracing::info!(addr = %ingress.local_addr, url = %format!("{scheme}://{}{}", ingress.local_addr, c.path), "ingress listening");
                Some(ingress)
            }
            None => None,
        };
        let readiness = match &ingress {
            Some(i) => Readiness::Webhooks {
                draining: i.draining(),
            },
            None => Readiness::Worker,
        };
        let console = tcb_ingress::console::Console::new(
            &config.admin.console,
            bus.clone(),
            config.journal.searched(),
            if config.admin.console.enabled {
                journal("console")?
            } else {
                None
            },
        );
        let admin = Admin::start(
            config.admin.listen,
            bus.publisher(),
            probes,
            readiness,
            console.clone(),
        )?;
        if console.is_some() {
            tracing::info!(url = %format!("http://{}/console", admin.local_addr), "operator console");
        }
        tracing::info!(addr = %admin.local_addr, "admin listening (/healthz, /readyz, /metrics)");
        let worker = worker.map(|w| tokio::spawn(w.run()));
        Ok(Self {
            bus,
            ingress_addr: ingress.as_ref().map(|i| i.local_addr),
            ingress,
            admin,
            cancel,
            worker,
            journals,
        })
    }

    /// Writes the bound addresses as JSON to `path` (atomically: a reader never sees half a file).
    /// `simulator`: the Tradecloud stand-in's base URL in development mode.
    pub fn write_ready_file(
        &self,
        path: Option<&std::path::Path>,
        simulator: Option<String>,
    ) -> Result<(), CliError> {
        let Some(path) = path else {
            return Ok(());
        };
        let body = serde_json::json!({
            "ingress": self.ingress_addr.map(|a| a.to_string()),
            "admin": self.admin.local_addr.to_string(),
            "pid": std::process::id(),
            "simulator": simulator,
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| CliError::Io(format!("cannot write {}: {e}", path.display())))
    }

    /// Runs until SIGINT/SIGTERM or until the worker fails, then stops gracefully.
    pub async fn until_signal(mut self) -> Result<(), CliError> {
        let worker_failed = async {
            match self.worker.as_mut() {
                Some(w) => w.await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutdown requested");
                Ok(())
            }
            result = worker_failed => {
                self.worker = None;
                match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(CliError::Worker(e)),
                    Err(e) => Err(CliError::Io(format!("the worker task failed: {e}"))),
                }
            }
        };
        self.stop().await;
        outcome
    }

    /// Graceful stop: the ingress drains (new requests 503), then the worker settles or abandons
    /// its in-flight triggers (never acking one whose output is not confirmed).
    pub async fn stop(self) {
        if let Some(ingress) = self.ingress {
            ingress.stop().await;
        }
        self.cancel.cancel();
        if let Some(worker) = self.worker {
            let _ = worker.await;
        }
        self.admin.stop().await;
        self.bus.close().await;
        for j in self.journals {
            let _ = tokio::task::spawn_blocking(move || j.flush()).await;
        }
        tracing::info!("stopped");
        tcb_telemetry::otel::shutdown().await;
    }
}

pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
