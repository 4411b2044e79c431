//! A notification queue's definition, as users write it and as it is kept in the
//! queues bucket, and its checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What `POST /api/v1/queues` takes and the queues bucket keeps (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// Also the last token of its subject and the name of its JetStream consumer.
    #[serde(default)]
    pub name: String,
    /// A query in the §9 syntax: the events it matches are delivered.
    pub filter: String,
    /// Deliveries of one message before it goes to the dead-letter stream.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// How long a subscriber has to ack a delivery before it comes again (`30s`).
    #[serde(default = "default_ack_wait")]
    pub ack_wait: String,
    /// Waits between redeliveries (`["1s", "10s"]`); fewer than `max_deliver`.
    #[serde(default)]
    pub backoff: Vec<String>,
    /// `now` (the default): events stored from now on; or an RFC 3339 time: events
    /// stored since then, as far back as the shard log reaches.
    #[serde(default = "default_start")]
    pub start: String,
    /// Set when the queue is created.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Set when a queue that starts `now` is created: the shard-log sequence its reader
    /// began at, where a member taking the queue over starts if the reader is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_start: Option<u64>,
}

fn default_max_deliver() -> i64 {
    5
}

fn default_ack_wait() -> String {
    "30s".into()
}

fn default_start() -> String {
    "now".into()
}

/// `PUT /api/v1/queues/{name}`: the fields to change; the others keep their values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueUpdate {
    pub name: Option<String>,
    pub filter: Option<String>,
    pub max_deliver: Option<i64>,
    pub ack_wait: Option<String>,
    pub backoff: Option<Vec<String>>,
}

impl QueueUpdate {
    /// `old` with these changes.
    pub fn applied_to(self, mut old: QueueSpec) -> QueueSpec {
        if let Some(v) = self.filter {
            old.filter = v;
        }
        if let Some(v) = self.max_deliver {
            old.max_deliver = v;
        }
        if let Some(v) = self.ack_wait {
            old.ack_wait = v;
        }
        if let Some(v) = self.backoff {
            old.backoff = v;
        }
        old
    }
}

/// A spec that passed its checks, with its values read.
#[derive(Clone)]
pub struct Checked {
    pub spec: QueueSpec,
    pub filter: std::sync::Arc<gossamer_query::Expr>,
    pub ack_wait: Duration,
    pub backoff: Vec<Duration>,
    /// `None`: from now.
    pub since_ns: Option<i64>,
}

/// Checks a queue name: a single subject token that is also a valid consumer name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("a queue name has 1 to 64 characters; {name:?} has {}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(format!(
            "queue name {name:?} is not a valid subject token: {c:?} is not allowed (letters, digits, '_' and '-' only)"
        ));
    }
    Ok(())
}

fn duration(what: &str, s: &str) -> Result<Duration, String> {
    gossamer_query::agg::parse_duration(s.trim())
        .map(|ns| Duration::from_nanos(ns as u64))
        .ok_or_else(|| format!("invalid `{what}` {s:?}: use a duration like 500ms, 30s, 5m"))
}

impl QueueSpec {
    /// Checks every field; the error names the field and the problem (for the filter,
    /// the column).
    pub fn check(&self) -> Result<Checked, String> {
        check_name(&self.name)?;
        if self.filter.trim().is_empty() {
            return Err("`filter` is empty: give a query (`stream:*` matches every event)".into());
        }
        let filter = gossamer_query::parse(&self.filter).map_err(|e| format!("invalid `filter`: {e}"))?;
        if !(1..=1000).contains(&self.max_deliver) {
            return Err(format!("`max_deliver` must be between 1 and 1000, got {}", self.max_deliver));
        }
        let ack_wait = duration("ack_wait", &self.ack_wait)?;
        if ack_wait < Duration::from_secs(1) || ack_wait > Duration::from_secs(12 * 3600) {
            return Err(format!("`ack_wait` must be between 1s and 12h, got {}", self.ack_wait));
        }
        let backoff = self.backoff.iter().map(|b| duration("backoff", b)).collect::<Result<Vec<_>, _>>()?;
        if !backoff.is_empty() && backoff.len() as i64 >= self.max_deliver {
            return Err(format!(
                "`backoff` has {} waits; it needs fewer than `max_deliver` ({})",
                backoff.len(),
                self.max_deliver
            ));
        }
        let since_ns = match self.start.trim() {
            "now" | "" => None,
            t => Some(gossamer_schemas::time::parse_rfc3339(t).ok_or_else(|| {
                format!("invalid `start` {t:?}: use \"now\" or an RFC 3339 time like 2026-11-26T08:00:00Z")
            })?),
        };
        Ok(Checked { spec: self.clone(), filter: std::sync::Arc::new(filter), ack_wait, backoff, since_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, filter: &str) -> QueueSpec {
        serde_json::from_value(serde_json::json!({"name": name, "filter": filter})).unwrap()
    }

    #[test]
    fn defaults_and_good_specs_pass() {
        let c = spec("errors", "level:error").check().unwrap();
        assert_eq!((c.spec.max_deliver, c.ack_wait, c.since_ns), (5, Duration::from_secs(30), None));
        let mut s = spec("replay-1", "stream:app.*");
        s.start = "2026-11-26T08:00:00Z".into();
        s.backoff = vec!["1s".into(), "5s".into()];
        assert!(s.check().unwrap().since_ns.is_some());
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (s, want) in [
            (spec("a.b", "x"), "not a valid subject token"),
            (spec("a*", "x"), "not a valid subject token"),
            (spec("", "x"), "1 to 64"),
            (spec("q", ""), "`filter` is empty"),
            (spec("q", "level:error x:>y"), "column"),
            (QueueSpec { max_deliver: 0, ..spec("q", "x") }, "max_deliver"),
            (QueueSpec { ack_wait: "soon".into(), ..spec("q", "x") }, "ack_wait"),
            (QueueSpec { backoff: vec!["1s".into(); 5], ..spec("q", "x") }, "fewer than"),
            (QueueSpec { start: "yesterday".into(), ..spec("q", "x") }, "start"),
        ] {
            let e = s.check().err().unwrap_or_else(|| panic!("{s:?} passed"));
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }
}
