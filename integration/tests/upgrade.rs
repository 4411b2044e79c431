//! A store written by an earlier version, whose blocks hold their events in rows, is
//! rewritten in today's columnar layout by the node that opens it, while the node
//! answers as before; the node says how far it got in its log and in `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use gossamer_integration::loghub::{self, Dataset};
use gossamer_integration::{enc, wait_for, Nats, Node};
use serde_json::{json, Value};

/// Every loghub count case (checked against the CSV), the newest page of each stream
/// and every id.
fn answers(node: &Node, datasets: &[&Dataset]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for ds in datasets {
        for (q, want) in loghub::count_cases(ds) {
            assert_eq!(node.count(&q), want, "{q}");
            out.insert(format!("count {q}"), json!(want));
        }
        let (status, page) = node.get(&format!("/api/v1/search?q={}&limit=200", enc(&format!("stream:{}", ds.stream()))));
        assert_eq!(status, 200, "{page}");
        out.insert(format!("newest of {}", ds.stream()), page["events"].clone());
    }
    let mut ids = node.all_ids("");
    ids.sort();
    out.insert("ids".into(), json!(ids));
    out
}

fn blocks_left(node: &Node) -> u64 {
    let metrics = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    let line = metrics.lines().find(|l| l.starts_with("gossamer_store_upgrade_blocks_left{")).expect("the upgrade gauge");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_store_of_blocks_in_rows_is_upgraded_when_a_node_opens_it_and_answers_the_same() {
    let all = loghub::load();
    let datasets: Vec<&Dataset> = all.iter().take(4).collect();
    let want: u64 = datasets.iter().map(|d| d.rows.len() as u64).sum();
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();

    // As an earlier version wrote it.
    let mut old = Node::start_with_env(&nats.url(), dir.path(), &[], &[("GOSSAMER_SEAL_ROW_FRAMES", "1")]);
    loghub::publish(&nats.url(), "default", datasets.iter().copied());
    old.wait_count("", want, Duration::from_secs(60));
    let before = answers(&old, &datasets);
    assert!(old.terminate().success());
    drop(old);

    let node = Node::start(&nats, dir.path(), &[]);
    wait_for("the store upgrade to end", Duration::from_secs(60), || node.log().contains("store-upgrade-done").then_some(()));
    let log = node.log();
    let started = log.lines().find(|l| l.contains("store-upgrade-started")).expect("the upgrade says when it starts");
    assert!(!started.contains("blocks=0"), "{started}");
    assert_eq!(blocks_left(&node), 0);
    assert_eq!(answers(&node, &datasets), before, "the same answers from the upgraded store");

    // Started again, it finds nothing left to rewrite.
    let mut node = node;
    assert!(node.terminate().success());
    let lines_before = node.log().lines().count();
    node.start_again();
    node.wait_count("", want, Duration::from_secs(60));
    assert_eq!(blocks_left(&node), 0);
    let again: Vec<String> = node.log().lines().skip(lines_before).map(String::from).collect();
    assert!(!again.iter().any(|l| l.contains("store-upgrade-started")), "{again:#?}");
    assert_eq!(answers(&node, &datasets), before);
}
