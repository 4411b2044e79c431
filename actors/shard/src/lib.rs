//! The shard actor: applies one shard's log (its subject of the SHARDS stream) into the
//! shard's sled tree, through its own durable consumer. A batch is acked only after the
//! batch and its sequence are flushed together, so a crash redelivers and the applied
//! sequence makes the redelivery a no-op. The consumer always resumes after the
//! sequence sled holds: sled is a view, the log is the truth, and a tree that lost data
//! replays it from the log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy, AckKind};
use futures::StreamExt;
use gossamer_schemas::subjects::Subjects;
use gossamer_schemas::ShardCommand;
use gossamer_storage::ShardStore;
use serde::Serialize;
use tracing::{debug, error, info, warn};

/// Times a replica asks its peers for a copy before replaying what the log has.
const SNAPSHOT_ATTEMPTS: u32 = 5;

/// Shard-log messages applied in one sled write.
const APPLY_BATCH: usize = 256;
/// Bytes of shard-log messages one shard pulls ahead at most, unless told otherwise
/// ([`ShardActor::with_pull_bytes`]). Must exceed the largest shard batch (ingest
/// splits them below 768 KiB), or such a batch would never come.
const PULL_BYTES: usize = 2 << 20;

/// What a shard actor reports.
#[derive(Debug, Clone, Default, Serialize, MessageResponse)]
pub struct ShardState {
    pub shard: u32,
    pub applied_seq: u64,
    pub events: u64,
    /// Shard-log messages not yet delivered to this actor, as of its last batch.
    pub pending: u64,
    /// Messages that could not be decoded (skipped, and logged).
    pub undecodable: u64,
    pub last_error: Option<String>,
    /// This replica has applied everything its shard's log held when it started (or
    /// found nothing left to read): it answers queries for its shard.
    pub caught_up: bool,
    /// Its consumer exists and `caught_up` has been decided once.
    pub started: bool,
    /// The last sequence of the shard's log when the replica started.
    pub catch_up_to: u64,
    /// Deliveries found missing (each made the replica start over after what it holds).
    pub gaps: u64,
    /// Times the tree was rebuilt (from a peer's copy, or emptied to replay the log).
    pub rebuilds: u64,
    /// Blocks sealed by ingest written as they came, and opened (for holding an id
    /// already stored).
    pub blocks_kept: u64,
    pub blocks_opened: u64,
    /// A [`Reload`] came while the loop was still preparing: it starts over once it
    /// has decided where it stands.
    #[serde(skip)]
    pub reload_pending: bool,
}

#[derive(Message)]
#[rtype(result = "ShardState")]
pub struct GetState;

pub struct ShardActor {
    js: jetstream::Context,
    stream: String,
    subjects: Subjects,
    node: String,
    store: ShardStore,
    state: Arc<Mutex<ShardState>>,
    pressure: Arc<gossamer_bus::Pressure>,
    snapshots: Option<SnapshotSource>,
    pull_bytes: usize,
    /// The apply loop now running.
    running: Option<SpawnHandle>,
}

/// Gets a copy of a shard from a live peer replica, one at the given sequence or later
/// (an empty copy, at 0, is no use to a replica rebuilding): an encoded snapshot (see
/// [`encode_snapshot`]); `None` when there is no peer to ask, an error when the peers
/// gave none (they may still be starting, or rebuilding themselves).
pub type SnapshotSource = Arc<dyn Fn(u32, u64) -> futures::future::BoxFuture<'static, Result<Option<Vec<u8>>>> + Send + Sync>;

/// The whole shard as one blob: its applied sequence and every key, MessagePack in zstd.
/// Taken under the shard's writer lock, so it is the shard as of one sequence.
pub fn encode_snapshot(store: &ShardStore) -> Result<(u64, Vec<u8>)> {
    let mut puts: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let done = store.export(None, &mut |r| {
        if let gossamer_storage::snapshot::Record::Put(k, v) = r {
            puts.push((k, v));
        }
        Ok(())
    })?;
    let bytes = rmp_serde::to_vec(&(done.applied, puts)).context("encoding the snapshot")?;
    Ok((done.applied, zstd::bulk::compress(&bytes, 3).context("compressing the snapshot")?))
}

