//! `bench`: measurements that print a table. Each runs the same `ingress` binary several ways
//! per round (alternating, so drift hits all alike) and loads it with the same burst of POSTed
//! events over HTTPS with Basic auth; the table gives each run's rate, latency and memory.
//!
//! * `bench tracing`: span export off, on at a sampling ratio of 0.1 and at 1.0 (over OTLP/HTTP
//!   to a sink in this process that answers every export at once).
//! * `bench journal`: the order journal off and on.
//! * `bench pipeline`: the bridge beside its baselines (the HTTP stack alone, a minimal
//!   publisher), per backend, ingress and worker, closed and open loop ([`pipeline`]).

pub mod baseline;
pub mod pipeline;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tcb_simulator::{Sender, SenderAuth, SenderConfig};

use crate::CliError;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Ingress throughput with tracing off, sampled at 0.1 and at 1.0, in one run.
    Tracing(LoadArgs),
    /// Ingress throughput with the order journal off and on, in one run.
    Journal(LoadArgs),
    /// The bridge beside its baselines on each backend: webhook rate and latency (closed and
    /// open loop), end to end through the worker, a GET burst, RSS; prints a table.
    Pipeline(pipeline::PipelineArgs),
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Webhook calls per measurement (after 10% more as a warm-up).
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Rounds of the three settings (they alternate, so drift hits all alike).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Publish to the broker of this config file's [bus] section instead of an embedded queue.
    #[arg(long)]
    bus_config: Option<PathBuf>,
}

pub async fn run(bench: Bench) -> Result<(), CliError> {
    match bench {
        Bench::Tracing(args) => {
            let ratio = |r: f64| Variant {
                label: format!("tracing on, ratio {r}"),
                otel_ratio: Some(r),
                journal: false,
            };
            compare(
                "tracing",
                args,
                vec![Variant::plain("tracing off"), ratio(0.1), ratio(1.0)],
            )
            .await
        }
        Bench::Journal(args) => {
            let on = Variant {
                label: "journal on".to_owned(),
                otel_ratio: None,
                journal: true,
            };
            compare("journal", args, vec![Variant::plain("journal off"), on]).await
        }
        Bench::Pipeline(args) => pipeline::run(args).await,
    }
}

const USER: &str = "bench";

pub(crate) fn io(what: &str) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::Io(format!("{what}: {e}"))
}

/// Where the ingress exports: answers 200 to every OTLP/HTTP export and counts them.
struct Sink {
    addr: std::net::SocketAddr,
    exports: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    handle: actix_web::dev::ServerHandle,
}

impl Sink {
    fn start() -> Result<Self, CliError> {
        use actix_web::{App, HttpResponse, HttpServer, web};
        let exports = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (e, b) = (exports.clone(), bytes.clone());
        let server = HttpServer::new(move || {
            let (e, b) = (e.clone(), b.clone());
            App::new()
                .app_data(web::PayloadConfig::new(64 << 20))
                .route(
                    "/v1/traces",
                    web::post().to(move |body: web::Bytes| {
                        e.fetch_add(1, Ordering::Relaxed);
                        b.fetch_add(body.len() as u64, Ordering::Relaxed);
                        async {
                            HttpResponse::Ok()
                                .content_type("application/x-protobuf")
                                .finish()
                        }
                    }),
                )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .map_err(io("the OTLP sink"))?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| CliError::Io("the OTLP sink has no address".to_owned()))?;
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            addr,
            exports,
            bytes,
            handle,
        })
    }
}

/// One way to run the ingress.
#[derive(Clone)]
struct Variant {
    label: String,
    /// Export spans at this sampling ratio.
    otel_ratio: Option<f64>,
    /// Keep an order journal.
    journal: bool,
}

impl Variant {
    fn plain(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            otel_ratio: None,
            journal: false,
        }
    }
}

struct Measured {
    variant: Variant,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    ok: usize,
    exports: u64,
    export_kib: u64,
    peak_rss: u64,
}

