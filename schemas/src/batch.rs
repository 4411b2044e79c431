//! Commands in a shard's log (the `SHARDS` stream). Every replica applies the same
//! commands in the same order. On the wire: MessagePack, compressed with zstd, behind
//! the uncompressed length (u32 LE) so decompression allocates once; a command made of
//! sealed blocks, already compressed, is carried as it is (the length's top bit set).
//!
//! Also the block format shards store, since ingest seals blocks in it.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::columns::{self, Columns};
use crate::event::Event;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Store these events; ids already stored are skipped.
    Insert { events: Vec<Event> },
    /// Delete the events with these ids (absent ids are ignored).
    Delete { ids: Vec<uuid::Uuid> },
    /// Delete every event in `[from, to)` that matches the query `q` (§9 syntax).
    DeleteWhere { q: String, from: i64, to: i64 },
    /// Set (or, with `None`, remove) labels and fields of one event.
    Update {
        id: uuid::Uuid,
        labels: std::collections::BTreeMap<String, Option<String>>,
        fields: serde_json::Map<String, serde_json::Value>,
    },
    /// Delete the events of `stream` older than `before` (ns). The issuer computes
    /// `before`, so every replica deletes the same events.
    Retention { stream: String, before: i64 },
    /// Store these blocks, sealed by ingest: each is kept as it came when none of its
    /// ids is stored yet (the usual case), or opened and its new events stored.
    Blocks { blocks: Vec<SealedBlock> },
}

/// Events encoded as the block a shard stores ([`encode_block`]), with what the shard
/// needs to keep it without opening it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedBlock {
    /// Its events' ids, in block order.
    pub ids: Vec<uuid::Uuid>,
    /// Its events per stream.
    pub streams: Vec<(String, u32)>,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl SealedBlock {
    /// Seals `events` (in the order given: the caller sorts them by time).
    pub fn seal(events: &[Event]) -> Result<Self, CodecError> {
        let mut streams: Vec<(String, u32)> = Vec::new();
        for e in events {
            match streams.iter_mut().find(|(s, _)| *s == e.stream) {
                Some((_, n)) => *n += 1,
                None => streams.push((e.stream.clone(), 1)),
            }
        }
        Ok(Self { ids: events.iter().map(|e| e.id).collect(), streams, bytes: encode_block(events)? })
    }

    /// Checks that the parts agree: as many ids and stream counts as the block holds
    /// events, and frames that fit the bytes.
    fn check(&self) -> Result<(), CodecError> {
        let n = block_count(&self.bytes)? as usize;
        if n == 0 || n > BLOCK_EVENTS {
            return Err(CodecError::Frame(format!("a sealed block of {n} events (1 to {BLOCK_EVENTS})")));
        }
        let by_stream: u64 = self.streams.iter().map(|(_, c)| u64::from(*c)).sum();
        if self.ids.len() != n || by_stream != n as u64 {
            return Err(CodecError::Frame(format!(
                "a sealed block of {n} events with {} ids and {by_stream} stream counts",
                self.ids.len()
            )));
        }
        block_frames(&self.bytes)?;
        Ok(())
    }

    /// About what it takes in a shard-log message: its bytes, its ids (16 bytes and a
    /// MessagePack header each) and its stream counts.
    pub fn wire_size(&self) -> usize {
        16 + self.bytes.len() + 18 * self.ids.len() + self.streams.iter().map(|(s, _)| s.len() + 8).sum::<usize>()
    }
}

