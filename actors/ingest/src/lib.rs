//! The ingest actor: pulls what producers published on `logs.>` from the LOGS stream
//! (one durable consumer shared by every ingest actor), decodes and normalises it,
//! routes each event to its shard and publishes one batch per shard to the SHARDS
//! stream. A LOGS message is acked only once every batch it contributed to has the bus's
//! ack, so a crash at any point redelivers it; ids are deterministic per message, so the
//! redelivery stores nothing twice. What cannot be decoded goes to the dead-letter
//! stream with the reason, and the rest of the round goes on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use async_nats::HeaderMap;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use gossamer_bus::StreamNames;
use gossamer_config::Config;
use gossamer_schemas::subjects::{Subjects, HEADER_ERROR, HEADER_SUBJECT, LOGS_PREFIX, LOGS_SUBJECTS};
use gossamer_schemas::batch::{SealedBlock, BLOCK_EVENTS};
use gossamer_schemas::{decode_payload, shard_for, Event, IdSeed, ShardCommand};
use serde::Serialize;
use tracing::{info, warn};

/// Largest encoded shard batch; NATS refuses messages past its max payload (1 MiB by
/// default), so bigger batches are split.
const MAX_BATCH_BYTES: usize = 768 * 1024;
const PURGE_EVERY: Duration = Duration::from_secs(5);

/// Events a door of this node has read and checked (the Loki and Elasticsearch doors),
/// handed to ingest in process instead of as JSON over NATS: they join the request
/// path's rounds, so shard batches stay as large, and are answered as a request is.
pub struct LocalBatch {
    pub events: Vec<Event>,
    pub reply: tokio::sync::oneshot::Sender<LocalOutcome>,
}

#[derive(Debug, Clone)]
pub enum LocalOutcome {
    /// In the shard log, at these positions.
    Accepted { events: usize, positions: Positions },
    /// The node is catching up: nothing was taken.
    Busy(String),
}

/// The sending side of the in-process way in.
#[derive(Clone)]
pub struct LocalIngest {
    tx: tokio::sync::mpsc::Sender<LocalBatch>,
}

impl LocalIngest {
    /// Hands `events` to ingest; `Err` when ingest is gone or failed the round (the
    /// events carry ids, so sending them again is safe).
    pub async fn send(&self, events: Vec<Event>) -> std::result::Result<LocalOutcome, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(LocalBatch { events, reply }).await.map_err(|_| "the ingest actor has stopped".to_string())?;
        answer.await.map_err(|_| "the ingest round failed before storing the events".to_string())
    }
}

type LocalReceiver = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<LocalBatch>>>;

/// Counters an operator (and a test) reads.
#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    events: AtomicU64,
    dead_letters: AtomicU64,
    batches: AtomicU64,
    requests: AtomicU64,
    /// Set once the request subscription is in place.
    serving_requests: std::sync::atomic::AtomicBool,
    /// Set once the LOGS consumer is pulling.
    pulling_logs: std::sync::atomic::AtomicBool,
}

/// The ingest actor's observable state.
#[derive(Debug, Clone, Default, Serialize, MessageResponse)]
pub struct IngestState {
    /// LOGS messages handled (acked).
    pub messages: u64,
    /// Events sent to the shard log.
    pub events: u64,
    /// Messages dead-lettered.
    pub dead_letters: u64,
    /// Shard batches published.
    pub batches: u64,
    /// Ingest requests answered (the request/reply path).
    pub requests: u64,
    /// Both ways in are open: requests are subscribed and LOGS is being pulled.
    pub ready: bool,
    /// Times ingest stopped taking events because the node was behind.
    pub paused_total: u64,
    /// Ingest is waiting for the node to catch up now.
    pub paused: bool,
    pub last_error: Option<String>,
}

#[derive(Message)]
#[rtype(result = "IngestState")]
pub struct GetState;

pub struct IngestActor {
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: Config,
    names: StreamNames,
    counters: Arc<Counters>,
    last_error: Arc<Mutex<Option<String>>>,
    pressure: Arc<gossamer_bus::Pressure>,
    local_tx: tokio::sync::mpsc::Sender<LocalBatch>,
    local_rx: LocalReceiver,
}

/// The actor's two ways in.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// Pulling what producers published on `logs.>` from LOGS.
    Logs,
    /// Answering requests on `gossamer.<cluster>.ingest.>`.
    Requests,
}

