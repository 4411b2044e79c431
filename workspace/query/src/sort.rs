//! Searching in the order of any keys: `sort=fields.latency_ms:desc,ts:asc`.
//!
//! A key is `ts`, `id`, `stream`, `level`, `message`, `labels.NAME`, `fields.PATH` or a
//! bare name (a label, else a field, as a group key). Values compare as numbers, then
//! strings, then booleans (a nested value compares as its JSON text); an event without
//! the key comes last whichever the direction, as in Elasticsearch. Ties are broken by
//! id, in the direction of the last key, so every page boundary is exact and the
//! cursor (the last event's values and id) pages through every match once.
//!
//! Time alone (`ts:desc`) is the time-ordered search, which reads only the blocks that
//! can hold the page; any other order reads every matching event, keeping the best
//! `limit + 1` of each shard.

use std::cmp::Ordering;

use base64::Engine as _;
use gossamer_schemas::api::Order;
use gossamer_schemas::Event;
use gossamer_storage::ShardStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::ast::Expr;
use crate::exec::{per_core, SearchPage, MAX_LIMIT};
use crate::plan::{read_matches, ShardPlan};
use crate::timerange::TimeRange;
use crate::QueryError;

/// Most keys one sort may name.
pub const MAX_KEYS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub key: String,
    pub desc: bool,
}

/// The keys of a sort, most significant first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    pub keys: Vec<SortKey>,
}

/// One key's value in an event, as the sort compares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SortValue {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    /// The event has no such key (or it is null).
    Missing,
}

impl SortValue {
    fn of_json(v: &Value) -> SortValue {
        match v {
            Value::Null => SortValue::Missing,
            Value::Bool(b) => SortValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => SortValue::Int(i),
                None => SortValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => SortValue::Str(s.clone()),
            other => SortValue::Str(other.to_string()),
        }
    }

    /// Numbers, then strings, then booleans.
    fn rank(&self) -> u8 {
        match self {
            SortValue::Int(_) | SortValue::Float(_) => 0,
            SortValue::Str(_) => 1,
            SortValue::Bool(_) => 2,
            SortValue::Missing => 3,
        }
    }

    /// Ascending order of two present values.
    fn cmp_present(&self, o: &SortValue) -> Ordering {
        match (self, o) {
            (SortValue::Int(a), SortValue::Int(b)) => a.cmp(b),
            (SortValue::Int(a), SortValue::Float(b)) => int_cmp_float(*a, *b),
            (SortValue::Float(a), SortValue::Int(b)) => int_cmp_float(*b, *a).reverse(),
            (SortValue::Float(a), SortValue::Float(b)) => a.total_cmp(b),
            (SortValue::Str(a), SortValue::Str(b)) => a.cmp(b),
            (SortValue::Bool(a), SortValue::Bool(b)) => a.cmp(b),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

/// An integer against a float, exactly (no rounding of large integers), NaN last.
fn int_cmp_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Less;
    }
    // 2^63 as a float: every float at or past it is beyond any i64, and so is one below
    // -2^63.
    const EDGE: f64 = 9_223_372_036_854_775_808.0;
    if f >= EDGE {
        return Ordering::Less;
    }
    if f < -EDGE {
        return Ordering::Greater;
    }
    let whole = f.floor();
    match i.cmp(&(whole as i64)) {
        Ordering::Equal if f > whole => Ordering::Less,
        other => other,
    }
}

/// Where the previous page of a sorted search ended: the last event's values and id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SortCursor {
    pub values: Vec<SortValue>,
    pub id: Uuid,
    /// Which sort the cursor pages ([`Sort::fingerprint`]).
    #[serde(default)]
    pub sort: u64,
}

impl SortCursor {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("k{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
    }

    /// Reads a cursor of `sort`'s pages.
    pub fn decode(s: &str, sort: &Sort) -> Result<Self, QueryError> {
        let bad = || QueryError::BadRequest(format!("invalid cursor {s:?} for this sort: pass back the `next_cursor` of the same query and sort unchanged"));
        let raw = s.strip_prefix('k').ok_or_else(bad)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        let c: SortCursor = serde_json::from_slice(&json).map_err(|_| bad())?;
        if c.values.len() != sort.keys.len() || c.sort != sort.fingerprint() {
            return Err(bad());
        }
        Ok(c)
    }
}

