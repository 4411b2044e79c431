//! All 16 loghub samples published through NATS, and every count checked against the
//! CSVs: stored events, levels, tokens, phrases, prefixes, labels, NOT and OR, globs,
//! time ranges, paging and get by id.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use gossamer_integration::loghub::{self, event_json, level, Dataset};
use gossamer_integration::{enc, js_publish, Nats, Node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loghub_samples_are_stored_and_every_count_matches_the_csv() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let datasets = loghub::load();
    assert_eq!(datasets.len(), 16);
    let total: usize = datasets.iter().map(|d| d.rows.len()).sum();

    let js = async_nats::jetstream::new(nats.client().await);
    for ds in &datasets {
        for chunk in ds.rows.chunks(250) {
            let body: String = chunk.iter().map(|r| format!("{}\n", event_json(ds, r))).collect();
            js_publish(&js, &format!("logs.{}", ds.stream()), body.into_bytes()).await;
        }
    }
    let n = tokio::task::spawn_blocking(move || {
        node.wait_count("", total as u64, Duration::from_secs(120));
        node
    })
    .await
    .unwrap();
    let node = n;

    let mut failures = Vec::new();
    let mut checked = 0;
    for ds in &datasets {
        for (q, want) in loghub::count_cases(ds) {
            let got = node.count(&q);
            checked += 1;
            if got != want {
                failures.push(format!("{q:?}: got {got}, want {want}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} counts differ from the CSV:\n{}", failures.len(), failures.join("\n"));

    // `key:*` is "the key exists": rows with a Component column have the label, the
    // others not; an event has a level when its row has one (none is assigned).
    let with_component = datasets.iter().flat_map(|d| &d.rows).filter(|r| r.component.is_some()).count() as u64;
    assert!(with_component > 0 && with_component < total as u64);
    assert_eq!(node.count("component:*"), with_component);
    assert_eq!(node.count("-labels.component:*"), total as u64 - with_component);
    let with_level = datasets.iter().flat_map(|d| &d.rows).filter(|r| r.level.is_some()).count() as u64;
    assert!(with_level > 0 && with_level < total as u64);
    assert_eq!(node.count("level:*"), with_level);
    assert_eq!(node.count("-level:*"), total as u64 - with_level);
    assert_eq!(node.count("dataset:* -event_id:*"), 0);

    // Globs across streams.
    assert_eq!(node.count("stream:loghub.*"), total as u64);
    let h: u64 = datasets.iter().filter(|d| d.name.starts_with('h')).map(|d| d.rows.len() as u64).sum();
    assert_eq!(node.count("stream:loghub.h*"), h);

    // Streams and their counts.
    let (status, body) = node.get("/api/v1/streams");
    assert_eq!(status, 200);
    let streams: BTreeMap<String, u64> = body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["events"].as_u64().unwrap()))
        .collect();
    let want: BTreeMap<String, u64> = datasets.iter().map(|d| (d.stream(), d.rows.len() as u64)).collect();
    assert_eq!(streams, want);

    // A time range: events [100, 600) of the HDFS sample.
    let hdfs = datasets.iter().find(|d| d.name == "hdfs").unwrap();
    let from = gossamer_integration_time(hdfs.rows[100].ts_ms);
    let to = gossamer_integration_time(hdfs.rows[600].ts_ms);
    let (status, body) = node.get(&format!("/api/v1/count?q=&from={}&to={}", enc(&from), enc(&to)));
    assert_eq!((status, body["count"].as_u64()), (200, Some(500)), "{body}");

    // Paging with the cursor returns every HDFS event once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/search?q={}&limit=300", enc(&format!("stream:{}", hdfs.stream())));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        let (status, body) = node.get(&path);
        assert_eq!(status, 200, "{body}");
        for e in body["events"].as_array().unwrap() {
            seen.push((e["ts"].as_str().unwrap().to_string(), e["id"].as_str().unwrap().to_string()));
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), hdfs.rows.len());
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "pages are newest first, without repeats");
    let ids: HashSet<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    let want_ids: HashSet<String> = hdfs.rows.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids, want_ids);

    // Oldest first gives the first rows in order.
    let (_, body) = node.get(&format!("/api/v1/search?q={}&order=asc&limit=3", enc("stream:loghub.hdfs")));
    let first: Vec<&str> = body["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    let want_first: Vec<String> = hdfs.rows[..3].iter().map(|r| r.id.to_string()).collect();
    assert_eq!(first, want_first);

    // Get by id returns the event as published, normalised.
    for ds in datasets.iter().step_by(5) {
        let r = &ds.rows[7];
        let (status, e) = node.get(&format!("/api/v1/events/{}", r.id));
        assert_eq!(status, 200);
        assert_eq!(e["message"], r.content);
        assert_eq!(e["stream"], ds.stream());
        assert_eq!(e["level"], serde_json::json!(level(r.level.as_deref())), "no level is null");
        assert_eq!(e["ts"], gossamer_integration_time(r.ts_ms));
        assert_eq!(e["labels"]["dataset"], ds.name);
    }

    check_aggregations(&node, &datasets);
    check_sorts(&node, &datasets);
}

