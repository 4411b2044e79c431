//! The test sandbox: a real nats-server per test on a free port with temporary
//! storage, and real `gossamer` node processes against it. Everything is killed and
//! cleaned up on drop; waits are predicates with deadlines, never bare sleeps.

pub mod loghub;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The nats-server binary: `$GOSSAMER_NATS_SERVER`, PATH, or Debian's /usr/sbin.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GOSSAMER_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].iter().map(PathBuf::from))
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server not found: install it (apt-get install -y nats-server); the test command does")
}

/// The `gossamer` binary built beside this test (`cargo build --workspace --tests --bins`), or
/// `$GOSSAMER_BIN`.
pub fn gossamer_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GOSSAMER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/gossamer
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("gossamer")).expect("target directory");
    assert!(bin.is_file(), "{} is missing: run `cargo build --workspace --tests --bins` first (the test command does)", bin.display());
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A nats-server with JetStream on a free loopback port and storage in a temporary
/// directory.
pub struct Nats {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The server's config file (`-c`): JetStream's storage limit, and what a test adds.
    config: PathBuf,
}

/// JetStream reserves every stream's byte cap out of its storage limit, which is 75% of
/// the disk's free space at start unless set: a fixed limit keeps the tests (which write
/// megabytes) from failing to create streams on a machine whose disk is fuller. A test
/// whose config has a top-level `jetstream` block gets its own.
const TEST_JETSTREAM: &str = "jetstream { max_file_store: 64GB }\n";

/// Writes `dir/server.conf`: the tests' JetStream limit and `extra`.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("server.conf");
    let limit = if extra.lines().any(|l| l.starts_with("jetstream")) { "" } else { TEST_JETSTREAM };
    std::fs::write(&path, format!("{limit}{extra}\n")).unwrap();
    path
}

impl Nats {
    /// A nats-server on a free port; started again on another port when it exits at
    /// start (the port taken by another test between choosing and binding it).
    pub fn start() -> Self {
        for _ in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let path = write_config(dir.path(), "");
            let child = Self::spawn_server(dir.path(), port, &path);
            let mut nats = Self { child, port, dir, config: path };
            if nats.try_wait_listening().is_ok() {
                return nats;
            }
        }
        Self::start_in(tempfile::tempdir().unwrap())
    }

    fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_on(dir, free_port())
    }

    /// A nats-server on a given port (for a node that was started before it).
    pub fn start_on_port(port: u16) -> Self {
        Self::start_on(tempfile::tempdir().unwrap(), port)
    }

    /// A nats-server with `config` (the text of a server config file) on top of the usual
    /// flags: e.g. `authorization { user: a, password: b }`.
    pub fn start_with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), config);
        let port = free_port();
        let child = Self::spawn_server(dir.path(), port, &path);
        let mut nats = Self { child, port, dir, config: path };
        nats.wait_listening();
        nats
    }

    fn spawn_server(dir: &Path, port: u16, config: &Path) -> Child {
        let mut cmd = Command::new(nats_server_binary());
        cmd.arg("-c").arg(config);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .arg("-l")
            .arg(dir.join("nats.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting nats-server")
    }

    fn start_on(dir: tempfile::TempDir, port: u16) -> Self {
        let path = write_config(dir.path(), "");
        let child = Self::spawn_server(dir.path(), port, &path);
        let mut nats = Self { child, port, dir, config: path };
        nats.wait_listening();
        nats
    }

    fn wait_listening(&mut self) {
        if let Err(e) = self.try_wait_listening() {
            panic!("{e}");
        }
    }

    /// Waits until the server listens; `Err` when it exits first (a port of its taken
    /// meanwhile by another test's process, say).
    fn try_wait_listening(&mut self) -> Result<(), String> {
        let port = self.port;
        let mut exited = None;
        wait_for("nats-server to listen", Duration::from_secs(20), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return Some(());
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        match exited {
            Some(status) => Err(format!("nats-server exited: {status}")),
            None => Ok(()),
        }
    }

    /// Stops nats-server cleanly (SIGTERM, so JetStream writes out what it acked) and
    /// starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        wait_for("the port to be free", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err().then_some(())
        });
        self.child = Self::spawn_server(self.dir.path(), self.port, &self.config);
        self.wait_listening();
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("connecting to the test nats-server")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three nats-servers in one NATS cluster (routes between them), JetStream on each,
/// each on its own free loopback port with its own storage.
pub struct NatsCluster {
    pub servers: Vec<Nats>,
}

impl NatsCluster {
    /// Starts the servers; when one exits at start (a free port taken by another test
    /// between choosing it and binding it), starts all of them again on new ports.
    pub fn start(n: usize) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(n) {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!("the NATS cluster did not start in 5 attempts: {last}");
    }