impl IngestActor {
    /// `pressure` says when the node's writers are too far behind to take more.
    pub fn new(client: async_nats::Client, cfg: Config, names: StreamNames, pressure: Arc<gossamer_bus::Pressure>) -> Self {
        let js = jetstream::new(client.clone());
        let (local_tx, local_rx) = tokio::sync::mpsc::channel(64);
        let local_rx = Arc::new(tokio::sync::Mutex::new(local_rx));
        Self { client, js, cfg, names, counters: Arc::default(), last_error: Arc::default(), pressure, local_tx, local_rx }
    }

    /// The in-process way in, for this node's HTTP doors.
    pub fn local(&self) -> LocalIngest {
        LocalIngest { tx: self.local_tx.clone() }
    }

    fn start_loop(&self, ctx: &mut Context<Self>, path: Path) {
        let run = Arc::new(Runner {
            js: self.js.clone(),
            subjects: Subjects::new(&self.cfg.cluster),
            shards: self.cfg.shards,
            rules: Arc::new(Rules {
                limits: self.cfg.limits.clone(),
                default_level: self.cfg.default_level.as_deref().map(gossamer_schemas::normalize_level).filter(|l| !l.is_empty()),
            }),
            batch: self.cfg.ingest_batch.max(1),
            round_bytes: self.cfg.memory_budget().ingest_round_bytes(),
            pull_bytes: self.cfg.memory_budget().logs_pull_bytes(),
            names: self.names.clone(),
            counters: self.counters.clone(),
            pressure: self.pressure.clone(),
            local: self.local_rx.clone(),
        });
        let client = self.client.clone();
        let last_error = self.last_error.clone();
        ctx.spawn(
            async move {
                let result = match path {
                    Path::Logs => run.run().await,
                    Path::Requests => run.serve_requests(client).await,
                };
                if let Err(e) = result {
                    warn!(?path, error = format!("{e:#}"), "ingest-loop-failed");
                    *last_error.lock().unwrap() = Some(format!("{e:#}"));
                }
            }
            .into_actor(self)
            .map(move |_, _, ctx| {
                // A loop only ends on an error (the bus went away, a stream was deleted):
                // start again after a pause; unacked messages are redelivered, unanswered
                // requests are retried by their producers.
                ctx.run_later(Duration::from_secs(1), move |act, ctx| act.start_loop(ctx, path));
            }),
        );
    }
}

impl Actor for IngestActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(shards = self.cfg.shards, "ingest-started");
        self.start_loop(ctx, Path::Logs);
        self.start_loop(ctx, Path::Requests);
    }
}

impl Handler<GetState> for IngestActor {
    type Result = IngestState;

    fn handle(&mut self, _: GetState, _: &mut Self::Context) -> IngestState {
        let c = &self.counters;
        IngestState {
            messages: c.messages.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            dead_letters: c.dead_letters.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            ready: c.serving_requests.load(Ordering::SeqCst) && c.pulling_logs.load(Ordering::SeqCst),
            paused_total: self.pressure.paused_total.load(Ordering::Relaxed),
            paused: self.pressure.paused.load(Ordering::SeqCst),
            last_error: self.last_error.lock().unwrap().clone(),
        }
    }
}

struct Runner {
    js: jetstream::Context,
    subjects: Subjects,
    shards: u32,
    rules: Arc<Rules>,
    batch: usize,
    /// Payload bytes one round takes at most (one request or message may exceed it).
    round_bytes: usize,
    /// Bytes of LOGS messages pulled ahead at most.
    pull_bytes: usize,
    names: StreamNames,
    counters: Arc<Counters>,
    pressure: Arc<gossamer_bus::Pressure>,
    local: LocalReceiver,
}

/// Rounds of requests in progress at once: while one waits for the bus's acks, the
/// next is decoded and sealed.
const ROUNDS_AT_ONCE: usize = 2;

/// How long a request round waits for the node to catch up before it answers busy.
const REQUEST_PATIENCE: Duration = Duration::from_secs(5);

