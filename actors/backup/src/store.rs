//! Where backups are kept: a local directory (the default), or a NATS Object Store bucket
//! (`nats://bucket`), replicated like any JetStream stream.
//!
//! A backup is written complete before it is visible: into a staging directory, then
//! renamed into place (a directory) or uploaded file by file with the manifest last (a
//! bucket). A backup without a manifest does not exist.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::{self, object_store::ObjectStore, stream};
use futures::StreamExt;

use crate::format::{Manifest, MANIFEST};

pub enum BackupStore {
    Local { root: PathBuf },
    Nats { bucket: String, store: ObjectStore, scratch: PathBuf },
}

/// A backup file ready to read; a downloaded copy is removed when this is dropped.
pub struct Fetched {
    pub path: PathBuf,
    temporary: bool,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl BackupStore {
    /// `spec` is a directory (or `file://DIR`) or `nats://BUCKET`; `scratch` is a local
    /// directory for files on their way to or from a bucket.
    pub async fn open(spec: &str, js: &jetstream::Context, scratch: PathBuf) -> Result<Self> {
        if let Some(bucket) = spec.strip_prefix("nats://") {
            let valid = !bucket.is_empty() && bucket.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                bail!("backup store {spec:?}: a bucket name holds only letters, digits, '_' and '-'");
            }
            // The client's create_object_store cannot read nats-server 2.9's answer
            // (FIELD-NOTES): create the bucket's stream as it would, then open it.
            js.get_or_create_stream(stream::Config {
                name: format!("OBJ_{bucket}"),
                subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                allow_direct: true,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the object store bucket {bucket}"))?;
            let store = js.get_object_store(bucket).await.with_context(|| format!("opening the object store bucket {bucket}"))?;
            std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
            return Ok(Self::Nats { bucket: bucket.to_string(), store, scratch });
        }
        let root = PathBuf::from(spec.strip_prefix("file://").unwrap_or(spec));
        std::fs::create_dir_all(&root).with_context(|| format!("creating the backup directory {}", root.display()))?;
        Ok(Self::Local { root })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Local { root } => root.display().to_string(),
            Self::Nats { bucket, .. } => format!("nats://{bucket}"),
        }
    }

    /// An empty directory to write backup `id`'s files into.
    pub fn staging(&self, id: &str) -> Result<PathBuf> {
        let dir = match self {
            Self::Local { root } => root.join(format!(".staging-{id}")),
            Self::Nats { scratch, .. } => scratch.join(format!("staging-{id}")),
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Makes the backup in `staging` visible under `manifest.id`, manifest last.
    pub async fn commit(&self, staging: &Path, manifest: &Manifest) -> Result<()> {
        let json = serde_json::to_vec_pretty(manifest)?;
        match self {
            Self::Local { root } => {
                let staging = staging.to_path_buf();
                let target = root.join(&manifest.id);
                let root = root.clone();
                tokio::task::spawn_blocking(move || -> Result<()> {
                    use std::io::Write;
                    let mut f = std::fs::File::create(staging.join(MANIFEST))?;
                    f.write_all(&json)?;
                    f.sync_all()?;
                    for entry in std::fs::read_dir(&staging)? {
                        std::fs::File::open(entry?.path())?.sync_all()?;
                    }
                    if target.exists() {
                        bail!("a backup named {} exists already", target.file_name().unwrap_or_default().to_string_lossy());
                    }
                    std::fs::rename(&staging, &target).with_context(|| format!("moving the backup into {}", target.display()))?;
                    std::fs::File::open(&root)?.sync_all()?;
                    Ok(())
                })
                .await?
            }
            Self::Nats { store, .. } => {
                for s in &manifest.shards {
                    let mut f = tokio::fs::File::open(staging.join(&s.file)).await?;
                    store
                        .put(format!("{}/{}", manifest.id, s.file).as_str(), &mut f)
                        .await
                        .with_context(|| format!("uploading {} of backup {}", s.file, manifest.id))?;
                }
                store
                    .put(format!("{}/{MANIFEST}", manifest.id).as_str(), &mut &json[..])
                    .await
                    .with_context(|| format!("uploading the manifest of backup {}", manifest.id))?;
                tokio::fs::remove_dir_all(staging).await?;
                Ok(())
            }
        }
    }

    /// The manifest of backup `id`, or `None` when there is no such backup.
    pub async fn manifest(&self, id: &str) -> Result<Option<Manifest>> {
        let bytes = match self {
            Self::Local { root } => match tokio::fs::read(root.join(id).join(MANIFEST)).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("reading the manifest of backup {id}")),
            },
            Self::Nats { store, .. } => {
                use tokio::io::AsyncReadExt;
                let mut obj = match store.get(format!("{id}/{MANIFEST}")).await {
                    Ok(o) => o,
                    Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e).with_context(|| format!("reading the manifest of backup {id}")),
                };
                let mut b = Vec::new();
                obj.read_to_end(&mut b).await.with_context(|| format!("reading the manifest of backup {id}"))?;
                b
            }
        };
        let m: Manifest =
            serde_json::from_slice(&bytes).with_context(|| format!("the manifest of backup {id} is not a valid manifest"))?;
        Ok(Some(m))
    }

    /// The ids of the complete backups, sorted.
    pub async fn ids(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        match self {
            Self::Local { root } => {
                for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.starts_with('.') && entry.path().join(MANIFEST).exists() {
                        out.push(name);
                    }
                }
            }
            Self::Nats { store, .. } => {
                let mut list = store.list().await.context("listing the backup bucket")?;
                while let Some(info) = list.next().await {
                    let info = info.context("listing the backup bucket")?;
                    if let Some(id) = info.name.strip_suffix(&format!("/{MANIFEST}")) {
                        if !info.deleted {
                            out.push(id.to_string());
                        }
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// A local path to read `file` of backup `id` from.
    pub async fn fetch(&self, id: &str, file: &str) -> Result<Fetched> {
        match self {
            Self::Local { root } => {
                let path = root.join(id).join(file);
                if !path.exists() {
                    bail!("backup {id} has no file {file}");
                }
                Ok(Fetched { path, temporary: false })
            }
            Self::Nats { store, scratch, .. } => {
                let mut obj = store
                    .get(format!("{id}/{file}"))
                    .await
                    .with_context(|| format!("backup {id} has no readable file {file}"))?;
                let path = scratch.join(format!("fetch-{id}-{file}"));
                let fetched = Fetched { path, temporary: true };
                let mut out = tokio::fs::File::create(&fetched.path).await?;
                tokio::io::copy(&mut obj, &mut out).await.with_context(|| format!("downloading {file} of backup {id}"))?;
                Ok(fetched)
            }
        }
    }
}
