//! One configuration for a node: defaults, then a JSON file, then `GOSSAMER_*`
//! environment variables, then command-line flags (applied by the binary, last).

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// `n` bytes as MiB, or as bytes under one MiB.
pub fn show_bytes(n: i64) -> String {
    if n >= MIB {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

/// The smallest byte cap a stream may be given.
pub const MIN_STREAM_BYTES: i64 = 64 << 10;

/// What [`Config::fit_stream_caps`] rounds caps to, and the least it lowers one to.
const MIB: i64 = 1 << 20;

/// Every role a node can run.
pub const ALL_ROLES: [&str; 6] = ["ingest", "shard", "index", "backup", "queue", "admin"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// NATS server URL.
    pub nats: String,
    /// How to authenticate to NATS (and whether to use TLS).
    pub nats_auth: NatsAuth,
    /// Where sled data lives.
    pub data: PathBuf,
    /// HTTP listen address of the REST API; port 0 picks a free port.
    pub http: String,
    /// Serve the API and console over TLS with this certificate chain and key (PEM).
    pub http_tls_cert: Option<PathBuf>,
    pub http_tls_key: Option<PathBuf>,
    /// The API's URL as the other members and the console should use it, when the
    /// listen address is not it (`0.0.0.0:8080` in a container). By default the bound
    /// address.
    pub http_advertise: Option<String>,
    /// Listen for syslog (RFC 5424 and 3164) on this UDP address; off when absent.
    pub syslog_udp: Option<String>,
    /// Listen for syslog on this TCP address (LF framing or RFC 6587 octet counting).
    pub syslog_tcp: Option<String>,
    /// Answer SQL over the PostgreSQL wire protocol on this TCP address; off when absent.
    pub pg: Option<String>,
    /// The Loki push door takes a stream's Gossamer stream from the first of these
    /// labels it has (else `loki`).
    pub loki_stream_labels: Vec<String>,
    pub node_id: String,
    pub cluster: String,
    /// Number of logical shards, fixed when the cluster is created.
    pub shards: u32,
    pub replicas: u32,
    pub roles: Vec<String>,
    /// Cap on the LOGS stream; publishers get an error past it. JetStream sets each
    /// stream's cap aside from its storage limit when the stream is created.
    pub logs_max_bytes: i64,
    /// Cap on the DEADLETTER stream (the oldest reasons go first past it).
    pub deadletter_max_bytes: i64,
    /// Cap on the NOTIFY stream that notification queues read (the oldest events go
    /// first past it).
    pub notify_max_bytes: i64,
    /// How long SHARDS keeps batches, in seconds.
    pub shards_max_age_secs: u64,
    /// Largest number of LOGS messages the ingest actor turns into one round of
    /// shard batches.
    pub ingest_batch: usize,
    /// How often per-stream retention is applied, in seconds.
    pub retention_every_secs: u64,
    /// What one payload and one event may hold.
    pub limits: gossamer_schemas::decode::Limits,
    /// The level given to an event that arrives without one. None by default: such an
    /// event keeps no level (null in answers, found by `-level:*`). A per-node setting,
    /// applied by the nodes with the ingest role: set it the same on each of them.
    pub default_level: Option<String>,
    /// What one query, one answer and one request body may hold.
    pub query_limits: QueryLimits,
    /// What the node may hold resident, in MiB (512 by default; `--memory-budget`).
    /// sled's cache, what ingest and the shards pull ahead, an ingest round, the
    /// postings the index keeps and SQL's working memory are carved from it (see
    /// [`MemoryBudget`]), and while the node is over it ingest waits for the shards and
    /// the index to catch up, and the index drops what it keeps.
    pub memory_budget_mb: u64,
    /// sled's page cache, in MiB: by default an eighth of the memory budget. sled's
    /// resident memory runs several times this when much of the store is read (its
    /// in-memory pages are bigger than their count).
    pub sled_cache_mb: Option<u64>,
    /// Bearer token for every API route (reads and changes). With neither token set,
    /// the API is open (a warning says so at start).
    pub admin_token: Option<Secret>,
    /// Bearer token for reads only: GET routes, `POST /api/v1/query`, `/metrics`.
    pub read_token: Option<Secret>,
    /// Where backups go: a directory, `file://DIR`, or `nats://BUCKET` (a NATS Object
    /// Store bucket). By default `backups` inside the data directory; keep backups
    /// elsewhere in production, as a lost disk takes both.
    pub backup_store: Option<String>,
    /// Take a backup this often, in seconds (0: only on request). The first is full,
    /// the next ones incremental.
    pub backup_every_secs: u64,
    /// Ingest stops taking events while this node's shard actors have more shard-log
    /// messages than this left to apply (they wait in JetStream, on disk).
    pub max_shard_backlog: u64,
    /// Ingest stops taking events while the index has more events than this left to
    /// index.
    pub max_index_lag: u64,
    /// Gossip: how often each node probes another member, in milliseconds.
    pub gossip_probe_ms: u64,
    /// Gossip: how long a suspected member has to refute before it is declared dead,
    /// in milliseconds.
    pub gossip_suspect_ms: u64,
    /// How long a query waits for another node's answer before asking the shard's
    /// next replica, in milliseconds.
    pub node_query_timeout_ms: u64,
    /// Copies JetStream keeps of each stream Gossamer creates (3 on a three-server NATS
    /// cluster; 1 on a single server).
    pub stream_replicas: usize,
}

/// NATS credentials: at most one of user and password, token, nkey seed file or creds
/// file; TLS with an optional CA, and a client certificate and key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// A file holding a user nkey seed (`SU...`).
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (JWT and seed), for servers in operator mode.
    pub creds_file: Option<PathBuf>,
    /// Require TLS.
    pub tls: bool,
    /// CA certificate (PEM) to trust for the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM), when the server asks for one.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl NatsAuth {
    /// Checks that the settings make one way to authenticate.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ways = [self.user.is_some(), self.token.is_some(), self.nkey_file.is_some(), self.creds_file.is_some()];
        if ways.iter().filter(|w| **w).count() > 1 {
            bail!("give one way to authenticate to NATS: user and password, token, nkey seed file or creds file");
        }
        if self.user.is_some() != self.password.is_some() {
            bail!("a NATS user needs a password, and a password a user");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("a NATS client certificate needs its key, and a key its certificate");
        }
        Ok(())
    }
}

