//! Authentication of Tradecloud's calls: HTTP Basic (the connector's default) or a static bearer
//! token. Comparison is constant-time; credentials never reach a log line or an error message.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// `[ingress.auth]`, picked by `kind`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Basic base64(username:password)`, as set in Tradecloud's webhook settings.
    Basic {
        username: String,
        #[serde(serialize_with = "tcb_telemetry::redact::secret")]
        password: SecretString,
    },
    /// `Authorization: Bearer <token>`, a static token set in Tradecloud's webhook settings.
    Bearer {
        #[serde(serialize_with = "tcb_telemetry::redact::secret")]
        token: SecretString,
    },
}

impl AuthConfig {
    /// Every problem of `auth`, each naming its key (relative to `ingress`). An empty credential
    /// would let an empty `Authorization` through.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match self {
            AuthConfig::Basic { username, password } => {
                if username.is_empty() || username.contains(':') {
                    problems.push((
                        "auth.username".to_owned(),
                        "must not be empty nor contain ':'".to_owned(),
                    ));
                }
                if password.expose_secret().is_empty() {
                    problems.push(("auth.password".to_owned(), "must not be empty".to_owned()));
                }
            }
            AuthConfig::Bearer { token } => {
                if token.expose_secret().trim().is_empty() {
                    problems.push(("auth.token".to_owned(), "must not be empty".to_owned()));
                }
            }
        }
        problems
    }
}

pub(crate) enum Authenticator {
    Basic { expected: Vec<u8> },
    Bearer { expected: Vec<u8> },
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        match config {
            AuthConfig::Basic { username, password } => Self::Basic {
                expected: format!("{username}:{}", password.expose_secret()).into_bytes(),
            },
            AuthConfig::Bearer { token } => Self::Bearer {
                expected: token.expose_secret().as_bytes().to_vec(),
            },
        }
    }

    /// Whether the `Authorization` header value grants access.
    pub fn allows(&self, header: Option<&str>) -> bool {
        let Some(header) = header else { return false };
        let (scheme, value) = header.trim().split_once(' ').unwrap_or((header, ""));
        match self {
            Self::Basic { expected } if scheme.eq_ignore_ascii_case("basic") => STANDARD
                .decode(value.trim())
                .is_ok_and(|given| constant_time_eq::constant_time_eq(&given, expected)),
            Self::Bearer { expected } if scheme.eq_ignore_ascii_case("bearer") => {
                constant_time_eq::constant_time_eq(value.trim().as_bytes(), expected)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic() -> Authenticator {
        Authenticator::new(&AuthConfig::Basic {
            username: "tc".to_owned(),
            password: SecretString::from("s3cret:x"),
        })
    }

    #[test]
    fn basic_auth() {
        let good = format!("Basic {}", STANDARD.encode("tc:s3cret:x"));
        assert!(basic().allows(Some(&good)));
        assert!(basic().allows(Some(&good.replace("Basic", "basic"))));
        assert!(!basic().allows(Some(&format!("Basic {}", STANDARD.encode("tc:wrong")))));
        assert!(!basic().allows(Some("Basic !!!notbase64")));
        assert!(!basic().allows(Some("Bearer s3cret:x")));
        assert!(!basic().allows(None));
    }

    #[test]
    fn bearer_auth() {
        let a = Authenticator::new(&AuthConfig::Bearer {
            token: SecretString::from("tok"),
        });
        assert!(a.allows(Some("Bearer tok")));
        assert!(!a.allows(Some("Bearer tok2")));
        assert!(!a.allows(Some(&format!("Basic {}", STANDARD.encode("x:tok")))));
    }

    #[test]
    fn debug_does_not_show_secrets() {
        let c = AuthConfig::Basic {
            username: "tc".to_owned(),
            password: SecretString::from("s3cret"),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn empty_credentials_are_config_errors() {
        let basic = AuthConfig::Basic {
            username: String::new(),
            password: SecretString::from(""),
        };
        let keys: Vec<String> = basic.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["auth.username", "auth.password"]);
        let bearer = AuthConfig::Bearer {
            token: SecretString::from(" "),
        };
        assert_eq!(bearer.validate().len(), 1);
    }
}
