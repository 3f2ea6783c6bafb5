//! Calls a webhook like Tradecloud does.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

/// How to authenticate to the bridge.
#[derive(Debug, Clone)]
pub enum SenderAuth {
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
    /// A token from the customer's identity provider (OAuth 2.0 client credentials), as
    /// Tradecloud's current connector does; fetched once and reused until it nearly expires.
    OAuth(OAuthClient),
    None,
}

/// Tradecloud's OAuth client registration at the customer's identity provider.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// e.g. `api://tradecloud-bridge/.default`
    pub scope: String,
}

#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The webhook URL as configured at Tradecloud, e.g. `https://127.0.0.1:8443/webhook`.
    pub url: String,
    pub auth: SenderAuth,
    /// PEM of a CA to trust besides the system's (the bridge's development CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Attempts per webhook, the first included (Tradecloud retries indefinitely; tests bound it).
    pub max_attempts: u32,
    /// First back-off; it doubles up to 5 s.
    pub initial_backoff: Duration,
    pub timeout: Duration,
}

/// One webhook call.
#[derive(Debug, Clone)]
pub enum Webhook {
    /// `GET <url>/{orderId}`
    GetPath(String),
    /// `GET <url>?orderId=`
    GetQuery(String),
    /// `GET <url>?legacyOrderId=`
    GetLegacyQuery(String),
    /// `POST <url>` with a JSON body.
    Post(Vec<u8>),
    /// `PUT <url>` with a JSON body.
    Put(Vec<u8>),
}

/// What came of a webhook call.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final status, `None` when no attempt got an answer.
    pub status: Option<u16>,
    pub attempts: u32,
    /// `triggerId` from a 2xx answer.
    pub trigger_id: Option<String>,
    /// From the first attempt to the final answer.
    pub elapsed: Duration,
    /// The last error or error body.
    pub error: Option<String>,
}

impl Outcome {
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("webhook sender: {0}")]
pub struct SenderError(String);

/// A webhook caller.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    config: SenderConfig,
    /// The OAuth access token and when to fetch a new one.
    token: std::sync::Arc<tokio::sync::Mutex<Option<(String, Instant)>>>,
}

impl Sender {
    pub fn new(config: SenderConfig) -> Result<Self, SenderError> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent("Tradecloud-Webhook-Simulator");
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| SenderError(e.to_string()))?;
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Self {
            http: builder.build().map_err(|e| SenderError(e.to_string()))?,
            config,
            token: std::sync::Arc::default(),
        })
    }

    /// The OAuth access token (client-credentials grant), cached until a minute before it expires.
    async fn oauth_token(&self, client: &OAuthClient) -> Result<String, String> {
        let mut cached = self.token.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client.client_id.as_str()),
            ("client_secret", client.client_secret.as_str()),
            ("scope", client.scope.as_str()),
        ];
        let r = self
            .http
            .post(&client.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.map_err(|e| format!("token endpoint: {e}"))?;
        let token = body["access_token"]
            .as_str()
            .filter(|_| status.is_success())
            .ok_or_else(|| format!("token endpoint answered {status}: {body}"))?
            .to_owned();
        let lifetime = body["expires_in"].as_u64().unwrap_or(300);
        let renew_at = Instant::now() + Duration::from_secs(lifetime.saturating_sub(60).max(1));
        *cached = Some((token.clone(), renew_at));
        Ok(token)
    }

    fn request(&self, webhook: &Webhook, oauth: Option<&str>) -> reqwest::RequestBuilder {
        let url = self.config.url.trim_end_matches('/');
        let json = |r: reqwest::RequestBuilder, body: &[u8]| {
            r.header("Content-Type", "application/json")
                .body(body.to_vec())
        };
        let req = match webhook {
            Webhook::GetPath(id) => self.http.get(format!("{url}/{id}")),
            Webhook::GetQuery(id) => self.http.get(url).query(&[("orderId", id)]),
            Webhook::GetLegacyQuery(id) => self.http.get(url).query(&[("legacyOrderId", id)]),
            Webhook::Post(body) => json(self.http.post(url), body),
            Webhook::Put(body) => json(self.http.put(url), body),
        };
        match &self.config.auth {
            SenderAuth::Basic { username, password } => req.basic_auth(username, Some(password)),
            SenderAuth::Bearer(token) => req.bearer_auth(token),
            SenderAuth::OAuth(_) => req.bearer_auth(oauth.unwrap_or_default()),
            SenderAuth::None => req,
        }
    }

    /// Sends until an answer other than >500 arrives or the attempts run out.
    pub async fn send(&self, webhook: &Webhook) -> Outcome {
        let start = Instant::now();
        let mut backoff = self.config.initial_backoff;
        let mut outcome = Outcome {
            status: None,
            attempts: 0,
            trigger_id: None,
            elapsed: Duration::ZERO,
            error: None,
        };
        while outcome.attempts < self.config.max_attempts.max(1) {
            outcome.attempts += 1;
            let oauth = match &self.config.auth {
                SenderAuth::OAuth(client) => match self.oauth_token(client).await {
                    Ok(token) => Some(token),
                    Err(e) => {
                        outcome.error = Some(e);
                        break;
                    }
                },
                _ => None,
            };
            match self.request(webhook, oauth.as_deref()).send().await {
                Ok(response) => {
                    let status = response.status();
                    outcome.status = Some(status.as_u16());
                    let body = response.text().await.unwrap_or_default();
                    if status.is_success() {
                        outcome.trigger_id = serde_json::from_str::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v.get("triggerId")?.as_str().map(str::to_owned));
                        outcome.error = None;
                        break;
                    }
                    outcome.error = Some(body);
                    if status <= StatusCode::INTERNAL_SERVER_ERROR {
                        break; // Tradecloud does not retry 4xx and 500.
                    }
                }
                Err(e) => {
                    outcome.status = None;
                    outcome.error = Some(e.to_string());
                }
            }
            if outcome.attempts < self.config.max_attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        outcome.elapsed = start.elapsed();
        outcome
    }
}
