//! OpenTelemetry end to end: ingress and worker as separate processes on Kafka and on RabbitMQ,
//! exporting to a real OTLP collector (rotel; Kafka over gRPC, RabbitMQ over HTTP/protobuf). The
//! test reads back what the collector received: one trace per trigger from the webhook to the
//! output publish, with correct parents and attributes; the simulator saw the fetch's
//! `traceparent`; the output message names its exported publish span; a coalesced fetch links to
//! the triggers it served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/rotel.rs"]
mod rotel;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rotel::{Rotel, Span};
use support::{
    Backend, Bridge, PASSWORD, USER, World, collect_until, kafka_bootstrap, rabbitmq_uri, unique,
    wait_ready,
};
use tcb_model::codec::header;
use tcb_simulator::{SimConfig, TraceSeen, Webhook, orders};

/// The trace Tradecloud's call (or a proxy in front of the bridge) started.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const CALLER_STATE: &str = "tradecloud=t61rcWkgMzE";

struct Run {
    world: World,
    rotel: Rotel,
    system: &'static str,
    /// The publish operation as the system names it.
    send: &'static str,
}

fn start(run: &Run, subcommand: &str, grpc: bool) -> Bridge {
    let (endpoint, protocol) = if grpc {
        (run.rotel.grpc.as_str(), "grpc")
    } else {
        (run.rotel.http.as_str(), "http/protobuf")
    };
    let sim_password = SimConfig::default().password;
    Bridge::start(
        &run.world.config,
        subcommand,
        &[
            ("E2E_WEBHOOK_PASSWORD", PASSWORD),
            ("E2E_TRADECLOUD_PASSWORD", &sim_password),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            // Nothing is exported before the process stops: the spans the test sees were
            // flushed at shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
        ],
    )
}

