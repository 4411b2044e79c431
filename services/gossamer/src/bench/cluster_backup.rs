//! `gossamer bench cluster-backup`: a backup of a three-node cluster (two replicas per
//! shard) taken on one member, full and then incremental, verified on another member;
//! then restored into one fresh node and into a fresh cluster of three, each timed from
//! the request until every member answers with every event (no answer partial).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::bench::common::*;
use crate::bench::promises::{cluster_with, get, settled, until, Member};

/// The same options as `bench backup`: events in the full backup (the incremental adds
/// a tenth more), the publishing batch and window, shards, the samples, a JSON file.
pub type ClusterBackupBench = crate::bench::backup::BackupBench;

#[derive(Debug, Serialize)]
pub struct ClusterBackupFigures {
    pub events: usize,
    pub members: usize,
    pub replicas: usize,
    /// Taken on the first member: the shards it does not serve come from the others.
    pub full: JobFigure,
    pub incremental: JobFigure,
    /// On the second member.
    pub verify_full: JobFigure,
    /// Full and incremental restored into one fresh node: the job, and from the request
    /// until a count over everything gives every event.
    pub restore_one: JobFigure,
    pub restore_one_to_queryable_s: f64,
    /// The same into a fresh cluster of three (two replicas): the job on one member,
    /// and until every member counts every event with no answer partial and every
    /// replica has caught up.
    pub restore_three: JobFigure,
    pub restore_three_to_queryable_s: f64,
}

/// Until every running member counts `want` events with nothing partial and the
/// cluster has settled (no shard catching up or being handed over).
fn wait_whole(members: &[Member], want: u64, what: &str) -> Result<()> {
    until(what, Duration::from_secs(1800), || {
        for m in members {
            let c = get(&format!("{}/api/v1/count?q=", m.http()))?;
            if c["partial"] != false || c["count"].as_u64() != Some(want) {
                return Ok(false);
            }
        }
        settled(members, members.len())
    })
}

fn stop_all(members: &mut [Member]) -> Result<()> {
    for m in members {
        if let Some(n) = m.node.take() {
            n.stop()?;
        }
    }
    Ok(())
}

pub fn cluster_backup(a: ClusterBackupBench) -> Result<()> {
    let datasets = load_loghub(&a.dataset)?;
    let tmp = tempfile::tempdir()?;
    let store = tmp.path().join("backups");
    let store_arg = store.to_str().context("a UTF-8 temporary path")?.to_string();
    let extra = ["--backup-store", store_arg.as_str()];
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let publish = |url: &str, events: usize| -> Result<()> {
        rt.block_on(async {
            let client = gossamer_bus::connect(url, Duration::from_secs(10)).await?;
            let (msgs, _) = payloads(&datasets, events, a.batch, "");
            request_all(&client, "gossamer.default.ingest.", &msgs, a.in_flight).await
        })
    };

    let server = crate::local::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let mut members = cluster_with(&tmp.path().join("source"), &server.url(), 3, a.shards, "2", &extra)?;
    eprintln!("storing {} events in three nodes (two replicas) ...", a.events);
    publish(&server.url(), a.events)?;
    wait_whole(&members, a.events as u64, "the cluster to hold every event")?;

    eprintln!("full backup on n1 ...");
    let (secs, job) = timed_job(members[0].http(), "/api/v1/backups", json!({"kind": "full", "name": "cluster-full"}))?;
    let full = figure(secs, job["manifest"]["bytes"].as_u64().unwrap_or(0), a.events as u64);
    let more = a.events / 10;
    let total = (a.events + more) as u64;
    publish(&server.url(), more)?;
    wait_whole(&members, total, "the cluster to hold the events added")?;
    eprintln!("incremental backup of {more} more events on n1 ...");
    let (secs, job) = timed_job(members[0].http(), "/api/v1/backups", json!({"kind": "incremental", "name": "cluster-incr"}))?;
    let incremental = figure(secs, job["manifest"]["bytes"].as_u64().unwrap_or(0), more as u64);
    eprintln!("verify the full backup on n2 ...");
    let (secs, _) = timed_job(members[1].http(), "/api/v1/backups/cluster-full/verify", json!({}))?;
    let verify_full = figure(secs, full.bytes, full.events);
    stop_all(&mut members)?;
    drop(server);
    let restored_bytes = full.bytes + incremental.bytes;

    eprintln!("restore into one fresh node ...");
    let server = crate::local::NatsServer::start(&tmp.path().join("nats-one"), 0)?;
    let node = NodeProcess::start_with(&server.url(), &tmp.path().join("one"), a.shards, &extra)?;
    let start = Instant::now();
    let (secs, _) = timed_job(&node.http, "/api/v1/restore", json!({"backup": "cluster-incr"}))?;
    let restore_one = figure(secs, restored_bytes, total);
    let mut one = vec![Member { id: "one".into(), data: tmp.path().join("one"), node: Some(node) }];
    wait_whole(&one, total, "the restored node to count every event")?;
    let restore_one_to_queryable_s = start.elapsed().as_secs_f64();
    stop_all(&mut one)?;
    drop(server);

    eprintln!("restore into a fresh cluster of three (two replicas) ...");
    let server = crate::local::NatsServer::start(&tmp.path().join("nats-three"), 0)?;
    let mut three = cluster_with(&tmp.path().join("three"), &server.url(), 3, a.shards, "2", &extra)?;
    let start = Instant::now();
    let (secs, _) = timed_job(three[0].http(), "/api/v1/restore", json!({"backup": "cluster-incr"}))?;
    let restore_three = figure(secs, restored_bytes, total);
    wait_whole(&three, total, "every member of the restored cluster to count every event")?;
    let restore_three_to_queryable_s = start.elapsed().as_secs_f64();
    stop_all(&mut three)?;

    let f = ClusterBackupFigures {
        events: a.events,
        members: 3,
        replicas: 2,
        full,
        incremental,
        verify_full,
        restore_one,
        restore_one_to_queryable_s,
        restore_three,
        restore_three_to_queryable_s,
    };
    for (name, j) in [
        ("full backup on n1", &f.full),
        ("incremental (+10%)", &f.incremental),
        ("verify full on n2", &f.verify_full),
        ("restore into one", &f.restore_one),
        ("restore into three", &f.restore_three),
    ] {
        println!("{name:<20} {:>7.2} s  {:>8.1} MB  {:>7.1} MB/s  {:>10.0} events/s", j.seconds, j.bytes as f64 / 1e6, j.mb_per_s, j.events_per_s);
    }
    println!("restore into one: every event counted after {:.2} s", f.restore_one_to_queryable_s);
    println!("restore into three: every member counts every event, all caught up, after {:.2} s", f.restore_three_to_queryable_s);
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&f)?)?;
    }
    Ok(())
}
