//! Commands, beside the query service: deletes, updates and retention, published to
//! the shard log, so every replica applies them in the same order as the inserts around
//! them; the caller waits until a replica of the shard has applied each one and reads
//! what it did.

use std::sync::Arc;
use std::time::Duration;

use gossamer_schemas::subjects::Subjects;
use gossamer_schemas::ShardCommand;
use tracing::{info, warn};

use crate::error::{blocking, ServiceError};
use crate::handle::NodeHandle;
use crate::service::root::gather;
use crate::service::wire::{Answer, Ask};

/// Publishes `cmd` to `shard`'s log and returns how many events it touched, once a
/// replica of the shard (this node's, or the first live one elsewhere) has applied it.
pub async fn run(node: &NodeHandle, shard: u32, cmd: &ShardCommand) -> Result<u64, ServiceError> {
    let js = async_nats::jetstream::new(node.nats.clone());
    let bytes = cmd.encode().map_err(|e| ServiceError::Internal(e.to_string()))?;
    let subject = Subjects::new(&node.cfg.cluster).shard(shard);
    let ack = js
        .publish(subject, bytes.into())
        .await
        .map_err(|e| ServiceError::Unavailable(format!("publishing the command: {e}")))?
        .await
        .map_err(|e| ServiceError::Unavailable(format!("the bus refused the command: {e}")))?;
    let gathered = gather(node, &[shard], Ask::Applied { seq: ack.sequence }).await?;
    for a in gathered.answers {
        if let Answer::Applied(n) = a {
            return Ok(n);
        }
    }
    Err(ServiceError::Unavailable(format!(
        "no live replica of shard {shard} could confirm the command (sequence {}); it is in the log and will be applied when the shard catches up",
        ack.sequence
    )))
}

/// Runs `cmd` on every shard (at once) and adds up what it did.
pub async fn run_everywhere(node: &NodeHandle, cmd: &ShardCommand) -> Result<u64, ServiceError> {
    let runs = (0..node.cfg.shards).map(|s| run(node, s, cmd));
    let results = futures::future::join_all(runs).await;
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(total)
}

/// Which shards [`apply_retention`] sends each stream's cut-off to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every shard that may hold the stream (a change of retention, applied at once).
    Everywhere,
    /// The shards this node is the primary of (the timer: every shard once a round,
    /// whichever nodes there are).
    MyPrimaries,
}

/// Applies every stream's retention (as mirrored here from the cluster's settings) on
/// the shards `reach` names that may hold the stream; how many events it deleted.
pub async fn apply_retention(node: &NodeHandle, reach: Reach) -> Result<u64, ServiceError> {
    let store = node.store.clone();
    let shards = node.shards.clone();
    let (retentions, holders) = blocking(move || -> Result<_, gossamer_storage::StorageError> {
        let retentions = store.retentions()?;
        let mut holders: Vec<Vec<String>> = Vec::new();
        for s in &shards {
            holders.push(s.stream_counts()?.into_keys().collect());
        }
        Ok((retentions, holders))
    })
    .await??;
    let map = node.cluster.map();
    let now = gossamer_schemas::time::now_ns();
    let mut deleted = 0;
    for (stream, max_age) in retentions {
        let cmd = ShardCommand::Retention { stream: stream.clone(), before: now.saturating_sub(max_age) };
        for (shard, streams) in holders.iter().enumerate() {
            let shard = shard as u32;
            let send = match reach {
                // A shard held elsewhere may hold the stream though this node's copy does not.
                Reach::Everywhere => streams.contains(&stream) || node.cluster.holds(shard).is_none(),
                // The primary's copy is caught up enough to say whether it holds the stream.
                Reach::MyPrimaries => map.primary(shard) == Some(node.cfg.node_id.as_str()) && streams.contains(&stream),
            };
            if send {
                deleted += run(node, shard, &cmd).await?;
            }
        }
    }
    Ok(deleted)
}

/// Applies retention every `retention_every_secs`, each node on the shards it is the
/// primary of.
pub async fn retention_loop(node: Arc<NodeHandle>) {
    let every = Duration::from_secs(node.cfg.retention_every_secs.max(1));
    loop {
        tokio::time::sleep(every).await;
        match apply_retention(&node, Reach::MyPrimaries).await {
            Ok(0) => {}
            Ok(n) => {
                node.retention_deleted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                info!(deleted = n, "retention-applied");
            }
            Err(e) => warn!(error = %e, "retention-failed"),
        }
    }
}

/// Moves a retention this node had before settings were shared, and that the
/// cluster's bucket has never held (set or cleared), into the bucket. Run at start,
/// before the node says it is ready.
pub async fn share_local_retentions(node: &NodeHandle) -> anyhow::Result<()> {
    let store = node.store.clone();
    let local = blocking(move || store.retentions()).await??;
    for (stream, ns) in local {
        if !node.shared.knows_retention(&stream).await? {
            node.shared.set_retention(&stream, Some(ns)).await?;
            info!(stream = %stream, "retention-shared: a retention set on this node alone is now the cluster's");
        }
    }
    Ok(())
}

