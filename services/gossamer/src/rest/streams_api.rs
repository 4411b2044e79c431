//! `/api/v1/streams`: streams with their counts and retention.

use actix_web::{web, HttpResponse};
use gossamer_schemas::api::ErrorBody;
use serde_json::json;

use crate::error::{blocking, ServiceError};
use crate::rest::common::Node;
use crate::rest::error::ApiError;
use crate::service::{commands, query};

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(streams, set_retention))]
pub struct Api;

#[utoipa::path(
    get,
    path = "/api/v1/streams",
    tag = "streams",
    summary = "Streams with their event counts and retention, and the bytes on disk",
    responses(
        (status = 200, description = "The streams", body = serde_json::Value),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn streams(node: Node) -> Result<HttpResponse, ApiError> {
    let counted = query::stream_counts(&node).await?;
    let (totals, missing) = (counted.streams, counted.missing);
    let store = node.store.clone();
    let (retentions, sled_bytes) = blocking(move || -> Result<_, ServiceError> { Ok((store.retentions()?, store.size_on_disk())) }).await??;
    let events: u64 = totals.values().sum();
    let mut names: Vec<&String> = totals.keys().chain(retentions.keys()).collect();
    names.sort();
    names.dedup();
    let list: Vec<serde_json::Value> = names
        .into_iter()
        .map(|name| {
            json!({
                "name": name,
                "events": totals.get(name).copied().unwrap_or(0),
                "retention": retentions.get(name).map(|ns| format_duration(*ns)),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "streams": list,
        "events": events,
        "partial": !missing.is_empty(),
        "missing_shards": missing,
        // Events, their id index and counters in sled; the NATS streams are apart.
        "sled_bytes": sled_bytes,
        "sled_bytes_per_event": if events > 0 { sled_bytes as f64 / events as f64 } else { 0.0 },
    })))
}

/// Nanoseconds as the largest whole unit: `7d`, `90m`, `15s`.
fn format_duration(ns: i64) -> String {
    const UNITS: [(i64, &str); 4] = [(86_400_000_000_000, "d"), (3_600_000_000_000, "h"), (60_000_000_000, "m"), (1_000_000_000, "s")];
    for (size, unit) in UNITS {
        if ns % size == 0 {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{}ms", ns / 1_000_000)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    /// `7d`, `12h`...; null clears it.
    max_age: Option<String>,
}

/// `PUT /api/v1/streams/{name}/retention`: sets the stream's max age and applies it at
/// once; from then on it is applied every `retention_every_secs`.
#[utoipa::path(
    put,
    path = "/api/v1/streams/{name}/retention",
    tag = "streams",
    summary = "Set or clear a stream's retention and apply it now",
    params(
        ("name" = String, Path, description = "A stream name"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"max_age\": \"7d\"} or {\"max_age\": null}"),
    responses(
        (status = 200, description = "The retention and how many events it deleted now", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
pub async fn set_retention(node: Node, name: web::Path<String>, body: web::Json<RetentionBody>) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let (max_age, deleted) = commands::set_retention(&node, &name, body.max_age.as_deref()).await?;
    Ok(HttpResponse::Ok().json(json!({
        "stream": name,
        "max_age": max_age.map(format_duration),
        "deleted": deleted,
    })))
}
