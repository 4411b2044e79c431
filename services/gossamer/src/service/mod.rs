//! The query service, and the commands beside it: everything a door needs to read or
//! change what the cluster holds, with no HTTP or NATS API of its own.
//!
//! - [`query`]: the API the doors call (search, count, aggregate, get, streams);
//! - [`root`]: scatter to the shards' replicas and gather, retrying on the next replica;
//! - [`leaf`]: answer for this node's own replicas;
//! - [`logql`]: LogQL (the Loki door's language) compiled onto search and aggregation;
//! - [`merge`]: merge search pages and partial aggregates;
//! - [`wire`]: the node-to-node protocol;
//! - [`commands`]: deletes, updates and retention through the shard log;
//! - [`ingest`]: events from the HTTP doors into the request/reply ingest path;
//! - [`latency`]: query latency figures for `/metrics`.

pub mod commands;
pub mod ingest;
pub mod latency;
pub mod leaf;
pub mod logql;
pub mod merge;
pub mod query;
pub mod root;
pub mod sql;
pub mod wire;
