//! Helpers of the end-to-end tests: the bridge as a child process, its config, the simulator.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use tcb_bus::embedded::EmbeddedConfig;
use tcb_bus::{Bus, BusConfig};
use tcb_ingress::tls::{DevCertificate, ensure_dev_certificate};

use tcb_model::OrderMessage;
use tcb_simulator::{Sender, SenderAuth, SenderConfig, SimConfig, Simulator, Webhook, orders};

pub const USER: &str = "tradecloud";
pub const PASSWORD: &str = "e2e-webhook-password-0123";

/// Which bus a world runs on.
#[derive(Clone)]
pub enum Backend {
    Embedded,
    /// `uri` is what the bridge connects to (maybe through a proxy); the test itself uses
    /// [`rabbitmq_uri`]. Names start with `prefix`.
    RabbitMq {
        uri: String,
        prefix: String,
    },
    /// `bootstrap` is what the bridge connects to; the test uses the same.
    Kafka {
        bootstrap: String,
        prefix: String,
    },
}

/// The Kafka-protocol broker of the tests (KAFKA_BOOTSTRAP, default 127.0.0.1:9092).
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The broker the RabbitMQ tests use (RABBITMQ_URI, default the local guest account).
pub fn rabbitmq_uri() -> String {
    std::env::var("RABBITMQ_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The `[bus.topics]` table, names after `prefix`.
fn topics_toml(prefix: &str) -> String {
    format!(
        "\n[bus.topics]\ntriggers = \"{prefix}.triggers\"\norders = \"{prefix}.orders\"\ndead_letters = \"{prefix}.dead\"\n"
    )
}

impl Backend {
    fn toml(&self, dir: &Path) -> String {
        match self {
            Backend::Embedded => format!(
                "[bus]\nbackend = \"embedded\"\npath = \"{}\"\n",
                dir.join("data/bridge.db").display()
            ),
            Backend::RabbitMq { uri, prefix } => {
                format!(
                    r#"[bus]
backend = "rabbitmq"
uri = "{uri}"
heartbeat_seconds = 2
connect_timeout_ms = 3000
exchange = "{prefix}.x"
dead_letter_exchange = "{prefix}.dlx"
"#
                ) + &topics_toml(prefix)
            }
            Backend::Kafka { bootstrap, prefix } => {
                format!(
                    r#"[bus]
backend = "kafka"
bootstrap_servers = "{bootstrap}"
message_timeout_ms = 3000
partitions = 4
session_timeout_ms = 6000
commit_interval_ms = 300
"#
                ) + &topics_toml(prefix)
            }
        }
    }
}

/// A test's world: a folder, the Tradecloud simulator, a certificate, a config file.
pub struct World {
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
    pub cert: DevCertificate,
    pub config: PathBuf,
    pub backend: Backend,
    /// The worker's consumer group.
    pub group: String,
}

impl World {
    /// `max_body_bytes`: the ingress's body limit.
    pub fn new(max_body_bytes: usize) -> Self {
        Self::with(Backend::Embedded, max_body_bytes, 5000)
    }

    pub fn with(backend: Backend, max_body_bytes: usize, ack_timeout_ms: u64) -> Self {
        // Tradecloud serves only HTTPS: so does the simulator.
        Self::with_simulator(
            backend,
            max_body_bytes,
            ack_timeout_ms,
            SimConfig {
                tls: true,
                ..SimConfig::default()
            },
        )
    }

    /// [`World::with`], the simulator configured as given.
    pub fn with_simulator(
        backend: Backend,
        max_body_bytes: usize,
        ack_timeout_ms: u64,
        sim_config: SimConfig,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim =
            Simulator::start(sim_config.clone(), SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let cert = ensure_dev_certificate(&dir.path().join("tls"), &[]).unwrap();
        // The simulator's CA, when it serves HTTPS.
        let api_ca = match sim.ca_pem() {
            Some(pem) => {
                let file = dir.path().join("tradecloud-ca.pem");
                std::fs::write(&file, pem).unwrap();
                format!("ca_file = \"{}\"\n", file.display())
            }
            None => String::new(),
        };
        let config = dir.path().join("bridge.toml");
        let group = unique("tcb-e2e-worker");
        let text = format!(
            r#"
{bus}
[ingress]
listen = "127.0.0.1:0"
max_body_bytes = {max_body_bytes}
ack_timeout_ms = {ack_timeout_ms}
retry_after_seconds = 1
tls = {{ mode = "files", cert = "{cert}", key = "{key}" }}
auth = {{ kind = "basic", username = "{USER}", password = "${{E2E_WEBHOOK_PASSWORD}}" }}

[worker]
# A group of its own: tests run in parallel, and on Kafka one group spans topics (a shared group
# would rebalance every test's workers whenever any test's worker comes or goes).
group = "{group}"
lanes = 8
retry_initial_ms = 50
retry_max_ms = 1000
max_attempts = 6
not_found_attempts = 2
not_found_delay_ms = 100

[worker.tradecloud]
base_url = "{api}"
email = "{email}"
password = "${{E2E_TRADECLOUD_PASSWORD}}"
legacy_base_url = "{api}"
legacy_username = "{legacy_user}"
legacy_password = "{legacy_pw}"
{api_ca}
[admin]
listen = "127.0.0.1:0"

[telemetry]
log_format = "json"
log_level = "info"
"#,
            bus = backend.toml(dir.path()),
            cert = cert.cert.display(),
            key = cert.key.display(),
            api = sim.base_url(),
            email = sim_config.email,
            legacy_user = sim_config.legacy_username,
            legacy_pw = sim_config.legacy_password,
        );
        std::fs::write(&config, text).unwrap();
        Self {
            dir,
            sim,
            cert,
            config,
            backend,
            group,
        }
    }

    /// Rewrites the config file: `from` (which must be in it) becomes `to`.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "{from:?} not in the config");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    /// Replaces the config line starting with `prefix` (e.g. `"auth = "`) by `to`.
    pub fn set_config_line(&self, prefix: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}"))
            .to_owned();
        self.edit_config(&line, to);
    }

    /// Adds `lines` to the `[ingress]` section.
    pub fn add_ingress_settings(&self, lines: &str) {
        self.edit_config(
            "retry_after_seconds = 1\n",
            &format!("retry_after_seconds = 1\n{lines}"),
        );
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data/bridge.db")
    }

    /// The bus the bridge uses, opened from the test process (directly, never through a proxy).
    pub async fn bus(&self) -> Bus {
        let config = match &self.backend {
            Backend::Embedded => BusConfig::Embedded(EmbeddedConfig::at(self.db())),
            Backend::RabbitMq { prefix, .. } => {
                let direct = Backend::RabbitMq {
                    uri: rabbitmq_uri(),
                    prefix: prefix.clone(),
                };
                let table: toml::Table = toml::from_str(&direct.toml(self.dir.path())).unwrap();
                table["bus"].clone().try_into().unwrap()
            }
            Backend::Kafka { .. } => {
                let table: toml::Table =
                    toml::from_str(&self.backend.toml(self.dir.path())).unwrap();
                table["bus"].clone().try_into().unwrap()
            }
        };
        let bus = tcb_bus::connect(&config).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = bus.publisher().check_ready().await {
            assert!(
                Instant::now() < deadline,
                "the test's bus is not ready: {e}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bus
    }

    pub fn start_bridge(&self) -> Bridge {
        self.start("run")
    }

    /// `run`, `ingress` or `worker`.
    pub fn start(&self, subcommand: &str) -> Bridge {
        Bridge::start(
            &self.config,
            subcommand,
            &[
                ("E2E_WEBHOOK_PASSWORD", PASSWORD),
                ("E2E_TRADECLOUD_PASSWORD", &SimConfig::default().password),
            ],
        )
    }

    /// `tradecloud-bridge consume --topic TOPIC` without a group (a tail) as a child process.
    pub fn tail(&self, topic: &str) -> Tail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tradecloud-bridge"))
            .args(["consume", "--topic", topic, "--config"])
            .arg(&self.config)
            .env("E2E_WEBHOOK_PASSWORD", PASSWORD)
            .env("E2E_TRADECLOUD_PASSWORD", SimConfig::default().password)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("consume starts");
        let collect = |out: Box<dyn std::io::Read + Send>| {
            let lines: Arc<Mutex<Vec<String>>> = Arc::default();
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Tail {
            child,
            stdout,
            stderr,
        }
    }

    /// A sender that calls like Tradecloud, trusting the test CA.
    pub fn sender(&self, bridge: &Bridge, max_attempts: u32) -> Sender {
        Sender::new(SenderConfig {
            url: bridge.url(),
            auth: SenderAuth::Basic {
                username: USER.to_owned(),
                password: PASSWORD.to_owned(),
            },
            ca_pem: Some(std::fs::read(&self.cert.ca).unwrap()),
            max_attempts,
            initial_backoff: Duration::from_millis(50),
            timeout: Duration::from_secs(10),
        })
        .unwrap()
    }

    /// A plain HTTPS client trusting the test CA.
    pub fn client(&self) -> reqwest::Client {
        let ca =
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&self.cert.ca).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_certs_merge(ca)
            .build()
            .unwrap()
    }
}

/// `tradecloud-bridge consume` without a group: prints a topic from its start as JSON lines.
pub struct Tail {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Tail {
    /// The trigger ids of the order messages printed so far.
    pub fn trigger_ids(&self) -> BTreeSet<String> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                Some(v["payload"]["trigger"]["id"].as_str()?.to_owned())
            })
            .collect()
    }

    /// Waits until every id in `ids` was printed; panics with what it printed otherwise.
    pub async fn wait_for(&mut self, ids: &BTreeSet<String>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.trigger_ids();
            if ids.is_subset(&seen) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "consume exited with {status}: {:#?}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "consume printed {} of {} triggers: missing {:?}; stderr {:#?}",
                ids.intersection(&seen).count(),
                ids.len(),
                ids.difference(&seen).take(5).collect::<Vec<_>>(),
                self.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whatever it wrote to stderr holds no panic.
    pub fn assert_no_panic(&self) {
        let stderr = self.stderr.lock().unwrap();
        assert!(
            !stderr.iter().any(|l| l.contains("panicked")),
            "{stderr:#?}"
        );
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tradecloud-bridge run` as a child process.
pub struct Bridge {
    child: Child,
    /// Unset for `worker`.
    pub ingress: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Bridge {
    pub fn start(config: &Path, subcommand: &str, env: &[(&str, &str)]) -> Self {
        // The bridge writes its bound addresses here once it listens: no log text is parsed.
        let ready_file = config.with_file_name(format!("ready-{}.json", unique("bridge")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tradecloud-bridge"));
        cmd.arg(subcommand)
            .arg("--config")
            .arg(config)
            .arg("--ready-file")
            .arg(&ready_file)
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the bridge binary starts");
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let (ingress, admin) = loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                let v: serde_json::Value = serde_json::from_str(&text).expect("ready file is JSON");
                let addr = |k: &str| v[k].as_str().map(|a| a.parse::<SocketAddr>().unwrap());
                break (addr("ingress"), addr("admin").expect("an admin address"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the bridge exited with {status}: {:#?}",
                    logs.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the bridge did not start: {:#?}",
                logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            ingress,
            admin,
            logs,
        }
    }

    pub fn url(&self) -> String {
        format!(
            "https://localhost:{}/webhook",
            self.ingress.expect("an ingress").port()
        )
    }

    /// The value of one series of `GET /metrics`, e.g. `tcb_worker_triggers_total{outcome="delivered"}`
    /// (0 while it has not been written).
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The body of `GET /readyz` (`{"status", "broker", "worker"}`); Null when it cannot be read.
    pub async fn readyz_body(&self) -> serde_json::Value {
        match reqwest::get(format!("http://{}/readyz", self.admin)).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// The whole of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("the admin listener answers")
            .text()
            .await
            .unwrap()
    }

    /// The status of `GET /readyz`.
    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("http://{}/readyz", self.admin))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                self.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's peak resident memory so far (VmHWM), bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }

    pub fn logs_contain(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A message as a test consumer received it.
pub struct Received {
    pub topic: String,
    pub position: String,
    pub message: tcb_bus::Message,
}

/// Messages from a consumer until `done` says so or the deadline passes. Each is acked on arrival:
/// a broker that bounds unacked deliveries (RabbitMQ's prefetch) would otherwise stop sending.
pub async fn collect_until(
    consumer: &mut Box<dyn tcb_bus::Consumer>,
    deadline: Duration,
    mut done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    let end = Instant::now() + deadline;
    let mut got = Vec::new();
    while !done(&got) {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(d) => {
                let d = d.unwrap();
                got.push(Received {
                    topic: d.topic.clone(),
                    position: d.position.clone(),
                    message: d.message.clone(),
                });
                d.ack().await.unwrap();
            }
            Err(_) => break,
        }
    }
    got
}

pub fn message(d: &Received) -> OrderMessage {
    serde_json::from_slice(&d.message.payload).unwrap()
}

pub fn trigger_ids(d: &[Received]) -> BTreeSet<String> {
    d.iter()
        .map(|m| message(m).trigger.id.to_string())
        .collect()
}

/// Waits until `/metrics` has every line of `expected` (exact values), or panics with what is
/// missing at the deadline; returns the text.
pub async fn wait_for_metrics(bridge: &Bridge, expected: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let metrics = bridge.metrics_text().await;
        let missing: Vec<_> = expected
            .iter()
            .filter(|e| !metrics.lines().any(|l| l == **e))
            .collect();
        if missing.is_empty() {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{missing:?} not in\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_ready(bridge: &Bridge, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = bridge.readyz().await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the `/readyz` body says `field` is (`want_ok`) or is not "ok".
pub async fn wait_readyz_field(bridge: &Bridge, field: &str, want_ok: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let body = bridge.readyz_body().await;
        if (body[field] == "ok") == want_ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz {field} stayed {body}, wanted ok: {want_ok}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fires triggers one after another until stopped; keeps every answer.
pub struct Stream {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<String>>>,
    statuses: Arc<Mutex<Vec<Option<u16>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    pub fn start(sender: Sender, tag: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
        let statuses: Arc<Mutex<Vec<Option<u16>>>> = Arc::default();
        let task = {
            let (stop, accepted, statuses) = (stop.clone(), accepted.clone(), statuses.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    i += 1;
                    let order = format!("{tag}-{}", i % 10);
                    let w = if i.is_multiple_of(5) {
                        Webhook::GetPath(order)
                    } else {
                        let body = orders::event(
                            &order,
                            i,
                            "OrderLinesUpdatedByBuyer",
                            &format!("{tag}-{i}"),
                        );
                        Webhook::Post(serde_json::to_vec(&body).unwrap())
                    };
                    let o = sender.send(&w).await;
                    statuses.lock().unwrap().push(o.status);
                    if o.accepted() {
                        accepted.lock().unwrap().push(o.trigger_id.unwrap());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await; // pacing, not waiting
                }
            })
        };
        Self {
            stop,
            accepted,
            statuses,
            task,
        }
    }

    pub fn answers(&self) -> usize {
        self.statuses.lock().unwrap().len()
    }

    pub fn count(&self, status: u16) -> usize {
        self.statuses
            .lock()
            .unwrap()
            .iter()
            .filter(|s| **s == Some(status))
            .count()
    }

    /// Waits until `n` more answers came in.
    pub async fn advance(&self, n: usize) {
        let target = self.answers() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.answers() < target {
            assert!(Instant::now() < deadline, "the stream stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops firing; every answer must have been 200 or 503 (never a 500 or 429, which
    /// Tradecloud would not retry). Returns the accepted trigger ids.
    pub async fn finish(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let statuses = self.statuses.lock().unwrap().clone();
        let other: Vec<_> = statuses
            .iter()
            .filter(|s| !matches!(s, Some(200) | Some(503)))
            .collect();
        assert!(
            other.is_empty(),
            "answers other than 200 and 503: {other:?}"
        );
        self.accepted.lock().unwrap().iter().cloned().collect()
    }
}

/// An outage while `stream` fires: after `begin` the bridge must turn not-ready and answer 503 (at
/// least `min_503` more times); after `end` it must be ready and accept again, without a restart.
pub async fn outage(
    bridge: &Bridge,
    stream: &Stream,
    min_503: usize,
    begin: impl FnOnce(),
    end: impl FnOnce(),
) {
    begin();
    // /readyz reports the broker, and stays 200: the process can still answer (503 with
    // Retry-After, which Tradecloud retries), where leaving the Service would give connection errors.
    wait_readyz_field(bridge, "broker", false, Duration::from_secs(20)).await;
    assert_eq!(bridge.readyz().await, 200, "ready while the broker is away");
    let before = stream.count(503);
    stream.advance(min_503 + 2).await;
    assert!(
        stream.count(503) >= before + min_503,
        "503s while the broker is away"
    );
    end();
    wait_readyz_field(bridge, "broker", true, Duration::from_secs(60)).await;
    let ok = stream.count(200);
    stream.advance(10).await;
    assert!(
        stream.count(200) > ok,
        "accepting again without a restart of the bridge"
    );
}

pub async fn assert_all_delivered(world: &World, accepted: &BTreeSet<String>) {
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let got = collect_until(&mut out, Duration::from_secs(90), |d| {
        accepted.is_subset(&trigger_ids(d))
    })
    .await;
    let delivered = trigger_ids(&got);
    let missing: Vec<_> = accepted.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged triggers never delivered: {missing:?}",
        missing.len()
    );
}

/// Ingress and worker as processes; GET triggers (held to 10 fetches/s) build a backlog; the
/// worker is killed with SIGKILL while work is pending and started again: every acknowledged
/// trigger must arrive.
pub async fn worker_sigkill_loses_nothing(world: &World) {
    let ingress = world.start("ingress");
    let mut worker = world.start("worker");
    wait_ready(&ingress, 200, Duration::from_secs(30)).await;
    let sender = world.sender(&ingress, 1);
    let mut accepted = BTreeSet::new();
    for i in 0..40 {
        let o = sender
            .send(&Webhook::GetPath(format!("kill-order-{}", i % 15)))
            .await;
        assert!(o.accepted(), "{o:?}");
        accepted.insert(o.trigger_id.unwrap());
    }
    let bus = world.bus().await;
    let mut out = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let early = collect_until(&mut out, Duration::from_secs(60), |d| d.len() >= 5).await;
    worker.kill();
    assert!(
        early.len() < accepted.len(),
        "killed while work was pending"
    );
    let _worker = world.start("worker");
    let mut seen = trigger_ids(&early);
    let rest = collect_until(&mut out, Duration::from_secs(120), |d| {
        accepted.is_subset(&seen.union(&trigger_ids(d)).cloned().collect())
    })
    .await;
    seen.extend(trigger_ids(&rest));
    let missing: Vec<_> = accepted.difference(&seen).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
}

/// Waits until every trigger in `accepted` has ended on the orders topic or the dead-letter
/// topic (none lost); returns the delivered ids and the dead letters' headers by trigger id.
pub async fn assert_all_settled(
    world: &World,
    accepted: &BTreeSet<String>,
    within: Duration,
) -> (
    BTreeSet<String>,
    std::collections::BTreeMap<String, tcb_bus::Headers>,
) {
    let bus = world.bus().await;
    let mut orders = bus.consumer(&bus.topics.orders, Some("erp")).await.unwrap();
    let mut dead = bus
        .consumer(&bus.topics.dead_letters, Some("ops"))
        .await
        .unwrap();
    let mut delivered = BTreeSet::new();
    let mut dead_letters = std::collections::BTreeMap::new();
    let deadline = Instant::now() + within;
    loop {
        let settled: BTreeSet<String> = delivered
            .iter()
            .chain(dead_letters.keys())
            .cloned()
            .collect();
        let missing: Vec<&String> = accepted.difference(&settled).collect();
        if missing.is_empty() {
            return (delivered, dead_letters);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged triggers neither delivered nor dead-lettered: {:?}",
            missing.len(),
            accepted.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        tokio::select! {
            d = orders.next() => {
                let d = d.unwrap();
                let order = tcb_model::codec::decode_order(&d.message).unwrap();
                delivered.insert(order.trigger_id().to_string());
                d.ack().await.unwrap();
            }
            d = dead.next() => {
                let d = d.unwrap();
                let h = d.message.headers.clone();
                if let Some(id) = h.get(tcb_model::codec::header::TRIGGER_ID) {
                    dead_letters.insert(id.clone(), h);
                }
                d.ack().await.unwrap();
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Fires `webhooks` one after another; the trigger ids of those answered 200.
pub async fn fire(
    sender: &Sender,
    webhooks: impl IntoIterator<Item = Webhook>,
) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    for w in webhooks {
        let o = sender.send(&w).await;
        assert_eq!(o.status, Some(200), "{w:?}: {o:?}");
        accepted.insert(o.trigger_id.unwrap());
    }
    accepted
}

fn event_webhook(order: &str, version: u64, n: usize) -> Webhook {
    let body = orders::event(
        order,
        version,
        "OrderLinesUpdatedByBuyer",
        &format!("{order}-{n}"),
    );
    Webhook::Post(serde_json::to_vec(&body).unwrap())
}

/// The fault scenario of each backend, ingress and worker as separate processes: one order that
/// Tradecloud answers 500 for ever among 50 that flow; Tradecloud down for `down`; the
/// credentials revoked and restored. Every trigger answered 200 ends delivered or dead-lettered.
pub async fn faults_lose_nothing(world: &World, down: Duration) {
    let ingress = world.start("ingress");
    let worker = world.start("worker");
    wait_ready(&ingress, 200, Duration::from_secs(30)).await;
    let sender = world.sender(&ingress, 1);

    // 1. One order failing for ever among 50 that flow: 201 triggers.
    world.sim.fail_order("stuck-order", 500);
    let started = Instant::now();
    let mut first = fire(&sender, [Webhook::GetPath("stuck-order".to_owned())]).await;
    let stuck_id = first.iter().next().cloned().unwrap();
    first.extend(
        fire(
            &sender,
            (0..50).flat_map(|i| {
                let order = format!("flow-{i}");
                [
                    event_webhook(&order, 2, 1),
                    Webhook::GetPath(order.clone()),
                    event_webhook(&order, 3, 2),
                    Webhook::GetQuery(order.clone()),
                ]
            }),
        )
        .await,
    );
    let (delivered, dead) = assert_all_settled(world, &first, Duration::from_secs(120)).await;
    eprintln!(
        "faults: {} triggers settled in {:?} ({} delivered, {} dead-lettered)",
        first.len(),
        started.elapsed(),
        delivered.len(),
        dead.len()
    );
    assert_eq!(dead.len(), 1, "only the stuck order: {dead:?}");
    let h = &dead[&stuck_id];
    assert_eq!(h[tcb_model::codec::header::DEAD_LETTER_ATTEMPTS], "6");
    assert!(
        h[tcb_model::codec::header::DEAD_LETTER_REASON].contains("500"),
        "{h:?}"
    );

    // 2. Tradecloud down: the worker pauses, nothing is dead-lettered, all arrive after.
    world.sim.set_down(true);
    let down_at = Instant::now();
    let second = fire(
        &sender,
        (0..30).map(|i| Webhook::GetPath(format!("down-{i}"))),
    )
    .await;
    wait_ready(&worker, 503, Duration::from_secs(30)).await;
    tokio::time::sleep(down.saturating_sub(down_at.elapsed())).await;
    world.sim.set_down(false);
    let up_at = Instant::now();
    let (_, dead) = assert_all_settled(world, &second, Duration::from_secs(120)).await;
    assert!(
        dead.is_empty(),
        "nothing dead-lettered while down: {dead:?}"
    );
    eprintln!(
        "faults: Tradecloud down {:?}: 30 triggers delivered {:?} after it came back",
        down,
        up_at.elapsed()
    );
    wait_ready(&worker, 200, Duration::from_secs(30)).await;

    // 3. Credentials revoked, then restored.
    world.sim.set_credentials_revoked(true);
    let third = fire(
        &sender,
        (0..20).map(|i| Webhook::GetPath(format!("revoked-{i}"))),
    )
    .await;
    wait_ready(&worker, 503, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    world.sim.set_credentials_revoked(false);
    let (_, dead) = assert_all_settled(world, &third, Duration::from_secs(120)).await;
    assert!(
        dead.is_empty(),
        "nothing dead-lettered while refused: {dead:?}"
    );
    let api = world.sim.stats();
    assert_eq!(api.rate_limited, 0, "{api:?}");
    eprintln!("faults: Tradecloud saw {api:?}");
}

/// An order message v2 as JSON, after checking it against the published JSON Schema
/// (`docs/schemas/order-message.v2.json`); panics with the schema's complaints.
pub fn order_message_v2(payload: &[u8]) -> serde_json::Value {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema: serde_json::Value = serde_json::from_slice(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../docs/schemas/order-message.v2.json"
            ))
            .unwrap(),
        )
        .unwrap();
        jsonschema::validator_for(&schema).unwrap()
    });
    let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "schema errors: {errors:?}");
    json
}

/// `tradecloud-bridge bench ARGS`: what it printed, after checking it succeeded.
pub async fn run_bench(args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tradecloud-bridge"))
        .arg("bench")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The rows `bench pipeline` printed for `backend`, cell by cell (cell 0 is empty: the line
/// starts with `|`; cell 1 is the backend, 2 the run, ..., 11 the note).
pub fn bench_rows(text: &str, backend: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with(&format!("| {backend} |")))
        .map(|l| l.split('|').map(|c| c.trim().to_owned()).collect())
        .collect()
}

/// `bench pipeline` with short loads (1 s, 4 connections; a burst of 12 GET triggers over 3
/// orders; one order's burst of 200 events) and `extra`.
pub async fn run_short_pipeline_bench(extra: &[&str]) -> String {
    let mut args = vec![
        "pipeline",
        "--seconds",
        "1",
        "--concurrency",
        "4",
        "--get-burst",
        "12",
        "--get-orders",
        "3",
        "--open-loop-secs",
        "1",
        "--order-burst",
        "200",
    ];
    args.extend(extra);
    run_bench(&args).await
}

/// "N published of M accepted ...": (N, M).
pub fn published_of_accepted(note: &str) -> (usize, usize) {
    let counts: Vec<usize> = note
        .split(" accepted")
        .next()
        .unwrap()
        .split(" published of ")
        .map(|n| n.parse().unwrap())
        .collect();
    (counts[0], counts[1])
}

/// The row of `bench pipeline` with the bridge's publisher behind the baselines' HTTP stack.
pub const PUBLISHER_ALONE: &str = "bridge publisher alone (same HTTP stack, body as it came)";

/// `bench pipeline` on one broker (short loads) prints the HTTP-only ceiling, the minimal
/// publisher(s) and the bridge in one run, the bridge's ratio to the minimal publisher, and every
/// trigger the ingress accepted published, end to end and by the worker draining a backlog.
pub async fn bench_pipeline_on(flag: &str, broker: &str, backend: &str, minimal: &[&str]) {
    let text = run_short_pipeline_bench(&["--no-embedded", flag, broker]).await;
    let rows = bench_rows(&text, backend);
    let runs: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    let mut expected = vec!["HTTP only (ceiling)"];
    expected.extend(minimal);
    expected.push(PUBLISHER_ALONE);
    expected.push("bridge ingress");
    assert_eq!(runs[..expected.len()], expected[..], "{text}");
    let n = expected.len();
    assert!(
        runs[n].starts_with("bridge ingress, open loop at "),
        "{text}"
    );
    assert_eq!(
        runs[n + 1..],
        [
            "bridge ingress + worker, POSTed events end to end",
            "burst of 12 GET triggers over 3 orders",
            "worker alone, draining a backlog of POSTed events (500 orders)",
            "worker alone, draining one order's burst of 200 events",
        ],
        "{text}"
    );
    // The bridge's publisher alone: every call answered 2xx, at some rate.
    let publisher = &rows[n - 2];
    assert_eq!(publisher[11], "", "every wrk call answered 2xx: {text}");
    assert!(publisher[3].parse::<f64>().unwrap() > 0.0, "{text}");
    assert!(publisher[10].starts_with("baseline "), "{text}");
    // The bridge against the minimal publisher it is compared with (the one marked 1.00x).
    assert!(rows[..n - 1].iter().any(|r| r[5] == "1.00x"), "{text}");
    let ratio: f64 = rows[n - 1][5].trim_end_matches('x').parse().unwrap();
    assert!(ratio > 0.0, "{text}");
    // CPU per call includes the broker's process.
    assert!(rows[n - 1][10].contains("broker "), "{text}");
    for row in [&rows[n + 1], &rows[n + 3]] {
        let (published, accepted) = published_of_accepted(&row[11]);
        assert!(accepted > 0 && published >= accepted, "{text}");
    }
    assert!(
        rows[n + 4][11].starts_with("200 published of 200 accepted"),
        "{text}"
    );
    assert!(rows[n + 2][11].starts_with("12 of 12 published"), "{text}");
}

/// Deletes the queues and exchanges of a RabbitMQ [`Backend`] with this prefix when dropped.
pub struct RabbitNames(pub String);

impl Drop for RabbitNames {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        // Delete what the test declared, on a fresh runtime (Drop is not async).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let Ok(conn) = lapin::Connection::connect(
                    &rabbitmq_uri(),
                    lapin::ConnectionProperties::default(),
                )
                .await
                else {
                    return;
                };
                let Ok(ch) = conn.create_channel().await else {
                    return;
                };
                for q in ["triggers", "orders", "dead"] {
                    for name in [format!("{prefix}.{q}"), format!("{prefix}.{q}.tail")] {
                        let _ = ch
                            .queue_delete(
                                name.into(),
                                lapin::options::QueueDeleteOptions::default(),
                            )
                            .await;
                    }
                }
                for x in ["x", "dlx"] {
                    let _ = ch
                        .exchange_delete(
                            format!("{prefix}.{x}").into(),
                            lapin::options::ExchangeDeleteOptions::default(),
                        )
                        .await;
                }
                let _ = conn.close(200, "cleanup".into()).await;
            });
        })
        .join();
    }
}
