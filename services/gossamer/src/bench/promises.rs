//! `gossamer bench promises`: what a cluster keeps of one node's promises, measured on
//! real node processes and one nats-server on this machine: how long a queue takes to
//! be delivered again after the member delivering it is killed -9 (and how many
//! deliveries it repeats), and how many answers are partial during a rolling restart
//! (two replicas) and during a drain with one replica.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};

use crate::bench::common::*;

#[derive(Args)]
pub struct PromisesBench {
    /// Kills of the member delivering the queue.
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// Events a second published the whole time (a fifth of them match the queue).
    #[arg(long, default_value_t = 2_000)]
    pub rate: usize,
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct PromisesFigures {
    pub kills: usize,
    /// From kill -9 until another member names itself the deliverer, and until it has
    /// published a delivery, in ms: each kill, p50 and max.
    pub takeover_named_ms: Vec<f64>,
    pub takeover_delivering_ms: Vec<f64>,
    pub takeover_named_p50_ms: f64,
    pub takeover_named_max_ms: f64,
    pub takeover_delivering_p50_ms: f64,
    pub takeover_delivering_max_ms: f64,
    /// Matches read again after a takeover and dropped by NOTIFY, per takeover.
    pub repeats_dropped_per_takeover: f64,
    /// Matching events published and deliveries NOTIFY holds at the end.
    pub matching_published: u64,
    pub notify_stored: u64,
    /// Counts asked during a rolling restart (three nodes, two replicas) and during a
    /// drain with one replica, and how many answers were partial (or failed).
    pub rolling_restart_answers: u64,
    pub rolling_restart_partial: u64,
    pub drain_answers: u64,
    pub drain_partial: u64,
}

pub(crate) struct Member {
    pub id: String,
    pub data: PathBuf,
    pub node: Option<NodeProcess>,
}

impl Member {
    pub fn http(&self) -> &str {
        &self.node.as_ref().expect("running").http
    }
}

pub(crate) fn get(url: &str) -> Result<Value> {
    Ok(ureq::get(url).timeout(Duration::from_secs(10)).call()?.into_json()?)
}

fn start(url: &str, data: &Path, id: &str, shards: u32, replicas: &str, extra: &[&str]) -> Result<NodeProcess> {
    let mut args = vec!["--node-id", id, "--replicas", replicas, "--gossip-probe-ms", "500", "--gossip-suspect-ms", "2000"];
    args.extend_from_slice(extra);
    NodeProcess::start_with(url, data, shards, &args)
}

/// Waits (a poll of other processes' APIs, with a deadline) until `f` says yes.
pub(crate) fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn settled(members: &[Member], all: usize) -> Result<bool> {
    for m in members.iter().filter(|m| m.node.is_some()) {
        let c = get(&format!("{}/api/v1/cluster", m.http()))?;
        let alive = c["members"].as_array().map_or(0, |v| v.iter().filter(|m| m["state"] == "alive").count());
        let shards = c["shards"].as_array().context("shards")?;
        if alive != all || shards.iter().any(|s| s["leaving"] == true || (s["here"] == true && s["caught_up"] != true)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A cluster of `n` members on a nats-server of its own.
fn cluster(tmp: &Path, url: &str, n: usize, shards: u32, replicas: &str) -> Result<Vec<Member>> {
    cluster_with(tmp, url, n, shards, replicas, &[])
}

/// The same with `extra` options for every member.
pub(crate) fn cluster_with(tmp: &Path, url: &str, n: usize, shards: u32, replicas: &str, extra: &[&str]) -> Result<Vec<Member>> {
    let mut members = Vec::new();
    for i in 1..=n {
        let id = format!("n{i}");
        let data = tmp.join(&id);
        let node = start(url, &data, &id, shards, replicas, extra)?;
        members.push(Member { id, data, node: Some(node) });
    }
    until("every member to see the others", Duration::from_secs(60), || settled(&members, n))?;
    Ok(members)
}

/// Publishes `rate` events a second until `stop`; every fifth is an error. Returns the
/// errors published (each acked by the bus).
fn producer(url: String, rate: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
            let js = async_nats::jetstream::new(client);
            let per = (rate / 10).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let mut body = String::new();
                for i in 0..per {
                    let level = if i % 5 == 0 { "error" } else { "info" };
                    errors += u64::from(i % 5 == 0);
                    body.push_str(&format!("{}\n", json!({"id": uuid::Uuid::now_v7().to_string(), "level": level, "message": format!("promise {i}")})));
                }
                js.publish("logs.bench.promises", body.into()).await?.await.context("the bus did not ack")?;
            }
            Ok(errors)
        })
    })
}

