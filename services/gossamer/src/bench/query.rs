//! `gossamer bench query`: the query mix over N events, beside ripgrep on the same
//! NDJSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::bench::common::*;

/// The mix's marker for a query sent as SQL.
const SQL: &str = "sql";

/// The first event's time in the generated events (`payloads`), in ns; event i is i ms later.
const T0_NS: i64 = 1_780_000_000_000_000_000;

#[derive(Args)]
pub struct QueryBench {
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    /// Timed runs of each query (after one warm-up run).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    #[arg(long, default_value = "integration/testdata/loghub")]
    pub dataset: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the node's data here (sled files, for `gossamer admin disk-usage`) instead
    /// of a temporary directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Also draw the figures as a PNG chart here.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Run the node without the index role: every query scans (what the index buys).
    #[arg(long)]
    pub no_index: bool,
    /// Also run the same queries over the same events in embedded ClickHouse (PyPI
    /// `chdb`) and tantivy (PyPI `tantivy`), from a virtual environment made under
    /// `target/` (needs python3 with venv and PyPI the first time).
    #[arg(long)]
    pub peers: bool,
}

#[derive(Debug, Serialize)]
pub struct QueryFigure {
    pub name: &'static str,
    pub what: String,
    pub answer: serde_json::Value,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub ripgrep_ms: Option<f64>,
}

