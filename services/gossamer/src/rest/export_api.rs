//! `GET /api/v1/export`: every event matching a query, oldest first, streamed as NDJSON
//! (the event JSON, one per line) or CSV. The query service is asked a page at a time
//! (a cursor on `(ts, id)`), so memory stays flat however many events match. The time
//! range is fixed when the export starts. A page with shards missing ends the stream
//! with an error (the transfer is cut short) rather than leave events out silently.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use gossamer_query::exec::MAX_LIMIT;
use gossamer_query::TimeRange;
use gossamer_schemas::api::{ErrorBody, Order, QueryRequest};
use gossamer_schemas::Event;

use crate::error::ServiceError;
use crate::handle::NodeHandle;
use crate::rest::common::Node;
use crate::rest::error::ApiError;
use crate::service::query::{self as queries, Searched};

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(export))]
pub struct Api;

/// Events per page asked of the query service.
const PAGE: usize = 5_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    #[serde(default)]
    q: String,
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Ndjson,
    Csv,
}

impl Format {
    fn parse(s: Option<&str>) -> Result<Self, ServiceError> {
        match s.unwrap_or("ndjson") {
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            other => Err(ServiceError::BadRequest(format!("`format` must be ndjson or csv, got {other:?}"))),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// The CSV columns; labels and fields are JSON objects.
const CSV_HEADER: [&str; 7] = ["id", "ts", "stream", "level", "message", "labels", "fields"];

fn render(events: &[Event], format: Format, header: bool) -> Result<Vec<u8>, ServiceError> {
    let mut out = Vec::with_capacity(events.len() * 320);
    match format {
        Format::Ndjson => {
            for e in events {
                serde_json::to_writer(&mut out, &e.to_json()).map_err(|e| ServiceError::Internal(e.to_string()))?;
                out.push(b'\n');
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            let csv_err = |e: csv::Error| ServiceError::Internal(e.to_string());
            if header {
                w.write_record(CSV_HEADER).map_err(csv_err)?;
            }
            for e in events {
                let j = e.to_json();
                let text = |k: &str| j[k].as_str().unwrap_or("").to_string();
                w.write_record([
                    text("id"),
                    text("ts"),
                    text("stream"),
                    text("level"),
                    text("message"),
                    j["labels"].to_string(),
                    j["fields"].to_string(),
                ])
                .map_err(csv_err)?;
            }
            w.flush().map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
    }
    Ok(out)
}

/// What the stream carries from one page to the next.
struct Pages {
    node: Arc<NodeHandle>,
    req: QueryRequest,
    format: Format,
    /// The first page, asked for before the answer starts (so a bad query is a 400).
    first: Option<Searched>,
    header: bool,
    done: bool,
}

/// A page's events, or an error when shards were missing from it.
fn whole(page: Searched) -> Result<Searched, ServiceError> {
    if page.missing.is_empty() {
        Ok(page)
    } else {
        Err(ServiceError::ShardsMissing {
            message: format!("shards {:?} have no live replica: the export would lack their events", page.missing),
            shards: page.missing,
        })
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/export",
    tag = "query",
    summary = "Every event matching a query, oldest first, streamed as NDJSON or CSV",
    params(
        ("q" = Option<String>, Query, description = "A query in the search syntax; empty matches every event"),
        ("from" = Option<String>, Query, description = "Start of the time range: RFC 3339, Unix time or a duration back from now (1h)"),
        ("to" = Option<String>, Query, description = "End of the time range (exclusive)"),
        ("format" = Option<String>, Query, description = "ndjson (the default: the event JSON, one per line) or csv (id, ts, stream, level, message, labels, fields)"),
    ),
    responses(
        (status = 200, description = "The events, oldest first; the transfer is cut short if shards go missing during it", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 503, description = "Shards have no live replica", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn export(node: Node, params: web::Query<ExportParams>) -> Result<HttpResponse, ApiError> {
    let p = params.into_inner();
    let format = Format::parse(p.format.as_deref())?;
    // The range is fixed now: a relative `from` must not move while the pages are read.
    let range = TimeRange::parse(p.from.as_deref(), p.to.as_deref(), TimeRange::now()).map_err(ServiceError::BadRequest)?;
    let bound = |v: &Option<String>, ns: i64| v.as_ref().map(|_| ns.to_string());
    let req = QueryRequest {
        q: p.q,
        from: bound(&p.from, range.from),
        to: bound(&p.to, range.to),
        limit: Some(PAGE.min(node.cfg.query_limits.max_page).min(MAX_LIMIT).max(1)),
        order: Some(Order::Asc),
        cursor: None,
        sort: None,
    };
    let node: Arc<NodeHandle> = node.get_ref().clone();
    let first = whole(queries::search(&node, req.clone()).await?)?;
    let pages = Pages { node, req, format, first: Some(first), header: true, done: false };
    let body = futures::stream::unfold(pages, |mut st| async move {
        if st.done {
            return None;
        }
        let page = match st.first.take() {
            Some(p) => Ok(p),
            None => queries::search(&st.node, st.req.clone()).await.and_then(whole),
        };
        let chunk = page.and_then(|page| {
            let bytes = render(&page.events, st.format, st.header)?;
            st.header = false;
            st.req.cursor = page.next_cursor;
            st.done = st.req.cursor.is_none();
            Ok(bytes)
        });
        match chunk {
            Ok(bytes) => Some((Ok::<_, actix_web::Error>(Bytes::from(bytes)), st)),
            Err(e) => {
                tracing::warn!(error = %e, "export-cut-short");
                st.done = true;
                Some((Err(actix_web::error::ErrorServiceUnavailable(e.to_string())), st))
            }
        }
    });
    Ok(HttpResponse::Ok().content_type(format.content_type()).streaming(body))
}
