//! `replay`: re-drives dead letters to the triggers topic once their cause is fixed.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::CliError;
use crate::config::Config;

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[arg(long, short, env = "TCB_CONFIG")]
    config: PathBuf,
    /// Replay at most this many.
    #[arg(long)]
    limit: Option<usize>,
    /// Stop when no dead letter came for this many seconds.
    #[arg(long, default_value_t = 5)]
    idle_exit_secs: u64,
    /// Consumer group on the dead-letter topic.
    #[arg(long, default_value = "tradecloud-bridge-replay")]
    group: String,
}

pub async fn run(args: ReplayArgs) -> Result<(), CliError> {
    let config = Config::load(&args.config)?;
    let bus = tcb_bus::connect(&config.bus).await?;
    let journal = match &config.journal.path {
        Some(path) => Some(tcb_journal::Journal::open(&config.journal, path, "replay")?),
        None => None,
    };
    let n = tcb_worker::replay(
        &bus,
        &args.group,
        args.limit,
        Duration::from_secs(args.idle_exit_secs),
        |r| {
            println!(
                "{}",
                json!({"replayed": r.trigger_id, "key": r.key, "reason": r.reason})
            );
            if let (Some(j), Some(id)) = (&journal, &r.trigger_id) {
                j.record(
                    tcb_journal::Entry::new(id.clone(), tcb_journal::Stage::Replayed)
                        .at(r.at)
                        .order(Some(&r.key))
                        .detail(json!({"reason": r.reason, "to": bus.topics.triggers})),
                );
            }
        },
    )
    .await?;
    if let Some(j) = journal {
        let _ = tokio::task::spawn_blocking(move || j.flush()).await;
    }
    eprintln!("replayed {n} dead letter(s) to {}", bus.topics.triggers);
    Ok(())
}
