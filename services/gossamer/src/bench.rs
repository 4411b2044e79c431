//! `gossamer bench ingest`: in one run, the raw JetStream publish rate of a payload set
//! and the rate at which a node makes the same payloads queryable.
//!
//! Events come from the loghub samples (round-robin over the datasets, re-timed 1 ms
//! apart, fresh ids, a `latency_ms` field), as NDJSON batches, one stream per dataset.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Publish-to-queryable ingest rate beside the raw JetStream publish rate.
    Ingest(IngestBench),
}

#[derive(Args)]
pub struct IngestBench {
    /// Events to publish.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per NATS message.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Messages waiting for their JetStream ack at once.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    #[arg(long, default_value_t = 64)]
    shards: u32,
    /// The loghub samples: a directory of `<Name>/<Name>_2k.log_structured.csv`.
    #[arg(long, default_value = "integration/testdata/loghub")]
    dataset: PathBuf,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct IngestFigures {
    events: usize,
    messages: usize,
    ndjson_bytes: u64,
    raw_jetstream_events_per_s: f64,
    /// The same events published one per message: the bus's per-message rate.
    raw_jetstream_single_events_per_s: f64,
    gossamer_events_per_s: f64,
    ratio: f64,
    publish_seconds: f64,
    queryable_seconds: f64,
    sled_bytes: u64,
    sled_bytes_per_event: f64,
    ndjson_bytes_per_event: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Ingest(a) => ingest(a),
    }
}

/// One message per `batch` events, with the subject it goes to (without the prefix).
fn payloads(dir: &Path, events: usize, batch: usize) -> Result<(Vec<(String, Bytes)>, u64)> {
    let datasets = load_loghub(dir)?;
    let mut per_ds: Vec<Vec<String>> = vec![Vec::new(); datasets.len()];
    let t0: i64 = 1_780_000_000_000_000_000;
    for i in 0..events {
        let d = i % datasets.len();
        let (name, rows) = &datasets[d];
        let row = &rows[(i / datasets.len()) % rows.len()];
        let line = serde_json::json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "ts": t0 + i as i64 * 1_000_000,
            "level": row.level,
            "message": row.message,
            "labels": {"dataset": name, "component": row.component},
            "fields": {"event_id": row.event_id, "latency_ms": 1 + (i * 7919) % 2000},
        });
        per_ds[d].push(line.to_string());
    }
    let mut bytes = 0u64;
    let mut out = Vec::new();
    for (d, lines) in per_ds.iter().enumerate() {
        for chunk in lines.chunks(batch.max(1)) {
            let mut body = chunk.join("\n");
            body.push('\n');
            bytes += body.len() as u64;
            out.push((format!("loghub.{}", datasets[d].0), Bytes::from(body)));
        }
    }
    // Interleave streams the way many producers would.
    out.sort_by_key(|(s, b)| xxhash_rust::xxh3::xxh3_64(&[s.as_bytes(), &b[..64.min(b.len())]].concat()));
    Ok((out, bytes))
}

pub struct Row {
    pub level: String,
    pub component: String,
    pub message: String,
    pub event_id: String,
}

/// Each loghub sample's rows, by lowercased dataset name, sorted by name.
pub fn load_loghub(dir: &Path) -> Result<Vec<(String, Vec<Row>)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading the loghub samples in {}", dir.display()))?;
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let path = dir.join(&name).join(format!("{name}_2k.log_structured.csv"));
        if !path.is_file() {
            continue;
        }
        let mut rdr = csv::Reader::from_path(&path).with_context(|| format!("opening {}", path.display()))?;
        let headers = rdr.headers()?.clone();
        let col = |n: &str| headers.iter().position(|h| h == n);
        let (level, comp, content, eid) = (col("Level"), col("Component"), col("Content"), col("EventId"));
        let mut rows = Vec::new();
        for rec in rdr.records() {
            let rec = rec?;
            let get = |i: Option<usize>, d: &str| i.and_then(|i| rec.get(i)).unwrap_or(d).to_string();
            rows.push(Row {
                level: get(level, "info"),
                component: get(comp, "none"),
                message: get(content, ""),
                event_id: get(eid, ""),
            });
        }
        out.push((name.to_lowercase(), rows));
    }
    if out.is_empty() {
        bail!("no loghub samples under {}", dir.display());
    }
    Ok(out)
}

