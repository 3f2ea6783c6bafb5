//! Consuming: a group consumer on the topic's queue (manual acks), or a tail on the topic's stream.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::publish::{CE_AMQP, KEY_HEADER};
use super::{RabbitMq, tail_stream, unavailable};
use crate::{
    Acker, Backoff, BusError, CLOUDEVENTS_PREFIX, Consumer, ConsumerOpener, Delivery, Headers,
    Message,
};

/// The header RabbitMQ puts on every delivery from a stream: the message's offset in it.
const STREAM_OFFSET: &str = "x-stream-offset";

#[async_trait]
impl ConsumerOpener for RabbitMq {
    async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let tail = group.is_none();
        let c = &self.inner.config;
        if tail && !c.tail_streams {
            return Err(BusError::Config(format!(
                "reading {topic} from its start needs bus.tail_streams = true (RabbitMQ keeps no \
                 copy of a queue's messages otherwise); give a consumer group instead"
            )));
        }
        if tail && !super::tailed(c).contains(&topic) {
            return Err(BusError::Config(format!(
                "RabbitMQ keeps a copy for reading from the start of the orders and dead-letter \
                 topics only, not of {topic}; give a consumer group instead (it takes messages \
                 from the queue)"
            )));
        }
        let mut consumer = RabbitConsumer {
            bus: self.clone(),
            topic: topic.to_owned(),
            tail,
            next_offset: None,
            stream: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            probe: None,
        };
        // Subscribe now when connected; otherwise `next` does.
        let eager = Duration::from_millis(self.inner.config.connect_timeout_ms);
        if let Ok(Err(e)) = tokio::time::timeout(eager, consumer.subscribe()).await {
            tracing::warn!(error = %e.chain(), topic, "cannot subscribe yet; retrying on the first receive");
        }
        Ok(Box::new(consumer))
    }
}

struct RabbitConsumer {
    bus: RabbitMq,
    topic: String,
    /// No group: read the topic's stream from its first message (or, after a reconnect, from
    /// the one after the last seen), acknowledging each delivery at once (a stream keeps it).
    tail: bool,
    next_offset: Option<i64>,
    stream: Option<(Channel, lapin::Consumer)>,
    backoff: Backoff,
    /// Stops the queue-depth probe of the current subscription (on resubscribe and on drop).
    probe: Option<tokio_util::sync::DropGuard>,
}

impl RabbitConsumer {
    async fn subscribe(&mut self) -> Result<(), BusError> {
        let mut rx = self.bus.consume_slot().link.subscribe();
        let link = rx
            .wait_for(|l| l.as_ref().is_some_and(|l| l.healthy()))
            .await
            .map_err(|_| BusError::Closed)?
            .clone()
            .ok_or(BusError::Closed)?;
        let c = &self.bus.inner.config;
        let (queue, arguments) = if self.tail {
            let mut args = FieldTable::default();
            let offset = match self.next_offset {
                Some(n) => AMQPValue::LongLongInt(n),
                None => AMQPValue::LongString("first".into()),
            };
            args.insert(STREAM_OFFSET.into(), offset);
            (tail_stream(&self.topic), args)
        } else {
            (self.topic.clone(), FieldTable::default())
        };
        let result = async {
            let ch = link.connection.create_channel().await?;
            ch.basic_qos(c.prefetch, BasicQosOptions::default()).await?;
            let consumer = ch
                .basic_consume(
                    ShortString::from(queue.as_str()),
                    // An empty tag: the server names the consumer.
                    "".into(),
                    BasicConsumeOptions::default(),
                    arguments,
                )
                .await?;
            Ok::<_, lapin::Error>((ch, consumer))
        }
        .await;
        if !self.tail
            && result.is_ok()
            && let Ok(probe) = link.connection.create_channel().await
        {
            // The queue's depth, from a channel of its own (a failed probe closes only that),
            // for as long as this subscription lasts.
            let stop = self.bus.inner.stop.child_token();
            self.probe = Some(stop.clone().drop_guard());
            tokio::spawn(report_depth(probe, queue.clone(), stop));
        }
        match result {
            Ok(s) => {
                self.stream = Some(s);
                self.backoff.reset();
                Ok(())
            }
            Err(e) => {
                self.bus.consume_slot().broken.notify_one();
                Err(unavailable(format!("cannot consume {queue}"), Some(e)))
            }
        }
    }
}

