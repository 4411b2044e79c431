//! Live tail: `GET /api/v1/tail?q=QUERY` streams the events matching a query as they
//! enter the shard log, as server-sent events (`data: <event JSON>`), until the client
//! goes away.
//!
//! Each tail has its own core NATS subscription to the shard log's subjects, on a
//! connection of its own with small buffers: JetStream publishes reach plain
//! subscribers too, and a tail that reads too slowly loses messages of its own (the
//! client library drops them for that subscription) while ingest goes on untouched.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use futures::StreamExt;
use gossamer_schemas::ShardCommand;

use crate::error::ServiceError;
use crate::rest::common::Node;
use crate::rest::error::ApiError;
use crate::service::leaf::parse_query;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(tail))]
pub struct Api;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailParams {
    #[serde(default)]
    q: String,
}

/// A comment line every so often, so a dead connection is noticed and closed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[utoipa::path(
    get,
    path = "/api/v1/tail",
    tag = "queues",
    summary = "Events matching a query as they are stored (server-sent events)",
    params(
        ("q" = Option<String>, Query, description = "A query in the search syntax; empty matches every event"),
    ),
    responses(
        (status = 200, description = "text/event-stream: data: <event JSON> per event", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = gossamer_schemas::api::ErrorBody),
        (status = 401, description = "No valid bearer token", body = gossamer_schemas::api::ErrorBody),
    ),
)]
pub async fn tail(node: Node, params: web::Query<TailParams>) -> Result<HttpResponse, ApiError> {
    let q = params.into_inner().q;
    let expr = match q.trim() {
        "" => None,
        text => Some(parse_query(&node.cfg.query_limits, text)?),
    };
    let subjects = gossamer_schemas::subjects::Subjects::new(&node.cfg.cluster);
    let sub = node
        .tail_nats
        .subscribe(subjects.shards_wildcard())
        .await
        .map_err(|e| ServiceError::Unavailable(format!("cannot subscribe to the shard log: {e}")))?;
    // Registered with the server before the client hears it is tailing.
    node.tail_nats.flush().await.map_err(|e| ServiceError::Unavailable(format!("NATS: {e}")))?;
    let events = sub.flat_map(move |msg| {
        let mut out = Vec::new();
        if let Ok(Some(events)) = ShardCommand::decode(&msg.payload).and_then(ShardCommand::into_inserted) {
            for e in events.iter().filter(|e| expr.as_ref().is_none_or(|x| x.matches(e))) {
                out.push(Ok::<_, actix_web::Error>(Bytes::from(format!("data: {}\n\n", e.to_json()))));
            }
        }
        futures::stream::iter(out)
    });
    let keep_alive = futures::stream::unfold((), |()| async {
        tokio::time::sleep(KEEP_ALIVE).await;
        Some((Ok(Bytes::from_static(b": keep-alive\n\n")), ()))
    });
    let ready = futures::stream::once(async move { Ok(Bytes::from(format!(": tailing {q}\n\n"))) });
    let body = ready.chain(futures::stream::select(events, keep_alive));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
