//! A fake Kubernetes API server for the executor's tests: an axum server on 127.0.0.1:0 that
//! speaks the REST protocol of the calls the executor makes (create, get, watch, log, delete
//! of core/v1 Pods), with JSON shaped like the real API server's (apiVersion/kind on objects,
//! `metav1.Status` for errors, newline-delimited `WatchEvent`s, chunked streaming logs).
//!
//! Each test scripts what the next created Pod does ([`Act`]s played over time), and the fake
//! records every request (method, path, query, JSON body) for assertions.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// One thing the scripted Pod does.
#[derive(Debug, Clone)]
pub enum Act {
    Sleep(u64),
    /// PodScheduled=True, init container waiting (PodInitializing).
    Scheduled,
    /// PodScheduled=False, reason Unschedulable.
    Unschedulable(String),
    InitRunning,
    /// The clone succeeded: init terminated 0, main container waiting (PodInitializing).
    InitDone,
    /// The clone failed: init terminated with `code` and `message`, phase Failed.
    InitFailed {
        code: i32,
        message: String,
    },
    InitWaiting {
        reason: String,
        message: String,
    },
    MainWaiting {
        reason: String,
        message: String,
    },
    /// Main container running, phase Running.
    MainRunning,
    /// A line on the main container's log.
    Log(String),
    /// Ends every open log stream (as a kubelet restart does).
    CutLogs,
    /// Main container terminated; phase Succeeded (0) or Failed.
    MainExit {
        code: i32,
        reason: Option<String>,
        message: Option<String>,
    },
    /// The Pod failed as a whole (eviction...).
    PodFailed {
        reason: String,
        message: String,
    },
    /// The marker line the Pod's script prints before step `n` (1-based), taken from the
    /// script the executor sent.
    Step(usize),
    /// Someone else deletes the Pod.
    DeleteExternally,
    /// From now on, GET and watch of the Pod answer garbage.
    Garbage,
}

/// What the scripted Pod does once created.
pub fn runs(lines: &[&str], gap_ms: u64, code: i32, message: Option<&str>) -> Vec<Act> {
    let mut acts = vec![
        Act::Sleep(30),
        Act::Scheduled,
        Act::Sleep(30),
        Act::InitRunning,
        Act::Sleep(30),
        Act::InitDone,
        Act::Sleep(30),
        Act::MainRunning,
    ];
    for line in lines {
        acts.push(Act::Sleep(gap_ms));
        acts.push(Act::Log((*line).to_string()));
    }
    acts.push(Act::Sleep(gap_ms));
    acts.push(Act::MainExit {
        code,
        reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
        message: message.map(str::to_string),
    });
    acts
}

/// A Pod that starts and never finishes.
pub fn never_finishes(lines: &[&str]) -> Vec<Act> {
    let mut acts = runs(lines, 20, 0, None);
    acts.pop();
    acts
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Option<Value>,
}

struct PodRec {
    obj: Value,
    logs: Vec<(String, String)>,
    /// Bumped by CutLogs and deletion: open log streams end.
    log_gen: u64,
    script: Option<tokio::task::AbortHandle>,
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    pods: BTreeMap<String, PodRec>,
    /// (resourceVersion, type, pod name, object)
    history: Vec<(u64, String, String, Value)>,
    requests: Vec<Recorded>,
    scenario: Vec<Act>,
    /// The next watch answers a 410 Expired ERROR event.
    watch_gone_once: bool,
    garbage: bool,
    reject_create: Option<(u16, String, String)>,
    garbage_create: bool,
    /// Pods removed for good (name, grace period of their deletion).
    deleted: Vec<(String, Option<i64>)>,
}

struct Inner {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

pub struct FakeKube {
    pub url: String,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeKube {
    pub async fn start(scenario: Vec<Act>) -> FakeKube {
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                rv: 100,
                scenario,
                ..Default::default()
            }),
            changed,
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeKube {
            url: format!("http://{addr}"),
            inner,
            server,
        }
    }

