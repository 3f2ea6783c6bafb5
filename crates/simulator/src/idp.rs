//! An identity-provider stand-in in the shape of Microsoft Entra ID, which Tradecloud's docs name
//! for its webhook connector's OAuth 2.0 client-credentials auth: Tradecloud asks the customer's
//! provider for a token (`POST /{tenant}/oauth2/v2.0/token`, `grant_type=client_credentials`) and
//! sends it as `Authorization: Bearer`; the bridge checks it against the provider's keys
//! (`GET /{tenant}/discovery/v2.0/keys`).
//!
//! Keys are RSA 2048 (RS256, as Entra signs) or ECDSA P-256 (ES256), by [`IdpConfig::algorithm`].
//! Keys can be rotated, and a new key can be *staged*: used for signing before it is published, the
//! moment in which a relying party meets a key id it does not know yet.

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The OAuth client the webhook connector is registered as, and what its tokens say.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// The `aud` of issued tokens (the bridge's app registration).
    pub audience: String,
    /// App roles put in `roles`.
    pub roles: Vec<String>,
    /// Lifetime of issued tokens, seconds.
    pub token_seconds: i64,
    /// How tokens are signed: RS256 (Entra's) or ES256.
    pub algorithm: Algorithm,
}

impl Default for IdpConfig {
    fn default() -> Self {
        Self {
            tenant: "tradecloud-customer".to_owned(),
            client_id: "tradecloud-webhook-connector".to_owned(),
            client_secret: "connector-client-secret-0123456789".to_owned(),
            audience: "api://tradecloud-bridge".to_owned(),
            roles: vec!["Webhook.Send".to_owned()],
            token_seconds: 3600,
            algorithm: Algorithm::RS256,
        }
    }
}

/// One signing key: its id, algorithm, private part and public JWK.
struct Key {
    kid: String,
    algorithm: Algorithm,
    private: EncodingKey,
    jwk: Value,
    /// The public key's raw bytes (for forging an HMAC token "signed" with it, in tests).
    public_raw: Vec<u8>,
}

/// The `RSAPrivateKey` (PKCS #1) inside a PKCS #8 `PrivateKeyInfo`: SEQUENCE { INTEGER version,
/// SEQUENCE algorithm, OCTET STRING privateKey }. The signing library takes PKCS #1, the key
/// generator gives PKCS #8.
fn pkcs1_from_pkcs8(der: &[u8]) -> Option<&[u8]> {
    /// One DER element at the start of `input`: (tag, content, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |l, b| (l << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (0x30, info, _) = element(der)? else {
        return None;
    };
    let (0x02, _, rest) = element(info)? else {
        return None;
    };
    let (0x30, _, rest) = element(rest)? else {
        return None;
    };
    let (0x04, key, _) = element(rest)? else {
        return None;
    };
    Some(key)
}

impl Key {
    // Key generation with a working crypto library does not fail; no test could go on without it.
    #[allow(clippy::expect_used)]
    fn generate(algorithm: Algorithm) -> Self {
        if algorithm == Algorithm::RS256 {
            use aws_lc_rs::encoding::AsDer;
            use aws_lc_rs::signature::KeyPair as _;
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .expect("an RSA key pair");
            let pkcs8 = pair.as_der().expect("its PKCS #8 form");
            let pkcs1 = pkcs1_from_pkcs8(pkcs8.as_ref()).expect("PKCS #1 inside PKCS #8");
            let public = pair.public_key();
            let n = public.modulus().big_endian_without_leading_zero().to_vec();
            let e = public.exponent().big_endian_without_leading_zero().to_vec();
            let kid = uuid::Uuid::new_v4().simple().to_string();
            let jwk = json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e),
            });
            return Self {
                private: EncodingKey::from_rsa_der(pkcs1),
                algorithm,
                kid,
                jwk,
                public_raw: n,
            };
        }
        Self::generate_ec()
    }

    fn generate_ec() -> Self {
        // rcgen generates ECDSA P-256 by default (aws-lc-rs underneath); this cannot fail for
        // that algorithm short of a broken crypto library, which no test could go on without.
        #[allow(clippy::expect_used)]
        let pair = rcgen::KeyPair::generate().expect("an ECDSA P-256 key pair");
        let raw = pair.public_key_raw().to_vec();
        let kid = uuid::Uuid::new_v4().simple().to_string();
        let (x, y) = raw[1..].split_at(32);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        Self {
            private: EncodingKey::from_ec_der(&pair.serialize_der()),
            algorithm: Algorithm::ES256,
            kid,
            jwk,
            public_raw: raw,
        }
    }
}

