//! The configuration file: one TOML file, environment overrides, `${VAR}` expansion.
//!
//! * Environment overrides: `TCB_<SECTION>__<KEY>=value` sets `<section>.<key>` (double underscore
//!   between levels, any case), e.g. `TCB_INGRESS__LISTEN=0.0.0.0:8443`. Variables without a
//!   double underscore (`TCB_CONFIG`, `TCB_WEBHOOK_PASSWORD`) are not overrides. A value replacing a
//!   string stays a string; one replacing a number, boolean or list is read as a TOML value.
//! * `${VAR}` in any string value is replaced by the environment variable `VAR` (`$${` writes a
//!   literal `${`); an unset variable is an error naming the key. `${VAR:-default}` falls back to
//!   the default; `${file:/run/secrets/x}` is the file's text without its final line break (a
//!   mounted secret). Use them for secrets.
//! * Relative file names (certificate, key, CA files, the embedded database, `${file:...}`) are
//!   relative to the folder of the config file, not to the working directory: a config mounted
//!   at `/etc/tradecloud-bridge/bridge.toml` can name `tls/tls.crt` and `secrets/password`.
//! * Unknown keys are rejected, and every error names the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tcb_bus::BusConfig;
use tcb_ingress::IngressConfig;
use tcb_telemetry::TelemetryConfig;
use tcb_worker::WorkerConfig;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "TCB_";

/// The whole file. Each section belongs to the crate that uses it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bus: BusConfig,
    /// Needed by `run` and `ingress`.
    pub ingress: Option<IngressConfig>,
    /// Needed by `run` and `worker`.
    pub worker: Option<WorkerConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The order journal (`tradecloud-bridge trace`); off without `path`.
    #[serde(default)]
    pub journal: tcb_journal::JournalConfig,
}

/// `[admin]`: the listener for `/healthz` and `/readyz`, apart from the public one.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
    /// The operator console at `/console` (off by default; docs/console.md).
    #[serde(default)]
    pub console: tcb_ingress::console::ConsoleConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            console: tcb_ingress::console::ConsoleConfig::default(),
        }
    }
}

fn default_admin_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9090))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: environment variable {var} is not set")]
    MissingVar { key: String, var: String },
    #[error("{key}: unterminated ${{...}}")]
    Unterminated { key: String },
    #[error("{key}: cannot read the secret file {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment override {var}: {message}")]
    Override { var: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{}", .0.iter().map(|(k, m)| format!("{k}: {m}")).collect::<Vec<_>>().join("; "))]
    Problems(Vec<(String, String)>),
    #[error("{0}")]
    Missing(String),
}

