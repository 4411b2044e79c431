//! The query service's API: a search, count, aggregation, get by id or stream census
//! over the whole cluster. It takes a request (the transport-neutral types of
//! `gossamer_schemas::api`), checks it before any shard is asked, scatters it to the
//! shards' replicas, merges the answers, and returns a typed answer that says which
//! shards are missing and how long it took. It knows nothing of HTTP or NATS: the doors
//! (REST and the console behind it, the NATS API, and the doors to come) call it; live
//! tail, which follows the shard log as it is written, shares its query parsing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gossamer_query::exec::{Cursor, DEFAULT_LIMIT, MAX_LIMIT};
use gossamer_query::agg::{AggFn, Aggregation};
use gossamer_query::{AggSpec, SearchParams, Sort, SortCursor, TimeRange};
use gossamer_schemas::api::{AggregateRequest, AggregateResponse, CountResponse, Order, QueryRequest, SearchResponse};
use gossamer_schemas::Event;

use crate::error::ServiceError;
use crate::handle::NodeHandle;
use crate::service::latency::latency;
use crate::service::leaf::parse_query;
use crate::service::merge::{merge_aggregates, merge_search, PageOrder};
use crate::service::root::{all_shards, gather};
use crate::service::wire::{Answer, Ask};

/// A page of events.
pub struct Searched {
    pub events: Vec<Event>,
    pub next_cursor: Option<String>,
    /// Shards no replica answered for: the page may lack their events.
    pub missing: Vec<u32>,
    pub took: Duration,
}

pub struct Counted {
    pub count: u64,
    pub missing: Vec<u32>,
    pub took: Duration,
}

pub struct Aggregated {
    pub groups: Vec<serde_json::Value>,
    pub missing: Vec<u32>,
    pub took: Duration,
}

/// Events per stream, over every shard that answered.
pub struct StreamCounts {
    pub streams: BTreeMap<String, u64>,
    pub missing: Vec<u32>,
}

impl From<Searched> for SearchResponse {
    fn from(s: Searched) -> Self {
        SearchResponse {
            events: s.events.iter().map(|e| e.to_json()).collect(),
            next_cursor: s.next_cursor,
            partial: !s.missing.is_empty(),
            missing_shards: s.missing,
        }
    }
}

impl From<Counted> for CountResponse {
    fn from(c: Counted) -> Self {
        CountResponse { count: c.count, partial: !c.missing.is_empty(), missing_shards: c.missing }
    }
}

impl From<Aggregated> for AggregateResponse {
    fn from(a: Aggregated) -> Self {
        AggregateResponse { groups: a.groups, partial: !a.missing.is_empty(), missing_shards: a.missing }
    }
}

/// A checked search request: its parameters, and the sort's keys when it is ordered by
/// anything but time (its cursor then is `after`).
pub struct Checked {
    pub params: SearchParams,
    pub sort: Option<(Sort, Option<SortCursor>)>,
}

/// Checks a search request within the node's limits: the query parses, the range and
/// the limit are valid, the sort reads, the cursor decodes.
pub fn parse_search(limits: &gossamer_config::QueryLimits, req: &QueryRequest) -> Result<Checked, ServiceError> {
    let expr = parse_query(limits, &req.q)?;
    let range = TimeRange::parse(req.from.as_deref(), req.to.as_deref(), TimeRange::now()).map_err(ServiceError::BadRequest)?;
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT.min(limits.max_page));
    let most = limits.max_page.min(MAX_LIMIT);
    if limit == 0 || limit > most {
        return Err(ServiceError::BadRequest(format!("`limit` must be between 1 and {most} (query_limits.max_page), got {limit}")));
    }
    let sort = req.sort.as_deref().map(Sort::parse).transpose()?;
    if sort.is_some() && req.order.is_some() {
        return Err(ServiceError::BadRequest("give `sort` or `order`, not both (`sort=ts:asc` is `order=asc`)".into()));
    }
    let cursor = req.cursor.as_deref().filter(|c| !c.is_empty());
    match sort {
        Some(sort) if sort.as_time_order().is_none() => {
            let after = cursor.map(|c| SortCursor::decode(c, &sort)).transpose()?;
            let params = SearchParams { expr, range, order: Order::Asc, limit, cursor: None };
            Ok(Checked { params, sort: Some((sort, after)) })
        }
        sort => {
            let order = sort.and_then(|s| s.as_time_order()).or(req.order).unwrap_or(Order::Desc);
            let cursor = cursor.map(Cursor::decode).transpose()?;
            Ok(Checked { params: SearchParams { expr, range, order, limit, cursor }, sort: None })
        }
    }
}

