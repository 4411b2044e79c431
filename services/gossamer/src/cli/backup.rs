//! `gossamer backup ...`: create, list, show, verify and restore backups through a
//! node's REST API, with a progress bar while a job runs.

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::rest::call;

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Take a backup: incremental when the node has a previous one, else full.
    Create {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Take a full backup even if an incremental one is possible.
        #[arg(long, conflicts_with = "incremental")]
        full: bool,
        /// Fail rather than take a full backup when there is nothing to continue.
        #[arg(long)]
        incremental: bool,
        /// Name the backup (letters, digits, '.', '_', '-'); by default its time and kind.
        #[arg(long)]
        name: Option<String>,
        /// Return once the backup has started, without waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the backups in the node's backup store.
    List {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Show a backup's manifest (JSON).
    Show {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        id: String,
    },
    /// Read every file of a backup and check its checksum and counts.
    Verify {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        id: String,
    },
    /// Restore a backup (with the backups it continues) into an empty node.
    Restore {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        id: String,
    },
}

pub fn run(cmd: BackupCmd) -> Result<()> {
    match cmd {
        BackupCmd::Create { server, full, incremental, name, no_wait } => {
            let base = server.trim_end_matches('/');
            let kind = if full { "full" } else if incremental { "incremental" } else { "auto" };
            let job = call(ureq::post(&format!("{base}/api/v1/backups")), Some(json!({ "kind": kind, "name": name })))?;
            if no_wait {
                println!("backup {} started (job {})", job["backup"].as_str().unwrap_or(""), job["id"].as_str().unwrap_or(""));
                return Ok(());
            }
            let done = follow(base, &job)?;
            let m = &done["manifest"];
            println!(
                "backup {} ({}): {} events, {} in {} shard files",
                m["id"].as_str().unwrap_or(""),
                m["kind"].as_str().unwrap_or(""),
                m["events"],
                human_bytes(m["bytes"].as_u64().unwrap_or(0)),
                m["shards"].as_array().map_or(0, Vec::len),
            );
            Ok(())
        }
        BackupCmd::List { server } => {
            let base = server.trim_end_matches('/');
            let answer = call(ureq::get(&format!("{base}/api/v1/backups")), None)?;
            let list = answer["backups"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no backups in {}", answer["store"].as_str().unwrap_or("the store"));
                return Ok(());
            }
            println!("{:<32} {:<12} {:>12} {:>10}  {:<26} parent", "id", "kind", "events", "size", "created");
            for b in list {
                println!(
                    "{:<32} {:<12} {:>12} {:>10}  {:<26} {}",
                    b["id"].as_str().unwrap_or(""),
                    b["kind"].as_str().unwrap_or(""),
                    b["events"],
                    human_bytes(b["bytes"].as_u64().unwrap_or(0)),
                    b["created_at"].as_str().unwrap_or(""),
                    b["parent"].as_str().unwrap_or("-"),
                );
            }
            Ok(())
        }
        BackupCmd::Show { server, id } => {
            let m = call(ureq::get(&format!("{}/api/v1/backups/{id}", server.trim_end_matches('/'))), None)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(())
        }
        BackupCmd::Verify { server, id } => {
            let base = server.trim_end_matches('/');
            let job = call(ureq::post(&format!("{base}/api/v1/backups/{id}/verify")), Some(json!({})))?;
            follow(base, &job)?;
            println!("backup {id} verified: every file matches its checksum and counts");
            Ok(())
        }
        BackupCmd::Restore { server, id } => {
            let base = server.trim_end_matches('/');
            let job = call(ureq::post(&format!("{base}/api/v1/restore")), Some(json!({ "backup": id })))?;
            let done = follow(base, &job)?;
            println!("restored backup {id}: {} events", done["manifest"]["events"]);
            Ok(())
        }
    }
}

/// Polls a job until it ends, drawing its progress; the finished job, or its error.
fn follow(base: &str, job: &Value) -> Result<Value> {
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let bar = indicatif::ProgressBar::new(0);
    let style = |unit: &str| {
        let template = if unit == "bytes" {
            "{msg:>18} [{bar:32}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
        } else {
            "{msg:>18} [{bar:32}] {pos}/{len} shards ({elapsed})"
        };
        indicatif::ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ")
    };
    let mut unit = String::new();
    loop {
        let j = call(ureq::get(&format!("{base}/api/v1/jobs/{id}")), None)?;
        let now_unit = j["unit"].as_str().unwrap_or("").to_string();
        if now_unit != unit {
            bar.set_style(style(&now_unit));
            unit = now_unit;
        }
        bar.set_message(j["phase"].as_str().unwrap_or("").to_string());
        bar.set_length(j["total"].as_u64().unwrap_or(0));
        bar.set_position(j["done"].as_u64().unwrap_or(0));
        match j["state"].as_str() {
            Some("done") => {
                bar.finish_and_clear();
                return Ok(j);
            }
            Some("failed") => {
                bar.abandon();
                bail!("{} {} failed: {}", j["action"].as_str().unwrap_or("job"), j["backup"].as_str().unwrap_or(""), j["error"].as_str().unwrap_or("no reason given"));
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", units[i]) }
}
