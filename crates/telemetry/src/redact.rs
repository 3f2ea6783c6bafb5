//! Secrets in printed configuration (`tradecloud-bridge config --print`): each is written as
//! [`REDACTED`], so the effective configuration can be shown or attached to a ticket without
//! leaking a password. Used as `#[serde(serialize_with = "...")]` on the secret fields.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;
use serde::ser::SerializeMap;

/// What a secret is printed as.
pub const REDACTED: &str = "[redacted]";

/// A secret field.
pub fn secret<S: Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED)
}

/// An optional secret field: `None` stays absent.
pub fn optional_secret<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// A map whose every value is a secret (export headers): keys kept, values redacted.
pub fn secret_values<S: Serializer>(
    map: &BTreeMap<String, SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut out = s.serialize_map(Some(map.len()))?;
    for k in map.keys() {
        out.serialize_entry(k, REDACTED)?;
    }
    out.end()
}

/// Whether a free-form setting (a librdkafka property) holds a secret by its name.
pub fn is_secret_key(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "ssl.key.pem", "credential"]
        .iter()
        .any(|word| name.contains(word))
}

/// A map of free-form settings, the values of secret-looking keys redacted.
pub fn properties<S: Serializer>(map: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let mut out = s.serialize_map(Some(map.len()))?;
    for (k, v) in map {
        if is_secret_key(k) {
            out.serialize_entry(k, REDACTED)?;
        } else {
            out.serialize_entry(k, v)?;
        }
    }
    out.end()
}

/// A URI with credentials (`amqp://user:password@host/vhost`): the password redacted, the rest
/// kept so the printed configuration still says where it connects.
pub fn uri<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_uri(v.expose_secret()))
}

/// `scheme://user:password@rest` -> `scheme://user:[redacted]@rest`; a URI without a password
/// is returned as it is, one that cannot be read is redacted whole.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return REDACTED.to_owned();
    };
    match rest.rsplit_once('@') {
        None => uri.to_owned(),
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}"),
            None => format!("{scheme}://{userinfo}@{host}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_keep_everything_but_the_password() {
        assert_eq!(
            redact_uri("amqp://bridge:hunter2@mq:5672/%2f"),
            "amqp://bridge:[redacted]@mq:5672/%2f"
        );
        assert_eq!(
            redact_uri("amqp://bridge:p@ss@mq/%2f"),
            "amqp://bridge:[redacted]@mq/%2f"
        );
        assert_eq!(redact_uri("amqp://mq:5672"), "amqp://mq:5672");
        assert_eq!(redact_uri("hunter2"), REDACTED);
    }

    #[test]
    fn secret_property_names() {
        assert!(is_secret_key("sasl.password"));
        assert!(is_secret_key("ssl.key.password"));
        assert!(is_secret_key("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_key("linger.ms"));
        assert!(!is_secret_key("ssl.ca.location"));
    }
}
