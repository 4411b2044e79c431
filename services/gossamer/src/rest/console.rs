//! The web console: one page, served at `/` (to a client asking for JSON only, the
//! Elasticsearch door's version document instead).

use actix_web::{HttpRequest, HttpResponse};

use crate::rest::common::Node;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(console))]
pub struct Api;

#[utoipa::path(
    get,
    path = "/",
    tag = "node",
    summary = "The web console (HTML)",
    responses(
        (status = 200, description = "The console page", body = serde_json::Value),
    ),
)]
pub async fn console(node: Node, req: HttpRequest) -> HttpResponse {
    // An Elasticsearch client asks for JSON: it gets the Elasticsearch door's answer.
    let accept = req.headers().get(actix_web::http::header::ACCEPT).and_then(|a| a.to_str().ok()).unwrap_or("");
    if accept.contains("json") && !accept.contains("html") {
        return crate::rest::elastic_api::info(&node);
    }
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("../../static/index.html"))
}
