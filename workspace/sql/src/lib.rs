//! SQL over the stored events, on Apache DataFusion: the table `logs`, whose scans ask
//! the store for what it answers exactly (a time range, stream, level and label
//! equality, full-text terms, a limit) and leave everything else to the engine.
//!
//! The store is reached through [`Source`]: a page of the events matching a query in
//! the native syntax, with the shards that had no live replica. The node gives it the
//! cluster's query service, so a SQL query sees every shard once, whichever node runs
//! it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, MapBuilder, RecordBatch, StringBuilder, TimestampNanosecondBuilder, UInt32Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::arrow::compute::SortOptions;
use gossamer_schemas::Event;

mod aggregates;
pub mod memory;
mod percentile;
mod text;
pub use aggregates::{groups_of, Agg, AggregatePushdown, Group, Grouped, AGGREGATE_TABLE};
pub use memory::MemorySource;
pub use percentile::approx_percentile_udaf;
pub use text::{match_udf, phrase_udf};

/// What a scan asks of the store: events matching `query` (native syntax) with `ts` in
/// `[from, to)`, at most `limit` of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub query: String,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub limit: Option<usize>,
}

/// One page of a scan, and the cursor of the next (none at the end).
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<Event>,
    /// Shards no live replica answered for: the page lacks their events.
    pub missing: Vec<u32>,
    pub next: Option<String>,
}

/// The events a scan reads, a page at a time, newest first (ties by id, highest
/// first): the order the table declares, so `ORDER BY ts DESC LIMIT n` reads no more
/// pages than it needs.
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug + 'static {
    /// The page after `cursor`, of at most `size` events.
    async fn page(&self, scan: &Scan, cursor: Option<String>, size: usize) -> Result<Page, String>;
    /// The native aggregation `agg` of a scan's events (its limit aside), as
    /// `/api/v1/aggregate` answers it, but with every group that has events (with no
    /// keys and no bucket, one group or none), its value null when it has none.
    async fn aggregate(&self, scan: &Scan, agg: &Agg) -> Result<Grouped, String>;
    /// How many shards the events are spread over (the `shard` column).
    fn shards(&self) -> u32;
}

/// The shards missing from any scan of one query: its answer is partial when any are.
#[derive(Debug, Default, Clone)]
pub struct Missing(Arc<Mutex<BTreeSet<u32>>>);

impl Missing {
    pub fn shards(&self) -> Vec<u32> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    fn add(&self, shards: &[u32]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend(shards);
    }
}

/// The columns of `logs`.
pub fn logs_schema() -> SchemaRef {
    let entries = Field::new(
        "entries",
        DataType::Struct(vec![Field::new("keys", DataType::Utf8, false), Field::new("values", DataType::Utf8, true)].into()),
        false,
    );
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("level", DataType::Utf8, true),
        Field::new("message", DataType::Utf8, false),
        Field::new("labels", DataType::Map(Arc::new(entries), false), false),
        Field::new("fields", DataType::Utf8, false),
        Field::new("shard", DataType::UInt32, false),
    ]))
}

