//! `bench pipeline`: the bridge beside its baselines, per backend, in one run on one machine.
//!
//! For each backend (embedded, and Kafka or RabbitMQ when given) it runs, one after the other,
//! each as its own process loaded over HTTPS with Basic auth by `wrk` (POSTed order events of
//! Tradecloud's documented shape):
//!
//! 1. the HTTP stack alone, answering without publishing (`bench-baseline --mode http`): the
//!    ceiling;
//! 2. a minimal publisher behind the same stack (`bench-baseline --mode kafka|rabbitmq`): an
//!    idempotent rdkafka producer with `acks=all`, or one confirm-mode lapin channel;
//! 3. the bridge's publisher (`tcb_bus`) behind the same stack (`bench-baseline --mode bus`):
//!    each body published as it came with a trigger's headers, so that what lies between 2 and
//!    4 splits into the bus's cost and the ingress's own work (validation, envelope, spans,
//!    metrics, journal);
//! 4. the bridge's ingress, closed loop, then open loop at half the rate it reached;
//! 5. the bridge's ingress and worker (one `run` process on the embedded queue, two processes
//!    otherwise): wrk POSTs distinct events (500 orders) for as long as in 1-4, and this process
//!    reads their outputs from the orders topic: end-to-end latency from the ingress receiving
//!    the call, and the outputs per second sustained from the first call to the last output,
//!    against the ingress's maximum (4);
//! 6. a burst of GET triggers for a few orders: how long the worker takes to drain it at
//!    Tradecloud's rate limit, and how many fetches coalescing saved;
//! 7. the worker alone draining a backlog the ingress alone took (distinct events, as in 5):
//!    the outputs per second it sustains without the ingress on the same cores, and one order's
//!    burst drained the same way.
//!
//! Each row gives the answers' rate and latency, the end-to-end latency and sustained rate
//! where there is one, the peak RSS and the CPU per call of each process. A bridge process is
//! loaded only once its `/readyz` is green.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tcb_simulator::{Outcome, Sender, SenderAuth, SenderConfig, SimConfig, Simulator, Webhook};

use super::{USER, io, peak_rss_kib};
use crate::CliError;

#[derive(clap::Args)]
pub struct PipelineArgs {
    /// Seconds of each `wrk` load (the ceiling, the minimal publisher, the ingress).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Calls in flight at once (keep-alive HTTPS connections).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// A Kafka bootstrap server to bench as well, e.g. 127.0.0.1:9092.
    #[arg(long)]
    kafka: Option<String>,
    /// A RabbitMQ URI to bench as well, e.g. amqp://guest:guest@127.0.0.1:5672/%2f.
    #[arg(long)]
    rabbitmq: Option<String>,
    /// Leave out the embedded queue.
    #[arg(long)]
    no_embedded: bool,
    /// GET triggers in the burst the worker drains.
    #[arg(long, default_value_t = 200)]
    get_burst: usize,
    /// Events of one order in the burst the worker drains alone.
    #[arg(long, default_value_t = 5000)]
    order_burst: usize,
    /// Orders the GET burst is spread over.
    #[arg(long, default_value_t = 10)]
    get_orders: usize,
    /// Seconds of open-loop load (at half the closed-loop rate).
    #[arg(long, default_value_t = 5)]
    open_loop_secs: u64,
    /// Give up on a step after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Keep the working folder (configs, and each process's log beside its ready file:
    /// `ingress.log`, `worker.log`, ...) and print where it is, also when a step fails.
    #[arg(long)]
    keep: bool,
}

/// One backend to bench.
struct Backend {
    name: &'static str,
    /// Where it is: the embedded queue's folder, Kafka's bootstrap servers or RabbitMQ's URI.
    at: String,
    /// The minimal publisher's mode, when there is one.
    baseline: Option<&'static str>,
}

impl Backend {
    /// The broker's process, when it runs on this machine (RabbitMQ's `beam.smp`, tansu).
    fn broker_pid(&self) -> Option<(&'static str, u32)> {
        let comm = match self.name {
            "kafka" => "tansu",
            "rabbitmq" => "beam.smp",
            _ => return None,
        };
        let pid = std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (name.trim() == comm).then_some(pid)
        })?;
        Some(("broker", pid))
    }

    /// The `[bus]` section of the bridge's config for a stage of the run (`publisher`,
    /// `ingress`, `e2e`, ...):
    /// each stage has topics of its own, so one stage's triggers are not another's backlog.
    fn bus(&self, run: &str, stage: &str) -> String {
        match self.name {
            "embedded" => format!(
                "[bus]\nbackend = \"embedded\"\npath = \"{}/{stage}.db\"\n",
                self.at
            ),
            // Topics of this run's own: a reader starting at the beginning meets only this run.
            "kafka" => format!(
                "[bus]\nbackend = \"kafka\"\nbootstrap_servers = \"{}\"\n\
                 [bus.topics]\ntriggers = \"tcb-bench-{run}-{stage}.triggers\"\n\
                 orders = \"tcb-bench-{run}-{stage}.orders\"\n\
                 dead_letters = \"tcb-bench-{run}-{stage}.dead-letters\"\n",
                self.at
            ),
            // Fixed names per stage (queues outlive the run; the reader skips what it did not
            // send, and the publisher, ingress and e2e stages' queues are deleted at their end,
            // and at the start of a run, for a run that failed midway).
            _ => format!(
                "[bus]\nbackend = \"rabbitmq\"\nuri = \"{}\"\nexchange = \"tcb-bench-{stage}\"\n\
                 [bus.topics]\ntriggers = \"tcb-bench-{stage}.triggers\"\n\
                 orders = \"tcb-bench-{stage}.orders\"\n\
                 dead_letters = \"tcb-bench-{stage}.dead-letters\"\n",
                self.at
            ),
        }
    }
}

/// The row of the bridge's publisher behind the baseline's HTTP stack.
const PUBLISHER_ALONE: &str = "bridge publisher alone (same HTTP stack, body as it came)";

