//! The table over an in-memory source: what is handed to the store, and answers equal
//! to the engine's own filtering of every event.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use gossamer_schemas::Event;
use serde_json::json;

use super::*;

type Memory = MemorySource;

fn event(n: u8, ts: i64, stream: &str, level: &str, message: &str, labels: &[(&str, &str)], fields: serde_json::Value) -> Event {
    Event {
        id: uuid::Uuid::from_bytes([n; 16]),
        ts,
        stream: stream.into(),
        level: level.into(),
        message: message.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        fields: fields.as_object().cloned().unwrap_or_default(),
    }
}

fn fixture() -> Arc<Memory> {
    // Pages of three, so every query reads several.
    Arc::new(Memory::new(
        vec![
            event(1, 1_000, "api", "error", "Connection refused by upstream", &[("region", "eu")], json!({"latency_ms": 120})),
            event(2, 2_000, "api", "info", "request done", &[("region", "us")], json!({"latency_ms": 15})),
            event(3, 3_000, "api", "", "connection reset by peer", &[], json!({"latency_ms": "88"})),
            event(4, 4_000, "db", "warn", "slow query: refused connection pool", &[("region", "eu")], json!({"rows": 3})),
            event(5, 5_000, "db", "error", "Zürich naïve café refused", &[("region", "eu")], json!({})),
            event(6, 5_000, "api", "error", "refused", &[("region", "us")], json!({"latency_ms": 300})),
            event(7, 7_000, "web", "info", "GET /health 200", &[], json!({"nested": {"a": 1}})),
        ],
        3,
    ))
}

