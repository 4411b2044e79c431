//! `gossamer bench cluster`: ingest into one node, then three with two replicas per
//! shard; then kill -9 one and time until answers are complete again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::bench::common::*;

#[derive(Args)]
pub struct ClusterBench {
    /// Events per run.
    #[arg(long, default_value_t = 500_000)]
    pub events: usize,
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    #[arg(long, default_value = "integration/testdata/loghub")]
    pub dataset: PathBuf,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct ClusterRun {
    pub nodes: usize,
    pub request_reply_events_per_s: f64,
    pub logs_events_per_s: f64,
    /// CPU seconds of every node together, and of nats-server, over both paths.
    pub nodes_cpu_s: f64,
    pub nats_server_cpu_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ClusterFigures {
    pub events: usize,
    pub shards: u32,
    pub replicas: u32,
    pub one: ClusterRun,
    pub three: ClusterRun,
    pub request_reply_ratio: f64,
    pub logs_ratio: f64,
    /// From kill -9 of a node until a count over everything is complete again, seen
    /// from another node; and until gossip declares the node dead.
    pub kill_to_complete_ms: f64,
    pub kill_to_declared_dead_ms: f64,
}

/// One run of both ways in against `nodes` fresh nodes on a fresh nats-server.
pub fn cluster_run(a: &ClusterBench, datasets: &[(String, Vec<Row>)], nodes: usize, kill: bool) -> Result<(ClusterRun, Option<(f64, f64)>)> {
    let tmp = tempfile::tempdir()?;
    let server = crate::local::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let url = server.url();
    let nats_pid = server.pid();
    let replicas = a.replicas.to_string();
    let mut procs = Vec::new();
    for i in 1..=nodes {
        let id = format!("node-{i}");
        procs.push(NodeProcess::start_with(
            &url,
            &tmp.path().join(&id),
            a.shards,
            &["--node-id", &id, "--replicas", &replicas, "--gossip-probe-ms", "500", "--gossip-suspect-ms", "2000"],
        )?);
    }
    // Every node sees every other before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &procs {
        loop {
            let v: serde_json::Value = ureq::get(&format!("{}/api/v1/cluster", p.http)).call()?.into_json()?;
            let alive = v["members"].as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
            if alive == nodes {
                break;
            }
            if Instant::now() > deadline {
                bail!("the {nodes} nodes did not all see each other within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let cpu0 = (cpu(&pids), cpu_seconds(nats_pid));
    let (rr, logs) = rt.block_on(async {
        let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
        let js = async_nats::jetstream::new(client.clone());
        let (rr_msgs, _) = payloads(datasets, a.events, a.batch, "rr.");
        eprintln!("{nodes} node(s): request/reply path, {} events ...", a.events);
        let start = Instant::now();
        request_all(&client, "gossamer.default.ingest.", &rr_msgs, a.in_flight).await?;
        wait_stored(&procs[0], "rr.", a.events as u64, start).await?;
        let rr = a.events as f64 / start.elapsed().as_secs_f64();
        drop(rr_msgs);
        let (js_msgs, _) = payloads(datasets, a.events, a.batch, "js.");
        eprintln!("{nodes} node(s): logs.> path, {} events ...", a.events);
        let start = Instant::now();
        publish_all(&js, "logs.", &js_msgs, a.in_flight).await?;
        wait_stored(&procs[0], "js.", a.events as u64, start).await?;
        let logs = a.events as f64 / start.elapsed().as_secs_f64();
        Ok::<_, anyhow::Error>((rr, logs))
    })?;
    let run = ClusterRun { nodes, request_reply_events_per_s: rr, logs_events_per_s: logs, nodes_cpu_s: cpu(&pids) - cpu0.0, nats_server_cpu_s: cpu_seconds(nats_pid) - cpu0.1 };
    let mut failover = None;
    if kill && procs.len() > 1 {
        let total = 2 * a.events as u64;
        let victim = procs.remove(1);
        let watcher = procs[0].http.clone();
        let mut child = victim.child;
        let killed = Instant::now();
        child.kill()?;
        let _ = child.wait();
        let (mut complete_ms, mut dead_ms) = (None, None);
        while complete_ms.is_none() || dead_ms.is_none() {
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("answers were not complete or the node not declared dead within 60 s of the kill");
            }
            if complete_ms.is_none() {
                let v: serde_json::Value = ureq::get(&format!("{watcher}/api/v1/count?q=")).call()?.into_json()?;
                if v["partial"] == false && v["count"].as_u64() == Some(total) {
                    complete_ms = Some(killed.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if dead_ms.is_none() {
                let v: serde_json::Value = ureq::get(&format!("{watcher}/api/v1/cluster")).call()?.into_json()?;
                if v["members"].as_array().is_some_and(|m| m.iter().any(|m| m["node"] == "node-2" && m["state"] == "dead")) {
                    dead_ms = Some(killed.elapsed().as_secs_f64() * 1000.0);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        failover = complete_ms.zip(dead_ms);
    }
    for p in procs {
        p.stop()?;
    }
    drop(server);
    Ok((run, failover))
}

pub fn cluster(a: ClusterBench) -> Result<()> {
    let datasets = load_loghub(&a.dataset)?;
    let (one, _) = cluster_run(&a, &datasets, 1, false)?;
    let (three, failover) = cluster_run(&a, &datasets, 3, true)?;
    let (kill_to_complete_ms, kill_to_declared_dead_ms) = failover.context("no failover was measured")?;
    let figures = ClusterFigures {
        events: a.events,
        shards: a.shards,
        replicas: a.replicas,
        request_reply_ratio: three.request_reply_events_per_s / one.request_reply_events_per_s,
        logs_ratio: three.logs_events_per_s / one.logs_events_per_s,
        one,
        three,
        kill_to_complete_ms,
        kill_to_declared_dead_ms,
    };
    let f = &figures;
    println!("events {} per path, {} shards, {} replicas", f.events, f.shards, f.replicas);
    for r in [&f.one, &f.three] {
        println!(
            "{} node(s): request/reply {:>9.0} events/s, logs.> {:>9.0} events/s (nodes {:.1} CPU-s, nats-server {:.1} CPU-s)",
            r.nodes, r.request_reply_events_per_s, r.logs_events_per_s, r.nodes_cpu_s, r.nats_server_cpu_s
        );
    }
    println!("three nodes vs one: request/reply {:.2} x, logs.> {:.2} x", f.request_reply_ratio, f.logs_ratio);
    println!("kill -9 of one node: answers complete after {:.0} ms, declared dead after {:.0} ms", f.kill_to_complete_ms, f.kill_to_declared_dead_ms);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)?;
    }
    Ok(())
}
