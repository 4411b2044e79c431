//! The root of the query service: scatter a request over the shards' replicas (this
//! node in process, the others over `gossamer.<cluster>.node.<node>.query`), retry a
//! refused or failed part on the next replica, and say which shards no replica answered
//! for. Also the other side: answering the requests other nodes send here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gossamer_schemas::subjects::Subjects;
use tracing::{debug, info, warn};

use crate::error::{ErrorCode, ServiceError};
use crate::handle::NodeHandle;
use crate::service::leaf::{serve, APPLY_WAIT};
use crate::service::wire::{decode_reply, decode_request, encode_reply, Answer, Ask, NodeReply, NodeRequest};

/// Answers the requests other nodes send to `gossamer.<cluster>.node.<me>.query`.
pub async fn serve_node_queries(node: Arc<NodeHandle>, mut sub: async_nats::Subscriber) {
    use futures::StreamExt;
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else { continue };
        let node = node.clone();
        actix_rt::spawn(async move {
            let reply = match decode_request(&msg.payload) {
                Ok(req) => serve(&node, req).await,
                Err(e) => NodeReply { refused: vec![], answer: Err((ErrorCode::BadRequest.http_status(), e)) },
            };
            let max = (node.nats.server_info().max_payload).max(64 * 1024) - 1024;
            let _ = node.nats.publish(reply_to, encode_reply(reply, max).into()).await;
        });
    }
}

/// Every node's answer, and the shards no replica answered for.
pub struct Gathered {
    pub answers: Vec<Answer>,
    pub missing: Vec<u32>,
}

/// Asks, for each of `shards`, the first live replica that serves it (this node in
/// process, the others over NATS), moving on to the next replica when one refuses,
/// does not answer in time, or is gone; after the replicas, the members that held the
/// shard before the last moves (they serve it until the new replicas have caught up).
pub async fn gather(node: &NodeHandle, shards: &[u32], ask: Ask) -> Result<Gathered, ServiceError> {
    let cluster = &node.cluster;
    let subjects = Subjects::new(&node.cfg.cluster);
    // The replicas first, then members still handing the shard over.
    let mut candidates: HashMap<u32, std::collections::VecDeque<String>> =
        shards.iter().map(|s| (*s, cluster.candidates(*s).into_iter().collect())).collect();
    let mut answers = Vec::new();
    let mut missing = Vec::new();
    let timeout = if matches!(ask, Ask::Applied { .. }) { APPLY_WAIT + cluster.query_timeout } else { cluster.query_timeout };
    let mut left: Vec<u32> = shards.to_vec();
    while !left.is_empty() {
        let mut by_node: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for s in left.drain(..) {
            match candidates.get(&s).and_then(|c| c.front()) {
                Some(n) => by_node.entry(n.clone()).or_default().push(s),
                None => missing.push(s),
            }
        }
        let rounds = by_node.into_iter().map(|(target, shards)| {
            let ask = ask.clone();
            let subject = subjects.node_query(&target);
            async move {
                let reply = if target == cluster.me {
                    Ok(serve(node, NodeRequest { shards: shards.clone(), ask }).await)
                } else {
                    ask_watching(node, &target, subject, NodeRequest { shards: shards.clone(), ask }, timeout).await
                };
                (target, shards, reply)
            }
        });
        for (target, asked, reply) in futures::future::join_all(rounds).await {
            let retry: Vec<u32> = match reply {
                Ok(NodeReply { refused, answer }) => {
                    match answer {
                        Ok(a) => answers.push(a),
                        // Refused everything: only the refusals matter.
                        Err((status, _)) if refused.len() == asked.len() && ErrorCode::from_http_status(status) == ErrorCode::Unavailable => {}
                        Err((status, msg)) => return Err(ServiceError::from_code(ErrorCode::from_http_status(status), msg)),
                    }
                    refused
                }
                Err(e) => {
                    debug!(node = %target, error = %e, "node-query-failed");
                    asked
                }
            };
            for s in retry {
                if let Some(c) = candidates.get_mut(&s) {
                    c.pop_front();
                }
                left.push(s);
            }
        }
    }
    missing.sort_unstable();
    if !missing.is_empty() {
        warn!(missing = ?missing, "query-partial");
    }
    Ok(Gathered { answers, missing })
}

/// [`ask_node`], given up early when gossip suspects the node meanwhile (a request sent
/// just as a node died may otherwise wait for the whole timeout).
/// Asks one node (this one in process) for its replicas of `req.shards`.
pub async fn ask_one(node: &NodeHandle, target: &str, req: NodeRequest, timeout: Duration) -> Result<NodeReply, String> {
    if target == node.cluster.me {
        Ok(serve(node, req).await)
    } else {
        ask_watching(node, target, Subjects::new(&node.cfg.cluster).node_query(target), req, timeout).await
    }
}

async fn ask_watching(node: &NodeHandle, target: &str, subject: String, req: NodeRequest, timeout: Duration) -> Result<NodeReply, String> {
    let asked = ask_node(node, subject, req, timeout);
    tokio::pin!(asked);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            reply = &mut asked => return reply,
            _ = tick.tick() => {
                let alive = node.cluster.membership.borrow().get(target).is_some_and(|m| m.state == gossamer_gossip::MemberState::Alive);
                if !alive {
                    return Err(format!("{target} is no longer alive to gossip"));
                }
            }
        }
    }
}

