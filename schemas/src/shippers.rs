//! The payloads log shippers publish to NATS as they are, read as the events they mean:
//!
//! - Fluent Bit's `nats` output: one message per flush, a JSON array of
//!   `[timestamp, {record}]` pairs, the record carrying the `tag`. The time is the
//!   pair's, the tag becomes a label, the record's `log` (or `message`) the message.
//! - Vector's `nats` sink with the `json` codec: an object with `message`, `timestamp`,
//!   `host`, `source_type`, ...; `host` and `source_type` become labels.
//! - Telegraf's `nats` output with the `json` data format: `{"name","tags","fields",
//!   "timestamp"}`, or a batch `{"metrics": [...]}`: the metric's name is the message
//!   (and the `metric` label), its tags the labels, its fields the fields.
//!
//! Anything else passes through unchanged.

use serde_json::{Map, Value};

/// The events of a payload's values, with shippers' shapes made into events' shapes.
pub fn reshape_all(values: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match v {
            // Telegraf's batch form.
            Value::Object(mut o) if o.len() == 1 && o.get("metrics").is_some_and(Value::is_array) => {
                if let Some(Value::Array(metrics)) = o.remove("metrics") {
                    out.extend(metrics.into_iter().map(reshape));
                }
            }
            v => out.push(reshape(v)),
        }
    }
    out
}

fn reshape(v: Value) -> Value {
    match v {
        Value::Array(pair) if is_fluent_bit_pair(&pair) => {
            let mut pair = pair.into_iter();
            let (Some(ts), Some(Value::Object(mut record))) = (pair.next(), pair.next()) else { unreachable!("checked") };
            if !["ts", "timestamp", "time", "@timestamp"].iter().any(|k| record.contains_key(*k)) {
                record.insert("ts".into(), ts);
            }
            if let Some(tag) = record.remove("tag") {
                add_label(&mut record, "tag", tag);
            }
            Value::Object(record)
        }
        Value::Object(o) if is_telegraf_metric(&o) => Value::Object(telegraf(o)),
        Value::Object(mut o) if o.get("source_type").is_some_and(Value::is_string) => {
            for key in ["source_type", "host"] {
                if let Some(v) = o.remove(key) {
                    add_label(&mut o, key, v);
                }
            }
            Value::Object(o)
        }
        v => v,
    }
}

fn is_fluent_bit_pair(a: &[Value]) -> bool {
    a.len() == 2 && a[0].is_number() && a[1].is_object()
}

fn is_telegraf_metric(o: &Map<String, Value>) -> bool {
    o.get("name").is_some_and(Value::is_string)
        && o.get("fields").is_some_and(Value::is_object)
        && o.get("tags").is_some_and(Value::is_object)
        && o.get("timestamp").is_some_and(Value::is_number)
}

fn telegraf(mut o: Map<String, Value>) -> Map<String, Value> {
    if let Some(Value::Object(tags)) = o.remove("tags") {
        for (k, v) in tags {
            add_label(&mut o, &k, v);
        }
    }
    if let Some(name) = o.remove("name") {
        add_label(&mut o, "metric", name.clone());
        o.entry("message").or_insert(name);
    }
    o
}

/// Puts `value` (as text) into the object's `labels` under `key`, unless one is there.
fn add_label(o: &mut Map<String, Value>, key: &str, value: Value) {
    let text = match value {
        Value::String(s) => s,
        Value::Null => return,
        other => other.to_string(),
    };
    let labels = o.entry("labels").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(l) = labels {
        l.entry(key.to_string()).or_insert(Value::String(text));
    }
}

#[cfg(test)]
mod tests {
    use crate::decode::{decode_payload, IdSeed, Limits};

    const SEED: IdSeed = IdSeed { received_ns: 1_700_000_000_000_000_000, seq: 7 };

    fn events(payload: &str) -> Vec<crate::Event> {
        decode_payload("ship", payload.as_bytes(), None, SEED, &Limits::default()).unwrap()
    }

    #[test]
    fn fluent_bit_pairs_are_events_with_their_time_and_tag() {
        let e = events(r#"[[1780000000, {"tag": "app.web", "log": "GET / 200", "pid": 7}], [1780000001.5, {"tag": "app.web", "log": "[error] boom"}]]"#);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].ts, 1_780_000_000_000_000_000);
        assert_eq!(e[1].ts, 1_780_000_001_500_000_000);
        assert_eq!(e[0].message, "GET / 200");
        assert_eq!(e[0].labels["tag"], "app.web");
        assert_eq!(e[0].fields["pid"], 7);
    }

    #[test]
    fn vector_events_keep_host_and_source_type_as_labels() {
        let e = events(r#"{"message": "disk full", "timestamp": "2026-12-01T10:00:00.123Z", "host": "db-1", "source_type": "file", "file": "/var/log/syslog"}"#);
        assert_eq!(e[0].message, "disk full");
        assert_eq!(e[0].labels["host"], "db-1");
        assert_eq!(e[0].labels["source_type"], "file");
        assert_eq!(e[0].fields["file"], "/var/log/syslog");
        assert_eq!(e[0].ts, 1_796_119_200_123_000_000);
    }

    #[test]
    fn telegraf_metrics_one_and_in_a_batch() {
        let one = r#"{"fields": {"usage_idle": 91.5}, "name": "cpu", "tags": {"host": "web-1", "cpu": "cpu0"}, "timestamp": 1780000000}"#;
        let e = events(one);
        assert_eq!(e[0].message, "cpu");
        assert_eq!((e[0].labels["metric"].as_str(), e[0].labels["host"].as_str()), ("cpu", "web-1"));
        assert_eq!(e[0].fields["usage_idle"], 91.5);
        assert_eq!(e[0].ts, 1_780_000_000_000_000_000);
        let batch = format!(r#"{{"metrics": [{one}, {one}, {one}]}}"#);
        assert_eq!(events(&batch).len(), 3);
    }

    #[test]
    fn other_shapes_pass_as_they_were() {
        let e = events(r#"{"message": "m", "host": "h", "name": "n"}"#);
        assert!(e[0].labels.is_empty());
        assert_eq!(e[0].fields["host"], "h");
        assert_eq!(events("[[WARN]] not a pair")[0].message, "[[WARN]] not a pair");
    }
}
