//! The backup actor: full and incremental backups of a node's shards, verified by
//! checksum and count, restored into an empty node; on demand and on a schedule.
//!
//! - A **full** backup is every shard's tree as records, each taken under the shard's
//!   writer lock, so it is the shard exactly as of one applied sequence.
//! - An **incremental** one holds, per shard, what changed after the sequence its parent
//!   covered: blocks added since (block ids grow with the log), blocks rewritten or
//!   removed since (each carries the sequence that last changed it), the counters, the
//!   applied sequence. The parent is the last backup this node took or restored from.
//! - **Restore** reads a full backup and the incrementals up to the one asked for, into
//!   shards that hold nothing, after checking every file; then moves the SHARDS stream's
//!   next sequence past the restored ones, so the shards resume from them and nothing is
//!   applied twice. Indexes are rebuilt from the restored blocks.
//!
//! One job runs at a time; its progress is in [`Job`].

pub mod format;
pub mod store;

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use futures::{StreamExt as _, TryStreamExt as _};
use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream;
use gossamer_storage::{ShardStore, Store};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::format::{check_name, shard_file, Hashing, Kind, Manifest, ShardEntry, FORMAT};
use crate::store::BackupStore;

/// The node meta key holding the id of the last backup taken here or restored from.
const LAST_BACKUP: &str = "backup:last";
/// The backup a restore into this node began from: written before any shard is, so a
/// restore that was interrupted (the node killed, a disk error) can be run again.
const RESTORING: &str = "backup:restoring";
/// Finished jobs kept for `GET /api/v1/jobs`.
const KEEP_JOBS: usize = 50;
/// Shard parts a backup exports (or fetches from other members) at once.
const PARTS_AT_ONCE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

/// What the node tells the backup actor about itself.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: String,
    pub node: String,
    pub shards_stream: String,
    /// Local room for files on their way to or from a bucket store.
    pub scratch: PathBuf,
}

/// `POST /api/v1/backups`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// `auto` (incremental when this node has a previous backup, else full), `full`
    /// or `incremental`.
    #[serde(default)]
    pub kind: Requested,
    /// A name for the backup; by default its UTC time and kind.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Requested {
    #[default]
    Auto,
    Full,
    Incremental,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
}

/// A backup, verify or restore job and how far it got.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    /// `create`, `verify` or `restore`.
    pub action: String,
    pub backup: String,
    pub state: JobState,
    /// What it is doing now.
    pub phase: String,
    pub done: u64,
    pub total: u64,
    /// What `done` and `total` count: `shards` or `bytes`.
    pub unit: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// The backup made (create) or checked (verify, restore: the one restored to).
    pub manifest: Option<Manifest>,
}

/// A backup as listed: its manifest without the per-shard entries.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: String,
    pub kind: Kind,
    pub parent: Option<String>,
    pub created_at: String,
    pub events: u64,
    pub bytes: u64,
    pub shard_count: u32,
}

/// The shards this node serves now (held here and caught up).
pub type LocalShards = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Vec<u32>> + Send + Sync>;
/// One shard's part of a backup (`since` a sequence, or whole), exported by a member
/// that serves the shard: the file's bytes and its entry. An error names the shard.
pub type RemoteExport = Arc<dyn Fn(u32, Option<u64>) -> futures::future::BoxFuture<'static, anyhow::Result<(Vec<u8>, ShardEntry)>> + Send + Sync>;

/// How a backup reaches the shards of a cluster: this node's own, and the others
/// through the members that serve them.
#[derive(Clone)]
pub struct ClusterParts {
    pub local: LocalShards,
    pub remote: RemoteExport,
    /// Called once a restore has written every shard here: the other members rebuild
    /// their replicas from these copies.
    pub restored: Arc<dyn Fn() -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync>,
}

