//! Every limit, set low in a config file: ingest refuses and dead-letters what goes
//! over one, naming it, and stores the rest; the API answers 400 or 413 naming it,
//! and 414 with a JSON error for a query string the HTTP layer cannot take.

use std::time::Duration;

use gossamer_integration::{enc, http_post, Nats, Node};
use serde_json::{json, Value};

#[test]
fn every_limit_is_configurable_and_named_when_crossed() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("limits.json");
    let cfg = json!({
        "limits": {
            "max_payload_bytes": 4000, "max_batch_events": 5, "max_message_bytes": 100, "max_labels": 2,
            "max_label_key_bytes": 8, "max_label_value_bytes": 8, "max_field_depth": 2, "max_stream_bytes": 20
        },
        "query_limits": {"max_query_bytes": 40, "max_query_terms": 3, "max_page": 10, "max_groups": 3, "max_body_bytes": 2000}
    });
    std::fs::write(&config, cfg.to_string()).unwrap();
    let node = Node::start(&nats, &data.path().join("node"), &["--config", config.to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(nats.client());
    let send = |stream: &str, body: String| -> Value {
        let reply = rt.block_on(client.request(format!("gossamer.default.ingest.{stream}"), body.into())).unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    };

    let deep = json!({"message": "deep", "fields": {"a": {"b": {"c": 1}}}});
    let cases: Vec<(&str, String, &str)> = vec![
        ("lim", "x".repeat(4001), "limits.max_payload_bytes"),
        ("lim", (0..6).map(|i| format!("{}\n", json!({"message": format!("e{i}")}))).collect(), "limits.max_batch_events"),
        ("lim", json!({"message": "m".repeat(101)}).to_string(), "limits.max_message_bytes"),
        ("lim", json!({"message": "l", "labels": {"a": "1", "b": "2", "c": "3"}}).to_string(), "limits.max_labels"),
        ("lim", json!({"message": "k", "labels": {"longlabel": "1"}}).to_string(), "limits.max_label_key_bytes"),
        ("lim", json!({"message": "v", "labels": {"a": "123456789"}}).to_string(), "limits.max_label_value_bytes"),
        ("lim", deep.to_string(), "limits.max_field_depth"),
        ("a.stream.name.of.many.bytes", json!({"message": "s"}).to_string(), "limits.max_stream_bytes"),
    ];
    for (stream, body, limit) in &cases {
        let reply = send(stream, body.clone());
        let error = reply["error"].as_str().unwrap_or_else(|| panic!("{limit}: accepted: {reply}"));
        assert!(error.contains(limit), "{limit}: {error}");
        assert_eq!(reply["dead_lettered"], 1, "{reply}");
    }
    // The same events within the limits are stored; nothing else was lost.
    let good: String = (0..5).map(|i| format!("{}\n", json!({"message": format!("fine {i}"), "labels": {"a": format!("v{i}"), "b": "2"}}))).collect();
    assert_eq!(send("lim", good)["accepted"], 5);
    node.wait_count("stream:lim", 5, Duration::from_secs(30));
    let dead = rt.block_on(async {
        let js = async_nats::jetstream::new(client.clone());
        js.get_stream("DEADLETTER").await.unwrap().info().await.unwrap().state.messages
    });
    assert_eq!(dead, cases.len() as u64, "each refused payload is in the dead-letter stream");

    // The API's limits.
    let get = |path: &str| gossamer_integration::http_get(&format!("{}{path}", node.http));
    for (path, limit) in [
        (format!("/api/v1/count?q={}", enc(&"a".repeat(41))), "query_limits.max_query_bytes"),
        (format!("/api/v1/count?q={}", enc("a b c d")), "query_limits.max_query_terms"),
        ("/api/v1/search?q=&limit=11".to_string(), "query_limits.max_page"),
        ("/api/v1/aggregate?q=&fn=count&by=a".to_string(), "query_limits.max_groups"),
    ] {
        let (status, body) = get(&path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(limit), "{path}: {body}");
    }
    assert_eq!(get("/api/v1/search?q=&limit=10").0, 200, "at the limit is fine");
    let big = json!({"q": "x", "pad": "p".repeat(2100)}).to_string();
    let (status, body) = http_post(&format!("{}/api/v1/query", node.http), "application/json", big.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("query_limits.max_body_bytes"), "{body}");

    // What the HTTP layer refuses before any handler runs has the same JSON form: a
    // 120 KB query string is a 414 saying what to do instead, and the node goes on.
    let (status, body) = get(&format!("/api/v1/search?q={}", "a".repeat(120_000)));
    assert_eq!(status, 414, "{body}");
    assert!(body["error"].as_str().unwrap().contains("POST /api/v1/query"), "{body}");
    let (status, body) = get(&format!("/api/v1/search?q={}", "a".repeat(70_000)));
    assert_eq!(status, 414, "a URI between 64 and 128 KiB too: {body}");
    assert_eq!(get("/api/v1/count?q=").0, 200, "the node answers after the refusals");
}

/// JetStream sets every stream's byte cap aside when the stream is created: on a
/// nats-server with less storage than the default caps, the node stops with an error
/// naming the settings, and with smaller caps it starts and the streams carry them;
/// streams that exist keep their caps.
#[test]
fn a_bus_without_room_for_the_stream_caps_is_named_with_the_settings_that_fit_it() {
    let nats = Nats::start_with_config("jetstream { max_file_store: 100MB }");
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(gossamer_integration::gossamer_binary())
        .args(["node", "--nats", &nats.url(), "--http", "127.0.0.1:0", "--shards", "8", "--data"])
        .arg(data.path().join("refused"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = gossamer_integration::wait_for("the node to stop", Duration::from_secs(60), || child.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "a node whose streams cannot be created must not run: {err}");
    for named in ["LOGS", "8192 MiB (logs_max_bytes)", "max_file_store", "--logs-max-bytes", "--notify-max-bytes"] {
        assert!(err.contains(named), "the error names {named:?}: {err}");
    }

    let caps = [("LOGS", 32 << 20), ("DEADLETTER", 8 << 20), ("NOTIFY", 32 << 20)];
    let node = Node::start(
        &nats,
        &data.path().join("fits"),
        &["--logs-max-bytes", "33554432", "--deadletter-max-bytes", "8388608", "--notify-max-bytes", "33554432"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(nats.client());
    let js = rt.block_on(async { async_nats::jetstream::new(client.clone()) });
    for (name, cap) in caps {
        let info = rt.block_on(async { js.get_stream(name).await.unwrap().info().await.unwrap().config.clone() });
        assert_eq!(info.max_bytes, cap, "{name} carries the cap it was given");
    }
    let reply = rt.block_on(client.request("gossamer.default.ingest.fits", json!({"message": "stored"}).to_string().into()));
    let reply: Value = serde_json::from_slice(&reply.unwrap().payload).unwrap();
    assert_eq!(reply["accepted"], 1, "{reply}");
    gossamer_integration::wait_for("the event to be stored", Duration::from_secs(30), || (node.count("stream:fits") == 1).then_some(()));

    // A node that asks for other caps finds the streams made: they keep theirs, and its
    // log says so.
    let other = Node::start(&nats, &data.path().join("other"), &["--node-id", "other", "--logs-max-bytes", "16777216"]);
    let log = other.log();
    assert!(log.contains("stream-cap-kept") && log.contains("logs_max_bytes"), "{log}");
    let info = rt.block_on(async { js.get_stream("LOGS").await.unwrap().info().await.unwrap().config.clone() });
    assert_eq!(info.max_bytes, 32 << 20, "LOGS keeps its cap");
}
