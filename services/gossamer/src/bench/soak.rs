//! `gossamer bench soak`: publish at a fixed rate under a query load for a while;
//! report RSS and lag over time and reconcile every acked event at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;

use crate::bench::common::*;

#[derive(Args)]
pub struct SoakBench {
    /// How long to publish: 30s, 10m, 1h.
    #[arg(long, default_value = "60s")]
    pub duration: String,
    /// Events per second.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    /// Seconds between samples of RSS and lag.
    #[arg(long, default_value_t = 5)]
    pub sample_every: u64,
    #[arg(long, default_value = "integration/testdata/loghub")]
    pub dataset: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct SoakSample {
    pub second: f64,
    pub rss_mib: f64,
    pub acked: u64,
    pub stored: u64,
    /// Acked but not yet stored.
    pub lag: u64,
}

pub fn soak(a: SoakBench) -> Result<()> {
    let duration = gossamer_query::agg::parse_duration(&a.duration)
        .map(|ns| Duration::from_nanos(ns as u64))
        .with_context(|| format!("invalid --duration {:?}: use 30s, 10m, 1h", a.duration))?;
    if a.rate == 0 {
        bail!("--rate must be at least 1 event per second");
    }
    let datasets = load_loghub(&a.dataset)?;
    let tmp = tempfile::tempdir()?;
    let server = crate::local::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let node = NodeProcess::start(&server.url(), &tmp.path().join("node"), a.shards)?;
    let node_pid = node.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let attempted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let url = server.url();
    let per_message: u64 = 100;
    eprintln!("soak: {} events/s for {:?} against a node with {} shards ...", a.rate, duration, a.shards);

    // The producer: messages of 100 events on a fixed schedule, JetStream acks awaited.
    let producer = {
        let (acked, attempted) = (acked.clone(), attempted.clone());
        let datasets_rows: Vec<(String, Vec<String>)> = datasets
            .iter()
            .map(|(n, rows)| (n.clone(), rows.iter().map(|r| r.message.clone()).collect()))
            .collect();
        rt.spawn(async move {
            let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
            let js = async_nats::jetstream::new(client);
            let interval = Duration::from_secs_f64(per_message as f64 / a.rate as f64);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let start = Instant::now();
            let mut acks = FuturesUnordered::new();
            let mut i = 0usize;
            while start.elapsed() < duration {
                ticker.tick().await;
                let (name, rows) = &datasets_rows[i % datasets_rows.len()];
                let body: String = (0..per_message as usize)
                    .map(|j| {
                        let row = &rows[(i * 7 + j) % rows.len()];
                        format!("{}\n", serde_json::json!({"id": uuid::Uuid::now_v7().to_string(), "message": row, "labels": {"dataset": name}, "fields": {"latency_ms": 1 + (i * 31 + j) % 2000}}))
                    })
                    .collect();
                attempted.fetch_add(per_message, std::sync::atomic::Ordering::SeqCst);
                let ack = js.publish(format!("logs.soak.{name}"), body.into()).await?;
                let acked = acked.clone();
                acks.push(async move {
                    ack.await?;
                    acked.fetch_add(per_message, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, anyhow::Error>(())
                });
                while let Some(r) = futures::FutureExt::now_or_never(acks.next()).flatten() {
                    r?;
                }
                i += 1;
            }
            while let Some(r) = acks.next().await {
                r?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };

    // The query load, and the samples.
    let base = format!("{}/api/v1", node.http);
    let queries = [
        format!("{base}/search?limit=100&q={}", urlencode("stream:soak.* error")),
        format!("{base}/count?from=-1m&q={}", urlencode("stream:soak.hdfs")),
        format!("{base}/aggregate?fn=p95&field=latency_ms&by=dataset&from=-1m&q="),
    ];
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut latencies = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut q = 0;
    let stored = |node: &NodeProcess| node.stored("soak.").unwrap_or(0);
    while !producer.is_finished() {
        let t = Instant::now();
        ureq::get(&queries[q % queries.len()]).call().context("a soak query failed")?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        q += 1;
        if start.elapsed() >= next_sample {
            let (ack, st) = (acked.load(std::sync::atomic::Ordering::SeqCst), stored(&node));
            samples.push(SoakSample {
                second: start.elapsed().as_secs_f64(),
                rss_mib: rss_kb(node_pid) as f64 / 1024.0,
                acked: ack,
                stored: st,
                lag: ack.saturating_sub(st),
            });
            next_sample += Duration::from_secs(a.sample_every.max(1));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(producer)??;
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    let attempted = attempted.load(std::sync::atomic::Ordering::SeqCst);
    // Reconcile: wait for the node to store everything acked.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut final_stored = stored(&node);
    while final_stored < acked && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        final_stored = stored(&node);
    }
    let rss_end = rss_kb(node_pid) as f64 / 1024.0;
    let peak = peak_rss_kb(node_pid) as f64 / 1024.0;
    node.stop()?;
    drop(server);
    latencies.sort_by(f64::total_cmp);
    let lost = acked.saturating_sub(final_stored);
    let report = serde_json::json!({
        "duration_s": duration.as_secs_f64(),
        "rate": a.rate,
        "acked": acked,
        "attempted": attempted,
        "stored": final_stored,
        "lost": lost,
        "stored_beyond_acked": final_stored.saturating_sub(acked),
        "rss_start_mib": samples.first().map(|s| s.rss_mib),
        "rss_end_mib": rss_end,
        "rss_peak_mib": peak,
        "max_lag": samples.iter().map(|s| s.lag).max(),
        "queries": latencies.len(),
        "query_p50_ms": if latencies.is_empty() { 0.0 } else { percentile(&latencies, 0.5) },
        "query_p99_ms": if latencies.is_empty() { 0.0 } else { percentile(&latencies, 0.99) },
        "samples": samples,
    });
    println!("second   rss MiB      acked     stored    lag");
    for s in report["samples"].as_array().into_iter().flatten() {
        println!(
            "{:>6.0} {:>9.0} {:>10} {:>10} {:>6}",
            s["second"].as_f64().unwrap_or(0.0),
            s["rss_mib"].as_f64().unwrap_or(0.0),
            s["acked"],
            s["stored"],
            s["lag"]
        );
    }
    println!(
        "acked {acked}, stored {final_stored}, lost {lost}; RSS end {rss_end:.0} MiB, peak {peak:.0} MiB; {} queries, p50 {:.1} ms, p99 {:.1} ms",
        report["queries"], report["query_p50_ms"].as_f64().unwrap_or(0.0), report["query_p99_ms"].as_f64().unwrap_or(0.0)
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if lost > 0 {
        bail!("{lost} acked events were not stored");
    }
    Ok(())
}
