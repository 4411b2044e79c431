//! `gossamer up` and `gossamer node`: run a node (or several, as child processes),
//! with a nats-server child when none is given.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use gossamer_config::Config;

use crate::cli::args::{BackupArgs, NatsArgs, StreamCapArgs, TokenArgs};

#[derive(Args)]
pub struct UpArgs {
    /// Number of nodes. With more than one, each runs as a child process
    /// (`gossamer node`), with its data in DATA/node-N and its API on the next port.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// Replicas of each shard (with several nodes).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Data directory: sled files and the nats-server's JetStream storage.
    #[arg(long, default_value = "gossamer-data")]
    pub data: PathBuf,
    /// Take syslog on this UDP address (with several nodes, the first node listens).
    #[arg(long)]
    pub syslog_udp: Option<String>,
    /// Take syslog on this TCP address (with several nodes, the first node listens).
    #[arg(long)]
    pub syslog_tcp: Option<String>,
    /// Answer SQL over the PostgreSQL wire protocol on this address, for psql and
    /// PostgreSQL drivers (with several nodes, the first node listens).
    #[arg(long, value_name = "ADDR")]
    pub pg: Option<String>,
    /// HTTP address of the REST API and console.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Use this NATS server instead of starting one.
    #[arg(long)]
    pub nats: Option<String>,
    /// Port for the nats-server child (0 picks a free port).
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// Number of logical shards (fixed when the data directory is created).
    #[arg(long)]
    pub shards: Option<u32>,
    /// What the node may hold resident: 512 (MiB) by default, or such as 256MiB or
    /// 2GiB. sled's cache, what it pulls ahead and what its queries keep are carved from
    /// it, and while the node is over it ingest waits for it to catch up.
    #[arg(long, value_parser = parse_budget)]
    pub memory_budget: Option<u64>,
    /// Stream caps. Those not given are the defaults, lowered in proportion when the
    /// disk under DATA has too little room for them on the nats-server `up` starts.
    #[command(flatten)]
    pub caps: StreamCapArgs,
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub backup: BackupArgs,
    #[command(flatten)]
    pub nats_auth: NatsArgs,
}

#[derive(Args)]
pub struct NodeArgs {
    /// A JSON config file; flags override it, and `GOSSAMER_*` variables override it too.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub nats: Option<String>,
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub http: Option<String>,
    /// The API's URL for the other members and the console, when the listen address
    /// is not it (`--http 0.0.0.0:8080` in a container).
    #[arg(long)]
    pub advertise_http: Option<String>,
    #[arg(long)]
    pub node_id: Option<String>,
    #[arg(long)]
    pub cluster: Option<String>,
    #[arg(long)]
    pub shards: Option<u32>,
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Take syslog (RFC 5424 and 3164) on this UDP address (off by default).
    #[arg(long)]
    pub syslog_udp: Option<String>,
    /// Take syslog on this TCP address: LF framing or RFC 6587 octet counting.
    #[arg(long)]
    pub syslog_tcp: Option<String>,
    /// Answer SQL over the PostgreSQL wire protocol on this address (off by default);
    /// with tokens set, the read or admin token is the password.
    #[arg(long, value_name = "ADDR")]
    pub pg: Option<String>,
    /// Labels a Loki push's stream name comes from, the first one present (comma
    /// separated; default service_name,job,app, else `loki`).
    #[arg(long, value_delimiter = ',')]
    pub loki_stream_label: Option<Vec<String>>,
    /// The level given to events that arrive without one (by default they keep none).
    #[arg(long)]
    pub default_level: Option<String>,
    /// What the node may hold resident: 512 (MiB) by default, or such as 256MiB or
    /// 2GiB. sled's cache, what it pulls ahead and what its queries keep are carved from
    /// it, and while the node is over it ingest waits for it to catch up.
    #[arg(long, value_parser = parse_budget)]
    pub memory_budget: Option<u64>,
    /// Comma-separated roles: ingest,shard,index,backup,queue,admin (all by default).
    #[arg(long, value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
    #[command(flatten)]
    pub caps: StreamCapArgs,
    /// How often per-stream retention runs, in seconds.
    #[arg(long)]
    pub retention_every_secs: Option<u64>,
    /// Print the configuration these flags, the file and the environment give (secrets
    /// hidden), check it, and exit without starting.
    #[arg(long)]
    pub print_config: bool,
    /// Copies JetStream keeps of each stream this node creates (3 on a NATS cluster).
    #[arg(long)]
    pub stream_replicas: Option<usize>,
    /// How long the shard log keeps batches, in seconds (when this node creates it): how
    /// far a replica can replay; past it, replicas copy a peer.
    #[arg(long)]
    pub shards_max_age_secs: Option<u64>,
    /// Gossip: how often to probe a member, in milliseconds (500).
    #[arg(long)]
    pub gossip_probe_ms: Option<u64>,
    /// Gossip: how long a suspected member has to refute before it is declared dead,
    /// in milliseconds (2000).
    #[arg(long)]
    pub gossip_suspect_ms: Option<u64>,
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub backup: BackupArgs,
    #[command(flatten)]
    pub nats_auth: NatsArgs,
}

