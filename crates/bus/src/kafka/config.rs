//! `[bus]` with `backend = "kafka"`, and the librdkafka properties it makes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::config::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::TopicsConfig;

/// `[bus]` with `backend = "kafka"`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
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
    #[serde(default, serialize_with = "tcb_telemetry::redact::optional_secret")]
    pub sasl_password: Option<SecretString>,
    /// CA bundle (PEM) to verify the brokers with; unset: the system's.
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// Any other librdkafka property, for producer and consumer alike, e.g.
    /// `properties = { "socket.keepalive.enable" = "true" }`. Checked by librdkafka at start-up.
    #[serde(default, serialize_with = "tcb_telemetry::redact::properties")]
    pub properties: BTreeMap<String, String>,
    /// How long librdkafka tries to deliver a message before it reports a failure. Keep it at or
    /// below the ingress's `ack_timeout_ms`, so a stuck publish fails rather than lingers.
    #[serde(default = "default_message_timeout")]
    pub message_timeout_ms: u64,
    /// `none`, `gzip`, `lz4`, `snappy` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// Create missing topics at start-up; `false`: only check that they exist.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of each topic the bridge creates; below 3 a broker loss can lose acknowledged
    /// triggers (`check-config` warns). Topics are created with `min.insync.replicas` = 2 when
    /// this allows (so `acks=all` means two copies).
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// How long the triggers and dead-letter topics keep messages (`retention.ms` of the topics
    /// the bridge creates): long, so that a stalled worker loses nothing that was answered 200.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// Largest message the bridge produces (`message.max.bytes` of the producer and
    /// `max.message.bytes` of the topics it creates). Must hold the ingress's largest body plus
    /// the envelope (`check-config` checks); an order message over it is dead-lettered.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
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

fn default_message_timeout() -> u64 {
    5_000
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
fn default_retention_hours() -> u64 {
    14 * 24
}
fn default_max_message_bytes() -> usize {
    8 * 1024 * 1024
}

/// librdkafka properties the bridge sets itself (for its guarantees, or from its own keys):
/// `properties` may not override them.
pub(super) const OWN_PROPERTIES: [&str; 24] = [
    "bootstrap.servers",
    "client.id",
    // From `session_timeout_ms`, `max_poll_interval_ms`, `commit_interval_ms`.
    "session.timeout.ms",
    "max.poll.interval.ms",
    "auto.commit.interval.ms",
    // The worker's settings: a producer's linger, a consumer's partition ends and statistics
    // (the consumer-lag gauge).
    "linger.ms",
    "enable.partition.eof",
    "statistics.interval.ms",
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "enable.idempotence",
    "acks",
    "message.timeout.ms",
    "message.max.bytes",
    "compression.type",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    // The share of the Tradecloud rate is taken from eager rebalances' full assignments.
    "partition.assignment.strategy",
];

/// What an envelope adds to a body at most (fields, escaping of the few characters a JSON
/// body has outside strings is none; headers and the key are apart): a generous bound.
pub const ENVELOPE_OVERHEAD_BYTES: usize = 64 * 1024;
fn default_session_timeout() -> u32 {
    10_000
}
fn default_max_poll() -> u32 {
    300_000
}
fn default_commit_interval() -> u32 {
    1_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// The producer's `compression.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    #[default]
    Lz4,
    Snappy,
    Zstd,
}

impl KafkaConfig {
    /// Every problem of this section, each naming its key (relative to `bus`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, message: &str| {
            if !ok {
                problems.push((key.to_owned(), message.to_owned()));
            }
        };
        check(
            self.bootstrap_servers
                .split(',')
                .all(|s| !s.trim().is_empty()),
            "bootstrap_servers",
            "must list host:port pairs, separated by commas",
        );
        check(
            self.message_timeout_ms > 0,
            "message_timeout_ms",
            "must be at least 1",
        );
        check(self.partitions >= 1, "partitions", "must be at least 1");
        check(
            self.retention_hours >= 1,
            "retention_hours",
            "must be at least 1",
        );
        check(
            (ENVELOPE_OVERHEAD_BYTES * 2..=1_000_000_000).contains(&self.max_message_bytes),
            "max_message_bytes",
            "must be 128 KiB to 1,000,000,000",
        );
        check(
            self.replication_factor >= 1,
            "replication_factor",
            "must be at least 1",
        );
        check(
            self.session_timeout_ms > 0,
            "session_timeout_ms",
            "must be at least 1",
        );
        check(
            self.max_poll_interval_ms >= self.session_timeout_ms,
            "max_poll_interval_ms",
            "must be at least session_timeout_ms",
        );
        check(
            self.commit_interval_ms > 0,
            "commit_interval_ms",
            "must be at least 1",
        );
        check(
            self.sasl_mechanism.is_none() || self.sasl_username.is_some(),
            "sasl_username",
            "is needed with sasl_mechanism",
        );
        for key in self.properties.keys() {
            if OWN_PROPERTIES.contains(&key.as_str()) {
                problems.push((
                    format!("properties.{key}"),
                    "is set by the bridge (its delivery guarantees or its own keys depend on it)"
                        .to_owned(),
                ));
            }
        }
        problems.extend(self.topics.validate());
        problems
    }

    /// Whether a body of `max_body_bytes` fits a message after encoding.
    pub fn fits_body(&self, max_body_bytes: usize) -> bool {
        max_body_bytes.saturating_add(ENVELOPE_OVERHEAD_BYTES) <= self.max_message_bytes
    }

    /// The librdkafka properties shared by producer, consumer and admin client.
    pub(super) fn client_config(&self) -> ClientConfig {
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

    pub(super) fn compression_type(&self) -> &'static str {
        match self.compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Snappy => "snappy",
            Compression::Zstd => "zstd",
        }
    }
}
