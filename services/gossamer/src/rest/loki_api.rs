//! The Loki door, write side: `POST /loki/api/v1/push` with Loki's JSON (gzip-encoded
//! or not) or its `logproto.PushRequest` in protobuf, snappy-compressed, as Grafana's
//! and Loki's shippers send them. 204 once every line is in the shard log (as durable as
//! a NATS ingest request); 400 with a text error for a body it cannot read.
//!
//! A stream's labels become the events' labels. The Gossamer stream is the value of the
//! first of the node's `loki_stream_labels` (`service_name`, `job`, `app` unless set;
//! made into a valid stream name), else `loki`.
//! The level is a `level`, `detected_level` or `severity` label or structured-metadata
//! entry, else the one the line says it has; structured metadata become fields. Each
//! line's id is a hash of its labels, time and text, so a retried push stores nothing
//! twice (Loki too keeps one of two identical lines at one time in one stream).
//!
//! Read-your-writes: with `X-Gossamer-Wait: queryable` (or a duration), or `?wait=`,
//! the 204 comes once every line is queryable on its replicas; a 202 with the reason
//! when that took longer than the wait.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use crate::rest::common::Node;

const LEVEL_KEYS: [&str; 3] = ["level", "detected_level", "severity"];

/// Loki's push message (`pkg/push/push.proto`), the fields a client sends.
pub(crate) mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPair>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

/// One stream of a push, whichever encoding it came in.
struct PushStream {
    labels: BTreeMap<String, String>,
    /// (time in ns, line, structured metadata)
    entries: Vec<(i64, String, BTreeMap<String, String>)>,
}

fn bad(reason: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::BadRequest().content_type("text/plain; charset=utf-8").body(format!("{reason}\n"))
}

/// Parses a Prometheus-style label set: `{app="web", level="error"}`.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = text.trim().strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or_else(|| format!("labels {text:?} are not {{name=\"value\", ...}}"))?;
    let mut labels = BTreeMap::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=').ok_or_else(|| format!("expected name=\"value\" in {text:?}"))?;
        let after = after.trim_start().strip_prefix('"').ok_or_else(|| format!("expected a quoted value in {text:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("an unclosed value in {text:?}"))?;
        labels.insert(name.trim().to_string(), value);
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    Ok(labels)
}

fn from_json(body: &[u8]) -> Result<Vec<PushStream>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the push body is not valid JSON: {e}"))?;
    let streams = v["streams"].as_array().ok_or("the push body has no `streams` array")?;
    streams
        .iter()
        .map(|s| {
            let labels: BTreeMap<String, String> = s["stream"]
                .as_object()
                .ok_or("a stream has no `stream` label object")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(String::from).unwrap_or_else(|| v.to_string())))
                .collect();
            let values = s["values"].as_array().ok_or("a stream has no `values` array")?;
            let entries = values
                .iter()
                .map(|e| {
                    let e = e.as_array().ok_or("a value is not [\"<unix ns>\", \"line\"]")?;
                    let ts = e.first().and_then(Value::as_str).and_then(|t| t.parse::<i64>().ok()).ok_or("a value's time is not a string of Unix nanoseconds")?;
                    let line = e.get(1).and_then(Value::as_str).ok_or("a value's line is not a string")?.to_string();
                    let meta = e
                        .get(2)
                        .and_then(Value::as_object)
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))).collect())
                        .unwrap_or_default();
                    Ok((ts, line, meta))
                })
                .collect::<Result<Vec<_>, &str>>()?;
            Ok(PushStream { labels, entries })
        })
        .collect::<Result<Vec<_>, &str>>()
        .map_err(String::from)
}

fn from_protobuf(body: &[u8]) -> Result<Vec<PushStream>, String> {
    use prost::Message;
    let raw = snap::raw::Decoder::new().decompress_vec(body).map_err(|e| format!("the push body is not snappy-compressed: {e}"))?;
    let req = proto::PushRequest::decode(raw.as_slice()).map_err(|e| format!("the push body is not a logproto.PushRequest: {e}"))?;
    req.streams
        .into_iter()
        .map(|s| {
            let labels = parse_labels(&s.labels)?;
            let entries = s
                .entries
                .into_iter()
                .map(|e| {
                    let ts = e.timestamp.map(|t| t.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nanos))).unwrap_or(0);
                    (ts, e.line, e.structured_metadata.into_iter().map(|p| (p.name, p.value)).collect())
                })
                .collect();
            Ok(PushStream { labels, entries })
        })
        .collect()
}

/// The value of the first of `from` (the node's `loki_stream_labels`) a stream has, as
/// a stream name: tokens of `[A-Za-z0-9_-]`, dots kept; `loki` without one.
fn stream_name(labels: &BTreeMap<String, String>, from: &[String]) -> String {
    let Some(value) = from.iter().find_map(|k| labels.get(k)).filter(|v| !v.is_empty()) else {
        return "loki".into();
    };
    let cleaned: String = value.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' { c } else { '_' }).collect();
    let tokens: Vec<&str> = cleaned.split('.').filter(|t| !t.is_empty()).collect();
    if tokens.is_empty() {
        "loki".into()
    } else {
        tokens.join(".")
    }
}

