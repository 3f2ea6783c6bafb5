//! `consume`: a topic's messages as JSON lines, for operators and tests.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::CliError;
use crate::config::Config;

#[derive(clap::Args)]
pub struct ConsumeArgs {
    /// The config file; without it, the embedded queue of development mode in --data-dir.
    #[arg(long, short, env = "TCB_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, default_value = "tcb-data")]
    data_dir: PathBuf,
    /// `triggers`, `orders`, `dead-letters`, or a topic name.
    #[arg(long, default_value = "orders")]
    topic: String,
    /// Consume as this group (and ack). Without it: read the topic from the start, ack nothing.
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many messages.
    #[arg(long)]
    limit: Option<usize>,
    /// Stop after this many seconds without a message.
    #[arg(long)]
    idle_exit_secs: Option<u64>,
}

pub async fn run(args: ConsumeArgs) -> Result<(), CliError> {
    let bus_config = match &args.config {
        Some(path) => Config::load(path)?.bus,
        #[cfg(feature = "embedded")]
        None => tcb_bus::BusConfig::Embedded(tcb_bus::embedded::EmbeddedConfig::at(
            args.data_dir.join("bridge.db"),
        )),
        #[cfg(not(feature = "embedded"))]
        None => {
            return Err(CliError::Io(format!(
                "give --config: the embedded queue in {} needs the embedded backend, which this \
                 binary was built without",
                args.data_dir.display()
            )));
        }
    };
    let bus = tcb_bus::connect(&bus_config).await?;
    let topic = match args.topic.as_str() {
        "triggers" => bus.topics.triggers.clone(),
        "orders" => bus.topics.orders.clone(),
        "dead-letters" => bus.topics.dead_letters.clone(),
        other => other.to_owned(),
    };
    let result = print_topic(&bus, &topic, &args).await;
    // Closed on every path: lapin's I/O task then ends cleanly instead of being cancelled.
    bus.close().await;
    result
}

async fn print_topic(bus: &tcb_bus::Bus, topic: &str, args: &ConsumeArgs) -> Result<(), CliError> {
    let mut consumer = bus.consumer(topic, args.group.as_deref()).await?;
    let mut backoff = tcb_bus::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let never = tokio_util::sync::CancellationToken::new();
    let mut seen = 0usize;
    while args.limit.is_none_or(|l| seen < l) {
        let next = match args.idle_exit_secs {
            Some(s) => match tokio::time::timeout(Duration::from_secs(s), consumer.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => consumer.next().await,
        };
        let delivery = match next {
            Ok(d) => d,
            // The broker went away: the consumer reconnects (and a tail resumes where it was).
            Err(e) if e.is_transient() => {
                eprintln!("consume: {}; retrying", e.chain());
                backoff.wait(&never).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        backoff.reset();
        let m = &delivery.message;
        let payload = serde_json::from_slice::<serde_json::Value>(&m.payload)
            .unwrap_or_else(|_| json!({ "base64": STANDARD.encode(&m.payload) }));
        println!(
            "{}",
            json!({
                "topic": delivery.topic,
                "position": delivery.position,
                "key": m.key,
                "headers": m.headers,
                "payload": payload,
            })
        );
        delivery.ack().await?;
        seen += 1;
    }
    Ok(())
}
