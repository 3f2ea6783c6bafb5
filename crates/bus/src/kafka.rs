//! The Kafka backend (rdkafka, bundled librdkafka).
//!
//! * Producer: idempotent (`enable.idempotence=true`, `acks=all`), key = order id, headers,
//!   compression, and a bounded `message.timeout.ms` so an unacknowledged publish fails clearly
//!   instead of hanging. A full local queue fails at once as overloaded (the ingress answers 503).
//!   A fatal producer error (the idempotence guarantee broken) makes readiness red and the
//!   producer is rebuilt; nothing is dropped silently: every publish gets its delivery report or
//!   an error.
//! * Consumer: a consumer group with manual offsets. A delivery's offset is stored only once it
//!   and every earlier offset of its partition are acked (contiguous completion), and librdkafka
//!   commits stored offsets periodically and on rebalance. Work of a revoked partition can still
//!   finish, but its ack stores nothing (the partition is no longer ours), so nothing is committed
//!   past unfinished work; the new owner processes it again (at least once).
//! * Topics: created at start-up when missing (`partitions`, `replication_factor`), or only
//!   checked to exist when `create_topics = false`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::{
    Acker, BusError, Consumer, ConsumerOpener, Delivery, Headers, Message, Publisher, TopicsConfig,
};

/// `[bus]` with `backend = "kafka"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (librdkafka's `security.protocol`).
    #[serde(default)]
    pub security_protocol: Option<SecurityProtocol>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default, serialize_with = "redacted_opt")]
    pub sasl_password: Option<SecretString>,
    /// CA bundle (PEM) to verify the brokers with; unset: the system's.
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// Any other librdkafka property, for producer and consumer alike, e.g.
    /// `properties = { "socket.keepalive.enable" = "true" }`. Checked by librdkafka at start-up.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How long librdkafka tries to deliver a message before it reports a failure. Keep it at or
    /// below the ingress's `ack_timeout_ms`, so a stuck publish fails rather than lingers.
    #[serde(default = "default_message_timeout")]
    pub message_timeout_ms: u64,
    /// `none`, `gzip`, `lz4` or `snappy`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Create missing topics at start-up; `false`: only check that they exist.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// A consumer silent for this long is removed from its group.
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u32,
    /// Longest time between two polls before the consumer leaves its group.
    #[serde(default = "default_max_poll")]
    pub max_poll_interval_ms: u32,
    /// How often stored offsets are committed.
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u32,
    #[serde(default)]
    pub topics: TopicsConfig,
}

fn redacted_opt<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}
fn default_message_timeout() -> u64 {
    5_000
}
fn default_compression() -> String {
    "lz4".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}
fn default_session_timeout() -> u32 {
    10_000
}
fn default_max_poll() -> u32 {
    300_000
}
fn default_commit_interval() -> u32 {
    1_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl KafkaConfig {
    /// The librdkafka properties shared by producer, consumer and admin client.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("client.id", "tradecloud-bridge");
        if let Some(p) = self.security_protocol {
            c.set(
                "security.protocol",
                match p {
                    SecurityProtocol::Plaintext => "plaintext",
                    SecurityProtocol::Ssl => "ssl",
                    SecurityProtocol::SaslPlaintext => "sasl_plaintext",
                    SecurityProtocol::SaslSsl => "sasl_ssl",
                },
            );
        }
        if let Some(m) = self.sasl_mechanism {
            c.set(
                "sasl.mechanism",
                match m {
                    SaslMechanism::Plain => "PLAIN",
                    SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                    SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
                },
            );
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.sasl_password {
            c.set("sasl.password", p.expose_secret());
        }
        if let Some(ca) = &self.ssl_ca_location {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

fn config_error(what: &str, e: KafkaError) -> BusError {
    BusError::Config(format!("bus (kafka) {what}: {e}"))
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("Kafka: {e}"))
}

/// Logs librdkafka's own errors through `tracing` (never its config dump: it holds secrets).
#[derive(Clone, Default)]
pub struct Context {
    /// Offsets of in-flight deliveries per partition: offset -> acked.
    tracker: Arc<Mutex<Tracker>>,
}

type Tracker = HashMap<(String, i32), BTreeMap<i64, bool>>;

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "librdkafka");
    }
}

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
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

