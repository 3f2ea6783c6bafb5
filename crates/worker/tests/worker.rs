//! The worker on the embedded bus against the Tradecloud simulator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::SecretString;
use tcb_bus::embedded::EmbeddedConfig;
use tcb_bus::{Bus, BusConfig, Delivery, Headers, Message};
use tcb_model::codec::header as headers;
use tcb_model::{IdKind, OrderMessage, TriggerEnvelope};
use tcb_simulator::{SimConfig, Simulator, orders};
use tcb_tradecloud::TradecloudConfig;
use tcb_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    bus: Bus,
    sim: Simulator,
    config: WorkerConfig,
}

async fn fixture() -> Fixture {
    // Trace context travels through the OpenTelemetry layer, as in the binary (once per process).
    let quiet = tcb_telemetry::TelemetryConfig {
        log_level: "error".to_owned(),
        ..tcb_telemetry::TelemetryConfig::default()
    };
    let _ = tcb_telemetry::init(&quiet, "test");
    let dir = tempfile::tempdir().unwrap();
    let bus = tcb_bus::connect(&BusConfig::Embedded(EmbeddedConfig::at(
        dir.path().join("b.db"),
    )))
    .await
    .unwrap();
    let c = SimConfig::default();
    let sim = Simulator::start(c.clone(), SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let config = WorkerConfig {
        group: "w".to_owned(),
        lanes: 4,
        retry_initial_ms: 20,
        retry_max_ms: 200,
        not_found_attempts: 1,
        ..WorkerConfig::new(TradecloudConfig {
            base_url: sim.base_url(),
            email: c.email,
            password: SecretString::from(c.password),
            legacy_base_url: None,
            legacy_username: None,
            legacy_password: None,
            max_requests_per_second: 10,
            max_concurrent_requests: 1,
            request_timeout_ms: 5_000,
            ca_file: None,
        })
    };
    Fixture {
        _dir: dir,
        bus,
        sim,
        config,
    }
}

impl Fixture {
    /// Puts `publisher` in front of the bus: the worker publishes through it, consumers stay
    /// on the original bus.
    fn publish_through(&mut self, publisher: std::sync::Arc<dyn tcb_bus::Publisher>) {
        let opener = self.bus.clone();
        self.bus = Bus::new(
            publisher,
            std::sync::Arc::new(ReuseOpener(opener)),
            self.bus.topics.clone(),
        );
    }

    fn start(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        let (config, bus, c) = (self.config.clone(), self.bus.clone(), cancel.clone());
        let task = tokio::spawn(async move { tcb_worker::run(&config, bus, c).await.unwrap() });
        (cancel, task)
    }

    async fn publish(&self, t: &TriggerEnvelope) {
        self.publish_raw(&t.key(), tcb_model::codec::trigger_json(t).unwrap())
            .await;
    }

    async fn publish_raw(&self, key: &str, payload: Vec<u8>) {
        let mut h = Headers::new();
        h.insert(
            headers::TRACEPARENT.to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        let m = Message {
            key: key.to_owned(),
            headers: h,
            payload,
            ..Message::default()
        };
        self.bus
            .publisher()
            .publish(&self.bus.topics.triggers, m)
            .await
            .unwrap();
    }

    async fn read(&self, topic: &str, n: usize) -> Vec<Delivery> {
        let mut c = self.bus.consumer(topic, None).await.unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.next()).await {
                Ok(d) => got.push(d.unwrap()),
                Err(_) => panic!("only {} of {n} messages on {topic}", got.len()),
            }
        }
        got
    }
}

fn get(id: &str) -> TriggerEnvelope {
    TriggerEnvelope::get(IdKind::OrderId, id, Utc::now()).unwrap()
}

fn event(id: &str, version: u64, name: &str) -> TriggerEnvelope {
    let body = serde_json::to_vec(&orders::event(
        id,
        version,
        name,
        &format!("{id}-{version}"),
    ))
    .unwrap();
    TriggerEnvelope::event(
        tcb_model::EventMethod::Post,
        Some("application/json"),
        &body,
        Utc::now(),
    )
    .unwrap()
}

