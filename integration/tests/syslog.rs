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
