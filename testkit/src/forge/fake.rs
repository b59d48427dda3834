//! Fake GitHub and GitLab APIs: real HTTP servers on 127.0.0.1, recording every request
//! (method, path, headers, JSON body, arrival time), validating it (GitHub: against the OpenAPI
//! subset; endpoints outside it by method and path shape), and scriptable per route.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::openapi::OpenApi;

pub const APP_ID: u64 = 4711;
pub const INSTALLATION_ID: u64 = 4242;
pub const PAT: &str = "test-token-not-a-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Github,
    Gitlab,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The raw path (percent-encoding kept), without the query.
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// Arrival time, epoch ms.
    pub at_ms: i64,
    /// The status the fake answered.
    pub status: u16,
}

impl Recorded {
    pub fn bearer(&self) -> Option<&str> {
        self.headers
            .get("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: json!({ "message": "scripted" }),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: impl ToString) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

struct Script {
    method: String,
    path_suffix: String,
    replies: VecDeque<Reply>,
}

struct Inner {
    kind: Kind,
    openapi: Option<OpenApi>,
    requests: Mutex<Vec<Recorded>>,
    violations: Mutex<Vec<String>>,
    scripts: Mutex<Vec<Script>>,
    down: AtomicBool,
    /// Requests received so far (counted on arrival).
    arrivals: AtomicU64,
    /// Every answer waits this long (ms): sends overlap with state changes.
    delay_ms: AtomicU64,
    next_id: AtomicU64,
    /// Comments / notes: id → (issue or MR number, body).
    comments: Mutex<BTreeMap<u64, (u64, String)>>,
    /// Installation tokens issued: (token, expires at epoch ms).
    tokens: Mutex<Vec<(String, i64)>>,
    token_ttls: Mutex<VecDeque<i64>>,
    /// GitLab: the state of each (sha, name) status.
    gitlab_states: Mutex<HashMap<(String, String), String>>,
    /// Paths of the requests being answered.
    active: Mutex<Vec<String>>,
    /// Per class of resource (`/check-runs`, `/comments`, ...), the most requests answered at once.
    peaks: Mutex<HashMap<&'static str, usize>>,
    /// The open pull requests (GitHub) or merge requests (GitLab) the listing serves, as the
    /// forge's own objects.
    pulls: Mutex<Vec<Value>>,
}

pub struct FakeForge {
    pub url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeForge {
    pub async fn github() -> FakeForge {
        FakeForge::start(Kind::Github, Some(OpenApi::github())).await
    }

    pub async fn gitlab() -> FakeForge {
        FakeForge::start(Kind::Gitlab, None).await
    }

    async fn start(kind: Kind, openapi: Option<OpenApi>) -> FakeForge {
        let inner = Arc::new(Inner {
            kind,
            openapi,
            requests: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            scripts: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            arrivals: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            next_id: AtomicU64::new(1000),
            comments: Mutex::new(BTreeMap::new()),
            tokens: Mutex::new(Vec::new()),
            token_ttls: Mutex::new(VecDeque::new()),
            gitlab_states: Mutex::new(HashMap::new()),
            active: Mutex::new(Vec::new()),
            peaks: Mutex::new(HashMap::new()),
            pulls: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake forge");
        let addr = listener.local_addr().expect("fake forge address");
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let url = match kind {
            Kind::Github => format!("http://{addr}"),
            Kind::Gitlab => format!("http://{addr}/api/v4"),
        };
        FakeForge { url, inner, task }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.inner.requests).clone()
    }

    /// Requests whose method is `method` and whose path ends with or contains `path_part`.
    pub fn requests_to(&self, method: &str, path_part: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.contains(path_part))
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.inner.violations).clone()
    }

    /// The next answers to `method` on paths ending with `path_suffix`, in order; then the
    /// default behaviour again.
    pub fn script(&self, method: &str, path_suffix: &str, replies: Vec<Reply>) {
        lock(&self.inner.scripts).push(Script {
            method: method.to_string(),
            path_suffix: path_suffix.to_string(),
            replies: replies.into(),
        });
    }

    /// While down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.inner
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Lifetime of the next installation token issued (default one hour).
    pub fn push_token_ttl(&self, seconds: i64) {
        lock(&self.inner.token_ttls).push_back(seconds);
    }

    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.inner.tokens)
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// A comment that already exists on the forge; returns its id.
    pub fn add_comment(&self, issue: u64, body: &str) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        lock(&self.inner.comments).insert(id, (issue, body.to_string()));
        id
    }

    pub fn comments(&self, issue: u64) -> Vec<(u64, String)> {
        lock(&self.inner.comments)
            .iter()
            .filter(|(_, (i, _))| *i == issue)
            .map(|(id, (_, b))| (*id, b.clone()))
            .collect()
    }

    /// The most requests answered at the same time for one class of resource (one of
    /// `/check-runs`, `/statuses`, `/comments`, `/notes`).
    pub fn max_concurrency(&self, class: &str) -> usize {
        lock(&self.inner.peaks).get(class).copied().unwrap_or(0)
    }

    /// Requests received so far, counted on arrival (before they are answered).
    pub fn arrivals(&self) -> u64 {
        self.inner.arrivals.load(Ordering::SeqCst)
    }

    /// What the open pull/merge request listing serves from now on.
    pub fn set_pull_requests(&self, items: Vec<Value>) {
        *lock(&self.inner.pulls) = items;
    }

    /// The listing requests answered so far, as (query, If-None-Match sent, status).
    pub fn listings(&self) -> Vec<(String, Option<String>, u16)> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.method == "GET"
                    && (r.path.ends_with("/pulls") || r.path.ends_with("/merge_requests"))
            })
            .map(|r| {
                (
                    r.query.clone(),
                    r.headers.get("if-none-match").cloned(),
                    r.status,
                )
            })
            .collect()
    }

    /// Requests being answered right now.
    pub fn in_progress(&self) -> usize {
        lock(&self.inner.active).len()
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at_ms = now_ms();
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let json_body = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                lock(&inner.violations)
                    .push(format!("{method} {path}: the body is not JSON ({e})"));
                Value::Null
            }
        }
    };
    let method_s = method.as_str().to_string();

    // Validate the request's shape.
    let problems = match inner.kind {
        Kind::Github => validate_github(&inner, &method_s, &path, &query, &json_body),
        Kind::Gitlab => validate_gitlab(&method_s, &path, &query, &json_body, &headers),
    };
    lock(&inner.violations).extend(problems);

    inner.arrivals.fetch_add(1, Ordering::SeqCst);
    {
        let mut active = lock(&inner.active);
        active.push(path.clone());
        let mut peaks = lock(&inner.peaks);
        for class in CLASSES {
            let n = active.iter().filter(|p| p.contains(class)).count();
            let peak = peaks.entry(class).or_insert(0);
            *peak = (*peak).max(n);
        }
    }
    let delay = inner.delay_ms.load(Ordering::SeqCst);
    let (status, reply_headers, reply) =
        answer(&inner, &method_s, &path, &query, &headers, &json_body).await;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    {
        let mut active = lock(&inner.active);
        if let Some(i) = active.iter().position(|p| *p == path) {
            active.remove(i);
        }
    }
    lock(&inner.requests).push(Recorded {
        method: method_s,
        path,
        query,
        headers,
        body: json_body,
        at_ms,
        status,
    });

    let mut response = if status == 304 {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(reply),
        )
            .into_response()
    };
    for (name, value) in reply_headers {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            axum::http::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

const CLASSES: [&str; 4] = ["/check-runs", "/statuses", "/comments", "/notes"];

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

fn validate_github(
    inner: &Inner,
    method: &str,
    path: &str,
    query: &str,
    body: &Value,
) -> Vec<String> {
    let s = segments(path);
    // Outside the OpenAPI subset: the App's installation and token endpoints, by shape.
    match (method, s.as_slice()) {
        ("GET", ["repos", owner, repo, "installation"])
            if !owner.is_empty() && !repo.is_empty() =>
        {
            return Vec::new()
        }
        // The subset has `pulls/get` but not `pulls/list`: checked by shape and parameters
        // (https://docs.github.com/en/rest/pulls/pulls#list-pull-requests); the items served are
        // validated against the subset's `pull-request` schema where they are made.
        ("GET", ["repos", owner, repo, "pulls"]) if !owner.is_empty() && !repo.is_empty() => {
            let mut problems = Vec::new();
            if query_param(query, "state") != Some("open") {
                problems.push(format!("{method} {path}?{query}: state=open expected"));
            }
            if !query_param(query, "per_page")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| (1..=100).contains(&n))
            {
                problems.push(format!("{method} {path}?{query}: per_page must be 1..=100"));
            }
            return problems;
        }
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            return if id.parse::<u64>().is_ok() {
                Vec::new()
            } else {
                vec![format!("{method} {path}: bad installation id")]
            };
        }
        _ => {}
    }
    let Some(openapi) = &inner.openapi else {
        return Vec::new();
    };
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    openapi.validate_request(
        method,
        &target,
        if body.is_null() { None } else { Some(body) },
    )
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn validate_gitlab(
    method: &str,
    path: &str,
    query: &str,
    body: &Value,
    headers: &HashMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let s = segments(path);
    let here = format!("{method} {path}");
    if headers.get("private-token").is_none() {
        problems.push(format!("{here}: no PRIVATE-TOKEN header"));
    }
    let project_ok = |p: &str| !p.is_empty() && !p.contains('/');
    match (method, s.as_slice()) {
        ("POST", ["api", "v4", "projects", project, "statuses", sha])
            if project_ok(project) && !sha.is_empty() =>
        {
            match body.get("state").and_then(Value::as_str) {
                Some("pending" | "running" | "success" | "failed" | "canceled" | "skipped") => {}
                other => problems.push(format!("{here}: bad state {other:?}")),
            }
            for field in ["name", "description", "target_url"] {
                match body.get(field) {
                    None => {}
                    Some(Value::String(v)) if v.chars().count() <= 255 => {}
                    Some(v) => problems.push(format!("{here}: bad {field} {v}")),
                }
            }
        }
        ("GET", ["api", "v4", "projects", project, "merge_requests", iid, "notes"])
            if project_ok(project) && iid.parse::<u64>().is_ok() => {}
        // https://docs.gitlab.com/ee/api/merge_requests.html#get-single-mr
        ("GET", ["api", "v4", "projects", project, "merge_requests", iid])
            if project_ok(project) && iid.parse::<u64>().is_ok() => {}
        // https://docs.gitlab.com/ee/api/deployments.html#create-a-deployment: every parameter
        // is required; `status` is one of running, success, failed, canceled (the API refuses
        // `created`).
        ("POST", ["api", "v4", "projects", project, "deployments"]) if project_ok(project) => {
            for field in ["environment", "sha", "ref"] {
                if body
                    .get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    problems.push(format!("{here}: `{field}` must be a non-empty string"));
                }
            }
            if !body.get("tag").is_some_and(Value::is_boolean) {
                problems.push(format!("{here}: `tag` must be a boolean"));
            }
            problems.extend(deployment_status_problem(&here, body));
            if let Some(extra) = body.as_object().and_then(|o| {
                o.keys()
                    .find(|k| !["environment", "sha", "ref", "tag", "status"].contains(&k.as_str()))
            }) {
                problems.push(format!("{here}: unknown parameter `{extra}`"));
            }
        }
        // https://docs.gitlab.com/ee/api/deployments.html#update-a-deployment
        ("PUT", ["api", "v4", "projects", project, "deployments", deployment])
            if project_ok(project) =>
        {
            if deployment.parse::<u64>().is_err() {
                problems.push(format!("{here}: bad deployment id"));
            }
            problems.extend(deployment_status_problem(&here, body));
        }
        // https://docs.gitlab.com/api/merge_requests/#list-project-merge-requests
        ("GET", ["api", "v4", "projects", project, "merge_requests"]) if project_ok(project) => {
            if query_param(query, "state") != Some("opened") {
                problems.push(format!("{here}?{query}: state=opened expected"));
            }
            if !query_param(query, "per_page")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| (1..=100).contains(&n))
            {
                problems.push(format!("{here}?{query}: per_page must be 1..=100"));
            }
        }
        ("POST", ["api", "v4", "projects", project, "merge_requests", iid, "notes"])
        | ("PUT", ["api", "v4", "projects", project, "merge_requests", iid, "notes", _])
            if project_ok(project) && iid.parse::<u64>().is_ok() =>
        {
            if !body.get("body").is_some_and(Value::is_string) {
                problems.push(format!("{here}: no body"));
            }
            if method == "PUT" && s[7].parse::<u64>().is_err() {
                problems.push(format!("{here}: bad note id"));
            }
        }
        _ => problems.push(format!("{here}: not an endpoint DeployLite should call")),
    }
    problems
}