    /// A kube client pointed at the fake: no auth, default namespace "default".
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.default_namespace = "default".into();
        kube::Client::try_from(config).unwrap()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().requests.clone()
    }

    pub fn requests_of(&self, method: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method)
            .collect()
    }

    /// The Pod bodies POSTed.
    pub fn created(&self) -> Vec<Value> {
        self.requests_of("POST")
            .into_iter()
            .filter_map(|r| r.body)
            .collect()
    }

    pub fn pod(&self, name: &str) -> Option<Value> {
        self.inner.lock().pods.get(name).map(|p| p.obj.clone())
    }

    pub fn pod_names(&self) -> Vec<String> {
        self.inner.lock().pods.keys().cloned().collect()
    }

    /// Pods that were removed, with the grace period of the DELETE that removed them.
    pub fn deleted(&self) -> Vec<(String, Option<i64>)> {
        self.inner.lock().deleted.clone()
    }

    pub fn watch_gone_once(&self) {
        self.inner.lock().watch_gone_once = true;
    }

    pub fn reject_create(&self, code: u16, reason: &str, message: &str) {
        self.inner.lock().reject_create = Some((code, reason.into(), message.into()));
    }

    pub fn garbage_create(&self) {
        self.inner.lock().garbage_create = true;
    }

    /// Puts a Pod in place as if left over from an earlier run of the same attempt.
    pub fn preexisting(&self, pod: Value) {
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut state = self.inner.lock();
        state.rv += 1;
        let mut pod = pod;
        pod["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        pod["metadata"]["uid"] = json!("old-uid");
        pod["status"] = json!({"phase": "Succeeded"});
        state.pods.insert(
            name,
            PodRec {
                obj: pod,
                logs: vec![],
                log_gen: 0,
                script: None,
            },
        );
    }

    /// No Pod is left (after the deletion's grace period), and every Pod created was deleted
    /// through the API.
    pub async fn assert_all_pods_deleted(&self) {
        // Every change of the fake's state is announced: wait for the one that empties it.
        let mut changed = self.inner.changed.subscribe();
        let emptied = async {
            loop {
                changed.borrow_and_update();
                if self.inner.lock().pods.is_empty() || changed.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), emptied).await;
        let state = self.inner.lock();
        assert!(
            state.pods.is_empty(),
            "pods left: {:?}",
            state.pods.keys().collect::<Vec<_>>()
        );
        let deletes = state
            .requests
            .iter()
            .filter(|r| r.method == "DELETE")
            .count();
        let creates = state.requests.iter().filter(|r| r.method == "POST").count();
        assert!(
            deletes >= creates,
            "{creates} pods created but {deletes} DELETE requests"
        );
    }
}

fn status(code: u16, reason: &str, message: &str, details: Value) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code,
        }),
    )
}

fn not_found(name: &str) -> (u16, Value) {
    status(
        404,
        "NotFound",
        &format!("pods \"{name}\" not found"),
        json!({"name": name, "kind": "pods"}),
    )
}

fn respond((code, body): (u16, Value)) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

