//! Merging the answers of several nodes: search pages in time or a sort's order, partial
//! aggregates into one.

use std::cmp::Ordering;

use gossamer_query::exec::Cursor;
use gossamer_query::{Aggregation, Sort};
use gossamer_schemas::api::Order;
use gossamer_schemas::Event;

use crate::service::wire::Answer;

/// The order of a page: time (ties by id) or a sort's keys.
pub enum PageOrder<'a> {
    Time(Order),
    Keys(&'a Sort),
}

impl PageOrder<'_> {
    /// `Less` when `a` comes first in the page.
    fn cmp(&self, a: &Event, b: &Event) -> Ordering {
        match self {
            PageOrder::Time(Order::Desc) => (b.ts, b.id).cmp(&(a.ts, a.id)),
            PageOrder::Time(Order::Asc) => (a.ts, a.id).cmp(&(b.ts, b.id)),
            PageOrder::Keys(sort) => sort.cmp_events(a, b),
        }
    }

    fn cursor_after(&self, e: &Event) -> String {
        match self {
            PageOrder::Time(_) => Cursor { ts: e.ts, id: e.id }.encode(),
            PageOrder::Keys(sort) => sort.cursor_after(e),
        }
    }
}

/// Merges search pages of several nodes: the `limit` first in page order, cut where a
/// node that had more stopped (events past that point may be missing from it).
pub fn merge_search(answers: Vec<Answer>, order: PageOrder<'_>, limit: usize) -> (Vec<Event>, Option<String>) {
    let mut events = Vec::new();
    let mut cut: Option<Event> = None;
    for a in answers {
        if let Answer::Search { events: page, more } = a {
            if more {
                if let Some(last) = page.last() {
                    if cut.as_ref().is_none_or(|c| order.cmp(last, c) == Ordering::Less) {
                        cut = Some(last.clone());
                    }
                }
            }
            events.extend(page);
        }
    }
    events.sort_by(|a, b| order.cmp(a, b));
    // A node with more to give means there is a next page, whatever is cut here.
    let mut truncated = cut.is_some();
    if let Some(c) = &cut {
        events.retain(|e| order.cmp(e, c) != Ordering::Greater);
    }
    if events.len() > limit {
        events.truncate(limit);
        truncated = true;
    }
    let next = if truncated { events.last().map(|e| order.cursor_after(e)) } else { None };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u128, n: Option<i64>) -> Event {
        let mut fields = serde_json::Map::new();
        if let Some(n) = n {
            fields.insert("n".into(), n.into());
        }
        Event {
            id: uuid::Uuid::from_u128(i),
            ts: i as i64,
            stream: "s".into(),
            level: String::new(),
            message: String::new(),
            labels: Default::default(),
            fields,
        }
    }

    /// Pages of three "nodes", each its own best `limit + 1` in sort order after the
    /// cursor (as a leaf answers), merged page by page with the cursor fed back: every
    /// event once, in the order of sorting them all.
    #[test]
    fn sorted_pages_of_several_nodes_merge_into_every_event_once_in_order() {
        let sort = Sort::parse("fields.n:desc,ts").unwrap();
        let nodes: Vec<Vec<Event>> = (0..3u128)
            .map(|k| (0..40u128).map(|i| event(k * 100 + i, (i % 7 != 3).then_some((i % 5) as i64))).collect())
            .collect();
        let mut want: Vec<Event> = nodes.iter().flatten().cloned().collect();
        want.sort_by(|a, b| sort.cmp_events(a, b));
        for limit in [1, 4, 13, 200] {
            let mut got = Vec::new();
            let mut cursor: Option<gossamer_query::SortCursor> = None;
            loop {
                let answers = nodes
                    .iter()
                    .map(|evs| {
                        let mut mine: Vec<Event> = evs
                            .iter()
                            .filter(|e| cursor.as_ref().is_none_or(|c| sort.cmp((&sort.values(e), e.id), (&c.values, c.id)) == Ordering::Greater))
                            .cloned()
                            .collect();
                        mine.sort_by(|a, b| sort.cmp_events(a, b));
                        let more = mine.len() > limit;
                        mine.truncate(limit);
                        Answer::Search { events: mine, more }
                    })
                    .collect();
                let (page, next) = merge_search(answers, PageOrder::Keys(&sort), limit);
                assert!(page.len() <= limit);
                got.extend(page.iter().map(|e| e.id));
                match next {
                    Some(c) => cursor = Some(gossamer_query::SortCursor::decode(&c, &sort).unwrap()),
                    None => break,
                }
            }
            assert_eq!(got, want.iter().map(|e| e.id).collect::<Vec<_>>(), "limit {limit}");
        }
    }
}
