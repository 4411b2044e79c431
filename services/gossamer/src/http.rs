//! The REST API (§9): search, count, get by id, streams, cluster and health. Every
//! error is `{"error": "..."}` with a 4xx or 5xx status.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use gossamer_query::exec::{Cursor, DEFAULT_LIMIT, MAX_LIMIT};
use gossamer_query::{QueryError, SearchParams, TimeRange};
use gossamer_schemas::api::{
    AggregateRequest, AggregateResponse, ClusterInfo, CountResponse, ErrorBody, MemberInfo, Order, QueryRequest, SearchResponse, ShardInfo,
};
use serde_json::json;

use crate::cluster;
use crate::node::NodeHandle;


/// Errors at the HTTP boundary, each with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::BadRequest(m) => ApiError::BadRequest(m),
            QueryError::Storage(s) => ApiError::Internal(s.to_string()),
            QueryError::Index(s) => ApiError::Internal(format!("index: {s}")),
        }
    }
}

impl From<gossamer_backup::BackupError> for ApiError {
    fn from(e: gossamer_backup::BackupError) -> Self {
        use gossamer_backup::BackupError as B;
        match e {
            B::BadRequest(m) => ApiError::BadRequest(m),
            B::NotFound(m) => ApiError::NotFound(m),
            B::Conflict(m) => ApiError::Conflict(m),
            B::Internal(e) => ApiError::Internal(format!("{e:#}")),
        }
    }
}

impl From<gossamer_queue::QueueError> for ApiError {
    fn from(e: gossamer_queue::QueueError) -> Self {
        use gossamer_queue::QueueError as Q;
        match e {
            Q::BadRequest(m) => ApiError::BadRequest(m),
            Q::NotFound(m) => ApiError::NotFound(m),
            Q::Conflict(m) => ApiError::Conflict(m),
            Q::Internal(e) => ApiError::Internal(format!("{e:#}")),
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody { error: self.to_string() })
    }
}

type Node = web::Data<Arc<NodeHandle>>;

/// The HTTPS settings for a certificate chain and key in PEM files.
fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading the TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("the TLS certificate file {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("reading the TLS key {}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("the TLS certificate and key do not make a server identity: {e}"))
}

/// Declares the API's routes once: the actix scope that serves them, and the list the
/// OpenAPI test holds against the document.
macro_rules! api_routes {
    ($( $method:ident $path:literal => $handler:path ),* $(,)?) => {
        /// Every route under `/api/v1`: (method, path).
        pub const API_ROUTES: &[(&str, &str)] = &[ $( (stringify!($method), $path) ),* ];

        fn api_scope() -> actix_web::Scope {
            web::scope("/api/v1") $( .route($path, web::$method().to($handler)) )*
        }
    };
}

api_routes! {
    get "/health" => health,
    get "/cluster" => cluster,
    get "/search" => search,
    get "/count" => count,
    get "/aggregate" => aggregate,
    post "/query" => query,
    get "/events/{id}" => get_event,
    delete "/events/{id}" => delete_event,
    patch "/events/{id}" => update_event,
    post "/delete" => delete_where,
    get "/streams" => streams,
    put "/streams/{name}/retention" => set_retention,
    get "/index" => index_state,
    post "/admin/reindex" => reindex,
    post "/admin/drain" => drain,
    delete "/admin/drain" => undrain,
    get "/backups" => list_backups,
    post "/backups" => create_backup,
    get "/backups/{id}" => get_backup,
    post "/backups/{id}/verify" => verify_backup,
    post "/restore" => restore_backup,
    get "/queues" => list_queues,
    post "/queues" => create_queue,
    get "/queues/{name}" => get_queue,
    put "/queues/{name}" => update_queue,
    delete "/queues/{name}" => delete_queue,
    get "/tail" => crate::tail::tail,
    get "/jobs" => list_jobs,
    get "/jobs/{id}" => get_job,
    get "/openapi.json" => openapi,
}

/// The OpenAPI document, made by utoipa from the handlers' `#[utoipa::path]`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Gossamer", description = "The REST API of a Gossamer node: search, events, streams, queues, backups, administration. Every /api route and /metrics take `Authorization: Bearer <token>` when the node has tokens."),
    paths(
        health, cluster, search, count, aggregate, query, get_event, delete_event, update_event, delete_where,
        streams, set_retention, index_state, reindex, drain, undrain, list_backups, create_backup, get_backup, verify_backup,
        restore_backup, list_queues, create_queue, get_queue, update_queue, delete_queue, crate::tail::tail,
        list_jobs, get_job, openapi, metrics, console
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "node",
    summary = "This document",
    responses(
        (status = 200, description = "The OpenAPI document", body = serde_json::Value),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn openapi() -> HttpResponse {
    use utoipa::OpenApi;
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Binds the API on `addr` (port 0 picks a free one) and returns the server to await,
/// with the address it got.
pub fn bind(node: Arc<NodeHandle>, listener: std::net::TcpListener) -> anyhow::Result<(Server, std::net::SocketAddr)> {
    let addr = listener.local_addr()?;
    let max_body = node.cfg.query_limits.max_body_bytes;
    let tls = match (&node.cfg.http_tls_cert, &node.cfg.http_tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };
    let data = web::Data::new(node);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::JsonConfig::default().limit(max_body).error_handler(move |err, _| {
                use actix_web::error::JsonPayloadError;
                let e = match &err {
                    JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                        ApiError::TooLarge(format!("the request body is over the {max_body}-byte limit (query_limits.max_body_bytes)"))
                    }
                    _ => ApiError::BadRequest(format!("invalid JSON body: {err}")),
                };
                actix_web::error::InternalError::from_response(err, e.error_response()).into()
            }))
            .app_data(web::PayloadConfig::default().limit(max_body))
            .wrap(actix_web::middleware::from_fn(authorize))
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                let msg = format!("invalid query parameters: {err}");
                actix_web::error::InternalError::from_response(err, ApiError::BadRequest(msg).error_response()).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                let msg = format!("invalid path: {err}");
                actix_web::error::InternalError::from_response(err, ApiError::BadRequest(msg).error_response()).into()
            }))
            .route("/", web::get().to(console))
            .route("/metrics", web::get().to(metrics))
            .service(api_scope())
            .default_service(web::to(|| async { ApiError::NotFound("no such route".into()).error_response() }))
    })
    .workers(2);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config),
        None => server.listen(listener),
    }
    .map_err(|e| anyhow::anyhow!("binding the HTTP API on {addr}: {e}"))?;
    let bound = server.addrs()[0];
    Ok((server.run(), bound))
}

