//! Shard storage in sled.
//!
//! One sled database per node, one tree per shard. A shard's tree holds:
//! - `b` + seq (u64 BE): a block, the events one apply call added (keyed by the last
//!   sequence that added events), compressed;
//!   the value starts with the block's min and max `ts` and its event count so time
//!   ranges skip blocks without decompressing them;
//! - `i` + event id (16 bytes): the seq of the block holding that event (dedupe, get);
//! - `s` + stream name: events stored for that stream (u64 BE);
//! - `m:applied`, `m:count`: the last applied shard-log sequence and the event count.
//!
//! A block, its ids, the counters and the applied sequence are written in one atomic
//! sled batch and flushed before [`ShardStore::apply`] returns, so a caller that acks the
//! shard log after `apply` never loses an acked batch and never applies one twice.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gossamer_schemas::batch::{decode_events, encode_events, CodecError};
use gossamer_schemas::{Event, ShardCommand};
use uuid::Uuid;

const APPLIED: &[u8] = b"m:applied";
const COUNT: &[u8] = b"m:count";
const BLOCK: u8 = b'b';
const ID: u8 = b'i';
const STREAM: u8 = b's';
const HEADER: usize = 20;
/// zstd level for stored blocks.
const BLOCK_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("shard {shard}: corrupt entry: {what}")]
    Corrupt { shard: u32, what: String },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// The node's sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    gate: Arc<FlushGate>,
}

/// Group commit: shards that wrote while a flush ran share the next one, instead of
/// each paying its own fsync.
#[derive(Default)]
struct FlushGate {
    /// Writes completed so far.
    written: AtomicU64,
    /// The count of writes the last finished flush covered.
    flushed: Mutex<u64>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new().path(path).cache_capacity(128 << 20).open()?;
        Ok(Self { db, gate: Arc::default() })
    }

    pub fn shard(&self, shard: u32) -> Result<ShardStore> {
        let tree = self.db.open_tree(format!("shard-{shard}"))?;
        Ok(ShardStore { shard, tree, db: self.db.clone(), gate: self.gate.clone() })
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// What applying a shard-log message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Events newly stored.
    pub stored: u64,
    /// Events skipped because their id was already stored.
    pub duplicates: u64,
    /// Messages skipped because their sequence was already applied.
    pub replayed: u64,
}

/// Time bounds of a block, read without decompressing it.
#[derive(Debug, Clone, Copy)]
pub struct BlockMeta {
    pub seq: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub count: u32,
}

/// One shard's tree. Cheap to clone; reads may run on any thread while the shard actor
/// writes.
#[derive(Clone)]
pub struct ShardStore {
    shard: u32,
    tree: sled::Tree,
    db: sled::Db,
    gate: Arc<FlushGate>,
}