/// Exports one shard (`since` a sequence, or whole) into `w` as a backup part: the
/// writer back and the part's entry (its file name, cut, counts and checksum).
pub fn export_part<W: std::io::Write>(shard: &ShardStore, since: Option<u64>, w: W) -> anyhow::Result<(W, ShardEntry)> {
    let mut w = format::RecordWriter::new(w)?;
    let done = shard.export(since, &mut |r| w.write(&r))?;
    let (inner, sha256, bytes) = w.finish()?;
    let entry = ShardEntry {
        shard: shard.shard(),
        file: shard_file(shard.shard()),
        from_seq: since.unwrap_or(0),
        to_seq: done.applied,
        events: done.events,
        block_events: done.block_events,
        records: done.records,
        bytes,
        sha256,
    };
    Ok((inner, entry))
}

pub struct Backups {
    settings: Settings,
    /// Set on a node of a cluster: shards it does not serve come from those that do.
    cluster: Option<ClusterParts>,
    /// The cluster's shared settings, where a restore puts the retentions it brings.
    shared: gossamer_bus::SharedSettings,
    store: Store,
    shards: Vec<ShardStore>,
    js: jetstream::Context,
    backups: BackupStore,
    jobs: Arc<Mutex<Vec<Job>>>,
    busy: Arc<tokio::sync::Mutex<()>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A job's progress, updated from any thread.
#[derive(Clone)]
struct Progress {
    jobs: Arc<Mutex<Vec<Job>>>,
    id: String,
}

impl Progress {
    fn update(&self, f: impl FnOnce(&mut Job)) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = jobs.iter_mut().find(|j| j.id == self.id) {
            f(j);
        }
    }

    fn phase(&self, phase: &str, total: u64, unit: &str) {
        self.update(|j| {
            j.phase = phase.to_string();
            j.done = 0;
            j.total = total;
            j.unit = unit.to_string();
        });
    }

    fn add(&self, n: u64) {
        self.update(|j| j.done += n);
    }
}

/// Reports bytes read to a job, a megabyte at a time.
struct Counted<R> {
    inner: R,
    progress: Progress,
    pending: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pending += n as u64;
        if self.pending >= 1 << 20 || n == 0 {
            self.progress.add(std::mem::take(&mut self.pending));
        }
        Ok(n)
    }
}

impl Backups {
    pub fn new(
        settings: Settings,
        shared: gossamer_bus::SharedSettings,
        store: Store,
        shards: Vec<ShardStore>,
        js: jetstream::Context,
        backups: BackupStore,
    ) -> Self {
        Self { settings, cluster: None, shared, store, shards, js, backups, jobs: Arc::default(), busy: Arc::default() }
    }

    /// Backs up the whole cluster: each shard this node does not serve is exported by
    /// a member that does.
    pub fn with_cluster(mut self, parts: ClusterParts) -> Self {
        self.cluster = Some(parts);
        self
    }

    /// The shards backed up from this node's own stores.
    async fn local_shards(&self) -> Vec<u32> {
        match &self.cluster {
            Some(c) => (c.local)().await,
            None => (0..self.shards.len() as u32).collect(),
        }
    }

    /// Where the backups are kept.
    pub fn location(&self) -> String {
        self.backups.describe()
    }

    pub async fn list(&self) -> Result<Vec<Summary>, BackupError> {
        let mut out = Vec::new();
        for id in self.backups.ids().await? {
            if let Some(m) = self.backups.manifest(&id).await? {
                out.push(Summary {
                    id: m.id,
                    kind: m.kind,
                    parent: m.parent,
                    created_at: m.created_at,
                    events: m.events,
                    bytes: m.bytes,
                    shard_count: m.shard_count,
                });
            }
        }
        out.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(out)
    }

    pub async fn manifest(&self, id: &str) -> Result<Manifest, BackupError> {
        check_name(id).map_err(BackupError::BadRequest)?;
        self.backups.manifest(id).await?.ok_or_else(|| BackupError::NotFound(format!("no backup named {id}")))
    }

