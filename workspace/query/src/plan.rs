//! Which events of a shard a query must read, from the shard's index: per block, the
//! positions that match for certain, the positions that may match (checked against the
//! expression), or the whole block (not indexed yet, rewritten since it was indexed, or
//! a query the index cannot narrow). Answers are the same as a full scan's; the index
//! only decides how little is read.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gossamer_index::{self as index, Segment, ShardIndex};
use gossamer_schemas::Event;
use gossamer_storage::{BlockMeta, ShardStore};

use crate::ast::{glob_match, Expr, Matcher, Term, ValueOp};
use crate::timerange::TimeRange;
use crate::QueryError;

impl From<index::IndexError> for QueryError {
    fn from(e: index::IndexError) -> Self {
        match e {
            index::IndexError::Storage(s) => QueryError::Storage(s),
            other => QueryError::Index(other.to_string()),
        }
    }
}

/// The documents of one segment a (sub)expression selects.
#[derive(Debug, Clone)]
enum Docs {
    /// Every document.
    Full,
    /// These, ascending.
    List(Vec<u64>),
}

/// `exact`: the documents are exactly the matches; otherwise they hold every match and
/// perhaps more.
#[derive(Debug, Clone)]
struct Hits {
    docs: Docs,
    exact: bool,
}

impl Hits {
    fn exact(docs: Vec<u64>) -> Self {
        Hits { docs: Docs::List(docs), exact: true }
    }
    const ALL: Hits = Hits { docs: Docs::Full, exact: true };
    const UNKNOWN: Hits = Hits { docs: Docs::Full, exact: false };
}

/// How a block is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// These positions match; only the time range is left to check.
    Exact(Vec<u32>),
    /// Only these positions can match; check each.
    Check(Vec<u32>),
    /// Check every event.
    Scan,
}

/// One block to read and how.
#[derive(Debug, Clone)]
pub struct BlockWork {
    pub id: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub count: u32,
    pub pick: Pick,
}

impl BlockWork {
    fn inside(&self, range: TimeRange) -> bool {
        self.min_ts >= range.from && self.max_ts < range.to
    }
}

/// A shard's plan: what its index says, and the blocks it cannot speak for.
pub struct ShardPlan {
    index: ShardIndex,
    /// The index generation every postings read of this plan was made under.
    generation: u64,
    /// Every segment of the index generation read, and what the query selects of those
    /// it reads (by position in that list).
    all: std::sync::Arc<Vec<Segment>>,
    segments: Vec<(usize, Hits)>,
    dirty: BTreeSet<u64>,
    scan: Vec<BlockMeta>,
}

fn overlaps(min_ts: i64, max_ts: i64, range: TimeRange) -> bool {
    max_ts >= range.from && min_ts < range.to
}