/// The smallest memory budget a node takes: what it holds with nothing stored.
pub const MIN_MEMORY_BUDGET_MB: u64 = 64;

/// How a node's memory budget is shared out. Each part is a fixed share of the budget,
/// held between a floor the node needs to work and the size past which it gains
/// nothing; what is left is the node's own working memory (decoding, answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The whole budget, in bytes.
    pub bytes: u64,
    /// The shards this node may hold.
    pub shards: u32,
    sled_cache_mb: Option<u64>,
}

impl MemoryBudget {
    /// sled's page cache: as set, else an eighth of the budget.
    pub fn sled_cache_bytes(&self) -> u64 {
        self.sled_cache_mb.map(|mb| mb << 20).unwrap_or(self.bytes / 8)
    }

    /// Payload bytes one ingest round decodes and seals at most (two run at once).
    pub fn ingest_round_bytes(&self) -> usize {
        (self.bytes / 64).clamp(1 << 20, 8 << 20) as usize
    }

    /// Bytes of LOGS messages ingest pulls ahead: 4 MiB at least, more than the largest
    /// message NATS takes by default (1 MiB), or such a message would never come. A
    /// server that takes larger messages needs a budget whose eighth exceeds them.
    pub fn logs_pull_bytes(&self) -> usize {
        (self.bytes / 8).clamp(4 << 20, 64 << 20) as usize
    }

    /// Bytes of shard-log messages each shard pulls ahead. More than the largest shard
    /// batch (ingest splits them below 768 KiB), or such a batch would never come.
    pub fn shard_pull_bytes(&self) -> usize {
        (self.bytes / 8 / u64::from(self.shards.max(1))).clamp(1 << 20, 2 << 20) as usize
    }

    /// Decoded postings the index keeps for each shard's queries.
    pub fn index_kept_bytes(&self) -> usize {
        (self.bytes / 8 / u64::from(self.shards.max(1))).clamp(64 << 10, 1 << 20) as usize
    }

