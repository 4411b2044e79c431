//! `gossamer publish`: NDJSON or plain lines from a file or stdin onto NATS.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::cli::args::NatsArgs;

#[derive(Args)]
pub struct PublishCmd {
    #[arg(long, env = "GOSSAMER_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    #[command(flatten)]
    pub nats_auth: NatsArgs,
    #[arg(long, env = "GOSSAMER_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Publish to `logs.<stream>` with JetStream (buffered even while no node runs)
    /// instead of asking the ingest actors directly (the default, and the fastest).
    #[arg(long)]
    pub jetstream: bool,
    /// Stream name: events go to `logs.<stream>`. Without it, each JSON line's own
    /// `stream` key routes it (as `gossamer export` writes them).
    #[arg(long)]
    pub stream: Option<String>,
    /// Events per NATS message.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Read-your-writes: once everything is stored, wait (up to DURATION, 10s by
    /// default) until every event is queryable on every replica, and say so; exits with
    /// status 3 when the wait runs out (the events are stored all the same).
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "10s", conflicts_with = "jetstream")]
    pub wait: Option<String>,
    /// NDJSON or plain-text file; `-` or nothing reads stdin.
    pub file: Option<PathBuf>,
}

pub fn publish(a: PublishCmd) -> Result<()> {
    let mut auth = gossamer_config::Config::load(None)?.nats_auth;
    a.nats_auth.apply(&mut auth);
    let args = crate::client::publish::PublishArgs {
        nats: a.nats,
        auth,
        cluster: a.cluster,
        jetstream: a.jetstream,
        stream: a.stream,
        input: a.file,
        batch: a.batch.max(1),
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        wait: crate::service::ingest::wait_asked(a.wait.as_deref()).map_err(anyhow::Error::msg)?,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(crate::client::publish::publish(args))?;
    eprintln!(
        "published {} events in {} messages in {:.1} s ({:.0} events/s)",
        report.events,
        report.messages,
        report.seconds,
        report.events as f64 / report.seconds.max(1e-9)
    );
    if !report.rejected.is_empty() {
        eprintln!(
            "{} messages were refused and dead-lettered, first because: {}",
            report.rejected.len(),
            report.rejected[0]
        );
    }
    if report.invalid_lines > 0 {
        eprintln!(
            "{} lines were not valid JSON: each was sent alone and lands in the dead-letter stream with its reason",
            report.invalid_lines
        );
    }
    if let Some(waited) = &report.waited {
        if waited["queryable"] == true {
            eprintln!("queryable on every replica after {} ms", waited["waited_ms"]);
        } else {
            eprintln!("stored, but not yet queryable on every replica when the wait ran out: {waited}");
            std::process::exit(3);
        }
    }
    Ok(())
}