impl Sort {
    /// Reads `key[:asc|:desc],...` (ascending when no direction is given).
    pub fn parse(text: &str) -> Result<Sort, QueryError> {
        let bad = |m: String| QueryError::BadRequest(format!("invalid sort {text:?}: {m}"));
        let mut keys = Vec::new();
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(bad("an empty key; write key:asc or key:desc, separated by commas".into()));
            }
            let (key, desc) = match part.rsplit_once(':') {
                Some((k, "asc")) => (k, false),
                Some((k, "desc")) => (k, true),
                Some((_, d)) => return Err(bad(format!("{d:?} is not a direction: use asc or desc"))),
                None => (part, false),
            };
            let key = key.trim();
            let valid = !key.is_empty()
                && key.split('.').all(|p| !p.is_empty())
                && key.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
            if !valid {
                return Err(bad(format!("{key:?} is not a key: use ts, id, stream, level, message, labels.NAME, fields.PATH or a name")));
            }
            if keys.iter().any(|k: &SortKey| k.key == key) {
                return Err(bad(format!("{key:?} is named twice")));
            }
            keys.push(SortKey { key: key.to_string(), desc });
        }
        if keys.len() > MAX_KEYS {
            return Err(bad(format!("{} keys, at most {MAX_KEYS}", keys.len())));
        }
        Ok(Sort { keys })
    }

    /// A hash of the keys and directions, which a cursor carries.
    pub fn fingerprint(&self) -> u64 {
        let text: Vec<String> = self.keys.iter().map(|k| format!("{}:{}", k.key, if k.desc { "desc" } else { "asc" })).collect();
        xxhash_rust::xxh3::xxh3_64(text.join(",").as_bytes())
    }

    /// The time order this sort is, when it is time alone.
    pub fn as_time_order(&self) -> Option<Order> {
        match self.keys.as_slice() {
            [k] if k.key == "ts" => Some(if k.desc { Order::Desc } else { Order::Asc }),
            _ => None,
        }
    }

    /// The event's values of the keys.
    pub fn values(&self, e: &Event) -> Vec<SortValue> {
        self.keys.iter().map(|k| value_of(e, &k.key)).collect()
    }

    /// Page order of two events given their values: `Less` comes first.
    pub fn cmp(&self, a: (&[SortValue], Uuid), b: (&[SortValue], Uuid)) -> Ordering {
        for (k, (x, y)) in self.keys.iter().zip(a.0.iter().zip(b.0)) {
            let o = match (x, y) {
                (SortValue::Missing, SortValue::Missing) => Ordering::Equal,
                (SortValue::Missing, _) => Ordering::Greater,
                (_, SortValue::Missing) => Ordering::Less,
                (x, y) if k.desc => y.cmp_present(x),
                (x, y) => x.cmp_present(y),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        let last_desc = self.keys.last().is_some_and(|k| k.desc);
        if last_desc {
            b.1.cmp(&a.1)
        } else {
            a.1.cmp(&b.1)
        }
    }

    /// Page order of two events.
    pub fn cmp_events(&self, a: &Event, b: &Event) -> Ordering {
        self.cmp((&self.values(a), a.id), (&self.values(b), b.id))
    }

    /// The cursor of a page that ends with `e`.
    pub fn cursor_after(&self, e: &Event) -> String {
        SortCursor { values: self.values(e), id: e.id, sort: self.fingerprint() }.encode()
    }
}

/// The value of one sort key in `e`.
fn value_of(e: &Event, key: &str) -> SortValue {
    let text = |s: &str| SortValue::Str(s.to_string());
    match key {
        "ts" => SortValue::Int(e.ts),
        "id" => SortValue::Str(e.id.to_string()),
        "stream" => text(&e.stream),
        "message" => text(&e.message),
        "level" if e.level.is_empty() => SortValue::Missing,
        "level" => text(&e.level),
        _ => {
            if let Some(k) = key.strip_prefix("labels.") {
                e.labels.get(k).map_or(SortValue::Missing, |v| text(v))
            } else if let Some(k) = key.strip_prefix("fields.") {
                e.field(k).map_or(SortValue::Missing, SortValue::of_json)
            } else if let Some(v) = e.labels.get(key) {
                text(v)
            } else {
                e.field(key).map_or(SortValue::Missing, SortValue::of_json)
            }
        }
    }
}

/// The best events seen so far in a sort's order, at most `k` once finished.
struct Best<'a> {
    sort: &'a Sort,
    k: usize,
    rows: Vec<(Vec<SortValue>, Event)>,
}

