//! Backups: full and incremental, restored into a fresh node and NATS (the answers are
//! the ones given before the wipe, deletions included, and up to any backup in the
//! chain); a damaged file named by verify and refused by restore; names that could
//! escape the store refused; a backup taken during ingest matches the shard log up to
//! its sequences; the same through a NATS Object Store bucket; a backup of a three-node
//! cluster taken on one node (full, then incremental) restored into one node and into
//! three; a restore cut short by a crash and run again; one node's backup restored into
//! three, whose own backup goes through the object store.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use gossamer_integration::loghub::{self, Dataset};
use gossamer_integration::{enc, gossamer_binary, http_post, start_cluster, wait_for, Nats, Node};
use serde_json::{json, Value};

fn post_json(url: &str, body: Value) -> (u16, Value) {
    http_post(url, "application/json", body.to_string().as_bytes())
}

/// Publishes datasets through the request/reply path and waits until the node counts
/// `want` events in all.
fn publish(nats: &Nats, node: &Node, cluster: &str, datasets: &[&Dataset], want: u64) {
    loghub::publish(&nats.url(), cluster, datasets.iter().copied());
    node.wait_count("", want, Duration::from_secs(60));
}

/// Starts a job with a POST and follows it until it ends; the finished job.
fn run_job(node: &Node, path: &str, body: Value) -> Value {
    let (status, job) = post_json(&format!("{}{path}", node.http), body);
    assert_eq!(status, 202, "POST {path}: {job}");
    let id = job["id"].as_str().unwrap().to_string();
    wait_for(&format!("job {id}"), Duration::from_secs(120), || {
        let (status, j) = node.get(&format!("/api/v1/jobs/{id}"));
        assert_eq!(status, 200, "{j}");
        (j["state"] != "running").then_some(j)
    })
}

/// What a user would look at: every loghub count case, the streams with their counts
/// and retention, counts by level, and the newest page of one stream.
fn answers(node: &Node, datasets: &[Dataset]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for ds in datasets {
        for (q, _) in loghub::count_cases(ds) {
            out.insert(format!("count {q}"), json!(node.count(&q)));
        }
    }
    let (_, streams) = node.get("/api/v1/streams");
    let streams: Vec<Value> =
        streams["streams"].as_array().unwrap().iter().map(|s| json!([s["name"], s["events"], s["retention"]])).collect();
    out.insert("streams".into(), json!(streams));
    let (status, agg) = node.get("/api/v1/aggregate?q=&fn=count&by=level");
    assert_eq!(status, 200, "{agg}");
    out.insert("count by level".into(), agg["groups"].clone());
    let (_, page) = node.get(&format!("/api/v1/search?q={}&limit=50", enc("stream:loghub.hdfs")));
    out.insert("hdfs newest page".into(), page["events"].clone());
    out
}

/// Asserts `got` holds the ids of `want`, each once; says how they differ, not what
/// they are.
fn assert_same_ids(mut got: Vec<uuid::Uuid>, want: &[uuid::Uuid], what: &str) {
    got.sort();
    if got != want {
        let (g, w): (BTreeSet<_>, BTreeSet<_>) = (got.iter().collect(), want.iter().collect());
        panic!(
            "{what}: {} ids where {} were expected; {} missing, {} not expected, {} repeats",
            got.len(),
            want.len(),
            w.difference(&g).count(),
            g.difference(&w).count(),
            got.len() - g.len()
        );
    }
}

fn cli(node: &Node, args: &[&str]) -> std::process::Output {
    Command::new(gossamer_binary()).args(args).args(["--server", &node.http]).output().unwrap()
}

