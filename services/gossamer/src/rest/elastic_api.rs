//! The Elasticsearch door, for shippers whose common output is Elasticsearch (Filebeat,
//! Logstash, Fluent Bit's `es`, rsyslog's `omelasticsearch`, syslog-ng):
//! `POST`/`PUT /_bulk` and `/<index>/_bulk` (the `index` and `create` actions), `GET /`
//! (the version document, for a client that asks without wanting HTML), `HEAD /`, and
//! `GET /_cat/health`. Every answer carries `X-Elastic-Product: Elasticsearch`, which
//! Elastic's clients check; errors have Elasticsearch's shape.
//!
//! The index is the stream, `@timestamp` (or any time key) the time. A bulk request's
//! documents are checked one by one against the ingest limits (a refused one gets its
//! item error, the others go on), then sent, per stream, through the request/reply
//! ingest path: an item is `201 created` once its batch is in the shard log, as durable
//! as a NATS ingest request. An `_id` that is a UUID is the event's id; any other `_id`
//! is hashed into one, so a retried bulk stores nothing twice.

use std::collections::BTreeMap;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use crate::rest::common::Node;

/// What Elastic's clients look for in every answer.
const PRODUCT: (&str, &str) = ("X-Elastic-Product", "Elasticsearch");
/// The version this door answers as (what shippers' version checks expect).
const VERSION: &str = "8.11.0";

/// True for the paths this door serves (their errors take its shape).
pub fn is_elastic_path(path: &str) -> bool {
    path == "/_bulk" || path.ends_with("/_bulk") || path.starts_with("/_cat/")
}

/// An error in Elasticsearch's shape: `{"error": {"type", "reason"}, "status"}`.
pub fn error_response(status: u16, kind: &str, reason: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST))
        .insert_header(PRODUCT)
        .json(json!({ "error": { "type": kind, "reason": reason, "root_cause": [{ "type": kind, "reason": reason }] }, "status": status }))
}