    /// Working memory of one SQL query: as set, at most half the budget.
    pub fn sql_bytes(&self, configured: usize) -> usize {
        configured.min((self.bytes / 2) as usize)
    }
}

/// A size in MiB: `512`, `512M`, `512MiB`, `2G` or `2GiB`.
pub fn parse_mib(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits].parse().with_context(|| format!("{s:?} is not a size such as 512, 512MiB or 2GiB"))?;
    let scale = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        other => bail!("{s:?}: unknown unit {other:?} (use MiB or GiB)"),
    };
    Ok(n * scale)
}

/// Limits on what the API takes and gives; each answers a 4xx naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryLimits {
    /// Bytes of query text.
    pub max_query_bytes: usize,
    /// Terms and operators in a query.
    pub max_query_terms: usize,
    /// Events in one page of a search.
    pub max_page: usize,
    /// Groups in one aggregation.
    pub max_groups: usize,
    /// Bytes of a REST request body (413 past it).
    pub max_body_bytes: usize,
    /// Bytes of SQL text.
    pub max_sql_bytes: usize,
    /// Memory one SQL query may hold for its sorts, groups and joins.
    pub sql_memory_bytes: usize,
    /// Seconds one SQL query may run, planning and every row included.
    pub sql_timeout_secs: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_query_bytes: 8192,
            max_query_terms: 256,
            max_page: 10_000,
            max_groups: 100_000,
            max_body_bytes: 1 << 20,
            max_sql_bytes: 16 * 1024,
            sql_memory_bytes: 256 << 20,
            sql_timeout_secs: 60,
        }
    }
}

/// A credential: its `Debug` never shows it, so logging a config cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// A token read from a file (surrounding whitespace dropped), so it stays out of
    /// the process list.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            bail!("the token file {} is empty", path.display());
        }
        Ok(Self(token.to_string()))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: "nats://127.0.0.1:4222".into(),
            nats_auth: Default::default(),
            data: PathBuf::from("gossamer-data"),
            http: "127.0.0.1:8080".into(),
            http_tls_cert: None,
            http_tls_key: None,
            http_advertise: None,
            syslog_udp: None,
            syslog_tcp: None,
            pg: None,
            loki_stream_labels: vec!["service_name".into(), "job".into(), "app".into()],
            default_level: None,
            node_id: "node-1".into(),
            cluster: "default".into(),
            shards: 64,
            replicas: 2,
            roles: ALL_ROLES.iter().map(|r| r.to_string()).collect(),
            logs_max_bytes: 8 << 30,
            deadletter_max_bytes: 1 << 30,
            notify_max_bytes: 4 << 30,
            shards_max_age_secs: 24 * 3600,
            ingest_batch: 2000,
            retention_every_secs: 60,
            limits: Default::default(),
            query_limits: Default::default(),
            memory_budget_mb: 512,
            sled_cache_mb: None,
            admin_token: None,
            read_token: None,
            backup_store: None,
            backup_every_secs: 0,
            max_shard_backlog: 50_000,
            max_index_lag: 20_000_000,
            gossip_probe_ms: 500,
            gossip_suspect_ms: 2000,
            node_query_timeout_ms: 5000,
            stream_replicas: 1,
        }
    }
}

impl Config {
    /// The node's memory budget and how it is shared out.
    pub fn memory_budget(&self) -> MemoryBudget {
        MemoryBudget { bytes: self.memory_budget_mb << 20, shards: self.shards, sled_cache_mb: self.sled_cache_mb }
    }

    /// A node for tests: everything local, few shards, data in `data`.
    pub fn for_test(nats: &str, data: PathBuf) -> Self {
        Self {
            nats: nats.into(),
            data,
            http: "127.0.0.1:0".into(),
            shards: 8,
            logs_max_bytes: 256 << 20,
            deadletter_max_bytes: 64 << 20,
            notify_max_bytes: 256 << 20,
            ..Self::default()
        }
    }

