//! Counts the store answers itself: `SELECT <stream and/or level>, count(*) FROM logs
//! [WHERE <what the store answers exactly>] GROUP BY <the same>` (and a bare
//! `count(*)`) become one native count, read from the index's postings where it can,
//! instead of every matching event read and counted by the engine. An optimizer rule
//! swaps the aggregate for a scan of the table `logs_counts` (EXPLAIN shows it), whose
//! rows come from [`Source::counts`] when the query runs.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DataFusionError, Result};
use datafusion::datasource::{provider_as_source, source_as_provider, TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;

use crate::{push, scan_of, LogsTable, Missing, Scan, Source};

/// Groups and their counts, and the shards no live replica answered for.
#[derive(Debug, Default)]
pub struct Counts {
    pub groups: Vec<(Vec<Option<String>>, u64)>,
    pub missing: Vec<u32>,
}

/// The table a counting aggregate's scan is swapped for.
pub const COUNTS_TABLE: &str = "logs_counts";

/// The optimizer rule that hands counts to the store.
#[derive(Debug, Default)]
pub struct CountsPushdown;

/// `count(*)` or `count(<literal>)`, nothing distinct, filtered or ordered.
fn counts_rows(e: &Expr) -> bool {
    match e {
        Expr::Alias(a) => counts_rows(&a.expr),
        Expr::AggregateFunction(AggregateFunction { func, params }) => {
            func.name() == "count"
                && !params.distinct
                && params.filter.is_none()
                && params.order_by.is_empty()
                && params.args.len() == 1
                && matches!(&params.args[0], Expr::Literal(v, _) if !v.is_null())
        }
        _ => false,
    }
}

/// The native group key of a group expression the store counts by.
fn group_key(e: &Expr) -> Option<&'static str> {
    match e {
        Expr::Column(c) if c.name == "stream" => Some("stream"),
        Expr::Column(c) if c.name == "level" => Some("level"),
        _ => None,
    }
}

impl CountsPushdown {
    fn swap(agg: &Aggregate) -> Result<Option<LogicalPlan>> {
        if agg.aggr_expr.len() != 1 || !counts_rows(&agg.aggr_expr[0]) {
            return Ok(None);
        }
        let Some(by) = agg.group_expr.iter().map(group_key).collect::<Option<Vec<_>>>() else { return Ok(None) };
        let LogicalPlan::TableScan(scan) = agg.input.as_ref() else { return Ok(None) };
        if scan.fetch.is_some() || !scan.filters.iter().all(|f| push(f).is_some()) {
            return Ok(None);
        }
        let Ok(provider) = source_as_provider(&scan.source) else { return Ok(None) };
        let Some(logs) = provider.downcast_ref::<LogsTable>() else { return Ok(None) };
        // The output keeps the aggregate's names, types and qualifiers exactly.
        let out = agg.schema.as_ref();
        let mut fields: Vec<Field> = by.iter().enumerate().map(|(i, _)| Field::new(format!("k{i}"), DataType::Utf8, out.field(i).is_nullable())).collect();
        fields.push(Field::new("n", DataType::Int64, out.field(by.len()).is_nullable()));
        let counts = CountsTable {
            source: logs.source.clone(),
            missing: logs.missing.clone(),
            scan: scan_of(&scan.filters, None),
            by: by.iter().map(|k| k.to_string()).collect(),
            schema: Arc::new(Schema::new(fields.clone())),
        };
        let columns = fields.iter().enumerate().map(|(i, f)| {
            let (qualifier, field) = out.qualified_field(i);
            Expr::Column(Column::new(Some(COUNTS_TABLE), f.name())).alias_qualified(qualifier.cloned(), field.name())
        });
        let plan = LogicalPlanBuilder::scan(COUNTS_TABLE, provider_as_source(Arc::new(counts)), None)?.project(columns)?.build()?;
        Ok(Some(plan))
    }
}

impl OptimizerRule for CountsPushdown {
    fn name(&self) -> &str {
        "gossamer_counts_pushdown"
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

/// The counts of one scan, grouped by `by`: one partition, read when the query runs.
#[derive(Debug)]
struct CountsTable {
    source: Arc<dyn Source>,
    missing: Missing,
    scan: Scan,
    by: Vec<String>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for CountsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(&self, _state: &dyn Session, projection: Option<&Vec<usize>>, _filters: &[Expr], _limit: Option<usize>) -> Result<Arc<dyn ExecutionPlan>> {
        let part = Arc::new(CountsPart {
            source: self.source.clone(),
            missing: self.missing.clone(),
            scan: self.scan.clone(),
            by: self.by.clone(),
            schema: self.schema.clone(),
        });
        Ok(Arc::new(StreamingTableExec::try_new(self.schema.clone(), vec![part], projection, vec![], false, None)?))
    }
}

#[derive(Debug)]
struct CountsPart {
    source: Arc<dyn Source>,
    missing: Missing,
    scan: Scan,
    by: Vec<String>,
    schema: SchemaRef,
}

impl CountsPart {
    async fn batch(&self) -> Result<RecordBatch> {
        let mut counts = self.source.counts(&self.scan, &self.by).await.map_err(|e| DataFusionError::External(e.into()))?;
        self.missing.add(&counts.missing);
        // A count with no groups is one row, zero when nothing matched.
        if self.by.is_empty() && counts.groups.is_empty() {
            counts.groups.push((Vec::new(), 0));
        }
        let mut columns: Vec<ArrayRef> = (0..self.by.len())
            .map(|i| Arc::new(counts.groups.iter().map(|(k, _)| k.get(i).cloned().flatten()).collect::<StringArray>()) as ArrayRef)
            .collect();
        columns.push(Arc::new(counts.groups.iter().map(|(_, n)| i64::try_from(*n).unwrap_or(i64::MAX)).collect::<Int64Array>()));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl PartitionStream for CountsPart {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let part = CountsPart {
            source: self.source.clone(),
            missing: self.missing.clone(),
            scan: self.scan.clone(),
            by: self.by.clone(),
            schema: self.schema.clone(),
        };
        let batch = futures::stream::once(async move { part.batch().await });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batch))
    }
}