/// Blocks one `Blocks` command may carry: a shard-log message under NATS's payload
/// limit holds far fewer, and a block's key leaves 16 bits for its part number.
const MAX_BLOCKS: usize = 1 << 12;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("corrupt frame: {0}")]
    Frame(String),
    #[error("compression: {0}")]
    Compression(#[from] std::io::Error),
    #[error("encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// zstd level for shard-log messages: fast, and most of the gain.
const LEVEL: i32 = 1;

/// Largest uncompressed frame accepted: bigger lengths mean a corrupt frame.
const MAX_RAW: usize = 256 << 20;
/// Set in a frame's length: the body is stored as it is, not compressed.
const STORED: u32 = 1 << 31;

thread_local! {
    // zstd contexts are costly to make (hundreds of KiB, zeroed): keep one per thread.
    static COMPRESSORS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `raw` as a frame: its length (u32 LE), then zstd at `level`.
pub fn compress(raw: &[u8], level: i32) -> Result<Vec<u8>, CodecError> {
    if raw.len() > MAX_RAW {
        return Err(CodecError::Frame(format!("{} bytes is over the {MAX_RAW}-byte frame limit", raw.len())));
    }
    let body = COMPRESSORS.with(|c| -> Result<Vec<u8>, CodecError> {
        let mut c = c.borrow_mut();
        let i = match c.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                c.push((level, zstd::bulk::Compressor::new(level)?));
                c.len() - 1
            }
        };
        Ok(c[i].1.compress(raw)?)
    })?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Runs `f` over the bytes of a frame made by [`compress`], decompressed into a buffer
/// the thread keeps (reading many frames allocates, and faults in, no fresh pages).
pub fn with_decompressed<R>(frame: &[u8], f: impl FnOnce(&[u8]) -> Result<R, CodecError>) -> Result<R, CodecError> {
    thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let (len, body) = frame
        .split_first_chunk::<4>()
        .ok_or_else(|| CodecError::Frame("shorter than its length prefix".into()))?;
    let len = u32::from_le_bytes(*len);
    if len & STORED != 0 {
        let len = (len & !STORED) as usize;
        if len > MAX_RAW {
            return Err(CodecError::Frame(format!("declares {len} stored bytes, over the {MAX_RAW}-byte limit")));
        }
        if body.len() != len {
            return Err(CodecError::Frame(format!("declares {len} stored bytes, holds {}", body.len())));
        }
        return f(body);
    }
    let len = len as usize;
    if len > MAX_RAW {
        return Err(CodecError::Frame(format!("declares {len} bytes, over the {MAX_RAW}-byte limit")));
    }
    BUF.with(|buf| {
        // A reentrant call (f decompressing again) gets a buffer of its own.
        let mut own = Vec::new();
        let mut guard = buf.try_borrow_mut().ok();
        let out: &mut Vec<u8> = match guard.as_deref_mut() {
            Some(b) => b,
            None => &mut own,
        };
        out.clear();
        out.reserve(len);
        let n = DECOMPRESSOR.with(|d| -> Result<usize, CodecError> {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            Ok(d.as_mut().expect("just set").decompress_to_buffer(body, out)?)
        })?;
        if n != len {
            return Err(CodecError::Frame(format!("declares {len} bytes, holds {n}")));
        }
        let r = f(out);
        // Keep a reasonable buffer, not the largest frame ever seen.
        if out.capacity() > 4 << 20 {
            *out = Vec::new();
        }
        r
    })
}

/// The bytes of a frame made by [`compress`].
pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, CodecError> {
    with_decompressed(frame, |raw| Ok(raw.to_vec()))
}

/// `raw` as a frame that [`with_decompressed`] reads, not compressed.
fn stored(raw: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    if raw.len() > MAX_RAW {
        return Err(CodecError::Frame(format!("{} bytes is over the {MAX_RAW}-byte frame limit", raw.len())));
    }
    let mut out = Vec::with_capacity(4 + raw.len());
    out.extend_from_slice(&(raw.len() as u32 | STORED).to_le_bytes());
    out.extend_from_slice(&raw);
    Ok(out)
}

impl ShardCommand {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let raw = rmp_serde::to_vec(self)?;
        match self {
            // Compressed already: a second pass would cost CPU and gain nothing.
            ShardCommand::Blocks { .. } => stored(raw),
            _ => compress(&raw, LEVEL),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let cmd: Self = with_decompressed(bytes, |raw| Ok(rmp_serde::from_slice(raw)?))?;
        if let ShardCommand::Blocks { blocks } = &cmd {
            if blocks.len() > MAX_BLOCKS {
                return Err(CodecError::Frame(format!("{} sealed blocks in one command, over {MAX_BLOCKS}", blocks.len())));
            }
            blocks.iter().try_for_each(SealedBlock::check)?;
        }
        Ok(cmd)
    }

    /// The events an insert adds (opening sealed blocks); `None` for other commands.
    pub fn into_inserted(self) -> Result<Option<Vec<Event>>, CodecError> {
        match self {
            ShardCommand::Insert { events } => Ok(Some(events)),
            ShardCommand::Blocks { blocks } => {
                let mut out = Vec::with_capacity(blocks.iter().map(|b| b.ids.len()).sum());
                for b in &blocks {
                    out.extend(decode_block(&b.bytes)?);
                }
                Ok(Some(out))
            }
            _ => Ok(None),
        }
    }
}

/// Events per block a shard writes at most (ingest seals blocks of this size too).
pub const BLOCK_EVENTS: usize = 512;
/// Events per compressed frame of a block: reading one event decompresses its frame
/// alone.
pub const FRAME_EVENTS: usize = 128;
/// zstd level for stored blocks: level 6 saved 1.5% of the bytes for 10% more of the
/// node's ingest CPU (docs/benchmarks.md).
pub const BLOCK_LEVEL: i32 = 3;
/// A block's header: its min and max `ts` (i64 BE) and its event count (u32 BE), so
/// time ranges skip blocks without decompressing them.
pub const BLOCK_HEADER: usize = 20;

/// `events` as a block: the header, the frame count (u16 BE), each frame's length (u32
/// BE), then the frames ([`encode_events`], [`FRAME_EVENTS`] events each).
pub fn encode_block(events: &[Event]) -> Result<Vec<u8>, CodecError> {
    block_of(events, encode_events)
}

/// [`encode_block`] with frames in the row form stores had before columnar frames
/// ([`encode_events_rows`]): for tests of stores written then.
pub fn encode_block_rows(events: &[Event]) -> Result<Vec<u8>, CodecError> {
    block_of(events, encode_events_rows)
}

fn block_of(events: &[Event], frame: fn(&[Event], i32) -> Result<Vec<u8>, CodecError>) -> Result<Vec<u8>, CodecError> {
    let min = events.iter().map(|e| e.ts).min().unwrap_or(0);
    let max = events.iter().map(|e| e.ts).max().unwrap_or(0);
    let frames = events.chunks(FRAME_EVENTS).map(|c| frame(c, BLOCK_LEVEL)).collect::<Result<Vec<_>, _>>()?;
    let body: usize = frames.iter().map(Vec::len).sum();
    let mut v = Vec::with_capacity(BLOCK_HEADER + 2 + 4 * frames.len() + body);
    v.extend_from_slice(&min.to_be_bytes());
    v.extend_from_slice(&max.to_be_bytes());
    v.extend_from_slice(&(events.len() as u32).to_be_bytes());
    v.extend_from_slice(&(frames.len() as u16).to_be_bytes());
    for f in &frames {
        v.extend_from_slice(&(f.len() as u32).to_be_bytes());
    }
    for f in &frames {
        v.extend_from_slice(f);
    }
    Ok(v)
}

/// The event count in a block's header.
pub fn block_count(v: &[u8]) -> Result<u32, CodecError> {
    let n = v.get(16..BLOCK_HEADER).ok_or_else(|| CodecError::Frame("a block shorter than its header".into()))?;
    Ok(u32::from_be_bytes(n.try_into().expect("4 bytes")))
}

/// The compressed frames of a block.
pub fn block_frames(v: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    let short = || CodecError::Frame("short block".into());
    let n = u16::from_be_bytes(v.get(BLOCK_HEADER..BLOCK_HEADER + 2).ok_or_else(short)?.try_into().expect("2 bytes")) as usize;
    let mut at = BLOCK_HEADER + 2 + 4 * n;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let o = BLOCK_HEADER + 2 + 4 * i;
        let len = u32::from_be_bytes(v.get(o..o + 4).ok_or_else(short)?.try_into().expect("4 bytes")) as usize;
        out.push(v.get(at..at.checked_add(len).ok_or_else(short)?).ok_or_else(short)?);
        at += len;
    }
    Ok(out)
}

