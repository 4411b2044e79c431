//! `/api/v1/search`, `/count`, `/aggregate` and `POST /query`: parse the request,
//! call the query service, answer its JSON.

use actix_web::{web, HttpResponse};
use gossamer_schemas::api::{AggregateRequest, AggregateResponse, CountResponse, ErrorBody, QueryRequest, SearchResponse};

use crate::rest::common::Node;
use crate::rest::error::ApiError;
use crate::service::query as queries;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(search, count, aggregate, query))]
pub struct Api;

#[utoipa::path(
    get,
    path = "/api/v1/search",
    tag = "query",
    summary = "Events matching a query, newest first, a page at a time",
    params(
        ("q" = Option<String>, Query, description = "A query in the search syntax; empty matches every event"),
        ("from" = Option<String>, Query, description = "Start of the time range: RFC 3339, Unix time or a duration back from now (1h)"),
        ("to" = Option<String>, Query, description = "End of the time range (exclusive)"),
        ("limit" = Option<usize>, Query, description = "Events per page (100 by default, at most query_limits.max_page)"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the page before"),
        ("order" = Option<String>, Query, description = "desc (newest first, the default) or asc"),
        ("sort" = Option<String>, Query, description = "Order by keys instead of time: key[:asc|:desc],... (ts, id, stream, level, message, labels.NAME, fields.PATH or a name); missing values last, ties broken by id"),
    ),
    responses(
        (status = 200, description = "A page of events and the cursor of the next", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn search(node: Node, req: web::Query<QueryRequest>) -> Result<HttpResponse, ApiError> {
    let answer: SearchResponse = queries::search(&node, req.into_inner()).await?.into();
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    get,
    path = "/api/v1/count",
    tag = "query",
    summary = "How many events match a query",
    params(
        ("q" = Option<String>, Query, description = "A query in the search syntax; empty matches every event"),
        ("from" = Option<String>, Query, description = "Start of the time range: RFC 3339, Unix time or a duration back from now (1h)"),
        ("to" = Option<String>, Query, description = "End of the time range (exclusive)"),
    ),
    responses(
        (status = 200, description = "The count", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn count(node: Node, req: web::Query<QueryRequest>) -> Result<HttpResponse, ApiError> {
    let answer: CountResponse = queries::count(&node, req.into_inner()).await?.into();
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    get,
    path = "/api/v1/aggregate",
    tag = "query",
    summary = "count, sum, avg, min, max or a percentile, grouped and bucketed",
    params(
        ("q" = Option<String>, Query, description = "A query in the search syntax; empty matches every event"),
        ("from" = Option<String>, Query, description = "Start of the time range: RFC 3339, Unix time or a duration back from now (1h)"),
        ("to" = Option<String>, Query, description = "End of the time range (exclusive)"),
        ("fn" = String, Query, description = "count, sum, avg, min, max, p50, p95, p99 ..."),
        ("field" = Option<String>, Query, description = "The numeric field (all but count)"),
        ("by" = Option<String>, Query, description = "Comma-separated group keys: labels, stream, level, fields"),
        ("bucket" = Option<String>, Query, description = "Time bucket width: 30s, 1m, 1h, 1d"),
    ),
    responses(
        (status = 200, description = "The groups", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn aggregate(node: Node, req: web::Query<AggregateRequest>) -> Result<HttpResponse, ApiError> {
    let answer: AggregateResponse = queries::aggregate(&node, req.into_inner()).await?.into();
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    post,
    path = "/api/v1/query",
    tag = "query",
    summary = "Search, count or aggregate with a JSON body",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"q\", \"from\", \"to\", \"limit\", \"cursor\", \"order\" or \"sort\"} for a search; add \"count\": true, or \"fn\" with \"field\", \"by\", \"bucket\""),
    responses(
        (status = 200, description = "As GET /search, /count or /aggregate", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
pub async fn query(node: Node, body: web::Json<serde_json::Value>) -> Result<HttpResponse, ApiError> {
    let body = queries::QueryBody::from_json(body.into_inner())?;
    Ok(HttpResponse::Ok().json(queries::answer(&node, body).await?))
}