pub async fn ask_node(node: &NodeHandle, subject: String, req: NodeRequest, timeout: Duration) -> Result<NodeReply, String> {
    let body = rmp_serde::to_vec(&req).map_err(|e| e.to_string())?;
    let request = async_nats::Request::new().payload(body.into()).timeout(Some(timeout));
    let msg = node.nats.send_request(subject, request).await.map_err(|e| e.to_string())?;
    decode_reply(&msg.payload)
}

/// Every shard.
pub fn all_shards(node: &NodeHandle) -> Vec<u32> {
    (0..node.cfg.shards).collect()
}

/// Fetches a copy of `shard` from another live member, piece by piece: `None` when
/// there is no other member; an error when none of them gave one (they may still be
/// catching up: ask again).
pub async fn fetch_snapshot(node: &NodeHandle, shard: u32, reaching: u64) -> anyhow::Result<Option<Vec<u8>>> {
    let view = node.cluster.membership.borrow().clone();
    let subjects = Subjects::new(&node.cfg.cluster);
    // The shard's other replicas first, then the members that held it before (one
    // handing it over, a draining one among them), then any other live member.
    let mut peers: Vec<String> = node.cluster.candidates(shard);
    for m in view.members.iter().filter(|m| m.state != gossamer_gossip::MemberState::Dead) {
        if !peers.iter().any(|p| *p == m.node) {
            peers.push(m.node.clone());
        }
    }
    peers.retain(|p| *p != node.cluster.me);
    if peers.is_empty() {
        return Ok(None);
    }
    for peer in &peers {
        let mut copy = Vec::new();
        let mut token = 0;
        loop {
            let req = NodeRequest { shards: vec![shard], ask: Ask::Snapshot { token, offset: copy.len() as u64 } };
            let reply = match ask_node(node, subjects.node_query(&peer), req, node.cluster.query_timeout * 6).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(shard, peer = %peer, error = %e, "shard-copy-unavailable");
                    break;
                }
            };
            match reply.answer {
                Ok(Answer::Snapshot { token: t, total, chunk }) => {
                    token = t;
                    copy.extend_from_slice(&chunk);
                    if copy.len() as u64 >= total {
                        // A copy older than what the replica needs (an empty one from a
                        // peer that has not taken a restored backup itself): ask on.
                        match gossamer_shard::snapshot_sequence(&copy) {
                            Ok(at) if at >= reaching => {
                                info!(shard, peer = %peer, bytes = total, sequence = at, "shard-copy-received");
                                return Ok(Some(copy));
                            }
                            Ok(at) => debug!(shard, peer = %peer, sequence = at, reaching, "shard-copy-too-old"),
                            Err(e) => warn!(shard, peer = %peer, error = format!("{e:#}"), "shard-copy-unreadable"),
                        }
                        break;
                    }
                    if chunk.is_empty() {
                        break;
                    }
                }
                // This peer does not hold the shard, or has not caught up on it.
                _ => break,
            }
        }
    }
    anyhow::bail!("none of {peers:?} had a copy of shard {shard} to give")
}


/// Fetches `shard`'s backup part (`since` a sequence, or whole) from a member that
/// serves it, piece by piece: the shard's replicas by the map first, then the members
/// still handing it over. An error names the shard and why each member could not.
pub async fn fetch_export(node: &NodeHandle, shard: u32, since: Option<u64>) -> anyhow::Result<(Vec<u8>, gossamer_backup::format::ShardEntry)> {
    let subjects = Subjects::new(&node.cfg.cluster);
    let peers: Vec<String> = node.cluster.candidates(shard).into_iter().filter(|p| *p != node.cluster.me).collect();
    let mut why = Vec::new();
    for peer in &peers {
        let (mut part, mut token, mut entry) = (Vec::new(), 0, None);
        let outcome = loop {
            let req = NodeRequest { shards: vec![shard], ask: Ask::Export { since, token, offset: part.len() as u64 } };
            // Given up early when gossip suspects the member (one killed meanwhile).
            let reply = match ask_watching(node, peer, subjects.node_query(peer), req, node.cluster.query_timeout * 6).await {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            match reply.answer {
                Ok(Answer::Export { token: t, total, chunk, entry: e }) => {
                    token = t;
                    entry = entry.or(e);
                    part.extend_from_slice(&chunk);
                    if part.len() as u64 >= total {
                        break entry.take().map(|e| (std::mem::take(&mut part), e)).ok_or_else(|| "no entry came with the part".to_string());
                    }
                    if chunk.is_empty() {
                        break Err("the part ended early".into());
                    }
                }
                Ok(_) => break Err("an unexpected answer".into()),
                Err((_, msg)) if !reply.refused.is_empty() => break Err(format!("does not serve it now ({msg})")),
                Err((_, msg)) => break Err(msg),
            }
        };
        match outcome {
            Ok((bytes, entry)) => {
                info!(shard, peer = %peer, bytes = bytes.len(), to_seq = entry.to_seq, "backup-part-received");
                return Ok((bytes, entry));
            }
            Err(e) => why.push(format!("{peer}: {e}")),
        }
    }
    anyhow::bail!("no member that serves shard {shard} could export it ({})", if why.is_empty() { "no other member holds it".to_string() } else { why.join("; ") })
}
