//! Notification queues: every newly stored event that matches a queue's filter is
//! published once to `gossamer.<cluster>.notify.<queue>`, kept by the `NOTIFY` stream,
//! where subscribers read it with ordinary JetStream consumers (ack, nak, redelivery,
//! queue groups). Deliveries that run out of `max_deliver` go to the dead-letter stream.
//!
//! - Definitions live in a JetStream key-value bucket, so every node sees them and they
//!   outlive restarts; each node with the `queue` role watches it.
//! - Each queue is delivered by one live member with the `queue` role at a time: the one
//!   rendezvous hashing of the queue's name over those members names (as shards are
//!   placed). When it dies or drains, gossip tells the others and the next one takes
//!   the queue over, from where delivery stopped.
//! - Each queue reads the shard log through its own durable consumer (`notify-<queue>`
//!   on `SHARDS`), so where delivery stands is kept by JetStream, not by a node: a node
//!   that dies leaves its unacked shard-log messages to come again (after 10 s) to
//!   whichever node reads next. A matching event is published with `Nats-Msg-Id`
//!   `<queue>:<event id>`, so one read twice is stored once; the shard-log message is
//!   acked only once every publish has the bus's ack.
//! - Each queue has a durable consumer on `NOTIFY` named after it, with its
//!   `max_deliver`, `ack_wait` and `backoff`; subscribers bind to it (or make their own).

pub mod spec;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy, kv, stream};
use futures::StreamExt;
use gossamer_schemas::subjects::Subjects;
use gossamer_schemas::ShardCommand;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

pub use spec::{check_name, QueueSpec, QueueUpdate};

/// How long a queue's shard-log reader has to publish a batch's matches before the
/// batch comes again.
const READ_ACK_WAIT: Duration = Duration::from_secs(10);
/// Shard-log messages a queue reads at a time.
const READ_BATCH: usize = 64;
/// Deliveries waiting for the bus's ack at once, per queue.
const MAX_IN_FLIGHT: usize = 1024;
/// NOTIFY drops a repeated `Nats-Msg-Id` within this window: longer than any redelivery
/// of the shard log after a crash.
const DEDUPE_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl QueueError {
    pub fn status(&self) -> u16 {
        match self {
            QueueError::BadRequest(_) => 400,
            QueueError::NotFound(_) => 404,
            QueueError::Conflict(_) => 409,
            QueueError::Internal(_) => 500,
        }
    }
}

/// Counted by this node since it started.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    /// Events that matched the filter.
    pub matched: u64,
    /// Matches the bus stored in NOTIFY.
    pub published: u64,
    /// Matches the bus had already (read again after a crash or a redelivery).
    pub duplicates: u64,
    /// Deliveries that ran out of `max_deliver` and went to the dead-letter stream.
    pub dead_lettered: u64,
}

/// A queue's figures: this node's counters, and what JetStream says of its consumers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    #[serde(flatten)]
    pub counters: Counters,
    /// Deliveries kept in NOTIFY for this queue.
    pub stored: u64,
    /// Kept, not yet delivered to a subscriber of the queue's consumer.
    pub pending: u64,
    /// Delivered, waiting for an ack.
    pub ack_pending: u64,
    /// Deliveries beyond the first of each message (naks, expired ack waits).
    pub redelivered: u64,
    /// Delivered and acked (kept, minus pending, waiting and dead-lettered).
    pub acked: u64,
    /// Shard-log messages the queue has not read yet.
    pub backlog: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    #[serde(flatten)]
    pub spec: QueueSpec,
    pub subject: String,
    pub stream: String,
    /// The durable consumer on `stream` subscribers bind to.
    pub consumer: String,
    /// The member delivering the queue, as the node answering sees the cluster.
    pub delivered_by: Option<String>,
    pub stats: QueueStats,
}