/// GitLab's deployments API takes `status` as one of running, success, failed, canceled.
fn deployment_status_problem(here: &str, body: &Value) -> Option<String> {
    match body.get("status").and_then(Value::as_str) {
        Some("running" | "success" | "failed" | "canceled") => None,
        other => Some(format!("{here}: bad deployment status {other:?}")),
    }
}

/// Decodes base64url without padding (a JWT segment).
fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => continue,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

/// The claims of a well-formed JWT.
fn jwt_claims(token: &str) -> Option<Value> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    serde_json::from_slice(&base64url(parts[1])?).ok()
}

fn reply(status: u16, body: Value) -> (u16, Vec<(String, String)>, Value) {
    (status, Vec::new(), body)
}

async fn answer(
    inner: &Inner,
    method: &str,
    path: &str,
    query: &str,
    headers: &HashMap<String, String>,
    body: &Value,
) -> (u16, Vec<(String, String)>, Value) {
    if inner.down.load(Ordering::SeqCst) {
        return reply(503, json!({ "message": "down for maintenance" }));
    }
    let scripted = {
        let mut scripts = lock(&inner.scripts);
        scripts
            .iter_mut()
            .find(|s| s.method == method && path.ends_with(&s.path_suffix) && !s.replies.is_empty())
            .and_then(|s| s.replies.pop_front())
    };
    if let Some(r) = scripted {
        if !r.delay.is_zero() {
            tokio::time::sleep(r.delay).await;
        }
        return (r.status, r.headers, r.body);
    }
    match inner.kind {
        Kind::Github => github(inner, method, path, query, headers, body),
        Kind::Gitlab => gitlab(inner, method, path, query, headers, body),
    }
}

