//! Prometheus metrics. Every metric the bridge emits is named here, once; `docs/metrics.md` is the
//! reference. Served as text on the admin listener's `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Webhook requests answered, by HTTP status (`status`).
pub const INGRESS_REQUESTS: &str = "tcb_ingress_requests_total";
/// Time from a webhook request to the broker's acknowledgement of its trigger.
pub const INGRESS_ACK_SECONDS: &str = "tcb_ingress_ack_seconds";
/// Requests refused with a 4xx, by reason (the error code of the answer's body).
pub const INGRESS_REFUSED: &str = "tcb_ingress_refused_total";
/// Every reason a webhook is refused with a 4xx, exported at 0 from the start.
pub const REFUSAL_REASONS: [&str; 8] = [
    "unauthorized",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "unsupported_encoding",
    "other",
];
/// Triggers the worker settled, by `outcome`: `delivered` (order message published) or
/// `dead_lettered`.
pub const WORKER_TRIGGERS: &str = "tcb_worker_triggers_total";
/// Time from a trigger's receipt at the ingress to its order message being confirmed.
pub const WORKER_END_TO_END_SECONDS: &str = "tcb_worker_end_to_end_seconds";
/// Retries after transient failures, by `what`: `fetch` (Tradecloud API) or `publish` (the bus).
pub const WORKER_RETRIES: &str = "tcb_worker_retries_total";

/// 1 while the worker pauses behind a circuit breaker, by `breaker` (`tradecloud`, `bus`).
pub const WORKER_PAUSED: &str = "tcb_worker_paused";
/// Triggers the worker holds (received, not yet settled).
pub const WORKER_HELD: &str = "tcb_worker_held_triggers";
/// When the worker last made progress (an attempt ended, a trigger settled), Unix seconds.
pub const WORKER_LAST_PROGRESS: &str = "tcb_worker_last_progress_timestamp_seconds";
/// Triggers dead-lettered, by `reason` (the class: `undecodable`, `invalid_event`,
/// `invalid_order`, `not_found`, `rejected`, `retries_exhausted`, `output_refused`).
pub const WORKER_DEAD_LETTERS: &str = "tcb_worker_dead_letters_total";
/// Triggers that repeated a Tradecloud message (`meta.messageId`) already published: acked
/// without publishing.
pub const WORKER_DUPLICATES: &str = "tcb_worker_duplicates_total";
/// Triggers being worked on now (taken from the queue, not yet settled or abandoned).
pub const WORKER_IN_FLIGHT: &str = "tcb_worker_in_flight_triggers";
/// Triggers waiting out a back-off before their next attempt.
pub const WORKER_WAITING_FOR_RETRY: &str = "tcb_worker_waiting_for_retry_triggers";
/// Messages on the triggers topic this worker has not consumed yet, by `topic` (Kafka: the
/// consumer group's lag over the partitions it holds, from librdkafka's statistics; RabbitMQ: the
/// queue's ready messages; embedded: pending messages).
pub const WORKER_CONSUMER_LAG: &str = "tcb_worker_consumer_lag_messages";
/// Triggers dead-lettered after their retries ran out, by `what` (`fetch`, `publish`).
pub const WORKER_EXHAUSTED: &str = "tcb_worker_retries_exhausted_total";

/// Requests to Tradecloud's API, by `kind` ([`TRADECLOUD_KINDS`]) and `status`
/// ([`TRADECLOUD_STATUSES`]: the class of the answer, `429` apart, `error` without an answer).
pub const TRADECLOUD_REQUESTS: &str = "tcb_tradecloud_requests_total";
/// How long a Tradecloud request took (send to answer head), by `kind`.
pub const TRADECLOUD_REQUEST_SECONDS: &str = "tcb_tradecloud_request_seconds";
/// How long a request waited for its turn under the rate limit (the pacer).
pub const TRADECLOUD_PACER_WAIT_SECONDS: &str = "tcb_tradecloud_pacer_wait_seconds";
pub const TRADECLOUD_KINDS: [&str; 4] = ["login", "refresh", "order", "legacy_order"];
pub const TRADECLOUD_STATUSES: [&str; 5] = ["2xx", "4xx", "429", "5xx", "error"];
/// 1, labelled with the build's `version`.
pub const BUILD_INFO: &str = "tcb_build_info";