fn streaming(rx: mpsc::Receiver<String>, content_type: &'static str) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Bytes::from(chunk)), rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    response
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn handle(
    axum::extract::State(inner): axum::extract::State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    let json_body = serde_json::from_slice::<Value>(&body).ok();
    inner.lock().requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: query.clone(),
        body: json_body.clone(),
    });
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match (method.clone(), parts.as_slice()) {
        (Method::POST, ["api", "v1", "namespaces", ns, "pods"]) => create(&inner, ns, json_body),
        (Method::GET, ["api", "v1", "namespaces", _, "pods"])
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch_pods(&inner, &query)
        }
        (Method::GET, ["api", "v1", "namespaces", _, "pods", name]) => get(&inner, name),
        (Method::GET, ["api", "v1", "namespaces", _, "pods", name, "log"]) => {
            logs(&inner, name, &query)
        }
        (Method::DELETE, ["api", "v1", "namespaces", _, "pods", name]) => {
            delete(&inner, name, json_body)
        }
        _ => respond(status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            json!({}),
        )),
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = String::from_utf8_lossy(&bytes[i + 1..i + 3]).into_owned();
            if let Ok(b) = u8::from_str_radix(&hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn create(inner: &Arc<Inner>, ns: &str, body: Option<Value>) -> Response {
    let Some(mut pod) = body else {
        return respond(status(400, "BadRequest", "the body is not JSON", json!({})));
    };
    if pod["apiVersion"] != "v1" || pod["kind"] != "Pod" {
        return respond(status(400, "BadRequest", "not a v1 Pod", json!({})));
    }
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut state = inner.lock();
    if let Some((code, reason, message)) = state.reject_create.clone() {
        return respond(status(
            code,
            &reason,
            &message,
            json!({"name": name, "kind": "pods"}),
        ));
    }
    if state.pods.contains_key(&name) {
        return respond(status(
            409,
            "AlreadyExists",
            &format!("pods \"{name}\" already exists"),
            json!({"name": name, "kind": "pods"}),
        ));
    }
    state.rv += 1;
    state.uid += 1;
    let rv = state.rv;
    pod["metadata"]["namespace"] = json!(ns);
    pod["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", state.uid));
    pod["metadata"]["resourceVersion"] = json!(rv.to_string());
    pod["metadata"]["creationTimestamp"] = json!(now());
    pod["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    state
        .history
        .push((rv, "ADDED".into(), name.clone(), pod.clone()));
    let scenario = std::mem::take(&mut state.scenario);
    let script = tokio::spawn(play(inner.clone(), name.clone(), scenario));
    state.pods.insert(
        name,
        PodRec {
            obj: pod.clone(),
            logs: vec![],
            log_gen: 0,
            script: Some(script.abort_handle()),
        },
    );
    let garbage = state.garbage_create;
    drop(state);
    inner.bump();
    if garbage {
        return respond((
            201,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": "nonsense"}),
        ));
    }
    respond((201, pod))
}

fn get(inner: &Arc<Inner>, name: &str) -> Response {
    let state = inner.lock();
    if state.garbage {
        let mut response = Response::new(Body::from("<html>502 Bad Gateway</html>{"));
        *response.status_mut() = StatusCode::OK;
        return response;
    }
    match state.pods.get(name) {
        Some(pod) => respond((200, pod.obj.clone())),
        None => respond(not_found(name)),
    }
}

fn watch_pods(inner: &Arc<Inner>, query: &HashMap<String, String>) -> Response {
    let only = query
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout: u64 = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290);
    let (tx, rx) = mpsc::channel::<String>(64);
    let inner = inner.clone();
    {
        let mut state = inner.lock();
        if state.watch_gone_once {
            state.watch_gone_once = false;
            let (_, status) = status(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", state.rv),
                json!({}),
            );
            let event = json!({"type": "ERROR", "object": status}).to_string() + "\n";
            tokio::spawn(async move {
                let _ = tx.send(event).await;
            });
            return streaming(rx, "application/json");
        }
    }
    tokio::spawn(async move {
        let mut changed = inner.changed.subscribe();
        let until = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut sent = from;
        loop {
            let (events, garbage) = {
                let state = inner.lock();
                let events: Vec<(u64, String)> = state
                    .history
                    .iter()
                    .filter(|(rv, _, name, _)| {
                        *rv > sent && only.as_ref().is_none_or(|o| o == name)
                    })
                    .map(|(rv, kind, _, obj)| {
                        (*rv, json!({"type": kind, "object": obj}).to_string() + "\n")
                    })
                    .collect();
                (events, state.garbage)
            };
            if garbage {
                let _ = tx
                    .send("{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"Pod\"}}\n".into())
                    .await;
                return;
            }
            for (rv, event) in events {
                sent = rv;
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                result = changed.changed() => if result.is_err() { return },
                _ = tokio::time::sleep_until(until) => return,
                _ = tx.closed() => return,
            }
        }
    });
    streaming(rx, "application/json")
}

fn main_state(pod: &Value, container: &str) -> Value {
    let key = if container == "clone" {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    pod["status"][key]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == container))
        .map(|c| c["state"].clone())
        .unwrap_or(Value::Null)
}