async fn run(source: Arc<Memory>, sql: &str) -> Vec<serde_json::Value> {
    let (frame, _) = plan(source, sql, &Limits::default()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batches: Vec<RecordBatch> = frame.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut w = datafusion::arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, datafusion::arrow::json::writer::JsonArray>(Vec::new());
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return vec![];
    }
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn filters_the_store_answers_are_handed_to_it_whole() {
    let src = fixture();
    let rows = run(
        src.clone(),
        "SELECT id FROM logs WHERE stream = 'api' AND level = 'error' AND labels['region'] = 'eu' \
         AND ts >= to_timestamp_nanos(500) AND ts < to_timestamp_nanos(4000) AND match(message, 'REFUSED connection')",
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let scans = src.scans();
    let scan = &scans[0];
    assert_eq!((scan.from, scan.to), (Some(500), Some(4000)));
    for term in ["stream:api", "level:error", "labels.region:\"eu\"", "\"refused\"", "\"connection\""] {
        assert!(scan.query.contains(term), "{term} in {scan:?}");
    }
}

#[tokio::test]
async fn what_the_store_does_not_answer_exactly_is_left_to_the_engine() {
    let src = fixture();
    // A level spelled as the native syntax would read differently, an OR, a LIKE.
    let rows = run(src.clone(), "SELECT count(*) AS n FROM logs WHERE level = 'ERROR' OR message LIKE '%pool%'").await;
    assert_eq!(rows, vec![json!({"n": 1})]);
    assert_eq!(src.scans()[0].query, "");
    let rows = run(fixture(), "SELECT count(*) AS n FROM logs WHERE level = 'notice'").await;
    assert_eq!(rows, vec![json!({"n": 0})], "no stored level is 'notice' (it is stored as info)");
}

#[tokio::test]
async fn a_stream_like_with_only_percent_wildcards_is_the_native_glob() {
    // api holds 4 events, db 2, web 1.
    for (pattern, want, pushed) in [
        ("stream LIKE 'a%'", 4, "stream:a*"),
        ("stream LIKE '%b'", 3, "stream:*b"),
        ("stream LIKE '%e%'", 1, "stream:*e*"),
        ("stream LIKE 'A%'", 0, "stream:A*"),
        // `_` is one character, NOT and ILIKE have no native form: the engine filters.
        ("stream LIKE 'a_i'", 4, ""),
        ("stream NOT LIKE 'a%'", 3, ""),
        ("stream ILIKE 'A%'", 4, ""),
    ] {
        let src = fixture();
        let rows = run(src.clone(), &format!("SELECT id FROM logs WHERE {pattern}")).await;
        assert_eq!(rows.len(), want, "{pattern}: {rows:?}");
        assert!(src.scans().iter().all(|s| s.query == pushed), "{pattern}: {:?}", src.scans());
    }
}

#[tokio::test]
async fn match_and_phrase_agree_pushed_down_or_not() {
    for (cond, want) in [
        ("match(message, 'refused')", 4),
        ("match(message, 'connection refused')", 2),
        ("phrase(message, 'connection refused')", 1),
        ("phrase(message, 'refused by')", 1),
        ("match(message, 'zürich CAFÉ')", 1),
        ("match(message, '...')", 7),
    ] {
        let pushed = run(fixture(), &format!("SELECT count(*) AS n FROM logs WHERE {cond}")).await;
        // Under an OR with something false the engine evaluates it itself.
        let engine = run(fixture(), &format!("SELECT count(*) AS n FROM logs WHERE {cond} OR id = 'none'")).await;
        assert_eq!(pushed, vec![json!({"n": want})], "{cond}");
        assert_eq!(engine, pushed, "{cond} evaluated by the engine");
    }
}

#[tokio::test]
async fn a_limit_reaches_the_store_only_with_nothing_in_between() {
    let src = fixture();
    let rows = run(src.clone(), "SELECT id FROM logs WHERE stream = 'api' LIMIT 2").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(src.scans()[0].limit, Some(2));
    let src = fixture();
    let rows = run(src.clone(), "SELECT id FROM logs WHERE message LIKE '%e%' ORDER BY ts DESC, id LIMIT 2").await;
    assert_eq!(rows, vec![json!({"id": uuid::Uuid::from_bytes([7; 16]).to_string()}), json!({"id": uuid::Uuid::from_bytes([5; 16]).to_string()})]);
    assert!(src.scans().iter().all(|s| s.limit.is_none()));
}

#[tokio::test]
async fn levels_labels_fields_and_percentiles_read_as_sql_expects() {
    let rows = run(fixture(), "SELECT level, count(*) AS n FROM logs GROUP BY level ORDER BY level NULLS FIRST").await;
    assert_eq!(rows, vec![json!({"level": null, "n": 1}), json!({"level": "error", "n": 3}), json!({"level": "info", "n": 2}), json!({"level": "warn", "n": 1})]);
    let rows = run(fixture(), "SELECT labels['region'] AS region, count(*) AS n FROM logs GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 NULLS LAST").await;
    assert_eq!(rows, vec![json!({"region": "eu", "n": 3}), json!({"region": "us", "n": 2}), json!({"region": null, "n": 2})]);
    let rows = run(fixture(), "SELECT sum(json_get_int(fields, 'latency_ms')) AS s, count(fields->>'latency_ms') AS n, max(json_get_int(fields, 'nested', 'a')) AS a FROM logs").await;
    // A number held as a string counts, as in the native aggregations.
    assert_eq!(rows, vec![json!({"s": 523, "n": 4, "a": 1})]);
    let rows = run(fixture(), "SELECT approx_percentile(CAST(json_get_int(fields, 'latency_ms') AS DOUBLE), 0.5) AS p50 FROM logs").await;
    let mut sketch = sketches_ddsketch::DDSketch::new(sketches_ddsketch::Config::defaults());
    for v in [120.0, 15.0, 88.0, 300.0] {
        sketch.add(v);
    }
    assert_eq!(rows[0]["p50"].as_f64(), sketch.quantile(0.5).unwrap(), "the sketch /api/v1/aggregate uses gives the same");
    let rows = run(fixture(), "SELECT date_bin(INTERVAL '2 microseconds', ts) AS b, count(*) AS n FROM logs GROUP BY 1 ORDER BY 1").await;
    assert_eq!(rows.iter().map(|r| r["n"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 1]);
}

#[tokio::test]
async fn statements_that_are_not_queries_and_bad_sql_are_the_users_errors() {
    for sql in ["CREATE TABLE t (a INT)", "INSERT INTO logs (message) VALUES ('x')", "DROP TABLE logs", "SET datafusion.execution.batch_size = 1"] {
        match plan(fixture(), sql, &Limits::default()).await {
            Err(SqlError::Bad(m)) => assert!(m.contains("only queries"), "{sql}: {m}"),
            Err(SqlError::Internal(m)) => panic!("{sql}: internal {m}"),
            Ok(_) => panic!("{sql} was accepted"),
        }
    }
    for (sql, named) in [("SELECT nope FROM logs", "nope"), ("SELEC 1", "SELEC"), ("SELECT 1 FROM", "Expected")] {
        match plan(fixture(), sql, &Limits::default()).await {
            Err(SqlError::Bad(m)) => assert!(m.contains(named), "{sql}: {m}"),
            Err(SqlError::Internal(m)) => panic!("{sql}: internal {m}"),
            Ok(_) => panic!("{sql} was accepted"),
        }
    }
    // The text match() looks for is a literal, not another column.
    let (frame, _) = plan(fixture(), "SELECT count(*) FROM logs WHERE match(message, stream)", &Limits::default()).await.unwrap();
    let err = frame.collect().await.unwrap_err();
    assert!(matches!(classify(err), SqlError::Bad(m) if m.contains("literal")));
    let long = format!("SELECT '{}'", "x".repeat(20_000));
    assert!(matches!(plan(fixture(), &long, &Limits::default()).await, Err(SqlError::Bad(m)) if m.contains("bytes")));
}

#[tokio::test]
async fn counts_by_stream_and_level_are_asked_of_the_store_and_agree_with_the_engine() {
    for (counted, by_engine) in [
        ("SELECT level, count(*) AS n FROM logs GROUP BY level ORDER BY level", "SELECT level, count(id) AS n FROM logs GROUP BY level ORDER BY level"),
        (
            "SELECT level, count(*) AS n FROM logs WHERE stream = 'api' AND ts >= to_timestamp_nanos(2000) GROUP BY level ORDER BY n DESC, level",
            "SELECT level, count(id) AS n FROM logs WHERE stream = 'api' AND ts >= to_timestamp_nanos(2000) GROUP BY level ORDER BY n DESC, level",
        ),
        (
            "SELECT stream, level, count(1) AS n FROM logs GROUP BY stream, level HAVING count(1) > 1 ORDER BY stream, level",
            "SELECT stream, level, count(id) AS n FROM logs GROUP BY stream, level HAVING count(id) > 1 ORDER BY stream, level",
        ),
        ("SELECT count(*) AS n FROM logs WHERE match(message, 'refused')", "SELECT count(id) AS n FROM logs WHERE match(message, 'refused')"),
        ("SELECT count(*) AS n FROM logs WHERE stream = 'nowhere'", "SELECT count(id) AS n FROM logs WHERE stream = 'nowhere'"),
        ("SELECT count(*) FROM logs", "SELECT count(id) AS \"count(*)\" FROM logs"),
    ] {
        let src = fixture();
        let got = run(src.clone(), counted).await;
        assert!(src.scans().is_empty(), "{counted}: read events instead of counts: {:?}", src.scans());
        assert_eq!(got, run(fixture(), by_engine).await, "{counted}");
        assert!(!got.is_empty(), "{counted}");
    }
    // EXPLAIN names the swap.
    let plan = run(fixture(), "EXPLAIN SELECT level, count(*) FROM logs WHERE stream = 'api' GROUP BY level").await;
    assert!(plan.iter().any(|r| r["plan"].as_str().unwrap_or("").contains(AGGREGATE_TABLE)), "{plan:?}");
    assert_eq!(run(fixture(), "SELECT count(*) AS n FROM logs WHERE stream = 'nowhere'").await, vec![json!({"n": 0})]);
}

#[tokio::test]
async fn aggregations_the_store_cannot_give_are_left_to_the_engine() {
    for q in [
        "SELECT count(DISTINCT level) AS n FROM logs",
        "SELECT message, count(*) AS n FROM logs GROUP BY 1",
        "SELECT avg(json_get_float(fields, 'nested.a')) AS a FROM logs",
        "SELECT level, approx_percentile(json_get_float(fields, 'latency_ms'), 0.1234) AS p FROM logs GROUP BY level",
        "SELECT level, count(*) AS n FROM logs WHERE message LIKE '%pool%' GROUP BY level",
        "SELECT level, count(*) AS n, max(ts) AS last FROM logs GROUP BY level",
    ] {
        let src = fixture();
        let rows = run(src.clone(), q).await;
        assert!(!rows.is_empty(), "{q}");
        assert!(!src.scans().is_empty(), "{q}: the engine should have read the events");
    }
}

#[tokio::test]
async fn the_newest_first_with_a_limit_reads_only_the_pages_it_needs() {
    for (q, want_pages) in [
        ("SELECT id, ts FROM logs ORDER BY ts DESC LIMIT 2", 1),
        ("SELECT id, message FROM logs WHERE stream = 'api' ORDER BY ts DESC, id DESC LIMIT 3", 1),
        ("SELECT ts FROM logs ORDER BY ts DESC LIMIT 1", 1),
    ] {
        let src = fixture();
        let got = run(src.clone(), q).await;
        assert_eq!(src.scans().len(), want_pages, "{q}: {:?}", src.scans());
        // The same rows as sorting every event in the engine.
        // A text form of the time sorts the same, but the engine cannot tell it is sorted.
        let sorted = q.replace("ORDER BY ts DESC", "ORDER BY concat(ts, '') DESC");
        let all = fixture();
        assert_eq!(got, run(all.clone(), &sorted).await, "{q}");
        assert!(all.scans().len() > want_pages, "{sorted} read every page");
    }
}

#[tokio::test]
async fn aggregations_the_store_answers_are_its_own_and_equal_the_engines() {
    let engine_only = "WHERE length(message) >= 0";
    for (keys, aggregate) in [
        ("stream", "approx_percentile(json_get_float(fields, 'latency_ms'), 0.95)"),
        ("labels['region']", "sum(json_get_float(fields, 'latency_ms'))"),
        ("level, labels['region']", "avg(json_get_float(fields, 'latency_ms'))"),
        ("stream, date_bin(INTERVAL '2 microseconds', ts)", "max(json_get_float(fields, 'latency_ms'))"),
        ("date_trunc('second', ts), level", "min(json_get_float(fields, 'rows'))"),
        ("labels['region'], date_bin(INTERVAL '3 microseconds', ts)", "count(*)"),
    ] {
        let q = format!("SELECT {keys}, {aggregate} AS v FROM logs GROUP BY {keys} ORDER BY {keys}");
        let src = fixture();
        let got = run(src.clone(), &q).await;
        assert!(src.scans().is_empty(), "{q}: read events instead of asking for the aggregate");
        let by_engine = run(fixture(), &q.replace("FROM logs", &format!("FROM logs {engine_only}"))).await;
        assert_eq!(got, by_engine, "{q}");
        assert!(got.len() > 1, "{q}: {got:?}");
    }
    // Groups without a number keep a NULL, as the engine gives them.
    let q = "SELECT level, max(json_get_float(fields, 'rows')) AS v FROM logs GROUP BY level ORDER BY level";
    let got = run(fixture(), q).await;
    assert_eq!(got, run(fixture(), &q.replace("FROM logs", &format!("FROM logs {engine_only}"))).await);
    assert!(got.iter().any(|r| r["v"].is_null()) && got.iter().any(|r| r["v"] == json!(3.0)), "{got:?}");
}

