//! The REST server: the layers every request goes through (authorization, body and
//! query limits, every framework rejection as a JSON error, even those made before the
//! application sees the request), the route table, and TLS.

use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, ResponseError};

use crate::error::ErrorCode;
use crate::handle::NodeHandle;
use crate::rest::error::ApiError;
use crate::rest::rejections::JsonRejections;
use crate::rest::{
    admin_api, auth, backups_api, cluster_api, console, elastic_api, events_api, export_api, loki_api, loki_query, loki_tail, metrics, openapi, queues_api, search_api, sql_api,
    streams_api, tail, tls,
};

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
    get "/health" => cluster_api::health,
    get "/cluster" => cluster_api::cluster,
    get "/search" => search_api::search,
    get "/count" => search_api::count,
    get "/aggregate" => search_api::aggregate,
    post "/query" => search_api::query,
    get "/events/{id}" => events_api::get_event,
    delete "/events/{id}" => events_api::delete_event,
    patch "/events/{id}" => events_api::update_event,
    post "/delete" => events_api::delete_where,
    get "/streams" => streams_api::streams,
    put "/streams/{name}/retention" => streams_api::set_retention,
    get "/index" => admin_api::index_state,
    post "/admin/reindex" => admin_api::reindex,
    post "/admin/drain" => admin_api::drain,
    delete "/admin/drain" => admin_api::undrain,
    get "/backups" => backups_api::list_backups,
    post "/backups" => backups_api::create_backup,
    get "/backups/{id}" => backups_api::get_backup,
    post "/backups/{id}/verify" => backups_api::verify_backup,
    post "/restore" => backups_api::restore_backup,
    get "/queues" => queues_api::list_queues,
    post "/queues" => queues_api::create_queue,
    get "/queues/{name}" => queues_api::get_queue,
    put "/queues/{name}" => queues_api::update_queue,
    delete "/queues/{name}" => queues_api::delete_queue,
    get "/tail" => tail::tail,
    get "/jobs" => backups_api::list_jobs,
    get "/jobs/{id}" => backups_api::get_job,
    get "/openapi.json" => openapi::openapi,
    get "/export" => export_api::export,
    post "/sql" => sql_api::sql_query,
}

/// Bodies of the ingest doors (a shipper's bulk or push) may be far larger than an API
/// request's; each is still cut into messages within the ingest limits.
const INGEST_BODY_BYTES: usize = 64 << 20;

fn ingest_body() -> web::PayloadConfig {
    web::PayloadConfig::default().limit(INGEST_BODY_BYTES)
}

/// The application: every route, behind the layers every request goes through.
fn app(
    data: web::Data<Arc<NodeHandle>>,
    max_body: usize,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(data)
        .app_data(web::JsonConfig::default().limit(max_body).error_handler(move |err, _| {
            use actix_web::error::JsonPayloadError;
            let e = match &err {
                JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::new(ErrorCode::TooLarge, format!("the request body is over the {max_body}-byte limit (query_limits.max_body_bytes)"))
                }
                _ => ApiError::bad_request(format!("invalid JSON body: {err}")),
            };
            actix_web::error::InternalError::from_response(err, e.error_response()).into()
        }))
        .app_data(web::PayloadConfig::default().limit(max_body))
        .wrap(actix_web::middleware::from_fn(auth::authorize))
        .app_data(web::QueryConfig::default().error_handler(|err, _| {
            let msg = format!("invalid query parameters: {err}");
            actix_web::error::InternalError::from_response(err, ApiError::bad_request(msg).error_response()).into()
        }))
        .app_data(web::PathConfig::default().error_handler(|err, _| {
            let msg = format!("invalid path: {err}");
            actix_web::error::InternalError::from_response(err, ApiError::bad_request(msg).error_response()).into()
        }))
        .route("/", web::get().to(console::console))
        .route("/metrics", web::get().to(metrics::metrics))
        // The Loki door (its API is Loki's, so not in the OpenAPI document).
        .service(web::resource("/loki/api/v1/push").app_data(ingest_body()).route(web::post().to(loki_api::push)))
        .service(web::resource("/loki/api/v1/query_range").route(web::get().to(loki_query::query_range)).route(web::post().to(loki_query::query_range)))
        .service(web::resource("/loki/api/v1/query").route(web::get().to(loki_query::query)).route(web::post().to(loki_query::query)))
        .service(web::resource("/loki/api/v1/labels").route(web::get().to(loki_query::labels)).route(web::post().to(loki_query::labels)))
        .service(
            web::resource("/loki/api/v1/label/{name}/values")
                .route(web::get().to(loki_query::label_values))
                .route(web::post().to(loki_query::label_values)),
        )
        .service(web::resource("/loki/api/v1/series").route(web::get().to(loki_query::series)).route(web::post().to(loki_query::series)))
        .route("/loki/api/v1/tail", web::get().to(loki_tail::tail))
        .service(web::resource("/loki/api/v1/index/stats").route(web::get().to(loki_query::index_stats)).route(web::post().to(loki_query::index_stats)))
        // The Elasticsearch door (its API is Elasticsearch's, so not in the OpenAPI document).
        .route("/", web::head().to(elastic_api::ping))
        .service(web::resource("/_bulk").app_data(ingest_body()).route(web::post().to(elastic_api::bulk)).route(web::put().to(elastic_api::bulk)))
        .route("/_cat/health", web::get().to(elastic_api::cat_health))
        .service(
            web::resource("/{index}/_bulk")
                .app_data(ingest_body())
                .route(web::post().to(elastic_api::bulk_into))
                .route(web::put().to(elastic_api::bulk_into)),
        )
        .service(api_scope())
        .default_service(web::to(|| async { ApiError::not_found("no such route").error_response() }))
}

