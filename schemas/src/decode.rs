//! Turning a published payload into events.
//!
//! Accepted: a JSON object, a JSON array of objects (a batch), NDJSON, a MessagePack map
//! or array of maps (by `Content-Type: application/msgpack` or detected), or a plain
//! text line that becomes the message. A payload is decoded whole or not at all: one
//! bad event makes the whole payload a dead letter, so a batch is atomic.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::{normalize_level, Event};
use crate::time::{from_unix_integer, from_unix_number, parse_rfc3339};

/// Why a payload could not be made into events. The `Display` text is what lands in the
/// dead letter's `Gossamer-Error` header.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid MessagePack: {0}")]
    MsgPack(String),
    #[error("payload is neither UTF-8 text, JSON nor MessagePack")]
    NotText,
    #[error("event {index}: {reason}")]
    Event { index: usize, reason: String },
    #[error("invalid stream name {0:?}: expected dot-separated tokens of [A-Za-z0-9_-]")]
    Stream(String),
    #[error("{what}: {value} is over the limit of {limit} (limits.{name})")]
    Limit { what: &'static str, value: usize, limit: usize, name: &'static str },
}

/// What one payload and one event may hold. Each limit is configurable (the `limits`
/// section of the config file); going over one dead-letters the payload with a reason
/// that names it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_batch_events: usize,
    pub max_message_bytes: usize,
    pub max_labels: usize,
    pub max_label_key_bytes: usize,
    pub max_label_value_bytes: usize,
    /// Nesting of objects and arrays in `fields`.
    pub max_field_depth: usize,
    pub max_stream_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 4 << 20,
            max_batch_events: 10_000,
            max_message_bytes: 256 << 10,
            max_labels: 64,
            max_label_key_bytes: 128,
            max_label_value_bytes: 1024,
            max_field_depth: 16,
            max_stream_bytes: 256,
        }
    }
}

impl Limits {
    fn check(value: usize, limit: usize, what: &'static str, name: &'static str) -> Result<(), DecodeError> {
        if value > limit {
            return Err(DecodeError::Limit { what, value, limit, name });
        }
        Ok(())
    }

    /// An event's own limits: message, labels, field nesting.
    pub fn check_event(&self, e: &Event) -> Result<(), DecodeError> {
        Self::check(e.message.len(), self.max_message_bytes, "message bytes", "max_message_bytes")?;
        Self::check(e.labels.len(), self.max_labels, "labels", "max_labels")?;
        for (k, v) in &e.labels {
            Self::check(k.len(), self.max_label_key_bytes, "label name bytes", "max_label_key_bytes")?;
            Self::check(v.len(), self.max_label_value_bytes, "label value bytes", "max_label_value_bytes")?;
        }
        let depth = e.fields.values().map(depth_of).max().unwrap_or(0) + 1;
        Self::check(depth, self.max_field_depth, "field nesting depth", "max_field_depth")
    }
}

/// How deeply a value nests (a scalar is 0).
fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// What makes assigned ids deterministic: the same message redelivered gets the same
/// ids, so it is stored once. `ms` is the message's publish time (also the receive time
/// used when an event has no `ts`), `seq` its position in the input stream.
#[derive(Debug, Clone, Copy)]
pub struct IdSeed {
    pub received_ns: i64,
    pub seq: u64,
}

impl IdSeed {
    /// A UUIDv7 whose time is the receive time and whose random part is derived from the
    /// sequence and the event's index in the payload.
    pub fn id_for(&self, index: usize) -> Uuid {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.seq.to_be_bytes());
        key[8..].copy_from_slice(&(index as u64).to_be_bytes());
        let h = xxhash_rust::xxh3::xxh3_128(&key).to_be_bytes();
        let mut rand = [0u8; 10];
        rand.copy_from_slice(&h[..10]);
        let ms = (self.received_ns.max(0) / 1_000_000) as u64;
        uuid::Builder::from_unix_timestamp_millis(ms, &rand).into_uuid()
    }
}

