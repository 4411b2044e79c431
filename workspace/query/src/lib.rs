//! The query model: the §9 text syntax parsed into an expression, matched against
//! events, and run over a node's shard stores (search with paging in time order or any
//! keys' order, count, aggregations).

pub mod agg;
pub mod ast;
pub mod exec;
pub mod fuzzing;
pub mod parse;
pub mod plan;
pub mod sort;
pub mod timerange;

pub use agg::{aggregate, AggFn, AggSpec, Aggregation};
pub use ast::{CmpOp, Expr, Term, ValueOp};
pub use exec::{count, get_by_id, search, SearchPage, SearchParams};
pub use parse::{parse, parse_within, ParseError};
pub use sort::{search_sorted, Sort, SortCursor};
pub use timerange::{parse_time, TimeRange};

/// Errors a query can answer with; each maps to a 4xx or a 5xx at the REST boundary.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The request is wrong: 400.
    #[error("{0}")]
    BadRequest(String),
    /// Storage failed: 500.
    #[error(transparent)]
    Storage(#[from] gossamer_storage::StorageError),
    /// The index could not be read: 500 (the index actor rebuilds a damaged one).
    #[error("index: {0}")]
    Index(String),
}

impl From<ParseError> for QueryError {
    fn from(e: ParseError) -> Self {
        QueryError::BadRequest(e.to_string())
    }
}
