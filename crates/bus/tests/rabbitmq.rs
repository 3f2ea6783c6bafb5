#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The RabbitMQ backend against the real broker (RABBITMQ_URI, default the local guest account).
//! A missing broker fails these tests: scripts/services.sh starts one.

mod common;
use common::*;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use secrecy::SecretString;
use tcb_bus::rabbitmq::{QueueType, RabbitMq, RabbitMqConfig};
use tcb_bus::{BusConfig, BusError, Message, connect};

pub fn uri() -> String {
    std::env::var("RABBITMQ_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn config(prefix: &str, queue_type: QueueType) -> RabbitMqConfig {
    RabbitMqConfig {
        uri: SecretString::from(uri()),
        heartbeat_seconds: 5,
        prefetch: 16,
        queue_type,
        exchange: format!("{prefix}.x"),
        dead_letter_exchange: format!("{prefix}.dlx"),
        delivery_limit: 3,
        single_active_consumer: true,
        orders_max_length: None,
        publish_channels: 2,
        connect_timeout_ms: 5_000,
        tail_streams: true,
        tail_stream_max_age: "1h".to_owned(),
        tail_stream_max_bytes: 16 << 20,
        topics: topics(prefix),
    }
}

/// A connection and channel of the test's own, to set up or look at the broker beside the bus.
async fn admin() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(&uri(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Deletes what a test declared.
async fn cleanup(c: &RabbitMqConfig) {
    let (conn, ch) = admin().await;
    for q in [&c.topics.triggers, &c.topics.orders, &c.topics.dead_letters] {
        for name in [q.clone(), format!("{q}.tail")] {
            let _ = ch
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for x in [&c.exchange, &c.dead_letter_exchange] {
        let _ = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// A message routed by `event` (the routing word), as the model's codec sets it.
fn event_msg(key: &str, event: Option<&str>, n: u32) -> Message {
    Message {
        routing_word: event.map(str::to_owned),
        ..msg(key, n)
    }
}

/// What a receiver sees of a message: key, headers and payload (native fields are not restored).
fn seen(m: &Message) -> (&str, &tcb_bus::Headers, &[u8]) {
    (&m.key, &m.headers, &m.payload)
}

#[tokio::test]
async fn publishes_with_confirms_and_consumes_with_headers_and_keys() {
    for queue_type in [QueueType::Quorum, QueueType::Classic] {
        let c = config(&unique(), queue_type);
        let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
        ready(&bus).await;
        let mut consumer = bus.consumer(&c.topics.orders, Some("g")).await.unwrap();
        for n in 0..3 {
            let event = (n % 2 == 0).then_some("OrderIssuedByBuyer");
            let at = bus
                .publisher()
                .publish_at(&c.topics.orders, event_msg("order-1", event, n))
                .await
                .unwrap();
            let word = event.unwrap_or("order");
            assert_eq!(at, format!("routing key {}.{word}", c.topics.orders));
        }
        for n in 0..3 {
            let d = next(&mut consumer).await;
            let expected = event_msg("order-1", (n % 2 == 0).then_some("OrderIssuedByBuyer"), n);
            assert_eq!(seen(&d.message), seen(&expected), "{queue_type:?}");
            let expected_key = if n % 2 == 0 {
                ".orders.OrderIssuedByBuyer#"
            } else {
                ".orders.order#"
            };
            assert!(d.position.contains(expected_key), "{}", d.position);
            d.ack().await.unwrap();
        }
        cleanup(&c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_together_keep_each_keys_order() {
    let c = RabbitMqConfig {
        publish_channels: 4,
        ..config(&unique(), QueueType::Quorum)
    };
    let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
    ready(&bus).await;
    enqueued_messages_keep_each_keys_order(&bus, &c.topics.orders, &["a", "b", "c"], 300).await;
    cleanup(&c).await;
}

#[tokio::test]
async fn an_unroutable_publish_is_an_error_and_an_unacked_delivery_comes_again() {
    let c = config(&unique(), QueueType::Quorum);
    let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
    ready(&bus).await;
    let p = bus.publisher();
    let e = p.publish("no-such-topic", msg("k", 1)).await.unwrap_err();
    assert!(matches!(e, BusError::Rejected { .. }), "{e}");
    assert!(e.is_transient(), "a queue can still be bound: {e}");
    p.publish(&c.topics.triggers, msg("k", 2)).await.unwrap();
    let mut consumer = bus.consumer(&c.topics.triggers, Some("w")).await.unwrap();
    let first = next(&mut consumer).await;
    assert_eq!(first.message.headers["n"], "2");
    // The consumer goes away without acking (a crashed worker): the message comes again.
    drop(first);
    drop(consumer);
    let mut consumer = bus.consumer(&c.topics.triggers, Some("w")).await.unwrap();
    let again = next(&mut consumer).await;
    assert_eq!(again.message.headers["n"], "2");
    again.ack().await.unwrap();
    cleanup(&c).await;
}

/// Triggers go to their queue by name (the default exchange), not through the topic exchange;
/// `mandatory` still holds: with the queue gone a trigger is refused, not dropped.
#[tokio::test]
async fn triggers_go_straight_to_their_queue_and_a_missing_queue_refuses_them() {
    let c = config(&unique(), QueueType::Quorum);
    let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
    ready(&bus).await;
    let p = bus.publisher();
    let sent = event_msg("order-1", Some("OrderIssuedByBuyer"), 1);
    let at = p
        .publish_at(&c.topics.triggers, sent.clone())
        .await
        .unwrap();
    assert_eq!(at, format!("queue {}", c.topics.triggers));
    let mut worker = bus.consumer(&c.topics.triggers, Some("w")).await.unwrap();
    let d = next(&mut worker).await;
    assert_eq!(seen(&d.message), seen(&sent));
    // Routed by queue name: the routing key is the queue's, not `<triggers>.<event>`.
    assert!(
        d.position.starts_with(&format!("{}#", c.topics.triggers)),
        "{}",
        d.position
    );
    d.ack().await.unwrap();
    drop(worker);
    let (conn, ch) = admin().await;
    ch.queue_delete(
        c.topics.triggers.as_str().into(),
        QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
    let e = p
        .publish(&c.topics.triggers, msg("order-1", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(e, BusError::Rejected { .. }) && e.to_string().contains("unroutable"),
        "{e}"
    );
    cleanup(&c).await;
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A user that may not publish to the default exchange (triggers go through it) gets no
/// connection that would refuse every trigger: connecting fails, and a publish says why.
#[tokio::test]
async fn a_user_who_may_not_write_to_the_default_exchange_is_not_connected_and_told_why() {
    let prefix = unique();
    let user = format!("{prefix}-user");
    let password = "probe-secret";
    rabbitmqctl(&["add_user", &user, password]);
    // Everything of the test's own names, nothing else (so not `amq.default`).
    let own = format!("^{prefix}.*");
    rabbitmqctl(&["set_permissions", "-p", "/", &user, &own, &own, &own]);
    let host = uri().rsplit('@').next().unwrap().to_owned();
    let c = RabbitMqConfig {
        uri: SecretString::from(format!("amqp://{user}:{password}@{host}")),
        ..config(&prefix, QueueType::Quorum)
    };
    let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let e = bus
            .publisher()
            .publish(&c.topics.triggers, msg("k", 1))
            .await
            .unwrap_err();
        if e.to_string().contains("amq.default") {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no reason given: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused.is_transient(), "{refused}");
    assert!(!refused.to_string().contains(password), "{refused}");
    let not_ready = bus.publisher().check_ready().await.unwrap_err();
    assert!(
        not_ready.to_string().contains("ACCESS_REFUSED"),
        "{not_ready}"
    );
    bus.publisher().close().await;
    rabbitmqctl(&["delete_user", &user]);
    cleanup(&c).await;
}

#[tokio::test]
async fn a_full_orders_queue_refuses_publishes_until_it_is_consumed() {
    let mut c = config(&unique(), QueueType::Quorum);
    c.orders_max_length = Some(2);
    let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
    ready(&bus).await;
    let p = bus.publisher();
    // A quorum queue's limit is soft (it refuses once it is over it): within a few, a nack.
    let mut accepted = 0;
    let refused = loop {
        match p.publish(&c.topics.orders, msg("k", accepted + 1)).await {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 4, "a queue limited to 2 took {accepted}");
    };
    assert!(
        matches!(refused, BusError::Rejected { .. }) && refused.is_transient(),
        "{refused}"
    );
    let mut erp = bus.consumer(&c.topics.orders, Some("erp")).await.unwrap();
    for n in 1..=accepted {
        let d = next(&mut erp).await;
        assert_eq!(d.message.headers["n"], n.to_string());
        d.ack().await.unwrap();
    }
    // Room again: the refused message goes in now.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p
        .publish(&c.topics.orders, msg("k", accepted + 1))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        next(&mut erp).await.message.headers["n"],
        (accepted + 1).to_string()
    );
    cleanup(&c).await;
}

#[tokio::test]
async fn a_queue_declared_with_other_arguments_is_used_as_it_is() {
    // An older bridge declared the triggers queue without reject-publish: RabbitMQ refuses to
    // change its arguments, and the bridge must connect all the same.
    let c = config(&unique(), QueueType::Quorum);
    let (conn, ch) = admin().await;
    let mut old = lapin::types::FieldTable::default();
    old.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        c.topics.triggers.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        old,
    )
    .await
    .unwrap();
    let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
    ready(&bus).await;
    bus.publisher()
        .publish(&c.topics.triggers, msg("k", 1))
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    cleanup(&c).await;
}

#[tokio::test]
async fn a_topic_whose_name_extends_another_gets_none_of_its_messages() {
    // The defaults: triggers `T`, dead letters `T.dead-letter`. A `T.#` binding would route
    // every dead letter back to the triggers queue, and the worker would loop on it.
    let prefix = unique();
    let mut c = config(&prefix, QueueType::Classic);
    c.topics.dead_letters = format!("{}.dead-letter", c.topics.triggers);
    let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
    ready(&bus).await;
    let p = bus.publisher();
    p.publish(&c.topics.dead_letters, event_msg("k", Some("E"), 1))
        .await
        .unwrap();
    p.publish(&c.topics.triggers, event_msg("k", Some("E"), 2))
        .await
        .unwrap();
    let mut triggers = bus.consumer(&c.topics.triggers, Some("w")).await.unwrap();
    let d = next(&mut triggers).await;
    assert_eq!(d.message.headers["n"], "2", "the dead letter stayed out");
    d.ack().await.unwrap();
    let mut dead = bus
        .consumer(&c.topics.dead_letters, Some("w"))
        .await
        .unwrap();
    assert_eq!(next(&mut dead).await.message.headers["n"], "1");
    cleanup(&c).await;
}

#[tokio::test]
async fn a_tail_reads_a_topic_from_its_start_and_takes_nothing_from_the_queue() {
    let c = config(&unique(), QueueType::Quorum);
    let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
    ready(&bus).await;
    for i in 0..5 {
        bus.publisher()
            .publish(&c.topics.orders, msg("k", i))
            .await
            .unwrap();
    }
    // Opened after the publishes: it still sees all of them, in order.
    let mut tail = bus.consumer(&c.topics.orders, None).await.unwrap();
    for i in 0..5 {
        let d = next(&mut tail).await;
        assert_eq!(d.message.headers["n"], i.to_string());
        assert_eq!(d.message.key, "k");
        d.ack().await.unwrap();
    }
    // A group consumer still gets every message from the queue.
    let mut group = bus.consumer(&c.topics.orders, Some("g")).await.unwrap();
    for i in 0..5 {
        let d = next(&mut group).await;
        assert_eq!(d.message.headers["n"], i.to_string());
        d.ack().await.unwrap();
    }
    cleanup(&c).await;
}

#[tokio::test]
async fn a_broker_that_is_not_there_is_not_ready_and_publishes_fail_fast() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut c = config(&unique(), QueueType::Classic);
    c.uri = SecretString::from(format!("amqp://guest:secret-pw@127.0.0.1:{port}/%2f"));
    let bus = connect(&BusConfig::Rabbitmq(c)).await.unwrap();
    let started = std::time::Instant::now();
    let e = bus.publisher().publish("t", msg("k", 1)).await.unwrap_err();
    assert!(
        matches!(e, BusError::Unavailable { .. }) && started.elapsed() < Duration::from_secs(1),
        "{e}"
    );
    assert!(bus.publisher().check_ready().await.is_err());
    assert!(!e.to_string().contains("secret-pw"));
}

#[test]
fn a_bad_uri_is_a_config_error_without_the_password() {
    let mut c = config("x", QueueType::Classic);
    c.uri = SecretString::from("http://user:pw-123@host".to_owned());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(async { RabbitMq::open(&c).err().unwrap() });
    assert!(matches!(e, BusError::Config(_)), "{e}");
    assert!(!e.to_string().contains("pw-123"), "{e}");
}

#[tokio::test]
async fn a_tail_is_not_held_up_by_the_prefetch() {
    let c = config(&unique(), QueueType::Classic);
    let bus = connect(&BusConfig::Rabbitmq(c.clone())).await.unwrap();
    ready(&bus).await;
    let mut tail = bus.consumer(&c.topics.orders, None).await.unwrap();
    let n = u32::from(c.prefetch) * 2 + 3;
    for i in 0..n {
        bus.publisher()
            .publish(&c.topics.orders, msg("k", i))
            .await
            .unwrap();
    }
    for i in 0..n {
        let d = next(&mut tail).await;
        assert_eq!(d.message.headers["n"], i.to_string());
        drop(d); // never acked
    }
    cleanup(&c).await;
}