fn backends(args: &PipelineArgs, dir: &Path) -> Vec<Backend> {
    let mut out = Vec::new();
    if !args.no_embedded {
        out.push(Backend {
            name: "embedded",
            at: dir.display().to_string(),
            baseline: None,
        });
    }
    if let Some(servers) = &args.kafka {
        out.push(Backend {
            name: "kafka",
            at: servers.clone(),
            baseline: Some("kafka"),
        });
    }
    if let Some(uri) = &args.rabbitmq {
        out.push(Backend {
            name: "rabbitmq",
            at: uri.clone(),
            baseline: Some("rabbitmq"),
        });
    }
    out
}

/// A process of this binary, started and ready.
pub(super) struct Proc {
    child: tokio::process::Child,
    pid: u32,
    /// The webhook listener, when it has one.
    pub(super) port: Option<u16>,
    /// The admin listener (`/metrics`).
    admin: Option<String>,
    label: &'static str,
}

impl Proc {
    /// Starts this binary with `args` (and `env`, after the caller's `RUST_LOG` and `OTEL_*`
    /// are removed) and waits until it is ready (below); `listens`: wait for its webhook listener.
    pub(super) async fn start(
        label: &'static str,
        args: Vec<OsString>,
        env: &[(&str, String)],
        ready: &Path,
        listens: bool,
    ) -> Result<Self, CliError> {
        let exe = std::env::current_exe().map_err(io("this binary"))?;
        // One left by an earlier process would name its (closed) listeners.
        match std::fs::remove_file(ready) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("an earlier ready file")(e));
            }
            _ => {}
        }
        let mut cmd = tokio::process::Command::new(exe);
        // Its log (warnings and errors: `log_level = "warn"`), for `--keep`; a later process of
        // the same subcommand adds to it.
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(ready.with_extension("log"))
            .map_err(io("a log file"))?;
        cmd.args(args)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (*k, v)));
        let mut child = cmd.spawn().map_err(io(label))?;
        let pid = child.id().unwrap_or_default();
        // Ready: its ready file names its listeners, and a bridge process (one with an admin
        // listener) also says so on `/readyz`: it listens before its broker is connected, and
        // answers 503 until then, as Tradecloud expects.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| CliError::Io(format!("an HTTP client: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut listeners: Option<(Option<u16>, Option<String>)> = None;
        loop {
            if listeners.is_none()
                && let Ok(text) = std::fs::read_to_string(ready)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                let port = v["ingress"]
                    .as_str()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.port());
                if port.is_some() || !listens {
                    listeners = Some((port, v["admin"].as_str().map(str::to_owned)));
                }
            }
            if let Some((_, admin)) = &listeners {
                let Some(admin) = admin else { break };
                if client
                    .get(format!("http://{admin}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(CliError::Io(format!("{label} exited with {status}")));
            }
            if Instant::now() > deadline {
                return Err(CliError::Io(format!("{label} was not ready in 60 s")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (port, admin) = listeners.unwrap_or_default();
        Ok(Self {
            child,
            pid,
            port,
            admin,
            label,
        })
    }

    /// The sum of the series of its `/metrics` whose line starts with `prefix`.
    async fn metric(&self, prefix: &str) -> Result<u64, CliError> {
        let admin = self
            .admin
            .as_deref()
            .ok_or_else(|| CliError::Io(format!("{} has no admin listener", self.label)))?;
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| CliError::Io(format!("{} /metrics: {e}", self.label)))?
            .text()
            .await
            .map_err(|e| CliError::Io(format!("{} /metrics: {e}", self.label)))?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|rest| rest.rsplit(' ').next())
            .filter_map(|n| n.trim().parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// Webhook calls it answered 200 so far (its `/metrics`): the triggers it accepted.
    async fn accepted(&self) -> Result<u64, CliError> {
        let series = format!(
            "{}{{status=\"200\"}} ",
            tcb_telemetry::metrics::INGRESS_REQUESTS
        );
        self.metric(&series).await
    }

    /// Triggers a worker settled so far (published or dead-lettered; its `/metrics`).
    async fn settled(&self) -> Result<u64, CliError> {
        self.metric(tcb_telemetry::metrics::WORKER_TRIGGERS).await
    }

    /// When the worker's settled count first reached `target` (polled every 20 ms), within
    /// `timeout`. Read from the worker itself, so the rate it gives is the worker's own and not
    /// that of whoever reads its outputs (this bench's reader of a Kafka topic tops out near
    /// 6,000 outputs/s, below a worker draining a backlog).
    async fn settled_at(&self, target: u64, timeout: Duration) -> Result<Instant, CliError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.settled().await? >= target {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(CliError::Io(format!(
                    "{} settled {} of {target} triggers in {timeout:?}",
                    self.label,
                    self.settled().await?
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Webhook calls it answered 200, once wrk has stopped: calls still in flight when wrk
    /// stopped are answered too (wrk does not count them), so the count once it stays put for
    /// 300 ms (at most 6 s).
    async fn accepted_settled(&self) -> Result<u64, CliError> {
        let mut accepted = self.accepted().await?;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.accepted().await?;
            if now == accepted {
                break;
            }
            accepted = now;
        }
        Ok(accepted)
    }

    /// The bridge's `subcommand` (`run`, `ingress`, `worker`) with `config`, its ready file in
    /// `dir`; `label` names it in the table.
    async fn bridge(
        label: &'static str,
        subcommand: &str,
        config: &Path,
        dir: &Path,
    ) -> Result<Self, CliError> {
        let ready = dir.join(format!("{subcommand}.json"));
        let args = os(&[&subcommand, &"--config", &config, &"--ready-file", &ready]);
        Self::start(label, args, &[], &ready, subcommand != "worker").await
    }

    /// Peak RSS so far, MiB.
    fn peak_rss_mib(&self) -> f64 {
        peak_rss_kib(&self.pid.to_string()).unwrap_or_default() as f64 / 1024.0
    }

    /// SIGTERM, then a bounded wait; the peak RSS it reached.
    pub(super) async fn stop(mut self) -> (&'static str, f64) {
        let rss = self.peak_rss_mib();
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let _ = self.child.start_kill();
        (self.label, rss)
    }
}

/// CPU time (user and system) a process has used so far, µs (Linux: `/proc/PID/stat`, in
/// ticks of 10 ms).
fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command (in parentheses, maybe with blanks) come the state (field 3), ...,
    // utime (14) and stime (15).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000)
}

/// The CPU time processes use over a measurement.
struct CpuWatch(Vec<(&'static str, u32, u64)>);

impl CpuWatch {
    fn start(procs: impl IntoIterator<Item = Option<(&'static str, u32)>>) -> Self {
        Self(
            procs
                .into_iter()
                .flatten()
                .filter_map(|(label, pid)| Some((label, pid, cpu_micros(pid)?)))
                .collect(),
        )
    }

    /// Each process's CPU time since the start, per call.
    fn per_call(&self, calls: u64) -> Vec<(&'static str, f64)> {
        self.0
            .iter()
            .filter_map(|(label, pid, start)| {
                let used = cpu_micros(*pid)?.saturating_sub(*start);
                Some((*label, used as f64 / calls.max(1) as f64))
            })
            .collect()
    }
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_owned()).collect()
}

/// What one load gave.
pub(super) struct Load {
    pub(super) latencies: Histogram<u64>,
    pub(super) ok: usize,
    pub(super) elapsed: Duration,
    /// When each accepted trigger was sent, by trigger id.
    sent_at: HashMap<String, Instant>,
    first_sent: Instant,
}

impl Load {
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.latencies.value_at_quantile(q))
    }
}

fn histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::<u64>::new(3).map_err(|e| CliError::Io(e.to_string()))
}

/// The i-th POSTed event of a run: a documented order event, one of 500 orders.
pub(super) fn event(i: usize, tag: &str) -> Webhook {
    Webhook::Post(event_body(i, tag).into_bytes())
}

/// The body of [`event_body`] with `@O@` for the order's number and `@N@` for the call's, for
/// wrk to fill in per call: message ids `bench-{tag}-N`.
fn event_template(tag: &str) -> String {
    tcb_simulator::orders::event(
        "bench-order-@O@",
        1,
        "OrderLinesUpdatedByBuyer",
        &format!("bench-{tag}-@N@"),
    )
    .to_string()
}

fn event_body(i: usize, tag: &str) -> String {
    event_of(&format!("bench-order-{}", i % 500), i, tag)
}

/// Event `i` of `order` (version `i + 1`), message id `bench-{tag}-{i}`.
fn event_of(order: &str, i: usize, tag: &str) -> String {
    tcb_simulator::orders::event(
        order,
        i as u64 + 1,
        "OrderLinesUpdatedByBuyer",
        &format!("bench-{tag}-{i}"),
    )
    .to_string()
}

/// A call's outcome, how long its answer took (from when it was due), and when it was due.
type Done = (Instant, Duration, Outcome);

fn record(load: &mut Load, (begun, took, outcome): &Done) {
    if outcome.status == Some(200) {
        load.ok += 1;
        let _ = load.latencies.record(took.as_micros() as u64);
        if let Some(id) = &outcome.trigger_id {
            load.sent_at.insert(id.clone(), *begun);
        }
    }
}

/// `n` calls, `concurrency` at a time, each as soon as the one before on its slot answered.
pub(super) async fn closed_loop(
    sender: &Sender,
    n: usize,
    concurrency: usize,
    make: impl Fn(usize) -> Webhook,
) -> Result<Load, CliError> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let first_sent = Instant::now();
    for i in 0..n {
        let (sender, permits, webhook) = (sender.clone(), permits.clone(), make(i));
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let begun = Instant::now();
            let outcome = sender.send(&webhook).await;
            (begun, begun.elapsed(), outcome)
        });
    }
    let mut load = Load {
        latencies: histogram()?,
        ok: 0,
        elapsed: Duration::ZERO,
        sent_at: HashMap::new(),
        first_sent,
    };
    while let Some(done) = set.join_next().await {
        if let Ok(done) = done {
            load.elapsed = load.elapsed.max(done.0 + done.1 - first_sent);
            record(&mut load, &done);
        }
    }
    Ok(load)
}

/// What `wrk` measured.
struct Wrk {
    per_second: f64,
    ok: u64,
    requests: u64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

/// The script `wrk` runs: POSTs `TCB_BENCH_BODY` (a file) with `TCB_BENCH_AUTH`, and prints
/// its summary as one JSON line.
const WRK_SCRIPT: &str = r#"
local f = assert(io.open(os.getenv("TCB_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("TCB_BENCH_AUTH")
-- End to end: every call a distinct event (@N@ the call's number, @O@ its order, one of 500).
if os.getenv("TCB_BENCH_DISTINCT") == "1" then
  local template = wrk.body
  local n = 0
  request = function()
    n = n + 1
    local body = template:gsub("@O@", tostring(n % 500)):gsub("@N@", tostring(n))
    return wrk.format(nil, nil, nil, body)
  end
end
-- Open loop: each connection waits this long before each call (a fixed arrival rate).
local pause = tonumber(os.getenv("TCB_BENCH_DELAY_MS") or "0")
if pause > 0 then
  delay = function() return pause end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"failed":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration,
    e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// How `wrk` loads the webhook.
struct WrkLoad {
    connections: usize,
    seconds: u64,
    /// Open loop: calls per second over all connections.
    rate: Option<f64>,
    /// The body POSTed; with `distinct`, a template of [`event_template`]'s.
    body: String,
    distinct: bool,
}

impl WrkLoad {
    /// Closed loop, one documented order event over and over.
    fn closed(args: &PipelineArgs) -> Self {
        Self {
            connections: args.concurrency,
            seconds: args.seconds,
            rate: None,
            body: event_body(1, "wrk"),
            distinct: false,
        }
    }

    /// Closed loop, distinct events (500 orders, a message id each, `bench-{tag}-N`).
    fn distinct(args: &PipelineArgs, tag: &str) -> Self {
        Self {
            body: event_template(tag),
            distinct: true,
            ..Self::closed(args)
        }
    }
}

/// Loads the webhook on `port` with `wrk` (1 thread, keep-alive HTTPS connections, Basic auth).
async fn wrk(setup: &Setup, port: u16, load: &WrkLoad) -> Result<Wrk, CliError> {
    let (connections, seconds, rate) = (load.connections, load.seconds, load.rate);
    // At `rate` calls per second over all connections, each waits connections / rate.
    let delay_ms = rate.map_or(0.0, |r| 1000.0 * connections as f64 / r.max(1.0));
    let script = setup.dir.join("post.lua");
    let body = setup.dir.join("event.json");
    std::fs::write(&script, WRK_SCRIPT).map_err(io("the wrk script"))?;
    std::fs::write(&body, &load.body).map_err(io("the wrk body"))?;
    use base64::Engine;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let out = tokio::process::Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg("-s")
        .arg(&script)
        .arg(format!("https://127.0.0.1:{port}/webhook"))
        .env("TCB_BENCH_BODY", &body)
        .env("TCB_BENCH_AUTH", auth)
        .env("TCB_BENCH_DELAY_MS", format!("{delay_ms:.0}"))
        .env("TCB_BENCH_DISTINCT", if load.distinct { "1" } else { "0" })
        .output()
        .await
        .map_err(|e| {
            CliError::Io(format!(
                "cannot run wrk (scripts/install.sh installs it): {e}"
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| {
            CliError::Io(format!(
                "wrk printed no summary: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| CliError::Io(format!("wrk summary: {e}")))?;
    let n = |k: &str| v[k].as_u64().unwrap_or_default();
    let ok = n("requests").saturating_sub(n("failed"));
    Ok(Wrk {
        per_second: ok as f64 / (n("duration_us") as f64 / 1e6).max(1e-9),
        ok,
        requests: n("requests"),
        p50: Duration::from_micros(n("p50")),
        p99: Duration::from_micros(n("p99")),
        p999: Duration::from_micros(n("p999")),
    })
}

/// One output read from the orders topic.
struct Arrival {
    at: Instant,
    /// From the ingress receiving the webhook call (`trigger.receivedAt`) to here.
    latency: Duration,
    /// Tradecloud's message id of the event (`trigger.tradecloudMessageId`), when it had one.
    message_id: Option<String>,
}

/// What the reader takes from an output on the orders topic.
#[derive(serde::Deserialize)]
struct Output {
    trigger: OutputTrigger,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputTrigger {
    id: String,
    received_at: Option<chrono::DateTime<chrono::Utc>>,
    tradecloud_message_id: Option<String>,
}

/// The outputs a wait found.
struct Outputs {
    /// End-to-end latencies (from the ingress receiving the call), µs.
    latencies: Histogram<u64>,
    count: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// A reader of the orders topic: when each trigger's output arrived, by trigger id.
struct Reader {
    arrived: Arc<Mutex<HashMap<String, Arrival>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    async fn start(bus: &tcb_bus::Bus) -> Result<Self, CliError> {
        let mut consumer = bus
            .consumer(&bus.topics.orders, Some("tcb-bench-reader"))
            .await?;
        let arrived: Arc<Mutex<HashMap<String, Arrival>>> = Arc::default();
        let seen = arrived.clone();
        let task = tokio::spawn(async move {
            loop {
                let delivery = match consumer.next().await {
                    Ok(d) => d,
                    Err(tcb_bus::BusError::Closed) => break,
                    // A broker hiccup: the consumer reconnects on the next call.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (at, now) = (Instant::now(), chrono::Utc::now());
                // Only the trigger's facts are read (no tree of the whole message): this
                // process shares the two cores with what it measures.
                if let Ok(out) = serde_json::from_slice::<Output>(&delivery.message.payload)
                    && let Ok(mut seen) = seen.lock()
                {
                    let latency = out
                        .trigger
                        .received_at
                        .and_then(|r| (now - r).to_std().ok())
                        .unwrap_or_default();
                    seen.insert(
                        out.trigger.id,
                        Arrival {
                            at,
                            latency,
                            message_id: out.trigger.tradecloud_message_id,
                        },
                    );
                }
                let _ = delivery.ack().await;
            }
        });
        Ok(Self { arrived, task })
    }

    /// Waits until `expected` outputs `wanted` have arrived (or `timeout`).
    async fn wait(
        &self,
        wanted: impl Fn(&str, &Arrival) -> bool,
        expected: usize,
        timeout: Duration,
    ) -> Result<Outputs, CliError> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = {
                let seen = self
                    .arrived
                    .lock()
                    .map_err(|_| CliError::Io("reader".into()))?;
                let mut found = Outputs {
                    latencies: histogram()?,
                    count: 0,
                    first: None,
                    last: None,
                };
                for a in seen.iter().filter(|(id, a)| wanted(id, a)).map(|(_, a)| a) {
                    found.count += 1;
                    found.first = Some(found.first.map_or(a.at, |f| f.min(a.at)));
                    found.last = Some(found.last.map_or(a.at, |l| l.max(a.at)));
                    let _ = found.latencies.record(a.latency.as_micros() as u64);
                }
                found
            };
            if found.count >= expected || Instant::now() > deadline {
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the outputs of the triggers `load` sent.
    async fn wait_for(&self, load: &Load, timeout: Duration) -> Result<Outputs, CliError> {
        self.wait(|id, _| load.sent_at.contains_key(id), load.ok, timeout)
            .await
    }

    /// Waits for `expected` outputs of events whose message ids start with `prefix`.
    async fn wait_tagged(
        &self,
        prefix: &str,
        expected: usize,
        timeout: Duration,
    ) -> Result<Outputs, CliError> {
        self.wait(
            |_, a| {
                a.message_id
                    .as_deref()
                    .is_some_and(|m| m.starts_with(prefix))
            },
            expected,
            timeout,
        )
        .await
    }
}

/// One row of the table.
#[derive(Default)]
struct Row {
    backend: &'static str,
    run: String,
    per_second: Option<f64>,
    vs_http: Option<f64>,
    vs_minimal: Option<f64>,
    answer: Option<(Duration, Duration, Duration)>,
    end_to_end: Option<(Duration, Duration)>,
    triggers_per_second: Option<f64>,
    rss: Vec<(&'static str, f64)>,
    /// CPU time per call (per trigger end to end) of each process, µs.
    cpu: Vec<(&'static str, f64)>,
    note: String,
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

impl Row {
    fn print(&self) {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "".to_owned());
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.backend,
            self.run,
            opt(self.per_second.map(|r| format!("{r:.0}"))),
            opt(self.vs_http.map(|r| format!("{r:.2}x"))),
            opt(self.vs_minimal.map(|r| format!("{r:.2}x"))),
            opt(self
                .answer
                .map(|(a, b, c)| format!("{} / {} / {} ms", ms(a), ms(b), ms(c)))),
            opt(self
                .end_to_end
                .map(|(a, b)| format!("{} / {} ms", ms(a), ms(b)))),
            opt(self.triggers_per_second.map(|r| format!("{r:.0}"))),
            self.rss
                .iter()
                .map(|(p, m)| format!("{p} {m:.0} MiB"))
                .collect::<Vec<_>>()
                .join(", "),
            self.cpu
                .iter()
                .map(|(p, us)| format!("{p} {us:.0} µs"))
                .collect::<Vec<_>>()
                .join(", "),
            self.note,
        );
    }
}

/// Everything the runs share: certificates, secrets, the simulator, the load generator.
struct Setup {
    dir: PathBuf,
    cert: tcb_ingress::tls::DevCertificate,
    password_file: PathBuf,
    sim: Simulator,
    sim_ca: PathBuf,
    ca: Vec<u8>,
}

const PASSWORD: &str = "bench-webhook-password-0123456789";

impl Setup {
    fn sender(&self, port: u16) -> Result<Sender, CliError> {
        Sender::new(SenderConfig {
            url: format!("https://localhost:{port}/webhook"),
            auth: SenderAuth::Basic {
                username: USER.to_owned(),
                password: PASSWORD.to_owned(),
            },
            ca_pem: Some(self.ca.clone()),
            max_attempts: 1,
            initial_backoff: Duration::from_millis(50),
            timeout: Duration::from_secs(30),
        })
        .map_err(|e| CliError::Io(e.to_string()))
    }

    /// The bridge's config with `bus`, in `run_dir`: the worker publishes message v2 and
    /// remembers Tradecloud's message ids (`dedupe_path`), as the compose files deploy it.
    fn config(&self, bus: &str, run_dir: &Path, group: &str) -> Result<PathBuf, CliError> {
        let c = SimConfig::default();
        let text = format!(
            "{bus}\n[ingress]\nlisten = \"127.0.0.1:0\"\n\
             tls = {{ mode = \"files\", cert = \"{cert}\", key = \"{key}\" }}\n\
             auth = {{ kind = \"basic\", username = \"{USER}\", password = \"${{file:{pw}}}\" }}\n\
             \n[worker]\ngroup = \"{group}\"\nmessage_version = \"v2\"\n\
             dedupe_path = \"{dedupe}\"\n\
             \n[worker.tradecloud]\nbase_url = \"{api}\"\nemail = \"{email}\"\n\
             password = \"{api_pw}\"\nca_file = \"{api_ca}\"\n\
             \n[admin]\nlisten = \"127.0.0.1:0\"\n\n[telemetry]\nlog_level = \"warn\"\n",
            bus = bus,
            cert = self.cert.cert.display(),
            key = self.cert.key.display(),
            pw = self.password_file.display(),
            api = self.sim.base_url(),
            email = c.email,
            api_pw = c.password,
            api_ca = self.sim_ca.display(),
            dedupe = run_dir.join("dedupe.db").display(),
        );
        let path = run_dir.join("bridge.toml");
        std::fs::write(&path, text).map_err(io("config"))?;
        Ok(path)
    }
}

pub async fn run(args: PipelineArgs) -> Result<(), CliError> {
    let temp = tempfile::tempdir().map_err(io("temporary folder"))?;
    let dir = temp.path().to_owned();
    let _temp = if args.keep {
        println!("working folder kept: {}", temp.keep().display());
        None
    } else {
        Some(temp)
    };
    let cert = tcb_ingress::tls::ensure_dev_certificate(&dir.join("tls"), &[])?;
    let password_file = dir.join("webhook-password");
    std::fs::write(&password_file, PASSWORD).map_err(io("secret"))?;
    let sim = Simulator::start(
        SimConfig {
            tls: true,
            ..SimConfig::default()
        },
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .map_err(io("the simulator"))?;
    let sim_ca = dir.join("simulator-ca.pem");
    std::fs::write(&sim_ca, sim.ca_pem().unwrap_or_default()).map_err(io("the simulator CA"))?;
    let setup = Setup {
        ca: std::fs::read(&cert.ca).map_err(io("the CA"))?,
        dir,
        cert,
        password_file,
        sim,
        sim_ca,
    };
    let run_id = format!("{}", chrono::Utc::now().timestamp_millis());
    println!(
        "bench pipeline: wrk (1 thread, {c} HTTPS connections, {s} s) on the ceiling, the minimal \
         publisher, the bridge's publisher alone, the ingress and the ingress with the worker \
         (distinct events over 500 orders, end to end); a burst of {g} GET triggers over {o} orders from this process ({c} in \
         flight); open loop (wrk, a fixed pause per connection) {l} s at half the ingress's rate",
        c = args.concurrency,
        s = args.seconds,
        g = args.get_burst,
        o = args.get_orders,
        l = args.open_loop_secs,
    );
    let mut rows = Vec::new();
    for backend in backends(&args, &setup.dir) {
        println!("  {} ...", backend.name);
        rows.extend(bench_backend(&args, &setup, &backend, &run_id).await?);
    }
    setup.sim.stop().await;
    println!();
    println!(
        "| backend | run | req/s | vs HTTP only | vs minimal publisher | answer p50 / p99 / p999 | \
         end to end p50 / p99 | triggers/s | peak RSS | CPU per call | note |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        row.print();
    }
    Ok(())
}

/// Loads `p` (its webhook) with `wrk` after a warm-up; the row of that, with the CPU per call
/// of `p` and of `broker` (when it runs here).
async fn closed_row(
    setup: &Setup,
    args: &PipelineArgs,
    backend: &Backend,
    run: &str,
    p: &Proc,
) -> Result<Row, CliError> {
    let port = port(p)?;
    // The first calls open connections and may meet a broker not yet ready.
    let sender = setup.sender(port)?;
    closed_loop(&sender, 200, args.concurrency, |i| {
        event(i, &format!("warm-{run}"))
    })
    .await?;
    let cpu = CpuWatch::start([Some((p.label, p.pid)), backend.broker_pid()]);
    let w = wrk(setup, port, &WrkLoad::closed(args)).await?;
    Ok(Row {
        backend: backend.name,
        run: run.to_owned(),
        cpu: cpu.per_call(w.requests),
        per_second: Some(w.per_second),
        answer: Some((w.p50, w.p99, w.p999)),
        note: if w.ok < w.requests {
            format!("{} of {} answered 2xx", w.ok, w.requests)
        } else {
            String::new()
        },
        ..Row::default()
    })
}

async fn baseline(
    setup: &Setup,
    mode: &str,
    broker: &str,
    target: &str,
    queue_type: &str,
    run_dir: &Path,
) -> Result<Proc, CliError> {
    let ready = run_dir.join(format!("baseline-{mode}-{queue_type}.json"));
    Proc::start(
        "baseline",
        os(&[
            &"bench-baseline",
            &"--mode",
            &mode,
            &"--cert",
            &setup.cert.cert,
            &"--key",
            &setup.cert.key,
            &"--username",
            &USER,
            &"--password-file",
            &setup.password_file,
            &"--broker",
            &broker,
            &"--target",
            &target,
            &"--queue-type",
            &queue_type,
            &"--ready-file",
            &ready,
        ]),
        &[],
        &ready,
        true,
    )
    .await
}

async fn bench_backend(
    args: &PipelineArgs,
    setup: &Setup,
    backend: &Backend,
    run_id: &str,
) -> Result<Vec<Row>, CliError> {
    let name = backend.name;
    let run_dir = setup.dir.join(name);
    std::fs::create_dir_all(&run_dir).map_err(io("run folder"))?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut rows = Vec::new();
    // The stages' and the minimal publisher's queues have fixed names: a run that failed
    // midway left them behind, filled (its triggers would be counted in this run's) and
    // perhaps of another queue type.
    let left: Vec<String> = STAGES
        .into_iter()
        .flat_map(stage_queues)
        .chain(["classic", "quorum"].map(rabbitmq_minimal_queue))
        .collect();
    drop_queues(
        backend,
        &left.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;

    // 1. The ceiling.
    let p = baseline(setup, "http", "", "", "classic", &run_dir).await?;
    let mut http = closed_row(setup, args, backend, "HTTP only (ceiling)", &p).await?;
    http.rss.push(p.stop().await);
    let ceiling = http.per_second.unwrap_or(1.0);
    http.vs_http = Some(1.0);
    rows.push(http);

    // 2. The minimal publisher. On RabbitMQ on a classic queue (the naive reference) and on
    // the bridge's queue type (quorum, its default), which the bridge is compared with.
    let mut minimal_rate = None;
    let minimal_target = |queue_type: &str| match backend.name {
        "rabbitmq" => rabbitmq_minimal_queue(queue_type),
        _ => format!("tcb-bench-{run_id}.minimal-{queue_type}"),
    };
    let minimal: &[(&str, &str, bool)] = match backend.baseline {
        Some("kafka") => &[(
            "minimal rdkafka producer (idempotent, acks=all)",
            "classic",
            true,
        )],
        Some(_) => &[
            (
                "minimal lapin publisher (1 confirm channel, durable classic queue)",
                "classic",
                false,
            ),
            (
                "minimal lapin publisher (1 confirm channel, quorum queue)",
                "quorum",
                true,
            ),
        ],
        None => &[],
    };
    for (what, queue_type, compared) in minimal {
        let mode = backend.baseline.unwrap_or_default();
        let target = minimal_target(queue_type);
        let p = baseline(setup, mode, &backend.at, &target, queue_type, &run_dir).await?;
        let mut row = closed_row(setup, args, backend, what, &p).await?;
        row.rss.push(p.stop().await);
        drop_queues(backend, &[target.as_str()]).await?;
        row.vs_http = row.per_second.map(|r| r / ceiling);
        if *compared {
            row.vs_minimal = Some(1.0);
            minimal_rate = row.per_second;
        }
        rows.push(row);
    }
    let vs = |r: Option<f64>| {
        (
            r.map(|r| r / ceiling),
            minimal_rate.and_then(|m| r.map(|r| r / m)),
        )
    };

    // 3. The bridge's publisher alone behind the same stack (topics of its own): the bus's
    // cost per call, apart from the ingress's own work.
    let group = format!("tcb-bench-{run_id}");
    let config = setup.config(&backend.bus(run_id, "publisher"), &run_dir, &group)?;
    let p = baseline(
        setup,
        "bus",
        &config.display().to_string(),
        "",
        "classic",
        &run_dir,
    )
    .await?;
    let mut row = closed_row(setup, args, backend, PUBLISHER_ALONE, &p).await?;
    row.rss.push(p.stop().await);
    drop_stage(backend, "publisher").await?;
    (row.vs_http, row.vs_minimal) = vs(row.per_second);
    rows.push(row);

    // 4. The ingress alone: closed loop, then open loop at half that rate.
    let config = setup.config(&backend.bus(run_id, "ingress"), &run_dir, &group)?;
    let p = Proc::bridge("ingress", "ingress", &config, &run_dir).await?;
    let port_ingress = port(&p)?;
    let mut row = closed_row(setup, args, backend, "bridge ingress", &p).await?;
    (row.vs_http, row.vs_minimal) = vs(row.per_second);
    let ingress_max = row.per_second.unwrap_or_default();
    let half = row.per_second.unwrap_or(100.0) / 2.0;
    let open = wrk(
        setup,
        port_ingress,
        &WrkLoad {
            seconds: args.open_loop_secs,
            rate: Some(half),
            ..WrkLoad::closed(args)
        },
    )
    .await?;
    row.rss.push(p.stop().await);
    drop_stage(backend, "ingress").await?;
    rows.push(row);
    rows.push(Row {
        backend: name,
        run: format!("bridge ingress, open loop at {half:.0}/s"),
        per_second: Some(open.per_second),
        answer: Some((open.p50, open.p99, open.p999)),
        note: format!("{} of {} answered 2xx", open.ok, open.requests),
        ..Row::default()
    });

    // 5. Ingress and worker, end to end. The triggers the ingress alone left behind are drained
    // first (the worker starts on them), so the measurement meets an empty topic.
    let e2e_dir = run_dir.join("e2e");
    std::fs::create_dir_all(&e2e_dir).map_err(io("run folder"))?;
    let config = setup.config(&backend.bus(run_id, "e2e"), &e2e_dir, &group)?;
    let bus = tcb_bus::connect(&crate::config::Config::load(&config)?.bus).await?;
    let reader = Reader::start(&bus).await?;
    let procs = if name == "embedded" {
        vec![Proc::bridge("ingress+worker", "run", &config, &e2e_dir).await?]
    } else {
        vec![
            Proc::bridge("ingress", "ingress", &config, &e2e_dir).await?,
            Proc::bridge("worker", "worker", &config, &e2e_dir).await?,
        ]
    };
    let port_e2e = procs.first().map(port).transpose()?.unwrap_or_default();
    let sender = setup.sender(port_e2e)?;
    // A warm-up (connections, a consumer group joining) drained before the measurement.
    let warm = closed_loop(&sender, 200, args.concurrency, |i| {
        event(i, &format!("warm-e2e-{run_id}"))
    })
    .await?;
    reader.wait_for(&warm, timeout).await?;
    // wrk sends distinct events (500 orders) as fast as the ingress takes them, while the
    // worker publishes them; sustained: outputs per second from the first call to the last
    // output.
    let tag = format!("e2e-{run_id}");
    let ingress = procs
        .first()
        .ok_or_else(|| CliError::Io("no ingress".to_owned()))?;
    let accepted_before = ingress.accepted().await?;
    let worker = procs
        .last()
        .ok_or_else(|| CliError::Io("no worker".to_owned()))?;
    let settled_before = worker.settled().await?;
    let cpu = CpuWatch::start(
        procs
            .iter()
            .map(|p| Some((p.label, p.pid)))
            .chain([backend.broker_pid(), Some(("reader", std::process::id()))]),
    );
    let started = Instant::now();
    let w = wrk(setup, port_e2e, &WrkLoad::distinct(args, &tag)).await?;
    let accepted = ingress
        .accepted_settled()
        .await?
        .saturating_sub(accepted_before) as usize;
    // Sustained: by the worker's own count of settled triggers (the reader of the orders topic
    // may lag behind it), from the first call to the last accepted one settled.
    let done = worker
        .settled_at(settled_before + accepted as u64, timeout)
        .await?;
    let sustained = accepted as f64 / done.duration_since(started).as_secs_f64().max(1e-9);
    let cpu = cpu.per_call(accepted as u64);
    // Every accepted one read back (a call wrk dropped when it stopped may be published too).
    let out = reader
        .wait_tagged(&format!("bench-{tag}-"), accepted, timeout)
        .await?;
    let (e2e, arrived) = (&out.latencies, out.count);
    let mut row = Row {
        backend: name,
        run: "bridge ingress + worker, POSTed events end to end".to_owned(),
        per_second: Some(w.per_second),
        answer: Some((w.p50, w.p99, w.p999)),
        end_to_end: Some((
            Duration::from_micros(e2e.value_at_quantile(0.5)),
            Duration::from_micros(e2e.value_at_quantile(0.99)),
        )),
        triggers_per_second: Some(sustained),
        cpu,
        note: format!(
            "{arrived} published of {accepted} accepted; worker {:.2}x the ingress's maximum",
            sustained / ingress_max.max(1e-9)
        ),
        ..Row::default()
    };

    // 6. A burst of GET triggers for a few orders, drained at Tradecloud's rate limit.
    let fetches_before = setup.sim.stats().order_fetches;
    let orders: Vec<String> = (0..args.get_orders.max(1))
        .map(|k| format!("bench-get-{run_id}-{k}"))
        .collect();
    for order in &orders {
        setup.sim.bump(order);
    }
    let burst = closed_loop(&sender, args.get_burst, args.concurrency, |i| {
        Webhook::GetPath(orders[i % orders.len()].clone())
    })
    .await?;
    let out = reader.wait_for(&burst, timeout).await?;
    let (drained, last) = (out.count, out.last.unwrap_or(burst.first_sent));
    let fetches = setup.sim.stats().order_fetches - fetches_before;
    let mut rss = Vec::new();
    for p in procs {
        rss.push(p.stop().await);
    }
    row.rss = rss.clone();
    rows.push(row);
    rows.push(Row {
        backend: name,
        run: format!(
            "burst of {} GET triggers over {} orders",
            args.get_burst,
            orders.len()
        ),
        per_second: Some(burst.per_second()),
        answer: Some((
            burst.quantile(0.5),
            burst.quantile(0.99),
            burst.quantile(0.999),
        )),
        triggers_per_second: Some(
            drained as f64
                / last
                    .duration_since(burst.first_sent)
                    .as_secs_f64()
                    .max(1e-9),
        ),
        note: format!(
            "{drained} of {} published in {:.1} s from {fetches} fetches (coalescing)",
            burst.ok,
            last.duration_since(burst.first_sent).as_secs_f64()
        ),
        ..Row::default()
    });

    // 7. The worker alone, draining a backlog: the ingress takes distinct events for as long as
    // above with no worker running and stops; then the worker starts on them, sharing the two
    // cores only with the broker (and this reader). Outputs per second from the first output to
    // the last: what the worker sustains when it has cores of its own.
    let drain = Drain {
        backend,
        config: &config,
        dir: &e2e_dir,
        reader: &reader,
        timeout,
        ingress_max,
    };
    let tag = format!("backlog-{run_id}");
    let load = WrkLoad::distinct(args, &tag);
    rows.push(
        drain
            .row(
                "worker alone, draining a backlog of POSTed events (500 orders)".to_owned(),
                &tag,
                async |ingress: &Proc| wrk(setup, port(ingress)?, &load).await.map(|_| ()),
            )
            .await?,
    );

    // 8. The same for one order's burst (a buyer changing one order's lines one by one): its
    // events keep their order, each published without waiting for the one before.
    let tag = format!("one-order-{run_id}");
    let order = format!("bench-burst-{run_id}");
    rows.push(
        drain
            .row(
                format!(
                    "worker alone, draining one order's burst of {} events",
                    args.order_burst
                ),
                &tag,
                async |ingress: &Proc| {
                    let sender = setup.sender(port(ingress)?)?;
                    closed_loop(&sender, args.order_burst, args.concurrency, |i| {
                        Webhook::Post(event_of(&order, i, &tag).into_bytes())
                    })
                    .await
                    .map(|_| ())
                },
            )
            .await?,
    );

    reader.task.abort();
    bus.close().await;
    // The tail streams (`tail_streams`, on by default) keep what the worker published.
    drop_stage(backend, "e2e").await?;
    Ok(rows)
}

/// The worker alone, draining what an ingress (alone) accepted.
struct Drain<'a> {
    backend: &'a Backend,
    config: &'a Path,
    dir: &'a Path,
    reader: &'a Reader,
    timeout: Duration,
    /// The ingress's closed-loop rate, the yardstick.
    ingress_max: f64,
}

impl Drain<'_> {
    /// Starts an ingress with no worker, lets `fill` load it with events whose message ids are
    /// `bench-{tag}-N`, and stops it; then starts the worker and reads its outputs: outputs per
    /// second from the first to the last, CPU per output.
    async fn row(
        &self,
        run: String,
        tag: &str,
        fill: impl AsyncFnOnce(&Proc) -> Result<(), CliError>,
    ) -> Result<Row, CliError> {
        let ingress = Proc::bridge("ingress", "ingress", self.config, self.dir).await?;
        fill(&ingress).await?;
        let backlog = ingress.accepted_settled().await? as usize;
        ingress.stop().await;
        let worker = Proc::bridge("worker", "worker", self.config, self.dir).await?;
        let cpu = CpuWatch::start([
            Some((worker.label, worker.pid)),
            self.backend.broker_pid(),
            Some(("reader", std::process::id())),
        ]);
        // By the worker's own count, from its first settled trigger to the last (this reader
        // may lag behind it).
        let backlog_settled = backlog as u64;
        let first = worker.settled_at(1, self.timeout).await?;
        let last = worker.settled_at(backlog_settled, self.timeout).await?;
        let cpu = cpu.per_call(backlog_settled);
        let span = last.duration_since(first).as_secs_f64();
        let rate = backlog_settled.saturating_sub(1) as f64 / span.max(1e-9);
        // Every one read back from the orders topic.
        let out = self
            .reader
            .wait_tagged(&format!("bench-{tag}-"), backlog, self.timeout)
            .await?;
        Ok(Row {
            backend: self.backend.name,
            run,
            triggers_per_second: Some(rate),
            cpu,
            rss: vec![worker.stop().await],
            note: format!(
                "{} published of {backlog} accepted in {span:.1} s; worker {:.2}x the ingress's \
                 maximum",
                out.count,
                rate / self.ingress_max.max(1e-9)
            ),
            ..Row::default()
        })
    }
}

/// The queue the minimal lapin publisher fills (a fixed name, so a run deletes what a failed
/// one left).
fn rabbitmq_minimal_queue(queue_type: &str) -> String {
    format!("tcb-bench-minimal-{queue_type}")
}

/// The stages whose topics are named `tcb-bench-<stage>.*` ([`Backend::bus`]).
const STAGES: [&str; 3] = ["publisher", "ingress", "e2e"];

/// The RabbitMQ queues of a stage's topics ([`Backend::bus`]), tail streams included.
fn stage_queues(stage: &str) -> [String; 5] {
    [
        "triggers",
        "orders",
        "dead-letters",
        "orders.tail",
        "dead-letters.tail",
    ]
    .map(|q| format!("tcb-bench-{stage}.{q}"))
}

/// Deletes the RabbitMQ queues of a stage's topics.
async fn drop_stage(backend: &Backend, stage: &str) -> Result<(), CliError> {
    let queues = stage_queues(stage);
    drop_queues(backend, &queues.each_ref().map(String::as_str)).await
}

/// Deletes RabbitMQ queues a step filled and no one reads, once the step is done: a quorum queue
/// holds its messages in memory, and tens of thousands of them would slow the next step.
async fn drop_queues(backend: &Backend, queues: &[&str]) -> Result<(), CliError> {
    #[cfg(feature = "rabbitmq")]
    if backend.name == "rabbitmq" {
        super::baseline::delete_queues(&backend.at, queues).await?;
    }
    let _ = (backend, queues);
    Ok(())
}

fn port(p: &Proc) -> Result<u16, CliError> {
    p.port
        .ok_or_else(|| CliError::Io(format!("{} has no webhook listener", p.label)))
}
