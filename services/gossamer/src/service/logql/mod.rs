//! LogQL, the Loki door's query language, on the query service: [`parse`] reads the
//! subset Gossamer answers (refusing the rest by name), [`compile`] turns a log query's
//! selector and filters into Gossamer's own query, [`eval`] answers log and metric
//! queries through the query service's search and aggregation.

pub mod ast;
pub mod compile;
pub mod eval;
pub mod parse;

pub use ast::Query;
pub use eval::{evaluate, Answer, Eval, EvalError, LogStream, Series, Value};
pub use parse::{parse, LogqlError};

use std::collections::{BTreeMap, BTreeSet};

use gossamer_query::agg::{AggFn, BYTES_FIELD, SERIES_KEY};
use gossamer_query::{AggSpec, TimeRange};

use crate::handle::NodeHandle;
use crate::service::query::aggregate_parts;

/// What the label and series routes need: every label set in a range (matching any of
/// `selectors`, or every event), with its events and bytes.
pub struct Census {
    pub series: BTreeMap<eval::Labels, (u64, f64)>,
    pub missing: Vec<u32>,
}

impl Census {
    pub fn names(&self) -> BTreeSet<&str> {
        self.series.keys().flat_map(|l| l.keys().map(String::as_str)).collect()
    }

    pub fn values(&self, name: &str) -> BTreeSet<&str> {
        self.series.keys().filter_map(|l| l.get(name).map(String::as_str)).collect()
    }
}

/// The label sets of the events in `range` that match one of `selectors` (log queries
/// such as `{app="web"}`), or of every event when there are none.
pub async fn census(node: &NodeHandle, selectors: &[String], range: TimeRange) -> Result<Census, EvalError> {
    let mut queries = Vec::new();
    for s in selectors {
        match parse(s)? {
            Query::Logs(l) => queries.push(compile::compile(&l)?.to_string()),
            Query::Metric(_) => return Err(EvalError::Logql(LogqlError::Syntax { col: 1, message: format!("{s:?} is not a stream selector") })),
        }
    }
    if queries.is_empty() {
        queries.push(String::new());
    }
    let spec = AggSpec {
        func: AggFn::Sum,
        field: Some(BYTES_FIELD.into()),
        by: vec![SERIES_KEY.into()],
        bucket_ns: None,
        bucket_offset_ns: 0,
        max_groups: gossamer_query::agg::MAX_GROUPS,
    };
    let mut out = Census { series: BTreeMap::new(), missing: Vec::new() };
    for q in queries {
        let (agg, missing) = aggregate_parts(node, &q, range, &spec).await?;
        out.missing.extend(missing);
        for ((_, key), p) in agg.groups {
            let raw = key.into_iter().next().flatten().unwrap_or_default();
            let labels: eval::Labels = serde_json::from_str(&raw).unwrap_or_default();
            // A series two selectors both match counts once.
            out.series.insert(labels, (p.events, p.sum));
        }
    }
    out.missing.sort_unstable();
    out.missing.dedup();
    Ok(out)
}
