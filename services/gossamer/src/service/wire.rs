//! The node-to-node query protocol: what one node asks another for some shards
//! ([`Ask`]), what it answers ([`Answer`]), and their encoding (MessagePack, and zstd for
//! replies, cut to fit the bus's payload limit). Errors travel as an HTTP status number
//! and a message ([`crate::error::ErrorCode::http_status`]).

use std::collections::BTreeMap;

use gossamer_query::agg::{GroupKey, Partial};
use gossamer_schemas::api::Order;
use gossamer_schemas::Event;
use serde::{Deserialize, Serialize};

/// What one node is asked to do for some shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ask {
    Search { q: String, range: (i64, i64), order: Order, limit: usize, cursor: Option<String> },
    /// A page in the order of `sort`'s keys (`gossamer_query::Sort`), after `cursor`.
    SearchSorted { q: String, range: (i64, i64), sort: String, limit: usize, cursor: Option<String> },
    Count { q: String, range: (i64, i64) },
    Aggregate {
        q: String,
        range: (i64, i64),
        func: String,
        field: Option<String>,
        by: Option<String>,
        bucket: Option<String>,
        max_groups: usize,
        /// Where buckets start (`AggSpec::bucket_offset_ns`).
        #[serde(default)]
        bucket_offset: i64,
    },
    Get { id: uuid::Uuid },
    StreamCounts,
    /// Wait until the shard has applied the log's sequence `seq`; answer its result.
    Applied { seq: u64 },
    /// A piece of a copy of the shard, for a replica that must be rebuilt: `token` 0
    /// takes a new copy; later pieces name the copy the first answer gave.
    Snapshot { token: u64, offset: u64 },
    /// A piece of the shard's backup part (`since` a sequence, or whole), for a backup of
    /// the cluster taken on another node: `token` 0 exports it; later pieces name it.
    Export { since: Option<u64>, token: u64, offset: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeRequest {
    pub shards: Vec<u32>,
    pub ask: Ask,
}

#[derive(Serialize, Deserialize)]
pub enum Answer {
    Search { events: Vec<Event>, more: bool },
    Count(u64),
    Aggregate(Vec<(GroupKey, Partial)>),
    Get(Option<Event>),
    StreamCounts(BTreeMap<String, u64>),
    Applied(u64),
    Snapshot { token: u64, total: u64, chunk: Vec<u8> },
    /// The part's entry comes with the first piece.
    Export { token: u64, total: u64, chunk: Vec<u8>, entry: Option<gossamer_backup::format::ShardEntry> },
}

#[derive(Serialize, Deserialize)]
pub struct NodeReply {
    /// Shards asked for that this node does not hold, or has not caught up on.
    pub refused: Vec<u32>,
    /// The answer for the others, or an error with its HTTP status.
    pub answer: Result<Answer, (u16, String)>,
}

/// Encodes a reply under the bus's payload limit: a search page too big is cut (its
/// `more` set, so the merge stops where it ends).
pub fn encode_reply(mut reply: NodeReply, max: usize) -> Vec<u8> {
    loop {
        let bytes = rmp_serde::to_vec(&reply).unwrap_or_default();
        let packed = zstd::bulk::compress(&bytes, 1).unwrap_or_default();
        if packed.len() <= max {
            return packed;
        }
        match &mut reply.answer {
            Ok(Answer::Search { events, more }) if events.len() > 1 => {
                events.truncate(events.len() / 2);
                *more = true;
            }
            _ => {
                let r = NodeReply { refused: reply.refused.clone(), answer: Err((crate::error::ErrorCode::Internal.http_status(), format!("the answer is over the bus's payload limit of {max} bytes"))) };
                return zstd::bulk::compress(&rmp_serde::to_vec(&r).unwrap_or_default(), 1).unwrap_or_default();
            }
        }
    }
}

pub fn decode_reply(bytes: &[u8]) -> Result<NodeReply, String> {
    let raw = zstd::stream::decode_all(bytes).map_err(|e| format!("undecodable answer: {e}"))?;
    rmp_serde::from_slice(&raw).map_err(|e| format!("undecodable answer: {e}"))
}

pub fn decode_request(bytes: &[u8]) -> Result<NodeRequest, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("undecodable node request: {e}"))
}

