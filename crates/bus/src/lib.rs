//! The broker seam: [`Publisher`] and [`Consumer`] traits, the message and its headers, and the
//! backends behind cargo features. [`connect`] is the one place that picks a backend from config.
//!
//! Contract of every backend:
//! * [`Publisher::publish`] returns `Ok` only once the broker holds the message durably (embedded:
//!   committed and fsynced; Kafka: delivery report with `acks=all`; RabbitMQ: publisher confirm).
//! * [`Consumer::next`] yields [`Delivery`]s that stay unacknowledged until [`Delivery::ack`]; an
//!   unacknowledged delivery is delivered again after a crash or restart (at least once).
//! * [`ConsumerOpener::consumer`] without a group reads the topic from its start and settles
//!   nothing (a tail for operators), on every backend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

pub use backoff::Backoff;

pub mod backoff;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

/// Message headers: string to string, the common ground of Kafka, AMQP and the embedded store.
/// Which headers a message carries is the model's business (`tcb_model::codec`); a backend only
/// carries them.
pub type Headers = BTreeMap<String, String>;

/// The prefix of CloudEvents attributes in the bridge's headers (the Kafka binding, `ce_id`, ...).
/// A backend with another binding maps it (AMQP: `cloudEvents:`).
pub const CLOUDEVENTS_PREFIX: &str = "ce_";

/// One message on a topic.
///
/// `headers` carry everything a reader needs. The typed fields repeat what a backend may map to
/// native properties (AMQP `message-id`, `content-type` and the routing key), so that no backend
/// needs to know a header name; they are set by whoever encodes the message and are not restored
/// on receive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Partitioning/ordering key: the order id.
    pub key: String,
    pub headers: Headers,
    pub payload: Vec<u8>,
    /// A stable id of this message (AMQP `message-id`).
    pub id: Option<String>,
    /// The payload's media type (AMQP `content-type`).
    pub content_type: Option<String>,
    /// One word that classifies the message for routing (AMQP routing key `<topic>.<word>`;
    /// triggers are routed by their queue's name instead).
    pub routing_word: Option<String>,
}

/// An error from a broker client library, kept as the source of a [`BusError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The bus crate's result.
pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// Errors of the bus. Each is either transient (retrying later can succeed: the ingress answers
/// 503, the worker backs off) or permanent for the message at hand ([`BusError::is_transient`]).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker cannot be reached or the connection broke. Transient.
    #[error("{context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Too many publishes are waiting. Transient.
    #[error("the broker is overloaded: {0}")]
    Overloaded(String),
    /// The broker did not confirm in time. Transient.
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    /// The broker refused the message for now (a negative confirm, an unroutable message). Transient:
    /// a queue can be bound and the broker can recover.
    #[error("{context}")]
    Rejected {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The message is larger than the broker accepts. Permanent for this message.
    #[error("{context}")]
    TooLarge {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The broker will never take this message as configured: not authorized for the topic, the
    /// topic does not exist, the record is invalid. Permanent for this message.
    #[error("{context}")]
    Refused {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The local store failed (embedded backend). Transient.
    #[error("{context}")]
    Storage {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The bus is shutting down. Transient (another process takes over).
    #[error("the bus is shutting down")]
    Closed,
    /// The configuration cannot work. Permanent.
    #[error("bus configuration: {0}")]
    Config(String),
}

impl BusError {
    /// Whether retrying the same operation later can succeed. A permanent error will fail the
    /// same way every time: the worker dead-letters the trigger instead of retrying it.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            BusError::TooLarge { .. } | BusError::Refused { .. } | BusError::Config(_)
        )
    }

    /// A short, bounded class of the error (`error.type` of spans).
    pub fn kind(&self) -> &'static str {
        match self {
            BusError::Unavailable { .. } => "unavailable",
            BusError::Overloaded(_) => "overloaded",
            BusError::Timeout(_) => "timeout",
            BusError::Rejected { .. } => "rejected",
            BusError::TooLarge { .. } => "too_large",
            BusError::Refused { .. } => "refused",
            BusError::Storage { .. } => "storage",
            BusError::Closed => "closed",
            BusError::Config(_) => "config",
        }
    }

    pub fn unavailable(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        BusError::Unavailable {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub fn storage(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        BusError::Storage {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// An error message with every source in the chain, for logs (`a: b: c`); a cause whose
    /// text is already in the message is not repeated.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            let text = e.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            next = e.source();
        }
        out
    }
}

/// How often a group consumer reports its lag (`tcb_worker_consumer_lag_messages`).
pub const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// A publish queued with the broker ([`Publisher::enqueue`]): resolves to where the broker stored
/// the message once it holds it durably, or to why not.
pub type Pending =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, BusError>> + Send>>;

/// Publishes messages durably.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Returns only once the broker holds the message durably.
    async fn publish(&self, topic: &str, message: Message) -> Result<(), BusError>;
    /// [`Publisher::publish`], saying where the broker stored the message: Kafka `partition 3
    /// offset 17`, RabbitMQ `routing key tradecloud.orders.order`, embedded `id 42` (empty where
    /// a backend cannot say).
    async fn publish_at(&self, topic: &str, message: Message) -> Result<String, BusError> {
        self.publish(topic, message).await.map(|()| String::new())
    }
    /// Hands `message` to the broker and returns once it is queued in order, with what
    /// [`Publisher::publish_at`] would return still to come: messages with one key handed over
    /// one after another are stored in that order (Kafka: one partition, the idempotent
    /// producer; RabbitMQ: one channel per key), so a caller may keep several in flight and await
    /// their confirms in turn. The default publishes in full before returning (nothing in
    /// flight): the embedded store, whose publish is one local commit.
    async fn enqueue(&self, topic: &str, message: Message) -> Result<Pending, BusError> {
        let stored = self.publish_at(topic, message).await;
        Ok(Box::pin(std::future::ready(stored)))
    }
    /// `Ok` when the broker is reachable and publishes can succeed (readiness).
    async fn check_ready(&self) -> Result<(), BusError>;
    /// Closes connections cleanly at shutdown (after the last publish and ack).
    async fn close(&self) {}
    /// `messaging.system` of the spans: `kafka`, `rabbitmq` (the semantic conventions' names) or
    /// `embedded`.
    fn system(&self) -> &'static str {
        "embedded"
    }
}