impl Config {
    /// Reads `path`, applies the `TCB_*` environment and `${VAR}` expansion, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path, std::env::vars())
    }

    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        // Overrides of keys the file does not set are typed by guess (`3` a number, `true` a
        // boolean); when the guess is what fails, that key is retried as a string.
        let mut guessed = Vec::new();
        for (var, raw) in &env {
            if let Some(rest) = var.strip_prefix(ENV_PREFIX)
                && rest.contains("__")
                && override_key(&mut value, var, rest, raw)?
            {
                guessed.push((
                    rest.split("__")
                        .map(str::to_ascii_lowercase)
                        .collect::<Vec<_>>()
                        .join("."),
                    var,
                    raw,
                ));
            }
        }
        let mut value = toml::Value::Table(value);
        let dir = path.parent().unwrap_or(Path::new(""));
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        expand(
            &mut value,
            &mut Vec::new(),
            &Vars {
                lookup: &lookup,
                dir,
            },
        )?;
        loop {
            let error = match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
                Ok(mut config) => {
                    config.rebase(dir);
                    let problems = config.validate();
                    return if problems.is_empty() {
                        Ok(config)
                    } else {
                        Err(ConfigError::Problems(problems))
                    };
                }
                Err(e) => e,
            };
            let key = error.path().to_string();
            match guessed.iter().position(|(k, _, _)| *k == key) {
                Some(i) => {
                    let (_, var, raw) = guessed.swap_remove(i);
                    let rest = var.trim_start_matches(ENV_PREFIX);
                    if let toml::Value::Table(t) = &mut value {
                        set_string(t, rest, raw);
                    }
                }
                None => {
                    return Err(ConfigError::Invalid {
                        key: if key == "." {
                            "(top level)".to_owned()
                        } else {
                            key
                        },
                        message: error.into_inner().message().to_owned(),
                    });
                }
            }
        }
    }

    /// The effective configuration as TOML (defaults filled in, overrides and `${...}` applied),
    /// every secret written as `[redacted]`: `tradecloud-bridge config --print`.
    pub fn print(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Invalid {
            key: "(top level)".to_owned(),
            message: format!("cannot be printed: {e}"),
        })
    }

    /// Makes every relative file name relative to `dir` (the config file's folder).
    fn rebase(&mut self, dir: &Path) {
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        match &mut self.bus {
            #[cfg(feature = "embedded")]
            BusConfig::Embedded(e) => rebase(&mut e.path),
            #[cfg(feature = "kafka")]
            BusConfig::Kafka(k) => k.ssl_ca_location.iter_mut().for_each(rebase),
            #[cfg(feature = "rabbitmq")]
            BusConfig::Rabbitmq(_) => {}
        }
        if let Some(tcb_ingress::tls::TlsConfig::Files { cert, key, .. }) =
            self.ingress.as_mut().map(|i| &mut i.tls)
        {
            rebase(cert);
            rebase(key);
        }
        if let Some(w) = &mut self.worker {
            w.tradecloud.ca_file.iter_mut().for_each(&rebase);
            w.dedupe_path.iter_mut().for_each(&rebase);
        }
        self.journal.path.iter_mut().for_each(&rebase);
        self.journal.read_also.iter_mut().for_each(rebase);
    }

    /// Every problem of every section the file has, each with its full key. Each crate checks
    /// its own section; files (TLS, CA) are read by `check-config` and at start-up.
    pub fn validate(&self) -> Vec<(String, String)> {
        let within = |section: &str, problems: Vec<(String, String)>| {
            problems
                .into_iter()
                .map(|(key, message)| (format!("{section}.{key}"), message))
                .collect::<Vec<_>>()
        };
        let mut problems = within("bus", self.bus.validate());
        if let Some(ingress) = &self.ingress {
            problems.extend(within("ingress", ingress.validate()));
            if ingress.listen == self.admin.listen && ingress.listen.port() != 0 {
                problems.push((
                    "admin.listen".to_owned(),
                    "must differ from ingress.listen".to_owned(),
                ));
            }
        }
        if let Some(worker) = &self.worker {
            problems.extend(within("worker", worker.validate()));
        }
        #[cfg(feature = "kafka")]
        if let (BusConfig::Kafka(k), Some(i)) = (&self.bus, &self.ingress)
            && !k.fits_body(i.max_body_bytes)
        {
            problems.push((
                "bus.max_message_bytes".to_owned(),
                format!(
                    "{} cannot hold the largest body the ingress accepts (ingress.max_body_bytes \
                     {} plus up to {} of envelope): raise it or lower max_body_bytes",
                    k.max_message_bytes,
                    i.max_body_bytes,
                    tcb_bus::kafka::ENVELOPE_OVERHEAD_BYTES
                ),
            ));
        }
        problems.extend(within("telemetry", self.telemetry.validate()));
        problems.extend(within("journal", self.journal.validate()));
        problems.extend(within("admin.console", self.admin.console.validate()));
        problems
    }

    /// Settings that work but are probably not meant; `check-config` prints them, `run` logs them.
    pub fn warnings(&self) -> Vec<String> {
        #[allow(unused_mut)]
        let mut w = Vec::new();
        #[cfg(feature = "kafka")]
        if let BusConfig::Kafka(k) = &self.bus
            && k.replication_factor < 3
        {
            w.push(format!(
                "bus.replication_factor is {}: with fewer than 3 replicas the loss of a broker can \
                 lose triggers that were answered 200 (fine for development)",
                k.replication_factor
            ));
        }
        #[cfg(feature = "kafka")]
        if let (BusConfig::Kafka(k), Some(i)) = (&self.bus, &self.ingress)
            && k.message_timeout_ms > i.ack_timeout_ms
        {
            w.push(format!(
                "bus.message_timeout_ms ({}) exceeds ingress.ack_timeout_ms ({}): a publish the \
                 ingress gave up on (503) may still be delivered later, a duplicate when Tradecloud retries",
                k.message_timeout_ms, i.ack_timeout_ms
            ));
        }
        if let Some(worker) = &self.worker
            && worker.message_version == tcb_model::MessageVersion::V1
        {
            w.push(
                "worker.message_version is v1 (deprecated; the default when the key is missing): \
                 set message_version = \"v2\" once the ERP reads v2 (docs/message.md)"
                    .to_owned(),
            );
        }
        #[cfg(feature = "rabbitmq")]
        if let (BusConfig::Rabbitmq(_), Some(worker)) = (&self.bus, &self.worker)
            && worker.max_retry_seconds >= 1800
        {
            w.push(format!(
                "worker.max_retry_seconds ({}) reaches RabbitMQ's default consumer_timeout (30 min): \
                 a trigger retried that long is delivered again; raise consumer_timeout \
                 (docs/rabbitmq.md) or lower max_retry_seconds",
                worker.max_retry_seconds
            ));
        }
        #[cfg(feature = "rabbitmq")]
        if let BusConfig::Rabbitmq(r) = &self.bus
            && !r.single_active_consumer
            && self.worker.is_some()
        {
            w.push(
                "bus.single_active_consumer is false: with several workers, one order's triggers \
                 may be processed out of order (docs/rabbitmq.md)"
                    .to_owned(),
            );
        }
        w
    }

    pub fn ingress(&self) -> Result<&IngressConfig, ConfigError> {
        self.ingress
            .as_ref()
            .ok_or_else(|| ConfigError::Missing("the [ingress] section is missing".to_owned()))
    }

    pub fn worker(&self) -> Result<&WorkerConfig, ConfigError> {
        self.worker
            .as_ref()
            .ok_or_else(|| ConfigError::Missing("the [worker] section is missing".to_owned()))
    }
}

