//! `/api/v1/events/{id}` and `POST /api/v1/delete`: one event by id, its update and
//! deletion, and deletes by query.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use gossamer_schemas::api::ErrorBody;
use serde_json::json;

use crate::rest::common::Node;
use crate::rest::error::ApiError;
use crate::service::{commands, query};

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(get_event, delete_event, update_event, delete_where))]
pub struct Api;

fn parse_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id).map_err(|_| ApiError::bad_request(format!("{id:?} is not a UUID")))
}

#[utoipa::path(
    get,
    path = "/api/v1/events/{id}",
    tag = "events",
    summary = "One event by id",
    params(
        ("id" = String, Path, description = "An event id (UUID)"),
    ),
    responses(
        (status = 200, description = "The event", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn get_event(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(HttpResponse::Ok().json(query::get(&node, id).await?.to_json()))
}

#[utoipa::path(
    delete,
    path = "/api/v1/events/{id}",
    tag = "events",
    summary = "Delete one event",
    params(
        ("id" = String, Path, description = "An event id (UUID)"),
    ),
    responses(
        (status = 200, description = "How many were deleted", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
pub async fn delete_event(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let n = commands::delete_by_id(&node, parse_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": n })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// Label values to set; null removes the label.
    #[serde(default)]
    labels: BTreeMap<String, Option<String>>,
    /// Fields to set; null removes the field.
    #[serde(default)]
    fields: serde_json::Map<String, serde_json::Value>,
}

/// `PATCH /api/v1/events/{id}`: sets or removes labels and fields; answers the event
/// as it is now.
#[utoipa::path(
    patch,
    path = "/api/v1/events/{id}",
    tag = "events",
    summary = "Set or remove labels and fields of one event",
    params(
        ("id" = String, Path, description = "An event id (UUID)"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"labels\": {\"k\": \"v\" or null}, \"fields\": {\"k\": value or null}}"),
    responses(
        (status = 200, description = "The event as it is now", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
pub async fn update_event(node: Node, id: web::Path<String>, body: web::Json<serde_json::Value>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let body: UpdateBody = serde_json::from_value(body.into_inner())
        .map_err(|e| ApiError::bad_request(format!("invalid update: {e}; expected {{\"labels\":{{\"k\":\"v\"|null}},\"fields\":{{...}}}}")))?;
    let event = commands::update_event(&node, id, body.labels, body.fields).await?;
    Ok(HttpResponse::Ok().json(event.to_json()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    q: String,
    from: Option<String>,
    to: Option<String>,
}

/// `POST /api/v1/delete` `{"q","from","to"}` -> `{"deleted":N}`.
#[utoipa::path(
    post,
    path = "/api/v1/delete",
    tag = "events",
    summary = "Delete every event matching a query",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"q\": \"...\", \"from\": optional, \"to\": optional}"),
    responses(
        (status = 200, description = "How many were deleted", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
pub async fn delete_where(node: Node, body: web::Json<serde_json::Value>) -> Result<HttpResponse, ApiError> {
    let body: DeleteBody =
        serde_json::from_value(body.into_inner()).map_err(|e| ApiError::bad_request(format!("invalid delete body: {e}")))?;
    let n = commands::delete_where(&node, body.q, body.from.as_deref(), body.to.as_deref()).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": n })))
}
