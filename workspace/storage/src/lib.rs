//! Shard storage in sled.
//!
//! One sled database per node, one tree per shard. A shard's tree holds:
//! - `b` + block id (u64 BE: the shard-log sequence that added the events, shifted left
//!   16 bits, plus a part number): up to 512 events in time order, compressed in frames
//!   of 128 (so one event is read without decompressing the block); the value starts
//!   with the block's min and max `ts` and its event count so time ranges skip blocks
//!   without decompressing them (format: `gossamer_schemas::batch::encode_block`).
//!   Ingest seals most blocks itself; the shard writes them as they came unless one
//!   holds an id already stored;
//! - `h` + seq: the block's header alone, to list time bounds without reading blocks;
//! - `k` + block id: the block's event ids, sorted, each with its position (dedupe, get
//!   and delete by id): one key per block, not per event; in memory, a Bloom filter over
//!   every id and one per block say which lists to read;
//! - `s` + stream name: events stored for that stream (u64 BE);
//! - `m:applied`, `m:count`: the last applied shard-log sequence and the event count;
//! - `d` + block id: a block rewritten or removed (by a delete, an update or retention)
//!   since the index saw it, with the sequence that changed it; the index rebuilds what
//!   covers it and clears the mark, and until then queries scan that block;
//! - `w` + block id: the last sequence that rewrote or removed the block, kept for good
//!   (an incremental backup takes the blocks changed after its parent's sequence).
//!
//! Each shard also has an index tree (`index-<n>`), written by the index actor alone.
//!
//! A block, its ids, the counters and the applied sequence are written in one atomic
//! sled batch and flushed before [`ShardStore::apply`] returns, so a caller that acks the
//! shard log after `apply` never loses an acked batch and never applies one twice.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gossamer_schemas::batch::{
    block_frames, decode_block, decode_events_at, encode_block, for_each_lite, CodecError, LiteEvent, SealedBlock, BLOCK_EVENTS,
    BLOCK_HEADER as HEADER, FRAME_EVENTS,
};
use gossamer_schemas::{Event, ShardCommand};
use uuid::Uuid;

const APPLIED: &[u8] = b"m:applied";
const COUNT: &[u8] = b"m:count";
/// The shard-log sequence up to which the replica holds every change of its shard,
/// when that is past the last one it applied: it was filled from a peer's copy or a
/// restore after the log had moved on, and nothing of this shard in between is missing.
const COVERED: &[u8] = b"m:covered";
/// The highest block id up to which every block is in the layout written now.
const UPGRADED: &[u8] = b"m:upgraded";
const BLOCK: u8 = b'b';
/// `k` + block id: the block's ids, sorted, each with its position in the block.
const IDS: u8 = b'k';
const ID_ENTRY: usize = 18;
const STREAM: u8 = b's';
const RESULT: u8 = b'r';
const HEAD: u8 = b'h';
const DIRTY: u8 = b'd';
/// `w` + block id: the last sequence that rewrote or removed it.
const REWRITTEN: u8 = b'w';

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("shard {shard}: corrupt entry: {what}")]
    Corrupt { shard: u32, what: String },
    #[error("shard {shard} is not empty: {what}")]
    NotEmpty { shard: u32, what: String },
    #[error("shard {shard}: {source}")]
    Io { shard: u32, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// The node's sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    gate: Arc<FlushGate>,
    /// One id filter per shard, shared by every handle on that shard.
    filters: Arc<Mutex<BTreeMap<u32, SharedFilter>>>,
    /// One index cache slot per shard, likewise.
    caches: Arc<Mutex<BTreeMap<u32, IndexCache>>>,
    /// One writer lock per shard, likewise.
    writers: Arc<Mutex<BTreeMap<u32, Arc<Mutex<()>>>>>,
    /// Blocks read for their events since the store was opened, every shard's.
    reads: Arc<AtomicU64>,
}

/// Whatever the index keeps in memory for a shard, with the index generation it is of.
pub type IndexCache = Arc<Mutex<Option<(u64, Arc<dyn std::any::Any + Send + Sync>)>>>;

