//! `POST /api/v1/sql`: a SQL query over the table `logs`, its rows streamed as they
//! come (JSON, NDJSON or CSV), never built whole in memory.
//!
//! JSON is `{"columns": [...], "rows": [{...}, ...], "partial": bool, "missing_shards":
//! [...]}`, with `partial` at the end, once every scan is done. NDJSON and CSV have no
//! place for it: when shards turn out to be missing, their transfer is cut short with
//! an error rather than end looking complete.

use std::time::Instant;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use futures::StreamExt;
use gossamer_schemas::api::ErrorBody;

use crate::error::ServiceError;
use crate::rest::common::Node;
use crate::rest::error::ApiError;
use crate::service::sql::{self, ndjson, Running};

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(sql_query))]
pub struct Api;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    sql: String,
    format: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    Csv,
}

impl Format {
    fn parse(s: Option<&str>) -> Result<Self, ServiceError> {
        match s.unwrap_or("json") {
            "json" => Ok(Format::Json),
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            other => Err(ServiceError::BadRequest(format!("`format` must be json, ndjson or csv, got {other:?}"))),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// One batch in the chosen format: `rows_before` says whether rows came before it (a
/// JSON comma), `header` whether it is the first (CSV's header).
fn render(batch: &RecordBatch, format: Format, rows_before: bool, header: bool) -> Result<Vec<u8>, ServiceError> {
    match format {
        Format::Ndjson => ndjson(batch),
        Format::Json => {
            let lines = ndjson(batch)?;
            let mut out = Vec::with_capacity(lines.len() + batch.num_rows());
            for (i, line) in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
                if rows_before || i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(line);
            }
            Ok(out)
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(header).build(Vec::new());
            w.write(batch).map_err(internal)?;
            Ok(w.into_inner())
        }
    }
}

struct Rows {
    running: Running,
    format: Format,
    rows: u64,
    batches: u64,
    started: Instant,
    limit: std::time::Duration,
    done: bool,
}

impl Rows {
    /// What follows the last row: the JSON's end, with whether shards were missing.
    fn trailer(&self) -> Result<Vec<u8>, ServiceError> {
        let missing = self.running.missing.shards();
        match self.format {
            Format::Json => Ok(format!("],\"partial\":{},\"missing_shards\":{}}}\n", !missing.is_empty(), serde_json::json!(missing)).into_bytes()),
            _ if !missing.is_empty() => Err(ServiceError::ShardsMissing {
                message: format!("shards {missing:?} have no live replica: the answer would lack their events"),
                shards: missing,
            }),
            _ => Ok(Vec::new()),
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/sql",
    tag = "query",
    summary = "A SQL query over the table `logs`, its rows streamed",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"sql\": \"SELECT level, count(*) FROM logs GROUP BY level\", \"format\": \"json\" (the default), \"ndjson\" or \"csv\"}. Columns of logs: id, ts, stream, level, message, labels (labels['key']), fields (JSON text); match(message, 'words') and phrase(message, 'two words') search the message's tokens"),
    responses(
        (status = 200, description = "The rows: JSON {columns, rows, partial, missing_shards}, NDJSON or CSV", body = serde_json::Value),
        (status = 400, description = "Bad SQL (the error names the position or the column), a statement that is not a query, or a bad body", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 503, description = "The query ran past its time limit (query_limits.sql_timeout_secs)", body = ErrorBody),
    ),
)]
pub async fn sql_query(node: Node, body: web::Json<SqlRequest>) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    let format = Format::parse(req.format.as_deref())?;
    let node = node.get_ref().clone();
    let started = Instant::now();
    let limit = sql::timeout(&node);
    let running = tokio::time::timeout(limit, sql::start(&node, &req.sql)).await.map_err(|_| sql::timed_out(limit))??;
    let columns: Vec<String> = running.stream.schema().fields().iter().map(|f| f.name().clone()).collect();
    let head = match format {
        Format::Json => format!("{{\"columns\":{},\"rows\":[", serde_json::json!(columns)).into_bytes(),
        _ => Vec::new(),
    };
    let rows = Rows { running, format, rows: 0, batches: 0, started, limit, done: false };
    let body = futures::stream::unfold(rows, |mut st| async move {
        if st.done {
            return None;
        }
        let next = match st.running.first.take() {
            Some(b) => Some(Ok(b)),
            None => {
                let left = st.limit.saturating_sub(st.started.elapsed());
                match tokio::time::timeout(left, st.running.stream.next()).await {
                    Ok(n) => n,
                    Err(_) => Some(Err(datafusion::error::DataFusionError::External(sql::timed_out(st.limit).to_string().into()))),
                }
            }
        };
        let chunk = match next {
            Some(Ok(batch)) => {
                // NDJSON and CSV cannot say "partial" at the end: stop at once instead.
                let missing = st.running.missing.shards();
                if st.format != Format::Json && !missing.is_empty() {
                    st.done = true;
                    Err(ServiceError::ShardsMissing { message: format!("shards {missing:?} have no live replica"), shards: missing })
                } else {
                    let out = render(&batch, st.format, st.rows > 0, st.batches == 0);
                    st.rows += batch.num_rows() as u64;
                    st.batches += 1;
                    out
                }
            }
            Some(Err(e)) => {
                st.done = true;
                Err(ServiceError::Internal(format!("the SQL query failed after {} rows: {e}", st.rows)))
            }
            None => {
                st.done = true;
                st.trailer()
            }
        };
        match chunk {
            Ok(bytes) => Some((Ok::<_, actix_web::Error>(Bytes::from(bytes)), st)),
            Err(e) => {
                tracing::warn!(error = %e, "sql-answer-cut-short");
                Some((Err(actix_web::error::ErrorInternalServerError(e.to_string())), st))
            }
        }
    });
    let body = futures::stream::once(async move { Ok::<_, actix_web::Error>(Bytes::from(head)) }).chain(body);
    Ok(HttpResponse::Ok().content_type(format.content_type()).streaming(body))
}
