//! Consuming: a consumer group with contiguous offset commits, or a tail without a group.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Headers as _;

use super::{Context, Kafka, classify, config_error};
use crate::{Acker, BusError, Consumer, ConsumerOpener, Delivery, Headers, Message};

/// Offsets of in-flight deliveries per partition: offset -> acked.
type Tracker = HashMap<(String, i32), BTreeMap<i64, bool>>;
pub(super) type SharedTracker = Arc<Mutex<Tracker>>;

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance
            && let Ok(mut tracker) = self.tracker.lock()
        {
            // Unfinished work of these partitions will not be committed by us: forget it.
            for e in tpl.elements() {
                tracker.remove(&(e.topic().to_owned(), e.partition()));
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            // Nothing held until the next assignment: take no share of the rate meanwhile.
            self.share.set(0, 1);
            if !self.group.is_empty() {
                tcb_telemetry::metrics::kafka_assigned_partitions(&self.group, 0);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let held = tpl.count();
            // All partitions of the assigned topics, to know this member's share.
            let topics: std::collections::BTreeSet<String> = tpl
                .elements()
                .iter()
                .map(|e| e.topic().to_owned())
                .collect();
            let total: usize = topics
                .iter()
                .filter_map(|t| {
                    consumer
                        .fetch_metadata(Some(t), std::time::Duration::from_secs(5))
                        .ok()
                        .map(|m| {
                            m.topics()
                                .iter()
                                .map(|t| t.partitions().len())
                                .sum::<usize>()
                        })
                })
                .sum();
            self.share.set(
                u32::try_from(held).unwrap_or(u32::MAX),
                u32::try_from(total.max(held)).unwrap_or(u32::MAX),
            );
            tracing::info!(partitions = held, of = total, "partitions assigned");
            if !self.group.is_empty() {
                tcb_telemetry::metrics::kafka_assigned_partitions(&self.group, tpl.count());
            }
        }
    }
}

#[async_trait]
impl ConsumerOpener for Kafka {
    async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let c = &self.shared.config;
        let mut cc = c.client_config();
        let tail = group.is_none();
        let context = Context {
            group: group.unwrap_or_default().to_owned(),
            lag_topic: if tail {
                String::new()
            } else {
                topic.to_owned()
            },
            ..Context::default()
        };
        // A group member takes no share of the Tradecloud rate until it holds partitions.
        context.share.set(0, 1);
        // A tail joins a group of its own that commits nothing, so it starts at the beginning.
        let group = group
            .map(str::to_owned)
            .unwrap_or_else(|| format!("tradecloud-bridge-tail-{}", uuid_like()));
        cc.set("group.id", &group)
            .set("enable.auto.commit", if tail { "false" } else { "true" })
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", c.commit_interval_ms.to_string())
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", c.session_timeout_ms.to_string())
            .set("max.poll.interval.ms", c.max_poll_interval_ms.to_string());
        // librdkafka prefetches up to 64 MiB of messages by default; a worker holds at most
        // `max_held` triggers anyway, so a smaller queue keeps a worker draining a backlog
        // small (4 MiB: about 1,500 triggers, several fetches ahead; the memory it pins in
        // librdkafka's fetch buffers is several times that). `properties` may set another.
        if cc.get("queued.max.messages.kbytes").is_none() {
            cc.set("queued.max.messages.kbytes", PREFETCH_KIB.to_string());
        }
        if !tail {
            // For the consumer lag gauge (the stats callback of `Context`).
            cc.set(
                "statistics.interval.ms",
                crate::LAG_INTERVAL.as_millis().to_string(),
            );
        }
        let consumer: StreamConsumer<Context> = cc
            .create_with_context(context.clone())
            .map_err(|e| config_error("consumer", e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| classify(format!("subscribing to {topic}"), e))?;
        Ok(Box::new(KafkaConsumer {
            consumer: Arc::new(consumer),
            share: context.share,
            tracker: context.tracker,
            tail,
            topic: topic.to_owned(),
        }))
    }
}

/// What a consumer prefetches at most (`queued.max.messages.kbytes`) unless `properties` says.
const PREFETCH_KIB: usize = 4 * 1024;

/// A group id no other tail uses: the process id and the time.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos:x}", std::process::id())
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer<Context>>,
    share: Arc<crate::Share>,
    tracker: SharedTracker,
    tail: bool,
    topic: String,
}

#[async_trait]
impl Consumer for KafkaConsumer {
    fn share(&self) -> Option<Arc<crate::Share>> {
        (!self.tail).then(|| self.share.clone())
    }

    async fn next(&mut self) -> Result<Delivery, BusError> {
        let m = self
            .consumer
            .recv()
            .await
            .map_err(|e| classify(format!("consuming {}", self.topic), e))?;
        let mut headers = Headers::new();
        if let Some(h) = m.headers() {
            for header in h.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                headers.insert(header.key.to_owned(), value);
            }
        }
        let (partition, offset) = (m.partition(), m.offset());
        let message = Message {
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            headers,
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            ..Message::default()
        };
        if !self.tail
            && let Ok(mut tracker) = self.tracker.lock()
        {
            tracker
                .entry((self.topic.clone(), partition))
                .or_default()
                .insert(offset, false);
        }
        let acker = KafkaAcker {
            consumer: self.consumer.clone(),
            tracker: self.tracker.clone(),
            tail: self.tail,
            topic: self.topic.clone(),
            partition,
            offset,
        };
        Ok(Delivery::new(
            self.topic.clone(),
            format!("{partition}/{offset}"),
            message,
            Box::new(acker),
        ))
    }
}

struct KafkaAcker {
    consumer: Arc<StreamConsumer<Context>>,
    tracker: SharedTracker,
    tail: bool,
    topic: String,
    partition: i32,
    offset: i64,
}

/// Marks `offset` done; returns the highest offset below which everything is done, if it moved.
fn complete(pending: &mut BTreeMap<i64, bool>, offset: i64) -> Option<i64> {
    if let Some(done) = pending.get_mut(&offset) {
        *done = true;
    }
    let mut last = None;
    while let Some((&first, &done)) = pending.first_key_value() {
        if !done {
            break;
        }
        pending.remove(&first);
        last = Some(first);
    }
    last
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        if self.tail {
            return Ok(());
        }
        let key = (self.topic.clone(), self.partition);
        let store = {
            let mut tracker = self.tracker.lock().map_err(|_| BusError::Storage {
                context: "the Kafka offset tracker is poisoned".to_owned(),
                source: None,
            })?;
            match tracker.get_mut(&key) {
                Some(pending) => complete(pending, self.offset),
                // The partition was revoked meanwhile: its new owner processes this again.
                None => None,
            }
        };
        if let Some(offset) = store {
            // Stores offset + 1 (the next to read); committed on the next auto-commit.
            self.consumer
                .store_offset(&self.topic, self.partition, offset)
                .map_err(|e| classify(format!("storing offset {offset}"), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_contiguous_completions_move_the_offset() {
        let mut p: BTreeMap<i64, bool> = [(5, false), (6, false), (7, false)].into();
        assert_eq!(complete(&mut p, 6), None, "5 is still in flight");
        assert_eq!(complete(&mut p, 5), Some(6));
        assert_eq!(complete(&mut p, 7), Some(7));
        assert!(p.is_empty());
    }
}
