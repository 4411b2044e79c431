//! The OpenAPI document, made by utoipa from the handlers' `#[utoipa::path]`
//! annotations in each API module.

use actix_web::HttpResponse;
use gossamer_schemas::api::ErrorBody;

use crate::rest::{
    admin_api, backups_api, cluster_api, console, events_api, export_api, metrics, sql_api, queues_api, search_api, streams_api, tail,
};

/// The document's own part: its title and description, this route, the error body.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Gossamer", description = "The REST API of a Gossamer node: search, events, streams, queues, backups, administration. Every /api route and /metrics take `Authorization: Bearer <token>` when the node has tokens."),
    paths(openapi),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The whole document: this part merged with each API module's own, and the bearer
/// scheme.
pub fn document() -> utoipa::openapi::OpenApi {
    use utoipa::{Modify, OpenApi};
    let mut doc = ApiDoc::openapi();
    for part in [
        cluster_api::Api::openapi(),
        search_api::Api::openapi(),
        events_api::Api::openapi(),
        export_api::Api::openapi(),
        sql_api::Api::openapi(),
        streams_api::Api::openapi(),
        admin_api::Api::openapi(),
        backups_api::Api::openapi(),
        queues_api::Api::openapi(),
        tail::Api::openapi(),
        metrics::Api::openapi(),
        console::Api::openapi(),
    ] {
        doc.merge(part);
    }
    BearerAuth.modify(&mut doc);
    doc
}

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
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(document())
}