impl Runner {
    async fn run(&self) -> Result<()> {
        let stream = self.js.get_stream(&self.names.logs).await.context("opening the LOGS stream")?;
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                "ingest",
                pull::Config {
                    durable_name: Some("ingest".into()),
                    ack_policy: AckPolicy::Explicit,
                    // A round takes well under a second; a message held by a crashed node comes
                    // back after this.
                    ack_wait: Duration::from_secs(10),
                    max_ack_pending: (self.batch * 4) as i64,
                    filter_subject: LOGS_SUBJECTS.into(),
                    ..Default::default()
                },
            )
            .await
            .context("creating the ingest consumer")?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            // What is pulled ahead waits in memory: cap it by bytes as well.
            .max_bytes_per_batch(self.pull_bytes)
            .messages()
            .await
            .context("pulling from LOGS")?
            .ready_chunks(self.batch);
        self.counters.pulling_logs.store(true, Ordering::SeqCst);
        let mut last_purge = Instant::now();
        while let Some(chunk) = messages.next().await {
            let chunk = linger(&mut messages, chunk, |m| m.as_ref().map(|m| m.payload.len()).unwrap_or(0), self.round_bytes).await;
            let msgs = chunk.into_iter().collect::<Result<Vec<_>, _>>().context("receiving from LOGS")?;
            let rounds = split_rounds(msgs, |m| m.payload.len(), self.round_bytes);
            for (i, msgs) in rounds.iter().enumerate() {
                let waiting = || rounds[i..].iter().flatten();
                // Behind: hold these (telling the bus they are being worked on, so they
                // are not sent again) and pull nothing more until the node catches up.
                let _ = self
                    .pressure
                    .wait(None, || {
                        for m in waiting() {
                            let m = m.clone();
                            tokio::spawn(async move { m.ack_with(AckKind::Progress).await });
                        }
                    })
                    .await;
                if let Err(e) = self.round(msgs).await {
                    // Let them come back at once rather than after the ack wait.
                    for m in waiting() {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                    }
                    return Err(e);
                }
            }
            if last_purge.elapsed() > PURGE_EVERY {
                last_purge = Instant::now();
                self.purge_acked(&stream, &mut consumer).await;
            }
        }
        anyhow::bail!("the LOGS message stream ended")
    }

    /// One round from LOGS: decode, dead-letter what is bad, publish shard batches, and
    /// ack the messages once all of that has the bus's ack.
    async fn round(&self, msgs: &[jetstream::Message]) -> Result<()> {
        let mut inputs = Vec::with_capacity(msgs.len());
        for m in msgs {
            let info = m.info().map_err(|e| anyhow::anyhow!("reading message info: {e}"))?;
            inputs.push(Input {
                subject: m.subject.to_string(),
                stream_offset: LOGS_PREFIX.len(),
                payload: m.payload.clone(),
                content_type: content_type(m.headers.as_ref()),
                seed: IdSeed { received_ns: info.published.unix_timestamp_nanos() as i64, seq: info.stream_sequence },
                dead_letter_id: format!("dl-{}", info.stream_sequence),
                events: None,
            });
        }
        let _ = self.ingest(inputs).await?;
        gossamer_bus::ack_all(msgs).await.context("acking LOGS messages")?;
        self.counters.messages.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Decodes and routes `inputs` on the blocking pool, then publishes their shard
    /// batches and dead letters and waits for every ack. Returns each input's outcome.
    async fn ingest(&self, inputs: Vec<Input>) -> Result<(Vec<Outcome>, Positions)> {
        let prepared = prepare(inputs, self.shards, &self.rules).await?;
        let mut pending = FuturesUnordered::new();
        let mut batch_acks = FuturesUnordered::new();
        for (i, reason) in prepared.dead.iter() {
            let input = &prepared.inputs[*i];
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_ERROR, reason.as_str());
            headers.insert(HEADER_SUBJECT, input.subject.as_str());
            headers.insert("Nats-Msg-Id", input.dead_letter_id.as_str());
            let ack = self
                .js
                .publish_with_headers(self.subjects.deadletter(), headers, input.payload.clone())
                .await
                .context("publishing a dead letter")?;
            pending.push(std::future::IntoFuture::into_future(ack));
        }
        let batches = prepared.batches.len() as u64;
        for (shard, bytes, msg_id) in prepared.batches {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id.as_str());
            let ack = self
                .js
                .publish_with_headers(self.subjects.shard(shard), headers, bytes.into())
                .await
                .context("publishing a shard batch")?;
            let ack = std::future::IntoFuture::into_future(ack);
            batch_acks.push(async move { (shard, ack.await) });
        }
        while let Some(ack) = pending.next().await {
            ack.context("the bus refused a dead letter")?;
        }
        let mut stored = 0;
        let mut positions = Positions::new();
        while let Some((shard, ack)) = batch_acks.next().await {
            let ack = ack.context("the bus refused a shard batch")?;
            // A repeated batch (a redelivered LOGS message) is dropped by the bus and
            // never applied: only new ones add to the backlog.
            if !ack.duplicate {
                stored += 1;
            }
            // Where the batch sits in the shard log (a repeated one: where the first is).
            let at = positions.entry(shard).or_insert(0);
            *at = (*at).max(ack.sequence);
        }
        self.pressure.published.fetch_add(stored, Ordering::Relaxed);
        let c = &self.counters;
        c.events.fetch_add(prepared.events, Ordering::Relaxed);
        c.dead_letters.fetch_add(prepared.dead.len() as u64, Ordering::Relaxed);
        c.batches.fetch_add(batches, Ordering::Relaxed);
        Ok((prepared.outcomes, positions))
    }

    /// The request/reply path: requests on `gossamer.<cluster>.ingest.<stream>` (a queue
    /// group shared by every ingest actor) are batched, stored in SHARDS, and only then
    /// answered `{"accepted":N}`, or `{"error":...,"dead_lettered":1}` for a payload
    /// that cannot be made into events (dead-lettered whole, like on `logs.>`).
    async fn serve_requests(self: Arc<Self>, client: async_nats::Client) -> Result<()> {
        let subject = self.subjects.ingest_wildcard();
        let prefix_len = subject.len() - 1;
        let nats = client
            .queue_subscribe(subject.clone(), self.subjects.ingest_queue_group())
            .await
            .context("subscribing to ingest requests")?
            .map(Request::Nats);
        // This node's doors' events join the same rounds.
        let local = Box::pin(futures::stream::unfold(self.local.clone(), |rx| async move {
            let batch = rx.lock().await.recv().await?;
            Some((Request::Local(batch), rx))
        }));
        let mut sub = futures::stream::select(nats, local).ready_chunks(self.batch);
        // The subscription is registered once the server has seen it.
        client.flush().await.context("registering the ingest subscription")?;
        self.counters.serving_requests.store(true, Ordering::SeqCst);
        info!(subject = %subject, "ingest-requests-served");
        let rounds = Arc::new(tokio::sync::Semaphore::new(ROUNDS_AT_ONCE));
        while let Some(msgs) = sub.next().await {
            let msgs = linger(&mut sub, msgs, Request::bytes, self.round_bytes).await;
            // What arrived at once may be far more than a round: the rest waits as bytes,
            // not as decoded events.
            for msgs in split_rounds(msgs, Request::bytes, self.round_bytes) {
                let permit = rounds.clone().acquire_owned().await.context("the round limiter closed")?;
                let (me, client) = (self.clone(), client.clone());
                tokio::spawn(async move {
                    if let Err(e) = me.request_round(&client, msgs, prefix_len).await {
                        // The producers not answered time out and retry.
                        warn!(error = format!("{e:#}"), "ingest-request-round-failed");
                    }
                    drop(permit);
                });
            }
        }
        anyhow::bail!("the ingest request subscription ended")
    }

    /// One round of requests: stored, then each answered.
    async fn request_round(&self, client: &async_nats::Client, msgs: Vec<Request>, prefix_len: usize) -> Result<()> {
        let mut inputs = Vec::with_capacity(msgs.len());
        let mut replies = Vec::with_capacity(msgs.len());
        let mut waits = Vec::with_capacity(msgs.len());
        let mut locals: Vec<(usize, tokio::sync::oneshot::Sender<LocalOutcome>)> = Vec::new();
        let mut local_inputs = Vec::new();
        for m in msgs {
            let m = match m {
                Request::Nats(m) => m,
                Request::Local(batch) => {
                    locals.push((batch.events.len(), batch.reply));
                    local_inputs.push(Input {
                        subject: String::new(),
                        stream_offset: 0,
                        payload: bytes::Bytes::new(),
                        content_type: None,
                        seed: IdSeed { received_ns: 0, seq: 0 },
                        dead_letter_id: String::new(),
                        events: Some(batch.events),
                    });
                    continue;
                }
            };
            let Some(reply) = m.reply.clone() else {
                // Without a reply subject the producer cannot learn the outcome, and
                // would not retry: refuse rather than guess.
                warn!(subject = %m.subject, "ingest-request-without-reply");
                continue;
            };
            let seq = rand_seq();
            waits.push(wait_asked(m.headers.as_ref()));
            inputs.push(Input {
                subject: m.subject.to_string(),
                stream_offset: prefix_len,
                payload: m.payload.clone(),
                content_type: content_type(m.headers.as_ref()),
                seed: IdSeed { received_ns: gossamer_schemas::time::now_ns(), seq },
                dead_letter_id: format!("dl-req-{seq:016x}"),
                events: None,
            });
            replies.push(reply);
        }
        if inputs.is_empty() && local_inputs.is_empty() {
            return Ok(());
        }
        if let Err(reason) = self.pressure.wait(Some(REQUEST_PATIENCE), || {}).await {
            // Nothing taken: the producer retries after a pause.
            let why = format!("busy, retry later: {reason}");
            let body = serde_json::json!({ "error": why, "busy": true }).to_string();
            for reply in replies {
                client.publish(reply, body.clone().into()).await.context("replying to an ingest request")?;
            }
            for (_, reply) in locals {
                let _ = reply.send(LocalOutcome::Busy(why.clone()));
            }
            return Ok(());
        }
        let n = inputs.len() as u64;
        let nats_inputs = inputs.len();
        inputs.extend(local_inputs);
        // On an error nothing is answered: each producer times out and retries (a door
        // sees its answer dropped).
        let (mut outcomes, positions) = self.ingest(inputs).await?;
        for (events, reply) in locals {
            let _ = reply.send(LocalOutcome::Accepted { events, positions: positions.clone() });
        }
        outcomes.truncate(nats_inputs);
        // Those who asked to read their writes are answered after the others, once the
        // round's events are queryable on every replica (or the wait timed out).
        let mut waiting = Vec::new();
        let longest = waits.iter().flatten().max().copied();
        for ((reply, outcome), wait) in replies.into_iter().zip(outcomes).zip(waits) {
            let body = match outcome {
                Outcome::Accepted(n) => serde_json::json!({ "accepted": n, "positions": positions_json(&positions) }),
                Outcome::DeadLettered(reason) => serde_json::json!({ "error": reason, "dead_lettered": 1 }),
            };
            if wait.is_some() && body["accepted"].is_u64() {
                waiting.push((reply, body));
            } else {
                client.publish(reply, body.to_string().into()).await.context("replying to an ingest request")?;
            }
        }
        if let (Some(timeout), false) = (longest, waiting.is_empty()) {
            let waited = wait_queryable(client, &self.subjects, &positions, timeout).await;
            for (reply, mut body) in waiting {
                body["queryable"] = waited.clone();
                client.publish(reply, body.to_string().into()).await.context("replying to an ingest request")?;
            }
        }
        self.counters.requests.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// LOGS uses limits retention, so acked messages stay until purged: drop
    /// everything at or below the ingest consumer's ack floor.
    async fn purge_acked(&self, stream: &jetstream::stream::Stream, consumer: &mut jetstream::consumer::PullConsumer) {
        let floor = match consumer.info().await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(e) => {
                warn!(error = %e, "ingest-consumer-info-failed");
                return;
            }
        };
        if floor > 0 {
            if let Err(e) = stream.purge().sequence(floor + 1).await {
                warn!(error = %e, floor, "logs-purge-failed");
            }
        }
    }
}

