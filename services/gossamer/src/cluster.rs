//! The cluster as one node sees it: the ownership actor (which shards this node holds,
//! from the gossip view, by rendezvous hashing) and scatter-gather (asking, for every
//! shard, the first of its live replicas that has caught up, over NATS, and merging the
//! answers).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix::prelude::*;
use gossamer_gossip::Membership;
use gossamer_query::agg::{GroupKey, Partial};
use gossamer_query::exec::Cursor;
use gossamer_query::{AggSpec, Aggregation, TimeRange};
use gossamer_schemas::api::Order;
use gossamer_schemas::placement::ShardMap;
use gossamer_schemas::subjects::Subjects;
use gossamer_schemas::Event;
use gossamer_shard::ShardActor;
use gossamer_storage::ShardStore;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::http::ApiError;
use crate::node::NodeHandle;

/// Builds the shard actor of one shard on this node.
pub type StartShard = Box<dyn Fn(u32) -> Addr<ShardActor> + Send + Sync>;
/// Removes this node's consumer of a shard it no longer holds.
pub type ForgetShard = Arc<dyn Fn(u32) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// What this node knows of the cluster and holds of it.
pub struct Cluster {
    pub me: String,
    pub shard_count: u32,
    pub replicas: u32,
    pub membership: tokio::sync::watch::Receiver<Membership>,
    pub gossip: Addr<gossamer_gossip::GossipActor>,
    /// The shard actors this node runs, by shard.
    held: Mutex<BTreeMap<u32, Addr<ShardActor>>>,
    map: RwLock<ShardMap>,
    /// Shards this node started or stopped since it started (metrics).
    pub moves: std::sync::atomic::AtomicU64,
    /// The map has been computed once (the node is ready only then).
    pub placed: tokio::sync::watch::Sender<bool>,
    /// How long to wait for another node's answer.
    pub query_timeout: Duration,
    /// Copies of shards being handed to rebuilding replicas, by token.
    snapshots: Mutex<HashMap<u64, (std::time::Instant, Arc<Vec<u8>>)>>,
}

/// Bytes of a shard copy per answer (under NATS's default 1 MiB payload).
const SNAPSHOT_CHUNK: usize = 768 << 10;
/// How long a copy is kept for the replica fetching it.
const SNAPSHOT_KEEP: Duration = Duration::from_secs(120);

impl Cluster {
    pub fn new(
        cfg: &gossamer_config::Config,
        membership: tokio::sync::watch::Receiver<Membership>,
        gossip: Addr<gossamer_gossip::GossipActor>,
    ) -> Self {
        Self {
            me: cfg.node_id.clone(),
            shard_count: cfg.shards,
            replicas: cfg.replicas,
            membership,
            gossip,
            held: Mutex::new(BTreeMap::new()),
            map: RwLock::new(ShardMap::default()),
            moves: Default::default(),
            placed: tokio::sync::watch::channel(false).0,
            query_timeout: Duration::from_millis(cfg.node_query_timeout_ms.max(1)),
            snapshots: Mutex::new(HashMap::new()),
        }
    }

    pub fn map(&self) -> ShardMap {
        self.map.read().unwrap().clone()
    }

    /// The shard actors this node runs.
    pub fn held(&self) -> Vec<(u32, Addr<ShardActor>)> {
        self.held.lock().unwrap().iter().map(|(s, a)| (*s, a.clone())).collect()
    }

    pub fn holds(&self, shard: u32) -> Option<Addr<ShardActor>> {
        self.held.lock().unwrap().get(&shard).cloned()
    }

    /// The shards this node can answer for now: held, and caught up.
    async fn ready_shards(&self) -> Vec<u32> {
        let mut ready = Vec::new();
        for (s, a) in self.held() {
            if a.send(gossamer_shard::GetState).await.map(|st| st.caught_up).unwrap_or(false) {
                ready.push(s);
            }
        }
        ready
    }
}