/// Counts through `http` until `stop`: (answers, partial or failed).
fn querier(http: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut asked, mut bad) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            asked += 1;
            match get(&format!("{http}/api/v1/count?q=")) {
                Ok(v) if v["partial"] == false => {}
                _ => bad += 1,
            }
        }
        (asked, bad)
    })
}

fn deliverer(http: &str) -> Result<Option<String>> {
    Ok(get(&format!("{http}/api/v1/queues/bench-errors"))?["delivered_by"].as_str().map(String::from))
}

fn published(http: &str) -> Result<u64> {
    Ok(get(&format!("{http}/api/v1/queues/bench-errors"))?["stats"]["published"].as_u64().unwrap_or(0))
}

pub fn promises(a: PromisesBench) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = crate::local::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let url = server.url();

    // Queue takeovers: three members, every one with the queue role.
    let mut members = cluster(tmp.path(), &url, 3, a.shards, "2")?;
    let created = ureq::post(&format!("{}/api/v1/queues", members[0].http())).send_json(json!({"name": "bench-errors", "filter": "level:error"}))?;
    anyhow::ensure!(created.status() == 201, "creating the queue: {}", created.status());
    let stop = Arc::new(AtomicBool::new(false));
    let producing = producer(url.clone(), a.rate, stop.clone());
    let (mut named, mut delivering, mut repeats) = (Vec::new(), Vec::new(), 0u64);
    for k in 0..a.kills {
        let owner = (|| -> Result<String> {
            let mut seen = None;
            until("the members to agree on the deliverer", Duration::from_secs(30), || {
                let all: Vec<Option<String>> = members.iter().map(|m| deliverer(m.http())).collect::<Result<_>>()?;
                seen = all[0].clone().filter(|_| all.iter().all(|d| *d == all[0]));
                Ok(seen.is_some())
            })?;
            Ok(seen.unwrap_or_default())
        })()?;
        let at = members.iter().position(|m| m.id == owner).context("the deliverer is a member")?;
        until("the deliverer to publish", Duration::from_secs(60), || Ok(published(members[at].http())? > 0))?;
        let watcher = members[(at + 1) % 3].http().to_string();
        let dropped_before: Vec<u64> = members.iter().map(|m| metric_sum(m.http(), "gossamer_queue_duplicates_total")).collect::<Result<_>>()?;
        let mut victim = members[at].node.take().context("running")?;
        let killed = Instant::now();
        victim.child.kill()?;
        let _ = victim.child.wait();
        let mut next = String::new();
        until("another member to take the queue", Duration::from_secs(60), || {
            next = deliverer(&watcher)?.unwrap_or_default();
            Ok(!next.is_empty() && next != owner)
        })?;
        named.push(killed.elapsed().as_secs_f64() * 1000.0);
        let heir = members.iter().position(|m| m.id == next).context("the heir is a member")?;
        let before = published(members[heir].http())?;
        until("the heir to deliver", Duration::from_secs(60), || Ok(published(members[heir].http())? > before))?;
        delivering.push(killed.elapsed().as_secs_f64() * 1000.0);
        // Once the heir has read all the shard log has, its repeats are counted.
        until("the heir to catch up with the shard log", Duration::from_secs(60), || {
            Ok(get(&format!("{}/api/v1/queues/bench-errors", members[heir].http()))?["stats"]["backlog"].as_u64() == Some(0))
        })?;
        repeats += metric_sum(members[heir].http(), "gossamer_queue_duplicates_total")? - dropped_before[heir];
        eprintln!("kill {}: {owner} -> {next}: named after {:.0} ms, delivering after {:.0} ms", k + 1, named[k], delivering[k]);
        let (id, data) = (members[at].id.clone(), members[at].data.clone());
        members[at].node = Some(start(&url, &data, &id, a.shards, "2", &[])?);
        until("the cluster to settle", Duration::from_secs(120), || settled(&members, 3))?;
    }

    // A rolling restart under the same ingest, counted through a member that stays up.
    let (mut rolling_answers, mut rolling_partial) = (0, 0);
    for i in 0..members.len() {
        let stop_q = Arc::new(AtomicBool::new(false));
        let q = querier(members[(i + 1) % 3].http().to_string(), stop_q.clone());
        members[i].node.take().context("running")?.stop()?;
        let (id, data) = (members[i].id.clone(), members[i].data.clone());
        members[i].node = Some(start(&url, &data, &id, a.shards, "2", &[])?);
        until("the cluster to settle", Duration::from_secs(120), || settled(&members, 3))?;
        stop_q.store(true, Ordering::Relaxed);
        let (asked, bad) = q.join().map_err(|_| anyhow::anyhow!("the querier panicked"))?;
        rolling_answers += asked;
        rolling_partial += bad;
    }
    stop.store(true, Ordering::Relaxed);
    let matching = producing.join().map_err(|_| anyhow::anyhow!("the producer panicked"))??;
    let http = members[0].http().to_string();
    until("every match to be delivered", Duration::from_secs(120), || {
        Ok(get(&format!("{http}/api/v1/queues/bench-errors"))?["stats"]["stored"].as_u64() >= Some(matching))
    })?;
    let notify_stored = get(&format!("{http}/api/v1/queues/bench-errors"))?["stats"]["stored"].as_u64().unwrap_or(0);
    for m in members {
        if let Some(n) = m.node {
            n.stop()?;
        }
    }
    drop(server);

    // A drain with one replica, under ingest and a querier.
    let tmp = tempfile::tempdir()?;
    let server = crate::local::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let url = server.url();
    let members = cluster(tmp.path(), &url, 3, a.shards, "1")?;
    let stop = Arc::new(AtomicBool::new(false));
    let producing = producer(url.clone(), a.rate, stop.clone());
    let stop_q = Arc::new(AtomicBool::new(false));
    let q = querier(members[0].http().to_string(), stop_q.clone());
    let drained = ureq::post(&format!("{}/api/v1/admin/drain", members[2].http())).send_json(json!({}))?;
    anyhow::ensure!(drained.status() == 202, "draining: {}", drained.status());
    until("the drained member to hold nothing", Duration::from_secs(120), || {
        let c = get(&format!("{}/api/v1/cluster", members[2].http()))?;
        Ok(c["shards"].as_array().is_some_and(|s| s.iter().all(|s| s["here"] != true)))
    })?;
    stop_q.store(true, Ordering::Relaxed);
    let (drain_answers, drain_partial) = q.join().map_err(|_| anyhow::anyhow!("the querier panicked"))?;
    stop.store(true, Ordering::Relaxed);
    producing.join().map_err(|_| anyhow::anyhow!("the producer panicked"))??;
    for m in members {
        if let Some(n) = m.node {
            n.stop()?;
        }
    }
    drop(server);

    let sorted = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s
    };
    let (n, d) = (sorted(&named), sorted(&delivering));
    let f = PromisesFigures {
        kills: a.kills,
        takeover_named_p50_ms: percentile(&n, 0.5),
        takeover_named_max_ms: n.last().copied().unwrap_or(0.0),
        takeover_delivering_p50_ms: percentile(&d, 0.5),
        takeover_delivering_max_ms: d.last().copied().unwrap_or(0.0),
        takeover_named_ms: named,
        takeover_delivering_ms: delivering,
        repeats_dropped_per_takeover: repeats as f64 / a.kills.max(1) as f64,
        matching_published: matching,
        notify_stored,
        rolling_restart_answers: rolling_answers,
        rolling_restart_partial: rolling_partial,
        drain_answers,
        drain_partial,
    };
    println!(
        "queue takeover after kill -9 ({} kills): named p50 {:.0} ms, max {:.0} ms; delivering p50 {:.0} ms, max {:.0} ms; {:.1} repeats dropped by NOTIFY per takeover",
        f.kills, f.takeover_named_p50_ms, f.takeover_named_max_ms, f.takeover_delivering_p50_ms, f.takeover_delivering_max_ms, f.repeats_dropped_per_takeover
    );
    println!("matching events published {}, deliveries NOTIFY holds {}", f.matching_published, f.notify_stored);
    println!("rolling restart (3 nodes, R=2): {} of {} answers partial", f.rolling_restart_partial, f.rolling_restart_answers);
    println!("drain with one replica: {} of {} answers partial", f.drain_partial, f.drain_answers);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&f)?)?;
    }
    Ok(())
}
