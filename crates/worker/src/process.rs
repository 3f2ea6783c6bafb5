//! One unit of work: fetch (with bounded retries) or parse, normalize, publish, ack.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use tcb_model::codec::{self, DeadLetter, DeadLetterKind};
use tcb_model::{OrderRef, Output, Trigger, TriggerEnvelope};
use tcb_telemetry::{otel, spans};
use tcb_tradecloud::TradecloudError;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::dispatch::{Item, Work};
use crate::health::Pass;
use crate::{Shared, WorkerConfig};

/// How far one trigger is retried.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_attempts: u32,
    pub max_retry: Duration,
    /// The longest back-off (`retry_max_ms`), also the cap on Tradecloud's `Retry-After`.
    pub retry_max: Duration,
    pub not_found_attempts: u32,
    pub not_found_delay: Duration,
    pub publish_timeout: Duration,
    /// The order message version published.
    pub version: tcb_model::MessageVersion,
    /// Which events are published with the full order.
    pub enrichment: tcb_model::Enrichment,
}

impl From<&WorkerConfig> for Limits {
    fn from(c: &WorkerConfig) -> Self {
        Self {
            max_attempts: c.max_attempts,
            max_retry: Duration::from_secs(c.max_retry_seconds),
            retry_max: Duration::from_millis(c.retry_max_ms),
            not_found_attempts: c.not_found_attempts,
            not_found_delay: Duration::from_millis(c.not_found_delay_ms),
            publish_timeout: Duration::from_millis(c.publish_timeout_ms),
            version: c.message_version,
            enrichment: c.enrichment,
        }
    }
}

/// A trigger whose output was published already (a repeat, or an older version): counted,
/// journaled as `duplicate`, acked.
async fn not_published(
    shared: &Shared,
    delivery: tcb_bus::Delivery,
    trigger: Option<&TriggerEnvelope>,
    trigger_id: &str,
    detail: serde_json::Value,
) {
    tcb_telemetry::metrics::worker_duplicate();
    journal(
        shared,
        trigger,
        trigger_id,
        tcb_journal::Stage::Duplicate,
        |e| e.detail(detail),
    );
    if let Err(e) = delivery.ack().await {
        tracing::warn!(trigger_id = %trigger_id, error = %e.chain(), "ack failed; the trigger will be delivered again");
    }
}

pub(crate) type Versions = std::sync::Mutex<std::collections::HashMap<String, i64>>;

/// The version of `order_id` already published, when it is newer than `version`.
fn newer_published(published: &Versions, order_id: &str, version: i64) -> Option<i64> {
    published
        .lock()
        .ok()
        .and_then(|m| m.get(order_id).copied())
        .filter(|p| *p > version)
}

/// Remembers that `version` of `order_id` was published (the highest one stays).
fn note_published(published: &Versions, order_id: &str, version: i64) {
    let Ok(mut published) = published.lock() else {
        return;
    };
    // Bounded: what matters is fetches of one order that finish close together.
    if published.len() >= MAX_VERSIONS_KEPT && !published.contains_key(order_id) {
        published.clear();
    }
    let v = published.entry(order_id.to_owned()).or_insert(version);
    *v = (*v).max(version);
}

/// Orders whose last published version is kept (then the memory starts over).
const MAX_VERSIONS_KEPT: usize = 100_000;

/// Why a trigger did not become an output message.
pub(crate) enum Failure {
    /// Retrying cannot help (or the retries ran out): dead-letter it.
    Dead(DeadLetter),
    /// Shutting down: leave it unacked, it is delivered again.
    Cancelled,
}

/// What a Tradecloud error means for the trigger at hand.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Nobody's request can succeed now (credentials refused, 403): pause everything.
    Systemic,
    /// This order's request may succeed later: retry it, not before the given delay.
    Retry(Option<Duration>),
    /// Tradecloud does not know the order (yet): retry a few times, slowly.
    NotFound,
    /// It will never succeed.
    Poison,
}

pub(crate) fn classify(e: &TradecloudError) -> Class {
    match e {
        TradecloudError::Unauthorized(_) | TradecloudError::Forbidden(_) => Class::Systemic,
        TradecloudError::Config(_) => Class::Systemic,
        TradecloudError::NotFound(_) => Class::NotFound,
        TradecloudError::LegacyNotConfigured => Class::Poison,
        TradecloudError::Status { status: 403, .. } => Class::Systemic,
        TradecloudError::Status {
            status,
            retry_after,
            ..
        } if *status == 408 || *status == 429 || *status >= 500 => Class::Retry(*retry_after),
        TradecloudError::Status { .. } => Class::Poison,
        TradecloudError::Request { .. } => Class::Retry(None),
    }
}

/// The failed attempts at one trigger.
pub(crate) struct Attempts {
    count: u32,
    first: Option<(String, DateTime<Utc>, Instant)>,
    /// Time spent paused behind a breaker since the first failure: not counted in the age.
    paused: Duration,
}

