//! The Gossamer node and its command-line tools.
//!
//! The modules, from the bottom up (each uses only those above it; no two import each
//! other, directly or not: `tests/module_layers.rs`):
//! - [`error`]: the service's errors and their neutral codes;
//! - [`cluster`]: membership, the shard map and the shard actors held here;
//! - [`handle`]: a running node's parts;
//! - [`service`]: the query service (scatter, gather, merge) and the commands;
//! - the doors: [`rest`] (REST, console, metrics, live tail), [`nats_api`], [`pg`]
//!   (the PostgreSQL wire protocol) and [`syslog`];
//! - [`node`]: wiring a node together and running it;
//! - [`local`]: a nats-server child for `up`, the tests and the benches;
//! - [`client`]: the small client the CLI and the benches talk to a node with;
//! - [`cli`] and [`bench`]: the commands.

pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod error;
pub mod handle;
pub mod local;
pub mod nats_api;
pub mod node;
pub mod pg;
pub mod rest;
pub mod service;
pub mod syslog;
