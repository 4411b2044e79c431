//! The web console: one page, served at `/`.

use actix_web::HttpResponse;

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
pub async fn console() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("../../static/index.html"))
}
