//! The index actor: keeps every shard's index (postings in sled) up with the blocks the
//! shard actors store, on one worker thread of its own, so indexing lags, catches up and
//! restarts without touching ingest or the shard log. Queries read the index and scan
//! whatever it has not covered yet, so a lagging index slows answers but never changes
//! them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use gossamer_index::{Lag, ShardIndex, Tally};
use gossamer_storage::ShardStore;
use serde::Serialize;
use tracing::{info, warn};

/// Events indexed into one new segment at most.
const STEP_EVENTS: u64 = 16 * 1024;
/// The pause when there was nothing to do.
const IDLE: Duration = Duration::from_millis(100);
/// The worker thread's nice value: ingest and queries go first, and the index takes
/// the CPU they leave (little against a busy thread, all of it when they wait). It
/// lags during a burst and catches up after it; `max_index_lag` bounds how far.
const NICENESS: i32 = 19;

/// What the index actor reports.
#[derive(Debug, Clone, Default, Serialize, MessageResponse)]
pub struct IndexState {
    /// Events stored but not indexed yet, over every shard (queries scan them).
    pub lag_events: u64,
    pub lag_blocks: u64,
    /// Blocks rewritten by deletes or updates whose segments are not rebuilt yet.
    pub dirty_blocks: u64,
    pub segments: u64,
    /// Per shard, in shard order.
    pub shards: Vec<Lag>,
    pub indexed_events_total: u64,
    pub merges_total: u64,
    pub rebuilds_total: u64,
    /// Indexes dropped and rebuilt: on request, or found damaged.
    pub resets_total: u64,
    pub last_error: Option<String>,
}

/// The whole state: the counters include every step whose work the lags show (read
/// after them from a tally steps add to before they write), so every stored event is
/// counted as indexed or as lagging, and a step in progress may be counted in both.
#[derive(Message)]
#[rtype(result = "IndexState")]
pub struct GetState;

/// Events stored but not indexed yet, measured now without waiting for the worker (for
/// ingest's back-pressure).
#[derive(Message)]
#[rtype(result = "u64")]
pub struct GetLag;

/// Drops every shard's index; the worker rebuilds them from the shards' blocks.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reindex;

struct Shared {
    state: Mutex<IndexState>,
    /// Indexed events, merges and rebuilds, counted by the steps themselves.
    tally: Arc<Tally>,
    stop: AtomicBool,
    reindex: AtomicBool,
}

pub struct IndexActor {
    shards: Vec<ShardStore>,
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl IndexActor {
    pub fn new(shards: Vec<ShardStore>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(IndexState { shards: vec![Lag::default(); shards.len()], ..Default::default() }),
            tally: Arc::default(),
            stop: AtomicBool::new(false),
            reindex: AtomicBool::new(false),
        });
        Self { shards, shared, worker: None }
    }
}

impl Actor for IndexActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        let indexes: Vec<ShardIndex> =
            self.shards.iter().cloned().map(|s| ShardIndex::new(s).with_tally(self.shared.tally.clone())).collect();
        let shared = self.shared.clone();
        self.worker = Some(
            std::thread::Builder::new()
                .name("gossamer-index".into())
                .spawn(move || work(indexes, shared))
                .expect("starting the index thread"),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.worker.take() {
            w.thread().unpark();
            let _ = w.join();
        }
    }
}

impl Handler<GetState> for IndexActor {
    type Result = ResponseFuture<IndexState>;

    fn handle(&mut self, _: GetState, _: &mut Self::Context) -> Self::Result {
        let shards = self.shards.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            // Lags are measured when asked, not by the worker: a busy node delays its
            // passes (it runs at a low priority), so its figures would be stale. Off the
            // actor's thread: it reads sled.
            let measured = tokio::task::spawn_blocking({
                let shared = shared.clone();
                move || {
                    // Resets are counted after the clear they stand for, work before
                    // the write that shows it: read the first before the lags and the
                    // second after, so a reader that sees a reset sees what it undid,
                    // and one that sees work done sees it counted.
                    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    set_lags(&mut st, measure(shards));
                    st
                }
            })
            .await;
            let mut st = measured.unwrap_or_else(|e| {
                let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
                st.last_error = Some(format!("measuring the index's lag failed: {e}"));
                st
            });
            st.indexed_events_total = shared.tally.indexed_events.load(Ordering::SeqCst);
            st.rebuilds_total = shared.tally.rebuilt_segments.load(Ordering::SeqCst);
            st.merges_total = shared.tally.merged_segments.load(Ordering::SeqCst);
            st
        })
    }
}

impl Handler<GetLag> for IndexActor {
    type Result = ResponseFuture<u64>;

    fn handle(&mut self, _: GetLag, _: &mut Self::Context) -> Self::Result {
        let shards = self.shards.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || measure(shards)).await {
                Ok(lags) => lags.iter().map(|l| l.events).sum(),
                Err(e) => {
                    warn!(error = %e, "index-lag-not-measured");
                    0
                }
            }
        })
    }
}