    pub fn jobs(&self) -> Vec<Job> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn job(&self, id: &str) -> Option<Job> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|j| j.id == id).cloned()
    }

    /// The job running now, if any.
    pub fn running(&self) -> Option<Job> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|j| j.state == JobState::Running).cloned()
    }

    fn claim(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, BackupError> {
        self.busy.clone().try_lock_owned().map_err(|_| {
            let what = self.running().map(|j| format!("{} {} ({})", j.action, j.backup, j.id)).unwrap_or_default();
            BackupError::Conflict(format!("another backup job is running: {what}"))
        })
    }

    /// Registers a job and runs `work` in the background; the job ends done or failed.
    fn start<F, Fut>(self: &Arc<Self>, action: &str, backup: &str, guard: tokio::sync::OwnedMutexGuard<()>, work: F) -> Job
    where
        F: FnOnce(Arc<Self>, Progress) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Manifest>> + Send + 'static,
    {
        let job = Job {
            id: job_id(),
            action: action.to_string(),
            backup: backup.to_string(),
            state: JobState::Running,
            phase: "starting".into(),
            done: 0,
            total: 0,
            unit: String::new(),
            started_at: now(),
            finished_at: None,
            error: None,
            manifest: None,
        };
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.push(job.clone());
            let finished = jobs.iter().filter(|j| j.state != JobState::Running).count();
            if finished > KEEP_JOBS {
                if let Some(i) = jobs.iter().position(|j| j.state != JobState::Running) {
                    jobs.remove(i);
                }
            }
        }
        let progress = Progress { jobs: self.jobs.clone(), id: job.id.clone() };
        let fut = work(self.clone(), progress.clone());
        let (action, backup) = (action.to_string(), backup.to_string());
        tokio::spawn(async move {
            let outcome = fut.await;
            match &outcome {
                Ok(_) => info!(action, backup, "backup-job-done"),
                Err(e) => warn!(action, backup, error = format!("{e:#}"), "backup-job-failed"),
            }
            progress.update(|j| {
                j.finished_at = Some(now());
                match outcome {
                    Ok(m) => {
                        j.state = JobState::Done;
                        j.phase = "done".into();
                        j.manifest = Some(m);
                    }
                    Err(e) => {
                        j.state = JobState::Failed;
                        j.error = Some(format!("{e:#}"));
                    }
                }
            });
            drop(guard);
        });
        job
    }

    /// Starts a backup.
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<Job, BackupError> {
        if let Some(name) = &req.name {
            check_name(name).map_err(BackupError::BadRequest)?;
        }
        let guard = self.claim()?;
        let parent = match req.kind {
            Requested::Full => None,
            Requested::Auto => self.parent().await.unwrap_or_else(|e| {
                info!(reason = %e, "backup-full: no previous backup to continue");
                None
            }),
            Requested::Incremental => Some(self.parent().await.map_err(BackupError::BadRequest)?.ok_or_else(|| {
                BackupError::BadRequest("no previous backup of this node to continue: take a full backup first".into())
            })?),
        };
        let kind = if parent.is_some() { Kind::Incremental } else { Kind::Full };
        let id = match req.name {
            Some(n) => n,
            None => format!(
                "{}-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
                if kind == Kind::Full { "full" } else { "incr" }
            ),
        };
        if self.backups.manifest(&id).await?.is_some() {
            return Err(BackupError::Conflict(format!("a backup named {id} exists already")));
        }
        let backup_id = id.clone();
        Ok(self.start("create", &id, guard, move |me, progress| async move { me.run_create(backup_id, parent, progress).await }))
    }

    /// The backup an incremental continues: the last one this node took or restored
    /// from, if the store still has it and it fits this node. `Err` says why not.
    async fn parent(&self) -> Result<Option<Manifest>, String> {
        let store = self.store.clone();
        let last = tokio::task::spawn_blocking(move || store.meta(LAST_BACKUP))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(last) = last else { return Ok(None) };
        let id = String::from_utf8_lossy(&last).into_owned();
        let m = self.backups.manifest(&id).await.map_err(|e| format!("{e:#}"))?;
        let Some(m) = m else { return Err(format!("the last backup of this node, {id}, is not in {}", self.location())) };
        if m.shard_count as usize != self.shards.len() {
            return Err(format!("the last backup, {id}, has {} shards; this node has {}", m.shard_count, self.shards.len()));
        }
        let local = self.local_shards().await;
        for (s, e) in self.shards.iter().zip(&m.shards).filter(|(s, _)| local.contains(&s.shard())) {
            let applied = s.applied_seq().map_err(|e| e.to_string())?;
            if e.to_seq > applied {
                return Err(format!("the last backup, {id}, is ahead of shard {} ({} > {applied})", e.shard, e.to_seq));
            }
        }
        Ok(Some(m))
    }

    async fn run_create(self: Arc<Self>, id: String, parent: Option<Manifest>, progress: Progress) -> anyhow::Result<Manifest> {
        let staging = self.backups.staging(&id)?;
        progress.phase("exporting shards", self.shards.len() as u64, "shards");
        let local = self.local_shards().await;
        // A few shards at a time: the parts other members export travel over NATS while
        // this node writes its own.
        let shards: Vec<ShardStore> = self.shards.iter().cloned().collect();
        let parts = shards.into_iter().enumerate().map(|(n, shard)| {
            let since = parent.as_ref().map(|p| p.shards[n].to_seq);
            let path = staging.join(shard_file(shard.shard()));
            let remote = self.cluster.as_ref().filter(|_| !local.contains(&(n as u32))).map(|c| c.remote.clone());
            let progress = progress.clone();
            async move {
                let entry = match remote {
                    Some(remote) => {
                        // A member that serves it exports it; none: the backup fails here.
                        let (bytes, entry) = remote(n as u32, since).await.with_context(|| format!("backing up shard {n}"))?;
                        tokio::fs::write(&path, &bytes).await.with_context(|| format!("writing {}", path.display()))?;
                        tokio::fs::File::open(&path).await?.sync_all().await?;
                        entry
                    }
                    None => {
                        tokio::task::spawn_blocking(move || -> anyhow::Result<ShardEntry> {
                            let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                            let (buf, entry) = export_part(&shard, since, std::io::BufWriter::with_capacity(1 << 20, f))?;
                            buf.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                            Ok(entry)
                        })
                        .await??
                    }
                };
                progress.add(1);
                Ok::<_, anyhow::Error>(entry)
            }
        });
        let entries: Vec<ShardEntry> = futures::stream::iter(parts).buffered(PARTS_AT_ONCE).try_collect().await?;
        let store = self.store.clone();
        let retention = tokio::task::spawn_blocking(move || store.retentions()).await??;
        let manifest = Manifest {
            format: FORMAT,
            id: id.clone(),
            kind: if parent.is_some() { Kind::Incremental } else { Kind::Full },
            parent: parent.map(|p| p.id),
            created_at: now(),
            gossamer_version: env!("CARGO_PKG_VERSION").to_string(),
            cluster: self.settings.cluster.clone(),
            node: self.settings.node.clone(),
            shard_count: self.shards.len() as u32,
            retention,
            events: entries.iter().map(|e| e.events).sum(),
            bytes: entries.iter().map(|e| e.bytes).sum(),
            shards: entries,
        };
        progress.phase("storing", manifest.bytes, "bytes");
        self.backups.commit(&staging, &manifest).await?;
        progress.add(manifest.bytes);
        let store = self.store.clone();
        let last = id.clone();
        tokio::task::spawn_blocking(move || store.set_meta(LAST_BACKUP, Some(last.as_bytes()))).await??;
        info!(backup = %id, kind = ?manifest.kind, events = manifest.events, bytes = manifest.bytes, "backup-created");
        Ok(manifest)
    }

    /// Starts checking every file of a backup.
    pub async fn verify(self: &Arc<Self>, id: &str) -> Result<Job, BackupError> {
        let manifest = self.manifest(id).await?;
        let guard = self.claim()?;
        Ok(self.start("verify", id, guard, move |me, progress| async move {
            progress.phase("reading files", manifest.bytes, "bytes");
            me.check(&manifest, &progress).await?;
            Ok(manifest)
        }))
    }

    /// Checks a backup's manifest and every file against it; the error names the first
    /// problem, its shard and its file.
    async fn check(&self, m: &Manifest, progress: &Progress) -> anyhow::Result<()> {
        let id = &m.id;
        if m.format != FORMAT {
            bail!("backup {id}: format {} is not one this version reads ({FORMAT})", m.format);
        }
        if m.kind == Kind::Incremental && m.parent.is_none() {
            bail!("backup {id}: an incremental backup without a parent");
        }
        if m.shards.len() != m.shard_count as usize || m.shards.iter().enumerate().any(|(i, e)| e.shard as usize != i) {
            bail!("backup {id}: the manifest does not list shards 0 to {} once each", m.shard_count.saturating_sub(1));
        }
        for e in &m.shards {
            if e.file != shard_file(e.shard) {
                bail!("backup {id}, shard {}: the manifest names the file {:?}", e.shard, e.file);
            }
            let fetched = self.backups.fetch(id, &e.file).await.with_context(|| format!("backup {id}, shard {}", e.shard))?;
            let (e2, progress, kind) = (e.clone(), progress.clone(), m.kind);
            let path = fetched.path.clone();
            tokio::task::spawn_blocking(move || check_file(&path, &e2, kind, progress))
                .await?
                .map_err(|problem| anyhow!("backup {id}, shard {} ({}): {problem}", e.shard, e.file))?;
            drop(fetched);
        }
        Ok(())
    }

    /// The backups a restore to `id` reads: the full one first, `id` last.
    async fn chain(&self, id: &str) -> Result<Vec<Manifest>, BackupError> {
        let mut chain = vec![self.manifest(id).await?];
        while let Some(parent) = chain.last().and_then(|m| m.parent.clone()) {
            if chain.len() > 10_000 {
                return Err(BackupError::BadRequest(format!("backup {id}: its chain of parents does not end")));
            }
            let m = self.backups.manifest(&parent).await?.ok_or_else(|| {
                BackupError::BadRequest(format!("backup {id} continues {parent}, which is not in {}", self.location()))
            })?;
            chain.push(m);
        }
        chain.reverse();
        for pair in chain.windows(2) {
            let (parent, child) = (&pair[0], &pair[1]);
            let joined = parent.shards.len() == child.shards.len()
                && parent.shards.iter().zip(&child.shards).all(|(p, c)| p.to_seq == c.from_seq);
            if !joined {
                return Err(BackupError::BadRequest(format!(
                    "backup {} does not start where {} ends: their shard sequences differ",
                    child.id, parent.id
                )));
            }
        }
        Ok(chain)
    }

    /// Starts restoring backup `id` (with the full backup and incrementals before it)
    /// into this node, which must hold nothing, or hold only what an earlier restore of
    /// the same backup wrote (it was interrupted, or is repeated before anything else
    /// was stored): shards that restore finished are kept, the others written again.
    pub async fn restore(self: &Arc<Self>, id: &str) -> Result<Job, BackupError> {
        let chain = self.chain(id).await?;
        let target = chain.last().expect("the chain holds the target").clone();
        if target.shard_count as usize != self.shards.len() {
            return Err(BackupError::BadRequest(format!(
                "backup {id} has {} shards; this cluster has {}: restore into a cluster with the same shard count",
                target.shard_count,
                self.shards.len()
            )));
        }
        let guard = self.claim()?;
        self.check_empty(&target).await?;
        Ok(self.start("restore", id, guard, move |me, progress| async move { me.run_restore(chain, progress).await }))
    }

    /// The backup an earlier restore into this node began from, if any.
    async fn restoring(&self) -> Result<Option<String>, BackupError> {
        let store = self.store.clone();
        let v = tokio::task::spawn_blocking(move || store.meta(RESTORING)).await.map_err(anyhow::Error::from)?.map_err(anyhow::Error::from)?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn check_empty(&self, target: &Manifest) -> Result<(), BackupError> {
        // After a restore of this same backup, a shard holds either nothing it applied
        // (never reached, or cut short: written again) or exactly the backup's cut.
        let again = self.restoring().await?.as_deref() == Some(target.id.as_str());
        for (n, s) in self.shards.iter().enumerate() {
            let (applied, events) = (s.applied_seq().map_err(anyhow::Error::from)?, s.event_count().map_err(anyhow::Error::from)?);
            if again && (applied == 0 || applied == target.shards[n].to_seq) {
                continue;
            }
            if applied > 0 || events > 0 {
                let why = if again {
                    format!("it has applied its log to {applied}, past what backup {} restored", target.id)
                } else {
                    format!("{events} events, log applied to {applied}")
                };
                return Err(BackupError::Conflict(format!("shard {} is not empty ({why}): restore needs an empty cluster", s.shard())));
            }
        }
        let mut stream = self.js.get_stream(&self.settings.shards_stream).await.context("opening the SHARDS stream")?;
        let messages = stream.info().await.context("reading the SHARDS stream")?.state.messages;
        if messages > 0 {
            return Err(BackupError::Conflict(format!(
                "the SHARDS stream holds {messages} messages not in any backup: restore needs an empty cluster"
            )));
        }
        Ok(())
    }

    async fn run_restore(self: Arc<Self>, chain: Vec<Manifest>, progress: Progress) -> anyhow::Result<Manifest> {
        let bytes: u64 = chain.iter().map(|m| m.bytes).sum();
        progress.phase("verifying", bytes, "bytes");
        for m in &chain {
            self.check(m, &progress).await.context("the backup does not verify, so nothing was restored")?;
        }
        let target = chain.last().expect("a chain is never empty").clone();
        // New shard-log messages must come after every restored sequence, or the shards
        // would skip them as applied.
        let top = target.shards.iter().map(|e| e.to_seq).max().unwrap_or(0);
        let mut stream = self.js.get_stream(&self.settings.shards_stream).await.context("opening the SHARDS stream")?;
        let last = stream.info().await?.state.last_sequence;
        if last < top {
            stream.purge().sequence(top + 1).await.context("moving the SHARDS stream past the restored sequences")?;
            let first = stream.info().await?.state.first_sequence;
            if first <= top {
                bail!("the SHARDS stream starts at {first} after moving it past {top}: this nats-server cannot restore");
            }
        }
        progress.phase("restoring", bytes, "bytes");
        let again = self.restoring().await? == Some(target.id.clone());
        if !again {
            let (store, id) = (self.store.clone(), target.id.clone());
            tokio::task::spawn_blocking(move || store.set_meta(RESTORING, Some(id.as_bytes()))).await??;
        }
        let crash_in = crash_mid_restore();
        for (n, shard) in self.shards.iter().enumerate() {
            let want = target.shards[n].to_seq;
            let applied = shard.applied_seq()?;
            if again && applied == want && want > 0 {
                // Finished by the earlier run of this restore.
                progress.add(chain.iter().map(|m| m.shards[n].bytes).sum());
                continue;
            }
            let mut files = Vec::with_capacity(chain.len());
            for m in &chain {
                files.push(self.backups.fetch(&m.id, &m.shards[n].file).await?);
            }
            let (shard, progress) = (shard.clone(), progress.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                // What an interrupted run left (blocks without their applied sequence).
                shard.wipe()?;
                let mut r = shard.begin_restore()?;
                for f in &files {
                    let file = std::fs::File::open(&f.path)?;
                    let reader = Counted { inner: file, progress: progress.clone(), pending: 0 };
                    format::read_records(reader, |rec| r.record(rec).map_err(|e| e.to_string()))
                        .with_context(|| format!("restoring shard {} from {}", shard.shard(), f.path.display()))?;
                    if crash_in == Some(n) {
                        r.flush_written()?;
                        error!(shard = shard.shard(), "crashing mid-restore as GOSSAMER_CRASH_MID_RESTORE asks");
                        std::process::abort();
                    }
                }
                let applied = r.finish()?;
                if applied != want {
                    bail!("shard {} was restored to sequence {applied}, not {want}", shard.shard());
                }
                Ok(())
            })
            .await??;
        }
        // The log was moved past `top`, and no shard has a change before it that the
        // backup lacks: a shard restored to an older sequence is not behind the log.
        let shards = self.shards.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for s in &shards {
                s.set_covered(top)?;
            }
            Ok(())
        })
        .await??;
        if let Some(c) = &self.cluster {
            (c.restored)().await.context("telling the other members to take their shards from the restored copies")?;
        }
        // The retentions it brings are the cluster's (every node mirrors them).
        for (stream, ns) in &target.retention {
            self.shared.set_retention(stream, Some(*ns)).await?;
        }
        let (store, retention, id) = (self.store.clone(), target.retention.clone(), target.id.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for (stream, ns) in retention {
                store.set_retention(&stream, Some(ns))?;
            }
            store.set_meta(LAST_BACKUP, Some(id.as_bytes()))?;
            Ok(())
        })
        .await??;
        info!(backup = %target.id, events = target.events, "backup-restored");
        Ok(target)
    }
}

