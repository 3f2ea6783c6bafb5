//! The worker: consumes triggers, fetches or parses the order, normalizes it, publishes one order
//! message per trigger, and only then acks the trigger (at least once, end to end).
//!
//! * Ordering: a trigger goes to one of `lanes` by a hash of its key (the order id); a lane works
//!   one trigger at a time, so one order's triggers never overtake each other, while different
//!   orders run in parallel.
//! * Coalescing: GET triggers of one order waiting in a lane share one fetch (up to the next
//!   POST/PUT trigger of that order, so nothing overtakes an event).
//! * Failures: poison (an envelope or event that does not parse, an order Tradecloud does not
//!   know) goes to the dead-letter topic with the reason in a header; transient failures
//!   (Tradecloud 5xx/429/timeouts, the broker) are retried with back-off, holding the lane, which
//!   in turn pauses consumption once every lane is busy.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tcb_bus::{Bus, BusError, Consumer, Delivery, Headers, Message, Publisher};
use tcb_model::trigger::TriggerKind;
use tcb_model::{OrderMessage, TriggerEnvelope, headers, normalize_event, normalize_fetched_order};
use tcb_telemetry::trace_context::TraceParent;
use tcb_tradecloud::{TradecloudClient, TradecloudConfig, TradecloudError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most GET triggers of one order served by one fetch.
const MAX_COALESCE: usize = 64;
/// Deliveries waiting per lane, in its channel and again in its look-ahead for GETs to coalesce:
/// a worker holds at most `lanes * 2 * LANE_QUEUE` unacked triggers in memory.
const LANE_QUEUE: usize = 32;

/// The `[worker]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Consumer group on the triggers topic.
    #[serde(default = "default_group")]
    pub group: String,
    /// Orders processed in parallel.
    #[serde(default = "default_lanes")]
    pub lanes: usize,
    /// First retry delay after a transient failure; it doubles up to `retry_max_ms`.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    pub tradecloud: TradecloudConfig,
}

impl WorkerConfig {
    /// A config with every optional key at its default.
    pub fn new(tradecloud: TradecloudConfig) -> Self {
        Self {
            group: default_group(),
            lanes: default_lanes(),
            retry_initial_ms: default_retry_initial(),
            retry_max_ms: default_retry_max(),
            tradecloud,
        }
    }
}

fn default_group() -> String {
    "tradecloud-bridge-worker".to_owned()
}
fn default_lanes() -> usize {
    16
}
fn default_retry_initial() -> u64 {
    200
}
fn default_retry_max() -> u64 {
    30_000
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker.lanes must be at least 1")]
    Lanes,
    #[error(transparent)]
    Tradecloud(#[from] TradecloudError),
    #[error("cannot consume triggers: {0}")]
    Consume(BusError),
}

/// Why a trigger did not become an output message.
enum Failure {
    /// Retrying cannot help: dead-letter it.
    Poison(String),
    /// Shutting down mid-retry: leave it unacked, it is delivered again.
    Cancelled,
}

struct Shared {
    client: TradecloudClient,
    publisher: Arc<dyn Publisher>,
    bus: Bus,
    retry_initial: Duration,
    retry_max: Duration,
    cancel: CancellationToken,
}

/// Runs until `cancel` fires, then returns once the in-flight triggers are settled or abandoned
/// (never acked unless their output is confirmed).
pub async fn run(
    config: &WorkerConfig,
    bus: Bus,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    if config.lanes == 0 {
        return Err(WorkerError::Lanes);
    }
    let shared = Arc::new(Shared {
        client: TradecloudClient::new(&config.tradecloud)?,
        publisher: bus.publisher(),
        bus: bus.clone(),
        retry_initial: Duration::from_millis(config.retry_initial_ms.max(1)),
        retry_max: Duration::from_millis(config.retry_max_ms.max(config.retry_initial_ms.max(1))),
        cancel: cancel.clone(),
    });
    let mut consumer = bus
        .consumer(&bus.topics.triggers, Some(&config.group))
        .await
        .map_err(WorkerError::Consume)?;
    let mut lanes = Vec::with_capacity(config.lanes);
    let mut tasks = Vec::with_capacity(config.lanes);
    for _ in 0..config.lanes {
        let (tx, rx) = mpsc::channel::<Delivery>(LANE_QUEUE);
        lanes.push(tx);
        tasks.push(tokio::spawn(lane(shared.clone(), rx)));
    }
    tracing::info!(lanes = config.lanes, group = %config.group, topic = %bus.topics.triggers, "worker consuming");
    consume(&mut *consumer, &lanes, &shared).await;
    drop(lanes);
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

async fn consume(consumer: &mut dyn Consumer, lanes: &[mpsc::Sender<Delivery>], shared: &Shared) {
    let mut backoff = Backoff::new(shared);
    loop {
        let next = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            next = consumer.next() => next,
        };
        match next {
            Ok(delivery) => {
                backoff.reset();
                let lane = lane_of(&delivery.message.key, lanes.len());
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    sent = lanes[lane].send(delivery) => if sent.is_err() { return },
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.delay_ms(), "consuming triggers failed");
                if !backoff.wait().await {
                    return;
                }
            }
        }
    }
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// Exponential back-off between retries, from `retry_initial_ms` doubling to `retry_max_ms`.
struct Backoff<'a> {
    shared: &'a Shared,
    next: Duration,
}

