//! The status page as people meet it: a real daemon runs the bundled examples
//! (`examples/repos/`), headless Chromium loads every page and the test reads the DOM it built
//! (stage names in the SVG, statuses, coloured log text, no console errors, no sideways
//! scrolling at 360 px), writing a screenshot of each page. The change feed and the log's
//! live tail are read with an HTTP client; sign-in, CSRF and roles are attacked directly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::browser;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{find_stage, id, Daemon, TestRepo, DEADLINE};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The bundled examples, as git repositories

fn copy_tree(root: &Path, dir: &Path, repo: &TestRepo) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read example dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            copy_tree(root, &path, repo);
        } else {
            let relative = path.strip_prefix(root).expect("inside the example");
            let text = std::fs::read_to_string(&path).expect("example files are text");
            repo.write(&relative.to_string_lossy(), &text);
        }
    }
}

/// `examples/repos/<name>` committed to a fresh repository on `main`.
fn example_repo(name: &str, branches: &[&str]) -> TestRepo {
    let repo = TestRepo::named(name).watching(branches);
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/repos")
        .join(name);
    copy_tree(&source, &source, &repo);
    repo.commit("the example as shipped");
    repo
}

/// Where screenshots go: the target dir's test scratch space, kept after the test.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page")
}

// ---------------------------------------------------------------------------------------------
// Chromium

