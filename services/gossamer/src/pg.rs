//! The PostgreSQL door (`--pg ADDR`, off by default): SQL over the PostgreSQL wire
//! protocol (`pgwire`), so psql, psycopg, JDBC tools and Grafana's PostgreSQL data
//! source can query the table `logs`. It runs the same SQL as `POST /api/v1/sql`
//! (`service::sql`): the same table, limits and answers.
//!
//! Both query protocols are served: simple queries (psql) and parse/bind/execute with
//! `$1` parameters (drivers), results in text or binary. Transaction and session
//! statements (`BEGIN`, `COMMIT`, `ROLLBACK`, `SET`, `DISCARD`) are accepted and change
//! nothing, as drivers send them unasked; everything else that is not a query is
//! refused. With tokens set, the password is the read or the admin token (sent in
//! clear text: keep the door on a trusted network, there is no TLS on it). An answer
//! that lacks shards with no live replica comes with a warning naming them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit, UInt16Type, UInt32Type, UInt64Type, UInt8Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::PgWireBackendMessage;
use tracing::{info, warn};

use crate::error::ServiceError;
use crate::handle::NodeHandle;
use crate::service::sql::{self, Running};

/// Binds the door when the config asks for it; the returned task serves it until it is
/// aborted.
pub async fn start(node: Arc<NodeHandle>) -> anyhow::Result<Option<(std::net::SocketAddr, actix_rt::task::JoinHandle<()>)>> {
    use anyhow::Context as _;
    let Some(addr) = node.cfg.pg.clone() else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding the PostgreSQL door on {addr}"))?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "pg-listening");
    let door = Arc::new(Door { node: node.clone(), parser: Arc::new(NoopQueryParser::new()) });
    let task = actix_rt::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    warn!(error = %e, "pg-accept-failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handlers = Handlers(door.clone());
            actix_rt::spawn(async move {
                if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                    warn!(%peer, error = %e, "pg-connection-failed");
                }
            });
        }
    });
    Ok(Some((bound, task)))
}

struct Door {
    node: Arc<NodeHandle>,
    parser: Arc<NoopQueryParser>,
}

struct Handlers(Arc<Door>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let cfg = &self.0.node.cfg;
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.0 (Gossamer {})", env!("CARGO_PKG_VERSION"));
        let tokens: Vec<String> = [&cfg.read_token, &cfg.admin_token].into_iter().flatten().map(|t| t.0.clone()).collect();
        Arc::new(if tokens.is_empty() {
            Startup::Open(OpenStartup)
        } else {
            Startup::Password(CleartextPasswordAuthStartupHandler::new(Tokens(tokens), parameters))
        })
    }
}

/// No tokens: anyone who reaches the door may query, as on the REST API.
struct OpenStartup;

impl NoopStartupHandler for OpenStartup {}

/// The tokens a password may be.
#[derive(Debug)]
struct Tokens(Vec<String>);

#[async_trait]
impl AuthSource for Tokens {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        Err(PgWireError::InvalidPassword(login.user().unwrap_or_default().to_owned()))
    }

    async fn verify_password(&self, login: &LoginInfo, presented: &[u8]) -> PgWireResult<Option<()>> {
        use subtle::ConstantTimeEq;
        if self.0.iter().any(|t| bool::from(t.as_bytes().ct_eq(presented))) {
            Ok(None)
        } else {
            Err(PgWireError::InvalidPassword(login.user().unwrap_or_default().to_owned()))
        }
    }
}

/// The startup the config asks for: open, or a password that is a token.
enum Startup {
    Open(OpenStartup),
    Password(CleartextPasswordAuthStartupHandler<Tokens, DefaultServerParameterProvider>),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: pgwire::messages::PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Open(h) => h.on_startup(client, message).await,
            Startup::Password(h) => h.on_startup(client, message).await,
        }
    }
}

/// A statement drivers send that has nothing to do here, and the tag to answer it with.
fn session_statement(sql: &str) -> Option<Response> {
    let words: Vec<String> = sql.split_whitespace().take(2).map(|w| w.trim_end_matches(';').to_ascii_uppercase()).collect();
    let first = words.first()?.as_str();
    Some(match first {
        "BEGIN" => Response::TransactionStart(Tag::new("BEGIN")),
        "START" if words.get(1).is_some_and(|w| w == "TRANSACTION") => Response::TransactionStart(Tag::new("BEGIN")),
        "COMMIT" | "END" => Response::TransactionEnd(Tag::new("COMMIT")),
        "ROLLBACK" | "ABORT" => Response::TransactionEnd(Tag::new("ROLLBACK")),
        "SET" => Response::Execution(Tag::new("SET")),
        "DISCARD" => Response::Execution(Tag::new("DISCARD ALL")),
        _ => return None,
    })
}

