//! Running a parsed query over shard stores: newest- or oldest-first search with a
//! cursor, counts, and get by id.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use gossamer_schemas::api::Order;
use gossamer_schemas::Event;
use gossamer_storage::ShardStore;
use uuid::Uuid;

use crate::ast::Expr;
use crate::plan::{count_matches, read_matches, BlockWork, ShardPlan};
use crate::timerange::TimeRange;
use crate::QueryError;

/// Largest page a search returns.
pub const MAX_LIMIT: usize = 10_000;
pub const DEFAULT_LIMIT: usize = 100;

/// Where the previous page ended: events strictly past `(ts, id)` in the page order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts: i64,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}_{}", self.ts, self.id.simple())
    }

    pub fn decode(s: &str) -> Result<Self, QueryError> {
        let bad = || QueryError::BadRequest(format!("invalid cursor {s:?}: pass back a `next_cursor` unchanged"));
        let (ts, id) = s.split_once('_').ok_or_else(bad)?;
        Ok(Self { ts: ts.parse().map_err(|_| bad())?, id: Uuid::parse_str(id).map_err(|_| bad())? })
    }
}

#[derive(Debug, Clone)]
pub struct SearchParams {
    pub expr: Expr,
    pub range: TimeRange,
    pub order: Order,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

#[derive(Debug, Clone)]
pub struct SearchPage {
    pub events: Vec<Event>,
    /// Set when more events match past this page.
    pub next_cursor: Option<String>,
}

/// An event ordered by `(ts, id)`.
struct Keyed(Event);

impl Keyed {
    fn key(&self) -> (i64, Uuid) {
        (self.0.ts, self.0.id)
    }
}
impl PartialEq for Keyed {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Keyed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

/// The best `k` events seen so far in page order: the newest for `Desc`, the oldest for
/// `Asc`.
enum TopK {
    Newest(BinaryHeap<Reverse<Keyed>>, usize),
    Oldest(BinaryHeap<Keyed>, usize),
}

impl TopK {
    fn new(order: Order, k: usize) -> Self {
        match order {
            Order::Desc => TopK::Newest(BinaryHeap::with_capacity(k + 1), k),
            Order::Asc => TopK::Oldest(BinaryHeap::with_capacity(k + 1), k),
        }
    }

    fn push(&mut self, e: Event) {
        match self {
            TopK::Newest(h, k) => {
                h.push(Reverse(Keyed(e)));
                if h.len() > *k {
                    h.pop();
                }
            }
            TopK::Oldest(h, k) => {
                h.push(Keyed(e));
                if h.len() > *k {
                    h.pop();
                }
            }
        }
    }

    /// True when no event of a block with these time bounds can enter the page.
    fn excludes(&self, min_ts: i64, max_ts: i64) -> bool {
        match self {
            TopK::Newest(h, k) => h.len() == *k && h.peek().is_some_and(|w| max_ts < w.0 .0.ts),
            TopK::Oldest(h, k) => h.len() == *k && h.peek().is_some_and(|w| min_ts > w.0.ts),
        }
    }

    fn into_sorted(self) -> Vec<Event> {
        match self {
            TopK::Newest(h, _) => h.into_sorted_vec().into_iter().map(|r| r.0 .0).collect(),
            TopK::Oldest(h, _) => h.into_sorted_vec().into_iter().map(|k| k.0).collect(),
        }
    }
}

fn past_cursor(order: Order, cursor: Option<Cursor>, e: &Event) -> bool {
    match (cursor, order) {
        (None, _) => true,
        (Some(c), Order::Desc) => (e.ts, e.id) < (c.ts, c.id),
        (Some(c), Order::Asc) => (e.ts, e.id) > (c.ts, c.id),
    }
}

/// Runs `f` on one thread per core, each thread given every n-th shard (with its
/// position in `shards`), and returns what each thread found.
pub(crate) fn per_core<R: Send>(
    shards: &[ShardStore],
    f: impl Fn(Vec<(usize, &ShardStore)>) -> Result<R, QueryError> + Sync,
) -> Result<Vec<R>, QueryError> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(shards.len()).max(1);
    if threads == 1 {
        return Ok(vec![f(shards.iter().enumerate().collect())?]);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<(usize, &ShardStore)> = shards.iter().enumerate().skip(t).step_by(threads).collect();
                let f = &f;
                scope.spawn(move || f(mine))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a query thread panicked")).collect()
    })
}