fn measure(shards: Vec<ShardStore>) -> Vec<Lag> {
    shards.into_iter().map(|s| ShardIndex::new(s).lag().unwrap_or_default()).collect()
}

impl Handler<Reindex> for IndexActor {
    type Result = ();

    fn handle(&mut self, _: Reindex, _: &mut Self::Context) {
        self.shared.reindex.store(true, Ordering::SeqCst);
        if let Some(w) = &self.worker {
            w.thread().unpark();
        }
    }
}

/// Lowers the calling thread's scheduling priority (Linux: a thread's nice value is
/// its own), for background work that must not slow ingest or queries.
pub fn lower_priority() {
    // SAFETY: gettid and setpriority take and return plain integers.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICENESS)
    };
    if rc != 0 {
        warn!(error = %std::io::Error::last_os_error(), "priority-not-lowered");
    }
}

fn work(indexes: Vec<ShardIndex>, shared: Arc<Shared>) {
    lower_priority();
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.reindex.swap(false, Ordering::SeqCst) {
            info!(shards = indexes.len(), "reindex-requested");
            for ix in &indexes {
                if let Err(e) = ix.clear() {
                    warn!(shard = ix.shard(), error = %e, "index-clear-failed");
                }
            }
            // Counted once the indexes are cleared, so a reader that sees the reset
            // also sees the work it left.
            shared.state.lock().unwrap_or_else(|p| p.into_inner()).resets_total += indexes.len() as u64;
        }
        let mut worked = false;
        for ix in &indexes {
            let step = ix.step(STEP_EVENTS);
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            match step {
                Ok(s) => {
                    worked |= s.did_work();
                    st.resets_total += u64::from(s.reset);
                }
                Err(e) => {
                    warn!(shard = ix.shard(), error = %e, "index-step-failed");
                    st.last_error = Some(format!("shard {}: {e}", ix.shard()));
                }
            }
        }
        if !worked && !shared.stop.load(Ordering::SeqCst) {
            std::thread::park_timeout(IDLE);
        }
    }
}

fn set_lags(st: &mut IndexState, lags: Vec<Lag>) {
    st.lag_events = lags.iter().map(|l| l.events).sum();
    st.lag_blocks = lags.iter().map(|l| l.blocks).sum();
    st.dirty_blocks = lags.iter().map(|l| l.dirty_blocks).sum();
    st.segments = lags.iter().map(|l| l.segments).sum();
    st.shards = lags;
}

#[cfg(test)]
mod tests {
    use gossamer_schemas::{Event, ShardCommand};
    use gossamer_storage::Store;

    use super::*;

    /// Every state read while the worker indexes counts each event once: as indexed or
    /// as lag, never neither (a reader that saw a step's segments before its count said
    /// the index had caught up with events missing from the total).
    #[actix_rt::test]
    async fn every_state_counts_each_stored_event_once_as_indexed_or_lagging() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let shards: Vec<ShardStore> = (0..4).map(|s| store.shard(s).unwrap()).collect();
        let mut stored = 0u64;
        for (s, shard) in shards.iter().enumerate() {
            for round in 0..8u64 {
                let events: Vec<Event> = (0..5_000u64)
                    .map(|i| Event {
                        id: uuid::Uuid::from_u128(((s as u128) << 64) | u128::from(round * 5_000 + i)),
                        ts: (round * 5_000 + i) as i64,
                        stream: "app".into(),
                        level: "info".into(),
                        message: format!("request {i} served in {} ms", i % 97),
                        labels: Default::default(),
                        fields: Default::default(),
                    })
                    .collect();
                stored += events.len() as u64;
                shard.apply(vec![(round + 1, ShardCommand::Insert { events })]).unwrap();
            }
        }
        let index = IndexActor::new(shards).start();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut reads = 0;
        loop {
            let st = index.send(GetState).await.unwrap();
            reads += 1;
            assert!(st.indexed_events_total + st.lag_events >= stored, "read {reads} lost events: {st:?}");
            if st.lag_events == 0 {
                assert_eq!(st.indexed_events_total, stored, "caught up: {st:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the index did not catch up: {st:?}");
        }
        assert!(reads > 1, "the index was read while it worked");
        assert_eq!(index.send(GetLag).await.unwrap(), 0);

        // A reindex: a state that counts the resets shows what they undid (what
        // `gossamer admin reindex --wait` waits on), and the events indexed again are
        // counted again.
        index.send(Reindex).await.unwrap();
        loop {
            let st = index.send(GetState).await.unwrap();
            if st.resets_total < 4 {
                assert!(st.indexed_events_total + st.lag_events >= stored, "{st:?}");
                assert!(std::time::Instant::now() < deadline, "the reindex did not start: {st:?}");
                continue;
            }
            assert!(st.indexed_events_total + st.lag_events >= 2 * stored, "a reset seen without its work: {st:?}");
            if st.lag_events == 0 {
                assert_eq!(st.indexed_events_total, 2 * stored, "caught up again: {st:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the index did not catch up again: {st:?}");
        }
    }
}
