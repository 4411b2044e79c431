//! SQL over the stored events (`POST /api/v1/sql`, `gossamer sql`): the loghub samples'
//! counts by stream, level, label, word and phrase equal the CSV's and the native API's;
//! ORDER BY and LIMIT give the CSV's order; the answer streams as JSON, NDJSON or CSV;
//! statements that are not queries and bad SQL get a 400 naming the problem; and on a
//! cluster every node answers with every event once, partial when a shard is missing.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use gossamer_integration::loghub::{self, Dataset};
use gossamer_integration::{gossamer_binary, http_post, unused_port, wait_for, Nats, Node};
use serde_json::{json, Value};

/// Publishes datasets through the request/reply path and waits until `node` counts
/// `want` events in all.
fn publish(url: &str, node: &Node, datasets: &[Dataset], want: u64) {
    loghub::publish(url, "default", datasets);
    node.wait_count("", want, Duration::from_secs(120));
}

/// `POST /api/v1/sql` in JSON: the status and the answer.
fn sql(node: &Node, q: &str) -> (u16, Value) {
    http_post(&format!("{}/api/v1/sql", node.http), "application/json", json!({"sql": q}).to_string().as_bytes())
}

/// The rows of a query that must succeed, whole.
fn rows(node: &Node, q: &str) -> Vec<Value> {
    let (status, body) = sql(node, q);
    assert_eq!(status, 200, "{q}: {body}");
    assert_eq!(body["partial"], false, "{q}: {body}");
    body["rows"].as_array().unwrap().clone()
}

/// The one number a `SELECT count(*) AS n ...` gives.
fn count(node: &Node, q: &str) -> u64 {
    let r = rows(node, q);
    assert_eq!(r.len(), 1, "{q}: {r:?}");
    r[0]["n"].as_u64().unwrap_or_else(|| panic!("{q}: {r:?}"))
}

