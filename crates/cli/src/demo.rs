//! `demo`: development mode, then the simulator fires a burst of mixed triggers at the bridge;
//! every normalized message is printed as it arrives, then a summary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tcb_model::Output;
use tcb_simulator::{Sender, SenderAuth, SenderConfig, orders};
use tokio::sync::Mutex;

use crate::CliError;
use crate::dev;
use crate::serve::{Parts, Running};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// How many triggers to fire.
    #[arg(long, default_value_t = 40)]
    triggers: usize,
    /// How many webhook calls are in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Print each message as full JSON instead of a one-line summary.
    #[arg(long)]
    json: bool,
    /// Only POST/PUT event triggers: no order fetches, so Tradecloud's 10 requests/s limit does not
    /// pace the run (for measuring the bridge itself).
    #[arg(long)]
    events_only: bool,
    /// Print only the summary, not every message.
    #[arg(long)]
    quiet: bool,
    /// Keep the data here instead of a temporary folder.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run on the broker of this config file's [bus] section (its other sections are ignored)
    /// instead of the embedded queue, e.g. to measure Kafka or RabbitMQ.
    #[arg(long)]
    bus_config: Option<PathBuf>,
    /// How long to wait for all messages.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    let temp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp =
                tempfile::tempdir().map_err(|e| CliError::Io(format!("temporary folder: {e}")))?;
            temp.path().to_owned()
        }
    };
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut dev = dev::setup(&dir, any, any)?;
    if let Some(path) = &args.bus_config {
        dev.config.bus = crate::config::Config::load(path)?.bus;
    }
    let mut telemetry = dev.config.telemetry.clone();
    telemetry.log_level = "warn".to_owned();
    tcb_telemetry::init(&telemetry, "tradecloud-bridge")?;
    let running = Running::start(&dev.config, Parts::ALL).await?;
    let ingress = running
        .ingress_addr
        .ok_or_else(|| CliError::Demo("the ingress did not start".to_owned()))?;
    let url = format!("https://localhost:{}/webhook", ingress.port());
    println!(
        "tradecloud-bridge demo: bus {}, ingress {url}, Tradecloud simulator {}, data {}",
        dev.config.bus.backend_name(),
        dev.simulator.base_url(),
        dir.display()
    );
    println!(
        "firing {} triggers ({} at a time)...",
        args.triggers, args.concurrency
    );

    let ca = std::fs::read(&dev.certificate.ca).map_err(|e| CliError::Io(e.to_string()))?;
    let sender = Sender::new(SenderConfig {
        url,
        auth: SenderAuth::Basic {
            username: dev.credentials.username.clone(),
            password: dev.credentials.password.clone(),
        },
        ca_pem: Some(ca),
        max_attempts: 5,
        initial_backoff: Duration::from_millis(200),
        timeout: Duration::from_secs(30),
    })
    .map_err(|e| CliError::Demo(e.to_string()))?;

    // The consumer starts before the burst so that arrival times are measured as they happen.
    let mut orders = running
        .bus
        .consumer(&running.bus.topics.orders, None)
        .await?;
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let start = Instant::now();
    // A tail reads the topic from its start: on a shared broker, skip earlier runs' messages.
    let started_at = chrono::Utc::now();
    let burst = {
        let jobs: Vec<_> = (0..args.triggers)
            .map(|i| orders::burst_webhook(i, &dev.simulator, args.events_only))
            .collect();
        let sent_at = sent_at.clone();
        let sender = sender.clone();
        let concurrency = args.concurrency.max(1);
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut set = tokio::task::JoinSet::new();
        for (kind, w) in jobs {
            let sender = sender.clone();
            let sent_at = sent_at.clone();
            let permits = permits.clone();
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let begun = Instant::now();
                let outcome = sender.send(&w).await;
                if let Some(id) = &outcome.trigger_id {
                    sent_at.lock().await.insert(id.clone(), begun);
                }
                (kind, outcome)
            });
        }
        tokio::spawn(async move { set.join_all().await })
    };

    let mut end_to_end = Histogram::<u64>::new(3).map_err(|e| CliError::Demo(e.to_string()))?;
    let mut delivered = 0usize;
    let mut outcomes: Option<Vec<(&str, tcb_simulator::Outcome)>> = None;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut burst = Some(burst);
    loop {
        if let Some(done) = &outcomes {
            let accepted = accepted(done);
            if delivered >= accepted {
                break;
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        tokio::select! {
            finished = async {
                match burst.as_mut() {
                    Some(b) => b.await,
                    None => std::future::pending().await,
                }
            }, if burst.is_some() => {
                burst = None;
                outcomes = Some(finished.map_err(|e| CliError::Demo(e.to_string()))?);
            }
            next = tokio::time::timeout(remaining, orders.next()) => {
                let Ok(next) = next else { break };
                let delivery = match next {
                    Ok(d) => d,
                    // The broker went away: the tail reconnects and resumes where it was.
                    Err(e) if e.is_transient() => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let Ok(message) = tcb_model::codec::decode_order(&delivery.message) else {
                    continue;
                };
                if message.trigger().received_at < started_at {
                    continue;
                }
                let id = message.trigger_id().to_string();
                let begun = loop {
                    if let Some(t) = sent_at.lock().await.get(&id).copied() {
                        break Some(t);
                    }
                    if burst.is_none() { break None; }
                    // the 200 may still be on its way back to the sender
                    tokio::time::sleep(Duration::from_millis(1)).await;
                };
                let latency = begun.map(|b| b.elapsed()).unwrap_or_default();
                let _ = end_to_end.record(latency.as_micros() as u64);
                delivered += 1;
                if !args.quiet {
                    print_message(&message, latency, args.json);
                }
            }
        }
    }
    let outcomes = outcomes.unwrap_or_default();
    let elapsed = start.elapsed();
    let mut ack = Histogram::<u64>::new(3).map_err(|e| CliError::Demo(e.to_string()))?;
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for (_, o) in &outcomes {
        let _ = ack.record(o.elapsed.as_micros() as u64);
        *by_status
            .entry(o.status.map_or("no answer".to_owned(), |s| s.to_string()))
            .or_default() += 1;
    }
    let accepted = accepted(&outcomes);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!();
    println!("summary");
    println!("  sent                        {}", args.triggers);
    println!("  acked (2xx)                 {accepted}   by status: {by_status:?}");
    println!("  delivered to orders topic   {delivered}");
    println!(
        "  webhook answer  p50 / p99   {:.1} ms / {:.1} ms",
        ms(&ack, 0.5),
        ms(&ack, 0.99)
    );
    println!(
        "  end to end      p50 / p99   {:.1} ms / {:.1} ms   (webhook call -> message on the orders topic)",
        ms(&end_to_end, 0.5),
        ms(&end_to_end, 0.99)
    );
    println!(
        "  wall time                   {:.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  throughput                  {:.0} triggers/s end to end",
        delivered as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    if let Some(kib) = crate::bench::peak_rss_kib("self") {
        println!(
            "  peak memory                 {:.1} MiB RSS (bridge, simulator and sender in one process)",
            kib as f64 / 1024.0
        );
    }
    println!("  Tradecloud API              {:?}", dev.simulator.stats());
    running.stop().await;
    dev.simulator.stop().await;
    if outcomes.len() == args.triggers && accepted == args.triggers && delivered == accepted {
        println!("OK: every trigger arrived as a normalized message");
        Ok(())
    } else {
        Err(CliError::Demo(format!(
            "{} sent, {accepted} acked, {delivered} delivered",
            args.triggers
        )))
    }
}

fn accepted(outcomes: &[(&str, tcb_simulator::Outcome)]) -> usize {
    outcomes.iter().filter(|(_, o)| o.accepted()).count()
}

fn print_message(m: &Output, latency: Duration, json: bool) {
    if json {
        if let Ok(s) = m.to_json() {
            println!("{}", String::from_utf8_lossy(&s));
        }
        return;
    }
    let order = m.order_id().or(m.legacy_order_id()).unwrap_or("-");
    println!(
        "orders <- {:<6} {:<20} {:<13} {:<32} v{:<3} lines={} po={} {:>7.1} ms",
        m.trigger().method,
        order,
        match m.scope() {
            tcb_model::message::Scope::FullOrder => "full-order",
            tcb_model::message::Scope::PartialEvent => "partial-event",
        },
        m.event_name().unwrap_or("(fetched)"),
        m.version().map_or("-".to_owned(), |v| v.to_string()),
        m.line_count(),
        m.purchase_order_number().unwrap_or("-"),
        latency.as_secs_f64() * 1000.0,
    );
}