/// A shard's id filter, built on its first apply.
type SharedFilter = Arc<Mutex<Option<IdFilter>>>;

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
        Self::open_with_cache(path, 64 << 20)
    }

    /// [`Store::open`] with sled's page cache set to `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self> {
        let db = sled::Config::new().path(path).cache_capacity(cache_bytes).open()?;
        Ok(Self { db, gate: Arc::default(), filters: Arc::default(), caches: Arc::default(), writers: Arc::default(), reads: Arc::default() })
    }

    pub fn shard(&self, shard: u32) -> Result<ShardStore> {
        let tree = self.db.open_tree(format!("shard-{shard}"))?;
        let index = self.db.open_tree(format!("index-{shard}"))?;
        let filter = self.filters.lock().unwrap_or_else(|p| p.into_inner()).entry(shard).or_default().clone();
        let index_cache = self.caches.lock().unwrap_or_else(|p| p.into_inner()).entry(shard).or_default().clone();
        let writer = self.writers.lock().unwrap_or_else(|p| p.into_inner()).entry(shard).or_default().clone();
        Ok(ShardStore { shard, tree, index, index_cache, db: self.db.clone(), gate: self.gate.clone(), filter, writer, reads: self.reads.clone() })
    }

    /// How many blocks have been read for their events (by queries, exports, the index)
    /// since the store was opened: what `/metrics` shows as `gossamer_blocks_read_total`.
    pub fn blocks_read(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Per-stream retention (max age in ns), as set through the API.
    pub fn retentions(&self) -> Result<BTreeMap<String, i64>> {
        let meta = self.db.open_tree("meta")?;
        let mut out = BTreeMap::new();
        for kv in meta.scan_prefix(b"retention:") {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[b"retention:".len()..]).into_owned();
            out.insert(name, u64_of(Some(v)) as i64);
        }
        Ok(out)
    }

    /// Sets (or with `None` clears) a stream's retention.
    pub fn set_retention(&self, stream: &str, max_age_ns: Option<i64>) -> Result<()> {
        let meta = self.db.open_tree("meta")?;
        let k = format!("retention:{stream}");
        match max_age_ns {
            Some(ns) => meta.insert(k, &(ns as u64).to_be_bytes())?,
            None => meta.remove(k)?,
        };
        meta.flush()?;
        Ok(())
    }

    /// A value of the node's own settings (`meta` tree).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.open_tree("meta")?.get(key)?.map(|v| v.to_vec()))
    }

    /// Sets (or with `None` removes) a value of the node's own settings, durably.
    pub fn set_meta(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let meta = self.db.open_tree("meta")?;
        match value {
            Some(v) => meta.insert(key, v)?,
            None => meta.remove(key)?,
        };
        meta.flush()?;
        Ok(())
    }

    /// Keys and bytes (keys plus values) by kind, over every tree: what the data is made
    /// of, apart from sled's own overhead.
    pub fn usage(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let family = name.split('-').next().unwrap_or("").to_string();
            for kv in tree.iter() {
                let (k, v) = kv?;
                let kind = match (family.as_str(), k.first()) {
                    ("shard", Some(&BLOCK)) => "shard: event blocks",
                    ("shard", Some(&HEAD)) => "shard: block headers",
                    ("shard", Some(&IDS)) => "shard: id lists",
                    ("shard", _) => "shard: other",
                    ("index", Some(b'p')) => "index: terms, short postings",
                    ("index", Some(b'q')) => "index: long postings",
                    ("index", Some(b'g')) => "index: segments",
                    ("index", _) => "index: other",
                    _ => "other",
                };
                let e = out.entry(kind.to_string()).or_default();
                e.0 += 1;
                e.1 += (k.len() + v.len()) as u64;
            }
        }
        Ok(out)
    }

    /// True when shard `n` has a tree in this database.
    pub fn has_shard(&self, n: u32) -> Result<bool> {
        let name = format!("shard-{n}");
        Ok(self.db.tree_names().iter().any(|t| t.as_ref() == name.as_bytes()))
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
    pub deleted: u64,
    pub updated: u64,
    /// Sealed blocks written as they came.
    pub blocks_kept: u64,
    /// Sealed blocks opened (holding an id already stored).
    pub blocks_opened: u64,
    /// Sealed blocks skipped because their frames could not be read (written by a
    /// faulty producer): every replica skips the same ones.
    pub blocks_undecodable: u64,
}

/// An event filter for `DeleteWhere`, compiled by the caller.
pub type Predicate = Box<dyn Fn(&Event) -> bool + Send + Sync>;

/// The changes of one apply call, gathered before one atomic write: blocks touched
/// (read once, rewritten or removed at the end), the new block, id moves and counters.
struct Work<'s> {
    store: &'s ShardStore,
    /// The shard's id filter, held for the whole call.
    filter: std::sync::MutexGuard<'s, Option<IdFilter>>,
    /// Existing blocks this call changed: their new events (empty: remove the block).
    blocks: BTreeMap<u64, Vec<Event>>,
    /// The new block and the last sequence that added to it.
    fresh: Vec<Event>,
    fresh_seq: u64,
    /// Where this call put ids: `Some(block seq)` ([`FRESH`] for the new block), or
    /// removed (`None`).
    ids: std::collections::HashMap<Uuid, Option<u64>>,
    streams: BTreeMap<String, i64>,
    count: u64,
    /// Blocks that came sealed, by their new key: written as they came.
    sealed: BTreeMap<u64, SealedBlock>,
    /// Sealed blocks this call then changed (moved to `blocks`): new blocks, so not
    /// marked as rewritten.
    opened: std::collections::BTreeSet<u64>,
    /// The next free part number of each sequence's block keys.
    parts: BTreeMap<u64, u64>,
}

