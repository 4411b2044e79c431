//! Aggregations: count, sum, avg, min, max and percentiles of a numeric field, grouped by
//! labels (or `stream`, `level`, a field) and/or time buckets. Each shard builds partial
//! aggregates that merge exactly (count, sum, min, max) or within the sketch's bound
//! (percentiles: DDSketch with 1% relative accuracy).

use std::collections::{BTreeMap, HashMap};

use gossamer_schemas::time::format_rfc3339;
use gossamer_schemas::Event;
use gossamer_storage::ShardStore;
use serde_json::{Map, Value};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::ast::{number_of, Expr};
use crate::plan::{read_matches, Facet, Pick, ShardPlan};
use gossamer_schemas::batch::{LiteEvent, LiteValue};
use crate::timerange::TimeRange;
use crate::QueryError;

/// Relative accuracy of percentiles: a reported pXX is within 1% of a value whose rank
/// is the requested one.
pub const PERCENTILE_RELATIVE_ERROR: f64 = 0.01;
/// Most groups one aggregation may produce.
pub const MAX_GROUPS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggFn {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    /// A quantile in (0, 1).
    Quantile(f64),
}

impl AggFn {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "count" => AggFn::Count,
            "sum" => AggFn::Sum,
            "avg" => AggFn::Avg,
            "min" => AggFn::Min,
            "max" => AggFn::Max,
            _ => match s.strip_prefix('p').and_then(|p| p.parse::<f64>().ok()) {
                Some(p) if p > 0.0 && p < 100.0 => AggFn::Quantile(p / 100.0),
                _ => return Err(format!("unknown `fn` {s:?}: use count, sum, avg, min, max or p1..p99 (p50, p95, p99.9)")),
            },
        })
    }
}

/// What to compute.
#[derive(Debug, Clone)]
pub struct AggSpec {
    pub func: AggFn,
    /// The numeric field (required unless `func` is count).
    pub field: Option<String>,
    /// Group keys: label names, or `stream`, `level`, or a field name.
    pub by: Vec<String>,
    /// Time bucket width in nanoseconds.
    pub bucket_ns: Option<i64>,
    /// Where buckets start: at `bucket_offset_ns` plus a multiple of the width (0: at
    /// multiples of the width since the epoch).
    pub bucket_offset_ns: i64,
    /// Most groups an answer may have ([`MAX_GROUPS`] unless the node's
    /// `query_limits.max_groups` says otherwise).
    pub max_groups: usize,
}

impl AggSpec {
    /// Checks the spec from its request parameters.
    pub fn parse(func: &str, field: Option<&str>, by: Option<&str>, bucket: Option<&str>) -> Result<Self, String> {
        let func = AggFn::parse(func)?;
        let field = field.map(str::trim).filter(|f| !f.is_empty()).map(String::from);
        if func != AggFn::Count && field.is_none() {
            return Err("`field` is required for every `fn` but count".into());
        }
        let by: Vec<String> =
            by.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        let bucket_ns = match bucket.map(str::trim).filter(|b| !b.is_empty()) {
            None => None,
            Some(b) => Some(parse_duration(b).ok_or_else(|| format!("invalid `bucket` {b:?}: use a duration like 30s, 1m, 1h, 1d"))?),
        };
        Ok(Self { func, field, by, bucket_ns, bucket_offset_ns: 0, max_groups: MAX_GROUPS })
    }

    /// The start of the bucket holding time `ts`.
    pub fn bucket_of(&self, ts: i64) -> Option<i64> {
        let w = self.bucket_ns?;
        let o = self.bucket_offset_ns.rem_euclid(w);
        Some((ts - o).div_euclid(w) * w + o)
    }
}

/// Group key `@series`: the event's whole label set as Loki sees it, as a JSON object
/// (its labels, `stream`, and `level` when it has one and no label says otherwise).
pub const SERIES_KEY: &str = "@series";
/// Field `@bytes`: the length of the event's message in bytes.
pub const BYTES_FIELD: &str = "@bytes";