    /// The byte caps of LOGS, DEADLETTER and NOTIFY together: what JetStream sets aside
    /// for them (per copy) when they are created.
    pub fn stream_caps_total(&self) -> i64 {
        self.logs_max_bytes.saturating_add(self.deadletter_max_bytes).saturating_add(self.notify_max_bytes)
    }

    /// Lowers the stream caps not in `keep` (LOGS, DEADLETTER, NOTIFY: true for a cap
    /// the user set) in the same proportion until all three take at most `budget`
    /// bytes. A lowered cap is a whole number of MiB and at least 1 MiB, so a budget of
    /// a few MiB can still be overrun; no cap is ever raised. Returns false, changing
    /// nothing, when they fit already or every cap is kept.
    pub fn fit_stream_caps(&mut self, budget: i64, keep: [bool; 3]) -> bool {
        if self.stream_caps_total() <= budget || keep.iter().all(|k| *k) {
            return false;
        }
        let mut caps = [&mut self.logs_max_bytes, &mut self.deadletter_max_bytes, &mut self.notify_max_bytes];
        let kept: i64 = caps.iter().zip(keep).filter(|(_, k)| *k).map(|(c, _)| **c).fold(0, i64::saturating_add);
        let fitted: i64 = caps.iter().zip(keep).filter(|(_, k)| !*k).map(|(c, _)| **c).fold(0, i64::saturating_add);
        if fitted <= 0 {
            return false;
        }
        let share = (budget - kept).max(0) as f64 / fitted as f64;
        for (cap, _) in caps.iter_mut().zip(keep).filter(|(_, k)| !*k) {
            let lowered = ((**cap as f64 * share) as i64 / MIB * MIB).max(MIB);
            **cap = lowered.min(**cap);
        }
        true
    }