async fn publish_all(js: &async_nats::jetstream::Context, prefix: &str, msgs: &[(String, Bytes)], in_flight: usize) -> Result<f64> {
    let start = Instant::now();
    let mut acks = FuturesUnordered::new();
    for (subject, body) in msgs {
        while acks.len() >= in_flight {
            if let Some(r) = acks.next().await {
                let _: async_nats::jetstream::publish::PublishAck = r?;
            }
        }
        let ack = js.publish(format!("{prefix}{subject}"), body.clone()).await?;
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn ingest(a: IngestBench) -> Result<()> {
    eprintln!("generating {} events from {} ...", a.events, a.dataset.display());
    let (msgs, ndjson_bytes) = payloads(&a.dataset, a.events, a.batch)?;
    let tmp = tempfile::tempdir()?;
    let server = crate::nats_server::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let mut cfg = gossamer_config::Config::for_test(&server.url(), tmp.path().join("node"));
    cfg.shards = a.shards;
    cfg.logs_max_bytes = 16 << 30;
    let system = actix_rt::System::new();
    let figures = system.block_on(async move {
        let client = gossamer_bus::connect(&cfg.nats, Duration::from_secs(10)).await?;
        let js = async_nats::jetstream::new(client.clone());

        eprintln!("raw JetStream publish of {} messages ...", msgs.len());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH_RAW".into(),
            subjects: vec!["bench.raw.>".into()],
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the raw stream: {e}"))?;
        let raw_s = publish_all(&js, "bench.raw.", &msgs, a.in_flight).await?;
        js.get_stream("BENCH_RAW").await?.purge().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        // One event per message, with 4,096 acks in flight (FIELD-NOTES' best case).
        let singles: Vec<(String, Bytes)> = msgs
            .iter()
            .flat_map(|(s, body)| {
                body.split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| (s.clone(), body.slice_ref(l)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let single_s = publish_all(&js, "bench.raw.", &singles, 4096).await?;
        drop(singles);
        js.delete_stream("BENCH_RAW").await.map_err(|e| anyhow::anyhow!("{e}"))?;

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let node_cfg = cfg.clone();
        let node = actix_rt::spawn(async move {
            crate::node::run(node_cfg, async { let _ = stop_rx.await; }, move |addr| {
                let _ = ready_tx.send(addr);
            })
            .await
        });
        let addr = ready_rx.await.context("the node did not start")?;
        eprintln!("publishing through logs.> to a node at {addr} ...");
        let start = Instant::now();
        let publish_s = publish_all(&js, "logs.", &msgs, a.in_flight).await?;
        let url = format!("http://{addr}/api/v1/count");
        let want = a.events as u64;
        loop {
            let url = url.clone();
            let n = tokio::task::spawn_blocking(move || -> Result<u64> {
                let v: serde_json::Value = ureq::get(&url).call()?.into_json()?;
                Ok(v["count"].as_u64().unwrap_or(0))
            })
            .await??;
            if n >= want {
                break;
            }
            if start.elapsed() > Duration::from_secs(1800) {
                bail!("only {n} of {want} events queryable after 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let queryable_s = start.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        node.await??;
        let sled_bytes = dir_size(&cfg.data.join("sled"));
        let raw = a.events as f64 / raw_s;
        let ours = a.events as f64 / queryable_s;
        Ok::<_, anyhow::Error>(IngestFigures {
            events: a.events,
            messages: msgs.len(),
            ndjson_bytes,
            raw_jetstream_events_per_s: raw,
            raw_jetstream_single_events_per_s: a.events as f64 / single_s,
            gossamer_events_per_s: ours,
            ratio: ours / raw,
            publish_seconds: publish_s,
            queryable_seconds: queryable_s,
            sled_bytes,
            sled_bytes_per_event: sled_bytes as f64 / a.events as f64,
            ndjson_bytes_per_event: ndjson_bytes as f64 / a.events as f64,
        })
    })?;
    drop(server);
    println!("events                      {}", figures.events);
    println!("messages ({} events each)   {}", a.batch, figures.messages);
    println!("raw JetStream publish       {:>10.0} events/s  (same messages)", figures.raw_jetstream_events_per_s);
    println!("raw JetStream publish       {:>10.0} events/s  (one event per message)", figures.raw_jetstream_single_events_per_s);
    println!(
        "gossamer publish->queryable {:>10.0} events/s  ({:.2} x raw same messages, {:.2} x raw one per message)",
        figures.gossamer_events_per_s,
        figures.ratio,
        figures.gossamer_events_per_s / figures.raw_jetstream_single_events_per_s
    );
    println!("  publish took {:.1} s, queryable after {:.1} s", figures.publish_seconds, figures.queryable_seconds);
    println!(
        "sled on disk                {:>10.1} bytes/event  (NDJSON {:.1} bytes/event, {:.2} x)",
        figures.sled_bytes_per_event,
        figures.ndjson_bytes_per_event,
        figures.sled_bytes_per_event / figures.ndjson_bytes_per_event
    );
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)?;
    }
    Ok(())
}