/// True when every frame of block `v` is in the layout written now (columnar, ids
/// apart); false for a block written before, in rows, which [`decode_block`] still
/// reads and [`encode_block`] writes anew. Reads only the frames' first bytes.
pub fn block_is_current(v: &[u8]) -> Result<bool, CodecError> {
    for frame in block_frames(v)? {
        let len = frame.first_chunk::<4>().ok_or_else(|| CodecError::Frame("a block frame without its parts".into()))?;
        if u32::from_le_bytes(*len) & IDS_APART == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every event of a block.
pub fn decode_block(v: &[u8]) -> Result<Vec<Event>, CodecError> {
    // The count is only a hint: a damaged header must not make a huge allocation.
    let mut out = Vec::with_capacity((block_count(v)? as usize).min(BLOCK_EVENTS));
    for frame in block_frames(v)? {
        out.extend(decode_events(frame)?);
    }
    Ok(out)
}

/// An event with its message left out (an empty string in its place), serialized as
/// the same array as [`Event`].
#[derive(Serialize)]
struct Shell<'a> {
    id: &'a uuid::Uuid,
    ts: i64,
    stream: &'a str,
    level: &'a str,
    message: &'static str,
    labels: &'a std::collections::BTreeMap<String, String>,
    fields: &'a serde_json::Map<String, serde_json::Value>,
}

/// A list of events as stored in one block frame, in three parts compressed apart: the
/// events without their ids and messages, in columns ([`crate::columns`]), their ids,
/// then the messages (a MessagePack list). Aggregations read the first part alone;
/// messages, the bulk of the bytes, also compress better together.
/// Layout: the first part's length (u32 LE) with [`IDS_APART`] set, the first part, the
/// ids' length (u32 LE), the ids, the messages.
pub fn encode_events(events: &[Event], level: i32) -> Result<Vec<u8>, CodecError> {
    let meta = compress(&columns::encode(events)?, level)?;
    let ids = compress(&columns::encode_ids(events), level)?;
    let mut head = Vec::with_capacity(8 + meta.len() + ids.len());
    head.extend_from_slice(&(meta.len() as u32 | IDS_APART).to_le_bytes());
    head.extend_from_slice(&meta);
    head.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    head.extend_from_slice(&ids);
    frame_of(head, events, level)
}

/// Set in a frame's first length when its ids are a part of their own (columnar
/// frames); frames in the row form, with the ids among the events, never set it.
const IDS_APART: u32 = 1 << 31;

/// [`encode_events`] in the form stores had before columnar frames: the first part a
/// MessagePack list of the events with empty messages. Every reader still reads it, so
/// a store written before keeps answering; tests write it to check that.
pub fn encode_events_rows(events: &[Event], level: i32) -> Result<Vec<u8>, CodecError> {
    let shells: Vec<Shell<'_>> = events
        .iter()
        .map(|e| Shell {
            id: &e.id,
            ts: e.ts,
            stream: &e.stream,
            level: &e.level,
            message: "",
            labels: &e.labels,
            fields: &e.fields,
        })
        .collect();
    let meta = compress(&rmp_serde::to_vec(&shells)?, level)?;
    let mut head = Vec::with_capacity(4 + meta.len());
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&meta);
    frame_of(head, events, level)
}

