//! Settings kept once for the whole cluster, in a JetStream key-value bucket: any node
//! changes one, every node reads it (and a node that joins later finds it there). Today
//! that is each stream's retention, under the key `retention.<stream>` with the maximum
//! age in nanoseconds. Queue definitions have a bucket of their own.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, kv, stream};
use futures::{Stream, StreamExt};

const RETENTION: &str = "retention.";

/// The cluster's settings bucket.
#[derive(Clone)]
pub struct SharedSettings {
    kv: kv::Store,
}

/// One change seen in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A stream's retention was set (`Some(max age in ns)`) or cleared (`None`), at the
    /// bucket's `revision`.
    Retention { stream: String, max_age_ns: Option<i64>, revision: u64 },
}

impl SharedSettings {
    /// Opens the bucket `gossamer-settings[-<cluster>]`, creating it (with `replicas`
    /// copies on a NATS cluster) if it is missing.
    pub async fn open(js: &jetstream::Context, cluster: &str, replicas: usize) -> Result<Self> {
        let bucket = gossamer_schemas::subjects::Subjects::new(cluster).settings_bucket();
        Ok(Self { kv: ensure_kv(js, &bucket, replicas).await? })
    }

    /// Every stream's retention: the maximum age in nanoseconds.
    pub async fn retentions(&self) -> Result<BTreeMap<String, i64>> {
        let mut keys = self.kv.keys().await.context("listing the settings bucket")?;
        let mut out = BTreeMap::new();
        while let Some(key) = keys.next().await {
            let key = key.context("listing the settings bucket")?;
            let Some(stream) = key.strip_prefix(RETENTION) else { continue };
            if let Some(ns) = self.read(&key).await? {
                out.insert(stream.to_string(), ns);
            }
        }
        Ok(out)
    }

    async fn read(&self, key: &str) -> Result<Option<i64>> {
        let Some(bytes) = self.kv.get(key).await.with_context(|| format!("reading {key} from the settings bucket"))? else {
            return Ok(None);
        };
        Ok(Some(parse_age(key, &bytes)?))
    }

    /// Sets (`Some`) or clears (`None`) a stream's retention for the whole cluster; the
    /// bucket's revision of the change.
    pub async fn set_retention(&self, stream: &str, max_age_ns: Option<i64>) -> Result<u64> {
        let key = format!("{RETENTION}{stream}");
        let written = match max_age_ns {
            Some(ns) => self.kv.put(&key, ns.to_string().into()).await.map_err(anyhow::Error::new),
            None => match self.kv.delete(&key).await {
                // A delete answers no revision: the key's last entry (its marker, or a
                // later change) has it.
                Ok(()) => self.kv.entry(&key).await.map(|e| e.map_or(0, |e| e.revision)).map_err(anyhow::Error::new),
                Err(e) => Err(anyhow::Error::new(e)),
            },
        };
        written.with_context(|| format!("writing {key} to the settings bucket"))
    }

    /// True when the bucket has ever held this stream's retention, set or cleared.
    pub async fn knows_retention(&self, stream: &str) -> Result<bool> {
        let key = format!("{RETENTION}{stream}");
        Ok(self.kv.entry(&key).await.with_context(|| format!("reading {key} from the settings bucket"))?.is_some())
    }

    /// Every setting as it is now, then each change as it happens.
    pub async fn watch(&self) -> Result<impl Stream<Item = Result<Change>>> {
        let watch = self.kv.watch_all_from_revision(1).await.context("watching the settings bucket")?;
        Ok(watch.filter_map(|entry| async move {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => return Some(Err(anyhow::Error::new(e).context("watching the settings bucket"))),
            };
            let stream = entry.key.strip_prefix(RETENTION)?.to_string();
            let revision = entry.revision;
            match entry.operation {
                kv::Operation::Put => match parse_age(&entry.key, &entry.value) {
                    Ok(ns) => Some(Ok(Change::Retention { stream, max_age_ns: Some(ns), revision })),
                    // Skipped, so one bad value does not stop every later change.
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "settings-entry-skipped");
                        None
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => Some(Ok(Change::Retention { stream, max_age_ns: None, revision })),
            }
        }))
    }
}

fn parse_age(key: &str, bytes: &[u8]) -> Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|ns| *ns > 0)
        .with_context(|| format!("{key} in the settings bucket is not a positive number of nanoseconds"))
}

/// Opens the key-value bucket `bucket`, creating it with `replicas` copies if it is
/// missing. The client's `create_key_value` cannot read nats-server 2.9's answer
/// (FIELD-NOTES): the bucket's stream is created as it would create it, then opened.
pub async fn ensure_kv(js: &jetstream::Context, bucket: &str, replicas: usize) -> Result<kv::Store> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    crate::ensure_stream(js, config, "").await.with_context(|| format!("creating the key-value bucket {bucket}"))?;
    js.get_key_value(bucket).await.with_context(|| format!("opening the key-value bucket {bucket}"))
}