impl Attempts {
    pub fn new() -> Self {
        Self {
            count: 0,
            first: None,
            paused: Duration::ZERO,
        }
    }

    /// Time spent paused (not this trigger's doing), left out of its age.
    pub fn pause(&mut self, paused: Duration) {
        if self.first.is_some() {
            self.paused += paused;
        }
    }

    pub fn fail(&mut self, error: &str) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some((error.to_owned(), Utc::now(), Instant::now()));
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether the retries ran out (by attempts or by age since the first failure).
    pub fn exhausted(&self, max_attempts: u32, max_age: Duration) -> bool {
        self.count >= max_attempts
            || self
                .first
                .as_ref()
                .is_some_and(|(_, _, at)| at.elapsed().saturating_sub(self.paused) >= max_age)
    }

    /// The dead letter after the last failure, `reason`.
    pub fn dead_letter(&self, kind: DeadLetterKind, reason: String) -> DeadLetter {
        let first_error = self
            .first
            .as_ref()
            .map(|(e, _, _)| e.clone())
            .filter(|e| *e != reason);
        DeadLetter {
            kind,
            reason,
            attempts: self.count.max(1),
            first_error,
            first_failed_at: self.first.as_ref().map(|(_, at, _)| *at),
            last_failed_at: Some(Utc::now()),
        }
    }
}

