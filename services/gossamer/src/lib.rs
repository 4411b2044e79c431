//! The Gossamer node and its command-line tools: `up`, `node`, `publish`, `query`,
//! `backup`, `bench`.

pub mod backup_cli;
pub mod bench;
pub mod chart;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod commands;
pub mod http;
pub mod nats_server;
pub mod queue_cli;
pub mod node;
pub mod tail;
