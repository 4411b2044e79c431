//! Deletes by id and by query, updates, and per-stream retention: applied as commands in
//! the shard log, visible at once to queries, kept across a kill -9 restart.

use std::process::Command;
use std::time::Duration;

use gossamer_integration::{enc, gossamer_binary, http_post, wait_for, Nats, Node};
use serde_json::{json, Value};

fn http(method: &str, url: &str, body: Value) -> (u16, Value) {
    let req = ureq::request(method, url);
    match req.send_json(body) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

fn delete(url: &str) -> (u16, Value) {
    match ureq::delete(url).call() {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("DELETE {url}: {e}"),
    }
}

#[test]
fn deletes_updates_and_retention_apply_through_the_shard_log() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::start(&nats, data.path(), &["--retention-every-secs", "1"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(nats.client());
    let ingest = |stream: &str, body: String| -> Value {
        let reply = rt.block_on(client.request(format!("gossamer.default.ingest.{stream}"), body.into())).unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let day_ms = 86_400_000;

    // Stream a: 100 events, a third of them errors. Stream b: 50 from three days ago,
    // 50 from now. Stream c: 20 from now.
    let mut ids = Vec::new();
    let mut body = String::new();
    for i in 0..100 {
        let id = uuid::Uuid::now_v7();
        ids.push(id);
        let level = if i % 3 == 0 { "error" } else { "info" };
        body.push_str(&format!("{}\n", json!({"id": id.to_string(), "level": level, "message": format!("a event {i}"), "ts": now_ms - i})));
    }
    assert_eq!(ingest("a", body)["accepted"], 100);
    let b: String = (0..100)
        .map(|i| format!("{}\n", json!({"message": "b event", "ts": if i < 50 { now_ms - 3 * day_ms } else { now_ms }})))
        .collect();
    assert_eq!(ingest("b", b)["accepted"], 100);
    let c: String = (0..20).map(|_| format!("{}\n", json!({"message": "c event", "ts": now_ms}))).collect();
    assert_eq!(ingest("c", c)["accepted"], 20);
    node.wait_count("", 220, Duration::from_secs(30));
    let base = format!("{}/api/v1", node.http);

    // Delete by id: gone at once, and a second delete finds nothing.
    let (status, body) = delete(&format!("{base}/events/{}", ids[1]));
    assert_eq!((status, body["deleted"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(node.get(&format!("/api/v1/events/{}", ids[1])).0, 404);
    assert_eq!(delete(&format!("{base}/events/{}", ids[1])).0, 404);
    assert_eq!(node.count("stream:a"), 99);

    // Update: labels and fields set and removed; queries see the new values.
    let (status, e) = http("PATCH", &format!("{base}/events/{}", ids[2]), json!({"labels": {"team": "core"}, "fields": {"retries": 3}}));
    assert_eq!(status, 200, "{e}");
    assert_eq!((e["labels"]["team"].as_str(), e["fields"]["retries"].as_i64()), (Some("core"), Some(3)));
    assert_eq!(node.count("team:core retries:>=3"), 1);
    let (_, e) = http("PATCH", &format!("{base}/events/{}", ids[2]), json!({"labels": {"team": null}}));
    assert!(e["labels"].get("team").is_none(), "{e}");
    assert_eq!(node.count("team:core"), 0);

    // Delete by query: exactly the matching events.
    let errors = node.count("stream:a level:error");
    assert_eq!(errors, 34);
    let (status, body) = http_post(&format!("{base}/delete"), "application/json", json!({"q": "stream:a level:error"}).to_string().as_bytes());
    assert_eq!((status, body["deleted"].as_u64()), (200, Some(errors)), "{body}");
    assert_eq!(node.count("stream:a level:error"), 0);
    assert_eq!(node.count("stream:a"), 99 - errors);
    assert_eq!(node.count("stream:b OR stream:c"), 120, "other streams are untouched");

    // Retention: stream b keeps two days; the old half goes at once.
    let (status, body) = http("PUT", &format!("{base}/streams/b/retention"), json!({"max_age": "2d"}));
    assert_eq!((status, body["deleted"].as_u64(), body["max_age"].as_str()), (200, Some(50), Some("2d")), "{body}");
    assert_eq!(node.count("stream:b"), 50);
    let (_, streams) = node.get("/api/v1/streams");
    let sb = streams["streams"].as_array().unwrap().iter().find(|s| s["name"] == "b").unwrap().clone();
    assert_eq!((sb["events"].as_u64(), sb["retention"].as_str()), (Some(50), Some("2d")));
    assert!(streams["sled_bytes"].as_u64().unwrap() > 0);

    // Retention keeps applying: old events published later go on a following run.
    let old: String = (0..10).map(|_| format!("{}\n", json!({"message": "late old b", "ts": now_ms - 5 * day_ms}))).collect();
    assert_eq!(ingest("b", old)["accepted"], 10);
    wait_for("retention to remove late old events", Duration::from_secs(30), || {
        (node.count("stream:b late") == 0 && node.count("stream:b") == 50).then_some(())
    });

    // Bad requests say what is wrong.
    for (method, path, body, want) in [
        ("PUT", "/streams/b/retention".to_string(), json!({"max_age": "soon"}), "invalid `max_age`"),
        ("PUT", "/streams/bad!name/retention".to_string(), json!({"max_age": "1d"}), "invalid stream name"),
        ("POST", "/delete".to_string(), json!({"q": ""}), "empty query"),
        ("POST", "/delete".to_string(), json!({"q": "level:error x:>y"}), "column"),
        ("POST", "/delete".to_string(), json!({"query": "x"}), "invalid delete body"),
        ("PATCH", format!("/events/{}", ids[3]), json!({"labels": {"k": 1}}), "invalid update"),
        ("PATCH", format!("/events/{}", ids[3]), json!({}), "nothing to update"),
    ] {
        let (status, body) = http(method, &format!("{base}{path}"), body);
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(want), "{method} {path}: {body}");
    }

    // The CLI does the same.
    let out = Command::new(gossamer_binary()).args(["delete", "--server", &node.http, "stream:c"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deleted 20");
    let out = Command::new(gossamer_binary()).args(["retention", "--server", &node.http, "b", "off"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, streams) = node.get("/api/v1/streams");
    assert!(streams["streams"].as_array().unwrap().iter().all(|s| s["retention"].is_null()));

    // Everything survives a kill -9.
    let before = node.count("");
    node.restart();
    assert_eq!(node.count(""), before);
    assert_eq!(node.count("stream:c"), 0);
    assert_eq!(node.count("stream:a level:error"), 0);
    assert_eq!(node.get(&format!("/api/v1/search?q={}", enc("stream:a"))).1["events"].as_array().unwrap().len(), (99 - errors) as usize);
}