/// Records how long `kind` took, whatever the outcome.
async fn timed<T>(kind: &'static str, f: impl std::future::Future<Output = Result<T, ServiceError>>) -> Result<T, ServiceError> {
    let started = Instant::now();
    let answer = f.await;
    latency().observe(kind, started.elapsed().as_secs_f64());
    answer
}

/// A page of the events matching `req`, across the cluster.
pub async fn search(node: &NodeHandle, req: QueryRequest) -> Result<Searched, ServiceError> {
    let started = Instant::now();
    timed("search", async {
        // Checked here, so a bad query fails before any node is asked.
        let checked = parse_search(&node.cfg.query_limits, &req)?;
        match &checked.sort {
            None => search_page(node, &req.q, &checked.params, started).await,
            Some((sort, after)) => {
                let p = &checked.params;
                let ask = Ask::SearchSorted {
                    q: req.q.clone(),
                    range: (p.range.from, p.range.to),
                    sort: req.sort.clone().unwrap_or_default(),
                    limit: p.limit,
                    cursor: after.as_ref().map(SortCursor::encode),
                };
                let got = gather(node, &all_shards(node), ask).await?;
                let (events, next_cursor) = merge_search(got.answers, PageOrder::Keys(sort), p.limit);
                Ok(Searched { events, next_cursor, missing: got.missing, took: started.elapsed() })
            }
        }
    })
    .await
}

/// A page of the events matching the parsed query `q`, for a door that has checked its
/// own parameters (the limit within `query_limits.max_page`).
pub async fn search_in(node: &NodeHandle, q: &str, range: TimeRange, order: Order, limit: usize, cursor: Option<&str>) -> Result<Searched, ServiceError> {
    let started = Instant::now();
    timed("search", async {
        let expr = parse_query(&node.cfg.query_limits, q)?;
        let cursor = cursor.filter(|c| !c.is_empty()).map(Cursor::decode).transpose()?;
        let limit = limit.clamp(1, node.cfg.query_limits.max_page.min(MAX_LIMIT));
        let params = SearchParams { expr, range, order, limit, cursor };
        search_page(node, q, &params, started).await
    })
    .await
}

async fn search_page(node: &NodeHandle, q: &str, params: &SearchParams, started: Instant) -> Result<Searched, ServiceError> {
    let ask = Ask::Search {
        q: q.to_string(),
        range: (params.range.from, params.range.to),
        order: params.order,
        limit: params.limit,
        cursor: params.cursor.as_ref().map(|c| c.encode()),
    };
    let got = gather(node, &all_shards(node), ask).await?;
    let (events, next_cursor) = merge_search(got.answers, PageOrder::Time(params.order), params.limit);
    Ok(Searched { events, next_cursor, missing: got.missing, took: started.elapsed() })
}

/// How many events match `req` (its limit, order and cursor are ignored).
pub async fn count(node: &NodeHandle, req: QueryRequest) -> Result<Counted, ServiceError> {
    let started = Instant::now();
    timed("count", async {
        let params = parse_search(&node.cfg.query_limits, &req)?.params;
        let ask = Ask::Count { q: req.q.clone(), range: (params.range.from, params.range.to) };
        let got = gather(node, &all_shards(node), ask).await?;
        let count = got.answers.iter().map(|a| if let Answer::Count(n) = a { *n } else { 0 }).sum();
        Ok(Counted { count, missing: got.missing, took: started.elapsed() })
    })
    .await
}

/// An aggregation of the events matching `req`, grouped and bucketed.
pub async fn aggregate(node: &NodeHandle, req: AggregateRequest) -> Result<Aggregated, ServiceError> {
    aggregate_groups(node, req, false).await
}

/// [`aggregate`] with every group that has events, those without a value of the
/// field included (value null): SQL's groups.
pub async fn aggregate_all_groups(node: &NodeHandle, req: AggregateRequest) -> Result<Aggregated, ServiceError> {
    aggregate_groups(node, req, true).await
}

