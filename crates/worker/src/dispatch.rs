//! Intake and isolation: one queue per order, worked in order (an order's events publish without
//! waiting for each other's confirms, and settle in order); at most `max_held` triggers held (at
//! most `lanes` orders fetching at once); an order waiting for a retry blocks nobody else.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tcb_bus::{Consumer, Delivery};
use tcb_model::{Enrichment, OrderRef, Trigger, TriggerEnvelope, codec};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::{Shared, WorkerError, process};

/// Most GET triggers of one order served by one fetch.
pub(crate) const MAX_COALESCE: usize = 64;

/// A delivery with its decoded trigger (when it decodes), holding one of the `max_held` slots
/// until it is settled or dropped.
pub(crate) struct Item {
    pub delivery: Delivery,
    pub trigger: Result<TriggerEnvelope, String>,
    /// The order to fetch for it: a GET trigger's, or an event's when it is enriched.
    fetch: Option<OrderRef>,
    _held: Option<Held>,
}

/// One of the worker's `max_held` slots.
pub(crate) struct Held {
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared.health.progress.release();
        tcb_telemetry::metrics::worker_held(self.shared.health.progress.held());
    }
}

impl Item {
    pub fn new(delivery: Delivery, enrichment: Enrichment) -> Self {
        let trigger = codec::decode_trigger(&delivery.message).map_err(|e| e.to_string());
        let fetch = match &trigger {
            Ok(TriggerEnvelope {
                trigger: Trigger::Order(order),
                ..
            }) => Some(order.clone()),
            Ok(TriggerEnvelope {
                trigger: Trigger::Event(event),
                ..
            }) if enrichment == Enrichment::FullOrder
                || (enrichment == Enrichment::WhenPartial && !event.carries_lines()) =>
            {
                event.order_ref()
            }
            _ => None,
        };
        Self {
            delivery,
            trigger,
            fetch,
            _held: None,
        }
    }

    /// The delivery, its decoded trigger, and its slot.
    pub fn into_parts(self) -> (Delivery, Result<TriggerEnvelope, String>, Option<Held>) {
        (self.delivery, self.trigger, self._held)
    }

    /// Whether the order is fetched for it (a GET trigger, or an enriched event).
    pub fn is_get(&self) -> bool {
        self.fetch.is_some()
    }

    /// The order fetched for it (`None` for an event published as it came).
    pub fn order_ref(&self) -> Option<&OrderRef> {
        self.fetch.as_ref()
    }
}

/// What an order's task does next.
pub(crate) enum Work {
    /// One fetch for these GET triggers of one order.
    Fetch(Item, Vec<Item>),
    /// An event trigger (or one that does not decode).
    One(Item),
}

/// The work `first` starts: a GET takes the coalescable GETs from `pending` with it.
pub(crate) fn next_work(first: Item, pending: &mut VecDeque<Item>) -> Work {
    if first.is_get() {
        let rest = take_coalescable(&first, pending);
        Work::Fetch(first, rest)
    } else {
        Work::One(first)
    }
}

/// Takes from `pending` the GET triggers naming the same order as `first` (an API v2 id and a
/// legacy id that look alike are different orders), up to the first other trigger with its key
/// (which must not be overtaken).
fn take_coalescable(first: &Item, pending: &mut VecDeque<Item>) -> Vec<Item> {
    let key = &first.delivery.message.key;
    let order = first.order_ref();
    let mut taken = Vec::new();
    let mut i = 0;
    while i < pending.len() && taken.len() < MAX_COALESCE {
        if &pending[i].delivery.message.key != key {
            i += 1;
            continue;
        }
        if pending[i].order_ref() != order {
            break;
        }
        if let Some(item) = pending.remove(i) {
            taken.push(item);
        }
    }
    taken
}

/// The queues of the orders that have work, by order key.
type Orders = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Item>>>>;

