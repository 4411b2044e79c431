//! Several real node processes as one cluster: gossip membership, shard placement by
//! rendezvous hashing, replicas, failover after kill -9, a node joining, and a checker
//! run of random kills and restarts against a three-server NATS cluster.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gossamer_integration::{enc, start_cluster, wait_for, Nats, NatsCluster, Node, PROBE_MS};
use gossamer_schemas::placement::ShardMap;
use serde_json::json;

fn start_node(url: &str, dir: &std::path::Path, id: &str, extra: &[&str]) -> Node {
    Node::start_member(url, dir, id, extra)
}

/// Counts through a node over and over on a thread of its own, keeping every answer
/// that is not whole (not 200, partial, or not `total` when one is given).
struct Querier {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Querier {
    fn start(http: &str, total: u64) -> Self {
        Self::start_counting(http, Some(total))
    }

    /// Counts while events are still coming: every answer must be whole, whatever its
    /// count.
    fn start_counting(http: &str, total: Option<u64>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, http) = (stop.clone(), http.to_string());
        let thread = std::thread::spawn(move || {
            let (mut asked, mut bad) = (0, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = gossamer_integration::http_get(&format!("{http}/api/v1/count?q="));
                asked += 1;
                if status != 200 || body["partial"] != false || total.is_some_and(|t| body["count"].as_u64() != Some(t)) {
                    bad.push(format!("{status} {body}"));
                }
            }
            (asked, bad)
        });
        Self { stop, thread }
    }

    /// Stops, and asserts every answer was whole.
    fn finish(self, during: &str) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (asked, bad) = self.thread.join().unwrap();
        assert!(asked > 0, "no query ran during {during}");
        assert!(bad.is_empty(), "{} of {asked} answers during {during} were not whole, e.g. {}", bad.len(), bad[0]);
    }
}

/// Publishes `messages` NDJSON messages of `per` events with ids to `logs.<stream>`,
/// each with the bus's ack (retried with the same ids until it comes), and returns the
/// ids acked.
async fn publish_acked(js: &async_nats::jetstream::Context, stream: &str, messages: usize, per: usize) -> Vec<uuid::Uuid> {
    let mut acked = Vec::new();
    for m in 0..messages {
        let ids: Vec<uuid::Uuid> = (0..per).map(|_| uuid::Uuid::now_v7()).collect();
        publish_until_acked(js, stream, m, &ids).await;
        acked.extend(ids);
    }
    acked
}

async fn publish_until_acked(js: &async_nats::jetstream::Context, stream: &str, m: usize, ids: &[uuid::Uuid]) {
    let body: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{}\n", json!({"id": id.to_string(), "message": format!("cluster {stream} {m} {i}")})))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sent = async { js.publish(format!("logs.{stream}"), body.clone().into()).await?.await.map_err(anyhow::Error::from) };
        match tokio::time::timeout(Duration::from_secs(10), sent).await {
            Ok(Ok(_)) => return,
            // Not acked: it may or may not be stored; the same ids again are stored once.
            Ok(Err(_)) | Err(_) => {
                assert!(Instant::now() < deadline, "message {m} of {stream} was never acked");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Every id matching `q` through `node`, asserting no answer was partial.
fn complete_ids(node: &Node, q: &str) -> Vec<uuid::Uuid> {
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = node.get(&format!("/api/v1/search?q={}&limit=5000&cursor={}", enc(q), enc(&cursor)));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["partial"], false, "a search was partial: {}", body["missing_shards"]);
        for e in body["events"].as_array().unwrap() {
            seen.push(uuid::Uuid::parse_str(e["id"].as_str().unwrap()).unwrap());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return seen,
        }
    }
}

/// Asserts that `node` returns each of `want` exactly once for `q`, and nothing else.
fn assert_exactly_once(node: &Node, q: &str, want: &[uuid::Uuid]) {
    let seen = complete_ids(node, q);
    let unique: HashSet<_> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "{}: some event is returned twice", node.http);
    let want: HashSet<_> = want.iter().copied().collect();
    let missing = want.difference(&unique).count();
    let extra = unique.difference(&want).count();
    assert!(missing == 0 && extra == 0, "{}: {missing} acked events missing, {extra} unexpected", node.http);
}

