//! `gossamer bench backup`: full and incremental backup, verify and restore throughput.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::bench::common::*;

#[derive(Args)]
pub struct BackupBench {
    /// Events in the full backup (the incremental adds a tenth more).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    #[arg(long, default_value = "integration/testdata/loghub")]
    pub dataset: PathBuf,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct BackupFigures {
    pub events: usize,
    pub ndjson_bytes: u64,
    pub sled_bytes: u64,
    pub full: JobFigure,
    pub incremental: JobFigure,
    pub verify_full: JobFigure,
    pub restore: JobFigure,
    /// From the restore request until a count over everything gives every event.
    pub restore_to_queryable_s: f64,
}

pub fn backup(a: BackupBench) -> Result<()> {
    let datasets = load_loghub(&a.dataset)?;
    let tmp = tempfile::tempdir()?;
    let store = tmp.path().join("backups");
    let store_arg = store.to_str().context("a UTF-8 temporary path")?.to_string();
    let extra = ["--backup-store", store_arg.as_str()];
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let server = crate::local::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let url = server.url();
    let node = NodeProcess::start_with(&url, &tmp.path().join("node"), a.shards, &extra)?;
    let more = a.events / 10;
    let ndjson_bytes = rt.block_on(async {
        let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
        eprintln!("storing {} events through gossamer.default.ingest ...", a.events);
        let (msgs, bytes) = payloads(&datasets, a.events, a.batch, "");
        request_all(&client, "gossamer.default.ingest.", &msgs, a.in_flight).await?;
        wait_stored(&node, "loghub", a.events as u64, Instant::now()).await?;
        Ok::<_, anyhow::Error>(bytes)
    })?;
    let sled_bytes = dir_size(&tmp.path().join("node").join("sled"));

    eprintln!("full backup ...");
    let (secs, job) = timed_job(&node.http, "/api/v1/backups", serde_json::json!({"kind": "full", "name": "bench-full"}))?;
    let full = figure(secs, job["manifest"]["bytes"].as_u64().unwrap_or(0), a.events as u64);

    rt.block_on(async {
        let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
        let (msgs, _) = payloads(&datasets, more, a.batch, "");
        request_all(&client, "gossamer.default.ingest.", &msgs, a.in_flight).await?;
        wait_stored(&node, "loghub", (a.events + more) as u64, Instant::now()).await
    })?;
    eprintln!("incremental backup of {more} more events ...");
    let (secs, job) = timed_job(&node.http, "/api/v1/backups", serde_json::json!({"kind": "incremental", "name": "bench-incr"}))?;
    let incremental = figure(secs, job["manifest"]["bytes"].as_u64().unwrap_or(0), more as u64);

    eprintln!("verify the full backup ...");
    let (secs, _) = timed_job(&node.http, "/api/v1/backups/bench-full/verify", serde_json::json!({}))?;
    let verify_full = figure(secs, full.bytes, full.events);
    node.stop()?;
    drop(server);

    eprintln!("restore into a fresh nats-server and node ...");
    let server = crate::local::NatsServer::start(&tmp.path().join("nats-2"), 0)?;
    let node = NodeProcess::start_with(&server.url(), &tmp.path().join("node-2"), a.shards, &extra)?;
    let total = (a.events + more) as u64;
    let start = Instant::now();
    let (secs, _) = timed_job(&node.http, "/api/v1/restore", serde_json::json!({"backup": "bench-incr"}))?;
    let restore = figure(secs, full.bytes + incremental.bytes, total);
    rt.block_on(wait_stored(&node, "loghub", total, start))?;
    let counted: serde_json::Value = ureq::get(&format!("{}/api/v1/count?q=", node.http)).call()?.into_json()?;
    if counted["count"].as_u64() != Some(total) {
        bail!("the restored node counts {} events, not {total}", counted["count"]);
    }
    let restore_to_queryable_s = start.elapsed().as_secs_f64();
    node.stop()?;

    let f = BackupFigures { events: a.events, ndjson_bytes, sled_bytes, full, incremental, verify_full, restore, restore_to_queryable_s };
    println!("events {} (NDJSON {:.1} MB, sled {:.1} MB)", f.events, f.ndjson_bytes as f64 / 1e6, f.sled_bytes as f64 / 1e6);
    for (name, j) in [("full backup", &f.full), ("incremental (+10%)", &f.incremental), ("verify full", &f.verify_full), ("restore full+incr", &f.restore)] {
        println!(
            "{name:<20} {:>7.2} s  {:>8.1} MB  {:>7.1} MB/s  {:>10.0} events/s",
            j.seconds,
            j.bytes as f64 / 1e6,
            j.mb_per_s,
            j.events_per_s
        );
    }
    println!("restore request to every event counted: {:.2} s", f.restore_to_queryable_s);
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&f)?)?;
    }
    Ok(())
}
