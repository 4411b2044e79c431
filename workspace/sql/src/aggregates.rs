//! Aggregations the store answers itself. `SELECT <keys>, <one aggregate> FROM logs
//! [WHERE <what the store answers exactly>] GROUP BY <keys>` becomes the native
//! aggregation of the same question (`/api/v1/aggregate`'s), read from the index's
//! postings where it can, instead of every matching event read and aggregated by the
//! engine. The keys may be `stream`, `level`, `labels['k']` and one time bucket
//! (`date_bin(INTERVAL ..., ts)` from the epoch, or `date_trunc('minute', ts)` and the
//! like); the aggregate `count(*)`, or `sum`, `avg`, `min`, `max` or
//! `approx_percentile(_, p)` of `json_get_float(fields, 'k')`.
//!
//! An optimizer rule swaps such an aggregate for a scan of the table `logs_aggregate`
//! (EXPLAIN shows it), whose rows come from [`Source::aggregate`] when the query runs.
//! Every group the engine would make is kept: a group without a number has a NULL, as
//! in SQL.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider, TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;

use crate::{literal_str, plain, push, scan_of, LogsTable, Missing, Scan, Source};

/// One native aggregation: `func` (count, sum, avg, min, max, pNN) of `field`, grouped
/// by the keys `by` (stream, level, labels.k) and time buckets of `bucket_ns`.
#[derive(Debug, Clone, PartialEq)]
pub struct Agg {
    pub func: String,
    pub field: Option<String>,
    pub by: Vec<String>,
    pub bucket_ns: Option<i64>,
}

/// A group: its key values (in `by`'s order), its bucket's start, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub key: Vec<Option<String>>,
    pub bucket: Option<i64>,
    pub value: Option<f64>,
}

/// Groups, and the shards no live replica answered for.
#[derive(Debug, Default)]
pub struct Grouped {
    pub groups: Vec<Group>,
    pub missing: Vec<u32>,
}

/// The groups of a native aggregation's answer (`[{"key": {...}, "bucket": "<RFC
/// 3339>" | null, "value": N}]`).
pub fn groups_of(answer: &[serde_json::Value], agg: &Agg) -> Result<Vec<Group>, String> {
    answer
        .iter()
        .map(|g| {
            let key = agg.by.iter().map(|k| g["key"][k.as_str()].as_str().map(str::to_string)).collect();
            let bucket = match g["bucket"].as_str() {
                Some(b) => Some(
                    chrono::DateTime::parse_from_rfc3339(b).map_err(|e| format!("bucket {b}: {e}"))?.timestamp_nanos_opt().ok_or("a bucket out of range")?,
                ),
                None => None,
            };
            Ok(Group { key, bucket, value: g["value"].as_f64() })
        })
        .collect()
}

/// The table an aggregate's scan is swapped for.
pub const AGGREGATE_TABLE: &str = "logs_aggregate";

/// The optimizer rule that hands aggregations to the store.
#[derive(Debug, Default)]
pub struct AggregatePushdown;

/// What the aggregate's columns are: the engine moves expressions into a projection
/// under the aggregate (`__datafusion_extracted_1`); a column of it reads as its
/// expression.
struct Below<'a>(Option<&'a datafusion::logical_expr::Projection>);

impl Below<'_> {
    fn resolve<'e>(&'e self, e: &'e Expr) -> &'e Expr {
        let (Expr::Column(c), Some(p)) = (e, self.0) else { return e };
        match p.schema.index_of_column(c) {
            Ok(i) => match &p.expr[i] {
                Expr::Alias(a) => a.expr.as_ref(),
                other => other,
            },
            Err(_) => e,
        }
    }
}

/// A JSON field read as a number: `json_get_float(fields, 'k')`, `k` a plain key.
fn number_field(e: &Expr) -> Option<String> {
    let Expr::ScalarFunction(ScalarFunction { func, args }) = e else { return None };
    if func.name() != "json_get_float" || args.len() != 2 || !matches!(&args[0], Expr::Column(c) if c.name == "fields") {
        return None;
    }
    literal_str(&args[1]).filter(|k| plain(k) && !k.contains('.')).map(str::to_string)
}

fn literal_f64(e: &Expr) -> Option<f64> {
    match e {
        Expr::Literal(ScalarValue::Float64(Some(v)), _) => Some(*v),
        Expr::Literal(ScalarValue::Float32(Some(v)), _) => Some(f64::from(*v)),
        Expr::Literal(ScalarValue::Int64(Some(v)), _) => Some(*v as f64),
        _ => None,
    }
}

