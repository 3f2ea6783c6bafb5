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

/// The world's config with two Basic passwords and the simulator's identity provider, which signs
/// with `algorithm`.
fn connector_world(algorithm: jsonwebtoken::Algorithm) -> World {
    let mut sim = tcb_simulator::SimConfig::default();
    sim.idp.algorithm = algorithm;
    let world = World::with_simulator(support::Backend::Embedded, 1 << 20, 5000, sim);
    let sim = &world.sim;
    let idp = &sim.idp().config;
    let auth = format!(
        r#"auth = [
  {{ kind = "basic", username = "{USER}", password = "${{E2E_WEBHOOK_PASSWORD}}" }},
  {{ kind = "basic", username = "{USER}", password = "{NEXT_PASSWORD}" }},
  {{ kind = "oauth", issuer = "{issuer}", audience = "{audience}", jwks_url = "{jwks}", algorithms = ["RS256", "ES256"], leeway_seconds = 5, required_roles = ["Webhook.Send"], allowed_client_ids = ["{client}"], jwks_refetch_min_seconds = 1 }},
]"#,
        issuer = sim.idp_issuer(),
        audience = idp.audience,
        jwks = sim.idp_jwks_url(),
        client = idp.client_id,
    );
    world.set_config_line("auth = ", &auth);
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_rotation_and_oauth_jwts_from_the_identity_provider() {
    // RS256 as Microsoft Entra signs, and ES256; the bridge accepts both families at once.
    for algorithm in [
        jsonwebtoken::Algorithm::RS256,
        jsonwebtoken::Algorithm::ES256,
    ] {
        connector_auth(algorithm).await;
    }
}

