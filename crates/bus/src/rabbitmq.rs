//! The RabbitMQ backend (lapin): publisher confirms, durable topology, reconnection.
//!
//! Topology, declared idempotently at every (re)connect:
//! * a durable topic exchange (`exchange`); a message for topic `T` is published to it with the
//!   routing key `T.<eventName>` (`T.order` when there is no event name, i.e. a GET trigger or a
//!   fetched order), so an ERP queue can bind `tradecloud.orders.#` or one event name only;
//! * one durable queue per topic (quorum or classic), named like the topic and bound with `T.#`;
//! * a dead-letter exchange (`dead_letter_exchange`, fanout) feeding the dead-letter queue: the
//!   triggers queue dead-letters there what is rejected without requeue or, on quorum queues,
//!   delivered more than `delivery_limit` times (a trigger that crashes the worker every time).
//!
//! Publishing: persistent messages (delivery mode 2), `mandatory` (an unroutable message is an
//! error, not a silent drop), confirm mode on a small pool of channels; `publish` returns only
//! after the broker's ack. While the connection is down every publish fails at once (the ingress
//! answers 503); a supervisor reconnects with back-off, re-declares the topology and the consumers
//! resubscribe. Heartbeats (`heartbeat_seconds`) detect a dead or half-open connection.
//!
//! Ordering: RabbitMQ keeps a queue's order for one consumer; with several consumers on a queue it
//! hands messages out round-robin, so two triggers of one order could be processed at once by two
//! workers. `single_active_consumer = true` (the default) makes RabbitMQ deliver the triggers queue to
//! one worker at a time (the others stand by and take over on failure), which keeps each order in
//! sequence; inside that worker, lanes per order give parallelism across orders. Scale throughput
//! with `worker.lanes`, not with more active consumers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    Acker, BusError, Consumer, ConsumerOpener, Delivery, Headers, Message, Publisher, TopicsConfig,
};

/// Header prefix of CloudEvents attributes in the AMQP binding (`ce_` in the bridge's headers).
const CE_AMQP: &str = "cloudEvents:";
const CE_KAFKA: &str = "ce_";
/// The header that names the event, used in routing keys.
const EVENT_NAME_HEADER: &str = "tcb-event-name";

/// `[bus]` with `backend = "rabbitmq"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// `amqp://user:password@host:5672/%2f` (vhost `/` URL-encoded) or `amqps://...` for TLS.
    /// Keep the password out of the file: `uri = "amqp://bridge:${RABBITMQ_PASSWORD}@mq:5672/%2f"`.
    #[serde(serialize_with = "redacted")]
    pub uri: SecretString,
    /// Heartbeat interval; a connection silent for two intervals counts as lost.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u16,
    /// Unacknowledged deliveries a consumer holds at most (basic.qos).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// `quorum` (replicated, RabbitMQ 3.8+) or `classic`. Changing it needs the queues deleted.
    #[serde(default)]
    pub queue_type: QueueType,
    /// The durable topic exchange all topics are published to.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// The exchange the triggers queue dead-letters to; it feeds the dead-letter queue.
    #[serde(default = "default_dlx")]
    pub dead_letter_exchange: String,
    /// Deliveries of one trigger (quorum queues) before RabbitMQ dead-letters it.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    /// Deliver the triggers queue to one worker at a time (keeps each order in sequence).
    #[serde(default = "default_true")]
    pub single_active_consumer: bool,
    /// Channels publishing in parallel, each in confirm mode.
    #[serde(default = "default_channels")]
    pub publish_channels: usize,
    /// Longest a connection attempt may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default)]
    pub topics: TopicsConfig,
}

fn redacted<S: serde::Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[redacted]")
}
fn default_heartbeat() -> u16 {
    10
}
fn default_prefetch() -> u16 {
    64
}
fn default_exchange() -> String {
    "tradecloud".to_owned()
}
fn default_dlx() -> String {
    "tradecloud.dead-letter".to_owned()
}
fn default_delivery_limit() -> u32 {
    20
}
fn default_true() -> bool {
    true
}
fn default_channels() -> usize {
    4
}
fn default_connect_timeout() -> u64 {
    5_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Quorum,
    Classic,
}

/// One live connection with its publish channels.
struct Link {
    connection: Connection,
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl Link {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }
}

struct Inner {
    config: RabbitMqConfig,
    uri: AMQPUri,
    link: watch::Sender<Option<Arc<Link>>>,
    /// Wakes the supervisor when a user of the link saw it fail.
    broken: Notify,
    stop: CancellationToken,
}

