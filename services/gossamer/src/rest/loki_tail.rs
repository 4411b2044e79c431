//! The Loki door's live tail: `GET /loki/api/v1/tail?query=&start=&limit=` upgraded to a
//! WebSocket, as Grafana's Explore "Live" and logcli use it. The lines since `start`
//! (an hour ago by default, at most `limit`) come first, oldest first; then every new
//! matching line as it enters the shard log, one frame per log message (in time order
//! within a frame; frames follow the order the shards apply their logs in),
//! `{"streams":[{"stream":{labels},"values":[["<ns>","line"]]}],"dropped_entries":null}`.
//! A query outside the subset, or a metric query, is refused before the upgrade.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use gossamer_query::TimeRange;
use gossamer_schemas::api::Order;
use gossamer_schemas::{Event, ShardCommand};
use serde_json::json;

use crate::rest::common::Node;
use crate::service::logql::{self, compile::compile, Query};

fn text(message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::BadRequest().content_type("text/plain; charset=utf-8").body(format!("{message}\n"))
}

/// One frame: the events grouped into Loki streams.
fn frame(events: &[Event], dropped: &[String]) -> String {
    let mut streams: BTreeMap<BTreeMap<String, String>, Vec<serde_json::Value>> = BTreeMap::new();
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| (e.ts, e.id));
    for e in events {
        let mut labels = gossamer_query::agg::series_labels(e);
        for d in dropped {
            labels.remove(d);
        }
        streams.entry(labels).or_default().push(json!([e.ts.to_string(), e.message]));
    }
    let streams: Vec<serde_json::Value> = streams.into_iter().map(|(stream, values)| json!({"stream": stream, "values": values})).collect();
    json!({"streams": streams, "dropped_entries": null}).to_string()
}

/// `GET /loki/api/v1/tail`.
pub async fn tail(node: Node, req: HttpRequest, body: web::Payload) -> HttpResponse {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let get = |k: &str| pairs.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let Some(q) = get("query") else { return text("query must not be empty") };
    let log = match logql::parse(q) {
        Ok(Query::Logs(l)) => l,
        Ok(Query::Metric(_)) => return text("tail takes a log query, not a metric query"),
        Err(e) => return text(e),
    };
    let expr = match compile(&log) {
        Ok(e) => e,
        Err(e) => return text(e),
    };
    let limit = match get("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=logql::eval::MAX_ENTRIES).contains(&n) => n,
        Some(_) => return text(format!("invalid parameter \"limit\": use 1 to {}", logql::eval::MAX_ENTRIES)),
    };
    let now = gossamer_schemas::time::now_ns();
    let start = match get("start") {
        None => now - 3_600_000_000_000,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if v.len() <= 10 => n.saturating_mul(1_000_000_000),
            Ok(n) => n,
            Err(_) => return text(format!("invalid parameter \"start\": {v:?} is not a Unix time")),
        },
    };
    // Subscribed before the history is read: a line stored meanwhile is not missed
    // (it may be sent twice, once in each).
    let subjects = gossamer_schemas::subjects::Subjects::new(&node.cfg.cluster);
    let sub = match node.tail_nats.subscribe(subjects.shards_wildcard()).await {
        Ok(s) => s,
        Err(e) => return HttpResponse::ServiceUnavailable().body(format!("cannot subscribe to the shard log: {e}\n")),
    };
    if let Err(e) = node.tail_nats.flush().await {
        return HttpResponse::ServiceUnavailable().body(format!("NATS: {e}\n"));
    }
    let (response, mut session, mut incoming) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => return text(format!("not a WebSocket request: {e}")),
    };
    let dropped = log.dropped();
    let native = expr.to_string();
    let node = node.into_inner();
    actix_rt::spawn(async move {
        // The history first, oldest line first.
        let past = crate::service::query::search_in(&node, &native, TimeRange { from: start, to: now.saturating_add(1) }, Order::Desc, limit, None).await;
        let mut sent = std::collections::HashSet::new();
        if let Ok(mut page) = past {
            page.events.reverse();
            sent.extend(page.events.iter().map(|e| e.id));
            if !page.events.is_empty() && session.text(frame(&page.events, &dropped)).await.is_err() {
                return;
            }
        }
        let mut live = sub.filter_map(|msg| {
            let matched: Vec<Event> = match ShardCommand::decode(&msg.payload).and_then(ShardCommand::into_inserted) {
                Ok(Some(events)) => events.into_iter().filter(|e| !sent.contains(&e.id) && expr.matches(e)).collect(),
                _ => Vec::new(),
            };
            futures::future::ready((!matched.is_empty()).then_some(matched))
        });
        loop {
            tokio::select! {
                events = live.next() => {
                    let Some(events) = events else { break };
                    if session.text(frame(&events, &dropped)).await.is_err() {
                        return;
                    }
                }
                msg = incoming.next() => match msg {
                    Some(Ok(actix_ws::Message::Ping(p))) => {
                        if session.pong(&p).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = session.close(None).await;
    });
    response
}
