//! The columnar form of a block frame's first part: the events of a frame without their
//! messages, one column per property instead of one MessagePack map per event.
//!
//! Layout (varints are LEB128, signed ones zigzag first):
//! - [`MAGIC`] (a byte MessagePack never uses, so the row form, a MessagePack list,
//!   is told apart by its first byte), [`VERSION`], the event count;
//! - `ts`: the first, then the differences to the previous one;
//! - `stream` and `level`: a dictionary, then one index per event (none with one entry);
//! - the labels: for each name used in the frame, its name, which events carry it, a
//!   dictionary of its values and one index per carrier;
//! - the top-level fields: for each name, its name, which events carry it, one type
//!   tag per carrier, a dictionary of its string values, then the carriers' values in
//!   order (integers as varints, floats as 8 bytes, strings as dictionary indexes,
//!   arrays and objects as MessagePack).
//!
//! The ids are not in the part: they are compressed apart ([`encode_ids`]: 16 bytes
//! each, byte plane by byte plane, every id's first byte, then every second byte, ...,
//! so the time prefix of v7 ids compresses), and aggregations never decompress them.
//!
//! "Which events carry it" is the carrier count, then (when not every event) the
//! positions as differences. The encoding takes space in proportion to the values
//! present, whatever mix of names the events use. Aggregations read the columns
//! without building events; decoding checks every length against the bytes, so a
//! damaged frame fails with an error, never a panic or a huge allocation.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use crate::batch::{CodecError, LiteEvent, LiteValue};
use crate::event::Event;

/// First byte of a columnar frame part: 0xc1 is never used in MessagePack.
pub const MAGIC: u8 = 0xc1;
pub const VERSION: u8 = 1;

/// Events in one columnar part at most: frames hold far fewer.
const MAX_EVENTS: usize = 1 << 16;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const UINT: u8 = 4;
const FLOAT: u8 = 5;
const STR: u8 = 6;
const NESTED: u8 = 7;

/// `v` as a LEB128 varint (7 bits a byte, low first); the index's postings use it too.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The varint at `*at` in `buf`, moving `at` past it; `None` when `buf` ends first or it
/// runs over 64 bits.
#[inline]
pub fn get_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A dictionary being built: its entries in first-seen order.
#[derive(Default)]
struct Dict<'a> {
    entries: Vec<&'a str>,
    index: BTreeMap<&'a str, u32>,
}

impl<'a> Dict<'a> {
    fn add(&mut self, s: &'a str) -> u32 {
        let next = self.entries.len() as u32;
        *self.index.entry(s).or_insert_with(|| {
            self.entries.push(s);
            next
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        put_varint(out, self.entries.len() as u64);
        for s in &self.entries {
            put_str(out, s);
        }
    }
}

/// Writes which of `n` events are carriers: their count, then their positions as
/// differences unless every event is one.
fn put_carriers(out: &mut Vec<u8>, n: usize, carriers: &[u32]) {
    put_varint(out, carriers.len() as u64);
    if carriers.len() < n {
        let mut last = 0u32;
        for (i, &c) in carriers.iter().enumerate() {
            put_varint(out, u64::from(if i == 0 { c } else { c - last - 1 }));
            last = c;
        }
    }
}

/// Writes a dictionary-coded column of one string per event.
fn put_dict_column<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = &'a str>) {
    let mut dict = Dict::default();
    let idx: Vec<u32> = values.map(|s| dict.add(s)).collect();
    dict.write(out);
    if dict.entries.len() > 1 {
        for i in idx {
            put_varint(out, u64::from(i));
        }
    }
}

/// `events` (their messages left out) in the columnar form.
pub fn encode(events: &[Event]) -> Result<Vec<u8>, CodecError> {
    let n = events.len();
    if n > MAX_EVENTS {
        return Err(CodecError::Frame(format!("{n} events in one frame, over {MAX_EVENTS}")));
    }
    let mut out = Vec::with_capacity(64 + n * 40);
    out.push(MAGIC);
    out.push(VERSION);
    put_varint(&mut out, n as u64);
    let mut prev = 0i64;
    for e in events {
        put_varint(&mut out, zigzag(e.ts.wrapping_sub(prev)));
        prev = e.ts;
    }
    put_dict_column(&mut out, events.iter().map(|e| e.stream.as_str()));
    put_dict_column(&mut out, events.iter().map(|e| e.level.as_str()));

    // Labels: name -> (carriers, values).
    let mut labels: BTreeMap<&str, (Vec<u32>, Vec<&str>)> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        for (k, v) in &e.labels {
            let col = labels.entry(k.as_str()).or_default();
            col.0.push(i as u32);
            col.1.push(v.as_str());
        }
    }
    put_varint(&mut out, labels.len() as u64);
    for (name, (carriers, values)) in &labels {
        put_str(&mut out, name);
        put_carriers(&mut out, n, carriers);
        put_dict_column(&mut out, values.iter().copied());
    }

