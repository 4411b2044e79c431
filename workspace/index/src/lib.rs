//! Per-shard postings in sled, built by the index actor from the blocks the shard
//! actor stored.
//!
//! A shard's index tree (see `gossamer-storage`) holds:
//! - `m:format`: the layout version; an index with another one is dropped and rebuilt;
//! - `m:indexed`: the highest block id covered. Blocks with higher ids are the
//!   unindexed tail, which queries scan, so answers are complete while the index lags;
//! - `g` + lo: a segment: the blocks with ids in `[lo, hi]` (their ids, counts and time
//!   bounds as indexed), the streams and levels it holds, its bucket count;
//! - `p` + lo + bucket: the terms of the segment that hash to that bucket, each with its
//!   document count and, unless it is long, its posting list;
//! - `q` + lo + term: a long posting list.
//!
//! A posting list holds documents, `block index in the segment << 16 | position in the
//! block`, ascending. Terms are namespaced strings: `w:` message token, `b:` two
//! consecutive tokens (phrases), `s:` stream, `l:` level, `L:` label `key=value`, `f:`
//! field `path=s:text` or `path=n:number`.
//!
//! New blocks become small segments; segments of one size tier merge four at a time,
//! from their postings, so a shard keeps about a dozen segments at most. A block the shard
//! rewrote (delete, update, retention) is marked dirty in the shard tree in the same
//! write; queries scan dirty blocks instead of trusting their postings, and the next
//! step rebuilds the segment holding them and clears the mark.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gossamer_schemas::batch::{compress, decompress};
use gossamer_schemas::columns::{get_varint, put_varint};
use gossamer_schemas::text::each_token;
use gossamer_schemas::Event;
use gossamer_storage::{BlockMeta, ShardStore, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The layout version written to `m:format` (5: tokens keep only token characters once
/// lowercased).
pub const FORMAT: u64 = 5;
const FORMAT_KEY: &[u8] = b"m:format";
const INDEXED: &[u8] = b"m:indexed";
/// Changes with every write, so readers know when their cached segments are stale.
const GENERATION: &[u8] = b"m:gen";
const SEGMENT: u8 = b'g';
const BUCKET: u8 = b'p';
/// Target bytes of postings per bucket (before compression).
const BUCKET_BYTES: usize = 4 << 10;
/// A bucket this big is compressed.
const COMPRESS_BUCKET_BYTES: usize = 512;
const BUCKET_LEVEL: i32 = 3;
const RAW: u8 = 0;
const COMPRESSED: u8 = 1;
/// A posting list longer than this (encoded) is kept under its own key.
const EXTERNAL_BYTES: usize = 1024;
const EXTERNAL: u8 = b'q';
/// Segments of one tier merged together.
const FANIN: usize = 4;
/// Events in a tier-0 segment at most; each tier holds four times more.
const TIER0_EVENTS: u64 = 2048;
/// No merge makes a segment bigger than this: a merge holds its postings in memory.
const MAX_SEGMENT_EVENTS: u64 = 128 * 1024;
/// Longest token indexed; a longer one is found by scanning.
pub const MAX_TOKEN: usize = 64;
/// Longest field text value indexed.
const MAX_FIELD_TEXT: usize = 256;
/// Deepest nested field path indexed.
const MAX_FIELD_DEPTH: usize = 4;
/// What a shard keeps in memory for the queries of one index generation (a write to
/// the index drops it): decompressed buckets and decoded long posting lists, at most
/// this many bytes per shard (1 MiB unless the node's memory budget says less; see
/// [`keep_at_most`]).
static KEPT_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1 << 20);

/// Sets how many bytes of decoded postings each shard keeps for its queries (the
/// node's memory budget carves it).
pub fn keep_at_most(bytes: usize) {
    KEPT_BYTES.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// What one generation of a shard's index keeps in memory.
struct Cached {
    segments: Arc<Vec<Segment>>,
    kept: Mutex<Kept>,
}

/// Buckets by segment and number; long lists by segment and the term's hash (with the
/// term, to tell two terms of one hash apart); and their bytes.
#[derive(Default)]
struct Kept {
    buckets: HashMap<(u64, u32), Arc<[u8]>>,
    lists: HashMap<(u64, u64), (Box<[u8]>, Arc<Vec<u64>>)>,
    bytes: usize,
}

impl Kept {
    /// Makes room for `bytes` more, forgetting everything when full.
    fn room(&mut self, bytes: usize) {
        if self.bytes + bytes > KEPT_BYTES.load(std::sync::atomic::Ordering::Relaxed) {
            self.buckets.clear();
            self.lists.clear();
            self.bytes = 0;
        }
        self.bytes += bytes;
    }
}

/// Bits of a document number that hold the position in the block (blocks hold at most
/// 512 events).
const POS_BITS: u32 = 9;

/// The block index (in its segment) of a document.
pub fn doc_block(doc: u64) -> usize {
    (doc >> POS_BITS) as usize
}

/// The position in its block of a document.
pub fn doc_pos(doc: u64) -> u32 {
    (doc & ((1 << POS_BITS) - 1)) as u32
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("shard {shard} index: {what}")]
    Damaged { shard: u32, what: String },
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// A block as a segment indexed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    pub id: u64,
    pub count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
}

/// One segment's description.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    pub lo: u64,
    pub hi: u64,
    pub blocks: Vec<BlockEntry>,
    pub buckets: u32,
    pub events: u64,
    pub streams: Vec<String>,
    pub levels: Vec<String>,
}

