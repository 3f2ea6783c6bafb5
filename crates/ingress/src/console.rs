//! The operator console on the admin listener (`[admin.console]`, off by default): live rates,
//! consumer lag and Tradecloud's health as small charts; the dead letters grouped by reason, each
//! with its payload and error history; replay of one, a selection or a reason group (only with
//! `replay = true`, after a confirmation); search of the order journal. One server-rendered page
//! with a little JavaScript (`console.html`) over a JSON API under `/console/api/`.
//!
//! Every route needs the console's credentials (HTTP Basic, as a browser asks for them). A
//! replay must come as `application/json` with an `X-Console: replay` header, which a page on
//! another origin cannot send without a CORS preflight this server never allows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tcb_bus::Bus;
use tcb_model::codec::{self, header as headers};

use crate::auth::{Authenticator, Credentials};

/// `[admin.console]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console at `/console` on the admin listener.
    pub enabled: bool,
    /// Who may open it: one credential or a list, as for webhooks (`kind = "basic"` for a
    /// browser). Required when enabled.
    pub auth: Option<Credentials>,
    /// Allow replaying dead letters from the console (read-only otherwise).
    pub replay: bool,
    /// The `/metrics` of the bridge's other processes (e.g. `http://worker:9090/metrics` where
    /// ingress and worker run apart): the console's charts add their series to this process's
    /// own. One that does not answer within 2 s is named on the page and left out.
    pub metrics_from: Vec<url::Url>,
}

impl ConsoleConfig {
    /// Every problem of the section, each naming its key (relative to `admin.console`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match (&self.auth, self.enabled) {
            (None, true) => problems.push((
                "auth".to_owned(),
                "the console needs credentials (kind = \"basic\" for a browser)".to_owned(),
            )),
            (Some(auth), _) => problems.extend(auth.validate()),
            (None, false) => {}
        }
        for (i, url) in self.metrics_from.iter().enumerate() {
            if !matches!(url.scheme(), "http" | "https")
                || !url.username().is_empty()
                || url.password().is_some()
            {
                problems.push((
                    format!("metrics_from[{i}]"),
                    "must be an http:// or https:// URL without credentials".to_owned(),
                ));
            }
        }
        problems
    }
}

/// What the console serves from.
pub struct Console {
    auth: Authenticator,
    replay: bool,
    bus: Bus,
    /// The journals to search (this process's, and any other on the host).
    journals: Vec<PathBuf>,
    /// Replays are journaled here.
    journal: Option<tcb_journal::Journal>,
    /// The other processes' `/metrics`, and the client that reads them.
    metrics_from: Vec<url::Url>,
    http: reqwest::Client,
}

impl Console {
    pub fn new(
        config: &ConsoleConfig,
        bus: Bus,
        journals: Vec<PathBuf>,
        journal: Option<tcb_journal::Journal>,
    ) -> Option<Arc<Self>> {
        let auth = config.auth.as_ref().filter(|_| config.enabled)?;
        Some(Arc::new(Self {
            auth: Authenticator::new(auth),
            replay: config.replay,
            bus,
            journals,
            journal,
            metrics_from: config.metrics_from.clone(),
            http: reqwest::Client::builder()
                .timeout(PEER_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }))
    }
}

impl Console {
    /// When each of `ids` was last replayed, from the journals (off the async threads; empty
    /// when they cannot be read).
    async fn replayed(&self, ids: Vec<String>) -> BTreeMap<String, String> {
        let journals = self.journals.clone();
        tokio::task::spawn_blocking(move || {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            tcb_journal::replayed(&journals, &ids).unwrap_or_default()
        })
        .await
        .unwrap_or_default()
    }
}

/// The console's routes, under `/console`.
pub(crate) fn routes(cfg: &mut web::ServiceConfig, console: Arc<Console>) {
    cfg.app_data(web::Data::from(console))
        .route("/console", web::get().to(page))
        .route("/console/api/overview", web::get().to(overview))
        .route("/console/api/dead-letters", web::get().to(dead_letters))
        .route("/console/api/journal", web::get().to(journal))
        .route("/console/api/replay", web::post().to(replay));
}

/// `None` when the request carries the console's credentials, else the answer to send.
async fn refused(req: &HttpRequest, console: &Console) -> Option<HttpResponse> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match console.auth.check(auth).await {
        Ok(()) => None,
        Err(refusal) => {
            let mut answer = HttpResponse::Unauthorized();
            answer.insert_header((
                header::WWW_AUTHENTICATE,
                "Basic realm=\"tradecloud-bridge console\", charset=\"UTF-8\"",
            ));
            Some(answer.json(json!({"error": "unauthorized", "reason": refusal.reason})))
        }
    }
}

