//! LogQL answered by the query service. A log query is a search (pages merged across
//! the cluster, grouped into Loki streams by label set). A range function is one
//! aggregation over the cluster, bucketed at the greatest common divisor of the range
//! and the step (so every window `(t - range, t]` is a whole number of buckets), from
//! which each step's window is merged; `sum by (...)` of a count, rate or sum is pushed
//! into the aggregation as its grouping. Outer aggregations, `topk` and arithmetic run
//! on the series that come back, which are few.

use std::collections::BTreeMap;

use gossamer_query::agg::{AggFn, Partial, BYTES_FIELD, SERIES_KEY};
use gossamer_query::{AggSpec, TimeRange};
use gossamer_schemas::api::Order;

use super::ast::*;
use super::compile::{compile, group_key};
use super::parse::LogqlError;
use crate::error::ServiceError;
use crate::handle::NodeHandle;
use crate::service::query::{aggregate_parts, search_in};

/// Loki's limit on the points of one series.
pub const MAX_POINTS: i64 = 11_000;
/// Most buckets one range function may read per series.
const MAX_BUCKETS: i64 = 200_000;
/// Loki's default `max_entries_limit_per_query`.
pub const MAX_ENTRIES: usize = 5_000;

pub type Labels = BTreeMap<String, String>;

/// A Loki stream: a label set and its lines, `(ns, line)`.
pub struct LogStream {
    pub labels: Labels,
    pub values: Vec<(i64, String)>,
}

pub struct Series {
    pub labels: Labels,
    /// `(t in ns, value)`, at the evaluation steps that have a value.
    pub points: BTreeMap<i64, f64>,
}

pub enum Value {
    Scalar(f64),
    Vector(Vec<Series>),
}

pub enum Answer {
    Streams(Vec<LogStream>),
    Value(Value),
}

/// Where and when to evaluate.
#[derive(Clone, Copy)]
pub struct Eval {
    pub start: i64,
    pub end: i64,
    /// 0 for an instant query (one step, at `end`).
    pub step: i64,
    pub limit: usize,
    pub order: Order,
}

impl Eval {
    fn steps(&self) -> impl Iterator<Item = i64> + '_ {
        let (start, step) = if self.step == 0 { (self.end, 1) } else { (self.start, self.step) };
        (0..).map(move |k| start + k * step).take_while(move |t| *t <= self.end)
    }
}

/// What went wrong: a query outside the subset, or the service's own error.
pub enum EvalError {
    Logql(LogqlError),
    Service(ServiceError),
}

impl From<LogqlError> for EvalError {
    fn from(e: LogqlError) -> Self {
        EvalError::Logql(e)
    }
}

impl From<ServiceError> for EvalError {
    fn from(e: ServiceError) -> Self {
        EvalError::Service(e)
    }
}