/// `head` (the parts before the messages, with their lengths) and then the messages.
fn frame_of(mut head: Vec<u8>, events: &[Event], level: i32) -> Result<Vec<u8>, CodecError> {
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    head.extend_from_slice(&compress(&rmp_serde::to_vec(&messages)?, level)?);
    Ok(head)
}

/// A frame's parts: the events (without messages, and without ids when those are
/// apart), the ids when apart, and the messages.
struct Parts<'a> {
    meta: &'a [u8],
    ids: Option<&'a [u8]>,
    messages: &'a [u8],
}

/// The parts of a frame made by [`encode_events`] or [`encode_events_rows`].
fn parts(bytes: &[u8]) -> Result<Parts<'_>, CodecError> {
    fn split(bytes: &[u8]) -> Result<(u32, &[u8], &[u8]), CodecError> {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(|| CodecError::Frame("a block frame without its parts".into()))?;
        let len = u32::from_le_bytes(*len);
        let n = (len & !IDS_APART) as usize;
        if n > rest.len() {
            return Err(CodecError::Frame(format!("a block frame part of {n} bytes in {} bytes", rest.len())));
        }
        let (part, rest) = rest.split_at(n);
        Ok((len & IDS_APART, part, rest))
    }
    let (apart, meta, rest) = split(bytes)?;
    if apart == 0 {
        return Ok(Parts { meta, ids: None, messages: rest });
    }
    let (_, ids, messages) = split(rest)?;
    Ok(Parts { meta, ids: Some(ids), messages })
}