/// A service error as the protocol's, with its SQLSTATE.
fn pg_error(e: ServiceError) -> PgWireError {
    let code = match &e {
        ServiceError::BadRequest(_) => "42601",
        ServiceError::Timeout(_) => "57014",
        ServiceError::ShardsMissing { .. } | ServiceError::Unavailable(_) => "57P03",
        _ => "XX000",
    };
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_owned(), code.to_owned(), e.to_string())))
}

/// The PostgreSQL type a column is sent as; what has none is sent as text.
fn pg_type(t: &DataType) -> Type {
    match t {
        DataType::Boolean => Type::BOOL,
        t if t.is_integer() => Type::INT8,
        t if t.is_floating() => Type::FLOAT8,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        _ => Type::TEXT,
    }
}

fn fields(schema: &datafusion::arrow::datatypes::Schema, format: &Format) -> Vec<FieldInfo> {
    schema.fields().iter().enumerate().map(|(i, f)| FieldInfo::new(f.name().clone(), None, None, pg_type(f.data_type()), format.format_for(i))).collect()
}

fn nanos(unit: &TimeUnit, v: i64) -> i64 {
    match unit {
        TimeUnit::Second => v.saturating_mul(1_000_000_000),
        TimeUnit::Millisecond => v.saturating_mul(1_000_000),
        TimeUnit::Microsecond => v.saturating_mul(1_000),
        TimeUnit::Nanosecond => v,
    }
}

fn integer(col: &dyn Array, row: usize) -> i64 {
    match col.data_type() {
        DataType::Int8 => col.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => col.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => col.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => col.as_primitive::<Int64Type>().value(row),
        DataType::UInt8 => col.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => col.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => col.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => i64::try_from(col.as_primitive::<UInt64Type>().value(row)).unwrap_or(i64::MAX),
        _ => 0,
    }
}

/// One batch as data rows.
fn rows(batch: &RecordBatch, schema: &Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    use datafusion::arrow::compute::cast;
    let api = |e: datafusion::arrow::error::ArrowError| PgWireError::ApiError(Box::new(e));
    let options = FormatOptions::default();
    // Floats and timestamps in one representation each: f64 and ns.
    let columns: Vec<Arc<dyn Array>> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Float16 | DataType::Float32 => cast(c, &DataType::Float64).map_err(api),
            DataType::Timestamp(unit, tz) if *unit != TimeUnit::Nanosecond => cast(c, &DataType::Timestamp(TimeUnit::Nanosecond, tz.clone())).map_err(api),
            DataType::Date64 => cast(c, &DataType::Date32).map_err(api),
            _ => Ok(c.clone()),
        })
        .collect::<PgWireResult<_>>()?;
    let text: Vec<Option<ArrayFormatter>> = columns
        .iter()
        .zip(schema.iter())
        .map(|(c, f)| if *f.datatype() == Type::TEXT { ArrayFormatter::try_new(c.as_ref(), &options).map(Some).map_err(api) } else { Ok(None) })
        .collect::<PgWireResult<_>>()?;
    let mut encoder = DataRowEncoder::new(schema.clone());
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        for (i, col) in columns.iter().enumerate() {
            if col.is_null(row) {
                encoder.encode_field(&None::<i64>)?;
                continue;
            }
            match col.data_type() {
                DataType::Boolean => encoder.encode_field(&col.as_boolean().value(row))?,
                t if t.is_integer() => encoder.encode_field(&integer(col.as_ref(), row))?,
                DataType::Float64 => encoder.encode_field(&col.as_primitive::<datafusion::arrow::datatypes::Float64Type>().value(row))?,
                DataType::Timestamp(unit, tz) => {
                    let ns = nanos(unit, col.as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>().value(row));
                    let at = chrono::DateTime::from_timestamp_nanos(ns);
                    if tz.is_some() {
                        encoder.encode_field(&SystemTime::from(at))?
                    } else {
                        encoder.encode_field(&at.naive_utc())?
                    }
                }
                DataType::Date32 => {
                    let days = col.as_primitive::<datafusion::arrow::datatypes::Date32Type>().value(row);
                    let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).and_then(|d| d.checked_add_signed(chrono::Duration::days(days.into())));
                    encoder.encode_field(&date)?
                }
                _ => {
                    let value = match &text[i] {
                        Some(f) => f.value(row).to_string(),
                        None => String::new(),
                    };
                    encoder.encode_field(&value)?
                }
            }
        }
        out.push(encoder.take_row());
    }
    Ok(out)
}