struct State {
    signing: Key,
    /// Published but no longer signing (kept through a rotation, as providers do).
    previous: Vec<Key>,
    /// Signing before being published.
    staged: bool,
}

/// The provider. Cheap to clone; all clones share keys.
#[derive(Clone)]
pub struct Idp {
    pub config: IdpConfig,
    state: Arc<Mutex<State>>,
}

/// Seconds since the epoch.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Idp {
    pub fn new(config: IdpConfig) -> Self {
        let signing = Key::generate(config.algorithm);
        Self {
            config,
            state: Arc::new(Mutex::new(State {
                signing,
                previous: Vec::new(),
                staged: false,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `iss` of tokens, for a provider served at `base_url`.
    pub fn issuer(&self, base_url: &str) -> String {
        format!("{base_url}/{}/v2.0", self.config.tenant)
    }

    /// The JWKS as served: every published key.
    pub fn jwks(&self) -> Value {
        let s = self.state();
        let mut keys: Vec<Value> = s.previous.iter().map(|k| k.jwk.clone()).collect();
        if !s.staged {
            keys.push(s.signing.jwk.clone());
        }
        json!({ "keys": keys })
    }

    /// A new signing key, published at once (the old one stays published).
    pub fn rotate(&self) {
        let mut s = self.state();
        let old = std::mem::replace(&mut s.signing, Key::generate(self.config.algorithm));
        s.previous.push(old);
        s.staged = false;
    }

    /// A new signing key that signs before it is published: tokens carry a key id the JWKS does
    /// not list until [`Idp::publish_staged`].
    pub fn stage_new_key(&self) {
        self.rotate();
        self.state().staged = true;
    }

    pub fn publish_staged(&self) {
        self.state().staged = false;
    }

    /// The claims of a token for the registered client, valid now.
    pub fn claims(&self, base_url: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer(base_url),
            "aud": self.config.audience,
            "sub": self.config.client_id,
            "azp": self.config.client_id,
            "roles": self.config.roles,
            "iat": now,
            "nbf": now,
            "exp": now + self.config.token_seconds,
            "ver": "2.0",
        })
    }

    /// `claims` signed with the current key (its algorithm and `kid` in the header).
    pub fn sign(&self, claims: &Value) -> String {
        let s = self.state();
        let mut header = Header::new(s.signing.algorithm);
        header.kid = Some(s.signing.kid.clone());
        // Signing JSON with a valid EC key cannot fail.
        jsonwebtoken::encode(&header, claims, &s.signing.private).unwrap_or_default()
    }

    /// A token with `alg: none` and no signature, as an attacker would send.
    pub fn unsigned(&self, claims: &Value) -> String {
        let kid = self.state().signing.kid.clone();
        let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    /// A token "signed" with HS256 using the published public key as the HMAC secret (the key
    /// confusion attack on validators that trust the token's `alg`).
    pub fn hmac_with_public_key(&self, claims: &Value) -> String {
        let s = self.state();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(s.signing.kid.clone());
        match EncodingKey::from_secret(&s.signing.public_raw) {
            Ok(key) => jsonwebtoken::encode(&header, claims, &key).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The token endpoint's answer for a form body, or the OAuth error.
    pub fn token_response(
        &self,
        base_url: &str,
        form: &[(String, String)],
    ) -> Result<Value, Value> {
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("grant_type") != Some("client_credentials") {
            return Err(json!({"error": "unsupported_grant_type"}));
        }
        if get("client_id") != Some(self.config.client_id.as_str())
            || get("client_secret") != Some(self.config.client_secret.as_str())
        {
            return Err(json!({"error": "invalid_client"}));
        }
        Ok(json!({
            "token_type": "Bearer",
            "expires_in": self.config.token_seconds,
            "access_token": self.sign(&self.claims(base_url)),
        }))
    }
}