const PAGE: &str = include_str!("console.html");

async fn page(req: HttpRequest, console: web::Data<Console>) -> HttpResponse {
    if let Some(no) = refused(&req, &console).await {
        return no;
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline' 'self'; img-src 'self' data:"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Cache-Control", "no-store"))
        .body(PAGE)
}

/// The series the charts draw, by short name: counters and gauges of `/metrics`.
const SERIES: [(&str, &str); 12] = [
    ("received", "tcb_ingress_requests_total"),
    ("acked", "tcb_ingress_requests_total{status=\"200\"}"),
    ("unavailable", "tcb_ingress_requests_total{status=\"503\"}"),
    ("refused", "tcb_ingress_refused_total"),
    (
        "delivered",
        "tcb_worker_triggers_total{outcome=\"delivered\"}",
    ),
    (
        "dead_lettered",
        "tcb_worker_triggers_total{outcome=\"dead_lettered\"}",
    ),
    ("lag", "tcb_worker_consumer_lag_messages"),
    ("held", "tcb_worker_held_triggers"),
    (
        "tradecloud_ok",
        "tcb_tradecloud_requests_total{status=\"2xx\"}",
    ),
    (
        "tradecloud_429",
        "tcb_tradecloud_requests_total{status=\"429\"}",
    ),
    (
        "tradecloud_failed",
        "tcb_tradecloud_requests_total{status=~\"4xx|5xx|error\"}",
    ),
    ("paused", "tcb_worker_paused"),
];

/// The sum of every sample of `metric` in Prometheus text whose labels include `labels` (each
/// `k="v"`, or `k=~"a|b"` for one of several values).
fn sum(text: &str, metric: &str, labels: &[(&str, Vec<&str>)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if name != metric {
                return None;
            }
            let set = rest.trim_end_matches('}');
            let ok = labels.iter().all(|(k, values)| {
                values
                    .iter()
                    .any(|v| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            });
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A series selector of [`SERIES`] evaluated on Prometheus text.
fn select(text: &str, selector: &str) -> f64 {
    let (metric, labels) = selector.split_once('{').unwrap_or((selector, ""));
    let labels: Vec<(&str, Vec<&str>)> = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|m| {
            if let Some((k, v)) = m.split_once("=~") {
                Some((k, v.trim_matches('"').split('|').collect()))
            } else {
                let (k, v) = m.split_once('=')?;
                Some((k, vec![v.trim_matches('"')]))
            }
        })
        .collect();
    sum(text, metric, &labels)
}

async fn overview(req: HttpRequest, console: web::Data<Console>) -> HttpResponse {
    if let Some(no) = refused(&req, &console).await {
        return no;
    }
    // This process's series and the other processes': every series is summed over all.
    let http = &console.http;
    let peers = futures::future::join_all(console.metrics_from.iter().map(|url| async move {
        let answer = http.get(url.clone()).send().await;
        let text = match answer.and_then(reqwest::Response::error_for_status) {
            Ok(r) => r.text().await,
            Err(e) => Err(e),
        };
        text.map_err(|e| {
            tracing::debug!(url = %url, error = %e, "console: a process's /metrics not read");
            url.to_string()
        })
    }))
    .await;
    let mut text = tcb_telemetry::metrics::render();
    let mut unreachable = Vec::new();
    for peer in peers {
        match peer {
            Ok(t) => {
                text.push('\n');
                text.push_str(&t);
            }
            Err(url) => unreachable.push(url),
        }
    }
    let values: BTreeMap<&str, f64> = SERIES
        .iter()
        .map(|(name, selector)| (*name, select(&text, selector)))
        .collect();
    let refused_by_reason: BTreeMap<&str, f64> = tcb_telemetry::metrics::REFUSAL_REASONS
        .iter()
        .map(|r| {
            (
                *r,
                sum(&text, "tcb_ingress_refused_total", &[("reason", vec![r])]),
            )
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "at": chrono::Utc::now(),
        "values": values,
        "refused_by_reason": refused_by_reason,
        "replay": console.replay,
        "unreachable": unreachable,
    }))
}

/// One dead letter as the console shows it.
#[derive(Debug, Serialize)]
struct Letter {
    trigger_id: String,
    key: String,
    kind: String,
    reason: String,
    attempts: Option<String>,
    first_error: Option<String>,
    first_failed_at: Option<String>,
    last_failed_at: Option<String>,
    source: Option<String>,
    position: String,
    /// The trigger as it was received (the envelope).
    payload: serde_json::Value,
    /// When it was replayed, from the journal.
    replayed_at: Option<String>,
}

impl Letter {
    /// When this letter was replayed: the trigger's last replay, if it came after the trigger
    /// was dead-lettered this time (a trigger dead-lettered again after a replay is a new letter,
    /// not a replayed one).
    fn replayed_since(&self, replays: &BTreeMap<String, String>) -> Option<String> {
        let replayed = replays.get(&self.trigger_id)?;
        let time = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
        match (
            time(replayed),
            self.last_failed_at.as_deref().and_then(time),
        ) {
            (Some(replayed_at), Some(failed_at)) if replayed_at < failed_at => None,
            _ => Some(replayed.clone()),
        }
    }
}

/// How long the console waits for another process's `/metrics`.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Most dead letters shown: the latest ones.
const MAX_LETTERS: usize = 2000;
/// Most dead letters read for one answer (the topic is a log: replayed letters stay on it).
const MAX_READ: usize = 100_000;
/// A tail that yields nothing for this long has shown the whole topic...
const IDLE: Duration = Duration::from_millis(400);
/// ... once it has started: the first message may take a group join (Kafka) to come.
const FIRST: Duration = Duration::from_secs(3);

/// The latest [`MAX_LETTERS`] of the dead-letter topic, read from its start (a tail: nothing is
/// acked), with the message of each.
async fn read_dead_letters(bus: &Bus) -> Result<Vec<(Letter, tcb_bus::Message)>, String> {
    let mut tail = bus
        .consumer(&bus.topics.dead_letters, None)
        .await
        .map_err(|e| e.chain())?;
    let mut out = std::collections::VecDeque::new();
    for read in 0..MAX_READ {
        let wait = if read == 0 { FIRST } else { IDLE };
        let delivery = match tokio::time::timeout(wait, tail.next()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(e.chain()),
            Ok(Ok(d)) => d,
        };
        let m = &delivery.message;
        let h = |name: &str| m.headers.get(name).cloned();
        let letter = Letter {
            trigger_id: codec::trigger_id(m).unwrap_or("").to_owned(),
            key: m.key.clone(),
            kind: h(headers::DEAD_LETTER_KIND).unwrap_or_else(|| "unknown".to_owned()),
            reason: h(headers::DEAD_LETTER_REASON).unwrap_or_default(),
            attempts: h(headers::DEAD_LETTER_ATTEMPTS),
            first_error: h(headers::DEAD_LETTER_FIRST_ERROR),
            first_failed_at: h(headers::DEAD_LETTER_FIRST_FAILED_AT),
            last_failed_at: h(headers::DEAD_LETTER_LAST_FAILED_AT),
            source: h(headers::DEAD_LETTER_SOURCE),
            position: delivery.position.clone(),
            payload: serde_json::from_slice(&m.payload)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&m.payload))),
            replayed_at: None,
        };
        if out.len() == MAX_LETTERS {
            out.pop_front();
        }
        out.push_back((letter, delivery.message));
    }
    Ok(out.into())
}

