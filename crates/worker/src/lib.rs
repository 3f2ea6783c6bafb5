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
use serde::Deserialize;
use tcb_bus::{Backoff, Bus, BusError, Consumer, Delivery, Publisher};
use tcb_model::{
    OrderMessage, OrderRef, Trigger, TriggerEnvelope, codec, normalize_event,
    normalize_fetched_order,
};
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
#[derive(Debug, Clone, Deserialize)]
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

    /// Every problem of the section, each naming its key (relative to `worker`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, message: &str| {
            if !ok {
                problems.push((key.to_owned(), message.to_owned()));
            }
        };
        check(!self.group.trim().is_empty(), "group", "must not be empty");
        check(self.lanes >= 1, "lanes", "must be at least 1");
        check(self.lanes <= 1024, "lanes", "must be at most 1024");
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
fn default_retry_initial() -> u64 {
    200
}
fn default_retry_max() -> u64 {
    30_000
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
    /// The back-off every retry starts from.
    backoff: Backoff,
    cancel: CancellationToken,
}

/// Runs until `cancel` fires, then returns once the in-flight triggers are settled or abandoned
/// (never acked unless their output is confirmed).
pub async fn run(
    config: &WorkerConfig,
    bus: Bus,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    if let Some((key, message)) = config.validate().into_iter().next() {
        return Err(WorkerError::Invalid { key, message });
    }
    let shared = Arc::new(Shared {
        client: TradecloudClient::new(&config.tradecloud)?,
        publisher: bus.publisher(),
        bus: bus.clone(),
        backoff: config.backoff(),
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
    let mut backoff = shared.backoff.clone();
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
                tracing::warn!(error = %e.chain(), retry_in_ms = backoff.base().as_millis() as u64, "consuming triggers failed");
                if !backoff.wait(&shared.cancel).await {
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

/// A delivery with its parsed envelope (when it parses).
struct Item {
    delivery: Delivery,
    trigger: Result<TriggerEnvelope, String>,
}

impl Item {
    fn new(delivery: Delivery) -> Self {
        let trigger = codec::decode_trigger(&delivery.message).map_err(|e| e.to_string());
        Self { delivery, trigger }
    }

    fn is_get(&self) -> bool {
        matches!(&self.trigger, Ok(t) if matches!(t.trigger, Trigger::Order(_)))
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
        }
        match next_work(first, &mut pending) {
            Work::Fetch(first, rest) => process_gets(&shared, first, rest).await,
            Work::One(item) => process_one(&shared, item).await,
        }
    }
}

/// What a lane does next.
enum Work {
    /// One fetch for these GET triggers of one order.
    Fetch(Item, Vec<Item>),
    /// An event trigger (or one that does not decode).
    One(Item),
}

/// The work `first` starts: a GET takes the coalescable GETs from `pending` with it.
fn next_work(first: Item, pending: &mut VecDeque<Item>) -> Work {
    if first.is_get() {
        let rest = take_coalescable(&first, pending);
        Work::Fetch(first, rest)
    } else {
        Work::One(first)
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
    let Trigger::Order(order) = &trigger.trigger else {
        return Err(Failure::Poison(
            "an event trigger cannot be fetched".to_owned(),
        ));
    };
    let mut backoff = shared.backoff.clone();
    loop {
        let result = match order {
            OrderRef::V2(id) => shared.client.get_order(id.as_str()).await,
            OrderRef::Legacy(id) => shared.client.get_legacy_order(id.as_str()).await,
        };
        match result {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.is_transient() => {
                tcb_telemetry::metrics::retry("fetch");
                tracing::warn!(trigger_id = %trigger.id, error = %e, retry_in_ms = backoff.base().as_millis() as u64, "fetching the order failed; retrying");
                if !backoff.wait(&shared.cancel).await {
                    return Err(Failure::Cancelled);
                }
            }
            Err(e) => return Err(Failure::Poison(e.to_string())),
        }
    }
}

/// Publishes the output (or the dead letter), then acks the trigger. An output the broker can
/// never take (too large, not authorized, ...) is dead-lettered with that reason instead of
/// being retried.
async fn settle(shared: &Shared, item: Item, result: Result<OrderMessage, Failure>) {
    let Item { delivery, trigger } = item;
    let trigger_id = trigger
        .as_ref()
        .map(|t| t.id.to_string())
        .unwrap_or_default();
    // The output continues the trigger's trace.
    let trace = TraceParent::child_of(codec::traceparent(&delivery.message));
    let poison = |reason: String| {
        tracing::warn!(trigger_id = %trigger_id, position = %delivery.position, reason = %reason, "dead-lettering the trigger");
        codec::dead_letter(&delivery.message, &reason, &delivery.topic)
    };
    let (mut message, mut dead_lettered) = match result {
        Ok(order) => match codec::encode_order(&order, &trace.to_string()) {
            Ok(m) => (m, false),
            Err(e) => (poison(e.to_string()), true),
        },
        Err(Failure::Poison(reason)) => (poison(reason), true),
        Err(Failure::Cancelled) => return,
    };
    let topics = &shared.bus.topics;
    let mut backoff = shared.backoff.clone();
    loop {
        let topic = if dead_lettered {
            &topics.dead_letters
        } else {
            &topics.orders
        };
        let e = match shared.publisher.publish(topic, message.clone()).await {
            Ok(()) => break,
            Err(e) => e,
        };
        if !e.is_transient() && !dead_lettered {
            message = poison(format!(
                "the {topic} topic refuses the output message: {}",
                e.chain()
            ));
            dead_lettered = true;
            continue;
        }
        tcb_telemetry::metrics::retry("publish");
        if e.is_transient() {
            tracing::warn!(trigger_id = %trigger_id, error = %e.chain(), topic = %topic, retry_in_ms = backoff.base().as_millis() as u64, "publishing failed; retrying");
        } else {
            tracing::error!(trigger_id = %trigger_id, error = %e.chain(), topic = %topic, retry_in_ms = backoff.base().as_millis() as u64, "the dead-letter topic refuses the trigger; retrying until an operator fixes the topic");
        }
        if !backoff.wait(&shared.cancel).await {
            return; // unacked: delivered again after restart
        }
    }
    let end_to_end = match (&trigger, dead_lettered) {
        (Ok(t), false) => (Utc::now() - t.received_at).to_std().ok(),
        _ => None,
    };
    tcb_telemetry::metrics::trigger_settled(dead_lettered, end_to_end);
    let position = delivery.position.clone();
    let topic = if dead_lettered {
        &topics.dead_letters
    } else {
        &topics.orders
    };
    match delivery.ack().await {
        Ok(()) => {
            tracing::info!(trigger_id = %trigger_id, position = %position, topic = %topic, trace_id = %trace.trace_id_hex(), "trigger done")
        }
        Err(e) => {
            tracing::warn!(trigger_id = %trigger_id, error = %e.chain(), "ack failed; the trigger will be delivered again")
        }
    }
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
        let (message, reason) = codec::revive(&delivery.message);
        let replayed = Replayed {
            key: message.key.clone(),
            trigger_id: codec::trigger_id(&message).map(str::to_owned),
            reason,
        };
        publisher.publish(&bus.topics.triggers, message).await?;
        delivery.ack().await?;
        on_replayed(&replayed);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tcb_bus::{Acker, Message};
    use tcb_model::{EventMethod, IdKind};

    struct NoAck;

    #[async_trait::async_trait]
    impl Acker for NoAck {
        async fn ack(self: Box<Self>) -> Result<(), BusError> {
            Ok(())
        }
    }

    fn item(t: &TriggerEnvelope) -> Item {
        let message =
            codec::encode_trigger(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap();
        Item::new(Delivery::new(
            "triggers".to_owned(),
            t.id.to_string(),
            message,
            Box::new(NoAck),
        ))
    }

    fn get(order: &str) -> Item {
        item(&TriggerEnvelope::get(IdKind::OrderId, order, Utc::now()).unwrap())
    }

    fn event(order: &str) -> Item {
        let body = format!(r#"{{"eventName":"E","orderEvent":{{"orderId":"{order}"}}}}"#);
        item(&TriggerEnvelope::event(EventMethod::Post, None, body.as_bytes(), Utc::now()).unwrap())
    }

    fn keys(items: &VecDeque<Item>) -> Vec<(String, bool)> {
        items
            .iter()
            .map(|i| (i.delivery.message.key.clone(), i.is_get()))
            .collect()
    }

    #[test]
    fn one_key_always_takes_the_same_lane_and_keys_spread() {
        assert_eq!(lane_of("order-1", 16), lane_of("order-1", 16));
        let used: std::collections::BTreeSet<usize> =
            (0..200).map(|i| lane_of(&format!("o-{i}"), 16)).collect();
        assert!(
            used.len() > 12,
            "200 keys used only {} of 16 lanes",
            used.len()
        );
        assert!(used.iter().all(|&l| l < 16));
        assert_eq!(lane_of("anything", 1), 0);
    }

    #[test]
    fn gets_of_one_order_coalesce_up_to_its_next_event_and_skip_other_orders() {
        let first = get("a");
        let mut pending: VecDeque<Item> = [
            get("b"),
            get("a"),
            event("b"),
            get("a"),
            event("a"),
            get("a"),
        ]
        .into();
        let taken = take_coalescable(&first, &mut pending);
        assert_eq!(taken.len(), 2, "the two GETs of a before a's event");
        assert!(
            taken
                .iter()
                .all(|i| i.delivery.message.key == "a" && i.is_get())
        );
        assert_eq!(
            keys(&pending),
            [
                ("b".to_owned(), true),
                ("b".to_owned(), false),
                ("a".to_owned(), false),
                ("a".to_owned(), true)
            ],
            "what stays keeps its order; a's last GET must not overtake a's event"
        );
    }

    /// The fetches a lane makes for what is waiting in it (everything already looked ahead).
    fn fetches(mut pending: VecDeque<Item>) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        while let Some(first) = pending.pop_front() {
            if let Work::Fetch(first, rest) = next_work(first, &mut pending) {
                out.push((first.delivery.message.key.clone(), 1 + rest.len()));
            }
        }
        out
    }

    #[test]
    fn exact_fetch_counts() {
        let waiting: VecDeque<Item> = [
            get("a"),
            get("a"),
            get("b"),
            get("a"),
            event("b"),
            get("a"),
            event("a"),
            get("a"),
            get("b"),
            get("a"),
        ]
        .into();
        assert_eq!(
            fetches(waiting),
            [
                ("a".to_owned(), 4),
                ("b".to_owned(), 1),
                ("a".to_owned(), 2),
                ("b".to_owned(), 1)
            ],
            "a's four GETs before its event share a fetch; b's event splits b's GETs"
        );
        let all_events: VecDeque<Item> = [event("a"), event("a")].into();
        assert!(fetches(all_events).is_empty());
    }

    #[test]
    fn coalescing_is_bounded() {
        let first = get("a");
        let mut pending: VecDeque<Item> = (0..MAX_COALESCE + 5).map(|_| get("a")).collect();
        assert_eq!(take_coalescable(&first, &mut pending).len(), MAX_COALESCE);
        assert_eq!(pending.len(), 5);
    }

    #[test]
    fn an_undecodable_trigger_is_no_get() {
        let d = Delivery::new(
            "triggers".to_owned(),
            "1".to_owned(),
            Message {
                key: "a".to_owned(),
                payload: b"{}".to_vec(),
                ..Message::default()
            },
            Box::new(NoAck),
        );
        let i = Item::new(d);
        assert!(!i.is_get());
        assert!(i.trigger.is_err());
    }
}
