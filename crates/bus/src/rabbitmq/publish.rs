//! Publishing with publisher confirms on `publish_channels` channels (one by default), many
//! publishes in flight on each.

use async_trait::async_trait;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};

use super::{RabbitMq, unavailable};
use crate::{BusError, CLOUDEVENTS_PREFIX, Headers, Message, Pending, Publisher};

/// The AMQP binding's prefix of CloudEvents attributes (`ce_` in the bridge's headers).
pub(super) const CE_AMQP: &str = "cloudEvents:";
/// AMQP has no message key: it travels in this header of the backend's own.
pub(super) const KEY_HEADER: &str = "tcb-key";

/// `T.<word>`, or `T.order` without a word; only letters, digits, `-` and `_` of the word.
pub fn routing_key(topic: &str, word: Option<&str>) -> String {
    let word: String = word
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(128)
        .collect();
    let word = if word.is_empty() { "order" } else { &word };
    format!("{topic}.{word}")
}

/// The publish channel of messages with `key`: always the same one for a key, so a key's
/// messages keep their order.
fn channel_of(key: &str, channels: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let hash =
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key);
    (hash % channels.max(1) as u64) as usize
}

pub(super) fn to_field_table(headers: &Headers, key: &str) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        let name = match k.strip_prefix(CLOUDEVENTS_PREFIX) {
            Some(attr) => format!("{CE_AMQP}{attr}"),
            None => k.clone(),
        };
        table.insert(name.into(), AMQPValue::LongString(v.as_str().into()));
    }
    table.insert(KEY_HEADER.into(), AMQPValue::LongString(key.into()));
    table
}

#[async_trait]
impl Publisher for RabbitMq {
    fn system(&self) -> &'static str {
        "rabbitmq"
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<(), BusError> {
        self.publish_at(topic, message).await.map(|_| ())
    }

    async fn publish_at(&self, topic: &str, message: Message) -> Result<String, BusError> {
        self.enqueue(topic, message).await?.await
    }

    /// Sends the publish on the channel its key maps to (one key, one channel: RabbitMQ keeps a
    /// channel's order), in call order; the pending resolves with the broker's confirm.
    ///
    /// Triggers go straight to their queue (the default exchange routes by queue name): only
    /// the worker reads them, and routing them through the topic exchange cost the broker a
    /// fifth to a third more CPU per trigger (`bench pipeline`, docs/performance.md). Every
    /// other topic goes through the topic exchange, where ERP queues and the tail streams bind.
    async fn enqueue(&self, topic: &str, message: Message) -> Result<Pending, BusError> {
        let link = self.current()?;
        let config = &self.inner.config;
        let (exchange, key, position) = if topic == config.topics.triggers {
            ("", topic.to_owned(), format!("queue {topic}"))
        } else {
            let key = routing_key(topic, message.routing_word.as_deref());
            let position = format!("routing key {key}");
            (config.exchange.as_str(), key, position)
        };
        let channel = &link.channels[channel_of(&message.key, link.channels.len())];
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(to_field_table(&message.headers, &message.key))
            .with_app_id("tradecloud-bridge".into());
        if let Some(ct) = &message.content_type {
            props = props.with_content_type(ct.as_str().into());
        }
        if let Some(id) = &message.id {
            props = props.with_message_id(id.as_str().into());
        }
        let sent = channel
            .basic_publish(
                exchange.into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.payload,
                props,
            )
            .await;
        let broken = |e: lapin::Error, topic: &str| {
            self.inner.publish.broken.notify_one();
            unavailable(format!("publishing to {topic} failed"), Some(e))
        };
        let confirm = match sent {
            Ok(confirm) => confirm,
            Err(e) => return Err(broken(e, topic)),
        };
        let (inner, topic) = (self.inner.clone(), topic.to_owned());
        Ok(Box::pin(async move {
            match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(position),
                Ok(Confirmation::Ack(Some(returned))) => Err(BusError::Rejected {
                    context: format!(
                        "RabbitMQ returned the message as unroutable ({} {}): no queue is bound for topic {topic} (triggers: no queue of that name)",
                        returned.reply_code, returned.reply_text
                    ),
                    source: None,
                }),
                Ok(Confirmation::Nack(_)) => Err(BusError::Rejected {
                    context: "RabbitMQ nacked the message".to_owned(),
                    source: None,
                }),
                Ok(Confirmation::NotRequested) => Err(BusError::Rejected {
                    context: "the channel is not in confirm mode".to_owned(),
                    source: None,
                }),
                Err(e) => {
                    inner.publish.broken.notify_one();
                    Err(unavailable(
                        format!("publishing to {topic} failed"),
                        Some(e),
                    ))
                }
            }
        }))
    }

    async fn check_ready(&self) -> Result<(), BusError> {
        self.current().map(|_| ())
    }

    async fn close(&self) {
        RabbitMq::close(self).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys() {
        assert_eq!(
            routing_key("tradecloud.orders", None),
            "tradecloud.orders.order"
        );
        assert_eq!(
            routing_key("tradecloud.orders", Some("OrderLinesConfirmedBySupplier")),
            "tradecloud.orders.OrderLinesConfirmedBySupplier"
        );
        assert_eq!(routing_key("t", Some("a.b#*")), "t.ab");
        assert_eq!(routing_key("t", Some("..")), "t.order");
    }

    #[test]
    fn a_key_always_takes_the_same_channel_and_keys_spread() {
        assert_eq!(channel_of("order-1", 4), channel_of("order-1", 4));
        let used: std::collections::BTreeSet<usize> = (0..64)
            .map(|i| channel_of(&format!("order-{i}"), 4))
            .collect();
        assert_eq!(used.len(), 4, "64 keys use all four channels");
        assert_eq!(channel_of("any", 1), 0);
    }
}
