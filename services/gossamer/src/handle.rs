//! The handle of a running node: its configuration, storage, cluster view and actors.
//! Built when the node starts; read by the query service and every door.

use std::sync::Arc;

use actix::prelude::*;
use gossamer_config::Config;
use gossamer_index_actor::IndexActor;
use gossamer_ingest::IngestActor;
use gossamer_storage::{ShardStore, Store};

/// A running node's parts: what every door and the query service reach it through.
pub struct NodeHandle {
    pub cfg: Config,
    pub store: Store,
    pub shards: Vec<ShardStore>,
    /// Membership, the shard map and the shard actors this node runs.
    pub cluster: Arc<crate::cluster::state::Cluster>,
    pub ingest: Option<Addr<IngestActor>>,
    /// The ingest actor's in-process way in, for the HTTP doors' events.
    pub local_ingest: Option<gossamer_ingest::LocalIngest>,
    pub index: Option<Addr<IndexActor>>,
    pub backups: Option<Arc<gossamer_backup::Backups>>,
    pub queues: Option<Arc<gossamer_queue::Queues>>,
    /// Held so the actors live as long as the node (an actor with no address stops).
    pub ownership: Addr<crate::cluster::ownership::OwnershipActor>,
    pub queue_actor: Option<Addr<gossamer_queue::QueueActor>>,
    pub backup_actor: Option<Addr<gossamer_backup::BackupActor>>,
    pub nats: async_nats::Client,
    /// A connection for live tails alone, with small subscription buffers: a slow tail
    /// loses its own messages (the server drops them for it) and slows nothing else.
    pub tail_nats: async_nats::Client,
    /// The syslog door's counters, when it listens.
    pub syslog: Option<Arc<crate::syslog::SyslogStats>>,
    /// Settings shared by the cluster (streams' retention), mirrored into `store`'s meta.
    pub shared: gossamer_bus::SharedSettings,
    /// The settings bucket's revision this node's copy has reached.
    pub settings_revision: tokio::sync::watch::Sender<u64>,
    /// Events the retention timer deleted here (on the shards this node is primary of).
    pub retention_deleted: std::sync::atomic::AtomicU64,
    /// Blocks still in an earlier version's layout, which the node rewrites after it
    /// starts (see [`crate::node::upgrade_store`]).
    pub upgrade_left: Arc<std::sync::atomic::AtomicU64>,
    /// Times the node found itself over its memory budget and gave back what it could.
    pub memory_releases: std::sync::atomic::AtomicU64,
}
