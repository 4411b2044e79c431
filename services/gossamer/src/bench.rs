//! `gossamer bench ingest`: in one run, the raw JetStream publish rate of a payload set
//! and the rate at which a node makes the same payloads queryable.
//!
//! Events come from the loghub samples (round-robin over the datasets, re-timed 1 ms
//! apart, fresh ids, a `latency_ms` field), as NDJSON batches, one stream per dataset.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Publish-to-queryable ingest rate beside the raw JetStream publish rate.
    Ingest(IngestBench),
    /// The query mix (selective newest-100 and count, phrase count, count by level,
    /// p95 by dataset per minute) over N events, beside ripgrep on the same NDJSON.
    Query(QueryBench),
    /// Publish at a fixed rate with a query load for a while; report RSS and lag over
    /// time and reconcile every acked event at the end.
    Soak(SoakBench),
    /// Full and incremental backup, verify and restore throughput over N events.
    Backup(BackupBench),
    /// Ingest into one node, then into three nodes with two replicas per shard, on the
    /// same machine; then kill -9 one of the three and time until answers are complete.
    Cluster(ClusterBench),
    /// Draw the PNG chart of a `bench query --json` file again.
    Chart(ChartArgs),
}

#[derive(Args)]
pub struct ClusterBench {
    /// Events per run.
    #[arg(long, default_value_t = 500_000)]
    events: usize,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    #[arg(long, default_value_t = 64)]
    shards: u32,
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    #[arg(long, default_value = "integration/testdata/loghub")]
    dataset: PathBuf,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct ClusterRun {
    nodes: usize,
    request_reply_events_per_s: f64,
    logs_events_per_s: f64,
    /// CPU seconds of every node together, and of nats-server, over both paths.
    nodes_cpu_s: f64,
    nats_server_cpu_s: f64,
}

#[derive(Debug, Serialize)]
struct ClusterFigures {
    events: usize,
    shards: u32,
    replicas: u32,
    one: ClusterRun,
    three: ClusterRun,
    request_reply_ratio: f64,
    logs_ratio: f64,
    /// From kill -9 of a node until a count over everything is complete again, seen
    /// from another node; and until gossip declares the node dead.
    kill_to_complete_ms: f64,
    kill_to_declared_dead_ms: f64,
}

#[derive(Args)]
pub struct BackupBench {
    /// Events in the full backup (the incremental adds a tenth more).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    #[arg(long, default_value_t = 64)]
    shards: u32,
    #[arg(long, default_value = "integration/testdata/loghub")]
    dataset: PathBuf,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One backup job, timed.
#[derive(Debug, Serialize)]
struct JobFigure {
    seconds: f64,
    bytes: u64,
    events: u64,
    mb_per_s: f64,
    events_per_s: f64,
}

#[derive(Debug, Serialize)]
struct BackupFigures {
    events: usize,
    ndjson_bytes: u64,
    sled_bytes: u64,
    full: JobFigure,
    incremental: JobFigure,
    verify_full: JobFigure,
    restore: JobFigure,
    /// From the restore request until a count over everything gives every event.
    restore_to_queryable_s: f64,
}

#[derive(Args)]
pub struct ChartArgs {
    /// A file written by `bench query --json`.
    #[arg(long)]
    json: PathBuf,
    #[arg(long)]
    png: PathBuf,
}

fn chart(a: ChartArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.json).with_context(|| format!("reading {}", a.json.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", a.json.display()))?;
    let Some(queries) = v["queries"].as_array() else {
        anyhow::bail!("{} has no `queries`: is it from `bench query --json`?", a.json.display());
    };
    let bars: Vec<crate::chart::Bar> = queries
        .iter()
        .map(|q| crate::chart::Bar {
            label: q["name"].as_str().unwrap_or("?").to_string(),
            p50: q["p50_ms"].as_f64().unwrap_or(0.0),
            p99: q["p99_ms"].as_f64().unwrap_or(0.0),
            ripgrep: q["ripgrep_ms"].as_f64(),
        })
        .collect();
    let title = format!("Gossamer, {} events on one node ({} shards): query latency, ms (log scale)", v["events"], v["shards"]);
    crate::chart::latency_png(&a.png, &title, &bars)?;
    eprintln!("chart written to {}", a.png.display());
    Ok(())
}

#[derive(Args)]
pub struct SoakBench {
    /// How long to publish: 30s, 10m, 1h.
    #[arg(long, default_value = "60s")]
    duration: String,
    /// Events per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    #[arg(long, default_value_t = 64)]
    shards: u32,
    /// Seconds between samples of RSS and lag.
    #[arg(long, default_value_t = 5)]
    sample_every: u64,
    #[arg(long, default_value = "integration/testdata/loghub")]
    dataset: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
pub struct QueryBench {
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    #[arg(long, default_value_t = 64)]
    shards: u32,
    /// Timed runs of each query (after one warm-up run).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    #[arg(long, default_value = "integration/testdata/loghub")]
    dataset: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the node's data here (sled files, for `gossamer admin disk-usage`) instead
    /// of a temporary directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Also draw the figures as a PNG chart here.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Run the node without the index role: every query scans (what the index buys).
    #[arg(long)]
    no_index: bool,
}

#[derive(Args)]
pub struct IngestBench {
    /// Events to publish.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per NATS message.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Messages waiting for their JetStream ack at once.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    #[arg(long, default_value_t = 64)]
    shards: u32,
    /// The loghub samples: a directory of `<Name>/<Name>_2k.log_structured.csv`.
    #[arg(long, default_value = "integration/testdata/loghub")]
    dataset: PathBuf,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One way in, measured from the first publish until everything is queryable.
#[derive(Debug, Serialize)]
struct PathFigures {
    events_per_s: f64,
    /// Versus the raw rate of one event per message.
    ratio_to_raw_single: f64,
    seconds: f64,
    /// CPU seconds used meanwhile.
    node_cpu_s: f64,
    nats_server_cpu_s: f64,
    /// Seconds from the first publish until the index had caught up too (it runs at a
    /// lower priority and lags during the burst; queries scan what it has not covered).
    indexed_s: f64,
}

#[derive(Debug, Serialize)]
struct IngestFigures {
    events: usize,
    messages: usize,
    events_per_message: usize,
    ndjson_bytes: u64,
    /// The same messages, published raw with JetStream acks.
    raw_jetstream_events_per_s: f64,
    /// The same events published one per message: the bus's per-message rate.
    raw_jetstream_single_events_per_s: f64,
    request_reply: PathFigures,
    logs: PathFigures,
    /// The node's peak resident memory over the run.
    node_peak_rss_kb: u64,
    /// Blocks sealed by ingest that the shards wrote as they came, and opened.
    sealed_blocks_kept: u64,
    sealed_blocks_opened: u64,
    sled_bytes: u64,
    sled_bytes_per_event: f64,
    ndjson_bytes_per_event: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Ingest(a) => ingest(a),
        BenchWhat::Query(a) => query(a),
        BenchWhat::Soak(a) => soak(a),
        BenchWhat::Backup(a) => backup(a),
        BenchWhat::Cluster(a) => cluster(a),
        BenchWhat::Chart(a) => chart(a),
    }
}

/// One message per `batch` events, with the stream it goes to; every call makes fresh
/// ids. Returns the messages and their NDJSON bytes.
fn payloads(datasets: &[(String, Vec<Row>)], events: usize, batch: usize, prefix: &str) -> (Vec<(String, Bytes)>, u64) {
    let mut per_ds: Vec<Vec<String>> = vec![Vec::new(); datasets.len()];
    let t0: i64 = 1_780_000_000_000_000_000;
    for i in 0..events {
        let d = i % datasets.len();
        let (_, rows) = &datasets[d];
        let row = &rows[(i / datasets.len()) % rows.len()];
        let line = serde_json::json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "ts": t0 + i as i64 * 1_000_000,
            "level": row.level,
            "message": row.message,
            "labels": {"dataset": datasets[d].0, "component": row.component},
            "fields": {"event_id": row.event_id, "latency_ms": 1 + (i * 7919) % 2000},
        });
        per_ds[d].push(line.to_string());
    }
    let mut bytes = 0u64;
    let mut out = Vec::new();
    // Chunk k of every dataset covers the same stretch of time: publish chunk by chunk,
    // datasets interleaved, so time moves forward as it would with live producers.
    let chunks = per_ds.iter().map(|l| l.len().div_ceil(batch.max(1))).max().unwrap_or(0);
    for k in 0..chunks {
        for (d, lines) in per_ds.iter().enumerate() {
            let Some(chunk) = lines.chunks(batch.max(1)).nth(k) else { continue };
            let mut body = chunk.join("\n");
            body.push('\n');
            bytes += body.len() as u64;
            out.push((format!("{prefix}loghub.{}", datasets[d].0), Bytes::from(body)));
        }
    }
    (out, bytes)
}

pub struct Row {
    pub level: String,
    pub component: String,
    pub message: String,
    pub event_id: String,
}

/// Each loghub sample's rows, by lowercased dataset name, sorted by name.
pub fn load_loghub(dir: &Path) -> Result<Vec<(String, Vec<Row>)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading the loghub samples in {}", dir.display()))?;
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let path = dir.join(&name).join(format!("{name}_2k.log_structured.csv"));
        if !path.is_file() {
            continue;
        }
        let mut rdr = csv::Reader::from_path(&path).with_context(|| format!("opening {}", path.display()))?;
        let headers = rdr.headers()?.clone();
        let col = |n: &str| headers.iter().position(|h| h == n);
        let (level, comp, content, eid) = (col("Level"), col("Component"), col("Content"), col("EventId"));
        let mut rows = Vec::new();
        for rec in rdr.records() {
            let rec = rec?;
            let get = |i: Option<usize>, d: &str| i.and_then(|i| rec.get(i)).unwrap_or(d).to_string();
            rows.push(Row {
                level: get(level, "info"),
                component: get(comp, "none"),
                message: get(content, ""),
                event_id: get(eid, ""),
            });
        }
        out.push((name.to_lowercase(), rows));
    }
    if out.is_empty() {
        bail!("no loghub samples under {}", dir.display());
    }
    Ok(out)
}

