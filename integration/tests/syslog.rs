//! The syslog door with util-linux `logger` as the sender: RFC 5424 and RFC 3164, over
//! UDP and over TCP with LF framing and with RFC 6587 octet counting. Each message is
//! stored with its level, labels, structured data and stream.

use std::process::Command;
use std::time::Duration;

use gossamer_integration::{Nats, Node};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn logger(args: &[&str], message: &str) {
    let out = Command::new("logger").args(args).arg(message).output().expect("util-linux logger");
    assert!(out.status.success(), "logger {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn logger_sends_both_rfcs_over_udp_and_tcp_and_each_is_stored_as_it_means() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let (udp, tcp) = (free_port(), free_port());
    let (udp_addr, tcp_addr) = (format!("127.0.0.1:{udp}"), format!("127.0.0.1:{tcp}"));
    let node = Node::start(&nats, data.path(), &["--syslog-udp", &udp_addr, "--syslog-tcp", &tcp_addr]);
    let (udp, tcp) = (udp.to_string(), tcp.to_string());
    let to = |proto: &'static str, port: &str| -> Vec<String> { vec!["-n".into(), "127.0.0.1".into(), "-P".into(), port.to_string(), proto.into()] };
    let run = |base: Vec<String>, extra: &[&str], msg: &str| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        logger(&args, msg);
    };
    // UDP, RFC 5424 with structured data; UDP, RFC 3164.
    run(to("-d", &udp), &["--rfc5424", "-t", "checkout", "-p", "local0.err", "--sd-id", "zoo@123", "--sd-param", "tiger=\"hungry\""], "payment failed over udp");
    run(to("-d", &udp), &["--rfc3164", "-t", "sshd", "-p", "auth.info"], "Accepted publickey over udp");
    // TCP, LF framing (RFC 3164) and octet counting (RFC 5424).
    run(to("-T", &tcp), &["--rfc3164", "-t", "cron", "-p", "cron.warning"], "job late over tcp");
    run(to("-T", &tcp), &["--rfc5424", "--octet-count", "-t", "checkout", "-p", "local0.crit"], "disk full over tcp counted");
    for i in 0..20 {
        run(to("-T", &tcp), &["--rfc5424", "--octet-count", "-t", "batch", "-p", "user.notice"], &format!("line {i} of a batch"));
    }
    node.wait_count("", 24, Duration::from_secs(30));

    assert_eq!(node.count("stream:syslog.checkout"), 2);
    assert_eq!(node.count("stream:syslog.checkout level:error labels.facility:local0 \"payment failed\""), 1);
    assert_eq!(node.count("stream:syslog.checkout level:fatal \"disk full\""), 1);
    assert_eq!(node.count("fields.zoo@123.tiger:hungry"), 1);
    assert_eq!(node.count("stream:syslog.sshd level:info labels.facility:auth appname:sshd"), 1);
    assert_eq!(node.count("stream:syslog.cron level:warn \"job late over tcp\""), 1);
    assert_eq!(node.count("stream:syslog.batch level:info batch"), 20);
    let metrics = ureq::get(&format!("{}/metrics", node.http)).call().unwrap().into_string().unwrap();
    assert!(metrics.contains("gossamer_syslog_stored_total{node=\"node-1\"} 24"), "{metrics}");
    assert!(metrics.contains("gossamer_syslog_udp_dropped_total{node=\"node-1\"} 0"), "{metrics}");
}

/// Debian's rsyslog reads a file (imfile) and ships each line twice: to the syslog
/// door with `omfwd` (TCP, octet counting) and to the Elasticsearch door with
/// `omelasticsearch` (bulk mode). Every line arrives through both.
#[test]
fn rsyslog_forwards_a_file_with_omfwd_and_omelasticsearch() {
    let Some(rsyslogd) = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"].into_iter().find(|p| std::path::Path::new(p).exists()) else {
        panic!("rsyslogd is missing: test.sh installs Debian's rsyslog and rsyslog-elasticsearch");
    };
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let tcp = free_port();
    let node = Node::start(&nats, &data.path().join("node"), &["--syslog-tcp", &format!("127.0.0.1:{tcp}")]);
    let http_port = node.http.rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    let dir = data.path().join("rsyslog");
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let log = dir.join("app.log");
    let lines: Vec<String> = (0..50).map(|i| format!("order {i} shipped to warehouse {}", i % 3)).collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}")
module(load="imfile")
module(load="omelasticsearch")
template(name="es" type="list") {{
  constant(value="{{\"@timestamp\":\"") property(name="timereported" dateFormat="rfc3339")
  constant(value="\",\"message\":\"") property(name="msg" format="json")
  constant(value="\",\"level\":\"") property(name="syslogseverity-text")
  constant(value="\"}}")
}}
ruleset(name="ship") {{
  action(type="omfwd" target="127.0.0.1" port="{tcp}" protocol="tcp" TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
  action(type="omelasticsearch" server="127.0.0.1" serverport="{http_port}" template="es" searchIndex="rsyslog-app"
         bulkmode="on" esVersion.major="8" errorFile="{errors}")
}}
input(type="imfile" File="{log}" Tag="shipper" Severity="warning" Facility="local3" ruleset="ship")
"#,
            work = dir.join("work").display(),
            errors = dir.join("es-errors.json").display(),
            log = log.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(rsyslogd)
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        node.wait_count("stream:syslog.shipper", 50, Duration::from_secs(60));
        node.wait_count("stream:rsyslog-app", 50, Duration::from_secs(60));
    }));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    if stored.is_err() {
        panic!(
            "rsyslog did not ship every line; its stderr: {}; its ES errors: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("es-errors.json")).unwrap_or_default()
        );
    }
    assert_eq!(node.count("stream:syslog.shipper level:warn labels.facility:local3 shipped"), 50);
    assert_eq!(node.count("stream:rsyslog-app level:warn warehouse"), 50);
    assert_eq!(node.count("stream:rsyslog-app \"order 7 shipped\""), 1);
}