impl Segment {
    /// The block and position of a document.
    pub fn locate(&self, doc: u64) -> (BlockEntry, u32) {
        (self.blocks[doc_block(doc)], doc_pos(doc))
    }

    /// Every document of the segment, ascending.
    pub fn all_docs(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.events as usize);
        for (i, b) in self.blocks.iter().enumerate() {
            out.extend((0..u64::from(b.count)).map(|p| ((i as u64) << POS_BITS) | p));
        }
        out
    }

    fn tier(&self) -> u32 {
        let mut tier = 0;
        let mut cap = TIER0_EVENTS;
        while self.events > cap {
            tier += 1;
            cap = cap.saturating_mul(FANIN as u64);
        }
        tier
    }
}

/// What queries need to read a shard's index at one moment.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Blocks with ids above this are not indexed yet.
    pub indexed: u64,
    pub segments: Arc<Vec<Segment>>,
    /// Blocks whose postings must not be trusted: scan them.
    pub dirty: BTreeSet<u64>,
    /// The index generation this view is of. Postings read under another generation
    /// may belong to segments merged or rebuilt since: see [`ShardIndex::generation`].
    pub generation: u64,
}

/// How far the index is behind its shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Lag {
    pub blocks: u64,
    pub events: u64,
    pub dirty_blocks: u64,
    pub segments: u64,
}

/// What one [`ShardIndex::step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    pub indexed_events: u64,
    pub rebuilt_segments: u64,
    pub merged_segments: u64,
    /// True when the index was found damaged or of another format and dropped.
    pub reset: bool,
}

impl Step {
    pub fn did_work(&self) -> bool {
        self.indexed_events > 0 || self.rebuilt_segments > 0 || self.merged_segments > 0 || self.reset
    }
}

/// Work done by steps, for readers of an index's state. Each figure is added just
/// before the sled write that makes its work visible, so a reader that measures the lag first and reads these after finds every
/// step whose work the lag shows counted: indexed + lagging is never short of stored.
#[derive(Debug, Default)]
pub struct Tally {
    pub indexed_events: AtomicU64,
    pub rebuilt_segments: AtomicU64,
    pub merged_segments: AtomicU64,
}

/// One shard's index.
#[derive(Clone)]
pub struct ShardIndex {
    store: ShardStore,
    tally: Arc<Tally>,
    /// Set when segments changed since the last look for a merge.
    merge_pending: Arc<AtomicBool>,
    /// Set once this handle checked the index against the shard (first step).
    verified: Arc<AtomicBool>,
}

fn key(prefix: u8, parts: &[u64]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 8 * parts.len());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(&p.to_be_bytes());
    }
    k
}

fn bucket_key(lo: u64, bucket: u32) -> Vec<u8> {
    let mut k = key(BUCKET, &[lo]);
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

fn u64_of(v: Option<sled::IVec>) -> Option<u64> {
    v.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes)
}

impl ShardIndex {
    pub fn new(store: ShardStore) -> Self {
        Self {
            store,
            tally: Arc::default(),
            merge_pending: Arc::new(AtomicBool::new(true)),
            verified: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The same index, counting its steps' work into `tally` (shared by several).
    pub fn with_tally(self, tally: Arc<Tally>) -> Self {
        Self { tally, ..self }
    }

    pub fn shard(&self) -> u32 {
        self.store.shard()
    }

    pub fn store(&self) -> &ShardStore {
        &self.store
    }

    fn tree(&self) -> &sled::Tree {
        self.store.index_tree()
    }

    fn damaged(&self, what: impl Into<String>) -> IndexError {
        IndexError::Damaged { shard: self.store.shard(), what: what.into() }
    }

    /// The highest block id indexed (0: none).
    pub fn indexed(&self) -> Result<u64> {
        Ok(u64_of(self.tree().get(INDEXED)?).unwrap_or(0))
    }

    /// The index as queries see it. A damaged or foreign-format index reads as empty
    /// (everything is scanned) until the index actor rebuilds it.
    pub fn view(&self) -> Result<View> {
        let dirty = self.store.dirty_blocks()?.into_keys().collect();
        if u64_of(self.tree().get(FORMAT_KEY)?) != Some(FORMAT) {
            return Ok(View { indexed: 0, segments: Arc::default(), dirty, generation: self.generation()? });
        }
        match self.consistent() {
            Ok((generation, indexed, segments)) => Ok(View { indexed, segments, dirty, generation }),
            Err(IndexError::Damaged { .. }) => Ok(View { indexed: 0, segments: Arc::default(), dirty, generation: self.generation()? }),
            Err(e) => Err(e),
        }
    }

    /// The indexed watermark and the segments, read with no index write in between:
    /// each write changes the generation, so a read that saw the same generation before
    /// and after saw one state (a segment list and watermark that do not overlap the
    /// unindexed tail, nor leave a gap before it).
    fn consistent(&self) -> Result<(u64, u64, Arc<Vec<Segment>>)> {
        loop {
            let before = self.generation()?;
            let indexed = self.indexed()?;
            let segments = self.cached_segments()?;
            if self.generation()? == before {
                return Ok((before, indexed, segments));
            }
        }
    }

    /// The index's generation: it changes with every write to the index, so a reader
    /// that saw the same generation before and after its reads saw one state.
    pub fn generation(&self) -> Result<u64> {
        Ok(u64_of(self.tree().get(GENERATION)?).unwrap_or(0))
    }

    /// Every segment, from memory when the index has not changed since they were read.
    fn cached_segments(&self) -> Result<Arc<Vec<Segment>>> {
        Ok(self.cached()?.1.segments.clone())
    }

    /// What memory holds of the index's current generation (read now when it holds
    /// another one), and that generation.
    fn cached(&self) -> Result<(u64, Arc<Cached>)> {
        let generation = self.generation()?;
        let slot = self.store.index_cache();
        if let Some((g, any)) = &*slot.lock().unwrap_or_else(|p| p.into_inner()) {
            if *g == generation {
                if let Ok(c) = any.clone().downcast::<Cached>() {
                    return Ok((generation, c));
                }
            }
        }
        let c = Arc::new(Cached { segments: Arc::new(self.segments()?), kept: Mutex::default() });
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, c.clone()));
        Ok((generation, c))
    }

