//! `bench-baseline` (hidden): the yardsticks of `bench pipeline`. The same HTTP stack as the
//! ingress (actix-web, rustls, Basic auth) answering each POST either at once (the ceiling) or
//! once a minimal publisher holds the body: an idempotent rdkafka producer with `acks=all`
//! awaiting the delivery report, or one confirm-mode lapin channel publishing persistent
//! messages to a durable queue through the default exchange. No envelope, no validation, no
//! metrics, no tracing: what the bridge is measured against.
//!
//! Mode `bus` puts the bridge's own publisher (`tcb_bus`, with the `[bus]` of a bridge config)
//! behind the same stack: the body as the payload of a message with a trigger's headers, a key
//! of its own per call, published to the triggers topic and awaited. Between it and the
//! ingress is only the ingress's own work per call (reading and validating the body, the
//! envelope, spans, metrics, the journal); between it and the minimal publisher only the bus's.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;

use crate::CliError;

#[derive(clap::Args)]
pub struct BaselineArgs {
    /// `http` (answer at once), `kafka`, `rabbitmq` or `bus` (the bridge's publisher).
    #[arg(long)]
    mode: String,
    /// Certificate chain and key (PEM) to serve HTTPS with.
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    username: String,
    /// A file holding the Basic-auth password.
    #[arg(long)]
    password_file: PathBuf,
    /// Kafka bootstrap servers, the RabbitMQ URI, or (mode `bus`) the bridge config file.
    #[arg(long, default_value = "")]
    broker: String,
    /// The Kafka topic or RabbitMQ queue to publish to.
    #[arg(long, default_value = "tcb-bench.baseline")]
    target: String,
    /// The RabbitMQ queue's type: `classic` or `quorum`.
    #[arg(long, default_value = "classic")]
    queue_type: String,
    /// Where to write `{"ingress": "addr"}` once listening.
    #[arg(long)]
    ready_file: PathBuf,
}

#[derive(Clone)]
enum Sink {
    None,
    #[cfg(feature = "kafka")]
    Kafka(Arc<rdkafka::producer::FutureProducer>, Arc<str>),
    #[cfg(feature = "rabbitmq")]
    Rabbit(lapin::Channel, Arc<str>),
    /// The bridge's publisher, its topic and the message each call's body goes out in.
    Bus(Arc<dyn tcb_bus::Publisher>, Arc<str>, Arc<tcb_bus::Message>),
}

fn err(what: &str) -> impl Fn(String) -> CliError + '_ {
    move |e| CliError::Io(format!("baseline {what}: {e}"))
}

async fn sink(args: &BaselineArgs) -> Result<Sink, CliError> {
    match args.mode.as_str() {
        "http" => Ok(Sink::None),
        #[cfg(feature = "kafka")]
        "kafka" => {
            use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
            let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &args.broker)
                    .create()
                    .map_err(|e| err("kafka")(e.to_string()))?;
            // As many partitions as the bridge's topics get by default.
            admin
                .create_topics(
                    &[NewTopic::new(&args.target, 6, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                )
                .await
                .map_err(|e| err("kafka")(e.to_string()))?;
            let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &args.broker)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .create()
                .map_err(|e| err("kafka")(e.to_string()))?;
            Ok(Sink::Kafka(Arc::new(producer), args.target.as_str().into()))
        }
        #[cfg(feature = "rabbitmq")]
        "rabbitmq" => {
            use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
            let connection =
                lapin::Connection::connect(&args.broker, lapin::ConnectionProperties::default())
                    .await
                    .map_err(|e| err("rabbitmq")(e.to_string()))?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| err("rabbitmq")(e.to_string()))?;
            channel
                .queue_declare(
                    args.target.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    queue_arguments(&args.queue_type)?,
                )
                .await
                .map_err(|e| err("rabbitmq")(e.to_string()))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| err("rabbitmq")(e.to_string()))?;
            // The connection lives as long as the process.
            std::mem::forget(connection);
            Ok(Sink::Rabbit(channel, args.target.as_str().into()))
        }
        "bus" => bus_sink(&args.broker).await,
        other => Err(CliError::Io(format!(
            "baseline: unknown mode {other:?}; expected one of http, kafka, rabbitmq, bus"
        ))),
    }
}