    fn try_start(n: usize) -> Result<Self, String> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let servers = (0..n)
            .map(|i| {
                let dir = tempfile::tempdir().unwrap();
                let routes: Vec<String> =
                    ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, (_, r))| format!("nats-route://127.0.0.1:{r}")).collect();
                let config = format!(
                    // JetStream and its storage come from the usual flags.
                    "server_name: s{i}\ncluster {{\n  name: gossamer-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    ports[i].1,
                    routes.join(", ")
                );
                let path = write_config(dir.path(), &config);
                let child = Nats::spawn_server(dir.path(), ports[i].0, &path);
                let mut nats = Nats { child, port: ports[i].0, dir, config: path };
                nats.try_wait_listening()?;
                Ok(nats)
            })
            .collect::<Result<Vec<Nats>, String>>()?;
        Ok(Self { servers })
    }

    /// Every server's URL, comma-separated (what a client is given).
    pub fn urls(&self) -> String {
        self.servers.iter().map(Nats::url).collect::<Vec<_>>().join(",")
    }

    pub async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self.servers.iter().map(|s| s.url().parse().unwrap()).collect();
        async_nats::connect(addrs).await.expect("connecting to the NATS cluster")
    }

    /// Waits until JetStream has a leader and can place a stream of `replicas` copies.
    pub async fn wait_jetstream(&self, replicas: usize) {
        let client = self.client().await;
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let made = js
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: "PROBE".into(),
                    subjects: vec!["probe.jetstream".into()],
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await;
            if made.is_ok() {
                let _ = js.delete_stream("PROBE").await;
                return;
            }
            assert!(Instant::now() < deadline, "JetStream on the NATS cluster did not get ready: {made:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A port nobody listens on now.
pub fn unused_port() -> u16 {
    free_port()
}

/// A `gossamer node` process.
pub struct Node {
    child: Option<Child>,
    pub http: String,
    pub data: PathBuf,
    nats: String,
    args: Vec<String>,
    /// Environment variables set on the node's process (fault switches).
    pub env: Vec<(String, String)>,
}

/// Fast gossip for cluster tests, so failures are seen within a second or two.
pub const PROBE_MS: &str = "200";
pub const SUSPECT_MS: &str = "1000";

/// Starts one node per name against `url` (fast gossip, then `extra`) and waits until
/// each sees all of them.
pub fn start_cluster(url: &str, dirs: &[tempfile::TempDir], names: &[&str], extra: &[&str]) -> Vec<Node> {
    let nodes: Vec<Node> = names.iter().zip(dirs).map(|(id, d)| Node::start_member(url, d.path(), id, extra)).collect();
    for n in &nodes {
        n.wait_members(names, Duration::from_secs(30));
    }
    nodes
}

impl Node {
    /// Starts the cluster member `id` with fast gossip (`extra` may set its own
    /// `--gossip-suspect-ms`).
    pub fn start_member(url: &str, dir: &Path, id: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--node-id", id, "--gossip-probe-ms", PROBE_MS];
        if !extra.contains(&"--gossip-suspect-ms") {
            args.extend(["--gossip-suspect-ms", SUSPECT_MS]);
        }
        args.extend_from_slice(extra);
        Node::start_with_url(url, dir, &args)
    }

    /// Starts a node with `data` as its data directory and waits until its API listens.
    pub fn start(nats: &Nats, data: &Path, args: &[&str]) -> Self {
        Self::start_with_url(&nats.url(), data, args)
    }

    /// The same against a NATS URL (whose server may not be up yet).
    pub fn start_with_url(url: &str, data: &Path, args: &[&str]) -> Self {
        Self::start_with_env(url, data, args, &[])
    }

    /// The same with environment variables set on the node's process.
    pub fn start_with_env(url: &str, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut node = Self {
            child: None,
            http: String::new(),
            data: data.to_path_buf(),
            nats: url.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        node.spawn();
        node
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("node.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data.join("node.log")).unwrap();
        let mut child = Command::new(gossamer_binary())
            .args(["node", "--nats", &self.nats, "--http", "127.0.0.1:0", "--shards", "8"])
            .arg("--data")
            .arg(&self.data)
            .args(&self.args)
            .env("GOSSAMER_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting gossamer node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("console: ").nth(1) {
                    let _ = tx.send(rest.trim().trim_end_matches('/').to_string());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let log = std::fs::read_to_string(self.data.join("node.log")).unwrap_or_default();
            panic!("the node did not report its HTTP address; its log:\n{log}")
        });
        self.http = addr;
        self.child = Some(child);
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the node's process ends by itself (a crash a fault switch asked
    /// for); its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("node running");
        let status = wait_for("the node to exit", timeout, || c.try_wait().unwrap());
        self.child = None;
        status
    }

    /// Starts the same node again (after [`Node::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The running node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to the running node.
    pub fn signal(&self, signal: i32) {
        let c = self.child.as_ref().expect("node running");
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(c.id() as i32, signal);
        }
    }

    /// `GET /api/v1/cluster`.
    pub fn cluster(&self) -> Value {
        let (status, body) = self.get("/api/v1/cluster");
        assert_eq!(status, 200, "cluster: {body}");
        body
    }

    /// This node's view of `member`: its row in `GET /api/v1/cluster`.
    pub fn member(&self, member: &str) -> Option<Value> {
        self.cluster()["members"].as_array()?.iter().find(|m| m["node"] == member).cloned()
    }

    /// The replicas of each shard in this node's shard map.
    pub fn shard_map(&self) -> Vec<Vec<String>> {
        self.cluster()["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["replicas"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect())
            .collect()
    }

    /// Waits until this node sees exactly `alive` as its live members.
    pub fn wait_members(&self, alive: &[&str], timeout: Duration) {
        let mut want: Vec<String> = alive.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_for(&format!("{} to see members {want:?}", self.http), timeout, || {
            let c = self.cluster();
            let mut live: Vec<String> = c["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["state"] == "alive")
                .map(|m| m["node"].as_str().unwrap().to_string())
                .collect();
            live.sort();
            (live == want).then_some(())
        });
    }

    /// True when every shard this node holds has caught up with the log.
    pub fn caught_up(&self) -> bool {
        self.cluster()["shards"].as_array().unwrap().iter().filter(|s| s["here"] == true).all(|s| s["caught_up"] == true)
    }

    /// SIGTERM, and the exit status.
    /// Starts the node again after [`Node::terminate`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the node is still running");
        self.spawn();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().unwrap()
    }

    pub fn get(&self, path_and_query: &str) -> (u16, Value) {
        http_get(&format!("{}{path_and_query}", self.http))
    }

    /// `GET /api/v1/count?q=...`, asserting success.
    pub fn count(&self, q: &str) -> u64 {
        let (status, body) = self.get(&format!("/api/v1/count?q={}", enc(q)));
        assert_eq!(status, 200, "count {q:?}: {body}");
        body["count"].as_u64().unwrap()
    }

    /// The ids of every event matching `q`, paging through the search with its cursor
    /// (newest first, repeats kept so a test can see duplicates).
    pub fn all_ids(&self, q: &str) -> Vec<uuid::Uuid> {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, body) = self.get(&format!("/api/v1/search?q={}&limit=10000&cursor={}", enc(q), enc(&cursor)));
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["partial"], false, "{}: the search for {q:?} lacks shards {}", self.http, body["missing_shards"]);
            for e in body["events"].as_array().unwrap() {
                seen.push(uuid::Uuid::parse_str(e["id"].as_str().unwrap()).unwrap());
            }
            match body["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return seen,
            }
        }
    }

    /// Waits until `count(q)` is `want`; panics showing the last count otherwise.
    pub fn wait_count(&self, q: &str, want: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.count(q);
            if last == want {
                return;
            }
            assert!(Instant::now() < deadline, "count {q:?} is {last}, want {want} (after {timeout:?})");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // What a failed test needs to be understood from its output alone.
            let log = strip_colours(&self.log());
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!("---- the last {} lines of the log of the node at {} ----\n{}", tail.len(), self.http, tail.join("\n"));
        }
    }
}

