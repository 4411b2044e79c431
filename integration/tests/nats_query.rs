//! Queries over NATS: a request on `gossamer.<cluster>.api.query` with the body of
//! `POST /api/v1/query` gets the same answer as the REST API.

use std::time::Duration;

use gossamer_integration::{http_post, Nats, Node};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_query_answers_like_the_rest_api() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let client = nats.client().await;
    let body: String = (0..30)
        .map(|i| format!("{}\n", json!({"message": format!("nats query {i}"), "level": if i % 3 == 0 { "error" } else { "info" }, "fields": {"n": i}})))
        .collect();
    let reply = client.request("gossamer.default.ingest.nq", body.into()).await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&reply.payload).unwrap()["accepted"], 30);
    let node = tokio::task::spawn_blocking(move || {
        node.wait_count("stream:nq", 30, Duration::from_secs(30));
        node
    })
    .await
    .unwrap();

    let ask = |body: Value| {
        let client = client.clone();
        async move {
            let reply = client.request("gossamer.default.api.query", body.to_string().into()).await.unwrap();
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    assert_eq!(ask(json!({"q": "stream:nq level:error", "count": true})).await, json!({"count": 10, "partial": false, "missing_shards": []}));
    let search = json!({"q": "stream:nq", "limit": 5, "order": "asc"});
    let over_nats = ask(search.clone()).await;
    let url = format!("{}/api/v1/query", node.http);
    let over_rest = tokio::task::spawn_blocking(move || http_post(&url, "application/json", search.to_string().as_bytes()))
        .await
        .unwrap();
    assert_eq!(over_rest.0, 200);
    assert_eq!(over_nats, over_rest.1);
    assert_eq!(over_nats["events"].as_array().unwrap().len(), 5);
    let groups = ask(json!({"q": "stream:nq", "fn": "sum", "field": "n", "by": "level"})).await;
    let sums: Vec<(String, f64)> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"]["level"].as_str().unwrap().to_string(), g["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(sums, vec![("error".to_string(), 135.0), ("info".to_string(), 300.0)]);

    let bad = ask(json!({"q": "level:error n:>x"})).await;
    assert_eq!(bad["status"], 400);
    assert!(bad["error"].as_str().unwrap().contains("column"), "{bad}");
    let reply = client.request("gossamer.default.api.query", "{not json".into()).await.unwrap();
    let bad: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(bad["status"], 400);
    drop(node);
}
