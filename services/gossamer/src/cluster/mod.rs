//! The cluster as one node sees it: [`state::Cluster`] (membership, shard map, the
//! shard actors held here) and the [`ownership::OwnershipActor`] that keeps them in step
//! with gossip. Asking the shards for answers is the query service's (`crate::service`).

pub mod ownership;
pub mod state;
