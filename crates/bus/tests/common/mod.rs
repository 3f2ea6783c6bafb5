//! Helpers shared by the bus's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tcb_bus::{Bus, Consumer, Delivery, Headers, Message, TopicsConfig};

/// A message with header `n` and a CloudEvents id.
pub fn msg(key: &str, n: u32) -> Message {
    let mut headers = Headers::new();
    headers.insert("n".to_owned(), n.to_string());
    headers.insert("ce_id".to_owned(), format!("id-{n}"));
    Message {
        key: key.to_owned(),
        headers,
        payload: format!("payload-{n}").into_bytes(),
        ..Message::default()
    }
}

/// The next delivery, within 30 s.
pub async fn next(c: &mut Box<dyn Consumer>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(30), c.next())
        .await
        .expect("a delivery within 30 s")
        .unwrap()
}

/// Waits until the bus is connected.
pub async fn ready(bus: &Bus) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = bus.publisher().check_ready().await {
        assert!(Instant::now() < deadline, "not ready: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A name no other test run uses.
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tcb-test-{}-{nanos}", std::process::id())
}

/// The three topics, named after `prefix`.
pub fn topics(prefix: &str) -> TopicsConfig {
    TopicsConfig {
        triggers: format!("{prefix}.triggers"),
        orders: format!("{prefix}.orders"),
        dead_letters: format!("{prefix}.dead"),
    }
}

/// Queues `n` messages of each of `keys` (interleaved) without awaiting a confirm, then awaits
/// the confirms; consumes them all and checks that each key's arrive in the order queued.
pub async fn enqueued_messages_keep_each_keys_order(bus: &Bus, topic: &str, keys: &[&str], n: u32) {
    let publisher = bus.publisher();
    let mut pending = Vec::new();
    for i in 0..n {
        for key in keys {
            pending.push(publisher.enqueue(topic, msg(key, i)).await.unwrap());
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    let mut consumer = bus.consumer(topic, Some("ordered")).await.unwrap();
    let mut seen: std::collections::HashMap<String, Vec<u32>> = Default::default();
    for _ in 0..n as usize * keys.len() {
        let d = next(&mut consumer).await;
        let i = d.message.headers["n"].parse().unwrap();
        seen.entry(d.message.key.clone()).or_default().push(i);
        d.ack().await.unwrap();
    }
    for key in keys {
        assert_eq!(seen[*key], (0..n).collect::<Vec<_>>(), "key {key}");
    }
}