/// The rows of a running query, as the client reads them, within the time limit.
fn answer(running: Running, schema: Arc<Vec<FieldInfo>>, limit: Duration) -> QueryResponse {
    struct State {
        running: Running,
        schema: Arc<Vec<FieldInfo>>,
        started: Instant,
        limit: Duration,
        done: bool,
    }
    let state = State { running, schema: schema.clone(), started: Instant::now(), limit, done: false };
    let batches = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let rows = match st.running.next_batch(st.started, st.limit).await? {
            Ok(batch) => rows(&batch, &st.schema),
            Err(e) => Err(pg_error(e)),
        };
        st.done = rows.is_err();
        let items: Vec<PgWireResult<DataRow>> = match rows {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        Some((futures::stream::iter(items), st))
    });
    QueryResponse::new(schema, batches.flatten())
}

/// A bound parameter as SQL literal text: a number, TRUE or FALSE, NULL, or a quoted
/// string (which the engine coerces where the query needs a time or a number).
fn literal(portal: &Portal<String>, i: usize) -> PgWireResult<String> {
    let ty = portal.statement.parameter_types.get(i).cloned().flatten().unwrap_or(Type::UNKNOWN);
    fn text<T: ToString>(v: Option<T>) -> String {
        v.map_or_else(|| "NULL".to_string(), |v| v.to_string())
    }
    Ok(match ty {
        Type::INT2 => text(portal.parameter::<i16>(i, &ty)?),
        Type::INT4 => text(portal.parameter::<i32>(i, &ty)?),
        Type::INT8 => text(portal.parameter::<i64>(i, &ty)?),
        Type::FLOAT4 => text(portal.parameter::<f32>(i, &ty)?.filter(|v| v.is_finite())),
        Type::FLOAT8 => text(portal.parameter::<f64>(i, &ty)?.filter(|v| v.is_finite())),
        Type::BOOL => text(portal.parameter::<bool>(i, &ty)?.map(|b| if b { "TRUE" } else { "FALSE" })),
        _ => match portal.parameter::<String>(i, &Type::TEXT)? {
            Some(v) => format!("'{}'", v.replace('\'', "''")),
            None => "NULL".to_string(),
        },
    })
}

/// `sql` with each `$n` outside strings and comments replaced by `values[n - 1]`.
/// The engine plans `$n` only where it can tell its type; the values' own types (what
/// the driver sent) are known here, so the query is planned with them in place.
fn bind(sql: &str, values: &[String]) -> Result<String, String> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().map_err(|e| e.to_string())?;
    let line_starts: Vec<usize> = std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let offset = |at: Location| -> usize {
        let line = line_starts.get((at.line as usize).saturating_sub(1)).copied().unwrap_or(sql.len());
        sql[line..].char_indices().nth((at.column as usize).saturating_sub(1)).map_or(sql.len(), |(i, _)| line + i)
    };
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for t in &tokens {
        let Token::Placeholder(name) = &t.token else { continue };
        let Some(n) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) else { continue };
        let value = values.get(n.wrapping_sub(1)).ok_or_else(|| format!("parameter {name} has no value ({} given)", values.len()))?;
        let (from, to) = (offset(t.span.start), offset(t.span.end));
        out.push_str(&sql[copied..from]);
        out.push_str(value);
        copied = to;
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// How many `$n` parameters `sql` has (the highest n).
fn parameter_count(sql: &str) -> usize {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().unwrap_or_default();
    tokens
        .iter()
        .filter_map(|t| match t {
            Token::Placeholder(p) => p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// The query of a portal with its parameters in place.
fn bound(portal: &Portal<String>) -> PgWireResult<String> {
    let query = portal.statement.statement.trim().trim_end_matches(';').trim();
    if portal.parameter_len() == 0 {
        return Ok(query.to_string());
    }
    let values = (0..portal.parameter_len()).map(|i| literal(portal, i)).collect::<PgWireResult<Vec<_>>>()?;
    bind(query, &values).map_err(|e| pg_error(ServiceError::BadRequest(e)))
}

impl Door {
    /// Plans and starts `query`.
    async fn run(&self, query: &str) -> PgWireResult<Running> {
        let limit = sql::timeout(&self.node);
        tokio::time::timeout(limit, sql::start(&self.node, query)).await.map_err(|_| pg_error(sql::timed_out(limit)))?.map_err(pg_error)
    }

    /// The columns `query` answers with, without running it.
    async fn columns(&self, query: &str, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
        if session_statement(query).is_some() {
            return Ok(Vec::new());
        }
        let planned = sql::plan(&self.node, query).await.map_err(pg_error)?;
        Ok(fields(planned.frame.schema().as_arrow(), format))
    }
}

/// Warns the client when shards were missing from the answer so far.
async fn warn_missing<C>(client: &mut C, missing: Vec<u32>) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if !missing.is_empty() {
        let text = format!("the answer is partial: shards {missing:?} have no live replica, their events are missing");
        client.send(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(ErrorInfo::new("WARNING".into(), "01000".into(), text)))).await?;
    }
    Ok(())
}

#[async_trait]
impl SimpleQueryHandler for Door {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let query = query.trim().trim_end_matches(';').trim();
        if let Some(r) = session_statement(query) {
            return Ok(vec![r]);
        }
        let running = self.run(query).await?;
        warn_missing(client, running.missing.shards()).await?;
        let schema = Arc::new(fields(running.stream.schema().as_ref(), &Format::UnifiedText));
        Ok(vec![Response::Query(answer(running, schema, sql::timeout(&self.node)))])
    }
}

