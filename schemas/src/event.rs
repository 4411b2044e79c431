//! The log event, level normalisation and shard routing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::time::format_rfc3339;

/// One stored log event. Serialised with MessagePack in the shard log and on disk; shown
/// to users as JSON by [`Event::to_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Idempotency key: the same id is stored once.
    pub id: Uuid,
    /// Event time, nanoseconds since the Unix epoch.
    pub ts: i64,
    /// From the subject: `logs.payments.api` gives `payments.api`.
    pub stream: String,
    /// Normalised by [`normalize_level`]; empty when the event came without a level
    /// (null in JSON, found by `-level:*`).
    pub level: String,
    pub message: String,
    pub labels: BTreeMap<String, String>,
    pub fields: Map<String, Value>,
}

impl Event {
    /// The §9 output form: `{"id","ts","stream","level","message","labels","fields"}`
    /// with `ts` as RFC 3339 in UTC with nanoseconds and `level` null when there is none.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "ts": format_rfc3339(self.ts),
            "stream": self.stream,
            "level": if self.level.is_empty() { Value::Null } else { Value::from(self.level.as_str()) },
            "message": self.message,
            "labels": self.labels,
            "fields": self.fields,
        })
    }

    /// A field by name; a dotted name walks into nested objects when no top-level
    /// field has that exact name.
    pub fn field(&self, name: &str) -> Option<&Value> {
        if let Some(v) = self.fields.get(name) {
            return Some(v);
        }
        let mut parts = name.split('.');
        let mut cur = self.fields.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    }
}

/// The §9 level names: case-insensitive aliases and syslog's numeric severities map to
/// trace, debug, info, warn, error or fatal; anything else is kept, lowercased.
pub fn normalize_level(raw: &str) -> String {
    let lower = raw.trim().to_lowercase();
    let canonical = match lower.as_str() {
        "trace" | "verbose" | "v" => "trace",
        "debug" | "d" | "7" => "debug",
        "info" | "notice" | "informational" | "i" | "5" | "6" => "info",
        "warn" | "warning" | "w" | "4" => "warn",
        "error" | "err" | "severe" | "e" | "3" => "error",
        "fatal" | "critical" | "crit" | "alert" | "emerg" | "panic" | "f" | "0" | "1" | "2" => {
            "fatal"
        }
        _ => return lower,
    };
    canonical.to_string()
}

/// `shard = hash(stream, id) mod n`, with a hash that is stable across versions and
/// platforms (xxh3), so every node routes the same way.
pub fn shard_for(stream: &str, id: &Uuid, shards: u32) -> u32 {
    let mut buf = Vec::with_capacity(stream.len() + 17);
    buf.extend_from_slice(stream.as_bytes());
    buf.push(0);
    buf.extend_from_slice(id.as_bytes());
    (xxhash_rust::xxh3::xxh3_64(&buf) % u64::from(shards.max(1))) as u32
}

/// True when `name` is a valid stream: dot-separated tokens of `[A-Za-z0-9_-]`.
pub fn is_valid_stream(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|t| {
            !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_section_9_table() {
        for (raw, want) in [
            ("VERBOSE", "trace"),
            ("D", "debug"),
            ("Notice", "info"),
            ("WARNING", "warn"),
            ("severe", "error"),
            ("EMERG", "fatal"),
            ("0", "fatal"),
            ("3", "error"),
            ("4", "warn"),
            ("6", "info"),
            ("7", "debug"),
            ("Audit", "audit"),
        ] {
            assert_eq!(normalize_level(raw), want, "{raw}");
        }
    }

    #[test]
    fn routing_is_stable_and_in_range() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let a = shard_for("payments.api", &id, 64);
        assert_eq!(a, shard_for("payments.api", &id, 64));
        assert!(a < 64);
    }

    #[test]
    fn stream_names_are_subject_tokens() {
        assert!(is_valid_stream("payments.api-v2_x"));
        assert!(!is_valid_stream("payments..api"));
        assert!(!is_valid_stream("pay ments"));
        assert!(!is_valid_stream(""));
    }

    #[test]
    fn dotted_field_names_walk_into_objects() {
        let mut fields = Map::new();
        fields.insert("http".into(), serde_json::json!({"status": 503}));
        let e = Event {
            id: Uuid::nil(),
            ts: 0,
            stream: "s".into(),
            level: "info".into(),
            message: String::new(),
            labels: BTreeMap::new(),
            fields,
        };
        assert_eq!(e.field("http.status"), Some(&serde_json::json!(503)));
        assert_eq!(e.field("http.missing"), None);
    }
}
