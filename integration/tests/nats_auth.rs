//! NATS credentials: against servers that ask for a user and password, a token or an
//! nkey, the node and `gossamer publish` connect with them and events are stored; a
//! node with the wrong credentials stops at once saying the server refused them.

use std::process::{Command, Stdio};
use std::time::Duration;

use gossamer_integration::{gossamer_binary, Nats, Node};

fn publish(nats: &Nats, auth: &[&str], n: usize) {
    let body: String = (0..n).map(|i| format!("{{\"message\":\"authenticated {i}\"}}\n")).collect();
    let mut child = Command::new(gossamer_binary())
        .args(["publish", "--nats", &nats.url(), "--stream", "auth"])
        .args(auth)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "publish {auth:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn nodes_and_publishers_authenticate_with_user_password_token_or_nkey() {
    let user = Nats::start_with_config("authorization { user: gossamer, password: s3cret-pass }");
    let token = Nats::start_with_config("authorization { token: a-long-nats-token }");
    let pair = nkeys::KeyPair::new_user();
    let nkey = Nats::start_with_config(&format!("authorization {{ users = [ {{ nkey: {} }} ] }}", pair.public_key()));
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, pair.seed().unwrap()).unwrap();
    let seed = seed.to_str().unwrap().to_string();

    for (nats, auth) in [
        (&user, vec!["--nats-user", "gossamer", "--nats-password", "s3cret-pass"]),
        (&token, vec!["--nats-token", "a-long-nats-token"]),
        (&nkey, vec!["--nats-nkey-file", seed.as_str()]),
    ] {
        let data = tempfile::tempdir().unwrap();
        let node = Node::start(nats, data.path(), &auth);
        publish(nats, &auth, 25);
        node.wait_count("stream:auth", 25, Duration::from_secs(30));
    }

    // Wrong credentials: the node says so and exits, without waiting for the deadline.
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(gossamer_binary())
        .args(["node", "--nats", &user.url(), "--http", "127.0.0.1:0", "--nats-user", "gossamer", "--nats-password", "wrong"])
        .arg("--data")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("refused the credentials"), "{said}");
}

#[test]
fn nodes_and_publishers_connect_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = gossamer_integration::test_certificates(dir.path());
    let nats = Nats::start_with_config(&format!("tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}"));
    let auth = ["--nats-ca", ca.as_str()];
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &auth);
    publish(&nats, &auth, 10);
    node.wait_count("stream:auth", 10, Duration::from_secs(30));

    // Without the CA the certificate is not trusted: the publisher says TLS failed.
    let out = Command::new(gossamer_binary())
        .args(["publish", "--nats", &nats.url(), "--stream", "auth", "--nats-tls"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS"), "{}", String::from_utf8_lossy(&out.stderr));
}
