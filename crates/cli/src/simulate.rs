//! `simulate`: the Tradecloud stand-in on its own, for docker-compose and manual tests. It serves
//! the order and authentication API, and can fire a burst of webhooks at any bridge URL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tcb_simulator::{Sender, SenderAuth, SenderConfig, SimConfig, Simulator};

use crate::CliError;

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Where the Tradecloud API stand-in listens (HTTP, or HTTPS with `--tls-ca-out`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Login e-mail the API accepts (the bridge's worker.tradecloud.email).
    #[arg(long, default_value = "integration@example.com")]
    email: String,
    /// Environment variable holding the API password the stand-in accepts.
    #[arg(long, default_value = "SIMULATOR_PASSWORD")]
    password_env: String,
    /// A file holding the API password (a mounted secret); wins over --password-env.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// A bridge webhook URL to fire triggers at, e.g. https://localhost:8443/webhook.
    #[arg(long)]
    bridge_url: Option<String>,
    /// Basic-auth user name for the bridge.
    #[arg(long, default_value = "tradecloud")]
    username: String,
    /// Environment variable holding the bridge's webhook password.
    #[arg(long, default_value = "TCB_WEBHOOK_PASSWORD")]
    webhook_password_env: String,
    /// A file holding the bridge's webhook password; wins over --webhook-password-env.
    #[arg(long)]
    webhook_password_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the bridge, e.g. a development CA.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Serve HTTPS, as Tradecloud does, with a CA made at start whose certificate (PEM) is
    /// written to this file (for `worker.tradecloud.ca_file`).
    #[arg(long)]
    tls_ca_out: Option<PathBuf>,
    /// How many triggers to fire.
    #[arg(long, default_value_t = 20)]
    triggers: usize,
    /// Exit once the triggers are sent (exit 1 when one was not accepted) instead of serving the
    /// API until stopped.
    #[arg(long)]
    exit_after_sending: bool,
}

/// A secret from a file (its final line break dropped) or else from an environment variable.
fn secret(file: Option<&PathBuf>, var: &str) -> Result<String, CliError> {
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| t.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display()))),
        None => std::env::var(var)
            .map_err(|_| CliError::Io(format!("environment variable {var} is not set"))),
    }
}

pub async fn run(args: SimulateArgs) -> Result<(), CliError> {
    let config = SimConfig {
        email: args.email.clone(),
        password: secret(args.password_file.as_ref(), &args.password_env)?,
        tls: args.tls_ca_out.is_some(),
        ..SimConfig::default()
    };
    let sim = Simulator::start(config, args.listen)
        .map_err(|e| CliError::Io(format!("cannot listen on {}: {e}", args.listen)))?;
    if let (Some(file), Some(pem)) = (&args.tls_ca_out, sim.ca_pem()) {
        std::fs::write(file, pem)
            .map_err(|e| CliError::Io(format!("cannot write {}: {e}", file.display())))?;
    }
    tracing::info!(addr = %sim.addr, "Tradecloud API stand-in listening");
    if let Some(url) = &args.bridge_url {
        let ca_pem = match &args.cacert {
            Some(p) => {
                Some(std::fs::read(p).map_err(|e| CliError::Io(format!("{}: {e}", p.display())))?)
            }
            None => None,
        };
        let sender = Sender::new(SenderConfig {
            url: url.clone(),
            auth: SenderAuth::Basic {
                username: args.username.clone(),
                password: secret(
                    args.webhook_password_file.as_ref(),
                    &args.webhook_password_env,
                )?,
            },
            ca_pem,
            // Tradecloud retries >500 indefinitely; the stand-in gives up after a minute or so.
            max_attempts: 20,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(60),
        })
        .map_err(|e| CliError::Io(e.to_string()))?;
        let mut refused = 0;
        for i in 0..args.triggers {
            let (kind, w) = tcb_simulator::orders::burst_webhook(i, &sim, false);
            let o = sender.send(&w).await;
            if !o.accepted() {
                refused += 1;
            }
            tracing::info!(
                kind,
                status = o.status,
                attempts = o.attempts,
                trigger_id = o.trigger_id.as_deref().unwrap_or(""),
                "webhook sent"
            );
        }
        if args.exit_after_sending {
            sim.stop().await;
            println!(
                "{} of {} webhooks accepted",
                args.triggers - refused,
                args.triggers
            );
            return if refused == 0 {
                Ok(())
            } else {
                Err(CliError::Io(format!(
                    "{refused} webhooks were not accepted"
                )))
            };
        }
    }
    crate::serve::shutdown_signal().await;
    sim.stop().await;
    Ok(())
}