#[tokio::test]
async fn every_page_of_a_daemon_that_ran_the_examples_renders_in_chromium() {
    let Some(binary) = browser::chromium() else {
        deploylite_testkit::skip(
            "status page in Chromium",
            "chromium is not installed (apt-get install chromium)",
        );
        return;
    };
    let webapp = example_repo("webapp", &["main", "release/**"]);
    let docs = example_repo("docs-site", &["main"]);
    let shop = example_repo("shop", &["main"]);
    let daemon = Daemon::start(&[&webapp, &docs, &shop], "").await;
    // The shop's staging deploys; its production waits for an approval.
    daemon
        .wait_for_within(
            std::time::Duration::from_secs(60),
            "shop's production to wait for an approval",
            || async {
                let (code, body) = daemon.get("/api/v1/environments/shop/production").await;
                let production: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let waits = production["deployments"][0]["pending_reason"] == "approval: 0 of 1";
                (code == 200 && waits).then_some(())
            },
        )
        .await;
    let runs = daemon
        .wait_for_runs("the examples' runs to finish", |runs| {
            runs.iter()
                .any(|r| r["pipeline"] == "ci" && r["repo"] == "webapp" && common::is_final(r))
                && runs
                    .iter()
                    .any(|r| r["repo"] == "docs-site" && common::is_final(r))
                && runs.iter().all(common::is_final)
        })
        .await;
    let ci = runs
        .iter()
        .find(|r| r["pipeline"] == "ci" && r["repo"] == "webapp")
        .expect("the webapp's ci run");
    assert_eq!(common::status(ci), "success", "{}", daemon.dump().await);
    let ci = daemon.run(id(ci)).await;
    let ci_id = id(&ci);
    let expected_stages: Vec<(String, String)> = ci["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                s["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        find_stage(&ci, "integration-tests")["attempt"],
        2,
        "the flaky suite ran twice"
    );

    let url = daemon.url.clone();
    let shots = screenshot_dir();
    let report = tokio::task::spawn_blocking(move || {
        let mut browser = browser::Browser::launch(&binary);
        let mut checked = Vec::new();

        // `/`: both repositories with their latest runs.
        let problems = browser.open(&format!("{url}/"));
        assert!(problems.console_errors.is_empty(), "/: {problems:?}");
        browser.wait_for("document.body.dataset.liveState === 'open'");
        let home = browser.evaluate(
            "({ repos: [...document.querySelectorAll('section.repo h2')].map(h => h.textContent.trim()),
                statuses: [...document.querySelectorAll('tr[data-run] .status')].map(s => s.textContent.trim()) })",
        );
        assert_eq!(home["repos"], serde_json::json!(["docs-site", "shop", "webapp"]), "{home}");
        let statuses = home["statuses"].as_array().expect("statuses");
        assert!(!statuses.is_empty(), "{home}");
        assert!(
            statuses.iter().any(|s| s.as_str().is_some_and(|s| s.ends_with("success"))),
            "{home}"
        );
        browser.screenshot(&shots.join("home.png"));
        checked.push("/");

        // `/runs/{id}`: the DAG names every stage with its status, as text.
        let problems = browser.open(&format!("{url}/runs/{ci_id}"));
        assert!(problems.console_errors.is_empty(), "run page: {problems:?}");
        let dag = browser.evaluate(
            "[...document.querySelectorAll('svg#dag g.stage')].map(g => ({
                name: g.dataset.stage, status: g.dataset.status,
                text: g.querySelector('text.state').textContent,
                meta: g.querySelector('text.meta').textContent,
                fill: getComputedStyle(g.querySelector('rect')).fill }))",
        );
        let dag = dag.as_array().expect("stage boxes");
        assert_eq!(dag.len(), expected_stages.len(), "{dag:?}");
        for (name, status) in &expected_stages {
            let stage = dag
                .iter()
                .find(|s| s["name"] == name.as_str())
                .unwrap_or_else(|| panic!("no box for stage {name}: {dag:?}"));
            assert_eq!(stage["status"], status.as_str());
            assert!(
                stage["text"].as_str().is_some_and(|t| t.ends_with(status.as_str())),
                "the box says its status in words: {stage}"
            );
            assert!(stage["meta"].as_str().is_some_and(|t| t.starts_with("attempt ")));
        }
        let edges = browser.evaluate("document.querySelectorAll('svg#dag path.edge').length");
        assert_eq!(edges, 5, "the diamond's needs: build→unit, build→integration, unit/integration/lint→package");
        for stage in dag {
            let fill = stage["fill"].as_str().unwrap_or("");
            assert!(
                !fill.is_empty() && fill != "none" && fill != "rgb(0, 0, 0)",
                "the stylesheet colours the box: {stage}"
            );
        }
        let table = browser.evaluate(
            "[...document.querySelectorAll('table.stages tbody tr')].map(r => r.dataset.stage)",
        );
        assert_eq!(table.as_array().map(Vec::len), Some(expected_stages.len()));
        browser.screenshot(&shots.join("run.png"));
        checked.push("/runs/{id}");

        // The log of a stage that prints in colour: the colour reaches the screen.
        let problems = browser.open(&format!("{url}/runs/{ci_id}/stages/unit-tests"));
        assert!(problems.console_errors.is_empty(), "log page: {problems:?}");
        let coloured = browser.evaluate(
            "(() => { const pass = [...document.querySelectorAll('#log .t span')].find(s => s.textContent === 'PASS');
                      if (!pass) return null;
                      const plain = pass.closest('.t');
                      return { classes: pass.className, colour: getComputedStyle(pass).color,
                               plain: getComputedStyle(plain).color, bold: getComputedStyle(pass).fontWeight,
                               anchored: pass.closest('.l').id.startsWith('b') }; })()",
        );
        assert!(coloured.is_object(), "no coloured PASS in the log");
        assert_ne!(coloured["colour"], coloured["plain"], "{coloured}");
        assert_eq!(coloured["bold"], "700", "{coloured}");
        assert_eq!(coloured["anchored"], true);
        let escapes = browser.evaluate("document.getElementById('log').textContent.includes('\\u001b')");
        assert_eq!(escapes, false, "raw escape sequences reached the page");
        // Timestamps are hidden, and the toggle shows them without a reload.
        let shown = browser.evaluate(
            "(() => { const ts = document.querySelector('#log .ts'); const before = getComputedStyle(ts).display;
                      document.querySelector('.ts-link').click();
                      return [before, getComputedStyle(ts).display]; })()",
        );
        assert_eq!(shown[0], "none", "{shown}");
        assert_ne!(shown[1], "none", "{shown}");
        browser.screenshot(&shots.join("log.png"));
        checked.push("/runs/{id}/stages/{stage}");

        // The flaky stage's first attempt is a page of its own.
        let problems = browser.open(&format!("{url}/runs/{ci_id}/stages/integration-tests?attempt=1"));
        assert!(problems.console_errors.is_empty(), "{problems:?}");
        let first = browser.evaluate("document.querySelector('h1').textContent");
        assert!(first.as_str().is_some_and(|t| t.contains("failed")), "{first}");

        // `/repos/{repo}`, filtered by status.
        let problems = browser.open(&format!("{url}/repos/webapp?status=success"));
        assert!(problems.console_errors.is_empty(), "{problems:?}");
        let rows = browser.evaluate(
            "[...document.querySelectorAll('table.runs tbody tr')].map(r => r.querySelector('.status').textContent.trim())",
        );
        let rows = rows.as_array().expect("rows");
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|s| s.as_str().is_some_and(|s| s.ends_with("success"))), "{rows:?}");
        browser.screenshot(&shots.join("repo.png"));
        checked.push("/repos/{repo}");

        // `/runners`: the daemon's own runner.
        let problems = browser.open(&format!("{url}/runners"));
        assert!(problems.console_errors.is_empty(), "{problems:?}");
        let local = browser.evaluate(
            "document.querySelector('tr[data-runner=local]').textContent.includes('online')",
        );
        assert_eq!(local, true);
        browser.screenshot(&shots.join("runners.png"));
        checked.push("/runners");

        // `/environments/{repo}/{env}`: production's waiting deployment says why; staging's
        // deployment succeeded, with its runs linked.
        let problems = browser.open(&format!("{url}/environments/shop/production"));
        assert!(problems.console_errors.is_empty(), "{problems:?}");
        let waiting = browser.evaluate(
            "[...document.querySelectorAll('tr[data-deployment]')].map(r => r.textContent)",
        );
        assert!(
            waiting.as_array().is_some_and(|rows| rows.iter().any(|r| {
                r.as_str().is_some_and(|r| r.contains("waiting") && r.contains("approval: 0 of 1"))
            })),
            "{waiting}"
        );
        browser.screenshot(&shots.join("environment.png"));
        let problems = browser.open(&format!("{url}/environments/shop/staging"));
        assert!(problems.console_errors.is_empty(), "{problems:?}");
        let staged = browser.evaluate(
            "({ statuses: [...document.querySelectorAll('tr[data-deployment] .status')].map(s => s.textContent.trim()),
                runs: document.querySelectorAll('tr[data-deployment] a[href^=\"/runs/\"]').length })",
        );
        assert!(
            staged["statuses"].as_array().is_some_and(|s| s.iter().any(|s| s.as_str().is_some_and(|s| s.ends_with("succeeded")))),
            "{staged}"
        );
        assert!(staged["runs"].as_i64().is_some_and(|n| n >= 2), "deploy and verify runs: {staged}");
        let problems = browser.open(&format!("{url}/environments"));
        assert!(problems.console_errors.is_empty(), "{problems:?}");
        checked.push("/environments/{repo}/{env}");

        // 360 px wide: nothing scrolls sideways except the tables and the graph inside their boxes.
        browser.viewport(360, 740);
        for page in ["/", &format!("/runs/{ci_id}"), &format!("/runs/{ci_id}/stages/unit-tests"), "/runners",
            "/environments/shop/production"] {
            let problems = browser.open(&format!("{url}{page}"));
            assert!(problems.console_errors.is_empty(), "{page}: {problems:?}");
            let overflow = browser.evaluate("document.documentElement.scrollWidth - window.innerWidth");
            assert!(overflow.as_i64().is_some_and(|o| o <= 0), "{page} is {overflow} px too wide at 360 px");
        }
        browser.screenshot(&shots.join("run-360px.png"));
        checked
    })
    .await
    .expect("the browser session");
    eprintln!(
        "checked {report:?} in Chromium; screenshots in {}",
        screenshot_dir().display()
    );

    // The badge: an SVG with the latest status in words.
    let (code, badge) = daemon.get("/badges/webapp/ci.svg?branch=main").await;
    assert_eq!(code, 200);
    assert!(
        badge.starts_with("<svg") && badge.contains(">success<"),
        "{badge}"
    );
    let (_, none) = daemon.get("/badges/webapp/ci.svg?branch=nope").await;
    assert!(none.contains(">no runs<"), "{none}");
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: Option<String>,
    event: String,
    data: String,
}