async fn metric_at_least(bridge: &Bridge, series: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if bridge.metric(series).await >= want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} did not reach {want}: {}",
            bridge.metrics_text().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn one_trace_per_trigger(run: Run, grpc: bool) {
    let world = &run.world;
    // The busy order's first fetch must outlast the wait below, not end as a dead letter.
    world.edit_config("max_attempts = 6", "max_attempts = 60");
    let ingress = start(&run, "ingress", grpc);
    wait_ready(&ingress, 200, Duration::from_secs(30)).await;
    let sender = world.sender(&ingress, 1);
    let tag = unique("otel");
    let (get_order, post_order, busy_order) = (
        format!("{tag}-get"),
        format!("{tag}-post"),
        format!("{tag}-busy"),
    );

    // A GET whose caller sends a trace context.
    let answer = world
        .client()
        .get(format!("{}/{get_order}", ingress.url()))
        .basic_auth(USER, Some(PASSWORD))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", CALLER_STATE)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let get_id = answer.json::<serde_json::Value>().await.unwrap()["triggerId"]
        .as_str()
        .unwrap()
        .to_owned();
    // A POSTed event.
    let body = orders::event(&post_order, 3, "OrderLinesConfirmedBySupplier", &tag);
    let post = sender
        .send(&Webhook::Post(serde_json::to_vec(&body).unwrap()))
        .await;
    let post_id = post.trigger_id.clone().expect("the POST is accepted");
    // Four GETs of one order whose first fetch fails until the others wait behind it: the
    // other three are served by one fetch.
    world.sim.fail_order(&busy_order, 503);
    let mut busy_ids = Vec::new();
    for _ in 0..4 {
        let o = sender.send(&Webhook::GetPath(busy_order.clone())).await;
        busy_ids.push(o.trigger_id.expect("the GET is accepted"));
    }

    let worker = start(&run, "worker", grpc);
    metric_at_least(
        &worker,
        "tcb_worker_triggers_total{outcome=\"delivered\"}",
        2.0,
    )
    .await;
    metric_at_least(&worker, "tcb_worker_held_triggers", 4.0).await;
    metric_at_least(
        &worker,
        "tcb_tradecloud_requests_total{kind=\"order\",status=\"5xx\"}",
        1.0,
    )
    .await;
    let lag = format!(
        "tcb_worker_consumer_lag_messages{{topic=\"{}.triggers\"}}",
        prefix(world)
    );
    if run.system == "kafka" {
        // Kafka's lag counts from the last offset stored, which the held GETs hold back.
        metric_at_least(&worker, &lag, 4.0).await;
    }
    // The busy order's fetch is in flight, between attempts waiting for its retry.
    metric_at_least(&worker, "tcb_worker_in_flight_triggers", 1.0).await;
    metric_at_least(&worker, "tcb_worker_waiting_for_retry_triggers", 1.0).await;
    world.sim.heal_order(&busy_order);
    metric_at_least(
        &worker,
        "tcb_worker_triggers_total{outcome=\"delivered\"}",
        6.0,
    )
    .await;

    // The output messages, with the trace context they carry.
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let received = collect_until(&mut out, Duration::from_secs(60), |d| d.len() >= 6).await;
    assert_eq!(received.len(), 6);
    let output_parent: BTreeMap<String, String> = received
        .iter()
        .map(|r| {
            let tp = r.message.headers[header::TRACEPARENT].clone();
            let trigger = r.message.headers[header::TRIGGER_ID].clone();
            (trigger, tp)
        })
        .collect();
    // Nothing left behind: the lag reads 0 again (RabbitMQ: the queue's ready messages).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while worker.metric(&lag).await != 0.0 || !worker.metrics_text().await.contains(&lag) {
        assert!(std::time::Instant::now() < deadline, "{lag} stays above 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut worker = worker;
    let mut ingress = ingress;
    // A clean stop flushes the last spans.
    assert!(worker.terminate(), "the worker stops cleanly");
    assert!(ingress.terminate(), "the ingress stops cleanly");
    let worker_logs = worker.logs.lock().unwrap().clone();
    let ingress_logs = ingress.logs.lock().unwrap().clone();

    let all: Vec<String> = [get_id.clone(), post_id.clone()]
        .into_iter()
        .chain(busy_ids.iter().cloned())
        .collect();
    let spans = run
        .rotel
        .wait_for(Duration::from_secs(30), |spans| {
            all.iter().all(|id| {
                spans.iter().any(|s| {
                    s.kind == "SPAN_KIND_PRODUCER"
                        && s.name.ends_with(".orders")
                        && trace_of(spans, id).is_some_and(|t| t == s.trace_id)
                })
            })
        })
        .await;

    let by_id: BTreeMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let child = |parent: &Span, kind: &str, name_end: &str| -> Span {
        spans
            .iter()
            .find(|s| s.parent_id == parent.id && s.kind == kind && s.name.ends_with(name_end))
            .unwrap_or_else(|| panic!("no {kind} {name_end:?} under {parent:#?} in {spans:#?}"))
            .clone()
    };
    let mut traces = BTreeSet::new();
    let triggers = format!("{}.triggers", prefix(world));
    let orders_topic = format!("{}.orders", prefix(world));
    for id in &all {
        let server = spans
            .iter()
            .find(|s| s.kind == "SPAN_KIND_SERVER" && s.attr("tcb.trigger_id") == id)
            .unwrap_or_else(|| panic!("no webhook span for {id}: {spans:#?}"));
        assert_eq!(server.service, "tradecloud-bridge-ingress");
        assert_eq!(server.attr("http.response.status_code"), "200");
        assert_eq!(server.attr("url.scheme"), "https");
        assert!(
            traces.insert(server.trace_id.clone()),
            "one trace per trigger"
        );
        // Every span of the trace belongs to this trigger.
        for s in spans.iter().filter(|s| s.trace_id == server.trace_id) {
            let named = s.attr("tcb.trigger_id");
            let message = s.attr("messaging.message.id");
            assert!(
                (named.is_empty() || named == id)
                    && (message.is_empty() || message == id || s.name.ends_with(".orders")),
                "{s:#?} is in the trace of {id}"
            );
        }
        let publish = child(server, "SPAN_KIND_PRODUCER", &triggers);
        assert_eq!(publish.name, format!("{} {triggers}", run.send));
        assert_eq!(publish.attr("messaging.system"), run.system);
        assert_eq!(publish.attr("messaging.destination.name"), triggers);
        assert_eq!(publish.attr("messaging.message.id"), id);
        let process = child(&publish, "SPAN_KIND_CONSUMER", &triggers);
        assert_eq!(process.service, "tradecloud-bridge-worker");
        assert_eq!(process.name, format!("process {triggers}"));
        assert_eq!(process.attr("messaging.operation.type"), "process");
        assert_eq!(process.attr("messaging.message.id"), id);
        child(&process, "SPAN_KIND_INTERNAL", "normalize");
        // Log lines inside a span carry its ids.
        let line = |logs: &[String], message: &str| -> serde_json::Value {
            logs.iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == message && v["trigger_id"] == id.as_str())
                .unwrap_or_else(|| panic!("no {message:?} line for {id}"))
        };
        let accepted = line(&ingress_logs, "trigger accepted");
        assert_eq!(accepted["trace_id"], server.trace_id.as_str());
        assert_eq!(accepted["span_id"], server.id.as_str());
        let done = line(&worker_logs, "trigger done");
        assert_eq!(done["trace_id"], process.trace_id.as_str());
        assert_eq!(done["span_id"], process.id.as_str());
        // The output message names the publish that stored it (an earlier attempt that failed
        // is a span of its own).
        let named = output_parent[id].split('-').nth(2).unwrap().to_owned();
        let output = by_id
            .get(named.as_str())
            .unwrap_or_else(|| panic!("the output's traceparent names no exported span: {id}"));
        assert_eq!(
            output_parent[id],
            format!("00-{}-{}-01", output.trace_id, output.id)
        );
        assert_eq!(output.parent_id, process.id);
        assert_eq!(output.kind, "SPAN_KIND_PRODUCER");
        assert_eq!(output.name, format!("{} {orders_topic}", run.send));
        assert_eq!(output.attr("messaging.system"), run.system);
        assert_eq!(output.status, "STATUS_CODE_UNSET");
        if id == &post_id {
            assert_eq!(process.attr("tradecloud.order_id"), post_order);
            assert_eq!(
                process.attr("tradecloud.event_name"),
                "OrderLinesConfirmedBySupplier"
            );
            assert!(
                !spans
                    .iter()
                    .any(|s| s.trace_id == server.trace_id && s.kind == "SPAN_KIND_CLIENT"),
                "a POSTed event needs no fetch"
            );
        }
        if id == &get_id {
            assert_eq!(
                server.trace_id, CALLER_TRACE,
                "the caller's trace is continued"
            );
            assert_eq!(server.parent_id, CALLER_SPAN);
            assert_eq!(process.attr("tradecloud.order_id"), get_order);
            let fetch = child(&process, "SPAN_KIND_INTERNAL", "fetch order");
            let call = child(&fetch, "SPAN_KIND_CLIENT", "/v2/order/{orderId}");
            assert_eq!(call.name, "GET /v2/order/{orderId}");
            assert_eq!(call.attr("http.response.status_code"), "200");
            assert_eq!(call.attr("http.request.method"), "GET");
            assert_eq!(call.attr("server.address"), "127.0.0.1");
            assert!(
                call.attr("url.full")
                    .ends_with(&format!("/v2/order/{get_order}"))
            );
            let seen = world.sim.traceparents();
            assert!(
                seen.contains(&TraceSeen {
                    order_id: get_order.clone(),
                    traceparent: format!("00-{}-{}-01", call.trace_id, call.id),
                    tracestate: Some(CALLER_STATE.to_owned()),
                }),
                "the simulator saw the fetch's traceparent and the caller's tracestate: {seen:?}"
            );
        }
    }
    // The busy order: its GETs wait on the bus until the worker starts, so one fetch (retried past
    // the 503s) serves several of them, in the trace of the first, linked to the others.
    let busy_process: BTreeMap<&str, &Span> = spans
        .iter()
        .filter(|s| s.kind == "SPAN_KIND_CONSUMER")
        .filter(|s| {
            busy_ids
                .iter()
                .any(|id| s.attr("messaging.message.id") == id)
        })
        .map(|s| (s.attr("messaging.message.id"), s))
        .collect();
    assert_eq!(busy_process.len(), 4);
    let fetches: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "fetch order" && s.attr("tradecloud.order_id") == busy_order)
        .collect();
    let served: usize = fetches
        .iter()
        .map(|f| f.attr("tcb.coalesced").parse::<usize>().unwrap())
        .sum();
    assert_eq!(
        served, 4,
        "every GET is served by exactly one fetch: {fetches:#?}"
    );
    let coalesced = fetches
        .iter()
        .max_by_key(|f| f.attr("tcb.coalesced").parse::<usize>().unwrap())
        .unwrap();
    let n: usize = coalesced.attr("tcb.coalesced").parse().unwrap();
    assert!(n >= 2, "no fetch served several GETs: {fetches:#?}");
    let linked: BTreeSet<&str> = coalesced.links.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(linked.len(), n - 1, "{coalesced:#?}");
    for (trace, id) in &coalesced.links {
        let target = by_id[id.as_str()];
        assert_eq!(&target.trace_id, trace);
        assert_eq!(
            target.kind, "SPAN_KIND_CONSUMER",
            "links name the triggers' spans"
        );
        assert!(busy_process.values().any(|p| p.id == *id));
    }
    let failed: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == "SPAN_KIND_CLIENT" && s.attr("http.response.status_code") == "503")
        .collect();
    assert!(
        !failed.is_empty(),
        "the failed attempts are spans too: {:#?}",
        spans
            .iter()
            .filter(|s| s.kind == "SPAN_KIND_CLIENT" || s.status != "STATUS_CODE_UNSET")
            .collect::<Vec<_>>()
    );
    assert!(
        failed.iter().all(|s| s.status == "STATUS_CODE_ERROR"),
        "{failed:#?}"
    );
}

