//! The RabbitMQ backend (lapin): publisher confirms, durable topology, reconnection.
//!
//! Topology, declared idempotently at every (re)connect:
//! * a durable topic exchange (`exchange`); a message for topic `T` is published to it with the
//!   routing key `T.<word>`, the word being the event name (`T.order` when there is none: a
//!   fetched order, a GET trigger's dead letter), so an ERP queue can bind `tradecloud.orders.*`
//!   or one event name only;
//!   triggers skip it and go straight to their queue (the default exchange), see [`publish`];
//! * one durable queue per topic (quorum or classic), named like the topic and bound with `T.*`:
//!   exactly one word after the topic, so that a topic whose name extends another's (the default
//!   `tradecloud.triggers.dead-letter` beside `tradecloud.triggers`) never receives the other's
//!   messages (an older `T.#` binding is removed);
//! * with `tail_streams`, a stream for the orders and the dead-letter topic (`T.tail`, bound with
//!   `T.*`, bounded by age and size) that a consumer without a group reads from its first message,
//!   without taking anything from the topic's queue (declared apart: a broker without streams
//!   only loses the tails);
//! * a dead-letter exchange (`dead_letter_exchange`, fanout) feeding the dead-letter queue: the
//!   triggers queue dead-letters there what is rejected without requeue or, on quorum queues,
//!   delivered more than `delivery_limit` times (a trigger that crashes the worker every time).
//!
//! Publishing ([`publish`]): persistent messages (delivery mode 2), `mandatory` (an unroutable
//! message is an error, not a silent drop), confirm mode on `publish_channels` channels (one by
//! default; a key's messages always on the same one, so they keep their order when several are
//! in flight);
//! `publish` returns only after the broker's ack. While the connection is down every publish fails at once
//! (the ingress answers 503); a supervisor reconnects with back-off, re-declares the topology and
//! the consumers resubscribe. Heartbeats (`heartbeat_seconds`) detect a dead or half-open
//! connection.
//!
//! Ordering: RabbitMQ keeps a queue's order for one consumer; with several consumers on a queue it
//! hands messages out round-robin, so two triggers of one order could be processed at once by two
//! workers. `single_active_consumer = true` (the default) makes RabbitMQ deliver the triggers
//! queue to one worker at a time (the others stand by and take over on failure), which keeps each
//! order in sequence; inside that worker, orders run in parallel (up to `worker.max_held`
//! triggers held, `worker.lanes` of them fetching at once). Scale throughput inside the worker,
//! not with more active consumers.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{Backoff, BusError};

mod config;
mod consume;
mod publish;

use config::strip_secret;
pub use config::{QueueType, RabbitMqConfig};

/// One live connection with its publish channels.
struct Link {
    connection: Connection,
    channels: Vec<Channel>,
}

impl Link {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }
}

/// Which connection: publishing and consuming never share one, so a consumer's flow control or
/// a slow ack never stalls a publisher confirm (and the reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Declares the topology and keeps the confirm-mode publish channels.
    Publish,
    /// Carries the consumers' channels; connected on the first consumer.
    Consume,
}

/// One supervised connection.
struct Slot {
    link: watch::Sender<Option<Arc<Link>>>,
    /// Wakes the supervisor when a user of the link saw it fail.
    broken: Notify,
    /// Why the last attempt to connect failed (no secret: [`connect`]'s errors strip the URI),
    /// so that a publish and `/readyz` say why there is no connection, not only that.
    last_error: std::sync::Mutex<Option<String>>,
}

impl Slot {
    fn new() -> Self {
        Self {
            link: watch::channel(None).0,
            broken: Notify::new(),
            last_error: std::sync::Mutex::new(None),
        }
    }

    fn set_last_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }
}

struct Inner {
    config: RabbitMqConfig,
    uri: AMQPUri,
    publish: Slot,
    consume: Slot,
    consume_started: std::sync::Once,
    stop: CancellationToken,
}

