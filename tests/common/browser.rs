//! Headless Chromium driven over the DevTools protocol: open a page, wait for it to load,
//! read its DOM with a script, collect console errors and failed loads, take a screenshot.
//! Synchronous (a WebSocket on a std TcpStream): call it from `spawn_blocking`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long one page may take to load, or one protocol call to answer.
const PAGE_DEADLINE: Duration = Duration::from_secs(20);

/// The Chromium binary, if installed.
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Protocol events received while waiting for something else.
    events: Vec<Value>,
}

/// What went wrong on a page, as the console and the network saw it.
#[derive(Debug, Default)]
pub struct Problems {
    pub console_errors: Vec<String>,
}

impl Browser {
    /// Starts `binary` headless with a fresh profile and attaches to its first tab.
    pub fn launch(binary: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("stderr");
        // Chromium prints its DevTools address on stderr; the rest of stderr is drained so
        // that it never blocks on a full pipe.
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = found.take() {
                        let _ = tx.send(url.trim().to_string());
                    }
                }
            }
        });
        let browser_url = address
            .recv_timeout(PAGE_DEADLINE)
            .expect("Chromium printed its DevTools address");
        let port = browser_url
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("a port in the DevTools address")
            .to_string();
        let page_url = first_page_target(&port);
        let (ws, _) = tungstenite::connect(page_url.as_str()).expect("connect to the page");
        if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .expect("read timeout");
        }
        let mut browser = Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
            events: Vec::new(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}));
        }
        browser
    }

    /// Sends one command and waits for its answer (events meanwhile are kept).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(Message::text(message))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let started = Instant::now();
        loop {
            if let Some(message) = self.read() {
                if message["id"].as_u64() == Some(id) {
                    if let Some(error) = message.get("error") {
                        panic!("{method} failed: {error}");
                    }
                    return message["result"].clone();
                }
                self.events.push(message);
            }
            assert!(
                started.elapsed() < PAGE_DEADLINE,
                "{method}: no answer within {PAGE_DEADLINE:?}"
            );
        }
    }

    fn read(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(Message::Text(text)) => serde_json::from_str(text.as_str()).ok(),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("the DevTools connection failed: {e}"),
        }
    }

    /// Sets the viewport (CSS pixels).
    pub fn viewport(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
        );
    }

    /// Opens `url` and waits for its load event; returns the console errors, uncaught
    /// exceptions and failed loads reported until then.
    pub fn open(&mut self, url: &str) -> Problems {
        self.events.clear();
        self.call("Page.navigate", json!({ "url": url }));
        let started = Instant::now();
        while !self
            .events
            .iter()
            .any(|e| e["method"] == "Page.loadEventFired")
        {
            if let Some(message) = self.read() {
                self.events.push(message);
            }
            assert!(
                started.elapsed() < PAGE_DEADLINE,
                "{url} did not load within {PAGE_DEADLINE:?}"
            );
        }
        self.problems()
    }

    /// Polls `expression` until it is true (panics after the deadline).
    pub fn wait_for(&mut self, expression: &str) {
        let held = deploylite_testkit::wait::try_until_blocking(PAGE_DEADLINE, || {
            (self.evaluate(expression) == Value::Bool(true)).then_some(())
        });
        if let Err(timed_out) = held {
            panic!("`{expression}` did not become true: {timed_out}");
        }
    }

    /// Errors seen since the last `open`.
    pub fn problems(&self) -> Problems {
        let mut problems = Problems::default();
        for event in &self.events {
            match event["method"].as_str() {
                Some("Runtime.consoleAPICalled") if event["params"]["type"] == "error" => {
                    problems
                        .console_errors
                        .push(format!("console.error: {}", event["params"]["args"]));
                }
                Some("Runtime.exceptionThrown") => problems.console_errors.push(format!(
                    "exception: {}",
                    event["params"]["exceptionDetails"]
                )),
                Some("Log.entryAdded") if event["params"]["entry"]["level"] == "error" => {
                    problems.console_errors.push(format!(
                        "{}: {} ({})",
                        event["params"]["entry"]["source"],
                        event["params"]["entry"]["text"],
                        event["params"]["entry"]["url"]
                    ));
                }
                _ => {}
            }
        }
        problems
    }

    /// The value of a JavaScript expression (awaited if it is a promise), as JSON.
    pub fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("evaluating `{expression}` threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let result = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let data = result["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WebSocket address of the browser's first tab, from its `/json/list`.
fn first_page_target(port: &str) -> String {
    let mut last = String::new();
    let found = deploylite_testkit::wait::try_until_blocking(PAGE_DEADLINE, || {
        let (target, response) = list_targets(port);
        last = response;
        target
    });
    found.unwrap_or_else(|timed_out| panic!("Chromium lists no page target ({timed_out}): {last}"))
}

/// One `GET /json/list`: the first page's WebSocket address, if any, and the whole answer.
fn list_targets(port: &str) -> (Option<String>, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect to DevTools");
    stream
        .set_read_timeout(Some(PAGE_DEADLINE))
        .expect("read timeout");
    write!(
        stream,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("ask for targets");
    // DevTools keeps the connection open: read the headers, then Content-Length bytes.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let response = loop {
        let n = stream.read(&mut chunk).expect("targets");
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if body.len() >= length || n == 0 {
                break text;
            }
        }
        assert!(n > 0, "DevTools closed the connection: {text}");
    };
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("[]");
    let targets: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Some(url) = targets
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
    {
        return (Some(url.to_string()), response);
    }
    (None, response)
}