/// The id of a line: a hash of its stream's labels (as JSON), its time and its text.
fn line_id(labels_key: &str, ts: i64, line: &str) -> uuid::Uuid {
    let mut key = String::with_capacity(labels_key.len() + line.len() + 24);
    key.push_str(labels_key);
    key.push('\u{0}');
    key.push_str(&ts.to_string());
    key.push('\u{0}');
    key.push_str(line);
    crate::service::ingest::stable_id(&key)
}

/// `POST /loki/api/v1/push`.
pub async fn push(node: Node, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let content_type = req.headers().get(actix_web::http::header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("");
    let streams = if content_type.starts_with("application/x-protobuf") || content_type.starts_with("application/protobuf") {
        from_protobuf(&body)
    } else {
        from_json(&body)
    };
    let streams = match streams {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let wait = match wait_of(&req) {
        Ok(w) => w,
        Err(e) => return bad(e),
    };
    let mut by_stream: BTreeMap<String, Vec<(usize, gossamer_schemas::Event)>> = BTreeMap::new();
    let mut n = 0;
    for s in streams {
        if s.labels.is_empty() {
            return bad("error at least one label pair is required per stream");
        }
        let stream = stream_name(&s.labels, &node.cfg.loki_stream_labels);
        if let Err(e) = gossamer_schemas::decode::check_stream(&stream, &node.cfg.limits) {
            return bad(format!("stream {stream}: {e}"));
        }
        // The labels' text, hashed into every line's id.
        let labels_key = serde_json::to_string(&s.labels).unwrap_or_default();
        for (ts, line, meta) in s.entries {
            let level = LEVEL_KEYS
                .iter()
                .find_map(|k| s.labels.get(*k).or_else(|| meta.get(*k)))
                .cloned()
                .or_else(|| gossamer_schemas::levels::detect_level(&line));
            let event = gossamer_schemas::Event {
                id: line_id(&labels_key, ts, &line),
                ts,
                stream: stream.clone(),
                level: level.as_deref().map(gossamer_schemas::normalize_level).unwrap_or_default(),
                labels: s.labels.clone(),
                fields: meta.into_iter().map(|(k, v)| (k, Value::String(v))).collect(),
                message: line,
            };
            // Checked alone, so the error names the line that is wrong.
            match node.cfg.limits.check_event(&event) {
                Ok(()) => by_stream.entry(stream.clone()).or_default().push((n, event)),
                Err(e) => return bad(format!("stream {stream}, line {n}: {e}")),
            }
            n += 1;
        }
    }
    let sends = by_stream.into_iter().map(|(stream, events)| {
        let node = &node;
        async move { crate::service::ingest::send_events(node, &stream, events).await }
    });
    let mut stored_at = crate::service::ingest::Positions::new();
    for (_, outcome) in futures::future::join_all(sends).await.into_iter().flatten() {
        use crate::service::ingest::Refusal;
        match outcome {
            Ok(at) => crate::service::ingest::merge_positions(&mut stored_at, &at),
            Err(Refusal::Busy(why)) => return HttpResponse::TooManyRequests().content_type("text/plain; charset=utf-8").body(format!("{why}\n")),
            Err(Refusal::Refused(why)) => return bad(why),
            Err(Refusal::Unavailable(why)) => return HttpResponse::ServiceUnavailable().content_type("text/plain; charset=utf-8").body(format!("{why}\n")),
        }
    }
    if let Some(timeout) = wait {
        let waited = crate::service::query::wait_queryable(&node, &stored_at, timeout).await;
        if !waited.queryable {
            // Stored (a retry stores nothing twice), but the wait is over: say so.
            tracing::warn!(reason = %waited.explain(), "loki-push-wait-timed-out");
            return HttpResponse::Accepted().content_type("text/plain; charset=utf-8").body(format!("{}\n", waited.explain()));
        }
    }
    HttpResponse::NoContent().finish()
}

/// Read-your-writes on a push: the `X-Gossamer-Wait` header or the `wait` parameter.
fn wait_of(req: &HttpRequest) -> Result<Option<std::time::Duration>, String> {
    let header = req.headers().get("X-Gossamer-Wait").and_then(|v| v.to_str().ok()).map(String::from);
    let param: Option<String> = serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .ok()
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "wait").map(|(_, v)| v));
    crate::service::ingest::wait_asked(header.or(param).as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_and_stream_names() {
        let l = parse_labels(r#"{app="web", level="error", path="a \"b\" c"}"#).unwrap();
        assert_eq!((l["app"].as_str(), l["level"].as_str(), l["path"].as_str()), ("web", "error", "a \"b\" c"));
        assert!(parse_labels("app=web").is_err());
        let from = gossamer_config::Config::default().loki_stream_labels;
        assert_eq!(stream_name(&l, &from), "web");
        let l = parse_labels(r#"{service_name="payments/api", job="x"}"#).unwrap();
        assert_eq!(stream_name(&l, &from), "payments_api");
        assert_eq!(stream_name(&parse_labels(r#"{host="h"}"#).unwrap(), &from), "loki");
        assert_eq!(stream_name(&parse_labels(r#"{host="h.1", app="a"}"#).unwrap(), &["host".to_string()]), "h.1");
    }
}