/// Events as one record batch of [`logs_schema`], spread over `shards` shards.
pub fn to_batch(schema: &SchemaRef, events: &[Event], shards: u32) -> Result<RecordBatch, DataFusionError> {
    let n = events.len();
    let mut id = StringBuilder::with_capacity(n, n * 36);
    let mut ts = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut stream = StringBuilder::with_capacity(n, n * 16);
    let mut level = StringBuilder::with_capacity(n, n * 5);
    let mut message = StringBuilder::with_capacity(n, n * 120);
    let mut labels = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut fields = StringBuilder::with_capacity(n, n * 32);
    let mut shard = UInt32Builder::with_capacity(n);
    for e in events {
        shard.append_value(gossamer_schemas::shard_for(&e.stream, &e.id, shards));
        id.append_value(e.id.to_string());
        ts.append_value(e.ts);
        stream.append_value(&e.stream);
        if e.level.is_empty() {
            level.append_null();
        } else {
            level.append_value(&e.level);
        }
        message.append_value(&e.message);
        for (k, v) in &e.labels {
            labels.keys().append_value(k);
            labels.values().append_value(v);
        }
        labels.append(true)?;
        fields.append_value(serde_json::Value::Object(e.fields.clone()).to_string());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(ts.finish()),
        Arc::new(stream.finish()),
        Arc::new(level.finish()),
        Arc::new(message.finish()),
        Arc::new(labels.finish()),
        Arc::new(fields.finish()),
        Arc::new(shard.finish()),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The table `logs`: every stored event.
#[derive(Debug)]
pub struct LogsTable {
    source: Arc<dyn Source>,
    schema: SchemaRef,
    missing: Missing,
}

impl LogsTable {
    pub fn new(source: Arc<dyn Source>, missing: Missing) -> Self {
        Self { source, schema: logs_schema(), missing }
    }
}

/// A filter the store answers exactly, as a native query term or a time bound.
#[derive(Debug, Clone, PartialEq)]
enum Pushed {
    Term(String),
    From(i64),
    To(i64),
}

/// A string literal's value.
fn literal_str(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)), _) => Some(s),
        _ => None,
    }
}