/// The applied sequence a snapshot is of, read from its first bytes.
pub fn snapshot_sequence(bytes: &[u8]) -> Result<u64> {
    let mut head = zstd::stream::read::Decoder::new(bytes).context("decompressing the snapshot")?;
    let mut d = rmp_serde::Deserializer::new(&mut head);
    let (seq, _): (u64, serde::de::IgnoredAny) = serde::Deserialize::deserialize(&mut d).context("decoding the snapshot's sequence")?;
    Ok(seq)
}

/// The applied sequence a snapshot is of, and its keys.
fn decode_snapshot(bytes: &[u8]) -> Result<(u64, Vec<(Vec<u8>, Vec<u8>)>)> {
    let raw = zstd::stream::decode_all(bytes).context("decompressing the snapshot")?;
    rmp_serde::from_slice(&raw).context("decoding the snapshot")
}

impl ShardActor {
    /// Where this replica gets a peer's copy when its log no longer holds what it
    /// needs, or its tree is damaged.
    pub fn with_snapshots(mut self, source: SnapshotSource) -> Self {
        self.snapshots = Some(source);
        self
    }

    /// Bytes of shard-log messages this shard pulls ahead at most (the node's memory
    /// budget carves it); never under 1 MiB, so the largest batch still comes.
    pub fn with_pull_bytes(mut self, bytes: usize) -> Self {
        self.pull_bytes = bytes.max(1 << 20);
        self
    }

    /// `stream` is the SHARDS stream's name; `node` names the durable consumer, so every
    /// replica of a shard has its own.
    /// Every message applied is counted in `pressure.applied`.
    pub fn new(
        js: jetstream::Context,
        stream: String,
        cluster: &str,
        node: &str,
        store: ShardStore,
        pressure: Arc<gossamer_bus::Pressure>,
    ) -> Self {
        let state = ShardState {
            shard: store.shard(),
            applied_seq: store.applied_seq().unwrap_or(0),
            events: store.event_count().unwrap_or(0),
            ..Default::default()
        };
        Self {
            js,
            stream,
            subjects: Subjects::new(cluster),
            node: node.to_string(),
            store,
            state: Arc::new(Mutex::new(state)),
            pressure,
            snapshots: None,
            pull_bytes: PULL_BYTES,
            running: None,
        }
    }

    fn start_loop(&mut self, ctx: &mut Context<Self>) {
        let run = Runner {
            js: self.js.clone(),
            stream: self.stream.clone(),
            subject: self.subjects.shard(self.store.shard()),
            durable: format!("shard-{}-{}", self.store.shard(), self.node),
            store: self.store.clone(),
            state: self.state.clone(),
            pressure: self.pressure.clone(),
            snapshots: self.snapshots.clone(),
            pull_bytes: self.pull_bytes,
        };
        let state = self.state.clone();
        self.running = Some(ctx.spawn(
            async move {
                match run.run().await {
                    // A gap: start over at once.
                    Ok(()) => Duration::ZERO,
                    Err(e) => {
                        warn!(shard = run.store.shard(), error = format!("{e:#}"), "shard-loop-failed");
                        state.lock().unwrap().last_error = Some(format!("{e:#}"));
                        Duration::from_secs(1)
                    }
                }
            }
            .into_actor(self)
            .map(|after, _, ctx| {
                ctx.run_later(after, |act, ctx| act.start_loop(ctx));
            }),
        ));
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        debug!(shard = self.store.shard(), "shard-started");
        self.start_loop(ctx);
    }
}

impl Handler<GetState> for ShardActor {
    type Result = ShardState;

    fn handle(&mut self, _: GetState, _: &mut Self::Context) -> ShardState {
        self.state.lock().unwrap().clone()
    }
}

/// Stop applying (the shard moved to other members). The durable consumer stays until
/// [`forget`] removes it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The log was moved past what this replica holds (a backup was restored on another
/// node): start the apply loop again, so it rebuilds from a copy before applying. A
/// replica still preparing finishes that first (its rebuild is not cut short), then
/// starts over.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload;

