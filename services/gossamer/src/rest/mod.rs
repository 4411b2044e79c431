//! The REST door: one module per resource (routes and handlers: parse the request,
//! call the query service or the commands, answer JSON), the server's layers and route
//! table ([`server`]), authorization ([`auth`]), TLS ([`tls`]), the error form
//! ([`error`]) and the OpenAPI document ([`openapi`]).

pub mod admin_api;
pub mod auth;
pub mod backups_api;
pub mod cluster_api;
pub mod common;
pub mod console;
pub mod elastic_api;
pub mod error;
pub mod events_api;
pub mod export_api;
pub mod sql_api;
pub mod loki_api;
pub mod loki_query;
pub mod loki_tail;
pub mod metrics;
pub mod openapi;
pub mod queues_api;
pub mod rejections;
pub mod search_api;
pub mod server;
pub mod streams_api;
pub mod tail;
pub mod tls;
