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
