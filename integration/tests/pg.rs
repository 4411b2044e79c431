//! The PostgreSQL door (`--pg`) with the real clients of that protocol: psql (Debian's
//! postgresql-client) and psycopg get the same rows for the same SQL as `POST
//! /api/v1/sql`, over the simple and the extended protocol, with `$n` parameters and
//! binary results; what is not a query is refused with the engine's message; with
//! tokens set, only a token is a password.

use std::process::Command;
use std::time::Duration;

use gossamer_integration::loghub::{self, Dataset};
use gossamer_integration::{http_post, python, unused_port, Nats, Node};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

/// `psql` with its output as CSV (NULL spelled out); the exit status, stdout, stderr.
fn psql(port: u16, password: Option<&str>, sql: &str) -> (bool, String, String) {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-w", "--csv", "-P", "null=NULL", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "tester", "-d", "logs", "-c", sql]);
    cmd.env("PGCONNECT_TIMEOUT", "10").env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().expect("psql (test.sh installs Debian's postgresql-client)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The rows psql printed, each a list of cells (the header line left out).
fn psql_rows(port: u16, sql: &str) -> Vec<Vec<String>> {
    let (ok, out, err) = psql(port, None, sql);
    assert!(ok, "psql -c {sql:?}: {err}");
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(out.as_bytes());
    reader.records().map(|r| r.unwrap().iter().map(str::to_string).collect()).collect()
}

/// What psycopg got for each query (see `python/pg_query.py`).
fn psycopg(port: u16, password: Option<&str>, queries: Value) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/pg_query.py");
    let mut dsn = format!("host=127.0.0.1 port={port} user=tester dbname=logs connect_timeout=10");
    if let Some(p) = password {
        dsn.push_str(&format!(" password={p}"));
    }
    let out = Command::new(python()).arg(script).args(["--dsn", &dsn, &queries.to_string()]).output().expect("python with psycopg (test.sh installs it)");
    assert!(out.status.success(), "psycopg: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// The rows of `POST /api/v1/sql`, each a list of values in column order.
fn rest_rows(node: &Node, sql: &str) -> (Vec<String>, Vec<Vec<Value>>) {
    let (status, body) = http_post(&format!("{}/api/v1/sql", node.http), "application/json", json!({"sql": sql}).to_string().as_bytes());
    assert_eq!(status, 200, "{sql}: {body}");
    let columns: Vec<String> = body["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    let rows = body["rows"].as_array().unwrap().iter().map(|r| columns.iter().map(|c| r[c].clone()).collect()).collect();
    (columns, rows)
}

/// A value as psql's CSV shows it.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn datasets() -> Vec<Dataset> {
    loghub::load().into_iter().filter(|d| ["apache", "openssh", "zookeeper"].contains(&d.name.as_str())).collect()
}

#[test]
fn psql_and_psycopg_get_the_rows_post_sql_gives() {
    let datasets = datasets();
    assert_eq!(datasets.len(), 3);
    let total: u64 = datasets.iter().map(|d| d.rows.len() as u64).sum();
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let pg = unused_port();
    let node = Node::start(&nats, data.path(), &["--pg", &format!("127.0.0.1:{pg}")]);
    loghub::publish(&nats.url(), "default", &datasets);
    node.wait_count("", total, Duration::from_secs(120));

    let stream = datasets[1].stream();
    let queries = [
        "SELECT level, count(*) AS n FROM logs GROUP BY level ORDER BY level NULLS FIRST".to_string(),
        "SELECT stream, count(*) AS n FROM logs WHERE match(message, 'error') GROUP BY stream ORDER BY stream".to_string(),
        format!("SELECT id, level, message, shard FROM logs WHERE stream = '{stream}' ORDER BY ts, id LIMIT 25"),
        "SELECT labels['dataset'] AS dataset, count(DISTINCT level) AS levels FROM logs GROUP BY 1 ORDER BY 1".to_string(),
    ];
    // psql: the simple query protocol, text results.
    for q in &queries {
        let (_, want) = rest_rows(&node, q);
        assert!(!want.is_empty(), "{q}");
        let want: Vec<Vec<String>> = want.iter().map(|r| r.iter().map(cell).collect()).collect();
        assert_eq!(psql_rows(pg, q), want, "psql: {q}");
    }
    // psycopg: the same queries, then parameters (the extended protocol) and binary.
    let mut asks: Vec<Value> = queries.iter().map(|q| json!({"sql": q})).collect();
    asks.push(json!({"sql": "SELECT count(*) AS n FROM logs WHERE stream = %s AND match(message, %s)", "params": [stream, "session"]}));
    asks.push(json!({"sql": "SELECT ts, shard, level FROM logs WHERE stream = %s ORDER BY ts, id LIMIT %s", "params": [stream, 3], "binary": true}));
    asks.push(json!({"sql": "SELECT nosuchcolumn FROM logs"}));
    asks.push(json!({"sql": "DELETE FROM logs"}));
    let got = psycopg(pg, None, Value::Array(asks));
    for (q, answer) in queries.iter().zip(&got) {
        let (columns, want) = rest_rows(&node, q);
        assert_eq!(answer["columns"], json!(columns), "psycopg: {q}");
        assert_eq!(answer["rows"], json!(want), "psycopg: {q}");
    }
    let (_, want) = rest_rows(&node, &format!("SELECT count(*) AS n FROM logs WHERE stream = '{stream}' AND match(message, 'session')"));
    assert!(want[0][0].as_u64().unwrap() > 0, "{want:?}");
    assert_eq!(got[4]["rows"], json!(want), "{}", got[4]);
    let typed = &got[5];
    assert_eq!(typed["types"], json!(["timestamptz", "int8", "text"]), "{typed}");
    assert_eq!(typed["rows"].as_array().unwrap().len(), 3, "{typed}");
    let (_, first) = rest_rows(&node, &format!("SELECT ts FROM logs WHERE stream = '{stream}' ORDER BY ts, id LIMIT 1"));
    // The same instant: PostgreSQL's timestamps are microseconds, the JSON's nanoseconds.
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros();
    assert_eq!(at(typed["rows"][0][0].as_str().unwrap()), at(first[0][0].as_str().unwrap()), "{typed}");
    assert!(got[6]["error"].as_str().unwrap().contains("nosuchcolumn"), "{}", got[6]);
    assert!(got[7]["error"].as_str().unwrap().contains("only queries are accepted"), "{}", got[7]);

    // What is not a query fails in psql too, with the reason; psql's own session
    // statements change nothing.
    let (ok, _, err) = psql(pg, None, "DROP TABLE logs");
    assert!(!ok && err.contains("only queries are accepted"), "{err}");
    let (ok, _, err) = psql(pg, None, "SELECT count(* FROM logs");
    assert!(!ok && err.contains("Line: 1, Column: 16"), "{err}");
    let (ok, out, err) = psql(pg, None, "SET application_name = 'x'");
    assert!(ok, "{err}");
    assert!(out.trim().is_empty() || out.contains("SET"), "{out}");
    assert_eq!(psql_rows(pg, "SELECT count(*) AS n FROM logs"), vec![vec![total.to_string()]]);
}

#[test]
fn with_tokens_set_the_password_is_a_token() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let pg = unused_port();
    let _node = Node::start(&nats, data.path(), &["--pg", &format!("127.0.0.1:{pg}"), "--admin-token", ADMIN, "--read-token", READ]);
    let (ok, _, err) = psql(pg, Some("not-a-token"), "SELECT count(*) AS n FROM logs");
    assert!(!ok && err.contains("Password authentication failed"), "{err}");
    let (ok, _, err) = psql(pg, None, "SELECT count(*) AS n FROM logs");
    assert!(!ok, "no password: {err}");
    for token in [READ, ADMIN] {
        let (ok, out, err) = psql(pg, Some(token), "SELECT count(*) AS n FROM logs");
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "n\n0");
    }
    let got = psycopg(pg, Some(READ), json!([{"sql": "SELECT count(*) AS n FROM logs WHERE level = %s", "params": ["error"]}]));
    assert_eq!(got[0]["rows"], json!([[0]]), "{got:?}");
}