/// The shard log's sequence each shard must apply for a round's events to be there.
pub type Positions = std::collections::BTreeMap<u32, u64>;

/// The header a request/reply producer sets to be answered only once its events are
/// queryable on every replica: `queryable` (waiting up to [`DEFAULT_WAIT`]) or a
/// duration such as `5s` or `500ms`.
pub const HEADER_WAIT: &str = "Gossamer-Wait";
/// How long a read-your-writes wait lasts unless the producer says.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The longest wait a producer may ask for.
const MOST_WAIT: Duration = Duration::from_secs(120);

fn wait_asked(headers: Option<&async_nats::HeaderMap>) -> Option<Duration> {
    parse_wait(Some(headers?.get(HEADER_WAIT)?.as_str())).ok().flatten()
}

/// A read-your-writes request as a door spells it (`queryable`, `true`, `wait_for`, or
/// a duration like `5s`, `500ms`): how long to wait at most, up to two minutes. `None`:
/// no value, or `false`/`0`/`no`: do not wait.
pub fn parse_wait(value: Option<&str>) -> std::result::Result<Option<Duration>, String> {
    let Some(v) = value.map(|v| v.trim().to_ascii_lowercase()) else { return Ok(None) };
    let d = match v.as_str() {
        "false" | "0" | "no" => return Ok(None),
        "" | "queryable" | "true" | "1" | "wait_for" => DEFAULT_WAIT,
        other => {
            let parsed = match other.strip_suffix("ms") {
                Some(ms) => ms.parse::<u64>().ok().map(Duration::from_millis),
                None => other.trim_end_matches('s').parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64),
            };
            parsed.ok_or_else(|| format!("a wait of {other:?}: use queryable, true, or a duration such as 5s or 500ms"))?
        }
    };
    Ok(Some(d.min(MOST_WAIT)))
}