/// The shard a restore crashes in (`GOSSAMER_CRASH_MID_RESTORE=<shard index>`), after
/// writing part of it: a fault switch for the tests of a restore run again after a
/// crash. Unset, which is every user's case, it does nothing.
fn crash_mid_restore() -> Option<usize> {
    std::env::var("GOSSAMER_CRASH_MID_RESTORE").ok()?.parse().ok()
}

/// Reads one shard file: its checksum and size first, then every record, the counts
/// and the sequence it ends at, against the manifest's entry.
fn check_file(path: &std::path::Path, e: &ShardEntry, kind: Kind, progress: Progress) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|err| format!("cannot open: {err}"))?;
    let mut h = Hashing::new(Counted { inner: file, progress, pending: 0 });
    let (mut block_events, mut applied) = (0u64, None);
    let decoded = format::read_records(&mut h, |r| {
        if let gossamer_storage::Record::Put(k, v) = &r {
            if gossamer_storage::snapshot::is_block_key(k) {
                block_events += u64::from(gossamer_storage::snapshot::block_event_count(v).unwrap_or(0));
            }
            if let Some(seq) = gossamer_storage::snapshot::applied_of(k, v) {
                applied = Some(seq);
            }
        }
        Ok(())
    });
    // Hash what the decoder did not read, so a checksum problem is named as such.
    std::io::copy(&mut h, &mut std::io::sink()).map_err(|err| format!("cannot read: {err}"))?;
    let (_, sha256, bytes) = h.finish();
    if sha256 != e.sha256 {
        return Err(format!("checksum mismatch: the manifest says sha256 {}, the file has {sha256}", e.sha256));
    }
    if bytes != e.bytes {
        return Err(format!("the file has {bytes} bytes; the manifest says {}", e.bytes));
    }
    let records = decoded.map_err(|err| format!("cannot be read: {err}"))?;
    if records != e.records {
        return Err(format!("the file holds {records} records; the manifest says {}", e.records));
    }
    if block_events != e.block_events {
        return Err(format!("the file's blocks hold {block_events} events; the manifest says {}", e.block_events));
    }
    if kind == Kind::Full && block_events != e.events {
        return Err(format!("the file's blocks hold {block_events} events; the shard had {}", e.events));
    }
    let applied = applied.unwrap_or(0);
    if applied != e.to_seq {
        return Err(format!("the file brings the shard to sequence {applied}; the manifest says {}", e.to_seq));
    }
    Ok(())
}

