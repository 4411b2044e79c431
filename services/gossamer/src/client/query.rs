//! Searches, counts and aggregations against a node's REST API, printed for a terminal
//! or as JSON lines.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::client::rest::with_token;

pub struct QueryArgs {
    pub server: String,
    pub q: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: usize,
    pub order: String,
    /// Keys to order by instead of time (`fields.latency_ms:desc,ts`).
    pub sort: Option<String>,
    pub count: bool,
    pub json: bool,
    /// An aggregation function (count, sum, avg, min, max, pNN) instead of events.
    pub agg: Option<String>,
    pub field: Option<String>,
    pub by: Option<String>,
    pub bucket: Option<String>,
}

/// One event as a line: time, level, stream, message.
pub fn print_event(out: &mut impl std::io::Write, e: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {:5} {} {}",
        e["ts"].as_str().unwrap_or(""),
        e["level"].as_str().unwrap_or(""),
        e["stream"].as_str().unwrap_or(""),
        e["message"].as_str().unwrap_or("")
    )
}

/// Runs a search, a count or an aggregation against a node and prints the answer.
pub fn query(args: QueryArgs, out: &mut impl std::io::Write) -> Result<()> {
    let base = args.server.trim_end_matches('/');
    let path = match (&args.agg, args.count) {
        (Some(_), _) => "aggregate",
        (None, true) => "count",
        (None, false) => "search",
    };
    let mut req = with_token(ureq::get(&format!("{base}/api/v1/{path}")).query("q", &args.q));
    if let Some(f) = &args.agg {
        req = req.query("fn", f);
        for (k, v) in [("field", &args.field), ("by", &args.by), ("bucket", &args.bucket)] {
            if let Some(v) = v {
                req = req.query(k, v);
            }
        }
    }
    if let Some(f) = &args.from {
        req = req.query("from", f);
    }
    if let Some(t) = &args.to {
        req = req.query("to", t);
    }
    if !args.count && args.agg.is_none() {
        req = req.query("limit", &args.limit.to_string());
        req = match &args.sort {
            Some(sort) => req.query("sort", sort),
            None => req.query("order", &args.order),
        };
    }
    let body: Value = match req.call() {
        Ok(r) => r.into_json().context("reading the answer")?,
        Err(ureq::Error::Status(code, r)) => {
            let body: Value = r.into_json().unwrap_or_default();
            bail!("{} ({code})", body["error"].as_str().unwrap_or("request failed"));
        }
        Err(e) => bail!("cannot reach {base}: {e}"),
    };
    if args.count && args.agg.is_none() {
        writeln!(out, "{}", body["count"])?;
        return Ok(());
    }
    if args.agg.is_some() {
        for g in body["groups"].as_array().into_iter().flatten() {
            if args.json {
                writeln!(out, "{g}")?;
                continue;
            }
            let mut cols = Vec::new();
            if let Some(b) = g["bucket"].as_str() {
                cols.push(b.to_string());
            }
            for (k, v) in g["key"].as_object().into_iter().flatten() {
                cols.push(format!("{k}={}", v.as_str().unwrap_or("-")));
            }
            cols.push(g["value"].to_string());
            writeln!(out, "{}", cols.join("\t"))?;
        }
        return Ok(());
    }
    for e in body["events"].as_array().into_iter().flatten() {
        if args.json {
            writeln!(out, "{e}")?;
        } else {
            print_event(out, e)?;
        }
    }
    if let Some(c) = body["next_cursor"].as_str() {
        if !args.json {
            writeln!(out, "(more: --limit to see more; cursor {c})")?;
        }
    }
    Ok(())
}
