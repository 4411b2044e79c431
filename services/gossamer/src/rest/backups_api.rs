//! `/api/v1/backups`, `/api/v1/restore` and `/api/v1/jobs`: backups, their
//! verification and restores, and the jobs that run them.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use gossamer_schemas::api::ErrorBody;
use serde_json::json;

use crate::error::ServiceError;
use crate::handle::NodeHandle;
use crate::rest::common::{optional_body, Node};
use crate::rest::error::ApiError;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_backups, create_backup, get_backup, verify_backup, restore_backup, list_jobs, get_job))]
pub struct Api;

fn backups(node: &NodeHandle) -> Result<&Arc<gossamer_backup::Backups>, ServiceError> {
    node.backups.as_ref().ok_or_else(|| ServiceError::Unavailable("this node does not run the backup role".into()))
}

/// `GET /api/v1/backups`: the backups in the store, oldest first, and the job running.
#[utoipa::path(
    get,
    path = "/api/v1/backups",
    tag = "backups",
    summary = "The backups in the store and the job running",
    responses(
        (status = 200, description = "The backups, oldest first", body = serde_json::Value),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn list_backups(node: Node) -> Result<HttpResponse, ApiError> {
    let b = backups(&node)?;
    Ok(HttpResponse::Ok().json(json!({ "store": b.location(), "backups": b.list().await?, "running": b.running() })))
}

/// `POST /api/v1/backups` `{"kind": "auto"|"full"|"incremental", "name": "..."}` (both
/// optional): starts a backup; 202 with the job to follow at `/api/v1/jobs/{id}`.
#[utoipa::path(
    post,
    path = "/api/v1/backups",
    tag = "backups",
    summary = "Start a backup (auto: incremental after the first)",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"kind\": \"auto\"|\"full\"|\"incremental\", \"name\": optional} (both optional)"),
    responses(
        (status = 202, description = "The job to follow at /api/v1/jobs/{id}", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists or runs", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
pub async fn create_backup(node: Node, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: gossamer_backup::CreateRequest = optional_body(&body)?;
    let job = backups(&node)?.create(req).await?;
    Ok(HttpResponse::Accepted().json(job))
}

#[utoipa::path(
    get,
    path = "/api/v1/backups/{id}",
    tag = "backups",
    summary = "A backup's manifest",
    params(
        ("id" = String, Path, description = "A backup id"),
    ),
    responses(
        (status = 200, description = "The manifest", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn get_backup(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(backups(&node)?.manifest(&id).await?))
}

/// `POST /api/v1/backups/{id}/verify`: starts reading every file of the backup.
#[utoipa::path(
    post,
    path = "/api/v1/backups/{id}/verify",
    tag = "backups",
    summary = "Start reading every file of a backup against its manifest",
    params(
        ("id" = String, Path, description = "A backup id"),
    ),
    responses(
        (status = 202, description = "The job", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists or runs", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
pub async fn verify_backup(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(backups(&node)?.verify(&id).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    backup: String,
}

/// `POST /api/v1/restore` `{"backup": ID}`: restores the backup (and the ones it
/// continues) into this node, which must be empty.
#[utoipa::path(
    post,
    path = "/api/v1/restore",
    tag = "backups",
    summary = "Start restoring a backup (and the ones it continues) into this empty node",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"backup\": \"ID\"}"),
    responses(
        (status = 202, description = "The job", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists or runs", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
pub async fn restore_backup(node: Node, req: web::Json<RestoreRequest>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(backups(&node)?.restore(&req.backup).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "backups",
    summary = "Backup, verify and restore jobs since the node started",
    responses(
        (status = 200, description = "The jobs", body = serde_json::Value),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn list_jobs(node: Node) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(backups(&node)?.jobs()))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "backups",
    summary = "One job, its phase and progress",
    params(
        ("id" = String, Path, description = "A job id"),
    ),
    responses(
        (status = 200, description = "The job", body = serde_json::Value),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn get_job(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let job = backups(&node)?.job(&id).ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    Ok(HttpResponse::Ok().json(job))
}
