//! `simulate`: the Tradecloud stand-in on its own, for docker-compose and manual tests. It serves
//! the order and authentication API, and can fire a burst of webhooks at any bridge URL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tcb_simulator::{Sender, SenderAuth, SenderConfig, SimConfig, Simulator};

use crate::CliError;

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Where the Tradecloud API stand-in listens (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Login e-mail the API accepts (the bridge's worker.tradecloud.email).
    #[arg(long, default_value = "integration@example.com")]
    email: String,
    /// Environment variable holding the API password the stand-in accepts.
    #[arg(long, default_value = "SIMULATOR_PASSWORD")]
    password_env: String,
    /// A bridge webhook URL to fire triggers at, e.g. https://localhost:8443/webhook.
    #[arg(long)]
    bridge_url: Option<String>,
    /// Basic-auth user name for the bridge.
    #[arg(long, default_value = "tradecloud")]
    username: String,
    /// Environment variable holding the bridge's webhook password.
    #[arg(long, default_value = "TCB_WEBHOOK_PASSWORD")]
    webhook_password_env: String,
    /// CA certificate (PEM) to trust for the bridge, e.g. a development CA.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// How many triggers to fire.
    #[arg(long, default_value_t = 20)]
    triggers: usize,
}

pub async fn run(args: SimulateArgs) -> Result<(), CliError> {
    let env = |name: &str| {
        std::env::var(name)
            .map_err(|_| CliError::Io(format!("environment variable {name} is not set")))
    };
    let config = SimConfig {
        email: args.email.clone(),
        password: env(&args.password_env)?,
        ..SimConfig::default()
    };
    let sim = Simulator::start(config, args.listen)
        .map_err(|e| CliError::Io(format!("cannot listen on {}: {e}", args.listen)))?;
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
                password: env(&args.webhook_password_env)?,
            },
            ca_pem,
            // Tradecloud retries >500 indefinitely; the stand-in gives up after a minute or so.
            max_attempts: 20,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(60),
        })
        .map_err(|e| CliError::Io(e.to_string()))?;
        for i in 0..args.triggers {
            let (kind, w) = tcb_simulator::orders::burst_webhook(i, &sim, false);
            let o = sender.send(&w).await;
            tracing::info!(
                kind,
                status = o.status,
                attempts = o.attempts,
                trigger_id = o.trigger_id.as_deref().unwrap_or(""),
                "webhook sent"
            );
        }
    }
    crate::serve::shutdown_signal().await;
    sim.stop().await;
    Ok(())
}