/// An open SSE response, parsed as it arrives.
struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    async fn open(url: &str, last_event_id: Option<&str>) -> SseStream {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("the stream opens");
        assert_eq!(response.status(), 200, "{url}");
        assert!(response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")));
        SseStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped), or None after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".to_string(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Events until `done` says the last one arrived (panics after the deadline).
    async fn until(&mut self, done: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let deadline = Instant::now() + DEADLINE;
        let mut events = Vec::new();
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("the stream ended or stalled; got {events:#?}"));
            let event = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("the stream ended or stalled; got {events:#?}"));
            let last = done(&event);
            events.push(event);
            if last {
                return events;
            }
        }
    }
}

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("{e}: {event:?}"))
}

const TWO_STAGES: &str = "
name: ci
on:
  push: { branches: [main] }
stages:
  first:
    steps:
      - run: echo one
  second:
    needs: [first]
    steps:
      - run: echo two
";

#[tokio::test]
async fn the_event_stream_has_one_event_per_transition_and_resumes_after_an_id() {
    let repo = TestRepo::new();
    repo.write("README", "nothing to run yet\n");
    repo.commit("no pipeline");
    let daemon = Daemon::start(&[&repo], "").await;
    let mut stream = SseStream::open(&format!("{}/api/v1/events", daemon.url), None).await;

    repo.pipeline("ci.yaml", TWO_STAGES);
    let commit = repo.commit("a pipeline");
    let run = daemon.wait_for_commit_run("ci", &commit).await;
    let run_id = id(&run);
    let events = stream
        .until(|e| e.event == "run" && data(e)["status"] == "success")
        .await;

    let seen: Vec<(String, Option<String>, String)> = events
        .iter()
        .map(|e| {
            let d = data(e);
            assert_eq!(d["run_id"], run_id, "{e:?}");
            assert_eq!(d["id"].as_str(), e.id.as_deref(), "the data names its id");
            (
                e.event.clone(),
                d["stage"].as_str().map(str::to_string),
                d["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected = |kind: &str, stage: Option<&str>, status: &str| {
        (
            kind.to_string(),
            stage.map(str::to_string),
            status.to_string(),
        )
    };
    // Each transition exactly once, in causal order.
    assert_eq!(
        seen,
        vec![
            expected("run", None, "running"),
            expected("stage", Some("first"), "running"),
            expected("stage", Some("first"), "success"),
            expected("stage", Some("second"), "running"),
            expected("stage", Some("second"), "success"),
            expected("run", None, "success"),
        ],
        "{events:#?}"
    );
    // Nothing more of that run follows its end: the next event is the start of the run a
    // later commit makes (a positive signal, where waiting in silence would prove nothing).
    repo.write("README", "a later commit\n");
    let later = repo.commit("later");
    let later_run = id(&daemon.wait_for_commit_run("ci", &later).await);
    let is_later_start = |e: &SseEvent| {
        e.event == "run" && data(e)["run_id"] == later_run && data(e)["status"] == "running"
    };
    let next = stream.next(DEADLINE).await.expect("the later run's start");
    assert!(is_later_start(&next), "{next:?}");

    // A reconnect naming the second event gets exactly the four after it, then what came
    // later.
    let second = events[1].id.clone().expect("events carry ids");
    let mut resumed =
        SseStream::open(&format!("{}/api/v1/events", daemon.url), Some(&second)).await;
    let mut again = Vec::new();
    for _ in 0..4 {
        again.push(resumed.next(DEADLINE).await.expect("a missed event"));
    }
    assert_eq!(again, events[2..].to_vec());
    let next = resumed.next(DEADLINE).await.expect("the later run's start");
    assert!(is_later_start(&next), "{next:?}");

    // An id from another daemon's feed (or one the ring forgot) starts with a reset.
    let mut stale = SseStream::open(&format!("{}/api/v1/events", daemon.url), Some("1-1")).await;
    let first = stale.next(DEADLINE).await.expect("a reset");
    assert_eq!(first.event, "reset");
}

#[tokio::test]
async fn an_open_event_stream_ends_when_the_daemon_stops_and_does_not_hold_it_up() {
    let repo = TestRepo::new();
    repo.write("README", "nothing to run yet\n");
    repo.commit("no pipeline");
    let mut daemon = Daemon::start(&[&repo], "").await;
    let mut stream = SseStream::open(&format!("{}/api/v1/events", daemon.url), None).await;
    // The HTTP server's graceful shutdown waits for every response: an event stream that
    // never ended kept the daemon from exiting (stop() fails after its deadline).
    let stopped = std::time::Instant::now();
    let status = daemon.stop().await;
    assert!(status.success(), "{status}\n{}", daemon.stderr());
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        stopped.elapsed()
    );
    assert_eq!(stream.next(DEADLINE).await, None, "the stream ended");
}

#[tokio::test]
async fn the_log_tail_streams_new_lines_and_resumes_from_its_byte_offset() {
    let repo = TestRepo::new();
    let gate = tempfile::tempdir().expect("gate dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(gate.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
    }
    let open = gate.path().join("open");
    repo.pipeline(
        "ci.yaml",
        &format!(
            "
name: ci
on:
  push: {{ branches: [main] }}
stages:
  slow:
    steps:
      - run: |
          printf 'before \\033[31mred\\033[0m\\n'
          while [ ! -f {} ]; do sleep 0.05; done
          echo after the gate
",
            open.display()
        ),
    );
    let commit = repo.commit("a stage that waits");
    let daemon = Daemon::start(&[&repo], "").await;
    let run = daemon.wait_for_commit_run("ci", &commit).await;
    let run_id = id(&run);
    daemon.wait_log_contains(run_id, "slow", "red").await;

    let live = format!(
        "{}/runs/{run_id}/stages/slow/live?attempt=1&offset=0",
        daemon.url
    );
    let mut stream = SseStream::open(&live, None).await;
    let first = stream
        .until(|e| e.event == "lines" && e.data.contains("red"))
        .await;
    let first = first.last().expect("lines").clone();
    assert!(
        first.data.contains("<span class=\"f1\">red</span>"),
        "coloured and escaped: {}",
        first.data
    );
    let offset: u64 = first
        .id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .expect("the id is a byte offset");
    drop(stream);

    // Reconnect from that offset, then let the stage finish: only the new lines come, then the end.
    let mut resumed = SseStream::open(&live, Some(&offset.to_string())).await;
    std::fs::write(&open, "").expect("open the gate");
    let rest = resumed.until(|e| e.event == "end").await;
    let html: String = rest
        .iter()
        .filter(|e| e.event == "lines")
        .map(|e| e.data.clone())
        .collect();
    assert!(html.contains("after the gate"), "{rest:#?}");
    assert!(
        !html.contains("red"),
        "lines before the offset came again: {html}"
    );
    // Every line is anchored by its byte offset, and the offsets continue from the resume point.
    let anchors: Vec<u64> = html
        .split("id=\"b")
        .skip(1)
        .filter_map(|s| s.split('"').next()?.parse().ok())
        .collect();
    assert!(!anchors.is_empty());
    assert!(
        anchors.iter().all(|a| *a >= offset),
        "{anchors:?} vs {offset}"
    );
    assert!(anchors.windows(2).all(|w| w[0] < w[1]));
    let raw = daemon.log(run_id, "slow", Some(1)).await;
    let last_id: u64 = rest
        .iter()
        .rev()
        .find_map(|e| e.id.as_deref()?.parse().ok())
        .expect("an id");
    assert_eq!(
        last_id,
        raw.len() as u64,
        "the tail reached the end of the log"
    );
}

// ---------------------------------------------------------------------------------------------
// Sign-in, CSRF and roles

/// A client that neither follows redirects nor keeps cookies: the test carries them itself.
fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Signs in with `token`; returns the session cookie (`name=value`).
async fn sign_in(daemon: &Daemon, token: &str) -> String {
    let response = bare_client()
        .post(format!("{}/login", daemon.url))
        .form(&[("token", token), ("next", "/")])
        .send()
        .await
        .expect("login answers");
    assert_eq!(response.status(), 303);
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP on loopback: {cookie}"
    );
    cookie.split(';').next().expect("name=value").to_string()
}

async fn page_with(daemon: &Daemon, path: &str, cookie: &str) -> (u16, String) {
    let response = bare_client()
        .get(format!("{}{path}", daemon.url))
        .header("cookie", cookie)
        .send()
        .await
        .expect("page answers");
    let code = response.status().as_u16();
    (code, response.text().await.unwrap_or_default())
}

/// The CSRF token of the first form on a page.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    html[at + 19..]
        .split('"')
        .next()
        .expect("token")
        .to_string()
}