async fn aggregate_groups(node: &NodeHandle, req: AggregateRequest, keep_empty: bool) -> Result<Aggregated, ServiceError> {
    let started = Instant::now();
    timed("aggregate", async {
        // Checked here, so a bad query fails before any node is asked.
        parse_query(&node.cfg.query_limits, &req.q)?;
        let range = TimeRange::parse(req.from.as_deref(), req.to.as_deref(), TimeRange::now()).map_err(ServiceError::BadRequest)?;
        let mut spec =
            AggSpec::parse(&req.func, req.field.as_deref(), req.by.as_deref(), req.bucket.as_deref()).map_err(ServiceError::BadRequest)?;
        spec.max_groups = node.cfg.query_limits.max_groups;
        let ask = Ask::Aggregate {
            q: req.q.clone(),
            range: (range.from, range.to),
            func: req.func.clone(),
            field: req.field.clone(),
            by: req.by.clone(),
            bucket: req.bucket.clone(),
            max_groups: spec.max_groups,
            bucket_offset: 0,
        };
        let got = gather(node, &all_shards(node), ask).await?;
        let merged = merge_aggregates(got.answers);
        let groups = if keep_empty { merged.finish_all(&spec) } else { merged.finish(&spec) };
        Ok(Aggregated { groups, missing: got.missing, took: started.elapsed() })
    })
    .await
}

/// The merged partial aggregates of the events matching the parsed query `q` in
/// `range`, grouped as `spec` says (with its bucket offset): for doors that compute
/// their own answer from the groups (the Loki door's sliding windows).
pub async fn aggregate_parts(node: &NodeHandle, q: &str, range: TimeRange, spec: &AggSpec) -> Result<(Aggregation, Vec<u32>), ServiceError> {
    timed("aggregate", async {
        parse_query(&node.cfg.query_limits, q)?;
        let func = match spec.func {
            AggFn::Count => "count".to_string(),
            AggFn::Sum => "sum".to_string(),
            AggFn::Avg => "avg".to_string(),
            AggFn::Min => "min".to_string(),
            AggFn::Max => "max".to_string(),
            AggFn::Quantile(p) => format!("p{}", p * 100.0),
        };
        let ask = Ask::Aggregate {
            q: q.to_string(),
            range: (range.from, range.to),
            func,
            field: spec.field.clone(),
            by: Some(spec.by.join(",")),
            bucket: spec.bucket_ns.map(|w| format!("{w}ns")),
            max_groups: spec.max_groups.min(node.cfg.query_limits.max_groups),
            bucket_offset: spec.bucket_offset_ns,
        };
        let got = gather(node, &all_shards(node), ask).await?;
        Ok((merge_aggregates(got.answers), got.missing))
    })
    .await
}

/// The outcome of a read-your-writes wait.
#[derive(Debug, serde::Serialize)]
pub struct Waited {
    /// Every replica of every shard applied its position within the timeout.
    pub queryable: bool,
    pub waited_ms: u64,
    /// The replicas that had not (or could not say), by shard.
    pub late: Vec<Late>,
}

#[derive(Debug, serde::Serialize)]
pub struct Late {
    pub shard: u32,
    pub replica: String,
}

impl Waited {
    /// What a door says when the wait timed out.
    pub fn explain(&self) -> String {
        let late: Vec<String> = self.late.iter().map(|l| format!("shard {} on {}", l.shard, l.replica)).collect();
        format!("stored durably, but not yet queryable on every replica after {} ms: {}", self.waited_ms, late.join(", "))
    }
}

