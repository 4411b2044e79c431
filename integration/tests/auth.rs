//! Bearer tokens on the REST API: without one every `/api` route and `/metrics` answer
//! 401, a read token reads but changes nothing (403), the admin token does both; the
//! tokens never reach the log; bodies over the limit get 413.

use gossamer_integration::{Nats, Node};
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

fn call(node: &Node, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let mut req = ureq::request(method, &format!("{}{path}", node.http));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let result = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

#[test]
fn tokens_guard_every_route_and_bodies_are_limited() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let token_file = data.path().join("admin.token");
    std::fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    let node = Node::start(&nats, &data.path().join("node"), &["--admin-token-file", token_file.to_str().unwrap(), "--read-token", READ]);

    let reads = [
        ("GET", "/api/v1/health", None),
        ("GET", "/api/v1/count?q=", None),
        ("GET", "/api/v1/search?q=x", None),
        ("GET", "/api/v1/streams", None),
        ("GET", "/api/v1/index", None),
        ("POST", "/api/v1/query", Some(r#"{"q":"","count":true}"#)),
        ("POST", "/api/v1/sql", Some(r#"{"sql":"SELECT count(*) AS n FROM logs"}"#)),
    ];
    let changes = [
        ("DELETE", "/api/v1/events/0190a0a0-0000-7000-8000-000000000000", None),
        ("POST", "/api/v1/delete", Some(r#"{"q":"stream:nothing.here"}"#)),
        ("PUT", "/api/v1/streams/app/retention", Some(r#"{"max_age":"7d"}"#)),
        ("POST", "/api/v1/admin/reindex", Some("{}")),
    ];
    for (method, path, body) in reads.iter().chain(changes.iter()) {
        for token in [None, Some("not-the-token-at-all-000")] {
            let (status, answer) = call(&node, method, path, token, *body);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert!(answer["error"].as_str().is_some_and(|e| e.contains("token")), "{answer}");
        }
    }
    for (method, path, body) in reads {
        let (status, answer) = call(&node, method, path, Some(READ), body);
        assert_eq!(status, 200, "{method} {path} with the read token: {answer}");
    }
    for (method, path, body) in changes {
        let (status, answer) = call(&node, method, path, Some(READ), body);
        assert_eq!(status, 403, "{method} {path} with the read token: {answer}");
        let (status, answer) = call(&node, method, path, Some(ADMIN), body);
        assert!(status == 200 || status == 202 || status == 404, "{method} {path} with the admin token: {status} {answer}");
    }
    // The Loki door as Grafana's data source calls it: basic auth, the read token as
    // the password; its queries may be POST forms; a push needs the admin token.
    use base64::Engine;
    let basic = |t: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("grafana:{t}")));
    let health = format!("{}/loki/api/v1/query?query=vector(1)%2Bvector(1)&time=4000000000", node.http);
    assert_eq!(ureq::get(&health).call().unwrap_err().into_response().unwrap().status(), 401);
    let answer: Value = ureq::get(&health).set("Authorization", &basic(READ)).call().unwrap().into_json().unwrap();
    assert_eq!(answer["data"]["result"][0]["value"][1], "2");
    let form = ureq::post(&format!("{}/loki/api/v1/query_range", node.http))
        .set("Authorization", &basic(READ))
        .send_form(&[("query", "sum(count_over_time({app=\"x\"}[1m]))"), ("step", "60")])
        .unwrap();
    assert_eq!(form.status(), 200);
    let push = r#"{"streams":[{"stream":{"app":"x"},"values":[["1780000000000000000","a line"]]}]}"#;
    let refused = ureq::post(&format!("{}/loki/api/v1/push", node.http)).set("Authorization", &basic(READ)).set("Content-Type", "application/json").send_string(push);
    assert_eq!(refused.unwrap_err().into_response().unwrap().status(), 403);
    let pushed = ureq::post(&format!("{}/loki/api/v1/push", node.http)).set("Authorization", &basic(ADMIN)).set("Content-Type", "application/json").send_string(push);
    assert_eq!(pushed.unwrap().status(), 204);

    // /metrics is a read; the console page itself is open (it asks for a token).
    assert_eq!(ureq::get(&format!("{}/metrics", node.http)).call().unwrap_err().into_response().unwrap().status(), 401);
    let metrics = ureq::get(&format!("{}/metrics", node.http)).set("Authorization", &format!("Bearer {READ}")).call().unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(ureq::get(&format!("{}/", node.http)).call().unwrap().status(), 200);

    // A body over the 1 MiB limit: 413 with a JSON error, and nothing else breaks.
    let big = format!(r#"{{"q":"{}"}}"#, "a".repeat(2 << 20));
    let (status, answer) = call(&node, "POST", "/api/v1/query", Some(READ), Some(&big));
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("limit"), "{answer}");
    assert_eq!(call(&node, "GET", "/api/v1/health", Some(READ), None).0, 200);

    // The CLI takes the token from GOSSAMER_TOKEN.
    let cli = |token: Option<&str>| {
        let mut c = std::process::Command::new(gossamer_integration::gossamer_binary());
        c.args(["query", "--count", "--server", &node.http, ""]);
        if let Some(t) = token {
            c.env("GOSSAMER_TOKEN", t);
        }
        c.output().unwrap()
    };
    let out = cli(None);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
    let out = cli(Some(READ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "the one line the admin token pushed");

    let log = node.log();
    assert!(!log.contains(ADMIN) && !log.contains(READ), "a token reached the log");
}

#[test]
fn a_weak_token_or_a_read_token_alone_is_refused_at_start() {
    let out = std::process::Command::new(gossamer_integration::gossamer_binary())
        .args(["node", "--nats", "nats://127.0.0.1:1", "--admin-token", "short"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 characters"), "{out:?}");
    let out = std::process::Command::new(gossamer_integration::gossamer_binary())
        .args(["node", "--nats", "nats://127.0.0.1:1", "--read-token", READ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin token"), "{out:?}");
}

/// Every route in the node's OpenAPI document answers 401 without a token, and every
/// route that changes something answers 403 to the read token.
#[test]
fn every_documented_route_is_guarded() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, &data.path().join("node"), &["--admin-token", ADMIN, "--read-token", READ]);
    let (status, doc) = call(&node, "GET", "/api/v1/openapi.json", Some(READ), None);
    assert_eq!(status, 200, "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "the document lists the routes: {}", paths.len());
    let mut checked = 0;
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "0190a0a0-0000-7000-8000-000000000000")
            .replace("{name}", "guarded");
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let body = (method != "GET" && method != "DELETE").then_some("{}");
            let (status, answer) = call(&node, &method, &concrete, None, body);
            if path == "/" {
                assert_eq!(status, 200, "the console page is open");
                continue;
            }
            assert_eq!(status, 401, "{method} {path} without a token: {answer}");
            // Searches and SQL come as POST bodies but read.
            let changes = method != "GET" && path != "/api/v1/query" && path != "/api/v1/sql";
            if changes {
                let (status, answer) = call(&node, &method, &concrete, Some(READ), body);
                assert_eq!(status, 403, "{method} {path} with the read token: {answer}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 28, "{checked} routes checked");
}

/// With a certificate and key the API and console are served over HTTPS only, tokens
/// and all.
#[test]
fn the_api_is_served_over_https_when_given_a_certificate() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let (ca, cert, key) = gossamer_integration::test_certificates(data.path());
    let node = Node::start(&nats, &data.path().join("node"), &["--tls-cert", &cert, "--tls-key", &key, "--admin-token", ADMIN]);
    assert!(node.http.starts_with("https://127.0.0.1:"), "{}", node.http);

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(&ca).unwrap()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let agent = ureq::AgentBuilder::new().tls_config(std::sync::Arc::new(tls)).build();
    let health: Value = agent
        .get(&format!("{}/api/v1/health", node.http))
        .set("Authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    match agent.get(&format!("{}/api/v1/health", node.http)).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("no token over HTTPS: {other:?}"),
    }
    let console = agent.get(&format!("{}/", node.http)).call().unwrap().into_string().unwrap();
    assert!(console.contains("<title>Gossamer</title>"));
    // Plain HTTP on the same port gets no API.
    let plain = node.http.replace("https://", "http://");
    assert!(ureq::get(&format!("{plain}/api/v1/health")).call().is_err(), "plain HTTP must not be served");
}