/// Lines of each node's log a failing test prints.
const LOG_TAIL: usize = 80;

/// `text` without its terminal colour codes (`ESC [ ... m`).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Percent-encodes a query-string value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// GET returning the status and the JSON body (errors included).
pub fn http_get(url: &str) -> (u16, Value) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// POST a raw body with a content type, returning the status and the JSON body.
pub fn http_post(url: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    match ureq::post(url).set("Content-Type", content_type).send_bytes(body) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

pub fn http_delete(url: &str) -> (u16, Value) {
    match ureq::delete(url).call() {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("DELETE {url}: {e}"),
    }
}

/// Publishes `body` to `subject` with JetStream and waits for the bus's ack.
pub async fn js_publish(js: &async_nats::jetstream::Context, subject: &str, body: Vec<u8>) {
    js.publish(subject.to_string(), body.into()).await.expect("publish").await.expect("JetStream ack");
}

/// A private CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`:
/// (CA, certificate, key) paths.
pub fn test_certificates(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_string()
    };
    (write("ca.pem", ca.pem()), write("server.pem", cert.pem()), write("server-key.pem", key.serialize_pem()))
}

/// The Python of `target/pyvenv` (made by `./test.sh`, with nats-py and the protocol
/// clients), or `$GOSSAMER_TEST_PYTHON`.
pub fn python() -> String {
    std::env::var("GOSSAMER_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyvenv/bin/python");
        assert!(venv.exists(), "no Python with nats-py: run the tests through ./test.sh (it makes target/pyvenv)");
        venv.to_string_lossy().into_owned()
    })
}

/// Starts the nats-py queue subscriber (`python/queue_subscriber.py`) on the durable
/// consumer `consumer` of NOTIFY through the server at `url`; its JSON report comes
/// from [`subscriber_report`].
pub fn queue_subscriber(url: &str, consumer: &str, args: &[&str]) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/queue_subscriber.py");
    Command::new(python())
        .arg(script)
        .args(["--url", url, "--stream", "NOTIFY", "--consumer", consumer])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the Python subscriber")
}

/// What the queue subscriber saw: `acked` (event id -> delivery count), `naked`,
/// `repeats`, `deliveries`.
pub fn subscriber_report(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the subscriber failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}
