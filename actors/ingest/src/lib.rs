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
use futures::{StreamExt, TryStreamExt};
use gossamer_bus::StreamNames;
use gossamer_config::Config;
use gossamer_schemas::subjects::{stream_of_subject, Subjects, HEADER_ERROR, HEADER_SUBJECT, LOGS_SUBJECTS};
use gossamer_schemas::{decode_payload, shard_for, Event, IdSeed, ShardCommand};
use serde::Serialize;
use tracing::{info, warn};

/// Largest encoded shard batch; NATS refuses messages past its max payload (1 MiB by
/// default), so bigger batches are split.
const MAX_BATCH_BYTES: usize = 768 * 1024;
const PURGE_EVERY: Duration = Duration::from_secs(5);

/// Counters an operator (and a test) reads.
#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    events: AtomicU64,
    dead_letters: AtomicU64,
    batches: AtomicU64,
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
    pub last_error: Option<String>,
}

#[derive(Message)]
#[rtype(result = "IngestState")]
pub struct GetState;

pub struct IngestActor {
    js: jetstream::Context,
    cfg: Config,
    names: StreamNames,
    counters: Arc<Counters>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl IngestActor {
    pub fn new(js: jetstream::Context, cfg: Config, names: StreamNames) -> Self {
        Self { js, cfg, names, counters: Arc::default(), last_error: Arc::default() }
    }

    fn start_loop(&self, ctx: &mut Context<Self>) {
        let run = Runner {
            js: self.js.clone(),
            subjects: Subjects::new(&self.cfg.cluster),
            shards: self.cfg.shards,
            batch: self.cfg.ingest_batch.max(1),
            names: self.names.clone(),
            counters: self.counters.clone(),
        };
        let last_error = self.last_error.clone();
        ctx.spawn(
            async move {
                let err = run.run().await.err();
                if let Some(e) = &err {
                    warn!(error = format!("{e:#}"), "ingest-loop-failed");
                    *last_error.lock().unwrap() = Some(format!("{e:#}"));
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| {
                // The loop only ends on an error (the bus went away, a stream was
                // deleted): start again after a pause; unacked messages are redelivered.
                ctx.run_later(Duration::from_secs(1), |act, ctx| act.start_loop(ctx));
            }),
        );
    }
}

impl Actor for IngestActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(shards = self.cfg.shards, "ingest-started");
        self.start_loop(ctx);
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
            last_error: self.last_error.lock().unwrap().clone(),
        }
    }
}

struct Runner {
    js: jetstream::Context,
    subjects: Subjects,
    shards: u32,
    batch: usize,
    names: StreamNames,
    counters: Arc<Counters>,
}

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
            .messages()
            .await
            .context("pulling from LOGS")?
            .ready_chunks(self.batch);
        let mut last_purge = Instant::now();
        while let Some(chunk) = messages.next().await {
            let msgs = chunk.into_iter().collect::<Result<Vec<_>, _>>().context("receiving from LOGS")?;
            if let Err(e) = self.round(&msgs).await {
                // Let them come back at once rather than after the ack wait.
                for m in &msgs {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                }
                return Err(e);
            }
            if last_purge.elapsed() > PURGE_EVERY {
                last_purge = Instant::now();
                self.purge_acked(&stream, &mut consumer).await;
            }
        }
        anyhow::bail!("the LOGS message stream ended")
    }

    /// One round: decode, dead-letter what is bad, publish shard batches, ack.
    async fn round(&self, msgs: &[jetstream::Message]) -> Result<()> {
        let mut per_shard: HashMap<u32, Vec<Event>> = HashMap::new();
        let mut pending = FuturesUnordered::new();
        let mut dead = 0u64;
        for m in msgs {
            let info = m.info().map_err(|e| anyhow::anyhow!("reading message info: {e}"))?;
            let seed = IdSeed { received_ns: info.published.unix_timestamp_nanos() as i64, seq: info.stream_sequence };
            let stream = stream_of_subject(m.subject.as_str()).unwrap_or_default();
            let content_type = m.headers.as_ref().and_then(|h| h.get("Content-Type")).map(|v| v.as_str());
            match decode_payload(stream, &m.payload, content_type, seed) {
                Ok(events) => {
                    for e in events {
                        per_shard.entry(shard_for(&e.stream, &e.id, self.shards)).or_default().push(e);
                    }
                }
                Err(reason) => {
                    dead += 1;
                    let mut headers = HeaderMap::new();
                    headers.insert(HEADER_ERROR, reason.to_string().as_str());
                    headers.insert(HEADER_SUBJECT, m.subject.as_str());
                    headers.insert("Nats-Msg-Id", format!("dl-{}", info.stream_sequence).as_str());
                    let ack = self
                        .js
                        .publish_with_headers(self.subjects.deadletter(), headers, m.payload.clone())
                        .await
                        .context("publishing a dead letter")?;
                    pending.push(std::future::IntoFuture::into_future(ack));
                }
            }
        }
        let mut events = 0u64;
        let mut batches = 0u64;
        for (shard, evs) in per_shard {
            events += evs.len() as u64;
            for chunk in split_for_wire(evs)? {
                batches += 1;
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", batch_id(shard, &chunk.1).as_str());
                let ack = self
                    .js
                    .publish_with_headers(self.subjects.shard(shard), headers, chunk.0.into())
                    .await
                    .context("publishing a shard batch")?;
                pending.push(std::future::IntoFuture::into_future(ack));
            }
        }
        while let Some(ack) = pending.next().await {
            ack.context("the bus refused a shard batch or a dead letter")?;
        }
        msgs.iter()
            .map(|m| m.ack())
            .collect::<FuturesUnordered<_>>()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| anyhow::anyhow!("acking LOGS messages: {e}"))?;
        let c = &self.counters;
        c.messages.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        c.events.fetch_add(events, Ordering::Relaxed);
        c.dead_letters.fetch_add(dead, Ordering::Relaxed);
        c.batches.fetch_add(batches, Ordering::Relaxed);
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

/// Encodes events as shard-log messages no larger than [`MAX_BATCH_BYTES`], splitting
/// when needed. Returns each message's bytes with its events' ids.
fn split_for_wire(events: Vec<Event>) -> Result<Vec<(Vec<u8>, Vec<uuid::Uuid>)>> {
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.id).collect();
    let n = events.len();
    let cmd = ShardCommand::Insert { events };
    let bytes = cmd.encode().context("encoding a shard batch")?;
    if bytes.len() <= MAX_BATCH_BYTES || n <= 1 {
        return Ok(vec![(bytes, ids)]);
    }
    let ShardCommand::Insert { mut events } = cmd;
    let tail = events.split_off(n / 2);
    let mut out = split_for_wire(events)?;
    out.extend(split_for_wire(tail)?);
    Ok(out)
}

/// A batch's `Nats-Msg-Id`: the shard and a hash of its event ids, so the same batch
/// republished within the bus's duplicate window is dropped by the bus itself.
fn batch_id(shard: u32, ids: &[uuid::Uuid]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for id in ids {
        h.update(id.as_bytes());
    }
    format!("{shard}-{:032x}", h.digest128())
}
