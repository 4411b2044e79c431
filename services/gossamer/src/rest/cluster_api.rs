//! `/api/v1/health` and `/api/v1/cluster`: the node and the cluster as it sees it.

use std::collections::BTreeMap;

use actix_web::HttpResponse;
use gossamer_schemas::api::{ClusterInfo, ErrorBody, MemberInfo, ShardInfo};
use serde_json::json;

use crate::rest::common::Node;
use crate::rest::error::ApiError;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(health, cluster))]
pub struct Api;

#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "node",
    summary = "Liveness, node and version",
    responses(
        (status = 200, description = "The node answers", body = serde_json::Value),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn health(node: Node) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "node": node.cfg.node_id,
        "cluster": node.cfg.cluster,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "node",
    summary = "Members, shards and their applied sequence and lag",
    responses(
        (status = 200, description = "The cluster as this node sees it", body = serde_json::Value),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
pub async fn cluster(node: Node) -> Result<HttpResponse, ApiError> {
    let view = node.cluster.membership.borrow().clone();
    let map = node.cluster.map();
    let mut states = BTreeMap::new();
    for (s, addr) in node.cluster.held() {
        // A shard that moved away meanwhile has stopped: it is no longer this node's.
        if let Ok(st) = addr.send(gossamer_shard::GetState).await {
            states.insert(s, st);
        }
    }
    let shards = (0..node.cfg.shards)
        .map(|s| {
            let st = states.get(&s);
            ShardInfo {
                shard: s,
                replicas: map.replicas.get(s as usize).cloned().unwrap_or_default(),
                primary: map.primary(s).map(String::from),
                applied_seq: st.map(|st| st.applied_seq).unwrap_or(0),
                events: st.map(|st| st.events).unwrap_or(0),
                pending: st.map(|st| st.pending).unwrap_or(0),
                here: st.is_some(),
                leaving: st.is_some() && node.cluster.is_leaving(s),
                caught_up: st.is_some_and(|st| st.caught_up),
            }
        })
        .collect();
    let members = view
        .members
        .iter()
        .map(|m| MemberInfo {
            node: m.node.clone(),
            state: serde_json::to_value(m.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            roles: if m.me {
                node.cfg.roles.clone()
            } else {
                [(m.shards, "shard"), (m.queues, "queue")].into_iter().filter(|(on, _)| *on).map(|(_, r)| r.to_string()).collect()
            },
            http: Some(m.http.clone()),
            draining: m.me && !m.shards && node.cfg.has_role("shard"),
            generation: m.gen,
            incarnation: m.incarnation,
            replicas: map.held_by(&m.node).len() as u32,
            primaries: (0..node.cfg.shards).filter(|s| map.primary(*s) == Some(m.node.as_str())).count() as u32,
            me: m.me,
        })
        .collect();
    let ingest = match &node.ingest {
        Some(a) => serde_json::to_value(a.send(gossamer_ingest::GetState).await?)
            .unwrap_or_default(),
        None => serde_json::Value::Null,
    };
    Ok(HttpResponse::Ok().json(ClusterInfo {
        cluster: node.cfg.cluster.clone(),
        shard_count: node.cfg.shards,
        replicas: node.cfg.replicas,
        members,
        shards,
        ingest,
    }))
}
