//! The client against the Tradecloud simulator: the header-based token flow, refresh, errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tcb_simulator::{SimConfig, Simulator};
use tcb_tradecloud::{TradecloudClient, TradecloudConfig, TradecloudError};

fn sim(config: SimConfig) -> Simulator {
    Simulator::start(config, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap()
}

fn client(sim: &Simulator, password: &str, rate: u32) -> TradecloudClient {
    let c = SimConfig::default();
    TradecloudClient::new(&TradecloudConfig {
        base_url: sim.base_url(),
        email: c.email,
        password: SecretString::from(password.to_owned()),
        legacy_base_url: Some(sim.base_url()),
        legacy_username: Some(c.legacy_username),
        legacy_password: Some(SecretString::from(c.legacy_password)),
        max_requests_per_second: rate,
        max_concurrent_requests: 1,
        request_timeout_ms: 5_000,
        ca_file: None,
    })
    .unwrap()
}

fn good_password() -> String {
    SimConfig::default().password
}

#[tokio::test]
async fn logs_in_once_and_fetches_orders() {
    let sim = sim(SimConfig::default());
    sim.bump("o-1");
    let c = client(&sim, &good_password(), 100);
    for _ in 0..3 {
        let order: serde_json::Value =
            serde_json::from_slice(&c.get_order("o-1").await.unwrap()).unwrap();
        assert_eq!(order["id"], "o-1");
        assert_eq!(order["version"], 2);
    }
    let stats = sim.stats();
    assert_eq!((stats.logins, stats.order_fetches), (1, 3));
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_once_and_the_request_retried() {
    let sim = sim(SimConfig::default());
    let c = client(&sim, &good_password(), 100);
    c.get_order("o-1").await.unwrap();
    sim.expire_access_tokens();
    c.get_order("o-1").await.unwrap();
    let stats = sim.stats();
    assert_eq!(
        (stats.logins, stats.refreshes, stats.unauthorized),
        (1, 1, 1)
    );
    // The refresh token was single-use: a second expiry needs the new one, which the client kept.
    sim.expire_access_tokens();
    c.get_order("o-1").await.unwrap();
    assert_eq!(sim.stats().refreshes, 2);
    assert_eq!(sim.stats().logins, 1);
}

#[tokio::test]
async fn concurrent_requests_after_expiry_share_one_refresh() {
    let sim = sim(SimConfig {
        rate_limit_per_second: 1000,
        ..SimConfig::default()
    });
    let c = client(&sim, &good_password(), 1000);
    c.get_order("o-1").await.unwrap();
    sim.expire_access_tokens();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.get_order(&format!("o-{i}")).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = sim.stats();
    assert_eq!(
        stats.refreshes + stats.logins - 1,
        1,
        "one renewal for all: {stats:?}"
    );
}

#[tokio::test]
async fn errors_are_typed_and_carry_no_secret() {
    let sim = sim(SimConfig::default());
    let c = client(&sim, &good_password(), 100);
    let e = c.get_order("missing-1").await.unwrap_err();
    assert!(
        matches!(e, TradecloudError::NotFound(_)) && !e.is_transient(),
        "{e}"
    );
    sim.fail_next(1);
    let e = c.get_order("o-1").await.unwrap_err();
    assert!(
        matches!(e, TradecloudError::Status { status: 503, .. }) && e.is_transient(),
        "{e}"
    );
    c.get_order("o-1").await.unwrap();

    let wrong = client(&sim, "not-the-password", 100);
    let e = wrong.get_order("o-1").await.unwrap_err();
    assert!(matches!(e, TradecloudError::Unauthorized(_)), "{e}");
    assert!(!e.to_string().contains("not-the-password"));
    assert!(!format!("{e:?}").contains("not-the-password"));
}

#[tokio::test]
async fn legacy_orders_use_basic_auth() {
    let sim = sim(SimConfig::default());
    let c = client(&sim, &good_password(), 100);
    let order: serde_json::Value =
        serde_json::from_slice(&c.get_legacy_order("4711").await.unwrap()).unwrap();
    assert_eq!(order["code"], "PO-L-4711");
    assert!(matches!(
        c.get_legacy_order("missing-2").await,
        Err(TradecloudError::NotFound(_))
    ));
    assert_eq!(sim.stats().logins, 0, "API v1 needs no login");
}

#[tokio::test]
async fn an_unreachable_api_is_a_transient_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = TradecloudClient::new(&TradecloudConfig {
        base_url: format!("http://{addr}"),
        email: "a@b.c".to_owned(),
        password: SecretString::from("p".to_owned()),
        legacy_base_url: None,
        legacy_username: None,
        legacy_password: None,
        max_requests_per_second: 10,
        max_concurrent_requests: 1,
        request_timeout_ms: 2_000,
        ca_file: None,
    })
    .unwrap();
    let e = c.get_order("o-1").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(matches!(
        c.get_legacy_order("1").await,
        Err(TradecloudError::LegacyNotConfigured)
    ));
}

#[tokio::test]
async fn the_rate_limit_holds_requests_to_the_configured_rate() {
    let sim = sim(SimConfig {
        rate_limit_per_second: 1000,
        ..SimConfig::default()
    });
    let c = client(&sim, &good_password(), 20);
    let start = Instant::now();
    for i in 0..11 {
        c.get_order(&format!("o-{i}")).await.unwrap();
    }
    // 12 requests (login + 11) at 20/s with no burst take at least 11 intervals of 50 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(540),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn retry_after_and_403_are_reported() {
    let sim = sim(SimConfig::default());
    let c = client(&sim, &good_password(), 100);
    sim.fail_order("busy", 503);
    match c.get_order("busy").await.unwrap_err() {
        TradecloudError::Status {
            status: 503,
            retry_after,
            ..
        } => assert_eq!(retry_after, Some(Duration::from_secs(2))),
        other => panic!("{other:?}"),
    }
    sim.set_forbidden(true);
    let e = c.get_order("o-1").await.unwrap_err();
    assert!(matches!(e, TradecloudError::Forbidden(_)), "{e}");
}

#[tokio::test]
async fn a_refused_login_is_not_tried_again_at_once() {
    let sim = sim(SimConfig::default());
    let c = client(&sim, "wrong-password", 100);
    for _ in 0..3 {
        let e = c.get_order("o-1").await.unwrap_err();
        assert!(matches!(e, TradecloudError::Unauthorized(_)), "{e}");
    }
    assert_eq!(
        sim.stats().unauthorized,
        1,
        "one refused login; the others failed without asking"
    );
}

#[tokio::test]
async fn a_share_of_zero_holds_requests_until_it_is_lifted() {
    let sim = sim(SimConfig::default());
    let c = client(&sim, &good_password(), 100);
    c.get_order("o-1").await.unwrap();
    c.set_rate_share(0.0);
    let held = tokio::time::timeout(Duration::from_millis(1500), c.get_order("o-2")).await;
    assert!(held.is_err(), "no request while the share is 0");
    c.set_rate_share(1.0);
    tokio::time::timeout(Duration::from_secs(5), c.get_order("o-2"))
        .await
        .expect("goes on once the share is lifted")
        .unwrap();
}

/// A client of an HTTPS simulator, trusting its CA, with a request timeout of `timeout_ms`.
fn https_client(sim: &Simulator, timeout_ms: u64) -> TradecloudClient {
    let ca = std::env::temp_dir().join(format!("tcb-sim-ca-{}.pem", uuid_like()));
    std::fs::write(&ca, sim.ca_pem().unwrap()).unwrap();
    https_client_trusting(sim, timeout_ms, Some(ca))
}

/// A client of an HTTPS simulator trusting `ca_file` besides the system's roots.
fn https_client_trusting(
    sim: &Simulator,
    timeout_ms: u64,
    ca_file: Option<std::path::PathBuf>,
) -> TradecloudClient {
    let c = SimConfig::default();
    TradecloudClient::new(&TradecloudConfig {
        base_url: sim.base_url(),
        email: c.email,
        password: SecretString::from(c.password),
        legacy_base_url: None,
        legacy_username: None,
        legacy_password: None,
        max_requests_per_second: 100,
        max_concurrent_requests: 1,
        request_timeout_ms: timeout_ms,
        ca_file,
    })
    .unwrap()
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Over HTTPS, each fault the real API shows comes out as the error the worker classifies:
/// 500/502/503/504 and 429 (with its `Retry-After`) transient, 403 forbidden, a slow answer a
/// timeout; the order itself arrives with the documented decimals as written.
#[tokio::test]
async fn over_https_every_fault_of_the_real_api_is_told_apart() {
    use tcb_simulator::Fault;
    let sim = sim(SimConfig {
        tls: true,
        ..SimConfig::default()
    });
    assert!(sim.base_url().starts_with("https://"));
    let c = https_client(&sim, 1_000);
    for status in [500, 502, 503, 504] {
        sim.inject(
            Fault::Status {
                status,
                retry_after: None,
            },
            1,
        );
        let e = c.get_order("o-1").await.unwrap_err();
        assert!(
            matches!(&e, TradecloudError::Status { status: s, retry_after: None, .. } if *s == status),
            "{e}"
        );
        assert!(e.is_transient(), "{status}");
    }
    sim.inject(
        Fault::Status {
            status: 429,
            retry_after: Some(3),
        },
        1,
    );
    match c.get_order("o-1").await.unwrap_err() {
        e @ TradecloudError::Status {
            status: 429,
            retry_after,
            ..
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(3)));
            assert!(e.is_transient());
        }
        other => panic!("{other:?}"),
    }
    sim.inject(
        Fault::Status {
            status: 403,
            retry_after: None,
        },
        1,
    );
    let e = c.get_order("o-1").await.unwrap_err();
    assert!(matches!(e, TradecloudError::Forbidden(_)), "{e}");
    sim.inject(Fault::Slow(Duration::from_millis(2_500)), 1);
    let e = c.get_order("o-1").await.unwrap_err();
    assert!(
        matches!(&e, TradecloudError::Request { context, .. } if context.contains("timeout")),
        "{e}"
    );
    assert!(e.is_transient());
    // No fault left: the documented order, its decimals as Tradecloud writes them.
    let body = String::from_utf8(c.get_order("o-1").await.unwrap()).unwrap();
    assert!(body.contains(r#""quantity":100.000"#), "{body}");
    assert!(body.contains(r#""value":78.90"#), "{body}");
    let stats = sim.stats();
    assert_eq!(
        (stats.injected_failures, stats.slow_answers, stats.logins),
        (6, 1, 1)
    );
}

#[tokio::test]
async fn an_https_api_with_an_untrusted_certificate_is_refused() {
    let sim = sim(SimConfig {
        tls: true,
        ..SimConfig::default()
    });
    let client = https_client_trusting(&sim, 5_000, None);
    let e = client.get_order("o-1").await.unwrap_err();
    assert!(matches!(e, TradecloudError::Request { .. }), "{e}");
    assert_eq!(sim.stats().logins, 0);
}

/// Refresh tokens live 24 hours: once one has expired, the refresh is refused and the client
/// logs in again, and the request still succeeds.
#[tokio::test]
async fn an_expired_refresh_token_leads_to_a_new_login() {
    let sim = sim(SimConfig {
        tls: true,
        ..SimConfig::default()
    });
    let c = https_client(&sim, 5_000);
    c.get_order("o-1").await.unwrap();
    sim.expire_access_tokens();
    sim.expire_refresh_tokens();
    c.get_order("o-1").await.unwrap();
    let stats = sim.stats();
    assert_eq!(
        (
            stats.logins,
            stats.refreshes,
            stats.expired_refreshes,
            stats.order_fetches
        ),
        (2, 0, 1, 2)
    );
}
