//! Command-line parsing and the commands' entry points.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use gossamer_config::Config;

#[derive(Parser)]
#[command(name = "gossamer", version, about = "A distributed, real-time log and event store on NATS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything local: a nats-server child (unless --nats is given) and a node.
    Up(UpArgs),
    /// Run a node against an existing NATS server.
    Node(NodeArgs),
    /// Publish NDJSON or plain lines from a file or stdin to `logs.<stream>`.
    Publish(PublishCmd),
    /// Search (or count) events on a node.
    Query(QueryCmd),
    /// Delete one event by id, or every event matching a query.
    Delete(DeleteCmd),
    /// Set a stream's retention: events older than MAX_AGE (7d, 12h, 90m) are deleted;
    /// `off` keeps them.
    Retention(RetentionCmd),
    /// Measure Gossamer on this machine.
    Bench(crate::bench::BenchArgs),
    /// Operate a node: rebuild its index, see its state.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Back up a node's events, verify backups, restore them into an empty node.
    #[command(subcommand)]
    Backup(crate::backup_cli::BackupCmd),
    /// Define notification queues of matching events, see their counters.
    #[command(subcommand)]
    Queue(crate::queue_cli::QueueCmd),
    /// Print events matching a query as they are stored.
    Tail(crate::queue_cli::TailCmd),
    /// See the cluster: members, their state, the shards they hold.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Members (alive, suspect, dead) and the shard map, as one node sees them.
    Status {
        #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Print the API's JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
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

#[derive(Args)]
struct DeleteCmd {
    #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Delete the event with this id.
    #[arg(long, conflicts_with = "query")]
    id: Option<String>,
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    /// Delete every event matching this query (`stream:*` means everything).
    query: Option<String>,
}

#[derive(Args)]
struct RetentionCmd {
    #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    stream: String,
    /// 7d, 12h, 90m, or `off`.
    max_age: String,
}

#[derive(Args)]
struct UpArgs {
    /// Number of nodes. With more than one, each runs as a child process
    /// (`gossamer node`), with its data in DATA/node-N and its API on the next port.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Replicas of each shard (with several nodes).
    #[arg(long)]
    replicas: Option<u32>,
    /// Data directory: sled files and the nats-server's JetStream storage.
    #[arg(long, default_value = "gossamer-data")]
    data: PathBuf,
    /// HTTP address of the REST API and console.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Use this NATS server instead of starting one.
    #[arg(long)]
    nats: Option<String>,
    /// Port for the nats-server child (0 picks a free port).
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    /// Number of logical shards (fixed when the data directory is created).
    #[arg(long)]
    shards: Option<u32>,
    /// Stream caps. Those not given are the defaults, lowered in proportion when the
    /// disk under DATA has too little room for them on the nats-server `up` starts.
    #[command(flatten)]
    caps: StreamCapArgs,
    #[command(flatten)]
    tokens: TokenArgs,
    #[command(flatten)]
    backup: BackupArgs,
    #[command(flatten)]
    nats_auth: NatsArgs,
}

#[derive(Args)]
struct NodeArgs {
    /// A JSON config file; flags override it, and `GOSSAMER_*` variables override it too.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    nats: Option<String>,
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long)]
    http: Option<String>,
    /// The API's URL for the other members and the console, when the listen address
    /// is not it (`--http 0.0.0.0:8080` in a container).
    #[arg(long)]
    advertise_http: Option<String>,
    #[arg(long)]
    node_id: Option<String>,
    #[arg(long)]
    cluster: Option<String>,
    #[arg(long)]
    shards: Option<u32>,
    #[arg(long)]
    replicas: Option<u32>,
    /// Comma-separated roles: ingest,shard,index,backup,queue,admin (all by default).
    #[arg(long, value_delimiter = ',')]
    roles: Option<Vec<String>>,
    #[command(flatten)]
    caps: StreamCapArgs,
    /// How often per-stream retention runs, in seconds.
    #[arg(long)]
    retention_every_secs: Option<u64>,
    /// Print the configuration these flags, the file and the environment give (secrets
    /// hidden), check it, and exit without starting.
    #[arg(long)]
    print_config: bool,
    /// Copies JetStream keeps of each stream this node creates (3 on a NATS cluster).
    #[arg(long)]
    stream_replicas: Option<usize>,
    /// How long the shard log keeps batches, in seconds (when this node creates it): how
    /// far a replica can replay; past it, replicas copy a peer.
    #[arg(long)]
    shards_max_age_secs: Option<u64>,
    /// Gossip: how often to probe a member, in milliseconds (500).
    #[arg(long)]
    gossip_probe_ms: Option<u64>,
    /// Gossip: how long a suspected member has to refute before it is declared dead,
    /// in milliseconds (2000).
    #[arg(long)]
    gossip_suspect_ms: Option<u64>,
    #[command(flatten)]
    tokens: TokenArgs,
    #[command(flatten)]
    backup: BackupArgs,
    #[command(flatten)]
    nats_auth: NatsArgs,
}