impl ShardPlan {
    pub fn new(store: &ShardStore, expr: &Expr, range: TimeRange) -> Result<Self, QueryError> {
        // A merge or rebuild that commits while postings are read replaces the segments
        // the view names: plan again until every read was of one generation.
        let index = ShardIndex::new(store.clone());
        loop {
            let before = index.generation()?;
            match Self::once(store, expr, range) {
                Ok(plan) if plan.index.generation()? == plan.generation => return Ok(plan),
                Ok(_) => {}
                // A list half replaced under the read looks damaged: read again.
                Err(QueryError::Index(_)) if index.generation()? != before => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// True while the index is still the one this plan read (see [`ShardPlan::count_by`]).
    pub fn current(&self) -> Result<bool, QueryError> {
        Ok(self.index.generation()? == self.generation)
    }

    fn once(store: &ShardStore, expr: &Expr, range: TimeRange) -> Result<Self, QueryError> {
        let index = ShardIndex::new(store.clone());
        let view = index.view()?;
        let generation = view.generation;
        let mut scan: Vec<BlockMeta> = store.blocks_between(view.indexed + 1, u64::MAX)?;
        for &id in view.dirty.iter().filter(|&&id| id <= view.indexed) {
            if let Some(meta) = store.block_header(id)? {
                scan.push(meta);
            }
        }
        scan.retain(|m| overlaps(m.min_ts, m.max_ts, range));
        let mut segments = Vec::new();
        for (i, seg) in view.segments.iter().enumerate() {
            if !seg.blocks.iter().any(|b| overlaps(b.min_ts, b.max_ts, range)) {
                continue;
            }
            let hits = Eval { index: &index, seg, cache: HashMap::new() }.expr(expr)?;
            segments.push((i, hits));
        }
        Ok(Self { index, generation, all: view.segments, segments, dirty: view.dirty, scan })
    }

    /// Every block to read, with what to read of it.
    pub fn blocks(&self, range: TimeRange) -> Vec<BlockWork> {
        let mut out = self.scanned();
        for (seg, hits) in self.segments.iter().map(|(i, h)| (&self.all[*i], h)) {
            out.extend(self.segment_blocks(seg, hits, range));
        }
        out
    }

    /// The blocks the index cannot speak for, to scan whole.
    fn scanned(&self) -> Vec<BlockWork> {
        self.scan
            .iter()
            .map(|m| BlockWork { id: m.seq, min_ts: m.min_ts, max_ts: m.max_ts, count: m.count, pick: Pick::Scan })
            .collect()
    }

    /// The blocks of one segment to read (its rewritten blocks are in `scan`).
    fn segment_blocks(&self, seg: &Segment, hits: &Hits, range: TimeRange) -> Vec<BlockWork> {
        let mut out = Vec::new();
        {
            let mut per_block: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
            let whole = match &hits.docs {
                Docs::Full => true,
                Docs::List(docs) => {
                    for &d in docs {
                        per_block.entry(index::doc_block(d)).or_default().push(index::doc_pos(d));
                    }
                    false
                }
            };
            for (i, b) in seg.blocks.iter().enumerate() {
                if self.dirty.contains(&b.id) || !overlaps(b.min_ts, b.max_ts, range) {
                    continue;
                }
                let pick = match (whole, hits.exact) {
                    (true, true) => Pick::Exact((0..b.count).collect()),
                    (true, false) => Pick::Scan,
                    (false, exact) => match per_block.remove(&i) {
                        None => continue,
                        Some(pos) if exact => Pick::Exact(pos),
                        Some(pos) => Pick::Check(pos),
                    },
                };
                out.push(BlockWork { id: b.id, min_ts: b.min_ts, max_ts: b.max_ts, count: b.count, pick });
            }
        }
        out
    }

    /// Counts of the matches by stream or level, from postings alone, for the segments
    /// where that is exact (every block inside the range); the blocks left over are
    /// returned to be read.
    pub fn count_by(&self, facet: Facet, range: TimeRange) -> Result<(BTreeMap<String, u64>, Vec<BlockWork>), QueryError> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut rest = self.scanned();
        for (seg, hits) in self.segments.iter().map(|(i, h)| (&self.all[*i], h)) {
            // Rewritten blocks are in `scan` already.
            let usable = hits.exact
                && seg.blocks.iter().all(|b| self.dirty.contains(&b.id) || (b.min_ts >= range.from && b.max_ts < range.to));
            if !usable {
                rest.extend(self.segment_blocks(seg, hits, range));
                continue;
            }
            let dirty: BTreeSet<usize> = seg.blocks.iter().enumerate().filter(|(_, b)| self.dirty.contains(&b.id)).map(|(i, _)| i).collect();
            let values = match facet {
                Facet::Stream => &seg.streams,
                Facet::Level => &seg.levels,
            };
            for v in values {
                let term = match facet {
                    Facet::Stream => index::stream_term(v),
                    Facet::Level => index::level_term(v),
                };
                let n = match &hits.docs {
                    Docs::Full if dirty.is_empty() => self.index.posting_count(seg, &term)? as usize,
                    Docs::Full => {
                        self.index.postings(seg, &term)?.iter().filter(|&&d| !dirty.contains(&index::doc_block(d))).count()
                    }
                    Docs::List(hit) => intersect(&self.index.postings(seg, &term)?, hit)
                        .iter()
                        .filter(|&&d| !dirty.contains(&index::doc_block(d)))
                        .count(),
                };
                if n > 0 {
                    *counts.entry(v.clone()).or_default() += n as u64;
                }
            }
        }
        Ok((counts, rest))
    }
}

/// A dimension `count_by` answers from postings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facet {
    Stream,
    Level,
}

/// Calls `f` with every event of block `w` that matches `expr` in `range`.
pub fn read_matches(store: &ShardStore, w: &BlockWork, expr: &Expr, range: TimeRange, mut f: impl FnMut(Event)) -> Result<(), QueryError> {
    let inside = w.inside(range);
    match &w.pick {
        Pick::Exact(pos) => {
            for (_, e) in store.read_block_at(w.id, pos)? {
                if inside || range.contains(e.ts) {
                    f(e);
                }
            }
        }
        Pick::Check(pos) => {
            for (_, e) in store.read_block_at(w.id, pos)? {
                if range.contains(e.ts) && expr.eval(&mut Matcher::new(&e)) {
                    f(e);
                }
            }
        }
        Pick::Scan => {
            for e in store.read_block(w.id)? {
                if range.contains(e.ts) && expr.eval(&mut Matcher::new(&e)) {
                    f(e);
                }
            }
        }
    }
    Ok(())
}

/// How many events of block `w` match, reading it only when needed.
pub fn count_matches(store: &ShardStore, w: &BlockWork, expr: &Expr, range: TimeRange) -> Result<u64, QueryError> {
    if let Pick::Exact(pos) = &w.pick {
        if w.inside(range) {
            return Ok(pos.len() as u64);
        }
    }
    let mut n = 0;
    read_matches(store, w, expr, range, |_| n += 1)?;
    Ok(n)
}

struct Eval<'a> {
    index: &'a ShardIndex,
    seg: &'a Segment,
    cache: HashMap<Vec<u8>, Vec<u64>>,
}

