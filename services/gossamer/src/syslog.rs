//! The syslog door (`--syslog-udp ADDR`, `--syslog-tcp ADDR`, off by default): RFC 5424
//! and RFC 3164 messages, over UDP (one per datagram) and TCP (LF framing or RFC 6587
//! octet counting, told apart by the first byte of each frame), parsed with
//! `syslog_loose`.
//!
//! A message becomes an event: its time (the receive time when it has none), its
//! severity as the level, facility, app name, host name, process id and message id as
//! labels, RFC 5424 structured data as fields (`{"sd-id": {"param": "value"}}`), the
//! stream `syslog.<app-name>` (`syslog` without one), or the value of a structured-data
//! parameter named `stream`. Syslog is lossy by nature: a line that does not parse is
//! stored whole as the message; UDP datagrams arriving faster than ingest takes them are
//! dropped and counted in `/metrics`. Events go, per stream, through the request/reply
//! ingest path (the same limits, dead letters and back-pressure as `logs.>`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Counters for `/metrics`.
#[derive(Default)]
pub struct SyslogStats {
    pub received: AtomicU64,
    pub udp_dropped: AtomicU64,
    pub stored: AtomicU64,
    /// Events ingest refused or that could not be sent (each logged).
    pub failed: AtomicU64,
}

/// Messages waiting for the batcher; UDP drops past this.
const QUEUE: usize = 20_000;
/// Events per ingest request, and how long a batch waits to fill.
const BATCH: usize = 1_000;
const LINGER: Duration = Duration::from_millis(20);
/// The longest frame taken (RFC 5425 asks for 2 KiB at least; this is generous).
const MAX_FRAME: usize = 256 << 10;

/// Binds the listeners the config asks for and runs them (and the batcher that sends
/// their events) until the returned handles are dropped or aborted.
pub async fn start(
    cfg: &gossamer_config::Config,
    nats: async_nats::Client,
) -> anyhow::Result<Option<(Arc<SyslogStats>, Vec<tokio::task::JoinHandle<()>>)>> {
    use anyhow::Context as _;
    if cfg.syslog_udp.is_none() && cfg.syslog_tcp.is_none() {
        return Ok(None);
    }
    let stats = Arc::new(SyslogStats::default());
    let (tx, rx) = mpsc::channel::<String>(QUEUE);
    let mut tasks = vec![tokio::spawn(batcher(rx, nats, cfg.cluster.clone(), stats.clone()))];
    if let Some(addr) = &cfg.syslog_udp {
        let socket = tokio::net::UdpSocket::bind(addr).await.with_context(|| format!("binding syslog UDP on {addr}"))?;
        info!(addr = %socket.local_addr()?, "syslog-udp-listening");
        tasks.push(tokio::spawn(udp(socket, tx.clone(), stats.clone())));
    }
    if let Some(addr) = &cfg.syslog_tcp {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding syslog TCP on {addr}"))?;
        info!(addr = %listener.local_addr()?, "syslog-tcp-listening");
        tasks.push(tokio::spawn(tcp(listener, tx, stats.clone())));
    }
    Ok(Some((stats, tasks)))
}

async fn udp(socket: tokio::net::UdpSocket, tx: mpsc::Sender<String>, stats: Arc<SyslogStats>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buf).await else { continue };
        stats.received.fetch_add(1, Ordering::Relaxed);
        let text = String::from_utf8_lossy(&buf[..n]).trim_end_matches(['\n', '\r', '\0']).to_string();
        if tx.try_send(text).is_err() {
            stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn tcp(listener: tokio::net::TcpListener, tx: mpsc::Sender<String>, stats: Arc<SyslogStats>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let (tx, stats) = (tx.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = frames(stream, &tx, &stats).await {
                warn!(peer = %peer, error = %e, "syslog-tcp-closed");
            }
        });
    }
}

/// Reads frames off one TCP connection: `LEN SP MSG` when a frame starts with a digit
/// (octet counting), else up to the next LF. A full queue holds the sender back.
async fn frames(stream: tokio::net::TcpStream, tx: &mpsc::Sender<String>, stats: &SyslogStats) -> std::io::Result<()> {
    let mut r = BufReader::new(stream);
    loop {
        let first = match r.fill_buf().await? {
            [] => return Ok(()),
            b => b[0],
        };
        let frame = if first.is_ascii_digit() {
            let mut len = Vec::new();
            r.read_until(b' ', &mut len).await?;
            let n: usize = std::str::from_utf8(&len).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            if n == 0 || n > MAX_FRAME {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad octet count {:?}", String::from_utf8_lossy(&len))));
            }
            let mut msg = vec![0u8; n];
            r.read_exact(&mut msg).await?;
            msg
        } else {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).await?;
            line
        };
        let text = String::from_utf8_lossy(&frame).trim_end_matches(['\n', '\r', '\0']).to_string();
        if text.trim().is_empty() {
            continue;
        }
        stats.received.fetch_add(1, Ordering::Relaxed);
        if tx.send(text).await.is_err() {
            return Ok(());
        }
    }
}