pub struct Queues {
    js: jetstream::Context,
    nats: async_nats::Client,
    subjects: Subjects,
    shards_stream: String,
    deadletter_subject: String,
    kv: kv::Store,
    counters: Mutex<HashMap<String, Counters>>,
    running: Mutex<HashMap<String, (QueueSpec, tokio::task::JoinHandle<()>)>>,
    /// This node's name.
    me: String,
    /// The live members that deliver queues (with the `queue` role, not draining), as
    /// gossip sees them: each queue is delivered by the one [`queue_owner`] names.
    deliverers: tokio::sync::watch::Receiver<Vec<String>>,
    /// The definitions in the bucket, as last read.
    known: Mutex<HashMap<String, QueueSpec>>,
    /// Queues this node took over from a member that died or drained.
    takeovers: std::sync::atomic::AtomicU64,
    /// Where each queue's reader stood when this node last read it.
    resume: Mutex<HashMap<String, DeliverPolicy>>,
}

fn now() -> String {
    gossamer_schemas::time::format_rfc3339(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
    )
}

impl Queues {
    /// Creates the NOTIFY stream (capped at `notify_max_bytes`) and the definitions
    /// bucket if they are missing, with `replicas` copies each (on a NATS cluster).
    /// `me` is this node, `deliverers` the live members that deliver queues.
    pub async fn open(
        nats: async_nats::Client,
        cluster: &str,
        shards_stream: &str,
        replicas: usize,
        notify_max_bytes: i64,
        me: String,
        deliverers: tokio::sync::watch::Receiver<Vec<String>>,
    ) -> Result<Arc<Self>> {
        let js = jetstream::new(nats.clone());
        let subjects = Subjects::new(cluster);
        let notify = stream::Config {
            name: subjects.notify_stream(),
            subjects: vec![subjects.notify_wildcard()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: notify_max_bytes,
            duplicate_window: DEDUPE_WINDOW,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        gossamer_bus::ensure_stream(&js, notify, "notify_max_bytes").await?;
        let kv = gossamer_bus::ensure_kv(&js, &subjects.queues_bucket(), replicas).await?;
        Ok(Arc::new(Self {
            js,
            nats,
            deadletter_subject: subjects.deadletter(),
            subjects,
            shards_stream: shards_stream.to_string(),
            kv,
            counters: Mutex::default(),
            running: Mutex::default(),
            me,
            deliverers,
            known: Mutex::default(),
            takeovers: Default::default(),
            resume: Mutex::default(),
        }))
    }

    async fn spec(&self, name: &str) -> Result<Option<QueueSpec>, QueueError> {
        check_name(name).map_err(QueueError::BadRequest)?;
        let Some(bytes) = self.kv.get(name).await.context("reading the queues bucket")? else { return Ok(None) };
        let spec = serde_json::from_slice(&bytes).with_context(|| format!("queue {name}: its definition does not parse"))?;
        Ok(Some(spec))
    }

    fn notify_consumer(&self, c: &spec::Checked) -> pull::Config {
        pull::Config {
            durable_name: Some(c.spec.name.clone()),
            description: Some(format!("Gossamer queue {}: {}", c.spec.name, c.spec.filter)),
            filter_subject: self.subjects.notify(&c.spec.name),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: c.ack_wait,
            max_deliver: c.spec.max_deliver,
            backoff: c.backoff.clone(),
            ..Default::default()
        }
    }

    /// Defines a queue: its NOTIFY consumer, its shard-log reader (starting now, or at
    /// `start`), then the definition in the bucket.
    pub async fn create(&self, mut spec: QueueSpec) -> Result<QueueView, QueueError> {
        let checked = spec.check().map_err(QueueError::BadRequest)?;
        if self.spec(&spec.name).await?.is_some() {
            return Err(QueueError::Conflict(format!("a queue named {} exists already", spec.name)));
        }
        let mut shards = self.js.get_stream(&self.shards_stream).await.context("opening the SHARDS stream")?;
        spec.reader_start = None;
        let deliver_policy = match checked.since_ns {
            None => {
                // "Now" as a sequence, kept in the definition: a reader made again by
                // another member starts there, never at a later "now".
                let next = shards.info().await.context("reading the SHARDS stream")?.state.last_sequence + 1;
                spec.reader_start = Some(next);
                DeliverPolicy::ByStartSequence { start_sequence: next }
            }
            Some(ns) => {
                let state = shards.info().await.context("reading the SHARDS stream")?.state.clone();
                let first_ns = state.first_timestamp.unix_timestamp_nanos() as i64;
                if state.first_sequence > 1 && ns < first_ns {
                    return Err(QueueError::BadRequest(format!(
                        "`start` {} is before the shard log's oldest message ({}): replay reaches back that far at most",
                        spec.start,
                        gossamer_schemas::time::format_rfc3339(first_ns)
                    )));
                }
                let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
                    .map_err(|e| QueueError::BadRequest(format!("invalid `start`: {e}")))?;
                DeliverPolicy::ByStartTime { start_time: t }
            }
        };
        let notify = self.js.get_stream(self.subjects.notify_stream()).await.context("opening the NOTIFY stream")?;
        notify.create_consumer(self.notify_consumer(&checked)).await.context("creating the queue's consumer")?;
        let reader = reader_name(&spec.name);
        // A reader left by a queue of the same name would resume where that one stopped.
        let _ = shards.delete_consumer(&reader).await;
        shards
            .create_consumer(pull::Config {
                durable_name: Some(reader),
                filter_subject: self.subjects.shards_wildcard(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: READ_ACK_WAIT,
                max_ack_pending: (READ_BATCH * 4) as i64,
                deliver_policy,
                ..Default::default()
            })
            .await
            .context("creating the queue's shard-log reader")?;
        spec.created_at = Some(now());
        let body = serde_json::to_vec(&spec).context("encoding the queue")?;
        self.kv.create(&spec.name, body.into()).await.map_err(|e| {
            QueueError::Conflict(format!("a queue named {} exists already ({e})", spec.name))
        })?;
        info!(queue = %spec.name, filter = %spec.filter, "queue-created");
        self.get(&spec.name).await
    }

    /// Changes a queue's filter, `max_deliver`, `ack_wait` or `backoff` (what the update
    /// names; the rest is kept); delivery goes on from where it is.
    pub async fn update(&self, name: &str, change: QueueUpdate) -> Result<QueueView, QueueError> {
        if let Some(other) = change.name.as_deref().filter(|n| *n != name) {
            return Err(QueueError::BadRequest(format!("the body names queue {other}, the path {name}")));
        }
        let old = self.spec(name).await?.ok_or_else(|| QueueError::NotFound(format!("no queue named {name}")))?;
        let spec = change.applied_to(old);
        let checked = spec.check().map_err(QueueError::BadRequest)?;
        let notify = self.js.get_stream(self.subjects.notify_stream()).await.context("opening the NOTIFY stream")?;
        notify.create_consumer(self.notify_consumer(&checked)).await.context("updating the queue's consumer")?;
        let body = serde_json::to_vec(&spec).context("encoding the queue")?;
        self.kv.put(name, body.into()).await.context("writing the queues bucket")?;
        info!(queue = %name, filter = %spec.filter, "queue-updated");
        self.get(name).await
    }

    /// Removes a queue: its definition, its consumers and its kept deliveries.
    pub async fn delete(&self, name: &str) -> Result<(), QueueError> {
        if self.spec(name).await?.is_none() {
            return Err(QueueError::NotFound(format!("no queue named {name}")));
        }
        self.kv.delete(name).await.context("writing the queues bucket")?;
        self.stop(name);
        let shards = self.js.get_stream(&self.shards_stream).await.context("opening the SHARDS stream")?;
        let _ = shards.delete_consumer(&reader_name(name)).await;
        let notify = self.js.get_stream(self.subjects.notify_stream()).await.context("opening the NOTIFY stream")?;
        let _ = notify.delete_consumer(name).await;
        notify.purge().filter(self.subjects.notify(name)).await.context("purging the queue's deliveries")?;
        self.counters.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        info!(queue = %name, "queue-deleted");
        Ok(())
    }

    pub async fn get(&self, name: &str) -> Result<QueueView, QueueError> {
        let spec = self.spec(name).await?.ok_or_else(|| QueueError::NotFound(format!("no queue named {name}")))?;
        Ok(self.view(spec).await)
    }

    pub async fn list(&self) -> Result<Vec<QueueView>, QueueError> {
        let mut out = Vec::new();
        for spec in self.specs().await? {
            out.push(self.view(spec).await);
        }
        Ok(out)
    }

    /// Every queue's definition, by name, without its figures.
    async fn specs(&self) -> Result<Vec<QueueSpec>, QueueError> {
        let mut names = Vec::new();
        let mut keys = self.kv.keys().await.context("listing the queues bucket")?;
        while let Some(k) = keys.next().await {
            names.push(k.context("listing the queues bucket")?);
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Some(spec) = self.spec(&name).await? {
                out.push(spec);
            }
        }
        Ok(out)
    }

    async fn view(&self, spec: QueueSpec) -> QueueView {
        let name = spec.name.clone();
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner()).get(&name).copied().unwrap_or_default();
        let mut stats = QueueStats { counters, ..Default::default() };
        if let Ok(notify) = self.js.get_stream(self.subjects.notify_stream()).await {
            let subject = self.subjects.notify(&name);
            if let Ok(info) = notify.info_with_subjects(&subject).await {
                let mut subjects = info;
                if let Some(Ok((_, n))) = subjects.next().await {
                    stats.stored = n as u64;
                }
            }
            if let Ok(mut c) = notify.get_consumer::<pull::Config>(&name).await {
                if let Ok(info) = c.info().await {
                    stats.pending = info.num_pending;
                    stats.ack_pending = info.num_ack_pending as u64;
                    // Every delivery takes a consumer sequence; deliveries past the
                    // first of each message are the redeliveries.
                    let handed_out = stats.stored.saturating_sub(stats.pending);
                    stats.redelivered = info.delivered.consumer_sequence.saturating_sub(handed_out);
                }
            }
        }
        stats.acked = stats.stored.saturating_sub(stats.pending + stats.ack_pending + stats.counters.dead_lettered);
        if let Ok(shards) = self.js.get_stream(&self.shards_stream).await {
            if let Ok(mut c) = shards.get_consumer::<pull::Config>(&reader_name(&name)).await {
                if let Ok(info) = c.info().await {
                    stats.backlog = info.num_pending + info.num_ack_pending as u64;
                }
            }
        }
        QueueView {
            subject: self.subjects.notify(&name),
            stream: self.subjects.notify_stream(),
            delivered_by: self.owner(&name),
            consumer: name,
            spec,
            stats,
        }
    }

    /// Answers a request on `gossamer.<cluster>.api.queues`: `{"op": "create", "queue":
    /// {...}}`, `{"op": "update", "queue": {...}}`, `{"op": "get"|"delete", "name": N}`,
    /// `{"op": "list"}`; errors are `{"error": "...", "status": N}`.
    pub async fn answer(&self, body: &[u8]) -> Value {
        let outcome = async {
            let req: Value =
                serde_json::from_slice(body).map_err(|e| QueueError::BadRequest(format!("invalid JSON body: {e}")))?;
            let name = || {
                req["name"].as_str().map(str::to_string).ok_or_else(|| QueueError::BadRequest("`name` is missing".into()))
            };
            let spec = || {
                serde_json::from_value::<QueueSpec>(req["queue"].clone())
                    .map_err(|e| QueueError::BadRequest(format!("invalid `queue`: {e}")))
            };
            let change = || {
                serde_json::from_value::<QueueUpdate>(req["queue"].clone())
                    .map_err(|e| QueueError::BadRequest(format!("invalid `queue`: {e}")))
            };
            Ok::<Value, QueueError>(match req["op"].as_str() {
                Some("create") => json!(self.create(spec()?).await?),
                Some("update") => {
                    let c = change()?;
                    let n = c.name.clone().ok_or_else(|| QueueError::BadRequest("`queue.name` is missing".into()))?;
                    json!(self.update(&n, c).await?)
                }
                Some("get") => json!(self.get(&name()?).await?),
                Some("delete") => {
                    let n = name()?;
                    self.delete(&n).await?;
                    json!({ "deleted": n })
                }
                Some("list") => json!({ "queues": self.list().await? }),
                other => {
                    return Err(QueueError::BadRequest(format!(
                        "unknown `op` {other:?}: use create, update, get, delete or list"
                    )))
                }
            })
        }
        .await;
        outcome.unwrap_or_else(|e| json!({ "error": e.to_string(), "status": e.status() }))
    }

    fn stop(&self, name: &str) {
        if let Some((_, task)) = self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(name) {
            task.abort();
        }
    }

    /// Starts (or restarts, when its definition changed) a queue's delivery.
    fn run(self: &Arc<Self>, spec: QueueSpec) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(&spec.name).is_some_and(|(s, _)| *s == spec) {
            return;
        }
        let checked = match spec.check() {
            Ok(c) => c,
            Err(e) => {
                warn!(queue = %spec.name, error = %e, "queue-definition-invalid");
                return;
            }
        };
        if let Some((_, old)) = running.remove(&spec.name) {
            old.abort();
        }
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                match me.deliver(&checked).await {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(queue = %checked.spec.name, error = format!("{e:#}"), "queue-delivery-failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        running.insert(spec.name.clone(), (spec, task));
    }

    /// Reads the shard log through the queue's reader and publishes what matches.
    async fn deliver(&self, c: &spec::Checked) -> Result<()> {
        let name = &c.spec.name;
        let shards = self.js.get_stream(&self.shards_stream).await.context("opening the SHARDS stream")?;
        let reader = self.reopen_reader(&shards, c).await?;
        let mut messages = reader
            .stream()
            .max_messages_per_batch(READ_BATCH)
            .max_bytes_per_batch(2 << 20)
            .messages()
            .await
            .context("reading the shard log")?
            .ready_chunks(READ_BATCH);
        let subject = self.subjects.notify(name);
        debug!(queue = %name, "queue-delivering");
        while let Some(chunk) = messages.next().await {
            let msgs = chunk.into_iter().collect::<Result<Vec<_>, _>>().context("reading the shard log")?;
            let filter = c.filter.clone();
            let payloads: Vec<bytes::Bytes> = msgs.iter().map(|m| m.payload.clone()).collect();
            let matches = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                for p in payloads {
                    // Deletes, updates and retention are not new events.
                    if let Ok(Some(events)) = ShardCommand::decode(&p).and_then(ShardCommand::into_inserted) {
                        out.extend(events.into_iter().filter(|e| filter.matches(e)).map(|e| (e.id, e.to_json().to_string())));
                    }
                }
                out
            })
            .await?;
            let mut acks = futures::stream::FuturesUnordered::new();
            let (mut published, mut duplicates) = (0, 0);
            let mut count = |ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>| -> Result<()> {
                if ack.context("the bus did not store a delivery")?.duplicate {
                    duplicates += 1;
                } else {
                    published += 1;
                }
                Ok(())
            };
            for (id, body) in &matches {
                // The client lets a few thousand publishes wait for their acks at
                // once, and a publish past that waits for one of them: take acks as
                // they come rather than all at the end.
                while acks.len() >= MAX_IN_FLIGHT {
                    if let Some(ack) = acks.next().await {
                        count(ack)?;
                    }
                }
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{name}:{id}").as_str());
                headers.insert("Gossamer-Queue", name.as_str());
                headers.insert("Gossamer-Event-Id", id.to_string().as_str());
                let ack = self
                    .js
                    .publish_with_headers(subject.clone(), headers, body.clone().into())
                    .await
                    .context("publishing a delivery")?;
                acks.push(std::future::IntoFuture::into_future(ack));
            }
            while let Some(ack) = acks.next().await {
                count(ack)?;
            }
            gossamer_bus::ack_all(&msgs).await.context("acking shard-log messages")?;
            let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            let n = counters.entry(name.clone()).or_default();
            n.matched += matches.len() as u64;
            n.published += published;
            n.duplicates += duplicates;
        }
        anyhow::bail!("the shard log's message stream ended")
    }

    /// The queue's shard-log reader, made afresh right after everything it has acked
    /// (the member taking a queue over goes on from there). A reader kept as it was
    /// would hand the messages a dead node had in flight to that node's pull requests
    /// until they expire; starting again from the ack floor reads them at once
    /// (publishing them again is harmless: NOTIFY drops repeated message ids). When the
    /// reader is gone (a node that deleted it died, or the delete's answer was lost),
    /// it starts where this node last knew it stood, else where the queue began: never
    /// past an event not yet delivered.
    async fn reopen_reader(&self, shards: &jetstream::stream::Stream, c: &spec::Checked) -> Result<jetstream::consumer::PullConsumer> {
        let name = &c.spec.name;
        let durable = reader_name(name);
        let began = match (c.spec.reader_start, c.since_ns) {
            (Some(seq), _) => DeliverPolicy::ByStartSequence { start_sequence: seq },
            (None, Some(ns)) => match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)) {
                Ok(t) => DeliverPolicy::ByStartTime { start_time: t },
                Err(_) => DeliverPolicy::All,
            },
            // Defined before queues kept where they began.
            (None, None) => DeliverPolicy::New,
        };
        let known = self.resume.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        let mut config = pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: self.subjects.shards_wildcard(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: READ_ACK_WAIT,
            max_ack_pending: (READ_BATCH * 4) as i64,
            deliver_policy: known.unwrap_or(began),
            ..Default::default()
        };
        if let Ok(info) = shards.consumer_info(&durable).await {
            config.deliver_policy = match info.config.deliver_policy {
                _ if info.ack_floor.stream_sequence > 0 => {
                    DeliverPolicy::ByStartSequence { start_sequence: info.ack_floor.stream_sequence + 1 }
                }
                // Made to start "now" and nothing acked yet: "now" again would skip what
                // came since. Its start is where what it has left (pending and waiting
                // for an ack) begins.
                DeliverPolicy::New => {
                    let last = shards.cached_info().state.last_sequence;
                    let left = info.num_pending + info.num_ack_pending as u64;
                    DeliverPolicy::ByStartSequence { start_sequence: (last + 1).saturating_sub(left).max(1) }
                }
                other => other,
            };
            self.resume.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), config.deliver_policy.clone());
            shards.delete_consumer(&durable).await.context("resetting the queue's shard-log reader")?;
        }
        shards.create_consumer(config).await.context("creating the queue's shard-log reader")
    }

    /// Moves deliveries that ran out of `max_deliver` to the dead-letter stream, with
    /// the reason. One node of the cluster handles each (a queue group).
    async fn dead_letters(self: Arc<Self>) -> Result<()> {
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*", self.subjects.notify_stream());
        let mut sub = self
            .nats
            .queue_subscribe(subject, format!("gossamer-{}-queue-dead-letters", self.subjects.cluster))
            .await
            .context("subscribing to max-deliveries advisories")?;
        let notify = self.js.get_stream(self.subjects.notify_stream()).await.context("opening the NOTIFY stream")?;
        while let Some(msg) = sub.next().await {
            let Ok(advisory) = serde_json::from_slice::<Value>(&msg.payload) else { continue };
            let (Some(queue), Some(seq)) = (advisory["consumer"].as_str(), advisory["stream_seq"].as_u64()) else { continue };
            let deliveries = advisory["deliveries"].as_u64().unwrap_or(0);
            let Ok(Some(spec)) = self.spec(queue).await else { continue };
            let Ok(original) = notify.get_raw_message(seq).await else {
                warn!(queue, seq, "dead-letter: the delivery is gone from NOTIFY");
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            let reason = format!(
                "queue {queue}: not acknowledged after {deliveries} deliveries (max_deliver {})",
                spec.max_deliver
            );
            headers.insert(gossamer_schemas::subjects::HEADER_ERROR, reason.as_str());
            headers.insert(gossamer_schemas::subjects::HEADER_SUBJECT, original.subject.as_str());
            headers.insert("Gossamer-Queue", queue);
            headers.insert("Nats-Msg-Id", format!("dead:{queue}:{seq}").as_str());
            let sent = self.js.publish_with_headers(self.deadletter_subject.clone(), headers, original.payload.clone()).await;
            match sent {
                Ok(ack) => {
                    if let Err(e) = ack.await {
                        warn!(queue, seq, error = %e, "dead-letter-failed");
                        continue;
                    }
                }
                Err(e) => {
                    warn!(queue, seq, error = %e, "dead-letter-failed");
                    continue;
                }
            }
            self.counters.lock().unwrap_or_else(|p| p.into_inner()).entry(queue.to_string()).or_default().dead_lettered += 1;
            info!(queue, seq, deliveries, "delivery-dead-lettered");
        }
        anyhow::bail!("the advisory subscription ended")
    }

    /// The member that delivers queue `name` now, as this node sees the cluster.
    pub fn owner(&self, name: &str) -> Option<String> {
        let members = self.deliverers.borrow();
        let nodes: Vec<&str> = members.iter().map(String::as_str).collect();
        gossamer_schemas::placement::queue_owner(name, &nodes).map(str::to_string)
    }

    /// Queues this node took over from a member that died or drained, since it started.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs the known queues this node delivers and stops the others. `moved`: the
    /// membership changed, so a queue started here is one taken over.
    fn reconcile(self: &Arc<Self>, moved: bool) {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, spec) in known.iter() {
            if self.owner(name).as_deref() == Some(self.me.as_str()) {
                let was = self.running.lock().unwrap_or_else(|p| p.into_inner()).contains_key(name);
                self.run(spec.clone());
                if moved && !was {
                    self.takeovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    info!(queue = %name, "queue-taken-over");
                }
            } else {
                self.stop(name);
            }
        }
        let running: Vec<String> = self.running.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for gone in running.iter().filter(|n| !known.contains_key(*n)) {
            self.stop(gone);
        }
    }

    /// Keeps the running deliveries equal to the bucket's definitions that this node
    /// delivers, as definitions and members change.
    async fn watch(self: Arc<Self>) -> Result<()> {
        // Watch first, then read what is there: a change between the two is seen twice
        // rather than missed (`run` ignores a definition it runs already). A watch with
        // history would do both, but nats-server 2.9 sends it no history.
        let mut watch = self.kv.watch_all().await.context("watching the queues bucket")?;
        let specs = self.specs().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = specs.into_iter().map(|s| (s.name.clone(), s)).collect();
        self.reconcile(false);
        let mut members = self.deliverers.clone();
        loop {
            tokio::select! {
                entry = watch.next() => {
                    let Some(entry) = entry else { anyhow::bail!("the queues bucket watch ended") };
                    let entry = entry.context("watching the queues bucket")?;
                    let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                    match entry.operation {
                        kv::Operation::Put => match serde_json::from_slice::<QueueSpec>(&entry.value) {
                            Ok(spec) => {
                                known.insert(spec.name.clone(), spec);
                            }
                            Err(e) => warn!(queue = %entry.key, error = %e, "queue-definition-unreadable"),
                        },
                        kv::Operation::Delete | kv::Operation::Purge => {
                            known.remove(&entry.key);
                            // A queue of the same name made later starts afresh.
                            self.resume.lock().unwrap_or_else(|p| p.into_inner()).remove(&entry.key);
                        }
                    }
                    drop(known);
                    self.reconcile(false);
                }
                changed = members.changed() => {
                    changed.context("the membership view ended")?;
                    self.reconcile(true);
                }
            }
        }
    }

    /// Every queue's counters, for `/metrics`.
    pub async fn all_stats(&self) -> Vec<(String, QueueStats)> {
        self.list().await.unwrap_or_default().into_iter().map(|v| (v.consumer, v.stats)).collect()
    }
}