/// A job's id: its start time and a counter.
fn job_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("job-{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Takes a backup every `every` (the kind `auto`: incremental after the first), and
/// keeps the [`Backups`] service for the API.
pub struct BackupActor {
    backups: Arc<Backups>,
    every: Option<Duration>,
}

impl BackupActor {
    pub fn new(backups: Arc<Backups>, every: Option<Duration>) -> Self {
        Self { backups, every }
    }
}

impl Actor for BackupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(every) = self.every else { return };
        info!(every_secs = every.as_secs(), store = %self.backups.location(), "backup-schedule");
        ctx.run_interval(every, |act, _| {
            let backups = act.backups.clone();
            actix::spawn(async move {
                // Skipped when nothing changed, as far as this node can tell: with shards
                // served elsewhere, it cannot, so it takes the backup.
                let whole = backups.local_shards().await.len() == backups.shards.len();
                if let (true, Ok(Some(parent))) = (whole, backups.parent().await) {
                    let unchanged = backups.shards.iter().zip(&parent.shards).all(|(s, e)| s.applied_seq().ok() == Some(e.to_seq));
                    if unchanged {
                        tracing::debug!(parent = %parent.id, "scheduled-backup-skipped: nothing changed");
                        return;
                    }
                }
                match backups.create(CreateRequest::default()).await {
                    Ok(job) => info!(job = %job.id, backup = %job.backup, "scheduled-backup-started"),
                    Err(e) => warn!(error = %e, "scheduled-backup-skipped"),
                }
            });
        });
    }
}
