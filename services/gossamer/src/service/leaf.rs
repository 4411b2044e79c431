//! The leaf of the query service: answering an [`Ask`] from this node's own replicas,
//! refusing the shards it does not serve, and waiting for a command to be applied here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gossamer_query::exec::Cursor;
use gossamer_query::{AggSpec, TimeRange};
use gossamer_storage::ShardStore;
use tracing::info;

use crate::error::{blocking, ErrorCode, ServiceError};
use crate::handle::NodeHandle;
use crate::service::wire::{Answer, Ask, NodeReply, NodeRequest};

/// How long a request waits for its command to be applied.
pub const APPLY_WAIT: Duration = Duration::from_secs(30);
/// Bytes of a shard copy per answer (under NATS's default 1 MiB payload).
const SNAPSHOT_CHUNK: usize = 768 << 10;
/// How long a copy is kept for the replica fetching it.
const SNAPSHOT_KEEP: Duration = Duration::from_secs(120);

/// Parses query text within the node's limits.
pub fn parse_query(limits: &gossamer_config::QueryLimits, q: &str) -> Result<gossamer_query::Expr, ServiceError> {
    gossamer_query::parse_within(q, limits.max_query_bytes, limits.max_query_terms).map_err(|e| ServiceError::BadRequest(e.to_string()))
}

/// Answers `ask` from this node's stores of `shards` (all of which it serves).
pub async fn answer_here(node: &NodeHandle, shards: &[u32], ask: Ask) -> Result<Answer, ServiceError> {
    let stores: Vec<ShardStore> = shards.iter().map(|s| node.shards[*s as usize].clone()).collect();
    let limits = node.cfg.query_limits.clone();
    match ask {
        Ask::Applied { seq } => {
            let shard = *shards.first().ok_or_else(|| ServiceError::Internal("no shard to wait for".into()))?;
            wait_applied(node, shard, seq).await.map(Answer::Applied)
        }
        Ask::Snapshot { token, offset } => {
            let shard = *shards.first().ok_or_else(|| ServiceError::Internal("no shard to copy".into()))?;
            snapshot_piece(node, shard, token, offset).await
        }
        Ask::Export { since, token, offset } => {
            let shard = *shards.first().ok_or_else(|| ServiceError::Internal("no shard to export".into()))?;
            export_piece(node, shard, since, token, offset).await
        }
        ask => blocking(move || -> Result<Answer, ServiceError> {
            let parse = |q: &str| parse_query(&limits, q);
            Ok(match ask {
                Ask::Search { q, range, order, limit, cursor } => {
                    let cursor = cursor.as_deref().map(Cursor::decode).transpose()?;
                    let params = gossamer_query::SearchParams {
                        expr: parse(&q)?,
                        range: TimeRange { from: range.0, to: range.1 },
                        order,
                        limit,
                        cursor,
                    };
                    let page = gossamer_query::search(&stores, &params)?;
                    Answer::Search { more: page.next_cursor.is_some(), events: page.events }
                }
                Ask::SearchSorted { q, range, sort, limit, cursor } => {
                    let sort = gossamer_query::Sort::parse(&sort)?;
                    let after = cursor.as_deref().map(|c| gossamer_query::SortCursor::decode(c, &sort)).transpose()?;
                    let range = TimeRange { from: range.0, to: range.1 };
                    let page = gossamer_query::search_sorted(&stores, &parse(&q)?, range, &sort, after.as_ref(), limit)?;
                    Answer::Search { more: page.next_cursor.is_some(), events: page.events }
                }
                Ask::Count { q, range } => {
                    Answer::Count(gossamer_query::count(&stores, &parse(&q)?, TimeRange { from: range.0, to: range.1 })?)
                }
                Ask::Aggregate { q, range, func, field, by, bucket, max_groups, bucket_offset } => {
                    let mut spec = AggSpec::parse(&func, field.as_deref(), by.as_deref(), bucket.as_deref())
                        .map_err(ServiceError::BadRequest)?;
                    spec.max_groups = max_groups;
                    spec.bucket_offset_ns = bucket_offset;
                    let agg = gossamer_query::aggregate(&stores, &parse(&q)?, TimeRange { from: range.0, to: range.1 }, &spec)?;
                    Answer::Aggregate(agg.into_parts())
                }
                Ask::Get { id } => Answer::Get(gossamer_query::get_by_id(&stores, &id)?),
                Ask::StreamCounts => {
                    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
                    for s in &stores {
                        for (name, n) in s.stream_counts().map_err(|e| ServiceError::Internal(e.to_string()))? {
                            *totals.entry(name).or_default() += n;
                        }
                    }
                    Answer::StreamCounts(totals)
                }
                Ask::Applied { .. } | Ask::Snapshot { .. } | Ask::Export { .. } => unreachable!("handled above"),
            })
        })
        .await?,
    }
}