/// How long one attempt to create or check the topics may take (start-up waits for the first).
const TOPIC_SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The Kafka backend: a shared producer and consumers on demand. Cheap to clone.
#[derive(Clone)]
pub struct Kafka {
    config: Arc<KafkaConfig>,
    producer: Arc<RwLock<Arc<FutureProducer<Context>>>>,
}

impl Kafka {
    /// Builds the producer (validating every property) and creates or checks the topics. A
    /// broker that is down at start-up is not an error: publishes fail (503) until it is up.
    pub async fn open(config: &KafkaConfig) -> Result<Self, BusError> {
        let producer = build_producer(config)?;
        let kafka = Self {
            config: Arc::new(config.clone()),
            producer: Arc::new(RwLock::new(Arc::new(producer))),
        };
        if let Err(e) = kafka.ensure_topics().await {
            if let BusError::Config(_) = e {
                return Err(e);
            }
            tracing::warn!(error = %e, "cannot set up the Kafka topics yet; retrying in the background");
            let retry = kafka.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(500);
                loop {
                    tokio::time::sleep(delay).await;
                    match retry.ensure_topics().await {
                        Ok(()) => return tracing::info!("Kafka topics ready"),
                        Err(e @ BusError::Config(_)) => {
                            return tracing::error!(error = %e, "Kafka topics");
                        }
                        Err(e) => tracing::warn!(error = %e, "Kafka topics not ready yet"),
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            });
        }
        Ok(kafka)
    }

    fn producer(&self) -> Arc<FutureProducer<Context>> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Creates the missing topics, or checks they exist.
    pub async fn ensure_topics(&self) -> Result<(), BusError> {
        let c = &self.config;
        let names = [&c.topics.triggers, &c.topics.orders, &c.topics.dead_letters];
        if c.create_topics {
            let admin: AdminClient<DefaultClientContext> = c
                .client_config()
                .create()
                .map_err(|e| config_error("admin client", e))?;
            let new: Vec<NewTopic<'_>> = names
                .iter()
                .map(|n| {
                    NewTopic::new(
                        n,
                        c.partitions,
                        TopicReplication::Fixed(c.replication_factor),
                    )
                })
                .collect();
            let opts = AdminOptions::new().operation_timeout(Some(TOPIC_SETUP_TIMEOUT));
            let results =
                tokio::time::timeout(TOPIC_SETUP_TIMEOUT, admin.create_topics(&new, &opts))
                    .await
                    .map_err(|_| BusError::Timeout(TOPIC_SETUP_TIMEOUT))?
                    .map_err(unavailable)?;
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
                        return Err(unavailable(format!("creating topic {name}: {code}")));
                    }
                }
            }
            Ok(())
        } else {
            for n in names {
                self.check_exists(n).await?;
            }
            Ok(())
        }
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
        .map_err(unavailable)?
        .map_err(unavailable)?;
        if found {
            Ok(())
        } else {
            Err(BusError::Config(format!(
                "Kafka topic {topic} does not exist and create_topics is false"
            )))
        }
    }

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

fn build_producer(c: &KafkaConfig) -> Result<FutureProducer<Context>, BusError> {
    let mut cc = c.client_config();
    cc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", c.message_timeout_ms.to_string())
        .set("compression.type", &c.compression)
        .set("linger.ms", "2");
    cc.create_with_context(Context::default())
        .map_err(|e| config_error("producer", e))
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
    async fn publish(&self, topic: &str, message: Message) -> Result<(), BusError> {
        let producer = self.producer();
        if let Some((code, reason)) = producer.client().fatal_error() {
            self.rebuild_producer(&producer);
            return Err(unavailable(format!(
                "the producer hit a fatal error ({code}: {reason}); rebuilt it"
            )));
        }
        let record = FutureRecord::to(topic)
            .key(&message.key)
            .payload(&message.payload)
            .headers(to_kafka_headers(&message.headers));
        match producer.send(record, Duration::ZERO).await {
            Ok(_) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(
                BusError::Overloaded("the Kafka producer queue is full".to_owned()),
            ),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _)) => Err(
                BusError::Timeout(Duration::from_millis(self.config.message_timeout_ms)),
            ),
            Err((e, _)) => {
                if producer.client().fatal_error().is_some() || lost_producer_state(&e) {
                    self.rebuild_producer(&producer);
                }
                Err(unavailable(e))
            }
        }
    }

    async fn check_ready(&self) -> Result<(), BusError> {
        let producer = self.producer();
        if let Some((code, reason)) = producer.client().fatal_error() {
            return Err(unavailable(format!(
                "fatal producer error {code}: {reason}"
            )));
        }
        let topic = self.config.topics.triggers.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|_| ())
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
    }
}