/// The producer span of one publish of `message` to `topic` (`dead_letter`: a dead letter to
/// the dead-letter topic).
pub fn publish_span(
    publisher: &dyn Publisher,
    dead_letter: bool,
    topic: &str,
    message: &Message,
) -> tracing::Span {
    tcb_telemetry::spans::publish(
        publisher.system(),
        dead_letter,
        topic,
        message.id.as_deref().unwrap_or(""),
    )
}

/// Publishes `message` inside `span` (from [`publish_span`]), within `timeout`: the message
/// carries the span's context (`traceparent`, `tracestate`), so whoever reads it continues the
/// trace from this publish; a failure marks the span. `Ok`: where the broker stored it
/// ([`Publisher::publish_at`]).
pub async fn publish_traced(
    publisher: &dyn Publisher,
    span: &tracing::Span,
    topic: &str,
    message: Message,
    timeout: std::time::Duration,
) -> Result<String, BusError> {
    match enqueue_traced(publisher, span, topic, message, timeout).await {
        Ok(pending) => pending.await,
        Err(e) => Err(e),
    }
}

/// [`publish_traced`] up to [`Publisher::enqueue`]: returns once the message is queued in order;
/// the [`Pending`] resolves when the broker holds it, within `timeout` of this call, inside
/// `span` (which it keeps open until then).
pub async fn enqueue_traced(
    publisher: &dyn Publisher,
    span: &tracing::Span,
    topic: &str,
    mut message: Message,
    timeout: std::time::Duration,
) -> Result<Pending, BusError> {
    use tracing::Instrument;
    tcb_telemetry::otel::inject_headers(span, &mut message.headers);
    let deadline = tokio::time::Instant::now() + timeout;
    let failed = |span: &tracing::Span, e: BusError| {
        tcb_telemetry::spans::failed(span, e.kind());
        e
    };
    let queued = tokio::time::timeout_at(deadline, publisher.enqueue(topic, message))
        .instrument(span.clone())
        .await
        .unwrap_or(Err(BusError::Timeout(timeout)));
    let pending = queued.map_err(|e| failed(span, e))?;
    let span = span.clone();
    Ok(Box::pin(
        async move {
            let stored = tokio::time::timeout_at(deadline, pending)
                .await
                .unwrap_or(Err(BusError::Timeout(timeout)));
            stored.map_err(|e| failed(&tracing::Span::current(), e))
        }
        .instrument(span),
    ))
}

