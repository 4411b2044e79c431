//! What one node promised, held by a cluster of real node processes: settings shared by
//! every node (a stream's retention set on any node is the cluster's, applied on the
//! shards other nodes hold, and found by a node that joins later), and notification
//! queues delivered by one live member at a time, taken over when it is killed.

use std::time::Duration;

use std::collections::BTreeSet;
use std::time::Instant;

use gossamer_integration::{enc, http_get, http_post, js_publish, queue_subscriber, start_cluster, subscriber_report, wait_for, Nats, NatsCluster, Node};
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

/// Who delivers `queue` as `node` sees it.
fn deliverer(node: &Node, queue: &str) -> Option<String> {
    let (status, q) = node.get(&format!("/api/v1/queues/{queue}"));
    assert_eq!(status, 200, "{q}");
    q["delivered_by"].as_str().map(String::from)
}

/// Publishes `n` events to `stream`, every other one an error; the errors' ids.
async fn publish_mixed(js: &async_nats::jetstream::Context, stream: &str, n: usize) -> Vec<String> {
    let mut errors = Vec::new();
    let mut body = String::new();
    for i in 0..n {
        let id = uuid::Uuid::now_v7().to_string();
        let level = if i % 2 == 0 { "error" } else { "info" };
        if level == "error" {
            errors.push(id.clone());
        }
        body.push_str(&format!("{}\n", json!({"id": id, "level": level, "message": format!("event {i}")})));
    }
    js_publish(js, &format!("logs.{stream}"), body.into_bytes()).await;
    errors
}

/// Every member may deliver queues; each queue is delivered by one of them. A consumer
/// (nats-py) reads the queue while the member delivering it is killed -9 again and
/// again, then drained: another takes it over each time, and every matching event
/// reaches the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_delivered_by_one_live_member_and_taken_over_after_a_kill_9() {
    const ROUNDS: usize = 3;
    const PER_BATCH: usize = 400;
    let nats = NatsCluster::start(3);
    nats.wait_jetstream(3).await;
    let urls = nats.urls();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = ["n1", "n2", "n3"];
    let nodes = start_cluster(&urls, &dirs, &names, &["--stream-replicas", "3"]);
    let js = async_nats::jetstream::new(nats.client().await);
    let (status, q) = http_post(&format!("{}/api/v1/queues", nodes[0].http), "application/json", json!({"name": "errors", "filter": "level:error"}).to_string().as_bytes());
    assert_eq!(status, 201, "{q}");
    // Two batches a round (one while the deliverer is down) and one at the end.
    let expect = (2 * ROUNDS + 1) * PER_BATCH / 2;
    let first_server = urls.split(',').next().unwrap().to_string();
    let consumer = queue_subscriber(&first_server, "errors", &["--expect", &expect.to_string(), "--timeout", "60"]);

    let mut nodes = nodes;
    let mut want: BTreeSet<String> = BTreeSet::new();
    let mut takeovers_ms = Vec::new();
    for round in 0..ROUNDS {
        want.extend(publish_mixed(&js, "alerts", PER_BATCH).await);
        // Every member names the same deliverer.
        let (back, owner) = tokio::task::spawn_blocking(move || {
            let owner = wait_for("the members to agree on the queue's deliverer", Duration::from_secs(30), || {
                let seen: Vec<Option<String>> = nodes.iter().map(|n| deliverer(n, "errors")).collect();
                (seen[0].is_some() && seen.iter().all(|s| *s == seen[0])).then(|| seen[0].clone().unwrap())
            });
            // Killed once it is delivering.
            let at = names.iter().position(|n| *n == owner).unwrap();
            wait_for("the deliverer to publish", Duration::from_secs(60), || {
                let (_, q) = nodes[at].get("/api/v1/queues/errors");
                (q["stats"]["published"].as_u64() > Some(0)).then_some(())
            });
            (nodes, owner)
        })
        .await
        .unwrap();
        nodes = back;
        let victim = names.iter().position(|n| *n == owner).unwrap();
        nodes[victim].kill9();
        let killed_at = Instant::now();
        // Matching events keep coming while it is down.
        want.extend(publish_mixed(&js, "alerts", PER_BATCH).await);
        let (back, took) = tokio::task::spawn_blocking(move || {
            let other = (victim + 1) % 3;
            let next = wait_for("another member to take the queue over", Duration::from_secs(30), || {
                deliverer(&nodes[other], "errors").filter(|d| *d != owner)
            });
            let took = killed_at.elapsed();
            eprintln!("round {round}: {owner} killed, {next} delivers after {} ms", took.as_millis());
            nodes[victim].restart();
            let all: Vec<&str> = names.to_vec();
            for n in &nodes {
                n.wait_members(&all, Duration::from_secs(30));
            }
            (nodes, took)
        })
        .await
        .unwrap();
        nodes = back;
        takeovers_ms.push(took.as_millis());
    }
    // A drained member gives its queues up as it gives its shards up.
    let nodes = tokio::task::spawn_blocking(move || {
        let owner = deliverer(&nodes[0], "errors").unwrap();
        let at = names.iter().position(|n| *n == owner).unwrap();
        let (status, body) = http_post(&format!("{}/api/v1/admin/drain", nodes[at].http), "application/json", b"{}");
        assert_eq!(status, 202, "{body}");
        let other = (at + 1) % 3;
        let next = wait_for("another member to take the drained member's queue", Duration::from_secs(30), || {
            deliverer(&nodes[other], "errors").filter(|d| *d != owner)
        });
        eprintln!("{owner} drained, {next} delivers");
        nodes
    })
    .await
    .unwrap();
    want.extend(publish_mixed(&js, "alerts", PER_BATCH).await);
    assert_eq!(want.len(), expect);

    let got = tokio::task::spawn_blocking(move || subscriber_report(consumer)).await.unwrap();
    let acked: BTreeSet<String> = got["acked"].as_object().unwrap().keys().cloned().collect();
    let missing: Vec<&String> = want.difference(&acked).collect();
    if !missing.is_empty() {
        let views: Vec<String> = nodes.iter().map(|n| n.get("/api/v1/queues/errors").1.to_string()).collect();
        let logs: Vec<String> = nodes
            .iter()
            .map(|n| n.log().lines().filter(|l| l.contains("queue") || l.contains("WARN") || l.contains("ERROR")).collect::<Vec<_>>().join("\n"))
            .collect();
        panic!(
            "{} of {} matching events never reached the consumer, e.g. {:?}\nthe queue as each node sees it:\n{}\nthe nodes' logs:\n{}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)],
            views.join("\n"),
            logs.join("\n---\n")
        );
    }
    assert!(acked.is_subset(&want), "only matching events are delivered");
    let dropped: u64 = nodes.iter().map(|n| metric_sum(n, "gossamer_queue_duplicates_total")).sum();
    eprintln!(
        "takeovers after kill -9 (ms): {takeovers_ms:?}; deliveries the consumer saw twice: {}; repeats NOTIFY dropped (nodes alive at the end): {dropped}",
        got["repeats"]
    );
}

/// The sum of a metric's series on `node`.
fn metric_sum(node: &Node, name: &str) -> u64 {
    let text = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    text.lines().filter(|l| l.starts_with(&format!("{name}{{"))).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}
