//! `gossamer query`, `gossamer delete` and `gossamer retention`: searches, counts and
//! aggregations, deletes, and a stream's retention, through a node's REST API.

use anyhow::{bail, Result};
use clap::Args;

use crate::client::rest::call;

#[derive(Args)]
pub struct QueryCmd {
    #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// desc (newest first) or asc.
    #[arg(long, default_value = "desc")]
    pub order: String,
    /// Order by keys instead of time: key[:asc|:desc],... (ts, id, stream, level,
    /// message, labels.NAME, fields.PATH or a name); missing values last, ties by id.
    #[arg(long, conflicts_with = "order")]
    pub sort: Option<String>,
    /// Print only the number of matching events.
    #[arg(long)]
    pub count: bool,
    /// Print events (or groups) as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Aggregate instead: count, sum, avg, min, max, p50, p90, p95, p99.
    #[arg(long)]
    pub agg: Option<String>,
    /// The numeric field to aggregate.
    #[arg(long)]
    pub field: Option<String>,
    /// Group by these labels (comma-separated; `stream` and `level` work too).
    #[arg(long)]
    pub by: Option<String>,
    /// Time bucket width: 30s, 1m, 1h, 1d.
    #[arg(long)]
    pub bucket: Option<String>,
    /// The query, in the text syntax (empty matches everything).
    #[arg(default_value = "")]
    pub query: String,
}

/// Runs `gossamer query`.
pub fn run(a: QueryCmd) -> Result<()> {
    let args = crate::client::query::QueryArgs {
        server: a.server,
        q: a.query,
        from: a.from,
        to: a.to,
        limit: a.limit,
        order: a.order,
        sort: a.sort,
        count: a.count,
        json: a.json,
        agg: a.agg,
        field: a.field,
        by: a.by,
        bucket: a.bucket,
    };
    crate::client::query::query(args, &mut std::io::stdout().lock())
}

#[derive(Args)]
pub struct DeleteCmd {
    #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Delete the event with this id.
    #[arg(long, conflicts_with = "query")]
    pub id: Option<String>,
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
    /// Delete every event matching this query (`stream:*` means everything).
    pub query: Option<String>,
}

pub fn delete(a: DeleteCmd) -> Result<()> {
    let base = a.server.trim_end_matches('/');
    let answer = match (a.id, a.query) {
        (Some(id), _) => call(ureq::delete(&format!("{base}/api/v1/events/{id}")), None)?,
        (None, Some(q)) => call(
            ureq::post(&format!("{base}/api/v1/delete")),
            Some(serde_json::json!({ "q": q, "from": a.from, "to": a.to })),
        )?,
        (None, None) => bail!("say what to delete: --id UUID, or a query"),
    };
    println!("deleted {}", answer["deleted"]);
    Ok(())
}

#[derive(Args)]
pub struct RetentionCmd {
    #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    pub stream: String,
    /// 7d, 12h, 90m, or `off`.
    pub max_age: String,
}

pub fn retention(a: RetentionCmd) -> Result<()> {
    let base = a.server.trim_end_matches('/');
    let max_age = if a.max_age == "off" { serde_json::Value::Null } else { serde_json::Value::String(a.max_age) };
    let answer = call(
        ureq::put(&format!("{base}/api/v1/streams/{}/retention", a.stream)),
        Some(serde_json::json!({ "max_age": max_age })),
    )?;
    println!("{}: retention {}, {} events deleted now", answer["stream"].as_str().unwrap_or(""), answer["max_age"], answer["deleted"]);
    Ok(())
}