/// Byte caps of the streams a node creates (when it is the first to). JetStream sets
/// each cap aside out of its storage when the stream is created.
#[derive(Args)]
struct StreamCapArgs {
    /// Cap of the LOGS stream (8 GiB); publishers get an error past it.
    #[arg(long)]
    logs_max_bytes: Option<i64>,
    /// Cap of the DEADLETTER stream (1 GiB); the oldest entries go first past it.
    #[arg(long)]
    deadletter_max_bytes: Option<i64>,
    /// Cap of the NOTIFY stream queues read from (4 GiB); the oldest events go first
    /// past it.
    #[arg(long)]
    notify_max_bytes: Option<i64>,
}

impl StreamCapArgs {
    fn apply(&self, cfg: &mut Config) {
        for (flag, cap) in [
            (self.logs_max_bytes, &mut cfg.logs_max_bytes),
            (self.deadletter_max_bytes, &mut cfg.deadletter_max_bytes),
            (self.notify_max_bytes, &mut cfg.notify_max_bytes),
        ] {
            if let Some(v) = flag {
                *cap = v;
            }
        }
    }

    /// Which of LOGS, DEADLETTER and NOTIFY were given.
    fn given(&self) -> [bool; 3] {
        [self.logs_max_bytes.is_some(), self.deadletter_max_bytes.is_some(), self.notify_max_bytes.is_some()]
    }
}