impl Eval<'_> {
    fn postings(&mut self, term: Vec<u8>) -> Result<Vec<u64>, QueryError> {
        if let Some(d) = self.cache.get(&term) {
            return Ok(d.clone());
        }
        let d = self.index.postings(self.seg, &term)?;
        self.cache.insert(term, d.clone());
        Ok(d)
    }

    fn union_of(&mut self, terms: Vec<Vec<u8>>) -> Result<Vec<u64>, QueryError> {
        let mut out = Vec::new();
        for t in terms {
            out = union(&out, &self.postings(t)?);
        }
        Ok(out)
    }

    fn expr(&mut self, e: &Expr) -> Result<Hits, QueryError> {
        Ok(match e {
            Expr::All => Hits::ALL,
            Expr::And(xs) => {
                let mut acc = Hits::ALL;
                for x in xs {
                    let h = self.expr(x)?;
                    acc = Hits { exact: acc.exact && h.exact, docs: and(acc.docs, h.docs) };
                    if matches!(&acc.docs, Docs::List(l) if l.is_empty()) {
                        // Nothing can match, whatever the rest says.
                        return Ok(Hits::exact(Vec::new()));
                    }
                }
                acc
            }
            Expr::Or(xs) => {
                let mut acc = Hits::exact(Vec::new());
                for x in xs {
                    let h = self.expr(x)?;
                    acc = Hits {
                        exact: acc.exact && h.exact,
                        docs: match (acc.docs, h.docs) {
                            (Docs::Full, _) | (_, Docs::Full) => Docs::Full,
                            (Docs::List(a), Docs::List(b)) => Docs::List(union(&a, &b)),
                        },
                    };
                }
                acc
            }
            Expr::Not(x) => {
                let h = self.expr(x)?;
                if !h.exact {
                    return Ok(Hits::UNKNOWN);
                }
                match h.docs {
                    Docs::Full => Hits::exact(Vec::new()),
                    Docs::List(l) => Hits::exact(difference(&self.seg.all_docs(), &l)),
                }
            }
            Expr::Term(t) => self.term(t)?,
        })
    }

    fn term(&mut self, t: &Term) -> Result<Hits, QueryError> {
        Ok(match t {
            Term::Word(w) => match index::word_term(w) {
                Some(term) => Hits::exact(self.postings(term)?),
                None => Hits::UNKNOWN,
            },
            Term::Phrase(ws) => match ws.len() {
                0 => Hits::exact(Vec::new()),
                1 => return self.term(&Term::Word(ws[0].clone())),
                n => {
                    // Every indexed pair, and the words of the pairs that are not.
                    let mut exact = n == 2;
                    let mut acc: Option<Vec<u64>> = None;
                    for pair in ws.windows(2) {
                        let terms = match index::bigram_term(&pair[0], &pair[1]) {
                            Some(t) => vec![t],
                            None => {
                                exact = false;
                                let words: Option<Vec<Vec<u8>>> = pair.iter().map(|w| index::word_term(w)).collect();
                                let Some(words) = words else { return Ok(Hits::UNKNOWN) };
                                words
                            }
                        };
                        for term in terms {
                            let d = self.postings(term)?;
                            acc = Some(match acc {
                                None => d,
                                Some(a) => intersect(&a, &d),
                            });
                        }
                    }
                    Hits { docs: Docs::List(acc.unwrap_or_default()), exact }
                }
            },
            Term::Stream(glob) if !glob.contains('*') => Hits::exact(self.postings(index::stream_term(glob))?),
            Term::Stream(glob) => {
                let names: Vec<Vec<u8>> =
                    self.seg.streams.iter().filter(|s| glob_match(glob, s)).map(|s| index::stream_term(s)).collect();
                Hits::exact(self.union_of(names)?)
            }
            Term::Level(l) => Hits::exact(self.postings(index::level_term(l))?),
            Term::Field { key, op: ValueOp::Eq(v) } => {
                if let Some(k) = key.strip_prefix("labels.") {
                    Hits::exact(self.postings(index::label_term(k, v))?)
                } else if let Some(k) = key.strip_prefix("fields.") {
                    // A dotted name may be one key or a path: check the candidates.
                    Hits { docs: Docs::List(self.union_of(index::field_terms_for(k, v))?), exact: false }
                } else {
                    let mut terms = index::field_terms_for(key, v);
                    terms.push(index::label_term(key, v));
                    Hits { docs: Docs::List(self.union_of(terms)?), exact: false }
                }
            }
            Term::Prefix(_) | Term::Id(_) | Term::Field { .. } | Term::Exists(_) => Hits::UNKNOWN,
        })
    }
}

