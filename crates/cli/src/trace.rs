//! `trace`: "where is order X?" The journey of every trigger that matches an order id, a
//! purchase order number, a trigger id or a message id, from the journals of the bridge's
//! processes, with the trace id to open in the tracing UI.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, Utc};
use tcb_journal::{Entry, Query};

use crate::CliError;
use crate::config::Config;

#[derive(clap::Args)]
pub struct TraceArgs {
    /// A Tradecloud order id, a purchase order number, a trigger id or a message id (Tradecloud's
    /// `meta.messageId`, or the output's). Without it, every trigger seen in --since/--until.
    #[arg(default_value = "")]
    query: String,
    /// The bridge's config file: its `[journal] path` is read.
    #[arg(long, short, env = "TCB_CONFIG")]
    config: Option<PathBuf>,
    /// A journal file to read (repeatable), e.g. the ingress's and the worker's of one host.
    #[arg(long)]
    journal: Vec<PathBuf>,
    /// Only triggers seen at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only triggers seen at or before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// At most this many triggers (the latest).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// One JSON object per entry instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TraceArgs) -> Result<(), CliError> {
    let mut journals = args.journal.clone();
    if let Some(path) = &args.config {
        let config = Config::load(path)?;
        journals.extend(config.journal.searched());
    }
    if journals.is_empty() {
        return Err(CliError::Io(
            "no journal to read: give --config (with a [journal] path) or --journal FILE"
                .to_owned(),
        ));
    }
    if args.query.is_empty() && args.since.is_none() && args.until.is_none() {
        return Err(CliError::Io(
            "give what to look for (an order id, PO number, trigger id or message id) or a time window (--since, --until)"
                .to_owned(),
        ));
    }
    let entries = tcb_journal::search(
        &journals,
        &Query {
            text: args.query.clone(),
            since: args.since,
            until: args.until,
            limit: args.limit,
        },
    )?;
    if entries.is_empty() {
        return Err(CliError::NotFound(format!(
            "no trigger in {} matches {:?}",
            journals
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            args.query
        )));
    }
    if args.json {
        for e in &entries {
            println!(
                "{}",
                serde_json::to_string(e).map_err(|e| CliError::Io(e.to_string()))?
            );
        }
        return Ok(());
    }
    print!("{}", render(&entries));
    Ok(())
}

/// The journeys as text: per trigger a heading (ids, order, PO, trace) and a line per stage.
pub fn render(entries: &[Entry]) -> String {
    // Triggers in the order they first appear (oldest first).
    let mut order: Vec<&str> = Vec::new();
    let mut by_trigger: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        if !by_trigger.contains_key(e.trigger_id.as_str()) {
            order.push(&e.trigger_id);
        }
        by_trigger.entry(&e.trigger_id).or_default().push(e);
    }
    let mut out = String::new();
    for id in order {
        let journey = &by_trigger[id];
        let first =
            |f: fn(&Entry) -> Option<&str>| journey.iter().find_map(|e| f(e)).unwrap_or("-");
        out.push_str(&format!(
            "trigger {id}  order {}  PO {}  trace {}\n",
            first(|e| e.order_id.as_deref()),
            first(|e| e.po_number.as_deref()),
            first(|e| e.trace_id.as_deref()),
        ));
        for e in journey {
            let detail = match &e.detail {
                serde_json::Value::Object(map) => map
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => format!("{k}={s}"),
                        other => format!("{k}={other}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                other => other.to_string(),
            };
            let message = e
                .message_id
                .as_deref()
                .map(|m| format!(" message={m}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {}  {:<7}  {:<13}  {detail}{message}\n",
                e.at.to_rfc3339_opts(SecondsFormat::Millis, true),
                e.process,
                e.stage.as_str(),
            ));
        }
    }
    out
}