/// Recomputes the shard map whenever the membership changes, and starts and stops this
/// node's shard actors to match it.
pub struct OwnershipActor {
    cluster: Arc<Cluster>,
    start_shard: StartShard,
    forget: ForgetShard,
    pressure: Arc<gossamer_bus::Pressure>,
    /// Whether this node runs the shard role.
    shard_role: bool,
    /// Wait this long at start for the others to make themselves known.
    settle: Duration,
}

impl OwnershipActor {
    pub fn new(
        cluster: Arc<Cluster>,
        start_shard: StartShard,
        forget: ForgetShard,
        pressure: Arc<gossamer_bus::Pressure>,
        shard_role: bool,
        settle: Duration,
    ) -> Self {
        Self { cluster, start_shard, forget, pressure, shard_role, settle }
    }

    fn place(&mut self) {
        let view = self.cluster.membership.borrow().clone();
        let live = view.shard_nodes();
        let map = ShardMap::compute(self.cluster.shard_count, self.cluster.replicas, &live);
        let before = self.cluster.map();
        if map == before && *self.cluster.placed.borrow() {
            return;
        }
        let moved = before.moved(&map).len();
        let want: Vec<u32> = if self.shard_role { map.held_by(&self.cluster.me) } else { Vec::new() };
        let mut held = self.cluster.held.lock().unwrap();
        let (mut started, mut stopped) = (0, 0);
        for s in &want {
            if !held.contains_key(s) {
                held.insert(*s, (self.start_shard)(*s));
                started += 1;
            }
        }
        let gone: Vec<u32> = held.keys().copied().filter(|s| !want.contains(s)).collect();
        for s in gone {
            if let Some(actor) = held.remove(&s) {
                actor.do_send(gossamer_shard::Stop);
                let forget = (self.forget)(s);
                actix::spawn(async move {
                    if let Err(e) = forget.await {
                        warn!(shard = s, error = format!("{e:#}"), "shard-consumer-not-removed");
                    }
                });
                stopped += 1;
            }
        }
        self.pressure.set_local_shards(held.len() as u32 == self.cluster.shard_count);
        drop(held);
        self.cluster.moves.fetch_add(started + stopped, std::sync::atomic::Ordering::Relaxed);
        info!(members = live.len(), moved, started, stopped, held = want.len(), "shards-placed");
        *self.cluster.map.write().unwrap() = map;
        self.cluster.placed.send_replace(true);
    }
}

struct Changed;
impl Message for Changed {
    type Result = ();
}

impl Actor for OwnershipActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let mut rx = self.cluster.membership.clone();
        let settle = self.settle;
        let addr = ctx.address();
        actix::spawn(async move {
            // At start, give the others a moment to answer our hello, so a node does not
            // take every shard only to hand most of them back a moment later: wait until
            // someone answers (or `settle` passes alone), then until the view has not
            // changed for a quarter of it (the rest follows within a gossip round).
            let start = tokio::time::Instant::now();
            loop {
                let alone = rx.borrow().members.len() <= 1;
                let quiet = if alone { (start + settle).saturating_duration_since(tokio::time::Instant::now()) } else { settle / 4 };
                let changed = tokio::time::timeout(quiet, rx.changed()).await;
                if !matches!(changed, Ok(Ok(()))) || start.elapsed() > settle * 2 {
                    break;
                }
            }
            addr.do_send(Changed);
            while rx.changed().await.is_ok() {
                addr.do_send(Changed);
            }
        });
    }
}

impl Handler<Changed> for OwnershipActor {
    type Result = ();

    fn handle(&mut self, _: Changed, _: &mut Self::Context) {
        self.place();
    }
}

// ---------------------------------------------------------------------------------
// Scatter-gather