/// What a request needs: nothing (the console page), a read token, or the admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    Open,
    Read,
    Admin,
}

fn required(method: &actix_web::http::Method, path: &str) -> Access {
    use actix_web::http::Method;
    if !path.starts_with("/api/") && path != "/metrics" {
        return Access::Open;
    }
    if *method == Method::GET || *method == Method::HEAD || (*method == Method::POST && path == "/api/v1/query") {
        Access::Read
    } else {
        Access::Admin
    }
}

/// Checks the bearer token against the configured ones, in constant time (`subtle`).
fn granted(cfg: &gossamer_config::Config, header: Option<&str>) -> Result<Access, ApiError> {
    use subtle::ConstantTimeEq;
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
        return Err(ApiError::Unauthorized("this API needs a bearer token: Authorization: Bearer <token>".into()));
    };
    let same = |t: &Option<gossamer_config::Secret>| t.as_ref().is_some_and(|t| bool::from(t.0.as_bytes().ct_eq(given.as_bytes())));
    if same(&cfg.admin_token) {
        Ok(Access::Admin)
    } else if same(&cfg.read_token) {
        Ok(Access::Read)
    } else {
        Err(ApiError::Unauthorized("the bearer token is not valid".into()))
    }
}

/// Bearer tokens, when configured: 401 without a valid one, 403 when a read token asks
/// for a change. The token is never logged.
async fn authorize(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody + 'static>, actix_web::Error> {
    let verdict = match req.app_data::<Node>() {
        Some(node) if node.cfg.admin_token.is_some() => {
            let need = required(req.method(), req.path());
            if need == Access::Open {
                Ok(())
            } else {
                let header = req.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|h| h.to_str().ok());
                match granted(&node.cfg, header) {
                    Ok(have) if have >= need => Ok(()),
                    Ok(_) => Err(ApiError::Forbidden("the read token cannot change anything: use the admin token".into())),
                    Err(e) => Err(e),
                }
            }
        }
        _ => Ok(()),
    };
    match verdict {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(e) => Ok(req.into_response(e.error_response()).map_into_right_body()),
    }
}