/// A timestamp literal in nanoseconds.
fn literal_ns(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(ScalarValue::TimestampNanosecond(Some(v), _), _) => Some(*v),
        Expr::Literal(ScalarValue::TimestampMicrosecond(Some(v), _), _) => v.checked_mul(1_000),
        Expr::Literal(ScalarValue::TimestampMillisecond(Some(v), _), _) => v.checked_mul(1_000_000),
        Expr::Literal(ScalarValue::TimestampSecond(Some(v), _), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

/// A value the native syntax takes unquoted and matches exactly.
fn plain(v: &str) -> bool {
    !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A value the native syntax takes in quotes and matches exactly.
fn quotable(v: &str) -> bool {
    !v.contains('"') && !v.contains('\\')
}

/// The native form of `filter`, when the store answers it exactly.
fn push(filter: &Expr) -> Option<Pushed> {
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            // Literal on the left: turn it round.
            let (left, op, right) = if column_name(right).is_some() || matches!(**right, Expr::ScalarFunction(_)) {
                (right.as_ref(), op.swap()?, left.as_ref())
            } else {
                (left.as_ref(), *op, right.as_ref())
            };
            if let Some(name) = column_name(left) {
                return match (name, op) {
                    ("ts", Operator::GtEq) => literal_ns(right).map(Pushed::From),
                    ("ts", Operator::Gt) => literal_ns(right).and_then(|v| v.checked_add(1)).map(Pushed::From),
                    ("ts", Operator::Lt) => literal_ns(right).map(Pushed::To),
                    ("ts", Operator::LtEq) => literal_ns(right).and_then(|v| v.checked_add(1)).map(Pushed::To),
                    ("stream", Operator::Eq) => literal_str(right).filter(|v| plain(v)).map(|v| Pushed::Term(format!("stream:{v}"))),
                    // The native syntax reads `level:notice` as info; SQL compares the
                    // stored name: only a name stored as it is written is handed over.
                    ("level", Operator::Eq) => literal_str(right)
                        .filter(|v| plain(v) && gossamer_schemas::normalize_level(v) == **v)
                        .map(|v| Pushed::Term(format!("level:{v}"))),
                    _ => None,
                };
            }
            // labels['key'] = 'value'
            if let (Expr::ScalarFunction(f), Operator::Eq) = (left, op) {
                if f.func.name() == "get_field" && f.args.len() == 2 && column_name(&f.args[0]) == Some("labels") {
                    let key = literal_str(&f.args[1]).filter(|k| plain(k))?;
                    let value = literal_str(right).filter(|v| quotable(v))?;
                    return Some(Pushed::Term(format!("labels.{key}:\"{value}\"")));
                }
            }
            None
        }
        // stream LIKE 'loghub.%': the native glob, whose `*` is LIKE's `%` (both anchored
        // at both ends and case-sensitive). LIKE's `_` and escapes have no glob form.
        Expr::Like(like) if !like.negated && !like.case_insensitive && like.escape_char.is_none() => {
            if column_name(&like.expr) != Some("stream") {
                return None;
            }
            let pattern = literal_str(&like.pattern)?;
            let literal = pattern.split('%').filter(|part| !part.is_empty()).all(|part| plain(part) && !part.contains('_'));
            // Only `%` is every stream, which needs no filter.
            (literal && pattern.chars().any(|c| c != '%')).then(|| Pushed::Term(format!("stream:{}", pattern.replace('%', "*"))))
        }
        Expr::ScalarFunction(f) if matches!(f.func.name(), "match" | "phrase") && f.args.len() == 2 => {
            if column_name(&f.args[0]) != Some("message") {
                return None;
            }
            let text = literal_str(&f.args[1])?;
            text::native(f.func.name(), text).map(Pushed::Term)
        }
        _ => None,
    }
}

/// The scan the pushed filters make.
fn scan_of(filters: &[Expr], limit: Option<usize>) -> Scan {
    let mut scan = Scan { limit, ..Default::default() };
    let mut terms = Vec::new();
    for f in filters {
        match push(f) {
            Some(Pushed::Term(t)) => terms.push(t),
            Some(Pushed::From(v)) => scan.from = Some(scan.from.map_or(v, |o| o.max(v))),
            Some(Pushed::To(v)) => scan.to = Some(scan.to.map_or(v, |o| o.min(v))),
            None => {}
        }
    }
    scan.query = terms.join(" ");
    scan
}

#[async_trait]
impl TableProvider for LogsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| if push(f).is_some() { TableProviderFilterPushDown::Exact } else { TableProviderFilterPushDown::Unsupported })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        // DataFusion passes only the filters this table said it answers exactly, and a
        // limit only when nothing above the scan filters or reorders.
        let scan = scan_of(filters, limit);
        let part = Arc::new(Pages { source: self.source.clone(), schema: self.schema.clone(), scan, missing: self.missing.clone() });
        // Newest first, ties by id: said in the projected columns, when both are there.
        let at = |name: &str| {
            let i = self.schema.index_of(name).ok()?;
            projection.map_or(Some(i), |p| p.iter().position(|c| *c == i))
        };
        let descending = SortOptions { descending: true, nulls_first: false };
        let ordering = match (at("ts"), at("id")) {
            (Some(ts), Some(id)) => LexOrdering::new([
                PhysicalSortExpr::new(Arc::new(PhysicalColumn::new("ts", ts)), descending),
                PhysicalSortExpr::new(Arc::new(PhysicalColumn::new("id", id)), descending),
            ]),
            (Some(ts), None) => LexOrdering::new([PhysicalSortExpr::new(Arc::new(PhysicalColumn::new("ts", ts)), descending)]),
            _ => None,
        };
        Ok(Arc::new(StreamingTableExec::try_new(self.schema.clone(), vec![part], projection, ordering, false, limit)?))
    }
}

/// Events in a scan's first page; each next page is twice the last, up to
/// [`LAST_PAGE`].
const FIRST_PAGE: usize = 100;
const LAST_PAGE: usize = 8_000;

/// One scan, read a page at a time as the engine pulls batches.
#[derive(Debug)]
struct Pages {
    source: Arc<dyn Source>,
    schema: SchemaRef,
    scan: Scan,
    missing: Missing,
}

