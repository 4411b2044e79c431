//! `gossamer bench query --peers`: the same query mix over the same generated events in
//! embedded ClickHouse (PyPI `chdb`) and tantivy (PyPI `tantivy`), each in a Python
//! process of its own (`scripts/bench_peers.py`, built into the binary), from a
//! virtual environment under `target/`; their figures go beside Gossamer's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The helper that runs the mix in one peer.
const HELPER: &str = include_str!("../../../../scripts/bench_peers.py");

/// The peers' versions, pinned so runs compare.
const PACKAGES: [&str; 2] = ["chdb==4.4.0", "tantivy==0.27.0"];

/// Each peer query beside the name of Gossamer's that asks the same.
const SAME: [(&str, &str); 5] = [
    ("Q1 newest 100", "Q1 selective, newest 100"),
    ("Q1 count", "Q1 selective, count"),
    ("Q2 phrase count", "Q2 phrase count"),
    ("Q3 count by level", "Q3 count by level"),
    ("Q4 p95 by dataset x minute", "Q4 p95 latency by dataset x minute"),
];

/// `GOSSAMER_BENCH_VENV`, or `target/bench-venv` under the working directory.
fn venv() -> PathBuf {
    std::env::var_os("GOSSAMER_BENCH_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/bench-venv"))
}

/// The venv's python, made and filled the first time.
fn python() -> Result<PathBuf> {
    let dir = venv();
    let py = dir.join("bin/python");
    let ready = |py: &Path| Command::new(py).args(["-c", "import chdb, tantivy"]).output().is_ok_and(|o| o.status.success());
    if ready(&py) {
        return Ok(py);
    }
    if !py.exists() {
        eprintln!("making a Python virtual environment for the peers in {} ...", dir.display());
        let made = Command::new("python3").arg("-m").arg("venv").arg(&dir).status().context("python3 (with venv) runs the peers")?;
        if !made.success() {
            bail!("`python3 -m venv {}` failed: on Debian, apt-get install python3-venv", dir.display());
        }
    }
    eprintln!("installing {} from PyPI ...", PACKAGES.join(" "));
    let pip = Command::new(&py).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(PACKAGES).status()?;
    if !pip.success() || !ready(&py) {
        bail!("could not install {} into {}", PACKAGES.join(" "), dir.display());
    }
    Ok(py)
}

/// Runs the mix in chdb, then in tantivy, over `events`; their working files under `work`.
pub fn run_all(events: &Path, work: &Path, runs: usize) -> Result<Vec<serde_json::Value>> {
    let py = python()?;
    std::fs::create_dir_all(work)?;
    let helper = work.join("bench_peers.py");
    std::fs::write(&helper, HELPER)?;
    let mut out = Vec::new();
    for system in ["chdb", "tantivy"] {
        eprintln!("{system}: loading the same events, then the same queries ...");
        let got = Command::new(&py).arg(&helper).arg(system).arg(events).arg(work.join(system)).arg(runs.to_string()).output()?;
        if !got.status.success() {
            bail!("the {system} run failed: {}", String::from_utf8_lossy(&got.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&got.stdout).with_context(|| format!("the {system} run's answer"))?;
        // The peer's files go once measured: at 10M events they are gigabytes.
        std::fs::remove_dir_all(work.join(system)).ok();
        out.push(v);
    }
    Ok(out)
}

/// One table: each peer beside Gossamer, on disk, in memory and per query (p50);
/// `ours` is Gossamer's figures by query name: the p50 in ms and the answer.
pub fn print_table(peers: &[serde_json::Value], ours: &[(&str, f64, String)], sled_bytes: u64, peak_rss_kb: u64, events: u64, ndjson_bytes: u64) {
    let engines: Vec<&str> = peers.iter().filter_map(|p| p["engine"].as_str()).collect();
    println!("beside {} (Q3's groups: the peers keep the levels as sent, Gossamer normalizes them)", engines.join(", "));
    let ms = |v: f64| if v < 10.0 { format!("{v:.2}") } else { format!("{v:.1}") };
    let per_event = |bytes: f64| format!("{:.1} ({:.2} x)", bytes / events as f64, bytes / ndjson_bytes as f64);
    let mut header = format!("{:<34}", "beside the peers");
    for p in peers {
        header += &format!(" {:>22}", p["engine"].as_str().unwrap_or("?").split(" (").next().unwrap_or("?"));
    }
    println!("{header} {:>22}", "Gossamer");
    let row = |name: &str, cells: Vec<String>, own: String| {
        let mut line = format!("{name:<34}");
        for c in cells {
            line += &format!(" {c:>22}");
        }
        println!("{line} {own:>22}");
    };
    row(
        "disk, bytes/event (x NDJSON)",
        peers.iter().map(|p| per_event(p["disk_bytes"].as_f64().unwrap_or(0.0))).collect(),
        per_event(sled_bytes as f64),
    );
    row(
        "peak RSS, MiB",
        peers.iter().map(|p| format!("{:.0}", p["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0)).collect(),
        format!("{:.0}", peak_rss_kb as f64 / 1024.0),
    );
    row("load, s", peers.iter().map(|p| format!("{:.1}", p["load_s"].as_f64().unwrap_or(0.0))).collect(), "-".into());
    for (theirs, name) in SAME {
        let own = ours.iter().find(|q| q.0 == name);
        row(
            &format!("{theirs}, p50 ms"),
            peers
                .iter()
                .map(|p| {
                    let q = &p["queries"][theirs];
                    format!("{} [{}]", ms(q["p50_ms"].as_f64().unwrap_or(f64::NAN)), q["answer"])
                })
                .collect(),
            own.map_or("-".into(), |q| format!("{} [{}]", ms(q.1), q.2)),
        );
    }
}
