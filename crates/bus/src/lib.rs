//! The broker seam: [`Publisher`] and [`Consumer`] traits, the message and its headers, and the
//! backends behind cargo features. [`connect`] is the one place that picks a backend from config.
//!
//! Contract of every backend:
//! * [`Publisher::publish`] returns `Ok` only once the broker holds the message durably (embedded:
//!   committed and fsynced; Kafka: delivery report with `acks=all`; RabbitMQ: publisher confirm).
//! * [`Consumer::next`] yields [`Delivery`]s that stay unacknowledged until [`Delivery::ack`]; an
//!   unacknowledged delivery is delivered again after a crash or restart (at least once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

/// Message headers: string to string, the common ground of Kafka, AMQP and the embedded store.
pub type Headers = BTreeMap<String, String>;

/// One message on a topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Partitioning/ordering key: the order id.
    pub key: String,
    pub headers: Headers,
    pub payload: Vec<u8>,
}

/// Errors of the bus. [`BusError::is_transient`] tells a retry-later failure from a permanent one.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    #[error("the broker is overloaded: {0}")]
    Overloaded(String),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the message: {0}")]
    Rejected(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("the bus is shutting down")]
    Closed,
    #[error("bus configuration: {0}")]
    Config(String),
}

impl BusError {
    /// Whether retrying later can succeed (the ingress answers 503, the worker backs off).
    pub fn is_transient(&self) -> bool {
        !matches!(self, BusError::Config(_))
    }
}

/// Publishes messages durably.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Returns only once the broker holds the message durably.
    async fn publish(&self, topic: &str, message: Message) -> Result<(), BusError>;
    /// `Ok` when the broker is reachable and publishes can succeed (readiness).
    async fn check_ready(&self) -> Result<(), BusError>;
}

/// Yields deliveries from one topic for one consumer group.
#[async_trait]
pub trait Consumer: Send + 'static {
    /// The next delivery; waits until one is there.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// Settles one delivery with its backend.
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// Give the message back for redelivery.
    async fn nack(self: Box<Self>) -> Result<(), BusError>;
}

/// A message received from a topic, to be acked or nacked explicitly.
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

    /// The message is given back and delivered again.
    pub async fn nack(self) -> Result<(), BusError> {
        self.acker.nack().await
    }
}

/// Names of the three topics (Kafka topics, RabbitMQ queues, embedded topics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// The `[bus]` section: which broker to use, picked by `backend`. `backend = "embedded"` needs
/// no broker. Each backend's section carries its own `topics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

    pub async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.opener.consumer(topic, group).await
    }
}

/// The one place that picks a backend.
pub async fn connect(config: &BusConfig) -> Result<Bus, BusError> {
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
