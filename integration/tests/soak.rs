//! A short soak, bounded in time: `gossamer bench soak` publishes at a fixed rate with a
//! query load and reconciles every acked event at the end.

use std::process::Command;

use gossamer_integration::{gossamer_binary, nats_server_binary};

#[test]
fn a_short_soak_stores_every_acked_event() {
    let out_dir = tempfile::tempdir().unwrap();
    let report = out_dir.path().join("soak.json");
    let out = Command::new(gossamer_binary())
        .args(["bench", "soak", "--duration", "5s", "--rate", "2000", "--shards", "8", "--sample-every", "1", "--dataset"])
        .arg(gossamer_integration::loghub::dir())
        .arg("--json")
        .arg(&report)
        .env("GOSSAMER_NATS_SERVER", nats_server_binary())
        .env("GOSSAMER_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["lost"], 0, "{r}");
    let acked = r["acked"].as_u64().unwrap();
    assert!(acked >= 5_000, "the soak published at its rate: {r}");
    assert!(r["stored"].as_u64().unwrap() >= acked && r["stored"].as_u64().unwrap() <= r["attempted"].as_u64().unwrap());
    assert!(r["samples"].as_array().unwrap().len() >= 3, "{r}");
    assert!(r["queries"].as_u64().unwrap() > 0);
    assert!(r["rss_peak_mib"].as_f64().unwrap() > 0.0);
}
