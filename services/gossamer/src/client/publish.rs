//! Publishing to Gossamer over NATS: NDJSON or plain lines, in batches, by request
//! to the ingest actors or by JetStream publish, with a progress bar.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Largest message `publish` builds (NATS refuses more than its max payload, 1 MiB by
/// default).
const MAX_MESSAGE_BYTES: usize = 512 * 1024;
/// Messages waiting for their JetStream ack at once.
const IN_FLIGHT: usize = 64;

pub struct PublishArgs {
    pub nats: String,
    pub auth: gossamer_config::NatsAuth,
    pub cluster: String,
    /// Publish to `logs.<stream>` with JetStream acks instead of requesting
    /// `gossamer.<cluster>.ingest.<stream>`.
    pub jetstream: bool,
    /// Every line's stream; without one, each JSON line's own `stream` key routes it.
    pub stream: Option<String>,
    pub input: Option<PathBuf>,
    pub batch: usize,
    pub progress: bool,
    /// Read-your-writes: after the last answer, wait up to this long until every event
    /// is queryable on every replica (request path only).
    pub wait: Option<std::time::Duration>,
}

#[derive(Debug, Default)]
pub struct PublishReport {
    pub events: u64,
    pub messages: u64,
    /// Lines that looked like JSON but did not parse: each was sent alone, so it lands
    /// in the dead-letter stream with its reason without taking a batch with it.
    pub invalid_lines: u64,
    /// Messages Gossamer answered with an error (request path): dead-lettered.
    pub rejected: Vec<String>,
    pub seconds: f64,
    /// Where the stored events sit in the shard log (request path).
    pub positions: gossamer_ingest::Positions,
    /// The read-your-writes wait's answer, when one was asked for.
    pub waited: Option<Value>,
}