/// The `ids` marker for events in the new block.
const FRESH: u64 = u64::MAX;
/// A block's key is the sequence that added it (for events inserted one by one, the
/// call's last adding sequence), shifted, plus its part.
pub const PART_BITS: u32 = 16;

impl<'s> Work<'s> {
    fn new(store: &'s ShardStore) -> Result<Self> {
        let count = store.event_count()?;
        let mut filter = store.filter.lock().unwrap_or_else(|p| p.into_inner());
        if filter.as_ref().is_none_or(|f| f.inserted >= f.capacity) {
            *filter = Some(IdFilter::build(&store.tree, count, store.shard)?);
        }
        Ok(Self {
            store,
            filter,
            blocks: BTreeMap::new(),
            fresh: Vec::new(),
            fresh_seq: 0,
            ids: Default::default(),
            streams: BTreeMap::new(),
            count,
            sealed: BTreeMap::new(),
            opened: Default::default(),
            parts: BTreeMap::new(),
        })
    }

    /// The key for the next block that sequence `seq` adds.
    fn next_key(&mut self, seq: u64) -> u64 {
        let part = self.parts.entry(seq).or_default();
        *part += 1;
        (seq << PART_BITS) | (*part - 1)
    }

    /// Takes a block sealed by ingest whose ids are all new: it is written as it came.
    fn seal(&mut self, seq: u64, block: SealedBlock) {
        let at = self.next_key(seq);
        for id in &block.ids {
            if let Some(f) = &mut *self.filter {
                f.insert(id);
            }
            self.ids.insert(*id, Some(at));
        }
        for (stream, n) in &block.streams {
            *self.streams.entry(stream.clone()).or_default() += i64::from(*n);
        }
        self.count += block.ids.len() as u64;
        self.sealed.insert(at, block);
    }

