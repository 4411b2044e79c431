//! The NATS side every actor shares: connecting (waiting for the server with a clear
//! log line) and creating the JetStream streams, idempotently.

use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, stream};
use gossamer_config::Config;
use tracing::{info, warn};

/// Names of the streams a cluster uses.
#[derive(Debug, Clone)]
pub struct StreamNames {
    pub logs: String,
    pub shards: String,
    pub deadletter: String,
}

/// Connects to `url`, retrying every second until `deadline` passes; logs once while it
/// waits so a node started before nats-server says why it is idle.
pub async fn connect(url: &str, deadline: Duration) -> Result<async_nats::Client> {
    // With retry_on_initial_connect, connect returns at once and the client keeps
    // trying in the background; watch its state so the caller gets a clear error
    // when no server ever answers.
    let client = async_nats::ConnectOptions::new()
        .name("gossamer")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    let start = std::time::Instant::now();
    let mut warned = false;
    while client.connection_state() != async_nats::connection::State::Connected {
        if start.elapsed() > deadline {
            anyhow::bail!("no NATS server answered at {url} within {}s", deadline.as_secs());
        }
        if !warned && start.elapsed() > Duration::from_secs(1) {
            warn!(url, "waiting-for-nats");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(client)
}

/// Creates LOGS, SHARDS and DEADLETTER if they do not exist (and leaves them as they
/// are when they do).
///
/// - LOGS captures `logs.>` with limits retention and `discard: new` under a byte cap:
///   nothing unconsumed is ever dropped (publishers get an error when it is full), and
///   the ingest actor purges up to its consumer's ack floor instead of paying a delete
///   per message.
/// - SHARDS is each shard's write-ahead log, kept for a retention window.
/// - DEADLETTER keeps what could not be made into events, with the reason.
pub async fn ensure_streams(js: &jetstream::Context, cfg: &Config) -> Result<StreamNames> {
    let subjects = gossamer_schemas::subjects::Subjects::new(&cfg.cluster);
    let names = StreamNames {
        logs: gossamer_schemas::subjects::LOGS_STREAM.to_string(),
        shards: subjects.shards_stream(),
        deadletter: subjects.deadletter_stream(),
    };
    let configs = [
        stream::Config {
            name: names.logs.clone(),
            subjects: vec![gossamer_schemas::subjects::LOGS_SUBJECTS.into()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            max_bytes: cfg.logs_max_bytes,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: names.shards.clone(),
            subjects: vec![subjects.shards_wildcard()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(cfg.shards_max_age_secs),
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: names.deadletter.clone(),
            subjects: vec![subjects.deadletter()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    ];
    for c in configs {
        let name = c.name.clone();
        js.get_or_create_stream(c).await.with_context(|| format!("creating JetStream stream {name}"))?;
        info!(stream = %name, "stream-ready");
    }
    Ok(names)
}

/// Acks every message at once and waits for all the acks to be sent.
pub async fn ack_all(msgs: &[jetstream::Message]) -> Result<()> {
    use futures::TryStreamExt;
    let acks: futures::stream::FuturesUnordered<_> = msgs.iter().map(|m| m.ack()).collect();
    acks.try_collect::<Vec<_>>().await.map_err(|e| anyhow::anyhow!("acking {} messages: {e}", msgs.len()))?;
    Ok(())
}