/// 1 while `/readyz` would answer 200, by `part` (`webhooks` for a process serving webhooks,
/// `worker` for a worker-only one); evaluated at each scrape.
pub const READY: &str = "tcb_ready";
/// The statuses the ingress answers with, exported at 0 from the start.
pub const INGRESS_STATUSES: [u16; 9] = [200, 400, 401, 404, 405, 413, 415, 429, 503];

/// Kafka partitions a consumer group member holds now, by `group` (0 while none are assigned).
pub const KAFKA_ASSIGNED_PARTITIONS: &str = "tcb_kafka_assigned_partitions";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; `None` if another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
                .inspect(|_| {
                    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
                })
        })
        .as_ref()
}

/// Whether the process is ready for `part` (`webhooks`, `worker`), as `/readyz` found it.
pub fn ready(part: &'static str, ready: bool) {
    metrics::gauge!(READY, "part" => part).set(if ready { 1.0 } else { 0.0 });
}

/// A webhook request was answered with `status`.
pub fn ingress_request(status: u16) {
    metrics::counter!(INGRESS_REQUESTS, "status" => status.to_string()).increment(1);
}

/// A Tradecloud request of `kind` answered with `status` (`None`: no answer) after `elapsed`.
pub fn tradecloud_request(kind: &'static str, status: Option<u16>, elapsed: Duration) {
    let class = match status {
        None => "error",
        Some(429) => "429",
        Some(s) if s < 300 => "2xx",
        Some(s) if s < 500 => "4xx",
        Some(_) => "5xx",
    };
    metrics::counter!(TRADECLOUD_REQUESTS, "kind" => kind, "status" => class).increment(1);
    metrics::histogram!(TRADECLOUD_REQUEST_SECONDS, "kind" => kind).record(elapsed.as_secs_f64());
}