impl Inner {
    fn slot(&self, role: Role) -> &Slot {
        match role {
            Role::Publish => &self.publish,
            Role::Consume => &self.consume,
        }
    }
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

fn unavailable(context: impl std::fmt::Display, source: Option<lapin::Error>) -> BusError {
    BusError::Unavailable {
        context: format!("RabbitMQ: {context}"),
        source: source.map(|e| Box::new(e) as crate::BoxError),
    }
}

impl RabbitMq {
    /// Checks the config and starts the supervisor, which connects in the background: a broker
    /// that is down at start-up is not an error (readiness stays red until it is up).
    pub fn open(config: &RabbitMqConfig) -> Result<Self, BusError> {
        if let Some((key, message)) = config.validate().into_iter().next() {
            return Err(BusError::Config(format!("bus.{key}: {message}")));
        }
        let uri = config
            .parsed_uri()
            .map_err(|e| BusError::Config(format!("bus.uri: {e}")))?;
        let inner = Arc::new(Inner {
            config: config.clone(),
            uri,
            publish: Slot::new(),
            consume: Slot::new(),
            consume_started: std::sync::Once::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(supervise(
            Arc::downgrade(&inner),
            Role::Publish,
            inner.stop.clone(),
        ));
        Ok(Self { inner })
    }

    /// The publishing link, when it is healthy.
    fn current(&self) -> Result<Arc<Link>, BusError> {
        let slot = &self.inner.publish;
        match slot.link.borrow().as_ref() {
            Some(link) if link.healthy() => Ok(link.clone()),
            Some(_) => {
                slot.broken.notify_one();
                Err(unavailable("the connection is lost; reconnecting", None))
            }
            None => {
                let last = slot.last_error.lock().ok().and_then(|e| e.clone());
                Err(unavailable(
                    match last {
                        Some(e) => format!("not connected (last attempt: {e})"),
                        None => "not connected".to_owned(),
                    },
                    None,
                ))
            }
        }
    }

    /// The consuming connection's slot, its supervisor started on first use.
    fn consume_slot(&self) -> &Slot {
        self.inner.consume_started.call_once(|| {
            tokio::spawn(supervise(
                Arc::downgrade(&self.inner),
                Role::Consume,
                self.inner.stop.clone(),
            ));
        });
        &self.inner.consume
    }

    /// Closes the connections cleanly and stops reconnecting (graceful shutdown: lapin's I/O
    /// tasks then end on their own instead of being cancelled mid-read when the runtime stops).
    pub async fn close(&self) {
        self.inner.stop.cancel();
        for slot in [&self.inner.publish, &self.inner.consume] {
            if let Some(link) = slot.link.send_replace(None) {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    link.connection.close(200, "shutting down".into()),
                )
                .await;
            }
        }
    }
}

/// Keeps a healthy link of `role` published on its watch channel: connect with back-off (the
/// publishing one also declares the topology and opens the publish channels); then watch the
/// link and start over when it breaks.
async fn supervise(inner: std::sync::Weak<Inner>, role: Role, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = connect(&strong, role) => connected,
        };
        match connected {
            Ok(link) => {
                tracing::info!(exchange = %strong.config.exchange, ?role, "connected to RabbitMQ");
                backoff.reset();
                strong.slot(role).set_last_error(None);
                let link = Arc::new(link);
                strong.slot(role).link.send_replace(Some(link.clone()));
                drop(strong);
                // Watch the link until it breaks or a user reports it broken.
                loop {
                    let Some(strong) = inner.upgrade() else {
                        return;
                    };
                    // A user that saw the link fail wakes the check early.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = strong.slot(role).broken.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    if !link.healthy() {
                        tracing::warn!(?role, "RabbitMQ connection lost; reconnecting");
                        strong.slot(role).link.send_replace(None);
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
                tracing::warn!(error = %e.chain(), ?role, retry_in_ms = backoff.base().as_millis() as u64, "cannot connect to RabbitMQ");
                strong.slot(role).set_last_error(Some(e.chain()));
                drop(strong);
                if !backoff.wait(&stop).await {
                    return;
                }
            }
        }
    }
}

async fn connect(inner: &Inner, role: Role) -> Result<Link, BusError> {
    let c = &inner.config;
    let timeout = Duration::from_millis(c.connect_timeout_ms);
    let name = match role {
        Role::Publish => "tradecloud-bridge (publish)",
        Role::Consume => "tradecloud-bridge (consume)",
    };
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let connection =
        tokio::time::timeout(timeout, Connection::connect_uri(inner.uri.clone(), props))
            .await
            .map_err(|_| BusError::Timeout(timeout))?
            // lapin's error may quote the URI: keep only its text, without the password.
            .map_err(|e| unavailable(strip_secret(&e.to_string(), &c.uri), None))?;
    if role == Role::Consume {
        // Consumers open their own channels on it.
        return Ok(Link {
            connection,
            channels: Vec::new(),
        });
    }
    let setup = async {
        declare_topology(&connection, c).await?;
        if c.tail_streams {
            declare_tail_streams(&connection, c).await;
        }
        let mut channels = Vec::with_capacity(c.publish_channels);
        for _ in 0..c.publish_channels {
            let ch = connection.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            channels.push(ch);
        }
        if let Some(ch) = channels.first() {
            probe_default_exchange(ch).await?;
        }
        Ok::<_, lapin::Error>(channels)
    };
    match tokio::time::timeout(timeout, setup).await {
        Ok(Ok(channels)) => Ok(Link {
            connection,
            channels,
        }),
        Ok(Err(e)) => {
            let _ = connection.close(200, "setup failed".into()).await;
            Err(unavailable("declaring the topology failed", Some(e)))
        }
        Err(_) => {
            let _ = connection.close(200, "setup timed out".into()).await;
            Err(BusError::Timeout(timeout))
        }
    }
}

/// Triggers are published through the default exchange ([`publish`]), which needs write
/// permission on `amq.default`: a user without it would have every trigger refused (and its
/// channel closed) while the connection looks healthy. An empty message to a routing key no
/// queue can have (`amq.` names are reserved) checks it at connect: refused, the connection
/// fails with the broker's reason; allowed, RabbitMQ returns it as unroutable and stores nothing.
async fn probe_default_exchange(channel: &Channel) -> Result<(), lapin::Error> {
    channel
        .basic_publish(
            "".into(),
            "amq.tradecloud-bridge.permission-probe".into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"",
            lapin::BasicProperties::default(),
        )
        .await?
        .await
        .map(|_| ())
}

/// A topic's queue's arguments. Every queue refuses publishes when full (`reject-publish`: the
/// publisher gets a nack, the ingress answers 503, the worker waits) instead of dropping the
/// oldest message; the triggers queue (quorum) dead-letters at least once.
fn queue_args(c: &RabbitMqConfig, topic: &str) -> FieldTable {
    let mut args = FieldTable::default();
    let kind = match c.queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    if topic == c.topics.orders
        && let Some(limit) = c.orders_max_length
    {
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::try_from(limit).unwrap_or(i64::MAX)),
        );
    }
    if topic == c.topics.triggers {
        if c.queue_type == QueueType::Quorum {
            // RabbitMQ's own dead-lettering (past the delivery limit) is at-most-once otherwise.
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
        }
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

fn stream_args(c: &RabbitMqConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(c.tail_stream_max_age.as_str().into()),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(c.tail_stream_max_bytes).unwrap_or(i64::MAX)),
    );
    args
}

