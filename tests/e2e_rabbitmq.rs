//! End to end on RabbitMQ (the real broker, RABBITMQ_URI): ingress and worker as processes, the
//! Tradecloud simulator, a TCP proxy to cut the broker connection, and a broker restart.
//! A broker that is not there fails these tests (scripts/services.sh starts it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use support::{
    Backend, RabbitNames, Stream, World, assert_all_delivered, collect_until, message,
    rabbitmq_uri, unique, wait_ready, wait_readyz_field,
};
use tcb_model::codec::header as headers;
use tcb_model::message::Scope;
use tcb_simulator::{Webhook, orders};

/// The tests share one broker and one of them restarts it: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbitmqctl(command: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .arg(command)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn broker_addr() -> SocketAddr {
    let uri = rabbitmq_uri();
    let host_port = uri
        .split('@')
        .next_back()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    host_port
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5672)))
}

fn with_addr(uri: &str, addr: SocketAddr) -> String {
    let (head, tail) = uri.split_once('@').unwrap();
    let vhost = tail.split_once('/').map(|(_, v)| v).unwrap_or("%2f");
    format!("{head}@{addr}/{vhost}")
}

fn world(uri: String, ack_timeout_ms: u64) -> (World, RabbitNames) {
    let prefix = unique("tcb-e2e");
    let w = World::with(
        Backend::RabbitMq {
            uri,
            prefix: prefix.clone(),
        },
        1 << 20,
        ack_timeout_ms,
    );
    (w, RabbitNames(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_deliver_every_kind_with_routing_keys_and_dead_letter_poison() {
    let _serial = SERIAL.lock().await;
    let (world, _names) = world(rabbitmq_uri(), 5000);
    let ingress = world.start("ingress");
    let worker = world.start("worker");
    wait_ready(&ingress, 200, Duration::from_secs(20)).await;
    wait_ready(&worker, 200, Duration::from_secs(20)).await;
    let sender = world.sender(&ingress, 1);
    let v = world.sim.bump("rmq-get");
    let post = serde_json::to_vec(&orders::event(
        "rmq-post",
        5,
        "OrderLinesConfirmedBySupplier",
        "rmq-m1",
    ))
    .unwrap();
    let put = serde_json::to_vec(&orders::event(
        "rmq-put",
        6,
        "OrderLinesShippedByBuyer",
        "rmq-m2",
    ))
    .unwrap();
    let poison = br#"{"eventName":"OrderIssuedByBuyer","orderEvent":{"orderId":"rmq-bad","lines":"not a list"}}"#.to_vec();
    let calls = [
        Webhook::GetPath("rmq-get".to_owned()),
        Webhook::GetQuery("rmq-get".to_owned()),
        Webhook::Post(post),
        Webhook::Put(put),
        Webhook::Post(poison),
        Webhook::GetPath("missing-rmq".to_owned()),
    ];
    let mut ids = Vec::new();
    for c in &calls {
        let o = sender.send(c).await;
        assert_eq!(o.status, Some(200), "{c:?}: {o:?}");
        ids.push(o.trigger_id.unwrap());
    }
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let got = collect_until(&mut out, Duration::from_secs(60), |d| d.len() >= 4).await;
    assert_eq!(got.len(), 4);
    let find = |id: &str| {
        got.iter()
            .find(|d| message(d).trigger.id.to_string() == id)
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    let orders_topic = bus.topics.orders.clone();
    for (i, routing, scope) in [
        (0, "order", Scope::FullOrder),
        (1, "order", Scope::FullOrder),
        (2, "OrderLinesConfirmedBySupplier", Scope::PartialEvent),
        (3, "OrderLinesShippedByBuyer", Scope::PartialEvent),
    ] {
        let d = find(&ids[i]);
        let m = message(d);
        assert_eq!(m.scope, scope);
        assert!(
            d.position
                .starts_with(&format!("{orders_topic}.{routing}#")),
            "{}",
            d.position
        );
        assert_eq!(d.message.key, m.order_id.clone().unwrap());
        assert_eq!(
            d.message.headers["ce_id"],
            m.message_id.to_string(),
            "CloudEvents come back as ce_*"
        );
        assert_eq!(d.message.headers[headers::TRIGGER_ID], ids[i]);
        assert!(d.message.headers[headers::TRACEPARENT].starts_with("00-"));
    }
    assert_eq!(message(find(&ids[0])).order_version, Some(v as i64));
    assert_eq!(
        message(find(&ids[2])).event_name.as_deref(),
        Some("OrderLinesConfirmedBySupplier")
    );

    let mut dead = bus
        .consumer(&bus.topics.dead_letters, Some("ops"))
        .await
        .unwrap();
    let dl = collect_until(&mut dead, Duration::from_secs(30), |d| d.len() >= 2).await;
    assert_eq!(dl.len(), 2);
    let reasons: Vec<_> = dl
        .iter()
        .map(|d| d.message.headers[headers::DEAD_LETTER_REASON].clone())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("event body does not parse")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not found")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_and_a_half_open_connection_give_503_then_recover_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy::Proxy::start(broker_addr()).await;
    let (world, _names) = world(with_addr(&rabbitmq_uri(), proxy.addr), 1500);
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(20)).await;
    let stream = Stream::start(world.sender(&bridge, 1), "cut");
    stream.advance(10).await;

    // A cut: connections close, new ones are refused.
    support::outage(&bridge, &stream, 5, || proxy.cut(), || proxy.restore()).await;
    // Half-open: the socket stays up, nothing passes; heartbeats (2 s) must notice.
    support::outage(
        &bridge,
        &stream,
        3,
        || proxy.blackhole(),
        || proxy.restore(),
    )
    .await;

    let accepted = stream.finish().await;
    assert!(!accepted.is_empty());
    assert_all_delivered(&world, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (world, _names) = world(rabbitmq_uri(), 1500);
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(20)).await;
    let stream = Stream::start(world.sender(&bridge, 1), "restart");
    stream.advance(10).await;
    // An operator's tail, started mid-stream: it reads the orders topic from its start and rides
    // out the restart.
    let mut tail = world.tail("orders");
    support::outage(
        &bridge,
        &stream,
        3,
        || rabbitmqctl("stop_app"),
        || rabbitmqctl("start_app"),
    )
    .await;
    let accepted = stream.finish().await;
    assert_all_delivered(&world, &accepted).await;
    tail.wait_for(&accepted, Duration::from_secs(60)).await;
    tail.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (world, _names) = world(rabbitmq_uri(), 5000);
    support::worker_sigkill_loses_nothing(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_orders_queue_pauses_the_worker_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let (world, _names) = world(rabbitmq_uri(), 5000);
    // The ERP is not consuming, and its queue holds at most 5.
    world.edit_config("[bus]\n", "[bus]\norders_max_length = 5\n");
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(20)).await;
    let sender = world.sender(&bridge, 1);
    let mut accepted = std::collections::BTreeSet::new();
    for i in 0..30 {
        let body = orders::event(
            &format!("full-{i}"),
            2,
            "OrderLinesUpdatedByBuyer",
            &format!("full-{i}"),
        );
        let o = sender
            .send(&Webhook::Post(serde_json::to_vec(&body).unwrap()))
            .await;
        assert_eq!(o.status, Some(200), "the triggers queue is healthy: {o:?}");
        accepted.insert(o.trigger_id.unwrap());
    }
    // The worker sees RabbitMQ refuse its outputs (a nack) and pauses: /readyz says so, and stays
    // 200 all the while, since this process serves webhooks and can still answer them.
    wait_readyz_field(&bridge, "worker", false, Duration::from_secs(30)).await;
    assert_eq!(bridge.readyz().await, 200);
    // The ERP catches up: every trigger arrives (none was acked before its output was taken, none
    // dead-lettered), and the worker goes on by itself.
    assert_all_delivered(&world, &accepted).await;
    wait_readyz_field(&bridge, "worker", true, Duration::from_secs(30)).await;
    let bus = world.bus().await;
    let mut dead = bus
        .consumer(&bus.topics.dead_letters, Some("ops"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), dead.next())
            .await
            .is_err(),
        "nothing dead-lettered"
    );
}

/// One order failing for ever among 50 that flow, Tradecloud down for 15 s, the credentials
/// revoked and restored: every trigger answered 200 ends delivered or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let (world, _names) = world(rabbitmq_uri(), 5000);
    support::faults_lose_nothing(&world, Duration::from_secs(15)).await;
}

/// The pipeline bench on RabbitMQ: the ceiling, the minimal lapin publisher (classic and quorum
/// queue) and the bridge in one run, every accepted trigger published. A stage's queue left
/// behind by a run that failed midway, still holding its triggers, is dropped before the run
/// (the bridge uses a queue that exists as it is): here it is full (`x-max-length` 1,
/// `reject-publish`), so a run that used it could not publish a trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_bench_prints_the_bridge_beside_both_baselines() {
    let conn = lapin::Connection::connect(&rabbitmq_uri(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let stale = "tcb-bench-e2e.triggers";
    let mut full = lapin::types::FieldTable::default();
    full.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(1),
    );
    full.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    // A stage's queue, and the minimal publisher's (a classic queue where a quorum one belongs).
    for stale in [stale, "tcb-bench-minimal-quorum"] {
        ch.queue_delete(stale.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.queue_declare(
            stale.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            full.clone(),
        )
        .await
        .unwrap();
        ch.basic_publish(
            "".into(),
            stale.into(),
            lapin::options::BasicPublishOptions::default(),
            b"left by a run that failed",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    conn.close(200, "set up".into()).await.unwrap();
    support::bench_pipeline_on(
        "--rabbitmq",
        &support::rabbitmq_uri(),
        "rabbitmq",
        &[
            "minimal lapin publisher (1 confirm channel, durable classic queue)",
            "minimal lapin publisher (1 confirm channel, quorum queue)",
        ],
    )
    .await;
}
