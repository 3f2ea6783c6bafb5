#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The embedded backend against a real SQLite file.

mod common;
use common::*;
use std::time::Duration;

use tcb_bus::embedded::EmbeddedConfig;
use tcb_bus::{Bus, BusConfig, connect};

async fn open(dir: &tempfile::TempDir) -> Bus {
    connect(&BusConfig::Embedded(EmbeddedConfig::at(
        dir.path().join("q/bridge.db"),
    )))
    .await
    .unwrap()
}

/// Messages queued without waiting for each other's commit keep each key's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_together_keep_each_keys_order() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    enqueued_messages_keep_each_keys_order(&bus, "t", &["a", "b", "c"], 300).await;
}

#[tokio::test]
async fn published_messages_arrive_in_order_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let mut c = bus.consumer("t", Some("g")).await.unwrap();
    for n in 0..5 {
        bus.publisher().publish("t", msg("k", n)).await.unwrap();
    }
    bus.publisher()
        .publish("other", msg("k", 99))
        .await
        .unwrap();
    for n in 0..5 {
        let d = next(&mut c).await;
        assert_eq!(d.message, msg("k", n));
        d.ack().await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.next())
            .await
            .is_err(),
        "nothing from another topic"
    );
}

#[tokio::test]
async fn unacked_messages_are_redelivered_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = open(&dir).await;
        for n in 0..4 {
            bus.publisher().publish("t", msg("k", n)).await.unwrap();
        }
        let mut c = bus.consumer("t", Some("g")).await.unwrap();
        let d0 = next(&mut c).await;
        let d1 = next(&mut c).await;
        d1.ack().await.unwrap();
        drop(d0); // never acked: as if the process died
    }
    let bus = open(&dir).await;
    let mut c = bus.consumer("t", Some("g")).await.unwrap();
    let got: Vec<_> = [next(&mut c).await, next(&mut c).await, next(&mut c).await]
        .into_iter()
        .map(|d| d.message.headers["n"].clone())
        .collect();
    assert_eq!(got, ["0", "2", "3"]);
}

#[tokio::test]
async fn groups_are_independent_and_a_tail_does_not_ack() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    bus.publisher().publish("t", msg("k", 1)).await.unwrap();
    let mut a = bus.consumer("t", Some("a")).await.unwrap();
    next(&mut a).await.ack().await.unwrap();
    let mut b = bus.consumer("t", Some("b")).await.unwrap();
    assert_eq!(next(&mut b).await.message, msg("k", 1));
    let mut tail = bus.consumer("t", None).await.unwrap();
    next(&mut tail).await.ack().await.unwrap();
    let mut tail2 = bus.consumer("t", None).await.unwrap();
    assert_eq!(next(&mut tail2).await.message, msg("k", 1));
}

#[tokio::test]
async fn a_consumer_sees_what_another_process_publishes() {
    // Two independent stores on one file stand for two processes.
    let dir = tempfile::tempdir().unwrap();
    let reader = open(&dir).await;
    let writer = open(&dir).await;
    let mut c = reader.consumer("t", Some("g")).await.unwrap();
    writer.publisher().publish("t", msg("k", 3)).await.unwrap();
    assert_eq!(next(&mut c).await.message, msg("k", 3));
}

