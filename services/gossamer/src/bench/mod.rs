//! `gossamer bench`: one file per bench, sharing [`common`].

use anyhow::Result;
use clap::{Args, Subcommand};

pub mod backup;
pub mod chart;
pub mod cluster;
pub mod cluster_backup;
pub mod peers;
pub mod plot;
pub mod promises;
pub mod common;
pub mod doors;
pub mod ingest;
pub mod query;
pub mod soak;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand)]
pub enum BenchWhat {
    /// Publish-to-queryable ingest rate beside the raw JetStream publish rate.
    Ingest(ingest::IngestBench),
    /// The query mix (selective newest-100 and count, phrase count, count by level,
    /// p95 by dataset per minute) over N events, beside ripgrep on the same NDJSON.
    Query(query::QueryBench),
    /// Publish at a fixed rate with a query load for a while; report RSS and lag over
    /// time and reconcile every acked event at the end.
    Soak(soak::SoakBench),
    /// Full and incremental backup, verify and restore throughput over N events.
    Backup(backup::BackupBench),
    /// Ingest into one node, then into three nodes with two replicas per shard, on the
    /// same machine; then kill -9 one of the three and time until answers are complete.
    Cluster(cluster::ClusterBench),
    /// Queue takeover after kill -9 of the member delivering it (10 kills), and partial
    /// answers during a rolling restart and a drain with one replica.
    Promises(promises::PromisesBench),
    /// A three-node cluster's backup (full, incremental, verify) and its restore into
    /// one node and into three.
    ClusterBackup(cluster_backup::ClusterBackupBench),
    /// Draw the PNG chart of a `bench query --json` file again.
    Chart(chart::ChartArgs),
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Ingest(a) => ingest::ingest(a),
        BenchWhat::Query(a) => query::query(a),
        BenchWhat::Soak(a) => soak::soak(a),
        BenchWhat::Backup(a) => backup::backup(a),
        BenchWhat::Cluster(a) => cluster::cluster(a),
        BenchWhat::Promises(a) => promises::promises(a),
        BenchWhat::ClusterBackup(a) => cluster_backup::cluster_backup(a),
        BenchWhat::Chart(a) => chart::chart(a),
    }
}