    /// The terms of `seg` in `bucket`, decompressed: from memory when a query of this
    /// generation read them already.
    fn bucket(&self, seg: &Segment, bucket: u32) -> Result<Option<Arc<[u8]>>> {
        let (generation, cached) = self.cached()?;
        if let Some(b) = cached.kept.lock().unwrap_or_else(|p| p.into_inner()).buckets.get(&(seg.lo, bucket)) {
            return Ok(Some(b.clone()));
        }
        let Some(data) = self.tree().get(bucket_key(seg.lo, bucket))? else {
            return Ok(None);
        };
        let bytes: Arc<[u8]> = Arc::from(&*self.bucket_bytes(seg, bucket, &data)?);
        // Kept only if no write came between: the bucket read is then the one of this
        // generation (a reader that saw another generation plans again anyway).
        if self.generation()? == generation {
            let mut kept = cached.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.room(bytes.len());
            kept.buckets.insert((seg.lo, bucket), bytes.clone());
        }
        Ok(Some(bytes))
    }

    /// Every segment, by block range.
    pub fn segments(&self) -> Result<Vec<Segment>> {
        let mut out = Vec::new();
        for kv in self.tree().scan_prefix([SEGMENT]) {
            let (_, v) = kv?;
            let seg: Segment = rmp_serde::from_slice(&v).map_err(|e| self.damaged(format!("segment: {e}")))?;
            out.push(seg);
        }
        Ok(out)
    }

    /// The documents of `seg` holding `term`, ascending.
    pub fn postings(&self, seg: &Segment, term: &[u8]) -> Result<Vec<u64>> {
        match self.lookup(seg, term, true)? {
            Some((n, Some(bytes))) => decode_docs(n, &bytes).ok_or_else(|| self.damaged("posting list")),
            Some((n, None)) => Ok(self.long_list(seg, term, n)?.to_vec()),
            None => Ok(Vec::new()),
        }
    }

    /// How many documents of `seg` hold `term`, without reading the list.
    pub fn posting_count(&self, seg: &Segment, term: &[u8]) -> Result<u64> {
        Ok(self.lookup(seg, term, false)?.map_or(0, |(n, _)| n))
    }

    /// A term's document count and (when `list`) its encoded list, or `None` for a
    /// long list kept under its own key ([`ShardIndex::long_list`]).
    fn lookup(&self, seg: &Segment, term: &[u8], list: bool) -> Result<Option<(u64, Option<Vec<u8>>)>> {
        let bucket = bucket_of(term, seg.buckets);
        let Some(data) = self.bucket(seg, bucket)? else {
            return Ok(None);
        };
        let mut r = Reader { buf: &data[..], at: 0 };
        while !r.done() {
            let (t, n, inline) = r.entry().ok_or_else(|| self.damaged(format!("bucket {bucket} of segment {}", seg.lo)))?;
            if t != term {
                continue;
            }
            if !list {
                return Ok(Some((n, Some(Vec::new()))));
            }
            return Ok(Some((n, inline.map(<[u8]>::to_vec))));
        }
        Ok(None)
    }

    /// The `n` documents of a long list, decoded: from memory when a query of this
    /// generation read them already.
    fn long_list(&self, seg: &Segment, term: &[u8], n: u64) -> Result<Arc<Vec<u64>>> {
        let (generation, cached) = self.cached()?;
        let slot = (seg.lo, xxhash_rust::xxh3::xxh3_64(term));
        if let Some((t, list)) = cached.kept.lock().unwrap_or_else(|p| p.into_inner()).lists.get(&slot) {
            if **t == *term {
                return Ok(list.clone());
            }
        }
        let Some(v) = self.tree().get(external_key(seg.lo, term))? else {
            return Err(self.damaged(format!("segment {}: a long posting list is missing", seg.lo)));
        };
        let list = Arc::new(decode_docs(n, &v).ok_or_else(|| self.damaged("posting list"))?);
        // As for buckets: kept only if no write came between.
        if self.generation()? == generation {
            let mut kept = cached.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.room(list.len() * 8 + term.len());
            kept.lists.insert(slot, (term.into(), list.clone()));
        }
        Ok(list)
    }