#[utoipa::path(
    get,
    path = "/",
    tag = "node",
    summary = "The web console (HTML)",
    responses(
        (status = 200, description = "The console page", body = serde_json::Value),
    ),
)]
async fn console() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("../static/index.html"))
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    summary = "Prometheus text format",
    responses(
        (status = 200, description = "The metrics", body = serde_json::Value),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn metrics(node: Node) -> Result<HttpResponse, ApiError> {
    use std::fmt::Write;
    let n = &node.cfg.node_id;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    if let Some(ingest) = &node.ingest {
        let st = ingest.send(gossamer_ingest::GetState).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        let node_label = format!("node=\"{n}\"");
        for (name, help, v) in [
            ("gossamer_ingest_messages_total", "LOGS messages ingested", st.messages),
            ("gossamer_ingest_requests_total", "ingest requests answered", st.requests),
            ("gossamer_ingest_events_total", "events sent to the shard log", st.events),
            ("gossamer_ingest_batches_total", "shard batches published", st.batches),
            ("gossamer_ingest_dead_letters_total", "payloads dead-lettered", st.dead_letters),
            ("gossamer_ingest_paused_total", "times ingest waited for the node to catch up", st.paused_total),
        ] {
            metric(name, "counter", help, vec![(node_label.clone(), v)]);
        }
    }
    let mut applied = Vec::new();
    let mut events = Vec::new();
    let mut pending = Vec::new();
    let (mut gaps, mut rebuilds) = (Vec::new(), Vec::new());
    let (mut kept, mut opened) = (0, 0);
    for (_, addr) in node.cluster.held() {
        // A shard that moved away meanwhile has stopped: it is no longer this node's.
        let Ok(st) = addr.send(gossamer_shard::GetState).await else { continue };
        let labels = format!("node=\"{n}\",shard=\"{}\"", st.shard);
        applied.push((labels.clone(), st.applied_seq));
        events.push((labels.clone(), st.events));
        gaps.push((labels.clone(), st.gaps));
        rebuilds.push((labels.clone(), st.rebuilds));
        kept += st.blocks_kept;
        opened += st.blocks_opened;
        pending.push((labels, st.pending));
    }
    metric("gossamer_shard_applied_sequence", "gauge", "last shard-log sequence applied (shards this node holds)", applied);
    metric("gossamer_shard_events", "gauge", "events stored in the shard (shards this node holds)", events);
    metric("gossamer_shard_pending", "gauge", "shard-log messages not yet applied (shards this node holds)", pending);
    metric("gossamer_shard_delivery_gaps_total", "counter", "deliveries found missing, each replayed from the log (since the replica started here)", gaps);
    metric("gossamer_shard_rebuilds_total", "counter", "times the replica's tree was rebuilt from a peer's copy or the log", rebuilds);
    let node_label = format!("node=\"{n}\"");
    metric("gossamer_shard_sealed_blocks_kept_total", "counter", "blocks sealed by ingest written as they came (shards held here, since they started)", vec![(node_label.clone(), kept)]);
    metric("gossamer_shard_sealed_blocks_opened_total", "counter", "blocks sealed by ingest opened before writing, for holding an id already stored", vec![(node_label, opened)]);
    {
        let view = node.cluster.membership.borrow().clone();
        let map = node.cluster.map();
        let mut states = Vec::new();
        for m in &view.members {
            for st in ["alive", "suspect", "dead"] {
                let is = serde_json::to_value(m.state).ok().and_then(|v| v.as_str().map(|x| x == st)).unwrap_or(false);
                states.push((format!("node=\"{n}\",member=\"{}\",state=\"{st}\"", m.node), u64::from(is)));
            }
        }
        metric("gossamer_cluster_member_state", "gauge", "members as this node sees them: 1 for the state each is in", states);
        let live = view.members.iter().filter(|m| m.state != gossamer_gossip::MemberState::Dead).count() as u64;
        metric("gossamer_cluster_members_live", "gauge", "members alive or suspect", vec![(format!("node=\"{n}\""), live)]);
        let held = map.held_by(&node.cfg.node_id).len() as u64;
        let primary = (0..node.cfg.shards).filter(|s| map.primary(*s) == Some(node.cfg.node_id.as_str())).count() as u64;
        metric("gossamer_cluster_shards_held", "gauge", "shards this node holds a replica of", vec![(format!("node=\"{n}\""), held)]);
        metric("gossamer_cluster_shards_primary", "gauge", "shards this node is primary of", vec![(format!("node=\"{n}\""), primary)]);
        let unplaced = map.replicas.iter().filter(|r| r.is_empty()).count() as u64;
        metric("gossamer_cluster_shards_unplaced", "gauge", "shards with no live replica", vec![(format!("node=\"{n}\""), unplaced)]);
        metric("gossamer_cluster_shard_moves_total", "counter", "shard replicas this node started or stopped", vec![(format!("node=\"{n}\""), node.cluster.moves.load(std::sync::atomic::Ordering::Relaxed))]);
    }
    if let Some(index) = &node.index {
        let st = index.send(gossamer_index_actor::GetState).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        let lags = st.shards.iter().enumerate().map(|(i, l)| (format!("node=\"{n}\",shard=\"{i}\""), l.events)).collect();
        metric("gossamer_index_lag_events", "gauge", "events stored but not indexed yet (queries scan them)", lags);
        let node_label = format!("node=\"{n}\"");
        metric("gossamer_index_dirty_blocks", "gauge", "rewritten blocks whose index is not rebuilt yet", vec![(node_label.clone(), st.dirty_blocks)]);
        metric("gossamer_index_segments", "gauge", "index segments", vec![(node_label.clone(), st.segments)]);
        metric("gossamer_index_events_total", "counter", "events indexed", vec![(node_label.clone(), st.indexed_events_total)]);
        metric("gossamer_index_resets_total", "counter", "indexes dropped and rebuilt", vec![(node_label, st.resets_total)]);
    }
    if let Some(q) = &node.queues {
        let stats = q.all_stats().await;
        let per = |f: &dyn Fn(&gossamer_queue::QueueStats) -> u64| {
            stats.iter().map(|(name, st)| (format!("node=\"{n}\",queue=\"{name}\""), f(st))).collect::<Vec<_>>()
        };
        metric("gossamer_queue_matched_total", "counter", "events that matched the queue's filter (this node, since start)", per(&|s| s.counters.matched));
        metric("gossamer_queue_published_total", "counter", "matches stored in NOTIFY (this node, since start)", per(&|s| s.counters.published));
        metric("gossamer_queue_dead_lettered_total", "counter", "deliveries moved to the dead-letter stream (this node, since start)", per(&|s| s.counters.dead_lettered));
        metric("gossamer_queue_stored", "gauge", "deliveries kept in NOTIFY", per(&|s| s.stored));
        metric("gossamer_queue_pending", "gauge", "deliveries not yet handed to a subscriber", per(&|s| s.pending));
        metric("gossamer_queue_ack_pending", "gauge", "deliveries waiting for an ack", per(&|s| s.ack_pending));
        metric("gossamer_queue_redelivered", "gauge", "deliveries handed out more than once", per(&|s| s.redelivered));
        metric("gossamer_queue_acked", "gauge", "deliveries acked", per(&|s| s.acked));
        metric("gossamer_queue_backlog", "gauge", "shard-log messages the queue has not read", per(&|s| s.backlog));
    }
    if let Some(b) = &node.backups {
        let node_label = format!("node=\"{n}\"");
        let jobs = b.jobs();
        let count = |action: &str, state: gossamer_backup::JobState| {
            jobs.iter().filter(|j| j.action == action && j.state == state).count() as u64
        };
        use gossamer_backup::JobState::{Done, Failed, Running};
        let by_state = |action: &str| {
            [("running", Running), ("done", Done), ("failed", Failed)]
                .into_iter()
                .map(|(label, st)| (format!("{node_label},action=\"{action}\",state=\"{label}\""), count(action, st)))
                .collect::<Vec<_>>()
        };
        let mut samples = by_state("create");
        samples.extend(by_state("verify"));
        samples.extend(by_state("restore"));
        metric("gossamer_backup_jobs", "gauge", "backup, verify and restore jobs since start, by state", samples);
        let last_ok = jobs
            .iter()
            .filter(|j| j.action == "create" && j.state == Done)
            .filter_map(|j| j.finished_at.as_deref())
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp() as u64)
            .max()
            .unwrap_or(0);
        metric("gossamer_backup_last_success_seconds", "gauge", "Unix time of the last backup made since start (0: none)", vec![(node_label, last_ok)]);
    }
    let store = node.store.clone();
    let sled = web::block(move || store.size_on_disk()).await?;
    metric("gossamer_sled_bytes", "gauge", "bytes sled uses on disk", vec![(format!("node=\"{n}\""), sled)]);
    latency().render(n, &mut out);
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out))
}

fn queues(node: &NodeHandle) -> Result<&Arc<gossamer_queue::Queues>, ApiError> {
    node.queues.as_ref().ok_or_else(|| ApiError::Unavailable("this node does not run the queue role".into()))
}

/// `GET /api/v1/queues`: every queue with its figures.
#[utoipa::path(
    get,
    path = "/api/v1/queues",
    tag = "queues",
    summary = "Every queue with its figures",
    responses(
        (status = 200, description = "The queues", body = serde_json::Value),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn list_queues(node: Node) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "queues": queues(&node)?.list().await? })))
}

