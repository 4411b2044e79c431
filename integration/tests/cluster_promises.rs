//! What one node promised, held by a cluster of real node processes: settings shared by
//! every node (a stream's retention set on any node is the cluster's, applied on the
//! shards other nodes hold, and found by a node that joins later).

use std::time::Duration;

use gossamer_integration::{enc, http_get, js_publish, start_cluster, wait_for, Nats, Node};
use serde_json::{json, Value};

/// A complete count through `node` (no shard missing), waited for.
fn wait_whole_count(node: &Node, q: &str, want: u64) {
    wait_for(&format!("{} to count {want} for {q:?}", node.http), Duration::from_secs(60), || {
        let (status, body) = node.get(&format!("/api/v1/count?q={}", enc(q)));
        (status == 200 && body["partial"] == false && body["count"].as_u64() == Some(want)).then_some(())
    });
}

/// The retention `node` shows for `stream` (null when none).
fn retention_on(node: &Node, stream: &str) -> Value {
    let (status, body) = node.get("/api/v1/streams");
    assert_eq!(status, 200, "{body}");
    body["streams"].as_array().unwrap().iter().find(|s| s["name"] == stream).map_or(Value::Null, |s| s["retention"].clone())
}

fn put_retention(node: &Node, stream: &str, max_age: Value) -> (u16, Value) {
    match ureq::put(&format!("{}/api/v1/streams/{stream}/retention", node.http)).send_json(json!({ "max_age": max_age })) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
        Err(e) => panic!("PUT retention: {e}"),
    }
}

/// `count` events of `stream` whose time is `age_ms` ago, their message saying `word`.
async fn publish_aged(js: &async_nats::jetstream::Context, stream: &str, word: &str, count: usize, age_ms: i64) {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let body: String = (0..count).map(|i| format!("{}\n", json!({"message": format!("{word} event {i}"), "ts": now_ms - age_ms}))).collect();
    js_publish(js, &format!("logs.{stream}"), body.into_bytes()).await;
}

fn metric(node: &Node, name: &str) -> u64 {
    let text = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics of {}", node.http))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_set_on_one_node_holds_on_every_node_and_on_one_that_joins_later() {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    let nats = Nats::start();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = nats.url();
    // One replica: each shard is on one node alone.
    let extra = ["--replicas", "1", "--retention-every-secs", "1"];
    let nodes = start_cluster(&url, &dirs[..3], &["n1", "n2", "n3"], &extra);
    let js = async_nats::jetstream::new(nats.client().await);
    publish_aged(&js, "kept", "old", 200, 5 * DAY_MS).await;
    publish_aged(&js, "kept", "new", 200, 0).await;
    publish_aged(&js, "other", "old", 50, 5 * DAY_MS).await;

    let (nodes, dirs) = tokio::task::spawn_blocking(move || {
        wait_whole_count(&nodes[0], "", 450);
        // n3 holds shards no other node does, some of them with old events.
        let map = nodes[0].shard_map();
        assert!(map.iter().any(|r| r == &["n3"]), "n3 holds shards of its own: {map:?}");

        // Set on n1: the old events go at once from every node's shards (some perhaps
        // by another node's timer, which sees the setting as soon as it is written).
        let (status, body) = put_retention(&nodes[0], "kept", json!("2d"));
        assert_eq!((status, body["max_age"].as_str()), (200, Some("2d")), "{body}");
        wait_whole_count(&nodes[2], "stream:kept", 200);
        wait_whole_count(&nodes[2], "stream:other", 50);
        // Every node shows it: the setting is the cluster's.
        for n in &nodes {
            wait_for(&format!("{} to show the retention", n.http), Duration::from_secs(30), || (retention_on(n, "kept") == "2d").then_some(()));
        }
        (nodes, dirs)
    })
    .await
    .unwrap();

    // A node that joins afterwards finds it, and applies it to the shards it becomes the
    // primary of (the timer on each node reaches only its own primaries).
    let n4 = Node::start_member(&url, dirs[3].path(), "n4", &extra);
    let n4 = tokio::task::spawn_blocking(move || {
        n4.wait_members(&["n1", "n2", "n3", "n4"], Duration::from_secs(30));
        wait_for("n4 to show the retention", Duration::from_secs(30), || (retention_on(&n4, "kept") == "2d").then_some(()));
        wait_whole_count(&n4, "stream:kept", 200);
        n4
    })
    .await
    .unwrap();
    let deleted = |nodes: &[Node], n4: &Node| -> u64 {
        nodes.iter().chain([n4]).map(|n| metric(n, "gossamer_retention_deleted_total")).sum()
    };
    let before = deleted(&nodes, &n4);
    publish_aged(&js, "kept", "late", 200, 5 * DAY_MS).await;
    let (nodes, n4) = tokio::task::spawn_blocking(move || {
        // Every late old event was stored and then deleted by a timer, each by the
        // primary of its shard.
        wait_for("the timers to delete the late old events", Duration::from_secs(60), || (deleted(&nodes, &n4) == before + 200).then_some(()));
        wait_whole_count(&n4, "stream:kept", 200);
        assert_eq!(n4.count("stream:kept late"), 0);
        assert!(metric(&n4, "gossamer_retention_deleted_total") > 0, "n4's timer deleted late old events on its own shards");

        // Cleared on n2: cleared everywhere.
        let (status, body) = put_retention(&nodes[1], "kept", Value::Null);
        assert_eq!(status, 200, "{body}");
        for n in nodes.iter().chain([&n4]) {
            wait_for(&format!("{} to show no retention", n.http), Duration::from_secs(30), || retention_on(n, "kept").is_null().then_some(()));
        }
        let (_, cluster) = http_get(&format!("{}/api/v1/cluster", n4.http));
        assert_eq!(cluster["members"].as_array().unwrap().len(), 4);
        (nodes, n4)
    })
    .await
    .unwrap();
    drop((nodes, n4));
}

/// A node upgraded from when retention was kept per node brings the retention it had
/// into the cluster's settings, where every other node finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_one_node_kept_alone_becomes_the_clusters() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let before = Nats::start();
    let mut n1 = Node::start_member(&before.url(), dirs[0].path(), "n1", &[]);
    assert_eq!(put_retention(&n1, "app", json!("3d")).0, 200);
    n1.terminate();
    // Another bus, whose settings bucket has never held that retention, as a bus the
    // cluster used before settings were shared.
    let after = Nats::start();
    let nodes = start_cluster(&after.url(), &dirs, &["n1", "n2"], &[]);
    tokio::task::spawn_blocking(move || {
        wait_for("n2 to show n1's retention", Duration::from_secs(30), || (retention_on(&nodes[1], "app") == "3d").then_some(()));
        // Cleared through n2, it stays cleared when n1 starts again.
        assert_eq!(put_retention(&nodes[1], "app", Value::Null).0, 200);
        wait_for("n1 to show no retention", Duration::from_secs(30), || retention_on(&nodes[0], "app").is_null().then_some(()));
        let mut nodes = nodes;
        nodes[0].restart();
        wait_for("n1 to be up", Duration::from_secs(30), || (nodes[0].get("/api/v1/health").0 == 200).then_some(()));
        assert!(retention_on(&nodes[0], "app").is_null() && retention_on(&nodes[1], "app").is_null());
    })
    .await
    .unwrap();
}
