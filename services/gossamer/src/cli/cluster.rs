//! `gossamer cluster status`: members, their state, and the shards they hold.

use anyhow::Result;
use clap::Subcommand;

use crate::client::rest::call;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Members (alive, suspect, dead) and the shard map, as one node sees them.
    Status {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Print the API's JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

pub fn cluster_status(server: &str, as_json: bool) -> Result<()> {
    let base = server.trim_end_matches('/');
    let c = call(ureq::get(&format!("{base}/api/v1/cluster")), None)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    let shards = c["shards"].as_array().cloned().unwrap_or_default();
    let unplaced = shards.iter().filter(|s| s["replicas"].as_array().is_none_or(|r| r.is_empty())).count();
    println!(
        "cluster {}: {} shards, {} replicas each{}",
        c["cluster"].as_str().unwrap_or("?"),
        c["shard_count"],
        c["replicas"],
        if unplaced > 0 { format!(", {unplaced} WITHOUT A LIVE REPLICA") } else { String::new() }
    );
    println!("{:<16} {:<8} {:>11} {:>8} {:>8}  HTTP", "NODE", "STATE", "INCARNATION", "REPLICAS", "PRIMARY");
    for m in c["members"].as_array().cloned().unwrap_or_default() {
        let me = if m["me"].as_bool() == Some(true) { " (this node)" } else { "" };
        println!(
            "{:<16} {:<8} {:>11} {:>8} {:>8}  {}{me}",
            m["node"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
            m["incarnation"].as_u64().map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            m["replicas"].to_string(),
            m["primaries"].to_string(),
            m["http"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}
