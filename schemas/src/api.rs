//! Query requests and answers as they cross the REST API and NATS.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Desc,
    Asc,
}

/// The body of `POST /api/v1/query` and the parameters of `GET /api/v1/search` and
/// `/count`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    #[serde(default)]
    pub q: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<usize>,
    pub order: Option<Order>,
    pub cursor: Option<String>,
    /// Keys to order by instead of time: `fields.latency_ms:desc,ts:asc` (ties broken
    /// by id).
    pub sort: Option<String>,
}

/// The parameters of `GET /api/v1/aggregate` (and of `POST /api/v1/query` with `fn`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateRequest {
    #[serde(default)]
    pub q: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// count, sum, avg, min, max, p50, p90, p95, p99 (any pN).
    #[serde(rename = "fn")]
    pub func: String,
    pub field: Option<String>,
    /// Comma-separated group keys.
    pub by: Option<String>,
    /// Time bucket width: 30s, 1m, 1h, 1d.
    pub bucket: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AggregateResponse {
    pub groups: Vec<Value>,
    pub partial: bool,
    /// Shards no live replica answered for: their events are not in the answer.
    #[serde(default)]
    pub missing_shards: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResponse {
    pub events: Vec<Value>,
    pub next_cursor: Option<String>,
    pub partial: bool,
    pub missing_shards: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CountResponse {
    pub count: u64,
    pub partial: bool,
    #[serde(default)]
    pub missing_shards: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardInfo {
    pub shard: u32,
    pub replicas: Vec<String>,
    pub primary: Option<String>,
    pub applied_seq: u64,
    pub events: u64,
    /// Shard-log messages not yet applied, as last seen by the shard actor.
    pub pending: u64,
    /// This node holds a replica of the shard (the figures above are its own).
    pub here: bool,
    /// The map moved the shard to other members: this node serves it until they do.
    #[serde(default)]
    pub leaving: bool,
    /// This node's replica has caught up with the log since it started.
    pub caught_up: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    pub node: String,
    /// alive, suspect or dead.
    pub state: String,
    /// Roles, as far as this node knows them (its own; `shard` and `queue` or not for
    /// the others).
    pub roles: Vec<String>,
    pub http: Option<String>,
    /// This node is drained (takes no shards); known for the node answering only.
    #[serde(default)]
    pub draining: bool,
    /// Changes at every start of the member (and when it rejoins after being declared
    /// dead).
    pub generation: u64,
    /// Raised by the member to refute a suspicion (not known for the node answering).
    pub incarnation: Option<u16>,
    /// Shards it holds a replica of, and is primary of, in this node's shard map.
    pub replicas: u32,
    pub primaries: u32,
    /// The node answering.
    pub me: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster: String,
    pub shard_count: u32,
    pub replicas: u32,
    pub members: Vec<MemberInfo>,
    pub shards: Vec<ShardInfo>,
    pub ingest: Value,
}