async fn dead_letters(req: HttpRequest, console: web::Data<Console>) -> HttpResponse {
    if let Some(no) = refused(&req, &console).await {
        return no;
    }
    let letters = match read_dead_letters(&console.bus).await {
        Ok(l) => l,
        Err(e) => {
            return HttpResponse::ServiceUnavailable()
                .json(json!({"error": "dead letters unreadable", "reason": e}));
        }
    };
    let replays = console
        .replayed(letters.iter().map(|(l, _)| l.trigger_id.clone()).collect())
        .await;
    let mut groups: BTreeMap<String, Vec<Letter>> = BTreeMap::new();
    for (mut letter, _) in letters {
        letter.replayed_at = letter.replayed_since(&replays);
        groups.entry(letter.kind.clone()).or_default().push(letter);
    }
    let groups: Vec<_> = groups
        .into_iter()
        .map(|(kind, letters)| json!({"kind": kind, "count": letters.len(), "letters": letters}))
        .collect();
    HttpResponse::Ok().json(json!({
        "topic": console.bus.topics.dead_letters,
        "groups": groups,
        "replay": console.replay,
    }))
}

#[derive(Deserialize)]
struct JournalQuery {
    /// An order id, PO number, trigger id or message id; empty: every trigger in the window.
    #[serde(default)]
    q: String,
    limit: Option<usize>,
    /// RFC 3339 times bounding when the triggers were seen.
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
}