/// Sets the ids of `events` (at their positions of `n`) from a frame's ids part; a
/// frame in the row form (no such part) has them set already.
fn set_ids<'e>(ids: Option<&[u8]>, columnar: bool, n: usize, events: impl Iterator<Item = (u32, &'e mut Event)>) -> Result<(), CodecError> {
    let ids = match (ids, columnar) {
        (None, false) => return Ok(()),
        (Some(ids), true) => ids,
        _ => return Err(CodecError::Frame("a frame whose parts disagree: ids apart from events in rows, or missing".into())),
    };
    with_decompressed(ids, |planes| {
        for (i, e) in events {
            e.id = columns::id_at(planes, n, i as usize)?;
        }
        Ok(())
    })
}

pub fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, CodecError> {
    let Parts { meta, ids, messages } = parts(bytes)?;
    let (columnar, mut events) = with_decompressed(meta, |raw| {
        if columns::is_columnar(raw) {
            let c = Columns::read(raw)?;
            Ok((true, (0..c.len()).map(|i| c.event(i)).collect::<Result<Vec<_>, _>>()?))
        } else {
            Ok((false, rmp_serde::from_slice::<Vec<Event>>(raw)?))
        }
    })?;
    set_ids(ids, columnar, events.len(), events.iter_mut().enumerate().map(|(i, e)| (i as u32, e)))?;
    let texts: Vec<String> = with_decompressed(messages, |raw| Ok(rmp_serde::from_slice(raw)?))?;
    if texts.len() != events.len() {
        return Err(CodecError::Frame(format!("{} events but {} messages", events.len(), texts.len())));
    }
    for (e, m) in events.iter_mut().zip(texts) {
        e.message = m;
    }
    Ok(events)
}

/// The events at positions `wanted` (ascending) of a block made by [`encode_events`],
/// with their positions; the others are skipped without being built.
pub fn decode_events_at(bytes: &[u8], wanted: &[u32]) -> Result<Vec<(u32, Event)>, CodecError> {
    let Parts { meta, ids, messages } = parts(bytes)?;
    let (n, mut events) = with_decompressed(meta, |raw| {
        if columns::is_columnar(raw) {
            let c = Columns::read(raw)?;
            let events = wanted.iter().take_while(|&&i| (i as usize) < c.len()).map(|&i| Ok((i, c.event(i as usize)?))).collect::<Result<Vec<_>, CodecError>>()?;
            Ok((Some(c.len()), events))
        } else {
            Ok((None, pick(raw, wanted)?))
        }
    })?;
    set_ids(ids, n.is_some(), n.unwrap_or(0), events.iter_mut().map(|(i, e)| (*i, e)))?;
    let texts: Vec<(u32, String)> = with_decompressed(messages, |raw| pick(raw, wanted))?;
    if texts.len() != events.len() {
        return Err(CodecError::Frame(format!("{} events but {} messages", events.len(), texts.len())));
    }
    for ((_, e), (_, m)) in events.iter_mut().zip(texts) {
        e.message = m;
    }
    Ok(events)
}

