//! Every payload kind round-trips; every kind of malformed input lands in the
//! dead-letter stream with its reason, and nothing else is affected; redelivered
//! events are stored once; bad requests get a 4xx with a JSON error.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use async_nats::HeaderMap;
use futures::StreamExt;
use gossamer_integration::{enc, http_post, js_publish, Nats, Node};
use serde_json::{json, Value};

fn id(n: u128) -> String {
    uuid::Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0000 | n).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payload_kind_round_trips_and_bad_ones_are_dead_lettered() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let client = nats.client().await;
    let js = jetstream::new(client.clone());

    // Good payloads, one of each kind.
    js_publish(&js, "logs.kinds.object", json!({"id": id(1), "ts": "2026-11-25T10:00:00.5Z", "level": "WARNING", "msg": "object event", "labels": {"host": "a"}, "fields": {"n": 1}}).to_string().into_bytes()).await;
    js_publish(&js, "logs.kinds.array", json!([{"id": id(2), "message": "array one"}, {"id": id(3), "message": "array two", "level": 3}]).to_string().into_bytes()).await;
    js_publish(&js, "logs.kinds.ndjson", format!("{}\n{}\n", json!({"id": id(4), "message": "nd one"}), json!({"id": id(5), "message": "nd two", "ts": 1_780_000_000_123i64})).into_bytes()).await;
    let mp_map = rmp_serde::to_vec_named(&json!({"id": id(6), "message": "msgpack map", "level": "crit", "labels": {"k": "v"}})).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/msgpack");
    js.publish_with_headers("logs.kinds.msgpack", headers, mp_map.into()).await.unwrap().await.unwrap();
    let mp_array = rmp_serde::to_vec_named(&json!([{"id": id(7), "message": "msgpack detected"}])).unwrap();
    js_publish(&js, "logs.kinds.msgpack", mp_array).await;
    js_publish(&js, "logs.kinds.text", b"[INFO] a plain text line\n".to_vec()).await;
    js_publish(&js, "logs.levels.apache", b"[Sun Dec 04 04:47:45 2005] [error] mod_jk child workerEnv in error state 6\n".to_vec()).await;

    // Bad payloads, each followed by a good event on the same subject.
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("logs.bad.json", b"{\"message\": ".to_vec(), "invalid JSON"),
        ("logs.bad.ndjson", b"{\"message\":\"ok\"}\n{oops}\n".to_vec(), "invalid JSON"),
        ("logs.bad.utf8", vec![0xff, 0xfe, 0x41, 0x00], "neither UTF-8 text, JSON nor MessagePack"),
        ("logs.bad.msgpack", vec![0x82, 0xa1], "invalid MessagePack"),
        ("logs.bad.id", br#"{"id":"not-a-uuid","message":"x"}"#.to_vec(), "is not a UUID"),
        ("logs.bad.ts", br#"{"ts":"yesterday","message":"x"}"#.to_vec(), "neither RFC 3339"),
        ("logs.bad.array", br#"[{"message":"fine"}, 42]"#.to_vec(), "event 1: expected an object"),
        ("logs.bad.labels", br#"{"labels":{"a":[1]}}"#.to_vec(), "label `a` must be a string"),
        ("logs.bad.empty", b"   ".to_vec(), "empty payload"),
        (
            "logs.bad.toomanylabels",
            json!({"labels": (0..65).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}).to_string().into_bytes(),
            "labels: 65 is over the limit of 64 (limits.max_labels)",
        ),
        ("logs.bad!stream", b"hello".to_vec(), "invalid stream name"),
    ];
    for (i, (subject, body, _)) in bad.iter().enumerate() {
        js_publish(&js, subject, body.clone()).await;
        js_publish(&js, "logs.after.bad", json!({"id": id(100 + i as u128), "message": "still fine"}).to_string().into_bytes()).await;
    }

    let good = 9 + bad.len() as u64;
    let node = tokio::task::spawn_blocking(move || {
        node.wait_count("", good, Duration::from_secs(60));
        node
    })
    .await
    .unwrap();

    // Round trips.
    let get = |n: u128| {
        let (status, e) = node.get(&format!("/api/v1/events/{}", id(n)));
        assert_eq!(status, 200, "event {n}: {e}");
        e
    };
    let e = get(1);
    assert_eq!((e["stream"].as_str(), e["level"].as_str(), e["message"].as_str()), (Some("kinds.object"), Some("warn"), Some("object event")));
    assert_eq!(e["ts"], "2026-11-25T10:00:00.500000000Z");
    assert_eq!((e["labels"]["host"].as_str(), e["fields"]["n"].as_i64()), (Some("a"), Some(1)));
    assert_eq!((get(2)["message"].as_str(), get(3)["level"].as_str()), (Some("array one"), Some("error")));
    // An event that came without a level keeps none: null, found by `-level:*`.
    assert_eq!(get(2)["level"], Value::Null);
    assert_eq!(node.count("stream:kinds.array -level:*"), 1);
    assert_eq!(node.count("stream:kinds.array level:*"), 1);
    assert_eq!((get(4)["message"].as_str(), get(5)["ts"].as_str()), (Some("nd one"), Some("2026-05-28T20:26:40.123000000Z")));
    let m = get(6);
    assert_eq!((m["message"].as_str(), m["level"].as_str(), m["labels"]["k"].as_str()), (Some("msgpack map"), Some("fatal"), Some("v")));
    assert_eq!(get(7)["message"], "msgpack detected");
    assert_eq!(node.count("stream:kinds.text \"plain text line\""), 1);
    let (_, page) = node.get(&format!("/api/v1/search?q={}", enc("stream:kinds.text")));
    let text = &page["events"][0];
    assert_eq!(text["message"], "[INFO] a plain text line");
    // A text line's level is the one it says it has.
    node.wait_count("stream:levels.apache", 1, Duration::from_secs(30));
    assert_eq!(node.count("stream:levels.apache level:error"), 1);
    assert_eq!(uuid::Uuid::parse_str(text["id"].as_str().unwrap()).unwrap().get_version_num(), 7, "assigned ids are UUIDv7");
    assert_eq!(node.count("stream:bad.*"), 0, "a bad payload stores nothing, not even its good events");

    // Dead letters: one per bad payload, with the reason and the subject, body intact.
    let dl = js.get_stream("DEADLETTER").await.unwrap();
    let consumer: jetstream::consumer::PullConsumer =
        dl.create_consumer(pull::Config { durable_name: None, ..Default::default() }).await.unwrap();
    let mut msgs = consumer.fetch().max_messages(bad.len() + 5).expires(Duration::from_secs(2)).messages().await.unwrap();
    let mut letters = Vec::new();
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        let h = m.headers.clone().unwrap();
        letters.push((
            h.get("Gossamer-Subject").unwrap().as_str().to_string(),
            h.get("Gossamer-Error").unwrap().as_str().to_string(),
            m.payload.to_vec(),
        ));
        m.ack().await.unwrap();
    }
    assert_eq!(letters.len(), bad.len(), "{letters:?}");
    for (subject, body, reason) in &bad {
        let found = letters.iter().find(|(s, _, _)| s == subject).unwrap_or_else(|| panic!("no dead letter for {subject}"));
        assert!(found.1.contains(reason), "{subject}: reason {:?} should mention {reason:?}", found.1);
        assert_eq!(&found.2, body, "{subject}: the dead letter keeps the payload");
    }
    let (_, cluster) = node.get("/api/v1/cluster");
    assert_eq!(cluster["ingest"]["dead_letters"], bad.len() as u64);
    let metrics = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    assert!(metrics.contains(&format!("gossamer_ingest_dead_letters_total{{node=\"node-1\"}} {}", bad.len())), "{metrics}");
    let stored: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("gossamer_shard_events{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(stored, good, "the shards' event gauges add up to what is stored");

    // Redelivery: the same events published again are stored once.
    js_publish(&js, "logs.kinds.array", json!([{"id": id(2), "message": "array one"}, {"id": id(3), "message": "array two", "level": 3}]).to_string().into_bytes()).await;
    js_publish(&js, "logs.kinds.object", json!({"id": id(1), "message": "object event"}).to_string().into_bytes()).await;
    js_publish(&js, "logs.kinds.marker", json!({"id": id(999), "message": "marker"}).to_string().into_bytes()).await;
    let node = tokio::task::spawn_blocking(move || {
        node.wait_count("stream:kinds.marker", 1, Duration::from_secs(30));
        node
    })
    .await
    .unwrap();
    // Per shard, batches apply in order, but the marker may sit on another shard: wait
    // for every shard to have applied everything the bus holds.
    let node = tokio::task::spawn_blocking(move || {
        gossamer_integration::wait_for("all shards caught up", Duration::from_secs(30), || {
            let (_, c) = node.get("/api/v1/cluster");
            c["shards"].as_array().unwrap().iter().all(|s| s["pending"] == 0).then_some(())
        });
        node
    })
    .await
    .unwrap();
    assert_eq!(node.count("stream:kinds.*"), 9);
    assert_eq!(node.count(&format!("id:{}", id(2))), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_given_a_default_level_gives_it_to_events_without_one() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--default-level", "Notice"]);
    let js = jetstream::new(nats.client().await);
    js_publish(&js, "logs.defaults", json!([{"id": id(1), "message": "no level"}, {"id": id(2), "message": "warned", "level": "warn"}]).to_string().into_bytes()).await;
    js_publish(&js, "logs.defaults", b"a plain line that says nothing of its level\n".to_vec()).await;
    let node = tokio::task::spawn_blocking(move || {
        node.wait_count("stream:defaults", 3, Duration::from_secs(60));
        node
    })
    .await
    .unwrap();
    assert_eq!(node.get(&format!("/api/v1/events/{}", id(1))).1["level"], "info", "the default, normalised");
    assert_eq!(node.get(&format!("/api/v1/events/{}", id(2))).1["level"], "warn", "a level given is kept");
    assert_eq!(node.count("stream:defaults level:info"), 2);
    assert_eq!(node.count("stream:defaults -level:*"), 0);
}

#[test]
fn bad_requests_get_a_4xx_with_a_json_error() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("/api/v1/search?q={}", enc("level:error latency_ms:>abc")), 400, "column 24: expected a number"),
        (format!("/api/v1/count?q={}", enc("(a OR b")), 400, "expected ')'"),
        ("/api/v1/search?limit=lots".into(), 400, "invalid query parameters"),
        ("/api/v1/search?limit=0".into(), 400, "`limit` must be between"),
        ("/api/v1/search?cursor=garbage".into(), 400, "invalid cursor"),
        ("/api/v1/search?from=soon".into(), 400, "invalid `from`"),
        ("/api/v1/search?bogus=1".into(), 400, "unknown field"),
        ("/api/v1/events/not-a-uuid".into(), 400, "is not a UUID"),
        (format!("/api/v1/events/{}", uuid::Uuid::nil()), 404, "no event with id"),
        ("/api/v1/nothing-here".into(), 404, "no such route"),
    ];
    for (path, status, text) in cases {
        let (got, body) = node.get(&path);
        assert_eq!(got, status, "{path}: {body}");
        let err = body["error"].as_str().unwrap_or_else(|| panic!("{path}: no JSON error in {body}"));
        assert!(err.contains(text), "{path}: {err:?} should contain {text:?}");
    }
    let post = |body: &[u8]| http_post(&format!("{}/api/v1/query", node.http), "application/json", body);
    let (status, body) = post(b"{not json");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("invalid JSON body"));
    let (status, body) = post(br#"{"q":"x","frm":"-1h"}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(br#"{"q":"","count":true}"#);
    assert_eq!((status, body["count"].as_u64()), (200, Some(0)));
    let (status, body) = post(br#"{"q":"x","limit":5}"#);
    assert_eq!((status, body["events"].clone()), (200, Value::Array(vec![])));
    let (status, body) = node.get("/api/v1/health");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

/// What Fluent Bit, Vector and Telegraf publish to NATS (sent by nats-py in exactly
/// their shapes) is stored as the events it means: time, message, labels, fields.
#[test]
fn shippers_payloads_on_nats_are_stored_as_the_events_they_mean() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let python = std::env::var("GOSSAMER_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyvenv/bin/python");
        venv.to_string_lossy().into_owned()
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/shipper_payloads.py");
    let out = std::process::Command::new(python).arg(script).args(["--url", &nats.url()]).output().expect("python with nats-py (test.sh makes it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["sent"], 13);
    node.wait_count("", 13, Duration::from_secs(30));

    // Fluent Bit: six records of two flushes, timed by their pairs, tagged.
    assert_eq!(node.count("stream:fluent.app tag:logs.fluent.app"), 6);
    let (_, page) = node.get(&format!("/api/v1/search?order=asc&limit=1&q={}", enc("stream:fluent.app")));
    let first = &page["events"][0];
    assert_eq!((first["message"].as_str(), first["ts"].as_str()), (Some("GET /item/0 200"), Some("2026-05-28T20:26:40.000000000Z")));
    // Vector: host and source_type are labels; the line's own level is not read from JSON.
    assert_eq!(node.count("stream:vector.app host:web-1 labels.source_type:file failed"), 4);
    assert_eq!(node.count("stream:vector.app fields.file:\"/var/log/app.log\""), 4);
    // Telegraf: the metric name is the message and a label, tags are labels, fields fields.
    assert_eq!(node.count("stream:telegraf labels.metric:cpu labels.host:db-1 usage_idle:>90"), 2);
    assert_eq!(node.count("stream:telegraf mem used_percent:40"), 1);
    let dead = node.get("/api/v1/cluster").1["ingest"]["dead_letters"].as_u64().unwrap_or(0);
    assert_eq!(dead, 0, "nothing was dead-lettered");
}