/// One of the `lanes`: held while fetching, given back while waiting (a back-off, the breaker)
/// and before publishing, so an order that waits blocks no other. An event published as it came
/// takes none: its orders are bounded by `max_held` alone.
struct Lane<'a> {
    lanes: &'a tokio::sync::Semaphore,
    permit: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl<'a> Lane<'a> {
    /// A lane not held yet: [`fetch`] takes it once the bus and Tradecloud let it fetch.
    fn idle(lanes: &'a tokio::sync::Semaphore) -> Lane<'a> {
        Self {
            lanes,
            permit: None,
        }
    }

    fn give_back(&mut self) {
        self.permit = None;
    }

    async fn retake(&mut self) -> bool {
        if self.permit.is_none() {
            self.permit = self.lanes.acquire().await.ok();
        }
        self.permit.is_some()
    }
}

/// Records what happened to `trigger` in the journal (when there is one), in the current span's
/// trace.
fn journal(
    shared: &Shared,
    trigger: Option<&TriggerEnvelope>,
    id: &str,
    stage: tcb_journal::Stage,
    build: impl FnOnce(tcb_journal::Entry) -> tcb_journal::Entry,
) {
    let Some(j) = shared.journal.get() else {
        return;
    };
    let order = trigger.and_then(|t| t.any_order_id().map(|o| o.as_str()));
    j.record(build(
        tcb_journal::Entry::new(id, stage)
            .order(order)
            .trace(&otel::trace_id(&Span::current())),
    ));
}

/// The consumer span of one trigger: it continues the trace its message carries.
fn process_span(shared: &Shared, item: &Item) -> Span {
    let delivery = &item.delivery;
    let trigger_id = match &item.trigger {
        Ok(t) => t.id.to_string(),
        Err(_) => codec::trigger_id(&delivery.message)
            .unwrap_or_default()
            .to_owned(),
    };
    let span = spans::process(
        shared.publisher.system(),
        &delivery.topic,
        &shared.group,
        &trigger_id,
        &delivery.position,
    );
    otel::set_parent(&span, otel::extract_headers(&delivery.message.headers));
    if let Ok(t) = &item.trigger {
        spans::trigger(
            &span,
            &t.id.to_string(),
            t.any_order_id().map(|id| id.as_str()),
            t.event_name().map(|n| n.as_str()),
        );
    }
    span
}

/// Normalizes in its own span; a failure is the trigger's dead letter.
fn normalize(
    source: &'static str,
    kind: DeadLetterKind,
    f: impl FnOnce() -> Result<Output, tcb_model::NormalizeError>,
) -> Result<Output, Failure> {
    let span = spans::normalize(source);
    let _entered = span.enter();
    f().map_err(|e| {
        spans::failed(&span, kind.as_str());
        Failure::Dead(DeadLetter::poison(kind, e.to_string()))
    })
}

/// Works `work` of one order. An event published as it came joins the order's `pipeline` (its
/// publish in flight while the next is worked); anything else first lets the pipeline settle,
/// and is settled before this returns.
pub(crate) async fn process(shared: &Shared, work: Work, pipeline: &mut Pipeline) {
    let _in_flight = tcb_telemetry::metrics::InFlight::start(match &work {
        Work::One(_) => 1,
        Work::Fetch(_, rest) => rest.len() + 1,
    });
    match work {
        Work::One(item) => {
            let span = process_span(shared, &item);
            async {
                let result = match &item.trigger {
                    Err(reason) => Err(Failure::Dead(DeadLetter::poison(
                        DeadLetterKind::Undecodable,
                        reason.clone(),
                    ))),
                    Ok(trigger) => normalize("event", DeadLetterKind::InvalidEvent, || {
                        Output::event(shared.limits.version, trigger, Utc::now())
                    }),
                };
                // Once shutdown has begun, nothing after what the pipeline left unacked is
                // settled (it comes again, in order).
                if result.is_err() {
                    if pipeline.drain(shared).await {
                        settle(shared, item, result).await;
                    }
                    return;
                }
                // A repeat of a message still in flight is looked up once that one is remembered.
                let repeat = item
                    .trigger
                    .as_ref()
                    .ok()
                    .and_then(|t| t.tradecloud_message_id())
                    .is_some_and(|id| shared.dedupe.is_some() && pipeline.holds(id));
                if repeat && !pipeline.drain(shared).await {
                    return;
                }
                if let Some(ready) = prepare(shared, item, result).await {
                    pipeline.push(shared, ready).await;
                }
            }
            .instrument(span)
            .await;
        }
        Work::Fetch(first, rest) => {
            if !pipeline.drain(shared).await {
                return;
            }
            let first_span = process_span(shared, &first);
            let rest: Vec<(Item, Span)> = rest
                .into_iter()
                .map(|item| {
                    let span = process_span(shared, &item);
                    (item, span)
                })
                .collect();
            // One fetch for all: it runs in the first trigger's trace and links to the others.
            let fetch_span = first_span
                .in_scope(|| spans::fetch(first.delivery.message.key.as_str(), rest.len() + 1));
            for (_, span) in &rest {
                otel::link(&fetch_span, span);
            }
            if !rest.is_empty() {
                first_span.record("tcb.coalesced", (rest.len() + 1) as i64);
                tracing::debug!(parent: &first_span, order = %first.delivery.message.key, coalesced = rest.len() + 1, "one fetch for several GET triggers");
            }
            let fetched = match (&first.trigger, first.order_ref()) {
                (Ok(trigger), Some(order)) => {
                    // A lane bounds the orders fetched from Tradecloud at once; it is given
                    // back before the outputs are published.
                    let mut lane = Lane::idle(&shared.lanes);
                    fetch(shared, trigger, order, &mut lane)
                        .instrument(fetch_span.clone())
                        .await
                }
                (Ok(_), None) => Err(Failure::Dead(DeadLetter::poison(
                    DeadLetterKind::Undecodable,
                    "no order to fetch for this trigger".to_owned(),
                ))),
                (Err(reason), _) => Err(Failure::Dead(DeadLetter::poison(
                    DeadLetterKind::Undecodable,
                    reason.clone(),
                ))),
            };
            if let Err(Failure::Dead(why)) = &fetched {
                spans::failed(&fetch_span, why.kind.as_str());
            }
            drop(fetch_span);
            for (item, span) in std::iter::once((first, first_span)).chain(rest) {
                async {
                    let result = match (&fetched, &item.trigger) {
                        // An enriched event: the full order, naming the event.
                        (
                            Ok(bytes),
                            Ok(
                                trigger @ TriggerEnvelope {
                                    trigger: Trigger::Event(_),
                                    ..
                                },
                            ),
                        ) => normalize("order", DeadLetterKind::InvalidOrder, || {
                            Output::enriched(shared.limits.version, trigger, bytes, Utc::now())
                        }),
                        (Ok(bytes), Ok(trigger)) => {
                            normalize("order", DeadLetterKind::InvalidOrder, || {
                                Output::fetched(shared.limits.version, trigger, bytes, Utc::now())
                            })
                        }
                        (Err(Failure::Dead(why)), _) => Err(Failure::Dead(why.clone())),
                        (Err(Failure::Cancelled), _) => Err(Failure::Cancelled),
                        (_, Err(reason)) => Err(Failure::Dead(DeadLetter::poison(
                            DeadLetterKind::Undecodable,
                            reason.clone(),
                        ))),
                    };
                    settle(shared, item, result).await;
                }
                .instrument(span)
                .await;
            }
        }
    }
}

/// Fetches the trigger's order: retries a transient failure with back-off up to the limits,
/// a 404 a few times slowly, and waits behind the breaker while Tradecloud refuses everyone.
async fn fetch(
    shared: &Shared,
    trigger: &TriggerEnvelope,
    order: &OrderRef,
    lane: &mut Lane<'_>,
) -> Result<Vec<u8>, Failure> {
    let key = format!("{order:?}");
    let limits = &shared.limits;
    let breaker = &shared.health.tradecloud;
    let mut backoff = shared.backoff.clone();
    let mut not_found = tcb_bus::Backoff::new(limits.not_found_delay, limits.not_found_delay * 8);
    let mut attempts = Attempts::new();
    let mut not_found_attempts = 0;
    // Successes of others seen at this trigger's last systemic-looking failure: when others
    // succeed in between, the failure is this trigger's own (e.g. a 403 for one order).
    let mut systemic_at: Option<u64> = None;
    loop {
        lane.give_back();
        let waited = Instant::now();
        // No fetch while the bus cannot take the output (its publishes probe it), nor while
        // Tradecloud fails for everyone; time paused is not counted against the trigger.
        if !shared.health.bus.wait_closed(&shared.cancel).await {
            return Err(Failure::Cancelled);
        }
        let pass = breaker
            .pass(&shared.cancel)
            .await
            .ok_or(Failure::Cancelled)?;
        if !lane.retake().await {
            return Err(Failure::Cancelled);
        }
        attempts.pause(waited.elapsed());
        let result = tokio::select! {
            _ = shared.cancel.cancelled() => return Err(Failure::Cancelled),
            r = async {
                match order {
                    OrderRef::V2(id) => shared.client.get_order(id.as_str()).await,
                    OrderRef::Legacy(id) => shared.client.get_legacy_order(id.as_str()).await,
                }
            } => r,
        };
        shared.health.progress.step();
        let e = match result {
            Ok(bytes) => {
                breaker.close();
                return Ok(bytes);
            }
            Err(e) => e,
        };
        let class = classify(&e);
        let reason = e.to_string();
        let probing = matches!(pass, Pass::Probe(_));
        // Report before the probe guard goes, so no second probe slips in.
        let own_failure = match class {
            Class::Systemic => {
                let successes = breaker.successes();
                let own = systemic_at.is_some_and(|at| successes > at);
                systemic_at = Some(successes);
                if !own {
                    if probing {
                        breaker.probe_failed(&reason);
                    } else {
                        breaker.trip(&reason);
                    }
                }
                own
            }
            Class::Retry(_) if probing => {
                // Still failing: the pause grows, and this probe counts against its trigger (one
                // order failing alone must end as a dead letter, not hold the breaker).
                breaker.probe_failed(&reason);
                true
            }
            Class::Retry(_) => !breaker.failure(&key, &reason),
            _ => {
                if probing {
                    breaker.close(); // Tradecloud answered something else: not systemic
                }
                true
            }
        };
        drop(pass);
        let delay = match class {
            Class::Poison => {
                return Err(Failure::Dead(
                    attempts.dead_letter(DeadLetterKind::Rejected, reason),
                ));
            }
            Class::NotFound => {
                not_found_attempts += 1;
                attempts.fail(&reason);
                if not_found_attempts >= limits.not_found_attempts {
                    return Err(Failure::Dead(
                        attempts.dead_letter(DeadLetterKind::NotFound, reason),
                    ));
                }
                not_found.next_delay()
            }
            // Not this trigger's fault: wait behind the breaker, uncounted.
            Class::Systemic | Class::Retry(_) if !own_failure => continue,
            Class::Systemic | Class::Retry(_) => {
                attempts.fail(&reason);
                if attempts.exhausted(limits.max_attempts, limits.max_retry) {
                    tcb_telemetry::metrics::retries_exhausted("fetch");
                    return Err(Failure::Dead(attempts.dead_letter(
                        DeadLetterKind::RetriesExhausted,
                        format!("gave up after {} attempts: {reason}", attempts.count()),
                    )));
                }
                let retry_after = match class {
                    Class::Retry(r) => r.unwrap_or_default(),
                    _ => Duration::ZERO,
                };
                // Tradecloud's Retry-After is the least wait, within the configured maximum.
                backoff.next_delay().max(retry_after.min(limits.retry_max))
            }
        };
        tcb_telemetry::metrics::retry("fetch");
        tracing::warn!(trigger_id = %trigger.id, error = %reason, attempt = attempts.count(), retry_in_ms = delay.as_millis() as u64, "fetching the order failed; retrying");
        journal(
            shared,
            Some(trigger),
            &trigger.id.to_string(),
            tcb_journal::Stage::FetchFailed,
            |e| {
                e.detail(serde_json::json!({
                    "error": reason,
                    "attempt": attempts.count(),
                    "retry_in_ms": delay.as_millis() as u64,
                }))
            },
        );
        lane.give_back();
        let _waiting = tcb_telemetry::metrics::WaitingForRetry::start();
        tokio::select! {
            _ = shared.cancel.cancelled() => return Err(Failure::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A trigger's outcome, encoded and ready to publish: its output, or its dead letter.
pub(crate) struct Ready {
    delivery: tcb_bus::Delivery,
    trigger: Result<TriggerEnvelope, String>,
    trigger_id: String,
    message: tcb_bus::Message,
    /// Why `message` is a dead letter (`None`: the output).
    dead: Option<(DeadLetterKind, String)>,
    /// A full order's id and version, remembered once published.
    full: Option<(String, i64)>,
    /// Tradecloud's message id, remembered once published (with a duplicates file).
    tradecloud_id: Option<String>,
    /// What the output says, for the journal.
    po_number: Option<String>,
    message_id: Option<String>,
    /// The trigger's slot, given back when this is dropped (settled, or left unacked).
    _held: Option<crate::dispatch::Held>,
}

impl Ready {
    /// Makes `why` the message: the trigger as a dead letter.
    fn dead_letter(&mut self, why: &DeadLetter) {
        tracing::warn!(trigger_id = %self.trigger_id, position = %self.delivery.position, reason = %why.reason, kind = why.kind.as_str(), attempts = why.attempts, "dead-lettering the trigger");
        self.message = codec::dead_letter(&self.delivery.message, why, &self.delivery.topic);
        self.dead = Some((why.kind, why.reason.clone()));
    }

    fn topic<'a>(&self, shared: &'a Shared) -> &'a str {
        let topics = &shared.bus.topics;
        if self.dead.is_some() {
            &topics.dead_letters
        } else {
            &topics.orders
        }
    }
}

/// Publishes the output (or the dead letter), then acks the trigger. An output the broker can
/// never take (too large, not authorized, ...) is dead-lettered with that reason. While the bus
/// fails transiently the bus breaker is open (readiness red, fetching paused) and the publish is
/// retried until the bus is back: no trigger is dead-lettered for the bus being down.
async fn settle(shared: &Shared, item: Item, result: Result<Output, Failure>) {
    if let Some(ready) = prepare(shared, item, result).await {
        publish(shared, ready, None).await;
    }
}

/// Everything before the publish: a repeat of a Tradecloud message or an older version of an
/// order is acked here (`None`), as is nothing on shutdown (`None`, unacked); otherwise the
/// output or the dead letter, encoded.
async fn prepare(shared: &Shared, item: Item, result: Result<Output, Failure>) -> Option<Ready> {
    let (delivery, trigger, held) = item.into_parts();
    // An undecodable trigger still has its id in the headers (journaled apart from others).
    let trigger_id = match &trigger {
        Ok(t) => t.id.to_string(),
        Err(_) => codec::trigger_id(&delivery.message)
            .unwrap_or_default()
            .to_owned(),
    };
    // A Tradecloud message already published (Tradecloud delivered it again): acked, not
    // published twice.
    let tradecloud_id = trigger
        .as_ref()
        .ok()
        .and_then(|t| t.tradecloud_message_id())
        .filter(|_| result.is_ok())
        .map(str::to_owned);
    if let (Some(dedupe), Some(id)) = (&shared.dedupe, &tradecloud_id) {
        match dedupe.seen(id).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(trigger_id = %trigger_id, tradecloud_message_id = %id, "a message Tradecloud delivered again: not published twice");
                let detail = serde_json::json!({"tradecloud_message_id": id});
                not_published(shared, delivery, trigger.as_ref().ok(), &trigger_id, detail).await;
                return None;
            }
            // Publishing once more is the safe side (at least once): the ERP de-duplicates on
            // the message's messageId.
            Err(e) => {
                tracing::warn!(trigger_id = %trigger_id, error = %e, "the duplicates file is unreadable: publishing")
            }
        }
    }
    // A full order older than one already published for it (fetches of one order can finish
    // out of order across a retry): acked, not published over the newer one.
    let full = match &result {
        Ok(out) if out.scope() == tcb_model::message::Scope::FullOrder => out
            .order_id()
            .zip(out.version())
            .map(|(id, v)| (id.to_owned(), v)),
        _ => None,
    };
    if let Some((order_id, version)) = &full {
        let newer = newer_published(&shared.published_versions, order_id, *version);
        if let Some(published) = newer {
            tracing::info!(trigger_id = %trigger_id, order_id = %order_id, version, published, "an older version of the order than one published: not published");
            let detail =
                serde_json::json!({"stale_version": version, "published_version": published});
            not_published(shared, delivery, trigger.as_ref().ok(), &trigger_id, detail).await;
            return None;
        }
    }
    // What the output will say, for the journal.
    let (po_number, message_id) = match &result {
        Ok(order) => {
            // A full order comes only from Tradecloud's API (a GET trigger).
            let fetched = order.scope() == tcb_model::message::Scope::FullOrder;
            journal(
                shared,
                trigger.as_ref().ok(),
                &trigger_id,
                tcb_journal::Stage::Fetched,
                |e| {
                    e.po_number(order.purchase_order_number())
                        .detail(serde_json::json!({
                            "source": if fetched { "tradecloud" } else { "event" },
                            "status": if fetched { Some(200) } else { None },
                            "version": order.version(),
                            "event": order.event_name(),
                            "message": order.schema_version(),
                            "warnings": order.warnings(),
                        }))
                },
            );
            (
                order.purchase_order_number().map(str::to_owned),
                Some(order.message_id().to_string()),
            )
        }
        // An event that ends as a dead letter is still found by the PO number its body names.
        Err(_) => match trigger.as_ref().map(|t| &t.trigger) {
            Ok(tcb_model::Trigger::Event(event)) => (
                tcb_model::webhook::order_hint(event.body.get().as_bytes()).1,
                None,
            ),
            _ => (None, None),
        },
    };
    let mut ready = Ready {
        delivery,
        trigger,
        trigger_id,
        message: tcb_bus::Message::default(),
        dead: None,
        full,
        tradecloud_id,
        po_number,
        message_id,
        _held: held,
    };
    match result {
        Ok(order) => match codec::encode_order(&order) {
            Ok(m) => ready.message = m,
            Err(e) => ready.dead_letter(&DeadLetter::poison(
                DeadLetterKind::InvalidOrder,
                e.to_string(),
            )),
        },
        Err(Failure::Dead(why)) => ready.dead_letter(&why),
        Err(Failure::Cancelled) => return None,
    }
    Some(ready)
}

/// Queues `ready`'s message with the broker, in a producer span that is a child of the current
/// one (its trigger's) and lasts until the returned confirm resolves.
async fn enqueue(shared: &Shared, ready: &Ready) -> Result<tcb_bus::Pending, tcb_bus::BusError> {
    let span = tcb_bus::publish_span(
        &*shared.publisher,
        ready.dead.is_some(),
        ready.topic(shared),
        &ready.message,
    );
    if let Some((kind, reason)) = &ready.dead {
        spans::dead_letter(&span, kind.as_str(), reason);
    }
    tcb_bus::enqueue_traced(
        &*shared.publisher,
        &span,
        ready.topic(shared),
        ready.message.clone(),
        shared.limits.publish_timeout,
    )
    .await
}

/// Publishes `ready` (retrying while the bus fails transiently, dead-lettering an output the
/// broker can never take), then settles it; `false` when shutdown came first (left unacked).
/// `attempt`: the outcome of a publish already made (in an order's pipeline), taken as the first
/// attempt.
async fn publish(
    shared: &Shared,
    mut ready: Ready,
    mut attempt: Option<Result<String, tcb_bus::BusError>>,
) -> bool {
    let bus = &shared.health.bus;
    let mut backoff = shared.backoff.clone();
    // Held from a failed publish until it succeeds: at most `lanes` triggers retry publishing at
    // once, so a broker that is down meets a bounded number of probes (and log lines), not one
    // per held trigger.
    let mut retrying = None;
    let position = loop {
        let published = match attempt.take() {
            Some(outcome) => outcome,
            None => {
                let published = match enqueue(shared, &ready).await {
                    Ok(confirm) => confirm.await,
                    Err(e) => Err(e),
                };
                shared.health.progress.step();
                published
            }
        };
        let e = match published {
            Ok(position) => {
                bus.close();
                break position;
            }
            Err(e) => e,
        };
        let topic = ready.topic(shared).to_owned();
        if !e.is_transient() && ready.dead.is_none() {
            ready.dead_letter(&DeadLetter::poison(
                DeadLetterKind::OutputRefused,
                format!(
                    "the {topic} topic refuses the output message: {}",
                    e.chain()
                ),
            ));
            continue;
        }
        tcb_telemetry::metrics::retry("publish");
        if e.is_transient() {
            bus.trip(&e.chain());
            tracing::warn!(trigger_id = %ready.trigger_id, error = %e.chain(), topic = %topic, retry_in_ms = backoff.base().as_millis() as u64, "publishing failed; retrying");
        } else {
            bus.trip(&format!(
                "the dead-letter topic refuses triggers: {}",
                e.chain()
            ));
            tracing::error!(trigger_id = %ready.trigger_id, error = %e.chain(), topic = %topic, "the dead-letter topic refuses the trigger; paused until an operator fixes the topic");
        }
        let waiting = tcb_telemetry::metrics::WaitingForRetry::start();
        if retrying.is_none() {
            retrying = tokio::select! {
                _ = shared.cancel.cancelled() => return false, // unacked: delivered again
                permit = shared.lanes.acquire() => permit.ok(),
            };
        }
        if !backoff.wait(&shared.cancel).await {
            return false; // unacked: delivered again after restart
        }
        drop(waiting);
    };
    drop(retrying);
    record(shared, &ready, &position).await;
    ack(ready).await;
    true
}

/// After the broker holds `ready`'s message (at `position`): counts and journals it, and
/// remembers what it published; [`ack`] comes next.
async fn record(shared: &Shared, ready: &Ready, position: &str) {
    let topic = ready.topic(shared);
    let Ready {
        trigger,
        trigger_id,
        message,
        dead,
        full,
        tradecloud_id,
        po_number,
        message_id,
        ..
    } = ready;
    let end_to_end = match (&trigger, &dead) {
        (Ok(t), None) => (Utc::now() - t.received_at).to_std().ok(),
        _ => None,
    };
    tcb_telemetry::metrics::trigger_settled(dead.as_ref().map(|(k, _)| k.as_str()), end_to_end);
    match &dead {
        None => journal(
            shared,
            trigger.as_ref().ok(),
            trigger_id,
            tcb_journal::Stage::Published,
            |e| {
                e.po_number(po_number.as_deref())
                    .message(message_id.as_deref())
                    .detail(serde_json::json!({"topic": topic, "key": message.key, "position": position}))
            },
        ),
        Some((kind, reason)) => journal(
            shared,
            trigger.as_ref().ok(),
            trigger_id,
            tcb_journal::Stage::DeadLettered,
            |e| {
                e.po_number(po_number.as_deref()).detail(
                    serde_json::json!({"topic": topic, "kind": kind.as_str(), "reason": reason, "position": position}),
                )
            },
        ),
    }
    if let (Some((order_id, version)), None) = (&full, &dead) {
        note_published(&shared.published_versions, order_id, *version);
    }
    if let (Some(dedupe), Some(id), None) = (&shared.dedupe, &tradecloud_id, &dead)
        && let Err(e) = dedupe.remember(id).await
    {
        tracing::warn!(trigger_id = %trigger_id, error = %e, "the duplicates file is not writable: a repeat of this message would be published again");
    }
}

/// Acks `ready`'s trigger (its output is published and recorded).
async fn ack(ready: Ready) {
    let Ready {
        delivery,
        trigger_id,
        ..
    } = ready;
    let position = delivery.position.clone();
    match delivery.ack().await {
        Ok(()) => {
            tracing::info!(trigger_id = %trigger_id, position = %position, "trigger done")
        }
        Err(e) => {
            tracing::warn!(trigger_id = %trigger_id, error = %e.chain(), "ack failed; the trigger will be delivered again")
        }
    }
}

/// One order's outputs published and not yet confirmed, oldest first: the order's next event is
/// published without waiting for the one before it, and they settle (and are acked) in order.
#[derive(Default)]
pub(crate) struct Pipeline {
    flight: std::collections::VecDeque<InPipeline>,
}

struct InPipeline {
    ready: Ready,
    confirm: tcb_bus::Pending,
    /// The trigger's span, where it settles.
    span: Span,
    _in_flight: tcb_telemetry::metrics::InFlight,
    /// Held while it is published ahead of an unconfirmed one of its order.
    _ahead: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Most outputs of one order published and not yet confirmed.
pub(crate) const PIPELINE_DEPTH: usize = 64;

impl Pipeline {
    pub(crate) fn is_empty(&self) -> bool {
        self.flight.is_empty()
    }

    /// Publishes `ready` behind what is in flight (in the current span, its trigger's); a dead
    /// letter, or an output the broker does not take, first lets the pipeline settle. Past
    /// [`PIPELINE_DEPTH`], or when all orders together have as many ahead as they may, the
    /// oldest settles first.
    async fn push(&mut self, shared: &Shared, ready: Ready) {
        if ready.dead.is_some() {
            if self.drain(shared).await {
                publish(shared, ready, None).await;
            }
            return;
        }
        let mut ahead = None;
        while !self.is_empty() {
            if self.flight.len() < PIPELINE_DEPTH
                && let Ok(permit) = shared.ahead.clone().try_acquire_owned()
            {
                ahead = Some(permit);
                break;
            }
            self.settle_oldest(shared).await;
        }
        if shared.cancel.is_cancelled() {
            // Unacked, with whatever settling above left unacked: delivered again in order.
            return;
        }
        match enqueue(shared, &ready).await {
            Ok(confirm) => self.flight.push_back(InPipeline {
                ready,
                confirm,
                span: Span::current(),
                _in_flight: tcb_telemetry::metrics::InFlight::start(1),
                _ahead: ahead,
            }),
            Err(e) => {
                shared.health.progress.step();
                if self.drain(shared).await {
                    publish(shared, ready, Some(Err(e))).await;
                }
            }
        }
    }

    fn holds(&self, tradecloud_id: &str) -> bool {
        self.flight
            .iter()
            .any(|p| p.ready.tradecloud_id.as_deref() == Some(tradecloud_id))
    }

    /// Waits for the oldest publish's confirm and settles it. A failed one is published again
    /// (with the usual retries and dead-lettering) and so is every output behind it that the
    /// broker stored, after it: the order's last copies must come in order (repeats are
    /// harmless: the ERP de-duplicates on `messageId`).
    pub(crate) async fn settle_oldest(&mut self, shared: &Shared) {
        let Some(oldest) = self.flight.pop_front() else {
            return;
        };
        let InPipeline {
            ready,
            confirm,
            span,
            _in_flight,
            _ahead,
        } = oldest;
        let outcome = confirm.await;
        drop(_ahead);
        shared.health.progress.step();
        if let Ok(position) = outcome {
            shared.health.bus.close();
            // Those behind it already confirmed settle with it, at once: their ids go to the
            // duplicates file in one commit.
            let mut confirmed = vec![(ready, position, span, _in_flight)];
            while let Some(next) = self.flight.front_mut() {
                match (&mut next.confirm).now_or_never() {
                    None => break,
                    Some(Err(e)) => {
                        // Settled (and published again) by the next call.
                        next.confirm = Box::pin(std::future::ready(Err(e)));
                        break;
                    }
                    Some(Ok(position)) => {
                        shared.health.progress.step();
                        if let Some(p) = self.flight.pop_front() {
                            confirmed.push((p.ready, position, p.span, p._in_flight));
                        }
                    }
                }
            }
            futures::future::join_all(confirmed.iter().map(|(ready, position, span, _)| {
                record(shared, ready, position).instrument(span.clone())
            }))
            .await;
            // Acked in order: after a crash in between, only later ones come again.
            for (ready, _, span, _in_flight) in confirmed {
                ack(ready).instrument(span).await;
            }
            return;
        }
        let behind: Vec<InPipeline> = self.flight.drain(..).collect();
        let mut again = Vec::with_capacity(behind.len());
        for p in behind {
            // One the broker stored is published again, after the failed one (counted as a
            // publish retry); one that failed too starts from its own failure.
            let own = p.confirm.await;
            shared.health.progress.step();
            if own.is_ok() {
                tcb_telemetry::metrics::retry("publish");
            }
            again.push((p.ready, own.is_err().then_some(own), p.span, p._in_flight));
        }
        if !again.is_empty() {
            tracing::warn!(parent: &span, trigger_id = %ready.trigger_id, behind = again.len(), "a publish in an order's pipeline failed: publishing it and the order's outputs behind it again, in order");
        }
        // On shutdown the first left unacked leaves all behind it unacked too: they come again
        // in order.
        if !publish(shared, ready, Some(outcome)).instrument(span).await {
            return;
        }
        for (ready, own, span, _in_flight) in again {
            if !publish(shared, ready, own).instrument(span).await {
                return;
            }
        }
    }

    /// Settles everything in flight, oldest first; `false` once shutdown has begun (what it
    /// left unacked comes again, so what comes after it must not be acked first).
    pub(crate) async fn drain(&mut self, shared: &Shared) -> bool {
        while !self.is_empty() {
            self.settle_oldest(shared).await;
        }
        !shared.cancel.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<u64>) -> TradecloudError {
        TradecloudError::Status {
            status,
            what: "GET order".to_owned(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn an_order_version_older_than_one_published_is_held_back() {
        let published = Versions::default();
        assert_eq!(newer_published(&published, "o-1", 3), None);
        note_published(&published, "o-1", 5);
        assert_eq!(
            newer_published(&published, "o-1", 3),
            Some(5),
            "older: held back"
        );
        assert_eq!(
            newer_published(&published, "o-1", 5),
            None,
            "the same version again"
        );
        assert_eq!(newer_published(&published, "o-1", 6), None, "newer");
        note_published(&published, "o-1", 4);
        assert_eq!(
            newer_published(&published, "o-1", 4),
            Some(5),
            "the highest stays"
        );
        assert_eq!(newer_published(&published, "o-2", 1), None, "per order");
        // Bounded: past the limit the memory starts over.
        for i in 0..MAX_VERSIONS_KEPT {
            note_published(&published, &format!("x-{i}"), 1);
        }
        assert!(published.lock().unwrap().len() <= MAX_VERSIONS_KEPT);
    }

    #[test]
    fn tradecloud_errors_are_classified() {
        assert_eq!(
            classify(&status(503, Some(7))),
            Class::Retry(Some(Duration::from_secs(7)))
        );
        assert_eq!(classify(&status(429, None)), Class::Retry(None));
        assert_eq!(classify(&status(408, None)), Class::Retry(None));
        assert_eq!(classify(&status(500, None)), Class::Retry(None));
        assert_eq!(classify(&status(403, None)), Class::Systemic);
        assert_eq!(classify(&status(400, None)), Class::Poison);
        assert_eq!(
            classify(&TradecloudError::Forbidden("GET order")),
            Class::Systemic
        );
        assert_eq!(
            classify(&TradecloudError::Unauthorized("login")),
            Class::Systemic
        );
        assert_eq!(
            classify(&TradecloudError::NotFound("o".to_owned())),
            Class::NotFound
        );
        assert_eq!(
            classify(&TradecloudError::LegacyNotConfigured),
            Class::Poison
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_run_out_by_count_or_by_age_and_keep_the_first_error() {
        let mut a = Attempts::new();
        assert!(!a.exhausted(3, Duration::from_secs(60)));
        a.fail("first");
        a.fail("second");
        assert!(!a.exhausted(3, Duration::from_secs(60)));
        a.fail("third");
        assert!(a.exhausted(3, Duration::from_secs(60)));
        let dl = a.dead_letter(DeadLetterKind::RetriesExhausted, "third".to_owned());
        assert_eq!((dl.attempts, dl.first_error.as_deref()), (3, Some("first")));
        let mut aged = Attempts::new();
        aged.fail("once");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(aged.exhausted(100, Duration::from_secs(60)));
        assert_eq!(
            aged.dead_letter(DeadLetterKind::NotFound, "once".to_owned())
                .first_error,
            None
        );
    }
}
