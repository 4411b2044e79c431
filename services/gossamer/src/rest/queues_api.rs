//! `/api/v1/queues`: notification queues.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use gossamer_schemas::api::ErrorBody;
use serde_json::json;

use crate::error::ServiceError;
use crate::handle::NodeHandle;
use crate::rest::common::Node;
use crate::rest::error::ApiError;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_queues, create_queue, get_queue, update_queue, delete_queue))]
pub struct Api;

fn queues(node: &NodeHandle) -> Result<&Arc<gossamer_queue::Queues>, ServiceError> {
    node.queues.as_ref().ok_or_else(|| ServiceError::Unavailable("this node does not run the queue role".into()))
}

/// `GET /api/v1/queues`: every queue with its figures.
#[utoipa::path(
    get,
    path = "/api/v1/queues",
    tag = "queues",
    summary = "Every queue with its figures",
    responses(
        (status = 200, description = "The queues", body = serde_json::Value),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn list_queues(node: Node) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "queues": queues(&node)?.list().await? })))
}

/// `POST /api/v1/queues` `{"name", "filter", "max_deliver", "ack_wait", "backoff",
/// "start"}`: defines a queue (201).
#[utoipa::path(
    post,
    path = "/api/v1/queues",
    tag = "queues",
    summary = "Define a notification queue",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"name\", \"filter\", \"max_deliver\" (5), \"ack_wait\" (30s), \"backoff\" ([]), \"start\" (now or RFC 3339)}"),
    responses(
        (status = 201, description = "The queue", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists or runs", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
pub async fn create_queue(node: Node, spec: web::Json<gossamer_queue::QueueSpec>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Created().json(queues(&node)?.create(spec.into_inner()).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/queues/{name}",
    tag = "queues",
    summary = "One queue and its figures",
    params(
        ("name" = String, Path, description = "A queue name"),
    ),
    responses(
        (status = 200, description = "The queue", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn get_queue(node: Node, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(queues(&node)?.get(&name).await?))
}

#[utoipa::path(
    put,
    path = "/api/v1/queues/{name}",
    tag = "queues",
    summary = "Change a queue's filter or delivery settings",
    params(
        ("name" = String, Path, description = "A queue name"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json", description = "Any of {\"filter\", \"max_deliver\", \"ack_wait\", \"backoff\"}"),
    responses(
        (status = 200, description = "The queue", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
pub async fn update_queue(node: Node, name: web::Path<String>, spec: web::Json<gossamer_queue::QueueUpdate>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(queues(&node)?.update(&name, spec.into_inner()).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/queues/{name}",
    tag = "queues",
    summary = "Remove a queue, its consumers and kept deliveries",
    params(
        ("name" = String, Path, description = "A queue name"),
    ),
    responses(
        (status = 200, description = "What was deleted", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
pub async fn delete_queue(node: Node, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    queues(&node)?.delete(&name).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": name.into_inner() })))
}
