//! What a backup is made of: a manifest (JSON) and one file per shard.
//!
//! A shard file is the 4 bytes `GSB1`, then a zstd stream of records: a tag byte
//! (1 put, 2 remove, 3 clear a prefix), a u32 big-endian key length and the key, and
//! for a put a u32 value length and the value; the last record is the tag 0 and the
//! u64 count of records before it, so a cut-off file is told from a short one. The
//! manifest holds each file's SHA-256 (of the bytes on disk, so `sha256sum` agrees),
//! its size, its record and event counts and the shard sequences it covers.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use gossamer_storage::Record;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: u32 = 1;
const MAGIC: &[u8; 4] = b"GSB1";
/// zstd level of shard files: blocks are compressed already, this mostly squeezes keys,
/// id lists and headers, so a fast level.
const LEVEL: i32 = 3;
/// Largest key and value a reader accepts: a damaged length must not ask for gigabytes.
const MAX_KEY: usize = 64 << 10;
const MAX_VALUE: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Incremental,
}

/// A backup's description, written last: a backup without one is incomplete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub kind: Kind,
    /// The backup this one continues (incrementals only).
    pub parent: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub gossamer_version: String,
    pub cluster: String,
    pub node: String,
    pub shard_count: u32,
    /// Per-stream retention (max age in ns) at the time of the backup.
    pub retention: BTreeMap<String, i64>,
    pub shards: Vec<ShardEntry>,
    /// Events stored in the cluster as of the backup (the sum over shards).
    pub events: u64,
    /// Bytes of the shard files.
    pub bytes: u64,
}

/// One shard's file in a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub shard: u32,
    pub file: String,
    /// The shard sequence the backup starts after (0 for a full backup).
    pub from_seq: u64,
    /// The shard sequence the backup brings the shard to.
    pub to_seq: u64,
    /// Events in the shard at `to_seq`.
    pub events: u64,
    /// Events in the blocks the file holds (all of them for a full backup).
    pub block_events: u64,
    pub records: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// The file name of a shard's data in a backup.
pub fn shard_file(shard: u32) -> String {
    format!("shard-{shard}.gsb")
}

/// A backup name a user may give: it becomes a directory or object prefix, so only
/// letters, digits, `.`, `_` and `-`, not starting with a dot, at most 100 bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a backup name cannot be empty".into());
    }
    if name.len() > 100 {
        return Err(format!("a backup name is at most 100 bytes; this one has {}", name.len()));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(format!("a backup name cannot hold a path separator: {name:?}"));
    }
    if name.contains("..") || name.starts_with('.') {
        return Err(format!("a backup name cannot start with a dot or hold \"..\": {name:?}"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("a backup name holds only letters, digits, '.', '_' and '-'; {c:?} is not allowed"));
    }
    Ok(())
}

/// Counts and hashes the bytes that go through it.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// The SHA-256 (lowercase hex) and the byte count so far.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, format!("{:x}", self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Writes a shard file.
pub struct RecordWriter<W: Write> {
    enc: zstd::Encoder<'static, Hashing<W>>,
    records: u64,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(w: W) -> std::io::Result<Self> {
        let mut h = Hashing::new(w);
        h.write_all(MAGIC)?;
        let mut enc = zstd::Encoder::new(h, LEVEL)?;
        enc.include_checksum(true)?;
        Ok(Self { enc, records: 0 })
    }

    pub fn write(&mut self, r: &Record) -> std::io::Result<()> {
        let (tag, k, v) = match r {
            Record::Put(k, v) => (1u8, k, Some(v)),
            Record::Remove(k) => (2, k, None),
            Record::ClearPrefix(p) => (3, p, None),
        };
        self.enc.write_all(&[tag])?;
        self.enc.write_all(&(k.len() as u32).to_be_bytes())?;
        self.enc.write_all(k)?;
        if let Some(v) = v {
            self.enc.write_all(&(v.len() as u32).to_be_bytes())?;
            self.enc.write_all(v)?;
        }
        self.records += 1;
        Ok(())
    }

    /// Ends the file: the writer, the file's SHA-256 and its size in bytes.
    pub fn finish(mut self) -> std::io::Result<(W, String, u64)> {
        self.enc.write_all(&[0])?;
        self.enc.write_all(&self.records.to_be_bytes())?;
        let mut h = self.enc.finish()?;
        h.flush()?;
        Ok(h.finish())
    }
}

/// Why a shard file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a Gossamer backup file (it does not start with GSB1)")]
    Magic,
    #[error("cannot read record {record}: {source}")]
    Io { record: u64, source: std::io::Error },
    #[error("record {record} has the unknown tag {tag}")]
    Tag { record: u64, tag: u8 },
    #[error("record {record} claims a {what} of {len} bytes, over the limit of {limit}")]
    Length { record: u64, what: &'static str, len: usize, limit: usize },
    #[error("the file ends with a count of {claimed} records, but holds {found}")]
    Count { claimed: u64, found: u64 },
    #[error("bytes follow the end of the file's records")]
    Trailing,
    #[error("record {record}: {what}")]
    Rejected { record: u64, what: String },
}