/// `POST /api/v1/queues` `{"name", "filter", "max_deliver", "ack_wait", "backoff",
/// "start"}`: defines a queue (201).
#[utoipa::path(
    post,
    path = "/api/v1/queues",
    tag = "queues",
    summary = "Define a notification queue",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"name\", \"filter\", \"max_deliver\" (5), \"ack_wait\" (30s), \"backoff\" ([]), \"start\" (now or RFC 3339)}"),
    responses(
        (status = 201, description = "The queue", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists or runs", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
async fn create_queue(node: Node, spec: web::Json<gossamer_queue::QueueSpec>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Created().json(queues(&node)?.create(spec.into_inner()).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/queues/{name}",
    tag = "queues",
    summary = "One queue and its figures",
    params(
        ("name" = String, Path, description = "A queue name"),
    ),
    responses(
        (status = 200, description = "The queue", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn get_queue(node: Node, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(queues(&node)?.get(&name).await?))
}

#[utoipa::path(
    put,
    path = "/api/v1/queues/{name}",
    tag = "queues",
    summary = "Change a queue's filter or delivery settings",
    params(
        ("name" = String, Path, description = "A queue name"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json", description = "Any of {\"filter\", \"max_deliver\", \"ack_wait\", \"backoff\"}"),
    responses(
        (status = 200, description = "The queue", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
async fn update_queue(node: Node, name: web::Path<String>, spec: web::Json<gossamer_queue::QueueUpdate>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(queues(&node)?.update(&name, spec.into_inner()).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/queues/{name}",
    tag = "queues",
    summary = "Remove a queue, its consumers and kept deliveries",
    params(
        ("name" = String, Path, description = "A queue name"),
    ),
    responses(
        (status = 200, description = "What was deleted", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
async fn delete_queue(node: Node, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    queues(&node)?.delete(&name).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": name.into_inner() })))
}

fn backups(node: &NodeHandle) -> Result<&Arc<gossamer_backup::Backups>, ApiError> {
    node.backups.as_ref().ok_or_else(|| ApiError::Unavailable("this node does not run the backup role".into()))
}

/// A JSON body that may be left out (then `T::default()`).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// `GET /api/v1/backups`: the backups in the store, oldest first, and the job running.
#[utoipa::path(
    get,
    path = "/api/v1/backups",
    tag = "backups",
    summary = "The backups in the store and the job running",
    responses(
        (status = 200, description = "The backups, oldest first", body = serde_json::Value),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn list_backups(node: Node) -> Result<HttpResponse, ApiError> {
    let b = backups(&node)?;
    Ok(HttpResponse::Ok().json(json!({ "store": b.location(), "backups": b.list().await?, "running": b.running() })))
}

/// `POST /api/v1/backups` `{"kind": "auto"|"full"|"incremental", "name": "..."}` (both
/// optional): starts a backup; 202 with the job to follow at `/api/v1/jobs/{id}`.
#[utoipa::path(
    post,
    path = "/api/v1/backups",
    tag = "backups",
    summary = "Start a backup (auto: incremental after the first)",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"kind\": \"auto\"|\"full\"|\"incremental\", \"name\": optional} (both optional)"),
    responses(
        (status = 202, description = "The job to follow at /api/v1/jobs/{id}", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists or runs", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
async fn create_backup(node: Node, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: gossamer_backup::CreateRequest = optional_body(&body)?;
    let job = backups(&node)?.create(req).await?;
    Ok(HttpResponse::Accepted().json(job))
}

#[utoipa::path(
    get,
    path = "/api/v1/backups/{id}",
    tag = "backups",
    summary = "A backup's manifest",
    params(
        ("id" = String, Path, description = "A backup id"),
    ),
    responses(
        (status = 200, description = "The manifest", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn get_backup(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(backups(&node)?.manifest(&id).await?))
}

/// `POST /api/v1/backups/{id}/verify`: starts reading every file of the backup.
#[utoipa::path(
    post,
    path = "/api/v1/backups/{id}/verify",
    tag = "backups",
    summary = "Start reading every file of a backup against its manifest",
    params(
        ("id" = String, Path, description = "A backup id"),
    ),
    responses(
        (status = 202, description = "The job", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists or runs", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
async fn verify_backup(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(backups(&node)?.verify(&id).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    backup: String,
}

/// `POST /api/v1/restore` `{"backup": ID}`: restores the backup (and the ones it
/// continues) into this node, which must be empty.
#[utoipa::path(
    post,
    path = "/api/v1/restore",
    tag = "backups",
    summary = "Start restoring a backup (and the ones it continues) into this empty node",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"backup\": \"ID\"}"),
    responses(
        (status = 202, description = "The job", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Conflicts with what exists or runs", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
async fn restore_backup(node: Node, req: web::Json<RestoreRequest>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Accepted().json(backups(&node)?.restore(&req.backup).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "backups",
    summary = "Backup, verify and restore jobs since the node started",
    responses(
        (status = 200, description = "The jobs", body = serde_json::Value),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn list_jobs(node: Node) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(backups(&node)?.jobs()))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "backups",
    summary = "One job, its phase and progress",
    params(
        ("id" = String, Path, description = "A job id"),
    ),
    responses(
        (status = 200, description = "The job", body = serde_json::Value),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 503, description = "This node does not run the role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn get_job(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let job = backups(&node)?.job(&id).ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    Ok(HttpResponse::Ok().json(job))
}

/// `GET /api/v1/index`: how far the index is behind the shards.
#[utoipa::path(
    get,
    path = "/api/v1/index",
    tag = "admin",
    summary = "How far the index is behind the stored events",
    responses(
        (status = 200, description = "The index lag", body = serde_json::Value),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn index_state(node: Node) -> Result<HttpResponse, ApiError> {
    let Some(index) = &node.index else {
        return Err(ApiError::NotFound("this node does not run the index role".into()));
    };
    let st = index.send(gossamer_index_actor::GetState).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(st))
}

/// `POST /api/v1/admin/drain`: this node stops taking shards; the others place its
/// shards among themselves and catch up on them, while it goes on answering queries
/// (through the other replicas). `DELETE` takes its share back.
#[utoipa::path(
    post,
    path = "/api/v1/admin/drain",
    tag = "admin",
    summary = "Move this node's shards to the other members before it leaves",
    responses(
        (status = 202, description = "Draining: follow `replicas` of this node in GET /api/v1/cluster down to 0", body = serde_json::Value),
        (status = 409, description = "This node does not run the shard role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
async fn drain(node: Node) -> Result<HttpResponse, ApiError> {
    set_draining(&node, true).await
}

#[utoipa::path(
    delete,
    path = "/api/v1/admin/drain",
    tag = "admin",
    summary = "Take shards again after a drain",
    responses(
        (status = 202, description = "This node takes its share of shards again", body = serde_json::Value),
        (status = 409, description = "This node does not run the shard role", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
async fn undrain(node: Node) -> Result<HttpResponse, ApiError> {
    set_draining(&node, false).await
}

async fn set_draining(node: &NodeHandle, draining: bool) -> Result<HttpResponse, ApiError> {
    if !node.cfg.has_role("shard") {
        return Err(ApiError::Conflict("this node does not run the shard role, so it holds no shards to move".into()));
    }
    node.cluster.gossip.send(gossamer_gossip::SetShards(!draining)).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let held = node.cluster.held().len();
    Ok(HttpResponse::Accepted().json(json!({ "node": node.cfg.node_id, "draining": draining, "holds": held })))
}

/// `POST /api/v1/admin/reindex`: drops every shard's index and rebuilds it from the
/// shards' events; queries stay complete meanwhile (they scan what is not indexed).
#[utoipa::path(
    post,
    path = "/api/v1/admin/reindex",
    tag = "admin",
    summary = "Drop every shard's index and rebuild it",
    responses(
        (status = 202, description = "Reindexing has started", body = serde_json::Value),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
async fn reindex(node: Node) -> Result<HttpResponse, ApiError> {
    let Some(index) = &node.index else {
        return Err(ApiError::NotFound("this node does not run the index role".into()));
    };
    index.send(gossamer_index_actor::Reindex).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Accepted().json(json!({ "reindexing": true, "shards": node.shards.len() })))
}

#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "node",
    summary = "Liveness, node and version",
    responses(
        (status = 200, description = "The node answers", body = serde_json::Value),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn health(node: Node) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "node": node.cfg.node_id,
        "cluster": node.cfg.cluster,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Parses query text within the node's limits.
pub fn parse_query(limits: &gossamer_config::QueryLimits, q: &str) -> Result<gossamer_query::Expr, ApiError> {
    gossamer_query::parse_within(q, limits.max_query_bytes, limits.max_query_terms).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn parse_request(limits: &gossamer_config::QueryLimits, req: &QueryRequest) -> Result<SearchParams, ApiError> {
    let expr = parse_query(limits, &req.q)?;
    let range = TimeRange::parse(req.from.as_deref(), req.to.as_deref(), TimeRange::now()).map_err(ApiError::BadRequest)?;
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT.min(limits.max_page));
    let most = limits.max_page.min(MAX_LIMIT);
    if limit == 0 || limit > most {
        return Err(ApiError::BadRequest(format!("`limit` must be between 1 and {most} (query_limits.max_page), got {limit}")));
    }
    let cursor = req.cursor.as_deref().filter(|c| !c.is_empty()).map(Cursor::decode).transpose()?;
    Ok(SearchParams { expr, range, order: req.order.unwrap_or(Order::Desc), limit, cursor })
}

/// Query latency, per kind (search, count, aggregate), as a Prometheus histogram.
struct Latency {
    /// Per kind: counts per bucket (the last is +Inf), the sum in seconds, the count.
    kinds: std::sync::Mutex<BTreeMap<&'static str, (Vec<u64>, f64, u64)>>,
}

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

fn latency() -> &'static Latency {
    static L: std::sync::OnceLock<Latency> = std::sync::OnceLock::new();
    L.get_or_init(|| Latency { kinds: Default::default() })
}

impl Latency {
    fn observe(&self, kind: &'static str, seconds: f64) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let e = kinds.entry(kind).or_insert_with(|| (vec![0; LATENCY_BUCKETS.len() + 1], 0.0, 0));
        let i = LATENCY_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(LATENCY_BUCKETS.len());
        e.0[i] += 1;
        e.1 += seconds;
        e.2 += 1;
    }

    fn render(&self, node: &str, out: &mut String) {
        use std::fmt::Write;
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# HELP gossamer_query_seconds time to answer a search, count or aggregation\n# TYPE gossamer_query_seconds histogram");
        for (kind, (buckets, sum, count)) in kinds.iter() {
            let mut acc = 0;
            for (i, n) in buckets.iter().enumerate() {
                acc += n;
                let le = LATENCY_BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(out, "gossamer_query_seconds_bucket{{node=\"{node}\",kind=\"{kind}\",le=\"{le}\"}} {acc}");
            }
            let _ = writeln!(out, "gossamer_query_seconds_sum{{node=\"{node}\",kind=\"{kind}\"}} {sum}");
            let _ = writeln!(out, "gossamer_query_seconds_count{{node=\"{node}\",kind=\"{kind}\"}} {count}");
        }
    }
}

async fn run_search(node: &NodeHandle, req: QueryRequest) -> Result<serde_json::Value, ApiError> {
    let started = std::time::Instant::now();
    let answer = search_inner(node, req).await;
    latency().observe("search", started.elapsed().as_secs_f64());
    answer
}

async fn run_count(node: &NodeHandle, req: QueryRequest) -> Result<serde_json::Value, ApiError> {
    let started = std::time::Instant::now();
    let answer = count_inner(node, req).await;
    latency().observe("count", started.elapsed().as_secs_f64());
    answer
}

async fn run_aggregate(node: &NodeHandle, req: AggregateRequest) -> Result<serde_json::Value, ApiError> {
    let started = std::time::Instant::now();
    let answer = aggregate_inner(node, req).await;
    latency().observe("aggregate", started.elapsed().as_secs_f64());
    answer
}

async fn search_inner(node: &NodeHandle, req: QueryRequest) -> Result<serde_json::Value, ApiError> {
    // Checked here, so a bad query is a 400 before any node is asked.
    let params = parse_request(&node.cfg.query_limits, &req)?;
    let ask = cluster::Ask::Search {
        q: req.q.clone(),
        range: (params.range.from, params.range.to),
        order: params.order,
        limit: params.limit,
        cursor: params.cursor.map(|c| c.encode()),
    };
    let got = cluster::gather(node, &cluster::all_shards(node), ask).await?;
    let (events, next_cursor) = cluster::merge_search(got.answers, params.order, params.limit);
    Ok(json!(SearchResponse {
        events: events.iter().map(|e| e.to_json()).collect(),
        next_cursor,
        partial: !got.missing.is_empty(),
        missing_shards: got.missing,
    }))
}

async fn count_inner(node: &NodeHandle, req: QueryRequest) -> Result<serde_json::Value, ApiError> {
    let params = parse_request(&node.cfg.query_limits, &req)?;
    let ask = cluster::Ask::Count { q: req.q.clone(), range: (params.range.from, params.range.to) };
    let got = cluster::gather(node, &cluster::all_shards(node), ask).await?;
    let count = got.answers.iter().map(|a| if let cluster::Answer::Count(n) = a { *n } else { 0 }).sum();
    Ok(json!(CountResponse { count, partial: !got.missing.is_empty(), missing_shards: got.missing }))
}

async fn aggregate_inner(node: &NodeHandle, req: AggregateRequest) -> Result<serde_json::Value, ApiError> {
    // Checked here, so a bad query is a 400 before any node is asked.
    parse_query(&node.cfg.query_limits, &req.q)?;
    let range = TimeRange::parse(req.from.as_deref(), req.to.as_deref(), TimeRange::now()).map_err(ApiError::BadRequest)?;
    let mut spec = gossamer_query::AggSpec::parse(&req.func, req.field.as_deref(), req.by.as_deref(), req.bucket.as_deref())
        .map_err(ApiError::BadRequest)?;
    spec.max_groups = node.cfg.query_limits.max_groups;
    let ask = cluster::Ask::Aggregate {
        q: req.q.clone(),
        range: (range.from, range.to),
        func: req.func.clone(),
        field: req.field.clone(),
        by: req.by.clone(),
        bucket: req.bucket.clone(),
        max_groups: spec.max_groups,
    };
    let got = cluster::gather(node, &cluster::all_shards(node), ask).await?;
    let groups = cluster::merge_aggregates(got.answers).finish(&spec);
    Ok(json!(AggregateResponse { groups, partial: !got.missing.is_empty(), missing_shards: got.missing }))
}

#[utoipa::path(
    get,
    path = "/api/v1/search",
    tag = "query",
    summary = "Events matching a query, newest first, a page at a time",
    params(
        ("q" = Option<String>, Query, description = "A query in the search syntax; empty matches every event"),
        ("from" = Option<String>, Query, description = "Start of the time range: RFC 3339, Unix time or a duration back from now (1h)"),
        ("to" = Option<String>, Query, description = "End of the time range (exclusive)"),
        ("limit" = Option<usize>, Query, description = "Events per page (100 by default, at most query_limits.max_page)"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the page before"),
        ("order" = Option<String>, Query, description = "desc (newest first, the default) or asc"),
    ),
    responses(
        (status = 200, description = "A page of events and the cursor of the next", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn search(node: Node, req: web::Query<QueryRequest>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(run_search(&node, req.into_inner()).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/count",
    tag = "query",
    summary = "How many events match a query",
    params(
        ("q" = Option<String>, Query, description = "A query in the search syntax; empty matches every event"),
        ("from" = Option<String>, Query, description = "Start of the time range: RFC 3339, Unix time or a duration back from now (1h)"),
        ("to" = Option<String>, Query, description = "End of the time range (exclusive)"),
    ),
    responses(
        (status = 200, description = "The count", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn count(node: Node, req: web::Query<QueryRequest>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(run_count(&node, req.into_inner()).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/aggregate",
    tag = "query",
    summary = "count, sum, avg, min, max or a percentile, grouped and bucketed",
    params(
        ("q" = Option<String>, Query, description = "A query in the search syntax; empty matches every event"),
        ("from" = Option<String>, Query, description = "Start of the time range: RFC 3339, Unix time or a duration back from now (1h)"),
        ("to" = Option<String>, Query, description = "End of the time range (exclusive)"),
        ("fn" = String, Query, description = "count, sum, avg, min, max, p50, p95, p99 ..."),
        ("field" = Option<String>, Query, description = "The numeric field (all but count)"),
        ("by" = Option<String>, Query, description = "Comma-separated group keys: labels, stream, level, fields"),
        ("bucket" = Option<String>, Query, description = "Time bucket width: 30s, 1m, 1h, 1d"),
    ),
    responses(
        (status = 200, description = "The groups", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn aggregate(node: Node, req: web::Query<AggregateRequest>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(run_aggregate(&node, req.into_inner()).await?))
}

/// The body of `POST /api/v1/query` (and of a request on `gossamer.<cluster>.api.query`):
/// the search parameters; `"count": true` asks for the count instead, and `"fn"` (with
/// `field`, `by`, `bucket`) for an aggregation.
pub async fn answer_query(node: &NodeHandle, mut body: serde_json::Value) -> Result<serde_json::Value, ApiError> {
    let count = match body.as_object_mut().map(|o| o.remove("count")) {
        None => return Err(ApiError::BadRequest("the query body must be a JSON object".into())),
        Some(None) => false,
        Some(Some(serde_json::Value::Bool(b))) => b,
        Some(Some(_)) => return Err(ApiError::BadRequest("`count` must be true or false".into())),
    };
    if body.get("fn").is_some() {
        let request: AggregateRequest =
            serde_json::from_value(body).map_err(|e| ApiError::BadRequest(format!("invalid aggregation body: {e}")))?;
        return run_aggregate(node, request).await;
    }
    let request: QueryRequest =
        serde_json::from_value(body).map_err(|e| ApiError::BadRequest(format!("invalid query body: {e}")))?;
    if count {
        run_count(node, request).await
    } else {
        run_search(node, request).await
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/query",
    tag = "query",
    summary = "Search, count or aggregate with a JSON body",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"q\", \"from\", \"to\", \"limit\", \"cursor\", \"order\"} for a search; add \"count\": true, or \"fn\" with \"field\", \"by\", \"bucket\""),
    responses(
        (status = 200, description = "As GET /search, /count or /aggregate", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
async fn query(node: Node, body: web::Json<serde_json::Value>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(answer_query(&node, body.into_inner()).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/events/{id}",
    tag = "events",
    summary = "One event by id",
    params(
        ("id" = String, Path, description = "An event id (UUID)"),
    ),
    responses(
        (status = 200, description = "The event", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn get_event(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::BadRequest(format!("{:?} is not a UUID", id.as_str())))?;
    let got = cluster::gather(&node, &cluster::all_shards(&node), cluster::Ask::Get { id }).await?;
    let found = got.answers.into_iter().find_map(|a| if let cluster::Answer::Get(e) = a { e } else { None });
    if found.is_none() && !got.missing.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "no event with id {id} on the shards that answered; shards {:?} have no live replica",
            got.missing
        )));
    }
    match found {
        Some(e) => Ok(HttpResponse::Ok().json(e.to_json())),
        None => Err(ApiError::NotFound(format!("no event with id {id}"))),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/streams",
    tag = "streams",
    summary = "Streams with their event counts and retention, and the bytes on disk",
    responses(
        (status = 200, description = "The streams", body = serde_json::Value),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn streams(node: Node) -> Result<HttpResponse, ApiError> {
    let got = cluster::gather(&node, &cluster::all_shards(&node), cluster::Ask::StreamCounts).await?;
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for a in got.answers {
        if let cluster::Answer::StreamCounts(counts) = a {
            for (name, n) in counts {
                *totals.entry(name).or_default() += n;
            }
        }
    }
    let missing = got.missing;
    let (retentions, sled_bytes) = web::block(move || {
        Ok::<_, gossamer_storage::StorageError>((node.store.retentions()?, node.store.size_on_disk()))
    })
    .await?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let events: u64 = totals.values().sum();
    let mut names: Vec<&String> = totals.keys().chain(retentions.keys()).collect();
    names.sort();
    names.dedup();
    let list: Vec<serde_json::Value> = names
        .into_iter()
        .map(|name| {
            json!({
                "name": name,
                "events": totals.get(name).copied().unwrap_or(0),
                "retention": retentions.get(name).map(|ns| format_duration(*ns)),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "streams": list,
        "events": events,
        "partial": !missing.is_empty(),
        "missing_shards": missing,
        // Events, their id index and counters in sled; the NATS streams are apart.
        "sled_bytes": sled_bytes,
        "sled_bytes_per_event": if events > 0 { sled_bytes as f64 / events as f64 } else { 0.0 },
    })))
}

/// Nanoseconds as the largest whole unit: `7d`, `90m`, `15s`.
fn format_duration(ns: i64) -> String {
    const UNITS: [(i64, &str); 4] = [(86_400_000_000_000, "d"), (3_600_000_000_000, "h"), (60_000_000_000, "m"), (1_000_000_000, "s")];
    for (size, unit) in UNITS {
        if ns % size == 0 {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{}ms", ns / 1_000_000)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    /// `7d`, `12h`...; null clears it.
    max_age: Option<String>,
}

/// `PUT /api/v1/streams/{name}/retention`: sets the stream's max age and applies it at
/// once; from then on it is applied every `retention_every_secs`.
#[utoipa::path(
    put,
    path = "/api/v1/streams/{name}/retention",
    tag = "streams",
    summary = "Set or clear a stream's retention and apply it now",
    params(
        ("name" = String, Path, description = "A stream name"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"max_age\": \"7d\"} or {\"max_age\": null}"),
    responses(
        (status = 200, description = "The retention and how many events it deleted now", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
async fn set_retention(node: Node, name: web::Path<String>, body: web::Json<RetentionBody>) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    if !gossamer_schemas::event::is_valid_stream(&name) {
        return Err(ApiError::BadRequest(format!("invalid stream name {name:?}: dot-separated tokens of [A-Za-z0-9_-]")));
    }
    let max_age = match body.max_age.as_deref() {
        None => None,
        Some(s) => Some(gossamer_query::agg::parse_duration(s.trim()).ok_or_else(|| {
            ApiError::BadRequest(format!("invalid `max_age` {s:?}: use a duration like 90m, 12h, 7d"))
        })?),
    };
    let store = node.store.clone();
    let stream = name.clone();
    web::block(move || store.set_retention(&stream, max_age)).await?.map_err(|e| ApiError::Internal(e.to_string()))?;
    let deleted = crate::commands::apply_retention(&node).await?;
    Ok(HttpResponse::Ok().json(json!({
        "stream": name,
        "max_age": max_age.map(format_duration),
        "deleted": deleted,
    })))
}

/// Which shard holds the event with this id, if any.
async fn locate(node: &Node, id: uuid::Uuid) -> Result<Option<u32>, ApiError> {
    let shards = node.shards.clone();
    web::block(move || {
        for s in &shards {
            if s.get(&id)?.is_some() {
                return Ok(Some(s.shard()));
            }
        }
        Ok(None)
    })
    .await?
    .map_err(|e: gossamer_storage::StorageError| ApiError::Internal(e.to_string()))
}

fn parse_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("{id:?} is not a UUID")))
}

#[utoipa::path(
    delete,
    path = "/api/v1/events/{id}",
    tag = "events",
    summary = "Delete one event",
    params(
        ("id" = String, Path, description = "An event id (UUID)"),
    ),
    responses(
        (status = 200, description = "How many were deleted", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
    ),
)]
async fn delete_event(node: Node, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let shard = locate(&node, id).await?.ok_or_else(|| ApiError::NotFound(format!("no event with id {id}")))?;
    let n = crate::commands::run(&node, shard, &gossamer_schemas::ShardCommand::Delete { ids: vec![id] }).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": n })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    /// Label values to set; null removes the label.
    #[serde(default)]
    labels: BTreeMap<String, Option<String>>,
    /// Fields to set; null removes the field.
    #[serde(default)]
    fields: serde_json::Map<String, serde_json::Value>,
}

/// `PATCH /api/v1/events/{id}`: sets or removes labels and fields; answers the event
/// as it is now.
#[utoipa::path(
    patch,
    path = "/api/v1/events/{id}",
    tag = "events",
    summary = "Set or remove labels and fields of one event",
    params(
        ("id" = String, Path, description = "An event id (UUID)"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"labels\": {\"k\": \"v\" or null}, \"fields\": {\"k\": value or null}}"),
    responses(
        (status = 200, description = "The event as it is now", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
async fn update_event(node: Node, id: web::Path<String>, body: web::Json<serde_json::Value>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let body: UpdateBody = serde_json::from_value(body.into_inner())
        .map_err(|e| ApiError::BadRequest(format!("invalid update: {e}; expected {{\"labels\":{{\"k\":\"v\"|null}},\"fields\":{{...}}}}")))?;
    if body.labels.is_empty() && body.fields.is_empty() {
        return Err(ApiError::BadRequest("nothing to update: give `labels` and/or `fields`".into()));
    }
    let shard = locate(&node, id).await?.ok_or_else(|| ApiError::NotFound(format!("no event with id {id}")))?;
    let cmd = gossamer_schemas::ShardCommand::Update { id, labels: body.labels, fields: body.fields };
    crate::commands::run(&node, shard, &cmd).await?;
    let store = node.shards[shard as usize].clone();
    match web::block(move || store.get(&id)).await?.map_err(|e| ApiError::Internal(e.to_string()))? {
        Some(e) => Ok(HttpResponse::Ok().json(e.to_json())),
        None => Err(ApiError::NotFound(format!("event {id} was deleted meanwhile"))),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    q: String,
    from: Option<String>,
    to: Option<String>,
}

/// `POST /api/v1/delete` `{"q","from","to"}` -> `{"deleted":N}`.
#[utoipa::path(
    post,
    path = "/api/v1/delete",
    tag = "events",
    summary = "Delete every event matching a query",
    request_body(content = serde_json::Value, content_type = "application/json", description = "{\"q\": \"...\", \"from\": optional, \"to\": optional}"),
    responses(
        (status = 200, description = "How many were deleted", body = serde_json::Value),
        (status = 400, description = "Bad input: the error names it", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "A read token asked for a change", body = ErrorBody),
        (status = 413, description = "The body is over query_limits.max_body_bytes", body = ErrorBody),
    ),
)]
async fn delete_where(node: Node, body: web::Json<serde_json::Value>) -> Result<HttpResponse, ApiError> {
    let body: DeleteBody =
        serde_json::from_value(body.into_inner()).map_err(|e| ApiError::BadRequest(format!("invalid delete body: {e}")))?;
    if body.q.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "an empty query would delete every event: name what to delete (`stream:*` means everything)".into(),
        ));
    }
    parse_query(&node.cfg.query_limits, &body.q)?;
    let range =
        TimeRange::parse(body.from.as_deref(), body.to.as_deref(), TimeRange::now()).map_err(ApiError::BadRequest)?;
    let cmd = gossamer_schemas::ShardCommand::DeleteWhere { q: body.q, from: range.from, to: range.to };
    let n = crate::commands::run_everywhere(&node, &cmd).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": n })))
}

#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "node",
    summary = "Members, shards and their applied sequence and lag",
    responses(
        (status = 200, description = "The cluster as this node sees it", body = serde_json::Value),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
    ),
)]
async fn cluster(node: Node) -> Result<HttpResponse, ApiError> {
    let view = node.cluster.membership.borrow().clone();
    let map = node.cluster.map();
    let mut states = BTreeMap::new();
    for (s, addr) in node.cluster.held() {
        // A shard that moved away meanwhile has stopped: it is no longer this node's.
        if let Ok(st) = addr.send(gossamer_shard::GetState).await {
            states.insert(s, st);
        }
    }
    let shards = (0..node.cfg.shards)
        .map(|s| {
            let st = states.get(&s);
            ShardInfo {
                shard: s,
                replicas: map.replicas.get(s as usize).cloned().unwrap_or_default(),
                primary: map.primary(s).map(String::from),
                applied_seq: st.map(|st| st.applied_seq).unwrap_or(0),
                events: st.map(|st| st.events).unwrap_or(0),
                pending: st.map(|st| st.pending).unwrap_or(0),
                here: st.is_some(),
                caught_up: st.is_some_and(|st| st.caught_up),
            }
        })
        .collect();
    let members = view
        .members
        .iter()
        .map(|m| MemberInfo {
            node: m.node.clone(),
            state: serde_json::to_value(m.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            roles: if m.me {
                node.cfg.roles.clone()
            } else if m.shards {
                vec!["shard".into()]
            } else {
                vec![]
            },
            http: Some(m.http.clone()),
            draining: m.me && !m.shards && node.cfg.has_role("shard"),
            generation: m.gen,
            incarnation: m.incarnation,
            replicas: map.held_by(&m.node).len() as u32,
            primaries: (0..node.cfg.shards).filter(|s| map.primary(*s) == Some(m.node.as_str())).count() as u32,
            me: m.me,
        })
        .collect();
    let ingest = match &node.ingest {
        Some(a) => serde_json::to_value(a.send(gossamer_ingest::GetState).await.map_err(|e| ApiError::Internal(e.to_string()))?)
            .unwrap_or_default(),
        None => serde_json::Value::Null,
    };
    Ok(HttpResponse::Ok().json(ClusterInfo {
        cluster: node.cfg.cluster.clone(),
        shard_count: node.cfg.shards,
        replicas: node.cfg.replicas,
        members,
        shards,
        ingest,
    }))
}

#[cfg(test)]
mod tests {
    /// Every route the node serves is in the OpenAPI document, with its method, and the
    /// document describes nothing it does not serve.
    #[test]
    fn every_served_route_is_in_the_openapi_document() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let mut served: Vec<(String, String)> =
            super::API_ROUTES.iter().map(|(m, p)| (m.to_string(), format!("/api/v1{p}"))).collect();
        // Registered beside the scope in `bind`.
        served.push(("get".into(), "/metrics".into()));
        served.push(("get".into(), "/".into()));
        for (method, path) in &served {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} is served but not in the OpenAPI document");
        }
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                assert!(served.contains(&(method.clone(), path.clone())), "{method} {path} is documented but not served");
            }
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