/// The bridge's publisher from the config at `path`, once it is ready (RabbitMQ connects in
/// the background), with a trigger's message as the template of each call's.
async fn bus_sink(path: &str) -> Result<Sink, CliError> {
    let config = crate::config::Config::load(std::path::Path::new(path))
        .map_err(|e| err("bus config")(e.to_string()))?;
    let bus = tcb_bus::connect(&config.bus)
        .await
        .map_err(|e| err("bus")(e.chain()))?;
    let publisher = bus.publisher();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(e) = publisher.check_ready().await {
        if std::time::Instant::now() > deadline {
            return Err(err("bus")(format!("not ready within 30 s: {}", e.chain())));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let sample =
        br#"{"eventName":"OrderLinesUpdatedByBuyer","orderEvent":{"orderId":"bench-order"}}"#;
    let trigger = tcb_model::trigger::TriggerEnvelope::event(
        tcb_model::trigger::EventMethod::Post,
        Some("application/json"),
        sample,
        chrono::Utc::now(),
    )
    .map_err(|e| err("bus")(e.to_string()))?;
    let mut template =
        tcb_model::codec::encode_trigger(&trigger).map_err(|e| err("bus")(e.to_string()))?;
    // What `publish_traced` adds to every message.
    template.headers.insert(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    Ok(Sink::Bus(
        publisher,
        bus.topics.triggers.as_str().into(),
        Arc::new(template),
    ))
}

#[cfg(feature = "rabbitmq")]
fn queue_arguments(queue_type: &str) -> Result<lapin::types::FieldTable, CliError> {
    let mut arguments = lapin::types::FieldTable::default();
    match queue_type {
        "classic" => {}
        "quorum" => {
            arguments.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("quorum".into()),
            );
        }
        other => {
            return Err(CliError::Io(format!(
                "baseline: unknown queue type {other:?}; expected one of classic, quorum"
            )));
        }
    }
    Ok(arguments)
}

async fn publish(sink: &Sink, body: &[u8]) -> bool {
    match sink {
        Sink::None => true,
        #[cfg(feature = "kafka")]
        Sink::Kafka(producer, topic) => {
            let key = uuid::Uuid::new_v4().to_string();
            let record = rdkafka::producer::FutureRecord::to(topic)
                .key(&key)
                .payload(body);
            producer
                .send(record, std::time::Duration::ZERO)
                .await
                .is_ok()
        }
        #[cfg(feature = "rabbitmq")]
        Sink::Rabbit(channel, queue) => {
            let props = lapin::BasicProperties::default().with_delivery_mode(2);
            match channel
                .basic_publish(
                    "".into(),
                    queue.as_ref().into(),
                    lapin::options::BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await
            {
                Ok(confirm) => matches!(confirm.await, Ok(lapin::Confirmation::Ack(_))),
                Err(_) => false,
            }
        }
        Sink::Bus(publisher, topic, template) => {
            let message = tcb_bus::Message {
                key: uuid::Uuid::new_v4().to_string(),
                payload: body.to_vec(),
                ..tcb_bus::Message::clone(template)
            };
            publisher.publish(topic, message).await.is_ok()
        }
    }
}

pub async fn run(args: BaselineArgs) -> Result<(), CliError> {
    let password = std::fs::read_to_string(&args.password_file)
        .map_err(|e| err("password file")(e.to_string()))?;
    let expected: Arc<str> = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            args.username,
            password.trim_end()
        ))
    )
    .into();
    let tls = tcb_ingress::tls::server_config(&tcb_ingress::tls::TlsConfig::Files {
        cert: args.cert.clone(),
        key: args.key.clone(),
        reload_seconds: 3600,
    })?
    .ok_or_else(|| CliError::Io("baseline: no TLS config".to_owned()))?;
    let sink = sink(&args).await?;
    let server = HttpServer::new(move || {
        let (expected, sink) = (expected.clone(), sink.clone());
        App::new().route(
            "/webhook",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let (expected, sink) = (expected.clone(), sink.clone());
                async move {
                    let authorized = req
                        .headers()
                        .get("authorization")
                        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                    if !authorized {
                        return HttpResponse::Unauthorized().finish();
                    }
                    if publish(&sink, &body).await {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(r#"{"status":"accepted"}"#)
                    } else {
                        HttpResponse::ServiceUnavailable().finish()
                    }
                }
            }),
        )
    })
    .disable_signals()
    .bind_rustls_0_23(("127.0.0.1", 0), tls.config)
    .map_err(|e| err("listen")(e.to_string()))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| CliError::Io("baseline: no address".to_owned()))?;
    let server = server.run();
    let handle = server.handle();
    std::fs::write(
        &args.ready_file,
        serde_json::json!({"ingress": addr.to_string(), "pid": std::process::id()}).to_string(),
    )
    .map_err(|e| err("ready file")(e.to_string()))?;
    tokio::select! {
        r = server => r.map_err(|e| err("server")(e.to_string())),
        () = crate::serve::shutdown_signal() => {
            handle.stop(true).await;
            Ok(())
        }
    }
}

/// Deletes RabbitMQ queues the bench filled and no one reads (missing ones are fine); a queue
/// that cannot be deleted is an error.
#[cfg(feature = "rabbitmq")]
pub async fn delete_queues(uri: &str, queues: &[&str]) -> Result<(), CliError> {
    let failed = err("rabbitmq");
    let connection = lapin::Connection::connect(uri, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| failed(e.to_string()))?;
    for queue in queues {
        // A missing queue closes the channel: one channel per queue.
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| failed(format!("opening a channel to delete queue {queue}: {e}")))?;
        match channel
            .queue_delete(
                (*queue).into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.to_string().contains("NOT_FOUND") => {}
            // A queue left behind would skew the next step (or run): say so and stop.
            Err(e) => return Err(failed(format!("deleting queue {queue}: {e}"))),
        }
    }
    let _ = connection.close(200, "bench done".into()).await;
    Ok(())
}
