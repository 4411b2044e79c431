//! `/api/v1/index` and `/api/v1/admin/*`: the index's lag, reindexing, draining.

use actix_web::HttpResponse;
use gossamer_schemas::api::ErrorBody;
use serde_json::json;

use crate::error::ServiceError;
use crate::handle::NodeHandle;
use crate::rest::common::Node;
use crate::rest::error::ApiError;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(index_state, reindex, drain, undrain))]
pub struct Api;

/// `GET /api/v1/index`: how far the index is behind the shards.
#[utoipa::path(
    get,
    path = "/api/v1/index",
    tag = "admin",
    summary = "How far the index is behind the stored events",
    responses(
        (status = 200, description = "The index lag", body = serde_json::Value),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn index_state(node: Node) -> Result<HttpResponse, ApiError> {
    let Some(index) = &node.index else {
        return Err(ServiceError::NotFound("this node does not run the index role".into()).into());
    };
    let st = index.send(gossamer_index_actor::GetState).await?;
    Ok(HttpResponse::Ok().json(st))
}

/// `POST /api/v1/admin/drain`: this node stops taking shards; the others place its
/// shards among themselves and catch up on them, while it goes on answering queries
/// (through the other replicas). `DELETE` takes its share back.
#[utoipa::path(
    post,
    path = "/api/v1/admin/drain",
    tag = "admin",
    summary = "Move this node's shards to the other members before it leaves",
    responses(
        (status = 202, description = "Draining: follow `replicas` of this node in GET /api/v1/cluster down to 0", body = serde_json::Value),
        (status = 409, description = "This node does not run the shard role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
pub async fn drain(node: Node) -> Result<HttpResponse, ApiError> {
    set_draining(&node, true).await
}

#[utoipa::path(
    delete,
    path = "/api/v1/admin/drain",
    tag = "admin",
    summary = "Take shards again after a drain",
    responses(
        (status = 202, description = "This node takes its share of shards again", body = serde_json::Value),
        (status = 409, description = "This node does not run the shard role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
pub async fn undrain(node: Node) -> Result<HttpResponse, ApiError> {
    set_draining(&node, false).await
}

async fn set_draining(node: &NodeHandle, draining: bool) -> Result<HttpResponse, ApiError> {
    if !node.cfg.has_role("shard") {
        return Err(ServiceError::Conflict("this node does not run the shard role, so it holds no shards to move".into()).into());
    }
    node.cluster.gossip.send(gossamer_gossip::SetShards(!draining)).await?;
    let held = node.cluster.held().len();
    Ok(HttpResponse::Accepted().json(json!({ "node": node.cfg.node_id, "draining": draining, "holds": held })))
}

/// `POST /api/v1/admin/reindex`: drops every shard's index and rebuilds it from the
/// shards' events; queries stay complete meanwhile (they scan what is not indexed).
#[utoipa::path(
    post,
    path = "/api/v1/admin/reindex",
    tag = "admin",
    summary = "Drop every shard's index and rebuild it",
    responses(
        (status = 202, description = "Reindexing has started", body = serde_json::Value),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
pub async fn reindex(node: Node) -> Result<HttpResponse, ApiError> {
    let Some(index) = &node.index else {
        return Err(ServiceError::NotFound("this node does not run the index role".into()).into());
    };
    index.send(gossamer_index_actor::Reindex).await?;
    Ok(HttpResponse::Accepted().json(json!({ "reindexing": true, "shards": node.shards.len() })))
}
