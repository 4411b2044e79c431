//! The REST door's errors: every one, the service's and the HTTP layer's own (a bad
//! token, a body too large, a query string too long, a framework rejection), is
//! `{"error": "..."}` with the status of its [`ErrorCode`].

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use gossamer_schemas::api::ErrorBody;

use crate::error::{ErrorCode, ServiceError};

/// An error as the REST door answers it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        ServiceError::Internal(message.to_string()).into()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        Self { code: e.error_code(), message: e.message() }
    }
}

impl From<gossamer_queue::QueueError> for ApiError {
    fn from(e: gossamer_queue::QueueError) -> Self {
        ServiceError::from(e).into()
    }
}

impl From<gossamer_backup::BackupError> for ApiError {
    fn from(e: gossamer_backup::BackupError) -> Self {
        ServiceError::from(e).into()
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ServiceError::from(e).into()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody { error: self.message.clone() })
    }
}