/// The stream that keeps a copy of `topic` for tails.
fn tail_stream(topic: &str) -> String {
    format!("{topic}.tail")
}

/// The binding of a topic's queue (and stream): the topic and exactly one word.
fn binding(topic: &str) -> String {
    format!("{topic}.*")
}

/// Declares `queue`; one that exists with other arguments (declared by an older bridge) is used
/// as it is, with a warning that says how to bring it up to date: RabbitMQ refuses to change a
/// queue's arguments, and a refusal must not keep the bridge from connecting.
async fn declare_queue(
    connection: &Connection,
    ch: &mut Channel,
    queue: &str,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match ch.queue_declare(queue.into(), durable, args).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("PRECONDITION_FAILED") => {
            // The refusal closed the channel.
            *ch = connection.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            ch.queue_declare(queue.into(), passive, FieldTable::default())
                .await?;
            tracing::warn!(queue, error = %e, "the queue exists with other arguments (an older bridge declared it) and is used as it is; to get reject-publish and at-least-once dead-lettering, apply them as a policy (docs/rabbitmq.md)");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn declare_topology(connection: &Connection, c: &RabbitMqConfig) -> Result<(), lapin::Error> {
    let mut ch = connection.create_channel().await?;
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
    for queue in [&t.triggers, &t.orders, &t.dead_letters] {
        declare_queue(connection, &mut ch, queue, queue_args(c, queue)).await?;
        bind(&ch, queue, &c.exchange, &binding(queue)).await?;
        // Before 2026-11 queues were bound with `T.#`, which also matched topics whose names
        // extend `T`: remove it (a no-op where it does not exist).
        ch.queue_unbind(
            queue.as_str().into(),
            c.exchange.as_str().into(),
            format!("{queue}.#").into(),
            FieldTable::default(),
        )
        .await?;
    }
    bind(&ch, &t.dead_letters, &c.dead_letter_exchange, "").await?;
    let _ = ch.close(200, "topology declared".into()).await;
    Ok(())
}

/// The topics that get a tail stream: the orders and the dead letters. Not the triggers: a copy
/// there would confirm a trigger even when its queue is gone (a publish that reached only the
/// stream is not returned as unroutable), and the ingress must answer 503 then.
fn tailed(c: &RabbitMqConfig) -> [&str; 2] {
    [&c.topics.orders, &c.topics.dead_letters]
}

/// Declares the tail streams on a channel of their own; a broker without streams (before 3.9) or a
/// refused declaration costs only the tails, never the bridge.
async fn declare_tail_streams(connection: &Connection, c: &RabbitMqConfig) {
    let result = async {
        let ch = connection.create_channel().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        for topic in tailed(c) {
            let stream = tail_stream(topic);
            ch.queue_declare(stream.as_str().into(), durable, stream_args(c))
                .await?;
            bind(&ch, &stream, &c.exchange, &binding(topic)).await?;
        }
        let _ = ch.close(200, "tail streams declared".into()).await;
        Ok::<_, lapin::Error>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot declare the tail streams (RabbitMQ 3.9 or later has streams): consume without a group cannot read topics from their start");
    }
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), lapin::Error> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}
