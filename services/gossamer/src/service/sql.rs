//! SQL through the query service: `gossamer_sql` plans and runs the query; the table's
//! pages come from [`queries::search`], so a SQL query sees every shard once (the same
//! replica choice and missing shards as the native API), whichever node runs it.

use std::sync::Arc;
use std::time::Duration;


use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use futures::StreamExt;
use gossamer_schemas::api::{AggregateRequest, QueryRequest};
use gossamer_sql::{Agg, Group, Grouped, Limits, Missing, Page, Scan, SqlError};

use crate::error::ServiceError;
use crate::handle::NodeHandle;
use crate::service::query as queries;

/// The most events per page a SQL scan asks of the query service.
const PAGE: usize = 8_000;

/// How long one SQL query may run, planning and every row included
/// (`query_limits.sql_timeout_secs`).
pub fn timeout(node: &NodeHandle) -> Duration {
    Duration::from_secs(node.cfg.query_limits.sql_timeout_secs.max(1))
}

/// The error of a query that ran past [`timeout`].
pub fn timed_out(limit: Duration) -> ServiceError {
    ServiceError::Timeout(format!("the SQL query ran past query_limits.sql_timeout_secs ({} s)", limit.as_secs()))
}

/// The cluster's events, a page at a time.
pub struct NodeSource(pub Arc<NodeHandle>);

impl std::fmt::Debug for NodeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSource")
    }
}

#[async_trait]
impl gossamer_sql::Source for NodeSource {
    async fn page(&self, scan: &Scan, cursor: Option<String>, size: usize) -> Result<Page, String> {
        let max = self.0.cfg.query_limits.max_page.clamp(1, PAGE).min(size.max(1));
        let req = QueryRequest {
            q: scan.query.clone(),
            from: scan.from.map(|v| v.to_string()),
            to: scan.to.map(|v| v.to_string()),
            limit: Some(max),
            order: None,
            cursor,
            sort: None,
        };
        let page = queries::search(&self.0, req).await.map_err(|e| e.to_string())?;
        Ok(Page { events: page.events, missing: page.missing, next: page.next_cursor })
    }

    async fn aggregate(&self, scan: &Scan, agg: &Agg) -> Result<Grouped, String> {
        let from = scan.from.map(|v| v.to_string());
        let to = scan.to.map(|v| v.to_string());
        if agg.func == "count" && agg.by.is_empty() && agg.bucket_ns.is_none() {
            // A bare count is the count route's (from the index where it can).
            let req = QueryRequest { q: scan.query.clone(), from, to, limit: None, order: None, cursor: None, sort: None };
            let got = queries::count(&self.0, req).await.map_err(|e| e.to_string())?;
            let group = Group { key: Vec::new(), bucket: None, value: Some(got.count as f64) };
            return Ok(Grouped { groups: vec![group], missing: got.missing });
        }
        let req = AggregateRequest {
            q: scan.query.clone(),
            from,
            to,
            func: agg.func.clone(),
            field: agg.field.clone(),
            by: (!agg.by.is_empty()).then(|| agg.by.join(",")),
            bucket: agg.bucket_ns.map(|ns| format!("{ns}ns")),
        };
        let got = queries::aggregate_all_groups(&self.0, req).await.map_err(|e| e.to_string())?;
        Ok(Grouped { groups: gossamer_sql::groups_of(&got.groups, agg)?, missing: got.missing })
    }

    fn shards(&self) -> u32 {
        self.0.cfg.shards
    }
}

/// One batch as NDJSON lines (explicit nulls, so every row has every column).
pub fn ndjson(batch: &datafusion::arrow::array::RecordBatch) -> Result<Vec<u8>, ServiceError> {
    use datafusion::arrow::json::{writer::LineDelimited, WriterBuilder};
    let internal = |e: datafusion::arrow::error::ArrowError| ServiceError::Internal(e.to_string());
    let mut w = WriterBuilder::new().with_explicit_nulls(true).build::<_, LineDelimited>(Vec::new());
    w.write(batch).map_err(internal)?;
    w.finish().map_err(internal)?;
    Ok(w.into_inner())
}

