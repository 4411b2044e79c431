//! Kill -9 the node mid-ingest and start it again: every event JetStream acknowledged
//! is queryable exactly once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gossamer_integration::{wait_for, Nats, Node};
use serde_json::json;

const MESSAGES: usize = 300;
const PER_MESSAGE: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_ingest_loses_nothing_and_duplicates_nothing() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::start(&nats, data.path(), &[]);
    let js = async_nats::jetstream::new(nats.client().await);

    // A producer publishing with acks; it records every id the bus acknowledged.
    let acked_events = Arc::new(AtomicU64::new(0));
    let producer = {
        let acked_events = acked_events.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for m in 0..MESSAGES {
                let ids: Vec<uuid::Uuid> = (0..PER_MESSAGE).map(|_| uuid::Uuid::now_v7()).collect();
                // Half the messages carry ids; in the other half ingest assigns them, and
                // must assign the same ones when the message is redelivered.
                let with_ids = m % 2 == 0;
                let body: String = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        let mut e = json!({"message": format!("restart {m} {i}")});
                        if with_ids {
                            e["id"] = json!(id.to_string());
                        }
                        format!("{e}\n")
                    })
                    .collect();
                js.publish(format!("logs.restart.s{}", m % 4), body.into()).await.unwrap().await.unwrap();
                if with_ids {
                    acked.extend(ids);
                }
                acked_events.fetch_add(PER_MESSAGE as u64, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            acked
        })
    };

    // Kill the node twice while events flow: once early, once later.
    for threshold in [2_000u64, 12_000] {
        node = tokio::task::spawn_blocking(move || {
            wait_for("events to be stored", Duration::from_secs(120), || (node.count("") >= threshold).then_some(()));
            node.restart();
            node
        })
        .await
        .unwrap();
    }
    let acked: Vec<uuid::Uuid> = producer.await.unwrap();
    let total = (MESSAGES * PER_MESSAGE) as u64;
    assert_eq!(acked_events.load(Ordering::SeqCst), total);

    let node = tokio::task::spawn_blocking(move || {
        node.wait_count("", total, Duration::from_secs(120));
        node
    })
    .await
    .unwrap();
    let by_stream = node.count("stream:restart.*");
    if by_stream != total {
        // Say enough to find out why: what each stream holds, the index's state, the
        // number of distinct ids a full search returns.
        let per: Vec<u64> = (0..4).map(|s| node.count(&format!("stream:restart.s{s}"))).collect();
        let (_, index) = node.get("/api/v1/index");
        let ids = node.all_ids("stream:restart.*");
        let unique: HashSet<_> = ids.iter().collect();
        panic!(
            "stream:restart.* counts {by_stream}, not {total}; per stream {per:?}; search {} ids, {} distinct; index {index}",
            ids.len(),
            unique.len()
        );
    }

    // Every acked id exactly once.
    let node = tokio::task::spawn_blocking(move || {
        let seen = node.all_ids("");
        (node, seen)
    })
    .await
    .unwrap();
    let (_node, seen) = node;
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len() as u64, total);
    assert_eq!(unique.len(), seen.len(), "some event is stored twice");
    let missing: Vec<_> = acked.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "{} acked ids are missing, e.g. {:?}", missing.len(), missing.first());
}
