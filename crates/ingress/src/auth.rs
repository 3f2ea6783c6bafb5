//! Authentication of Tradecloud's calls, as its webhook connector offers it: HTTP Basic, a static
//! bearer token, or an OAuth 2.0 client-credentials JWT from the customer's identity provider
//! (Microsoft Entra ID in Tradecloud's docs), validated against the provider's JWKS.
//!
//! `[ingress.auth]` is one credential or a list (`[[ingress.auth]]`): a call passes when any of
//! them accepts it, so a password, token or signing key is rotated without a moment in which
//! Tradecloud's calls fail. Basic and bearer secrets are kept as SHA-256 digests and compared in
//! constant time against the digest of what was sent, so a failed comparison tells neither the
//! content nor the length. Credentials never reach a log line or an error message.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// Shortest accepted password or token, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// One accepted credential, picked by `kind`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Basic base64(username:password)`, as set in Tradecloud's webhook settings.
    Basic {
        username: String,
        /// At least 16 bytes.
        #[serde(serialize_with = "tcb_telemetry::redact::secret")]
        password: SecretString,
    },
    /// `Authorization: Bearer <token>`, a static token set in Tradecloud's webhook settings; at
    /// least 16 bytes.
    Bearer {
        #[serde(serialize_with = "tcb_telemetry::redact::secret")]
        token: SecretString,
    },
    /// `Authorization: Bearer <JWT>` that Tradecloud obtains from the customer's identity
    /// provider with the OAuth 2.0 client-credentials grant.
    Oauth(OauthConfig),
}

/// `kind = "oauth"`: how a JWT is validated.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OauthConfig {
    /// The `iss` the token must carry, e.g. `https://login.microsoftonline.com/<tenant>/v2.0`.
    pub issuer: String,
    /// The `aud` the token must carry: the application id URI or client id of the bridge's app
    /// registration, e.g. `api://tradecloud-bridge`.
    pub audience: String,
    /// The provider's JSON Web Key Set, e.g.
    /// `https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys`. HTTPS, except on a
    /// loopback address.
    pub jwks_url: String,
    /// Signature algorithms accepted (asymmetric only: RS*, PS*, ES*). Default `["RS256"]`,
    /// Entra's.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds (at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Every one of these must be in the token's `roles` (Entra's app roles).
    #[serde(default)]
    pub required_roles: Vec<String>,
    /// Every one of these must be in the token's `scp` (space-separated scopes).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// When set, the token's `azp` (or Entra v1's `appid`) must be one of these: the client id
    /// Tradecloud's connector uses.
    #[serde(default)]
    pub allowed_client_ids: Vec<String>,
    /// The key set is fetched again this often, seconds.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// A token with a key id not in the cached set fetches the set again, at most this often
    /// (seconds), so random key ids cannot make the bridge hammer the provider.
    #[serde(default = "default_jwks_refetch")]
    pub jwks_refetch_min_seconds: u64,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned()]
}
fn default_leeway() -> u64 {
    60
}
fn default_jwks_refresh() -> u64 {
    3600
}
fn default_jwks_refetch() -> u64 {
    10
}

/// The asymmetric algorithms a JWT may be signed with: never `none`, never HMAC (a shared
/// secret: with a public key as the "secret" anyone could sign).
const ASYMMETRIC: [(&str, Algorithm); 8] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
];

/// `[ingress.auth]`: one table or a list of them (`[[ingress.auth]]`).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Credentials(pub Vec<AuthConfig>);

impl From<AuthConfig> for Credentials {
    fn from(one: AuthConfig) -> Self {
        Self(vec![one])
    }
}

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Credentials;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a credential table or a list of them")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Credentials, A::Error> {
                AuthConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Credentials::from)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Credentials, A::Error> {
                Vec::<AuthConfig>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(Credentials)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Credentials {
    pub fn validate(&self) -> Vec<(String, String)> {
        if self.0.is_empty() {
            return vec![(
                "auth".to_owned(),
                "needs at least one credential".to_owned(),
            )];
        }
        let many = self.0.len() > 1;
        self.0
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.validate().into_iter().map(move |(k, m)| {
                    let key = if many {
                        format!("auth.{i}.{k}")
                    } else {
                        format!("auth.{k}")
                    };
                    (key, m)
                })
            })
            .collect()
    }
}