/// What one node is asked to do for some shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ask {
    Search { q: String, range: (i64, i64), order: Order, limit: usize, cursor: Option<String> },
    Count { q: String, range: (i64, i64) },
    Aggregate { q: String, range: (i64, i64), func: String, field: Option<String>, by: Option<String>, bucket: Option<String>, max_groups: usize },
    Get { id: uuid::Uuid },
    StreamCounts,
    /// Wait until the shard has applied the log's sequence `seq`; answer its result.
    Applied { seq: u64 },
    /// A piece of a copy of the shard, for a replica that must be rebuilt: `token` 0
    /// takes a new copy; later pieces name the copy the first answer gave.
    Snapshot { token: u64, offset: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeRequest {
    shards: Vec<u32>,
    ask: Ask,
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
}

#[derive(Serialize, Deserialize)]
struct NodeReply {
    /// Shards asked for that this node does not hold, or has not caught up on.
    refused: Vec<u32>,
    /// The answer for the others, or an error with its HTTP status.
    answer: Result<Answer, (u16, String)>,
}

fn to_status(e: &ApiError) -> u16 {
    use actix_web::ResponseError;
    e.status_code().as_u16()
}

fn from_status(status: u16, msg: String) -> ApiError {
    match status {
        400 => ApiError::BadRequest(msg),
        404 => ApiError::NotFound(msg),
        503 => ApiError::Unavailable(msg),
        _ => ApiError::Internal(msg),
    }
}

/// Answers `ask` from this node's stores of `shards` (all of which it serves).
async fn answer_here(node: &NodeHandle, shards: &[u32], ask: Ask) -> Result<Answer, ApiError> {
    let stores: Vec<ShardStore> = shards.iter().map(|s| node.shards[*s as usize].clone()).collect();
    let limits = node.cfg.query_limits.clone();
    match ask {
        Ask::Applied { seq } => {
            let shard = *shards.first().ok_or_else(|| ApiError::Internal("no shard to wait for".into()))?;
            crate::commands::wait_applied(node, shard, seq).await.map(Answer::Applied)
        }
        Ask::Snapshot { token, offset } => {
            let shard = *shards.first().ok_or_else(|| ApiError::Internal("no shard to copy".into()))?;
            snapshot_piece(node, shard, token, offset).await
        }
        ask => actix_web::web::block(move || -> Result<Answer, ApiError> {
            let parse = |q: &str| crate::http::parse_query(&limits, q);
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
                Ask::Count { q, range } => {
                    Answer::Count(gossamer_query::count(&stores, &parse(&q)?, TimeRange { from: range.0, to: range.1 })?)
                }
                Ask::Aggregate { q, range, func, field, by, bucket, max_groups } => {
                    let mut spec = AggSpec::parse(&func, field.as_deref(), by.as_deref(), bucket.as_deref())
                        .map_err(ApiError::BadRequest)?;
                    spec.max_groups = max_groups;
                    let agg = gossamer_query::aggregate(&stores, &parse(&q)?, TimeRange { from: range.0, to: range.1 }, &spec)?;
                    Answer::Aggregate(agg.into_parts())
                }
                Ask::Get { id } => Answer::Get(gossamer_query::get_by_id(&stores, &id)?),
                Ask::StreamCounts => {
                    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
                    for s in &stores {
                        for (name, n) in s.stream_counts().map_err(|e| ApiError::Internal(e.to_string()))? {
                            *totals.entry(name).or_default() += n;
                        }
                    }
                    Answer::StreamCounts(totals)
                }
                Ask::Applied { .. } | Ask::Snapshot { .. } => unreachable!("handled above"),
            })
        })
        .await?,
    }
}

