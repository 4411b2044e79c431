//! Back-pressure: a node allowed no backlog at all (no unapplied shard-log message, no
//! unindexed event) and a 4 MiB sled cache takes a burst on both ways in: ingest
//! waits for the node to catch up (it says so in `/metrics`), producers on the
//! request path are told to retry and do, and every event is stored exactly once.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use gossamer_integration::{gossamer_binary, js_publish, Nats, Node};
use serde_json::json;

#[test]
fn a_node_with_a_tiny_budget_pauses_ingest_and_stores_every_event_of_a_burst() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("tiny.json");
    std::fs::write(&config, json!({"max_shard_backlog": 0, "max_index_lag": 0, "ingest_batch": 20, "sled_cache_mb": 4}).to_string()).unwrap();
    let node = Node::start(&nats, &data.path().join("node"), &["--config", config.to_str().unwrap()]);

    // 30,000 events on logs.> with JetStream acks, as fast as the bus takes them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(nats.client().await);
        for m in 0..300 {
            let body: String = (0..100).map(|i| format!("{}\n", json!({"message": format!("burst {m} {i}"), "level": "info"}))).collect();
            js_publish(&js, "logs.burst.js", body.into_bytes()).await;
        }
    });
    // And 10,000 through the request path with the CLI, which waits out busy answers.
    let file = data.path().join("burst.ndjson");
    let mut f = std::fs::File::create(&file).unwrap();
    for i in 0..10_000 {
        writeln!(f, "{}", json!({"message": format!("requested {i}")})).unwrap();
    }
    drop(f);
    let out = Command::new(gossamer_binary())
        .args(["publish", "--nats", &nats.url(), "--stream", "burst.rr", "--batch", "100"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    node.wait_count("stream:burst.js", 30_000, Duration::from_secs(180));
    node.wait_count("stream:burst.rr", 10_000, Duration::from_secs(180));
    assert_eq!(node.all_ids("stream:burst.*").len(), 40_000, "each event once");
    let metrics = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    let paused: u64 = metrics
        .lines()
        .find(|l| l.starts_with("gossamer_ingest_paused_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pause counter in {metrics}"));
    assert!(paused > 0, "ingest never waited: {metrics}");
    assert!(node.log().contains("ingest-paused"), "the node says why it waits");
}