impl AuthConfig {
    /// Problems, keyed below `auth` (`password`, `oauth.issuer`, ...).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let short = |s: &SecretString| s.expose_secret().len() < MIN_SECRET_BYTES;
        match self {
            AuthConfig::Basic { username, password } => {
                if username.is_empty() || username.contains(':') {
                    problems.push((
                        "username".to_owned(),
                        "must not be empty nor contain ':'".to_owned(),
                    ));
                }
                if short(password) {
                    problems.push((
                        "password".to_owned(),
                        format!("must be at least {MIN_SECRET_BYTES} bytes"),
                    ));
                }
            }
            AuthConfig::Bearer { token } => {
                if short(token) || token.expose_secret().contains(char::is_whitespace) {
                    problems.push((
                        "token".to_owned(),
                        format!("must be at least {MIN_SECRET_BYTES} bytes, without spaces"),
                    ));
                }
            }
            AuthConfig::Oauth(o) => problems.extend(o.validate()),
        }
        problems
    }
}

impl OauthConfig {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, message: String| {
            if !ok {
                problems.push((key.to_owned(), message));
            }
        };
        check(
            !self.issuer.trim().is_empty(),
            "issuer",
            "must not be empty".to_owned(),
        );
        check(
            !self.audience.trim().is_empty(),
            "audience",
            "must not be empty".to_owned(),
        );
        check(
            jwks_url_allowed(&self.jwks_url),
            "jwks_url",
            "must be an https:// URL (http:// only on a loopback address)".to_owned(),
        );
        check(
            !self.algorithms.is_empty() && self.algorithms.iter().all(|a| algorithm(a).is_some()),
            "algorithms",
            format!(
                "must be one or more of {}",
                ASYMMETRIC.map(|(name, _)| name).join(", ")
            ),
        );
        check(
            self.leeway_seconds <= 300,
            "leeway_seconds",
            "must be at most 300".to_owned(),
        );
        check(
            self.jwks_refresh_seconds >= 60,
            "jwks_refresh_seconds",
            "must be at least 60".to_owned(),
        );
        check(
            self.jwks_refetch_min_seconds >= 1,
            "jwks_refetch_min_seconds",
            "must be at least 1".to_owned(),
        );
        problems
    }
}

fn algorithm(name: &str) -> Option<Algorithm> {
    ASYMMETRIC
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, a)| *a)
}

fn jwks_url_allowed(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => true,
        ("http", Some(url::Host::Domain(d))) => d == "localhost",
        ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        _ => false,
    }
}

/// Why a call was refused: kept for the 401's `WWW-Authenticate` and the log, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The scheme the caller tried (`Basic`, `Bearer`) or `None` without a usable header.
    pub scheme: Option<&'static str>,
    /// What was wrong, fit for a log line and the `error_description` of a Bearer challenge:
    /// printable ASCII only (parts of it may come from the token).
    pub reason: String,
    /// The token may well be good but cannot be checked now (the identity provider's keys could
    /// not be fetched, or a new key id met just after a fetch): answer 503, which Tradecloud
    /// retries, not a 401 it would drop.
    pub transient: bool,
}

