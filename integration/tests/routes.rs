//! Every route of the REST API in one table: a request that works, and, for every route
//! that takes input, one that is bad and gets a 400 with a JSON error naming the
//! problem. The table is held against the OpenAPI document, so a new route without a
//! row fails here. (401 and 403 for every route: `auth.rs`.)

use std::collections::BTreeSet;
use std::time::Duration;

use gossamer_integration::{js_publish, wait_for, Nats, Node};
use serde_json::{json, Value};

fn call(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let req = ureq::request(method, url);
    let result = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    match result {
        // The tail is a stream that does not end: its headers are the answer.
        Ok(r) if r.content_type() == "text/event-stream" => (r.status(), Value::Null),
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// One row: a route (as the OpenAPI document names it), a request, what it must get.
struct Case {
    method: &'static str,
    route: &'static str,
    path: String,
    body: Option<Value>,
    /// The status wanted; for 400, the error must also contain `error_has`.
    status: u16,
    error_has: &'static str,
}

fn ok(method: &'static str, route: &'static str, path: impl Into<String>, body: Option<Value>, status: u16) -> Case {
    Case { method, route, path: path.into(), body, status, error_has: "" }
}

fn bad(method: &'static str, route: &'static str, path: impl Into<String>, body: Option<Value>, error_has: &'static str) -> Case {
    Case { method, route, path: path.into(), body, status: 400, error_has }
}

fn run(node: &Node, cases: &[Case], succeeded: &mut BTreeSet<(String, String)>, refused: &mut BTreeSet<(String, String)>) {
    for c in cases {
        let (status, body) = call(c.method, &format!("{}{}", node.http, c.path), c.body.as_ref());
        assert_eq!(status, c.status, "{} {}: {body}", c.method, c.path);
        let key = (c.method.to_lowercase(), format!("/api/v1{}", c.route));
        if c.status == 400 {
            let error = body["error"].as_str().unwrap_or_else(|| panic!("{} {}: no JSON error in {body}", c.method, c.path));
            assert!(error.contains(c.error_has), "{} {}: {error:?} does not name {:?}", c.method, c.path, c.error_has);
            refused.insert(key);
        } else {
            succeeded.insert(key);
        }
    }
}

fn wait_job(node: &Node, job: &Value) {
    let id = job["id"].as_str().unwrap_or_else(|| panic!("no job id in {job}")).to_string();
    wait_for(&format!("job {id}"), Duration::from_secs(60), || {
        let (_, j) = node.get(&format!("/api/v1/jobs/{id}"));
        (j["state"] != "running").then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_good_input_and_names_what_is_wrong_with_bad_input() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let js = async_nats::jetstream::new(nats.client().await);
    let body: String = (0..20)
        .map(|i| format!("{}\n", json!({"message": format!("route {i}"), "level": if i % 2 == 0 { "error" } else { "info" }, "fields": {"ms": i}})))
        .collect();
    js_publish(&js, "logs.routes", body.into_bytes()).await;
    // A second, empty node of another cluster restores from the first one's backups.
    let data2 = tempfile::tempdir().unwrap();
    let store = data.path().join("backups");
    let empty = Node::start(&nats, data2.path(), &["--cluster", "restored", "--backup-store", store.to_str().unwrap()]);

    tokio::task::spawn_blocking(move || {
        node.wait_count("", 20, Duration::from_secs(30));
        let (_, page) = node.get("/api/v1/search?q=stream:routes&limit=3");
        let ids: Vec<String> = page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
        let (mut succeeded, mut refused) = (BTreeSet::new(), BTreeSet::new());

        let reads = [
            ok("GET", "/health", "/api/v1/health", None, 200),
            ok("GET", "/cluster", "/api/v1/cluster", None, 200),
            ok("GET", "/search", "/api/v1/search?q=level:error&limit=5", None, 200),
            bad("GET", "/search", "/api/v1/search?q=level:error%20x:%3Ey", None, "column"),
            bad("GET", "/search", "/api/v1/search?limit=0", None, "limit"),
            ok("GET", "/count", "/api/v1/count?q=route", None, 200),
            bad("GET", "/count", "/api/v1/count?q=%22unclosed", None, "column"),
            ok("GET", "/aggregate", "/api/v1/aggregate?fn=p95&field=ms&by=level", None, 200),
            bad("GET", "/aggregate", "/api/v1/aggregate?fn=median", None, "median"),
            ok("POST", "/query", "/api/v1/query", Some(json!({"q": "route", "count": true})), 200),
            bad("POST", "/query", "/api/v1/query", Some(json!([1, 2])), "JSON object"),
            ok("GET", "/events/{id}", format!("/api/v1/events/{}", ids[0]), None, 200),
            bad("GET", "/events/{id}", "/api/v1/events/not-a-uuid", None, "UUID"),
            ok("PATCH", "/events/{id}", format!("/api/v1/events/{}", ids[1]), Some(json!({"labels": {"team": "core"}})), 200),
            bad("PATCH", "/events/{id}", format!("/api/v1/events/{}", ids[1]), Some(json!({})), "nothing to update"),
            ok("DELETE", "/events/{id}", format!("/api/v1/events/{}", ids[2]), None, 200),
            bad("DELETE", "/events/{id}", "/api/v1/events/123", None, "UUID"),
            ok("POST", "/delete", "/api/v1/delete", Some(json!({"q": "stream:routes \"route 19\""})), 200),
            bad("POST", "/delete", "/api/v1/delete", Some(json!({"q": ""})), "empty"),
            ok("GET", "/streams", "/api/v1/streams", None, 200),
            ok("PUT", "/streams/{name}/retention", "/api/v1/streams/routes/retention", Some(json!({"max_age": "30d"})), 200),
            bad("PUT", "/streams/{name}/retention", "/api/v1/streams/routes/retention", Some(json!({"max_age": "soon"})), "soon"),
            ok("GET", "/index", "/api/v1/index", None, 200),
            ok("POST", "/admin/reindex", "/api/v1/admin/reindex", Some(json!({})), 202),
            ok("GET", "/openapi.json", "/api/v1/openapi.json", None, 200),
            ok("GET", "/export", "/api/v1/export?q=stream:routes&format=csv", None, 200),
            bad("GET", "/export", "/api/v1/export?format=xml", None, "format"),
            ok("POST", "/sql", "/api/v1/sql", Some(json!({"sql": "SELECT count(*) FROM logs WHERE stream = 'routes'"})), 200),
            bad("POST", "/sql", "/api/v1/sql", Some(json!({"sql": "SELECT nope FROM logs"})), "nope"),
            ok("GET", "/tail", "/api/v1/tail?q=level:error", None, 200),
            bad("GET", "/tail", "/api/v1/tail?q=level:", None, "column"),
        ];
        run(&node, &reads, &mut succeeded, &mut refused);

        let queues = [
            ok("POST", "/queues", "/api/v1/queues", Some(json!({"name": "errors", "filter": "level:error"})), 201),
            bad("POST", "/queues", "/api/v1/queues", Some(json!({"name": "bad", "filter": "level:error x:>y"})), "column"),
            ok("GET", "/queues", "/api/v1/queues", None, 200),
            ok("GET", "/queues/{name}", "/api/v1/queues/errors", None, 200),
            bad("GET", "/queues/{name}", "/api/v1/queues/bad.name", None, "bad.name"),
            ok("PUT", "/queues/{name}", "/api/v1/queues/errors", Some(json!({"max_deliver": 3})), 200),
            bad("PUT", "/queues/{name}", "/api/v1/queues/errors", Some(json!({"ack_wait": "forever"})), "forever"),
            ok("DELETE", "/queues/{name}", "/api/v1/queues/errors", None, 200),
            bad("DELETE", "/queues/{name}", "/api/v1/queues/bad.name", None, "bad.name"),
        ];
        run(&node, &queues, &mut succeeded, &mut refused);

        // Backups: take one, then read, verify and restore it.
        let (status, job) = call("POST", &format!("{}/api/v1/backups", node.http), Some(&json!({"name": "table"})));
        assert_eq!(status, 202, "{job}");
        succeeded.insert(("post".into(), "/api/v1/backups".into()));
        wait_job(&node, &job);
        let backups = [
            bad("POST", "/backups", "/api/v1/backups", Some(json!({"name": "../up"})), "../up"),
            ok("GET", "/backups", "/api/v1/backups", None, 200),
            ok("GET", "/backups/{id}", "/api/v1/backups/table", None, 200),
            bad("GET", "/backups/{id}", "/api/v1/backups/..%2Fetc", None, ".."),
            ok("POST", "/backups/{id}/verify", "/api/v1/backups/table/verify", Some(json!({})), 202),
            bad("POST", "/backups/{id}/verify", "/api/v1/backups/..%2Fetc/verify", Some(json!({})), ".."),
            ok("GET", "/jobs", "/api/v1/jobs", None, 200),
            ok("GET", "/jobs/{id}", format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()), None, 200),
            bad("POST", "/restore", "/api/v1/restore", Some(json!({"id": "table"})), "backup"),
        ];
        run(&node, &backups, &mut succeeded, &mut refused);
        let (_, verify) = node.get("/api/v1/jobs");
        for j in verify.as_array().unwrap() {
            wait_job(&node, j);
        }
        run(&empty, &[ok("POST", "/restore", "/api/v1/restore", Some(json!({"backup": "table"})), 202)], &mut succeeded, &mut refused);

        // Drain last: on a node alone it leaves every shard without a replica until undone.
        let drain = [
            ok("POST", "/admin/drain", "/api/v1/admin/drain", Some(json!({})), 202),
            ok("DELETE", "/admin/drain", "/api/v1/admin/drain", None, 202),
        ];
        run(&node, &drain, &mut succeeded, &mut refused);
        wait_for("the shards to come back", Duration::from_secs(20), || {
            let (_, c) = node.get("/api/v1/count?q=");
            (c["partial"] == false).then_some(())
        });

        // The table covers the document: every route succeeds once, and every route
        // that takes a query, a path value or a body is refused once.
        let (_, doc) = node.get("/api/v1/openapi.json");
        for (path, ops) in doc["paths"].as_object().unwrap() {
            if !path.starts_with("/api/v1") {
                continue;
            }
            for (method, op) in ops.as_object().unwrap() {
                let key = (method.clone(), path.clone());
                assert!(succeeded.contains(&key), "no working request for {method} {path} in the table");
                let takes_input = op["requestBody"].is_object() || op["parameters"].as_array().is_some_and(|p| !p.is_empty());
                if takes_input && !matches!(path.as_str(), "/api/v1/jobs/{id}") {
                    assert!(refused.contains(&key), "no bad request for {method} {path} in the table");
                }
            }
        }
        drop(empty);
    })
    .await
    .unwrap();
}
