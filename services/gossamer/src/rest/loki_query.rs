//! The Loki door, read side, for Grafana's Loki data source, Explore and Loki's read
//! clients: `query_range`, `query`, `labels`, `label/<name>/values`, `series` and
//! `index/stats` under `/loki/api/v1/`, as GET or as a POST form, answering Loki's
//! shapes (`streams`, `matrix`, `vector`, `scalar`). The queries are LogQL, answered by
//! the query service (`service::logql`); an error is a 400 in text, as Loki gives it,
//! and shards without a live replica are named in `warnings`.

use std::collections::BTreeMap;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use gossamer_query::TimeRange;
use gossamer_schemas::api::Order;
use serde_json::{json, Value};

use crate::rest::common::Node;
use crate::service::logql::{self, eval::MAX_ENTRIES, Answer, Eval, EvalError, Query};

const HOUR: i64 = 3_600_000_000_000;

/// The parameters of a request: the query string's, then a form body's.
struct Params(Vec<(String, String)>);

impl Params {
    fn of(req: &HttpRequest, body: &[u8]) -> Result<Self, HttpResponse> {
        let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string()).map_err(|e| text(400, format!("invalid query string: {e}")))?;
        let form = req.headers().get(actix_web::http::header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if form && !body.is_empty() {
            let more: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| text(400, format!("invalid form body: {e}")))?;
            pairs.extend(more);
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    /// A time as Loki reads it: Unix nanoseconds, Unix seconds (10 digits or fewer, or
    /// with a fraction), or RFC 3339.
    fn time(&self, name: &str, default: i64) -> Result<i64, HttpResponse> {
        let Some(v) = self.get(name) else { return Ok(default) };
        loki_time(v).ok_or_else(|| text(400, format!("invalid parameter {name:?}: cannot parse {v:?} to a valid timestamp")))
    }

    fn range(&self, default_span: i64) -> Result<(i64, i64), HttpResponse> {
        let now = gossamer_schemas::time::now_ns();
        let end = self.time("end", now)?;
        let start = match self.get("since").map(logql::parse::duration_ns) {
            Some(Some(since)) if self.get("start").is_none() => end - since,
            Some(None) => return Err(text(400, "invalid parameter \"since\": not a duration")),
            _ => self.time("start", end - default_span)?,
        };
        if end < start {
            return Err(text(400, "end timestamp must not be before or equal to start time"));
        }
        Ok((start, end))
    }

    fn limit(&self) -> Result<usize, HttpResponse> {
        match self.get("limit") {
            None => Ok(100),
            Some(v) => match v.parse::<usize>() {
                Ok(0) | Err(_) => Err(text(400, format!("invalid parameter \"limit\": {v:?} is not a positive whole number"))),
                Ok(n) if n > MAX_ENTRIES => Err(text(400, format!("max entries limit per query exceeded, limit > max_entries_limit ({n} > {MAX_ENTRIES})"))),
                Ok(n) => Ok(n),
            },
        }
    }

    fn order(&self) -> Result<Order, HttpResponse> {
        match self.get("direction").map(str::to_ascii_lowercase).as_deref() {
            None | Some("backward") => Ok(Order::Desc),
            Some("forward") => Ok(Order::Asc),
            Some(other) => Err(text(400, format!("invalid parameter \"direction\": {other:?} is neither forward nor backward"))),
        }
    }
}

fn loki_time(v: &str) -> Option<i64> {
    if v.contains('.') {
        if let Ok(secs) = v.parse::<f64>() {
            return Some((secs * 1e3).round() as i64 * 1_000_000);
        }
    }
    match v.parse::<i64>() {
        Ok(n) if v.trim_start_matches('-').len() <= 10 => n.checked_mul(1_000_000_000),
        Ok(n) => Some(n),
        Err(_) => gossamer_schemas::time::parse_rfc3339(v),
    }
}

/// A step: a duration (`15s`, `1m`) or a number of seconds.
fn loki_step(v: &str) -> Option<i64> {
    match v.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Some((secs * 1e9) as i64),
        Ok(_) => None,
        Err(_) => logql::parse::duration_ns(v).filter(|d| *d > 0),
    }
}