pub fn positions_json(p: &Positions) -> serde_json::Value {
    serde_json::Value::Object(p.iter().map(|(s, q)| (s.to_string(), serde_json::Value::from(*q))).collect())
}

/// Asks the nodes (`gossamer.<cluster>.api.wait`) to answer once every replica of each
/// shard has applied its position; the answer (`{"queryable": bool, ...}`), or why
/// there is none.
pub async fn wait_queryable(client: &async_nats::Client, subjects: &Subjects, positions: &Positions, timeout: Duration) -> serde_json::Value {
    let body = serde_json::json!({ "positions": positions_json(positions), "timeout_ms": timeout.as_millis() as u64 }).to_string();
    let request = async_nats::Request::new().payload(body.into()).timeout(Some(timeout + Duration::from_secs(5)));
    match client.send_request(subjects.api_wait(), request).await {
        Ok(reply) => serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| serde_json::json!({ "queryable": false, "error": format!("an unreadable wait answer: {e}") })),
        Err(e) => serde_json::json!({ "queryable": false, "error": format!("no node answered the wait: {e}") }),
    }
}

/// How long a round waits for more input once some has arrived.
const LINGER: Duration = Duration::from_millis(5);

/// Gathers more of what is arriving, for up to [`LINGER`] or `round_bytes`: one round
/// then carries more events per shard, and each shard batch costs the bus, the shard
/// actor and sled the same whatever its size.
async fn linger<S, T>(stream: &mut S, mut first: Vec<T>, bytes: impl Fn(&T) -> usize, round_bytes: usize) -> Vec<T>
where
    S: futures::Stream<Item = Vec<T>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut size: usize = first.iter().map(&bytes).sum();
    while size < round_bytes {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(more)) => {
                size += more.iter().map(&bytes).sum::<usize>();
                first.extend(more);
            }
            Ok(None) | Err(_) => break,
        }
    }
    first
}