/// The items at positions `wanted` (ascending) of a MessagePack list, with their
/// positions; the others are skipped without being built.
fn pick<T: serde::de::DeserializeOwned>(raw: &[u8], wanted: &[u32]) -> Result<Vec<(u32, T)>, CodecError> {
    use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
    use std::marker::PhantomData;

    struct Picker<'w, T>(&'w [u32], PhantomData<T>);
    impl<'de, T: serde::de::DeserializeOwned> Visitor<'de> for Picker<'_, T> {
        type Value = Vec<(u32, T)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(self.0.len());
            let mut next = self.0.iter().copied().peekable();
            let mut i = 0u32;
            while let Some(&want) = next.peek() {
                if i == want {
                    match seq.next_element::<T>()? {
                        Some(e) => out.push((i, e)),
                        None => break,
                    }
                    next.next();
                } else if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                i += 1;
            }
            // The rest of the list is left unread: nothing follows it in the block.
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(out)
        }
    }
    impl<'de, T: serde::de::DeserializeOwned> DeserializeSeed<'de> for Picker<'_, T> {
        type Value = Vec<(u32, T)>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(raw);
    Ok(Picker(wanted, PhantomData).deserialize(&mut de)?)
}

/// A field value as [`for_each_lite`] sees it: scalars borrowed, anything nested left
/// unread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LiteValue<'a> {
    Str(&'a str),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Null,
    /// An array or an object.
    Nested,
}

/// An event's parts that aggregations read, borrowed from the decompressed block: no
/// id, no message, top-level fields only.
#[derive(Debug, Default)]
pub struct LiteEvent<'a> {
    pub ts: i64,
    pub stream: &'a str,
    pub level: &'a str,
    pub labels: Vec<(&'a str, &'a str)>,
    pub fields: Vec<(&'a str, LiteValue<'a>)>,
}

impl<'a> LiteEvent<'a> {
    pub fn label(&self, k: &str) -> Option<&'a str> {
        self.labels.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    pub fn field(&self, k: &str) -> Option<LiteValue<'a>> {
        self.fields.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }
}

