//! End to end on the embedded backend: `tradecloud-bridge run` as a process, the Tradecloud
//! simulator, HTTPS with Basic auth, the orders topic read back from the same SQLite file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use support::{
    PASSWORD, USER, World, bench_rows, collect_until, message, order_message_v2,
    published_of_accepted, run_bench, run_short_pipeline_bench, wait_for_metrics,
};
use tcb_model::codec::header as headers;
use tcb_model::message::Scope;
use tcb_model::{OrderMessage, TriggerEnvelope, normalize_event, normalize_fetched_order};
use tcb_simulator::{Webhook, orders};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trigger_kind_arrives_as_the_exact_normalized_message() {
    let world = World::new(1 << 20);
    let bridge = world.start_bridge();
    let sender = world.sender(&bridge, 1);
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("e2e")).await.unwrap();

    let v1 = world.sim.bump("order-get-path");
    let v2 = world.sim.bump("order-get-query");
    let post = serde_json::to_vec(&orders::event(
        "order-post",
        7,
        "OrderLinesConfirmedBySupplier",
        "msg-post-1",
    ))
    .unwrap();
    let put = serde_json::to_vec(&orders::event(
        "order-put",
        3,
        "OrderLinesTeleportedByRobot",
        "msg-put-1",
    ))
    .unwrap();
    let calls = [
        Webhook::GetPath("order-get-path".to_owned()),
        Webhook::GetQuery("order-get-query".to_owned()),
        Webhook::GetLegacyQuery("4711".to_owned()),
        Webhook::Post(post.clone()),
        Webhook::Put(put.clone()),
    ];
    let mut trigger_ids = Vec::new();
    for call in &calls {
        let o = sender.send(call).await;
        assert_eq!(o.status, Some(200), "{call:?}: {o:?}");
        trigger_ids.push(o.trigger_id.clone().expect("a triggerId in the answer"));
    }

    let got = collect_until(&mut out, Duration::from_secs(60), |d| {
        d.len() >= calls.len()
    })
    .await;
    assert_eq!(got.len(), calls.len(), "every trigger arrives");

    // The envelopes the ingress published, to compute what the worker must have made of them.
    let mut tail = bus.consumer(&bus.topics.triggers, None).await.unwrap();
    let envelopes: HashMap<String, TriggerEnvelope> =
        collect_until(&mut tail, Duration::from_secs(10), |d| {
            d.len() >= calls.len()
        })
        .await
        .iter()
        .map(|d| tcb_model::codec::decode_trigger(&d.message).unwrap())
        .map(|t| (t.id.to_string(), t))
        .collect();
    assert_eq!(envelopes.len(), calls.len());
    // An operator's tail without a group prints the orders topic from its start.
    let mut printed = world.tail("orders");
    printed
        .wait_for(
            &trigger_ids.iter().cloned().collect(),
            Duration::from_secs(30),
        )
        .await;

    let by_trigger: HashMap<String, (&support::Received, OrderMessage)> = got
        .iter()
        .map(|d| (message(d).trigger.id.to_string(), (d, message(d))))
        .collect();
    for (i, id) in trigger_ids.iter().enumerate() {
        let (delivery, m) = &by_trigger[id];
        let envelope = &envelopes[id];
        let expected = match i {
            0 => normalize_fetched_order(
                envelope,
                &serde_json::to_vec(&orders::order("order-get-path", v1)).unwrap(),
                m.processed_at,
            ),
            1 => normalize_fetched_order(
                envelope,
                &serde_json::to_vec(&orders::order("order-get-query", v2)).unwrap(),
                m.processed_at,
            ),
            2 => normalize_fetched_order(
                envelope,
                &serde_json::to_vec(&orders::legacy_order("4711")).unwrap(),
                m.processed_at,
            ),
            _ => normalize_event(envelope, m.processed_at),
        }
        .unwrap();
        assert_eq!(m, &expected, "trigger {i}");
        // Headers and key as the contract says.
        let h = &delivery.message.headers;
        assert_eq!(h[headers::TRIGGER_ID], *id);
        assert_eq!(h[headers::CONTENT_TYPE], "application/json");
        assert_eq!(h[headers::SCHEMA_VERSION], "order-message.v1");
        assert_eq!(h[headers::MESSAGE_ID], m.message_id.to_string());
        assert_eq!(h["ce_id"], m.message_id.to_string());
        assert_eq!(h["ce_specversion"], "1.0");
        assert!(h[headers::TRACEPARENT].starts_with("00-"), "{h:?}");
        let key = m.order_id.clone().or(m.legacy_order_id.clone()).unwrap();
        assert_eq!(delivery.message.key, key);
    }

    // And the facts, stated independently of the normalization code.
    let m = |i: usize| &by_trigger[&trigger_ids[i]].1;
    assert_eq!(
        (m(0).scope, m(0).order_id.as_deref(), m(0).order_version),
        (Scope::FullOrder, Some("order-get-path"), Some(v1 as i64))
    );
    assert_eq!(m(0).lines.len(), 2);
    assert_eq!(m(0).trigger.method, "GET");
    assert_eq!(
        (m(1).order_id.as_deref(), m(1).order_version),
        (Some("order-get-query"), Some(v2 as i64))
    );
    assert_eq!(
        (m(2).legacy_order_id.as_deref(), m(2).order_id.as_deref()),
        (Some("4711"), None)
    );
    assert_eq!(
        m(2).header.purchase_order_number.as_deref(),
        Some("PO-L-4711")
    );
    assert_eq!(
        (
            m(3).scope,
            m(3).event_name.as_deref(),
            m(3).trigger.method.as_str()
        ),
        (
            Scope::PartialEvent,
            Some("OrderLinesConfirmedBySupplier"),
            "POST"
        )
    );
    assert_eq!(
        m(3).affected_line_ids,
        Some(vec!["order-post-line-1".to_owned()])
    );
    assert_eq!(
        m(3).trigger.tradecloud_message_id.as_deref(),
        Some("msg-post-1")
    );
    assert_eq!(
        m(3).original,
        serde_json::from_slice::<serde_json::Value>(&post).unwrap()
    );
    assert_eq!(
        (m(4).event_name.as_deref(), m(4).trigger.method.as_str()),
        (Some("OrderLinesTeleportedByRobot"), "PUT")
    );
    assert_eq!(
        m(4).lines[0].delivery_schedule[0]
            .quantity
            .map(|q| q.to_string())
            .as_deref(),
        // The documented confirmation's `100.000`: message v1 drops the scale (v2 keeps it;
        // see the v2 tests).
        Some("100")
    );

    // Metrics on the admin port count what happened (the worker counts right after publishing,
    // so the last count may trail the message by a moment).
    let expected = [
        "tcb_ingress_requests_total{status=\"200\"} 5",
        "tcb_worker_triggers_total{outcome=\"delivered\"} 5",
        "tcb_ingress_ack_seconds_count 5",
        "tcb_worker_end_to_end_seconds_count 5",
        // Tradecloud's API: one login, the two v2 GETs' fetches, the legacy fetch; every series
        // there from the start, so the ones nothing touched read 0.
        "tcb_tradecloud_requests_total{kind=\"login\",status=\"2xx\"} 1",
        "tcb_tradecloud_requests_total{kind=\"order\",status=\"2xx\"} 2",
        "tcb_tradecloud_requests_total{kind=\"legacy_order\",status=\"2xx\"} 1",
        "tcb_tradecloud_requests_total{kind=\"refresh\",status=\"2xx\"} 0",
        "tcb_tradecloud_requests_total{kind=\"order\",status=\"429\"} 0",
        "tcb_tradecloud_requests_total{kind=\"order\",status=\"5xx\"} 0",
        "tcb_tradecloud_request_seconds_count{kind=\"order\"} 2",
        "tcb_tradecloud_pacer_wait_seconds_count 4",
        "tcb_build_info{version=\"0.1.0\"} 1",
        // Nothing dead-lettered, in flight, waiting or left on the triggers topic.
        "tcb_worker_triggers_total{outcome=\"dead_lettered\"} 0",
        "tcb_worker_dead_letters_total{reason=\"not_found\"} 0",
        "tcb_worker_in_flight_triggers 0",
        "tcb_worker_waiting_for_retry_triggers 0",
        "tcb_worker_consumer_lag_messages{topic=\"tradecloud.triggers\"} 0",
    ];
    let metrics = wait_for_metrics(&bridge, &expected, Duration::from_secs(10)).await;
    // The process's own series (metrics-process) are there too.
    for series in [
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)),
            "{series} in\n{metrics}"
        );
    }

    // Readiness and liveness on the admin port.
    let admin = reqwest::Client::new();
    for path in ["healthz", "readyz"] {
        let r = admin
            .get(format!("http://{}/{path}", bridge.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

/// The metrics after known failures: one order Tradecloud does not know (404 twice), one it
/// refuses (400), one POST delivered. Exact values, every series there from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_counted_by_reason() {
    let world = World::new(1 << 20);
    // A journal that cannot be opened (its folder would be inside a file): the bridge runs
    // without it and answers webhooks as always.
    std::fs::write(world.dir.path().join("not-a-dir"), b"").unwrap();
    world.edit_config(
        "[telemetry]\n",
        "[journal]\npath = \"not-a-dir/journal.db\"\n\n[telemetry]\n",
    );
    world.sim.fail_order("unknown-order", 404);
    world.sim.fail_order("refused-order", 400);
    let bridge = world.start_bridge();
    let sender = world.sender(&bridge, 1);
    let post = orders::event("fine-order", 2, "OrderLinesConfirmedBySupplier", "m-fine");
    for call in [
        Webhook::GetPath("unknown-order".to_owned()),
        Webhook::GetPath("refused-order".to_owned()),
        Webhook::Post(serde_json::to_vec(&post).unwrap()),
    ] {
        assert!(sender.send(&call).await.accepted());
    }
    let bus = world.bus().await;
    let mut dead = bus
        .consumer(&bus.topics.dead_letters, Some("ops"))
        .await
        .unwrap();
    let got = collect_until(&mut dead, Duration::from_secs(30), |d| d.len() >= 2).await;
    let kinds: BTreeSet<&str> = got
        .iter()
        .map(|d| d.message.headers[headers::DEAD_LETTER_KIND].as_str())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["not_found", "rejected"]));
    let expected = [
        "tcb_worker_triggers_total{outcome=\"delivered\"} 1",
        "tcb_worker_triggers_total{outcome=\"dead_lettered\"} 2",
        "tcb_worker_dead_letters_total{reason=\"not_found\"} 1",
        "tcb_worker_dead_letters_total{reason=\"rejected\"} 1",
        "tcb_worker_dead_letters_total{reason=\"retries_exhausted\"} 0",
        "tcb_worker_dead_letters_total{reason=\"invalid_event\"} 0",
        "tcb_worker_dead_letters_total{reason=\"undecodable\"} 0",
        "tcb_worker_dead_letters_total{reason=\"invalid_order\"} 0",
        "tcb_worker_dead_letters_total{reason=\"output_refused\"} 0",
        // The 404 is tried twice (`not_found_attempts = 2`), the 400 once.
        "tcb_worker_retries_total{what=\"fetch\"} 1",
        "tcb_worker_retries_total{what=\"publish\"} 0",
        "tcb_tradecloud_requests_total{kind=\"order\",status=\"4xx\"} 3",
        "tcb_tradecloud_requests_total{kind=\"order\",status=\"2xx\"} 0",
        "tcb_worker_in_flight_triggers 0",
        "tcb_worker_waiting_for_retry_triggers 0",
        "tcb_worker_paused{breaker=\"tradecloud\"} 0",
        "tcb_worker_consumer_lag_messages{topic=\"tradecloud.triggers\"} 0",
    ];
    wait_for_metrics(&bridge, &expected, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_acknowledged_trigger() {
    let world = World::new(1 << 20);
    let mut bridge = world.start_bridge();
    let sender = world.sender(&bridge, 2);
    // Mostly GETs: the worker is held to 10 fetches/s, so a backlog builds up behind the ingress.
    let burst: Vec<Webhook> = (0..80)
        .map(|i| {
            let order = format!("crash-order-{}", i % 25);
            if i % 4 == 3 {
                let body = orders::event(
                    &order,
                    2,
                    "OrderLinesUpdatedByBuyer",
                    &format!("crash-msg-{i}"),
                );
                Webhook::Post(serde_json::to_vec(&body).unwrap())
            } else {
                Webhook::GetPath(order)
            }
        })
        .collect();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let firing = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for chunk in burst.chunks(20) {
                for w in chunk {
                    let w = w.clone();
                    let sender = sender.clone();
                    let accepted = accepted.clone();
                    set.spawn(async move {
                        let o = sender.send(&w).await;
                        if o.accepted() {
                            accepted.lock().unwrap().push(o.trigger_id.unwrap());
                        }
                    });
                }
                while set.join_next().await.is_some() {}
            }
        })
    };
    // Kill once some triggers are acknowledged and the burst is still going.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while accepted.lock().unwrap().len() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge acknowledged too few triggers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bridge.kill();
    let acked_before_kill = accepted.lock().unwrap().len();
    firing.await.unwrap();
    let acked: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= acked_before_kill);

    let bus = world.bus().await;
    let mut out = bus
        .consumer(&bus.topics.orders, Some("e2e-crash"))
        .await
        .unwrap();
    // Before the restart, some acknowledged triggers have not been processed yet.
    let early = collect_until(&mut out, Duration::from_millis(500), |_| false).await;
    let early_ids: BTreeSet<String> = early
        .iter()
        .map(|d| message(d).trigger.id.to_string())
        .collect();
    assert!(
        early_ids.len() < acked.len(),
        "the kill hit while work was pending ({} of {})",
        early_ids.len(),
        acked.len()
    );

    let _bridge = world.start_bridge();
    let mut seen = early_ids;
    let rest = collect_until(&mut out, Duration::from_secs(90), |d| {
        let mut s = seen.clone();
        s.extend(d.iter().map(|d| message(d).trigger.id.to_string()));
        acked.is_subset(&s)
    })
    .await;
    seen.extend(rest.iter().map(|d| message(d).trigger.id.to_string()));
    let missing: Vec<_> = acked.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_publish_nothing() {
    let world = World::new(64 * 1024);
    let bridge = world.start_bridge();
    let http = world.client();
    let url = bridge.url();
    let good_body = serde_json::to_vec(&orders::event(
        "bad-req-order",
        2,
        "OrderIssuedByBuyer",
        "m-1",
    ))
    .unwrap();
    let json = "application/json";

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "wrong password",
            http.get(format!("{url}/o-1"))
                .basic_auth(USER, Some("nope")),
            401,
            "unauthorized",
        ),
        (
            "wrong user",
            http.get(format!("{url}/o-1"))
                .basic_auth("admin", Some(PASSWORD)),
            401,
            "unauthorized",
        ),
        (
            "no auth",
            http.get(format!("{url}/o-1")),
            401,
            "unauthorized",
        ),
        (
            "bearer instead of basic",
            http.get(format!("{url}/o-1")).bearer_auth(PASSWORD),
            401,
            "unauthorized",
        ),
        (
            "malformed JSON",
            http.post(&url)
                .basic_auth(USER, Some(PASSWORD))
                .header("content-type", json)
                .body("{\"eventName\": "),
            400,
            "bad_request",
        ),
        (
            "JSON without eventName",
            http.post(&url)
                .basic_auth(USER, Some(PASSWORD))
                .header("content-type", json)
                .body("{\"orderEvent\": {}}"),
            400,
            "bad_request",
        ),
        (
            "JSON array",
            http.put(&url)
                .basic_auth(USER, Some(PASSWORD))
                .header("content-type", json)
                .body("[]"),
            400,
            "bad_request",
        ),
        (
            "wrong method",
            http.delete(&url).basic_auth(USER, Some(PASSWORD)),
            405,
            "method_not_allowed",
        ),
        (
            "POST to an id path",
            http.post(format!("{url}/o-1"))
                .basic_auth(USER, Some(PASSWORD))
                .header("content-type", json)
                .body(good_body.clone()),
            405,
            "method_not_allowed",
        ),
        (
            "oversized body",
            http.post(&url)
                .basic_auth(USER, Some(PASSWORD))
                .header("content-type", json)
                .body(vec![b' '; 100 * 1024]),
            413,
            "payload_too_large",
        ),
        (
            "unknown path",
            http.get(format!(
                "https://localhost:{}/nowhere/o-1",
                bridge.ingress.unwrap().port()
            ))
            .basic_auth(USER, Some(PASSWORD)),
            404,
            "not_found",
        ),
        (
            "too deep a path",
            http.get(format!("{url}/a/b"))
                .basic_auth(USER, Some(PASSWORD)),
            404,
            "not_found",
        ),
        (
            "wrong content type",
            http.post(&url)
                .basic_auth(USER, Some(PASSWORD))
                .header("content-type", "text/plain")
                .body(good_body.clone()),
            415,
            "unsupported_media_type",
        ),
        (
            "GET without an id",
            http.get(&url).basic_auth(USER, Some(PASSWORD)),
            400,
            "bad_request",
        ),
        (
            "GET with both ids",
            http.get(format!("{url}?orderId=a&legacyOrderId=b"))
                .basic_auth(USER, Some(PASSWORD)),
            400,
            "bad_request",
        ),
        (
            "id with control characters",
            http.get(format!("{url}?orderId=a%01b"))
                .basic_auth(USER, Some(PASSWORD)),
            400,
            "bad_request",
        ),
        (
            "a '..' order id",
            http.get(format!("{url}?orderId=.."))
                .basic_auth(USER, Some(PASSWORD)),
            400,
            "bad_request",
        ),
        (
            "a '.' legacy order id",
            http.get(format!("{url}?legacyOrderId=."))
                .basic_auth(USER, Some(PASSWORD)),
            400,
            "bad_request",
        ),
        (
            "an order id over 256 bytes",
            http.get(format!("{url}/{}", "x".repeat(257)))
                .basic_auth(USER, Some(PASSWORD)),
            400,
            "bad_request",
        ),
        (
            "an over-long event name",
            http.post(&url)
                .basic_auth(USER, Some(PASSWORD))
                .header("content-type", json)
                .body(format!(
                    r#"{{"eventName":"{}"}}"#,
                    "OrderIssuedByBuyer".repeat(8)
                )),
            400,
            "bad_request",
        ),
    ];
    for (name, request, status, code) in cases {
        let r = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.status().as_u16(), status, "{name}");
        if status == 401 {
            assert!(r.headers().contains_key("www-authenticate"), "{name}");
        }
        if status == 405 {
            assert!(r.headers().contains_key("allow"), "{name}");
        }
        let body: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: JSON error body: {e}"));
        assert_eq!(body["error"], code, "{name}: {body}");
    }

    // Nothing was published: the one good request after them is the first and only trigger.
    let good = http
        .post(&url)
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", json)
        .body(good_body)
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    let good_id = good.json::<serde_json::Value>().await.unwrap()["triggerId"]
        .as_str()
        .unwrap()
        .to_owned();
    let bus = world.bus().await;
    let mut triggers = bus.consumer(&bus.topics.triggers, None).await.unwrap();
    let got = collect_until(&mut triggers, Duration::from_millis(1500), |_| false).await;
    assert_eq!(got.len(), 1, "only the good request published a trigger");
    assert_eq!(got[0].message.headers[headers::TRIGGER_ID], good_id);
    assert!(
        !bridge.logs_contain(PASSWORD),
        "the webhook password never reaches a log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly() {
    let world = World::new(1 << 20);
    let mut bridge = world.start_bridge();
    let sender = world.sender(&bridge, 1);
    assert!(
        sender
            .send(&Webhook::GetPath("term-order".to_owned()))
            .await
            .accepted()
    );
    assert!(bridge.terminate(), "exit code 0 after SIGTERM");
    assert!(
        bridge.logs_contain("\"stopped\""),
        "{:#?}",
        bridge.logs.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_subcommand_fires_webhooks_that_the_bridge_accepts() {
    let world = World::new(1 << 20);
    let bridge = world.start_bridge();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tradecloud-bridge"))
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--triggers",
            "5",
        ])
        .args(["--bridge-url", &bridge.url(), "--cacert"])
        .arg(&world.cert.ca)
        .env("SIMULATOR_PASSWORD", "sim-pw")
        .env("TCB_WEBHOOK_PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It keeps serving its API after the burst: read its log until five answers are in.
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "webhook sent" && tx.send(v["status"].as_u64()).is_err() {
                return;
            }
        }
    });
    let statuses: Vec<_> = (0..5)
        .map(|_| rx.recv_timeout(Duration::from_secs(60)).ok().flatten())
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(statuses, vec![Some(200); 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_speaks_tls_1_2_and_1_3() {
    let world = World::new(1 << 20);
    let bridge = world.start_bridge();
    let ca =
        reqwest::Certificate::from_pem_bundle(&std::fs::read(&world.cert.ca).unwrap()).unwrap();
    for (name, builder) in [
        (
            "TLS 1.2",
            reqwest::Client::builder().tls_version_max(reqwest::tls::Version::TLS_1_2),
        ),
        (
            "TLS 1.3",
            reqwest::Client::builder().tls_version_min(reqwest::tls::Version::TLS_1_3),
        ),
    ] {
        let client = builder.tls_certs_merge(ca.clone()).build().unwrap();
        let r = client
            .get(format!("{}/tls-order", bridge.url()))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.status(), 200, "{name}");
    }
}

/// One order failing for ever among 50 that flow, Tradecloud down for 60 s, the credentials
/// revoked and restored: every trigger answered 200 ends delivered or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing() {
    let world = World::new(1 << 20);
    support::faults_lose_nothing(&world, Duration::from_secs(60)).await;
}