#[test]
fn full_and_incremental_backups_restore_every_answer_into_a_fresh_cluster() {
    let datasets = loghub::load();
    let (first, second) = datasets.split_at(8);
    let store = tempfile::tempdir().unwrap();
    let store_arg = store.path().to_str().unwrap().to_string();

    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--backup-store", &store_arg]);
    let n1: u64 = first.iter().map(|d| d.rows.len() as u64).sum();
    publish(&nats, &node, "default", &first.iter().collect::<Vec<_>>(), n1);
    let r = ureq::put(&format!("{}/api/v1/streams/loghub.hdfs/retention", node.http)).send_json(json!({"max_age": "36500d"}));
    assert_eq!(r.unwrap().status(), 200);

    // A full backup through the CLI.
    let out = cli(&node, &["backup", "create", "--full", "--name", "base"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("backup base (full)") && said.contains(&format!("{n1} events")), "{said}");

    // More events, then an incremental: it continues the full one and is smaller.
    let n2: u64 = n1 + second.iter().map(|d| d.rows.len() as u64).sum::<u64>();
    publish(&nats, &node, "default", &second.iter().collect::<Vec<_>>(), n2);
    let before_deletes = answers(&node, &datasets);
    let job = run_job(&node, "/api/v1/backups", json!({"name": "more"}));
    assert_eq!(job["state"], "done", "{job}");
    let more = &job["manifest"];
    assert_eq!((more["kind"].as_str(), more["parent"].as_str(), more["events"].as_u64()), (Some("incremental"), Some("base"), Some(n2)));
    let (_, base) = node.get("/api/v1/backups/base");
    let new_block_events: u64 = more["shards"].as_array().unwrap().iter().map(|s| s["block_events"].as_u64().unwrap()).sum();
    assert_eq!(new_block_events, n2 - n1, "the incremental holds the new events, not the old ones");
    assert!(more["bytes"].as_u64() < base["bytes"].as_u64().map(|b| b * 2), "{more}");

    // Deletes, then a third backup (auto: incremental).
    let (status, del) = post_json(&format!("{}/api/v1/delete", node.http), json!({"q": "stream:loghub.hdfs level:warn"}));
    assert_eq!(status, 200, "{del}");
    assert!(del["deleted"].as_u64().unwrap() > 0, "{del}");
    let victim = node.all_ids("stream:loghub.linux")[0];
    let r = ureq::delete(&format!("{}/api/v1/events/{victim}", node.http)).call().unwrap();
    assert_eq!(r.status(), 200);
    let after_deletes = answers(&node, &datasets);
    assert_ne!(after_deletes, before_deletes);
    let job = run_job(&node, "/api/v1/backups", json!({}));
    assert_eq!(job["state"], "done", "{job}");
    let last = job["manifest"]["id"].as_str().unwrap().to_string();
    assert_eq!(job["manifest"]["parent"], "more");
    let out = cli(&node, &["backup", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(["base", "more", last.as_str()].iter().all(|b| listed.contains(b)), "{listed}");
    let out = cli(&node, &["backup", "verify", &last]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Wipe everything: the node's data and every JetStream stream (a new nats-server
    // with empty storage). The backups stay in their own directory.
    drop(node);
    drop(nats);
    drop(data);

    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--backup-store", &store_arg]);
    assert_eq!(node.count(""), 0);
    let out = cli(&node, &["backup", "restore", &last]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(answers(&node, &datasets), after_deletes, "the restored node answers as before the wipe");
    assert_eq!(node.get(&format!("/api/v1/events/{victim}")).0, 404, "a deleted event stays deleted");

    // A restored node refuses a second restore, goes on storing new events after the
    // restored sequences, and its next backup continues the one it came from.
    let (status, body) = post_json(&format!("{}/api/v1/restore", node.http), json!({"backup": "base"}));
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("empty"), "{body}");
    let total = node.count("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(async {
        let body: String = (0..300).map(|i| format!("{}\n", json!({"message": format!("after restore {i}")}))).collect();
        nats.client().await.request("gossamer.default.ingest.later", body.into()).await.unwrap()
    });
    assert_eq!(serde_json::from_slice::<Value>(&reply.payload).unwrap()["accepted"], 300);
    node.wait_count("", total + 300, Duration::from_secs(30));
    let job = run_job(&node, "/api/v1/backups", json!({"name": "after-restore"}));
    assert_eq!((job["state"].as_str(), job["manifest"]["parent"].as_str()), (Some("done"), Some(last.as_str())), "{job}");
    drop(node);
    drop(nats);

    // Point in time: restoring "more" gives the answers from before the deletes.
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--backup-store", &store_arg]);
    let job = run_job(&node, "/api/v1/restore", json!({"backup": "more"}));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(answers(&node, &datasets), before_deletes);
}

#[test]
fn a_damaged_backup_is_named_by_verify_and_refused_by_restore() {
    let datasets = loghub::load();
    let store = tempfile::tempdir().unwrap();
    let store_arg = store.path().to_str().unwrap().to_string();
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--backup-store", &store_arg]);
    let want = (datasets[0].rows.len() + datasets[1].rows.len()) as u64;
    publish(&nats, &node, "default", &[&datasets[0], &datasets[1]], want);

    // Names that could leave the store, and bad bodies, are refused with a reason.
    let url = format!("{}/api/v1/backups", node.http);
    for (body, want) in [
        (json!({"name": "../escape"}), "path separator"),
        (json!({"name": "a/b"}), "path separator"),
        (json!({"name": ".."}), "dot"),
        (json!({"name": "a b"}), "not allowed"),
        (json!({"kind": "weekly"}), "invalid JSON body"),
        (json!({"nmae": "x"}), "unknown field"),
    ] {
        let (status, err) = post_json(&url, body.clone());
        assert_eq!(status, 400, "{body}: {err}");
        assert!(err["error"].as_str().unwrap().contains(want), "{body}: {err}");
    }
    let (status, err) = http_post(&url, "application/json", b"{not json");
    assert_eq!(status, 400, "{err}");
    assert_eq!(node.get("/api/v1/backups/..%2Fetc").0, 400);
    assert_eq!(node.get("/api/v1/backups/missing").0, 404);
    assert_eq!(post_json(&format!("{}/api/v1/restore", node.http), json!({"backup": "missing"})).0, 404);
    assert_eq!(post_json(&format!("{}/api/v1/restore", node.http), json!({"id": "x"})).0, 400);
    let (status, err) = post_json(&url, json!({"kind": "incremental"}));
    assert_eq!(status, 400, "nothing to continue yet: {err}");

    let job = run_job(&node, "/api/v1/backups", json!({"name": "good"}));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(post_json(&url, json!({"name": "good"})).0, 409, "a name is used once");
    let job = run_job(&node, "/api/v1/backups/good/verify", json!({}));
    assert_eq!(job["state"], "done", "{job}");

    // One byte flipped in the middle of shard 3's file.
    let file = store.path().join("good").join("shard-3.gsb");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let job = run_job(&node, "/api/v1/backups/good/verify", json!({}));
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("shard 3") && error.contains("shard-3.gsb") && error.contains("checksum"), "{error}");
    let out = cli(&node, &["backup", "verify", "good"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard-3.gsb"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(node);
    drop(nats);

    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--backup-store", &store_arg]);
    let job = run_job(&node, "/api/v1/restore", json!({"backup": "good"}));
    assert_eq!(job["state"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("does not verify"), "{job}");
    assert_eq!(node.count(""), 0, "nothing was restored");
    let out = cli(&node, &["backup", "restore", "good"]);
    assert!(!out.status.success());
}

#[test]
fn a_backup_taken_during_ingest_is_the_shard_log_up_to_its_sequences() {
    let store = tempfile::tempdir().unwrap();
    let store_arg = store.path().to_str().unwrap().to_string();
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--backup-store", &store_arg]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(nats.client());

    // A producer sends 300 requests of 100 events while two backups are taken.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let producer = {
        let client = client.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let mut sent = 0u64;
            for round in 0..300 {
                let body: String = (0..100).map(|i| format!("{}\n", json!({"message": format!("round {round} event {i}")}))).collect();
                let reply = rt.block_on(client.request("gossamer.default.ingest.during", body.into())).unwrap();
                let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
                assert_eq!(reply["accepted"], 100, "{reply}");
                sent += 100;
                if round == 20 {
                    let _ = stop_tx.send(());
                }
            }
            sent
        })
    };
    stop_rx.recv().unwrap();
    let full = run_job(&node, "/api/v1/backups", json!({"name": "during-full"}));
    let incr = run_job(&node, "/api/v1/backups", json!({"name": "during-incr"}));
    assert_eq!((full["state"].as_str(), incr["state"].as_str()), (Some("done"), Some("done")), "{full} {incr}");
    let sent = producer.join().unwrap();
    node.wait_count("", sent, Duration::from_secs(60));
    assert_eq!(node.all_ids("").len() as u64, sent, "nothing lost or doubled during the backups");

    // Each shard in the backup is exactly the shard log's inserts up to its sequence.
    let manifest = &incr["manifest"];
    let mut want = BTreeSet::new();
    rt.block_on(async {
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream("SHARDS").await.unwrap();
        for shard in manifest["shards"].as_array().unwrap() {
            let (n, to) = (shard["shard"].as_u64().unwrap(), shard["to_seq"].as_u64().unwrap());
            for seq in 1..=to {
                let Ok(msg) = stream.get_raw_message(seq).await else { continue };
                if msg.subject.as_str() != format!("gossamer.default.shard.{n}") {
                    continue;
                }
                if let Some(events) = gossamer_schemas::ShardCommand::decode(&msg.payload).unwrap().into_inserted().unwrap() {
                    want.extend(events.into_iter().map(|e| e.id));
                }
            }
        }
    });
    assert!(want.len() as u64 > 0 && (want.len() as u64) < sent, "the backup was taken during ingest: {} of {sent}", want.len());
    assert_eq!(manifest["events"].as_u64(), Some(want.len() as u64));
    drop(node);
    drop(nats);

    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--backup-store", &store_arg]);
    let job = run_job(&node, "/api/v1/restore", json!({"backup": "during-incr"}));
    assert_eq!(job["state"], "done", "{job}");
    let got: BTreeSet<uuid::Uuid> = node.all_ids("").into_iter().collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the restored events are the shard log's up to the backup's sequences");
}

#[test]
fn backups_in_a_nats_object_store_bucket_restore_into_another_cluster() {
    let datasets = loghub::load();
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--backup-store", "nats://gossamer-backups"]);
    let n1 = datasets[2].rows.len() as u64;
    publish(&nats, &node, "default", &[&datasets[2]], n1);
    let full = run_job(&node, "/api/v1/backups", json!({"name": "bucket-full"}));
    assert_eq!(full["state"], "done", "{full}");
    let n2 = n1 + datasets[3].rows.len() as u64;
    publish(&nats, &node, "default", &[&datasets[3]], n2);
    let incr = run_job(&node, "/api/v1/backups", json!({}));
    assert_eq!((incr["state"].as_str(), incr["manifest"]["kind"].as_str()), (Some("done"), Some("incremental")), "{incr}");
    let (_, list) = node.get("/api/v1/backups");
    assert_eq!(list["store"], "nats://gossamer-backups");
    assert_eq!(list["backups"].as_array().unwrap().len(), 2, "{list}");
    let before = answers(&node, &datasets[2..4]);

    // Another cluster on the same NATS reads the bucket.
    let other = tempfile::tempdir().unwrap();
    let restored = Node::start(&nats, other.path(), &["--cluster", "other", "--backup-store", "nats://gossamer-backups"]);
    let id = incr["manifest"]["id"].as_str().unwrap();
    let job = run_job(&restored, "/api/v1/restore", json!({"backup": id}));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(answers(&restored, &datasets[2..4]), before);
}

#[test]
fn scheduled_backups_start_full_and_go_on_incrementally() {
    let datasets = loghub::load();
    let store = tempfile::tempdir().unwrap();
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--backup-store", store.path().to_str().unwrap(), "--backup-every", "1s"]);
    let backups = |want: u64| {
        wait_for(&format!("a scheduled backup of {want} events"), Duration::from_secs(60), || {
            let (_, body) = node.get("/api/v1/backups");
            let list = body["backups"].as_array().cloned().unwrap_or_default();
            list.last().is_some_and(|b| b["events"].as_u64() == Some(want)).then_some(list)
        })
    };
    let first = datasets[4].rows.len() as u64;
    publish(&nats, &node, "default", &[&datasets[4]], first);
    let list = backups(first);
    assert_eq!(list[0]["kind"], "full", "{list:?}");
    let second = first + datasets[5].rows.len() as u64;
    publish(&nats, &node, "default", &[&datasets[5]], second);
    let list = backups(second);
    for pair in list.windows(2) {
        assert_eq!(pair[1]["kind"], "incremental", "{list:?}");
        assert_eq!(pair[1]["parent"], pair[0]["id"], "{list:?}");
    }
    let metrics = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    assert!(metrics.contains("gossamer_backup_jobs{node=\"node-1\",action=\"create\",state=\"done\"}"), "{metrics}");
}

/// A backup of a three-node cluster (two replicas) taken on one node: the shards it does
/// not serve are exported by the members that do, each shard once. Full, then an
/// incremental continuing it; verified on another node; another taken just after a
/// member is killed; restored into one fresh node, and into a fresh cluster of three
/// with one replica: every event once.
#[test]
fn a_cluster_backup_taken_on_one_node_restores_into_one_node_and_into_three() {
    let nats = Nats::start();
    let kept = tempfile::tempdir().unwrap();
    let kept_arg = kept.path().to_str().unwrap().to_string();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(&nats.url(), &dirs, &["n1", "n2", "n3"], &["--backup-store", &kept_arg]);
    let datasets = loghub::load();
    publish(&nats, &nodes[0], "default", &datasets[..2].iter().collect::<Vec<_>>(), 4000);
    let caught_up = |nodes: &[Node]| {
        for n in nodes {
            wait_for(&format!("{} to catch up", n.http), Duration::from_secs(60), || n.caught_up().then_some(()));
        }
    };
    caught_up(&nodes);
    let (_, c) = nodes[0].get("/api/v1/cluster");
    let here = c["shards"].as_array().unwrap().iter().filter(|s| s["here"] == true).count();
    assert!(here < 8, "n1 serves {here} of 8 shards: the others come from n2 and n3");

    let job = run_job(&nodes[0], "/api/v1/backups", json!({"name": "whole"}));
    assert_eq!(job["state"], "done", "{job}");
    let (_, whole) = nodes[0].get("/api/v1/backups/whole");
    assert_eq!((whole["shard_count"].as_u64(), whole["events"].as_u64()), (Some(8), Some(4000)), "{whole}");

    publish(&nats, &nodes[0], "default", &datasets[2..3].iter().collect::<Vec<_>>(), 6000);
    caught_up(&nodes);
    let job = run_job(&nodes[0], "/api/v1/backups", json!({"name": "whole-more"}));
    assert_eq!(job["state"], "done", "{job}");
    let (_, more) = nodes[0].get("/api/v1/backups/whole-more");
    assert_eq!((more["kind"].as_str(), more["parent"].as_str(), more["events"].as_u64()), (Some("incremental"), Some("whole"), Some(6000)), "{more}");
    let job = run_job(&nodes[1], "/api/v1/backups/whole-more/verify", json!({}));
    assert_eq!(job["state"], "done", "verified on another node: {job}");
    let mut before = nodes[0].all_ids("");
    before.sort();
    assert_eq!(before.len(), 6000);

    // n3 killed just before a backup: its shards come from their other replica.
    let mut nodes = nodes;
    nodes[2].kill9();
    let job = run_job(&nodes[0], "/api/v1/backups", json!({"name": "after-kill", "kind": "full"}));
    assert_eq!(job["state"], "done", "{job}");
    let (_, after_kill) = nodes[0].get("/api/v1/backups/after-kill");
    assert_eq!(after_kill["events"].as_u64(), Some(6000), "every shard once, with n3 gone: {after_kill}");

    let nats2 = Nats::start();
    let fresh = tempfile::tempdir().unwrap();
    let node = Node::start(&nats2, fresh.path(), &["--backup-store", &kept_arg]);
    let job = run_job(&node, "/api/v1/restore", json!({"backup": "whole-more"}));
    assert_eq!(job["state"], "done", "{job}");
    node.wait_count("", 6000, Duration::from_secs(60));
    let mut after = node.all_ids("");
    after.sort();
    assert_eq!(after, before, "every event once, as the cluster held them");

    // And into a fresh cluster of three with one replica: each shard's owners take it
    // from the restored copies, and every node answers with every event once.
    let nats3 = Nats::start();
    let dirs3: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let three = start_cluster(&nats3.url(), &dirs3, &["m1", "m2", "m3"], &["--backup-store", &kept_arg, "--replicas", "1"]);
    let job = run_job(&three[1], "/api/v1/restore", json!({"backup": "whole-more"}));
    assert_eq!(job["state"], "done", "{job}");
    for n in &three {
        wait_for(&format!("{} to answer every restored event", n.http), Duration::from_secs(120), || {
            let (status, body) = n.get("/api/v1/count?q=");
            (status == 200 && body["partial"] == false && body["count"].as_u64() == Some(6000)).then_some(())
        });
        let mut ids = n.all_ids("");
        ids.sort();
        assert_eq!(ids, before, "{}: every event once", n.http);
    }
}

/// A restore cut short (the node crashes partway through a shard, as
/// `GOSSAMER_CRASH_MID_RESTORE` asks) runs again on the restarted node: the shards it
/// finished are kept, the one it was writing is written anew, and every event is there
/// once. Another backup is refused on those partial shards; the same restore repeated
/// changes nothing; once events are stored after it, a restore is refused.
#[test]
fn a_restore_cut_short_by_a_crash_runs_again_and_stores_nothing_twice() {
    let datasets = loghub::load();
    let store = tempfile::tempdir().unwrap();
    let store_arg = store.path().to_str().unwrap().to_string();
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let source = Node::start(&nats, data.path(), &["--backup-store", &store_arg]);
    let n1 = (datasets[6].rows.len() + datasets[7].rows.len()) as u64;
    publish(&nats, &source, "default", &[&datasets[6], &datasets[7]], n1);
    let full = run_job(&source, "/api/v1/backups", json!({"name": "crash-full"}));
    assert_eq!(full["state"], "done", "{full}");
    let n2 = n1 + datasets[8].rows.len() as u64;
    publish(&nats, &source, "default", &[&datasets[8]], n2);
    let incr = run_job(&source, "/api/v1/backups", json!({"name": "crash-incr"}));
    assert_eq!(incr["state"], "done", "{incr}");
    let before = answers(&source, &datasets[6..9]);
    let mut ids = source.all_ids("");
    ids.sort();
    assert_eq!(ids.len() as u64, n2);

    let nats2 = Nats::start();
    let fresh = tempfile::tempdir().unwrap();
    let mut node = Node::start_with_env(&nats2.url(), fresh.path(), &["--backup-store", &store_arg], &[("GOSSAMER_CRASH_MID_RESTORE", "3")]);
    let (status, job) = post_json(&format!("{}/api/v1/restore", node.http), json!({"backup": "crash-incr"}));
    assert_eq!(status, 202, "{job}");
    let exit = node.wait_exit(Duration::from_secs(120));
    assert!(!exit.success(), "the node crashed mid-restore: {exit:?}");
    assert!(node.log().contains("crashing mid-restore"), "{}", node.log());
    node.env.clear();
    node.start_again();

    let (status, refused) = post_json(&format!("{}/api/v1/restore", node.http), json!({"backup": "crash-full"}));
    assert_eq!(status, 409, "another backup over a cut-short restore: {refused}");
    assert!(refused["error"].as_str().unwrap().contains("shard 0 is not empty"), "{refused}");

    let job = run_job(&node, "/api/v1/restore", json!({"backup": "crash-incr"}));
    assert_eq!(job["state"], "done", "the restore run again: {job}");
    node.wait_count("", n2, Duration::from_secs(60));
    assert_same_ids(node.all_ids(""), &ids, "every event once after the restore was run again");
    assert_eq!(answers(&node, &datasets[6..9]), before);

    let job = run_job(&node, "/api/v1/restore", json!({"backup": "crash-incr"}));
    assert_eq!(job["state"], "done", "the same restore repeated: {job}");
    assert_same_ids(node.all_ids(""), &ids, "a repeated restore stores nothing twice");

    let n3 = n2 + datasets[9].rows.len() as u64;
    publish(&nats2, &node, "default", &[&datasets[9]], n3);
    let (status, refused) = post_json(&format!("{}/api/v1/restore", node.http), json!({"backup": "crash-incr"}));
    assert_eq!(status, 409, "a restore over events stored since: {refused}");
    assert_eq!(node.count(""), n3);
}

/// One node's backup in a NATS Object Store bucket restored into a cluster of three
/// with two replicas (1 -> 3): every node answers every event once. That cluster then
/// backs itself up into the same bucket from one node, the backup verifies on another,
/// and it restores into one fresh node (3 -> 1) with the cluster's events.
#[test]
fn a_one_node_backup_restores_into_three_whose_own_backup_goes_to_the_object_store() {
    let datasets = loghub::load();
    let nats = Nats::start();
    let bucket = ["--backup-store", "nats://gossamer-backups"];
    let solo_dir = tempfile::tempdir().unwrap();
    let solo = Node::start(&nats, solo_dir.path(), &[&["--cluster", "solo"][..], &bucket].concat());
    let n1 = (datasets[10].rows.len() + datasets[11].rows.len()) as u64;
    publish(&nats, &solo, "solo", &[&datasets[10], &datasets[11]], n1);
    let job = run_job(&solo, "/api/v1/backups", json!({"name": "solo-full"}));
    assert_eq!(job["state"], "done", "{job}");
    let mut solo_ids = solo.all_ids("");
    solo_ids.sort();

    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut trio = start_cluster(&nats.url(), &dirs, &["t1", "t2", "t3"], &[&["--cluster", "trio"][..], &bucket].concat());
    let job = run_job(&trio[0], "/api/v1/restore", json!({"backup": "solo-full"}));
    assert_eq!(job["state"], "done", "{job}");
    for n in &trio {
        wait_for(&format!("{} to answer every restored event", n.http), Duration::from_secs(120), || {
            let (status, body) = n.get("/api/v1/count?q=");
            (status == 200 && body["partial"] == false && body["count"].as_u64() == Some(n1)).then_some(())
        });
        assert_same_ids(n.all_ids(""), &solo_ids, &format!("{}: every event of the one node, once", n.http));
    }
    // A member killed and started again finds its shards as it left them. Each was
    // filled from a copy of the restored cut, which the log has moved past; none is
    // copied again.
    trio[1].restart();
    wait_for(&format!("{} to serve its shards again", trio[1].http), Duration::from_secs(60), || {
        let c = trio[1].cluster();
        let here: Vec<&Value> = c["shards"].as_array().unwrap().iter().filter(|s| s["here"] == true).collect();
        (!here.is_empty() && here.iter().all(|s| s["caught_up"] == true)).then_some(())
    });
    let metrics = ureq::get(&format!("{}/metrics", trio[1].http)).call().unwrap().into_string().unwrap();
    let copied: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("gossamer_shard_rebuilds_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(copied, 0, "shards copied again after the restart:\n{metrics}");
    assert_same_ids(trio[1].all_ids(""), &solo_ids, "every event once after a member's restart");

    let n2 = n1 + datasets[12].rows.len() as u64;
    publish(&nats, &trio[0], "trio", &[&datasets[12]], n2);
    for n in &trio {
        wait_for(&format!("{} to catch up", n.http), Duration::from_secs(60), || n.caught_up().then_some(()));
    }
    let (_, c) = trio[2].get("/api/v1/cluster");
    assert!(c["shards"].as_array().unwrap().iter().any(|s| s["here"] == false), "t3 does not hold every shard: {c}");
    let job = run_job(&trio[2], "/api/v1/backups", json!({"name": "trio-full"}));
    assert_eq!(job["state"], "done", "{job}");
    let (_, manifest) = trio[0].get("/api/v1/backups/trio-full");
    assert_eq!(manifest["events"].as_u64(), Some(n2), "every shard once: {manifest}");
    let job = run_job(&trio[1], "/api/v1/backups/trio-full/verify", json!({}));
    assert_eq!(job["state"], "done", "verified on another node: {job}");
    let mut trio_ids = trio[1].all_ids("");
    trio_ids.sort();
    assert_eq!(trio_ids.len() as u64, n2);

    let again_dir = tempfile::tempdir().unwrap();
    let again = Node::start(&nats, again_dir.path(), &[&["--cluster", "again"][..], &bucket].concat());
    let job = run_job(&again, "/api/v1/restore", json!({"backup": "trio-full"}));
    assert_eq!(job["state"], "done", "{job}");
    again.wait_count("", n2, Duration::from_secs(60));
    assert_same_ids(again.all_ids(""), &trio_ids, "the cluster's events, once each");
}
