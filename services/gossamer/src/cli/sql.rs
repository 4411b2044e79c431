//! `gossamer sql 'SELECT ...'`: a SQL query over the table `logs` on a node, as a table
//! on a terminal, or as CSV, NDJSON or JSON.

use std::io::{Read, Write};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::Value;

use crate::client::rest::with_token;

#[derive(Args)]
pub struct SqlCmd {
    #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// table (the default: columns aligned), csv, ndjson or json.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// The query, e.g. "SELECT level, count(*) FROM logs GROUP BY level".
    pub sql: String,
}

/// Rows as an aligned text table; a cell is its JSON value, strings bare.
fn table(columns: &[String], rows: &[Value]) -> String {
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "NULL".into(),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = rows.iter().map(|r| columns.iter().map(|c| cell(&r[c])).collect()).collect();
    let widths: Vec<usize> =
        columns.iter().enumerate().map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.chars().count()]).max().unwrap_or(0)).collect();
    let line = |vals: &[String]| {
        let padded: Vec<String> = vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        padded.join(" | ").trim_end().to_string()
    };
    let mut out = vec![line(columns), widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-")];
    out.extend(cells.iter().map(|r| line(r)));
    out.push(format!("({} row{})", rows.len(), if rows.len() == 1 { "" } else { "s" }));
    out.join("\n") + "\n"
}

pub fn run(a: SqlCmd) -> Result<()> {
    let base = a.server.trim_end_matches('/');
    let wire = if a.format == "table" { "json" } else { a.format.as_str() };
    if !matches!(wire, "json" | "ndjson" | "csv") {
        bail!("--format must be table, csv, ndjson or json, not {:?}", a.format);
    }
    let req = with_token(ureq::post(&format!("{base}/api/v1/sql")));
    let answer = match req.send_json(serde_json::json!({"sql": a.sql, "format": wire})) {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body: Value = r.into_json().unwrap_or_default();
            bail!("{} ({code})", body["error"].as_str().unwrap_or("query refused"))
        }
        Err(e) => bail!("cannot reach {base}: {e}"),
    };
    let mut out = std::io::stdout().lock();
    if a.format != "table" {
        let mut reader = answer.into_reader();
        std::io::copy(&mut reader, &mut out).context("the answer stopped early (see the node's log: sql-answer-cut-short)")?;
        return Ok(());
    }
    let mut text = String::new();
    answer.into_reader().read_to_string(&mut text).context("the answer stopped early (see the node's log: sql-answer-cut-short)")?;
    let body: Value = serde_json::from_str(&text).context("reading the answer")?;
    let columns: Vec<String> = body["columns"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(String::from)).collect();
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    out.write_all(table(&columns, &rows).as_bytes())?;
    if body["partial"] == true {
        eprintln!("partial: shards {} had no live replica", body["missing_shards"]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_columns_and_shows_null() {
        let rows = vec![serde_json::json!({"level": "error", "n": 12}), serde_json::json!({"level": null, "n": 3})];
        let t = table(&["level".into(), "n".into()], &rows);
        assert_eq!(t, "level | n\n------+---\nerror | 12\nNULL  | 3\n(2 rows)\n");
    }
}
