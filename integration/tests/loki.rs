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

/// Raw lines of a loghub sample and the normalised level of each from its CSV.
fn sample(name: &str) -> (Vec<String>, Vec<String>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/loghub").join(name);
    let raw = String::from_utf8_lossy(&std::fs::read(dir.join(format!("{name}_2k.log"))).unwrap()).lines().map(String::from).collect();
    let mut rdr = csv::Reader::from_path(dir.join(format!("{name}_2k.log_structured.csv"))).unwrap();
    let at = rdr.headers().unwrap().iter().position(|h| h == "Level").unwrap();
    let levels = rdr
        .records()
        .map(|r| match r.unwrap()[at].to_lowercase().as_str() {
            "notice" => "info".to_string(),
            other => other.to_string(),
        })
        .collect();
    (raw, levels)
}

fn tally(levels: &[String]) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for l in levels {
        *out.entry(l.clone()).or_insert(0.0) += 1.0;
    }
    out
}

fn loki_get(node: &Node, path: &str, params: &[(&str, &str)], headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = ureq::get(&format!("{}{path}", node.http));
    for (k, v) in params {
        req = req.query(k, v);
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn loki_json(node: &Node, path: &str, params: &[(&str, &str)], headers: &[(&str, &str)]) -> serde_json::Value {
    let (status, body) = loki_get(node, path, params, headers);
    assert_eq!(status, 200, "{path} {params:?}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Sums every sample of a matrix, per series label `key`.
fn matrix_sums(v: &serde_json::Value, key: &str) -> std::collections::BTreeMap<String, f64> {
    assert_eq!(v["data"]["resultType"], "matrix", "{v}");
    let mut out = std::collections::BTreeMap::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let total: f64 = s["values"].as_array().unwrap().iter().map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap()).sum();
        *out.entry(s["metric"][key].as_str().unwrap_or("").to_string()).or_insert(0.0) += total;
    }
    out
}

#[test]
fn grafana_and_loki_readers_get_what_was_pushed() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);

    // Two loghub samples pushed through the Loki API, line i of each at T0 + i s; each
    // Apache line carries its number as structured metadata.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let t0 = (now - 3600) * 1_000_000_000;
    let sec = 1_000_000_000i64;
    let (apache, apache_levels) = sample("Apache");
    let (zookeeper, zookeeper_levels) = sample("Zookeeper");
    for (app, lines) in [("apache", &apache), ("zookeeper", &zookeeper)] {
        let values: Vec<serde_json::Value> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let t = (t0 + i as i64 * sec).to_string();
                if app == "apache" {
                    serde_json::json!([t, l, {"seq": i.to_string()}])
                } else {
                    serde_json::json!([t, l])
                }
            })
            .collect();
        let body = serde_json::json!({"streams": [{"stream": {"app": app, "env": "test"}, "values": values}]}).to_string();
        let (status, _) = http_post(&format!("{}/loki/api/v1/push", node.http), "application/json", body.as_bytes());
        assert_eq!(status, 204);
    }
    node.wait_count("stream:apache OR stream:zookeeper", 4000, Duration::from_secs(60));
    let (start, end) = (t0.to_string(), (t0 + 2000 * sec).to_string());

    // loki-reader-core (PyPI).
    let python = std::env::var("GOSSAMER_TEST_PYTHON").unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyvenv/bin/python").to_string_lossy().into_owned()
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/loki_read.py");
    let out = Command::new(python).arg(script).args(["--url", &node.http, "--start", &start, "--end", &end]).output().unwrap();
    assert!(out.status.success(), "loki-reader-core: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut want_lines: Vec<&String> = apache.iter().filter(|l| l.contains("error")).collect();
    let mut lines: Vec<String> = got["error_lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
    want_lines.sort();
    lines.sort();
    assert_eq!(lines.len(), want_lines.len(), "lines with \"error\" (a substring, case-sensitive)");
    assert!(lines.iter().zip(&want_lines).all(|(a, b)| a == *b));
    for s in got["error_streams"].as_array().unwrap() {
        assert_eq!((s["app"].as_str(), s["env"].as_str(), s["stream"].as_str()), (Some("apache"), Some("test"), Some("apache")), "{s}");
    }
    let by_level: std::collections::BTreeMap<String, f64> = serde_json::from_value(got["by_level"].clone()).unwrap();
    assert_eq!(by_level, tally(&apache_levels), "count by level equals the CSV's");
    let labels: Vec<&str> = got["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    for l in ["app", "env", "level", "stream"] {
        assert!(labels.contains(&l), "{l} in {labels:?}");
    }
    assert_eq!(got["apps"], serde_json::json!(["apache", "zookeeper"]));
    let levels: std::collections::BTreeSet<&str> = got["series"].as_array().unwrap().iter().map(|s| {
        assert_eq!(s["app"], "zookeeper");
        s["level"].as_str().unwrap()
    }).collect();
    assert_eq!(levels, zookeeper_levels.iter().map(String::as_str).collect());
    assert_eq!(got["zookeeper_errors"], zookeeper_levels.iter().filter(|l| *l == "error" || *l == "fatal").count());

    // What Grafana's Loki data source sends: its health check ...
    let health = loki_json(&node, "/loki/api/v1/query", &[("direction", "backward"), ("query", "vector(1)+vector(1)"), ("time", "4000000000")], &[]);
    assert_eq!(health["data"]["resultType"], "vector");
    assert_eq!(health["data"]["result"].as_array().unwrap().len(), 1);
    assert_eq!(health["data"]["result"][0]["value"][1], "2");
    // ... Explore's logs query (times in ns, the step in ms) ...
    let filter = "jk2_init() Found child";
    let logs = loki_json(
        &node,
        "/loki/api/v1/query_range",
        &[("direction", "backward"), ("limit", "1000"), ("query", &format!("{{app=\"apache\"}} |= \"{filter}\"")), ("start", &start), ("end", &end), ("step", "2000ms")],
        &[("X-Query-Tags", "Source=grafana")],
    );
    assert_eq!(logs["data"]["resultType"], "streams");
    let shown: Vec<(i64, &str)> = logs["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().iter().map(|v| (v[0].as_str().unwrap().parse::<i64>().unwrap(), v[1].as_str().unwrap())))
        .collect();
    assert_eq!(shown.len(), apache.iter().filter(|l| l.contains(filter)).count());
    assert!(shown.iter().all(|(t, l)| apache[((t - t0) / sec) as usize] == *l), "each line at its own time");
    // ... and the log-volume query beside it.
    let volume = loki_json(
        &node,
        "/loki/api/v1/query_range",
        &[
            ("direction", "backward"),
            ("query", "sum by (level, detected_level) (count_over_time({app=\"apache\"} | drop __error__[1m]))"),
            ("start", &start),
            // The last step's window (end - 1m, end] must reach the last line.
            ("end", &(t0 + 2040 * sec).to_string()),
            ("step", "60000ms"),
        ],
        &[("X-Query-Tags", "Source=logvolhist")],
    );
    assert_eq!(matrix_sums(&volume, "level"), tally(&apache_levels), "the volume adds up to the CSV's counts");

    // Sliding windows: at T0+600s a 5m window holds lines 301..=600 (one series per label
    // set, level included, so summed).
    let at = (t0 + 600 * sec).to_string();
    let instant = |q: &str| loki_json(&node, "/loki/api/v1/query", &[("query", q), ("time", &at)], &[]);
    let value = |v: &serde_json::Value| -> f64 { v["data"]["result"][0]["value"][1].as_str().unwrap().parse().unwrap() };
    assert_eq!(value(&instant("sum(count_over_time({app=\"apache\"}[5m]))")), 300.0);
    assert_eq!(value(&instant("sum by (app) (rate({app=\"apache\"}[5m]))")), 1.0);
    assert_eq!(value(&instant("max(max_over_time({app=\"apache\"} | unwrap seq [5m]))")), 600.0);
    assert_eq!(value(&instant("sum(bytes_over_time({app=\"apache\"}[5m]))")), apache[301..=600].iter().map(|l| l.len()).sum::<usize>() as f64);
    let p50 = value(&instant("quantile_over_time(0.5, {app=\"apache\"} | unwrap seq [5m]) by (app)"));
    assert!((p50 - 450.0).abs() <= 450.0 * 0.01 + 1.0, "p50 of 301..=600 is about 450, got {p50}");
    let top = instant("topk(1, sum by (app) (count_over_time({env=\"test\"}[1h])))");
    assert_eq!(top["data"]["result"].as_array().unwrap().len(), 1);
    let ranged = loki_json(
        &node,
        "/loki/api/v1/query_range",
        &[("query", "sum(count_over_time({app=\"apache\"}[5m]))"), ("start", &(t0 + 300 * sec).to_string()), ("end", &(t0 + 900 * sec).to_string()), ("step", "60")],
        &[],
    );
    let points = ranged["data"]["result"][0]["values"].as_array().unwrap();
    assert_eq!(points.len(), 11);
    assert!(points.iter().all(|p| p[1] == "300"), "{points:?}");

    // The label routes as Grafana's label browser calls them.
    let values = loki_json(&node, "/loki/api/v1/label/level/values", &[("start", &start), ("end", &end), ("query", "{app=\"apache\"}")], &[]);
    assert_eq!(values["data"], serde_json::json!(["error", "info"]));
    let stats = loki_json(&node, "/loki/api/v1/index/stats", &[("query", "{app=\"apache\"}"), ("start", &start), ("end", &end)], &[]);
    assert_eq!(stats["entries"], 2000);
    assert_eq!(stats["bytes"], apache.iter().map(|l| l.len()).sum::<usize>());

    // Outside the subset: a 400 naming the part, never a wrong answer.
    let (status, body) = loki_get(&node, "/loki/api/v1/query_range", &[("query", "{app=\"apache\"} | line_format \"{{.x}}\"")], &[]);
    assert_eq!(status, 400);
    assert!(body.contains("unsupported LogQL: `| line_format`"), "{body}");
    let (status, body) = loki_get(&node, "/loki/api/v1/query_range", &[("query", "{app=\"apache\"")], &[]);
    assert_eq!(status, 400);
    assert!(body.starts_with("parse error at line 1, col 14"), "{body}");
    let (status, body) = loki_get(&node, "/loki/api/v1/query", &[("query", "{app=\"apache\"}")], &[]);
    assert_eq!((status, body.contains("range query")), (400, true));
}

#[test]
fn live_tail_over_a_websocket_sends_the_stored_lines_then_each_new_one() {
    use std::io::BufRead;
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let push = |from: i64, n: i64, word: &str| {
        let values: Vec<serde_json::Value> = (from..from + n).map(|i| serde_json::json!([(now + i).to_string(), format!("{word} line {i}")])).collect();
        let body = serde_json::json!({"streams": [{"stream": {"app": "tail", "env": "test"}, "values": values}]}).to_string();
        let r = ureq::post(&format!("{}/loki/api/v1/push", node.http)).set("Content-Type", "application/json").set("X-Gossamer-Wait", "queryable").send_bytes(body.as_bytes()).unwrap();
        assert_eq!(r.status(), 204);
    };
    // Five lines stored before the tail starts, and one it must filter out.
    push(0, 5, "before");
    push(100, 1, "skip");

    let python = std::env::var("GOSSAMER_TEST_PYTHON").unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyvenv/bin/python").to_string_lossy().into_owned()
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/loki_tail.py");
    let mut child = Command::new(python)
        .arg(script)
        .args(["--url", &node.http, "--query", "{app=\"tail\"} != \"skip\"", "--start", &(now - 1_000_000_000).to_string(), "--want", "12"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "ready", "the stored lines came first");
    push(200, 7, "after");
    let got: serde_json::Value = serde_json::from_str(&out.next().expect("the tail's lines").unwrap()).unwrap();
    assert!(child.wait().unwrap().success());
    let mut lines: Vec<&str> = got["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let want: Vec<String> = (0..5).map(|i| format!("before line {i}")).collect();
    assert_eq!(lines[..5], want, "the stored lines first, oldest first");
    // New lines come as each shard applies them: in time order within a frame only.
    lines[5..].sort_by_key(|l| l.rsplit(' ').next().unwrap().parse::<u32>().unwrap());
    let want: Vec<String> = (200..207).map(|i| format!("after line {i}")).collect();
    assert_eq!(lines[5..], want, "then every new line once, the filtered one left out");
    for l in got["labels"].as_array().unwrap() {
        assert_eq!((l["app"].as_str(), l["stream"].as_str()), (Some("tail"), Some("tail")));
    }
    // A metric query is refused before the upgrade.
    let refused = ureq::get(&format!("{}/loki/api/v1/tail", node.http)).query("query", "count_over_time({app=\"tail\"}[1m])").call();
    assert!(matches!(refused, Err(ureq::Error::Status(400, _))));
}

#[test]
fn the_label_that_names_the_stream_is_the_nodes_to_choose() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--loki-stream-label", "team,host"]);
    let body = serde_json::json!({"streams": [
        {"stream": {"host": "web-1", "team": "pay", "job": "ignored"}, "values": [["1780000000000000000", "from team pay"]]},
        {"stream": {"host": "web-2", "job": "ignored"}, "values": [["1780000000000000001", "from host web-2"]]},
        {"stream": {"job": "ignored"}, "values": [["1780000000000000002", "from neither"]]},
    ]})
    .to_string();
    let r = ureq::post(&format!("{}/loki/api/v1/push", node.http)).set("Content-Type", "application/json").set("X-Gossamer-Wait", "queryable").send_bytes(body.as_bytes()).unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(node.count("stream:pay \"team pay\""), 1);
    assert_eq!(node.count("stream:web-2 \"host web-2\""), 1);
    assert_eq!(node.count("stream:loki neither"), 1);
    assert_eq!(node.count("stream:ignored"), 0);
}
