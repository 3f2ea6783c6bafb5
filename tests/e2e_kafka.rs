//! End to end on Kafka (a real Kafka-protocol broker: KAFKA_BOOTSTRAP, default 127.0.0.1:9092, and
//! for the broker-restart test a private tansu the test controls): ingress and workers as
//! processes, the Tradecloud simulator. A broker that is not there fails these tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/mod.rs"]
mod support;
#[path = "support/tansu.rs"]
mod tansu;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{
    Backend, Bridge, Stream, World, assert_all_delivered, collect_until, kafka_bootstrap, message,
    unique, wait_ready,
};
use tcb_model::codec::header as headers;
use tcb_model::message::Scope;
use tcb_simulator::{Webhook, orders};

fn world(bootstrap: String, ack_timeout_ms: u64) -> World {
    World::with(
        Backend::Kafka {
            bootstrap,
            prefix: unique("tcb-e2e"),
        },
        1 << 20,
        ack_timeout_ms,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_deliver_keyed_messages_with_headers_and_dead_letter_poison() {
    let world = world(kafka_bootstrap(), 5000);
    let ingress = world.start("ingress");
    let _worker = world.start("worker");
    wait_ready(&ingress, 200, Duration::from_secs(30)).await;
    let sender = world.sender(&ingress, 1);
    let v = world.sim.bump("kafka-get");
    let post = serde_json::to_vec(&orders::event(
        "kafka-post",
        4,
        "OrderLinesConfirmedBySupplier",
        "k-m1",
    ))
    .unwrap();
    let put = serde_json::to_vec(&orders::event(
        "kafka-put",
        9,
        "OrderLinesShippedByBuyer",
        "k-m2",
    ))
    .unwrap();
    let calls = [
        Webhook::GetPath("kafka-get".to_owned()),
        Webhook::GetQuery("kafka-get".to_owned()),
        Webhook::Post(post),
        Webhook::Put(put),
        Webhook::Post(
            br#"{"eventName":"OrderIssuedByBuyer","orderEvent":{"orderId":"k-bad","lines":7}}"#
                .to_vec(),
        ),
    ];
    let mut ids = Vec::new();
    for c in &calls {
        let o = sender.send(c).await;
        assert_eq!(o.status, Some(200), "{o:?}");
        ids.push(o.trigger_id.unwrap());
    }
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let got = collect_until(&mut out, Duration::from_secs(60), |d| d.len() >= 4).await;
    assert_eq!(got.len(), 4);
    for (i, scope, key) in [
        (0, Scope::FullOrder, "kafka-get"),
        (1, Scope::FullOrder, "kafka-get"),
        (2, Scope::PartialEvent, "kafka-post"),
        (3, Scope::PartialEvent, "kafka-put"),
    ] {
        let d = got
            .iter()
            .find(|d| message(d).trigger.id.to_string() == ids[i])
            .expect("delivered");
        let m = message(d);
        assert_eq!((m.scope, d.message.key.as_str()), (scope, key));
        assert_eq!(d.message.headers[headers::TRIGGER_ID], ids[i]);
        assert_eq!(d.message.headers["ce_id"], m.message_id.to_string());
        assert_eq!(d.message.headers["ce_specversion"], "1.0");
        assert!(d.message.headers[headers::TRACEPARENT].starts_with("00-"));
        if scope == Scope::FullOrder {
            assert_eq!(m.order_version, Some(v as i64));
        }
    }
    let get_positions: Vec<&str> = got
        .iter()
        .filter(|d| d.message.key == "kafka-get")
        .map(|d| d.position.as_str())
        .collect();
    let partition = |p: &str| p.split('/').next().unwrap().to_owned();
    assert_eq!(
        partition(get_positions[0]),
        partition(get_positions[1]),
        "one key, one partition"
    );

    let mut dead = bus
        .consumer(&bus.topics.dead_letters, Some("ops"))
        .await
        .unwrap();
    let dl = collect_until(&mut dead, Duration::from_secs(30), |d| !d.is_empty()).await;
    assert_eq!(dl[0].message.headers[headers::TRIGGER_ID], ids[4]);
    assert!(
        dl[0].message.headers[headers::DEAD_LETTER_REASON].contains("event body does not parse")
    );
    // An operator's tail without a group prints the orders topic from its start.
    let mut tail = world.tail("orders");
    let delivered: BTreeSet<String> = ids[..4].iter().cloned().collect();
    tail.wait_for(&delivered, Duration::from_secs(60)).await;
    tail.assert_no_panic();
}

/// The partitions a worker of `world` holds now (its admin `/metrics`).
async fn assigned(world: &World, worker: &Bridge) -> f64 {
    worker
        .metric(&format!(
            "tcb_kafka_assigned_partitions{{group=\"{}\"}}",
            world.group
        ))
        .await
}

/// The triggers a worker delivered (its admin `/metrics`).
async fn done_count(worker: &Bridge) -> f64 {
    worker
        .metric("tcb_worker_triggers_total{outcome=\"delivered\"}")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_one_group_share_the_partitions() {
    let world = world(kafka_bootstrap(), 5000);
    let ingress = world.start("ingress");
    let a = world.start("worker");
    let b = world.start("worker");
    // Both members hold half of the 4 partitions before any trigger is sent.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(assigned(&world, &a).await == 2.0 && assigned(&world, &b).await == 2.0) {
        assert!(
            Instant::now() < deadline,
            "the group did not settle: a={} b={}",
            assigned(&world, &a).await,
            assigned(&world, &b).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_ready(&ingress, 200, Duration::from_secs(30)).await;
    let sender = world.sender(&ingress, 1);
    let mut accepted = BTreeSet::new();
    for i in 0..40 {
        let body = orders::event(
            &format!("share-{}", i % 20),
            2,
            "OrderLinesUpdatedByBuyer",
            &format!("share-{i}"),
        );
        let o = sender
            .send(&Webhook::Post(serde_json::to_vec(&body).unwrap()))
            .await;
        assert!(o.accepted(), "{o:?}");
        accepted.insert(o.trigger_id.unwrap());
    }
    // GETs: both workers fetch, each at its share (2 of 4 partitions: half the rate).
    for i in 0..30 {
        let o = sender
            .send(&Webhook::GetPath(format!("share-get-{i}")))
            .await;
        assert!(o.accepted(), "{o:?}");
        accepted.insert(o.trigger_id.unwrap());
    }
    assert_all_delivered(&world, &accepted).await;
    let api = world.sim.stats();
    assert_eq!(api.rate_limited, 0, "no 429 from Tradecloud: {api:?}");
    assert!(
        api.max_per_second <= 10,
        "together at most the configured 10 requests/s: {api:?}"
    );
    let (done_a, done_b) = (done_count(&a).await, done_count(&b).await);
    assert!(
        done_a > 0.0 && done_b > 0.0,
        "both workers worked: {done_a} and {done_b}"
    );
    assert_eq!(done_a + done_b, 70.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_loses_nothing() {
    support::worker_sigkill_loses_nothing(&world(kafka_bootstrap(), 5000)).await;
}

/// The broker goes away (every connection to it reset, new ones refused) and comes back. A private
/// broker behind a proxy stands in for a broker restart: tansu's durable (SQLite) storage panics
/// on the idempotent producer's first write after a restart, and its memory storage would lose
/// the acknowledged triggers with the process (see docs/kafka.md, "Tests").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_gives_503_and_stays_ready_then_recovers() {
    let broker_port = tansu::free_port();
    let proxy =
        proxy::Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], broker_port))).await;
    let _broker = tansu::Tansu::start(broker_port, proxy.addr.port());
    let world = world(proxy.addr.to_string(), 2000);
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(30)).await;
    let stream = Stream::start(world.sender(&bridge, 1), "kstop");
    stream.advance(10).await;
    support::outage(&bridge, &stream, 2, || proxy.cut(), || proxy.restore()).await;
    let accepted = stream.finish().await;
    assert_all_delivered(&world, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_900_kb_event_is_delivered() {
    let world = world(kafka_bootstrap(), 5000);
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(30)).await;
    let mut body = orders::event("kafka-big", 2, "OrderLinesUpdatedByBuyer", "big-1");
    body.get_mut("orderEvent")
        .and_then(|e| e.get_mut("buyerOrder"))
        .unwrap()
        .set(
            "description",
            tcb_model::json::Json::String("x".repeat(900_000)),
        );
    let body = serde_json::to_vec(&body).unwrap();
    assert!(body.len() > 900_000, "{}", body.len());
    let o = world.sender(&bridge, 1).send(&Webhook::Post(body)).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let got = collect_until(&mut out, Duration::from_secs(60), |d| !d.is_empty()).await;
    let m = message(&got[0]);
    assert_eq!(m.trigger.id.to_string(), o.trigger_id.unwrap());
    assert_eq!(
        m.original["orderEvent"]["buyerOrder"]["description"]
            .as_str()
            .map(str::len),
        Some(900_000)
    );
}

/// One order failing for ever among 50 that flow, Tradecloud down for 15 s, the credentials
/// revoked and restored: every trigger answered 200 ends delivered or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing() {
    let world = world(kafka_bootstrap(), 5000);
    support::faults_lose_nothing(&world, Duration::from_secs(15)).await;
}

/// The pipeline bench on Kafka: the ceiling, the minimal rdkafka producer and the bridge in one
/// run, every accepted trigger published (end to end, and by the worker draining a backlog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_bench_prints_the_bridge_beside_both_baselines() {
    support::bench_pipeline_on(
        "--kafka",
        &kafka_bootstrap(),
        "kafka",
        &["minimal rdkafka producer (idempotent, acks=all)"],
    )
    .await;
}