/// Cuts `items` into rounds of at most `round_bytes` each, in order; an item larger
/// than that is a round of its own.
fn split_rounds<T>(items: Vec<T>, bytes: impl Fn(&T) -> usize, round_bytes: usize) -> Vec<Vec<T>> {
    let mut rounds = Vec::new();
    let (mut round, mut size) = (Vec::new(), 0);
    for item in items {
        let b = bytes(&item);
        if !round.is_empty() && size + b > round_bytes {
            rounds.push(std::mem::take(&mut round));
            size = 0;
        }
        size += b;
        round.push(item);
    }
    if !round.is_empty() {
        rounds.push(round);
    }
    rounds
}

/// One payload to ingest, from LOGS or from a request.
struct Input {
    subject: String,
    /// Where the stream name starts in `subject`.
    stream_offset: usize,
    payload: bytes::Bytes,
    content_type: Option<String>,
    seed: IdSeed,
    dead_letter_id: String,
    /// Events a door of this node has read and checked already.
    events: Option<Vec<Event>>,
}

/// A request for the request path's rounds: over NATS, or from this node's doors.
enum Request {
    Nats(async_nats::Message),
    Local(LocalBatch),
}

impl Request {
    /// About how many bytes it brings, for the round's size.
    fn bytes(&self) -> usize {
        match self {
            Request::Nats(m) => m.payload.len(),
            Request::Local(b) => b.events.iter().map(|e| 128 + e.message.len()).sum(),
        }
    }
}

/// What became of one input.
#[derive(Debug, Clone)]
enum Outcome {
    Accepted(usize),
    DeadLettered(String),
}

/// The CPU part of a round.
struct Prepared {
    inputs: Vec<Input>,
    outcomes: Vec<Outcome>,
    /// (input index, reason)
    dead: Vec<(usize, String)>,
    /// (shard, encoded command, Nats-Msg-Id)
    batches: Vec<(u32, Vec<u8>, String)>,
    events: u64,
}

/// Decodes `inputs` and seals their events into shard batches, on the blocking pool,
/// split over as many tasks as the machine has cores.
/// How ingest reads events: the limits, and the level of an event that has none.
struct Rules {
    limits: gossamer_schemas::decode::Limits,
    default_level: Option<String>,
}

async fn prepare(inputs: Vec<Input>, shards: u32, rules: &Arc<Rules>) -> Result<Prepared> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Decode: the inputs in contiguous parts, so outcomes keep their order.
    let per_task = inputs.len().div_ceil(cores).max(1);
    let mut parts = Vec::new();
    let mut rest = inputs;
    while !rest.is_empty() {
        let tail = rest.split_off(per_task.min(rest.len()));
        let part = std::mem::replace(&mut rest, tail);
        let rules = rules.clone();
        parts.push(tokio::task::spawn_blocking(move || decode_part(part, shards, &rules)));
    }
    let mut prepared = Prepared { inputs: Vec::new(), outcomes: Vec::new(), dead: Vec::new(), batches: Vec::new(), events: 0 };
    let mut per_shard: HashMap<u32, Vec<Event>> = HashMap::new();
    for part in parts {
        let d = part.await?;
        let offset = prepared.inputs.len();
        prepared.dead.extend(d.dead.into_iter().map(|(i, reason)| (i + offset, reason)));
        prepared.inputs.extend(d.inputs);
        prepared.outcomes.extend(d.outcomes);
        prepared.events += d.events;
        for (shard, evs) in d.per_shard {
            per_shard.entry(shard).or_default().extend(evs);
        }
    }
    // Seal: the shards dealt out so each task gets about as many events.
    let mut groups: Vec<(usize, Vec<ShardEvents>)> = (0..cores).map(|_| (0, Vec::new())).collect();
    let mut by_size: Vec<ShardEvents> = per_shard.into_iter().collect();
    by_size.sort_by_key(|(_, evs)| std::cmp::Reverse(evs.len()));
    for (shard, evs) in by_size {
        let lightest = groups.iter_mut().min_by_key(|(n, _)| *n).expect("at least one group");
        lightest.0 += evs.len();
        lightest.1.push((shard, evs));
    }
    let sealing: Vec<_> = groups
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(_, group)| tokio::task::spawn_blocking(move || seal_shards(group)))
        .collect();
    for task in sealing {
        prepared.batches.extend(task.await??);
    }
    Ok(prepared)
}