fn logs(inner: &Arc<Inner>, name: &str, query: &HashMap<String, String>) -> Response {
    let container = query
        .get("container")
        .cloned()
        .unwrap_or_else(|| "stage".into());
    let follow = query.get("follow").map(String::as_str) == Some("true");
    let timestamps = query.get("timestamps").map(String::as_str) == Some("true");
    let since = query
        .get("sinceSeconds")
        .and_then(|s| s.parse::<i64>().ok())
        .map(|s| Utc::now() - chrono::Duration::seconds(s));
    let gen = {
        let state = inner.lock();
        let Some(pod) = state.pods.get(name) else {
            return respond(not_found(name));
        };
        let container_state = main_state(&pod.obj, &container);
        if container_state.get("running").is_none() && container_state.get("terminated").is_none() {
            let why = container_state["waiting"]["reason"]
                .as_str()
                .unwrap_or("ContainerCreating")
                .to_string();
            return respond(status(
                400,
                "BadRequest",
                &format!("container \"{container}\" in pod \"{name}\" is waiting to start: {why}"),
                json!({}),
            ));
        }
        pod.log_gen
    };
    let (tx, rx) = mpsc::channel::<String>(64);
    let inner = inner.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        let mut changed = inner.changed.subscribe();
        let mut sent = 0;
        loop {
            let (lines, finished) = {
                let state = inner.lock();
                let Some(pod) = state.pods.get(&name) else {
                    return;
                };
                let lines: Vec<String> = pod.logs[sent.min(pod.logs.len())..]
                    .iter()
                    .filter(|(ts, _)| {
                        since.is_none_or(|s| {
                            chrono::DateTime::parse_from_rfc3339(ts).is_ok_and(|t| t >= s)
                        })
                    })
                    .map(|(ts, line)| {
                        if timestamps {
                            format!("{ts} {line}\n")
                        } else {
                            format!("{line}\n")
                        }
                    })
                    .collect();
                sent = pod.logs.len();
                let done = main_state(&pod.obj, &container).get("terminated").is_some();
                (lines, done || pod.log_gen != gen || !follow)
            };
            for line in lines {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            if finished {
                return;
            }
            tokio::select! {
                result = changed.changed() => if result.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    streaming(rx, "text/plain")
}

fn delete(inner: &Arc<Inner>, name: &str, body: Option<Value>) -> Response {
    let grace = body.as_ref().and_then(|b| b["gracePeriodSeconds"].as_i64());
    let mut state = inner.lock();
    let Some(pod) = state.pods.get_mut(name) else {
        return respond(not_found(name));
    };
    if let Some(script) = pod.script.take() {
        script.abort();
    }
    pod.log_gen += 1;
    if pod.obj["metadata"]["deletionTimestamp"].is_null() {
        pod.obj["metadata"]["deletionTimestamp"] = json!(now());
        pod.obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace.unwrap_or(30));
    }
    let obj = pod.obj.clone();
    state.rv += 1;
    let rv = state.rv;
    let name = name.to_string();
    if grace == Some(0) {
        remove(&mut state, &name, grace);
    } else {
        state
            .history
            .push((rv, "MODIFIED".into(), name.clone(), obj.clone()));
        let inner = inner.clone();
        // The kubelet stops the containers within the grace period; here, quickly.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut state = inner.lock();
            remove(&mut state, &name, grace);
            drop(state);
            inner.bump();
        });
    }
    drop(state);
    inner.bump();
    respond((200, obj))
}

fn remove(state: &mut State, name: &str, grace: Option<i64>) {
    if let Some(pod) = state.pods.remove(name) {
        state.rv += 1;
        let rv = state.rv;
        let mut obj = pod.obj;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        state
            .history
            .push((rv, "DELETED".into(), name.to_string(), obj));
        state.deleted.push((name.to_string(), grace));
    }
}