/// HTTP/1.1 over any connection `T` (the wrapped TCP or TLS stream), with the
/// timeouts and keep-alive actix-web's `HttpServer` uses by default.
fn http_service<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static>(
    data: web::Data<Arc<NodeHandle>>,
    max_body: usize,
    addr: std::net::SocketAddr,
    stopping: actix_server::GracefulShutdownSignal,
) -> impl actix_service::ServiceFactory<
    (T, Option<std::net::SocketAddr>),
    Config = (),
    Response = (),
    Error = actix_http::error::DispatchError,
    InitError = (),
> {
    use actix_service::{map_config, IntoServiceFactory};
    let app = app(data, max_body).into_factory();
    actix_http::HttpService::build()
        // Idle keep-alive connections close when the server stops.
        .graceful_shutdown_signal(move || {
            let stopping = stopping.clone();
            async move { stopping.notified().await }
        })
        .keep_alive(actix_http::KeepAlive::default())
        .client_request_timeout(std::time::Duration::from_secs(5))
        .client_disconnect_timeout(std::time::Duration::from_secs(1))
        .h1_allow_half_closed(true)
        .local_addr(addr)
        // The application reads no host or scheme from its config (no URL generation).
        .h1(map_config(app, |_| actix_web::dev::AppConfig::default()))
}

/// Binds the API on `listener` and returns the server to await, with the address it
/// got. Each connection is wrapped in [`JsonRejections`], so even what actix-http
/// refuses before the application sees it gets the API's error form.
pub fn bind(node: Arc<NodeHandle>, listener: std::net::TcpListener) -> anyhow::Result<(Server, std::net::SocketAddr)> {
    use actix_service::ServiceFactoryExt;
    let addr = listener.local_addr()?;
    let max_body = node.cfg.query_limits.max_body_bytes;
    let tls = match (&node.cfg.http_tls_cert, &node.cfg.http_tls_key) {
        (Some(cert), Some(key)) => Some(tls::tls_config(cert, key)?),
        _ => None,
    };
    let data = web::Data::new(node);
    let builder = actix_server::Server::build().workers(2);
    let stopping = builder.graceful_shutdown_signal();
    let builder = match tls {
        Some(config) => builder.listen("gossamer-api", listener, move || {
            actix_tls::accept::rustls_0_23::Acceptor::new(config.clone())
                .map_init_err(|_| ())
                .map_err(|e| tracing::debug!(error = ?e, "tls-handshake-failed"))
                .map(|io: actix_tls::accept::rustls_0_23::TlsStream<actix_rt::net::TcpStream>| {
                    let peer = io.get_ref().0.peer_addr().ok();
                    (JsonRejections::new(io), peer)
                })
                .and_then(http_service(data.clone(), max_body, addr, stopping.clone()).map_err(|e| tracing::debug!(error = %e, "http-connection-failed")).map_init_err(|_| ()))
        }),
        None => builder.listen("gossamer-api", listener, move || {
            actix_service::fn_service(|io: actix_rt::net::TcpStream| async move {
                let peer = io.peer_addr().ok();
                Ok::<_, ()>((JsonRejections::new(io), peer))
            })
            .and_then(http_service(data.clone(), max_body, addr, stopping.clone()).map_err(|e| tracing::debug!(error = %e, "http-connection-failed")).map_init_err(|_| ()))
        }),
    }
    .map_err(|e| anyhow::anyhow!("binding the HTTP API on {addr}: {e}"))?;
    Ok((builder.run(), addr))
}

#[cfg(test)]
mod tests {
    /// Every route the node serves is in the OpenAPI document, with its method, and the
    /// document describes nothing it does not serve.
    #[test]
    fn every_served_route_is_in_the_openapi_document() {
        let doc = serde_json::to_value(crate::rest::openapi::document()).unwrap();
        let mut served: Vec<(String, String)> =
            super::API_ROUTES.iter().map(|(m, p)| (m.to_string(), format!("/api/v1{p}"))).collect();
        // Registered beside the scope in `app`.
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