//! Read-your-writes on a three-node cluster: each door that answers can be asked to
//! answer only once what it stored is queryable on every replica, and then a count
//! through any node, asked right away, sees all of it. The doors: `gossamer publish
//! --wait`, the `Gossamer-Wait` header on a NATS ingest request, `_bulk?refresh=wait_for`
//! and a Loki push with `X-Gossamer-Wait`.

use std::process::Command;
use std::time::Duration;

use gossamer_integration::{gossamer_binary, http_post, wait_for, Nats, Node};

fn start_cluster(nats: &Nats, dirs: &[tempfile::TempDir]) -> Vec<Node> {
    let names = ["n1", "n2", "n3"];
    let nodes: Vec<Node> = names
        .iter()
        .zip(dirs)
        .map(|(id, d)| Node::start(nats, d.path(), &["--node-id", id, "--gossip-probe-ms", "200", "--gossip-suspect-ms", "1000"]))
        .collect();
    for n in &nodes {
        n.wait_members(&names, Duration::from_secs(30));
    }
    wait_for("every replica placed and caught up", Duration::from_secs(60), || nodes.iter().all(|n| n.caught_up()).then_some(()));
    nodes
}

/// The count through every node, asked once each, with no waiting.
fn counts(nodes: &[Node], q: &str) -> Vec<u64> {
    nodes.iter().map(|n| n.count(q)).collect()
}

#[test]
fn every_answering_door_can_wait_until_its_events_are_queryable_everywhere() {
    let nats = Nats::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(&nats, &dirs);
    let apache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/loghub/Apache/Apache_2k.log");

    // gossamer publish --wait, three times over, as a new user did.
    for run in 0..3 {
        let out = Command::new(gossamer_binary())
            .args(["publish", "--nats", &nats.url(), "--stream", &format!("ryw.cli{run}"), "--wait", "20s"])
            .arg(&apache)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(said.contains("queryable on every replica after"), "{said}");
        assert_eq!(counts(&nodes, &format!("stream:ryw.cli{run}")), [2000, 2000, 2000]);
    }
    assert_eq!(counts(&nodes, "stream:ryw.cli*"), [6000, 6000, 6000]);

    // A NATS ingest request with the header.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply: serde_json::Value = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Gossamer-Wait", "queryable");
        let body: String = (0..300).map(|i| format!("{{\"message\":\"request line {i}\"}}\n")).collect();
        let req = async_nats::Request::new().headers(headers).payload(body.into()).timeout(Some(Duration::from_secs(30)));
        let msg = client.send_request("gossamer.default.ingest.ryw.nats", req).await.unwrap();
        serde_json::from_slice(&msg.payload).unwrap()
    });
    assert_eq!(reply["accepted"], 300, "{reply}");
    assert_eq!(reply["queryable"]["queryable"], true, "{reply}");
    assert_eq!(counts(&nodes, "stream:ryw.nats"), [300, 300, 300]);

    // Elasticsearch's bulk with refresh=wait_for, to the second node.
    let bulk: String = (0..500).map(|i| format!("{{\"index\":{{}}}}\n{{\"message\":\"bulk line {i}\"}}\n")).collect();
    let (status, answer) = http_post(&format!("{}/ryw.es/_bulk?refresh=wait_for", nodes[1].http), "application/x-ndjson", bulk.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["errors"].as_bool(), answer["forced_refresh"].as_bool()), (Some(false), Some(true)), "{answer}");
    assert_eq!(counts(&nodes, "stream:ryw.es"), [500, 500, 500]);

    // A Loki push with the header, to the third node.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let values: Vec<serde_json::Value> = (0..400).map(|i| serde_json::json!([(now + i).to_string(), format!("loki line {i}")])).collect();
    let push = serde_json::json!({"streams": [{"stream": {"app": "ryw.loki"}, "values": values}]}).to_string();
    let answer = ureq::post(&format!("{}/loki/api/v1/push", nodes[2].http))
        .set("Content-Type", "application/json")
        .set("X-Gossamer-Wait", "20s")
        .send_bytes(push.as_bytes())
        .unwrap();
    assert_eq!(answer.status(), 204);
    assert_eq!(counts(&nodes, "stream:ryw.loki"), [400, 400, 400]);

    // A wait that cannot be met in time says so: zero time is too short for a new push.
    let values: Vec<serde_json::Value> = (0..50).map(|i| serde_json::json!([(now + 1000 + i).to_string(), format!("late line {i}")])).collect();
    let push = serde_json::json!({"streams": [{"stream": {"app": "ryw.late"}, "values": values}]}).to_string();
    let answer = ureq::post(&format!("{}/loki/api/v1/push?wait=0ms", nodes[0].http)).set("Content-Type", "application/json").send_bytes(push.as_bytes()).unwrap();
    assert_eq!(answer.status(), 202, "stored, but the wait ran out");
    assert!(answer.into_string().unwrap().contains("not yet queryable on every replica"));
    let (status, _) = http_post(&format!("{}/ryw.es/_bulk?refresh=soon", nodes[1].http), "application/x-ndjson", bulk.as_bytes());
    assert_eq!(status, 400, "a refresh value that means nothing is refused");
}