    let mut fields: BTreeMap<&str, (Vec<u32>, Vec<&Value>)> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        for (k, v) in &e.fields {
            let col = fields.entry(k.as_str()).or_default();
            col.0.push(i as u32);
            col.1.push(v);
        }
    }
    put_varint(&mut out, fields.len() as u64);
    for (name, (carriers, values)) in &fields {
        put_str(&mut out, name);
        put_carriers(&mut out, n, carriers);
        let mut strings = Dict::default();
        let mut body = Vec::new();
        for v in values {
            let tag = match v {
                Value::Null => NULL,
                Value::Bool(false) => FALSE,
                Value::Bool(true) => TRUE,
                Value::Number(x) => {
                    if let Some(u) = x.as_u64() {
                        put_varint(&mut body, u);
                        UINT
                    } else if let Some(i) = x.as_i64() {
                        put_varint(&mut body, zigzag(i));
                        INT
                    } else {
                        body.extend_from_slice(&x.as_f64().unwrap_or(0.0).to_le_bytes());
                        FLOAT
                    }
                }
                Value::String(s) => {
                    put_varint(&mut body, u64::from(strings.add(s)));
                    STR
                }
                Value::Array(_) | Value::Object(_) => {
                    let raw = rmp_serde::to_vec(v)?;
                    put_varint(&mut body, raw.len() as u64);
                    body.extend_from_slice(&raw);
                    NESTED
                }
            };
            out.push(tag);
        }
        strings.write(&mut out);
        out.extend_from_slice(&body);
    }
    Ok(out)
}

/// The ids of `events`, byte plane by byte plane.
pub fn encode_ids(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * events.len());
    for b in 0..16 {
        out.extend(events.iter().map(|e| e.id.as_bytes()[b]));
    }
    out
}

/// Id `i` of `n` in planes made by [`encode_ids`].
pub fn id_at(planes: &[u8], n: usize, i: usize) -> Result<uuid::Uuid, CodecError> {
    if planes.len() != 16 * n || i >= n {
        return Err(Reader::bad(&format!("{} bytes of ids for {n} events", planes.len())));
    }
    let mut b = [0u8; 16];
    for (p, byte) in b.iter_mut().enumerate() {
        *byte = planes[p * n + i];
    }
    Ok(uuid::Uuid::from_bytes(b))
}

/// Reads a columnar part, checking every length against what is left.
struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bad(what: &str) -> CodecError {
        CodecError::Frame(format!("columnar part: {what}"))
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self.raw.get(self.at).ok_or_else(|| Self::bad("ends early"))?;
        self.at += 1;
        Ok(b)
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(len).filter(|&e| e <= self.raw.len()).ok_or_else(|| Self::bad("ends early"))?;
        let s = &self.raw[self.at..end];
        self.at = end;
        Ok(s)
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, CodecError> {
        get_varint(self.raw, &mut self.at).ok_or_else(|| Self::bad("a varint that ends early or runs over 64 bits"))
    }

    /// A count of items each taking at least `min_bytes`: over what is left means damage.
    fn count(&mut self, min_bytes: usize) -> Result<usize, CodecError> {
        let c = self.varint()?;
        let left = (self.raw.len() - self.at) as u64;
        if c.saturating_mul(min_bytes as u64) > left {
            return Err(Self::bad("a count over what the part holds"));
        }
        Ok(c as usize)
    }

    fn str(&mut self) -> Result<&'a str, CodecError> {
        let len = self.count(1)?;
        std::str::from_utf8(self.bytes(len)?).map_err(|_| Self::bad("a string that is not UTF-8"))
    }

    fn dict(&mut self) -> Result<Vec<&'a str>, CodecError> {
        let k = self.count(1)?;
        let mut out = Vec::with_capacity(k);
        for _ in 0..k {
            out.push(self.str()?);
        }
        Ok(out)
    }

    /// One index into a dictionary of `size` entries per item.
    fn indexes(&mut self, items: usize, size: usize) -> Result<Vec<u32>, CodecError> {
        if size <= 1 {
            return if size == 1 || items == 0 { Ok(vec![0; items]) } else { Err(Self::bad("values without a dictionary")) };
        }
        let mut out = Vec::with_capacity(items);
        for _ in 0..items {
            let i = self.varint()?;
            if i >= size as u64 {
                return Err(Self::bad("a dictionary index out of range"));
            }
            out.push(i as u32);
        }
        Ok(out)
    }

    fn carriers(&mut self, n: usize) -> Result<Vec<u32>, CodecError> {
        let c = self.varint()?;
        if c > n as u64 {
            return Err(Self::bad("more carriers than events"));
        }
        let c = c as usize;
        if c == n {
            return Ok((0..n as u32).collect());
        }
        let mut out = Vec::with_capacity(c);
        let mut next = 0u64;
        for _ in 0..c {
            let at = next.checked_add(self.varint()?).filter(|&a| a < n as u64).ok_or_else(|| Self::bad("a carrier past the events"))?;
            out.push(at as u32);
            next = at + 1;
        }
        Ok(out)
    }
}