/// Decodes `payload` published on `stream`. `content_type` is the message's
/// `Content-Type` header, if any.
pub fn decode_payload(
    stream: &str,
    payload: &[u8],
    content_type: Option<&str>,
    seed: IdSeed,
    limits: &Limits,
) -> Result<Vec<Event>, DecodeError> {
    Limits::check(stream.len(), limits.max_stream_bytes, "stream name bytes", "max_stream_bytes")?;
    if !crate::event::is_valid_stream(stream) {
        return Err(DecodeError::Stream(stream.to_string()));
    }
    Limits::check(payload.len(), limits.max_payload_bytes, "payload bytes", "max_payload_bytes")?;
    let values = crate::shippers::reshape_all(decode_values(payload, content_type)?);
    Limits::check(values.len(), limits.max_batch_events, "events in the batch", "max_batch_events")?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let e = event_from_value(stream, v, seed, i).map_err(|reason| DecodeError::Event { index: i, reason })?;
            limits.check_event(&e).map_err(|err| DecodeError::Event { index: i, reason: err.to_string() })?;
            Ok(e)
        })
        .collect()
}

/// The checks of [`decode_payload`] on a stream name alone.
pub fn check_stream(stream: &str, limits: &Limits) -> Result<(), DecodeError> {
    Limits::check(stream.len(), limits.max_stream_bytes, "stream name bytes", "max_stream_bytes")?;
    if !crate::event::is_valid_stream(stream) {
        return Err(DecodeError::Stream(stream.to_string()));
    }
    Ok(())
}

/// One event object, read as [`decode_payload`] reads each of a payload's (a shipper's
/// shape reshaped, the keys' aliases, the limits), for a door that checks documents one
/// by one: its [`to_ingest_json`] is then read back by ingest to the same event.
pub fn decode_object(stream: &str, v: Value, seed: IdSeed, limits: &Limits) -> Result<Event, DecodeError> {
    check_stream(stream, limits)?;
    let mut values = crate::shippers::reshape_all(vec![v]);
    if values.len() != 1 {
        return Err(DecodeError::Event { index: 0, reason: format!("a document must be one event, not {}", values.len()) });
    }
    let e = event_from_value(stream, values.remove(0), seed, 0).map_err(|reason| DecodeError::Event { index: 0, reason })?;
    limits.check_event(&e).map_err(|err| DecodeError::Event { index: 0, reason: err.to_string() })?;
    Ok(e)
}

/// An event as JSON that ingest reads back to the same event: its id, the time in RFC
/// 3339 with nanoseconds (a Unix number would be read by its size), level, message,
/// labels and fields.
pub fn to_ingest_json(e: &Event) -> String {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        id: Uuid,
        ts: String,
        level: &'a str,
        message: &'a str,
        labels: &'a BTreeMap<String, String>,
        fields: &'a Map<String, Value>,
    }
    serde_json::to_string(&Out {
        id: e.id,
        ts: crate::time::format_rfc3339(e.ts),
        level: &e.level,
        message: &e.message,
        labels: &e.labels,
        fields: &e.fields,
    })
    .unwrap_or_default()
}

fn is_msgpack_content_type(ct: &str) -> bool {
    let ct = ct.trim().to_ascii_lowercase();
    ct.starts_with("application/msgpack") || ct.starts_with("application/x-msgpack")
}

/// True when the first byte opens a MessagePack map or array and cannot open text.
fn looks_like_msgpack(b: u8) -> bool {
    matches!(b, 0x80..=0x9f | 0xdc..=0xdf)
}

/// The payload as a list of JSON values, one per event (objects, or strings for
/// message-only events).
fn decode_values(payload: &[u8], content_type: Option<&str>) -> Result<Vec<Value>, DecodeError> {
    if payload.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DecodeError::Empty);
    }
    if content_type.is_some_and(is_msgpack_content_type) {
        return decode_msgpack(payload);
    }
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(_) if looks_like_msgpack(payload[0]) => return decode_msgpack(payload),
        Err(_) => return Err(DecodeError::NotText),
    };
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return decode_json_stream(trimmed);
    }
    if opens_json_array(trimmed) {
        let v: Value = serde_json::from_str(trimmed).map_err(|e| DecodeError::Json(e.to_string()))?;
        return match v {
            Value::Array(items) if items.is_empty() => Err(DecodeError::Empty),
            Value::Array(items) => Ok(items),
            _ => unreachable!("a text opening with '[' parses to an array"),
        };
    }
    if looks_like_msgpack(payload[0]) {
        return decode_msgpack(payload);
    }
    let line = text.trim_end_matches(['\n', '\r']);
    Ok(vec![Value::String(line.to_string())])
}

