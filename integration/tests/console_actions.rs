//! The web console driven in a real browser (headless Chromium through chromedriver,
//! WebDriver): search the HDFS loghub sample and check the count against the CSV and
//! the histogram, open an event, define a queue, take a backup and watch it finish,
//! and look at the streams and cluster pages; on a node with tokens, sign in through
//! the page's form (a refused token, the admin token, a reload, sign out, the read
//! token asking for a change). Screenshots of each step are saved under
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

    fn refresh(&self) {
        self.call("POST", "/refresh", Some(json!({})));
    }

    /// Whether the element `css` is laid out (not `display: none`, nor inside such).
    fn shown(&self, css: &str) -> bool {
        self.eval(&format!("const e = document.querySelector({css:?}); return e !== null && e.getClientRects().length > 0")) == json!(true)
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
    let warn = hdfs.rows.iter().filter(|r| loghub::level(r.level.as_deref()).as_deref() == Some("warn")).count();

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

    // SQL: counts by level as the CSV gives them, then a syntax error with its place.
    b.open(&format!("{}/#sql", node.http));
    b.type_into("#sql-text", "SELECT level, count(*) AS n FROM logs GROUP BY level ORDER BY n DESC, level");
    b.click("#sql-form button");
    let status = b.until("the SQL answer", "const s = document.getElementById('sql-status').textContent; return s.includes('rows') || s.includes('row in') ? s : null");
    let mut want: std::collections::BTreeMap<String, u64> = Default::default();
    for r in &hdfs.rows {
        *want.entry(loghub::level(r.level.as_deref()).unwrap_or_else(|| "NULL".into())).or_default() += 1;
    }
    assert!(status.as_str().unwrap().starts_with(&format!("{} row", want.len())), "{status}");
    let shown = b.eval("return [...document.querySelectorAll('tr.sql-row')].map((r) => [...r.children].map((c) => c.textContent))");
    let got: std::collections::BTreeMap<String, u64> =
        shown.as_array().unwrap().iter().map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().unwrap().parse().unwrap())).collect();
    assert_eq!(got, want, "{shown}");
    assert_eq!(b.eval("return [...document.querySelectorAll('#sql-head th')].map((c) => c.textContent)"), json!(["level", "n"]));
    b.shot("sql.png");
    b.type_into("#sql-text", "SELECT count(* FROM logs");
    b.click("#sql-form button");
    let error = b.until("the SQL error", "const s = document.getElementById('sql-status'); return s.className.includes('error') ? s.textContent : null");
    assert!(error.as_str().unwrap().contains("Line: 1, Column: 16"), "{error}");
    assert_eq!(b.eval("return document.querySelectorAll('tr.sql-row').length"), json!(0));
    b.shot("sql-error.png");
}

const ADMIN: &str = "admin-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

/// The page's search status line, once it reads `want`.
fn wait_status(b: &Browser, what: &str, want: &str) {
    let got = b.until(what, &format!("const s = document.getElementById('status').textContent; return s === {want:?} ? s : null"));
    assert_eq!(got, json!(want));
}