/// Searches ordered by fields and levels page through every event once, in the order
/// the CSVs give: a number field descending (rows without it last), then time; a level
/// ascending (events without one last), then time descending.
fn check_sorts(node: &Node, datasets: &[Dataset]) {
    let pages = |q: &str, sort: &str, limit: usize| {
        let mut ids = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, body) = node.get(&format!("/api/v1/search?q={}&sort={}&limit={limit}&cursor={}", enc(q), enc(sort), enc(&cursor)));
            assert_eq!(status, 200, "{q} sorted by {sort}: {body}");
            ids.extend(body["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()));
            match body["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return ids,
            }
        }
    };
    // The pid, where a row has one: largest first, ties oldest first, then by id.
    let with_pid = datasets.iter().find(|d| d.rows.iter().any(|r| r.other.keys().any(|k| k.eq_ignore_ascii_case("pid")))).unwrap();
    // Numbers first, then text, then rows without one.
    let pid = |r: &loghub::Row| match r.other.iter().find(|(k, _)| k.eq_ignore_ascii_case("pid")).map(|(_, v)| v) {
        None => (2, Reverse(0), Reverse(String::new())),
        Some(v) => match v.parse::<i64>() {
            Ok(n) => (0, Reverse(n), Reverse(String::new())),
            Err(_) => (1, Reverse(0), Reverse(v.clone())),
        },
    };
    let mut rows: Vec<&loghub::Row> = with_pid.rows.iter().collect();
    rows.sort_by_key(|r| (pid(r), r.ts_ms, r.id));
    let want: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(pages(&format!("stream:{}", with_pid.stream()), "fields.pid:desc,ts", 700), want, "{}: by pid", with_pid.name);

    // A level (none last), then the newest first, over a sample with levels and one
    // without.
    let without = datasets.iter().find(|d| d.rows.iter().all(|r| r.level.is_none())).unwrap();
    let mut rows: Vec<&loghub::Row> = with_pid.rows.iter().chain(&without.rows).collect();
    rows.sort_by_key(|r| (level(r.level.as_deref()).is_none(), level(r.level.as_deref()), Reverse((r.ts_ms, r.id))));
    let want: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    let q = format!("stream:{} OR stream:{}", with_pid.stream(), without.stream());
    assert_eq!(pages(&q, "level,ts:desc", 1500), want, "by level");

    // The same first page through POST /api/v1/query.
    let body = serde_json::json!({"q": q, "sort": "level,ts:desc", "limit": 5}).to_string();
    let (status, body) = gossamer_integration::http_post(&format!("{}/api/v1/query", node.http), "application/json", body.as_bytes());
    assert_eq!(status, 200, "{body}");
    let first: Vec<&str> = body["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(first, want[..5].iter().map(String::as_str).collect::<Vec<_>>());

    // Bad sorts and cursors are named.
    for (params, text) in [
        ("sort=ts:sideways", "is not a direction"),
        ("sort=level&order=asc", "not both"),
        ("sort=level&cursor=12_0", "invalid cursor"),
    ] {
        let (status, body) = node.get(&format!("/api/v1/search?{params}"));
        assert_eq!(status, 400, "{params}: {body}");
        assert!(body["error"].as_str().unwrap().contains(text), "{params}: {body}");
    }
}

/// Aggregations over the loghub events equal what the CSVs give: counts by level and
/// component, sum/min/max of the pid exactly, p95 within the sketch's 1% bound, and
/// time buckets.
fn check_aggregations(node: &Node, datasets: &[Dataset]) {
    let agg = |params: &str| {
        let (status, body) = node.get(&format!("/api/v1/aggregate?{params}"));
        assert_eq!(status, 200, "{params}: {body}");
        body["groups"].as_array().unwrap().clone()
    };
    for ds in datasets {
        let q = enc(&format!("stream:{}", ds.stream()));
        // Count by level.
        // Count by level (null for the events that came without one).
        let mut want: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for r in &ds.rows {
            *want.entry(level(r.level.as_deref())).or_default() += 1;
        }
        let got: BTreeMap<Option<String>, u64> = agg(&format!("q={q}&fn=count&by=level"))
            .iter()
            .map(|g| (g["key"]["level"].as_str().map(String::from), g["value"].as_u64().unwrap()))
            .collect();
        assert_eq!(got, want, "{}: count by level", ds.name);

        // Count by component (null where the sample has none).
        let mut want: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for r in &ds.rows {
            *want.entry(r.component.clone()).or_default() += 1;
        }
        let got: BTreeMap<Option<String>, u64> = agg(&format!("q={q}&fn=count&by=component"))
            .iter()
            .map(|g| (g["key"]["component"].as_str().map(String::from), g["value"].as_u64().unwrap()))
            .collect();
        assert_eq!(got, want, "{}: count by component", ds.name);

        // Numeric aggregations of the pid, where the sample has one.
        let mut pids: Vec<f64> = ds
            .rows
            .iter()
            .filter_map(|r| r.other.iter().find(|(k, _)| k.eq_ignore_ascii_case("pid")).and_then(|(_, v)| v.parse::<i64>().ok()))
            .map(|p| p as f64)
            .collect();
        if pids.is_empty() {
            continue;
        }
        pids.sort_by(f64::total_cmp);
        let one = |f: &str| agg(&format!("q={q}&fn={f}&field=pid"))[0]["value"].as_f64().unwrap();
        assert_eq!(one("sum"), pids.iter().sum::<f64>(), "{}: sum", ds.name);
        assert_eq!(one("min"), pids[0], "{}: min", ds.name);
        assert_eq!(one("max"), *pids.last().unwrap(), "{}: max", ds.name);
        let p95 = one("p95");
        // Any rank definition lands between these two values; the sketch adds 1%.
        let lo = pids[((0.95 * (pids.len() - 1) as f64).floor() as usize).saturating_sub(1)];
        let hi = pids[((0.95 * pids.len() as f64).ceil() as usize).min(pids.len() - 1)];
        assert!(p95 >= lo * 0.99 && p95 <= hi * 1.01, "{}: p95 {p95} outside [{lo}, {hi}] +-1%", ds.name);
    }

    // Time buckets: each sample spans two seconds, 1,000 events a second.
    let groups = agg(&format!("q={}&fn=count&bucket=1s", enc("stream:loghub.hdfs")));
    let counts: Vec<u64> = groups.iter().map(|g| g["value"].as_u64().unwrap()).collect();
    assert_eq!(counts, vec![1000, 1000]);
    let hdfs = datasets.iter().find(|d| d.name == "hdfs").unwrap();
    assert_eq!(groups[0]["bucket"], gossamer_integration_time(hdfs.rows[0].ts_ms));
    // And by dataset label across all streams.
    let groups = agg("q=&fn=count&by=dataset");
    assert_eq!(groups.len(), datasets.len());
    assert!(groups.iter().all(|g| g["value"] == 2000));
    // Bad aggregation requests.
    for (params, text) in [("fn=median", "unknown `fn`"), ("fn=sum", "`field` is required"), ("fn=count&bucket=soon", "invalid `bucket`")] {
        let (status, body) = node.get(&format!("/api/v1/aggregate?{params}"));
        assert_eq!(status, 400, "{params}");
        assert!(body["error"].as_str().unwrap().contains(text), "{params}: {body}");
    }
}

/// RFC 3339 with nanoseconds, as the API prints `ts`.
fn gossamer_integration_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let nanos = (ms.rem_euclid(1000) * 1_000_000) as u32;
    let dt = time_from_unix(secs);
    format!("{dt}.{nanos:09}Z")
}