fn u64_of(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

impl ShardStore {
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The last shard-log sequence applied (0 when none).
    pub fn applied_seq(&self) -> Result<u64> {
        Ok(u64_of(self.tree.get(APPLIED)?))
    }

    pub fn event_count(&self) -> Result<u64> {
        Ok(u64_of(self.tree.get(COUNT)?))
    }

    /// Events stored per stream.
    pub fn stream_counts(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for kv in self.tree.scan_prefix([STREAM]) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            out.insert(name, u64_of(Some(v)));
        }
        Ok(out)
    }

    /// Applies shard-log messages `(sequence, command)` in order, in one atomic write,
    /// then flushes. Messages at or below the applied sequence are skipped.
    pub fn apply(&self, commands: &[(u64, ShardCommand)]) -> Result<Applied> {
        let mut applied_seq = self.applied_seq()?;
        let mut count = self.event_count()?;
        let mut streams: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen: HashSet<Uuid> = HashSet::new();
        let mut batch = sled::Batch::default();
        let mut outcome = Applied::default();
        // Every new event of this call goes into one block, keyed by the last sequence
        // that added events: fewer keys, and better compression than a block per message.
        let mut fresh: Vec<Event> = Vec::new();
        let mut block_seq = 0;
        for (seq, cmd) in commands {
            if *seq <= applied_seq {
                outcome.replayed += 1;
                continue;
            }
            match cmd {
                ShardCommand::Insert { events } => {
                    for e in events {
                        if !seen.insert(e.id) || self.tree.contains_key(key(ID, e.id.as_bytes()))? {
                            outcome.duplicates += 1;
                        } else {
                            fresh.push(e.clone());
                            block_seq = *seq;
                        }
                    }
                }
            }
            applied_seq = *seq;
        }
        if !fresh.is_empty() {
            for e in &fresh {
                batch.insert(key(ID, e.id.as_bytes()), &block_seq.to_be_bytes());
                *streams.entry(e.stream.clone()).or_default() += 1;
            }
            batch.insert(key(BLOCK, &block_seq.to_be_bytes()), encode_block(&fresh)?);
            count += fresh.len() as u64;
            outcome.stored += fresh.len() as u64;
        }
        for (name, added) in streams {
            let k = key(STREAM, name.as_bytes());
            let before = u64_of(self.tree.get(&k)?);
            batch.insert(k, &(before + added).to_be_bytes());
        }
        batch.insert(COUNT, &count.to_be_bytes());
        batch.insert(APPLIED, &applied_seq.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.make_durable()?;
        Ok(outcome)
    }

    /// Returns once a flush that started after this thread's last write has finished.
    fn make_durable(&self) -> Result<()> {
        let mine = self.gate.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.gate.flushed.lock().unwrap_or_else(|p| p.into_inner());
        if *flushed >= mine {
            return Ok(());
        }
        // Every write counted up to here finished before it was counted.
        let covered = self.gate.written.load(Ordering::SeqCst);
        self.db.flush()?;
        *flushed = covered;
        Ok(())
    }

    /// The event with this id, if this shard holds it.
    pub fn get(&self, id: &Uuid) -> Result<Option<Event>> {
        let Some(seq) = self.tree.get(key(ID, id.as_bytes()))? else {
            return Ok(None);
        };
        let Some(block) = self.tree.get(key(BLOCK, &seq))? else {
            return Err(self.corrupt(format!("id {id} points at a missing block")));
        };
        Ok(self.decode_block(&block)?.into_iter().find(|e| e.id == *id))
    }

    /// Calls `f` with every block whose time bounds overlap `[from, to)`, newest
    /// sequence first when `reverse`; `f` gets the block's metadata and decodes the
    /// events only if it asks for them.
    pub fn for_each_block(
        &self,
        from: i64,
        to: i64,
        reverse: bool,
        mut f: impl FnMut(BlockMeta, &dyn Fn() -> Result<Vec<Event>>) -> ControlFlow<()>,
    ) -> Result<()> {
        let iter = self.tree.scan_prefix([BLOCK]);
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if reverse { Box::new(iter.rev()) } else { Box::new(iter) };
        for kv in iter {
            let (k, v) = kv?;
            let meta = self.block_meta(&k, &v)?;
            if meta.max_ts < from || meta.min_ts >= to {
                continue;
            }
            let decode = || self.decode_block(&v);
            if f(meta, &decode).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn block_meta(&self, k: &[u8], v: &[u8]) -> Result<BlockMeta> {
        if k.len() != 9 || v.len() < HEADER {
            return Err(self.corrupt("short block".into()));
        }
        let n = |r: std::ops::Range<usize>| -> [u8; 8] { v[r].try_into().unwrap() };
        Ok(BlockMeta {
            seq: u64::from_be_bytes(k[1..9].try_into().unwrap()),
            min_ts: i64::from_be_bytes(n(0..8)),
            max_ts: i64::from_be_bytes(n(8..16)),
            count: u32::from_be_bytes(v[16..20].try_into().unwrap()),
        })
    }

    fn decode_block(&self, v: &[u8]) -> Result<Vec<Event>> {
        if v.len() < HEADER {
            return Err(self.corrupt("short block".into()));
        }
        Ok(decode_events(&v[HEADER..])?)
    }

    fn corrupt(&self, what: String) -> StorageError {
        StorageError::Corrupt { shard: self.shard, what }
    }
}

fn encode_block(events: &[Event]) -> Result<Vec<u8>> {
    let min = events.iter().map(|e| e.ts).min().unwrap_or(0);
    let max = events.iter().map(|e| e.ts).max().unwrap_or(0);
    let body = encode_events(events, BLOCK_LEVEL)?;
    let mut v = Vec::with_capacity(HEADER + body.len());
    v.extend_from_slice(&min.to_be_bytes());
    v.extend_from_slice(&max.to_be_bytes());
    v.extend_from_slice(&(events.len() as u32).to_be_bytes());
    v.extend_from_slice(&body);
    Ok(v)
}

#[cfg(test)]
mod tests;
