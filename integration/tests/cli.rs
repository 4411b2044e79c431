//! The `gossamer` command line as a user runs it: `up` with and without nats-server,
//! `publish` with a progress-free pipe, `query` with good and bad queries.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use gossamer_integration::{gossamer_binary, http_get, nats_server_binary, Nats, Node};

/// `gossamer publish` of one line from stdin.
fn publish_line(nats: &str, stream: &str, line: &[u8]) {
    let mut publish = Command::new(gossamer_binary())
        .args(["publish", "--nats", nats, "--stream", stream])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publish.stdin.take().unwrap().write_all(line).unwrap();
    assert!(publish.wait().unwrap().success());
}

#[test]
fn up_without_nats_server_says_how_to_install_it() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(gossamer_binary())
        .args(["up", "--http", "127.0.0.1:0", "--nats-port", "0", "--data"])
        .arg(data.path())
        .env("GOSSAMER_NATS_SERVER", data.path().join("no-such-nats-server"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install -y nats-server"), "{err}");
}

#[test]
fn up_runs_everything_and_stops_cleanly_on_ctrl_c() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(gossamer_binary())
        .args(["up", "--http", "127.0.0.1:0", "--nats-port", "0", "--shards", "4", "--data"])
        .arg(data.path())
        .env("GOSSAMER_NATS_SERVER", nats_server_binary())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut http, mut nats) = (None, None);
    while http.is_none() || nats.is_none() {
        let line = lines.next().expect("up printed its addresses").unwrap();
        if let Some(a) = line.split("console: ").nth(1) {
            http = Some(a.trim_end_matches('/').to_string());
        }
        if let Some(n) = line.strip_prefix("  NATS: ") {
            nats = Some(n.to_string());
        }
    }
    let (http, nats) = (http.unwrap(), nats.unwrap());
    let (status, body) = http_get(&format!("{http}/api/v1/health"));
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _) = http_get(&format!("{http}/"));
    assert_eq!(status, 200, "the console page is served");

    // Publish through the child nats-server and find the event.
    publish_line(&nats, "up.test", b"hello from up\n");
    gossamer_integration::wait_for("the event", Duration::from_secs(30), || {
        let (_, body) = http_get(&format!("{http}/api/v1/count?q=hello"));
        (body["count"] == 1).then_some(())
    });

    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "up exits cleanly on Ctrl-C: {status}");
    let port: u16 = nats.rsplit(':').next().unwrap().parse().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the nats-server child is stopped");
}

#[test]
fn publish_and_query_from_the_command_line() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let file = data.path().join("input.log");
    std::fs::write(
        &file,
        "first plain line\n{\"level\":\"error\",\"message\":\"json line with error\",\"labels\":{\"svc\":\"api\"}}\n\n{\"broken json\nlast plain line\n",
    )
    .unwrap();
    let out = Command::new(gossamer_binary())
        .args(["publish", "--nats", &nats.url(), "--stream", "cli.file", "--batch", "2"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("published 4 events"), "{err}");
    assert!(err.contains("1 lines were not valid JSON"), "{err}");
    node.wait_count("stream:cli.file", 3, Duration::from_secs(30));

    let query = |args: &[&str]| {
        let out = Command::new(gossamer_binary()).args(["query", "--server", &node.http]).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stdout, _) = query(&["--count", "stream:cli.file plain"]);
    assert_eq!((code, stdout.trim()), (Some(0), "2"));
    let (code, stdout, _) = query(&["--json", "svc:api level:error"]);
    assert_eq!(code, Some(0));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["message"], "json line with error");
    let (code, stdout, _) = query(&["--order", "asc", "stream:cli.file"]);
    assert_eq!(code, Some(0));
    let msgs: Vec<&str> = stdout.lines().map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").trim()).collect();
    assert_eq!(msgs.len(), 3, "{stdout}");
    let (code, stdout, _) = query(&["--agg", "count", "--by", "level", "stream:cli.file"]);
    assert_eq!(code, Some(0));
    let mut groups: Vec<&str> = stdout.lines().collect();
    groups.sort();
    assert_eq!(groups, vec!["level=-\t2", "level=error\t1"], "plain lines that say no level keep none");
    let (code, _, stderr) = query(&["--agg", "p95", "stream:cli.file"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("`field` is required"), "{stderr}");
    let (code, _, stderr) = query(&["level:error latency_ms:>abc"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("column 24"), "{stderr}");
}

#[test]
fn up_runs_a_three_node_cluster_that_cluster_status_shows_and_stops_it_whole() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(gossamer_binary())
        .args(["up", "--nodes", "3", "--http", "127.0.0.1:0", "--nats-port", "0", "--shards", "8", "--data"])
        .arg(data.path())
        .env("GOSSAMER_NATS_SERVER", nats_server_binary())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut nodes, mut nats) = (Vec::new(), None);
    loop {
        let line = lines.next().expect("up printed its addresses").unwrap();
        if let Some((name, url)) = line.trim().split_once(": http://") {
            nodes.push((name.to_string(), format!("http://{}", url.trim_end_matches('/'))));
        }
        if let Some(n) = line.strip_prefix("  NATS: ") {
            nats = Some(n.to_string());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    let nats = nats.expect("up printed the NATS address");

    // `cluster status` through any node lists all three, alive, sharing the shards.
    let status = gossamer_integration::wait_for("three live members", Duration::from_secs(30), || {
        let out = Command::new(gossamer_binary()).args(["cluster", "status", "--server", &nodes[2].1]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.lines().filter(|l| l.contains(" alive ")).count() == 3).then_some(text)
    });
    assert!(status.contains("8 shards, 2 replicas each"), "{status}");
    assert!(status.contains("node-3") && status.contains("(this node)"), "{status}");
    let (_, c) = http_get(&format!("{}/api/v1/cluster", nodes[0].1));
    let held: u64 = c["members"].as_array().unwrap().iter().map(|m| m["replicas"].as_u64().unwrap()).sum();
    assert_eq!(held, 16, "8 shards on 2 replicas each: {c}");

    // An event published once is found through every node.
    publish_line(&nats, "up.cluster", b"hello from three nodes\n");
    for (_, url) in &nodes {
        gossamer_integration::wait_for("the event", Duration::from_secs(30), || {
            let (_, body) = http_get(&format!("{url}/api/v1/count?q=hello"));
            (body["count"] == 1 && body["partial"] == false).then_some(())
        });
    }

    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert!(child.wait().unwrap().success(), "up exits cleanly on Ctrl-C");
    for (name, url) in &nodes {
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "{name} is stopped");
    }
}