async fn journal(req: HttpRequest, console: web::Data<Console>) -> HttpResponse {
    if let Some(no) = refused(&req, &console).await {
        return no;
    }
    // Read after the credentials: an anonymous caller learns nothing, not even a 400.
    let query = match web::Query::<JournalQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => {
            return HttpResponse::BadRequest()
                .json(json!({"error": "bad query", "reason": e.to_string()}));
        }
    };
    if query.q.trim().is_empty() && query.since.is_none() && query.until.is_none() {
        return HttpResponse::BadRequest()
            .json(json!({"error": "give q (an id or PO number) or a time window (since, until)"}));
    }
    let journals = console.journals.clone();
    let q = tcb_journal::Query {
        text: query.q.trim().to_owned(),
        limit: query.limit.unwrap_or(20).min(200),
        since: query.since,
        until: query.until,
    };
    match tokio::task::spawn_blocking(move || tcb_journal::search(&journals, &q)).await {
        Ok(Ok(entries)) => HttpResponse::Ok().json(json!({"entries": entries})),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable()
            .json(json!({"error": "journal unreadable", "reason": e.to_string()})),
        Err(_) => {
            HttpResponse::InternalServerError().json(json!({"error": "journal search failed"}))
        }
    }
}

#[derive(Deserialize)]
struct ReplayRequest {
    /// These dead letters (by trigger id)...
    #[serde(default)]
    trigger_ids: Vec<String>,
    /// ... or every dead letter of this kind.
    kind: Option<String>,
}

