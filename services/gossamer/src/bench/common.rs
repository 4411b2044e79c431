//! What the benches share: loghub events as NDJSON payloads, raw JetStream rates, a
//! node process to measure, and readings of its CPU, memory and disk.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;

/// One message per `batch` events, with the stream it goes to; every call makes fresh
/// ids. Returns the messages and their NDJSON bytes.
pub fn payloads(datasets: &[(String, Vec<Row>)], events: usize, batch: usize, prefix: &str) -> (Vec<(String, Bytes)>, u64) {
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

/// The events of `msgs` as an NDJSON file, each line with its `stream` key (the
/// message's, as Gossamer stores it): what `gossamer publish` and ripgrep read.
pub fn write_ndjson(msgs: &[(String, Bytes)], path: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (stream, body) in msgs {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let mut v: serde_json::Value = serde_json::from_slice(line)?;
            v["stream"] = serde_json::Value::String(stream.clone());
            writeln!(f, "{v}")?;
        }
    }
    f.flush()?;
    Ok(())
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

pub async fn publish_all(js: &async_nats::jetstream::Context, prefix: &str, msgs: &[(String, Bytes)], in_flight: usize) -> Result<f64> {
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
pub async fn raw_rates(
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
pub async fn request_all(client: &async_nats::Client, prefix: &str, msgs: &[(String, Bytes)], in_flight: usize) -> Result<()> {
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

pub fn check_reply(r: Result<async_nats::Message, async_nats::RequestError>) -> Result<()> {
    let reply = r.map_err(|e| anyhow::anyhow!("ingest request: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    if v["accepted"].as_u64().is_none() {
        bail!("ingest refused a batch: {v}");
    }
    Ok(())
}

pub fn dir_size(p: &Path) -> u64 {
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
pub fn peak_rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM:")
}

/// A `kB` line of /proc/<pid>/status (0 when the process is gone).
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A process's resident memory now, in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS:")
}

/// A `gossamer node` child process of this binary.
/// The stream-cap flags of the bench's nodes, decided once per run: none when the
/// defaults fit; on a fuller disk, smaller caps (said on stderr) rather than streams
/// JetStream refuses. The bench's nats-servers store in the temporary directory.
pub fn cap_flags() -> &'static [String] {
    static FLAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        let mut caps = gossamer_config::Config::default();
        crate::local::fit_caps_to_disk_saying(&mut caps, &std::env::temp_dir(), [false; 3]);
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

/// A metric of the node at `http`, summed over its series (0 when absent).
pub fn metric_sum(http: &str, name: &str) -> Result<u64> {
    let text = ureq::get(&format!("{http}/metrics")).call()?.into_string()?;
    Ok(text
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

pub struct NodeProcess {
    pub child: std::process::Child,
    pub http: String,
}

impl NodeProcess {
    pub fn start(nats: &str, data: &Path, shards: u32) -> Result<Self> {
        Self::start_with(nats, data, shards, &[])
    }

    pub fn start_with(nats: &str, data: &Path, shards: u32, extra: &[&str]) -> Result<Self> {
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
    pub fn stored(&self, prefix: &str) -> Result<u64> {
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
    pub fn counter(&self, name: &str) -> Result<u64> {
        metric_sum(&self.http, name)
    }

    /// Whether the index covers every stored event.
    pub fn indexed(&self) -> Result<bool> {
        let st: serde_json::Value = ureq::get(&format!("{}/api/v1/index", self.http)).call()?.into_json()?;
        Ok(st["lag_events"] == 0 && st["dirty_blocks"] == 0)
    }

    pub fn stop(mut self) -> Result<()> {
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
pub async fn poll_node(start: Instant, mut done: impl FnMut() -> Result<Option<String>>) -> Result<()> {
    loop {
        let Some(missing) = tokio::task::block_in_place(&mut done)? else { return Ok(()) };
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("{missing} after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the index has caught up; returns the seconds since `start`.
pub async fn wait_indexed(node: &NodeProcess, start: Instant) -> Result<f64> {
    poll_node(start, || Ok((!node.indexed()?).then(|| "the index had not caught up".to_string()))).await?;
    Ok(start.elapsed().as_secs_f64())
}

/// Waits until `want` events of streams under `prefix` are stored.
pub async fn wait_stored(node: &NodeProcess, prefix: &str, want: u64, start: Instant) -> Result<()> {
    poll_node(start, || {
        let n = node.stored(prefix)?;
        Ok((n < want).then(|| format!("only {n} of {want} events queryable")))
    })
    .await
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Median wall time of a shell pipeline over three runs, and its output.
pub fn time_shell(cmd: &str) -> Result<(f64, String)> {
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

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Starts a job with a POST, waits for it, and times it.
pub fn timed_job(http: &str, path: &str, body: serde_json::Value) -> Result<(f64, serde_json::Value)> {
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

pub fn figure(seconds: f64, bytes: u64, events: u64) -> JobFigure {
    JobFigure { seconds, bytes, events, mb_per_s: bytes as f64 / 1e6 / seconds, events_per_s: events as f64 / seconds }
}

/// One backup job, timed.
#[derive(Debug, Serialize)]
pub struct JobFigure {
    pub seconds: f64,
    pub bytes: u64,
    pub events: u64,
    pub mb_per_s: f64,
    pub events_per_s: f64,
}