/// A Tradecloud request waited `waited` for the rate limit.
pub fn tradecloud_paced(waited: Duration) {
    metrics::histogram!(TRADECLOUD_PACER_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// Registers the Tradecloud series at 0, so they are there before the first request.
pub fn tradecloud_registered() {
    let _ = handle();
    for kind in TRADECLOUD_KINDS {
        for status in TRADECLOUD_STATUSES {
            metrics::counter!(TRADECLOUD_REQUESTS, "kind" => kind, "status" => status).increment(0);
        }
        let _ = metrics::histogram!(TRADECLOUD_REQUEST_SECONDS, "kind" => kind);
    }
    let _ = metrics::histogram!(TRADECLOUD_PACER_WAIT_SECONDS);
}

/// The Prometheus text of every series, with the process's own (CPU, memory, open files)
/// collected just before.
pub fn render() -> String {
    let Some(h) = handle() else {
        return String::new();
    };
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    PROCESS
        .get_or_init(|| {
            let c = metrics_process::Collector::default();
            c.describe();
            c
        })
        .collect();
    h.render()
}

/// A request refused with a 4xx for `reason` (one of [`REFUSAL_REASONS`]).
pub fn ingress_refused(reason: &'static str) {
    metrics::counter!(INGRESS_REFUSED, "reason" => reason).increment(1);
}

/// Registers the ingress's series at 0 (every status it answers with, every refusal reason, the
/// ack latency), so an alert sees them before the first request.
pub fn ingress_registered() {
    // The recorder must exist first, or these writes go nowhere.
    let _ = handle();
    for reason in REFUSAL_REASONS {
        metrics::counter!(INGRESS_REFUSED, "reason" => reason).increment(0);
    }
    for status in INGRESS_STATUSES {
        metrics::counter!(INGRESS_REQUESTS, "status" => status.to_string()).increment(0);
    }
    let _ = metrics::histogram!(INGRESS_ACK_SECONDS);
}

/// The broker acknowledged a trigger `elapsed` after its request arrived.
pub fn ingress_acked(elapsed: Duration) {
    metrics::histogram!(INGRESS_ACK_SECONDS).record(elapsed.as_secs_f64());
}

/// Registers the worker's series at 0 (`reasons`: every dead-letter reason), so dashboards and
/// alerts see them before the first trigger.
pub fn worker_registered(reasons: &[&'static str]) {
    let _ = handle();
    for outcome in ["delivered", "dead_lettered"] {
        metrics::counter!(WORKER_TRIGGERS, "outcome" => outcome).increment(0);
    }
    for reason in reasons {
        metrics::counter!(WORKER_DEAD_LETTERS, "reason" => *reason).increment(0);
    }
    for what in ["fetch", "publish"] {
        metrics::counter!(WORKER_RETRIES, "what" => what).increment(0);
        metrics::counter!(WORKER_EXHAUSTED, "what" => what).increment(0);
    }
    for breaker in ["tradecloud", "bus"] {
        metrics::gauge!(WORKER_PAUSED, "breaker" => breaker).increment(0.0);
    }
    metrics::gauge!(WORKER_IN_FLIGHT).increment(0.0);
    metrics::counter!(WORKER_DUPLICATES).increment(0);
    metrics::gauge!(WORKER_WAITING_FOR_RETRY).increment(0.0);
    metrics::gauge!(WORKER_HELD).increment(0.0);
    let _ = metrics::histogram!(WORKER_END_TO_END_SECONDS);
    // Starting counts as progress: the stall alert measures from here.
    worker_progress();
}

/// A trigger repeated a Tradecloud message already published: acked, not published again.
pub fn worker_duplicate() {
    metrics::counter!(WORKER_DUPLICATES).increment(1);
}

/// A trigger was settled: delivered, or dead-lettered for `dead_letter_reason`; `end_to_end` is
/// set for delivered ones.
pub fn trigger_settled(dead_letter_reason: Option<&'static str>, end_to_end: Option<Duration>) {
    let outcome = match dead_letter_reason {
        Some(reason) => {
            metrics::counter!(WORKER_DEAD_LETTERS, "reason" => reason).increment(1);
            "dead_lettered"
        }
        None => "delivered",
    };
    metrics::counter!(WORKER_TRIGGERS, "outcome" => outcome).increment(1);
    if let Some(d) = end_to_end {
        metrics::histogram!(WORKER_END_TO_END_SECONDS).record(d.as_secs_f64());
    }
}

/// A transient failure is retried.
pub fn retry(what: &'static str) {
    metrics::counter!(WORKER_RETRIES, "what" => what).increment(1);
}

/// A Kafka consumer of `group` now holds `partitions` partitions.
pub fn kafka_assigned_partitions(group: &str, partitions: usize) {
    metrics::gauge!(KAFKA_ASSIGNED_PARTITIONS, "group" => group.to_owned()).set(partitions as f64);
}

/// A circuit breaker opened or closed.
pub fn breaker_open(breaker: &'static str, open: bool) {
    metrics::gauge!(WORKER_PAUSED, "breaker" => breaker).set(if open { 1.0 } else { 0.0 });
}

/// The worker holds `n` triggers.
pub fn worker_held(n: usize) {
    metrics::gauge!(WORKER_HELD).set(n as f64);
}

/// A trigger's retries ran out.
pub fn retries_exhausted(what: &'static str) {
    metrics::counter!(WORKER_EXHAUSTED, "what" => what).increment(1);
}

/// The worker made progress now.
pub fn worker_progress() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    metrics::gauge!(WORKER_LAST_PROGRESS).set(now);
}

/// Triggers being worked on, counted while this lives.
pub struct InFlight(usize);

impl InFlight {
    pub fn start(n: usize) -> Self {
        metrics::gauge!(WORKER_IN_FLIGHT).increment(n as f64);
        Self(n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(WORKER_IN_FLIGHT).decrement(self.0 as f64);
    }
}

/// A trigger waiting for its next attempt, counted while this lives.
pub struct WaitingForRetry(());

impl WaitingForRetry {
    pub fn start() -> Self {
        metrics::gauge!(WORKER_WAITING_FOR_RETRY).increment(1.0);
        Self(())
    }
}

impl Drop for WaitingForRetry {
    fn drop(&mut self) {
        metrics::gauge!(WORKER_WAITING_FOR_RETRY).decrement(1.0);
    }
}

/// The consumer lag of `topic` now.
pub fn consumer_lag(topic: &str, messages: u64) {
    metrics::gauge!(WORKER_CONSUMER_LAG, "topic" => topic.to_owned()).set(messages as f64);
}