async fn post_form(daemon: &Daemon, path: &str, cookie: &str, fields: &[(&str, &str)]) -> u16 {
    bare_client()
        .post(format!("{}{path}", daemon.url))
        .header("cookie", cookie)
        .form(fields)
        .send()
        .await
        .expect("form answers")
        .status()
        .as_u16()
}

#[tokio::test]
async fn sign_in_csrf_and_roles_guard_the_page_forms() {
    let repo = TestRepo::new();
    let gate = tempfile::tempdir().expect("gate dir");
    repo.pipeline(
        "ci.yaml",
        &format!(
            "
name: ci
on:
  push: {{ branches: [main] }}
stages:
  wait:
    steps:
      - run: while [ ! -f {}/never ]; do sleep 0.05; done
",
            gate.path().display()
        ),
    );
    let commit = repo.commit("a stage that waits until cancelled");
    let daemon = Daemon::start(&[&repo], "auth:\n  anonymous_read: false\n").await;
    let admin = daemon.admin_token();
    let run_of = || async {
        let response = daemon
            .http()
            .get(format!("{}/api/v1/runs?limit=10", daemon.url))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("runs");
        let runs: Vec<Value> = response.json().await.expect("JSON");
        runs.into_iter().find(|r| r["commit"] == commit.as_str())
    };
    let run_id = daemon
        .wait_for("the run to start", || async {
            run_of()
                .await
                .filter(|r| r["status"] == "running")
                .map(|r| id(&r))
        })
        .await;

    // Anonymous readers are sent to the sign-in form; a bad token goes back to it.
    let response = bare_client()
        .get(format!("{}/runs/{run_id}", daemon.url))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 303);
    assert_eq!(
        response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some(format!("/login?next=%2Fruns%2F{run_id}").as_str())
    );
    let response = bare_client()
        .post(format!("{}/login", daemon.url))
        .form(&[("token", "dlt_0000"), ("next", "/")])
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 303);
    assert!(response.headers().get("set-cookie").is_none());

    // A viewer reads, sees no buttons, and cannot cancel even with a valid CSRF token.
    let viewer = sign_in(&daemon, &daemon.create_token("watcher", "viewer").await).await;
    let (code, page) = page_with(&daemon, &format!("/runs/{run_id}"), &viewer).await;
    assert_eq!(code, 200);
    assert!(page.contains("Signed in as"), "{page}");
    assert!(
        !page.contains("Cancel run"),
        "a viewer sees no cancel button"
    );
    let viewer_csrf = csrf_of(&page); // the sign-out form's
    let code = post_form(
        &daemon,
        &format!("/runs/{run_id}/cancel"),
        &viewer,
        &[("csrf", &viewer_csrf)],
    )
    .await;
    assert_eq!(code, 403, "a viewer cannot cancel");

    // An operator sees the form; the forged posts (no token, a wrong one, another session's)
    // are refused and change nothing.
    let operator = sign_in(&daemon, &daemon.create_token("oncall", "operator").await).await;
    let (_, page) = page_with(&daemon, &format!("/runs/{run_id}"), &operator).await;
    assert!(page.contains("Cancel run"), "{page}");
    let csrf = csrf_of(&page);
    let cancel = format!("/runs/{run_id}/cancel");
    assert_eq!(post_form(&daemon, &cancel, &operator, &[]).await, 403);
    assert_eq!(
        post_form(&daemon, &cancel, &operator, &[("csrf", "00ff")]).await,
        403
    );
    assert_eq!(
        post_form(&daemon, &cancel, &operator, &[("csrf", &viewer_csrf)]).await,
        403,
        "a CSRF token belongs to its own session"
    );
    // The cookie alone never authorizes the JSON API's state changes.
    let api = bare_client()
        .post(format!("{}/api/v1/runs/{run_id}/cancel", daemon.url))
        .header("cookie", &operator)
        .send()
        .await
        .expect("answers");
    assert_eq!(api.status(), 403);
    // Nor does a post from another site, token or not.
    let cross = bare_client()
        .post(format!("{}{cancel}", daemon.url))
        .header("cookie", &operator)
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("answers");
    assert_eq!(cross.status(), 403);
    let run = run_of().await.expect("the run");
    assert_eq!(run["status"], "running");
    assert_eq!(
        run["cancel_requested"], false,
        "a refused form changed the run"
    );

    // The real form cancels, and says so on the run's page.
    let response = bare_client()
        .post(format!("{}{cancel}", daemon.url))
        .header("cookie", &operator)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 303);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        location.starts_with(&format!("/runs/{run_id}?note=")),
        "{location}"
    );
    daemon
        .wait_for("the run to be cancelled", || async {
            let run = run_of().await.expect("the run");
            (run["status"] == "cancelled").then_some(())
        })
        .await;
    // Every attempt, refused or not, is in the audit log under its token.
    let audit: Value = daemon
        .http()
        .get(format!("{}/api/v1/audit", daemon.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("JSON");
    let text = audit.to_string();
    assert!(
        text.contains("token:watcher") && text.contains("token:oncall"),
        "{text}"
    );

    // Signing out clears the cookie.
    let response = bare_client()
        .post(format!("{}/logout", daemon.url))
        .header("cookie", &operator)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 303);
    let cleared = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}