/// `bench tracing` runs the ingress three ways and prints one row each: every call answered 200,
/// spans exported only with tracing on, fewer at a ratio of 0.1 than at 1.0; `bench journal`
/// two ways (journal off and on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benches_print_a_row_per_setting() {
    let bench = |what: &'static str| async move {
        let text = run_bench(&[
            what,
            "--requests",
            "60",
            "--concurrency",
            "4",
            "--rounds",
            "1",
        ])
        .await;
        let rows: Vec<Vec<String>> = text
            .lines()
            .filter(|l| l.starts_with(&format!("| {what} o")))
            .map(|l| l.split('|').map(|c| c.trim().to_owned()).collect())
            .collect();
        for row in &rows {
            assert_eq!(row[5], "60", "every call answered 200: {text}");
        }
        (text, rows)
    };
    let (text, rows) = bench("tracing").await;
    assert_eq!(rows.len(), 3, "{text}");
    let exported = |row: &[String]| -> u64 { row[6].split(' ').next().unwrap().parse().unwrap() };
    let export_kib = |row: &[String]| -> u64 {
        row[6]
            .split('(')
            .nth(1)
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap()
    };
    assert_eq!(
        (rows[0][1].as_str(), exported(&rows[0])),
        ("tracing off", 0)
    );
    assert!(exported(&rows[2]) > 0, "{text}");
    assert!(export_kib(&rows[1]) < export_kib(&rows[2]), "{text}");
    let (text, rows) = bench("journal").await;
    let labels: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(labels, ["journal off", "journal on"], "{text}");

    // The pipeline bench on the embedded queue: the ceiling, the bridge's publisher alone, the
    // ingress (closed and open loop), end to end through the worker (all by wrk), a GET burst,
    // the worker alone draining a backlog and one order's burst; every trigger published.
    let text = run_short_pipeline_bench(&[]).await;
    let mut rows = bench_rows(&text, "embedded");
    assert_eq!(rows.len(), 8, "{text}");
    // The publisher alone behind the baseline's stack: every call answered 2xx, its CPU.
    let publisher = rows.remove(1);
    assert_eq!(publisher[2], support::PUBLISHER_ALONE, "{text}");
    assert_eq!(publisher[11], "", "every wrk call answered 2xx: {text}");
    assert!(publisher[3].parse::<f64>().unwrap() > 0.0, "{text}");
    assert!(publisher[10].starts_with("baseline "), "{text}");
    let runs: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(runs[0], "HTTP only (ceiling)");
    assert_eq!(runs[1], "bridge ingress");
    assert!(
        runs[2].starts_with("bridge ingress, open loop at "),
        "{text}"
    );
    for row in &rows[..2] {
        let rate: f64 = row[3].parse().unwrap();
        assert!(rate > 0.0, "{text}");
        assert_eq!(row[11], "", "every wrk call answered 2xx: {text}");
    }
    // CPU per call of the process loaded (the ingress: its /proc/PID/stat).
    assert!(
        rows[1][10].starts_with("ingress ") && rows[1][10].ends_with(" µs"),
        "{text}"
    );
    assert!(rows[3][10].starts_with("ingress+worker "), "{text}");
    // End to end: every event the ingress accepted (answered 200) came out on the orders topic
    // (and maybe a few more: a call wrk dropped when it stopped may be published unanswered).
    let (published, accepted) = published_of_accepted(&rows[3][11]);
    assert!(accepted > 0 && published >= accepted, "{text}");
    assert!(rows[4][11].starts_with("12 of 12 published"), "{text}");
    // Coalescing: fewer fetches than GET triggers.
    let fetches: usize = rows[4][11]
        .split(" from ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(fetches < 12, "{text}");
    // The worker alone drains the backlog the ingress alone left: every accepted event.
    assert_eq!(
        runs[5], "worker alone, draining a backlog of POSTed events (500 orders)",
        "{text}"
    );
    let (published, accepted) = published_of_accepted(&rows[5][11]);
    assert!(accepted > 0 && published >= accepted, "{text}");
    // And one order's burst: all of it, in one order's pipeline.
    assert_eq!(
        runs[6], "worker alone, draining one order's burst of 200 events",
        "{text}"
    );
    assert!(
        rows[6][11].starts_with("200 published of 200 accepted"),
        "{text}"
    );
    for row in &rows[5..7] {
        assert!(row[8].parse::<f64>().unwrap() > 0.0, "{text}");
        assert!(row[10].starts_with("worker "), "{text}");
    }
}