/// A count that is complete (not partial) and equal to `want`, as `node` answers now.
fn complete_count(node: &Node, q: &str) -> Option<u64> {
    let (status, body) = node.get(&format!("/api/v1/count?q={}", enc(q)));
    (status == 200 && body["partial"] == false).then(|| body["count"].as_u64().unwrap())
}

/// Waits until `node` counts `want` events for `q`, completely; on timeout, says what
/// it answered last and what every node holds.
fn wait_complete(node: &Node, all: &[&Node], q: &str, want: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = node.get(&format!("/api/v1/count?q={}", enc(q)));
        if status == 200 && body["partial"] == false && body["count"].as_u64() == Some(want) {
            return;
        }
        if Instant::now() > deadline {
            let states: Vec<String> = all
                .iter()
                .map(|n| {
                    let c = n.cluster();
                    let shards: Vec<String> = c["shards"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| {
                            format!(
                                "{}:{:?} here={} caught_up={} applied={} pending={} events={}",
                                s["shard"], s["replicas"].to_string(), s["here"], s["caught_up"], s["applied_seq"], s["pending"], s["events"]
                            )
                        })
                        .collect();
                    format!("{} members {}\n  {}", n.http, c["members"], shards.join("\n  "))
                })
                .collect();
            panic!("{} counts {q:?} as {status} {body}, want {want}; nodes:\n{}", node.http, states.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// For every shard, the replicas holding it store the same number of events.
fn wait_replicas_agree(nodes: &[&Node], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut per_shard: std::collections::BTreeMap<u64, Vec<(String, u64, u64)>> = Default::default();
        for n in nodes {
            let c = n.cluster();
            let me = c["members"].as_array().unwrap().iter().find(|m| m["me"] == true).unwrap()["node"].as_str().unwrap().to_string();
            for s in c["shards"].as_array().unwrap() {
                if s["here"] == true {
                    per_shard.entry(s["shard"].as_u64().unwrap()).or_default().push((
                        me.clone(),
                        s["applied_seq"].as_u64().unwrap(),
                        s["events"].as_u64().unwrap(),
                    ));
                }
            }
        }
        if per_shard.values().all(|v| v.len() >= 2 && v.windows(2).all(|w| w[0].2 == w[1].2)) {
            return;
        }
        assert!(Instant::now() < deadline, "replicas disagree after {timeout:?} (node, applied, events): {per_shard:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_one_of_three_nodes_while_publishing() {
    let nats = Nats::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = nats.url();
    let mut nodes = start_cluster(&url, &dirs, &["n1", "n2", "n3"], &[]);
    let js = async_nats::jetstream::new(nats.client().await);

    // Stored before the kill: 10,000 events.
    let before = publish_acked(&js, "before", 20, 500).await;
    let n1 = &nodes[0];
    wait_for("the first events to be stored", Duration::from_secs(60), || {
        (complete_count(n1, "stream:before") == Some(before.len() as u64)).then_some(())
    });

    // Publishing goes on while n2 is killed.
    let producer = {
        let js = js.clone();
        tokio::spawn(async move { publish_acked(&js, "during", 100, 100).await })
    };
    let stored_before = before.len() as u64;
    let mut nodes = tokio::task::spawn_blocking(move || {
        wait_for("publishing to be under way", Duration::from_secs(60), || {
            (nodes[0].count("stream:during") >= 2_000).then_some(())
        });
        nodes[1].kill9();
        let killed = Instant::now();
        // Every event stored before the kill is answered, completely, by both others.
        for n in [&nodes[0], &nodes[2]] {
            wait_for("complete answers after the kill", Duration::from_secs(30), || {
                (complete_count(n, "stream:before") == Some(stored_before)).then_some(())
            });
        }
        let took = killed.elapsed();
        println!("complete answers {took:?} after the kill");
        assert!(took < Duration::from_secs(5), "queries were complete again only {took:?} after the kill");
        // Gossip declares n2 dead, and the shards it held get new replicas.
        nodes[0].wait_members(&["n1", "n3"], Duration::from_secs(20));
        wait_for("n2 to be declared dead", Duration::from_secs(20), || {
            (nodes[0].member("n2").unwrap()["state"] == "dead").then_some(())
        });
        wait_for("n2's shards to be placed anew", Duration::from_secs(20), || {
            nodes[0].shard_map().iter().all(|r| r.len() == 2 && !r.contains(&"n2".to_string())).then_some(())
        });
        // /metrics says so too.
        let metrics = ureq::get(&format!("{}/metrics", nodes[0].http)).call().unwrap().into_string().unwrap();
        for line in [
            "gossamer_cluster_member_state{node=\"n1\",member=\"n2\",state=\"dead\"} 1",
            "gossamer_cluster_member_state{node=\"n1\",member=\"n3\",state=\"alive\"} 1",
            "gossamer_cluster_members_live{node=\"n1\"} 2",
            "gossamer_cluster_shards_unplaced{node=\"n1\"} 0",
        ] {
            assert!(metrics.lines().any(|l| l == line), "no {line:?} in /metrics:\n{metrics}");
        }
        nodes
    })
    .await
    .unwrap();
    let during = producer.await.unwrap();

    // Every acked event exactly once, through each live node.
    nodes = tokio::task::spawn_blocking(move || {
        for n in [&nodes[0], &nodes[2]] {
            wait_for("every acked event to be stored", Duration::from_secs(120), || {
                (complete_count(n, "stream:during") == Some(during.len() as u64)).then_some(())
            });
            assert_exactly_once(n, "stream:before", &before);
            assert_exactly_once(n, "stream:during", &during);
        }
        // n2 comes back, catches up on what it missed, and answers the same.
        nodes[1].restart();
        nodes[0].wait_members(&["n1", "n2", "n3"], Duration::from_secs(20));
        wait_for("n2 to catch up", Duration::from_secs(60), || nodes[1].caught_up().then_some(()));
        let all: Vec<&Node> = nodes.iter().collect();
        wait_replicas_agree(&all, Duration::from_secs(60));
        assert_exactly_once(&nodes[1], "stream:before", &before);
        assert_exactly_once(&nodes[1], "stream:during", &during);
        nodes
    })
    .await
    .unwrap();
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_takes_the_shards_rendezvous_hashing_gives_it_and_answers_stay_complete() {
    let nats = Nats::start();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = nats.url();
    let three = start_cluster(&url, &dirs[..3], &["n1", "n2", "n3"], &[]);
    let js = async_nats::jetstream::new(nats.client().await);
    let ids = publish_acked(&js, "join", 20, 500).await;
    let total = ids.len() as u64;
    let (three, ids) = tokio::task::spawn_blocking(move || {
        wait_for("the events to be stored", Duration::from_secs(60), || {
            (complete_count(&three[0], "") == Some(total)).then_some(())
        });
        (three, ids)
    })
    .await
    .unwrap();

    // The map every node shows is the one rendezvous hashing gives for three members
    // (the harness runs 8 shards; two replicas by default).
    let before = ShardMap::compute(8, 2, &["n1", "n2", "n3"]);
    let after = ShardMap::compute(8, 2, &["n1", "n2", "n3", "n4"]);
    for n in &three {
        assert_eq!(n.shard_map(), before.replicas, "{} before the join", n.http);
    }

    // Queries run all through the join; every answer must be complete.
    let querier = Querier::start(&three[0].http, total);
    let n4 = start_node(&url, dirs[3].path(), "n4", &[]);
    let (nodes_ok, n4) = tokio::task::spawn_blocking(move || {
        for n in &three {
            n.wait_members(&["n1", "n2", "n3", "n4"], Duration::from_secs(20));
        }
        wait_for("n4 to catch up", Duration::from_secs(60), || n4.caught_up().then_some(()));
        for n in three.iter().chain([&n4]) {
            wait_for("the map to settle", Duration::from_secs(20), || (n.shard_map() == after.replicas).then_some(()));
        }
        // The shards that moved are the ones rendezvous hashing predicts, and each of
        // them now has n4 among its replicas.
        let moved = before.moved(&after);
        assert!(!moved.is_empty(), "a fourth member takes some shards");
        for s in &moved {
            assert!(after.replicas[*s as usize].contains(&"n4".to_string()));
        }
        let held: Vec<u64> = n4.cluster()["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["here"] == true)
            .map(|s| s["shard"].as_u64().unwrap())
            .collect();
        assert_eq!(held, moved.iter().map(|s| *s as u64).collect::<Vec<_>>(), "n4 holds exactly the shards that moved");
        let all: Vec<&Node> = three.iter().chain([&n4]).collect();
        wait_replicas_agree(&all, Duration::from_secs(60));
        (three, n4)
    })
    .await
    .unwrap();
    querier.finish("the join");
    // Through the new node too.
    let n4 = tokio::task::spawn_blocking(move || {
        assert_exactly_once(&n4, "", &ids);
        n4
    })
    .await
    .unwrap();
    drop((nodes_ok, n4));
}

#[test]
fn a_silent_node_is_suspected_then_declared_dead_and_one_that_answers_again_refutes() {
    let nats = Nats::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = nats.url();
    // A long suspicion, so the refutation can be watched.
    let suspect_ms = 3000u64;
    let s = suspect_ms.to_string();
    let extra = ["--gossip-suspect-ms", s.as_str()];
    let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().zip(&dirs).map(|(id, d)| start_node(&url, d.path(), id, &extra)).collect();
    let (watcher, silent) = (&nodes[0], &nodes[2]);
    watcher.wait_members(&["n1", "n2", "n3"], Duration::from_secs(20));
    let first = watcher.member("n3").unwrap();
    let probe = Duration::from_millis(PROBE_MS.parse().unwrap());

    // Stopped (SIGSTOP), n3 answers no probe: suspected within a few probe periods...
    silent.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    wait_for("n3 to be suspected", probe * 10, || (watcher.member("n3").unwrap()["state"] == "suspect").then_some(()));
    // ...and, answering again before the suspicion runs out, it refutes it with a
    // higher incarnation and stays the same member.
    silent.signal(libc::SIGCONT);
    assert!(stopped.elapsed() < Duration::from_millis(suspect_ms), "the test was too slow to watch the refutation");
    let refuted = wait_for("n3 to refute", Duration::from_secs(10), || {
        let m = watcher.member("n3").unwrap();
        (m["state"] == "alive" && m["incarnation"].as_u64() > first["incarnation"].as_u64()).then_some(m)
    });
    assert_eq!(refuted["generation"], first["generation"], "a refutation keeps the member's identity");

    // Stopped for longer than the suspicion, it is declared dead within the timeouts.
    silent.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    wait_for("n3 to be declared dead", Duration::from_secs(30), || (watcher.member("n3").unwrap()["state"] == "dead").then_some(()));
    let took = stopped.elapsed();
    let bound = probe * 10 + Duration::from_millis(suspect_ms) * 2;
    assert!(took <= bound, "declared dead after {took:?}, over probe and suspicion timeouts ({bound:?})");
    // Its shards are placed on the two others meanwhile.
    wait_for("the shards to leave n3", Duration::from_secs(10), || {
        watcher.shard_map().iter().all(|r| !r.contains(&"n3".to_string()) && r.len() == 2).then_some(())
    });
    // Back, it learns it was declared dead and rejoins as a new generation.
    silent.signal(libc::SIGCONT);
    let back = wait_for("n3 to rejoin", Duration::from_secs(20), || {
        let m = watcher.member("n3").unwrap();
        (m["state"] == "alive").then_some(m)
    });
    assert!(back["generation"].as_u64() > first["generation"].as_u64(), "rejoined as {back}, was {first}");
    watcher.wait_members(&["n1", "n2", "n3"], Duration::from_secs(20));

    // A node stopped cleanly (SIGTERM) says goodbye: dead at once, no suspicion first.
    let mut nodes = nodes;
    let leaving = Instant::now();
    assert!(nodes[1].terminate().success());
    wait_for("n2 to be seen leaving", Duration::from_millis(suspect_ms), || {
        (nodes[0].member("n2").unwrap()["state"] == "dead").then_some(())
    });
    assert!(leaving.elapsed() < Duration::from_millis(suspect_ms), "a clean leave is seen before any suspicion could end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_shards_over_and_answers_stay_complete() {
    let nats = Nats::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = nats.url();
    let nodes = start_cluster(&url, &dirs, &["n1", "n2", "n3"], &[]);
    let js = async_nats::jetstream::new(nats.client().await);
    let ids = publish_acked(&js, "drain", 20, 500).await;
    let total = ids.len() as u64;
    tokio::task::spawn_blocking(move || {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_complete(&nodes[0], &all, "", total, Duration::from_secs(60));
        // Queries through n1 the whole time; every answer must be whole.
        let querier = Querier::start(&nodes[0].http, total);
        // Drain n3 with the CLI, waiting until it is done.
        let out = std::process::Command::new(gossamer_integration::gossamer_binary())
            .args(["admin", "drain", "--wait", "--server", &nodes[2].http])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("holds 0 shards"), "{}", String::from_utf8_lossy(&out.stdout));
        let me = nodes[2].member("n3").unwrap();
        assert_eq!((me["draining"].clone(), me["replicas"].clone()), (json!(true), json!(0)));
        let two = ShardMap::compute(8, 2, &["n1", "n2"]);
        for n in &nodes {
            wait_for("every map to leave n3 out", Duration::from_secs(20), || (n.shard_map() == two.replicas).then_some(()));
        }
        wait_replicas_agree(&nodes[..2].iter().collect::<Vec<_>>(), Duration::from_secs(60));
        // Drained, n3 still answers (through the others), exactly.
        assert_exactly_once(&nodes[2], "stream:drain", &ids);

        // And it takes its share back.
        let (status, body) = gossamer_integration::http_delete(&format!("{}/api/v1/admin/drain", nodes[2].http));
        assert_eq!(status, 202, "{body}");
        let three = ShardMap::compute(8, 2, &["n1", "n2", "n3"]);
        for n in &nodes {
            wait_for("n3 to take its shards back", Duration::from_secs(20), || (n.shard_map() == three.replicas).then_some(()));
        }
        wait_for("n3 to catch up", Duration::from_secs(60), || nodes[2].caught_up().then_some(()));
        wait_replicas_agree(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(60));
        querier.finish("the drain");
    })
    .await
    .unwrap();
}

/// With one replica, a shard that moves (a node joins, a node drains) stays served by
/// the member it leaves until the member it goes to has caught up: no answer is ever
/// partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_replica_a_join_and_a_drain_leave_no_answer_partial() {
    let nats = Nats::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = nats.url();
    let extra = ["--replicas", "1"];
    let nodes = start_cluster(&url, &dirs[..2], &["n1", "n2"], &extra);
    let js = async_nats::jetstream::new(nats.client().await);
    let ids = publish_acked(&js, "handover", 20, 500).await;
    let total = ids.len() as u64;
    tokio::task::spawn_blocking(move || {
        let mut nodes = nodes;
        let all: Vec<&Node> = nodes.iter().collect();
        wait_complete(&nodes[0], &all, "", total, Duration::from_secs(60));
        let querier = Querier::start(&nodes[0].http, total);
        let leaving = |n: &Node| n.cluster()["shards"].as_array().unwrap().iter().filter(|s| s["leaving"] == true).count();

        // n3 joins and takes the shards it wins, once it has caught up on them.
        nodes.push(start_node(&url, dirs[2].path(), "n3", &extra));
        for n in &nodes {
            n.wait_members(&["n1", "n2", "n3"], Duration::from_secs(30));
        }
        wait_for("n3 to serve its shards and the others to let them go", Duration::from_secs(60), || {
            let map = nodes[0].shard_map();
            let n3_holds = map.iter().any(|r| r == &["n3"]);
            (n3_holds && nodes[2].caught_up() && nodes.iter().all(|n| leaving(n) == 0)).then_some(())
        });

        // n2 drains: the CLI returns once every shard it held is served elsewhere.
        let out = std::process::Command::new(gossamer_integration::gossamer_binary())
            .args(["admin", "drain", "--wait", "--server", &nodes[1].http])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("holds 0 shards"), "{}", String::from_utf8_lossy(&out.stdout));
        assert!(nodes[0].shard_map().iter().all(|r| r.len() == 1 && r[0] != "n2"), "n2 is out of the map");
        querier.finish("a join and a drain with one replica");
        assert_exactly_once(&nodes[0], "stream:handover", &ids);
    })
    .await
    .unwrap();
}

/// The operator's rolling restart (README): each node of a three-node cluster with two
/// replicas stopped with SIGTERM and started again in turn, while events keep coming
/// and a querier counts through a node that stays up: no answer partial, every acked
/// event stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_ingest_and_queries_loses_doubles_and_hides_nothing() {
    let nats = Nats::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = ["n1", "n2", "n3"];
    let nodes = start_cluster(&nats.url(), &dirs, &names, &[]);
    let js = async_nats::jetstream::new(nats.client().await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (js, stop) = (js.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut m) = (Vec::new(), 0);
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let ids: Vec<uuid::Uuid> = (0..50).map(|_| uuid::Uuid::now_v7()).collect();
                publish_until_acked(&js, "rolling", m, &ids).await;
                acked.extend(ids);
                m += 1;
            }
            acked
        })
    };
    let nodes = tokio::task::spawn_blocking(move || {
        let mut nodes = nodes;
        for i in 0..nodes.len() {
            let querier = Querier::start_counting(&nodes[(i + 1) % 3].http, None);
            let status = nodes[i].terminate();
            assert!(status.success(), "{} stopped cleanly on SIGTERM: {status}", names[i]);
            nodes[i].start_again();
            for n in &nodes {
                n.wait_members(&names, Duration::from_secs(30));
            }
            // Back, caught up, and every shard handed back to it.
            wait_for(&format!("{} to hold its shards again", names[i]), Duration::from_secs(60), || {
                let settled = nodes.iter().all(|n| n.cluster()["shards"].as_array().unwrap().iter().all(|s| s["leaving"] != true));
                (settled && nodes[i].caught_up()).then_some(())
            });
            querier.finish(&format!("the restart of {}", names[i]));
        }
        nodes
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ids = producer.await.unwrap();
    tokio::task::spawn_blocking(move || {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_complete(&nodes[0], &all, "stream:rolling", ids.len() as u64, Duration::from_secs(60));
        for n in &nodes {
            assert_exactly_once(n, "stream:rolling", &ids);
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_a_live_replica_makes_answers_partial_never_short() {
    let nats = Nats::start();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = nats.url();
    // One replica per shard, and a suspicion long enough to query before n2 is dead.
    let extra = ["--replicas", "1", "--gossip-suspect-ms", "5000"];
    let nodes = start_cluster(&url, &dirs, &["n1", "n2"], &extra);
    let js = async_nats::jetstream::new(nats.client().await);
    let ids = publish_acked(&js, "partial", 10, 500).await;
    let total = ids.len() as u64;
    tokio::task::spawn_blocking(move || {
        let mut nodes = nodes;
        let all: Vec<&Node> = nodes.iter().collect();
        wait_complete(&nodes[0], &all, "", total, Duration::from_secs(60));
        let map = nodes[0].shard_map();
        let on_n2: Vec<u64> = (0..map.len() as u64).filter(|s| map[*s as usize] == ["n2"]).collect();
        assert!(!on_n2.is_empty(), "n2 holds some shards: {map:?}");
        // n1 lets go of the shards it handed to n2 once n2 has caught up on them: until
        // then its copy would still answer for them (complete, rightly not partial).
        let c = wait_for("n1 to let go of the shards it handed to n2", Duration::from_secs(30), || {
            let (_, c) = nodes[0].get("/api/v1/cluster");
            let held = c["shards"].as_array().unwrap().iter().any(|s| s["here"] == true && s["replicas"] == json!(["n2"]));
            (!held).then_some(c)
        });
        let on_n1: u64 = c["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["here"] == true && s["replicas"] == json!(["n1"]))
            .map(|s| s["events"].as_u64().unwrap())
            .sum();

        // n2 dies; until gossip says so, its shards have no live replica: every kind of
        // answer says which are missing, and counts only what the others hold.
        nodes[1].kill9();
        let (_, count) = nodes[0].get("/api/v1/count?q=");
        assert_eq!(count["partial"], true, "{count}");
        let missing: Vec<u64> = count["missing_shards"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
        assert_eq!(missing, on_n2, "{count}");
        assert_eq!(count["count"].as_u64(), Some(on_n1), "the count is what the live replicas hold");
        let (_, search) = nodes[0].get("/api/v1/search?q=&limit=10");
        assert_eq!((search["partial"].clone(), search["missing_shards"].clone()), (json!(true), json!(on_n2)));
        let (_, agg) = nodes[0].get("/api/v1/aggregate?fn=count&by=stream");
        assert_eq!((agg["partial"].clone(), agg["missing_shards"].clone()), (json!(true), json!(on_n2)));

        // Declared dead, its shards move to n1, which replays them from the log: whole
        // again.
        nodes[0].wait_members(&["n1"], Duration::from_secs(30));
        let all: Vec<&Node> = nodes[..1].iter().collect();
        wait_complete(&nodes[0], &all, "", total, Duration::from_secs(60));
        assert_exactly_once(&nodes[0], "stream:partial", &ids);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_and_restarts_on_a_nats_cluster_lose_and_duplicate_nothing() {
    let nats = NatsCluster::start(3);
    nats.wait_jetstream(3).await;
    let urls = nats.urls();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(&urls, &dirs, &["n1", "n2", "n3"], &["--stream-replicas", "3"]);
    let js = async_nats::jetstream::new(nats.client().await);

    // A producer that publishes until told to stop, each message retried until acked, at
    // a steady 2,000 events/s (so the run measures loss, not how fast a debug build
    // drains a backlog).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (js, stop) = (js.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut m = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || m < 50 {
                tick.tick().await;
                let ids: Vec<uuid::Uuid> = (0..50).map(|_| uuid::Uuid::now_v7()).collect();
                publish_until_acked(&js, "chaos", m, &ids).await;
                acked.extend(ids);
                m += 1;
            }
            acked
        })
    };

    // Twenty kills and restarts of random nodes, one nats-server restart halfway; the
    // whole run is bounded by the deadline.
    let mut nats = nats;
    let (nodes, nats) = tokio::task::spawn_blocking(move || {
        let mut nodes = nodes;
        let deadline = Instant::now() + Duration::from_secs(300);
        let seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
        println!("checker seed {seed:#x}");
        let mut rng = Xorshift(seed);
        for round in 0..20 {
            assert!(Instant::now() < deadline, "the checker run went past its time bound at round {round}");
            if round == 10 {
                nats.servers[1].restart();
            }
            let victim = (rng.next() % 3) as usize;
            nodes[victim].kill9();
            std::thread::sleep(Duration::from_millis(rng.next() % 1500));
            let t = Instant::now();
            nodes[victim].restart();
            println!("round {round}: n{} killed and back in {:?}", victim + 1, t.elapsed());
        }
        (nodes, nats)
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = producer.await.unwrap();
    let total = acked.len() as u64;
    let converging = Instant::now();
    assert!(total >= 2_500, "the producer published only {total} events");
    let nodes = tokio::task::spawn_blocking(move || {
        for n in &nodes {
            n.wait_members(&["n1", "n2", "n3"], Duration::from_secs(30));
        }
        let all: Vec<&Node> = nodes.iter().collect();
        for n in &nodes {
            wait_complete(n, &all, "stream:chaos", total, Duration::from_secs(180));
            assert_exactly_once(n, "stream:chaos", &acked);
        }
        wait_replicas_agree(&all, Duration::from_secs(120));
        let gaps: usize = nodes.iter().map(|n| n.log().matches("shard-delivery-gap").count()).sum();
        println!("{total} acked events, each stored once, {:?} after the last restart; {gaps} delivery gaps seen and replayed", converging.elapsed());
        nodes
    })
    .await
    .unwrap();
    drop((nodes, nats));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_past_the_log_or_with_a_damaged_tree_are_rebuilt_from_a_peer() {
    let nats = Nats::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = nats.url();
    // The shard log keeps batches two seconds: a replica away longer cannot replay.
    let extra = ["--shards-max-age-secs", "2"];
    let mut nodes = start_cluster(&url, &dirs, &["n1", "n2", "n3"], &extra);
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    let first = publish_acked(&js, "early", 10, 500).await;
    let early = first.len() as u64;
    nodes = tokio::task::spawn_blocking(move || {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_complete(&nodes[0], &all, "stream:early", early, Duration::from_secs(60));
        nodes[2].kill9();
        nodes
    })
    .await
    .unwrap();
    let second = publish_acked(&js, "late", 10, 500).await;
    let shards = js.get_stream("SHARDS").await.unwrap();
    let (nodes, first, second) = tokio::task::spawn_blocking(move || {
        let live: Vec<&Node> = nodes[..2].iter().collect();
        wait_complete(&nodes[0], &live, "stream:late", second.len() as u64, Duration::from_secs(60));
        (nodes, first, second)
    })
    .await
    .unwrap();
    // Wait until every batch has left the log.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut shards = shards.clone();
        if shards.info().await.unwrap().state.messages == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the shard log kept its batches past their age");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut nodes = tokio::task::spawn_blocking(move || {
        let mut nodes = nodes;
        // n3 comes back: what it missed is no longer in the log, so its replicas copy a
        // peer's, and every answer through it is whole.
        nodes[2].restart();
        nodes[0].wait_members(&["n1", "n2", "n3"], Duration::from_secs(20));
        wait_for("n3 to catch up", Duration::from_secs(60), || nodes[2].caught_up().then_some(()));
        assert!(nodes[2].log().contains("shard-rebuilt-from-peer"), "n3 did not copy a peer:\n{}", nodes[2].log());
        let all: Vec<&Node> = nodes.iter().collect();
        wait_replicas_agree(&all, Duration::from_secs(60));
        assert_exactly_once(&nodes[2], "stream:early", &first);
        assert_exactly_once(&nodes[2], "stream:late", &second);

        // n2's tree is damaged while it is down (an id list cut short): it is rebuilt
        // from a peer rather than left dead.
        nodes[1].kill9();
        let db = sled::open(nodes[1].data.join("sled")).unwrap();
        let mut damaged = 0;
        for name in db.tree_names() {
            if name.starts_with(b"shard-") {
                let tree = db.open_tree(&name).unwrap();
                let ids: Vec<sled::IVec> = tree.scan_prefix(b"k").keys().map(Result::unwrap).collect();
                if let Some(k) = ids.first() {
                    tree.insert(k, &b"cut short"[..]).unwrap();
                    damaged += 1;
                }
            }
        }
        db.flush().unwrap();
        drop(db);
        assert!(damaged > 0, "n2 held no shard to damage");
        nodes[1].restart();
        nodes[0].wait_members(&["n1", "n2", "n3"], Duration::from_secs(20));
        wait_for("n2 to catch up", Duration::from_secs(60), || nodes[1].caught_up().then_some(()));
        assert!(nodes[1].log().contains("shard-rebuilt-from-peer"), "n2 did not rebuild:\n{}", nodes[1].log());
        let all: Vec<&Node> = nodes.iter().collect();
        wait_replicas_agree(&all, Duration::from_secs(60));
        assert_exactly_once(&nodes[1], "stream:early", &first);
        assert_exactly_once(&nodes[1], "stream:late", &second);
        nodes
    })
    .await
    .unwrap();
    nodes.clear();
}

/// A small deterministic generator for the checker's choices (its seed is printed).
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A node that was the only member when it stopped places its shards as soon as it
/// starts again, without waiting for others to answer. A member that started while it
/// was down still gets its share of the map, and nothing is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_when_it_stopped_starts_at_once_and_still_shares_with_a_member_started_meanwhile() {
    let nats = Nats::start();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = nats.url();
    let n1 = start_node(&url, dirs[0].path(), "n1", &[]);
    let js = async_nats::jetstream::new(nats.client().await);
    let ids = publish_acked(&js, "alone", 10, 200).await;
    let total = ids.len() as u64;
    let mut n1 = tokio::task::spawn_blocking(move || {
        wait_complete(&n1, &[&n1], "", total, Duration::from_secs(60));
        n1
    })
    .await
    .unwrap();

    n1.kill9();
    let n2 = start_node(&url, dirs[1].path(), "n2", &[]);
    let restarted_at = n1.log().len();
    n1.restart();
    let (n1, n2) = tokio::task::spawn_blocking(move || {
        // Its first placement is its own, made before it heard of n2 (within a gossip
        // probe), then the map of both follows.
        let log = without_colours(&n1.log()[restarted_at..]);
        let first = log.lines().find(|l| l.contains("shards-placed")).unwrap_or_default().to_string();
        assert!(first.contains("members=1") && first.contains("held=8"), "n1 waited before placing: {first:?}");
        for n in [&n1, &n2] {
            n.wait_members(&["n1", "n2"], Duration::from_secs(20));
        }
        let both = ShardMap::compute(8, 2, &["n1", "n2"]);
        for n in [&n1, &n2] {
            wait_for("the map of both members", Duration::from_secs(20), || (n.shard_map() == both.replicas).then_some(()));
        }
        for n in [&n1, &n2] {
            wait_complete(n, &[&n1, &n2], "", total, Duration::from_secs(60));
        }
        assert_exactly_once(&n2, "", &ids);
        assert_exactly_once(&n1, "", &ids);
        (n1, n2)
    })
    .await
    .unwrap();
    drop((n1, n2));
}

/// A log without its terminal colour codes.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut in_code = false;
    for c in log.chars() {
        match (in_code, c) {
            (false, '\u{1b}') => in_code = true,
            (true, 'm') => in_code = false,
            (false, c) => out.push(c),
            _ => {}
        }
    }
    out
}