/// One piece of a copy of `shard`, taking the copy first when `token` is 0.
async fn snapshot_piece(node: &NodeHandle, shard: u32, token: u64, offset: u64) -> Result<Answer, ApiError> {
    let cache = &node.cluster.snapshots;
    let (token, copy) = if token == 0 {
        let store = node.shards[shard as usize].clone();
        let (applied, bytes) = actix_web::web::block(move || gossamer_shard::encode_snapshot(&store))
            .await?
            .map_err(|e| ApiError::Internal(format!("copying shard {shard}: {e:#}")))?;
        info!(shard, applied, bytes = bytes.len(), "shard-copy-taken");
        let token = gossamer_gossip::new_generation() ^ (u64::from(shard) << 48) | 1;
        let copy = Arc::new(bytes);
        let mut kept = cache.lock().unwrap();
        kept.retain(|_, (at, _)| at.elapsed() < SNAPSHOT_KEEP);
        kept.insert(token, (std::time::Instant::now(), copy.clone()));
        (token, copy)
    } else {
        let copy = cache.lock().unwrap().get(&token).map(|(_, c)| c.clone());
        (token, copy.ok_or_else(|| ApiError::NotFound(format!("the copy {token} of shard {shard} is no longer kept: start again")))?)
    };
    let start = (offset as usize).min(copy.len());
    let end = (start + SNAPSHOT_CHUNK).min(copy.len());
    if end == copy.len() {
        cache.lock().unwrap().remove(&token);
    }
    Ok(Answer::Snapshot { token, total: copy.len() as u64, chunk: copy[start..end].to_vec() })
}

/// Fetches a copy of `shard` from another live member, piece by piece: `None` when
/// there is no other member; an error when none of them gave one (they may still be
/// catching up: ask again).
pub async fn fetch_snapshot(node: &NodeHandle, shard: u32) -> anyhow::Result<Option<Vec<u8>>> {
    let map = node.cluster.map();
    let view = node.cluster.membership.borrow().clone();
    let subjects = Subjects::new(&node.cfg.cluster);
    // The shard's other replicas first, then any other live member that may hold it.
    let mut peers: Vec<String> = map.replicas.get(shard as usize).cloned().unwrap_or_default();
    for n in view.shard_nodes() {
        if !peers.iter().any(|p| p == n) {
            peers.push(n.to_string());
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
                        info!(shard, peer = %peer, bytes = total, "shard-copy-received");
                        return Ok(Some(copy));
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

/// Answers a request for `shards`, refusing the ones this node cannot serve.
async fn serve(node: &NodeHandle, req: NodeRequest) -> NodeReply {
    let ready = node.cluster.ready_shards().await;
    let (mine, refused): (Vec<u32>, Vec<u32>) = req.shards.into_iter().partition(|s| ready.contains(s));
    if mine.is_empty() {
        return NodeReply { refused, answer: Err((503, "no shard asked for is served here".into())) };
    }
    let answer = answer_here(node, &mine, req.ask).await.map_err(|e| (to_status(&e), e.to_string()));
    NodeReply { refused, answer }
}

/// Encodes a reply under the bus's payload limit: a search page too big is cut (its
/// `more` set, so the merge stops where it ends).
fn encode_reply(mut reply: NodeReply, max: usize) -> Vec<u8> {
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
                let r = NodeReply { refused: reply.refused.clone(), answer: Err((500, format!("the answer is over the bus's payload limit of {max} bytes"))) };
                return zstd::bulk::compress(&rmp_serde::to_vec(&r).unwrap_or_default(), 1).unwrap_or_default();
            }
        }
    }
}

fn decode_reply(bytes: &[u8]) -> Result<NodeReply, String> {
    let raw = zstd::stream::decode_all(bytes).map_err(|e| format!("undecodable answer: {e}"))?;
    rmp_serde::from_slice(&raw).map_err(|e| format!("undecodable answer: {e}"))
}

/// Answers the requests other nodes send to `gossamer.<cluster>.node.<me>.query`.
pub async fn serve_node_queries(node: Arc<NodeHandle>, mut sub: async_nats::Subscriber) {
    use futures::StreamExt;
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else { continue };
        let node = node.clone();
        actix_rt::spawn(async move {
            let reply = match decode_request(&msg.payload) {
                Ok(req) => serve(&node, req).await,
                Err(e) => NodeReply { refused: vec![], answer: Err((400, e)) },
            };
            let max = (node.nats.server_info().max_payload).max(64 * 1024) - 1024;
            let _ = node.nats.publish(reply_to, encode_reply(reply, max).into()).await;
        });
    }
}