/// The API's bearer tokens (`GOSSAMER_ADMIN_TOKEN`, `GOSSAMER_READ_TOKEN` too).
#[derive(Args)]
struct TokenArgs {
    /// Token for every API route; without any token the API is open.
    #[arg(long, conflicts_with = "admin_token_file")]
    admin_token: Option<String>,
    /// The admin token, from a file (kept out of the process list).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Token for reads only (GET routes, POST /api/v1/query, /metrics).
    #[arg(long, conflicts_with = "read_token_file")]
    read_token: Option<String>,
    #[arg(long)]
    read_token_file: Option<PathBuf>,
    /// Serve the API and console over HTTPS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// How to authenticate to NATS (`GOSSAMER_NATS_USER`, `_PASSWORD`, `_TOKEN`,
/// `_NKEY_FILE`, `_CREDS` too).
#[derive(Args)]
struct NatsArgs {
    #[arg(long)]
    nats_user: Option<String>,
    /// With --nats-user (or GOSSAMER_NATS_PASSWORD, kept out of the process list).
    #[arg(long)]
    nats_password: Option<String>,
    #[arg(long)]
    nats_token: Option<String>,
    /// A file holding a user nkey seed (SU...).
    #[arg(long)]
    nats_nkey_file: Option<PathBuf>,
    /// A .creds file (JWT and seed) for servers in operator mode.
    #[arg(long)]
    nats_creds: Option<PathBuf>,
    /// Require TLS to NATS.
    #[arg(long)]
    nats_tls: bool,
    /// CA certificate (PEM) for the NATS server's certificate (implies TLS).
    #[arg(long)]
    nats_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for NATS.
    #[arg(long, requires = "nats_key")]
    nats_cert: Option<PathBuf>,
    #[arg(long, requires = "nats_cert")]
    nats_key: Option<PathBuf>,
}

impl NatsArgs {
    fn apply(self, auth: &mut gossamer_config::NatsAuth) {
        use gossamer_config::Secret;
        let or = |a: Option<PathBuf>, b: &mut Option<PathBuf>| {
            if a.is_some() {
                *b = a;
            }
        };
        if let Some(u) = self.nats_user {
            auth.user = Some(u);
        }
        if let Some(p) = self.nats_password {
            auth.password = Some(Secret(p));
        }
        if let Some(t) = self.nats_token {
            auth.token = Some(Secret(t));
        }
        or(self.nats_nkey_file, &mut auth.nkey_file);
        or(self.nats_creds, &mut auth.creds_file);
        or(self.nats_ca, &mut auth.tls_ca);
        or(self.nats_cert, &mut auth.tls_cert);
        or(self.nats_key, &mut auth.tls_key);
        auth.tls |= self.nats_tls;
    }
}

/// Where backups go and how often they are taken.
#[derive(Args)]
struct BackupArgs {
    /// A directory, file://DIR, or nats://BUCKET (a NATS Object Store bucket);
    /// `backups` in the data directory by default.
    #[arg(long)]
    backup_store: Option<String>,
    /// Take a backup this often (90m, 6h, 1d): the first full, then incrementals.
    #[arg(long)]
    backup_every: Option<String>,
}

impl BackupArgs {
    fn apply(self, cfg: &mut Config) -> Result<()> {
        if let Some(s) = self.backup_store {
            cfg.backup_store = Some(s);
        }
        if let Some(every) = self.backup_every {
            let ns = gossamer_query::agg::parse_duration(every.trim())
                .filter(|ns| *ns >= 1_000_000_000)
                .with_context(|| format!("--backup-every {every:?}: use a duration of a second or more, like 90m, 6h, 1d"))?;
            cfg.backup_every_secs = (ns / 1_000_000_000) as u64;
        }
        Ok(())
    }
}

impl TokenArgs {
    fn apply(self, cfg: &mut Config) -> Result<()> {
        use gossamer_config::Secret;
        if let Some(t) = self.admin_token {
            cfg.admin_token = Some(Secret(t));
        }
        if let Some(p) = self.admin_token_file {
            cfg.admin_token = Some(Secret::from_file(&p)?);
        }
        if let Some(t) = self.read_token {
            cfg.read_token = Some(Secret(t));
        }
        if let Some(p) = self.read_token_file {
            cfg.read_token = Some(Secret::from_file(&p)?);
        }
        if self.tls_cert.is_some() {
            cfg.http_tls_cert = self.tls_cert;
            cfg.http_tls_key = self.tls_key;
        }
        Ok(())
    }
}

#[derive(Args)]
struct PublishCmd {
    #[arg(long, env = "GOSSAMER_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    nats_auth: NatsArgs,
    #[arg(long, env = "GOSSAMER_CLUSTER", default_value = "default")]
    cluster: String,
    /// Publish to `logs.<stream>` with JetStream (buffered even while no node runs)
    /// instead of asking the ingest actors directly (the default, and the fastest).
    #[arg(long)]
    jetstream: bool,
    /// Stream name: events go to `logs.<stream>`.
    #[arg(long)]
    stream: String,
    /// Events per NATS message.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Do not draw the progress bar.
    #[arg(long)]
    quiet: bool,
    /// NDJSON or plain-text file; `-` or nothing reads stdin.
    file: Option<PathBuf>,
}

#[derive(Args)]
struct QueryCmd {
    #[arg(long, env = "GOSSAMER_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// desc (newest first) or asc.
    #[arg(long, default_value = "desc")]
    order: String,
    /// Print only the number of matching events.
    #[arg(long)]
    count: bool,
    /// Print events (or groups) as JSON lines.
    #[arg(long)]
    json: bool,
    /// Aggregate instead: count, sum, avg, min, max, p50, p90, p95, p99.
    #[arg(long)]
    agg: Option<String>,
    /// The numeric field to aggregate.
    #[arg(long)]
    field: Option<String>,
    /// Group by these labels (comma-separated; `stream` and `level` work too).
    #[arg(long)]
    by: Option<String>,
    /// Time bucket width: 30s, 1m, 1h, 1d.
    #[arg(long)]
    bucket: Option<String>,
    /// The query, in the text syntax (empty matches everything).
    #[arg(default_value = "")]
    query: String,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet_default = matches!(cli.command, Command::Publish(_) | Command::Query(_) | Command::Tail(_));
    init_tracing(if quiet_default { "warn" } else { "info" });
    let result = match cli.command {
        Command::Up(a) => up(a),
        Command::Node(a) => node(a),
        Command::Publish(a) => publish(a),
        Command::Query(a) => {
            let args = crate::client::QueryArgs {
                server: a.server,
                q: a.query,
                from: a.from,
                to: a.to,
                limit: a.limit,
                order: a.order,
                count: a.count,
                json: a.json,
                agg: a.agg,
                field: a.field,
                by: a.by,
                bucket: a.bucket,
            };
            crate::client::query(args, &mut std::io::stdout().lock())
        }
        Command::Delete(a) => delete(a),
        Command::Retention(a) => retention(a),
        Command::Bench(a) => crate::bench::run(a),
        Command::Admin(a) => admin(a),
        Command::Backup(a) => crate::backup_cli::run(a),
        Command::Queue(a) => crate::queue_cli::run(a),
        Command::Tail(a) => crate::queue_cli::tail(a),
        Command::Cluster(ClusterCmd::Status { server, json }) => cluster_status(&server, json),
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

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn print_ready(cfg: &Config, addr: std::net::SocketAddr) {
    use std::io::Write;
    // Whoever started us may have stopped reading stdout: that must not stop the node.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "Gossamer node {} is up.", cfg.node_id);
    let scheme = if cfg.http_tls_cert.is_some() { "https" } else { "http" };
    let _ = writeln!(out, "  REST API and console: {scheme}://{addr}/");
    let _ = writeln!(out, "  NATS: {}", cfg.nats);
    let _ = writeln!(
        out,
        "  publish:  gossamer publish --nats {} --stream myapp FILE   (or any NATS client: publish JSON to logs.myapp)",
        cfg.nats
    );
    let _ = writeln!(out, "  query:    gossamer query --server {scheme}://{addr} 'level:error'");
    let _ = writeln!(out, "Press Ctrl-C to stop.");
    let _ = out.flush();
}

fn run_node_blocking(cfg: Config) -> Result<()> {
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        let shown = cfg.clone();
        crate::node::run(cfg, shutdown_signal(), move |addr| print_ready(&shown, addr)).await
    });
    result
}

fn node(a: NodeArgs) -> Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let Some(v) = a.nats {
        cfg.nats = v;
    }
    if let Some(v) = a.data {
        cfg.data = v;
    }
    if let Some(v) = a.http {
        cfg.http = v;
    }
    if let Some(v) = a.advertise_http {
        cfg.http_advertise = Some(v);
    }
    if let Some(v) = a.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = a.cluster {
        cfg.cluster = v;
    }
    if let Some(v) = a.shards {
        cfg.shards = v;
    }
    if let Some(v) = a.replicas {
        cfg.replicas = v;
    }
    if let Some(v) = a.roles {
        cfg.roles = v;
    }
    a.caps.apply(&mut cfg);
    if let Some(v) = a.retention_every_secs {
        cfg.retention_every_secs = v.max(1);
    }
    if let Some(v) = a.stream_replicas {
        cfg.stream_replicas = v;
    }
    if let Some(v) = a.shards_max_age_secs {
        cfg.shards_max_age_secs = v.max(1);
    }
    if let Some(v) = a.gossip_probe_ms {
        cfg.gossip_probe_ms = v;
    }
    if let Some(v) = a.gossip_suspect_ms {
        cfg.gossip_suspect_ms = v;
    }
    a.tokens.apply(&mut cfg)?;
    a.backup.apply(&mut cfg)?;
    a.nats_auth.apply(&mut cfg.nats_auth);
    if a.print_config {
        cfg.validate()?;
        let mut shown = serde_json::to_value(&cfg)?;
        for secret in ["admin_token", "read_token"] {
            if !shown[secret].is_null() {
                shown[secret] = "***".into();
            }
        }
        for secret in ["password", "token"] {
            if !shown["nats_auth"][secret].is_null() {
                shown["nats_auth"][secret] = "***".into();
            }
        }
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    run_node_blocking(cfg)
}

fn up(a: UpArgs) -> Result<()> {
    if a.nodes == 0 || a.nodes > 16 {
        bail!("--nodes must be between 1 and 16, got {}", a.nodes);
    }
    let mut cfg = Config::load(None)?;
    cfg.data = a.data.clone();
    cfg.http = a.http;
    if let Some(s) = a.shards {
        cfg.shards = s;
    }
    if let Some(r) = a.replicas {
        cfg.replicas = r;
    }
    a.caps.apply(&mut cfg);
    a.tokens.apply(&mut cfg)?;
    a.backup.apply(&mut cfg)?;
    a.nats_auth.apply(&mut cfg.nats_auth);
    cfg.validate()?;
    let _server = match a.nats {
        Some(url) => {
            cfg.nats = url;
            None
        }
        None => {
            let port = if a.nats_port != 0 && crate::nats_server::port_in_use(a.nats_port) {
                let p = crate::nats_server::free_port()?;
                eprintln!("port {} is taken; starting nats-server on port {p}", a.nats_port);
                p
            } else {
                a.nats_port
            };
            let store = a.data.join("nats");
            fit_caps_to_disk(&mut cfg, &store, a.caps.given());
            let server = crate::nats_server::NatsServer::start(&store, port)?;
            cfg.nats = server.url();
            Some(server)
        }
    };
    if a.nodes > 1 {
        return run_children(cfg, a.nodes);
    }
    run_node_blocking(cfg)
    // `_server` drops here: nats-server is stopped after the node.
}

/// [`crate::nats_server::fit_caps_to_disk`], saying so when it lowers the caps.
pub fn fit_caps_to_disk(cfg: &mut Config, store: &std::path::Path, keep: [bool; 3]) {
    if let Some(free) = crate::nats_server::fit_caps_to_disk(cfg, store, keep) {
        let show = gossamer_config::show_bytes;
        eprintln!(
            "{} free under {}: caps of new streams lowered to fit (those given as flags kept): LOGS {}, DEADLETTER {}, \
             NOTIFY {} (--logs-max-bytes, --deadletter-max-bytes, --notify-max-bytes set them)",
            show(free.min(i64::MAX as u64) as i64),
            store.display(),
            show(cfg.logs_max_bytes),
            show(cfg.deadletter_max_bytes),
            show(cfg.notify_max_bytes)
        );
    }
}

fn cluster_status(server: &str, as_json: bool) -> Result<()> {
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

/// Runs `nodes` nodes as child processes, each from a config file written next to its
/// data (mode 0600: it may hold tokens), until Ctrl-C or SIGTERM; then stops them.
fn run_children(base: Config, nodes: u32) -> Result<()> {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let exe = std::env::current_exe().context("finding the gossamer executable")?;
    let http: std::net::SocketAddr =
        base.http.parse().with_context(|| format!("--http {} must be an address and port (127.0.0.1:8080)", base.http))?;
    let mut children = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
    for i in 1..=nodes {
        let mut cfg = base.clone();
        cfg.node_id = format!("node-{i}");
        cfg.data = base.data.join(format!("node-{i}"));
        let port = if http.port() == 0 { 0 } else { http.port() + (i as u16 - 1) };
        cfg.http = std::net::SocketAddr::new(http.ip(), port).to_string();
        std::fs::create_dir_all(&cfg.data).with_context(|| format!("creating {}", cfg.data.display()))?;
        let file = base.data.join(format!("node-{i}.json"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("writing {}", file.display()))?;
        f.write_all(serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        let mut child = std::process::Command::new(&exe)
            .args(["node", "--config"])
            .arg(&file)
            .env_remove("GOSSAMER_HTTP")
            .env_remove("GOSSAMER_DATA")
            .env_remove("GOSSAMER_NODE_ID")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting node-{i}"))?;
        let stdout = child.stdout.take().expect("piped");
        let tx = ready_tx.clone();
        let name = cfg.node_id.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.trim().strip_prefix("REST API and console: ") {
                    let _ = tx.send(format!("{name}: {url}"));
                }
            }
        });
        children.push(child);
    }
    drop(ready_tx);
    let mut up = Vec::new();
    for _ in 0..nodes {
        match ready_rx.recv_timeout(std::time::Duration::from_secs(180)) {
            Ok(line) => up.push(line),
            Err(_) => {
                stop_children(&mut children);
                bail!("not every node started within 180 s; see their logs above");
            }
        }
    }
    up.sort();
    println!("Gossamer cluster {} is up with {nodes} nodes ({} replicas per shard).", base.cluster, base.replicas.min(nodes));
    for line in &up {
        println!("  {line}");
    }
    println!("  NATS: {}", base.nats);
    println!("  publish:  gossamer publish --nats {} --stream myapp FILE   (or any NATS client: publish JSON to logs.myapp)", base.nats);
    println!("  status:   gossamer cluster status --server {}", up[0].split_once(": ").map(|x| x.1).unwrap_or("").trim_end_matches('/'));
    println!("Press Ctrl-C to stop.");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        // A node that stops (or is killed to watch failover) is reported; the others
        // go on until Ctrl-C or until none is left.
        let watch = async {
            let mut gone = vec![false; children.len()];
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                for (i, c) in children.iter_mut().enumerate() {
                    if let (false, Ok(Some(status))) = (gone[i], c.try_wait()) {
                        gone[i] = true;
                        eprintln!("node-{} stopped ({status}); the others go on", i + 1);
                    }
                }
                if gone.iter().all(|g| *g) {
                    break;
                }
            }
        };
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = watch => eprintln!("every node stopped"),
        }
    });
    stop_children(&mut children);
    Ok(())
}