/// A RabbitMQ connection kept alive by a supervisor task. Cheap to clone.
#[derive(Clone)]
pub struct RabbitMq {
    inner: Arc<Inner>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("RabbitMQ: {e}"))
}

impl RabbitMq {
    /// Checks the config and starts the supervisor, which connects in the background: a broker
    /// that is down at start-up is not an error (readiness stays red until it is up).
    pub fn open(config: &RabbitMqConfig) -> Result<Self, BusError> {
        let mut uri: AMQPUri = config.uri.expose_secret().parse().map_err(|e: String| {
            BusError::Config(format!(
                "bus.uri is not an AMQP URI: {}",
                strip_secret(&e, &config.uri)
            ))
        })?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(config.heartbeat_seconds);
        }
        if config.publish_channels == 0 {
            return Err(BusError::Config(
                "bus.publish_channels must be at least 1".to_owned(),
            ));
        }
        let (link, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            config: config.clone(),
            uri,
            link,
            broken: Notify::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), inner.stop.clone()));
        Ok(Self { inner })
    }

    fn current(&self) -> Result<Arc<Link>, BusError> {
        match self.inner.link.borrow().as_ref() {
            Some(link) if link.healthy() => Ok(link.clone()),
            Some(_) => {
                self.inner.broken.notify_one();
                Err(unavailable("the connection is lost; reconnecting"))
            }
            None => Err(unavailable("not connected")),
        }
    }
}

/// Never let the URI's password into an error message.
fn strip_secret(message: &str, uri: &SecretString) -> String {
    let secret = uri.expose_secret();
    let password = secret
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => message.replace(p, "***"),
        None => message.to_owned(),
    }
}

/// Keeps a healthy link published on the watch channel: connect with back-off, declare the
/// topology, open the publish channels; then watch the link and start over when it breaks.
async fn supervise(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match connect(&strong).await {
            Ok(link) => {
                tracing::info!(exchange = %strong.config.exchange, "connected to RabbitMQ");
                backoff = Duration::from_millis(100);
                let link = Arc::new(link);
                strong.link.send_replace(Some(link.clone()));
                drop(strong);
                // Watch the link until it breaks or a user reports it broken.
                loop {
                    let Some(strong) = inner.upgrade() else {
                        return;
                    };
                    // A user that saw the link fail wakes the check early.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = strong.broken.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    if !link.healthy() {
                        tracing::warn!("RabbitMQ connection lost; reconnecting");
                        strong.link.send_replace(None);
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            link.connection.close(200, "reconnecting".into()),
                        )
                        .await;
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect to RabbitMQ");
                drop(strong);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn connect(inner: &Inner) -> Result<Link, BusError> {
    let c = &inner.config;
    let timeout = Duration::from_millis(c.connect_timeout_ms);
    let props = ConnectionProperties::default().with_connection_name("tradecloud-bridge".into());
    let connection =
        tokio::time::timeout(timeout, Connection::connect_uri(inner.uri.clone(), props))
            .await
            .map_err(|_| BusError::Timeout(timeout))?
            .map_err(|e| unavailable(strip_secret(&e.to_string(), &c.uri)))?;
    let setup = async {
        let ch = connection.create_channel().await?;
        declare_topology(&ch, c).await?;
        let _ = ch.close(200, "topology declared".into()).await;
        let mut channels = Vec::with_capacity(c.publish_channels);
        for _ in 0..c.publish_channels {
            let ch = connection.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            channels.push(ch);
        }
        Ok::<_, lapin::Error>(channels)
    };
    match tokio::time::timeout(timeout, setup).await {
        Ok(Ok(channels)) => Ok(Link {
            connection,
            channels,
            next: AtomicUsize::new(0),
        }),
        Ok(Err(e)) => {
            let _ = connection.close(200, "setup failed".into()).await;
            Err(unavailable(format!("declaring the topology failed: {e}")))
        }
        Err(_) => {
            let _ = connection.close(200, "setup timed out".into()).await;
            Err(BusError::Timeout(timeout))
        }
    }
}

fn queue_args(c: &RabbitMqConfig, triggers: bool) -> FieldTable {
    let mut args = FieldTable::default();
    let kind = match c.queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    if triggers {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(c.dead_letter_exchange.as_str().into()),
        );
        if c.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(c.delivery_limit.into()),
            );
        }
        if c.single_active_consumer {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
    }
    args
}

async fn declare_topology(ch: &Channel, c: &RabbitMqConfig) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        c.exchange.as_str().into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        c.dead_letter_exchange.as_str().into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await?;
    let t = &c.topics;
    for (queue, is_triggers) in [
        (&t.triggers, true),
        (&t.orders, false),
        (&t.dead_letters, false),
    ] {
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_args(c, is_triggers),
        )
        .await?;
        ch.queue_bind(
            queue.as_str().into(),
            c.exchange.as_str().into(),
            format!("{queue}.#").into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    ch.queue_bind(
        t.dead_letters.as_str().into(),
        c.dead_letter_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// `T.<eventName>` or `T.order`; only letters, digits, `-` and `_` from the event name.
pub fn routing_key(topic: &str, headers: &Headers) -> String {
    let word: String = headers
        .get(EVENT_NAME_HEADER)
        .map(|n| {
            n.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                .take(128)
                .collect()
        })
        .filter(|w: &String| !w.is_empty())
        .unwrap_or_else(|| "order".to_owned());
    format!("{topic}.{word}")
}

fn to_field_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        let key = match k.strip_prefix(CE_KAFKA) {
            Some(attr) => format!("{CE_AMQP}{attr}"),
            None => k.clone(),
        };
        table.insert(key.into(), AMQPValue::LongString(v.as_str().into()));
    }
    table
}

fn from_field_table(table: Option<&FieldTable>) -> Headers {
    let mut headers = BTreeMap::new();
    for (k, v) in table.map(|t| t.inner().iter()).into_iter().flatten() {
        let key = match k.as_str().strip_prefix(CE_AMQP) {
            Some(attr) => format!("{CE_KAFKA}{attr}"),
            None => k.as_str().to_owned(),
        };
        let value = match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            AMQPValue::Boolean(b) => b.to_string(),
            AMQPValue::LongLongInt(i) => i.to_string(),
            AMQPValue::LongInt(i) => i.to_string(),
            other => format!("{other:?}"),
        };
        headers.insert(key, value);
    }
    headers
}

