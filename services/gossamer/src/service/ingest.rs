//! Sending events into the cluster from a door that is not NATS (the Elasticsearch and
//! Loki doors, syslog): checked events to this node's ingest actor in process when it
//! runs one (they join its request rounds), else NDJSON through the request/reply
//! ingest path, in messages within the ingest limits and the bus's payload limit.
//! Either way they are answered once in the shard log, so what a door acknowledges is
//! as durable as a NATS ingest request; the events carry ids, so a retry stores nothing
//! twice.

use std::time::Duration;

use gossamer_schemas::Event;

use crate::handle::NodeHandle;

/// How long a message waits for the ingest actors' answer.
const INGEST_WAIT: Duration = Duration::from_secs(30);

/// Why a message's events were not stored.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The node is catching up: nothing was taken, try again later.
    Busy(String),
    /// Ingest refused the events (they were dead-lettered).
    Refused(String),
    /// No ingest actor answered.
    Unavailable(String),
}

/// Where stored events sit in the shard log, by shard (what a read-your-writes wait
/// waits for).
pub type Positions = gossamer_ingest::Positions;

/// Adds `more` to `into`, keeping the later position of each shard.
pub fn merge_positions(into: &mut Positions, more: &Positions) {
    for (shard, seq) in more {
        let at = into.entry(*shard).or_insert(0);
        *at = (*at).max(*seq);
    }
}

/// A read-your-writes request as a door spells it: how long to wait at most, or not.
pub use gossamer_ingest::parse_wait as wait_asked;

/// Sends one stream's documents (event JSON, each with its caller's position), in
/// messages within the limits; the outcome of each message for the positions it held
/// (where it sits in the shard log once stored).
pub async fn send_docs(node: &NodeHandle, stream: &str, docs: Vec<(usize, String)>) -> Vec<(Vec<usize>, Result<Positions, Refusal>)> {
    let subject = gossamer_schemas::subjects::Subjects::new(&node.cfg.cluster).ingest(stream);
    let max_bytes = node.cfg.limits.max_payload_bytes.min(node.nats.server_info().max_payload.saturating_sub(4096)).max(1);
    let max_events = node.cfg.limits.max_batch_events.max(1);
    // Each message's text sized once: growing a quarter-megabyte string step by step
    // costs fresh pages at every step.
    let mut left: usize = docs.iter().map(|(_, d)| d.len() + 1).sum();
    let mut chunks: Vec<(Vec<usize>, String)> = vec![(Vec::new(), String::with_capacity(left.min(max_bytes)))];
    for (pos, doc) in docs {
        let (ps, body) = chunks.last_mut().expect("one chunk");
        if !ps.is_empty() && (body.len() + doc.len() + 1 > max_bytes || ps.len() >= max_events) {
            chunks.push((Vec::new(), String::with_capacity(left.min(max_bytes))));
        }
        left -= doc.len() + 1;
        let (ps, body) = chunks.last_mut().expect("one chunk");
        ps.push(pos);
        body.push_str(&doc);
        body.push('\n');
    }
    chunks.retain(|(ps, _)| !ps.is_empty());
    let asks = chunks.into_iter().map(|(positions, body)| {
        let subject = subject.clone();
        async move {
            let request = async_nats::Request::new().payload(body.into()).timeout(Some(INGEST_WAIT));
            let outcome = match node.nats.send_request(subject, request).await {
                Ok(reply) => match serde_json::from_slice::<serde_json::Value>(&reply.payload) {
                    Ok(v) if v["accepted"].is_u64() => Ok(v["positions"]
                        .as_object()
                        .map(|p| p.iter().filter_map(|(s, q)| Some((s.parse().ok()?, q.as_u64()?))).collect())
                        .unwrap_or_default()),
                    Ok(v) if v["busy"] == true => Err(Refusal::Busy(v["error"].as_str().unwrap_or("busy").to_string())),
                    Ok(v) => Err(Refusal::Refused(v["error"].as_str().unwrap_or("refused").to_string())),
                    Err(e) => Err(Refusal::Unavailable(format!("an unreadable ingest answer: {e}"))),
                },
                Err(e) => Err(Refusal::Unavailable(format!("no ingest actor stored the batch: {e}"))),
            };
            (positions, outcome)
        }
    });
    futures::future::join_all(asks).await
}

/// A stable event id for a key (an Elasticsearch `_id`, a Loki line): the same key
/// always gives the same id, so a door's retry stores nothing twice.
pub fn stable_id(key: &str) -> uuid::Uuid {
    let hi = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), 1);
    let lo = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), 2);
    uuid::Builder::from_random_bytes((u128::from(hi) << 64 | u128::from(lo)).to_be_bytes()).into_uuid()
}

/// Reads one event object as ingest would and checks it within the node's limits, so a
/// door can refuse that one alone.
pub fn check_object(node: &NodeHandle, stream: &str, v: serde_json::Value) -> Result<Event, gossamer_schemas::DecodeError> {
    let seed = gossamer_schemas::IdSeed { received_ns: gossamer_schemas::time::now_ns(), seq: 0 };
    gossamer_schemas::decode::decode_object(stream, v, seed, &node.cfg.limits)
}

/// Sends one stream's events (each made or read by a door and checked within the
/// limits, with its caller's position): to this node's ingest actor in process when
/// it runs one (they join its request rounds), else as JSON through the request/reply
/// ingest path. The outcome for the positions each part held.
pub async fn send_events(node: &NodeHandle, stream: &str, events: Vec<(usize, Event)>) -> Vec<(Vec<usize>, Result<Positions, Refusal>)> {
    let Some(local) = &node.local_ingest else {
        let docs = events.into_iter().map(|(p, e)| (p, gossamer_schemas::decode::to_ingest_json(&e))).collect();
        return send_docs(node, stream, docs).await;
    };
    let per_part = node.cfg.limits.max_batch_events.max(1);
    let mut parts: Vec<(Vec<usize>, Vec<Event>)> = Vec::new();
    for (pos, e) in events {
        match parts.last_mut() {
            Some((ps, evs)) if evs.len() < per_part => {
                ps.push(pos);
                evs.push(e);
            }
            _ => parts.push((vec![pos], vec![e])),
        }
    }
    let sends = parts.into_iter().map(|(positions, evs)| async move {
        let outcome = match tokio::time::timeout(INGEST_WAIT, local.send(evs)).await {
            Ok(Ok(gossamer_ingest::LocalOutcome::Accepted { positions, .. })) => Ok(positions),
            Ok(Ok(gossamer_ingest::LocalOutcome::Busy(why))) => Err(Refusal::Busy(why)),
            Ok(Err(why)) => Err(Refusal::Unavailable(why)),
            Err(_) => Err(Refusal::Unavailable(format!("ingest did not store the events within {}s", INGEST_WAIT.as_secs()))),
        };
        (positions, outcome)
    });
    futures::future::join_all(sends).await
}

/// Checks one event's JSON against the node's ingest limits and decoding, as ingest will
/// read it, so a door can refuse that one alone.
pub fn check(node: &NodeHandle, stream: &str, event_json: &str) -> Result<(), gossamer_schemas::DecodeError> {
    let seed = gossamer_schemas::IdSeed { received_ns: gossamer_schemas::time::now_ns(), seq: 0 };
    gossamer_schemas::decode_payload(stream, event_json.as_bytes(), None, seed, &node.cfg.limits).map(|_| ())
}
