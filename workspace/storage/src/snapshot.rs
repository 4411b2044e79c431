//! A shard's tree as a list of records, for backups: all of it (full), or what changed
//! after a sequence (incremental), taken under the shard's writer lock so the records
//! describe the shard at one applied sequence; and the way back, into an empty shard.

use super::*;

/// One change to a shard tree. A full export is only `Put`s; an incremental one also
/// removes blocks and replaces the per-stream counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    /// Removes every key that starts with these bytes.
    ClearPrefix(Vec<u8>),
}

/// What an export covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exported {
    /// The shard's applied sequence: the export is the shard as of this sequence.
    pub applied: u64,
    /// Events in the shard at that sequence.
    pub events: u64,
    /// Events in the blocks the export holds.
    pub block_events: u64,
    pub records: u64,
}

/// The events a block value holds, from its header.
pub fn block_event_count(v: &[u8]) -> Option<u32> {
    v.get(16..20).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
}

/// True when a record key is a block's (`b` + 8-byte id).
pub fn is_block_key(k: &[u8]) -> bool {
    k.len() == 9 && k[0] == BLOCK
}

/// The key that holds a shard's applied sequence, and its value's meaning.
pub fn applied_of(k: &[u8], v: &[u8]) -> Option<u64> {
    (k == APPLIED).then(|| u64_of(Some(v.into())))
}

/// Keys an export leaves out: dirty marks only matter to the index, which a restore
/// rebuilds.
fn exported(k: &[u8]) -> bool {
    k.first() != Some(&DIRTY)
}

impl ShardStore {
    /// Calls `out` with the records that bring a shard holding the state at `since` (or
    /// an empty one, for `None`) to the state now. Writes to the shard wait meanwhile.
    pub fn export(&self, since: Option<u64>, out: &mut dyn FnMut(Record) -> std::io::Result<()>) -> Result<Exported> {
        let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = Exported { applied: self.applied_seq()?, events: self.event_count()?, ..Default::default() };
        let shard = self.shard;
        let mut emit = |r: Record, done: &mut Exported| -> Result<()> {
            if let Record::Put(k, v) = &r {
                if is_block_key(k) {
                    done.block_events += u64::from(block_event_count(v).unwrap_or(0));
                }
            }
            done.records += 1;
            out(r).map_err(|source| StorageError::Io { shard, source })
        };
        let Some(since) = since else {
            for kv in self.tree.iter() {
                let (k, v) = kv?;
                if exported(&k) {
                    emit(Record::Put(k.to_vec(), v.to_vec()), &mut done)?;
                }
            }
            return Ok(done);
        };
        // Blocks added after `since` have ids from (since + 1) << PART_BITS on.
        let first_new = (since + 1) << PART_BITS;
        let block_keys = |id: u64| [key(BLOCK, &id.to_be_bytes()), key(HEAD, &id.to_be_bytes()), key(IDS, &id.to_be_bytes())];
        for prefix in [BLOCK, HEAD, IDS] {
            for kv in self.tree.range(key(prefix, &first_new.to_be_bytes())..key(prefix + 1, &[])) {
                let (k, v) = kv?;
                emit(Record::Put(k.to_vec(), v.to_vec()), &mut done)?;
            }
        }
        // Older blocks rewritten or removed after `since`.
        for kv in self.tree.scan_prefix([REWRITTEN]) {
            let (k, v) = kv?;
            if u64_of(Some(v.clone())) <= since {
                continue;
            }
            let id = k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            let Some(id) = id else { return Err(self.corrupt("short rewrite-mark key".into())) };
            emit(Record::Put(k.to_vec(), v.to_vec()), &mut done)?;
            if id >= first_new {
                continue;
            }
            for k in block_keys(id) {
                match self.tree.get(&k)? {
                    Some(v) => emit(Record::Put(k, v.to_vec()), &mut done)?,
                    None => emit(Record::Remove(k), &mut done)?,
                }
            }
        }
        emit(Record::ClearPrefix(vec![STREAM]), &mut done)?;
        for kv in self.tree.scan_prefix([STREAM]) {
            let (k, v) = kv?;
            emit(Record::Put(k.to_vec(), v.to_vec()), &mut done)?;
        }
        for kv in self.tree.range(key(RESULT, &(since + 1).to_be_bytes())..key(RESULT + 1, &[])) {
            let (k, v) = kv?;
            emit(Record::Put(k.to_vec(), v.to_vec()), &mut done)?;
        }
        for k in [APPLIED, COUNT] {
            if let Some(v) = self.tree.get(k)? {
                emit(Record::Put(k.to_vec(), v.to_vec()), &mut done)?;
            }
        }
        Ok(done)
    }

