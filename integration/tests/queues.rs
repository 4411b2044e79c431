//! Notification queues read by a subscriber in another language (Python, nats-py):
//! every matching loghub event once, naks redelivered, exhausted deliveries
//! dead-lettered, nothing lost or doubled across a kill -9; bad definitions refused;
//! live tail over server-sent events and the CLI, which a stalled client cannot slow.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use gossamer_integration::loghub::{self, event_json, level};
use gossamer_integration::subscriber_report as report;
use gossamer_integration::{enc, gossamer_binary, http_get, http_post, js_publish, queue_subscriber, wait_for, Nats, Node};
use serde_json::{json, Value};

/// Starts the nats-py subscriber on `consumer`.
fn subscriber(nats: &Nats, consumer: &str, args: &[&str]) -> std::process::Child {
    queue_subscriber(&nats.url(), consumer, args)
}

fn post_json(url: &str, body: Value) -> (u16, Value) {
    http_post(url, "application/json", body.to_string().as_bytes())
}

fn request(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let req = ureq::request(method, url);
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// Publishes every loghub sample through `logs.<stream>` with JetStream acks.
async fn publish_loghub(nats: &Nats, datasets: &[loghub::Dataset], fresh_ids: bool) {
    let js = async_nats::jetstream::new(nats.client().await);
    for ds in datasets {
        for chunk in ds.rows.chunks(250) {
            let body: String = chunk
                .iter()
                .map(|r| {
                    let mut e = event_json(ds, r);
                    if fresh_ids {
                        e.as_object_mut().unwrap().remove("id");
                    }
                    format!("{e}\n")
                })
                .collect();
            js_publish(&js, &format!("logs.{}", ds.stream()), body.into_bytes()).await;
        }
    }
}

#[test]
fn a_python_subscriber_gets_every_matching_loghub_event_once_and_naks_come_back() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let datasets = loghub::load();
    let want: u64 = datasets.iter().flat_map(|d| &d.rows).filter(|r| level(r.level.as_deref()).as_deref() == Some("warn")).count() as u64;
    assert!(want > 100, "the samples hold {want} warnings");

    let (status, q) = post_json(&format!("{}/api/v1/queues", node.http), json!({"name": "warnings", "filter": "level:warn", "ack_wait": "2s"}));
    assert_eq!(status, 201, "{q}");
    assert_eq!((q["subject"].as_str(), q["consumer"].as_str()), (Some("gossamer.default.notify.warnings"), Some("warnings")));
    let sub = subscriber(&nats, "warnings", &["--expect", &want.to_string(), "--nak-every", "10", "--timeout", "120"]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(publish_loghub(&nats, &datasets, false));
    let total: u64 = datasets.iter().map(|d| d.rows.len() as u64).sum();
    node.wait_count("", total, Duration::from_secs(120));

    let got = report(sub);
    let acked: BTreeMap<String, u64> = serde_json::from_value(got["acked"].clone()).unwrap();
    assert_eq!(acked.len() as u64, want, "every matching event, as counted from the CSV");
    let stored: BTreeSet<String> = node.all_ids("level:warn").iter().map(|u| u.to_string()).collect();
    assert_eq!(acked.keys().cloned().collect::<BTreeSet<_>>(), stored, "exactly the events the node stored");
    assert_eq!(got["repeats"], 0, "no event twice");
    let naked: Vec<String> = serde_json::from_value(got["naked"].clone()).unwrap();
    assert!(!naked.is_empty());
    for id in &naked {
        assert!(acked.get(id).is_some_and(|n| *n >= 2), "naked event {id} came back: {:?}", acked.get(id));
    }

    let stats = wait_for("the queue's consumer to settle", Duration::from_secs(30), || {
        let (_, q) = node.get("/api/v1/queues/warnings");
        (q["stats"]["ack_pending"] == 0 && q["stats"]["pending"] == 0).then_some(q["stats"].clone())
    });
    assert_eq!((stats["matched"].as_u64(), stats["published"].as_u64()), (Some(want), Some(want)), "{stats}");
    assert_eq!((stats["stored"].as_u64(), stats["acked"].as_u64()), (Some(want), Some(want)), "{stats}");
    assert!(stats["redelivered"].as_u64().unwrap() >= naked.len() as u64, "{stats}");
    let metrics = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    assert!(metrics.contains(&format!("gossamer_queue_published_total{{node=\"node-1\",queue=\"warnings\"}} {want}")), "{metrics}");

    // The CLI and a NATS request see the same queue.
    let out = Command::new(gossamer_binary()).args(["queue", "list", "--server", &node.http]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("warnings") && listed.contains(&format!("matched {want:>8}")), "{listed}");
    let answer = rt.block_on(async {
        let c = nats.client().await;
        c.request("gossamer.default.api.queues", json!({"op": "get", "name": "warnings"}).to_string().into()).await.unwrap()
    });
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!((answer["filter"].as_str(), answer["stats"]["published"].as_u64()), (Some("level:warn"), Some(want)), "{answer}");
}

#[test]
fn queue_definitions_are_checked_kept_changed_and_removed() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::start(&nats, data.path(), &[]);
    let url = format!("{}/api/v1/queues", node.http);
    for (body, status, want) in [
        (json!({"name": "bad", "filter": "level:error x:>y"}), 400, "column"),
        (json!({"name": "a.b", "filter": "x"}), 400, "not a valid subject token"),
        (json!({"name": "a>", "filter": "x"}), 400, "not a valid subject token"),
        (json!({"name": "q", "filter": ""}), 400, "empty"),
        (json!({"name": "q", "filter": "x", "max_deliver": 0}), 400, "max_deliver"),
        (json!({"name": "q", "filter": "x", "ack_wait": "forever"}), 400, "ack_wait"),
        (json!({"name": "q", "filter": "x", "colour": "red"}), 400, "unknown field"),
        (json!({"name": "q"}), 400, "filter"),
    ] {
        let (s, e) = post_json(&url, body.clone());
        assert_eq!(s, status, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(want), "{body}: {e}");
    }
    let (s, _) = post_json(&url, json!({"name": "errors", "filter": "level:error", "max_deliver": 3, "backoff": ["1s", "5s"]}));
    assert_eq!(s, 201);
    assert_eq!(post_json(&url, json!({"name": "errors", "filter": "x"})).0, 409, "a name is used once");
    assert_eq!(http_get(&format!("{url}/missing")).0, 404);
    assert_eq!(request("DELETE", &format!("{url}/missing"), None).0, 404);
    let (s, e) = request("PUT", &format!("{url}/errors"), Some(json!({"name": "other", "filter": "x"})));
    assert_eq!(s, 400, "{e}");

    // Changed, and kept across a restart (definitions live in NATS).
    let (s, q) = request("PUT", &format!("{url}/errors"), Some(json!({"filter": "level:error OR level:fatal", "max_deliver": 4})));
    assert_eq!((s, q["max_deliver"].as_i64()), (200, Some(4)), "{q}");
    node.restart();
    let url = format!("{}/api/v1/queues", node.http);
    let (s, q) = http_get(&format!("{url}/errors"));
    assert_eq!((s, q["filter"].as_str()), (200, Some("level:error OR level:fatal")), "{q}");
    assert_eq!(q["backoff"], json!(["1s", "5s"]));

    // A NATS request can do the same, and says what is wrong.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ask = |body: Value| -> Value {
        rt.block_on(async {
            let c = nats.client().await;
            let m = c.request("gossamer.default.api.queues", body.to_string().into()).await.unwrap();
            serde_json::from_slice(&m.payload).unwrap()
        })
    };
    let created = ask(json!({"op": "create", "queue": {"name": "by-nats", "filter": "stream:app"}}));
    assert_eq!(created["name"], "by-nats", "{created}");
    let bad = ask(json!({"op": "create", "queue": {"name": "x.y", "filter": "a"}}));
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(ask(json!({"op": "explode"}))["status"], 400);
    let list = ask(json!({"op": "list"}));
    let names: Vec<&str> = list["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["by-nats", "errors"]);

    // Removed: gone from the list, its consumer gone too.
    let (s, _) = request("DELETE", &format!("{url}/errors"), None);
    assert_eq!(s, 200);
    assert_eq!(http_get(&format!("{url}/errors")).0, 404);
    let gone = rt.block_on(async {
        let js = async_nats::jetstream::new(nats.client().await);
        js.get_stream("NOTIFY").await.unwrap().consumer_info("errors").await.is_err()
    });
    assert!(gone, "the queue's consumer is removed with it");
}

