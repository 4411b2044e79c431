//! The command line: one module per command group, each with its clap arguments and
//! the function that runs it; they talk to a node only through [`crate::client`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod admin;
pub mod args;
pub mod backup;
pub mod cluster;
pub mod export;
pub mod sql;
pub mod publish;
pub mod query;
pub mod queue;
pub mod run;

#[derive(Parser)]
#[command(name = "gossamer", version, about = "A distributed, real-time log and event store on NATS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything local: a nats-server child (unless --nats is given) and a node.
    Up(run::UpArgs),
    /// Run a node against an existing NATS server.
    Node(run::NodeArgs),
    /// Publish NDJSON or plain lines from a file or stdin to `logs.<stream>`.
    Publish(publish::PublishCmd),
    /// Search (or count) events on a node.
    Query(query::QueryCmd),
    /// Every event matching a query, oldest first, as NDJSON or CSV (re-imports with
    /// `gossamer publish`).
    Export(export::ExportCmd),
    /// A SQL query over the table `logs` (id, ts, stream, level, message, labels,
    /// fields), as a table or as CSV, NDJSON or JSON.
    Sql(sql::SqlCmd),
    /// Delete one event by id, or every event matching a query.
    Delete(query::DeleteCmd),
    /// Set a stream's retention: events older than MAX_AGE (7d, 12h, 90m) are deleted;
    /// `off` keeps them.
    Retention(query::RetentionCmd),
    /// Measure Gossamer on this machine.
    Bench(crate::bench::BenchArgs),
    /// Operate a node: rebuild its index, see its state.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// Back up a node's events, verify backups, restore them into an empty node.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Define notification queues of matching events, see their counters.
    #[command(subcommand)]
    Queue(queue::QueueCmd),
    /// Print events matching a query as they are stored.
    Tail(queue::TailCmd),
    /// See the cluster: members, their state, the shards they hold.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet_default = matches!(cli.command, Command::Publish(_) | Command::Query(_) | Command::Tail(_) | Command::Export(_) | Command::Sql(_));
    init_tracing(if quiet_default { "warn" } else { "info" });
    let result = match cli.command {
        Command::Up(a) => run::up(a),
        Command::Node(a) => run::node(a),
        Command::Publish(a) => publish::publish(a),
        Command::Query(a) => query::run(a),
        Command::Export(a) => export::run(a),
        Command::Sql(a) => sql::run(a),
        Command::Delete(a) => query::delete(a),
        Command::Retention(a) => query::retention(a),
        Command::Bench(a) => crate::bench::run(a),
        Command::Admin(a) => admin::admin(a),
        Command::Backup(a) => backup::run(a),
        Command::Queue(a) => queue::run(a),
        Command::Tail(a) => queue::tail(a),
        Command::Cluster(cluster::ClusterCmd::Status { server, json }) => cluster::cluster_status(&server, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gossamer: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GOSSAMER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},sled=warn")));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
