//! The ack contract against publishers that succeed, fail and hang: 200 only after the publish
//! returned, 503 with Retry-After otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use tcb_bus::{BusError, Message, Publisher};
use tcb_ingress::tls::TlsConfig;
use tcb_ingress::{AuthConfig, Ingress, IngressConfig};

#[derive(Clone, Copy)]
enum Mode {
    Store,
    Fail,
    TooLarge,
    Hang,
}

struct Fake {
    mode: Mutex<Mode>,
    stored: Mutex<Vec<(String, Message)>>,
}

#[async_trait]
impl Publisher for Fake {
    async fn publish(&self, topic: &str, message: Message) -> Result<(), BusError> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Store => {
                self.stored
                    .lock()
                    .unwrap()
                    .push((topic.to_owned(), message));
                Ok(())
            }
            Mode::Fail => Err(BusError::Unavailable {
                context: "broker down".to_owned(),
                source: None,
            }),
            Mode::TooLarge => Err(BusError::TooLarge {
                context: "Kafka: MessageSizeTooLarge".to_owned(),
                source: None,
            }),
            Mode::Hang => std::future::pending().await,
        }
    }
    async fn check_ready(&self) -> Result<(), BusError> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Fail => Err(BusError::Unavailable {
                context: "broker down".to_owned(),
                source: None,
            }),
            _ => Ok(()),
        }
    }
}

fn config() -> IngressConfig {
    let mut c = IngressConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        TlsConfig::Off,
        AuthConfig::Bearer {
            token: SecretString::from("a-static-token-0123456789"),
        },
    );
    c.path = "/hook".to_owned();
    c.max_body_bytes = 1024;
    c.ack_timeout_ms = 300;
    c.retry_after_seconds = 7;
    c.http_workers = Some(1);
    c
}

async fn start(mode: Mode) -> (Ingress, Arc<Fake>) {
    // Trace context travels through the OpenTelemetry layer, as in the binary (once per process).
    let quiet = tcb_telemetry::TelemetryConfig {
        log_level: "error".to_owned(),
        ..tcb_telemetry::TelemetryConfig::default()
    };
    let _ = tcb_telemetry::init(&quiet, "test");
    let fake = Arc::new(Fake {
        mode: Mutex::new(mode),
        stored: Mutex::default(),
    });
    let ingress = Ingress::start(&config(), fake.clone(), "triggers", None).unwrap();
    (ingress, fake)
}

const BODY: &str = r#"{"eventName":"OrderIssuedByBuyer","orderEvent":{"orderId":"o-1"},"meta":{"messageId":"m-9"}}"#;

async fn post(ingress: &Ingress, traceparent: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("http://{}/hook", ingress.local_addr))
        .bearer_auth("a-static-token-0123456789")
        .header("content-type", "application/json; charset=utf-8")
        .body(BODY);
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn answers_200_after_the_publish_with_the_envelope_and_headers() {
    let (ingress, fake) = start(Mode::Store).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = post(&ingress, Some(parent)).await;
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    let stored = fake.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    let (topic, m) = &stored[0];
    assert_eq!(topic, "triggers");
    assert_eq!(m.key, "o-1");
    let envelope = tcb_model::codec::decode_trigger(m).unwrap();
    assert_eq!(answer["triggerId"], envelope.id.to_string());
    let tcb_model::Trigger::Event(event) = &envelope.trigger else {
        panic!("an event trigger: {envelope:?}")
    };
    assert_eq!(event.body.get(), BODY, "body byte-for-byte");
    assert_eq!(event.method, tcb_model::EventMethod::Post);
    assert_eq!(envelope.tradecloud_message_id(), Some("m-9"));
    assert_eq!(
        event.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    // The body is embedded as JSON in the envelope, not re-encoded.
    assert!(
        std::str::from_utf8(&m.payload).unwrap().contains(BODY),
        "{}",
        String::from_utf8_lossy(&m.payload)
    );
    assert_eq!(m.headers["tcb-trigger-id"], envelope.id.to_string());
    assert_eq!(m.headers["tcb-event-name"], "OrderIssuedByBuyer");
    let tp = &m.headers["traceparent"];
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "same trace: {tp}"
    );
    assert_ne!(tp, parent, "a new span id");
    ingress.stop().await;
}

#[tokio::test]
async fn a_failed_publish_answers_503_with_retry_after() {
    let (ingress, _) = start(Mode::Fail).await;
    let r = post(&ingress, None).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    ingress.stop().await;
}

#[tokio::test]
async fn a_trigger_the_broker_can_never_take_answers_413_not_503() {
    let (ingress, _) = start(Mode::TooLarge).await;
    let r = post(&ingress, None).await;
    assert_eq!(r.status(), 413, "Tradecloud would retry a 503 for ever");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    ingress.stop().await;
}

#[tokio::test]
async fn a_publish_past_the_ack_timeout_answers_503() {
    let (ingress, _) = start(Mode::Hang).await;
    let started = std::time::Instant::now();
    let r = post(&ingress, None).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at the ack timeout, not later"
    );
    let r = reqwest::Client::new()
        .get(format!("http://{}/hook/o-2", ingress.local_addr))
        .bearer_auth("a-static-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    ingress.stop().await;
}

#[tokio::test]
async fn a_bad_path_config_is_refused() {
    let fake = Arc::new(Fake {
        mode: Mutex::new(Mode::Store),
        stored: Mutex::default(),
    });
    let mut c = config();
    c.path = "hook/".to_owned();
    assert!(Ingress::start(&c, fake, "t", None).is_err());
}

async fn readyz(admin: &tcb_ingress::admin::Admin) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{}/readyz", admin.local_addr))
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// An ingress is ready once the broker answered, stays ready while the broker is down later
/// (it answers 503 + Retry-After, which Tradecloud retries) and goes unready when it drains; a
/// worker-only process follows the broker.
#[tokio::test]
async fn readiness_follows_draining_for_webhooks_and_the_broker_for_a_worker() {
    use tcb_ingress::admin::{Admin, Readiness};
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    // Never connected: not ready yet (a new pod takes traffic once it can store triggers).
    let (never, fake) = start(Mode::Fail).await;
    let webhooks = Readiness::Webhooks {
        draining: never.draining(),
    };
    let admin = Admin::start(any, fake, Vec::new(), webhooks, None).unwrap();
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "not yet connected to the broker");
    admin.stop().await;
    never.stop().await;

    // Connected once, then the broker goes away: still ready; the body says why webhooks get 503.
    let (ingress, fake) = start(Mode::Store).await;
    let webhooks = Readiness::Webhooks {
        draining: ingress.draining(),
    };
    let admin = Admin::start(any, fake.clone(), Vec::new(), webhooks, None).unwrap();
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["broker"], "ok");
    *fake.mode.lock().unwrap() = Mode::Fail;
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert!(
        body["broker"].as_str().unwrap().contains("broker down"),
        "{body}"
    );
    assert_eq!(body["worker"], "ok");

    let worker = Admin::start(any, fake, Vec::new(), Readiness::Worker, None).unwrap();
    let (status, body) = readyz(&worker).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("broker down"),
        "{body}"
    );
    worker.stop().await;

    ingress.stop().await;
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "draining");
    admin.stop().await;
}
