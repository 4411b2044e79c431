//! The query service's errors: what went wrong, in the domain's words. Each has a
//! neutral [`ErrorCode`]; the code is turned into a transport's code in one place
//! ([`ErrorCode::http_status`]), which the REST door, the NATS door and the node-to-node
//! transport all use.

/// A transport-neutral error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request cannot be answered as asked: a query that does not parse, a bad
    /// parameter, a limit crossed.
    BadRequest,
    NotFound,
    /// Conflicts with what exists or runs.
    Conflict,
    /// The cluster cannot answer now (no live replica, the bus refused, a role missing).
    Unavailable,
    /// Waited too long for a part of the cluster.
    Timeout,
    /// The request itself is too large for the door: its body, its URI, its headers.
    TooLarge,
    UriTooLong,
    HeadersTooLarge,
    Unauthorized,
    Forbidden,
    Internal,
}

impl ErrorCode {
    /// The HTTP status of a code (also the `status` of a NATS error reply, and what the
    /// node-to-node transport carries).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UriTooLong => 414,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::Internal => 500,
            // A timeout waiting for the cluster is still "try again later".
            ErrorCode::Unavailable | ErrorCode::Timeout => 503,
        }
    }

    /// The code an HTTP status stands for (for answers that travelled as a status).
    pub fn from_http_status(status: u16) -> Self {
        match status {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::TooLarge,
            414 => ErrorCode::UriTooLong,
            431 => ErrorCode::HeadersTooLarge,
            503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// What the query service, the commands and the cluster transport can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A query that does not parse, a bad parameter, a limit crossed: nothing was asked
    /// of any shard.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Shards with no live replica that answered (a get by id that did not find its
    /// event on the others).
    #[error("{message}")]
    ShardsMissing { shards: Vec<u32>, message: String },
    /// The bus or a role this node lacks.
    #[error("{0}")]
    Unavailable(String),
    /// A command not confirmed in time (it stays in the log and is applied later).
    #[error("{0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ServiceError::BadRequest(_) => ErrorCode::BadRequest,
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::Conflict(_) => ErrorCode::Conflict,
            ServiceError::ShardsMissing { .. } | ServiceError::Unavailable(_) => ErrorCode::Unavailable,
            ServiceError::Timeout(_) => ErrorCode::Timeout,
            ServiceError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The error another node sent as a code and its message.
    pub fn from_code(code: ErrorCode, message: String) -> Self {
        match code {
            ErrorCode::BadRequest => ServiceError::BadRequest(message),
            ErrorCode::NotFound => ServiceError::NotFound(message),
            ErrorCode::Conflict => ServiceError::Conflict(message),
            ErrorCode::Unavailable => ServiceError::Unavailable(message),
            ErrorCode::Timeout => ServiceError::Timeout(message),
            _ => ServiceError::Internal(message),
        }
    }

    /// The message as the transports show it (an internal error says so).
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl From<gossamer_query::QueryError> for ServiceError {
    fn from(e: gossamer_query::QueryError) -> Self {
        use gossamer_query::QueryError as Q;
        match e {
            Q::BadRequest(m) => ServiceError::BadRequest(m),
            Q::Storage(s) => ServiceError::Internal(s.to_string()),
            Q::Index(s) => ServiceError::Internal(format!("index: {s}")),
        }
    }
}

impl From<gossamer_storage::StorageError> for ServiceError {
    fn from(e: gossamer_storage::StorageError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl From<gossamer_backup::BackupError> for ServiceError {
    fn from(e: gossamer_backup::BackupError) -> Self {
        use gossamer_backup::BackupError as B;
        match e {
            B::BadRequest(m) => ServiceError::BadRequest(m),
            B::NotFound(m) => ServiceError::NotFound(m),
            B::Conflict(m) => ServiceError::Conflict(m),
            B::Internal(e) => ServiceError::Internal(format!("{e:#}")),
        }
    }
}

impl From<gossamer_queue::QueueError> for ServiceError {
    fn from(e: gossamer_queue::QueueError) -> Self {
        use gossamer_queue::QueueError as Q;
        match e {
            Q::BadRequest(m) => ServiceError::BadRequest(m),
            Q::NotFound(m) => ServiceError::NotFound(m),
            Q::Conflict(m) => ServiceError::Conflict(m),
            Q::Internal(e) => ServiceError::Internal(format!("{e:#}")),
        }
    }
}

impl From<tokio::task::JoinError> for ServiceError {
    fn from(e: tokio::task::JoinError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl From<actix::MailboxError> for ServiceError {
    fn from(e: actix::MailboxError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

/// Runs blocking work (sled) on the blocking pool.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ServiceError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}