/// Sets the key an override names to the plain string `raw`.
fn set_string(root: &mut toml::Table, rest: &str, raw: &str) {
    let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut table = root;
    for p in parents {
        match table.get_mut(p).and_then(|v| v.as_table_mut()) {
            Some(t) => table = t,
            None => return,
        }
    }
    table.insert(last.clone(), toml::Value::String(raw.to_owned()));
}

/// Applies one `TCB_*` override; `true` when its type was guessed (the key was not in the file).
fn override_key(
    root: &mut toml::Table,
    var: &str,
    rest: &str,
    raw: &str,
) -> Result<bool, ConfigError> {
    let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Override {
            var: var.to_owned(),
            message: "empty key segment".to_owned(),
        });
    }
    let (last, parents) = path.split_last().ok_or_else(|| ConfigError::Override {
        var: var.to_owned(),
        message: "no key".to_owned(),
    })?;
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| ConfigError::Override {
            var: var.to_owned(),
            message: format!("{p} is not a table"),
        })?;
    }
    let as_toml = || {
        toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    let (value, guessed) = match table.get(last) {
        Some(toml::Value::String(_)) => (toml::Value::String(raw.to_owned()), false),
        Some(_) => (
            as_toml().ok_or_else(|| ConfigError::Override {
                var: var.to_owned(),
                message: "not a valid TOML value for this key".to_owned(),
            })?,
            false,
        ),
        None => match as_toml() {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
            ) => (v, true),
            _ => (toml::Value::String(raw.to_owned()), false),
        },
    };
    table.insert(last.clone(), value);
    Ok(guessed)
}

/// Where `${...}` finds its values: variables, and files relative to `dir`.
struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    dir: &'a Path,
}

fn expand(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    vars: &Vars<'_>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand_str(s, &path.join("."), vars)?;
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                path.push(k.clone());
                expand(v, path, vars)?;
                path.pop();
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                path.push(i.to_string());
                expand(v, path, vars)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// One `${...}`: `file:PATH` (the file's text without its final line break: a mounted secret),
/// `VAR:-default` (the variable, or the default when it is unset) or `VAR`.
fn substitute(inner: &str, key: &str, vars: &Vars<'_>) -> Result<String, ConfigError> {
    let lookup = vars.lookup;
    if let Some(path) = inner.strip_prefix("file:") {
        let path = vars.dir.join(path);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
            key: key.to_owned(),
            path,
            source,
        })?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        return Ok(text.strip_suffix('\r').unwrap_or(text).to_owned());
    }
    if let Some((name, default)) = inner.split_once(":-") {
        return Ok(lookup(name).unwrap_or_else(|| default.to_owned()));
    }
    lookup(inner).ok_or_else(|| ConfigError::MissingVar {
        key: key.to_owned(),
        var: inner.to_owned(),
    })
}

