//! `gossamer export`: every event matching a query, oldest first, as NDJSON or CSV, to
//! a file or stdout, with a progress bar. An NDJSON export re-imports with
//! `gossamer publish` (each line carries its stream and id).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::client::rest::{call, with_token};

#[derive(Args)]
pub struct ExportCmd {
    #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
    /// ndjson (the event JSON, one per line) or csv.
    #[arg(long, default_value = "ndjson")]
    pub format: String,
    /// Write here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// The query, in the text syntax (empty: every event).
    #[arg(default_value = "")]
    pub query: String,
}

pub fn run(a: ExportCmd) -> Result<()> {
    let base = a.server.trim_end_matches('/');
    let with_range = |mut req: ureq::Request| {
        req = req.query("q", &a.query);
        if let Some(f) = &a.from {
            req = req.query("from", f);
        }
        if let Some(t) = &a.to {
            req = req.query("to", t);
        }
        req
    };
    // The count sizes the progress bar (events stored meanwhile may make it run over).
    let total = call(with_range(ureq::get(&format!("{base}/api/v1/count"))), None)?["count"].as_u64().unwrap_or(0);
    let req = with_token(with_range(ureq::get(&format!("{base}/api/v1/export"))).query("format", &a.format));
    let answer = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body: serde_json::Value = r.into_json().unwrap_or_default();
            bail!("{} ({code})", body["error"].as_str().unwrap_or("export refused"))
        }
        Err(e) => bail!("cannot reach {base}: {e}"),
    };
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let show = !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if show { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {bytes_per_sec} ({eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut reader = answer.into_reader();
    let mut buf = vec![0u8; 256 << 10];
    let (mut bytes, mut lines) = (0u64, 0u64);
    loop {
        let n = reader.read(&mut buf).context("the export stopped early (see the node's log: export-cut-short)")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).context("writing the export")?;
        let newlines = buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        lines += newlines;
        bytes += n as u64;
        bar.inc(newlines);
    }
    out.flush().context("writing the export")?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    // CSV has a header line; a message with a line break spans more than one line.
    let events = if a.format == "csv" { lines.saturating_sub(1) } else { lines };
    eprintln!(
        "exported {events} events ({:.1} MB) in {secs:.1} s ({:.0} events/s, {:.1} MB/s)",
        bytes as f64 / 1e6,
        events as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