/// A dictionary-coded column: the dictionary and one index per item.
struct DictColumn<'a> {
    dict: Vec<&'a str>,
    idx: Vec<u32>,
}

impl<'a> DictColumn<'a> {
    fn read(r: &mut Reader<'a>, items: usize) -> Result<Self, CodecError> {
        let dict = r.dict()?;
        let idx = r.indexes(items, dict.len())?;
        Ok(Self { dict, idx })
    }

    fn get(&self, i: usize) -> &'a str {
        self.dict[self.idx[i] as usize]
    }
}

/// A field's value as stored: borrowed from the part.
#[derive(Clone, Copy)]
enum Stored<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    Nested(&'a [u8]),
}

struct LabelColumn<'a> {
    name: &'a str,
    carriers: Vec<u32>,
    values: DictColumn<'a>,
}

struct FieldColumn<'a> {
    name: &'a str,
    carriers: Vec<u32>,
    values: Vec<Stored<'a>>,
}

/// A columnar part, read: every column, borrowed from the bytes.
pub struct Columns<'a> {
    n: usize,
    ts: Vec<i64>,
    stream: DictColumn<'a>,
    level: DictColumn<'a>,
    labels: Vec<LabelColumn<'a>>,
    fields: Vec<FieldColumn<'a>>,
}

/// Whether `raw` (a decompressed frame part) is in the columnar form.
pub fn is_columnar(raw: &[u8]) -> bool {
    raw.first() == Some(&MAGIC)
}