#[test]
fn deliveries_that_run_out_of_max_deliver_are_dead_lettered_with_the_reason() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let (s, q) = post_json(
        &format!("{}/api/v1/queues", node.http),
        json!({"name": "flaky", "filter": "stream:dlq", "max_deliver": 2, "ack_wait": "1s"}),
    );
    assert_eq!(s, 201, "{q}");
    // Pulls (and naks) for eight seconds: long enough for two deliveries a second apart.
    let sub = subscriber(&nats, "flaky", &["--expect", "0", "--nak-all", "--timeout", "8"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(nats.client());
    let body: String = (0..5).map(|i| format!("{}\n", json!({"message": format!("doomed {i}")}))).collect();
    let reply = rt.block_on(client.request("gossamer.default.ingest.dlq", body.into())).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&reply.payload).unwrap()["accepted"], 5);
    let got = report(sub);
    assert_eq!(got["deliveries"], 10, "each of 5 deliveries twice, never more: {got}");

    let dead = wait_for("five dead letters from the queue", Duration::from_secs(30), || {
        let msgs = rt.block_on(async {
            let js = async_nats::jetstream::new(client.clone());
            let stream = js.get_stream("DEADLETTER").await.unwrap();
            let mut out = Vec::new();
            let mut seq = 1;
            while let Ok(m) = stream.get_raw_message(seq).await {
                out.push(m);
                seq += 1;
            }
            out
        });
        let from_queue: Vec<_> = msgs
            .into_iter()
            .filter(|m| m.headers.get("Gossamer-Queue").map(|v| v.as_str()) == Some("flaky"))
            .collect();
        (from_queue.len() == 5).then_some(from_queue)
    });
    for m in &dead {
        let reason = m.headers.get("Gossamer-Error").unwrap().as_str().to_string();
        assert!(reason.contains("queue flaky") && reason.contains("max_deliver 2"), "{reason}");
        let event: Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(event["message"].as_str().unwrap().starts_with("doomed"), "{event}");
    }
    let (_, q) = node.get("/api/v1/queues/flaky");
    assert_eq!(q["stats"]["dead_lettered"], 5, "{q}");
}

