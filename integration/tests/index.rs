//! The index changes how much a query reads, never what it answers: the loghub samples
//! queried with no index at all, after the index actor caught up, after a reindex from
//! the CLI, and around a delete give the CSVs' counts every time.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use gossamer_integration::loghub::{self, count_cases, event_json, Dataset};
use gossamer_integration::{enc, gossamer_binary, http_post, js_publish, wait_for, Nats, Node};
use serde_json::Value;

/// Every count case of every sample, the count by level, and the first search page
/// of a selective query, as the node answers them.
fn answers(node: &Node, datasets: &[Dataset]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for ds in datasets {
        for (q, _) in count_cases(ds) {
            out.insert(format!("count {q}"), Value::from(node.count(&q)));
        }
    }
    let (status, body) = node.get("/api/v1/aggregate?q=&fn=count&by=level");
    assert_eq!(status, 200, "{body}");
    out.insert("count by level".into(), body["groups"].clone());
    for q in ["stream:loghub.hdfs exception", "\"authentication failure\"", "level:error"] {
        let (status, body) = node.get(&format!("/api/v1/search?q={}&limit=50", enc(q)));
        assert_eq!(status, 200, "{body}");
        let ids: Vec<Value> = body["events"].as_array().unwrap().iter().map(|e| e["id"].clone()).collect();
        out.insert(format!("search {q}"), Value::from(ids));
    }
    out
}

fn expected(datasets: &[Dataset]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for ds in datasets {
        for (q, n) in count_cases(ds) {
            out.insert(format!("count {q}"), Value::from(n));
        }
    }
    out
}

fn index_state(node: &Node) -> Value {
    let (status, body) = node.get("/api/v1/index");
    assert_eq!(status, 200, "{body}");
    body
}

fn wait_indexed(node: &Node) -> Value {
    wait_for("the index to catch up", Duration::from_secs(120), || {
        let st = index_state(node);
        (st["lag_events"] == 0 && st["dirty_blocks"] == 0 && st["segments"].as_u64() > Some(0)).then_some(st)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_the_same_without_the_index_with_it_and_after_a_reindex() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    // First no index role: every query scans.
    let mut node = Node::start(&nats, data.path(), &["--roles", "ingest,shard,admin"]);
    let datasets = loghub::load();
    let total: u64 = datasets.iter().map(|d| d.rows.len() as u64).sum();
    let js = async_nats::jetstream::new(nats.client().await);
    for ds in &datasets {
        for chunk in ds.rows.chunks(500) {
            let body: String = chunk.iter().map(|r| format!("{}\n", event_json(ds, r))).collect();
            js_publish(&js, &format!("logs.{}", ds.stream()), body.into_bytes()).await;
        }
    }
    let datasets = tokio::task::spawn_blocking(move || {
        node.wait_count("", total, Duration::from_secs(120));
        let (status, body) = node.get("/api/v1/index");
        assert_eq!(status, 404, "no index role, no index state: {body}");
        let scanned = answers(&node, &datasets);
        let want = expected(&datasets);
        for (k, v) in &want {
            assert_eq!(&scanned[k], v, "{k} with no index");
        }

        // The same node with every role: the index actor builds the index from the
        // stored blocks, and answers do not move.
        node.terminate();
        let node = Node::start_with_url(&nats.url(), data.path(), &[]);
        let st = wait_indexed(&node);
        assert!(st["indexed_events_total"].as_u64().unwrap() >= total, "{st}");
        assert_eq!(answers(&node, &datasets), scanned, "answers changed once indexed");

        // A reindex from the CLI drops and rebuilds every shard's index.
        let out = Command::new(gossamer_binary())
            .args(["admin", "reindex", "--wait", "--server", &node.http])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let st = wait_indexed(&node);
        assert!(st["resets_total"].as_u64().unwrap() >= 8, "{st}");
        assert_eq!(answers(&node, &datasets), scanned, "answers changed after a reindex");
        let out = Command::new(gossamer_binary()).args(["admin", "index", "--server", &node.http]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("not indexed: 0 events"), "{out:?}");

        // A delete rewrites indexed blocks: the count is right at once (rewritten blocks
        // are scanned) and stays right once their segments are rebuilt.
        let hdfs_warn = "stream:loghub.hdfs level:warn";
        let before = node.count(hdfs_warn);
        assert!(before > 0);
        let (status, body) = http_post(
            &format!("{}/api/v1/delete", node.http),
            "application/json",
            serde_json::json!({ "q": hdfs_warn }).to_string().as_bytes(),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["deleted"].as_u64(), Some(before));
        assert_eq!(node.count(hdfs_warn), 0);
        assert_eq!(node.count("stream:loghub.hdfs"), 2000 - before);
        // The actor's state may predate the delete: wait for the rebuild it causes.
        wait_for("the rewritten blocks to be reindexed", Duration::from_secs(120), || {
            let st = index_state(&node);
            (st["rebuilds_total"].as_u64() > Some(0) && st["dirty_blocks"] == 0 && st["lag_events"] == 0).then_some(())
        });
        assert_eq!(node.count(hdfs_warn), 0);
        assert_eq!(node.count("stream:loghub.hdfs"), 2000 - before);
        assert_eq!(node.count(""), total - before);
        let metrics = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
        assert!(metrics.contains("gossamer_index_lag_events{"), "{metrics}");
        // Every count above was timed: the histogram's total is at least their number.
        let counted: u64 = metrics
            .lines()
            .find(|l| l.starts_with("gossamer_query_seconds_count{node=\"node-1\",kind=\"count\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no count latency in {metrics}"));
        assert!(counted >= 3, "{counted} counts timed");
        assert!(metrics.contains("gossamer_query_seconds_bucket{node=\"node-1\",kind=\"count\",le=\"+Inf\"}"), "{metrics}");
        datasets
    })
    .await
    .unwrap();
    assert_eq!(datasets.len(), 16);
}