/// The whole answer of `sql` as one JSON value (`columns`, `rows`, `partial`,
/// `missing_shards`), for the doors that cannot stream: an answer over `max_bytes` of
/// rows is refused, naming the streaming route.
pub async fn collect(node: &Arc<NodeHandle>, sql: &str, max_bytes: usize) -> Result<serde_json::Value, ServiceError> {
    let work = async {
        let mut running = start(node, sql).await?;
        let columns: Vec<String> = running.stream.schema().fields().iter().map(|f| f.name().clone()).collect();
        let (mut rows, mut bytes) = (Vec::new(), 0usize);
        let mut next = running.first.take().map(Ok);
        loop {
            let batch = match next.take() {
                Some(b) => b,
                None => match running.stream.next().await {
                    Some(b) => b,
                    None => break,
                },
            };
            let batch = batch.map_err(|e| service_error(gossamer_sql::classify(e)))?;
            let lines = ndjson(&batch)?;
            bytes += lines.len();
            if bytes > max_bytes {
                return Err(ServiceError::BadRequest(format!(
                    "the answer is over {max_bytes} bytes: add a LIMIT, or use POST /api/v1/sql, which streams it"
                )));
            }
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                rows.push(serde_json::from_slice::<serde_json::Value>(line).map_err(|e| ServiceError::Internal(e.to_string()))?);
            }
        }
        let missing = running.missing.shards();
        Ok(serde_json::json!({"columns": columns, "rows": rows, "partial": !missing.is_empty(), "missing_shards": missing}))
    };
    let limit = timeout(node);
    tokio::time::timeout(limit, work).await.map_err(|_| timed_out(limit))?
}

/// A planned query: its result columns and batches, and the shards found missing.
pub struct Running {
    pub stream: datafusion::execution::SendableRecordBatchStream,
    pub missing: Missing,
    /// The first batch, read before answering so a query that fails at once is a 400.
    pub first: Option<RecordBatch>,
}

impl Running {
    /// The next batch (the first, read at the start, included) within `limit` of
    /// `started`; past it, the time limit's error.
    pub async fn next_batch(&mut self, started: std::time::Instant, limit: Duration) -> Option<Result<RecordBatch, ServiceError>> {
        if let Some(b) = self.first.take() {
            return Some(Ok(b));
        }
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), self.stream.next()).await {
            Ok(next) => next.map(|r| r.map_err(|e| service_error(gossamer_sql::classify(e)))),
            Err(_) => Some(Err(timed_out(limit))),
        }
    }
}

fn service_error(e: SqlError) -> ServiceError {
    match e {
        SqlError::Bad(m) => ServiceError::BadRequest(m),
        SqlError::Internal(m) => ServiceError::Internal(m),
    }
}

/// A planned query, not yet run.
pub struct Planned {
    pub frame: datafusion::dataframe::DataFrame,
    pub missing: Missing,
}

/// Plans `sql` over the cluster's events with this node's limits.
pub async fn plan(node: &Arc<NodeHandle>, sql: &str) -> Result<Planned, ServiceError> {
    let q = &node.cfg.query_limits;
    let limits = Limits { max_len: q.max_sql_bytes, memory_bytes: q.sql_memory_bytes };
    let source = Arc::new(NodeSource(node.clone()));
    let (frame, missing) = gossamer_sql::plan(source, sql, &limits).await.map_err(service_error)?;
    Ok(Planned { frame, missing })
}

/// Starts a planned query, reading its first batch.
pub async fn run(planned: Planned) -> Result<Running, ServiceError> {
    let mut stream = planned.frame.execute_stream().await.map_err(|e| service_error(gossamer_sql::classify(e)))?;
    let first = match stream.next().await {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return Err(service_error(gossamer_sql::classify(e))),
        None => None,
    };
    Ok(Running { stream, missing: planned.missing, first })
}

/// Plans and starts `sql`, reading its first batch.
pub async fn start(node: &Arc<NodeHandle>, sql: &str) -> Result<Running, ServiceError> {
    run(plan(node, sql).await?).await
}