#[test]
fn a_kill_9_during_delivery_loses_and_doubles_nothing() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::start(&nats, data.path(), &[]);
    let datasets = loghub::load();
    let (s, q) = post_json(&format!("{}/api/v1/queues", node.http), json!({"name": "everything", "filter": "stream:loghub.*"}));
    assert_eq!(s, 201, "{q}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Twice the samples, with fresh ids: 64,000 events to deliver.
    rt.block_on(async {
        publish_loghub(&nats, &datasets, true).await;
        publish_loghub(&nats, &datasets, true).await;
    });
    let total: u64 = 2 * datasets.iter().map(|d| d.rows.len() as u64).sum::<u64>();
    // Kill the node once delivery has started.
    wait_for("delivery to start", Duration::from_secs(60), || {
        let (_, q) = node.get("/api/v1/queues/everything");
        (q["stats"]["published"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let (_, q) = node.get("/api/v1/queues/everything");
    eprintln!("killed after {} of {total} deliveries", q["stats"]["published"]);
    node.kill9();
    node.restart();
    node.wait_count("stream:loghub.*", total, Duration::from_secs(120));

    let sub = subscriber(&nats, "everything", &["--expect", &total.to_string(), "--timeout", "120"]);
    let got = report(sub);
    let acked: BTreeMap<String, u64> = serde_json::from_value(got["acked"].clone()).unwrap();
    let (_, q) = node.get("/api/v1/queues/everything");
    if acked.len() as u64 != total {
        let log = node.log();
        let queue_lines: Vec<&str> = log.lines().filter(|l| l.contains("queue") || l.contains("WARN") || l.contains("ERROR")).collect();
        panic!(
            "{} of {total} events delivered; the queue: {q}; the subscriber saw {} deliveries; the node's log:\n{}",
            acked.len(),
            got["deliveries"],
            queue_lines.join("\n")
        );
    }
    assert_eq!(got["repeats"], 0, "none twice");
    let stored: BTreeSet<String> = node.all_ids("stream:loghub.*").iter().map(|u| u.to_string()).collect();
    assert!(acked.keys().cloned().collect::<BTreeSet<_>>() == stored, "exactly the stored events");
    let (_, q) = node.get("/api/v1/queues/everything");
    assert_eq!(q["stats"]["stored"].as_u64(), Some(total), "NOTIFY keeps each delivery once: {q}");
}

#[test]
fn live_tail_streams_matching_events_and_a_stalled_client_slows_nothing() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    assert_eq!(http_get(&format!("{}/api/v1/tail?q={}", node.http, enc("level:error x:>y"))).0, 400);

    // A client that asks for everything and never reads.
    let addr = node.http.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(stalled, "GET /api/v1/tail HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();

    // A reader over server-sent events, and the CLI.
    let resp = ureq::get(&format!("{}/api/v1/tail", node.http)).query("q", "level:error").call().unwrap();
    assert_eq!(resp.header("Content-Type"), Some("text/event-stream"));
    let mut sse = BufReader::new(resp.into_reader());
    let mut line = String::new();
    sse.read_line(&mut line).unwrap();
    assert!(line.starts_with(": tailing level:error"), "{line}");
    let mut cli = Command::new(gossamer_binary())
        .args(["tail", "--json", "--server", &node.http, "stream:tail.cli"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cli_err = BufReader::new(cli.stderr.take().unwrap());
    let mut said = String::new();
    cli_err.read_line(&mut said).unwrap();
    assert!(said.contains("tailing"), "{said}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(nats.client());
    let send = |stream: &str, body: String| {
        let reply = rt.block_on(client.request(format!("gossamer.default.ingest.{stream}"), body.into())).unwrap();
        serde_json::from_slice::<Value>(&reply.payload).unwrap()
    };
    let body: String =
        (0..40).map(|i| format!("{}\n", json!({"level": if i % 2 == 0 { "error" } else { "info" }, "message": format!("tail {i}")}))).collect();
    assert_eq!(send("tail.sse", body)["accepted"], 40);
    let mut seen = Vec::new();
    while seen.len() < 20 {
        line.clear();
        assert!(sse.read_line(&mut line).unwrap() > 0, "the tail ended");
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            seen.push(serde_json::from_str::<Value>(data).unwrap());
        }
    }
    assert!(seen.iter().all(|e| e["level"] == "error"), "only matching events");
    let messages: BTreeSet<&str> = seen.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(messages.len(), 20, "each once");

    let body: String = (0..5).map(|i| format!("{}\n", json!({"message": format!("cli {i}")}))).collect();
    assert_eq!(send("tail.cli", body)["accepted"], 5);
    let mut out = BufReader::new(cli.stdout.take().unwrap());
    for _ in 0..5 {
        line.clear();
        out.read_line(&mut line).unwrap();
        let e: Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(e["stream"], "tail.cli");
    }
    let _ = cli.kill();

    // Ingest goes on at full speed past the stalled client's buffers.
    let big: String = (0..500).map(|i| format!("{}\n", json!({"message": format!("bulk {i} {}", "x".repeat(200))}))).collect();
    for _ in 0..100 {
        assert_eq!(send("tail.bulk", big.clone())["accepted"], 500);
    }
    node.wait_count("stream:tail.bulk", 50_000, Duration::from_secs(120));
    let mut buf = [0u8; 64];
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(stalled.read(&mut buf).unwrap() > 0, "the stalled tail is still open");
}

#[test]
fn a_queue_starts_now_or_replays_since_a_time() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(nats.client());
    let send = |n: usize, tag: &str| {
        let body: String = (0..n).map(|i| format!("{}\n", json!({"message": format!("{tag} {i}")}))).collect();
        let reply = rt.block_on(client.request("gossamer.default.ingest.replay", body.into())).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&reply.payload).unwrap()["accepted"], n);
    };
    let before = gossamer_schemas::time::format_rfc3339(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64 - 1_000_000_000,
    );
    send(10, "early");
    node.wait_count("stream:replay", 10, Duration::from_secs(30));
    let url = format!("{}/api/v1/queues", node.http);
    assert_eq!(post_json(&url, json!({"name": "replayed", "filter": "stream:replay", "start": before})).0, 201);
    assert_eq!(post_json(&url, json!({"name": "fresh", "filter": "stream:replay"})).0, 201);
    send(5, "late");
    let published = |name: &str, want: u64| {
        wait_for(&format!("{name} to publish {want}"), Duration::from_secs(30), || {
            let (_, q) = node.get(&format!("/api/v1/queues/{name}"));
            (q["stats"]["stored"].as_u64() == Some(want)).then_some(())
        })
    };
    published("replayed", 15);
    published("fresh", 5);
}