impl Handler<Reload> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: Reload, ctx: &mut Self::Context) {
        {
            let mut st = self.state.lock().unwrap();
            if !st.caught_up {
                st.reload_pending = true;
                return;
            }
            // What it holds may be what the log moved past: answer nothing until the
            // apply loop has looked again.
            st.caught_up = false;
        }
        if let Some(h) = self.running.take() {
            ctx.cancel_future(h);
        }
        info!(shard = self.store.shard(), "shard-reloaded");
        self.start_loop(ctx);
    }
}

impl Handler<Stop> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        debug!(shard = self.store.shard(), "shard-stopped");
        ctx.stop();
    }
}

/// Removes `node`'s durable consumer of `shard` (after its actor stopped).
pub async fn forget(js: &jetstream::Context, stream: &str, shard: u32, node: &str) -> Result<()> {
    let stream = js.get_stream(stream).await.context("opening the SHARDS stream")?;
    match stream.delete_consumer(&format!("shard-{shard}-{node}")).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("removing the consumer of shard {shard}: {e}")),
    }
}

/// Shard applies running at once, across every shard of the node: one per core.
fn apply_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)))
}

/// Turns a `DeleteWhere` query into a predicate. Queries are checked before they are
/// published, so one that does not parse here deletes nothing.
fn compile_delete_query(q: &str) -> Option<gossamer_storage::Predicate> {
    let expr = gossamer_query::parse(q).ok()?;
    Some(Box::new(move |e| expr.matches(e)))
}

struct Runner {
    js: jetstream::Context,
    stream: String,
    subject: String,
    durable: String,
    store: ShardStore,
    state: Arc<Mutex<ShardState>>,
    pressure: Arc<gossamer_bus::Pressure>,
    snapshots: Option<SnapshotSource>,
    pull_bytes: usize,
}

