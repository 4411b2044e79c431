//! A [`Source`] over events held in memory, matched with the native syntax as the store
//! matches them: the fixture of the crate's tests and its sqllogictest suite.

use std::sync::Mutex;

use async_trait::async_trait;
use gossamer_schemas::Event;

use crate::{groups_of, Agg, Grouped, Page, Scan, Source};

/// Events in memory, read `page` at a time; every scan asked for is recorded.
#[derive(Debug)]
pub struct MemorySource {
    pub events: Vec<Event>,
    pub page: usize,
    pub shards: u32,
    pub scans: Mutex<Vec<Scan>>,
}

impl MemorySource {
    pub fn new(events: Vec<Event>, page: usize) -> Self {
        Self { events, page: page.max(1), shards: 4, scans: Mutex::default() }
    }

    /// The scans asked for so far.
    pub fn scans(&self) -> Vec<Scan> {
        self.scans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn page(&self, scan: &Scan, cursor: Option<String>, size: usize) -> Result<Page, String> {
        self.scans.lock().unwrap_or_else(|p| p.into_inner()).push(scan.clone());
        let q = gossamer_query::parse(&scan.query).map_err(|e| e.to_string())?;
        let start: usize = match cursor {
            Some(c) => c.parse().map_err(|_| format!("bad cursor {c:?}"))?,
            None => 0,
        };
        let mut matching: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| scan.from.is_none_or(|f| e.ts >= f) && scan.to.is_none_or(|t| e.ts < t) && q.matches(e))
            .collect();
        // The store's order: newest first, ties by id, highest first.
        matching.sort_by(|a, b| (b.ts, b.id).cmp(&(a.ts, a.id)));
        let end = (start + self.page.min(size)).min(matching.len());
        let events: Vec<Event> = matching[start.min(end)..end].iter().map(|e| (*e).clone()).collect();
        Ok(Page { events, missing: vec![], next: (end < matching.len()).then(|| end.to_string()) })
    }

    async fn aggregate(&self, scan: &Scan, agg: &Agg) -> Result<Grouped, String> {
        use gossamer_query::{AggSpec, Aggregation};
        let q = gossamer_query::parse(&scan.query).map_err(|e| e.to_string())?;
        let by = (!agg.by.is_empty()).then(|| agg.by.join(","));
        let bucket = agg.bucket_ns.map(|ns| format!("{ns}ns"));
        let spec = AggSpec::parse(&agg.func, agg.field.as_deref(), by.as_deref(), bucket.as_deref())?;
        let mut total = Aggregation::default();
        for e in self.events.iter().filter(|e| scan.from.is_none_or(|f| e.ts >= f) && scan.to.is_none_or(|t| e.ts < t) && q.matches(e)) {
            total.add(&spec, e).map_err(|e| e.to_string())?;
        }
        Ok(Grouped { groups: groups_of(&total.finish_all(&spec), agg)?, missing: vec![] })
    }

    fn shards(&self) -> u32 {
        self.shards
    }
}
