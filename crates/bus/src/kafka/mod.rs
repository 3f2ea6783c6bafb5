//! The Kafka backend (rdkafka, bundled librdkafka).
//!
//! * Producer ([`produce`]): idempotent (`enable.idempotence=true`, `acks=all`), key = order id,
//!   headers, compression, and a bounded `message.timeout.ms` so an unacknowledged publish fails
//!   clearly instead of hanging. A full local queue fails at once as overloaded (the ingress
//!   answers 503). A fatal producer error (the idempotence guarantee broken) makes readiness red
//!   and the producer is rebuilt; nothing is dropped silently: every publish gets its delivery
//!   report or an error. Errors that can never succeed for the message (too large, not
//!   authorized, no such topic, invalid record) are permanent ([`crate::BusError::is_transient`]).
//! * Consumer ([`consume`]): a consumer group with manual offsets. A delivery's offset is stored
//!   only once it and every earlier offset of its partition are acked (contiguous completion),
//!   and librdkafka commits stored offsets periodically and on rebalance. Work of a revoked
//!   partition can still finish, but its ack stores nothing (the partition is no longer ours), so
//!   nothing is committed past unfinished work; the new owner processes it again (at least once).
//!   Without a group, a consumer reads the topic from the start and commits nothing.
//! * Topics: created at start-up when missing (`partitions`, `replication_factor`), or only
//!   checked to exist when `create_topics = false`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer as _};
use tokio_util::sync::CancellationToken;

use crate::{Backoff, BusError};

mod config;
mod consume;
mod produce;

pub use config::{
    Compression, ENVELOPE_OVERHEAD_BYTES, KafkaConfig, SaslMechanism, SecurityProtocol,
};

/// How long one attempt to create or check the topics may take (start-up waits for the first).
const TOPIC_SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A librdkafka error as a [`BusError`], classified: permanent where the same message can never
/// succeed, transient otherwise.
fn classify(context: impl Into<String>, e: KafkaError) -> BusError {
    let context = format!("Kafka: {}", context.into());
    let source = Some(Box::new(e.clone()) as crate::BoxError);
    match e.rdkafka_error_code() {
        // The message itself is over the limit (a batch over it is retried: librdkafka splits).
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            BusError::TooLarge { context, source }
        }
        // Unknown topics and partitions are not here: topics may still be being created (in the
        // background at start-up) or metadata may lag, so those are retried.
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::InvalidTopic,
        ) => BusError::Refused { context, source },
        _ => BusError::Unavailable { context, source },
    }
}

fn config_error(what: &str, e: KafkaError) -> BusError {
    BusError::Config(format!("bus (kafka) {what}: {e}"))
}

/// Builds the producer, so librdkafka checks every property, and reads the CA file; connects to
/// nothing.
pub(crate) fn check(config: &KafkaConfig) -> Result<(), BusError> {
    if let Some(ca) = &config.ssl_ca_location {
        std::fs::metadata(ca)
            .map_err(|e| BusError::Config(format!("bus.ssl_ca_location {}: {e}", ca.display())))?;
    }
    produce::build_producer(config).map(drop)
}

/// The client context of producer and consumers: logs librdkafka's own errors through `tracing`
/// (never its config dump: it holds secrets) and tracks in-flight offsets of a consumer.
#[derive(Clone, Default)]
pub struct Context {
    tracker: consume::SharedTracker,
    /// The consumer group (for the assigned-partitions gauge); empty for a producer or a tail.
    group: String,
    /// The partitions this member holds of all of the topic's.
    share: Arc<crate::Share>,
    /// The topic a group member consumes, whose lag it reports from librdkafka's statistics.
    lag_topic: String,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "librdkafka");
    }

    /// librdkafka's statistics (every `statistics.interval.ms`, set for group members only): the
    /// lag of the partitions this member holds (-1, unknown, for the others).
    fn stats(&self, statistics: rdkafka::Statistics) {
        if self.lag_topic.is_empty() {
            return;
        }
        let lag: i64 = statistics
            .topics
            .get(&self.lag_topic)
            .map(|t| {
                t.partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.fetch_state != "none")
                    .map(partition_lag)
                    .sum()
            })
            .unwrap_or(0);
        tcb_telemetry::metrics::consumer_lag(&self.lag_topic, lag.max(0) as u64);
    }
}

/// What a held partition has not consumed: librdkafka's `consumer_lag`, or, before the group
/// has committed anything there (lag -1), everything from the log's start (`auto.offset.reset`
/// is `earliest`).
fn partition_lag(p: &rdkafka::statistics::Partition) -> i64 {
    if p.consumer_lag >= 0 {
        p.consumer_lag
    } else if p.committed_offset < 0 && p.stored_offset < 0 && p.hi_offset >= 0 && p.lo_offset >= 0
    {
        p.hi_offset - p.lo_offset
    } else {
        0
    }
}