/// `gossamer export` writes every matching event oldest first, as NDJSON or CSV; the
/// NDJSON re-imports with `gossamer publish` (no `--stream`: each line names its own)
/// into a store with the same events, ids and counts.
#[test]
fn an_export_re_imports_into_an_identical_store() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let source = Node::start(&nats, &data.path().join("a"), &[]);
    // Three streams, ties in time, nested and missing fields, labels, unicode.
    let levels = ["error", "warn", "info"];
    let lines: String = (0..3000)
        .map(|i| {
            let mut e = serde_json::json!({
                "stream": format!("exp.s{}", i % 3),
                "ts": 1_780_000_000_000i64 + (i / 4) as i64,
                "level": levels[i % 3],
                "message": format!("event {i} ünïcode \"quoted\", comma"),
                "labels": {"svc": format!("svc{}", i % 5)},
            });
            if i % 2 == 0 {
                e["fields"] = serde_json::json!({"ms": i, "req": {"path": format!("/p/{i}")}});
            }
            format!("{e}\n")
        })
        .collect();
    let input = data.path().join("input.ndjson");
    std::fs::write(&input, lines).unwrap();
    let publish = |cluster: &str, file: &std::path::Path| {
        Command::new(gossamer_binary()).args(["publish", "--nats", &nats.url(), "--cluster", cluster]).arg(file).output().unwrap()
    };
    let out = publish("default", &input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    source.wait_count("", 3000, Duration::from_secs(60));
    assert_eq!(source.count("stream:exp.s1"), 1000);

    let export = |node: &Node, args: &[&str], file: &std::path::Path| {
        let out = Command::new(gossamer_binary())
            .args(["export", "--server", &node.http, "--output"])
            .arg(file)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let exported = data.path().join("all.ndjson");
    let said = export(&source, &[], &exported);
    assert!(said.contains("exported 3000 events"), "{said}");
    let read = |file: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let events = read(&exported);
    assert_eq!(events.len(), 3000);
    let keys: Vec<(String, String)> =
        events.iter().map(|e| (e["ts"].as_str().unwrap().to_string(), e["id"].as_str().unwrap().to_string())).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "oldest first, ties by id, each event once");

    // A CSV of one stream: a header and one record per event, messages quoted whole.
    let csv_file = data.path().join("s1.csv");
    export(&source, &["--format", "csv", "stream:exp.s1"], &csv_file);
    let mut reader = csv::Reader::from_path(&csv_file).unwrap();
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), ["id", "ts", "stream", "level", "message", "labels", "fields"]);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 1000);
    assert!(records.iter().all(|r| &r[2] == "exp.s1" && r[4].contains("\"quoted\", comma")));

    // Into an empty store of another cluster on the same bus: the same events.
    let copy = Node::start(&nats, &data.path().join("b"), &["--cluster", "copy"]);
    let out = publish("copy", &exported);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    copy.wait_count("", 3000, Duration::from_secs(60));
    // Published again: the ids make it a no-op.
    let out = publish("copy", &exported);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = data.path().join("copy.ndjson");
    export(&copy, &[], &again);
    assert_eq!(read(&again), events, "the copy holds exactly the source's events");
    for s in ["exp.s0", "exp.s1", "exp.s2"] {
        assert_eq!(copy.count(&format!("stream:{s}")), source.count(&format!("stream:{s}")), "{s}");
    }

    // Without --stream, a line that names no stream stops the publish, saying which.
    let plain = data.path().join("plain.log");
    std::fs::write(&plain, "{\"stream\":\"exp.s0\",\"message\":\"named\"}\na plain line\n").unwrap();
    let out = publish("default", &plain);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2 has no `stream` key") && err.contains("1 events before it were published"), "{err}");
    source.wait_count("stream:exp.s0 named", 1, Duration::from_secs(30));

    // A bad format is refused before anything is written.
    let (status, body) = http_get(&format!("{}/api/v1/export?format=xml", source.http));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("ndjson or csv"), "{body}");
}