fn bad(message: impl Into<String>) -> EvalError {
    EvalError::Logql(LogqlError::Syntax { col: 1, message: message.into() })
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The answer, and the shards no replica answered for.
pub async fn evaluate(node: &NodeHandle, q: &Query, at: Eval) -> Result<(Answer, Vec<u32>), EvalError> {
    let mut missing = Vec::new();
    let answer = match q {
        Query::Logs(l) => Answer::Streams(logs(node, l, at, &mut missing).await?),
        Query::Metric(m) => {
            if at.step > 0 && (at.end - at.start) / at.step + 1 > MAX_POINTS {
                return Err(bad(format!(
                    "exceeded maximum resolution of {MAX_POINTS} points per timeseries. Try increasing the value of the step parameter"
                )));
            }
            Answer::Value(metric(node, m, at, &mut missing).await?)
        }
    };
    missing.sort_unstable();
    missing.dedup();
    Ok((answer, missing))
}

/// The label set a log line is shown with: its Loki labels less those dropped.
fn shown(labels: Labels, dropped: &[String]) -> Labels {
    let mut labels = labels;
    for d in dropped {
        labels.remove(d);
    }
    labels
}

async fn logs(node: &NodeHandle, l: &LogQuery, at: Eval, missing: &mut Vec<u32>) -> Result<Vec<LogStream>, EvalError> {
    let q = compile(l)?.to_string();
    let range = TimeRange { from: at.start, to: at.end };
    let dropped = l.dropped();
    let mut streams: Vec<LogStream> = Vec::new();
    let mut index: BTreeMap<Labels, usize> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    let mut left = at.limit;
    while left > 0 {
        let page = search_in(node, &q, range, at.order, left, cursor.as_deref()).await?;
        missing.extend(page.missing);
        left = left.saturating_sub(page.events.len());
        for e in page.events {
            let labels = shown(gossamer_query::agg::series_labels(&e), &dropped);
            let at = *index.entry(labels.clone()).or_insert_with(|| {
                streams.push(LogStream { labels, values: Vec::new() });
                streams.len() - 1
            });
            streams[at].values.push((e.ts, e.message));
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(streams)
}

fn metric<'a>(
    node: &'a NodeHandle,
    m: &'a Metric,
    at: Eval,
    missing: &'a mut Vec<u32>,
) -> futures::future::BoxFuture<'a, Result<Value, EvalError>> {
    Box::pin(async move {
        Ok(match m {
            Metric::Scalar(n) => Value::Scalar(*n),
            Metric::Vector(n) => {
                Value::Vector(vec![Series { labels: Labels::new(), points: at.steps().map(|t| (t, *n)).collect() }])
            }
            Metric::Range { func, param, query, range_ns, grouping } => {
                let by = match grouping {
                    Some(g) if !g.without => Some(g.labels.clone()),
                    Some(_) => return Err(EvalError::Logql(LogqlError::Unsupported("`without` on a range function".into()))),
                    None => None,
                };
                Value::Vector(range_fn(node, *func, *param, query, *range_ns, by, at, missing).await?)
            }
            Metric::Agg { op, param, grouping, inner } => {
                // `sum by (a) (count_over_time(...))`: the grouping goes into the aggregation.
                if let (AggOp::Sum, Metric::Range { func, param: p, query, range_ns, grouping: None }) = (op, inner.as_ref()) {
                    if func.additive() && !grouping.as_ref().is_some_and(|g| g.without) {
                        let by = grouping.as_ref().map(|g| g.labels.clone()).unwrap_or_default();
                        return Ok(Value::Vector(range_fn(node, *func, *p, query, *range_ns, Some(by), at, missing).await?));
                    }
                }
                let Value::Vector(series) = metric(node, inner, at, missing).await? else {
                    return Err(bad("an aggregation needs a vector, not a scalar"));
                };
                Value::Vector(aggregate(*op, *param, grouping.as_ref(), series)?)
            }
            Metric::Binary { op, keep_bool, lhs, rhs } => {
                let l = metric(node, lhs, at, missing).await?;
                let r = metric(node, rhs, at, missing).await?;
                binary(*op, *keep_bool, l, r)?
            }
        })
    })
}

/// One range function over the cluster: buckets of `gcd(range, step)` placed so that
/// every window `(t - range, t]` is a run of whole buckets, merged per step.
#[allow(clippy::too_many_arguments)]
async fn range_fn(
    node: &NodeHandle,
    func: RangeFn,
    param: Option<f64>,
    query: &LogQuery,
    range: i64,
    by: Option<Vec<String>>,
    at: Eval,
    missing: &mut Vec<u32>,
) -> Result<Vec<Series>, EvalError> {
    let q = compile(query)?.to_string();
    let width = if at.step == 0 { range } else { gcd(range, at.step) };
    let first = if at.step == 0 { at.end } else { at.start };
    if (at.end - first + range) / width > MAX_BUCKETS {
        return Err(bad(format!(
            "the range [{}s] and the step ({}s) have too small a common divisor: use a step that divides the range, or the range itself",
            range as f64 / 1e9,
            at.step as f64 / 1e9
        )));
    }
    let native_fn = match func {
        RangeFn::CountOverTime | RangeFn::Rate => AggFn::Count,
        RangeFn::QuantileOverTime => {
            let q = param.unwrap_or(f64::NAN);
            if !(q > 0.0 && q < 1.0) {
                return Err(EvalError::Logql(LogqlError::Unsupported(format!("quantile_over_time with φ = {q}: use a value strictly between 0 and 1"))));
            }
            AggFn::Quantile(q)
        }
        _ => AggFn::Sum,
    };
    let field = match func {
        RangeFn::BytesOverTime | RangeFn::BytesRate => Some(BYTES_FIELD.to_string()),
        f if f.unwraps() => query.unwrap().map(|u| group_key(u)),
        _ => None,
    };
    let series_key = by.is_none();
    let by_keys: Vec<String> = match &by {
        None => vec![SERIES_KEY.into()],
        Some(names) => names.iter().map(|n| group_key(n)).collect(),
    };
    let spec = AggSpec {
        func: native_fn,
        field,
        by: by_keys,
        bucket_ns: Some(width),
        bucket_offset_ns: (first + 1).rem_euclid(width),
        max_groups: gossamer_query::agg::MAX_GROUPS,
    };
    let native_range = TimeRange { from: first - range + 1, to: at.end.saturating_add(1) };
    let (agg, gone) = aggregate_parts(node, &q, native_range, &spec).await?;
    missing.extend(gone);
    // Group key -> bucket start -> partial.
    let mut per_series: BTreeMap<Vec<Option<String>>, BTreeMap<i64, Partial>> = BTreeMap::new();
    for ((bucket, key), p) in agg.groups {
        if let Some(b) = bucket {
            per_series.entry(key).or_default().insert(b, p);
        }
    }
    let dropped = query.dropped();
    let secs = range as f64 / 1e9;
    let mut out = Vec::new();
    for (key, buckets) in per_series {
        let labels = if series_key {
            let raw = key.first().cloned().flatten().unwrap_or_default();
            shown(serde_json::from_str(&raw).unwrap_or_default(), &dropped)
        } else {
            let names = by.as_deref().unwrap_or_default();
            names.iter().zip(key).filter_map(|(n, v)| Some((n.clone(), v.filter(|v| !v.is_empty())?))).collect()
        };
        let mut points = BTreeMap::new();
        for t in at.steps() {
            let mut window: Option<Partial> = None;
            for (_, p) in buckets.range(t - range + 1..=t) {
                match &mut window {
                    None => window = Some(p.clone()),
                    Some(w) => w.merge(p),
                }
            }
            let Some(w) = window else { continue };
            if w.events == 0 {
                continue;
            }
            // An unwrapped function reads the window's partial; no number, no point.
            let of_field = |f: AggFn| w.number(f);
            let v = match func {
                RangeFn::CountOverTime => Some(w.events as f64),
                RangeFn::Rate => Some(w.events as f64 / secs),
                RangeFn::BytesOverTime => Some(w.sum),
                RangeFn::BytesRate => Some(w.sum / secs),
                RangeFn::SumOverTime => of_field(AggFn::Sum),
                RangeFn::AvgOverTime => of_field(AggFn::Avg),
                RangeFn::MinOverTime => of_field(AggFn::Min),
                RangeFn::MaxOverTime => of_field(AggFn::Max),
                RangeFn::QuantileOverTime => of_field(native_fn),
            };
            let Some(v) = v else { continue };
            points.insert(t, v);
        }
        if !points.is_empty() {
            out.push(Series { labels, points });
        }
    }
    Ok(out)
}

/// The labels a series is grouped under (`detected_level` is the `level` label).
fn grouped(labels: &Labels, grouping: Option<&Grouping>) -> Labels {
    match grouping {
        None => Labels::new(),
        Some(g) if g.without => labels.iter().filter(|(k, _)| !g.labels.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(g) => g
            .labels
            .iter()
            .filter_map(|name| {
                let value = labels.get(name).or_else(|| if name == "detected_level" { labels.get("level") } else { None })?;
                Some((name.clone(), value.clone()))
            })
            .collect(),
    }
}

fn aggregate(op: AggOp, param: Option<f64>, grouping: Option<&Grouping>, series: Vec<Series>) -> Result<Vec<Series>, EvalError> {
    if let AggOp::Topk | AggOp::Bottomk = op {
        let k = param.unwrap_or(0.0);
        if k < 1.0 || k.fract() != 0.0 {
            return Err(bad(format!("invalid k for topk/bottomk: {k}: use a whole number of at least 1")));
        }
        let k = k as usize;
        // Per step and group, the k series with the largest (smallest) values keep it.
        let mut steps: BTreeMap<(i64, Labels), Vec<(f64, usize)>> = BTreeMap::new();
        for (i, s) in series.iter().enumerate() {
            for (t, v) in &s.points {
                steps.entry((*t, grouped(&s.labels, grouping))).or_default().push((*v, i));
            }
        }
        let mut out: Vec<Series> = series.iter().map(|s| Series { labels: s.labels.clone(), points: BTreeMap::new() }).collect();
        for ((t, _), mut vals) in steps {
            vals.sort_by(|a, b| if op == AggOp::Topk { b.0.total_cmp(&a.0) } else { a.0.total_cmp(&b.0) });
            for (v, i) in vals.into_iter().take(k) {
                out[i].points.insert(t, v);
            }
        }
        out.retain(|s| !s.points.is_empty());
        return Ok(out);
    }
    let mut groups: BTreeMap<Labels, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    for s in series {
        let g = groups.entry(grouped(&s.labels, grouping)).or_default();
        for (t, v) in s.points {
            g.entry(t).or_default().push(v);
        }
    }
    Ok(groups
        .into_iter()
        .map(|(labels, steps)| Series {
            labels,
            points: steps
                .into_iter()
                .map(|(t, vs)| {
                    let n = vs.len() as f64;
                    let v = match op {
                        AggOp::Sum => vs.iter().sum(),
                        AggOp::Avg => vs.iter().sum::<f64>() / n,
                        AggOp::Min => vs.iter().copied().fold(f64::INFINITY, f64::min),
                        AggOp::Max => vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        AggOp::Count => n,
                        AggOp::Topk | AggOp::Bottomk => unreachable!("answered above"),
                    };
                    (t, v)
                })
                .collect(),
        })
        .collect())
}

/// `a op b` point by point: a comparison without `bool` keeps the left value where it
/// holds (a filter), with `bool` gives 1 or 0; two vectors pair series with equal labels.
fn binary(op: BinOp, keep_bool: bool, l: Value, r: Value) -> Result<Value, EvalError> {
    let apply = |a: f64, b: f64, keep: f64| -> Option<f64> {
        let v = op.apply(a, b);
        if op.comparison() && !keep_bool {
            (v == 1.0).then_some(keep)
        } else {
            Some(v)
        }
    };
    Ok(match (l, r) {
        (Value::Scalar(a), Value::Scalar(b)) => {
            if op.comparison() && !keep_bool {
                return Err(bad("comparisons between scalars must use BOOL modifier"));
            }
            Value::Scalar(op.apply(a, b))
        }
        (Value::Vector(vs), Value::Scalar(b)) => Value::Vector(
            vs.into_iter()
                .map(|s| Series { points: s.points.iter().filter_map(|(t, a)| Some((*t, apply(*a, b, *a)?))).collect(), labels: s.labels })
                .filter(|s| !s.points.is_empty())
                .collect(),
        ),
        (Value::Scalar(a), Value::Vector(vs)) => Value::Vector(
            vs.into_iter()
                .map(|s| Series { points: s.points.iter().filter_map(|(t, b)| Some((*t, apply(a, *b, *b)?))).collect(), labels: s.labels })
                .filter(|s| !s.points.is_empty())
                .collect(),
        ),
        (Value::Vector(ls), Value::Vector(rs)) => {
            let right: BTreeMap<&Labels, &Series> = rs.iter().map(|s| (&s.labels, s)).collect();
            Value::Vector(
                ls.iter()
                    .filter_map(|s| {
                        let other = right.get(&s.labels)?;
                        let points: BTreeMap<i64, f64> =
                            s.points.iter().filter_map(|(t, a)| Some((*t, apply(*a, *other.points.get(t)?, *a)?))).collect();
                        (!points.is_empty()).then(|| Series { labels: s.labels.clone(), points })
                    })
                    .collect(),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], points: &[(i64, f64)]) -> Series {
        Series { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), points: points.iter().copied().collect() }
    }

    #[test]
    fn steps_cover_start_to_end_inclusive() {
        let at = Eval { start: 10, end: 40, step: 10, limit: 1, order: Order::Desc };
        assert_eq!(at.steps().collect::<Vec<_>>(), vec![10, 20, 30, 40]);
        let instant = Eval { step: 0, ..at };
        assert_eq!(instant.steps().collect::<Vec<_>>(), vec![40]);
    }

    #[test]
    fn aggregations_group_and_rank() {
        let input = || vec![series(&[("app", "a"), ("host", "1")], &[(1, 1.0), (2, 5.0)]), series(&[("app", "a"), ("host", "2")], &[(1, 3.0)]), series(&[("app", "b")], &[(1, 4.0)])];
        let by_app = Grouping { without: false, labels: vec!["app".into()] };
        let sum = aggregate(AggOp::Sum, None, Some(&by_app), input()).ok().unwrap();
        assert_eq!(sum.len(), 2);
        assert_eq!(sum[0].labels["app"], "a");
        assert_eq!(sum[0].points, [(1, 4.0), (2, 5.0)].into_iter().collect());
        let total = aggregate(AggOp::Count, None, None, input()).ok().unwrap();
        assert_eq!(total[0].points[&1], 3.0);
        assert!(total[0].labels.is_empty());
        let top = aggregate(AggOp::Topk, Some(1.0), None, input()).ok().unwrap();
        // At t=1 the app=b series (4.0) is on top; at t=2 only host 1 has a value.
        assert_eq!(top.len(), 2);
        assert_eq!(top.iter().map(|s| s.points.len()).sum::<usize>(), 2);
        assert!(aggregate(AggOp::Topk, Some(0.5), None, input()).is_err());
    }

    #[test]
    fn arithmetic_and_filters() {
        let two = binary(BinOp::Add, false, Value::Vector(vec![series(&[], &[(4, 1.0)])]), Value::Vector(vec![series(&[], &[(4, 1.0)])])).ok().unwrap();
        let Value::Vector(v) = two else { panic!() };
        assert_eq!(v[0].points[&4], 2.0);
        let filtered = binary(BinOp::Gt, false, Value::Vector(vec![series(&[("a", "x")], &[(1, 1.0), (2, 9.0)])]), Value::Scalar(5.0)).ok().unwrap();
        let Value::Vector(v) = filtered else { panic!() };
        assert_eq!(v[0].points, [(2, 9.0)].into_iter().collect());
        let Value::Scalar(s) = binary(BinOp::Mul, false, Value::Scalar(2.0), Value::Scalar(2.5)).ok().unwrap() else { panic!() };
        assert_eq!(s, 5.0);
        assert!(binary(BinOp::Gt, false, Value::Scalar(1.0), Value::Scalar(2.0)).is_err());
    }
}