/// The durable consumer through which a queue reads the shard log.
fn reader_name(queue: &str) -> String {
    format!("notify-{queue}")
}

/// Runs the queues of the cluster on this node: watches the definitions, delivers,
/// moves exhausted deliveries to the dead-letter stream, answers NATS requests.
pub struct QueueActor {
    queues: Arc<Queues>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl QueueActor {
    pub fn new(queues: Arc<Queues>) -> Self {
        Self { queues, tasks: Vec::new() }
    }
}

/// Runs `f` again a second after it fails, for as long as the actor lives.
fn forever<F, Fut>(what: &'static str, f: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    tokio::spawn(async move {
        loop {
            if let Err(e) = f().await {
                warn!(error = format!("{e:#}"), "{what}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        let q = self.queues.clone();
        self.tasks.push(forever("queue-watch-failed", move || q.clone().watch()));
        let q = self.queues.clone();
        self.tasks.push(forever("queue-dead-letters-failed", move || q.clone().dead_letters()));
        let q = self.queues.clone();
        self.tasks.push(forever("queue-requests-failed", move || {
            let q = q.clone();
            async move {
                let subject = q.subjects.api_queues();
                let mut sub = q
                    .nats
                    .queue_subscribe(subject, format!("gossamer-{}-queues", q.subjects.cluster))
                    .await
                    .context("subscribing to queue requests")?;
                while let Some(msg) = sub.next().await {
                    let Some(reply) = msg.reply.clone() else { continue };
                    let answer = q.answer(&msg.payload).await;
                    let _ = q.nats.publish(reply, answer.to_string().into()).await;
                }
                anyhow::bail!("the queue request subscription ended")
            }
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let names: Vec<String> = self.queues.running.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for n in names {
            self.queues.stop(&n);
        }
    }
}
