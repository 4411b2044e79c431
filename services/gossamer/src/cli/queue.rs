//! `gossamer queue ...` and `gossamer tail`: notification queues and live tail through
//! a node's REST API.

use std::io::BufRead;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::rest::call;

#[derive(Subcommand)]
pub enum QueueCmd {
    /// Define a queue: events matching FILTER are published to
    /// gossamer.<cluster>.notify.NAME, kept by the NOTIFY stream, read through the
    /// durable consumer NAME.
    Create {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        name: String,
        /// A query in the search syntax (`level:error stream:app.*`).
        filter: String,
        #[command(flatten)]
        delivery: Delivery,
        /// `now`, or an RFC 3339 time: deliver events stored since then.
        #[arg(long, default_value = "now")]
        start: String,
    },
    /// Change a queue's filter or delivery settings; delivery goes on where it is.
    Update {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        name: String,
        #[arg(long)]
        filter: Option<String>,
        #[command(flatten)]
        delivery: Delivery,
    },
    /// List the queues with their counters.
    List {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Show one queue (JSON).
    Show {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        name: String,
    },
    /// Remove a queue, its consumers and its kept deliveries.
    Delete {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        name: String,
    },
}

#[derive(Args)]
pub struct Delivery {
    /// Deliveries of one message before it is dead-lettered (5 by default).
    #[arg(long)]
    max_deliver: Option<i64>,
    /// Time to ack before a delivery comes again (30s by default).
    #[arg(long)]
    ack_wait: Option<String>,
    /// Waits between redeliveries, comma-separated (1s,10s,1m).
    #[arg(long, value_delimiter = ',')]
    backoff: Option<Vec<String>>,
}

impl Delivery {
    fn apply(self, spec: &mut Value) {
        if let Some(v) = self.max_deliver {
            spec["max_deliver"] = json!(v);
        }
        if let Some(v) = self.ack_wait {
            spec["ack_wait"] = json!(v);
        }
        if let Some(v) = self.backoff {
            spec["backoff"] = json!(v);
        }
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn print_queue(q: &Value) {
    let s = &q["stats"];
    println!(
        "{:<20} matched {:>8}  published {:>8}  acked {:>8}  pending {:>6}  waiting {:>6}  redelivered {:>6}  dead {:>5}  {}",
        q["name"].as_str().unwrap_or(""),
        n(&s["matched"]),
        n(&s["published"]),
        n(&s["acked"]),
        n(&s["pending"]),
        n(&s["ack_pending"]),
        n(&s["redelivered"]),
        n(&s["dead_lettered"]),
        q["filter"].as_str().unwrap_or(""),
    );
}

pub fn run(cmd: QueueCmd) -> Result<()> {
    match cmd {
        QueueCmd::Create { server, name, filter, delivery, start } => {
            let mut spec = json!({ "name": name, "filter": filter, "start": start });
            delivery.apply(&mut spec);
            let q = call(ureq::post(&format!("{}/api/v1/queues", server.trim_end_matches('/'))), Some(spec))?;
            println!(
                "queue {} created: subscribe with the durable consumer {} on stream {} (subject {})",
                q["name"].as_str().unwrap_or(""),
                q["consumer"].as_str().unwrap_or(""),
                q["stream"].as_str().unwrap_or(""),
                q["subject"].as_str().unwrap_or("")
            );
            Ok(())
        }
        QueueCmd::Update { server, name, filter, delivery } => {
            let base = server.trim_end_matches('/');
            let mut spec = json!({});
            if let Some(f) = filter {
                spec["filter"] = json!(f);
            }
            delivery.apply(&mut spec);
            let q = call(ureq::put(&format!("{base}/api/v1/queues/{name}")), Some(spec))?;
            print_queue(&q);
            Ok(())
        }
        QueueCmd::List { server } => {
            let answer = call(ureq::get(&format!("{}/api/v1/queues", server.trim_end_matches('/'))), None)?;
            let list = answer["queues"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no queues");
            }
            for q in &list {
                print_queue(q);
            }
            Ok(())
        }
        QueueCmd::Show { server, name } => {
            let q = call(ureq::get(&format!("{}/api/v1/queues/{name}", server.trim_end_matches('/'))), None)?;
            println!("{}", serde_json::to_string_pretty(&q)?);
            Ok(())
        }
        QueueCmd::Delete { server, name } => {
            call(ureq::delete(&format!("{}/api/v1/queues/{name}", server.trim_end_matches('/'))), None)?;
            println!("queue {name} deleted");
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct TailCmd {
    #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Print each event as JSON.
    #[arg(long)]
    json: bool,
    /// Only events matching this query (all events without one).
    #[arg(default_value = "")]
    query: String,
}

/// Prints matching events as they are stored, until interrupted.
pub fn tail(a: TailCmd) -> Result<()> {
    let base = a.server.trim_end_matches('/');
    let req = crate::client::rest::with_token(ureq::get(&format!("{base}/api/v1/tail")).query("q", &a.query));
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body: Value = r.into_json().unwrap_or_default();
            bail!("{} ({code})", body["error"].as_str().unwrap_or("request failed"));
        }
        Err(e) => bail!("cannot reach {base}: {e}"),
    };
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(resp.into_reader()).lines() {
        let line = line.context("reading the tail")?;
        if let Some(rest) = line.strip_prefix(": tailing") {
            eprintln!("tailing{rest} (Ctrl-C to stop)");
        }
        let Some(data) = line.strip_prefix("data: ") else { continue };
        use std::io::Write;
        if a.json {
            writeln!(out, "{data}")?;
        } else {
            let e: Value = serde_json::from_str(data).context("an event from the tail")?;
            crate::client::query::print_event(&mut out, &e)?;
        }
        out.flush()?;
    }
    bail!("the node closed the tail")
}