/// Publishes the lines of a file (or stdin): JSON lines as they are, other lines as
/// `{"message": line}`, in NDJSON batches, each event given an id when it has none so a
/// retried message stores nothing twice. By default each batch is a request to the
/// ingest actors, answered once stored (retried on time-out); with `jetstream`, a
/// JetStream publish to `logs.<stream>`, acked once buffered. Without a stream, each
/// JSON line's `stream` key (taken out of the event) says where it goes; a line without
/// one stops the publish, after what came before it is sent and answered.
pub async fn publish(args: PublishArgs) -> Result<PublishReport> {
    if let Some(stream) = &args.stream {
        if !gossamer_schemas::event::is_valid_stream(stream) {
            bail!("invalid stream name {stream:?}: use dot-separated tokens of [A-Za-z0-9_-]");
        }
    }
    let (reader, total): (Box<dyn Read + Send>, Option<u64>) = match &args.input {
        Some(p) if p.as_os_str() != "-" => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let len = f.metadata().map(|m| m.len()).ok();
            (Box::new(f), len)
        }
        _ => (Box::new(std::io::stdin()), None),
    };
    let bar = if !args.progress {
        ProgressBar::hidden()
    } else if let Some(total) = total {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::new_spinner()
    };
    let client = gossamer_bus::connect_with(&args.nats, &args.auth, std::time::Duration::from_secs(10)).await?;
    let sink = if args.jetstream {
        Sink::JetStream(async_nats::jetstream::new(client.clone()))
    } else {
        Sink::Request(client.clone())
    };
    let subjects = gossamer_schemas::subjects::Subjects::new(&args.cluster);
    let subject_of = |stream: &str| if args.jetstream { format!("logs.{stream}") } else { subjects.ingest(stream) };
    let start = Instant::now();
    let mut report = PublishReport::default();
    let mut acks = FuturesUnordered::new();
    // Per stream: its subject, the NDJSON batch being built, and its events.
    let mut batches: std::collections::HashMap<String, (String, String, u64)> = Default::default();
    let mut stopped = None;
    let mut number = 0u64;

    let mut lines = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        let n = lines.read_line(&mut line).context("reading input")?;
        if n == 0 {
            break;
        }
        bar.inc(n as u64);
        number += 1;
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        // A JSON line is read for its `stream` and `id` keys alone and sent as it is
        // (ingest takes the `stream` key out); one without an id gets one spliced in.
        let parsed: Result<(Option<String>, String), ()> = if text.trim_start().starts_with('{') {
            match serde_json::from_str::<Peek>(text) {
                Ok(peek) => {
                    let stream = match peek.stream {
                        None => None,
                        Some(Value::String(s)) => Some(s),
                        Some(other) => Some(other.to_string()),
                    };
                    Ok((stream, if peek.id.is_some() { text.to_string() } else { splice_id(text) }))
                }
                Err(_) => Err(()),
            }
        } else {
            // A plain line: with the level it says it has, as Gossamer reads a text line.
            let mut o = serde_json::Map::new();
            if let Some(level) = gossamer_schemas::levels::detect_level(text) {
                o.insert("level".into(), Value::String(level));
            }
            o.insert("message".into(), Value::String(text.to_string()));
            Ok((None, with_id(o)))
        };
        let (stream, event) = match (&args.stream, parsed) {
            (Some(stream), Ok((_, event))) => (stream.clone(), event),
            (Some(stream), Err(())) => {
                // Alone, so the dead letter holds just this line.
                report.invalid_lines += 1;
                send(&sink, &subject_of(stream), text.to_string(), &mut acks, &mut report, 1).await?;
                continue;
            }
            (None, Ok((Some(s), event))) if gossamer_schemas::event::is_valid_stream(&s) => (s, event),
            (None, Ok((Some(other), _))) => {
                stopped = Some(format!("line {number}: {other:?} is not a stream name (dot-separated tokens of [A-Za-z0-9_-])"));
                break;
            }
            (None, Ok((None, _))) => {
                stopped = Some(format!("line {number} has no `stream` key: give --stream for lines without one"));
                break;
            }
            (None, Err(())) => {
                stopped = Some(format!("line {number} is not valid JSON, so it names no stream: give --stream to publish it"));
                break;
            }
        };
        let (subject, buf, in_buf) = batches.entry(stream.clone()).or_insert_with(|| (subject_of(&stream), String::new(), 0));
        if !buf.is_empty() && buf.len() + event.len() + 1 > MAX_MESSAGE_BYTES {
            send(&sink, subject, std::mem::take(buf), &mut acks, &mut report, *in_buf).await?;
            *in_buf = 0;
        }
        buf.push_str(&event);
        buf.push('\n');
        *in_buf += 1;
        if *in_buf as usize >= args.batch {
            send(&sink, subject, std::mem::take(buf), &mut acks, &mut report, *in_buf).await?;
            *in_buf = 0;
        }
        bar.set_message(format!("{} events", report.events));
    }
    for (subject, buf, in_buf) in batches.into_values() {
        if in_buf > 0 {
            send(&sink, &subject, buf, &mut acks, &mut report, in_buf).await?;
        }
    }
    while let Some(r) = acks.next().await {
        take(r?, &mut report);
    }
    client.flush().await?;
    bar.finish_and_clear();
    report.seconds = start.elapsed().as_secs_f64();
    if let Some(timeout) = args.wait {
        report.waited = Some(gossamer_ingest::wait_queryable(&client, &subjects, &report.positions, timeout).await);
    }
    if let Some(why) = stopped {
        bail!("{why} ({} events before it were published)", report.events);
    }
    Ok(report)
}

/// Where `publish` sends its messages.
enum Sink {
    JetStream(async_nats::jetstream::Context),
    Request(async_nats::Client),
}

/// How many times a request is sent before `publish` gives up on it.
const REQUEST_ATTEMPTS: usize = 5;
/// Busy answers (the node catching up) waited out, 200 ms apart, before giving up.
const BUSY_ATTEMPTS: usize = 600;

/// A message's answer: why Gossamer refused it, or where its events were stored.
type Answered = Result<gossamer_ingest::Positions, String>;
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answered>> + Send>>;

fn take(answered: Answered, report: &mut PublishReport) {
    match answered {
        Ok(at) => {
            for (shard, seq) in at {
                let p = report.positions.entry(shard).or_insert(0);
                *p = (*p).max(seq);
            }
        }
        Err(rejected) => report.rejected.push(rejected),
    }
}