    /// Whether none of `block`'s ids is stored, nor repeated within it.
    fn all_new(&self, block: &SealedBlock) -> Result<bool> {
        let mut sorted = block.ids.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Ok(false);
        }
        for id in &block.ids {
            if self.locate(id)?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Where the event with `id` is now: a block seq, [`FRESH`], or nowhere.
    fn locate(&self, id: &Uuid) -> Result<Option<u64>> {
        if let Some(at) = self.ids.get(id) {
            return Ok(*at);
        }
        match self.filter.as_ref() {
            Some(f) => Ok(f.find(&self.store.tree, id, self.store.shard)?.map(|(block, _)| block)),
            None => Ok(None),
        }
    }

    fn insert(&mut self, seq: u64, e: Event) {
        if let Some(f) = &mut *self.filter {
            f.insert(&e.id);
        }
        self.ids.insert(e.id, Some(FRESH));
        *self.streams.entry(e.stream.clone()).or_default() += 1;
        self.count += 1;
        self.fresh.push(e);
        self.fresh_seq = seq;
    }

    /// Adds the events whose ids are not stored yet; counts the others as duplicates.
    fn insert_new(&mut self, seq: u64, events: Vec<Event>, outcome: &mut Applied) -> Result<()> {
        for e in events {
            if self.locate(&e.id)?.is_some() {
                outcome.duplicates += 1;
            } else {
                self.insert(seq, e);
                outcome.stored += 1;
            }
        }
        Ok(())
    }

    /// The events of block `seq` as this call sees them, loaded on first touch.
    fn block_mut(&mut self, seq: u64) -> Result<&mut Vec<Event>> {
        if seq == FRESH {
            return Ok(&mut self.fresh);
        }
        if let Some(sealed) = self.sealed.remove(&seq) {
            self.blocks.insert(seq, decode_block(&sealed.bytes)?);
            self.opened.insert(seq);
        }
        if !self.blocks.contains_key(&seq) {
            let events = match self.store.tree.get(key(BLOCK, &seq.to_be_bytes()))? {
                Some(v) => self.store.decode_block(&v)?,
                None => return Err(self.store.corrupt(format!("block {seq} is indexed but missing"))),
            };
            self.blocks.insert(seq, events);
        }
        Ok(self.blocks.get_mut(&seq).expect("loaded above"))
    }

    fn forget(&mut self, e: &Event) {
        self.ids.insert(e.id, None);
        *self.streams.entry(e.stream.clone()).or_default() -= 1;
        self.count -= 1;
    }

    fn delete_ids(&mut self, ids: &[Uuid]) -> Result<u64> {
        let mut n = 0;
        for id in ids {
            let Some(at) = self.locate(id)? else { continue };
            let block = self.block_mut(at)?;
            if let Some(i) = block.iter().position(|e| e.id == *id) {
                let e = block.remove(i);
                self.forget(&e);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes the events in `[from, to)` that `pred` accepts, in every block.
    fn delete_matching(&mut self, from: i64, to: i64, pred: &dyn Fn(&Event) -> bool) -> Result<u64> {
        let hit = |e: &Event| e.ts >= from && e.ts < to && pred(e);
        let mut touched = Vec::new();
        self.store.for_each_block(from, to, false, |meta, _| {
            touched.push(meta.seq);
            ControlFlow::Continue(())
        })?;
        touched.extend(self.blocks.keys().copied());
        touched.extend(self.sealed.keys().copied());
        touched.push(FRESH);
        touched.sort_unstable();
        touched.dedup();
        let mut n = 0;
        for seq in touched {
            // Look before loading into the working set, so untouched blocks are not
            // rewritten.
            let any = match (seq, self.blocks.get(&seq)) {
                (FRESH, _) => self.fresh.iter().any(hit),
                (_, Some(events)) => events.iter().any(hit),
                (_, None) if self.sealed.contains_key(&seq) => decode_block(&self.sealed[&seq].bytes)?.iter().any(hit),
                (_, None) => match self.store.tree.get(key(BLOCK, &seq.to_be_bytes()))? {
                    Some(v) => self.store.decode_block(&v)?.iter().any(hit),
                    None => false,
                },
            };
            if !any {
                continue;
            }
            let block = self.block_mut(seq)?;
            let (gone, kept): (Vec<Event>, Vec<Event>) = std::mem::take(block).into_iter().partition(|e| hit(e));
            *block = kept;
            for e in &gone {
                self.forget(e);
            }
            n += gone.len() as u64;
        }
        Ok(n)
    }

    fn update(
        &mut self,
        id: &Uuid,
        labels: &BTreeMap<String, Option<String>>,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64> {
        let Some(at) = self.locate(id)? else { return Ok(0) };
        let block = self.block_mut(at)?;
        let Some(e) = block.iter_mut().find(|e| e.id == *id) else { return Ok(0) };
        for (k, v) in labels {
            match v {
                Some(v) => e.labels.insert(k.clone(), v.clone()),
                None => e.labels.remove(k),
            };
        }
        for (k, v) in fields {
            if v.is_null() {
                e.fields.remove(k);
            } else {
                e.fields.insert(k.clone(), v.clone());
            }
        }
        Ok(1)
    }

    /// The sled batch holding every change; `stamp` marks the blocks it rewrites.
    fn finish(self, stamp: u64) -> Result<sled::Batch> {
        let mut batch = sled::Batch::default();
        let mut filter = self.filter;
        for (seq, events) in &self.blocks {
            // A block new in this call is not indexed or backed up yet: nothing to mark.
            if !self.opened.contains(seq) {
                batch.insert(key(DIRTY, &seq.to_be_bytes()), &stamp.to_be_bytes());
                batch.insert(key(REWRITTEN, &seq.to_be_bytes()), &stamp.to_be_bytes());
            }
            if events.is_empty() {
                batch.remove(key(BLOCK, &seq.to_be_bytes()));
                batch.remove(key(HEAD, &seq.to_be_bytes()));
                batch.remove(key(IDS, &seq.to_be_bytes()));
                if let Some(f) = &mut *filter {
                    f.blocks.remove(seq);
                }
            } else {
                put_block(&mut batch, *seq, events)?;
                put_ids(&mut batch, &mut filter, *seq, events);
            }
        }
        // New events, in time order, in blocks of at most BLOCK_EVENTS: narrow time
        // bounds let newest-first searches stop after the newest blocks.
        let mut fresh = self.fresh;
        fresh.sort_by_key(|e| e.ts);
        let first_part = self.parts.get(&self.fresh_seq).copied().unwrap_or(0);
        for (part, chunk) in fresh.chunks(BLOCK_EVENTS).enumerate() {
            let block = (self.fresh_seq << PART_BITS) | (first_part + part as u64);
            put_block(&mut batch, block, chunk)?;
            put_ids(&mut batch, &mut filter, block, chunk);
        }
        for (at, sealed) in &self.sealed {
            batch.insert(key(HEAD, &at.to_be_bytes()), &sealed.bytes[..HEADER]);
            batch.insert(key(BLOCK, &at.to_be_bytes()), sealed.bytes.as_slice());
            put_id_list(&mut batch, &mut filter, *at, sealed.ids.iter().enumerate().map(|(i, id)| (*id, i as u16)).collect());
        }
        for (name, delta) in &self.streams {
            if *delta == 0 {
                continue;
            }
            let k = key(STREAM, name.as_bytes());
            let now = u64_of(self.store.tree.get(&k)?) as i64 + delta;
            if now <= 0 {
                batch.remove(k);
            } else {
                batch.insert(k, &(now as u64).to_be_bytes());
            }
        }
        batch.insert(COUNT, &self.count.to_be_bytes());
        Ok(batch)
    }
}

/// Time bounds of a block, read without decompressing it.
#[derive(Debug, Clone, Copy)]
pub struct BlockMeta {
    /// The block's id (its key).
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
    /// The shard's index tree, for the index actor and queries.
    index: sled::Tree,
    index_cache: IndexCache,
    db: sled::Db,
    gate: Arc<FlushGate>,
    /// Built on the first apply: which ids may be stored, so new ids skip the lookup.
    filter: SharedFilter,
    /// Held by every write to the shard tree, and by exports, so an export sees the
    /// shard as of one applied sequence.
    writer: Arc<Mutex<()>>,
    reads: Arc<AtomicU64>,
}

/// Where a shard's ids are, without a sled key per event: every block's ids are one
/// sorted list (`k` + block id). In memory, a Bloom filter over every id says "no" for
/// certain, so a new event costs no read, and a small filter per block says which
/// lists to read for a "maybe". Deleted ids leave the global filter only when it is
/// rebuilt (a false "maybe" costs a few lookups); it doubles, rebuilt from the lists,
/// when it fills up.
struct IdFilter {
    bits: Vec<u64>,
    /// Ids it was sized for.
    capacity: u64,
    inserted: u64,
    blocks: BTreeMap<u64, Vec<u64>>,
}

/// Bits per id (with 4 probes: about 0.2% false "maybe").
const FILTER_BITS_PER_ID: u64 = 16;
const FILTER_MIN_CAPACITY: u64 = 1 << 16;
/// Bits per id in a block's filter (4 probes: about 1% false "maybe").
const BLOCK_FILTER_BITS_PER_ID: usize = 10;

fn probes(id: &Uuid, nbits: u64) -> impl Iterator<Item = usize> {
    let h = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
    let (h1, h2) = (h as u64, (h >> 64) as u64 | 1);
    (0..4u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % nbits) as usize)
}

fn bloom_has(bits: &[u64], id: &Uuid) -> bool {
    probes(id, bits.len() as u64 * 64).all(|b| bits[b / 64] & (1 << (b % 64)) != 0)
}

fn bloom_add(bits: &mut [u64], id: &Uuid) {
    let n = bits.len() as u64 * 64;
    for b in probes(id, n) {
        bits[b / 64] |= 1 << (b % 64);
    }
}

fn block_bloom<'a>(ids: impl ExactSizeIterator<Item = &'a Uuid>) -> Vec<u64> {
    let mut bits = vec![0u64; (ids.len() * BLOCK_FILTER_BITS_PER_ID).div_ceil(64).max(1)];
    for id in ids {
        bloom_add(&mut bits, id);
    }
    bits
}

/// The `(id, position)` entries of an id list value.
fn id_entries(v: &[u8]) -> impl Iterator<Item = (Uuid, u16)> + '_ {
    v.chunks_exact(ID_ENTRY).map(|c| (Uuid::from_slice(&c[..16]).expect("16 bytes"), u16::from_be_bytes([c[16], c[17]])))
}

impl IdFilter {
    fn build(tree: &sled::Tree, at_least: u64, shard: u32) -> Result<Self> {
        let capacity = (at_least * 2).max(FILTER_MIN_CAPACITY).next_power_of_two();
        let mut f =
            Self { bits: vec![0; (capacity * FILTER_BITS_PER_ID / 64) as usize], capacity, inserted: 0, blocks: BTreeMap::new() };
        for kv in tree.scan_prefix([IDS]) {
            let (k, v) = kv?;
            let block = k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            let (Some(block), true) = (block, v.len() % ID_ENTRY == 0) else {
                return Err(StorageError::Corrupt { shard, what: "an id list".into() });
            };
            let ids: Vec<Uuid> = id_entries(&v).map(|(id, _)| id).collect();
            for id in &ids {
                f.insert(id);
            }
            f.blocks.insert(block, block_bloom(ids.iter()));
        }
        Ok(f)
    }

    fn may_contain(&self, id: &Uuid) -> bool {
        bloom_has(&self.bits, id)
    }

    fn insert(&mut self, id: &Uuid) {
        bloom_add(&mut self.bits, id);
        self.inserted += 1;
    }

    /// The block and position of `id`, if the shard holds it.
    fn find(&self, tree: &sled::Tree, id: &Uuid, shard: u32) -> Result<Option<(u64, u16)>> {
        if !self.may_contain(id) {
            return Ok(None);
        }
        for (block, bits) in &self.blocks {
            if !bloom_has(bits, id) {
                continue;
            }
            let Some(v) = tree.get(key(IDS, &block.to_be_bytes()))? else { continue };
            if v.len() % ID_ENTRY != 0 {
                return Err(StorageError::Corrupt { shard, what: format!("the id list of block {block}") });
            }
            let n = v.len() / ID_ENTRY;
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                let at = &v[mid * ID_ENTRY..mid * ID_ENTRY + 16];
                match at.cmp(id.as_bytes()) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => {
                        let pos = u16::from_be_bytes([v[mid * ID_ENTRY + 16], v[mid * ID_ENTRY + 17]]);
                        return Ok(Some((*block, pos)));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// Writes block `seq`'s id list and updates the filters.
fn put_ids(batch: &mut sled::Batch, filter: &mut Option<IdFilter>, seq: u64, events: &[Event]) {
    put_id_list(batch, filter, seq, events.iter().enumerate().map(|(i, e)| (e.id, i as u16)).collect());
}

/// Writes block `seq`'s id list from its `(id, position)` pairs and updates the filters.
fn put_id_list(batch: &mut sled::Batch, filter: &mut Option<IdFilter>, seq: u64, mut ids: Vec<(Uuid, u16)>) {
    ids.sort_unstable();
    let mut v = Vec::with_capacity(ids.len() * ID_ENTRY);
    for (id, pos) in &ids {
        v.extend_from_slice(id.as_bytes());
        v.extend_from_slice(&pos.to_be_bytes());
    }
    batch.insert(key(IDS, &seq.to_be_bytes()), v);
    if let Some(f) = filter {
        f.blocks.insert(seq, block_bloom(ids.iter().map(|(id, _)| id)));
    }
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

    /// The shard-log sequence up to which this replica holds every change of its shard:
    /// its applied sequence, or more when a copy or a restore covered what the log no
    /// longer holds (see [`ShardStore::set_covered`]).
    pub fn covered_seq(&self) -> Result<u64> {
        Ok(self.applied_seq()?.max(u64_of(self.tree.get(COVERED)?)))
    }

    /// Records that nothing of this shard up to shard-log sequence `seq` is missing here,
    /// though the last change applied may be older (a replica filled from a caught-up
    /// peer's copy, or a restore, after the log moved past it). Without it such a replica
    /// would look behind the log at each start and copy the shard again.
    pub fn set_covered(&self, seq: u64) -> Result<()> {
        let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if seq > u64_of(self.tree.get(COVERED)?) {
            self.tree.insert(COVERED, &seq.to_be_bytes())?;
            self.tree.flush()?;
        }
        Ok(())
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
    /// `DeleteWhere` commands need `compile` to turn their query into a predicate; one
    /// that does not compile deletes nothing (it was checked before it was published).
    pub fn apply(&self, commands: Vec<(u64, ShardCommand)>) -> Result<Applied> {
        self.apply_with(commands, &|_| None)
    }

    /// [`ShardStore::apply`], with a compiler for `DeleteWhere` queries.
    pub fn apply_with(&self, commands: Vec<(u64, ShardCommand)>, compile: &dyn Fn(&str) -> Option<Predicate>) -> Result<Applied> {
        let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut applied_seq = self.applied_seq()?;
        let mut w = Work::new(self)?;
        let mut outcome = Applied::default();
        let mut results: Vec<(u64, u64)> = Vec::new();
        for (seq, cmd) in commands {
            if seq <= applied_seq {
                outcome.replayed += 1;
                continue;
            }
            match cmd {
                ShardCommand::Insert { events } => w.insert_new(seq, events, &mut outcome)?,
                ShardCommand::Blocks { blocks } => {
                    for block in blocks {
                        if w.all_new(&block)? {
                            outcome.blocks_kept += 1;
                            outcome.stored += block.ids.len() as u64;
                            w.seal(seq, block);
                        } else {
                            // A retried batch, or ids repeated by their producer: open it.
                            match decode_block(&block.bytes) {
                                Ok(events) => {
                                    outcome.blocks_opened += 1;
                                    w.insert_new(seq, events, &mut outcome)?;
                                }
                                Err(_) => outcome.blocks_undecodable += 1,
                            }
                        }
                    }
                }
                ShardCommand::Delete { ids } => {
                    let n = w.delete_ids(&ids)?;
                    outcome.deleted += n;
                    results.push((seq, n));
                }
                ShardCommand::DeleteWhere { q, from, to } => {
                    let n = match compile(&q) {
                        Some(pred) => w.delete_matching(from, to, &|e| pred(e))?,
                        None => 0,
                    };
                    outcome.deleted += n;
                    results.push((seq, n));
                }
                ShardCommand::Retention { stream, before } => {
                    let n = w.delete_matching(i64::MIN, before, &|e| e.stream == stream)?;
                    outcome.deleted += n;
                    results.push((seq, n));
                }
                ShardCommand::Update { id, labels, fields } => {
                    let n = w.update(&id, &labels, &fields)?;
                    outcome.updated += n;
                    results.push((seq, n));
                }
            }
            applied_seq = seq;
        }
        let mut batch = w.finish(applied_seq)?;
        for (seq, n) in results {
            batch.insert(key(RESULT, &seq.to_be_bytes()), &n.to_be_bytes());
        }
        batch.insert(APPLIED, &applied_seq.to_be_bytes());
        if let Err(e) = self.tree.apply_batch(batch) {
            // The filters already hold this call's changes: rebuild them from what sled has.
            *self.filter.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Err(e.into());
        }
        self.make_durable()?;
        Ok(outcome)
    }

    /// How many events the delete or update command at `seq` touched, once applied.
    pub fn command_result(&self, seq: u64) -> Result<Option<u64>> {
        Ok(self.tree.get(key(RESULT, &seq.to_be_bytes()))?.map(|v| u64_of(Some(v))))
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
        let found = {
            let mut filter = self.filter.lock().unwrap_or_else(|p| p.into_inner());
            if filter.is_none() {
                *filter = Some(IdFilter::build(&self.tree, self.event_count()?, self.shard)?);
            }
            filter.as_ref().expect("built above").find(&self.tree, id, self.shard)?
        };
        let Some((block, pos)) = found else { return Ok(None) };
        Ok(self.read_block_at(block, &[u32::from(pos)])?.into_iter().map(|(_, e)| e).find(|e| e.id == *id))
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

    /// The shard's index tree.
    pub fn index_tree(&self) -> &sled::Tree {
        &self.index
    }

    /// The index's in-memory slot for this shard, shared by every handle on it.
    pub fn index_cache(&self) -> &IndexCache {
        &self.index_cache
    }

    /// Blocks rewritten or removed since the index last covered them, with the
    /// sequence that marked each.
    pub fn dirty_blocks(&self) -> Result<BTreeMap<u64, u64>> {
        let mut out = BTreeMap::new();
        for kv in self.tree.scan_prefix([DIRTY]) {
            let (k, v) = kv?;
            let id = k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            let Some(id) = id else { return Err(self.corrupt("short dirty-block key".into())) };
            out.insert(id, u64_of(Some(v)));
        }
        Ok(out)
    }

    /// Clears block `id`'s dirty mark if it is still the one with `stamp` (a newer
    /// rewrite keeps its mark).
    pub fn clear_dirty(&self, id: u64, stamp: u64) -> Result<()> {
        let _ = self.tree.compare_and_swap(key(DIRTY, &id.to_be_bytes()), Some(&stamp.to_be_bytes()[..]), None::<&[u8]>)?;
        Ok(())
    }

    /// The highest block id up to which every block is known to be in the layout
    /// written now (0: none checked yet). A full copy carries it with the blocks.
    pub fn upgraded_to(&self) -> Result<u64> {
        Ok(u64_of(self.tree.get(UPGRADED)?))
    }

    /// How many blocks past [`ShardStore::upgraded_to`] are in a layout written by an
    /// earlier version (rows), which [`ShardStore::upgrade_blocks`] rewrites. Blocks
    /// that cannot be read are not counted.
    pub fn blocks_to_upgrade(&self) -> Result<u64> {
        let from = self.upgraded_to()?.saturating_add(1);
        let mut n = 0;
        for kv in self.tree.range(key(BLOCK, &from.to_be_bytes())..key(BLOCK + 1, &[])) {
            let (_, v) = kv?;
            n += u64::from(matches!(gossamer_schemas::batch::block_is_current(&v), Ok(false)));
        }
        Ok(n)
    }

    /// Rewrites in the layout written now the blocks in an earlier one, going through
    /// at most `max` blocks from id `from` on, in one write that waits for the
    /// shard's writes. A block keeps its events in their order, so its id list and the
    /// index's postings still hold, and a reader sees it whole before or after. Returns
    /// how many it rewrote and the id to go on from; `None` when it went through the
    /// last block, and then every block so far is recorded as upgraded. A block that
    /// cannot be read is left as it is (queries report it).
    pub fn upgrade_blocks(&self, from: u64, max: usize) -> Result<(usize, Option<u64>)> {
        let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let (mut seen, mut done, mut last) = (0, 0, None);
        for kv in self.tree.range(key(BLOCK, &from.to_be_bytes())..key(BLOCK + 1, &[])) {
            let (k, v) = kv?;
            let id = k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            let Some(id) = id else { return Err(self.corrupt("short block key".into())) };
            if seen == max {
                self.tree.apply_batch(batch)?;
                return Ok((done, Some(id)));
            }
            seen += 1;
            last = Some(id);
            if !matches!(gossamer_schemas::batch::block_is_current(&v), Ok(false)) {
                continue;
            }
            if let Ok(events) = decode_block(&v) {
                batch.insert(k, encode_block(&events)?);
                done += 1;
            }
        }
        if let Some(id) = last {
            if id > self.upgraded_to()? {
                batch.insert(UPGRADED, &id.to_be_bytes());
            }
        }
        self.tree.apply_batch(batch)?;
        Ok((done, None))
    }

    /// The headers of the blocks with ids in `[lo, hi]`, in id order.
    pub fn blocks_between(&self, lo: u64, hi: u64) -> Result<Vec<BlockMeta>> {
        let mut out = Vec::new();
        for kv in self.tree.range(key(HEAD, &lo.to_be_bytes())..=key(HEAD, &hi.to_be_bytes())) {
            let (k, v) = kv?;
            out.push(self.block_meta(&k, &v)?);
        }
        Ok(out)
    }

    /// One block's header, if the block exists.
    pub fn block_header(&self, id: u64) -> Result<Option<BlockMeta>> {
        let k = key(HEAD, &id.to_be_bytes());
        match self.tree.get(&k)? {
            Some(v) => Ok(Some(self.block_meta(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// The events at `positions` (ascending) of block `id`, with their positions.
    pub fn read_block_at(&self, id: u64, positions: &[u32]) -> Result<Vec<(u32, Event)>> {
        match self.tree.get(key(BLOCK, &id.to_be_bytes()))? {
            Some(v) => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                let frames = self.frames(&v)?;
                let mut out = Vec::with_capacity(positions.len());
                by_frame(positions, |n, base, local| {
                    if let Some(frame) = frames.get(n) {
                        out.extend(decode_events_at(frame, local)?.into_iter().map(|(p, e)| (p + base, e)));
                    }
                    Ok(())
                })?;
                Ok(out)
            }
            None => Ok(Vec::new()),
        }
    }

    /// Calls `f` with the events at `positions` (ascending; `None`: all) of block `id`,
    /// decoded without their ids and messages (see [`for_each_lite`]).
    pub fn read_block_lite(&self, id: u64, positions: Option<&[u32]>, f: &mut dyn FnMut(u32, &LiteEvent<'_>)) -> Result<()> {
        let Some(v) = self.tree.get(key(BLOCK, &id.to_be_bytes()))? else { return Ok(()) };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let frames = self.frames(&v)?;
        match positions {
            None => {
                for (n, frame) in frames.iter().enumerate() {
                    let base = (n * FRAME_EVENTS) as u32;
                    for_each_lite(frame, None, &mut |p, e| f(p + base, e))?;
                }
            }
            Some(positions) => by_frame(positions, |n, base, local| {
                if let Some(frame) = frames.get(n) {
                    for_each_lite(frame, Some(local), &mut |p, e| f(p + base, e))?;
                }
                Ok(())
            })?,
        }
        Ok(())
    }

    /// The time bounds of every block overlapping `[from, to)`, from the headers alone.
    pub fn block_metas(&self, from: i64, to: i64) -> Result<Vec<BlockMeta>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([HEAD]) {
            let (k, v) = kv?;
            let meta = self.block_meta(&k, &v)?;
            if meta.max_ts >= from && meta.min_ts < to {
                out.push(meta);
            }
        }
        Ok(out)
    }

    /// The events of block `seq` (empty when it is gone, e.g. deleted meanwhile).
    pub fn read_block(&self, seq: u64) -> Result<Vec<Event>> {
        match self.tree.get(key(BLOCK, &seq.to_be_bytes()))? {
            Some(v) => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                self.decode_block(&v)
            }
            None => Ok(Vec::new()),
        }
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
        Ok(decode_block(v)?)
    }

    /// The compressed frames of a block value.
    fn frames<'v>(&self, v: &'v [u8]) -> Result<Vec<&'v [u8]>> {
        block_frames(v).map_err(|e| self.corrupt(e.to_string()))
    }

    fn corrupt(&self, what: String) -> StorageError {
        StorageError::Corrupt { shard: self.shard, what }
    }
}

/// Calls `f` once per frame that `positions` (ascending, in a block) fall in, with the
/// frame's number, its first position and the positions within it.
fn by_frame(positions: &[u32], mut f: impl FnMut(usize, u32, &[u32]) -> Result<()>) -> Result<()> {
    let mut rest = positions;
    while let Some(&first) = rest.first() {
        let n = first as usize / FRAME_EVENTS;
        let count = rest.iter().take_while(|&&p| p as usize / FRAME_EVENTS == n).count();
        let base = (n * FRAME_EVENTS) as u32;
        let local: Vec<u32> = rest[..count].iter().map(|p| p - base).collect();
        f(n, base, &local)?;
        rest = &rest[count..];
    }
    Ok(())
}

/// Writes a block and, apart, its header, so time bounds can be listed without reading
/// the blocks.
fn put_block(batch: &mut sled::Batch, seq: u64, events: &[Event]) -> Result<()> {
    let block = encode_block(events)?;
    batch.insert(key(HEAD, &seq.to_be_bytes()), &block[..HEADER]);
    batch.insert(key(BLOCK, &seq.to_be_bytes()), block);
    Ok(())
}

pub mod snapshot;
pub use snapshot::{Exported, Record, Restoring};

#[cfg(test)]
mod tests;
