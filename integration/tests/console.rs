//! The web console in a real browser (headless Chromium): against a node holding the
//! HDFS loghub sample, the search page shows the match count, the newest 100 events and
//! a histogram, and a bad query shows the API's error. Screenshots are saved under
//! `target/tmp/console/` for review.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use gossamer_integration::loghub::{self, event_json};
use gossamer_integration::{enc, Nats, Node};

fn chromium() -> PathBuf {
    ["chromium", "/usr/bin/chromium"]
        .iter()
        .map(PathBuf::from)
        .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("chromium is not installed: apt-get install -y chromium (the test command does)")
}

/// Loads `url` in headless Chromium, lets its scripts run, and returns the page's DOM;
/// also saves a screenshot as `shot`.
fn load(url: &str, shot: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--virtual-time-budget=10000",
        "--window-size=1280,900",
    ];
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot_path = out_dir.join(shot);
    let status = Command::new(chromium())
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().join("a").display()))
        .arg(format!("--screenshot={}", shot_path.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(status.status.success(), "chromium screenshot: {}", String::from_utf8_lossy(&status.stderr));
    assert!(shot_path.is_file());
    let dom = Command::new(chromium())
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().join("b").display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(dom.status.success(), "chromium dump-dom: {}", String::from_utf8_lossy(&dom.stderr));
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

fn status_text(dom: &str) -> String {
    let start = dom.find("id=\"status\"").expect("the status line");
    let text = &dom[start..];
    let text = &text[text.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_searches_shows_a_histogram_and_reports_errors() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let js = async_nats::jetstream::new(nats.client().await);
    let datasets = loghub::load();
    let hdfs = datasets.iter().find(|d| d.name == "hdfs").unwrap();
    for chunk in hdfs.rows.chunks(500) {
        let body: String = chunk.iter().map(|r| format!("{}\n", event_json(hdfs, r))).collect();
        gossamer_integration::js_publish(&js, "logs.loghub.hdfs", body.into_bytes()).await;
    }
    let want_warn = hdfs.rows.iter().filter(|r| loghub::level(r.level.as_deref()).as_deref() == Some("warn")).count();
    let total = hdfs.rows.len();
    tokio::task::spawn_blocking(move || {
        node.wait_count("", total as u64, Duration::from_secs(60));

        let dom = load(&format!("{}/", node.http), "search.png");
        assert_eq!(status_text(&dom), format!("{total} events match; newest 100 shown."));
        assert_eq!(dom.matches("<tr class=\"event\"").count(), 100);
        assert!(dom.matches("<rect").count() >= 1, "the histogram has bars");

        let dom = load(&format!("{}/?q={}", node.http, enc("level:warn")), "warn.png");
        assert_eq!(status_text(&dom), format!("{want_warn} events match; newest {} shown.", want_warn.min(100)));

        let dom = load(&format!("{}/?q={}", node.http, enc("level:warn latency_ms:>oops")), "error.png");
        let status = status_text(&dom);
        assert!(status.contains("column") && status.contains("expected a number"), "{status}");
        assert_eq!(dom.matches("<tr class=\"event\"").count(), 0);
    })
    .await
    .unwrap();
}

#[test]
fn the_send_logs_page_shows_each_door_with_this_nodes_address() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let dom = load(&format!("{}/#doors", node.http), "doors.png");
    let origin = node.http.trim_end_matches('/');
    for want in [
        format!("URL: {origin}"),
        format!("{origin}/loki/api/v1/push"),
        format!("{origin}/web.app/_bulk?refresh=wait_for"),
        "logger -n 127.0.0.1 -P 5514".to_string(),
        "gossamer publish --nats nats://127.0.0.1:4222".to_string(),
    ] {
        let page = &dom[dom.find("id=\"page-doors\"").unwrap_or(0)..];
        assert!(dom.contains(&want), "the page shows {want:?}: {}", &page[..page.len().min(3000)]);
    }
    let page = &dom[dom.find("id=\"page-doors\"").unwrap()..];
    assert!(!page[..page.find('>').unwrap()].contains("hidden"), "the Send logs page is the one shown");
}