/// `GET /` for a client that does not ask for HTML: who answers, as Elasticsearch
/// says it.
pub fn info(node: &crate::handle::NodeHandle) -> HttpResponse {
    HttpResponse::Ok().insert_header(PRODUCT).json(json!({
        "name": node.cfg.node_id,
        "cluster_name": node.cfg.cluster,
        "cluster_uuid": event_id("cluster", Some(&node.cfg.cluster)),
        "version": {
            "number": VERSION,
            "build_flavor": "default",
            "build_type": "gossamer",
            "lucene_version": "9.8.0",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search (this is Gossamer's Elasticsearch door: _bulk ingest)",
    }))
}

/// `HEAD /`: the ping clients send before anything else.
pub async fn ping() -> HttpResponse {
    HttpResponse::Ok().insert_header(PRODUCT).finish()
}

#[derive(serde::Deserialize)]
pub struct CatParams {
    format: Option<String>,
}

/// `GET /_cat/health`: green when every shard has a live replica, red otherwise.
pub async fn cat_health(node: Node, params: web::Query<CatParams>) -> HttpResponse {
    let map = node.cluster.map();
    let unplaced = map.replicas.iter().filter(|r| r.is_empty()).count();
    let members = node.cluster.membership.borrow().members.iter().filter(|m| m.state == gossamer_gossip::MemberState::Alive).count();
    let status = if unplaced == 0 { "green" } else { "red" };
    let now = chrono::Utc::now();
    let shards = node.cfg.shards as usize;
    if params.format.as_deref() == Some("json") {
        return HttpResponse::Ok().insert_header(PRODUCT).json(json!([{
            "epoch": now.timestamp().to_string(),
            "timestamp": now.format("%H:%M:%S").to_string(),
            "cluster": node.cfg.cluster,
            "status": status,
            "node.total": members.to_string(),
            "node.data": members.to_string(),
            "shards": (shards - unplaced).to_string(),
            "pri": (shards - unplaced).to_string(),
            "unassign": unplaced.to_string(),
            "active_shards_percent": format!("{:.1}%", 100.0 * (shards - unplaced) as f64 / shards.max(1) as f64),
        }]));
    }
    HttpResponse::Ok().insert_header(PRODUCT).content_type("text/plain; charset=UTF-8").body(format!(
        "{} {} {} {status} {members} {members} {} {} 0 0 {unplaced} 0 - {:.1}%\n",
        now.timestamp(),
        now.format("%H:%M:%S"),
        node.cfg.cluster,
        shards - unplaced,
        shards - unplaced,
        100.0 * (shards - unplaced) as f64 / shards.max(1) as f64
    ))
}

/// `?refresh=wait_for` (or `true`, or a duration): answer once every event is
/// queryable on its replicas.
#[derive(serde::Deserialize)]
pub struct BulkParams {
    refresh: Option<String>,
}

/// `POST /_bulk` (Elastic's client sends `PUT`).
pub async fn bulk(node: Node, params: web::Query<BulkParams>, body: web::Bytes) -> HttpResponse {
    run_bulk(&node, None, params.refresh.as_deref(), &body).await
}

/// `POST /{index}/_bulk`: the index for actions that name none.
pub async fn bulk_into(node: Node, index: web::Path<String>, params: web::Query<BulkParams>, body: web::Bytes) -> HttpResponse {
    run_bulk(&node, Some(index.as_str()), params.refresh.as_deref(), &body).await
}

/// One item of the answer, in order.
struct Item {
    action: String,
    index: String,
    id: String,
    /// 201, or the error's status, type and reason.
    outcome: Result<(), (u16, &'static str, String)>,
}

impl Item {
    /// Appends the item's answer to `out`: written directly for a stored document (most
    /// of a large answer), through a JSON value for a refused one.
    fn write_json(&self, seq: usize, out: &mut String) {
        use std::fmt::Write;
        if self.outcome.is_ok() {
            let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
            let _ = write!(
                out,
                r#"{{{}:{{"_index":{},"_id":{},"_version":1,"result":"created","status":201,"_shards":{{"total":1,"successful":1,"failed":0}},"_seq_no":{seq},"_primary_term":1}}}}"#,
                q(&self.action),
                q(&self.index),
                q(&self.id)
            );
        } else {
            out.push_str(&self.to_json(seq).to_string());
        }
    }

    fn to_json(&self, seq: usize) -> Value {
        let body = match &self.outcome {
            Ok(()) => json!({
                "_index": self.index, "_id": self.id, "_version": 1, "result": "created", "status": 201,
                "_shards": { "total": 1, "successful": 1, "failed": 0 }, "_seq_no": seq, "_primary_term": 1,
            }),
            Err((status, kind, reason)) => json!({
                "_index": self.index, "_id": self.id, "status": status,
                "error": { "type": kind, "reason": reason },
            }),
        };
        json!({ self.action.clone(): body })
    }
}

/// The event id for an `_id`: itself when it is a UUID, else a UUID hashed from the
/// index and it (the same every time, so a retry is stored once).
fn event_id(index: &str, given: Option<&str>) -> uuid::Uuid {
    match given {
        None => uuid::Uuid::now_v7(),
        Some(s) => uuid::Uuid::parse_str(s).unwrap_or_else(|_| crate::service::ingest::stable_id(&format!("{index}\u{0}{s}"))),
    }
}

async fn run_bulk(node: &crate::handle::NodeHandle, default_index: Option<&str>, refresh: Option<&str>, body: &[u8]) -> HttpResponse {
    let started = Instant::now();
    let wait = match crate::service::ingest::wait_asked(refresh) {
        Ok(w) => w,
        Err(e) => return error_response(400, "illegal_argument_exception", &format!("refresh: {e}")),
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return error_response(400, "illegal_argument_exception", "the bulk body is not UTF-8");
    };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut items: Vec<Item> = Vec::new();
    // Per stream: the documents to send, with their item's position.
    let mut batches: BTreeMap<String, Vec<(usize, gossamer_schemas::Event)>> = BTreeMap::new();
    while let Some(line) = lines.next() {
        let action: Map<String, Value> = match serde_json::from_str(line) {
            Ok(a) => a,
            Err(e) => return error_response(400, "x_content_parse_exception", &format!("an action line is not a JSON object: {e}")),
        };
        let Some((name, meta)) = action.into_iter().next() else {
            return error_response(400, "illegal_argument_exception", "an action line names no action");
        };
        let source = if name == "delete" { None } else { lines.next() };
        let index = meta.get("_index").and_then(Value::as_str).or(default_index).unwrap_or("").to_string();
        let given_id = meta.get("_id").and_then(Value::as_str).map(String::from);
        let id = event_id(&index, given_id.as_deref());
        let mut item = Item { action: name.clone(), index: index.clone(), id: given_id.unwrap_or_else(|| id.to_string()), outcome: Ok(()) };
        item.outcome = match (name.as_str(), source) {
            ("index" | "create", Some(doc)) => prepare(node, &index, id, doc).map(|doc| {
                batches.entry(index.clone()).or_default().push((items.len(), doc));
            }),
            ("index" | "create", None) => Err((400, "action_request_validation_exception", "the action has no document line".into())),
            (other, _) => Err((
                400,
                "action_request_validation_exception",
                format!("the `{other}` action is not supported: Gossamer keeps logs, and takes `index` and `create` (delete through its own API)"),
            )),
        };
        items.push(item);
    }
    if items.is_empty() {
        return error_response(400, "action_request_validation_exception", "Validation Failed: 1: no requests added;");
    }
    let sends = batches.into_iter().map(|(stream, docs)| send(node, stream, docs));
    let mut stored_at = crate::service::ingest::Positions::new();
    for (positions, outcome) in futures::future::join_all(sends).await.into_iter().flatten() {
        if let Ok(at) = &outcome {
            crate::service::ingest::merge_positions(&mut stored_at, at);
        }
        for p in positions {
            items[p].outcome = outcome.clone().map(|_| ());
        }
    }
    let errors = items.iter().any(|i| i.outcome.is_err());
    let mut reply = HttpResponse::Ok();
    reply.insert_header(PRODUCT);
    let mut extra = String::new();
    if let Some(timeout) = wait {
        // Elasticsearch's clients ignore a key they do not know; the header says it too.
        let waited = crate::service::query::wait_queryable(node, &stored_at, timeout).await;
        if !waited.queryable {
            tracing::warn!(reason = %waited.explain(), "bulk-wait-timed-out");
            reply.insert_header(("X-Gossamer-Wait", waited.explain()));
        }
        extra = format!(r#","forced_refresh":{},"gossamer_wait":{}"#, waited.queryable, serde_json::to_string(&waited).unwrap_or_default());
    }
    // Elasticsearch's order: took, errors, items.
    let mut body = String::with_capacity(64 + items.len() * 200);
    body.push_str(&format!(r#"{{"took":{},"errors":{errors}{extra},"items":["#, started.elapsed().as_millis()));
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        item.write_json(i, &mut body);
    }
    body.push_str("]}");
    reply.content_type("application/json").body(body)
}

/// A document read into its event (with its event id), or why it is refused.
fn prepare(node: &crate::handle::NodeHandle, index: &str, id: uuid::Uuid, doc: &str) -> Result<gossamer_schemas::Event, (u16, &'static str, String)> {
    let most = node.cfg.limits.max_payload_bytes;
    if doc.len() > most {
        return Err((413, "document_parsing_exception", format!("the document is {} bytes, over the {most}-byte limit (limits.max_payload_bytes)", doc.len())));
    }
    if index.is_empty() {
        return Err((400, "action_request_validation_exception", "index is missing".into()));
    }
    if !gossamer_schemas::event::is_valid_stream(index) {
        return Err((400, "invalid_index_name_exception", format!("Invalid index name [{index}]: Gossamer streams are dot-separated tokens of [A-Za-z0-9_-]")));
    }
    let mut obj: Map<String, Value> = match serde_json::from_str(doc) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err((400, "mapper_parsing_exception", "the document is not a JSON object".into())),
        Err(e) => return Err((400, "document_parsing_exception", format!("the document is not valid JSON: {e}"))),
    };
    // A document's own `id` is a field here: the event's id is the `_id`'s.
    if let Some(own) = obj.remove("id") {
        match obj.entry("fields").or_insert_with(|| Value::Object(Map::new())) {
            Value::Object(f) => {
                f.entry("id").or_insert(own);
            }
            _ => return Err((400, "mapper_parsing_exception", "`fields` must be an object".into())),
        }
    }
    obj.insert("id".into(), Value::String(id.to_string()));
    // The ingest limits and decoding, one document at a time: a bad one is refused alone.
    crate::service::ingest::check_object(node, index, Value::Object(obj)).map_err(|e| (400, "document_parsing_exception", e.to_string()))
}

type Outcome = Result<crate::service::ingest::Positions, (u16, &'static str, String)>;

/// Sends one stream's documents through the ingest path; each item's outcome in
/// Elasticsearch's terms.
async fn send(node: &crate::handle::NodeHandle, stream: String, docs: Vec<(usize, gossamer_schemas::Event)>) -> Vec<(Vec<usize>, Outcome)> {
    use crate::service::ingest::Refusal;
    crate::service::ingest::send_events(node, &stream, docs)
        .await
        .into_iter()
        .map(|(positions, sent)| {
            let outcome = sent.map_err(|r| match r {
                Refusal::Busy(why) => (429, "es_rejected_execution_exception", why),
                Refusal::Refused(why) => (400, "document_parsing_exception", why),
                Refusal::Unavailable(why) => (503, "unavailable_shards_exception", why),
            });
            (positions, outcome)
        })
        .collect()
}