async fn compare(name: &str, args: LoadArgs, variants: Vec<Variant>) -> Result<(), CliError> {
    let temp = tempfile::tempdir().map_err(io("temporary folder"))?;
    let dir = temp.path();
    let cert = tcb_ingress::tls::ensure_dev_certificate(&dir.join("tls"), &[])?;
    let password = "bench-webhook-password-0123456789";
    std::fs::write(dir.join("webhook-password"), password).map_err(io("secret"))?;
    let bus = match &args.bus_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(io("--bus-config"))?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| CliError::Io(format!("--bus-config: {e}")))?;
            let mut bus = table
                .get("bus")
                .and_then(toml::Value::as_table)
                .cloned()
                .ok_or_else(|| CliError::Io("--bus-config has no [bus] section".to_owned()))?;
            // Topics of the bench's own: the triggers it publishes (and nobody consumes) must
            // not land in a real bridge's triggers topic on a shared broker.
            let topics: toml::Table = [
                ("triggers", "tcb-bench.triggers"),
                ("orders", "tcb-bench.orders"),
                ("dead_letters", "tcb-bench.dead-letters"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), toml::Value::String(v.to_owned())))
            .collect();
            bus.insert("topics".to_owned(), toml::Value::Table(topics));
            let mut wrapped = toml::Table::new();
            wrapped.insert("bus".to_owned(), toml::Value::Table(bus));
            toml::to_string(&wrapped).map_err(|e| CliError::Io(e.to_string()))?
        }
        None => String::new(),
    };
    let sink = Sink::start()?;
    let ca = std::fs::read(&cert.ca).map_err(io("the CA"))?;
    println!(
        "bench {name}: {} POSTed events per run, {} in flight, {} rounds, bus {}",
        args.requests,
        args.concurrency,
        args.rounds,
        args.bus_config
            .as_deref()
            .map_or("embedded".to_owned(), |p| p.display().to_string())
    );
    let mut results = Vec::new();
    for round in 0..args.rounds.max(1) {
        for (i, variant) in variants.iter().enumerate() {
            let run_dir = dir.join(format!("run-{round}-{i}"));
            std::fs::create_dir_all(&run_dir).map_err(io("run folder"))?;
            let bus_section = if bus.is_empty() {
                format!(
                    "[bus]\nbackend = \"embedded\"\npath = \"{}\"\n",
                    run_dir.join("bridge.db").display()
                )
            } else {
                bus.clone()
            };
            let journal = if variant.journal {
                format!(
                    "\n[journal]\npath = \"{}\"\n",
                    run_dir.join("journal.db").display()
                )
            } else {
                String::new()
            };
            let config = format!(
                "{bus_section}{journal}\n[ingress]\nlisten = \"127.0.0.1:0\"\n\
                 tls = {{ mode = \"files\", cert = \"{}\", key = \"{}\" }}\n\
                 auth = {{ kind = \"basic\", username = \"{USER}\", password = \"${{file:{}}}\" }}\n\
                 \n[admin]\nlisten = \"127.0.0.1:0\"\n\n[telemetry]\nlog_level = \"warn\"\n",
                cert.cert.display(),
                cert.key.display(),
                dir.join("webhook-password").display(),
            );
            let path = run_dir.join("bridge.toml");
            std::fs::write(&path, config).map_err(io("config"))?;
            let m = measure(&args, variant, &path, &run_dir, &sink, &ca, password).await?;
            println!(
                "  round {}: {:<26} {:>8.0} req/s",
                round + 1,
                m.variant.label,
                m.per_second
            );
            results.push(m);
        }
    }
    sink.handle.stop(true).await;
    println!();
    println!(
        "| {name} | req/s | vs off | webhook answer p50 / p99 | 200s | exports (KiB) | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, m) in results.iter().enumerate() {
        let off = results[n - n % variants.len()].per_second;
        println!(
            "| {} | {:.0} | {:.2}x | {:.1} ms / {:.1} ms | {} | {} ({}) | {:.1} MiB |",
            m.variant.label,
            m.per_second,
            m.per_second / off,
            m.p50.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() * 1e3,
            m.ok,
            m.exports,
            m.export_kib,
            m.peak_rss as f64 / (1024.0 * 1024.0),
        );
    }
    Ok(())
}

async fn measure(
    args: &LoadArgs,
    variant: &Variant,
    config: &Path,
    dir: &Path,
    sink: &Sink,
    ca: &[u8],
    password: &str,
) -> Result<Measured, CliError> {
    let ready = dir.join("ready.json");
    let env: Vec<(&str, String)> = match variant.otel_ratio {
        Some(r) => vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", sink.addr),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", r.to_string()),
        ],
        None => Vec::new(),
    };
    let argv = vec![
        "ingress".into(),
        "--config".into(),
        config.as_os_str().to_owned(),
        "--ready-file".into(),
        ready.as_os_str().to_owned(),
    ];
    let ingress = pipeline::Proc::start("the ingress", argv, &env, &ready, true).await?;
    let port = ingress.port.unwrap_or_default();
    let sender = Sender::new(SenderConfig {
        url: format!("https://localhost:{port}/webhook"),
        auth: SenderAuth::Basic {
            username: USER.to_owned(),
            password: password.to_owned(),
        },
        ca_pem: Some(ca.to_vec()),
        max_attempts: 1,
        initial_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(30),
    })
    .map_err(|e| CliError::Io(e.to_string()))?;
    // The readiness of the broker: the first calls may still get 503.
    let concurrency = args.concurrency;
    pipeline::closed_loop(&sender, args.requests / 10 + 1, concurrency, |i| {
        pipeline::event(i, "warm")
    })
    .await?;
    let (exports, bytes) = (
        sink.exports.load(Ordering::Relaxed),
        sink.bytes.load(Ordering::Relaxed),
    );
    let load = pipeline::closed_loop(&sender, args.requests, concurrency, |i| {
        pipeline::event(i, "run")
    })
    .await?;
    // SIGTERM: the ingress drains and sends its last spans, which count for this run.
    let (_, peak_rss_mib) = ingress.stop().await;
    Ok(Measured {
        variant: variant.clone(),
        per_second: load.ok as f64 / load.elapsed.as_secs_f64().max(1e-9),
        p50: Duration::from_micros(load.latencies.value_at_quantile(0.5)),
        p99: Duration::from_micros(load.latencies.value_at_quantile(0.99)),
        ok: load.ok,
        exports: sink.exports.load(Ordering::Relaxed) - exports,
        export_kib: (sink.bytes.load(Ordering::Relaxed) - bytes) / 1024,
        peak_rss: (peak_rss_mib * 1024.0 * 1024.0) as u64,
    })
}

/// Peak resident memory (VmHWM, Linux) of a process (`self` or a pid), in KiB.
pub(crate) fn peak_rss_kib(process: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.split_whitespace().next()?.parse().ok()
}