/// The Kafka backend: a shared producer and consumers on demand. Cheap to clone.
#[derive(Clone)]
pub struct Kafka {
    shared: Arc<Shared>,
    /// Stops the background topic setup when the last clone is dropped.
    _stop: Arc<DropGuard>,
}

/// What the background topic setup shares with the backend.
struct Shared {
    config: KafkaConfig,
    producer: RwLock<Arc<FutureProducer<Context>>>,
}

struct DropGuard(CancellationToken);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Kafka {
    /// Builds the producer (validating every property) and creates or checks the topics. A
    /// broker that is down at start-up is not an error: publishes fail (503) until it is up.
    pub async fn open(config: &KafkaConfig) -> Result<Self, BusError> {
        let shared = Arc::new(Shared {
            config: config.clone(),
            producer: RwLock::new(Arc::new(produce::build_producer(config)?)),
        });
        let stop = CancellationToken::new();
        if let Err(e) = shared.ensure_topics().await {
            if !e.is_transient() {
                return Err(e);
            }
            tracing::warn!(error = %e.chain(), "cannot set up the Kafka topics yet; retrying in the background");
            let (shared, stop) = (shared.clone(), stop.clone());
            tokio::spawn(async move {
                let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
                while backoff.wait(&stop).await {
                    match shared.ensure_topics().await {
                        Ok(()) => return tracing::info!("Kafka topics ready"),
                        Err(e) if !e.is_transient() => {
                            return tracing::error!(error = %e.chain(), "Kafka topics");
                        }
                        Err(e) => tracing::warn!(error = %e.chain(), "Kafka topics not ready yet"),
                    }
                }
            });
        }
        Ok(Self {
            shared,
            _stop: Arc::new(DropGuard(stop)),
        })
    }

    /// Creates the missing topics, or checks they exist.
    pub async fn ensure_topics(&self) -> Result<(), BusError> {
        self.shared.ensure_topics().await
    }
}

impl Shared {
    fn producer(&self) -> Arc<FutureProducer<Context>> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn ensure_topics(&self) -> Result<(), BusError> {
        let c = &self.config;
        let names = [&c.topics.triggers, &c.topics.orders, &c.topics.dead_letters];
        if !c.create_topics {
            for n in names {
                self.check_exists(n).await?;
            }
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = c
            .client_config()
            .create()
            .map_err(|e| config_error("admin client", e))?;
        // Durable by default: two in-sync copies where the replication allows, long retention of
        // what is not yet processed, and room for the largest message the bridge produces.
        let min_insync = c.replication_factor.clamp(1, 2).to_string();
        let retention = (c.retention_hours.saturating_mul(3_600_000)).to_string();
        let max_bytes = c.max_message_bytes.to_string();
        let new: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                let topic = NewTopic::new(
                    n,
                    c.partitions,
                    TopicReplication::Fixed(c.replication_factor),
                )
                .set("min.insync.replicas", &min_insync)
                .set("max.message.bytes", &max_bytes);
                if **n == c.topics.orders {
                    topic
                } else {
                    topic.set("retention.ms", &retention)
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(TOPIC_SETUP_TIMEOUT));
        let results = tokio::time::timeout(TOPIC_SETUP_TIMEOUT, admin.create_topics(&new, &opts))
            .await
            .map_err(|_| BusError::Timeout(TOPIC_SETUP_TIMEOUT))?
            .map_err(|e| classify("creating topics", e))?;
        for r in results {
            match r {
                Ok(name) => {
                    tracing::info!(topic = %name, partitions = c.partitions, "created Kafka topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((
                    name,
                    RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed,
                )) => {
                    tracing::info!(topic = %name, "not allowed to create topics; checking that it exists");
                    self.check_exists(&name).await?;
                }
                Err((name, code)) => {
                    return Err(classify(
                        format!("creating topic {name}"),
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn check_exists(&self, topic: &str) -> Result<(), BusError> {
        let producer = self.producer();
        let name = topic.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&name), TOPIC_SETUP_TIMEOUT)
                .map(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == name && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
        })
        .await
        .map_err(|e| BusError::unavailable("Kafka: the metadata task failed", e))?
        .map_err(|e| classify(format!("reading the metadata of {topic}"), e))?;
        if found {
            Ok(())
        } else {
            Err(BusError::Config(format!(
                "Kafka topic {topic} does not exist and create_topics is false"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_errors_that_can_never_succeed_are_permanent() {
        use rdkafka::error::KafkaError::MessageProduction as P;
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            let e = classify("publishing", P(code));
            assert!(!e.is_transient(), "{code:?} must be permanent: {e}");
            assert!(std::error::Error::source(&e).is_some(), "keeps its source");
        }
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert!(classify("publishing", P(code)).is_transient(), "{code:?}");
        }
        assert!(matches!(
            classify("x", P(RDKafkaErrorCode::MessageSizeTooLarge)),
            BusError::TooLarge { .. }
        ));
    }
}