fn decode_request(bytes: &[u8]) -> Result<NodeRequest, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("undecodable node request: {e}"))
}

/// Every node's answer, and the shards no replica answered for.
pub struct Gathered {
    pub answers: Vec<Answer>,
    pub missing: Vec<u32>,
}

/// Asks, for each of `shards`, the first live replica that serves it (this node in
/// process, the others over NATS), moving on to the next replica when one refuses,
/// does not answer in time, or is gone.
pub async fn gather(node: &NodeHandle, shards: &[u32], ask: Ask) -> Result<Gathered, ApiError> {
    let cluster = &node.cluster;
    let map = cluster.map();
    let subjects = Subjects::new(&node.cfg.cluster);
    let mut candidates: HashMap<u32, std::collections::VecDeque<String>> = shards
        .iter()
        .map(|s| (*s, map.replicas.get(*s as usize).cloned().unwrap_or_default().into_iter().collect()))
        .collect();
    let mut answers = Vec::new();
    let mut missing = Vec::new();
    let timeout = if matches!(ask, Ask::Applied { .. }) { crate::commands::APPLY_WAIT + cluster.query_timeout } else { cluster.query_timeout };
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
                        Err((503, _)) if refused.len() == asked.len() => {}
                        Err((status, msg)) => return Err(from_status(status, msg)),
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

async fn ask_node(node: &NodeHandle, subject: String, req: NodeRequest, timeout: Duration) -> Result<NodeReply, String> {
    let body = rmp_serde::to_vec(&req).map_err(|e| e.to_string())?;
    let request = async_nats::Request::new().payload(body.into()).timeout(Some(timeout));
    let msg = node.nats.send_request(subject, request).await.map_err(|e| e.to_string())?;
    decode_reply(&msg.payload)
}

/// Every shard.
pub fn all_shards(node: &NodeHandle) -> Vec<u32> {
    (0..node.cfg.shards).collect()
}

/// Merges search pages of several nodes: the `limit` first in page order, cut where a
/// node that had more stopped (events past that point may be missing from it).
pub fn merge_search(answers: Vec<Answer>, order: Order, limit: usize) -> (Vec<Event>, Option<String>) {
    let mut events = Vec::new();
    let mut cut: Option<(i64, uuid::Uuid)> = None;
    let before = |a: (i64, uuid::Uuid), b: (i64, uuid::Uuid)| match order {
        Order::Desc => a > b,
        Order::Asc => a < b,
    };
    for a in answers {
        if let Answer::Search { events: page, more } = a {
            if more {
                if let Some(last) = page.last() {
                    let k = (last.ts, last.id);
                    if cut.is_none_or(|c| before(k, c)) {
                        cut = Some(k);
                    }
                }
            }
            events.extend(page);
        }
    }
    events.sort_by(|a, b| {
        let (x, y) = ((a.ts, a.id), (b.ts, b.id));
        match order {
            Order::Desc => y.cmp(&x),
            Order::Asc => x.cmp(&y),
        }
    });
    // A node with more to give means there is a next page, whatever is cut here.
    let mut truncated = cut.is_some();
    if let Some(c) = cut {
        events.retain(|e| (e.ts, e.id) == c || before((e.ts, e.id), c));
    }
    if events.len() > limit {
        events.truncate(limit);
        truncated = true;
    }
    let next = if truncated { events.last().map(|e| Cursor { ts: e.ts, id: e.id }.encode()) } else { None };
    (events, next)
}

pub fn merge_aggregates(answers: Vec<Answer>) -> Aggregation {
    let mut total = Aggregation::default();
    for a in answers {
        if let Answer::Aggregate(parts) = a {
            total.merge(Aggregation::from_parts(parts));
        }
    }
    total
}