#[tokio::test]
async fn many_concurrent_publishes_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir).await;
    let mut tasks = Vec::new();
    for n in 0..200 {
        let p = bus.publisher();
        tasks.push(tokio::spawn(async move {
            p.publish("t", msg(&format!("k{}", n % 7), n)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    bus.publisher().check_ready().await.unwrap();
    let mut c = bus.consumer("t", Some("g")).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let d = next(&mut c).await;
        seen.insert(d.message.headers["n"].parse::<u32>().unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(seen.len(), 200);
}

#[test]
fn config_names_the_backend_choices() {
    let err = toml_like(r#"{"backend":"kafkaa","path":"x"}"#);
    assert!(err.contains("unknown variant `kafkaa`, expected"), "{err}");
    let err = toml_like(r#"{"backend":"embedded","path":"x","pth":"y"}"#);
    assert!(err.contains("unknown field `pth`"), "{err}");
}

fn toml_like(json: &str) -> String {
    serde_json::from_str::<BusConfig>(json)
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn consumed_messages_past_the_retention_are_deleted_unconsumed_ones_kept() {
    use tcb_bus::embedded::EmbeddedStore;
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig::at(dir.path().join("r.db"));
    let store = EmbeddedStore::open(&config).unwrap();
    let p: &dyn tcb_bus::Publisher = &store;
    for n in 1..=3 {
        p.publish("t", msg("k", n)).await.unwrap();
    }
    // Message 1 is consumed by group "g"; 1 and 2 are older than the retention (7 days).
    let mut g = tcb_bus::ConsumerOpener::consumer(&store, "t", Some("g"))
        .await
        .unwrap();
    next(&mut g).await.ack().await.unwrap();
    drop(g);
    let conn = rusqlite::Connection::open(&config.path).unwrap();
    conn.execute(
        "UPDATE messages SET published_at = '2000-01-01T00:00:00.000Z' WHERE payload IN (?1, ?2)",
        [b"payload-1".to_vec(), b"payload-2".to_vec()],
    )
    .unwrap();
    store.sweep().await.unwrap();
    let left: Vec<Vec<u8>> = conn
        .prepare("SELECT payload FROM messages ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        left,
        [b"payload-2".to_vec(), b"payload-3".to_vec()],
        "the unconsumed old one stays"
    );
    let acks: i64 = conn
        .query_row("SELECT count(*) FROM acks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(acks, 0, "its ack went with it");
}

/// The payloads left in the file, in order.
fn payloads(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.prepare("SELECT payload FROM messages ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|p| String::from_utf8(p.unwrap()).unwrap())
        .collect()
}

fn age_everything(path: &std::path::Path) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute(
            "UPDATE messages SET published_at = '2000-01-01T00:00:00.000Z'",
            [],
        )
        .unwrap();
}

/// A store in a new folder with one message published to topic `t`.
async fn store_with_one_message() -> (
    tempfile::TempDir,
    EmbeddedConfig,
    tcb_bus::embedded::EmbeddedStore,
) {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig::at(dir.path().join("r.db"));
    let store = tcb_bus::embedded::EmbeddedStore::open(&config).unwrap();
    tcb_bus::Publisher::publish(&store, "t", msg("k", 1))
        .await
        .unwrap();
    (dir, config, store)
}

#[tokio::test]
async fn retention_waits_for_every_group_of_the_topic() {
    let (_dir, config, store) = store_with_one_message().await;
    // The worker's group and an operator's second group both consume the topic.
    let mut worker = tcb_bus::ConsumerOpener::consumer(&store, "t", Some("worker"))
        .await
        .unwrap();
    let mut operator = tcb_bus::ConsumerOpener::consumer(&store, "t", Some("operator"))
        .await
        .unwrap();
    next(&mut worker).await.ack().await.unwrap();
    age_everything(&config.path);
    store.sweep().await.unwrap();
    assert_eq!(
        payloads(&config.path),
        ["payload-1"],
        "the operator's group has not acked it: kept"
    );
    next(&mut operator).await.ack().await.unwrap();
    store.sweep().await.unwrap();
    assert!(payloads(&config.path).is_empty(), "every group acked it");
}

#[tokio::test]
async fn a_group_an_operator_removed_no_longer_holds_messages() {
    let (_dir, config, store) = store_with_one_message().await;
    let mut worker = tcb_bus::ConsumerOpener::consumer(&store, "t", Some("worker"))
        .await
        .unwrap();
    drop(
        tcb_bus::ConsumerOpener::consumer(&store, "t", Some("one-off"))
            .await
            .unwrap(),
    );
    next(&mut worker).await.ack().await.unwrap();
    age_everything(&config.path);
    store.sweep().await.unwrap();
    assert_eq!(
        payloads(&config.path),
        ["payload-1"],
        "a group that went quiet still holds what it has not acked"
    );
    rusqlite::Connection::open(&config.path)
        .unwrap()
        .execute("DELETE FROM groups WHERE grp = 'one-off'", [])
        .unwrap();
    store.sweep().await.unwrap();
    assert!(payloads(&config.path).is_empty());
}

#[tokio::test]
async fn one_consumer_per_group_and_topic_per_file() {
    use tcb_bus::embedded::EmbeddedStore;
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig::at(dir.path().join("l.db"));
    // Two stores on one file stand for two processes.
    let a = EmbeddedStore::open(&config).unwrap();
    let b = EmbeddedStore::open(&config).unwrap();
    let first = tcb_bus::ConsumerOpener::consumer(&a, "t", Some("worker"))
        .await
        .unwrap();
    let e = tcb_bus::ConsumerOpener::consumer(&b, "t", Some("worker"))
        .await
        .err()
        .expect("a second worker of the group is refused");
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("already consumes group"), "{e}");
    // Other groups, other topics and tails are fine.
    tcb_bus::ConsumerOpener::consumer(&b, "t", Some("operator"))
        .await
        .unwrap();
    tcb_bus::ConsumerOpener::consumer(&b, "u", Some("worker"))
        .await
        .unwrap();
    tcb_bus::ConsumerOpener::consumer(&b, "t", None)
        .await
        .unwrap();
    drop(first);
    tcb_bus::ConsumerOpener::consumer(&b, "t", Some("worker"))
        .await
        .unwrap();
}
