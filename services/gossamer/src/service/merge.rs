//! Merging the answers of several nodes: search pages by `(ts, id)`, partial
//! aggregates into one.

use gossamer_query::exec::Cursor;
use gossamer_query::Aggregation;
use gossamer_schemas::api::Order;
use gossamer_schemas::Event;

use crate::service::wire::Answer;

/// Merges search pages of several nodes: the `limit` first in page order, cut where a
/// node that had more stopped (events past that point may be missing from it).
pub fn merge_search(answers: Vec<Answer>, order: Order, limit: usize) -> (Vec<Event>, Option<String>) {
    let mut events = Vec::new();
    let mut cut: Option<(i64, uuid::Uuid)> = None;
    let before = |a: (i64, uuid::Uuid), b: (i64, uuid::Uuid)| match order {
        Order::Desc => a > b,
        Order::Asc => a < b,
    };
    for a in answers {
        if let Answer::Search { events: page, more } = a {
            if more {
                if let Some(last) = page.last() {
                    let k = (last.ts, last.id);
                    if cut.is_none_or(|c| before(k, c)) {
                        cut = Some(k);
                    }
                }
            }
            events.extend(page);
        }
    }
    events.sort_by(|a, b| {
        let (x, y) = ((a.ts, a.id), (b.ts, b.id));
        match order {
            Order::Desc => y.cmp(&x),
            Order::Asc => x.cmp(&y),
        }
    });
    // A node with more to give means there is a next page, whatever is cut here.
    let mut truncated = cut.is_some();
    if let Some(c) = cut {
        events.retain(|e| (e.ts, e.id) == c || before((e.ts, e.id), c));
    }
    if events.len() > limit {
        events.truncate(limit);
        truncated = true;
    }
    let next = if truncated { events.last().map(|e| Cursor { ts: e.ts, id: e.id }.encode()) } else { None };
    (events, next)
}

pub fn merge_aggregates(answers: Vec<Answer>) -> Aggregation {
    let mut total = Aggregation::default();
    for a in answers {
        if let Answer::Aggregate(parts) = a {
            total.merge(Aggregation::from_parts(parts));
        }
    }
    total
}
