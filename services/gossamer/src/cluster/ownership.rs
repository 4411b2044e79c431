//! The ownership actor: recomputes the shard map (rendezvous hashing over the live
//! members gossip sees) whenever the membership changes, and starts and stops this
//! node's shard actors to match it.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use gossamer_schemas::placement::ShardMap;
use gossamer_shard::ShardActor;
use tracing::{info, warn};

use crate::cluster::state::Cluster;

/// Builds the shard actor of one shard on this node.
pub type StartShard = Box<dyn Fn(u32) -> Addr<ShardActor> + Send + Sync>;
/// Removes this node's consumer of a shard it no longer holds.
pub type ForgetShard = Arc<dyn Fn(u32) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

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

