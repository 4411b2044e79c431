//! The NATS door: queries sent as requests on `gossamer.<cluster>.api.query` (a queue
//! group). The body and the answer are those of `POST /api/v1/query`; an error is
//! `{"error": "...", "status": N}` with the status of its error code. Also
//! `gossamer.<cluster>.api.wait`: `{"positions": {"<shard>": seq}, "timeout_ms": N}`
//! (what ingest answers give) answered once every replica has applied them. And
//! `gossamer.<cluster>.api.sql`: `{"sql": "SELECT ..."}`, answered whole as the JSON
//! of `POST /api/v1/sql` (up to 900 KiB of rows; the REST route streams any size).

use std::sync::Arc;

use crate::error::{ErrorCode, ServiceError};
use crate::handle::NodeHandle;
use crate::service::query;

/// The error form of this door.
fn error_reply(code: ErrorCode, message: String) -> serde_json::Value {
    serde_json::json!({ "error": message, "status": code.http_status() })
}

/// Answers one request body.
async fn answer(node: &NodeHandle, payload: &[u8]) -> serde_json::Value {
    let body = match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(body) => body,
        Err(e) => return error_reply(ErrorCode::BadRequest, format!("invalid JSON body: {e}")),
    };
    let answered = match query::QueryBody::from_json(body) {
        Ok(body) => query::answer(node, body).await,
        Err(e) => Err(e),
    };
    match answered.and_then(|a| serde_json::to_value(a).map_err(|e| ServiceError::Internal(e.to_string()))) {
        Ok(v) => v,
        Err(e) => error_reply(e.error_code(), e.message()),
    }
}

/// Answers one wait body.
async fn answer_wait(node: &NodeHandle, payload: &[u8]) -> serde_json::Value {
    #[derive(serde::Deserialize)]
    struct WaitBody {
        positions: std::collections::BTreeMap<u32, u64>,
        timeout_ms: Option<u64>,
    }
    match serde_json::from_slice::<WaitBody>(payload) {
        Ok(w) => {
            let timeout = std::time::Duration::from_millis(w.timeout_ms.unwrap_or(10_000).min(120_000));
            serde_json::to_value(query::wait_queryable(node, &w.positions, timeout).await).unwrap_or_default()
        }
        Err(e) => error_reply(ErrorCode::BadRequest, format!("a wait body is {{\"positions\": {{\"<shard>\": seq}}, \"timeout_ms\": N}}: {e}")),
    }
}

/// NATS carries one message of at most 1 MiB by default: rows beyond this are refused.
const SQL_ANSWER_BYTES: usize = 900 * 1024;

/// Answers one SQL body, `{"sql": "..."}`, whole.
async fn answer_sql(node: &Arc<NodeHandle>, payload: &[u8]) -> serde_json::Value {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SqlBody {
        sql: String,
    }
    let body = match serde_json::from_slice::<SqlBody>(payload) {
        Ok(b) => b,
        Err(e) => return error_reply(ErrorCode::BadRequest, format!("a SQL body is {{\"sql\": \"SELECT ...\"}}: {e}")),
    };
    match crate::service::sql::collect(node, &body.sql, SQL_ANSWER_BYTES).await {
        Ok(v) => v,
        Err(e) => error_reply(e.error_code(), e.message()),
    }
}

/// Answers each request on the subscription with `answer`, each in a task of its own,
/// until the subscription ends.
async fn serve<F, A>(node: Arc<NodeHandle>, mut sub: async_nats::Subscriber, answer: F)
where
    F: Fn(Arc<NodeHandle>, bytes::Bytes) -> A + Copy + 'static,
    A: std::future::Future<Output = serde_json::Value> + 'static,
{
    use futures::StreamExt;
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else { continue };
        let node = node.clone();
        actix_rt::spawn(async move {
            let answer = answer(node.clone(), msg.payload).await;
            let _ = node.nats.publish(reply, answer.to_string().into()).await;
        });
    }
}

/// Serves query requests until the subscription ends.
pub async fn serve_queries(node: Arc<NodeHandle>, sub: async_nats::Subscriber) {
    serve(node, sub, |node, payload| async move { answer(&node, &payload).await }).await
}

/// Serves read-your-writes waits until the subscription ends.
pub async fn serve_waits(node: Arc<NodeHandle>, sub: async_nats::Subscriber) {
    serve(node, sub, |node, payload| async move { answer_wait(&node, &payload).await }).await
}

/// Serves SQL requests until the subscription ends.
pub async fn serve_sql(node: Arc<NodeHandle>, sub: async_nats::Subscriber) {
    serve(node, sub, |node, payload| async move { answer_sql(&node, &payload).await }).await
}
