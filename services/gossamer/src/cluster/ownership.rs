//! The ownership actor: recomputes the shard map (rendezvous hashing over the live
//! members gossip sees) whenever the membership changes, and starts and stops this
//! node's shard actors to match it. A shard the map moves away is kept, applied and
//! served here until every member it moved to serves it (caught up), then let go:
//! make before break, so a move or a drain leaves no shard without a replica.

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
/// True when every one of these members serves the shard (holds it, caught up).
pub type ServedBy = Arc<dyn Fn(u32, Vec<String>) -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// Keeps the shard members of the latest map (this node's own record, read at its next
/// start).
pub type RememberMembers = Box<dyn Fn(&[String]) + Send + Sync>;

/// How often a member handing a shard over asks whether the new replicas serve it.
const HANDOVER_POLL: Duration = Duration::from_millis(250);

/// Recomputes the shard map whenever the membership changes, and starts and stops this
/// node's shard actors to match it.
pub struct OwnershipActor {
    cluster: Arc<Cluster>,
    start_shard: StartShard,
    forget: ForgetShard,
    served_by: ServedBy,
    pressure: Arc<gossamer_bus::Pressure>,
    /// Whether this node runs the shard role.
    shard_role: bool,
    /// Wait this long at start for the others to make themselves known.
    settle: Duration,
    remember: RememberMembers,
    /// The members last given to `remember`.
    remembered: Vec<String>,
}

impl OwnershipActor {
    pub fn new(
        cluster: Arc<Cluster>,
        start_shard: StartShard,
        forget: ForgetShard,
        served_by: ServedBy,
        pressure: Arc<gossamer_bus::Pressure>,
        shard_role: bool,
        settle: Duration,
        remember: RememberMembers,
    ) -> Self {
        Self { cluster, start_shard, forget, served_by, pressure, shard_role, settle, remember, remembered: Vec::new() }
    }

    fn place(&mut self, ctx: &mut Context<Self>) {
        let view = self.cluster.membership.borrow().clone();
        let live = view.shard_nodes();
        if live.iter().ne(self.remembered.iter()) {
            self.remembered = live.iter().map(|m| m.to_string()).collect();
            (self.remember)(&self.remembered);
        }
        let map = ShardMap::compute(self.cluster.shard_count, self.cluster.replicas, &live);
        let before = self.cluster.map();
        if map == before && *self.cluster.placed.borrow() {
            return;
        }
        let moved = before.moved(&map).len();
        let want: Vec<u32> = if self.shard_role { map.held_by(&self.cluster.me) } else { Vec::new() };
        let mut held = self.cluster.held.lock().unwrap();
        let mut leaving = self.cluster.leaving.lock().unwrap();
        let (mut started, mut stopped, mut handing) = (0, 0, 0);
        for s in &want {
            // A shard being handed over that comes back is simply kept.
            leaving.remove(s);
            if !held.contains_key(s) {
                held.insert(*s, (self.start_shard)(*s));
                started += 1;
            }
        }
        let gone: Vec<u32> = held.keys().copied().filter(|s| !want.contains(s) && !leaving.contains(s)).collect();
        for s in gone {
            let others = map.replicas.get(s as usize).is_some_and(|r| r.iter().any(|n| *n != self.cluster.me));
            if others && *self.cluster.placed.borrow() {
                // Served here until the members it moved to serve it.
                leaving.insert(s);
                handing += 1;
                self.hand_over(s, ctx);
            } else if let Some(actor) = held.remove(&s) {
                self.stop_shard(s, actor);
                stopped += 1;
            }
        }
        self.pressure.set_local_shards(held.len() as u32 == self.cluster.shard_count);
        drop((held, leaving));
        self.cluster.moves.fetch_add(started + stopped, std::sync::atomic::Ordering::Relaxed);
        info!(members = live.len(), moved, started, stopped, handing, held = want.len(), "shards-placed");
        if map != before {
            let mut history = self.cluster.history.write().unwrap();
            history.insert(0, before);
            history.truncate(MAPS_KEPT);
        }
        *self.cluster.map.write().unwrap() = map;
        self.cluster.placed.send_replace(true);
    }

    fn stop_shard(&self, s: u32, actor: Addr<ShardActor>) {
        actor.do_send(gossamer_shard::Stop);
        let forget = (self.forget)(s);
        actix::spawn(async move {
            if let Err(e) = forget.await {
                warn!(shard = s, error = format!("{e:#}"), "shard-consumer-not-removed");
            }
        });
    }

    /// Asks, until they do, whether the members the map gives `s` to serve it; then
    /// lets it go (unless the map gave it back meanwhile).
    fn hand_over(&self, s: u32, ctx: &mut Context<Self>) {
        let (cluster, served_by, addr) = (self.cluster.clone(), self.served_by.clone(), ctx.address());
        actix::spawn(async move {
            loop {
                if !cluster.is_leaving(s) {
                    return;
                }
                let owners: Vec<String> = cluster.map().replicas.get(s as usize).cloned().unwrap_or_default();
                if owners.contains(&cluster.me) {
                    return;
                }
                if !owners.is_empty() && served_by(s, owners.clone()).await {
                    addr.do_send(Release(s, owners));
                    return;
                }
                tokio::time::sleep(HANDOVER_POLL).await;
            }
        });
    }
}

/// A restore wrote copies of the shards elsewhere: start the apply loops of this node's
/// shard actors again, so each finds its tree behind the log and rebuilds from a copy.
pub struct RestartHeld;
impl Message for RestartHeld {
    type Result = ();
}

impl Handler<RestartHeld> for OwnershipActor {
    type Result = ();

    fn handle(&mut self, _: RestartHeld, _: &mut Self::Context) {
        let held = self.cluster.held.lock().unwrap();
        for actor in held.values() {
            actor.do_send(gossamer_shard::Reload);
        }
        info!(shards = held.len(), "shards-reloaded-after-restore");
    }
}

/// How many earlier maps a node keeps to find members still handing shards over.
const MAPS_KEPT: usize = 4;

/// The members a shard moved to (as the map then said) serve it: let it go, if the map
/// still says so.
struct Release(u32, Vec<String>);
impl Message for Release {
    type Result = ();
}

impl Handler<Release> for OwnershipActor {
    type Result = ();

    fn handle(&mut self, Release(s, owners): Release, ctx: &mut Self::Context) {
        let map = self.cluster.map();
        let wanted = self.shard_role && map.held_by(&self.cluster.me).contains(&s);
        if !wanted && map.replicas.get(s as usize) != Some(&owners) && self.cluster.is_leaving(s) {
            // The map moved it again while the others were asked: ask the new owners.
            self.hand_over(s, ctx);
            return;
        }
        let mut held = self.cluster.held.lock().unwrap();
        if !self.cluster.leaving.lock().unwrap().remove(&s) || wanted {
            return;
        }
        if let Some(actor) = held.remove(&s) {
            self.stop_shard(s, actor);
            self.cluster.moves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(shard = s, "shard-handed-over");
        }
        self.pressure.set_local_shards(held.len() as u32 == self.cluster.shard_count);
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

    fn handle(&mut self, _: Changed, ctx: &mut Self::Context) {
        self.place(ctx);
    }
}

