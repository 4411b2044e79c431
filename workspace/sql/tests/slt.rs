//! The sqllogictest suite: every `.slt` file under `tests/slt/` runs against the table
//! `logs` over the events of `tests/slt/fixture.ndjson` (ties, missing levels and
//! labels, nested and mixed-type fields, unicode), read three at a time so every query
//! reads several pages. `GOSSAMER_SLT_COMPLETE=1` rewrites the files with the engine's
//! answers instead of checking them (then read the diff before keeping it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use gossamer_schemas::Event;
use gossamer_sql::{plan, Limits, MemorySource};
use sqllogictest::{DBOutput, DefaultColumnType};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt")
}

fn fixture() -> Vec<Event> {
    let text = std::fs::read_to_string(dir().join("fixture.ndjson")).expect("reading the fixture");
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

struct Logs {
    events: Vec<Event>,
}

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

/// Rows as text: NULL for a null, `(empty)` for an empty string.
fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SqlError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter> =
            batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<_, _>>().map_err(|e| SqlError(e.to_string()))?;
        for row in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| {
                        let v = f.value(row).to_string();
                        if v.is_empty() {
                            "(empty)".to_string()
                        } else {
                            v
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[async_trait]
impl sqllogictest::AsyncDB for Logs {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let source = Arc::new(MemorySource::new(self.events.clone(), 3));
        let (frame, _) = plan(source, sql, &Limits::default()).await.map_err(|e| SqlError(e.to_string()))?;
        let types: Vec<DefaultColumnType> = frame.schema().fields().iter().map(|f| column_type(f.data_type())).collect();
        let batches = frame.collect().await.map_err(|e| SqlError(gossamer_sql::classify(e).to_string()))?;
        Ok(DBOutput::Rows { types, rows: rows(&batches)? })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "gossamer"
    }
}

#[tokio::test]
async fn the_sqllogictest_files_pass() {
    let events = fixture();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("listing tests/slt")
        .map(|e| e.expect("listing tests/slt").path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the suite has gone missing: {files:?}");
    let complete = std::env::var_os("GOSSAMER_SLT_COMPLETE").is_some();
    let mut failed = Vec::new();
    for file in &files {
        let events = events.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let events = events.clone();
            async move { Ok::<_, SqlError>(Logs { events }) }
        });
        runner.with_column_validator(sqllogictest::strict_column_validator);
        if complete {
            runner
                .update_test_file(file, " ", sqllogictest::default_validator, sqllogictest::default_normalizer, sqllogictest::strict_column_validator)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        } else if let Err(e) = runner.run_file_async(file).await {
            failed.push(format!("{}", e.display(true)));
        }
    }
    assert!(failed.is_empty(), "{} of {} files failed:\n{}", failed.len(), files.len(), failed.join("\n\n"));
}
