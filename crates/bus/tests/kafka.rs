#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Kafka backend against a real Kafka-protocol broker (KAFKA_BOOTSTRAP, default
//! 127.0.0.1:9092, started by scripts/services.sh). A missing broker fails these tests.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tcb_bus::kafka::KafkaConfig;
use tcb_bus::{BusConfig, BusError, connect};

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn config(prefix: &str, servers: &str) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: servers.to_owned(),
        security_protocol: None,
        sasl_mechanism: None,
        sasl_username: None,
        sasl_password: None,
        ssl_ca_location: None,
        properties: BTreeMap::new(),
        message_timeout_ms: 3_000,
        compression: tcb_bus::kafka::Compression::Lz4,
        create_topics: true,
        partitions: 3,
        replication_factor: 1,
        retention_hours: 24,
        max_message_bytes: 8 << 20,
        session_timeout_ms: 6_000,
        max_poll_interval_ms: 300_000,
        commit_interval_ms: 200,
        topics: topics(prefix),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keys_messages_arrive_in_order_with_headers() {
    let c = config(&unique(), &bootstrap());
    let bus = connect(&BusConfig::Kafka(c.clone())).await.unwrap();
    ready(&bus).await;
    let mut stored = Vec::new();
    for n in 0..5 {
        stored.push(
            bus.publisher()
                .publish_at(&c.topics.orders, msg("order-7", n))
                .await
                .unwrap(),
        );
    }
    // One key, one partition: consecutive offsets, as the broker reports them.
    let partition = stored[0].split(" offset ").next().unwrap().to_owned();
    assert!(partition.starts_with("partition "), "{stored:?}");
    let offsets: Vec<i64> = stored
        .iter()
        .map(|s| {
            s.strip_prefix(&format!("{partition} offset "))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        offsets,
        (offsets[0]..offsets[0] + 5).collect::<Vec<_>>(),
        "{stored:?}"
    );
    let mut consumer = bus.consumer(&c.topics.orders, Some("g1")).await.unwrap();
    for n in 0..5 {
        let d = next(&mut consumer).await;
        assert_eq!(d.message, msg("order-7", n));
        d.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_together_keep_each_keys_order() {
    let c = config(&unique(), &bootstrap());
    let bus = connect(&BusConfig::Kafka(c.clone())).await.unwrap();
    ready(&bus).await;
    enqueued_messages_keep_each_keys_order(&bus, &c.topics.orders, &["a", "b", "c"], 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_only_past_contiguous_acks() {
    let c = config(&unique(), &bootstrap());
    let bus = connect(&BusConfig::Kafka(c.clone())).await.unwrap();
    ready(&bus).await;
    for n in 0..3 {
        bus.publisher()
            .publish(&c.topics.triggers, msg("same-key", n))
            .await
            .unwrap();
    }
    {
        let mut consumer = bus.consumer(&c.topics.triggers, Some("g2")).await.unwrap();
        let d0 = next(&mut consumer).await;
        let d1 = next(&mut consumer).await;
        let d2 = next(&mut consumer).await;
        d1.ack().await.unwrap();
        d2.ack().await.unwrap();
        drop(d0); // never acked: nothing may be committed past it
    }
    let mut again = bus.consumer(&c.topics.triggers, Some("g2")).await.unwrap();
    let d = next(&mut again).await;
    assert_eq!(
        d.message.headers["n"], "0",
        "redelivered from the first unacked offset"
    );
    d.ack().await.unwrap();
    for n in 1..3 {
        let d = next(&mut again).await;
        assert_eq!(d.message.headers["n"], n.to_string());
        d.ack().await.unwrap();
    }
    drop(again); // closing commits the stored offsets
    let mut after = bus.consumer(&c.topics.triggers, Some("g2")).await.unwrap();
    bus.publisher()
        .publish(&c.topics.triggers, msg("same-key", 3))
        .await
        .unwrap();
    assert_eq!(
        next(&mut after).await.message.headers["n"],
        "3",
        "everything before was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_publishes_within_the_message_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut c = config(&unique(), &addr.to_string());
    c.message_timeout_ms = 1_000;
    let bus = connect(&BusConfig::Kafka(c.clone())).await.unwrap();
    assert!(bus.publisher().check_ready().await.is_err());
    let started = Instant::now();
    let e = bus
        .publisher()
        .publish(&c.topics.triggers, msg("k", 1))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed at the message timeout, not later: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_the_producer_is_a_permanent_error() {
    let mut c = config(&unique(), &bootstrap());
    c.max_message_bytes = 128 * 1024;
    let bus = connect(&BusConfig::Kafka(c.clone())).await.unwrap();
    let mut big = msg("k", 1);
    big.payload = vec![b'x'; 200_000];
    let e = bus
        .publisher()
        .publish(&c.topics.triggers, big)
        .await
        .unwrap_err();
    assert!(matches!(e, BusError::TooLarge { .. }), "{}", e.chain());
    assert!(!e.is_transient(), "retrying can never help: {e}");
    assert!(
        std::error::Error::source(&e).is_some(),
        "keeps librdkafka's error"
    );
}

#[test]
fn check_config_builds_the_client_without_a_broker() {
    let mut c = config(&unique(), "127.0.0.1:1");
    assert!(tcb_bus::check(&BusConfig::Kafka(c.clone())).is_ok());
    c.properties
        .insert("no.such.property".to_owned(), "1".to_owned());
    let e = tcb_bus::check(&BusConfig::Kafka(c.clone())).unwrap_err();
    assert!(e.to_string().contains("no.such.property"), "{e}");
    c.properties.clear();
    c.ssl_ca_location = Some("/nonexistent/ca.pem".into());
    let e = tcb_bus::check(&BusConfig::Kafka(c)).unwrap_err();
    assert!(e.to_string().contains("bus.ssl_ca_location"), "{e}");
}

#[test]
fn properties_may_not_override_what_the_bridge_sets() {
    let mut c = config(&unique(), "127.0.0.1:1");
    c.properties.insert("acks".to_owned(), "1".to_owned());
    c.properties
        .insert("enable.idempotence".to_owned(), "false".to_owned());
    // One of its own keys (`session_timeout_ms`): set there, not here.
    c.properties
        .insert("session.timeout.ms".to_owned(), "6000".to_owned());
    let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "properties.acks",
            "properties.enable.idempotence",
            "properties.session.timeout.ms"
        ]
    );
}

#[tokio::test]
async fn a_bad_librdkafka_property_is_a_config_error() {
    let mut c = config(&unique(), &bootstrap());
    c.properties
        .insert("no.such.property".to_owned(), "1".to_owned());
    let e = connect(&BusConfig::Kafka(c)).await.err().unwrap();
    assert!(matches!(e, BusError::Config(_)), "{e}");
    assert!(e.to_string().contains("no.such.property"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_fails_at_once_as_overloaded() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut c = config(&unique(), &addr.to_string());
    c.message_timeout_ms = 30_000;
    c.properties
        .insert("queue.buffering.max.messages".to_owned(), "1".to_owned());
    let bus = connect(&BusConfig::Kafka(c.clone())).await.unwrap();
    // Publishes wait in the one-message queue (there is no broker); the one after finds it full
    // and must fail at once instead of waiting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let publisher = bus.publisher();
    let e = loop {
        let attempt = publisher.publish(&c.topics.triggers, msg("k", 1));
        match tokio::time::timeout(Duration::from_millis(500), attempt).await {
            Ok(Err(BusError::Overloaded(m))) => break m,
            Err(_queued) => assert!(Instant::now() < deadline, "never overloaded"),
            Ok(other) => panic!("{other:?}"),
        }
    };
    assert!(e.contains("queue is full"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_are_an_error_when_the_bridge_may_not_create_them() {
    let mut c = config(&unique(), &bootstrap());
    c.create_topics = false;
    let e = connect(&BusConfig::Kafka(c.clone())).await.err().unwrap();
    assert!(matches!(e, BusError::Config(_)), "{e}");
    assert!(e.to_string().contains(&c.topics.triggers), "{e}");
    // Once they exist (created here with the defaults), the same config starts.
    c.create_topics = true;
    drop(connect(&BusConfig::Kafka(c.clone())).await.unwrap());
    c.create_topics = false;
    connect(&BusConfig::Kafka(c)).await.unwrap();
}