/// The native function and field of the one aggregate expression.
fn native_func(e: &Expr, below: &Below) -> Option<(String, Option<String>)> {
    let e = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        other => other,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = e else { return None };
    if params.distinct || params.filter.is_some() || !params.order_by.is_empty() {
        return None;
    }
    match (func.name(), params.args.as_slice()) {
        ("count", [Expr::Literal(v, _)]) if !v.is_null() => Some(("count".into(), None)),
        ("sum" | "avg" | "min" | "max", [arg]) => Some((func.name().to_string(), Some(number_field(below.resolve(arg))?))),
        ("approx_percentile", [arg, p]) => {
            // Only a whole percent or a tenth of one names the same quantile natively.
            let pct = literal_f64(below.resolve(p))? * 100.0;
            let tenths = (pct * 10.0).round();
            if !(0.0..=1000.0).contains(&tenths) || (tenths / 10.0 - pct).abs() > 1e-9 {
                return None;
            }
            Some((format!("p{}", tenths / 10.0), Some(number_field(below.resolve(arg))?)))
        }
        _ => None,
    }
}

/// A group expression: a native key, or a time bucket's width.
enum Key {
    Native(String),
    Bucket(i64),
}

fn group_key(e: &Expr, below: &Below) -> Option<Key> {
    match below.resolve(e) {
        Expr::Column(c) if c.name == "stream" || c.name == "level" => Some(Key::Native(c.name.clone())),
        Expr::ScalarFunction(ScalarFunction { func, args }) => match (func.name(), args.as_slice()) {
            ("get_field", [Expr::Column(c), k]) if c.name == "labels" => literal_str(k).filter(|k| plain(k)).map(|k| Key::Native(format!("labels.{k}"))),
            // From the epoch, as native buckets are.
            ("date_bin", [Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(i)), _), Expr::Column(c)]) if c.name == "ts" && i.months == 0 => {
                let ns = i64::from(i.days).checked_mul(86_400_000_000_000)?.checked_add(i.nanoseconds)?;
                (ns > 0).then_some(Key::Bucket(ns))
            }
            ("date_trunc", [unit, Expr::Column(c)]) if c.name == "ts" => {
                let ns = match literal_str(unit)?.to_ascii_lowercase().as_str() {
                    "second" => 1_000_000_000,
                    "minute" => 60_000_000_000,
                    "hour" => 3_600_000_000_000,
                    "day" => 86_400_000_000_000,
                    _ => return None,
                };
                Some(Key::Bucket(ns))
            }
            _ => None,
        },
        _ => None,
    }
}

impl AggregatePushdown {
    fn swap(agg: &Aggregate) -> Result<Option<LogicalPlan>> {
        let (below, input) = match agg.input.as_ref() {
            LogicalPlan::Projection(p) => (Below(Some(p)), p.input.as_ref()),
            other => (Below(None), other),
        };
        let [aggregate] = agg.aggr_expr.as_slice() else { return Ok(None) };
        let Some((func, field)) = native_func(aggregate, &below) else { return Ok(None) };
        let Some(keys) = agg.group_expr.iter().map(|e| group_key(e, &below)).collect::<Option<Vec<_>>>() else { return Ok(None) };
        let buckets: Vec<i64> = keys.iter().filter_map(|k| if let Key::Bucket(ns) = k { Some(*ns) } else { None }).collect();
        if buckets.len() > 1 {
            return Ok(None);
        }
        let LogicalPlan::TableScan(scan) = input else { return Ok(None) };
        if scan.fetch.is_some() || !scan.filters.iter().all(|f| push(f).is_some()) {
            return Ok(None);
        }
        let Ok(provider) = source_as_provider(&scan.source) else { return Ok(None) };
        let Some(logs) = provider.downcast_ref::<LogsTable>() else { return Ok(None) };
        // The columns keep the aggregate's names, types and qualifiers exactly.
        let out = agg.schema.as_ref();
        let mut columns = Vec::with_capacity(keys.len() + 1);
        let mut fields = Vec::with_capacity(keys.len() + 1);
        for (i, key) in keys.iter().enumerate() {
            let t = out.field(i).data_type();
            let fits = match key {
                Key::Native(_) => matches!(t, DataType::Utf8),
                Key::Bucket(_) => matches!(t, DataType::Timestamp(TimeUnit::Nanosecond, _)),
            };
            if !fits {
                return Ok(None);
            }
            columns.push(match key {
                Key::Native(k) => Column::Key(agg_key_index(&keys, k)),
                Key::Bucket(_) => Column::Bucket,
            });
            fields.push(Field::new(format!("c{i}"), t.clone(), out.field(i).is_nullable()));
        }
        let value_type = out.field(keys.len()).data_type();
        if !matches!(value_type, DataType::Int64 | DataType::Float64) {
            return Ok(None);
        }
        columns.push(Column::Value);
        fields.push(Field::new(format!("c{}", keys.len()), value_type.clone(), out.field(keys.len()).is_nullable()));
        let native = Agg {
            func,
            field,
            by: keys.iter().filter_map(|k| if let Key::Native(k) = k { Some(k.clone()) } else { None }).collect(),
            bucket_ns: buckets.first().copied(),
        };
        let table = AggregateTable {
            source: logs.source.clone(),
            missing: logs.missing.clone(),
            scan: scan_of(&scan.filters, None),
            agg: native,
            columns,
            schema: Arc::new(Schema::new(fields.clone())),
        };
        let project = fields.iter().enumerate().map(|(i, f)| {
            let (qualifier, field) = out.qualified_field(i);
            Expr::Column(datafusion::common::Column::new(Some(AGGREGATE_TABLE), f.name())).alias_qualified(qualifier.cloned(), field.name())
        });
        let plan = LogicalPlanBuilder::scan(AGGREGATE_TABLE, provider_as_source(Arc::new(table)), None)?.project(project)?.build()?;
        Ok(Some(plan))
    }
}

