//! The web console driven in a real browser (headless Chromium through chromedriver,
//! WebDriver): search the HDFS loghub sample and check the count against the CSV and
//! the histogram, open an event, define a queue, take a backup and watch it finish,
//! and look at the streams and cluster pages. Screenshots of each step are saved under
//! `target/tmp/console-actions/` for review.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gossamer_integration::loghub::{self, event_json};
use gossamer_integration::{unused_port, wait_for, Nats, Node};
use serde_json::{json, Value};

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    shots: PathBuf,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Self {
        let port = unused_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: apt-get install -y chromium-driver (the test command does)");
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to listen", Duration::from_secs(20), || ureq::get(&format!("{base}/status")).call().ok());
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage", "--window-size=1280,900"]
        }}}});
        let answer: Value = ureq::post(&format!("{base}/session")).send_json(caps).expect("a browser session").into_json().unwrap();
        let session = answer["value"]["sessionId"].as_str().expect("a session id").to_string();
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-actions");
        std::fs::create_dir_all(&shots).unwrap();
        Self { driver, base, session, shots }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = ureq::request(method, &url);
        let r = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match r {
            Ok(r) => r.into_json::<Value>().unwrap()["value"].clone(),
            Err(ureq::Error::Status(code, r)) => panic!("WebDriver {method} {path}: {code} {}", r.into_string().unwrap_or_default()),
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}")).to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.call("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })));
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    /// Runs `script` (a function body returning a value) in the page.
    fn eval(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Waits until `script` returns something other than null, false or "".
    fn until(&self, what: &str, script: &str) -> Value {
        wait_for(what, Duration::from_secs(30), || {
            let v = self.eval(script);
            (!(v.is_null() || v == json!(false) || v == json!(""))).then_some(v)
        })
    }

    fn shot(&self, name: &str) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(self.shots.join(name), bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn an_operator_searches_opens_an_event_defines_a_queue_and_takes_a_backup_in_the_console() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &[]);
    let datasets = loghub::load();
    let hdfs = datasets.iter().find(|d| d.name == "hdfs").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(nats.client().await);
        for chunk in hdfs.rows.chunks(500) {
            let body: String = chunk.iter().map(|r| format!("{}\n", event_json(hdfs, r))).collect();
            gossamer_integration::js_publish(&js, "logs.loghub.hdfs", body.into_bytes()).await;
        }
    });
    node.wait_count("", hdfs.rows.len() as u64, Duration::from_secs(60));
    let warn = hdfs.rows.iter().filter(|r| loghub::level(r.level.as_deref()) == "warn").count();

    let b = Browser::start();
    // Search: the count the CSV gives, a histogram, and an event that opens.
    b.open(&format!("{}/", node.http));
    b.type_into("#q", "level:warn");
    b.click("#search button");
    let status = b.until("the search to finish", &format!("const s = document.getElementById('status').textContent; return s.startsWith('{warn} events') ? s : null"));
    assert_eq!(status, json!(format!("{warn} events match; newest {} shown.", warn.min(100))));
    b.until("the histogram", "return document.querySelectorAll('#histogram rect').length > 0");
    b.click("tr.event");
    let detail = b.until("the event to open", "const d = document.querySelector('tr.detail'); return d ? d.textContent : null");
    let opened: Value = serde_json::from_str(detail.as_str().unwrap()).unwrap();
    assert_eq!(opened["level"], "warn", "{opened}");
    b.shot("search.png");

    // Define a queue and see it listed with its figures.
    b.open(&format!("{}/#queues", node.http));
    b.until("the queues page", "return document.querySelector('#queue-rows .empty') !== null");
    b.shot("queues-empty.png");
    b.type_into("#queue-name", "hdfs-errors");
    b.type_into("#queue-filter", "stream:loghub.hdfs level:error");
    b.type_into("#queue-max", "3");
    b.click("#queue-form button");
    let listed = b.until("the queue to be listed", "const r = document.querySelector('tr.queue'); return r ? r.textContent : null");
    assert!(listed.as_str().unwrap().starts_with("hdfs-errors"), "{listed}");
    let (_, q) = node.get("/api/v1/queues/hdfs-errors");
    assert_eq!((q["filter"].as_str(), q["max_deliver"].as_i64()), (Some("stream:loghub.hdfs level:error"), Some(3)), "{q}");
    // A bad filter shows the API's error, with the column.
    b.type_into("#queue-name", "bad");
    b.type_into("#queue-filter", "level:error x:>y");
    b.click("#queue-form button");
    let error = b.until("the error", "const s = document.getElementById('queue-status'); return s.className.includes('error') ? s.textContent : null");
    assert!(error.as_str().unwrap().contains("column"), "{error}");
    b.shot("queues.png");

    // Take a backup and watch it finish.
    b.open(&format!("{}/#backups", node.http));
    b.until("the backups page", "return document.querySelector('#backup-rows .empty') !== null");
    b.click("#backup-create");
    b.until("the backup to finish", "return document.getElementById('job').textContent.endsWith(': done')");
    let row = b.until("the backup to be listed", "const r = document.querySelector('tr.backup'); return r ? r.textContent : null");
    let (_, list) = node.get("/api/v1/backups");
    let made = &list["backups"][0];
    assert!(row.as_str().unwrap().starts_with(made["id"].as_str().unwrap()), "{row} / {list}");
    assert_eq!(made["events"].as_u64(), Some(hdfs.rows.len() as u64));
    b.shot("backups.png");

    // Streams and the cluster's shards.
    b.open(&format!("{}/#streams", node.http));
    let streams = b.until("the streams", "const t = document.getElementById('stream-rows').textContent; return t.includes('loghub.hdfs') ? t : null");
    assert!(streams.as_str().unwrap().contains(&hdfs.rows.len().to_string()), "{streams}");
    b.shot("streams.png");
    b.open(&format!("{}/#cluster", node.http));
    let shards = b.until("the shards", "const n = document.querySelectorAll('tr.shard').length; return n > 0 ? n : null");
    assert_eq!(shards, json!(8));
    b.shot("cluster.png");
}