/// What decoding a part of a round's inputs gave.
struct Decoded {
    inputs: Vec<Input>,
    outcomes: Vec<Outcome>,
    /// (index in `inputs`, reason)
    dead: Vec<(usize, String)>,
    per_shard: HashMap<u32, Vec<Event>>,
    events: u64,
}

fn decode_part(inputs: Vec<Input>, shards: u32, rules: &Rules) -> Decoded {
    let mut d = Decoded { outcomes: Vec::with_capacity(inputs.len()), dead: Vec::new(), per_shard: HashMap::new(), events: 0, inputs: Vec::new() };
    let mut inputs = inputs;
    for (i, input) in inputs.iter_mut().enumerate() {
        let stream = input.subject.get(input.stream_offset..).unwrap_or_default();
        let decoded = match input.events.take() {
            Some(evs) => Ok(evs),
            None => decode_payload(stream, &input.payload, input.content_type.as_deref(), input.seed, &rules.limits),
        };
        match decoded {
            Ok(evs) => {
                d.outcomes.push(Outcome::Accepted(evs.len()));
                d.events += evs.len() as u64;
                for mut e in evs {
                    if let (true, Some(level)) = (e.level.is_empty(), &rules.default_level) {
                        e.level.clone_from(level);
                    }
                    d.per_shard.entry(shard_for(&e.stream, &e.id, shards)).or_default().push(e);
                }
            }
            Err(reason) => {
                d.outcomes.push(Outcome::DeadLettered(reason.to_string()));
                d.dead.push((i, reason.to_string()));
            }
        }
    }
    d.inputs = inputs;
    d
}

/// Each shard's events, in time order, sealed into blocks and packed into shard-log
/// messages: `(shard, encoded command, Nats-Msg-Id)`.
/// One shard's events of a round.
type ShardEvents = (u32, Vec<Event>);

fn seal_shards(group: Vec<ShardEvents>) -> Result<Vec<(u32, Vec<u8>, String)>> {
    let mut out = Vec::new();
    for (shard, mut evs) in group {
        if evs.len() < SEAL_MIN_EVENTS {
            insert_for_wire(shard, evs, &mut out)?;
            continue;
        }
        evs.sort_by_key(|e| e.ts);
        let mut blocks = Vec::new();
        for chunk in evs.chunks(BLOCK_EVENTS) {
            seal_for_wire(chunk, &mut blocks)?;
        }
        let mut message: Vec<SealedBlock> = Vec::new();
        let mut bytes = 0;
        for block in blocks {
            if !message.is_empty() && bytes + block.wire_size() > MAX_BATCH_BYTES {
                out.push(wire_message(shard, std::mem::take(&mut message))?);
                bytes = 0;
            }
            bytes += block.wire_size();
            message.push(block);
        }
        if !message.is_empty() {
            out.push(wire_message(shard, message)?);
        }
    }
    Ok(out)
}

/// A shard's events of a round, when fewer than this, go as a plain insert rather than
/// a sealed block: a shard gathers the inserts waiting for it into one block, so a
/// moderate rate (a few events per shard per round) does not leave a block per round.
const SEAL_MIN_EVENTS: usize = 32;

/// `events` as plain inserts of at most [`MAX_BATCH_BYTES`] each.
fn insert_for_wire(shard: u32, events: Vec<Event>, out: &mut Vec<(u32, Vec<u8>, String)>) -> Result<()> {
    let id = batch_id(shard, events.iter().map(|e| &e.id));
    let n = events.len();
    let cmd = ShardCommand::Insert { events };
    let bytes = cmd.encode().context("encoding a shard batch")?;
    if bytes.len() <= MAX_BATCH_BYTES || n <= 1 {
        out.push((shard, bytes, id));
        return Ok(());
    }
    let ShardCommand::Insert { mut events } = cmd else { unreachable!("built as an insert above") };
    let tail = events.split_off(n / 2);
    insert_for_wire(shard, events, out)?;
    insert_for_wire(shard, tail, out)
}

