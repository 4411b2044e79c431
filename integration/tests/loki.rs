//! The Loki door's push with real clients of that protocol: npm's winston-loki
//! (protobuf + snappy, and JSON) and PyPI's python-logging-loki (JSON), then a
//! gzip-encoded push; counts, labels and levels are checked against what was pushed,
//! and a push sent again stores nothing twice.

use std::process::Command;
use std::time::Duration;

use gossamer_integration::{http_post, Nats, Node};

fn node_clients() -> std::path::PathBuf {
    std::env::var("GOSSAMER_TEST_NODE_MODULES").map(Into::into).unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/node-clients/node_modules")
    })
}

fn winston(node: &Node, app: &str, json: bool) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node/winston_loki.js");
    let mut cmd = Command::new("node");
    cmd.arg(script).args(["--host", &node.http, "--app", app]).env("NODE_PATH", node_clients());
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("node with winston-loki (test.sh installs it)");
    assert!(out.status.success(), "winston-loki: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn loki_shippers_push_and_every_line_is_stored_once() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);

    winston(&node, "winston-proto", false);
    winston(&node, "winston-json", true);
    node.wait_count("stream:winston-proto OR stream:winston-json", 20, Duration::from_secs(30));
    for app in ["winston-proto", "winston-json"] {
        assert_eq!(node.count(&format!("stream:{app} labels.app:{app} env:test shipped")), 8, "{app}");
        assert_eq!(node.count(&format!("stream:{app} level:error failed")), 2, "{app}");
    }

    let python = std::env::var("GOSSAMER_TEST_PYTHON").unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyvenv/bin/python").to_string_lossy().into_owned()
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/loki_push.py");
    let out = Command::new(python).arg(script).args(["--url", &node.http]).output().unwrap();
    assert!(out.status.success(), "python-logging-loki: {}", String::from_utf8_lossy(&out.stderr));
    node.wait_count("stream:loki OR stream:gz-job", 10, Duration::from_secs(30));
    // python-logging-loki's tags and severity; the stream falls back to `loki`.
    assert_eq!(node.count("stream:loki application:py-app level:warn \"cache miss\""), 2);
    assert_eq!(node.count("stream:loki application:py-app level:info served"), 4);
    // The gzip push: the level label, structured metadata as fields.
    assert_eq!(node.count("stream:gz-job level:error compressed fields.trace_id:t2"), 1);

    // Pushed again, the same lines are stored once; a bad body is a 400 in Loki's words.
    let body = serde_json::json!({"streams": [{"stream": {"app": "again"}, "values": [["1780000000000000000", "the same line"]]}]}).to_string();
    for _ in 0..2 {
        let (status, _) = http_post(&format!("{}/loki/api/v1/push", node.http), "application/json", body.as_bytes());
        assert_eq!(status, 204);
    }
    node.wait_count("stream:again", 1, Duration::from_secs(30));
    let (status, _) = http_post(&format!("{}/loki/api/v1/push", node.http), "application/json", b"{\"streams\": [{\"stream\": {}, \"values\": []}]}");
    assert_eq!(status, 400);
    let refused = ureq::post(&format!("{}/loki/api/v1/push", node.http)).set("Content-Type", "application/x-protobuf").send_bytes(b"not snappy");
    let Err(ureq::Error::Status(400, r)) = refused else { panic!("a bad protobuf body must be a 400") };
    assert!(r.into_string().unwrap().contains("snappy"));
    // Wait until every shard has applied what it got, then count again.
    gossamer_integration::wait_for("the shards to catch up", Duration::from_secs(30), || {
        let (_, c) = node.get("/api/v1/cluster");
        c["shards"].as_array().unwrap().iter().all(|s| s["pending"] == 0).then_some(())
    });
    assert_eq!(node.count("stream:again"), 1, "a retried push stores nothing twice");
}