impl<'a> Backoff<'a> {
    fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            next: shared.retry_initial,
        }
    }

    fn delay_ms(&self) -> u64 {
        self.next.as_millis() as u64
    }

    fn reset(&mut self) {
        self.next = self.shared.retry_initial;
    }

    /// Sleeps the current delay and doubles it; `false` when cancelled meanwhile.
    async fn wait(&mut self) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(self.shared.retry_max);
        tokio::select! {
            _ = self.shared.cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// A delivery with its parsed envelope (when it parses).
struct Item {
    delivery: Delivery,
    trigger: Result<TriggerEnvelope, String>,
}

impl Item {
    fn new(delivery: Delivery) -> Self {
        let trigger = serde_json::from_slice::<TriggerEnvelope>(&delivery.message.payload)
            .map_err(|e| format!("the trigger envelope does not parse: {e}"));
        Self { delivery, trigger }
    }

    fn is_get(&self) -> bool {
        matches!(&self.trigger, Ok(t) if t.kind == TriggerKind::OrderId)
    }
}

async fn lane(shared: Arc<Shared>, mut rx: mpsc::Receiver<Delivery>) {
    let mut pending: VecDeque<Item> = VecDeque::new();
    loop {
        let first = match pending.pop_front() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(d) => Item::new(d),
                None => return,
            },
        };
        if shared.cancel.is_cancelled() {
            return; // unacked: delivered again after restart
        }
        if first.is_get() {
            // Look ahead for more GETs of this order, but hold at most a lane's worth in memory:
            // everything held is unacked.
            while pending.len() < LANE_QUEUE
                && let Ok(d) = rx.try_recv()
            {
                pending.push_back(Item::new(d));
            }
            let batch = take_coalescable(&first, &mut pending);
            process_gets(&shared, first, batch).await;
        } else {
            process_one(&shared, first).await;
        }
    }
}

/// Takes from `pending` the GET triggers of `first`'s order, up to the first other trigger of
/// that order (which must not be overtaken).
fn take_coalescable(first: &Item, pending: &mut VecDeque<Item>) -> Vec<Item> {
    let key = &first.delivery.message.key;
    let mut taken = Vec::new();
    let mut i = 0;
    while i < pending.len() && taken.len() < MAX_COALESCE {
        if &pending[i].delivery.message.key != key {
            i += 1;
            continue;
        }
        if !pending[i].is_get() {
            break;
        }
        if let Some(item) = pending.remove(i) {
            taken.push(item);
        }
    }
    taken
}

async fn process_one(shared: &Shared, item: Item) {
    let result = match &item.trigger {
        Err(reason) => Err(Failure::Poison(reason.clone())),
        Ok(trigger) => {
            normalize_event(trigger, Utc::now()).map_err(|e| Failure::Poison(e.to_string()))
        }
    };
    settle(shared, item, result).await;
}

/// GET triggers of one order: one fetch, one output message each.
async fn process_gets(shared: &Shared, first: Item, rest: Vec<Item>) {
    let fetched = match &first.trigger {
        Ok(trigger) => fetch(shared, trigger).await,
        Err(reason) => Err(Failure::Poison(reason.clone())),
    };
    if !rest.is_empty() {
        tracing::debug!(order = %first.delivery.message.key, coalesced = rest.len() + 1, "one fetch for several GET triggers");
    }
    for item in std::iter::once(first).chain(rest) {
        let result = match (&fetched, &item.trigger) {
            (Ok(bytes), Ok(trigger)) => normalize_fetched_order(trigger, bytes, Utc::now())
                .map_err(|e| Failure::Poison(e.to_string())),
            (Err(Failure::Poison(reason)), _) => Err(Failure::Poison(reason.clone())),
            (Err(Failure::Cancelled), _) => Err(Failure::Cancelled),
            (_, Err(reason)) => Err(Failure::Poison(reason.clone())),
        };
        settle(shared, item, result).await;
    }
}