/// Consumes until cancelled; returns an error when a task panicked.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut consumer: Box<dyn Consumer>,
    max_held: usize,
) -> Result<(), WorkerError> {
    let held = Arc::new(Semaphore::new(max_held));
    let orders: Orders = Arc::default();
    let mut tasks = JoinSet::new();
    let mut backoff = shared.backoff.clone();
    let outcome = loop {
        // Reap finished order tasks; a panic ends the worker (and the process) with an error.
        let mut panicked = None;
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done
                && e.is_panic()
            {
                panicked = Some(e.to_string());
            }
        }
        if let Some(p) = panicked {
            break Err(WorkerError::Panicked(p));
        }
        let permit = tokio::select! {
            _ = shared.cancel.cancelled() => break Ok(()),
            Some(Err(e)) = tasks.join_next(), if !tasks.is_empty() => {
                if e.is_panic() {
                    break Err(WorkerError::Panicked(e.to_string()));
                }
                continue;
            }
            permit = held.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
        };
        // Waiting for the next delivery, still noticing a task that panics. The same `next`
        // future is polled until it completes (never rebuilt when a task ends), so a backend
        // that subscribes inside `next` is never interrupted half-way.
        let mut panicked = None;
        let next = {
            let next = consumer.next();
            tokio::pin!(next);
            loop {
                tokio::select! {
                    _ = shared.cancel.cancelled() => break None,
                    r = &mut next => break Some(r),
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                        if let Err(e) = done
                            && e.is_panic()
                        {
                            panicked = Some(e.to_string());
                            break None;
                        }
                    }
                }
            }
        };
        if let Some(p) = panicked {
            break Err(WorkerError::Panicked(p));
        }
        let Some(next) = next else {
            break Ok(());
        };
        let delivery = match next {
            Ok(d) => d,
            Err(e) => {
                drop(permit);
                tracing::warn!(error = %e.chain(), retry_in_ms = backoff.base().as_millis() as u64, "consuming triggers failed");
                if !backoff.wait(&shared.cancel).await {
                    break Ok(());
                }
                continue;
            }
        };
        backoff.reset();
        shared.health.progress.hold();
        tcb_telemetry::metrics::worker_held(shared.health.progress.held());
        let mut item = Item::new(delivery, shared.limits.enrichment);
        item._held = Some(Held {
            _permit: permit,
            shared: shared.clone(),
        });
        route(&shared, &orders, &mut tasks, item);
    };
    shared.cancel.cancel();
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done
            && e.is_panic()
            && outcome.is_ok()
        {
            return Err(WorkerError::Panicked(e.to_string()));
        }
    }
    outcome
}

/// Hands `item` to its order's task, starting one when the order has none.
fn route(shared: &Arc<Shared>, orders: &Orders, tasks: &mut JoinSet<()>, item: Item) {
    let key = item.delivery.message.key.clone();
    let Ok(mut map) = orders.lock() else {
        return; // poisoned only by a panic elsewhere, which ends the worker
    };
    let item = match map.get(&key) {
        Some(tx) => match tx.send(item) {
            Ok(()) => return,
            Err(mpsc::error::SendError(item)) => item,
        },
        None => item,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // A new channel's receiver is alive: this cannot fail.
    let _ = tx.send(item);
    map.insert(key.clone(), tx);
    tasks.spawn(order_task(shared.clone(), orders.clone(), key, rx));
}

/// Works one order's triggers in sequence, then ends when its queue is empty.
async fn order_task(
    shared: Arc<Shared>,
    orders: Orders,
    key: String,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    let mut pending: VecDeque<Item> = VecDeque::new();
    let mut pipeline = process::Pipeline::default();
    loop {
        while let Ok(item) = rx.try_recv() {
            pending.push_back(item);
        }
        let Some(first) = pending.pop_front() else {
            if !pipeline.is_empty() {
                pipeline.settle_oldest(&shared).await;
                continue;
            }
            // Done, unless the dispatcher sent more meanwhile (it sends under the same lock).
            let Ok(mut map) = orders.lock() else {
                return;
            };
            match rx.try_recv() {
                Ok(item) => {
                    drop(map);
                    pending.push_back(item);
                    continue;
                }
                Err(_) => {
                    map.remove(&key);
                    return;
                }
            }
        };
        if shared.cancel.is_cancelled() {
            // What is in flight settles (its confirms are on their way); the rest stays
            // unacked and is delivered again after restart.
            pipeline.drain(&shared).await;
            return;
        }
        let work = next_work(first, &mut pending);
        process::process(&shared, work, &mut pipeline).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::Utc;
    use tcb_bus::{Acker, BusError, Message};
    use tcb_model::{EventMethod, IdKind};

    struct NoAck;

    #[async_trait::async_trait]
    impl Acker for NoAck {
        async fn ack(self: Box<Self>) -> Result<(), BusError> {
            Ok(())
        }
    }

    fn item(t: &TriggerEnvelope) -> Item {
        let message = codec::encode_trigger(t).unwrap();
        Item::new(
            Delivery::new(
                "triggers".to_owned(),
                t.id.to_string(),
                message,
                Box::new(NoAck),
            ),
            Enrichment::Event,
        )
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

    /// The fetches an order's task makes for what is waiting in it (everything already looked
    /// ahead).
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
    fn a_legacy_id_that_looks_like_a_v2_id_is_another_order() {
        let legacy =
            || item(&TriggerEnvelope::get(IdKind::LegacyOrderId, "123", Utc::now()).unwrap());
        let first = get("123");
        let mut pending: VecDeque<Item> = [get("123"), legacy(), get("123")].into();
        let taken = take_coalescable(&first, &mut pending);
        assert_eq!(taken.len(), 1, "stops at the legacy GET with the same key");
        assert_eq!(pending.len(), 2);
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
        let i = Item::new(d, Enrichment::FullOrder);
        assert!(!i.is_get());
        assert!(i.trigger.is_err());
    }
}