/// `GOSSAMER_SEAL_ROW_FRAMES=1`: seal blocks in the row layout of earlier versions, so a
/// test can make a store as those wrote it and see a node upgrade it.
fn seal_in_rows() -> bool {
    static ROWS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| std::env::var("GOSSAMER_SEAL_ROW_FRAMES").is_ok_and(|v| v == "1"))
}

/// Seals `events` as one block, or as several when one would not fit a NATS message.
fn seal_for_wire(events: &[Event], out: &mut Vec<SealedBlock>) -> Result<()> {
    let mut block = SealedBlock::seal(events).context("sealing a block")?;
    if seal_in_rows() {
        block.bytes = gossamer_schemas::batch::encode_block_rows(events).context("sealing a block in rows")?;
    }
    if block.wire_size() <= MAX_BATCH_BYTES || events.len() <= 1 {
        out.push(block);
        return Ok(());
    }
    let (a, b) = events.split_at(events.len() / 2);
    seal_for_wire(a, out)?;
    seal_for_wire(b, out)
}

fn wire_message(shard: u32, blocks: Vec<SealedBlock>) -> Result<(u32, Vec<u8>, String)> {
    let id = batch_id(shard, blocks.iter().flat_map(|b| b.ids.iter()));
    let bytes = ShardCommand::Blocks { blocks }.encode().context("encoding a shard batch")?;
    Ok((shard, bytes, id))
}

fn content_type(headers: Option<&HeaderMap>) -> Option<String> {
    headers.and_then(|h| h.get("Content-Type")).map(|v| v.as_str().to_string())
}

/// A random number for the ids of a request's events that carry none.
fn rand_seq() -> u64 {
    let id = uuid::Uuid::new_v4();
    u64::from_le_bytes(id.as_bytes()[..8].try_into().unwrap())
}

/// A batch's `Nats-Msg-Id`: the shard and a hash of its event ids, so the same batch
/// republished within the bus's duplicate window is dropped by the bus itself.
fn batch_id<'a>(shard: u32, ids: impl Iterator<Item = &'a uuid::Uuid>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for id in ids {
        h.update(id.as_bytes());
    }
    format!("{shard}-{:032x}", h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize, message: String) -> Event {
        Event {
            id: uuid::Uuid::now_v7(),
            ts: i as i64,
            stream: "app".into(),
            level: "info".into(),
            message,
            labels: Default::default(),
            fields: Default::default(),
        }
    }

    #[test]
    fn rounds_keep_order_and_stay_under_their_bytes_unless_one_item_is_bigger() {
        let sizes = vec![3, 4, 2, 9, 1, 1, 12, 5];
        let rounds = split_rounds(sizes.clone(), |b| *b, 8);
        assert_eq!(rounds, vec![vec![3, 4], vec![2], vec![9], vec![1, 1], vec![12], vec![5]]);
        assert_eq!(rounds.concat(), sizes, "every item once, in order");
        assert!(split_rounds(Vec::<usize>::new(), |b| *b, 8).is_empty());
    }

    /// Highly compressible events make blocks far smaller than their ids on the wire:
    /// the messages must still fit the limit, and carry every event once.
    #[test]
    fn sealed_batches_fit_the_wire_whatever_the_events_compress_to() {
        for message in ["a".repeat(300), String::new()] {
            let events: Vec<Event> = (0..60_000).map(|i| event(i, message.clone())).collect();
            let mut want: Vec<uuid::Uuid> = events.iter().map(|e| e.id).collect();
            let batches = seal_shards(vec![(3, events)]).unwrap();
            let mut got = Vec::new();
            for (shard, bytes, _) in &batches {
                assert_eq!(*shard, 3);
                assert!(bytes.len() <= MAX_BATCH_BYTES, "{} bytes", bytes.len());
                got.extend(ShardCommand::decode(bytes).unwrap().into_inserted().unwrap().unwrap().into_iter().map(|e| e.id));
            }
            got.sort();
            want.sort();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_few_events_for_a_shard_go_as_a_plain_insert() {
        let events: Vec<Event> = (0..SEAL_MIN_EVENTS - 1).map(|i| event(i, format!("m{i}"))).collect();
        let batches = seal_shards(vec![(0, events.clone())]).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(ShardCommand::decode(&batches[0].1).unwrap(), ShardCommand::Insert { events });
    }
}