/// A SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn raw_sql(node: &Node, q: &str, format: &str) -> (u16, String) {
    let r = ureq::post(&format!("{}/api/v1/sql", node.http)).send_json(json!({"sql": q, "format": format}));
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn sql_answers_equal_the_csv_and_the_native_api_on_the_loghub_samples() {
    let datasets = loghub::load();
    let total: u64 = datasets.iter().map(|d| d.rows.len() as u64).sum();
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    publish(&nats.url(), &node, &datasets, total);

    assert_eq!(count(&node, "SELECT count(*) AS n FROM logs"), total);
    let mut failures = Vec::new();
    for ds in &datasets {
        let s = lit(&ds.stream());
        let n = count(&node, &format!("SELECT count(*) AS n FROM logs WHERE stream = {s}"));
        if n != ds.rows.len() as u64 {
            failures.push(format!("{}: {n} events, the CSV has {}", ds.stream(), ds.rows.len()));
        }

        // Counts by level, the events without one under NULL.
        let mut want: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for r in &ds.rows {
            *want.entry(loghub::level(r.level.as_deref())).or_default() += 1;
        }
        let got: BTreeMap<Option<String>, u64> = rows(&node, &format!("SELECT level, count(*) AS n FROM logs WHERE stream = {s} GROUP BY level"))
            .iter()
            .map(|r| (r["level"].as_str().map(String::from), r["n"].as_u64().unwrap()))
            .collect();
        if got != want {
            failures.push(format!("{}: by level {got:?}, the CSV gives {want:?}", ds.stream()));
        }

        // The words, phrases and labels of the native count cases, asked in SQL.
        for (q, want) in loghub::count_cases(ds) {
            let rest = q.strip_prefix(&format!("stream:{} ", ds.stream())).unwrap_or("");
            let cond = if let Some(p) = rest.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                format!("phrase(message, {})", lit(p))
            } else if let Some(w) = rest.strip_prefix("NOT ") {
                format!("NOT match(message, {})", lit(w))
            } else if let Some(inner) = rest.strip_prefix('(').and_then(|p| p.strip_suffix(')')) {
                let (w, p) = inner.split_once(" OR ").unwrap();
                format!("(match(message, {}) OR phrase(message, {}))", lit(w), lit(p.trim_matches('"')))
            } else if rest.chars().all(|c| c.is_alphanumeric() || c == '_') && !rest.is_empty() {
                format!("match(message, {})", lit(rest))
            } else if let Some((k, v)) = rest.split_once(':').filter(|(k, _)| *k == "component" || *k == "event_id") {
                format!("labels[{}] = {}", lit(k), lit(v.trim_matches('"')))
            } else {
                continue;
            };
            let sql_q = format!("SELECT count(*) AS n FROM logs WHERE stream = {s} AND {cond}");
            let got = count(&node, &sql_q);
            if got != want {
                failures.push(format!("{sql_q}: {got}, the CSV gives {want} (native {q:?}: {})", node.count(&q)));
            }
        }
    }
    assert!(failures.is_empty(), "{} answers differ:\n{}", failures.len(), failures.join("\n"));

    // The fields, through the JSON functions: the pid's sum, min and max as the CSV
    // gives them, and approx_percentile equal to the native p95 (the same sketch).
    let mut checked = 0;
    for ds in &datasets {
        let pids: Vec<i64> =
            ds.rows.iter().filter_map(|r| r.other.iter().find(|(k, _)| k.eq_ignore_ascii_case("pid")).and_then(|(_, v)| v.parse::<i64>().ok())).collect();
        if pids.is_empty() {
            continue;
        }
        checked += 1;
        let s = lit(&ds.stream());
        let r = rows(
            &node,
            &format!(
                "SELECT count(fields->>'pid') AS n, sum(json_get_int(fields, 'pid')) AS s, min(json_get_int(fields, 'pid')) AS lo, \
                 max(json_get_int(fields, 'pid')) AS hi, approx_percentile(CAST(json_get_int(fields, 'pid') AS DOUBLE), 0.95) AS p95 \
                 FROM logs WHERE stream = {s}"
            ),
        );
        let with_pid = ds.rows.iter().filter(|r| r.other.keys().any(|k| k.eq_ignore_ascii_case("pid"))).count();
        assert_eq!(r[0]["n"].as_u64(), Some(with_pid as u64), "{}: {r:?}", ds.name);
        assert_eq!(r[0]["s"].as_i64(), Some(pids.iter().sum::<i64>()), "{}: {r:?}", ds.name);
        assert_eq!((r[0]["lo"].as_i64(), r[0]["hi"].as_i64()), (pids.iter().min().copied(), pids.iter().max().copied()), "{}", ds.name);
        let (_, native) = node.get(&format!("/api/v1/aggregate?q={}&fn=p95&field=pid", gossamer_integration::enc(&format!("stream:{}", ds.stream()))));
        let native = native["groups"][0]["value"].as_f64().unwrap();
        let p95 = r[0]["p95"].as_f64().unwrap();
        assert!((p95 - native).abs() <= native.abs() * 1e-9, "{}: SQL p95 {p95}, native {native}", ds.name);
    }
    assert!(checked > 0, "some sample has a pid");

    // ORDER BY and LIMIT: the newest five of one stream, ties by id.
    let ds = &datasets[0];
    let mut want: Vec<(i64, String)> = ds.rows.iter().map(|r| (r.ts_ms, r.id.to_string())).collect();
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let got: Vec<String> = rows(&node, &format!("SELECT id FROM logs WHERE stream = {} ORDER BY ts DESC, id LIMIT 5", lit(&ds.stream())))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want.iter().take(5).map(|(_, id)| id.clone()).collect::<Vec<_>>());

    // A limit with no order: that many rows, each of the stream asked for.
    let some = rows(&node, &format!("SELECT stream, message FROM logs WHERE stream = {} LIMIT 7", lit(&ds.stream())));
    assert_eq!(some.len(), 7);
    assert!(some.iter().all(|r| r["stream"] == json!(ds.stream())), "{some:?}");

    // The other formats stream the same rows.
    let q = "SELECT level, count(*) AS n FROM logs GROUP BY level ORDER BY n DESC, level";
    let as_json = rows(&node, q);
    let (status, ndjson) = raw_sql(&node, q, "ndjson");
    assert_eq!(status, 200);
    let lines: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, as_json);
    let (status, csv) = raw_sql(&node, q, "csv");
    assert_eq!(status, 200);
    let csv_lines: Vec<&str> = csv.lines().collect();
    assert_eq!(csv_lines[0], "level,n");
    assert_eq!(csv_lines.len(), as_json.len() + 1, "{csv}");
    assert_eq!(csv_lines[1], format!("{},{}", as_json[0]["level"].as_str().unwrap_or(""), as_json[0]["n"]));
    // Arrow: an IPC stream (its messages start with the continuation marker) holding
    // the column names and the level values.
    let r = ureq::post(&format!("{}/api/v1/sql", node.http)).send_json(json!({"sql": q, "format": "arrow"})).unwrap();
    assert_eq!(r.header("content-type"), Some("application/vnd.apache.arrow.stream"));
    let mut arrow = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut arrow).unwrap();
    assert_eq!(arrow[..4], [0xff; 4]);
    let has = |s: &str| arrow.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(has("level") && has("info"), "{} bytes", arrow.len());

    // The same over NATS, answered whole.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let over_nats: Value = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let reply = client.request("gossamer.default.api.sql", json!({"sql": q}).to_string().into()).await.unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    });
    assert_eq!(over_nats["rows"], json!(as_json), "{over_nats}");
    assert_eq!(over_nats["partial"], false);

    // EXPLAIN shows what the store was asked: the word, the stream and the time range.
    let explain = |q: &str| {
        let plan = rows(&node, &format!("EXPLAIN {q}"));
        plan.iter().find(|r| r["plan_type"] == "logical_plan").unwrap_or_else(|| panic!("{plan:?}"))["plan"].as_str().unwrap().to_string()
    };
    let filters = format!("stream = {} AND match(message, 'error') AND ts >= TIMESTAMP '2000-01-01T00:00:00Z'", lit(&ds.stream()));
    let logical = explain(&format!("SELECT id FROM logs WHERE {filters}"));
    assert!(logical.contains("full_filters") && logical.contains("match(") && logical.contains("logs.ts >="), "{logical}");
    // A count of those is the store's own count: the engine reads no event.
    let logical = explain(&format!("SELECT count(*) FROM logs WHERE {filters}"));
    assert!(logical.contains("TableScan: logs_aggregate") && !logical.contains("TableScan: logs "), "{logical}");

    // `gossamer sql` draws a table.
    let out = Command::new(gossamer_binary()).args(["sql", "--server", &node.http, q]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("level"), "{text}");
    assert!(text.contains(&format!("({} rows)", as_json.len())), "{text}");
}