fn page_of(items: Vec<Value>, query: &str) -> Value {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let per_page = param("per_page").unwrap_or(20).max(1);
    let page = param("page").unwrap_or(1).max(1);
    Value::Array(
        items
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect(),
    )
}

/// A page of the open pull/merge requests with its ETag (a hash of the page), answered 304 to an
/// `If-None-Match` that names it; the next page is announced the forge's way.
fn listing(
    inner: &Inner,
    query: &str,
    headers: &HashMap<String, String>,
    kind: Kind,
) -> (u16, Vec<(String, String)>, Value) {
    use std::hash::{Hash, Hasher};
    let items = lock(&inner.pulls).clone();
    let per_page = query_param(query, "per_page")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(20)
        .max(1);
    let page_no = query_param(query, "page")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let more = items.len() > page_no * per_page;
    let page = page_of(items, query);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    page.to_string().hash(&mut hasher);
    let etag = format!("W/\"{:016x}\"", hasher.finish());
    let mut reply_headers = vec![("etag".to_string(), etag.clone())];
    if more {
        match kind {
            Kind::Github => reply_headers.push((
                "link".into(),
                format!(
                    "<https://api.github.com/repositories/1/pulls?state=open&per_page={per_page}&page={}>; rel=\"next\"",
                    page_no + 1
                ),
            )),
            Kind::Gitlab => reply_headers.push(("x-next-page".into(), (page_no + 1).to_string())),
        }
    } else if kind == Kind::Gitlab {
        reply_headers.push(("x-next-page".into(), String::new()));
    }
    if headers.get("if-none-match") == Some(&etag) {
        return (304, reply_headers, Value::Null);
    }
    (200, reply_headers, page)
}