/// Calls `f` with the events at `positions` (ascending; `None`: every event) of a block
/// frame made by [`encode_events`], each decoded without its id and message.
pub fn for_each_lite(bytes: &[u8], positions: Option<&[u32]>, f: &mut dyn FnMut(u32, &LiteEvent<'_>)) -> Result<(), CodecError> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    struct Value<'a>(std::marker::PhantomData<&'a ()>);
    impl<'de> Visitor<'de> for Value<'de> {
        type Value = LiteValue<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a field value")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(LiteValue::Str(v))
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(E::custom("a field string that cannot be borrowed"))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(LiteValue::Int(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(LiteValue::UInt(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(LiteValue::Float(v))
        }
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok(LiteValue::Bool(v))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(LiteValue::Null)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(LiteValue::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(LiteValue::Nested)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(LiteValue::Nested)
        }
    }
    impl<'de> DeserializeSeed<'de> for Value<'de> {
        type Value = LiteValue<'de>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    /// A map of borrowed keys, into a reused vector.
    struct Pairs<'s, 'de, V>(&'s mut Vec<(&'de str, V)>);
    impl<'de> Visitor<'de> for Pairs<'_, 'de, &'de str> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("labels")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            while let Some((k, v)) = a.next_entry::<&'de str, &'de str>()? {
                self.0.push((k, v));
            }
            Ok(())
        }
    }
    impl<'de> Visitor<'de> for Pairs<'_, 'de, LiteValue<'de>> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("fields")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            while let Some(k) = a.next_key::<&'de str>()? {
                let v = a.next_value_seed(Value(std::marker::PhantomData))?;
                self.0.push((k, v));
            }
            Ok(())
        }
    }
    macro_rules! seed_for {
        ($v:ty) => {
            impl<'de> DeserializeSeed<'de> for Pairs<'_, 'de, $v> {
                type Value = ();
                fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                    d.deserialize_map(self)
                }
            }
        };
    }
    seed_for!(&'de str);
    seed_for!(LiteValue<'de>);

    /// One event, as the array serde makes of [`Event`].
    struct One<'s, 'de>(&'s mut LiteEvent<'de>);
    impl<'de> Visitor<'de> for One<'_, 'de> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an event")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            use serde::de::Error;
            let e = self.0;
            let missing = || A::Error::custom("a short event");
            a.next_element::<IgnoredAny>()?.ok_or_else(missing)?;
            e.ts = a.next_element()?.ok_or_else(missing)?;
            e.stream = a.next_element()?.ok_or_else(missing)?;
            e.level = a.next_element()?.ok_or_else(missing)?;
            a.next_element::<IgnoredAny>()?.ok_or_else(missing)?;
            e.labels.clear();
            a.next_element_seed(Pairs(&mut e.labels))?.ok_or_else(missing)?;
            e.fields.clear();
            a.next_element_seed(Pairs(&mut e.fields))?.ok_or_else(missing)?;
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for One<'_, 'de> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    struct All<'f, 'p> {
        positions: Option<&'p [u32]>,
        f: &'f mut dyn FnMut(u32, &LiteEvent<'_>),
    }
    impl<'de> Visitor<'de> for All<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            let mut e = LiteEvent::default();
            let mut wanted = self.positions.map(|p| p.iter().copied().peekable());
            let mut i = 0u32;
            loop {
                let take = match &mut wanted {
                    None => true,
                    Some(w) => match w.peek() {
                        None => break,
                        Some(&p) => p == i,
                    },
                };
                if take {
                    if a.next_element_seed(One(&mut e))?.is_none() {
                        break;
                    }
                    (self.f)(i, &e);
                    if let Some(w) = &mut wanted {
                        w.next();
                    }
                } else if a.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                i += 1;
            }
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for All<'_, '_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    let meta = parts(bytes)?.meta;
    with_decompressed(meta, |raw| {
        if columns::is_columnar(raw) {
            Columns::read(raw)?.for_each_lite(positions, f);
            return Ok(());
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(raw);
        All { positions, f }.deserialize(&mut de)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn event(message: String, ts: i64, label: String) -> Event {
        let mut labels = BTreeMap::new();
        labels.insert("k".to_string(), label);
        let mut fields = serde_json::Map::new();
        fields.insert("n".into(), serde_json::json!(ts % 1000));
        Event {
            id: uuid::Uuid::now_v7(),
            ts,
            stream: "s.t".into(),
            level: "info".into(),
            message,
            labels,
            fields,
        }
    }

    #[test]
    fn a_sealed_block_that_disagrees_with_itself_is_refused() {
        let events: Vec<Event> = (0..5).map(|i| event(format!("m{i}"), i, "x".into())).collect();
        let good = SealedBlock::seal(&events).unwrap();
        let mut fewer_ids = good.clone();
        fewer_ids.ids.pop();
        let mut wrong_streams = good.clone();
        wrong_streams.streams[0].1 = 4;
        let mut cut = good.clone();
        cut.bytes.truncate(cut.bytes.len() - 1);
        let empty = SealedBlock::seal(&[]).unwrap();
        for (bad, why) in [(fewer_ids, "4 ids"), (wrong_streams, "4 stream counts"), (cut, "short block"), (empty, "0 events")] {
            let bytes = ShardCommand::Blocks { blocks: vec![good.clone(), bad] }.encode().unwrap();
            let err = ShardCommand::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_stored_frame_over_the_limit_is_refused() {
        let mut frame = ((MAX_RAW as u32 + 1) | STORED).to_le_bytes().to_vec();
        frame.extend_from_slice(b"short");
        let err = ShardCommand::decode(&frame).unwrap_err().to_string();
        assert!(err.contains("over the"), "{err}");
    }

    proptest! {
        #[test]
        fn commands_round_trip(msgs in proptest::collection::vec((".*", any::<i64>(), "[a-z]{0,8}"), 0..20)) {
            let events: Vec<Event> = msgs.into_iter().map(|(m, t, l)| event(m, t, l)).collect();
            let cmd = ShardCommand::Insert { events };
            let back = ShardCommand::decode(&cmd.encode().unwrap()).unwrap();
            prop_assert_eq!(back, cmd);
        }

        #[test]
        fn picking_positions_gives_those_events(n in 0usize..40, pick in proptest::collection::btree_set(0u32..45, 0..10)) {
            let events: Vec<Event> = (0..n).map(|i| event(format!("m{i}"), i as i64, "x".into())).collect();
            let block = encode_events(&events, 3).unwrap();
            let wanted: Vec<u32> = pick.into_iter().collect();
            let got = decode_events_at(&block, &wanted).unwrap();
            let want: Vec<(u32, Event)> =
                wanted.iter().filter(|&&i| (i as usize) < n).map(|&i| (i, events[i as usize].clone())).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn lite_events_hold_what_the_full_ones_hold(n in 0usize..30, pick in proptest::collection::btree_set(0u32..35, 0..8)) {
            let mut events: Vec<Event> = (0..n).map(|i| event(format!("m{i}"), i as i64 - 7, format!("l{i}"))).collect();
            for (i, e) in events.iter_mut().enumerate() {
                e.fields.insert("s".into(), serde_json::json!(format!("v{i}")));
                e.fields.insert("f".into(), serde_json::json!(i as f64 + 0.5));
                e.fields.insert("neg".into(), serde_json::json!(-(i as i64)));
                e.fields.insert("b".into(), serde_json::json!(i % 2 == 0));
                e.fields.insert("z".into(), serde_json::Value::Null);
                e.fields.insert("o".into(), serde_json::json!({"x": [1, 2]}));
            }
            let block = encode_events(&events, 3).unwrap();
            let wanted: Vec<u32> = pick.into_iter().collect();
            for positions in [None, Some(wanted.as_slice())] {
                let mut seen = Vec::new();
                for_each_lite(&block, positions, &mut |i, l| {
                    let e = &events[i as usize];
                    assert_eq!((l.ts, l.stream, l.level), (e.ts, e.stream.as_str(), e.level.as_str()));
                    assert_eq!(l.label("k"), Some(e.labels["k"].as_str()));
                    assert_eq!(l.field("s"), Some(LiteValue::Str(e.fields["s"].as_str().unwrap())));
                    assert_eq!(l.field("f"), Some(LiteValue::Float(i as f64 + 0.5)));
                    assert_eq!(l.field("b"), Some(LiteValue::Bool(i % 2 == 0)));
                    assert_eq!(l.field("z"), Some(LiteValue::Null));
                    assert_eq!(l.field("o"), Some(LiteValue::Nested));
                    assert!(matches!(l.field("neg"), Some(LiteValue::Int(_) | LiteValue::UInt(0))));
                    seen.push(i);
                }).unwrap();
                let want: Vec<u32> = match positions {
                    None => (0..n as u32).collect(),
                    Some(p) => p.iter().copied().filter(|&i| (i as usize) < n).collect(),
                };
                prop_assert_eq!(seen, want);
            }
        }

        #[test]
        fn sealed_blocks_round_trip_uncompressed(sizes in proptest::collection::vec(1usize..300, 0..4)) {
            let blocks: Vec<Vec<Event>> = sizes
                .iter()
                .map(|&n| (0..n).map(|i| event(format!("message {i}"), i as i64, format!("l{}", i % 3))).collect())
                .collect();
            let cmd = ShardCommand::Blocks { blocks: blocks.iter().map(|b| SealedBlock::seal(b).unwrap()).collect() };
            let bytes = cmd.encode().unwrap();
            // Carried as it is: the blocks inside are compressed already.
            prop_assert!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) & STORED != 0);
            let back = ShardCommand::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &cmd);
            let ShardCommand::Blocks { blocks: sealed } = &back else { unreachable!() };
            for (b, events) in sealed.iter().zip(&blocks) {
                prop_assert_eq!(&b.ids, &events.iter().map(|e| e.id).collect::<Vec<_>>());
                prop_assert_eq!(&b.streams, &vec![("s.t".to_string(), events.len() as u32)]);
                prop_assert_eq!(block_count(&b.bytes).unwrap() as usize, events.len());
            }
            prop_assert_eq!(back.into_inserted().unwrap().unwrap(), blocks.concat());
        }

        #[test]
        fn decoding_garbage_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ShardCommand::decode(&bytes);
        }
    }
}