#[async_trait]
impl Publisher for RabbitMq {
    async fn publish(&self, topic: &str, message: Message) -> Result<(), BusError> {
        let link = self.current()?;
        let i = link.next.fetch_add(1, Ordering::Relaxed) % link.channels.len();
        let channel = &link.channels[i];
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(to_field_table(&message.headers))
            .with_app_id("tradecloud-bridge".into());
        if let Some(ct) = message.headers.get("content-type") {
            props = props.with_content_type(ct.as_str().into());
        }
        if let Some(id) = message
            .headers
            .get("tcb-message-id")
            .or_else(|| message.headers.get("tcb-trigger-id"))
        {
            props = props.with_message_id(id.as_str().into());
        }
        // The key travels as a header too: AMQP has no message key.
        let mut props_headers = props.headers().clone().unwrap_or_default();
        props_headers.insert(
            "tcb-key".into(),
            AMQPValue::LongString(message.key.as_str().into()),
        );
        props = props.with_headers(props_headers);
        let result = async {
            channel
                .basic_publish(
                    self.inner.config.exchange.as_str().into(),
                    routing_key(topic, &message.headers).into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.payload,
                    props,
                )
                .await?
                .await
        }
        .await;
        match result {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => Err(BusError::Rejected(format!(
                "RabbitMQ returned the message as unroutable ({} {}): no queue is bound for topic {topic}",
                returned.reply_code, returned.reply_text
            ))),
            Ok(Confirmation::Nack(_)) => {
                Err(BusError::Rejected("RabbitMQ nacked the message".to_owned()))
            }
            Ok(Confirmation::NotRequested) => Err(BusError::Rejected(
                "the channel is not in confirm mode".to_owned(),
            )),
            Err(e) => {
                self.inner.broken.notify_one();
                Err(unavailable(e))
            }
        }
    }

    async fn check_ready(&self) -> Result<(), BusError> {
        self.current().map(|_| ())
    }
}

#[async_trait]
impl ConsumerOpener for RabbitMq {
    async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let mut consumer = RabbitConsumer {
            bus: self.clone(),
            topic: topic.to_owned(),
            tail: group.is_none(),
            stream: None,
            backoff: Duration::from_millis(100),
        };
        // Subscribe now when connected, so that a tail's temporary queue is bound before the
        // caller goes on (it sees only what is published after that); otherwise `next` does.
        let eager = Duration::from_millis(self.inner.config.connect_timeout_ms);
        if let Ok(Err(e)) = tokio::time::timeout(eager, consumer.subscribe()).await {
            tracing::warn!(error = %e, topic, "cannot subscribe yet; retrying on the first receive");
        }
        Ok(Box::new(consumer))
    }
}

struct RabbitConsumer {
    bus: RabbitMq,
    topic: String,
    /// No group: a temporary exclusive queue bound to the topic (sees new messages only).
    tail: bool,
    stream: Option<(Channel, lapin::Consumer)>,
    backoff: Duration,
}