fn and(a: Docs, b: Docs) -> Docs {
    match (a, b) {
        (Docs::Full, x) | (x, Docs::Full) => x,
        (Docs::List(a), Docs::List(b)) => Docs::List(intersect(&a, &b)),
    }
}

fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    let mut j = 0;
    for &x in small {
        // Galloping: steps that double until past `x`, then a binary search in the
        // last step, so a rare term costs little against a common one.
        let mut step = 1;
        while j + step < large.len() && large[j + step] < x {
            j += step;
            step *= 2;
        }
        let end = (j + step + 1).min(large.len());
        j += large[j..end].partition_point(|&y| y < x);
        if j == large.len() {
            break;
        }
        if large[j] == x {
            out.push(x);
        }
    }
    out
}

fn union(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn difference(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j >= b.len() || b[j] != x {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::ControlFlow;

    use gossamer_schemas::api::Order;
    use gossamer_schemas::ShardCommand;
    use gossamer_storage::Store;
    use uuid::Uuid;

    use super::*;
    use crate::agg::{aggregate, AggFn, AggSpec};
    use crate::exec::{count, search, Cursor, SearchParams};
    use crate::parse;

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    const WORDS: [&str; 8] = ["alpha", "beta", "gamma", "delta", "Reset", "peer", "x1", "42"];
    const QUERIES: [&str; 27] = [
        "\"peer 42\"",
        "\"42 alpha beta\"",
        "42",
        "",
        "alpha",
        "alpha beta",
        "\"alpha beta\"",
        "\"alpha beta gamma\"",
        "alpha OR delta",
        "NOT alpha",
        "stream:s1",
        "stream:s*",
        "level:error",
        "app:a1",
        "labels.app:a2",
        "labels.app:updated",
        "fields.n:2",
        "n:3",
        "fields.o.k:v1",
        "alp*",
        "n:>1",
        "level:error NOT (beta OR gamma)",
        "\"reset peer\" stream:s0",
        "x1 OR NOT level:info",
        "stream:s2 delta",
        "-level:* alpha",
        "level:* stream:s1",
    ];

    fn event(rng: &mut Rng, n: u128) -> Event {
        let words: Vec<&str> = (0..1 + rng.below(5)).map(|_| WORDS[rng.below(8) as usize]).collect();
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), format!("a{}", rng.below(3)));
        let mut fields = serde_json::Map::new();
        fields.insert("n".into(), serde_json::json!(rng.below(4)));
        fields.insert("o".into(), serde_json::json!({ "k": format!("v{}", rng.below(2)) }));
        Event {
            id: Uuid::from_u128(n),
            ts: rng.below(5_000) as i64,
            stream: format!("s{}", rng.below(3)),
            level: ["info", "error", "warn", ""][rng.below(4) as usize].into(),
            message: words.join(" "),
            labels,
            fields,
        }
    }

    /// The answer by reading every block: what the index must reproduce.
    fn scan(shards: &[ShardStore], expr: &Expr, range: TimeRange) -> Vec<Event> {
        let mut out = Vec::new();
        for s in shards {
            s.for_each_block(i64::MIN, i64::MAX, false, |_, decode| {
                out.extend(decode().unwrap().into_iter().filter(|e| range.contains(e.ts) && expr.matches(e)));
                ControlFlow::Continue(())
            })
            .unwrap();
        }
        out.sort_by_key(|e| std::cmp::Reverse((e.ts, e.id)));
        out
    }

    fn every_page(shards: &[ShardStore], expr: &Expr, range: TimeRange) -> Vec<Event> {
        let mut p = SearchParams { expr: expr.clone(), range, order: Order::Desc, limit: 37, cursor: None };
        let mut got = Vec::new();
        loop {
            let page = search(shards, &p).unwrap();
            got.extend(page.events);
            match page.next_cursor {
                Some(c) => p.cursor = Some(Cursor::decode(&c).unwrap()),
                None => return got,
            }
        }
    }

    fn check_all(shards: &[ShardStore], when: &str) {
        let by_level = AggSpec::parse("count", None, Some("level"), None).unwrap();
        for q in QUERIES {
            let expr = parse(q).unwrap();
            for range in [TimeRange::default(), TimeRange { from: 1000, to: 3000 }] {
                let want = scan(shards, &expr, range);
                let ids = |v: &[Event]| v.iter().map(|e| (e.ts, e.id)).collect::<Vec<_>>();
                assert_eq!(ids(&every_page(shards, &expr, range)), ids(&want), "search {q:?} {range:?} {when}");
                assert_eq!(count(shards, &expr, range).unwrap(), want.len() as u64, "count {q:?} {range:?} {when}");
                let mut levels: BTreeMap<Option<String>, u64> = BTreeMap::new();
                for e in &want {
                    *levels.entry(Some(e.level.clone()).filter(|l| !l.is_empty())).or_default() += 1;
                }
                let got: BTreeMap<Option<String>, u64> = aggregate(shards, &expr, range, &by_level)
                    .unwrap()
                    .finish(&by_level)
                    .iter()
                    .map(|g| (g["key"]["level"].as_str().map(String::from), g["value"].as_u64().unwrap()))
                    .collect();
                assert_eq!(got, levels, "count by level {q:?} {range:?} {when}");
                // Other aggregations (read through lite events where they can be) equal
                // the same aggregation of the scanned events.
                let specs = [
                    AggSpec { func: AggFn::Sum, field: Some("n".into()), by: vec!["app".into(), "stream".into()], bucket_ns: Some(1000), bucket_offset_ns: 0, max_groups: 1000 },
                    AggSpec { func: AggFn::Quantile(0.9), field: Some("n".into()), by: vec!["n".into()], bucket_ns: None, bucket_offset_ns: 0, max_groups: 1000 },
                    AggSpec { func: AggFn::Count, field: None, by: vec!["o".into()], bucket_ns: None, bucket_offset_ns: 0, max_groups: 1000 },
                    AggSpec { func: AggFn::Max, field: Some("n".into()), by: vec!["o.k".into()], bucket_ns: None, bucket_offset_ns: 0, max_groups: 1000 },
                ];
                for spec in &specs {
                    let mut scanned = crate::agg::Aggregation::default();
                    for e in &want {
                        scanned.add(spec, e).unwrap();
                    }
                    let got = aggregate(shards, &expr, range, spec).unwrap().finish(spec);
                    assert_eq!(got, scanned.finish(spec), "{spec:?} of {q:?} {range:?} {when}");
                }
            }
        }
    }

    #[test]
    fn answers_equal_a_full_scan_however_far_the_index_lags() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let shards: Vec<ShardStore> = (0..3).map(|i| store.shard(i).unwrap()).collect();
        let indexes: Vec<ShardIndex> = shards.iter().map(|s| ShardIndex::new(s.clone())).collect();
        let mut rng = Rng(0x2545f4914f6cdd1d);
        let mut ids: Vec<(usize, Uuid)> = Vec::new();
        let mut next = 0u128;
        for round in 1..=60u64 {
            let s = rng.below(3) as usize;
            let cmd = match rng.below(8) {
                0 if !ids.is_empty() => {
                    let (s2, id) = ids.remove(rng.below(ids.len() as u64) as usize);
                    shards[s2].apply(vec![(shards[s2].applied_seq().unwrap() + 1, ShardCommand::Delete { ids: vec![id] })]).unwrap();
                    continue;
                }
                1 if !ids.is_empty() => {
                    let (s2, id) = ids[rng.below(ids.len() as u64) as usize];
                    let labels = [("app".to_string(), Some("updated".to_string()))].into();
                    let cmd = ShardCommand::Update { id, labels, fields: Default::default() };
                    shards[s2].apply(vec![(shards[s2].applied_seq().unwrap() + 1, cmd)]).unwrap();
                    continue;
                }
                2 => ShardCommand::DeleteWhere { q: "delta".into(), from: rng.below(5000) as i64, to: 5000 },
                _ => {
                    let events: Vec<Event> = (0..1 + rng.below(200))
                        .map(|_| {
                            next += 1;
                            event(&mut rng, next)
                        })
                        .collect();
                    ids.extend(events.iter().map(|e| (s, e.id)));
                    ShardCommand::Insert { events }
                }
            };
            let seq = shards[s].applied_seq().unwrap() + 1;
            let compile = |q: &str| -> Option<gossamer_storage::Predicate> {
                let e = parse(q).ok()?;
                Some(Box::new(move |ev: &Event| e.matches(ev)))
            };
            shards[s].apply_with(vec![(seq, cmd)], &compile).unwrap();
            for ix in &indexes {
                for _ in 0..rng.below(3) {
                    ix.step(1 + rng.below(400)).unwrap();
                }
            }
            if round % 20 == 0 {
                check_all(&shards, &format!("at round {round}, index lagging"));
            }
        }
        for ix in &indexes {
            while ix.step(1 << 20).unwrap().did_work() {}
            assert_eq!(ix.lag().unwrap().events, 0);
        }
        check_all(&shards, "with the index caught up");
    }
    /// Intersections of sorted lists of every proportion, the empty ones among them,
    /// are the documents in both.
    #[test]
    fn intersections_of_lists_of_any_sizes_hold_the_documents_in_both() {
        let mut rng = Rng(0x2545f4914f6cdd1d);
        for round in 0..2000 {
            let list = |rng: &mut Rng, n: u64, spread: u64| -> Vec<u64> {
                let mut v: Vec<u64> = (0..n).map(|_| rng.below(spread)).collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let spread = 1 + rng.below(5000);
            let (na, nb) = (rng.below(if round % 2 == 0 { 8 } else { 3000 }), rng.below(3000));
            let (a, b) = (list(&mut rng, na, spread), list(&mut rng, nb, spread));
            let want: Vec<u64> = a.iter().copied().filter(|x| b.binary_search(x).is_ok()).collect();
            assert_eq!(intersect(&a, &b), want, "round {round}");
            assert_eq!(intersect(&b, &a), want, "round {round}");
        }
    }
}

