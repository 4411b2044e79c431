//! `gossamer admin ...`: rebuild the index, see its lag, drain a node, and measure a
//! stopped node's disk use.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;

use crate::client::rest::call;

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Drop every shard's index and rebuild it from the stored events. Queries stay
    /// complete meanwhile (what is not indexed is scanned), only slower.
    Reindex {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Wait until the index has caught up, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Bytes of a stopped node's sled data by kind: event blocks, id index, postings.
    DiskUsage {
        /// The node's data directory.
        #[arg(long, default_value = "gossamer-data")]
        data: PathBuf,
    },
    /// Move a node's shards to the other members before it leaves (it keeps answering
    /// queries); `--undo` gives it its share back.
    Drain {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long)]
        undo: bool,
        /// Wait until the node holds no shard and answers are complete without it.
        #[arg(long)]
        wait: bool,
    },
    /// Show how far the index is behind the stored events.
    Index {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
}

pub fn admin(a: AdminCmd) -> Result<()> {
    match a {
        AdminCmd::DiskUsage { data } => {
            let sled = data.join("sled");
            if !sled.exists() {
                bail!("{} holds no node data (no sled directory)", data.display());
            }
            let cache = gossamer_config::Config::load(None)?.memory_budget().sled_cache_bytes();
            let store = gossamer_storage::Store::open_with_cache(&sled, cache).context("opening sled (is the node still running?)")?;
            let usage = store.usage()?;
            let total: u64 = usage.values().map(|u| u.1).sum();
            println!("{:<24} {:>12} {:>14}", "kind", "keys", "bytes");
            for (kind, (keys, bytes)) in &usage {
                println!("{kind:<24} {keys:>12} {bytes:>14}");
            }
            println!("{:<24} {:>12} {total:>14}", "keys and values", "");
            println!("{:<24} {:>12} {:>14}", "sled on disk", "", store.size_on_disk());
            let mut terms: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
            let mut shard = 0;
            while store.has_shard(shard)? {
                for (kind, (n, bytes)) in gossamer_index::ShardIndex::new(store.shard(shard)?).term_usage()? {
                    let e = terms.entry(kind).or_default();
                    e.0 += n;
                    e.1 += bytes;
                }
                shard += 1;
            }
            println!("\nindex terms by kind (uncompressed)");
            for (kind, (n, bytes)) in &terms {
                println!("{kind:<24} {n:>12} {bytes:>14}");
            }
            Ok(())
        }
        AdminCmd::Drain { server, undo, wait } => {
            let base = server.trim_end_matches('/');
            let url = format!("{base}/api/v1/admin/drain");
            let answer = if undo { call(ureq::delete(&url), None)? } else { call(ureq::post(&url), Some(serde_json::json!({})))? };
            let name = answer["node"].as_str().unwrap_or("the node").to_string();
            println!("{name}: {}", if undo { "taking shards again" } else { "draining: its shards move to the other members" });
            if wait {
                let start = std::time::Instant::now();
                loop {
                    let c = call(ureq::get(&format!("{base}/api/v1/cluster")), None)?;
                    let here = c["shards"].as_array().map_or(0, |s| s.iter().filter(|s| s["here"] == true).count());
                    let behind = c["shards"].as_array().map_or(0, |s| s.iter().filter(|s| s["here"] == true && s["caught_up"] != true).count());
                    let count = call(ureq::get(&format!("{base}/api/v1/count?q=")), None)?;
                    let whole = count["partial"] == false;
                    let done = if undo { here > 0 && behind == 0 && whole } else { here == 0 && whole };
                    if done {
                        println!("{name}: holds {here} shards; answers are complete ({:.1} s)", start.elapsed().as_secs_f64());
                        break;
                    }
                    if start.elapsed() > std::time::Duration::from_secs(600) {
                        bail!("{name} still holds {here} shards ({behind} catching up) after 10 minutes");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
            }
            Ok(())
        }
        AdminCmd::Index { server } => {
            let st = call(ureq::get(&format!("{}/api/v1/index", server.trim_end_matches('/'))), None)?;
            println!(
                "not indexed: {} events in {} blocks; rewritten blocks to reindex: {}; segments: {}",
                st["lag_events"], st["lag_blocks"], st["dirty_blocks"], st["segments"]
            );
            Ok(())
        }
        AdminCmd::Reindex { server, wait } => {
            let base = server.trim_end_matches('/');
            let before = call(ureq::get(&format!("{base}/api/v1/index")), None)?;
            call(ureq::post(&format!("{base}/api/v1/admin/reindex")), Some(serde_json::json!({})))?;
            println!("reindexing every shard");
            if !wait {
                return Ok(());
            }
            let resets_before = before["resets_total"].as_u64().unwrap_or(0);
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("a valid template"));
            loop {
                let st = call(ureq::get(&format!("{base}/api/v1/index")), None)?;
                let lag = st["lag_events"].as_u64().unwrap_or(0);
                let reset = st["resets_total"].as_u64().unwrap_or(0) > resets_before;
                bar.set_message(format!("{lag} events left to index"));
                if reset && lag == 0 && st["dirty_blocks"].as_u64() == Some(0) {
                    bar.finish_with_message("the index has caught up");
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}