#[async_trait]
impl ConsumerOpener for Kafka {
    async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let c = &self.config;
        let mut cc = c.client_config();
        let tail = group.is_none();
        let group = group
            .map(str::to_owned)
            .unwrap_or_else(|| format!("tradecloud-bridge-tail-{}", std::process::id()));
        cc.set("group.id", &group)
            .set("enable.auto.commit", if tail { "false" } else { "true" })
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", c.commit_interval_ms.to_string())
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", c.session_timeout_ms.to_string())
            .set("max.poll.interval.ms", c.max_poll_interval_ms.to_string());
        let context = Context::default();
        let consumer: StreamConsumer<Context> = cc
            .create_with_context(context.clone())
            .map_err(|e| config_error("consumer", e))?;
        consumer.subscribe(&[topic]).map_err(unavailable)?;
        Ok(Box::new(KafkaConsumer {
            consumer: Arc::new(consumer),
            context,
            tail,
            topic: topic.to_owned(),
            redeliver: Arc::default(),
        }))
    }
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer<Context>>,
    context: Context,
    tail: bool,
    topic: String,
    redeliver: Arc<Mutex<VecDeque<Delivered>>>,
}

#[derive(Clone)]
struct Delivered {
    partition: i32,
    offset: i64,
    message: Message,
}

impl KafkaConsumer {
    fn delivery(&self, d: Delivered) -> Delivery {
        let position = format!("{}/{}", d.partition, d.offset);
        let acker = KafkaAcker {
            consumer: self.consumer.clone(),
            tracker: self.context.tracker.clone(),
            tail: self.tail,
            topic: self.topic.clone(),
            delivered: d.clone(),
            redeliver: self.redeliver.clone(),
        };
        Delivery::new(self.topic.clone(), position, d.message, Box::new(acker))
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let again = self
            .redeliver
            .lock()
            .map_err(|_| BusError::Storage("redelivery queue poisoned".to_owned()))?
            .pop_front();
        if let Some(d) = again {
            return Ok(self.delivery(d));
        }
        let m = self.consumer.recv().await.map_err(unavailable)?;
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
        let delivered = Delivered {
            partition: m.partition(),
            offset: m.offset(),
            message: Message {
                key: m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                headers,
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            },
        };
        if let Ok(mut tracker) = self.context.tracker.lock() {
            tracker
                .entry((self.topic.clone(), delivered.partition))
                .or_default()
                .insert(delivered.offset, false);
        }
        Ok(self.delivery(delivered))
    }
}

struct KafkaAcker {
    consumer: Arc<StreamConsumer<Context>>,
    tracker: Arc<Mutex<Tracker>>,
    tail: bool,
    topic: String,
    delivered: Delivered,
    redeliver: Arc<Mutex<VecDeque<Delivered>>>,
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
        let key = (self.topic.clone(), self.delivered.partition);
        let store = {
            let mut tracker = self
                .tracker
                .lock()
                .map_err(|_| BusError::Storage("offset tracker poisoned".to_owned()))?;
            match tracker.get_mut(&key) {
                Some(pending) => complete(pending, self.delivered.offset),
                // The partition was revoked meanwhile: its new owner processes this again.
                None => None,
            }
        };
        if let Some(offset) = store {
            // Stores offset + 1 (the next to read); committed on the next auto-commit.
            self.consumer
                .store_offset(&self.topic, self.delivered.partition, offset)
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), BusError> {
        self.redeliver
            .lock()
            .map_err(|_| BusError::Storage("redelivery queue poisoned".to_owned()))?
            .push_back(self.delivered);
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
