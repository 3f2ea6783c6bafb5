//! A real OpenTelemetry collector for tests: rotel's `rotel-agent` (installed by
//! `scripts/install.sh` from the PyPI package `rotel`), with OTLP gRPC and HTTP receivers and a
//! detailed debug log of every span it receives, which [`Rotel::spans`] parses.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Rotel {
    child: Child,
    pub grpc: String,
    pub http: String,
    out: Arc<Mutex<Vec<String>>>,
}

/// One span as the collector received it.
#[derive(Debug, Clone, Default)]
pub struct Span {
    pub service: String,
    pub trace_id: String,
    pub parent_id: String,
    pub id: String,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
}

impl Span {
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

fn binary() -> String {
    std::env::var("ROTEL_AGENT").unwrap_or_else(|_| "rotel-agent".to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Rotel {
    pub fn start(dir: &std::path::Path) -> Self {
        let (grpc, http) = (free_port(), free_port());
        let mut child = Command::new(binary())
            .args(["start", "--exporter", "blackhole", "--debug-log", "traces"])
            .args([
                "--debug-log-verbosity",
                "detailed",
                "--batch-timeout",
                "100ms",
            ])
            .arg("--otlp-grpc-endpoint")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{http}"))
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("rotel-agent does not start ({e}): run scripts/install.sh"));
        let out: Arc<Mutex<Vec<String>>> = Arc::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    out.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [grpc, http] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "rotel-agent exited with {status}: {:#?}",
                        out.lock().unwrap()
                    );
                }
                assert!(Instant::now() < deadline, "rotel-agent does not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self {
            child,
            grpc: format!("http://127.0.0.1:{grpc}"),
            http: format!("http://127.0.0.1:{http}"),
            out,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        parse(&self.out.lock().unwrap())
    }

    /// Waits until `done` holds for the spans received, or panics with them at the deadline.
    pub async fn wait_for(&self, within: Duration, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the collector did not receive the expected spans; it has: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `-> key: Type(value)` / `Name : value` lines.
fn typed_value(v: &str) -> String {
    let v = v.trim();
    match (v.find('('), v.strip_suffix(')')) {
        (Some(open), Some(inner)) => inner[open + 1..].to_owned(),
        _ => v.to_owned(),
    }
}

/// Parses rotel's detailed debug log (the OpenTelemetry collector's debug exporter layout).
fn parse(lines: &[String]) -> Vec<Span> {
    #[derive(PartialEq)]
    enum Section {
        Resource,
        Attributes,
        Links,
        Other,
    }
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<Span> = None;
    let mut section = Section::Other;
    let mut link_trace = String::new();
    for raw in lines {
        let line = raw.trim();
        if line.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            service.clear();
            section = Section::Other;
        } else if line == "Resource attributes:" {
            section = Section::Resource;
        } else if line.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(Span {
                service: service.clone(),
                ..Span::default()
            });
            section = Section::Other;
        } else if line == "Attributes:" {
            section = Section::Attributes;
        } else if line.starts_with("Links:") || line.starts_with("SpanLink #") {
            section = Section::Links;
        } else if line.starts_with("Events:") || line.starts_with("SpanEvent #") {
            section = Section::Other;
        } else if let Some(rest) = line.strip_prefix("-> ") {
            let Some((k, v)) = rest.split_once(": ") else {
                continue;
            };
            match (&section, current.as_mut()) {
                (Section::Resource, _) if k == "service.name" => service = typed_value(v),
                (Section::Attributes, Some(span)) => {
                    span.attributes.insert(k.to_owned(), typed_value(v));
                }
                (Section::Links, Some(span)) => match k {
                    "Trace ID" => link_trace = v.trim().to_owned(),
                    "ID" => span.links.push((link_trace.clone(), v.trim().to_owned())),
                    _ => {}
                },
                _ => {}
            }
        } else if let (Some(span), Some((k, v))) = (current.as_mut(), line.split_once(':')) {
            let v = v.trim().to_owned();
            match (k.trim(), &section) {
                ("Trace ID", Section::Links) => link_trace = v,
                ("ID", Section::Links) => span.links.push((link_trace.clone(), v)),
                ("Trace ID", _) => span.trace_id = v,
                ("Parent ID", _) => span.parent_id = v,
                ("ID", _) => span.id = v,
                ("Name", _) => span.name = v,
                ("Kind", _) => span.kind = v,
                ("Status code", _) => span.status = v,
                _ => {}
            }
        }
    }
    spans.extend(current);
    spans
}