#[test]
fn sql_that_is_not_a_query_or_is_wrong_gets_a_400_naming_the_problem() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let cases: [(&str, &str); 6] = [
        ("SELEC count(*) FROM logs", "SELEC"),
        ("SELECT nope FROM logs", "nope"),
        ("SELECT * FROM nowhere", "nowhere"),
        ("CREATE TABLE t (a INT)", "only queries"),
        ("INSERT INTO logs (message) VALUES ('x')", "only queries"),
        ("DROP TABLE logs", "only queries"),
    ];
    for (q, named) in cases {
        let (status, body) = sql(&node, q);
        assert_eq!(status, 400, "{q}: {body}");
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{q}: {body}"));
        assert!(error.contains(named), "{q}: the error should name {named:?}: {error}");
    }
    let long = format!("SELECT count(*) FROM logs WHERE message = '{}'", "x".repeat(20_000));
    let (status, body) = sql(&node, &long);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("bytes"), "{body}");
    let (status, body) = http_post(&format!("{}/api/v1/sql", node.http), "application/json", br#"{"query": "SELECT 1"}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = raw_sql(&node, "SELECT 1", "xml");
    assert_eq!(status, 400, "{body}");
    // Nothing was changed by what was refused: the table is still there, empty.
    let (status, body) = sql(&node, "SELECT count(*) AS n FROM logs");
    assert_eq!((status, body["rows"][0]["n"].as_u64()), (200, Some(0)), "{body}");
}

