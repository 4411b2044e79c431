//! Deletes, updates and retention: published as commands in the shard log, so every
//! replica applies them in the same order as the inserts around them; the caller waits
//! until a replica of the shard has applied each one and reads what it did.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gossamer_schemas::subjects::Subjects;
use gossamer_schemas::ShardCommand;
use tracing::{info, warn};

use crate::http::ApiError;
use crate::node::NodeHandle;

/// How long a request waits for its command to be applied.
pub const APPLY_WAIT: Duration = Duration::from_secs(30);

/// Publishes `cmd` to `shard`'s log and returns how many events it touched, once a
/// replica of the shard (this node's, or the first live one elsewhere) has applied it.
pub async fn run(node: &NodeHandle, shard: u32, cmd: &ShardCommand) -> Result<u64, ApiError> {
    let js = async_nats::jetstream::new(node.nats.clone());
    let bytes = cmd.encode().map_err(|e| ApiError::Internal(e.to_string()))?;
    let subject = Subjects::new(&node.cfg.cluster).shard(shard);
    let ack = js
        .publish(subject, bytes.into())
        .await
        .map_err(|e| ApiError::Unavailable(format!("publishing the command: {e}")))?
        .await
        .map_err(|e| ApiError::Unavailable(format!("the bus refused the command: {e}")))?;
    let gathered = crate::cluster::gather(node, &[shard], crate::cluster::Ask::Applied { seq: ack.sequence }).await?;
    for a in gathered.answers {
        if let crate::cluster::Answer::Applied(n) = a {
            return Ok(n);
        }
    }
    Err(ApiError::Unavailable(format!(
        "no live replica of shard {shard} could confirm the command (sequence {}); it is in the log and will be applied when the shard catches up",
        ack.sequence
    )))
}

/// Waits until this node's replica of `shard` has applied sequence `seq`, and returns
/// the command's result.
pub async fn wait_applied(node: &NodeHandle, shard: u32, seq: u64) -> Result<u64, ApiError> {
    let store = node.shards.get(shard as usize).ok_or_else(|| ApiError::Internal(format!("no shard {shard}")))?.clone();
    let start = Instant::now();
    loop {
        let s = store.clone();
        let done = actix_web::web::block(move || -> Result<Option<u64>, gossamer_storage::StorageError> {
            Ok(if s.applied_seq()? >= seq { Some(s.command_result(seq)?.unwrap_or(0)) } else { None })
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some(n) = done {
            return Ok(n);
        }
        if start.elapsed() > APPLY_WAIT {
            return Err(ApiError::Unavailable(format!(
                "shard {shard} has not applied the command (sequence {seq}) within {}s; it will be applied when the shard catches up",
                APPLY_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `cmd` on every shard (at once) and adds up what it did.
pub async fn run_everywhere(node: &NodeHandle, cmd: &ShardCommand) -> Result<u64, ApiError> {
    let runs = (0..node.cfg.shards).map(|s| run(node, s, cmd));
    let results = futures::future::join_all(runs).await;
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(total)
}

/// Applies every stream's retention on the shards holding that stream (as far as this
/// node knows: shards it does not hold get the command anyway).
pub async fn apply_retention(node: &NodeHandle) -> Result<u64, ApiError> {
    let store = node.store.clone();
    let shards = node.shards.clone();
    let (retentions, holders) = actix_web::web::block(move || -> Result<_, gossamer_storage::StorageError> {
        let retentions = store.retentions()?;
        let mut holders: Vec<Vec<String>> = Vec::new();
        for s in &shards {
            holders.push(s.stream_counts()?.into_keys().collect());
        }
        Ok((retentions, holders))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = gossamer_schemas::time::now_ns();
    let mut deleted = 0;
    for (stream, max_age) in retentions {
        let cmd = ShardCommand::Retention { stream: stream.clone(), before: now.saturating_sub(max_age) };
        for (shard, streams) in holders.iter().enumerate() {
            // A shard held elsewhere may hold the stream though this node's copy does not.
            if streams.contains(&stream) || node.cluster.holds(shard as u32).is_none() {
                deleted += run(node, shard as u32, &cmd).await?;
            }
        }
    }
    Ok(deleted)
}

/// Applies retention every `retention_every_secs`.
pub async fn retention_loop(node: Arc<NodeHandle>) {
    let every = Duration::from_secs(node.cfg.retention_every_secs.max(1));
    loop {
        tokio::time::sleep(every).await;
        match apply_retention(&node).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "retention-applied"),
            Err(e) => warn!(error = %e, "retention-failed"),
        }
    }
}