    /// Terms and their bytes (term text plus inline postings, before compression) by
    /// kind: message words, word pairs, streams, levels, labels, fields.
    pub fn term_usage(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for seg in self.segments()? {
            for bucket in 0..seg.buckets {
                let Some(data) = self.tree().get(bucket_key(seg.lo, bucket))? else { continue };
                let data = self.bucket_bytes(&seg, bucket, &data)?;
                let mut r = Reader { buf: &data, at: 0 };
                while !r.done() {
                    let (term, _, inline) = r.entry().ok_or_else(|| self.damaged("bucket"))?;
                    let kind = match term.get(..2) {
                        Some(b"w:") => "words",
                        Some(b"b:") => "word pairs",
                        Some(b"s:") => "streams",
                        Some(b"l:") => "levels",
                        Some(b"L:") => "labels",
                        Some(b"f:") => "fields",
                        _ => "other",
                    };
                    let e = out.entry(kind.to_string()).or_default();
                    e.0 += 1;
                    e.1 += (term.len() + inline.map_or(0, <[u8]>::len)) as u64;
                }
            }
        }
        Ok(out)
    }

    fn bucket_bytes<'d>(&self, seg: &Segment, bucket: u32, data: &'d [u8]) -> Result<std::borrow::Cow<'d, [u8]>> {
        let bad = |what: String| self.damaged(format!("bucket {bucket} of segment {}: {what}", seg.lo));
        match data.split_first() {
            Some((&RAW, rest)) => Ok(std::borrow::Cow::Borrowed(rest)),
            Some((&COMPRESSED, rest)) => Ok(std::borrow::Cow::Owned(decompress(rest).map_err(|e| bad(e.to_string()))?)),
            _ => Err(bad("unknown encoding".into())),
        }
    }

    /// How far the index is behind the shard.
    pub fn lag(&self) -> Result<Lag> {
        let ours = u64_of(self.tree().get(FORMAT_KEY)?) == Some(FORMAT);
        let indexed = if ours { self.indexed()? } else { 0 };
        let tail = self.store.blocks_between(indexed + 1, u64::MAX)?;
        Ok(Lag {
            blocks: tail.len() as u64,
            events: tail.iter().map(|b| u64::from(b.count)).sum(),
            dirty_blocks: self.store.dirty_blocks()?.len() as u64,
            segments: if ours { self.tree().scan_prefix([SEGMENT]).count() as u64 } else { 0 },
        })
    }

    /// Drops the whole index; the next steps rebuild it from the shard's blocks.
    pub fn clear(&self) -> Result<()> {
        self.retire()?;
        self.tree().clear()?;
        self.tree().flush()?;
        Ok(())
    }

    /// Makes the index read as empty in one write, before its keys are removed one by
    /// one (sled's clear is a loop): without its format and watermark, queries scan
    /// every block, and the new generation sends a query planned before back to plan
    /// again, so none reads a half-removed segment.
    fn retire(&self) -> Result<()> {
        let mut batch = sled::Batch::default();
        batch.remove(FORMAT_KEY);
        batch.remove(INDEXED);
        self.commit(batch)
    }

    /// One unit of the index actor's work: rebuilds segments holding dirty blocks,
    /// indexes up to `budget` events of new blocks, and does at most one merge.
    pub fn step(&self, budget: u64) -> Result<Step> {
        let mut out = Step::default();
        if u64_of(self.tree().get(FORMAT_KEY)?) != Some(FORMAT) {
            out.reset = !self.tree().is_empty();
            self.reset()?;
        }
        let checked = if self.verified.swap(true, Ordering::SeqCst) { Ok(()) } else { self.verify() };
        match checked.and_then(|()| self.step_inner(budget, &mut out)) {
            Err(IndexError::Damaged { what, .. }) => {
                tracing::warn!(shard = self.shard(), %what, "index damaged: dropping it to rebuild from the shard's blocks");
                self.reset()?;
                Ok(Step { reset: true, ..out })
            }
            r => r.map(|()| out),
        }
    }

    /// Checks, once per start, that the index speaks for exactly the shard's blocks below
    /// its watermark: after a crash the shard replays its log, and an index that kept
    /// more than the shard did (or a block the index never saw below the watermark)
    /// would hide events from queries. Such an index counts as damaged and is rebuilt.
    fn verify(&self) -> Result<()> {
        if u64_of(self.tree().get(FORMAT_KEY)?) != Some(FORMAT) {
            return Ok(());
        }
        let indexed = self.indexed()?;
        let applied = self.store.applied_seq()?;
        let mask = (1u64 << gossamer_storage::PART_BITS) - 1;
        if indexed > (applied << gossamer_storage::PART_BITS) | mask {
            return Err(self.damaged(format!("the index covers block {indexed}, past the shard's applied sequence {applied}")));
        }
        let mut covered: BTreeSet<u64> = self.segments()?.iter().flat_map(|s| s.blocks.iter().map(|b| b.id)).collect();
        let present = self.store.blocks_between(0, indexed)?;
        // Read after the blocks: a block removed meanwhile is marked by then.
        let dirty = self.store.dirty_blocks()?;
        for m in present {
            if !covered.remove(&m.seq) && !dirty.contains_key(&m.seq) {
                return Err(self.damaged(format!("block {} is below the watermark but in no segment", m.seq)));
            }
        }
        if let Some(gone) = covered.iter().find(|id| !dirty.contains_key(id)) {
            return Err(self.damaged(format!("segment block {gone} is gone without a mark")));
        }
        Ok(())
    }

    /// An empty index of this format, with a generation no cache can hold.
    fn reset(&self) -> Result<()> {
        self.retire()?;
        self.tree().clear()?;
        let fresh = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        self.tree().insert(GENERATION, &fresh.to_be_bytes())?;
        self.tree().insert(FORMAT_KEY, &FORMAT.to_be_bytes())?;
        Ok(())
    }

    /// [`ShardIndex::commit`], adding `counts` to the tally before the write (a write
    /// that fails leaves them counted: the tally may run ahead, never behind, and a
    /// counter never goes down).
    fn commit_counted(&self, batch: sled::Batch, counts: &[(&AtomicU64, u64)]) -> Result<()> {
        for (figure, n) in counts {
            figure.fetch_add(*n, Ordering::SeqCst);
        }
        self.commit(batch)
    }

    /// Writes `batch` with the next generation.
    fn commit(&self, mut batch: sled::Batch) -> Result<()> {
        let generation = u64_of(self.tree().get(GENERATION)?).unwrap_or(0);
        batch.insert(GENERATION, &generation.wrapping_add(1).to_be_bytes());
        self.tree().apply_batch(batch)?;
        Ok(())
    }

    fn step_inner(&self, budget: u64, out: &mut Step) -> Result<()> {
        // Marks first, blocks after: a block rewritten after this read keeps its mark.
        let dirty = self.store.dirty_blocks()?;
        let indexed = self.indexed()?;
        let applied = self.store.applied_seq()?;
        // New blocks: only those of fully applied writes.
        let last = (applied << gossamer_storage::PART_BITS) | ((1 << gossamer_storage::PART_BITS) - 1);
        let mut tail = self.store.blocks_between(indexed + 1, last)?;
        if tail.is_empty() && !dirty.keys().any(|&id| id <= indexed) && !self.merge_pending.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut segments = self.segments()?;

        // Segments holding blocks that changed since they were indexed.
        let mut stale: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for &id in dirty.keys().filter(|&&id| id <= indexed) {
            if let Some(seg) = segments.iter().rev().find(|s| s.lo <= id && id <= s.hi) {
                stale.entry(seg.lo).or_default().insert(id);
            }
        }
        let mut batch = sled::Batch::default();
        let mut skipped: BTreeSet<u64> = BTreeSet::new();
        for (lo, ids) in &stale {
            let seg = segments.iter().find(|s| s.lo == *lo).expect("found above");
            let mut b = Builder::default();
            let current = self.store.blocks_between(seg.lo, seg.hi)?;
            if !self.store.blocks_between(seg.lo, seg.hi)?.iter().map(|m| m.seq).eq(current.iter().map(|m| m.seq)) {
                // Blocks changing under the scan: rebuild on the next step, with the
                // marks left in place.
                skipped.extend(ids.iter().copied());
                continue;
            }
            // Unchanged blocks keep their postings; changed ones are read again.
            let keep: HashMap<u64, usize> = current
                .iter()
                .filter(|m| !ids.contains(&m.seq))
                .filter_map(|m| seg.blocks.iter().position(|e| e.id == m.seq).map(|old| (m.seq, old)))
                .collect();
            let mut remap = vec![None; seg.blocks.len()];
            let mut fresh = Vec::new();
            for m in &current {
                let new = b.blocks.len();
                match keep.get(&m.seq) {
                    Some(&old) => {
                        remap[old] = Some(new);
                        b.blocks.push(seg.blocks[old]);
                    }
                    None => {
                        b.blocks.push(entry_of(m));
                        fresh.push((new, m.seq));
                    }
                }
            }
            b.events = b.blocks.iter().map(|e| u64::from(e.count)).sum();
            self.absorb(&mut b, seg, &|i| remap[i])?;
            for (at, id) in fresh {
                let events = self.store.read_block(id)?;
                b.blocks[at].count = events.len() as u32;
                b.add_events(at, &events);
            }
            b.events = b.blocks.iter().map(|e| u64::from(e.count)).sum();
            b.streams.extend(seg.streams.iter().cloned());
            b.levels.extend(seg.levels.iter().cloned());
            self.remove_segment(&mut batch, seg)?;
            let new = b.finish(seg.lo, seg.hi, &mut batch);
            *segments.iter_mut().find(|s| s.lo == *lo).expect("found above") = new;
            out.rebuilt_segments += 1;
        }

        let mut total = 0u64;
        let take = tail
            .iter()
            .position(|m| {
                total += u64::from(m.count);
                total > budget
            })
            .map_or(tail.len(), |i| i.max(1));
        tail.truncate(take);
        // The watermark moves past every block read here for good, so a block the scan
        // did not see would never be found by queries: scan again and take the blocks
        // only when both scans agree (a scan of a tree being written is not a snapshot).
        if let Some(last) = tail.last() {
            let again: Vec<u64> = self.store.blocks_between(indexed + 1, last.seq)?.iter().map(|m| m.seq).collect();
            if !again.iter().eq(tail.iter().map(|m| &m.seq)) {
                tracing::debug!(shard = self.shard(), "index-scan-disagreed: trying again");
                tail.clear();
            }
        }
        let mut new_indexed = indexed;
        if let Some(last) = tail.last() {
            let mut b = Builder::default();
            for m in &tail {
                let events = self.store.read_block(m.seq)?;
                let at = b.blocks.len();
                b.blocks.push(BlockEntry { count: events.len() as u32, ..entry_of(m) });
                b.add_events(at, &events);
                b.events += events.len() as u64;
            }
            new_indexed = last.seq;
            out.indexed_events = b.events;
            let seg = b.finish(indexed + 1, last.seq, &mut batch);
            segments.push(seg);
            batch.insert(INDEXED, &new_indexed.to_be_bytes());
        }
        let counts = [(&self.tally.indexed_events, out.indexed_events), (&self.tally.rebuilt_segments, out.rebuilt_segments)];
        self.commit_counted(batch, &counts)?;
        for (id, stamp) in dirty.iter().filter(|(id, _)| **id <= new_indexed && !skipped.contains(id)) {
            self.store.clear_dirty(*id, *stamp)?;
        }
        if out.indexed_events > 0 || out.rebuilt_segments > 0 {
            self.merge_pending.store(true, Ordering::SeqCst);
        }

        // One merge of FANIN neighbouring segments of one tier.
        segments.sort_by_key(|s| s.lo);
        let mergeable = |w: &&[Segment]| {
            w.iter().all(|s| s.tier() == w[0].tier()) && w.iter().map(|s| s.events).sum::<u64>() <= MAX_SEGMENT_EVENTS
        };
        if let Some(run) = segments.windows(FANIN).find(mergeable) {
            let mut b = Builder::default();
            let mut batch = sled::Batch::default();
            for seg in run {
                let offset = b.blocks.len();
                b.blocks.extend_from_slice(&seg.blocks);
                b.events += seg.events;
                b.streams.extend(seg.streams.iter().cloned());
                b.levels.extend(seg.levels.iter().cloned());
                self.absorb(&mut b, seg, &|i| Some(i + offset))?;
                self.remove_segment(&mut batch, seg)?;
            }
            b.finish(run[0].lo, run[FANIN - 1].hi, &mut batch);
            self.commit_counted(batch, &[(&self.tally.merged_segments, FANIN as u64)])?;
            out.merged_segments = FANIN as u64;
        } else {
            self.merge_pending.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Adds `seg`'s postings to `b`, moving each block to `remap(its index)` (or
    /// dropping it for `None`).
    fn absorb(&self, b: &mut Builder, seg: &Segment, remap: &dyn Fn(usize) -> Option<usize>) -> Result<()> {
        for bucket in 0..seg.buckets {
            let Some(data) = self.tree().get(bucket_key(seg.lo, bucket))? else { continue };
            let data = self.bucket_bytes(seg, bucket, &data)?;
            let mut r = Reader { buf: &data, at: 0 };
            while !r.done() {
                let (term, n, inline) =
                    r.entry().ok_or_else(|| self.damaged(format!("bucket {bucket} of segment {}", seg.lo)))?;
                let external;
                let bytes = match inline {
                    Some(b) => b,
                    None => {
                        external = self.tree().get(external_key(seg.lo, term))?.ok_or_else(|| self.damaged("a long posting list is missing"))?;
                        &external[..]
                    }
                };
                let docs = decode_docs(n, bytes).ok_or_else(|| self.damaged("posting list"))?;
                let list = b.postings.entry(term.into()).or_default();
                for d in docs {
                    if let Some(to) = remap(doc_block(d)) {
                        list.push(((to as u32) << POS_BITS) | doc_pos(d));
                    }
                }
            }
        }
        Ok(())
    }
}

fn entry_of(m: &BlockMeta) -> BlockEntry {
    BlockEntry { id: m.seq, count: m.count, min_ts: m.min_ts, max_ts: m.max_ts }
}

impl ShardIndex {
    fn remove_segment(&self, batch: &mut sled::Batch, seg: &Segment) -> Result<()> {
        batch.remove(key(SEGMENT, &[seg.lo]));
        for b in 0..seg.buckets {
            batch.remove(bucket_key(seg.lo, b));
        }
        for k in self.tree().scan_prefix(key(EXTERNAL, &[seg.lo])).keys() {
            batch.remove(k?);
        }
        Ok(())
    }
}

/// Where a long posting list lives, apart from its bucket.
fn external_key(lo: u64, term: &[u8]) -> Vec<u8> {
    let mut k = key(EXTERNAL, &[lo]);
    k.extend_from_slice(term);
    k
}

fn bucket_of(term: &[u8], buckets: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(term) % u64::from(buckets.max(1))) as u32
}