impl PartitionStream for Pages {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        struct State {
            source: Arc<dyn Source>,
            schema: SchemaRef,
            scan: Scan,
            missing: Missing,
            cursor: Option<String>,
            read: usize,
            /// The next page's size: small first, for a query that stops early.
            size: usize,
            done: bool,
        }
        let state = State {
            source: self.source.clone(),
            schema: self.schema.clone(),
            scan: self.scan.clone(),
            missing: self.missing.clone(),
            cursor: None,
            read: 0,
            size: FIRST_PAGE,
            done: false,
        };
        let batches = futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let size = st.scan.limit.map_or(st.size, |l| l.saturating_sub(st.read).clamp(1, st.size));
            st.size = (st.size * 2).min(LAST_PAGE);
            let page = match st.source.page(&st.scan, st.cursor.take(), size).await {
                Ok(p) => p,
                Err(e) => {
                    st.done = true;
                    return Some((Err(DataFusionError::External(e.into())), st));
                }
            };
            st.missing.add(&page.missing);
            st.read += page.events.len();
            st.cursor = page.next;
            st.done = st.cursor.is_none() || st.scan.limit.is_some_and(|l| st.read >= l);
            let batch = to_batch(&st.schema, &page.events, st.source.shards());
            Some((batch, st))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

/// What a SQL query may use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest SQL text accepted, in bytes.
    pub max_len: usize,
    /// Memory the engine may hold for one query (sorts, groups, joins).
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_len: 16 * 1024, memory_bytes: 256 << 20 }
    }
}

/// Why a query was not run: the user's (a 400, with the engine's message) or ours.
#[derive(Debug)]
pub enum SqlError {
    Bad(String),
    Internal(String),
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlError::Bad(m) | SqlError::Internal(m) => f.write_str(m),
        }
    }
}

/// Reads an engine error as the user's or ours, by what lies under its context.
pub fn classify(e: DataFusionError) -> SqlError {
    match e.find_root() {
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) => {
            SqlError::Bad(e.to_string())
        }
        DataFusionError::ResourcesExhausted(m) => SqlError::Bad(format!("the query needs more memory than query_limits.sql_memory_bytes allows: {m}")),
        _ => SqlError::Internal(e.to_string()),
    }
}

/// Plans `sql` (read-only: no DDL, no DML, no `SET`) over `logs` read from `source`;
/// the shards found missing are gathered in the returned [`Missing`] as it runs.
pub async fn plan(source: Arc<dyn Source>, sql: &str, limits: &Limits) -> Result<(datafusion::dataframe::DataFrame, Missing), SqlError> {
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
    if sql.len() > limits.max_len {
        return Err(SqlError::Bad(format!("the SQL is {} bytes; query_limits.max_sql_bytes allows {}", sql.len(), limits.max_len)));
    }
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    // A hard cap: nothing spills to temporary files behind the user's back.
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
        .build_arc()
        .map_err(|e| SqlError::Internal(e.to_string()))?;
    let config = SessionConfig::new().with_information_schema(true).with_default_catalog_and_schema("gossamer", "public");
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_optimizer_rule(Arc::new(AggregatePushdown))
        .build();
    let mut ctx = SessionContext::new_with_state(state);
    datafusion_functions_json::register_all(&mut ctx).map_err(|e| SqlError::Internal(e.to_string()))?;
    ctx.register_udf(match_udf());
    ctx.register_udf(phrase_udf());
    ctx.register_udaf(approx_percentile_udaf());
    let missing = Missing::default();
    ctx.register_table("logs", Arc::new(LogsTable::new(source, missing.clone()))).map_err(|e| SqlError::Internal(e.to_string()))?;
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let frame = ctx.sql_with_options(sql, options).await.map_err(|e| match classify(e) {
        SqlError::Bad(m) if m.contains("not supported") || m.contains("DDL") || m.contains("DML") => {
            SqlError::Bad(format!("only queries are accepted (SELECT, EXPLAIN, WITH): {m}"))
        }
        other => other,
    })?;
    Ok((frame, missing))
}

#[cfg(test)]
mod tests;