#[test]
fn the_sql_memory_cap_and_time_limit_are_settings_named_when_crossed() {
    let datasets: Vec<Dataset> = loghub::load().into_iter().take(1).collect();
    let total = datasets[0].rows.len() as u64;
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("gossamer.json");
    std::fs::write(&config, json!({"query_limits": {"sql_memory_bytes": 1 << 20, "sql_timeout_secs": 1}}).to_string()).unwrap();
    let node = Node::start(&nats, &data.path().join("node"), &["--config", config.to_str().unwrap()]);
    publish(&nats.url(), &node, &datasets, total);
    // Small questions still fit.
    assert_eq!(count(&node, "SELECT count(*) AS n FROM logs"), total);
    // Sorting every pair of messages needs far more than 1 MiB.
    let (status, body) = sql(&node, "SELECT a.message, b.message FROM logs a, logs b ORDER BY 1, 2 LIMIT 5");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("query_limits.sql_memory_bytes"), "{body}");
    // Counting a hundred billion rows takes more than a second (in little memory).
    let (status, body) = sql(&node, "SELECT count(*) AS n FROM generate_series(1, 100000000000)");
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("query_limits.sql_timeout_secs (1 s)"), "{body}");
}

/// `gossamer_blocks_read_total` of the node's `/metrics`.
fn blocks_read(node: &Node) -> u64 {
    let text = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    let line = text.lines().find(|l| l.starts_with("gossamer_blocks_read_total{")).unwrap_or_else(|| panic!("{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_time_range_and_a_word_over_a_million_events_read_only_the_blocks_the_index_names() {
    const EVENTS: usize = 1_000_000;
    const EVERY: usize = 10_000;
    const T0_MS: i64 = 1_780_000_000_000;
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    // Event i is T0 + i ms; every 10,000th says "needle", the rest do not.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut asks = futures::stream::FuturesUnordered::new();
        for start in (0..EVENTS).step_by(2_000) {
            let body: String = (start..start + 2_000)
                .map(|i| {
                    let word = if i % EVERY == 0 { "needle" } else { "hay" };
                    format!("{}\n", json!({"ts": T0_MS + i as i64, "level": "info", "message": format!("GET /item/{i} {word} in {} ms", i % 97)}))
                })
                .collect();
            asks.push(client.request("gossamer.default.ingest.bench.pushdown", body.into()));
            if asks.len() >= 8 {
                let reply = futures::StreamExt::next(&mut asks).await.unwrap().unwrap();
                assert!(String::from_utf8_lossy(&reply.payload).contains("\"accepted\":2000"), "{:?}", reply.payload);
            }
        }
        while let Some(reply) = futures::StreamExt::next(&mut asks).await {
            assert!(String::from_utf8_lossy(&reply.unwrap().payload).contains("\"accepted\":2000"));
        }
    });
    node.wait_count("", EVENTS as u64, Duration::from_secs(300));
    wait_for("the index to catch up", Duration::from_secs(300), || {
        let (_, st) = node.get("/api/v1/index");
        (st["lag_events"] == 0 && st["dirty_blocks"] == 0).then_some(())
    });
    // A tenth of the time: ten needles among 100,000 events.
    let range = format!("ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})", T0_MS + 300_000, T0_MS + 400_000);
    let want: Vec<Value> = (30..40).rev().map(|k| json!(format!("GET /item/{} needle in {} ms", k * EVERY, (k * EVERY) % 97))).collect();

    let before = blocks_read(&node);
    let pushed = rows(&node, &format!("SELECT message FROM logs WHERE {range} AND match(message, 'needle') ORDER BY ts DESC"));
    let read_pushed = blocks_read(&node) - before;
    assert_eq!(pushed.iter().map(|r| r["message"].clone()).collect::<Vec<_>>(), want);
    // The index names the block of each needle in the range, and the block of the one
    // at its end (400,000 ms, left out by the time check): the SQL reads no other, as
    // the native search of the same question does.
    assert!(read_pushed <= 11, "the word and the range read {read_pushed} blocks");
    let before = blocks_read(&node);
    let (status, native) = node.get(&format!("/api/v1/search?q=needle&from={}&to={}&limit=100", (T0_MS + 300_000) * 1_000_000, (T0_MS + 400_000) * 1_000_000));
    assert_eq!((status, native["events"].as_array().map(Vec::len)), (200, Some(10)), "{native}");
    assert_eq!(blocks_read(&node) - before, read_pushed);

    // The same question the store cannot answer from its index reads every block of
    // the range, for the same rows.
    let before = blocks_read(&node);
    let scanned = rows(&node, &format!("SELECT message FROM logs WHERE {range} AND message LIKE '% needle %' ORDER BY ts DESC"));
    let read_scanned = blocks_read(&node) - before;
    assert_eq!(scanned, pushed);
    assert!(read_scanned >= 20 * read_pushed.max(1), "LIKE read {read_scanned} blocks, match() {read_pushed}");
}