/// A segment being built: postings in memory.
#[derive(Default)]
struct Builder {
    /// Lists may be out of order after a rebuild adds changed blocks: sorted on finish.
    postings: HashMap<Box<[u8]>, Vec<u32>>,
    blocks: Vec<BlockEntry>,
    events: u64,
    streams: BTreeSet<String>,
    levels: BTreeSet<String>,
}

impl Builder {
    fn add_events(&mut self, block: usize, events: &[Event]) {
        for (pos, e) in events.iter().enumerate() {
            let doc = ((block as u32) << POS_BITS) | pos as u32;
            self.streams.insert(e.stream.clone());
            self.levels.insert(e.level.clone());
            let mut sink = Sink { b: self, doc };
            event_terms(e, &mut |t| sink.add(t));
        }
    }

    /// Writes the segment into `batch` and returns its description.
    fn finish(self, lo: u64, hi: u64, batch: &mut sled::Batch) -> Segment {
        let mut encoded: Vec<(Box<[u8]>, usize, Vec<u8>)> = Vec::with_capacity(self.postings.len());
        let mut total = 0;
        for (term, mut docs) in self.postings {
            if !docs.is_sorted_by(|a, b| a < b) {
                docs.sort_unstable();
                docs.dedup();
            }
            if docs.is_empty() {
                continue;
            }
            let bytes = encode_docs(&docs);
            total += term.len() + bytes.len() + 8;
            encoded.push((term, docs.len(), bytes));
        }
        let buckets = total.div_ceil(BUCKET_BYTES).max(1) as u32;
        // Sorted terms compress better, and zstd takes most of what they repeat.
        encoded.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut data: Vec<Vec<u8>> = vec![Vec::new(); buckets as usize];
        for (term, n, bytes) in encoded {
            let out = &mut data[bucket_of(&term, buckets) as usize];
            put_varint(out, term.len() as u64);
            out.extend_from_slice(&term);
            put_varint(out, n as u64);
            if bytes.len() > EXTERNAL_BYTES {
                // Long lists stay out of the bucket: a lookup of a rare term does not
                // decompress them, and a count does not read them at all.
                put_varint(out, 1);
                batch.insert(external_key(lo, &term), bytes);
            } else {
                put_varint(out, (bytes.len() as u64) << 1);
                out.extend_from_slice(&bytes);
            }
        }
        for (i, d) in data.into_iter().enumerate() {
            if d.is_empty() {
                continue;
            }
            let mut v = Vec::with_capacity(d.len() + 1);
            if d.len() >= COMPRESS_BUCKET_BYTES {
                v.push(COMPRESSED);
                v.extend_from_slice(&compress(&d, BUCKET_LEVEL).expect("a bucket is far below the frame limit"));
            } else {
                v.push(RAW);
                v.extend_from_slice(&d);
            }
            batch.insert(bucket_key(lo, i as u32), v);
        }
        let seg = Segment {
            lo,
            hi,
            blocks: self.blocks,
            buckets,
            events: self.events,
            streams: self.streams.into_iter().collect(),
            levels: self.levels.into_iter().collect(),
        };
        batch.insert(key(SEGMENT, &[lo]), rmp_serde::to_vec(&seg).expect("a segment always encodes"));
        seg
    }
}