/// Waits until every replica of each shard has applied the shard log up to its
/// position (what an ingest answer gives), so what was written can be read from any
/// node; bounded by `timeout`, and saying which replicas were late.
pub async fn wait_queryable(node: &NodeHandle, positions: &BTreeMap<u32, u64>, timeout: Duration) -> Waited {
    let started = Instant::now();
    let map = node.cluster.map();
    let asks: Vec<(u32, u64, String)> = positions
        .iter()
        .flat_map(|(shard, seq)| map.replicas.get(*shard as usize).cloned().unwrap_or_default().into_iter().map(move |r| (*shard, *seq, r)))
        .collect();
    let waits = asks.into_iter().map(|(shard, seq, replica)| async move {
        let req = crate::service::wire::NodeRequest { shards: vec![shard], ask: Ask::Applied { seq } };
        let applied = matches!(
            tokio::time::timeout(timeout, crate::service::root::ask_one(node, &replica, req, timeout)).await,
            Ok(Ok(reply)) if reply.refused.is_empty() && reply.answer.is_ok()
        );
        (shard, replica, applied)
    });
    let late: Vec<Late> = futures::future::join_all(waits)
        .await
        .into_iter()
        .filter(|(_, _, applied)| !applied)
        .map(|(shard, replica, _)| Late { shard, replica })
        .collect();
    Waited { queryable: late.is_empty(), waited_ms: started.elapsed().as_millis() as u64, late }
}

/// The event with this id: `NotFound` when no shard holds it, `ShardsMissing` when the
/// shards that answered do not and some did not answer.
pub async fn get(node: &NodeHandle, id: uuid::Uuid) -> Result<Event, ServiceError> {
    let got = gather(node, &all_shards(node), Ask::Get { id }).await?;
    let found = got.answers.into_iter().find_map(|a| if let Answer::Get(e) = a { e } else { None });
    match found {
        Some(e) => Ok(e),
        None if !got.missing.is_empty() => Err(ServiceError::ShardsMissing {
            message: format!("no event with id {id} on the shards that answered; shards {:?} have no live replica", got.missing),
            shards: got.missing,
        }),
        None => Err(ServiceError::NotFound(format!("no event with id {id}"))),
    }
}

/// Events per stream across the cluster.
pub async fn stream_counts(node: &NodeHandle) -> Result<StreamCounts, ServiceError> {
    let got = gather(node, &all_shards(node), Ask::StreamCounts).await?;
    let mut streams: BTreeMap<String, u64> = BTreeMap::new();
    for a in got.answers {
        if let Answer::StreamCounts(counts) = a {
            for (name, n) in counts {
                *streams.entry(name).or_default() += n;
            }
        }
    }
    Ok(StreamCounts { streams, missing: got.missing })
}

/// What a query body asks for: the body of `POST /api/v1/query` and of a request on
/// `gossamer.<cluster>.api.query`.
pub enum QueryBody {
    Search(QueryRequest),
    Count(QueryRequest),
    Aggregate(AggregateRequest),
}

impl QueryBody {
    /// The search parameters; `"count": true` asks for the count instead, and `"fn"`
    /// (with `field`, `by`, `bucket`) for an aggregation.
    pub fn from_json(mut body: serde_json::Value) -> Result<Self, ServiceError> {
        let count = match body.as_object_mut().map(|o| o.remove("count")) {
            None => return Err(ServiceError::BadRequest("the query body must be a JSON object".into())),
            Some(None) => false,
            Some(Some(serde_json::Value::Bool(b))) => b,
            Some(Some(_)) => return Err(ServiceError::BadRequest("`count` must be true or false".into())),
        };
        if body.get("fn").is_some() {
            let request: AggregateRequest =
                serde_json::from_value(body).map_err(|e| ServiceError::BadRequest(format!("invalid aggregation body: {e}")))?;
            return Ok(QueryBody::Aggregate(request));
        }
        let request: QueryRequest =
            serde_json::from_value(body).map_err(|e| ServiceError::BadRequest(format!("invalid query body: {e}")))?;
        Ok(if count { QueryBody::Count(request) } else { QueryBody::Search(request) })
    }
}

/// The answer to a [`QueryBody`], in the shape of the matching GET route.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum QueryAnswer {
    Search(SearchResponse),
    Count(CountResponse),
    Aggregate(AggregateResponse),
}

/// Answers a query body.
pub async fn answer(node: &NodeHandle, body: QueryBody) -> Result<QueryAnswer, ServiceError> {
    Ok(match body {
        QueryBody::Search(r) => QueryAnswer::Search(search(node, r).await?.into()),
        QueryBody::Count(r) => QueryAnswer::Count(count(node, r).await?.into()),
        QueryBody::Aggregate(r) => QueryAnswer::Aggregate(aggregate(node, r).await?.into()),
    })
}