impl<'a> Best<'a> {
    fn new(sort: &'a Sort, k: usize) -> Self {
        Best { sort, k, rows: Vec::with_capacity(2 * k + 1) }
    }

    fn push(&mut self, values: Vec<SortValue>, e: Event) {
        self.rows.push((values, e));
        if self.rows.len() >= 2 * self.k.max(1) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        let sort = self.sort;
        self.rows.sort_by(|a, b| sort.cmp((&a.0, a.1.id), (&b.0, b.1.id)));
        self.rows.truncate(self.k);
    }

    fn finish(mut self) -> Vec<Event> {
        self.trim();
        self.rows.into_iter().map(|(_, e)| e).collect()
    }
}

/// One page of the events matching `expr` in `range`, in `sort`'s order, after
/// `after` (the previous page's last event).
pub fn search_sorted(
    shards: &[ShardStore],
    expr: &Expr,
    range: TimeRange,
    sort: &Sort,
    after: Option<&SortCursor>,
    limit: usize,
) -> Result<SearchPage, QueryError> {
    let limit = limit.clamp(1, MAX_LIMIT);
    // One more than the page, to know whether a next page exists.
    let k = limit + 1;
    let found = per_core(shards, |mine| {
        let mut best = Best::new(sort, k);
        for (_, s) in mine {
            for w in ShardPlan::new(s, expr, range)?.blocks(range) {
                read_matches(s, &w, expr, range, |e| {
                    let values = sort.values(&e);
                    if after.is_none_or(|c| sort.cmp((&values, e.id), (&c.values, c.id)) == Ordering::Greater) {
                        best.push(values, e);
                    }
                })?;
            }
        }
        Ok(best.finish())
    })?;
    let mut best = Best::new(sort, k);
    for e in found.into_iter().flatten() {
        best.push(sort.values(&e), e);
    }
    let mut events = best.finish();
    let next_cursor = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|e| sort.cursor_after(e))
    } else {
        None
    };
    Ok(SearchPage { events, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::tests::stores;
    use crate::parse;
    use proptest::prelude::*;
    use serde_json::json;

    fn event(i: u128, ts: i64, level: &str, fields: Value, labels: &[(&str, &str)]) -> Event {
        Event {
            id: Uuid::from_u128(i),
            ts,
            stream: "app".into(),
            level: level.into(),
            message: format!("event {i}"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    /// Every page of a sorted search, followed by its cursors.
    fn every_page(shards: &[ShardStore], q: &str, sort: &Sort, limit: usize) -> Vec<Uuid> {
        let expr = parse(q).unwrap();
        let mut after = None;
        let mut got = Vec::new();
        loop {
            let page = search_sorted(shards, &expr, TimeRange::default(), sort, after.as_ref(), limit).unwrap();
            got.extend(page.events.iter().map(|e| e.id));
            match page.next_cursor {
                Some(c) => after = Some(SortCursor::decode(&c, sort).unwrap()),
                None => return got,
            }
        }
    }

    #[test]
    fn keys_parse_with_their_directions_and_bad_ones_are_named() {
        let s = Sort::parse("fields.latency_ms:desc, ts").unwrap();
        assert_eq!(s.keys, vec![SortKey { key: "fields.latency_ms".into(), desc: true }, SortKey { key: "ts".into(), desc: false }]);
        assert_eq!(Sort::parse("ts:desc").unwrap().as_time_order(), Some(Order::Desc));
        assert_eq!(Sort::parse("ts:desc,id").unwrap().as_time_order(), None);
        for (bad, says) in [("ts:down", "\"down\" is not a direction"), ("", "an empty key"), ("a,,b", "an empty key"), ("ts,ts:desc", "named twice"), ("a b", "is not a key")] {
            let err = Sort::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn missing_values_come_last_both_ways_and_ties_break_by_id() {
        let evs = vec![
            event(1, 10, "info", json!({"ms": 5}), &[]),
            event(2, 11, "", json!({"ms": 7.5}), &[]),
            event(3, 12, "warn", json!({}), &[]),
            event(4, 13, "error", json!({"ms": 5}), &[]),
            event(5, 14, "info", json!({"ms": "slow"}), &[]),
            event(6, 15, "info", json!({"ms": null}), &[]),
        ];
        let dir = tempfile::tempdir().unwrap();
        let shards = stores(dir.path(), &evs);
        let ids = |q: &str, s: &str| every_page(&shards, q, &Sort::parse(s).unwrap(), 2).into_iter().map(|u| u.as_u128()).collect::<Vec<_>>();
        assert_eq!(ids("", "fields.ms"), [1, 4, 2, 5, 3, 6], "numbers, then strings, then missing; ties by id");
        assert_eq!(ids("", "fields.ms:desc"), [5, 2, 4, 1, 6, 3], "missing still last; ties by id, descending");
        assert_eq!(ids("", "level,ts:desc"), [4, 6, 5, 1, 3, 2], "an event without a level sorts as missing");
        assert_eq!(ids("level:info", "ms:desc,id"), [5, 1, 6], "a bare name is a field");
        let cursor = Sort::parse("a:desc").unwrap().cursor_after(&evs[0]);
        assert!(SortCursor::decode(&cursor, &Sort::parse("a:desc").unwrap()).is_ok());
        for other in ["a", "a,b", "b:desc"] {
            assert!(SortCursor::decode(&cursor, &Sort::parse(other).unwrap()).is_err(), "a cursor of another sort ({other}) is refused");
        }
        assert!(SortCursor::decode("123_abc", &Sort::parse("a").unwrap()).is_err(), "a time cursor is refused");
    }

    #[test]
    fn integers_and_floats_compare_exactly_even_past_two_to_the_53() {
        let big = 1i64 << 53;
        let (a, b, f) = (SortValue::Int(big), SortValue::Int(big + 1), SortValue::Float(big as f64));
        assert_eq!(a.cmp_present(&f), Ordering::Equal);
        assert_eq!(b.cmp_present(&f), Ordering::Greater, "2^53 + 1 is past the float 2^53");
        assert_eq!(f.cmp_present(&b), Ordering::Less);
        assert_eq!(SortValue::Int(2).cmp_present(&SortValue::Float(2.5)), Ordering::Less);
        assert_eq!(SortValue::Int(-3).cmp_present(&SortValue::Float(-2.5)), Ordering::Less);
        assert_eq!(SortValue::Int(-2).cmp_present(&SortValue::Float(-2.5)), Ordering::Greater);
        assert_eq!(SortValue::Int(i64::MAX).cmp_present(&SortValue::Float(1e19)), Ordering::Less);
        assert_eq!(SortValue::Int(i64::MIN).cmp_present(&SortValue::Float(-1e19)), Ordering::Greater);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Paging a sorted search returns every match once, in the order of sorting
        /// every match at once.
        #[test]
        fn paging_equals_sorting_every_match(
            rows in proptest::collection::vec((0i64..6, 0u8..5, proptest::option::of(0i64..4), any::<bool>()), 1..60),
            limit in 1usize..7,
            sort_text in proptest::sample::select(vec!["fields.n", "fields.n:desc,ts", "labels.zone:desc,fields.n", "level,ts:desc", "message:desc", "zone,fields.n:desc,ts"]),
        ) {
            let evs: Vec<Event> = rows.iter().enumerate().map(|(i, (ts, lvl, n, zone))| {
                let fields = match n { Some(3) => json!({"n": "three"}), Some(n) => json!({"n": n}), None => json!({}) };
                let labels: &[(&str, &str)] = if *zone { &[("zone", "a")] } else { &[] };
                event(i as u128 + 1, *ts, ["", "info", "warn", "error", "debug"][*lvl as usize], fields, labels)
            }).collect();
            let dir = tempfile::tempdir().unwrap();
            let shards = stores(dir.path(), &evs);
            let sort = Sort::parse(sort_text).unwrap();
            let mut want = evs.clone();
            want.retain(|e| e.level != "debug");
            want.sort_by(|a, b| sort.cmp_events(a, b));
            let want: Vec<Uuid> = want.iter().map(|e| e.id).collect();
            prop_assert_eq!(every_page(&shards, "-level:debug", &sort, limit), want);
        }
    }
}
