//! `docker-compose.yml` describes what it says: a three-server NATS cluster with
//! JetStream and three Gossamer nodes, every command accepted by the binary it runs.
//! (No containers run here: the commands are checked against the real binaries.)

use std::collections::BTreeMap;
use std::process::Command;

use gossamer_integration::{gossamer_binary, nats_server_binary};
use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("reading docker-compose.yml");
    YamlLoader::load_from_str(&text).expect("docker-compose.yml is YAML").remove(0)
}

fn command(service: &Yaml) -> Vec<String> {
    service["command"].as_vec().expect("every service has a command list").iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

#[test]
fn the_compose_file_runs_three_clustered_nats_servers_and_three_nodes_the_binaries_accept() {
    let doc = compose();
    let services = doc["services"].as_hash().expect("services");
    let mut nats = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap().to_string();
        if svc["image"].as_str().is_some_and(|i| i.starts_with("nats")) {
            nats.insert(name, svc.clone());
        } else {
            assert_eq!(svc["build"].as_str(), Some("."), "{name} builds the gossamer image");
            nodes.insert(name, svc.clone());
        }
    }
    assert_eq!(nats.len(), 3, "three NATS servers");
    assert_eq!(nodes.len(), 3, "three Gossamer nodes");

    // NATS: every flag is one nats-server knows; one cluster name; each server routes
    // to the two others; JetStream on with storage in the volume.
    let help = Command::new(nats_server_binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string() + &String::from_utf8_lossy(&help.stderr);
    let mut cluster_names = Vec::new();
    for (name, svc) in &nats {
        let args = command(svc);
        for a in args.iter().filter(|a| a.starts_with('-')) {
            assert!(help.contains(&format!("{a} ")) || help.contains(&format!("{a},")), "{name}: nats-server has no flag {a}");
        }
        assert!(args.iter().any(|a| a == "-js"), "{name} runs JetStream");
        assert_eq!(flag(&args, "-sd"), Some("/data"));
        assert!(svc["volumes"].as_vec().unwrap().iter().any(|v| v.as_str().unwrap().ends_with(":/data")), "{name} keeps /data");
        assert_eq!(flag(&args, "--server_name"), Some(name.as_str()));
        cluster_names.push(flag(&args, "--cluster_name").unwrap().to_string());
        let routes: Vec<&str> = flag(&args, "--routes").unwrap().split(',').collect();
        let mut peers: Vec<&str> =
            routes.iter().map(|r| r.trim_start_matches("nats://").split(':').next().unwrap()).collect();
        peers.sort();
        let others: Vec<&str> = nats.keys().map(String::as_str).filter(|n| *n != name).collect();
        assert_eq!(peers, others, "{name} routes to the other servers");
    }
    cluster_names.dedup();
    assert_eq!(cluster_names.len(), 1, "one NATS cluster");

    // Gossamer: the binary accepts each command as it is (checked with --print-config),
    // every node talks to all three servers, keeps streams on three of them, and has
    // its own name and port.
    let mut ids = Vec::new();
    let mut ports = Vec::new();
    for (name, svc) in &nodes {
        let args = command(svc);
        assert_eq!(args[0], "node", "{name} runs a node");
        let out = Command::new(gossamer_binary())
            .args(&args)
            .arg("--print-config")
            .env_remove("GOSSAMER_NATS")
            .env_remove("GOSSAMER_DATA")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: gossamer refuses its command: {}", String::from_utf8_lossy(&out.stderr));
        let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let servers: Vec<&str> = cfg["nats"].as_str().unwrap().split(',').map(|u| u.trim_start_matches("nats://")).collect();
        let mut hosts: Vec<&str> = servers.iter().map(|s| s.split(':').next().unwrap()).collect();
        hosts.sort();
        assert_eq!(hosts, nats.keys().map(String::as_str).collect::<Vec<_>>(), "{name} knows every NATS server");
        assert_eq!(cfg["stream_replicas"], 3, "{name}: streams are kept on all three servers");
        assert_eq!(cfg["replicas"], 2, "{name}: two replicas of each shard");
        assert_eq!(cfg["data"], "/data");
        ids.push(cfg["node_id"].as_str().unwrap().to_string());
        let depends: Vec<&str> = svc["depends_on"].as_vec().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
        for n in nats.keys() {
            assert!(depends.contains(&n.as_str()), "{name} waits for {n}");
        }
        let port = svc["ports"].as_vec().unwrap()[0].as_str().unwrap().split(':').next().unwrap().to_string();
        assert_eq!(cfg["http_advertise"], format!("http://localhost:{port}"), "{name} advertises the port it is published on");
        ports.push(port);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each node has its own id");
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "each node's API is on its own host port");
}