/// The trace of the trigger `id` (its webhook span's).
fn trace_of<'a>(spans: &'a [Span], id: &str) -> Option<&'a str> {
    spans
        .iter()
        .find(|s| s.kind == "SPAN_KIND_SERVER" && s.attr("tcb.trigger_id") == id)
        .map(|s| s.trace_id.as_str())
}

fn prefix(world: &World) -> &str {
    match &world.backend {
        Backend::Kafka { prefix, .. } | Backend::RabbitMq { prefix, .. } => prefix,
        Backend::Embedded => "tradecloud",
    }
}

async fn on(backend: Backend, system: &'static str, send: &'static str, grpc: bool) {
    let world = World::with(backend, 1 << 20, 5000);
    let rotel = Rotel::start(world.dir.path());
    one_trace_per_trigger(
        Run {
            world,
            rotel,
            system,
            send,
        },
        grpc,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_one_trace_per_trigger_over_grpc() {
    let backend = Backend::Kafka {
        bootstrap: kafka_bootstrap(),
        prefix: unique("tcb-otel"),
    };
    on(backend, "kafka", "send", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_one_trace_per_trigger_over_http() {
    let prefix = unique("tcb-otel");
    let _names = support::RabbitNames(prefix.clone());
    let backend = Backend::RabbitMq {
        uri: rabbitmq_uri(),
        prefix,
    };
    on(backend, "rabbitmq", "publish", false).await;
}