/// Yields deliveries from one topic for one consumer group.
#[async_trait]
pub trait Consumer: Send + 'static {
    /// The next delivery; waits until one is there. Cancel-safe: a caller may drop the future (in
    /// a `select!`) without losing a delivery.
    async fn next(&mut self) -> Result<Delivery, BusError>;

    /// This consumer's share of the topic among its group's members, kept current (Kafka: the
    /// partitions it holds of all). `None`: it gets the whole topic (RabbitMQ's single active
    /// consumer, the embedded store).
    fn share(&self) -> Option<Arc<Share>> {
        None
    }
}

/// A group member's share of a topic: `held` of `total` partitions.
#[derive(Debug, Default)]
pub struct Share {
    held: std::sync::atomic::AtomicU32,
    total: std::sync::atomic::AtomicU32,
}

impl Share {
    pub fn set(&self, held: u32, total: u32) {
        use std::sync::atomic::Ordering::SeqCst;
        self.held.store(held, SeqCst);
        self.total.store(total, SeqCst);
    }

    /// All partitions, as last known (0: not known).
    pub fn total(&self) -> u32 {
        self.total.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `held / total`, 0 to 1; 1 before anything is known.
    pub fn fraction(&self) -> f64 {
        use std::sync::atomic::Ordering::SeqCst;
        match self.total.load(SeqCst) {
            0 => 1.0,
            total => (f64::from(self.held.load(SeqCst)) / f64::from(total)).min(1.0),
        }
    }
}

/// Settles one delivery with its backend.
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
}

/// A message received from a topic, to be acked explicitly (or left unacked: delivered again).
pub struct Delivery {
    pub topic: String,
    /// A backend-specific position (`id`, `partition/offset`, delivery tag) for logs.
    pub position: String,
    pub message: Message,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("position", &self.position)
            .field("key", &self.message.key)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub fn new(topic: String, position: String, message: Message, acker: Box<dyn Acker>) -> Self {
        Self {
            topic,
            position,
            message,
            acker,
        }
    }

    /// The message is done with: it will not be delivered to this group again.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }
}

/// Names of the three topics (Kafka topics, RabbitMQ queues, embedded topics).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Triggers as received from Tradecloud.
    pub triggers: String,
    /// Normalized order messages, for the ERP.
    pub orders: String,
    /// Triggers the worker could not process, with the reason in a header.
    pub dead_letters: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            triggers: "tradecloud.triggers".to_owned(),
            orders: "tradecloud.orders".to_owned(),
            dead_letters: "tradecloud.triggers.dead-letter".to_owned(),
        }
    }
}

impl TopicsConfig {
    /// Every problem of `topics`, each naming its key (relative to `bus`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (key, name) in [
            ("triggers", &self.triggers),
            ("orders", &self.orders),
            ("dead_letters", &self.dead_letters),
        ] {
            let bad = name.is_empty()
                || name.len() > 200
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if bad {
                problems.push((
                    format!("topics.{key}"),
                    "must be 1 to 200 of letters, digits, '.', '_' and '-'".to_owned(),
                ));
            }
        }
        if self.triggers == self.orders
            || self.triggers == self.dead_letters
            || self.orders == self.dead_letters
        {
            problems.push((
                "topics".to_owned(),
                "triggers, orders and dead_letters must be three different topics".to_owned(),
            ));
        }
        problems
    }
}

/// The `[bus]` section: which broker to use, picked by `backend`. `backend = "embedded"` needs
/// no broker. Each backend's section carries its own `topics`.
#[cfg(any(feature = "embedded", feature = "kafka", feature = "rabbitmq"))]
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum BusConfig {
    /// The on-disk queue: one SQLite file, one machine.
    #[cfg(feature = "embedded")]
    Embedded(embedded::EmbeddedConfig),
    /// RabbitMQ: publisher confirms, a durable topic exchange, one queue per topic.
    #[cfg(feature = "rabbitmq")]
    Rabbitmq(rabbitmq::RabbitMqConfig),
    /// Kafka: idempotent producer with `acks=all`, consumer groups with manual offsets.
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaConfig),
}

