//! Flag groups several commands share: stream caps, API tokens and TLS, NATS
//! credentials, the backup store.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use gossamer_config::Config;

/// Byte caps of the streams a node creates (when it is the first to). JetStream sets
/// each cap aside out of its storage when the stream is created.
#[derive(Args)]
pub struct StreamCapArgs {
    /// Cap of the LOGS stream (8 GiB); publishers get an error past it.
    #[arg(long)]
    pub logs_max_bytes: Option<i64>,
    /// Cap of the DEADLETTER stream (1 GiB); the oldest entries go first past it.
    #[arg(long)]
    pub deadletter_max_bytes: Option<i64>,
    /// Cap of the NOTIFY stream queues read from (4 GiB); the oldest events go first
    /// past it.
    #[arg(long)]
    pub notify_max_bytes: Option<i64>,
}

impl StreamCapArgs {
    pub fn apply(&self, cfg: &mut Config) {
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
    pub fn given(&self) -> [bool; 3] {
        [self.logs_max_bytes.is_some(), self.deadletter_max_bytes.is_some(), self.notify_max_bytes.is_some()]
    }
}

/// The API's bearer tokens (`GOSSAMER_ADMIN_TOKEN`, `GOSSAMER_READ_TOKEN` too).
#[derive(Args)]
pub struct TokenArgs {
    /// Token for every API route; without any token the API is open.
    #[arg(long, conflicts_with = "admin_token_file")]
    pub admin_token: Option<String>,
    /// The admin token, from a file (kept out of the process list).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Token for reads only (GET routes, POST /api/v1/query, /metrics).
    #[arg(long, conflicts_with = "read_token_file")]
    pub read_token: Option<String>,
    #[arg(long)]
    pub read_token_file: Option<PathBuf>,
    /// Serve the API and console over HTTPS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TokenArgs {
    pub fn apply(self, cfg: &mut Config) -> Result<()> {
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

/// How to authenticate to NATS (`GOSSAMER_NATS_USER`, `_PASSWORD`, `_TOKEN`,
/// `_NKEY_FILE`, `_CREDS` too).
#[derive(Args)]
pub struct NatsArgs {
    #[arg(long)]
    pub nats_user: Option<String>,
    /// With --nats-user (or GOSSAMER_NATS_PASSWORD, kept out of the process list).
    #[arg(long)]
    pub nats_password: Option<String>,
    #[arg(long)]
    pub nats_token: Option<String>,
    /// A file holding a user nkey seed (SU...).
    #[arg(long)]
    pub nats_nkey_file: Option<PathBuf>,
    /// A .creds file (JWT and seed) for servers in operator mode.
    #[arg(long)]
    pub nats_creds: Option<PathBuf>,
    /// Require TLS to NATS.
    #[arg(long)]
    pub nats_tls: bool,
    /// CA certificate (PEM) for the NATS server's certificate (implies TLS).
    #[arg(long)]
    pub nats_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for NATS.
    #[arg(long, requires = "nats_key")]
    pub nats_cert: Option<PathBuf>,
    #[arg(long, requires = "nats_cert")]
    pub nats_key: Option<PathBuf>,
}

impl NatsArgs {
    pub fn apply(self, auth: &mut gossamer_config::NatsAuth) {
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
pub struct BackupArgs {
    /// A directory, file://DIR, or nats://BUCKET (a NATS Object Store bucket);
    /// `backups` in the data directory by default.
    #[arg(long)]
    pub backup_store: Option<String>,
    /// Take a backup this often (90m, 6h, 1d): the first full, then incrementals.
    #[arg(long)]
    pub backup_every: Option<String>,
}

impl BackupArgs {
    pub fn apply(self, cfg: &mut Config) -> Result<()> {
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