#[test]
fn on_a_node_with_tokens_the_console_signs_in_with_a_form_keeps_the_token_for_the_tab_and_signs_out() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats, data.path(), &["--admin-token", ADMIN, "--read-token", READ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(nats.client().await);
        let body = "{\"level\":\"info\",\"message\":\"user signed in\"}\n{\"level\":\"warn\",\"message\":\"slow login\"}\n{\"level\":\"error\",\"message\":\"login failed\"}\n";
        gossamer_integration::js_publish(&js, "logs.auth.web", body.as_bytes().to_vec()).await;
    });
    wait_for("the three events to be stored", Duration::from_secs(60), || {
        let r = ureq::get(&format!("{}/api/v1/count?q=", node.http)).set("Authorization", &format!("Bearer {ADMIN}")).call().ok()?;
        (r.into_json::<Value>().ok()?["count"] == 3).then_some(())
    });

    let b = Browser::start();
    // No token yet: the form, not a window.prompt (an open prompt would fail every
    // WebDriver call below with "unexpected alert open").
    b.open(&format!("{}/", node.http));
    b.until("the sign-in form", "const e = document.getElementById('signin'); return e.getClientRects().length > 0");
    assert!(!b.shown("#page-search") && !b.shown("nav") && !b.shown("#signout"), "only the form shows before signing in");
    b.shot("signin.png");

    // A wrong token: refused, with the reason, and the form stays.
    b.type_into("#token", "not-the-token-at-all-000");
    b.click("#signin-form button");
    let error = b.until("the refusal", "const t = document.getElementById('signin-error').textContent; return t.includes('refused') ? t : null");
    assert_eq!(error, json!("This token was refused: the bearer token is not valid."));
    assert!(b.shown("#signin") && !b.shown("#page-search"));
    b.shot("signin-refused.png");

    // The admin token: the calls that met the 401 are sent again and the page fills in.
    b.type_into("#token", ADMIN);
    b.click("#signin-form button");
    wait_status(&b, "the search after signing in", "3 events match; newest 3 shown.");
    assert_eq!(b.eval("return document.querySelectorAll('tr.event').length"), json!(3));
    b.until("the streams line", "const t = document.getElementById('streams').textContent; return t.includes('auth.web (3)') ? t : null");
    assert!(!b.shown("#signin") && b.shown("#signout") && b.shown("nav"));
    assert_eq!(b.eval("return [sessionStorage.getItem('gossamerToken'), localStorage.getItem('gossamerToken')]"), json!([ADMIN, null]));
    b.shot("signed-in.png");

    // A reload keeps the tab's token: no form, the data again.
    b.refresh();
    wait_status(&b, "the search after the reload", "3 events match; newest 3 shown.");
    assert!(!b.shown("#signin") && b.shown("#signout"));
    b.open(&format!("{}/#streams", node.http));
    let streams = b.until("the streams page", "const t = document.getElementById('stream-rows').textContent; return t.includes('auth.web') ? t : null");
    assert!(streams.as_str().unwrap().contains('3'), "{streams}");
    b.shot("signed-in-streams.png");

    // Sign out: the token is gone, the form is back, and nothing read stays on the page.
    b.click("#signout");
    b.until("the form again", "const e = document.getElementById('signin'); return e.getClientRects().length > 0");
    assert_eq!(b.eval("return sessionStorage.getItem('gossamerToken')"), Value::Null);
    assert_eq!(b.eval("return document.getElementById('stream-rows').textContent"), json!(""));
    assert!(!b.shown("#signout") && !b.shown("#page-streams"));
    b.shot("signed-out.png");

    // The read token reads; a change it asks for gets a clear message, not the form.
    b.type_into("#token", READ);
    b.click("#signin-form button");
    b.until("the streams page again", "return document.getElementById('stream-rows').textContent.includes('auth.web')");
    b.open(&format!("{}/#queues", node.http));
    b.until("the queues page", "return document.querySelector('#queue-rows .empty') !== null");
    b.type_into("#queue-name", "logins");
    b.type_into("#queue-filter", "stream:auth.web level:error");
    b.click("#queue-form button");
    let refused = b.until("the read token's refusal", "const s = document.getElementById('queue-status'); return s.className.includes('error') ? s.textContent : null");
    assert!(refused.as_str().unwrap().contains("read token") && refused.as_str().unwrap().contains("admin token"), "{refused}");
    assert!(!b.shown("#signin") && b.shown("#page-queues"));
    b.shot("read-token-refused.png");
    match ureq::get(&format!("{}/api/v1/queues/logins", node.http)).set("Authorization", &format!("Bearer {ADMIN}")).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("the read token defined nothing: {other:?}"),
    }
    // SQL is a read: the read token runs it.
    b.open(&format!("{}/#sql", node.http));
    b.type_into("#sql-text", "SELECT message FROM logs WHERE level = 'error'");
    b.click("#sql-form button");
    b.until("the SQL answer", "return document.getElementById('sql-status').textContent.startsWith('1 row in')");
    assert_eq!(b.eval("return document.querySelector('tr.sql-row').textContent"), json!("login failed"));
}