async fn connector_auth(algorithm: jsonwebtoken::Algorithm) {
    let world = connector_world(algorithm);
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
    let mut last_refusal = Duration::ZERO;
    for (what, token) in refused {
        let started = std::time::Instant::now();
        let (status, challenges) = call(format!("Bearer {token}")).await;
        last_refusal = started.elapsed();
        assert_eq!(status, 401, "{what}");
        assert!(
            challenges.iter().any(
                |c| c.starts_with(r#"Bearer realm="tradecloud-bridge", error="invalid_token""#)
            ),
            "{what}: {challenges:?}"
        );
    }
    // Ten failures from this address within a minute: the last ones were answered slowly; a
    // valid call is answered at once (and forgets the failures).
    assert!(last_refusal >= Duration::from_secs(1), "{last_refusal:?}");
    let started = std::time::Instant::now();
    assert_eq!(call(format!("Bearer {}", idp.sign(&valid))).await.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Key rotation: a token signed with a key the provider has not published yet is refused; once
    // it is published, the bridge fetches the key set again for the unknown key id and accepts it.
    // A token of the previous key stays valid while the provider still publishes that key.
    // While the key set was fetched less than jwks_refetch_min_seconds ago the answer is 503 (retried
    // by Tradecloud: the key may be new), after a fresh fetch that lacks the key id it is 401.
    let before = idp.sign(&valid);
    idp.stage_new_key();
    let rotated = idp.sign(&valid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, challenges) = call(format!("Bearer {rotated}")).await;
        if status == 401 {
            assert!(
                challenges
                    .iter()
                    .any(|c| c.contains("unknown signing key id")),
                "{challenges:?}"
            );
            break;
        }
        assert_eq!(status, 503, "an unpublished key is never accepted");
        assert!(std::time::Instant::now() < deadline, "no fresh fetch");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    idp.publish_staged();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = call(format!("Bearer {rotated}")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "a published key is not refused");
        assert!(
            std::time::Instant::now() < deadline,
            "the new key was never fetched"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(call(format!("Bearer {before}")).await.0, 200);

    // Every refusal is visible: counted by reason (every reason exported from the start), logged
    // with peer, route and reason, never with the token or password.
    assert_eq!(
        bridge
            .metric(r#"tcb_ingress_refused_total{reason="unauthorized"}"#)
            .await,
        11.0
    );
    let metrics = bridge.metrics_text().await;
    assert!(
        metrics.contains(r#"tcb_ingress_refused_total{reason="payload_too_large"} 0"#),
        "{metrics}"
    );
    assert!(bridge.logs_contain("missing or wrong credentials: unknown signing key id"));
    assert!(bridge.logs_contain(
        r#""message":"webhook refused","status":401,"reason":"unauthorized","peer":"127.0.0.1:"#
    ));
    assert!(!bridge.logs_contain(NEXT_PASSWORD));
    assert!(!bridge.logs_contain("wrong-password-0123456789"));
    assert!(!bridge.logs_contain(&idp.sign(&expired)[..40]));
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

/// An event body as the connector POSTs it.
fn event_body(order: &str) -> Vec<u8> {
    serde_json::to_vec(&tcb_simulator::orders::event(
        order,
        3,
        "OrderLinesConfirmedBySupplier",
        &format!("msg-{order}"),
    ))
    .unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_decoded_and_a_zip_bomb_gets_413_with_flat_memory() {
    use std::io::Write;
    let world = World::new(4 << 20);
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(30)).await;
    let client = world.client();
    let post = |body: Vec<u8>, encoding: &'static str| {
        let request = client
            .post(bridge.url())
            .basic_auth(USER, Some(PASSWORD))
            .header("Content-Type", "application/json")
            .header("Content-Encoding", encoding)
            .body(body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body["triggerId"].as_str().map(str::to_owned))
        }
    };
    let mut accepted = std::collections::BTreeSet::new();
    let (status, id) = post(gzip(&event_body("gz-1")), "gzip").await;
    assert_eq!(status, 200);
    accepted.insert(id.unwrap());
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&event_body("deflate-1")).unwrap();
    let (status, id) = post(z.finish().unwrap(), "deflate").await;
    assert_eq!(status, 200);
    accepted.insert(id.unwrap());
    assert_eq!(post(event_body("br-1"), "br").await.0, 415);
    assert_eq!(
        post(b"\x1f\x8b not gzip at all".to_vec(), "gzip").await.0,
        400
    );

    // 1 GiB of zeros, a few MB compressed: refused at the 4 MiB limit while decoding.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        bomb.write_all(&zeros).unwrap();
    }
    let bomb = bomb.finish().unwrap();
    assert!(
        bomb.len() < 4 << 20,
        "the bomb fits the limit compressed: {}",
        bomb.len()
    );
    let before = bridge.peak_rss();
    assert_eq!(post(bomb, "gzip").await.0, 413);
    let grown = bridge.peak_rss().saturating_sub(before);
    assert!(grown < 64 << 20, "peak memory grew by {} MiB", grown >> 20);
    // The decoded events went through like any other.
    world
        .tail("orders")
        .wait_for(&accepted, Duration::from_secs(30))
        .await;
}

/// A TLS connection to the ingress trusting the test CA, as a raw stream.
async fn tls_connect(
    world: &World,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect_trusting(&[world.cert.ca.as_path()], addr).await
}

/// A TLS connection to the ingress trusting these CA files.
async fn tls_connect_trusting(
    cas: &[&std::path::Path],
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        let pem = std::fs::read(ca).unwrap();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the peer closes (or `within` passes): what it sent, and whether it closed.
async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let world = World::new(1 << 20);
    world.add_ingress_settings(
        "tls_handshake_timeout_ms = 1000\nrequest_head_timeout_ms = 1000\nbody_read_timeout_ms = 1500\n",
    );
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(30)).await;
    let addr = bridge.ingress.unwrap();
    let sender = world.sender(&bridge, 1);

    // A connection that never starts its TLS handshake is closed after the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A request head trickled a byte at a time is cut off after the head timeout.
    let mut trickle = tls_connect(&world, addr).await;
    let head = b"GET /webhook/slow-order HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    trickle.write_all(head).await.unwrap();
    let trickling = tokio::spawn(async move {
        for _ in 0..40 {
            if trickle.write_all(b"a").await.is_err() || trickle.flush().await.is_err() {
                return (String::new(), true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        read_until_closed(&mut trickle, Duration::from_secs(1)).await
    });
    // A body that stops arriving is cut off with 503 + Retry-After (Tradecloud retries that).
    let mut stalled = tls_connect(&world, addr).await;
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    let request = format!(
        "POST /webhook HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"eventName\":"
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    stalled.flush().await.unwrap();

    // A chunked body refused before it is read (no credentials): answered, and the connection
    // closed rather than drained while the client dawdles.
    let mut refused = tls_connect(&world, addr).await;
    refused
        .write_all(b"POST /webhook HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n")
        .await
        .unwrap();
    refused.flush().await.unwrap();

    // Meanwhile an honest caller is served at once.
    let started = std::time::Instant::now();
    let o = sender
        .send(&Webhook::GetPath("honest-order".to_owned()))
        .await;
    assert_eq!(o.status, Some(200), "{o:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let (answer, closed) = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(closed, "the stalled connection is closed");
    let (answer, closed) = read_until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(closed, "the refused chunked request's connection is closed");
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "the connection without a handshake is closed");
    let (answer, closed) = trickling.await.unwrap();
    assert!(closed, "the trickled head is cut off: {answer}");
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_an_ip_address_as_sni_leaves_no_warning_in_the_log() {
    // openssl sends the IP address as SNI (rustls clients do not), which rustls warns about on
    // every connection ("Illegal SNI extension"). Probed twice: with rustls's warnings asked for,
    // to see the probe provokes the line, and with the default filter, which must be quiet.
    let world = World::new(1 << 20);
    for (rust_log, expect_line) in [(Some("info,rustls=warn"), true), (None, false)] {
        let mut env = vec![
            ("E2E_WEBHOOK_PASSWORD", PASSWORD),
            ("E2E_TRADECLOUD_PASSWORD", "simulator-password"),
        ];
        if let Some(filter) = rust_log {
            env.push(("RUST_LOG", filter));
        }
        let bridge = support::Bridge::start(&world.config, "run", &env);
        wait_ready(&bridge, 200, Duration::from_secs(30)).await;
        let addr = bridge.ingress.unwrap();
        for _ in 0..3 {
            let out = std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &addr.to_string(),
                    "-servername",
                    "127.0.0.1",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A served request after the probes: its log line shows the log is flowing.
        let sender = world.sender(&bridge, 1);
        assert_eq!(
            sender
                .send(&Webhook::GetPath("sni-order".to_owned()))
                .await
                .status,
            Some(200)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !bridge.logs_contain("trigger accepted") {
            assert!(std::time::Instant::now() < deadline, "no log line");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            bridge.logs_contain("Illegal SNI"),
            expect_line,
            "RUST_LOG={rust_log:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_is_served_to_the_next_connection() {
    use rustls::pki_types::pem::PemObject;
    let world = World::new(1 << 20);
    // The listener's files in a folder of their own, checked every second.
    let live = world.dir.path().join("live-tls");
    std::fs::create_dir_all(&live).unwrap();
    let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
    std::fs::copy(&world.cert.cert, &cert).unwrap();
    std::fs::copy(&world.cert.key, &key).unwrap();
    world.set_config_line(
        "tls = ",
        &format!(
            r#"tls = {{ mode = "files", cert = "{}", key = "{}", reload_seconds = 1 }}"#,
            cert.display(),
            key.display()
        ),
    );
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(30)).await;
    let addr = bridge.ingress.unwrap();

    // A renewed certificate (from another CA, so the two cannot be confused).
    let renewed =
        tcb_ingress::tls::ensure_dev_certificate(&world.dir.path().join("renewed"), &[]).unwrap();
    let leaf_of = |path: &std::path::Path| {
        rustls::pki_types::CertificateDer::pem_file_iter(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .into_owned()
    };
    let cas = [world.cert.ca.as_path(), renewed.ca.as_path()];
    let served = || async {
        let stream = tls_connect_trusting(&cas, addr).await;
        stream.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    };
    assert_eq!(served().await, leaf_of(&world.cert.cert));
    // Written as a renewal tool does: new files moved into place.
    std::fs::copy(&renewed.cert, live.join("new.crt")).unwrap();
    std::fs::copy(&renewed.key, live.join("new.key")).unwrap();
    std::fs::rename(live.join("new.key"), &key).unwrap();
    std::fs::rename(live.join("new.crt"), &cert).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served().await != leaf_of(&renewed.cert) {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A webhook over a new connection works with the renewed certificate.
    let client = reqwest::Client::builder()
        .tls_certs_merge(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&renewed.ca).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let status = client
        .get(format!("{}/renewed-order", bridge.url()))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    // A broken file: logged, and the renewed certificate stays in service.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !bridge.logs_contain("the changed TLS certificate cannot be used") {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken file was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served().await, leaf_of(&renewed.cert));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslyze_finds_tls_1_2_and_1_3_only_with_forward_secret_suites_and_a_valid_chain() {
    let world = World::new(1 << 20);
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(30)).await;
    let port = bridge.ingress.unwrap().port();
    let out = world.dir.path().join("sslyze.json");
    // sslyze (PyPI, installed by scripts/install.sh): a real TLS scanner, with the test CA as the
    // trust store for the chain.
    let scan = std::process::Command::new("python3")
        .args(["-m", "sslyze", "--quiet", "--json_out"])
        .arg(&out)
        .args(["--certinfo", "--certinfo_ca_file"])
        .arg(&world.cert.ca)
        .args([
            "--sslv2",
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--compression",
            "--heartbleed",
            "--reneg",
        ])
        .arg(format!("localhost:{port}{{127.0.0.1}}"))
        .output()
        .unwrap();
    assert!(
        scan.status.success(),
        "{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let server = &report["server_scan_results"][0];
    assert_eq!(server["scan_status"], "COMPLETED", "{server}");
    let result = &server["scan_result"];
    let accepted = |version: &str| -> Vec<String> {
        let scan = &result[format!("{version}_cipher_suites")];
        assert_eq!(scan["status"], "COMPLETED", "{version}: {scan}");
        scan["result"]["accepted_cipher_suites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cipher_suite"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for old in ["ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"] {
        assert_eq!(accepted(old), Vec::<String>::new(), "{old} is refused");
    }
    let tls12 = accepted("tls_1_2");
    assert!(!tls12.is_empty());
    for suite in &tls12 {
        let forward_secret = suite.starts_with("TLS_ECDHE_") || suite.starts_with("TLS_DHE_");
        let aead = suite.contains("_GCM_") || suite.contains("CHACHA20_POLY1305");
        assert!(forward_secret && aead, "a weak TLS 1.2 suite: {suite}");
    }
    assert!(!accepted("tls_1_3").is_empty());
    let deployment = &result["certificate_info"]["result"]["certificate_deployments"][0];
    let with_test_ca = deployment["path_validation_results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["trust_store"]["name"] == "Supplied CA file")
        .unwrap();
    assert_eq!(
        with_test_ca["was_validation_successful"], true,
        "{with_test_ca}"
    );
    assert_eq!(
        result["tls_compression"]["result"]["supports_compression"],
        false
    );
    assert_eq!(
        result["heartbleed"]["result"]["is_vulnerable_to_heartbleed"],
        false
    );
    assert_eq!(
        result["session_renegotiation"]["result"]["is_vulnerable_to_client_renegotiation_dos"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txml_post_and_a_json_post_of_one_event_yield_equal_order_messages() {
    let world = World::new(1 << 20);
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(30)).await;
    let client = world.client();
    let post = |body: String, content_type: &'static str| {
        let request = client
            .post(bridge.url())
            .basic_auth(USER, Some(PASSWORD))
            .header("Content-Type", content_type)
            .body(body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let event = tcb_simulator::orders::event(
        "txml-order",
        5,
        "OrderLinesConfirmedBySupplier",
        "msg-txml-1",
    );
    let mut ids = Vec::new();
    for (body, content_type) in [
        (event.to_string(), "application/json"),
        (
            tcb_simulator::orders::to_txml(&event, false),
            "application/xml",
        ),
        (
            tcb_simulator::orders::to_txml(&event, true),
            "text/xml; charset=utf-8",
        ),
    ] {
        let (status, answer) = post(body, content_type).await;
        assert_eq!(status, 200, "{content_type}: {answer}");
        ids.push(answer["triggerId"].as_str().unwrap().to_owned());
    }

    // The three order messages, read from the orders topic.
    let bus = world.bus().await;
    let mut out = bus
        .consumer(&bus.topics.orders, Some("txml"))
        .await
        .unwrap();
    let got = support::collect_until(&mut out, Duration::from_secs(30), |d| {
        let seen = support::trigger_ids(d);
        ids.iter().all(|id| seen.contains(id))
    })
    .await;
    let message_of = |id: &str| {
        let m = got
            .iter()
            .find(|d| support::message(d).trigger.id.to_string() == id)
            .unwrap_or_else(|| panic!("no message for trigger {id}"));
        let mut v: serde_json::Value = serde_json::from_slice(&m.message.payload).unwrap();
        // What differs by nature: the trigger's own facts, when it was processed, and the
        // untyped original (tXML has no numbers: "5" where the JSON had 5).
        let original = v["original"].take();
        for volatile in ["trigger", "processedAt"] {
            v[volatile].take();
        }
        // Message v1 reads a JSON number as a binary float (`100.000` becomes "100"), while
        // tXML's text keeps the scale ("100.000"; message v2 keeps it for both): compare the
        // decimals by value.
        fn by_value(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) if s.contains('.') => {
                    if let Ok(f) = s.parse::<f64>() {
                        *s = f.to_string();
                    }
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(by_value),
                serde_json::Value::Object(members) => members.values_mut().for_each(by_value),
                _ => {}
            }
        }
        by_value(&mut v);
        (v, original)
    };
    let (json, json_original) = message_of(&ids[0]);
    assert_eq!(json["orderId"], "txml-order");
    assert!(!json["lines"].as_array().unwrap().is_empty());
    for id in &ids[1..] {
        let (xml, xml_original) = message_of(id);
        assert_eq!(
            xml, json,
            "the tXML event's message differs from the JSON one's"
        );
        assert_eq!(
            xml_original["orderEvent"]["orderId"],
            json_original["orderEvent"]["orderId"]
        );
    }

    // Malformed XML and a DTD: 400 with the reason; another body type: 415.
    let (status, answer) = post(
        "<webhook><eventName>X</webhook>".to_owned(),
        "application/xml",
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("the tXML body"),
        "{answer}"
    );
    let dtd =
        r#"<?xml version="1.0"?><!DOCTYPE w [<!ENTITY x "x">]><w><eventName>&x;</eventName></w>"#;
    let (status, answer) = post(dtd.to_owned(), "application/xml").await;
    assert_eq!(status, 400);
    assert!(
        answer["message"].as_str().unwrap().contains("DTD"),
        "{answer}"
    );
    assert_eq!(post("eventName=X".to_owned(), "text/plain").await.0, 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_until_one_closes() {
    use tokio::io::AsyncWriteExt;
    let world = World::new(1 << 20);
    world.add_ingress_settings("http_workers = 1\nmax_connections = 2\n");
    let bridge = world.start_bridge();
    wait_ready(&bridge, 200, Duration::from_secs(30)).await;
    let addr = bridge.ingress.unwrap();
    // Two connections held open (handshake done, no request yet): the limit.
    let first = tls_connect(&world, addr).await;
    let _second = tls_connect(&world, addr).await;
    // A third waits in the backlog: its handshake does not complete while both are open.
    let third = tokio::spawn({
        let ca = world.cert.ca.clone();
        async move { tls_connect_trusting(&[ca.as_path()], addr).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was taken past max_connections"
    );
    // One closes: the third is taken and served.
    drop(first);
    let mut third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third connection is taken once one closes")
        .unwrap();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    third
        .write_all(
            format!("GET /webhook/limit-order HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