async fn publish_all(js: &async_nats::jetstream::Context, prefix: &str, msgs: &[(String, Bytes)], in_flight: usize) -> Result<f64> {
    let start = Instant::now();
    let mut acks = FuturesUnordered::new();
    for (subject, body) in msgs {
        while acks.len() >= in_flight {
            if let Some(r) = acks.next().await {
                let _: async_nats::jetstream::publish::PublishAck = r?;
            }
        }
        let ack = js.publish(format!("{prefix}{subject}"), body.clone()).await?;
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The bus alone: events/s publishing `msgs` to a scratch stream (`in_flight` acks
/// pending), then at most `max_singles` of their events one per message (4,096 acks
/// pending, FIELD-NOTES' best case).
async fn raw_rates(
    js: &async_nats::jetstream::Context,
    msgs: &[(String, Bytes)],
    in_flight: usize,
    max_singles: usize,
) -> Result<(f64, f64)> {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the raw stream: {e}"))?;
    let events: usize = msgs.iter().map(|(_, b)| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count()).sum();
    let raw_s = publish_all(js, "bench.raw.", msgs, in_flight).await?;
    js.get_stream("BENCH_RAW").await?.purge().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let singles: Vec<(String, Bytes)> = msgs
        .iter()
        .flat_map(|(s, body)| {
            body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| (s.clone(), body.slice_ref(l))).collect::<Vec<_>>()
        })
        .take(max_singles)
        .collect();
    let single_s = publish_all(js, "bench.raw.", &singles, 4096).await?;
    js.delete_stream("BENCH_RAW").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((events as f64 / raw_s, singles.len() as f64 / single_s))
}

/// Sends every message as an ingest request and checks each answer.
async fn request_all(client: &async_nats::Client, prefix: &str, msgs: &[(String, Bytes)], in_flight: usize) -> Result<()> {
    let mut replies = FuturesUnordered::new();
    for (stream, body) in msgs {
        while replies.len() >= in_flight {
            if let Some(r) = replies.next().await {
                check_reply(r)?;
            }
        }
        replies.push(client.request(format!("{prefix}{stream}"), body.clone()));
    }
    while let Some(r) = replies.next().await {
        check_reply(r)?;
    }
    Ok(())
}

fn check_reply(r: Result<async_nats::Message, async_nats::RequestError>) -> Result<()> {
    let reply = r.map_err(|e| anyhow::anyhow!("ingest request: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    if v["accepted"].as_u64().is_none() {
        bail!("ingest refused a batch: {v}");
    }
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A process's peak resident memory (VmHWM), in KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM:")
}

/// A `kB` line of /proc/<pid>/status (0 when the process is gone).
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A `gossamer node` child process of this binary.
/// The stream-cap flags of the bench's nodes, decided once per run: none when the
/// defaults fit; on a fuller disk, smaller caps (said on stderr) rather than streams
/// JetStream refuses. The bench's nats-servers store in the temporary directory.
fn cap_flags() -> &'static [String] {
    static FLAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        let mut caps = gossamer_config::Config::default();
        crate::cli::fit_caps_to_disk(&mut caps, &std::env::temp_dir(), [false; 3]);
        if caps.stream_caps_total() == gossamer_config::Config::default().stream_caps_total() {
            return Vec::new();
        }
        vec![
            format!("--logs-max-bytes={}", caps.logs_max_bytes),
            format!("--deadletter-max-bytes={}", caps.deadletter_max_bytes),
            format!("--notify-max-bytes={}", caps.notify_max_bytes),
        ]
    })
}

