//! Tradecloud's current webhook connector against the ingress, over real HTTPS with
//! `tradecloud-bridge run` as a process: Basic credentials during a rotation, OAuth 2.0
//! client-credentials JWTs from the simulator's identity provider (issued, forged, expired, from
//! a rotated key), and secrets refused at start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use support::{PASSWORD, USER, World, wait_ready};
use tcb_simulator::{OAuthClient, Sender, SenderAuth, SenderConfig, Webhook};

/// The next password of a rotation: configured beside the current one.
const NEXT_PASSWORD: &str = "next-webhook-password-0123456789";

/// The world's config with two Basic passwords and the simulator's identity provider.
fn connector_world() -> World {
    let world = World::new(1 << 20);
    let sim = &world.sim;
    let idp = &sim.idp().config;
    let text = std::fs::read_to_string(&world.config).unwrap();
    let auth = format!(
        r#"auth = [
  {{ kind = "basic", username = "{USER}", password = "${{E2E_WEBHOOK_PASSWORD}}" }},
  {{ kind = "basic", username = "{USER}", password = "{NEXT_PASSWORD}" }},
  {{ kind = "oauth", issuer = "{issuer}", audience = "{audience}", jwks_url = "{jwks}", algorithms = ["ES256"], leeway_seconds = 5, required_roles = ["Webhook.Send"], allowed_client_ids = ["{client}"], jwks_refetch_min_seconds = 0 }},
]"#,
        issuer = sim.idp_issuer(),
        audience = idp.audience,
        jwks = sim.idp_jwks_url(),
        client = idp.client_id,
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("auth = "))
        .unwrap()
        .to_owned();
    std::fs::write(&world.config, text.replace(&line, &auth)).unwrap();
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_rotation_and_oauth_jwts_from_the_identity_provider() {
    let world = connector_world();
    let sim = &world.sim;
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(30)).await;
    let client = world.client();
    let url = format!("{}/connector-order-1", bridge.url());
    let call = |authorization: String| {
        let request = client.get(&url).header(AUTHORIZATION, authorization);
        async move {
            let r = request.send().await.unwrap();
            let challenges: Vec<String> = r
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            (r.status().as_u16(), challenges)
        }
    };
    let basic = |password: &str| {
        use base64::Engine;
        let pair = format!("{USER}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };

    // A password rotation: the current and the next password both work, a wrong one does not.
    assert_eq!(call(basic(PASSWORD)).await.0, 200);
    assert_eq!(call(basic(NEXT_PASSWORD)).await.0, 200);
    let (status, challenges) = call(basic("wrong-password-0123456789")).await;
    assert_eq!(status, 401);
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic realm=")),
        "{challenges:?}"
    );

    // The connector's OAuth flow end to end: the sender gets a token from the identity provider
    // (client credentials) and sends it as a bearer token.
    let idp = sim.idp();
    let sender = Sender::new(SenderConfig {
        url: bridge.url(),
        auth: SenderAuth::OAuth(OAuthClient {
            token_url: sim.idp_token_url(),
            client_id: idp.config.client_id.clone(),
            client_secret: idp.config.client_secret.clone(),
            scope: format!("{}/.default", idp.config.audience),
        }),
        ca_pem: Some(std::fs::read(&world.cert.ca).unwrap()),
        max_attempts: 1,
        initial_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let o = sender
        .send(&Webhook::GetPath("connector-order-2".to_owned()))
        .await;
    assert_eq!(o.status, Some(200), "{o:?}");
    assert!(o.trigger_id.is_some());

    // Tokens that must be refused: 401 with a Bearer challenge naming the invalid token.
    let valid = idp.claims(&sim.base_url());
    let with = |key: &str, value: serde_json::Value| {
        let mut c = valid.clone();
        c[key] = value;
        c
    };
    let now = chrono::Utc::now().timestamp();
    let mut expired = with("exp", (now - 600).into());
    expired["nbf"] = (now - 1200).into();
    expired["iat"] = (now - 1200).into();
    let refused = [
        ("expired", idp.sign(&expired)),
        ("not yet valid", idp.sign(&with("nbf", (now + 600).into()))),
        (
            "wrong audience",
            idp.sign(&with("aud", "api://someone-else".into())),
        ),
        (
            "wrong issuer",
            idp.sign(&with("iss", "https://evil.example/v2.0".into())),
        ),
        (
            "without the role",
            idp.sign(&with("roles", serde_json::json!([]))),
        ),
        (
            "another client",
            idp.sign(&with("azp", "someone-else".into())),
        ),
        ("alg none", idp.unsigned(&valid)),
        (
            "HS256 keyed with the public key",
            idp.hmac_with_public_key(&valid),
        ),
        ("not a JWT", "not-a-jwt".to_owned()),
    ];
    for (what, token) in refused {
        let (status, challenges) = call(format!("Bearer {token}")).await;
        assert_eq!(status, 401, "{what}");
        assert!(
            challenges.iter().any(
                |c| c.starts_with(r#"Bearer realm="tradecloud-bridge", error="invalid_token""#)
            ),
            "{what}: {challenges:?}"
        );
    }
    assert_eq!(call(format!("Bearer {}", idp.sign(&valid))).await.0, 200);

    // Key rotation: a token signed with a key the provider has not published yet is refused; once
    // it is published, the bridge fetches the key set again for the unknown key id and accepts it.
    // A token of the previous key stays valid while the provider still publishes that key.
    let before = idp.sign(&valid);
    idp.stage_new_key();
    let rotated = idp.sign(&valid);
    let (status, challenges) = call(format!("Bearer {rotated}")).await;
    assert_eq!(status, 401);
    assert!(
        challenges
            .iter()
            .any(|c| c.contains("unknown signing key id")),
        "{challenges:?}"
    );
    idp.publish_staged();
    assert_eq!(call(format!("Bearer {rotated}")).await.0, 200);
    assert_eq!(call(format!("Bearer {before}")).await.0, 200);

    // Every refusal is visible: no token or password in the log, the reasons are there.
    assert!(bridge.logs_contain("webhook refused: 401"));
    assert!(!bridge.logs_contain(NEXT_PASSWORD));
    assert!(!bridge.logs_contain(&rotated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_short_secret_is_refused_at_start_up() {
    let world = World::new(1 << 20);
    for secret in ["", "fifteen-bytes-x"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tradecloud-bridge"))
            .args(["run", "--config"])
            .arg(&world.config)
            .env("E2E_WEBHOOK_PASSWORD", secret)
            .env("E2E_TRADECLOUD_PASSWORD", "simulator-password")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{secret:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("ingress.auth.password: must be at least 16 bytes"),
            "{stderr}"
        );
    }
}
