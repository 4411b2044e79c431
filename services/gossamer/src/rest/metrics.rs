//! `GET /metrics`: every actor's state in Prometheus text format.

use actix_web::HttpResponse;
use gossamer_schemas::api::ErrorBody;

use crate::error::blocking;
use crate::rest::common::Node;
use crate::rest::error::ApiError;
use crate::service::latency::latency;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics))]
pub struct Api;

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    summary = "Prometheus text format",
    responses(
        (status = 200, description = "The metrics", body = serde_json::Value),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn metrics(node: Node) -> Result<HttpResponse, ApiError> {
    use std::fmt::Write;
    let n = &node.cfg.node_id;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    if let Some(ingest) = &node.ingest {
        let st = ingest.send(gossamer_ingest::GetState).await?;
        let node_label = format!("node=\"{n}\"");
        for (name, help, v) in [
            ("gossamer_ingest_messages_total", "LOGS messages ingested", st.messages),
            ("gossamer_ingest_requests_total", "ingest requests answered", st.requests),
            ("gossamer_ingest_events_total", "events sent to the shard log", st.events),
            ("gossamer_ingest_batches_total", "shard batches published", st.batches),
            ("gossamer_ingest_dead_letters_total", "payloads dead-lettered", st.dead_letters),
            ("gossamer_ingest_paused_total", "times ingest waited for the node to catch up", st.paused_total),
        ] {
            metric(name, "counter", help, vec![(node_label.clone(), v)]);
        }
    }
    let mut applied = Vec::new();
    let mut events = Vec::new();
    let mut pending = Vec::new();
    let (mut gaps, mut rebuilds) = (Vec::new(), Vec::new());
    let (mut kept, mut opened) = (0, 0);
    for (_, addr) in node.cluster.held() {
        // A shard that moved away meanwhile has stopped: it is no longer this node's.
        let Ok(st) = addr.send(gossamer_shard::GetState).await else { continue };
        let labels = format!("node=\"{n}\",shard=\"{}\"", st.shard);
        applied.push((labels.clone(), st.applied_seq));
        events.push((labels.clone(), st.events));
        gaps.push((labels.clone(), st.gaps));
        rebuilds.push((labels.clone(), st.rebuilds));
        kept += st.blocks_kept;
        opened += st.blocks_opened;
        pending.push((labels, st.pending));
    }
    metric("gossamer_shard_applied_sequence", "gauge", "last shard-log sequence applied (shards this node holds)", applied);
    metric("gossamer_shard_events", "gauge", "events stored in the shard (shards this node holds)", events);
    metric("gossamer_shard_pending", "gauge", "shard-log messages not yet applied (shards this node holds)", pending);
    metric("gossamer_shard_delivery_gaps_total", "counter", "deliveries found missing, each replayed from the log (since the replica started here)", gaps);
    metric("gossamer_shard_rebuilds_total", "counter", "times the replica's tree was rebuilt from a peer's copy or the log", rebuilds);
    let node_label = format!("node=\"{n}\"");
    metric("gossamer_shard_sealed_blocks_kept_total", "counter", "blocks sealed by ingest written as they came (shards held here, since they started)", vec![(node_label.clone(), kept)]);
    metric("gossamer_shard_sealed_blocks_opened_total", "counter", "blocks sealed by ingest opened before writing, for holding an id already stored", vec![(node_label, opened)]);
    {
        let view = node.cluster.membership.borrow().clone();
        let map = node.cluster.map();
        let mut states = Vec::new();
        for m in &view.members {
            for st in ["alive", "suspect", "dead"] {
                let is = serde_json::to_value(m.state).ok().and_then(|v| v.as_str().map(|x| x == st)).unwrap_or(false);
                states.push((format!("node=\"{n}\",member=\"{}\",state=\"{st}\"", m.node), u64::from(is)));
            }
        }
        metric("gossamer_cluster_member_state", "gauge", "members as this node sees them: 1 for the state each is in", states);
        let live = view.members.iter().filter(|m| m.state != gossamer_gossip::MemberState::Dead).count() as u64;
        metric("gossamer_cluster_members_live", "gauge", "members alive or suspect", vec![(format!("node=\"{n}\""), live)]);
        let held = map.held_by(&node.cfg.node_id).len() as u64;
        let primary = (0..node.cfg.shards).filter(|s| map.primary(*s) == Some(node.cfg.node_id.as_str())).count() as u64;
        metric("gossamer_cluster_shards_held", "gauge", "shards this node holds a replica of", vec![(format!("node=\"{n}\""), held)]);
        metric("gossamer_cluster_shards_primary", "gauge", "shards this node is primary of", vec![(format!("node=\"{n}\""), primary)]);
        let unplaced = map.replicas.iter().filter(|r| r.is_empty()).count() as u64;
        metric("gossamer_cluster_shards_unplaced", "gauge", "shards with no live replica", vec![(format!("node=\"{n}\""), unplaced)]);
        metric("gossamer_cluster_shard_moves_total", "counter", "shard replicas this node started or stopped", vec![(format!("node=\"{n}\""), node.cluster.moves.load(std::sync::atomic::Ordering::Relaxed))]);
    }
    if let Some(index) = &node.index {
        let st = index.send(gossamer_index_actor::GetState).await?;
        let lags = st.shards.iter().enumerate().map(|(i, l)| (format!("node=\"{n}\",shard=\"{i}\""), l.events)).collect();
        metric("gossamer_index_lag_events", "gauge", "events stored but not indexed yet (queries scan them)", lags);
        let node_label = format!("node=\"{n}\"");
        metric("gossamer_index_dirty_blocks", "gauge", "rewritten blocks whose index is not rebuilt yet", vec![(node_label.clone(), st.dirty_blocks)]);
        metric("gossamer_index_segments", "gauge", "index segments", vec![(node_label.clone(), st.segments)]);
        metric("gossamer_index_events_total", "counter", "events indexed", vec![(node_label.clone(), st.indexed_events_total)]);
        metric("gossamer_index_resets_total", "counter", "indexes dropped and rebuilt", vec![(node_label, st.resets_total)]);
    }
    if let Some(q) = &node.queues {
        let stats = q.all_stats().await;
        let per = |f: &dyn Fn(&gossamer_queue::QueueStats) -> u64| {
            stats.iter().map(|(name, st)| (format!("node=\"{n}\",queue=\"{name}\""), f(st))).collect::<Vec<_>>()
        };
        metric("gossamer_queue_matched_total", "counter", "events that matched the queue's filter (this node, since start)", per(&|s| s.counters.matched));
        metric("gossamer_queue_published_total", "counter", "matches stored in NOTIFY (this node, since start)", per(&|s| s.counters.published));
        metric(
            "gossamer_queue_duplicates_total",
            "counter",
            "matches NOTIFY had already, read again around a takeover or a crash and dropped there (this node, since start)",
            per(&|s| s.counters.duplicates),
        );
        metric("gossamer_queue_takeovers_total", "counter", "queues this node took over from a member that died or drained", vec![(format!("node=\"{n}\""), q.takeovers())]);
        metric("gossamer_queue_dead_lettered_total", "counter", "deliveries moved to the dead-letter stream (this node, since start)", per(&|s| s.counters.dead_lettered));
        metric("gossamer_queue_stored", "gauge", "deliveries kept in NOTIFY", per(&|s| s.stored));
        metric("gossamer_queue_pending", "gauge", "deliveries not yet handed to a subscriber", per(&|s| s.pending));
        metric("gossamer_queue_ack_pending", "gauge", "deliveries waiting for an ack", per(&|s| s.ack_pending));
        metric("gossamer_queue_redelivered", "gauge", "deliveries handed out more than once", per(&|s| s.redelivered));
        metric("gossamer_queue_acked", "gauge", "deliveries acked", per(&|s| s.acked));
        metric("gossamer_queue_backlog", "gauge", "shard-log messages the queue has not read", per(&|s| s.backlog));
    }
    if let Some(b) = &node.backups {
        let node_label = format!("node=\"{n}\"");
        let jobs = b.jobs();
        let count = |action: &str, state: gossamer_backup::JobState| {
            jobs.iter().filter(|j| j.action == action && j.state == state).count() as u64
        };
        use gossamer_backup::JobState::{Done, Failed, Running};
        let by_state = |action: &str| {
            [("running", Running), ("done", Done), ("failed", Failed)]
                .into_iter()
                .map(|(label, st)| (format!("{node_label},action=\"{action}\",state=\"{label}\""), count(action, st)))
                .collect::<Vec<_>>()
        };
        let mut samples = by_state("create");
        samples.extend(by_state("verify"));
        samples.extend(by_state("restore"));
        metric("gossamer_backup_jobs", "gauge", "backup, verify and restore jobs since start, by state", samples);
        let last_ok = jobs
            .iter()
            .filter(|j| j.action == "create" && j.state == Done)
            .filter_map(|j| j.finished_at.as_deref())
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp() as u64)
            .max()
            .unwrap_or(0);
        metric("gossamer_backup_last_success_seconds", "gauge", "Unix time of the last backup made since start (0: none)", vec![(node_label, last_ok)]);
    }
    if let Some(s) = &node.syslog {
        use std::sync::atomic::Ordering::Relaxed;
        let label = format!("node=\"{n}\"");
        metric("gossamer_syslog_received_total", "counter", "syslog messages received (UDP and TCP)", vec![(label.clone(), s.received.load(Relaxed))]);
        metric("gossamer_syslog_udp_dropped_total", "counter", "syslog datagrams dropped because ingest was behind", vec![(label.clone(), s.udp_dropped.load(Relaxed))]);
        metric("gossamer_syslog_stored_total", "counter", "syslog events stored", vec![(label.clone(), s.stored.load(Relaxed))]);
        metric("gossamer_syslog_failed_total", "counter", "syslog events ingest refused or that could not be sent", vec![(label, s.failed.load(Relaxed))]);
    }
    metric(
        "gossamer_retention_deleted_total",
        "counter",
        "events the retention timer deleted on the shards this node is the primary of",
        vec![(format!("node=\"{n}\""), node.retention_deleted.load(std::sync::atomic::Ordering::Relaxed))],
    );
    metric(
        "gossamer_store_upgrade_blocks_left",
        "gauge",
        "blocks in an earlier version's layout the node has still to rewrite in today's",
        vec![(format!("node=\"{n}\""), node.upgrade_left.load(std::sync::atomic::Ordering::Relaxed))],
    );
    metric(
        "gossamer_resident_bytes",
        "gauge",
        "what the node holds resident in memory",
        vec![(format!("node=\"{n}\""), crate::node::resident_bytes())],
    );
    metric(
        "gossamer_memory_budget_bytes",
        "gauge",
        "the node's memory budget (--memory-budget)",
        vec![(format!("node=\"{n}\""), node.cfg.memory_budget().bytes)],
    );
    metric(
        "gossamer_memory_releases_total",
        "counter",
        "times the node held more than its memory budget and gave the allocator's free memory back",
        vec![(format!("node=\"{n}\""), node.memory_releases.load(std::sync::atomic::Ordering::Relaxed))],
    );
    let store = node.store.clone();
    let sled = blocking(move || store.size_on_disk()).await?;
    metric("gossamer_sled_bytes", "gauge", "bytes sled uses on disk", vec![(format!("node=\"{n}\""), sled)]);
    metric(
        "gossamer_blocks_read_total",
        "counter",
        "stored blocks read for their events (queries, exports, indexing) since the node started",
        vec![(format!("node=\"{n}\""), node.store.blocks_read())],
    );
    latency().render(n, &mut out);
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out))
}