struct NodeProcess {
    child: std::process::Child,
    http: String,
}

impl NodeProcess {
    fn start(nats: &str, data: &Path, shards: u32) -> Result<Self> {
        Self::start_with(nats, data, shards, &[])
    }

    fn start_with(nats: &str, data: &Path, shards: u32, extra: &[&str]) -> Result<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["node", "--nats", nats, "--http", "127.0.0.1:0", "--shards", &shards.to_string(), "--data"])
            .arg(data)
            .args(cap_flags())
            .args(extra)
            .env("GOSSAMER_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("starting a node")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep reading the node's stdout for its whole life.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.split("console: ").nth(1) {
                    let _ = tx.send(a.trim_end_matches('/').to_string());
                }
            }
        });
        let http = rx.recv_timeout(Duration::from_secs(120)).context("the node exited before listening")?;
        Ok(Self { child, http })
    }

    /// Events stored in streams whose name starts with `prefix`.
    fn stored(&self, prefix: &str) -> Result<u64> {
        let v: serde_json::Value = ureq::get(&format!("{}/api/v1/streams", self.http)).call()?.into_json()?;
        Ok(v["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .filter_map(|s| s["events"].as_u64())
            .sum())
    }

    /// A counter of the node's `/metrics` (0 when absent).
    fn counter(&self, name: &str) -> Result<u64> {
        let text = ureq::get(&format!("{}/metrics", self.http)).call()?.into_string()?;
        Ok(text
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }

    /// Whether the index covers every stored event.
    fn indexed(&self) -> Result<bool> {
        let st: serde_json::Value = ureq::get(&format!("{}/api/v1/index", self.http)).call()?.into_json()?;
        Ok(st["lag_events"] == 0 && st["dirty_blocks"] == 0)
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait()?;
        Ok(())
    }
}

/// Asks the node `done` every 20 ms until it says yes, for at most 30 minutes from
/// `start`. The node is another process with nothing to wait on but its API: this is a
/// poll with a deadline. `done` gives what is still missing when it says no.
async fn poll_node(start: Instant, mut done: impl FnMut() -> Result<Option<String>>) -> Result<()> {
    loop {
        let Some(missing) = tokio::task::block_in_place(&mut done)? else { return Ok(()) };
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("{missing} after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the index has caught up; returns the seconds since `start`.
async fn wait_indexed(node: &NodeProcess, start: Instant) -> Result<f64> {
    poll_node(start, || Ok((!node.indexed()?).then(|| "the index had not caught up".to_string()))).await?;
    Ok(start.elapsed().as_secs_f64())
}

/// Waits until `want` events of streams under `prefix` are stored.
async fn wait_stored(node: &NodeProcess, prefix: &str, want: u64, start: Instant) -> Result<()> {
    poll_node(start, || {
        let n = node.stored(prefix)?;
        Ok((n < want).then(|| format!("only {n} of {want} events queryable")))
    })
    .await
}

fn ingest(a: IngestBench) -> Result<()> {
    let datasets = load_loghub(&a.dataset)?;
    let tmp = tempfile::tempdir()?;
    let server = crate::nats_server::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let nats_pid = server.pid();
    let url = server.url();
    let figures = rt.block_on(async {
        let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
        let js = async_nats::jetstream::new(client.clone());
        eprintln!("generating {} events from {} ...", a.events, a.dataset.display());
        let (msgs, ndjson_bytes) = payloads(&datasets, a.events, a.batch, "");

        eprintln!("raw JetStream publish of {} messages ...", msgs.len());
        let (raw_rate, raw_single) = raw_rates(&js, &msgs, a.in_flight, usize::MAX).await?;

        let node = NodeProcess::start(&url, &tmp.path().join("node"), a.shards)?;
        let node_pid = node.child.id();
        let measure = |seconds: f64, cpu0: (f64, f64)| PathFigures {
            events_per_s: a.events as f64 / seconds,
            ratio_to_raw_single: a.events as f64 / seconds / raw_single,
            seconds,
            node_cpu_s: cpu_seconds(node_pid) - cpu0.0,
            nats_server_cpu_s: cpu_seconds(nats_pid) - cpu0.1,
            indexed_s: 0.0,
        };

        eprintln!("request/reply path: {} requests to gossamer.default.ingest.rr.* ...", msgs.len());
        let (rr_msgs, _) = payloads(&datasets, a.events, a.batch, "rr.");
        let cpu0 = (cpu_seconds(node_pid), cpu_seconds(nats_pid));
        let start = Instant::now();
        request_all(&client, "gossamer.default.ingest.", &rr_msgs, a.in_flight).await?;
        wait_stored(&node, "rr.", a.events as u64, start).await?;
        let mut request_reply = measure(start.elapsed().as_secs_f64(), cpu0);
        // Each path starts on a quiet node: the index finishes what the last one left.
        request_reply.indexed_s = wait_indexed(&node, start).await?;
        drop(rr_msgs);

        eprintln!("logs.> path: {} JetStream publishes to logs.js.* ...", msgs.len());
        let (js_msgs, _) = payloads(&datasets, a.events, a.batch, "js.");
        let cpu0 = (cpu_seconds(node_pid), cpu_seconds(nats_pid));
        let start = Instant::now();
        publish_all(&js, "logs.", &js_msgs, a.in_flight).await?;
        wait_stored(&node, "js.", a.events as u64, start).await?;
        let mut logs = measure(start.elapsed().as_secs_f64(), cpu0);
        logs.indexed_s = wait_indexed(&node, start).await?;

        let node_peak_rss_kb = peak_rss_kb(node_pid);
        let sealed_blocks_kept = node.counter("gossamer_shard_sealed_blocks_kept_total")?;
        let sealed_blocks_opened = node.counter("gossamer_shard_sealed_blocks_opened_total")?;
        node.stop()?;
        let sled_bytes = dir_size(&tmp.path().join("node").join("sled"));
        let stored = 2 * a.events;
        Ok::<_, anyhow::Error>(IngestFigures {
            events: a.events,
            messages: msgs.len(),
            events_per_message: a.batch,
            ndjson_bytes,
            raw_jetstream_events_per_s: raw_rate,
            raw_jetstream_single_events_per_s: raw_single,
            request_reply,
            logs,
            node_peak_rss_kb,
            sealed_blocks_kept,
            sealed_blocks_opened,
            sled_bytes,
            sled_bytes_per_event: sled_bytes as f64 / stored as f64,
            ndjson_bytes_per_event: ndjson_bytes as f64 / a.events as f64,
        })
    })?;
    drop(server);
    let f = &figures;
    println!("events {}, {} messages of {} events", f.events, f.messages, f.events_per_message);
    println!("raw JetStream publish, same messages      {:>10.0} events/s", f.raw_jetstream_events_per_s);
    println!("raw JetStream publish, one per message    {:>10.0} events/s", f.raw_jetstream_single_events_per_s);
    for (name, p) in [("request/reply -> queryable", &f.request_reply), ("logs.> -> queryable       ", &f.logs)] {
        println!(
            "{name}                {:>10.0} events/s  {:.2} x raw  (node {:.1} CPU-s, nats-server {:.1} CPU-s in {:.1} s; indexed after {:.1} s)",
            p.events_per_s, p.ratio_to_raw_single, p.node_cpu_s, p.nats_server_cpu_s, p.seconds, p.indexed_s
        );
    }
    println!("node peak RSS {:.0} MiB", f.node_peak_rss_kb as f64 / 1024.0);
    println!("sealed blocks written as they came {}, opened {}", f.sealed_blocks_kept, f.sealed_blocks_opened);
    println!(
        "sled on disk {:.1} bytes/event (NDJSON {:.1} bytes/event, {:.2} x)",
        f.sled_bytes_per_event,
        f.ndjson_bytes_per_event,
        f.sled_bytes_per_event / f.ndjson_bytes_per_event
    );
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct QueryFigure {
    name: &'static str,
    what: String,
    answer: serde_json::Value,
    p50_ms: f64,
    p99_ms: f64,
    ripgrep_ms: Option<f64>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Median wall time of a shell pipeline over three runs, and its output.
fn time_shell(cmd: &str) -> Result<(f64, String)> {
    let mut times = Vec::new();
    let mut out = String::new();
    for _ in 0..3 {
        let start = Instant::now();
        let o = std::process::Command::new("sh").args(["-c", cmd]).output()?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    }
    times.sort_by(f64::total_cmp);
    Ok((times[1], out))
}

fn query(a: QueryBench) -> Result<()> {
    let datasets = load_loghub(&a.dataset)?;
    let tmp = tempfile::tempdir()?;
    let server = crate::nats_server::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    eprintln!("generating {} events ...", a.events);
    let (msgs, ndjson_bytes) = payloads(&datasets, a.events, 500, "");
    let ndjson = tmp.path().join("events.ndjson");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&ndjson)?);
        for (stream, body) in &msgs {
            // The stream is the subject's, as Gossamer stores it.
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let mut v: serde_json::Value = serde_json::from_slice(line)?;
                v["stream"] = serde_json::Value::String(stream.clone());
                writeln!(f, "{v}")?;
            }
        }
    }
    let node_dir = a.keep.clone().unwrap_or_else(|| tmp.path().join("node"));
    if node_dir.join("sled").exists() {
        anyhow::bail!("{} already holds a node's data: give an empty directory", node_dir.display());
    }
    // The bus alone, with the same messages, then one event per message (at most a
    // million of them): the rates Gossamer's ingest is measured against.
    eprintln!("raw JetStream publish of the same {} messages ...", msgs.len());
    let (raw_rate, raw_single_rate) = rt.block_on(async {
        let client = gossamer_bus::connect(&server.url(), Duration::from_secs(10)).await?;
        raw_rates(&async_nats::jetstream::new(client), &msgs, 256, 1_000_000).await
    })?;
    let roles: &[&str] = if a.no_index { &["--roles", "ingest,shard,admin"] } else { &[] };
    let node = NodeProcess::start_with(&server.url(), &node_dir, a.shards, roles)?;
    eprintln!("ingesting through the request/reply path ...");
    let ingest_start = Instant::now();
    rt.block_on(async {
        let client = gossamer_bus::connect(&server.url(), Duration::from_secs(10)).await?;
        request_all(&client, "gossamer.default.ingest.", &msgs, 256).await?;
        wait_stored(&node, "loghub.", a.events as u64, Instant::now()).await
    })?;
    let ingest_rate = a.events as f64 / ingest_start.elapsed().as_secs_f64();
    drop(msgs);
    let base = format!("{}/api/v1", node.http);
    // Queries are complete while the index lags, but the figures are of indexed data.
    let waited = Instant::now();
    let bar = indicatif::ProgressBar::new_spinner();
    // Without the index role there is nothing to wait for.
    let mut waiting = !a.no_index;
    while waiting {
        let st: serde_json::Value = ureq::get(&format!("{base}/index")).call()?.into_json()?;
        let lag = st["lag_events"].as_u64().unwrap_or(u64::MAX);
        bar.set_message(format!("indexing: {lag} events left"));
        bar.tick();
        waiting = !(lag == 0 && st["dirty_blocks"] == 0);
        if waiting {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    bar.finish_and_clear();
    let index_wait_s = waited.elapsed().as_secs_f64();
    eprintln!("the index caught up {index_wait_s:.1} s after the last event was stored");
    let rg = std::process::Command::new("rg").arg("--version").output().is_ok();
    let f = ndjson.display();
    let mix: Vec<(&'static str, String, String, Option<String>)> = vec![
        (
            "Q1 selective, newest 100",
            "stream:loghub.hdfs exception".into(),
            "search?limit=100&q=".into(),
            Some(format!("rg -F '\"stream\":\"loghub.hdfs\"' {f} | rg -i -w exception | sort -r | head -100 | wc -l")),
        ),
        (
            "Q1 selective, count",
            "stream:loghub.hdfs exception".into(),
            "count?q=".into(),
            Some(format!("rg -F '\"stream\":\"loghub.hdfs\"' {f} | rg -c -i -w exception")),
        ),
        (
            "Q2 phrase count",
            "\"authentication failure\"".into(),
            "count?q=".into(),
            Some(format!("rg -c -i 'authentication\\W+failure' {f}")),
        ),
        ("Q3 count by level", String::new(), "aggregate?fn=count&by=level&q=".into(), None),
        ("Q4 p95 latency by dataset x minute", String::new(), "aggregate?fn=p95&field=latency_ms&by=dataset&bucket=1m&q=".into(), None),
    ];
    let mut figures = Vec::new();
    for (name, q, path, rg_cmd) in mix {
        let url = format!("{base}/{path}{}", urlencode(&q));
        let mut times = Vec::new();
        let mut answer = serde_json::Value::Null;
        for run in 0..=a.runs {
            let start = Instant::now();
            let v: serde_json::Value = ureq::get(&url).call()?.into_json()?;
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            if run > 0 {
                times.push(ms);
            }
            answer = match (&v["count"], &v["events"], &v["groups"]) {
                (c, _, _) if !c.is_null() => c.clone(),
                (_, e, _) if e.is_array() => serde_json::json!(e.as_array().map(|e| e.len())),
                (_, _, g) => serde_json::json!(g.as_array().map(|g| g.len())),
            };
        }
        times.sort_by(f64::total_cmp);
        let ripgrep_ms = match (&rg_cmd, rg) {
            (Some(cmd), true) => Some(time_shell(cmd)?.0),
            _ => None,
        };
        eprintln!("{name}: p50 {:.1} ms", percentile(&times, 0.5));
        figures.push(QueryFigure {
            name,
            what: format!("{path}{q}"),
            answer,
            p50_ms: percentile(&times, 0.5),
            p99_ms: percentile(&times, 0.99),
            ripgrep_ms,
        });
    }
    let peak_rss_kb = peak_rss_kb(node.child.id());
    node.stop()?;
    let sled_bytes = dir_size(&node_dir.join("sled"));
    drop(server);
    println!("{} events, {} shards, {} timed runs per query; index caught up {index_wait_s:.1} s after ingest", a.events, a.shards, a.runs);
    println!(
        "ingest, request/reply to queryable {ingest_rate:.0} events/s; raw JetStream publish {raw_rate:.0} events/s (same messages), {raw_single_rate:.0} events/s (one per message)"
    );
    println!("{:<38} {:>10} {:>10} {:>12}  answer", "query", "p50 ms", "p99 ms", "ripgrep ms");
    for q in &figures {
        println!(
            "{:<38} {:>10.1} {:>10.1} {:>12}  {}",
            q.name,
            q.p50_ms,
            q.p99_ms,
            q.ripgrep_ms.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into()),
            q.answer
        );
    }
    println!(
        "node peak RSS {:.0} MiB; sled {:.1} bytes/event, NDJSON {:.1} bytes/event ({:.2} x)",
        peak_rss_kb as f64 / 1024.0,
        sled_bytes as f64 / a.events as f64,
        ndjson_bytes as f64 / a.events as f64,
        sled_bytes as f64 / ndjson_bytes as f64
    );
    if let Some(path) = &a.png {
        let bars: Vec<crate::chart::Bar> = figures
            .iter()
            .map(|q| crate::chart::Bar { label: q.name.to_string(), p50: q.p50_ms, p99: q.p99_ms, ripgrep: q.ripgrep_ms })
            .collect();
        let title = format!(
            "Gossamer, {} events on one node ({} shards): query latency, ms (log scale)",
            a.events, a.shards
        );
        crate::chart::latency_png(path, &title, &bars)?;
        eprintln!("chart written to {}", path.display());
    }
    if let Some(path) = a.json {
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&serde_json::json!({
                "events": a.events,
                "shards": a.shards,
                "queries": figures,
                "peak_rss_kb": peak_rss_kb,
                "sled_bytes": sled_bytes,
                "ndjson_bytes": ndjson_bytes,
                "index_caught_up_after_s": index_wait_s,
                "ingest_events_per_s": ingest_rate,
                "raw_jetstream_events_per_s": raw_rate,
                "raw_jetstream_single_events_per_s": raw_single_rate,
            }))?,
        )?;
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct SoakSample {
    second: f64,
    rss_mib: f64,
    acked: u64,
    stored: u64,
    /// Acked but not yet stored.
    lag: u64,
}

/// A process's resident memory now, in KiB.
fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS:")
}

fn soak(a: SoakBench) -> Result<()> {
    let duration = gossamer_query::agg::parse_duration(&a.duration)
        .map(|ns| Duration::from_nanos(ns as u64))
        .with_context(|| format!("invalid --duration {:?}: use 30s, 10m, 1h", a.duration))?;
    if a.rate == 0 {
        bail!("--rate must be at least 1 event per second");
    }
    let datasets = load_loghub(&a.dataset)?;
    let tmp = tempfile::tempdir()?;
    let server = crate::nats_server::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let node = NodeProcess::start(&server.url(), &tmp.path().join("node"), a.shards)?;
    let node_pid = node.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let attempted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let url = server.url();
    let per_message: u64 = 100;
    eprintln!("soak: {} events/s for {:?} against a node with {} shards ...", a.rate, duration, a.shards);

    // The producer: messages of 100 events on a fixed schedule, JetStream acks awaited.
    let producer = {
        let (acked, attempted) = (acked.clone(), attempted.clone());
        let datasets_rows: Vec<(String, Vec<String>)> = datasets
            .iter()
            .map(|(n, rows)| (n.clone(), rows.iter().map(|r| r.message.clone()).collect()))
            .collect();
        rt.spawn(async move {
            let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
            let js = async_nats::jetstream::new(client);
            let interval = Duration::from_secs_f64(per_message as f64 / a.rate as f64);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let start = Instant::now();
            let mut acks = FuturesUnordered::new();
            let mut i = 0usize;
            while start.elapsed() < duration {
                ticker.tick().await;
                let (name, rows) = &datasets_rows[i % datasets_rows.len()];
                let body: String = (0..per_message as usize)
                    .map(|j| {
                        let row = &rows[(i * 7 + j) % rows.len()];
                        format!("{}\n", serde_json::json!({"id": uuid::Uuid::now_v7().to_string(), "message": row, "labels": {"dataset": name}, "fields": {"latency_ms": 1 + (i * 31 + j) % 2000}}))
                    })
                    .collect();
                attempted.fetch_add(per_message, std::sync::atomic::Ordering::SeqCst);
                let ack = js.publish(format!("logs.soak.{name}"), body.into()).await?;
                let acked = acked.clone();
                acks.push(async move {
                    ack.await?;
                    acked.fetch_add(per_message, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, anyhow::Error>(())
                });
                while let Some(r) = futures::FutureExt::now_or_never(acks.next()).flatten() {
                    r?;
                }
                i += 1;
            }
            while let Some(r) = acks.next().await {
                r?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };

    // The query load, and the samples.
    let base = format!("{}/api/v1", node.http);
    let queries = [
        format!("{base}/search?limit=100&q={}", urlencode("stream:soak.* error")),
        format!("{base}/count?from=-1m&q={}", urlencode("stream:soak.hdfs")),
        format!("{base}/aggregate?fn=p95&field=latency_ms&by=dataset&from=-1m&q="),
    ];
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut latencies = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut q = 0;
    let stored = |node: &NodeProcess| node.stored("soak.").unwrap_or(0);
    while !producer.is_finished() {
        let t = Instant::now();
        ureq::get(&queries[q % queries.len()]).call().context("a soak query failed")?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        q += 1;
        if start.elapsed() >= next_sample {
            let (ack, st) = (acked.load(std::sync::atomic::Ordering::SeqCst), stored(&node));
            samples.push(SoakSample {
                second: start.elapsed().as_secs_f64(),
                rss_mib: rss_kb(node_pid) as f64 / 1024.0,
                acked: ack,
                stored: st,
                lag: ack.saturating_sub(st),
            });
            next_sample += Duration::from_secs(a.sample_every.max(1));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(producer)??;
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    let attempted = attempted.load(std::sync::atomic::Ordering::SeqCst);
    // Reconcile: wait for the node to store everything acked.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut final_stored = stored(&node);
    while final_stored < acked && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        final_stored = stored(&node);
    }
    let rss_end = rss_kb(node_pid) as f64 / 1024.0;
    let peak = peak_rss_kb(node_pid) as f64 / 1024.0;
    node.stop()?;
    drop(server);
    latencies.sort_by(f64::total_cmp);
    let lost = acked.saturating_sub(final_stored);
    let report = serde_json::json!({
        "duration_s": duration.as_secs_f64(),
        "rate": a.rate,
        "acked": acked,
        "attempted": attempted,
        "stored": final_stored,
        "lost": lost,
        "stored_beyond_acked": final_stored.saturating_sub(acked),
        "rss_start_mib": samples.first().map(|s| s.rss_mib),
        "rss_end_mib": rss_end,
        "rss_peak_mib": peak,
        "max_lag": samples.iter().map(|s| s.lag).max(),
        "queries": latencies.len(),
        "query_p50_ms": if latencies.is_empty() { 0.0 } else { percentile(&latencies, 0.5) },
        "query_p99_ms": if latencies.is_empty() { 0.0 } else { percentile(&latencies, 0.99) },
        "samples": samples,
    });
    println!("second   rss MiB      acked     stored    lag");
    for s in report["samples"].as_array().into_iter().flatten() {
        println!(
            "{:>6.0} {:>9.0} {:>10} {:>10} {:>6}",
            s["second"].as_f64().unwrap_or(0.0),
            s["rss_mib"].as_f64().unwrap_or(0.0),
            s["acked"],
            s["stored"],
            s["lag"]
        );
    }
    println!(
        "acked {acked}, stored {final_stored}, lost {lost}; RSS end {rss_end:.0} MiB, peak {peak:.0} MiB; {} queries, p50 {:.1} ms, p99 {:.1} ms",
        report["queries"], report["query_p50_ms"].as_f64().unwrap_or(0.0), report["query_p99_ms"].as_f64().unwrap_or(0.0)
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if lost > 0 {
        bail!("{lost} acked events were not stored");
    }
    Ok(())
}

/// Starts a job with a POST, waits for it, and times it.
fn timed_job(http: &str, path: &str, body: serde_json::Value) -> Result<(f64, serde_json::Value)> {
    let start = Instant::now();
    let job: serde_json::Value = ureq::post(&format!("{http}{path}")).send_json(body)?.into_json()?;
    let id = job["id"].as_str().context("a job id")?.to_string();
    loop {
        let j: serde_json::Value = ureq::get(&format!("{http}/api/v1/jobs/{id}")).call()?.into_json()?;
        match j["state"].as_str() {
            Some("done") => return Ok((start.elapsed().as_secs_f64(), j)),
            Some("failed") => bail!("{path}: {}", j["error"]),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn figure(seconds: f64, bytes: u64, events: u64) -> JobFigure {
    JobFigure { seconds, bytes, events, mb_per_s: bytes as f64 / 1e6 / seconds, events_per_s: events as f64 / seconds }
}

fn backup(a: BackupBench) -> Result<()> {
    let datasets = load_loghub(&a.dataset)?;
    let tmp = tempfile::tempdir()?;
    let store = tmp.path().join("backups");
    let store_arg = store.to_str().context("a UTF-8 temporary path")?.to_string();
    let extra = ["--backup-store", store_arg.as_str()];
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let server = crate::nats_server::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let url = server.url();
    let node = NodeProcess::start_with(&url, &tmp.path().join("node"), a.shards, &extra)?;
    let more = a.events / 10;
    let ndjson_bytes = rt.block_on(async {
        let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
        eprintln!("storing {} events through gossamer.default.ingest ...", a.events);
        let (msgs, bytes) = payloads(&datasets, a.events, a.batch, "");
        request_all(&client, "gossamer.default.ingest.", &msgs, a.in_flight).await?;
        wait_stored(&node, "loghub", a.events as u64, Instant::now()).await?;
        Ok::<_, anyhow::Error>(bytes)
    })?;
    let sled_bytes = dir_size(&tmp.path().join("node").join("sled"));

    eprintln!("full backup ...");
    let (secs, job) = timed_job(&node.http, "/api/v1/backups", serde_json::json!({"kind": "full", "name": "bench-full"}))?;
    let full = figure(secs, job["manifest"]["bytes"].as_u64().unwrap_or(0), a.events as u64);

    rt.block_on(async {
        let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
        let (msgs, _) = payloads(&datasets, more, a.batch, "");
        request_all(&client, "gossamer.default.ingest.", &msgs, a.in_flight).await?;
        wait_stored(&node, "loghub", (a.events + more) as u64, Instant::now()).await
    })?;
    eprintln!("incremental backup of {more} more events ...");
    let (secs, job) = timed_job(&node.http, "/api/v1/backups", serde_json::json!({"kind": "incremental", "name": "bench-incr"}))?;
    let incremental = figure(secs, job["manifest"]["bytes"].as_u64().unwrap_or(0), more as u64);

    eprintln!("verify the full backup ...");
    let (secs, _) = timed_job(&node.http, "/api/v1/backups/bench-full/verify", serde_json::json!({}))?;
    let verify_full = figure(secs, full.bytes, full.events);
    node.stop()?;
    drop(server);

    eprintln!("restore into a fresh nats-server and node ...");
    let server = crate::nats_server::NatsServer::start(&tmp.path().join("nats-2"), 0)?;
    let node = NodeProcess::start_with(&server.url(), &tmp.path().join("node-2"), a.shards, &extra)?;
    let total = (a.events + more) as u64;
    let start = Instant::now();
    let (secs, _) = timed_job(&node.http, "/api/v1/restore", serde_json::json!({"backup": "bench-incr"}))?;
    let restore = figure(secs, full.bytes + incremental.bytes, total);
    rt.block_on(wait_stored(&node, "loghub", total, start))?;
    let counted: serde_json::Value = ureq::get(&format!("{}/api/v1/count?q=", node.http)).call()?.into_json()?;
    if counted["count"].as_u64() != Some(total) {
        bail!("the restored node counts {} events, not {total}", counted["count"]);
    }
    let restore_to_queryable_s = start.elapsed().as_secs_f64();
    node.stop()?;

    let f = BackupFigures { events: a.events, ndjson_bytes, sled_bytes, full, incremental, verify_full, restore, restore_to_queryable_s };
    println!("events {} (NDJSON {:.1} MB, sled {:.1} MB)", f.events, f.ndjson_bytes as f64 / 1e6, f.sled_bytes as f64 / 1e6);
    for (name, j) in [("full backup", &f.full), ("incremental (+10%)", &f.incremental), ("verify full", &f.verify_full), ("restore full+incr", &f.restore)] {
        println!(
            "{name:<20} {:>7.2} s  {:>8.1} MB  {:>7.1} MB/s  {:>10.0} events/s",
            j.seconds,
            j.bytes as f64 / 1e6,
            j.mb_per_s,
            j.events_per_s
        );
    }
    println!("restore request to every event counted: {:.2} s", f.restore_to_queryable_s);
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&f)?)?;
    }
    Ok(())
}

/// One run of both ways in against `nodes` fresh nodes on a fresh nats-server.
fn cluster_run(a: &ClusterBench, datasets: &[(String, Vec<Row>)], nodes: usize, kill: bool) -> Result<(ClusterRun, Option<(f64, f64)>)> {
    let tmp = tempfile::tempdir()?;
    let server = crate::nats_server::NatsServer::start(&tmp.path().join("nats"), 0)?;
    let url = server.url();
    let nats_pid = server.pid();
    let replicas = a.replicas.to_string();
    let mut procs = Vec::new();
    for i in 1..=nodes {
        let id = format!("node-{i}");
        procs.push(NodeProcess::start_with(
            &url,
            &tmp.path().join(&id),
            a.shards,
            &["--node-id", &id, "--replicas", &replicas, "--gossip-probe-ms", "500", "--gossip-suspect-ms", "2000"],
        )?);
    }
    // Every node sees every other before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &procs {
        loop {
            let v: serde_json::Value = ureq::get(&format!("{}/api/v1/cluster", p.http)).call()?.into_json()?;
            let alive = v["members"].as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
            if alive == nodes {
                break;
            }
            if Instant::now() > deadline {
                bail!("the {nodes} nodes did not all see each other within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let cpu0 = (cpu(&pids), cpu_seconds(nats_pid));
    let (rr, logs) = rt.block_on(async {
        let client = gossamer_bus::connect(&url, Duration::from_secs(10)).await?;
        let js = async_nats::jetstream::new(client.clone());
        let (rr_msgs, _) = payloads(datasets, a.events, a.batch, "rr.");
        eprintln!("{nodes} node(s): request/reply path, {} events ...", a.events);
        let start = Instant::now();
        request_all(&client, "gossamer.default.ingest.", &rr_msgs, a.in_flight).await?;
        wait_stored(&procs[0], "rr.", a.events as u64, start).await?;
        let rr = a.events as f64 / start.elapsed().as_secs_f64();
        drop(rr_msgs);
        let (js_msgs, _) = payloads(datasets, a.events, a.batch, "js.");
        eprintln!("{nodes} node(s): logs.> path, {} events ...", a.events);
        let start = Instant::now();
        publish_all(&js, "logs.", &js_msgs, a.in_flight).await?;
        wait_stored(&procs[0], "js.", a.events as u64, start).await?;
        let logs = a.events as f64 / start.elapsed().as_secs_f64();
        Ok::<_, anyhow::Error>((rr, logs))
    })?;
    let run = ClusterRun { nodes, request_reply_events_per_s: rr, logs_events_per_s: logs, nodes_cpu_s: cpu(&pids) - cpu0.0, nats_server_cpu_s: cpu_seconds(nats_pid) - cpu0.1 };
    let mut failover = None;
    if kill && procs.len() > 1 {
        let total = 2 * a.events as u64;
        let victim = procs.remove(1);
        let watcher = procs[0].http.clone();
        let mut child = victim.child;
        let killed = Instant::now();
        child.kill()?;
        let _ = child.wait();
        let (mut complete_ms, mut dead_ms) = (None, None);
        while complete_ms.is_none() || dead_ms.is_none() {
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("answers were not complete or the node not declared dead within 60 s of the kill");
            }
            if complete_ms.is_none() {
                let v: serde_json::Value = ureq::get(&format!("{watcher}/api/v1/count?q=")).call()?.into_json()?;
                if v["partial"] == false && v["count"].as_u64() == Some(total) {
                    complete_ms = Some(killed.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if dead_ms.is_none() {
                let v: serde_json::Value = ureq::get(&format!("{watcher}/api/v1/cluster")).call()?.into_json()?;
                if v["members"].as_array().is_some_and(|m| m.iter().any(|m| m["node"] == "node-2" && m["state"] == "dead")) {
                    dead_ms = Some(killed.elapsed().as_secs_f64() * 1000.0);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        failover = complete_ms.zip(dead_ms);
    }
    for p in procs {
        p.stop()?;
    }
    drop(server);
    Ok((run, failover))
}

fn cluster(a: ClusterBench) -> Result<()> {
    let datasets = load_loghub(&a.dataset)?;
    let (one, _) = cluster_run(&a, &datasets, 1, false)?;
    let (three, failover) = cluster_run(&a, &datasets, 3, true)?;
    let (kill_to_complete_ms, kill_to_declared_dead_ms) = failover.context("no failover was measured")?;
    let figures = ClusterFigures {
        events: a.events,
        shards: a.shards,
        replicas: a.replicas,
        request_reply_ratio: three.request_reply_events_per_s / one.request_reply_events_per_s,
        logs_ratio: three.logs_events_per_s / one.logs_events_per_s,
        one,
        three,
        kill_to_complete_ms,
        kill_to_declared_dead_ms,
    };
    let f = &figures;
    println!("events {} per path, {} shards, {} replicas", f.events, f.shards, f.replicas);
    for r in [&f.one, &f.three] {
        println!(
            "{} node(s): request/reply {:>9.0} events/s, logs.> {:>9.0} events/s (nodes {:.1} CPU-s, nats-server {:.1} CPU-s)",
            r.nodes, r.request_reply_events_per_s, r.logs_events_per_s, r.nodes_cpu_s, r.nats_server_cpu_s
        );
    }
    println!("three nodes vs one: request/reply {:.2} x, logs.> {:.2} x", f.request_reply_ratio, f.logs_ratio);
    println!("kill -9 of one node: answers complete after {:.0} ms, declared dead after {:.0} ms", f.kill_to_complete_ms, f.kill_to_declared_dead_ms);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)?;
    }
    Ok(())
}