/// `text` with anything but printable ASCII replaced, at most 200 characters: safe in a header.
fn printable(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| {
            if (' '..='~').contains(&c) && c != '"' && c != '\\' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn refusal(scheme: Option<&'static str>, reason: impl AsRef<str>) -> Refusal {
    Refusal {
        scheme,
        reason: printable(reason.as_ref()),
        transient: false,
    }
}

/// The configured credentials, ready to check requests.
pub struct Authenticator {
    basic: Vec<[u8; 32]>,
    bearer: Vec<[u8; 32]>,
    oauth: Vec<Arc<Jwks>>,
    refreshers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        for r in &self.refreshers {
            r.abort();
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether `given` is among `expected`: every entry is compared, in constant time.
fn any_digest(expected: &[[u8; 32]], given: &[u8]) -> bool {
    let given = digest(given);
    expected.iter().fold(false, |found, e| {
        found | constant_time_eq::constant_time_eq(e, &given)
    })
}

impl Authenticator {
    /// Must be called within a Tokio runtime when an OAuth credential is configured: its key set
    /// is fetched and refreshed by a background task.
    pub fn new(credentials: &Credentials) -> Self {
        let mut a = Authenticator {
            basic: Vec::new(),
            bearer: Vec::new(),
            oauth: Vec::new(),
            refreshers: Vec::new(),
        };
        for c in &credentials.0 {
            match c {
                AuthConfig::Basic { username, password } => a.basic.push(digest(
                    format!("{username}:{}", password.expose_secret()).as_bytes(),
                )),
                AuthConfig::Bearer { token } => {
                    a.bearer.push(digest(token.expose_secret().as_bytes()));
                }
                AuthConfig::Oauth(o) => {
                    let jwks = Arc::new(Jwks::new(o.clone()));
                    a.refreshers
                        .push(tokio::spawn(jwks.clone().refresh_periodically()));
                    a.oauth.push(jwks);
                }
            }
        }
        a
    }

    /// The `WWW-Authenticate` challenges of a 401 for `refusal`.
    pub fn challenges(&self, refusal: &Refusal) -> Vec<String> {
        let mut out = Vec::new();
        if !self.basic.is_empty() {
            out.push(r#"Basic realm="tradecloud-bridge", charset="UTF-8""#.to_owned());
        }
        if !self.bearer.is_empty() || !self.oauth.is_empty() {
            if refusal.scheme == Some("Bearer") {
                out.push(format!(
                    r#"Bearer realm="tradecloud-bridge", error="invalid_token", error_description="{}""#,
                    printable(&refusal.reason)
                ));
            } else {
                out.push(r#"Bearer realm="tradecloud-bridge""#.to_owned());
            }
        }
        out
    }

    /// Checks the `Authorization` header.
    pub async fn check(&self, header: Option<&str>) -> Result<(), Refusal> {
        let Some(header) = header else {
            return Err(refusal(None, "no Authorization header"));
        };
        let (scheme, value) = header.trim().split_once(' ').unwrap_or((header, ""));
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let ok = STANDARD
                .decode(value)
                .is_ok_and(|given| any_digest(&self.basic, &given));
            return if ok {
                Ok(())
            } else {
                Err(refusal(Some("Basic"), "wrong user name or password"))
            };
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(refusal(
                None,
                "an Authorization scheme other than Basic or Bearer",
            ));
        }
        if any_digest(&self.bearer, value.as_bytes()) {
            return Ok(());
        }
        if self.oauth.is_empty() {
            return Err(refusal(Some("Bearer"), "wrong token"));
        }
        // The credential for the token's issuer (read unverified, only to choose): with several
        // issuers configured (a rotation), a token is checked against its own only.
        let issuer = unverified_issuer(value);
        let Some(jwks) = self
            .oauth
            .iter()
            .find(|j| issuer.as_deref() == Some(j.config.issuer.as_str()))
        else {
            let reason = match issuer {
                Some(_) => "the token's issuer (iss) is not accepted",
                None if value.split('.').count() == 3 => "the token has no readable issuer (iss)",
                None => "wrong token",
            };
            return Err(refusal(Some("Bearer"), reason));
        };
        match jwks.validate(value).await {
            Ok(()) => Ok(()),
            Err(Invalid::Token(reason)) => Err(refusal(Some("Bearer"), reason)),
            Err(Invalid::KeysUnavailable(reason)) => Err(Refusal {
                transient: true,
                ..refusal(Some("Bearer"), reason)
            }),
        }
    }
}

/// The `iss` claim of a JWT, read without checking anything: only to choose which configured
/// issuer's keys check the token.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// Why a JWT was not accepted.
enum Invalid {
    /// The token is wrong: 401.
    Token(String),
    /// It cannot be checked now: 503.
    KeysUnavailable(String),
}

/// The claims checked beyond what `jsonwebtoken` validates (`exp`, `nbf`, `iss`, `aud`).
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scp: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    appid: Option<String>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    /// When the set was last asked for (fetched or not).
    attempted: Option<Instant>,
}

/// One OAuth credential: its validation settings and the provider's keys, cached.
pub(crate) struct Jwks {
    config: OauthConfig,
    algorithms: Vec<Algorithm>,
    cache: RwLock<KeyCache>,
    fetching: tokio::sync::Mutex<()>,
    client: Option<reqwest::Client>,
}

impl Jwks {
    fn new(config: OauthConfig) -> Self {
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|a| algorithm(a))
            .collect();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .inspect_err(|e| tracing::error!(error = %e, "cannot build the JWKS client"))
            .ok();
        Self {
            config,
            algorithms,
            cache: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
            client,
        }
    }

    async fn refresh_periodically(self: Arc<Self>) {
        let every = Duration::from_secs(self.config.jwks_refresh_seconds.max(1));
        loop {
            self.fetch().await;
            tokio::time::sleep(every).await;
        }
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .get(kid)
            .cloned()
    }

    /// Fetches the key set; a failure keeps the cached keys (and is logged).
    async fn fetch(&self) {
        let _one = self.fetching.lock().await;
        self.fetch_locked().await;
    }

    /// [`Jwks::fetch`] with the fetch lock held by the caller.
    async fn fetch_locked(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.attempted = Some(Instant::now());
        }
        let Some(client) = &self.client else { return };
        let url = &self.config.jwks_url;
        let set = async {
            let r = client.get(url).send().await.map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("answered {}", r.status()));
            }
            r.json::<JwkSet>().await.map_err(|e| e.to_string())
        }
        .await;
        match set {
            Ok(set) => {
                let keys: HashMap<String, DecodingKey> = set
                    .keys
                    .iter()
                    .filter_map(|jwk| {
                        let kid = jwk.common.key_id.clone()?;
                        DecodingKey::from_jwk(jwk).ok().map(|k| (kid, k))
                    })
                    .collect();
                tracing::info!(url = %url, keys = keys.len(), "OAuth signing keys fetched");
                if let Ok(mut c) = self.cache.write() {
                    c.keys = keys;
                }
            }
            Err(error) => {
                tracing::warn!(url = %url, %error, "cannot fetch the OAuth signing keys; the cached ones stay in use");
            }
        }
    }

    /// The key for `kid`, fetching the set again when it is unknown and no fetch ran within
    /// `jwks_refetch_min_seconds` (checked under the fetch lock, so a burst of tokens with new key
    /// ids makes one fetch). `Err` says whether the answer is final (the set was just fetched and
    /// lacks the id) or not (no keys at all, or the floor held the fetch back).
    async fn key_for(&self, kid: &str) -> Result<DecodingKey, Invalid> {
        if let Some(key) = self.key(kid) {
            return Ok(key);
        }
        let _one = self.fetching.lock().await;
        if let Some(key) = self.key(kid) {
            return Ok(key);
        }
        let (recent, empty) = {
            let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
            let floor = Duration::from_secs(self.config.jwks_refetch_min_seconds);
            (
                c.attempted.is_some_and(|t| t.elapsed() < floor),
                c.keys.is_empty(),
            )
        };
        if !recent || empty {
            self.fetch_locked().await;
        }
        if let Some(key) = self.key(kid) {
            return Ok(key);
        }
        let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
        if c.keys.is_empty() {
            Err(Invalid::KeysUnavailable(
                "the identity provider's signing keys cannot be fetched".to_owned(),
            ))
        } else if recent {
            Err(Invalid::KeysUnavailable(format!(
                "signing key id {kid:?} is not known yet; the keys are fetched again shortly"
            )))
        } else {
            Err(Invalid::Token(format!("unknown signing key id {kid:?}")))
        }
    }

    async fn validate(&self, token: &str) -> Result<(), Invalid> {
        let invalid = |m: String| Invalid::Token(m);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(format!("not a valid JWT: {e}")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the token has no key id (kid)".to_owned()))?;
        let key = self.key_for(&kid).await?;
        let mut v = Validation::new(header.alg);
        // Only the token's own algorithm (already checked against the allowed ones): a list of
        // several families would make the library refuse every token.
        v.algorithms = vec![header.alg];
        v.leeway = self.config.leeway_seconds;
        v.validate_nbf = true;
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| invalid(format!("token refused: {e}")))?
            .claims;
        for role in &self.config.required_roles {
            if !claims.roles.contains(role) {
                return Err(invalid(format!("the token lacks the role {role:?}")));
            }
        }
        let scopes: Vec<&str> = claims.scp.as_deref().unwrap_or("").split(' ').collect();
        for scope in &self.config.required_scopes {
            if !scopes.contains(&scope.as_str()) {
                return Err(invalid(format!("the token lacks the scope {scope:?}")));
            }
        }
        if !self.config.allowed_client_ids.is_empty() {
            let client = claims.azp.or(claims.appid).unwrap_or_default();
            if !self.config.allowed_client_ids.contains(&client) {
                return Err(invalid(
                    "the token's client (azp) is not allowed".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(password: &str) -> AuthConfig {
        AuthConfig::Basic {
            username: "tc".to_owned(),
            password: SecretString::from(password),
        }
    }

    fn header(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    #[tokio::test]
    async fn basic_auth_with_two_passwords_during_a_rotation() {
        let a = Authenticator::new(&Credentials(vec![
            basic("old-password:0123456789"),
            basic("new-password-0123456789"),
        ]));
        assert!(
            a.check(Some(&header("tc", "old-password:0123456789")))
                .await
                .is_ok()
        );
        assert!(
            a.check(Some(&header("tc", "new-password-0123456789")))
                .await
                .is_ok()
        );
        let lower = header("tc", "new-password-0123456789").replace("Basic", "basic");
        assert!(a.check(Some(&lower)).await.is_ok());
        let wrong = a.check(Some(&header("tc", "wrong"))).await.unwrap_err();
        assert_eq!(wrong.scheme, Some("Basic"));
        assert!(a.check(Some("Basic !!!notbase64")).await.is_err());
        assert!(
            a.check(Some("Bearer new-password-0123456789"))
                .await
                .is_err()
        );
        assert!(a.check(None).await.is_err());
        assert_eq!(a.challenges(&wrong).len(), 1);
    }

    #[tokio::test]
    async fn bearer_auth() {
        let a = Authenticator::new(&Credentials::from(AuthConfig::Bearer {
            token: SecretString::from("a-static-token-0123456789"),
        }));
        assert!(
            a.check(Some("Bearer a-static-token-0123456789"))
                .await
                .is_ok()
        );
        let r = a
            .check(Some("Bearer a-static-token-012345678"))
            .await
            .unwrap_err();
        assert_eq!(r.scheme, Some("Bearer"));
        assert!(a.challenges(&r)[0].contains(r#"error="invalid_token""#));
        // An empty token is never a match (it used to pass `Authorization: Bearer`).
        assert!(a.check(Some("Bearer ")).await.is_err());
        assert!(a.check(Some("Bearer")).await.is_err());
    }

    #[test]
    fn debug_does_not_show_secrets() {
        assert!(!format!("{:?}", basic("s3cret-0123456789abc")).contains("s3cret"));
    }

    #[test]
    fn short_or_empty_secrets_are_config_errors() {
        let c = Credentials(vec![
            AuthConfig::Basic {
                username: String::new(),
                password: SecretString::from(""),
            },
            basic("fifteen-bytes-x"),
            AuthConfig::Bearer {
                token: SecretString::from(" "),
            },
            basic("sixteen-bytes-xx"),
        ]);
        let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "auth.0.username",
                "auth.0.password",
                "auth.1.password",
                "auth.2.token"
            ]
        );
        assert!(Credentials(Vec::new()).validate().len() == 1);
    }

    #[test]
    fn oauth_settings_are_checked() {
        let mut o = OauthConfig {
            issuer: "https://login.example/tenant/v2.0".to_owned(),
            audience: "api://tradecloud-bridge".to_owned(),
            jwks_url: "https://login.example/tenant/discovery/v2.0/keys".to_owned(),
            algorithms: default_algorithms(),
            leeway_seconds: 60,
            required_roles: Vec::new(),
            required_scopes: Vec::new(),
            allowed_client_ids: Vec::new(),
            jwks_refresh_seconds: 3600,
            jwks_refetch_min_seconds: 10,
        };
        assert!(o.validate().is_empty());
        o.jwks_url = "http://127.0.0.1:9000/keys".to_owned();
        assert!(o.validate().is_empty(), "plain http on loopback");
        for bypass in [
            "http://localhost:1@evil.example/keys",
            "http://evil.example/?localhost",
            "ftp://localhost/k",
        ] {
            o.jwks_url = bypass.to_owned();
            assert!(
                o.validate().iter().any(|(k, _)| k == "jwks_url"),
                "{bypass}"
            );
        }
        o.jwks_refetch_min_seconds = 0;
        assert!(
            o.validate()
                .iter()
                .any(|(k, _)| k == "jwks_refetch_min_seconds")
        );
        o.jwks_refetch_min_seconds = 10;
        o.jwks_url = "http://idp.example/keys".to_owned();
        o.algorithms = vec!["HS256".to_owned()];
        let keys: Vec<String> = o.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["jwks_url", "algorithms"]);
        o.algorithms = vec!["none".to_owned()];
        assert!(o.validate().iter().any(|(k, _)| k == "algorithms"));
    }

    #[test]
    fn one_credential_or_a_list() {
        #[derive(Deserialize)]
        struct S {
            auth: Credentials,
        }
        let one: S =
            toml::from_str(r#"auth = { kind = "bearer", token = "a-static-token-0123456789" }"#)
                .unwrap();
        assert_eq!(one.auth.0.len(), 1);
        let many: S = toml::from_str(
            r#"
[[auth]]
kind = "basic"
username = "tc"
password = "old-password-0123456789"
[[auth]]
kind = "oauth"
issuer = "https://login.example/t/v2.0"
audience = "api://x"
jwks_url = "https://login.example/t/keys"
"#,
        )
        .unwrap();
        assert_eq!(many.auth.0.len(), 2);
        let e = toml::from_str::<S>(r#"auth = { kind = "digest" }"#)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("unknown variant `digest`, expected one of `basic`, `bearer`, `oauth`"),
            "{e}"
        );
    }
}