fn parse_budget(s: &str) -> Result<u64, String> {
    gossamer_config::parse_mib(s).map_err(|e| format!("{e:#}"))
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

pub fn print_ready(cfg: &Config, addr: std::net::SocketAddr) {
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

pub fn run_node_blocking(cfg: Config) -> Result<()> {
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        let shown = cfg.clone();
        crate::node::run(cfg, shutdown_signal(), move |addr| print_ready(&shown, addr)).await
    });
    result
}

pub fn node(a: NodeArgs) -> Result<()> {
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
    if a.syslog_udp.is_some() {
        cfg.syslog_udp = a.syslog_udp;
    }
    if a.syslog_tcp.is_some() {
        cfg.syslog_tcp = a.syslog_tcp;
    }
    if a.pg.is_some() {
        cfg.pg = a.pg;
    }
    if let Some(labels) = a.loki_stream_label {
        cfg.loki_stream_labels = labels.into_iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    }
    if let Some(level) = a.default_level {
        cfg.default_level = Some(level);
    }
    if let Some(mb) = a.memory_budget {
        cfg.memory_budget_mb = mb;
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

pub fn up(a: UpArgs) -> Result<()> {
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
    if let Some(mb) = a.memory_budget {
        cfg.memory_budget_mb = mb;
    }
    if a.syslog_udp.is_some() {
        cfg.syslog_udp = a.syslog_udp.clone();
    }
    if a.syslog_tcp.is_some() {
        cfg.syslog_tcp = a.syslog_tcp.clone();
    }
    if a.pg.is_some() {
        cfg.pg = a.pg.clone();
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
            let port = if a.nats_port != 0 && crate::local::port_in_use(a.nats_port) {
                let p = crate::local::free_port()?;
                eprintln!("port {} is taken; starting nats-server on port {p}", a.nats_port);
                p
            } else {
                a.nats_port
            };
            let store = a.data.join("nats");
            crate::local::fit_caps_to_disk_saying(&mut cfg, &store, a.caps.given());
            let server = crate::local::NatsServer::start(&store, port)?;
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

/// Runs `nodes` nodes as child processes, each from a config file written next to its
/// data (mode 0600: it may hold tokens), until Ctrl-C or SIGTERM; then stops them.
pub fn run_children(base: Config, nodes: u32) -> Result<()> {
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
        if i > 1 {
            // One listener per address: the first node takes syslog and PostgreSQL.
            cfg.syslog_udp = None;
            cfg.syslog_tcp = None;
            cfg.pg = None;
        }
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
pub fn stop_children(children: &mut [std::process::Child]) {
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
