//! `tradecloud-bridge`: the one binary. It only composes the crates: each owns its config section
//! and its errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the worker spent a quarter of its CPU in glibc's
/// allocator under load; with mimalloc it uses about a sixth less CPU per trigger
/// (`docs/performance.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod config;
mod consume;
#[cfg(feature = "embedded")]
mod demo;
#[cfg(feature = "embedded")]
mod dev;
mod replay;
mod secret;
mod serve;
mod simulate;
mod trace;

use config::{Config, ConfigError};
use serve::{Parts, Running};

#[derive(Parser)]
#[command(
    name = "tradecloud-bridge",
    version,
    about = "Bridges Tradecloud order webhooks to Kafka, RabbitMQ or an embedded queue"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// The TOML config file (see deploy/bridge.example.toml).
    #[arg(long, short, env = "TCB_CONFIG")]
    config: PathBuf,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    ready: ReadyArg,
}

#[derive(clap::Args, Clone, Default)]
struct ReadyArg {
    /// Once every listener is bound, write `{"ingress": ADDR, "admin": ADDR}` to this file (for
    /// supervisors and tests that start the bridge on port 0).
    #[arg(long, env = "TCB_READY_FILE")]
    ready_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Ingress and worker in one process. Without --config: development mode (embedded queue in
    /// --data-dir, development certificate, the Tradecloud simulator as the API).
    Run {
        #[arg(long, short, env = "TCB_CONFIG")]
        config: Option<PathBuf>,
        /// Data folder of development mode.
        #[arg(long, default_value = "tcb-data")]
        data_dir: PathBuf,
        /// Public listener of development mode.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Admin listener of development mode.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        #[command(flatten)]
        ready: ReadyArg,
    },
    /// Only the webhook ingress.
    Ingress(ServeArgs),
    /// Only the worker.
    Worker(ServeArgs),
    /// Development mode plus the simulator firing a burst of mixed triggers; prints every
    /// normalized message and a summary, exits 0 when every accepted trigger arrived.
    #[cfg(feature = "embedded")]
    Demo(demo::DemoArgs),
    /// Validates a config file (and its certificate files) without starting anything.
    CheckConfig(ConfigArg),
    /// Validates a config file like check-config; with --print, prints the effective
    /// configuration (defaults, overrides and `${...}` applied) with every secret redacted.
    Config {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the effective configuration as TOML.
        #[arg(long)]
        print: bool,
    },
    /// Asks a running bridge's admin listener: exits 0 when `/healthz` (with --ready: `/readyz`)
    /// answers 200, 1 otherwise. For container health checks; the image has no curl.
    Healthcheck {
        /// The admin listener (`[admin] listen`), as reachable from here.
        #[arg(long, default_value = "127.0.0.1:9090", env = "TCB_HEALTHCHECK_ADDR")]
        addr: String,
        /// Check readiness (`/readyz`) instead of liveness.
        #[arg(long, conflicts_with = "path")]
        ready: bool,
        /// Any other path to ask for (`/sim/stats` for the simulator).
        #[arg(long)]
        path: Option<String>,
        /// Give up (and fail) after this long.
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
    },
    /// Measurements that print a table (`bench pipeline`: the bridge beside its baselines on
    /// each backend; `bench tracing`, `bench journal`: the cost of one feature).
    #[command(subcommand)]
    Bench(bench::Bench),
    /// A yardstick of `bench pipeline`: the HTTP stack alone or with a minimal publisher.
    #[command(hide = true)]
    BenchBaseline(bench::baseline::BaselineArgs),
    /// "Where is order X?": the journey of every trigger matching an order id, a PO number, a
    /// trigger id or a message id, from the processes' journals, with its trace id.
    Trace(trace::TraceArgs),
    /// Prints a topic's messages as JSON lines.
    Consume(consume::ConsumeArgs),
    /// Moves dead letters back to the triggers topic (after their cause is fixed).
    Replay(replay::ReplayArgs),
    /// Prints the JSON Schema of the order message (docs/schemas/order-message.v1.json).
    Schema,
    /// The Tradecloud stand-in: serves the order API, optionally fires webhooks at a bridge.
    Simulate(simulate::SimulateArgs),
    /// Writes a random secret to DIR/NAME for each NAME that does not exist yet (existing ones are
    /// kept); prints the names written, never a secret. For development stacks (docker-compose).
    DevSecret {
        #[arg(long)]
        dir: PathBuf,
        /// Write these with mode 0644 (read by another container's user, e.g. a broker's password).
        #[arg(long = "shared", value_name = "NAME")]
        shared: Vec<String>,
        /// Secrets readable by their owner only (mode 0600).
        names: Vec<String>,
    },
    /// Writes a development CA and a certificate it signed (dev-ca.pem, dev-cert.pem, dev-key.pem)
    /// for localhost, 127.0.0.1, ::1 and every --san; reuses them when they cover those names.
    DevCertificate {
        #[arg(long, default_value = "tcb-data")]
        dir: PathBuf,
        /// A further host name or IP address the certificate is for (repeatable): `--san ingress`.
        #[arg(long = "san", value_name = "NAME")]
        names: Vec<String>,
    },
}

/// Errors of the binary: each crate's, composed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bus(#[from] tcb_bus::BusError),
    #[error(transparent)]
    Ingress(#[from] tcb_ingress::IngressError),
    #[error("worker: {0}")]
    Worker(#[from] tcb_worker::WorkerError),
    #[error(transparent)]
    Telemetry(#[from] tcb_telemetry::TelemetryError),
    #[error("{0}")]
    Io(String),
    #[error("demo: {0}")]
    Demo(String),
    #[error("not healthy: {0}")]
    Unhealthy(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Journal(#[from] tcb_journal::JournalError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic anywhere (a worker task, a broker supervisor) is a bug the process cannot know the
    // effects of: log it and exit non-zero, so the supervisor restarts a clean process. Nothing
    // unfinished was acked, so nothing is lost.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!(panic = %info, "a task panicked; exiting");
        std::process::exit(101);
    }));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = error_chain(&e);
            tracing::error!(error = %message, "exiting");
            eprintln!("error: {message}");
            match e {
                CliError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// An error and every cause below it (`a: b: c`), each once.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

async fn dispatch(command: Command) -> Result<(), CliError> {
    match command {
        Command::Run {
            config: Some(path),
            ready,
            ..
        } => serve(&path, Parts::ALL, &ready).await,
        #[cfg(not(feature = "embedded"))]
        Command::Run { config: None, .. } => Err(CliError::Io(
            "development mode (run without --config) needs the embedded backend, which this \
             binary was built without; give --config"
                .to_owned(),
        )),
        #[cfg(feature = "embedded")]
        Command::Run {
            config: None,
            data_dir,
            listen,
            admin_listen,
            ready,
        } => {
            let dev = dev::setup(&data_dir, listen, admin_listen)?;
            tcb_telemetry::init(&dev.config.telemetry, "tradecloud-bridge")?;
            tracing::warn!(
                data_dir = %data_dir.display(),
                credentials_file = %dev.credentials_file.display(),
                ca = %dev.certificate.ca.display(),
                tradecloud_api = %dev.simulator.base_url(),
                "development mode: embedded queue, development certificate, simulated Tradecloud API; not for production"
            );
            let running = Running::start(&dev.config, Parts::ALL).await?;
            running
                .write_ready_file(ready.ready_file.as_deref(), Some(dev.simulator.base_url()))?;
            let result = running.until_signal().await;
            dev.simulator.stop().await;
            result
        }
        Command::Ingress(a) => {
            let parts = Parts {
                ingress: true,
                worker: false,
            };
            serve(&a.config.config, parts, &a.ready).await
        }
        Command::Worker(a) => {
            let parts = Parts {
                ingress: false,
                worker: true,
            };
            serve(&a.config.config, parts, &a.ready).await
        }
        #[cfg(feature = "embedded")]
        Command::Demo(args) => demo::run(args).await,
        Command::CheckConfig(a) => check_config(&a.config),
        Command::Consume(args) => consume::run(args).await,
        Command::Bench(b) => bench::run(b).await,
        Command::BenchBaseline(args) => bench::baseline::run(args).await,
        Command::Trace(args) => trace::run(args),
        Command::Replay(args) => replay::run(args).await,
        Command::Simulate(args) => {
            tcb_telemetry::init(
                &tcb_telemetry::TelemetryConfig::default(),
                "tradecloud-bridge-simulator",
            )?;
            simulate::run(args).await
        }
        Command::Config { config, print } => {
            if print {
                let config = Config::load(&config.config)?;
                print!("{}", config.print()?);
                Ok(())
            } else {
                check_config(&config.config)
            }
        }
        Command::Healthcheck {
            addr,
            ready,
            path,
            timeout_seconds,
        } => {
            let path =
                path.unwrap_or_else(|| if ready { "/readyz" } else { "/healthz" }.to_owned());
            healthcheck(&addr, &path, Duration::from_secs(timeout_seconds)).await
        }
        Command::DevSecret { dir, shared, names } => {
            let all = names.iter().map(|n| (n, false));
            for (name, shared) in all.chain(shared.iter().map(|n| (n, true))) {
                let made = secret::ensure_secret(&dir, name, shared)?;
                let what = if made { "written" } else { "kept" };
                println!("{}: {what}", dir.join(name).display());
            }
            Ok(())
        }
        Command::DevCertificate { dir, names } => {
            let c = tcb_ingress::tls::ensure_dev_certificate(&dir, &names)?;
            println!(
                "CA: {}\ncertificate: {}\nkey: {}",
                c.ca.display(),
                c.cert.display(),
                c.key.display()
            );
            Ok(())
        }
        Command::Schema => {
            let schema = serde_json::to_string_pretty(&tcb_model::message::json_schema())
                .map_err(|e| CliError::Io(e.to_string()))?;
            println!("{schema}");
            Ok(())
        }
    }
}

/// `healthcheck`: one GET to the admin listener.
async fn healthcheck(addr: &str, path: &str, timeout: Duration) -> Result<(), CliError> {
    let url = format!("http://{addr}/{}", path.trim_start_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| CliError::Io(format!("healthcheck: {e}")))?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| CliError::Unhealthy(format!("{url}: {}", error_chain(&e))))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        println!("{url}: {status} {body}");
        Ok(())
    } else {
        Err(CliError::Unhealthy(format!("{url}: {status} {body}")))
    }
}

async fn serve(path: &std::path::Path, parts: Parts, ready: &ReadyArg) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let service = match (parts.ingress, parts.worker) {
        (true, false) => "tradecloud-bridge-ingress",
        (false, true) => "tradecloud-bridge-worker",
        _ => "tradecloud-bridge",
    };
    tcb_telemetry::init(&config.telemetry, service)?;
    let running = Running::start(&config, parts).await?;
    running.write_ready_file(ready.ready_file.as_deref(), None)?;
    running.until_signal().await
}

/// Loads the file, which runs every section's own validation, then reads the files it names
/// (certificate and key, CAs) and builds the Kafka client the way start-up would.
fn check_config(path: &std::path::Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    tcb_bus::check(&config.bus)?;
    if let Some(ingress) = &config.ingress {
        tcb_ingress::tls::server_config(&ingress.tls)?;
    }
    if let Some(worker) = &config.worker {
        tcb_tradecloud::TradecloudClient::new(&worker.tradecloud)
            .map_err(tcb_worker::WorkerError::from)?;
    }
    let backend = config.bus.backend_name();
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    println!(
        "{}: OK (bus: {backend}; ingress: {}; worker: {})",
        path.display(),
        if config.ingress.is_some() {
            "configured"
        } else {
            "absent"
        },
        if config.worker.is_some() {
            "configured"
        } else {
            "absent"
        },
    );
    Ok(())
}