#[test]
fn a_sql_count_through_each_of_three_nodes_is_the_total_and_partial_with_a_shard_missing() {
    let datasets = loghub::load();
    let some: Vec<Dataset> = datasets.into_iter().take(3).collect();
    let total: u64 = some.iter().map(|d| d.rows.len() as u64).sum();
    let nats = Nats::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // n1 also answers over the PostgreSQL door.
    let pg = unused_port();
    let pg_addr = format!("127.0.0.1:{pg}");
    let names = ["n1", "n2", "n3"];
    let mut nodes: Vec<Node> = names
        .iter()
        .zip(&dirs)
        .map(|(id, d)| {
            let mut extra = vec!["--replicas", "1"];
            if *id == "n1" {
                extra.extend(["--pg", pg_addr.as_str()]);
            }
            Node::start_member(&nats.url(), d.path(), id, &extra)
        })
        .collect();
    for n in &nodes {
        n.wait_members(&names, Duration::from_secs(30));
    }
    publish(&nats.url(), &nodes[0], &some, total);
    for n in &nodes {
        wait_for(&format!("{} to count every event", n.http), Duration::from_secs(60), || {
            let (status, body) = n.get("/api/v1/count?q=");
            (status == 200 && body["partial"] == false && body["count"].as_u64() == Some(total)).then_some(())
        });
        assert_eq!(count(n, "SELECT count(*) AS n FROM logs"), total, "{}", n.http);
        let by_stream: u64 = rows(n, "SELECT stream, count(*) AS n FROM logs GROUP BY stream").iter().map(|r| r["n"].as_u64().unwrap()).sum();
        assert_eq!(by_stream, total, "{}", n.http);
    }
    // Once no member still holds a shard it handed over (that copy would answer for
    // it), n3 is killed: until gossip moves its shards, an answer lacks them and says so.
    for n in &nodes {
        wait_for(&format!("{} to let go of what it handed over", n.http), Duration::from_secs(30), || {
            let (_, c) = n.get("/api/v1/cluster");
            (!c["shards"].as_array().unwrap().iter().any(|s| s["leaving"] == true)).then_some(())
        });
    }
    nodes[2].kill9();
    let (status, body) = sql(&nodes[0], "SELECT count(*) AS n FROM logs");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["partial"], true, "{body}");
    assert!(!body["missing_shards"].as_array().unwrap().is_empty(), "{body}");
    assert!(body["rows"][0]["n"].as_u64().unwrap() < total, "{body}");
    // CSV has no place to say so: a short answer is refused whole, naming the shards.
    let (status, csv) = raw_sql(&nodes[0], "SELECT count(*) AS n FROM logs", "csv");
    assert_eq!(status, 503, "{csv}");
    let error: Value = serde_json::from_str(&csv).unwrap_or_else(|e| panic!("{e}: {csv}"));
    assert!(error["error"].as_str().unwrap().contains("no live replica"), "{error}");
    // psql prints the rows it got and the warning that shards are missing.
    let out = Command::new("psql")
        .args(["-X", "-w", "--csv", "-h", "127.0.0.1", "-p", &pg.to_string(), "-U", "tester", "-c", "SELECT count(*) AS n FROM logs"])
        .output()
        .expect("psql (test.sh installs Debian's postgresql-client)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let n: u64 = stdout.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("{stdout}"));
    assert!(n < total, "{stdout}");
    assert!(stderr.contains("WARNING") && stderr.contains("partial"), "{stderr}");
}