fn msg(d: &Delivery) -> OrderMessage {
    serde_json::from_slice(&d.message.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_topic_with_the_reason() {
    let f = fixture().await;
    f.publish_raw("k-1", b"not an envelope".to_vec()).await;
    let bad_event = TriggerEnvelope::event(
        tcb_model::EventMethod::Post,
        None,
        br#"{"eventName":"X","orderEvent":{"orderId":"o-9","lines":"no"}}"#,
        Utc::now(),
    )
    .unwrap();
    f.publish(&bad_event).await;
    f.publish(&get("missing-order")).await;
    f.publish(&get("fine-order")).await;
    let (cancel, task) = f.start();
    let mut dead = f.read(&f.bus.topics.dead_letters, 3).await;
    // Three orders (keys) in three lanes: their dead letters may come in any order.
    let reason = |d: &Delivery| d.message.headers[headers::DEAD_LETTER_REASON].clone();
    let rank = |d: &Delivery| {
        let r = reason(d);
        if r.contains("trigger envelope does not parse") {
            0
        } else if r.contains("event body does not parse") {
            1
        } else if r.contains("not found") {
            2
        } else {
            3
        }
    };
    dead.sort_by_key(|d| rank(d));
    let ranks: Vec<u8> = dead.iter().map(rank).collect();
    assert_eq!(
        ranks,
        [0, 1, 2],
        "{:?}",
        dead.iter().map(reason).collect::<Vec<_>>()
    );
    assert_eq!(
        dead[0].message.payload, b"not an envelope",
        "the original payload is kept"
    );
    assert_eq!(
        dead[1].message.headers[headers::DEAD_LETTER_SOURCE],
        f.bus.topics.triggers
    );
    let out = f.read(&f.bus.topics.orders, 1).await;
    assert_eq!(msg(&out[0]).order_id.as_deref(), Some("fine-order"));
    cancel.cancel();
    task.await.unwrap();
    // Everything was acked: a new worker in the group gets nothing.
    let mut again = f
        .bus
        .consumer(&f.bus.topics.triggers, Some("w"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), again.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_api_failures_are_retried_not_dead_lettered() {
    let f = fixture().await;
    f.sim.fail_next(3);
    f.publish(&get("flaky-order")).await;
    let (cancel, task) = f.start();
    let out = f.read(&f.bus.topics.orders, 1).await;
    assert_eq!(msg(&out[0]).order_id.as_deref(), Some("flaky-order"));
    assert_eq!(f.sim.stats().injected_failures, 3);
    let trace = &out[0].message.headers[headers::TRACEPARENT];
    assert!(
        trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "the trace continues: {trace}"
    );
    cancel.cancel();
    task.await.unwrap();
    let mut dead = f
        .bus
        .consumer(&f.bus.topics.dead_letters, None)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), dead.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orders_triggers_stay_in_order_and_pending_gets_share_a_fetch() {
    let f = fixture().await;
    // Interleaved: two orders, events and GETs.
    let mut sent = Vec::new();
    for v in 2..8u64 {
        for order in ["seq-a", "seq-b"] {
            let t = if v % 2 == 0 {
                event(order, v, "OrderLinesUpdatedByBuyer")
            } else {
                get(order)
            };
            f.publish(&t).await;
            sent.push(t);
        }
    }
    // Ten GETs of one order waiting together.
    for _ in 0..10 {
        let t = get("hot-order");
        f.publish(&t).await;
        sent.push(t);
    }
    let (cancel, task) = f.start();
    let out = f.read(&f.bus.topics.orders, sent.len()).await;
    for order in ["seq-a", "seq-b", "hot-order"] {
        let expected: Vec<_> = sent
            .iter()
            .filter(|t| t.key() == order)
            .map(|t| t.id)
            .collect();
        let got: Vec<_> = out
            .iter()
            .filter(|d| d.message.key == order)
            .map(|d| msg(d).trigger.id)
            .collect();
        assert_eq!(got, expected, "order {order}: outputs in trigger order");
    }
    // 6 GET triggers of seq-a/seq-b (none adjacent to another GET of their order) + hot-order's
    // ten, which need at most three fetches however the lanes are scheduled.
    let fetches = f.sim.stats().order_fetches;
    assert!(fetches <= 6 + 3, "{fetches} fetches");
    let hot: Vec<_> = out
        .iter()
        .filter(|d| d.message.key == "hot-order")
        .map(msg)
        .collect();
    assert!(
        hot.iter().all(|m| m.message_id == hot[0].message_id),
        "same order version, same messageId"
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_retry_leaves_the_trigger_for_the_next_worker() {
    let f = fixture().await;
    f.sim.fail_next(u32::MAX);
    f.publish(&get("stuck-order")).await;
    let (cancel, task) = f.start();
    let end = Instant::now() + Duration::from_secs(10);
    while f.sim.stats().injected_failures < 2 {
        assert!(Instant::now() < end, "the worker never tried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops promptly")
        .unwrap();
    f.sim.fail_next(0);
    let (cancel, task) = f.start();
    let out = f.read(&f.bus.topics.orders, 1).await;
    assert_eq!(msg(&out[0]).order_id.as_deref(), Some("stuck-order"));
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replayed_after_the_fix_are_processed() {
    let mut f = fixture().await;
    // No legacy API configured: a legacy trigger is poison.
    f.publish(&TriggerEnvelope::get(IdKind::LegacyOrderId, "4711", Utc::now()).unwrap())
        .await;
    let (cancel, task) = f.start();
    let dead = f.read(&f.bus.topics.dead_letters, 1).await;
    assert!(dead[0].message.headers[headers::DEAD_LETTER_REASON].contains("legacy_base_url"));
    cancel.cancel();
    task.await.unwrap();

    // The fix: the legacy API is configured. Replay, and the worker processes it.
    f.config.tradecloud.legacy_base_url = Some(f.sim.base_url());
    f.config.tradecloud.legacy_username = Some(SimConfig::default().legacy_username);
    f.config.tradecloud.legacy_password =
        Some(SecretString::from(SimConfig::default().legacy_password));
    let mut replayed = Vec::new();
    let n = tcb_worker::replay(&f.bus, "replay", None, Duration::from_millis(500), |r| {
        replayed.push(r.clone())
    })
    .await
    .unwrap();
    assert_eq!(n, 1);
    assert!(
        replayed[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("legacy_base_url")
    );
    assert_eq!(replayed[0].key, "4711");
    let (cancel, task) = f.start();
    let out = f.read(&f.bus.topics.orders, 1).await;
    let m = msg(&out[0]);
    assert_eq!(m.legacy_order_id.as_deref(), Some("4711"));
    assert!(
        !out[0]
            .message
            .headers
            .contains_key(headers::DEAD_LETTER_REASON)
    );
    cancel.cancel();
    task.await.unwrap();
    // Replayed once: a second replay finds nothing.
    assert_eq!(
        tcb_worker::replay(&f.bus, "replay", None, Duration::from_millis(300), |_| {})
            .await
            .unwrap(),
        0
    );
}

/// Envelopes as the bridge wrote them before envelope v2 (the body base64 in a string).
const V1_EVENT: &str = include_str!("fixtures/trigger-v1-event.json");
const V1_GET: &str = include_str!("fixtures/trigger-v1-get.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_envelopes_already_on_the_bus_are_processed_and_unknown_versions_dead_lettered() {
    let f = fixture().await;
    f.publish_raw("v1-event-order", V1_EVENT.as_bytes().to_vec())
        .await;
    f.publish_raw("v1-get-order", V1_GET.as_bytes().to_vec())
        .await;
    let v9 = V1_GET
        .replace("trigger.v1", "trigger.v9")
        .replace("v1-get-order", "v9-order");
    f.publish_raw("v9-order", v9.into_bytes()).await;
    let (cancel, task) = f.start();
    let out = f.read(&f.bus.topics.orders, 2).await;
    // Two orders, worked in parallel: find each by its order id.
    let by_order = |id: &str| {
        out.iter()
            .map(msg)
            .find(|m| m.order_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no message for {id}"))
    };
    let event = by_order("v1-event-order");
    assert_eq!(event.order_id.as_deref(), Some("v1-event-order"));
    assert_eq!(
        event.event_name.as_deref(),
        Some("OrderLinesConfirmedBySupplier")
    );
    assert_eq!(event.header.purchase_order_number.as_deref(), Some("PO-V1"));
    assert_eq!(
        event.trigger.id.to_string(),
        "0193a0a4-1b2c-7d3e-8f40-5a6b7c8d9e0f"
    );
    assert_eq!(
        event.trigger.tradecloud_message_id.as_deref(),
        Some("v1-msg-1")
    );
    let fetched = by_order("v1-get-order");
    assert_eq!(fetched.order_id.as_deref(), Some("v1-get-order"));
    assert_eq!(fetched.trigger.method, "GET");
    let dead = f.read(&f.bus.topics.dead_letters, 1).await;
    let reason = &dead[0].message.headers[headers::DEAD_LETTER_REASON];
    assert!(
        reason.contains("unknown trigger envelope version \"trigger.v9\""),
        "{reason}"
    );
    cancel.cancel();
    task.await.unwrap();
}

/// Publishes like the bus, except that the orders topic fails every message with `fail` (until
/// `up`); counts the attempts per order.
struct FailingOrders {
    inner: std::sync::Arc<dyn tcb_bus::Publisher>,
    orders: String,
    fail: fn() -> tcb_bus::BusError,
    up: std::sync::atomic::AtomicBool,
    attempts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl FailingOrders {
    /// Puts it in front of `f`'s bus.
    fn install(f: &mut Fixture, fail: fn() -> tcb_bus::BusError) -> std::sync::Arc<Self> {
        let failing = std::sync::Arc::new(Self {
            inner: f.bus.publisher(),
            orders: f.bus.topics.orders.clone(),
            fail,
            up: Default::default(),
            attempts: Default::default(),
        });
        f.publish_through(failing.clone());
        failing
    }

    fn attempts(&self) -> Vec<usize> {
        self.attempts.lock().unwrap().values().copied().collect()
    }
}

#[async_trait::async_trait]
impl tcb_bus::Publisher for FailingOrders {
    async fn publish(&self, topic: &str, message: Message) -> Result<(), tcb_bus::BusError> {
        if topic == self.orders && !self.up.load(std::sync::atomic::Ordering::SeqCst) {
            *self
                .attempts
                .lock()
                .unwrap()
                .entry(message.key.clone())
                .or_default() += 1;
            return Err((self.fail)());
        }
        self.inner.publish(topic, message).await
    }
    async fn check_ready(&self) -> Result<(), tcb_bus::BusError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_the_broker_can_never_take_is_dead_lettered_not_retried_for_ever() {
    let mut f = fixture().await;
    // As Kafka refuses a message over `message.max.bytes`, or a topic the bridge may not write.
    let refusing = FailingOrders::install(&mut f, || tcb_bus::BusError::TooLarge {
        context: "Kafka: Broker: Message size too large".to_owned(),
        source: None,
    });
    f.publish(&event("huge-order", 1, "OrderIssuedByBuyer"))
        .await;
    f.publish(&event("huge-order", 2, "OrderLinesUpdatedByBuyer"))
        .await;
    let (cancel, task) = f.start();
    let dead = f.read(&f.bus.topics.dead_letters, 2).await;
    for d in &dead {
        let reason = &d.message.headers[headers::DEAD_LETTER_REASON];
        assert!(
            reason.contains("refuses the output message") && reason.contains("too large"),
            "{reason}"
        );
    }
    assert_eq!(
        refusing.attempts().iter().sum::<usize>(),
        2,
        "one attempt each, no retries"
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_down_at_most_lanes_triggers_retry_their_publish() {
    let mut f = fixture().await;
    let down = FailingOrders::install(&mut f, || tcb_bus::BusError::Unavailable {
        context: "the broker is down".to_owned(),
        source: None,
    });
    for i in 0..20 {
        f.publish(&event(&format!("down-{i}"), 1, "OrderIssuedByBuyer"))
            .await;
    }
    let (cancel, task) = f.start();
    // Every output tried once, and retries under way (back-offs of 20 to 200 ms).
    eventually(
        "20 outputs tried and 20 retries",
        Duration::from_secs(30),
        || {
            let attempts = down.attempts();
            attempts.len() == 20 && attempts.iter().sum::<usize>() >= 40
        },
    )
    .await;
    let retrying = down.attempts().iter().filter(|n| **n > 1).count();
    assert!(
        (1..=f.config.lanes).contains(&retrying),
        "{retrying} triggers retried their publish; at most lanes ({}) at once",
        f.config.lanes
    );
    // The broker back: every output published, none lost.
    down.up.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = f.read(&f.bus.topics.orders, 20).await;
    let mut keys: Vec<String> = out.iter().map(|d| d.message.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 20);
    cancel.cancel();
    task.await.unwrap();
}

/// Opens consumers on the original bus.
struct ReuseOpener(Bus);

#[async_trait::async_trait]
impl tcb_bus::ConsumerOpener for ReuseOpener {
    async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn tcb_bus::Consumer>, tcb_bus::BusError> {
        self.0.consumer(topic, group).await
    }
}

/// Waits until `f` holds, or fails with `what`.
async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing arrives on `topic` for `quiet`.
async fn nothing_on(f: &Fixture, topic: &str, quiet: Duration) {
    let mut c = f.bus.consumer(topic, None).await.unwrap();
    if let Ok(d) = tokio::time::timeout(quiet, c.next()).await {
        panic!(
            "unexpected message on {topic}: {:?}",
            d.map(|d| d.message.headers)
        );
    }
}

fn start_worker(
    f: &Fixture,
) -> (
    CancellationToken,
    std::sync::Arc<tcb_worker::WorkerHealth>,
    tokio::task::JoinHandle<()>,
) {
    let cancel = CancellationToken::new();
    let worker = tcb_worker::Worker::new(&f.config, f.bus.clone(), cancel.clone()).unwrap();
    let health = worker.health();
    let task = tokio::spawn(async move { worker.run().await.unwrap() });
    (cancel, health, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_failing_for_ever_holds_up_no_other_and_ends_as_a_dead_letter() {
    let mut f = fixture().await;
    // More attempts than the failures in a row that open the breaker: one order failing alone
    // must still end as a dead letter, not hold the worker paused.
    f.config.max_attempts = 7;
    f.sim.fail_order("stuck-order", 500);
    f.publish(&get("stuck-order")).await;
    f.publish(&event("stuck-order", 2, "OrderLinesUpdatedByBuyer"))
        .await;
    for i in 0..50 {
        f.publish(&event(&format!("flowing-{i}"), 2, "OrderIssuedByBuyer"))
            .await;
    }
    let started = Instant::now();
    let (cancel, health, task) = start_worker(&f);
    let out = f.read(&f.bus.topics.orders, 51).await;
    let flowing = out
        .iter()
        .filter(|d| d.message.key.starts_with("flowing-"))
        .count();
    assert_eq!(flowing, 50, "the 50 other orders were delivered");
    assert_eq!(
        out.last().unwrap().message.key,
        "stuck-order",
        "the stuck order's event comes only after its GET was dead-lettered (order kept)"
    );
    let dead = f.read(&f.bus.topics.dead_letters, 1).await;
    let h = &dead[0].message.headers;
    assert!(
        h[headers::DEAD_LETTER_REASON].contains("gave up after 7 attempts")
            && h[headers::DEAD_LETTER_REASON].contains("500"),
        "{h:?}"
    );
    assert_eq!(h[headers::DEAD_LETTER_ATTEMPTS], "7");
    {
        use tcb_telemetry::health::Probe;
        assert_eq!(health.unready(), None, "one order never pauses the worker");
    }
    assert!(h.contains_key(headers::DEAD_LETTER_FIRST_FAILED_AT));
    eprintln!(
        "50 orders and the stuck one settled in {:?}",
        started.elapsed()
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tradecloud_down_pauses_fetching_and_dead_letters_nothing() {
    let mut f = fixture().await;
    f.config.max_attempts = 2; // far fewer than the failures while down
    f.sim.set_down(true);
    for i in 0..12 {
        f.publish(&get(&format!("down-{i}"))).await;
    }
    let (cancel, health, task) = start_worker(&f);
    eventually("the worker pauses", Duration::from_secs(20), || {
        use tcb_telemetry::health::Probe;
        health
            .unready()
            .is_some_and(|r| r.starts_with("tradecloud:"))
    })
    .await;
    nothing_on(&f, &f.bus.topics.dead_letters, Duration::from_secs(3)).await;
    f.sim.set_down(false);
    let out = f.read(&f.bus.topics.orders, 12).await;
    assert_eq!(out.len(), 12);
    eventually("the worker resumes", Duration::from_secs(5), || {
        use tcb_telemetry::health::Probe;
        health.unready().is_none()
    })
    .await;
    nothing_on(&f, &f.bus.topics.dead_letters, Duration::from_millis(300)).await;
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_credentials_pause_without_hammering_logins_then_resume() {
    let f = fixture().await;
    f.sim.set_credentials_revoked(true);
    for i in 0..10 {
        f.publish(&get(&format!("revoked-{i}"))).await;
    }
    let (cancel, health, task) = start_worker(&f);
    eventually("the worker pauses", Duration::from_secs(10), || {
        use tcb_telemetry::health::Probe;
        health
            .unready()
            .is_some_and(|r| r.contains("refused the credentials"))
    })
    .await;
    nothing_on(&f, &f.bus.topics.dead_letters, Duration::from_secs(6)).await;
    let refused = f.sim.stats().unauthorized;
    assert!(
        refused <= 3,
        "one probe per cooldown, not a login per trigger: {refused} refused"
    );
    f.sim.set_credentials_revoked(false);
    let out = f.read(&f.bus.topics.orders, 10).await;
    assert_eq!(out.len(), 10);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_retried_a_few_times_before_it_is_a_dead_letter() {
    let mut f = fixture().await;
    f.config.not_found_attempts = 3;
    f.config.not_found_delay_ms = 50;
    f.sim.fail_order("late-order", 404);
    f.publish(&get("late-order")).await;
    f.publish(&get("missing-for-good")).await;
    let (cancel, _health, task) = start_worker(&f);
    // Tradecloud's read side catches up with the webhook.
    tokio::time::sleep(Duration::from_millis(30)).await;
    f.sim.heal_order("late-order");
    let out = f.read(&f.bus.topics.orders, 1).await;
    assert_eq!(msg(&out[0]).order_id.as_deref(), Some("late-order"));
    let dead = f.read(&f.bus.topics.dead_letters, 1).await;
    let h = &dead[0].message.headers;
    assert_eq!(dead[0].message.key, "missing-for-good");
    assert_eq!(h[headers::DEAD_LETTER_ATTEMPTS], "3");
    assert!(
        h[headers::DEAD_LETTER_REASON].contains("not found"),
        "{h:?}"
    );
    cancel.cancel();
    task.await.unwrap();
}

/// Panics on every publish.
struct Panicking;

#[async_trait::async_trait]
impl tcb_bus::Publisher for Panicking {
    async fn publish(&self, _: &str, _: Message) -> Result<(), tcb_bus::BusError> {
        panic!("a bug in a lane");
    }
    async fn check_ready(&self) -> Result<(), tcb_bus::BusError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_fails_the_worker() {
    let mut f = fixture().await;
    f.publish(&event("boom", 2, "OrderIssuedByBuyer")).await;
    let opener = f.bus.clone();
    f.bus = Bus::new(
        std::sync::Arc::new(Panicking),
        std::sync::Arc::new(ReuseOpener(opener)),
        f.bus.topics.clone(),
    );
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        tcb_worker::run(&f.config, f.bus.clone(), CancellationToken::new()),
    )
    .await
    .expect("the worker ends by itself");
    let e = result.unwrap_err();
    assert!(matches!(e, tcb_worker::WorkerError::Panicked(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_pauses_instead_of_dead_lettering_every_get() {
    let f = fixture().await;
    f.sim.set_forbidden(true);
    for i in 0..5 {
        f.publish(&get(&format!("forbidden-{i}"))).await;
    }
    let (cancel, health, task) = start_worker(&f);
    eventually("the worker pauses", Duration::from_secs(10), || {
        use tcb_telemetry::health::Probe;
        health
            .unready()
            .is_some_and(|r| r.contains("integration role"))
    })
    .await;
    nothing_on(&f, &f.bus.topics.dead_letters, Duration::from_secs(1)).await;
    f.sim.set_forbidden(false);
    assert_eq!(f.read(&f.bus.topics.orders, 5).await.len(), 5);
    cancel.cancel();
    task.await.unwrap();
}

/// Over HTTPS, the faults the real API shows (502, 504, 429 with `Retry-After`, a slow answer,
/// 500, an expired refresh token) delay a GET trigger but lose nothing: one message, and the
/// retry after the 429 waits the `Retry-After` it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_apis_faults_delay_a_trigger_but_lose_nothing() {
    use tcb_simulator::Fault;
    let mut f = fixture().await;
    let sim = Simulator::start(
        SimConfig {
            tls: true,
            ..SimConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .unwrap();
    let ca = f._dir.path().join("tradecloud-ca.pem");
    std::fs::write(&ca, sim.ca_pem().unwrap()).unwrap();
    f.config.tradecloud.base_url = sim.base_url();
    f.config.tradecloud.ca_file = Some(ca);
    f.config.tradecloud.request_timeout_ms = 500;
    f.config.retry_max_ms = 5_000;
    f.config.max_attempts = 10;
    for status in [502, 504] {
        let fault = Fault::Status {
            status,
            retry_after: None,
        };
        sim.inject(fault, 1);
    }
    sim.inject(
        Fault::Status {
            status: 429,
            retry_after: Some(2),
        },
        1,
    );
    sim.inject(Fault::Slow(Duration::from_millis(1_500)), 1);
    sim.inject(
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        1,
    );
    sim.bump("faulty-order");
    let started = Instant::now();
    f.publish(&get("faulty-order")).await;
    let (cancel, task) = f.start();
    let out = f.read(&f.bus.topics.orders, 1).await;
    let elapsed = started.elapsed();
    let m = msg(&out[0]);
    assert_eq!(m.order_id.as_deref(), Some("faulty-order"));
    assert_eq!(m.order_version, Some(2));
    // Without honouring Retry-After the back-offs and the timeout add up to about a second.
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    let stats = sim.stats();
    assert_eq!((stats.injected_failures, stats.slow_answers), (4, 1));

    // A day later: access and refresh tokens expired. The worker logs in again.
    sim.expire_access_tokens();
    sim.expire_refresh_tokens();
    sim.bump("faulty-order");
    f.publish(&get("faulty-order")).await;
    let mut c = f.bus.consumer(&f.bus.topics.orders, None).await.unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let mut versions = Vec::new();
    while !versions.contains(&Some(3)) {
        let left = end.saturating_duration_since(Instant::now());
        let d = tokio::time::timeout(left, c.next()).await.unwrap().unwrap();
        versions.push(msg(&d).order_version);
    }
    let stats = sim.stats();
    assert_eq!((stats.logins, stats.expired_refreshes), (2, 1));
    cancel.cancel();
    task.await.unwrap();
    sim.stop().await;
}

/// A broker whose confirms come later than the publish: every publish is stored at once (in
/// order) and confirmed only once a later publish is queued (or after 200 ms, so one published
/// alone is slow); the first confirm of the trigger `fail` (with `fail_always`: every one)
/// reports a failure (as a lost confirm would) although it was stored.
struct LateConfirms {
    inner: std::sync::Arc<dyn tcb_bus::Publisher>,
    orders: String,
    fail: String,
    fail_always: bool,
    queued: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    state: std::sync::Arc<std::sync::Mutex<LateState>>,
}

#[derive(Default)]
struct LateState {
    outstanding: usize,
    most_outstanding: usize,
    attempts_at_fail: usize,
}

impl LateConfirms {
    fn install(f: &mut Fixture, fail: String, fail_always: bool) -> std::sync::Arc<Self> {
        let late = std::sync::Arc::new(Self {
            inner: f.bus.publisher(),
            orders: f.bus.topics.orders.clone(),
            fail,
            fail_always,
            queued: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            state: Default::default(),
        });
        f.publish_through(late.clone());
        late
    }

    /// `n` events of `order` on the triggers topic, with the third one's confirm failing (once,
    /// or with `always` every time).
    async fn third_of(
        f: &mut Fixture,
        order: &str,
        n: u64,
        always: bool,
    ) -> (Vec<TriggerEnvelope>, std::sync::Arc<Self>) {
        let sent: Vec<TriggerEnvelope> = (1..=n)
            .map(|v| event(order, v, "OrderLinesUpdatedByBuyer"))
            .collect();
        let late = Self::install(f, sent[2].id.to_string(), always);
        for t in &sent {
            f.publish(t).await;
        }
        (sent, late)
    }
}

#[async_trait::async_trait]
impl tcb_bus::Publisher for LateConfirms {
    async fn publish(&self, topic: &str, message: Message) -> Result<(), tcb_bus::BusError> {
        self.enqueue(topic, message).await?.await.map(|_| ())
    }

    async fn enqueue(
        &self,
        topic: &str,
        message: Message,
    ) -> Result<tcb_bus::Pending, tcb_bus::BusError> {
        if topic != self.orders {
            let stored = self.inner.publish_at(topic, message).await;
            return Ok(Box::pin(std::future::ready(stored)));
        }
        let trigger = serde_json::from_slice::<OrderMessage>(&message.payload)
            .unwrap()
            .trigger
            .id
            .to_string();
        self.inner.publish(topic, message).await?;
        let fail = {
            let mut s = self.state.lock().unwrap();
            s.outstanding += 1;
            s.most_outstanding = s.most_outstanding.max(s.outstanding);
            if trigger == self.fail {
                s.attempts_at_fail += 1;
            }
            trigger == self.fail && (s.attempts_at_fail == 1 || self.fail_always)
        };
        self.queued.send_modify(|q| *q += 1);
        let this = *self.queued.borrow();
        let mut later = self.queued.subscribe();
        let state = self.state.clone();
        Ok(Box::pin(async move {
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                later.wait_for(|queued| *queued > this),
            )
            .await;
            state.lock().unwrap().outstanding -= 1;
            if fail {
                Err(tcb_bus::BusError::Unavailable {
                    context: "the confirm was lost".to_owned(),
                    source: None,
                })
            } else {
                Ok(String::new())
            }
        }))
    }

    async fn check_ready(&self) -> Result<(), tcb_bus::BusError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_events_publish_without_waiting_for_each_other_and_a_failure_keeps_their_order() {
    let mut f = fixture().await;
    // The third event's first confirm is lost, with later events of the order already published.
    let (sent, late) = LateConfirms::third_of(&mut f, "burst-order", 20, false).await;
    let (cancel, task) = f.start();
    // Every output, then the failed one again and those behind it that were stored before it
    // was confirmed: read until every event's last copy is there in order.
    let expected: Vec<_> = sent.iter().map(|t| t.id).collect();
    let mut outputs = f.bus.consumer(&f.bus.topics.orders, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    loop {
        let mut last_copies = Vec::new();
        for id in got.iter().rev() {
            if !last_copies.contains(id) {
                last_copies.insert(0, *id);
            }
        }
        let failed_again = got.iter().filter(|id| **id == sent[2].id).count() > 1;
        if last_copies == expected && failed_again {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, outputs.next()).await {
            Ok(d) => got.push(msg(&d.unwrap()).trigger.id),
            Err(_) => panic!(
                "the failed output again ({failed_again}), then every event's last copy in order: \
                 {last_copies:?}, expected {expected:?}"
            ),
        }
    }
    let (most_outstanding, attempts_at_fail) = {
        let state = late.state.lock().unwrap();
        (state.most_outstanding, state.attempts_at_fail)
    };
    assert!(
        most_outstanding > 1,
        "the order's events were published one confirm at a time"
    );
    assert_eq!(attempts_at_fail, 2, "the failed publish made again once");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_an_order_stops_at_its_first_output_not_settled() {
    let mut f = fixture().await;
    let plain = f.bus.clone();
    // The third event's publish fails for as long as the worker runs, with the events behind it
    // already published.
    let (sent, late) = LateConfirms::third_of(&mut f, "stopping-order", 12, true).await;
    let (cancel, task) = f.start();
    eventually("the third event retried", Duration::from_secs(30), || {
        late.state.lock().unwrap().attempts_at_fail >= 2
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    // Unacked, and so delivered again in order: the third event and every one behind it; the
    // first two were settled.
    let mut again = plain
        .consumer(&plain.topics.triggers, Some(&f.config.group))
        .await
        .unwrap();
    for expected in &sent[2..] {
        let d = tokio::time::timeout(Duration::from_secs(30), again.next())
            .await
            .expect("an unacked trigger delivered again")
            .unwrap();
        let got = tcb_model::codec::decode_trigger(&d.message).unwrap().id;
        assert_eq!(got, expected.id, "delivered again in order");
    }
    if let Ok(d) = tokio::time::timeout(Duration::from_millis(500), again.next()).await {
        panic!("a settled trigger came again: {:?}", d.map(|d| d.position));
    }
}