#[cfg(test)]
mod race {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use gossamer_schemas::ShardCommand;
    use gossamer_storage::Store;
    use uuid::Uuid;

    use super::*;
    use crate::exec::count;
    use crate::parse;

    /// Counts taken while the index builds, merges and catches up are always the full
    /// answer: a plan never mixes postings of segments before and after a merge.
    #[test]
    fn counts_stay_whole_while_the_index_merges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let shards: Vec<ShardStore> = (0..2).map(|i| store.shard(i).unwrap()).collect();
        let mut n = 0u128;
        for seq in 1..=300u64 {
            for s in &shards {
                let events: Vec<Event> = (0..50)
                    .map(|i| {
                        n += 1;
                        Event {
                            id: Uuid::from_u128(n),
                            ts: n as i64,
                            stream: format!("s{}", i % 3),
                            level: "info".into(),
                            message: if i % 5 == 0 { "alpha beta".into() } else { "gamma".into() },
                            labels: Default::default(),
                            fields: Default::default(),
                        }
                    })
                    .collect();
                s.apply(vec![(seq, ShardCommand::Insert { events })]).unwrap();
            }
        }
        let total = n as u64;
        let queries = [("alpha", total / 5), ("stream:s*", total), ("\"alpha beta\" OR gamma", total)];
        let done = Arc::new(AtomicBool::new(false));
        let indexer = {
            let shards = shards.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let indexes: Vec<ShardIndex> = shards.into_iter().map(ShardIndex::new).collect();
                // Small steps: many segments, many merges.
                loop {
                    let mut worked = false;
                    for ix in &indexes {
                        worked |= ix.step(100).unwrap().did_work();
                    }
                    if !worked {
                        break;
                    }
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let mut checked = 0;
        while !done.load(Ordering::SeqCst) || checked == 0 {
            for (q, want) in queries {
                assert_eq!(count(&shards, &parse(q).unwrap(), TimeRange::default()).unwrap(), want, "{q} after {checked} checks");
            }
            let spec = crate::agg::AggSpec::parse("count", None, Some("stream"), None).unwrap();
            let groups = crate::agg::aggregate(&shards, &Expr::All, TimeRange::default(), &spec).unwrap().finish(&spec);
            let sum: u64 = groups.iter().map(|g| g["value"].as_u64().unwrap()).sum();
            assert_eq!(sum, total, "count by stream after {checked} checks");
            checked += 1;
        }
        indexer.join().unwrap();
    }

}