/// The stream and the event JSON of one syslog message.
pub fn to_event(text: &str) -> (String, Value) {
    use syslog_loose::{parse_message, Variant};
    let m = parse_message(text, Variant::Either);
    let mut labels = Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty() && *v != "-") {
            labels.insert(k.into(), Value::String(v.to_string()));
        }
    };
    put("facility", m.facility.map(|f| f.as_str()));
    put("appname", m.appname);
    put("hostname", m.hostname);
    let procid = m.procid.as_ref().map(|p| p.to_string());
    put("procid", procid.as_deref());
    put("msgid", m.msgid);
    let mut fields = Map::new();
    let mut stream = None;
    for sd in &m.structured_data {
        let mut params = Map::new();
        for (k, v) in sd.params() {
            if *k == "stream" && gossamer_schemas::event::is_valid_stream(&v) {
                stream = Some(v.to_string());
            }
            params.insert(k.to_string(), Value::String(v.to_string()));
        }
        fields.insert(sd.id.to_string(), Value::Object(params));
    }
    let stream = stream.unwrap_or_else(|| match m.appname.filter(|a| !a.is_empty() && *a != "-") {
        Some(app) => {
            let token: String = app.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
            format!("syslog.{token}")
        }
        None => "syslog".to_string(),
    });
    let mut event = json!({ "message": m.msg, "labels": labels, "fields": fields });
    if let Some(sev) = m.severity {
        // Syslog's numbers: 0-2 fatal, 3 error, 4 warn, 5-6 info, 7 debug.
        event["level"] = json!((sev as u8).to_string());
    }
    if let Some(ts) = m.timestamp {
        event["ts"] = json!(ts.timestamp_nanos_opt().unwrap_or(0));
    }
    (stream, event)
}

/// Gathers messages into per-stream batches and sends them through the ingest path.
async fn batcher(mut rx: mpsc::Receiver<String>, nats: async_nats::Client, cluster: String, stats: Arc<SyslogStats>) {
    let subjects = gossamer_schemas::subjects::Subjects::new(&cluster);
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => batch.push(m),
                _ => break,
            }
        }
        let mut by_stream: BTreeMap<String, String> = BTreeMap::new();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for text in &batch {
            let (stream, mut event) = to_event(text);
            event["id"] = json!(uuid::Uuid::now_v7().to_string());
            let body = by_stream.entry(stream.clone()).or_default();
            body.push_str(&event.to_string());
            body.push('\n');
            *counts.entry(stream).or_default() += 1;
        }
        for (stream, body) in by_stream {
            let n = counts[&stream];
            match send(&nats, subjects.ingest(&stream), body).await {
                Ok(()) => stats.stored.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    warn!(stream = %stream, events = n, error = %e, "syslog-not-stored");
                    stats.failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
    }
}

/// One ingest request, retried while the node is busy or does not answer (the events
/// carry ids, so a retry stores nothing twice), for up to a minute.
async fn send(nats: &async_nats::Client, subject: String, body: String) -> Result<(), String> {
    let body = bytes::Bytes::from(body);
    let mut last = String::new();
    for _ in 0..120 {
        let request = async_nats::Request::new().payload(body.clone()).timeout(Some(Duration::from_secs(10)));
        match nats.send_request(subject.clone(), request).await {
            Ok(reply) => {
                let v: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
                if v["accepted"].is_u64() {
                    return Ok(());
                }
                if v["busy"] != true {
                    return Err(format!("refused: {}", v["error"].as_str().unwrap_or("no reason")));
                }
                last = "busy".into();
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("gave up after a minute: {last}"))
}

#[cfg(test)]
mod tests {
    use super::to_event;

    #[test]
    fn rfc5424_with_structured_data_and_rfc3164() {
        let (stream, e) = to_event(r#"<131>1 2026-12-01T10:00:00.5Z web-1 checkout 4242 ID47 [zoo@123 tiger="hungry"][meta stream="shop.orders"] payment failed"#);
        assert_eq!(stream, "shop.orders");
        assert_eq!(e["message"], "payment failed");
        assert_eq!(e["level"], "3");
        assert_eq!(e["labels"]["facility"], "local0");
        assert_eq!(e["labels"]["appname"], "checkout");
        assert_eq!(e["labels"]["hostname"], "web-1");
        assert_eq!(e["labels"]["procid"], "4242");
        assert_eq!(e["labels"]["msgid"], "ID47");
        assert_eq!(e["fields"]["zoo@123"]["tiger"], "hungry");
        assert_eq!(e["ts"], 1_796_119_200_500_000_000i64);
        let (stream, e) = to_event("<38>Dec  1 10:00:00 host sshd[99]: Accepted publickey for root");
        assert_eq!(stream, "syslog.sshd");
        assert_eq!((e["level"].as_str(), e["labels"]["facility"].as_str()), (Some("6"), Some("auth")));
        assert_eq!(e["message"], "Accepted publickey for root");
        let (stream, e) = to_event("not syslog at all");
        assert_eq!((stream.as_str(), e["message"].as_str()), ("syslog", Some("not syslog at all")));
    }
}