impl<'a> Columns<'a> {
    pub fn read(raw: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader { raw, at: 0 };
        if r.byte()? != MAGIC {
            return Err(Reader::bad("not a columnar part"));
        }
        let version = r.byte()?;
        if version != VERSION {
            return Err(Reader::bad(&format!("version {version}, this build reads {VERSION}")));
        }
        let n = r.count(1)?;
        if n > MAX_EVENTS {
            return Err(Reader::bad("over the events a part may hold"));
        }
        let mut ts = Vec::with_capacity(n);
        let mut prev = 0i64;
        for _ in 0..n {
            prev = prev.wrapping_add(unzigzag(r.varint()?));
            ts.push(prev);
        }
        let stream = DictColumn::read(&mut r, n)?;
        let level = DictColumn::read(&mut r, n)?;
        let mut labels = Vec::with_capacity(r.count(2)?);
        for _ in 0..labels.capacity() {
            let name = r.str()?;
            let carriers = r.carriers(n)?;
            let values = DictColumn::read(&mut r, carriers.len())?;
            labels.push(LabelColumn { name, carriers, values });
        }
        let mut fields = Vec::with_capacity(r.count(2)?);
        for _ in 0..fields.capacity() {
            let name = r.str()?;
            let carriers = r.carriers(n)?;
            let tags = r.bytes(carriers.len())?;
            let strings = r.dict()?;
            let mut values = Vec::with_capacity(tags.len());
            for &t in tags {
                values.push(match t {
                    NULL => Stored::Null,
                    FALSE => Stored::Bool(false),
                    TRUE => Stored::Bool(true),
                    INT => Stored::Int(unzigzag(r.varint()?)),
                    UINT => Stored::UInt(r.varint()?),
                    FLOAT => Stored::Float(f64::from_le_bytes(r.bytes(8)?.try_into().expect("8 bytes"))),
                    STR => {
                        let i = r.varint()?;
                        Stored::Str(strings.get(i as usize).copied().ok_or_else(|| Reader::bad("a dictionary index out of range"))?)
                    }
                    NESTED => {
                        let len = r.count(1)?;
                        Stored::Nested(r.bytes(len)?)
                    }
                    other => return Err(Reader::bad(&format!("field type tag {other}"))),
                });
            }
            fields.push(FieldColumn { name, carriers, values });
        }
        if r.at != raw.len() {
            return Err(Reader::bad("bytes after the last column"));
        }
        Ok(Self { n, ts, stream, level, labels, fields })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Event `i` with an empty message and a nil id (the ids are kept apart).
    pub fn event(&self, i: usize) -> Result<Event, CodecError> {
        let mut e = Event {
            id: uuid::Uuid::nil(),
            ts: self.ts[i],
            stream: self.stream.get(i).to_string(),
            level: self.level.get(i).to_string(),
            message: String::new(),
            labels: BTreeMap::new(),
            fields: Map::new(),
        };
        for c in &self.labels {
            if let Ok(k) = c.carriers.binary_search(&(i as u32)) {
                e.labels.insert(c.name.to_string(), c.values.get(k).to_string());
            }
        }
        for c in &self.fields {
            if let Ok(k) = c.carriers.binary_search(&(i as u32)) {
                let v = match c.values[k] {
                    Stored::Null => Value::Null,
                    Stored::Bool(b) => Value::Bool(b),
                    Stored::Int(x) => Value::from(x),
                    Stored::UInt(x) => Value::from(x),
                    Stored::Float(x) => Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null),
                    Stored::Str(s) => Value::String(s.to_string()),
                    Stored::Nested(raw) => rmp_serde::from_slice(raw)?,
                };
                e.fields.insert(c.name.to_string(), v);
            }
        }
        Ok(e)
    }

