//! The Elasticsearch door with real clients of that protocol: Elastic's Python client
//! and opensearch-py index documents with their bulk helpers into a node that has
//! tokens (sent as basic auth); good documents are stored with their time, level and
//! fields, the bad one gets its item error, a retry stores nothing twice.

use std::process::Command;
use std::time::Duration;

use gossamer_integration::{python, wait_for, Nats, Node};
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789abcdef";

fn bulk(node: &Node, client: &str, index: &str, token: Option<&str>) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/es_bulk.py");
    let mut cmd = Command::new(python());
    cmd.arg(script).args(["--url", &node.http, "--client", client, "--index", index, "--count", "100"]);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let out = cmd.output().expect("python with elasticsearch and opensearch-py (test.sh installs them)");
    assert!(out.status.success(), "{client}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn elasticsearch_and_opensearch_clients_bulk_index_into_gossamer() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--admin-token", ADMIN]);

    let es = bulk(&node, "elasticsearch", "es-app", Some(ADMIN));
    assert_eq!(es["version"], "8.11.0", "{es}");
    assert_eq!(es["ok"], 100, "{es}");
    let errors = es["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{es}");
    let bad = &errors[0]["index"];
    assert_eq!((bad["_id"].as_str(), bad["status"].as_u64()), (Some("elasticsearch-bad"), Some(400)), "{es}");
    assert!(bad["error"]["reason"].as_str().unwrap().contains("not a time"), "{es}");

    let os = bulk(&node, "opensearch", "os-app", Some(ADMIN));
    assert_eq!((os["ok"].as_u64(), os["errors"].as_array().map(Vec::len)), (Some(100), Some(1)), "{os}");

    let count = |q: &str| -> u64 {
        let r = ureq::get(&format!("{}/api/v1/count", node.http))
            .query("q", q)
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .call()
            .unwrap();
        r.into_json::<Value>().unwrap()["count"].as_u64().unwrap()
    };
    wait_for("every document stored", Duration::from_secs(30), || (count("stream:es-app OR stream:os-app") >= 200).then_some(()));
    // Time, level, nested fields and a document's own `id` as a field.
    assert_eq!(count("stream:es-app level:error"), 10);
    assert_eq!(count("stream:es-app fields.host.name:web-1 fields.id:42"), 1);
    let page: Value = ureq::get(&format!("{}/api/v1/search", node.http))
        .query("q", "stream:es-app")
        .query("order", "asc")
        .query("limit", "1")
        .set("Authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(page["events"][0]["ts"], "2026-06-01T10:00:00.000000000Z");

    // The same `_id`s again: once every shard has applied what it was sent, nothing is
    // stored twice.
    let again = bulk(&node, "elasticsearch", "es-app", Some(ADMIN));
    assert_eq!(again["ok"], 100);
    let applied = || -> bool {
        let c: Value =
            ureq::get(&format!("{}/api/v1/cluster", node.http)).set("Authorization", &format!("Bearer {ADMIN}")).call().unwrap().into_json().unwrap();
        c["shards"].as_array().unwrap().iter().all(|s| s["pending"] == 0)
    };
    wait_for("the shards to catch up", Duration::from_secs(30), || applied().then_some(()));
    assert_eq!(count("stream:es-app"), 100);

    // Without a token: 401 in Elasticsearch's shape.
    let refused = ureq::post(&format!("{}/_bulk", node.http)).send_string("{\"index\":{\"_index\":\"x\"}}\n{}\n");
    let Err(ureq::Error::Status(401, r)) = refused else { panic!("a bulk without a token must be refused") };
    assert_eq!(r.header("X-Elastic-Product"), Some("Elasticsearch"));
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["type"], "security_exception", "{body}");
    // The health line Elastic's tools read.
    let health = ureq::get(&format!("{}/_cat/health", node.http)).set("Authorization", &format!("Bearer {ADMIN}")).call().unwrap();
    assert!(health.into_string().unwrap().contains(" green "));
}

/// A node without the ingest role sends a door's events over NATS to a node that has it
/// (a node with it hands them to its own ingest actor in process).
#[test]
fn a_node_without_ingest_sends_bulk_documents_over_nats() {
    let nats = Nats::start();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gossip = ["--gossip-probe-ms", "200", "--gossip-suspect-ms", "1000"];
    let ingesting = Node::start(&nats, a.path(), &[&["--node-id", "with-ingest"][..], &gossip].concat());
    let door = Node::start(&nats, b.path(), &[&["--node-id", "door", "--roles", "shard,index,admin"][..], &gossip].concat());
    for n in [&ingesting, &door] {
        n.wait_members(&["with-ingest", "door"], Duration::from_secs(30));
    }
    let body: String = (0..300).map(|i| format!("{{\"index\":{{}}}}\n{{\"message\":\"over nats {i}\"}}\n")).collect();
    let (status, answer) = gossamer_integration::http_post(&format!("{}/via.nats/_bulk?refresh=wait_for", door.http), "application/x-ndjson", body.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["errors"].as_bool(), answer["forced_refresh"].as_bool()), (Some(false), Some(true)), "{answer}");
    assert_eq!(door.count("stream:via.nats"), 300);
    assert_eq!(ingesting.count("stream:via.nats"), 300);
}