    /// Reads what a replica needs before it applies anything (the applied sequence, the
    /// count, every id list, by building the id filter): an error here means the tree
    /// is damaged and must be rebuilt ([`ShardStore::wipe`], then a peer's snapshot or
    /// the log).
    pub fn check(&self) -> Result<()> {
        let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let count = self.event_count()?;
        self.applied_seq()?;
        let mut filter = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        if filter.is_none() {
            *filter = Some(IdFilter::build(&self.tree, count, self.shard)?);
        }
        Ok(())
    }

    /// Empties the shard (its tree and its index) so it can be rebuilt: a replica whose
    /// tree is damaged, or that needs what its log no longer holds.
    pub fn wipe(&self) -> Result<()> {
        let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.tree.clear()?;
        self.index.clear()?;
        *self.index_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.filter.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.db.flush()?;
        Ok(())
    }

    /// Starts restoring into this shard, which must hold nothing. Writes to the shard
    /// wait until the restore finishes.
    pub fn begin_restore(&self) -> Result<Restoring<'_>> {
        let writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let applied = self.applied_seq()?;
        if applied > 0 {
            return Err(StorageError::NotEmpty { shard: self.shard, what: format!("it has applied its log up to sequence {applied}") });
        }
        if let Some(kv) = self.tree.iter().next() {
            let (k, _) = kv?;
            let what = format!("it holds data (key {:?}); a restore may have been interrupted", String::from_utf8_lossy(&k[..k.len().min(1)]));
            return Err(StorageError::NotEmpty { shard: self.shard, what });
        }
        Ok(Restoring { store: self, _writing: writing, batch: sled::Batch::default(), batched: 0, last: Vec::new() })
    }
}

/// A restore in progress: records are written in batches; the applied sequence and the
/// event count are held back until [`Restoring::finish`], so an interrupted restore
/// never looks like a shard that can go on applying its log.
pub struct Restoring<'s> {
    store: &'s ShardStore,
    _writing: std::sync::MutexGuard<'s, ()>,
    batch: sled::Batch,
    batched: usize,
    last: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Records per sled write during a restore.
const RESTORE_BATCH: usize = 2048;

impl Restoring<'_> {
    pub fn record(&mut self, r: Record) -> Result<()> {
        match r {
            Record::Put(k, v) if k == APPLIED || k == COUNT => {
                self.last.retain(|(old, _)| *old != k);
                self.last.push((k, v));
            }
            Record::Put(k, v) => {
                self.batch.insert(k, v);
                self.batched += 1;
            }
            Record::Remove(k) => {
                self.batch.remove(k);
                self.batched += 1;
            }
            Record::ClearPrefix(p) => {
                self.write()?;
                let mut batch = sled::Batch::default();
                for kv in self.store.tree.scan_prefix(&p) {
                    batch.remove(kv?.0);
                }
                self.store.tree.apply_batch(batch)?;
            }
        }
        if self.batched >= RESTORE_BATCH {
            self.write()?;
        }
        Ok(())
    }

    /// Writes and syncs the records so far, without the applied sequence: what a
    /// restore cut short leaves on disk.
    pub fn flush_written(&mut self) -> Result<()> {
        self.write()?;
        self.store.db.flush()?;
        Ok(())
    }

    fn write(&mut self) -> Result<()> {
        if self.batched > 0 {
            self.store.tree.apply_batch(std::mem::take(&mut self.batch))?;
            self.batched = 0;
        }
        Ok(())
    }

    /// Writes the applied sequence and the count last, flushes, and drops what memory
    /// held about the empty shard (its id filter, its index), so both are rebuilt from
    /// the restored blocks.
    pub fn finish(mut self) -> Result<u64> {
        self.write()?;
        let mut batch = sled::Batch::default();
        for (k, v) in std::mem::take(&mut self.last) {
            batch.insert(k, v);
        }
        self.store.tree.apply_batch(batch)?;
        self.store.index.clear()?;
        *self.store.index_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.store.filter.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.store.db.flush()?;
        self.store.applied_seq()
    }
}