/// Fetches the trigger's order, retrying transient failures until it succeeds or shutdown.
async fn fetch(shared: &Shared, trigger: &TriggerEnvelope) -> Result<Vec<u8>, Failure> {
    let mut backoff = Backoff::new(shared);
    loop {
        let result = match (&trigger.order_id, &trigger.legacy_order_id) {
            (Some(id), _) => shared.client.get_order(id).await,
            (None, Some(id)) => shared.client.get_legacy_order(id).await,
            (None, None) => {
                return Err(Failure::Poison("the GET trigger names no order".to_owned()));
            }
        };
        match result {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.is_transient() => {
                tcb_telemetry::metrics::retry("fetch");
                tracing::warn!(trigger_id = %trigger.id, error = %e, retry_in_ms = backoff.delay_ms(), "fetching the order failed; retrying");
                if !backoff.wait().await {
                    return Err(Failure::Cancelled);
                }
            }
            Err(e) => return Err(Failure::Poison(e.to_string())),
        }
    }
}

/// Publishes the output (or the dead letter), then acks the trigger.
async fn settle(shared: &Shared, item: Item, result: Result<OrderMessage, Failure>) {
    let Item { delivery, trigger } = item;
    let trigger_id = trigger
        .as_ref()
        .map(|t| t.id.to_string())
        .unwrap_or_default();
    let (message, dead_lettered) = match result {
        Ok(message) => (output(&delivery, &message), false),
        Err(Failure::Poison(reason)) => {
            tracing::warn!(trigger_id = %trigger_id, position = %delivery.position, reason = %reason, "dead-lettering the trigger");
            (dead_letter(&delivery, &reason), true)
        }
        Err(Failure::Cancelled) => return,
    };
    let topics = &shared.bus.topics;
    let topic = if dead_lettered {
        &topics.dead_letters
    } else {
        &topics.orders
    };
    let mut backoff = Backoff::new(shared);
    while let Err(e) = shared.publisher.publish(topic, message.clone()).await {
        tcb_telemetry::metrics::retry("publish");
        tracing::warn!(trigger_id = %trigger_id, error = %e, topic = %topic, retry_in_ms = backoff.delay_ms(), "publishing failed; retrying");
        if !backoff.wait().await {
            return; // unacked: delivered again after restart
        }
    }
    let end_to_end = match (&trigger, dead_lettered) {
        (Ok(t), false) => (Utc::now() - t.received_at).to_std().ok(),
        _ => None,
    };
    tcb_telemetry::metrics::trigger_settled(dead_lettered, end_to_end);
    let position = delivery.position.clone();
    match delivery.ack().await {
        Ok(()) => {
            tracing::info!(trigger_id = %trigger_id, position = %position, topic = %topic, trace_id = message.headers.get(headers::TRACEPARENT).and_then(|t| TraceParent::parse(t)).map(|t| t.trace_id_hex()).unwrap_or_default(), "trigger done")
        }
        Err(e) => {
            tracing::warn!(trigger_id = %trigger_id, error = %e, "ack failed; the trigger will be delivered again")
        }
    }
}

fn output(delivery: &Delivery, message: &OrderMessage) -> Message {
    let trace = delivery
        .message
        .headers
        .get(headers::TRACEPARENT)
        .and_then(|t| TraceParent::parse(t))
        .map(|t| t.child())
        .unwrap_or_else(TraceParent::new_root);
    let mut h: Headers = headers::common(
        &message.trigger.id,
        tcb_model::message::ORDER_MESSAGE_SCHEMA_VERSION,
        &trace.to_string(),
        message.event_name.as_deref(),
    )
    .into_iter()
    .collect();
    h.insert(
        headers::MESSAGE_ID.to_owned(),
        message.message_id.to_string(),
    );
    h.extend(headers::cloud_events(message));
    Message {
        key: delivery.message.key.clone(),
        headers: h,
        // A message of strings, numbers and JSON values always serializes.
        payload: serde_json::to_vec(message).unwrap_or_default(),
    }
}

fn dead_letter(delivery: &Delivery, reason: &str) -> Message {
    let mut message = delivery.message.clone();
    message
        .headers
        .insert(headers::DEAD_LETTER_REASON.to_owned(), reason.to_owned());
    message.headers.insert(
        headers::DEAD_LETTER_SOURCE.to_owned(),
        delivery.topic.clone(),
    );
    message
}

/// What `replay` did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub key: String,
    pub trigger_id: Option<String>,
    /// Why it had been dead-lettered.
    pub reason: Option<String>,
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
    let mut count = 0;
    while limit.is_none_or(|l| count < l) {
        let delivery = match tokio::time::timeout(idle, consumer.next()).await {
            Ok(d) => d?,
            Err(_) => break,
        };
        let mut message = delivery.message.clone();
        let reason = message.headers.remove(headers::DEAD_LETTER_REASON);
        message.headers.remove(headers::DEAD_LETTER_SOURCE);
        let replayed = Replayed {
            key: message.key.clone(),
            trigger_id: message.headers.get(headers::TRIGGER_ID).cloned(),
            reason,
        };
        publisher.publish(&bus.topics.triggers, message).await?;
        delivery.ack().await?;
        on_replayed(&replayed);
        count += 1;
    }
    Ok(count)
}
