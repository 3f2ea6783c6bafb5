//! The worker: consumes triggers, fetches or parses the order, normalizes it, publishes one order
//! message per trigger, and only then acks the trigger (at least once, end to end).
//!
//! * Ordering and isolation ([`dispatch`]): each order has its own queue, worked in order, so
//!   one order's triggers never overtake each other. An order's events published as they came
//!   form a pipeline: the next is published while the one before awaits its confirm (up to
//!   64), and they settle and are acked in order; a failed publish is
//!   repeated together with the order's outputs behind it. Different orders run in parallel (up
//!   to `max_held` triggers held at once), and at most `lanes` of them fetch from Tradecloud at
//!   once. An order waiting for a retry holds no lane and blocks no
//!   other order; intake pauses only when the worker holds `max_held` unsettled triggers.
//! * Coalescing: GET triggers of one order waiting together share one fetch (up to the next
//!   POST/PUT trigger of that order, so nothing overtakes an event).
//! * Failures ([`process`], `docs/failures.md`): poison is dead-lettered at once; a transient
//!   failure of one order is retried with jittered back-off (honouring `Retry-After`) up to
//!   `max_attempts` and `max_retry_seconds`, then dead-lettered with its attempts and first and
//!   last error; a 404 is retried a few times over about a minute first (Tradecloud's read side may
//!   lag the webhook); a systemic failure (credentials refused, 403, the bus down) pauses the
//!   work behind a circuit breaker ([`health`]), turns readiness red, and dead-letters nothing.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tcb_bus::{Backoff, Bus, BusError, Publisher};
use tcb_model::codec;
use tcb_tradecloud::{TradecloudClient, TradecloudConfig, TradecloudError};
use tokio_util::sync::CancellationToken;

mod dedupe;
mod dispatch;
pub mod health;
mod process;

pub use health::WorkerHealth;

/// The `[worker]` section.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Consumer group on the triggers topic.
    #[serde(default = "default_group")]
    pub group: String,
    /// Orders fetched from Tradecloud at once (GET triggers, enriched events). Events published
    /// as they came take no lane: any number of orders publish at once, up to `max_held`.
    #[serde(default = "default_lanes")]
    pub lanes: usize,
    /// Most unsettled triggers the worker holds (in memory, unacked); past it, intake pauses.
    #[serde(default = "default_max_held")]
    pub max_held: usize,
    /// First retry delay after a transient failure; it doubles up to `retry_max_ms` (with jitter).
    #[serde(default = "default_retry_initial")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// Attempts at one trigger before it is dead-lettered (transient failures).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Longest time one trigger is retried, from its first failure, before it is dead-lettered.
    #[serde(default = "default_max_retry_seconds")]
    pub max_retry_seconds: u64,
    /// Fetches of an order Tradecloud answers 404 for, before the trigger is dead-lettered;
    /// the delays start at `not_found_delay_ms` and double (defaults: 4 over about a minute).
    #[serde(default = "default_not_found_attempts")]
    pub not_found_attempts: u32,
    #[serde(default = "default_not_found_delay")]
    pub not_found_delay_ms: u64,
    /// How long one publish of an output (or dead letter) may take before it counts as failed.
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout_ms: u64,
    /// Triggers held with nothing moving for this long make `/healthz` fail (a wedged worker).
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_seconds: u64,
    /// The order message published to the orders topic: `"v2"` (requested, current, confirmed
    /// and proposed values apart; docs/message.md) or `"v1"` (deprecated, kept for existing
    /// consumers; what a config without this key gets, with a warning at start).
    #[serde(default)]
    pub message_version: tcb_model::MessageVersion,
    /// What becomes of a POST/PUT event: `"event"` (published as it came: only the lines it
    /// affected), `"full-order"` (the order is fetched after it, through the same coalescing,
    /// rate limit and token flow as GET triggers, and published whole, naming the event) or
    /// `"when-partial"` (fetched only for an event that carries no lines). Fetching needs
    /// `message_version = "v2"`.
    #[serde(default)]
    pub enrichment: tcb_model::Enrichment,
    /// Where the worker remembers the Tradecloud message ids (`meta.messageId`) it published,
    /// so a message Tradecloud delivers again is published once (a SQLite file, relative to the
    /// config file; on a volume in containers). Unset: every delivery is published.
    #[serde(default)]
    pub dedupe_path: Option<std::path::PathBuf>,
    /// How long a published message id is remembered (hours; default 72).
    #[serde(default = "default_dedupe_window")]
    pub dedupe_window_hours: u64,
    pub tradecloud: TradecloudConfig,
}

