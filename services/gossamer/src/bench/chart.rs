//! `gossamer bench chart`: draw the PNG chart of a `bench query --json` file again.



use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct ChartArgs {
    /// A file written by `bench query --json`.
    #[arg(long)]
    pub json: PathBuf,
    #[arg(long)]
    pub png: PathBuf,
}

pub fn chart(a: ChartArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.json).with_context(|| format!("reading {}", a.json.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", a.json.display()))?;
    let Some(queries) = v["queries"].as_array() else {
        anyhow::bail!("{} has no `queries`: is it from `bench query --json`?", a.json.display());
    };
    let bars: Vec<crate::bench::plot::Bar> = queries
        .iter()
        .map(|q| crate::bench::plot::Bar {
            label: q["name"].as_str().unwrap_or("?").to_string(),
            p50: q["p50_ms"].as_f64().unwrap_or(0.0),
            p99: q["p99_ms"].as_f64().unwrap_or(0.0),
            ripgrep: q["ripgrep_ms"].as_f64(),
        })
        .collect();
    let title = format!("Gossamer, {} events on one node ({} shards): query latency, ms (log scale)", v["events"], v["shards"]);
    crate::bench::plot::latency_png(&a.png, &title, &bars)?;
    eprintln!("chart written to {}", a.png.display());
    Ok(())
}
