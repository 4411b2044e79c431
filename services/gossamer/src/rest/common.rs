//! What the REST handlers share: the node as actix data, an optional JSON body, ids.

use std::sync::Arc;

use actix_web::web;

use crate::handle::NodeHandle;
use crate::rest::error::ApiError;

/// The running node, as every handler gets it.
pub type Node = web::Data<Arc<NodeHandle>>;

/// A JSON body that may be left out (then `T::default()`).
pub fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}