impl RabbitConsumer {
    async fn subscribe(&mut self) -> Result<(), BusError> {
        let mut rx = self.bus.inner.link.subscribe();
        let link = rx
            .wait_for(|l| l.as_ref().is_some_and(|l| l.healthy()))
            .await
            .map_err(|_| BusError::Closed)?
            .clone()
            .ok_or(BusError::Closed)?;
        let c = &self.bus.inner.config;
        let result = async {
            let ch = link.connection.create_channel().await?;
            ch.basic_qos(c.prefetch, BasicQosOptions::default()).await?;
            let queue = if self.tail {
                let q = ch
                    .queue_declare(
                        "".into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                ch.queue_bind(
                    q.name().clone(),
                    c.exchange.as_str().into(),
                    format!("{}.#", self.topic).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
                q.name().clone()
            } else {
                ShortString::from(self.topic.as_str())
            };
            let consumer = ch
                .basic_consume(
                    queue,
                    // An empty tag: the server names the consumer.
                    "".into(),
                    // A tail acknowledges nothing: the server forgets what it delivered.
                    BasicConsumeOptions {
                        no_ack: self.tail,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((ch, consumer))
        }
        .await;
        match result {
            Ok(s) => {
                self.stream = Some(s);
                self.backoff = Duration::from_millis(100);
                Ok(())
            }
            Err(e) => {
                self.bus.inner.broken.notify_one();
                Err(unavailable(format!("cannot consume {}: {e}", self.topic)))
            }
        }
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if self.stream.is_none()
                && let Err(e) = self.subscribe().await
            {
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                return Err(e);
            }
            let Some((_, consumer)) = self.stream.as_mut() else {
                continue;
            };
            match consumer.next().await {
                Some(Ok(d)) => {
                    let headers = from_field_table(d.properties.headers().as_ref());
                    let key = headers.get("tcb-key").cloned().unwrap_or_default();
                    let mut headers = headers;
                    headers.remove("tcb-key");
                    let position = format!("{}#{}", d.routing_key, d.delivery_tag);
                    let message = Message {
                        key,
                        headers,
                        payload: d.data,
                    };
                    return Ok(Delivery::new(
                        self.topic.clone(),
                        position,
                        message,
                        Box::new(RabbitAcker {
                            acker: d.acker,
                            auto_acked: self.tail,
                        }),
                    ));
                }
                Some(Err(e)) => {
                    self.stream = None;
                    self.bus.inner.broken.notify_one();
                    return Err(unavailable(format!("consuming {} failed: {e}", self.topic)));
                }
                None => {
                    // The channel closed (connection lost, queue deleted): resubscribe.
                    self.stream = None;
                    self.bus.inner.broken.notify_one();
                }
            }
        }
    }
}

struct RabbitAcker {
    acker: lapin::Acker,
    /// Delivered in no-ack mode (a tail): there is nothing to settle.
    auto_acked: bool,
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        if self.auto_acked {
            return Ok(());
        }
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn nack(self: Box<Self>) -> Result<(), BusError> {
        if self.auto_acked {
            return Ok(());
        }
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys() {
        let mut h = Headers::new();
        assert_eq!(
            routing_key("tradecloud.orders", &h),
            "tradecloud.orders.order"
        );
        h.insert(
            EVENT_NAME_HEADER.to_owned(),
            "OrderLinesConfirmedBySupplier".to_owned(),
        );
        assert_eq!(
            routing_key("tradecloud.orders", &h),
            "tradecloud.orders.OrderLinesConfirmedBySupplier"
        );
        h.insert(EVENT_NAME_HEADER.to_owned(), "a.b#*".to_owned());
        assert_eq!(routing_key("t", &h), "t.ab");
    }

    #[test]
    fn cloud_events_use_the_amqp_prefix_and_come_back() {
        let mut h = Headers::new();
        h.insert("ce_id".to_owned(), "1".to_owned());
        h.insert("traceparent".to_owned(), "00-x".to_owned());
        let table = to_field_table(&h);
        assert!(
            table
                .inner()
                .contains_key(&ShortString::from("cloudEvents:id"))
        );
        assert_eq!(from_field_table(Some(&table)), h);
    }

    #[test]
    fn secrets_are_stripped_from_errors() {
        let uri = SecretString::from("amqp://bridge:hunter2@mq:5672/%2f");
        assert_eq!(
            strip_secret("cannot connect to amqp://bridge:hunter2@mq", &uri),
            "cannot connect to amqp://bridge:***@mq"
        );
    }
}