struct Sink<'b> {
    b: &'b mut Builder,
    doc: u32,
}

impl Sink<'_> {
    fn add(&mut self, term: &[u8]) {
        let b = &mut *self.b;
        match b.postings.get_mut(term) {
            Some(list) => {
                if list.last() != Some(&self.doc) {
                    list.push(self.doc);
                }
            }
            None => {
                b.postings.insert(term.into(), vec![self.doc]);
            }
        }
    }
}

/// Calls `f` with every index term of `e` (a term may come more than once).
pub fn event_terms(e: &Event, f: &mut dyn FnMut(&[u8])) {
    let mut t = Vec::with_capacity(64);
    term_into(&mut t, b"s:", &[e.stream.as_bytes()]);
    f(&t);
    term_into(&mut t, b"l:", &[e.level.as_bytes()]);
    f(&t);
    for (k, v) in &e.labels {
        term_into(&mut t, b"L:", &[k.as_bytes(), b"=", v.as_bytes()]);
        f(&t);
    }
    let mut prev = String::new();
    let mut cur = String::new();
    each_token(&e.message, |tok| {
        cur.clear();
        gossamer_schemas::text::lower_token(tok, &mut cur);
        if cur.is_empty() {
            return;
        }
        if cur.len() <= MAX_TOKEN {
            term_into(&mut t, b"w:", &[cur.as_bytes()]);
            f(&t);
            if !prev.is_empty() && pair_indexed(&prev, &cur) {
                term_into(&mut t, b"b:", &[prev.as_bytes(), b" ", cur.as_bytes()]);
                f(&t);
            }
            std::mem::swap(&mut prev, &mut cur);
        } else {
            prev.clear();
        }
    });
    let mut path = String::new();
    field_terms(&e.fields, &mut path, 0, &mut t, f);
}

