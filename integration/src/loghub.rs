//! The loghub samples as events, and the ground truth computed from their CSVs by the
//! tests' own reading of §9 (tokens, levels), independent of Gossamer's code.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde_json::{json, Map, Value};

/// First event time; event `i` of a dataset is `T0 + i` ms (plus the dataset's offset).
pub const T0_MS: i64 = 1_780_000_000_000;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/loghub")
}

/// One CSV row, as the test sees it.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: uuid::Uuid,
    pub ts_ms: i64,
    pub level: Option<String>,
    pub component: Option<String>,
    pub content: String,
    pub event_id: String,
    pub other: BTreeMap<String, String>,
}

pub struct Dataset {
    /// Lowercased name: the stream is `loghub.<name>`.
    pub name: String,
    pub rows: Vec<Row>,
}

impl Dataset {
    pub fn stream(&self) -> String {
        format!("loghub.{}", self.name)
    }
}

/// All 16 samples, sorted by name; dataset `d` starts at `T0_MS + d * 10_000_000`.
pub fn load() -> Vec<Dataset> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .expect("integration/testdata/loghub")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .iter()
        .enumerate()
        .map(|(d, name)| {
            let path = dir().join(name).join(format!("{name}_2k.log_structured.csv"));
            let mut rdr = csv::Reader::from_path(&path).unwrap();
            let headers: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
            let rows = rdr
                .records()
                .enumerate()
                .map(|(i, rec)| {
                    let rec = rec.unwrap();
                    let mut cols: BTreeMap<String, String> =
                        headers.iter().cloned().zip(rec.iter().map(String::from)).collect();
                    cols.remove("EventTemplate");
                    cols.remove("LineId");
                    Row {
                        id: uuid::Uuid::new_v4(),
                        ts_ms: T0_MS + d as i64 * 10_000_000 + i as i64,
                        level: cols.remove("Level"),
                        component: cols.remove("Component"),
                        content: cols.remove("Content").unwrap_or_default(),
                        event_id: cols.remove("EventId").unwrap_or_default(),
                        other: cols,
                    }
                })
                .collect();
            Dataset { name: name.to_lowercase(), rows }
        })
        .collect()
}

/// The event a row is published as: level and content as they are, the component and
/// the template id as labels, the other columns as fields (numbers as numbers).
pub fn event_json(ds: &Dataset, r: &Row) -> Value {
    let mut labels = Map::new();
    labels.insert("dataset".into(), json!(ds.name));
    labels.insert("event_id".into(), json!(r.event_id));
    if let Some(c) = &r.component {
        labels.insert("component".into(), json!(c));
    }
    let fields: Map<String, Value> = r
        .other
        .iter()
        .map(|(k, v)| (k.to_lowercase(), v.parse::<i64>().map(Value::from).unwrap_or_else(|_| json!(v))))
        .collect();
    let mut e = json!({
        "id": r.id.to_string(),
        "ts": r.ts_ms,
        "message": r.content,
        "labels": labels,
        "fields": fields,
    });
    if let Some(l) = &r.level {
        e["level"] = json!(l);
    }
    e
}

/// §9 tokens, written here apart from Gossamer's tokenizer: maximal runs of letters,
/// digits and `_`, lowercased.
pub fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
        .collect()
}

/// §9 level names, written here apart from Gossamer's table; none for a row without a
/// level (such an event keeps none).
pub fn level(raw: Option<&str>) -> Option<String> {
    let raw = raw?;
    let l = raw.trim().to_lowercase();
    let table: [(&str, &[&str]); 6] = [
        ("trace", &["trace", "verbose", "v"]),
        ("debug", &["debug", "d", "7"]),
        ("info", &["info", "notice", "informational", "i", "5", "6"]),
        ("warn", &["warn", "warning", "w", "4"]),
        ("error", &["error", "err", "severe", "e", "3"]),
        ("fatal", &["fatal", "critical", "crit", "alert", "emerg", "panic", "f", "0", "1", "2"]),
    ];
    Some(table.iter().find(|(_, names)| names.contains(&l.as_str())).map(|(n, _)| n.to_string()).unwrap_or(l))
}

/// Quotes a value for the text syntax.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What a query should count, from the rows alone.
fn expect(ds: &Dataset, pred: impl Fn(&Row) -> bool) -> u64 {
    ds.rows.iter().filter(|r| pred(r)).count() as u64
}