fn github(
    inner: &Inner,
    method: &str,
    path: &str,
    query: &str,
    headers: &HashMap<String, String>,
    body: &Value,
) -> (u16, Vec<(String, String)>, Value) {
    let bearer = headers
        .get("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    let s = segments(path);
    let app_call = matches!(s.as_slice(), ["app", ..] | ["repos", _, _, "installation"]);
    if app_call {
        let ok = jwt_claims(bearer)
            .is_some_and(|c| c.get("iss").and_then(Value::as_u64) == Some(APP_ID));
        if !ok {
            return reply(
                401,
                json!({ "message": "A JSON web token could not be decoded" }),
            );
        }
    } else {
        let now = now_ms();
        let known = bearer == PAT
            || lock(&inner.tokens)
                .iter()
                .any(|(t, exp)| t == bearer && *exp > now);
        if !known {
            return reply(401, json!({ "message": "Bad credentials" }));
        }
    }
    let id = || inner.next_id.fetch_add(1, Ordering::SeqCst);
    match (method, s.as_slice()) {
        ("GET", ["repos", _, _, "installation"]) => {
            reply(200, json!({ "id": INSTALLATION_ID, "app_id": APP_ID }))
        }
        ("POST", ["app", "installations", _, "access_tokens"]) => {
            let ttl = lock(&inner.token_ttls).pop_front().unwrap_or(3600);
            let mut tokens = lock(&inner.tokens);
            let token = format!("ghs_fake_{}", tokens.len() + 1);
            let expires = now_ms() + ttl * 1000;
            tokens.push((token.clone(), expires));
            let expires_at = chrono::DateTime::from_timestamp_millis(expires)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default();
            reply(
                201,
                json!({ "token": token, "expires_at": expires_at, "permissions": {} }),
            )
        }
        ("POST", ["repos", _, _, "check-runs"]) => {
            let mut answer = body.clone();
            answer["id"] = json!(id());
            reply(201, answer)
        }
        ("PATCH", ["repos", _, _, "check-runs", check]) => {
            reply(200, json!({ "id": check.parse::<u64>().unwrap_or(0) }))
        }
        ("POST", ["repos", _, _, "statuses", _]) => {
            let mut answer = body.clone();
            answer["id"] = json!(id());
            reply(201, answer)
        }
        // https://docs.github.com/en/rest/deployments/deployments#create-a-deployment
        ("POST", ["repos", _, _, "deployments"]) => {
            let mut answer = body.clone();
            answer["id"] = json!(id());
            answer["sha"] = body.get("ref").cloned().unwrap_or(Value::Null);
            reply(201, answer)
        }
        ("POST", ["repos", _, _, "deployments", deployment, "statuses"]) => {
            let mut answer = body.clone();
            answer["id"] = json!(id());
            answer["deployment_id"] = json!(deployment.parse::<u64>().unwrap_or(0));
            reply(201, answer)
        }
        // One pull request, from what the listing serves.
        ("GET", ["repos", _, _, "pulls", number]) => {
            let number = number.parse::<u64>().unwrap_or(0);
            match lock(&inner.pulls)
                .iter()
                .find(|p| p.get("number").and_then(Value::as_u64) == Some(number))
            {
                Some(pull) => reply(200, pull.clone()),
                None => reply(404, json!({ "message": "Not Found" })),
            }
        }
        ("GET", ["repos", _, _, "pulls"]) => {
            let served = listing(inner, query, headers, Kind::Github);
            if let (Some(openapi), (200, _, Value::Array(items))) = (&inner.openapi, &served) {
                let schema = openapi
                    .schema("pull-request")
                    .cloned()
                    .unwrap_or(Value::Null);
                let mut problems = Vec::new();
                for item in items {
                    openapi.validate(&schema, item, "$", &mut problems);
                }
                lock(&inner.violations).extend(
                    problems
                        .into_iter()
                        .map(|p| format!("served pull request: {p}")),
                );
            }
            served
        }
        ("GET", ["repos", _, _, "issues", number, "comments"]) => {
            let number = number.parse::<u64>().unwrap_or(0);
            let items = lock(&inner.comments)
                .iter()
                .filter(|(_, (i, _))| *i == number)
                .map(|(id, (_, b))| json!({ "id": id, "body": b }))
                .collect();
            reply(200, page_of(items, query))
        }
        ("POST", ["repos", _, _, "issues", number, "comments"]) => {
            let new = id();
            let text = body
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            lock(&inner.comments).insert(new, (number.parse().unwrap_or(0), text.clone()));
            reply(201, json!({ "id": new, "body": text }))
        }
        ("PATCH", ["repos", _, _, "issues", "comments", comment]) => {
            let comment = comment.parse::<u64>().unwrap_or(0);
            let text = body
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match lock(&inner.comments).get_mut(&comment) {
                Some(existing) => {
                    existing.1 = text.clone();
                    reply(200, json!({ "id": comment, "body": text }))
                }
                None => reply(404, json!({ "message": "Not Found" })),
            }
        }
        _ => reply(404, json!({ "message": "Not Found" })),
    }
}

fn gitlab(
    inner: &Inner,
    method: &str,
    path: &str,
    query: &str,
    headers: &HashMap<String, String>,
    body: &Value,
) -> (u16, Vec<(String, String)>, Value) {
    if headers.get("private-token").map(String::as_str) != Some(PAT) {
        return reply(401, json!({ "message": "401 Unauthorized" }));
    }
    let s = segments(path);
    let id = || inner.next_id.fetch_add(1, Ordering::SeqCst);
    match (method, s.as_slice()) {
        ("POST", ["api", "v4", "projects", _, "statuses", sha]) => {
            let state = body
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let name = body
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            let mut states = lock(&inner.gitlab_states);
            let key = (sha.to_string(), name.clone());
            if states.get(&key) == Some(&state) {
                // What GitLab answers to a transition into the state a status already has.
                let event = match state.as_str() {
                    "running" => "run",
                    "pending" => "enqueue",
                    "success" => "succeed",
                    "failed" => "drop",
                    _ => "cancel",
                };
                return reply(
                    400,
                    json!({ "message": format!("Cannot transition status via :{event} from :{state} (status_name is {state})") }),
                );
            }
            states.insert(key, state.clone());
            reply(
                201,
                json!({ "id": id(), "sha": sha, "status": state, "name": name }),
            )
        }
        ("GET", ["api", "v4", "projects", _, "merge_requests"]) => {
            listing(inner, query, headers, Kind::Gitlab)
        }
        ("GET", ["api", "v4", "projects", _, "merge_requests", iid]) => {
            let iid = iid.parse::<u64>().unwrap_or(0);
            match lock(&inner.pulls)
                .iter()
                .find(|p| p.get("iid").and_then(Value::as_u64) == Some(iid))
            {
                Some(mr) => reply(200, mr.clone()),
                None => reply(404, json!({ "message": "404 Not found" })),
            }
        }
        // https://docs.gitlab.com/ee/api/deployments.html#create-a-deployment
        ("POST", ["api", "v4", "projects", _, "deployments"]) => {
            let mut answer = body.clone();
            let new = id();
            answer["id"] = json!(new);
            answer["iid"] = json!(new);
            reply(201, answer)
        }
        // https://docs.gitlab.com/ee/api/deployments.html#update-a-deployment
        ("PUT", ["api", "v4", "projects", _, "deployments", deployment]) => reply(
            200,
            json!({ "id": deployment.parse::<u64>().unwrap_or(0), "status": body.get("status") }),
        ),
        ("GET", ["api", "v4", "projects", _, "merge_requests", iid, "notes"]) => {
            let iid = iid.parse::<u64>().unwrap_or(0);
            let items = lock(&inner.comments)
                .iter()
                .filter(|(_, (i, _))| *i == iid)
                .map(|(id, (_, b))| json!({ "id": id, "body": b, "noteable_type": "MergeRequest", "system": false }))
                .collect();
            reply(200, page_of(items, query))
        }
        ("POST", ["api", "v4", "projects", _, "merge_requests", iid, "notes"]) => {
            let new = id();
            let text = body
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            lock(&inner.comments).insert(new, (iid.parse().unwrap_or(0), text.clone()));
            reply(
                201,
                json!({ "id": new, "body": text, "noteable_type": "MergeRequest" }),
            )
        }
        ("PUT", ["api", "v4", "projects", _, "merge_requests", _, "notes", note]) => {
            let note = note.parse::<u64>().unwrap_or(0);
            let text = body
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match lock(&inner.comments).get_mut(&note) {
                Some(existing) => {
                    existing.1 = text.clone();
                    reply(200, json!({ "id": note, "body": text }))
                }
                None => reply(404, json!({ "message": "404 Not found" })),
            }
        }
        _ => reply(404, json!({ "message": "404 Not found" })),
    }
}