async fn replay(req: HttpRequest, console: web::Data<Console>, raw: web::Bytes) -> HttpResponse {
    if let Some(no) = refused(&req, &console).await {
        return no;
    }
    // Read after the credentials (an anonymous caller gets 401 whatever it sends); JSON only
    // (with X-Console, a request a page on another site cannot send without a preflight).
    let json_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    let body: ReplayRequest = match serde_json::from_slice(&raw) {
        Ok(b) if json_type => b,
        Ok(_) => {
            return HttpResponse::BadRequest().json(
                json!({"error": "bad_request", "reason": "send Content-Type: application/json"}),
            );
        }
        Err(e) => {
            return HttpResponse::BadRequest()
                .json(json!({"error": "bad_request", "reason": e.to_string()}));
        }
    };
    if !console.replay {
        return HttpResponse::Forbidden().json(json!({
            "error": "read_only",
            "reason": "replay is off: set [admin.console] replay = true"
        }));
    }
    if req.headers().get("x-console").and_then(|v| v.to_str().ok()) != Some("replay") {
        return HttpResponse::BadRequest()
            .json(json!({"error": "bad_request", "reason": "a replay needs the X-Console: replay header"}));
    }
    if body.trigger_ids.is_empty() && body.kind.is_none() {
        return HttpResponse::BadRequest()
            .json(json!({"error": "bad_request", "reason": "give trigger_ids or kind"}));
    }
    let letters = match read_dead_letters(&console.bus).await {
        Ok(l) => l,
        Err(e) => {
            return HttpResponse::ServiceUnavailable()
                .json(json!({"error": "dead letters unreadable", "reason": e}));
        }
    };
    // A trigger dead-lettered twice has two letters: the latest is the one to send.
    let mut latest: BTreeMap<String, (Letter, tcb_bus::Message)> = BTreeMap::new();
    for (letter, message) in letters {
        let wanted = body.trigger_ids.contains(&letter.trigger_id)
            || body.kind.as_deref() == Some(letter.kind.as_str());
        if wanted {
            latest.insert(letter.trigger_id.clone(), (letter, message));
        }
    }
    // "Replay all of a kind" leaves out what was replayed already (a letter stays on its topic);
    // a letter picked by its id is sent again if asked.
    let already = console.replayed(latest.keys().cloned().collect()).await;
    let publisher = console.bus.publisher();
    let mut done: Vec<String> = Vec::new();
    for (id, (letter, message)) in latest {
        if !body.trigger_ids.contains(&id) && letter.replayed_since(&already).is_some() {
            continue;
        }
        let at = chrono::Utc::now();
        let (revived, reason) = codec::revive(&message);
        if let Err(e) = publisher
            .publish(&console.bus.topics.triggers, revived)
            .await
        {
            return HttpResponse::ServiceUnavailable().json(json!({
                "error": "replay failed",
                "reason": e.chain(),
                "replayed": done,
            }));
        }
        tracing::info!(trigger_id = %letter.trigger_id, kind = %letter.kind, "dead letter replayed from the console");
        if let Some(j) = &console.journal {
            j.record(
                tcb_journal::Entry::new(letter.trigger_id.clone(), tcb_journal::Stage::Replayed)
                    .at(at)
                    .order(Some(&letter.key))
                    .detail(json!({"reason": reason, "to": console.bus.topics.triggers, "by": "console"})),
            );
        }
        done.push(letter.trigger_id);
    }
    if let Some(j) = console.journal.clone() {
        let _ = tokio::task::spawn_blocking(move || j.flush()).await;
    }
    HttpResponse::Ok().json(json!({"replayed": done}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_summed_by_their_labels() {
        let text = "# TYPE x counter\n\
            tcb_ingress_requests_total{status=\"200\"} 5\n\
            tcb_ingress_requests_total{status=\"503\"} 2\n\
            tcb_tradecloud_requests_total{kind=\"order\",status=\"5xx\"} 3\n\
            tcb_tradecloud_requests_total{kind=\"login\",status=\"4xx\"} 1\n\
            tcb_tradecloud_requests_total{kind=\"order\",status=\"2xx\"} 9\n";
        assert_eq!(select(text, "tcb_ingress_requests_total"), 7.0);
        assert_eq!(
            select(text, "tcb_ingress_requests_total{status=\"503\"}"),
            2.0
        );
        assert_eq!(
            select(
                text,
                "tcb_tradecloud_requests_total{status=~\"4xx|5xx|error\"}"
            ),
            4.0
        );
        assert_eq!(select(text, "tcb_worker_paused"), 0.0);
    }
}