fn field_terms(
    fields: &serde_json::Map<String, Value>,
    path: &mut String,
    depth: usize,
    t: &mut Vec<u8>,
    f: &mut dyn FnMut(&[u8]),
) {
    for (k, v) in fields {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k);
        match v {
            Value::Object(m) if depth + 1 < MAX_FIELD_DEPTH => field_terms(m, path, depth + 1, t, f),
            Value::Object(_) | Value::Array(_) => {}
            Value::String(s) if s.len() > MAX_FIELD_TEXT => {}
            Value::String(s) => {
                term_into(t, b"f:", &[path.as_bytes(), b"=s:", s.as_bytes()]);
                f(t);
            }
            Value::Bool(b) => {
                term_into(t, b"f:", &[path.as_bytes(), b"=s:", if *b { b"true" } else { b"false" }]);
                f(t);
            }
            Value::Null => {
                term_into(t, b"f:", &[path.as_bytes(), b"=s:null"]);
                f(t);
            }
            Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    term_into(t, b"f:", &[path.as_bytes(), b"=n:", number_text(x).as_bytes()]);
                    f(t);
                }
            }
        }
        path.truncate(len);
    }
}

fn term_into(t: &mut Vec<u8>, prefix: &[u8], parts: &[&[u8]]) {
    t.clear();
    t.extend_from_slice(prefix);
    for p in parts {
        t.extend_from_slice(p);
    }
}