/// The label set of `e` under [`SERIES_KEY`].
pub fn series_labels(e: &Event) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = e.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.entry("stream".into()).or_insert_with(|| e.stream.clone());
    if !e.level.is_empty() {
        labels.entry("level".into()).or_insert_with(|| e.level.clone());
    }
    labels
}

fn number_for(e: &Event, field: &str) -> Option<f64> {
    if field == BYTES_FIELD {
        return Some(e.message.len() as f64);
    }
    e.field(field).and_then(number_of)
}

/// `30s`, `1m`, `2h`, `1d`, `1w` in nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let mult: i64 = match unit {
        "ns" => 1,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        "w" => 604_800_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The partial aggregate of one group.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Partial {
    /// Events in the group.
    pub events: u64,
    /// Events with a numeric value of the field.
    pub n: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub sketch: Option<DDSketch>,
}

impl Partial {
    fn new(func: AggFn) -> Self {
        Self {
            events: 0,
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: matches!(func, AggFn::Quantile(_)).then(|| DDSketch::new(SketchConfig::defaults())),
        }
    }

    fn add(&mut self, v: Option<f64>) {
        self.events += 1;
        if let Some(v) = v {
            self.n += 1;
            self.sum += v;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            if let Some(s) = &mut self.sketch {
                s.add(v);
            }
        }
    }

    pub fn merge(&mut self, o: &Partial) {
        self.events += o.events;
        self.n += o.n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if let (Some(a), Some(b)) = (&mut self.sketch, &o.sketch) {
            // Same configuration on both sides, so merging cannot fail.
            let _ = a.merge(b);
        }
    }

    /// The value of `func` over the group: `None` when no event had a numeric value of
    /// the field (every function but count).
    pub fn number(&self, func: AggFn) -> Option<f64> {
        if func == AggFn::Count {
            return Some(self.events as f64);
        }
        if self.n == 0 {
            return None;
        }
        Some(match func {
            AggFn::Count => self.events as f64,
            AggFn::Sum => self.sum,
            AggFn::Avg => self.sum / self.n as f64,
            AggFn::Min => self.min,
            AggFn::Max => self.max,
            AggFn::Quantile(q) => self.sketch.as_ref()?.quantile(q).ok()??,
        })
    }

    fn value(&self, func: AggFn) -> Option<Value> {
        if func == AggFn::Count {
            return Some(Value::from(self.events));
        }
        if self.n == 0 {
            return None;
        }
        let v = match func {
            AggFn::Count => unreachable!(),
            AggFn::Sum => self.sum,
            AggFn::Avg => self.sum / self.n as f64,
            AggFn::Min => self.min,
            AggFn::Max => self.max,
            AggFn::Quantile(q) => self.sketch.as_ref()?.quantile(q).ok()??,
        };
        serde_json::Number::from_f64(v).map(Value::Number)
    }
}

/// A group: its time bucket and its key values.
pub type GroupKey = (Option<i64>, Vec<Option<String>>);

/// Partial aggregates by group; merge several (one per shard, one per node) then finish.
#[derive(Default, Clone)]
pub struct Aggregation {
    pub groups: BTreeMap<GroupKey, Partial>,
}

fn group_value(e: &Event, key: &str) -> Option<String> {
    match key {
        "stream" => Some(e.stream.clone()),
        "level" => Some(e.level.clone()).filter(|l| !l.is_empty()),
        SERIES_KEY => serde_json::to_string(&series_labels(e)).ok(),
        // `labels.k` as in the query syntax: the label alone, never a field.
        _ if key.starts_with("labels.") => e.labels.get(&key["labels.".len()..]).cloned(),
        _ => e.labels.get(key).cloned().or_else(|| match e.field(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }),
    }
}

fn too_many_groups(max: usize) -> QueryError {
    QueryError::BadRequest(format!(
        "the aggregation has more than {max} groups (query_limits.max_groups): narrow the query, group by fewer labels or widen the bucket"
    ))
}

