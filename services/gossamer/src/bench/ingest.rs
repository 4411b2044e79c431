//! `gossamer bench ingest`: in one run, the raw JetStream publish rate of a payload set
//! and the rate at which a node makes the same payloads queryable.
//!
//! Events come from the loghub samples (round-robin over the datasets, re-timed 1 ms
//! apart, fresh ids, a `latency_ms` field), as NDJSON batches, one stream per dataset.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::bench::common::*;

#[derive(Args)]
pub struct IngestBench {
    /// Events to publish.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Events per NATS message.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Messages waiting for their JetStream ack at once.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    /// The loghub samples: a directory of `<Name>/<Name>_2k.log_structured.csv`.
    #[arg(long, default_value = "integration/testdata/loghub")]
    pub dataset: PathBuf,
    /// Also measure the other ways in with the same events: Loki pushes (protobuf +
    /// snappy) and Elasticsearch `_bulk` requests of 1,000 lines each, and one
    /// `gossamer publish` process feeding an NDJSON file.
    #[arg(long)]
    pub doors: bool,
    /// HTTP requests in flight at once for the doors.
    #[arg(long, default_value_t = 8)]
    pub http_in_flight: usize,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One way in, measured from the first publish until everything is queryable.
#[derive(Debug, Serialize)]
pub struct PathFigures {
    pub events_per_s: f64,
    /// Versus the raw rate of one event per message.
    pub ratio_to_raw_single: f64,
    pub seconds: f64,
    /// CPU seconds used meanwhile.
    pub node_cpu_s: f64,
    pub nats_server_cpu_s: f64,
    /// Seconds from the first publish until the index had caught up too (it runs at a
    /// lower priority and lags during the burst; queries scan what it has not covered).
    pub indexed_s: f64,
}

#[derive(Debug, Serialize)]
pub struct IngestFigures {
    pub events: usize,
    pub messages: usize,
    pub events_per_message: usize,
    pub ndjson_bytes: u64,
    /// The same messages, published raw with JetStream acks.
    pub raw_jetstream_events_per_s: f64,
    /// The same events published one per message: the bus's per-message rate.
    pub raw_jetstream_single_events_per_s: f64,
    pub request_reply: PathFigures,
    pub logs: PathFigures,
    /// Loki pushes of 1,000 lines, protobuf + snappy (with `--doors`).
    pub loki_push: Option<PathFigures>,
    /// `_bulk` requests of 1,000 documents (with `--doors`).
    pub bulk: Option<PathFigures>,
    /// One `gossamer publish` process feeding an NDJSON file (with `--doors`).
    pub publish_cli: Option<PathFigures>,
    /// The node's peak resident memory over the run.
    pub node_peak_rss_kb: u64,
    /// Blocks sealed by ingest that the shards wrote as they came, and opened.
    pub sealed_blocks_kept: u64,
    pub sealed_blocks_opened: u64,
    pub sled_bytes: u64,
    pub sled_bytes_per_event: f64,
    pub ndjson_bytes_per_event: f64,
}

pub fn ingest(a: IngestBench) -> Result<()> {
    let datasets = load_loghub(&a.dataset)?;
    let tmp = tempfile::tempdir()?;
    let server = crate::local::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let nats_pid = server.pid();
    let url = server.url();
    let figures = rt.block_on(async {
        let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
        let js = async_nats::jetstream::new(client.clone());
        eprintln!("generating {} events from {} ...", a.events, a.dataset.display());
        let (msgs, ndjson_bytes) = payloads(&datasets, a.events, a.batch, "");

        eprintln!("raw JetStream publish of {} messages ...", msgs.len());
        let (raw_rate, raw_single) = raw_rates(&js, &msgs, a.in_flight, usize::MAX).await?;

        let node = NodeProcess::start(&url, &tmp.path().join("node"), a.shards)?;
        let node_pid = node.child.id();
        // A path's figures: `pid` is the node it ran on, `cpu0` its and nats-server's CPU
        // seconds when it began.
        let figures_of = |pid: u32, seconds: f64, cpu0: (f64, f64)| PathFigures {
            events_per_s: a.events as f64 / seconds,
            ratio_to_raw_single: a.events as f64 / seconds / raw_single,
            seconds,
            node_cpu_s: cpu_seconds(pid) - cpu0.0,
            nats_server_cpu_s: cpu_seconds(nats_pid) - cpu0.1,
            indexed_s: 0.0,
        };
        let measure = |seconds: f64, cpu0: (f64, f64)| figures_of(node_pid, seconds, cpu0);

        eprintln!("request/reply path: {} requests to gossamer.default.ingest.rr.* ...", msgs.len());
        let (rr_msgs, _) = payloads(&datasets, a.events, a.batch, "rr.");
        let cpu0 = (cpu_seconds(node_pid), cpu_seconds(nats_pid));
        let start = Instant::now();
        request_all(&client, "gossamer.default.ingest.", &rr_msgs, a.in_flight).await?;
        wait_stored(&node, "rr.", a.events as u64, start).await?;
        let mut request_reply = measure(start.elapsed().as_secs_f64(), cpu0);
        // Each path starts on a quiet node: the index finishes what the last one left.
        request_reply.indexed_s = wait_indexed(&node, start).await?;
        drop(rr_msgs);

        eprintln!("logs.> path: {} JetStream publishes to logs.js.* ...", msgs.len());
        let (js_msgs, _) = payloads(&datasets, a.events, a.batch, "js.");
        let cpu0 = (cpu_seconds(node_pid), cpu_seconds(nats_pid));
        let start = Instant::now();
        publish_all(&js, "logs.", &js_msgs, a.in_flight).await?;
        wait_stored(&node, "js.", a.events as u64, start).await?;
        let mut logs = measure(start.elapsed().as_secs_f64(), cpu0);
        logs.indexed_s = wait_indexed(&node, start).await?;

        let (mut loki_push, mut bulk, mut publish_cli) = (None, None, None);
        if a.doors {
            let doors = [
                ("Loki push", "lk.", "/loki/api/v1/push", "application/x-protobuf", crate::bench::doors::loki_bodies(&datasets, a.events, 1000, "lk.").0),
                ("_bulk", "es.", "/_bulk", "application/x-ndjson", crate::bench::doors::bulk_bodies(&datasets, a.events, 1000, "es.").0),
            ];
            // Each door on a node of its own, empty as the request/reply path's was (the
            // first node, quiet by now, stays up for its figures below).
            for (name, prefix, path, content_type, bodies) in doors {
                eprintln!("{name}: {} requests to {path}, {} at once, on a new node ...", bodies.len(), a.http_in_flight);
                // A cluster of its own: the shard log it replays holds its events alone.
                let cluster = format!("bench-{}", prefix.trim_end_matches('.'));
                let door_node = NodeProcess::start_with(&url, &tmp.path().join(format!("node-{prefix}")), a.shards, &["--cluster", &cluster])?;
                let door_pid = door_node.child.id();
                let cpu0 = (cpu_seconds(door_pid), cpu_seconds(nats_pid));
                let start = Instant::now();
                let post = format!("{}{path}", door_node.http);
                let in_flight = a.http_in_flight;
                tokio::task::block_in_place(|| crate::bench::doors::post_all(&post, content_type, &bodies, in_flight))?;
                wait_stored(&door_node, prefix, a.events as u64, start).await?;
                let mut p = figures_of(door_pid, start.elapsed().as_secs_f64(), cpu0);
                p.indexed_s = wait_indexed(&door_node, start).await?;
                door_node.stop()?;
                if prefix == "lk." {
                    loki_push = Some(p);
                } else {
                    bulk = Some(p);
                }
            }
            // One `gossamer publish` process feeding a file of the same events, each
            // line routed by its `stream` key, as a new user would.
            let file = tmp.path().join("publish.ndjson");
            write_ndjson(&payloads(&datasets, a.events, a.batch, "pub.").0, &file)?;
            eprintln!("one gossamer publish process feeding {}, on a new node ...", file.display());
            let pub_node = NodeProcess::start_with(&url, &tmp.path().join("node-pub"), a.shards, &["--cluster", "bench-pub"])?;
            let pub_pid = pub_node.child.id();
            let cpu0 = (cpu_seconds(pub_pid), cpu_seconds(nats_pid));
            let start = Instant::now();
            let out = std::process::Command::new(std::env::current_exe()?)
                .args(["publish", "--quiet", "--cluster", "bench-pub", "--nats", &url])
                .arg(&file)
                .output()
                .context("running gossamer publish")?;
            if !out.status.success() {
                anyhow::bail!("gossamer publish failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            wait_stored(&pub_node, "pub.", a.events as u64, start).await?;
            let mut p = figures_of(pub_pid, start.elapsed().as_secs_f64(), cpu0);
            p.indexed_s = wait_indexed(&pub_node, start).await?;
            pub_node.stop()?;
            publish_cli = Some(p);
        }

        let node_peak_rss_kb = peak_rss_kb(node_pid);
        let sealed_blocks_kept = node.counter("gossamer_shard_sealed_blocks_kept_total")?;
        let sealed_blocks_opened = node.counter("gossamer_shard_sealed_blocks_opened_total")?;
        node.stop()?;
        let sled_bytes = dir_size(&tmp.path().join("node").join("sled"));
        let stored = if a.doors { 3 } else { 2 } * a.events;
        Ok::<_, anyhow::Error>(IngestFigures {
            events: a.events,
            messages: msgs.len(),
            events_per_message: a.batch,
            ndjson_bytes,
            raw_jetstream_events_per_s: raw_rate,
            raw_jetstream_single_events_per_s: raw_single,
            request_reply,
            logs,
            loki_push,
            bulk,
            publish_cli,
            node_peak_rss_kb,
            sealed_blocks_kept,
            sealed_blocks_opened,
            sled_bytes,
            sled_bytes_per_event: sled_bytes as f64 / stored as f64,
            ndjson_bytes_per_event: ndjson_bytes as f64 / a.events as f64,
        })
    })?;
    drop(server);
    let f = &figures;
    println!("events {}, {} messages of {} events", f.events, f.messages, f.events_per_message);
    println!("raw JetStream publish, same messages      {:>10.0} events/s", f.raw_jetstream_events_per_s);
    println!("raw JetStream publish, one per message    {:>10.0} events/s", f.raw_jetstream_single_events_per_s);
    let mut paths = vec![("request/reply -> queryable", &f.request_reply), ("logs.> -> queryable       ", &f.logs)];
    if let Some(p) = &f.loki_push {
        paths.push(("Loki push -> queryable    ", p));
    }
    if let Some(p) = &f.bulk {
        paths.push(("_bulk -> queryable        ", p));
    }
    if let Some(p) = &f.publish_cli {
        paths.push(("gossamer publish -> queryable", p));
    }
    for (name, p) in paths {
        println!(
            "{name}                {:>10.0} events/s  {:.2} x raw  (node {:.1} CPU-s, nats-server {:.1} CPU-s in {:.1} s; indexed after {:.1} s)",
            p.events_per_s, p.ratio_to_raw_single, p.node_cpu_s, p.nats_server_cpu_s, p.seconds, p.indexed_s
        );
    }
    for (name, p) in [("Loki push", &f.loki_push), ("_bulk", &f.bulk), ("gossamer publish", &f.publish_cli)] {
        if let Some(p) = p {
            println!("{name} / request/reply  {:.2} x", p.events_per_s / f.request_reply.events_per_s);
        }
    }
    println!("node peak RSS {:.0} MiB", f.node_peak_rss_kb as f64 / 1024.0);
    println!("sealed blocks written as they came {}, opened {}", f.sealed_blocks_kept, f.sealed_blocks_opened);
    println!(
        "sled on disk {:.1} bytes/event (NDJSON {:.1} bytes/event, {:.2} x)",
        f.sled_bytes_per_event,
        f.ndjson_bytes_per_event,
        f.sled_bytes_per_event / f.ndjson_bytes_per_event
    );
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)?;
    }
    Ok(())
}