fn default_dedupe_window() -> u64 {
    72
}

impl WorkerConfig {
    /// A config with every optional key at its default.
    pub fn new(tradecloud: TradecloudConfig) -> Self {
        Self {
            group: default_group(),
            lanes: default_lanes(),
            max_held: default_max_held(),
            retry_initial_ms: default_retry_initial(),
            retry_max_ms: default_retry_max(),
            max_attempts: default_max_attempts(),
            max_retry_seconds: default_max_retry_seconds(),
            not_found_attempts: default_not_found_attempts(),
            not_found_delay_ms: default_not_found_delay(),
            publish_timeout_ms: default_publish_timeout(),
            stall_timeout_seconds: default_stall_timeout(),
            message_version: tcb_model::MessageVersion::default(),
            enrichment: tcb_model::Enrichment::default(),
            dedupe_path: None,
            dedupe_window_hours: default_dedupe_window(),
            tradecloud,
        }
    }

    /// Every problem of the section, each naming its key (relative to `worker`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, message: &str| {
            if !ok {
                problems.push((key.to_owned(), message.to_owned()));
            }
        };
        check(!self.group.trim().is_empty(), "group", "must not be empty");
        check(
            (1..=1024).contains(&self.lanes),
            "lanes",
            "must be 1 to 1024",
        );
        check(
            self.max_held >= self.lanes,
            "max_held",
            "must be at least lanes",
        );
        check(
            self.retry_initial_ms >= 1,
            "retry_initial_ms",
            "must be at least 1",
        );
        check(
            self.retry_max_ms >= self.retry_initial_ms,
            "retry_max_ms",
            "must be at least retry_initial_ms",
        );
        check(self.max_attempts >= 1, "max_attempts", "must be at least 1");
        check(
            self.max_retry_seconds >= 1,
            "max_retry_seconds",
            "must be at least 1",
        );
        check(
            self.not_found_attempts >= 1,
            "not_found_attempts",
            "must be at least 1",
        );
        check(
            self.publish_timeout_ms >= 1,
            "publish_timeout_ms",
            "must be at least 1",
        );
        check(
            self.stall_timeout_seconds * 1000 > self.retry_max_ms,
            "stall_timeout_seconds",
            "must be longer than retry_max_ms",
        );
        check(
            self.dedupe_window_hours >= 1,
            "dedupe_window_hours",
            "must be at least 1",
        );
        check(
            self.enrichment == tcb_model::Enrichment::Event
                || self.message_version == tcb_model::MessageVersion::V2,
            "enrichment",
            "fetching the order for events needs message_version = \"v2\"",
        );
        problems.extend(
            self.tradecloud
                .validate()
                .into_iter()
                .map(|(key, message)| (format!("tradecloud.{key}"), message)),
        );
        problems
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.retry_initial_ms),
            Duration::from_millis(self.retry_max_ms),
        )
    }
}

fn default_group() -> String {
    "tradecloud-bridge-worker".to_owned()
}
fn default_lanes() -> usize {
    16
}
fn default_max_held() -> usize {
    1024
}
fn default_retry_initial() -> u64 {
    200
}
fn default_retry_max() -> u64 {
    30_000
}
fn default_max_attempts() -> u32 {
    10
}
fn default_max_retry_seconds() -> u64 {
    3600
}
fn default_not_found_attempts() -> u32 {
    4
}
fn default_not_found_delay() -> u64 {
    8_000
}
fn default_publish_timeout() -> u64 {
    30_000
}
fn default_stall_timeout() -> u64 {
    300
}