/// One number's text in field terms, the same for `5`, `5.0` and `"5"` parsed.
pub fn number_text(x: f64) -> String {
    format!("{x}")
}

/// The term of a message token (lowercased), if tokens that long are indexed.
pub fn word_term(w: &str) -> Option<Vec<u8>> {
    (w.len() <= MAX_TOKEN).then(|| [b"w:", w.as_bytes()].concat())
}

/// The term of two consecutive message tokens, if such pairs are indexed.
pub fn bigram_term(a: &str, b: &str) -> Option<Vec<u8>> {
    (a.len() <= MAX_TOKEN && b.len() <= MAX_TOKEN && pair_indexed(a, b))
        .then(|| [b"b:", a.as_bytes(), b" ", b.as_bytes()].concat())
}

/// Pairs with a number in them are not indexed: numbers are nearly unique, and their
/// pairs would double the term dictionary for phrases nobody types. A phrase with
/// one is found through its words, then checked.
fn pair_indexed(a: &str, b: &str) -> bool {
    let number = |t: &str| t.bytes().all(|c| c.is_ascii_digit());
    !number(a) && !number(b)
}

pub fn stream_term(s: &str) -> Vec<u8> {
    [b"s:", s.as_bytes()].concat()
}

pub fn level_term(l: &str) -> Vec<u8> {
    [b"l:", l.as_bytes()].concat()
}

pub fn label_term(k: &str, v: &str) -> Vec<u8> {
    [b"L:", k.as_bytes(), b"=", v.as_bytes()].concat()
}

/// The terms a field equal to `v` may be indexed under: as text, and as a number.
pub fn field_terms_for(path: &str, v: &str) -> Vec<Vec<u8>> {
    let mut out = vec![[b"f:", path.as_bytes(), b"=s:", v.as_bytes()].concat()];
    if let Ok(x) = v.trim().parse::<f64>() {
        out.push([b"f:", path.as_bytes(), b"=n:", number_text(x).as_bytes()].concat());
    }
    out
}

fn encode_docs(docs: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(docs.len() * 2);
    let mut prev = 0;
    for (i, &d) in docs.iter().enumerate() {
        put_varint(&mut out, u64::from(if i == 0 { d } else { d - prev }));
        prev = d;
    }
    out
}

fn decode_docs(n: u64, bytes: &[u8]) -> Option<Vec<u64>> {
    let mut r = Reader { buf: bytes, at: 0 };
    let mut out = Vec::with_capacity(n.min(1 << 24) as usize);
    let mut prev = 0u64;
    for i in 0..n {
        let d = r.varint()?;
        prev = if i == 0 { d } else { prev.checked_add(d)? };
        out.push(prev);
    }
    r.done().then_some(out)
}

/// A bucket entry: term, document count, and the inline list (`None`: kept apart).
type Entry<'a> = (&'a [u8], u64, Option<&'a [u8]>);

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.buf.len()
    }

    fn varint(&mut self) -> Option<u64> {
        get_varint(self.buf, &mut self.at)
    }

    fn bytes(&mut self, n: u64) -> Option<&'a [u8]> {
        let end = self.at.checked_add(usize::try_from(n).ok()?)?;
        let out = self.buf.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    /// One bucket entry: term, document count, and the encoded documents unless they
    /// are kept apart (`None`).
    fn entry(&mut self) -> Option<Entry<'a>> {
        let tl = self.varint()?;
        let term = self.bytes(tl)?;
        let n = self.varint()?;
        let len = self.varint()?;
        if len & 1 == 1 {
            return Some((term, n, None));
        }
        Some((term, n, Some(self.bytes(len >> 1)?)))
    }
}

#[cfg(test)]
mod tests;
