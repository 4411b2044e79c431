//! nats-server going away and coming back: a node started first waits for it and says
//! so; a restart during ingest loses no acked event and stores none twice.

use std::collections::HashSet;
use std::time::Duration;

use gossamer_integration::{unused_port, wait_for, Nats, Node};
use serde_json::json;

#[test]
fn a_node_started_before_nats_server_waits_for_it() {
    let port = unused_port();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let starting = std::thread::spawn(move || Node::start_with_url(&format!("nats://127.0.0.1:{port}"), &dir, &[]));
    let log = data.path().join("node.log");
    wait_for("the node to say it waits for NATS", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).ok().filter(|l| l.contains("waiting-for-nats")).map(|_| ())
    });
    let _nats = Nats::start_on_port(port);
    let node = starting.join().unwrap();
    let (status, body) = node.get("/api/v1/health");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_during_ingest_loses_nothing() {
    let mut nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let client = async_nats::ConnectOptions::new().retry_on_initial_connect().connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);

    // Publishes messages of 50 events, retrying each until the bus acks it, until 100
    // more have been acked after the restart.
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let after = restarted.clone();
    let producer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut attempted = Vec::new();
        let mut since_restart = 0;
        for m in 0.. {
            if after.load(std::sync::atomic::Ordering::SeqCst) {
                since_restart += 1;
                if since_restart > 100 {
                    break;
                }
            }
            let ids: Vec<uuid::Uuid> = (0..50).map(|_| uuid::Uuid::now_v7()).collect();
            let body: String = ids.iter().map(|id| format!("{}\n", json!({"id": id.to_string(), "message": format!("restart {m}")}))).collect();
            attempted.extend(ids.iter().copied());
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let sent = async {
                    js.publish("logs.nrestart.app", body.clone().into()).await.map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(Duration::from_secs(5), sent).await {
                    Ok(Ok(_)) => break,
                    _ if std::time::Instant::now() < deadline => tokio::task::yield_now().await,
                    other => panic!("message {m} never acked: {other:?}"),
                }
            }
            acked.extend(ids);
        }
        (acked, attempted)
    });

    // Restart nats-server once some events are stored.
    let node = tokio::task::spawn_blocking(move || {
        wait_for("some events to be stored", Duration::from_secs(60), || (node.count("") >= 1000).then_some(()));
        nats.restart();
        restarted.store(true, std::sync::atomic::Ordering::SeqCst);
        (node, nats)
    })
    .await
    .unwrap();
    let (acked, attempted) = producer.await.unwrap();
    let (node, _nats) = node;
    let acked_set: HashSet<uuid::Uuid> = acked.iter().copied().collect();
    let attempted_set: HashSet<uuid::Uuid> = attempted.iter().copied().collect();

    tokio::task::spawn_blocking(move || {
        wait_for("every acked event to be stored", Duration::from_secs(120), || {
            (node.count("stream:nrestart.app") >= acked_set.len() as u64).then_some(())
        });
        let seen = node.all_ids("stream:nrestart.app");
        let stored: HashSet<uuid::Uuid> = seen.iter().copied().collect();
        assert_eq!(stored.len(), seen.len(), "an event is stored twice");
        assert!(acked_set.is_subset(&stored), "{} acked events are missing", acked_set.difference(&stored).count());
        assert!(stored.is_subset(&attempted_set), "an event nobody published is stored");
        // And the node says it is well again.
        let (_, cluster) = node.get("/api/v1/cluster");
        assert!(cluster["shards"].as_array().unwrap().iter().all(|s| s["pending"] == 0), "{cluster}");
    })
    .await
    .unwrap();
}
