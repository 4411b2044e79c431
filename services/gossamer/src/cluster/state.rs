//! What this node knows of the cluster and holds of it: the membership view, the
//! shard map, the shard actors it runs, and the copies of shards it is handing out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix::prelude::*;
use gossamer_gossip::Membership;
use gossamer_schemas::placement::ShardMap;
use gossamer_shard::ShardActor;

/// What this node knows of the cluster and holds of it.
pub struct Cluster {
    pub me: String,
    pub shard_count: u32,
    pub replicas: u32,
    pub membership: tokio::sync::watch::Receiver<Membership>,
    pub gossip: Addr<gossamer_gossip::GossipActor>,
    /// The shard actors this node runs, by shard.
    pub(crate) held: Mutex<BTreeMap<u32, Addr<ShardActor>>>,
    /// Held shards the map gave to other members: this node keeps serving them until
    /// the members arriving have caught up (make before break), then lets them go.
    pub(crate) leaving: Mutex<BTreeSet<u32>>,
    pub(crate) map: RwLock<ShardMap>,
    /// The maps before this one, newest first (a few): where a shard that moved may
    /// still be served while its new replicas catch up.
    pub(crate) history: RwLock<Vec<ShardMap>>,
    /// Shards this node started or stopped since it started (metrics).
    pub moves: std::sync::atomic::AtomicU64,
    /// The map has been computed once (the node is ready only then).
    pub placed: tokio::sync::watch::Sender<bool>,
    /// How long to wait for another node's answer.
    pub query_timeout: Duration,
    /// Copies of shards being handed to rebuilding replicas, by token.
    pub(crate) snapshots: Mutex<HashMap<u64, (std::time::Instant, Arc<Vec<u8>>)>>,
    /// Shards a restore wrote here though this node does not hold them: it hands copies
    /// of them to the replicas rebuilding from the restore.
    pub restored: Mutex<BTreeSet<u32>>,
    /// Backup parts being handed to the node taking a backup of the cluster, by token.
    pub(crate) exports: Mutex<HashMap<u64, (std::time::Instant, Arc<Vec<u8>>)>>,
}

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
            leaving: Mutex::new(BTreeSet::new()),
            map: RwLock::new(ShardMap::default()),
            history: RwLock::new(Vec::new()),
            moves: Default::default(),
            placed: tokio::sync::watch::channel(false).0,
            query_timeout: Duration::from_millis(cfg.node_query_timeout_ms.max(1)),
            snapshots: Mutex::new(HashMap::new()),
            exports: Mutex::new(HashMap::new()),
            restored: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn map(&self) -> ShardMap {
        self.map.read().unwrap().clone()
    }

    /// The members to ask for `shard`, in order: its replicas by the map, then the
    /// members that held it by the maps before (a member hands a shard over only once
    /// the new replicas serve it).
    pub fn candidates(&self, shard: u32) -> Vec<String> {
        let mut out: Vec<String> = self.map.read().unwrap().replicas.get(shard as usize).cloned().unwrap_or_default();
        for old in self.history.read().unwrap().iter() {
            for n in old.replicas.get(shard as usize).into_iter().flatten() {
                if !out.contains(n) {
                    out.push(n.clone());
                }
            }
        }
        out
    }

    /// Whether this node is handing `shard` over to other members.
    pub fn is_leaving(&self, shard: u32) -> bool {
        self.leaving.lock().unwrap().contains(&shard)
    }

    /// The shard actors this node runs.
    pub fn held(&self) -> Vec<(u32, Addr<ShardActor>)> {
        self.held.lock().unwrap().iter().map(|(s, a)| (*s, a.clone())).collect()
    }

    pub fn holds(&self, shard: u32) -> Option<Addr<ShardActor>> {
        self.held.lock().unwrap().get(&shard).cloned()
    }

    /// The shards this node can answer for now: held, and caught up.
    pub async fn ready_shards(&self) -> Vec<u32> {
        let mut ready = Vec::new();
        for (s, a) in self.held() {
            if a.send(gossamer_shard::GetState).await.map(|st| st.caught_up).unwrap_or(false) {
                ready.push(s);
            }
        }
        ready
    }
}