fn container_status(pod: &Value, name: &str, init: bool, state: Value, ready: bool) -> Value {
    let list = if init { "initContainers" } else { "containers" };
    let image = pod["spec"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .map(|c| c["image"].clone())
        .unwrap_or(json!(""));
    json!({
        "name": name,
        "image": image,
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": state.get("running").is_some(),
        "state": state,
        "lastState": {},
    })
}

/// Plays the scenario of one Pod, changing its status (and resourceVersion) over time.
async fn play(inner: Arc<Inner>, name: String, acts: Vec<Act>) {
    for act in acts {
        if let Act::Sleep(ms) = act {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            continue;
        }
        let mut state = inner.lock();
        let garbage = matches!(act, Act::Garbage);
        if garbage {
            state.garbage = true;
        }
        if matches!(act, Act::DeleteExternally) {
            remove(&mut state, &name, None);
            drop(state);
            inner.bump();
            return;
        }
        state.rv += 1;
        let rv = state.rv;
        let Some(pod) = state.pods.get_mut(&name) else {
            return;
        };
        let obj = &mut pod.obj;
        let waiting = |reason: &str, message: &str| json!({"waiting": {"reason": reason, "message": message}});
        let terminated = |code: i32, reason: Option<String>, message: Option<String>| {
            let mut t = json!({"exitCode": code, "startedAt": now(), "finishedAt": now()});
            if let Some(r) = reason {
                t["reason"] = json!(r);
            }
            if let Some(m) = message {
                t["message"] = json!(m);
            }
            json!({"terminated": t})
        };
        let running = json!({"running": {"startedAt": now()}});
        match act {
            Act::Sleep(_) | Act::DeleteExternally | Act::Garbage => {}
            Act::Scheduled => {
                obj["spec"]["nodeName"] = json!("fake-node");
                obj["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]);
                obj["status"]["startTime"] = json!(now());
                obj["status"]["initContainerStatuses"] = json!([container_status(
                    obj,
                    "clone",
                    true,
                    waiting("PodInitializing", ""),
                    false
                )]);
                obj["status"]["containerStatuses"] = json!([container_status(
                    obj,
                    "stage",
                    false,
                    waiting("PodInitializing", ""),
                    false
                )]);
            }
            Act::Unschedulable(message) => {
                obj["status"]["conditions"] = json!([{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastTransitionTime": now()
                }]);
            }
            Act::InitRunning => {
                obj["status"]["initContainerStatuses"] =
                    json!([container_status(obj, "clone", true, running.clone(), false)]);
            }
            Act::InitDone => {
                obj["status"]["initContainerStatuses"] = json!([container_status(
                    obj,
                    "clone",
                    true,
                    terminated(0, Some("Completed".into()), None),
                    true
                )]);
            }
            Act::InitFailed { code, message } => {
                obj["status"]["phase"] = json!("Failed");
                obj["status"]["initContainerStatuses"] = json!([container_status(
                    obj,
                    "clone",
                    true,
                    terminated(code, Some("Error".into()), Some(message)),
                    false
                )]);
            }
            Act::InitWaiting { reason, message } => {
                obj["status"]["initContainerStatuses"] = json!([container_status(
                    obj,
                    "clone",
                    true,
                    waiting(&reason, &message),
                    false
                )]);
            }
            Act::MainWaiting { reason, message } => {
                obj["status"]["containerStatuses"] = json!([container_status(
                    obj,
                    "stage",
                    false,
                    waiting(&reason, &message),
                    false
                )]);
            }
            Act::MainRunning => {
                obj["status"]["phase"] = json!("Running");
                obj["status"]["containerStatuses"] =
                    json!([container_status(obj, "stage", false, running.clone(), true)]);
            }
            Act::Step(n) => {
                let script = obj["spec"]["containers"][0]["command"][2]
                    .as_str()
                    .unwrap_or_default();
                let marker = script
                    .lines()
                    .filter_map(|l| l.strip_prefix("printf '%s\\n' '"))
                    .map(|l| l.trim_end_matches('\''))
                    .find(|m| m.ends_with(&format!(":step:{n}")))
                    .unwrap_or("no such marker")
                    .to_string();
                let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
                pod.logs.push((ts, marker));
                drop(state);
                inner.bump();
                continue;
            }
            Act::Log(line) => {
                let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
                pod.logs.push((ts, line));
                drop(state);
                inner.bump();
                continue;
            }
            Act::CutLogs => {
                pod.log_gen += 1;
                drop(state);
                inner.bump();
                continue;
            }
            Act::MainExit {
                code,
                reason,
                message,
            } => {
                obj["status"]["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
                obj["status"]["containerStatuses"] = json!([container_status(
                    obj,
                    "stage",
                    false,
                    terminated(code, reason, message),
                    false
                )]);
            }
            Act::PodFailed { reason, message } => {
                obj["status"]["phase"] = json!("Failed");
                obj["status"]["reason"] = json!(reason);
                obj["status"]["message"] = json!(message);
            }
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let snapshot = obj.clone();
        state
            .history
            .push((rv, "MODIFIED".into(), name.clone(), snapshot));
        drop(state);
        inner.bump();
    }
}