#[async_trait]
impl ExtendedQueryHandler for Door {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_describe_statement<C>(&self, _client: &mut C, stmt: &StoredStatement<String>) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = String>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let query = stmt.statement.trim().trim_end_matches(';').trim();
        let mut params: Vec<Type> = stmt.parameter_types.iter().map(|t| t.clone().unwrap_or(Type::TEXT)).collect();
        let count = parameter_count(query);
        params.resize(params.len().max(count), Type::TEXT);
        // The columns, planned with every parameter NULL: their values come later.
        let planned = bind(query, &vec!["NULL".to_string(); count]).map_err(|e| pg_error(ServiceError::BadRequest(e)))?;
        Ok(DescribeStatementResponse::new(params, self.columns(&planned, &Format::UnifiedBinary).await?))
    }

    async fn do_describe_portal<C>(&self, _client: &mut C, portal: &Portal<String>) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = String>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(DescribePortalResponse::new(self.columns(&bound(portal)?, &portal.result_column_format).await?))
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<String>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = String>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let query = bound(portal)?;
        if let Some(r) = session_statement(&query) {
            return Ok(r);
        }
        let running = self.run(&query).await?;
        warn_missing(client, running.missing.shards()).await?;
        let schema = Arc::new(fields(running.stream.schema().as_ref(), &portal.result_column_format));
        Ok(Response::Query(answer(running, schema, sql::timeout(&self.node))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_put_in_place_outside_strings_and_comments() {
        let values = ["'it''s'".to_string(), "5".to_string()];
        assert_eq!(bind("SELECT $1, '$2', $2 -- $1", &values).unwrap(), "SELECT 'it''s', '$2', 5 -- $1");
        assert_eq!(bind("SELECT *\nFROM logs WHERE level = $1\n  AND n > $2", &values).unwrap(), "SELECT *\nFROM logs WHERE level = 'it''s'\n  AND n > 5");
        assert_eq!(bind("SELECT 'ünï' || $1", &values).unwrap(), "SELECT 'ünï' || 'it''s'");
        assert!(bind("SELECT $3", &values).unwrap_err().contains("$3 has no value"));
        assert_eq!(parameter_count("SELECT $2, '$7', $1"), 2);
    }

    #[test]
    fn driver_statements_are_answered_without_the_engine() {
        assert!(matches!(session_statement("begin"), Some(Response::TransactionStart(_))));
        assert!(matches!(session_statement("START TRANSACTION READ ONLY"), Some(Response::TransactionStart(_))));
        assert!(matches!(session_statement("COMMIT;"), Some(Response::TransactionEnd(_))));
        assert!(matches!(session_statement("SET extra_float_digits = 3"), Some(Response::Execution(_))));
        assert!(session_statement("SELECT 1").is_none());
        assert!(session_statement("STARTLE").is_none());
    }
}
