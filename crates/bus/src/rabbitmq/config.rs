//! `[bus]` with `backend = "rabbitmq"`.

use lapin::uri::AMQPUri;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::TopicsConfig;

/// `[bus]` with `backend = "rabbitmq"`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// `amqp://user:password@host:5672/%2f` (vhost `/` URL-encoded) or `amqps://...` for TLS.
    /// Keep the password out of the file: `uri = "amqp://bridge:${RABBITMQ_PASSWORD}@mq:5672/%2f"`.
    #[serde(serialize_with = "tcb_telemetry::redact::uri")]
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
    /// The durable topic exchange the orders and dead letters are published to (triggers go
    /// straight to their queue through the default exchange).
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
    /// A length limit on the orders queue (`x-max-length`), for an ERP that may fall far behind:
    /// when it is reached RabbitMQ refuses publishes (`reject-publish`), the worker pauses (its
    /// bus breaker opens) and goes on once the ERP has consumed. Unset: no limit.
    #[serde(default)]
    pub orders_max_length: Option<u64>,
    /// Channels publishing in parallel, each in confirm mode (a key's messages always on the
    /// same one). One is the default and enough: publishes are pipelined on it (many in flight,
    /// each resolved by its confirm), and each more channel costs the broker a channel process
    /// and smaller confirm batches (on a quorum queue, 4 channels took a third more broker CPU
    /// per message than 1; docs/performance.md).
    #[serde(default = "default_channels")]
    pub publish_channels: usize,
    /// Longest a connection attempt may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Keep a copy of the orders and dead-letter topics in a stream (`<topic>.tail`, RabbitMQ
    /// 3.9+), so that `consume` without a group can read them from their start without taking
    /// messages from their queues. Costs one more write per output message; `false` turns it off.
    #[serde(default = "default_true")]
    pub tail_streams: bool,
    /// How long the tail streams keep messages (`x-max-age`: a number and one of `Y`, `M`, `D`,
    /// `h`, `m`, `s`).
    #[serde(default = "default_tail_max_age")]
    pub tail_stream_max_age: String,
    /// Largest size of one tail stream in bytes (`x-max-length-bytes`); older segments go first.
    #[serde(default = "default_tail_max_bytes")]
    pub tail_stream_max_bytes: u64,
    #[serde(default)]
    pub topics: TopicsConfig,
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
    1
}
fn default_connect_timeout() -> u64 {
    5_000
}
fn default_tail_max_age() -> String {
    "7D".to_owned()
}
fn default_tail_max_bytes() -> u64 {
    1 << 30
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Quorum,
    Classic,
}

impl RabbitMqConfig {
    /// The URI parsed, with the configured heartbeat unless the URI sets one. The error never
    /// holds the password.
    pub(super) fn parsed_uri(&self) -> Result<AMQPUri, String> {
        let mut uri: AMQPUri = self
            .uri
            .expose_secret()
            .parse()
            .map_err(|e: String| format!("not an AMQP URI: {}", strip_secret(&e, &self.uri)))?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(self.heartbeat_seconds);
        }
        Ok(uri)
    }

    /// Every problem of this section, each naming its key (relative to `bus`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(e) = self.parsed_uri() {
            problems.push(("uri".to_owned(), e));
        }
        let mut check = |ok: bool, key: &str, message: &str| {
            if !ok {
                problems.push((key.to_owned(), message.to_owned()));
            }
        };
        check(self.prefetch >= 1, "prefetch", "must be at least 1");
        check(
            self.publish_channels >= 1,
            "publish_channels",
            "must be at least 1",
        );
        check(
            self.delivery_limit >= 1,
            "delivery_limit",
            "must be at least 1",
        );
        check(
            self.connect_timeout_ms >= 1,
            "connect_timeout_ms",
            "must be at least 1",
        );
        check(!self.exchange.is_empty(), "exchange", "must not be empty");
        check(
            !self.dead_letter_exchange.is_empty() && self.dead_letter_exchange != self.exchange,
            "dead_letter_exchange",
            "must not be empty nor the same as exchange",
        );
        check(
            valid_max_age(&self.tail_stream_max_age),
            "tail_stream_max_age",
            "must be a number followed by Y, M, D, h, m or s (e.g. 7D)",
        );
        check(
            self.tail_stream_max_bytes >= 1,
            "tail_stream_max_bytes",
            "must be at least 1",
        );
        problems.extend(self.topics.validate());
        problems
    }
}

fn valid_max_age(s: &str) -> bool {
    let Some(unit) = s.chars().last() else {
        return false;
    };
    let number = &s[..s.len() - unit.len_utf8()];
    matches!(unit, 'Y' | 'M' | 'D' | 'h' | 'm' | 's')
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// Never let the URI's password into an error message.
pub(super) fn strip_secret(message: &str, uri: &SecretString) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stripped_from_errors() {
        let uri = SecretString::from("amqp://bridge:hunter2@mq:5672/%2f");
        assert_eq!(
            strip_secret("cannot connect to amqp://bridge:hunter2@mq", &uri),
            "cannot connect to amqp://bridge:***@mq"
        );
    }

    #[test]
    fn max_age() {
        assert!(valid_max_age("7D") && valid_max_age("12h"));
        assert!(
            !valid_max_age("D")
                && !valid_max_age("7")
                && !valid_max_age("7d")
                && !valid_max_age("")
        );
    }
}
