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