/// Where native key `k` is in the native `by`.
fn agg_key_index(keys: &[Key], k: &str) -> usize {
    keys.iter().filter_map(|x| if let Key::Native(n) = x { Some(n.as_str()) } else { None }).position(|n| n == k).unwrap_or(0)
}

impl OptimizerRule for AggregatePushdown {
    fn name(&self) -> &str {
        "gossamer_aggregate_pushdown"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = &plan else { return Ok(Transformed::no(plan)) };
        match Self::swap(agg)? {
            Some(swapped) => Ok(Transformed::yes(swapped)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// What each column of the swapped-in table holds.
#[derive(Debug, Clone, Copy)]
enum Column {
    /// The native key at this index of `by`.
    Key(usize),
    Bucket,
    Value,
}

/// The groups of one native aggregation: one partition, read when the query runs.
#[derive(Debug, Clone)]
struct AggregateTable {
    source: Arc<dyn Source>,
    missing: Missing,
    scan: Scan,
    agg: Agg,
    columns: Vec<Column>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for AggregateTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(&self, _state: &dyn Session, projection: Option<&Vec<usize>>, _filters: &[Expr], _limit: Option<usize>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(StreamingTableExec::try_new(self.schema.clone(), vec![Arc::new(self.clone())], projection, vec![], false, None)?))
    }
}

impl AggregateTable {
    async fn groups(&self) -> Result<Vec<Group>> {
        let external = |e: String| DataFusionError::External(e.into());
        let got = self.source.aggregate(&self.scan, &self.agg).await.map_err(external)?;
        self.missing.add(&got.missing);
        let mut groups = got.groups;
        // An aggregate with no groups is one row: a zero count, else NULL.
        if self.agg.by.is_empty() && self.agg.bucket_ns.is_none() && groups.is_empty() {
            groups.push(Group { key: Vec::new(), bucket: None, value: (self.agg.func == "count").then_some(0.0) });
        }
        Ok(groups)
    }

    async fn batch(&self) -> Result<RecordBatch> {
        let groups = self.groups().await?;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (column, field) in self.columns.iter().zip(self.schema.fields()) {
            arrays.push(match (column, field.data_type()) {
                (Column::Key(i), _) => Arc::new(groups.iter().map(|g| g.key.get(*i).cloned().flatten()).collect::<StringArray>()),
                (Column::Bucket, DataType::Timestamp(_, tz)) => {
                    Arc::new(groups.iter().map(|g| g.bucket).collect::<TimestampNanosecondArray>().with_timezone_opt(tz.clone()))
                }
                (Column::Value, DataType::Int64) => Arc::new(groups.iter().map(|g| g.value.map(|v| v as i64)).collect::<Int64Array>()),
                (Column::Value, _) => Arc::new(groups.iter().map(|g| g.value).collect::<Float64Array>()),
                (Column::Bucket, t) => return Err(DataFusionError::Internal(format!("a bucket column of type {t}"))),
            });
        }
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

impl PartitionStream for AggregateTable {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let table = self.clone();
        let batch = futures::stream::once(async move { table.batch().await });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batch))
    }
}