/// Every series `docs/metrics.md` lists is on `/metrics` before the first request (Kafka's
/// partition gauge aside: it needs Kafka), so dashboards and alerts never wait for a first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_series_is_exported_from_the_start() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    let names: Vec<String> = docs
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or("");
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|n| n != "tcb_kafka_assigned_partitions")
        .collect();
    assert!(names.len() > 20, "{names:?}");
    let world = World::new(1 << 20);
    world.edit_config(
        "[telemetry]\n",
        "[journal]\npath = \"journal.db\"\n\n[telemetry]\n",
    );
    let bridge = world.start_bridge();
    let metrics = bridge.metrics_text().await;
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            !metrics.lines().any(|l| {
                l.strip_prefix(n.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{missing:?} not exported before traffic:\n{metrics}"
    );
    for ready in [
        "tcb_ready{part=\"webhooks\"} 1",
        "tcb_ingress_requests_total{status=\"503\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == ready), "{ready} in\n{metrics}");
    }
    // The console is off unless [admin.console] turns it on (a journal alone does not).
    for path in ["/console", "/console/api/overview"] {
        let answer = reqwest::get(format!("http://{}{path}", bridge.admin))
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path}");
    }
}

/// `trace` answers "where is order X?": triggers that end delivered, dead-lettered and replayed
/// (then delivered) are found by order id, by purchase order number and by trigger id, each with
/// its stages in order and its trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_finds_each_order_by_id_and_po_number_with_its_stages() {
    const CONSOLE_PASSWORD: &str = "console-password-0123";
    let world = World::new(1 << 20);
    // Another process's /metrics (as a worker running apart would serve it), and one that is down.
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_url = format!("http://{}/metrics", peer.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = "# TYPE tcb_worker_triggers_total counter\n\
                    tcb_worker_triggers_total{outcome=\"delivered\"} 40\n";
        while let Ok((mut s, _)) = peer.accept().await {
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_url = format!("http://{}/metrics", down.local_addr().unwrap());
    drop(down);
    world.edit_config(
        "[telemetry]\n",
        &format!(
            "[journal]\npath = \"journal/bridge.db\"\n\n\
             [admin.console]\nenabled = true\nreplay = false\n\
             auth = {{ kind = \"basic\", username = \"ops\", password = \"console-password-0123\" }}\n\
             metrics_from = [\"{peer_url}\", \"{down_url}\"]\n\n\
             [telemetry]\n"
        ),
    );
    world.sim.fail_order("journal-dead", 404);
    let mut bridge = world.start_bridge();
    let sender = world.sender(&bridge, 1);
    let ok = sender
        .send(&Webhook::GetPath("journal-ok".to_owned()))
        .await;
    let dead = sender
        .send(&Webhook::GetPath("journal-dead".to_owned()))
        .await;
    // An event that can never make an order message: it ends as a dead letter.
    let bad = serde_json::json!({
        "eventName": "OrderLinesUpdatedByBuyer",
        "orderEvent": {"orderId": "journal-bad", "lines": "no list",
                       "buyerOrder": {"purchaseOrderNumber": "PO-JOURNAL-BAD"}}
    });
    let bad = sender
        .send(&Webhook::Post(serde_json::to_vec(&bad).unwrap()))
        .await;
    // Refused before anything was stored (no eventName: a 400 Tradecloud does not retry): the
    // journal keeps it, found by the order id and PO number the body names. Without credentials
    // nothing is journaled.
    let refused_body = br#"{"orderEvent":{"orderId":"journal-refused","buyerOrder":{"purchaseOrderNumber":"PO-REFUSED"}}}"#;
    let https = world.client();
    for password in [PASSWORD, "wrong-password"] {
        let answer = https
            .post(bridge.url())
            .basic_auth(USER, Some(password))
            .header("content-type", "application/json")
            .body(refused_body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            if password == PASSWORD { 400 } else { 401 }
        );
    }
    let (ok_id, dead_id, bad_id) = (
        ok.trigger_id.unwrap(),
        dead.trigger_id.unwrap(),
        bad.trigger_id.unwrap(),
    );
    wait_for_metrics(
        &bridge,
        &[
            "tcb_worker_triggers_total{outcome=\"delivered\"} 1",
            "tcb_worker_triggers_total{outcome=\"dead_lettered\"} 2",
        ],
        Duration::from_secs(30),
    )
    .await;

    // The console's JSON API (read-only here): the journal by order id and PO number, the dead
    // letters by reason, no replay, nothing without credentials.
    let admin = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", bridge.admin);
    let get = |path: &str| {
        admin
            .get(url(path))
            .basic_auth("ops", Some(CONSOLE_PASSWORD))
    };
    let get_json = |path: String| {
        let request = get(&path);
        async move {
            request
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let anonymous = admin
        .get(url("/console/api/journal?q=journal-ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let api_stages = |body: &serde_json::Value, id: &str| -> Vec<String> {
        body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["trigger_id"] == id)
            .map(|e| e["stage"].as_str().unwrap().to_owned())
            .collect()
    };
    // The worker's last entries reach the file within the writer's linger.
    for (query, id, want) in [
        (
            "journal-ok",
            &ok_id,
            vec!["accepted", "fetched", "published"],
        ),
        (
            "PO-OURNALOK",
            &ok_id,
            vec!["accepted", "fetched", "published"],
        ),
        (
            "journal-dead",
            &dead_id,
            vec!["accepted", "fetch_failed", "dead_lettered"],
        ),
        ("journal-bad", &bad_id, vec!["accepted", "dead_lettered"]),
    ] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let body = get_json(format!("/console/api/journal?q={query}")).await;
            if api_stages(&body, id) == want {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{query}: {body:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // By time alone: every trigger in the window, none before it; credentials before all else.
    let window =
        get_json("/console/api/journal?since=2000-01-01T00:00:00Z&limit=200".to_owned()).await;
    let seen: BTreeSet<&str> = window["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["trigger_id"].as_str().unwrap())
        .collect();
    for id in [&ok_id, &dead_id, &bad_id] {
        assert!(seen.contains(id.as_str()), "{id}: {window:#}");
    }
    let before = get_json("/console/api/journal?until=2000-01-01T00:00:00Z".to_owned()).await;
    assert_eq!(before["entries"], serde_json::json!([]), "{before:#}");
    let anonymous_bad = admin
        .get(url("/console/api/journal?limit=many"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_bad.status(), 401);
    assert_eq!(
        get("/console/api/journal").send().await.unwrap().status(),
        400
    );
    // The charts add the other process's series; the one that is down is named.
    let overview = get_json("/console/api/overview".to_owned()).await;
    assert_eq!(overview["values"]["delivered"], 41.0, "{overview:#}");
    assert_eq!(
        overview["unreachable"],
        serde_json::json!([down_url]),
        "{overview:#}"
    );
    let refusals = get_json("/console/api/journal?q=PO-REFUSED".to_owned()).await;
    let refusals = refusals["entries"].as_array().unwrap();
    assert_eq!(
        refusals.len(),
        1,
        "one refusal, the 401 not journaled: {refusals:#?}"
    );
    assert_eq!(refusals[0]["stage"], "refused");
    assert_eq!(refusals[0]["order_id"], "journal-refused");
    assert_eq!(refusals[0]["detail"]["status"], 400);
    assert_eq!(refusals[0]["detail"]["reason"], "bad_request");
    assert_eq!(refusals[0]["detail"]["peer"], "127.0.0.1");
    let dead_view = get_json("/console/api/dead-letters".to_owned()).await;
    let kinds: Vec<&str> = dead_view["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["invalid_event", "not_found"], "{dead_view:#}");
    let refused = admin
        .post(url("/console/api/replay"))
        .basic_auth("ops", Some(CONSOLE_PASSWORD))
        .header("x-console", "replay")
        .json(&serde_json::json!({"kind": "not_found"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403, "replay = false: read-only");
    let anonymous_replay = admin
        .post(url("/console/api/replay"))
        .header("x-console", "replay")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_replay.status(), 401, "credentials come first");

    // The cause is fixed; the operator replays the dead letters (both: the bad event fails again,
    // the other is delivered).
    world.sim.heal_order("journal-dead");
    let replay = tokio::process::Command::new(env!("CARGO_BIN_EXE_tradecloud-bridge"))
        .args(["replay", "--idle-exit-secs", "2", "--config"])
        .arg(&world.config)
        .env("E2E_WEBHOOK_PASSWORD", PASSWORD)
        .env(
            "E2E_TRADECLOUD_PASSWORD",
            &tcb_simulator::SimConfig::default().password,
        )
        .output()
        .await
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    wait_for_metrics(
        &bridge,
        &[
            "tcb_worker_triggers_total{outcome=\"delivered\"} 2",
            "tcb_worker_triggers_total{outcome=\"dead_lettered\"} 3",
        ],
        Duration::from_secs(30),
    )
    .await;
    // The event's first letter is marked replayed; the letter it became after the replay is new.
    let dead_view = get_json("/console/api/dead-letters".to_owned()).await;
    let bad_letters: Vec<&serde_json::Value> = dead_view["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["letters"].as_array().unwrap())
        .filter(|l| l["trigger_id"] == bad_id.as_str())
        .collect();
    assert_eq!(bad_letters.len(), 2, "{dead_view:#}");
    assert!(bad_letters[0]["replayed_at"].is_string(), "{dead_view:#}");
    assert!(bad_letters[1]["replayed_at"].is_null(), "{dead_view:#}");
    // A clean stop writes the journal's last entries.
    assert!(bridge.terminate());

    let trace = |query: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tradecloud-bridge"))
            .args(["trace", query, "--json", "--config"])
            .arg(&world.config)
            .env("E2E_WEBHOOK_PASSWORD", PASSWORD)
            .env("E2E_TRADECLOUD_PASSWORD", "x")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "trace {query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let stages = |entries: &[serde_json::Value], id: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["trigger_id"] == id)
            .map(|e| {
                format!(
                    "{} {}",
                    e["process"].as_str().unwrap(),
                    e["stage"].as_str().unwrap()
                )
            })
            .collect()
    };
    for query in ["journal-ok", "PO-OURNALOK", ok_id.as_str()] {
        let entries = trace(query);
        assert_eq!(
            stages(&entries, &ok_id),
            ["ingress accepted", "worker fetched", "worker published"],
            "{query}: {entries:#?}"
        );
        let published = entries.iter().find(|e| e["stage"] == "published").unwrap();
        assert_eq!(published["po_number"], "PO-OURNALOK");
        assert_eq!(published["detail"]["topic"], "tradecloud.orders");
        assert!(
            published["message_id"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        // Where the broker stored the trigger and the output (the embedded queue's ids).
        assert!(
            published["detail"]["position"]
                .as_str()
                .is_some_and(|p| p.starts_with("id ")),
            "{published:#}"
        );
        let accepted = &entries[0];
        assert!(
            accepted["detail"]["position"]
                .as_str()
                .is_some_and(|p| p.starts_with("id ")),
            "{accepted:#}"
        );
        assert_eq!(accepted["detail"]["status"], 200);
        assert_eq!(accepted["detail"]["peer"], "127.0.0.1");
        // One trace through both processes.
        assert_eq!(accepted["trace_id"], published["trace_id"]);
        assert_eq!(accepted["trace_id"].as_str().unwrap().len(), 32);
    }
    let window = trace("--since=2000-01-01T00:00:00Z");
    assert!(
        window.iter().any(|e| e["trigger_id"] == ok_id.as_str()),
        "{window:#?}"
    );
    let refused = trace("journal-refused");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["stage"], "refused");
    assert_eq!(refused[0]["process"], "ingress");
    let entries = trace("journal-dead");
    let journey = stages(&entries, &dead_id);
    assert_eq!(
        journey,
        [
            "ingress accepted",
            "worker fetch_failed",
            "worker dead_lettered",
            "replay replayed",
            "worker fetched",
            "worker published",
        ],
        "{entries:#?}"
    );
    let dead_lettered = entries
        .iter()
        .find(|e| e["stage"] == "dead_lettered")
        .unwrap();
    assert_eq!(dead_lettered["detail"]["kind"], "not_found");
    // Found by its PO number too, once the order was fetched.
    assert_eq!(stages(&trace("PO-RNALDEAD"), &dead_id), journey);
    // The event ends dead-lettered (replayed too, and refused again).
    let entries = trace("journal-bad");
    assert_eq!(
        stages(&entries, &bad_id),
        [
            "ingress accepted",
            "worker dead_lettered",
            "replay replayed",
            "worker dead_lettered"
        ],
        "{entries:#?}"
    );
    assert_eq!(entries[3]["detail"]["kind"], "invalid_event");
    // An event that never became a message is found by the PO number its body names.
    assert_eq!(
        stages(&trace("PO-JOURNAL-BAD"), &bad_id),
        stages(&entries, &bad_id)
    );
    // Text for people: a heading with the trace id, a line per stage.
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_tradecloud-bridge"))
        .args(["trace", "journal-ok", "--config"])
        .arg(&world.config)
        .env("E2E_WEBHOOK_PASSWORD", PASSWORD)
        .env("E2E_TRADECLOUD_PASSWORD", "x")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with(&format!(
            "trigger {ok_id}  order journal-ok  PO PO-OURNALOK  trace "
        )),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
    // Nothing matches: exit 1 with the reason.
    let none = std::process::Command::new(env!("CARGO_BIN_EXE_tradecloud-bridge"))
        .args(["trace", "no-such-order", "--journal"])
        .arg(world.dir.path().join("journal/bridge.db"))
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no trigger"));
}

/// `[worker] message_version = "v2"`: events (a documented proposal, one with badly typed fields)
/// and a fetched order arrive as order messages v2 that validate against the published schema,
/// decimals exact, type problems as warnings on a delivered message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_publishes_order_messages_v2_when_configured() {
    let world = World::new(1 << 20);
    world.edit_config("[worker]\n", "[worker]\nmessage_version = \"v2\"\n");
    world.sim.fail_order("order-v2-refused", 400);
    let bridge = world.start_bridge();
    let sender = world.sender(&bridge, 1);
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("e2e")).await.unwrap();
    let fixture = tcb_simulator::documents::PROPOSAL;
    let badly_typed = fixture
        .replace("2b7f4c1d-6e8a-4b3c-9d0e-1f2a3b4c5d01", "bad-types-1")
        .replacen("\"quantity\": 100.000", "\"quantity\": \"\"", 1);
    let calls = [
        Webhook::Post(fixture.as_bytes().to_vec()),
        Webhook::Post(badly_typed.into_bytes()),
        Webhook::GetPath("order-v2-get".to_owned()),
        Webhook::GetPath("order-v2-refused".to_owned()),
    ];
    for call in &calls {
        assert!(sender.send(call).await.accepted(), "{call:?}");
    }
    let got = collect_until(&mut out, Duration::from_secs(60), |d| d.len() >= 3).await;
    assert_eq!(got.len(), 3);
    wait_for_metrics(
        &bridge,
        &["tcb_worker_triggers_total{outcome=\"dead_lettered\"} 1"],
        Duration::from_secs(30),
    )
    .await;
    let mut by_message: HashMap<String, serde_json::Value> = HashMap::new();
    for d in &got {
        assert_eq!(
            d.message.headers[headers::SCHEMA_VERSION],
            "order-message.v2"
        );
        let decoded = tcb_model::codec::decode_order(&d.message).unwrap();
        assert!(matches!(decoded, tcb_model::Output::V2(_)));
        let json = order_message_v2(&d.message.payload);
        let key = json["trigger"]["tradecloudMessageId"]
            .as_str()
            .unwrap_or("fetched")
            .to_owned();
        by_message.insert(key, json);
    }
    let proposal = &by_message["2b7f4c1d-6e8a-4b3c-9d0e-1f2a3b4c5d01"];
    let line = &proposal["lines"][0];
    assert_eq!(
        line["current"]["prices"]["netPrice"]["transactionCurrency"]["value"],
        "78.90"
    );
    assert_eq!(line["proposed"]["status"], "Open");
    assert_eq!(
        line["proposed"]["deliverySchedule"][1]["quantity"],
        "40.000"
    );
    assert_eq!(proposal["warnings"], serde_json::json!([]));
    let bad = &by_message["bad-types-1"];
    assert_eq!(
        bad["warnings"][0]["path"],
        "/orderEvent/lines/0/buyerLine/deliverySchedule/0/quantity"
    );
    assert!(bad["lines"][0]["requested"]["deliverySchedule"][0]["quantity"].is_null());
    let fetched = &by_message["fetched"];
    assert_eq!(fetched["scope"], "full-order");
    assert_eq!(fetched["orderId"], "order-v2-get");
    // Fetched over HTTPS from the simulator's documented order at version 1: both lines
    // issued, the decimals as the documents write them, nothing confirmed yet.
    assert_eq!(fetched["lines"].as_array().unwrap().len(), 2, "{fetched:#}");
    let first = &fetched["lines"][0];
    assert_eq!(
        first["current"]["deliverySchedule"][0]["quantity"],
        "100.000"
    );
    assert_eq!(
        first["requested"]["prices"]["netPrice"]["transactionCurrency"]["value"],
        "78.90"
    );
    assert!(first["confirmed"].is_null(), "{first:#}");
    assert_eq!(first["processStatus"], "Issued", "{first:#}");
    assert_eq!(
        bridge
            .metric("tcb_worker_triggers_total{outcome=\"delivered\"}")
            .await,
        3.0
    );
    // Real messages of every channel, for tests/asyncapi_check.cjs (scripts/test.sh) to check
    // against docs/asyncapi.yaml.
    let mut dead = bus
        .consumer(&bus.topics.dead_letters, Some("ops"))
        .await
        .unwrap();
    let dead = collect_until(&mut dead, Duration::from_secs(30), |d| !d.is_empty()).await;
    let mut triggers = bus.consumer(&bus.topics.triggers, None).await.unwrap();
    let triggers = collect_until(&mut triggers, Duration::from_secs(10), |d| d.len() >= 4).await;
    assert_eq!((dead.len(), triggers.len()), (1, 4));
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/asyncapi-examples");
    let _ = std::fs::remove_dir_all(&examples);
    std::fs::create_dir_all(&examples).unwrap();
    for (channel, received) in [
        ("orders", &got),
        ("deadLetters", &dead),
        ("triggers", &triggers),
    ] {
        for (i, d) in received.iter().enumerate() {
            let example = serde_json::json!({
                "channel": channel,
                "headers": d.message.headers,
                "payload": serde_json::from_slice::<serde_json::Value>(&d.message.payload).unwrap(),
            });
            std::fs::write(
                examples.join(format!("{channel}-{i}.json")),
                serde_json::to_vec_pretty(&example).unwrap(),
            )
            .unwrap();
        }
    }
}

/// Tradecloud delivers one message (`meta.messageId`) three times, the last after the bridge
/// restarted: one order message is published, the repeats are counted and journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_tradecloud_delivers_three_times_is_published_once_across_a_restart() {
    let world = World::new(1 << 20);
    world.edit_config(
        "[worker]\n",
        "[worker]\ndedupe_path = \"state/dedupe.db\"\n",
    );
    world.edit_config(
        "[telemetry]\n",
        "[journal]\npath = \"journal/bridge.db\"\n\n[telemetry]\n",
    );
    let body = serde_json::to_vec(&orders::event(
        "order-dup",
        4,
        "OrderLinesConfirmedBySupplier",
        "tc-message-dup-1",
    ))
    .unwrap();
    let other = serde_json::to_vec(&orders::event(
        "order-dup",
        5,
        "OrderLinesConfirmedBySupplier",
        "tc-message-dup-2",
    ))
    .unwrap();
    // Starts a bridge, POSTs `bodies`: one is delivered, one is a repeat.
    let run = |bodies: [&Vec<u8>; 2]| {
        let bridge = world.start_bridge();
        let sender = world.sender(&bridge, 1);
        let bodies = bodies.map(Clone::clone);
        async move {
            for b in bodies {
                assert!(sender.send(&Webhook::Post(b)).await.accepted());
            }
            wait_for_metrics(
                &bridge,
                &[
                    "tcb_worker_triggers_total{outcome=\"delivered\"} 1",
                    "tcb_worker_duplicates_total 1",
                ],
                Duration::from_secs(30),
            )
            .await;
            bridge
        }
    };
    let mut bridge = run([&body, &body]).await;
    assert!(bridge.terminate());
    // After a restart the id is still known; another message of the same order is not a repeat.
    let bridge = run([&body, &other]).await;
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let got = collect_until(&mut out, Duration::from_secs(5), |d| d.len() >= 3).await;
    let ids: Vec<Option<String>> = got
        .iter()
        .map(|d| message(d).trigger.tradecloud_message_id)
        .collect();
    assert_eq!(
        ids,
        [
            Some("tc-message-dup-1".to_owned()),
            Some("tc-message-dup-2".to_owned())
        ],
        "one message per Tradecloud message"
    );
    // The journal says what became of the repeats.
    let journal = tcb_journal::search(
        &[world.dir.path().join("journal/bridge.db")],
        &tcb_journal::Query {
            text: "order-dup".to_owned(),
            ..tcb_journal::Query::default()
        },
    );
    drop(bridge);
    let duplicates = journal
        .unwrap()
        .iter()
        .filter(|e| e.stage == tcb_journal::Stage::Duplicate)
        .count();
    assert_eq!(duplicates, 2);
}

/// `enrichment = "full-order"`: POSTed events are published as full orders naming the event;
/// events of one order arriving while its fetch is retried share the next fetch (one fetch per
/// order at a time). `"when-partial"` fetches only for an event without lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_are_published_as_full_orders_with_enrichment() {
    let world = World::new(1 << 20);
    world.edit_config(
        "[worker]\n",
        "[worker]\nmessage_version = \"v2\"\nenrichment = \"full-order\"\n",
    );
    world.sim.fail_order("order-enrich", 503);
    let bridge = world.start_bridge();
    let sender = world.sender(&bridge, 1);
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let first = serde_json::to_vec(&orders::event(
        "order-enrich",
        1,
        "OrderLinesConfirmedBySupplier",
        "enrich-0",
    ))
    .unwrap();
    assert!(sender.send(&Webhook::Post(first)).await.accepted());
    // The first fetch fails and waits to retry; four more events of the order arrive.
    wait_for_metrics(
        &bridge,
        &["tcb_worker_waiting_for_retry_triggers 1"],
        Duration::from_secs(20),
    )
    .await;
    for i in 1..5 {
        let body = serde_json::to_vec(&orders::event(
            "order-enrich",
            1,
            "OrderChangesProposedBySupplier",
            &format!("enrich-{i}"),
        ))
        .unwrap();
        assert!(sender.send(&Webhook::Post(body)).await.accepted());
    }
    // Slow answers from here on: a second fetch of the order, were one started, would overlap.
    world
        .sim
        .inject(tcb_simulator::Fault::Slow(Duration::from_millis(300)), 5);
    world.sim.heal_order("order-enrich");
    let got = collect_until(&mut out, Duration::from_secs(60), |d| d.len() >= 5).await;
    assert_eq!(got.len(), 5);
    // At most one fetch of the order in flight at any time.
    assert_eq!(world.sim.stats().max_in_flight_per_order, 1);
    for d in &got {
        let m = order_message_v2(&d.message.payload);
        assert_eq!(m["scope"], "full-order", "{m:#}");
        assert_eq!(m["orderId"], "order-enrich");
        assert!(m["event"]["name"].as_str().unwrap().starts_with("Order"));
        assert!(m["originalEvent"]["orderEvent"].is_object(), "{m:#}");
        assert_eq!(m["affectedLineIds"].as_array().unwrap().len(), 1);
        assert!(!m["lines"].as_array().unwrap().is_empty());
        assert_eq!(m["original"]["id"], "order-enrich", "the fetched order");
    }
    // One fetch for the first event, one for the four that waited behind it.
    assert_eq!(world.sim.stats().order_fetches, 2);
    drop(bridge);

    // when-partial: an event with lines as it came, one without fetched.
    let world = World::new(1 << 20);
    world.edit_config(
        "[worker]\n",
        "[worker]\nmessage_version = \"v2\"\nenrichment = \"when-partial\"\n",
    );
    let bridge = world.start_bridge();
    let sender = world.sender(&bridge, 1);
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let with_lines = orders::event("order-partial", 1, "OrderLinesConfirmedBySupplier", "p-1");
    let mut documents = orders::event("order-partial", 1, "OrderDocumentsAttachedByBuyer", "p-2");
    // Order documents only: no line.
    documents
        .get_mut("orderDocumentsEvent")
        .unwrap()
        .set("lines", tcb_model::json::Json::Array(vec![]));
    for body in [with_lines, documents] {
        let body = serde_json::to_vec(&body).unwrap();
        assert!(sender.send(&Webhook::Post(body)).await.accepted());
    }
    let got = collect_until(&mut out, Duration::from_secs(30), |d| d.len() >= 2).await;
    let scopes: Vec<(String, String)> = got
        .iter()
        .map(|d| {
            let m = order_message_v2(&d.message.payload);
            (
                m["event"]["name"].as_str().unwrap().to_owned(),
                m["scope"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        scopes,
        [
            (
                "OrderLinesConfirmedBySupplier".to_owned(),
                "partial-event".to_owned()
            ),
            (
                "OrderDocumentsAttachedByBuyer".to_owned(),
                "full-order".to_owned()
            ),
        ]
    );
    assert_eq!(world.sim.stats().order_fetches, 1);
}
