//! The request/reply ingest path: answered once stored, retried safely, bad payloads
//! refused and dead-lettered; and the buffered path's full LOGS stream refuses
//! publishers without losing what it accepted.

use std::time::Duration;

use gossamer_integration::{Nats, Node};
use serde_json::{json, Value};

fn events(tag: &str, n: usize) -> (Vec<uuid::Uuid>, String) {
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
    let body = ids.iter().map(|id| format!("{}\n", json!({"id": id.to_string(), "message": format!("{tag} event")}))).collect();
    (ids, body)
}

async fn request(client: &async_nats::Client, subject: &str, body: Vec<u8>) -> Value {
    let reply = client.request(subject.to_string(), body.into()).await.expect("an answer");
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_once_stored_and_retries_store_nothing_twice() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let client = nats.client().await;

    // Answered only once stored: the count is right at once, no waiting.
    let (_, body) = events("answered", 40);
    let reply = request(&client, "gossamer.default.ingest.rr.app", body.into_bytes()).await;
    assert_eq!(reply["accepted"], 40, "{reply}");
    // Where the events sit in the shard log: one position per shard they went to.
    assert!(reply["positions"].as_object().is_some_and(|p| !p.is_empty() && p.values().all(|s| s.as_u64() > Some(0))), "{reply}");
    let node = tokio::task::spawn_blocking(move || {
        // Stored in the shard log is not yet applied to sled: the count converges.
        node.wait_count("stream:rr.app answered", 40, Duration::from_secs(30));
        node
    })
    .await
    .unwrap();

    // A producer whose reply is lost retries the same batch: stored once.
    let (_, body) = events("retried", 25);
    let lost_inbox = client.new_inbox();
    client
        .publish_with_reply("gossamer.default.ingest.rr.retry", lost_inbox, body.clone().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let reply = request(&client, "gossamer.default.ingest.rr.retry", body.into_bytes()).await;
    assert_eq!(reply["accepted"], 25, "{reply}");
    let node = tokio::task::spawn_blocking(move || {
        node.wait_count("stream:rr.retry", 25, Duration::from_secs(30));
        gossamer_integration::wait_for("all shards caught up", Duration::from_secs(30), || {
            let (_, c) = node.get("/api/v1/cluster");
            c["shards"].as_array().unwrap().iter().all(|s| s["pending"] == 0).then_some(())
        });
        assert_eq!(node.count("stream:rr.retry"), 25, "the retried batch is stored once");
        node
    })
    .await
    .unwrap();

    // Every payload kind works on this path too; a bad payload is refused whole and
    // dead-lettered, a batch with one bad event included.
    let reply = request(&client, "gossamer.default.ingest.rr.text", b"a plain line".to_vec()).await;
    assert_eq!(reply["accepted"], 1, "{reply}");
    let mp = rmp_serde::to_vec_named(&json!([{"message": "mp one"}, {"message": "mp two"}])).unwrap();
    assert_eq!(request(&client, "gossamer.default.ingest.rr.mp", mp).await["accepted"], 2);
    let reply = request(&client, "gossamer.default.ingest.rr.bad", b"{\"message\":".to_vec()).await;
    assert_eq!(reply["dead_lettered"], 1);
    assert!(reply["error"].as_str().unwrap().starts_with("invalid JSON"), "{reply}");
    let reply = request(&client, "gossamer.default.ingest.rr.bad", br#"[{"message":"good"},{"id":"nope"}]"#.to_vec()).await;
    assert!(reply["error"].as_str().unwrap().contains("event 1"), "{reply}");
    let reply = request(&client, "gossamer.default.ingest.bad!name", b"x".to_vec()).await;
    assert!(reply["error"].as_str().unwrap().contains("invalid stream name"), "{reply}");

    tokio::task::spawn_blocking(move || {
        node.wait_count("stream:rr.text OR stream:rr.mp", 3, Duration::from_secs(30));
        assert_eq!(node.count("stream:rr.bad"), 0);
        let (_, c) = node.get("/api/v1/cluster");
        assert_eq!(c["ingest"]["dead_letters"], 3);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_logs_stream_refuses_publishers_and_loses_nothing_it_accepted() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    // No ingest role: nothing drains LOGS, capped at 64 KiB.
    let node = Node::start(&nats, data.path(), &["--roles", "shard", "--logs-max-bytes", "65536"]);
    let js = async_nats::jetstream::new(nats.client().await);
    let mut accepted = 0u64;
    let mut refusal = None;
    for i in 0..1000 {
        let (_, body) = events(&format!("full{i}"), 10);
        match js.publish("logs.full.app", body.into()).await.unwrap().await {
            Ok(_) => accepted += 10,
            Err(e) => {
                refusal = Some(e.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("the capped stream refused a publish");
    assert!(accepted > 0);
    assert!(refusal.to_lowercase().contains("maximum bytes") || refusal.to_lowercase().contains("resource"), "{refusal}");

    // A node with ingest drains it: every accepted event, once.
    tokio::task::spawn_blocking(move || {
        drop(node);
        let node = Node::start(&nats, data.path(), &[]);
        node.wait_count("stream:full.app", accepted, Duration::from_secs(60));
        assert_eq!(node.count(""), accepted);
    })
    .await
    .unwrap();
}

/// A counter of the node's `/metrics`, summed over its labels.
fn counter(node: &Node, name: &str) -> u64 {
    let text = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_blocks_are_kept_as_they_came_and_a_retry_of_them_is_stored_once() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    // The harness's eight shards: a request of 2,000 events seals blocks of about 250.
    let node = Node::start(&nats, data.path(), &[]);
    let client = nats.client().await;
    let (ids, body) = events("sealed", 2000);
    let reply = request(&client, "gossamer.default.ingest.rr.sealed", body.clone().into_bytes()).await;
    assert_eq!(reply["accepted"], 2000, "{reply}");

    // The producer retries in two halves, so the bus sees new batches (its duplicate
    // window only drops a batch repeated as it was) and the shards get blocks whose ids
    // they hold.
    let lines: Vec<&str> = body.lines().collect();
    for half in lines.chunks(1000) {
        let part = half.iter().map(|l| format!("{l}\n")).collect::<String>();
        let reply = request(&client, "gossamer.default.ingest.rr.sealed", part.into_bytes()).await;
        assert_eq!(reply["accepted"], 1000, "{reply}");
    }
    tokio::task::spawn_blocking(move || {
        // Every shard applies the first request's blocks as they came, and opens the
        // retried ones (a shard's `pending` says nothing of batches not pulled yet, so
        // wait for the counters themselves).
        let (kept, opened) = gossamer_integration::wait_for("the retried blocks applied", Duration::from_secs(30), || {
            let kept = counter(&node, "gossamer_shard_sealed_blocks_kept_total");
            let opened = counter(&node, "gossamer_shard_sealed_blocks_opened_total");
            (opened >= 8).then_some((kept, opened))
        });
        assert!(kept >= 8, "the first request's blocks are written as they came ({kept})");
        assert!(opened >= 8, "the retried blocks are opened ({opened})");
        let mut stored = node.all_ids("stream:rr.sealed");
        stored.sort();
        let mut want = ids;
        want.sort();
        assert_eq!(stored, want, "every event once");
    })
    .await
    .unwrap();
}