/// One page of matching events over `shards`.
pub fn search(shards: &[ShardStore], p: &SearchParams) -> Result<SearchPage, QueryError> {
    let limit = p.limit.clamp(1, MAX_LIMIT);
    let mut range = p.range;
    if let Some(c) = p.cursor {
        match p.order {
            Order::Desc => range.to = range.to.min(c.ts.saturating_add(1)),
            Order::Asc => range.from = range.from.max(c.ts),
        }
    }
    // One more than the page, to know whether a next page exists.
    let k = limit + 1;
    // The blocks to read on every shard, in page order of their time bounds: once the
    // page is full and the next block cannot hold anything newer (older, ascending)
    // than the page's last event, no later block can either.
    let planned = per_core(shards, |mine| {
        let mut out = Vec::new();
        for (i, s) in mine {
            out.extend(ShardPlan::new(s, &p.expr, range)?.blocks(range).into_iter().map(|w| (i, w)));
        }
        Ok(out)
    })?;
    let mut blocks: Vec<(usize, BlockWork)> = planned.into_iter().flatten().collect();
    match p.order {
        Order::Desc => blocks.sort_by_key(|b| std::cmp::Reverse(b.1.max_ts)),
        Order::Asc => blocks.sort_by_key(|b| b.1.min_ts),
    }
    // Every core takes the next block in that order, unless the page is full and the
    // block cannot enter it (then no later block can either, and the search ends).
    let top = std::sync::Mutex::new(TopK::new(p.order, k));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> Result<(), QueryError> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some((shard, w)) = blocks.get(i) else { return Ok(()) };
            if top.lock().unwrap_or_else(|e| e.into_inner()).excludes(w.min_ts, w.max_ts) {
                next.store(blocks.len(), std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            let mut found = Vec::new();
            let read = read_matches(&shards[*shard], w, &p.expr, range, |e| {
                if past_cursor(p.order, p.cursor, &e) {
                    found.push(e);
                }
            });
            if let Err(e) = read {
                next.store(blocks.len(), std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
            let mut top = top.lock().unwrap_or_else(|e| e.into_inner());
            for e in found {
                top.push(e);
            }
        }
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(blocks.len());
    if threads <= 1 {
        work()?;
    } else {
        let done: Vec<Result<(), QueryError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|_| scope.spawn(&work)).collect();
            handles.into_iter().map(|h| h.join().expect("a query thread panicked")).collect()
        });
        done.into_iter().collect::<Result<(), QueryError>>()?;
    }
    let top = top.into_inner().unwrap_or_else(|e| e.into_inner());
    // In page order: the newest first for `Desc`, the oldest first for `Asc`.
    let mut events = top.into_sorted();
    let next_cursor = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|e| Cursor { ts: e.ts, id: e.id }.encode())
    } else {
        None
    };
    Ok(SearchPage { events, next_cursor })
}

/// How many events match.
pub fn count(shards: &[ShardStore], expr: &Expr, range: TimeRange) -> Result<u64, QueryError> {
    if matches!(expr, Expr::All) && range == TimeRange::default() {
        let mut n = 0;
        for s in shards {
            n += s.event_count()?;
        }
        return Ok(n);
    }
    let parts = per_core(shards, |mine| {
        let mut n = 0;
        for (_, s) in mine {
            for w in ShardPlan::new(s, expr, range)?.blocks(range) {
                n += count_matches(s, &w, expr, range)?;
            }
        }
        Ok(n)
    })?;
    Ok(parts.into_iter().sum())
}

/// The event with this id, from whichever shard holds it.
pub fn get_by_id(shards: &[ShardStore], id: &Uuid) -> Result<Option<Event>, QueryError> {
    for s in shards {
        if let Some(e) = s.get(id)? {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::parse;
    use gossamer_schemas::ShardCommand;
    use gossamer_storage::Store;

    fn events(n: u128) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                id: Uuid::from_u128(i + 1),
                // Several events share a timestamp, so paging must break ties by id.
                ts: (i / 3) as i64,
                stream: if i % 2 == 0 { "even".into() } else { "odd".into() },
                level: "info".into(),
                message: format!("event number {i}"),
                labels: Default::default(),
                fields: Default::default(),
            })
            .collect()
    }

    /// Three shards holding `evs`, dealt out seven at a time.
    pub(crate) fn stores(dir: &std::path::Path, evs: &[Event]) -> Vec<ShardStore> {
        let store = Store::open(dir).unwrap();
        let shards: Vec<ShardStore> = (0..3).map(|i| store.shard(i).unwrap()).collect();
        for (i, chunk) in evs.chunks(7).enumerate() {
            let s = &shards[i % 3];
            let seq = s.applied_seq().unwrap() + 1;
            s.apply(vec![(seq, ShardCommand::Insert { events: chunk.to_vec() })]).unwrap();
        }
        shards
    }

    #[test]
    fn paging_with_the_cursor_returns_every_match_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let evs = events(100);
        let shards = stores(dir.path(), &evs);
        for order in [Order::Desc, Order::Asc] {
            let mut p = SearchParams {
                expr: parse("stream:even").unwrap(),
                range: TimeRange::default(),
                order,
                limit: 7,
                cursor: None,
            };
            let mut got = Vec::new();
            loop {
                let page = search(&shards, &p).unwrap();
                got.extend(page.events.iter().map(|e| (e.ts, e.id)));
                match page.next_cursor {
                    Some(c) => p.cursor = Some(Cursor::decode(&c).unwrap()),
                    None => break,
                }
            }
            let mut want: Vec<(i64, Uuid)> = evs.iter().filter(|e| e.stream == "even").map(|e| (e.ts, e.id)).collect();
            want.sort();
            if order == Order::Desc {
                want.reverse();
            }
            assert_eq!(got, want, "{order:?}");
        }
        let range = TimeRange { from: 10, to: 20 };
        assert_eq!(count(&shards, &Expr::All, range).unwrap(), 30);
        assert_eq!(count(&shards, &parse("number 5*").unwrap(), TimeRange::default()).unwrap(), 11);
        assert_eq!(get_by_id(&shards, &Uuid::from_u128(50)).unwrap().unwrap().message, "event number 49");
    }
}
