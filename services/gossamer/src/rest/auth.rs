//! Tokens, as a layer in front of every route: 401 without a valid one (`Bearer`, or
//! `Basic` with the token as the password), 403 when a read token asks for a change.
//! The token is never logged.

use actix_web::ResponseError;

use crate::error::ErrorCode;
use crate::rest::common::Node;
use crate::rest::error::ApiError;

/// What a request needs: nothing (the console page), a read token, or the admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    Open,
    Read,
    Admin,
}

fn required(method: &actix_web::http::Method, path: &str) -> Access {
    use actix_web::http::Method;
    if path.starts_with("/loki/") {
        // Only a push changes what is stored; Loki's queries may come as POST forms.
        return if path == "/loki/api/v1/push" { Access::Admin } else { Access::Read };
    }
    if crate::rest::elastic_api::is_elastic_path(path) {
        // Bulk ingest changes what is stored; the health line is a read.
        return if *method == Method::GET || *method == Method::HEAD { Access::Read } else { Access::Admin };
    }
    if !path.starts_with("/api/") && path != "/metrics" {
        return Access::Open;
    }
    if *method == Method::GET || *method == Method::HEAD || (*method == Method::POST && (path == "/api/v1/query" || path == "/api/v1/sql")) {
        Access::Read
    } else {
        Access::Admin
    }
}

/// The token a request carries: `Bearer <token>`, or `Basic` with the token as the
/// password (what Grafana and log shippers can send).
fn token_of(header: &str) -> Option<String> {
    use base64::Engine;
    if let Some(t) = header.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let encoded = header.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, password)| password.to_string())
}

/// Checks the token against the configured ones, in constant time (`subtle`).
fn granted(cfg: &gossamer_config::Config, header: Option<&str>) -> Result<Access, ApiError> {
    use subtle::ConstantTimeEq;
    let Some(given) = header.and_then(token_of) else {
        return Err(ApiError::new(ErrorCode::Unauthorized, "this API needs a bearer token: Authorization: Bearer <token>"));
    };
    let given = given.as_str();
    let same = |t: &Option<gossamer_config::Secret>| t.as_ref().is_some_and(|t| bool::from(t.0.as_bytes().ct_eq(given.as_bytes())));
    if same(&cfg.admin_token) {
        Ok(Access::Admin)
    } else if same(&cfg.read_token) {
        Ok(Access::Read)
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, "the bearer token is not valid"))
    }
}

/// Bearer tokens, when configured: 401 without a valid one, 403 when a read token asks
/// for a change. The token is never logged.
pub async fn authorize(
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
                    Ok(_) => Err(ApiError::new(ErrorCode::Forbidden, "the read token cannot change anything: use the admin token")),
                    Err(e) => Err(e),
                }
            }
        }
        _ => Ok(()),
    };
    match verdict {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        // The Elasticsearch door's clients read Elasticsearch's error shape.
        Err(e) if crate::rest::elastic_api::is_elastic_path(req.path()) => {
            let answer = crate::rest::elastic_api::error_response(e.code.http_status(), "security_exception", &e.message);
            Ok(req.into_response(answer).map_into_right_body())
        }
        Err(e) => Ok(req.into_response(e.error_response()).map_into_right_body()),
    }
}
