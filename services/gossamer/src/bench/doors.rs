//! The HTTP doors under load, for `gossamer bench ingest --doors`: Loki pushes
//! (protobuf + snappy, as Promtail and Alloy send them) and Elasticsearch `_bulk`
//! requests of the same loghub events, several in flight, each answered once stored.

use anyhow::{bail, Context, Result};

use crate::bench::common::Row;

/// Loki push bodies of `per_push` lines, one stream per dataset (`app` names the
/// stream); the level and component are structured metadata.
pub fn loki_bodies(datasets: &[(String, Vec<Row>)], events: usize, per_push: usize, prefix: &str) -> (Vec<Vec<u8>>, u64) {
    use crate::rest::loki_api::proto::{EntryAdapter, LabelPair, PushRequest, StreamAdapter, Timestamp};
    use prost::Message;
    let t0: i64 = 1_780_000_000_000_000_000;
    let mut per_ds: Vec<Vec<EntryAdapter>> = (0..datasets.len()).map(|_| Vec::new()).collect();
    for i in 0..events {
        let d = i % datasets.len();
        let rows = &datasets[d].1;
        let row = &rows[(i / datasets.len()) % rows.len()];
        let ts = t0 + i as i64 * 1_000_000;
        per_ds[d].push(EntryAdapter {
            timestamp: Some(Timestamp { seconds: ts / 1_000_000_000, nanos: (ts % 1_000_000_000) as i32 }),
            line: row.message.clone(),
            structured_metadata: vec![
                LabelPair { name: "level".into(), value: row.level.clone() },
                LabelPair { name: "component".into(), value: row.component.clone() },
            ],
        });
    }
    let mut bodies = Vec::new();
    let mut bytes = 0u64;
    for (d, entries) in per_ds.into_iter().enumerate() {
        let labels = format!("{{app=\"{prefix}loghub.{}\", dataset=\"{}\"}}", datasets[d].0, datasets[d].0);
        for chunk in entries.chunks(per_push.max(1)) {
            let req = PushRequest { streams: vec![StreamAdapter { labels: labels.clone(), entries: chunk.to_vec() }] };
            let raw = req.encode_to_vec();
            bytes += raw.len() as u64;
            bodies.push(snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default());
        }
    }
    (bodies, bytes)
}

/// `_bulk` bodies of `per_request` documents, the index naming the stream.
pub fn bulk_bodies(datasets: &[(String, Vec<Row>)], events: usize, per_request: usize, prefix: &str) -> (Vec<Vec<u8>>, u64) {
    let t0: i64 = 1_780_000_000_000;
    let mut per_ds: Vec<Vec<String>> = vec![Vec::new(); datasets.len()];
    for i in 0..events {
        let d = i % datasets.len();
        let rows = &datasets[d].1;
        let row = &rows[(i / datasets.len()) % rows.len()];
        let doc = serde_json::json!({
            "@timestamp": t0 + i as i64,
            "level": row.level,
            "message": row.message,
            "labels": {"dataset": datasets[d].0, "component": row.component},
            "fields": {"event_id": row.event_id},
        });
        per_ds[d].push(doc.to_string());
    }
    let mut bodies = Vec::new();
    let mut bytes = 0u64;
    for (d, docs) in per_ds.into_iter().enumerate() {
        let action = format!("{{\"index\":{{\"_index\":\"{prefix}loghub.{}\"}}}}\n", datasets[d].0);
        for chunk in docs.chunks(per_request.max(1)) {
            let mut body = String::new();
            for doc in chunk {
                body.push_str(&action);
                body.push_str(doc);
                body.push('\n');
            }
            bytes += body.len() as u64;
            bodies.push(body.into_bytes());
        }
    }
    (bodies, bytes)
}

/// Posts every body to `url`, `in_flight` at once (a thread each), each checked.
pub fn post_all(url: &str, content_type: &str, bodies: &[Vec<u8>], in_flight: usize) -> Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..in_flight.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let agent = ureq::AgentBuilder::new().build();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(body) = bodies.get(i) else { return Ok(()) };
                        let r = agent.post(url).set("Content-Type", content_type).send_bytes(body).with_context(|| format!("POST {url}"))?;
                        if r.status() == 200 {
                            // Elasticsearch puts `errors` first, as a shipper reads it.
                            let text = r.into_string()?;
                            if !text.starts_with("{\"took\":") || !text[..text.len().min(40)].contains("\"errors\":false") {
                                bail!("the bulk request had refused items: {}", &text[..text.len().min(500)]);
                            }
                        } else if r.status() != 204 {
                            bail!("POST {url}: {}", r.status());
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a poster panicked"))??;
        }
        Ok(())
    })
}