impl Runner {
    /// Before applying: a damaged tree, or one whose next sequences the log no longer
    /// holds, is rebuilt from a live peer's snapshot (a damaged one with no peer to copy
    /// is emptied and replays what the log has).
    async fn prepare(&self, stream: &mut jetstream::stream::Stream) -> Result<()> {
        let shard = self.store.shard();
        let store = self.store.clone();
        let damaged = tokio::task::spawn_blocking(move || store.check()).await?.err();
        let store = self.store.clone();
        let (applied, covered) = if damaged.is_some() {
            (0, 0)
        } else {
            tokio::task::spawn_blocking(move || Ok::<_, anyhow::Error>((store.applied_seq()?, store.covered_seq()?))).await??
        };
        let first = stream.info().await.context("reading the SHARDS stream's state")?.state.first_sequence;
        // Messages after what this replica holds have left the log (some may be its own).
        let behind_log = covered + 1 < first;
        if damaged.is_none() && !behind_log {
            return Ok(());
        }
        let why = match &damaged {
            Some(e) => format!("its tree is damaged ({e})"),
            None => format!("it holds up to sequence {covered} and the log starts at {first}"),
        };
        self.state.lock().unwrap().caught_up = false;
        // A peer answers only for a replica it has caught up on, so its copy holds every
        // batch of this shard that left the log. Peers may still be starting: try a few
        // times before going on with what the log has.
        let mut copy = None;
        if let Some(source) = &self.snapshots {
            for attempt in 0..SNAPSHOT_ATTEMPTS {
                // A peer that is itself waiting for a restored copy holds nothing yet.
                match source(shard, applied.max(1)).await {
                    Ok(Some(bytes)) => {
                        copy = Some(bytes);
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => debug!(shard, attempt, error = format!("{e:#}"), "shard-no-peer-copy-yet"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let usable = match copy {
            Some(bytes) => {
                let (at, puts) = tokio::task::spawn_blocking(move || decode_snapshot(&bytes)).await??;
                // Never a copy older than what this replica holds.
                (damaged.is_some() || at >= applied).then_some((at, puts))
            }
            None => None,
        };
        match usable {
            Some((at, puts)) => {
                warn!(shard, reason = %why, from_sequence = at, "shard-rebuilt-from-peer");
                let store = self.store.clone();
                let events = tokio::task::spawn_blocking(move || -> Result<u64> {
                    store.wipe()?;
                    let mut restoring = store.begin_restore()?;
                    for (k, v) in puts {
                        restoring.record(gossamer_storage::snapshot::Record::Put(k, v))?;
                    }
                    restoring.finish()?;
                    // The peer was caught up: its copy holds every change of this shard
                    // that left the log, so the next start does not copy it again.
                    store.set_covered(first.saturating_sub(1))?;
                    Ok(store.event_count()?)
                })
                .await??;
                let mut st = self.state.lock().unwrap();
                st.rebuilds += 1;
                st.applied_seq = at;
                st.events = events;
            }
            None if damaged.is_some() => {
                warn!(shard, reason = %why, "shard-rebuilt-from-log");
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.wipe()).await??;
                let mut st = self.state.lock().unwrap();
                st.rebuilds += 1;
                st.applied_seq = 0;
                st.events = 0;
            }
            // Alone (or no peer had a copy): apply what the log has. After a restore, or
            // when the batches that left were other shards', this is all there is.
            None => info!(shard, reason = %why, "shard-replays-what-the-log-holds"),
        }
        Ok(())
    }

    async fn run(&self) -> Result<()> {
        let shard = self.store.shard();
        let mut stream = self.js.get_stream(&self.stream).await.context("opening the SHARDS stream")?;
        self.prepare(&mut stream).await?;
        let store = self.store.clone();
        let applied = tokio::task::spawn_blocking(move || store.applied_seq()).await??;
        // Start the durable consumer afresh right after what sled holds. Keeping the old
        // one would be wrong: messages it had delivered to a previous incarnation come
        // back only after their ack wait, out of order, behind sequences applied since,
        // and the applied-sequence check would then skip them.
        match stream.delete_consumer(&self.durable).await {
            Ok(_) => debug!(shard, applied, "shard-consumer-reset"),
            Err(e) if matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {}
            Err(e) => return Err(anyhow::anyhow!("resetting the shard consumer: {e}")),
        }
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &self.durable,
                pull::Config {
                    durable_name: Some(self.durable.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    max_ack_pending: (APPLY_BATCH * 4) as i64,
                    filter_subject: self.subject.clone(),
                    // Where it stands is in sled, and the consumer is made anew at every
                    // start: one copy in memory is enough, and quick to make on a NATS
                    // cluster (no replicated consumer state to agree on).
                    num_replicas: 1,
                    memory_storage: true,
                    deliver_policy: if applied == 0 {
                        DeliverPolicy::All
                    } else {
                        DeliverPolicy::ByStartSequence { start_sequence: applied + 1 }
                    },
                    ..Default::default()
                },
            )
            .await
            .context("creating the shard consumer")?;
        // Caught up once everything the log holds now is applied: the last message of
        // this shard's subject (a count of pending messages alone would not do, as a
        // busy shard may never see it reach zero).
        let target = match stream.get_last_raw_message_by_subject(&self.subject).await {
            Ok(m) => m.sequence,
            Err(e) if matches!(e.kind(), jetstream::stream::LastRawMessageErrorKind::NoMessageFound) => 0,
            Err(e) => {
                warn!(shard, error = %e, "shard-log-end-unknown");
                u64::MAX
            }
        };
        {
            let mut st = self.state.lock().unwrap();
            st.catch_up_to = target;
            st.caught_up |= applied >= target;
            st.started = true;
            if std::mem::take(&mut st.reload_pending) {
                st.caught_up = false;
                info!(shard, "shard-reloaded");
                return Ok(());
            }
        }
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(APPLY_BATCH)
            // Sixty-four shards pull ahead at once: cap each by bytes too.
            .max_bytes_per_batch(self.pull_bytes)
            .messages()
            .await
            .context("pulling from SHARDS")?
            .ready_chunks(APPLY_BATCH);
        debug!(shard, applied, "shard-applying");
        // Every delivery this consumer makes has the next consumer sequence. One that
        // skips ahead means a delivery never reached us (lost in a reconnect, or on a
        // server that restarted); it would come back only after its ack wait, behind
        // later sequences, and be skipped as applied. So apply what came before the
        // gap, then start over right after what sled holds.
        let mut last_delivery = 0u64;
        while let Some(chunk) = messages.next().await {
            let mut msgs = chunk.into_iter().collect::<Result<Vec<_>, _>>().context("receiving from SHARDS")?;
            let mut gap = None;
            for (i, m) in msgs.iter().enumerate() {
                let info = m.info().map_err(|e| anyhow::anyhow!("reading message info: {e}"))?;
                if info.consumer_sequence != last_delivery + 1 {
                    gap = Some((i, info.consumer_sequence));
                    break;
                }
                last_delivery = info.consumer_sequence;
            }
            if let Some((i, got)) = gap {
                msgs.truncate(i);
                if !msgs.is_empty() {
                    self.apply(&msgs).await?;
                }
                warn!(shard, expected = last_delivery + 1, got, "shard-delivery-gap");
                self.state.lock().unwrap().gaps += 1;
                return Ok(());
            }
            if let Err(e) = self.apply(&msgs).await {
                for m in &msgs {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                }
                return Err(e);
            }
            // A reload asked for while it was catching up: now that it has.
            let mut st = self.state.lock().unwrap();
            if st.caught_up && std::mem::take(&mut st.reload_pending) {
                st.caught_up = false;
                info!(shard, "shard-reloaded");
                return Ok(());
            }
        }
        anyhow::bail!("the SHARDS message stream ended")
    }

    async fn apply(&self, msgs: &[jetstream::Message]) -> Result<()> {
        let shard = self.store.shard();
        let mut frames = Vec::with_capacity(msgs.len());
        let mut pending = 0;
        for m in msgs {
            let info = m.info().map_err(|e| anyhow::anyhow!("reading message info: {e}"))?;
            pending = info.pending;
            frames.push((info.stream_sequence, m.payload.clone()));
        }
        let store = self.store.clone();
        // Decoding and the sled write run on the blocking pool, a few shards at a time:
        // sixty-four shards writing at once on two cores only add thread switches, while
        // a shard that waits gathers a bigger batch for its next write.
        let _permit = apply_permits().acquire().await.context("the apply limiter closed")?;
        let (outcome, undecodable) = tokio::task::spawn_blocking(move || {
            let mut commands = Vec::with_capacity(frames.len());
            let mut undecodable = 0;
            for (seq, payload) in frames {
                match ShardCommand::decode(&payload) {
                    Ok(cmd) => commands.push((seq, cmd)),
                    Err(e) => {
                        // Written by ingest; one that cannot be read can never be applied.
                        error!(shard, seq, error = %e, "shard-batch-undecodable");
                        undecodable += 1;
                    }
                }
            }
            store.apply_with(commands, &compile_delete_query).map(|o| (o, undecodable))
        })
        .await?
        .context("applying to sled")?;
        gossamer_bus::ack_all(msgs).await.context("acking shard batches")?;
        self.pressure.applied.fetch_add(msgs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let store = self.store.clone();
        let (applied_seq, events) =
            tokio::task::spawn_blocking(move || Ok::<_, anyhow::Error>((store.applied_seq()?, store.event_count()?)))
                .await??;
        debug!(shard, seq = applied_seq, stored = outcome.stored, duplicates = outcome.duplicates, "batch-applied");
        let mut st = self.state.lock().unwrap();
        st.applied_seq = applied_seq;
        st.events = events;
        st.pending = pending;
        st.caught_up |= pending == 0 || applied_seq >= st.catch_up_to;
        st.undecodable += undecodable;
        if outcome.blocks_undecodable > 0 {
            error!(shard, blocks = outcome.blocks_undecodable, "sealed-blocks-undecodable");
        }
        st.undecodable += outcome.blocks_undecodable;
        st.blocks_kept += outcome.blocks_kept;
        st.blocks_opened += outcome.blocks_opened;
        Ok(())
    }
}