/// `[` followed by `{`, `"` or `]` is a JSON array, and so is `[[` followed by a number
/// (Fluent Bit's pairs); `[INFO] started` is a text line.
fn opens_json_array(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('[').map(str::trim_start) else { return false };
    match rest.chars().next() {
        Some('{' | '"' | ']') => true,
        Some('[') => rest[1..].trim_start().starts_with(|c: char| c.is_ascii_digit() || c == '-'),
        _ => false,
    }
}

/// One JSON object, or several separated by whitespace (NDJSON).
fn decode_json_stream(text: &str) -> Result<Vec<Value>, DecodeError> {
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let v = v.map_err(|e| DecodeError::Json(e.to_string()))?;
        out.push(v);
    }
    Ok(out)
}

fn decode_msgpack(payload: &[u8]) -> Result<Vec<Value>, DecodeError> {
    let mut rest: &[u8] = payload;
    let v: Value = serde::Deserialize::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))
        .map_err(|e| DecodeError::MsgPack(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::MsgPack(format!("{} trailing bytes after the value", rest.len())));
    }
    match v {
        Value::Array(items) if items.is_empty() => Err(DecodeError::Empty),
        Value::Array(items) => Ok(items),
        Value::Object(_) => Ok(vec![v]),
        other => Err(DecodeError::MsgPack(format!("expected a map or an array of maps, found {}", kind(&other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const TS_KEYS: [&str; 4] = ["ts", "timestamp", "time", "@timestamp"];
const LEVEL_KEYS: [&str; 3] = ["level", "severity", "lvl"];
const MESSAGE_KEYS: [&str; 3] = ["message", "msg", "log"];

fn take_first(obj: &mut Map<String, Value>, keys: &[&str]) -> Option<(String, Value)> {
    keys.iter().find_map(|k| obj.remove(*k).map(|v| (k.to_string(), v)))
}

fn event_from_value(stream: &str, v: Value, seed: IdSeed, index: usize) -> Result<Event, String> {
    let mut obj = match v {
        Value::Object(o) => o,
        Value::String(s) => {
            // A plain-text line: the level it says it has, if any.
            let mut o = Map::new();
            if let Some(level) = crate::levels::detect_level(&s) {
                o.insert("level".into(), Value::String(level));
            }
            o.insert("message".into(), Value::String(s));
            o
        }
        other => return Err(format!("expected an object, found {}", kind(&other))),
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => seed.id_for(index),
        Some(Value::String(s)) => Uuid::parse_str(&s).map_err(|_| format!("`id` {s:?} is not a UUID"))?,
        Some(other) => return Err(format!("`id` must be a UUID string, found {}", kind(&other))),
    };
    let ts = match take_first(&mut obj, &TS_KEYS) {
        None | Some((_, Value::Null)) => seed.received_ns,
        Some((_, Value::String(s))) => match s.trim().parse::<i64>() {
            Ok(n) => from_unix_integer(n),
            Err(_) => parse_rfc3339(&s).ok_or_else(|| format!("timestamp {s:?} is neither RFC 3339 nor a Unix number"))?,
        },
        Some((k, Value::Number(n))) => match n.as_i64() {
            Some(i) => from_unix_integer(i),
            None => n
                .as_f64()
                .and_then(from_unix_number)
                .ok_or_else(|| format!("`{k}` {n} is out of range"))?,
        },
        Some((k, other)) => return Err(format!("`{k}` must be a string or a number, found {}", kind(&other))),
    };
    let level = match take_first(&mut obj, &LEVEL_KEYS) {
        // No level is kept as none (the empty string), shown as null.
        None | Some((_, Value::Null)) => String::new(),
        Some((_, Value::String(s))) => normalize_level(&s),
        Some((_, Value::Number(n))) => normalize_level(&n.to_string()),
        Some((k, other)) => return Err(format!("`{k}` must be a string or a number, found {}", kind(&other))),
    };
    let message = match take_first(&mut obj, &MESSAGE_KEYS) {
        None | Some((_, Value::Null)) => String::new(),
        Some((_, Value::String(s))) => s,
        Some((_, other)) => other.to_string(),
    };
    let labels = match obj.remove("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(l)) => l
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(n) => Ok((k, n.to_string())),
                Value::Bool(b) => Ok((k, b.to_string())),
                other => Err(format!("label `{k}` must be a string, found {}", kind(&other))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("`labels` must be an object, found {}", kind(&other))),
    };
    let mut fields = match obj.remove("fields") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(f)) => f,
        Some(other) => return Err(format!("`fields` must be an object, found {}", kind(&other))),
    };
    // The subject names the stream; any other top-level key is a field.
    obj.remove("stream");
    for (k, v) in obj {
        fields.entry(k).or_insert(v);
    }
    Ok(Event { id, ts, stream: stream.to_string(), level, message, labels, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: IdSeed = IdSeed { received_ns: 1_780_000_000_000_000_000, seq: 7 };

    fn one(payload: &[u8]) -> Event {
        let mut v = decode_payload("app.api", payload, None, SEED, &Limits::default()).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn an_event_written_for_ingest_reads_back_the_same() {
        let raw = br#"{"@timestamp":"2026-12-01T10:00:00.123456789Z","severity":"WARNING","msg":"disk low","labels":{"host":"a"},"free_mb":12,"nested":{"x":[1,2]}}"#;
        let e = one(raw);
        let v: Value = serde_json::from_slice(raw).unwrap();
        let once = decode_object("app.api", v, SEED, &Limits::default()).unwrap();
        let again = one(to_ingest_json(&once).as_bytes());
        assert_eq!(again, once);
        assert_eq!((e.ts, e.level.as_str(), e.labels.clone(), e.fields.clone()), (again.ts, again.level.as_str(), again.labels, again.fields));
        // An early time, which a Unix number of that size would misread, survives too.
        let early = Event { ts: 1_500, ..once.clone() };
        assert_eq!(one(to_ingest_json(&early).as_bytes()).ts, 1_500);
        assert!(decode_object("bad stream", Value::Null, SEED, &Limits::default()).is_err());
    }

    #[test]
    fn json_object_is_normalised() {
        let e = one(br#"{"id":"0193a9c2-7d4e-7b1a-9f3e-2c4d5e6f7a8b","ts":"2026-11-25T10:00:00Z","level":"WARNING","msg":"disk low","labels":{"host":"a","port":8080},"fields":{"free":12},"extra":true}"#);
        assert_eq!(e.id.to_string(), "0193a9c2-7d4e-7b1a-9f3e-2c4d5e6f7a8b");
        assert_eq!(crate::time::format_rfc3339(e.ts), "2026-11-25T10:00:00.000000000Z");
        assert_eq!(e.level, "warn");
        assert_eq!(e.message, "disk low");
        assert_eq!(e.labels["port"], "8080");
        assert_eq!(e.fields["free"], 12);
        assert_eq!(e.fields["extra"], true);
        assert_eq!(e.stream, "app.api");
    }

    #[test]
    fn missing_id_and_ts_are_assigned_deterministically() {
        let a = one(b"plain text line\n");
        let b = one(b"plain text line\n");
        assert_eq!(a.id, b.id, "a redelivered message gets the same ids");
        assert_eq!(a.id.get_version_num(), 7);
        assert_eq!(a.ts, SEED.received_ns);
        assert_eq!(a.message, "plain text line");
        assert_eq!(a.level, "", "a line without a level keeps none");
        assert_eq!(a.to_json()["level"], Value::Null);
        assert_eq!(one(br#"{"message":"m","level":null}"#).level, "");
    }

    #[test]
    fn batches_ndjson_and_arrays() {
        let nd = decode_payload("s", b"{\"message\":\"a\"}\n{\"message\":\"b\"}\n", None, SEED, &Limits::default()).unwrap();
        assert_eq!(nd.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_ne!(nd[0].id, nd[1].id);
        let arr = decode_payload("s", br#"[{"message":"a","ts":1780000000123},"b"]"#, None, SEED, &Limits::default()).unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0].ts, 1_780_000_000_123_000_000);
        assert_eq!(arr[1].message, "b");
    }

    #[test]
    fn text_that_opens_with_a_bracket_is_text() {
        assert_eq!(one(b"[INFO] server started").message, "[INFO] server started");
    }

    #[test]
    fn msgpack_maps_and_arrays_are_detected_or_declared() {
        let v = serde_json::json!({"message": "from msgpack", "level": 3, "labels": {"k": "v"}});
        let bytes = rmp_serde::to_vec_named(&v).unwrap();
        let e = one(&bytes);
        assert_eq!((e.message.as_str(), e.level.as_str()), ("from msgpack", "error"));
        let arr = rmp_serde::to_vec_named(&serde_json::json!([v, v])).unwrap();
        assert_eq!(decode_payload("s", &arr, Some("application/msgpack"), SEED, &Limits::default()).unwrap().len(), 2);
    }

    #[test]
    fn malformed_payloads_say_why() {
        let err = |p: &[u8]| decode_payload("s", p, None, SEED, &Limits::default()).unwrap_err().to_string();
        assert!(err(b"{\"message\": ").starts_with("invalid JSON"), "{}", err(b"{\"message\": "));
        assert!(err(b"{\"a\":1}\n{oops}").starts_with("invalid JSON"));
        assert_eq!(err(b"  \n"), "empty payload");
        assert_eq!(err(&[0xff, 0xfe, 0x00]), "payload is neither UTF-8 text, JSON nor MessagePack");
        assert!(err(&[0x82, 0xa1]).starts_with("invalid MessagePack"));
        assert!(err(br#"{"id":"nope"}"#).contains("is not a UUID"));
        assert!(err(br#"{"ts":"yesterday"}"#).contains("neither RFC 3339"));
        assert!(err(br#"[{"message":"ok"}, 5]"#).starts_with("event 1: expected an object"));
        assert!(err(br#"{"labels":{"a":{"b":1}}}"#).contains("label `a` must be a string"));
        let bad_stream = decode_payload("a..b", b"x", None, SEED, &Limits::default()).unwrap_err();
        assert!(matches!(bad_stream, DecodeError::Stream(_)));
    }

    #[test]
    fn every_limit_is_named_when_exceeded() {
        let small = Limits {
            max_payload_bytes: 200,
            max_batch_events: 2,
            max_message_bytes: 10,
            max_labels: 1,
            max_label_key_bytes: 3,
            max_label_value_bytes: 3,
            max_field_depth: 2,
            max_stream_bytes: 8,
        };
        let err = |stream: &str, p: &[u8]| decode_payload(stream, p, None, SEED, &small).unwrap_err().to_string();
        assert_eq!(err("s", &[b' '; 201]), "payload bytes: 201 is over the limit of 200 (limits.max_payload_bytes)");
        assert!(err("s", b"[\"a\",\"b\",\"c\"]").contains("limits.max_batch_events"));
        assert!(err("s", b"{\"message\":\"far too long\"}").contains("limits.max_message_bytes"));
        assert!(err("s", br#"{"labels":{"a":"1","b":"2"}}"#).contains("limits.max_labels"));
        assert!(err("s", br#"{"labels":{"long":"1"}}"#).contains("limits.max_label_key_bytes"));
        assert!(err("s", br#"{"labels":{"a":"long"}}"#).contains("limits.max_label_value_bytes"));
        assert!(err("s", br#"{"fields":{"a":{"b":{"c":1}}}}"#).contains("limits.max_field_depth"));
        assert!(err("much.too.long", b"x").contains("limits.max_stream_bytes"));
        assert!(err("s", br#"[{"message":"ok"},{"fields":{"a":[[1]]}}]"#).starts_with("event 1: "));
        decode_payload("s", br#"{"message":"ok","labels":{"a":"b"},"fields":{"a":{"b":1}}}"#, None, SEED, &small).unwrap();
    }

    #[test]
    fn syslog_numeric_levels() {
        assert_eq!(one(br#"{"level":0}"#).level, "fatal");
        assert_eq!(one(br#"{"severity":"7"}"#).level, "debug");
    }
}