/// SIGTERM to every child (they leave the cluster and flush), then wait; one that has
/// not stopped after 30 s is killed.
fn stop_children(children: &mut [std::process::Child]) {
    for c in children.iter() {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for c in children.iter_mut() {
        while let Ok(None) = c.try_wait() {
            if std::time::Instant::now() > deadline {
                eprintln!("node (pid {}) did not stop within 30 s; killing it", c.id());
                let _ = c.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = c.wait();
    }
}

fn publish(a: PublishCmd) -> Result<()> {
    let mut auth = gossamer_config::Config::load(None)?.nats_auth;
    a.nats_auth.apply(&mut auth);
    let args = crate::client::PublishArgs {
        nats: a.nats,
        auth,
        cluster: a.cluster,
        jetstream: a.jetstream,
        stream: a.stream,
        input: a.file,
        batch: a.batch.max(1),
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(crate::client::publish(args))?;
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
    Ok(())
}

/// Sends a JSON request and prints the answer's `field`, or fails with the API's error.
pub(crate) fn call(req: ureq::Request, body: Option<serde_json::Value>) -> Result<serde_json::Value> {
    let req = crate::client::with_token(req);
    let result = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match result {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => {
            let body: serde_json::Value = r.into_json().unwrap_or_default();
            bail!("{} ({code})", body["error"].as_str().unwrap_or("request failed"))
        }
        Err(e) => bail!("{e}"),
    }
}

fn delete(a: DeleteCmd) -> Result<()> {
    let base = a.server.trim_end_matches('/');
    let answer = match (a.id, a.query) {
        (Some(id), _) => call(ureq::delete(&format!("{base}/api/v1/events/{id}")), None)?,
        (None, Some(q)) => call(
            ureq::post(&format!("{base}/api/v1/delete")),
            Some(serde_json::json!({ "q": q, "from": a.from, "to": a.to })),
        )?,
        (None, None) => bail!("say what to delete: --id UUID, or a query"),
    };
    println!("deleted {}", answer["deleted"]);
    Ok(())
}

fn retention(a: RetentionCmd) -> Result<()> {
    let base = a.server.trim_end_matches('/');
    let max_age = if a.max_age == "off" { serde_json::Value::Null } else { serde_json::Value::String(a.max_age) };
    let answer = call(
        ureq::put(&format!("{base}/api/v1/streams/{}/retention", a.stream)),
        Some(serde_json::json!({ "max_age": max_age })),
    )?;
    println!("{}: retention {}, {} events deleted now", answer["stream"].as_str().unwrap_or(""), answer["max_age"], answer["deleted"]);
    Ok(())
}

fn admin(a: AdminCmd) -> Result<()> {
    match a {
        AdminCmd::DiskUsage { data } => {
            let sled = data.join("sled");
            if !sled.exists() {
                bail!("{} holds no node data (no sled directory)", data.display());
            }
            let cache = gossamer_config::Config::load(None)?.sled_cache_mb << 20;
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