fn text(status: u16, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST))
        .content_type("text/plain; charset=utf-8")
        .body(format!("{message}\n"))
}

fn failed(e: EvalError) -> HttpResponse {
    match e {
        EvalError::Logql(e) => text(400, e),
        EvalError::Service(e) => text(e.error_code().http_status(), e.message()),
    }
}

fn success(data: Value, missing: &[u32]) -> HttpResponse {
    let mut body = json!({"status": "success", "data": data});
    if !missing.is_empty() {
        body["warnings"] = json!([format!("shards {missing:?} have no live replica: the answer lacks their events")]);
    }
    HttpResponse::Ok().json(body)
}

fn seconds(t: i64) -> Value {
    json!(t as f64 / 1e9)
}

/// A sample's value as Prometheus prints it.
fn sample(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn stats(started: Instant) -> Value {
    json!({"summary": {"execTime": started.elapsed().as_secs_f64()}})
}

fn answer_json(answer: Answer, instant: bool, started: Instant) -> Value {
    match answer {
        Answer::Streams(streams) => json!({
            "resultType": "streams",
            "result": streams.into_iter().map(|s| json!({
                "stream": s.labels,
                "values": s.values.into_iter().map(|(t, line)| json!([t.to_string(), line])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "stats": stats(started),
        }),
        Answer::Value(logql::Value::Scalar(v)) if instant => json!({"resultType": "scalar", "result": [seconds(gossamer_schemas::time::now_ns()), sample(v)], "stats": stats(started)}),
        Answer::Value(logql::Value::Scalar(v)) => json!({"resultType": "scalar", "result": [0, sample(v)], "stats": stats(started)}),
        Answer::Value(logql::Value::Vector(series)) if instant => json!({
            "resultType": "vector",
            "result": series.into_iter().filter_map(|s| {
                let (t, v) = s.points.into_iter().next_back()?;
                Some(json!({"metric": s.labels, "value": [seconds(t), sample(v)]}))
            }).collect::<Vec<_>>(),
            "stats": stats(started),
        }),
        Answer::Value(logql::Value::Vector(series)) => json!({
            "resultType": "matrix",
            "result": series.into_iter().map(|s| json!({
                "metric": s.labels,
                "values": s.points.into_iter().map(|(t, v)| json!([seconds(t), sample(v)])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "stats": stats(started),
        }),
    }
}

fn parsed(p: &Params) -> Result<Query, HttpResponse> {
    let q = p.get("query").ok_or_else(|| text(400, "query must not be empty"))?;
    logql::parse(q).map_err(|e| text(400, e))
}

/// `GET|POST /loki/api/v1/query_range`.
pub async fn query_range(node: Node, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let started = Instant::now();
    let run = async {
        let p = Params::of(&req, &body)?;
        let q = parsed(&p)?;
        let (start, end) = p.range(HOUR)?;
        let step = match p.get("step") {
            Some(s) => loki_step(s).ok_or_else(|| text(400, format!("invalid parameter \"step\": {s:?} is not a positive duration or number of seconds")))?,
            // Loki's default: a 250th of the range, at least a second.
            None => ((end - start) / 250 / 1_000_000_000).max(1) * 1_000_000_000,
        };
        let at = Eval { start, end, step, limit: p.limit()?, order: p.order()? };
        // A log query reads [start, end); a metric query's last step is `end`.
        let (answer, missing) = logql::evaluate(&node, &q, at).await.map_err(failed)?;
        Ok::<_, HttpResponse>(success(answer_json(answer, false, started), &missing))
    };
    run.await.unwrap_or_else(|e| e)
}

/// `GET|POST /loki/api/v1/query`: a metric query at one time (log queries are range
/// queries, as Loki says).
pub async fn query(node: Node, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let started = Instant::now();
    let run = async {
        let p = Params::of(&req, &body)?;
        let q = parsed(&p)?;
        if let Query::Logs(_) = q {
            return Err(text(400, "log queries are not supported as an instant query type, please change your query to a range query type"));
        }
        let t = p.time("time", gossamer_schemas::time::now_ns())?;
        let at = Eval { start: t, end: t, step: 0, limit: p.limit()?, order: p.order()? };
        let (answer, missing) = logql::evaluate(&node, &q, at).await.map_err(failed)?;
        let mut data = answer_json(answer, true, started);
        if data["resultType"] == "scalar" {
            data["result"][0] = seconds(t);
        }
        Ok(success(data, &missing))
    };
    run.await.unwrap_or_else(|e| e)
}

async fn census(node: &Node, p: &Params, selectors: Vec<String>) -> Result<logql::Census, HttpResponse> {
    // Loki's default window for labels and series: the last six hours.
    let (start, end) = p.range(6 * HOUR)?;
    logql::census(node, &selectors, TimeRange { from: start, to: end.saturating_add(1) }).await.map_err(failed)
}

/// `GET|POST /loki/api/v1/labels` (`query` narrows to a selector).
pub async fn labels(node: Node, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let run = async {
        let p = Params::of(&req, &body)?;
        let c = census(&node, &p, p.all("query").into_iter().filter(|q| !q.is_empty()).collect()).await?;
        Ok::<_, HttpResponse>(success(json!(c.names()), &c.missing))
    };
    run.await.unwrap_or_else(|e| e)
}

/// `GET|POST /loki/api/v1/label/{name}/values`.
pub async fn label_values(node: Node, req: HttpRequest, name: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let run = async {
        let p = Params::of(&req, &body)?;
        let c = census(&node, &p, p.all("query").into_iter().filter(|q| !q.is_empty()).collect()).await?;
        Ok::<_, HttpResponse>(success(json!(c.values(&name)), &c.missing))
    };
    run.await.unwrap_or_else(|e| e)
}

/// `GET|POST /loki/api/v1/series?match[]=...`.
pub async fn series(node: Node, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let run = async {
        let p = Params::of(&req, &body)?;
        let mut selectors = p.all("match[]");
        selectors.extend(p.all("match"));
        let selectors: Vec<String> = selectors.into_iter().filter(|s| !s.is_empty()).collect();
        let c = census(&node, &p, selectors).await?;
        let list: Vec<&BTreeMap<String, String>> = c.series.keys().collect();
        Ok::<_, HttpResponse>(success(json!(list), &c.missing))
    };
    run.await.unwrap_or_else(|e| e)
}

/// `GET|POST /loki/api/v1/index/stats?query=`: streams, chunks (one per stream here),
/// entries and bytes, as a bare object.
pub async fn index_stats(node: Node, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let run = async {
        let p = Params::of(&req, &body)?;
        let query = p.get("query").ok_or_else(|| text(400, "query must not be empty"))?.to_string();
        let c = census(&node, &p, vec![query]).await?;
        let entries: u64 = c.series.values().map(|(n, _)| n).sum();
        let bytes: f64 = c.series.values().map(|(_, b)| b).sum();
        let streams = c.series.len();
        Ok::<_, HttpResponse>(HttpResponse::Ok().json(json!({"streams": streams, "chunks": streams, "entries": entries, "bytes": bytes as u64})))
    };
    run.await.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_steps_as_loki_reads_them() {
        assert_eq!(loki_time("4000000000"), Some(4_000_000_000_000_000_000));
        assert_eq!(loki_time("1700000000123456789"), Some(1_700_000_000_123_456_789));
        assert_eq!(loki_time("1700000000.5"), Some(1_700_000_000_500_000_000));
        assert_eq!(loki_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000_000_000));
        assert_eq!(loki_time("soon"), None);
        assert_eq!(loki_step("15"), Some(15_000_000_000));
        assert_eq!(loki_step("0.5"), Some(500_000_000));
        assert_eq!(loki_step("1m"), Some(60_000_000_000));
        assert_eq!(loki_step("0"), None);
        assert_eq!(sample(2.0), "2");
        assert_eq!(sample(0.25), "0.25");
        assert_eq!(sample(f64::INFINITY), "+Inf");
    }
}