pub(super) fn from_field_table(table: Option<&FieldTable>) -> (String, Headers, Option<i64>) {
    let mut headers = Headers::new();
    let mut key = String::new();
    let mut stream_offset = None;
    for (k, v) in table.map(|t| t.inner().iter()).into_iter().flatten() {
        let value = match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            AMQPValue::Boolean(b) => b.to_string(),
            AMQPValue::LongLongInt(i) => i.to_string(),
            AMQPValue::LongInt(i) => i.to_string(),
            other => format!("{other:?}"),
        };
        match k.as_str() {
            KEY_HEADER => key = value,
            STREAM_OFFSET => stream_offset = value.parse().ok(),
            name => {
                let name = match name.strip_prefix(CE_AMQP) {
                    Some(attr) => format!("{CLOUDEVENTS_PREFIX}{attr}"),
                    None => name.to_owned(),
                };
                headers.insert(name, value);
            }
        }
    }
    (key, headers, stream_offset)
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if self.stream.is_none()
                && let Err(e) = self.subscribe().await
            {
                self.backoff.wait(&self.bus.inner.stop).await;
                return Err(e);
            }
            let Some((_, consumer)) = self.stream.as_mut() else {
                continue;
            };
            match consumer.next().await {
                Some(Ok(d)) => {
                    let (key, headers, stream_offset) =
                        from_field_table(d.properties.headers().as_ref());
                    let position = match stream_offset {
                        Some(offset) => format!("{}#{offset}", tail_stream(&self.topic)),
                        None => format!("{}#{}", d.routing_key, d.delivery_tag),
                    };
                    let message = Message {
                        key,
                        headers,
                        payload: d.data,
                        ..Message::default()
                    };
                    let acker = if self.tail {
                        // A stream keeps its messages: the ack only grants credit for more. It is
                        // sent from a task of its own: no await between taking the delivery and
                        // returning it, so a caller that drops this future (a `select!`) loses
                        // nothing.
                        if let Some(offset) = stream_offset {
                            self.next_offset = Some(offset + 1);
                        }
                        let credit = d.acker;
                        tokio::spawn(async move {
                            if let Err(e) = credit.ack(BasicAckOptions::default()).await {
                                tracing::debug!(error = %e, "acknowledging a stream delivery");
                            }
                        });
                        None
                    } else {
                        Some(d.acker)
                    };
                    return Ok(Delivery::new(
                        self.topic.clone(),
                        position,
                        message,
                        Box::new(RabbitAcker(acker)),
                    ));
                }
                Some(Err(e)) => {
                    self.stream = None;
                    self.bus.consume_slot().broken.notify_one();
                    return Err(unavailable(
                        format!("consuming {} failed", self.topic),
                        Some(e),
                    ));
                }
                None => {
                    // The channel closed (connection lost, queue deleted): resubscribe.
                    self.stream = None;
                    self.bus.consume_slot().broken.notify_one();
                    if self.bus.inner.stop.is_cancelled() {
                        return Err(BusError::Closed);
                    }
                }
            }
        }
    }
}

/// Reports the ready messages of `queue` (`tcb_worker_consumer_lag_messages`) every
/// [`crate::LAG_INTERVAL`] until the connection or the bus closes.
async fn report_depth(channel: Channel, queue: String, stop: tokio_util::sync::CancellationToken) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    loop {
        match channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                passive,
                FieldTable::default(),
            )
            .await
        {
            Ok(q) => tcb_telemetry::metrics::consumer_lag(&queue, u64::from(q.message_count())),
            Err(e) => {
                tracing::debug!(error = %e, queue, "queue depth probe ended");
                return;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(crate::LAG_INTERVAL) => {}
        }
    }
}

/// `None` for a tail's delivery: it was settled on receipt.
struct RabbitAcker(Option<lapin::Acker>);

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let Some(acker) = self.0 else {
            return Ok(());
        };
        acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| unavailable("acknowledging a delivery", Some(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::publish::to_field_table;
    use super::*;

    #[test]
    fn cloud_events_use_the_amqp_prefix_and_come_back_with_the_key() {
        let mut h = Headers::new();
        h.insert("ce_id".to_owned(), "1".to_owned());
        h.insert("traceparent".to_owned(), "00-x".to_owned());
        let table = to_field_table(&h, "order-1");
        assert!(
            table
                .inner()
                .contains_key(&ShortString::from("cloudEvents:id"))
        );
        assert_eq!(
            from_field_table(Some(&table)),
            ("order-1".to_owned(), h, None)
        );
    }
}