fn has_phrase(toks: &[String], phrase: &[String]) -> bool {
    toks.windows(phrase.len()).any(|w| w == phrase)
}

/// The queries checked for one dataset, with their expected counts.
pub fn count_cases(ds: &Dataset) -> Vec<(String, u64)> {
    let s = format!("stream:{}", ds.stream());
    let mut out = vec![(s.clone(), ds.rows.len() as u64)];

    let mut levels: BTreeMap<Option<String>, u64> = BTreeMap::new();
    for r in &ds.rows {
        *levels.entry(level(r.level.as_deref())).or_default() += 1;
    }
    for (l, n) in levels {
        match l {
            Some(l) => out.push((format!("{s} level:{}", quote(&l)), n)),
            // The events that came without a level keep none.
            None => out.push((format!("{s} -level:*"), n)),
        }
    }

    // The most common token that not every message has.
    let mut df: BTreeMap<String, u64> = BTreeMap::new();
    for r in &ds.rows {
        for t in tokens(&r.content).into_iter().collect::<HashSet<_>>() {
            *df.entry(t).or_default() += 1;
        }
    }
    let total = ds.rows.len() as u64;
    let (word, _) = df.iter().filter(|(_, n)| **n < total).max_by_key(|(t, n)| (**n, std::cmp::Reverse((*t).clone()))).unwrap();
    let word = word.clone();
    let has_word = |r: &Row| tokens(&r.content).contains(&word);
    out.push((format!("{s} {word}"), expect(ds, has_word)));
    out.push((format!("{s} -{word}"), expect(ds, |r| !has_word(r))));
    out.push((format!("{s} NOT {word}"), expect(ds, |r| !has_word(r))));

    // A phrase: the first two tokens of the middle row's message.
    let mid = ds.rows.iter().skip(ds.rows.len() / 2).find(|r| tokens(&r.content).len() >= 2).unwrap();
    let phrase: Vec<String> = tokens(&mid.content)[..2].to_vec();
    let has_p = |r: &Row| has_phrase(&tokens(&r.content), &phrase);
    out.push((format!("{s} \"{}\"", phrase.join(" ")), expect(ds, has_p)));
    out.push((format!("{s} ({word} OR \"{}\")", phrase.join(" ")), expect(ds, |r| has_word(r) || has_p(r))));

    // A prefix of the chosen word.
    let prefix: String = word.chars().take(3).collect();
    out.push((
        format!("{s} {prefix}*"),
        expect(ds, |r| tokens(&r.content).iter().any(|t| t.starts_with(&prefix))),
    ));

    // Labels: the most common component (or template id), and a label glob-free
    // inequality through NOT.
    let (key, value) = match ds.rows.iter().filter_map(|r| r.component.clone()).fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c).or_insert(0u64) += 1;
        m
    }) {
        m if !m.is_empty() => ("component", m.into_iter().max_by_key(|(_, n)| *n).unwrap().0),
        _ => ("event_id", ds.rows[0].event_id.clone()),
    };
    let label_of = |r: &Row| if key == "component" { r.component.clone() } else { Some(r.event_id.clone()) };
    out.push((format!("{s} {key}:{}", quote(&value)), expect(ds, |r| label_of(r).as_deref() == Some(&value))));
    out.push((
        format!("{s} {word} -{key}:{}", quote(&value)),
        expect(ds, |r| has_word(r) && label_of(r).as_deref() != Some(&value)),
    ));
    out
}

/// Publishes the datasets' events through the request/reply ingest path of cluster
/// `cluster` on the NATS server at `url`, 500 to a request, each request answered with
/// every event accepted.
pub fn publish<'a>(url: &str, cluster: &str, datasets: impl IntoIterator<Item = &'a Dataset>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        for ds in datasets {
            for chunk in ds.rows.chunks(500) {
                let body: String = chunk.iter().map(|r| format!("{}\n", event_json(ds, r))).collect();
                let reply = client.request(format!("gossamer.{cluster}.ingest.{}", ds.stream()), body.into()).await.unwrap();
                let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
                assert_eq!(reply["accepted"].as_u64(), Some(chunk.len() as u64), "{reply}");
            }
        }
    });
}