/// What `publish` reads of a JSON line: its stream and whether it has an id (the rest
/// is skipped over, not built).
#[derive(serde::Deserialize)]
struct Peek {
    #[serde(default)]
    stream: Option<Value>,
    #[serde(default)]
    id: Option<serde::de::IgnoredAny>,
}

/// A JSON object's text with `"id":"<fresh UUIDv7>"` as its first key.
fn splice_id(object: &str) -> String {
    let object = object.trim();
    let rest = object[1..].trim_start();
    let id = uuid::Uuid::now_v7();
    if rest.starts_with('}') {
        format!("{{\"id\":\"{id}\"}}")
    } else {
        format!("{{\"id\":\"{id}\",{rest}")
    }
}

/// The JSON of `o`, with a fresh UUIDv7 `id` when it has none.
fn with_id(mut o: serde_json::Map<String, Value>) -> String {
    if !o.contains_key("id") {
        o.insert("id".into(), Value::String(uuid::Uuid::now_v7().to_string()));
    }
    Value::Object(o).to_string()
}

/// Sends one message; its future resolves to `Some(reason)` when Gossamer refused it.
async fn send(
    sink: &Sink,
    subject: &str,
    body: String,
    acks: &mut FuturesUnordered<Pending>,
    report: &mut PublishReport,
    events: u64,
) -> Result<()> {
    while acks.len() >= IN_FLIGHT {
        if let Some(r) = acks.next().await {
            take(r?, report);
        }
    }
    let body = Bytes::from(body);
    let fut: Pending = match sink {
        Sink::JetStream(js) => {
            let ack = js.publish(subject.to_string(), body).await.context("publishing")?;
            Box::pin(async move {
                ack.await.context("the bus refused a message")?;
                Ok(Ok(Default::default()))
            })
        }
        Sink::Request(client) => {
            let (client, subject) = (client.clone(), subject.to_string());
            Box::pin(async move {
                let mut last = None;
                let mut busy = 0;
                let mut attempt = 0;
                while attempt < REQUEST_ATTEMPTS {
                    attempt += 1;
                    match client.request(subject.clone(), body.clone()).await {
                        Ok(reply) => {
                            let v: Value = serde_json::from_slice(&reply.payload).context("reading an ingest reply")?;
                            if v["busy"] == true {
                                // Nothing was taken: the node is catching up.
                                busy += 1;
                                if busy > BUSY_ATTEMPTS {
                                    bail!("the node stayed busy: {}", v["error"].as_str().unwrap_or(""));
                                }
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                                attempt -= 1;
                                continue;
                            }
                            if let Some(e) = v["error"].as_str() {
                                return Ok(Err(e.to_string()));
                            }
                            let at = v["positions"]
                                .as_object()
                                .map(|p| p.iter().filter_map(|(s, q)| Some((s.parse().ok()?, q.as_u64()?))).collect())
                                .unwrap_or_default();
                            return Ok(Ok(at));
                        }
                        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                            bail!("no Gossamer ingest actor answers on {subject}: is a node running against this NATS?")
                        }
                        // Timed out: the batch may or may not be stored; its ids make the
                        // retry safe.
                        Err(e) => last = Some(e),
                    }
                }
                bail!("no answer to an ingest request after {REQUEST_ATTEMPTS} attempts: {}", last.map(|e| e.to_string()).unwrap_or_default())
            })
        }
    };
    acks.push(fut);
    report.messages += 1;
    report.events += events;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_spliced_into_a_line_without_one() {
        for line in [r#"{"message":"a","stream":"x"}"#, "  { \"message\" : \"b\" }  ", "{}"] {
            let v: serde_json::Map<String, Value> = serde_json::from_str(&splice_id(line)).unwrap();
            assert!(uuid::Uuid::parse_str(v["id"].as_str().unwrap()).is_ok(), "{line}");
            let before: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
            assert_eq!(v.len(), before.len() + 1);
        }
        let peek: Peek = serde_json::from_str(r#"{"id":"x","stream":"a.b","nested":{"stream":"no"}}"#).unwrap();
        assert_eq!((peek.id.is_some(), peek.stream), (true, Some(Value::String("a.b".into()))));
        let peek: Peek = serde_json::from_str(r#"{"message":"m"}"#).unwrap();
        assert!(peek.id.is_none() && peek.stream.is_none());
    }
}