    /// Calls `f` with the events at `positions` (ascending; `None`: every event) as
    /// [`LiteEvent`]s.
    pub fn for_each_lite(&self, positions: Option<&[u32]>, f: &mut dyn FnMut(u32, &LiteEvent<'_>)) {
        let mut e = LiteEvent::default();
        // One cursor per label and field column: positions only move forward.
        let mut label_at = vec![0usize; self.labels.len()];
        let mut field_at = vec![0usize; self.fields.len()];
        let all: Vec<u32>;
        let positions = match positions {
            Some(p) => p,
            None => {
                all = (0..self.n as u32).collect();
                &all
            }
        };
        for &i in positions {
            if i as usize >= self.n {
                break;
            }
            e.ts = self.ts[i as usize];
            e.stream = self.stream.get(i as usize);
            e.level = self.level.get(i as usize);
            e.labels.clear();
            for (c, at) in self.labels.iter().zip(label_at.iter_mut()) {
                while *at < c.carriers.len() && c.carriers[*at] < i {
                    *at += 1;
                }
                if c.carriers.get(*at) == Some(&i) {
                    e.labels.push((c.name, c.values.get(*at)));
                }
            }
            e.fields.clear();
            for (c, at) in self.fields.iter().zip(field_at.iter_mut()) {
                while *at < c.carriers.len() && c.carriers[*at] < i {
                    *at += 1;
                }
                if c.carriers.get(*at) == Some(&i) {
                    e.fields.push((
                        c.name,
                        match c.values[*at] {
                            Stored::Null => LiteValue::Null,
                            Stored::Bool(b) => LiteValue::Bool(b),
                            Stored::Int(x) => LiteValue::Int(x),
                            Stored::UInt(x) => LiteValue::UInt(x),
                            Stored::Float(x) => LiteValue::Float(x),
                            Stored::Str(s) => LiteValue::Str(s),
                            Stored::Nested(_) => LiteValue::Nested,
                        },
                    ));
                }
            }
            f(i, &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{decode_events, decode_events_at, encode_events, encode_events_rows, for_each_lite};
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c.]{0,3}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn message() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "\\PC{0,40}",
            1 => Just(String::new()),
            1 => ("[a-z ]{1,8}", 1usize..40_000).prop_map(|(s, n)| s.repeat(n)),
        ]
    }

    prop_compose! {
        fn event()(
            id in any::<u128>(),
            ts in any::<i64>(),
            stream in prop_oneof![Just("a".to_string()), Just("loghub.hdfs".to_string()), "\\PC{0,6}"],
            level in prop_oneof![Just(String::new()), Just("info".to_string()), "[a-z]{0,5}"],
            message in message(),
            labels in proptest::collection::btree_map("[a-d]{0,2}|ü|\u{1F600}", "\\PC{0,6}", 0..4),
            // Few names, so one field takes different types across events.
            fields in proptest::collection::btree_map("[a-d]{0,2}|é", value(), 0..4),
        ) -> Event {
            Event { id: uuid::Uuid::from_u128(id), ts, stream, level, message, labels, fields: fields.into_iter().collect() }
        }
    }

    fn lite_lines(frame: &[u8], positions: Option<&[u32]>) -> Vec<String> {
        let mut out = Vec::new();
        for_each_lite(frame, positions, &mut |i, e| out.push(format!("{i} {e:?}"))).unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn columnar_frames_round_trip_every_value_shape(
            events in proptest::collection::vec(event(), 0..40),
            pick in proptest::collection::btree_set(0u32..45, 0..8),
        ) {
            let frame = encode_events(&events, 3).unwrap();
            prop_assert_eq!(&decode_events(&frame).unwrap(), &events);
            let wanted: Vec<u32> = pick.into_iter().collect();
            let want: Vec<(u32, Event)> =
                wanted.iter().filter(|&&i| (i as usize) < events.len()).map(|&i| (i, events[i as usize].clone())).collect();
            prop_assert_eq!(decode_events_at(&frame, &wanted).unwrap(), want);

            // A frame in the row form, as stores held before, reads the same.
            let rows = encode_events_rows(&events, 3).unwrap();
            prop_assert_eq!(&decode_events(&rows).unwrap(), &events);
            for positions in [None, Some(wanted.as_slice())] {
                prop_assert_eq!(lite_lines(&frame, positions), lite_lines(&rows, positions));
            }
        }

        #[test]
        fn damaged_columnar_parts_fail_cleanly(events in proptest::collection::vec(event(), 1..10), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
            let raw = encode(&events).unwrap();
            let at = cut.index(raw.len());
            let _ = Columns::read(&raw[..at]).map(|c| c.len());
            let mut bad = raw.clone();
            bad[at] ^= flip.max(1);
            if let Ok(c) = Columns::read(&bad) {
                for i in 0..c.len() {
                    let _ = c.event(i);
                }
                c.for_each_lite(None, &mut |_, _| {});
            }
        }
    }

    #[test]
    fn a_frame_whose_ids_flag_is_lost_is_refused() {
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                id: uuid::Uuid::from_u128(i + 1),
                ts: i as i64,
                stream: "s".into(),
                level: "info".into(),
                message: format!("m{i}"),
                labels: BTreeMap::new(),
                fields: Map::new(),
            })
            .collect();
        let mut frame = encode_events(&events, 3).unwrap();
        frame[3] &= 0x7f;
        assert!(decode_events(&frame).is_err());
        assert!(decode_events_at(&frame, &[0]).is_err());
    }

    #[test]
    fn one_field_of_many_names_costs_what_its_values_cost() {
        // 100 events with a name of their own each: no column of 100 absences per name.
        let events: Vec<Event> = (0..100)
            .map(|i| {
                let mut e = Event {
                    id: uuid::Uuid::from_u128(i),
                    ts: i as i64,
                    stream: "s".into(),
                    level: "info".into(),
                    message: String::new(),
                    labels: BTreeMap::new(),
                    fields: Map::new(),
                };
                e.fields.insert(format!("name{i}"), Value::from(i as u64));
                e
            })
            .collect();
        let raw = encode(&events).unwrap();
        // A dense column per name would take over 100 bytes each.
        assert!(raw.len() < 100 * 40, "{} bytes", raw.len());
        assert_eq!(decode_events(&encode_events(&events, 3).unwrap()).unwrap(), events);
    }
}