/// The worker crate's result.
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker.{key}: {message}")]
    Invalid { key: String, message: String },
    #[error(transparent)]
    Tradecloud(#[from] TradecloudError),
    #[error("cannot consume triggers")]
    Consume(#[source] BusError),
    #[error("a task of the worker panicked: {0}")]
    Panicked(String),
    #[error("worker.dedupe_path: {0}")]
    Dedupe(String),
}

/// What every task of the worker shares.
struct Shared {
    client: TradecloudClient,
    publisher: Arc<dyn Publisher>,
    bus: Bus,
    /// The back-off every retry starts from.
    backoff: Backoff,
    limits: process::Limits,
    /// Orders fetching at once (`lanes`); an order waiting for a retry gives its lane back.
    lanes: tokio::sync::Semaphore,
    /// Outputs published ahead of their order's oldest unconfirmed one, over all orders
    /// (`max_held / 8`): each in flight costs memory (the output, the broker client's copy),
    /// while an order's first publish always goes.
    ahead: Arc<tokio::sync::Semaphore>,
    health: Arc<WorkerHealth>,
    cancel: CancellationToken,
    /// The consumer group (`messaging.consumer.group.name` of the spans).
    group: String,
    /// What happened to each trigger, for `trace` (unset without `[journal]`).
    journal: std::sync::OnceLock<tcb_journal::Journal>,
    /// The Tradecloud message ids published (unset without `dedupe_path`).
    dedupe: Option<dedupe::Dedupe>,
    /// The highest version of each order published whole (this process's), so an older
    /// fetched order is not published after a newer one.
    published_versions: process::Versions,
}

/// A worker, built and validated; [`Worker::run`] consumes.
pub struct Worker {
    shared: Arc<Shared>,
    group: String,
    lanes: usize,
    max_held: usize,
}

impl Worker {
    pub fn new(config: &WorkerConfig, bus: Bus, cancel: CancellationToken) -> Result<Self> {
        tcb_telemetry::metrics::worker_registered(
            &tcb_model::codec::DeadLetterKind::ALL.map(tcb_model::codec::DeadLetterKind::as_str),
        );
        tcb_telemetry::metrics::consumer_lag(&bus.topics.triggers, 0);
        if let Some((key, message)) = config.validate().into_iter().next() {
            return Err(WorkerError::Invalid { key, message });
        }
        let health = Arc::new(WorkerHealth {
            tradecloud: health::Breaker::new("tradecloud"),
            bus: health::Breaker::new("bus"),
            progress: health::Progress::default(),
            stall_timeout: Duration::from_secs(config.stall_timeout_seconds),
        });
        let shared = Arc::new(Shared {
            client: TradecloudClient::new(&config.tradecloud)?,
            publisher: bus.publisher(),
            bus,
            backoff: config.backoff(),
            limits: process::Limits::from(config),
            lanes: tokio::sync::Semaphore::new(config.lanes),
            ahead: Arc::new(tokio::sync::Semaphore::new((config.max_held / 8).max(1))),
            health,
            cancel,
            group: config.group.clone(),
            journal: std::sync::OnceLock::new(),
            dedupe: match &config.dedupe_path {
                Some(path) => Some(
                    dedupe::Dedupe::open(
                        path,
                        Duration::from_secs(config.dedupe_window_hours.min(1 << 20) * 3600),
                    )
                    .map_err(WorkerError::Dedupe)?,
                ),
                None => None,
            },
            published_versions: std::sync::Mutex::default(),
        });
        Ok(Self {
            shared,
            group: config.group.clone(),
            lanes: config.lanes,
            max_held: config.max_held,
        })
    }

    /// Records what happens to each trigger in `journal`.
    pub fn with_journal(self, journal: Option<tcb_journal::Journal>) -> Self {
        if let Some(j) = journal {
            let _ = self.shared.journal.set(j);
        }
        self
    }

    /// Readiness (a circuit breaker open) and liveness (wedged) for the admin endpoints.
    pub fn health(&self) -> Arc<WorkerHealth> {
        self.shared.health.clone()
    }

    /// Runs until the cancel token fires, then returns once the in-flight triggers are settled
    /// or abandoned (never acked unless their output is confirmed). A panicking task ends it
    /// with an error.
    pub async fn run(self) -> Result<()> {
        let bus = &self.shared.bus;
        let consumer = bus
            .consumer(&bus.topics.triggers, Some(&self.group))
            .await
            .map_err(WorkerError::Consume)?;
        tracing::info!(lanes = self.lanes, group = %self.group, topic = %bus.topics.triggers, "worker consuming");
        // The deployment's Tradecloud rate is shared: this worker paces itself at its share of
        // the triggers topic (Kafka: its partitions of all), which changes at every rebalance.
        if let Some(share) = consumer.share() {
            let (shared, every) = (self.shared.clone(), Duration::from_millis(250));
            tokio::spawn(async move {
                let mut last = f64::NAN;
                loop {
                    let now = share.fraction();
                    if now != last {
                        tracing::info!(
                            share = now,
                            "pacing Tradecloud requests at this share of the rate"
                        );
                        shared.client.set_rate_share(now);
                        last = now;
                    }
                    tokio::select! {
                        _ = shared.cancel.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            });
        }
        let result = dispatch::run(self.shared.clone(), consumer, self.max_held).await;
        tracing::info!("worker stopped");
        result
    }
}

/// Builds a worker and runs it until `cancel` fires.
pub async fn run(config: &WorkerConfig, bus: Bus, cancel: CancellationToken) -> Result<()> {
    Worker::new(config, bus, cancel)?.run().await
}

/// What `replay` did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub key: String,
    pub trigger_id: Option<String>,
    /// Why it had been dead-lettered.
    pub reason: Option<String>,
    /// When it was put back (just before the publish: before the worker can see it again).
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Moves dead letters back to the triggers topic (without their dead-letter headers), for the
/// worker to try again once the cause is fixed. Each is acked on the dead-letter topic only after
/// the triggers topic holds it. Stops after `limit` messages or when none came for `idle`.
pub async fn replay(
    bus: &Bus,
    group: &str,
    limit: Option<usize>,
    idle: Duration,
    mut on_replayed: impl FnMut(&Replayed),
) -> Result<usize, BusError> {
    let mut consumer = bus.consumer(&bus.topics.dead_letters, Some(group)).await?;
    let publisher = bus.publisher();
    let started = chrono::Utc::now();
    let mut count = 0;
    while limit.is_none_or(|l| count < l) {
        let delivery = match tokio::time::timeout(idle, consumer.next()).await {
            Ok(d) => d?,
            Err(_) => break,
        };
        // Only what was dead already: a trigger that fails again after its replay comes back as a
        // new dead letter, which this run must not pick up (a poison trigger would go round for
        // ever). It stays, unacked, for the next replay.
        let dead_since = delivery
            .message
            .headers
            .get(codec::header::DEAD_LETTER_LAST_FAILED_AT)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if dead_since.is_some_and(|t| t >= started) {
            break;
        }
        let (message, reason) = codec::revive(&delivery.message);
        let replayed = Replayed {
            key: message.key.clone(),
            trigger_id: codec::trigger_id(&message).map(str::to_owned),
            reason,
            at: chrono::Utc::now(),
        };
        publisher.publish(&bus.topics.triggers, message).await?;
        delivery.ack().await?;
        on_replayed(&replayed);
        count += 1;
    }
    Ok(count)
}
