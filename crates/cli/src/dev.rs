//! Development mode: what `run` and `demo` use when no config file is given. The embedded
//! backend in a local data folder, a development certificate generated on first start, a random
//! webhook password kept in the data folder, and the Tradecloud simulator as the API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tcb_bus::BusConfig;
use tcb_bus::embedded::EmbeddedConfig;
use tcb_ingress::tls::{DevCertificate, ensure_dev_certificate, write_private};
use tcb_ingress::{AuthConfig, IngressConfig};
use tcb_simulator::{SimConfig, Simulator};
use tcb_telemetry::{LogFormat, TelemetryConfig};
use tcb_tradecloud::TradecloudConfig;
use tcb_worker::WorkerConfig;

use crate::CliError;
use crate::config::{AdminConfig, Config};

/// The webhook credentials of development mode.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevCredentials {
    pub username: String,
    pub password: String,
}

/// Everything development mode set up.
pub struct Dev {
    pub config: Config,
    pub certificate: DevCertificate,
    pub credentials: DevCredentials,
    pub credentials_file: PathBuf,
    pub simulator: Simulator,
}

/// Reads the development credentials from `dir`, or creates them (file mode 0600).
fn credentials(dir: &Path) -> Result<(DevCredentials, PathBuf), CliError> {
    let file = dir.join("dev-credentials.json");
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(c) = serde_json::from_str::<DevCredentials>(&text)
    {
        return Ok((c, file));
    }
    let c = DevCredentials {
        username: "tradecloud".to_owned(),
        password: uuid::Uuid::new_v4().simple().to_string(),
    };
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "username": c.username,
        "password": c.password,
    }))
    .map_err(|e| CliError::Io(format!("credentials: {e}")))?;
    write_private(&file, text.as_bytes())
        .map_err(|e| CliError::Io(format!("cannot write {}: {e}", file.display())))?;
    Ok((c, file))
}

/// Sets up development mode in `dir`.
pub fn setup(dir: &Path, listen: SocketAddr, admin: SocketAddr) -> Result<Dev, CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let certificate = ensure_dev_certificate(dir, &[])?;
    let (credentials, credentials_file) = credentials(dir)?;
    // Tradecloud serves only HTTPS: so does the simulator, with a CA of its own.
    let sim_config = SimConfig {
        tls: true,
        ..SimConfig::default()
    };
    let simulator = Simulator::start(sim_config.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| CliError::Io(format!("cannot start the Tradecloud simulator: {e}")))?;
    let simulator_ca = match simulator.ca_pem() {
        Some(pem) => {
            let file = dir.join("simulator-ca.pem");
            std::fs::write(&file, pem)
                .map_err(|e| CliError::Io(format!("cannot write {}: {e}", file.display())))?;
            Some(file)
        }
        None => None,
    };
    let ingress = IngressConfig::new(
        listen,
        certificate.tls_config(),
        AuthConfig::Basic {
            username: credentials.username.clone(),
            password: SecretString::from(credentials.password.clone()),
        },
    );
    let mut worker = WorkerConfig::new(TradecloudConfig {
        base_url: simulator.base_url(),
        email: sim_config.email,
        password: SecretString::from(sim_config.password),
        legacy_base_url: Some(simulator.base_url()),
        legacy_username: Some(sim_config.legacy_username),
        legacy_password: Some(SecretString::from(sim_config.legacy_password)),
        max_requests_per_second: 10,
        max_concurrent_requests: 1,
        request_timeout_ms: 10_000,
        ca_file: simulator_ca,
    });
    // A message Tradecloud (or the demo's sender) delivers again is published once.
    worker.dedupe_path = Some(dir.join("dedupe.db"));
    // What new configs use: the order message v2.
    worker.message_version = tcb_model::MessageVersion::V2;
    let config = Config {
        bus: BusConfig::Embedded(EmbeddedConfig::at(dir.join("bridge.db"))),
        ingress: Some(ingress),
        worker: Some(worker),
        // The console, with the webhook's development credentials and replay on.
        admin: AdminConfig {
            listen: admin,
            console: tcb_ingress::console::ConsoleConfig {
                enabled: true,
                auth: Some(tcb_ingress::auth::Credentials::from(
                    tcb_ingress::auth::AuthConfig::Basic {
                        username: credentials.username.clone(),
                        password: SecretString::from(credentials.password.clone()),
                    },
                )),
                replay: true,
                metrics_from: Vec::new(),
            },
        },
        telemetry: TelemetryConfig {
            log_format: LogFormat::Text,
            ..TelemetryConfig::default()
        },
        journal: tcb_journal::JournalConfig {
            path: Some(dir.join("journal.db")),
            ..tcb_journal::JournalConfig::default()
        },
    };
    Ok(Dev {
        config,
        certificate,
        credentials,
        credentials_file,
        simulator,
    })
}
