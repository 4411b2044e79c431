//! The NATS side every actor shares: connecting (waiting for the server with a clear
//! log line) and creating the JetStream streams, idempotently.

use std::time::Duration;

pub mod settings;
pub use settings::{ensure_kv, SharedSettings};

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, stream};
use gossamer_config::{Config, NatsAuth};
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
    connect_with(url, &NatsAuth::default(), deadline).await
}

/// The servers of a NATS URL list: `nats://a:4222,nats://b:4222` (a client connects
/// to one and fails over to the others).
pub fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<async_nats::ServerAddr>().with_context(|| format!("{u:?} is not a NATS server URL")))
        .collect::<Result<Vec<_>>>()
        .and_then(|v| if v.is_empty() { anyhow::bail!("no NATS server URL given") } else { Ok(v) })
}

/// The client options `auth` asks for: credentials and TLS.
pub async fn options(auth: &NatsAuth) -> Result<async_nats::ConnectOptions> {
    auth.validate()?;
    let mut o = match (&auth.user, &auth.password, &auth.token, &auth.nkey_file, &auth.creds_file) {
        (Some(u), Some(p), ..) => async_nats::ConnectOptions::with_user_and_password(u.clone(), p.0.clone()),
        (_, _, Some(t), ..) => async_nats::ConnectOptions::with_token(t.0.clone()),
        (_, _, _, Some(f), _) => {
            let seed = std::fs::read_to_string(f).with_context(|| format!("reading the NATS nkey seed file {}", f.display()))?;
            async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        }
        (_, _, _, _, Some(f)) => async_nats::ConnectOptions::with_credentials_file(f.clone())
            .await
            .with_context(|| format!("reading the NATS creds file {}", f.display()))?,
        _ => async_nats::ConnectOptions::new(),
    };
    if auth.tls || auth.tls_ca.is_some() || auth.tls_cert.is_some() {
        o = o.require_tls(true);
    }
    if let Some(ca) = &auth.tls_ca {
        o = o.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&auth.tls_cert, &auth.tls_key) {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(o)
}

/// [`connect`] with credentials and TLS.
pub async fn connect_with(url: &str, auth: &NatsAuth, deadline: Duration) -> Result<async_nats::Client> {
    let addrs = servers(url)?;
    // With retry_on_initial_connect, connect returns at once and the client keeps
    // trying in the background; watch its state so the caller gets a clear error
    // when no server ever answers (or it refuses the credentials).
    // One plain attempt first: a server that is up and refuses the credentials (or
    // the TLS setup) is told at once, rather than retried until the deadline.
    let first_error = match options(auth).await?.connection_timeout(Duration::from_secs(2)).connect(addrs.clone()).await {
        Ok(client) => return Ok(client),
        Err(e) => match e.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation | async_nats::ConnectErrorKind::Authentication => {
                anyhow::bail!("the NATS server at {url} refused the credentials ({e}): check --nats-user/--nats-password, --nats-token, --nats-nkey-file or --nats-creds")
            }
            async_nats::ConnectErrorKind::Tls => anyhow::bail!("TLS to the NATS server at {url} failed: {e}"),
            _ if e.to_string().to_lowercase().contains("certificate") => {
                anyhow::bail!("TLS to the NATS server at {url} failed (is --nats-ca the CA that signed its certificate?): {e}")
            }
            _ => e.to_string(),
        },
    };
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = refused.clone();
    let client = options(auth)
        .await?
        .name("gossamer")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let flag = flag.clone();
            async move {
                match &event {
                    async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        })
        .connect(addrs)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    let start = std::time::Instant::now();
    let mut warned = false;
    while client.connection_state() != async_nats::connection::State::Connected {
        if refused.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("the NATS server at {url} refused the credentials (authorization violation): check --nats-user/--nats-password, --nats-token, --nats-nkey-file or --nats-creds");
        }
        if start.elapsed() > deadline {
            anyhow::bail!(
                "no NATS server answered at {url} within {}s (the first attempt said: {})",
                deadline.as_secs(),
                first_error
            );
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
            num_replicas: cfg.stream_replicas,
            ..Default::default()
        },
        stream::Config {
            name: names.shards.clone(),
            subjects: vec![subjects.shards_wildcard()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(cfg.shards_max_age_secs),
            // JetStream refuses a window longer than the age.
            duplicate_window: Duration::from_secs(120.min(cfg.shards_max_age_secs.max(1))),
            storage: stream::StorageType::File,
            num_replicas: cfg.stream_replicas,
            ..Default::default()
        },
        stream::Config {
            name: names.deadletter.clone(),
            subjects: vec![subjects.deadletter()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: cfg.deadletter_max_bytes,
            storage: stream::StorageType::File,
            num_replicas: cfg.stream_replicas,
            ..Default::default()
        },
    ];
    for (c, setting) in configs.into_iter().zip(["logs_max_bytes", "", "deadletter_max_bytes"]) {
        let name = c.name.clone();
        ensure_stream(js, c, setting).await?;
        info!(stream = %name, "stream-ready");
    }
    Ok(names)
}

/// Creates a stream unless it exists (an existing one is left as it is, with a warning
/// when its byte cap is not the one `config` asks for). `setting` names the config
/// setting that gives its cap ("" for none): JetStream sets every stream's cap aside out
/// of its storage limit, and when there is no room left the error says so and what to
/// change, beside nats-server's own words.
pub async fn ensure_stream(js: &jetstream::Context, config: stream::Config, setting: &str) -> Result<stream::Stream> {
    let name = config.name.clone();
    let cap = config.max_bytes;
    let created = js.get_or_create_stream(config).await.map_err(|e| {
        let code = match e.kind() {
            jetstream::context::CreateStreamErrorKind::JetStream(j) => Some(j.error_code()),
            _ => None,
        };
        let hint = match code {
            Some(jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED | jetstream::ErrorCode::INSUFFICIENT_RESOURCES) => "",
            // What a NATS cluster answers when no server can take the stream, for want
            // of room among other reasons.
            Some(jetstream::ErrorCode::CLUSTER_NO_PEERS) => "if the servers lack storage: ",
            _ => return anyhow::Error::new(e).context(format!("creating JetStream stream {name}")),
        };
        let what = if cap > 0 && !setting.is_empty() {
            format!("cannot set aside its byte cap of {} ({setting})", gossamer_config::show_bytes(cap))
        } else {
            "has no JetStream storage left for it".to_string()
        };
        anyhow::anyhow!(
            "creating JetStream stream {name}: {e}. {hint}nats-server {what}: JetStream reserves every stream's byte \
             cap out of its storage limit, which is 75% of the disk's free space when nats-server started unless its \
             config sets `jetstream {{ max_file_store: ... }}`. Free some disk, raise max_file_store, or lower the caps \
             Gossamer's streams take: logs_max_bytes, deadletter_max_bytes, notify_max_bytes (flags --logs-max-bytes, \
             --deadletter-max-bytes, --notify-max-bytes); a stream that exists keeps the cap it was created with"
        )
    })?;
    let kept = created.cached_info().config.max_bytes;
    if cap > 0 && !setting.is_empty() && kept != cap {
        warn!(stream = %name, cap = kept, asked = cap, setting, "stream-cap-kept: the stream exists with another byte cap, which it keeps");
    }
    Ok(created)
}

/// Acks every message at once and waits for all the acks to be sent.
pub async fn ack_all(msgs: &[jetstream::Message]) -> Result<()> {
    use futures::TryStreamExt;
    let acks: futures::stream::FuturesUnordered<_> = msgs.iter().map(|m| m.ack()).collect();
    acks.try_collect::<Vec<_>>().await.map_err(|e| anyhow::anyhow!("acking {} messages: {e}", msgs.len()))?;
    Ok(())
}

/// The share of its memory budget (in percent) past which a node stops taking more:
/// what is already in flight when it stops needs the rest.
pub const MEMORY_HIGH_WATER: u64 = 85;
/// The share of its memory budget (in percent) that what ingest has in flight may add to
/// what the node holds with nothing in flight, however large that is.
pub const MEMORY_IN_FLIGHT: u64 = 25;

/// How far the node's writers are behind, and how far they may fall before ingest stops
/// taking more: the shard actors' unapplied shard-log messages and the index's
/// unindexed events. The node updates it; ingest waits while it is over a limit, so a
/// slow disk or index holds events in JetStream (on disk) rather than in memory or in an
/// ever longer shard log.
#[derive(Debug)]
pub struct Pressure {
    shard_backlog: std::sync::atomic::AtomicU64,
    index_lag: std::sync::atomic::AtomicU64,
    max_shard_backlog: u64,
    max_index_lag: u64,
    /// This node runs the shards its ingest publishes to (both roles): only then does
    /// `published - applied` say how far they are behind.
    local_shards: std::sync::atomic::AtomicBool,
    /// Shard batches this node's ingest published, and shard-log messages this node's
    /// shard actors applied (or skipped as applied): their difference is the backlog
    /// when one node runs both, known at once rather than at the next measurement.
    pub published: std::sync::atomic::AtomicU64,
    pub applied: std::sync::atomic::AtomicU64,
    /// The node's memory budget in bytes (0: none), what it last held resident, and
    /// what it held when last seen with no shard-log message waiting to be applied.
    memory_budget: std::sync::atomic::AtomicU64,
    resident: std::sync::atomic::AtomicU64,
    resident_idle: std::sync::atomic::AtomicU64,
    /// `published` at the last measurement of resident memory.
    published_seen: std::sync::atomic::AtomicU64,
    /// Times ingest stopped to wait.
    pub paused_total: std::sync::atomic::AtomicU64,
    /// Ingest is waiting now.
    pub paused: std::sync::atomic::AtomicBool,
}

impl Pressure {
    /// `local_shards`: this node runs the shard actors too (see [`Pressure::published`]).
    pub fn new(max_shard_backlog: u64, max_index_lag: u64, local_shards: bool) -> Self {
        Self {
            shard_backlog: Default::default(),
            index_lag: Default::default(),
            max_shard_backlog,
            max_index_lag,
            local_shards: local_shards.into(),
            published: Default::default(),
            applied: Default::default(),
            memory_budget: Default::default(),
            resident: Default::default(),
            resident_idle: Default::default(),
            published_seen: Default::default(),
            paused_total: Default::default(),
            paused: Default::default(),
        }
    }

    /// Never over: for nodes and tests that do not measure.
    pub fn none() -> Self {
        Self::new(u64::MAX, u64::MAX, false)
    }

    /// Whether this node now runs every shard its ingest publishes to (in a cluster,
    /// the shards move as members come and go).
    /// Counting starts afresh when it is switched on (batches published while the
    /// shards were elsewhere are no backlog here; the measured one still counts).
    pub fn set_local_shards(&self, all_here: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if all_here && !self.local_shards.swap(true, Relaxed) {
            self.applied.store(self.published.load(Relaxed), Relaxed);
        } else if !all_here {
            self.local_shards.store(false, Relaxed);
        }
    }

    pub fn set(&self, shard_backlog: u64, index_lag: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.shard_backlog.store(shard_backlog, Relaxed);
        self.index_lag.store(index_lag, Relaxed);
    }

    /// With a memory budget (bytes): while the node holds more than
    /// [`MEMORY_HIGH_WATER`] of it, ingest waits until the shards have applied what it
    /// sent, so no more arrives than the node works on. What the store itself holds
    /// (sled's pages grow with it) is not in flight and no wait brings it down: a node
    /// already that full waits only once what is in flight adds [`MEMORY_IN_FLIGHT`] of
    /// the budget to it.
    pub fn with_memory_budget(self, bytes: u64) -> Self {
        self.memory_budget.store(bytes, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// What the node holds resident now, in bytes. It counts as what the node holds
    /// with nothing in flight when no shard-log message waits and ingest has published
    /// nothing since the last measurement.
    pub fn set_resident(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.resident.store(bytes, Relaxed);
        let published = self.published.load(Relaxed);
        let quiet = self.published_seen.swap(published, Relaxed) == published;
        if quiet && self.backlog() == 0 {
            self.resident_idle.store(bytes, Relaxed);
        }
    }

    /// Shard-log messages waiting to be applied, as far as this node knows.
    fn backlog(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let here = if self.local_shards.load(Relaxed) { self.published.load(Relaxed).saturating_sub(self.applied.load(Relaxed)) } else { 0 };
        self.shard_backlog.load(Relaxed).max(here)
    }

    /// The resident bytes past which ingest waits for the shards (none without a budget).
    fn memory_limit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let budget = self.memory_budget.load(Relaxed);
        (budget > 0).then(|| (budget.saturating_mul(MEMORY_HIGH_WATER) / 100).max(self.resident_idle.load(Relaxed) + budget.saturating_mul(MEMORY_IN_FLIGHT) / 100))
    }

    /// Why ingest should wait, if it should.
    pub fn over(&self) -> Option<String> {
        use std::sync::atomic::Ordering::Relaxed;
        let (backlog, lag) = (self.backlog(), self.index_lag.load(Relaxed));
        if backlog > self.max_shard_backlog {
            return Some(format!("{backlog} shard-log messages wait to be applied (max_shard_backlog {})", self.max_shard_backlog));
        }
        if lag > self.max_index_lag {
            return Some(format!("{lag} events wait to be indexed (max_index_lag {})", self.max_index_lag));
        }
        let resident = self.resident.load(Relaxed);
        if let Some(limit) = self.memory_limit().filter(|l| resident > *l && backlog > 0) {
            let mib = |b: u64| b >> 20;
            return Some(format!(
                "the node holds {} MiB, over the {} MiB its memory budget of {} MiB allows now, while {backlog} shard-log messages wait to be applied",
                mib(resident),
                mib(limit),
                mib(self.memory_budget.load(Relaxed))
            ));
        }
        None
    }

    /// Waits until nothing is over its limit, or `give_up` passes (then `Err` with the
    /// reason). `tick` runs every half second while it waits.
    pub async fn wait(&self, give_up: Option<Duration>, mut tick: impl FnMut()) -> std::result::Result<(), String> {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        let Some(first) = self.over() else { return Ok(()) };
        self.paused_total.fetch_add(1, Relaxed);
        self.paused.store(true, SeqCst);
        warn!(reason = %first, "ingest-paused");
        let start = std::time::Instant::now();
        let mut last_tick = start;
        let outcome = loop {
            let Some(reason) = self.over() else { break Ok(()) };
            if give_up.is_some_and(|g| start.elapsed() > g) {
                break Err(reason);
            }
            if last_tick.elapsed() > Duration::from_millis(500) {
                tick();
                last_tick = std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.paused.store(false, SeqCst);
        info!(waited_ms = start.elapsed().as_millis() as u64, "ingest-resumed");
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::Pressure;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn the_backlog_counts_published_minus_applied_only_where_the_shards_run() {
        let both = Pressure::new(10, 100, true);
        both.published.store(25, Relaxed);
        both.applied.store(12, Relaxed);
        assert!(both.over().is_some_and(|r| r.contains("13 shard-log messages")));
        both.applied.store(15, Relaxed);
        assert_eq!(both.over(), None);
        // An ingest-only node never sees its batches applied: it must not stall on them.
        let ingest_only = Pressure::new(10, 100, false);
        ingest_only.published.store(1_000_000, Relaxed);
        assert_eq!(ingest_only.over(), None);
        ingest_only.set(11, 0);
        assert!(ingest_only.over().is_some(), "the measured backlog still counts");
        ingest_only.set(0, 101);
        assert!(ingest_only.over().is_some_and(|r| r.contains("max_index_lag")));
    }

    #[test]
    fn over_its_memory_budget_ingest_waits_only_while_work_is_left() {
        let mib = |m: u64| m << 20;
        let p = Pressure::new(1000, 1000, true).with_memory_budget(mib(256));
        p.set_resident(mib(40));
        p.published.store(5, Relaxed);
        p.set_resident(mib(200));
        assert_eq!(p.over(), None, "under the budget a small backlog is fine");
        p.set_resident(mib(230));
        assert!(p.over().is_some_and(|r| r.contains("230 MiB") && r.contains("256 MiB")), "past 85% of it, ingest waits");
        // Nothing left to apply: waiting would not bring the memory down.
        p.applied.store(5, Relaxed);
        assert_eq!(p.over(), None);
        p.set(0, 7);
        assert_eq!(p.over(), None, "the index reads from the store: its lag holds no memory");
        // A store that alone holds the node over: what is in flight may add a quarter.
        p.set(0, 0);
        p.set_resident(mib(300));
        p.published.store(6, Relaxed);
        p.set_resident(mib(350));
        assert_eq!(p.over(), None);
        // Measured while ingest publishes, even with no backlog, it is not what the
        // store holds: the limit stays where it was.
        p.published.store(7, Relaxed);
        p.applied.store(7, Relaxed);
        p.set_resident(mib(380));
        p.published.store(8, Relaxed);
        p.set_resident(mib(370));
        p.set_resident(mib(370));
        assert!(p.over().is_some_and(|r| r.contains("364 MiB")), "{:?}", p.over());
        let none = Pressure::new(1000, 1000, true);
        none.published.store(5, Relaxed);
        none.set_resident(mib(4096));
        assert_eq!(none.over(), None, "no budget, never over");
    }
}