    /// Defaults, overlaid with the JSON file (if given) and `GOSSAMER_*` variables.
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                serde_json::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Self::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = get("GOSSAMER_NATS") {
            self.nats = v;
        }
        if let Some(v) = get("GOSSAMER_DATA") {
            self.data = v.into();
        }
        if let Some(v) = get("GOSSAMER_HTTP") {
            self.http = v;
        }
        if let Some(v) = get("GOSSAMER_NODE_ID") {
            self.node_id = v;
        }
        if let Some(v) = get("GOSSAMER_CLUSTER") {
            self.cluster = v;
        }
        if let Some(v) = get("GOSSAMER_SHARDS") {
            self.shards = v.parse().context("GOSSAMER_SHARDS must be a number")?;
        }
        if let Some(v) = get("GOSSAMER_ADMIN_TOKEN") {
            self.admin_token = Some(Secret(v));
        }
        if let Some(v) = get("GOSSAMER_READ_TOKEN") {
            self.read_token = Some(Secret(v));
        }
        if let Some(v) = get("GOSSAMER_NATS_USER") {
            self.nats_auth.user = Some(v);
        }
        if let Some(v) = get("GOSSAMER_NATS_PASSWORD") {
            self.nats_auth.password = Some(Secret(v));
        }
        if let Some(v) = get("GOSSAMER_NATS_TOKEN") {
            self.nats_auth.token = Some(Secret(v));
        }
        if let Some(v) = get("GOSSAMER_NATS_NKEY_FILE") {
            self.nats_auth.nkey_file = Some(v.into());
        }
        if let Some(v) = get("GOSSAMER_NATS_CREDS") {
            self.nats_auth.creds_file = Some(v.into());
        }
        if let Some(v) = get("GOSSAMER_BACKUP_STORE") {
            self.backup_store = Some(v);
        }
        if let Some(v) = get("GOSSAMER_SLED_CACHE_MB") {
            self.sled_cache_mb = Some(v.parse().context("GOSSAMER_SLED_CACHE_MB must be a number of MiB")?);
        }
        if let Some(v) = get("GOSSAMER_MEMORY_BUDGET") {
            self.memory_budget_mb = parse_mib(&v).context("GOSSAMER_MEMORY_BUDGET")?;
        }
        Ok(())
    }

    /// Checks what flags and files cannot express in their types.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.nats_auth.validate()?;
        if self.http_tls_cert.is_some() != self.http_tls_key.is_some() {
            bail!("HTTP TLS needs both a certificate (--tls-cert) and its key (--tls-key)");
        }
        if self.shards == 0 || self.shards > 4096 {
            bail!("shards must be between 1 and 4096, got {}", self.shards);
        }
        if self.replicas == 0 {
            bail!("replicas must be at least 1");
        }
        if self.default_level.as_deref().is_some_and(|l| gossamer_schemas::normalize_level(l).is_empty()) {
            bail!("default_level must be a level name such as info, or left unset so events without a level keep none");
        }
        if self.memory_budget_mb < MIN_MEMORY_BUDGET_MB {
            bail!("memory_budget_mb must be at least {MIN_MEMORY_BUDGET_MB} MiB, got {}", self.memory_budget_mb);
        }
        if !(1..=5).contains(&self.stream_replicas) {
            bail!("stream_replicas must be between 1 and 5 (JetStream's limit), got {}", self.stream_replicas);
        }
        for (name, cap) in [
            ("logs_max_bytes", self.logs_max_bytes),
            ("deadletter_max_bytes", self.deadletter_max_bytes),
            ("notify_max_bytes", self.notify_max_bytes),
        ] {
            if cap < MIN_STREAM_BYTES {
                bail!("{name} must be at least {MIN_STREAM_BYTES} bytes (64 KiB), got {cap}");
            }
        }
        if self.gossip_probe_ms < 50 || self.gossip_suspect_ms < self.gossip_probe_ms {
            bail!(
                "gossip_probe_ms must be at least 50 and gossip_suspect_ms at least gossip_probe_ms (got {} and {})",
                self.gossip_probe_ms,
                self.gossip_suspect_ms
            );
        }
        let token_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !token_ok(&self.cluster) {
            bail!("cluster name {:?} must be letters, digits, '_' or '-'", self.cluster);
        }
        if !token_ok(&self.node_id) {
            bail!("node id {:?} must be letters, digits, '_' or '-'", self.node_id);
        }
        for (name, t) in [("admin", &self.admin_token), ("read", &self.read_token)] {
            if t.as_ref().is_some_and(|t| t.0.len() < 16 || t.0.chars().any(char::is_whitespace)) {
                bail!("the {name} token must be at least 16 characters, without spaces");
            }
        }
        if self.read_token.is_some() && self.admin_token.is_none() {
            bail!("a read token without an admin token would leave changes open: set --admin-token too");
        }
        for r in &self.roles {
            if !ALL_ROLES.contains(&r.as_str()) {
                bail!("unknown role {r:?}; roles are {}", ALL_ROLES.join(","));
            }
        }
        Ok(())
    }

    /// Where backups go, as [`Config::backup_store`] says.
    pub fn backup_store(&self) -> String {
        self.backup_store.clone().unwrap_or_else(|| self.data.join("backups").display().to_string())
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_caps_shrink_in_proportion_to_fit_a_budget() {
        let mut cfg = Config::default();
        assert!(!cfg.fit_stream_caps(cfg.stream_caps_total(), [false; 3]), "caps that fit are left alone");
        assert_eq!(cfg.logs_max_bytes, 8 << 30);

        let budget = 3 << 30;
        assert!(cfg.fit_stream_caps(budget, [false; 3]));
        assert!(cfg.stream_caps_total() <= budget);
        assert!(cfg.stream_caps_total() > budget - 3 * MIB, "no more is taken off than rounding needs");
        // 8 : 1 : 4 still.
        assert_eq!(cfg.logs_max_bytes / MIB, 8 * 3 * 1024 / 13);
        assert_eq!(cfg.notify_max_bytes / MIB, 4 * 3 * 1024 / 13);
        assert_eq!(cfg.logs_max_bytes % MIB, 0);
        cfg.validate().unwrap();

        let mut tiny = Config::default();
        assert!(tiny.fit_stream_caps(1000, [false; 3]));
        assert_eq!([tiny.logs_max_bytes, tiny.deadletter_max_bytes, tiny.notify_max_bytes], [MIB; 3], "never under 1 MiB");

        let mut small = Config { notify_max_bytes: MIN_STREAM_BYTES, ..Config::default() };
        assert!(small.fit_stream_caps(2 << 30, [false; 3]));
        assert_eq!(small.notify_max_bytes, MIN_STREAM_BYTES, "a cap is never raised");
    }

    #[test]
    fn caps_the_user_set_are_kept_and_the_others_fit_around_them() {
        let mut cfg = Config { logs_max_bytes: 1 << 30, ..Config::default() };
        assert!(cfg.fit_stream_caps(2 << 30, [true, false, false]));
        assert_eq!(cfg.logs_max_bytes, 1 << 30, "set by the user");
        assert!(cfg.stream_caps_total() <= 2 << 30);
        // DEADLETTER : NOTIFY stays 1 : 4 in the GiB left.
        assert_eq!(cfg.deadletter_max_bytes / MIB, 1024 / 5);
        assert_eq!(cfg.notify_max_bytes / MIB, 4 * 1024 / 5);

        let mut all = Config::default();
        assert!(!all.fit_stream_caps(1 << 30, [true; 3]), "nothing to lower");
        assert_eq!(all.stream_caps_total(), Config::default().stream_caps_total());
    }

    #[test]
    fn a_stream_cap_under_64_kib_is_refused_by_name() {
        let cfg = Config { notify_max_bytes: 4096, ..Config::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("notify_max_bytes") && err.contains("4096"), "{err}");
    }

    #[test]
    fn environment_overrides_defaults() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "GOSSAMER_SHARDS").then(|| "16".to_string())).unwrap();
        assert_eq!(c.shards, 16);
        assert!(c.apply_env(|k| (k == "GOSSAMER_SHARDS").then(|| "many".to_string())).is_err());
    }

    #[test]
    fn a_config_file_sets_what_it_names_and_refuses_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("gossamer-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"shards": 16, "limits": {"max_labels": 8}}"#).unwrap();
        let c = Config::load(Some(&good)).unwrap();
        assert_eq!((c.shards, c.limits.max_labels, c.limits.max_batch_events), (16, 8, 10_000));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"shardz": 16}"#).unwrap();
        let err = format!("{:#}", Config::load(Some(&bad)).unwrap_err());
        assert!(err.contains("shardz"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_memory_budget_is_shared_out_within_its_floors() {
        assert_eq!(parse_mib("512").unwrap(), 512);
        assert_eq!(parse_mib("256MiB").unwrap(), 256);
        assert_eq!(parse_mib("2G").unwrap(), 2048);
        assert!(parse_mib("lots").is_err() && parse_mib("5TB").is_err());
        let b = Config::default().memory_budget();
        assert_eq!((b.sled_cache_bytes(), b.ingest_round_bytes(), b.logs_pull_bytes()), (64 << 20, 8 << 20, 64 << 20));
        assert_eq!((b.shard_pull_bytes(), b.index_kept_bytes(), b.sql_bytes(256 << 20)), (1 << 20, 1 << 20, 256 << 20));
        let small = Config { memory_budget_mb: 128, shards: 8, sled_cache_mb: Some(4), ..Config::default() }.memory_budget();
        assert_eq!((small.sled_cache_bytes(), small.ingest_round_bytes(), small.logs_pull_bytes()), (4 << 20, 2 << 20, 16 << 20));
        assert_eq!((small.shard_pull_bytes(), small.index_kept_bytes(), small.sql_bytes(256 << 20)), (2 << 20, 1 << 20, 64 << 20));
        // Whatever the budget, a shard can still pull its largest batch.
        let tiny = Config { memory_budget_mb: 64, shards: 4096, ..Config::default() }.memory_budget();
        assert!(tiny.shard_pull_bytes() > 768 << 10 && tiny.logs_pull_bytes() > 1 << 20);
        let err = Config { memory_budget_mb: 32, ..Config::default() }.validate().unwrap_err().to_string();
        assert!(err.contains("memory_budget_mb") && err.contains("32"), "{err}");
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = Config::default();
        c.roles.push("teapot".into());
        assert!(c.validate().unwrap_err().to_string().contains("teapot"));
        let c = Config { shards: 0, ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("shards"));
        Config::default().validate().unwrap();
    }
}