/// Keeps this node's copy of the cluster's settings (the `meta` tree, which backups, the
/// streams list and the retention timer read) equal to the shared bucket: every setting
/// is read, then followed as it changes.
pub async fn mirror_settings(node: Arc<NodeHandle>) {
    loop {
        if let Err(e) = mirror_once(&node).await {
            warn!(error = %e, "settings-mirror-failed");
        }
        // The watch ended (the bus went away): read everything again shortly.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn mirror_once(node: &NodeHandle) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut changes = std::pin::pin!(node.shared.watch().await?);
    while let Some(change) = changes.next().await {
        let gossamer_bus::settings::Change::Retention { stream, max_age_ns, revision } = change?;
        let store = node.store.clone();
        blocking(move || store.set_retention(&stream, max_age_ns)).await??;
        node.settings_revision.send_if_modified(|r| {
            let newer = revision > *r;
            *r = (*r).max(revision);
            newer
        });
    }
    Ok(())
}

/// Which shard this node holds the event with this id in, if any.
async fn locate(node: &NodeHandle, id: uuid::Uuid) -> Result<Option<u32>, ServiceError> {
    let shards = node.shards.clone();
    Ok(blocking(move || -> Result<Option<u32>, gossamer_storage::StorageError> {
        for s in &shards {
            if s.get(&id)?.is_some() {
                return Ok(Some(s.shard()));
            }
        }
        Ok(None)
    })
    .await??)
}

/// Deletes one event; how many were deleted (1).
pub async fn delete_by_id(node: &NodeHandle, id: uuid::Uuid) -> Result<u64, ServiceError> {
    let shard = locate(node, id).await?.ok_or_else(|| ServiceError::NotFound(format!("no event with id {id}")))?;
    run(node, shard, &ShardCommand::Delete { ids: vec![id] }).await
}

/// Sets (or, with null, removes) labels and fields of one event; the event as it is now.
pub async fn update_event(
    node: &NodeHandle,
    id: uuid::Uuid,
    labels: std::collections::BTreeMap<String, Option<String>>,
    fields: serde_json::Map<String, serde_json::Value>,
) -> Result<gossamer_schemas::Event, ServiceError> {
    if labels.is_empty() && fields.is_empty() {
        return Err(ServiceError::BadRequest("nothing to update: give `labels` and/or `fields`".into()));
    }
    let shard = locate(node, id).await?.ok_or_else(|| ServiceError::NotFound(format!("no event with id {id}")))?;
    run(node, shard, &ShardCommand::Update { id, labels, fields }).await?;
    let store = node.shards[shard as usize].clone();
    blocking(move || store.get(&id))
        .await??
        .ok_or_else(|| ServiceError::NotFound(format!("event {id} was deleted meanwhile")))
}

/// Deletes every event matching `q` in the time range; how many were deleted.
pub async fn delete_where(node: &NodeHandle, q: String, from: Option<&str>, to: Option<&str>) -> Result<u64, ServiceError> {
    if q.trim().is_empty() {
        return Err(ServiceError::BadRequest(
            "an empty query would delete every event: name what to delete (`stream:*` means everything)".into(),
        ));
    }
    crate::service::leaf::parse_query(&node.cfg.query_limits, &q)?;
    let range = gossamer_query::TimeRange::parse(from, to, gossamer_query::TimeRange::now()).map_err(ServiceError::BadRequest)?;
    run_everywhere(node, &ShardCommand::DeleteWhere { q, from: range.from, to: range.to }).await
}

/// Sets (`Some("7d")`) or clears (`None`) a stream's retention and applies every
/// retention at once: the max age in nanoseconds and how many events it deleted now.
pub async fn set_retention(node: &NodeHandle, stream: &str, max_age: Option<&str>) -> Result<(Option<i64>, u64), ServiceError> {
    if !gossamer_schemas::event::is_valid_stream(stream) {
        return Err(ServiceError::BadRequest(format!("invalid stream name {stream:?}: dot-separated tokens of [A-Za-z0-9_-]")));
    }
    let max_age = match max_age {
        None => None,
        Some(s) => Some(gossamer_query::agg::parse_duration(s.trim()).ok_or_else(|| {
            ServiceError::BadRequest(format!("invalid `max_age` {s:?}: use a duration like 90m, 12h, 7d"))
        })?),
    };
    // The cluster's setting; this node's copy follows the bucket (a later change from
    // another node is never overwritten by this one): wait until it has.
    let revision = node.shared.set_retention(stream, max_age).await.map_err(|e| ServiceError::Unavailable(format!("{e:#}")))?;
    let mut mirrored = node.settings_revision.subscribe();
    tokio::time::timeout(Duration::from_secs(10), mirrored.wait_for(|r| *r >= revision))
        .await
        .map_err(|_| ServiceError::Unavailable(format!("the retention is the cluster's (revision {revision}), but this node has not read it back within 10 s")))?
        .map_err(|_| ServiceError::Unavailable("this node no longer follows the cluster's settings".into()))?;
    let deleted = apply_retention(node, Reach::Everywhere).await?;
    Ok((max_age, deleted))
}