#[cfg(any(feature = "embedded", feature = "kafka", feature = "rabbitmq"))]
impl BusConfig {
    /// The topic names of whichever backend is configured.
    pub fn topics(&self) -> &TopicsConfig {
        match self {
            #[cfg(feature = "embedded")]
            BusConfig::Embedded(c) => &c.topics,
            #[cfg(feature = "rabbitmq")]
            BusConfig::Rabbitmq(c) => &c.topics,
            #[cfg(feature = "kafka")]
            BusConfig::Kafka(c) => &c.topics,
        }
    }

    /// Every problem of the section, each with its key below `bus` (`topics.orders`, `uri`, ...).
    pub fn validate(&self) -> Vec<(String, String)> {
        match self {
            #[cfg(feature = "embedded")]
            BusConfig::Embedded(c) => c.validate(),
            #[cfg(feature = "rabbitmq")]
            BusConfig::Rabbitmq(c) => c.validate(),
            #[cfg(feature = "kafka")]
            BusConfig::Kafka(c) => c.validate(),
        }
    }

    /// The backend's name, as written in `backend = "..."`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            #[cfg(feature = "embedded")]
            BusConfig::Embedded(_) => "embedded",
            #[cfg(feature = "rabbitmq")]
            BusConfig::Rabbitmq(_) => "rabbitmq",
            #[cfg(feature = "kafka")]
            BusConfig::Kafka(_) => "kafka",
        }
    }
}

/// A connected bus: a shared publisher and a way to open consumers.
#[derive(Clone)]
pub struct Bus {
    publisher: Arc<dyn Publisher>,
    opener: Arc<dyn ConsumerOpener>,
    pub topics: TopicsConfig,
}

/// Opens consumers on a backend.
#[async_trait]
pub trait ConsumerOpener: Send + Sync + 'static {
    /// A consumer of `topic` in `group`; `None` reads the topic from the start without acking
    /// (a tail for operators).
    async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Consumer>, BusError>;
}

impl Bus {
    pub fn new(
        publisher: Arc<dyn Publisher>,
        opener: Arc<dyn ConsumerOpener>,
        topics: TopicsConfig,
    ) -> Self {
        Self {
            publisher,
            opener,
            topics,
        }
    }

    pub fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }

    /// Closes the backend's connections (graceful shutdown).
    pub async fn close(&self) {
        self.publisher.close().await;
    }

    pub async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.opener.consumer(topic, group).await
    }
}

/// What `check-config` checks beyond [`BusConfig::validate`], without connecting: Kafka's client
/// is built (librdkafka checks every property) and its CA file read.
#[cfg(any(feature = "embedded", feature = "kafka", feature = "rabbitmq"))]
pub fn check(config: &BusConfig) -> Result<(), BusError> {
    if let Some((key, message)) = config.validate().into_iter().next() {
        return Err(BusError::Config(format!("bus.{key}: {message}")));
    }
    match config {
        #[cfg(feature = "kafka")]
        BusConfig::Kafka(c) => kafka::check(c),
        #[allow(unreachable_patterns)]
        _ => Ok(()),
    }
}

/// The one place that picks a backend.
#[cfg(any(feature = "embedded", feature = "kafka", feature = "rabbitmq"))]
pub async fn connect(config: &BusConfig) -> Result<Bus, BusError> {
    if let Some((key, message)) = config.validate().into_iter().next() {
        return Err(BusError::Config(format!("bus.{key}: {message}")));
    }
    match config {
        #[cfg(feature = "embedded")]
        BusConfig::Embedded(c) => {
            let store = embedded::EmbeddedStore::open(c)?;
            Ok(Bus::new(
                Arc::new(store.clone()),
                Arc::new(store),
                c.topics.clone(),
            ))
        }
        #[cfg(feature = "rabbitmq")]
        BusConfig::Rabbitmq(c) => {
            let mq = rabbitmq::RabbitMq::open(c)?;
            Ok(Bus::new(
                Arc::new(mq.clone()),
                Arc::new(mq),
                c.topics.clone(),
            ))
        }
        #[cfg(feature = "kafka")]
        BusConfig::Kafka(c) => {
            let kafka = kafka::Kafka::open(c).await?;
            Ok(Bus::new(
                Arc::new(kafka.clone()),
                Arc::new(kafka),
                c.topics.clone(),
            ))
        }
    }
}