impl Aggregation {
    pub fn add(&mut self, spec: &AggSpec, e: &Event) -> Result<(), QueryError> {
        let bucket = spec.bucket_of(e.ts);
        let key = (bucket, spec.by.iter().map(|k| group_value(e, k)).collect());
        let v = spec.field.as_deref().and_then(|f| number_for(e, f));
        if !self.groups.contains_key(&key) && self.groups.len() >= spec.max_groups {
            return Err(too_many_groups(spec.max_groups));
        }
        self.groups.entry(key).or_insert_with(|| Partial::new(spec.func)).add(v);
        Ok(())
    }

    /// Adds `n` events to the count of group `key` (no time bucket).
    fn add_count(&mut self, key: Vec<Option<String>>, n: u64, max_groups: usize) -> Result<(), QueryError> {
        let key = (None, key);
        if !self.groups.contains_key(&key) && self.groups.len() >= max_groups {
            return Err(too_many_groups(max_groups));
        }
        self.groups.entry(key).or_insert_with(|| Partial::new(AggFn::Count)).events += n;
        Ok(())
    }

    /// The groups as a list (a map with tuple keys has no JSON form), for sending to
    /// the node that merges.
    pub fn into_parts(self) -> Vec<(GroupKey, Partial)> {
        self.groups.into_iter().collect()
    }

    pub fn from_parts(parts: Vec<(GroupKey, Partial)>) -> Self {
        Self { groups: parts.into_iter().collect() }
    }

    pub fn merge(&mut self, other: Aggregation) {
        for (k, p) in other.groups {
            match self.groups.get_mut(&k) {
                Some(mine) => mine.merge(&p),
                None => {
                    self.groups.insert(k, p);
                }
            }
        }
    }

    /// The §9 answer: `[{"key":{...},"bucket":"<RFC 3339>"|null,"value":N}]`, by bucket
    /// then key. Groups without a numeric value of the field are left out (except for
    /// count).
    pub fn finish(&self, spec: &AggSpec) -> Vec<Value> {
        self.finish_groups(spec, false)
    }

    /// [`Aggregation::finish`], keeping the groups without a numeric value (their value
    /// null): every group that has events, as SQL groups them.
    pub fn finish_all(&self, spec: &AggSpec) -> Vec<Value> {
        self.finish_groups(spec, true)
    }

    fn finish_groups(&self, spec: &AggSpec, keep_empty: bool) -> Vec<Value> {
        self.groups
            .iter()
            .filter_map(|((bucket, key), p)| {
                let value = match p.value(spec.func) {
                    Some(v) => v,
                    None if keep_empty => Value::Null,
                    None => return None,
                };
                let key: Map<String, Value> = spec
                    .by
                    .iter()
                    .zip(key)
                    .map(|(k, v)| (k.clone(), v.clone().map(Value::String).unwrap_or(Value::Null)))
                    .collect();
                Some(serde_json::json!({
                    "key": key,
                    "bucket": bucket.map(format_rfc3339),
                    "value": value,
                }))
            })
            .collect()
    }
}

/// Aggregates the events matching `expr` in `range` over `shards`.
pub fn aggregate(shards: &[ShardStore], expr: &Expr, range: TimeRange, spec: &AggSpec) -> Result<Aggregation, QueryError> {
    let parts = crate::exec::per_core(shards, |mine| aggregate_some(&mine, expr, range, spec))?;
    let mut total = Aggregation::default();
    for part in parts {
        total.merge(part);
        if total.groups.len() > spec.max_groups {
            return Err(too_many_groups(spec.max_groups));
        }
    }
    Ok(total)
}

fn aggregate_some(shards: &[(usize, &ShardStore)], expr: &Expr, range: TimeRange, spec: &AggSpec) -> Result<Aggregation, QueryError> {
    match aggregate_shards(shards, expr, range, spec, true)? {
        Some(total) => Ok(total),
        // A group value turned out nested: every shard again, with whole events.
        None => Ok(aggregate_shards(shards, expr, range, spec, false)?.expect("no lite reads, no retry")),
    }
}