/// `YYYY-MM-DDTHH:MM:SS` for a Unix time (UTC), by the civil-from-days algorithm.
fn time_from_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The level found in each raw log line (as a plain-text line is read at ingest) equals
/// the level the loghub CSV gives that line, normalised, for at least 99% of the lines
/// of every sample whose Level column holds levels (Linux's holds the host name).
#[test]
fn the_level_found_in_a_raw_line_is_the_one_its_csv_row_gives() {
    let datasets = loghub::load();
    let mut checked = 0;
    for entry in std::fs::read_dir(loghub::dir()).unwrap().map(Result::unwrap) {
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        let raw = entry.path().join(format!("{dir_name}_2k.log"));
        if !raw.exists() {
            continue;
        }
        let ds = datasets.iter().find(|d| d.name == dir_name.to_lowercase()).expect("a dataset for each raw log");
        let lines: Vec<String> = String::from_utf8_lossy(&std::fs::read(&raw).unwrap()).lines().map(String::from).collect();
        assert_eq!(lines.len(), ds.rows.len(), "{dir_name}: one CSV row per line");
        let mut wrong = Vec::new();
        for (line, row) in lines.iter().zip(&ds.rows) {
            let want = level(row.level.as_deref());
            let found = gossamer_schemas::levels::detect_level(line);
            if found != want {
                wrong.push(format!("{found:?} for {want:?}: {line}"));
            }
        }
        let share = 1.0 - wrong.len() as f64 / lines.len() as f64;
        eprintln!("{dir_name}: level found in {:.2}% of the raw lines", share * 100.0);
        assert!(share >= 0.99, "{dir_name}: {:.1}% right; first misses:\n{}", share * 100.0, wrong[..wrong.len().min(5)].join("\n"));
        checked += 1;
    }
    assert_eq!(checked, 9, "the nine samples with levels have their raw lines here");
}
