//! The RabbitMQ backend (lapin): publisher confirms, durable topology, reconnection.
//!
//! Topology, declared idempotently at every (re)connect:
//! * a durable topic exchange (`exchange`); a message for topic `T` is published to it with the
//!   routing key `T.<word>`, the word being the event name (`T.order` when there is none, i.e. a
//!   GET trigger or a fetched order), so an ERP queue can bind `tradecloud.orders.*` or one event
//!   name only;
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
//! message is an error, not a silent drop), confirm mode on a small pool of channels; `publish`
//! returns only after the broker's ack. While the connection is down every publish fails at once
//! (the ingress answers 503); a supervisor reconnects with back-off, re-declares the topology and
//! the consumers resubscribe. Heartbeats (`heartbeat_seconds`) detect a dead or half-open
//! connection.
//!
//! Ordering: RabbitMQ keeps a queue's order for one consumer; with several consumers on a queue it
//! hands messages out round-robin, so two triggers of one order could be processed at once by two
//! workers. `single_active_consumer = true` (the default) makes RabbitMQ deliver the triggers
//! queue to one worker at a time (the others stand by and take over on failure), which keeps each
//! order in sequence; inside that worker, lanes per order give parallelism across orders. Scale
//! throughput with `worker.lanes`, not with more active consumers.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
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
                Err(unavailable("the connection is lost; reconnecting", None))
            }
            None => Err(unavailable("not connected", None)),
        }
    }

    /// Closes the connection cleanly and stops reconnecting (graceful shutdown: lapin's I/O task
    /// then ends on its own instead of being cancelled mid-read when the runtime stops).
    pub async fn close(&self) {
        self.inner.stop.cancel();
        let link = self.inner.link.send_replace(None);
        if let Some(link) = link {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                link.connection.close(200, "shutting down".into()),
            )
            .await;
        }
    }
}

/// Keeps a healthy link published on the watch channel: connect with back-off, declare the
/// topology, open the publish channels; then watch the link and start over when it breaks.
async fn supervise(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = connect(&strong) => connected,
        };
        match connected {
            Ok(link) => {
                tracing::info!(exchange = %strong.config.exchange, "connected to RabbitMQ");
                backoff.reset();
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
                tracing::warn!(error = %e.chain(), retry_in_ms = backoff.base().as_millis() as u64, "cannot connect to RabbitMQ");
                drop(strong);
                if !backoff.wait(&stop).await {
                    return;
                }
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
            // lapin's error may quote the URI: keep only its text, without the password.
            .map_err(|e| unavailable(strip_secret(&e.to_string(), &c.uri), None))?;
    let setup = async {
        let ch = connection.create_channel().await?;
        declare_topology(&ch, c).await?;
        let _ = ch.close(200, "topology declared".into()).await;
        if c.tail_streams {
            declare_tail_streams(&connection, c).await;
        }
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
            Err(unavailable("declaring the topology failed", Some(e)))
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
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let t = &c.topics;
    for (queue, is_triggers) in [
        (&t.triggers, true),
        (&t.orders, false),
        (&t.dead_letters, false),
    ] {
        ch.queue_declare(
            queue.as_str().into(),
            durable_queue,
            queue_args(c, is_triggers),
        )
        .await?;
        bind(ch, queue, &c.exchange, &binding(queue)).await?;
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
    bind(ch, &t.dead_letters, &c.dead_letter_exchange, "").await
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