fn expand_str(s: &str, key: &str, vars: &Vars<'_>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or_else(|| ConfigError::Unterminated {
                key: key.to_owned(),
            })?;
            out.push_str(&substitute(&tail[..end], key, vars)?);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[bus]
backend = "embedded"
path = "/tmp/x.db"

[ingress]
listen = "127.0.0.1:8443"
tls = { mode = "off" }
auth = { kind = "basic", username = "tc", password = "${PW}" }

[worker]
message_version = "v2"

[worker.tradecloud]
base_url = "http://127.0.0.1:1"
email = "a@b.c"
password = "p"
"#;

    #[test]
    fn a_config_without_message_version_gets_v1_with_a_warning() {
        let v1 = BASE.replace("message_version = \"v2\"\n", "");
        let c = load(&v1, &[("PW", "webhook-password-0123456789")]).unwrap();
        assert_eq!(
            c.worker().unwrap().message_version,
            tcb_model::MessageVersion::V1
        );
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.starts_with("worker.message_version is v1 (deprecated")),
            "{:?}",
            c.warnings()
        );
        let c = load(BASE, &[("PW", "webhook-password-0123456789")]).unwrap();
        assert_eq!(
            c.worker().unwrap().message_version,
            tcb_model::MessageVersion::V2
        );
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let e = load(
            &BASE.replace("\"v2\"", "\"v3\""),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("v3") && e.contains("v1") && e.contains("v2"),
            "{e}"
        );
        // Fetching the order for events needs v2.
        let e = load(
            &v1.replace("[worker]\n", "[worker]\nenrichment = \"full-order\"\n"),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("worker.enrichment: fetching the order"), "{e}");
        let c = load(
            &BASE.replace("[worker]\n", "[worker]\nenrichment = \"when-partial\"\n"),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap();
        assert_eq!(
            c.worker().unwrap().enrichment,
            tcb_model::Enrichment::WhenPartial
        );
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Path::new("test.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn expands_variables_and_applies_overrides() {
        let c = load(
            BASE,
            &[
                ("PW", "pa$$word-0123456789ab"),
                ("TCB_INGRESS__MAX_BODY_BYTES", "1000"),
                ("TCB_WORKER__LANES", "3"),
            ],
        )
        .unwrap();
        let ingress = c.ingress().unwrap();
        assert_eq!(ingress.max_body_bytes, 1000);
        assert_eq!(c.worker().unwrap().lanes, 3);
        match &ingress.auth.0[0] {
            tcb_ingress::AuthConfig::Basic { password, .. } => {
                assert_eq!(
                    secrecy::ExposeSecret::expose_secret(password),
                    "pa$$word-0123456789ab"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(BASE, &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "ingress.auth.password: environment variable PW is not set"
        );
        let e = load(
            &BASE.replace("listen =", "lisen ="),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("ingress.lisen: unknown field `lisen`, expected one of"),
            "{e}"
        );
        let e = load(
            &BASE.replace("\"embedded\"", "\"kafkaa\""),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap_err()
        .to_string();
        #[cfg(all(feature = "kafka", feature = "rabbitmq"))]
        assert!(
            e.contains("bus.backend: unknown variant `kafkaa`, expected one of `embedded`, `rabbitmq`, `kafka`"),
            "{e}"
        );
        assert!(e.contains("bus.backend: unknown variant `kafkaa`"), "{e}");
        let e = load(
            &BASE.replace("kind = \"basic\"", "kind = \"digest\""),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ingress.auth.kind: unknown variant `digest`, expected one of `basic`, `bearer`, `oauth`"),
            "{e}"
        );
        let e = load(
            BASE,
            &[
                ("PW", "webhook-password-0123456789"),
                ("TCB_INGRESS__LISTEN", "nonsense"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("ingress.listen: invalid socket address"),
            "{e}"
        );
        let e = load(
            BASE,
            &[
                ("PW", "webhook-password-0123456789"),
                ("TCB_WORKER__LANES", "many"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("worker.lanes:"), "{e}");
        // a numeric-looking secret for a key the file does not set stays a string
        let c = load(
            BASE,
            &[
                ("PW", "webhook-password-0123456789"),
                ("TCB_WORKER__TRADECLOUD__LEGACY_PASSWORD", "12345"),
            ],
        )
        .unwrap();
        assert!(c.worker().unwrap().tradecloud.legacy_password.is_some());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = BASE
            .replace(
                "message_version = \"v2\"",
                "message_version = \"v2\"\nlanes = 0\nretry_max_ms = 0",
            )
            .replace(
                "password = \"p\"",
                "password = \"p\"\nmax_requests_per_second = 0",
            )
            .replace(
                "listen = \"127.0.0.1:8443\"",
                "listen = \"127.0.0.1:8443\"\npath = \"webhook/\"",
            );
        let e = load(&text, &[("PW", "webhook-password-0123456789")]).unwrap_err();
        let ConfigError::Problems(problems) = &e else {
            panic!("{e}")
        };
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "ingress.path",
                "worker.lanes",
                "worker.retry_max_ms",
                "worker.tradecloud.max_requests_per_second"
            ],
            "{e}"
        );
        let e = load(
            &BASE.replace("password = \"p\"", "password = \"\""),
            &[("PW", "")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ingress.auth.password: must be at least 16 bytes")
                && e.contains("worker.tradecloud.password: must not be empty"),
            "{e}"
        );
        let e = load(
            &BASE.replace(
                "path = \"/tmp/x.db\"",
                "path = \"/tmp/x.db\"\ntopics = { orders = \"same\", triggers = \"same\" }",
            ),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "bus.topics: triggers, orders and dead_letters must be three different topics"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_worker_only_file_needs_no_ingress_and_no_tls() {
        let worker_only = r#"
[bus]
backend = "embedded"
path = "/tmp/x.db"

[worker.tradecloud]
base_url = "https://api.accp.tradecloud1.com"
email = "a@b.c"
password = "p"

[telemetry]
log_level = "info,tcb_worker=debug"
"#;
        let c = load(worker_only, &[]).unwrap();
        assert!(c.ingress.is_none() && c.worker.is_some());
        let e = load(&worker_only.replace("info,", "info,[bad"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("telemetry.log_level:"), "{e}");
        let e = load(&worker_only.replace("https://api", "ftp://api"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("worker.tradecloud.base_url:"), "{e}");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn a_kafka_timeout_past_the_ack_timeout_is_warned_about() {
        let text = BASE.replace(
            "backend = \"embedded\"\npath = \"/tmp/x.db\"",
            "backend = \"kafka\"\nbootstrap_servers = \"k:9092\"\nmessage_timeout_ms = 9000",
        );
        let c = load(&text, &[("PW", "webhook-password-0123456789")]).unwrap();
        let timeout = |c: &Config| {
            c.warnings()
                .iter()
                .any(|w| w.contains("exceeds ingress.ack_timeout_ms (5000)"))
        };
        assert!(timeout(&c), "{:?}", c.warnings());
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.starts_with("bus.replication_factor is 1")),
            "{:?}",
            c.warnings()
        );
        let c = load(
            &text.replace("9000", "5000"),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap();
        assert!(!timeout(&c));
        let c = load(
            &text.replace("message_timeout_ms = 9000", "replication_factor = 3"),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        // The largest body must fit a message after encoding.
        let e = load(
            &text.replace("message_timeout_ms = 9000", "max_message_bytes = 1000000"),
            &[("PW", "webhook-password-0123456789")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("bus.max_message_bytes: 1000000 cannot hold the largest body"),
            "{e}"
        );
    }

    #[test]
    fn secrets_from_files_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "s3cret-from-a-file\n").unwrap();
        let lookup = |name: &str| (name == "SET").then(|| "set".to_owned());
        let lookup = &Vars {
            lookup: &lookup,
            dir: Path::new(""),
        };
        let file = format!("${{file:{}}}", secret.display());
        assert_eq!(
            expand_str(&file, "k", lookup).unwrap(),
            "s3cret-from-a-file"
        );
        assert_eq!(expand_str("${SET:-x}", "k", lookup).unwrap(), "set");
        assert_eq!(expand_str("${UNSET:-x}", "k", lookup).unwrap(), "x");
        assert_eq!(expand_str("a${UNSET:-}b", "k", lookup).unwrap(), "ab");
        let e = expand_str("${file:/nonexistent/pw}", "ingress.auth.password", lookup)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ingress.auth.password: cannot read the secret file /nonexistent/pw"),
            "{e}"
        );
        // Through a whole file: the password comes from the mounted secret.
        let c = load(&BASE.replace("${PW}", &file), &[]).unwrap();
        match &c.ingress().unwrap().auth.0[0] {
            tcb_ingress::AuthConfig::Basic { password, .. } => assert_eq!(
                secrecy::ExposeSecret::expose_secret(password),
                "s3cret-from-a-file"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[cfg(feature = "embedded")]
    #[test]
    fn relative_file_names_are_relative_to_the_config_folder() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc/tradecloud-bridge");
        std::fs::create_dir_all(etc.join("secrets")).unwrap();
        std::fs::write(
            etc.join("secrets/webhook-password"),
            "a-long-webhook-password\n",
        )
        .unwrap();
        let file = etc.join("bridge.toml");
        std::fs::write(
            &file,
            BASE.replace("/tmp/x.db", "data/bridge.db")
                .replace("${PW}", "${file:secrets/webhook-password}")
                .replace(
                    r#"tls = { mode = "off" }"#,
                    r#"tls = { mode = "files", cert = "tls/tls.crt", key = "/abs/tls.key" }"#,
                ) + "\n[journal]\npath = \"journal/ingress.db\"\nread_also = [\"journal/worker.db\", \"/abs/other.db\"]\n",
        )
        .unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(
            c.journal.searched(),
            [
                etc.join("journal/ingress.db"),
                etc.join("journal/worker.db"),
                PathBuf::from("/abs/other.db")
            ]
        );
        #[allow(irrefutable_let_patterns)] // with only the embedded backend built
        let BusConfig::Embedded(e) = &c.bus else {
            panic!("{:?}", c.bus)
        };
        assert_eq!(e.path, etc.join("data/bridge.db"));
        let ingress = c.ingress().unwrap();
        assert_eq!(
            ingress.tls,
            tcb_ingress::tls::TlsConfig::Files {
                cert: etc.join("tls/tls.crt"),
                key: PathBuf::from("/abs/tls.key"),
                reload_seconds: 10,
            }
        );
        match &ingress.auth.0[0] {
            tcb_ingress::AuthConfig::Basic { password, .. } => assert_eq!(
                secrecy::ExposeSecret::expose_secret(password),
                "a-long-webhook-password"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_printed_config_has_defaults_and_no_secret() {
        let text = BASE.replace("password = \"p\"", "password = \"tradecloud-secret\"")
            + "\n[telemetry.otlp]\nendpoint = \"http://collector:4318\"\n\
               headers = { \"x-api-key\" = \"otlp-secret-key\" }\n";
        let c = load(&text, &[("PW", "webhook-secret-0123456789")]).unwrap();
        let printed = c.print().unwrap();
        for secret in [
            "webhook-secret-0123456789",
            "tradecloud-secret",
            "otlp-secret-key",
        ] {
            assert!(!printed.contains(secret), "{secret} in\n{printed}");
        }
        assert_eq!(
            printed.matches(tcb_telemetry::redact::REDACTED).count(),
            3,
            "{printed}"
        );
        // Defaults the file does not set are shown, and the output is a config file again.
        assert!(
            printed.contains("max_requests_per_second = 10"),
            "{printed}"
        );
        let again = load(
            &printed.replace(tcb_telemetry::redact::REDACTED, "a-secret-0123456789"),
            &[],
        )
        .unwrap();
        assert_eq!(again.print().unwrap(), printed);
    }

    #[test]
    fn literal_dollar_and_escape() {
        let lookup = |_: &str| None;
        let lookup = &Vars {
            lookup: &lookup,
            dir: Path::new(""),
        };
        assert_eq!(expand_str("a$b$${c}", "k", lookup).unwrap(), "a$b${c}");
        assert!(matches!(
            expand_str("${oops", "k", lookup),
            Err(ConfigError::Unterminated { .. })
        ));
    }

    #[cfg(all(feature = "embedded", feature = "kafka", feature = "rabbitmq"))]
    #[test]
    fn the_example_configs_are_valid() {
        // The compose and Kubernetes configs are run as deployed by tests/deploy.py.
        for (file, backend) in [
            ("bridge.example.toml", "embedded"),
            ("bridge.rabbitmq.toml", "rabbitmq"),
            ("bridge.kafka.toml", "kafka"),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../deploy")
                .join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let env = [
                ("TCB_WEBHOOK_PASSWORD", "webhook-password-0123456789"),
                ("TRADECLOUD_PASSWORD", "y"),
                ("RABBITMQ_PASSWORD", "z"),
                ("KAFKA_PASSWORD", "k"),
            ];
            let c = load(&text, &env).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(c.ingress.is_some() && c.worker.is_some(), "{file}");
            assert_eq!(c.bus.backend_name(), backend);
        }
    }
}
