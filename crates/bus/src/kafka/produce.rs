//! Publishing: the idempotent producer, its delivery reports, and its replacement after a fatal
//! error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use super::{Context, Kafka, KafkaConfig, Shared, classify, config_error};
use crate::{BusError, Headers, Message, Pending, Publisher};

pub(super) fn build_producer(c: &KafkaConfig) -> Result<FutureProducer<Context>, BusError> {
    let mut cc = c.client_config();
    cc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", c.message_timeout_ms.to_string())
        .set("compression.type", c.compression_type())
        .set("message.max.bytes", c.max_message_bytes.to_string())
        .set("linger.ms", "2");
    cc.create_with_context(Context::default())
        .map_err(|e| config_error("producer", e))
}

/// Errors that say the broker no longer accepts this producer's id or epoch. librdkafka recovers
/// from most of them itself; when one reaches us, only a fresh producer (a new id) can publish
/// again. Seen after the connection to the broker was cut in the middle of publishes (the test
/// broker then answered every produce request with `ProducerFenced`).
fn lost_producer_state(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
        )
    )
}

impl Shared {
    /// Replaces a producer that hit a fatal error or lost its producer state (once per producer).
    fn rebuild_producer(&self, broken: &Arc<FutureProducer<Context>>) {
        let Ok(mut slot) = self.producer.write() else {
            return;
        };
        if !Arc::ptr_eq(&slot, broken) {
            return;
        }
        match build_producer(&self.config) {
            Ok(p) => {
                tracing::warn!("rebuilt the Kafka producer (its producer id was no longer usable)");
                *slot = Arc::new(p);
            }
            Err(e) => tracing::error!(error = %e, "cannot rebuild the Kafka producer"),
        }
    }

    /// What a refused or failed publish to `topic` means; replaces the producer when it can no
    /// longer publish.
    fn publish_error(
        &self,
        producer: &Arc<FutureProducer<Context>>,
        topic: &str,
        e: KafkaError,
    ) -> BusError {
        match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                BusError::Overloaded("the Kafka producer queue is full".to_owned())
            }
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => {
                BusError::Timeout(Duration::from_millis(self.config.message_timeout_ms))
            }
            e => {
                if producer.client().fatal_error().is_some() || lost_producer_state(&e) {
                    self.rebuild_producer(producer);
                }
                classify(format!("publishing to {topic}"), e)
            }
        }
    }
}

fn to_kafka_headers(headers: &Headers) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k.as_str(),
                value: Some(v.as_bytes()),
            })
        },
    )
}

#[async_trait]
impl Publisher for Kafka {
    fn system(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<(), BusError> {
        self.publish_at(topic, message).await.map(|_| ())
    }

    async fn publish_at(&self, topic: &str, message: Message) -> Result<String, BusError> {
        self.enqueue(topic, message).await?.await
    }

    /// Queues the record in librdkafka's producer (in call order: a key's messages share a
    /// partition, and the idempotent producer keeps their order there, retries included); the
    /// pending resolves with its delivery report. A message stored by a producer that was
    /// replaced meanwhile is reported failed: one queued after it on the new producer may have
    /// been stored first, and only publishing it again puts its key's last copy back in order.
    async fn enqueue(&self, topic: &str, message: Message) -> Result<Pending, BusError> {
        let shared = self.shared.clone();
        let producer = shared.producer();
        if let Some((code, reason)) = producer.client().fatal_error() {
            shared.rebuild_producer(&producer);
            return Err(BusError::Unavailable {
                context: format!(
                    "Kafka: the producer hit a fatal error ({code}: {reason}); rebuilt it"
                ),
                source: None,
            });
        }
        let record = FutureRecord::to(topic)
            .key(&message.key)
            .payload(&message.payload)
            .headers(to_kafka_headers(&message.headers));
        let delivery = match producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((e, _)) => return Err(shared.publish_error(&producer, topic, e)),
        };
        let topic = topic.to_owned();
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) if !Arc::ptr_eq(&shared.producer(), &producer) => {
                    Err(BusError::Unavailable {
                        context: format!(
                            "Kafka: the producer was replaced while a message to {topic} was in flight"
                        ),
                        source: None,
                    })
                }
                Ok(Ok(stored)) => Ok(format!(
                    "partition {} offset {}",
                    stored.partition, stored.offset
                )),
                Ok(Err((e, _))) => Err(shared.publish_error(&producer, &topic, e)),
                // The producer was dropped with the message queued (it was replaced meanwhile).
                Err(_) => Err(BusError::Unavailable {
                    context: format!("Kafka: the producer went away publishing to {topic}"),
                    source: None,
                }),
            }
        }))
    }

    async fn check_ready(&self) -> Result<(), BusError> {
        let producer = self.shared.producer();
        if let Some((code, reason)) = producer.client().fatal_error() {
            return Err(BusError::Unavailable {
                context: format!("Kafka: fatal producer error {code}: {reason}"),
                source: None,
            });
        }
        let topic = self.shared.config.topics.triggers.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|_| ())
        })
        .await
        .map_err(|e| BusError::unavailable("Kafka: the metadata task failed", e))?
        .map_err(|e| classify("reading the metadata", e))
    }
}