pub fn query(a: QueryBench) -> Result<()> {
    let datasets = load_loghub(&a.dataset)?;
    let tmp = tempfile::tempdir()?;
    let server = crate::local::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    eprintln!("generating {} events ...", a.events);
    let (msgs, ndjson_bytes) = payloads(&datasets, a.events, 500, "");
    let ndjson = tmp.path().join("events.ndjson");
    write_ndjson(&msgs, &ndjson)?;
    let node_dir = a.keep.clone().unwrap_or_else(|| tmp.path().join("node"));
    if node_dir.join("sled").exists() {
        anyhow::bail!("{} already holds a node's data: give an empty directory", node_dir.display());
    }
    // The bus alone, with the same messages, then one event per message (at most a
    // million of them): the rates Gossamer's ingest is measured against.
    eprintln!("raw JetStream publish of the same {} messages ...", msgs.len());
    let (raw_rate, raw_single_rate) = rt.block_on(async {
        let client = gossamer_bus::connect(&server.url(), Duration::from_secs(10)).await?;
        raw_rates(&async_nats::jetstream::new(client), &msgs, 256, 1_000_000).await
    })?;
    // SQL that reads every event (Q4's) needs longer than the default minute at 10M.
    let config = tmp.path().join("node.json");
    std::fs::write(&config, serde_json::json!({"query_limits": {"sql_timeout_secs": 900}}).to_string())?;
    let mut extra = vec!["--config".to_string(), config.display().to_string()];
    if a.no_index {
        extra.extend(["--roles".to_string(), "ingest,shard,admin".to_string()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let node = NodeProcess::start_with(&server.url(), &node_dir, a.shards, &extra)?;
    eprintln!("ingesting through the request/reply path ...");
    let ingest_start = Instant::now();
    rt.block_on(async {
        let client = gossamer_bus::connect(&server.url(), Duration::from_secs(10)).await?;
        request_all(&client, "gossamer.default.ingest.", &msgs, 256).await?;
        wait_stored(&node, "loghub.", a.events as u64, Instant::now()).await
    })?;
    let ingest_rate = a.events as f64 / ingest_start.elapsed().as_secs_f64();
    drop(msgs);
    let base = format!("{}/api/v1", node.http);
    // Queries are complete while the index lags, but the figures are of indexed data.
    let waited = Instant::now();
    let bar = indicatif::ProgressBar::new_spinner();
    // Without the index role there is nothing to wait for.
    let mut waiting = !a.no_index;
    while waiting {
        let st: serde_json::Value = ureq::get(&format!("{base}/index")).call()?.into_json()?;
        let lag = st["lag_events"].as_u64().unwrap_or(u64::MAX);
        bar.set_message(format!("indexing: {lag} events left"));
        bar.tick();
        waiting = !(lag == 0 && st["dirty_blocks"] == 0);
        if waiting {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    bar.finish_and_clear();
    let index_wait_s = waited.elapsed().as_secs_f64();
    eprintln!("the index caught up {index_wait_s:.1} s after the last event was stored");
    let rg = std::process::Command::new("rg").arg("--version").output().is_ok();
    let f = ndjson.display();
    let mix: Vec<(&'static str, String, String, Option<String>)> = vec![
        (
            "Q1 selective, newest 100",
            "stream:loghub.hdfs exception".into(),
            "search?limit=100&q=".into(),
            Some(format!("rg -F '\"stream\":\"loghub.hdfs\"' {f} | rg -i -w exception | sort -r | head -100 | wc -l")),
        ),
        (
            "Q1 selective, count",
            "stream:loghub.hdfs exception".into(),
            "count?q=".into(),
            Some(format!("rg -F '\"stream\":\"loghub.hdfs\"' {f} | rg -c -i -w exception")),
        ),
        (
            "Q2 phrase count",
            "\"authentication failure\"".into(),
            "count?q=".into(),
            Some(format!("rg -c -i 'authentication\\W+failure' {f}")),
        ),
        ("Q3 count by level", String::new(), "aggregate?fn=count&by=level&q=".into(), None),
        ("Q4 p95 latency by dataset x minute", String::new(), "aggregate?fn=p95&field=latency_ms&by=dataset&bucket=1m&q=".into(), None),
        // The Loki door's LogQL beside the same questions in Gossamer's own syntax.
        (
            "L1 LogQL line filter, newest 100",
            "{stream=\"loghub.hdfs\"} |= \"exception\"".into(),
            format!("/loki/api/v1/query_range?limit=100&start={T0_NS}&end={}&query=", T0_NS + a.events as i64 * 1_000_000),
            None,
        ),
        ("L1 native, newest 100", "stream:loghub.hdfs message:~exception".into(), "search?limit=100&q=".into(), None),
        (
            "L2 LogQL count by level x 10m, filtered",
            "sum by (level) (count_over_time({stream=~\"loghub\\\\..*\"} |= \"error\" [10m]))".into(),
            format!("/loki/api/v1/query_range?step=600&start={}&end={}&query=", T0_NS + 600_000_000_000, T0_NS + a.events as i64 * 1_000_000 + 600_000_000_000),
            None,
        ),
        ("L2 native, same", "stream:loghub.* message:~error".into(), "aggregate?fn=count&by=level&bucket=10m&q=".into(), None),
        // The same questions as Q1-Q4 in SQL (`POST /api/v1/sql`).
        (
            "Q1 SQL selective, newest 100",
            "SELECT * FROM logs WHERE stream = 'loghub.hdfs' AND match(message, 'exception') ORDER BY ts DESC LIMIT 100".into(),
            SQL.into(),
            None,
        ),
        (
            "Q1 SQL selective, count",
            "SELECT count(*) AS n FROM logs WHERE stream = 'loghub.hdfs' AND match(message, 'exception')".into(),
            SQL.into(),
            None,
        ),
        ("Q2 SQL phrase count", "SELECT count(*) AS n FROM logs WHERE phrase(message, 'authentication failure')".into(), SQL.into(), None),
        ("Q3 SQL count by level", "SELECT level, count(*) AS n FROM logs GROUP BY level".into(), SQL.into(), None),
        (
            "Q4 SQL p95 latency by dataset x minute",
            "SELECT labels['dataset'] AS dataset, date_bin(INTERVAL '1 minute', ts) AS minute, \
             approx_percentile(json_get_float(fields, 'latency_ms'), 0.95) AS p95 FROM logs GROUP BY 1, 2"
                .into(),
            SQL.into(),
            None,
        ),
    ];
    // Each SQL form runs right after the native query it answers the same question as,
    // so both meet the node in the same state.
    let (sql, mut mix): (Vec<_>, Vec<_>) = mix.into_iter().partition(|m| m.2 == SQL);
    for s in sql.into_iter().rev() {
        let native = s.0.replace(" SQL", "");
        let at = mix.iter().position(|m| m.0 == native).map_or(mix.len(), |i| i + 1);
        mix.insert(at, s);
    }
    let mut figures = Vec::new();
    for (name, q, path, rg_cmd) in mix {
        let url = if path.starts_with('/') { format!("{}{path}{}", node.http, urlencode(&q)) } else { format!("{base}/{path}{}", urlencode(&q)) };
        let mut times = Vec::new();
        let mut answer = serde_json::Value::Null;
        // What reads every event in SQL is timed over fewer runs.
        let runs = if path == SQL && !q.contains("WHERE") && q.contains("approx_percentile") { a.runs.min(3) } else { a.runs };
        for run in 0..=runs {
            let start = Instant::now();
            let v: serde_json::Value = if path == SQL {
                ureq::post(&format!("{base}/sql")).send_json(serde_json::json!({ "sql": q }))?.into_json()?
            } else {
                ureq::get(&url).call()?.into_json()?
            };
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            if run > 0 {
                times.push(ms);
            }
            answer = match (&v["count"], &v["events"], &v["groups"]) {
                (c, _, _) if !c.is_null() => c.clone(),
                // SQL: a count's number, else how many rows.
                _ if v["rows"].is_array() => match v["rows"].as_array().map(Vec::as_slice) {
                    Some([one]) if one["n"].is_number() => one["n"].clone(),
                    rows => serde_json::json!(rows.map_or(0, |r| r.len())),
                },
                // Loki's shapes: lines of the streams, or samples of the series.
                _ if v["data"]["result"].is_array() => serde_json::json!(v["data"]["result"]
                    .as_array()
                    .map(|r| r.iter().map(|s| s["values"].as_array().map_or(0, |x| x.len())).sum::<usize>())),
                (_, e, _) if e.is_array() => serde_json::json!(e.as_array().map(|e| e.len())),
                (_, _, g) => serde_json::json!(g.as_array().map(|g| g.len())),
            };
        }
        times.sort_by(f64::total_cmp);
        let ripgrep_ms = match (&rg_cmd, rg) {
            (Some(cmd), true) => Some(time_shell(cmd)?.0),
            _ => None,
        };
        eprintln!("{name}: p50 {:.1} ms", percentile(&times, 0.5));
        figures.push(QueryFigure {
            name,
            what: if path == SQL { q.clone() } else { format!("{path}{q}") },
            answer,
            p50_ms: percentile(&times, 0.5),
            p99_ms: percentile(&times, 0.99),
            ripgrep_ms,
        });
    }
    // The whole store as NDJSON, oldest first, through the export route.
    let export_start = Instant::now();
    let mut reader = ureq::get(&format!("{base}/export")).call()?.into_reader();
    let (mut export_bytes, mut export_events, mut chunk) = (0u64, 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = std::io::Read::read(&mut reader, &mut chunk)?;
        if n == 0 {
            break;
        }
        export_bytes += n as u64;
        export_events += chunk[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    let export_s = export_start.elapsed().as_secs_f64();
    if export_events != a.events as u64 {
        anyhow::bail!("the export held {export_events} events, not {}", a.events);
    }
    let peak_rss_kb = peak_rss_kb(node.child.id());
    node.stop()?;
    let sled_bytes = dir_size(&node_dir.join("sled"));
    // The same node started again on its data, timed from its start to its first
    // complete answer: Q1's count, whole (no shard missing) and what it was before.
    eprintln!("restarting the node ...");
    let q1_count = figures.iter().find(|q| q.name == "Q1 selective, count").map(|q| q.answer.clone()).unwrap_or_default();
    let restart_start = Instant::now();
    let node = NodeProcess::start_with(&server.url(), &node_dir, a.shards, &extra)?;
    let url = format!("{}/api/v1/count?q={}", node.http, urlencode("stream:loghub.hdfs exception"));
    rt.block_on(poll_node(restart_start, || {
        let v: serde_json::Value = match ureq::get(&url).call() {
            Ok(r) => r.into_json()?,
            Err(e) => return Ok(Some(format!("no answer ({e})"))),
        };
        Ok((v["partial"] != false || v["count"] != q1_count).then(|| format!("no complete answer ({v})")))
    }))?;
    let restart_s = restart_start.elapsed().as_secs_f64();
    node.stop()?;
    drop(server);
    // The peers after the node has stopped, one at a time, so none shares the machine.
    let peers = if a.peers { crate::bench::peers::run_all(&ndjson, &tmp.path().join("peers"), a.runs)? } else { Vec::new() };
    println!("{} events, {} shards, {} timed runs per query; index caught up {index_wait_s:.1} s after ingest", a.events, a.shards, a.runs);
    println!(
        "ingest, request/reply to queryable {ingest_rate:.0} events/s; raw JetStream publish {raw_rate:.0} events/s (same messages), {raw_single_rate:.0} events/s (one per message)"
    );
    println!("{:<38} {:>10} {:>10} {:>12}  answer", "query", "p50 ms", "p99 ms", "ripgrep ms");
    for q in &figures {
        println!(
            "{:<38} {:>10.1} {:>10.1} {:>12}  {}",
            q.name,
            q.p50_ms,
            q.p99_ms,
            q.ripgrep_ms.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into()),
            q.answer
        );
    }
    println!(
        "node peak RSS {:.0} MiB; sled {:.1} bytes/event, NDJSON {:.1} bytes/event ({:.2} x)",
        peak_rss_kb as f64 / 1024.0,
        sled_bytes as f64 / a.events as f64,
        ndjson_bytes as f64 / a.events as f64,
        sled_bytes as f64 / ndjson_bytes as f64
    );
    println!(
        "export, NDJSON: {:.0} events/s, {:.1} MB/s ({:.1} MB, {:.2} x the generated NDJSON)",
        export_events as f64 / export_s,
        export_bytes as f64 / 1e6 / export_s,
        export_bytes as f64 / 1e6,
        export_bytes as f64 / ndjson_bytes as f64
    );
    println!("restart to the first complete answer: {:.2} s", restart_s);
    if !peers.is_empty() {
        let ours: Vec<(&str, f64, String)> = figures.iter().map(|q| (q.name, q.p50_ms, q.answer.to_string())).collect();
        crate::bench::peers::print_table(&peers, &ours, sled_bytes, peak_rss_kb, a.events as u64, ndjson_bytes);
    }
    if let Some(path) = &a.png {
        let bars: Vec<crate::bench::plot::Bar> = figures
            .iter()
            .map(|q| crate::bench::plot::Bar { label: q.name.to_string(), p50: q.p50_ms, p99: q.p99_ms, ripgrep: q.ripgrep_ms })
            .collect();
        let title = format!(
            "Gossamer, {} events on one node ({} shards): query latency, ms (log scale)",
            a.events, a.shards
        );
        crate::bench::plot::latency_png(path, &title, &bars)?;
        eprintln!("chart written to {}", path.display());
    }
    if let Some(path) = a.json {
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&serde_json::json!({
                "events": a.events,
                "shards": a.shards,
                "queries": figures,
                "peak_rss_kb": peak_rss_kb,
                "sled_bytes": sled_bytes,
                "ndjson_bytes": ndjson_bytes,
                "export_events_per_s": export_events as f64 / export_s,
                "export_bytes": export_bytes,
                "index_caught_up_after_s": index_wait_s,
                "restart_to_answer_s": restart_s,
                "ingest_events_per_s": ingest_rate,
                "raw_jetstream_events_per_s": raw_rate,
                "raw_jetstream_single_events_per_s": raw_single_rate,
                "peers": peers,
            }))?,
        )?;
    }
    Ok(())
}