/// The aggregate of `shards`; `None` when `lite` was allowed and a group value turned
/// out to be nested (the lite reads cannot group by it).
fn aggregate_shards(
    shards: &[(usize, &ShardStore)],
    expr: &Expr,
    range: TimeRange,
    spec: &AggSpec,
    lite: bool,
) -> Result<Option<Aggregation>, QueryError> {
    // A count by stream or by level alone is read from the postings where they are exact.
    let facet = match (spec.func, spec.field.as_deref(), spec.bucket_ns, spec.by.as_slice()) {
        (AggFn::Count, None, None, [by]) if by == "stream" => Some(Facet::Stream),
        (AggFn::Count, None, None, [by]) if by == "level" => Some(Facet::Level),
        _ => None,
    };
    let mut total = Aggregation::default();
    // One set of groups for every shard read through lite events: a group's partial
    // (a sketch, for percentiles) is made once here, not once per shard and merged.
    let mut lite_groups = LiteGroups::default();
    for (_, s) in shards {
        let mut plan = ShardPlan::new(s, expr, range)?;
        if facet.is_none() && lite {
            match aggregate_lite(s, &plan, expr, range, spec, &mut lite_groups)? {
                Lite::Done => continue,
                Lite::Nested => return Ok(None),
                Lite::NotLite => {}
            }
        }
        let mut part = Aggregation::default();
        let blocks = match facet {
            Some(facet) => {
                // Counts read postings after the plan: redo both if the index moved.
                let (counts, rest) = loop {
                    match plan.count_by(facet, range) {
                        Ok(got) if plan.current()? => break got,
                        Ok(_) | Err(QueryError::Index(_)) if !plan.current()? => {}
                        Ok(got) => break got,
                        Err(e) => return Err(e),
                    }
                    plan = ShardPlan::new(s, expr, range)?;
                };
                for (value, n) in counts {
                    // An event without a level is in the null group.
                    part.add_count(vec![Some(value).filter(|v| !v.is_empty())], n, spec.max_groups)?;
                }
                rest
            }
            None => plan.blocks(range),
        };
        let mut failed: Option<QueryError> = None;
        for w in &blocks {
            read_matches(s, w, expr, range, |e| {
                if failed.is_none() {
                    if let Err(err) = part.add(spec, &e) {
                        failed = Some(err);
                    }
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        total.merge(part);
        if total.groups.len() > spec.max_groups {
            return Err(too_many_groups(spec.max_groups));
        }
    }
    total.merge(Aggregation { groups: lite_groups.groups.into_iter().collect() });
    if total.groups.len() > spec.max_groups {
        return Err(too_many_groups(spec.max_groups));
    }
    Ok(Some(total))
}

/// Groups being built from lite events, found by a key of bytes (the bucket, then each
/// group value behind a marker) without formatting anything per event.
#[derive(Default)]
struct LiteGroups {
    groups: Vec<(GroupKey, Partial)>,
    index: HashMap<Vec<u8>, usize, xxhash_rust::xxh3::Xxh3DefaultBuilder>,
}

/// What [`aggregate_lite`] did with a shard.
enum Lite {
    /// Its events are in the groups.
    Done,
    /// It needs whole events (match checks, dotted names); nothing was added.
    NotLite,
    /// A group value is nested: lite reads cannot group it, and some of the shard's
    /// events may be in the groups already.
    Nested,
}

/// A shard's aggregate read through [`LiteEvent`]s (no ids, no messages, nothing
/// allocated per event) when every block it reads needs no match check. `None` when the
/// spec or the data needs whole events: dotted names, a nested value as a group.
fn aggregate_lite(store: &ShardStore, plan: &ShardPlan, expr: &Expr, range: TimeRange, spec: &AggSpec, acc: &mut LiteGroups) -> Result<Lite, QueryError> {
    // `@series` and `@bytes` need the whole event too.
    let dotted = |k: &str| (k.contains('.') && !k.starts_with("labels.")) || k.starts_with('@');
    if spec.by.iter().any(|k| dotted(k)) || spec.field.as_deref().is_some_and(dotted) {
        return Ok(Lite::NotLite);
    }
    let blocks = plan.blocks(range);
    let all = matches!(expr, Expr::All);
    if !blocks.iter().all(|w| matches!(w.pick, Pick::Exact(_)) || (all && w.pick == Pick::Scan)) {
        return Ok(Lite::NotLite);
    }
    let LiteGroups { groups, index } = acc;
    let mut key: Vec<u8> = Vec::new();
    let mut failed: Option<QueryError> = None;
    let mut nested = false;
    for w in &blocks {
        let positions = match &w.pick {
            Pick::Exact(p) => Some(p.as_slice()),
            _ => None,
        };
        store.read_block_lite(w.id, positions, &mut |_, e| {
            if failed.is_some() || nested || !range.contains(e.ts) {
                return;
            }
            let bucket = spec.bucket_of(e.ts);
            key.clear();
            if let Some(b) = bucket {
                key.extend_from_slice(&b.to_le_bytes());
            }
            for k in &spec.by {
                match lite_group_value(e, k) {
                    Err(()) => {
                        nested = true;
                        return;
                    }
                    Ok(None) => key.push(0),
                    Ok(Some(v)) => {
                        // Its length first, so no two lists of values make the same bytes.
                        key.push(1);
                        key.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        key.extend_from_slice(v.as_bytes());
                    }
                }
            }
            let at = match index.get(key.as_slice()) {
                Some(&at) => at,
                None => {
                    if groups.len() >= spec.max_groups {
                        failed = Some(too_many_groups(spec.max_groups));
                        return;
                    }
                    let owned: Vec<Option<String>> =
                        spec.by.iter().map(|k| lite_group_value(e, k).ok().flatten().map(|v| v.into_owned())).collect();
                    groups.push(((bucket, owned), Partial::new(spec.func)));
                    index.insert(key.clone(), groups.len() - 1);
                    groups.len() - 1
                }
            };
            let v = spec.field.as_deref().and_then(|f| lite_number(e.field(f)?));
            groups[at].1.add(v);
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if nested {
            return Ok(Lite::Nested);
        }
    }
    Ok(Lite::Done)
}

/// [`group_value`] of a lite event; `Err` when the value is nested (its text needs the
/// whole event).
fn lite_group_value<'a>(e: &LiteEvent<'a>, key: &str) -> Result<Option<std::borrow::Cow<'a, str>>, ()> {
    use std::borrow::Cow;
    Ok(match key {
        "stream" => Some(Cow::Borrowed(e.stream)),
        "level" => Some(Cow::Borrowed(e.level)).filter(|l| !l.is_empty()),
        _ if key.starts_with("labels.") => e.label(&key["labels.".len()..]).map(Cow::Borrowed),
        _ => match e.label(key) {
            Some(v) => Some(Cow::Borrowed(v)),
            None => match e.field(key) {
                None | Some(LiteValue::Null) => None,
                Some(LiteValue::Str(s)) => Some(Cow::Borrowed(s)),
                Some(LiteValue::Int(i)) => Some(Cow::Owned(i.to_string())),
                Some(LiteValue::UInt(u)) => Some(Cow::Owned(u.to_string())),
                Some(LiteValue::Float(f)) => Some(Cow::Owned(Value::from(f).to_string())),
                Some(LiteValue::Bool(b)) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
                Some(LiteValue::Nested) => return Err(()),
            },
        },
    })
}

/// [`number_of`] for a lite value.
fn lite_number(v: LiteValue<'_>) -> Option<f64> {
    match v {
        LiteValue::Int(i) => Some(i as f64),
        LiteValue::UInt(u) => Some(u as f64),
        LiteValue::Float(f) => Some(f),
        LiteValue::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossamer_schemas::ShardCommand;
    use gossamer_storage::Store;

    fn event(i: i64) -> Event {
        let mut fields = Map::new();
        fields.insert("latency_ms".into(), Value::from(i % 100 + 1));
        Event {
            id: uuid::Uuid::from_u128(i as u128 + 1),
            ts: i * 1_000_000_000,
            stream: "s".into(),
            level: if i % 3 == 0 { "error".into() } else { "info".into() },
            message: String::new(),
            labels: [("host".to_string(), format!("h{}", i % 2))].into(),
            fields,
        }
    }

    #[test]
    fn groups_by_label_and_bucket_and_merges_across_shards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let shards: Vec<ShardStore> = (0..4).map(|n| store.shard(n).unwrap()).collect();
        let events: Vec<Event> = (0..600).map(event).collect();
        for (i, chunk) in events.chunks(50).enumerate() {
            shards[i % 4].apply(vec![(i as u64 + 1, ShardCommand::Insert { events: chunk.to_vec() })]).unwrap();
        }
        let spec = AggSpec::parse("count", None, Some("host,level"), Some("5m")).unwrap();
        let out = aggregate(&shards, &Expr::All, TimeRange::default(), &spec).unwrap().finish(&spec);
        // 600 s = two 5-minute buckets, two hosts, two levels.
        assert_eq!(out.len(), 8);
        let total: u64 = out.iter().map(|g| g["value"].as_u64().unwrap()).sum();
        assert_eq!(total, 600);
        assert_eq!(out[0]["bucket"], "1970-01-01T00:00:00.000000000Z");
        // `labels.host` is the label, as `host` is.
        let spec = AggSpec::parse("count", None, Some("labels.host"), None).unwrap();
        let out = aggregate(&shards, &Expr::All, TimeRange::default(), &spec).unwrap().finish(&spec);
        let keys: Vec<&Value> = out.iter().map(|g| &g["key"]["labels.host"]).collect();
        assert_eq!(keys, [&Value::from("h0"), &Value::from("h1")], "{out:?}");

        let spec = AggSpec::parse("p50", Some("latency_ms"), None, None).unwrap();
        let p50 = aggregate(&shards, &Expr::All, TimeRange::default(), &spec).unwrap().finish(&spec)[0]["value"]
            .as_f64()
            .unwrap();
        assert!((p50 - 50.0).abs() <= 50.0 * PERCENTILE_RELATIVE_ERROR + 1.0, "{p50}");
        for (f, want) in [("sum", 600.0 * 50.5), ("avg", 50.5), ("min", 1.0), ("max", 100.0)] {
            let spec = AggSpec::parse(f, Some("latency_ms"), None, None).unwrap();
            let v = aggregate(&shards, &Expr::All, TimeRange::default(), &spec).unwrap().finish(&spec)[0]["value"]
                .as_f64()
                .unwrap();
            assert_eq!(v, want, "{f}");
        }
    }

    /// Shards read through lite events share their groups; a nested group value met in
    /// a later shard sends every shard through whole events, and nothing is counted twice.
    #[test]
    fn a_nested_group_value_in_a_later_shard_counts_every_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let shards: Vec<ShardStore> = (0..4).map(|n| store.shard(n).unwrap()).collect();
        let events: Vec<Event> = (0..600)
            .map(|i| {
                let mut e = event(i);
                let shape = if i >= 500 && i % 7 == 0 { serde_json::json!({"k": i % 2}) } else { Value::from(format!("v{}", i % 5)) };
                e.fields.insert("shape".into(), shape);
                e
            })
            .collect();
        // Shard 3 holds the last 150 events, the nested values among them.
        for (i, chunk) in events.chunks(150).enumerate() {
            shards[i].apply(vec![(1, ShardCommand::Insert { events: chunk.to_vec() })]).unwrap();
        }
        let mut want: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for e in &events {
            *want.entry(group_value(e, "shape")).or_default() += 1;
        }
        let spec = AggSpec::parse("count", None, Some("shape"), None).unwrap();
        let got: BTreeMap<Option<String>, u64> = aggregate(&shards, &Expr::All, TimeRange::default(), &spec)
            .unwrap()
            .groups
            .into_iter()
            .map(|((_, mut key), p)| (key.remove(0), p.events))
            .collect();
        assert_eq!(got, want);
        assert!(want.keys().any(|k| k.as_deref().is_some_and(|k| k.starts_with('{'))), "{want:?}");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(AggSpec::parse("median", None, None, None).unwrap_err().contains("unknown `fn`"));
        assert!(AggSpec::parse("sum", None, None, None).unwrap_err().contains("`field` is required"));
        assert!(AggSpec::parse("count", None, None, Some("5x")).unwrap_err().contains("invalid `bucket`"));
        match AggSpec::parse("p99.9", Some("x"), None, None).unwrap().func {
            AggFn::Quantile(q) => assert!((q - 0.999).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
    }
}