/// One piece of a copy of `shard`, taking the copy first when `token` is 0.
pub async fn snapshot_piece(node: &NodeHandle, shard: u32, token: u64, offset: u64) -> Result<Answer, ServiceError> {
    let cache = &node.cluster.snapshots;
    let (token, copy) = if token == 0 {
        let store = node.shards[shard as usize].clone();
        let (applied, bytes) = blocking(move || gossamer_shard::encode_snapshot(&store))
            .await?
            .map_err(|e| ServiceError::Internal(format!("copying shard {shard}: {e:#}")))?;
        info!(shard, applied, bytes = bytes.len(), "shard-copy-taken");
        let token = gossamer_gossip::new_generation() ^ (u64::from(shard) << 48) | 1;
        let copy = Arc::new(bytes);
        let mut kept = cache.lock().unwrap();
        kept.retain(|_, (at, _)| at.elapsed() < SNAPSHOT_KEEP);
        kept.insert(token, (std::time::Instant::now(), copy.clone()));
        (token, copy)
    } else {
        let copy = cache.lock().unwrap().get(&token).map(|(_, c)| c.clone());
        (token, copy.ok_or_else(|| ServiceError::NotFound(format!("the copy {token} of shard {shard} is no longer kept: start again")))?)
    };
    let start = (offset as usize).min(copy.len());
    let end = (start + SNAPSHOT_CHUNK).min(copy.len());
    if end == copy.len() {
        cache.lock().unwrap().remove(&token);
    }
    Ok(Answer::Snapshot { token, total: copy.len() as u64, chunk: copy[start..end].to_vec() })
}

/// One piece of `shard`'s backup part, exporting it first when `token` is 0 (kept, as
/// copies are, for the node fetching it).
pub async fn export_piece(node: &NodeHandle, shard: u32, since: Option<u64>, token: u64, offset: u64) -> Result<Answer, ServiceError> {
    let cache = &node.cluster.exports;
    let (token, part, entry) = if token == 0 {
        let store = node.shards[shard as usize].clone();
        let (bytes, entry) = blocking(move || gossamer_backup::export_part(&store, since, Vec::new()))
            .await?
            .map_err(|e| ServiceError::Internal(format!("exporting shard {shard}: {e:#}")))?;
        info!(shard, to_seq = entry.to_seq, bytes = bytes.len(), "backup-part-exported");
        let token = gossamer_gossip::new_generation() ^ (u64::from(shard) << 48) | 1;
        let part = Arc::new(bytes);
        let mut kept = cache.lock().unwrap();
        kept.retain(|_, (at, _)| at.elapsed() < SNAPSHOT_KEEP);
        kept.insert(token, (std::time::Instant::now(), part.clone()));
        (token, part, Some(entry))
    } else {
        let part = cache.lock().unwrap().get(&token).map(|(_, c)| c.clone());
        (token, part.ok_or_else(|| ServiceError::NotFound(format!("the export {token} of shard {shard} is no longer kept: start again")))?, None)
    };
    let start = (offset as usize).min(part.len());
    let end = (start + SNAPSHOT_CHUNK).min(part.len());
    if end == part.len() {
        cache.lock().unwrap().remove(&token);
    }
    Ok(Answer::Export { token, total: part.len() as u64, chunk: part[start..end].to_vec(), entry })
}

/// Answers a request for `shards`, refusing the ones this node cannot serve.
pub async fn serve(node: &NodeHandle, req: NodeRequest) -> NodeReply {
    let mut ready = node.cluster.ready_shards().await;
    if matches!(req.ask, Ask::Snapshot { .. }) {
        // Copies a restore wrote here are handed to the replicas rebuilding from them.
        ready.extend(node.cluster.restored.lock().unwrap().iter().copied());
    }
    let (mine, refused): (Vec<u32>, Vec<u32>) = req.shards.into_iter().partition(|s| ready.contains(s));
    if mine.is_empty() {
        return NodeReply { refused, answer: Err((ErrorCode::Unavailable.http_status(), "no shard asked for is served here".into())) };
    }
    let answer = answer_here(node, &mine, req.ask).await.map_err(|e| (e.error_code().http_status(), e.to_string()));
    NodeReply { refused, answer }
}

/// Waits until this node's replica of `shard` has applied sequence `seq`, and returns
/// the command's result.
pub async fn wait_applied(node: &NodeHandle, shard: u32, seq: u64) -> Result<u64, ServiceError> {
    let store = node.shards.get(shard as usize).ok_or_else(|| ServiceError::Internal(format!("no shard {shard}")))?.clone();
    let start = Instant::now();
    loop {
        let s = store.clone();
        let done = blocking(move || -> Result<Option<u64>, gossamer_storage::StorageError> {
            Ok(if s.applied_seq()? >= seq { Some(s.command_result(seq)?.unwrap_or(0)) } else { None })
        })
        .await??;
        if let Some(n) = done {
            return Ok(n);
        }
        if start.elapsed() > APPLY_WAIT {
            return Err(ServiceError::Timeout(format!(
                "shard {shard} has not applied the command (sequence {seq}) within {}s; it will be applied when the shard catches up",
                APPLY_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