/// Reads a shard file, calling `f` with each record; returns the record count.
pub fn read_records(r: impl Read, mut f: impl FnMut(Record) -> Result<(), String>) -> Result<u64, FormatError> {
    let mut r = std::io::BufReader::new(r);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).map_err(|_| FormatError::Magic)?;
    if &magic != MAGIC {
        return Err(FormatError::Magic);
    }
    let mut dec = zstd::Decoder::with_buffer(r).map_err(|source| FormatError::Io { record: 0, source })?;
    let mut record = 0u64;
    let io = |record| move |source| FormatError::Io { record, source };
    loop {
        let mut tag = [0u8; 1];
        dec.read_exact(&mut tag).map_err(io(record))?;
        if tag[0] == 0 {
            let mut n = [0u8; 8];
            dec.read_exact(&mut n).map_err(io(record))?;
            let claimed = u64::from_be_bytes(n);
            if claimed != record {
                return Err(FormatError::Count { claimed, found: record });
            }
            let mut rest = [0u8; 1];
            return match dec.read(&mut rest).map_err(io(record))? {
                0 => Ok(record),
                _ => Err(FormatError::Trailing),
            };
        }
        let key = read_bytes(&mut dec, record, "key", MAX_KEY)?;
        let rec = match tag[0] {
            1 => Record::Put(key, read_bytes(&mut dec, record, "value", MAX_VALUE)?),
            2 => Record::Remove(key),
            3 => Record::ClearPrefix(key),
            tag => return Err(FormatError::Tag { record, tag }),
        };
        f(rec).map_err(|what| FormatError::Rejected { record, what })?;
        record += 1;
    }
}

fn read_bytes(r: &mut impl Read, record: u64, what: &'static str, limit: usize) -> Result<Vec<u8>, FormatError> {
    let mut n = [0u8; 4];
    r.read_exact(&mut n).map_err(|source| FormatError::Io { record, source })?;
    let len = u32::from_be_bytes(n) as usize;
    if len > limit {
        return Err(FormatError::Length { record, what, len, limit });
    }
    let mut v = vec![0u8; len];
    r.read_exact(&mut v).map_err(|source| FormatError::Io { record, source })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Record> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            (bytes.clone(), bytes.clone()).prop_map(|(k, v)| Record::Put(k, v)),
            bytes.clone().prop_map(Record::Remove),
            bytes.prop_map(Record::ClearPrefix),
        ]
    }

    fn written(records: &[Record]) -> (Vec<u8>, String, u64) {
        let mut w = RecordWriter::new(Vec::new()).unwrap();
        for r in records {
            w.write(r).unwrap();
        }
        w.finish().unwrap()
    }

    proptest! {
        /// What is written reads back the same, and the checksum and size are those of
        /// the bytes written.
        #[test]
        fn records_round_trip(records in proptest::collection::vec(record(), 0..50)) {
            let (bytes, sha, size) = written(&records);
            prop_assert_eq!(size, bytes.len() as u64);
            prop_assert_eq!(sha, format!("{:x}", Sha256::digest(&bytes)));
            let mut back = Vec::new();
            let n = read_records(&bytes[..], |r| { back.push(r); Ok(()) }).unwrap();
            prop_assert_eq!(n, records.len() as u64);
            prop_assert_eq!(back, records);
        }

        /// Damage is always told apart: a file cut short never reads, and any changed
        /// byte changes the SHA-256 the manifest keeps. (A changed byte can leave the
        /// records as they were, e.g. in a zstd header field that does not matter, so
        /// reading alone is not the guard: the checksum is, and verify checks it first.)
        #[test]
        fn damage_is_always_told_apart(
            records in proptest::collection::vec(record(), 1..30),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<bool>(),
        ) {
            let (mut bytes, sha, _) = written(&records);
            let i = at.index(bytes.len());
            if cut { bytes.truncate(i) } else { bytes[i] ^= flip }
            let read = read_records(&bytes[..], |_| Ok(()));
            if cut {
                prop_assert!(read.is_err(), "a file cut at byte {} read whole", i);
            }
            prop_assert_ne!(format!("{:x}", Sha256::digest(&bytes)), sha);
        }
    }

    #[test]
    fn names_with_paths_or_dots_are_refused() {
        for bad in ["", "../x", "a/b", "a\\b", "..", ".hidden", "a..b", "a b", "x".repeat(101).as_str()] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["nightly", "2026-11-26T04.00Z-full", "a_b.c-1"] {
            assert!(check_name(good).is_ok(), "{good:?} was refused");
        }
    }
}
