//! The client side: publishing over NATS, and a small REST client for a node's API.

pub mod publish;
pub mod query;
pub mod rest;
