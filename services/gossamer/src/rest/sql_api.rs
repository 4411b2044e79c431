//! `POST /api/v1/sql`: a SQL query over the table `logs`, its rows streamed as they
//! come (JSON, NDJSON, CSV or the Arrow IPC stream format), never built whole in memory.
//!
//! JSON is `{"columns": [...], "rows": [{...}, ...], "partial": bool, "missing_shards":
//! [...]}`, with `partial` at the end, once every scan is done. NDJSON, CSV and Arrow have no
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
    /// The Arrow IPC stream format: the schema, then a message per batch.
    Arrow,
}

impl Format {
    fn parse(s: Option<&str>) -> Result<Self, ServiceError> {
        match s.unwrap_or("json") {
            "json" => Ok(Format::Json),
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            "arrow" => Ok(Format::Arrow),
            other => Err(ServiceError::BadRequest(format!("`format` must be json, ndjson, csv or arrow, got {other:?}"))),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

type ArrowWriter = datafusion::arrow::ipc::writer::StreamWriter<Vec<u8>>;

/// One batch in the chosen format: `rows_before` says whether rows came before it (a
/// JSON comma), `header` whether it is the first (CSV's header); Arrow's goes through
/// the answer's one stream writer.
fn render(batch: &RecordBatch, format: Format, rows_before: bool, header: bool, arrow: Option<&mut ArrowWriter>) -> Result<Vec<u8>, ServiceError> {
    match format {
        Format::Arrow => {
            let w = arrow.ok_or_else(|| internal("no Arrow writer"))?;
            w.write(batch).map_err(internal)?;
            Ok(std::mem::take(w.get_mut()))
        }
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

/// The most bytes of an answer sent whole; a longer one streams.
const WHOLE: usize = 256 * 1024;

struct Rows {
    running: Running,
    format: Format,
    arrow: Option<ArrowWriter>,
    rows: u64,
    batches: u64,
    started: Instant,
    limit: std::time::Duration,
    done: bool,
}

impl Rows {
    /// The next piece of the answer: a batch's rows, then the end; `None` once it is all
    /// out. NDJSON, CSV and Arrow cannot say "partial" at the end, so they stop at the
    /// first batch read with shards missing.
    async fn step(&mut self) -> Result<Option<Vec<u8>>, ServiceError> {
        if self.done {
            return Ok(None);
        }
        let next = self.running.next_batch(self.started, self.limit).await;
        let out = match next {
            Some(Ok(batch)) => {
                let missing = self.running.missing.shards();
                if self.format != Format::Json && !missing.is_empty() {
                    Err(ServiceError::ShardsMissing { message: format!("shards {missing:?} have no live replica"), shards: missing })
                } else {
                    let out = render(&batch, self.format, self.rows > 0, self.batches == 0, self.arrow.as_mut());
                    self.rows += batch.num_rows() as u64;
                    self.batches += 1;
                    out
                }
            }
            Some(Err(e)) => Err(e),
            None => {
                self.done = true;
                self.trailer()
            }
        };
        if out.is_err() {
            self.done = true;
        }
        out.map(Some)
    }

    /// What follows the last row: the JSON's end, with whether shards were missing.
    fn trailer(&mut self) -> Result<Vec<u8>, ServiceError> {
        let missing = self.running.missing.shards();
        match self.format {
            Format::Json => Ok(format!("],\"partial\":{},\"missing_shards\":{}}}\n", !missing.is_empty(), serde_json::json!(missing)).into_bytes()),
            _ if !missing.is_empty() => Err(ServiceError::ShardsMissing {
                message: format!("shards {missing:?} have no live replica: the answer would lack their events"),
                shards: missing,
            }),
            Format::Arrow => {
                let w = self.arrow.as_mut().ok_or_else(|| internal("no Arrow writer"))?;
                w.finish().map_err(internal)?;
                Ok(std::mem::take(w.get_mut()))
            }
            _ => Ok(Vec::new()),
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/sql",
    tag = "query",
    summary = "A SQL query over the table `logs`, its rows streamed",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"sql\": \"SELECT level, count(*) FROM logs GROUP BY level\", \"format\": \"json\" (the default), \"ndjson\", \"csv\" or \"arrow\" (the Arrow IPC stream format)}. Columns of logs: id, ts, stream, level, message, labels (labels['key']), fields (JSON text); match(message, 'words') and phrase(message, 'two words') search the message's tokens"),
    responses(
        (status = 200, description = "The rows: JSON {columns, rows, partial, missing_shards}, NDJSON, CSV or an Arrow IPC stream", body = serde_json::Value),
        (status = 400, description = "Bad SQL (the error names the position or the column), a statement that is not a query, or a bad body", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 503, description = "The query ran past its time limit (query_limits.sql_timeout_secs), or shards have no live replica and the format (NDJSON, CSV, Arrow) cannot say the answer is partial", body = ErrorBody),
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
    let mut arrow = None;
    let head = match format {
        Format::Json => format!("{{\"columns\":{},\"rows\":[", serde_json::json!(columns)).into_bytes(),
        Format::Arrow => {
            let mut w = ArrowWriter::try_new(Vec::new(), running.stream.schema().as_ref()).map_err(internal)?;
            let schema = std::mem::take(w.get_mut());
            arrow = Some(w);
            schema
        }
        _ => Vec::new(),
    };
    let mut rows = Rows { running, format, arrow, rows: 0, batches: 0, started, limit, done: false };
    // An answer that fits in WHOLE bytes goes in one piece, with its length, and an error
    // found before it is sent is the request's own (a 4xx or 5xx, not a cut transfer).
    let mut whole = head;
    while whole.len() < WHOLE {
        match rows.step().await? {
            Some(bytes) => whole.extend(bytes),
            None => return Ok(HttpResponse::Ok().content_type(format.content_type()).body(whole)),
        }
    }
    let body = futures::stream::unfold(rows, |mut st| async move {
        match st.step().await {
            Ok(None) => None,
            Ok(Some(bytes)) => Some((Ok::<_, actix_web::Error>(Bytes::from(bytes)), st)),
            // step() has already marked the answer done.
            Err(e) => {
                tracing::warn!(error = %e, rows = st.rows, "sql-answer-cut-short");
                Some((Err(actix_web::error::ErrorInternalServerError(format!("the SQL query failed after {} rows: {e}", st.rows))), st))
            }
        }
    });
    let body = futures::stream::once(async move { Ok::<_, actix_web::Error>(Bytes::from(whole)) }).chain(body);
    Ok(HttpResponse::Ok().content_type(format.content_type()).streaming(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    /// The bytes the answer is made of, schema, batches and end, read back with Arrow's
    /// own stream reader.
    #[test]
    fn arrow_answers_read_back_as_the_batches_sent() {
        let schema = Arc::new(Schema::new(vec![Field::new("level", DataType::Utf8, true), Field::new("n", DataType::Int64, false)]));
        let batches = [
            RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec![Some("error"), None])), Arc::new(Int64Array::from(vec![3, 4]))]).unwrap(),
            RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec![Some("info")])), Arc::new(Int64Array::from(vec![5]))]).unwrap(),
        ];
        let mut w = ArrowWriter::try_new(Vec::new(), &schema).unwrap();
        let mut bytes = std::mem::take(w.get_mut());
        for (i, b) in batches.iter().enumerate() {
            bytes.extend(render(b, Format::Arrow, i > 0, i == 0, Some(&mut w)).unwrap());
        }
        w.finish().unwrap();
        bytes.extend(std::mem::take(w.get_mut()));
        let read: Vec<RecordBatch> =
            datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(read, batches);
    }
}
