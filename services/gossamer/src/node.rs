//! Wiring a node: connect to NATS, create the streams, open sled, start the shard,
//! index and ingest actors and the REST API, and run until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::{Context as _, Result};
use gossamer_config::Config;
use gossamer_index_actor::IndexActor;
use gossamer_ingest::IngestActor;
use gossamer_shard::ShardActor;
use gossamer_storage::{ShardStore, Store};

use crate::handle::NodeHandle;
use tracing::{info, warn};

/// How long a node that restored a backup hands copies of every shard it wrote (held
/// or not) to the replicas rebuilding from them.
const RESTORED_COPIES_KEPT: Duration = Duration::from_secs(600);

/// How often at most a node over its memory budget gives freed memory back.
const RELEASE_EVERY: Duration = Duration::from_secs(5);

/// How long a node waits for NATS at start.
const NATS_WAIT: Duration = Duration::from_secs(120);
/// The `meta` key of the shard members of this node's latest shard map, one per line.
const LAST_MEMBERS_KEY: &str = "shard-members";

/// Runs a node inside the current actix system until `shutdown` resolves. `on_ready`
/// gets the bound HTTP address once the API is listening.
pub async fn run(mut cfg: Config, shutdown: impl Future<Output = ()>, on_ready: impl FnOnce(SocketAddr)) -> Result<()> {
    cfg.validate()?;
    let budget = cfg.memory_budget();
    cfg.query_limits.sql_memory_bytes = budget.sql_bytes(cfg.query_limits.sql_memory_bytes);
    gossamer_index::keep_at_most(budget.index_kept_bytes());
    // Bound first: the address goes into the node's identity in the cluster.
    let listener = std::net::TcpListener::bind(&cfg.http).with_context(|| format!("binding the HTTP API on {}", cfg.http))?;
    let http_addr = listener.local_addr()?;
    std::fs::create_dir_all(&cfg.data).with_context(|| format!("creating data directory {}", cfg.data.display()))?;
    let nats = gossamer_bus::connect_with(&cfg.nats, &cfg.nats_auth, NATS_WAIT).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let names = gossamer_bus::ensure_streams(&js, &cfg).await?;

    let sled_dir = cfg.data.join("sled");
    let cache = budget.sled_cache_bytes();
    let store = tokio::task::spawn_blocking(move || Store::open_with_cache(&sled_dir, cache))
        .await?
        .context("opening sled (the data directory may be in use by another node)")?;
    let shard_count = cfg.shards;
    let shards = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || (0..shard_count).map(|n| store.shard(n)).collect::<Result<Vec<_>, _>>())
            .await??
    };

    let pressure = Arc::new(gossamer_bus::Pressure::new(
        cfg.max_shard_backlog,
        cfg.max_index_lag,
        // Set once the shards are placed: only a node holding them all counts this way.
        false,
    )
    .with_memory_budget(budget.bytes));
    let scheme = if cfg.http_tls_cert.is_some() { "https" } else { "http" };
    let me = gossamer_gossip::NodeId {
        name: cfg.node_id.clone(),
        gen: gossamer_gossip::new_generation(),
        http: cfg.http_advertise.clone().unwrap_or_else(|| format!("{scheme}://{http_addr}")),
        shards: cfg.has_role("shard"),
        queues: cfg.has_role("queue"),
    };
    let probe = Duration::from_millis(cfg.gossip_probe_ms);
    let (gossip, membership) = gossamer_gossip::GossipActor::new(
        nats.clone(),
        gossamer_gossip::Settings {
            cluster: cfg.cluster.clone(),
            me,
            probe_period: probe,
            suspect_after: Duration::from_millis(cfg.gossip_suspect_ms),
        },
    );
    let gossip = gossip.start();
    let cluster = Arc::new(crate::cluster::state::Cluster::new(&cfg, membership, gossip.clone()));
    // Copies of shards come from peers through the node's query service, which needs
    // the node's handle: shards may start before it exists, so they wait for it.
    let (handle_tx, handle_rx) = tokio::sync::watch::channel(None::<std::sync::Weak<NodeHandle>>);
    let handle_for_backups = handle_rx.clone();
    // A shard moved away is let go once the members it moved to serve it: asked
    // through the query service too.
    let served_by: crate::cluster::ownership::ServedBy = {
        let handle_rx = handle_rx.clone();
        Arc::new(move |shard, owners| {
            let handle = handle_rx.borrow().as_ref().and_then(std::sync::Weak::upgrade);
            Box::pin(async move {
                let Some(node) = handle else { return false };
                for owner in owners {
                    let req = crate::service::wire::NodeRequest { shards: vec![shard], ask: crate::service::wire::Ask::Applied { seq: 0 } };
                    match crate::service::root::ask_one(&node, &owner, req, node.cluster.query_timeout).await {
                        Ok(reply) if reply.refused.is_empty() && reply.answer.is_ok() => {}
                        _ => return false,
                    }
                }
                true
            })
        })
    };
    let snapshots: gossamer_shard::SnapshotSource = Arc::new(move |shard, reaching| {
        let mut handle = handle_rx.clone();
        Box::pin(async move {
            let node = match tokio::time::timeout(NATS_WAIT, handle.wait_for(Option::is_some)).await {
                Ok(Ok(weak)) => weak.as_ref().and_then(std::sync::Weak::upgrade),
                _ => None,
            };
            match node {
                Some(node) => crate::service::root::fetch_snapshot(&node, shard, reaching).await,
                None => Ok(None),
            }
        })
    });
    let start_shard: crate::cluster::ownership::StartShard = {
        let (js, stream, shards, pressure, cluster_name, node_id) =
            (js.clone(), names.shards.clone(), shards.clone(), pressure.clone(), cfg.cluster.clone(), cfg.node_id.clone());
        Box::new(move |n| {
            ShardActor::new(js.clone(), stream.clone(), &cluster_name, &node_id, shards[n as usize].clone(), pressure.clone())
                .with_snapshots(snapshots.clone())
                .with_pull_bytes(budget.shard_pull_bytes())
                .start()
        })
    };
    let forget: crate::cluster::ownership::ForgetShard = {
        let (js, stream, node_id) = (js.clone(), names.shards.clone(), cfg.node_id.clone());
        Arc::new(move |n| {
            let (js, stream, node_id) = (js.clone(), stream.clone(), node_id.clone());
            Box::pin(async move { gossamer_shard::forget(&js, &stream, n, &node_id).await })
        })
    };
    // A node starting alone waits for others to answer before it places the shards, so
    // as not to take every shard only to hand most back. One that was alone when it
    // stopped places them at once (a member that turns up takes its shards over as at
    // any join): a restart is that much faster.
    let was_alone = store.meta(LAST_MEMBERS_KEY)?.is_some_and(|m| m == cfg.node_id.as_bytes());
    let remember: crate::cluster::ownership::RememberMembers = {
        let store = store.clone();
        Box::new(move |members| {
            if let Err(e) = store.set_meta(LAST_MEMBERS_KEY, Some(members.join("\n").as_bytes())) {
                warn!(error = %e, "shard-members-not-recorded");
            }
        })
    };
    let ownership = crate::cluster::ownership::OwnershipActor::new(
        cluster.clone(),
        start_shard,
        forget,
        served_by,
        pressure.clone(),
        cfg.has_role("shard"),
        if was_alone { Duration::ZERO } else { probe * 2 },
        remember,
    )
    .start();
    let index = cfg.has_role("index").then(|| IndexActor::new(shards.clone()).start());
    let ingest_actor = cfg.has_role("ingest").then(|| IngestActor::new(nats.clone(), cfg.clone(), names.clone(), pressure.clone()));
    let local_ingest = ingest_actor.as_ref().map(IngestActor::local);
    let ingest = ingest_actor.map(Actor::start);
    // Settings shared by the cluster (retention), read and changed from every node.
    let shared = gossamer_bus::SharedSettings::open(&js, &cfg.cluster, cfg.stream_replicas).await?;
    let mut backup_actor = None;
    let backups = if cfg.has_role("backup") {
        let location = cfg.backup_store();
        let kept = gossamer_backup::store::BackupStore::open(&location, &js, cfg.data.join("backup-scratch"))
            .await
            .with_context(|| format!("opening the backup store {location}"))?;
        let settings = gossamer_backup::Settings {
            cluster: cfg.cluster.clone(),
            node: cfg.node_id.clone(),
            shards_stream: names.shards.clone(),
            scratch: cfg.data.join("backup-scratch"),
        };
        // A backup of the cluster: shards this node does not serve come from those that
        // do, through the query service.
        let parts = {
            let (local_rx, remote_rx) = (handle_for_backups.clone(), handle_for_backups.clone());
            gossamer_backup::ClusterParts {
                local: Arc::new(move || {
                    let handle = local_rx.borrow().as_ref().and_then(std::sync::Weak::upgrade);
                    Box::pin(async move {
                        match handle {
                            Some(node) => node.cluster.ready_shards().await,
                            None => Vec::new(),
                        }
                    })
                }),
                restored: {
                    let (rx, nats, subject, me) = (handle_for_backups.clone(), nats.clone(), gossamer_schemas::subjects::Subjects::new(&cfg.cluster).restored(), cfg.node_id.clone());
                    Arc::new(move || {
                        let handle = rx.borrow().as_ref().and_then(std::sync::Weak::upgrade);
                        let (nats, subject, me) = (nats.clone(), subject.clone(), me.clone());
                        Box::pin(async move {
                            if let Some(node) = handle {
                                // Every shard, held here or not: one held now may be handed
                                // over (and stop being served) before its owners copy it.
                                *node.cluster.restored.lock().unwrap() = (0..node.cfg.shards).collect();
                                // Long enough for every owner to take its copy; later the
                                // owners' own replicas are the ones to copy.
                                let weak = Arc::downgrade(&node);
                                tokio::spawn(async move {
                                    tokio::time::sleep(RESTORED_COPIES_KEPT).await;
                                    if let Some(node) = weak.upgrade() {
                                        node.cluster.restored.lock().unwrap().clear();
                                    }
                                });
                            }
                            nats.publish(subject, me.into_bytes().into()).await?;
                            nats.flush().await?;
                            Ok(())
                        })
                    })
                },
                remote: Arc::new(move |shard, since| {
                    let handle = remote_rx.borrow().as_ref().and_then(std::sync::Weak::upgrade);
                    Box::pin(async move {
                        let node = handle.ok_or_else(|| anyhow::anyhow!("the node is not ready"))?;
                        crate::service::root::fetch_export(&node, shard, since).await
                    })
                }),
            }
        };
        let backups = Arc::new(
            gossamer_backup::Backups::new(settings, shared.clone(), store.clone(), shards.clone(), js.clone(), kept).with_cluster(parts),
        );
        let every = (cfg.backup_every_secs > 0).then(|| Duration::from_secs(cfg.backup_every_secs));
        backup_actor = Some(gossamer_backup::BackupActor::new(backups.clone(), every).start());
        Some(backups)
    } else {
        None
    };

    let (queues, queue_actor) = if cfg.has_role("queue") {
        // The live members that deliver queues, as gossip sees them.
        let deliverers_now = |m: &gossamer_gossip::Membership| m.queue_nodes().into_iter().map(String::from).collect::<Vec<_>>();
        let (deliverers_tx, deliverers) = tokio::sync::watch::channel(deliverers_now(&cluster.membership.borrow()));
        let mut membership = cluster.membership.clone();
        actix_rt::spawn(async move {
            while membership.changed().await.is_ok() {
                let now = deliverers_now(&membership.borrow_and_update());
                deliverers_tx.send_if_modified(|v| if *v == now { false } else { *v = now; true });
            }
        });
        let queues = gossamer_queue::Queues::open(
            nats.clone(),
            &cfg.cluster,
            &names.shards,
            cfg.stream_replicas,
            cfg.notify_max_bytes,
            cfg.node_id.clone(),
            deliverers,
        )
        .await?;
        let actor = gossamer_queue::QueueActor::new(queues.clone()).start();
        (Some(queues), Some(actor))
    } else {
        (None, None)
    };
    let tail_nats = gossamer_bus::options(&cfg.nats_auth)
        .await?
        .name("gossamer-tail")
        .subscription_capacity(256)
        .connect(gossamer_bus::servers(&cfg.nats)?)
        .await
        .with_context(|| format!("connecting to NATS at {} for live tails", cfg.nats))?;

    let (syslog, syslog_tasks) = match crate::syslog::start(&cfg, nats.clone()).await? {
        Some((stats, tasks)) => (Some(stats), tasks),
        None => (None, Vec::new()),
    };
    let handle = Arc::new(NodeHandle {
        cfg: cfg.clone(),
        store: store.clone(),
        shards,
        cluster: cluster.clone(),
        ownership,
        ingest,
        local_ingest,
        index,
        backups,
        queues,
        queue_actor,
        backup_actor,
        nats: nats.clone(),
        tail_nats,
        syslog,
        shared,
        settings_revision: tokio::sync::watch::channel(0).0,
        retention_deleted: Default::default(),
        upgrade_left: Default::default(),
        memory_releases: Default::default(),
    });
    handle_tx.send_replace(Some(Arc::downgrade(&handle)));
    // Measured from here on, not from ready: ingest already pulls what waits on `logs.>`
    // while the shards are being placed. Stopped with the node, or if it fails to start.
    let measuring = AbortOnDrop(actix_rt::spawn(measure_pressure(handle.clone(), pressure)));
    {
        let (shards, left, alive) = (handle.shards.clone(), handle.upgrade_left.clone(), Arc::downgrade(&handle));
        std::thread::Builder::new()
            .name("store-upgrade".into())
            .spawn(move || {
                gossamer_index_actor::lower_priority();
                upgrade_store(&shards, &left, || alive.strong_count() > 0)
            })
            .context("starting the store upgrade")?;
    }
    // Ready means producers can be answered: wait for ingest to subscribe and pull.
    if let Some(ingest) = &handle.ingest {
        let start = std::time::Instant::now();
        while !ingest.send(gossamer_ingest::GetState).await?.ready {
            if start.elapsed() > NATS_WAIT {
                anyhow::bail!("the ingest actor did not start within {}s", NATS_WAIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Ready also means the shards are placed: a query then goes where it should.
    let mut placed = cluster.placed.subscribe();
    tokio::time::timeout(NATS_WAIT, placed.wait_for(|p| *p))
        .await
        .context("placing the shards")?
        .context("placing the shards")?;
    // And every shard placed here has its consumer (and knows whether it is behind).
    let start = std::time::Instant::now();
    for (shard, actor) in cluster.held() {
        while !actor.send(gossamer_shard::GetState).await.map(|st| st.started).unwrap_or(true) {
            if start.elapsed() > NATS_WAIT {
                anyhow::bail!("shard {shard} did not start within {}s", NATS_WAIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    crate::service::commands::share_local_retentions(&handle).await.context("sharing this node's retentions with the cluster")?;
    let subjects = gossamer_schemas::subjects::Subjects::new(&cfg.cluster);
    let node_sub = nats.subscribe(subjects.node_query(&cfg.node_id)).await.context("subscribing to node queries")?;
    let mut restored_sub = nats.subscribe(subjects.restored()).await.context("subscribing to restores")?;
    let restarts = {
        let (ownership, me) = (handle.ownership.clone(), cfg.node_id.clone());
        actix_rt::spawn(async move {
            use futures::StreamExt;
            while let Some(msg) = restored_sub.next().await {
                // The node that restored keeps its shards as written.
                if msg.payload.as_ref() != me.as_bytes() {
                    info!(from = %String::from_utf8_lossy(&msg.payload), "backup-restored-elsewhere: rebuilding this node's replicas");
                    ownership.do_send(crate::cluster::ownership::RestartHeld);
                }
            }
        })
    };
    let query_sub = nats
        .queue_subscribe(subjects.api_query(), format!("gossamer-{}-query", cfg.cluster))
        .await
        .context("subscribing to NATS queries")?;
    let sql_sub = nats
        .queue_subscribe(subjects.api_sql(), format!("gossamer-{}-sql", cfg.cluster))
        .await
        .context("subscribing to NATS SQL queries")?;
    let wait_sub = nats
        .queue_subscribe(subjects.api_wait(), format!("gossamer-{}-wait", cfg.cluster))
        .await
        .context("subscribing to read-your-writes waits")?;
    nats.flush().await.context("registering the query subscription")?;
    let pg = crate::pg::start(handle.clone()).await?;
    let (server, addr) = crate::rest::server::bind(handle.clone(), listener)?;
    let server_handle = server.handle();
    let serving = actix_rt::spawn(server);
    if cfg.admin_token.is_none() {
        tracing::warn!("api-open: no admin token is set, so every API route is open to whoever reaches {addr}");
    }
    info!(node = %cfg.node_id, http = %addr, shards = cfg.shards, "node-ready");
    on_ready(addr);
    let retention = actix_rt::spawn(crate::service::commands::retention_loop(handle.clone()));
    let mirror = actix_rt::spawn(crate::service::commands::mirror_settings(handle.clone()));
    let nats_queries = actix_rt::spawn(crate::nats_api::serve_queries(handle.clone(), query_sub));
    let nats_waits = actix_rt::spawn(crate::nats_api::serve_waits(handle.clone(), wait_sub));
    let nats_sql = actix_rt::spawn(crate::nats_api::serve_sql(handle.clone(), sql_sub));
    let node_queries = actix_rt::spawn(crate::service::root::serve_node_queries(handle.clone(), node_sub));

    shutdown.await;
    info!("node-stopping");
    // Say goodbye first: the others stop sending queries here and place the shards anew.
    let _ = tokio::time::timeout(Duration::from_secs(2), gossip.send(gossamer_gossip::Leave)).await;
    node_queries.abort();
    for t in &syslog_tasks {
        t.abort();
    }
    retention.abort();
    mirror.abort();
    restarts.abort();
    drop(measuring);
    nats_queries.abort();
    nats_waits.abort();
    nats_sql.abort();
    if let Some((_, task)) = &pg {
        task.abort();
    }
    server_handle.stop(true).await;
    let _ = serving.await;
    // Acks sent but not yet written would be lost with the connection. Bounded: with
    // the server gone (stopped with us), a flush would wait for it forever.
    if tokio::time::timeout(Duration::from_secs(5), nats.flush()).await.is_err() {
        tracing::warn!("nats-flush-timed-out: the NATS server did not answer at shutdown; unacked messages will be redelivered");
    }
    let store = handle.store.clone();
    tokio::task::spawn_blocking(move || store.flush()).await??;
    info!("node-stopped");
    Ok(())
}

/// Blocks gone through per write while upgrading (each write waits for the shard's).
const UPGRADE_BATCH: usize = 64;

/// Rewrites the blocks an earlier version wrote in rows in today's layout, shard by
/// shard, while the node serves (readers see either form whole; both answer the same),
/// saying how far it got in the log and in `gossamer_store_upgrade_blocks_left`. Stops
/// early when `running` turns false.
pub fn upgrade_store(shards: &[ShardStore], left: &std::sync::atomic::AtomicU64, running: impl Fn() -> bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let total: u64 = shards.iter().map(|s| s.blocks_to_upgrade().unwrap_or(0)).sum();
    left.store(total, Relaxed);
    if total == 0 {
        return;
    }
    info!(blocks = total, "store-upgrade-started: rewriting blocks of an earlier version in today's layout");
    let (started, mut said) = (std::time::Instant::now(), std::time::Instant::now());
    let mut done = 0u64;
    for s in shards {
        let mut from = s.upgraded_to().unwrap_or(0).saturating_add(1);
        while running() {
            match s.upgrade_blocks(from, UPGRADE_BATCH) {
                Ok((n, next)) => {
                    done += n as u64;
                    left.store(total.saturating_sub(done), Relaxed);
                    if said.elapsed() > Duration::from_secs(5) {
                        info!(done, total, "store-upgrade-progress");
                        said = std::time::Instant::now();
                    }
                    match next {
                        Some(id) => from = id,
                        None => break,
                    }
                }
                Err(e) => {
                    warn!(shard = s.shard(), error = %e, "store-upgrade-failed: the shard's blocks stay as they are, and are still read");
                    break;
                }
            }
        }
    }
    if running() {
        info!(blocks = done, secs = started.elapsed().as_secs_f64(), "store-upgrade-done");
    }
}

/// What this process holds resident now, in bytes (0 where `/proc` does not say).
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

/// Over the memory budget: the memory the allocator holds freed (kept for reuse) goes
/// back to the system. The caches are already carved from the budget, so they stay:
/// dropping them would only slow queries.
fn release_memory(node: &NodeHandle) {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect only returns free memory of the allocator to the system.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    node.memory_releases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A task that stops when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `pressure` up to date with how far the shard actors and the index are behind,
/// and with what the node holds resident. Over its whole memory budget, the node gives
/// freed memory back: at most every [`RELEASE_EVERY`], and less often (up to once a
/// minute) while that frees little, since then the memory is in use (sled's pages of a
/// large store), and each release makes the next allocations fault pages in again.
async fn measure_pressure(node: Arc<NodeHandle>, pressure: Arc<gossamer_bus::Pressure>) {
    let budget = node.cfg.memory_budget().bytes;
    let mut next_release = tokio::time::Instant::now();
    let mut backoff = RELEASE_EVERY;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut index_lag = 0;
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let mut backlog = 0;
        for (_, a) in node.cluster.held() {
            if let Ok(st) = a.send(gossamer_shard::GetState).await {
                backlog += st.pending;
            }
        }
        // The index's lag costs a few reads per shard: measure it less often.
        if n % 5 == 0 {
            if let Some(index) = &node.index {
                if let Ok(lag) = index.send(gossamer_index_actor::GetLag).await {
                    index_lag = lag;
                }
            }
        }
        n += 1;
        pressure.set(backlog, index_lag);
        let resident = resident_bytes();
        pressure.set_resident(resident);
        if resident <= budget {
            backoff = RELEASE_EVERY;
        } else if tokio::time::Instant::now() >= next_release {
            let node = node.clone();
            let _ = tokio::task::spawn_blocking(move || release_memory(&node)).await;
            let after = resident_bytes();
            pressure.set_resident(after);
            backoff = if after < resident - resident / 20 { RELEASE_EVERY } else { (backoff * 2).min(Duration::from_secs(60)) };
            next_release = tokio::time::Instant::now() + backoff;
        }
    }
}
